/*
 * api.c - the endpoints of the admin API and their route table (docs/api.md).
 *
 * Each handler asks the provider (admin.h) and turns the answer into JSON;
 * none of them knows whether the provider is a single node or a cluster.
 * Adding an endpoint is a handler and a line in admin_routes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>
#include <openssl/evp.h>

#include "admin_int.h"

/* ---- helpers ------------------------------------------------------------- */

/* The nodes from the provider, in a malloc'd array (*n of them), or NULL
 * with a reply made. */
static struct admin_node *api_nodes(struct admin_req *r, size_t *n)
{
    const struct admin_provider *p = &r->a->provider;
    size_t cap = 8;
    for (int attempt = 0; attempt < 3; attempt++) {
        struct admin_node *v = calloc(cap, sizeof(*v));
        if (!v)
            break;
        int got = p->nodes ? p->nodes(p->ud, v, cap) : -ENOSYS;
        if (got < 0) {
            free(v);
            admin_reply_error(r, 500, "internal_error", "cannot list the nodes: %s",
                              strerror(-got));
            return NULL;
        }
        if ((size_t)got <= cap) {
            *n = (size_t)got;
            return v;
        }
        free(v);
        cap = (size_t)got;
    }
    admin_reply_error(r, 500, "internal_error", "cannot list the nodes");
    return NULL;
}

static json_t *api_node_json(const struct admin_node *n)
{
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:b, s:b}", "name", n->name, "address", n->address, "role",
                  n->role ? n->role : "unknown", "reachable", n->reachable, "leader", n->leader);
    if (o && n->has_counts) {
        json_object_set_new(o, "routes", json_integer((json_int_t)n->routes));
        json_object_set_new(o, "sessions", json_integer((json_int_t)n->sessions));
    }
    return o;
}

static json_t *api_stats_json(const struct admin_stats *s, bool with_node)
{
    json_t *o = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections",
        (json_int_t)s->connections, "clients_connected", (json_int_t)s->clients_connected,
        "clients_maximum", (json_int_t)s->clients_maximum, "sessions", (json_int_t)s->sessions,
        "subscriptions", (json_int_t)s->subscriptions, "retained", (json_int_t)s->retained,
        "messages_received", (json_int_t)s->msgs_received, "messages_sent",
        (json_int_t)s->msgs_sent, "messages_dropped", (json_int_t)s->msgs_dropped, "bytes_received",
        (json_int_t)s->bytes_received, "bytes_sent", (json_int_t)s->bytes_sent, "uptime_seconds",
        (json_int_t)s->uptime_s);
    if (o && with_node) {
        json_object_set_new(o, "node", json_string(s->node));
        json_object_set_new(o, "version", json_string(s->version));
    }
    return o;
}

/* ---- GET /api/v1/health -------------------------------------------------- */

static void api_health(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    struct admin_health h = {0};
    if (p->health)
        p->health(p->ud, &h);
    bool ok = h.serving && (!h.clustered || h.has_leader);
    const char *reason = h.reason;
    if (!ok && !reason)
        reason = !h.serving ? "the node does not serve clients" : "the cluster has no leader";
    json_t *doc = json_pack("{s:s, s:b, s:b}", "status", ok ? "ok" : "unavailable", "serving",
                            h.serving, "clustered", h.clustered);
    if (doc && h.clustered)
        json_object_set_new(doc, "has_leader", json_boolean(h.has_leader));
    if (doc && !ok)
        json_object_set_new(doc, "reason", json_string(reason));
    admin_reply_json(r, ok ? 200 : 503, doc);
}

/* ---- GET /api/v1/cluster, GET /api/v1/nodes ------------------------------ */

static void api_cluster(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    size_t n;
    struct admin_node *v = api_nodes(r, &n);
    if (!v)
        return;
    struct admin_health h = {0};
    if (p->health)
        p->health(p->ud, &h);
    json_t *nodes = json_array();
    const char *self = NULL, *leader = NULL;
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(nodes, api_node_json(&v[i]));
        if (v[i].self)
            self = v[i].name;
        if (v[i].leader)
            leader = v[i].name;
    }
    json_t *doc = json_pack("{s:b, s:s?, s:s?, s:o}", "clustered", h.clustered, "self", self,
                            "leader", leader, "nodes", nodes);
    free(v);
    admin_reply_json(r, 200, doc);
}

static void api_nodes_list(struct admin_req *r)
{
    unsigned page, limit;
    char why[128];
    if (admin_paging_parse(admin_req_query(r, "page"), admin_req_query(r, "limit"), &page, &limit,
                           why, sizeof(why)) < 0) {
        admin_reply_error(r, 400, "bad_paging", "%s", why);
        return;
    }
    size_t n;
    struct admin_node *v = api_nodes(r, &n);
    if (!v)
        return;
    json_t *data = json_array();
    size_t first = (size_t)(page - 1) * limit;
    for (size_t i = first; i < n && i < first + limit; i++)
        json_array_append_new(data, api_node_json(&v[i]));
    free(v);
    admin_reply_json(r, 200,
                     json_pack("{s:o, s:{s:i, s:i, s:I}}", "data", data, "meta", "page", (int)page,
                               "limit", (int)limit, "count", (json_int_t)n));
}

/* ---- GET /api/v1/stats --------------------------------------------------- */

static void api_stats(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!p->stats) {
        admin_reply_error(r, 501, "not_implemented", "no counters on this node");
        return;
    }
    size_t cap = 8;
    struct admin_stats *v = NULL;
    int got = -ENOMEM;
    for (int attempt = 0; attempt < 3; attempt++) {
        free(v);
        v = calloc(cap, sizeof(*v));
        if (!v)
            break;
        got = p->stats(p->ud, true, v, cap);
        if (got < 0 || (size_t)got <= cap)
            break;
        cap = (size_t)got;
    }
    if (got < 0 || (size_t)got > cap) {
        free(v);
        admin_reply_error(r, 500, "internal_error", "cannot read the counters");
        return;
    }
    /* The sum over the nodes of what adds up (not maxima, not uptimes). */
    struct admin_stats sum = {0};
    json_t *nodes = json_array();
    for (int i = 0; i < got; i++) {
        const struct admin_stats *s = &v[i];
        json_array_append_new(nodes, api_stats_json(s, true));
        sum.connections += s->connections;
        sum.clients_connected += s->clients_connected;
        sum.sessions += s->sessions;
        sum.subscriptions += s->subscriptions;
        sum.msgs_received += s->msgs_received;
        sum.msgs_sent += s->msgs_sent;
        sum.msgs_dropped += s->msgs_dropped;
        sum.bytes_received += s->bytes_received;
        sum.bytes_sent += s->bytes_sent;
        if (s->clients_maximum > sum.clients_maximum)
            sum.clients_maximum = s->clients_maximum;
        if (s->retained > sum.retained)
            sum.retained = s->retained; /* retained messages are per cluster */
        if (s->uptime_s > sum.uptime_s)
            sum.uptime_s = s->uptime_s;
    }
    free(v);
    admin_reply_json(r, 200,
                     json_pack("{s:o, s:o}", "nodes", nodes, "total", api_stats_json(&sum, false)));
}

/* ---- GET /metrics -------------------------------------------------------- */

static void api_metrics(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    struct admin_stats s = {0};
    struct admin_health h = {0};
    if (!p->stats || p->stats(p->ud, false, &s, 1) < 1) {
        admin_reply_error(r, 500, "internal_error", "cannot read the counters");
        return;
    }
    if (p->health)
        p->health(p->ud, &h);
    struct admin_metrics *m = NULL;
    if (p->metrics) {
        if (!(m = calloc(1, sizeof(*m)))) {
            admin_reply_error(r, 500, "internal_error", "out of memory");
            return;
        }
        p->metrics(p->ud, m);
    }
    uint64_t req[6];
    for (int i = 0; i < 6; i++)
        req[i] = atomic_load(&r->a->requests[i]);
    size_t len;
    char *text = admin_metrics_render(&s, &h, m, req, &len);
    free(m);
    if (!text) {
        admin_reply_error(r, 500, "internal_error", "out of memory");
        return;
    }
    admin_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- POST /api/v1/publish ------------------------------------------------ */

/* Decode standard base64 (with or without padding, no blanks). Returns the
 * length or -1. out holds at least strlen(in) * 3 / 4 + 3 bytes. */
static int api_base64_decode(const char *in, size_t len, unsigned char *out)
{
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '='))
            return -1;
    }
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    if (!ctx)
        return -1;
    int n = 0, m = 0;
    EVP_DecodeInit(ctx);
    int rc = EVP_DecodeUpdate(ctx, out, &n, (const unsigned char *)in, (int)len);
    if (rc >= 0 && EVP_DecodeFinal(ctx, out + n, &m) == 1)
        n += m;
    else
        n = -1;
    EVP_ENCODE_CTX_free(ctx);
    return n;
}

/* Check and publish one message of a POST /publish body. Returns 0 with
 * *res set (what the reply shows), or the HTTP status of the failure with
 * its code and message in code / why. */
static unsigned api_publish_one(struct admin_req *r, json_t *b, json_t **res, const char **code,
                                char *why, size_t whylen)
{
    static const char *const fields[] = {"topic", "payload", "encoding", "qos", "retain", NULL};
    const struct admin_provider *p = &r->a->provider;
    *code = "bad_request";
    if (!json_is_object(b)) {
        snprintf(why, whylen, "a message must be a JSON object");
        return 400;
    }
    if (admin_json_check_fields(b, fields, why, whylen) < 0)
        return 400;
    json_t *topic = json_object_get(b, "topic"), *payload = json_object_get(b, "payload");
    json_t *enc = json_object_get(b, "encoding"), *qos = json_object_get(b, "qos");
    json_t *retain = json_object_get(b, "retain");
    if (!json_is_string(topic) || json_string_length(topic) == 0 ||
        json_string_length(topic) > 65535 ||
        strlen(json_string_value(topic)) != json_string_length(topic)) {
        snprintf(why, whylen,
                 "'topic' must be a non-empty string of at most 65535 bytes without NUL");
        return 400;
    }
    if (payload && !json_is_string(payload)) {
        snprintf(why, whylen, "'payload' must be a string");
        return 400;
    }
    bool base64 = false;
    if (enc) {
        const char *e = json_is_string(enc) ? json_string_value(enc) : "";
        if (strcmp(e, "base64") == 0)
            base64 = true;
        else if (strcmp(e, "plain") != 0) {
            snprintf(why, whylen, "'encoding' must be \"plain\" or \"base64\"");
            return 400;
        }
    }
    if (qos &&
        (!json_is_integer(qos) || json_integer_value(qos) < 0 || json_integer_value(qos) > 2)) {
        snprintf(why, whylen, "'qos' must be 0, 1 or 2");
        return 400;
    }
    if (retain && !json_is_boolean(retain)) {
        snprintf(why, whylen, "'retain' must be true or false");
        return 400;
    }
    if (!p->publish) {
        *code = "not_implemented";
        snprintf(why, whylen, "this node cannot publish");
        return 501;
    }
    const char *text = payload ? json_string_value(payload) : "";
    size_t text_len = payload ? json_string_length(payload) : 0;
    unsigned char *raw = NULL;
    struct admin_publish pub = {
        .topic = json_string_value(topic),
        .payload = text,
        .payload_len = text_len,
        .qos = qos ? (uint8_t)json_integer_value(qos) : 0,
        .retain = retain ? json_is_true(retain) : false,
    };
    if (base64) {
        raw = malloc(text_len / 4 * 3 + 6);
        int n = raw ? api_base64_decode(text, text_len, raw) : -1;
        if (n < 0) {
            free(raw);
            snprintf(why, whylen, "'payload' is not valid base64");
            return 400;
        }
        pub.payload = raw;
        pub.payload_len = (size_t)n;
    }
    why[0] = '\0';
    int rc = p->publish(p->ud, &pub, why, whylen);
    free(raw);
    if (rc == -EINVAL) {
        if (!why[0])
            snprintf(why, whylen, "the message was refused");
        return 400;
    }
    if (rc == -EAGAIN) {
        *code = "unavailable";
        if (!why[0])
            snprintf(why, whylen, "the node does not serve");
        return 503;
    }
    if (rc < 0) {
        *code = "internal_error";
        if (!why[0])
            snprintf(why, whylen, "%s", strerror(-rc));
        return 500;
    }
    *res = json_pack("{s:s, s:i, s:b, s:i}", "topic", pub.topic, "qos", pub.qos, "retain",
                     pub.retain, "delivered", rc);
    return 0;
}

static void api_publish(struct admin_req *r)
{
    char why[256];
    const char *code;
    json_t *res = NULL;
    unsigned st = api_publish_one(r, r->body, &res, &code, why, sizeof(why));
    if (st)
        admin_reply_error(r, st, code, "%s", why);
    else
        admin_reply_json(r, 200, res);
}

/* ---- POST /api/v1/publish/batch ------------------------------------------ */

#define ADMIN_BATCH_MAX 100

/* A JSON array of messages, each as POST /publish takes it. Every message
 * is checked before any is published: a bad one refuses the whole batch
 * (400, naming its index). The answer lists each message's result. */
static void api_publish_batch(struct admin_req *r)
{
    json_t *b = r->body;
    size_t n = json_array_size(b);
    if (!json_is_array(b) || n == 0 || n > ADMIN_BATCH_MAX) {
        admin_reply_error(r, 400, "bad_request", "the body must be an array of 1 to %d messages",
                          ADMIN_BATCH_MAX);
        return;
    }
    static const char *const fields[] = {"topic", "payload", "encoding", "qos", "retain", NULL};
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(b, i);
        json_t *topic = json_object_get(m, "topic");
        char why[200];
        if (!json_is_object(m) || admin_json_check_fields(m, fields, why, sizeof(why)) < 0 ||
            !json_is_string(topic)) {
            admin_reply_error(r, 400, "bad_request",
                              "message %zu: must be an object with a 'topic' and known fields", i);
            return;
        }
    }
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++) {
        char why[256];
        const char *code;
        json_t *res = NULL;
        unsigned st = api_publish_one(r, json_array_get(b, i), &res, &code, why, sizeof(why));
        if (st) {
            if (i == 0) {
                json_decref(out);
                admin_reply_error(r, st, code, "message 0: %s", why);
                return;
            }
            res = json_pack("{s:s, s:s, s:s}", "topic",
                            json_string_value(json_object_get(json_array_get(b, i), "topic")),
                            "code", code, "message", why);
        }
        json_array_append_new(out, res);
    }
    admin_reply_json(r, 200, json_pack("{s:o}", "data", out));
}

/* ---- cluster membership -------------------------------------------------- */

static void api_membership_reply(struct admin_req *r, int rc, const char *why, const char *what)
{
    if (rc == 0)
        admin_reply_json(r, 200, json_pack("{s:s}", "result", what));
    else if (rc == -ENOENT)
        admin_reply_error(r, 404, "node_not_found", "%s", why[0] ? why : "no such node");
    else if (rc == -EBUSY)
        admin_reply_error(r, 409, "conflict", "%s", why[0] ? why : "not now");
    else
        admin_reply_error(r, 500, "internal_error", "%s", why[0] ? why : strerror(-rc));
}

static void api_cluster_leave(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!p->cluster_leave) {
        admin_reply_error(r, 409, "not_clustered", "this node is not part of a cluster");
        return;
    }
    char why[256] = "";
    api_membership_reply(r, p->cluster_leave(p->ud, why, sizeof(why)), why, "leaving");
}

static void api_cluster_forget(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!p->cluster_forget) {
        admin_reply_error(r, 409, "not_clustered", "this node is not part of a cluster");
        return;
    }
    char why[256] = "";
    const char *name = admin_params_get(&r->params, "name");
    api_membership_reply(r, p->cluster_forget(p->ud, name, why, sizeof(why)), why, "forgotten");
}

/* ---- the route table ----------------------------------------------------- */

static const char *const paging_query[] = {"page", "limit", NULL};
static const char *const clients_query[] = {"page",      "limit",     "cursor",
                                            "node",      "username",  "clientid_prefix",
                                            "connected", "proto_ver", NULL};
static const char *const subs_query[] = {"page", "limit", "clientid", "topic", "node", NULL};
static const char *const routes_query[] = {"page", "limit", "topic", NULL};

const struct admin_route admin_routes[] = {
    {"GET", "/api/v1/health", api_health, ROUTE_PUBLIC, NULL},
    {"GET", "/api/v1/cluster", api_cluster, 0, NULL},
    {"POST", "/api/v1/cluster/leave", api_cluster_leave, 0, NULL},
    {"DELETE", "/api/v1/cluster/nodes/{name}", api_cluster_forget, 0, NULL},
    {"GET", "/api/v1/nodes", api_nodes_list, 0, paging_query},
    {"GET", "/api/v1/stats", api_stats, 0, NULL},
    {"POST", "/api/v1/publish", api_publish, ROUTE_BODY, NULL},
    {"POST", "/api/v1/publish/batch", api_publish_batch, ROUTE_BODY | ROUTE_BODY_ARRAY, NULL},
    {"GET", "/api/v1/clients", api_clients_list, 0, clients_query},
    {"GET", "/api/v1/clients/{id}", api_client_show, 0, NULL},
    {"DELETE", "/api/v1/clients/{id}", api_client_kick, 0, NULL},
    {"GET", "/api/v1/subscriptions", api_subscriptions, 0, subs_query},
    {"GET", "/api/v1/routes", api_routes, 0, routes_query},
    {"GET", "/api/v1/topics", api_topics, 0, paging_query},
    {"GET", "/api/v1/retained", api_retained_list, 0, paging_query},
    {"GET", "/api/v1/retained/{topic}", api_retained_show, 0, NULL},
    {"DELETE", "/api/v1/retained/{topic}", api_retained_delete, 0, NULL},
    {"GET", "/api/v1/banned", api_banned_list, 0, paging_query},
    {"POST", "/api/v1/banned", api_banned_create, ROUTE_BODY, NULL},
    {"DELETE", "/api/v1/banned/{as}/{who}", api_banned_delete, 0, NULL},
    {"GET", "/api/v1/users", api_users_list, 0, paging_query},
    {"POST", "/api/v1/users", api_user_create, ROUTE_BODY, NULL},
    {"GET", "/api/v1/users/{name}", api_user_show, 0, NULL},
    {"PUT", "/api/v1/users/{name}", api_user_update, ROUTE_BODY, NULL},
    {"DELETE", "/api/v1/users/{name}", api_user_delete, 0, NULL},
    {"GET", "/api/v1/apikeys", api_apikeys_list, 0, paging_query},
    {"POST", "/api/v1/apikeys", api_apikey_create, ROUTE_BODY, NULL},
    {"DELETE", "/api/v1/apikeys/{key}", api_apikey_delete, 0, NULL},
    {"GET", "/metrics", api_metrics, ROUTE_METRICS, NULL},
};

const size_t admin_n_routes = sizeof(admin_routes) / sizeof(admin_routes[0]);
