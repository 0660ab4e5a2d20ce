/*
 * fsm_raft.c - the state machine as a struct raft_fsm (see fsm_raft.h).
 */
#include "fsm_raft.h"
#include "log.h"

#include <errno.h>
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

static int adapter_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct fsm_raft *a = rf->data;
    /* 0.15 passes no index: it is the one after the last applied entry
     * (fsm_raft.h). */
    uint64_t index = raft_last_applied(a->raft) + 1;
    int rc = fsm_apply(a->fsm, index, buf->base, buf->len, &a->last);
    *result = &a->last;
    if (rc) {
        __atomic_add_fetch(&a->n_apply_errors, 1, __ATOMIC_RELAXED);
        log_error("cluster: cannot apply entry %llu to the replicated tables: %s; this node "
                  "stops applying until it is rebuilt from a snapshot",
                  (unsigned long long)index, strerror(-rc));
        return RAFT_IOERR;
    }
    if (a->last.skipped) {
        __atomic_add_fetch(&a->n_skipped, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_add_fetch(&a->n_applied, 1, __ATOMIC_RELAXED);
        hist_put(a, index, a->last.checksum);
    }
    return 0;
}

static int adapter_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct fsm_raft *a = rf->data;
    void *p;
    size_t len;
    int rc = fsm_snapshot(a->fsm, &p, &len);
    if (rc)
        return rc == -ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    /* libraft frees what it is given with raft_free: copy into its heap. */
    struct raft_buffer *b = raft_malloc(sizeof *b);
    void *base = raft_malloc(len ? len : 1);
    if (!b || !base) {
        raft_free(b);
        raft_free(base);
        free(p);
        return RAFT_NOMEM;
    }
    memcpy(base, p, len);
    free(p);
    b->base = base;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    __atomic_add_fetch(&a->n_snapshots, 1, __ATOMIC_RELAXED);
    return 0;
}

static int adapter_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct fsm_raft *a = rf->data;
    bool skipped = false;
    int rc = fsm_restore(a->fsm, buf->base, buf->len, true, &skipped);
    if (rc) {
        log_error("cluster: cannot restore a snapshot of %zu bytes: %s", buf->len, strerror(-rc));
        /* On failure libraft keeps ownership of buf. */
        return rc == -EINVAL ? RAFT_MALFORMED : RAFT_IOERR;
    }
    /* On success the buffer is ours. */
    raft_free(buf->base);
    __atomic_add_fetch(skipped ? &a->n_restores_skipped : &a->n_restores, 1, __ATOMIC_RELAXED);
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
    pthread_mutex_init(&a->mu, NULL);
}

void fsm_raft_bind(struct fsm_raft *a, struct raft *r)
{
    a->raft = r;
}

void fsm_raft_close(struct fsm_raft *a)
{
    pthread_mutex_destroy(&a->mu);
}
