/*
 * cluster_node.c - the glue between the broker and the cluster (see
 * cluster_node.h, docs/cluster.md "How a subscription, a publish ... flow").
 *
 * Routes. filter_added/filter_removed (workers, under the index lock) append
 * a RouteAdd/RouteRemove to `pending` and take a ticket (a sequence number
 * of route changes). The own thread proposes `pending` as one batch, one
 * batch at a time, so changes commit in the order they were made; a failed
 * proposal (no leader yet, leader lost) is proposed again after 100 ms
 * (commands are idempotent). The very first batch starts with
 * NodePurge(self), so that the routes this node had before a restart are
 * replaced by exactly the ones its sessions have now.
 *
 * SUBACK. route_ops.sync registers a waiter for the newest ticket. When the
 * batch holding that ticket commits at index i, the waiter waits until every
 * live member reported an applied index >= i (chan.Applied, sent by each
 * node when its applied index moves and every 200 ms; a member is live when
 * it reported within cluster_down_after), and this node applied i itself.
 *
 * Publishes. forward() walks the replicated route matcher: one chan.Publish
 * per other node with a plain route; for each shared group with no member
 * on this node (this node's own members were served by the local delivery),
 * one node of the group, picked round robin, with the group in `shares`.
 */
#include "cluster_node_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "admin_local.h"
#include "ackq.h"
#include "broker.h"
#include "channel.pb-c.h"
#include "cluster.h"
#include "cluster_fwd.h"
#include "cmd.h"
#include "log.h"
#include "msg.h"
#include "persist.h"
#include "raft_cmd.pb-c.h"
#include "retain.h"
#include "server.h"
#include "sink.h"
#include "store.h"
#include "testhook.h"
#include "worker.h"

/* ---- seeds ------------------------------------------------------------- */

/* "a.b.c.d" of host (an IPv4 literal or a name), or -1. */
static int resolve4(const char *host, char *out, size_t outlen)
{
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) == 1) {
        /* from the parsed address: gcc -O2 cannot bound strlen(host) */
        return inet_ntop(AF_INET, &a, out, (socklen_t)outlen) ? 0 : -1;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, out, (socklen_t)outlen);
    freeaddrinfo(res);
    return 0;
}

/* The seeds as Raft addresses "a.b.c.d:port" (with cluster_advertise:
 * "host:port" as given, names being identities then). */
static int seeds_from_list(const struct config *cfg, char (*seeds)[RAFT_NODE_ADDR_MAX], char *err,
                           size_t errlen)
{
    static char items[MAX_SEEDS][256];
    int n = config_seeds_split(cfg, items, MAX_SEEDS, err, errlen);
    for (int i = 0; i < n && cfg->cluster_advertise[0]; i++)
        snprintf(seeds[i], RAFT_NODE_ADDR_MAX, "%.255s", items[i]);
    for (int i = 0; i < n && !cfg->cluster_advertise[0]; i++) {
        char *colon = strrchr(items[i], ':');
        *colon = '\0';
        char ip[INET_ADDRSTRLEN];
        if (resolve4(items[i], ip, sizeof(ip)) < 0) {
            snprintf(err, errlen, "cluster_seeds: cannot resolve '%s' to an IPv4 address",
                     items[i]);
            return -EINVAL;
        }
        snprintf(seeds[i], RAFT_NODE_ADDR_MAX, "%s:%s", ip, colon + 1);
    }
    return n;
}

/* cluster_dns: every A record, re-resolved each second until the answer
 * holds this node and another one, or 30 s passed. */
static int seeds_from_dns(const struct config *cfg, char (*seeds)[RAFT_NODE_ADDR_MAX], char *err,
                          size_t errlen)
{
    uint64_t deadline = cn_mono_ms() + 30000;
    int n = 0;
    for (;;) {
        n = 0;
        bool self = false;
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        if (getaddrinfo(cfg->cluster_dns, NULL, &hints, &res) == 0) {
            for (struct addrinfo *a = res; a && n < MAX_SEEDS; a = a->ai_next) {
                char ip[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, ip, sizeof(ip));
                char s[64];
                snprintf(s, sizeof(s), "%s:%u", ip, cfg->raft_port);
                bool dup = false;
                for (int i = 0; i < n; i++)
                    dup = dup || strcmp(seeds[i], s) == 0;
                if (dup)
                    continue;
                self = self || strcmp(ip, cfg->cluster_address) == 0;
                snprintf(seeds[n++], RAFT_NODE_ADDR_MAX, "%s", s);
            }
            freeaddrinfo(res);
        }
        if ((self && n >= 2) || cn_mono_ms() >= deadline)
            break;
        log_info("cluster: %s gives %d address(es)%s; asking again", cfg->cluster_dns, n,
                 self ? "" : ", not this node's");
        sleep(1);
    }
    if (n == 0) {
        snprintf(err, errlen, "cluster_dns: %s has no A record", cfg->cluster_dns);
        return -EINVAL;
    }
    return n;
}

/* ---- peers and applied indexes ------------------------------------------ */

static int scan_member(void *ud, uint64_t node, const void *rec, size_t len)
{
    struct cluster_node *cn = ud;
    if (node == cn->self || cn->n_peers >= MAX_PEERS)
        return 0;
    Starling__Cmd__Member *m = starling__cmd__member__unpack(NULL, len, rec);
    if (!m)
        return 0;
    struct peer *p = NULL;
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (cn->peers[i].node == node)
            p = &cn->peers[i];
    if (!p) {
        p = &cn->peers[cn->n_peers++];
        memset(p, 0, sizeof(*p));
        p->node = node;
    }
    snprintf(p->name, sizeof(p->name), "%s", m->name);
    snprintf(p->address, sizeof(p->address), "%s:%u", m->address, m->cluster_port);
    p->left = m->left;
    starling__cmd__member__free_unpacked(m, NULL);
    return 0;
}

/* Refresh the peers from the members table (keeping what they reported).
 * Caller holds mu. */
static void peers_refresh(struct cluster_node *cn)
{
    struct peer old[MAX_PEERS];
    unsigned n_old = cn->n_peers;
    memcpy(old, cn->peers, sizeof(old));
    cn->n_peers = 0;
    fsm_members(cn->fsm, scan_member, cn);
    for (unsigned i = 0; i < cn->n_peers; i++)
        for (unsigned j = 0; j < n_old; j++)
            if (old[j].node == cn->peers[i].node) {
                cn->peers[i].applied = old[j].applied;
                cn->peers[i].seen_ms = old[j].seen_ms;
                cn->peers[i].run_seen_ms = old[j].run_seen_ms;
                cn->peers[i].down_ms = old[j].down_ms;
                cn->peers[i].down_told = old[j].down_told;
                cn->peers[i].dead_ms = old[j].dead_ms;
                cn->peers[i].expiry_next_ms = old[j].expiry_next_ms;
                cn->peers[i].clear = old[j].clear;
                cn->peers[i].pend_index = old[j].pend_index;
                cn->peers[i].pend_seq = old[j].pend_seq;
                cn->peers[i].leaderless_since = old[j].leaderless_since;
                cn->peers[i].leaderless_told = old[j].leaderless_told;
            }
}

static bool peer_live(const struct cluster_node *cn, const struct peer *p, uint64_t now)
{
    return !p->left && p->seen_ms && now - p->seen_ms <= cn->b->cfg.cluster_down_after;
}

/* Whether p's reports say it has known no Raft leader for leaderless_ms. */
static bool peer_leaderless(const struct peer *p, uint64_t now, uint64_t leaderless_ms)
{
    return p->leaderless_since && now - p->leaderless_since >= leaderless_ms;
}

/* Whether a SUBACK (or a takeover) waits for p to apply its route: p
 * reported within CN_SYNC_LIVE_MS (and cluster_down_after). Members report
 * on every applied entry and every REPORT_EVERY_MS, so one silent for that
 * long is dead or cut off; waiting for it longer than an election would
 * stall every SUBSCRIBE behind a dead node (issue 10: at most for the
 * election). A member that was only starved of CPU that long may accept a
 * publish before it applies the route (docs/cluster.md). Nor for one that
 * reports it has known no leader for leaderless_ms (CN_SYNC_LEADERLESS_MS;
 * a debug build's STARLING_TEST_SYNC_LEADERLESS_MS): cut off from
 * the leader alone (one link cut), it still answers here but applies
 * nothing, and before every SUBSCRIBE and resuming CONNECT on this node
 * waited until the cut healed (the CONNECTs refused, 0x88). */
static bool peer_answering(const struct cluster_node *cn, const struct peer *p, uint64_t now,
                           uint64_t leaderless_ms)
{
    uint64_t window = cn->b->cfg.cluster_down_after;
    if (window > CN_SYNC_LIVE_MS)
        window = CN_SYNC_LIVE_MS;
    if (peer_leaderless(p, now, leaderless_ms))
        return false;
    return !p->left && p->seen_ms && now - p->seen_ms <= window;
}

/* index applied here, to every member, each with the last sequence number
 * of this node's outbox to it (read after index was applied: what this
 * node routed with older tables is in the outbox up to there), and how
 * long this node has known no leader (*leaderless_since: since when; the
 * own thread's). */
static void send_applied(struct cluster_node *cn, uint64_t index, uint64_t *leaderless_since)
{
    uint64_t now = cn_mono_ms();
    if (raft_node_leader(cn->raft))
        *leaderless_since = 0;
    else if (!*leaderless_since)
        *leaderless_since = now;
    if (cluster_test_reports_held())
        return;
    Starling__Chan__Applied a = STARLING__CHAN__APPLIED__INIT;
    a.index = index;
    if (*leaderless_since) {
        uint64_t ms = now - *leaderless_since;
        a.has_leaderless_ms = true;
        a.leaderless_ms = ms == 0 ? 1 : ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
    }
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_APPLIED;
    fr.applied = &a;
    uint8_t buf[48];
    uint64_t nodes[MAX_PEERS];
    unsigned k = 0;
    pthread_mutex_lock(&cn->mu);
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (!cn->peers[i].left)
            nodes[k++] = cn->peers[i].node;
    pthread_mutex_unlock(&cn->mu);
    for (unsigned i = 0; i < k; i++) {
        a.has_fwd_next = cluster_fwd_out_next(cn->fwd, nodes[i], &a.fwd_next);
        /* (its outbox not loaded yet: the report says nothing of it) */
        a.has_outbox_unknown = a.outbox_unknown = !a.has_fwd_next;
        size_t n = starling__chan__frame__pack(&fr, buf);
        cluster_send(cn->c, nodes[i], buf, n);
    }
}

/* p's Applied report of index with the last sequence number of its outbox
 * to this node (fwd_next; absent: an older node, taken as clear), when
 * this node has applied its frames up to `hwm` (struct peer.clear). A
 * report sent before its outbox was loaded (Applied.outbox_unknown) is
 * not given here: it says nothing of the forwards a SIGKILL left in that
 * outbox. Before, it said fwd_next 0, which took p for clear: chaos seed
 * 18011 with --resend --more --weight restart-all=8, n3 started again
 * after a SIGKILL with two forwards for n2 in its outbox (n2 had dropped
 * them before its own store loaded), and its reports while its outbox
 * loaded ended n2's old copy of a subscriber's session that waited for
 * them; their replay 20 ms later matched nothing on n2 (2 messages lost).
 * Caller holds mu; cluster thread. */
static void peer_clear_note(struct peer *p, uint64_t index, bool has_seq, uint64_t seq,
                            uint64_t hwm)
{
    if (p->pend_index && hwm >= p->pend_seq) {
        if (p->pend_index > p->clear)
            p->clear = p->pend_index;
        p->pend_index = p->pend_seq = 0;
    }
    if (!has_seq || hwm >= seq) {
        if (index > p->clear)
            p->clear = index;
    } else if (!p->pend_index) {
        /* the first report its frames have not caught up with: kept until
         * they have (a later one replacing it would never be reached while
         * forwards flow) */
        p->pend_index = index;
        p->pend_seq = seq;
    }
}

/* ---- routes ------------------------------------------------------------- */

static void route_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)leader;
    struct cluster_node *cn = ud;
    pthread_mutex_lock(&cn->mu);
    if (status == 0 && res) {
        log_debug("cluster: route batch (ticket %llu) committed at entry %llu",
                  (unsigned long long)cn->inflight_ticket, (unsigned long long)res->index);
        cn->committed = cn->inflight_ticket;
        cn->committed_index = res->index;
        if (!cn->first_routes_index) /* (read without mu: claim_held_bound) */
            __atomic_store_n(&cn->first_routes_index, res->index, __ATOMIC_RELEASE);
        for (struct waiter *w = cn->waiters; w; w = w->next)
            if (!w->index && w->ticket <= cn->inflight_ticket)
                w->index = res->index;
        free(cn->inflight);
        cn->inflight = NULL;
    } else {
        if (status != -ECANCELED)
            log_debug("cluster: route batch not committed (%s); retrying", strerror(-status));
        cn->retry_at_ms = cn_mono_ms() + RETRY_MS;
    }
    cn->inflight_busy = false;
    cn_kick(cn);
    pthread_mutex_unlock(&cn->mu);
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_BATCH_HOLD
 * names exists, this node's batch of route changes and session records is
 * not proposed (claims, releases and retained messages still are): a
 * record that comes late, its owner's session already taking forwards
 * (tests/cluster/test_faults.py). Logged once a hold began. */
static bool batch_test_hold(void)
{
    static bool told;
    const char *path = getenv("STARLING_TEST_BATCH_HOLD");
    bool held = path && access(path, F_OK) == 0;
    if (held && !told)
        log_info("cluster: this node's batch waits (STARLING_TEST_BATCH_HOLD)");
    told = held;
    return held;
}
#else
static bool batch_test_hold(void)
{
    return false;
}
#endif

/* Take pending into a new in-flight entry. Caller holds mu. */
static void route_take(struct cluster_node *cn)
{
    if (cn->inflight || (cmd_batch_count(cn->pending) == 0 && !cn->purge_first))
        return;
    if (batch_test_hold())
        return;
    /* NodePurge(self) and the routes of the persistent sessions go in one
     * entry: proposed before the store loaded them, the purge would leave
     * this node without routes until the next entry (forwards to it lost
     * meanwhile) */
    if (cn->purge_first && !cn->loaded)
        return;
    struct cmd_batch *b = cn->pending;
    if (cn->purge_first) {
        /* NodePurge(self), then the pending commands */
        struct cmd_batch *nb = cmd_batch_new();
        size_t pb_len;
        const void *pb = cmd_batch_pb(b, &pb_len);
        if (!nb || cmd_node_purge(nb, cn->self) < 0) {
            cmd_batch_free(nb);
            return;
        }
        size_t h_len;
        const void *h = cmd_batch_pb(nb, &h_len);
        /* concatenated CommandBatch encodings are one batch of all commands */
        uint8_t *cat = malloc(h_len + pb_len + 1);
        if (!cat) {
            cmd_batch_free(nb);
            return;
        }
        memcpy(cat, h, h_len);
        if (pb_len)
            memcpy(cat + h_len, pb, pb_len);
        void *entry;
        size_t len;
        int r = cmd_entry_wrap(cat, h_len + pb_len, &entry, &len);
        free(cat);
        cmd_batch_free(nb);
        if (r < 0)
            return;
        cn->inflight = entry;
        cn->inflight_len = len;
        cn->purge_first = false;
    } else {
        size_t len;
        const void *e = cmd_batch_data(b, &len);
        if (!e || !(cn->inflight = malloc(len)))
            return;
        memcpy(cn->inflight, e, len);
        cn->inflight_len = len;
    }
    cn->inflight_ticket = cn->queued;
    cmd_batch_reset(b);
    /* in the log (docs/cluster.md, "Route changes in the log"): at info
     * when a route goes, at debug when routes are only added */
    char d[1024];
    int mask = log_get_level() >= LOG_LEVEL_INFO
                   ? cmd_entry_routes_describe(cn->inflight, cn->inflight_len, d, sizeof(d))
                   : 0;
    if (mask > 0)
        log_msg(mask & CMD_ROUTES_GONE ? LOG_LEVEL_INFO : LOG_LEVEL_DEBUG,
                "cluster: route batch (ticket %llu) proposed: %s", (unsigned long long)cn->queued,
                d);
}

static void route_queue(struct cluster_node *cn, const char *filter, size_t len, bool add)
{
    if (atomic_load(&cn->stopped))
        return;
    pthread_mutex_lock(&cn->mu);
    int r = add ? cmd_route_add(cn->pending, filter, len, cn->self)
                : cmd_route_remove(cn->pending, filter, len, cn->self);
    if (r == 0) {
        cn->queued++;
        if (add && len <= sizeof(cn->last_add)) {
            memcpy(cn->last_add, filter, len);
            cn->last_add_len = len;
            cn->last_add_ticket = cn->queued;
        }
        cn_kick(cn);
    } else {
        log_error("cluster: cannot queue the route of '%.*s': %s", (int)len, filter, strerror(-r));
    }
    pthread_mutex_unlock(&cn->mu);
}

int cn_queue_batch(struct cluster_node *cn, const struct cmd_batch *cmds)
{
    if (atomic_load(&cn->stopped))
        return -ECANCELED;
    pthread_mutex_lock(&cn->mu);
    int r = cmd_batch_append(cn->pending, cmds);
    if (r == 0) {
        cn->queued++;
        cn_kick(cn);
    }
    pthread_mutex_unlock(&cn->mu);
    return r;
}

bool cn_peer_live(struct cluster_node *cn, uint64_t node)
{
    bool live = false;
    pthread_mutex_lock(&cn->mu);
    uint64_t now = cn_mono_ms();
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (cn->peers[i].node == node)
            live = peer_live(cn, &cn->peers[i], now);
    pthread_mutex_unlock(&cn->mu);
    return live;
}

int cn_send_frame(struct cluster_node *cn, uint64_t to, const Starling__Chan__Frame *fr)
{
    size_t n = starling__chan__frame__get_packed_size(fr);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    starling__chan__frame__pack(fr, buf);
    int r = cluster_send(cn->c, to, buf, n);
    free(buf);
    return r;
}

static void cn_filter_added(void *ud, const char *filter, size_t len)
{
    route_queue(ud, filter, len, true);
}

static void cn_filter_removed(void *ud, const char *filter, size_t len)
{
    route_queue(ud, filter, len, false);
}

/* route_ops.filter_joined: another local subscriber of a filter. Its
 * SUBACK waits only for this node's queued route changes, so the route
 * must be among them or in the table as this node's own. It may be
 * neither: a NodeDown of this node applied while it ran takes the routes
 * no session record keeps, and a record that left this node takes the
 * counted ones (NodeDown.keepers), while the filter stays in the index
 * for an old copy of a moved session (claimed away, moving out) or a
 * session the NodeDown answer (taken_for_dead) has not looked at yet.
 * Without a route proposed, such a subscriber had its SUBACK at once, and
 * what other nodes published did not come until the routes were proposed
 * again (seconds when the glue's thread was late) or the copy ended and
 * it subscribed again. So the route is proposed again (idempotent; a
 * route counted by a NodeDown becomes this node's own), and the SUBACK
 * waits for it everywhere. One read of the table per
 * subscriber joining; none while the filter's last RouteAdd is still to
 * commit (a burst of subscribers to one filter). */
static void cn_filter_joined(void *ud, const char *filter, size_t len)
{
    struct cluster_node *cn = ud;
    if (atomic_load(&cn->stopped))
        return;
    pthread_mutex_lock(&cn->mu);
    bool pending = cn->last_add_ticket > cn->committed && cn->last_add_len == len &&
                   memcmp(cn->last_add, filter, len) == 0;
    pthread_mutex_unlock(&cn->mu);
    if (pending)
        return;
    /* before the cluster's start (the store loading): the first batch
     * holds every filter of the index */
    if (!cn->fsm || fsm_route_own(cn->fsm, cn->self, filter, len) == 1)
        return;
    route_queue(cn, filter, len, true);
}

struct nodes_acc {
    uint64_t self;
    uint64_t *v;
    int n, max;
};

static void nodes_visit(void *ud, uint64_t node, const char *share, size_t share_len)
{
    (void)share;
    (void)share_len;
    struct nodes_acc *a = ud;
    if (node == a->self)
        return;
    for (int i = 0; i < a->n && i < a->max; i++)
        if (a->v[i] == node)
            return;
    if (a->n < a->max)
        a->v[a->n] = node;
    a->n++;
}

static int cn_remote_nodes(void *ud, const char *topic, size_t len, uint64_t *nodes, int max)
{
    struct cluster_node *cn = ud;
    struct nodes_acc a = {cn->self, nodes, 0, max};
    if (routes_match(fsm_routes(cn->fsm), topic, len, nodes_visit, &a) < 0)
        return 0;
    return a.n;
}

static int cn_sync(void *ud, void (*done)(void *arg), void *arg)
{
    return cn_sync_index(ud, done, arg, NULL);
}

int cn_sync_index(struct cluster_node *cn, void (*done)(void *arg), void *arg, uint64_t *index)
{
    if (atomic_load(&cn->stopped))
        return 0;
    struct waiter *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    pthread_mutex_lock(&cn->mu);
    if (cn->everywhere >= cn->queued) {
        pthread_mutex_unlock(&cn->mu);
        free(w);
        return 0;
    }
    w->ticket = cn->queued;
    /* its route changes committed already (this waiter came after that
     * batch's answer): it waits for that batch's index, which route_done
     * will not give it any more */
    if (w->ticket <= cn->committed)
        w->index = cn->committed_index;
    w->done = done;
    w->arg = arg;
    w->index_out = index;
    w->next = cn->waiters;
    cn->waiters = w;
    cn_kick(cn);
    pthread_mutex_unlock(&cn->mu);
    return 1;
}

/* ---- publishes ----------------------------------------------------------- */

#define MAX_SHARES 32

struct fwd_group {
    char share[256]; /* "$share/group/filter", copied during the walk */
    size_t len;
    uint64_t nodes[16];
    unsigned n;
    bool local;
};

struct fwd_acc {
    uint64_t self;
    uint64_t plain[MAX_PEERS];
    unsigned n_plain;
    struct fwd_group groups[MAX_SHARES];
    unsigned n_groups;
};

static void fwd_visit(void *ud, uint64_t node, const char *share, size_t share_len)
{
    struct fwd_acc *a = ud;
    if (!share) {
        if (node == a->self)
            return;
        for (unsigned i = 0; i < a->n_plain; i++)
            if (a->plain[i] == node)
                return;
        if (a->n_plain < MAX_PEERS)
            a->plain[a->n_plain++] = node;
        return;
    }
    struct fwd_group *g = NULL;
    for (unsigned i = 0; i < a->n_groups; i++)
        if (a->groups[i].len == share_len && memcmp(a->groups[i].share, share, share_len) == 0)
            g = &a->groups[i];
    if (!g) {
        if (a->n_groups == MAX_SHARES || share_len >= sizeof(g->share))
            return;
        g = &a->groups[a->n_groups++];
        g->n = 0;
        g->local = false;
        memcpy(g->share, share, share_len);
        g->len = share_len;
    }
    if (node == a->self)
        g->local = true;
    else if (g->n < 16)
        g->nodes[g->n++] = node; /* ascending: the matcher keeps ids sorted */
}

static int u64_cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* A retained message's proposal, kept until it commits: the message was
 * acknowledged to its publisher, so a proposal that fails because there is
 * no leader (an election) is made again, every RETRY_MS, until it commits.
 * Proposing it twice is harmless: RetainedSet/Clear carry (origin, seq) and
 * an older or equal seq of the same origin is STALE_SEQ. */
struct ret_retry {
    struct ret_retry *next;
    struct cluster_node *cn;
    uint64_t at_ms;
    uint64_t seq;
    /* the publisher's acknowledgement waits for the commit (ackq.h), at
     * most until gate_until_ms (cluster_claim_timeout: no leader) */
    struct ack_gate *gate;
    uint64_t gate_until_ms;
    char *topic; /* in the same allocation, after entry */
    uint16_t topic_len;
    size_t len;
    unsigned char entry[];
};

/* ---- own retained ------------------------------------------------------
 * A retained message published here is stored here at once (for local
 * subscribers) and replicated afterwards; another node's RetainedSet/Clear
 * of the same topic may commit before ours, and its observer here would
 * overwrite our newer local copy: this node then served the older value
 * for good while every other node served ours (found by the black-box
 * checker: writes one after the other from different nodes ended with the
 * last writer's node holding the previous value). So the local copy
 * follows the Raft order like everywhere else: while one of our own
 * messages of a topic is not applied here, another node's is not stored
 * (ours comes later in the log and wins); when ours is applied it is
 * stored again (a foreign one may have been applied between our local
 * store and ret_own_note), unless a newer one of ours is on its way. */
struct ret_own {
    struct ret_own *next;
    uint64_t seq;
    uint16_t len;
    char topic[];
};

static struct ret_own **ret_own_slot(struct cluster_node *cn, const void *topic, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const unsigned char *)topic)[i]) * 1099511628211ull;
    struct ret_own **pp = &cn->ret_own[h % CN_RET_OWN_BUCKETS];
    while (*pp && !((*pp)->len == len && memcmp((*pp)->topic, topic, len) == 0))
        pp = &(*pp)->next;
    return pp;
}

/* Our message seq of topic is being replicated (before it is proposed). */
static void ret_own_note(struct cluster_node *cn, const char *topic, uint16_t len, uint64_t seq)
{
    pthread_mutex_lock(&cn->ret_mu);
    struct ret_own **pp = ret_own_slot(cn, topic, len);
    if (*pp) {
        if (seq > (*pp)->seq)
            (*pp)->seq = seq;
    } else {
        struct ret_own *o = malloc(sizeof *o + len);
        if (o) { /* out of memory: the local copy is overwritten as before */
            o->next = NULL;
            o->seq = seq;
            o->len = len;
            memcpy(o->topic, topic, len);
            *pp = o;
        }
    }
    pthread_mutex_unlock(&cn->ret_mu);
}

/* The proposal of our message seq of topic completed: applied by the node
 * that answered (for a forwarded proposal, perhaps not yet here: the entries
 * before it that this node applies meanwhile are then stored, and ours after
 * them), applied without effect, or given up. */
static void ret_own_done(struct cluster_node *cn, const char *topic, uint16_t len, uint64_t seq)
{
    pthread_mutex_lock(&cn->ret_mu);
    struct ret_own **pp = ret_own_slot(cn, topic, len);
    if (*pp && (*pp)->seq == seq) {
        struct ret_own *o = *pp;
        *pp = o->next;
        free(o);
    }
    pthread_mutex_unlock(&cn->ret_mu);
}

/* A RetainedSet/Clear of (origin, seq) was applied: whether this node's
 * retained store takes it (cluster thread). */
static bool ret_own_applied(struct cluster_node *cn, const void *topic, size_t len, uint64_t origin,
                            uint64_t seq)
{
    bool store = true;
    pthread_mutex_lock(&cn->ret_mu);
    struct ret_own **pp = ret_own_slot(cn, topic, len);
    if (*pp) {
        if (origin != cn->self || (*pp)->seq > seq) {
            store = false; /* a newer one of ours follows in the log */
        } else {
            struct ret_own *o = *pp;
            *pp = o->next;
            free(o);
        }
    }
    pthread_mutex_unlock(&cn->ret_mu);
    return store;
}

static void ret_own_free(struct cluster_node *cn)
{
    for (unsigned i = 0; i < CN_RET_OWN_BUCKETS; i++)
        while (cn->ret_own[i]) {
            struct ret_own *o = cn->ret_own[i];
            cn->ret_own[i] = o->next;
            free(o);
        }
}

static void retained_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    struct ret_retry *r = ud;
    struct cluster_node *cn = r->cn;
    (void)res;
    (void)leader;
    if (status == -ENOTCONN || status == -EAGAIN || status == -ECONNABORTED ||
        status == -ETIMEDOUT || status == -ENOBUFS) {
        if (r->gate && cn_mono_ms() >= r->gate_until_ms) {
            /* no leader for that long: the publisher is answered, the
             * order of its retained message is no longer promised */
            ack_gate_open(r->gate);
            r->gate = NULL;
        }
        pthread_mutex_lock(&cn->mu);
        if (!cn->quit && cn->n_ret_retry < RETAINED_RETRY_MAX) {
            r->at_ms = cn_mono_ms() + RETRY_MS;
            r->next = cn->ret_retry;
            cn->ret_retry = r;
            cn->n_ret_retry++;
            pthread_mutex_unlock(&cn->mu);
            return;
        }
        pthread_mutex_unlock(&cn->mu);
    }
    if (status != 0 && status != -EINPROGRESS) /* (committed, applied later) */
        log_warn("cluster: a retained message is not replicated: %s", strerror(-status));
    /* applied (perhaps not here yet, or as a NOOP / STALE_SEQ that the
     * observer does not see) or given up */
    ret_own_done(cn, r->topic, r->topic_len, r->seq);
    if (r->gate)
        ack_gate_open(r->gate);
    free(r);
}

/* Proposes r; its callback keeps it for a retry or frees it. Not under mu. */
static void retained_propose(struct cluster_node *cn, struct ret_retry *r)
{
    int rc = cluster_propose(cn->c, r->entry, r->len, retained_done, r);
    if (rc < 0)
        retained_done(r, rc, NULL, 0);
}

/* Proposes m's retained message (or its clearing) to the cluster. With
 * flow->want_gate (a client's QoS 1/2 publish), its acknowledgement waits
 * for the commit (flow->gate): a retained message published after that
 * acknowledgement, on any node, is proposed after this one committed, and
 * so is the one every node keeps (docs/cluster.md, "Retained messages"). */
static void cn_replicate_retained(struct cluster_node *cn, struct msg *m, uint64_t seq,
                                  struct pub_flow *flow)
{
    const char *topic = msg_topic(m);
    struct cmd_batch *b = cmd_batch_new();
    int r = -ENOMEM;
    if (b)
        r = m->payload_len == 0
                ? cmd_retained_clear(b, topic, m->topic_len, cn->self, seq)
                : cmd_retained_set(b, topic, m->topic_len, m->qos, msg_payload(m), m->payload_len,
                                   msg_props(m), m->props_len, m->expiry_at, cn->self, seq);
    size_t len;
    const void *e = r == 0 ? cmd_batch_data(b, &len) : NULL;
    struct ret_retry *rr = e ? malloc(sizeof *rr + len + m->topic_len) : NULL;
    if (rr) {
        rr->cn = cn;
        rr->len = len;
        memcpy(rr->entry, e, len);
        rr->seq = seq;
        rr->topic = (char *)rr->entry + len;
        rr->topic_len = m->topic_len;
        memcpy(rr->topic, topic, m->topic_len);
        rr->gate = flow && flow->want_gate && !flow->gate ? ack_gate_new() : NULL;
        rr->gate_until_ms = cn_mono_ms() + cn->b->cfg.cluster_claim_timeout;
        if (rr->gate)
            flow->gate = rr->gate;
        ret_own_note(cn, topic, m->topic_len, seq);
        retained_propose(cn, rr);
    } else {
        log_warn("cluster: the retained message of '%.*s' is not replicated", m->topic_len, topic);
    }
    cmd_batch_free(b);
}

/* Fills dest with the nodes to forward to: every plain node of a, plus one
 * node per shared group without a local member, picked round robin;
 * chosen[i] is group i's pick (0: none). Returns the number of nodes. */
static unsigned cn_pick_destinations(struct cluster_node *cn, struct fwd_acc *a,
                                     uint64_t dest[MAX_PEERS], uint64_t chosen[MAX_SHARES])
{
    unsigned n_dest = 0;
    for (unsigned i = 0; i < a->n_plain; i++)
        dest[n_dest++] = a->plain[i];
    uint64_t pick = atomic_fetch_add(&cn->pick, 1);
    for (unsigned i = 0; i < a->n_groups; i++) {
        struct fwd_group *g = &a->groups[i];
        chosen[i] = 0;
        if (g->local || g->n == 0)
            continue;
        qsort(g->nodes, g->n, sizeof(g->nodes[0]), u64_cmp);
        chosen[i] = g->nodes[pick % g->n];
        bool have = false;
        for (unsigned k = 0; k < n_dest; k++)
            have = have || dest[k] == chosen[i];
        if (!have && n_dest < MAX_PEERS)
            dest[n_dest++] = chosen[i];
    }
    return n_dest;
}

/* Sends m to node, with the shares of the groups whose pick is that node
 * (node/cluster_fwd.h: a QoS 1/2 forward goes into *bt). */
static void cn_send_publish(struct cluster_node *cn, struct msg *m, const struct fwd_acc *a,
                            const uint64_t *chosen, const uint64_t *dest, unsigned n_dest,
                            uint64_t node, struct store_batch **bt, struct pub_flow *flow)
{
    const char *topic = msg_topic(m);
    Starling__Chan__Publish p = STARLING__CHAN__PUBLISH__INIT;
    p.origin = cn->self;
    p.topic.data = (uint8_t *)topic;
    p.topic.len = m->topic_len;
    p.payload.data = (uint8_t *)msg_payload(m);
    p.payload.len = m->payload_len;
    p.qos = m->qos;
    p.has_retain = true;
    p.retain = m->retain;
    if (m->props_len) {
        p.has_properties = true;
        p.properties.data = (uint8_t *)msg_props(m);
        p.properties.len = m->props_len;
    }
    if (m->expiry_at) {
        p.has_expiry_at_ms = true;
        p.expiry_at_ms = m->expiry_at;
    }
    ProtobufCBinaryData shares[MAX_SHARES];
    size_t n_shares = 0;
    for (unsigned i = 0; i < a->n_groups; i++)
        if (chosen[i] == node) {
            shares[n_shares].data = (uint8_t *)a->groups[i].share;
            shares[n_shares].len = a->groups[i].len;
            n_shares++;
        }
    p.n_shares = n_shares;
    p.shares = shares;
    if (m->route_index) {
        p.has_route_index = true;
        p.route_index = m->route_index;
    }
    uint64_t also[MAX_PEERS];
    if (m->id_node == cn->self && m->id_seq) {
        p.has_pub_id = true;
        p.pub_id = m->id_seq;
        /* the other destinations (an old copy's owners rule: struct
         * msg.also_to) */
        for (unsigned d = 0; d < n_dest; d++)
            if (dest[d] != node)
                also[p.n_also_to++] = dest[d];
        p.also_to = also;
    }
    cluster_fwd_send(cn->fwd, node, &p, bt, flow);
}

static unsigned cn_forward(void *ud, struct msg *m, struct worker *cur, struct store_batch **bt,
                           struct pub_flow *flow)
{
    (void)cur;
    struct cluster_node *cn = ud;
    if (atomic_load(&cn->stopped))
        return 0;
    const char *topic = msg_topic(m);
    /* $SYS stays per node */
    if (m->topic_len >= 4 && memcmp(topic, "$SYS", 4) == 0)
        return 0;
    if (m->retain && cn->b->cfg.retain_available)
        cn_replicate_retained(cn, m, atomic_fetch_add(&cn->pub_seq, 1) + 1, flow);

    /* The matcher's strings are valid only during the walk (its read lock):
     * fwd_visit copies them. */
    struct fwd_acc a;
    a.self = cn->self;
    a.n_plain = 0;
    a.n_groups = 0;
    if (routes_match(fsm_routes(cn->fsm), topic, m->topic_len, fwd_visit, &a) < 0)
        return 0;
    if (a.n_plain == 0 && a.n_groups == 0)
        return 0;

    uint64_t dest[MAX_PEERS];
    uint64_t chosen[MAX_SHARES];
    unsigned n_dest = cn_pick_destinations(cn, &a, dest, chosen);
    for (unsigned d = 0; d < n_dest; d++)
        cn_send_publish(cn, m, &a, chosen, dest, n_dest, dest[d], bt, flow);
    return n_dest;
}

static uint64_t cn_routed_at(void *ud)
{
    struct cluster_node *cn = ud;
    return fsm_routes_index(cn->fsm);
}

/* route_ops.forward_busy: a node's channel queue is above its high-water
 * mark while it drains (cluster/channel.h "Pressure"). Any thread. */
static bool cn_forward_busy(void *ud)
{
    struct cluster_node *cn = ud;
    return !atomic_load(&cn->stopped) && cn->c && cluster_busy(cn->c);
}

/* The channel's busy queue drained: the workers with publishers paused for
 * it check them (cluster thread). */
static void cn_on_drained(void *ud)
{
    struct cluster_node *cn = ud;
    struct broker *b = cn->b;
    uint64_t waiters = atomic_exchange(&b->fwd_busy_waiters, 0);
    if (waiters)
        b->sink->drained(b, waiters);
}

/* A QoS 1/2 message published here: (this node, its next publish
 * number), the identity it keeps on every path (node/msg_seen.h). */
static void cn_identify(void *ud, struct msg *m)
{
    struct cluster_node *cn = ud;
    m->id_node = cn->self;
    m->id_seq = atomic_fetch_add(&cn->pub_seq, 1) + 1;
}

static const struct route_ops cluster_route_ops = {
    .filter_added = cn_filter_added,
    .filter_removed = cn_filter_removed,
    .filter_joined = cn_filter_joined,
    .remote_nodes = cn_remote_nodes,
    .forward = cn_forward,
    .sync = cn_sync,
    .routed_at = cn_routed_at,
    .forward_busy = cn_forward_busy,
    .identify = cn_identify,
};

/* A worker's forwards (and other frames) of one loop turn are written by
 * that worker at the end of the turn, in one system call per peer when the
 * channel is idle (channel.h chan_flush_here), rather than handed to the
 * cluster thread: one thread hand-off less on the way to another node. */
static void cn_turn_end(void *ud)
{
    struct cluster_node *cn = ud;
    if (cn->c)
        cluster_flush_here(cn->c);
}

static bool cn_defer(void *ud)
{
    struct cluster_node *cn = ud;
    /* only a worker's thread reads b->sink (set before any worker runs) */
    return sink_thread_worker && cn->b->sink->at_turn_end &&
           cn->b->sink->at_turn_end(cn_turn_end, cn);
}

/* ---- the channel's readers (workers) ------------------------------------ */

/* An incoming channel connection is read by a worker (channel.h,
 * "Readers"): the one of from % workers, so that each peer's connection
 * has one. It delivers each forwarded QoS 0 message to its own sessions in
 * the same loop turn (a local publish's path: no hand-off to the cluster
 * thread and back, docs/cluster.md "The forwarding channel") and hands
 * every other frame to the cluster thread, in order. */
struct cn_reader_call {
    struct worker *w;
    struct chan_reader *r;
};

static void cn_reader_stop(void *ud)
{
    chan_reader_stop(ud);
}

static void cn_reader_on_worker(void *ud)
{
    struct cn_reader_call *rc = ud;
    struct worker *w = rc->w;
    struct chan_reader *r = rc->r;
    free(rc);
    /* (a call that never ran runs at the worker's end, or on another
     * thread: then it declines) */
    if (sink_thread_worker == w && !w->stopping && worker_on_stop(w, cn_reader_stop, r) == 0) {
        log_debug("cluster: worker %d reads a forwarding channel connection", w->id);
        chan_reader_start(r, &w->loop);
    } else {
        chan_reader_start(r, NULL);
    }
}

static int cn_reader_attach(void *ud, uint64_t from, struct chan_reader *r)
{
    struct cluster_node *cn = ud;
    /* (before the workers run, b->server is still being built: not yet) */
    if (!atomic_load_explicit(&cn->b->workers_up, memory_order_acquire) ||
        atomic_load(&cn->b->stopping) || atomic_load(&cn->stopped))
        return -1;
    struct server *srv = cn->b->server;
    if (srv->n_workers <= 0)
        return -1;
    struct cn_reader_call *rc = malloc(sizeof(*rc));
    if (!rc)
        return -1;
    rc->w = srv->workers[from % (uint64_t)srv->n_workers];
    rc->r = r;
    if (!rc->w || worker_post_call(rc->w, cn_reader_on_worker, rc) != 0) {
        free(rc);
        return -1;
    }
    return 0;
}

static bool cn_reader_fast(void *ud, const void *frame)
{
    struct cluster_node *cn = ud;
    const Starling__Chan__Frame *f = frame;
    return f->frame_case == STARLING__CHAN__FRAME__FRAME_PUBLISH &&
           cluster_fwd_here_ok(f->publish) && !atomic_load(&cn->stopped);
}

static void cn_reader_frame(void *ud, uint64_t from, const void *frame)
{
    (void)from;
    struct cluster_node *cn = ud;
    const Starling__Chan__Frame *f = frame;
    cluster_fwd_on_publish_here(cn->fwd, f->publish, sink_thread_worker);
}

static void cn_reader_done(void *ud, struct chan_reader *r)
{
    (void)ud;
    if (sink_thread_worker)
        worker_on_stop_forget(sink_thread_worker, r);
}

/* ---- the receiving side (cluster thread) --------------------------------- */

static void on_frame(void *ud, uint64_t from, const void *frame)
{
    struct cluster_node *cn = ud;
    const Starling__Chan__Frame *f = frame;
    if (atomic_load(&cn->stopped))
        return;
    switch (f->frame_case) {
    case STARLING__CHAN__FRAME__FRAME_PUBLISH:
        cluster_fwd_on_publish(cn->fwd, from, f->publish);
        return;
    case STARLING__CHAN__FRAME__FRAME_PUBLISH_ACK:
        cluster_fwd_on_ack(cn->fwd, from, f->publish_ack);
        return;
    case STARLING__CHAN__FRAME__FRAME_SESSION_REQUEST:
        cn_registry_on_request(cn, from, f->session_request);
        return;
    case STARLING__CHAN__FRAME__FRAME_SESSION_STATE: {
        /* sequenced: applied once, acknowledged once what it built is
         * committed (node/cluster_fwd.h) */
        const Starling__Chan__SessionState *st = f->session_state;
        struct cluster_fwd_seq sq;
        int r = cluster_fwd_in_accept(cn->fwd, from, st->has_seq ? st->seq : 0,
                                      st->has_prev ? st->prev : 0, "session state", &sq);
        if (r != 0)
            cn_registry_on_state(cn, from, st, r > 0 ? &sq : NULL);
        return;
    }
    case STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES: {
        const Starling__Chan__SessionMessages *sm = f->session_messages;
        struct cluster_fwd_seq sq;
        int r = cluster_fwd_in_accept(cn->fwd, from, sm->has_seq ? sm->seq : 0,
                                      sm->has_prev ? sm->prev : 0, "late messages", &sq);
        if (r != 0)
            cn_session_on_messages(cn, from, sm, r > 0 ? &sq : NULL);
        return;
    }
    case STARLING__CHAN__FRAME__FRAME_SESSION_ROUTED:
        cn_session_on_routed(cn, from, f->session_routed);
        return;
    case STARLING__CHAN__FRAME__FRAME_ADMIN_QUERY:
        cn_admin_on_query(cn, from, f->admin_query);
        return;
    case STARLING__CHAN__FRAME__FRAME_ADMIN_ANSWER:
        cn_admin_on_answer(cn, from, f->admin_answer);
        return;
    case STARLING__CHAN__FRAME__FRAME_APPLIED: {
        pthread_mutex_lock(&cn->mu);
        bool known = false;
        for (unsigned i = 0; i < cn->n_peers; i++)
            if (cn->peers[i].node == from) {
                if (f->applied->index > cn->peers[i].applied)
                    cn->peers[i].applied = f->applied->index;
                if (!f->applied->outbox_unknown)
                    peer_clear_note(&cn->peers[i], f->applied->index, f->applied->has_fwd_next,
                                    f->applied->fwd_next, cluster_fwd_in_applied(cn->fwd, from));
                cn->peers[i].seen_ms = cn_mono_ms();
                /* (its clock's since, on this node's: 1 at the earliest) */
                uint64_t ll = f->applied->has_leaderless_ms ? f->applied->leaderless_ms : 0;
                cn->peers[i].leaderless_since = !ll ? 0
                                                : cn->peers[i].seen_ms > ll
                                                    ? cn->peers[i].seen_ms - ll
                                                    : 1;
                if (!ll && cn->peers[i].leaderless_told) {
                    cn->peers[i].leaderless_told = false;
                    log_info("cluster: %s (%016llx) knows a Raft leader again: SUBACKs and "
                             "claims wait for it again",
                             cn->peers[i].name, (unsigned long long)from);
                }
                if (!cn->peers[i].run_seen_ms)
                    cn->peers[i].run_seen_ms = cn->peers[i].seen_ms;
                known = true;
            }
        if (!known)
            peers_refresh(cn);
        cn_kick(cn);
        pthread_mutex_unlock(&cn->mu);
        return;
    }
    default:
        return;
    }
}

/* Store a retained message (or clear, empty payload) that another node
 * published: in memory for subscribers here, on disk for restarts. */
static void cn_retain_store(struct broker *b, struct msg *m)
{
    retain_set(b->retained, m);
    struct store_batch *bt = NULL;
    persist_retained(b, &bt, m);
    if (bt)
        persist_submit(b, &bt, NULL, NULL);
}

/* Retained messages that other nodes published, and membership changes the
 * leader acts on (cluster thread, after each applied command). */
static void on_applied(void *ud, uint64_t index, const void *cmd)
{
    struct cluster_node *cn = ud;
    const Starling__Cmd__Command *k = cmd;
    struct broker *b = cn->b;
    switch (k->cmd_case) {
    case STARLING__CMD__COMMAND__CMD_SESSION_CLAIM:
        /* another node took a client id: kick and set aside the session */
        if (k->session_claim->node != cn->self && !atomic_load(&cn->stopped) &&
            k->session_claim->client_id.len <= 65535)
            cn_registry_claimed_elsewhere(cn, (const char *)k->session_claim->client_id.data,
                                          (uint16_t)k->session_claim->client_id.len,
                                          k->session_claim->node, k->session_claim->epoch,
                                          k->session_claim->has_clean_start &&
                                              k->session_claim->clean_start,
                                          k->session_claim->has_stored && k->session_claim->stored);
        return;
    case STARLING__CMD__COMMAND__CMD_SESSION_RELEASE:
        /* the leader released a session of this node as expired while it
         * was taken for dead (cluster_session.c, dead_expiry_poll) */
        if (k->session_release->node == cn->self && k->session_release->has_expired &&
            k->session_release->expired && !atomic_load(&cn->stopped) &&
            k->session_release->client_id.len <= 65535)
            cn_session_released(cn, (const char *)k->session_release->client_id.data,
                                (uint16_t)k->session_release->client_id.len,
                                k->session_release->epoch);
        return;
    case STARLING__CMD__COMMAND__CMD_RETAINED_SET: {
        const Starling__Cmd__RetainedSet *r = k->retained_set;
        if (r->topic.len == 0 || r->topic.len > 65535 || !r->message ||
            !ret_own_applied(cn, r->topic.data, r->topic.len, r->origin, r->seq))
            return;
        const Starling__Cmd__RetainedMessage *rm = r->message;
        struct msg *m =
            msg_new(r->topic.data, (uint16_t)r->topic.len, rm->payload.data,
                    (uint32_t)rm->payload.len, rm->has_properties ? rm->properties.data : NULL,
                    rm->has_properties ? (uint32_t)rm->properties.len : 0,
                    (uint8_t)(rm->qos > 2 ? 2 : rm->qos), true,
                    rm->has_expiry_at_ms ? rm->expiry_at_ms : 0, NULL);
        if (!m)
            return;
        cn_retain_store(b, m);
        msg_unref(m);
        return;
    }
    case STARLING__CMD__COMMAND__CMD_RETAINED_CLEAR: {
        const Starling__Cmd__RetainedClear *r = k->retained_clear;
        if (r->topic.len == 0 || r->topic.len > 65535 ||
            !ret_own_applied(cn, r->topic.data, r->topic.len, r->origin, r->seq))
            return;
        struct msg *m =
            msg_new(r->topic.data, (uint16_t)r->topic.len, NULL, 0, NULL, 0, 0, true, 0, NULL);
        if (!m)
            return;
        cn_retain_store(b, m);
        msg_unref(m);
        return;
    }
    case STARLING__CMD__COMMAND__CMD_MEMBER:
        /* a node that left: the leader takes it out of the configuration */
        if (k->member->left && raft_node_leader(cn->raft) == cn->self)
            raft_node_remove(cn->raft, k->member->node, NULL, NULL);
        pthread_mutex_lock(&cn->mu);
        peers_refresh(cn);
        /* a member that left: what sessions it still owns expire as a
         * dead member's (cluster_session.c, dead_expiry_poll) */
        if (k->member->left)
            cn_gone_note(cn, k->member->node, cn_mono_ms());
        else
            cn_gone_forget(cn, k->member->node);
        pthread_mutex_unlock(&cn->mu);
        return;
    case STARLING__CMD__COMMAND__CMD_NODE_DOWN:
        /* this node was taken for dead: its routes are proposed again.
         * Applied before it caught up after its start and before its first
         * route batch of this run, the NodeDown was proposed while it was
         * down (its sessions' routes come after it in the log); otherwise
         * while it ran: its clean subscribers may have missed messages
         * (cluster_session.c) */
        if (k->node_down->node == cn->self) {
            pthread_mutex_lock(&cn->mu);
            uint64_t first = cn->first_routes_index;
            pthread_mutex_unlock(&cn->mu);
            if (atomic_load(&cn->restart_done) || (first && index > first))
                atomic_store(&cn->reannounce_running, true);
            atomic_store(&cn->reannounce, true);
        }
        return;
    case STARLING__CMD__COMMAND__CMD_MEMBER_REMOVE:
        if (raft_node_leader(cn->raft) == cn->self && k->member_remove->node != cn->self)
            raft_node_remove(cn->raft, k->member_remove->node, NULL, NULL);
        /* a node forgotten now (not an old removal met again while this
         * node catches up: the id may have come back since) never takes
         * what its outbox holds */
        if (k->member_remove->node != cn->self && atomic_load(&cn->restart_done)) {
            size_t n = cluster_fwd_forget(cn->fwd, k->member_remove->node);
            if (n) {
                atomic_fetch_add(&b->stats.msgs_dropped, n);
                atomic_fetch_add(&b->stats.dropped[BROKER_DROP_NODE_FORGOTTEN], n);
                log_warn("cluster: %zu forward(s) held for %016llx dropped: it was forgotten", n,
                         (unsigned long long)k->member_remove->node);
            }
        }
        pthread_mutex_lock(&cn->mu);
        peers_refresh(cn);
        cn_gone_note(cn, k->member_remove->node, cn_mono_ms());
        pthread_mutex_unlock(&cn->mu);
        if (k->member_remove->node != cn->self && atomic_load(&cn->restart_done))
            cn_waits_forget(cn, k->member_remove->node);
        return;
    default:
        return;
    }
}

/* ---- the own thread ------------------------------------------------------ */

/* An entry is wholly in effect here (cluster thread): report it and
 * complete what waited for it (SUBACKs, claims) now, not at the next poll. */
static void on_entry(void *ud, uint64_t index)
{
    (void)index;
    struct cluster_node *cn = ud;
    pthread_mutex_lock(&cn->mu);
    cn_kick(cn);
    pthread_mutex_unlock(&cn->mu);
}

/* Complete the waiters whose index every live member applied. Caller holds
 * mu; the callbacks run after it is released (returned list). */
static struct waiter *waiters_ready(struct cluster_node *cn, uint64_t applied_self)
{
    uint64_t now = cn_mono_ms();
    uint64_t low = applied_self;
    uint64_t leaderless_ms =
        test_hook_u64("STARLING_TEST_SYNC_LEADERLESS_MS", CN_SYNC_LEADERLESS_MS);
    for (unsigned i = 0; i < cn->n_peers; i++) {
        struct peer *p = &cn->peers[i];
        if (peer_answering(cn, p, now, leaderless_ms) && p->applied < low)
            low = p->applied;
        /* (an operator sees why a SUBACK went before that member applied) */
        if (peer_leaderless(p, now, leaderless_ms) && !p->leaderless_told && !p->left) {
            p->leaderless_told = true;
            log_info("cluster: %s (%016llx) has known no Raft leader for %llu ms (cut off from "
                     "the leader?): SUBACKs and claims no longer wait for it to apply their "
                     "routes",
                     p->name, (unsigned long long)p->node,
                     (unsigned long long)(now - p->leaderless_since));
        }
    }
    struct waiter *ready = NULL;
    for (struct waiter **pp = &cn->waiters; *pp;) {
        struct waiter *w = *pp;
        if (w->index && w->index <= low) {
            *pp = w->next;
            if (w->ticket > cn->everywhere)
                cn->everywhere = w->ticket;
            if (w->index_out)
                *w->index_out = w->index;
            w->next = ready;
            ready = w;
        } else {
            pp = &w->next;
        }
    }
    return ready;
}

/* Glue thread: an entry could not be applied to the replicated tables (the
 * disk is full or failing; libraft then stops this node's Raft server). The
 * node stops as SIGTERM does and main exits with status 74: left running it
 * would still count as a live member whose SUBACK reports never come, and
 * its clients would get no cluster service. Its LMDB environment is as the
 * last good commit left it, so once started again with room on its disk it
 * applies what it missed from its Raft log and the leader. */
static void cn_check_tables(struct cluster_node *cn)
{
    if (!fsm_broken(cn->fsm) || atomic_exchange(&cn->failed, true))
        return;
    log_error("cluster: this node cannot write its replicated tables (see the error above): it "
              "stops (exit status 74); start it again once its disk has room, it then catches up");
    atomic_store(&cn->b->stop_requested, true);
}

/* Glue thread: the same for the Raft log (a full or failing disk under the
 * Raft directory: a write of the log failed, or libraft stopped the
 * server; raft_node_failed). */
static void cn_check_raft(struct cluster_node *cn)
{
    if (!raft_node_failed(cn->raft, NULL, 0) || atomic_exchange(&cn->failed, true))
        return;
    log_error("cluster: this node's Raft server cannot go on (see the error above): it stops "
              "(exit status 74); start it again once its disk has room, it then catches up");
    atomic_store(&cn->b->stop_requested, true);
}

static void *cn_thread(void *arg)
{
    struct cluster_node *cn = arg;
    uint64_t last_applied = 0, last_report = 0, last_turn = 0, leaderless_since = 0;
    pthread_mutex_lock(&cn->mu);
    while (!cn->quit) {
        uint64_t now = cn_mono_ms();
        if (last_turn && now - last_turn >= CN_LATE_LOG_MS)
            /* its reports to the leader waited as long (docs/cluster.md, "A
             * live node taken for dead under load") */
            log_info("cluster: the glue's thread ran %llu ms after its last turn",
                     (unsigned long long)(now - last_turn));
        last_turn = now;
        /* propose the next route batch */
        if (!cn->inflight_busy) {
            route_take(cn);
            if (cn->inflight && now >= cn->retry_at_ms) {
                cn->inflight_busy = true;
                void *e = cn->inflight;
                size_t len = cn->inflight_len;
                pthread_mutex_unlock(&cn->mu);
                int r = cluster_propose(cn->c, e, len, route_done, cn);
                pthread_mutex_lock(&cn->mu);
                if (r < 0) {
                    cn->inflight_busy = false;
                    cn->retry_at_ms = now + RETRY_MS;
                }
            }
        }
        /* retained messages whose proposal failed, due again */
        struct ret_retry *due = NULL;
        for (struct ret_retry **pp = &cn->ret_retry; *pp;) {
            struct ret_retry *r = *pp;
            if (r->at_ms <= now) {
                *pp = r->next;
                r->next = due;
                due = r;
                cn->n_ret_retry--;
            } else {
                pp = &r->next;
            }
        }
        if (due) {
            pthread_mutex_unlock(&cn->mu);
            while (due) {
                struct ret_retry *next = due->next;
                retained_propose(cn, due);
                due = next;
            }
            pthread_mutex_lock(&cn->mu);
        }
        /* report this node's applied index: entries wholly in effect here,
         * routes in the matcher (the entry hook wakes this thread) */
        uint64_t applied = fsm_visible(cn->fsm);
        bool report = applied != last_applied || now - last_report >= REPORT_EVERY_MS;
        if (fsm_broken(cn->fsm)) {
            report = false; /* never counted as a member that applies */
            cn_check_tables(cn);
        } else if (raft_node_failed(cn->raft, NULL, 0)) {
            report = false;
            cn_check_raft(cn);
        }
        if (report) {
            last_applied = applied;
            last_report = now;
            pthread_mutex_unlock(&cn->mu);
            send_applied(cn, applied, &leaderless_since);
            pthread_mutex_lock(&cn->mu);
        }
        pthread_mutex_unlock(&cn->mu);
        cn_registry_poll(cn, now);
        cn_session_poll(cn, now);
        cluster_fwd_poll(cn->fwd, now);
        pthread_mutex_lock(&cn->mu);
        struct waiter *ready = waiters_ready(cn, applied);
        if (ready) {
            pthread_mutex_unlock(&cn->mu);
            while (ready) {
                struct waiter *w = ready;
                ready = w->next;
                w->done(w->arg);
                free(w);
            }
            pthread_mutex_lock(&cn->mu);
            continue;
        }
        /* Sleep until kicked (a route change, a SUBSCRIBE waiting, a batch
         * committed, an entry applied here, a peer's report), or for the
         * timed work: retries (100 ms), reports (200 ms), claims' retries
         * and deadlines, peers going silent. */
        if (!cn->kick) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += CN_IDLE_WAIT_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&cn->cv, &cn->mu, &ts);
        }
        cn->kick = false;
    }
    /* shutdown: whoever still waits gets its answer (the connections are
     * gone or going) */
    struct waiter *w = cn->waiters;
    cn->waiters = NULL;
    pthread_mutex_unlock(&cn->mu);
    while (w) {
        struct waiter *next = w->next;
        w->done(w->arg);
        free(w);
        w = next;
    }
    return NULL;
}

/* ---- admin --------------------------------------------------------------- */

static int cn_stats(void *ud, bool cluster_wide, struct admin_stats *v, size_t cap)
{
    struct cluster_node *cn = ud;
    return cn->local.stats(cn->local.ud, cluster_wide, v, cap);
}

/* The node's metrics (admin_local), then Raft's and the forwarding to each
 * other member's. */
static void cn_metrics(void *ud, struct admin_metrics *m)
{
    struct cluster_node *cn = ud;
    cn->local.metrics(cn->local.ud, m);
    m->clustered = true;
    struct raft_node_stats rs;
    raft_node_stats(cn->raft, &rs);
    m->raft_term = rs.term;
    m->raft_commit_index = rs.commit_index;
    m->raft_applied_index = rs.last_applied;
    m->raft_leader_changes = rs.leader_changes;
    m->raft_resends_thinned = rs.resends_thinned;
    m->raft_leader = raft_node_leader(cn->raft) == cn->self;
    m->routes = routes_count(fsm_routes(cn->fsm));
    m->nodes_down = atomic_load(&cn->nodes_down);
    m->taken_for_dead = atomic_load(&cn->taken_for_dead);
    m->dead_sessions_ended = atomic_load(&cn->dead_sessions_ended);
    m->dead_sessions_released = atomic_load(&cn->dead_sessions_released);
    m->dead_sessions_expired = atomic_load(&cn->dead_sessions_expired);
    struct {
        uint64_t node;
        char name[ADMIN_NAME_MAX];
    } peers[MAX_PEERS];
    unsigned n = 0;
    pthread_mutex_lock(&cn->mu);
    for (unsigned i = 0; i < cn->n_peers && n < MAX_PEERS; i++) {
        if (cn->peers[i].left)
            continue;
        peers[n].node = cn->peers[i].node;
        memcpy(peers[n].name, cn->peers[i].name, sizeof(peers[n].name));
        n++;
    }
    pthread_mutex_unlock(&cn->mu);
    for (unsigned i = 0; i < n && m->n_peers < ADMIN_PEERS_MAX; i++) {
        struct admin_peer_metrics *p = &m->peers[m->n_peers++];
        if (peers[i].name[0])
            memcpy(p->name, peers[i].name, sizeof(p->name));
        else /* not introduced yet: its Raft id */
            snprintf(p->name, sizeof(p->name), "%016llx", (unsigned long long)peers[i].node);
        struct chan_peer_stats cs;
        if (cluster_peer_stats(cn->c, peers[i].node, &cs) == 0) {
            p->connected = cs.connected;
            p->queue_frames = cs.queued_frames;
            p->queue_bytes = cs.queued_bytes;
            p->frames_sent = cs.sent;
            p->bytes_sent = cs.bytes_sent;
            p->frames_dropped = cs.dropped;
            p->stalls = cs.stalls;
        }
        cluster_fwd_outbox(cn->fwd, peers[i].node, &p->outbox_msgs, &p->outbox_bytes);
    }
}

static int cn_publish(void *ud, const struct admin_publish *p, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    return cn->local.publish(cn->local.ud, p, err, errlen);
}

static void cn_health(void *ud, struct admin_health *h)
{
    struct cluster_node *cn = ud;
    memset(h, 0, sizeof(*h));
    struct admin_local *l = cn->admin;
    h->serving =
        atomic_load(&l->serving) && !atomic_load(&cn->b->stopping) && !atomic_load(&cn->stopped);
    h->clustered = true;
    h->has_leader = raft_node_leader(cn->raft) != 0;
    if (!h->serving)
        h->reason = "the node is not serving clients";
    else if (!h->has_leader)
        h->reason = "the cluster has no leader";
    else if (raft_node_diverged(cn->raft)) {
        h->has_leader = false;
        h->reason = "this node's replicated tables diverged from the cluster's";
    } else if (fsm_broken(cn->fsm)) {
        h->has_leader = false;
        h->reason = "this node cannot write its replicated tables (disk full or failing)";
    } else if (raft_node_failed(cn->raft, NULL, 0)) {
        h->has_leader = false;
        h->reason = "this node's Raft server cannot go on (its log cannot be written)";
    }
}

static const char *role_name(struct raft_node_member *mv, unsigned n, uint64_t id)
{
    for (unsigned i = 0; i < n; i++)
        if (mv[i].id == id)
            return mv[i].role == RAFT_NODE_VOTER     ? "voter"
                   : mv[i].role == RAFT_NODE_STANDBY ? "standby"
                                                     : "spare";
    return "joining";
}

static int cn_nodes(void *ud, struct admin_node *v, size_t cap)
{
    struct cluster_node *cn = ud;
    struct raft_node_member mv[MAX_PEERS];
    unsigned nm = raft_node_members(cn->raft, mv, MAX_PEERS);
    uint64_t leader = raft_node_leader(cn->raft);
    uint64_t node_ids[MAX_PEERS + 1] = {0};
    size_t n = 0;
    if (n < cap) {
        memset(&v[n], 0, sizeof(v[n]));
        snprintf(v[n].name, sizeof(v[n].name), "%s", cn->node_name);
        snprintf(v[n].address, sizeof(v[n].address), "%s:%u", cn->b->cfg.cluster_address,
                 cn->b->cfg.cluster_port);
        v[n].role = role_name(mv, nm, cn->self);
        v[n].reachable = true;
        v[n].leader = leader == cn->self;
        v[n].self = true;
        v[n].has_counts = fsm_node_counts(cn->fsm, cn->self, &v[n].routes, &v[n].sessions) == 0;
    }
    n++;
    pthread_mutex_lock(&cn->mu);
    uint64_t now = cn_mono_ms();
    for (unsigned i = 0; i < cn->n_peers; i++) {
        struct peer *p = &cn->peers[i];
        if (p->left)
            continue;
        if (n < cap) {
            memset(&v[n], 0, sizeof(v[n]));
            snprintf(v[n].name, sizeof(v[n].name), "%s", p->name);
            snprintf(v[n].address, sizeof(v[n].address), "%s", p->address);
            v[n].role = role_name(mv, nm, p->node);
            v[n].reachable = peer_live(cn, p, now);
            v[n].leader = leader == p->node;
            node_ids[n] = p->node;
        }
        n++;
    }
    pthread_mutex_unlock(&cn->mu);
    /* the counts scan the tables: not under mu */
    for (size_t i = 1; i < n && i < cap && i < MAX_PEERS + 1; i++)
        v[i].has_counts = fsm_node_counts(cn->fsm, node_ids[i], &v[i].routes, &v[i].sessions) == 0;
    return (int)n;
}

/* An admin operation's proposal, waited for: the admin API's thread blocks
 * until the entry committed, retrying while there is no leader (the one
 * that was just killed, say) until cluster_claim_timeout. done runs once
 * per attempt on the cluster thread; the waiter owns the struct and waits
 * for that call before it returns, so the struct outlives every call. */
struct cn_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    uint64_t index;
};

static void cn_sync_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)leader;
    struct cn_sync *w = ud;
    pthread_mutex_lock(&w->mu);
    if (status == 0 && res)
        w->index = res->index;
    w->status = status;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int cn_propose_wait(struct cluster_node *cn, const void *e, size_t len)
{
    uint64_t index;
    int r = cn_propose_wait_index(cn, e, len, &index);
    return r == -EINPROGRESS ? 0 : r; /* committed (applied later): what these callers wait for */
}

int cn_propose_wait_index(struct cluster_node *cn, const void *e, size_t len, uint64_t *index)
{
    struct cn_sync w = {.done = false, .status = 0, .index = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    /* twice the claim timeout: a proposal forwarded to a leader that just
     * died times out once (cluster_claim_timeout), the next one reaches the
     * new leader */
    uint64_t deadline = cn_mono_ms() + 2 * (uint64_t)cn->b->cfg.cluster_claim_timeout;
    int r;
    for (;;) {
        w.done = false;
        r = cluster_propose(cn->c, e, len, cn_sync_done, &w);
        if (r == 0) {
            pthread_mutex_lock(&w.mu);
            while (!w.done)
                pthread_cond_wait(&w.cv, &w.mu);
            r = w.status;
            pthread_mutex_unlock(&w.mu);
        }
        /* no leader yet, or one lost while the entry was pending (the
         * commands are idempotent: proposing again is safe) */
        if ((r != -ENOTCONN && r != -EAGAIN && r != -ECONNABORTED && r != -ETIMEDOUT) ||
            cn_mono_ms() >= deadline)
            break;
        struct timespec nap = {0, 100 * 1000 * 1000}; /* a leader is being elected */
        nanosleep(&nap, NULL);
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    *index = w.index;
    return r;
}

static int cn_leave(void *ud, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    struct cmd_batch *b = cmd_batch_new();
    char raft_addr[RAFT_NODE_ADDR_MAX] = "";
    if (cn->b->cfg.cluster_advertise[0])
        snprintf(raft_addr, sizeof(raft_addr), "%s:%u", cn->b->cfg.cluster_advertise,
                 cn->b->cfg.raft_port);
    int r = b ? cmd_member(b, cn->self, cn->node_name, cn->b->cfg.cluster_address,
                           cn->b->cfg.cluster_port, cn->b->cfg.raft_port,
                           raft_addr[0] ? raft_addr : NULL, CMD_ROLE_SPARE, 1)
              : -ENOMEM;
    size_t len;
    const void *e = r == 0 ? cmd_batch_data(b, &len) : NULL;
    if (e)
        cluster_leaving(cn->c); /* do not propose the record as a member again */
    r = e ? cn_propose_wait(cn, e, len) : -ENOMEM;
    cmd_batch_free(b);
    if (r < 0)
        snprintf(err, errlen, "the leave was not committed: %s", strerror(-r));
    return r;
}

/* The rebuild of a diverged node (cluster_auto_rebuild): leave the cluster
 * (the leader takes the node out of the Raft configuration, so that a node
 * that lost its log never counts as a voter), mark the data directory, and
 * stop the node as SIGTERM does (broker.stop_requested); main exits with status 75 and the
 * supervisor starts it again, when cluster_start sets the old state aside. */
static void *cn_rebuild_thread(void *arg)
{
    struct cluster_node *cn = arg;
    char err[256] = "";
    if (cn_leave(cn, err, sizeof(err)) < 0)
        log_warn("cluster: rebuild: %s (the leader removes the node when it is forgotten)", err);
    int r = cluster_rebuild_mark(cn->c);
    if (r < 0) {
        log_error("cluster: rebuild: cannot mark the data directory: %s; rebuild this node by "
                  "hand (docs/cluster.md)",
                  strerror(-r));
        return NULL;
    }
    log_error("cluster: stopping to rebuild this node's replicated state (exit status 75)");
    atomic_store(&cn->b->stop_requested, true);
    return NULL;
}

static void cn_on_rebuild(void *ud)
{
    struct cluster_node *cn = ud;
    if (!cn->b->cfg.cluster_auto_rebuild) {
        log_error("cluster: cluster_auto_rebuild is off: this node stays marked diverged (health "
                  "503) until it is rebuilt by hand (docs/cluster.md)");
        return;
    }
    if (atomic_exchange(&cn->rebuilding, true))
        return;
    if (pthread_create(&cn->rebuild_thread, NULL, cn_rebuild_thread, cn) != 0) {
        atomic_store(&cn->rebuilding, false);
        log_error("cluster: cannot start the rebuild: %s", strerror(errno));
    }
}

bool cluster_node_rebuilding(const struct cluster_node *cn)
{
    return cn && atomic_load(&cn->rebuilding);
}

bool cluster_node_failed(const struct cluster_node *cn)
{
    return cn && atomic_load(&cn->failed);
}

static int cn_forget(void *ud, const char *name, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    if (strcmp(name, cn->node_name) == 0) {
        snprintf(err, errlen, "'%s' is this node: use leave", name);
        return -EBUSY;
    }
    uint64_t node = 0;
    bool live = false;
    pthread_mutex_lock(&cn->mu);
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (strcmp(cn->peers[i].name, name) == 0) {
            node = cn->peers[i].node;
            live = peer_live(cn, &cn->peers[i], cn_mono_ms());
        }
    pthread_mutex_unlock(&cn->mu);
    if (!node) {
        snprintf(err, errlen, "no member is named '%s'", name);
        return -ENOENT;
    }
    if (live) {
        snprintf(err, errlen, "'%s' is alive: stop it first, or have it leave", name);
        return -EBUSY;
    }
    struct cmd_batch *b = cmd_batch_new();
    int r = b ? cmd_node_purge(b, node) : -ENOMEM;
    if (r == 0)
        r = cmd_member_remove(b, node);
    size_t len;
    const void *e = r == 0 ? cmd_batch_data(b, &len) : NULL;
    r = e ? cn_propose_wait(cn, e, len) : -ENOMEM;
    cmd_batch_free(b);
    if (r < 0)
        snprintf(err, errlen, "the removal was not committed: %s", strerror(-r));
    return r;
}

/* The per-node parts of the provider go to admin_local (its ud); the
 * queries of every node through cluster_admin.c. */
static json_t *cn_query_local(void *ud, json_t *q, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    return cn->local.query_local(cn->local.ud, q, err, errlen);
}

static json_t *cn_gather_any(void *ud, json_t *q, char *err, size_t errlen)
{
    return cn_gather(ud, q, err, errlen);
}

static int cn_table_get(void *ud, int table, const char *key, char **val)
{
    struct cluster_node *cn = ud;
    return cn->local.table_get(cn->local.ud, table, key, val);
}

static json_t *cn_table_list(void *ud, int table)
{
    struct cluster_node *cn = ud;
    return cn->local.table_list(cn->local.ud, table);
}

static int cn_table_put(void *ud, int table, const char *key, const char *val, char *err,
                        size_t errlen)
{
    struct cluster_node *cn = ud;
    return cn->local.table_put(cn->local.ud, table, key, val, err, errlen);
}

static int cn_table_del(void *ud, int table, const char *key, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    return cn->local.table_del(cn->local.ud, table, key, err, errlen);
}

/* Cleared here, then replicated (RetainedClear) like a client's clearing. */
static int cn_retained_delete(void *ud, const char *topic, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    int r = admin_local_retained_clear(cn->admin, topic, err, errlen);
    if (r < 0)
        return r;
    struct msg *m = msg_new(topic, (uint16_t)strlen(topic), NULL, 0, NULL, 0, 0, true, 0, NULL);
    if (!m)
        return -ENOMEM;
    cn_replicate_retained(cn, m, atomic_fetch_add(&cn->pub_seq, 1) + 1, NULL);
    msg_unref(m);
    return 0;
}

void cluster_node_admin(struct cluster_node *cn, struct admin_local *l, struct admin_provider *p)
{
    cn->admin = l;
    cn->local = *p;
    p->ud = cn;
    p->health = cn_health;
    p->nodes = cn_nodes;
    /* counters and publish: this node's (admin_local); a publish is
     * forwarded like any other */
    p->stats = cn->local.stats ? cn_stats : NULL;
    p->metrics = cn->local.metrics ? cn_metrics : NULL;
    p->publish = cn->local.publish ? cn_publish : NULL;
    p->cluster_leave = cn_leave;
    p->cluster_forget = cn_forget;
    p->query_local = cn->local.query_local ? cn_query_local : NULL;
    p->gather = cn->local.query_local ? cn_gather_any : NULL;
    p->table_get = cn->local.table_get ? cn_table_get : NULL;
    p->table_list = cn->local.table_list ? cn_table_list : NULL;
    p->table_put = cn->local.table_put ? cn_table_put : NULL;
    p->table_del = cn->local.table_del ? cn_table_del : NULL;
    p->retained_delete = cn->local.retained_delete ? cn_retained_delete : NULL;
}

/* ---- start and stop ------------------------------------------------------ */

/* The cluster's thread starts (cluster.h on_ready): what its callbacks use,
 * set before any frame or entry comes in. Set after cluster_start returned,
 * they were not there for the frames and entries of that moment: the peers'
 * Applied frames refreshed the peers from a null fsm, a claim applied while
 * catching up read the registry from it (SIGSEGV of a node SIGKILLed and
 * started again at once: chaos seed 1188520366 with --more). */
static void cn_on_ready(void *ud, struct cluster *c)
{
    struct cluster_node *cn = ud;
    pthread_mutex_lock(&cn->mu);
    cn->c = c;
    cn->raft = cluster_raft(c);
    cn->fsm = cluster_fsm(c);
    cn->self = cluster_self(c);
    pthread_mutex_unlock(&cn->mu);
    cluster_fwd_start(cn->fwd, c, cn->self);
}

int cluster_node_start(struct cluster_node **out, struct broker *b, char *err, size_t errlen)
{
    *out = NULL;
    struct config *cfg = &b->cfg;
    int r = config_cluster_resolve(cfg, err, errlen);
    if (r < 0)
        return r;
    static char seeds[MAX_SEEDS][RAFT_NODE_ADDR_MAX];
    int n = cfg->cluster_seeds[0] ? seeds_from_list(cfg, seeds, err, errlen)
                                  : seeds_from_dns(cfg, seeds, err, errlen);
    if (n < 0)
        return n;
    const char *seedp[MAX_SEEDS];
    for (int i = 0; i < n; i++)
        seedp[i] = seeds[i];

    struct cluster_node *cn = calloc(1, sizeof(*cn));
    if (!cn || !(cn->pending = cmd_batch_new())) {
        free(cn);
        return -ENOMEM;
    }
    cn->b = b;
    /* publish numbers (message identities, retained seqs) of this run;
     * without a store the clock keeps them above the last run's; with one,
     * the store's boot counter does (cluster_node_attach_store) */
    atomic_store(&cn->pub_seq, (uint64_t)time(NULL) << 32);
    snprintf(cn->node_name, sizeof(cn->node_name), "%s", cfg->node_name);
    pthread_mutex_init(&cn->mu, NULL);
    pthread_mutex_init(&cn->ret_mu, NULL);
    pthread_mutex_init(&cn->reg_mu, NULL);
    pthread_cond_init(&cn->cv, NULL);
    cn->purge_first = true;
    cn->started_ms = cn_mono_ms();
    /* before the cluster starts: frames may come at once */
    if (!(cn->fwd = cluster_fwd_new(b))) {
        cluster_node_free(cn);
        return -ENOMEM;
    }

    char dir[512]; /* fsm and raft create their directories */
    snprintf(dir, sizeof(dir), "%s/cluster", cfg->data_dir);
    struct cluster_config cc = {
        .dir = dir,
        .node_name = cfg->node_name,
        .address = cfg->cluster_address,
        .advertise = cfg->cluster_advertise[0] ? cfg->cluster_advertise : NULL,
        .raft_port = cfg->raft_port,
        .cluster_port = cfg->cluster_port,
        .seeds = seedp,
        .n_seeds = (unsigned)n,
        .cluster_name = cfg->cluster_name,
        .cluster_secret = cfg->cluster_secret,
        .observer = on_applied,
        .observer_ud = cn,
        .on_entry = on_entry,
        .on_frame = on_frame,
        .frame_ud = cn,
        .reader_attach = cn_reader_attach,
        .reader_fast = cn_reader_fast,
        .reader_frame = cn_reader_frame,
        .reader_done = cn_reader_done,
        .propose_timeout_ms = cfg->cluster_claim_timeout,
        .on_rebuild = cn_on_rebuild,
        .rebuild_ud = cn,
        .defer = cn_defer,
        .defer_ud = cn,
        .on_drained = cn_on_drained,
        .drained_ud = cn,
        .on_ready = cn_on_ready,
        .ready_ud = cn,
        /* Followers learn that an entry committed from the leader's next
         * AppendEntries: the heartbeat bounds how long a SUBACK (every live
         * member applied the route) and a CONNECT on a follower (the claim
         * applied there) wait after the commit. */
        .heartbeat_ms = CN_HEARTBEAT_MS,
        .election_timeout_ms = CN_ELECTION_TIMEOUT_MS,
    };
#ifndef NDEBUG
    /* Tests: "threshold,trailing", small, so that a node that was down
     * catches up from a snapshot (the claims in it come as tables). */
    const char *snap = getenv("STARLING_TEST_SNAPSHOT");
    if (snap) {
        unsigned th = 0, tr = 0;
        if (sscanf(snap, "%u,%u", &th, &tr) == 2) {
            cc.snapshot_threshold = th;
            cc.snapshot_trailing = tr;
        }
    }
#endif
    r = cluster_start(&cn->c, &cc, err, errlen);
    if (r < 0) {
        cluster_node_free(cn);
        return r;
    }
    /* cn->raft, fsm, self and the forwarding's start: cn_on_ready */
#ifndef NDEBUG
    /* Tests: a start slow after the cluster's thread began (the other
     * members' frames and the entries of the catching up come in). */
    const char *hold = getenv("STARLING_TEST_START_HOLD_MS");
    if (hold && atoi(hold) > 0) {
        struct timespec nap = {atoi(hold) / 1000, (long)(atoi(hold) % 1000) * 1000000L};
        nanosleep(&nap, NULL);
    }
    /* Tests of the divergence detector (tests/cluster/test_divergence.py). */
    if (getenv("STARLING_TEST_CORRUPT_TABLES") && fsm_test_corrupt(cn->fsm) == 0)
        log_warn("cluster: STARLING_TEST_CORRUPT_TABLES: a record written outside Raft");
#endif
    pthread_mutex_lock(&cn->mu);
    peers_refresh(cn);
    pthread_mutex_unlock(&cn->mu);
    if (pthread_create(&cn->thread, NULL, cn_thread, cn) != 0) {
        cluster_stop(cn->c);
        cn->c = NULL;
        cluster_node_free(cn);
        snprintf(err, errlen, "cluster: cannot start a thread");
        return -EAGAIN;
    }
    cn->thread_started = true;
    if (cn_admin_start(cn) < 0) {
        cluster_node_stop(cn);
        cluster_node_free(cn);
        snprintf(err, errlen, "cluster: cannot start the admin query thread");
        return -EAGAIN;
    }
    b->tables = &cluster_tables_ops;
    b->tables_ud = cn;

    /* The index is still empty (nothing is loaded yet): make it report to
     * the cluster. */
    sub_index_free(b->index);
    b->route_ops = &cluster_route_ops;
    b->route_ud = cn;
    b->index = sub_index_new(b->route_ops, b->route_ud);
    b->registry_ops = &cluster_registry_ops;
    b->registry_ud = cn;
    if (!b->index) {
        cluster_node_stop(cn);
        cluster_node_free(cn);
        return -ENOMEM;
    }
    log_info("cluster: node %s (%016llx) on %s, raft %u, channel %u, %d seed(s)", cfg->node_name,
             (unsigned long long)cn->self, cfg->cluster_address, cfg->raft_port, cfg->cluster_port,
             n);
    *out = cn;
    return 0;
}

int cluster_node_attach_store(struct cluster_node *cn, char *err, size_t errlen)
{
    if (!cn)
        return 0;
    uint64_t base = 0;
    int r = cluster_fwd_attach_store(cn->fwd, &base, cn_handed_loaded, cn, err, errlen);
    if (r < 0)
        return r;
    if ((r = cn_handed_load(cn)) < 0) {
        snprintf(err, errlen, "cluster: cannot load the QoS 2 ids of ended copies: %s",
                 store_strerror(r));
        return r;
    }
    /* retained messages: (origin, seq) above every one of the last run */
    if (base)
        atomic_store(&cn->pub_seq, base);
    /* Loaded once the outbox is too: the first route batch may go, and
     * requests for stored sessions are answered (request_answer), the
     * start-up pass runs. Before, this came first: a request answered while
     * the outbox still loaded sent the session's state at most once, not
     * through the outbox (cluster_fwd_send_frame), and its messages' rows
     * stayed in the store; a session of the id stored here again later (the
     * client back on this node) loaded them after the next restart and sent
     * them on again, QoS 2 messages delivered twice
     * (test_killed_nodes_subscribers_resumed_elsewhere_repeatedly, 28 and
     * 319 duplicates). */
    pthread_mutex_lock(&cn->mu);
    cn->loaded = true;
    cn_kick(cn);
    pthread_mutex_unlock(&cn->mu);
    log_debug("cluster: the store is loaded: requests for stored sessions are answered");
    return 0;
}

void cluster_node_stop(struct cluster_node *cn)
{
    if (!cn || atomic_exchange(&cn->stopped, true))
        return;
    if (cn->thread_started) {
        pthread_mutex_lock(&cn->mu);
        cn->quit = true;
        cn_kick(cn);
        pthread_mutex_unlock(&cn->mu);
        pthread_join(cn->thread, NULL);
        cn->thread_started = false;
    }
    cn_admin_stop(cn);
    if (atomic_load(&cn->rebuilding))
        pthread_join(cn->rebuild_thread, NULL);
    if (cn->c) {
        cluster_fwd_stop(cn->fwd); /* its commit hooks send no more */
        cluster_stop(cn->c);
        cn->c = NULL;
        cn_registry_drain(cn);
        cn_session_drain(cn);
    }
    /* publishers waiting for a retained message's commit are answered (the
     * workers' inboxes are closed by now: the connections close without) */
    for (struct ret_retry *r = cn->ret_retry; r; r = r->next)
        if (r->gate) {
            ack_gate_open(r->gate);
            r->gate = NULL;
        }
}

void cluster_node_free(struct cluster_node *cn)
{
    if (!cn)
        return;
    cluster_node_stop(cn);
    cn_admin_free(cn);
    cluster_fwd_free(cn->fwd);
    cmd_batch_free(cn->pending);
    free(cn->inflight);
    while (cn->ret_retry) {
        struct ret_retry *next = cn->ret_retry->next;
        free(cn->ret_retry);
        cn->ret_retry = next;
    }
    ret_own_free(cn);
    cn_handed_free(cn);
    pthread_mutex_destroy(&cn->ret_mu);
    pthread_mutex_destroy(&cn->mu);
    pthread_mutex_destroy(&cn->reg_mu);
    pthread_cond_destroy(&cn->cv);
    free(cn);
}
