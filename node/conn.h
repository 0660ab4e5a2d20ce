/*
 * conn.h - one client connection: reading and framing packets, the MQTT
 * protocol state machine of the connection, and coalesced writes.
 *
 * A connection belongs to one worker and is touched only by that worker's
 * thread, except for its reference count (other threads may hold a reference
 * while a command for it is in the worker's inbox).
 */
#ifndef STARLING_CONN_H
#define STARLING_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "codec.h"

struct worker;
struct session;
struct msg;
struct qmsg;
struct conn_write;
struct conn_extra;

enum conn_state { CONN_NEW, CONN_ACTIVE, CONN_CLOSING, CONN_CLOSED };

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
    struct conn_extra *x; /* see conn.c */
    struct buf in;        /* an incomplete packet */
    struct buf out;       /* output waiting for the next write */
    uint64_t last_rx;     /* worker loop ms */
    uint64_t state_since; /* worker loop ms: accepted (NEW), closing (CLOSING) */
    atomic_int refs;
    enum conn_state state;
    uint32_t connect_expiry; /* Session Expiry Interval asked in CONNECT */
    uint32_t client_max_packet;
    uint32_t next_token; /* of acknowledgements (conn_ack_push) */
    uint16_t keepalive;  /* seconds, enforced at 1.5x */
    uint16_t client_receive_max;
    uint16_t client_alias_max;
    uint8_t version;
    bool dirty;
    bool writing;
    bool write_failed;
    bool problem_info;
    bool normal_disconnect;
};

/* Accept a connection on w's listener. */
void conn_accept(struct worker *w, uv_stream_t *server);

struct conn *conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/*
 * Close the connection: for a connected 5.0 client with a reason >= 0x80,
 * send DISCONNECT(reason) first. Detaches the session and publishes the will
 * as the specification says. `resumed`: the session continues elsewhere
 * (takeover), so a delayed will is dropped. Worker thread only.
 */
void conn_close(struct conn *c, uint8_t reason, bool resumed);

/* Write pending output now (called at the end of a loop turn). */
void conn_flush(struct conn *c);

/* Write what the socket takes right now, without waiting and without ever
 * closing the connection (safe with a session lock held). Returns true when
 * all pending output is written. */
bool conn_try_write(struct conn *c);

/* Keep alive and CONNECT timeout check; now in loop ms. */
void conn_check_timers(struct conn *c, uint64_t now);

/*
 * Encode a PUBLISH of q to the client into c->out (topic alias, expiry,
 * subscription ids, DUP). Returns 1 when written, 0 when the message cannot
 * be sent to this client (larger than its Maximum Packet Size, or expired),
 * or a negative errno.
 */
int conn_send_publish(struct conn *c, const struct qmsg *q, bool dup, uint64_t now_ms);

/*
 * Queue an acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP). Acknowledgements
 * go out in the order they were queued; one that is not `ready` waits for
 * conn_ack_done (the store committed what it promises) and holds back those
 * queued after it. Returns its token.
 */
uint32_t conn_ack_push(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason,
                       bool ready);
/* The store answered for acknowledgement `token`: status 0 sends it (and
 * what was waiting behind it); an error makes a PUBACK/PUBREC carry 0x97
 * (quota exceeded) for 5.0 clients, and closes a 3.1.1 connection (the
 * client will publish again). Worker thread only. */
void conn_ack_done(struct conn *c, uint32_t token, int status);

/* Encode a PUBREL for pid into c->out. */
void conn_send_pubrel(struct conn *c, uint16_t pid);

/* Bytes waiting to be written to the client (for the slow consumer limit). */
size_t conn_pending_bytes(const struct conn *c);

#endif
