/*
 * store_rec.c - keys and record encodings of the store (see store_rec.h).
 *
 * Value layouts (after the version byte and, for a hashed client id, the
 * full id; integers little-endian):
 *
 *   session:  u8 mqtt version, u32 expiry_interval, u64 disconnected_at_ms,
 *             u32 n_subs, then n_subs x (u16 len, u8 options, u32 sub_id,
 *             len bytes of filter); record version 2 adds u8 has_user,
 *             then when 1: u16 user_len, user bytes; record version 3 adds
 *             u32 n_seen, then n_seen x (u64 node, u64 lo, u64 hi): the
 *             message identities the session got; record version 4
 *             adds u64 epoch, its cluster claim's (0: none known);
 *             record version 5 (REC_SESSION_VERSION) adds u64
 *             wait_until_ms, then when not 0: u64 wait_node, u64
 *             wait_epoch, u8 wait_told, u32 n_wait_ids, n_wait_ids x u16
 *   msg:      u8 state, u16 pid, u8 qos, u8 flags (bit 0 retain), u16 n_ids,
 *             n_ids x u32, then a message; record version 2 adds u64
 *             origin node, u64 publish number; record version 3 adds
 *             u64 route_index; record version 4 (REC_MSG_VERSION) adds
 *             u8 n_also_to (MSG_ALSO_TO_MANY: more than listed, none
 *             follows), then n_also_to x u64 node
 *   qos2:     nothing more
 *   retained: a message
 *   message:  u8 qos, u8 flags (bit 0 retain), u64 expiry_at, u16 topic_len,
 *             u32 payload_len, u32 props_len, topic, payload, props
 */
#include "store_rec.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

void rbuf_free(struct rbuf *b)
{
    buf_free(&b->b);
}

/* Room for n more bytes, written by the caller: a pointer to them, or NULL
 * (and the buffer marked out of memory). One capacity check per field, no
 * memcpy call for a 1-8 byte integer: records are encoded on the store's
 * hot path (a QoS 1/2 message to a persistent session). */
static inline uint8_t *rbuf_room(struct rbuf *b, size_t n)
{
    if (b->oom)
        return NULL;
    if (b->b.cap - b->b.len < n && buf_reserve(&b->b, n) < 0) {
        b->oom = true;
        return NULL;
    }
    uint8_t *p = b->b.data + b->b.len;
    b->b.len += n;
    return p;
}

void rbuf_put(struct rbuf *b, const void *d, size_t n)
{
    if (n == 0)
        return;
    uint8_t *p = rbuf_room(b, n);
    if (p)
        memcpy(p, d, n);
}

void rbuf_u8(struct rbuf *b, uint8_t v)
{
    uint8_t *p = rbuf_room(b, 1);
    if (p)
        p[0] = v;
}

static inline void rbuf_le(struct rbuf *b, uint64_t v, int n)
{
    uint8_t *p = rbuf_room(b, (size_t)n);
    if (p)
        for (int i = 0; i < n; i++)
            p[i] = (uint8_t)(v >> (8 * i));
}

static inline void rbuf_be(struct rbuf *b, uint64_t v, int n)
{
    uint8_t *p = rbuf_room(b, (size_t)n);
    if (p)
        for (int i = 0; i < n; i++)
            p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

void rbuf_le16(struct rbuf *b, uint16_t v)
{
    rbuf_le(b, v, 2);
}

void rbuf_le32(struct rbuf *b, uint32_t v)
{
    rbuf_le(b, v, 4);
}

void rbuf_le64(struct rbuf *b, uint64_t v)
{
    rbuf_le(b, v, 8);
}

void rbuf_be16(struct rbuf *b, uint16_t v)
{
    rbuf_be(b, v, 2);
}

void rbuf_be64(struct rbuf *b, uint64_t v)
{
    rbuf_be(b, v, 8);
}

/* Reserve a whole record at once (one realloc at most), so the fields
 * below only check the capacity. */
static void rbuf_expect(struct rbuf *b, size_t n)
{
    if (!b->oom && buf_reserve(&b->b, n) < 0)
        b->oom = true;
}

void rec_put_idkey(struct rbuf *b, const void *id, uint16_t len)
{
    rbuf_be16(b, len);
    if (rec_hashed(len)) {
        uint8_t md[SHA256_DIGEST_LENGTH];
        SHA256(id, len, md);
        rbuf_put(b, md, sizeof(md));
    } else {
        rbuf_put(b, id, len);
    }
}

void rec_put_header(struct rbuf *b, uint8_t version, const void *id, uint16_t len)
{
    rbuf_u8(b, version);
    if (rec_hashed(len))
        rbuf_put(b, id, len);
}

void rec_put_session(struct rbuf *b, const struct store_session *rec)
{
    rbuf_u8(b, rec->version);
    rbuf_le32(b, rec->expiry_interval);
    rbuf_le64(b, rec->disconnected_at_ms);
    rbuf_le32(b, rec->n_subs);
    for (uint32_t i = 0; i < rec->n_subs; i++) {
        const struct store_sub *s = &rec->subs[i];
        rbuf_le16(b, s->len);
        rbuf_u8(b, s->options);
        rbuf_le32(b, s->sub_id);
        rbuf_put(b, s->filter, s->len);
    }
    /* REC_SESSION_VERSION 2 */
    rbuf_u8(b, rec->user ? 1 : 0);
    if (rec->user) {
        rbuf_le16(b, rec->user_len);
        rbuf_put(b, rec->user, rec->user_len);
    }
    /* REC_SESSION_VERSION 3 */
    rbuf_le32(b, rec->n_seen);
    for (uint32_t i = 0; i < rec->n_seen; i++) {
        rbuf_le64(b, rec->seen[i].node);
        rbuf_le64(b, rec->seen[i].lo);
        rbuf_le64(b, rec->seen[i].hi);
    }
    /* REC_SESSION_VERSION 4 */
    rbuf_le64(b, rec->epoch);
    /* REC_SESSION_VERSION 5 */
    rbuf_le64(b, rec->wait_until_ms);
    if (rec->wait_until_ms) {
        rbuf_le64(b, rec->wait_node);
        rbuf_le64(b, rec->wait_epoch);
        rbuf_u8(b, rec->wait_told ? 1 : 0);
        rbuf_le32(b, rec->n_wait_ids);
        for (uint32_t i = 0; i < rec->n_wait_ids; i++)
            rbuf_le16(b, rec->wait_ids[i]);
    }
}

void rec_put_message(struct rbuf *b, const struct msg *m)
{
    size_t data = (size_t)m->topic_len + m->payload_len + m->props_len;
    rbuf_expect(b, 20 + data);
    rbuf_u8(b, m->qos);
    rbuf_u8(b, m->retain ? 1 : 0);
    rbuf_le64(b, m->expiry_at);
    rbuf_le16(b, m->topic_len);
    rbuf_le32(b, m->payload_len);
    rbuf_le32(b, m->props_len);
    rbuf_put(b, m->data, data);
}

void rec_put_msg(struct rbuf *b, const struct store_msg *rec)
{
    const struct msg *m = rec->m;
    uint8_t n_also = m->n_also_to <= MSG_ALSO_TO_MAX ? m->n_also_to : 0;
    rbuf_expect(b, 7 + 4 * (size_t)rec->n_ids + 20 + m->topic_len + m->payload_len + m->props_len +
                       25 + 8 * (size_t)n_also);
    rbuf_u8(b, rec->state);
    rbuf_le16(b, rec->pid);
    rbuf_u8(b, rec->qos);
    rbuf_u8(b, rec->retain ? 1 : 0);
    rbuf_le16(b, rec->n_ids);
    for (uint16_t i = 0; i < rec->n_ids; i++)
        rbuf_le32(b, rec->ids[i]);
    rec_put_message(b, rec->m);
    /* REC_MSG_VERSION 2 */
    rbuf_le64(b, m->id_node);
    rbuf_le64(b, m->id_seq);
    /* REC_MSG_VERSION 3 */
    rbuf_le64(b, m->route_index);
    /* REC_MSG_VERSION 4 */
    rbuf_u8(b, m->n_also_to == MSG_ALSO_TO_MANY ? MSG_ALSO_TO_MANY : n_also);
    for (uint8_t i = 0; i < n_also; i++)
        rbuf_le64(b, m->also_to[i]);
}

const uint8_t *rdec_bytes(struct rdec *d, size_t n)
{
    if (d->bad || d->n < n) {
        d->bad = true;
        return NULL;
    }
    const uint8_t *p = d->p;
    d->p += n;
    d->n -= n;
    return p;
}

static uint64_t rdec_int(struct rdec *d, int n, bool be)
{
    const uint8_t *p = rdec_bytes(d, (size_t)n);
    uint64_t v = 0;
    if (!p)
        return 0;
    for (int i = 0; i < n; i++) {
        int shift = be ? 8 * (n - 1 - i) : 8 * i;
        v |= (uint64_t)p[i] << shift;
    }
    return v;
}

uint8_t rdec_u8(struct rdec *d)
{
    return (uint8_t)rdec_int(d, 1, false);
}
uint16_t rdec_le16(struct rdec *d)
{
    return (uint16_t)rdec_int(d, 2, false);
}
uint32_t rdec_le32(struct rdec *d)
{
    return (uint32_t)rdec_int(d, 4, false);
}
uint64_t rdec_le64(struct rdec *d)
{
    return rdec_int(d, 8, false);
}
uint16_t rdec_be16(struct rdec *d)
{
    return (uint16_t)rdec_int(d, 2, true);
}
uint64_t rdec_be64(struct rdec *d)
{
    return rdec_int(d, 8, true);
}

int rec_get_id(struct rdec *key, struct rdec *val, uint8_t max_version, uint8_t *version,
               const char **id, uint16_t *len)
{
    uint16_t n = rdec_be16(key);
    const uint8_t *kid = rdec_bytes(key, rec_hashed(n) ? REC_HASH_LEN : n);
    *version = rdec_u8(val);
    if (key->bad || val->bad)
        return -EIO;
    if (*version < 1 || *version > max_version)
        return -EPROTO;
    if (rec_hashed(n)) {
        const uint8_t *full = rdec_bytes(val, n);
        uint8_t md[SHA256_DIGEST_LENGTH];
        if (!full)
            return -EIO;
        SHA256(full, n, md);
        if (memcmp(md, kid, REC_HASH_LEN) != 0)
            return -EIO;
        kid = full;
    }
    *id = (const char *)kid;
    *len = n;
    return 0;
}

int rec_get_session(struct rdec *val, uint8_t version, struct store_session *rec,
                    struct store_sub **subs, struct store_seen **seen, uint16_t **wait_ids)
{
    *subs = NULL;
    *seen = NULL;
    *wait_ids = NULL;
    rec->wait_until_ms = 0;
    rec->wait_node = 0;
    rec->wait_epoch = 0;
    rec->wait_told = false;
    rec->n_wait_ids = 0;
    rec->wait_ids = NULL;
    rec->user = NULL;
    rec->user_len = 0;
    rec->n_seen = 0;
    rec->seen = NULL;
    rec->epoch = 0;
    rec->version = rdec_u8(val);
    rec->expiry_interval = rdec_le32(val);
    rec->disconnected_at_ms = rdec_le64(val);
    rec->n_subs = rdec_le32(val);
    rec->subs = NULL;
    /* Each subscription takes at least 7 bytes: reject absurd counts before
     * allocating. */
    if (val->bad || rec->n_subs > val->n / 7)
        return -EIO;
    if (rec->n_subs) {
        struct store_sub *s = calloc(rec->n_subs, sizeof(*s));
        if (!s)
            return -ENOMEM;
        for (uint32_t i = 0; i < rec->n_subs; i++) {
            s[i].len = rdec_le16(val);
            s[i].options = rdec_u8(val);
            s[i].sub_id = rdec_le32(val);
            s[i].filter = (const char *)rdec_bytes(val, s[i].len);
        }
        if (val->bad) {
            free(s);
            return -EIO;
        }
        *subs = s;
        rec->subs = s;
    }
    if (version >= 2) {
        uint8_t has_user = rdec_u8(val);
        if (has_user == 1) {
            rec->user_len = rdec_le16(val);
            rec->user = (const char *)rdec_bytes(val, rec->user_len);
        } else if (has_user != 0) {
            val->bad = true;
        }
    }
    if (version >= 3) {
        rec->n_seen = rdec_le32(val);
        /* 24 bytes each: reject absurd counts before allocating */
        if (!val->bad && rec->n_seen > val->n / 24)
            val->bad = true;
        if (!val->bad && rec->n_seen) {
            struct store_seen *x = calloc(rec->n_seen, sizeof(*x));
            if (!x) {
                free(*subs);
                *subs = NULL;
                rec->subs = NULL;
                return -ENOMEM;
            }
            for (uint32_t i = 0; i < rec->n_seen; i++) {
                x[i].node = rdec_le64(val);
                x[i].lo = rdec_le64(val);
                x[i].hi = rdec_le64(val);
                if (x[i].lo > x[i].hi)
                    val->bad = true;
            }
            *seen = x;
            rec->seen = x;
        }
    }
    if (version >= 4)
        rec->epoch = rdec_le64(val);
    int err = -EIO;
    if (version >= 5 && (rec->wait_until_ms = rdec_le64(val)) != 0) {
        rec->wait_node = rdec_le64(val);
        rec->wait_epoch = rdec_le64(val);
        uint8_t told = rdec_u8(val);
        rec->wait_told = told == 1;
        rec->n_wait_ids = rdec_le32(val);
        /* 2 bytes each, and 65,535 ids at most */
        if (told > 1 || rec->n_wait_ids > 65535 || rec->n_wait_ids > val->n / 2)
            val->bad = true;
        if (!val->bad && rec->n_wait_ids) {
            uint16_t *x = malloc(rec->n_wait_ids * sizeof(*x));
            if (!x) {
                val->bad = true;
                err = -ENOMEM;
            }
            for (uint32_t i = 0; x && i < rec->n_wait_ids; i++)
                x[i] = rdec_le16(val);
            *wait_ids = x;
            rec->wait_ids = x;
        }
    }
    if (val->bad || val->n != 0) {
        free(*subs);
        *subs = NULL;
        rec->subs = NULL;
        free(*seen);
        *seen = NULL;
        rec->seen = NULL;
        rec->n_seen = 0;
        free(*wait_ids);
        *wait_ids = NULL;
        rec->wait_ids = NULL;
        rec->n_wait_ids = 0;
        return err;
    }
    return 0;
}

int rec_get_message(struct rdec *val, struct msg **out)
{
    *out = NULL;
    uint8_t qos = rdec_u8(val);
    uint8_t flags = rdec_u8(val);
    uint64_t expiry_at = rdec_le64(val);
    uint16_t tlen = rdec_le16(val);
    uint32_t plen = rdec_le32(val);
    uint32_t prlen = rdec_le32(val);
    const uint8_t *topic = rdec_bytes(val, tlen);
    const uint8_t *payload = rdec_bytes(val, plen);
    const uint8_t *props = rdec_bytes(val, prlen);
    if (val->bad || qos > 2)
        return -EIO;
    *out = msg_new(topic, tlen, payload, plen, props, prlen, qos, flags & 1, expiry_at, NULL);
    return *out ? 0 : -ENOMEM;
}

int rec_get_msg(struct rdec *val, uint8_t version, struct store_msg *rec, uint32_t **ids)
{
    *ids = NULL;
    rec->m = NULL;
    rec->state = rdec_u8(val);
    rec->pid = rdec_le16(val);
    rec->qos = rdec_u8(val);
    rec->retain = rdec_u8(val) & 1;
    rec->n_ids = rdec_le16(val);
    rec->ids = NULL;
    if (val->bad || rec->n_ids > val->n / 4)
        return -EIO;
    if (rec->n_ids) {
        uint32_t *a = malloc(sizeof(*a) * rec->n_ids);
        if (!a)
            return -ENOMEM;
        for (uint16_t i = 0; i < rec->n_ids; i++)
            a[i] = rdec_le32(val);
        *ids = a;
        rec->ids = a;
    }
    struct msg *m;
    int rc = rec_get_message(val, &m);
    if (rc == 0 && version >= 2) {
        m->id_node = rdec_le64(val);
        m->id_seq = rdec_le64(val);
    }
    if (rc == 0 && version >= 3)
        m->route_index = rdec_le64(val);
    if (rc == 0 && version >= 4) {
        uint8_t n = rdec_u8(val);
        if (n == MSG_ALSO_TO_MANY) {
            m->n_also_to = n;
        } else if (n <= MSG_ALSO_TO_MAX) {
            for (uint8_t i = 0; i < n; i++)
                m->also_to[i] = rdec_le64(val);
            m->n_also_to = n;
        } else {
            val->bad = true;
        }
    }
    if (rc == 0 && (val->bad || val->n != 0)) {
        msg_unref(m);
        rc = -EIO;
    }
    if (rc) {
        free(*ids);
        *ids = NULL;
        return rc;
    }
    rec->m = m;
    return 0;
}
