/*
 * test_passwd.c - Mosquitto-format password files (node/passwd.h).
 *
 * The fixed lines below were written by Debian's mosquitto_passwd 2.0.11:
 * `mosquitto_passwd -c -b f alice secret`, `-H sha512 -b f bob hunter2`,
 * `-H sha512-pbkdf2 -b f carol pw3`. tests/integration/test_passwd.py checks
 * the same both ways against the live tools.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "passwd.h"

#define ALICE                                                                                      \
    "alice:$7$101$aKc2dP6bMZ+Fxb7K$zwLUs+if56VXS+"                                                 \
    "bpihSwyU1NzLtS7nuYS4c4BWMQU1Q7zfqhijFAafKvHZ0nBm8c"                                           \
    "qGQzeb8sIJm1g0RaX/a33g=="
#define BOB                                                                                        \
    "bob:$6$R1/"                                                                                   \
    "He4LdidFnmaW+$gtMCbIfVBXq+Hxl41Q9D0MkV3A8QLy1+v+9sMvCAjgyuERV+XLkLMfVIp0oY+bMZMtRBl"          \
    "L9iH8G6smnqtw0adw=="
#define CAROL                                                                                      \
    "carol:$7$101$rA0DE6FHj+4lVdSW$l0fGlmH1PBMReYMP4toI4lsPAKw18f+"                                \
    "c4tpVDsCX4vLNuSGONSACuAFVbhmzKI6f"                                                            \
    "CjR40cbddn/dX0+iDIJOPw=="

static bool check(const struct passwd_db *db, const char *u, const char *pw)
{
    return passwd_check(db, u, strlen(u), pw, strlen(pw));
}

static struct passwd_db *parse_ok(const char *text)
{
    struct passwd_db *db = NULL;
    char err[256] = "";
    int r = passwd_parse(text, strlen(text), &db, err, sizeof(err));
    if (r != 0)
        fprintf(stderr, "unexpected error: %s\n", err);
    CU_ASSERT_EQUAL(r, 0);
    return db;
}

static void test_mosquitto_file_verifies(void)
{
    struct passwd_db *db = parse_ok(ALICE "\n" BOB "\r\n\n# a comment\n" CAROL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    CU_ASSERT_EQUAL(passwd_count(db), 3);
    CU_ASSERT_TRUE(check(db, "alice", "secret"));
    CU_ASSERT_TRUE(check(db, "bob", "hunter2"));
    CU_ASSERT_TRUE(check(db, "carol", "pw3"));
    CU_ASSERT_FALSE(check(db, "alice", "secreT"));
    CU_ASSERT_FALSE(check(db, "alice", "secret "));
    CU_ASSERT_FALSE(check(db, "alice", ""));
    CU_ASSERT_FALSE(check(db, "bob", "secret"));
    CU_ASSERT_FALSE(check(db, "Alice", "secret"));
    CU_ASSERT_FALSE(check(db, "dave", "secret"));
    CU_ASSERT_FALSE(passwd_check(db, "alicex", 5, "secret", 5)); /* length counts */
    CU_ASSERT_TRUE(passwd_check(db, "alicex", 5, "secret", 6));
    CU_ASSERT_FALSE(passwd_check(NULL, "alice", 5, "secret", 6));
    passwd_unref(db);
}

static void test_empty_file(void)
{
    struct passwd_db *db = parse_ok("");
    CU_ASSERT_EQUAL(passwd_count(db), 0);
    CU_ASSERT_FALSE(check(db, "alice", "secret"));
    passwd_unref(db);
}

static void expect_error(const char *text, const char *want)
{
    struct passwd_db *db = NULL;
    char err[256] = "";
    int r = passwd_parse(text, strlen(text), &db, err, sizeof(err));
    CU_ASSERT_EQUAL(r, -EINVAL);
    CU_ASSERT_PTR_NULL(db);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "got '%s', want '%s'\n", err, want);
    CU_ASSERT_STRING_EQUAL(err, want);
}

static void test_malformed_lines(void)
{
    expect_error("nocolon\n", "line 1: expected user:hash");
    expect_error(ALICE "\n:$6$abc$def\n", "line 2: expected user:hash");
    expect_error("\n\nu:plaintext\n", "line 3: the password is not a $6$ or $7$ hash");
    expect_error("u:$5$abcd$efgh\n", "line 1: the password is not a $6$ or $7$ hash");
    expect_error("u:$7$$abcd$efgh\n", "line 1: bad iteration count in the $7$ hash");
    expect_error("u:$7$0$abcd$efgh\n", "line 1: bad iteration count in the $7$ hash");
    expect_error("u:$7$99999999999$abcd$efgh\n", "line 1: bad iteration count in the $7$ hash");
    expect_error("u:$6$abcd\n", "line 1: the hash has no '$' between salt and hash");
    expect_error("u:$6$ab!d$efgh\n", "line 1: the salt is not valid base64");
    expect_error("u:$6$abc$efgh\n", "line 1: the salt is not valid base64");
    expect_error("u:$6$abcd$efgh\n", "line 1: the hash is not 64 bytes of valid base64");
    expect_error(ALICE "\n" BOB "\n" ALICE "\n", "line 3: user 'alice' already on line 1");
}

static void test_nul_byte(void)
{
    static const char text[] = "u\0x:$6$abcd$efgh\n";
    struct passwd_db *db = NULL;
    char err[64];
    CU_ASSERT_EQUAL(passwd_parse(text, sizeof(text) - 1, &db, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "line 1: NUL byte");
}

static void test_hash_make_roundtrip(void)
{
    char h[PASSWD_HASH_MAX], h2[PASSWD_HASH_MAX];
    CU_ASSERT_EQUAL(passwd_hash_make("p4ss", 4, PASSWD_ITERATIONS, h, sizeof(h)), 0);
    CU_ASSERT_EQUAL(strncmp(h, "$7$1000$", 8), 0);
    /* 12-byte salt = 16 base64 characters, 64-byte hash = 88. */
    CU_ASSERT_EQUAL(strlen(h), 8 + 16 + 1 + 88);
    CU_ASSERT_EQUAL(passwd_hash_verify(h, "p4ss", 4), 1);
    CU_ASSERT_EQUAL(passwd_hash_verify(h, "p4sS", 4), 0);
    CU_ASSERT_EQUAL(passwd_hash_make("p4ss", 4, PASSWD_ITERATIONS, h2, sizeof(h2)), 0);
    CU_ASSERT_NOT_EQUAL(strcmp(h, h2), 0); /* random salt */
    CU_ASSERT_EQUAL(passwd_hash_make_sha512("p4ss", 4, h2, sizeof(h2)), 0);
    CU_ASSERT_EQUAL(strncmp(h2, "$6$", 3), 0);
    CU_ASSERT_EQUAL(passwd_hash_verify(h2, "p4ss", 4), 1);
    CU_ASSERT_EQUAL(passwd_hash_verify(h2, "p4ss!", 5), 0);
    CU_ASSERT_EQUAL(passwd_hash_make("p", 1, 1000, h, 10), -EINVAL);
    CU_ASSERT_EQUAL(passwd_hash_make("p", 1, 0, h, sizeof(h)), -EINVAL);
    CU_ASSERT_EQUAL(passwd_hash_verify("$6$garbage", "p", 1), -EINVAL);
}

static void test_load_file(void)
{
    char path[] = "/tmp/test_passwd_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(BOB "\n" CAROL "\nbroken\n", f);
    fclose(f);
    struct passwd_db *db = NULL;
    char err[512], want[512];
    CU_ASSERT_EQUAL(passwd_load(path, &db, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "%s: line 3: expected user:hash", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    f = fopen(path, "w");
    fputs(BOB "\n" CAROL "\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(passwd_load(path, &db, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(check(db, "carol", "pw3"));
    /* A reader's reference outlives the loader's. */
    struct passwd_db *reader = passwd_ref(db);
    passwd_unref(db);
    CU_ASSERT_TRUE(check(reader, "bob", "hunter2"));
    passwd_unref(reader);
    unlink(path);
    CU_ASSERT_EQUAL(passwd_load(path, &db, err, sizeof(err)), -ENOENT);
    snprintf(want, sizeof(want), "%s: No such file or directory", path);
    CU_ASSERT_STRING_EQUAL(err, want);
}

/* starling passwd -c / -b / -D on a scratch file, read back with passwd_load. */
static void test_passwd_main(void)
{
    char dir[] = "/tmp/test_passwd_dir_XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof(path), "%s/pw", dir);
    char *a1[] = {"passwd", "-c", "-b", path, "u1", "one", NULL};
    CU_ASSERT_EQUAL(passwd_main(6, a1), 0);
    char *a2[] = {"passwd", "-b", path, "u2", "two", NULL};
    CU_ASSERT_EQUAL(passwd_main(5, a2), 0);
    char *a3[] = {"passwd", "-H", "sha512", "-b", path, "u1", "uno", NULL};
    CU_ASSERT_EQUAL(passwd_main(7, a3), 0);
    struct passwd_db *db = NULL;
    char err[512];
    CU_ASSERT_EQUAL_FATAL(passwd_load(path, &db, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(passwd_count(db), 2);
    CU_ASSERT_TRUE(check(db, "u1", "uno"));
    CU_ASSERT_FALSE(check(db, "u1", "one"));
    CU_ASSERT_TRUE(check(db, "u2", "two"));
    passwd_unref(db);
    char *a4[] = {"passwd", "-D", path, "u1", NULL};
    CU_ASSERT_EQUAL(passwd_main(4, a4), 0);
    CU_ASSERT_EQUAL(passwd_main(4, a4), 1); /* not there any more */
    CU_ASSERT_EQUAL_FATAL(passwd_load(path, &db, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(passwd_count(db), 1);
    CU_ASSERT_TRUE(check(db, "u2", "two"));
    passwd_unref(db);
    char *bad1[] = {"passwd", "-c", "-D", path, "u2", NULL};
    CU_ASSERT_EQUAL(passwd_main(5, bad1), 2);
    char *bad2[] = {"passwd", "-b", path, "a:b", "x", NULL};
    CU_ASSERT_EQUAL(passwd_main(5, bad2), 1);
    char *bad3[] = {"passwd", "-b", path, "u3", NULL};
    CU_ASSERT_EQUAL(passwd_main(4, bad3), 2);
    unlink(path);
    rmdir(dir);
}

/* Files written now by the real mosquitto_passwd, every hash option. */
static void test_live_mosquitto_passwd(void)
{
    char dir[] = "/tmp/test_passwd_mq_XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    char cmd[1024], path[256];
    snprintf(path, sizeof(path), "%s/pw", dir);
    snprintf(cmd, sizeof(cmd),
             "mosquitto_passwd -c -b %s/pw u7 'pass word:7' && "
             "mosquitto_passwd -H sha512 -b %s/pw u6 'p6$x' && "
             "mosquitto_passwd -H sha512-pbkdf2 -b %s/pw u7b '\xc3\xa9t\xc3\xa9'",
             dir, dir, dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    struct passwd_db *db = NULL;
    char err[512] = "";
    CU_ASSERT_EQUAL_FATAL(passwd_load(path, &db, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(passwd_count(db), 3);
    CU_ASSERT_TRUE(check(db, "u7", "pass word:7"));
    CU_ASSERT_TRUE(check(db, "u6", "p6$x"));
    CU_ASSERT_TRUE(check(db, "u7b", "\xc3\xa9t\xc3\xa9"));
    CU_ASSERT_FALSE(check(db, "u7", "pass word"));
    CU_ASSERT_FALSE(check(db, "u6", "p6"));
    passwd_unref(db);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("passwd", NULL, NULL);
    CU_add_test(s, "mosquitto_file_verifies", test_mosquitto_file_verifies);
    CU_add_test(s, "empty_file", test_empty_file);
    CU_add_test(s, "malformed_lines", test_malformed_lines);
    CU_add_test(s, "nul_byte", test_nul_byte);
    CU_add_test(s, "hash_make_roundtrip", test_hash_make_roundtrip);
    CU_add_test(s, "load_file", test_load_file);
    CU_add_test(s, "passwd_main", test_passwd_main);
    CU_add_test(s, "live_mosquitto_passwd", test_live_mosquitto_passwd);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
