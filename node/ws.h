/*
 * ws.h - a WebSocket server engine for MQTT (RFC 6455, MQTT 5.0 chapter 6).
 *
 * No sockets and no event loop: the same byte-in / bytes-out shape as
 * tls.h, so it stacks on plain TCP (ws) or on the TLS engine (wss). Bytes
 * from the network (or from tls_conn_read) go into ws_conn_feed; the MQTT
 * byte stream comes out of ws_conn_read -- packets may be split across
 * frames or several share one, the stream does not care; MQTT bytes to
 * send go into ws_conn_write (one binary frame each); the bytes to put on
 * the wire come out of ws_conn_take_output.
 *
 * The opening handshake (an HTTP/1.1 GET with Upgrade) is parsed with
 * nodejs' http_parser (Debian's libhttp-parser-dev), frames with wslay
 * (libwslay-dev); the Sec-WebSocket-Accept digest with OpenSSL. The engine
 * answers pings, echoes a close, refuses text frames [MQTT-3.1.1 6.0.0-1, MQTT-5.0 6.0.0-1], and
 * bounds what it holds (WS_FEED_MAX). A refused handshake writes an HTTP
 * error response and ws_conn_feed returns WS_ERR_HANDSHAKE: send the
 * output, then close.
 *
 * A struct ws_conn belongs to one connection and is used by one thread.
 * The struct ws_config it points to must outlive it.
 */
#ifndef STARLING_WS_H
#define STARLING_WS_H

#include <stdbool.h>
#include <stddef.h>

struct ws_config {
    const char *path; /* the request path, "/mqtt" when NULL (a query string is ignored) */
    /* When non-empty, a browser's Origin header must be one of these
     * ("https://app.example.com"); requests without Origin (not from a
     * browser) are allowed. */
    const char *const *origins;
    size_t n_origins;
};

struct ws_conn;

#define WS_ERR_HANDSHAKE (-2000) /* refused upgrade: send the HTTP response, close */
#define WS_ERR_PROTO (-2001)     /* a protocol violation: a close frame is queued */
#define WS_ERR_CLOSED (-2002)    /* the peer closed (its close frame was answered) */
#define WS_ERR_FULL (-2003)      /* more than WS_FEED_MAX bytes wait unread */

#define WS_REQUEST_MAX 8192
#define WS_FEED_MAX (256 * 1024)

/* A new connection waiting for its upgrade request; NULL when out of memory. */
struct ws_conn *ws_conn_new(const struct ws_config *cfg);
void ws_conn_free(struct ws_conn *c);

/*
 * Bytes from the peer, in any pieces. Returns 0, WS_ERR_HANDSHAKE,
 * WS_ERR_PROTO, WS_ERR_FULL or -ENOMEM; after any call, send what
 * ws_conn_take_output has (the 101 response, a pong, a close).
 */
int ws_conn_feed(struct ws_conn *c, const void *data, size_t len);

/* The MQTT byte stream into buf: the number of bytes, 0 when none waits,
 * WS_ERR_CLOSED once the peer closed or a protocol error ended reading. */
long ws_conn_read(struct ws_conn *c, void *buf, size_t cap);

/* Send len MQTT bytes as one binary frame. Returns 0, -EAGAIN before the
 * handshake, WS_ERR_CLOSED after a close, -ENOMEM. */
int ws_conn_write(struct ws_conn *c, const void *data, size_t len);

/* Queue a close frame with status (1000 normal, 1008 policy, ...). */
void ws_conn_close(struct ws_conn *c, unsigned status);

size_t ws_conn_output_len(const struct ws_conn *c);
size_t ws_conn_take_output(struct ws_conn *c, void *buf, size_t cap);

/* Is the connection upgraded (the 101 sent)? */
bool ws_conn_open(const struct ws_conn *c);

/* Once both close frames went: the transport may close the socket. */
bool ws_conn_finished(const struct ws_conn *c);

/* The subprotocol chosen ("mqtt", "mqttv3.1", or "" if the client named
 * none), and the reason of the last error ("" if none). */
const char *ws_conn_protocol(const struct ws_conn *c);
const char *ws_conn_error(const struct ws_conn *c);

/*
 * Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2):
 * base64(SHA-1(key || "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")) into out
 * (at least 29 bytes). Returns 0 or -EINVAL.
 */
int ws_accept_key(const char *key, size_t len, char *out, size_t outlen);

#endif
