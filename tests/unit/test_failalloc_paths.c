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
 *     would silently not get an acknowledged message).
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

#include "msg.h"
#include "retain.h"
#include "sub_index.h"

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
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
