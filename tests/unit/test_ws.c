/*
 * test_ws.c - the WebSocket engine (node/ws.h) against a client written
 * here: requests as browsers and MQTT clients send them, masked frames
 * built by hand, the server's frames decoded by hand (RFC 6455 5.2).
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

static const struct ws_config cfg_default = {0};

#define REQ_HEAD                                                                                   \
    "GET /mqtt HTTP/1.1\r\nHost: localhost:8083\r\nUpgrade: websocket\r\n"                         \
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                       \
    "Sec-WebSocket-Version: 13\r\n"
#define REQ REQ_HEAD "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
#define RESP                                                                                       \
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"            \
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"

/* A masked client frame. */
static size_t frame(uint8_t *out, bool fin, int opcode, const void *payload, size_t n, bool mask)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    out[h++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    uint8_t m = mask ? 0x80 : 0;
    if (n < 126) {
        out[h++] = (uint8_t)(m | n);
    } else if (n < 65536) {
        out[h++] = m | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    if (mask) {
        memcpy(out + h, key, 4);
        h += 4;
    }
    for (size_t i = 0; i < n; i++)
        out[h + i] = ((const uint8_t *)payload)[i] ^ (mask ? key[i % 4] : 0);
    return h + n;
}

/* Decode one server frame at p: returns its total length, 0 if incomplete. */
static size_t unframe(const uint8_t *p, size_t len, int *opcode, bool *fin, const uint8_t **payload,
                      size_t *n)
{
    if (len < 2)
        return 0;
    CU_ASSERT_EQUAL(p[1] & 0x80, 0); /* servers never mask */
    *fin = p[0] & 0x80;
    *opcode = p[0] & 0x0f;
    size_t h = 2, l = p[1] & 0x7f;
    if (l == 126) {
        l = (size_t)p[2] << 8 | p[3];
        h = 4;
    } else if (l == 127) {
        l = 0;
        for (int i = 0; i < 8; i++)
            l = l << 8 | p[2 + i];
        h = 10;
    }
    if (len < h + l)
        return 0;
    *payload = p + h;
    *n = l;
    return h + l;
}

static size_t take_all(struct ws_conn *c, uint8_t *buf, size_t cap)
{
    size_t n = 0, m;
    while ((m = ws_conn_take_output(c, buf + n, cap - n)) > 0)
        n += m;
    return n;
}

static struct ws_conn *open_conn(const struct ws_config *cfg)
{
    struct ws_conn *c = ws_conn_new(cfg);
    CU_ASSERT_EQUAL(ws_conn_feed(c, REQ, strlen(REQ)), 0);
    uint8_t out[512];
    size_t n = take_all(c, out, sizeof(out));
    CU_ASSERT_EQUAL(n, strlen(RESP));
    CU_ASSERT_EQUAL(memcmp(out, RESP, strlen(RESP)), 0);
    CU_ASSERT_TRUE(ws_conn_open(c));
    return c;
}

static void test_accept_key(void)
{
    /* RFC 6455 section 1.3. */
    char out[32];
    CU_ASSERT_EQUAL(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out, sizeof(out)), 0);
    CU_ASSERT_STRING_EQUAL(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CU_ASSERT_EQUAL(ws_accept_key("x", 1, out, 10), -EINVAL);
}

static void test_upgrade_byte_by_byte(void)
{
    struct ws_conn *c = ws_conn_new(&cfg_default);
    const char *req = REQ;
    for (size_t i = 0; i < strlen(req); i++) {
        CU_ASSERT_FALSE(ws_conn_open(c));
        CU_ASSERT_EQUAL(ws_conn_feed(c, req + i, 1), 0);
    }
    CU_ASSERT_TRUE(ws_conn_open(c));
    CU_ASSERT_STRING_EQUAL(ws_conn_protocol(c), "mqtt");
    uint8_t out[512];
    size_t n = take_all(c, out, sizeof(out));
    CU_ASSERT_EQUAL(n, strlen(RESP));
    CU_ASSERT_EQUAL(memcmp(out, RESP, n), 0);
    ws_conn_free(c);
}

static void expect_protocol(const char *header, const char *want)
{
    char req[1024];
    snprintf(req, sizeof(req), REQ_HEAD "%s\r\n", header);
    struct ws_conn *c = ws_conn_new(&cfg_default);
    CU_ASSERT_EQUAL(ws_conn_feed(c, req, strlen(req)), 0);
    CU_ASSERT_STRING_EQUAL(ws_conn_protocol(c), want);
    uint8_t out[512];
    size_t n = take_all(c, out, sizeof(out));
    out[n] = 0;
    char line[64];
    snprintf(line, sizeof(line), "Sec-WebSocket-Protocol: %s\r\n", want);
    if (*want) {
        CU_ASSERT_PTR_NOT_NULL(strstr((char *)out, line));
    } else {
        CU_ASSERT_PTR_NULL(strstr((char *)out, "Sec-WebSocket-Protocol"));
    }
    ws_conn_free(c);
}

static void test_subprotocols(void)
{
    expect_protocol("Sec-WebSocket-Protocol: mqttv3.1\r\n", "mqttv3.1");
    expect_protocol("Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n", "mqtt");
    expect_protocol("Sec-WebSocket-Protocol: foo\r\nSec-WebSocket-Protocol: mqtt\r\n", "mqtt");
    expect_protocol("", ""); /* no header: accepted without a protocol */
}

static void expect_refused(const struct ws_config *cfg, const char *req, const char *status,
                           const char *why)
{
    struct ws_conn *c = ws_conn_new(cfg);
    CU_ASSERT_EQUAL(ws_conn_feed(c, req, strlen(req)), WS_ERR_HANDSHAKE);
    CU_ASSERT_FALSE(ws_conn_open(c));
    CU_ASSERT_TRUE(ws_conn_finished(c));
    char out[512];
    size_t n = take_all(c, (uint8_t *)out, sizeof(out) - 1);
    out[n] = 0;
    char want[128];
    snprintf(want, sizeof(want), "HTTP/1.1 %s\r\n", status);
    if (strncmp(out, want, strlen(want)) != 0 || strcmp(ws_conn_error(c), why) != 0)
        fprintf(stderr, "got %s / %s for:\n%s\n", out, ws_conn_error(c), req);
    CU_ASSERT_EQUAL(strncmp(out, want, strlen(want)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Connection: close\r\n"));
    CU_ASSERT_STRING_EQUAL(ws_conn_error(c), why);
    CU_ASSERT_EQUAL(ws_conn_feed(c, "x", 1), WS_ERR_HANDSHAKE);
    CU_ASSERT_EQUAL(ws_conn_write(c, "x", 1), WS_ERR_CLOSED);
    ws_conn_free(c);
}

static void test_upgrade_refused(void)
{
    const struct ws_config *d = &cfg_default;
    expect_refused(d, "GET /other HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                   "404 Not Found", "wrong path");
    expect_refused(d, "GET /mqttx HTTP/1.1\r\n\r\n", "404 Not Found", "wrong path");
    expect_refused(d, "POST /mqtt HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed",
                   "not a GET request");
    expect_refused(d, "GET /mqtt HTTP/1.0\r\n\r\n", "505 HTTP Version Not Supported",
                   "not HTTP/1.1");
    expect_refused(d, "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", "426 Upgrade Required",
                   "not a WebSocket upgrade");
    expect_refused(
        d,
        "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        "426 Upgrade Required", "unsupported WebSocket version");
    expect_refused(d,
                   "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: short==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                   "400 Bad Request", "bad Sec-WebSocket-Key");
    expect_refused(d, REQ_HEAD "Sec-WebSocket-Protocol: foo, mqtt5\r\n\r\n", "400 Bad Request",
                   "no mqtt subprotocol offered");
    expect_refused(d, "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", "400 Bad Request",
                   "bad HTTP request: invalid HTTP method");
    static char huge[WS_REQUEST_MAX + 64];
    snprintf(huge, sizeof(huge), "GET /mqtt HTTP/1.1\r\nSec-WebSocket-Protocol: ");
    memset(huge + strlen(huge), 'a', 2000);
    expect_refused(d, huge, "431 Request Header Fields Too Large", "header too long");
    /* Many short headers: the request as a whole is bounded too. */
    size_t off = (size_t)snprintf(huge, sizeof(huge), "GET /mqtt HTTP/1.1\r\n");
    while (off + 8 < sizeof(huge) - 1)
        off += (size_t)snprintf(huge + off, sizeof(huge) - off, "A: b\r\n");
    expect_refused(d, huge, "431 Request Header Fields Too Large", "request too long");
}

static void test_origin_check(void)
{
    static const char *const allowed[] = {"https://app.example.com", "http://localhost:3000"};
    struct ws_config cfg = {.origins = allowed, .n_origins = 2};
    expect_refused(&cfg, REQ_HEAD "Origin: https://evil.example\r\n\r\n", "403 Forbidden",
                   "origin not allowed");
    const char *ok[] = {REQ_HEAD "Origin: https://app.example.com\r\n\r\n",
                        REQ_HEAD "Origin: http://localhost:3000\r\n\r\n", REQ_HEAD "\r\n"};
    for (int i = 0; i < 3; i++) {
        struct ws_conn *c = ws_conn_new(&cfg);
        CU_ASSERT_EQUAL(ws_conn_feed(c, ok[i], strlen(ok[i])), 0);
        CU_ASSERT_TRUE(ws_conn_open(c));
        ws_conn_free(c);
    }
}

/* Frames that arrive with the request are not lost. */
static void test_frames_with_request(void)
{
    uint8_t buf[512];
    size_t n = strlen(REQ);
    memcpy(buf, REQ, n);
    n += frame(buf + n, true, 2, "\xc0\x00", 2, true); /* PINGREQ */
    struct ws_conn *c = ws_conn_new(&cfg_default);
    CU_ASSERT_EQUAL(ws_conn_feed(c, buf, n), 0);
    uint8_t got[16];
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), 2);
    CU_ASSERT_EQUAL(memcmp(got, "\xc0\x00", 2), 0);
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), 0);
    ws_conn_free(c);
}

/* [MQTT-3.1.1 6.0.0-2, MQTT-5.0 6.0.0-2] packets split across frames, several in one frame;
 * fragments (continuation frames); fed in every piece size. */
static void test_mqtt_stream_over_frames(void)
{
    static const uint8_t connect[] = "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
    uint8_t stream[200], wire[400];
    size_t sl = 0, wl = 0;
    memcpy(stream, connect, 14);
    memcpy(stream + 14, "\xc0\x00\xc0\x00", 4);
    sl = 18;
    wl += frame(wire + wl, true, 2, stream, 5, true);      /* CONNECT, first 5 bytes */
    wl += frame(wire + wl, false, 2, stream + 5, 4, true); /* a fragmented message: */
    wl += frame(wire + wl, true, 9, "ab", 2, true);        /* ping in between */
    wl += frame(wire + wl, false, 0, stream + 9, 3, true); /* continuation */
    wl += frame(wire + wl, true, 0, stream + 12, 6, true); /* rest + two PINGREQs */
    for (size_t piece = 1; piece <= wl; piece++) {
        struct ws_conn *c = open_conn(&cfg_default);
        uint8_t got[64];
        size_t gl = 0;
        for (size_t off = 0; off < wl; off += piece) {
            size_t k = piece < wl - off ? piece : wl - off;
            CU_ASSERT_EQUAL_FATAL(ws_conn_feed(c, wire + off, k), 0);
            long m;
            while ((m = ws_conn_read(c, got + gl, sizeof(got) - gl)) > 0)
                gl += (size_t)m;
        }
        if (gl != sl)
            fprintf(stderr, "piece %zu: got %zu bytes of %zu\n", piece, gl, sl);
        CU_ASSERT_EQUAL(gl, sl);
        CU_ASSERT_EQUAL(memcmp(got, stream, sl), 0);
        /* The ping was answered with its payload. */
        uint8_t out[64];
        size_t on = take_all(c, out, sizeof(out));
        int op = -1;
        bool fin = false;
        const uint8_t *pl = NULL;
        size_t pn = 0;
        CU_ASSERT_EQUAL(unframe(out, on, &op, &fin, &pl, &pn), on);
        CU_ASSERT_EQUAL(op, 10);
        CU_ASSERT_TRUE(fin);
        CU_ASSERT_EQUAL(pn, 2);
        CU_ASSERT_EQUAL(memcmp(pl, "ab", 2), 0);
        ws_conn_free(c);
    }
}

static void test_server_frames(void)
{
    struct ws_conn *c = open_conn(&cfg_default);
    static uint8_t big[70000], out[80000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    size_t sizes[] = {4, 125, 126, 65535, 65536, 70000};
    for (size_t k = 0; k < 6; k++) {
        CU_ASSERT_EQUAL(ws_conn_write(c, big, sizes[k]), 0);
        size_t n = take_all(c, out, sizeof(out));
        int op = -1;
        bool fin = false;
        const uint8_t *pl = NULL;
        size_t pn = 0;
        CU_ASSERT_EQUAL(unframe(out, n, &op, &fin, &pl, &pn), n);
        CU_ASSERT_EQUAL(op, 2); /* [MQTT-3.1.1 6.0.0-1, MQTT-5.0 6.0.0-1] binary */
        CU_ASSERT_TRUE(fin);
        CU_ASSERT_EQUAL(pn, sizes[k]);
        CU_ASSERT_EQUAL(memcmp(pl, big, pn), 0);
    }
    ws_conn_free(c);
    c = ws_conn_new(&cfg_default);
    CU_ASSERT_EQUAL(ws_conn_write(c, "x", 1), -EAGAIN);
    ws_conn_free(c);
}

static uint16_t close_code(struct ws_conn *c)
{
    uint8_t out[64];
    size_t n = take_all(c, out, sizeof(out));
    int op = -1;
    bool fin = false;
    const uint8_t *pl = NULL;
    size_t pn = 0;
    if (unframe(out, n, &op, &fin, &pl, &pn) != n || op != 8 || pn < 2)
        return 0;
    return (uint16_t)(pl[0] << 8 | pl[1]);
}

static void test_close_handshake(void)
{
    struct ws_conn *c = open_conn(&cfg_default);
    uint8_t f[16];
    size_t n = frame(f, true, 8, "\x03\xe8", 2, true);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), 0);
    CU_ASSERT_EQUAL(close_code(c), 1000); /* echoed */
    uint8_t got[8];
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), WS_ERR_CLOSED);
    CU_ASSERT_TRUE(ws_conn_finished(c));
    CU_ASSERT_EQUAL(ws_conn_write(c, "x", 1), WS_ERR_CLOSED);
    ws_conn_free(c);

    /* The server closes first. */
    c = open_conn(&cfg_default);
    ws_conn_close(c, 1008);
    CU_ASSERT_EQUAL(close_code(c), 1008);
    CU_ASSERT_FALSE(ws_conn_finished(c));
    n = frame(f, true, 8, "\x03\xf0", 2, true);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), 0);
    CU_ASSERT_TRUE(ws_conn_finished(c));
    ws_conn_free(c);
}

static void test_protocol_errors(void)
{
    uint8_t f[64], got[8];
    /* [MQTT-3.1.1 6.0.0-1, MQTT-5.0 6.0.0-1] a text frame closes the connection (1003). */
    struct ws_conn *c = open_conn(&cfg_default);
    size_t n = frame(f, true, 1, "hello", 5, true);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), WS_ERR_PROTO);
    CU_ASSERT_EQUAL(close_code(c), 1003);
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), WS_ERR_CLOSED);
    CU_ASSERT_STRING_EQUAL(ws_conn_error(c), "text frame");
    ws_conn_free(c);
    /* An unmasked client frame (RFC 6455 5.1): protocol error, 1002. */
    c = open_conn(&cfg_default);
    n = frame(f, true, 2, "\xc0\x00", 2, false);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), WS_ERR_PROTO);
    CU_ASSERT_EQUAL(close_code(c), 1002);
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), WS_ERR_CLOSED);
    ws_conn_free(c);
    /* Reserved opcode. */
    c = open_conn(&cfg_default);
    n = frame(f, true, 3, "x", 1, true);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), WS_ERR_PROTO);
    CU_ASSERT_EQUAL(close_code(c), 1002);
    ws_conn_free(c);
}

static void test_feed_bounded(void)
{
    struct ws_conn *c = open_conn(&cfg_default);
    static uint8_t payload[WS_FEED_MAX / 2], f[WS_FEED_MAX / 2 + 16];
    size_t n = frame(f, true, 2, payload, sizeof(payload), true);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), 0);
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), WS_ERR_FULL); /* nothing was read */
    static uint8_t got[WS_FEED_MAX];
    CU_ASSERT_EQUAL(ws_conn_read(c, got, sizeof(got)), (long)sizeof(payload));
    CU_ASSERT_EQUAL(ws_conn_feed(c, f, n), 0);
    ws_conn_free(c);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("ws", NULL, NULL);
    CU_add_test(s, "accept_key", test_accept_key);
    CU_add_test(s, "upgrade_byte_by_byte", test_upgrade_byte_by_byte);
    CU_add_test(s, "subprotocols", test_subprotocols);
    CU_add_test(s, "upgrade_refused", test_upgrade_refused);
    CU_add_test(s, "origin_check", test_origin_check);
    CU_add_test(s, "frames_with_request", test_frames_with_request);
    CU_add_test(s, "mqtt_stream_over_frames", test_mqtt_stream_over_frames);
    CU_add_test(s, "server_frames", test_server_frames);
    CU_add_test(s, "close_handshake", test_close_handshake);
    CU_add_test(s, "protocol_errors", test_protocol_errors);
    CU_add_test(s, "feed_bounded", test_feed_bounded);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
