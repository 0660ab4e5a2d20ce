/*
 * conn_io.c - the transport of a connection: bytes from the socket to
 * conn_process, and the coalesced output (c->out) to the socket.
 *
 * This is the only file that reads or writes the stream. A TLS or WebSocket
 * transport sits here: decrypt / unframe what conn_io_input gets before
 * conn_process sees it, and encrypt / frame c->out before it is written.
 *
 * Reading: libuv reads into the worker's shared buffer; complete packets are
 * handled straight from it, and only the tail of an incomplete packet is
 * copied into the connection's own buffer (so an idle connection holds no
 * read buffer).
 *
 * Writing: handlers append encoded packets to c->out and mark the connection
 * dirty; the worker writes all of it at the end of the loop turn, first with
 * uv_try_write (most writes complete at once: no request, no copy), the rest
 * with one uv_write. While a write is in progress new output accumulates in
 * c->out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "server.h"
#include "session.h"
#include "worker.h"

/* An asynchronous write: only while the socket does not take everything. */
struct conn_write {
    uv_write_t req;
    struct buf data;
};

static void conn_io_on_close(uv_handle_t *h);

size_t conn_pending_bytes(const struct conn *c)
{
    return c->out.len + (c->wr ? c->wr->data.len : 0);
}

/* ---- reading ------------------------------------------------------------- */

/* Plaintext bytes from the client: handle the complete packets, keep the
 * tail of an incomplete one. */
static void conn_io_input(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->in.len == 0) {
        size_t used = conn_process(c, data, len);
        if (used < len && conn_is_open(c) && buf_append(&c->in, data + used, len - used) < 0)
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
    } else {
        if (buf_append(&c->in, data, len) < 0) {
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
        } else {
            size_t used = conn_process(c, c->in.data, c->in.len);
            buf_consume(&c->in, used);
        }
    }
    if (c->in.len == 0 && c->in.cap)
        buf_free(&c->in); /* idle connections hold no read buffer */
}

static void conn_io_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    out->base = c->w->rbuf;
    out->len = c->w->rbuf_size;
}

static void conn_io_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* closed without DISCONNECT: the will is published */
        conn_close(c, 0, false);
        return;
    }
    atomic_fetch_add_explicit(&c->w->b->stats.bytes_received, (unsigned long)nread,
                              memory_order_relaxed);
    c->last_rx = uv_now(&c->w->loop);
    conn_ref(c);
    conn_io_input(c, (const uint8_t *)b->base, (size_t)nread);
    conn_unref(c);
}

void conn_io_start(struct conn *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, conn_io_alloc_cb, conn_io_read_cb);
    if (c->in.len) {
        /* packets that arrived while reading was paused */
        size_t used = conn_process(c, c->in.data, c->in.len);
        buf_consume(&c->in, used);
        if (c->in.len == 0 && c->in.cap)
            buf_free(&c->in);
    }
}

void conn_io_stop(struct conn *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
}

/* ---- writing ------------------------------------------------------------- */

static void conn_io_write_cb(uv_write_t *req, int status);

bool conn_try_write(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->writing || c->write_failed)
        return false;
    while (c->out.len) {
        uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
        int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (r == UV_EAGAIN)
            return false;
        if (r < 0) {
            /* closed by conn_flush at the end of the turn: never from here,
             * where the caller may hold the session lock */
            c->write_failed = true;
            worker_mark_dirty(c->w, c);
            return false;
        }
        atomic_fetch_add_explicit(&c->w->b->stats.bytes_sent, (unsigned long)r,
                                  memory_order_relaxed);
        buf_consume(&c->out, (size_t)r);
    }
    buf_free(&c->out); /* an idle connection holds no output buffer */
    return true;
}

/* A write could not be made: close an open connection, finish a closing one. */
static void conn_io_write_error(struct conn *c, uint8_t reason)
{
    if (conn_is_open(c))
        conn_close(c, reason, false);
    else if (c->state == CONN_CLOSING)
        conn_io_close(c);
}

void conn_flush(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->writing)
        return;
    if (c->write_failed) {
        c->out.len = 0;
        if (conn_is_open(c)) {
            conn_close(c, 0, false); /* which flushes (closes) again */
            return;
        }
        if (c->state == CONN_CLOSING) {
            /* nothing more can be written: no grace period to wait out */
            conn_io_close(c);
            return;
        }
    }
    conn_try_write(c);
    if (c->writing || c->write_failed)
        return;
    if (c->out.len == 0) {
        if (c->state == CONN_CLOSING)
            conn_io_close(c);
        return;
    }
    /* The socket is full: hand the rest to libuv and wait for it. */
    struct conn_write *wr = malloc(sizeof(*wr));
    if (!wr) {
        c->out.len = 0;
        conn_io_write_error(c, MQTT_RC_UNSPECIFIED);
        return;
    }
    wr->data = c->out;
    memset(&c->out, 0, sizeof(c->out));
    wr->req.data = c;
    uv_buf_t b = uv_buf_init((char *)wr->data.data, (unsigned)wr->data.len);
    atomic_fetch_add_explicit(&c->w->b->stats.bytes_sent, wr->data.len, memory_order_relaxed);
    c->writing = true;
    c->wr = wr;
    conn_ref(c);
    int r = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, conn_io_write_cb);
    if (r < 0) {
        c->writing = false;
        c->wr = NULL;
        buf_free(&wr->data);
        free(wr);
        conn_unref(c);
        conn_io_write_error(c, 0);
    }
}

static void conn_io_write_cb(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct conn_write *wr = c->wr;
    c->writing = false;
    c->wr = NULL;
    buf_free(&wr->data);
    free(wr);
    if (status < 0 && conn_is_open(c)) {
        conn_close(c, 0, false);
    } else if (c->state == CONN_CLOSING) {
        if (status < 0)
            c->out.len = 0;
        conn_flush(c);
    } else if (c->state == CONN_ACTIVE) {
        if (c->out.len)
            conn_flush(c);
        struct session *s = c->session;
        /* a racy hint; the flush itself locks, and does nothing when the
         * session was taken over by a connection of another worker */
        if (s && s->queue.len)
            session_flush_owned(c->w->b, s, c->w);
    }
    conn_unref(c);
}

/* ---- closing ------------------------------------------------------------- */

void conn_io_close(struct conn *c)
{
    c->state = CONN_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, conn_io_on_close);
}

static void conn_io_on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->n_conns--;
    atomic_fetch_sub(&w->b->server->connections, 1);
    conn_unref(c);
    worker_conn_gone(w);
}

/* Accept a connection on w's listener: it starts in CONN_NEW, reading. */
void conn_accept(struct worker *w, uv_stream_t *server)
{
    struct broker *b = w->b;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        /* not accepted, the listener waits for it: retried on the next tick */
        w->accept_retry = true;
        return;
    }
    atomic_init(&c->refs, 1);
    c->w = w;
    c->client_max_packet = UINT32_MAX;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    struct server *srv = b->server;
    atomic_fetch_add(&srv->connections, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_io_close(c);
        return;
    }
    if (w->stopping ||
        (b->cfg.max_connections && atomic_load(&srv->connections) > (long)b->cfg.max_connections)) {
        conn_io_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state_since = c->last_rx = uv_now(&w->loop);
    c->state = CONN_NEW;
    conn_io_start(c);
}

const char *conn_peer(const struct conn *c, char *out, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    char host[48] = "?";
    snprintf(out, len, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0)
        return out;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        uv_ip4_name(sin, host, sizeof(host));
        snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(sin6, host, sizeof(host));
        snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
    }
    return out;
}
