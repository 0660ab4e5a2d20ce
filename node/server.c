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
    log_info("signal %d: shutting down", signum);
    atomic_store(&b->stopping, true);
    for (int i = 0; i < b->n_workers; i++)
        worker_post_stop(b->workers[i]);
    uv_close((uv_handle_t *)&b->sigint, server_close_cb);
    uv_close((uv_handle_t *)&b->sigterm, server_close_cb);
    uv_close((uv_handle_t *)&b->housekeeping, server_close_cb);
    uv_close((uv_handle_t *)&b->sys_timer, server_close_cb);
}

/* Create the workers and bind their listeners; *port gets the port they
 * listen on (the first worker's when asked for port 0). Returns 0 or a
 * negative libuv error. */
static int server_listen(struct broker *b, uint16_t *port)
{
    const struct config *cfg = &b->cfg;
    int r = 0;
    /* Another process (a second broker) listening on the port would not stop
     * the SO_REUSEPORT listeners from binding: the kernel would split the
     * connections between the two. Check with a plain bind first. */
    if (*port != 0) {
        r = worker_port_free(cfg->bind_address, *port);
        if (r != 0)
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, *port, uv_strerror(r));
    }
    for (int i = 0; i < b->n_workers && r == 0; i++) {
        b->workers[i] = worker_new(b, i);
        if (!b->workers[i])
            return UV_ENOMEM;
        r = worker_listen(b->workers[i], cfg->bind_address, *port);
        if (r != 0) {
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, *port, uv_strerror(r));
            return r;
        }
        if (*port == 0) {
            /* an ephemeral port: every worker listens on the first one's */
            struct sockaddr_storage ss;
            int sl = sizeof(ss);
            uv_tcp_getsockname(&b->workers[i]->listener, (struct sockaddr *)&ss, &sl);
            *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    return r;
}

int server_run(struct broker *b)
{
    const struct config *cfg = &b->cfg;
    b->sink = &conn_sink_ops;
    b->loop = uv_default_loop();
    b->n_workers = config_worker_count(cfg);
    b->workers = calloc((size_t)b->n_workers, sizeof(*b->workers));
    if (!b->workers)
        return -ENOMEM;
    /* Signals first: a SIGTERM that arrives during start-up stops cleanly. */
    uv_signal_init(b->loop, &b->sigint);
    uv_signal_init(b->loop, &b->sigterm);
    b->sigint.data = b->sigterm.data = b;
    uv_signal_start(&b->sigint, server_on_signal, SIGINT);
    uv_signal_start(&b->sigterm, server_on_signal, SIGTERM);
    uint16_t port = cfg->port;
    int r = server_listen(b, &port);
    for (int i = 0; i < b->n_workers && r == 0; i++)
        r = worker_start(b->workers[i]);
    if (r != 0) {
        for (int i = 0; i < b->n_workers; i++) {
            if (b->workers[i] && b->workers[i]->started) {
                worker_post_stop(b->workers[i]);
                worker_join(b->workers[i]);
            }
        }
        uv_close((uv_handle_t *)&b->sigint, server_close_cb);
        uv_close((uv_handle_t *)&b->sigterm, server_close_cb);
        uv_run(b->loop, UV_RUN_DEFAULT);
        return r;
    }
    log_info("starling %s listening on %s:%u (MQTT, %d worker%s)", STARLING_VERSION,
             cfg->bind_address, port, b->n_workers, b->n_workers == 1 ? "" : "s");

    uv_timer_init(b->loop, &b->housekeeping);
    b->housekeeping.data = b;
    uv_timer_start(&b->housekeeping, server_on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_timer_init(b->loop, &b->sys_timer);
    b->sys_timer.data = b;
    if (cfg->sys_interval) {
        sys_publish(b);
        uv_timer_start(&b->sys_timer, server_on_sys, (uint64_t)cfg->sys_interval * 1000u,
                       (uint64_t)cfg->sys_interval * 1000u);
    }
    uv_run(b->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < b->n_workers; i++)
        worker_join(b->workers[i]);
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
    if (b->workers) {
        for (int i = 0; i < b->n_workers; i++)
            worker_free(b->workers[i]);
        free(b->workers);
        b->workers = NULL;
    }
    if (b->loop)
        uv_loop_close(b->loop);
    b->loop = NULL;
}
