/*
 * fuzz_ws.c - libFuzzer target for the WebSocket engine: the HTTP upgrade
 * request and the frames after it.
 *
 * The first input byte chooses the mode and the piece size. Mode "upgrade"
 * feeds the input as the request; mode "frames" feeds a valid request
 * first, so that the rest of the input is parsed as client frames. The MQTT
 * bytes and the output are drained after every piece; the engine must end
 * in a defined state (open, refused with an HTTP response, or closed) and
 * never hold more than its bound.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"
#include "fuzz_check.h"

static const char fuzz_request[] =
    "GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: mqtt\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool frames = data[0] & 1;
    size_t step = (size_t)(data[0] >> 1) + 1;
    data++;
    size--;
    static const char *const origins[] = {"https://ok.example"};
    struct ws_config cfg = {.origins = origins, .n_origins = frames ? 0 : 1};
    struct ws_conn *c = ws_conn_new(&cfg);
    if (!c)
        return 0;
    uint8_t out[4096];
    if (frames) {
        FUZZ_CHECK(ws_conn_feed(c, fuzz_request, sizeof(fuzz_request) - 1) == 0);
        FUZZ_CHECK(ws_conn_open(c));
        while (ws_conn_take_output(c, out, sizeof(out)) > 0)
            ;
    }
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) {
        ws_conn_free(c);
        return 0;
    }
    if (size)
        memcpy(copy, data, size);
    for (size_t off = 0; off < size;) {
        size_t n = step < size - off ? step : size - off;
        int r = ws_conn_feed(c, copy + off, n);
        off += n;
        while (ws_conn_take_output(c, out, sizeof(out)) > 0)
            ;
        long m;
        while ((m = ws_conn_read(c, out, sizeof(out))) > 0)
            FUZZ_CHECK(ws_conn_open(c));
        if (r == WS_ERR_HANDSHAKE) {
            FUZZ_CHECK(!ws_conn_open(c) && ws_conn_finished(c) && ws_conn_error(c)[0]);
            break;
        }
        if (r < 0 || m < 0)
            break;
    }
    if (ws_conn_open(c)) {
        (void)ws_conn_write(c, "\x20\x02\x00\x00", 4);
        ws_conn_close(c, 1000);
    }
    free(copy);
    ws_conn_free(c);
    return 0;
}
