/*
 * fsm.c - the replicated state machine (see fsm.h).
 *
 * Record encodings in the tables (storage/rtable.h):
 *   routes:   key u64be node || filter                 value empty, or u32le keepers
 *   registry: key client id                            value u64le node, u64le epoch
 *                                                      [, u8 flags: bit 0 SessionClaim.stored]
 *   retained: key topic      value u64le origin, u64le seq, encoded RetainedMessage
 *   members:  key u64be node                           value encoded Member
 *   sessions: key client id                            value encoded SessionRecord
 * The node id leads the route key so that NodePurge is one prefix scan. A
 * route that a NodeDown (with `keepers`) kept holds the number of session
 * records that need it; a record that stops naming the dead node takes one
 * off each of its filters' counts, and the route goes at 0 (keepers_drop).
 *
 * An entry is applied in one write transaction: decode, skip if already
 * applied, apply each command, record the index, commit. When the map is
 * full the transaction is abandoned, the map grown and the entry applied
 * again from the start. Only after the commit does the in-memory matcher
 * change and do the observers run, so that both reflect committed state.
 */
#include "fsm.h"
#include "cmd.h"
#include "log.h"
#include "raft_cmd.pb-c.h"
#include "rtable.h"
#include "topic.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fsm {
    struct rtable *t;
    struct routes *routes;
    _Atomic uint64_t routes_index; /* the matcher reflects every entry up to it */
    bool broken;
    /* an allocation failed while the matcher followed an entry: it lacks
     * some of the table's routes until fsm_repair rebuilds it (applying
     * thread only) */
    bool routes_stale, routes_warned;
    fsm_observer_fn observer;
    void *observer_ud;
    fsm_entry_fn on_entry;
    uint64_t visible; /* atomic: fsm_visible */
    /* per command of the entry being applied: the nodes whose kept routes
     * the command's record took (keepers_drop: the node it named, the
     * registry owner it was counted for), 0 for none; the matcher follows
     * in after_commit */
    uint64_t pruned[FSM_MAX_BATCH][2];
};

/* protobuf-c's allocator for what an apply decodes (the entry's batch, a
 * stored session record): malloc, remembering a failure, so that what
 * could not be decoded for want of memory is not taken for malformed or
 * absent (the entry applied as nothing, a record taken for none): the
 * apply returns -ENOMEM instead, and is made again later. */
static void *unpack_alloc(void *data, size_t size)
{
    void *p = malloc(size);
    if (!p)
        *(bool *)data = true;
    return p;
}

static void unpack_free(void *data, void *p)
{
    (void)data;
    free(p);
}

/* A stored session record, decoded, or NULL: *rc is -ENOMEM when that was
 * for want of memory, else 0 (a record that does not decode: none). */
static Starling__Cmd__SessionRecord *record_unpack(const void *v, size_t len, int *rc)
{
    bool nomem = false;
    ProtobufCAllocator pa = {.alloc = unpack_alloc, .free = unpack_free, .allocator_data = &nomem};
    Starling__Cmd__SessionRecord *sr = starling__cmd__session_record__unpack(&pa, len, v);
    *rc = !sr && nomem ? -ENOMEM : 0;
    return sr;
}

/* The entry at index is wholly in effect: publish it, tell the hook. */
static void set_visible(struct fsm *f, uint64_t index)
{
    __atomic_store_n(&f->visible, index, __ATOMIC_RELEASE);
    if (f->on_entry)
        f->on_entry(f->observer_ud, index);
}

static void be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- loading the route matcher ---- */

static int load_route(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)val;
    (void)vlen;
    struct routes *r = ud;
    if (klen <= 8)
        return -EIO;
    int rc = routes_add(r, (const char *)key + 8, klen - 8, get_be64(key));
    return rc < 0 ? rc : 0;
}

/* Load f->routes from the route table: rebuilt (`clear`), or every route
 * of the table added to what it holds (fsm_repair: a stale matcher only
 * lacks routes, routes_add is idempotent, and a failure part way leaves it
 * no worse than before). */
static int routes_reload(struct fsm *f, bool clear)
{
    /* at once for the readers (a snapshot restored under traffic); the
     * matcher's lock before the table's, as after_commit takes them */
    routes_write_begin(f->routes);
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc) {
        routes_write_end(f->routes);
        return rc;
    }
    if (clear)
        routes_clear(f->routes);
    rc = rtable_scan(x, RTABLE_ROUTES, NULL, 0, load_route, f->routes);
    routes_write_end(f->routes);
    rtable_abort(x);
    return rc;
}

/* What a NodeDown left in the matcher, for the log. */
struct kept_routes {
    struct routes *r;
    size_t before, after;
    char shown[256]; /* the first few filters kept */
};

static int load_kept_route(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct kept_routes *k = ud;
    int rc = load_route(k->r, key, klen, val, vlen);
    if (rc == 0 && k->after < 3) {
        size_t at = strlen(k->shown);
        snprintf(k->shown + at, sizeof(k->shown) - at, "%s%.*s", at ? ", " : "",
                 (int)(klen - 8 < 64 ? klen - 8 : 64), (const char *)key + 8);
    }
    k->after++;
    return rc;
}

/* The matcher's routes of one node, again from the table (after NodeDown
 * removed some of them). */
static void routes_reload_node(struct fsm *f, uint64_t node, struct kept_routes *k)
{
    /* (within the entry's routes_write_begin: readers see the result only) */
    k->r = f->routes;
    k->before = routes_remove_node(f->routes, node);
    struct rtable_txn *x;
    if (rtable_begin_read(f->t, &x)) {
        f->routes_stale = true;
        return;
    }
    unsigned char prefix[8];
    be64(prefix, node);
    if (rtable_scan(x, RTABLE_ROUTES, prefix, 8, load_kept_route, k) < 0)
        f->routes_stale = true;
    rtable_abort(x);
}

int fsm_open(struct fsm **out, const struct fsm_options *o, char *err, size_t errlen)
{
    *out = NULL;
    struct fsm *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->observer = o->observer;
    f->observer_ud = o->observer_ud;
    f->on_entry = o->on_entry;
    f->routes = routes_new();
    if (!f->routes) {
        free(f);
        return -ENOMEM;
    }
    struct rtable_options ro = {.dir = o->dir,
                                .map_size = o->map_size,
                                .max_map_size = o->max_map_size,
                                .sync_every_commit = o->sync_every_commit};
    int rc = rtable_open(&f->t, &ro, err, errlen);
    if (rc == 0) {
        rc = routes_reload(f, true);
        atomic_init(&f->routes_index, rtable_applied(f->t));
        if (rc == 0)
            log_info("cluster: route matcher loaded (entry %llu): %zu route(s)",
                     (unsigned long long)rtable_applied(f->t), routes_count(f->routes));
        if (rc)
            snprintf(err, errlen, "%s: cannot load the route table: %s", o->dir, strerror(-rc));
    }
    if (rc) {
        rtable_close(f->t);
        routes_free(f->routes);
        free(f);
        return rc;
    }
    f->visible = rtable_applied(f->t);
    *out = f;
    return 0;
}

void fsm_close(struct fsm *f)
{
    if (!f)
        return;
    rtable_close(f->t);
    routes_free(f->routes);
    free(f);
}

/* ---- commands ---- */

static bool bytes_ok(const ProtobufCBinaryData *b)
{
    return b->len > 0 && b->len <= RTABLE_MAX_KEY;
}

static int route_key(unsigned char **key, size_t *klen, uint64_t node, const ProtobufCBinaryData *f)
{
    *klen = 8 + f->len;
    *key = malloc(*klen);
    if (!*key)
        return -ENOMEM;
    be64(*key, node);
    memcpy(*key + 8, f->data, f->len);
    return 0;
}

/* The route (node, filter) in x: rtable_get's answer, or -ENOMEM. *key
 * (NULL when it could not be made) is the caller's to free. */
static int route_get(struct rtable_txn *x, uint64_t node, const ProtobufCBinaryData *filter,
                     unsigned char **key, size_t *klen, const void **v, size_t *vlen)
{
    if (route_key(key, klen, node, filter))
        return -ENOMEM;
    return rtable_get(x, RTABLE_ROUTES, *key, *klen, v, vlen);
}

static int apply_route(struct rtable_txn *x, const ProtobufCBinaryData *filter, uint64_t node,
                       bool add)
{
    if (node == 0 || !bytes_ok(filter) ||
        !topic_filter_valid((const char *)filter->data, filter->len))
        return FSM_INVALID;
    unsigned char *key;
    size_t klen;
    const void *v;
    size_t vlen;
    int rc = route_get(x, node, filter, &key, &klen, &v, &vlen);
    if (rc == 0 || rc == -ENOENT) {
        bool exists = rc == 0;
        if (add && exists && vlen != 0) {
            /* kept by a NodeDown, counted: the node adds it itself, it is
             * its own again (a NOOP for the route) */
            rc = rtable_put(x, RTABLE_ROUTES, key, klen, "", 0);
            if (rc == 0)
                rc = FSM_NOOP;
        } else if (add == exists)
            rc = FSM_NOOP;
        else if (add)
            rc = rtable_put(x, RTABLE_ROUTES, key, klen, "", 0);
        else
            rc = rtable_del(x, RTABLE_ROUTES, key, klen);
    }
    free(key);
    return rc; /* FSM_OK is 0 */
}

/* A registry value: u64le node, u64le epoch, then a flags byte when the
 * claim said that its claimant stores the session first (REG_STORED); a
 * claim without it writes the 16 bytes that builds before the flag wrote. */
#define REG_LEN 16
#define REG_STORED 1u

static bool registry_len_ok(size_t vlen)
{
    return vlen == REG_LEN || vlen == REG_LEN + 1;
}

static int registry_read(struct rtable_txn *x, const ProtobufCBinaryData *id, uint64_t *node,
                         uint64_t *epoch, bool *stored)
{
    const void *v;
    size_t vlen;
    int rc = rtable_get(x, RTABLE_REGISTRY, id->data, id->len, &v, &vlen);
    if (rc)
        return rc;
    const unsigned char *p = v;
    if (!registry_len_ok(vlen) || (vlen > REG_LEN && (p[REG_LEN] & ~REG_STORED)))
        return -EIO;
    *node = get_le64(p);
    *epoch = get_le64(p + 8);
    if (stored)
        *stored = vlen > REG_LEN && (p[REG_LEN] & REG_STORED);
    return 0;
}

/* [MQTT-3.1.4-3] a client id is connected at most once in the cluster: its
 * registry record names the one node that owns it. */
static int apply_claim(struct rtable_txn *x, const Starling__Cmd__SessionClaim *c)
{
    if (!bytes_ok(&c->client_id) || c->node == 0 || c->epoch == 0)
        return FSM_INVALID;
    uint64_t node, epoch;
    int rc = registry_read(x, &c->client_id, &node, &epoch, NULL);
    if (rc && rc != -ENOENT)
        return rc;
    if (rc == 0) {
        if (node == c->node && epoch == c->epoch)
            return FSM_NOOP;
        if (c->epoch <= epoch)
            return FSM_STALE_EPOCH;
    }
    /* the stored flag is in the table, not only in the entry: a node whose
     * tables come as a snapshot reads it there (restart_pass,
     * node/cluster_session.c) */
    unsigned char v[REG_LEN + 1];
    le64(v, c->node);
    le64(v + 8, c->epoch);
    v[REG_LEN] = REG_STORED;
    return rtable_put(x, RTABLE_REGISTRY, c->client_id.data, c->client_id.len, v,
                      c->stored ? REG_LEN + 1 : REG_LEN);
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

/* A session record `was` that named `node` stopped naming it (another
 * owner wrote its own, or it was deleted): each route of node that a
 * NodeDown kept and counted (NodeDown.keepers) has one keeper less, and
 * goes when none is left. The new owner's routes commit before its record
 * (the record is queued after them, node/cluster_registry.c), so they are
 * in this entry's table or an earlier one's: from this entry on, nothing
 * for the session is forwarded to the dead node, whose copy, claimed away,
 * would only collect what reached the new owner directly. Routes without a
 * count (the node's own: added since, or kept by a NodeDown of a build
 * before the counts) are left. *gone: routes removed. */
static int keepers_drop(struct rtable_txn *x, uint64_t node,
                        const Starling__Cmd__SessionRecord *was, size_t *gone)
{
    for (size_t i = 0; i < was->n_subs; i++) {
        const ProtobufCBinaryData *filter = &was->subs[i]->filter;
        if (!bytes_ok(filter))
            continue;
        unsigned char *key;
        size_t klen;
        const void *v;
        size_t vlen;
        int rc = route_get(x, node, filter, &key, &klen, &v, &vlen);
        if (rc == 0 && vlen == 4) {
            uint32_t n = get_le32(v);
            if (n <= 1) {
                rc = rtable_del(x, RTABLE_ROUTES, key, klen);
                (*gone)++;
            } else {
                unsigned char nv[4];
                le32(nv, n - 1);
                rc = rtable_put(x, RTABLE_ROUTES, key, klen, nv, 4);
            }
        } else if (rc == -ENOENT || rc == 0) {
            rc = 0; /* absent, or not counted */
        }
        free(key);
        if (rc)
            return rc;
    }
    return 0;
}

/* After a command changed the record `was` (NULL: there was none) that the
 * writer `writer` replaced or deleted: the counted routes of the node it
 * named, when another one, and of the node a NodeDown counted it for as
 * the registry's owner (kept_for), when another one (keepers_drop).
 * pruned[0], pruned[1]: those nodes when a route of theirs went. */
static int record_left(struct rtable_txn *x, const Starling__Cmd__SessionRecord *was,
                       uint64_t writer, uint64_t *pruned)
{
    if (!was)
        return 0;
    int rc = 0;
    size_t gone = 0;
    if (was->node != writer && was->node != 0) {
        rc = keepers_drop(x, was->node, was, &gone);
        if (rc == 0 && gone)
            pruned[0] = was->node;
    }
    uint64_t k = was->has_kept_for ? was->kept_for : 0;
    if (rc == 0 && k && k != writer && k != was->node) {
        gone = 0;
        rc = keepers_drop(x, k, was, &gone);
        if (rc == 0 && gone)
            pruned[1] = k;
    }
    return rc;
}

static int apply_release(struct rtable_txn *x, const Starling__Cmd__SessionRelease *c,
                         uint64_t *pruned)
{
    if (!bytes_ok(&c->client_id) || c->node == 0)
        return FSM_INVALID;
    uint64_t node, epoch;
    int rc = registry_read(x, &c->client_id, &node, &epoch, NULL);
    if (rc == -ENOENT)
        return FSM_NOOP;
    if (rc)
        return rc;
    if (node != c->node || epoch != c->epoch)
        return FSM_STALE_EPOCH;
    const void *old;
    size_t olen;
    Starling__Cmd__SessionRecord *was = NULL;
    rc = rtable_get(x, RTABLE_SESSIONS, c->client_id.data, c->client_id.len, &old, &olen);
    if (rc == 0) {
        was = record_unpack(old, olen, &rc);
        if (rc)
            return rc;
        rc = rtable_del(x, RTABLE_SESSIONS, c->client_id.data, c->client_id.len);
    }
    /* released by its owner, which takes its own routes away; or, expired,
     * by the leader for an owner taken for dead (node/cluster_session.c,
     * dead_expiry_poll): the routes NodeDown kept for it go too */
    bool for_dead = c->has_expired && c->expired;
    if (rc == 0 || rc == -ENOENT)
        rc = record_left(x, was, for_dead ? 0 : c->node, pruned);
    if (was)
        starling__cmd__session_record__free_unpacked(was, NULL);
    if (rc)
        return rc;
    return rtable_del(x, RTABLE_REGISTRY, c->client_id.data, c->client_id.len);
}

/* SessionRecord: written only by the owner the registry names. */
#define RECORD_OWNERS_MAX 4
/* RecordOwner.pubs_seen: one entry per origin node (the cluster has at most
 * MAX_PEERS, node/cluster_node_int.h); a longer list is not kept (not known) */
#define RECORD_PUBS_SEEN_MAX 64

/* The owners a record names, oldest first (SessionRecord.owners): the old
 * record's, and this one's node with `index` when it names another node
 * than the old one; at most RECORD_OWNERS_MAX (the oldest go). `keep`
 * receives the pointers (into old and mine), *n their number. */
static void record_owners(const Starling__Cmd__SessionRecord *old, uint64_t node,
                          Starling__Cmd__RecordOwner *mine,
                          Starling__Cmd__RecordOwner *keep[RECORD_OWNERS_MAX], size_t *n)
{
    size_t k = 0, have = old ? old->n_owners : 0;
    bool moved = !old || have == 0 || old->owners[have - 1]->node != node;
    size_t want = have + moved;
    size_t from = want > RECORD_OWNERS_MAX ? want - RECORD_OWNERS_MAX : 0;
    for (size_t i = from; i < have; i++)
        keep[k++] = old->owners[i];
    if (moved)
        keep[k++] = mine;
    *n = k;
}

static int apply_session_record(struct rtable_txn *x, const Starling__Cmd__SessionRecord *c,
                                uint64_t index, uint64_t *pruned)
{
    if (!bytes_ok(&c->client_id) || c->node == 0 || c->epoch == 0)
        return FSM_INVALID;
    for (size_t i = 0; i < c->n_subs; i++)
        if (!bytes_ok(&c->subs[i]->filter) ||
            !topic_filter_valid((const char *)c->subs[i]->filter.data, c->subs[i]->filter.len))
            return FSM_INVALID;
    uint64_t node, epoch;
    int rc = registry_read(x, &c->client_id, &node, &epoch, NULL);
    if (rc == -ENOENT)
        return FSM_STALE_EPOCH; /* released (or never claimed) */
    if (rc)
        return rc;
    if (node != c->node || epoch != c->epoch)
        return FSM_STALE_EPOCH;
    const void *old;
    size_t olen;
    rc = rtable_get(x, RTABLE_SESSIONS, c->client_id.data, c->client_id.len, &old, &olen);
    if (rc && rc != -ENOENT)
        return rc;
    bool exists = rc == 0;
    Starling__Cmd__SessionRecord *was = exists ? record_unpack(old, olen, &rc) : NULL;
    if (exists && rc)
        return rc;
    if (c->expiry_interval == 0) {
        rc =
            exists ? rtable_del(x, RTABLE_SESSIONS, c->client_id.data, c->client_id.len) : FSM_NOOP;
        if (rc == 0)
            rc = record_left(x, was, c->node, pruned);
        if (was)
            starling__cmd__session_record__free_unpacked(was, NULL);
        return rc;
    }
    Starling__Cmd__RecordOwner mine = STARLING__CMD__RECORD_OWNER__INIT;
    mine.node = c->node;
    mine.epoch = c->epoch;
    mine.index = index;
    /* the index from which the owner's session takes forwards, from the
     * proposer's own entry (the rest of its list is not read): kept with
     * the entry of its first record, which moving_send_owner_of_now
     * (node/cluster_session.c) reads */
    for (size_t i = 0; i < c->n_owners; i++)
        if (c->owners[i]->node == c->node && c->owners[i]->epoch == c->epoch) {
            if (c->owners[i]->has_routed_from && c->owners[i]->routed_from) {
                mine.has_routed_from = true;
                mine.routed_from = c->owners[i]->routed_from;
            }
            /* and the first publish number of its own publishes that it
             * got locally (owner_local, node/cluster_session.c) */
            if (c->owners[i]->has_local_from && c->owners[i]->local_from) {
                mine.has_local_from = true;
                mine.local_from = c->owners[i]->local_from;
            }
            /* and what reached its node before its session joined the
             * index there (session_owner_had, node/session.h) */
            if (c->owners[i]->has_pubs_seen_known && c->owners[i]->pubs_seen_known &&
                c->owners[i]->n_pubs_seen <= RECORD_PUBS_SEEN_MAX) {
                mine.has_pubs_seen_known = true;
                mine.pubs_seen_known = true;
                mine.n_pubs_seen = c->owners[i]->n_pubs_seen;
                mine.pubs_seen = c->owners[i]->pubs_seen;
            }
        }
    Starling__Cmd__RecordOwner *owners[RECORD_OWNERS_MAX];
    Starling__Cmd__SessionRecord w = *c;
    w.has_kept_for = false; /* written by the state machine only */
    w.kept_for = 0;
    /* (a record written before owners were kept starts its list here:
     * the owner's routes are everywhere from this index on, if not before) */
    record_owners(was, c->node, &mine, owners, &w.n_owners);
    /* Each owner keeps the next packet id of its latest record: a copy
     * resumed from the record numbers away from all of them (their clients
     * may hold unfinished exchanges of each, cn_session_from_record). The
     * writer's entry takes this record's; the owner before it, listed by a
     * build that kept none, takes the old record's. */
    Starling__Cmd__RecordOwner last, prev;
    size_t n = w.n_owners;
    bool moved = owners[n - 1] == &mine;
    if (c->has_next_packet_id) {
        last = *owners[n - 1];
        last.has_next_packet_id = true;
        last.next_packet_id = c->next_packet_id;
        owners[n - 1] = &last;
    }
    if (moved && n >= 2 && !owners[n - 2]->has_next_packet_id && was && was->has_next_packet_id) {
        prev = *owners[n - 2];
        prev.has_next_packet_id = true;
        prev.next_packet_id = was->next_packet_id;
        owners[n - 2] = &prev;
    }
    w.owners = owners;
    size_t len = starling__cmd__session_record__get_packed_size(&w);
    if (len > RTABLE_MAX_VALUE) {
        if (was)
            starling__cmd__session_record__free_unpacked(was, NULL);
        return FSM_INVALID;
    }
    unsigned char *v = malloc(len ? len : 1);
    if (!v) {
        if (was)
            starling__cmd__session_record__free_unpacked(was, NULL);
        return -ENOMEM;
    }
    starling__cmd__session_record__pack(&w, v);
    if (exists && olen == len && memcmp(old, v, len) == 0)
        rc = FSM_NOOP;
    else
        rc = rtable_put(x, RTABLE_SESSIONS, c->client_id.data, c->client_id.len, v, len);
    free(v);
    if (rc == 0)
        rc = record_left(x, was, c->node, pruned);
    if (was)
        starling__cmd__session_record__free_unpacked(was, NULL);
    return rc;
}

/* The (origin, seq) rule of RetainedSet/Clear: FSM_OK to go on, FSM_NOOP
 * when there is no record (clear only), FSM_STALE_SEQ. */
static int retained_check(struct rtable_txn *x, const ProtobufCBinaryData *topic, uint64_t origin,
                          uint64_t seq, bool *exists)
{
    const void *v;
    size_t vlen;
    int rc = rtable_get(x, RTABLE_RETAINED, topic->data, topic->len, &v, &vlen);
    *exists = rc == 0;
    if (rc == -ENOENT)
        return FSM_OK;
    if (rc)
        return rc;
    if (vlen < 16)
        return -EIO;
    if (get_le64(v) == origin && seq <= get_le64((const unsigned char *)v + 8))
        return FSM_STALE_SEQ;
    return FSM_OK;
}

static int apply_retained_set(struct rtable_txn *x, const Starling__Cmd__RetainedSet *c)
{
    if (!bytes_ok(&c->topic) || !topic_name_valid((const char *)c->topic.data, c->topic.len) ||
        !c->message || c->message->qos > 2)
        return FSM_INVALID;
    bool exists;
    int rc = retained_check(x, &c->topic, c->origin, c->seq, &exists);
    if (rc)
        return rc;
    size_t mlen = starling__cmd__retained_message__get_packed_size(c->message);
    if (mlen > RTABLE_MAX_VALUE - 16)
        return FSM_INVALID;
    unsigned char *v = malloc(16 + mlen);
    if (!v)
        return -ENOMEM;
    le64(v, c->origin);
    le64(v + 8, c->seq);
    starling__cmd__retained_message__pack(c->message, v + 16);
    rc = rtable_put(x, RTABLE_RETAINED, c->topic.data, c->topic.len, v, 16 + mlen);
    free(v);
    return rc;
}

static int apply_retained_clear(struct rtable_txn *x, const Starling__Cmd__RetainedClear *c)
{
    if (!bytes_ok(&c->topic) || !topic_name_valid((const char *)c->topic.data, c->topic.len))
        return FSM_INVALID;
    bool exists;
    int rc = retained_check(x, &c->topic, c->origin, c->seq, &exists);
    if (rc)
        return rc;
    if (!exists)
        return FSM_NOOP;
    return rtable_del(x, RTABLE_RETAINED, c->topic.data, c->topic.len);
}

static int apply_member(struct rtable_txn *x, const Starling__Cmd__Member *c)
{
    if (c->node == 0)
        return FSM_INVALID;
    unsigned char key[8];
    be64(key, c->node);
    size_t len = starling__cmd__member__get_packed_size(c);
    unsigned char *v = malloc(len ? len : 1);
    if (!v)
        return -ENOMEM;
    starling__cmd__member__pack(c, v);
    const void *old;
    size_t olen;
    int rc = rtable_get(x, RTABLE_MEMBERS, key, 8, &old, &olen);
    if (rc == 0 && olen == len && memcmp(old, v, len) == 0)
        rc = FSM_NOOP;
    else if (rc == 0 || rc == -ENOENT)
        rc = rtable_put(x, RTABLE_MEMBERS, key, 8, v, len);
    free(v);
    return rc;
}

static int apply_member_remove(struct rtable_txn *x, uint64_t node)
{
    if (node == 0)
        return FSM_INVALID;
    unsigned char key[8];
    be64(key, node);
    int rc = rtable_del(x, RTABLE_MEMBERS, key, 8);
    return rc == -ENOENT ? FSM_NOOP : rc;
}

struct keylist {
    unsigned char **keys;
    size_t *lens;
    size_t n, cap;
};

static int collect_key(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)val;
    (void)vlen;
    struct keylist *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        unsigned char **k = realloc(l->keys, cap * sizeof *k);
        if (!k)
            return -ENOMEM;
        l->keys = k;
        size_t *n = realloc(l->lens, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        l->lens = n;
        l->cap = cap;
    }
    unsigned char *k = malloc(klen);
    if (!k)
        return -ENOMEM;
    memcpy(k, key, klen);
    l->keys[l->n] = k;
    l->lens[l->n++] = klen;
    return 0;
}

static int apply_purge(struct rtable_txn *x, uint64_t node)
{
    if (node == 0)
        return FSM_INVALID;
    unsigned char prefix[8];
    be64(prefix, node);
    struct keylist l = {0};
    int rc = rtable_scan(x, RTABLE_ROUTES, prefix, 8, collect_key, &l);
    for (size_t i = 0; rc == 0 && i < l.n; i++)
        rc = rtable_del(x, RTABLE_ROUTES, l.keys[i], l.lens[i]);
    if (rc == 0 && l.n == 0)
        rc = FSM_NOOP;
    for (size_t i = 0; i < l.n; i++)
        free(l.keys[i]);
    free(l.keys);
    free(l.lens);
    return rc;
}
/* ---- the operator's tables (AdminPut / AdminDelete) ---- */

/* key "u8 table || key" of the RTABLE_ADMIN record, malloc'd. */
static unsigned char *admin_key(unsigned table, const ProtobufCBinaryData *k, size_t *klen)
{
    if (table == 0 || table > 255 || !bytes_ok(k) || k->len >= RTABLE_MAX_KEY)
        return NULL;
    unsigned char *key = malloc(k->len + 1);
    if (!key)
        return NULL;
    key[0] = (unsigned char)table;
    memcpy(key + 1, k->data, k->len);
    *klen = k->len + 1;
    return key;
}

static int apply_admin(struct rtable_txn *x, const Starling__Cmd__Command *c)
{
    bool put = c->cmd_case == STARLING__CMD__COMMAND__CMD_ADMIN_PUT;
    unsigned table = put ? c->admin_put->table : c->admin_delete->table;
    size_t klen;
    unsigned char *key = admin_key(table, put ? &c->admin_put->key : &c->admin_delete->key, &klen);
    if (!key)
        return FSM_INVALID;
    const void *old;
    size_t olen;
    int rc = rtable_get(x, RTABLE_ADMIN, key, klen, &old, &olen);
    if (rc == 0 || rc == -ENOENT) {
        bool exists = rc == 0;
        const ProtobufCBinaryData *v = put ? &c->admin_put->value : NULL;
        if (put && exists && olen == v->len && memcmp(old, v->data, olen) == 0)
            rc = FSM_NOOP;
        else if (put)
            rc = v->len <= RTABLE_MAX_VALUE
                     ? rtable_put(x, RTABLE_ADMIN, key, klen, v->data, v->len)
                     : FSM_INVALID;
        else
            rc = exists ? rtable_del(x, RTABLE_ADMIN, key, klen) : FSM_NOOP;
    }
    free(key);
    return rc;
}

static int cmp_key(const void *a, const void *b, size_t alen, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

struct keyref {
    const unsigned char *p;
    size_t len;
};

static int keyref_cmp(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    return cmp_key(x->p, y->p, x->len, y->len);
}

/* NodeDown(node) counted the record sr (key id) for node, the registry's
 * owner, while it names another node: marked (kept_for), so that its
 * counts go when it moves on (record_left). A record marked for another
 * node keeps that mark (its counts for node stay until the next NodeDown:
 * the old window). */
static int record_mark(struct rtable_txn *x, const void *id, size_t id_len,
                       Starling__Cmd__SessionRecord *sr, uint64_t node)
{
    sr->has_kept_for = true;
    sr->kept_for = node;
    size_t len = starling__cmd__session_record__get_packed_size(sr);
    unsigned char *v = malloc(len ? len : 1);
    if (!v)
        return -ENOMEM;
    starling__cmd__session_record__pack(sr, v);
    int rc = rtable_put(x, RTABLE_SESSIONS, id, id_len, v, len);
    free(v);
    return rc;
}

/* The filters that the session records of `node` need (each a copy, freed
 * with the list): those of the sessions it owns, and those of the sessions
 * claimed away from it whose new owner has not written its record yet. The
 * new owner writes it in the entry of its routes or after it (its routes
 * are queued first), so until then those routes may not be in effect and
 * its copy may not be in its index yet: messages routed to `node` are held
 * for it (by their origins, then moved as late messages), where removing
 * the route lost them (a claim that waited for the stopped node's answer
 * across NodeDown: tests/cluster/test_faults.py, docs/cluster.md "A stalled
 * node"). */
static int node_kept_filters(struct rtable_txn *x, uint64_t node, struct keylist *kept, bool mark)
{
    struct keylist recs = {0};
    int rc = rtable_scan(x, RTABLE_SESSIONS, NULL, 0, collect_key, &recs);
    /* the values again, in the same key order */
    for (size_t i = 0; rc == 0 && i < recs.n; i++) {
        const void *v;
        size_t vlen;
        rc = rtable_get(x, RTABLE_SESSIONS, recs.keys[i], recs.lens[i], &v, &vlen);
        if (rc)
            break;
        ProtobufCBinaryData id = {recs.lens[i], recs.keys[i]};
        uint64_t owner, epoch;
        int r = registry_read(x, &id, &owner, &epoch, NULL);
        if (r == -ENOENT)
            continue;
        if (r) {
            rc = r;
            break;
        }
        Starling__Cmd__SessionRecord *sr = record_unpack(v, vlen, &rc);
        if (rc)
            break; /* out of memory: the entry is applied again later */
        if (!sr)
            continue; /* cannot happen: written by apply_session_record */
        if (owner != node && sr->node != node) {
            starling__cmd__session_record__free_unpacked(sr, NULL);
            continue;
        }
        for (size_t k = 0; rc == 0 && k < sr->n_subs; k++)
            rc = collect_key(kept, sr->subs[k]->filter.data, sr->subs[k]->filter.len, NULL, 0);
        if (rc == 0 && mark && sr->node != node && sr->n_subs && !sr->has_kept_for)
            rc = record_mark(x, recs.keys[i], recs.lens[i], sr, node);
        starling__cmd__session_record__free_unpacked(sr, NULL);
    }
    for (size_t i = 0; i < recs.n; i++)
        free(recs.keys[i]);
    free(recs.keys);
    free(recs.lens);
    return rc;
}

/* NodeDown: the routes of node go, but for the filters of the persistent
 * sessions it still owns or whose new owner has not written their record
 * yet (their messages are held for them). With `keepers`, each route kept
 * holds the number of those records that need it (keepers_drop takes
 * them away one by one): OK also when only a count changed. */
static int apply_node_down(struct rtable_txn *x, uint64_t node, bool keepers, bool mark)
{
    if (node == 0)
        return FSM_INVALID;
    struct keylist kept = {0}, routes = {0};
    int rc = node_kept_filters(x, node, &kept, keepers && mark);
    struct keyref *ks = NULL;
    if (rc == 0 && kept.n) {
        ks = malloc(kept.n * sizeof(*ks));
        if (!ks)
            rc = -ENOMEM;
        for (size_t i = 0; ks && i < kept.n; i++)
            ks[i] = (struct keyref){kept.keys[i], kept.lens[i]};
        if (ks)
            qsort(ks, kept.n, sizeof(*ks), keyref_cmp);
    }
    unsigned char prefix[8];
    be64(prefix, node);
    if (rc == 0)
        rc = rtable_scan(x, RTABLE_ROUTES, prefix, 8, collect_key, &routes);
    size_t removed = 0, counted = 0;
    for (size_t i = 0; rc == 0 && i < routes.n; i++) {
        struct keyref f = {routes.keys[i] + 8, routes.lens[i] - 8};
        struct keyref *hit = kept.n ? bsearch(&f, ks, kept.n, sizeof(*ks), keyref_cmp) : NULL;
        if (hit && keepers) {
            /* the records that need it: the run of equal filters */
            size_t lo = (size_t)(hit - ks), hi = lo + 1;
            while (lo > 0 && keyref_cmp(&ks[lo - 1], &f) == 0)
                lo--;
            while (hi < kept.n && keyref_cmp(&ks[hi], &f) == 0)
                hi++;
            unsigned char nv[4];
            le32(nv, (uint32_t)(hi - lo));
            const void *v;
            size_t vlen;
            rc = rtable_get(x, RTABLE_ROUTES, routes.keys[i], routes.lens[i], &v, &vlen);
            if (rc == 0 && !(vlen == 4 && memcmp(v, nv, 4) == 0)) {
                rc = rtable_put(x, RTABLE_ROUTES, routes.keys[i], routes.lens[i], nv, 4);
                counted++;
            }
            continue;
        }
        if (hit)
            continue;
        /* the matcher follows after the commit (after_commit) */
        rc = rtable_del(x, RTABLE_ROUTES, routes.keys[i], routes.lens[i]);
        removed++;
    }
    if (rc == 0 && removed == 0 && counted == 0)
        rc = FSM_NOOP;
    free(ks);
    for (size_t i = 0; i < kept.n; i++)
        free(kept.keys[i]);
    free(kept.keys);
    free(kept.lens);
    for (size_t i = 0; i < routes.n; i++)
        free(routes.keys[i]);
    free(routes.keys);
    free(routes.lens);
    return rc;
}

/* Apply one command: a enum fsm_result (>= 0) or a negative errno (the
 * transaction must be abandoned). */
static int apply_one(struct rtable_txn *x, const Starling__Cmd__Command *c, uint64_t index,
                     uint64_t *pruned)
{
    switch (c->cmd_case) {
    case STARLING__CMD__COMMAND__CMD_ROUTE_ADD:
        return apply_route(x, &c->route_add->filter, c->route_add->node, true);
    case STARLING__CMD__COMMAND__CMD_ROUTE_REMOVE:
        return apply_route(x, &c->route_remove->filter, c->route_remove->node, false);
    case STARLING__CMD__COMMAND__CMD_SESSION_CLAIM:
        return apply_claim(x, c->session_claim);
    case STARLING__CMD__COMMAND__CMD_SESSION_RELEASE:
        return apply_release(x, c->session_release, pruned);
    case STARLING__CMD__COMMAND__CMD_RETAINED_SET:
        return apply_retained_set(x, c->retained_set);
    case STARLING__CMD__COMMAND__CMD_RETAINED_CLEAR:
        return apply_retained_clear(x, c->retained_clear);
    case STARLING__CMD__COMMAND__CMD_MEMBER:
        return apply_member(x, c->member);
    case STARLING__CMD__COMMAND__CMD_MEMBER_REMOVE:
        return apply_member_remove(x, c->member_remove->node);
    case STARLING__CMD__COMMAND__CMD_NODE_PURGE:
        return apply_purge(x, c->node_purge->node);
    case STARLING__CMD__COMMAND__CMD_SESSION_RECORD:
        return apply_session_record(x, c->session_record, index, pruned);
    case STARLING__CMD__COMMAND__CMD_NODE_DOWN:
        return apply_node_down(x, c->node_down->node,
                               c->node_down->has_keepers && c->node_down->keepers,
                               c->node_down->has_owners_marked && c->node_down->owners_marked);
    case STARLING__CMD__COMMAND__CMD_ADMIN_PUT:
    case STARLING__CMD__COMMAND__CMD_ADMIN_DELETE:
        return apply_admin(x, c);
    default:
        return FSM_INVALID;
    }
}

/* The route changes of an entry in the log (docs/cluster.md, "Route
 * changes in the log"): at info when a route went (a RouteRemove, a
 * NodePurge, a NodeDown), at debug when routes were only added, nothing
 * for an entry without route commands. `total`: the matcher's routes
 * after the entry; `gone`: what NodePurge/NodeDown took from the matcher. */
static void log_routes_applied(uint64_t index, const Starling__Cmd__CommandBatch *b,
                               const uint8_t *results, size_t total, const char *gone)
{
    if (log_get_level() < LOG_LEVEL_INFO)
        return;
    unsigned char changed[FSM_MAX_BATCH];
    for (size_t i = 0; i < b->n_commands; i++)
        changed[i] = results[i] == FSM_OK;
    char d[1024];
    int mask = cmd_routes_describe(b, changed, d, sizeof(d));
    if ((mask & CMD_ROUTES_GONE) || gone[0])
        log_info("cluster: entry %llu applied, routes: %s%s (%zu in the matcher)",
                 (unsigned long long)index, d, d[0] ? gone : gone + (gone[0] ? 2 : 0), total);
    else if (mask)
        log_debug("cluster: entry %llu applied, routes: %s (%zu in the matcher)",
                  (unsigned long long)index, d, total);
}

/* After the commit: mirror route changes into the matcher, tell the
 * observer. */
static void after_commit(struct fsm *f, uint64_t index, const Starling__Cmd__CommandBatch *b,
                         const uint8_t *results)
{
    /* The entry's route changes reach the matcher at once (routes.h,
     * routes_write_begin): a returning node's NodePurge is followed by the
     * RouteAdds of its sessions, and NodeDown reloads the routes a node
     * keeps. Applied one at a time, a publish on another node in between
     * found no route to that node, and its forward was never made (one
     * acknowledged QoS 2 message lost now and then when a destination
     * restarted under traffic, test_forward.py). */
    /* what went from the matcher at a NodePurge / NodeDown, for the log */
    char gone[512];
    size_t at = 0;
    gone[0] = 0;
    routes_write_begin(f->routes);
    for (size_t i = 0; i < b->n_commands; i++) {
        const Starling__Cmd__Command *c = b->commands[i];
        for (int j = 0; j < 2; j++) {
            if (!f->pruned[i][j])
                continue;
            /* a record left a dead node: its counted routes (keepers_drop) */
            struct kept_routes k = {0};
            routes_reload_node(f, f->pruned[i][j], &k);
            bool rel = c->cmd_case == STARLING__CMD__COMMAND__CMD_SESSION_RELEASE;
            const ProtobufCBinaryData *id =
                rel ? &c->session_release->client_id : &c->session_record->client_id;
            if (at < sizeof(gone))
                at += (size_t)snprintf(
                    gone + at, sizeof(gone) - at, "; %s('%.*s') left %016llx: %zu gone, %zu kept",
                    rel ? "SessionRelease" : "SessionRecord", (int)(id->len < 64 ? id->len : 64),
                    (const char *)id->data, (unsigned long long)f->pruned[i][j],
                    k.before > k.after ? k.before - k.after : 0, k.after);
        }
        if (results[i] != FSM_OK)
            continue;
        switch (c->cmd_case) {
        case STARLING__CMD__COMMAND__CMD_ROUTE_ADD:
            if (routes_add(f->routes, (const char *)c->route_add->filter.data,
                           c->route_add->filter.len, c->route_add->node) == -ENOMEM)
                f->routes_stale = true;
            break;
        case STARLING__CMD__COMMAND__CMD_ROUTE_REMOVE:
            routes_remove(f->routes, (const char *)c->route_remove->filter.data,
                          c->route_remove->filter.len, c->route_remove->node);
            break;
        case STARLING__CMD__COMMAND__CMD_NODE_PURGE: {
            size_t n = routes_remove_node(f->routes, c->node_purge->node);
            if (at < sizeof(gone))
                at +=
                    (size_t)snprintf(gone + at, sizeof(gone) - at, "; NodePurge(%016llx): %zu gone",
                                     (unsigned long long)c->node_purge->node, n);
            break;
        }
        case STARLING__CMD__COMMAND__CMD_NODE_DOWN: {
            struct kept_routes k = {0};
            routes_reload_node(f, c->node_down->node, &k);
            if (at < sizeof(gone))
                at += (size_t)snprintf(gone + at, sizeof(gone) - at,
                                       "; NodeDown(%016llx): %zu gone, %zu kept [%s%s]",
                                       (unsigned long long)c->node_down->node,
                                       k.before > k.after ? k.before - k.after : 0, k.after,
                                       k.shown, k.after > 3 ? ", ..." : "");
            break;
        }
        default:
            break;
        }
    }
    routes_write_end(f->routes);
    fsm_repair(f); /* at once, if an allocation failed above */
    log_routes_applied(index, b, results, routes_count(f->routes), gone);
    /* the observers (which may publish, and so match routes) after */
    for (size_t i = 0; f->observer && i < b->n_commands; i++)
        if (results[i] == FSM_OK)
            f->observer(f->observer_ud, index, b->commands[i]);
}

int fsm_repair(struct fsm *f)
{
    if (!f->routes_stale)
        return 0;
    int rc = routes_reload(f, false);
    if (rc) {
        if (!f->routes_warned)
            log_warn("cluster: the route matcher lacks routes of the table (%s): it is rebuilt "
                     "again on each tick until that succeeds",
                     strerror(-rc));
        f->routes_warned = true;
        return rc;
    }
    f->routes_stale = f->routes_warned = false;
    log_info("cluster: the route matcher was rebuilt from the table after an allocation failed");
    return 0;
}

int fsm_apply(struct fsm *f, uint64_t index, const void *buf, size_t len,
              struct fsm_batch_result *res)
{
    struct fsm_batch_result local;
    if (!res)
        res = &local;
    memset(res, 0, offsetof(struct fsm_batch_result, results));
    res->index = index;
    if (f->broken)
        return -EIO;
    const void *pb;
    size_t pb_len;
    Starling__Cmd__CommandBatch *b = NULL;
    bool nomem = false;
    ProtobufCAllocator pa = {.alloc = unpack_alloc, .free = unpack_free, .allocator_data = &nomem};
    if (cmd_entry_unwrap(buf, len, &pb, &pb_len) == 0)
        b = starling__cmd__command_batch__unpack(&pa, pb_len, pb);
    if (!b && nomem)
        return -ENOMEM; /* nothing done: tried again (fsm_raft.c) */
    if (b && b->n_commands > FSM_MAX_BATCH) {
        starling__cmd__command_batch__free_unpacked(b, NULL);
        b = NULL;
    }
    int rc;
    for (;;) {
        struct rtable_txn *x;
        rc = rtable_begin(f->t, &x);
        if (rc)
            break;
        if (rtable_txn_applied(x) >= index) {
            rtable_abort(x);
            res->skipped = true;
            if (b)
                starling__cmd__command_batch__free_unpacked(b, NULL);
            if (index > __atomic_load_n(&f->visible, __ATOMIC_ACQUIRE))
                set_visible(f, index);
            return 0;
        }
        res->n = b ? (uint32_t)b->n_commands : 0;
        for (uint32_t i = 0; rc == 0 && i < res->n; i++) {
            f->pruned[i][0] = f->pruned[i][1] = 0;
            int r = apply_one(x, b->commands[i], index, f->pruned[i]);
            if (r < 0)
                rc = r;
            else
                res->results[i] = (uint8_t)r;
        }
        if (rc == 0) {
            rtable_txn_set_applied(x, index);
            res->checksum = rtable_txn_checksum(x);
            rc = rtable_commit(x);
        } else {
            rtable_abort(x);
        }
        if (rc == -EFBIG && rtable_grow(f->t) == 0)
            continue;
        break;
    }
    if (rc == -ENOMEM) {
        /* the transaction was aborted: the tables are as before the entry,
         * which is applied again later (fsm_raft.c) */
    } else if (rc) {
        __atomic_store_n(&f->broken, true, __ATOMIC_RELEASE);
    } else {
        if (b)
            after_commit(f, index, b, res->results);
        set_visible(f, index);
    }
    if (rc == 0)
        atomic_store(&f->routes_index, index);
    if (b)
        starling__cmd__command_batch__free_unpacked(b, NULL);
    return rc;
}

bool fsm_tables_reset(struct fsm *f)
{
    return rtable_was_reset(f->t);
}

bool fsm_broken(struct fsm *f)
{
    return __atomic_load_n(&f->broken, __ATOMIC_ACQUIRE);
}

uint64_t fsm_applied(struct fsm *f)
{
    return rtable_applied(f->t);
}

uint64_t fsm_visible(struct fsm *f)
{
    return __atomic_load_n(&f->visible, __ATOMIC_ACQUIRE);
}

uint64_t fsm_checksum(struct fsm *f)
{
    return rtable_checksum(f->t);
}

int fsm_state(struct fsm *f, uint64_t *applied, uint64_t *checksum)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    *applied = rtable_txn_applied(x);
    *checksum = rtable_txn_checksum(x);
    rtable_abort(x);
    return 0;
}

int fsm_checksum_verify(struct fsm *f, uint64_t *computed)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    rc = rtable_checksum_compute(x, computed);
    rtable_abort(x);
    return rc;
}

int fsm_snapshot(struct fsm *f, void **buf, size_t *len)
{
    return rtable_snapshot(f->t, buf, len);
}

int fsm_restore(struct fsm *f, const void *buf, size_t len, bool keep_newer, bool *skipped)
{
    int rc;
    uint64_t snap_applied, snap_sum;
    if (skipped)
        *skipped = false;
    if (rtable_snapshot_header(buf, len, &snap_applied, &snap_sum) != 0)
        return -EINVAL;
    if (keep_newer && !f->broken) {
        struct rtable_txn *x;
        rc = rtable_begin_read(f->t, &x);
        if (rc)
            return rc;
        uint64_t applied = rtable_txn_applied(x), sum = rtable_txn_checksum(x);
        rtable_abort(x);
        if (applied > snap_applied || (applied == snap_applied && sum == snap_sum)) {
            if (skipped)
                *skipped = true;
            return 0;
        }
    }
    while ((rc = rtable_restore(f->t, buf, len)) == -EFBIG && rtable_grow(f->t) == 0)
        ;
    if (rc)
        return rc;
    rc = routes_reload(f, true);
    if (rc == -ENOMEM) {
        /* the tables are restored; the matcher lacks routes until
         * fsm_repair fills it (on the next tick) */
        f->routes_stale = true;
        rc = 0;
    }
    if (rc == 0)
        log_info("cluster: route matcher loaded from a snapshot (entry %llu): %zu route(s)",
                 (unsigned long long)rtable_applied(f->t), routes_count(f->routes));
    if (rc == 0) {
        f->broken = false;
        set_visible(f, rtable_applied(f->t));
        atomic_store(&f->routes_index, rtable_applied(f->t));
    }
    return rc;
}

uint64_t fsm_routes_index(struct fsm *f)
{
    return atomic_load(&f->routes_index);
}

struct routes *fsm_routes(struct fsm *f)
{
    return f->routes;
}

int fsm_route_own(struct fsm *f, uint64_t node, const char *filter, size_t len)
{
    if (len == 0 || len > RTABLE_MAX_KEY)
        return -EINVAL;
    ProtobufCBinaryData fb = {len, (uint8_t *)filter};
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    unsigned char *key;
    size_t klen;
    const void *v;
    size_t vlen;
    rc = route_get(x, node, &fb, &key, &klen, &v, &vlen);
    rc = rc == 0 ? vlen == 0 : rc == -ENOENT ? 0 : rc;
    rtable_abort(x);
    free(key);
    return rc;
}

int fsm_registry_claim(struct fsm *f, const char *client_id, size_t len, uint64_t *node,
                       uint64_t *epoch, bool *stored)
{
    if (len == 0 || len > RTABLE_MAX_KEY)
        return -EINVAL;
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    ProtobufCBinaryData id = {len, (uint8_t *)client_id};
    rc = registry_read(x, &id, node, epoch, stored);
    rtable_abort(x);
    return rc;
}

int fsm_registry_get(struct fsm *f, const char *client_id, size_t len, uint64_t *node,
                     uint64_t *epoch)
{
    return fsm_registry_claim(f, client_id, len, node, epoch, NULL);
}

/* A copy of the value of key in db from a read transaction (malloc'ed, one
 * NUL byte after it, caller frees): 0, -ENOENT or another error. The first
 * `skip` bytes (a header) go to head instead, when the value has them
 * (-EIO when not). */
static int get_copy(struct fsm *f, enum rtable_db db, const void *key, size_t klen, size_t skip,
                    unsigned char *head, void **out, size_t *out_len)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    const void *v;
    size_t vlen;
    rc = rtable_get(x, db, key, klen, &v, &vlen);
    if (rc == 0 && vlen < skip)
        rc = -EIO;
    if (rc == 0) {
        unsigned char *c = malloc(vlen - skip + 1);
        if (c) {
            if (skip)
                memcpy(head, v, skip);
            memcpy(c, (const unsigned char *)v + skip, vlen - skip);
            c[vlen - skip] = '\0';
            *out = c;
            *out_len = vlen - skip;
        } else {
            rc = -ENOMEM;
        }
    }
    rtable_abort(x);
    return rc;
}

int fsm_retained_get(struct fsm *f, const char *topic, size_t len, void **msg, size_t *msg_len,
                     uint64_t *origin, uint64_t *seq)
{
    if (len == 0 || len > RTABLE_MAX_KEY)
        return -EINVAL;
    unsigned char head[16];
    int rc = get_copy(f, RTABLE_RETAINED, topic, len, sizeof head, head, msg, msg_len);
    if (rc == 0) {
        *origin = get_le64(head);
        *seq = get_le64(head + 8);
    }
    return rc;
}

struct member_visit {
    int (*fn)(void *ud, uint64_t node, const void *member, size_t len);
    void *ud;
};

static int visit_member(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct member_visit *m = ud;
    if (klen != 8)
        return -EIO;
    return m->fn(m->ud, get_be64(key), val, vlen);
}

int fsm_members(struct fsm *f, int (*fn)(void *ud, uint64_t node, const void *member, size_t len),
                void *ud)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    struct member_visit m = {fn, ud};
    rc = rtable_scan(x, RTABLE_MEMBERS, NULL, 0, visit_member, &m);
    rtable_abort(x);
    return rc;
}

int fsm_counts(struct fsm *f, uint64_t *routes, uint64_t *sessions, uint64_t *retained,
               uint64_t *members)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    *routes = rtable_count(x, RTABLE_ROUTES);
    *sessions = rtable_count(x, RTABLE_REGISTRY);
    *retained = rtable_count(x, RTABLE_RETAINED);
    *members = rtable_count(x, RTABLE_MEMBERS);
    rtable_abort(x);
    return 0;
}
/* ---- the operator's tables: readers ---- */

int fsm_admin_get(struct fsm *f, unsigned table, const char *key, size_t klen, char **val)
{
    ProtobufCBinaryData k = {klen, (uint8_t *)key};
    size_t kl, vlen;
    unsigned char *ak = admin_key(table, &k, &kl);
    if (!ak)
        return -EINVAL;
    void *v;
    int rc = get_copy(f, RTABLE_ADMIN, ak, kl, 0, NULL, &v, &vlen);
    if (rc == 0)
        *val = v; /* NUL-terminated */
    free(ak);
    return rc;
}

struct admin_visit {
    int (*fn)(void *ud, const char *key, const char *val);
    void *ud;
};

static int visit_admin(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct admin_visit *a = ud;
    char *k = malloc(klen), *v = malloc(vlen + 1);
    int rc = -ENOMEM;
    if (k && v) {
        memcpy(k, (const char *)key + 1, klen - 1);
        k[klen - 1] = '\0';
        memcpy(v, val, vlen);
        v[vlen] = '\0';
        rc = a->fn(a->ud, k, v);
    }
    free(k);
    free(v);
    return rc;
}

int fsm_admin_scan(struct fsm *f, unsigned table,
                   int (*fn)(void *ud, const char *key, const char *val), void *ud)
{
    if (table == 0 || table > 255)
        return -EINVAL;
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    unsigned char prefix = (unsigned char)table;
    struct admin_visit a = {fn, ud};
    rc = rtable_scan(x, RTABLE_ADMIN, &prefix, 1, visit_admin, &a);
    rtable_abort(x);
    return rc;
}

static int admin_any(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen, (void)val, (void)vlen;
    *(bool *)ud = true;
    return 1; /* stop */
}

bool fsm_admin_empty(struct fsm *f, unsigned table)
{
    struct rtable_txn *x;
    if (table == 0 || table > 255 || rtable_begin_read(f->t, &x) != 0)
        return true;
    unsigned char prefix = (unsigned char)table;
    bool any = false;
    rtable_scan(x, RTABLE_ADMIN, &prefix, 1, admin_any, &any);
    rtable_abort(x);
    return !any;
}

int fsm_session_record_get(struct fsm *f, const char *client_id, size_t len, void **rec,
                           size_t *rec_len)
{
    if (len == 0 || len > RTABLE_MAX_KEY)
        return -EINVAL;
    return get_copy(f, RTABLE_SESSIONS, client_id, len, 0, NULL, rec, rec_len);
}

struct owner_count {
    uint64_t node, n;
};

static int count_owned(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key;
    (void)klen;
    struct owner_count *c = ud;
    if (registry_len_ok(vlen) && get_le64(val) == c->node)
        c->n++;
    return 0;
}

static int count_one(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    (*(uint64_t *)ud)++;
    return 0;
}

uint64_t fsm_node_routes(struct fsm *f, uint64_t node)
{
    struct rtable_txn *x;
    if (rtable_begin_read(f->t, &x))
        return 0;
    unsigned char prefix[8];
    be64(prefix, node);
    uint64_t n = 0;
    rtable_scan(x, RTABLE_ROUTES, prefix, 8, count_one, &n);
    rtable_abort(x);
    return n;
}

int fsm_node_counts(struct fsm *f, uint64_t node, uint64_t *routes, uint64_t *sessions)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    unsigned char prefix[8];
    be64(prefix, node);
    *routes = 0;
    rc = rtable_scan(x, RTABLE_ROUTES, prefix, 8, count_one, routes);
    struct owner_count c = {node, 0};
    if (rc == 0)
        rc = rtable_scan(x, RTABLE_REGISTRY, NULL, 0, count_owned, &c);
    *sessions = c.n;
    rtable_abort(x);
    return rc;
}

struct node_expiry {
    struct rtable_txn *x;
    uint64_t node, elapsed_s, next_s;
    size_t max, n;
    bool full;
    fsm_expired_fn fn;
    void *ud;
};

static int expired_owned(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct node_expiry *e = ud;
    if (!registry_len_ok(vlen) || get_le64(val) != e->node)
        return 0;
    const void *rv;
    size_t rlen;
    /* no record: a session that never wrote one (expiry 0, or its record
     * not written yet); not judged here */
    if (rtable_get(e->x, RTABLE_SESSIONS, key, klen, &rv, &rlen) != 0)
        return 0;
    Starling__Cmd__SessionRecord *sr = starling__cmd__session_record__unpack(NULL, rlen, rv);
    if (!sr)
        return 0;
    uint64_t epoch = get_le64((const unsigned char *)val + 8);
    /* the record of another owner (this one claimed the session and died
     * before writing its own): not this session's expiry, not judged */
    bool its = sr->node == e->node && sr->epoch == epoch;
    uint32_t expiry = sr->expiry_interval;
    starling__cmd__session_record__free_unpacked(sr, NULL);
    if (!its || expiry == UINT32_MAX)
        return 0; /* not known, or never expires */
    if (expiry > e->elapsed_s) {
        if (expiry < e->next_s)
            e->next_s = expiry;
        return 0;
    }
    if (e->n >= e->max || e->fn(e->ud, key, klen, epoch) != 0) {
        e->full = true;
        return 1;
    }
    e->n++;
    return 0;
}

struct owner_set {
    uint64_t *v;
    size_t n, max;
};

static int owner_collect(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen;
    struct owner_set *o = ud;
    if (!registry_len_ok(vlen))
        return 0;
    uint64_t node = get_le64(val);
    for (size_t i = 0; i < o->n; i++)
        if (o->v[i] == node)
            return 0;
    if (o->n == o->max)
        return 1;
    o->v[o->n++] = node;
    return 0;
}

int fsm_registry_owners(struct fsm *f, uint64_t *out, size_t max)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    struct owner_set o = {out, 0, max};
    rc = rtable_scan(x, RTABLE_REGISTRY, NULL, 0, owner_collect, &o);
    rtable_abort(x);
    return rc < 0 ? rc : (int)o.n;
}

int fsm_node_expired(struct fsm *f, uint64_t node, uint64_t elapsed_s, size_t max,
                     fsm_expired_fn fn, void *ud, uint64_t *next_s)
{
    *next_s = UINT64_MAX;
    struct rtable_txn *x;
    int rc = rtable_begin_read(f->t, &x);
    if (rc)
        return rc;
    struct node_expiry e = {x, node, elapsed_s, UINT64_MAX, max, 0, false, fn, ud};
    rc = rtable_scan(x, RTABLE_REGISTRY, NULL, 0, expired_owned, &e);
    rtable_abort(x);
    if (rc < 0)
        return rc;
    /* stopped (max, or fn said so): there are more now */
    *next_s = e.full ? elapsed_s : e.next_s;
    return (int)e.n;
}

#ifndef NDEBUG
int fsm_test_corrupt(struct fsm *f)
{
    struct rtable_txn *x;
    int rc = rtable_begin(f->t, &x);
    if (rc)
        return rc;
    static const char key[] = "starling-test-corruption";
    unsigned char v[16] = {1};
    rc = rtable_put(x, RTABLE_REGISTRY, key, sizeof key - 1, v, sizeof v);
    if (rc) {
        rtable_abort(x);
        return rc;
    }
    return rtable_commit(x);
}
#endif
