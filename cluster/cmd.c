/*
 * cmd.c - command batches (see cmd.h).
 *
 * The encoding of a repeated message field is the concatenation of its
 * elements, each as tag (field 1, wire type 2 = 0x0a), varint length and the
 * element's bytes; so a CommandBatch grows by appending one encoded Command
 * per add, with no tree of protobuf-c structs kept around.
 */
#include "cmd.h"
#include "raft_cmd.pb-c.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 65535u

struct cmd_batch {
    uint8_t *p;
    size_t len, cap;
    size_t n;
};

struct cmd_batch *cmd_batch_new(void)
{
    return calloc(1, sizeof(struct cmd_batch));
}

void cmd_batch_free(struct cmd_batch *b)
{
    if (!b)
        return;
    free(b->p);
    free(b);
}

size_t cmd_batch_count(const struct cmd_batch *b)
{
    return b->n;
}

/* Make room for `more` bytes of protobuf after what is there, plus the
 * header and the largest padding. */
static int reserve(struct cmd_batch *b, size_t more)
{
    size_t need = CMD_ENTRY_HEADER + b->len + more + 8;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

const void *cmd_batch_data(struct cmd_batch *b, size_t *len)
{
    if (reserve(b, 0) != 0) {
        *len = 0;
        return NULL;
    }
    memcpy(b->p, "ST\x01\x00", 4);
    put_u32le(b->p + 4, (uint32_t)b->len);
    size_t total = pad8(CMD_ENTRY_HEADER + b->len);
    memset(b->p + CMD_ENTRY_HEADER + b->len, 0, total - CMD_ENTRY_HEADER - b->len);
    *len = total;
    return b->p;
}

const void *cmd_batch_pb(const struct cmd_batch *b, size_t *len)
{
    *len = b->len;
    return b->p ? (const void *)(b->p + CMD_ENTRY_HEADER) : (const void *)"";
}

int cmd_entry_unwrap(const void *entry, size_t len, const void **pb, size_t *pb_len)
{
    const uint8_t *p = entry;
    if (len < CMD_ENTRY_HEADER || len % 8 != 0 || memcmp(p, "ST\x01\x00", 4) != 0)
        return -EINVAL;
    uint32_t n = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    if (pad8(CMD_ENTRY_HEADER + (size_t)n) != len)
        return -EINVAL;
    *pb = p + CMD_ENTRY_HEADER;
    *pb_len = n;
    return 0;
}

int cmd_entry_wrap(const void *pb, size_t pb_len, void **entry, size_t *len)
{
    if (pb_len > UINT32_MAX - 16)
        return -EINVAL;
    size_t total = pad8(CMD_ENTRY_HEADER + pb_len);
    uint8_t *p = calloc(1, total);
    if (!p)
        return -ENOMEM;
    memcpy(p, "ST\x01\x00", 4);
    put_u32le(p + 4, (uint32_t)pb_len);
    memcpy(p + CMD_ENTRY_HEADER, pb, pb_len);
    *entry = p;
    *len = total;
    return 0;
}

int cmd_batch_append(struct cmd_batch *dst, const struct cmd_batch *src)
{
    if (src->len == 0)
        return 0;
    if (reserve(dst, src->len) != 0)
        return -ENOMEM;
    /* concatenated CommandBatch encodings are one batch of all commands */
    memcpy(dst->p + CMD_ENTRY_HEADER + dst->len, src->p + CMD_ENTRY_HEADER, src->len);
    dst->len += src->len;
    dst->n += src->n;
    return 0;
}

void cmd_batch_reset(struct cmd_batch *b)
{
    b->len = 0;
    b->n = 0;
}

static int append(struct cmd_batch *b, const Starling__Cmd__Command *c)
{
    size_t n = starling__cmd__command__get_packed_size(c);
    if (reserve(b, 11 + n) != 0)
        return -ENOMEM;
    uint8_t *q = b->p + CMD_ENTRY_HEADER;
    q[b->len++] = 0x0a;
    for (size_t v = n;; v >>= 7) {
        if (v < 0x80) {
            q[b->len++] = (uint8_t)v;
            break;
        }
        q[b->len++] = (uint8_t)(v | 0x80);
    }
    starling__cmd__command__pack(c, q + b->len);
    b->len += n;
    b->n++;
    return 0;
}

static int key_ok(const void *k, size_t len)
{
    return k && len > 0 && len <= KEY_MAX;
}

static ProtobufCBinaryData bin(const void *p, size_t len)
{
    return (ProtobufCBinaryData){len, (uint8_t *)p};
}

int cmd_route_add(struct cmd_batch *b, const char *filter, size_t len, uint64_t node)
{
    if (!key_ok(filter, len) || !node)
        return -EINVAL;
    Starling__Cmd__RouteAdd m = STARLING__CMD__ROUTE_ADD__INIT;
    m.filter = bin(filter, len);
    m.node = node;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_ROUTE_ADD;
    c.route_add = &m;
    return append(b, &c);
}

int cmd_route_remove(struct cmd_batch *b, const char *filter, size_t len, uint64_t node)
{
    if (!key_ok(filter, len) || !node)
        return -EINVAL;
    Starling__Cmd__RouteRemove m = STARLING__CMD__ROUTE_REMOVE__INIT;
    m.filter = bin(filter, len);
    m.node = node;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_ROUTE_REMOVE;
    c.route_remove = &m;
    return append(b, &c);
}

int cmd_session_claim_clean(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                            uint64_t epoch, int clean_start, int stored)
{
    if (!key_ok(client_id, len) || !node)
        return -EINVAL;
    Starling__Cmd__SessionClaim m = STARLING__CMD__SESSION_CLAIM__INIT;
    m.client_id = bin(client_id, len);
    m.node = node;
    m.epoch = epoch;
    if (clean_start) {
        m.has_clean_start = 1;
        m.clean_start = 1;
    }
    if (stored) {
        m.has_stored = 1;
        m.stored = 1;
    }
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_SESSION_CLAIM;
    c.session_claim = &m;
    return append(b, &c);
}

int cmd_session_claim(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                      uint64_t epoch)
{
    return cmd_session_claim_clean(b, client_id, len, node, epoch, 0, 0);
}

int cmd_session_release(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                        uint64_t epoch, int expired)
{
    if (!key_ok(client_id, len) || !node)
        return -EINVAL;
    Starling__Cmd__SessionRelease m = STARLING__CMD__SESSION_RELEASE__INIT;
    m.client_id = bin(client_id, len);
    m.node = node;
    m.epoch = epoch;
    m.has_expired = 1;
    m.expired = expired != 0;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_SESSION_RELEASE;
    c.session_release = &m;
    return append(b, &c);
}

int cmd_retained_set(struct cmd_batch *b, const char *topic, size_t len, unsigned qos,
                     const void *payload, size_t payload_len, const void *props, size_t props_len,
                     uint64_t expiry_at_ms, uint64_t origin, uint64_t seq)
{
    if (!key_ok(topic, len) || qos > 2 || (payload_len && !payload) || (props_len && !props))
        return -EINVAL;
    Starling__Cmd__RetainedMessage rm = STARLING__CMD__RETAINED_MESSAGE__INIT;
    rm.qos = qos;
    rm.payload = bin(payload_len ? payload : "", payload_len);
    if (props_len) {
        rm.has_properties = 1;
        rm.properties = bin(props, props_len);
    }
    if (expiry_at_ms) {
        rm.has_expiry_at_ms = 1;
        rm.expiry_at_ms = expiry_at_ms;
    }
    Starling__Cmd__RetainedSet m = STARLING__CMD__RETAINED_SET__INIT;
    m.topic = bin(topic, len);
    m.message = &rm;
    m.origin = origin;
    m.seq = seq;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_RETAINED_SET;
    c.retained_set = &m;
    return append(b, &c);
}

int cmd_retained_clear(struct cmd_batch *b, const char *topic, size_t len, uint64_t origin,
                       uint64_t seq)
{
    if (!key_ok(topic, len))
        return -EINVAL;
    Starling__Cmd__RetainedClear m = STARLING__CMD__RETAINED_CLEAR__INIT;
    m.topic = bin(topic, len);
    m.origin = origin;
    m.seq = seq;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_RETAINED_CLEAR;
    c.retained_clear = &m;
    return append(b, &c);
}

int cmd_member(struct cmd_batch *b, uint64_t node, const char *name, const char *address,
               unsigned cluster_port, unsigned raft_port, const char *raft_address,
               enum cmd_role role, int left)
{
    if (!node || !name || !address || cluster_port > 65535 || raft_port > 65535 ||
        (unsigned)role > CMD_ROLE_SPARE)
        return -EINVAL;
    Starling__Cmd__Member m = STARLING__CMD__MEMBER__INIT;
    m.node = node;
    m.name = (char *)name;
    m.address = (char *)address;
    m.cluster_port = cluster_port;
    m.raft_port = raft_port;
    m.raft_address = (char *)raft_address;
    m.has_role = 1;
    m.role = (Starling__Cmd__NodeRole)role;
    m.has_left = 1;
    m.left = left != 0;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_MEMBER;
    c.member = &m;
    return append(b, &c);
}

int cmd_member_remove(struct cmd_batch *b, uint64_t node)
{
    if (!node)
        return -EINVAL;
    Starling__Cmd__MemberRemove m = STARLING__CMD__MEMBER_REMOVE__INIT;
    m.node = node;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_MEMBER_REMOVE;
    c.member_remove = &m;
    return append(b, &c);
}

int cmd_node_purge(struct cmd_batch *b, uint64_t node)
{
    if (!node)
        return -EINVAL;
    Starling__Cmd__NodePurge m = STARLING__CMD__NODE_PURGE__INIT;
    m.node = node;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_NODE_PURGE;
    c.node_purge = &m;
    return append(b, &c);
}

int cmd_admin_put(struct cmd_batch *b, unsigned table, const char *key, size_t klen,
                  const char *val, size_t vlen)
{
    if (!table || table > 255 || !key_ok(key, klen) || vlen > (64u << 20))
        return -EINVAL;
    Starling__Cmd__AdminPut m = STARLING__CMD__ADMIN_PUT__INIT;
    m.table = table;
    m.key = bin(key, klen);
    m.value = bin(val, vlen);
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_ADMIN_PUT;
    c.admin_put = &m;
    return append(b, &c);
}

int cmd_admin_delete(struct cmd_batch *b, unsigned table, const char *key, size_t klen)
{
    if (!table || table > 255 || !key_ok(key, klen))
        return -EINVAL;
    Starling__Cmd__AdminDelete m = STARLING__CMD__ADMIN_DELETE__INIT;
    m.table = table;
    m.key = bin(key, klen);
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_ADMIN_DELETE;
    c.admin_delete = &m;
    return append(b, &c);
}

int cmd_session_record(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                       uint64_t epoch, uint32_t expiry, unsigned version, const char *username,
                       const struct cmd_session_sub *subs, size_t n_subs, uint16_t next_pid,
                       uint64_t routed_from, uint64_t local_from)
{
    return cmd_session_record_seen(b, client_id, len, node, epoch, expiry, version, username, subs,
                                   n_subs, next_pid, routed_from, local_from, NULL, 0, false,
                                   false);
}

int cmd_session_record_seen(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                            uint64_t epoch, uint32_t expiry, unsigned version, const char *username,
                            const struct cmd_session_sub *subs, size_t n_subs, uint16_t next_pid,
                            uint64_t routed_from, uint64_t local_from,
                            const struct cmd_pub_seen *seen, size_t n_seen, bool seen_known,
                            bool began_clean)
{
    if (!key_ok(client_id, len) || !node || !epoch || (n_subs && !subs) ||
        (seen_known && n_seen && !seen))
        return -EINVAL;
    for (size_t i = 0; i < n_subs; i++)
        if (!key_ok(subs[i].filter, subs[i].len))
            return -EINVAL;
    Starling__Cmd__SessionSub *sv = calloc(n_subs + 1, sizeof(*sv));
    Starling__Cmd__SessionSub **sp = calloc(n_subs + 1, sizeof(*sp));
    size_t n_ps = seen_known ? n_seen : 0;
    Starling__Cmd__PubSeen *pv = calloc(n_ps + 1, sizeof(*pv));
    Starling__Cmd__PubSeen **pp = calloc(n_ps + 1, sizeof(*pp));
    if (!sv || !sp || !pv || !pp) {
        free(sv);
        free(sp);
        free(pv);
        free(pp);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n_ps; i++) {
        starling__cmd__pub_seen__init(&pv[i]);
        pv[i].origin = seen[i].origin;
        pv[i].pub_id = seen[i].pub_id;
        pp[i] = &pv[i];
    }
    for (size_t i = 0; i < n_subs; i++) {
        starling__cmd__session_sub__init(&sv[i]);
        sv[i].filter = bin(subs[i].filter, subs[i].len);
        sv[i].options = subs[i].options;
        if (subs[i].sub_id) {
            sv[i].has_sub_id = 1;
            sv[i].sub_id = subs[i].sub_id;
        }
        sp[i] = &sv[i];
    }
    Starling__Cmd__SessionRecord m = STARLING__CMD__SESSION_RECORD__INIT;
    m.client_id = bin(client_id, len);
    m.node = node;
    m.epoch = epoch;
    m.expiry_interval = expiry;
    m.has_version = 1;
    m.version = version;
    m.username = (char *)username;
    m.n_subs = n_subs;
    m.subs = sp;
    m.has_next_packet_id = next_pid != 0;
    m.next_packet_id = next_pid;
    m.has_began_clean = m.began_clean = began_clean;
    /* the owner's own entry, for its routed_from and local_from (the state
     * machine writes the list) */
    Starling__Cmd__RecordOwner own = STARLING__CMD__RECORD_OWNER__INIT;
    Starling__Cmd__RecordOwner *ownp = &own;
    if (routed_from || local_from || seen_known) {
        own.node = node;
        own.epoch = epoch;
        own.has_routed_from = routed_from != 0;
        own.routed_from = routed_from;
        own.has_local_from = local_from != 0;
        own.local_from = local_from;
        own.has_pubs_seen_known = seen_known;
        own.pubs_seen_known = seen_known;
        own.n_pubs_seen = n_ps;
        own.pubs_seen = pp;
        m.n_owners = 1;
        m.owners = &ownp;
    }
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_SESSION_RECORD;
    c.session_record = &m;
    int r = append(b, &c);
    free(sv);
    free(sp);
    free(pv);
    free(pp);
    return r;
}

static int pid_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

uint16_t cmd_record_resume_pid(const Starling__Cmd__SessionRecord *rec)
{
    /* positions 0..65534 (id - 1), sorted: the gap after each runs to the
     * next one up, the last's round to the first */
    enum { N = 65535 };
    uint32_t at[16];
    size_t n = 0;
    if (rec->has_next_packet_id && rec->next_packet_id >= 1 && rec->next_packet_id <= N)
        at[n++] = rec->next_packet_id - 1;
    for (size_t i = 0; i < rec->n_owners && n < sizeof at / sizeof at[0]; i++) {
        const Starling__Cmd__RecordOwner *o = rec->owners[i];
        if (o->has_next_packet_id && o->next_packet_id >= 1 && o->next_packet_id <= N)
            at[n++] = o->next_packet_id - 1;
    }
    if (n == 0)
        return 0;
    qsort(at, n, sizeof at[0], pid_cmp);
    size_t k = 1; /* each id once (the record's own is its owner's too) */
    for (size_t i = 1; i < n; i++)
        if (at[i] != at[k - 1])
            at[k++] = at[i];
    uint32_t from = at[0], gap = 0;
    for (size_t i = 0; i < k; i++) {
        uint32_t next = at[(i + 1) % k];
        uint32_t g = next > at[i] ? next - at[i] : next + N - at[i]; /* one alone: N */
        if (g > gap) {
            gap = g;
            from = at[i];
        }
    }
    return (uint16_t)((from + gap / 2) % N + 1);
}

int cmd_node_down(struct cmd_batch *b, uint64_t node)
{
    if (!node)
        return -EINVAL;
    Starling__Cmd__NodeDown m = STARLING__CMD__NODE_DOWN__INIT;
    m.node = node;
    m.has_keepers = 1;
    m.keepers = 1;
    m.has_owners_marked = 1;
    m.owners_marked = 1;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_NODE_DOWN;
    c.node_down = &m;
    return append(b, &c);
}

/* ---- describing route changes for the log ---- */

#define DESCRIBE_NODES 4

struct describe_node {
    uint64_t node;
    size_t adds, removes, noops;
    const ProtobufCBinaryData *add_f[CMD_DESCRIBE_FILTERS], *rem_f[CMD_DESCRIBE_FILTERS];
};

struct out {
    char *p;
    size_t len, at;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    if (o->at + 1 >= o->len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->at, o->len - o->at, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->at = o->at + (size_t)n < o->len ? o->at + (size_t)n : o->len - 1;
}

/* " [f1, f2, ...]": the first filters (each cut at 64 bytes), "..." when
 * there are more than those. */
static void out_filters(struct out *o, const ProtobufCBinaryData *const *f, size_t n)
{
    size_t shown = n < CMD_DESCRIBE_FILTERS ? n : CMD_DESCRIBE_FILTERS;
    outf(o, " [");
    for (size_t i = 0; i < shown; i++)
        outf(o, "%s%.*s", i ? ", " : "", (int)(f[i]->len < 64 ? f[i]->len : 64),
             (const char *)f[i]->data);
    outf(o, "%s]", n > shown ? ", ..." : "");
}

int cmd_routes_describe(const struct Starling__Cmd__CommandBatch *b, const unsigned char *changed,
                        char *out, size_t outlen)
{
    struct describe_node nodes[DESCRIBE_NODES];
    size_t n_nodes = 0, other_nodes = 0, n_marks = 0;
    int mask = 0;
    struct out o = {out, outlen, 0};
    if (outlen)
        out[0] = 0;
    for (size_t i = 0; i < b->n_commands; i++) {
        const Starling__Cmd__Command *c = b->commands[i];
        bool add = c->cmd_case == STARLING__CMD__COMMAND__CMD_ROUTE_ADD;
        if (!add && c->cmd_case != STARLING__CMD__COMMAND__CMD_ROUTE_REMOVE)
            continue;
        uint64_t node = add ? c->route_add->node : c->route_remove->node;
        const ProtobufCBinaryData *f = add ? &c->route_add->filter : &c->route_remove->filter;
        size_t k = 0;
        while (k < n_nodes && nodes[k].node != node)
            k++;
        if (k == n_nodes) {
            if (n_nodes == DESCRIBE_NODES) {
                other_nodes++;
                mask |= add ? CMD_ROUTES_ADD : CMD_ROUTES_GONE;
                continue;
            }
            memset(&nodes[k], 0, sizeof(nodes[k]));
            nodes[k].node = node;
            n_nodes++;
        }
        struct describe_node *d = &nodes[k];
        if (changed && !changed[i]) {
            d->noops++;
            continue;
        }
        if (add) {
            if (d->adds < CMD_DESCRIBE_FILTERS)
                d->add_f[d->adds] = f;
            d->adds++;
            mask |= CMD_ROUTES_ADD;
        } else {
            if (d->removes < CMD_DESCRIBE_FILTERS)
                d->rem_f[d->removes] = f;
            d->removes++;
            mask |= CMD_ROUTES_GONE;
        }
    }
    for (size_t i = 0; i < b->n_commands; i++) {
        const Starling__Cmd__Command *c = b->commands[i];
        const char *what = c->cmd_case == STARLING__CMD__COMMAND__CMD_NODE_PURGE  ? "NodePurge"
                           : c->cmd_case == STARLING__CMD__COMMAND__CMD_NODE_DOWN ? "NodeDown"
                                                                                  : NULL;
        if (!what)
            continue;
        uint64_t node = c->cmd_case == STARLING__CMD__COMMAND__CMD_NODE_PURGE ? c->node_purge->node
                                                                              : c->node_down->node;
        outf(&o, "%s%s(%016llx)%s", o.at ? "; " : "", what, (unsigned long long)node,
             changed && !changed[i] ? " no-op" : "");
        n_marks++;
        if (!changed || changed[i])
            mask |= CMD_ROUTES_GONE;
    }
    for (size_t k = 0; k < n_nodes; k++) {
        const struct describe_node *d = &nodes[k];
        outf(&o, "%s%016llx", o.at ? "; " : "", (unsigned long long)d->node);
        if (d->adds) {
            outf(&o, " +%zu", d->adds);
            out_filters(&o, d->add_f, d->adds);
        }
        if (d->removes) {
            outf(&o, " -%zu", d->removes);
            out_filters(&o, d->rem_f, d->removes);
        }
        if (d->noops)
            outf(&o, " (%zu no-op)", d->noops);
    }
    if (other_nodes)
        outf(&o, "; %zu more of other nodes", other_nodes);
    if (!mask && (n_nodes || n_marks)) /* only no-ops */
        mask = CMD_ROUTES_ADD;
    return mask;
}

int cmd_entry_routes_describe(const void *entry, size_t len, char *out, size_t outlen)
{
    const void *pb;
    size_t pb_len;
    if (outlen)
        out[0] = 0;
    if (cmd_entry_unwrap(entry, len, &pb, &pb_len) < 0)
        return -EINVAL;
    Starling__Cmd__CommandBatch *b = starling__cmd__command_batch__unpack(NULL, pb_len, pb);
    if (!b)
        return -EINVAL;
    int mask = cmd_routes_describe(b, NULL, out, outlen);
    starling__cmd__command_batch__free_unpacked(b, NULL);
    return mask;
}
