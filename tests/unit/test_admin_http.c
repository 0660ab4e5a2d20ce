/*
 * test_admin_http.c - the admin server (admin/http.c, admin/api.c) with a
 * fake provider that plays a 3-node cluster, on an ephemeral port of
 * 127.0.0.1, driven with libcurl. It checks what the integration tests of a
 * single node cannot reach: a cluster's health, nodes and summed stats, the
 * provider's errors turned into HTTP statuses, a provider that needs more
 * room than the server first offers.
 */
#include <CUnit/Basic.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "admin.h"

/* ---- the fake cluster ---------------------------------------------------- */

struct fake {
    size_t n_nodes;
    bool has_leader;
    int forget_rc;
    int publish_rc;
    int stats_rc;
    char forgotten[ADMIN_NAME_MAX];
    int nodes_calls;
};

static void fake_health(void *ud, struct admin_health *h)
{
    struct fake *f = ud;
    memset(h, 0, sizeof(*h));
    h->serving = true;
    h->clustered = true;
    h->has_leader = f->has_leader;
}

static int fake_nodes(void *ud, struct admin_node *v, size_t cap)
{
    struct fake *f = ud;
    f->nodes_calls++;
    for (size_t i = 0; i < f->n_nodes && i < cap; i++) {
        memset(&v[i], 0, sizeof(v[i]));
        snprintf(v[i].name, sizeof(v[i].name), "n%zu", i + 1);
        snprintf(v[i].address, sizeof(v[i].address), "127.0.0.%zu:4370", i + 11);
        v[i].role = i < 5 ? "voter" : "standby";
        v[i].reachable = i != 2;
        v[i].leader = f->has_leader && i == 1;
        v[i].self = i == 0;
    }
    return (int)f->n_nodes;
}

static int fake_stats(void *ud, bool cluster_wide, struct admin_stats *v, size_t cap)
{
    struct fake *f = ud;
    if (f->stats_rc < 0)
        return f->stats_rc;
    size_t n = cluster_wide ? 3 : 1;
    for (size_t i = 0; i < n && i < cap; i++) {
        memset(&v[i], 0, sizeof(v[i]));
        snprintf(v[i].node, sizeof(v[i].node), "n%zu", i + 1);
        snprintf(v[i].version, sizeof(v[i].version), "9.9.9");
        v[i].connections = 10 * (i + 1);
        v[i].clients_maximum = 100 + i;
        v[i].retained = 7;
        v[i].msgs_received = 1000 * (i + 1);
        v[i].uptime_s = 50 - i;
    }
    return (int)n;
}

static int fake_publish(void *ud, const struct admin_publish *p, char *err, size_t errlen)
{
    struct fake *f = ud;
    (void)p;
    if (f->publish_rc < 0)
        snprintf(err, errlen, "fake refusal");
    return f->publish_rc;
}

static int fake_leave(void *ud, char *err, size_t errlen)
{
    (void)ud, (void)err, (void)errlen;
    return 0;
}

static int fake_forget(void *ud, const char *node, char *err, size_t errlen)
{
    struct fake *f = ud;
    snprintf(f->forgotten, sizeof(f->forgotten), "%s", node);
    if (f->forget_rc == -EBUSY)
        snprintf(err, errlen, "node %s is alive", node);
    return f->forget_rc;
}

/* ---- HTTP ---------------------------------------------------------------- */

static struct fake fake;
static struct admin *server;
static struct admin_key_table *keys;

struct buf {
    char data[1 << 16];
    size_t n;
};

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t len = size * nmemb;
    if (b->n + len >= sizeof(b->data))
        return 0;
    memcpy(b->data + b->n, p, len);
    b->n += len;
    b->data[b->n] = '\0';
    return len;
}

/* method path [body] -> status; *doc the parsed answer (caller decrefs). */
static long call(const char *method, const char *path, const char *body, json_t **doc)
{
    static struct buf b;
    b.n = 0;
    b.data[0] = '\0';
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", admin_port(server), path);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_USERPWD, "k:secret-secret");
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long status = 0;
    CU_ASSERT_EQUAL(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    json_error_t je;
    json_t *d = json_loads(b.data, 0, &je);
    CU_ASSERT_PTR_NOT_NULL(d);
    if (doc)
        *doc = d;
    else
        json_decref(d);
    return status;
}

static const char *sget(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static json_int_t iget(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static int suite_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    keys = admin_key_table_new();
    if (!keys || admin_key_table_add(keys, "k:secret-secret") < 0)
        return 1;
    struct admin_provider p = {
        .ud = &fake,
        .health = fake_health,
        .nodes = fake_nodes,
        .stats = fake_stats,
        .publish = fake_publish,
        .cluster_leave = fake_leave,
        .cluster_forget = fake_forget,
    };
    struct admin_options opt = {.bind_address = "127.0.0.1", .port = 0};
    char err[256];
    return admin_start(&opt, &p, &admin_key_table_ops, keys, &server, err, sizeof(err)) == 0 ? 0
                                                                                             : 1;
}

static int suite_clean(void)
{
    admin_stop(server);
    admin_key_table_free(keys);
    curl_global_cleanup();
    return 0;
}

static void reset(void)
{
    memset(&fake, 0, sizeof(fake));
    fake.n_nodes = 3;
    fake.has_leader = true;
}

/* ---- tests --------------------------------------------------------------- */

static void test_health_needs_leader(void)
{
    reset();
    json_t *d;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/health", NULL, &d), 200);
    CU_ASSERT_STRING_EQUAL(sget(d, "status"), "ok");
    CU_ASSERT_TRUE(json_is_true(json_object_get(d, "has_leader")));
    json_decref(d);
    fake.has_leader = false;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/health", NULL, &d), 503);
    CU_ASSERT_STRING_EQUAL(sget(d, "status"), "unavailable");
    CU_ASSERT_STRING_EQUAL(sget(d, "reason"), "the cluster has no leader");
    CU_ASSERT_TRUE(json_is_false(json_object_get(d, "has_leader")));
    json_decref(d);
}

static void test_cluster_nodes(void)
{
    reset();
    json_t *d;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/cluster", NULL, &d), 200);
    CU_ASSERT_TRUE(json_is_true(json_object_get(d, "clustered")));
    CU_ASSERT_STRING_EQUAL(sget(d, "self"), "n1");
    CU_ASSERT_STRING_EQUAL(sget(d, "leader"), "n2");
    json_t *nodes = json_object_get(d, "nodes");
    CU_ASSERT_EQUAL(json_array_size(nodes), 3);
    json_t *n3 = json_array_get(nodes, 2);
    CU_ASSERT_STRING_EQUAL(sget(n3, "address"), "127.0.0.13:4370");
    CU_ASSERT_STRING_EQUAL(sget(n3, "role"), "voter");
    CU_ASSERT_TRUE(json_is_false(json_object_get(n3, "reachable")));
    json_decref(d);

    /* more nodes than the server first makes room for: it asks again */
    fake.n_nodes = 12;
    fake.nodes_calls = 0;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/nodes?limit=5&page=3", NULL, &d), 200);
    CU_ASSERT_EQUAL(fake.nodes_calls, 2);
    json_t *data = json_object_get(d, "data");
    CU_ASSERT_EQUAL(json_array_size(data), 2);
    CU_ASSERT_STRING_EQUAL(sget(json_array_get(data, 0), "name"), "n11");
    CU_ASSERT_STRING_EQUAL(sget(json_array_get(data, 1), "role"), "standby");
    CU_ASSERT_EQUAL(iget(json_object_get(d, "meta"), "count"), 12);
    json_decref(d);
}

static void test_stats_summed(void)
{
    reset();
    json_t *d;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/stats", NULL, &d), 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(d, "nodes")), 3);
    json_t *t = json_object_get(d, "total");
    CU_ASSERT_EQUAL(iget(t, "connections"), 60);
    CU_ASSERT_EQUAL(iget(t, "messages_received"), 6000);
    CU_ASSERT_EQUAL(iget(t, "clients_maximum"), 102); /* the largest */
    CU_ASSERT_EQUAL(iget(t, "retained"), 7);          /* one store per cluster */
    CU_ASSERT_EQUAL(iget(t, "uptime_seconds"), 50);
    CU_ASSERT_PTR_NULL(json_object_get(t, "node"));
    json_decref(d);
    fake.stats_rc = -EIO;
    CU_ASSERT_EQUAL(call("GET", "/api/v1/stats", NULL, &d), 500);
    CU_ASSERT_STRING_EQUAL(sget(d, "code"), "internal_error");
    json_decref(d);
    CU_ASSERT_EQUAL(call("GET", "/metrics", NULL, NULL), 500);
}

static void test_membership(void)
{
    reset();
    json_t *d;
    CU_ASSERT_EQUAL(call("POST", "/api/v1/cluster/leave", NULL, &d), 200);
    CU_ASSERT_STRING_EQUAL(sget(d, "result"), "leaving");
    json_decref(d);
    CU_ASSERT_EQUAL(call("DELETE", "/api/v1/cluster/nodes/n%2F3", NULL, &d), 200);
    CU_ASSERT_STRING_EQUAL(fake.forgotten, "n/3");
    CU_ASSERT_STRING_EQUAL(sget(d, "result"), "forgotten");
    json_decref(d);
    fake.forget_rc = -ENOENT;
    CU_ASSERT_EQUAL(call("DELETE", "/api/v1/cluster/nodes/zz", NULL, &d), 404);
    CU_ASSERT_STRING_EQUAL(sget(d, "code"), "node_not_found");
    json_decref(d);
    fake.forget_rc = -EBUSY;
    CU_ASSERT_EQUAL(call("DELETE", "/api/v1/cluster/nodes/n2", NULL, &d), 409);
    CU_ASSERT_STRING_EQUAL(sget(d, "code"), "conflict");
    CU_ASSERT_STRING_EQUAL(sget(d, "message"), "node n2 is alive");
    json_decref(d);
}

static void test_publish_errors(void)
{
    reset();
    json_t *d;
    const char *body = "{\"topic\": \"a/b\", \"payload\": \"aGk=\", \"encoding\": \"base64\"}";
    fake.publish_rc = 4;
    CU_ASSERT_EQUAL(call("POST", "/api/v1/publish", body, &d), 200);
    CU_ASSERT_EQUAL(iget(d, "delivered"), 4);
    json_decref(d);
    fake.publish_rc = -EAGAIN;
    CU_ASSERT_EQUAL(call("POST", "/api/v1/publish", body, &d), 503);
    CU_ASSERT_STRING_EQUAL(sget(d, "message"), "fake refusal");
    json_decref(d);
    fake.publish_rc = -EINVAL;
    CU_ASSERT_EQUAL(call("POST", "/api/v1/publish", body, &d), 400);
    json_decref(d);
    fake.publish_rc = -ENOMEM;
    CU_ASSERT_EQUAL(call("POST", "/api/v1/publish", body, &d), 500);
    json_decref(d);
}

/* Run `starling ctl ARGS` in this process against the server; returns the
 * exit code and what it printed on stdout (in out). */
static int run_ctl(char *out, size_t outlen, const char *a1, const char *a2)
{
    char port[16];
    snprintf(port, sizeof(port), "%u", admin_port(server));
    char *argv[] = {"ctl",      "--port",   port, "--api-key", "k:secret-secret",
                    (char *)a1, (char *)a2, NULL};
    int argc = a2 ? 7 : 6;
    char path[] = "/tmp/starling_test_ctl_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);
    int rc = ctl_main(argc, argv);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    ssize_t n = pread(fd, out, outlen - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return rc;
}

static void test_ctl_tables(void)
{
    reset();
    char out[8192];
    CU_ASSERT_EQUAL(run_ctl(out, sizeof(out), "cluster", "status"), 0);
    CU_ASSERT_STRING_EQUAL(out, "cluster: clustered, 3 nodes, leader n2\n"
                                "NAME  ADDRESS          ROLE   REACHABLE  LEADER\n"
                                "n1    127.0.0.11:4370  voter  yes        no\n"
                                "n2    127.0.0.12:4370  voter  yes        yes\n"
                                "n3    127.0.0.13:4370  voter  no         no\n");
    CU_ASSERT_EQUAL(run_ctl(out, sizeof(out), "stats", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "COUNTER            n1    n2    n3    TOTAL\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nconnections        10    20    30    60\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nmessages_received  1000  2000  3000  6000\n"));
    fake.forget_rc = -ENOENT;
    CU_ASSERT_EQUAL(run_ctl(out, sizeof(out), "cluster", "forget"), 2); /* NODE missing */
    fake.has_leader = false;
    CU_ASSERT_EQUAL(run_ctl(out, sizeof(out), "health", NULL), 1);
    CU_ASSERT_STRING_EQUAL(out, "");
}

static void test_start_errors(void)
{
    struct admin_provider p = {0};
    struct admin *a = NULL;
    char err[256];
    struct admin_options bad = {.bind_address = "localhost", .port = 0};
    CU_ASSERT_EQUAL(admin_start(&bad, &p, NULL, NULL, &a, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "admin API: bad bind address 'localhost'");
    struct admin_options busy = {.bind_address = "127.0.0.1", .port = admin_port(server)};
    CU_ASSERT_EQUAL(admin_start(&busy, &p, NULL, NULL, &a, err, sizeof(err)), -EADDRINUSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "Address already in use"));
    admin_stop(NULL);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("admin_http", suite_init, suite_clean);
    if (!s)
        return 2;
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"health of a cluster needs a leader", test_health_needs_leader},
        {"cluster and nodes", test_cluster_nodes},
        {"stats of every node, summed", test_stats_summed},
        {"leave and forget", test_membership},
        {"publish: provider errors", test_publish_errors},
        {"ctl: tables of a cluster", test_ctl_tables},
        {"start errors", test_start_errors},
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
