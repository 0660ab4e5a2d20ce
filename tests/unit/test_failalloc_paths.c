/*
 * test_failalloc_paths.c - walks that lose part of their result to a failed
 * allocation say so (issue 8 item 5: never acknowledge what was not done).
 *
 * ctest runs this program with tests/failalloc's shim preloaded
 * (LD_PRELOAD, see CMakeLists.txt); the tests make the k-th allocation
 * from a point fail (failalloc_fail_nth), for k = 1, 2, ... until a call
 * makes fewer than k allocations, and check that each call returns its
 * whole result or -ENOMEM, never part of it:
 *   - retain_match of a wildcard filter over more retained messages than
 *     its walk's first stack holds (the SUBSCRIBE path: a subscriber would
 *     silently miss retained messages);
 *   - sub_index_match_groups of a topic deeper than the match stack, with
 *     '+' and exact branches at every level (the PUBLISH path: a subscriber
 *     would silently not get an acknowledged message);
 *   - fsm_apply of a committed Raft entry: applied whole, or -ENOMEM with
 *     the tables as before it and the state machine not broken (applied
 *     again later; before, the node stopped for good), and the route
 *     matcher whole after fsm_repair (an allocation failed while it
 *     followed the entry: a publish would miss a node's subscribers).
 * Without the shim the program exits 77 (skipped).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "fsm.h"
#include "msg.h"
#include "retain.h"
#include "routes.h"
#include "sub_index.h"
#include "test_util.h"

static void (*fail_nth)(unsigned long k);
static void (*fail_off)(void);

/* The number of failures so far (the shim's counter). */
static unsigned long *g_failures;

static unsigned long failures(void)
{
    return __atomic_load_n(g_failures, __ATOMIC_SEQ_CST);
}

/* ---- retain_match ---- */

#define N_RETAINED 100

static void count_cb(void *ud, struct msg *m)
{
    (void)m;
    (*(int *)ud)++; /* no allocation here: it would be failed too */
}

static void test_retain_match_whole_or_enomem(void)
{
    struct retain_store *rs = retain_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(rs);
    for (int i = 0; i < N_RETAINED; i++) {
        char topic[32];
        int n = snprintf(topic, sizeof(topic), "fa/r/%d", i);
        struct msg *m = msg_new(topic, (uint16_t)n, "x", 1, NULL, 0, 1, true, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        CU_ASSERT_EQUAL(retain_set(rs, m), 0);
        msg_unref(m);
    }
    static const char *const filters[] = {"fa/r/#", "fa/+/+", "#", "+/r/#"};
    for (size_t f = 0; f < sizeof(filters) / sizeof(filters[0]); f++) {
        size_t flen = strlen(filters[f]);
        int refused = 0;
        unsigned long k;
        for (k = 1; k < 100; k++) {
            int calls = 0;
            unsigned long before = failures();
            fail_nth(k);
            int r = retain_match(rs, filters[f], flen, 0, count_cb, &calls);
            fail_off();
            bool failed = failures() > before;
            if (r < 0) {
                CU_ASSERT_EQUAL(r, -ENOMEM);
                CU_ASSERT(failed);
                refused++;
            } else {
                /* complete: every message, reported and counted */
                CU_ASSERT_EQUAL(r, N_RETAINED);
                CU_ASSERT_EQUAL(calls, N_RETAINED);
            }
            if (!failed)
                break; /* fewer than k allocations: each was failed once */
        }
        CU_ASSERT(k < 100);
        CU_ASSERT(refused > 0); /* the walk allocates: the sweep reached it */
    }
    retain_free(rs);
}

/* ---- sub_index_match_groups ---- */

/* Deeper than the match's first stack (SUB_WALK_STACK, 64 entries). */
#define DEPTH 100

static void match_cb(void *ud, void *subscriber, uint8_t options, uint32_t sub_id, bool shared)
{
    (void)subscriber;
    (void)options;
    (void)sub_id;
    (void)shared;
    (*(int *)ud)++;
}

static void test_sub_index_match_whole_or_enomem(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(idx);
    /* topic a/a/.../a; filters +/.../+/a/.../a, one for every number of
     * leading '+' levels: along the all-'+' path every node has an 'a'
     * child beside its '+' one, so the walk's stack holds one pending
     * branch per level */
    char topic[2 * DEPTH], filter[2 * DEPTH];
    for (int i = 0; i < DEPTH; i++) {
        topic[2 * i] = 'a';
        topic[2 * i + 1] = '/';
    }
    size_t tlen = 2 * DEPTH - 1;
    static int subscriber[DEPTH + 1];
    int n_subs = 0;
    for (int split = 0; split <= DEPTH; split++) {
        /* the first `split` levels '+', the rest 'a' */
        for (int i = 0; i < DEPTH; i++) {
            filter[2 * i] = i < split ? '+' : 'a';
            filter[2 * i + 1] = '/';
        }
        CU_ASSERT_EQUAL_FATAL(sub_index_add(idx, filter, tlen, &subscriber[n_subs], 1, 0), 0);
        n_subs++;
    }
    int calls = 0;
    CU_ASSERT_EQUAL(
        sub_index_match_groups(idx, topic, tlen, NULL, NULL, NULL, match_cb, &calls, NULL), n_subs);
    CU_ASSERT_EQUAL(calls, n_subs);
    int refused = 0;
    unsigned long k;
    for (k = 1; k < 100; k++) {
        calls = 0;
        unsigned long before = failures();
        fail_nth(k);
        int r = sub_index_match_groups(idx, topic, tlen, NULL, NULL, NULL, match_cb, &calls, NULL);
        fail_off();
        bool failed = failures() > before;
        if (r < 0) {
            CU_ASSERT_EQUAL(r, -ENOMEM);
            CU_ASSERT(failed);
            refused++;
        } else {
            CU_ASSERT_EQUAL(r, n_subs);
            CU_ASSERT_EQUAL(calls, n_subs);
        }
        if (!failed)
            break;
    }
    CU_ASSERT(k < 100);
    CU_ASSERT(refused > 0);
    sub_index_free(idx);
}

/* ---- fsm_apply ---- */

#define S(x) (x), strlen(x)

static struct fsm *fa_fsm_open(char **dir)
{
    const char *t = getenv("TMPDIR");
    CU_ASSERT_FATAL(asprintf(dir, "%s/test_failalloc_fsm.XXXXXX", t && *t ? t : "/tmp") > 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(*dir));
    struct fsm_options o = {.dir = *dir};
    struct fsm *f = NULL;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(fsm_open(&f, &o, err, sizeof err), 0);
    return f;
}

/* The entry before the one swept (applied with nothing failing): two
 * persistent sessions with their records and routes. */
static void fsm_setup_entry(struct cmd_batch *b)
{
    struct cmd_session_sub sub = {"fa/s/#", 6, 1, 0};
    CU_ASSERT_EQUAL(cmd_session_claim(b, S("fa-c"), 2, 1), 0);
    CU_ASSERT_EQUAL(cmd_session_record(b, S("fa-c"), 2, 1, 600, 5, NULL, &sub, 1, 7, 0, 0), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("fa/s/#"), 2), 0);
    CU_ASSERT_EQUAL(cmd_session_claim(b, S("fa-d"), 3, 1), 0);
    CU_ASSERT_EQUAL(cmd_session_record(b, S("fa-d"), 3, 1, 600, 5, NULL, &sub, 1, 9, 0, 0), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("fa/s/#"), 3), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("fa/gone"), 3), 0);
}

/* The entry swept: route changes, a record rewritten, a NodeDown that
 * keeps what a record needs, a release, a retained message, a member. */
static void fsm_swept_entry(struct cmd_batch *b)
{
    struct cmd_session_sub subs[2] = {{"fa/s/#", 6, 1, 0}, {"fa/t", 4, 2, 0}};
    CU_ASSERT_EQUAL(cmd_route_add(b, S("fa/+/x"), 2), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("fa/#"), 3), 0);
    CU_ASSERT_EQUAL(cmd_session_record(b, S("fa-c"), 2, 1, 600, 5, NULL, subs, 2, 11, 0, 0), 0);
    CU_ASSERT_EQUAL(cmd_node_down(b, 3), 0);
    CU_ASSERT_EQUAL(cmd_session_release(b, S("fa-d"), 3, 1, 0), 0);
    CU_ASSERT_EQUAL(cmd_retained_set(b, S("fa/r"), 1, "v", 1, NULL, 0, 0, 7, 1), 0);
    CU_ASSERT_EQUAL(cmd_member(b, 2, "n2", "127.0.0.12", 7946, 7947, NULL, CMD_ROLE_VOTER, 0), 0);
}

/* A fresh state machine with the setup entry applied (index 1). */
static struct fsm *fa_fsm_ready(char **dir, struct cmd_batch *setup)
{
    struct fsm *f = fa_fsm_open(dir);
    size_t len;
    const void *e = cmd_batch_data(setup, &len);
    struct fsm_batch_result r;
    CU_ASSERT_EQUAL_FATAL(fsm_apply(f, 1, e, len, &r), 0);
    return f;
}

static void fa_fsm_done(struct fsm *f, char *dir)
{
    fsm_close(f);
    test_rm_tree(dir);
    free(dir);
}

/* What a publish finds in f's matcher for a few topics, as one number. */
static uint64_t fa_routes_seen(struct fsm *f)
{
    static const char *const topics[] = {"fa/a/x", "fa/s/q", "fa/gone", "fa/t"};
    uint64_t seen = routes_count(fsm_routes(f));
    for (size_t t = 0; t < sizeof(topics) / sizeof(topics[0]); t++) {
        uint64_t n[8] = {0};
        int k = routes_nodes(fsm_routes(f), topics[t], strlen(topics[t]), 0, n, 8);
        seen = seen * 31 + (uint64_t)k;
        for (int i = 0; i < k && i < 8; i++)
            seen = seen * 31 + n[i] * n[i];
    }
    return seen;
}

static void test_fsm_apply_whole_or_enomem(void)
{
    struct cmd_batch *setup = cmd_batch_new(), *b = cmd_batch_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(setup);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    fsm_setup_entry(setup);
    fsm_swept_entry(b);
    size_t len;
    const void *entry = cmd_batch_data(b, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(entry);
    /* the reference: applied with nothing failing */
    char *dir;
    struct fsm *f = fa_fsm_ready(&dir, setup);
    uint64_t sum0 = fsm_checksum(f), seen0 = fa_routes_seen(f);
    struct fsm_batch_result ref, res;
    CU_ASSERT_EQUAL_FATAL(fsm_apply(f, 2, entry, len, &ref), 0);
    CU_ASSERT_EQUAL(ref.n, 7);
    uint64_t sum = fsm_checksum(f), seen = fa_routes_seen(f);
    CU_ASSERT_NOT_EQUAL(sum, sum0);
    CU_ASSERT_NOT_EQUAL(seen, seen0);
    fa_fsm_done(f, dir);
    int refused = 0;
    unsigned long k;
    for (k = 1; k < 400; k++) {
        f = fa_fsm_ready(&dir, setup);
        unsigned long before = failures();
        fail_nth(k);
        int rc = fsm_apply(f, 2, entry, len, &res);
        fail_off();
        bool failed = failures() > before;
        if (rc == -ENOMEM) {
            /* nothing of it: applied again later (cluster/fsm_raft.c) */
            CU_ASSERT(failed);
            CU_ASSERT_FALSE(fsm_broken(f));
            CU_ASSERT_EQUAL(fsm_applied(f), 1);
            CU_ASSERT_EQUAL(fsm_checksum(f), sum0);
            CU_ASSERT_EQUAL(fa_routes_seen(f), seen0);
            refused++;
            rc = fsm_apply(f, 2, entry, len, &res);
        }
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(fsm_repair(f), 0);
        CU_ASSERT_FALSE(res.skipped);
        CU_ASSERT_EQUAL(res.n, ref.n);
        CU_ASSERT_EQUAL(memcmp(res.results, ref.results, ref.n), 0);
        CU_ASSERT_EQUAL(fsm_applied(f), 2);
        CU_ASSERT_EQUAL(fsm_checksum(f), sum);
        CU_ASSERT_EQUAL(fa_routes_seen(f), seen);
        fa_fsm_done(f, dir);
        if (!failed)
            break; /* the apply made fewer than k allocations: each failed once */
    }
    CU_ASSERT(k < 400);
    CU_ASSERT(refused > 0);
    cmd_batch_free(setup);
    cmd_batch_free(b);
}

int main(void)
{
    fail_nth = (void (*)(unsigned long))dlsym(RTLD_DEFAULT, "failalloc_fail_nth");
    fail_off = (void (*)(void))dlsym(RTLD_DEFAULT, "failalloc_off");
    g_failures = dlsym(RTLD_DEFAULT, "failalloc_failures");
    if (!fail_nth || !fail_off || !g_failures) {
        fprintf(stderr, "test_failalloc_paths: libfailalloc.so is not preloaded: skipped\n");
        return 77;
    }
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("failalloc_paths", NULL, NULL);
    CU_add_test(s, "retain_match: every message or -ENOMEM", test_retain_match_whole_or_enomem);
    CU_add_test(s, "sub_index_match_groups: every subscriber or -ENOMEM",
                test_sub_index_match_whole_or_enomem);
    CU_add_test(s, "fsm_apply: the whole entry, or -ENOMEM with nothing of it",
                test_fsm_apply_whole_or_enomem);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
