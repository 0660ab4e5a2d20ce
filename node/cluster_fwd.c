/*
 * cluster_fwd.c - the outbox, resend and acknowledgement of forwards (see
 * cluster_fwd.h, docs/cluster.md "The forwarding channel").
 *
 * Origin. struct fwd_out per destination node: under its mutex the seq
 * counter, the last seq handed to the channel (`sent`, the next frame's
 * prev), the replay cursor, the highest acknowledged seq, and an in-memory
 * index of the outbox rows (seq, size, state: pending until the
 * publisher's batch commits, committed, or failed), which counts the rows
 * for the bounds and tells the replay which rows it may read from the
 * store (a pending row is waited for, a failed one skipped). The stored
 * value is the encoded Publish (with its seq); `prev` is appended when the
 * frame is sent (fields of a protobuf message may come in any order).
 *
 * Receiver. struct fwd_in per origin: the highest seq applied (cluster
 * thread), the highest committed (writer thread), the last one
 * acknowledged (poll).
 */
#include "cluster_fwd.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "cluster.h"
#include "hoptrace.h"
#include "log.h"
#include "msg.h"
#include "persist.h"
#include "session.h"
#include "store.h"

#define FWD_MAX_PEERS 64
#define FWD_ACK_TIMEOUT_MS 3000 /* no acknowledgement while some are due: replay */
#define FWD_RESEND_EVERY_MS 200 /* a receiver asks again at most this often */
#define FWD_REPLAY_BATCH 256    /* rows read per store transaction */
#define FWD_REPLAY_BUDGET 8192  /* rows sent per peer per poll */

enum row_state { ROW_PENDING, ROW_COMMITTED, ROW_FAILED };

/* The first byte of an outbox row that holds a moved session's frame (an
 * encoded Publish begins with 0x08: its field 1, which protobuf-c packs
 * first). */
#define ROW_SESSION_STATE 0x01
#define ROW_SESSION_MESSAGES 0x02

struct row {
    uint64_t seq;
    uint32_t len;
    uint8_t state;
    bool lose;    /* tests: taken as sent, never sent (STARLING_TEST_SESSION_FRAME_LOSE) */
    uint8_t *buf; /* the row's bytes until it is sent live after its commit (or NULL) */
};

struct fwd_out {
    struct cluster_fwd *f;
    uint64_t node;
    pthread_mutex_t mu;
    uint64_t next;        /* mu: last seq taken */
    uint64_t sent;        /* mu: last seq handed to the channel (next prev) */
    uint64_t cursor;      /* mu: replay: last seq handled (sent or skipped) */
    uint64_t acked;       /* mu: highest seq the node acknowledged */
    bool replay;          /* mu */
    uint64_t replay_gen;  /* mu: replays started (a scan of an older one stops) */
    bool slow;            /* mu: above the pause mark (counted in fwd_slow_peers) */
    bool pressing;        /* mu: the last send found the node's channel queue pressing */
    uint64_t progress_ms; /* mu: when acked last moved, or rows appeared */
    struct row *ring;     /* mu: the outbox rows, ascending seq */
    size_t cap, head, n;
    uint64_t bytes;        /* mu: their sizes */
    uint64_t deleted;      /* poll: highest seq range-deleted */
    uint64_t connects;     /* poll: the channel's handshakes seen */
    uint64_t replays;      /* mu: live sends the channel refused */
    uint64_t replays_seen; /* poll: replays logged */
    uint64_t log_ms;       /* poll: last logged */
};

struct fwd_in {
    uint64_t origin;
    uint64_t hwm;               /* cluster thread: highest seq applied */
    uint64_t resend_ms;         /* cluster thread: last resend asked */
    _Atomic uint64_t committed; /* highest seq whose batch committed */
    atomic_bool ack_due;        /* a duplicate came: acknowledge again */
    _Atomic uint64_t pub_max;   /* highest publish number begun (cluster_fwd_pubs_seen) */
    uint64_t acked;             /* poll: last acknowledged */
};

struct cluster_fwd {
    struct broker *b;
    struct cluster *c;
    uint64_t self;
    atomic_bool ready;  /* attached to the store */
    bool durable;       /* there is a store */
    uint64_t base;      /* boot << 32: seqs of this run start above it */
    pthread_mutex_t mu; /* adding peers */
    struct fwd_out *outs[FWD_MAX_PEERS];
    atomic_uint n_out;
    struct fwd_in *ins[FWD_MAX_PEERS];
    atomic_uint n_in;
    _Atomic uint64_t log_ms; /* rate limit of the refusal warning */
    unsigned lose_every;     /* tests: lose every Nth sequenced forward received */
    unsigned lose_count;     /* cluster thread */
    char *hold_path;         /* tests: forwards wait in the outbox while it exists */
    /* tests: the next SessionState / SessionMessages with messages is lost
     * on the way (STARLING_TEST_SESSION_FRAME_LOSE) */
    atomic_bool lose_state, lose_msgs;
    atomic_bool pubs_unknown; /* a forward's origin could not be noted (for good) */
    /* cluster_fwd_stop: the channel is going away; a commit hook that
     * comes after (the store's writer drains later) sends nothing */
    atomic_bool stopped;
};

/* ---- the row index ------------------------------------------------------- */

static struct row *ring_at(struct fwd_out *o, size_t i)
{
    return &o->ring[(o->head + i) % o->cap];
}

static int ring_push(struct fwd_out *o, uint64_t seq, uint32_t len, uint8_t state, uint8_t *buf)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        struct row *v = malloc(cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        for (size_t i = 0; i < o->n; i++)
            v[i] = *ring_at(o, i);
        free(o->ring);
        o->ring = v;
        o->cap = cap;
        o->head = 0;
    }
    *ring_at(o, o->n) = (struct row){seq, len, state, false, buf};
    o->n++;
    o->bytes += len;
    return 0;
}

/* Index of the first row with a seq above seq (o->n if none). */
static size_t ring_after(struct fwd_out *o, uint64_t seq)
{
    size_t lo = 0, hi = o->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ring_at(o, mid)->seq <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether o is above its pause mark; keeps broker stats.fwd_slow_peers.
 * Caller holds o->mu. */
static void out_update_slow(struct cluster_fwd *f, struct fwd_out *o)
{
    const struct config *cfg = &f->b->cfg;
    if (!o->slow && (o->n >= cfg->cluster_outbox_messages / 4 * 3 ||
                     o->bytes >= cfg->cluster_outbox_bytes / 4 * 3)) {
        o->slow = true;
        atomic_fetch_add(&f->b->stats.fwd_slow_peers, 1);
    } else if (o->slow && o->n < cfg->cluster_outbox_messages / 2 &&
               o->bytes < cfg->cluster_outbox_bytes / 2) {
        o->slow = false;
        atomic_fetch_sub(&f->b->stats.fwd_slow_peers, 1);
    }
}

/* A row's bytes for its live send go (sent, failed, or from the store
 * now). Caller holds o->mu. */
static void row_buf_free(struct row *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* Rows up to o->acked leave the index. Caller holds o->mu. */
static void out_pop_acked(struct cluster_fwd *f, struct fwd_out *o)
{
    while (o->n && o->ring[o->head].seq <= o->acked) {
        o->bytes -= o->ring[o->head].len;
        row_buf_free(&o->ring[o->head]);
        o->head = (o->head + 1) % o->cap;
        o->n--;
    }
    out_update_slow(f, o);
}

/* The rows' bytes kept for their live sends go: the rows come from the
 * store now (o->replay). Caller holds o->mu. */
static void ring_bufs_free(struct fwd_out *o)
{
    for (size_t i = 0; i < o->n; i++)
        row_buf_free(ring_at(o, i));
}

static int frame_send(struct cluster_fwd *f, uint64_t node, const void *row, size_t len,
                      uint64_t prev, bool *busy);

/* Live: send the committed rows after the cursor, in order, up to the
 * first one whose batch is not decided yet; a failed one (its publish was
 * refused) is never sent. A row goes out only once its origin's batch
 * committed: a destination never delivers what the origin did not store
 * (its publisher refused, or not acknowledged when the origin died before
 * the commit: the publisher sends it again, elsewhere). Caller holds
 * o->mu. */
static void out_send_committed(struct fwd_out *o)
{
    size_t i = ring_after(o, o->cursor);
    while (!o->replay && i < o->n) {
        struct row *r = ring_at(o, i);
        if (r->state == ROW_PENDING)
            break;
        if (r->state == ROW_FAILED) {
            o->cursor = r->seq;
            row_buf_free(r);
            i++;
            continue;
        }
        bool busy = false;
        if (r->buf && (r->lose || frame_send(o->f, o->node, r->buf, r->len, o->sent, &busy) == 0)) {
            /* (lost: as if handed to a connection that broke) */
            o->pressing = busy;
            o->sent = o->cursor = r->seq;
            row_buf_free(r);
            i++;
            continue;
        }
        /* the channel refused it (or its bytes are not here): from the
         * outbox, in order, by the replay */
        o->replay = true;
        o->cursor = o->sent;
        o->replays++;
        ring_bufs_free(o);
    }
}

/* Writer thread: the batch holding row seq of o is decided. */
static void row_done(void *ud, uint64_t seq, int status)
{
    struct fwd_out *o = ud;
    pthread_mutex_lock(&o->mu);
    size_t i = ring_after(o, seq - 1);
    if (i < o->n && ring_at(o, i)->seq == seq) {
        struct row *r = ring_at(o, i);
        r->state = status == 0 ? ROW_COMMITTED : ROW_FAILED;
        if (o->replay)
            row_buf_free(r);
    }
    out_send_committed(o);
    pthread_mutex_unlock(&o->mu);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- peers ---------------------------------------------------------------- */

static struct fwd_out *out_find(struct cluster_fwd *f, uint64_t node)
{
    unsigned n = atomic_load_explicit(&f->n_out, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        if (f->outs[i]->node == node)
            return f->outs[i];
    return NULL;
}

bool cluster_fwd_out_next(struct cluster_fwd *f, uint64_t node, uint64_t *next)
{
    *next = 0;
    /* before the load, the rows a SIGKILL left in the store are not in
     * memory yet: an empty outbox would say that everything went */
    if (!atomic_load(&f->ready))
        return false;
    struct fwd_out *o = out_find(f, node);
    if (!o)
        return true;
    pthread_mutex_lock(&o->mu);
    /* the last row that is to be sent (a failed one never is: its publish
     * was refused); none left: what the node acknowledged */
    *next = o->acked;
    for (size_t i = o->n; i > 0; i--)
        if (ring_at(o, i - 1)->state != ROW_FAILED) {
            *next = ring_at(o, i - 1)->seq;
            break;
        }
    pthread_mutex_unlock(&o->mu);
    return true;
}

int cluster_fwd_outbox(struct cluster_fwd *f, uint64_t node, uint64_t *msgs, uint64_t *bytes)
{
    struct fwd_out *o = out_find(f, node);
    *msgs = *bytes = 0;
    if (!o)
        return -ENOENT;
    pthread_mutex_lock(&o->mu);
    *msgs = o->n;
    *bytes = o->bytes;
    pthread_mutex_unlock(&o->mu);
    return 0;
}

static struct fwd_out *out_get(struct cluster_fwd *f, uint64_t node)
{
    struct fwd_out *o = out_find(f, node);
    if (o)
        return o;
    pthread_mutex_lock(&f->mu);
    o = out_find(f, node);
    unsigned n = atomic_load(&f->n_out);
    if (!o && n < FWD_MAX_PEERS && (o = calloc(1, sizeof(*o)))) {
        o->f = f;
        o->node = node;
        o->next = f->base;
        pthread_mutex_init(&o->mu, NULL);
        f->outs[n] = o;
        atomic_store_explicit(&f->n_out, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&f->mu);
    return o;
}

static struct fwd_in *in_find(struct cluster_fwd *f, uint64_t origin)
{
    unsigned n = atomic_load_explicit(&f->n_in, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        if (f->ins[i]->origin == origin)
            return f->ins[i];
    return NULL;
}

static struct fwd_in *in_get(struct cluster_fwd *f, uint64_t origin)
{
    struct fwd_in *in = in_find(f, origin);
    if (in)
        return in;
    pthread_mutex_lock(&f->mu);
    in = in_find(f, origin);
    unsigned n = atomic_load(&f->n_in);
    if (!in && n < FWD_MAX_PEERS && (in = calloc(1, sizeof(*in)))) {
        in->origin = origin;
        f->ins[n] = in;
        atomic_store_explicit(&f->n_in, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&f->mu);
    return in;
}

uint64_t cluster_fwd_in_applied(struct cluster_fwd *f, uint64_t origin)
{
    struct fwd_in *in = in_find(f, origin);
    return in ? in->hwm : 0;
}

/* ---- sending ---------------------------------------------------------------- */

static size_t varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        p[n++] = byte | (v ? 0x80 : 0);
    } while (v);
    return n;
}

/* Send the outbox row (or live frame) `row` as a Frame, with prev
 * appended: an encoded Publish (the Frame's field 3, prev its field 16), or
 * after a kind byte an encoded SessionState (ROW_SESSION_STATE: field 8,
 * prev 19) or SessionMessages (ROW_SESSION_MESSAGES: field 20, prev 7).
 * Returns cluster_send's answer; *busy (may be NULL) set when the node's
 * channel queue is busy while it drains (cluster_send_flow). */
#ifndef NDEBUG
/* STARLING_TEST_FWD_HOLD: whether the file exists and names node (its id
 * in hex) or nothing (every node). */
static bool fwd_test_held(const char *path, uint64_t node)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    char buf[32] = "";
    bool any = !fgets(buf, sizeof(buf), fp) || buf[0] == '\n' || buf[0] == 0;
    fclose(fp);
    return any || strtoull(buf, NULL, 16) == node;
}
#endif

static int frame_send(struct cluster_fwd *f, uint64_t node, const void *row, size_t len,
                      uint64_t prev, bool *busy)
{
    if (atomic_load(&f->stopped))
        return -ECANCELED;
#ifndef NDEBUG
    if (f->hold_path && fwd_test_held(f->hold_path, node))
        return -ENOBUFS; /* as a full channel: the row waits in the outbox */
#endif
    const uint8_t *body = row;
    uint8_t frame_tag[2], prev_tag[2];
    size_t ftn = 1, ptn = 1;
    if (len && body[0] == ROW_SESSION_STATE) {
        frame_tag[0] = 0x42; /* field 8, length-delimited */
        prev_tag[0] = 0x98;  /* field 19, varint */
        prev_tag[1] = 0x01;
        ptn = 2;
        body++, len--;
    } else if (len && body[0] == ROW_SESSION_MESSAGES) {
        frame_tag[0] = 0xa2; /* field 20, length-delimited */
        frame_tag[1] = 0x01;
        ftn = 2;
        prev_tag[0] = 0x38; /* field 7, varint */
        body++, len--;
    } else {
        frame_tag[0] = 0x1a; /* Frame.publish: field 3, length-delimited */
        prev_tag[0] = 0x80;  /* field 16, varint */
        prev_tag[1] = 0x01;
        ptn = 2;
    }
    uint8_t tail[16];
    size_t tn = 0;
    if (prev) {
        memcpy(tail, prev_tag, ptn);
        tn = ptn + varint_put(tail + ptn, prev);
    }
    uint8_t head[16];
    memcpy(head, frame_tag, ftn);
    size_t hn = ftn + varint_put(head + ftn, len + tn);
    uint8_t stack[2048];
    size_t total = hn + len + tn;
    uint8_t *buf = total <= sizeof(stack) ? stack : malloc(total);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, head, hn);
    memcpy(buf + hn, body, len);
    memcpy(buf + hn + len, tail, tn);
    int r = cluster_send_flow(f->c, node, buf, total, busy);
    if (buf != stack)
        free(buf);
    return r;
}

static void warn_refused(struct cluster_fwd *f, uint64_t node, const char *why)
{
    uint64_t now = mono_ms(), last = atomic_load(&f->log_ms);
    if (now - last >= 1000 && atomic_compare_exchange_strong(&f->log_ms, &last, now))
        log_warn("cluster: a publish for node %016llx is refused: %s", (unsigned long long)node,
                 why);
}

/* At most once: QoS 0, or no store. A full channel queue drops it
 * (counted); a busy one pauses the publisher (flow->fwd_busy). */
static void send_unsequenced(struct cluster_fwd *f, uint64_t node, Starling__Chan__Publish *p,
                             struct pub_flow *flow)
{
    p->seq = 0;
    p->has_prev = false;
    size_t n = starling__chan__publish__get_packed_size(p);
    uint8_t stack[2048];
    uint8_t *buf = n <= sizeof(stack) ? stack : malloc(n);
    if (!buf)
        return;
    starling__chan__publish__pack(p, buf);
    HOPTRACE_PAYLOAD(HOP_CHAN_QUEUED, p->payload.data, p->payload.len);
    HOPTRACE_PEND(HOP_CHAN_WRITTEN, p->payload.data, p->payload.len);
    int r = frame_send(f, node, buf, n, 0, flow ? &flow->fwd_busy : NULL);
    if (buf != stack)
        free(buf);
    if (r < 0) {
        atomic_fetch_add(&f->b->stats.msgs_dropped, 1);
        atomic_fetch_add(&f->b->stats.dropped[r == -ENOBUFS ? BROKER_DROP_PEER_QUEUE_FULL
                                                            : BROKER_DROP_PEER_UNAVAILABLE],
                         1);
        if (p->qos == 0)
            atomic_fetch_add(&f->b->stats.fwd_qos0_dropped, 1);
        log_debug("cluster: a forward to %016llx is dropped: %s", (unsigned long long)node,
                  strerror(-r));
    }
}

void cluster_fwd_send(struct cluster_fwd *f, uint64_t node, Starling__Chan__Publish *p,
                      struct store_batch **bt, struct pub_flow *flow)
{
    struct broker *b = f->b;
    if (p->qos == 0 || !atomic_load(&f->ready) || !f->durable) {
        /* at most once: its other destinations may not get it either, so
         * an old copy there must not count on them (struct msg.also_to) */
        p->n_also_to = 0;
        send_unsequenced(f, node, p, flow);
        return;
    }
    struct fwd_out *o = out_get(f, node);
    struct store_batch *batch = persist_batch(b, bt);
    if (!o || !batch) {
        if (batch)
            store_batch_fail(batch, -ENOMEM);
        return;
    }
    p->has_prev = false;
    p->seq = UINT64_MAX; /* the largest size a seq takes */
    size_t max = starling__chan__publish__get_packed_size(p);
    uint8_t *buf = malloc(max);
    if (!buf) {
        store_batch_fail(batch, -ENOMEM);
        return;
    }
    /* the hook below sends the frame once the batch committed: it cannot
     * fail to be added */
    store_batch_hook_room(batch);
    const struct config *cfg = &b->cfg;
    pthread_mutex_lock(&o->mu);
    if (o->n >= cfg->cluster_outbox_messages || o->bytes + max > cfg->cluster_outbox_bytes) {
        pthread_mutex_unlock(&o->mu);
        free(buf);
        atomic_fetch_add(&b->stats.fwd_refused, 1);
        atomic_fetch_add(&b->stats.dropped[BROKER_DROP_OUTBOX_FULL], 1);
        if (flow)
            flow->refused = true;
        warn_refused(f, node, "its outbox is full");
        return;
    }
    uint64_t seq = ++o->next;
    p->seq = seq;
    size_t n = starling__chan__publish__pack(p, buf);
    if (ring_push(o, seq, (uint32_t)n, ROW_PENDING, o->replay ? NULL : buf) < 0) {
        o->next--;
        pthread_mutex_unlock(&o->mu);
        free(buf);
        store_batch_fail(batch, -ENOMEM);
        return;
    }
    if (o->n == 1)
        o->progress_ms = mono_ms();
    /* The row goes into the publisher's batch (a copy into the batch:
     * nothing is called back here), and the frame goes live once that
     * batch committed (row_done, with the bytes kept in the ring until
     * then). A batch that lost an operation (out of memory, here, in the
     * hook's room above, or before) fails as a whole, and its publish is
     * refused: its frame is never sent (the destination would deliver a
     * refused message), and the replay skips it. Before, the frame went
     * live here, before the commit: a publish refused by its commit (a full
     * disk), or whose node died before it, was delivered by the nodes it
     * went to, and its publisher, unacknowledged, sent it again. */
    bool put = store_outbox_put(batch, node, seq, buf, n) == 0;
    bool kept = !o->replay;
    out_update_slow(f, o);
    if (o->slow && flow)
        flow->fwd_slow = true;
    /* its channel queue above the high-water mark while the node drains,
     * as the last send to it found (without the channel's lock on every
     * forward): the publisher waits (conn_flow.c, which asks the channel
     * again before it pauses, so a mark that is out of date pauses
     * nobody; one that comes late pauses the next publish) */
    if (o->pressing && flow)
        flow->fwd_busy = true;
    pthread_mutex_unlock(&o->mu);
    if (log_get_level() >= LOG_LEVEL_DEBUG) {
        char tag[MSG_TAG_LEN];
        log_debug("cluster: forward %llu to %016llx (publish %llu, '%s')%s",
                  (unsigned long long)seq, (unsigned long long)node,
                  (unsigned long long)(p->has_pub_id ? p->pub_id : 0),
                  msg_tag(p->payload.data, p->payload.len, tag),
                  put ? "" : ": its batch failed, not sent");
    }
    /* outside the lock: a hook that cannot be added runs at once. Also
     * for a row that was not put: its state is decided with the batch
     * (failed), never left pending, which would hold back every replay to
     * node */
    store_batch_hook(batch, row_done, o, seq);
    if (!kept)
        free(buf); /* (else the ring's until its live send) */
}

/* Tests: whether this session frame is to be lost on the way (once per
 * kind, STARLING_TEST_SESSION_FRAME_LOSE). */
static bool test_lose(struct cluster_fwd *f, bool state, size_t n_msgs)
{
    if (!n_msgs || !atomic_exchange(state ? &f->lose_state : &f->lose_msgs, false))
        return false;
    log_warn("cluster: STARLING_TEST_SESSION_FRAME_LOSE: this %s is lost on the way",
             state ? "SessionState" : "SessionMessages");
    return true;
}

int cluster_fwd_send_frame(struct cluster_fwd *f, uint64_t node, Starling__Chan__Frame *fr,
                           struct store_batch **bt)
{
    struct broker *b = f->b;
    ProtobufCMessage *msg;
    uint64_t *seq;
    protobuf_c_boolean *has_seq, *has_prev;
    uint8_t kind;
    size_t n_msgs;
    if (fr->frame_case == STARLING__CHAN__FRAME__FRAME_SESSION_STATE) {
        Starling__Chan__SessionState *st = fr->session_state;
        msg = &st->base;
        seq = &st->seq, has_seq = &st->has_seq, has_prev = &st->has_prev;
        kind = ROW_SESSION_STATE;
        n_msgs = st->n_msgs;
    } else if (fr->frame_case == STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES) {
        Starling__Chan__SessionMessages *sm = fr->session_messages;
        msg = &sm->base;
        seq = &sm->seq, has_seq = &sm->has_seq, has_prev = &sm->has_prev;
        kind = ROW_SESSION_MESSAGES;
        n_msgs = sm->n_msgs;
    } else {
        return -EINVAL;
    }
    bool lose = test_lose(f, kind == ROW_SESSION_STATE, n_msgs);
    *has_prev = false;
    struct fwd_out *o = NULL;
    struct store_batch *batch = NULL;
    if (!atomic_load(&f->ready) || !f->durable || !(o = out_get(f, node)) ||
        !(batch = persist_batch(b, bt))) {
        /* at most once: no store (or no memory for the outbox) */
        *has_seq = false;
        size_t n = starling__chan__frame__get_packed_size(fr);
        uint8_t *buf = malloc(n ? n : 1);
        if (!buf)
            return -ENOMEM;
        starling__chan__frame__pack(fr, buf);
        int r = lose ? 0 : cluster_send(f->c, node, buf, n);
        free(buf);
        return r;
    }
    *has_seq = true;
    *seq = UINT64_MAX; /* the largest size a seq takes */
    size_t max = 1 + protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(max);
    if (!buf) {
        store_batch_fail(batch, -ENOMEM);
        return -ENOMEM;
    }
    /* Not refused at the bounds: these messages were acknowledged to their
     * publishers long ago. They count against them (publishers of new
     * forwards to node are paused, then refused, meanwhile). */
    pthread_mutex_lock(&o->mu);
    uint64_t sq = ++o->next;
    *seq = sq;
    buf[0] = kind;
    size_t n = 1 + protobuf_c_message_pack(msg, buf + 1);
    bool kept = !o->replay;
    if (ring_push(o, sq, (uint32_t)n, ROW_PENDING, kept ? buf : NULL) < 0) {
        o->next--;
        pthread_mutex_unlock(&o->mu);
        free(buf);
        store_batch_fail(batch, -ENOMEM);
        return -ENOMEM;
    }
    /* sent once its batch committed (row_done), as a forward */
    ring_at(o, o->n - 1)->lose = lose;
    if (o->n == 1)
        o->progress_ms = mono_ms();
    out_update_slow(f, o);
    /* (the row's state is decided with the batch also when it could not
     * be put, see cluster_fwd_send). Under the lock: once it is released,
     * a replay that begins frees the ring's bytes (ring_bufs_free). */
    store_outbox_put(batch, node, sq, buf, n);
    pthread_mutex_unlock(&o->mu);
    log_debug("cluster: %s %llu to %016llx (%zu message(s)) in the outbox",
              kind == ROW_SESSION_STATE ? "session state" : "late messages", (unsigned long long)sq,
              (unsigned long long)node, n_msgs);
    store_batch_hook(batch, row_done, o, sq);
    if (!kept)
        free(buf);
    return 1;
}

/* Send again what o holds above `from`. Caller holds o->mu. */
static void out_replay_from(struct fwd_out *o, uint64_t from)
{
    log_debug("cluster: forwards to %016llx replayed from %llu (acknowledged %llu, last %llu)",
              (unsigned long long)o->node, (unsigned long long)from, (unsigned long long)o->acked,
              (unsigned long long)o->next);
    o->replay = true;
    ring_bufs_free(o); /* the rows come from the store now */
    o->replay_gen++;
    o->sent = o->cursor = from;
    o->progress_ms = mono_ms();
}

void cluster_fwd_on_ack(struct cluster_fwd *f, uint64_t from, const Starling__Chan__PublishAck *a)
{
    struct fwd_out *o = out_find(f, from);
    if (!o || a->origin != f->self)
        return;
    pthread_mutex_lock(&o->mu);
    /* A resend request names what the node has applied, not what it has
     * stored: its batch may not be committed yet, and a node killed then
     * has not got them (tests/cluster/test_forward.py, the destination
     * killed while traffic flows: rows dropped here on such a request were
     * lost). Only a plain acknowledgement (committed) drops rows. */
    bool resend = a->has_resend && a->resend;
    if (!resend && a->seq > o->acked && a->seq <= o->next) {
        log_debug("cluster: forwards to %016llx acknowledged up to %llu", (unsigned long long)from,
                  (unsigned long long)a->seq);
        o->acked = a->seq;
        o->progress_ms = mono_ms();
        out_pop_acked(f, o);
    }
    /* the node missed a frame after a->seq: from there again, unless a
     * replay that has not passed it yet is on its way */
    if (resend && !(o->replay && o->cursor <= a->seq)) {
        out_replay_from(o, a->seq > o->acked ? a->seq : o->acked);
        /* the first frame names what the node has: a node that lost its
         * store (a->seq below what it acknowledged) takes what is left */
        o->sent = a->seq;
    }
    pthread_mutex_unlock(&o->mu);
}

/* ---- replay (the poll's thread) --------------------------------------------- */

struct replay {
    struct cluster_fwd *f;
    struct fwd_out *o;
    uint64_t gen;  /* the replay this scan belongs to */
    uint64_t last; /* the last row collected */
    unsigned sent;
    bool blocked; /* the channel refused: later */
};

static int replay_row(void *ud, uint64_t node, uint64_t seq, const void *data, size_t len)
{
    (void)node;
    struct replay *r = ud;
    struct fwd_out *o = r->o;
    if (seq > r->last)
        return 1;
    pthread_mutex_lock(&o->mu);
    int stop = 0;
    if (o->replay_gen != r->gen) {
        /* a resend request started the replay again meanwhile (the cluster
         * thread, while this scan read the store outside the lock): its
         * rows go from its own cursor. Sent on, this row would carry the
         * new cursor as its prev and skip every row between them at the
         * destination, which would then take them for duplicates (seen:
         * 216 acknowledged messages lost after a destination's restart) */
        r->blocked = true;
        stop = 1;
    } else if (o->replay && seq > o->cursor) {
        bool busy = false;
        if (frame_send(r->f, o->node, data, len, o->sent, &busy) == 0) {
            o->pressing = busy;
            o->sent = o->cursor = seq;
            r->sent++;
        } else {
            r->blocked = true;
            stop = 1;
        }
    }
    pthread_mutex_unlock(&o->mu);
    return stop;
}

/* Send committed rows after the cursor, in order, until caught up (then
 * live), a pending row, the channel's bound or the budget. */
static void out_replay(struct cluster_fwd *f, struct fwd_out *o)
{
    unsigned budget = FWD_REPLAY_BUDGET;
    while (budget) {
        pthread_mutex_lock(&o->mu);
        if (!o->replay) {
            pthread_mutex_unlock(&o->mu);
            return;
        }
        if (o->acked > o->cursor)
            o->sent = o->cursor = o->acked;
        size_t i = ring_after(o, o->cursor);
        while (i < o->n && ring_at(o, i)->state == ROW_FAILED)
            o->cursor = ring_at(o, i++)->seq; /* its publish was refused */
        if (i == o->n) {
            o->replay = false; /* caught up: workers send from now on */
            pthread_mutex_unlock(&o->mu);
            return;
        }
        size_t k = 0;
        while (i + k < o->n && k < FWD_REPLAY_BATCH && ring_at(o, i + k)->state == ROW_COMMITTED)
            k++;
        if (k == 0) { /* a publisher's batch is not committed yet */
            pthread_mutex_unlock(&o->mu);
            return;
        }
        uint64_t after = o->cursor;
        struct replay r = {f, o, o->replay_gen, ring_at(o, i + k - 1)->seq, 0, false};
        pthread_mutex_unlock(&o->mu);
        int rc = store_outbox_scan(f->b->store, o->node, after, k + 16, replay_row, &r);
        atomic_fetch_add(&f->b->stats.fwd_resent, r.sent);
        if (rc < 0) {
            log_error("cluster: cannot read the outbox of %016llx: %s", (unsigned long long)o->node,
                      store_strerror(rc));
            return;
        }
        if (r.blocked)
            return;
        pthread_mutex_lock(&o->mu);
        if (o->replay && o->cursor < r.last && r.sent == 0) {
            /* committed rows that are gone (acknowledged meanwhile) */
            o->cursor = r.last;
        }
        pthread_mutex_unlock(&o->mu);
        budget = budget > k ? budget - (unsigned)k : 0;
    }
}

/* ---- the receiving side ------------------------------------------------------ */

/* Whether the origin picked this node for shared group `group`: one of the
 * frame's "$share/{group}/{filter}" strings names it. (Two groups of one name
 * with different filters that both match are told apart by name only.) */
static bool share_picked(void *ud, const char *group, size_t len)
{
    const Starling__Chan__Publish *p = ud;
    for (size_t i = 0; i < p->n_shares; i++) {
        const ProtobufCBinaryData *s = &p->shares[i];
        if (s->len > 7 + len && memcmp(s->data, "$share/", 7) == 0 &&
            memcmp(s->data + 7, group, len) == 0 && s->data[7 + len] == '/')
            return true;
    }
    return false;
}

struct in_commit {
    struct cluster_fwd *f;
    struct fwd_in *in;
    uint64_t seq;
    struct msg *m;
    struct pub_targets targets;
};

/* Writer thread: the deliveries of frame seq and the new highest seq are
 * committed (or not: then they stay in memory only, see docs/cluster.md). */
static void in_done(void *ud, int status)
{
    struct in_commit *ic = ud;
    broker_release(ic->f->b, ic->m, MSG_READY, &ic->targets, NULL);
    msg_unref(ic->m);
    if (status == 0) {
        uint64_t c = atomic_load(&ic->in->committed);
        while (c < ic->seq && !atomic_compare_exchange_weak(&ic->in->committed, &c, ic->seq))
            ;
    } else {
        log_error("cluster: a forward from %016llx is not stored: %s",
                  (unsigned long long)ic->in->origin, store_strerror(status));
    }
    free(ic);
}

static void send_ack(struct cluster_fwd *f, uint64_t origin, uint64_t seq, bool resend)
{
    Starling__Chan__PublishAck a = STARLING__CHAN__PUBLISH_ACK__INIT;
    a.origin = origin;
    a.seq = seq;
    a.has_resend = resend;
    a.resend = resend;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_PUBLISH_ACK;
    fr.publish_ack = &a;
    uint8_t buf[64];
    size_t n = starling__chan__frame__pack(&fr, buf);
    cluster_send(f->c, origin, buf, n);
}

/* Whether the sequenced frame seq (after prev) from origin is to be
 * applied now (*inp: its origin's state; the highest applied is seq
 * then): not when it was applied already (acknowledged again), when it
 * follows a frame that was lost (a resend is asked), or before the store
 * is loaded (the origin sends it again). Cluster thread. */
static bool in_accept(struct cluster_fwd *f, uint64_t origin, uint64_t seq, uint64_t prev,
                      const char *what, struct fwd_in **inp)
{
    struct fwd_in *in;
    /* before the store is loaded nothing is known of what was applied:
     * the origin sends it again (its next frame shows the gap) */
    if (!atomic_load(&f->ready) || !(in = in_get(f, origin))) {
        log_debug("cluster: %s %llu from %016llx before the store is loaded: dropped", what,
                  (unsigned long long)seq, (unsigned long long)origin);
        return false;
    }
    if (seq <= in->hwm) {
        if (atomic_fetch_add(&f->b->stats.fwd_duplicates, 1) % 64 == 0)
            log_debug("cluster: %s %llu from %016llx again (applied up to %llu): dropped", what,
                      (unsigned long long)seq, (unsigned long long)origin,
                      (unsigned long long)in->hwm);
        atomic_store(&in->ack_due, true);
        return false;
    }
    if (prev > in->hwm) {
        uint64_t now = mono_ms();
        if (now - in->resend_ms >= FWD_RESEND_EVERY_MS) {
            in->resend_ms = now;
            send_ack(f, origin, in->hwm, true);
            log_debug("cluster: %s %llu from %016llx follows %llu, applied up to %llu: "
                      "resend asked",
                      what, (unsigned long long)seq, (unsigned long long)origin,
                      (unsigned long long)prev, (unsigned long long)in->hwm);
        }
        return false;
    }
    *inp = in;
    return true;
}

/* Writer thread: the batch that stored what sequenced session frame
 * `seq` brought is decided. */
static void in_seq_done(void *ud, uint64_t seq, int status)
{
    struct fwd_in *in = ud;
    if (status == 0) {
        uint64_t c = atomic_load(&in->committed);
        while (c < seq && !atomic_compare_exchange_weak(&in->committed, &c, seq))
            ;
    } else {
        log_error("cluster: a session frame from %016llx is not stored: %s",
                  (unsigned long long)in->origin, store_strerror(status));
    }
}

int cluster_fwd_in_accept(struct cluster_fwd *f, uint64_t from, uint64_t seq, uint64_t prev,
                          const char *what, struct cluster_fwd_seq *sq)
{
    sq->in = NULL;
    sq->seq = 0;
    if (!seq)
        return -1;
    if (!in_accept(f, from, seq, prev, what, &sq->in))
        return 0;
    sq->seq = seq;
    sq->before = sq->in->hwm;
    sq->in->hwm = seq;
    return 1;
}

void cluster_fwd_in_defer(struct cluster_fwd *f, const struct cluster_fwd_seq *sq)
{
    (void)f;
    if (sq && sq->in && sq->in->hwm == sq->seq)
        sq->in->hwm = sq->before;
}

void cluster_fwd_in_stage(struct cluster_fwd *f, const struct cluster_fwd_seq *sq,
                          struct store_batch **bt)
{
    if (!sq || !sq->in)
        return;
    struct store_batch *batch = persist_batch(f->b, bt);
    if (!batch) {
        /* no store: applied is committed */
        uint64_t c = atomic_load(&sq->in->committed);
        while (c < sq->seq && !atomic_compare_exchange_weak(&sq->in->committed, &c, sq->seq))
            ;
        return;
    }
    if (store_fwd_in_put(batch, sq->in->origin, sq->seq) == 0)
        store_batch_hook(batch, in_seq_done, sq->in, sq->seq);
}

/* A forward numbered `pub` from `origin` (its fwd_in: in, NULL when not
 * looked up yet) is about to meet the index: noted first (the order
 * cluster_fwd_pubs_seen counts on). */
static void pub_note(struct cluster_fwd *f, struct fwd_in *in, uint64_t origin, uint64_t pub)
{
    if (!in)
        in = in_get(f, origin);
    if (!in) {
        atomic_store(&f->pubs_unknown, true);
        return;
    }
    uint64_t was = atomic_load(&in->pub_max);
    while (was < pub && !atomic_compare_exchange_weak(&in->pub_max, &was, pub))
        ;
}

struct session_pubs_seen *cluster_fwd_pubs_seen(struct cluster_fwd *f)
{
    if (atomic_load(&f->pubs_unknown))
        return NULL;
    unsigned n = atomic_load_explicit(&f->n_in, memory_order_acquire);
    struct session_pubs_seen *ps = malloc(sizeof(*ps) + (n ? n : 1) * sizeof(ps->e[0]));
    if (!ps)
        return NULL;
    ps->n = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t pub = atomic_load(&f->ins[i]->pub_max);
        if (pub)
            ps->e[ps->n++] = (struct session_pub_seen){f->ins[i]->origin, pub};
    }
    return ps;
}

/* The message a forward carries (its identity too), or NULL (no memory). */
static struct msg *fwd_msg_new(const Starling__Chan__Publish *p)
{
    struct msg *m = msg_new(p->topic.data, (uint16_t)p->topic.len, p->payload.data,
                            (uint32_t)p->payload.len, p->has_properties ? p->properties.data : NULL,
                            p->has_properties ? (uint32_t)p->properties.len : 0,
                            (uint8_t)(p->qos > 2 ? 2 : p->qos), p->has_retain && p->retain,
                            p->has_expiry_at_ms ? p->expiry_at_ms : 0, NULL);
    if (!m)
        return NULL;
    m->route_index = p->has_route_index ? p->route_index : 0;
    if (p->has_pub_id && p->pub_id) {
        m->id_node = p->origin;
        m->id_seq = p->pub_id;
        if (p->n_also_to > MSG_ALSO_TO_MAX) {
            m->n_also_to = MSG_ALSO_TO_MANY;
        } else {
            for (size_t i = 0; i < p->n_also_to; i++)
                m->also_to[i] = p->also_to[i];
            m->n_also_to = (uint8_t)p->n_also_to;
        }
    }
    return m;
}

bool cluster_fwd_here_ok(const Starling__Chan__Publish *p)
{
    return !p->seq && p->qos == 0 && !(p->has_pub_id && p->pub_id);
}

void cluster_fwd_on_publish_here(struct cluster_fwd *f, const Starling__Chan__Publish *p,
                                 struct worker *cur)
{
    struct broker *b = f->b;
    HOPTRACE_PAYLOAD_AT(HOP_CHAN_READ, p->payload.data, p->payload.len, HOP_CHAN_READ);
    HOPTRACE_PAYLOAD(HOP_FWD, p->payload.data, p->payload.len);
    if (p->topic.len == 0 || p->topic.len > 65535)
        return;
    struct msg *m = fwd_msg_new(p);
    if (!m)
        return; /* at most once */
    metric_add_shared(&b->stats.fwd_qos0_in_workers, 1);
    metric_add_shared(&b->stats.fwd_qos0_bytes_in_workers, (uint64_t)m->topic_len + m->payload_len);
    broker_publish_forwarded(b, m, cur, share_picked, (void *)p, NULL, NULL);
    msg_unref(m);
}

void cluster_fwd_on_publish(struct cluster_fwd *f, uint64_t from, const Starling__Chan__Publish *p)
{
    (void)from;
    struct broker *b = f->b;
    HOPTRACE_PAYLOAD_AT(HOP_CHAN_READ, p->payload.data, p->payload.len, HOP_CHAN_READ);
    HOPTRACE_PAYLOAD(HOP_FWD, p->payload.data, p->payload.len);
    if (p->topic.len == 0 || p->topic.len > 65535)
        return;
    struct fwd_in *in = NULL;
    if (p->seq) {
        if (!in_accept(f, p->origin, p->seq, p->has_prev ? p->prev : 0, "forward", &in))
            return;
        if (f->lose_every && ++f->lose_count % f->lose_every == 0)
            return; /* tests: lost on the way (the next frame shows the gap) */
    }
    if (p->has_pub_id && p->pub_id)
        pub_note(f, in, p->origin, p->pub_id);
    struct msg *m = fwd_msg_new(p);
    if (!m)
        return; /* not applied: the origin sends it again (sequenced) */
    /* this thread's counters alone (they count in broker_msgs_received) */
    metric_add(&b->stats.fwd_msgs_in[m->qos], 1);
    metric_add(&b->stats.fwd_bytes_in[m->qos], (uint64_t)m->topic_len + m->payload_len);
    if (!in) {
        broker_publish_forwarded(b, m, NULL, share_picked, (void *)p, NULL, NULL);
        msg_unref(m);
        return;
    }
    if (!b->store) {
        in->hwm = p->seq;
        broker_publish_forwarded(b, m, NULL, share_picked, (void *)p, NULL, NULL);
        msg_unref(m);
        atomic_store(&in->committed, p->seq);
        return;
    }
    struct in_commit *ic = calloc(1, sizeof(*ic));
    struct store_batch *bt = store_batch_new();
    if (!ic || !bt) {
        free(ic);
        store_batch_free(bt);
        msg_unref(m); /* not applied: the origin sends it again */
        return;
    }
    in->hwm = p->seq;
    store_fwd_in_put(bt, p->origin, p->seq);
    /* held until committed, like a client's publish (struct msg.hold) */
    atomic_store(&m->hold, MSG_HELD);
    int delivered =
        broker_publish_forwarded(b, m, NULL, share_picked, (void *)p, &bt, &ic->targets);
    if (log_get_level() >= LOG_LEVEL_DEBUG) {
        char tag[MSG_TAG_LEN];
        log_debug("cluster: forward %llu from %016llx (publish %llu, '%s') applied: %d "
                  "session(s)",
                  (unsigned long long)p->seq, (unsigned long long)p->origin,
                  (unsigned long long)m->id_seq, msg_tag(p->payload.data, p->payload.len, tag),
                  delivered);
    }
    ic->f = f;
    ic->in = in;
    ic->seq = p->seq;
    ic->m = m;
    store_submit(b->store, bt, in_done, ic);
}

/* ---- the poll ------------------------------------------------------------------ */

void cluster_fwd_poll(struct cluster_fwd *f, uint64_t now)
{
    if (!atomic_load(&f->ready))
        return;
    unsigned n_in = atomic_load_explicit(&f->n_in, memory_order_acquire);
    for (unsigned i = 0; i < n_in; i++) {
        struct fwd_in *in = f->ins[i];
        uint64_t c = atomic_load(&in->committed);
        if (c > in->acked || (atomic_exchange(&in->ack_due, false) && c)) {
            in->acked = c;
            send_ack(f, in->origin, c, false);
        }
    }
    if (!f->durable)
        return;
    struct store_batch *del = NULL;
    unsigned n_out = atomic_load_explicit(&f->n_out, memory_order_acquire);
    for (unsigned i = 0; i < n_out; i++) {
        struct fwd_out *o = f->outs[i];
        struct chan_peer_stats st;
        bool up = cluster_peer_stats(f->c, o->node, &st) == 0 && st.connected;
        pthread_mutex_lock(&o->mu);
        if (up && st.connects != o->connects) {
            /* a new connection: what the old one carried may be lost */
            o->connects = st.connects;
            out_replay_from(o, o->acked);
        } else if (up && !o->replay && o->sent > o->acked &&
                   now - o->progress_ms >= FWD_ACK_TIMEOUT_MS) {
            /* frames, or their acknowledgement, lost without a new
             * connection (the tail of a stream: no later frame shows the
             * gap) */
            out_replay_from(o, o->acked);
        }
        uint64_t acked = o->acked;
        bool replay = o->replay;
        uint64_t refused = 0;
        if (o->replays != o->replays_seen && now - o->log_ms >= 1000) {
            refused = o->replays - o->replays_seen; /* at most a line a second */
            o->replays_seen = o->replays;
            o->log_ms = now;
        }
        size_t held = o->n;
        pthread_mutex_unlock(&o->mu);
        if (refused)
            log_info("cluster: the channel to %016llx was full or down %llu time(s): %zu "
                     "forward(s) wait in its outbox",
                     (unsigned long long)o->node, (unsigned long long)refused, held);
        if (acked > o->deleted) {
            if (!del)
                del = store_batch_new();
            if (del && store_outbox_del_upto(del, o->node, acked) == 0)
                o->deleted = acked;
        }
        if (replay && up)
            out_replay(f, o);
    }
    if (del)
        store_submit(f->b->store, del, NULL, NULL);
}

size_t cluster_fwd_forget(struct cluster_fwd *f, uint64_t node)
{
    struct fwd_out *o = out_find(f, node);
    if (!o)
        return 0;
    pthread_mutex_lock(&o->mu);
    size_t n = o->n;
    /* as if acknowledged: the poll range-deletes the rows; should the node
     * come back under the same id, its forwards start after them */
    o->acked = o->sent = o->cursor = o->next;
    o->replay = false;
    out_pop_acked(f, o);
    pthread_mutex_unlock(&o->mu);
    return n;
}

/* ---- life cycle ---------------------------------------------------------------- */

struct cluster_fwd *cluster_fwd_new(struct broker *b)
{
    struct cluster_fwd *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->b = b;
    pthread_mutex_init(&f->mu, NULL);
#ifndef NDEBUG
    /* Tests of resend requests (tests/cluster/test_forward.py): every Nth
     * sequenced forward received is lost as if its connection broke. */
    const char *lose = getenv("STARLING_TEST_FWD_LOSE_EVERY");
    if (lose && atoi(lose) > 1) {
        f->lose_every = (unsigned)atoi(lose);
        log_warn("cluster: STARLING_TEST_FWD_LOSE_EVERY: every %u-th forward received is lost",
                 f->lose_every);
    }
    /* Tests of late frames (tests/cluster/test_session_moves.py): while the file
     * that STARLING_TEST_FWD_HOLD names exists, this node's sequenced
     * frames (QoS 1/2 forwards, moved messages) to the node whose id (hex)
     * it holds, or to every node when it is empty, are refused by the
     * channel as if it were full: they wait in their outbox and are
     * replayed once it is gone. */
    const char *hold = getenv("STARLING_TEST_FWD_HOLD");
    if (hold && *hold) {
        f->hold_path = strdup(hold);
        log_warn("cluster: STARLING_TEST_FWD_HOLD: forwards wait while %s exists", hold);
    }
    /* Tests of moved sessions' messages (tests/cluster/test_session_frames.py):
     * "state", "messages" or "both": the first SessionState / SessionMessages
     * with messages this node sends is lost on the way, as if its channel
     * connection broke with it queued. */
    const char *lose_frame = getenv("STARLING_TEST_SESSION_FRAME_LOSE");
    if (lose_frame) {
        atomic_store(&f->lose_state, !strcmp(lose_frame, "state") || !strcmp(lose_frame, "both"));
        atomic_store(&f->lose_msgs, !strcmp(lose_frame, "messages") || !strcmp(lose_frame, "both"));
    }
#endif
    return f;
}

void cluster_fwd_start(struct cluster_fwd *f, struct cluster *c, uint64_t self)
{
    f->c = c;
    f->self = self;
}

struct load {
    struct cluster_fwd *f;
    cluster_fwd_ended_fn ended;
    void *ud;
};

static int load_row(void *ud, uint64_t node, uint64_t seq, const void *data, size_t len)
{
    struct load *l = ud;
    struct fwd_out *o = out_get(l->f, node);
    if (!o)
        return -ENOMEM;
    /* no lock needed: no other thread uses o yet (ready is false) */
    if (ring_push(o, seq, (uint32_t)len, ROW_COMMITTED, NULL) < 0)
        return -ENOMEM;
    /* the last frame of a copy that ended: l->ended learns its QoS 2 ids
     * (a row that does not decode is sent on as it is: the destination
     * judges it) */
    const uint8_t *body = data;
    if (l->ended && len > 1 && body[0] == ROW_SESSION_MESSAGES) {
        Starling__Chan__SessionMessages *sm =
            starling__chan__session_messages__unpack(NULL, len - 1, body + 1);
        if (sm && sm->has_last && sm->last)
            l->ended(l->ud, node, sm);
        if (sm)
            starling__chan__session_messages__free_unpacked(sm, NULL);
    }
    return 0;
}

static int load_in(void *ud, uint64_t origin, uint64_t seq)
{
    struct cluster_fwd *f = ud;
    struct fwd_in *in = in_get(f, origin);
    if (!in)
        return -ENOMEM;
    in->hwm = seq;
    atomic_store(&in->committed, seq);
    in->acked = 0; /* acknowledged again once */
    return 0;
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_OUTBOX_HOLD
 * names exists, the outbox's load waits, the sessions loaded already and
 * the channel up (tests/cluster/test_faults.py). */
static void outbox_test_hold(void)
{
    const char *path = getenv("STARLING_TEST_OUTBOX_HOLD");
    if (!path || access(path, F_OK) != 0)
        return;
    log_info("cluster: the outbox's load waits (STARLING_TEST_OUTBOX_HOLD)");
    struct timespec nap = {0, 10 * 1000000L};
    while (access(path, F_OK) == 0)
        nanosleep(&nap, NULL);
}
#else
static void outbox_test_hold(void) {}
#endif

int cluster_fwd_attach_store(struct cluster_fwd *f, uint64_t *seq_base, cluster_fwd_ended_fn ended,
                             void *ud, char *err, size_t errlen)
{
    *seq_base = 0;
    struct store *s = f->b->store;
    if (!s) {
        atomic_store(&f->ready, true);
        return 0;
    }
    outbox_test_hold();
    uint64_t boot = 0;
    int r = store_boot_next(s, (uint64_t)time(NULL), &boot);
    if (r == 0)
        r = store_outbox_scan(s, 0, 0, 0, load_row, &(struct load){f, ended, ud});
    if (r == 0)
        r = store_fwd_in_scan(s, load_in, f);
    if (r < 0) {
        snprintf(err, errlen, "cluster: cannot load the forwarding outbox: %s", store_strerror(r));
        return r;
    }
    *seq_base = f->base = boot << 32;
    size_t rows = 0;
    unsigned n_out = atomic_load(&f->n_out);
    for (unsigned i = 0; i < n_out; i++) {
        struct fwd_out *o = f->outs[i];
        o->next = *seq_base;
        o->replay = o->n > 0;
        o->progress_ms = mono_ms();
        out_update_slow(f, o);
        rows += o->n;
    }
    f->durable = true;
    atomic_store(&f->ready, true);
    if (rows)
        log_info("cluster: %zu forward(s) to %u node(s) wait in the outbox", rows, n_out);
    return 0;
}

void cluster_fwd_stop(struct cluster_fwd *f)
{
    if (!f)
        return;
    atomic_store(&f->stopped, true);
    /* a commit hook sending under an outbox's lock now has finished */
    for (unsigned i = 0; i < atomic_load(&f->n_out); i++) {
        pthread_mutex_lock(&f->outs[i]->mu);
        pthread_mutex_unlock(&f->outs[i]->mu);
    }
}

void cluster_fwd_free(struct cluster_fwd *f)
{
    if (!f)
        return;
    for (unsigned i = 0; i < atomic_load(&f->n_out); i++) {
        pthread_mutex_destroy(&f->outs[i]->mu);
        ring_bufs_free(f->outs[i]);
        free(f->outs[i]->ring);
        free(f->outs[i]);
    }
    for (unsigned i = 0; i < atomic_load(&f->n_in); i++)
        free(f->ins[i]);
    pthread_mutex_destroy(&f->mu);
    free(f->hold_path);
    free(f);
}
