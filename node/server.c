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

#include "broker.h"
#include "conn.h"
#include "log.h"
#include "persist.h"
#include "worker.h"

#define HOUSEKEEPING_MS 100

static void server_on_housekeeping(uv_timer_t *t)
{
    struct broker *b = t->data;
    registry_tick(b, broker_now_ms());
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
    struct broker *b = sig->data;
    struct server *srv = b->server;
    log_info("signal %d: shutting down", signum);
    atomic_store(&b->stopping, true);
    for (int i = 0; i < srv->n_workers; i++)
        worker_post_stop(srv->workers[i]);
    uv_close((uv_handle_t *)&srv->sigint, server_close_cb);
    uv_close((uv_handle_t *)&srv->sigterm, server_close_cb);
    uv_close((uv_handle_t *)&srv->housekeeping, server_close_cb);
    uv_close((uv_handle_t *)&srv->sys_timer, server_close_cb);
}

/* Create the workers and bind their listeners; *port gets the port they
 * listen on (the first worker's when asked for port 0). Returns 0 or a
 * negative libuv error. */
static int server_listen(struct broker *b, uint16_t *port)
{
    const struct config *cfg = &b->cfg;
    struct server *srv = b->server;
    int r = 0;
    /* Another process (a second broker) listening on the port would not stop
     * the SO_REUSEPORT listeners from binding: the kernel would split the
     * connections between the two. Check with a plain bind first. */
    if (*port != 0) {
        r = worker_port_free(cfg->bind_address, *port);
        if (r != 0)
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, *port, uv_strerror(r));
    }
    for (int i = 0; i < srv->n_workers && r == 0; i++) {
        srv->workers[i] = worker_new(b, i);
        if (!srv->workers[i])
            return UV_ENOMEM;
        r = worker_listen(srv->workers[i], cfg->bind_address, *port);
        if (r != 0) {
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, *port, uv_strerror(r));
            return r;
        }
        if (*port == 0) {
            /* an ephemeral port: every worker listens on the first one's */
            struct sockaddr_storage ss;
            int sl = sizeof(ss);
            uv_tcp_getsockname(&srv->workers[i]->listener, (struct sockaddr *)&ss, &sl);
            *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    return r;
}

int server_run(struct broker *b)
{
    const struct config *cfg = &b->cfg;
    struct server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    b->server = srv;
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
    uint16_t port = cfg->port;
    int r = server_listen(b, &port);
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
        uv_run(srv->loop, UV_RUN_DEFAULT);
        return r;
    }
    log_info("starling %s listening on %s:%u (MQTT, %d worker%s)", STARLING_VERSION,
             cfg->bind_address, port, srv->n_workers, srv->n_workers == 1 ? "" : "s");

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
    free(srv);
    b->server = NULL;
}
