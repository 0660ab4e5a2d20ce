/*
 * sub_index.c - the node's subscription index (see sub_index.h).
 *
 * Layout:
 *  - filters without wildcards live in a hash table keyed by the filter
 *    string (`exact`), so a publish finds them with one lookup;
 *  - filters with wildcards live in a trie over topic levels. A trie node
 *    has direct pointers to its '+' and '#' children; its other children
 *    hang off a sibling list and are found through one hash table of edges
 *    keyed by (parent node, level string) (`edges`);
 *  - each filter node (exact or trie) holds a list of plain subscriptions
 *    and a list of shared groups, each group a list of members with a round
 *    robin cursor;
 *  - every subscription (subscriber x list) is also in a hash table keyed by
 *    (list, subscriber) (`pairs`), so add/replace/remove do not scan lists.
 *
 * A read-write lock guards everything; only the round robin cursors change
 * under the read lock, and they are atomic.
 */
#include "sub_index.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

/* ---- a small intrusive chained hash table ---- */

struct sub_hnode {
    struct sub_hnode *next;
    uint64_t hash;
};

struct sub_htable {
    struct sub_hnode **buckets;
    size_t nbuckets; /* a power of two */
    size_t n;
};

#define SUB_HT_INITIAL 64

static int sub_ht_init(struct sub_htable *ht)
{
    ht->buckets = calloc(SUB_HT_INITIAL, sizeof(*ht->buckets));
    if (!ht->buckets)
        return -ENOMEM;
    ht->nbuckets = SUB_HT_INITIAL;
    ht->n = 0;
    return 0;
}

static void sub_ht_destroy(struct sub_htable *ht)
{
    free(ht->buckets);
    ht->buckets = NULL;
}

/* Double the buckets; on out of memory keep the old ones (longer chains). */
static void sub_ht_grow(struct sub_htable *ht)
{
    size_t nb = ht->nbuckets * 2;
    struct sub_hnode **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < ht->nbuckets; i++) {
        struct sub_hnode *e = ht->buckets[i];
        while (e) {
            struct sub_hnode *next = e->next;
            size_t j = e->hash & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(ht->buckets);
    ht->buckets = b;
    ht->nbuckets = nb;
}

static void sub_ht_insert(struct sub_htable *ht, struct sub_hnode *e, uint64_t hash)
{
    if (ht->n >= ht->nbuckets)
        sub_ht_grow(ht);
    size_t i = hash & (ht->nbuckets - 1);
    e->hash = hash;
    e->next = ht->buckets[i];
    ht->buckets[i] = e;
    ht->n++;
}

static void sub_ht_remove(struct sub_htable *ht, struct sub_hnode *e)
{
    struct sub_hnode **pp = &ht->buckets[e->hash & (ht->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = e->next;
        ht->n--;
    }
}

static struct sub_hnode *sub_ht_first(const struct sub_htable *ht, uint64_t hash)
{
    return ht->buckets[hash & (ht->nbuckets - 1)];
}

/* FNV-1a over bytes, seeded. */
static uint64_t sub_hash_bytes(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t sub_hash_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t sub_hash_ptr(const void *p)
{
    return sub_hash_mix((uint64_t)(uintptr_t)p);
}

#define SUB_FNV_SEED 0xcbf29ce484222325ull

/* ---- subscriptions ---- */

struct sub_list;

/* 40 bytes, so that an entry takes a 48-byte malloc chunk: a node holds
 * one per subscription, often one per connected device. */
struct sub_entry {
    struct sub_hnode pair; /* in idx->pairs, keyed by (owner, subscriber) */
    void *subscriber;
    struct sub_list *owner;
    uint32_t pos : 24; /* index in owner->v (SUB_LIST_MAX) */
    uint32_t options : 8;
    uint32_t sub_id;
};

#define SUB_LIST_MAX ((1u << 24) - 1)

/* The entries of a filter node or shared group. A list of one (the usual
 * case for a device's own topic) keeps its entry in `one` instead of an
 * allocated array. */
struct sub_list {
    struct sub_entry **v; /* &one while cap == 1 */
    struct sub_entry *one;
    uint32_t n, cap;
};

struct sub_group {
    struct sub_group *next;
    struct sub_list members;
    atomic_size_t cursor; /* round robin; advanced under the read lock */
    size_t name_len;
    char name[];
};

/* What a filter node holds. */
struct sub_node {
    struct sub_list subs;
    struct sub_group *groups;
};

/* A wildcard-free filter. */
struct sub_exact {
    struct sub_hnode h; /* in idx->exact, keyed by the filter */
    struct sub_node node;
    size_t len;
    char filter[];
};

/* A trie node: the filters whose levels lead here. */
struct sub_trie {
    struct sub_hnode h; /* in idx->edges when an ordinary-level child */
    struct sub_trie *parent;
    struct sub_trie *plus, *hash; /* the '+' and '#' children */
    struct sub_trie *kids;        /* ordinary-level children */
    struct sub_trie *sib_prev, *sib_next;
    struct sub_node node;
    size_t level_len;
    char level[];
};

struct sub_index {
    pthread_rwlock_t lock;
    const struct route_ops *ops;
    void *ud;
    struct sub_htable exact;
    struct sub_htable edges;
    struct sub_htable pairs;
    struct sub_trie *root;
    size_t count;
};

static uint64_t sub_pair_hash(const struct sub_list *l, const void *subscriber)
{
    return sub_hash_mix(sub_hash_ptr(l) ^ (uint64_t)(uintptr_t)subscriber);
}

static struct sub_entry *sub_pair_find(struct sub_index *idx, struct sub_list *l,
                                       const void *subscriber)
{
    uint64_t h = sub_pair_hash(l, subscriber);
    for (struct sub_hnode *e = sub_ht_first(&idx->pairs, h); e; e = e->next) {
        struct sub_entry *s = (struct sub_entry *)e;
        if (e->hash == h && s->owner == l && s->subscriber == subscriber)
            return s;
    }
    return NULL;
}

static void sub_list_free_array(struct sub_list *l)
{
    if (l->v != &l->one)
        free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static int sub_list_push(struct sub_list *l, struct sub_entry *s)
{
    if (l->n == SUB_LIST_MAX)
        return -ENOSPC;
    if (l->cap == 0) {
        l->v = &l->one;
        l->cap = 1;
    } else if (l->n == l->cap) {
        uint32_t cap = l->cap * 2 > SUB_LIST_MAX ? SUB_LIST_MAX : l->cap * 2;
        struct sub_entry **v;
        if (l->v == &l->one) {
            v = malloc(cap * sizeof(*v));
            if (v)
                v[0] = l->one;
        } else {
            v = realloc(l->v, cap * sizeof(*v));
        }
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    s->owner = l;
    s->pos = l->n;
    l->v[l->n++] = s;
    return 0;
}

/* Remove by swapping the last entry in (keeps removal O(1)). */
static void sub_list_take(struct sub_list *l, struct sub_entry *s)
{
    struct sub_entry *last = l->v[--l->n];
    l->v[s->pos] = last;
    last->pos = s->pos;
    if (l->n == 0)
        sub_list_free_array(l);
}

/* Free the entries of a list (index teardown). */
static void sub_list_clear(struct sub_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    sub_list_free_array(l);
}

static void sub_node_clear(struct sub_node *n)
{
    sub_list_clear(&n->subs);
    while (n->groups) {
        struct sub_group *g = n->groups;
        n->groups = g->next;
        sub_list_clear(&g->members);
        free(g);
    }
}

static bool sub_node_empty(const struct sub_node *n)
{
    return n->subs.n == 0 && n->groups == NULL;
}

static struct sub_group *sub_group_find(struct sub_node *n, const char *name, size_t len)
{
    for (struct sub_group *g = n->groups; g; g = g->next)
        if (g->name_len == len && memcmp(g->name, name, len) == 0)
            return g;
    return NULL;
}

static struct sub_group *sub_group_create(struct sub_node *n, const char *name, size_t len)
{
    struct sub_group *g = calloc(1, sizeof(*g) + len);
    if (!g)
        return NULL;
    atomic_init(&g->cursor, 0);
    g->name_len = len;
    memcpy(g->name, name, len);
    g->next = n->groups;
    n->groups = g;
    return g;
}

static void sub_group_drop(struct sub_node *n, struct sub_group *g)
{
    struct sub_group **pp = &n->groups;
    while (*pp != g)
        pp = &(*pp)->next;
    *pp = g->next;
    sub_list_free_array(&g->members);
    free(g);
}

/* ---- exact filters ---- */

static struct sub_exact *sub_exact_find(struct sub_index *idx, const char *f, size_t len)
{
    uint64_t h = sub_hash_bytes(SUB_FNV_SEED, f, len);
    for (struct sub_hnode *e = sub_ht_first(&idx->exact, h); e; e = e->next) {
        struct sub_exact *x = (struct sub_exact *)e;
        if (e->hash == h && x->len == len && memcmp(x->filter, f, len) == 0)
            return x;
    }
    return NULL;
}

static struct sub_exact *sub_exact_get(struct sub_index *idx, const char *f, size_t len)
{
    struct sub_exact *x = sub_exact_find(idx, f, len);
    if (x)
        return x;
    x = calloc(1, sizeof(*x) + len);
    if (!x)
        return NULL;
    x->len = len;
    memcpy(x->filter, f, len);
    sub_ht_insert(&idx->exact, &x->h, sub_hash_bytes(SUB_FNV_SEED, f, len));
    return x;
}

static void sub_exact_prune(struct sub_index *idx, struct sub_exact *x)
{
    if (!sub_node_empty(&x->node))
        return;
    sub_ht_remove(&idx->exact, &x->h);
    free(x);
}

/* ---- the trie ---- */

static uint64_t sub_edge_hash(const struct sub_trie *parent, const char *level, size_t len)
{
    return sub_hash_bytes(sub_hash_ptr(parent), level, len);
}

static struct sub_trie *sub_trie_child(struct sub_index *idx, const struct sub_trie *parent,
                                       const char *level, size_t len)
{
    uint64_t h = sub_edge_hash(parent, level, len);
    for (struct sub_hnode *e = sub_ht_first(&idx->edges, h); e; e = e->next) {
        struct sub_trie *c = (struct sub_trie *)e;
        if (e->hash == h && c->parent == parent && c->level_len == len &&
            memcmp(c->level, level, len) == 0)
            return c;
    }
    return NULL;
}

static struct sub_trie *sub_trie_alloc(struct sub_trie *parent, const char *level, size_t len)
{
    struct sub_trie *c = calloc(1, sizeof(*c) + len);
    if (!c)
        return NULL;
    c->parent = parent;
    c->level_len = len;
    memcpy(c->level, level, len);
    return c;
}

/* The child of parent for one filter level, created if missing. */
static struct sub_trie *sub_trie_get_child(struct sub_index *idx, struct sub_trie *parent,
                                           const char *level, size_t len)
{
    struct sub_trie **wild = NULL;
    if (len == 1 && level[0] == '+')
        wild = &parent->plus;
    else if (len == 1 && level[0] == '#')
        wild = &parent->hash;
    if (wild) {
        if (!*wild)
            *wild = sub_trie_alloc(parent, level, len);
        return *wild;
    }
    struct sub_trie *c = sub_trie_child(idx, parent, level, len);
    if (c)
        return c;
    c = sub_trie_alloc(parent, level, len);
    if (!c)
        return NULL;
    c->sib_next = parent->kids;
    if (parent->kids)
        parent->kids->sib_prev = c;
    parent->kids = c;
    sub_ht_insert(&idx->edges, &c->h, sub_edge_hash(parent, level, len));
    return c;
}

/* Unlink n from its parent (n is not the root). */
static void sub_trie_unlink(struct sub_index *idx, struct sub_trie *n)
{
    struct sub_trie *p = n->parent;
    if (p->plus == n) {
        p->plus = NULL;
    } else if (p->hash == n) {
        p->hash = NULL;
    } else {
        if (n->sib_prev)
            n->sib_prev->sib_next = n->sib_next;
        else
            p->kids = n->sib_next;
        if (n->sib_next)
            n->sib_next->sib_prev = n->sib_prev;
        sub_ht_remove(&idx->edges, &n->h);
    }
}

/* Free n and its ancestors while they hold nothing (so churn does not grow
 * the trie). */
static void sub_trie_prune(struct sub_index *idx, struct sub_trie *n)
{
    while (n && n != idx->root && sub_node_empty(&n->node) && !n->plus && !n->hash && !n->kids) {
        struct sub_trie *p = n->parent;
        sub_trie_unlink(idx, n);
        free(n);
        n = p;
    }
}

/* The trie node for filter f, created if missing; NULL on out of memory
 * (nothing created stays behind). */
static struct sub_trie *sub_trie_get(struct sub_index *idx, const char *f, size_t len)
{
    struct sub_trie *n = idx->root;
    size_t pos = 0;
    for (;;) {
        const char *slash = pos < len ? memchr(f + pos, '/', len - pos) : NULL;
        size_t end = slash ? (size_t)(slash - f) : len;
        struct sub_trie *c = sub_trie_get_child(idx, n, f + pos, end - pos);
        if (!c) {
            sub_trie_prune(idx, n);
            return NULL;
        }
        n = c;
        if (end == len)
            return n;
        pos = end + 1;
    }
}

/* The existing trie node for filter f, or NULL. */
static struct sub_trie *sub_trie_find(struct sub_index *idx, const char *f, size_t len)
{
    struct sub_trie *n = idx->root;
    size_t pos = 0;
    for (;;) {
        const char *slash = pos < len ? memchr(f + pos, '/', len - pos) : NULL;
        size_t end = slash ? (size_t)(slash - f) : len;
        const char *level = f + pos;
        size_t ll = end - pos;
        if (ll == 1 && level[0] == '+')
            n = n->plus;
        else if (ll == 1 && level[0] == '#')
            n = n->hash;
        else
            n = sub_trie_child(idx, n, level, ll);
        if (!n || end == len)
            return n;
        pos = end + 1;
    }
}

/* Free the whole trie without recursion (levels may be many). */
static void sub_trie_destroy(struct sub_trie *root)
{
    struct sub_trie *n = root;
    while (n) {
        struct sub_trie *c = NULL;
        if (n->plus) {
            c = n->plus;
            n->plus = NULL;
        } else if (n->hash) {
            c = n->hash;
            n->hash = NULL;
        } else if (n->kids) {
            c = n->kids;
            n->kids = c->sib_next;
        }
        if (c) {
            n = c;
            continue;
        }
        struct sub_trie *p = n->parent;
        sub_node_clear(&n->node);
        free(n);
        n = p;
    }
}

/* ---- a filter's location: an exact node or a trie node ---- */

struct sub_where {
    struct sub_exact *exact;
    struct sub_trie *trie;
};

static struct sub_node *sub_where_node(const struct sub_where *w)
{
    if (w->exact)
        return &w->exact->node;
    if (w->trie)
        return &w->trie->node;
    return NULL;
}

static void sub_where_prune(struct sub_index *idx, const struct sub_where *w)
{
    if (w->exact)
        sub_exact_prune(idx, w->exact);
    else if (w->trie)
        sub_trie_prune(idx, w->trie);
}

/* Split a filter into its group (NULL when not shared) and inner filter. */
static int sub_split(const char *filter, size_t len, const char **group, size_t *glen,
                     const char **inner, size_t *ilen)
{
    int r = topic_share_parse(filter, len, group, glen, inner, ilen);
    if (r < 0)
        return -EINVAL;
    if (r == 0) {
        *group = NULL;
        *glen = 0;
        *inner = filter;
        *ilen = len;
    }
    return 0;
}

/* ---- public API ---- */

struct sub_index *sub_index_new(const struct route_ops *ops, void *ud)
{
    struct sub_index *idx = calloc(1, sizeof(*idx));
    if (!idx)
        return NULL;
    idx->ops = ops;
    idx->ud = ud;
    idx->root = sub_trie_alloc(NULL, "", 0);
    if (!idx->root || pthread_rwlock_init(&idx->lock, NULL) != 0) {
        free(idx->root);
        free(idx);
        return NULL;
    }
    if (sub_ht_init(&idx->exact) || sub_ht_init(&idx->edges) || sub_ht_init(&idx->pairs)) {
        sub_ht_destroy(&idx->exact);
        sub_ht_destroy(&idx->edges);
        sub_ht_destroy(&idx->pairs);
        pthread_rwlock_destroy(&idx->lock);
        free(idx->root);
        free(idx);
        return NULL;
    }
    return idx;
}

void sub_index_free(struct sub_index *idx)
{
    if (!idx)
        return;
    for (size_t i = 0; i < idx->exact.nbuckets; i++) {
        struct sub_hnode *e = idx->exact.buckets[i];
        while (e) {
            struct sub_hnode *next = e->next;
            struct sub_exact *x = (struct sub_exact *)e;
            sub_node_clear(&x->node);
            free(x);
            e = next;
        }
    }
    sub_trie_destroy(idx->root);
    sub_ht_destroy(&idx->exact);
    sub_ht_destroy(&idx->edges);
    sub_ht_destroy(&idx->pairs);
    pthread_rwlock_destroy(&idx->lock);
    free(idx);
}

static void sub_route_added(struct sub_index *idx, const char *filter, size_t len)
{
    if (idx->ops && idx->ops->filter_added)
        idx->ops->filter_added(idx->ud, filter, len);
}

static void sub_route_joined(struct sub_index *idx, const char *filter, size_t len)
{
    if (idx->ops && idx->ops->filter_joined)
        idx->ops->filter_joined(idx->ud, filter, len);
}

static void sub_route_removed(struct sub_index *idx, const char *filter, size_t len)
{
    if (idx->ops && idx->ops->filter_removed)
        idx->ops->filter_removed(idx->ud, filter, len);
}

/* The locked part of sub_index_add. */
static int sub_index_add_locked(struct sub_index *idx, const char *filter, size_t len,
                                void *subscriber, uint8_t options, uint32_t sub_id)
{
    const char *group, *inner;
    size_t glen, ilen;
    if (sub_split(filter, len, &group, &glen, &inner, &ilen) < 0 || ilen == 0)
        return -EINVAL;

    struct sub_where w = {0};
    if (topic_has_wildcard(inner, ilen))
        w.trie = sub_trie_get(idx, inner, ilen);
    else
        w.exact = sub_exact_get(idx, inner, ilen);
    struct sub_node *node = sub_where_node(&w);
    if (!node)
        return -ENOMEM;

    struct sub_group *g = NULL;
    struct sub_list *l = &node->subs;
    if (group) {
        g = sub_group_find(node, group, glen);
        if (!g && !(g = sub_group_create(node, group, glen))) {
            sub_where_prune(idx, &w);
            return -ENOMEM;
        }
        l = &g->members;
    }

    struct sub_entry *s = sub_pair_find(idx, l, subscriber);
    if (s) {
        /* [MQTT-3.1.1 3.8.4-3, MQTT-5.0 3.8.4-3] a subscription with the same filter replaces the
         * existing one (its options and identifier). */
        s->options = options;
        s->sub_id = sub_id;
        return 1;
    }

    s = calloc(1, sizeof(*s));
    int r = s ? sub_list_push(l, s) : -ENOMEM;
    if (r < 0) {
        free(s);
        if (g && g->members.n == 0)
            sub_group_drop(node, g);
        sub_where_prune(idx, &w);
        return r;
    }
    s->subscriber = subscriber;
    s->options = options;
    s->sub_id = sub_id;
    sub_ht_insert(&idx->pairs, &s->pair, sub_pair_hash(l, subscriber));
    idx->count++;
    if (l->n == 1)
        sub_route_added(idx, filter, len);
    else
        sub_route_joined(idx, filter, len);
    return 0;
}

int sub_index_add(struct sub_index *idx, const char *filter, size_t len, void *subscriber,
                  uint8_t options, uint32_t sub_id)
{
    pthread_rwlock_wrlock(&idx->lock);
    int r = sub_index_add_locked(idx, filter, len, subscriber, options, sub_id);
    pthread_rwlock_unlock(&idx->lock);
    return r;
}

static int sub_index_remove_locked(struct sub_index *idx, const char *filter, size_t len,
                                   void *subscriber)
{
    const char *group, *inner;
    size_t glen, ilen;
    if (sub_split(filter, len, &group, &glen, &inner, &ilen) < 0 || ilen == 0)
        return -ENOENT;

    struct sub_where w = {0};
    if (topic_has_wildcard(inner, ilen))
        w.trie = sub_trie_find(idx, inner, ilen);
    else
        w.exact = sub_exact_find(idx, inner, ilen);
    struct sub_node *node = sub_where_node(&w);
    if (!node)
        return -ENOENT;

    struct sub_group *g = NULL;
    struct sub_list *l = &node->subs;
    if (group) {
        g = sub_group_find(node, group, glen);
        if (!g)
            return -ENOENT;
        l = &g->members;
    }
    struct sub_entry *s = sub_pair_find(idx, l, subscriber);
    if (!s)
        return -ENOENT;

    sub_ht_remove(&idx->pairs, &s->pair);
    sub_list_take(l, s);
    free(s);
    idx->count--;
    if (l->n == 0) {
        sub_route_removed(idx, filter, len);
        if (g)
            sub_group_drop(node, g);
        sub_where_prune(idx, &w);
    }
    return 0;
}

int sub_index_remove(struct sub_index *idx, const char *filter, size_t len, void *subscriber)
{
    pthread_rwlock_wrlock(&idx->lock);
    int r = sub_index_remove_locked(idx, filter, len, subscriber);
    pthread_rwlock_unlock(&idx->lock);
    return r;
}

/* ---- matching ---- */

struct sub_match_ctx {
    bool (*eligible)(void *subscriber);
    sub_index_match_cb cb;
    void *ud;
    int calls;
    unsigned plain_nodes;        /* nodes that reported non-shared subscriptions */
    sub_index_group_fn group_ok; /* NULL: every shared group */
    void *group_ud;
    bool lost; /* out of memory: a branch of the trie was not walked */
};

/* One member of a shared group: round robin from the cursor, the first
 * eligible member, else the member at the cursor. Each message goes to only one
 * member of the group (MQTT 5.0 section 4.8.2). */
static struct sub_entry *sub_group_pick(struct sub_group *g, bool (*eligible)(void *))
{
    size_t n = g->members.n;
    size_t start = atomic_fetch_add_explicit(&g->cursor, 1, memory_order_relaxed) % n;
    if (eligible) {
        for (size_t k = 0; k < n; k++) {
            size_t i = (start + k) % n;
            struct sub_entry *s = g->members.v[i];
            if (eligible(s->subscriber)) {
                if (k)
                    atomic_store_explicit(&g->cursor, i + 1, memory_order_relaxed);
                return s;
            }
        }
    }
    return g->members.v[start];
}

static void sub_node_report(struct sub_match_ctx *c, struct sub_node *n)
{
    if (n->subs.n)
        c->plain_nodes++;
    for (size_t i = 0; i < n->subs.n; i++) {
        struct sub_entry *s = n->subs.v[i];
        c->cb(c->ud, s->subscriber, s->options, s->sub_id, false);
        c->calls++;
    }
    for (struct sub_group *g = n->groups; g; g = g->next) {
        if (g->members.n == 0 || (c->group_ok && !c->group_ok(c->group_ud, g->name, g->name_len)))
            continue;
        struct sub_entry *s = sub_group_pick(g, c->eligible);
        c->cb(c->ud, s->subscriber, s->options, s->sub_id, true);
        c->calls++;
    }
}

struct sub_walk_item {
    struct sub_trie *node; /* has consumed the levels before pos */
    size_t pos;            /* start of the next topic level */
    bool done;             /* no level left */
};

#define SUB_WALK_STACK 64

/* Walk the trie branches that can match topic t: for each level the exact
 * child, the '+' child and the '#' child. Iterative, with a stack no deeper
 * than the number of levels plus one. */
static void sub_trie_match(struct sub_index *idx, const char *t, size_t len,
                           struct sub_match_ctx *c)
{
    struct sub_walk_item local[SUB_WALK_STACK];
    struct sub_walk_item *stack = local;
    size_t cap = SUB_WALK_STACK, top = 0;
    /* [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1] no wildcard at the first level matches a '$' name. */
    bool dollar = t[0] == '$';

    stack[top++] = (struct sub_walk_item){idx->root, 0, false};
    while (top) {
        struct sub_walk_item it = stack[--top];
        struct sub_trie *n = it.node;
        bool first = n == idx->root;
        /* '#' matches the parent level and everything below it. */
        if (n->hash && !(first && dollar))
            sub_node_report(c, &n->hash->node);
        if (it.done) {
            sub_node_report(c, &n->node);
            continue;
        }
        const char *slash = memchr(t + it.pos, '/', len - it.pos);
        size_t end = slash ? (size_t)(slash - t) : len;
        bool done = end == len;
        struct sub_trie *kids[2];
        int nk = 0;
        if (n->kids) {
            struct sub_trie *k = sub_trie_child(idx, n, t + it.pos, end - it.pos);
            if (k)
                kids[nk++] = k;
        }
        if (n->plus && !(first && dollar))
            kids[nk++] = n->plus;
        if (top + nk > cap) {
            size_t ncap = cap * 2;
            struct sub_walk_item *ns = malloc(ncap * sizeof(*ns));
            if (!ns) {
                c->lost = true; /* out of memory: the caller is told */
                break;
            }
            memcpy(ns, stack, top * sizeof(*ns));
            if (stack != local)
                free(stack);
            stack = ns;
            cap = ncap;
        }
        for (int i = 0; i < nk; i++)
            stack[top++] = (struct sub_walk_item){kids[i], end + 1, done};
    }
    if (stack != local)
        free(stack);
}

int sub_index_match(struct sub_index *idx, const char *t, size_t len,
                    bool (*eligible)(void *subscriber), sub_index_match_cb cb, void *ud)
{
    return sub_index_match_ex(idx, t, len, eligible, cb, ud, NULL);
}

int sub_index_match_ex(struct sub_index *idx, const char *t, size_t len,
                       bool (*eligible)(void *subscriber), sub_index_match_cb cb, void *ud,
                       bool *unique)
{
    return sub_index_match_groups(idx, t, len, eligible, NULL, NULL, cb, ud, unique);
}

int sub_index_match_groups(struct sub_index *idx, const char *t, size_t len,
                           bool (*eligible)(void *subscriber), sub_index_group_fn group_ok,
                           void *group_ud, sub_index_match_cb cb, void *ud, bool *unique)
{
    if (unique)
        *unique = true;
    if (!t || len == 0 || !cb)
        return 0;
    struct sub_match_ctx c = {eligible, cb, ud, 0, 0, group_ok, group_ud, false};
    pthread_rwlock_rdlock(&idx->lock);
    struct sub_exact *x = sub_exact_find(idx, t, len);
    if (x)
        sub_node_report(&c, &x->node);
    sub_trie_match(idx, t, len, &c);
    pthread_rwlock_unlock(&idx->lock);
    /* A filter holds a subscriber at most once, so non-shared matches can
     * repeat a subscriber only when they came from several filters. */
    if (unique)
        *unique = c.plain_nodes <= 1;
    return c.lost ? -ENOMEM : c.calls;
}

size_t sub_index_count(struct sub_index *idx)
{
    pthread_rwlock_rdlock(&idx->lock);
    size_t n = idx->count;
    pthread_rwlock_unlock(&idx->lock);
    return n;
}
