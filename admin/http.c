/*
 * http.c - the admin API's HTTP server on libmicrohttpd (see admin.h).
 *
 * libmicrohttpd runs one internal polling thread (epoll) that accepts,
 * reads, calls on_request and writes; every provider call happens there.
 * The server bounds what a client can cost: at most max_connections at once,
 * an idle timeout, a fixed per-connection memory pool for the request line
 * and headers (libmicrohttpd answers longer ones itself), and a request body
 * of at most max_body bytes.
 *
 * With admin_tls the daemon speaks HTTPS only (libmicrohttpd's GnuTLS
 * support), with the PEM certificate and key read once at start.
 *
 * A request's life, in on_request's calls:
 *   1. headers complete: a dashboard file (static.c) is answered at once,
 *      without a key; else find the route (404, 405), check the API key (401),
 *      the query parameters (400) and the announced body size (413); any of
 *      these answers at once, before a byte of the body is read;
 *   2. each chunk of the body: appended while it fits; past max_body (a
 *      body without a Content-Length, chunked) the rest is discarded and the
 *      request answered 413 at its end (libmicrohttpd queues no response
 *      while a body arrives); past ADMIN_DISCARD_MAX discarded bytes the
 *      connection is closed;
 *   3. end of the request: parse the JSON body of a ROUTE_BODY route (400)
 *      and run the handler, which replies.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>

#include "admin_int.h"
#include "fileio.h"
#include "log.h"

/* Bytes of an oversized body read and thrown away before the connection is
 * closed instead of answered. */
#define ADMIN_DISCARD_MAX (1u << 20)
/* The largest certificate or key file read. */
#define ADMIN_PEM_MAX (1u << 20)

static void admin_count(struct admin_req *r, unsigned status)
{
    unsigned cls = status / 100;
    if (cls >= 2 && cls <= 5)
        atomic_fetch_add(&r->a->requests[cls], 1);
}

void admin_reply_response(struct admin_req *r, unsigned status, struct MHD_Response *resp,
                          const char *content_type)
{
    if (!resp) {
        log_warn("admin: out of memory for a response");
        return;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    admin_security_headers(resp, r->page);
    /* A script (the dashboard) that says so gets no WWW-Authenticate: the
     * browser would open its own log-in dialog over the page. */
    const char *xrw = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Requested-With");
    bool script = xrw && strcasecmp(xrw, "XMLHttpRequest") == 0;
    if (status == MHD_HTTP_UNAUTHORIZED && !script)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Basic realm=\"starling\", charset=\"UTF-8\"");
    if (r->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (MHD_queue_response(r->conn, status, resp) == MHD_YES) {
        r->responded = true;
        admin_count(r, status);
    }
    MHD_destroy_response(resp);
}

void admin_reply_text(struct admin_req *r, unsigned status, const char *content_type,
                      const char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    admin_reply_response(r, status, resp, content_type);
}

void admin_reply_json(struct admin_req *r, unsigned status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(doc);
    if (!text) {
        static const char oom[] = "{\"code\":\"internal_error\",\"message\":\"out of memory\"}";
        admin_reply_text(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json", oom,
                         sizeof(oom) - 1);
        return;
    }
    size_t len = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        free(text);
    admin_reply_response(r, status, resp, "application/json");
}

void admin_reply_error(struct admin_req *r, unsigned status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    admin_reply_json(r, status, json_pack("{s:s, s:s}", "code", code, "message", msg));
}

/* ---- query parameters ---------------------------------------------------- */

struct query_check {
    const char *const *allowed;
    char bad[96];
    bool unknown, undecodable;
};

static enum MHD_Result admin_query_check_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                             const char *value)
{
    (void)kind;
    struct query_check *q = cls;
    bool known = false;
    for (const char *const *a = q->allowed; a && *a && !known; a++)
        known = strcmp(*a, key) == 0;
    if (!known) {
        q->unknown = true;
        snprintf(q->bad, sizeof(q->bad), "%.64s", key);
        return MHD_NO;
    }
    if (value) {
        char *v = strdup(value);
        int rc = v ? admin_query_decode(v) : -ENOMEM;
        free(v);
        if (rc < 0) {
            q->undecodable = true;
            snprintf(q->bad, sizeof(q->bad), "%.64s", key);
            return MHD_NO;
        }
    }
    return MHD_YES;
}

const char *admin_req_query(struct admin_req *r, const char *name)
{
    const char *raw = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
    if (!raw)
        return NULL;
    char **nv = realloc(r->query_values, (r->n_query_values + 1) * sizeof(*nv));
    if (!nv)
        return NULL;
    r->query_values = nv;
    char *v = strdup(raw);
    if (!v || admin_query_decode(v) < 0) {
        free(v);
        return NULL; /* refused by admin_query_check_one before the handler ran */
    }
    nv[r->n_query_values++] = v;
    return v;
}

/* ---- the request life cycle ---------------------------------------------- */

static bool admin_needs_key(const struct admin *a, const struct admin_route *rt)
{
    if (rt->flags & ROUTE_PUBLIC)
        return false;
    if (rt->flags & ROUTE_METRICS)
        return a->metrics_auth;
    return true;
}

/* 0 when the request carries a valid API key; replies 401 otherwise. */
static int admin_authenticate(struct admin_req *r)
{
    char *pass = NULL;
    char *user = MHD_basic_auth_get_username_password(r->conn, &pass);
    int rc = -ENOENT;
    if (user && pass && r->a->keys.verify)
        rc = r->a->keys.verify(r->a->keys_ud, user, pass);
    if (rc != 0) {
        if (user) {
            /* the name as sent, but never the client's control characters */
            char shown[65];
            size_t n = 0;
            for (const char *p = user; *p && n < sizeof(shown) - 1; p++)
                shown[n++] = (*p >= ' ' && *p <= '~') ? *p : '?';
            shown[n] = '\0';
            log_info("admin: %s %s: API key '%s' refused", r->method, r->route->pattern, shown);
        }
        admin_reply_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                          user ? "the API key or its secret is wrong"
                               : "an API key is required (HTTP Basic: KEY:SECRET)");
    }
    if (pass) {
        memset(pass, 0, strlen(pass));
        MHD_free(pass);
    }
    if (user)
        MHD_free(user);
    return rc == 0 ? 0 : -EACCES;
}

/* Step 1: the headers are in. */
static void admin_req_begin(struct admin_req *r, const char *url)
{
    struct admin *a = r->a;
    int status = 404;
    char allow[64];
    const struct admin_asset *as = admin_asset_find(url);
    if (as) {
        if (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0) {
            admin_reply_asset(r, as);
        } else {
            r->allow = "GET, HEAD";
            admin_reply_error(r, 405, "method_not_allowed", "%s allows only GET, HEAD", url);
            r->allow = NULL;
        }
        return;
    }
    r->route = admin_router_find(admin_routes, admin_n_routes, r->method, url, &r->params, &status,
                                 allow, sizeof(allow));
    if (!r->route) {
        if (status == 405) {
            r->allow = allow;
            admin_reply_error(r, 405, "method_not_allowed", "%s allows only %s", url, allow);
            r->allow = NULL;
        } else if (status == 400) {
            admin_reply_error(r, 400, "bad_request", "a path parameter is not validly encoded");
        } else {
            admin_reply_error(r, 404, "not_found", "no such resource: %.200s", url);
        }
        return;
    }
    if (admin_needs_key(a, r->route) && admin_authenticate(r) < 0)
        return;

    struct query_check q = {.allowed = r->route->query};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, admin_query_check_one, &q);
    if (q.unknown) {
        admin_reply_error(r, 400, "bad_request", "unknown query parameter '%s'", q.bad);
        return;
    }
    if (q.undecodable) {
        admin_reply_error(r, 400, "bad_request", "query parameter '%s' is not validly encoded",
                          q.bad);
        return;
    }

    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    bool has_body = (cl && strcmp(cl, "0") != 0) || te;
    if (!has_body)
        return;
    if (!(r->route->flags & ROUTE_BODY)) {
        admin_reply_error(r, 400, "bad_request", "%s %s takes no request body", r->route->method,
                          r->route->pattern);
        return;
    }
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || *end || n > a->max_body) {
            admin_reply_error(r, 413, "payload_too_large",
                              "the request body is larger than %zu bytes", a->max_body);
            return;
        }
    }
    const char *ct =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct && strncasecmp(ct, "application/json", 16) != 0) {
        admin_reply_error(r, 415, "unsupported_media_type",
                          "the request body must be application/json, not %.64s", ct);
        return;
    }
}

/* Step 3: the whole request is in. */
static void admin_req_finish(struct admin_req *r)
{
    if (r->too_large) {
        admin_reply_error(r, 413, "payload_too_large", "the request body is larger than %zu bytes",
                          r->a->max_body);
        return;
    }
    if (r->route->flags & ROUTE_BODY) {
        if (r->len == 0) {
            admin_reply_error(r, 400, "bad_json", "a JSON object is required as the body");
            return;
        }
        json_error_t je;
        r->body = json_loadb(r->buf, r->len, JSON_REJECT_DUPLICATES, &je);
        if (!r->body) {
            admin_reply_error(r, 400, "bad_json", "invalid JSON at line %d, column %d: %s", je.line,
                              je.column, je.text);
            return;
        }
        if ((r->route->flags & ROUTE_BODY_ARRAY) ? !json_is_array(r->body)
                                                 : !json_is_object(r->body)) {
            admin_reply_error(r, 400, "bad_json", "the body must be a JSON %s",
                              (r->route->flags & ROUTE_BODY_ARRAY) ? "array" : "object");
            return;
        }
    }
    r->route->handler(r);
    if (!r->responded)
        admin_reply_error(r, 500, "internal_error", "no response");
}

static enum MHD_Result admin_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                        const char *method, const char *version, const char *upload,
                                        size_t *upload_size, void **con_cls)
{
    (void)version;
    struct admin *a = cls;
    struct admin_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->a = a;
        r->conn = conn;
        r->method = method;
        *con_cls = r;
        admin_req_begin(r, url);
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->too_large) {
            /* discarded; a client that goes on and on is cut off */
            r->discarded += *upload_size;
            *upload_size = 0;
            return r->discarded > ADMIN_DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (!r->responded) {
            if (*upload_size > a->max_body - r->len) {
                r->too_large = true;
                free(r->buf);
                r->buf = NULL;
                r->len = 0;
            } else {
                if (!r->buf && !(r->buf = malloc(a->max_body)))
                    return MHD_NO;
                memcpy(r->buf + r->len, upload, *upload_size);
                r->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r->responded)
        admin_req_finish(r);
    return MHD_YES;
}

static void admin_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                               enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    struct admin_req *r = *con_cls;
    if (!r)
        return;
    for (size_t i = 0; i < r->n_query_values; i++)
        free(r->query_values[i]);
    free(r->query_values);
    admin_params_clear(&r->params);
    json_decref(r->body);
    free(r->buf);
    free(r);
    *con_cls = NULL;
}

/* Paths and query strings reach the router as sent (router.c decodes). */
static size_t admin_no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls, (void)c;
    return strlen(s);
}

/* libmicrohttpd's messages: warnings while it starts (why it cannot), debug
 * afterwards (what a client got wrong is no news for the operator). */
static void admin_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct admin *a = cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (atomic_load(&a->started))
        log_debug("admin: %s", line);
    else
        log_warn("admin: %s", line);
}

/* Bind the address once without SO_REUSEPORT, for a clear error (the server
 * library only says that it could not start). */
static int admin_probe(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = bind(fd, sa, len) < 0 ? -errno : 0;
    if (rc == 0 && listen(fd, 1) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

static void admin_free(struct admin *a)
{
    if (a->tls_key) {
        OPENSSL_cleanse(a->tls_key, strlen(a->tls_key));
        free(a->tls_key);
    }
    free(a->tls_cert);
    free(a);
}

/* Read one PEM file into *out (NUL-terminated). */
static int admin_pem_read(const char *key, const char *path, char **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = file_read_all(path, ADMIN_PEM_MAX, &text, &len);
    if (rc == 0 && (len == 0 || memchr(text, '\0', len)))
        rc = -EINVAL;
    char *s = rc == 0 ? malloc(len + 1) : NULL;
    if (rc == 0 && !s)
        rc = -ENOMEM;
    if (rc == 0) {
        memcpy(s, text, len);
        s[len] = '\0';
        if (!strstr(s, "-----BEGIN ")) {
            free(s);
            rc = -EINVAL;
        }
    }
    if (rc == 0) {
        *out = s;
    } else {
        snprintf(err, errlen, "admin API: %s %s: %s", key, path,
                 rc == -EINVAL  ? "not a PEM file"
                 : rc == -EFBIG ? "larger than 1 MiB"
                                : strerror(-rc));
    }
    if (text) {
        OPENSSL_cleanse(text, len);
        free(text);
    }
    return rc;
}

/* HTTPS: the certificate and key, and a library built with TLS. */
static int admin_tls_load(struct admin *a, const struct admin_options *opt, char *err,
                          size_t errlen)
{
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(err, errlen, "admin API: this libmicrohttpd is built without TLS");
        return -ENOTSUP;
    }
    int rc = admin_pem_read("tls_certfile", opt->tls_certfile, &a->tls_cert, err, errlen);
    if (rc == 0)
        rc = admin_pem_read("tls_keyfile", opt->tls_keyfile, &a->tls_key, err, errlen);
    if (rc == 0)
        a->tls = true;
    return rc;
}

int admin_start(const struct admin_options *opt, const struct admin_provider *p,
                const struct admin_keys_ops *keys, void *keys_ud, struct admin **out, char *err,
                size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, opt->bind_address, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(opt->port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, opt->bind_address, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(opt->port);
        sl = sizeof(*s6);
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "admin API: bad bind address '%.64s'", opt->bind_address);
        return -EINVAL;
    }
    int rc = admin_probe((struct sockaddr *)&ss, sl);
    if (rc < 0) {
        snprintf(err, errlen, "admin API: cannot listen on %s:%u: %s", opt->bind_address, opt->port,
                 strerror(-rc));
        return rc;
    }
    struct admin *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->provider = *p;
    if (keys)
        a->keys = *keys;
    a->keys_ud = keys_ud;
    a->metrics_auth = opt->metrics_auth;
    a->max_body = opt->max_body ? opt->max_body : ADMIN_DEFAULT_MAX_BODY;
    if (opt->tls_certfile && opt->tls_keyfile) {
        rc = admin_tls_load(a, opt, err, errlen);
        if (rc < 0) {
            admin_free(a);
            return rc;
        }
        flags |= MHD_USE_TLS;
    }
    unsigned max_conn = opt->max_connections ? opt->max_connections : ADMIN_DEFAULT_MAX_CONNECTIONS;
    unsigned timeout = opt->timeout_s ? opt->timeout_s : ADMIN_DEFAULT_TIMEOUT_S;
    a->daemon = MHD_start_daemon(
        flags, opt->port, NULL, NULL, admin_on_request, a, MHD_OPTION_EXTERNAL_LOGGER,
        admin_mhd_log, a, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        max_conn, MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)32768, MHD_OPTION_NOTIFY_COMPLETED, admin_on_completed, NULL,
        MHD_OPTION_UNESCAPE_CALLBACK, admin_no_unescape, NULL,
        /* ignored without MHD_USE_TLS; NULL ends the list there */
        a->tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, a->tls_key, MHD_OPTION_HTTPS_MEM_CERT,
        a->tls_cert, MHD_OPTION_END);
    if (!a->daemon) {
        snprintf(err, errlen, "admin API: cannot start the HTTP%s server on %s:%u%s",
                 a->tls ? "S" : "", opt->bind_address, opt->port,
                 a->tls ? " (is the TLS key that of the certificate?)" : "");
        admin_free(a);
        return -EIO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : opt->port;
    atomic_store(&a->started, true);
    *out = a;
    return 0;
}

bool admin_tls(const struct admin *a)
{
    return a->tls;
}

uint16_t admin_port(const struct admin *a)
{
    return a->port;
}

void admin_stop(struct admin *a)
{
    if (!a)
        return;
    MHD_stop_daemon(a->daemon);
    admin_free(a);
}
