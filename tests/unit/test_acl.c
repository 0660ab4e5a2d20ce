/*
 * test_acl.c - Mosquitto-syntax ACL files (node/acl.h).
 *
 * The decisions of tests/data/acl/cases.txt for tests/data/acl/aclfile; the
 * same table is checked against a real mosquitto by
 * tests/integration/test_acl.py.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"

#define S(x) (x), strlen(x)

static struct acl *parse_ok(const char *text)
{
    struct acl *acl = NULL;
    char err[256] = "";
    int r = acl_parse(text, strlen(text), &acl, err, sizeof(err));
    if (r != 0)
        fprintf(stderr, "unexpected error: %s\n", err);
    CU_ASSERT_EQUAL(r, 0);
    return acl;
}

static bool chk(const struct acl *acl, const char *user, const char *cid, const char *topic,
                enum acl_access a)
{
    return acl_check(acl, user, user ? strlen(user) : 0, S(cid), S(topic), a);
}

static void test_cases_file(void)
{
    struct acl *acl = NULL;
    char err[512] = "";
    CU_ASSERT_EQUAL_FATAL(acl_load(STARLING_TEST_DATA "/acl/aclfile", &acl, err, sizeof(err)), 0);
    FILE *f = fopen(STARLING_TEST_DATA "/acl/cases.txt", "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        char user[128], cid[128], access[32], topic[256], expect[16];
        if (line[0] == '#' || line[0] == '\n')
            continue;
        CU_ASSERT_EQUAL_FATAL(
            sscanf(line, "%127s %127s %31s %255s %15s", user, cid, access, topic, expect), 5);
        enum acl_access a = strcmp(access, "read") == 0    ? ACL_READ
                            : strcmp(access, "write") == 0 ? ACL_WRITE
                                                           : ACL_SUBSCRIBE;
        bool want = strcmp(expect, "allow") == 0;
        bool got = chk(acl, strcmp(user, "-") ? user : NULL, cid, topic, a);
        if (got != want)
            fprintf(stderr, "case failed: %s", line);
        CU_ASSERT_EQUAL(got, want);
        n++;
    }
    fclose(f);
    CU_ASSERT(n >= 60);
    acl_unref(acl);
}

static void expect_error(const char *text, const char *want)
{
    struct acl *acl = NULL;
    char err[256] = "";
    CU_ASSERT_EQUAL(acl_parse(text, strlen(text), &acl, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NULL(acl);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "got '%s', want '%s'\n", err, want);
    CU_ASSERT_STRING_EQUAL(err, want);
}

/* The errors Mosquitto 2.0 stops at, each with its line. */
static void test_parse_errors(void)
{
    expect_error("frobnicate x\n", "line 1: unknown keyword \"frobnicate\"");
    expect_error("# c\n\ntopic\n", "line 3: missing topic");
    expect_error("topic bogus a/b\n", "line 1: invalid access type \"bogus\"");
    expect_error("topic read a\nuser\n", "line 2: missing user name");
    expect_error("user \r\n", "line 1: missing user name");
    expect_error("topic read a/#/b\n", "line 1: invalid topic filter \"a/#/b\"");
    expect_error("pattern write a+\n", "line 1: invalid topic filter \"a+\"");
}

static void test_parse_forms(void)
{
    /* No access word: readwrite. Trailing spaces and CR are not part of the
     * filter; inner spaces are. Tabs separate words. */
    struct acl *acl = parse_ok("user u\r\ntopic a/b  \r\n\ttopic\tread  x y/z\n"
                               "  # indented comment\ntopic read\n");
    CU_ASSERT_TRUE(chk(acl, "u", "c", "a/b", ACL_READ));
    CU_ASSERT_TRUE(chk(acl, "u", "c", "a/b", ACL_WRITE));
    CU_ASSERT_TRUE(chk(acl, "u", "c", "x y/z", ACL_READ));
    CU_ASSERT_FALSE(chk(acl, "u", "c", "x y/z", ACL_WRITE));
    /* "topic read" alone is the topic "read", as in Mosquitto. */
    CU_ASSERT_TRUE(chk(acl, "u", "c", "read", ACL_WRITE));
    CU_ASSERT_FALSE(chk(acl, NULL, "c", "a/b", ACL_READ));
    acl_unref(acl);
}

static void test_empty_file_denies(void)
{
    struct acl *acl = parse_ok("# nothing\n\n");
    CU_ASSERT_FALSE(chk(acl, "u", "c", "a", ACL_READ));
    CU_ASSERT_FALSE(chk(acl, NULL, "c", "a", ACL_WRITE));
    CU_ASSERT_FALSE(chk(acl, NULL, "c", "#", ACL_SUBSCRIBE));
    acl_unref(acl);
    CU_ASSERT_FALSE(chk(NULL, "u", "c", "a", ACL_READ));
}

static void test_long_substitution(void)
{
    struct acl *acl = parse_ok("pattern read d/%c/%u/%c\n");
    char cid[400];
    memset(cid, 'k', sizeof(cid) - 1);
    cid[sizeof(cid) - 1] = '\0';
    char topic[1024];
    snprintf(topic, sizeof(topic), "d/%s/me/%s", cid, cid);
    CU_ASSERT_TRUE(chk(acl, "me", cid, topic, ACL_READ));
    snprintf(topic, sizeof(topic), "d/%s/me/%sk", cid, cid);
    CU_ASSERT_FALSE(chk(acl, "me", cid, topic, ACL_READ));
    /* %u never applies without a user name; %c with an empty id. */
    CU_ASSERT_FALSE(chk(acl, NULL, "", "d//%u/", ACL_READ));
    acl_unref(acl);
}

static void test_reload_swap(void)
{
    struct acl *old = parse_ok("topic read a\n");
    struct acl *reader = acl_ref(old);
    struct acl *fresh = parse_ok("topic read b\n");
    acl_unref(old); /* the loader swaps; the reader still holds the old one */
    CU_ASSERT_TRUE(chk(reader, NULL, "c", "a", ACL_READ));
    CU_ASSERT_FALSE(chk(fresh, NULL, "c", "a", ACL_READ));
    CU_ASSERT_TRUE(chk(fresh, NULL, "c", "b", ACL_READ));
    acl_unref(reader);
    acl_unref(fresh);
}

static void test_filters_intersect(void)
{
    static const struct {
        const char *a, *b;
        bool want;
    } t[] = {
        {"a/b", "a/b", true},       {"a/b", "a/c", false},   {"a/+", "a/b", true},
        {"+/+", "a/b", true},       {"+/+", "a", false},     {"a/#", "a", true},
        {"#", "x/y/z", true},       {"a/#", "b/#", false},   {"+/b", "a/+", true},
        {"a/b/c", "a/+", false},    {"#", "$SYS/x", false},  {"+/x", "$SYS/x", false},
        {"$SYS/#", "$SYS/+", true}, {"a//b", "a/+/b", true}, {"a/b", "a/b/c", false},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        bool g1 = acl_filters_intersect(S(t[i].a), S(t[i].b));
        bool g2 = acl_filters_intersect(S(t[i].b), S(t[i].a));
        if (g1 != t[i].want || g2 != t[i].want)
            fprintf(stderr, "intersect %s %s\n", t[i].a, t[i].b);
        CU_ASSERT_EQUAL(g1, t[i].want);
        CU_ASSERT_EQUAL(g2, t[i].want);
    }
}

static void test_filter_covers(void)
{
    static const struct {
        const char *d, *f;
        bool want;
    } t[] = {
        {"#", "a/b", true},      {"#", "#", true},         {"a/#", "a", true},
        {"a/#", "a/+/c", true},  {"a/+", "a/b", true},     {"a/+", "a/#", false},
        {"a/b", "a/+", false},   {"a/b", "a/b", true},     {"+/+", "a/b", true},
        {"#", "$SYS/x", false},  {"+/x", "$SYS/x", false}, {"$SYS/#", "$SYS/x", true},
        {"a/b", "a/b/c", false}, {"a/b/c", "a/b", false},  {"a/+/c", "a/+/c", true},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        bool g = acl_filter_covers(S(t[i].d), S(t[i].f));
        if (g != t[i].want)
            fprintf(stderr, "covers %s %s\n", t[i].d, t[i].f);
        CU_ASSERT_EQUAL(g, t[i].want);
    }
}

static void test_load_errors(void)
{
    struct acl *acl = NULL;
    char err[512];
    CU_ASSERT_EQUAL(acl_load("/nonexistent/acl", &acl, err, sizeof(err)), -ENOENT);
    CU_ASSERT_STRING_EQUAL(err, "/nonexistent/acl: No such file or directory");
    char path[] = "/tmp/test_acl_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("user a\ntopic read x\ntopic sometimes y\n", f);
    fclose(f);
    char want[600];
    snprintf(want, sizeof(want), "%s: line 3: invalid access type \"sometimes\"", path);
    CU_ASSERT_EQUAL(acl_load(path, &acl, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, want);
    remove(path);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("acl", NULL, NULL);
    CU_add_test(s, "cases_file", test_cases_file);
    CU_add_test(s, "parse_errors", test_parse_errors);
    CU_add_test(s, "parse_forms", test_parse_forms);
    CU_add_test(s, "empty_file_denies", test_empty_file_denies);
    CU_add_test(s, "long_substitution", test_long_substitution);
    CU_add_test(s, "reload_swap", test_reload_swap);
    CU_add_test(s, "filters_intersect", test_filters_intersect);
    CU_add_test(s, "filter_covers", test_filter_covers);
    CU_add_test(s, "load_errors", test_load_errors);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
