/*
 * test_topic.c - topic names, filters, matching and shared subscription
 * parsing (MQTT 5.0 sections 4.7 and 4.8.2).
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <string.h>

#include "topic.h"

#define S(x) (x), strlen(x)

static void test_name_valid(void)
{
    static const char *ok[] = {
        "a",
        "a/b",
        "a/b/c",
        "/",
        "/a",
        "a/",
        "a//b",
        "//",
        "$SYS/x",
        "$share/g/f",
        "with space/x y",
        "sport/tennis/player1",
        "\xc3\xa9t\xc3\xa9/caf\xc3\xa9",
        "a$b",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CU_ASSERT_TRUE(topic_name_valid(S(ok[i])));
    }
}

static void test_name_invalid(void)
{
    static const char *bad[] = {"", "+", "#", "a/+", "a/#", "a+b", "a#", "sport/tennis/#"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_FALSE(topic_name_valid(S(bad[i])));
    }
    CU_ASSERT_FALSE(topic_name_valid("a\0b", 3));
    CU_ASSERT_FALSE(topic_name_valid(NULL, 0));
}

static void test_filter_valid(void)
{
    static const char *ok[] = {
        "a",          "a/b",
        "#",          "+",
        "+/+",        "a/+/c",
        "a/#",        "/#",
        "/+",         "+/",
        "a//b",       "/",
        "//",         "sport/tennis/#",
        "+/#",        "$SYS/#",
        "x y/+/z",    "$share/g/f",
        "$share/g/#", "$share/g/+/x",
        "$share/g//", "$share",
        "$shar/x",    "$sharex/g/f",
        "a$b",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (!topic_filter_valid(S(ok[i])))
            fprintf(stderr, "expected valid: '%s'\n", ok[i]);
        CU_ASSERT_TRUE(topic_filter_valid(S(ok[i])));
    }
}

static void test_filter_invalid(void)
{
    static const char *bad[] = {
        "",
        "a#",
        "#/a",
        "a/#/b",
        "a/b#",
        "sport/tennis#",
        "a+",
        "+a",
        "a/+b",
        "a/b+/c",
        "##",
        "++",
        "$share/g",
        "$share//f",
        "$share/g/",
        "$share/",
        "$share/+/f",
        "$share/#/f",
        "$share/a+b/f",
        "$share/g/a#",
        "$share/g/#/x",
        "$share//",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (topic_filter_valid(S(bad[i])))
            fprintf(stderr, "expected invalid: '%s'\n", bad[i]);
        CU_ASSERT_FALSE(topic_filter_valid(S(bad[i])));
    }
    CU_ASSERT_FALSE(topic_filter_valid("a\0b", 3));
}

static void test_share_parse(void)
{
    const char *g = NULL, *f = NULL;
    size_t gl = 0, fl = 0;
    const char *s = "$share/grp/a/+/c";
    CU_ASSERT_EQUAL(topic_share_parse(S(s), &g, &gl, &f, &fl), 1);
    CU_ASSERT_PTR_EQUAL(g, s + 7);
    CU_ASSERT_EQUAL(gl, 3);
    CU_ASSERT_PTR_EQUAL(f, s + 11);
    CU_ASSERT_EQUAL(fl, 5);
    CU_ASSERT_NSTRING_EQUAL(f, "a/+/c", 5);

    s = "$share/g/#";
    CU_ASSERT_EQUAL(topic_share_parse(S(s), &g, &gl, &f, &fl), 1);
    CU_ASSERT_EQUAL(gl, 1);
    CU_ASSERT_EQUAL(fl, 1);
    CU_ASSERT_EQUAL(*f, '#');

    /* An inner filter with an empty first level. */
    s = "$share/g//x";
    CU_ASSERT_EQUAL(topic_share_parse(S(s), &g, &gl, &f, &fl), 1);
    CU_ASSERT_EQUAL(fl, 2);
    CU_ASSERT_NSTRING_EQUAL(f, "/x", 2);

    /* Not shared at all. */
    CU_ASSERT_EQUAL(topic_share_parse(S("a/b"), &g, &gl, &f, &fl), 0);
    CU_ASSERT_EQUAL(topic_share_parse(S("$share"), &g, &gl, &f, &fl), 0);
    CU_ASSERT_EQUAL(topic_share_parse(S("$SHARE/g/f"), &g, &gl, &f, &fl), 0);
    CU_ASSERT_EQUAL(topic_share_parse(S("$sharex/g/f"), &g, &gl, &f, &fl), 0);

    /* Malformed. */
    static const char *bad[] = {"$share/",     "$share/g",   "$share//f",   "$share/g/",
                                "$share/+/f",  "$share/#/f", "$share/a#/f", "$share/g/a/#/b",
                                "$share/g/a+", "$share//",   "$share/g+x/f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(topic_share_parse(S(bad[i]), &g, &gl, &f, &fl), -1);
    }
    /* NULL outputs are allowed. */
    CU_ASSERT_EQUAL(topic_share_parse(S("$share/g/f"), NULL, NULL, NULL, NULL), 1);
}

static void test_has_wildcard(void)
{
    CU_ASSERT_TRUE(topic_has_wildcard(S("#")));
    CU_ASSERT_TRUE(topic_has_wildcard(S("a/+")));
    CU_ASSERT_TRUE(topic_has_wildcard(S("a/+/b")));
    CU_ASSERT_FALSE(topic_has_wildcard(S("a/b")));
    CU_ASSERT_FALSE(topic_has_wildcard(S("$SYS/x")));
    CU_ASSERT_FALSE(topic_has_wildcard(S("")));
}

struct match_case {
    const char *filter;
    const char *name;
    bool match;
};

static const struct match_case match_cases[] = {
    /* Exact. */
    {"a", "a", true},
    {"a/b", "a/b", true},
    {"a/b", "a/c", false},
    {"a/b", "a", false},
    {"a", "a/b", false},
    {"a/b", "a/b/c", false},
    {"A", "a", false},
    {"x y", "x y", true},
    /* Single level. */
    {"+", "a", true},
    {"+", "a/b", false},
    {"+", "/a", false},
    {"+/+", "/a", true},
    {"+/+", "a/", true},
    {"/+", "/a", true},
    {"/+", "/", true},
    {"+", "/", false},
    {"+/+", "/", true},
    {"a/+", "a/", true},
    {"a/+", "a", false},
    {"a/+/c", "a/b/c", true},
    {"a/+/c", "a//c", true},
    {"a/+/c", "a/b/d", false},
    {"a/+/c", "a/b/c/d", false},
    {"sport/tennis/+", "sport/tennis/player1", true},
    {"sport/tennis/+", "sport/tennis/player1/ranking", false},
    {"sport/+", "sport", false},
    {"sport/+", "sport/", true},
    /* Multi level. */
    {"#", "a", true},
    {"#", "a/b/c", true},
    {"#", "/", true},
    {"#", "/a", true},
    {"sport/#", "sport", true},
    {"sport/#", "sport/", true},
    {"sport/#", "sport/tennis/player1", true},
    {"sport/#", "sports", false},
    {"sport/tennis/player1/#", "sport/tennis/player1", true},
    {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
    {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
    {"sport/tennis/player1/#", "sport/tennis", false},
    {"a/#", "b", false},
    {"/#", "/", true},
    {"/#", "", false},
    {"/#", "a", false},
    {"+/#", "a", true},
    {"+/#", "a/b/c", true},
    {"+/+/#", "a", false},
    {"+/+/#", "a/b", true},
    {"a//#", "a/", true},
    {"a//#", "a//b", true},
    {"a//#", "a", false},
    /* Empty levels. */
    {"a//b", "a//b", true},
    {"a//b", "a/b", false},
    {"/a", "/a", true},
    {"/a", "a", false},
    {"a/", "a/", true},
    {"a/", "a", false},
    /* '$' names [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1]. */
    {"#", "$SYS/x", false},
    {"+/x", "$SYS/x", false},
    {"+", "$SYS", false},
    {"+/#", "$SYS/x", false},
    {"$SYS/#", "$SYS/x", true},
    {"$SYS/#", "$SYS", true},
    {"$SYS/+", "$SYS/x", true},
    {"$SYS/x", "$SYS/x", true},
    {"+/monitor/Clients", "$SYS/monitor/Clients", false},
    {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
    {"a/#", "a/$x", true},
    {"a/+", "a/$x", true},
    {"#", "a$", true},
};

static void test_match_table(void)
{
    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
        const struct match_case *c = &match_cases[i];
        bool got = topic_match(c->filter, strlen(c->filter), c->name, strlen(c->name));
        if (got != c->match)
            fprintf(stderr, "topic_match('%s', '%s') = %d, expected %d\n", c->filter, c->name, got,
                    c->match);
        CU_ASSERT_EQUAL(got, c->match);
    }
}

static void test_match_lengths(void)
{
    /* Lengths are explicit; strings are not NUL-terminated. */
    const char *f = "a/bXXX";
    const char *t = "a/bYYY";
    CU_ASSERT_TRUE(topic_match(f, 3, t, 3));
    CU_ASSERT_FALSE(topic_match(f, 4, t, 4));
    CU_ASSERT_TRUE(topic_match("a/#zzz", 3, "a/b/c!", 5));
}

static void test_levels(void)
{
    CU_ASSERT_EQUAL(topic_levels("a", 1), 1);
    CU_ASSERT_EQUAL(topic_levels("", 0), 1);
    CU_ASSERT_EQUAL(topic_levels("a/b", 3), 2);
    CU_ASSERT_EQUAL(topic_levels("/", 1), 2);
    CU_ASSERT_EQUAL(topic_levels("a//b/", 5), 4);
    CU_ASSERT_EQUAL(topic_levels("+/#", 3), 2);
    /* explicit length: what follows is not counted */
    CU_ASSERT_EQUAL(topic_levels("a/b/c", 3), 2);
    char deep[401];
    for (int i = 0; i < 200; i++) {
        deep[2 * i] = 'x';
        deep[2 * i + 1] = '/';
    }
    CU_ASSERT_EQUAL(topic_levels(deep, 399), 200);
    CU_ASSERT_EQUAL(topic_levels(deep, 400), 201);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("topic", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "name valid", test_name_valid);
    CU_add_test(s, "name invalid", test_name_invalid);
    CU_add_test(s, "filter valid", test_filter_valid);
    CU_add_test(s, "filter invalid", test_filter_invalid);
    CU_add_test(s, "share parse", test_share_parse);
    CU_add_test(s, "has wildcard", test_has_wildcard);
    CU_add_test(s, "levels", test_levels);
    CU_add_test(s, "match table", test_match_table);
    CU_add_test(s, "match explicit lengths", test_match_lengths);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
