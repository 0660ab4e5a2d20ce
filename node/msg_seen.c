/*
 * msg_seen.c - sorted ranges of message identities (see msg_seen.h).
 */
#include "msg_seen.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct seen_range {
    uint64_t node, lo, hi; /* lo..hi inclusive */
};

struct msg_seen {
    struct seen_range *v; /* sorted by (node, lo), disjoint, not adjacent */
    size_t n, cap;
    bool full;
};

struct msg_seen *msg_seen_new(void)
{
    return calloc(1, sizeof(struct msg_seen));
}

void msg_seen_free(struct msg_seen *x)
{
    if (!x)
        return;
    free(x->v);
    free(x);
}

/* The first range after (node, seq): node greater, or same node and lo
 * greater than seq. */
static size_t seen_upper(const struct msg_seen *x, uint64_t node, uint64_t seq)
{
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct seen_range *r = &x->v[mid];
        if (r->node < node || (r->node == node && r->lo <= seq))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

bool msg_seen_has(const struct msg_seen *x, uint64_t node, uint64_t seq)
{
    size_t i = seen_upper(x, node, seq);
    return i > 0 && x->v[i - 1].node == node && x->v[i - 1].hi >= seq;
}

int msg_seen_add(struct msg_seen *x, uint64_t node, uint64_t seq)
{
    size_t i = seen_upper(x, node, seq);
    struct seen_range *prev = i > 0 && x->v[i - 1].node == node ? &x->v[i - 1] : NULL;
    struct seen_range *next = i < x->n && x->v[i].node == node ? &x->v[i] : NULL;
    if (prev && prev->hi >= seq)
        return 1;
    bool join_prev = prev && prev->hi + 1 == seq;
    bool join_next = next && seq != UINT64_MAX && next->lo == seq + 1;
    if (join_prev && join_next) {
        prev->hi = next->hi;
        memmove(&x->v[i], &x->v[i + 1], (x->n - i - 1) * sizeof(*x->v));
        x->n--;
        return 0;
    }
    if (join_prev) {
        prev->hi = seq;
        return 0;
    }
    if (join_next) {
        next->lo = seq;
        return 0;
    }
    if (x->n == MSG_SEEN_MAX_RANGES) {
        x->full = true;
        return -ENOSPC;
    }
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 4;
        struct seen_range *v = realloc(x->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        x->v = v;
        x->cap = cap;
    }
    memmove(&x->v[i + 1], &x->v[i], (x->n - i) * sizeof(*x->v));
    x->v[i] = (struct seen_range){node, seq, seq};
    x->n++;
    return 0;
}

size_t msg_seen_ranges(const struct msg_seen *x)
{
    return x->n;
}

bool msg_seen_full(const struct msg_seen *x)
{
    return x->full;
}
