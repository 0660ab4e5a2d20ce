/*
 * test_store.c - the LMDB store: round trips of every record type through
 * submit + flush + close + reopen + load, message order, session deletion,
 * retained messages, long ids and topics, format version, corrupt and
 * unwritable directories, map growth and its limit, group commit, sync
 * modes, poisoned batches, and a full disk (tmpfs, root only).
 *
 * Usage: test_store [SUITE]: every suite, or only "store" or "disk_full".
 * ctest runs each suite as its own test; "disk_full" needs root to mount a
 * tmpfs and exits with 77 (ctest: skipped) when it cannot. Temporary
 * directories go under $TMPDIR (default /tmp) and are removed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

#include "store.h"

/* ---- helpers ---- */

static void rm_rf(const char *dir)
{
    test_rm_tree(dir);
}

/* Set by a test that could not run; main() then exits with 77. */
static int g_skipped;

static char *tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *d = NULL;
    if (asprintf(&d, "%s/test_store.XXXXXX", base && *base ? base : "/tmp") < 0)
        d = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(d));
    return d;
}

static struct store *open_store_r(const char *dir, uint64_t map_size, uint64_t max_map_size,
                                  uint64_t reserve)
{
    struct store_options o = {.dir = dir,
                              .map_size = map_size,
                              .max_map_size = max_map_size,
                              .reserve_size = reserve,
                              .sync = STORE_SYNC_ALWAYS};
    struct store *s = NULL;
    char err[512];
    int rc = store_open(&s, &o, err, sizeof(err));
    if (rc)
        fprintf(stderr, "store_open: %d %s\n", rc, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return s;
}

static struct store *open_store(const char *dir, uint64_t map_size, uint64_t max_map_size)
{
    return open_store_r(dir, map_size, max_map_size, 0);
}

static void set_status(void *ud, int status)
{
    *(int *)ud = status;
}

/* Submit b, wait for its commit, return its status. */
static int commit(struct store *s, struct store_batch *b)
{
    int st = 1;
    store_submit(s, b, set_status, &st);
    store_flush(s);
    return st;
}

static struct msg *mkmsg(const char *topic, size_t topic_len, uint32_t payload_len, uint64_t salt,
                         const char *props, uint8_t qos, bool retain, uint64_t expiry)
{
    uint8_t *payload = malloc(payload_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    for (uint32_t i = 0; i < payload_len; i++)
        payload[i] = (uint8_t)(salt * 31 + i * 7);
    struct msg *m = msg_new(topic, (uint16_t)topic_len, payload, payload_len, props,
                            props ? (uint32_t)strlen(props) : 0, qos, retain, expiry, NULL);
    free(payload);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    return m;
}

/* Canonical text of records: what is stored must come back identical. */
static void put_bytes(FILE *f, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
}

static void put_msg(FILE *f, const struct msg *m)
{
    fprintf(f, " m{q%u r%d e%llu t=", m->qos, m->retain, (unsigned long long)m->expiry_at);
    fwrite(msg_topic(m), 1, m->topic_len, f);
    fprintf(f, " p=");
    put_bytes(f, msg_payload(m), m->payload_len);
    fprintf(f, " pr=");
    put_bytes(f, msg_props(m), m->props_len);
    fprintf(f, "}");
}

static char *desc_session(const char *id, uint16_t len, const struct store_session *r)
{
    char *s;
    size_t n;
    FILE *f = open_memstream(&s, &n);
    fprintf(f, "S %u:", len);
    fwrite(id, 1, len, f);
    fprintf(f, " v%u x%u d%llu n%u", r->version, r->expiry_interval,
            (unsigned long long)r->disconnected_at_ms, r->n_subs);
    for (uint32_t i = 0; i < r->n_subs; i++) {
        fprintf(f, " [");
        fwrite(r->subs[i].filter, 1, r->subs[i].len, f);
        fprintf(f, " o%u i%u]", r->subs[i].options, r->subs[i].sub_id);
    }
    if (r->user) {
        fprintf(f, " u%u:", r->user_len);
        fwrite(r->user, 1, r->user_len, f);
    } else {
        fprintf(f, " anonymous");
    }
    for (uint32_t i = 0; i < r->n_seen; i++)
        fprintf(f, " seen %llx:%llu-%llu", (unsigned long long)r->seen[i].node,
                (unsigned long long)r->seen[i].lo, (unsigned long long)r->seen[i].hi);
    if (r->epoch)
        fprintf(f, " epoch %llu", (unsigned long long)r->epoch);
    if (r->wait_until_ms) {
        fprintf(f, " wait %llx/%llu until %llu %s", (unsigned long long)r->wait_node,
                (unsigned long long)r->wait_epoch, (unsigned long long)r->wait_until_ms,
                r->wait_told ? "told" : "released");
        for (uint32_t i = 0; i < r->n_wait_ids; i++)
            fprintf(f, " %u", r->wait_ids[i]);
    }
    fclose(f);
    return s;
}

static char *desc_msg(const char *id, uint16_t len, uint64_t seq, const struct store_msg *r)
{
    char *s;
    size_t n;
    FILE *f = open_memstream(&s, &n);
    fprintf(f, "M %u:", len);
    fwrite(id, 1, len, f);
    fprintf(f, " #%llu s%u p%u q%u r%d ids", (unsigned long long)seq, r->state, r->pid, r->qos,
            r->retain);
    for (uint16_t i = 0; i < r->n_ids; i++)
        fprintf(f, ",%u", r->ids[i]);
    put_msg(f, r->m);
    if (r->m->id_node || r->m->id_seq)
        fprintf(f, " id %llx/%llu", (unsigned long long)r->m->id_node,
                (unsigned long long)r->m->id_seq);
    if (r->m->route_index)
        fprintf(f, " routed %llu", (unsigned long long)r->m->route_index);
    if (r->m->n_also_to == MSG_ALSO_TO_MANY)
        fprintf(f, " also many");
    for (uint8_t i = 0; i < r->m->n_also_to && i < MSG_ALSO_TO_MAX; i++)
        fprintf(f, "%s%llx", i ? "," : " also ", (unsigned long long)r->m->also_to[i]);
    fclose(f);
    return s;
}

static char *desc_qos2(const char *id, uint16_t len, uint16_t pid)
{
    char *s;
    size_t n;
    FILE *f = open_memstream(&s, &n);
    fprintf(f, "Q %u:", len);
    fwrite(id, 1, len, f);
    fprintf(f, " %u", pid);
    fclose(f);
    return s;
}

static char *desc_retained(const struct msg *m)
{
    char *s;
    size_t n;
    FILE *f = open_memstream(&s, &n);
    fprintf(f, "R");
    put_msg(f, m);
    fclose(f);
    return s;
}

/* A list of descriptions. */
struct list {
    char **v;
    size_t n, cap;
};

static void list_add(struct list *l, char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof(char *));
        CU_ASSERT_PTR_NOT_NULL_FATAL(l->v);
    }
    l->v[l->n++] = s;
}

static void list_free(struct list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static void list_sort(struct list *l);

/* Loader callbacks that record what they see. */
static int ld_session(void *ud, const char *id, uint16_t len, const struct store_session *rec)
{
    list_add(ud, desc_session(id, len, rec));
    return 0;
}
static int ld_msg(void *ud, const char *id, uint16_t len, uint64_t seq, const struct store_msg *r)
{
    list_add(ud, desc_msg(id, len, seq, r));
    return 0;
}
static int ld_qos2(void *ud, const char *id, uint16_t len, uint16_t pid)
{
    list_add(ud, desc_qos2(id, len, pid));
    return 0;
}
static int ld_retained(void *ud, struct msg *m)
{
    list_add(ud, desc_retained(m));
    return 0;
}

static void load_all(struct store *s, struct list *out)
{
    struct store_loader l = {out, ld_session, ld_msg, ld_qos2, ld_retained};
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
}

/* Exact equality, order included. */
static void check_lists(const struct list *want, const struct list *got)
{
    CU_ASSERT_EQUAL(want->n, got->n);
    for (size_t i = 0; i < want->n && i < got->n; i++) {
        if (strcmp(want->v[i], got->v[i]) != 0) {
            fprintf(stderr, "\nrecord %zu differs:\n want %.200s\n got  %.200s\n", i, want->v[i],
                    got->v[i]);
            CU_FAIL("record differs");
            return;
        }
    }
}

/* Close, reopen and load: returns the new store. */
static struct store *reopen(struct store *s, const char *dir, struct list *got)
{
    store_close(s);
    s = open_store(dir, 0, 0);
    load_all(s, got);
    return s;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_sort(struct list *l)
{
    qsort(l->v, l->n, sizeof(char *), cmp_str);
}

#define ID(x) (x), (uint16_t)strlen(x)

/* ---- tests ---- */

static void test_roundtrip(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct list want = {0}, got = {0};

    struct store_sub subs[] = {{"a/+/c", 5, 0x21, 7}, {"#", 1, 2, 0}, {"$share/g/x", 10, 1, 0}};
    /* the message identities a moved session got (record version 3) */
    struct store_seen seen[] = {{0x1122334455667788ull, 1, 40}, {0xffffffffffffffffull, 7, 7}};
    /* and the epoch of its cluster claim (record version 4) */
    struct store_session s1 = {.version = 5,
                               .expiry_interval = 3600,
                               .disconnected_at_ms = 1234567890123ull,
                               .n_subs = 3,
                               .subs = subs,
                               .user = "alice",
                               .user_len = 5,
                               .n_seen = 2,
                               .seen = seen,
                               .epoch = 1ull << 50};
    struct store_session s2 = {4, 0, 0, 0, NULL, NULL, 0, 0, NULL, 0, 0, 0, 0, false, 0, NULL};
    /* an empty user name is one */
    struct store_session s3 = {4, 0, 0, 0, NULL, "", 0, 0, NULL, 7, 0, 0, 0, false, 0, NULL};
    /* and its wait for an old owner's QoS 2 ids (record version 5): the ids
     * told, and those released while not told; none without a wait */
    static const uint16_t wait_ids[] = {1, 65535, 300};
    s1.wait_until_ms = 1234567899999ull;
    s1.wait_node = 0xfedcba9876543210ull;
    s1.wait_epoch = 1ull << 40;
    s1.wait_told = true;
    s1.n_wait_ids = 3;
    s1.wait_ids = wait_ids;
    s3.wait_until_ms = 1;
    s3.wait_node = 2;
    s3.n_wait_ids = 1;
    s3.wait_ids = wait_ids + 2;
    s2.n_wait_ids = 3; /* not written: no wait */
    s2.wait_ids = wait_ids;
    uint32_t ids[] = {1, 268435455, 42};
    struct msg *m1 = mkmsg(ID("t/1"), 100, 1, "\x01\x00\x00\x00\x01", 1, false, 0);
    struct msg *m2 = mkmsg(ID("t/2"), 0, 2, NULL, 2, true, 99999999999ull);
    struct msg *m3 = mkmsg(ID("t/3"), 70000, 3, NULL, 2, false, 0);
    /* a message's cluster identity (record version 2) */
    m1->id_node = 0xabcdef0123456789ull;
    m1->id_seq = 1ull << 40;
    m3->id_node = 5;
    m3->id_seq = 9;
    /* and its route table index (record version 3) */
    m1->route_index = 0x0102030405060708ull;
    m3->route_index = 1;
    /* and the other nodes its origin forwarded it to (record version 4):
     * as many as are kept, and more than that (none listed) */
    m1->n_also_to = MSG_ALSO_TO_MAX;
    m1->also_to[0] = 0xfedcba9876543210ull;
    m1->also_to[1] = 3;
    m3->n_also_to = MSG_ALSO_TO_MANY;
    struct store_msg r1 = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m1};
    struct store_msg r2 = {MSG_STATE_WAIT_PUBREC, 65535, 2, true, 3, ids, m2};
    struct store_msg r3 = {MSG_STATE_WAIT_PUBCOMP, 9, 1, false, 1, ids, m3};
    struct msg *rm = mkmsg(ID("sport/score"), 10, 4, "\x03\x00\x04text", 1, true, 5);

    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_put(b, ID("client-1"), &s1), 0);
    CU_ASSERT_EQUAL(store_session_put(b, ID("c2"), &s2), 0);
    CU_ASSERT_EQUAL(store_session_put(b, "", 0, &s2), 0);
    CU_ASSERT_EQUAL(store_session_put(b, ID("c3"), &s3), 0);
    CU_ASSERT_EQUAL(store_msg_put(b, ID("client-1"), 1, &r1), 0);
    CU_ASSERT_EQUAL(store_msg_put(b, ID("client-1"), 2, &r2), 0);
    CU_ASSERT_EQUAL(store_msg_put(b, ID("c2"), 5, &r3), 0);
    CU_ASSERT_EQUAL(store_qos2_put(b, ID("client-1"), 77), 0);
    CU_ASSERT_EQUAL(store_qos2_put(b, ID("c2"), 1), 0);
    CU_ASSERT_EQUAL(store_retained_put(b, rm), 0);
    CU_ASSERT_EQUAL(store_batch_ops(b), 10);
    CU_ASSERT_EQUAL(commit(s, b), 0);

    /* Load order: sessions by (id length, id), then messages, qos2, retained. */
    s2.n_wait_ids = 0;
    s2.wait_ids = NULL;
    list_add(&want, desc_session("", 0, &s2));
    list_add(&want, desc_session(ID("c2"), &s2));
    list_add(&want, desc_session(ID("c3"), &s3));
    list_add(&want, desc_session(ID("client-1"), &s1));
    list_add(&want, desc_msg(ID("c2"), 5, &r3));
    list_add(&want, desc_msg(ID("client-1"), 1, &r1));
    list_add(&want, desc_msg(ID("client-1"), 2, &r2));
    list_add(&want, desc_qos2(ID("c2"), 1));
    list_add(&want, desc_qos2(ID("client-1"), 77));
    list_add(&want, desc_retained(rm));

    /* Same content before and after a reopen. */
    load_all(s, &got);
    check_lists(&want, &got);
    list_free(&got);
    s = reopen(s, dir, &got);
    check_lists(&want, &got);
    list_free(&got);

    /* Deletions of single records; absent keys are not errors. */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(b, ID("client-1"), 1), 0);
    CU_ASSERT_EQUAL(store_qos2_del(b, ID("c2"), 1), 0);
    CU_ASSERT_EQUAL(store_msg_del(b, ID("nobody"), 1), 0);
    CU_ASSERT_EQUAL(store_qos2_del(b, ID("nobody"), 1), 0);
    CU_ASSERT_EQUAL(store_retained_del(b, ID("no/such/topic")), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, want.n - 2);
    CU_ASSERT_PTR_NULL(strstr(got.v[4], "#1 "));
    list_free(&got);

    struct store_stats st;
    store_get_stats(s, &st);
    CU_ASSERT_EQUAL(st.commits, 0); /* counters restart with each open */
    store_close(s);
    msg_unref(m1);
    msg_unref(m2);
    msg_unref(m3);
    msg_unref(rm);
    list_free(&want);
    rm_rf(dir);
    free(dir);
}

static void test_msg_order(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct list want = {0}, got = {0};
    /* seqs chosen to cross byte boundaries, inserted out of order */
    uint64_t seqs[] = {256, 1, 255, 1ull << 32, 65536, 0, UINT64_MAX, 2, 65535};
    uint64_t sorted[] = {0, 1, 2, 255, 256, 65535, 65536, 1ull << 32, UINT64_MAX};
    struct msg *m = mkmsg(ID("o"), 3, 0, NULL, 1, false, 0);
    struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m};
    for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        struct store_batch *b = store_batch_new();
        /* "a" and "ab": one id is a prefix of the other */
        CU_ASSERT_EQUAL(store_msg_put(b, ID("ab"), seqs[i], &r), 0);
        CU_ASSERT_EQUAL(store_msg_put(b, ID("a"), seqs[i], &r), 0);
        store_submit(s, b, NULL, NULL);
    }
    for (size_t i = 0; i < 9; i++)
        list_add(&want, desc_msg(ID("a"), sorted[i], &r));
    for (size_t i = 0; i < 9; i++)
        list_add(&want, desc_msg(ID("ab"), sorted[i], &r));
    s = reopen(s, dir, &got);
    check_lists(&want, &got);
    list_free(&got);
    list_free(&want);
    msg_unref(m);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static void test_session_del(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct list got = {0};
    struct store_session rec = {5, 60, 0, 0, NULL, NULL, 0, 0, NULL, 0, 0, 0, 0, false, 0, NULL};
    struct msg *m = mkmsg(ID("x"), 3, 0, NULL, 1, false, 0);
    struct store_msg r = {MSG_STATE_WAIT_PUBACK, 1, 1, false, 0, NULL, m};
    const char *idv[] = {"a", "ab", "b", "a\x01"};
    struct store_batch *b = store_batch_new();
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(store_session_put(b, ID(idv[i]), &rec), 0);
        for (uint64_t q = 0; q < 50; q++)
            CU_ASSERT_EQUAL(store_msg_put(b, ID(idv[i]), q, &r), 0);
        CU_ASSERT_EQUAL(store_qos2_put(b, ID(idv[i]), 1), 0);
        CU_ASSERT_EQUAL(store_qos2_put(b, ID(idv[i]), 65535), 0);
    }
    CU_ASSERT_EQUAL(commit(s, b), 0);

    b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_del(b, ID("a")), 0);
    CU_ASSERT_EQUAL(store_session_del(b, ID("never")), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 3 * (1 + 50 + 2));
    for (size_t i = 0; i < got.n; i++)
        CU_ASSERT_PTR_NULL(strstr(got.v[i], " 1:a "));
    list_free(&got);

    /* A session deleted and recreated in one batch keeps only what follows. */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_del(b, ID("ab")), 0);
    CU_ASSERT_EQUAL(store_session_put(b, ID("ab"), &rec), 0);
    CU_ASSERT_EQUAL(store_msg_put(b, ID("ab"), 1000, &r), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 2 * (1 + 50 + 2) + 2);
    list_free(&got);

    msg_unref(m);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static void test_retained(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct list want = {0}, got = {0};
    struct msg *a1 = mkmsg(ID("r/a"), 10, 1, NULL, 1, true, 0);
    struct msg *a2 = mkmsg(ID("r/a"), 20, 2, "\x26\x00\x01k\x00\x01v", 2, true, 0);
    struct msg *b1 = mkmsg(ID("r/b"), 5, 3, NULL, 0, true, 0);
    struct msg *c1 = mkmsg(ID("r/c"), 5, 4, NULL, 0, true, 0);

    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_retained_put(b, a1), 0);
    CU_ASSERT_EQUAL(store_retained_put(b, b1), 0);
    CU_ASSERT_EQUAL(store_retained_put(b, c1), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_retained_put(b, a2), 0); /* replace */
    CU_ASSERT_EQUAL(store_retained_del(b, ID("r/b")), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    list_add(&want, desc_retained(a2));
    list_add(&want, desc_retained(c1));
    s = reopen(s, dir, &got);
    check_lists(&want, &got);
    list_free(&got);
    list_free(&want);

    /* A put then a delete in the same batch: the delete wins. */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_retained_put(b, b1), 0);
    CU_ASSERT_EQUAL(store_retained_del(b, ID("r/b")), 0);
    CU_ASSERT_EQUAL(store_retained_del(b, ID("r/c")), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    list_add(&want, desc_retained(a2));
    s = reopen(s, dir, &got);
    check_lists(&want, &got);
    list_free(&got);
    list_free(&want);

    /* A retained message needs a topic. */
    struct msg *empty = msg_new("", 0, "x", 1, NULL, 0, 0, true, 0, NULL);
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_retained_put(b, empty), -EINVAL);
    store_batch_free(b);
    msg_unref(empty);

    msg_unref(a1);
    msg_unref(a2);
    msg_unref(b1);
    msg_unref(c1);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static char *long_str(size_t n, char fill, char last)
{
    char *s = malloc(n + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    memset(s, fill, n);
    s[n - 1] = last;
    s[n] = 0;
    return s;
}

static void test_long_keys(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct list want = {0}, got = {0};
    /* Ids around the inline limit, 1000 bytes twice with a common prefix, and
     * the longest possible. */
    char *id400 = long_str(400, 'i', 'A');
    char *id401 = long_str(401, 'i', 'B');
    char *id1k_a = long_str(1000, 'c', 'a');
    char *id1k_b = long_str(1000, 'c', 'b');
    char *id64k = long_str(65535, 'z', 'Z');
    char *ids[] = {id400, id401, id1k_a, id1k_b, id64k};
    char *t1 = long_str(1500, 't', 'x');
    char *t2 = long_str(1500, 't', 'y');
    char *filter = long_str(3000, 'f', '#');

    struct store_sub sub = {filter, 3000, 1, 0};
    struct store_session rec = {5, 10, 0, 1, &sub, NULL, 0, 0, NULL, 0, 0, 0, 0, false, 0, NULL};
    struct msg *m = mkmsg(t1, 1500, 50, 9, NULL, 1, false, 0);
    struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m};
    struct msg *rt1 = mkmsg(t1, 1500, 5, 1, NULL, 1, true, 0);
    struct msg *rt2 = mkmsg(t2, 1500, 5, 2, NULL, 1, true, 0);

    struct store_batch *b = store_batch_new();
    for (int i = 0; i < 5; i++) {
        uint16_t len = (uint16_t)strlen(ids[i]);
        CU_ASSERT_EQUAL(store_session_put(b, ids[i], len, &rec), 0);
        CU_ASSERT_EQUAL(store_msg_put(b, ids[i], len, 1, &r), 0);
        CU_ASSERT_EQUAL(store_msg_put(b, ids[i], len, 2, &r), 0);
        CU_ASSERT_EQUAL(store_qos2_put(b, ids[i], len, 3), 0);
    }
    CU_ASSERT_EQUAL(store_retained_put(b, rt1), 0);
    CU_ASSERT_EQUAL(store_retained_put(b, rt2), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);

    for (int i = 0; i < 5; i++) {
        uint16_t len = (uint16_t)strlen(ids[i]);
        list_add(&want, desc_session(ids[i], len, &rec));
        list_add(&want, desc_msg(ids[i], len, 1, &r));
        list_add(&want, desc_msg(ids[i], len, 2, &r));
        list_add(&want, desc_qos2(ids[i], len, 3));
    }
    list_add(&want, desc_retained(rt1));
    list_add(&want, desc_retained(rt2));
    s = reopen(s, dir, &got);
    /* Hashed keys do not sort like the ids: compare as sets. */
    list_sort(&want);
    list_sort(&got);
    check_lists(&want, &got);
    list_free(&got);
    list_free(&want);

    /* Deleting one long-id session leaves its twin alone; retained long
     * topics delete by topic. */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_del(b, id1k_a, 1000), 0);
    CU_ASSERT_EQUAL(store_msg_del(b, id64k, 65535, 1), 0);
    CU_ASSERT_EQUAL(store_retained_del(b, t2, 1500), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    for (int i = 0; i < 5; i++) {
        uint16_t len = (uint16_t)strlen(ids[i]);
        if (ids[i] == id1k_a)
            continue;
        list_add(&want, desc_session(ids[i], len, &rec));
        if (ids[i] != id64k)
            list_add(&want, desc_msg(ids[i], len, 1, &r));
        list_add(&want, desc_msg(ids[i], len, 2, &r));
        list_add(&want, desc_qos2(ids[i], len, 3));
    }
    list_add(&want, desc_retained(rt1));
    s = reopen(s, dir, &got);
    list_sort(&want);
    list_sort(&got);
    check_lists(&want, &got);
    list_free(&got);
    list_free(&want);

    for (int i = 0; i < 5; i++)
        free(ids[i]);
    free(t1);
    free(t2);
    free(filter);
    msg_unref(m);
    msg_unref(rt1);
    msg_unref(rt2);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void test_format_version(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    store_close(s);

    /* Write format 2 with raw LMDB. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CU_ASSERT_EQUAL_FATAL(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, dir, 0, 0600), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    MDB_val k = {6, "format"}, v = {4, "\x02\x00\x00\x00"};
    CU_ASSERT_EQUAL_FATAL(mdb_put(txn, dbi, &k, &v, 0), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    char path[256];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    size_t n1, n2;
    char *before = read_file(path, &n1);
    struct store_options o = {.dir = dir, .sync = STORE_SYNC_ALWAYS};
    char err[512] = "";
    s = NULL;
    CU_ASSERT_EQUAL(store_open(&s, &o, err, sizeof(err)), -EPROTO);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "unknown storage format version 2 (this build reads 1)"));
    CU_ASSERT_EQUAL(strncmp(err, dir, strlen(dir)), 0);
    char *after = read_file(path, &n2);
    CU_ASSERT_EQUAL(n1, n2);
    CU_ASSERT(n1 == n2 && memcmp(before, after, n1) == 0);
    free(before);
    free(after);

    /* An LMDB environment that is not a store is refused too. */
    char dir2[300];
    snprintf(dir2, sizeof(dir2), "%s/other", dir);
    mkdir(dir2, 0700);
    CU_ASSERT_EQUAL_FATAL(mdb_env_create(&env), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, dir2, 0, 0600), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k2 = {3, "foo"}, v2 = {3, "bar"};
    CU_ASSERT_EQUAL_FATAL(mdb_put(txn, dbi, &k2, &v2, 0), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    o.dir = dir2;
    CU_ASSERT_EQUAL(store_open(&s, &o, err, sizeof(err)), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a Starling store"));

    rm_rf(dir);
    free(dir);
}

/* Put one raw value into table db of the store in dir. */
static void raw_put(const char *dir, const char *db, const void *key, size_t klen, const void *val,
                    size_t vlen)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CU_ASSERT_EQUAL_FATAL(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, dir, 0, 0600), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    CU_ASSERT_EQUAL_FATAL(mdb_put(txn, dbi, &k, &v, 0), 0);
    CU_ASSERT_EQUAL_FATAL(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* A session record of version 1 (before the user name was stored) loads,
 * anonymous, and a message record of version 1 (before the message identity
 * was stored) without an identity; one of a version this build does not
 * know is refused. */
static void test_session_record_v1(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    store_close(s);
    /* idkey("old"); v1: version 4, expiry 60, connected, one subscription
     * "a/#" QoS 1, no subscription id */
    static const unsigned char key[] = "\x00\x03old";
    static const unsigned char v1[] = "\x01\x04\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                      "\x01\x00\x00\x00\x03\x00\x01\x00\x00\x00\x00"
                                      "a/#"; /* a literal of its own: "\x00a" is one byte */
    raw_put(dir, "sessions", key, sizeof(key) - 1, v1, sizeof(v1) - 1);
    /* a message record of version 1 (before the message identity was
     * stored): seq 1, queued, QoS 1, topic "t", payload "x" */
    static const unsigned char mkey[] = "\x00\x03old\x00\x00\x00\x00\x00\x00\x00\x01";
    static const unsigned char m1[] = "\x01\x00\x00\x00\x01\x00\x00\x00"
                                      "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                      "\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                                      "tx";
    raw_put(dir, "msgs", mkey, sizeof(mkey) - 1, m1, sizeof(m1) - 1);
    struct list got = {0};
    s = open_store(dir, 0, 0);
    load_all(s, &got);
    CU_ASSERT_EQUAL(got.n, 2);
    if (got.n == 2) {
        CU_ASSERT_STRING_EQUAL(got.v[0], "S 3:old v4 x60 d0 n1 [a/# o1 i0] anonymous");
        /* read, without an identity */
        CU_ASSERT_PTR_NOT_NULL(strstr(got.v[1], "M 3:old #1 s0 p0 q1 r0 ids"));
        CU_ASSERT_PTR_NULL(strstr(got.v[1], " id "));
    }
    list_free(&got);
    struct store_batch *d = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(d, "old", 3, 1), 0);
    CU_ASSERT_EQUAL(commit(s, d), 0);
    /* written again by this build: version 4, with the user name and the
     * claim's epoch */
    struct store_sub sub = {"a/#", 3, 1, 0};
    struct store_session rec = {4, 60, 0, 1, &sub, "bob", 3, 0, NULL, 12, 0, 0, 0, false, 0, NULL};
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_put(b, "old", 3, &rec), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 1);
    if (got.n == 1)
        CU_ASSERT_STRING_EQUAL(got.v[0], "S 3:old v4 x60 d0 n1 [a/# o1 i0] u3:bob epoch 12");
    list_free(&got);
    store_close(s);

    /* version 6 is unknown: refused, not misread */
    unsigned char v6[sizeof(v1)];
    memcpy(v6, v1, sizeof(v1));
    v6[0] = 6;
    raw_put(dir, "sessions", key, sizeof(key) - 1, v6, sizeof(v6) - 1);
    struct store_options o = {.dir = dir, .sync = STORE_SYNC_ALWAYS};
    char err[512] = "";
    CU_ASSERT_EQUAL_FATAL(store_open(&s, &o, err, sizeof(err)), 0);
    struct store_loader l = {
        .ud = &got, .session = ld_session, .msg = ld_msg, .qos2 = ld_qos2, .retained = ld_retained};
    CU_ASSERT_EQUAL(store_load(s, &l), -EPROTO);
    list_free(&got);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

/* A session record of version 3 (before the claim's epoch was stored)
 * loads with epoch 0 (not known), and a message record of version 2
 * (before its route table index was stored) with route_index 0. */
static void test_records_before_the_claim_epoch(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    store_close(s);
    /* idkey("old"); v3: version 5, expiry 60, connected, one subscription
     * "a/#" QoS 1, no user, one identity range (node 2, 3..4) */
    static const unsigned char key[] = "\x00\x03old";
    static const unsigned char v3[] = "\x03\x05\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                      "\x01\x00\x00\x00\x03\x00\x01\x00\x00\x00\x00"
                                      "a/#"
                                      "\x00\x01\x00\x00\x00"
                                      "\x02\x00\x00\x00\x00\x00\x00\x00"
                                      "\x03\x00\x00\x00\x00\x00\x00\x00"
                                      "\x04\x00\x00\x00\x00\x00\x00\x00";
    raw_put(dir, "sessions", key, sizeof(key) - 1, v3, sizeof(v3) - 1);
    /* v2: seq 1, queued, QoS 1, topic "t", payload "x", identity 9/8 */
    static const unsigned char mkey[] = "\x00\x03old\x00\x00\x00\x00\x00\x00\x00\x01";
    static const unsigned char m2[] = "\x02\x00\x00\x00\x01\x00\x00\x00"
                                      "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                      "\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                                      "tx"
                                      "\x09\x00\x00\x00\x00\x00\x00\x00"
                                      "\x08\x00\x00\x00\x00\x00\x00\x00";
    raw_put(dir, "msgs", mkey, sizeof(mkey) - 1, m2, sizeof(m2) - 1);
    struct list got = {0};
    s = open_store(dir, 0, 0);
    load_all(s, &got);
    CU_ASSERT_EQUAL(got.n, 2);
    if (got.n == 2) {
        CU_ASSERT_STRING_EQUAL(got.v[0], "S 3:old v5 x60 d0 n1 [a/# o1 i0] anonymous seen 2:3-4");
        CU_ASSERT_PTR_NOT_NULL(strstr(got.v[1], "M 3:old #1 s0 p0 q1 r0 ids"));
        CU_ASSERT_PTR_NOT_NULL(strstr(got.v[1], " id 9/8"));
        CU_ASSERT_PTR_NULL(strstr(got.v[1], " routed "));
        CU_ASSERT_PTR_NULL(strstr(got.v[1], " also "));
    }
    list_free(&got);
    /* written again by this build: both kept */
    struct store_sub sub = {"a/#", 3, 1, 0};
    struct store_session rec = {5, 60, 0, 1, &sub, NULL, 0, 0, NULL, 41, 0, 0, 0, false, 0, NULL};
    struct msg *m = mkmsg(ID("t"), 1, 'x', NULL, 1, false, 0);
    m->id_node = 9;
    m->id_seq = 8;
    m->route_index = 1234;
    m->n_also_to = 1;
    m->also_to[0] = 0x11;
    struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m};
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_session_put(b, "old", 3, &rec), 0);
    CU_ASSERT_EQUAL(store_msg_put(b, "old", 3, 1, &r), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 2);
    if (got.n == 2) {
        CU_ASSERT_STRING_EQUAL(got.v[0], "S 3:old v5 x60 d0 n1 [a/# o1 i0] anonymous epoch 41");
        CU_ASSERT_PTR_NOT_NULL(strstr(got.v[1], " id 9/8 routed 1234 also 11"));
    }
    list_free(&got);
    msg_unref(m);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

/* Open the store in dir (its records written raw) and load every record
 * into got: store_load's result. */
static int load_raw(const char *dir, struct list *got)
{
    struct store_options o = {.dir = dir, .sync = STORE_SYNC_ALWAYS};
    char err[512] = "";
    struct store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(&s, &o, err, sizeof(err)), 0);
    struct store_loader l = {
        .ud = got, .session = ld_session, .msg = ld_msg, .qos2 = ld_qos2, .retained = ld_retained};
    int r = store_load(s, &l);
    store_close(s);
    return r;
}

/* load_raw on a fresh store whose only record is (key, v) in database db. */
static int load_one_raw(const char *db, const void *key, size_t klen, const void *v, size_t vlen,
                        struct list *got)
{
    char *dir = tmpdir();
    store_close(open_store(dir, 0, 0));
    raw_put(dir, db, key, klen, v, vlen);
    int r = load_raw(dir, got);
    rm_rf(dir);
    free(dir);
    return r;
}

/* A version 5 session record whose wait claims more ids than it holds, or
 * more than 65,535, is refused as corrupt (-EIO), not read past its end. */
static void test_session_wait_bad_counts(void)
{
    static const unsigned char key[] = "\x00\x03old";
    /* version 5, MQTT 5, expiry 60, connected, no subscription, no user,
     * no identity, epoch 0, a wait until 1 for node 2's copy of claim 3,
     * not told, then the
     * count under test and one id (7) */
    static const unsigned char head[] = "\x05\x05\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                        "\x00\x00\x00\x00"
                                        "\x00"
                                        "\x00\x00\x00\x00"
                                        "\x00\x00\x00\x00\x00\x00\x00\x00"
                                        "\x01\x00\x00\x00\x00\x00\x00\x00"
                                        "\x02\x00\x00\x00\x00\x00\x00\x00"
                                        "\x03\x00\x00\x00\x00\x00\x00\x00"
                                        "\x00";
    static const uint32_t counts[] = {1, 2, 70000};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        unsigned char v[sizeof(head) - 1 + 4 + 2];
        memcpy(v, head, sizeof(head) - 1);
        for (int k = 0; k < 4; k++)
            v[sizeof(head) - 1 + k] = (unsigned char)(counts[i] >> (8 * k));
        v[sizeof(v) - 2] = 7;
        v[sizeof(v) - 1] = 0;
        struct list got = {0};
        int r = load_one_raw("sessions", key, sizeof(key) - 1, v, sizeof(v), &got);
        if (counts[i] == 1) { /* the right count: read */
            CU_ASSERT_EQUAL(r, 0);
            CU_ASSERT_EQUAL(got.n, 1);
            if (got.n == 1)
                CU_ASSERT_STRING_EQUAL(got.v[0], "S 3:old v5 x60 d0 n0 anonymous wait 2/3 until 1 "
                                                 "released 7");
        } else {
            CU_ASSERT_EQUAL(r, -EIO);
        }
        list_free(&got);
    }
}

/* A version 4 message record whose list of other destinations claims more
 * than are kept (and is not the mark of "more than fit") is refused as
 * corrupt (-EIO); the list it holds is read. */
static void test_msg_also_to_bad_count(void)
{
    static const unsigned char key[] = "\x00\x03old\x00\x00\x00\x00\x00\x00\x00\x01";
    /* v4: seq 1, queued, QoS 1, topic "t", payload "x", identity 9/8,
     * routed at 5, then the count under test and two nodes (2, 3) */
    static const unsigned char head[] = "\x04\x00\x00\x00\x01\x00\x00\x00"
                                        "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                        "\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                                        "tx"
                                        "\x09\x00\x00\x00\x00\x00\x00\x00"
                                        "\x08\x00\x00\x00\x00\x00\x00\x00"
                                        "\x05\x00\x00\x00\x00\x00\x00\x00";
    static const uint8_t counts[] = {2, 3, 254};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        unsigned char v[sizeof(head) - 1 + 1 + 16];
        memcpy(v, head, sizeof(head) - 1);
        memset(v + sizeof(head) - 1, 0, 17);
        v[sizeof(head) - 1] = counts[i];
        v[sizeof(head)] = 2;
        v[sizeof(head) + 8] = 3;
        struct list got = {0};
        int r = load_one_raw("msgs", key, sizeof(key) - 1, v, sizeof(v), &got);
        if (counts[i] == 2) { /* the right count: read */
            CU_ASSERT_EQUAL(r, 0);
            CU_ASSERT_EQUAL(got.n, 1);
            if (got.n == 1)
                CU_ASSERT_PTR_NOT_NULL(strstr(got.v[0], " id 9/8 routed 5 also 2,3"));
        } else {
            CU_ASSERT_EQUAL(r, -EIO);
        }
        list_free(&got);
    }
}

static void test_corrupt(void)
{
    char *dir = tmpdir();
    char path[256];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = 0; i < 65536; i++)
        fputc((i * 7919) & 0xff, f);
    fclose(f);
    struct store_options o = {.dir = dir, .sync = STORE_SYNC_ALWAYS};
    char err[512] = "";
    struct store *s = NULL;
    CU_ASSERT_EQUAL(store_open(&s, &o, err, sizeof(err)), -EIO);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "corrupt"));

    /* A short garbage file too. */
    f = fopen(path, "wb");
    fputs("this is not a database", f);
    fclose(f);
    CU_ASSERT_EQUAL(store_open(&s, &o, err, sizeof(err)), -EIO);
    CU_ASSERT_PTR_NULL(s);
    rm_rf(dir);
    free(dir);
}

static void test_unwritable(void)
{
    char *dir = tmpdir();
    char file[256], sub[300];
    snprintf(file, sizeof(file), "%s/regular", dir);
    FILE *f = fopen(file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fclose(f);
    snprintf(sub, sizeof(sub), "%s/store/deeper", file);
    struct store_options o = {.dir = sub, .sync = STORE_SYNC_ALWAYS};
    char err[512] = "";
    struct store *s = NULL;
    CU_ASSERT_EQUAL(store_open(&s, &o, err, sizeof(err)), -ENOTDIR);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, strerror(ENOTDIR)));

    /* A missing parent chain is created. */
    snprintf(sub, sizeof(sub), "%s/a/b/c", dir);
    s = open_store(sub, 0, 0);
    store_close(s);

    /* The same directory cannot be opened twice. */
    s = open_store(sub, 0, 0);
    struct store *s2 = NULL;
    o.dir = sub;
    CU_ASSERT_EQUAL(store_open(&s2, &o, err, sizeof(err)), -EBUSY);
    CU_ASSERT_PTR_NULL(s2);
    store_close(s);

    o.dir = NULL;
    CU_ASSERT_EQUAL(store_open(&s2, &o, err, sizeof(err)), -EINVAL);
    rm_rf(dir);
    free(dir);
}

/* Loader that checks payloads of messages written by fill(). */
struct counter {
    size_t n;
    size_t bad;
    uint8_t *seen; /* by seq */
    size_t max;
};

static int count_msg(void *ud, const char *id, uint16_t len, uint64_t seq,
                     const struct store_msg *r)
{
    struct counter *c = ud;
    c->n++;
    if (len != 6 || memcmp(id, "client", 6) != 0)
        return 0; /* only messages of msg_batch() are checked */
    const uint8_t *p = msg_payload(r->m);
    for (uint32_t i = 0; i < r->m->payload_len; i++)
        if (p[i] != (uint8_t)(seq * 31 + i * 7)) {
            c->bad++;
            break;
        }
    if (c->seen && seq < c->max)
        c->seen[seq]++;
    return 0;
}

static struct store_batch *msg_batch(uint64_t seq, uint32_t payload_len)
{
    struct msg *m = mkmsg(ID("fill"), payload_len, seq, NULL, 1, false, 0);
    struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m};
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_put(b, ID("client"), seq, &r), 0);
    msg_unref(m);
    return b;
}

static void test_map_growth(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 64 << 10, 0);
    struct store_stats st;
    store_get_stats(s, &st);
    CU_ASSERT_EQUAL(st.map_size, 64 << 10);
    /* 6 MiB in batches of 1 to 32 messages of 4 KiB. */
    uint64_t seq = 0;
    for (int round = 0; seq < 1536; round++) {
        struct store_batch *b = store_batch_new();
        for (int i = 0; i <= round % 32 && seq < 1536; i++, seq++) {
            struct msg *mm = mkmsg(ID("fill"), 4096, seq, NULL, 1, false, 0);
            struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, mm};
            CU_ASSERT_EQUAL(store_msg_put(b, ID("client"), seq, &r), 0);
            msg_unref(mm);
        }
        CU_ASSERT_EQUAL(commit(s, b), 0);
    }
    /* One batch much bigger than the map at once. */
    struct store_batch *b = store_batch_new();
    struct msg *big = mkmsg(ID("fill"), 3u << 20, 1536, NULL, 1, false, 0);
    struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, big};
    CU_ASSERT_EQUAL(store_msg_put(b, ID("client"), 1536, &r), 0);
    msg_unref(big);
    CU_ASSERT_EQUAL(commit(s, b), 0);

    store_get_stats(s, &st);
    CU_ASSERT(st.map_size >= (9u << 20));
    CU_ASSERT_EQUAL(st.failed, 0);
    CU_ASSERT(st.bytes_written > (9u << 20));
    store_close(s);

    s = open_store(dir, 64 << 10, 0);
    struct counter c = {0};
    struct store_loader l = {.ud = &c, .msg = count_msg};
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
    CU_ASSERT_EQUAL(c.n, 1537);
    CU_ASSERT_EQUAL(c.bad, 0);
    /* Writes still work (and grow) after a reopen with a small map. */
    CU_ASSERT_EQUAL(commit(s, msg_batch(5000, 100000)), 0);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static void sleepy_done(void *ud, int status)
{
    (void)status;
    (void)ud;
    usleep(100 * 1000); /* holds the writer so that the next batches group */
}

static void test_map_limit(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 64 << 10, 512 << 10);
    uint64_t seq;
    int st = 0;
    for (seq = 0; seq < 1000; seq++) {
        st = commit(s, msg_batch(seq, 1000));
        if (st)
            break;
    }
    CU_ASSERT_EQUAL(st, -ENOSPC);
    CU_ASSERT(seq > 50 && seq < 1000);
    /* Puts stop at max_map_size minus the reserve (here 512 KiB / 4). */
    struct store_stats stats;
    store_get_stats(s, &stats);
    CU_ASSERT_EQUAL(stats.map_size, 384 << 10);
    CU_ASSERT_EQUAL(stats.failed, 1);

    /* Grouped: a put that does not fit fails alone, deletions succeed. */
    struct store_batch *b0 = store_batch_new();
    store_submit(s, b0, sleepy_done, NULL);
    int s1 = 1, s2 = 1, s3 = 1;
    store_submit(s, msg_batch(100000, 200000), set_status, &s1);
    struct store_batch *b2 = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(b2, ID("client"), 0), 0);
    CU_ASSERT_EQUAL(store_msg_del(b2, ID("client"), 1), 0);
    store_submit(s, b2, set_status, &s2);
    struct store_batch *b3 = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(b3, ID("client"), 2), 0);
    store_submit(s, b3, set_status, &s3);
    store_flush(s);
    CU_ASSERT_EQUAL(s1, -ENOSPC);
    CU_ASSERT_EQUAL(s2, 0);
    CU_ASSERT_EQUAL(s3, 0);
    store_get_stats(s, &stats);
    CU_ASSERT(stats.map_size <= (512 << 10));
    CU_ASSERT_EQUAL(stats.failed, 2);
    /* Deletions keep working at the limit. */
    for (uint64_t q = 3; q < 13; q++) {
        struct store_batch *b = store_batch_new();
        CU_ASSERT_EQUAL(store_msg_del(b, ID("client"), q), 0);
        CU_ASSERT_EQUAL(commit(s, b), 0);
    }
    store_close(s);

    s = open_store(dir, 0, 0);
    struct counter c = {0};
    struct store_loader l = {.ud = &c, .msg = count_msg};
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
    CU_ASSERT_EQUAL(c.n, seq - 13);
    CU_ASSERT_EQUAL(c.bad, 0);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

/* Group commit from 4 threads. */
#define GC_THREADS 4
#define GC_PER_THREAD 250
static atomic_int gc_calls[GC_THREADS * GC_PER_THREAD];
static atomic_int gc_bad_status;

static void gc_done(void *ud, int status)
{
    atomic_fetch_add(&gc_calls[(intptr_t)ud], 1);
    if (status)
        atomic_fetch_add(&gc_bad_status, 1);
}

struct gc_arg {
    struct store *s;
    int t;
};

static void *gc_thread(void *arg)
{
    struct gc_arg *a = arg;
    char id[16];
    snprintf(id, sizeof(id), "thread-%d", a->t);
    struct msg *m = msg_new("g/t", 3, "payload", 7, NULL, 0, 1, false, 0, NULL);
    for (int i = 0; i < GC_PER_THREAD; i++) {
        struct store_batch *b = store_batch_new();
        struct store_msg r = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, m};
        store_msg_put(b, id, (uint16_t)strlen(id), (uint64_t)i, &r);
        store_submit(a->s, b, gc_done, (void *)(intptr_t)(a->t * GC_PER_THREAD + i));
    }
    msg_unref(m);
    return NULL;
}

static void test_group_commit(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    pthread_t th[GC_THREADS];
    struct gc_arg args[GC_THREADS];
    for (int t = 0; t < GC_THREADS; t++) {
        args[t] = (struct gc_arg){s, t};
        pthread_create(&th[t], NULL, gc_thread, &args[t]);
    }
    for (int t = 0; t < GC_THREADS; t++)
        pthread_join(th[t], NULL);
    store_flush(s);
    int once = 0;
    for (int i = 0; i < GC_THREADS * GC_PER_THREAD; i++)
        once += atomic_load(&gc_calls[i]) == 1;
    CU_ASSERT_EQUAL(once, GC_THREADS * GC_PER_THREAD);
    CU_ASSERT_EQUAL(atomic_load(&gc_bad_status), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    CU_ASSERT_EQUAL(st.batches, GC_THREADS * GC_PER_THREAD);
    CU_ASSERT_EQUAL(st.ops, GC_THREADS * GC_PER_THREAD);
    CU_ASSERT(st.commits >= 1);
    CU_ASSERT(st.commits < st.batches);
    CU_ASSERT_EQUAL(st.fsyncs, st.commits);
    printf("(%llu commits for %llu batches) ", (unsigned long long)st.commits,
           (unsigned long long)st.batches);

    struct list got = {0};
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, GC_THREADS * GC_PER_THREAD);
    list_free(&got);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

static void test_sync_modes(void)
{
    char *dir = tmpdir();
    struct store_options o = {.dir = dir, .sync = STORE_SYNC_INTERVAL, .sync_interval_ms = 20};
    char err[256];
    struct store *s;
    CU_ASSERT_EQUAL_FATAL(store_open(&s, &o, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(commit(s, msg_batch(1, 10)), 0);
    usleep(200 * 1000);
    struct store_stats st;
    store_get_stats(s, &st);
    CU_ASSERT_EQUAL(st.commits, 1);
    CU_ASSERT_EQUAL(st.fsyncs, 1);
    store_close(s);

    o.sync = STORE_SYNC_NONE;
    CU_ASSERT_EQUAL_FATAL(store_open(&s, &o, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(commit(s, msg_batch(2, 10)), 0);
    usleep(50 * 1000);
    store_get_stats(s, &st);
    CU_ASSERT_EQUAL(st.commits, 1);
    CU_ASSERT_EQUAL(st.fsyncs, 0);
    store_close(s);

    s = open_store(dir, 0, 0);
    struct counter c = {0};
    struct store_loader l = {.ud = &c, .msg = count_msg};
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
    CU_ASSERT_EQUAL(c.n, 2);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

/* A callback may submit a follow-up batch. */
struct chain {
    struct store *s;
    int first, second;
};

static void chain_second(void *ud, int status)
{
    ((struct chain *)ud)->second = status;
}

static void chain_first(void *ud, int status)
{
    struct chain *c = ud;
    c->first = status;
    struct store_batch *b = store_batch_new();
    store_qos2_put(b, ID("chained"), 5);
    store_submit(c->s, b, chain_second, c);
}

static int stop_at_second(void *ud, const char *id, uint16_t len, uint16_t pid)
{
    (void)id;
    (void)len;
    (void)pid;
    return ++*(int *)ud == 2 ? 7 : 0;
}

static void test_batches(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);

    /* A poisoned batch applies nothing and reports its error. */
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_qos2_put(b, ID("p"), 1), 0);
    struct store_msg bad = {0};
    CU_ASSERT_EQUAL(store_msg_put(b, ID("p"), 1, &bad), -EINVAL);
    CU_ASSERT_EQUAL(store_qos2_put(b, ID("p"), 2), -EINVAL);
    int st = 1;
    store_submit(s, b, set_status, &st);
    /* Empty batches and NULL callbacks are fine. */
    store_submit(s, store_batch_new(), NULL, NULL);
    store_flush(s);
    CU_ASSERT_EQUAL(st, -EINVAL);

    struct chain c = {s, 1, 1};
    b = store_batch_new();
    store_qos2_put(b, ID("chained"), 4);
    store_submit(s, b, chain_first, &c);
    store_flush(s);
    store_flush(s);
    CU_ASSERT_EQUAL(c.first, 0);
    CU_ASSERT_EQUAL(c.second, 0);

    struct store_stats stats;
    store_get_stats(s, &stats);
    CU_ASSERT_EQUAL(stats.failed, 1);
    CU_ASSERT_EQUAL(stats.batches, 3);

    struct list got = {0};
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 2); /* only the chained qos2 entries */
    list_free(&got);

    /* A loader callback can stop the load. */
    int n = 0;
    struct store_loader l = {.ud = &n, .qos2 = stop_at_second};
    CU_ASSERT_EQUAL(store_load(s, &l), 7);
    CU_ASSERT_EQUAL(n, 2);

    /* Batches pending at close are committed. */
    store_submit(s, msg_batch(9, 10), set_status, &st);
    store_close(s);
    CU_ASSERT_EQUAL(st, 0);
    CU_ASSERT_STRING_EQUAL(store_strerror(-ENOSPC),
                           "storage full (disk full or map size limit reached)");
    rm_rf(dir);
    free(dir);
}

static size_t count_ok(const uint8_t *ok, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ok[i];
    return c;
}

static void test_disk_full(void)
{
    if (geteuid() != 0) {
        printf("skipped: needs root to mount a tmpfs ");
        g_skipped = 1;
        return;
    }
    char *mnt = tmpdir();
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        printf("skipped: cannot mount tmpfs (%s) ", strerror(errno));
        g_skipped = 1;
        rmdir(mnt);
        free(mnt);
        return;
    }
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/store", mnt);
    struct store *s = open_store_r(dir, 0, 0, 64 << 10);
    enum { MAX = 4000 };
    uint8_t *ok = calloc(MAX, 1);
    uint64_t seq;
    int st = 0;
    /* Many small records of another session: deleting them all later needs
     * more fresh pages (copy on write) than a full disk has. */
    struct store_batch *many = store_batch_new();
    struct msg *tiny = mkmsg(ID("x"), 10, 0, NULL, 1, false, 0);
    struct store_msg tr = {MSG_STATE_QUEUED, 0, 1, false, 0, NULL, tiny};
    for (uint64_t q = 0; q < 600; q++)
        CU_ASSERT_EQUAL(store_msg_put(many, ID("many"), q, &tr), 0);
    msg_unref(tiny);
    CU_ASSERT_EQUAL(commit(s, many), 0);
    for (seq = 0; seq < MAX; seq++) {
        st = commit(s, msg_batch(seq, 1500));
        if (st)
            break;
        ok[seq] = 1;
    }
    CU_ASSERT_EQUAL(st, -ENOSPC);
    CU_ASSERT(seq > 100 && seq < MAX);
    /* Fill to the brim with small messages. */
    for (seq++; seq < MAX; seq++) {
        st = commit(s, msg_batch(seq, 10));
        if (st)
            break;
        ok[seq] = 1;
    }
    CU_ASSERT_EQUAL(st, -ENOSPC);
    /* Still full for more, still working for deletions. */
    CU_ASSERT_EQUAL(commit(s, msg_batch(seq + 1, 100000)), -ENOSPC);
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(b, ID("client"), 0), 0);
    CU_ASSERT_EQUAL(store_msg_del(b, ID("client"), 1), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    ok[0] = ok[1] = 0;
    /* That deletion needed the disk reserve, which the store gave up. */
    char reserve[400];
    snprintf(reserve, sizeof(reserve), "%s/reserve", dir);
    CU_ASSERT_NOT_EQUAL(access(reserve, F_OK), 0);
    /* Grouped with a put that does not fit, a deletion still succeeds. */
    store_submit(s, store_batch_new(), sleepy_done, NULL);
    int s1 = 1, s2 = 1;
    store_submit(s, msg_batch(seq + 2, 200000), set_status, &s1);
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_msg_del(b, ID("client"), 2), 0);
    store_submit(s, b, set_status, &s2);
    store_flush(s);
    CU_ASSERT_EQUAL(s1, -ENOSPC);
    CU_ASSERT_EQUAL(s2, 0);
    ok[2] = 0;
    store_close(s);

    /* Everything reported committed (and not deleted) is there. */
    s = open_store(dir, 0, 0);
    struct counter c = {0, 0, calloc(MAX, 1), MAX};
    struct store_loader l = {.ud = &c, .msg = count_msg};
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
    CU_ASSERT_EQUAL(c.bad, 0);
    CU_ASSERT_EQUAL(c.n, 600 + count_ok(ok, MAX));
    CU_ASSERT_EQUAL(memcmp(c.seen, ok, MAX), 0);
    /* Deleting everything works on the full disk too. */
    struct store_batch *del = store_batch_new();
    CU_ASSERT_EQUAL(store_session_del(del, ID("many")), 0);
    CU_ASSERT_EQUAL(commit(s, del), 0);
    del = store_batch_new();
    CU_ASSERT_EQUAL(store_session_del(del, ID("client")), 0);
    CU_ASSERT_EQUAL(commit(s, del), 0);
    c.n = 0;
    CU_ASSERT_EQUAL(store_load(s, &l), 0);
    CU_ASSERT_EQUAL(c.n, 0);
    store_close(s);
    free(c.seen);
    free(ok);

    CU_ASSERT_EQUAL(umount2(mnt, MNT_DETACH), 0);
    rmdir(mnt);
    free(mnt);
}

/* ---- the cluster's forwarding outbox and inbox ---- */

struct rows {
    char text[4096];
    size_t len;
    int n;
};

static int row_text(void *ud, uint64_t node, uint64_t seq, const void *data, size_t len)
{
    struct rows *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len, "%llu/%llu=%.*s;",
                               (unsigned long long)node, (unsigned long long)seq, (int)len,
                               (const char *)data);
    r->n++;
    return 0;
}

static char *outbox_text(struct store *s, uint64_t node, uint64_t after, size_t max)
{
    static struct rows r;
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(store_outbox_scan(s, node, after, max, row_text, &r), 0);
    return r.text;
}

static int in_text(void *ud, uint64_t origin, uint64_t seq)
{
    struct rows *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len, "%llu:%llu;",
                               (unsigned long long)origin, (unsigned long long)seq);
    return 0;
}

static void hook_count(void *ud, uint64_t arg, int status)
{
    int *v = ud;
    v[0] += (int)arg;
    v[1] = status;
}

static void test_outbox(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    struct store_batch *b = store_batch_new();
    /* inserted out of order, across nodes; seqs that differ in every byte */
    CU_ASSERT_EQUAL(store_outbox_put(b, 2, 0x100, "c", 1), 0);
    CU_ASSERT_EQUAL(store_outbox_put(b, 2, 5, "b", 1), 0);
    CU_ASSERT_EQUAL(store_outbox_put(b, 2, 1, "a", 1), 0);
    CU_ASSERT_EQUAL(store_outbox_put(b, 1, 7, "x", 1), 0);
    CU_ASSERT_EQUAL(store_outbox_put(b, 3, 1ull << 40, "z", 1), 0);
    CU_ASSERT_EQUAL(store_fwd_in_put(b, 9, 40), 0);
    int hk[2] = {0, 1};
    CU_ASSERT_EQUAL(store_batch_hook(b, hook_count, hk, 3), 0);
    CU_ASSERT_EQUAL(store_batch_hook(b, hook_count, hk, 4), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    CU_ASSERT_EQUAL(hk[0], 7); /* both hooks ran, with the commit's status */
    CU_ASSERT_EQUAL(hk[1], 0);
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 2, 0, 0), "2/1=a;2/5=b;2/256=c;");
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 2, 1, 0), "2/5=b;2/256=c;");
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 2, 0, 2), "2/1=a;2/5=b;");
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 2, 256, 0), "");
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 4, 0, 0), "");
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 0, 0, 0), "1/7=x;2/1=a;2/5=b;2/256=c;3/1099511627776=z;");

    /* range delete: up to 5 of node 2 only; again (idempotent); beyond the
     * last row of node 1; a node without rows */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_outbox_del_upto(b, 2, 5), 0);
    CU_ASSERT_EQUAL(store_outbox_del_upto(b, 2, 5), 0);
    CU_ASSERT_EQUAL(store_outbox_del_upto(b, 1, UINT64_MAX), 0);
    CU_ASSERT_EQUAL(store_outbox_del_upto(b, 7, 100), 0);
    CU_ASSERT_EQUAL(store_fwd_in_put(b, 9, 41), 0);
    CU_ASSERT_EQUAL(store_fwd_in_put(b, 8, 2), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 0, 0, 0), "2/256=c;3/1099511627776=z;");

    /* a hook of a batch that is freed unsubmitted hears -ECANCELED */
    b = store_batch_new();
    hk[0] = 0;
    CU_ASSERT_EQUAL(store_batch_hook(b, hook_count, hk, 1), 0);
    store_batch_free(b);
    CU_ASSERT_EQUAL(hk[0], 1);
    CU_ASSERT_EQUAL(hk[1], -ECANCELED);

    /* boot counter: above the floor, then one more than stored */
    uint64_t boot = 0;
    CU_ASSERT_EQUAL(store_boot_next(s, 1000, &boot), 0);
    CU_ASSERT_EQUAL(boot, 1000);
    CU_ASSERT_EQUAL(store_boot_next(s, 10, &boot), 0);
    CU_ASSERT_EQUAL(boot, 1001);

    /* everything survives a reopen, and the sessions' load ignores it */
    struct list got = {0};
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 0);
    list_free(&got);
    CU_ASSERT_STRING_EQUAL(outbox_text(s, 0, 0, 0), "2/256=c;3/1099511627776=z;");
    struct rows r;
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(store_fwd_in_scan(s, in_text, &r), 0);
    CU_ASSERT_STRING_EQUAL(r.text, "8:2;9:41;");
    CU_ASSERT_EQUAL(store_boot_next(s, 10, &boot), 0);
    CU_ASSERT_EQUAL(boot, 1002);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

/* ---- the QoS 2 ids of the cluster's ended copies ---- */

static int handed_text(void *ud, const struct store_handed *h)
{
    struct rows *r = ud;
    r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len,
                               "%.*s/%llu<%llu%s:", h->id_len > 8 ? 8 : (int)h->id_len,
                               h->client_id, (unsigned long long)h->epoch,
                               (unsigned long long)h->until_ms, h->folded ? " folded" : "");
    for (uint32_t i = 0; i < h->n_ids; i++)
        r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len, "%s%u", i ? "," : "",
                                   h->ids[i]);
    if (h->wait_node) {
        r->len += (size_t)snprintf(
            r->text + r->len, sizeof(r->text) - r->len, " wait %llx/%llu<%llu released",
            (unsigned long long)h->wait_node, (unsigned long long)h->wait_epoch,
            (unsigned long long)h->wait_until_ms);
        for (uint32_t i = 0; i < h->n_wait_released; i++)
            r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len, "%s%u",
                                       i ? "," : " ", h->wait_released[i]);
    }
    r->len += (size_t)snprintf(r->text + r->len, sizeof(r->text) - r->len, ";");
    r->n++;
    return 0;
}

static char *handed_rows(struct store *s)
{
    static struct rows r;
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(store_handed_scan(s, handed_text, &r), 0);
    return r.text;
}

static void test_handed(void)
{
    char *dir = tmpdir();
    struct store *s = open_store(dir, 0, 0);
    char longid[600];
    memset(longid, 'L', sizeof(longid)); /* hashed in the key */
    uint16_t ids[] = {1, 65535, 300};
    struct store_batch *b = store_batch_new();
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){"cid", 3, 7, 1000, false, 3, ids, 0,
                                                               0, 0, 0, NULL}),
                    0);
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){"cid", 3, 1ull << 40, 2000, true, 1,
                                                               ids + 1, 0, 0, 0, 0, NULL}),
                    0);
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){longid, sizeof(longid), 2, 3000,
                                                               false, 0, NULL, 0, 0, 0, 0, NULL}),
                    0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    CU_ASSERT_STRING_EQUAL(handed_rows(s),
                           "cid/7<1000:1,65535,300;cid/1099511627776<2000 folded:65535;"
                           "LLLLLLLL/2<3000:;");
    /* replaced, deleted (twice: idempotent), and a row that is not there */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){"cid", 3, 7, 1500, false, 1, ids, 0,
                                                               0, 0, 0, NULL}),
                    0);
    CU_ASSERT_EQUAL(store_handed_del(b, longid, sizeof(longid), 2), 0);
    CU_ASSERT_EQUAL(store_handed_del(b, longid, sizeof(longid), 2), 0);
    CU_ASSERT_EQUAL(store_handed_del(b, "cid", 3, 8), 0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    /* bad arguments fail the batch */
    b = store_batch_new();
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){"cid", 3, 9, 1, false, 2, NULL, 0, 0,
                                                               0, 0, NULL}),
                    -EINVAL);
    store_batch_free(b);
    /* kept across a reopen; the sessions' load ignores them */
    struct list got = {0};
    s = reopen(s, dir, &got);
    CU_ASSERT_EQUAL(got.n, 0);
    list_free(&got);
    CU_ASSERT_STRING_EQUAL(handed_rows(s), "cid/7<1500:1;cid/1099511627776<2000 folded:65535;");
    /* a copy that still waited for another node's ids: its wait with it,
     * also with no ids of its own (record version 2) */
    uint16_t rel[] = {9, 65535};
    b = store_batch_new();
    struct store_handed w = {"w", 1, 4, 5000, true, 1, ids + 2, 0xabcdef, 3, 4500, 2, rel};
    CU_ASSERT_EQUAL(store_handed_put(b, &w), 0);
    CU_ASSERT_EQUAL(store_handed_put(b, &(struct store_handed){"w", 1, 5, 6000, false, 0, NULL, 7,
                                                               1, 5500, 0, NULL}),
                    0);
    CU_ASSERT_EQUAL(commit(s, b), 0);
    s = reopen(s, dir, &got);
    list_free(&got);
    CU_ASSERT_STRING_EQUAL(handed_rows(s),
                           "w/4<5000 folded:300 wait abcdef/3<4500 released 9,65535;"
                           "w/5<6000: wait 7/1<5500 released;"
                           "cid/7<1500:1;cid/1099511627776<2000 folded:65535;");
    store_close(s);
    /* a version 1 row (before the wait was kept) is read without one */
    static const unsigned char key[] = "\x00\x02v1\x00\x00\x00\x00\x00\x00\x00\x06";
    static const unsigned char v1[] = "\x01"
                                      "\x10\x27\x00\x00\x00\x00\x00\x00"
                                      "\x00"
                                      "\x01\x00"
                                      "\x2a\x00";
    raw_put(dir, "handed", key, sizeof(key) - 1, v1, sizeof(v1) - 1);
    s = open_store(dir, 0, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(handed_rows(s), "v1/6<10000:42;"));
    store_close(s);
    /* a version 2 row cut short in its wait is refused as corrupt */
    static const unsigned char v2[] = "\x02"
                                      "\x10\x27\x00\x00\x00\x00\x00\x00"
                                      "\x00"
                                      "\x00\x00"
                                      "\x07\x00\x00\x00\x00\x00\x00\x00"
                                      "\x01\x00\x00\x00\x00\x00\x00\x00";
    raw_put(dir, "handed", key, sizeof(key) - 1, v2, sizeof(v2) - 1);
    s = open_store(dir, 0, 0);
    struct rows bad;
    memset(&bad, 0, sizeof(bad));
    CU_ASSERT_EQUAL(store_handed_scan(s, handed_text, &bad), -EIO);
    store_close(s);
    rm_rf(dir);
    free(dir);
}

int main(int argc, char **argv)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("store", NULL, NULL);
    CU_pSuite disk = CU_add_suite("disk_full", NULL, NULL);
    if (!s || !disk) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "round trip of every record type", test_roundtrip);
    CU_add_test(s, "messages in seq order", test_msg_order);
    CU_add_test(s, "session delete removes msgs and qos2", test_session_del);
    CU_add_test(s, "retained put, replace, delete", test_retained);
    CU_add_test(s, "long client ids and topics", test_long_keys);
    CU_add_test(s, "unknown format version", test_format_version);
    CU_add_test(s, "session record version 1 (no user name)", test_session_record_v1);
    CU_add_test(s, "records before the claim's epoch and the route index",
                test_records_before_the_claim_epoch);
    CU_add_test(s, "a session's wait with bad counts", test_session_wait_bad_counts);
    CU_add_test(s, "a message's other destinations with a bad count", test_msg_also_to_bad_count);
    CU_add_test(s, "corrupt data.mdb", test_corrupt);
    CU_add_test(s, "unwritable directory, busy directory", test_unwritable);
    CU_add_test(s, "map growth", test_map_growth);
    CU_add_test(s, "map limit: only what does not fit fails", test_map_limit);
    CU_add_test(s, "group commit from 4 threads", test_group_commit);
    CU_add_test(s, "sync modes", test_sync_modes);
    CU_add_test(s, "poisoned, empty and chained batches", test_batches);
    CU_add_test(s, "cluster outbox and inbox", test_outbox);
    CU_add_test(s, "QoS 2 ids of ended copies", test_handed);
    CU_add_test(disk, "disk full (tmpfs)", test_disk_full);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    if (argc > 1) {
        CU_pSuite only = CU_get_suite(argv[1]);
        if (!only) {
            fprintf(stderr, "test_store: no suite %s (store, disk_full)\n", argv[1]);
            CU_cleanup_registry();
            return 2;
        }
        CU_basic_run_suite(only);
    } else {
        CU_basic_run_tests();
    }
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : g_skipped ? 77 : 0;
}
