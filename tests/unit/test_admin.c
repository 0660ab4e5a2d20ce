/*
 * test_admin.c - unit tests for the admin module's pure parts: the router
 * (admin/router.c), API key hashing and the key table (admin/keys.c), and the
 * Prometheus text (admin/metrics.c). The HTTP server itself is tested
 * black-box by tests/integration/test_admin.py.
 */
#include <CUnit/Basic.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"

static void noop(struct admin_req *r)
{
    (void)r;
}

static const struct admin_route routes[] = {
    {"GET", "/api/v1/health", noop, ROUTE_PUBLIC, NULL},
    {"GET", "/api/v1/clients/{id}", noop, 0, NULL},
    {"DELETE", "/api/v1/clients/{id}", noop, 0, NULL},
    {"GET", "/api/v1/clients/{id}/subscriptions/{filter}", noop, 0, NULL},
    {"POST", "/api/v1/publish", noop, ROUTE_BODY, NULL},
};
#define NR (sizeof(routes) / sizeof(routes[0]))

static void test_route_match(void)
{
    struct admin_params p;
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "/api/v1/health", &p), 1);
    CU_ASSERT_EQUAL(p.n, 0);
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "/api/v1/health/", &p), 0);
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "/api/v1/healthz", &p), 0);
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "/api/v1", &p), 0);
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "api/v1/health", &p), 0);
    CU_ASSERT_EQUAL(admin_route_match("/api/v1/health", "//api/v1/health", &p), 0);
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/", &p), 0); /* empty parameter */
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/x/y", &p), 0);

    /* a parameter is decoded after the split: %2F is a '/' inside it */
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}/s/{filter}", "/a/dev%2F1/s/x%2B%23%20y", &p), 1);
    CU_ASSERT_EQUAL(p.n, 2);
    CU_ASSERT_STRING_EQUAL(admin_params_get(&p, "id"), "dev/1");
    CU_ASSERT_STRING_EQUAL(admin_params_get(&p, "filter"), "x+# y");
    CU_ASSERT_PTR_NULL(admin_params_get(&p, "i"));
    admin_params_clear(&p);
    CU_ASSERT_EQUAL(p.n, 0);

    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/x%00y", &p), -EINVAL);
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/x%zz", &p), -EINVAL);
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/x%4", &p), -EINVAL);
    CU_ASSERT_EQUAL(admin_route_match("/a/{id}", "/a/%", &p), -EINVAL);
}

static void test_router_find(void)
{
    struct admin_params p;
    int status = 0;
    char allow[64];
    const struct admin_route *r =
        admin_router_find(routes, NR, "GET", "/api/v1/clients/c1", &p, &status, allow, 64);
    CU_ASSERT_PTR_EQUAL(r, &routes[1]);
    CU_ASSERT_STRING_EQUAL(admin_params_get(&p, "id"), "c1");
    admin_params_clear(&p);
    r = admin_router_find(routes, NR, "DELETE", "/api/v1/clients/c1", &p, &status, allow, 64);
    CU_ASSERT_PTR_EQUAL(r, &routes[2]);
    admin_params_clear(&p);
    r = admin_router_find(routes, NR, "HEAD", "/api/v1/health", &p, &status, allow, 64);
    CU_ASSERT_PTR_EQUAL(r, &routes[0]);

    r = admin_router_find(routes, NR, "PUT", "/api/v1/clients/c1", &p, &status, allow, 64);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_EQUAL(status, 405);
    CU_ASSERT_STRING_EQUAL(allow, "GET, DELETE");
    r = admin_router_find(routes, NR, "GET", "/api/v1/publish", &p, &status, allow, 64);
    CU_ASSERT_EQUAL(status, 405);
    CU_ASSERT_STRING_EQUAL(allow, "POST");
    r = admin_router_find(routes, NR, "GET", "/api/v2/health", &p, &status, allow, 64);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_EQUAL(status, 404);
    r = admin_router_find(routes, NR, "GET", "/api/v1/clients/%zz", &p, &status, allow, 64);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_EQUAL(status, 400);
}

static void test_query_decode(void)
{
    char a[] = "a+b%2Fc%41";
    CU_ASSERT_EQUAL(admin_query_decode(a), 0);
    CU_ASSERT_STRING_EQUAL(a, "a b/cA");
    char b[] = "x%00";
    CU_ASSERT_EQUAL(admin_query_decode(b), -EINVAL);
    char c[] = "x%g1";
    CU_ASSERT_EQUAL(admin_query_decode(c), -EINVAL);
    char d[] = "";
    CU_ASSERT_EQUAL(admin_query_decode(d), 0);
}

static void test_paging(void)
{
    unsigned page, limit;
    char why[128];
    CU_ASSERT_EQUAL(admin_paging_parse(NULL, NULL, &page, &limit, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(page, 1);
    CU_ASSERT_EQUAL(limit, ADMIN_DEFAULT_LIMIT);
    CU_ASSERT_EQUAL(admin_paging_parse("7", "1000", &page, &limit, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(page, 7);
    CU_ASSERT_EQUAL(limit, 1000);
    static const char *const bad_pages[] = {
        "0", "-1", "", "1.5", "abc", " 1", "1000001", "99999999999999999999", "+2"};
    for (size_t i = 0; i < sizeof(bad_pages) / sizeof(bad_pages[0]); i++) {
        CU_ASSERT_EQUAL(admin_paging_parse(bad_pages[i], NULL, &page, &limit, why, sizeof(why)),
                        -EINVAL);
        CU_ASSERT_EQUAL(strncmp(why, "page must be an integer from 1 to 1000000", 41), 0);
    }
    CU_ASSERT_EQUAL(admin_paging_parse("1", "1001", &page, &limit, why, sizeof(why)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(why, "limit must be an integer from 1 to 1000, not '1001'");
    CU_ASSERT_EQUAL(admin_paging_parse("1", "0", &page, &limit, why, sizeof(why)), -EINVAL);
}

static void test_json_fields(void)
{
    static const char *const allowed[] = {"topic", "qos", NULL};
    char why[128];
    json_t *o = json_pack("{s:s, s:i}", "topic", "t", "qos", 1);
    CU_ASSERT_EQUAL(admin_json_check_fields(o, allowed, why, sizeof(why)), 0);
    json_object_set_new(o, "qos2", json_integer(1));
    CU_ASSERT_EQUAL(admin_json_check_fields(o, allowed, why, sizeof(why)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(why, "unknown field 'qos2'");
    json_decref(o);
    o = json_object();
    CU_ASSERT_EQUAL(admin_json_check_fields(o, allowed, why, sizeof(why)), 0);
    json_decref(o);
}

static void test_secret_hash(void)
{
    char h1[ADMIN_SECRET_HASH_MAX], h2[ADMIN_SECRET_HASH_MAX];
    CU_ASSERT_EQUAL(admin_secret_hash("correct horse", h1, sizeof(h1)), 0);
    CU_ASSERT_EQUAL(admin_secret_hash("correct horse", h2, sizeof(h2)), 0);
    CU_ASSERT_EQUAL(strncmp(h1, "pbkdf2-sha512$10000$", 20), 0);
    CU_ASSERT_PTR_NULL(strstr(h1, "correct"));
    CU_ASSERT_STRING_NOT_EQUAL(h1, h2); /* salted */
    unsigned long d0 = admin_secret_derivations();
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", h1), 0);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", h2), 0);
    CU_ASSERT_EQUAL(admin_secret_derivations(), d0 + 2);
    /* a match is remembered: the same pair again costs no derivation */
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", h1), 0);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", h2), 0);
    CU_ASSERT_EQUAL(admin_secret_derivations(), d0 + 2);
    /* a wrong secret always pays, also right after a match, and still fails */
    CU_ASSERT_EQUAL(admin_secret_verify("correct hors", h1), -EACCES);
    CU_ASSERT_EQUAL(admin_secret_verify("correct hors", h1), -EACCES);
    CU_ASSERT_EQUAL(admin_secret_verify("", h1), -EACCES);
    CU_ASSERT_EQUAL(admin_secret_derivations(), d0 + 5);
    /* the remembered match is of that stored form only */
    char h3[ADMIN_SECRET_HASH_MAX];
    CU_ASSERT_EQUAL(admin_secret_hash("another one", h3, sizeof(h3)), 0);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", h3), -EACCES);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", "sha1$1$abc$def"), -EINVAL);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", "pbkdf2-sha512$0$AAAA$AAAA"), -EINVAL);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", "pbkdf2-sha512$10$AAAA"), -EINVAL);
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", "pbkdf2-sha512$10$!!!!$AAAA"), -EINVAL);
    /* a tampered hash */
    char t[ADMIN_SECRET_HASH_MAX];
    strcpy(t, h1);
    size_t n = strlen(t);
    t[n - 5] = t[n - 5] == 'A' ? 'B' : 'A';
    CU_ASSERT_EQUAL(admin_secret_verify("correct horse", t), -EACCES);
    CU_ASSERT_EQUAL(admin_secret_hash("x", h1, 20), -ENOSPC);
}

static void test_key_table(void)
{
    char why[128];
    CU_ASSERT_TRUE(admin_api_key_valid("ops:secret12", why, sizeof(why)));
    CU_ASSERT_FALSE(admin_api_key_valid("ops", why, sizeof(why)));
    CU_ASSERT_FALSE(admin_api_key_valid("ops:short", why, sizeof(why)));
    CU_ASSERT_FALSE(admin_api_key_valid("o ps:secret12", why, sizeof(why)));
    CU_ASSERT_FALSE(admin_api_key_valid(":secret12", why, sizeof(why)));

    struct admin_key_table *t = admin_key_table_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    const struct admin_keys_ops *ops = &admin_key_table_ops;
    CU_ASSERT_EQUAL(ops->verify(t, "ops", "secret12"), -ENOENT); /* empty table */
    CU_ASSERT_EQUAL(admin_key_table_add(t, "ops:secret12:x"), 0);
    CU_ASSERT_EQUAL(admin_key_table_add(t, "dash:another-secret"), 0);
    CU_ASSERT_EQUAL(admin_key_table_add(t, "bad"), -EINVAL);
    CU_ASSERT_EQUAL(ops->verify(t, "ops", "secret12:x"), 0);
    CU_ASSERT_EQUAL(ops->verify(t, "ops", "secret12"), -EACCES);
    CU_ASSERT_EQUAL(ops->verify(t, "dash", "another-secret"), 0);
    CU_ASSERT_EQUAL(ops->verify(t, "dash", "secret12:x"), -EACCES);
    CU_ASSERT_EQUAL(ops->verify(t, "nobody", "secret12:x"), -ENOENT);
    CU_ASSERT_EQUAL(ops->verify(t, "", ""), -ENOENT);
    admin_key_table_free(t);
    admin_key_table_free(NULL);
}

static void test_metrics_render(void)
{
    struct admin_stats s = {0};
    strcpy(s.node, "n\"1\\\n");
    strcpy(s.version, "1.2.3");
    s.msgs_received = 42;
    s.bytes_sent = 18446744073709551615ull;
    struct admin_health h = {.serving = true};
    uint64_t req[6] = {0, 0, 5, 0, 2, 1};
    size_t len;
    char *text = admin_metrics_render(&s, &h, NULL, req, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(strlen(text), len);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "starling_info{version=\"1.2.3\",node=\"n\\\"1\\\\\\n\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# TYPE starling_messages_received_total counter\n"
                                        "starling_messages_received_total 42\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_bytes_sent_total 18446744073709551615\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_up 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "starling_admin_requests_total{status=\"4xx\"} 2\n"));
    CU_ASSERT_EQUAL(text[len - 1], '\n');
    free(text);
    h.serving = false;
    text = admin_metrics_render(&s, &h, NULL, NULL, &len);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_up 0\n"));
    CU_ASSERT_PTR_NULL(strstr(text, "starling_admin_requests_total"));
    free(text);
}

static void test_metrics_render_families(void)
{
    struct admin_stats s = {0};
    strcpy(s.node, "n1");
    strcpy(s.version, "1.2.3");
    struct admin_health h = {.serving = true, .clustered = true, .has_leader = true};
    static struct admin_metrics m;
    memset(&m, 0, sizeof(m));
    m.msgs_in[1] = 7;
    m.dropped[m.n_dropped++] = (struct admin_drop_count){"expired", 3};
    metric_snap_observe(&m.delivery, 25000);       /* the first bucket: le is inclusive */
    metric_snap_observe(&m.delivery, 1000000000);  /* 1 s */
    metric_snap_observe(&m.delivery, 500000000);   /* 0.5 s */
    metric_snap_observe(&m.delivery, 20000000000); /* 20 s: +Inf only */
    m.clustered = true;
    m.raft_term = 4;
    m.n_peers = 1;
    strcpy(m.peers[0].name, "b\"x");
    m.peers[0].connected = true;
    m.peers[0].queue_bytes = 99;
    size_t len;
    char *text = admin_metrics_render(&s, &h, &m, NULL, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_messages_received_total{qos=\"1\"} 7\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\nstarling_messages_dropped_total{reason=\"expired\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\nstarling_delivery_latency_seconds_bucket{le=\"0.000025\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\nstarling_delivery_latency_seconds_bucket{le=\"0.25\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\nstarling_delivery_latency_seconds_bucket{le=\"1\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_delivery_latency_seconds_bucket{le=\"10\"} 3\n"
                                        "starling_delivery_latency_seconds_bucket{le=\"+Inf\"} 4\n"
                                        "starling_delivery_latency_seconds_sum 21.500025\n"
                                        "starling_delivery_latency_seconds_count 4\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_raft_term 4\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_cluster_peer_connected{peer=\"b\\\"x\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nstarling_forward_queue_bytes{peer=\"b\\\"x\"} 99\n"));
    /* no store: no store family */
    CU_ASSERT_PTR_NULL(strstr(text, "starling_store_"));
    free(text);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("admin", NULL, NULL);
    if (!s)
        return 2;
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"route match", test_route_match},
        {"router find: 404, 405, 400", test_router_find},
        {"query decode", test_query_decode},
        {"paging values", test_paging},
        {"unknown JSON fields", test_json_fields},
        {"secret hash and verify", test_secret_hash},
        {"key table", test_key_table},
        {"metrics text", test_metrics_render},
        {"metrics families", test_metrics_render_families},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (!CU_add_test(s, tests[i].name, tests[i].fn)) {
            CU_cleanup_registry();
            return 2;
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
