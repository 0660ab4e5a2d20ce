/*
 * test_retain.c - the retained message store: set, replace, delete, match
 * with and without wildcards, '$' topics, expiry, references.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "retain.h"
#include "topic.h"

#define S(x) (x), strlen(x)

static struct msg *mk(const char *topic, const char *payload, uint64_t expiry_at)
{
    struct msg *m = msg_new(topic, (uint16_t)strlen(topic), payload, (uint32_t)strlen(payload),
                            NULL, 0, 1, true, expiry_at, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    return m;
}

/* Store a message and drop the caller's reference. */
static void put(struct retain_store *rs, const char *topic, const char *payload, uint64_t expiry_at)
{
    struct msg *m = mk(topic, payload, expiry_at);
    CU_ASSERT_EQUAL(retain_set(rs, m), 0);
    msg_unref(m);
}

struct seen {
    char topics[64][32];
    char payloads[64][16];
    int n;
};

static void collect(void *ud, struct msg *m)
{
    struct seen *s = ud;
    if (s->n < 64) {
        snprintf(s->topics[s->n], sizeof(s->topics[0]), "%.*s", (int)m->topic_len, msg_topic(m));
        snprintf(s->payloads[s->n], sizeof(s->payloads[0]), "%.*s", (int)m->payload_len,
                 (const char *)msg_payload(m));
    }
    s->n++;
}

static int match(struct retain_store *rs, const char *f, uint64_t now, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    return retain_match(rs, f, strlen(f), now, collect, s);
}

static bool has(const struct seen *s, const char *topic, const char *payload)
{
    for (int i = 0; i < s->n && i < 64; i++)
        if (strcmp(s->topics[i], topic) == 0 && (!payload || strcmp(s->payloads[i], payload) == 0))
            return true;
    return false;
}

static void test_set_replace_delete(void)
{
    struct retain_store *rs = retain_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(rs);
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    put(rs, "a/b", "one", 0);
    put(rs, "a/c", "two", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 2);

    struct seen s;
    CU_ASSERT_EQUAL(match(rs, "a/b", 0, &s), 1);
    CU_ASSERT_TRUE(has(&s, "a/b", "one"));

    /* Replace. */
    put(rs, "a/b", "three", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 2);
    CU_ASSERT_EQUAL(match(rs, "a/b", 0, &s), 1);
    CU_ASSERT_TRUE(has(&s, "a/b", "three"));

    /* Empty payload deletes [MQTT-3.1.1 3.3.1-10, MQTT-5.0 3.3.1-6]. */
    put(rs, "a/b", "", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 1);
    CU_ASSERT_EQUAL(match(rs, "a/b", 0, &s), 0);
    CU_ASSERT_EQUAL(match(rs, "a/c", 0, &s), 1);
    /* Deleting what is not there changes nothing. */
    put(rs, "a/b", "", 0);
    put(rs, "x/y/z", "", 0);
    put(rs, "a", "", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 1);
    CU_ASSERT_EQUAL(match(rs, "#", 0, &s), 1);
    put(rs, "a/c", "", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    CU_ASSERT_EQUAL(match(rs, "#", 0, &s), 0);
    retain_free(rs);
    retain_free(NULL);
}

static void test_references(void)
{
    struct retain_store *rs = retain_new();
    struct msg *m = mk("r", "x", 0);
    CU_ASSERT_EQUAL(retain_set(rs, m), 0);
    CU_ASSERT_EQUAL(atomic_load(&m->refs), 2);
    /* Setting the same message again keeps one store reference. */
    CU_ASSERT_EQUAL(retain_set(rs, m), 0);
    CU_ASSERT_EQUAL(atomic_load(&m->refs), 2);
    struct msg *m2 = mk("r", "y", 0);
    CU_ASSERT_EQUAL(retain_set(rs, m2), 0);
    CU_ASSERT_EQUAL(atomic_load(&m->refs), 1);
    CU_ASSERT_EQUAL(atomic_load(&m2->refs), 2);
    struct msg *del = mk("r", "", 0);
    CU_ASSERT_EQUAL(retain_set(rs, del), 0);
    CU_ASSERT_EQUAL(atomic_load(&m2->refs), 1);
    /* The empty message itself is not kept [MQTT-3.1.1 3.3.1-11, MQTT-5.0 3.3.1-7]. */
    CU_ASSERT_EQUAL(atomic_load(&del->refs), 1);
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    CU_ASSERT_EQUAL(retain_set(rs, m2), 0);
    retain_free(rs); /* drops the store's reference */
    CU_ASSERT_EQUAL(atomic_load(&m2->refs), 1);
    msg_unref(m);
    msg_unref(m2);
    msg_unref(del);
}

static struct retain_store *sample(void)
{
    struct retain_store *rs = retain_new();
    static const char *topics[] = {
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport/golf/p1",
        "sports",
        "/",
        "/a",
        "a//b",
        "a/",
        "a",
        "$SYS/x",
        "$SYS",
        "$SYS/a/b",
        "x$/y",
        "with space/x y",
    };
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
        put(rs, topics[i], "p", 0);
    return rs;
}

struct mcase {
    const char *filter;
    int n;
    const char *expect[16];
};

static const struct mcase mcases[] = {
    {"sport", 1, {"sport"}},
    {"sport/tennis/player1", 1, {"sport/tennis/player1"}},
    {"sport/tennis/player3", 0, {0}},
    {"nope/x", 0, {0}},
    {"sport/#",
     5,
     {"sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player2", "sport/golf/p1"}},
    {"sport/tennis/#", 3, {"sport/tennis", "sport/tennis/player1", "sport/tennis/player2"}},
    {"sport/tennis/+", 2, {"sport/tennis/player1", "sport/tennis/player2"}},
    {"sport/+", 1, {"sport/tennis"}},
    {"sport/+/+", 3, {"sport/tennis/player1", "sport/tennis/player2", "sport/golf/p1"}},
    {"+/+/p1", 1, {"sport/golf/p1"}},
    {"+", 3, {"sport", "sports", "a"}},
    {"+/+", 6, {"sport/tennis", "/", "/a", "a/", "x$/y", "with space/x y"}},
    {"/+", 2, {"/", "/a"}},
    {"a/+", 1, {"a/"}},
    {"a/+/b", 1, {"a//b"}},
    {"a//b", 1, {"a//b"}},
    {"a/#", 3, {"a", "a/", "a//b"}},
    {"/#", 2, {"/", "/a"}},
    {"$SYS/#", 3, {"$SYS", "$SYS/x", "$SYS/a/b"}},
    {"$SYS/+", 1, {"$SYS/x"}},
    {"+/x", 0, {0}},
    {"+/y", 1, {"x$/y"}},
    {"with space/+", 1, {"with space/x y"}},
    {"#",
     13,
     {"sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player2", "sport/golf/p1",
      "sports", "/", "/a", "a//b", "a/", "a", "x$/y", "with space/x y"}},
};

static void test_match_table(void)
{
    struct retain_store *rs = sample();
    CU_ASSERT_EQUAL(retain_count(rs), 16);
    struct seen s;
    for (size_t i = 0; i < sizeof(mcases) / sizeof(mcases[0]); i++) {
        const struct mcase *c = &mcases[i];
        int n = match(rs, c->filter, 1, &s);
        if (n != c->n)
            fprintf(stderr, "filter '%s': %d matches, expected %d\n", c->filter, n, c->n);
        CU_ASSERT_EQUAL(n, c->n);
        CU_ASSERT_EQUAL(s.n, c->n);
        for (int k = 0; k < c->n && k < 16 && c->expect[k]; k++) {
            if (!has(&s, c->expect[k], "p"))
                fprintf(stderr, "filter '%s': '%s' missing\n", c->filter, c->expect[k]);
            CU_ASSERT_TRUE(has(&s, c->expect[k], "p"));
        }
        /* Each message reported is a match by topic_match's rules. */
        for (int k = 0; k < s.n && k < 64; k++)
            CU_ASSERT_TRUE(topic_match(S(c->filter), S(s.topics[k])));
    }
    /* Matching removes nothing that has not expired. */
    CU_ASSERT_EQUAL(retain_count(rs), 16);
    retain_free(rs);
}

static void test_expiry(void)
{
    struct retain_store *rs = retain_new();
    put(rs, "e/1", "a", 100);
    put(rs, "e/2", "b", 200);
    put(rs, "e/3", "c", 0);
    put(rs, "e/1/deep", "d", 100);
    put(rs, "e", "e", 100);
    CU_ASSERT_EQUAL(retain_count(rs), 5);
    struct seen s;
    /* Not yet expired. */
    CU_ASSERT_EQUAL(match(rs, "e/#", 99, &s), 5);
    /* A direct lookup skips and removes an expired message. */
    CU_ASSERT_EQUAL(match(rs, "e/1", 100, &s), 0);
    CU_ASSERT_EQUAL(retain_count(rs), 4);
    CU_ASSERT_EQUAL(match(rs, "e/1", 0, &s), 0);
    /* A wildcard walk skips and removes expired messages, the parent
     * "e" and child "e/1/deep" in one walk. */
    CU_ASSERT_EQUAL(match(rs, "e/#", 150, &s), 2);
    CU_ASSERT_TRUE(has(&s, "e/2", "b"));
    CU_ASSERT_TRUE(has(&s, "e/3", "c"));
    CU_ASSERT_EQUAL(retain_count(rs), 2);
    CU_ASSERT_EQUAL(match(rs, "e/+", 250, &s), 1);
    CU_ASSERT_TRUE(has(&s, "e/3", "c"));
    CU_ASSERT_EQUAL(retain_count(rs), 1);
    /* Gone for good, even asked at an earlier time. */
    CU_ASSERT_EQUAL(match(rs, "#", 0, &s), 1);
    /* A removed topic can be set again. */
    put(rs, "e/1/deep", "f", 0);
    CU_ASSERT_EQUAL(match(rs, "e/1/deep", 1000, &s), 1);
    CU_ASSERT_TRUE(has(&s, "e/1/deep", "f"));
    CU_ASSERT_EQUAL(retain_count(rs), 2);
    retain_free(rs);
}

static void test_expiry_nested_walk(void)
{
    /* Expired nodes at several depths under one '#', with the ancestors
     * expiring too: pruning must not touch freed nodes (ASan). */
    struct retain_store *rs = retain_new();
    put(rs, "n", "1", 10);
    put(rs, "n/a", "2", 10);
    put(rs, "n/a/b", "3", 10);
    put(rs, "n/a/b/c", "4", 10);
    put(rs, "n/x", "5", 10);
    put(rs, "n/x/y", "6", 0);
    struct seen s;
    CU_ASSERT_EQUAL(match(rs, "#", 20, &s), 1);
    CU_ASSERT_TRUE(has(&s, "n/x/y", "6"));
    CU_ASSERT_EQUAL(retain_count(rs), 1);
    CU_ASSERT_EQUAL(match(rs, "n/+/+", 20, &s), 1);
    put(rs, "n/x/y", "", 0);
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    CU_ASSERT_EQUAL(match(rs, "#", 20, &s), 0);
    retain_free(rs);
}

static size_t heap_in_use(void);

static void test_many_topics(void)
{
    struct retain_store *rs = retain_new();
    char t[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(t, sizeof(t), "m/%d/%d", i % 10, i);
        put(rs, t, "x", 0);
    }
    CU_ASSERT_EQUAL(retain_count(rs), 3000);
    struct seen s;
    CU_ASSERT_EQUAL(match(rs, "m/3/+", 0, &s), 300);
    CU_ASSERT_EQUAL(match(rs, "m/3/1234", 0, &s), 0);
    CU_ASSERT_EQUAL(match(rs, "m/+/1234", 0, &s), 1);
    CU_ASSERT_EQUAL(match(rs, "m/+/1233", 0, &s), 1);
    CU_ASSERT_EQUAL(match(rs, "m/3/1233", 0, &s), 1);
    CU_ASSERT_EQUAL(match(rs, "#", 0, &s), 3000);
    for (int i = 0; i < 3000; i++) {
        snprintf(t, sizeof(t), "m/%d/%d", i % 10, i);
        put(rs, t, "", 0);
    }
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    CU_ASSERT_EQUAL(match(rs, "#", 0, &s), 0);
    retain_free(rs);
}

#if defined(__SANITIZE_ADDRESS__)
size_t __sanitizer_get_current_allocated_bytes(void);
static size_t heap_in_use(void)
{
    return __sanitizer_get_current_allocated_bytes();
}
#else
#include <malloc.h>
static size_t heap_in_use(void)
{
    return mallinfo2().uordblks;
}
#endif

static void churn(struct retain_store *rs, int base, uint64_t expiry)
{
    char t[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(t, sizeof(t), "c/%d/x/%d", base + i, i);
        put(rs, t, "x", expiry);
    }
    if (expiry) {
        struct seen s;
        CU_ASSERT_EQUAL(match(rs, "c/#", expiry, &s), 0);
    } else {
        for (int i = 0; i < 1000; i++) {
            snprintf(t, sizeof(t), "c/%d/x/%d", base + i, i);
            put(rs, t, "", 0);
        }
    }
}

static void test_nodes_freed(void)
{
    struct retain_store *rs = retain_new();
    churn(rs, 0, 0); /* grows the edge table to its peak */
    size_t before = heap_in_use();
    churn(rs, 10000, 0);
    CU_ASSERT_EQUAL(heap_in_use(), before);
    /* Expired messages removed by a walk give their nodes back too. */
    churn(rs, 20000, 5);
    CU_ASSERT_EQUAL(heap_in_use(), before);
    CU_ASSERT_EQUAL(retain_count(rs), 0);
    retain_free(rs);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("retain", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "set, replace, delete", test_set_replace_delete);
    CU_add_test(s, "references", test_references);
    CU_add_test(s, "match table", test_match_table);
    CU_add_test(s, "expiry", test_expiry);
    CU_add_test(s, "expiry at several depths", test_expiry_nested_walk);
    CU_add_test(s, "many topics", test_many_topics);
    CU_add_test(s, "nodes freed", test_nodes_freed);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
