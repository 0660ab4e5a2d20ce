/*
 * ackq.c - acknowledgements in order (see ackq.h).
 */
#include "ackq.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "conn.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "store.h"
#include "worker.h"

struct pending_ack {
    uint32_t token;
    uint16_t pid;
    uint8_t type;
    uint8_t reason;
    bool ready;
    bool gated; /* also waits for an ack_gate */
    bool failed;
    bool dup; /* the PUBREC of a duplicate QoS 2 PUBLISH (ackq_after_dup) */
};

/* The status of a duplicate's PUBREC whose original was not received after
 * all (its commit failed). */
#define ACKQ_ORIGINAL_FAILED (-ECANCELED)

/* The status ack_gate_open posts: the gate, not the commit. */
#define ACKQ_GATE_OPEN 1

struct ack_gate {
    pthread_mutex_t mu;
    int refs;       /* mu */
    bool open;      /* mu */
    struct conn *c; /* mu: armed (a reference) */
    uint32_t token;
};

struct ack_gate *ack_gate_new(void)
{
    struct ack_gate *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    pthread_mutex_init(&g->mu, NULL);
    g->refs = 2;
    return g;
}

void ack_gate_unref(struct ack_gate *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
}

void ack_gate_open(struct ack_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    struct conn *c = g->c;
    g->c = NULL;
    pthread_mutex_unlock(&g->mu);
    if (c) {
        worker_post_ack(c->w, c, g->token, ACKQ_GATE_OPEN);
        conn_unref(c);
    }
    ack_gate_unref(g);
}

/* Worker: acknowledgement `token` of c waits for g (unless it is open). */
static void ack_gate_arm(struct ack_gate *g, struct conn *c, uint32_t token)
{
    pthread_mutex_lock(&g->mu);
    bool open = g->open;
    if (!open) {
        g->c = conn_ref(c);
        g->token = token;
    }
    pthread_mutex_unlock(&g->mu);
    if (open)
        ackq_done(c, token, ACKQ_GATE_OPEN);
}

/* Send the acknowledgements at the head of the queue that are ready. */
static void ackq_drain(struct conn *c)
{
    struct conn_extra *x = c->x;
    if (!x)
        return;
    uint32_t n = 0;
    while (n < x->acks_len && x->acks[n].ready && !x->acks[n].gated) {
        struct pending_ack *a = &x->acks[n++];
        if (a->failed &&
            ((c->version != MQTT_V5 && (a->type == MQTT_PUBACK || a->type == MQTT_PUBREC)) ||
             a->type == MQTT_PUBCOMP || a->type == MQTT_PUBREL)) {
            /* 3.1.1 has no way to say "not stored", nor has a PUBCOMP or a
             * PUBREL in either version: close, the client publishes again
             * (or sends its PUBREL again) on its next connection, and the
             * subscriber whose PUBREC was not stored gets the PUBLISH again */
            x->acks_len = 0;
            conn_close(c, 0, false);
            return;
        }
        conn_send_ack(c, (enum mqtt_type)a->type, a->pid, a->reason);
    }
    if (n) {
        memmove(x->acks, x->acks + n, (x->acks_len - n) * sizeof(*x->acks));
        x->acks_len -= n;
    }
}

/* Queue acknowledgement `token` (from ++c->next_token) of c, or send it at
 * once when it is ready and nothing is ahead of it. Out of memory, the
 * connection is closed (the client resends on its next one). */
static void ackq_queue(struct conn *c, uint32_t token, enum mqtt_type type, uint16_t pid,
                       uint8_t reason, bool ready, bool gated, bool dup)
{
    if (ready && !gated && (!c->x || c->x->acks_len == 0)) {
        conn_send_ack(c, type, pid, reason);
        return;
    }
    struct conn_extra *x = conn_x(c);
    if (!x) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    if (x->acks_len == x->acks_cap) {
        uint32_t cap = x->acks_cap ? x->acks_cap * 2 : 8;
        struct pending_ack *p = realloc(x->acks, cap * sizeof(*p));
        if (!p) {
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return;
        }
        x->acks = p;
        x->acks_cap = cap;
    }
    x->acks[x->acks_len++] = (struct pending_ack){.token = token,
                                                  .pid = pid,
                                                  .type = (uint8_t)type,
                                                  .reason = reason,
                                                  .ready = ready,
                                                  .gated = gated,
                                                  .dup = dup};
}

static uint32_t ackq_push_gated(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason,
                                bool ready, bool gated)
{
    uint32_t token = ++c->next_token;
    ackq_queue(c, token, type, pid, reason, ready, gated, false);
    return token;
}

uint32_t ackq_push(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason, bool ready)
{
    return ackq_push_gated(c, type, pid, reason, ready, false);
}

void ackq_done(struct conn *c, uint32_t token, int status)
{
    struct conn_extra *x = c->x;
    if (c->state != CONN_ACTIVE || !x)
        return;
    for (uint32_t i = 0; i < x->acks_len; i++) {
        struct pending_ack *a = &x->acks[i];
        if (a->token != token)
            continue;
        if (status == ACKQ_GATE_OPEN) {
            a->gated = false;
            break;
        }
        a->ready = true;
        if (status < 0 && a->dup && status != ACKQ_ORIGINAL_FAILED) {
            /* the duplicate's own commit failed: whether the original was
             * received is unknown here, so neither PUBREC nor a refusal;
             * the client resends on its next connection */
            log_warn("%s: store failed (%s): duplicate publish %u not answered", CONN_PEER(c),
                     store_strerror(status), a->pid);
            x->acks_len = 0;
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return;
        }
        if (status < 0 && a->dup) {
            /* [MQTT-3.1.1 4.3.3-2, MQTT-5.0 4.3.3-8] the original was not
             * stored: the duplicate is refused like it (its id is already
             * forgotten), never acknowledged as received */
            log_warn("%s: publish %u not stored: its duplicate is refused", CONN_PEER(c), a->pid);
            a->failed = true;
            a->reason = MQTT_RC_QUOTA_EXCEEDED;
        } else if (status < 0 && a->type == MQTT_PUBCOMP) {
            /* the id's deletion failed: with a PUBCOMP the client would
             * reuse the id while the store still has it (after a restart
             * its next message would be taken for a duplicate); recorded
             * again (ackq_on_commit), it is deleted by the PUBREL the
             * client resends on its next connection */
            log_warn("%s: store failed (%s): PUBCOMP %u not sent", CONN_PEER(c),
                     store_strerror(status), a->pid);
            a->failed = true;
        } else if (status < 0 && a->type == MQTT_PUBREL) {
            /* the PUBREC's record failed: no PUBREL the store does not
             * know of (session_pubrec_undo, in ackq_on_commit) */
            log_warn("%s: store failed (%s): PUBREL %u not sent", CONN_PEER(c),
                     store_strerror(status), a->pid);
            a->failed = true;
        } else if (status < 0 && (a->type == MQTT_PUBACK || a->type == MQTT_PUBREC)) {
            /* the message could not be stored: not acknowledged as received */
            log_warn("%s: store failed (%s): publish %u refused", CONN_PEER(c),
                     store_strerror(status), a->pid);
            a->failed = true;
            a->reason = MQTT_RC_QUOTA_EXCEEDED;
            if (a->type == MQTT_PUBREC && c->session) {
                /* not received after all: the id is free for a new message */
                struct session *s = c->session;
                lock_acquire(&s->lock);
                session_qos2_remove(s, a->pid);
                lock_release(&s->lock);
            }
        }
        break;
    }
    ackq_drain(c);
}

void ackq_free(struct conn *c)
{
    if (c->x)
        free(c->x->acks);
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_ACK_CLOSED_HOLD
 * names exists, a worker whose connection closed while it queued the
 * acknowledgement of a PUBLISH (out of memory) waits right after: the
 * moment in which the client's resend on its next connection, served by
 * another worker, can overtake what this one has not done yet
 * (tests/integration/test_failalloc.py). The file holds the packet id to
 * hold for, or nothing for any: the client sees the close before the
 * worker gets here, and a worker that gets here late must not be held by
 * the file of the test's next round. */
static void ackq_test_closed_hold(struct conn *c, uint16_t pid)
{
    const char *path = getenv("STARLING_TEST_ACK_CLOSED_HOLD");
    int fd = path ? open(path, O_RDONLY) : -1; /* no allocation: the shim may be armed */
    if (fd < 0)
        return;
    char text[8];
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    if (text[0] && strtoul(text, NULL, 10) != pid)
        return;
    log_warn("test: held: %s closed while queuing the acknowledgement of publish %u", CONN_PEER(c),
             pid);
    struct timespec ts = {0, 2000000};
    while (access(path, F_OK) == 0)
        nanosleep(&ts, NULL);
}
#else
static void ackq_test_closed_hold(struct conn *c, uint16_t pid)
{
    (void)c;
    (void)pid;
}
#endif

struct ack_wait {
    struct conn *c;
    uint32_t token;
    uint16_t pid;
    uint8_t type;
    bool dup;          /* waits for the original of a duplicate (ackq_after_dup) */
    struct session *s; /* a reference, for a PUBREC (see ackq_on_commit) */
    struct msg *held;  /* a published message waiting for the same commit */
    struct pub_targets targets;
};

/* Store writer thread: the batch behind an acknowledgement committed. */
static void ackq_on_commit(void *ud, int status)
{
    struct ack_wait *a = ud;
    struct broker *b = conn_broker(a->c);
    if (a->held) {
        broker_release(b, a->held, status < 0 ? MSG_REJECTED : MSG_READY, &a->targets, NULL);
        msg_unref(a->held);
    }
    if (a->dup && status == 0) {
        /* the commits run in submission order: the original's came first,
         * and a failed one forgot the id (below); still recorded, the
         * original is stored */
        lock_acquire(&a->s->lock);
        if (!session_qos2_has(a->s, a->pid))
            status = ACKQ_ORIGINAL_FAILED;
        lock_release(&a->s->lock);
    }
    if (a->s && status < 0 && !a->dup) {
        lock_acquire(&a->s->lock);
        /* a change of its wait that this batch recorded is not in the store:
         * the next write of its QoS 2 ids writes it again */
        a->s->wait_dirty = true;
        if (a->type == MQTT_PUBREC) {
            /* not received after all: the id is free for the client's
             * resend now, also when the result below cannot reach the
             * worker and the connection closes without it (ackq_done
             * does the same again) */
            session_qos2_remove(a->s, a->pid);
        } else if (a->type == MQTT_PUBREL && (!a->s->conn || a->s->conn == a->c)) {
            /* (a session that a new connection took meanwhile was resumed
             * with the PUBREL already: its client completes the exchange,
             * whose PUBCOMP deletes the message's records) */
            session_pubrec_undo(a->s, a->pid);
        } else if (!session_qos2_has(a->s, a->pid) && session_qos2_add(a->s, a->pid) < 0) {
            /* a PUBCOMP whose deletion failed: the id is still stored, and
             * recorded again here for the client's resent PUBREL (no
             * allocation, as the PUBREL's removal left its slot free,
             * unless other ids took it meanwhile) */
            log_warn("client '%s': QoS 2 id %u stays in the store (out of memory)", a->s->client_id,
                     a->pid);
        }
        lock_release(&a->s->lock);
    }
    if (a->s)
        session_unref(a->s);
    worker_post_ack(a->c->w, a->c, a->token, status);
    conn_unref(a->c);
    free(a);
}

struct ack_wait *ackq_wait_new(void)
{
    return malloc(sizeof(struct ack_wait));
}

void ackq_wait_free(struct ack_wait *a)
{
    free(a);
}

void ackq_after(struct conn *c, struct store_batch **bt, enum mqtt_type type, uint16_t pid,
                uint8_t reason, struct msg *held, struct pub_targets *targets,
                struct ack_gate *gate, struct ack_wait *wait)
{
    struct broker *b = conn_broker(c);
    /* a batch that lost an operation (out of memory) must fail through the
     * store too: never acknowledged as if there were nothing to store */
    bool stored = *bt && (store_batch_ops(*bt) > 0 || store_batch_error(*bt) < 0);
    struct ack_wait *a = wait;
    if (!stored) {
        ackq_wait_free(a);
        a = NULL;
    } else if (!a) {
        a = ackq_wait_new();
    }
    bool publish = type == MQTT_PUBACK || type == MQTT_PUBREC;
    if (!a && stored && publish) {
        /* out of memory (a caller that gave no wait record: nothing of the
         * message went out yet): the outcome of the commit could not be
         * waited for, so the message is not received at all: nothing of it
         * is stored or delivered, a QoS 2 id is forgotten, and the client
         * publishes it again on its next connection */
        store_batch_free(*bt);
        *bt = NULL;
        if (held)
            broker_release(b, held, MSG_REJECTED, targets, c->w);
        if (type == MQTT_PUBREC && c->session) {
            lock_acquire(&c->session->lock);
            session_qos2_remove(c->session, pid);
            lock_release(&c->session->lock);
        }
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    if (!a) {
        if (stored && type == MQTT_PUBREL && c->session) {
            /* the PUBREC's record may fail unseen, and the connection
             * closes without the PUBREL: the message waits for its PUBREC
             * again, so the next connection gets the PUBLISH (DUP 1), never
             * a PUBREL the store may not know of */
            lock_acquire(&c->session->lock);
            session_pubrec_undo(c->session, pid);
            lock_release(&c->session->lock);
        }
        if (*bt)
            persist_submit(b, bt, NULL, NULL);
        if (held)
            broker_release(b, held, MSG_READY, targets, c->w);
        if (stored) { /* out of memory: no acknowledgement without the commit */
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
        } else {
            uint32_t token = ackq_push_gated(c, type, pid, reason, true, gate != NULL);
            if (gate && c->state == CONN_ACTIVE)
                ack_gate_arm(gate, c, token);
        }
        return;
    }
    a->s = (type == MQTT_PUBREC || type == MQTT_PUBCOMP || type == MQTT_PUBREL) && c->session
               ? session_ref(c->session)
               : NULL;
    uint32_t token = a->token = ++c->next_token;
    a->c = conn_ref(c);
    a->pid = pid;
    a->type = (uint8_t)type;
    a->dup = false;
    a->held = held ? msg_ref(held) : NULL;
    if (targets) {
        a->targets = *targets;
        memset(targets, 0, sizeof(*targets));
    } else {
        memset(&a->targets, 0, sizeof(a->targets));
    }
    /* Submitted before the acknowledgement is queued, which closes the
     * connection when out of memory: the client then resends on its next
     * connection, perhaps on another worker at once, and a duplicate's
     * empty batch (ackq_after_dup) must come after this one, as it relies
     * on the commits running in submission order. The result comes back
     * through this worker's queue (worker_post_ack), after the entry is
     * queued; a is the writer's from here on. */
    persist_submit(b, bt, ackq_on_commit, a);
    ackq_queue(c, token, type, pid, reason, false, gate != NULL, false);
    if (gate && c->state == CONN_ACTIVE)
        ack_gate_arm(gate, c, token);
    if (publish && c->state != CONN_ACTIVE)
        ackq_test_closed_hold(c, pid);
}

/* ackq_after_dup and ackq_after_earlier: *bt, empty, is submitted behind
 * every batch submitted before it. */
static void ackq_after_all(struct conn *c, struct store_batch **bt, enum mqtt_type type,
                           uint16_t pid, uint8_t reason, bool dup)
{
    struct broker *b = conn_broker(c);
    if (!b->store || !c->session) {
        /* nothing is committed: what came before was answered at once too */
        persist_submit(b, bt, NULL, NULL);
        ackq_push(c, type, pid, reason, true);
        return;
    }
    if (!*bt)
        *bt = store_batch_new();
    struct ack_wait *a = *bt ? malloc(sizeof(*a)) : NULL;
    if (!a) {
        /* out of memory: not answered; the client resends on its next
         * connection */
        if (*bt)
            store_batch_free(*bt);
        *bt = NULL;
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    memset(a, 0, sizeof(*a));
    a->s = dup ? session_ref(c->session) : NULL;
    uint32_t token = a->token = ++c->next_token;
    a->c = conn_ref(c);
    a->pid = pid;
    a->type = (uint8_t)type;
    a->dup = dup;
    /* committed after every batch submitted before it (a duplicate's
     * original among them); submitted before the entry is queued, as in
     * ackq_after */
    store_submit(b->store, *bt, ackq_on_commit, a);
    *bt = NULL;
    ackq_queue(c, token, type, pid, reason, false, false, dup);
}

void ackq_after_dup(struct conn *c, struct store_batch **bt, uint16_t pid)
{
    ackq_after_all(c, bt, MQTT_PUBREC, pid, 0, true);
}

void ackq_after_earlier(struct conn *c, struct store_batch **bt, enum mqtt_type type, uint16_t pid,
                        uint8_t reason)
{
    ackq_after_all(c, bt, type, pid, reason, false);
}
