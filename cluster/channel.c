/*
 * channel.c - the forwarding channel (see channel.h).
 *
 * A struct peer is a node we send to: its queue of encoded frames (each
 * with its u32be length prefix), the outgoing connection (struct conn) and a
 * reconnect timer. Incoming connections are struct conns on c->incoming;
 * they deliver frames to on_frame once the handshake is done. One mutex
 * (c->mu) guards the peer list and the queues, because chan_send runs on
 * any thread; everything else is the loop thread's. A send appends to the
 * queue and wakes the loop (uv_async_send); the loop writes what is queued
 * for a peer in uv_writes of at most LOOP_WRITE_BYTES, one write in flight
 * per connection.
 *
 * Writes from the sending thread (chan_flush_here): a thread that said so
 * (chan_options.defer: a broker worker, at the end of its loop turn) writes
 * what it queued itself, in one sendmsg per peer, when the peer's
 * connection is ready and nothing else writes to it (peer.fd, .direct,
 * .loop_writing under c->mu); whatever the socket does not take stays at
 * the head of the queue (peer.head_off: bytes of the first frame already
 * written) and the loop is woken for it. That saves the loop's wake-up (a
 * thread hand-off) on every message that finds the channel idle, and keeps
 * one system call per batch under load. The loop closes a connection's
 * socket only once no other thread writes to it (c->cv).
 *
 * Readers (channel.h): a ready incoming connection may be read by another
 * thread (struct chan_reader, in the struct conn): the loop stops reading it
 * and reader_attach starts a uv_poll_t and a uv_async_t on the reader's
 * loop. The reader reads into a buffer of its own and handles each whole
 * frame that reader_fast accepts while nothing is left for the loop
 * (conn.unhandled, 0); every other frame, and all after it until the loop
 * handled them, it appends to conn.rq (under c->rq_mu) and wakes the loop
 * (c->rq_async), which moves them to conn.rbuf and handles them there as
 * it would have (conn_parse, which counts them off). The reader gives the
 * connection back (conn.back; the bytes of a partial frame go with it) when
 * its socket ends or fails, when the loop asks (conn.release: the
 * connection closes; its socket is closed only once the reader's handles
 * are), when its own thread stops (chan_reader_stop), or at a frame larger
 * than max_frame (the loop refuses it). Each connection is attached at most
 * once.
 *
 * Every libuv handle is counted in c->open; chan_stop closes them all and
 * frees c when the count reaches 0.
 */
#include "channel.h"
#include "chan_frame.h"
#include "channel.pb-c.h"
#include "hoptrace.h"
#include "log.h"
#include "tcp_bounds.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NONCE_LEN 16
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define ACCEPT_RETRY_MS 100 /* a connection not taken for want of memory: again */
#define READ_CHUNK 65536
/* a connection's frames in one turn of the loop: then the rest of the loop
 * runs (conn_parse) */
#define READ_TURN_NS (10u * 1000u * 1000u)
/* at most this many frames of a turn per read of the clock (conn_parse) */
#define CLOCK_EVERY 16u
/* the most one write takes from a peer's queue: the loop's uv_write, and a
 * sending thread's turn (chan_flush_here; what it leaves, the loop writes) */
#define LOOP_WRITE_FRAMES 4096u
#define LOOP_WRITE_BYTES (256u << 10)
#define DIRECT_WRITE_FRAMES 16384u
#define DIRECT_WRITE_BYTES (1u << 20)
/* frames a reader gave the loop that it has not handled yet: beyond this
 * many bytes the reader stops reading until the loop is down to half */
#define READER_BACKLOG_BYTES (8u << 20)

struct qframe {
    struct qframe *next;
    size_t len; /* prefix + frame */
    unsigned char data[];
};

enum conn_state {
    /* outgoing */
    OUT_CONNECTING,
    OUT_WAIT_HELLO,
    OUT_WAIT_WELCOME,
    OUT_READY,
    /* incoming */
    IN_WAIT_HELLO,
    IN_WAIT_PROOF,
    IN_READY,
};

struct peer;

/* Incoming frames are unpacked into an arena (the loop thread's, one per
 * channel): each field of a frame is a bump of a pointer, and all of them
 * go at once after the frame's handler ran, instead of a malloc and a free
 * per field (protobuf-c allocates every message, string and bytes field).
 * In a cross-node fan-in, malloc and free took about a third of the
 * receiving node's cluster thread (docs/performance.md). A frame larger
 * than the arena spills into malloc'ed blocks (freed with it), and the
 * arena grows up to ARENA_MAX for the next one. */
#define ARENA_MIN 65536u
#define ARENA_MAX (1u << 20)

struct spill {
    struct spill *next;
    max_align_t data[];
};

struct arena {
    unsigned char *buf;
    size_t cap, used;
    size_t spilled; /* bytes beyond buf for the frame being unpacked */
    struct spill *spills;
    bool in_use;
    ProtobufCAllocator al;
};

/* A connection while another thread reads it (see the top). Reader thread
 * only, but for k and fd. */
struct chan_reader {
    struct conn *k;
    int fd;
    uv_poll_t poll;
    uv_async_t async;
    unsigned open; /* of poll and async */
    bool ending;
    bool eof; /* the socket ended or failed */
    unsigned char *buf;
    size_t len, cap;
    struct arena arena;
};

struct conn {
    struct chan *c;
    struct conn *next; /* c->incoming */
    struct peer *peer; /* outgoing only */
    uv_tcp_t tcp;
    uv_connect_t connect;
    enum conn_state state;
    uint64_t remote;   /* incoming: the node after its Hello */
    struct peer *from; /* incoming, ready: that node's peer (heard_ms), or NULL */
    unsigned char nonce[NONCE_LEN], peer_nonce[NONCE_LEN];
    unsigned char *rbuf;
    size_t rlen, rcap;
    unsigned char chunk[READ_CHUNK];
    bool closing;
    bool paused; /* frames left in rbuf for the next turn: not reading meanwhile */
    /* the data write in flight (outgoing) */
    uv_write_t wreq;
    struct qframe *writing;
    size_t writing_n;
    /* a reader (incoming): the loop's side */
    bool attached;  /* from reader_attach until it is handed back */
    bool no_reader; /* attached once already (or declined) */
    struct chan_reader rd;
    /* frames the reader gave the loop and the loop did not handle yet:
     * their number and bytes (atomic) */
    size_t unhandled, backlog;
    /* guarded by c->rq_mu */
    unsigned char *rq; /* frames for the loop, in order */
    size_t rq_len, rq_cap;
    bool rq_woken; /* the loop was woken for rq */
    bool rd_alive; /* the reader's async may be sent */
    bool release;  /* the loop wants the connection back */
    bool stalled;  /* the reader stopped reading (backlog) */
    bool resume;   /* ...and may read again */
    bool back;     /* handed back: everything it read is in rq */
    bool rd_eof;   /* ...and its socket ended or failed */
    /* loop: its socket ended while frames wait in rbuf (paused): it closes
     * once they are handled */
    bool eof_pending;
};

struct peer {
    struct peer *next;
    struct chan *c;
    uint64_t node;
    char address[64];
    struct sockaddr_in sa;
    struct conn *conn;
    uv_timer_t timer;
    unsigned backoff_ms;
    bool removed;
    /* when its incoming connection last brought bytes (atomic: written by
     * the loop thread, read by chan_heard_ms on any) */
    uint64_t heard_ms;
    /* guarded by c->mu */
    struct qframe *qhead, **qtail;
    size_t qbytes;
    size_t qframes;      /* frames waiting or being written */
    size_t head_off;     /* bytes of qhead already written (a partial write) */
    int fd;              /* the ready connection's socket, or -1 */
    bool loop_writing;   /* the loop's uv_write is in flight */
    bool direct;         /* another thread writes to fd (chan_flush_here) */
    bool busy;           /* went above half the bound, no write completed below it since */
    uint64_t drained_ms; /* when it last took bytes (or had taken all) */
    size_t last_wq;      /* loop thread: bytes of the write in flight at chan_poll */
    uint64_t stall_at;   /* drained_ms when the last stall was counted (st.stalls) */
    struct chan_peer_stats st;
};

struct chan {
    struct chan_options o;
    char name[256], secret[256], self_name[256], address[64];
    struct sockaddr_in self_sa;
    uv_tcp_t listener;
    uv_timer_t accept_retry; /* a connection libuv holds, not taken yet (on_connection) */
    uv_async_t async;
    uv_idle_t resume; /* active while a connection has frames left for the next turn */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a direct write ended (a close waits for it) */
    struct peer *peers;
    struct conn *incoming;
    bool stopping;
    unsigned open;
    void (*done)(void *);
    void *done_ud;
    uint64_t refused;
    struct arena arena; /* the loop thread's, for the frame being handled */
    /* readers: c->rq_async wakes the loop for their frames and hand-backs */
    pthread_mutex_t rq_mu;
    uv_async_t rq_async;
    unsigned n_attached;
    bool rq_closed;
};

static int parse_address(const char *address, struct sockaddr_in *sa)
{
    char ip[64];
    const char *colon = strrchr(address, ':');
    if (!colon || (size_t)(colon - address) >= sizeof ip || colon == address)
        return -EINVAL;
    memcpy(ip, address, (size_t)(colon - address));
    ip[colon - address] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535)
        return -EINVAL;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The length of the frame whose u32be prefix is at p. */
static size_t frame_len(const unsigned char *p)
{
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

/* Append n bytes to the buffer *buf (*len used, *cap allocated), which
 * grows by doubling from READ_CHUNK. 0, or -1 (out of memory: unchanged). */
static int bytes_append(unsigned char **buf, size_t *len, size_t *cap, const unsigned char *p,
                        size_t n)
{
    if (*cap - *len < n) {
        size_t c = *cap ? *cap : READ_CHUNK;
        while (c - *len < n)
            c *= 2;
        unsigned char *q = realloc(*buf, c);
        if (!q)
            return -1;
        *buf = q;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Count a stall of p (caller holds c->mu): its queue is above half its
 * bound while it is not draining (not connected, or it took nothing for
 * CHAN_STALL_MS), so its senders are not held back and its overflow is
 * dropped. Once per stall: a peer that took bytes since is a new one. */
static void peer_note_stall(struct peer *p, uint64_t now)
{
    if ((p->st.connected && now - p->drained_ms <= CHAN_STALL_MS) || p->stall_at == p->drained_ms)
        return;
    p->stall_at = p->drained_ms;
    p->st.stalls++;
}

/* Whether p is busy and draining (caller holds c->mu). */
static bool peer_pressing(const struct peer *p, uint64_t now)
{
    return p->busy && !p->removed && p->st.connected && now - p->drained_ms <= CHAN_STALL_MS;
}

static void *arena_alloc(void *ud, size_t size)
{
    struct arena *a = ud;
    size = (size + _Alignof(max_align_t) - 1) & ~(size_t)(_Alignof(max_align_t) - 1);
    if (size <= a->cap - a->used) {
        void *p = a->buf + a->used;
        a->used += size;
        return p;
    }
    struct spill *sp = malloc(sizeof *sp + size);
    if (!sp)
        return NULL;
    sp->next = a->spills;
    a->spills = sp;
    a->spilled += size;
    return sp->data;
}

static void arena_free(void *ud, void *p)
{
    (void)ud; /* everything goes at once, in arena_end */
    (void)p;
}

/* The allocator to unpack a frame with, or NULL (protobuf-c's malloc:
 * free the frame with free_unpacked) when the arena holds a frame already
 * (a handler that unpacks one itself). */
static ProtobufCAllocator *arena_begin(struct arena *a)
{
    if (a->in_use)
        return NULL;
    a->in_use = true;
    a->al.alloc = arena_alloc;
    a->al.free = arena_free;
    a->al.allocator_data = a;
    return &a->al;
}

/* The frame unpacked with al is freed: all of it at once. */
static void arena_end(struct arena *a, ProtobufCAllocator *al)
{
    if (!al)
        return;
    size_t need = a->used + a->spilled;
    while (a->spills) {
        struct spill *sp = a->spills;
        a->spills = sp->next;
        free(sp);
    }
    if (a->spilled && a->cap < ARENA_MAX) {
        size_t cap = a->cap ? a->cap : ARENA_MIN;
        while (cap < need && cap < ARENA_MAX)
            cap *= 2;
        unsigned char *buf = malloc(cap);
        if (buf) {
            free(a->buf);
            a->buf = buf;
            a->cap = cap;
        }
    }
    a->used = 0;
    a->spilled = 0;
    a->in_use = false;
}

static void maybe_done(struct chan *c)
{
    if (!c->stopping || c->open)
        return;
    while (c->peers) {
        struct peer *p = c->peers;
        c->peers = p->next;
        while (p->qhead) {
            struct qframe *q = p->qhead;
            p->qhead = q->next;
            free(q);
        }
        free(p);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->rq_mu);
    pthread_cond_destroy(&c->cv);
    free(c->arena.buf);
    void (*done)(void *) = c->done;
    void *ud = c->done_ud;
    free(c);
    if (done)
        done(ud);
}

static void handle_closed(uv_handle_t *h)
{
    struct chan *c = h->data;
    c->open--;
    maybe_done(c);
}

/* ---- frames ---- */

static struct qframe *frame_pack(const Starling__Chan__Frame *f)
{
    size_t n = starling__chan__frame__get_packed_size(f);
    struct qframe *q = malloc(sizeof *q + 4 + n);
    if (!q)
        return NULL;
    q->next = NULL;
    q->len = 4 + n;
    q->data[0] = (unsigned char)(n >> 24);
    q->data[1] = (unsigned char)(n >> 16);
    q->data[2] = (unsigned char)(n >> 8);
    q->data[3] = (unsigned char)n;
    starling__chan__frame__pack(f, q->data + 4);
    return q;
}

struct ctl_write {
    uv_write_t req;
    struct qframe *q;
};

static void ctl_written(uv_write_t *w, int status)
{
    (void)status;
    struct ctl_write *cw = (struct ctl_write *)w;
    free(cw->q);
    free(cw);
}

static void conn_close(struct conn *k);

/* An incoming, ready connection: the peer of its node (for heard_ms), once
 * that node is a peer. A connection that completed its handshake before its
 * node was known (a node dials the others before its members table tells
 * them about it, and at start before the table is read) was never linked,
 * so nothing it brought counted as heard (chan_heard_ms stayed 0) and the
 * leader judged that node by its chan.Applied reports alone. */
static void conn_link_from(struct conn *k)
{
    struct chan *c = k->c;
    pthread_mutex_lock(&c->mu);
    for (struct peer *p = c->peers; p; p = p->next)
        if (p->node == k->remote && !p->removed)
            k->from = p; /* peers stay allocated until chan_stop */
    pthread_mutex_unlock(&c->mu);
}

/* Write a control frame (handshake, pong, error) now. */
static void send_ctl(struct conn *k, const Starling__Chan__Frame *f)
{
    if (k->closing)
        return;
    struct ctl_write *cw = malloc(sizeof *cw);
    struct qframe *q = frame_pack(f);
    if (!cw || !q) {
        free(cw);
        free(q);
        conn_close(k);
        return;
    }
    cw->q = q;
    uv_buf_t b = uv_buf_init((char *)q->data, (unsigned)q->len);
    if (uv_write(&cw->req, (uv_stream_t *)&k->tcp, &b, 1, ctl_written) != 0) {
        free(q);
        free(cw);
        conn_close(k);
    }
}

static void proof(const struct chan *c, uint64_t node, const unsigned char *other_nonce,
                  const unsigned char *own_nonce, unsigned char out[32])
{
    unsigned char msg[14 + 256 + 8 + 2 * NONCE_LEN];
    size_t n = 0, nl = strlen(c->name);
    memcpy(msg, "starling-hello", 14);
    n = 14;
    memcpy(msg + n, c->name, nl);
    n += nl;
    for (int i = 7; i >= 0; i--)
        msg[n++] = (unsigned char)(node >> (8 * i));
    memcpy(msg + n, other_nonce, NONCE_LEN);
    n += NONCE_LEN;
    memcpy(msg + n, own_nonce, NONCE_LEN);
    n += NONCE_LEN;
    unsigned int olen = 32;
    HMAC(EVP_sha256(), c->secret, (int)strlen(c->secret), msg, n, out, &olen);
}

static void send_hello(struct conn *k, bool with_proof)
{
    struct chan *c = k->c;
    Starling__Chan__Hello h = STARLING__CHAN__HELLO__INIT;
    unsigned char pr[32];
    h.cluster_name = c->name;
    h.protocol_version = CHAN_PROTOCOL_VERSION;
    h.node = c->o.self;
    h.node_name = c->self_name;
    h.nonce.data = k->nonce;
    h.nonce.len = NONCE_LEN;
    if (with_proof) {
        proof(c, c->o.self, k->peer_nonce, k->nonce, pr);
        h.has_proof = 1;
        h.proof.data = pr;
        h.proof.len = 32;
    }
    Starling__Chan__Frame f = STARLING__CHAN__FRAME__INIT;
    f.frame_case = STARLING__CHAN__FRAME__FRAME_HELLO;
    f.hello = &h;
    send_ctl(k, &f);
}

static void refuse(struct conn *k, const char *why)
{
    __atomic_add_fetch(&k->c->refused, 1, __ATOMIC_RELAXED);
    log_warn("cluster: forwarding channel: refused %s: %s",
             k->peer ? k->peer->address : "an incoming connection", why);
    Starling__Chan__Error e = STARLING__CHAN__ERROR__INIT;
    e.code = 1;
    e.reason = (char *)why;
    Starling__Chan__Frame f = STARLING__CHAN__FRAME__INIT;
    f.frame_case = STARLING__CHAN__FRAME__FRAME_ERROR;
    f.error = &e;
    send_ctl(k, &f);
    conn_close(k);
}

/* Check a peer's Hello: name and version. */
static bool hello_ok(struct conn *k, const Starling__Chan__Hello *h)
{
    if (strcmp(h->cluster_name, k->c->name) != 0) {
        refuse(k, "another cluster name");
        return false;
    }
    if (h->protocol_version != CHAN_PROTOCOL_VERSION) {
        refuse(k, "another protocol version");
        return false;
    }
    if (h->nonce.len != NONCE_LEN || h->node == 0) {
        refuse(k, "malformed hello");
        return false;
    }
    return true;
}

/* ---- outgoing data ---- */

/* Detach the head of p's queue, at most max_frames frames and max_bytes
 * bytes but at least one frame: a NULL-terminated list, *n frames. Its
 * first frame's written part is p->head_off, which the caller takes and
 * clears. Caller holds c->mu. Writing the queue a part at a time keeps the
 * work per write bounded (a queue of a few MiB is tens of thousands of
 * frames: the list walks, the iovec arrays) and lets a write complete, and
 * a busy peer's senders resume ("Pressure" in channel.h), while the rest
 * is still queued: the link does not idle while they wake up. */
static struct qframe *queue_take(struct peer *p, size_t max_frames, size_t max_bytes, size_t *n)
{
    struct qframe *list = p->qhead, *last = NULL;
    size_t k = 0, bytes = 0;
    for (struct qframe *q = list; q && (!k || (k < max_frames && bytes + q->len <= max_bytes));
         q = q->next) {
        last = q;
        k++;
        bytes += q->len;
    }
    if (n)
        *n = k;
    if (!last)
        return NULL;
    p->qhead = last->next;
    if (!p->qhead)
        p->qtail = &p->qhead;
    last->next = NULL;
    p->head_off = 0;
    return list;
}

/* Put list (taken by queue_take, off bytes of its first frame written)
 * back at the head of p's queue. Caller holds c->mu. */
static void queue_put_back(struct peer *p, struct qframe *list, size_t off)
{
    struct qframe *last = list;
    while (last->next)
        last = last->next;
    last->next = p->qhead;
    if (!p->qhead)
        p->qtail = &last->next;
    p->qhead = list;
    p->head_off = off;
}

static void flush_peer(struct peer *p);

static void data_written(uv_write_t *w, int status)
{
    struct conn *k = w->data;
    struct chan *c = k->c;
    struct peer *p = k->peer;
    size_t bytes = 0, frames = 0;
    while (k->writing) {
        struct qframe *q = k->writing;
        k->writing = q->next;
        bytes += q->len;
        frames++;
        free(q);
    }
    bool drained = false;
    pthread_mutex_lock(&c->mu);
    if (p) {
        p->qbytes -= bytes;
        p->loop_writing = false;
        p->qframes -= frames;
        if (status == 0) {
            p->st.sent += k->writing_n;
            p->st.bytes_sent += bytes;
            p->drained_ms = mono_ms();
        }
        if (p->busy && p->qbytes <= c->o.max_queue_bytes / 2) {
            p->busy = false;
            drained = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    k->writing_n = 0;
    if (drained && c->o.on_drained)
        c->o.on_drained(c->o.ud);
    if (status != 0) {
        conn_close(k);
        return;
    }
    if (p)
        flush_peer(p);
}

/* Write everything queued for p in one uv_write, if its connection is
 * ready and idle. */
static void flush_peer(struct peer *p)
{
    struct conn *k = p->conn;
    if (!k || k->state != OUT_READY || k->writing || k->closing)
        return;
    struct chan *c = k->c;
    pthread_mutex_lock(&c->mu);
    if (p->direct) {
        /* another thread writes; it wakes the loop for what it leaves */
        pthread_mutex_unlock(&c->mu);
        return;
    }
    size_t off = p->head_off, n;
    struct qframe *list = queue_take(p, LOOP_WRITE_FRAMES, LOOP_WRITE_BYTES, &n);
    p->loop_writing = list != NULL;
    if (list)
        p->drained_ms = mono_ms(); /* the clock of this write's progress */
    pthread_mutex_unlock(&c->mu);
    if (!list)
        return;
    uv_buf_t *bufs = malloc(n * sizeof *bufs);
    if (!bufs) {
        /* Put them back; try again on the next wake-up. */
        pthread_mutex_lock(&c->mu);
        queue_put_back(p, list, off);
        p->loop_writing = false;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    size_t i = 0;
    for (struct qframe *q = list; q; q = q->next)
        bufs[i++] = uv_buf_init((char *)q->data, (unsigned)q->len);
    bufs[0].base += off;
    bufs[0].len -= off;
    k->writing = list;
    k->writing_n = n;
    k->wreq.data = k;
    int rc = uv_write(&k->wreq, (uv_stream_t *)&k->tcp, bufs, (unsigned)n, data_written);
    free(bufs); /* libuv copies the buffer array */
    if (rc != 0)
        data_written(&k->wreq, rc);
}

static void on_async(uv_async_t *a)
{
    struct chan *c = a->data;
    for (struct peer *p = c->peers; p; p = p->next)
        flush_peer(p);
}

/* ---- reading ---- */

static void handle_frame(struct conn *k, const Starling__Chan__Frame *f)
{
    struct chan *c = k->c;
    if (f->frame_case == STARLING__CHAN__FRAME__FRAME_ERROR) {
        /* The other side refused us or is closing: no answer, just close. */
        log_warn("cluster: forwarding channel: %s: peer error: %s",
                 k->peer ? k->peer->address : "incoming connection", f->error->reason);
        conn_close(k);
        return;
    }
    switch (k->state) {
    case OUT_WAIT_HELLO: {
        if (f->frame_case != STARLING__CHAN__FRAME__FRAME_HELLO) {
            refuse(k, "expected hello");
            return;
        }
        const Starling__Chan__Hello *h = f->hello;
        if (!hello_ok(k, h))
            return;
        if (h->node != k->peer->node) {
            refuse(k, "another node at this address");
            return;
        }
        unsigned char want[32];
        proof(c, h->node, k->nonce, h->nonce.data, want);
        if (!h->has_proof || h->proof.len != 32 || CRYPTO_memcmp(want, h->proof.data, 32)) {
            refuse(k, "bad cluster_secret proof");
            return;
        }
        memcpy(k->peer_nonce, h->nonce.data, NONCE_LEN);
        Starling__Chan__HelloProof hp = STARLING__CHAN__HELLO_PROOF__INIT;
        unsigned char mine[32];
        proof(c, c->o.self, k->peer_nonce, k->nonce, mine);
        hp.proof.data = mine;
        hp.proof.len = 32;
        Starling__Chan__Frame out = STARLING__CHAN__FRAME__INIT;
        out.frame_case = STARLING__CHAN__FRAME__FRAME_HELLO_PROOF;
        out.hello_proof = &hp;
        send_ctl(k, &out);
        k->state = OUT_WAIT_WELCOME;
        return;
    }
    case OUT_WAIT_WELCOME:
        if (f->frame_case != STARLING__CHAN__FRAME__FRAME_PING || !f->ping->pong) {
            refuse(k, "expected welcome");
            return;
        }
        k->state = OUT_READY;
        k->peer->backoff_ms = 0;
        uv_os_fd_t fd;
        pthread_mutex_lock(&c->mu);
        k->peer->st.connected = true;
        k->peer->st.connects++;
        if (uv_fileno((uv_handle_t *)&k->tcp, &fd) == 0)
            k->peer->fd = fd;
        k->peer->drained_ms = mono_ms(); /* its writes start now */
        pthread_mutex_unlock(&c->mu);
        flush_peer(k->peer);
        return;
    case OUT_READY:
        return; /* pongs and the like */
    case IN_WAIT_HELLO: {
        if (f->frame_case != STARLING__CHAN__FRAME__FRAME_HELLO) {
            refuse(k, "expected hello");
            return;
        }
        const Starling__Chan__Hello *h = f->hello;
        if (!hello_ok(k, h))
            return;
        /* A known node must dial from its own address; with a
         * cluster_secret, whose proof follows, a known node may come from
         * another one (its IP changed: a restarted pod, whose new Member
         * record cannot be proposed before it is let in). */
        pthread_mutex_lock(&c->mu);
        struct sockaddr_in claimed = {0};
        bool known = false;
        for (struct peer *p = c->peers; p; p = p->next)
            if (p->node == h->node && !p->removed) {
                claimed = p->sa;
                known = true;
            }
        pthread_mutex_unlock(&c->mu);
        struct sockaddr_in from;
        int flen = sizeof from;
        if (known && (uv_tcp_getpeername(&k->tcp, (struct sockaddr *)&from, &flen) != 0 ||
                      from.sin_addr.s_addr != claimed.sin_addr.s_addr)) {
            if (!c->secret[0]) {
                refuse(k, "source address differs from the node's address");
                return;
            }
            char ip[INET_ADDRSTRLEN] = "?";
            inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
            log_info("cluster: node %s connects from a new address %s", h->node_name, ip);
        }
        k->remote = h->node;
        memcpy(k->peer_nonce, h->nonce.data, NONCE_LEN);
        send_hello(k, true);
        k->state = IN_WAIT_PROOF;
        return;
    }
    case IN_WAIT_PROOF: {
        if (f->frame_case != STARLING__CHAN__FRAME__FRAME_HELLO_PROOF) {
            refuse(k, "expected hello proof");
            return;
        }
        unsigned char want[32];
        proof(c, k->remote, k->nonce, k->peer_nonce, want);
        if (f->hello_proof->proof.len != 32 ||
            CRYPTO_memcmp(want, f->hello_proof->proof.data, 32) != 0) {
            refuse(k, "bad cluster_secret proof");
            return;
        }
        k->state = IN_READY;
        conn_link_from(k);
        Starling__Chan__Ping pg = STARLING__CHAN__PING__INIT;
        pg.nonce = 0;
        pg.has_pong = 1;
        pg.pong = 1;
        Starling__Chan__Frame out = STARLING__CHAN__FRAME__INIT;
        out.frame_case = STARLING__CHAN__FRAME__FRAME_PING;
        out.ping = &pg;
        send_ctl(k, &out);
        return;
    }
    case IN_READY:
        if (f->frame_case == STARLING__CHAN__FRAME__FRAME_PING && !f->ping->pong) {
            Starling__Chan__Ping pg = STARLING__CHAN__PING__INIT;
            pg.nonce = f->ping->nonce;
            pg.has_pong = 1;
            pg.pong = 1;
            Starling__Chan__Frame out = STARLING__CHAN__FRAME__INIT;
            out.frame_case = STARLING__CHAN__FRAME__FRAME_PING;
            out.ping = &pg;
            send_ctl(k, &out);
        }
        if (c->o.on_frame)
            c->o.on_frame(c->o.ud, k->remote, f);
        return;
    case OUT_CONNECTING:
        return;
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void on_resume(uv_idle_t *h);
static void reader_catch_up(struct conn *k);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct conn *k = h->data;
    *b = uv_buf_init((char *)k->chunk, READ_CHUNK);
}

/* Handle the whole frames of k->rbuf in order, for at most READ_TURN_NS
 * of this thread's time (at least one frame): the loop also runs Raft, its
 * timers and the other connections, and a burst of heavy frames (a moved
 * session's messages, applied by the frame handler) would otherwise hold
 * them all for as long as it takes (issues 9 and 10: 8 to 17 s, a leader
 * lost). What is left waits in rbuf, the connection not read meanwhile (TCP
 * pushes back on its sender), for the loop's next turn (on_resume). */
static void conn_parse(struct conn *k)
{
    struct chan *c = k->c;
    uint64_t t0 = uv_hrtime();
    size_t off = 0;
    bool more = false;
    unsigned frames = 0, unclocked = 0;
    if (k->paused && k->from) /* bytes it brought, taken in turns */
        __atomic_store_n(&k->from->heard_ms, mono_ms(), __ATOMIC_RELAXED);
    while (!k->closing && k->rlen - off >= 4) {
        if (unclocked) {
            unclocked--;
        } else if (off) {
            uint64_t took = uv_hrtime() - t0;
            if (took >= READ_TURN_NS) {
                more = true;
                break;
            }
            /* The clock is read before each frame, except after Publish
             * frames that came cheap: at the rate of the turn so far, the
             * next ones (at most CLOCK_EVERY - 1) take a quarter of what is
             * left of it, and go without reading it (a read was about 5 %
             * of the cluster thread in a cross-node fan-in of small
             * messages; docs/performance.md). */
            uint64_t per = took / frames + 1;
            uint64_t n = (READ_TURN_NS - took) / 4 / per;
            unclocked = n < CLOCK_EVERY - 1 ? (unsigned)n : CLOCK_EVERY - 1;
        }
        const unsigned char *p = k->rbuf + off;
        size_t len = frame_len(p);
        if (len > c->o.max_frame) {
            refuse(k, "frame too large");
            return;
        }
        if (k->rlen - off - 4 < len)
            break;
        ProtobufCAllocator *al = arena_begin(&c->arena);
        /* a plain Publish without protobuf-c's generic decoder (it points
         * into rbuf, which stays as it is until the loop ends) */
        Starling__Chan__Frame *f = al ? chan_frame_unpack_publish(al, len, p + 4) : NULL;
        if (!f)
            f = starling__chan__frame__unpack(al, len, p + 4);
        off += 4 + len;
        frames++;
        if (!f || f->frame_case == STARLING__CHAN__FRAME__FRAME__NOT_SET) {
            if (f && !al)
                starling__chan__frame__free_unpacked(f, NULL);
            arena_end(&c->arena, al);
            refuse(k, "malformed frame");
            return;
        }
        if (f->frame_case != STARLING__CHAN__FRAME__FRAME_PUBLISH)
            unclocked = 0; /* another kind of frame may take long: the clock is read */
        handle_frame(k, f);
        if (!al)
            starling__chan__frame__free_unpacked(f, NULL);
        arena_end(&c->arena, al);
        if (k->attached && !k->closing) { /* a reader's frame: the reader may go on once
                                           * all are (never again once it closes) */
            __atomic_fetch_sub(&k->backlog, 4 + len, __ATOMIC_RELEASE);
            __atomic_fetch_sub(&k->unhandled, 1, __ATOMIC_RELEASE);
        }
    }
    if (k->closing)
        return;
    memmove(k->rbuf, k->rbuf + off, k->rlen - off);
    k->rlen -= off;
    /* Give back memory after a large frame. */
    if (!more && k->rcap > 4 * READ_CHUNK && k->rlen < READ_CHUNK) {
        unsigned char *p = realloc(k->rbuf, READ_CHUNK);
        if (p) {
            k->rbuf = p;
            k->rcap = READ_CHUNK;
        }
    }
    /* (an attached connection is read by its reader, not by the loop) */
    if (more && !k->paused) {
        k->paused = true;
        if (!k->attached)
            uv_read_stop((uv_stream_t *)&k->tcp);
        if (!c->stopping)
            uv_idle_start(&c->resume, on_resume);
    } else if (!more && k->paused) {
        k->paused = false;
        if (k->eof_pending)
            conn_close(k);
        else if (!k->attached && uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0)
            conn_close(k);
    }
    if (k->attached)
        reader_catch_up(k);
}

/* ---- readers (see the top) ---- */

/* Append n bytes to k->rq (caller holds c->rq_mu). */
static int rq_append(struct conn *k, const unsigned char *p, size_t n)
{
    return bytes_append(&k->rq, &k->rq_len, &k->rq_cap, p, n);
}

static void reader_closed(uv_handle_t *h);
static void conn_closed(uv_handle_t *h);

/* The reader stops: its handles close, then it hands the connection back
 * (reader_closed). Its thread. */
static void reader_end(struct chan_reader *r, bool eof)
{
    if (r->ending)
        return;
    r->ending = true;
    r->eof = eof;
    uv_poll_stop(&r->poll);
    uv_close((uv_handle_t *)&r->poll, reader_closed);
    uv_close((uv_handle_t *)&r->async, reader_closed);
}

/* Hand k back to the loop with what the reader holds: after this, the
 * reader touches nothing of k or c (the loop may free them). */
static void reader_back(struct chan_reader *r, bool eof)
{
    struct conn *k = r->k;
    struct chan *c = k->c;
    pthread_mutex_lock(&c->rq_mu);
    if (r->len && rq_append(k, r->buf, r->len) < 0)
        eof = true; /* bytes lost: the connection cannot go on */
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
    k->rd_alive = false;
    k->back = true;
    k->rd_eof = eof;
    uv_async_send(&c->rq_async);
    pthread_mutex_unlock(&c->rq_mu);
}

static void reader_closed(uv_handle_t *h)
{
    struct chan_reader *r = h->data;
    if (--r->open)
        return;
    struct chan *c = r->k->c;
    free(r->arena.buf);
    r->arena.buf = NULL;
    if (c->o.reader_done)
        c->o.reader_done(c->o.reader_ud, r);
    reader_back(r, r->eof);
}

/* Give frames to the loop: n bytes holding `frames` whole frames (or the
 * rest of a connection that ends). Reader thread. */
static int reader_give(struct chan_reader *r, const unsigned char *p, size_t n, size_t frames)
{
    struct conn *k = r->k;
    struct chan *c = k->c;
    pthread_mutex_lock(&c->rq_mu);
    int rc = rq_append(k, p, n);
    if (rc == 0) {
        /* counted before the loop can take them */
        __atomic_fetch_add(&k->unhandled, frames, __ATOMIC_RELAXED);
        __atomic_fetch_add(&k->backlog, n, __ATOMIC_RELAXED);
        if (!k->rq_woken) {
            k->rq_woken = true;
            uv_async_send(&c->rq_async);
        }
        if (__atomic_load_n(&k->backlog, __ATOMIC_RELAXED) > READER_BACKLOG_BYTES)
            k->stalled = true;
    }
    bool stall = k->stalled;
    pthread_mutex_unlock(&c->rq_mu);
    if (stall)
        uv_poll_stop(&r->poll); /* until the loop is down to half (reader_catch_up) */
    return rc;
}

/* The whole frames of r->buf: the reader's own while nothing is left for
 * the loop, the rest the loop's. */
static void reader_parse(struct chan_reader *r)
{
    struct conn *k = r->k;
    struct chan *c = k->c;
    size_t off = 0;
    bool failed = false;
    while (r->len - off >= 4) {
        const unsigned char *p = r->buf + off;
        size_t len = frame_len(p);
        if (len > c->o.max_frame) {
            /* the loop refuses it (it gets the bytes with the connection) */
            break;
        }
        if (r->len - off - 4 < len)
            break;
        if (__atomic_load_n(&k->unhandled, __ATOMIC_ACQUIRE) == 0) {
            ProtobufCAllocator *al = arena_begin(&r->arena);
            Starling__Chan__Frame *f = al ? chan_frame_unpack_publish(al, len, p + 4) : NULL;
            bool here = f && c->o.reader_fast(c->o.reader_ud, f);
            if (here)
                c->o.reader_frame(c->o.reader_ud, k->remote, f);
            arena_end(&r->arena, al);
            if (here) {
                off += 4 + len;
                continue;
            }
        }
        /* this frame and every whole one after it: the loop's */
        size_t end = off, frames = 0;
        while (r->len - end >= 4) {
            const unsigned char *q = r->buf + end;
            size_t l = frame_len(q);
            if (l > c->o.max_frame || r->len - end - 4 < l)
                break;
            end += 4 + l;
            frames++;
        }
        if (reader_give(r, r->buf + off, end - off, frames) < 0) {
            failed = true;
            break;
        }
        off = end;
    }
    memmove(r->buf, r->buf + off, r->len - off);
    r->len -= off;
    if (r->cap > 8 * READ_CHUNK && r->len < READ_CHUNK) { /* after a large frame */
        unsigned char *q = realloc(r->buf, 2 * READ_CHUNK);
        if (q) {
            r->buf = q;
            r->cap = 2 * READ_CHUNK;
        }
    }
    if (failed) {
        reader_end(r, true); /* out of memory: the connection closes */
    } else if (r->len >= 4) {
        size_t len = frame_len(r->buf);
        if (len > c->o.max_frame)
            reader_end(r, false); /* the loop refuses it */
    }
}

static void reader_on_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    HOPTRACE_MARK(HOP_CHAN_READ);
    struct chan_reader *r = h->data;
    struct conn *k = r->k;
    if (r->ending)
        return;
    if (status < 0) {
        reader_end(r, true);
        return;
    }
    if (r->cap - r->len < READ_CHUNK) {
        size_t cap = r->cap ? r->cap : 2 * READ_CHUNK;
        while (cap - r->len < READ_CHUNK)
            cap *= 2;
        unsigned char *p = realloc(r->buf, cap);
        if (!p) {
            reader_end(r, true);
            return;
        }
        r->buf = p;
        r->cap = cap;
    }
    ssize_t n = read(r->fd, r->buf + r->len, READ_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        reader_end(r, true);
        return;
    }
    if (k->from) /* once per read, not per frame */
        __atomic_store_n(&k->from->heard_ms, mono_ms(), __ATOMIC_RELAXED);
    r->len += (size_t)n;
    reader_parse(r);
}

static void reader_on_async(uv_async_t *h)
{
    struct chan_reader *r = h->data;
    struct conn *k = r->k;
    struct chan *c = k->c;
    if (r->ending)
        return;
    pthread_mutex_lock(&c->rq_mu);
    bool release = k->release, resume = k->resume;
    k->resume = false;
    pthread_mutex_unlock(&c->rq_mu);
    if (release)
        reader_end(r, false);
    else if (resume && uv_poll_start(&r->poll, UV_READABLE, reader_on_poll) != 0)
        reader_end(r, true);
}

void chan_reader_start(struct chan_reader *r, uv_loop_t *loop)
{
    struct conn *k = r->k;
    struct chan *c = k->c;
    if (!loop) {
        reader_back(r, false); /* declined: nothing was read */
        return;
    }
    if (uv_poll_init(loop, &r->poll, r->fd) != 0) {
        if (c->o.reader_done)
            c->o.reader_done(c->o.reader_ud, r);
        reader_back(r, false);
        return;
    }
    r->poll.data = r;
    r->open = 1;
    if (uv_async_init(loop, &r->async, reader_on_async) != 0) {
        r->ending = true;
        uv_close((uv_handle_t *)&r->poll, reader_closed);
        return;
    }
    r->async.data = r;
    r->open = 2;
    pthread_mutex_lock(&c->rq_mu);
    k->rd_alive = true;
    bool release = k->release;
    pthread_mutex_unlock(&c->rq_mu);
    if (release || uv_poll_start(&r->poll, UV_READABLE, reader_on_poll) != 0)
        reader_end(r, release ? false : true);
}

void chan_reader_stop(struct chan_reader *r)
{
    reader_end(r, false);
}

/* The loop: after handling a reader's frames, let it read again once the
 * backlog is down to half. */
static void reader_catch_up(struct conn *k)
{
    struct chan *c = k->c;
    pthread_mutex_lock(&c->rq_mu);
    if (k->stalled && __atomic_load_n(&k->backlog, __ATOMIC_ACQUIRE) <= READER_BACKLOG_BYTES / 2) {
        k->stalled = false;
        k->resume = true;
        if (k->rd_alive)
            uv_async_send(&k->rd.async);
    }
    pthread_mutex_unlock(&c->rq_mu);
}

/* A ready incoming connection goes to a reader (chan_options.reader_attach)
 * when nothing of it is left to handle here. Loop thread. */
static void reader_attach(struct conn *k)
{
    struct chan *c = k->c;
    uv_os_fd_t fd;
    if (!c->o.reader_attach || k->no_reader || k->attached || k->state != IN_READY || !k->from ||
        k->closing || k->paused || k->rlen || c->stopping ||
        uv_fileno((uv_handle_t *)&k->tcp, &fd) != 0)
        return;
    k->no_reader = true;
    uv_read_stop((uv_stream_t *)&k->tcp);
    k->attached = true;
    c->n_attached++;
    memset(&k->rd, 0, sizeof k->rd);
    k->rd.k = k;
    k->rd.fd = fd;
    __atomic_store_n(&k->unhandled, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&k->backlog, 0, __ATOMIC_RELAXED);
    if (c->o.reader_attach(c->o.reader_ud, k->remote, &k->rd) != 0) {
        k->attached = false; /* not now: offered again after the next read */
        k->no_reader = false;
        c->n_attached--;
        if (uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0)
            conn_close(k);
    }
}

/* The loop: a reader's frames, or the connection handed back. */
static void reader_take(struct conn *k)
{
    struct chan *c = k->c;
    pthread_mutex_lock(&c->rq_mu);
    unsigned char *q = k->rq;
    size_t qlen = k->rq_len, qcap = k->rq_cap;
    bool back = k->back, eof = k->rd_eof;
    k->rq = NULL;
    k->rq_len = k->rq_cap = 0;
    k->rq_woken = false;
    k->back = false;
    pthread_mutex_unlock(&c->rq_mu);
    if (!k->rlen && q) { /* (mostly) */
        free(k->rbuf);
        k->rbuf = q;
        k->rlen = qlen;
        k->rcap = qcap;
    } else {
        if (qlen && bytes_append(&k->rbuf, &k->rlen, &k->rcap, q, qlen) < 0)
            conn_close(k); /* frames lost: the connection cannot go on */
        free(q);
    }
    if (back) {
        k->attached = false;
        c->n_attached--;
        if (c->stopping && !c->n_attached && !c->rq_closed) {
            c->rq_closed = true;
            uv_close((uv_handle_t *)&c->rq_async, handle_closed);
        }
    }
    if (k->closing) {
        if (back) /* conn_close waited for the reader */
            uv_close((uv_handle_t *)&k->tcp, conn_closed);
        return;
    }
    bool was_paused = k->paused;
    if (k->rlen && !k->paused)
        conn_parse(k);
    if (!back || k->closing)
        return;
    if (eof) {
        if (k->paused)
            k->eof_pending = true; /* its frames first (conn_parse closes it) */
        else
            conn_close(k);
    } else if (!was_paused && !k->paused &&
               uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0)
        conn_close(k);
}

static void on_rq(uv_async_t *a)
{
    struct chan *c = a->data;
    /* (connections are freed only in their close callbacks) */
    for (struct conn *k = c->incoming; k; k = k->next)
        if (k->attached)
            reader_take(k);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    HOPTRACE_MARK(HOP_CHAN_READ);
    struct conn *k = s->data;
    if (n < 0) {
        conn_close(k);
        return;
    }
    if (n == 0)
        return;
    if (!k->from && k->state == IN_READY) {
        conn_link_from(k); /* its node became a peer after the handshake */
        if (k->from)
            log_debug("channel: the connection from %016llx counts as heard from now on (its "
                      "node became a peer after the handshake)",
                      (unsigned long long)k->remote);
    }
    if (k->from) /* once per read, not per frame */
        __atomic_store_n(&k->from->heard_ms, mono_ms(), __ATOMIC_RELAXED);
    if (bytes_append(&k->rbuf, &k->rlen, &k->rcap, (const unsigned char *)b->base, (size_t)n) < 0) {
        conn_close(k);
        return;
    }
    conn_parse(k);
    reader_attach(k);
}

/* The idle phase of the loop: the connections with frames left from their
 * last turn take another. Runs once per loop turn while one is left, with
 * the loop's timers and I/O (Raft's too) in between. */
static void on_resume(uv_idle_t *h)
{
    struct chan *c = h->data;
    /* gathered first: a frame's handler may add peers; connections are
     * freed only in their close callbacks, never during this turn */
    struct conn *ks[2 * 64];
    unsigned n = 0;
    for (struct peer *p = c->peers; p && n < sizeof ks / sizeof ks[0]; p = p->next)
        if (p->conn && p->conn->paused)
            ks[n++] = p->conn;
    for (struct conn *k = c->incoming; k && n < sizeof ks / sizeof ks[0]; k = k->next)
        if (k->paused)
            ks[n++] = k;
    for (unsigned i = 0; i < n; i++)
        conn_parse(ks[i]);
    bool left = false;
    for (struct peer *p = c->peers; p && !left; p = p->next)
        left = p->conn && p->conn->paused && !p->conn->closing;
    for (struct conn *k = c->incoming; k && !left; k = k->next)
        left = k->paused && !k->closing;
    if (!left)
        uv_idle_stop(h);
}

/* ---- connections ---- */ /* ---- connections ---- */

static void schedule_reconnect(struct peer *p);

static void conn_closed(uv_handle_t *h)
{
    struct conn *k = h->data;
    struct chan *c = k->c;
    struct peer *p = k->peer;
    if (p) {
        p->conn = NULL;
        pthread_mutex_lock(&c->mu);
        p->st.connected = false;
        pthread_mutex_unlock(&c->mu);
        if (!c->stopping && !p->removed)
            schedule_reconnect(p);
    } else {
        for (struct conn **pp = &c->incoming; *pp; pp = &(*pp)->next)
            if (*pp == k) {
                *pp = k->next;
                break;
            }
    }
    free(k->rbuf);
    free(k->rq);
    free(k);
    c->open--;
    maybe_done(c);
}

static void conn_close(struct conn *k)
{
    if (k->closing)
        return;
    k->closing = true;
    struct peer *p = k->peer;
    if (p) {
        /* no other thread writes to the socket from now on: it is closed
         * (and its number reused) only after a write in progress ended */
        struct chan *c = k->c;
        pthread_mutex_lock(&c->mu);
        if (p->conn == k) {
            p->fd = -1;
            while (p->direct)
                pthread_cond_wait(&c->cv, &c->mu);
        }
        pthread_mutex_unlock(&c->mu);
    }
    if (k->attached) {
        /* its socket closes once its reader gave it back (reader_take) */
        struct chan *c = k->c;
        pthread_mutex_lock(&c->rq_mu);
        k->release = true;
        if (k->rd_alive)
            uv_async_send(&k->rd.async);
        pthread_mutex_unlock(&c->rq_mu);
        return;
    }
    uv_close((uv_handle_t *)&k->tcp, conn_closed);
}

static struct conn *conn_new(struct chan *c, struct peer *p, enum conn_state st)
{
    struct conn *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->c = c;
    k->peer = p;
    k->state = st;
    uv_tcp_init(c->o.loop, &k->tcp);
    k->tcp.data = k;
    c->open++;
    if (RAND_bytes(k->nonce, NONCE_LEN) != 1) {
        conn_close(k);
        return NULL;
    }
    return k;
}

static void on_connected(uv_connect_t *req, int status)
{
    struct conn *k = req->data;
    if (status != 0 || k->closing) {
        conn_close(k);
        return;
    }
    uv_tcp_nodelay(&k->tcp, 1);
    k->state = OUT_WAIT_HELLO;
    send_hello(k, false);
    if (!k->closing && uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0)
        conn_close(k);
}

static void dial(struct peer *p)
{
    struct chan *c = p->c;
    if (p->conn || c->stopping || p->removed)
        return;
    struct conn *k = conn_new(c, p, OUT_CONNECTING);
    if (!k) {
        schedule_reconnect(p);
        return;
    }
    p->conn = k;
    /* Dial from this node's own address, any port. */
    struct sockaddr_in src = c->self_sa;
    src.sin_port = 0;
    k->connect.data = k;
    if (uv_tcp_bind(&k->tcp, (const struct sockaddr *)&src, 0) != 0) {
        conn_close(k);
        return;
    }
    tcp_bounds_set(&k->tcp, true, "channel"); /* the bind made the socket */
    if (uv_tcp_connect(&k->connect, &k->tcp, (const struct sockaddr *)&p->sa, on_connected) != 0)
        conn_close(k);
}

static void on_timer(uv_timer_t *t)
{
    /* t->data is the chan (for handle_closed); the peer holds the timer. */
    dial((struct peer *)(void *)((char *)t - offsetof(struct peer, timer)));
}

static void schedule_reconnect(struct peer *p)
{
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (p->backoff_ms > BACKOFF_MAX_MS)
        p->backoff_ms = BACKOFF_MAX_MS;
    uv_timer_start(&p->timer, on_timer, p->backoff_ms, 0);
}

static void on_connection(uv_stream_t *server, int status);

static void on_accept_retry(uv_timer_t *t)
{
    struct chan *c = t->data;
    on_connection((uv_stream_t *)&c->listener, 0);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct chan *c = server->data;
    if (status != 0 || c->stopping)
        return;
    struct conn *k = conn_new(c, NULL, IN_WAIT_HELLO);
    if (!k) {
        /* Out of memory. libuv holds the connection it accepted and stops
         * listening until uv_accept takes it: left so, this node took no
         * connection ever again, and the nodes whose own connections to it
         * broke could no longer answer its proposals (its claims timed out
         * for good: test_forward.py's failing allocator). Taken later. */
        log_warn("cluster: forwarding channel: cannot take a connection now (out of memory): "
                 "tried again in %d ms",
                 ACCEPT_RETRY_MS);
        uv_timer_start(&c->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
        return;
    }
    k->next = c->incoming;
    c->incoming = k;
    if (uv_accept(server, (uv_stream_t *)&k->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0) {
        conn_close(k);
        return;
    }
    uv_tcp_nodelay(&k->tcp, 1);
    tcp_bounds_set(&k->tcp, false, "channel");
}

/* ---- the interface ---- */

int chan_start(struct chan **out, const struct chan_options *o, char *err, size_t errlen)
{
    *out = NULL;
    struct chan *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->o = *o;
    if (!c->o.max_queue_bytes)
        c->o.max_queue_bytes = 8u << 20;
    if (!c->o.max_frame)
        c->o.max_frame = 16u << 20;
    if (!o->loop || !o->self || !o->address || !o->cluster_name ||
        strlen(o->cluster_name) >= sizeof c->name ||
        (o->cluster_secret && strlen(o->cluster_secret) >= sizeof c->secret) ||
        strlen(o->address) >= sizeof c->address || parse_address(o->address, &c->self_sa)) {
        snprintf(err, errlen, "forwarding channel: bad options (address \"a.b.c.d:port\")");
        free(c);
        return -EINVAL;
    }
    snprintf(c->name, sizeof c->name, "%s", o->cluster_name);
    snprintf(c->secret, sizeof c->secret, "%s", o->cluster_secret ? o->cluster_secret : "");
    snprintf(c->self_name, sizeof c->self_name, "%s", o->self_name ? o->self_name : "");
    snprintf(c->address, sizeof c->address, "%s", o->address);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->rq_mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    uv_tcp_init(o->loop, &c->listener);
    c->listener.data = c;
    c->open++;
    int rc = uv_tcp_bind(&c->listener, (const struct sockaddr *)&c->self_sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&c->listener, 128, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "forwarding channel: listen on %s: %s", c->address, uv_strerror(rc));
        c->stopping = true;
        uv_close((uv_handle_t *)&c->listener, handle_closed);
        return rc;
    }
    uv_async_init(o->loop, &c->async, on_async);
    c->async.data = c;
    c->open++;
    uv_timer_init(o->loop, &c->accept_retry);
    c->accept_retry.data = c;
    c->open++;
    uv_idle_init(o->loop, &c->resume);
    c->resume.data = c;
    c->open++;
    uv_async_init(o->loop, &c->rq_async, on_rq);
    c->rq_async.data = c;
    c->open++;
    *out = c;
    return 0;
}

void chan_stop(struct chan *c, void (*done)(void *ud), void *ud)
{
    c->done = done;
    c->done_ud = ud;
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_mutex_unlock(&c->mu);
    uv_close((uv_handle_t *)&c->listener, handle_closed);
    uv_close((uv_handle_t *)&c->async, handle_closed);
    uv_close((uv_handle_t *)&c->accept_retry, handle_closed);
    uv_close((uv_handle_t *)&c->resume, handle_closed);
    if (!c->n_attached) { /* else once the last reader gave its connection back */
        c->rq_closed = true;
        uv_close((uv_handle_t *)&c->rq_async, handle_closed);
    }
    for (struct peer *p = c->peers; p; p = p->next) {
        if (p->conn)
            conn_close(p->conn);
        if (!uv_is_closing((uv_handle_t *)&p->timer))
            uv_close((uv_handle_t *)&p->timer, handle_closed);
    }
    for (struct conn *k = c->incoming; k; k = k->next)
        conn_close(k);
}

int chan_peer_add(struct chan *c, uint64_t node, const char *address)
{
    struct sockaddr_in sa;
    if (!node || !address || strlen(address) >= 64 || parse_address(address, &sa))
        return -EINVAL;
    for (struct peer *p = c->peers; p; p = p->next)
        if (p->node == node && !p->removed)
            return -EEXIST;
    struct peer *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->node = node;
    p->c = c;
    snprintf(p->address, sizeof p->address, "%s", address);
    p->sa = sa;
    p->qtail = &p->qhead;
    p->fd = -1;
    uv_timer_init(c->o.loop, &p->timer);
    p->timer.data = c; /* handle_closed needs the chan */
    c->open++;
    pthread_mutex_lock(&c->mu);
    p->next = c->peers;
    c->peers = p;
    pthread_mutex_unlock(&c->mu);
    dial(p);
    return 0;
}

int chan_peer_remove(struct chan *c, uint64_t node)
{
    pthread_mutex_lock(&c->mu);
    struct peer *p = c->peers;
    while (p && (p->node != node || p->removed))
        p = p->next;
    if (p) {
        p->removed = true;
        while (p->qhead) {
            struct qframe *q = p->qhead;
            p->qhead = q->next;
            p->qbytes -= q->len;
            p->qframes--;
            free(q);
        }
        p->qtail = &p->qhead;
        p->head_off = 0;
    }
    pthread_mutex_unlock(&c->mu);
    if (!p)
        return -ENOENT;
    uv_timer_stop(&p->timer);
    if (p->conn)
        conn_close(p->conn);
    /* The struct stays on the list (marked removed) until chan_stop: other
     * threads may still be looking it up under the mutex. */
    return 0;
}

int chan_send(struct chan *c, uint64_t node, const void *frame, size_t len)
{
    return chan_send_flow(c, node, frame, len, NULL);
}

int chan_send_flow(struct chan *c, uint64_t node, const void *frame, size_t len, bool *busy)
{
    if (len > c->o.max_frame)
        return -EMSGSIZE;
    struct qframe *q = malloc(sizeof *q + 4 + len);
    if (!q)
        return -ENOMEM;
    q->next = NULL;
    q->len = 4 + len;
    q->data[0] = (unsigned char)(len >> 24);
    q->data[1] = (unsigned char)(len >> 16);
    q->data[2] = (unsigned char)(len >> 8);
    q->data[3] = (unsigned char)len;
    memcpy(q->data + 4, frame, len);
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    struct peer *p = c->peers;
    while (p && (p->node != node || p->removed))
        p = p->next;
    if (c->stopping) {
        rc = -ECANCELED;
    } else if (!p) {
        rc = -ENOENT;
    } else if (p->qbytes + q->len > c->o.max_queue_bytes) {
        uint64_t now = mono_ms();
        p->st.dropped++;
        rc = -ENOBUFS;
        peer_note_stall(p, now);
        if (busy && peer_pressing(p, now))
            *busy = true;
    } else {
        if (!p->qbytes)
            p->drained_ms = mono_ms(); /* it had taken everything */
        *p->qtail = q;
        p->qtail = &q->next;
        p->qbytes += q->len;
        p->qframes++;
        if (p->qbytes > c->o.max_queue_bytes / 2) {
            /* above the high-water mark: the sender should wait while the
             * peer drains (not while it stalls: then overflow is dropped) */
            uint64_t now = mono_ms();
            if (!p->busy && now - p->drained_ms <= CHAN_STALL_MS)
                p->busy = true;
            peer_note_stall(p, now);
            if (busy && peer_pressing(p, now))
                *busy = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (rc) {
        free(q);
        return rc;
    }
    /* a thread that calls chan_flush_here before it sleeps writes it */
    if (!c->o.defer || !c->o.defer(c->o.defer_ud))
        uv_async_send(&c->async);
    return 0;
}

/* Write p's queue from this thread: one sendmsg of up to 64 frames at
 * a time, until DIRECT_WRITE_BYTES are written, the queue is empty or the
 * socket is full. Called with c->mu held
 * and p->direct set; releases the lock around the writes. What is left goes
 * back to the head of the queue (frames queued meanwhile stay behind it).
 * Returns whether a busy peer drained (on_drained is due). */
static bool write_direct(struct chan *c, struct peer *p)
{
    size_t off = p->head_off;
    struct qframe *list = queue_take(p, DIRECT_WRITE_FRAMES, DIRECT_WRITE_BYTES, NULL);
    int fd = p->fd;
    pthread_mutex_unlock(&c->mu);
    struct iovec iov[64];
    size_t freed = 0, sent = 0;
    while (list) {
        size_t n = 0, total = 0;
        for (struct qframe *q = list; q && n < sizeof iov / sizeof iov[0]; q = q->next, n++) {
            iov[n].iov_base = q->data + (n ? 0 : off);
            iov[n].iov_len = q->len - (n ? 0 : off);
            total += iov[n].iov_len;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0)
            break; /* full, or broken: the loop writes it (and sees the error) */
        size_t left = (size_t)w;
        while (list && left >= list->len - off) {
            struct qframe *q = list;
            left -= q->len - off;
            off = 0;
            list = q->next;
            freed += q->len;
            sent++;
            free(q);
        }
        off += left;
        if ((size_t)w < total)
            break; /* the socket took part of it: full */
    }
    pthread_mutex_lock(&c->mu);
    p->direct = false;
    p->qbytes -= freed;
    p->qframes -= sent;
    p->st.sent += sent;
    p->st.bytes_sent += freed;
    bool drained = false;
    if (freed || off)
        p->drained_ms = mono_ms(); /* it took bytes */
    if (p->busy && p->qbytes <= c->o.max_queue_bytes / 2) {
        p->busy = false;
        drained = true;
    }
    if (list)
        queue_put_back(p, list, off);
    pthread_cond_broadcast(&c->cv);
    return drained;
}

void chan_flush_here(struct chan *c)
{
    bool wake = false, drained = false;
    HOPTRACE_STAMP_KEEP(HOP_CHAN_WRITTEN, HOP_CHAN_FLUSH);
    pthread_mutex_lock(&c->mu);
    for (struct peer *p = c->peers; p && !c->stopping; p = p->next) {
        if (!p->qhead || p->removed)
            continue;
        if (p->fd < 0 || p->loop_writing || p->direct) {
            wake = true; /* the loop writes it (when the connection is up) */
            continue;
        }
        p->direct = true;
        drained |= write_direct(c, p);
        if (p->qhead)
            wake = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (wake)
        HOPTRACE_STAMP_AS(HOP_CHAN_WRITTEN, HOP_CHAN_LOOP);
    else
        HOPTRACE_STAMP(HOP_CHAN_WRITTEN);
    if (wake)
        uv_async_send(&c->async);
    if (drained && c->o.on_drained)
        c->o.on_drained(c->o.ud);
}

uint64_t chan_heard_ms(struct chan *c, uint64_t node)
{
    uint64_t t = 0;
    pthread_mutex_lock(&c->mu);
    for (struct peer *p = c->peers; p; p = p->next)
        if (p->node == node && !p->removed)
            t = __atomic_load_n(&p->heard_ms, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&c->mu);
    return t;
}

int chan_peer_stats(struct chan *c, uint64_t node, struct chan_peer_stats *out)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&c->mu);
    for (struct peer *p = c->peers; p; p = p->next)
        if (p->node == node && !p->removed) {
            *out = p->st;
            out->queued_bytes = p->qbytes;
            out->queued_frames = p->qframes;
            rc = 0;
        }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void chan_poll(struct chan *c)
{
    uint64_t now = mono_ms();
    for (struct peer *p = c->peers; p; p = p->next) {
        struct conn *k = p->conn;
        size_t wq = k && k->writing ? uv_stream_get_write_queue_size((uv_stream_t *)&k->tcp) : 0;
        if (wq && wq < p->last_wq) { /* a write in flight moved on */
            pthread_mutex_lock(&c->mu);
            p->drained_ms = now;
            pthread_mutex_unlock(&c->mu);
        }
        p->last_wq = wq;
    }
}

bool chan_busy(struct chan *c)
{
    bool any = false;
    uint64_t now = mono_ms();
    pthread_mutex_lock(&c->mu);
    for (struct peer *p = c->peers; p && !any; p = p->next)
        any = peer_pressing(p, now);
    pthread_mutex_unlock(&c->mu);
    return any;
}

uint64_t chan_refused(struct chan *c)
{
    return __atomic_load_n(&c->refused, __ATOMIC_RELAXED);
}
