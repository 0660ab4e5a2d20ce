/*
 * channel.h - the forwarding channel between nodes: length-prefixed
 * protobuf frames (proto/channel.proto, starling.chan.Frame) over TCP.
 *
 * Each node dials every peer it knows once and keeps that connection up
 * (reconnecting with exponential backoff, 100 ms to 5 s); frames to a peer go
 * out on that connection, in the order they were sent. Frames from a peer
 * arrive on the connection that peer dialled. So between two nodes there is
 * one connection per direction, which needs no tie-breaking and lets each
 * side's writes and reads run independently.
 *
 * Outgoing sockets are bound to the node's own address (port 0), so rules
 * on address pairs cut two nodes apart (docs/cluster.md).
 *
 * Handshake (nothing else is accepted before it):
 *   dialler  -> Hello{cluster_name, version, node, name, nonce_d}
 *   acceptor -> Hello{..., nonce_a, proof_a}
 *   dialler  -> HelloProof{proof_d}
 *   acceptor -> Ping{nonce 0, pong true}       ("welcome": the dialler sends)
 * where proof_x = HMAC-SHA256(cluster_secret, "starling-hello" ||
 * cluster_name || u64be(node of x) || the other side's nonce || x's nonce).
 * A peer with another cluster name, version, or a wrong proof gets an Error
 * frame and is disconnected (counted).
 *
 * Backpressure: each peer's queue is bounded (max_queue_bytes, encoded
 * bytes waiting or being written); chan_send refuses with -ENOBUFS beyond
 * it and counts the drop. Delivery is at most once per connection: frames
 * queued or written when a connection breaks may be lost, so the layers
 * above acknowledge what they need (PublishAck, ProposeResult).
 *
 * Pressure: a peer whose queue (bytes queued and being written) went
 * above half its bound while it drains (connected, and within
 * CHAN_STALL_MS its queue was empty, a write to it started or completed,
 * or the one in flight moved on as chan_poll saw) is "busy" until a write
 * to it completes with at most half the bound left: chan_send_flow tells
 * the sender so, so that it can slow its own sources down (the broker
 * pauses the publishing connection) instead of overrunning the queue, and
 * on_drained runs when a busy peer is not busy any more. (The queue goes
 * out in writes of at most 256 KiB: the first that completes with half the
 * bound or less queued resumes the senders while the rest keeps the socket
 * busy; a lower mark left the link idle, measured.) A peer that
 * stopped draining (a stalled process, a cut link) is not busy: its
 * overflow is refused and counted, the senders are never held back by it.
 *
 * Readers (optional, chan_options.reader_attach): a ready incoming
 * connection is read by another thread (a broker worker: the one that
 * delivers to its subscribers), which handles the frames that
 * reader_fast accepts itself (reader_frame) and hands every other frame to
 * the loop (on_frame), in order: a frame is handled by the reader only
 * when every frame before it was handled, wherever. That saves the loop's
 * hand-off (a thread wake-up) on each forwarded QoS 0 publish
 * (docs/cluster.md, "The forwarding channel"). What the loop has not
 * handled yet is bounded (READER_BACKLOG_BYTES): beyond it the reader stops
 * reading until the loop catches up. The reader gives the connection back
 * to the loop when its socket ends or fails, when the loop closes it, when
 * its thread stops (chan_reader_stop: the loop then reads it again), or at
 * a frame larger than max_frame (the loop refuses it).
 *
 * Threads: chan_start, chan_stop, chan_peer_add and chan_peer_remove on the
 * loop's thread; chan_send and chan_stats from any thread, chan_flush_here
 * from any thread but the loop's. on_frame runs on
 * the loop's thread; reader_fast, reader_frame and reader_done on the
 * reader's.
 */
#ifndef STARLING_CHANNEL_H
#define STARLING_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CHAN_PROTOCOL_VERSION 1
/* A peer that took no bytes for this long is stalled, not busy. */
#define CHAN_STALL_MS 400

struct chan;
/* An incoming connection while a reader thread takes it (see above). */
struct chan_reader;

/* A frame from node `from` (already authenticated): frame is a
 * const Starling__Chan__Frame * (channel.pb-c.h), valid during the call. */
typedef void (*chan_frame_fn)(void *ud, uint64_t from, const void *frame);

struct chan_options {
    uv_loop_t *loop;
    uint64_t self;              /* this node's id (Raft id), not 0 */
    const char *self_name;      /* node_name */
    const char *address;        /* "a.b.c.d:port": listen here, dial from this IP */
    const char *cluster_name;   /* required equal on every node */
    const char *cluster_secret; /* "" = none (the proof then only checks the name) */
    size_t max_queue_bytes;     /* per peer; 0 = 8 MiB */
    size_t max_frame;           /* largest frame accepted; 0 = 16 MiB */
    chan_frame_fn on_frame;
    /* A busy peer's queue is back below the low-water mark (the loop
     * thread, or the thread in chan_flush_here; may be NULL). */
    void (*on_drained)(void *ud);
    void *ud;
    /* Optional, called by chan_send on the sending thread: true when that
     * thread calls chan_flush_here soon (a broker worker, at the end of its
     * loop turn; docs/cluster.md "The forwarding channel"), so the loop is
     * not woken for the frame. */
    bool (*defer)(void *defer_ud);
    void *defer_ud;
    /* Optional (see "Readers" above), all three or none: reader_attach
     * (loop thread) makes chan_reader_start(r, loop) run on the thread of
     * loop, once, or chan_reader_start(r, NULL) anywhere to decline for
     * good; it returns 0, or -1 when it did neither: not now (the loop
     * reads on, and offers the connection again after its next read). */
    int (*reader_attach)(void *ud, uint64_t from, struct chan_reader *r);
    bool (*reader_fast)(void *ud, const void *frame);
    void (*reader_frame)(void *ud, uint64_t from, const void *frame);
    /* The reader stopped (its thread; after chan_reader_stop too): r is
     * the loop's again. May be NULL. */
    void (*reader_done)(void *ud, struct chan_reader *r);
    void *reader_ud;
};

/* Listen and get ready. 0, or a negative errno with a message in err. */
int chan_start(struct chan **out, const struct chan_options *o, char *err, size_t errlen);
/* Close every connection and the listener; done(ud) runs on the loop once
 * everything is closed and c is freed. */
void chan_stop(struct chan *c, void (*done)(void *ud), void *ud);

/* Know (and dial) peer `node` at "a.b.c.d:port". -EEXIST, -EINVAL. */
int chan_peer_add(struct chan *c, uint64_t node, const char *address);
/* Forget it (its queue is dropped). -ENOENT. */
int chan_peer_remove(struct chan *c, uint64_t node);

/* Queue an encoded starling.chan.Frame (copied) for node. -ENOENT unknown
 * peer, -ENOBUFS queue full (counted), -EMSGSIZE larger than max_frame,
 * -ECANCELED stopping. */
int chan_send(struct chan *c, uint64_t node, const void *frame, size_t len);
/* On the thread of loop (reader_attach): read r there, or decline (loop
 * NULL; any thread). */
void chan_reader_start(struct chan_reader *r, uv_loop_t *loop);
/* Give r back to the loop (its reader's thread, which must not stop before
 * reader_done ran: the handles on its loop close first). */
void chan_reader_stop(struct chan_reader *r);

/* Write what is queued for every peer whose connection is ready and idle
 * from the calling thread (one system call per peer and batch), and wake
 * the loop for the rest. Any thread but the loop's; never blocks on the
 * network. */
void chan_flush_here(struct chan *c);

/* chan_send, and *busy set (never cleared) when the peer is busy and
 * draining after this frame (see "Pressure" above); busy may be NULL. */
int chan_send_flow(struct chan *c, uint64_t node, const void *frame, size_t len, bool *busy);
/* Note which peers' writes in flight moved on since the last call (their
 * progress for "Pressure"); call every 100 ms or so. Loop thread. */
void chan_poll(struct chan *c);
/* Whether some peer is busy and draining now. Any thread. */
bool chan_busy(struct chan *c);

struct chan_peer_stats {
    bool connected;         /* our connection to it is past the handshake */
    uint64_t sent;          /* frames written to the socket */
    uint64_t dropped;       /* frames refused because the queue was full */
    uint64_t queued_bytes;  /* frames waiting or being written: their bytes */
    uint64_t queued_frames; /* and their number */
    uint64_t bytes_sent;    /* bytes of the frames written (length prefix included) */
    uint64_t connects;      /* handshakes completed (1 + reconnections) */
    /* times its queue went above half its bound while it did not drain
     * (not connected, or it took nothing for CHAN_STALL_MS): its senders
     * were not held back, its overflow was dropped ("Pressure") */
    uint64_t stalls;
};
int chan_peer_stats(struct chan *c, uint64_t node, struct chan_peer_stats *out);
/* When node's connection to this one last brought bytes (any frame: a
 * forward, a report, a ping), CLOCK_MONOTONIC milliseconds; 0 if never.
 * Any thread. */
uint64_t chan_heard_ms(struct chan *c, uint64_t node);
/* Handshakes this node refused (bad name, version, proof). */
uint64_t chan_refused(struct chan *c);

#endif
