/*
 * conn.h - one client connection of the network layer.
 *
 *   conn.c          life cycle, framing and dispatch of packets, encoding
 *                   of packets into the output, closing (the session goes
 *                   back to the registry with the will)
 *   conn_io.c       the transport: bytes from and to the socket (reads into
 *                   the worker's buffer, coalesced writes); the only file
 *                   that reads or writes the stream, where TLS or WebSocket
 *                   framing will sit
 *   conn_sink.c     the sink the engine writes to (sink.h)
 *   ackq.c          acknowledgements in order, some waiting for the store
 *   handle_*.c      one file per kind of packet (handle.h)
 *
 * A connection belongs to one worker and is touched only by that worker's
 * thread, except for its reference count (other threads may hold a reference
 * while a command for it is in the worker's inbox, or while a claim of its
 * client id is in the registry).
 */
#ifndef STARLING_CONN_H
#define STARLING_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "codec.h"

#include "sink.h"

struct worker;
struct session;
struct msg;
struct qmsg;
struct conn_write;
struct conn_xf;
struct pending_ack;

/* NEW: accepted, waiting for CONNECT; CLAIMING: CONNECT received, the
 * registry has not answered yet (no packet is read meanwhile); ACTIVE:
 * CONNACK sent; CLOSING: writing what is left; CLOSED: handle closing. */
enum conn_state { CONN_NEW, CONN_CLAIMING, CONN_ACTIVE, CONN_CLOSING, CONN_CLOSED };

/* What only some connections need (a will, topic aliases, acknowledgements
 * waiting for the store), allocated on first use (conn_x): an idle client
 * without them costs a smaller struct conn. */
struct conn_extra {
    /* topic aliases client -> broker: alias_in[alias-1] */
    struct msg **alias_in;
    /* topic aliases broker -> client: alias_out[alias-1] */
    struct msg **alias_out;
    /* acknowledgements waiting for the store, sent in order (ackq.c) */
    struct pending_ack *acks;
    uint32_t acks_len, acks_cap;
    char *user;           /* the user name the client authenticated as, or NULL */
    uint32_t will_delay;  /* Will Delay Interval, seconds */
    uint32_t will_expiry; /* will Message Expiry Interval, seconds (0 = none) */
    uint16_t n_alias_out;
    /* max_publish_rate: PUBLISH packets in the window starting at rate_window */
    uint64_t rate_window; /* worker loop ms */
    uint32_t rate_count;
    /* QoS 2 PUBLISH packets (whole, as read) waiting for the session's old
     * owner's ids (struct session.blind_until, handle_publish_park) */
    struct parked_pub *parked;
    size_t parked_bytes;
    uint16_t n_parked;
};

struct parked_pub {
    uint8_t *data;
    size_t len;
};

/* Flow control of a publisher (conn_flow.c): while paused, the connection is
 * not read; it waits for the sessions its last message went to that were
 * above their high-water mark (each referenced), at most max_publisher_pause
 * ms. Allocated on the first pause. */
struct conn_flow {
    struct session *slow[8]; /* PUB_FLOW_MAX */
    struct session *self;    /* c's own session while paused (referenced) */
    uint8_t n_slow;
    bool paused;
    bool fwd;       /* waits for the cluster's outboxes (broker stats.fwd_slow_peers) */
    bool busy;      /* waits for a busy channel queue (route_ops.forward_busy) */
    uint64_t since; /* worker loop ms */
};

struct conn {
    uv_tcp_t tcp;
    /* pointers first, then smaller fields: an idle client costs its
     * connection and its session, so the layout has no holes */
    struct worker *w;
    struct conn *prev, *next; /* worker's list */
    struct conn *dirty_next;
    struct session *session;
    struct conn_write *wr; /* the write in progress, if any */
    struct msg *will;
    struct conn_extra *x;   /* see above */
    struct conn_flow *flow; /* see above */
    struct conn_xf *xf;     /* PROXY / TLS / WebSocket filter (conn_io.c); NULL: plain TCP */
    struct buf in;          /* an incomplete packet */
    struct buf out;         /* output waiting for the next write */
    uint64_t last_rx;       /* worker loop ms */
    /* traffic of this connection (the admin API's client details) */
    uint64_t bytes_in, bytes_out;
    uint64_t msgs_in, msgs_out; /* PUBLISH packets */
    uint64_t state_since;       /* worker loop ms: accepted (NEW), closing (CLOSING) */
    atomic_int refs;
    enum conn_state state;
    uint32_t connect_expiry; /* Session Expiry Interval asked in CONNECT */
    uint32_t client_max_packet;
    uint32_t next_token; /* of acknowledgements (ackq_push) */
    uint16_t keepalive;  /* seconds, enforced at 1.5x */
    uint16_t client_receive_max;
    uint16_t client_alias_max;
    /* SUBACK/UNSUBACKs waiting for their session's commit: the session's
     * messages wait too (conn_sink_ready), so that a subscription's
     * retained messages come after its SUBACK (handle_subscribe.c) */
    uint16_t acks_held;
    uint8_t version;
    uint8_t xport; /* enum config_xport: the listener it came from */
    bool dirty;
    bool writing;
    bool write_failed;
    bool problem_info;
    bool normal_disconnect;
    bool peer_disconnect; /* the client sent DISCONNECT (for the log) */
    bool throttled;       /* max_publish_rate reached: reading paused until the next window */
    /* worker_post_ack could not post a store result: the connection is
     * closed by its worker (never left waiting for an acknowledgement) */
    atomic_bool ack_lost;
};

/* The sink of the network layer (conn_sink.c), installed by server_run. */
extern const struct sink_ops conn_sink_ops;

/* Accept a connection on w's listener of kind xport (enum config_xport). */
void conn_accept(struct worker *w, uv_stream_t *server, int xport);

struct conn *conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/* The connection's broker. */
struct broker *conn_broker(const struct conn *c);

/* c->x, allocated on first use; NULL when out of memory. */
struct conn_extra *conn_x(struct conn *c);

/* Whether c may still be closed by conn_close (NEW, CLAIMING, ACTIVE). */
static inline bool conn_is_open(const struct conn *c)
{
    return c->state == CONN_NEW || c->state == CONN_CLAIMING || c->state == CONN_ACTIVE;
}

/*
 * Close the connection: for a connected 5.0 client with a reason >= 0x80,
 * send DISCONNECT(reason) first. Hands the session back to the registry with
 * the will (registry_release). `resumed`: the session continues elsewhere
 * (takeover), so a delayed will is dropped. Worker thread only.
 */
void conn_close(struct conn *c, uint8_t reason, bool resumed);

/* Keep alive and CONNECT timeout check; now in loop ms. */
void conn_check_timers(struct conn *c, uint64_t now);

/* Handle the complete packets in data (plaintext MQTT bytes from the
 * transport); returns how many bytes were used. */
size_t conn_process(struct conn *c, const uint8_t *data, size_t len);

/* Encode p into c->out, honouring the client's Maximum Packet Size: reason
 * strings and user properties are dropped first [MQTT-5.0 3.4.2-2/3]; a packet
 * still too large is not sent [MQTT-5.0 3.1.2-24/25]. Returns 1 when queued, 0 when not. */
int conn_send(struct conn *c, struct mqtt_packet *p);
/* Out of memory for the output of c: what it should have received is lost,
 * so c is closed at the end of the turn (by conn_flush, as after a failed
 * write), never left waiting for a packet that will not come. Never closes
 * from here (safe with a session lock held). */
void conn_fail_output(struct conn *c);
/* An acknowledgement packet (PUBACK, PUBREC, PUBREL, PUBCOMP). */
void conn_send_ack(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason);

/* "address:port" of the client, for log lines. */
const char *conn_peer(const struct conn *c, char *out, size_t len);
#define CONN_PEER(c) conn_peer((c), (char[64]){0}, 64)

/* ---- flow control of publishers (conn_flow.c) ----------------------------- */

struct pub_flow;
/* After c's publish (worker thread): when sessions it went to are above
 * their high-water mark (f->n_slow > 0), stop reading c until they drain.
 * Takes over f's references. */
void conn_flow_pause(struct conn *c, struct pub_flow *f);
static inline bool conn_flow_paused(const struct conn *c)
{
    return c->flow && c->flow->paused;
}
/* On w's thread: resume the paused connections whose sessions drained, or
 * that waited max_publisher_pause (then the slow subscriber policy applies
 * to those sessions: session_flow_expire). now: loop ms. */
void conn_flow_check(struct worker *w, uint64_t now);
/* Release c's flow state (conn freed). */
void conn_flow_free(struct conn *c);

/* ---- the transport (conn_io.c) ------------------------------------------- */

/* Start reading (after accept, or after a claim completed). */
void conn_io_start(struct conn *c);
/* Stop reading (closing, or while the registry answers a claim). */
void conn_io_stop(struct conn *c);
/* Write pending output now (called at the end of a loop turn); moves a
 * CLOSING connection on to CLOSED once everything is written. */
void conn_flush(struct conn *c);
/* Write what the socket takes right now, without waiting and without ever
 * closing the connection (safe with a session lock held). Returns true when
 * all pending output is written. */
bool conn_try_write(struct conn *c);
/* Close the handle now (CLOSED); the connection is freed after. */
void conn_io_close(struct conn *c);
/* Bytes waiting to be written to the client (for the slow consumer limit). */
size_t conn_pending_bytes(const struct conn *c);
/* Free the transport filter (connection freed). */
void conn_io_xf_free(struct conn *c);
/* The verified TLS client certificate's common name, or NULL. */
const char *conn_tls_identity(const struct conn *c);
/* Whether c came through TLS (tls or wss). */
bool conn_is_tls(const struct conn *c);

#endif
