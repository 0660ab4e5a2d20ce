/*
 * test_msg_seen.c - the identities a moved session got (node/msg_seen.h):
 * each identity once, ranges merged, the bound.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>

#include "msg_seen.h"

static void test_once(void)
{
    struct msg_seen *x = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(msg_seen_add(x, 1, 10), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 1, 10), 1);
    CU_ASSERT_EQUAL(msg_seen_add(x, 2, 10), 0); /* another origin */
    CU_ASSERT_EQUAL(msg_seen_add(x, 2, 10), 1);
    CU_ASSERT_TRUE(msg_seen_has(x, 1, 10));
    CU_ASSERT_FALSE(msg_seen_has(x, 1, 11));
    CU_ASSERT_FALSE(msg_seen_has(x, 3, 10));
    CU_ASSERT_FALSE(msg_seen_full(x));
    msg_seen_free(x);
}

static void test_ranges_merge(void)
{
    struct msg_seen *x = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    /* a dense stream in any order ends as one range per origin */
    for (uint64_t s = 100; s < 200; s += 2)
        CU_ASSERT_EQUAL(msg_seen_add(x, 7, s), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 50);
    for (uint64_t s = 199; s > 100; s -= 2)
        CU_ASSERT_EQUAL(msg_seen_add(x, 7, s), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 1);
    for (uint64_t s = 100; s < 200; s++)
        CU_ASSERT_EQUAL(msg_seen_add(x, 7, s), 1);
    CU_ASSERT_FALSE(msg_seen_has(x, 7, 99));
    CU_ASSERT_FALSE(msg_seen_has(x, 7, 200));
    CU_ASSERT_FALSE(msg_seen_has(x, 6, 150));
    CU_ASSERT_FALSE(msg_seen_has(x, 8, 150));
    /* ranges of two origins next to each other do not merge */
    CU_ASSERT_EQUAL(msg_seen_add(x, 8, 200), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 6, 99), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 3);
    CU_ASSERT_EQUAL(msg_seen_add(x, 7, UINT64_MAX), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 7, UINT64_MAX), 1);
    CU_ASSERT_EQUAL(msg_seen_add(x, 7, 0), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 7, 0), 1);
    msg_seen_free(x);
}

static void test_bound(void)
{
    struct msg_seen *x = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    for (uint64_t i = 0; i < MSG_SEEN_MAX_RANGES; i++)
        CU_ASSERT_EQUAL(msg_seen_add(x, 1, 4 * i), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), MSG_SEEN_MAX_RANGES);
    CU_ASSERT_EQUAL(msg_seen_add(x, 1, 2), -ENOSPC); /* a new range: full */
    CU_ASSERT_TRUE(msg_seen_full(x));
    CU_ASSERT_FALSE(msg_seen_has(x, 1, 2));
    /* what extends a range is still recorded, what was seen still is */
    CU_ASSERT_EQUAL(msg_seen_add(x, 1, 5), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 1, 4), 1);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), MSG_SEEN_MAX_RANGES);
    msg_seen_free(x);
}

static void test_add_range(void)
{
    struct msg_seen *x = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 10, 20), 0);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 30, 40), 0);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 2, 10, 20), 0);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 5, 3), -EINVAL);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 3);
    CU_ASSERT_TRUE(msg_seen_has(x, 1, 10));
    CU_ASSERT_TRUE(msg_seen_has(x, 1, 20));
    CU_ASSERT_FALSE(msg_seen_has(x, 1, 25));
    /* one that touches two merges them */
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 21, 29), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 2);
    CU_ASSERT_TRUE(msg_seen_has(x, 1, 25));
    /* one that covers several and more */
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 50, 60), 0);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 1, 0, 100), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 2);
    uint64_t node, lo, hi;
    msg_seen_range(x, 0, &node, &lo, &hi);
    CU_ASSERT_EQUAL(node, 1);
    CU_ASSERT_EQUAL(lo, 0);
    CU_ASSERT_EQUAL(hi, 100);
    msg_seen_range(x, 1, &node, &lo, &hi);
    CU_ASSERT_EQUAL(node, 2);
    CU_ASSERT_EQUAL(lo, 10);
    CU_ASSERT_EQUAL(hi, 20);
    /* the ranges copied into another set say the same */
    struct msg_seen *y = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(y);
    CU_ASSERT_EQUAL(msg_seen_add(y, 2, 21), 0);
    for (size_t i = 0; i < msg_seen_ranges(x); i++) {
        msg_seen_range(x, i, &node, &lo, &hi);
        CU_ASSERT_EQUAL(msg_seen_add_range(y, node, lo, hi), 0);
    }
    CU_ASSERT_EQUAL(msg_seen_ranges(y), 2);
    CU_ASSERT_EQUAL(msg_seen_add(y, 2, 15), 1);
    CU_ASSERT_EQUAL(msg_seen_add(y, 2, 21), 1);
    CU_ASSERT_EQUAL(msg_seen_add(y, 1, 101), 0);
    CU_ASSERT_EQUAL(msg_seen_ranges(y), 2);
    CU_ASSERT_EQUAL(msg_seen_add_range(y, 3, 0, UINT64_MAX), 0);
    CU_ASSERT_TRUE(msg_seen_has(y, 3, UINT64_MAX));
    msg_seen_free(y);
    msg_seen_free(x);
}

static void test_del(void)
{
    struct msg_seen *x = msg_seen_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(msg_seen_add_range(x, 5, 10, 20), 0);
    CU_ASSERT_EQUAL(msg_seen_add(x, 6, 1), 0);
    CU_ASSERT_EQUAL(msg_seen_del(x, 5, 15), 0); /* split */
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 3);
    CU_ASSERT_FALSE(msg_seen_has(x, 5, 15));
    CU_ASSERT_TRUE(msg_seen_has(x, 5, 14));
    CU_ASSERT_TRUE(msg_seen_has(x, 5, 16));
    CU_ASSERT_EQUAL(msg_seen_del(x, 5, 10), 0); /* an end */
    CU_ASSERT_EQUAL(msg_seen_del(x, 5, 20), 0);
    CU_ASSERT_FALSE(msg_seen_has(x, 5, 10));
    CU_ASSERT_FALSE(msg_seen_has(x, 5, 20));
    CU_ASSERT_TRUE(msg_seen_has(x, 5, 11));
    CU_ASSERT_TRUE(msg_seen_has(x, 5, 19));
    CU_ASSERT_EQUAL(msg_seen_del(x, 5, 99), 0); /* not there */
    CU_ASSERT_EQUAL(msg_seen_del(x, 7, 1), 0);
    CU_ASSERT_EQUAL(msg_seen_del(x, 6, 1), 0); /* a whole range */
    CU_ASSERT_FALSE(msg_seen_has(x, 6, 1));
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 2);
    CU_ASSERT_EQUAL(msg_seen_add(x, 5, 15), 0); /* back: one range again */
    CU_ASSERT_EQUAL(msg_seen_ranges(x), 1);
    CU_ASSERT_FALSE(msg_seen_full(x));
    /* full: no room to split, the rest of the range goes */
    for (uint64_t s = 0; msg_seen_ranges(x) < MSG_SEEN_MAX_RANGES; s += 2)
        CU_ASSERT_EQUAL(msg_seen_add(x, 9, s), 0);
    CU_ASSERT_EQUAL(msg_seen_del(x, 5, 13), -ENOSPC);
    CU_ASSERT_TRUE(msg_seen_has(x, 5, 12));
    CU_ASSERT_FALSE(msg_seen_has(x, 5, 13));
    CU_ASSERT_FALSE(msg_seen_has(x, 5, 14));
    CU_ASSERT_TRUE(msg_seen_full(x));
    msg_seen_free(x);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("msg_seen", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "each identity once", test_once);
    CU_add_test(s, "ranges merge", test_ranges_merge);
    CU_add_test(s, "bound", test_bound);
    CU_add_test(s, "add range", test_add_range);
    CU_add_test(s, "del", test_del);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
