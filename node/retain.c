/*
 * retain.c - the retained message store (see retain.h).
 *
 * A trie over topic levels; the node of a topic name holds its retained
 * message. Each node's children hang off a sibling list (walked for '+' and
 * '#') and are found by level through one hash table of edges keyed by
 * (parent node, level string), so a filter without wildcards is a direct
 * lookup level by level and wildcard filters visit only matching branches.
 * One mutex guards the store.
 */
#include "retain.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- trie nodes and the edge table ---- */

struct retain_node {
    struct retain_node *hnext; /* edge hash chain */
    uint64_t hash;
    struct retain_node *parent;
    struct retain_node *kids;
    struct retain_node *sib_prev, *sib_next;
    struct msg *msg;
    bool pending; /* queued for pruning after a walk */
    size_t level_len;
    char level[];
};

struct retain_store {
    pthread_mutex_t lock;
    struct retain_node *root;
    struct retain_node **buckets; /* edges; a power of two of them */
    size_t nbuckets;
    size_t nedges;
    size_t count;
};

#define RETAIN_HT_INITIAL 64

static uint64_t retain_edge_hash(const struct retain_node *parent, const char *level, size_t len)
{
    uint64_t h = (uint64_t)(uintptr_t)parent;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h ^= 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)level[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void retain_ht_grow(struct retain_store *rs)
{
    size_t nb = rs->nbuckets * 2;
    struct retain_node **b = calloc(nb, sizeof(*b));
    if (!b)
        return; /* keep the old buckets: longer chains, still correct */
    for (size_t i = 0; i < rs->nbuckets; i++) {
        struct retain_node *e = rs->buckets[i];
        while (e) {
            struct retain_node *next = e->hnext;
            size_t j = e->hash & (nb - 1);
            e->hnext = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(rs->buckets);
    rs->buckets = b;
    rs->nbuckets = nb;
}

static struct retain_node *retain_child(struct retain_store *rs, const struct retain_node *parent,
                                        const char *level, size_t len)
{
    uint64_t h = retain_edge_hash(parent, level, len);
    for (struct retain_node *e = rs->buckets[h & (rs->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->parent == parent && e->level_len == len &&
            memcmp(e->level, level, len) == 0)
            return e;
    return NULL;
}

static struct retain_node *retain_child_get(struct retain_store *rs, struct retain_node *parent,
                                            const char *level, size_t len)
{
    struct retain_node *c = retain_child(rs, parent, level, len);
    if (c)
        return c;
    c = calloc(1, sizeof(*c) + len);
    if (!c)
        return NULL;
    c->parent = parent;
    c->level_len = len;
    memcpy(c->level, level, len);
    c->sib_next = parent->kids;
    if (parent->kids)
        parent->kids->sib_prev = c;
    parent->kids = c;
    if (rs->nedges >= rs->nbuckets)
        retain_ht_grow(rs);
    c->hash = retain_edge_hash(parent, level, len);
    size_t i = c->hash & (rs->nbuckets - 1);
    c->hnext = rs->buckets[i];
    rs->buckets[i] = c;
    rs->nedges++;
    return c;
}

static void retain_unlink(struct retain_store *rs, struct retain_node *n)
{
    struct retain_node **pp = &rs->buckets[n->hash & (rs->nbuckets - 1)];
    while (*pp && *pp != n)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = n->hnext;
        rs->nedges--;
    }
    if (n->sib_prev)
        n->sib_prev->sib_next = n->sib_next;
    else
        n->parent->kids = n->sib_next;
    if (n->sib_next)
        n->sib_next->sib_prev = n->sib_prev;
}

/* Free n and its ancestors while they hold nothing. A node queued for
 * pruning (pending) is left for its own turn. */
static void retain_prune(struct retain_store *rs, struct retain_node *n)
{
    while (n && n != rs->root && !n->msg && !n->kids && !n->pending) {
        struct retain_node *p = n->parent;
        retain_unlink(rs, n);
        free(n);
        n = p;
    }
}

static size_t retain_level_end(const char *s, size_t len, size_t pos)
{
    const char *slash = pos < len ? memchr(s + pos, '/', len - pos) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

/* The node of topic name t: created when create is set (NULL on out of
 * memory, leaving nothing behind), else NULL when absent. */
static struct retain_node *retain_lookup(struct retain_store *rs, const char *t, size_t len,
                                         bool create)
{
    struct retain_node *n = rs->root;
    size_t pos = 0;
    for (;;) {
        size_t end = retain_level_end(t, len, pos);
        struct retain_node *c = create ? retain_child_get(rs, n, t + pos, end - pos)
                                       : retain_child(rs, n, t + pos, end - pos);
        if (!c) {
            if (create)
                retain_prune(rs, n);
            return NULL;
        }
        n = c;
        if (end == len)
            return n;
        pos = end + 1;
    }
}

static bool retain_expired(const struct msg *m, uint64_t now_ms)
{
    return m->expiry_at != 0 && m->expiry_at <= now_ms;
}

/* ---- public API ---- */

struct retain_store *retain_new(void)
{
    struct retain_store *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return NULL;
    rs->root = calloc(1, sizeof(*rs->root));
    rs->buckets = calloc(RETAIN_HT_INITIAL, sizeof(*rs->buckets));
    if (!rs->root || !rs->buckets || pthread_mutex_init(&rs->lock, NULL) != 0) {
        free(rs->root);
        free(rs->buckets);
        free(rs);
        return NULL;
    }
    rs->nbuckets = RETAIN_HT_INITIAL;
    return rs;
}

void retain_free(struct retain_store *rs)
{
    if (!rs)
        return;
    /* Post-order without recursion: descend to a leaf, free it, go up. */
    struct retain_node *n = rs->root;
    while (n) {
        if (n->kids) {
            struct retain_node *c = n->kids;
            n->kids = c->sib_next;
            n = c;
            continue;
        }
        struct retain_node *p = n->parent;
        msg_unref(n->msg);
        free(n);
        n = p;
    }
    free(rs->buckets);
    pthread_mutex_destroy(&rs->lock);
    free(rs);
}

int retain_set(struct retain_store *rs, struct msg *m)
{
    if (!m || m->topic_len == 0)
        return -EINVAL;
    const char *t = msg_topic(m);
    int r = 0;
    pthread_mutex_lock(&rs->lock);
    if (m->payload_len == 0) {
        /* [MQTT-3.1.1 3.3.1-10, MQTT-5.0 3.3.1-6] an empty retained payload removes the topic's
         * retained message. [MQTT-3.1.1 3.3.1-11, MQTT-5.0 3.3.1-7] and is not stored itself. */
        struct retain_node *n = retain_lookup(rs, t, m->topic_len, false);
        if (n && n->msg) {
            msg_unref(n->msg);
            n->msg = NULL;
            rs->count--;
            retain_prune(rs, n);
        }
    } else {
        /* [MQTT-3.1.1 3.3.1-5/7, MQTT-5.0 3.3.1-5] the message replaces any retained message of the
         * topic. */
        struct retain_node *n = retain_lookup(rs, t, m->topic_len, true);
        if (!n) {
            r = -ENOMEM;
        } else {
            if (n->msg)
                msg_unref(n->msg);
            else
                rs->count++;
            n->msg = msg_ref(m);
        }
    }
    pthread_mutex_unlock(&rs->lock);
    return r;
}

/* ---- matching ---- */

struct retain_item {
    struct retain_node *node; /* has consumed the filter levels before pos */
    size_t pos;               /* start of the next filter level */
    bool done;                /* the filter has no level left */
    bool all;                 /* under '#': this node and all below */
};

struct retain_vec {
    void *v;
    size_t n, cap, size;
    bool failed;
};

static bool retain_vec_push(struct retain_vec *s, const void *item)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        void *v = realloc(s->v, cap * s->size);
        if (!v) {
            s->failed = true;
            return false;
        }
        s->v = v;
        s->cap = cap;
    }
    memcpy((char *)s->v + s->n * s->size, item, s->size);
    s->n++;
    return true;
}

struct retain_walk {
    struct retain_store *rs;
    uint64_t now_ms;
    void (*cb)(void *ud, struct msg *m);
    void *ud;
    int calls;
    bool lost;                 /* out of memory: part of the walk was not visited */
    struct retain_vec expired; /* of struct retain_node *, in visit order */
};

/* Deliver n's message, or drop it when expired (pruning the node later). */
static void retain_visit(struct retain_walk *w, struct retain_node *n)
{
    if (!n->msg)
        return;
    if (retain_expired(n->msg, w->now_ms)) {
        msg_unref(n->msg);
        n->msg = NULL;
        w->rs->count--;
        if (retain_vec_push(&w->expired, &n))
            n->pending = true;
        return;
    }
    w->cb(w->ud, n->msg);
    w->calls++;
}

/* Does this child of the root stay hidden from a first-level wildcard?
 * [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1] */
static bool retain_hidden(const struct retain_store *rs, const struct retain_node *parent,
                          const struct retain_node *c)
{
    return parent == rs->root && c->level_len > 0 && c->level[0] == '$';
}

static void retain_walk(struct retain_walk *w, const char *f, size_t flen)
{
    struct retain_store *rs = w->rs;
    struct retain_vec stack = {.size = sizeof(struct retain_item)};
    struct retain_item it = {rs->root, 0, false, false};
    if (!retain_vec_push(&stack, &it)) {
        w->lost = true;
        return;
    }
    while (stack.n) {
        it = ((struct retain_item *)stack.v)[--stack.n];
        struct retain_node *n = it.node;
        if (it.all) {
            retain_visit(w, n);
            for (struct retain_node *c = n->kids; c; c = c->sib_next) {
                struct retain_item ci = {c, 0, true, true};
                if (!retain_vec_push(&stack, &ci))
                    break;
            }
            continue;
        }
        if (it.done) {
            retain_visit(w, n);
            continue;
        }
        size_t end = retain_level_end(f, flen, it.pos);
        const char *level = f + it.pos;
        size_t ll = end - it.pos;
        bool done = end == flen;
        if (ll == 1 && level[0] == '#') {
            /* '#' matches the parent level too ("sport/#" matches
             * "sport") and every level below. */
            if (n != rs->root)
                retain_visit(w, n);
            for (struct retain_node *c = n->kids; c; c = c->sib_next) {
                struct retain_item ci = {c, 0, true, true};
                if (!retain_hidden(rs, n, c) && !retain_vec_push(&stack, &ci))
                    break;
            }
        } else if (ll == 1 && level[0] == '+') {
            for (struct retain_node *c = n->kids; c; c = c->sib_next) {
                struct retain_item ci = {c, end + 1, done, false};
                if (!retain_hidden(rs, n, c) && !retain_vec_push(&stack, &ci))
                    break;
            }
        } else {
            struct retain_node *c = retain_child(rs, n, level, ll);
            struct retain_item ci = {c, end + 1, done, false};
            if (c)
                retain_vec_push(&stack, &ci);
        }
    }
    /* a branch that could not be pushed was not visited */
    if (stack.failed)
        w->lost = true;
    free(stack.v);
}

int retain_match(struct retain_store *rs, const char *f, size_t flen, uint64_t now_ms,
                 void (*cb)(void *ud, struct msg *m), void *ud)
{
    if (!f || flen == 0 || !cb)
        return 0;
    struct retain_walk w = {rs, now_ms, cb, ud, 0, false, {.size = sizeof(struct retain_node *)}};
    pthread_mutex_lock(&rs->lock);
    bool wild = memchr(f, '+', flen) || memchr(f, '#', flen);
    if (!wild) {
        /* A direct lookup. */
        struct retain_node *n = retain_lookup(rs, f, flen, false);
        if (n)
            retain_visit(&w, n);
    } else {
        retain_walk(&w, f, flen);
    }
    /* Prune the nodes of expired messages, deepest first (they were visited
     * parents before children); a pending ancestor waits for its turn. */
    struct retain_node **ex = w.expired.v;
    for (size_t i = w.expired.n; i-- > 0;) {
        ex[i]->pending = false;
        retain_prune(rs, ex[i]);
    }
    free(w.expired.v);
    pthread_mutex_unlock(&rs->lock);
    return w.lost ? -ENOMEM : w.calls;
}

size_t retain_count(struct retain_store *rs)
{
    pthread_mutex_lock(&rs->lock);
    size_t n = rs->count;
    pthread_mutex_unlock(&rs->lock);
    return n;
}
