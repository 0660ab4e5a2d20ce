/*
 * cluster.c - the node's membership in the cluster (see cluster.h).
 *
 * Everything below runs on the cluster thread (the raft_node's loop), except
 * cluster_propose and cluster_send, which only hand work over.
 *
 * A proposal is first given to the local raft_node. If that answers "not
 * the leader" (or "not ready") and another node is the leader, the proposal
 * goes to it as chan.Propose{id, batch} and waits, on c->waiting, for the
 * chan.ProposeResult with the same id or its deadline. The leader proposes
 * what it receives and answers when its own proposal completes - after the
 * entry was applied there, so a node's own Member record is applied (and its
 * channel peer known) before the answer to it is sent.
 */
#include "cluster.h"
#include "channel.pb-c.h"
#include "cmd.h"
#include "log.h"
#include "raft_cmd.pb-c.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fwd {
    struct fwd *next;
    struct cluster *c;
    void *entry;
    size_t len;
    raft_node_done_fn done;
    void *ud;
    uint64_t id;
    uint64_t deadline_ms;
};

struct remote_req {
    struct cluster *c;
    uint64_t from, id;
};

#define MAX_CHECKS 16       /* peers whose last checkpoint waits to be compared */
#define CHECKPOINT_EVERY 10 /* timer ticks (100 ms): a checkpoint a second */

struct cluster {
    struct cluster_config cfg;
    char name[256], node_name[256], secret[256], address[64], raft_addr[64], chan_addr[64];
    struct fsm *fsm;
    struct raft_node *raft;
    struct chan *chan;
    uv_loop_t *loop;
    uv_timer_t timer;
    uint64_t self;
    struct fwd *waiting;
    uint64_t next_id;
    bool member_inflight;
    unsigned ticks;
    uint64_t members[64]; /* other members' ids, from the last scan */
    unsigned n_members;
    struct {
        uint64_t from, index, checksum;
    } checks[MAX_CHECKS]; /* peers' checkpoints not yet comparable */
    bool stopping;        /* atomic */
};

static uint64_t now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void fwd_finish(struct fwd *f, int status, const struct fsm_batch_result *res,
                       uint64_t leader)
{
    if (f->done)
        f->done(f->ud, status, res, leader);
    free(f->entry);
    free(f);
}

/* ---- forwarding a proposal to the leader ---- */

static int forward(struct cluster *c, struct fwd *f, uint64_t leader)
{
    const void *pb;
    size_t pb_len;
    if (cmd_entry_unwrap(f->entry, f->len, &pb, &pb_len) != 0)
        return -EINVAL;
    Starling__Cmd__CommandBatch *b = starling__cmd__command_batch__unpack(NULL, pb_len, pb);
    if (!b)
        return -EINVAL;
    f->id = ++c->next_id;
    Starling__Chan__Propose p = STARLING__CHAN__PROPOSE__INIT;
    p.id = f->id;
    p.batch = b;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_PROPOSE;
    fr.propose = &p;
    size_t n = starling__chan__frame__get_packed_size(&fr);
    uint8_t *buf = malloc(n ? n : 1);
    int rc = -ENOMEM;
    if (buf) {
        starling__chan__frame__pack(&fr, buf);
        rc = chan_send(c->chan, leader, buf, n);
        free(buf);
    }
    starling__cmd__command_batch__free_unpacked(b, NULL);
    if (rc)
        return rc;
    unsigned timeout = c->cfg.propose_timeout_ms ? c->cfg.propose_timeout_ms : 5000;
    f->deadline_ms = now_mono_ms() + timeout;
    f->next = c->waiting;
    c->waiting = f;
    return 0;
}

static void local_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    struct fwd *f = ud;
    struct cluster *c = f->c;
    if ((status == -ENOTCONN || status == -EAGAIN) && leader && leader != c->self && c->chan &&
        !__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
        int rc = forward(c, f, leader);
        if (rc == 0)
            return;
        /* The leader's channel address is not known yet (its Member record
         * is not applied here) or its queue is full: the caller retries. */
        fwd_finish(f, status, NULL, leader);
        return;
    }
    fwd_finish(f, status, res, leader);
}

int cluster_propose(struct cluster *c, const void *entry, size_t len, raft_node_done_fn done,
                    void *ud)
{
    struct fwd *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->entry = malloc(len ? len : 1);
    if (!f->entry) {
        free(f);
        return -ENOMEM;
    }
    memcpy(f->entry, entry, len);
    f->len = len;
    f->c = c;
    f->done = done;
    f->ud = ud;
    int rc = raft_node_propose(c->raft, entry, len, local_done, f);
    if (rc) {
        free(f->entry);
        free(f);
    }
    return rc;
}

/* ---- the leader's side ---- */

static void send_result(struct cluster *c, uint64_t to, uint64_t id, int status,
                        const struct fsm_batch_result *res, uint64_t leader)
{
    Starling__Chan__ProposeResult r = STARLING__CHAN__PROPOSE_RESULT__INIT;
    r.id = id;
    r.status = status;
    Starling__Cmd__Result *results = NULL;
    if (status == 0 && res) {
        r.has_index = 1;
        r.index = res->index;
        results = malloc((res->n ? res->n : 1) * sizeof *results);
        if (results) {
            for (uint32_t i = 0; i < res->n; i++)
                results[i] = (Starling__Cmd__Result)res->results[i];
            r.n_results = res->n;
            r.results = results;
        }
    }
    if (leader) {
        r.has_leader = 1;
        r.leader = leader;
    }
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_PROPOSE_RESULT;
    fr.propose_result = &r;
    size_t n = starling__chan__frame__get_packed_size(&fr);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf) {
        starling__chan__frame__pack(&fr, buf);
        if (c->chan && chan_send(c->chan, to, buf, n) != 0)
            log_warn("cluster: cannot answer a proposal of node %016llx", (unsigned long long)to);
        free(buf);
    }
    free(results);
}

static void remote_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    struct remote_req *q = ud;
    if (!__atomic_load_n(&q->c->stopping, __ATOMIC_ACQUIRE))
        send_result(q->c, q->from, q->id, status, res, leader);
    free(q);
}

static void on_propose(struct cluster *c, uint64_t from, const Starling__Chan__Propose *p)
{
    size_t n = starling__cmd__command_batch__get_packed_size(p->batch);
    uint8_t *pb = malloc(n ? n : 1);
    void *entry = NULL;
    size_t elen = 0;
    struct remote_req *q = malloc(sizeof *q);
    int rc = -ENOMEM;
    if (pb && q) {
        starling__cmd__command_batch__pack(p->batch, pb);
        rc = cmd_entry_wrap(pb, n, &entry, &elen);
    }
    free(pb);
    if (rc == 0) {
        *q = (struct remote_req){c, from, p->id};
        rc = raft_node_propose(c->raft, entry, elen, remote_done, q);
        free(entry);
        if (rc == 0)
            return;
    }
    free(q);
    send_result(c, from, p->id, rc, NULL, raft_node_leader(c->raft));
}

static void on_result(struct cluster *c, const Starling__Chan__ProposeResult *r)
{
    for (struct fwd **pp = &c->waiting; *pp; pp = &(*pp)->next) {
        struct fwd *f = *pp;
        if (f->id != r->id)
            continue;
        *pp = f->next;
        static struct fsm_batch_result res;
        memset(&res, 0, offsetof(struct fsm_batch_result, results));
        res.index = r->has_index ? r->index : 0;
        res.n = r->n_results > FSM_MAX_BATCH ? FSM_MAX_BATCH : (uint32_t)r->n_results;
        for (uint32_t i = 0; i < res.n; i++)
            res.results[i] = (uint8_t)r->results[i];
        fwd_finish(f, r->status, r->status == 0 ? &res : NULL, r->has_leader ? r->leader : 0);
        return;
    }
    /* An answer after its deadline: the caller was told -ETIMEDOUT. */
}

static void check_or_keep(struct cluster *c, uint64_t from, uint64_t index, uint64_t checksum);

static void on_frame(void *ud, uint64_t from, const void *frame)
{
    struct cluster *c = ud;
    const Starling__Chan__Frame *f = frame;
    switch (f->frame_case) {
    case STARLING__CHAN__FRAME__FRAME_PROPOSE:
        on_propose(c, from, f->propose);
        return;
    case STARLING__CHAN__FRAME__FRAME_PROPOSE_RESULT:
        on_result(c, f->propose_result);
        return;
    case STARLING__CHAN__FRAME__FRAME_DIVERGENCE_CHECK:
        check_or_keep(c, from, f->divergence_check->applied_index, f->divergence_check->checksum);
        return;
    default:
        if (c->cfg.on_frame)
            c->cfg.on_frame(c->cfg.frame_ud, from, frame);
    }
}

/* ---- members and peers ---- */

/* Dial node at address:port; replace: it may have moved (a Member command
 * was applied), else keep an existing peer as it is. */
static void add_peer(struct cluster *c, uint64_t node, const char *address, unsigned port,
                     bool replace)
{
    if (node == c->self || !c->chan)
        return;
    char addr[80];
    snprintf(addr, sizeof addr, "%s:%u", address, port);
    int rc = chan_peer_add(c->chan, node, addr);
    if (rc == -EEXIST && replace) {
        chan_peer_remove(c->chan, node);
        rc = chan_peer_add(c->chan, node, addr);
    }
    if (rc && rc != -EEXIST)
        log_warn("cluster: cannot add peer %016llx at %s: %s", (unsigned long long)node, addr,
                 strerror(-rc));
}

static void observer(void *ud, uint64_t index, const void *cmd)
{
    struct cluster *c = ud;
    const Starling__Cmd__Command *k = cmd;
    if (k->cmd_case == STARLING__CMD__COMMAND__CMD_MEMBER)
        add_peer(c, k->member->node, k->member->address, k->member->cluster_port, true);
    else if (k->cmd_case == STARLING__CMD__COMMAND__CMD_MEMBER_REMOVE && c->chan &&
             k->member_remove->node != c->self)
        chan_peer_remove(c->chan, k->member_remove->node);
    if (c->cfg.observer)
        c->cfg.observer(c->cfg.observer_ud, index, cmd);
}

struct member_scan {
    struct cluster *c;
    bool self_ok;
};

static int scan_member(void *ud, uint64_t node, const void *rec, size_t len)
{
    struct member_scan *s = ud;
    struct cluster *c = s->c;
    Starling__Cmd__Member *m = starling__cmd__member__unpack(NULL, len, rec);
    if (!m)
        return 0;
    if (node == c->self) {
        s->self_ok = strcmp(m->name, c->cfg.node_name) == 0 &&
                     strcmp(m->address, c->address) == 0 &&
                     m->cluster_port == c->cfg.cluster_port && m->raft_port == c->cfg.raft_port;
    } else {
        add_peer(c, node, m->address, m->cluster_port, false);
        if (c->n_members < sizeof c->members / sizeof c->members[0])
            c->members[c->n_members++] = node;
    }
    starling__cmd__member__free_unpacked(m, NULL);
    return 0;
}

static void member_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)status;
    (void)res;
    (void)leader;
    struct cluster *c = ud;
    c->member_inflight = false;
}

/* Dial every member (those known from an earlier run too), and make sure
 * the members table holds this node's own record. */
static void ensure_member(struct cluster *c)
{
    struct member_scan s = {c, false};
    c->n_members = 0;
    fsm_members(c->fsm, scan_member, &s);
    if (s.self_ok || c->member_inflight || !raft_node_leader(c->raft))
        return;
    struct cmd_batch *b = cmd_batch_new();
    if (!b)
        return;
    size_t len;
    const void *e = NULL;
    if (cmd_member(b, c->self, c->cfg.node_name, c->address, c->cfg.cluster_port, c->cfg.raft_port,
                   CMD_ROLE_VOTER, 0) == 0)
        e = cmd_batch_data(b, &len);
    if (e && cluster_propose(c, e, len, member_done, c) == 0)
        c->member_inflight = true;
    cmd_batch_free(b);
}

/* ---- the divergence detector's traffic ---- */

/* Compare a peer's checkpoint now, or keep it until this node has applied
 * that index (one pending checkpoint per peer, the latest). */
static void check_or_keep(struct cluster *c, uint64_t from, uint64_t index, uint64_t checksum)
{
    int rc = raft_node_divergence_check(c->raft, index, checksum);
    int slot = -1;
    for (int i = 0; i < MAX_CHECKS; i++)
        if (c->checks[i].from == from || (slot < 0 && c->checks[i].from == 0))
            slot = i;
    if (slot < 0)
        return;
    if (rc == -ENOENT && index > raft_node_applied(c->raft)) {
        c->checks[slot].from = from;
        c->checks[slot].index = index;
        c->checks[slot].checksum = checksum;
    } else if (c->checks[slot].from == from) {
        c->checks[slot].from = 0;
    }
}

static void retry_checks(struct cluster *c)
{
    for (int i = 0; i < MAX_CHECKS; i++) {
        if (!c->checks[i].from || c->checks[i].index > raft_node_applied(c->raft))
            continue;
        /* Applied now (or skipped past): compare once, then forget. */
        raft_node_divergence_check(c->raft, c->checks[i].index, c->checks[i].checksum);
        c->checks[i].from = 0;
    }
}

static void send_checkpoint(struct cluster *c)
{
    Starling__Chan__DivergenceCheck d = STARLING__CHAN__DIVERGENCE_CHECK__INIT;
    raft_node_checkpoint(c->raft, &d.applied_index, &d.checksum);
    if (!d.applied_index)
        return;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_DIVERGENCE_CHECK;
    fr.divergence_check = &d;
    uint8_t buf[64];
    size_t n = starling__chan__frame__pack(&fr, buf);
    for (unsigned i = 0; i < c->n_members; i++)
        chan_send(c->chan, c->members[i], buf, n);
}

static void on_timer(uv_timer_t *t)
{
    struct cluster *c = t->data;
    if (++c->ticks % CHECKPOINT_EVERY == 0)
        send_checkpoint(c);
    retry_checks(c);
    uint64_t now = now_mono_ms();
    for (struct fwd **pp = &c->waiting; *pp;) {
        struct fwd *f = *pp;
        if (f->deadline_ms <= now) {
            *pp = f->next;
            fwd_finish(f, -ETIMEDOUT, NULL, raft_node_leader(c->raft));
        } else {
            pp = &f->next;
        }
    }
    ensure_member(c);
}

/* ---- start and stop (hooks of raft_node, on the cluster thread) ---- */

static int hook_start(void *ud, struct raft_node *n, uv_loop_t *loop)
{
    struct cluster *c = ud;
    /* raft_node_start has not returned yet: its result is not in c->raft,
     * and the timer below may fire before it is. */
    c->raft = n;
    c->loop = loop;
    struct chan_options o = {.loop = loop,
                             .self = c->self,
                             .self_name = c->cfg.node_name,
                             .address = c->chan_addr,
                             .cluster_name = c->name,
                             .cluster_secret = c->cfg.cluster_secret,
                             .on_frame = on_frame,
                             .ud = c};
    char err[256];
    int rc = chan_start(&c->chan, &o, err, sizeof err);
    if (rc) {
        log_error("cluster: %s", err);
        return rc;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_timer, 100, 100);
    return 0;
}

static void hook_stop(void *ud)
{
    struct cluster *c = ud;
    __atomic_store_n(&c->stopping, true, __ATOMIC_RELEASE);
    while (c->waiting) {
        struct fwd *f = c->waiting;
        c->waiting = f->next;
        fwd_finish(f, -ECANCELED, NULL, 0);
    }
    if (c->chan) {
        uv_close((uv_handle_t *)&c->timer, NULL);
        chan_stop(c->chan, NULL, NULL);
        c->chan = NULL;
    }
}

int cluster_start(struct cluster **out, const struct cluster_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->dir || !cfg->node_name || !cfg->address || !cfg->raft_port || !cfg->cluster_port ||
        strlen(cfg->address) > 15 || strlen(cfg->dir) > 400) {
        snprintf(err, errlen, "cluster: dir, node_name, address and ports are required");
        return -EINVAL;
    }
    struct cluster *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->cfg = *cfg;
    /* Keep copies: the caller's strings need not outlive this call. */
    snprintf(c->name, sizeof c->name, "%s", cfg->cluster_name ? cfg->cluster_name : "starling");
    snprintf(c->node_name, sizeof c->node_name, "%s", cfg->node_name);
    snprintf(c->secret, sizeof c->secret, "%s", cfg->cluster_secret ? cfg->cluster_secret : "");
    c->cfg.cluster_name = c->name;
    c->cfg.node_name = c->node_name;
    c->cfg.cluster_secret = c->secret;
    c->cfg.seeds = NULL; /* copied by raft_node */
    c->cfg.address = c->address;
    snprintf(c->address, sizeof c->address, "%s", cfg->address);
    snprintf(c->raft_addr, sizeof c->raft_addr, "%s:%u", cfg->address, cfg->raft_port);
    snprintf(c->chan_addr, sizeof c->chan_addr, "%s:%u", cfg->address, cfg->cluster_port);
    c->self = raft_node_id_of(c->raft_addr);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fsm", cfg->dir);
    struct fsm_options fo = {.dir = dir, .observer = observer, .observer_ud = c};
    int rc = fsm_open(&c->fsm, &fo, err, errlen);
    if (rc) {
        free(c);
        return rc;
    }
    snprintf(dir, sizeof dir, "%s/raft", cfg->dir);
    struct raft_node_config rc_cfg = {.dir = dir,
                                      .fsm = c->fsm,
                                      .address = c->raft_addr,
                                      .seeds = cfg->seeds,
                                      .n_seeds = cfg->n_seeds,
                                      .cluster_name = c->name,
                                      .cluster_secret = c->cfg.cluster_secret,
                                      .election_timeout_ms = cfg->election_timeout_ms,
                                      .heartbeat_ms = cfg->heartbeat_ms,
                                      .snapshot_threshold = cfg->snapshot_threshold,
                                      .on_start = hook_start,
                                      .on_stop = hook_stop,
                                      .hook_ud = c};
    rc = raft_node_start(&c->raft, &rc_cfg, err, errlen);
    if (rc) {
        fsm_close(c->fsm);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void cluster_stop(struct cluster *c)
{
    if (!c)
        return;
    raft_node_stop(c->raft);
    fsm_close(c->fsm);
    free(c);
}

uint64_t cluster_self(struct cluster *c)
{
    return c->self;
}

struct fsm *cluster_fsm(struct cluster *c)
{
    return c->fsm;
}

struct raft_node *cluster_raft(struct cluster *c)
{
    return c->raft;
}

int cluster_send(struct cluster *c, uint64_t node, const void *frame, size_t len)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return -ECANCELED;
    return chan_send(c->chan, node, frame, len);
}

int cluster_peer_stats(struct cluster *c, uint64_t node, struct chan_peer_stats *out)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return -ECANCELED;
    return chan_peer_stats(c->chan, node, out);
}
