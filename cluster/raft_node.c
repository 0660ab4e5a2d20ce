/*
 * raft_node.c - libraft 0.15 on its own thread (see raft_node.h).
 *
 * The raft thread owns the uv loop, struct raft, its raft_uv I/O and the
 * transport; nothing else touches them ("call raft_* only there"). Other
 * threads append requests (proposals, additions) to a mutex-protected queue
 * and wake the loop with uv_async_send. A 50 ms timer publishes the leader
 * and applied index to atomics for other threads and makes a new leader
 * append its barrier: section 8 of the Raft paper, "a leader must have the
 * latest information on which entries are committed ... Raft handles this
 * by having each leader commit a blank no-op entry into the log at the start
 * of its term"; until that barrier is applied the node does not serve
 * (proposals get -EAGAIN).
 */
#include "raft_node.h"
#include "cmd.h"
#include "fsm_raft.h"
#include "log.h"
#include "raft_transport.h"

#include <errno.h>
#include <pthread.h>
#include <raft.h>
#include <raft/uv.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

enum req_kind { REQ_PROPOSE, REQ_ADD, REQ_REMOVE };

struct req {
    struct req *next;
    enum req_kind kind;
    struct raft_node *n;
    void *buf;
    size_t len;
    char addr[RAFT_NODE_ADDR_MAX];
    uint64_t id; /* REQ_REMOVE */
    raft_node_done_fn done;
    void *ud;
    struct raft_apply apply;
};

/* An append of the Raft log in flight (watched_append). */
struct append_watch {
    struct append_watch *next;
    struct raft_io_append *req;
    raft_io_append_cb cb;
    int held; /* the failed write's status, kept from libraft until the close */
};

/* An AppendEntries carrying entries, not written to its peer yet
 * (watched_send). */
struct send_watch {
    struct send_watch *next;
    struct raft_io_send *req;
    raft_io_send_cb cb;
    raft_id to;
    raft_term term;
    raft_index prev; /* its prev_log_index: the entries start after it */
};

struct raft_node {
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t timer;
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct fsm_raft adapter;
    struct raft_node_config cfg;
    char dir[512], address[RAFT_NODE_ADDR_MAX], bind_ip[16];
    char (*seeds)[RAFT_NODE_ADDR_MAX];
    uint64_t self;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct req *queue, **tail;
    bool stopping, started;
    bool closing;           /* loop: raft_close was called */
    uint64_t stop_deadline; /* loop: when a stop stops waiting for entries (0: no stop) */
    int start_rc;
    char err[640];

    uint64_t leader, applied; /* atomics */
    uint64_t term, commit;    /* atomics: as of the last tick */
    uint64_t leader_changes;  /* atomic: a new leader seen by a tick */
    uint64_t last_leader;     /* loop: the leader the last tick saw (0: none) */
    bool ready;               /* atomic */
    bool diverged;            /* atomic */
    uint64_t divergences;     /* atomic */
    uint64_t checks_equal;    /* atomic */
    raft_term barrier_term;   /* term whose barrier was applied */
    bool barrier_pending;
    struct raft_barrier barrier;
    struct raft_change change;
    struct req *change_req;
    struct raft_transfer transfer;
    bool transferring;
    struct fsm_batch_result sub; /* a proposal's slice of its group's results */
    unsigned groups_inflight;    /* entries proposed, not applied yet (loop) */
    bool held;                   /* the queue waits for one of them (loop) */
    unsigned max_voters;
    /* the configuration as of the last tick, for other threads (mu) */
    struct raft_node_member members[RAFT_NODE_MAX_MEMBERS];
    unsigned n_members;
    uint64_t change_id;
    /* The Raft log's writes: raft_uv's append, wrapped by watched_append */
    int (*io_append)(struct raft_io *io, struct raft_io_append *req,
                     const struct raft_entry entries[], unsigned n, raft_io_append_cb cb);
    struct append_watch *appends; /* loop: in flight */
    /* The messages to peers: raft_uv's send, wrapped by watched_send */
    int (*io_send)(struct raft_io *io, struct raft_io_send *req, const struct raft_message *m,
                   raft_io_send_cb cb);
    struct send_watch *sends; /* loop: AppendEntries with entries, unwritten */
    /* The messages from peers: raft_uv's start, wrapped by guarded_start */
    int (*io_start)(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv);
    raft_io_recv_cb io_recv;
    /* loop: while libraft handles an AppendEntries (guarded_recv), the last
     * index that message proves equal to the leader's */
    bool answering;
    raft_index answer_bound;
    uint64_t resends_thinned; /* atomic: sent as a heartbeat instead (watched_send) */
    uint64_t unstored_since;  /* loop: check_log_stall (0: stored) */
    bool failed;              /* atomic: the log cannot be written (raft_node_failed) */
    char failure[256];        /* why; written once, before failed */
};

uint64_t raft_node_id_of(const char *addr)
{
    /* FNV-1a over the address; 0 is not a valid Raft id. */
    uint64_t h = 1469598103934665603ull;
    for (const char *p = addr; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

static int status_of(int raft_rc)
{
    switch (raft_rc) {
    case 0:
        return 0;
    case RAFT_NOTLEADER:
        return -ENOTCONN;
    case RAFT_LEADERSHIPLOST:
        return -ECONNABORTED;
    case RAFT_SHUTDOWN:
    case RAFT_CANCELED:
        return -ECANCELED;
    case RAFT_NOMEM:
        return -ENOMEM;
    case RAFT_BUSY:
    case RAFT_CANTCHANGE:
        return -EBUSY;
    case RAFT_DUPLICATEID:
        return -EEXIST;
    default:
        return -EIO;
    }
}

static uint64_t leader_id(struct raft_node *n)
{
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&n->raft, &id, &addr);
    return id;
}

static void req_done(struct req *r, int status, const struct fsm_batch_result *res)
{
    if (r->done)
        r->done(r->ud, status, res, leader_id(r->n));
    free(r->buf);
    free(r);
}

/* ---- proposals ---- */

/*
 * Proposals waiting in the queue when the loop wakes up are combined into
 * one entry (up to FSM_MAX_BATCH commands and GROUP_MAX_BYTES): one Raft
 * round, one fsync and one LMDB transaction for all of them. A CommandBatch
 * is a repeated field, so the concatenation of encoded batches is the
 * encoded batch of all their commands, in order; each proposal gets back
 * the slice of results of its own commands.
 */
#define GROUP_MAX_BYTES (1u << 20)

/*
 * Group commit: while GROUPS_INFLIGHT entries are proposed and not applied
 * yet, new proposals wait in the queue; the next entry takes all of them
 * when one of those completes. Every entry costs each node a log write and
 * an LMDB commit with its fsync on the loop thread, so on a slow disk many
 * small entries (CONNECTs arriving a few at a time, each claiming its id)
 * cost far more than one entry per round; an idle node still proposes at
 * once.
 */
#define GROUPS_INFLIGHT 1

struct group {
    struct raft_apply apply;
    struct raft_node *n;
    unsigned count;
    struct {
        struct req *r;
        uint32_t first, n;
    } m[];
};

/* The commands of an entry made by cmd.h: 0 with *n, or -EINVAL. */
static int count_commands(const void *entry, size_t len, uint32_t *n)
{
    const uint8_t *pb;
    size_t pb_len;
    if (cmd_entry_unwrap(entry, len, (const void **)&pb, &pb_len) != 0)
        return -EINVAL;
    uint32_t k = 0;
    size_t i = 0;
    while (i < pb_len) {
        if (pb[i++] != 0x0a) /* field 1, length-delimited */
            return -EINVAL;
        uint64_t l = 0;
        for (int shift = 0;; shift += 7) {
            if (i >= pb_len || shift > 63)
                return -EINVAL;
            uint8_t b = pb[i++];
            l |= (uint64_t)(b & 0x7f) << shift;
            if (!(b & 0x80))
                break;
        }
        if (l > pb_len - i)
            return -EINVAL;
        i += l;
        k++;
    }
    *n = k;
    return 0;
}

static void group_apply_cb(struct raft_apply *a, int status, void *result)
{
    struct group *g = a->data;
    struct raft_node *n = g->n;
    const struct fsm_batch_result *res = result;
    if (n->groups_inflight)
        n->groups_inflight--;
    if (n->held || (n->stop_deadline && !n->groups_inflight)) {
        /* the queue's turn, or the stop's (from the loop, not inside
         * libraft) */
        n->held = false;
        uv_async_send(&n->async);
    }
    for (unsigned i = 0; i < g->count; i++) {
        struct req *r = g->m[i].r;
        if (status != 0 || !res) {
            /* no result with status 0: committed, and deferred here
             * (cluster/fsm_raft.c: out of memory), applied later */
            req_done(r, status ? status_of(status) : -EINPROGRESS, NULL);
            continue;
        }
        struct fsm_batch_result *sub = &n->sub;
        sub->index = res->index;
        sub->skipped = res->skipped;
        sub->checksum = res->checksum;
        uint32_t first = g->m[i].first, cnt = g->m[i].n;
        if (first > res->n)
            first = res->n;
        if (cnt > res->n - first)
            cnt = res->n - first;
        sub->n = cnt;
        memcpy(sub->results, res->results + first, cnt);
        req_done(r, 0, sub);
    }
    free(g);
}

/* Propose reqs[0..count) as one entry (count >= 1). */
static void propose_group(struct raft_node *n, struct req **reqs, const uint32_t *ncmds,
                          unsigned count)
{
    struct group *g = malloc(sizeof *g + count * sizeof g->m[0]);
    size_t pb_total = 0;
    for (unsigned i = 0; i < count; i++)
        pb_total += reqs[i]->len - CMD_ENTRY_HEADER; /* >= the batch, with padding */
    struct raft_buffer b = {raft_malloc(CMD_ENTRY_HEADER + pb_total + 8), 0};
    if (!g || !b.base) {
        free(g);
        raft_free(b.base);
        for (unsigned i = 0; i < count; i++)
            req_done(reqs[i], -ENOMEM, NULL);
        return;
    }
    uint8_t *p = b.base;
    size_t off = CMD_ENTRY_HEADER;
    uint32_t first = 0;
    for (unsigned i = 0; i < count; i++) {
        const void *pb;
        size_t pb_len;
        cmd_entry_unwrap(reqs[i]->buf, reqs[i]->len, &pb, &pb_len);
        memcpy(p + off, pb, pb_len);
        off += pb_len;
        g->m[i].r = reqs[i];
        g->m[i].first = first;
        g->m[i].n = ncmds[i];
        first += ncmds[i];
    }
    size_t pb_len = off - CMD_ENTRY_HEADER;
    memcpy(p, "ST\x01\x00", 4);
    p[4] = (uint8_t)pb_len;
    p[5] = (uint8_t)(pb_len >> 8);
    p[6] = (uint8_t)(pb_len >> 16);
    p[7] = (uint8_t)(pb_len >> 24);
    size_t total = (off + 7) & ~(size_t)7;
    memset(p + off, 0, total - off);
    b.len = total;
    g->n = n;
    g->count = count;
    g->apply.data = g;
    int rc = raft_apply(&n->raft, &g->apply, &b, 1, group_apply_cb);
    if (rc) {
        raft_free(b.base);
        for (unsigned i = 0; i < count; i++)
            req_done(reqs[i], status_of(rc), NULL);
        free(g);
        return;
    }
    n->groups_inflight++;
}

/* Propose a run of REQ_PROPOSE requests, grouped. */
static void start_proposals(struct raft_node *n, struct req **reqs, unsigned count)
{
    int refuse = 0;
    if (raft_state(&n->raft) != RAFT_LEADER)
        refuse = -ENOTCONN;
    else if (!__atomic_load_n(&n->ready, __ATOMIC_ACQUIRE))
        refuse = -EAGAIN;
    uint32_t *ncmds = malloc((count ? count : 1) * sizeof *ncmds);
    if (!refuse && !ncmds)
        refuse = -ENOMEM;
    if (refuse) {
        for (unsigned i = 0; i < count; i++)
            req_done(reqs[i], refuse, NULL);
        free(ncmds);
        return;
    }
    unsigned start = 0;
    uint32_t cmds = 0;
    size_t bytes = 0;
    for (unsigned i = 0; i < count; i++) {
        uint32_t k;
        bool alone = count_commands(reqs[i]->buf, reqs[i]->len, &k) != 0 || k > FSM_MAX_BATCH ||
                     reqs[i]->len > GROUP_MAX_BYTES;
        if (i > start &&
            (alone || cmds + k > FSM_MAX_BATCH || bytes + reqs[i]->len > GROUP_MAX_BYTES)) {
            propose_group(n, reqs + start, ncmds + start, i - start);
            start = i;
            cmds = 0;
            bytes = 0;
        }
        if (alone) {
            /* Proposed as it is: the state machine judges it. */
            struct raft_buffer b = {raft_malloc(reqs[i]->len ? reqs[i]->len : 1), reqs[i]->len};
            struct group *g = malloc(sizeof *g + sizeof g->m[0]);
            if (!b.base || !g) {
                raft_free(b.base);
                free(g);
                req_done(reqs[i], -ENOMEM, NULL);
            } else {
                memcpy(b.base, reqs[i]->buf, reqs[i]->len);
                g->n = n;
                g->count = 1;
                g->m[0].r = reqs[i];
                g->m[0].first = 0;
                g->m[0].n = FSM_MAX_BATCH;
                g->apply.data = g;
                int rc = raft_apply(&n->raft, &g->apply, &b, 1, group_apply_cb);
                if (rc) {
                    raft_free(b.base);
                    free(g);
                    req_done(reqs[i], status_of(rc), NULL);
                } else {
                    n->groups_inflight++;
                }
            }
            start = i + 1;
            continue;
        }
        ncmds[i] = k;
        cmds += k;
        bytes += reqs[i]->len;
    }
    if (start < count)
        propose_group(n, reqs + start, ncmds + start, count - start);
    free(ncmds);
}

/* ---- membership ---- */

static void assign_cb(struct raft_change *c, int status)
{
    struct raft_node *n = c->data;
    struct req *r = n->change_req;
    n->change_req = NULL;
    req_done(r, status_of(status), NULL);
}

static unsigned count_voters(struct raft_node *n)
{
    unsigned voters = 0;
    for (unsigned i = 0; i < n->raft.configuration.n; i++)
        voters += n->raft.configuration.servers[i].role == RAFT_VOTER;
    return voters;
}

static void add_cb(struct raft_change *c, int status)
{
    struct raft_node *n = c->data;
    struct req *r = n->change_req;
    if (status != 0) {
        n->change_req = NULL;
        req_done(r, status_of(status), NULL);
        return;
    }
    /* At most max_voters voters; libraft catches the new server up before
     * it promotes it to voter. */
    int role = count_voters(n) < n->max_voters ? RAFT_VOTER : RAFT_STANDBY;
    n->change.data = n;
    int rc = raft_assign(&n->raft, &n->change, n->change_id, role, assign_cb);
    if (rc) {
        n->change_req = NULL;
        req_done(r, status_of(rc), NULL);
    }
}

static const struct raft_server *configuration_get(const struct raft_configuration *conf,
                                                   raft_id id)
{
    for (unsigned i = 0; i < conf->n; i++)
        if (conf->servers[i].id == id)
            return &conf->servers[i];
    return NULL;
}

static void start_add(struct raft_node *n, struct req *r)
{
    if (raft_state(&n->raft) != RAFT_LEADER) {
        req_done(r, -ENOTCONN, NULL);
        return;
    }
    if (n->change_req) {
        req_done(r, -EBUSY, NULL);
        return;
    }
    n->change_req = r;
    n->change_id = raft_node_id_of(r->addr);
    n->change.data = n;
    /* Already a spare (an add whose promotion was cut short by a change
     * of leader): promote it now. */
    const struct raft_server *sv = configuration_get(&n->raft.configuration, n->change_id);
    if (sv && sv->role == RAFT_SPARE) {
        add_cb(&n->change, 0);
        return;
    }
    int rc = sv ? RAFT_DUPLICATEID : raft_add(&n->raft, &n->change, n->change_id, r->addr, add_cb);
    if (rc) {
        n->change_req = NULL;
        req_done(r, status_of(rc), NULL);
    }
}

static void remove_cb(struct raft_change *c, int status)
{
    struct raft_node *n = c->data;
    struct req *r = n->change_req;
    if (status != 0) {
        n->change_req = NULL;
        req_done(r, status_of(status), NULL);
        return;
    }
    /* A voter went: promote a standby (the first in the configuration)
     * while there are fewer than max_voters. */
    if (count_voters(n) < n->max_voters) {
        for (unsigned i = 0; i < n->raft.configuration.n; i++) {
            const struct raft_server *sv = &n->raft.configuration.servers[i];
            if (sv->role != RAFT_STANDBY)
                continue;
            n->change.data = n;
            if (raft_assign(&n->raft, &n->change, sv->id, RAFT_VOTER, assign_cb) == 0) {
                log_info("cluster: standby %016llx promoted to voter", (unsigned long long)sv->id);
                return;
            }
        }
    }
    n->change_req = NULL;
    req_done(r, 0, NULL);
}

static void start_remove(struct raft_node *n, struct req *r)
{
    if (raft_state(&n->raft) != RAFT_LEADER) {
        req_done(r, -ENOTCONN, NULL);
        return;
    }
    if (n->change_req) {
        req_done(r, -EBUSY, NULL);
        return;
    }
    n->change_req = r;
    n->change.data = n;
    int rc = raft_remove(&n->raft, &n->change, r->id, remove_cb);
    if (rc) {
        n->change_req = NULL;
        req_done(r, rc == RAFT_BADID ? -ENOENT : status_of(rc), NULL);
    }
}

/* ---- the log's own failures ---- */

/*
 * A full or failing disk under the Raft directory (docs/cluster.md, "A full
 * disk on one node"). libraft 0.15 mishandles a failed write of its log
 * and does not tell its user. A follower answers the leader with a
 * rejection but keeps the entries in its in-memory log, unwritten: the
 * leader sends them again, the follower finds them already there and
 * answers with its last *stored* index, which never moves again; the node
 * looks healthy and applies nothing more. A leader drops the entries from
 * its in-memory log although its followers have them, finds "missing entry
 * -> send snapshot" for them at the next heartbeat and, without a snapshot
 * yet, reads freed memory (SIGSEGV inside libraft, seen with the Raft
 * directory on a full tmpfs). An error when a write is submitted stops the
 * server instead (state RAFT_UNAVAILABLE), silently too.
 *
 * So raft_uv's append is wrapped (watched_append): a write that failed is
 * not handed back to libraft, which goes on as if it were still in flight
 * (a leader commits with its followers, a follower answers heartbeats), and
 * the node reports itself failed (raft_node_failed) for its owner to stop
 * it, as when the tables cannot be written; the failed writes are handed
 * back once raft_close made the server unavailable, where libraft only
 * releases them. The tick looks for a server that stopped by itself.
 */
static void transfer_cb(struct raft_transfer *t);
static _Thread_local struct raft_node *tls_node; /* the raft thread's node */

static void mark_failed(struct raft_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void mark_failed(struct raft_node *n, const char *fmt, ...)
{
    if (__atomic_load_n(&n->failed, __ATOMIC_ACQUIRE))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n->failure, sizeof n->failure, fmt, ap);
    va_end(ap);
    log_error("cluster: this node's Raft server cannot go on: %s", n->failure);
    __atomic_store_n(&n->failed, true, __ATOMIC_RELEASE);
}

/* raft_strerror of 0.15 does not know RAFT_NOSPACE */
static const char *io_strerror(int rv)
{
    return rv == RAFT_NOSPACE ? "no space left on the disk" : raft_strerror(rv);
}

static void watched_append_cb(struct raft_io_append *req, int status)
{
    struct raft_node *n = tls_node;
    struct append_watch **pp = &n->appends;
    while (*pp && (*pp)->req != req)
        pp = &(*pp)->next;
    struct append_watch *w = *pp;
    if (!w)
        return; /* never: every watched write is in the list */
    if (status != 0 && !n->closing) {
        mark_failed(n, "a write of its Raft log failed: %s (%s)", io_strerror(status),
                    n->io.errmsg);
        w->held = status; /* handed back at the close (release_held) */
        /* A leader commits no entry past its own stored ones (0.15 counts
         * the quorum up to its last stored index): hand leadership to the
         * most up-to-date follower, which has the entries. */
        if (raft_state(&n->raft) == RAFT_LEADER && !n->transferring) {
            n->transfer.data = n;
            if (raft_transfer(&n->raft, &n->transfer, 0, transfer_cb) == 0)
                n->transferring = true;
        }
        return;
    }
    *pp = w->next;
    raft_io_append_cb cb = w->cb;
    free(w);
    cb(req, status);
}

/* Hand the failed writes back to libraft once the server is unavailable
 * (raft_close): it releases their entries and requests. */
static void release_held(struct raft_node *n)
{
    for (struct append_watch **pp = &n->appends; *pp;) {
        struct append_watch *w = *pp;
        if (!w->held) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        raft_io_append_cb cb = w->cb;
        struct raft_io_append *req = w->req;
        int status = w->held;
        free(w);
        cb(req, status);
    }
}

static int watched_append(struct raft_io *io, struct raft_io_append *req,
                          const struct raft_entry entries[], unsigned count, raft_io_append_cb cb)
{
    struct raft_node *n = (struct raft_node *)((char *)io - offsetof(struct raft_node, io));
    struct append_watch *w = calloc(1, sizeof *w);
    if (!w)
        return n->io_append(io, req, entries, count, cb); /* not watched */
    w->req = req;
    w->cb = cb;
    w->next = n->appends;
    n->appends = w;
    int rc = n->io_append(io, req, entries, count, watched_append_cb);
    if (rc) {
        for (struct append_watch **pp = &n->appends; *pp; pp = &(*pp)->next)
            if (*pp == w) {
                *pp = w->next;
                free(w);
                break;
            }
        if (!n->closing)
            mark_failed(n, "its Raft log refused a write: %s (%s)", io_strerror(rc), io->errmsg);
    }
    return rc;
}

/*
 * A follower that catches up (docs/cluster.md, "A follower in probe mode
 * gets the same entries at every heartbeat"). libraft 0.15's leader, while a
 * follower is in probe mode (after a restart, a rejection or a failed send),
 * sends it every entry from its next index on at every heartbeat (15 ms)
 * until the follower answers, whether or not the previous copy went out:
 * raft_uv queues each one on the connection, without a bound. A follower
 * slow to answer (its first write and apply of what it missed took 1.8 s
 * under load) then has hundreds of copies of the same megabytes queued
 * before anything newer, and reads and compares them one by one for tens of
 * seconds; what the leader sends meanwhile (newer entries, the commit index)
 * waits behind them, and its applied index lags. So raft_uv's send is
 * wrapped: an AppendEntries whose entries start where those of one to the
 * same peer (same term) that is not written out yet start goes as a
 * heartbeat (the same message without its entries), which the follower
 * answers as any other; libraft sends the entries again at its next
 * heartbeat, once that copy went out. New entries (a pipeline's next batch
 * starts further on) are not held back.
 */
static void watched_send_cb(struct raft_io_send *req, int status)
{
    struct raft_node *n = tls_node;
    struct send_watch **pp = &n->sends;
    while (*pp && (*pp)->req != req)
        pp = &(*pp)->next;
    struct send_watch *w = *pp;
    if (!w)
        return; /* never: every watched send is in the list */
    *pp = w->next;
    raft_io_send_cb cb = w->cb;
    free(w);
    cb(req, status);
}

/*
 * A follower's commit index from an AppendEntries (docs/cluster.md, "A
 * heartbeat that commits a stale tail"). The paper's rule is
 * min(leaderCommit, index of the last new entry): only entries the message
 * proved equal to the leader's. libraft 0.15 takes min(leaderCommit, its
 * own last stored index) when the message has no entries, and after an
 * append: entries past prev_log_index + n_entries, which the message said
 * nothing of, count as committed. A node that was leader and wrote an
 * entry no other node has (killed before it replicated) has such a tail.
 * An empty AppendEntries whose prev_log_index matches below that tail (a
 * resend thinned to a heartbeat, watched_send) then marks the stale entry
 * committed, and when the entries come that replace it, 0.15 finds "new
 * index conflicts with committed entry" and stops the server: the node
 * stopped with exit status 74 at its restart (test_faults.py,
 * test_third_resumption_from_a_record_keeps_off_the_first_copys_packet_ids,
 * 2 of about 40 runs under load). So every AppendEntries is bounded
 * both ways: sent (for followers of any version) and received (from
 * leaders of any version). The fsm's guard (fsm_raft_commit_safe) had kept
 * the stale entry from being applied.
 */
bool raft_node_bound_commit(struct raft_message *m)
{
    if (m->type != RAFT_IO_APPEND_ENTRIES)
        return false;
    struct raft_append_entries *a = &m->append_entries;
    raft_index last = a->prev_log_index + a->n_entries;
    if (a->leader_commit <= last)
        return false;
    a->leader_commit = last;
    return true;
}

/*
 * The answer to an AppendEntries is bounded the same way (a review of the
 * above found it). 0.15 answers an AppendEntries that brings nothing to
 * write at once, from within the receive, with last_log_index = its own
 * last stored index, and the leader takes that as the index up to which
 * the follower's log equals its own. After a thinned resend (a heartbeat
 * whose prev_log_index lies below a stale tail) that counted the stale
 * entries as matching: a leader whose other follower is down could commit
 * its entry at that index with the stale node's answer, and lose it if the
 * stale node were elected next. An answer sent while such a message is
 * handled says at most prev_log_index + n_entries. Answers after a write
 * (entries written) say what was written, which the message covered.
 */
static void guarded_recv(struct raft_io *io, struct raft_message *m)
{
    struct raft_node *n = (struct raft_node *)((char *)io - offsetof(struct raft_node, io));
    raft_node_bound_commit(m);
    n->answering = m->type == RAFT_IO_APPEND_ENTRIES;
    n->answer_bound = m->append_entries.prev_log_index + m->append_entries.n_entries;
    n->io_recv(io, m);
    n->answering = false;
}

bool raft_node_bound_answer(struct raft_message *m, uint64_t bound)
{
    if (m->type != RAFT_IO_APPEND_ENTRIES_RESULT)
        return false;
    struct raft_append_entries_result *r = &m->append_entries_result;
    if (r->rejected || r->last_log_index <= bound)
        return false;
    r->last_log_index = bound;
    return true;
}

static int guarded_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
                         raft_io_recv_cb recv)
{
    struct raft_node *n = (struct raft_node *)((char *)io - offsetof(struct raft_node, io));
    n->io_recv = recv;
    return n->io_start(io, msecs, tick, guarded_recv);
}

static int watched_send(struct raft_io *io, struct raft_io_send *req,
                        const struct raft_message *sent, raft_io_send_cb cb)
{
    struct raft_node *n = (struct raft_node *)((char *)io - offsetof(struct raft_node, io));
    struct raft_message bounded = *sent;
    raft_node_bound_commit(&bounded);
    if (n->answering)
        raft_node_bound_answer(&bounded, n->answer_bound);
    const struct raft_message *m = &bounded;
    const struct raft_append_entries *a = &m->append_entries;
    if (m->type != RAFT_IO_APPEND_ENTRIES || a->n_entries == 0)
        return n->io_send(io, req, m, cb);
    for (struct send_watch *w = n->sends; w; w = w->next)
        if (w->to == m->server_id && w->term == a->term && w->prev == a->prev_log_index) {
            struct raft_message hb = *m;
            hb.append_entries.entries = NULL;
            hb.append_entries.n_entries = 0;
            raft_node_bound_commit(&hb);
            __atomic_add_fetch(&n->resends_thinned, 1, __ATOMIC_RELAXED);
            return n->io_send(io, req, &hb, cb);
        }
    struct send_watch *w = calloc(1, sizeof *w);
    if (!w)
        return n->io_send(io, req, m, cb); /* not watched */
    w->req = req;
    w->cb = cb;
    w->to = m->server_id;
    w->term = a->term;
    w->prev = a->prev_log_index;
    w->next = n->sends;
    n->sends = w;
    int rc = n->io_send(io, req, m, watched_send_cb);
    if (rc) /* no callback comes */
        for (struct send_watch **pp = &n->sends; *pp; pp = &(*pp)->next)
            if (*pp == w) {
                *pp = w->next;
                free(w);
                break;
            }
    return rc;
}

/*
 * On the tick: the log stopped growing. Entries in libraft's in-memory log
 * past its last stored one, with no write of ours in flight, are entries
 * that will never be written: the state a failed follower write leaves
 * (above), whatever the write's failure was. Seen for LOG_STALL_MS in a
 * row, the node fails too. (While a snapshot is installed the stored index
 * is 0 for as long as its write takes; 30 s is far longer.)
 */
#define LOG_STALL_MS 30000

static void check_log_stall(struct raft_node *n)
{
    bool writing = false;
    for (struct append_watch *w = n->appends; w && !writing; w = w->next)
        writing = !w->held;
    raft_index last = raft_last_index(&n->raft), stored = n->raft.last_stored;
    if (writing || last <= stored || raft_state(&n->raft) == RAFT_UNAVAILABLE) {
        n->unstored_since = 0;
        return;
    }
    uint64_t now = uv_now(&n->loop);
    if (!n->unstored_since)
        n->unstored_since = now;
    else if (now - n->unstored_since >= LOG_STALL_MS)
        mark_failed(n,
                    "its Raft log stopped growing: entries up to %llu are in memory, stored up "
                    "to %llu, and nothing has been written for %u s",
                    (unsigned long long)last, (unsigned long long)stored, LOG_STALL_MS / 1000);
}

/* On the tick: libraft stopped the server (not for a stop of ours, nor for
 * the tables' failure, which the owner sees by itself: fsm_broken). */
static void check_stopped(struct raft_node *n)
{
    if (!n->closing && raft_state(&n->raft) == RAFT_UNAVAILABLE && !fsm_broken(n->cfg.fsm))
        mark_failed(n, "libraft stopped it: %s", raft_errmsg(&n->raft));
}

/* ---- the loop ---- */

static void barrier_cb(struct raft_barrier *b, int status)
{
    struct raft_node *n = b->data;
    n->barrier_pending = false;
    fsm_raft_flush(&n->adapter);
    if (status == 0 && raft_state(&n->raft) == RAFT_LEADER) {
        n->barrier_term = n->raft.current_term;
        __atomic_store_n(&n->ready, true, __ATOMIC_RELEASE);
        log_info("cluster: leader of term %llu, barrier applied, serving",
                 (unsigned long long)n->barrier_term);
    }
}

static void stop_step(struct raft_node *n);

static void on_tick(uv_timer_t *t)
{
    struct raft_node *n = t->data;
    pthread_mutex_lock(&n->mu);
    n->n_members = 0;
    for (unsigned i = 0; i < n->raft.configuration.n && i < RAFT_NODE_MAX_MEMBERS; i++) {
        const struct raft_server *sv = &n->raft.configuration.servers[i];
        struct raft_node_member *m = &n->members[n->n_members++];
        m->id = sv->id;
        m->role = sv->role == RAFT_VOTER     ? RAFT_NODE_VOTER
                  : sv->role == RAFT_STANDBY ? RAFT_NODE_STANDBY
                                             : RAFT_NODE_SPARE;
        snprintf(m->address, sizeof m->address, "%s", sv->address);
    }
    pthread_mutex_unlock(&n->mu);
    fsm_raft_flush(&n->adapter);
    check_stopped(n);
    if (!n->closing)
        check_log_stall(n);
    uint64_t leader_now = leader_id(n);
    if (leader_now && leader_now != n->last_leader) {
        __atomic_fetch_add(&n->leader_changes, 1, __ATOMIC_RELAXED);
        n->last_leader = leader_now;
    }
    __atomic_store_n(&n->leader, leader_now, __ATOMIC_RELAXED);
    __atomic_store_n(&n->applied, raft_last_applied(&n->raft), __ATOMIC_RELAXED);
    __atomic_store_n(&n->term, (uint64_t)n->raft.current_term, __ATOMIC_RELAXED);
    __atomic_store_n(&n->commit, (uint64_t)n->raft.commit_index, __ATOMIC_RELAXED);
    bool leader = raft_state(&n->raft) == RAFT_LEADER;
    if (!leader || n->barrier_term != n->raft.current_term)
        __atomic_store_n(&n->ready, false, __ATOMIC_RELEASE);
    if (!leader) {
        /* libraft ends a lost leader's entries (RAFT_LEADERSHIPLOST); should
         * one not be answered, group commit must not hold a later term */
        n->groups_inflight = 0;
        if (n->held) {
            n->held = false;
            uv_async_send(&n->async);
        }
    }
    if (n->stop_deadline) {
        stop_step(n);
        return;
    }
    if (leader && n->barrier_term != n->raft.current_term && !n->barrier_pending) {
        n->barrier.data = n;
        if (raft_barrier(&n->raft, &n->barrier, barrier_cb) == 0)
            n->barrier_pending = true;
    }
}

static void handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void raft_closed(struct raft *r)
{
    struct raft_node *n = r->data;
    uv_close((uv_handle_t *)&n->async, handle_closed);
    uv_close((uv_handle_t *)&n->timer, handle_closed);
}

/*
 * A stop closes Raft once the entries this leader proposed are applied, or
 * after STOP_DRAIN_MS (a leader without a majority): libraft 0.15's
 * raft_close on a leader whose entries are in flight crashed (a NULL read
 * inside libraft, tests/unit/test_raft_node "stopped under 2,000
 * proposals"). Their proposers get their outcome rather than -ECANCELED.
 * Called again by group_apply_cb (through the async) and by the tick until
 * it closes; raft_close is called once (group_apply_cb, run by raft_close
 * itself, wakes the loop again before raft_closed closed the handles).
 */
#define STOP_DRAIN_MS 2000

static void stop_step(struct raft_node *n)
{
    if (n->closing)
        return;
    uint64_t now = uv_now(n->timer.loop);
    if (!n->stop_deadline)
        n->stop_deadline = now + STOP_DRAIN_MS;
    if (n->groups_inflight && raft_state(&n->raft) == RAFT_LEADER && now < n->stop_deadline)
        return;
    n->closing = true;
    if (n->cfg.on_stop)
        n->cfg.on_stop(n->cfg.hook_ud);
    uv_timer_stop(&n->timer);
    raft_close(&n->raft, raft_closed);
    release_held(n);
}

static void on_async(uv_async_t *a)
{
    struct raft_node *n = a->data;
    pthread_mutex_lock(&n->mu);
    if (!n->stopping && n->groups_inflight >= GROUPS_INFLIGHT && n->queue &&
        raft_state(&n->raft) == RAFT_LEADER) {
        /* group commit: group_apply_cb wakes the loop again */
        n->held = true;
        pthread_mutex_unlock(&n->mu);
        return;
    }
    struct req *q = n->queue;
    n->queue = NULL;
    n->tail = &n->queue;
    bool stopping = n->stopping;
    pthread_mutex_unlock(&n->mu);
    /* Runs of proposals go out grouped; an addition ends a run, so the
     * order of the queue is kept. */
    struct req *run[256];
    unsigned nrun = 0;
    while (q) {
        struct req *r = q;
        q = q->next;
        if (stopping) {
            req_done(r, -ECANCELED, NULL);
            continue;
        }
        if (r->kind == REQ_PROPOSE) {
            run[nrun++] = r;
            if (nrun == sizeof run / sizeof run[0]) {
                start_proposals(n, run, nrun);
                nrun = 0;
            }
            continue;
        }
        if (nrun) {
            start_proposals(n, run, nrun);
            nrun = 0;
        }
        if (r->kind == REQ_ADD)
            start_add(n, r);
        else
            start_remove(n, r);
    }
    if (nrun)
        start_proposals(n, run, nrun);
    if (stopping)
        stop_step(n);
}

static int addr_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The bootstrap rule of raft_node.h. */
static int bootstrap(struct raft_node *n)
{
    unsigned ns = n->cfg.n_seeds;
    bool self_seed = false;
    for (unsigned i = 0; i < ns; i++)
        self_seed |= strcmp(n->seeds[i], n->address) == 0;
    if (!self_seed || n->cfg.no_bootstrap)
        return 0;
    qsort(n->seeds, ns, sizeof *n->seeds, addr_cmp);
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rc = 0;
    unsigned voters = 0;
    for (unsigned i = 0; i < ns && rc == 0; i++) {
        if (i > 0 && strcmp(n->seeds[i], n->seeds[i - 1]) == 0)
            continue;
        int role = voters < n->max_voters ? RAFT_VOTER : RAFT_STANDBY;
        voters += role == RAFT_VOTER;
        rc = raft_configuration_add(&conf, raft_node_id_of(n->seeds[i]), n->seeds[i], role);
    }
    if (rc == 0)
        rc = raft_bootstrap(&n->raft, &conf);
    raft_configuration_close(&conf);
    if (rc == RAFT_CANTBOOTSTRAP)
        rc = 0; /* state exists already: a restart */
    return rc;
}

static void *thread_main(void *arg)
{
    struct raft_node *n = arg;
    /* A write to a peer that went away must fail with EPIPE, not kill the
     * process, whatever the embedding program did with SIGPIPE: block it on
     * this thread (a SIGPIPE raised by a write is this thread's own). */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    int rc = uv_loop_init(&n->loop);
    const char *what = "uv_loop_init";
    bool io_init = false, raft_init_done = false;
    if (rc == 0) {
        what = "transport";
        rc = raft_transport_init(&n->transport, &n->loop, n->cfg.cluster_name,
                                 n->cfg.cluster_secret, n->bind_ip);
    }
    if (rc == 0) {
        what = "raft_uv_init";
        rc = raft_uv_init(&n->io, &n->loop, n->dir, &n->transport);
        io_init = rc == 0;
    }
    if (rc == 0) {
        tls_node = n;
        n->io_append = n->io.append;
        n->io.append = watched_append;
        n->io_send = n->io.send;
        n->io.send = watched_send;
        n->io_start = n->io.start;
        n->io.start = guarded_start;
    }
    if (rc == 0) {
        what = "raft_init";
        fsm_raft_init(&n->adapter, n->cfg.fsm);
        rc = raft_init(&n->raft, &n->io, &n->adapter.raft_fsm, n->self, n->address);
        raft_init_done = rc == 0;
    }
    if (rc == 0) {
        n->raft.data = n;
        fsm_raft_bind(&n->adapter, &n->raft);
        raft_set_election_timeout(&n->raft,
                                  n->cfg.election_timeout_ms ? n->cfg.election_timeout_ms : 1000);
        raft_set_heartbeat_timeout(&n->raft, n->cfg.heartbeat_ms ? n->cfg.heartbeat_ms : 100);
        raft_set_snapshot_threshold(&n->raft,
                                    n->cfg.snapshot_threshold ? n->cfg.snapshot_threshold : 1024);
        if (n->cfg.snapshot_trailing)
            raft_set_snapshot_trailing(&n->raft, n->cfg.snapshot_trailing);
        raft_set_pre_vote(&n->raft, true);
        what = "raft_bootstrap";
        rc = bootstrap(n);
    }
    if (rc == 0) {
        what = "raft_start";
        rc = raft_start(&n->raft);
    }
    if (rc == 0 && n->cfg.on_start) {
        what = "start hook";
        int hrc = n->cfg.on_start(n->cfg.hook_ud, n, &n->loop);
        if (hrc) {
            snprintf(n->err, sizeof n->err, "%s: %s", n->address, strerror(-hrc));
            rc = RAFT_IOERR;
            n->start_rc = hrc;
        }
    }
    if (rc == 0) {
        uv_async_init(&n->loop, &n->async, on_async);
        n->async.data = n;
        uv_timer_init(&n->loop, &n->timer);
        n->timer.data = n;
        uv_timer_start(&n->timer, on_tick, 50, 50);
    } else if (!n->err[0]) {
        snprintf(n->err, sizeof n->err, "%s: %s: %s", n->address, what,
                 raft_init_done ? raft_errmsg(&n->raft) : raft_strerror(rc));
    }
    pthread_mutex_lock(&n->mu);
    n->started = true;
    if (!n->start_rc)
        n->start_rc = rc;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (rc == 0) {
        uv_run(&n->loop, UV_RUN_DEFAULT);
    } else if (raft_init_done) {
        raft_close(&n->raft, NULL);
        uv_run(&n->loop, UV_RUN_DEFAULT);
    }
    if (io_init)
        raft_uv_close(&n->io);
    while (n->appends) { /* none once raft_uv closed; never leaked */
        struct append_watch *w = n->appends;
        n->appends = w->next;
        free(w);
    }
    while (n->sends) {
        struct send_watch *w = n->sends;
        n->sends = w->next;
        free(w);
    }
    raft_transport_close(&n->transport);
    uv_loop_close(&n->loop);
    return NULL;
}

static int mkdirs(const char *dir)
{
    char p[512];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof p)
        return -ENAMETOOLONG;
    memcpy(p, dir, len + 1);
    for (size_t i = 1; i <= len; i++)
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (mkdir(p, 0700) != 0 && errno != EEXIST)
                return -errno;
            p[i] = c;
        }
    return 0;
}

int raft_node_start(struct raft_node **out, const struct raft_node_config *c, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (!c->fsm || !c->address || strlen(c->address) >= RAFT_NODE_ADDR_MAX || !c->dir ||
        strlen(c->dir) >= 512 || (c->bind_ip && strlen(c->bind_ip) >= 16)) {
        snprintf(err, errlen, "raft node: missing or too long dir/address");
        return -EINVAL;
    }
    int rc = mkdirs(c->dir);
    if (rc) {
        snprintf(err, errlen, "%s: %s", c->dir, strerror(-rc));
        return rc;
    }
    struct raft_node *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    n->cfg = *c;
    n->cfg.cluster_name = c->cluster_name ? c->cluster_name : "starling";
    n->cfg.cluster_secret = c->cluster_secret ? c->cluster_secret : "";
    snprintf(n->dir, sizeof n->dir, "%s", c->dir);
    snprintf(n->address, sizeof n->address, "%s", c->address);
    snprintf(n->bind_ip, sizeof n->bind_ip, "%s", c->bind_ip ? c->bind_ip : "");
    n->seeds = calloc(c->n_seeds ? c->n_seeds : 1, sizeof *n->seeds);
    if (!n->seeds) {
        free(n);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < c->n_seeds; i++)
        snprintf(n->seeds[i], sizeof n->seeds[i], "%s", c->seeds[i]);
    n->self = raft_node_id_of(n->address);
    n->max_voters = c->max_voters ? c->max_voters : RAFT_NODE_MAX_VOTERS;
    n->tail = &n->queue;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    /* Before the thread starts: its hooks (on_start) start timers of the
     * caller that read *out. */
    *out = n;
    rc = pthread_create(&n->thread, NULL, thread_main, n);
    if (rc) {
        *out = NULL;
        free(n->seeds);
        free(n);
        return -rc;
    }
    pthread_mutex_lock(&n->mu);
    while (!n->started)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    if (n->start_rc) {
        snprintf(err, errlen, "%s", n->err);
        rc = n->start_rc < 0 ? n->start_rc : -EIO;
        pthread_join(n->thread, NULL);
        *out = NULL;
        pthread_mutex_destroy(&n->mu);
        pthread_cond_destroy(&n->cv);
        free(n->seeds);
        free(n);
        return rc;
    }
    return 0;
}

void raft_node_stop(struct raft_node *n)
{
    if (!n)
        return;
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_mutex_unlock(&n->mu);
    uv_async_send(&n->async);
    pthread_join(n->thread, NULL);
    fsm_raft_close(&n->adapter);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    free(n->seeds);
    free(n);
}

static int enqueue(struct raft_node *n, struct req *r)
{
    pthread_mutex_lock(&n->mu);
    if (n->stopping) {
        pthread_mutex_unlock(&n->mu);
        free(r->buf);
        free(r);
        return -ECANCELED;
    }
    *n->tail = r;
    n->tail = &r->next;
    pthread_mutex_unlock(&n->mu);
    uv_async_send(&n->async);
    return 0;
}

int raft_node_propose(struct raft_node *n, const void *batch, size_t len, raft_node_done_fn done,
                      void *ud)
{
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->buf = malloc(len ? len : 1);
    if (!r->buf) {
        free(r);
        return -ENOMEM;
    }
    memcpy(r->buf, batch, len);
    r->len = len;
    r->kind = REQ_PROPOSE;
    r->n = n;
    r->done = done;
    r->ud = ud;
    return enqueue(n, r);
}

int raft_node_add(struct raft_node *n, const char *addr, raft_node_done_fn done, void *ud)
{
    if (!addr || strlen(addr) >= RAFT_NODE_ADDR_MAX)
        return -EINVAL;
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    snprintf(r->addr, sizeof r->addr, "%s", addr);
    r->kind = REQ_ADD;
    r->n = n;
    r->done = done;
    r->ud = ud;
    return enqueue(n, r);
}

uint64_t raft_node_self(struct raft_node *n)
{
    return n->self;
}

uint64_t raft_node_leader(struct raft_node *n)
{
    return __atomic_load_n(&n->leader, __ATOMIC_RELAXED);
}

bool raft_node_ready(struct raft_node *n)
{
    return __atomic_load_n(&n->ready, __ATOMIC_ACQUIRE);
}

uint64_t raft_node_applied(struct raft_node *n)
{
    return __atomic_load_n(&n->applied, __ATOMIC_RELAXED);
}

uint64_t raft_node_refused(struct raft_node *n)
{
    return raft_transport_refused(&n->transport);
}

void raft_node_checkpoint(struct raft_node *n, uint64_t *index, uint64_t *checksum)
{
    /* Both from one read transaction of the tables: a consistent pair. */
    if (fsm_state(n->cfg.fsm, index, checksum) != 0)
        *index = *checksum = 0;
}

int raft_node_divergence_check(struct raft_node *n, uint64_t index, uint64_t checksum, bool mark)
{
    uint64_t mine;
    if (fsm_raft_checksum_at(&n->adapter, index, &mine) != 0)
        return -ENOENT;
    if (mine == checksum) {
        __atomic_add_fetch(&n->checks_equal, 1, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_add_fetch(&n->divergences, 1, __ATOMIC_RELAXED);
    if (mark && !__atomic_exchange_n(&n->diverged, true, __ATOMIC_ACQ_REL))
        log_error("cluster: DIVERGENCE: after entry %llu this node's replicated tables have "
                  "checksum %016llx, the leader's %016llx: this node's tables are not the "
                  "cluster's and it must be rebuilt from a snapshot (docs/cluster.md)",
                  (unsigned long long)index, (unsigned long long)mine,
                  (unsigned long long)checksum);
    return 1;
}

static void transfer_cb(struct raft_transfer *t)
{
    struct raft_node *n = t->data;
    n->transferring = false;
}

int raft_node_step_down(struct raft_node *n)
{
    if (raft_state(&n->raft) != RAFT_LEADER)
        return -ENOTCONN;
    if (n->transferring)
        return -EBUSY;
    n->transfer.data = n;
    int rc = raft_transfer(&n->raft, &n->transfer, 0, transfer_cb);
    if (rc)
        return status_of(rc);
    n->transferring = true;
    return 0;
}

bool raft_node_heard_recently(struct raft_node *n, uint64_t id)
{
    /* libraft 0.15 has no call for this; its leader keeps, in the public
     * struct raft of <raft.h>, one struct raft_progress per server of
     * r->configuration (same order), whose documented recent_recv is "a msg
     * was received within election timeout": set on each message from that
     * server, cleared when the leader checks its contact with a majority,
     * once per election timeout. Only the documented fields are read
     * (state, configuration, leader_state.progress[i].recent_recv), on the
     * raft thread that owns them. */
    struct raft *r = &n->raft;
    if (raft_state(r) != RAFT_LEADER || !r->leader_state.progress)
        return false;
    for (unsigned i = 0; i < r->configuration.n; i++)
        if (r->configuration.servers[i].id == id)
            return r->leader_state.progress[i].recent_recv;
    return false;
}

int raft_node_checksum_at(struct raft_node *n, uint64_t index, uint64_t *out)
{
    return fsm_raft_checksum_at(&n->adapter, index, out) == 0 ? 0 : -ENOENT;
}

void raft_node_set_diverged(struct raft_node *n)
{
    __atomic_store_n(&n->diverged, true, __ATOMIC_RELEASE);
}

bool raft_node_failed(struct raft_node *n, char *why, size_t len)
{
    if (!__atomic_load_n(&n->failed, __ATOMIC_ACQUIRE))
        return false;
    if (why && len)
        snprintf(why, len, "%s", n->failure);
    return true;
}

bool raft_node_diverged(struct raft_node *n)
{
    return __atomic_load_n(&n->diverged, __ATOMIC_ACQUIRE);
}

void raft_node_stats(struct raft_node *n, struct raft_node_stats *o)
{
    struct fsm_raft *a = &n->adapter;
    o->applied = __atomic_load_n(&a->n_applied, __ATOMIC_RELAXED);
    o->replays_skipped = __atomic_load_n(&a->n_skipped, __ATOMIC_RELAXED);
    o->snapshots = __atomic_load_n(&a->n_snapshots, __ATOMIC_RELAXED);
    o->restores = __atomic_load_n(&a->n_restores, __ATOMIC_RELAXED);
    o->restores_skipped = __atomic_load_n(&a->n_restores_skipped, __ATOMIC_RELAXED);
    o->apply_errors = __atomic_load_n(&a->n_apply_errors, __ATOMIC_RELAXED);
    o->refused = raft_node_refused(n);
    o->divergences = __atomic_load_n(&n->divergences, __ATOMIC_RELAXED);
    o->checks_equal = __atomic_load_n(&n->checks_equal, __ATOMIC_RELAXED);
    o->term = __atomic_load_n(&n->term, __ATOMIC_RELAXED);
    o->commit_index = __atomic_load_n(&n->commit, __ATOMIC_RELAXED);
    o->last_applied = __atomic_load_n(&n->applied, __ATOMIC_RELAXED);
    o->leader_changes = __atomic_load_n(&n->leader_changes, __ATOMIC_RELAXED);
    o->resends_thinned = __atomic_load_n(&n->resends_thinned, __ATOMIC_RELAXED);
}

int raft_node_remove(struct raft_node *n, uint64_t id, raft_node_done_fn done, void *ud)
{
    if (!id)
        return -EINVAL;
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->kind = REQ_REMOVE;
    r->id = id;
    r->n = n;
    r->done = done;
    r->ud = ud;
    return enqueue(n, r);
}

unsigned raft_node_members(struct raft_node *n, struct raft_node_member *out, unsigned max)
{
    pthread_mutex_lock(&n->mu);
    unsigned k = n->n_members < max ? n->n_members : max;
    memcpy(out, n->members, k * sizeof *out);
    pthread_mutex_unlock(&n->mu);
    return k;
}
