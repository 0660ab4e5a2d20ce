/*
 * fuzz_frontdoor_chain.c - libFuzzer target for the stacked front door, in
 * the order node/conn_io.c stacks it on a `proxy_protocol ws` listener:
 * PROXY header, then the WebSocket engine, then MQTT framing and decoding of
 * what comes out.
 *
 * The first input byte chooses the piece size the bytes arrive in and
 * whether a valid PROXY header and upgrade request are fed first (so that
 * the fuzzer reaches the frames and the MQTT stream without finding them).
 * Each piece goes through the PROXY parser until it is done (its tail to the
 * WebSocket engine, as conn_io_xf_input does), the MQTT bytes are framed
 * with mqtt_frame and decoded with mqtt_decode packet by packet, keeping an
 * incomplete tail (as conn_io_input does), with the same bound on what is
 * held. Checks: nothing crashes, the held tail stays bounded, the engines
 * end in a defined state.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "proxy_proto.h"
#include "ws.h"
#include "fuzz_check.h"

#define CHAIN_MAX_PACKET 4096

static const char chain_prefix[] =
    "PROXY TCP4 198.51.100.9 127.0.0.1 40000 1883\r\n"
    "GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: mqtt\r\n\r\n";

struct chain {
    struct proxy_parser proxy;
    bool proxy_done;
    struct ws_conn *ws;
    uint8_t tail[CHAIN_MAX_PACKET + 8]; /* an incomplete MQTT packet */
    size_t tail_len;
    bool closed;
};

/* MQTT bytes: frame and decode whole packets, keep the incomplete tail. */
static void chain_mqtt(struct chain *c, const uint8_t *data, size_t len)
{
    while (len && !c->closed) {
        size_t take = sizeof(c->tail) - c->tail_len;
        if (take > len)
            take = len;
        memcpy(c->tail + c->tail_len, data, take);
        c->tail_len += take;
        data += take;
        len -= take;
        size_t off = 0;
        while (off < c->tail_len) {
            uint32_t hdr = 0;
            long n = mqtt_frame(c->tail + off, c->tail_len - off, CHAIN_MAX_PACKET, &hdr);
            if (n == 0)
                break;
            if (n < 0) {
                c->closed = true; /* the connection would be closed */
                return;
            }
            struct mqtt_packet p;
            (void)mqtt_decode(MQTT_V5, c->tail + off, (size_t)n, &p);
            off += (size_t)n;
        }
        memmove(c->tail, c->tail + off, c->tail_len - off);
        c->tail_len -= off;
        FUZZ_CHECK(c->tail_len <= CHAIN_MAX_PACKET + 5);
    }
}

static void chain_feed(struct chain *c, const uint8_t *data, size_t len)
{
    if (c->closed)
        return;
    if (!c->proxy_done) {
        struct proxy_header h;
        size_t used = 0;
        int st = proxy_parser_feed(&c->proxy, data, len, &used, &h);
        if (st < 0) {
            c->closed = true;
            return;
        }
        if (st == PROXY_NEED_MORE) {
            FUZZ_CHECK(c->proxy.len <= PROXY_HEADER_MAX);
            return;
        }
        c->proxy_done = true;
        FUZZ_CHECK(used <= len);
        data += used;
        len -= used;
    }
    int e = ws_conn_feed(c->ws, data, len);
    uint8_t plain[1024], out[4096];
    long m;
    while ((m = ws_conn_read(c->ws, plain, sizeof(plain))) > 0)
        chain_mqtt(c, plain, (size_t)m);
    while (ws_conn_take_output(c->ws, out, sizeof(out)) > 0)
        ;
    if (e < 0 || m < 0)
        c->closed = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool prefix = data[0] & 1;
    size_t step = (size_t)(data[0] >> 1) + 1;
    data++;
    size--;
    static const struct ws_config cfg = {.path = "/mqtt"};
    struct chain *c = calloc(1, sizeof(*c));
    if (!c)
        return 0;
    proxy_parser_init(&c->proxy);
    c->ws = ws_conn_new(&cfg);
    if (!c->ws) {
        free(c);
        return 0;
    }
    if (prefix) {
        chain_feed(c, (const uint8_t *)chain_prefix, sizeof(chain_prefix) - 1);
        FUZZ_CHECK(c->proxy_done && ws_conn_open(c->ws) && !c->closed);
    }
    /* a copy, so that reads past a piece are caught */
    for (size_t off = 0; off < size && !c->closed; off += step) {
        size_t n = size - off < step ? size - off : step;
        uint8_t *piece = malloc(n);
        if (!piece)
            break;
        memcpy(piece, data + off, n);
        chain_feed(c, piece, n);
        free(piece);
    }
    ws_conn_free(c->ws);
    free(c);
    return 0;
}
