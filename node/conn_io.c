/*
 * conn_io.c - the transport of a connection: bytes from the socket to
 * conn_process, and the coalesced output (c->out) to the socket.
 *
 * This is the only file that reads or writes the stream. The transports
 * other than plain TCP are a stacked byte filter (struct conn_xf, below):
 * PROXY header, then TLS, then WebSocket, then MQTT. A connection branches
 * once on its kind: a plain TCP connection (c->xf NULL) reads with
 * conn_io_read_cb straight into conn_io_input and writes c->out as it is; a
 * filtered one reads with conn_io_xf_read_cb, and its c->out (plaintext MQTT)
 * is framed / encrypted into xf->wire, which is what gets written.
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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "hoptrace.h"
#include "log.h"
#include "proxy_proto.h"
#include "tls.h"
#include "ws.h"
#include "server.h"
#include "session.h"
#include "worker.h"

/* An asynchronous write: only while the socket does not take everything. */
struct conn_write {
    uv_write_t req;
    struct buf data;
};

/* The byte filter of a connection that is not plain TCP. */
struct conn_xf {
    struct proxy_parser *proxy;   /* until the PROXY header is read */
    struct tls_conn *tls;         /* tls, wss */
    struct ws_conn *ws;           /* ws, wss */
    struct buf wire;              /* bytes for the socket (framed, encrypted) */
    struct sockaddr_storage peer; /* the client's address from the PROXY header */
    char *identity;               /* the client certificate's CN, once verified */
    bool proxied;                 /* peer is set */
    bool identity_done;
    uint8_t linger;  /* closing: 1 goodbye queued, 2 half-closed, reading to EOF,
                      * 3 waiting for the client's WebSocket Close frame */
    bool peer_eof;   /* the peer closed (or reset) its side: no lingering */
    bool ws_waited;  /* the wait for the client's Close frame is over */
    bool tls_closed; /* close_notify queued */
    uv_shutdown_t shutdown;
};

static void conn_io_on_close(uv_handle_t *h);
static bool conn_io_admit(struct conn *c);
static bool conn_io_xf_linger(struct conn *c);

/* Does c's output go through TLS or WebSocket framing? */
static inline bool conn_io_framed(const struct conn *c)
{
    return c->xf && (c->xf->tls || c->xf->ws);
}

size_t conn_pending_bytes(const struct conn *c)
{
    return c->out.len + (c->wr ? c->wr->data.len : 0) + (c->xf ? c->xf->wire.len : 0);
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
    HOPTRACE_MARK(HOP_READ);
    if (nread == 0)
        return;
    if (nread < 0) {
        /* closed without DISCONNECT: the will is published */
        conn_close(c, 0, false);
        return;
    }
    atomic_fetch_add_explicit(&c->w->b->stats.bytes_received, (unsigned long)nread,
                              memory_order_relaxed);
    c->bytes_in += (uint64_t)nread;
    c->last_rx = uv_now(&c->w->loop);
    conn_ref(c);
    conn_io_input(c, (const uint8_t *)b->base, (size_t)nread);
    conn_unref(c);
}

static void conn_io_xf_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

void conn_io_start(struct conn *c)
{
    /* Two pauses may overlap (max_publish_rate and flow control): whichever
     * ends last starts reading again. */
    if (c->throttled || conn_flow_paused(c))
        return;
    uv_read_start((uv_stream_t *)&c->tcp, conn_io_alloc_cb,
                  c->xf ? conn_io_xf_read_cb : conn_io_read_cb);
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

static struct buf *conn_io_outbuf(struct conn *c);

bool conn_try_write(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->writing || c->write_failed)
        return false;
    struct buf *ob = conn_io_framed(c) ? conn_io_outbuf(c) : &c->out;
    if (c->write_failed) {
        worker_mark_dirty(c->w, c);
        return false;
    }
    while (ob->len) {
        uv_buf_t b = uv_buf_init((char *)ob->data, (unsigned)ob->len);
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
        c->bytes_out += (uint64_t)r;
        buf_consume(ob, (size_t)r);
    }
    buf_free(ob); /* an idle connection holds no output buffer */
    HOPTRACE_STAMP(HOP_SOCK_WRITTEN);
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
        if (c->xf)
            c->xf->wire.len = 0;
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
    struct buf *ob = conn_io_framed(c) ? &c->xf->wire : &c->out;
    if (ob->len == 0) {
        if (c->state == CONN_CLOSING && !(conn_io_framed(c) && conn_io_xf_linger(c)))
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
    wr->data = *ob;
    memset(ob, 0, sizeof(*ob));
    wr->req.data = c;
    uv_buf_t b = uv_buf_init((char *)wr->data.data, (unsigned)wr->data.len);
    atomic_fetch_add_explicit(&c->w->b->stats.bytes_sent, wr->data.len, memory_order_relaxed);
    c->bytes_out += wr->data.len;
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
        if (c->out.len || (c->xf && c->xf->wire.len))
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
    atomic_fetch_sub(&w->b->server->listener_conns[c->xport], 1);
    conn_unref(c);
    worker_conn_gone(w);
}

/* ---- the filter chain: PROXY, TLS, WebSocket ---------------------------- */

/* Move what the WebSocket and TLS engines have for the peer into xf->wire:
 * WebSocket frames go through TLS for wss. `mark`: have the worker write it
 * at the end of this turn (not when called from a write, which writes it). */
static void conn_io_xf_pump(struct conn *c, bool mark)
{
    struct conn_xf *xf = c->xf;
    uint8_t tmp[16384];
    size_t n;
    if (xf->ws) {
        while ((n = ws_conn_take_output(xf->ws, tmp, sizeof(tmp))) > 0) {
            int r = xf->tls ? tls_conn_write(xf->tls, tmp, n) : buf_append(&xf->wire, tmp, n);
            if (r < 0) {
                c->write_failed = true;
                break;
            }
        }
    }
    if (xf->tls) {
        while ((n = tls_conn_take_output(xf->tls, tmp, sizeof(tmp))) > 0) {
            if (buf_append(&xf->wire, tmp, n) < 0) {
                c->write_failed = true;
                break;
            }
        }
    }
    if (mark && (xf->wire.len || c->write_failed))
        worker_mark_dirty(c->w, c);
}

/* Frame / encrypt the plaintext MQTT output into xf->wire; returns it. */
static struct buf *conn_io_outbuf(struct conn *c)
{
    struct conn_xf *xf = c->xf;
    if (c->out.len) {
        int r = xf->ws ? ws_conn_write(xf->ws, c->out.data, c->out.len)
                       : tls_conn_write(xf->tls, c->out.data, c->out.len);
        buf_free(&c->out);
        if (r < 0)
            c->write_failed = true;
    }
    conn_io_xf_pump(c, false);
    return &xf->wire;
}

static void conn_io_xf_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* A lingering connection's bytes are dropped; its end closes the handle. */
static void conn_io_xf_drain_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    struct conn *c = st->data;
    if (nread < 0 && c->state == CONN_CLOSING) {
        c->xf->peer_eof = true;
        conn_io_close(c);
    }
}

/* Bytes of a closing WebSocket connection that waits for the client's
 * Close frame (linger 3), and with len 0 what its engines hold already
 * (the Close frame may have come with the DISCONNECT, read by TLS but not
 * yet passed on): through TLS and the WebSocket engine, whose MQTT payload
 * is dropped. Returns true when the wait is over: the Close frame came, or
 * an error. */
static bool conn_io_xf_close_input(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_xf *xf = c->xf;
    uint8_t plain[16384];
    bool over = false;
    if (xf->tls && len && tls_conn_feed(xf->tls, data, len) < 0)
        over = true;
    for (;;) {
        if (xf->tls && !over) {
            long m = tls_conn_read(xf->tls, plain, sizeof(plain));
            if (m <= 0) {
                over = m < 0;
                break;
            }
            data = plain;
            len = (size_t)m;
        }
        if (len && ws_conn_feed(xf->ws, data, len) < 0)
            over = true;
        while (ws_conn_read(xf->ws, plain, sizeof(plain)) > 0)
            ; /* MQTT after DISCONNECT: dropped */
        if (!xf->tls || over)
            break;
    }
    conn_io_xf_pump(c, false);
    return over || ws_conn_finished(xf->ws);
}

/* The socket's bytes while waiting for the client's Close frame; once it
 * came, the goodbye goes on (conn_io_xf_linger). */
static void conn_io_xf_close_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = st->data;
    struct conn_xf *xf = c->xf;
    if (nread == 0 || c->state != CONN_CLOSING || xf->linger != 3)
        return;
    if (nread < 0) {
        xf->peer_eof = true;
        conn_io_close(c);
        return;
    }
    if (!conn_io_xf_close_input(c, (const uint8_t *)b->base, (size_t)nread))
        return;
    uv_read_stop(st);
    xf->ws_waited = true;
    xf->linger = 1;
    conn_flush(c); /* on to the TLS goodbye and the half-close */
}

/*
 * A framed connection in CLOSING has written everything: say goodbye at the
 * transport's level, half-close, and read (dropping it) until the peer
 * closes or the grace period ends (conn_check_timers). Closing at once
 * would leave the peer's own goodbye (a WebSocket client sends its close
 * frame after DISCONNECT) unread, and the kernel would answer it with a
 * reset. The WebSocket Close frame goes first, and the end of the TLS
 * stream (close_notify) and of the TCP one (FIN) only once the client's
 * Close frame came back [RFC 6455 7.1.1: the server closes the connection
 * after sending and receiving a Close frame]: a client that sees the end
 * of the stream before it answered ends its socket, and its answer then
 * fails (MQTT.js over wss: write EPIPE). Returns true while the connection
 * lingers (the caller does not close it).
 */
static bool conn_io_xf_linger(struct conn *c)
{
    struct conn_xf *xf = c->xf;
    if (xf->peer_eof)
        return false; /* nothing left to read, nobody to say goodbye to */
    if (xf->linger == 2 || xf->linger == 3)
        return true;
    if (xf->linger == 0) {
        xf->linger = 1;
        if (xf->ws && ws_conn_open(xf->ws) && !ws_conn_finished(xf->ws))
            ws_conn_close(xf->ws, 1000);
        conn_io_xf_pump(c, false);
        if (xf->wire.len) {
            conn_flush(c); /* comes back here (linger 1) once written */
            return true;
        }
    }
    /* linger 1: what was queued is written */
    if (xf->ws && ws_conn_open(xf->ws) && !xf->ws_waited) {
        if (!conn_io_xf_close_input(c, NULL, 0)) {
            xf->linger = 3;
            if (uv_read_start((uv_stream_t *)&c->tcp, conn_io_alloc_cb, conn_io_xf_close_read_cb) !=
                0)
                return false;
            return true;
        }
        xf->ws_waited = true;
        if (xf->wire.len) {
            conn_flush(c); /* back here (linger 1) once written */
            return true;
        }
    }
    if (xf->tls && tls_conn_handshake_done(xf->tls) && !xf->tls_closed) {
        xf->tls_closed = true;
        tls_conn_close(xf->tls);
        conn_io_xf_pump(c, false);
        if (xf->wire.len) {
            conn_flush(c); /* back here (linger 1) once written */
            return true;
        }
    }
    xf->linger = 2;
    if (uv_shutdown(&xf->shutdown, (uv_stream_t *)&c->tcp, conn_io_xf_shutdown_cb) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, conn_io_alloc_cb, conn_io_xf_drain_cb) != 0)
        return false;
    return true;
}

/* MQTT bytes out of the WebSocket engine. */
static void conn_io_ws_input(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_xf *xf = c->xf;
    int e = ws_conn_feed(xf->ws, data, len);
    uint8_t plain[16384];
    long m = 0;
    while (conn_is_open(c) && (m = ws_conn_read(xf->ws, plain, sizeof(plain))) > 0)
        conn_io_input(c, plain, (size_t)m);
    conn_io_xf_pump(c, true);
    if ((e < 0 || m < 0) && conn_is_open(c)) {
        if (e < 0 && e != WS_ERR_CLOSED)
            log_debug("%s: WebSocket: %s", CONN_PEER(c), ws_conn_error(xf->ws));
        conn_close(c, 0, false);
    }
}

/* Plaintext out of the TLS engine, to WebSocket (wss) or MQTT (tls). */
static void conn_io_tls_input(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_xf *xf = c->xf;
    int e = tls_conn_feed(xf->tls, data, len);
    conn_io_xf_pump(c, true); /* the handshake's answer, or an alert */
    if (e < 0) {
        log_debug("%s: TLS: %s", CONN_PEER(c), tls_conn_error(xf->tls));
        conn_close(c, 0, false);
        return;
    }
    if (!xf->identity_done && tls_conn_handshake_done(xf->tls)) {
        char id[256];
        xf->identity_done = true;
        if (tls_conn_peer_identity(xf->tls, TLS_ID_CN, id, sizeof(id)) > 0)
            xf->identity = strdup(id);
    }
    uint8_t plain[16384];
    long m = 0;
    while (conn_is_open(c) && (m = tls_conn_read(xf->tls, plain, sizeof(plain))) > 0) {
        if (xf->ws)
            conn_io_ws_input(c, plain, (size_t)m);
        else
            conn_io_input(c, plain, (size_t)m);
    }
    if (conn_is_open(c))
        conn_io_xf_pump(c, true); /* what reading produced (TLS 1.3 session tickets) */
    if (m < 0 && conn_is_open(c)) {
        if (m != TLS_ERR_CLOSED)
            log_debug("%s: TLS: %s", CONN_PEER(c), tls_conn_error(xf->tls));
        conn_close(c, 0, false);
    }
}

/* Bytes from the socket of a filtered connection. */
static void conn_io_xf_input(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_xf *xf = c->xf;
    if (xf->proxy) {
        struct proxy_header h;
        size_t used = 0;
        int st = proxy_parser_feed(xf->proxy, data, len, &used, &h);
        if (st == PROXY_NEED_MORE)
            return;
        if (st < 0) {
            /* a listener that expects the header closes without one */
            log_info("%s: closed: %s", CONN_PEER(c), proxy_strerror(st));
            conn_close(c, 0, false);
            return;
        }
        free(xf->proxy);
        xf->proxy = NULL;
        if (!h.local) {
            xf->peer = h.src;
            xf->proxied = true;
        }
        log_debug("%s: PROXY v%d header", CONN_PEER(c), h.version);
        if (!conn_io_admit(c)) {
            conn_close(c, 0, false);
            return;
        }
        data += used;
        len -= used;
        if (len == 0)
            return;
    }
    if (xf->tls)
        conn_io_tls_input(c, data, len);
    else if (xf->ws)
        conn_io_ws_input(c, data, len);
    else
        conn_io_input(c, data, len);
}

static void conn_io_xf_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        c->xf->peer_eof = true;
        conn_close(c, 0, false);
        return;
    }
    atomic_fetch_add_explicit(&c->w->b->stats.bytes_received, (unsigned long)nread,
                              memory_order_relaxed);
    c->bytes_in += (uint64_t)nread;
    c->last_rx = uv_now(&c->w->loop);
    conn_ref(c);
    conn_io_xf_input(c, (const uint8_t *)b->base, (size_t)nread);
    conn_unref(c);
}

/* The filter for a connection of listener `xport`: 0, or -ENOMEM. */
static int conn_io_xf_new(struct conn *c, int xport)
{
    struct broker *b = c->w->b;
    bool proxy = b->cfg.proxy_protocol & (1u << xport);
    if (xport == CONFIG_XPORT_TCP && !proxy)
        return 0;
    struct conn_xf *xf = calloc(1, sizeof(*xf));
    if (!xf)
        return -ENOMEM;
    c->xf = xf;
    if (proxy) {
        xf->proxy = malloc(sizeof(*xf->proxy));
        if (!xf->proxy)
            return -ENOMEM;
        proxy_parser_init(xf->proxy);
    }
    if (xport == CONFIG_XPORT_TLS || xport == CONFIG_XPORT_WSS) {
        struct tls_ctx *ctx = auth_tls(&b->auth);
        xf->tls = ctx ? tls_conn_new(ctx) : NULL;
        tls_ctx_unref(ctx); /* the connection's SSL keeps the context */
        if (!xf->tls)
            return -ENOMEM;
    }
    if (xport == CONFIG_XPORT_WS || xport == CONFIG_XPORT_WSS) {
        xf->ws = ws_conn_new(&b->server->ws);
        if (!xf->ws)
            return -ENOMEM;
    }
    return 0;
}

void conn_io_xf_free(struct conn *c)
{
    struct conn_xf *xf = c->xf;
    if (!xf)
        return;
    free(xf->proxy);
    tls_conn_free(xf->tls);
    ws_conn_free(xf->ws);
    buf_free(&xf->wire);
    free(xf->identity);
    free(xf);
    c->xf = NULL;
}

const char *conn_tls_identity(const struct conn *c)
{
    return c->xf ? c->xf->identity : NULL;
}

bool conn_is_tls(const struct conn *c)
{
    return c->xf && c->xf->tls;
}

/* ---- admission: limits on new connections --------------------------------- */

/* The client's address: from the PROXY header, else the socket's peer. */
static bool conn_io_peer_addr(const struct conn *c, struct sockaddr_storage *ss)
{
    if (c->xf && c->xf->proxied) {
        *ss = c->xf->peer;
        return true;
    }
    int sl = sizeof(*ss);
    return uv_tcp_getpeername(&c->tcp, (struct sockaddr *)ss, &sl) == 0;
}

/* max_connection_rate: a table of (address hash, second, count) slots; two
 * addresses in one slot share their budget (rare with 4096 slots). */
static bool conn_io_rate_ok(struct conn *c)
{
    struct broker *b = c->w->b;
    uint32_t max = b->cfg.max_connection_rate;
    struct sockaddr_storage ss;
    if (!max || !conn_io_peer_addr(c, &ss))
        return true;
    const uint8_t *p;
    size_t n;
    if (ss.ss_family == AF_INET) {
        p = (const uint8_t *)&((struct sockaddr_in *)&ss)->sin_addr;
        n = 4;
    } else if (ss.ss_family == AF_INET6) {
        p = (const uint8_t *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        n = 16;
    } else {
        return true;
    }
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    struct server *srv = b->server;
    uint64_t sec = uv_now(&c->w->loop) / 1000u;
    bool ok;
    pthread_mutex_lock(&srv->rate_lock);
    struct server_rate_slot *slot = &srv->rate[h % SERVER_RATE_SLOTS];
    if (slot->key != h || slot->second != sec) {
        slot->key = h;
        slot->second = sec;
        slot->count = 0;
    }
    ok = ++slot->count <= max;
    pthread_mutex_unlock(&srv->rate_lock);
    return ok;
}

/* Whether a new connection may stay (after its PROXY header, if any). */
static bool conn_io_admit(struct conn *c)
{
    struct broker *b = c->w->b;
    if (!conn_io_rate_ok(c)) {
        atomic_fetch_add_explicit(&b->stats.refused_rate, 1, memory_order_relaxed);
        log_info("%s: refused: more than %u connections per second from this address", CONN_PEER(c),
                 b->cfg.max_connection_rate);
        return false;
    }
    return true;
}

/* Accept a connection on w's listener of kind xport: it starts in CONN_NEW,
 * reading. */
void conn_accept(struct worker *w, uv_stream_t *server, int xport)
{
    struct broker *b = w->b;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        /* not accepted, the listener waits for it: retried on the next tick */
        w->accept_retry |= 1u << xport;
        return;
    }
    atomic_init(&c->refs, 1);
    c->w = w;
    c->xport = (uint8_t)xport;
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
    long on_listener = atomic_fetch_add(&srv->listener_conns[xport], 1) + 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_io_close(c);
        return;
    }
    if (w->stopping ||
        (b->cfg.max_connections && atomic_load(&srv->connections) > (long)b->cfg.max_connections)) {
        conn_io_close(c);
        return;
    }
    if (b->cfg.max_connections_per_listener &&
        on_listener > (long)b->cfg.max_connections_per_listener) {
        atomic_fetch_add_explicit(&b->stats.refused_listener, 1, memory_order_relaxed);
        log_info("%s: refused: %s listener has %u connections (max_connections_per_listener)",
                 CONN_PEER(c), config_xport_name(xport), b->cfg.max_connections_per_listener);
        conn_io_close(c);
        return;
    }
    if (conn_io_xf_new(c, xport) < 0) {
        conn_io_close(c);
        return;
    }
    /* with a PROXY header, the limits per address wait for the address */
    if (!(c->xf && c->xf->proxy) && !conn_io_admit(c)) {
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
    if (c->xf && c->xf->proxied)
        return proxy_addr_str(&c->xf->peer, out, len);
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
