/*
 * worker.c - worker threads (see worker.h).
 *
 * Each worker binds its own listening socket with SO_REUSEPORT, so the kernel
 * spreads incoming connections across workers. libuv 1.44 has no flag for
 * that option: the socket is created, configured and bound here, then handed
 * to libuv with uv_tcp_open.
 *
 * At the end of every loop turn (a uv_check handle) the worker flushes the
 * sessions that received messages during the turn and then writes each
 * connection's coalesced output with one uv_write.
 */
#include "worker.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ackq.h"
#include "broker.h"
#include "conn.h"
#include "hoptrace.h"
#include "log.h"
#include "server.h"
#include "session.h"

#define WORKER_RBUF_SIZE (64u * 1024u)
#define WORKER_TICK_MS 250
/* Connections a worker accepts in one loop turn, per worker (see
 * struct worker.accept_deferred). */
#define WORKER_ACCEPTS_PER_TURN 32

enum wcmd_type { WCMD_FLUSH, WCMD_KICK, WCMD_ACK, WCMD_CALL, WCMD_FLOW, WCMD_STOP };

struct wcmd {
    struct wcmd *next;
    enum wcmd_type type;
    struct session *s;
    struct conn *c;
    uint8_t reason;
    bool resumed;
    uint32_t token;
    int status;
    void (*fn)(void *ud); /* WCMD_CALL */
    void *ud;
};

_Thread_local struct worker *sink_thread_worker;

struct worker *worker_new(struct broker *b, int id)
{
    /* aligned: the metrics' cache lines are the worker's own */
    struct worker *w = aligned_alloc(_Alignof(struct worker), sizeof(*w));
    if (!w)
        return NULL;
    memset(w, 0, sizeof(*w));
    w->id = id;
    w->b = b;
    w->rbuf_size = WORKER_RBUF_SIZE;
    w->rbuf = malloc(w->rbuf_size);
    if (!w->rbuf || uv_loop_init(&w->loop) != 0) {
        free(w->rbuf);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->inbox_lock, NULL);
    w->loop.data = w;
    return w;
}

static void worker_on_connection(uv_stream_t *server, int status)
{
    struct worker *w = server->data;
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    int x = (int)((uv_tcp_t *)server - w->listeners);
    if (w->accepts >= WORKER_ACCEPTS_PER_TURN) {
        /* libuv keeps it and stops watching the listener until then */
        w->accept_deferred |= 1u << x;
        return;
    }
    w->accepts++;
    conn_accept(w, server, x);
}

/* End of a loop turn: the next turn may accept again; take the connection
 * each deferred listener holds (uv_accept watches the listener again, so
 * the rest of its backlog comes up in the next turn's poll). */
static void worker_accept_deferred(struct worker *w)
{
    unsigned deferred = w->accept_deferred;
    w->accept_deferred = 0;
    w->accepts = 0;
    for (int x = 0; x < CONFIG_XPORT_COUNT; x++)
        if ((deferred & (1u << x)) && !w->stopping) {
            w->accepts++;
            conn_accept(w, (uv_stream_t *)&w->listeners[x], x);
        }
}

/* A TCP socket bound to addr:port, SO_REUSEPORT when `reuseport`. Returns
 * 0 and the descriptor in *fdp, or a negative libuv error. */
static int bound_socket(const char *addr, uint16_t port, bool reuseport, int *fdp)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        sl = sizeof(*sin);
    } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        sl = sizeof(*sin6);
    } else {
        return UV_EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0) {
        int err = errno;
        close(fd);
        return uv_translate_sys_error(err);
    }
    *fdp = fd;
    return 0;
}

int worker_port_free(const char *addr, uint16_t port)
{
    int fd;
    int r = bound_socket(addr, port, false, &fd);
    if (r == 0)
        close(fd);
    return r;
}

int worker_listen(struct worker *w, int xport, const char *addr, uint16_t port)
{
    int fd;
    int r = bound_socket(addr, port, true, &fd);
    if (r != 0)
        return r;
    uv_tcp_t *l = &w->listeners[xport];
    r = uv_tcp_init(&w->loop, l);
    if (r == 0)
        r = uv_tcp_open(l, fd);
    if (r != 0) {
        close(fd);
        return r;
    }
    w->listening[xport] = true;
    l->data = w;
    r = uv_listen((uv_stream_t *)l, 1024, worker_on_connection);
    return r;
}

static void worker_free_cmd(struct wcmd *cmd)
{
    if (cmd->fn) /* a call that never ran: it runs now (see sink_ops.call) */
        cmd->fn(cmd->ud);
    if (cmd->s)
        session_unref(cmd->s);
    if (cmd->c)
        conn_unref(cmd->c);
    free(cmd);
}

/* Append a command; returns false (and frees it) when the worker is gone
 * (a WCMD_CALL's function is then not called: the caller is told). */
static bool worker_post(struct worker *w, struct wcmd *cmd)
{
    pthread_mutex_lock(&w->inbox_lock);
    if (w->inbox_closed) {
        pthread_mutex_unlock(&w->inbox_lock);
        cmd->fn = NULL; /* refused: the caller is told */
        worker_free_cmd(cmd);
        return false;
    }
    bool was_empty = w->inbox_head == NULL;
    cmd->next = NULL;
    if (w->inbox_tail)
        w->inbox_tail->next = cmd;
    else
        w->inbox_head = cmd;
    w->inbox_tail = cmd;
    if (was_empty)
        uv_async_send(&w->wake);
    pthread_mutex_unlock(&w->inbox_lock);
    return true;
}

/* Out of memory for a command: have w rescan its connections on its next
 * turn (see struct worker.rescan). Any thread. */
static void worker_post_rescan(struct worker *w)
{
    pthread_mutex_lock(&w->inbox_lock);
    if (!w->inbox_closed) {
        atomic_store(&w->rescan, true);
        uv_async_send(&w->wake);
    }
    pthread_mutex_unlock(&w->inbox_lock);
}

void worker_post_flush(struct worker *w, struct session *s)
{
    int want = w->id + 1;
    if (atomic_load(&s->flush_posted) == want)
        return;
    atomic_store(&s->flush_posted, want);
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd) {
        /* not left marked as posted (it would never be flushed again):
         * the rescan flushes it */
        atomic_compare_exchange_strong(&s->flush_posted, &want, 0);
        worker_post_rescan(w);
        return;
    }
    cmd->type = WCMD_FLUSH;
    cmd->s = session_ref(s);
    worker_post(w, cmd);
}

void worker_post_kick(struct worker *w, struct conn *c, uint8_t reason, bool resumed)
{
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd) {
        /* the rescan closes c: its session is no longer attached to it */
        worker_post_rescan(w);
        return;
    }
    cmd->type = WCMD_KICK;
    cmd->c = conn_ref(c);
    cmd->reason = reason;
    cmd->resumed = resumed;
    worker_post(w, cmd);
}

void worker_post_ack(struct worker *w, struct conn *c, uint32_t token, int status)
{
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd) {
        /* the result is lost: the connection is closed without the
         * acknowledgement rather than left waiting for it */
        atomic_store(&c->ack_lost, true);
        worker_post_rescan(w);
        return;
    }
    cmd->type = WCMD_ACK;
    cmd->c = conn_ref(c);
    cmd->token = token;
    cmd->status = status;
    worker_post(w, cmd);
}

int worker_post_call(struct worker *w, void (*fn)(void *ud), void *ud)
{
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return -ENOMEM;
    cmd->type = WCMD_CALL;
    cmd->fn = fn;
    cmd->ud = ud;
    return worker_post(w, cmd) ? 0 : -ESHUTDOWN;
}

void worker_wake_session(struct worker *owner, struct session *s, struct worker *cur)
{
    if (owner == cur)
        worker_defer_flush(owner, s);
    else
        worker_post_flush(owner, s);
}

void worker_post_flow(struct worker *w)
{
    if (atomic_exchange(&w->flow_posted, true))
        return;
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd) {
        atomic_store(&w->flow_posted, false); /* the tick checks anyway */
        return;
    }
    cmd->type = WCMD_FLOW;
    worker_post(w, cmd);
}

void worker_sink_drained(struct broker *b, uint64_t waiters)
{
    struct server *srv = b->server;
    if (!srv || atomic_load(&b->stopping))
        return;
    for (int i = 0; i < srv->n_workers; i++)
        if (srv->workers[i] && (waiters >> (i % 64)) & 1u)
            worker_post_flow(srv->workers[i]);
}

void worker_post_stop(struct worker *w)
{
    struct wcmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd) {
        /* the wake-up sees b->stopping (set before any stop is posted) */
        worker_post_rescan(w);
        return;
    }
    cmd->type = WCMD_STOP;
    worker_post(w, cmd);
}

void worker_defer_flush(struct worker *w, struct session *s)
{
    assert(sink_thread_worker == w);
    int want = w->id + 1;
    if (atomic_load(&s->flush_posted) == want)
        return;
    atomic_store(&s->flush_posted, want);
    if (w->n_flush == w->cap_flush) {
        size_t cap = w->cap_flush ? w->cap_flush * 2 : 64;
        struct session **p = realloc(w->flush, cap * sizeof(*p));
        if (!p) {
            atomic_store(&s->flush_posted, 0);
            atomic_store(&w->rescan, true); /* flushed by this turn's rescan */
            return;
        }
        w->flush = p;
        w->cap_flush = cap;
    }
    w->flush[w->n_flush++] = session_ref(s);
}

void worker_mark_dirty(struct worker *w, struct conn *c)
{
    assert(sink_thread_worker == w);
    if (c->dirty)
        return;
    c->dirty = true;
    c->dirty_next = w->dirty;
    w->dirty = conn_ref(c);
}

/* Flush one session on behalf of this worker, if it still owns it. */
static void worker_flush_session(struct worker *w, struct session *s)
{
    int want = w->id + 1;
    atomic_compare_exchange_strong(&s->flush_posted, &want, 0);
    session_flush_owned(w->b, s, w);
}

static void worker_on_turn_idle(uv_idle_t *h)
{
    (void)h; /* only there so that the loop polls without sleeping */
}

bool worker_at_turn_end(void (*fn)(void *ud), void *ud)
{
    struct worker *w = sink_thread_worker;
    if (!w || !w->turn_end_ok)
        return false;
    for (unsigned i = 0; i < w->n_turn_end; i++)
        if (w->turn_end[i].fn == fn && w->turn_end[i].ud == ud)
            return true;
    if (w->n_turn_end == sizeof(w->turn_end) / sizeof(w->turn_end[0]))
        return false;
    if (w->n_turn_end == 0)
        uv_idle_start(&w->turn_idle, worker_on_turn_idle);
    w->turn_end[w->n_turn_end].fn = fn;
    w->turn_end[w->n_turn_end].ud = ud;
    w->n_turn_end++;
    return true;
}

/* The calls asked for during this turn (and those they ask for). */
static void worker_run_turn_end(struct worker *w)
{
    while (w->n_turn_end) {
        void (*fn)(void *ud) = w->turn_end[0].fn;
        void *ud = w->turn_end[0].ud;
        w->n_turn_end--;
        memmove(&w->turn_end[0], &w->turn_end[1], w->n_turn_end * sizeof(w->turn_end[0]));
        fn(ud);
    }
    uv_idle_stop(&w->turn_idle);
}

static void worker_on_check(uv_check_t *h)
{
    struct worker *w = h->data;
    HOPTRACE_MARK(HOP_WORKER_TURN);
    /* First what this turn left for the cluster: forwards to other nodes go
     * out before the local deliveries are written. */
    worker_run_turn_end(w);
    /* Sessions first: flushing fills connection buffers and marks them dirty. */
    for (size_t i = 0; i < w->n_flush; i++) {
        worker_flush_session(w, w->flush[i]);
        session_unref(w->flush[i]);
    }
    w->n_flush = 0;
    if (atomic_exchange(&w->rescan, false)) {
        /* commands were lost to failed allocations (struct worker.rescan) */
        for (struct conn *k = w->conns, *next; k; k = next) {
            next = k->next;
            if (atomic_exchange(&k->ack_lost, false)) {
                conn_close(k, MQTT_RC_UNSPECIFIED, false);
                continue;
            }
            struct session *s = k->session;
            if (k->state != CONN_ACTIVE || !s)
                continue;
            lock_acquire(&s->lock);
            bool taken_over = s->conn != k;
            lock_release(&s->lock);
            if (taken_over) /* [MQTT-3.1.1 3.1.4-2, MQTT-5.0 3.1.4-3] its kick was lost */
                conn_close(k, MQTT_RC_SESSION_TAKEN_OVER, false);
            else
                worker_flush_session(w, s);
        }
    }
    struct conn *c = w->dirty;
    w->dirty = NULL;
    while (c) {
        struct conn *next = c->dirty_next;
        c->dirty = false;
        c->dirty_next = NULL;
        conn_flush(c);
        conn_unref(c);
        c = next;
    }
    worker_run_turn_end(w); /* forwards made by the flushes (wills of closes) */
    worker_accept_deferred(w);
}

static void worker_close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void worker_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    worker_close_handle(h);
}

int worker_on_stop(struct worker *w, void (*fn)(void *ud), void *ud)
{
    assert(sink_thread_worker == w);
    if (w->n_stop_hooks == w->cap_stop_hooks) {
        size_t cap = w->cap_stop_hooks ? 2 * w->cap_stop_hooks : 4;
        struct worker_hook *v = realloc(w->stop_hooks, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        w->stop_hooks = v;
        w->cap_stop_hooks = cap;
    }
    w->stop_hooks[w->n_stop_hooks].fn = fn;
    w->stop_hooks[w->n_stop_hooks].ud = ud;
    w->n_stop_hooks++;
    return 0;
}

void worker_on_stop_forget(struct worker *w, void *ud)
{
    assert(sink_thread_worker == w);
    for (size_t i = 0; i < w->n_stop_hooks; i++)
        if (w->stop_hooks[i].ud == ud) {
            w->stop_hooks[i] = w->stop_hooks[--w->n_stop_hooks];
            return;
        }
}

static void worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    /* the hooks (they may forget themselves while they run) */
    struct worker_hook *hooks = w->stop_hooks;
    size_t n_hooks = w->n_stop_hooks;
    w->stop_hooks = NULL;
    w->n_stop_hooks = w->cap_stop_hooks = 0;
    for (size_t i = 0; i < n_hooks; i++)
        hooks[i].fn(hooks[i].ud);
    free(hooks);
    /* Close every connection: 5.0 clients are told the server shuts down;
     * wills are published as for any connection closed without DISCONNECT. */
    struct conn *c = w->conns;
    while (c) {
        struct conn *next = c->next;
        conn_close(c, MQTT_RC_SERVER_SHUTTING_DOWN, false);
        c = next;
    }
    worker_on_check(&w->flush_check);
    for (int i = 0; i < 4; i++)
        if (w->listening[i])
            worker_close_handle((uv_handle_t *)&w->listeners[i]);
    /* The tick keeps running: it closes connections whose client does not
     * read what is left to write (after the close grace period). */
    worker_conn_gone(w); /* no connection left: close the inbox now */
}

static void worker_on_wake(uv_async_t *h)
{
    struct worker *w = h->data;
    HOPTRACE_MARK(HOP_WORKER_TURN);
    pthread_mutex_lock(&w->inbox_lock);
    struct wcmd *cmd = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    pthread_mutex_unlock(&w->inbox_lock);
    bool stop = false;
    while (cmd) {
        struct wcmd *next = cmd->next;
        switch (cmd->type) {
        case WCMD_FLUSH:
            worker_flush_session(w, cmd->s);
            break;
        case WCMD_KICK:
            if (conn_is_open(cmd->c))
                conn_close(cmd->c, cmd->reason, cmd->resumed);
            break;
        case WCMD_ACK:
            ackq_done(cmd->c, cmd->token, cmd->status);
            break;
        case WCMD_CALL:
            cmd->fn(cmd->ud);
            cmd->fn = NULL;
            break;
        case WCMD_FLOW:
            atomic_store(&w->flow_posted, false);
            conn_flow_check(w, uv_now(&w->loop));
            break;
        case WCMD_STOP:
            stop = true;
            break;
        }
        worker_free_cmd(cmd);
        cmd = next;
    }
    /* b->stopping: also when the WCMD_STOP could not be allocated */
    if (stop || atomic_load(&w->b->stopping))
        worker_stop(w);
}

static void worker_on_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    if (w->n_paused) /* max_publisher_pause */
        conn_flow_check(w, now);
    if (w->accept_retry && !w->stopping) {
        /* a connection the listener of that kind could not take for lack
         * of memory waits in its backlog (conn_accept) */
        unsigned retry = w->accept_retry;
        w->accept_retry = 0;
        for (int x = 0; x < CONFIG_XPORT_COUNT; x++)
            if (retry & (1u << x))
                conn_accept(w, (uv_stream_t *)&w->listeners[x], x);
    }
    struct conn *c = w->conns;
    while (c) {
        struct conn *next = c->next;
        conn_check_timers(c, now);
        c = next;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    sink_thread_worker = w;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    sink_thread_worker = NULL;
    return NULL;
}

int worker_start(struct worker *w)
{
    int r = uv_async_init(&w->loop, &w->wake, worker_on_wake);
    if (r)
        return r;
    w->wake.data = w;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, worker_on_tick, WORKER_TICK_MS, WORKER_TICK_MS);
    uv_check_init(&w->loop, &w->flush_check);
    w->flush_check.data = w;
    uv_check_start(&w->flush_check, worker_on_check);
    uv_idle_init(&w->loop, &w->turn_idle);
    w->turn_idle.data = w;
    w->turn_end_ok = true;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return UV_EAGAIN;
    w->started = true;
    return 0;
}

/* Runs on the worker thread when every connection is gone. */
void worker_conn_gone(struct worker *w)
{
    if (!w->stopping || w->conns)
        return;
    pthread_mutex_lock(&w->inbox_lock);
    w->inbox_closed = true;
    struct wcmd *cmd = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    pthread_mutex_unlock(&w->inbox_lock);
    while (cmd) {
        struct wcmd *next = cmd->next;
        worker_free_cmd(cmd);
        cmd = next;
    }
    worker_run_turn_end(w);
    w->turn_end_ok = false; /* no check phase any more: callers do it now */
    worker_close_handle((uv_handle_t *)&w->turn_idle);
    worker_close_handle((uv_handle_t *)&w->wake);
    uv_timer_stop(&w->tick);
    worker_close_handle((uv_handle_t *)&w->tick);
    uv_check_stop(&w->flush_check);
    worker_close_handle((uv_handle_t *)&w->flush_check);
}

void worker_join(struct worker *w)
{
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = false;
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    /* Close whatever was never started (a failed start-up). */
    uv_walk(&w->loop, worker_walk_close, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    for (size_t i = 0; i < w->n_flush; i++)
        session_unref(w->flush[i]);
    free(w->flush);
    for (size_t i = 0; i < w->n_paused; i++)
        conn_unref(w->paused[i]);
    free(w->paused);
    struct wcmd *cmd = w->inbox_head;
    while (cmd) {
        struct wcmd *next = cmd->next;
        worker_free_cmd(cmd);
        cmd = next;
    }
    pthread_mutex_destroy(&w->inbox_lock);
    free(w->rbuf);
    free(w->stop_hooks);
    free(w);
}

void worker_metrics_add(struct worker *w, struct worker_metrics_sum *acc)
{
    const struct worker_metrics *m = &w->metrics;
    for (int q = 0; q < 3; q++) {
        acc->msgs_in[q] += metric_read(&m->msgs_in[q]);
        acc->bytes_in[q] += metric_read(&m->bytes_in[q]);
        acc->msgs_out[q] += metric_read(&m->msgs_out[q]);
        acc->bytes_out[q] += metric_read(&m->bytes_out[q]);
    }
    acc->no_subscribers += metric_read(&m->no_subscribers);
    metric_hist_add_to(&m->delivery, &acc->delivery);
}
