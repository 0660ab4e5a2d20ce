/*
 * bench_xport.c - TLS and WebSocket client transports of the generator (see
 * bench_xport.h).
 */
#include "bench_xport.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *bx_ctx;

struct bench_xport {
    enum bench_transport t;
    SSL *ssl;
    BIO *in, *out; /* owned by ssl */
    bool ws_open;  /* the 101 arrived */
    bool upgrade_sent;
    struct buf held; /* MQTT bytes waiting for the handshake(s) */
    struct buf http; /* the server's answer to the upgrade, until its end */
    struct buf fr;   /* an incomplete WebSocket frame from the server */
    char host[64];
};

int bench_xport_init(enum bench_transport t)
{
    if (t != BX_TLS && t != BX_WSS)
        return 0;
    bx_ctx = SSL_CTX_new(TLS_client_method());
    if (!bx_ctx)
        return -1;
    SSL_CTX_set_min_proto_version(bx_ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(bx_ctx, SSL_VERIFY_NONE, NULL);
    return 0;
}

struct bench_xport *bench_xport_new(enum bench_transport t, const char *host)
{
    if (t == BX_TCP)
        return NULL;
    struct bench_xport *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->t = t;
    snprintf(x->host, sizeof(x->host), "%s", host);
    if (t == BX_TLS || t == BX_WSS) {
        x->ssl = SSL_new(bx_ctx);
        x->in = BIO_new(BIO_s_mem());
        x->out = BIO_new(BIO_s_mem());
        if (!x->ssl || !x->in || !x->out) {
            SSL_free(x->ssl);
            BIO_free(x->in);
            BIO_free(x->out);
            free(x);
            return NULL;
        }
        BIO_set_mem_eof_return(x->in, -1);
        SSL_set_bio(x->ssl, x->in, x->out);
        SSL_set_connect_state(x->ssl);
    }
    return x;
}

void bench_xport_free(struct bench_xport *x)
{
    if (!x)
        return;
    SSL_free(x->ssl);
    buf_free(&x->held);
    buf_free(&x->http);
    buf_free(&x->fr);
    free(x);
}

static bool bx_tls_ready(struct bench_xport *x)
{
    return !x->ssl || SSL_is_init_finished(x->ssl);
}

/* Bytes for the server below WebSocket: through TLS, or as they are. */
static int bx_send_raw(struct bench_xport *x, const void *p, size_t n, struct buf *wire)
{
    if (!x->ssl)
        return buf_append(wire, p, n) < 0 ? -1 : 0;
    if (n && SSL_write(x->ssl, p, (int)n) <= 0)
        return -1;
    return 0;
}

/* Move TLS output to wire. */
static int bx_drain(struct bench_xport *x, struct buf *wire)
{
    if (!x->ssl)
        return 0;
    char tmp[16384];
    int n;
    while ((n = BIO_read(x->out, tmp, sizeof(tmp))) > 0)
        if (buf_append(wire, tmp, (size_t)n) < 0)
            return -1;
    return 0;
}

/* One binary frame (FIN), masked with a zero key. */
static int bx_frame(struct bench_xport *x, const void *p, size_t n, struct buf *wire)
{
    uint8_t h[14];
    size_t hl = 2;
    h[0] = 0x82;
    if (n < 126) {
        h[1] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    memset(h + hl, 0, 4); /* the mask key */
    hl += 4;
    if (!x->ssl) {
        if (buf_append(wire, h, hl) < 0 || buf_append(wire, p, n) < 0)
            return -1;
        return 0;
    }
    /* one TLS record for header and payload */
    struct buf tmp = {0};
    int r = buf_append(&tmp, h, hl) < 0 || buf_append(&tmp, p, n) < 0
                ? -1
                : bx_send_raw(x, tmp.data, tmp.len, wire);
    buf_free(&tmp);
    return r;
}

static int bx_send_upgrade(struct bench_xport *x, struct buf *wire)
{
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /mqtt HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
                     x->host);
    return bx_send_raw(x, req, (size_t)n, wire);
}

/* Send what waited for the handshakes, once they are done. */
static int bx_release(struct bench_xport *x, struct buf *wire)
{
    if (!bx_tls_ready(x) || x->held.len == 0)
        return 0;
    bool ws = x->t == BX_WS || x->t == BX_WSS;
    if (ws && !x->ws_open)
        return 0;
    int r = ws ? bx_frame(x, x->held.data, x->held.len, wire)
               : bx_send_raw(x, x->held.data, x->held.len, wire);
    buf_free(&x->held);
    return r;
}

int bench_xport_wrap(struct bench_xport *x, const void *data, size_t len, struct buf *wire)
{
    bool ws = x->t == BX_WS || x->t == BX_WSS;
    if (x->ssl && !SSL_is_init_finished(x->ssl)) {
        int r = SSL_do_handshake(x->ssl); /* the ClientHello, the first time */
        if (r <= 0 && SSL_get_error(x->ssl, r) != SSL_ERROR_WANT_READ)
            return -1;
    }
    if (len && buf_append(&x->held, data, len) < 0)
        return -1;
    if (ws && !x->upgrade_sent && bx_tls_ready(x)) {
        if (bx_send_upgrade(x, wire) < 0)
            return -1;
        x->upgrade_sent = true;
    }
    if (bx_release(x, wire) < 0)
        return -1;
    return bx_drain(x, wire);
}

/* WebSocket bytes from the server: the 101 answer, then frames. */
static int bx_ws_input(struct bench_xport *x, const uint8_t *p, size_t n, struct buf *plain,
                       struct buf *wire)
{
    if (!x->ws_open) {
        if (buf_append(&x->http, p, n) < 0)
            return -1;
        uint8_t *end = memmem(x->http.data, x->http.len, "\r\n\r\n", 4);
        if (!end)
            return x->http.len > 8192 ? -1 : 0;
        if (x->http.len < 12 || memcmp(x->http.data, "HTTP/1.1 101", 12) != 0)
            return -1;
        size_t rest = x->http.len - (size_t)(end + 4 - x->http.data);
        if (rest && buf_append(&x->fr, end + 4, rest) < 0)
            return -1;
        x->ws_open = true;
        buf_free(&x->http);
        if (bx_release(x, wire) < 0)
            return -1;
    } else if (buf_append(&x->fr, p, n) < 0) {
        return -1;
    }
    size_t off = 0;
    while (x->fr.len - off >= 2) {
        const uint8_t *f = x->fr.data + off;
        size_t avail = x->fr.len - off, hl = 2;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            hl = 10;
        }
        if (f[1] & 0x80 || len > (1u << 30))
            return -1; /* a server never masks */
        if (avail - hl < len)
            break;
        unsigned op = f[0] & 0x0f;
        if (op == 0x8)
            return -1; /* closed */
        if (op == 0x9) {
            /* ping: a pong with the same payload */
            uint8_t h[2] = {0x8a, (uint8_t)(0x80 | (len & 0x7f))};
            uint8_t key[4] = {0};
            if (len < 126 && (bx_send_raw(x, h, 2, wire) < 0 || bx_send_raw(x, key, 4, wire) < 0 ||
                              bx_send_raw(x, f + hl, (size_t)len, wire) < 0))
                return -1;
        } else if (op <= 0x2 && buf_append(plain, f + hl, (size_t)len) < 0) {
            return -1;
        }
        off += hl + (size_t)len;
    }
    buf_consume(&x->fr, off);
    return 0;
}

int bench_xport_input(struct bench_xport *x, const void *data, size_t len, struct buf *plain,
                      struct buf *wire)
{
    bool ws = x->t == BX_WS || x->t == BX_WSS;
    if (!x->ssl) {
        if (bx_ws_input(x, data, len, plain, wire) < 0)
            return -1;
        return 0;
    }
    if (BIO_write(x->in, data, (int)len) != (int)len)
        return -1;
    if (!SSL_is_init_finished(x->ssl)) {
        int r = SSL_do_handshake(x->ssl);
        if (r <= 0 && SSL_get_error(x->ssl, r) != SSL_ERROR_WANT_READ)
            return -1;
        if (r == 1 && bench_xport_wrap(x, NULL, 0, wire) < 0)
            return -1;
    }
    uint8_t tmp[16384];
    int n;
    while ((n = SSL_read(x->ssl, tmp, sizeof(tmp))) > 0) {
        int r = ws ? bx_ws_input(x, tmp, (size_t)n, plain, wire)
                   : (buf_append(plain, tmp, (size_t)n) < 0 ? -1 : 0);
        if (r < 0)
            return -1;
    }
    if (n <= 0) {
        int e = SSL_get_error(x->ssl, n);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            return -1;
    }
    return bx_drain(x, wire);
}
