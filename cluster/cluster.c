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
 * channel peer known) before the answer to it is sent. Other proposals of a
 * new node may commit before its Member record (its first route batch, made
 * at start, does): their answers wait (`parked`) until the node's channel
 * peer is known, or until the proposer has given up on them.
 */
#include "cluster.h"
#include "channel.pb-c.h"
#include "cmd.h"
#include "log.h"
#include "raft_cmd.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netdb.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fwd {
    struct fwd *next;
    struct cluster *c;
    void *entry;
    size_t len;
    raft_node_done_fn done;
    void *ud;
    uint64_t id;
    uint64_t deadline_ms;
    uint64_t leader; /* the node it was sent to */
    bool to_leader;  /* ... as the leader (not a seed relaying a join) */
    unsigned hops;   /* 1: relayed for another node (not relayed again) */
};

struct remote_req {
    struct cluster *c;
    uint64_t from, id;
};

/* An answer to a node whose channel peer is not known yet. */
struct parked {
    struct parked *next;
    uint64_t to, until_ms;
    size_t len;
    uint8_t frame[];
};

#define MAX_CHECKS 16         /* peers whose last checkpoint waits to be compared */
#define CHECKPOINT_EVERY 10   /* timer ticks (100 ms): a checkpoint a second */
#define JOIN_EVERY 10         /* timer ticks between two requests to be added */
#define VERDICT_FRESH_MS 5000 /* a peer's agreement counts for this long */
#define VERDICT_REPEAT_MS 5000
#define MAX_SEEDS 64
#define MAX_PARKED 256 /* answers waiting for their node's Member record */
/* The silence of a member grows by at most this much per timer tick (100
 * ms): time this thread did not run (stalled in a commit, the process
 * stopped) is not silence of the others (cluster_quiet_ms). */
#define QUIET_STEP_MAX_MS 500
#define QUIET_LATE_LOG_MS 1000 /* a timer tick this late is logged */

struct cluster {
    struct cluster_config cfg;
    char name[256], node_name[256], secret[256], address[64], chan_addr[64];
    char advertise[256], raft_addr[RAFT_NODE_ADDR_MAX];
    char (*seeds)[RAFT_NODE_ADDR_MAX]; /* copies of cfg.seeds */
    unsigned n_seeds, next_seed;
    bool adding; /* leader: a raft_node_add in flight */
    char dir[512];
    bool no_bootstrap; /* rebuilt: the NO_BOOTSTRAP mark is there until we are a member */
    bool leaving;      /* atomic: this process asked to leave */
    bool rebuild_asked;
    /* the divergence detector's verdicts on the peers' checkpoints */
    struct verdict {
        uint64_t node, agree_ms, differ_ms, told_ms;
    } verdicts[64];
    unsigned n_verdicts;
    uint64_t doubt_ms; /* leader: last time no majority agreed with it */
    struct fsm *fsm;
    struct raft_node *raft;
    struct chan *chan;
    uv_loop_t *loop;
    uv_timer_t timer;
    uint64_t self;
    struct fwd *waiting;
    struct parked *parked; /* answers to nodes not known yet, oldest last */
    unsigned n_parked;
    uint64_t next_id;
    bool member_inflight;
    unsigned ticks;
    uint64_t members[64]; /* other members' ids, from the last scan */
    unsigned n_members;
    struct {
        uint64_t from, index, checksum;
    } checks[MAX_CHECKS]; /* peers' checkpoints not yet comparable */
    bool stopping;        /* atomic */
    /* how long each member has been silent on both the channel and Raft
     * (cluster_quiet_ms); written by the timer, read from any thread */
    pthread_mutex_t quiet_mu;
    struct quiet {
        uint64_t node, heard_ms, quiet_ms;
    } quiet[64];
    unsigned n_quiet;
    uint64_t quiet_tick_ms; /* the timer's last update */
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
    p.has_hops = f->hops != 0;
    p.hops = f->hops;
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
    f->leader = leader;
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
        f->to_leader = true;
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

/* A proposal to follow (a copy of entry), or NULL. */
static struct fwd *fwd_new(struct cluster *c, const void *entry, size_t len, raft_node_done_fn done,
                           void *ud, unsigned hops)
{
    struct fwd *f = calloc(1, sizeof *f);
    if (!f || !(f->entry = malloc(len ? len : 1))) {
        free(f);
        return NULL;
    }
    memcpy(f->entry, entry, len);
    f->len = len;
    f->c = c;
    f->done = done;
    f->ud = ud;
    f->hops = hops;
    return f;
}

static int propose(struct cluster *c, const void *entry, size_t len, raft_node_done_fn done,
                   void *ud, unsigned hops)
{
    struct fwd *f = fwd_new(c, entry, len, done, ud, hops);
    if (!f)
        return -ENOMEM;
    int rc = raft_node_propose(c->raft, entry, len, local_done, f);
    if (rc) {
        free(f->entry);
        free(f);
    }
    return rc;
}

int cluster_propose(struct cluster *c, const void *entry, size_t len, raft_node_done_fn done,
                    void *ud)
{
    return propose(c, entry, len, done, ud, 0);
}

/* ---- the leader's side ---- */

static void send_result(struct cluster *c, uint64_t to, uint64_t id, int status,
                        const struct fsm_batch_result *res, uint64_t leader)
{
    Starling__Chan__ProposeResult r = STARLING__CHAN__PROPOSE_RESULT__INIT;
    r.id = id;
    r.status = status;
    Starling__Cmd__Result *results = NULL;
    if (status == 0 && res)
        results = malloc((res->n ? res->n : 1) * sizeof *results);
    if (status == 0 && (!res || !results)) {
        /* committed, its results not known here (out of memory): the
         * proposer looks for its effect or proposes it again */
        r.status = -EINPROGRESS;
    } else if (status == 0) {
        r.has_index = 1;
        r.index = res->index;
        for (uint32_t i = 0; i < res->n; i++)
            results[i] = (Starling__Cmd__Result)res->results[i];
        r.n_results = res->n;
        r.results = results;
    }
    if (leader) {
        r.has_leader = 1;
        r.leader = leader;
    }
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_PROPOSE_RESULT;
    fr.propose_result = &r;
    size_t n = starling__chan__frame__get_packed_size(&fr);
    struct parked *pk = malloc(sizeof *pk + (n ? n : 1));
    if (pk) {
        starling__chan__frame__pack(&fr, pk->frame);
        int rc = c->chan ? chan_send(c->chan, to, pk->frame, n) : 0;
        if (rc == -ENOENT && c->n_parked < MAX_PARKED) {
            /* The node's Member record is not applied here yet (a new
             * node's first proposals race with it): answer once it is,
             * rather than leave it waiting for its whole timeout. */
            unsigned timeout = c->cfg.propose_timeout_ms ? c->cfg.propose_timeout_ms : 5000;
            log_debug("cluster: the answer to a proposal of node %016llx waits for its Member "
                      "record",
                      (unsigned long long)to);
            pk->to = to;
            pk->until_ms = now_mono_ms() + timeout;
            pk->len = n;
            pk->next = c->parked;
            c->parked = pk;
            c->n_parked++;
            pk = NULL;
        } else if (rc) {
            log_warn("cluster: cannot answer a proposal of node %016llx: %s",
                     (unsigned long long)to, strerror(-rc));
        }
        free(pk);
    }
    free(results);
}

/* Send the answers parked for node (its channel peer is known now), and
 * drop those whose proposer has given up (node 0: only that). */
static void parked_flush(struct cluster *c, uint64_t node)
{
    uint64_t now = now_mono_ms();
    for (struct parked **pp = &c->parked; *pp;) {
        struct parked *pk = *pp;
        bool expired = pk->until_ms <= now;
        if (!expired && (!node || pk->to != node)) {
            pp = &pk->next;
            continue;
        }
        if (!expired && c->chan && chan_send(c->chan, pk->to, pk->frame, pk->len) != 0)
            log_warn("cluster: cannot answer a proposal of node %016llx",
                     (unsigned long long)pk->to);
        *pp = pk->next;
        c->n_parked--;
        free(pk);
    }
}

static void remote_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    struct remote_req *q = ud;
    if (!__atomic_load_n(&q->c->stopping, __ATOMIC_ACQUIRE))
        send_result(q->c, q->from, q->id, status, res, leader);
    free(q);
}

/* Whether node is another member (from the last scan of the members table). */
static bool is_member(const struct cluster *c, uint64_t node)
{
    for (unsigned i = 0; i < c->n_members; i++)
        if (c->members[i] == node)
            return true;
    return false;
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
        /* Not the leader: relay it there once, for a node that is not a
         * member yet (it knows only its seeds). A member's proposal is not
         * relayed: it was sent to this node as the leader, and one that
         * comes to a node that is no longer the leader may be old - held
         * in TCP across a cut, say - and its proposer, told -ECONNABORTED
         * or -ETIMEDOUT meanwhile, may have proposed it again and gone on.
         * Relayed then, it committed after later entries of that node: a
         * route batch's RouteRemove (or first batch's NodePurge) undid the
         * RouteAdds made since, and the node had no route for its
         * subscribers' filters until its routes changed again (issue 10,
         * chaos seed 1875013960; docs/cluster.md, "A proposal held across
         * a cut"). Answered "not the leader" instead; the proposer, if it
         * still waits, proposes it again to the leader it knows. */
        bool member = is_member(c, from);
        if (member && !p->hops && raft_node_leader(c->raft) != c->self)
            log_info("cluster: a proposal of %016llx came here, not to the leader: answered, not "
                     "relayed (it may be old)",
                     (unsigned long long)from);
        rc = p->hops || member ? raft_node_propose(c->raft, entry, elen, remote_done, q)
                               : propose(c, entry, elen, remote_done, q, 1);
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
        /* on this thread's stack: each cluster has a thread of its own,
         * and a process may run several (the unit tests do) */
        struct fsm_batch_result res;
        memset(&res, 0, offsetof(struct fsm_batch_result, results));
        res.index = r->has_index ? r->index : 0;
        res.n = r->n_results > FSM_MAX_BATCH ? FSM_MAX_BATCH : (uint32_t)r->n_results;
        for (uint32_t i = 0; i < res.n; i++)
            res.results[i] = (uint8_t)r->results[i];
        /* -ECANCELED there means that node is stopping (its queued
         * proposals end so), not this one: to the caller, the leader it
         * went to is lost before the entry committed, so it proposes again
         * (the retained messages queued on a leader that failed its disk
         * and stopped were given up, though acknowledged). */
        int status = r->status == -ECANCELED ? -ECONNABORTED : r->status;
        fwd_finish(f, status, status == 0 ? &res : NULL, r->has_leader ? r->leader : 0);
        return;
    }
    /* An answer after its deadline: the caller was told -ETIMEDOUT. */
}

static void check_or_keep(struct cluster *c, uint64_t from, uint64_t index, uint64_t checksum);
static void on_rebuild(struct cluster *c, uint64_t from, const Starling__Chan__Rebuild *rb);

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
    case STARLING__CHAN__FRAME__FRAME_REBUILD:
        on_rebuild(c, from, f->rebuild);
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
    if (rc == 0 && c->parked)
        parked_flush(c, node);
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

static void entry_applied(void *ud, uint64_t index)
{
    struct cluster *c = ud;
    if (c->cfg.on_entry)
        c->cfg.on_entry(c->cfg.observer_ud, index);
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
        s->self_ok =
            strcmp(m->name, c->cfg.node_name) == 0 && strcmp(m->address, c->address) == 0 &&
            m->cluster_port == c->cfg.cluster_port && m->raft_port == c->cfg.raft_port &&
            strcmp(m->raft_address ? m->raft_address : "", c->advertise[0] ? c->raft_addr : "") ==
                0 &&
            (!m->left || __atomic_load_n(&c->leaving, __ATOMIC_ACQUIRE));
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

static void join_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)res;
    (void)leader;
    struct cluster *c = ud;
    c->member_inflight = false;
    if (status)
        log_info("cluster: asking to be added: %s; asking again", strerror(-status));
}

/* Whether this node is in the Raft configuration it knows. */
static bool in_configuration(struct cluster *c)
{
    struct raft_node_member mv[RAFT_NODE_MAX_MEMBERS];
    unsigned n = raft_node_members(c->raft, mv, RAFT_NODE_MAX_MEMBERS);
    for (unsigned i = 0; i < n; i++)
        if (mv[i].id == c->self)
            return true;
    return false;
}

/* A node in no configuration (a new node, not a seed) knows no leader: it
 * sends its Member record to a seed (in turn), which relays it to the
 * leader; the leader adds the node to Raft once the record is applied
 * (reconcile). The seed's channel is host:cluster_port; a host name is
 * resolved here (at most once a second, on the cluster thread: only while
 * joining). */
static void join_via_seed(struct cluster *c, const void *entry, size_t len)
{
    if (c->n_seeds == 0)
        return;
    const char *seed = c->seeds[c->next_seed++ % c->n_seeds];
    uint64_t id = raft_node_id_of(seed);
    if (id == c->self)
        return;
    char host[RAFT_NODE_ADDR_MAX];
    snprintf(host, sizeof host, "%s", seed);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = '\0';
    struct in_addr ip;
    char ipbuf[INET_ADDRSTRLEN];
    if (inet_pton(AF_INET, host, &ip) != 1) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
            return;
        ip = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }
    inet_ntop(AF_INET, &ip, ipbuf, sizeof ipbuf);
    add_peer(c, id, ipbuf, c->cfg.cluster_port, false);
    struct fwd *f = fwd_new(c, entry, len, join_done, c, 0);
    if (!f)
        return;
    c->member_inflight = true;
    int rc = forward(c, f, id);
    if (rc)
        fwd_finish(f, rc, NULL, 0);
}

/* Dial every member (those known from an earlier run too), and make sure
 * the members table holds this node's own record. */
static void ensure_member(struct cluster *c)
{
    struct member_scan s = {c, false};
    c->n_members = 0;
    fsm_members(c->fsm, scan_member, &s);
    if (s.self_ok || c->member_inflight)
        return;
    bool leader = raft_node_leader(c->raft) != 0;
    if (!leader && (c->ticks % JOIN_EVERY != 0 || in_configuration(c)))
        return;
    struct cmd_batch *b = cmd_batch_new();
    if (!b)
        return;
    size_t len;
    const void *e = NULL;
    if (cmd_member(b, c->self, c->cfg.node_name, c->address, c->cfg.cluster_port, c->cfg.raft_port,
                   c->advertise[0] ? c->raft_addr : NULL, CMD_ROLE_VOTER, 0) == 0)
        e = cmd_batch_data(b, &len);
    if (e && !leader)
        join_via_seed(c, e, len);
    else if (e && cluster_propose(c, e, len, member_done, c) == 0)
        c->member_inflight = true;
    cmd_batch_free(b);
}

/* ---- the leader adds members that are not in the Raft configuration ---- */

struct reconcile_scan {
    struct cluster *c;
    struct raft_node_member mv[RAFT_NODE_MAX_MEMBERS];
    unsigned n;
    char addr[RAFT_NODE_ADDR_MAX]; /* the first member to add, or "" */
    uint64_t gone;                 /* the first member that left but is in it, or 0 */
};

static int scan_missing(void *ud, uint64_t node, const void *rec, size_t len)
{
    struct reconcile_scan *r = ud;
    if (r->addr[0] || r->gone)
        return 0;
    bool in = false, active = false;
    for (unsigned i = 0; i < r->n; i++)
        if (r->mv[i].id == node) {
            in = true;
            active = r->mv[i].role != RAFT_NODE_SPARE;
        }
    Starling__Cmd__Member *m = starling__cmd__member__unpack(NULL, len, rec);
    if (!m)
        return 0;
    if (m->left && in)
        r->gone = node;
    else if (!m->left && !active) {
        if (m->raft_address)
            snprintf(r->addr, sizeof r->addr, "%s", m->raft_address);
        else
            snprintf(r->addr, sizeof r->addr, "%s:%u", m->address, m->raft_port);
        if (raft_node_id_of(r->addr) != node)
            r->addr[0] = '\0'; /* a record whose id is not its address's */
    }
    starling__cmd__member__free_unpacked(m, NULL);
    return 0;
}

static void add_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)res;
    (void)leader;
    struct cluster *c = ud;
    c->adding = false;
    if (status && status != -EBUSY && status != -ENOTCONN)
        log_warn("cluster: adding a member to Raft: %s", strerror(-status));
}

/* One node at a time: a member record (applied: the node asked to join)
 * whose node is not in the Raft configuration, or only as a spare, is
 * added (voter while there are fewer than max_voters, else standby). */
static void reconcile(struct cluster *c)
{
    if (c->adding || !raft_node_ready(c->raft))
        return;
    struct reconcile_scan *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->c = c;
    r->n = raft_node_members(c->raft, r->mv, RAFT_NODE_MAX_MEMBERS);
    fsm_members(c->fsm, scan_missing, r);
    if (r->gone) {
        /* a member that left (its record says so) and is still in the
         * configuration: the removal made when the record was applied may
         * have met another change in flight */
        c->adding = raft_node_remove(c->raft, r->gone, add_done, c) == 0;
    } else if (r->addr[0]) {
        log_info("cluster: adding %s to the Raft configuration", r->addr);
        c->adding = raft_node_add(c->raft, r->addr, add_done, c) == 0;
    }
    free(r);
}

/* ---- the divergence detector's traffic ---- */

static struct verdict *verdict_of(struct cluster *c, uint64_t node)
{
    for (unsigned i = 0; i < c->n_verdicts; i++)
        if (c->verdicts[i].node == node)
            return &c->verdicts[i];
    if (c->n_verdicts == sizeof c->verdicts / sizeof c->verdicts[0])
        return NULL;
    struct verdict *v = &c->verdicts[c->n_verdicts++];
    memset(v, 0, sizeof *v);
    v->node = node;
    return v;
}

static void send_rebuild(struct cluster *c, uint64_t to, uint64_t index, uint64_t mine,
                         uint64_t theirs)
{
    Starling__Chan__Rebuild rb = STARLING__CHAN__REBUILD__INIT;
    rb.applied_index = index;
    rb.leader_checksum = mine;
    rb.member_checksum = theirs;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_REBUILD;
    fr.rebuild = &rb;
    uint8_t buf[64];
    size_t n = starling__chan__frame__pack(&fr, buf);
    chan_send(c->chan, to, buf, n);
}

/* The leader judges a peer whose checksum differs from its own after the
 * same entry: if a majority of the voters (the leader, and the others whose
 * checkpoints agreed with it lately) share the leader's tables, the peer is
 * the one that diverged and is told to rebuild; if not, the leader may be
 * the wrong one: it says so and hands leadership to another voter, which
 * judges again. */
static void judge(struct cluster *c, uint64_t peer, uint64_t index, uint64_t mine, uint64_t theirs)
{
    if (raft_node_leader(c->raft) != c->self || !raft_node_ready(c->raft))
        return;
    uint64_t now = now_mono_ms();
    struct raft_node_member mv[RAFT_NODE_MAX_MEMBERS];
    unsigned n = raft_node_members(c->raft, mv, RAFT_NODE_MAX_MEMBERS);
    unsigned voters = 0, agree = 1; /* the leader itself */
    for (unsigned i = 0; i < n; i++) {
        if (mv[i].role != RAFT_NODE_VOTER)
            continue;
        voters++;
        if (mv[i].id == c->self || mv[i].id == peer)
            continue;
        struct verdict *o = verdict_of(c, mv[i].id);
        if (o && o->agree_ms && now - o->agree_ms <= VERDICT_FRESH_MS &&
            o->agree_ms >= o->differ_ms)
            agree++;
    }
    struct verdict *v = verdict_of(c, peer);
    if (agree >= voters / 2 + 1) {
        if (v && (!v->told_ms || now - v->told_ms >= VERDICT_REPEAT_MS)) {
            v->told_ms = now;
            log_error("cluster: node %016llx's replicated tables differ from this leader's and "
                      "a majority's after entry %llu: told it to rebuild",
                      (unsigned long long)peer, (unsigned long long)index);
            send_rebuild(c, peer, index, mine, theirs);
        }
    } else if (!c->doubt_ms || now - c->doubt_ms >= VERDICT_REPEAT_MS) {
        c->doubt_ms = now;
        log_error("cluster: node %016llx's replicated tables differ from this leader's after "
                  "entry %llu and no majority agrees with the leader: handing leadership over",
                  (unsigned long long)peer, (unsigned long long)index);
        raft_node_step_down(c->raft);
    }
}

/* Compare a peer's checkpoint with this node's checksum after the same
 * entry and keep the verdict: -ENOENT (not comparable), 0 equal, 1 not. */
static int compare(struct cluster *c, uint64_t from, uint64_t index, uint64_t checksum)
{
    int rc = raft_node_divergence_check(c->raft, index, checksum, false);
    struct verdict *v = verdict_of(c, from);
    if (!v || rc < 0)
        return rc;
    if (rc == 0) {
        v->agree_ms = now_mono_ms();
        return rc;
    }
    v->differ_ms = now_mono_ms();
    uint64_t mine = 0;
    raft_node_checksum_at(c->raft, index, &mine);
    judge(c, from, index, mine, checksum);
    return rc;
}

/* Compare a peer's checkpoint now, or keep it until this node has applied
 * that index (one pending checkpoint per peer, the latest). */
static void check_or_keep(struct cluster *c, uint64_t from, uint64_t index, uint64_t checksum)
{
    int rc = compare(c, from, index, checksum);
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
        uint64_t from = c->checks[i].from;
        c->checks[i].from = 0;
        compare(c, from, c->checks[i].index, c->checks[i].checksum);
    }
}

/* The leader says this node diverged: mark it (health 503) and let the
 * broker rebuild it (once). */
static void on_rebuild(struct cluster *c, uint64_t from, const Starling__Chan__Rebuild *rb)
{
    if (from != raft_node_leader(c->raft) || c->rebuild_asked)
        return;
    c->rebuild_asked = true;
    raft_node_set_diverged(c->raft);
    log_error("cluster: DIVERGENCE: the leader says this node's replicated tables differ from "
              "the cluster's after entry %llu (leader %016llx, this node %016llx): rebuilding",
              (unsigned long long)rb->applied_index, (unsigned long long)rb->leader_checksum,
              (unsigned long long)rb->member_checksum);
    if (c->cfg.on_rebuild)
        c->cfg.on_rebuild(c->cfg.rebuild_ud);
}

#ifndef NDEBUG
bool cluster_test_reports_held(void)
{
    const char *path = getenv("STARLING_TEST_REPORTS_HOLD");
    return path && access(path, F_OK) == 0;
}
#else
bool cluster_test_reports_held(void)
{
    return false;
}
#endif

static void send_checkpoint(struct cluster *c)
{
    if (cluster_test_reports_held())
        return;
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

/*
 * The members' silence, for the leader's judgement of who is dead
 * (NodeDown, node/cluster_session.c). A member is heard when the channel
 * brought bytes from it (any frame: reports, checkpoints, forwards) or when
 * Raft received a message from it (this node leading: libraft's own
 * contact flag, raft_node_heard_recently); either resets its silence to 0.
 * Otherwise its silence grows by the time since the last update, at most
 * QUIET_STEP_MAX_MS: an update that comes late because this thread itself
 * did not run (a stopped process, a starved thread; before the tables' sync
 * moved to their own thread, a slow fdatasync of the tables
 * too) counts for little, since the others' bytes wait unread meanwhile
 * (the timer runs before the loop reads them). A member new to the list
 * starts at 0.
 */
static void quiet_update(struct cluster *c, uint64_t now)
{
    uint64_t step = c->quiet_tick_ms && now > c->quiet_tick_ms ? now - c->quiet_tick_ms : 0;
    if (step >= QUIET_LATE_LOG_MS)
        /* for judging a NodeDown afterwards (docs/cluster.md, "A live node
         * taken for dead under load"): this thread did not run */
        log_info("cluster: this node's cluster thread ran its 100 ms timer %llu ms after the "
                 "last time",
                 (unsigned long long)step);
    if (step > QUIET_STEP_MAX_MS)
        step = QUIET_STEP_MAX_MS;
    c->quiet_tick_ms = now;
    struct quiet next[sizeof c->quiet / sizeof c->quiet[0]];
    unsigned n = 0;
    for (unsigned i = 0; i < c->n_members && n < sizeof next / sizeof next[0]; i++) {
        uint64_t node = c->members[i];
        const struct quiet *old = NULL;
        for (unsigned j = 0; j < c->n_quiet; j++)
            if (c->quiet[j].node == node)
                old = &c->quiet[j];
        uint64_t heard = chan_heard_ms(c->chan, node);
        bool raft = raft_node_heard_recently(c->raft, node);
        next[n].node = node;
        next[n].heard_ms = heard;
        next[n].quiet_ms = !old || raft || heard != old->heard_ms ? 0 : old->quiet_ms + step;
        n++;
    }
    pthread_mutex_lock(&c->quiet_mu);
    memcpy(c->quiet, next, n * sizeof next[0]);
    c->n_quiet = n;
    pthread_mutex_unlock(&c->quiet_mu);
}

static void on_timer(uv_timer_t *t)
{
    struct cluster *c = t->data;
    if (c->chan)
        chan_poll(c->chan);
    if (++c->ticks % CHECKPOINT_EVERY == 0)
        send_checkpoint(c);
    retry_checks(c);
    uint64_t now = now_mono_ms();
    uint64_t leader = raft_node_leader(c->raft);
    for (struct fwd **pp = &c->waiting; *pp;) {
        struct fwd *f = *pp;
        if (f->deadline_ms <= now) {
            *pp = f->next;
            fwd_finish(f, -ETIMEDOUT, NULL, leader);
        } else if (f->to_leader && leader && leader != f->leader) {
            /* another leader was elected (the one it went to died, say):
             * the entry may have committed, or not; the caller may propose
             * again at once (commands are idempotent) rather than wait for
             * an answer that will not come */
            *pp = f->next;
            fwd_finish(f, -ECONNABORTED, NULL, leader);
        } else {
            pp = &f->next;
        }
    }
    if (c->parked)
        parked_flush(c, 0);
    ensure_member(c);
    if (c->chan)
        quiet_update(c, now);
    reconcile(c);
    if (c->no_bootstrap && in_configuration(c)) {
        /* a member again after a rebuild: from now on, like any member */
        char path[600];
        snprintf(path, sizeof path, "%s/NO_BOOTSTRAP", c->dir);
        if (unlink(path) == 0 || errno == ENOENT)
            c->no_bootstrap = false;
    }
}

/* ---- start and stop (hooks of raft_node, on the cluster thread) ---- */

static void on_chan_drained(void *ud)
{
    struct cluster *c = ud;
    if (c->cfg.on_drained)
        c->cfg.on_drained(c->cfg.drained_ud);
}

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
                             .ud = c,
                             .reader_attach = c->cfg.reader_attach,
                             .reader_fast = c->cfg.reader_fast,
                             .reader_frame = c->cfg.reader_frame,
                             .reader_done = c->cfg.reader_done,
                             .reader_ud = c->cfg.frame_ud,
                             .defer = c->cfg.defer,
                             .defer_ud = c->cfg.defer_ud,
                             .on_drained = on_chan_drained};
    char err[256];
    int rc = chan_start(&c->chan, &o, err, sizeof err);
    if (rc) {
        log_error("cluster: %s", err);
        return rc;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_timer, 100, 100);
    if (c->cfg.on_ready)
        c->cfg.on_ready(c->cfg.ready_ud, c);
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
    while (c->parked) {
        struct parked *pk = c->parked;
        c->parked = pk->next;
        free(pk);
    }
    c->n_parked = 0;
    if (c->chan) {
        uv_close((uv_handle_t *)&c->timer, NULL);
        chan_stop(c->chan, NULL, NULL);
        c->chan = NULL;
    }
}

/* ---- rebuilding a diverged node ---- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Create path durably (contents: why). */
static int mark_write(const char *path, const char *why)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t n = strlen(why);
    int rc = write(fd, why, n) == (ssize_t)n && fsync(fd) == 0 ? 0 : -EIO;
    close(fd);
    return rc;
}

static bool exists(const char *dir, const char *name)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* The rebuild mark is there: move the tables and the Raft directory aside
 * (replacing what an earlier rebuild set aside), and mark the node as one
 * that must join, not bootstrap. */
static int rebuild_set_aside(const char *dir, char *err, size_t errlen)
{
    static const char *const parts[] = {"fsm", "raft"};
    char from[600], to[640];
    for (int i = 0; i < 2; i++) {
        snprintf(from, sizeof from, "%s/%s", dir, parts[i]);
        snprintf(to, sizeof to, "%s/%s.diverged", dir, parts[i]);
        nftw(to, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        if (rename(from, to) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "cluster: rebuild: cannot move %s aside: %s", from,
                     strerror(errno));
            return -errno;
        }
    }
    snprintf(from, sizeof from, "%s/NO_BOOTSTRAP", dir);
    int rc = mark_write(from, "rebuilt after a divergence: join, do not bootstrap\n");
    snprintf(to, sizeof to, "%s/REBUILD", dir);
    if (rc == 0 && unlink(to) != 0)
        rc = -errno;
    if (rc) {
        snprintf(err, errlen, "cluster: rebuild: %s", strerror(-rc));
        return rc;
    }
    log_warn("cluster: rebuilding: the replicated tables and the Raft log of this node were "
             "set aside in %s/{fsm,raft}.diverged; joining the cluster again as a new member",
             dir);
    return 0;
}

int cluster_rebuild_mark(struct cluster *c)
{
    char path[600];
    snprintf(path, sizeof path, "%s/REBUILD", c->dir);
    int rc = mark_write(path, "the leader found this node's replicated tables diverged\n");
    if (rc == 0) {
        int fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    return rc;
}

void cluster_leaving(struct cluster *c)
{
    __atomic_store_n(&c->leaving, true, __ATOMIC_RELEASE);
}

int cluster_start(struct cluster **out, const struct cluster_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->dir || !cfg->node_name || !cfg->address || !cfg->raft_port || !cfg->cluster_port ||
        strlen(cfg->address) > 15 || strlen(cfg->dir) > 400 ||
        (cfg->advertise && strlen(cfg->advertise) > 253)) {
        snprintf(err, errlen, "cluster: dir, node_name, address and ports are required");
        return -EINVAL;
    }
    struct cluster *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->quiet_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    c->cfg = *cfg;
    /* Keep copies: the caller's strings need not outlive this call. */
    snprintf(c->name, sizeof c->name, "%s", cfg->cluster_name ? cfg->cluster_name : "starling");
    snprintf(c->node_name, sizeof c->node_name, "%s", cfg->node_name);
    snprintf(c->secret, sizeof c->secret, "%s", cfg->cluster_secret ? cfg->cluster_secret : "");
    c->cfg.cluster_name = c->name;
    c->cfg.node_name = c->node_name;
    c->cfg.cluster_secret = c->secret;
    c->cfg.seeds = NULL; /* copied below */
    c->cfg.address = c->address;
    snprintf(c->address, sizeof c->address, "%s", cfg->address);
    snprintf(c->advertise, sizeof c->advertise, "%s", cfg->advertise ? cfg->advertise : "");
    c->cfg.advertise = c->advertise;
    snprintf(c->raft_addr, sizeof c->raft_addr, "%s:%u",
             c->advertise[0] ? c->advertise : cfg->address, cfg->raft_port);
    c->seeds = calloc(cfg->n_seeds ? cfg->n_seeds : 1, sizeof *c->seeds);
    if (!c->seeds) {
        free(c);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < cfg->n_seeds && i < MAX_SEEDS; i++)
        snprintf(c->seeds[c->n_seeds++], sizeof c->seeds[0], "%s", cfg->seeds[i]);
    snprintf(c->chan_addr, sizeof c->chan_addr, "%s:%u", cfg->address, cfg->cluster_port);
    c->self = raft_node_id_of(c->raft_addr);
    snprintf(c->dir, sizeof c->dir, "%s", cfg->dir);
    if (exists(c->dir, "REBUILD") && rebuild_set_aside(c->dir, err, errlen) != 0) {
        free(c->seeds);
        free(c);
        return -EIO;
    }
    c->no_bootstrap = exists(c->dir, "NO_BOOTSTRAP");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fsm", cfg->dir);
    struct fsm_options fo = {
        .dir = dir, .observer = observer, .observer_ud = c, .on_entry = entry_applied};
    int rc = fsm_open(&c->fsm, &fo, err, errlen);
    if (rc) {
        free(c->seeds);
        free(c);
        return rc;
    }
    if (fsm_tables_reset(c->fsm))
        log_warn("cluster: the replicated tables in %s were open when the machine stopped (or "
                 "their sync failed): they start empty and are rebuilt from the Raft log",
                 dir);
    snprintf(dir, sizeof dir, "%s/raft", cfg->dir);
    struct raft_node_config rc_cfg = {.dir = dir,
                                      .fsm = c->fsm,
                                      .address = c->raft_addr,
                                      .bind_ip = c->address,
                                      .seeds = cfg->seeds,
                                      .n_seeds = cfg->n_seeds,
                                      .cluster_name = c->name,
                                      .cluster_secret = c->cfg.cluster_secret,
                                      .election_timeout_ms = cfg->election_timeout_ms,
                                      .heartbeat_ms = cfg->heartbeat_ms,
                                      .snapshot_threshold = cfg->snapshot_threshold,
                                      .snapshot_trailing = cfg->snapshot_trailing,
                                      .no_bootstrap = c->no_bootstrap,
                                      .on_start = hook_start,
                                      .on_stop = hook_stop,
                                      .hook_ud = c};
    /* Before the thread starts: the frames it hands to cfg->on_frame may be
     * answered at once, through the caller's *out (a SessionRequest that
     * came first read it NULL, found by ThreadSanitizer). */
    *out = c;
    rc = raft_node_start(&c->raft, &rc_cfg, err, errlen);
    if (rc) {
        *out = NULL; /* (its thread ended) */
        fsm_close(c->fsm);
        free(c->seeds);
        free(c);
        return rc;
    }
    return 0;
}

void cluster_stop(struct cluster *c)
{
    if (!c)
        return;
    raft_node_stop(c->raft);
    fsm_close(c->fsm);
    free(c->seeds);
    pthread_mutex_destroy(&c->quiet_mu);
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

void cluster_flush_here(struct cluster *c)
{
    if (!__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) && c->chan)
        chan_flush_here(c->chan);
}

int cluster_send_flow(struct cluster *c, uint64_t node, const void *frame, size_t len, bool *busy)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return -ECANCELED;
    return chan_send_flow(c->chan, node, frame, len, busy);
}

bool cluster_busy(struct cluster *c)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return false;
    return chan_busy(c->chan);
}

uint64_t cluster_quiet_ms(struct cluster *c, uint64_t node)
{
    uint64_t q = 0;
    pthread_mutex_lock(&c->quiet_mu);
    for (unsigned i = 0; i < c->n_quiet; i++)
        if (c->quiet[i].node == node)
            q = c->quiet[i].quiet_ms;
    pthread_mutex_unlock(&c->quiet_mu);
    return q;
}

uint64_t cluster_heard_ms(struct cluster *c, uint64_t node)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return 0;
    return chan_heard_ms(c->chan, node);
}

int cluster_peer_stats(struct cluster *c, uint64_t node, struct chan_peer_stats *out)
{
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE) || !c->chan)
        return -ECANCELED;
    return chan_peer_stats(c->chan, node, out);
}
