/*
 * api_data.c - the endpoints over the cluster's data (docs/api.md):
 * clients, subscriptions, routes, topics, retained messages.
 *
 * Any node answers for the whole cluster: a handler asks every node for its
 * part through the provider's gather (each node's answer is already sorted
 * and cut at what the page needs), merges the parts in one order that does
 * not depend on the node asked (client id, then topic, then node name),
 * and cuts the page. Nodes that did not answer are listed in meta.missing.
 *
 * Paging: page (1..) and limit (1..1000) everywhere; GET /clients also takes
 * a cursor (the meta.cursor of the previous page): the next page starts
 * after the last client of that one, whatever connected meanwhile.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "admin_int.h"

/* ---- helpers ------------------------------------------------------------- */

/* page and limit of the request, or a 400 reply and -EINVAL. */
static int api_paging(struct admin_req *r, unsigned *page, unsigned *limit)
{
    char why[128];
    if (admin_paging_parse(admin_req_query(r, "page"), admin_req_query(r, "limit"), page, limit,
                           why, sizeof(why)) < 0) {
        admin_reply_error(r, 400, "bad_paging", "%s", why);
        return -EINVAL;
    }
    return 0;
}

/* Every node's answer to q (a JSON array, see admin.h), or NULL with a
 * reply made. Takes the reference on q. */
static json_t *api_gather(struct admin_req *r, json_t *q)
{
    const struct admin_provider *p = &r->a->provider;
    if (!q) {
        admin_reply_error(r, 500, "internal_error", "out of memory");
        return NULL;
    }
    if (!p->gather) {
        json_decref(q);
        admin_reply_error(r, 501, "not_implemented", "this node cannot answer that");
        return NULL;
    }
    char why[256] = "";
    json_t *all = p->gather(p->ud, q, why, sizeof(why));
    json_decref(q);
    if (!all)
        admin_reply_error(r, 500, "internal_error", "%s", why[0] ? why : "no answer");
    return all;
}

/* The nodes that did not answer, as meta.missing (a new array). */
static json_t *api_missing(json_t *all)
{
    json_t *m = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        if (json_object_get(e, "error"))
            json_array_append(m, json_object_get(e, "node"));
    }
    return m;
}

/* Append every element of each node's result.data to out. Returns the sum
 * of the results' counts. */
static json_int_t api_concat(json_t *all, json_t *out)
{
    json_int_t count = 0;
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        json_t *res = json_object_get(e, "result");
        json_t *c = json_object_get(res, "count");
        if (json_is_integer(c))
            count += json_integer_value(c);
        json_array_extend(out, json_object_get(res, "data"));
    }
    return count;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static int cmp_client(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    int c = strcmp(jstr(a, "clientid"), jstr(b, "clientid"));
    return c ? c : strcmp(jstr(a, "node"), jstr(b, "node"));
}

static int cmp_sub(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    int c = strcmp(jstr(a, "clientid"), jstr(b, "clientid"));
    if (!c)
        c = strcmp(jstr(a, "topic"), jstr(b, "topic"));
    return c ? c : strcmp(jstr(a, "node"), jstr(b, "node"));
}

static int cmp_route(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    int c = strcmp(jstr(a, "topic"), jstr(b, "topic"));
    return c ? c : strcmp(jstr(a, "node"), jstr(b, "node"));
}

/* Sort the array arr in place with cmp. */
static void api_sort(json_t *arr, int (*cmp)(const void *, const void *))
{
    size_t n = json_array_size(arr);
    if (n < 2)
        return;
    json_t **v = malloc(n * sizeof(*v));
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(arr, i));
    qsort(v, n, sizeof(*v), cmp);
    json_array_clear(arr);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, v[i]);
    free(v);
}

/* Elements [first, first + limit) of arr, a new array. */
static json_t *api_slice(json_t *arr, size_t first, size_t limit)
{
    json_t *out = json_array();
    for (size_t i = first; i < json_array_size(arr) && i < first + limit; i++)
        json_array_append(out, json_array_get(arr, i));
    return out;
}

static json_t *api_meta(unsigned page, unsigned limit, json_int_t count, bool hasnext,
                        json_t *missing)
{
    json_t *m = json_pack("{s:i, s:i, s:I, s:b}", "page", (int)page, "limit", (int)limit, "count",
                          count, "hasnext", hasnext);
    if (m && json_array_size(missing))
        json_object_set(m, "missing", missing);
    json_decref(missing);
    return m;
}

/* base64url without padding of s, for cursors. */
static char *api_cursor_encode(const char *s)
{
    size_t len = strlen(s);
    char *out = malloc(len / 3 * 4 + 8);
    if (!out)
        return NULL;
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)len);
    for (char *p = out; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
        else if (*p == '=')
            *p = '\0';
    }
    return out;
}

static char *api_cursor_decode(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 4096 || len % 4 == 1)
        return NULL;
    char *in = malloc(len + 4);
    unsigned char *out = malloc(len / 4 * 3 + 4);
    if (!in || !out) {
        free(in);
        free(out);
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            free(in);
            free(out);
            return NULL;
        }
        in[i] = c;
    }
    size_t pad = (4 - len % 4) % 4;
    for (size_t i = 0; i < pad; i++)
        in[len + i] = '=';
    in[len + pad] = '\0';
    int n = EVP_DecodeBlock(out, (unsigned char *)in, (int)(len + pad));
    free(in);
    if (n < 0) {
        free(out);
        return NULL;
    }
    n -= (int)pad;
    out[n] = '\0';
    if (n == 0 || strlen((char *)out) != (size_t)n) {
        free(out);
        return NULL;
    }
    return (char *)out;
}

/* A boolean query value: "true" / "false", else -EINVAL. */
static int api_query_bool(const char *v, bool *out)
{
    if (strcmp(v, "true") == 0)
        *out = true;
    else if (strcmp(v, "false") == 0)
        *out = false;
    else
        return -EINVAL;
    return 0;
}

/* ---- GET /api/v1/clients ------------------------------------------------- */

static int cmp_str(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    return strcmp(json_string_value(a) ? json_string_value(a) : "",
                  json_string_value(b) ? json_string_value(b) : "");
}

/* Page `page` > 1 without a cursor: ask for the client ids of the pages
 * before it only (cheap), and start the page after the last of them, as a
 * cursor would ("after" set in q). When there are fewer, q is left as is
 * (the page is empty). 0, or -1 with a reply made. */
static int api_clients_seek(struct admin_req *r, json_t *q, size_t first)
{
    json_t *ids_q = json_deep_copy(q);
    json_object_set_new(ids_q, "ids_only", json_true());
    json_object_set_new(ids_q, "limit", json_integer((json_int_t)first));
    json_t *all = api_gather(r, ids_q);
    if (!all)
        return -1;
    json_t *ids = json_array();
    api_concat(all, ids);
    json_decref(all);
    if (json_array_size(ids) >= first) {
        api_sort(ids, cmp_str);
        json_object_set(q, "after", json_array_get(ids, first - 1));
    }
    json_decref(ids);
    return 0;
}

void api_clients_list(struct admin_req *r)
{
    unsigned page, limit;
    if (api_paging(r, &page, &limit) < 0)
        return;
    json_t *q = json_pack("{s:s}", "op", "clients");
    const char *v;
    char *after = NULL;
    if ((v = admin_req_query(r, "cursor"))) {
        if (admin_req_query(r, "page")) {
            json_decref(q);
            admin_reply_error(r, 400, "bad_paging", "give either page or cursor, not both");
            return;
        }
        if (!(after = api_cursor_decode(v))) {
            json_decref(q);
            admin_reply_error(r, 400, "bad_paging", "the cursor is not one this API gave");
            return;
        }
        json_object_set_new(q, "after", json_string(after));
        free(after);
    }
    if ((v = admin_req_query(r, "node")))
        json_object_set_new(q, "node", json_string(v));
    if ((v = admin_req_query(r, "username")))
        json_object_set_new(q, "username", json_string(v));
    if ((v = admin_req_query(r, "clientid_prefix")))
        json_object_set_new(q, "prefix", json_string(v));
    if ((v = admin_req_query(r, "connected"))) {
        bool b;
        if (api_query_bool(v, &b) < 0) {
            json_decref(q);
            admin_reply_error(r, 400, "bad_request", "connected must be true or false");
            return;
        }
        json_object_set_new(q, "connected", json_boolean(b));
    }
    if ((v = admin_req_query(r, "proto_ver"))) {
        if (strcmp(v, "3") && strcmp(v, "4") && strcmp(v, "5")) {
            json_decref(q);
            admin_reply_error(r, 400, "bad_request",
                              "proto_ver must be 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0)");
            return;
        }
        json_object_set_new(q, "proto", json_integer(v[0] - '0'));
    }
    size_t first = (size_t)(page - 1) * limit;
    if (first > 0 && api_clients_seek(r, q, first) < 0)
        return; /* replied */
    if (json_object_get(q, "after"))
        first = 0; /* a page that starts after a client: like a cursor */
    /* one more than the page needs: whether there is a next page */
    json_object_set_new(q, "limit", json_integer((json_int_t)(first + limit + 1)));
    json_t *all = api_gather(r, q);
    if (!all)
        return;
    json_t *merged = json_array();
    json_int_t count = api_concat(all, merged);
    api_sort(merged, cmp_client);
    bool hasnext = json_array_size(merged) > first + limit;
    json_t *data = api_slice(merged, first, limit);
    json_t *meta = api_meta(page, limit, count, hasnext, api_missing(all));
    if (meta && hasnext && json_array_size(data)) {
        char *cur =
            api_cursor_encode(jstr(json_array_get(data, json_array_size(data) - 1), "clientid"));
        json_object_set_new(meta, "cursor", cur ? json_string(cur) : json_null());
        free(cur);
    }
    json_decref(merged);
    json_decref(all);
    admin_reply_json(r, 200, json_pack("{s:o, s:o}", "data", data, "meta", meta));
}

/* ---- GET, DELETE /api/v1/clients/{id} ------------------------------------ */

void api_client_show(struct admin_req *r)
{
    const char *id = admin_params_get(&r->params, "id");
    json_t *all = api_gather(r, json_pack("{s:s, s:s}", "op", "client", "id", id));
    if (!all)
        return;
    json_t *found = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        json_t *c = json_object_get(json_object_get(e, "result"), "client");
        /* a connected session wins over an offline one of another node */
        if (json_is_object(c) && (!found || (json_is_true(json_object_get(c, "connected")) &&
                                             !json_is_true(json_object_get(found, "connected")))))
            found = c;
    }
    if (!found)
        admin_reply_error(r, 404, "client_not_found", "no client '%.200s'", id);
    else
        admin_reply_json(r, 200, json_incref(found));
    json_decref(all);
}

void api_client_kick(struct admin_req *r)
{
    const char *id = admin_params_get(&r->params, "id");
    json_t *all = api_gather(r, json_pack("{s:s, s:s}", "op", "kick", "id", id));
    if (!all)
        return;
    bool kicked = false, offline = false;
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        const char *res = jstr(json_object_get(e, "result"), "result");
        kicked |= strcmp(res, "kicked") == 0;
        offline |= strcmp(res, "not_connected") == 0;
    }
    json_decref(all);
    if (kicked)
        admin_reply_json(r, 200, json_pack("{s:s, s:s}", "clientid", id, "result", "kicked"));
    else if (offline)
        admin_reply_error(r, 409, "not_connected", "client '%.200s' is not connected", id);
    else
        admin_reply_error(r, 404, "client_not_found", "no client '%.200s'", id);
}

/* ---- GET /api/v1/subscriptions ------------------------------------------- */

void api_subscriptions(struct admin_req *r)
{
    unsigned page, limit;
    if (api_paging(r, &page, &limit) < 0)
        return;
    size_t first = (size_t)(page - 1) * limit;
    json_t *q =
        json_pack("{s:s, s:I}", "op", "subscriptions", "limit", (json_int_t)(first + limit));
    const char *v;
    if ((v = admin_req_query(r, "clientid")))
        json_object_set_new(q, "client", json_string(v));
    if ((v = admin_req_query(r, "topic")))
        json_object_set_new(q, "topic", json_string(v));
    if ((v = admin_req_query(r, "node")))
        json_object_set_new(q, "node", json_string(v));
    json_t *all = api_gather(r, q);
    if (!all)
        return;
    json_t *merged = json_array();
    json_int_t count = api_concat(all, merged);
    api_sort(merged, cmp_sub);
    json_t *data = api_slice(merged, first, limit);
    json_t *meta =
        api_meta(page, limit, count, (json_int_t)(first + limit) < count, api_missing(all));
    json_decref(merged);
    json_decref(all);
    admin_reply_json(r, 200, json_pack("{s:o, s:o}", "data", data, "meta", meta));
}

/* ---- GET /api/v1/routes, /api/v1/topics ---------------------------------- */

/* Every (topic filter, node) route of the cluster, sorted; NULL with a
 * reply made. *missing: the nodes that did not answer. */
static json_t *api_all_routes(struct admin_req *r, json_t **missing)
{
    json_t *all = api_gather(r, json_pack("{s:s}", "op", "routes"));
    if (!all)
        return NULL;
    json_t *routes = json_array();
    size_t i, j;
    json_t *e, *f;
    json_array_foreach(all, i, e)
    {
        json_t *node = json_object_get(e, "node");
        json_array_foreach(json_object_get(json_object_get(e, "result"), "data"), j, f)
        {
            json_array_append_new(routes, json_pack("{s:O, s:O}", "topic", f, "node", node));
        }
    }
    *missing = api_missing(all);
    json_decref(all);
    api_sort(routes, cmp_route);
    return routes;
}

void api_routes(struct admin_req *r)
{
    unsigned page, limit;
    if (api_paging(r, &page, &limit) < 0)
        return;
    const char *topic = admin_req_query(r, "topic");
    json_t *missing;
    json_t *routes = api_all_routes(r, &missing);
    if (!routes)
        return;
    if (topic) {
        json_t *only = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(routes, i, e)
        {
            if (strcmp(jstr(e, "topic"), topic) == 0)
                json_array_append(only, e);
        }
        json_decref(routes);
        routes = only;
    }
    size_t first = (size_t)(page - 1) * limit, n = json_array_size(routes);
    json_t *data = api_slice(routes, first, limit);
    json_decref(routes);
    admin_reply_json(r, 200,
                     json_pack("{s:o, s:o}", "data", data, "meta",
                               api_meta(page, limit, (json_int_t)n, first + limit < n, missing)));
}

void api_topics(struct admin_req *r)
{
    unsigned page, limit;
    if (api_paging(r, &page, &limit) < 0)
        return;
    json_t *missing;
    json_t *routes = api_all_routes(r, &missing);
    if (!routes)
        return;
    /* one entry per topic filter, with the nodes that have a route for it */
    json_t *topics = json_array(), *cur = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(routes, i, e)
    {
        const char *t = jstr(e, "topic");
        if (!cur || strcmp(jstr(cur, "topic"), t) != 0) {
            cur = json_pack("{s:s, s:[]}", "topic", t, "nodes");
            json_array_append_new(topics, cur);
        }
        json_array_append(json_object_get(cur, "nodes"), json_object_get(e, "node"));
    }
    json_decref(routes);
    size_t first = (size_t)(page - 1) * limit, n = json_array_size(topics);
    json_t *data = api_slice(topics, first, limit);
    json_decref(topics);
    admin_reply_json(r, 200,
                     json_pack("{s:o, s:o}", "data", data, "meta",
                               api_meta(page, limit, (json_int_t)n, first + limit < n, missing)));
}

/* ---- retained messages --------------------------------------------------- */

/* This node's answer to q (every node holds every retained message), or
 * NULL with a reply made. Takes the reference on q. */
static json_t *api_local(struct admin_req *r, json_t *q)
{
    const struct admin_provider *p = &r->a->provider;
    if (!p->query_local || !q) {
        json_decref(q);
        admin_reply_error(r, 501, "not_implemented", "this node cannot answer that");
        return NULL;
    }
    char why[256] = "";
    json_t *res = p->query_local(p->ud, q, why, sizeof(why));
    json_decref(q);
    if (!res)
        admin_reply_error(r, 500, "internal_error", "%s", why[0] ? why : "no answer");
    return res;
}

void api_retained_list(struct admin_req *r)
{
    unsigned page, limit;
    if (api_paging(r, &page, &limit) < 0)
        return;
    size_t first = (size_t)(page - 1) * limit;
    json_t *res = api_local(
        r, json_pack("{s:s, s:I}", "op", "retained", "limit", (json_int_t)(first + limit)));
    if (!res)
        return;
    json_t *all = json_object_get(res, "data");
    json_int_t count = json_integer_value(json_object_get(res, "count"));
    json_t *data = api_slice(all, first, limit);
    json_t *meta = api_meta(page, limit, count, (json_int_t)(first + limit) < count, NULL);
    json_decref(res);
    admin_reply_json(r, 200, json_pack("{s:o, s:o}", "data", data, "meta", meta));
}

void api_retained_show(struct admin_req *r)
{
    const char *topic = admin_params_get(&r->params, "topic");
    json_t *res = api_local(r, json_pack("{s:s, s:s}", "op", "retained", "topic", topic));
    if (!res)
        return;
    json_t *m = json_object_get(res, "message");
    if (json_is_object(m))
        admin_reply_json(r, 200, json_incref(m));
    else
        admin_reply_error(r, 404, "not_found", "no retained message on '%.200s'", topic);
    json_decref(res);
}

void api_retained_delete(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    const char *topic = admin_params_get(&r->params, "topic");
    if (!p->retained_delete) {
        admin_reply_error(r, 501, "not_implemented", "this node cannot delete retained messages");
        return;
    }
    char why[256] = "";
    int rc = p->retained_delete(p->ud, topic, why, sizeof(why));
    if (rc == 0)
        admin_reply_json(r, 200, json_pack("{s:s, s:s}", "topic", topic, "result", "deleted"));
    else if (rc == -ENOENT)
        admin_reply_error(r, 404, "not_found", "%s", why);
    else if (rc == -EINVAL)
        admin_reply_error(r, 400, "bad_request", "%s", why);
    else
        admin_reply_error(r, 500, "internal_error", "%s", why[0] ? why : strerror(-rc));
}
