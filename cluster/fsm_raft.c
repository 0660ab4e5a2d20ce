/*
 * fsm_raft.c - the state machine as a struct raft_fsm (see fsm_raft.h).
 */
#include "fsm_raft.h"
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static void hist_put(struct fsm_raft *a, uint64_t index, uint64_t sum)
{
    pthread_mutex_lock(&a->mu);
    a->hist[index % FSM_RAFT_HISTORY].index = index;
    a->hist[index % FSM_RAFT_HISTORY].checksum = sum;
    pthread_mutex_unlock(&a->mu);
}

int fsm_raft_checksum_at(struct fsm_raft *a, uint64_t index, uint64_t *sum)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&a->mu);
    if (index && a->hist[index % FSM_RAFT_HISTORY].index == index) {
        *sum = a->hist[index % FSM_RAFT_HISTORY].checksum;
        rc = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* The term of the entry at index in r's in-memory log (struct raft_log of
 * <raft.h>: a circular buffer of the entries after `offset`), 0 when
 * unknown. */
static raft_term log_term_of(const struct raft *r, raft_index index)
{
    const struct raft_log *l = &r->log;
    if (index == l->snapshot.last_index && index)
        return l->snapshot.last_term;
    if (index <= l->offset || l->size == 0)
        return 0;
    size_t n = l->back >= l->front ? l->back - l->front : l->size - l->front + l->back;
    raft_index rel = index - l->offset - 1;
    if (rel >= n)
        return 0;
    return l->entries[(l->front + rel) % l->size].term;
}

bool fsm_raft_commit_safe(const struct raft *r)
{
    /* Section 5.4.2 of the Raft paper: "Raft never commits log entries from
     * previous terms by counting replicas. Only log entries from the leader's
     * current term are committed by counting replicas; once an entry from
     * the current term has been committed in this way, then all prior
     * entries are committed indirectly because of the Log Matching
     * Property." 0.15 breaks the first sentence; so an entry is applied only
     * once the entry at the commit index is of the current term. */
    return log_term_of(r, r->commit_index) == r->current_term;
}

/* Apply one entry to the tables now: history and counters. 0, -ENOMEM
 * (nothing of it applied: tried again later) or another negative errno
 * (the tables are broken). */
static int apply_now(struct fsm_raft *a, uint64_t index, const void *buf, size_t len)
{
    int rc = fsm_apply(a->fsm, index, buf, len, &a->last);
    if (rc == -ENOMEM) {
        if (index != a->nomem_index) /* once per entry (index 0 is never one) */
            log_warn("cluster: cannot apply entry %llu to the replicated tables now (out of "
                     "memory): it waits, with the entries after it, and is tried again",
                     (unsigned long long)index);
        a->nomem_index = index;
        return rc;
    }
    if (rc) {
        __atomic_add_fetch(&a->n_apply_errors, 1, __ATOMIC_RELAXED);
        log_error("cluster: cannot apply entry %llu to the replicated tables: %s; this node "
                  "stops until it is rebuilt from a snapshot",
                  (unsigned long long)index, strerror(-rc));
        return rc;
    }
    if (a->last.skipped) {
        __atomic_add_fetch(&a->n_skipped, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_add_fetch(&a->n_applied, 1, __ATOMIC_RELAXED);
        hist_put(a, index, a->last.checksum);
    }
    return 0;
}

static int pending_push(struct fsm_raft *a, uint64_t index, const void *buf, size_t len)
{
    struct fsm_raft_pending *p = malloc(sizeof *p + len);
    if (!p)
        return -ENOMEM;
    p->next = NULL;
    p->index = index;
    p->len = len;
    memcpy(p->data, buf, len);
    *a->pend_tail = p;
    a->pend_tail = &p->next;
    a->n_pending++;
    return 0;
}

static void pending_clear(struct fsm_raft *a)
{
    while (a->pend_head) {
        struct fsm_raft_pending *p = a->pend_head;
        a->pend_head = p->next;
        free(p);
    }
    a->pend_tail = &a->pend_head;
    a->n_pending = 0;
}

/* Apply the deferred entries, in order. */
static int pending_flush(struct fsm_raft *a)
{
    while (a->pend_head) {
        struct fsm_raft_pending *p = a->pend_head;
        int rc = apply_now(a, p->index, p->data, p->len);
        if (rc)
            return rc;
        a->pend_head = p->next;
        if (!a->pend_head)
            a->pend_tail = &a->pend_head;
        a->n_pending--;
        free(p);
    }
    return 0;
}

int fsm_raft_flush(struct fsm_raft *a)
{
    fsm_repair(a->fsm);
    if (!a->raft || !a->pend_head || (!a->guard_off && !fsm_raft_commit_safe(a->raft)))
        return 0;
    return pending_flush(a);
}

static int adapter_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct fsm_raft *a = rf->data;
    /* 0.15 passes no index: it is the one after the last applied entry
     * (fsm_raft.h). */
    uint64_t index = raft_last_applied(a->raft) + 1;
    *result = NULL;
    /* An error returned here makes 0.15 stop the server (it converts to
     * RAFT_UNAVAILABLE), so a deferred entry is accepted and kept aside,
     * not refused. */
    if (!a->guard_off && !fsm_raft_commit_safe(a->raft)) {
        __atomic_add_fetch(&a->n_deferred, 1, __ATOMIC_RELAXED);
        return pending_push(a, index, buf->base, buf->len) ? RAFT_NOMEM : 0;
    }
    int rc = pending_flush(a);
    if (rc == 0)
        rc = apply_now(a, index, buf->base, buf->len);
    if (rc == -ENOMEM) {
        /* out of memory, nothing of it applied: it waits in order behind
         * what already waits, and fsm_raft_flush (each tick) tries again,
         * rather than the node stopping for a failed allocation. The
         * proposer gets no result, as for a deferred entry. */
        return pending_push(a, index, buf->base, buf->len) ? RAFT_NOMEM : 0;
    }
    if (rc)
        return RAFT_IOERR;
    *result = &a->last;
    return 0;
}

/*
 * Snapshot format: "SFR1", u32le n_pending, u64le n bytes of table snapshot
 * (storage/rtable.h), the table snapshot, then n_pending x (u64le index,
 * u32le len, entry). libraft labels the snapshot with its last_applied,
 * which includes deferred entries: they travel with it.
 */
static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int adapter_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct fsm_raft *a = rf->data;
    void *p;
    size_t len;
    int rc = fsm_snapshot(a->fsm, &p, &len);
    if (rc)
        return rc == -ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    size_t total = 16 + len;
    for (struct fsm_raft_pending *q = a->pend_head; q; q = q->next)
        total += 12 + q->len;
    struct raft_buffer *b = raft_malloc(sizeof *b);
    unsigned char *base = raft_malloc(total);
    if (!b || !base) {
        raft_free(b);
        raft_free(base);
        free(p);
        return RAFT_NOMEM;
    }
    memcpy(base, "SFR1", 4);
    put_le(base + 4, a->n_pending, 4);
    put_le(base + 8, len, 8);
    memcpy(base + 16, p, len);
    free(p);
    size_t off = 16 + len;
    for (struct fsm_raft_pending *q = a->pend_head; q; q = q->next) {
        put_le(base + off, q->index, 8);
        put_le(base + off + 8, q->len, 4);
        memcpy(base + off + 12, q->data, q->len);
        off += 12 + q->len;
    }
    b->base = base;
    b->len = total;
    *bufs = b;
    *n_bufs = 1;
    __atomic_add_fetch(&a->n_snapshots, 1, __ATOMIC_RELAXED);
    return 0;
}

static int adapter_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct fsm_raft *a = rf->data;
    const unsigned char *p = buf->base;
    size_t len = buf->len;
    if (len < 16 || memcmp(p, "SFR1", 4) != 0 || get_le(p + 8, 8) > len - 16)
        return RAFT_MALFORMED;
    uint32_t n_pending = (uint32_t)get_le(p + 4, 4);
    size_t tlen = get_le(p + 8, 8);
    /* Check the deferred entries before touching anything. */
    size_t off = 16 + tlen;
    for (uint32_t i = 0; i < n_pending; i++) {
        if (len - off < 12 || get_le(p + off + 8, 4) > len - off - 12)
            return RAFT_MALFORMED;
        off += 12 + get_le(p + off + 8, 4);
    }
    if (off != len)
        return RAFT_MALFORMED;
    bool skipped = false;
    int rc = fsm_restore(a->fsm, p + 16, tlen, true, &skipped);
    if (rc) {
        log_error("cluster: cannot restore a snapshot of %zu bytes: %s", len, strerror(-rc));
        /* On failure libraft keeps ownership of buf. */
        return rc == -EINVAL ? RAFT_MALFORMED : RAFT_IOERR;
    }
    pending_clear(a);
    off = 16 + tlen;
    for (uint32_t i = 0; i < n_pending; i++) {
        size_t elen = get_le(p + off + 8, 4);
        if (pending_push(a, get_le(p + off, 8), p + off + 12, elen) != 0) {
            pending_clear(a);
            return RAFT_NOMEM;
        }
        off += 12 + elen;
    }
    /* On success the buffer is ours. */
    raft_free(buf->base);
    __atomic_add_fetch(skipped ? &a->n_restores_skipped : &a->n_restores, 1, __ATOMIC_RELAXED);
    if (!skipped)
        log_info("cluster: the tables came as a snapshot (%zu bytes, up to entry %llu)", tlen,
                 (unsigned long long)fsm_applied(a->fsm));
    return 0;
}

void fsm_raft_init(struct fsm_raft *a, struct fsm *f)
{
    memset(a, 0, sizeof *a);
    a->fsm = f;
    a->raft_fsm.version = 1;
    a->raft_fsm.data = a;
    a->raft_fsm.apply = adapter_apply;
    a->raft_fsm.snapshot = adapter_snapshot;
    a->raft_fsm.restore = adapter_restore;
    a->pend_tail = &a->pend_head;
    pthread_mutex_init(&a->mu, NULL);
}

void fsm_raft_bind(struct fsm_raft *a, struct raft *r)
{
    a->raft = r;
}

void fsm_raft_close(struct fsm_raft *a)
{
    pending_clear(a);
    pthread_mutex_destroy(&a->mu);
}
