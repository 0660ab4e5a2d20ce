/*
 * routes.c - the in-memory route matcher (see routes.h).
 *
 * A trie of topic levels. Each trie node has its literal children in a small
 * open-addressing hash table (keyed by the level's bytes), and its '+' and
 * '#' children apart, so matching a topic of L levels visits at most the
 * literal child, '+' and '#' at each level. A trie node holds the routes
 * whose filter ends there: the sorted set of nodes with a plain route, and a
 * list of shared groups, each with its sorted set of nodes. Empty trie nodes
 * are pruned on removal.
 */
#include "routes.h"
#include "topic.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct nodeset {
    uint64_t *ids; /* ascending */
    uint32_t n, cap;
};

struct share {
    char *full; /* "$share/group/inner" */
    size_t full_len;
    size_t group_off, group_len;
    struct nodeset nodes;
};

struct tnode {
    struct tnode *parent;
    char *level;
    size_t level_len;
    uint64_t hash;
    struct tnode **kids; /* open addressing, kid_cap a power of two or 0 */
    uint32_t n_kids, kid_cap;
    struct tnode *plus, *hash_kid;
    struct nodeset plain;
    struct share *shares;
    uint32_t n_shares;
};

struct routes {
    pthread_rwlock_t lock;
    struct tnode root;
    size_t count;
};

/* The matcher whose write lock this thread holds for a batch
 * (routes_write_begin), or NULL. */
static _Thread_local struct routes *batch_held;

/* Take the write lock unless this thread holds it for a batch; returns
 * whether it was taken (for wunlock). */
static bool wlock(struct routes *r)
{
    if (batch_held == r)
        return false;
    pthread_rwlock_wrlock(&r->lock);
    return true;
}

static void wunlock(struct routes *r, bool taken)
{
    if (taken)
        pthread_rwlock_unlock(&r->lock);
}

void routes_write_begin(struct routes *r)
{
    pthread_rwlock_wrlock(&r->lock);
    batch_held = r;
}

void routes_write_end(struct routes *r)
{
    batch_held = NULL;
    pthread_rwlock_unlock(&r->lock);
}

/* ---- node sets ---- */

static int nodeset_find(const struct nodeset *s, uint64_t id, bool *found)
{
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (s->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->n && s->ids[lo] == id;
    return (int)lo;
}

static int nodeset_add(struct nodeset *s, uint64_t id)
{
    bool found;
    int at = nodeset_find(s, id, &found);
    if (found)
        return 0;
    if (s->n == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 2;
        uint64_t *p = realloc(s->ids, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        s->ids = p;
        s->cap = cap;
    }
    memmove(s->ids + at + 1, s->ids + at, (s->n - (uint32_t)at) * sizeof *s->ids);
    s->ids[at] = id;
    s->n++;
    return 1;
}

static int nodeset_del(struct nodeset *s, uint64_t id)
{
    bool found;
    int at = nodeset_find(s, id, &found);
    if (!found)
        return 0;
    memmove(s->ids + at, s->ids + at + 1, (s->n - (uint32_t)at - 1) * sizeof *s->ids);
    s->n--;
    return 1;
}

/* ---- trie ---- */

static uint64_t level_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static struct tnode *kid_find(const struct tnode *t, const char *s, size_t n, uint64_t h)
{
    if (!t->kid_cap)
        return NULL;
    uint32_t mask = t->kid_cap - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        struct tnode *k = t->kids[i];
        if (!k)
            return NULL;
        if (k->hash == h && k->level_len == n && memcmp(k->level, s, n) == 0)
            return k;
    }
}

static void kid_insert_slot(struct tnode **kids, uint32_t cap, struct tnode *k)
{
    uint32_t mask = cap - 1;
    uint32_t i = (uint32_t)k->hash & mask;
    while (kids[i])
        i = (i + 1) & mask;
    kids[i] = k;
}

static int kid_insert(struct tnode *t, struct tnode *k)
{
    if ((t->n_kids + 1) * 2 > t->kid_cap) {
        uint32_t cap = t->kid_cap ? t->kid_cap * 2 : 4;
        struct tnode **kids = calloc(cap, sizeof *kids);
        if (!kids)
            return -ENOMEM;
        for (uint32_t i = 0; i < t->kid_cap; i++)
            if (t->kids[i])
                kid_insert_slot(kids, cap, t->kids[i]);
        free(t->kids);
        t->kids = kids;
        t->kid_cap = cap;
    }
    kid_insert_slot(t->kids, t->kid_cap, k);
    t->n_kids++;
    return 0;
}

/* Remove k from t's table (linear probing: re-insert the cluster after it). */
static void kid_remove(struct tnode *t, struct tnode *k)
{
    uint32_t mask = t->kid_cap - 1;
    uint32_t i = (uint32_t)k->hash & mask;
    while (t->kids[i] != k)
        i = (i + 1) & mask;
    t->kids[i] = NULL;
    t->n_kids--;
    for (uint32_t j = (i + 1) & mask; t->kids[j]; j = (j + 1) & mask) {
        struct tnode *m = t->kids[j];
        t->kids[j] = NULL;
        kid_insert_slot(t->kids, t->kid_cap, m);
    }
}

static bool tnode_empty(const struct tnode *t)
{
    return t->n_kids == 0 && !t->plus && !t->hash_kid && t->plain.n == 0 && t->n_shares == 0;
}

static void tnode_free(struct tnode *t, bool self)
{
    for (uint32_t i = 0; i < t->kid_cap; i++)
        if (t->kids[i])
            tnode_free(t->kids[i], true);
    if (t->plus)
        tnode_free(t->plus, true);
    if (t->hash_kid)
        tnode_free(t->hash_kid, true);
    free(t->kids);
    free(t->plain.ids);
    for (uint32_t i = 0; i < t->n_shares; i++) {
        free(t->shares[i].full);
        free(t->shares[i].nodes.ids);
    }
    free(t->shares);
    free(t->level);
    if (self)
        free(t);
    else
        memset(t, 0, sizeof *t);
}

/* Detach and free t and its empty ancestors (not the root). */
static void prune(struct tnode *t)
{
    while (t->parent && tnode_empty(t)) {
        struct tnode *p = t->parent;
        if (p->plus == t)
            p->plus = NULL;
        else if (p->hash_kid == t)
            p->hash_kid = NULL;
        else
            kid_remove(p, t);
        tnode_free(t, true);
        t = p;
    }
}

static size_t level_end(const char *s, size_t len, size_t pos)
{
    const char *slash = pos < len ? memchr(s + pos, '/', len - pos) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

/* The trie node of filter f, created when create is set. NULL when absent
 * or out of memory (*oom set). */
static struct tnode *walk(struct routes *r, const char *f, size_t len, bool create, bool *oom)
{
    struct tnode *t = &r->root;
    size_t pos = 0;
    *oom = false;
    for (;;) {
        size_t end = level_end(f, len, pos);
        const char *s = f + pos;
        size_t n = end - pos;
        struct tnode **slot = NULL;
        struct tnode *k;
        uint64_t h = 0;
        if (n == 1 && s[0] == '+') {
            slot = &t->plus;
            k = *slot;
        } else if (n == 1 && s[0] == '#') {
            slot = &t->hash_kid;
            k = *slot;
        } else {
            h = level_hash(s, n);
            k = kid_find(t, s, n, h);
        }
        if (!k) {
            if (!create)
                return NULL;
            k = calloc(1, sizeof *k);
            char *lv = malloc(n ? n : 1);
            if (!k || !lv) {
                free(k);
                free(lv);
                *oom = true;
                prune(t);
                return NULL;
            }
            memcpy(lv, s, n);
            k->level = lv;
            k->level_len = n;
            k->hash = h;
            k->parent = t;
            if (slot) {
                *slot = k;
            } else if (kid_insert(t, k) != 0) {
                tnode_free(k, true);
                *oom = true;
                prune(t);
                return NULL;
            }
        }
        t = k;
        if (end == len)
            return t;
        pos = end + 1;
    }
}

struct routes *routes_new(void)
{
    struct routes *r = calloc(1, sizeof *r);
    if (r)
        pthread_rwlock_init(&r->lock, NULL);
    return r;
}

void routes_free(struct routes *r)
{
    if (!r)
        return;
    tnode_free(&r->root, false);
    pthread_rwlock_destroy(&r->lock);
    free(r);
}

static struct share *share_find(struct tnode *t, const char *full, size_t len)
{
    for (uint32_t i = 0; i < t->n_shares; i++)
        if (t->shares[i].full_len == len && memcmp(t->shares[i].full, full, len) == 0)
            return &t->shares[i];
    return NULL;
}

int routes_add(struct routes *r, const char *filter, size_t len, uint64_t node)
{
    if (node == 0 || !topic_filter_valid(filter, len))
        return -EINVAL;
    const char *group, *inner = filter;
    size_t glen = 0, ilen = len;
    bool shared = topic_share_parse(filter, len, &group, &glen, &inner, &ilen) == 1;
    bool taken = wlock(r);
    bool oom;
    int rc;
    struct tnode *t = walk(r, inner, ilen, true, &oom);
    if (!t) {
        rc = -ENOMEM;
        goto out;
    }
    if (!shared) {
        rc = nodeset_add(&t->plain, node);
    } else {
        struct share *sh = share_find(t, filter, len);
        if (!sh) {
            struct share *p = realloc(t->shares, (t->n_shares + 1) * sizeof *p);
            char *full = malloc(len);
            if (!p || !full) {
                free(full);
                if (p)
                    t->shares = p;
                rc = -ENOMEM;
                prune(t);
                goto out;
            }
            t->shares = p;
            memcpy(full, filter, len);
            sh = &t->shares[t->n_shares++];
            *sh = (struct share){.full = full,
                                 .full_len = len,
                                 .group_off = (size_t)(group - filter),
                                 .group_len = glen};
        }
        rc = nodeset_add(&sh->nodes, node);
        if (rc < 0 && sh->nodes.n == 0) {
            free(sh->full);
            *sh = t->shares[--t->n_shares];
            prune(t);
        }
    }
    if (rc == 1)
        r->count++;
out:
    wunlock(r, taken);
    return rc;
}

int routes_remove(struct routes *r, const char *filter, size_t len, uint64_t node)
{
    if (node == 0 || !topic_filter_valid(filter, len))
        return -EINVAL;
    const char *group, *inner = filter;
    size_t glen = 0, ilen = len;
    bool shared = topic_share_parse(filter, len, &group, &glen, &inner, &ilen) == 1;
    bool taken = wlock(r);
    bool oom;
    int rc = 0;
    struct tnode *t = walk(r, inner, ilen, false, &oom);
    if (t) {
        if (!shared) {
            rc = nodeset_del(&t->plain, node);
        } else {
            struct share *sh = share_find(t, filter, len);
            if (sh) {
                rc = nodeset_del(&sh->nodes, node);
                if (sh->nodes.n == 0) {
                    free(sh->full);
                    free(sh->nodes.ids);
                    *sh = t->shares[--t->n_shares];
                }
            }
        }
        if (rc == 1)
            r->count--;
        prune(t);
    }
    wunlock(r, taken);
    return rc;
}

/* Remove node everywhere under t; returns the number removed. Prunes the
 * children that become empty (t itself is pruned by the caller). */
static size_t remove_node_rec(struct tnode *t, uint64_t node)
{
    size_t n = (size_t)nodeset_del(&t->plain, node);
    for (uint32_t i = 0; i < t->n_shares;) {
        struct share *sh = &t->shares[i];
        n += (size_t)nodeset_del(&sh->nodes, node);
        if (sh->nodes.n == 0) {
            free(sh->full);
            free(sh->nodes.ids);
            *sh = t->shares[--t->n_shares];
        } else {
            i++;
        }
    }
    struct tnode *kids[2] = {t->plus, t->hash_kid};
    for (int i = 0; i < 2; i++) {
        if (!kids[i])
            continue;
        n += remove_node_rec(kids[i], node);
        if (tnode_empty(kids[i])) {
            if (i == 0)
                t->plus = NULL;
            else
                t->hash_kid = NULL;
            tnode_free(kids[i], true);
        }
    }
    for (uint32_t i = 0; i < t->kid_cap;) {
        struct tnode *k = t->kids[i];
        if (k) {
            n += remove_node_rec(k, node);
            if (tnode_empty(k)) {
                kid_remove(t, k);
                tnode_free(k, true);
                continue; /* slot i was refilled by the re-insertion */
            }
        }
        i++;
    }
    return n;
}

size_t routes_remove_node(struct routes *r, uint64_t node)
{
    bool taken = wlock(r);
    size_t n = remove_node_rec(&r->root, node);
    r->count -= n;
    wunlock(r, taken);
    return n;
}

void routes_clear(struct routes *r)
{
    bool taken = wlock(r);
    tnode_free(&r->root, false);
    r->count = 0;
    wunlock(r, taken);
}

size_t routes_count(struct routes *r)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t n = r->count;
    pthread_rwlock_unlock(&r->lock);
    return n;
}

/* ---- matching ---- */

struct match {
    routes_visit_fn visit;
    void *ud;
    int n;
};

static void emit(struct match *m, const struct tnode *t)
{
    for (uint32_t i = 0; i < t->plain.n; i++, m->n++)
        m->visit(m->ud, t->plain.ids[i], NULL, 0);
    for (uint32_t s = 0; s < t->n_shares; s++)
        for (uint32_t i = 0; i < t->shares[s].nodes.n; i++, m->n++)
            m->visit(m->ud, t->shares[s].nodes.ids[i], t->shares[s].full, t->shares[s].full_len);
}

/* Match the levels of topic from pos on against the subtree of t. */
static void match_rec(struct match *m, const struct tnode *t, const char *topic, size_t len,
                      size_t pos, bool first)
{
    /* [MQTT-4.7.2-1] a wildcard at the first level does not match a topic
     * name that starts with '$'. */
    bool dollar = first && topic[0] == '$';
    /* '#' matches this level and everything below it, and also the parent
     * level ("a/#" matches "a", see the end of this function). */
    if (t->hash_kid && !dollar)
        emit(m, t->hash_kid);
    size_t end = level_end(topic, len, pos);
    const char *s = topic + pos;
    size_t n = end - pos;
    const struct tnode *k = kid_find(t, s, n, level_hash(s, n));
    const struct tnode *next[2] = {k, dollar ? NULL : t->plus};
    for (int i = 0; i < 2; i++) {
        if (!next[i])
            continue;
        if (end == len) {
            emit(m, next[i]);
            if (next[i]->hash_kid)
                emit(m, next[i]->hash_kid);
        } else {
            match_rec(m, next[i], topic, len, end + 1, false);
        }
    }
}

int routes_match(struct routes *r, const char *t, size_t len, routes_visit_fn visit, void *ud)
{
    if (!topic_name_valid(t, len))
        return -EINVAL;
    struct match m = {visit, ud, 0};
    pthread_rwlock_rdlock(&r->lock);
    match_rec(&m, &r->root, t, len, 0, true);
    pthread_rwlock_unlock(&r->lock);
    return m.n;
}

struct collect {
    uint64_t *nodes;
    int max, n;
    uint64_t pick;
    /* shared groups already decided for this publish (one pick per group
     * even when the same "$share/g/f" string is seen twice cannot happen: a
     * share filter ends at exactly one trie node) */
};

static void collect_add(struct collect *c, uint64_t node)
{
    int lim = c->n < c->max ? c->n : c->max;
    for (int i = 0; i < lim; i++)
        if (c->nodes[i] == node)
            return;
    if (c->n >= c->max) {
        /* Past max we cannot check duplicates any more; count anyway so
         * the caller learns its array was too small. */
        c->n++;
        return;
    }
    c->nodes[c->n++] = node;
}

static void collect_tnode(struct collect *c, const struct tnode *t)
{
    for (uint32_t i = 0; i < t->plain.n; i++)
        collect_add(c, t->plain.ids[i]);
    for (uint32_t s = 0; s < t->n_shares; s++) {
        const struct nodeset *ns = &t->shares[s].nodes;
        collect_add(c, ns->ids[c->pick % ns->n]);
    }
}

static void collect_rec(struct collect *c, const struct tnode *t, const char *topic, size_t len,
                        size_t pos, bool first)
{
    bool dollar = first && topic[0] == '$';
    if (t->hash_kid && !dollar)
        collect_tnode(c, t->hash_kid);
    size_t end = level_end(topic, len, pos);
    const char *s = topic + pos;
    size_t n = end - pos;
    const struct tnode *k = kid_find(t, s, n, level_hash(s, n));
    const struct tnode *next[2] = {k, dollar ? NULL : t->plus};
    for (int i = 0; i < 2; i++) {
        if (!next[i])
            continue;
        if (end == len) {
            collect_tnode(c, next[i]);
            if (next[i]->hash_kid)
                collect_tnode(c, next[i]->hash_kid);
        } else {
            collect_rec(c, next[i], topic, len, end + 1, false);
        }
    }
}

int routes_nodes(struct routes *r, const char *t, size_t len, uint64_t pick, uint64_t *nodes,
                 int max)
{
    if (!topic_name_valid(t, len) || max < 0)
        return -EINVAL;
    struct collect c = {nodes, max, 0, pick};
    pthread_rwlock_rdlock(&r->lock);
    collect_rec(&c, &r->root, t, len, 0, true);
    pthread_rwlock_unlock(&r->lock);
    return c.n;
}
