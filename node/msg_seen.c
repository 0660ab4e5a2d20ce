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

static int seen_grow(struct msg_seen *x)
{
    if (x->n < x->cap)
        return 0;
    size_t cap = x->cap ? 2 * x->cap : 4;
    struct seen_range *v = realloc(x->v, cap * sizeof(*v));
    if (!v)
        return -ENOMEM;
    x->v = v;
    x->cap = cap;
    return 0;
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
    if (seen_grow(x) < 0)
        return -ENOMEM;
    memmove(&x->v[i + 1], &x->v[i], (x->n - i) * sizeof(*x->v));
    x->v[i] = (struct seen_range){node, seq, seq};
    x->n++;
    return 0;
}

int msg_seen_add_range(struct msg_seen *x, uint64_t node, uint64_t lo, uint64_t hi)
{
    if (lo > hi)
        return -EINVAL;
    /* j: the first range that is not wholly before lo..hi (and not adjacent) */
    size_t j = 0;
    while (j < x->n && (x->v[j].node < node ||
                        (x->v[j].node == node && x->v[j].hi < lo && x->v[j].hi + 1 < lo)))
        j++;
    /* j..k-1 overlap or touch lo..hi: they become one */
    size_t k = j;
    while (k < x->n && x->v[k].node == node && (hi == UINT64_MAX || x->v[k].lo <= hi + 1)) {
        if (x->v[k].lo < lo)
            lo = x->v[k].lo;
        if (x->v[k].hi > hi)
            hi = x->v[k].hi;
        k++;
    }
    if (k > j) {
        x->v[j] = (struct seen_range){node, lo, hi};
        memmove(&x->v[j + 1], &x->v[k], (x->n - k) * sizeof(*x->v));
        x->n -= k - j - 1;
        return 0;
    }
    if (x->n == MSG_SEEN_MAX_RANGES) {
        x->full = true;
        return -ENOSPC;
    }
    if (seen_grow(x) < 0)
        return -ENOMEM;
    memmove(&x->v[j + 1], &x->v[j], (x->n - j) * sizeof(*x->v));
    x->v[j] = (struct seen_range){node, lo, hi};
    x->n++;
    return 0;
}

int msg_seen_del(struct msg_seen *x, uint64_t node, uint64_t seq)
{
    size_t i = seen_upper(x, node, seq);
    if (i == 0 || x->v[i - 1].node != node || x->v[i - 1].hi < seq)
        return 0;
    struct seen_range *r = &x->v[i - 1];
    if (r->lo == seq && r->hi == seq) {
        memmove(r, r + 1, (x->n - i) * sizeof(*x->v));
        x->n--;
    } else if (r->lo == seq) {
        r->lo = seq + 1;
    } else if (r->hi == seq) {
        r->hi = seq - 1;
    } else if (x->n == MSG_SEEN_MAX_RANGES || seen_grow(x) < 0) {
        r->hi = seq - 1; /* no room to split: the rest goes too */
        x->full = true;
        return -ENOSPC;
    } else {
        r = &x->v[i - 1]; /* seen_grow may have moved it */
        memmove(&x->v[i + 1], &x->v[i], (x->n - i) * sizeof(*x->v));
        x->v[i] = (struct seen_range){node, seq + 1, r->hi};
        r->hi = seq - 1;
        x->n++;
    }
    return 0;
}

void msg_seen_range(const struct msg_seen *x, size_t i, uint64_t *node, uint64_t *lo, uint64_t *hi)
{
    *node = x->v[i].node;
    *lo = x->v[i].lo;
    *hi = x->v[i].hi;
}

size_t msg_seen_ranges(const struct msg_seen *x)
{
    return x->n;
}

bool msg_seen_full(const struct msg_seen *x)
{
    return x->full;
}
