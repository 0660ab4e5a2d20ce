/*
 * admin_int.h - what the files of the admin module share (not public).
 *
 *   router.c   route table matching, {param} extraction, query and paging
 *              values (pure functions, unit tested)
 *   http.c     the libmicrohttpd server: request life cycle, bounded
 *              bodies, authentication, JSON replies and errors
 *   api.c      the endpoints and their route table
 *   api_data.c clients, subscriptions, routes, topics, retained messages
 *   api_tables.c  banned clients, users, API keys (replicated tables)
 *   metrics.c  the Prometheus text exposition of a node's counters
 *   keys.c     hashed API secrets and the static key table
 *   static.c   the dashboard's static files (embedded by embed.cmake into
 *              dashboard_assets.c) and the security headers of every answer
 *   ctl.c      `starling ctl` (libcurl)
 */
#ifndef STARLING_ADMIN_INT_H
#define STARLING_ADMIN_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "admin.h"

/* ---- routes (router.c) --------------------------------------------------- */

#define ADMIN_MAX_PARAMS 4

struct admin_req;
typedef void (*admin_handler_fn)(struct admin_req *r);

enum {
    ROUTE_PUBLIC = 1 << 0,     /* no API key needed */
    ROUTE_METRICS = 1 << 1,    /* public unless metrics_auth */
    ROUTE_BODY = 1 << 2,       /* takes a JSON object body */
    ROUTE_BODY_ARRAY = 1 << 3, /* with ROUTE_BODY: the body is a JSON array instead */
};

struct admin_route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE" */
    const char *pattern; /* "/api/v1/cluster/nodes/{name}" */
    admin_handler_fn handler;
    unsigned flags;           /* ROUTE_* */
    const char *const *query; /* allowed query parameters, NULL-terminated, or NULL */
};

/* Path parameters of a matched route, percent-decoded, owned by the struct
 * (admin_params_clear frees them). */
struct admin_params {
    size_t n;
    const char *name[ADMIN_MAX_PARAMS]; /* points into the pattern: "name}" */
    size_t name_len[ADMIN_MAX_PARAMS];
    char *value[ADMIN_MAX_PARAMS];
};

void admin_params_clear(struct admin_params *p);
/* The value of parameter `name`, or NULL. */
const char *admin_params_get(const struct admin_params *p, const char *name);

/* Match a raw (still percent-encoded) path against a pattern whose segments
 * are literals or "{name}" (one non-empty segment). Returns 1 on a match
 * (params filled), 0 when it does not match, -EINVAL when a parameter's
 * encoding is bad (a bad %XX, or a NUL). */
int admin_route_match(const char *pattern, const char *path, struct admin_params *p);

/* The route for (method, path). On no route returns NULL and sets *status to
 * 404, or to 405 with the allowed methods in allow ("GET, POST"); 400 for a
 * bad parameter encoding. HEAD matches GET routes. */
const struct admin_route *admin_router_find(const struct admin_route *routes, size_t n,
                                            const char *method, const char *path,
                                            struct admin_params *params, int *status, char *allow,
                                            size_t allowlen);

/* Decode a query string value in place ('+' is a blank, %XX a byte).
 * Returns 0, or -EINVAL for a bad escape or a NUL byte. */
int admin_query_decode(char *s);

/* Paging: page 1.. (default 1), limit 1..ADMIN_MAX_LIMIT (default
 * ADMIN_DEFAULT_LIMIT); NULL means absent. 0 or -EINVAL with a reason. */
#define ADMIN_DEFAULT_LIMIT 100
#define ADMIN_MAX_LIMIT 1000
#define ADMIN_MAX_PAGE 1000000
int admin_paging_parse(const char *page, const char *limit, unsigned *page_out, unsigned *limit_out,
                       char *err, size_t errlen);

/* Every key of the JSON object o is in allowed (NULL-terminated)? 0, or
 * -EINVAL naming the first unknown field in err. */
int admin_json_check_fields(json_t *o, const char *const *allowed, char *err, size_t errlen);

/* ---- requests (http.c) --------------------------------------------------- */

struct admin {
    struct MHD_Daemon *daemon;
    struct admin_provider provider;
    struct admin_keys_ops keys;
    void *keys_ud;
    bool metrics_auth;
    size_t max_body;
    uint16_t port;
    bool tls;
    char *tls_cert, *tls_key; /* the PEM texts, alive as long as the daemon */
    atomic_bool started;      /* MHD_start_daemon returned */
    atomic_ulong requests[6]; /* answered requests by status class: [2] = 2xx ... [5] = 5xx */
};

struct admin_req {
    struct admin *a;
    struct MHD_Connection *conn;
    const char *method;
    const struct admin_route *route;
    struct admin_params params;
    json_t *body; /* the parsed body of a ROUTE_BODY route */
    char *buf;    /* the body as it arrives, at most a->max_body bytes */
    size_t len;
    size_t discarded; /* bytes of an oversized body thrown away */
    bool too_large;
    bool responded;
    const char *allow;   /* an Allow header for the reply being made */
    bool page;           /* the reply is a dashboard file (its CSP) */
    char **query_values; /* handed out by admin_req_query */
    size_t n_query_values;
};

/* The value of a query parameter (decoded), or NULL when absent (or out of
 * memory). Owned by the request until it ends. */
const char *admin_req_query(struct admin_req *r, const char *name);

struct MHD_Response;
/* Queue resp (taking it) with the common headers: Content-Type, no-store,
 * the security headers, WWW-Authenticate on a 401, Allow. */
void admin_reply_response(struct admin_req *r, unsigned status, struct MHD_Response *resp,
                          const char *content_type);
/* Reply with a JSON document (takes the reference on doc). */
void admin_reply_json(struct admin_req *r, unsigned status, json_t *doc);
/* Reply {"code": code, "message": message} with status. */
void admin_reply_error(struct admin_req *r, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void admin_reply_text(struct admin_req *r, unsigned status, const char *content_type,
                      const char *text, size_t len);

/* ---- endpoints (api.c) --------------------------------------------------- */

extern const struct admin_route admin_routes[];
extern const size_t admin_n_routes;

/* ---- the dashboard's files (static.c, dashboard_assets.c) --------------- */

struct admin_asset {
    const char *name; /* "app.js" */
    const unsigned char *data;
    size_t len;
};
/* Generated at build time from admin/dashboard (embed.cmake). */
extern const struct admin_asset admin_assets[];
extern const size_t admin_n_assets;

/* The file served at path ("/", "/index.html", "/dashboard/NAME"), or NULL. */
const struct admin_asset *admin_asset_find(const char *path);
/* Add the security headers: the dashboard's Content-Security-Policy when
 * page, the API's otherwise; no framing, no sniffing, no referrer. */
void admin_security_headers(struct MHD_Response *resp, bool page);
/* Reply 200 with the file. */
void admin_reply_asset(struct admin_req *r, const struct admin_asset *as);

/* api_data.c: clients, subscriptions, routes, topics, retained messages */
void api_clients_list(struct admin_req *r);
void api_client_show(struct admin_req *r);
void api_client_kick(struct admin_req *r);
void api_subscriptions(struct admin_req *r);
void api_routes(struct admin_req *r);
void api_topics(struct admin_req *r);
void api_retained_list(struct admin_req *r);
void api_retained_show(struct admin_req *r);
void api_retained_delete(struct admin_req *r);

/* api_tables.c: banned clients, users, API keys */
void api_banned_list(struct admin_req *r);
void api_banned_create(struct admin_req *r);
void api_banned_delete(struct admin_req *r);
void api_users_list(struct admin_req *r);
void api_user_create(struct admin_req *r);
void api_user_show(struct admin_req *r);
void api_user_update(struct admin_req *r);
void api_user_delete(struct admin_req *r);
void api_apikeys_list(struct admin_req *r);
void api_apikey_create(struct admin_req *r);
void api_apikey_delete(struct admin_req *r);

/* ---- metrics (metrics.c) ------------------------------------------------- */

/* The Prometheus text exposition (version 0.0.4) of a node's counters, its
 * metrics (m; NULL: only the totals of s, unlabelled) and the admin API's
 * request counts (requests[2..5], may be NULL). Returns a malloc'd
 * NUL-terminated text and its length, or NULL. */
char *admin_metrics_render(const struct admin_stats *s, const struct admin_health *h,
                           const struct admin_metrics *m, const uint64_t *requests, size_t *len);

#endif
