/*
 * test_routes.c - the in-memory route matcher (cluster/routes.h): add and
 * remove with set semantics, wildcard matching ([MQTT-4.7.1-1],
 * [MQTT-4.7.1-2], [MQTT-4.7.2-1]), $share groups picking one node, purge of
 * a node, and a randomized cross-check against topic_match.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"
#include "topic.h"

#define S(x) (x), strlen(x)

/* Sorted distinct nodes of a publish on t. */
static int nodes_of(struct routes *r, const char *t, uint64_t pick, uint64_t *out, int max)
{
    int n = routes_nodes(r, S(t), pick, out, max);
    for (int i = 1; i < n && i < max; i++)
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
            uint64_t x = out[j];
            out[j] = out[j - 1];
            out[j - 1] = x;
        }
    return n;
}

static void test_add_remove_set_semantics(void)
{
    struct routes *r = routes_new();
    CU_ASSERT_EQUAL(routes_add(r, S("a/b"), 1), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("a/b"), 1), 0);
    CU_ASSERT_EQUAL(routes_add(r, S("a/b"), 2), 1);
    CU_ASSERT_EQUAL(routes_count(r), 2);
    CU_ASSERT_EQUAL(routes_remove(r, S("a/b"), 3), 0);
    CU_ASSERT_EQUAL(routes_remove(r, S("a/c"), 1), 0);
    CU_ASSERT_EQUAL(routes_remove(r, S("a/b"), 1), 1);
    CU_ASSERT_EQUAL(routes_remove(r, S("a/b"), 1), 0);
    CU_ASSERT_EQUAL(routes_count(r), 1);
    uint64_t n[4];
    CU_ASSERT_EQUAL(nodes_of(r, "a/b", 0, n, 4), 1);
    CU_ASSERT_EQUAL(n[0], 2);
    CU_ASSERT_EQUAL(routes_remove(r, S("a/b"), 2), 1);
    CU_ASSERT_EQUAL(nodes_of(r, "a/b", 0, n, 4), 0);
    CU_ASSERT_EQUAL(routes_count(r), 0);
    routes_free(r);
}

static void test_invalid(void)
{
    struct routes *r = routes_new();
    CU_ASSERT_EQUAL(routes_add(r, S("a/#/b"), 1), -EINVAL);
    CU_ASSERT_EQUAL(routes_add(r, S("a+"), 1), -EINVAL);
    CU_ASSERT_EQUAL(routes_add(r, S(""), 1), -EINVAL);
    CU_ASSERT_EQUAL(routes_add(r, S("a"), 0), -EINVAL);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g"), 1), -EINVAL);
    CU_ASSERT_EQUAL(routes_add(r, S("$share//a"), 1), -EINVAL);
    uint64_t n[2];
    CU_ASSERT_EQUAL(routes_nodes(r, S("a/+"), 0, n, 2), -EINVAL);
    CU_ASSERT_EQUAL(routes_count(r), 0);
    routes_free(r);
}

static void test_wildcards(void)
{
    struct routes *r = routes_new();
    CU_ASSERT_EQUAL(routes_add(r, S("sport/tennis/player1"), 1), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("sport/tennis/+"), 2), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("sport/#"), 3), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("#"), 4), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("+/+"), 5), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("+/tennis/#"), 6), 1);
    uint64_t n[8];
    CU_ASSERT_EQUAL(nodes_of(r, "sport/tennis/player1", 0, n, 8), 5);
    uint64_t want1[] = {1, 2, 3, 4, 6};
    CU_ASSERT_EQUAL(memcmp(n, want1, sizeof want1), 0);
    /* "sport/#" also matches the parent level "sport" [MQTT-4.7.1-1]. */
    CU_ASSERT_EQUAL(nodes_of(r, "sport", 0, n, 8), 2);
    CU_ASSERT_EQUAL(n[0], 3);
    CU_ASSERT_EQUAL(n[1], 4);
    /* "+/tennis/#" matches "x/tennis" too. */
    CU_ASSERT_EQUAL(nodes_of(r, "x/tennis", 0, n, 8), 3);
    uint64_t want2[] = {4, 5, 6};
    CU_ASSERT_EQUAL(memcmp(n, want2, sizeof want2), 0);
    /* [MQTT-4.7.2-1] first-level wildcards do not match "$..." topics. */
    CU_ASSERT_EQUAL(nodes_of(r, "$SYS/tennis", 0, n, 8), 0);
    CU_ASSERT_EQUAL(routes_add(r, S("$SYS/#"), 7), 1);
    CU_ASSERT_EQUAL(nodes_of(r, "$SYS/tennis", 0, n, 8), 1);
    CU_ASSERT_EQUAL(n[0], 7);
    /* Empty levels are levels. */
    CU_ASSERT_EQUAL(routes_add(r, S("a//b"), 8), 1);
    CU_ASSERT_EQUAL(nodes_of(r, "a//b", 0, n, 8), 2); /* # and a//b */
    CU_ASSERT_EQUAL(n[1], 8);
    CU_ASSERT_EQUAL(nodes_of(r, "a/b", 0, n, 8), 2); /* # and +/+ */
    routes_free(r);
}

static void test_dedup_and_max(void)
{
    struct routes *r = routes_new();
    routes_add(r, S("a/b"), 9);
    routes_add(r, S("a/+"), 9);
    routes_add(r, S("#"), 9);
    routes_add(r, S("a/#"), 2);
    uint64_t n[4];
    /* One entry per node however many of its filters match. */
    CU_ASSERT_EQUAL(nodes_of(r, "a/b", 0, n, 4), 2);
    CU_ASSERT_EQUAL(n[0], 2);
    CU_ASSERT_EQUAL(n[1], 9);
    /* A too small array: the count says so. */
    CU_ASSERT_TRUE(routes_nodes(r, S("a/b"), 0, n, 1) > 1);
    routes_free(r);
}

struct visit_log {
    int plain, shared;
    char share[64];
};

static void visit(void *ud, uint64_t node, const char *share, size_t len)
{
    (void)node;
    struct visit_log *l = ud;
    if (share) {
        l->shared++;
        memcpy(l->share, share, len < 63 ? len : 63);
        l->share[len < 63 ? len : 63] = '\0';
    } else {
        l->plain++;
    }
}

static void test_share_groups(void)
{
    struct routes *r = routes_new();
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/a/+"), 1), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/a/+"), 3), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/a/+"), 2), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/a/+"), 2), 0);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/h/a/b"), 4), 1);
    CU_ASSERT_EQUAL(routes_count(r), 4);
    /* A shared group does not match as a plain filter "$share/g/a/+". */
    uint64_t n[8];
    CU_ASSERT_EQUAL(nodes_of(r, "$share/g/a/x", 0, n, 8), 0);
    /* Group g has nodes {1,2,3}: pick chooses one of them in id order;
     * group h always node 4. */
    for (uint64_t pick = 0; pick < 6; pick++) {
        CU_ASSERT_EQUAL(nodes_of(r, "a/b", pick, n, 8), 2);
        CU_ASSERT_EQUAL(n[0], pick % 3 + 1);
        CU_ASSERT_EQUAL(n[1], 4);
    }
    CU_ASSERT_EQUAL(nodes_of(r, "a/c", 7, n, 8), 1);
    CU_ASSERT_EQUAL(n[0], 2);
    struct visit_log l = {0};
    CU_ASSERT_EQUAL(routes_match(r, S("a/c"), visit, &l), 3);
    CU_ASSERT_EQUAL(l.plain, 0);
    CU_ASSERT_EQUAL(l.shared, 3);
    CU_ASSERT_STRING_EQUAL(l.share, "$share/g/a/+");
    /* A plain route on the same inner filter is another route. */
    CU_ASSERT_EQUAL(routes_add(r, S("a/+"), 1), 1);
    CU_ASSERT_EQUAL(nodes_of(r, "a/c", 1, n, 8), 2); /* 1 plain, g picks 2 */
    CU_ASSERT_EQUAL(n[0], 1);
    CU_ASSERT_EQUAL(n[1], 2);
    CU_ASSERT_EQUAL(nodes_of(r, "a/c", 0, n, 8), 1); /* g picks 1 too */
    CU_ASSERT_EQUAL(n[0], 1);
    CU_ASSERT_EQUAL(routes_remove(r, S("$share/g/a/+"), 1), 1);
    CU_ASSERT_EQUAL(routes_remove(r, S("$share/g/a/+"), 2), 1);
    CU_ASSERT_EQUAL(routes_remove(r, S("$share/g/a/+"), 3), 1);
    CU_ASSERT_EQUAL(nodes_of(r, "a/c", 0, n, 8), 1);
    CU_ASSERT_EQUAL(n[0], 1);
    routes_free(r);
}

static void test_remove_node(void)
{
    struct routes *r = routes_new();
    char f[32];
    for (int i = 0; i < 200; i++) {
        snprintf(f, sizeof f, "t/%d/+", i);
        CU_ASSERT_EQUAL(routes_add(r, S(f), 1 + (uint64_t)(i % 2)), 1);
    }
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/#"), 1), 1);
    CU_ASSERT_EQUAL(routes_add(r, S("$share/g/#"), 2), 1);
    CU_ASSERT_EQUAL(routes_count(r), 202);
    CU_ASSERT_EQUAL(routes_remove_node(r, 1), 101);
    CU_ASSERT_EQUAL(routes_count(r), 101);
    uint64_t n[4];
    for (int i = 0; i < 200; i++) {
        snprintf(f, sizeof f, "t/%d/x", i);
        int got = nodes_of(r, f, 0, n, 4);
        CU_ASSERT_EQUAL(got, 1); /* "$share/g/#" -> node 2 only now */
        CU_ASSERT_EQUAL(n[0], 2);
    }
    CU_ASSERT_EQUAL(routes_remove_node(r, 1), 0);
    CU_ASSERT_EQUAL(routes_remove_node(r, 2), 101);
    CU_ASSERT_EQUAL(routes_count(r), 0);
    CU_ASSERT_EQUAL(nodes_of(r, "t/0/x", 0, n, 4), 0);
    routes_free(r);
}

/* Random filters and topics over a small alphabet of levels; the matcher
 * must agree with topic_match on every pair. */
static void random_level(char *out, size_t *len, unsigned seed)
{
    static const char *levels[] = {"a", "b", "", "cc", "$x"};
    const char *l = levels[seed % 5];
    memcpy(out + *len, l, strlen(l));
    *len += strlen(l);
}

static void test_random_cross_check(void)
{
    srand(12345);
    struct routes *r = routes_new();
    enum { NF = 300 };
    char filters[NF][40];
    uint64_t fnode[NF];
    int nf = 0;
    for (int i = 0; i < NF; i++) {
        size_t len = 0;
        int levels = 1 + rand() % 4;
        char *f = filters[nf];
        for (int l = 0; l < levels; l++) {
            if (l)
                f[len++] = '/';
            int k = rand() % 7;
            if (k == 5)
                f[len++] = '+';
            else if (k == 6 && l == levels - 1)
                f[len++] = '#';
            else
                random_level(f, &len, (unsigned)rand());
        }
        f[len] = '\0';
        if (!topic_filter_valid(f, len))
            continue;
        fnode[nf] = 1 + (uint64_t)(rand() % 20);
        routes_add(r, f, len, fnode[nf]);
        nf++;
    }
    for (int i = 0; i < 2000; i++) {
        char t[40];
        size_t len = 0;
        int levels = 1 + rand() % 4;
        for (int l = 0; l < levels; l++) {
            if (l)
                t[len++] = '/';
            random_level(t, &len, (unsigned)rand());
        }
        t[len] = '\0';
        if (len == 0) {
            CU_ASSERT_EQUAL(routes_nodes(r, t, len, 0, NULL, 0), -EINVAL);
            continue;
        }
        bool want[21] = {0};
        int nwant = 0;
        for (int j = 0; j < nf; j++)
            if (topic_match(filters[j], strlen(filters[j]), t, len) && !want[fnode[j]]) {
                want[fnode[j]] = true;
                nwant++;
            }
        uint64_t got[32];
        int n = routes_nodes(r, t, len, 0, got, 32);
        CU_ASSERT_EQUAL(n, nwant);
        if (n != nwant) {
            printf("\ntopic '%s': got %d want %d\n", t, n, nwant);
            for (int j = 0; j < nf; j++)
                if (topic_match(filters[j], strlen(filters[j]), t, len))
                    printf("  '%s' -> %llu\n", filters[j], (unsigned long long)fnode[j]);
            break;
        }
        for (int k = 0; k < n && k < 32; k++)
            CU_ASSERT_TRUE(got[k] <= 20 && want[got[k]]);
    }
    routes_free(r);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("routes", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "add/remove are set operations", test_add_remove_set_semantics);
    CU_add_test(s, "invalid filters and topics", test_invalid);
    CU_add_test(s, "wildcards", test_wildcards);
    CU_add_test(s, "one entry per node", test_dedup_and_max);
    CU_add_test(s, "$share groups pick one node", test_share_groups);
    CU_add_test(s, "remove every route of a node", test_remove_node);
    CU_add_test(s, "random cross-check with topic_match", test_random_cross_check);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
