/*
 * ws.c - the WebSocket server engine (see ws.h).
 *
 * Two phases. Upgrade: http_parser reads the request incrementally; its
 * callbacks collect the URL and the few headers that matter into bounded
 * buffers; when the headers are complete the request is judged and either
 * the 101 response or an HTTP error is written. Open: wslay runs in its
 * event mode with message buffering off, so the payload of binary frames
 * streams into `plain` as it arrives (no whole-message copies), and its
 * send callback appends frames to `out`. Bytes left over after the request
 * are the first frames.
 */
#include "ws.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_FIELD_MAX 64
#define WS_VALUE_MAX 1024

/* A growable byte queue: data[off, len) is pending. */
struct ws_buf {
    uint8_t *data;
    size_t off, len, cap;
};

enum ws_hdr {
    WS_H_NONE,
    WS_H_UPGRADE,
    WS_H_CONNECTION,
    WS_H_KEY,
    WS_H_VERSION,
    WS_H_PROTOCOL,
    WS_H_ORIGIN,
    WS_H_COUNT
};

struct ws_conn {
    const struct ws_config *cfg;
    enum { WS_UPGRADE, WS_OPEN, WS_FAILED } state;
    http_parser parser;
    size_t request_len;
    bool request_done, too_long;
    char url[WS_VALUE_MAX + 1];
    size_t url_len;
    char field[WS_FIELD_MAX + 1];
    size_t field_len;
    bool in_value;
    enum ws_hdr cur;
    char hdr[WS_H_COUNT][WS_VALUE_MAX + 1];
    size_t hdr_len[WS_H_COUNT];
    const char *protocol;

    wslay_event_context_ptr ws;
    bool text_frame;
    uint8_t opcode;      /* of the frame being received */
    struct ws_buf in;    /* frame bytes not yet taken by wslay */
    struct ws_buf plain; /* MQTT bytes for ws_conn_read */
    struct ws_buf out;   /* bytes for the wire */
    char error[128];
};

/* ---- byte queues ---- */

static size_t ws_buf_pending(const struct ws_buf *b)
{
    return b->len - b->off;
}

static int ws_buf_put(struct ws_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off) { /* compact first */
            memmove(b->data, b->data + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t nc = b->cap ? b->cap : 1024;
            while (nc < b->len + n)
                nc *= 2;
            uint8_t *nd = realloc(b->data, nc);
            if (!nd)
                return -ENOMEM;
            b->data = nd;
            b->cap = nc;
        }
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static size_t ws_buf_take(struct ws_buf *b, void *p, size_t cap)
{
    size_t n = ws_buf_pending(b);
    if (n > cap)
        n = cap;
    if (n)
        memcpy(p, b->data + b->off, n);
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
    return n;
}

/* ---- the opening handshake ---- */

int ws_accept_key(const char *key, size_t len, char *out, size_t outlen)
{
    unsigned char md[SHA_DIGEST_LENGTH];
    if (outlen < 29 || len > 128)
        return -EINVAL;
    char buf[128 + sizeof(WS_GUID)];
    memcpy(buf, key, len);
    memcpy(buf + len, WS_GUID, sizeof(WS_GUID) - 1);
    if (!EVP_Digest(buf, len + sizeof(WS_GUID) - 1, md, NULL, EVP_sha1(), NULL))
        return -EINVAL;
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
    return 0;
}

static enum ws_hdr ws_hdr_of(const char *f, size_t n)
{
    static const char *const names[WS_H_COUNT] = {
        [WS_H_UPGRADE] = "upgrade",
        [WS_H_CONNECTION] = "connection",
        [WS_H_KEY] = "sec-websocket-key",
        [WS_H_VERSION] = "sec-websocket-version",
        [WS_H_PROTOCOL] = "sec-websocket-protocol",
        [WS_H_ORIGIN] = "origin",
    };
    for (int i = 1; i < WS_H_COUNT; i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], f, n) == 0)
            return (enum ws_hdr)i;
    return WS_H_NONE;
}

static int ws_on_url(http_parser *p, const char *at, size_t n)
{
    struct ws_conn *c = p->data;
    if (c->url_len + n > WS_VALUE_MAX) {
        c->too_long = true;
        return 1;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = '\0';
    return 0;
}

static int ws_on_field(http_parser *p, const char *at, size_t n)
{
    struct ws_conn *c = p->data;
    if (c->in_value) { /* a new header begins */
        c->in_value = false;
        c->field_len = 0;
    }
    if (c->field_len + n > WS_FIELD_MAX) {
        /* Longer than any header we care about: remember it as none. */
        c->field_len = WS_FIELD_MAX + 1;
        return 0;
    }
    memcpy(c->field + c->field_len, at, n);
    c->field_len += n;
    return 0;
}

static int ws_on_value(http_parser *p, const char *at, size_t n)
{
    struct ws_conn *c = p->data;
    if (!c->in_value) {
        c->in_value = true;
        c->cur = c->field_len <= WS_FIELD_MAX ? ws_hdr_of(c->field, c->field_len) : WS_H_NONE;
        /* A repeated list header continues the list [RFC 7230 3.2.2]. */
        if (c->cur != WS_H_NONE && c->hdr_len[c->cur] > 0) {
            if (c->hdr_len[c->cur] + 1 > WS_VALUE_MAX) {
                c->too_long = true;
                return 1;
            }
            c->hdr[c->cur][c->hdr_len[c->cur]++] = ',';
        }
    }
    if (c->cur == WS_H_NONE)
        return 0;
    size_t *l = &c->hdr_len[c->cur];
    if (*l + n > WS_VALUE_MAX) {
        c->too_long = true;
        return 1;
    }
    memcpy(c->hdr[c->cur] + *l, at, n);
    *l += n;
    c->hdr[c->cur][*l] = '\0';
    return 0;
}

static int ws_on_complete(http_parser *p)
{
    struct ws_conn *c = p->data;
    c->request_done = true;
    return 0;
}

/* Is tok one of the comma-separated tokens of list? */
static bool ws_list_has(const char *list, const char *tok, bool icase)
{
    size_t tl = strlen(tok);
    const char *s = list;
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        const char *e = s;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - s) == tl && (icase ? strncasecmp(s, tok, tl) : strncmp(s, tok, tl)) == 0)
            return true;
        s = e;
    }
    return false;
}

static void ws_respond_error(struct ws_conn *c, const char *status, const char *extra,
                             const char *why)
{
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %s\r\nConnection: close\r\n%sContent-Length: 0\r\n\r\n", status,
                     extra ? extra : "");
    ws_buf_put(&c->out, resp, (size_t)n);
    snprintf(c->error, sizeof(c->error), "%s", why);
    c->state = WS_FAILED;
}

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *user)
{
    (void)flags;
    struct ws_conn *c = user;
    size_t n = ws_buf_take(&c->in, buf, len);
    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return (ssize_t)n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user)
{
    (void)flags;
    struct ws_conn *c = user;
    if (ws_buf_put(&c->out, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_frame_start_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
    struct ws_conn *c = user;
    c->opcode = arg->opcode;
    /* [MQTT-3.1.1 6.0.0-1, MQTT-5.0 6.0.0-1] MQTT travels in binary frames; any other data frame
     * closes the connection. */
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        c->text_frame = true;
        snprintf(c->error, sizeof(c->error), "text frame");
        wslay_event_queue_close(ctx, WSLAY_CODE_UNSUPPORTED_DATA, NULL, 0);
        wslay_event_shutdown_read(ctx);
    }
}

static void ws_frame_chunk_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
    struct ws_conn *c = user;
    (void)ctx;
    /* Only data frames carry MQTT bytes: binary ones and their
     * continuations; control frames (ping payloads) are wslay's. */
    bool data = c->opcode == WSLAY_BINARY_FRAME || c->opcode == WSLAY_CONTINUATION_FRAME;
    if (data && !c->text_frame && ws_buf_put(&c->plain, arg->data, arg->data_length) < 0) {
        snprintf(c->error, sizeof(c->error), "out of memory");
        wslay_event_queue_close(ctx, WSLAY_CODE_INTERNAL_SERVER_ERROR, NULL, 0);
        wslay_event_shutdown_read(ctx);
    }
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user)
{
    (void)ctx;
    (void)arg;
    (void)user; /* pings and closes are answered by wslay itself */
}

/* Judge the complete request; on success write the 101 and open. */
static int ws_accept(struct ws_conn *c)
{
    const char *path = c->cfg->path ? c->cfg->path : "/mqtt";
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (c->parser.method != HTTP_GET) {
        ws_respond_error(c, "405 Method Not Allowed", "Allow: GET\r\n", "not a GET request");
        return WS_ERR_HANDSHAKE;
    }
    if (c->parser.http_major != 1 || c->parser.http_minor < 1) {
        ws_respond_error(c, "505 HTTP Version Not Supported", NULL, "not HTTP/1.1");
        return WS_ERR_HANDSHAKE;
    }
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)) ||
        u.field_data[UF_PATH].len != strlen(path) ||
        memcmp(c->url + u.field_data[UF_PATH].off, path, strlen(path)) != 0) {
        ws_respond_error(c, "404 Not Found", NULL, "wrong path");
        return WS_ERR_HANDSHAKE;
    }
    if (!c->parser.upgrade || !ws_list_has(c->hdr[WS_H_UPGRADE], "websocket", true) ||
        !ws_list_has(c->hdr[WS_H_CONNECTION], "upgrade", true)) {
        ws_respond_error(c, "426 Upgrade Required", "Upgrade: websocket\r\n",
                         "not a WebSocket upgrade");
        return WS_ERR_HANDSHAKE;
    }
    if (strcmp(c->hdr[WS_H_VERSION], "13") != 0) {
        ws_respond_error(c, "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n",
                         "unsupported WebSocket version");
        return WS_ERR_HANDSHAKE;
    }
    /* The key: base64 of 16 bytes (RFC 6455 section 4.1, item 7). */
    unsigned char raw[24];
    if (c->hdr_len[WS_H_KEY] != 24 || c->hdr[WS_H_KEY][22] != '=' || c->hdr[WS_H_KEY][23] != '=' ||
        EVP_DecodeBlock(raw, (const unsigned char *)c->hdr[WS_H_KEY], 24) != 18) {
        ws_respond_error(c, "400 Bad Request", NULL, "bad Sec-WebSocket-Key");
        return WS_ERR_HANDSHAKE;
    }
    if (c->cfg->n_origins && c->hdr_len[WS_H_ORIGIN]) {
        bool ok = false;
        for (size_t i = 0; i < c->cfg->n_origins && !ok; i++)
            ok = strcasecmp(c->cfg->origins[i], c->hdr[WS_H_ORIGIN]) == 0;
        if (!ok) {
            ws_respond_error(c, "403 Forbidden", NULL, "origin not allowed");
            return WS_ERR_HANDSHAKE;
        }
    }
    /* [MQTT-3.1.1 6.0.0-3, MQTT-5.0 6.0.0-3] the client offers "mqtt"; "mqttv3.1" is the name
     * older clients use. No header at all is accepted (non-browser clients
     * that omit it); a list without either is refused. */
    c->protocol = "";
    if (c->hdr_len[WS_H_PROTOCOL]) {
        if (ws_list_has(c->hdr[WS_H_PROTOCOL], "mqtt", false))
            c->protocol = "mqtt";
        else if (ws_list_has(c->hdr[WS_H_PROTOCOL], "mqttv3.1", false))
            c->protocol = "mqttv3.1";
        else {
            ws_respond_error(c, "400 Bad Request", NULL, "no mqtt subprotocol offered");
            return WS_ERR_HANDSHAKE;
        }
    }

    struct wslay_event_callbacks cb = {
        .recv_callback = ws_recv_cb,
        .send_callback = ws_send_cb,
        .on_frame_recv_start_callback = ws_frame_start_cb,
        .on_frame_recv_chunk_callback = ws_frame_chunk_cb,
        .on_msg_recv_callback = ws_msg_cb,
    };
    if (wslay_event_context_server_init(&c->ws, &cb, c) != 0)
        return -ENOMEM;
    wslay_event_config_set_no_buffering(c->ws, 1);

    char accept[32], resp[256];
    ws_accept_key(c->hdr[WS_H_KEY], 24, accept, sizeof(accept));
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, *c->protocol ? "Sec-WebSocket-Protocol: " : "", c->protocol,
                     *c->protocol ? "\r\n" : "");
    if (ws_buf_put(&c->out, resp, (size_t)n) < 0)
        return -ENOMEM;
    c->state = WS_OPEN;
    return 0;
}

static int ws_feed_upgrade(struct ws_conn *c, const char *data, size_t len, size_t *used)
{
    static const http_parser_settings settings = {
        .on_url = ws_on_url,
        .on_header_field = ws_on_field,
        .on_header_value = ws_on_value,
        .on_message_complete = ws_on_complete,
    };
    size_t room = WS_REQUEST_MAX - c->request_len;
    size_t n = http_parser_execute(&c->parser, &settings, data, len < room ? len : room);
    c->request_len += n;
    *used = n;
    if (c->too_long) {
        ws_respond_error(c, "431 Request Header Fields Too Large", NULL, "header too long");
        return WS_ERR_HANDSHAKE;
    }
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
        char why[96];
        snprintf(why, sizeof(why), "bad HTTP request: %s",
                 http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
        ws_respond_error(c, "400 Bad Request", NULL, why);
        return WS_ERR_HANDSHAKE;
    }
    if (c->request_done || c->parser.upgrade)
        return ws_accept(c);
    if (c->request_len >= WS_REQUEST_MAX) {
        ws_respond_error(c, "431 Request Header Fields Too Large", NULL, "request too long");
        return WS_ERR_HANDSHAKE;
    }
    return 0;
}

/* ---- the open connection ---- */

struct ws_conn *ws_conn_new(const struct ws_config *cfg)
{
    struct ws_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->cfg = cfg;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    return c;
}

void ws_conn_free(struct ws_conn *c)
{
    if (!c)
        return;
    if (c->ws)
        wslay_event_context_free(c->ws);
    free(c->in.data);
    free(c->plain.data);
    free(c->out.data);
    free(c);
}

static int ws_pump(struct ws_conn *c)
{
    int r = wslay_event_recv(c->ws);
    int s = wslay_event_send(c->ws);
    if (r == WSLAY_ERR_NOMEM || s == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r < 0 || s < 0 || c->text_frame) {
        if (!c->error[0])
            snprintf(c->error, sizeof(c->error), "WebSocket protocol error");
        return WS_ERR_PROTO;
    }
    /* wslay closes reading after a protocol error (and queues a close) or
     * after the peer's close frame. */
    if (!wslay_event_get_read_enabled(c->ws) && !wslay_event_get_close_received(c->ws)) {
        if (!c->error[0])
            snprintf(c->error, sizeof(c->error), "WebSocket protocol error");
        return WS_ERR_PROTO;
    }
    return 0;
}

int ws_conn_feed(struct ws_conn *c, const void *data, size_t len)
{
    if (c->state == WS_FAILED)
        return WS_ERR_HANDSHAKE;
    if (c->state == WS_UPGRADE) {
        size_t used = 0;
        int r = ws_feed_upgrade(c, data, len, &used);
        if (r < 0 || c->state != WS_OPEN)
            return r;
        data = (const uint8_t *)data + used;
        len -= used;
    }
    if (ws_buf_pending(&c->in) + ws_buf_pending(&c->plain) + len > WS_FEED_MAX)
        return WS_ERR_FULL;
    if (ws_buf_put(&c->in, data, len) < 0)
        return -ENOMEM;
    return ws_pump(c);
}

long ws_conn_read(struct ws_conn *c, void *buf, size_t cap)
{
    size_t n = ws_buf_take(&c->plain, buf, cap);
    if (n > 0)
        return (long)n;
    if (c->state == WS_OPEN && !wslay_event_get_read_enabled(c->ws))
        return WS_ERR_CLOSED;
    return c->state == WS_FAILED ? WS_ERR_CLOSED : 0;
}

int ws_conn_write(struct ws_conn *c, const void *data, size_t len)
{
    if (c->state != WS_OPEN)
        return c->state == WS_FAILED ? WS_ERR_CLOSED : -EAGAIN;
    if (wslay_event_get_close_sent(c->ws))
        return WS_ERR_CLOSED;
    struct wslay_event_msg msg = {.opcode = WSLAY_BINARY_FRAME, .msg = data, .msg_length = len};
    int r = wslay_event_queue_msg(c->ws, &msg);
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r != 0)
        return WS_ERR_CLOSED;
    return wslay_event_send(c->ws) == WSLAY_ERR_NOMEM ? -ENOMEM : 0;
}

void ws_conn_close(struct ws_conn *c, unsigned status)
{
    if (c->state != WS_OPEN)
        return;
    wslay_event_queue_close(c->ws, (uint16_t)status, NULL, 0);
    wslay_event_send(c->ws);
}

size_t ws_conn_output_len(const struct ws_conn *c)
{
    return ws_buf_pending(&c->out);
}

size_t ws_conn_take_output(struct ws_conn *c, void *buf, size_t cap)
{
    return ws_buf_take(&c->out, buf, cap);
}

bool ws_conn_open(const struct ws_conn *c)
{
    return c->state == WS_OPEN;
}

bool ws_conn_finished(const struct ws_conn *c)
{
    if (c->state == WS_FAILED)
        return true;
    return c->state == WS_OPEN && wslay_event_get_close_sent(c->ws) &&
           (wslay_event_get_close_received(c->ws) || !wslay_event_get_read_enabled(c->ws));
}

const char *ws_conn_protocol(const struct ws_conn *c)
{
    return c->protocol ? c->protocol : "";
}

const char *ws_conn_error(const struct ws_conn *c)
{
    return c->error;
}
