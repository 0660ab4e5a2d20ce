/*
 * raft_transport.c - TCP transport for raft_uv, bound to the node's own
 * address both ways, with a cluster handshake (see raft_transport.h).
 *
 * Every handle this transport creates is counted in tr->open; close()
 * closes them all and calls libraft's close callback when the count is 0.
 * An outgoing stream is handed to libraft once its handshake is written; an
 * incoming one once its handshake is read and checked (the read buffers are
 * sized to the handshake's remaining bytes, so not one byte of what follows
 * is consumed here).
 */
#include "raft_transport.h"
#include "log.h"
#include "tcp_bounds.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HS_FIXED 52 /* magic 4, version 4, id 8, lengths 2+2, proof 32 */
#define HS_MAX_VAR 512
#define HOST_MAX 256

struct outgoing;
struct incoming;

struct tr {
    uv_loop_t *loop;
    char *name, *secret;
    raft_id id;
    char address[RAFT_TRANSPORT_ADDR_MAX];
    char bind_ip[INET_ADDRSTRLEN];
    struct sockaddr_in self;
    uv_tcp_t listener;
    uv_timer_t accept_retry; /* a connection libuv holds, not taken yet (on_connection) */
    bool listening;
    raft_uv_accept_cb accept_cb;
    struct outgoing *out;
    struct incoming *in;
    unsigned open;
    bool closing;
    raft_uv_transport_close_cb close_cb;
    struct raft_uv_transport *t;
    uint64_t refused;
};

struct outgoing {
    struct tr *tr;
    struct outgoing *next, **pprev;
    struct raft_uv_connect *req;
    uv_tcp_t *tcp; /* raft_malloc'ed: libraft frees it once it owns it */
    uv_getaddrinfo_t gai;
    bool resolving; /* gai pending: tcp not initialised yet */
    struct sockaddr_in peer;
    uv_connect_t conn;
    uv_write_t write;
    unsigned char hs[HS_FIXED + HS_MAX_VAR];
    size_t hs_len;
    bool cb_done; /* req->cb was called */
};

struct incoming {
    struct tr *tr;
    struct incoming *next, **pprev;
    uv_tcp_t *tcp;
    unsigned char buf[HS_FIXED + HS_MAX_VAR];
    size_t want, got;
    uv_getaddrinfo_t gai;
    bool resolving; /* the claimed host name is being resolved */
    bool closed;    /* tcp closed while resolving: the callback frees i */
    raft_id id;
    char address[RAFT_TRANSPORT_ADDR_MAX];
};

/* Split "host:port" (host an IPv4 literal or a DNS name). */
static int split_address(const char *address, char host[HOST_MAX], uint16_t *port)
{
    const char *colon = strrchr(address, ':');
    size_t n = colon ? (size_t)(colon - address) : strlen(address);
    if (n == 0 || n >= HOST_MAX)
        return -EINVAL;
    memcpy(host, address, n);
    host[n] = '\0';
    char *end = NULL;
    long p = colon ? strtol(colon + 1, &end, 10) : 8080;
    if (p <= 0 || p > 65535 || (colon && *end != '\0'))
        return -EINVAL;
    *port = (uint16_t)p;
    return 0;
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static void proof(const struct tr *tr, raft_id id, const char *addr, size_t alen,
                  unsigned char out[32])
{
    unsigned char msg[13 + 8 + HS_MAX_VAR];
    size_t nlen = strlen(tr->name), n = 0;
    memcpy(msg, "starling-raft", 13);
    n = 13;
    put_be(msg + n, id, 8);
    n += 8;
    memcpy(msg + n, addr, alen);
    n += alen;
    memcpy(msg + n, tr->name, nlen);
    n += nlen;
    unsigned int olen = 32;
    HMAC(EVP_sha256(), tr->secret, (int)strlen(tr->secret), msg, n, out, &olen);
}

static void maybe_closed(struct tr *tr)
{
    if (tr->closing && tr->open == 0 && tr->close_cb) {
        raft_uv_transport_close_cb cb = tr->close_cb;
        tr->close_cb = NULL;
        cb(tr->t);
    }
}

/* ---- outgoing ---- */

static void out_unlink(struct outgoing *o)
{
    if (o->pprev) {
        *o->pprev = o->next;
        if (o->next)
            o->next->pprev = o->pprev;
        o->pprev = NULL;
    }
}

static void out_closed(uv_handle_t *h)
{
    struct outgoing *o = h->data;
    struct tr *tr = o->tr;
    raft_free(h);
    out_unlink(o);
    if (!o->cb_done) {
        o->cb_done = true;
        o->req->cb(o->req, NULL, tr->closing ? RAFT_CANCELED : RAFT_NOCONNECTION);
    }
    free(o);
    tr->open--;
    maybe_closed(tr);
}

static void out_fail(struct outgoing *o)
{
    if (o->resolving) {
        uv_cancel((uv_req_t *)&o->gai); /* on_resolved finishes o */
        return;
    }
    if (!uv_is_closing((uv_handle_t *)o->tcp))
        uv_close((uv_handle_t *)o->tcp, out_closed);
}

static void out_written(uv_write_t *w, int status)
{
    struct outgoing *o = w->data;
    struct tr *tr = o->tr;
    if (status != 0 || tr->closing) {
        out_fail(o);
        return;
    }
    /* Hand the stream to libraft, which owns (closes and frees) it now. */
    out_unlink(o);
    o->cb_done = true;
    tr->open--;
    uv_stream_t *stream = (uv_stream_t *)o->tcp;
    stream->data = NULL;
    struct raft_uv_connect *req = o->req;
    free(o);
    req->cb(req, stream, 0);
    maybe_closed(tr);
}

static void out_connected(uv_connect_t *c, int status)
{
    struct outgoing *o = c->data;
    if (status != 0 || o->tr->closing) {
        out_fail(o);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)o->hs, (unsigned)o->hs_len);
    o->write.data = o;
    if (uv_write(&o->write, (uv_stream_t *)o->tcp, &b, 1, out_written) != 0)
        out_fail(o);
}

static size_t handshake_encode(const struct tr *tr, unsigned char *hs)
{
    size_t alen = strlen(tr->address), nlen = strlen(tr->name);
    memcpy(hs, "STRF", 4);
    put_be(hs + 4, RAFT_TRANSPORT_VERSION, 4);
    put_be(hs + 8, tr->id, 8);
    put_be(hs + 16, alen, 2);
    put_be(hs + 18, nlen, 2);
    proof(tr, tr->id, tr->address, alen, hs + 20);
    memcpy(hs + HS_FIXED, tr->address, alen);
    memcpy(hs + HS_FIXED + alen, tr->name, nlen);
    return HS_FIXED + alen + nlen;
}

/* Bind to this node's IP and connect to o->peer. */
static void out_start(struct outgoing *o)
{
    struct tr *tr = o->tr;
    struct sockaddr_in src = tr->self;
    uv_tcp_init(tr->loop, o->tcp);
    o->tcp->data = o;
    /* The source address of every inter-node connection is the node's own
     * (any port), so that rules on address pairs can cut two nodes apart. */
    src.sin_port = 0;
    int rc = uv_tcp_bind(o->tcp, (const struct sockaddr *)&src, 0);
    /* (the bind made the socket) Raft's messages go out on the connections
     * this node dials, and an incoming one only reads: the bounds go on
     * these. Without, a cut that drops packets on arrival kept a node's
     * Raft silent 26 s after a 27 s cut healed (the leader's heartbeats
     * waited for TCP's next retransmission). */
    if (rc == 0)
        tcp_bounds_set(o->tcp, true, "raft transport");
    o->conn.data = o;
    if (rc == 0)
        rc = uv_tcp_connect(&o->conn, o->tcp, (const struct sockaddr *)&o->peer, out_connected);
    if (rc != 0) {
        /* Report through the callback, like any failed attempt. */
        out_fail(o);
    }
}

/* A peer's address given by name (its IP may change: a restarted pod) is
 * resolved at every connection attempt. */
static void out_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    struct outgoing *o = g->data;
    struct tr *tr = o->tr;
    o->resolving = false;
    bool found = false;
    for (struct addrinfo *a = status == 0 ? res : NULL; a && !found; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            uint16_t port = o->peer.sin_port;
            memcpy(&o->peer, a->ai_addr, sizeof o->peer);
            o->peer.sin_port = port;
            found = true;
        }
    uv_freeaddrinfo(res);
    if (found && !tr->closing) {
        out_start(o);
        return;
    }
    out_unlink(o);
    o->cb_done = true;
    o->req->cb(o->req, NULL, tr->closing ? RAFT_CANCELED : RAFT_NOCONNECTION);
    raft_free(o->tcp);
    free(o);
    tr->open--;
    maybe_closed(tr);
}

static int tr_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    (void)id;
    struct tr *tr = t->impl;
    char host[HOST_MAX];
    uint16_t port;
    if (tr->closing)
        return RAFT_CANCELED;
    if (split_address(address, host, &port) != 0)
        return RAFT_INVALID;
    struct outgoing *o = calloc(1, sizeof *o);
    uv_tcp_t *tcp = raft_malloc(sizeof *tcp);
    if (!o || !tcp) {
        free(o);
        raft_free(tcp);
        return RAFT_NOMEM;
    }
    req->cb = cb;
    o->tr = tr;
    o->req = req;
    o->tcp = tcp;
    o->hs_len = handshake_encode(tr, o->hs);
    o->peer.sin_family = AF_INET;
    o->peer.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &o->peer.sin_addr) != 1) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        o->gai.data = o;
        if (uv_getaddrinfo(tr->loop, &o->gai, out_resolved, host, NULL, &hints) != 0) {
            free(o);
            raft_free(tcp);
            return RAFT_NOCONNECTION;
        }
        o->resolving = true;
    }
    tr->open++;
    o->next = tr->out;
    if (tr->out)
        tr->out->pprev = &o->next;
    o->pprev = &tr->out;
    tr->out = o;
    if (!o->resolving)
        out_start(o);
    return 0;
}

/* ---- incoming ---- */

static void in_unlink(struct incoming *i)
{
    if (i->pprev) {
        *i->pprev = i->next;
        if (i->next)
            i->next->pprev = i->pprev;
        i->pprev = NULL;
    }
}

static void in_free(struct incoming *i)
{
    struct tr *tr = i->tr;
    in_unlink(i);
    free(i);
    tr->open--;
    maybe_closed(tr);
}

static void in_closed(uv_handle_t *h)
{
    struct incoming *i = h->data;
    raft_free(h);
    if (i->resolving) {
        i->closed = true; /* in_resolved frees i */
        return;
    }
    in_free(i);
}

static void in_drop(struct incoming *i)
{
    if (i->resolving)
        uv_cancel((uv_req_t *)&i->gai);
    if (!uv_is_closing((uv_handle_t *)i->tcp))
        uv_close((uv_handle_t *)i->tcp, in_closed);
}

static void in_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct incoming *i = h->data;
    /* Exactly what remains of the handshake: never read past it. */
    *b = uv_buf_init((char *)i->buf + i->got, (unsigned)(i->want - i->got));
}

static void in_refuse(struct incoming *i, const char *why)
{
    __atomic_add_fetch(&i->tr->refused, 1, __ATOMIC_RELAXED);
    log_warn("cluster: raft connection refused: %s", why);
    in_drop(i);
}

/* The handshake is valid and the source address is the claimed one: hand
 * the stream to libraft. */
static void in_accept(struct incoming *i)
{
    struct tr *tr = i->tr;
    uv_read_stop((uv_stream_t *)i->tcp);
    in_unlink(i);
    tr->open--;
    uv_stream_t *stream = (uv_stream_t *)i->tcp;
    stream->data = NULL;
    raft_id id = i->id;
    char address[RAFT_TRANSPORT_ADDR_MAX];
    snprintf(address, sizeof address, "%s", i->address);
    free(i);
    tr->accept_cb(tr->t, id, address, stream);
}

static bool in_from(struct incoming *i, const struct in_addr *ip)
{
    struct sockaddr_in from;
    int flen = sizeof from;
    return uv_tcp_getpeername(i->tcp, (struct sockaddr *)&from, &flen) == 0 &&
           from.sin_family == AF_INET && from.sin_addr.s_addr == ip->s_addr;
}

/* A peer that names itself by host name must connect from one of the
 * name's current addresses. */
static void in_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    struct incoming *i = g->data;
    i->resolving = false;
    bool ok = false;
    for (struct addrinfo *a = status == 0 ? res : NULL; a && !ok; a = a->ai_next)
        if (a->ai_family == AF_INET && !i->closed)
            ok = in_from(i, &((struct sockaddr_in *)a->ai_addr)->sin_addr);
    uv_freeaddrinfo(res);
    if (i->closed)
        in_free(i);
    else if (i->tr->closing)
        in_drop(i);
    else if (ok)
        in_accept(i);
    else
        in_refuse(i, status == 0 ? "source address is not an address of the claimed name"
                                 : "the claimed host name does not resolve");
}

static void in_check(struct incoming *i)
{
    struct tr *tr = i->tr;
    size_t alen = get_be(i->buf + 16, 2), nlen = get_be(i->buf + 18, 2);
    const char *addr = (const char *)i->buf + HS_FIXED;
    const char *name = addr + alen;
    raft_id id = get_be(i->buf + 8, 8);
    unsigned char want[32];
    if (alen == 0 || alen >= sizeof i->address) {
        in_refuse(i, "bad address");
        return;
    }
    memcpy(i->address, addr, alen);
    i->address[alen] = '\0';
    i->id = id;
    if (nlen != strlen(tr->name) || memcmp(name, tr->name, nlen) != 0) {
        in_refuse(i, "another cluster name");
        return;
    }
    proof(tr, id, i->address, alen, want);
    if (CRYPTO_memcmp(want, i->buf + 20, 32) != 0) {
        in_refuse(i, "bad cluster_secret proof");
        return;
    }
    /* The peer must connect from the IP it claims (or an IP of the name it
     * claims). */
    char host[HOST_MAX];
    uint16_t port;
    struct in_addr ip;
    if (split_address(i->address, host, &port) != 0) {
        in_refuse(i, "bad address");
        return;
    }
    if (inet_pton(AF_INET, host, &ip) == 1) {
        if (in_from(i, &ip))
            in_accept(i);
        else
            in_refuse(i, "source address differs from the claimed address");
        return;
    }
    uv_read_stop((uv_stream_t *)i->tcp);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    i->gai.data = i;
    if (uv_getaddrinfo(tr->loop, &i->gai, in_resolved, host, NULL, &hints) != 0) {
        in_refuse(i, "cannot resolve the claimed host name");
        return;
    }
    i->resolving = true;
}

static void in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    struct incoming *i = s->data;
    if (n < 0) {
        in_drop(i);
        return;
    }
    i->got += (size_t)n;
    if (i->got < i->want)
        return;
    if (i->want == HS_FIXED) {
        if (memcmp(i->buf, "STRF", 4) != 0 || get_be(i->buf + 4, 4) != RAFT_TRANSPORT_VERSION) {
            in_refuse(i, "not a Starling raft handshake of this version");
            return;
        }
        size_t var = get_be(i->buf + 16, 2) + get_be(i->buf + 18, 2);
        if (var > HS_MAX_VAR) {
            in_refuse(i, "handshake too long");
            return;
        }
        i->want = HS_FIXED + var;
        if (i->got < i->want)
            return;
    }
    in_check(i);
}

#define ACCEPT_RETRY_MS 100

static void on_connection(uv_stream_t *server, int status);

static void on_accept_retry(uv_timer_t *t)
{
    struct tr *tr = t->data;
    on_connection((uv_stream_t *)&tr->listener, 0);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct tr *tr = server->data;
    if (status != 0 || tr->closing)
        return;
    struct incoming *i = calloc(1, sizeof *i);
    uv_tcp_t *tcp = raft_malloc(sizeof *tcp);
    if (!i || !tcp) {
        free(i);
        raft_free(tcp);
        /* libuv holds the connection and stops listening until uv_accept
         * takes it: left so, this node took no Raft connection again
         * (as the forwarding channel did, cluster/channel.c). Taken later. */
        log_warn("cluster: raft: cannot take a connection now (out of memory): tried again in "
                 "%d ms",
                 ACCEPT_RETRY_MS);
        uv_timer_start(&tr->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
        return;
    }
    uv_tcp_init(tr->loop, tcp);
    i->tr = tr;
    i->tcp = tcp;
    i->want = HS_FIXED;
    tcp->data = i;
    tr->open++;
    i->next = tr->in;
    if (tr->in)
        tr->in->pprev = &i->next;
    i->pprev = &tr->in;
    tr->in = i;
    if (uv_accept(server, (uv_stream_t *)tcp) != 0 ||
        uv_read_start((uv_stream_t *)tcp, in_alloc, in_read) != 0)
        in_drop(i);
}

/* ---- the transport interface ---- */

static int tr_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct tr *tr = t->impl;
    char host[HOST_MAX];
    uint16_t port;
    if (strlen(address) >= sizeof tr->address || split_address(address, host, &port) != 0 ||
        inet_pton(AF_INET, tr->bind_ip[0] ? tr->bind_ip : host, &tr->self.sin_addr) != 1) {
        snprintf(t->errmsg, sizeof t->errmsg,
                 "bad raft address %.160s (IPv4:port, or name:port with a bind IP)", address);
        return RAFT_INVALID;
    }
    tr->self.sin_family = AF_INET;
    tr->self.sin_port = htons(port);
    tr->id = id;
    snprintf(tr->address, sizeof tr->address, "%s", address);
    return 0;
}

static int tr_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct tr *tr = t->impl;
    tr->accept_cb = cb;
    uv_tcp_init(tr->loop, &tr->listener);
    tr->listener.data = tr;
    tr->listening = true;
    tr->open++;
    uv_timer_init(tr->loop, &tr->accept_retry);
    tr->accept_retry.data = tr;
    tr->open++;
    int rc = uv_tcp_bind(&tr->listener, (const struct sockaddr *)&tr->self, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&tr->listener, 64, on_connection);
    if (rc != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "listen on %.200s: %s", tr->address, uv_strerror(rc));
        return RAFT_IOERR;
    }
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    struct tr *tr = h->data;
    tr->open--;
    maybe_closed(tr);
}

static void tr_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct tr *tr = t->impl;
    tr->closing = true;
    tr->close_cb = cb;
    if (tr->listening) {
        tr->listening = false;
        uv_close((uv_handle_t *)&tr->listener, listener_closed);
        uv_close((uv_handle_t *)&tr->accept_retry, listener_closed);
    }
    for (struct outgoing *o = tr->out; o; o = o->next)
        out_fail(o);
    for (struct incoming *i = tr->in; i; i = i->next)
        in_drop(i);
    maybe_closed(tr);
}

int raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, const char *cluster_name,
                        const char *cluster_secret, const char *bind_ip)
{
    memset(t, 0, sizeof *t);
    struct tr *tr = calloc(1, sizeof *tr);
    if (!tr)
        return RAFT_NOMEM;
    tr->loop = loop;
    tr->t = t;
    tr->name = strdup(cluster_name ? cluster_name : "");
    tr->secret = strdup(cluster_secret ? cluster_secret : "");
    snprintf(tr->bind_ip, sizeof tr->bind_ip, "%s", bind_ip ? bind_ip : "");
    if (!tr->name || !tr->secret || strlen(tr->name) > 255) {
        free(tr->name);
        free(tr->secret);
        free(tr);
        return RAFT_NOMEM;
    }
    t->impl = tr;
    t->init = tr_init;
    t->listen = tr_listen;
    t->connect = tr_connect;
    t->close = tr_close;
    return 0;
}

void raft_transport_close(struct raft_uv_transport *t)
{
    struct tr *tr = t->impl;
    if (!tr)
        return;
    free(tr->name);
    free(tr->secret);
    free(tr);
    t->impl = NULL;
}

uint64_t raft_transport_refused(struct raft_uv_transport *t)
{
    struct tr *tr = t->impl;
    return tr ? __atomic_load_n(&tr->refused, __ATOMIC_RELAXED) : 0;
}
