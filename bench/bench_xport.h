/*
 * bench_xport.h - the generator's client side of the TLS and WebSocket
 * transports (`starling-bench --transport tls|ws|wss`).
 *
 * Byte-in / bytes-out like the broker's engines (node/tls.h, node/ws.h),
 * but for the client: a TLS client over memory BIOs (no certificate check:
 * a benchmark on loopback), and a WebSocket client that sends the upgrade
 * request, then MQTT bytes as binary frames (masked with a zero key, which
 * RFC 6455 allows and costs no copy), and unframes what the server sends.
 * One per connection, used by its thread only.
 */
#ifndef STARLING_BENCH_XPORT_H
#define STARLING_BENCH_XPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

enum bench_transport { BX_TCP = 0, BX_TLS, BX_WS, BX_WSS };

struct bench_xport;

/* Process-wide set-up (the TLS client context); 0 or -1. */
int bench_xport_init(enum bench_transport t);

/* A connection's transport (NULL for plain TCP or out of memory). */
struct bench_xport *bench_xport_new(enum bench_transport t, const char *host);
void bench_xport_free(struct bench_xport *x);

/* Plaintext MQTT bytes to send: wrapped (framed, encrypted) into wire, with
 * whatever handshake bytes wait. MQTT bytes given before the handshake is
 * done wait inside. Returns 0 or -1. */
int bench_xport_wrap(struct bench_xport *x, const void *data, size_t len, struct buf *wire);

/* Bytes from the server: the MQTT bytes appended to plain, handshake or
 * control answers to wire. Returns 0, or -1 on a protocol error or close. */
int bench_xport_input(struct bench_xport *x, const void *data, size_t len, struct buf *plain,
                      struct buf *wire);

#endif
