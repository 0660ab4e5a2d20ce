/*
 * test_raft_node.c - three real Raft nodes (cluster/raft_node.h: own thread,
 * raft_uv on disk, the bound TCP transport) in one process on 127.0.0.11,
 * .12 and .13 with free ports, started in the order 3, 1, 2 with the same
 * seed list: they form one cluster, commands proposed on each node (and
 * re-sent to the leader the node names, as the forwarding channel will do)
 * are applied identically everywhere, and no handshake is refused (every
 * outgoing connection left from its node's own address). A fourth node
 * with another cluster_secret is refused.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

#include "cmd.h"
#include "fsm.h"
#include "raft_node.h"

#define S(x) (x), strlen(x)
#define N 3

struct node {
    char dir[300];
    char address[64];
    struct fsm *fsm;
    struct raft_node *raft;
    _Atomic int stops; /* calls of the on_stop hook */
};

static struct node nodes[N + 1];
static char base[256];

/* A new directory <TMPDIR or /tmp>/<name>.XXXXXX in buf (removed by the
 * test). */
static char *make_tmpdir(char *buf, size_t len, const char *name)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, len, "%s/%s.XXXXXX", t && *t ? t : "/tmp", name);
    return mkdtemp(buf);
}

static const char *seeds[N];
static unsigned snapshot_threshold = 8; /* entries between snapshots */

static void count_stop(void *ud)
{
    struct node *nd = ud;
    nd->stops++;
}

static int start_node(struct node *nd, const char *secret, const char *const *sd, unsigned ns)
{
    char fdir[400], err[512];
    snprintf(fdir, sizeof fdir, "%s/fsm", nd->dir);
    struct fsm_options fo = {.dir = fdir};
    int rc = fsm_open(&nd->fsm, &fo, err, sizeof err);
    if (rc)
        return rc;
    char rdir[400];
    snprintf(rdir, sizeof rdir, "%s/raft", nd->dir);
    struct raft_node_config c = {.dir = rdir,
                                 .fsm = nd->fsm,
                                 .address = nd->address,
                                 .seeds = sd,
                                 .n_seeds = ns,
                                 .cluster_name = "test",
                                 .cluster_secret = secret,
                                 .election_timeout_ms = 300,
                                 .heartbeat_ms = 50,
                                 .snapshot_threshold = snapshot_threshold,
                                 .max_voters = 3,
                                 .on_stop = count_stop,
                                 .hook_ud = nd};
    rc = raft_node_start(&nd->raft, &c, err, sizeof err);
    if (rc)
        fprintf(stderr, "raft_node_start: %s\n", err);
    return rc;
}

static void stop_node(struct node *nd)
{
    raft_node_stop(nd->raft);
    fsm_close(nd->fsm);
    nd->raft = NULL;
    nd->fsm = NULL;
}

/* The outcome of one proposal. */
struct outcome {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    uint64_t leader;
    uint8_t result0;
};

static void done_cb(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    struct outcome *o = ud;
    pthread_mutex_lock(&o->mu);
    o->done = true;
    o->status = status;
    o->leader = leader;
    o->result0 = res && res->n ? res->results[0] : 0xff;
    pthread_cond_signal(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

static int propose_wait(struct node *nd, struct cmd_batch *b, struct outcome *o)
{
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->done = false;
    size_t len;
    const void *data = cmd_batch_data(b, &len);
    int rc = raft_node_propose(nd->raft, data, len, done_cb, o);
    if (rc)
        return rc;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&o->mu);
    while (!o->done && rc == 0)
        rc = pthread_cond_timedwait(&o->cv, &o->mu, &until);
    pthread_mutex_unlock(&o->mu);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    return o->done ? o->status : -ETIMEDOUT;
}

/* Add (addr) or remove (id) a server at node nd and wait for the outcome. */
static int change_wait(struct node *nd, uint64_t id, const char *addr, struct outcome *o)
{
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->done = false;
    int rc = addr ? raft_node_add(nd->raft, addr, done_cb, o)
                  : raft_node_remove(nd->raft, id, done_cb, o);
    if (rc)
        return rc;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 15;
    pthread_mutex_lock(&o->mu);
    while (!o->done && rc == 0)
        rc = pthread_cond_timedwait(&o->cv, &o->mu, &until);
    pthread_mutex_unlock(&o->mu);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    return o->done ? o->status : -ETIMEDOUT;
}

/* The role of server id in nd's configuration, -1 when absent. */
static int role_of(struct node *nd, uint64_t id)
{
    struct raft_node_member m[16];
    unsigned k = raft_node_members(nd->raft, m, 16);
    for (unsigned i = 0; i < k; i++)
        if (m[i].id == id)
            return (int)m[i].role;
    return -1;
}

static int count_role(struct node *nd, int role)
{
    struct raft_node_member m[16];
    unsigned k = raft_node_members(nd->raft, m, 16);
    int n = 0;
    for (unsigned i = 0; i < k; i++)
        n += (int)m[i].role == role;
    return n;
}

static bool any_ready(void)
{
    for (int i = 0; i < N; i++)
        if (raft_node_ready(nodes[i].raft))
            return true;
    return false;
}

/* The node that is the ready leader, or NULL. */
static struct node *ready_leader(void)
{
    for (int i = 0; i < N; i++)
        if (nodes[i].raft && raft_node_ready(nodes[i].raft))
            return &nodes[i];
    return NULL;
}

/* Propose b as the broker's nodes do: a node that is not the leader hands
 * it to the ready leader, and a proposal cut short by a change of leader
 * (-ECONNABORTED: it may have committed all the same, the commands are
 * idempotent) is made again there, at most 20 times. Under a loaded
 * machine the 300 ms election timeout of this test does elect new leaders
 * now and then. *again says whether an earlier attempt may have
 * committed: the last one then finds its commands applied (FSM_NOOP). */
static int propose_committed(struct node *nd, struct cmd_batch *b, struct outcome *o, bool *again)
{
    *again = false;
    int rc = -ENOTCONN;
    for (int attempt = 0; attempt < 20; attempt++) {
        rc = propose_wait(nd, b, o);
        if (rc != -ENOTCONN && rc != -EAGAIN && rc != -ECONNABORTED)
            return rc;
        *again |= rc == -ECONNABORTED;
        struct node *l = NULL;
        if (!WAIT_UNTIL((l = ready_leader()) != NULL, 10000))
            return rc;
        nd = l;
    }
    return rc;
}

/* Every node applied the same index, and it is wholly in effect there (the
 * route matcher is updated after the tables' commit: fsm.h, fsm_visible). */
static bool all_applied_equal(void)
{
    uint64_t a = fsm_applied(nodes[0].fsm);
    for (int i = 0; i < N; i++)
        if (fsm_applied(nodes[i].fsm) != a || fsm_visible(nodes[i].fsm) != a)
            return false;
    return a > 0;
}

/* Nodes 1..N on 127.0.0.11.. with a free port each, their directories under
 * base, and the seed list of all of them. */
static bool name_nodes(void)
{
    for (int i = 0; i < N; i++) {
        char ip[16];
        snprintf(ip, sizeof ip, "127.0.0.%d", 11 + i);
        int port = test_free_port(ip);
        if (port <= 0)
            return false;
        snprintf(nodes[i].address, sizeof nodes[i].address, "%s:%d", ip, port);
        snprintf(nodes[i].dir, sizeof nodes[i].dir, "%s/n%d", base, i + 1);
        seeds[i] = nodes[i].address;
    }
    return true;
}

/* Whether all N nodes name the same leader within ms. */
static bool one_leader(int ms)
{
    return WAIT_UNTIL(raft_node_leader(nodes[0].raft) != 0 &&
                          raft_node_leader(nodes[0].raft) == raft_node_leader(nodes[1].raft) &&
                          raft_node_leader(nodes[1].raft) == raft_node_leader(nodes[2].raft),
                      ms);
}

static void test_three_nodes(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(make_tmpdir(base, sizeof base, "test_raft_node"));
    CU_ASSERT_TRUE_FATAL(name_nodes());
    /* Start order 3, 1, 2. */
    int order[N] = {2, 0, 1};
    for (int k = 0; k < N; k++)
        CU_ASSERT_EQUAL_FATAL(start_node(&nodes[order[k]], "s3cret", seeds, N), 0);
    CU_ASSERT_TRUE_FATAL(WAIT_UNTIL(any_ready(), 15000));
    /* One cluster: all three name the same leader. */
    CU_ASSERT_TRUE(one_leader(5000));

    struct cmd_batch *b = cmd_batch_new();
    char s[64];
    int committed = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(s, sizeof s, "n%d/r%d/#", i + 1, round);
            cmd_route_add(b, S(s), raft_node_self(nodes[i].raft));
            snprintf(s, sizeof s, "client-%d", round);
            cmd_session_claim(b, S(s), raft_node_self(nodes[i].raft), (uint64_t)(i + 1));
            struct outcome o;
            bool again;
            int rc = propose_committed(&nodes[i], b, &o, &again);
            CU_ASSERT_EQUAL(rc, 0);
            CU_ASSERT(o.result0 == FSM_OK || (again && o.result0 == FSM_NOOP));
            committed += rc == 0;
            cmd_batch_reset(b);
        }
    }
    CU_ASSERT_EQUAL(committed, 15);
    CU_ASSERT_TRUE(WAIT_UNTIL(all_applied_equal(), 10000));
    uint64_t sum = fsm_checksum(nodes[0].fsm);
    CU_ASSERT_NOT_EQUAL(sum, 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(fsm_checksum(nodes[i].fsm), sum);
        CU_ASSERT_EQUAL(routes_count(fsm_routes(nodes[i].fsm)), 15);
        uint64_t owner, epoch;
        /* Each round's client was claimed by nodes 1, 2, 3 in turn with
         * epochs 1, 2, 3: node 3's claim won everywhere. */
        CU_ASSERT_EQUAL(fsm_registry_get(nodes[i].fsm, S("client-4"), &owner, &epoch), 0);
        CU_ASSERT_EQUAL(owner, raft_node_self(nodes[2].raft));
        CU_ASSERT_EQUAL(epoch, 3);
        CU_ASSERT_EQUAL(raft_node_refused(nodes[i].raft), 0);
    }

    /* The divergence detector: equal checksums at the same index agree; a
     * different one marks the node diverged. */
    uint64_t idx, cks;
    raft_node_checkpoint(nodes[0].raft, &idx, &cks);
    CU_ASSERT_EQUAL(cks, sum);
    for (int i = 1; i < N; i++)
        CU_ASSERT_EQUAL(raft_node_divergence_check(nodes[i].raft, idx, cks, true), 0);
    CU_ASSERT_EQUAL(raft_node_divergence_check(nodes[1].raft, idx + 1000, cks, true), -ENOENT);
    CU_ASSERT_FALSE(raft_node_diverged(nodes[1].raft));
    CU_ASSERT_EQUAL(raft_node_divergence_check(nodes[1].raft, idx, cks ^ 1, false), 1);
    CU_ASSERT_FALSE(raft_node_diverged(nodes[1].raft)); /* not the leader's: counted only */
    CU_ASSERT_EQUAL(raft_node_divergence_check(nodes[1].raft, idx, cks ^ 1, true), 1);
    CU_ASSERT_TRUE(raft_node_diverged(nodes[1].raft));
    struct raft_node_stats st;
    raft_node_stats(nodes[1].raft, &st);
    CU_ASSERT_EQUAL(st.divergences, 2); /* counted with and without mark */
    CU_ASSERT_EQUAL(st.applied, 15);
    CU_ASSERT_EQUAL(st.apply_errors, 0);
    raft_node_stats(nodes[0].raft, &st);
    CU_ASSERT_TRUE(st.snapshots > 0); /* 15 commands + barrier, threshold 8 */

    /* The whole cluster restarts (in another order) with its directories:
     * the same cluster, the same tables, and it goes on. */
    for (int i = 0; i < N; i++)
        stop_node(&nodes[i]);
    int order2[N] = {1, 2, 0};
    for (int k = 0; k < N; k++)
        CU_ASSERT_EQUAL_FATAL(start_node(&nodes[order2[k]], "s3cret", seeds, N), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(fsm_checksum(nodes[i].fsm), sum);
        /* libraft loaded its last snapshot, which the tables already held:
         * not restored again; the log after it was replayed as skips. */
        raft_node_stats(nodes[i].raft, &st);
        CU_ASSERT_EQUAL(st.restores, 0);
        CU_ASSERT_EQUAL(st.restores_skipped, 1);
        CU_ASSERT_EQUAL(st.applied, 0);
        CU_ASSERT_FALSE(raft_node_diverged(nodes[i].raft));
    }
    CU_ASSERT_TRUE_FATAL(WAIT_UNTIL(any_ready(), 15000));
    struct node *l = NULL;
    struct outcome o;
    for (int i = 0; i < N; i++)
        if (raft_node_ready(nodes[i].raft))
            l = &nodes[i];
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    cmd_route_add(b, S("after/restart"), raft_node_self(l->raft));
    bool again;
    CU_ASSERT_EQUAL(propose_committed(l, b, &o, &again), 0);
    CU_ASSERT(o.result0 == FSM_OK || (again && o.result0 == FSM_NOOP));
    CU_ASSERT_TRUE(WAIT_UNTIL(all_applied_equal() && routes_count(fsm_routes(nodes[0].fsm)) == 16 &&
                                  routes_count(fsm_routes(nodes[1].fsm)) == 16 &&
                                  routes_count(fsm_routes(nodes[2].fsm)) == 16,
                              10000));
    sum = fsm_checksum(nodes[0].fsm);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(fsm_checksum(nodes[i].fsm), sum);
        uint64_t c = 0;
        CU_ASSERT_EQUAL(fsm_checksum_verify(nodes[i].fsm, &c), 0);
        CU_ASSERT_EQUAL(c, sum);
    }
    /* A new node (not a seed) joins: the leader adds it as a spare and,
     * with max_voters 3 already reached, makes it a standby; it catches up
     * and applies the same. */
    struct node *x = &nodes[N];
    int port = test_free_port("127.0.0.14");
    CU_ASSERT_TRUE_FATAL(port > 0);
    snprintf(x->address, sizeof x->address, "127.0.0.14:%d", port);
    snprintf(x->dir, sizeof x->dir, "%s/n4", base);
    CU_ASSERT_EQUAL_FATAL(start_node(x, "s3cret", seeds, N), 0);
    cmd_route_add(b, S("x"), 1);
    CU_ASSERT_EQUAL(propose_wait(x, b, &o), -ENOTCONN); /* not in any cluster yet */
    cmd_batch_reset(b);
    CU_ASSERT_EQUAL_FATAL(change_wait(l, 0, x->address, &o), 0);
    CU_ASSERT_TRUE(
        WAIT_UNTIL(fsm_visible(x->fsm) == fsm_applied(l->fsm) && fsm_visible(x->fsm), 10000));
    CU_ASSERT_EQUAL(fsm_checksum(x->fsm), fsm_checksum(l->fsm));
    CU_ASSERT_EQUAL(routes_count(fsm_routes(x->fsm)), 16);
    CU_ASSERT_EQUAL(raft_node_leader(x->raft), raft_node_self(l->raft));
    CU_ASSERT_TRUE(WAIT_UNTIL(role_of(l, raft_node_self(x->raft)) == RAFT_NODE_STANDBY, 2000));
    CU_ASSERT_EQUAL(count_role(l, RAFT_NODE_VOTER), 3);
    /* Only the leader changes the configuration. */
    struct node *f = NULL;
    for (int i = 0; i < N; i++)
        if (&nodes[i] != l)
            f = &nodes[i];
    CU_ASSERT_EQUAL(change_wait(f, raft_node_self(x->raft), NULL, &o), -ENOTCONN);
    /* An operator forgets a follower: it leaves the configuration and the
     * standby is promoted to voter. */
    CU_ASSERT_EQUAL(change_wait(l, raft_node_self(f->raft), NULL, &o), 0);
    CU_ASSERT_TRUE(WAIT_UNTIL(role_of(l, raft_node_self(f->raft)) == -1 &&
                                  role_of(l, raft_node_self(x->raft)) == RAFT_NODE_VOTER,
                              5000));
    CU_ASSERT_EQUAL(count_role(l, RAFT_NODE_VOTER), 3);
    CU_ASSERT_EQUAL(change_wait(l, 12345, NULL, &o), -ENOENT);
    stop_node(f);
    /* The cluster goes on with the promoted node as a voter. */
    cmd_route_add(b, S("after/promotion"), 1);
    CU_ASSERT_EQUAL(propose_committed(l, b, &o, &again), 0);
    CU_ASSERT_TRUE(WAIT_UNTIL(fsm_visible(x->fsm) == fsm_applied(l->fsm), 10000));
    CU_ASSERT_EQUAL(fsm_checksum(x->fsm), fsm_checksum(l->fsm));
    CU_ASSERT_EQUAL(routes_count(fsm_routes(x->fsm)), 17);
    stop_node(x);
    cmd_batch_free(b);
    for (int i = 0; i < N; i++)
        if (nodes[i].raft)
            stop_node(&nodes[i]);
    test_rm_tree(base);
}

/* Two seeds whose cluster_secret differ: each refuses the other's
 * connections, so the two-voter configuration never elects a leader. */
static void test_wrong_secret_refused(void)
{
    char dir[256];
    CU_ASSERT_PTR_NOT_NULL_FATAL(make_tmpdir(dir, sizeof dir, "test_raft_node"));
    struct node two[2];
    const char *sd[2];
    memset(two, 0, sizeof two);
    for (int i = 0; i < 2; i++) {
        char ip[16];
        snprintf(ip, sizeof ip, "127.0.0.%d", 21 + i);
        int port = test_free_port(ip);
        CU_ASSERT_TRUE_FATAL(port > 0);
        snprintf(two[i].address, sizeof two[i].address, "%s:%d", ip, port);
        snprintf(two[i].dir, sizeof two[i].dir, "%s/n%d", dir, i + 1);
        sd[i] = two[i].address;
    }
    CU_ASSERT_EQUAL_FATAL(start_node(&two[0], "one secret", sd, 2), 0);
    CU_ASSERT_EQUAL_FATAL(start_node(&two[1], "another secret", sd, 2), 0);
    CU_ASSERT_TRUE(WAIT_UNTIL(
        raft_node_refused(two[0].raft) > 0 && raft_node_refused(two[1].raft) > 0, 10000));
    CU_ASSERT_EQUAL(raft_node_leader(two[0].raft), 0);
    CU_ASSERT_EQUAL(raft_node_leader(two[1].raft), 0);
    CU_ASSERT_FALSE(raft_node_ready(two[0].raft) || raft_node_ready(two[1].raft));
    for (int i = 0; i < 2; i++)
        stop_node(&two[i]);
    test_rm_tree(dir);
}

/* Proposals of stop_under_proposals. */
static _Atomic int burst_done, burst_ok, burst_canceled, burst_other;

static void burst_cb(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)ud;
    (void)res;
    (void)leader;
    if (status == 0)
        burst_ok++;
    else if (status == -ECANCELED || status == -ECONNABORTED)
        burst_canceled++;
    else
        burst_other++;
    burst_done++;
}

/* A leader stopped while its proposals are committing: group commit holds
 * the queue behind the entry in flight, and raft_close ends that entry at
 * once, which released the held queue and woke the loop again; the loop
 * then closed Raft a second time (libraft 0.15 crashes on that: seen once
 * as a SIGSEGV in raft_close) and called on_stop twice (the forwarding
 * channel closes its handles there). Every proposal is answered: committed,
 * or cancelled by the stop. */
static void test_stop_under_proposals(void)
{
    char dir[256];
    CU_ASSERT_PTR_NOT_NULL_FATAL(make_tmpdir(dir, sizeof dir, "test_raft_node"));
    for (int round = 0; round < 5; round++) {
        struct node one;
        memset(&one, 0, sizeof one);
        int port = test_free_port("127.0.0.11");
        CU_ASSERT_TRUE_FATAL(port > 0);
        snprintf(one.address, sizeof one.address, "127.0.0.11:%d", port);
        snprintf(one.dir, sizeof one.dir, "%s/r%d", dir, round);
        const char *sd[1] = {one.address};
        CU_ASSERT_EQUAL_FATAL(start_node(&one, "s3cret", sd, 1), 0);
        CU_ASSERT_TRUE_FATAL(WAIT_UNTIL(raft_node_ready(one.raft), 15000));
        burst_done = burst_ok = burst_canceled = burst_other = 0;
        struct cmd_batch *b = cmd_batch_new();
        char s[64];
        int proposed = 0;
        for (int k = 0; k < 2000; k++) {
            snprintf(s, sizeof s, "burst/%d", k);
            cmd_route_add(b, S(s), raft_node_self(one.raft));
            size_t len;
            const void *data = cmd_batch_data(b, &len);
            proposed += raft_node_propose(one.raft, data, len, burst_cb, NULL) == 0;
            cmd_batch_reset(b);
        }
        cmd_batch_free(b);
        /* stop at once, while the burst is committing */
        raft_node_stop(one.raft);
        one.raft = NULL;
        CU_ASSERT_EQUAL(one.stops, 1);
        CU_ASSERT_EQUAL(proposed, 2000);
        CU_ASSERT_EQUAL(burst_done, proposed);
        CU_ASSERT_EQUAL(burst_ok + burst_canceled, proposed);
        CU_ASSERT_EQUAL(burst_other, 0);
        fsm_close(one.fsm);
    }
    test_rm_tree(dir);
}

/* A follower down while the others commit more than a Raft log segment
 * (libraft's open segments are 8 MiB, and its disk writer refuses one batch
 * larger than a segment) comes back and catches up by entries, with no
 * snapshot between them (threshold 4096): 192 retained messages of 64 KiB,
 * 12 MiB. Written to rule out a suspect of docs/cluster.md's disk-full open
 * item (a restarted node that stopped taking entries after an 8.4 MB
 * catch-up): libraft 0.15 does catch such a follower up (also with 25 MiB). */
static void test_follower_catches_up_past_a_segment(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(make_tmpdir(base, sizeof base, "test_raft_node"));
    snapshot_threshold = 4096;
    CU_ASSERT_TRUE_FATAL(name_nodes());
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL_FATAL(start_node(&nodes[i], "s3cret", seeds, N), 0);
    CU_ASSERT_TRUE_FATAL(WAIT_UNTIL(any_ready(), 15000));
    CU_ASSERT_TRUE_FATAL(one_leader(10000));
    struct node *l = ready_leader();
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    struct node *f = l == &nodes[0] ? &nodes[1] : &nodes[0];
    stop_node(f);

    enum { COUNT = 192, SIZE = 64 * 1024 };
    char *payload = malloc(SIZE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    memset(payload, 'p', SIZE);
    struct cmd_batch *b = cmd_batch_new();
    int committed = 0;
    for (int k = 0; k < COUNT; k++) {
        char topic[32];
        snprintf(topic, sizeof topic, "big/%d", k);
        cmd_retained_set(b, S(topic), 1, payload, SIZE, NULL, 0, 0, raft_node_self(l->raft),
                         (uint64_t)k + 1);
        struct outcome o;
        bool again;
        struct node *at = ready_leader();
        committed += propose_committed(at ? at : l, b, &o, &again) == 0;
        cmd_batch_reset(b);
    }
    CU_ASSERT_EQUAL(committed, COUNT);
    free(payload);
    cmd_batch_free(b);

    CU_ASSERT_EQUAL_FATAL(start_node(f, "s3cret", seeds, N), 0);
    CU_ASSERT_TRUE(WAIT_UNTIL(all_applied_equal(), 30000));
    uint64_t sum = fsm_checksum(nodes[0].fsm);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(fsm_checksum(nodes[i].fsm), sum);
    for (int i = 0; i < N; i++)
        stop_node(&nodes[i]);
    snapshot_threshold = 8;
    test_rm_tree(base);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("raft_node", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "3 nodes on 127.0.0.11-13 form one cluster and apply the same",
                test_three_nodes);
    CU_add_test(s, "a peer with another cluster_secret is refused", test_wrong_secret_refused);
    CU_add_test(s, "a leader stopped under 2,000 proposals closes once and answers each",
                test_stop_under_proposals);
    CU_add_test(s, "a follower down while 12 MiB of entries commit catches up",
                test_follower_catches_up_past_a_segment);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
