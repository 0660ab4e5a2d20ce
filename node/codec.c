/*
 * codec.c - MQTT 3.1, 3.1.1 and 5.0 packet encoding and decoding (see codec.h).
 *
 * Decoding reads through a bounds-checked cursor (struct codec_rd) and never
 * allocates. Encoding runs each packet writer twice through struct codec_wr:
 * once without a buffer to compute the remaining length, once to write, so
 * that the sizes announced always match the bytes written.
 */
#include "codec.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#define CODEC_MAL (-MQTT_RC_MALFORMED)
#define CODEC_PERR (-MQTT_RC_PROTOCOL_ERROR)

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */
/* ------------------------------------------------------------------------ */

/* Length of the sequence introduced by lead byte c, 0 when c cannot start
 * one (continuation bytes, overlong leads C0/C1, leads beyond U+10FFFF). */
static size_t codec_utf8_seq_len(uint8_t c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* Bounds of the second byte after lead c (Unicode Table 3-7, well-formed
 * byte sequences): excludes overlongs, surrogates and > U+10FFFF. */
static void codec_utf8_second_range(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c == 0xE0)
        *lo = 0xA0;
    else if (c == 0xED)
        *hi = 0x9F; /* U+D800..U+DFFF are surrogates [MQTT-3.1.1 1.5.3-1, MQTT-5.0 1.5.4-1] */
    else if (c == 0xF0)
        *lo = 0x90;
    else if (c == 0xF4)
        *hi = 0x8F;
}

bool mqtt_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c == 0)
            return false; /* [MQTT-3.1.1 1.5.3-2, MQTT-5.0 1.5.4-2] no U+0000 */
        size_t n = codec_utf8_seq_len(c);
        if (n == 0 || n > len - i)
            return false; /* [MQTT-3.1.1 1.5.3-1, MQTT-5.0 1.5.4-1] ill-formed or truncated */
        if (n > 1) {
            uint8_t lo, hi;
            codec_utf8_second_range(c, &lo, &hi);
            if (s[i + 1] < lo || s[i + 1] > hi)
                return false;
            for (size_t k = 2; k < n; k++)
                if ((s[i + k] & 0xC0) != 0x80)
                    return false;
        }
        i += n;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Property table (MQTT 5.0 section 2.2.2.2)                                 */
/* ------------------------------------------------------------------------ */

enum codec_ptype {
    CODEC_PT_NONE = 0,
    CODEC_PT_BYTE,
    CODEC_PT_U16,
    CODEC_PT_U32,
    CODEC_PT_VARINT,
    CODEC_PT_STR,
    CODEC_PT_BIN,
    CODEC_PT_PAIR,
};

/* Contexts in which a property may appear: one bit per packet type, plus
 * bit 0 for the will properties of CONNECT. */
#define CODEC_CTX_WILL (1u << 0)
#define CODEC_CTX(t) (1u << (t))

struct codec_prop_def {
    uint8_t type;
    uint8_t nonzero; /* 0 is a protocol error */
    uint16_t allowed;
    uint16_t offset; /* of the field in struct mqtt_props */
};

#define CODEC_ACKS                                                                                 \
    (CODEC_CTX(MQTT_PUBACK) | CODEC_CTX(MQTT_PUBREC) | CODEC_CTX(MQTT_PUBREL) |                    \
     CODEC_CTX(MQTT_PUBCOMP))
#define CODEC_MSG (CODEC_CTX(MQTT_PUBLISH) | CODEC_CTX_WILL)
#define CODEC_F(field) offsetof(struct mqtt_props, field)
/* User properties: every packet with properties, and the will. */
#define CODEC_USER_CTX                                                                             \
    (CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK) | CODEC_MSG | CODEC_ACKS |                  \
     CODEC_CTX(MQTT_SUBSCRIBE) | CODEC_CTX(MQTT_SUBACK) | CODEC_CTX(MQTT_UNSUBSCRIBE) |            \
     CODEC_CTX(MQTT_UNSUBACK) | CODEC_CTX(MQTT_DISCONNECT) | CODEC_CTX(MQTT_AUTH))

static const struct codec_prop_def codec_props[MQTT_PROP_SHARED_SUB_AVAILABLE + 1] = {
    [MQTT_PROP_PAYLOAD_FORMAT] = {CODEC_PT_BYTE, 0, CODEC_MSG, CODEC_F(payload_format)},
    [MQTT_PROP_MESSAGE_EXPIRY] = {CODEC_PT_U32, 0, CODEC_MSG, CODEC_F(message_expiry)},
    [MQTT_PROP_CONTENT_TYPE] = {CODEC_PT_STR, 0, CODEC_MSG, CODEC_F(content_type)},
    [MQTT_PROP_RESPONSE_TOPIC] = {CODEC_PT_STR, 0, CODEC_MSG, CODEC_F(response_topic)},
    [MQTT_PROP_CORRELATION_DATA] = {CODEC_PT_BIN, 0, CODEC_MSG, CODEC_F(correlation_data)},
    [MQTT_PROP_SUBSCRIPTION_ID] = {CODEC_PT_VARINT, 1,
                                   CODEC_CTX(MQTT_PUBLISH) | CODEC_CTX(MQTT_SUBSCRIBE),
                                   CODEC_F(sub_id)},
    [MQTT_PROP_SESSION_EXPIRY] = {CODEC_PT_U32, 0,
                                  CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK) |
                                      CODEC_CTX(MQTT_DISCONNECT),
                                  CODEC_F(session_expiry)},
    [MQTT_PROP_ASSIGNED_CLIENT_ID] = {CODEC_PT_STR, 0, CODEC_CTX(MQTT_CONNACK),
                                      CODEC_F(assigned_client_id)},
    [MQTT_PROP_SERVER_KEEP_ALIVE] = {CODEC_PT_U16, 0, CODEC_CTX(MQTT_CONNACK),
                                     CODEC_F(server_keep_alive)},
    [MQTT_PROP_AUTH_METHOD] = {CODEC_PT_STR, 0,
                               CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK) |
                                   CODEC_CTX(MQTT_AUTH),
                               CODEC_F(auth_method)},
    [MQTT_PROP_AUTH_DATA] = {CODEC_PT_BIN, 0,
                             CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK) |
                                 CODEC_CTX(MQTT_AUTH),
                             CODEC_F(auth_data)},
    [MQTT_PROP_REQUEST_PROBLEM_INFO] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNECT),
                                        CODEC_F(request_problem_info)},
    [MQTT_PROP_WILL_DELAY] = {CODEC_PT_U32, 0, CODEC_CTX_WILL, CODEC_F(will_delay)},
    [MQTT_PROP_REQUEST_RESPONSE_INFO] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNECT),
                                         CODEC_F(request_response_info)},
    [MQTT_PROP_RESPONSE_INFO] = {CODEC_PT_STR, 0, CODEC_CTX(MQTT_CONNACK), CODEC_F(response_info)},
    [MQTT_PROP_SERVER_REFERENCE] = {CODEC_PT_STR, 0,
                                    CODEC_CTX(MQTT_CONNACK) | CODEC_CTX(MQTT_DISCONNECT),
                                    CODEC_F(server_reference)},
    [MQTT_PROP_REASON_STRING] = {CODEC_PT_STR, 0,
                                 CODEC_CTX(MQTT_CONNACK) | CODEC_ACKS | CODEC_CTX(MQTT_SUBACK) |
                                     CODEC_CTX(MQTT_UNSUBACK) | CODEC_CTX(MQTT_DISCONNECT) |
                                     CODEC_CTX(MQTT_AUTH),
                                 CODEC_F(reason_string)},
    [MQTT_PROP_RECEIVE_MAX] = {CODEC_PT_U16, 1, CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK),
                               CODEC_F(receive_max)},
    [MQTT_PROP_TOPIC_ALIAS_MAX] = {CODEC_PT_U16, 0,
                                   CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK),
                                   CODEC_F(topic_alias_max)},
    /* Topic alias 0 is a protocol error the broker checks [MQTT-5.0 3.3.2-8]. */
    [MQTT_PROP_TOPIC_ALIAS] = {CODEC_PT_U16, 0, CODEC_CTX(MQTT_PUBLISH), CODEC_F(topic_alias)},
    [MQTT_PROP_MAX_QOS] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNACK), CODEC_F(max_qos)},
    [MQTT_PROP_RETAIN_AVAILABLE] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNACK),
                                    CODEC_F(retain_available)},
    [MQTT_PROP_USER_PROPERTY] = {CODEC_PT_PAIR, 0, CODEC_USER_CTX, CODEC_F(user_props)},
    [MQTT_PROP_MAX_PACKET_SIZE] = {CODEC_PT_U32, 1,
                                   CODEC_CTX(MQTT_CONNECT) | CODEC_CTX(MQTT_CONNACK),
                                   CODEC_F(max_packet_size)},
    [MQTT_PROP_WILDCARD_SUB_AVAILABLE] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNACK),
                                          CODEC_F(wildcard_sub_available)},
    [MQTT_PROP_SUB_ID_AVAILABLE] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNACK),
                                    CODEC_F(sub_id_available)},
    [MQTT_PROP_SHARED_SUB_AVAILABLE] = {CODEC_PT_BYTE, 0, CODEC_CTX(MQTT_CONNACK),
                                        CODEC_F(shared_sub_available)},
};

#define CODEC_N_PROPS (sizeof(codec_props) / sizeof(codec_props[0]))

static const struct codec_prop_def *codec_prop_def(uint32_t id)
{
    if (id >= CODEC_N_PROPS || codec_props[id].type == CODEC_PT_NONE)
        return NULL;
    return &codec_props[id];
}

/* ------------------------------------------------------------------------ */
/* Decoding cursor                                                           */
/* ------------------------------------------------------------------------ */

struct codec_rd {
    const uint8_t *p;
    size_t end; /* one past the last readable byte */
    size_t pos;
};

static size_t codec_left(const struct codec_rd *r)
{
    return r->end - r->pos;
}

/*
 * Parse a variable byte integer from p[0..len). Returns 0 and sets *v and *n
 * (bytes used), 1 when more bytes are needed, or -MQTT_RC_MALFORMED.
 */
static int codec_varint_parse(const uint8_t *p, size_t len, uint32_t *v, size_t *n)
{
    uint32_t val = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= len)
            return 1;
        uint8_t b = p[i];
        val |= (uint32_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            /* [MQTT-5.0 1.5.5-1] the encoding must use the minimum number of bytes */
            if (i > 0 && b == 0)
                return CODEC_MAL;
            *v = val;
            *n = i + 1;
            return 0;
        }
    }
    return CODEC_MAL; /* a fifth byte would be needed */
}

static int codec_varint(struct codec_rd *r, uint32_t *v)
{
    size_t n;
    int rc = codec_varint_parse(r->p + r->pos, codec_left(r), v, &n);
    if (rc)
        return CODEC_MAL;
    r->pos += n;
    return 0;
}

static int codec_u8(struct codec_rd *r, uint8_t *v)
{
    if (codec_left(r) < 1)
        return CODEC_MAL;
    *v = r->p[r->pos++];
    return 0;
}

static int codec_u16(struct codec_rd *r, uint16_t *v)
{
    if (codec_left(r) < 2)
        return CODEC_MAL;
    *v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
    r->pos += 2;
    return 0;
}

static int codec_u32(struct codec_rd *r, uint32_t *v)
{
    if (codec_left(r) < 4)
        return CODEC_MAL;
    const uint8_t *b = r->p + r->pos;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    r->pos += 4;
    return 0;
}

/* Binary data: two-byte length then that many bytes. */
static int codec_bin(struct codec_rd *r, struct mqtt_bytes *out)
{
    uint16_t n;
    if (codec_u16(r, &n))
        return CODEC_MAL;
    if (codec_left(r) < n)
        return CODEC_MAL;
    out->data = n ? r->p + r->pos : NULL;
    out->len = n;
    r->pos += n;
    return 0;
}

/* UTF-8 encoded string [MQTT-3.1.1 1.5.3-1/2, MQTT-5.0 1.5.4-1/2]: ill-formed is malformed. */
static int codec_str(struct codec_rd *r, struct mqtt_bytes *out)
{
    if (codec_bin(r, out))
        return CODEC_MAL;
    if (!mqtt_utf8_valid(out->data, out->len))
        return CODEC_MAL;
    return 0;
}

/* The rest of the packet. */
static void codec_rest(struct codec_rd *r, struct mqtt_bytes *out)
{
    size_t n = codec_left(r);
    out->data = n ? r->p + r->pos : NULL;
    out->len = (uint32_t)n;
    r->pos = r->end;
}

/* ------------------------------------------------------------------------ */
/* Properties: decoding                                                      */
/* ------------------------------------------------------------------------ */

/* Skip one property without semantic checks; *id receives its identifier.
 * Used to walk property blocks that were already validated (or that the
 * caller built). Returns 0 or -MQTT_RC_MALFORMED. */
static int codec_prop_skip(struct codec_rd *r, uint32_t *id)
{
    struct mqtt_bytes b;
    uint32_t v;
    if (codec_varint(r, id))
        return CODEC_MAL;
    const struct codec_prop_def *d = codec_prop_def(*id);
    if (!d)
        return CODEC_MAL;
    switch (d->type) {
    case CODEC_PT_BYTE:
        return codec_left(r) >= 1 ? (r->pos += 1, 0) : CODEC_MAL;
    case CODEC_PT_U16:
        return codec_left(r) >= 2 ? (r->pos += 2, 0) : CODEC_MAL;
    case CODEC_PT_U32:
        return codec_left(r) >= 4 ? (r->pos += 4, 0) : CODEC_MAL;
    case CODEC_PT_VARINT:
        return codec_varint(r, &v);
    case CODEC_PT_STR:
    case CODEC_PT_BIN:
        return codec_bin(r, &b);
    case CODEC_PT_PAIR:
        if (codec_bin(r, &b))
            return CODEC_MAL;
        return codec_bin(r, &b);
    default:
        return CODEC_MAL;
    }
}

/* A user property: key and value strings. user_props spans from the first
 * user property to the end of the last (other properties interleaved in the
 * packet are skipped by the iterator and by the encoder). */
static int codec_prop_user(struct codec_rd *r, size_t start, struct mqtt_props *p)
{
    struct mqtt_bytes k, v;
    if (codec_str(r, &k) || codec_str(r, &v))
        return CODEC_MAL;
    if (p->n_user_props == 0)
        p->user_props.data = r->p + start;
    p->user_props.len = (uint32_t)(r->p + r->pos - p->user_props.data);
    p->n_user_props++;
    p->present |= MQTT_PF(MQTT_PROP_USER_PROPERTY);
    return 0;
}

/* A subscription identifier: 1..268435455 (MQTT 5.0 section 3.8.2.1.2); several only
 * in PUBLISH (server to client). */
static int codec_prop_sub_id(struct codec_rd *r, unsigned ctx, struct mqtt_props *p)
{
    uint32_t v;
    if (codec_varint(r, &v))
        return CODEC_MAL;
    if (v == 0)
        return CODEC_PERR; /* a value of 0 is a protocol error */
    if (p->n_sub_ids > 0 && !(ctx & CODEC_CTX(MQTT_PUBLISH)))
        return CODEC_PERR; /* SUBSCRIBE: more than once is a protocol error */
    if (p->n_sub_ids == 0)
        p->sub_id = v;
    p->n_sub_ids++;
    p->present |= MQTT_PF(MQTT_PROP_SUBSCRIPTION_ID);
    return 0;
}

/* Read a fixed-size or string/binary value into its field. */
static int codec_prop_value(struct codec_rd *r, const struct codec_prop_def *d,
                            struct mqtt_props *p)
{
    char *field = (char *)p + d->offset;
    uint8_t v8;
    uint16_t v16;
    uint32_t v32;
    switch (d->type) {
    case CODEC_PT_BYTE:
        if (codec_u8(r, &v8))
            return CODEC_MAL;
        if (v8 > 1)
            return CODEC_PERR; /* every byte property is 0 or 1 */
        *(uint8_t *)field = v8;
        return 0;
    case CODEC_PT_U16:
        if (codec_u16(r, &v16))
            return CODEC_MAL;
        if (d->nonzero && v16 == 0)
            return CODEC_PERR; /* receive maximum 0 */
        *(uint16_t *)field = v16;
        return 0;
    case CODEC_PT_U32:
        if (codec_u32(r, &v32))
            return CODEC_MAL;
        if (d->nonzero && v32 == 0)
            return CODEC_PERR; /* maximum packet size 0 */
        *(uint32_t *)field = v32;
        return 0;
    case CODEC_PT_STR:
        return codec_str(r, (struct mqtt_bytes *)(void *)field);
    case CODEC_PT_BIN:
        return codec_bin(r, (struct mqtt_bytes *)(void *)field);
    default:
        return CODEC_MAL;
    }
}

static int codec_prop_decode_one(struct codec_rd *r, unsigned ctx, struct mqtt_props *p)
{
    size_t start = r->pos;
    uint32_t id;
    if (codec_varint(r, &id))
        return CODEC_MAL;
    const struct codec_prop_def *d = codec_prop_def(id);
    /* A property not allowed for the packet type is malformed (2.2.2.2). */
    if (!d || !(d->allowed & ctx))
        return CODEC_MAL;
    if (id == MQTT_PROP_USER_PROPERTY)
        return codec_prop_user(r, start, p);
    if (id == MQTT_PROP_SUBSCRIPTION_ID)
        return codec_prop_sub_id(r, ctx, p);
    /* Including any other property more than once is a protocol error. */
    if (p->present & MQTT_PF(id))
        return CODEC_PERR;
    p->present |= MQTT_PF(id);
    return codec_prop_value(r, d, p);
}

/* Property length then properties; ctx is CODEC_CTX(type) or CODEC_CTX_WILL. */
static int codec_props_decode(struct codec_rd *r, unsigned ctx, struct mqtt_props *p)
{
    uint32_t len;
    if (codec_varint(r, &len))
        return CODEC_MAL;
    if (len > codec_left(r))
        return CODEC_MAL; /* property length runs past the packet */
    struct codec_rd pr = {r->p, r->pos + len, r->pos};
    r->pos += len;
    while (pr.pos < pr.end) {
        int rc = codec_prop_decode_one(&pr, ctx, p);
        if (rc)
            return rc;
    }
    return 0;
}

int mqtt_user_prop_next(const struct mqtt_props *p, uint32_t *pos, struct mqtt_bytes *key,
                        struct mqtt_bytes *value)
{
    struct codec_rd r = {p->user_props.data, p->user_props.len, *pos};
    if (!r.p)
        return 0;
    while (r.pos < r.end) {
        size_t start = r.pos;
        uint32_t id;
        if (codec_prop_skip(&r, &id))
            return 0;
        if (id != MQTT_PROP_USER_PROPERTY)
            continue;
        struct codec_rd kv = {r.p, r.pos, start + 1};
        if (codec_bin(&kv, key) || codec_bin(&kv, value))
            return 0;
        *pos = (uint32_t)r.pos;
        return 1;
    }
    *pos = (uint32_t)r.pos;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding writer                                                           */
/* ------------------------------------------------------------------------ */

/* With b == NULL the writer only counts. The first error sticks. */
struct codec_wr {
    struct buf *b;
    size_t n;
    int err;
};

static void codec_put(struct codec_wr *w, const void *p, size_t n)
{
    w->n += n;
    if (w->b && !w->err)
        w->err = buf_append(w->b, p, n);
}

static void codec_put_u8(struct codec_wr *w, uint8_t v)
{
    codec_put(w, &v, 1);
}

static void codec_put_u16(struct codec_wr *w, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    codec_put(w, x, 2);
}

static void codec_put_u32(struct codec_wr *w, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    codec_put(w, x, 4);
}

static void codec_put_varint(struct codec_wr *w, size_t v)
{
    if (v > MQTT_MAX_REMAINING) {
        w->err = -EINVAL;
        return;
    }
    uint8_t x[4];
    codec_put(w, x, varint_encode(x, (uint32_t)v));
}

/* String or binary data: two-byte length, so at most 65535 bytes. */
static void codec_put_bin(struct codec_wr *w, const void *p, size_t n)
{
    if (n > UINT16_MAX) {
        w->err = -EINVAL;
        return;
    }
    codec_put_u16(w, (uint16_t)n);
    codec_put(w, p, n);
}

static void codec_put_bytes(struct codec_wr *w, const struct mqtt_bytes *b)
{
    codec_put_bin(w, b->data, b->len);
}

/* ------------------------------------------------------------------------ */
/* Properties: encoding                                                      */
/* ------------------------------------------------------------------------ */

static void codec_prop_put_value(struct codec_wr *w, const struct codec_prop_def *d,
                                 const struct mqtt_props *p)
{
    const char *field = (const char *)p + d->offset;
    switch (d->type) {
    case CODEC_PT_BYTE:
        codec_put_u8(w, *(const uint8_t *)field);
        break;
    case CODEC_PT_U16:
        codec_put_u16(w, *(const uint16_t *)field);
        break;
    case CODEC_PT_U32:
        codec_put_u32(w, *(const uint32_t *)field);
        break;
    case CODEC_PT_STR:
    case CODEC_PT_BIN:
        codec_put_bytes(w, (const struct mqtt_bytes *)(const void *)field);
        break;
    default:
        break;
    }
}

static void codec_put_sub_id(struct codec_wr *w, uint32_t v)
{
    if (v == 0 || v > MQTT_MAX_REMAINING) {
        w->err = -EINVAL;
        return;
    }
    codec_put_u8(w, MQTT_PROP_SUBSCRIPTION_ID);
    codec_put_varint(w, v);
}

/* sub_ids[0..n_sub_ids); a decoded block has sub_ids NULL: then the single
 * sub_id is written, and several cannot be (-EINVAL). */
static void codec_put_sub_ids(struct codec_wr *w, const struct mqtt_props *p)
{
    if (p->n_sub_ids == 0)
        return;
    if (!p->sub_ids) {
        if (p->n_sub_ids > 1)
            w->err = -EINVAL;
        else
            codec_put_sub_id(w, p->sub_id);
        return;
    }
    for (uint32_t i = 0; i < p->n_sub_ids; i++)
        codec_put_sub_id(w, p->sub_ids[i]);
}

/* Copy the user property entries of user_props (skipping any other
 * property interleaved in a decoded block). */
static void codec_put_user_props(struct codec_wr *w, const struct mqtt_props *p)
{
    struct codec_rd r = {p->user_props.data, p->user_props.len, 0};
    if (!r.p || r.end == 0)
        return;
    while (r.pos < r.end) {
        size_t start = r.pos;
        uint32_t id;
        if (codec_prop_skip(&r, &id)) {
            w->err = -EINVAL;
            return;
        }
        if (id == MQTT_PROP_USER_PROPERTY)
            codec_put(w, r.p + start, r.pos - start);
    }
}

/* The properties without their length prefix. */
static void codec_props_put(struct codec_wr *w, const struct mqtt_props *p)
{
    /* Only the identifiers that are present, in ascending order: most
     * packets carry none or one, and this runs for every delivery. */
    uint64_t todo = p->present & ((CODEC_N_PROPS >= 64 ? 0 : MQTT_PF(CODEC_N_PROPS)) - 1);
    todo &= ~MQTT_PF(MQTT_PROP_SUBSCRIPTION_ID);
    if (p->n_sub_ids)
        todo |= MQTT_PF(MQTT_PROP_SUBSCRIPTION_ID);
    todo &= ~(uint64_t)1; /* identifier 0 does not exist */
    while (todo) {
        uint32_t id = (uint32_t)__builtin_ctzll(todo);
        todo &= todo - 1;
        if (id == MQTT_PROP_SUBSCRIPTION_ID) {
            codec_put_sub_ids(w, p);
            continue;
        }
        const struct codec_prop_def *d = codec_prop_def(id);
        if (!d || d->type == CODEC_PT_PAIR || !(p->present & MQTT_PF(id)))
            continue;
        codec_put_u8(w, (uint8_t)id);
        codec_prop_put_value(w, d, p);
    }
    codec_put_user_props(w, p);
    if (p->raw.len)
        codec_put(w, p->raw.data, p->raw.len);
}

size_t mqtt_props_size(const struct mqtt_props *p)
{
    struct codec_wr w = {NULL, 0, 0};
    codec_props_put(&w, p);
    return w.n;
}

/* Length prefix then properties. */
static void codec_props_block(struct codec_wr *w, const struct mqtt_props *p)
{
    struct codec_wr cw = {NULL, 0, 0};
    codec_props_put(&cw, p);
    if (cw.err) {
        w->err = cw.err;
        return;
    }
    codec_put_varint(w, cw.n);
    codec_props_put(w, p);
}

int mqtt_props_encode(struct buf *out, const struct mqtt_props *p)
{
    size_t start = out->len;
    struct codec_wr w = {out, 0, 0};
    codec_props_block(&w, p);
    if (w.err) {
        out->len = start;
        return w.err;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reason codes allowed per packet type                                      */
/* ------------------------------------------------------------------------ */

static const uint8_t codec_rc_connack5[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                            0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                            0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t codec_rc_connack3[] = {0, 1, 2, 3, 4, 5};
static const uint8_t codec_rc_puback[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t codec_rc_pubrel[] = {0x00, 0x92};
static const uint8_t codec_rc_suback5[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                           0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t codec_rc_suback3[] = {0x00, 0x01, 0x02, 0x80};
static const uint8_t codec_rc_unsuback[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
static const uint8_t codec_rc_disconnect[] = {
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
    0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t codec_rc_auth[] = {0x00, 0x18, 0x19};

#define CODEC_RCS(a) a, sizeof(a)

/* The sender MUST use one of the reason codes listed for the packet
 * (e.g. [MQTT-5.0 3.4.2-1]); anything else is treated as a protocol error. */
static int codec_reason_check(const uint8_t *list, size_t n, uint8_t rc)
{
    return memchr(list, rc, n) ? 0 : CODEC_PERR;
}

/* ------------------------------------------------------------------------ */
/* Decoding packets                                                          */
/* ------------------------------------------------------------------------ */

/* [MQTT-3.1.1 2.2.2-1/2, MQTT-5.0 2.1.3-1] reserved flags: 0x2 for PUBREL, SUBSCRIBE and
 * UNSUBSCRIBE, 0 for the others; PUBLISH carries DUP, QoS and RETAIN. */
static int codec_check_flags(enum mqtt_type type, uint8_t flags)
{
    if (type == MQTT_PUBLISH) {
        uint8_t qos = (flags >> 1) & 3;
        if (qos == 3)
            return CODEC_MAL; /* [MQTT-3.1.1 3.3.1-4, MQTT-5.0 3.3.1-4] both QoS bits set */
        if (qos == 0 && (flags & 0x8))
            return CODEC_MAL; /* [MQTT-3.1.1 3.3.1-2, MQTT-5.0 3.3.1-2] DUP must be 0 for QoS 0 */
        return 0;
    }
    if (type == MQTT_PUBREL || type == MQTT_SUBSCRIBE || type == MQTT_UNSUBSCRIBE)
        return flags == 0x2 ? 0 : CODEC_MAL;
    return flags == 0 ? 0 : CODEC_MAL;
}

/* [MQTT-3.1.1 2.3.1-1, MQTT-5.0 2.2.1-3] SUBSCRIBE, UNSUBSCRIBE and PUBLISH (QoS > 0) and their
 * acknowledgements carry a non-zero packet identifier. */
static int codec_packet_id(struct codec_rd *r, uint16_t *id)
{
    if (codec_u16(r, id))
        return CODEC_MAL;
    return *id ? 0 : CODEC_PERR;
}

static int codec_end(const struct codec_rd *r)
{
    return r->pos == r->end ? 0 : CODEC_MAL;
}

static bool codec_name_is(const struct mqtt_bytes *b, const char *s)
{
    size_t n = strlen(s);
    return b->len == n && (n == 0 || memcmp(b->data, s, n) == 0);
}

/* Protocol name and level (3.1.2.1, 3.1.2.2). */
static int codec_connect_protocol(struct codec_rd *r, struct mqtt_connect *c)
{
    if (codec_bin(r, &c->protocol_name) || codec_u8(r, &c->protocol_version))
        return CODEC_MAL;
    if (codec_name_is(&c->protocol_name, "MQTT") &&
        (c->protocol_version == MQTT_V311 || c->protocol_version == MQTT_V5))
        return 0;
    if (codec_name_is(&c->protocol_name, "MQIsdp") && c->protocol_version == MQTT_V31)
        return 0;
    /* [MQTT-3.1.1 3.1.2-2, MQTT-5.0 3.1.2-2] unsupported protocol level */
    return -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION;
}

/* Connect flags (3.1.2.3). */
static int codec_connect_flags(struct codec_rd *r, struct mqtt_connect *c)
{
    uint8_t f;
    if (codec_u8(r, &f))
        return CODEC_MAL;
    if (f & 0x01)
        return CODEC_MAL; /* [MQTT-3.1.1 3.1.2-3, MQTT-5.0 3.1.2-3] reserved flag must be 0 */
    c->clean_start = f & 0x02;
    c->will_flag = f & 0x04;
    c->will_qos = (f >> 3) & 3;
    c->will_retain = f & 0x20;
    c->password_flag = f & 0x40;
    c->username_flag = f & 0x80;
    if (c->will_qos == 3)
        return CODEC_MAL; /* [MQTT-3.1.1 3.1.2-14, MQTT-5.0 3.1.2-12] will QoS 3 is malformed */
    /* [MQTT-3.1.1 3.1.2-11, MQTT-5.0 3.1.2-11/13] without a will, will QoS and retain are 0 */
    if (!c->will_flag && (c->will_qos || c->will_retain))
        return CODEC_MAL;
    /* [MQTT-3.1.1 3.1.2-22] 3.1.1: no password without a user name */
    if (c->protocol_version == MQTT_V311 && c->password_flag && !c->username_flag)
        return CODEC_MAL;
    return 0;
}

static int codec_connect_payload(struct codec_rd *r, struct mqtt_connect *c)
{
    bool v5 = c->protocol_version == MQTT_V5;
    int rc;
    /* [MQTT-3.1.1 3.1.3-4, MQTT-5.0 3.1.3-4] client identifier is a UTF-8 string */
    if (codec_str(r, &c->client_id))
        return CODEC_MAL;
    if (c->will_flag) {
        if (v5 && (rc = codec_props_decode(r, CODEC_CTX_WILL, &c->will_props)))
            return rc;
        /* [MQTT-3.1.1 3.1.3-10, MQTT-5.0 3.1.3-11] will topic is a UTF-8 string */
        if (codec_str(r, &c->will_topic) || codec_bin(r, &c->will_payload))
            return CODEC_MAL;
    }
    /* [MQTT-3.1.1 3.1.3-11, MQTT-5.0 3.1.3-12] user name is a UTF-8 string */
    if (c->username_flag && codec_str(r, &c->username))
        return CODEC_MAL;
    if (c->password_flag && codec_bin(r, &c->password))
        return CODEC_MAL;
    return codec_end(r); /* trailing bytes after the payload */
}

static int codec_dec_connect(struct codec_rd *r, struct mqtt_connect *c)
{
    int rc = codec_connect_protocol(r, c);
    if (rc)
        return rc;
    if ((rc = codec_connect_flags(r, c)))
        return rc;
    if (codec_u16(r, &c->keep_alive))
        return CODEC_MAL;
    if (c->protocol_version == MQTT_V5 &&
        (rc = codec_props_decode(r, CODEC_CTX(MQTT_CONNECT), &c->props)))
        return rc;
    return codec_connect_payload(r, c);
}

static int codec_dec_connack(struct codec_rd *r, uint8_t version, struct mqtt_connack *c)
{
    bool v5 = version == MQTT_V5;
    uint8_t f;
    int rc;
    if (codec_u8(r, &f) || codec_u8(r, &c->reason))
        return CODEC_MAL;
    if (version == MQTT_V31)
        f = 0; /* MQTT 3.1 section 3.2: the byte is reserved, not used */
    /* [MQTT-5.0 3.2.2-1] acknowledge flags bits 7-1 are reserved */
    if (f & 0xFE)
        return CODEC_MAL;
    c->session_present = f & 1;
    if (v5) {
        /* A 2-byte CONNACK (no property length) is accepted as no properties. */
        if (codec_left(r) && (rc = codec_props_decode(r, CODEC_CTX(MQTT_CONNACK), &c->props)))
            return rc;
        rc = codec_reason_check(CODEC_RCS(codec_rc_connack5), c->reason);
    } else {
        rc = codec_reason_check(CODEC_RCS(codec_rc_connack3), c->reason);
    }
    if (rc)
        return rc;
    /* [MQTT-3.1.1 3.2.2-4, MQTT-5.0 3.2.2-6] session present is 0 with a failure code */
    if (c->reason && c->session_present)
        return CODEC_PERR;
    return codec_end(r);
}

static int codec_dec_publish(struct codec_rd *r, bool v5, uint8_t flags, struct mqtt_publish *p)
{
    int rc;
    p->dup = flags & 0x8;
    p->qos = (flags >> 1) & 3;
    p->retain = flags & 1;
    /* [MQTT-3.1.1 3.3.2-1, MQTT-5.0 3.3.2-1] topic name is a UTF-8 string */
    if (codec_str(r, &p->topic))
        return CODEC_MAL;
    if (p->qos && (rc = codec_packet_id(r, &p->packet_id)))
        return rc;
    if (v5 && (rc = codec_props_decode(r, CODEC_CTX(MQTT_PUBLISH), &p->props)))
        return rc;
    codec_rest(r, &p->payload);
    return 0;
}

static int codec_dec_ack(struct codec_rd *r, bool v5, enum mqtt_type type, struct mqtt_ack *a)
{
    int rc = codec_packet_id(r, &a->packet_id);
    if (rc)
        return rc;
    if (!v5)
        return codec_end(r); /* 3.1.1: remaining length is exactly 2 */
    /* 5.0: the reason code is omitted when 0 (length 2), the property length
     * when there are none (length 3) (3.4.2.1). */
    if (codec_left(r) == 0)
        return 0;
    if (codec_u8(r, &a->reason))
        return CODEC_MAL;
    if (codec_left(r) && (rc = codec_props_decode(r, CODEC_CTX(type), &a->props)))
        return rc;
    if (type == MQTT_PUBACK || type == MQTT_PUBREC)
        rc = codec_reason_check(CODEC_RCS(codec_rc_puback), a->reason);
    else
        rc = codec_reason_check(CODEC_RCS(codec_rc_pubrel), a->reason);
    return rc ? rc : codec_end(r);
}

/* Check one SUBSCRIBE options byte. */
static int codec_sub_options(bool v5, uint8_t o)
{
    if (!v5) {
        /* [MQTT-3.1.1 3.8.3-4] 3.1.1: reserved bits 7-2 are 0 and QoS is 0, 1 or 2 */
        if ((o & 0xFC) || (o & MQTT_SUBOPT_QOS_MASK) == 3)
            return CODEC_MAL;
        return 0;
    }
    if (o & 0xC0)
        return CODEC_MAL; /* [MQTT-5.0 3.8.3-5] reserved bits 6-7 must be 0 */
    if ((o & MQTT_SUBOPT_QOS_MASK) == 3)
        return CODEC_PERR; /* 3.8.3.1: Maximum QoS 3 is a protocol error */
    if ((o & MQTT_SUBOPT_RH_MASK) >> MQTT_SUBOPT_RH_SHIFT == 3)
        return CODEC_PERR; /* 3.8.3.1: Retain Handling 3 is a protocol error */
    return 0;
}

/* Validate the topic filter list of a SUBSCRIBE or UNSUBSCRIBE. */
static int codec_sub_entries(struct codec_rd *r, bool v5, enum mqtt_type type,
                             struct mqtt_subscribe *s)
{
    int rc;
    codec_rest(r, &s->entries);
    struct codec_rd er = {s->entries.data, s->entries.len, 0};
    /* [MQTT-3.1.1 3.8.3-3, MQTT-5.0 3.8.3-2], [MQTT-3.1.1 3.10.3-2, MQTT-5.0 3.10.3-2] at least one
     * topic filter */
    if (er.end == 0)
        return CODEC_PERR;
    while (er.pos < er.end) {
        struct mqtt_bytes filter;
        uint8_t o;
        /* [MQTT-3.1.1 3.8.3-1/3.10.3-1, MQTT-5.0 3.8.3-1/3.10.3-1] topic filters are UTF-8 strings
         */
        if (codec_str(&er, &filter))
            return CODEC_MAL;
        if (type == MQTT_SUBSCRIBE) {
            if (codec_u8(&er, &o))
                return CODEC_MAL;
            if ((rc = codec_sub_options(v5, o)))
                return rc;
        }
        s->count++;
    }
    return 0;
}

static int codec_dec_subscribe(struct codec_rd *r, bool v5, enum mqtt_type type,
                               struct mqtt_subscribe *s)
{
    int rc = codec_packet_id(r, &s->packet_id);
    if (rc)
        return rc;
    if (v5 && (rc = codec_props_decode(r, CODEC_CTX(type), &s->props)))
        return rc;
    return codec_sub_entries(r, v5, type, s);
}

static int codec_dec_suback(struct codec_rd *r, bool v5, enum mqtt_type type, struct mqtt_suback *s)
{
    int rc = codec_packet_id(r, &s->packet_id);
    if (rc)
        return rc;
    if (!v5 && type == MQTT_UNSUBACK)
        return codec_end(r); /* 3.1.1: UNSUBACK has no payload */
    if (v5 && (rc = codec_props_decode(r, CODEC_CTX(type), &s->props)))
        return rc;
    s->reasons = codec_left(r) ? r->p + r->pos : NULL;
    s->n_reasons = (uint32_t)codec_left(r);
    r->pos = r->end;
    if (s->n_reasons == 0)
        return CODEC_PERR; /* one reason code per topic filter, at least one */
    for (uint32_t i = 0; i < s->n_reasons; i++) {
        if (type == MQTT_UNSUBACK)
            rc = codec_reason_check(CODEC_RCS(codec_rc_unsuback), s->reasons[i]);
        else if (v5)
            rc = codec_reason_check(CODEC_RCS(codec_rc_suback5), s->reasons[i]);
        else
            rc = codec_reason_check(CODEC_RCS(codec_rc_suback3), s->reasons[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* DISCONNECT and AUTH (5.0): length 0 means reason 0; length 1 reason only. */
static int codec_dec_disconnect(struct codec_rd *r, bool v5, enum mqtt_type type,
                                struct mqtt_disconnect *d)
{
    int rc;
    if (!v5)
        return codec_end(r); /* 3.1.1: DISCONNECT has no variable header */
    if (codec_left(r) == 0)
        return 0;
    if (codec_u8(r, &d->reason))
        return CODEC_MAL;
    if (codec_left(r) && (rc = codec_props_decode(r, CODEC_CTX(type), &d->props)))
        return rc;
    if (type == MQTT_AUTH)
        rc = codec_reason_check(CODEC_RCS(codec_rc_auth), d->reason);
    else
        rc = codec_reason_check(CODEC_RCS(codec_rc_disconnect), d->reason);
    return rc ? rc : codec_end(r);
}

static int codec_dec_body(struct codec_rd *r, uint8_t version, struct mqtt_packet *out)
{
    bool v5 = version == MQTT_V5;
    switch (out->type) {
    case MQTT_CONNECT:
        return codec_dec_connect(r, &out->u.connect);
    case MQTT_CONNACK:
        return codec_dec_connack(r, version, &out->u.connack);
    case MQTT_PUBLISH:
        return codec_dec_publish(r, v5, out->flags, &out->u.publish);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return codec_dec_ack(r, v5, out->type, &out->u.ack);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return codec_dec_subscribe(r, v5, out->type, &out->u.subscribe);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return codec_dec_suback(r, v5, out->type, &out->u.suback);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
        return codec_end(r); /* remaining length 0 */
    case MQTT_DISCONNECT:
        return codec_dec_disconnect(r, v5, out->type, &out->u.disconnect);
    case MQTT_AUTH:
        if (!v5)
            return CODEC_MAL; /* type 15 is reserved before 5.0 */
        return codec_dec_disconnect(r, v5, out->type, &out->u.disconnect);
    default:
        return CODEC_MAL; /* type 0 is reserved */
    }
}

int mqtt_decode(uint8_t version, const uint8_t *buf, size_t len, struct mqtt_packet *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 2)
        return CODEC_MAL;
    uint32_t rem;
    size_t n;
    if (codec_varint_parse(buf + 1, len - 1, &rem, &n))
        return CODEC_MAL;
    if ((size_t)rem != len - 1 - n)
        return CODEC_MAL; /* remaining length disagrees with the packet size */
    out->type = (enum mqtt_type)(buf[0] >> 4);
    out->flags = buf[0] & 0x0F;
    if (out->type == 0)
        return CODEC_MAL;
    int rc = codec_check_flags(out->type, out->flags);
    if (rc)
        return rc;
    struct codec_rd r = {buf, len, 1 + n};
    return codec_dec_body(&r, version, out);
}

/* ------------------------------------------------------------------------ */
/* Framing                                                                   */
/* ------------------------------------------------------------------------ */

long mqtt_frame(const uint8_t *buf, size_t len, uint32_t max_size, uint32_t *hdr_len)
{
    if (len < 1)
        return 0;
    if ((buf[0] >> 4) == 0)
        return CODEC_MAL; /* packet type 0 is reserved */
    uint32_t rem;
    size_t n;
    int rc = codec_varint_parse(buf + 1, len - 1, &rem, &n);
    if (rc < 0)
        return rc;
    if (rc > 0)
        return 0;
    uint64_t total = 1 + (uint64_t)n + rem;
    if (hdr_len)
        *hdr_len = (uint32_t)(1 + n);
    if (max_size && total > max_size)
        return -MQTT_RC_PACKET_TOO_LARGE;
    if (len < total)
        return 0;
    return (long)total;
}

/* ------------------------------------------------------------------------ */
/* Encoding packets                                                          */
/* ------------------------------------------------------------------------ */

static void codec_props_if_v5(struct codec_wr *w, uint8_t version, const struct mqtt_props *p)
{
    if (version == MQTT_V5)
        codec_props_block(w, p);
}

static void codec_enc_connect(struct codec_wr *w, uint8_t version, const struct mqtt_connect *c)
{
    const char *name = version == MQTT_V31 ? "MQIsdp" : "MQTT";
    uint8_t f = 0;
    codec_put_bin(w, name, strlen(name));
    codec_put_u8(w, version);
    if (c->clean_start)
        f |= 0x02;
    if (c->will_flag)
        f |= 0x04 | (uint8_t)(c->will_qos << 3) | (c->will_retain ? 0x20 : 0);
    if (c->password_flag)
        f |= 0x40;
    if (c->username_flag)
        f |= 0x80;
    if (c->will_flag && c->will_qos > 2)
        w->err = -EINVAL;
    codec_put_u8(w, f);
    codec_put_u16(w, c->keep_alive);
    codec_props_if_v5(w, version, &c->props);
    codec_put_bytes(w, &c->client_id);
    if (c->will_flag) {
        codec_props_if_v5(w, version, &c->will_props);
        codec_put_bytes(w, &c->will_topic);
        codec_put_bytes(w, &c->will_payload);
    }
    if (c->username_flag)
        codec_put_bytes(w, &c->username);
    if (c->password_flag)
        codec_put_bytes(w, &c->password);
}

static void codec_enc_connack(struct codec_wr *w, uint8_t version, const struct mqtt_connack *c)
{
    /* MQTT 3.1 (section 3.2) has no session present flag: the first byte
     * of its CONNACK variable header is reserved, 0 */
    codec_put_u8(w, c->session_present && version != MQTT_V31 ? 1 : 0);
    codec_put_u8(w, c->reason);
    codec_props_if_v5(w, version, &c->props);
}

static void codec_enc_publish(struct codec_wr *w, uint8_t version, const struct mqtt_publish *p)
{
    codec_put_bytes(w, &p->topic);
    if (p->qos)
        codec_put_u16(w, p->packet_id);
    codec_props_if_v5(w, version, &p->props);
    codec_put(w, p->payload.data, p->payload.len);
}

static bool codec_props_empty(const struct mqtt_props *p)
{
    return mqtt_props_size(p) == 0;
}

static void codec_enc_ack(struct codec_wr *w, uint8_t version, const struct mqtt_ack *a)
{
    codec_put_u16(w, a->packet_id);
    if (version != MQTT_V5)
        return;
    bool no_props = codec_props_empty(&a->props);
    if (a->reason == 0 && no_props)
        return; /* 3.4.2.1: reason and properties omitted */
    codec_put_u8(w, a->reason);
    if (!no_props)
        codec_props_block(w, &a->props);
}

static void codec_enc_subscribe(struct codec_wr *w, uint8_t version, const struct mqtt_subscribe *s)
{
    codec_put_u16(w, s->packet_id);
    codec_props_if_v5(w, version, &s->props);
    codec_put(w, s->entries.data, s->entries.len);
}

static void codec_enc_suback(struct codec_wr *w, uint8_t version, enum mqtt_type type,
                             const struct mqtt_suback *s)
{
    codec_put_u16(w, s->packet_id);
    if (version != MQTT_V5 && type == MQTT_UNSUBACK)
        return; /* 3.1.1 UNSUBACK: packet identifier only */
    codec_props_if_v5(w, version, &s->props);
    codec_put(w, s->reasons, s->n_reasons);
}

static void codec_enc_disconnect(struct codec_wr *w, uint8_t version, enum mqtt_type type,
                                 const struct mqtt_disconnect *d)
{
    if (version != MQTT_V5)
        return;
    bool no_props = codec_props_empty(&d->props);
    if (d->reason == 0 && no_props)
        return; /* 3.14.2.1 / 3.15.2.1: remaining length 0 */
    codec_put_u8(w, d->reason);
    if (!no_props || type == MQTT_AUTH)
        codec_props_block(w, &d->props);
}

static void codec_enc_body(struct codec_wr *w, uint8_t version, const struct mqtt_packet *p)
{
    switch (p->type) {
    case MQTT_CONNECT:
        codec_enc_connect(w, version, &p->u.connect);
        break;
    case MQTT_CONNACK:
        codec_enc_connack(w, version, &p->u.connack);
        break;
    case MQTT_PUBLISH:
        codec_enc_publish(w, version, &p->u.publish);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        codec_enc_ack(w, version, &p->u.ack);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        codec_enc_subscribe(w, version, &p->u.subscribe);
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        codec_enc_suback(w, version, p->type, &p->u.suback);
        break;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        codec_enc_disconnect(w, version, p->type, &p->u.disconnect);
        break;
    default: /* PINGREQ, PINGRESP: no variable header */
        break;
    }
}

/* First byte of the fixed header, or -EINVAL. */
static int codec_first_byte(uint8_t version, const struct mqtt_packet *p)
{
    if (p->type < MQTT_CONNECT || p->type > MQTT_AUTH)
        return -EINVAL;
    if (p->type == MQTT_AUTH && version != MQTT_V5)
        return -EINVAL;
    uint8_t b = (uint8_t)(p->type << 4);
    if (p->type == MQTT_PUBLISH) {
        const struct mqtt_publish *pub = &p->u.publish;
        if (pub->qos > 2)
            return -EINVAL;
        b |= (uint8_t)(pub->qos << 1) | (pub->dup ? 0x8 : 0) | (pub->retain ? 1 : 0);
    } else if (p->type == MQTT_PUBREL || p->type == MQTT_SUBSCRIBE || p->type == MQTT_UNSUBSCRIBE) {
        b |= 0x2; /* [MQTT-3.1.1 2.2.2-1, MQTT-5.0 2.1.3-1] */
    }
    return b;
}

/* A PUBLISH without properties (any 3.1.1 one, and most 5.0 deliveries):
 * the same bytes as the general path, written in one go. It is what every
 * delivery to a subscriber costs, so it skips the general path's size pass
 * and its append per field. */
static long codec_enc_publish_plain(struct buf *out, uint8_t version, uint8_t first,
                                    const struct mqtt_publish *pub)
{
    if (pub->topic.len > UINT16_MAX)
        return -EINVAL;
    size_t rl = 2 + (size_t)pub->topic.len + (pub->qos ? 2 : 0) + (version == MQTT_V5 ? 1 : 0) +
                (size_t)pub->payload.len;
    if (rl > MQTT_MAX_REMAINING)
        return -EINVAL;
    uint8_t hdr[5];
    hdr[0] = first;
    size_t hl = 1 + varint_encode(hdr + 1, (uint32_t)rl);
    if (buf_reserve(out, hl + rl))
        return -ENOMEM;
    uint8_t *d = out->data + out->len;
    memcpy(d, hdr, hl);
    d += hl;
    *d++ = (uint8_t)(pub->topic.len >> 8);
    *d++ = (uint8_t)pub->topic.len;
    if (pub->topic.len)
        memcpy(d, pub->topic.data, pub->topic.len);
    d += pub->topic.len;
    if (pub->qos) {
        *d++ = (uint8_t)(pub->packet_id >> 8);
        *d++ = (uint8_t)pub->packet_id;
    }
    if (version == MQTT_V5)
        *d++ = 0; /* property length */
    if (pub->payload.len)
        memcpy(d, pub->payload.data, pub->payload.len);
    out->len += hl + rl;
    return (long)(hl + rl);
}

static bool codec_props_none(const struct mqtt_props *p)
{
    return p->present == 0 && p->n_sub_ids == 0 && p->user_props.len == 0 && p->raw.len == 0;
}

long mqtt_encode(struct buf *out, uint8_t version, const struct mqtt_packet *p)
{
    if (version != MQTT_V31 && version != MQTT_V311 && version != MQTT_V5)
        return -EINVAL;
    int first = codec_first_byte(version, p);
    if (first < 0)
        return first;
    if (p->type == MQTT_PUBLISH && (version != MQTT_V5 || codec_props_none(&p->u.publish.props)))
        return codec_enc_publish_plain(out, version, (uint8_t)first, &p->u.publish);
    struct codec_wr cw = {NULL, 0, 0};
    codec_enc_body(&cw, version, p);
    if (cw.err)
        return cw.err;
    if (cw.n > MQTT_MAX_REMAINING)
        return -EINVAL;
    size_t start = out->len;
    if (buf_reserve(out, 1 + varint_size((uint32_t)cw.n) + cw.n))
        return -ENOMEM;
    struct codec_wr w = {out, 0, 0};
    codec_put_u8(&w, (uint8_t)first);
    codec_put_varint(&w, cw.n);
    codec_enc_body(&w, version, p);
    if (w.err) {
        out->len = start;
        return w.err;
    }
    return (long)w.n;
}

/* ------------------------------------------------------------------------ */
/* SUBSCRIBE / UNSUBSCRIBE entries                                           */
/* ------------------------------------------------------------------------ */

int mqtt_sub_next(const struct mqtt_subscribe *s, enum mqtt_type type, uint32_t *pos,
                  struct mqtt_bytes *filter, uint8_t *options)
{
    struct codec_rd r = {s->entries.data, s->entries.len, *pos};
    if (!r.p || r.pos >= r.end)
        return 0;
    uint8_t o = 0;
    if (codec_bin(&r, filter))
        return 0;
    if (type == MQTT_SUBSCRIBE && codec_u8(&r, &o))
        return 0;
    *options = o;
    *pos = (uint32_t)r.pos;
    return 1;
}

int mqtt_sub_entry_append(struct buf *entries, uint8_t type, const char *filter, uint16_t len,
                          uint8_t options)
{
    if (type != MQTT_SUBSCRIBE && type != MQTT_UNSUBSCRIBE)
        return -EINVAL;
    size_t start = entries->len;
    if (buf_put_str(entries, filter, len) ||
        (type == MQTT_SUBSCRIBE && buf_put_u8(entries, options))) {
        entries->len = start;
        return -ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Text                                                                      */
/* ------------------------------------------------------------------------ */

static const char *const codec_rc_low[] = {
    [0x00] = "success",
    [0x01] = "granted qos 1",
    [0x02] = "granted qos 2",
    [0x04] = "disconnect with will",
    [0x10] = "no matching subscribers",
    [0x11] = "no subscription existed",
    [0x18] = "continue authentication",
    [0x19] = "re-authenticate",
};

static const char *const codec_rc_high[] = {
    [0x80 - 0x80] = "unspecified error",
    [0x81 - 0x80] = "malformed packet",
    [0x82 - 0x80] = "protocol error",
    [0x83 - 0x80] = "implementation specific error",
    [0x84 - 0x80] = "unsupported protocol version",
    [0x85 - 0x80] = "client identifier not valid",
    [0x86 - 0x80] = "bad user name or password",
    [0x87 - 0x80] = "not authorized",
    [0x88 - 0x80] = "server unavailable",
    [0x89 - 0x80] = "server busy",
    [0x8A - 0x80] = "banned",
    [0x8B - 0x80] = "server shutting down",
    [0x8C - 0x80] = "bad authentication method",
    [0x8D - 0x80] = "keep alive timeout",
    [0x8E - 0x80] = "session taken over",
    [0x8F - 0x80] = "topic filter invalid",
    [0x90 - 0x80] = "topic name invalid",
    [0x91 - 0x80] = "packet identifier in use",
    [0x92 - 0x80] = "packet identifier not found",
    [0x93 - 0x80] = "receive maximum exceeded",
    [0x94 - 0x80] = "topic alias invalid",
    [0x95 - 0x80] = "packet too large",
    [0x96 - 0x80] = "message rate too high",
    [0x97 - 0x80] = "quota exceeded",
    [0x98 - 0x80] = "administrative action",
    [0x99 - 0x80] = "payload format invalid",
    [0x9A - 0x80] = "retain not supported",
    [0x9B - 0x80] = "qos not supported",
    [0x9C - 0x80] = "use another server",
    [0x9D - 0x80] = "server moved",
    [0x9E - 0x80] = "shared subscriptions not supported",
    [0x9F - 0x80] = "connection rate exceeded",
    [0xA0 - 0x80] = "maximum connect time",
    [0xA1 - 0x80] = "subscription identifiers not supported",
    [0xA2 - 0x80] = "wildcard subscriptions not supported",
};

const char *mqtt_rc_str(uint8_t rc)
{
    const char *s = NULL;
    if (rc < sizeof(codec_rc_low) / sizeof(codec_rc_low[0]))
        s = codec_rc_low[rc];
    else if (rc >= 0x80 && rc - 0x80u < sizeof(codec_rc_high) / sizeof(codec_rc_high[0]))
        s = codec_rc_high[rc - 0x80];
    return s ? s : "unknown reason code";
}

const char *mqtt_type_str(enum mqtt_type t)
{
    static const char *const names[] = {
        "RESERVED", "CONNECT",  "CONNACK",    "PUBLISH", "PUBACK",      "PUBREC",
        "PUBREL",   "PUBCOMP",  "SUBSCRIBE",  "SUBACK",  "UNSUBSCRIBE", "UNSUBACK",
        "PINGREQ",  "PINGRESP", "DISCONNECT", "AUTH",
    };
    if ((unsigned)t < sizeof(names) / sizeof(names[0]))
        return names[t];
    return "UNKNOWN";
}
