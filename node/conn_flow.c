/*
 * conn_flow.c - flow control of publishers: a connection whose last message
 * went to a session above its high-water mark is not read until that
 * session drains (see conn.h, session.h, docs/architecture.md).
 *
 * Pausing: after the publish, the worker registers on each slow session
 * (bit id % 64 in s->flow_waiters), then looks at s->flow_high again: a
 * session that drained in between does not hold it back. The connection
 * stops reading (uv_read_stop on it only); what was already read waits in
 * c->in. The loop and the worker's other connections go on.
 *
 * A publisher whose message went into a cluster outbox above its pause
 * mark (pub_flow.fwd_slow, node/cluster_fwd.c) waits the same way while
 * any outbox is above its mark (stats.fwd_slow_peers); the worker's tick
 * looks again.
 *
 * A publisher whose message went to a node whose channel queue is above
 * its high-water mark while that node drains (pub_flow.fwd_busy) waits
 * while route_ops.forward_busy says so: it registers its worker in
 * broker.fwd_busy_waiters, then asks again (as for a session); the
 * cluster posts a flow check to those workers when a write leaves the
 * queue at or below half its bound, and a node that stops draining
 * (stalled) is not busy any more: the tick lets its publishers go and the
 * overflow is dropped and counted (cluster/channel.h "Pressure").
 *
 * Resuming: the worker that flushes a session below its low-water mark (or
 * detaches or ends it) posts a flow check to every waiting worker, which
 * resumes each paused connection whose sessions are all below their mark.
 * The worker's tick also checks, and a connection paused for
 * max_publisher_pause ms resumes with the slow subscriber policy applied to
 * the sessions still above their mark (session_flow_expire).
 *
 * Worker thread of the connection only.
 */
#include <stdlib.h>

#include "broker.h"
#include "conn.h"
#include "session.h"
#include "worker.h"

_Static_assert(sizeof(((struct conn_flow *)0)->slow) / sizeof(struct session *) == PUB_FLOW_MAX,
               "struct conn_flow holds what struct pub_flow collects");

static void conn_flow_release(struct conn *c)
{
    struct conn_flow *cf = c->flow;
    for (uint8_t i = 0; i < cf->n_slow; i++)
        session_unref(cf->slow[i]);
    cf->n_slow = 0;
    cf->fwd = false;
    cf->busy = false;
    if (cf->paused) {
        cf->paused = false;
        atomic_fetch_sub(&c->w->b->stats.publishers_paused, 1);
    }
    if (cf->self) {
        atomic_store(&cf->self->reading_paused, false);
        session_unref(cf->self);
        cf->self = NULL;
    }
}

static bool conn_flow_list_add(struct worker *w, struct conn *c)
{
    if (w->n_paused == w->cap_paused) {
        size_t cap = w->cap_paused ? w->cap_paused * 2 : 16;
        struct conn **v = realloc(w->paused, cap * sizeof(*v));
        if (!v)
            return false;
        w->paused = v;
        w->cap_paused = cap;
    }
    w->paused[w->n_paused++] = conn_ref(c);
    return true;
}

/* Whether a busy channel queue holds publishers back; registers w first
 * (a drain after the registration posts a check to w). */
static bool conn_flow_busy(struct worker *w)
{
    struct broker *b = w->b;
    if (!b->route_ops->forward_busy)
        return false;
    atomic_fetch_or(&b->fwd_busy_waiters, 1ull << (w->id % 64));
    return b->route_ops->forward_busy(b->route_ud);
}

void conn_flow_pause(struct conn *c, struct pub_flow *f)
{
    if (!f->n_slow && !f->fwd_slow && !f->fwd_busy)
        return;
    struct worker *w = c->w;
    uint64_t bit = 1ull << (w->id % 64);
    struct conn_flow *cf = c->flow;
    if (!cf && c->state == CONN_ACTIVE)
        cf = c->flow = calloc(1, sizeof(*cf));
    uint8_t n = 0;
    for (uint8_t i = 0; i < f->n_slow; i++) {
        struct session *s = f->slow[i];
        if (cf && !cf->paused && c->state == CONN_ACTIVE) {
            /* register, then look again: a drain that cleared flow_high
             * before this saw no waiter, and this sees it cleared */
            atomic_fetch_or(&s->flow_waiters, bit);
            if (atomic_load(&s->flow_high)) {
                cf->slow[n++] = s;
                continue;
            }
        }
        session_unref(s);
    }
    f->n_slow = 0;
    bool fwd = f->fwd_slow && cf && !cf->paused && c->state == CONN_ACTIVE &&
               atomic_load(&w->b->stats.fwd_slow_peers) > 0;
    f->fwd_slow = false;
    bool busy = f->fwd_busy && cf && !cf->paused && c->state == CONN_ACTIVE && conn_flow_busy(w);
    f->fwd_busy = false;
    if (!n && !fwd && !busy)
        return;
    cf->n_slow = n;
    cf->fwd = fwd;
    cf->busy = busy;
    if (!conn_flow_list_add(w, c)) {
        conn_flow_release(c); /* out of memory: not paused */
        return;
    }
    cf->paused = true;
    cf->since = uv_now(&w->loop);
    if (c->session) {
        cf->self = session_ref(c->session);
        atomic_store(&cf->self->reading_paused, true);
    }
    atomic_fetch_add(&w->b->stats.publishers_paused, 1);
    conn_io_stop(c);
}

/* Whether c still waits: a session above its mark (expired ones are let go
 * after max_publisher_pause). */
static bool conn_flow_waiting(struct conn *c, uint64_t now)
{
    struct conn_flow *cf = c->flow;
    struct broker *b = c->w->b;
    bool waiting = false;
    for (uint8_t i = 0; i < cf->n_slow; i++)
        if (atomic_load(&cf->slow[i]->flow_high))
            waiting = true;
    if (cf->fwd && atomic_load(&b->stats.fwd_slow_peers) > 0)
        waiting = true;
    if (cf->busy && conn_flow_busy(c->w))
        waiting = true;
    uint64_t max = b->cfg.max_publisher_pause_ms;
    if (waiting && max && now - cf->since >= max) {
        for (uint8_t i = 0; i < cf->n_slow; i++)
            session_flow_expire(b, cf->slow[i], now - cf->since);
        waiting = false;
    }
    return waiting;
}

void conn_flow_check(struct worker *w, uint64_t now)
{
    struct conn **v = w->paused;
    size_t n = w->n_paused;
    w->paused = NULL;
    w->n_paused = w->cap_paused = 0;
    for (size_t i = 0; i < n; i++) {
        struct conn *c = v[i];
        if (c->state == CONN_ACTIVE && conn_flow_paused(c) && conn_flow_waiting(c, now) &&
            conn_flow_list_add(w, c)) {
            conn_unref(c); /* the list holds its own reference again */
            v[i] = NULL;
        }
    }
    /* Resume the others; handling what waited in c->in may pause them
     * again (they join w->paused anew). */
    for (size_t i = 0; i < n; i++) {
        struct conn *c = v[i];
        if (!c)
            continue;
        if (c->flow)
            conn_flow_release(c);
        if (c->state == CONN_ACTIVE) {
            c->last_rx = now; /* not read meanwhile: keep alive counts anew */
            conn_io_start(c);
        }
        conn_unref(c);
    }
    free(v);
}

void conn_flow_free(struct conn *c)
{
    if (!c->flow)
        return;
    conn_flow_release(c);
    free(c->flow);
    c->flow = NULL;
}
