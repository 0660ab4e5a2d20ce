/*
 * server.c - the network side of a node (see server.h).
 *
 * The main thread runs a small libuv loop of its own: signals, the
 * housekeeping timer (registry_tick: session expiry, delayed wills) and the
 * $SYS timer. Client traffic never touches it.
 */
#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "log.h"
#include "persist.h"
#include "worker.h"

#define HOUSEKEEPING_MS 100

static void server_stop(struct broker *b, const char *why);

static void server_on_housekeeping(uv_timer_t *t)
{
    struct broker *b = t->data;
    if (atomic_load(&b->stop_requested) && !atomic_load(&b->stopping)) {
        server_stop(b, "stop requested");
        return;
    }
    registry_tick(b, broker_now_mono_ms());
}

static void server_on_sys(uv_timer_t *t)
{
    sys_publish(t->data);
}

static void server_close_cb(uv_handle_t *h)
{
    (void)h;
}

static void server_on_signal(uv_signal_t *sig, int signum)
{
    char why[32];
    snprintf(why, sizeof(why), "signal %d", signum);
    server_stop(sig->data, why);
}

/* Stop every worker and close the main loop's handles: server_run returns. */
static void server_stop(struct broker *b, const char *why)
{
    struct server *srv = b->server;
    log_info("%s: shutting down", why);
    atomic_store(&b->stopping_since, broker_now_mono_ms());
    atomic_store(&b->stopping, true);
    for (int i = 0; i < srv->n_workers; i++)
        worker_post_stop(srv->workers[i]);
    uv_close((uv_handle_t *)&srv->sigint, server_close_cb);
    uv_close((uv_handle_t *)&srv->sigterm, server_close_cb);
    uv_close((uv_handle_t *)&srv->sighup, server_close_cb);
    uv_close((uv_handle_t *)&srv->housekeeping, server_close_cb);
    uv_close((uv_handle_t *)&srv->sys_timer, server_close_cb);
}

/* Bind every worker's listener of transport xport; *port gets the port
 * they listen on (the first worker's when asked for port 0). Returns 0 or a
 * negative libuv error. */
static int server_listen_one(struct broker *b, int xport, uint16_t *port)
{
    const struct config *cfg = &b->cfg;
    struct server *srv = b->server;
    int r = 0;
    /* Another process (a second broker) listening on the port would not stop
     * the SO_REUSEPORT listeners from binding: the kernel would split the
     * connections between the two. Check with a plain bind first. */
    if (*port != 0) {
        r = worker_port_free(cfg->bind_address, *port);
        if (r != 0) {
            log_error("cannot listen on %s:%u: %s (%s listener)", cfg->bind_address, *port,
                      uv_strerror(r), config_xport_name(xport));
            return r;
        }
    }
    for (int i = 0; i < srv->n_workers; i++) {
        r = worker_listen(srv->workers[i], xport, cfg->bind_address, *port);
        if (r != 0) {
            log_error("cannot listen on %s:%u: %s (%s listener)", cfg->bind_address, *port,
                      uv_strerror(r), config_xport_name(xport));
            return r;
        }
        if (*port == 0) {
            /* an ephemeral port: every worker listens on the first one's */
            struct sockaddr_storage ss;
            int sl = sizeof(ss);
            uv_tcp_getsockname(&srv->workers[i]->listeners[xport], (struct sockaddr *)&ss, &sl);
            *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    return 0;
}

/* Create the workers and bind their listeners: `port` (plain TCP) always,
 * tls_port, ws_port, wss_port when set. ports[] gets what each listens on.
 * Returns 0 or a negative libuv error. */
static int server_listen(struct broker *b, uint16_t ports[CONFIG_XPORT_COUNT])
{
    struct server *srv = b->server;
    for (int i = 0; i < srv->n_workers; i++) {
        srv->workers[i] = worker_new(b, i);
        if (!srv->workers[i])
            return UV_ENOMEM;
    }
    int r = 0;
    for (int x = 0; x < CONFIG_XPORT_COUNT && r == 0; x++)
        if (x == CONFIG_XPORT_TCP || ports[x])
            r = server_listen_one(b, x, &ports[x]);
    return r;
}

/* The WebSocket endpoint: /mqtt, and the Origins of ws_origins. */
static int server_ws_config(struct server *srv, const struct config *cfg)
{
    srv->ws.path = "/mqtt";
    if (!cfg->ws_origins[0])
        return 0;
    srv->origin_text = strdup(cfg->ws_origins);
    srv->origins = calloc(strlen(cfg->ws_origins) / 2 + 2, sizeof(*srv->origins));
    if (!srv->origin_text || !srv->origins)
        return -ENOMEM;
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(srv->origin_text, ", ", &save); t;
         t = strtok_r(NULL, ", ", &save))
        srv->origins[n++] = t;
    srv->ws.origins = srv->origins;
    srv->ws.n_origins = n;
    return 0;
}

static void server_on_sighup(uv_signal_t *sig, int signum)
{
    (void)signum;
    struct broker *b = sig->data;
    log_info("SIGHUP: reloading the password file, the ACL file and the TLS certificate");
    auth_reload(&b->auth, &b->cfg);
}

int server_run(struct broker *b)
{
    const struct config *cfg = &b->cfg;
    struct server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    b->server = srv;
    pthread_mutex_init(&srv->rate_lock, NULL);
    if (server_ws_config(srv, cfg) < 0)
        return -ENOMEM;
    b->sink = &conn_sink_ops;
    srv->loop = uv_default_loop();
    srv->n_workers = config_worker_count(cfg);
    srv->workers = calloc((size_t)srv->n_workers, sizeof(*srv->workers));
    if (!srv->workers)
        return -ENOMEM;
    /* Signals first: a SIGTERM that arrives during start-up stops cleanly. */
    uv_signal_init(srv->loop, &srv->sigint);
    uv_signal_init(srv->loop, &srv->sigterm);
    srv->sigint.data = srv->sigterm.data = b;
    uv_signal_start(&srv->sigint, server_on_signal, SIGINT);
    uv_signal_start(&srv->sigterm, server_on_signal, SIGTERM);
    uv_signal_init(srv->loop, &srv->sighup);
    srv->sighup.data = b;
    uv_signal_start(&srv->sighup, server_on_sighup, SIGHUP);
    uint16_t ports[CONFIG_XPORT_COUNT] = {cfg->port, cfg->tls_port, cfg->ws_port, cfg->wss_port};
    int r = server_listen(b, ports);
    for (int i = 0; i < srv->n_workers && r == 0; i++)
        r = worker_start(srv->workers[i]);
    if (r != 0) {
        atomic_store(&b->stopping, true); /* as on a signal: a stop lost to a
                                             failed allocation is seen anyway */
        for (int i = 0; i < srv->n_workers; i++) {
            if (srv->workers[i] && srv->workers[i]->started) {
                worker_post_stop(srv->workers[i]);
                worker_join(srv->workers[i]);
            }
        }
        uv_close((uv_handle_t *)&srv->sigint, server_close_cb);
        uv_close((uv_handle_t *)&srv->sigterm, server_close_cb);
        uv_close((uv_handle_t *)&srv->sighup, server_close_cb);
        uv_run(srv->loop, UV_RUN_DEFAULT);
        return r;
    }
    atomic_store_explicit(&b->workers_up, true, memory_order_release);
    log_info("starling %s listening on %s:%u (MQTT, %d worker%s)", STARLING_VERSION,
             cfg->bind_address, ports[0], srv->n_workers, srv->n_workers == 1 ? "" : "s");
    for (int x = 1; x < CONFIG_XPORT_COUNT; x++)
        if (ports[x])
            log_info("listening on %s:%u (MQTT over %s%s)", cfg->bind_address, ports[x],
                     x == CONFIG_XPORT_TLS  ? "TLS"
                     : x == CONFIG_XPORT_WS ? "WebSocket"
                                            : "WSS",
                     cfg->proxy_protocol & (1u << x) ? ", PROXY protocol" : "");

    uv_timer_init(srv->loop, &srv->housekeeping);
    srv->housekeeping.data = b;
    uv_timer_start(&srv->housekeeping, server_on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_timer_init(srv->loop, &srv->sys_timer);
    srv->sys_timer.data = b;
    if (cfg->sys_interval) {
        sys_publish(b);
        uv_timer_start(&srv->sys_timer, server_on_sys, (uint64_t)cfg->sys_interval * 1000u,
                       (uint64_t)cfg->sys_interval * 1000u);
    }
    uv_run(srv->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < srv->n_workers; i++)
        worker_join(srv->workers[i]);
    log_info("stopped");
    return 0;
}

void server_cleanup(struct broker *b)
{
    /* Commit what is pending; from here on nothing touches the store (the
     * sessions freed by broker_cleanup stay in it). The store's last
     * completions post to the workers, which are freed only after. */
    atomic_store(&b->stopping, true);
    persist_close(b);
    struct server *srv = b->server;
    if (!srv)
        return;
    if (srv->workers) {
        for (int i = 0; i < srv->n_workers; i++)
            worker_free(srv->workers[i]);
        free(srv->workers);
        srv->workers = NULL;
    }
    if (srv->loop)
        uv_loop_close(srv->loop);
    pthread_mutex_destroy(&srv->rate_lock);
    free(srv->origin_text);
    free(srv->origins);
    free(srv);
    b->server = NULL;
}
