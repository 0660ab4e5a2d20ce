/*
 * chan_frame.c - a plain Publish frame unpacked without protobuf-c's
 * generic decoder (see chan_frame.h).
 *
 * Each accepted case decodes exactly as protobuf-c 1.4 does: a varint is
 * at most 10 bytes, bit i*7 of the value taken from byte i (protobuf-c's
 * parse_uint64 drops the same bits past 64); the uint32 qos and every
 * length prefix are taken at up to 4 bytes (below 2^28, where protobuf-c's
 * parse_uint32 and length scan agree with that), a bool only as one byte 0
 * or 1. Anything else is left to protobuf-c (NULL).
 */
#include "chan_frame.h"

#include <stdbool.h>
#include <string.h>

#define MAX_SHARES 16

/* The varint at *p (at most max bytes, before end) in *v. */
static bool varint(const uint8_t **p, const uint8_t *end, unsigned max, uint64_t *v)
{
    uint64_t r = 0;
    const uint8_t *q = *p;
    for (unsigned i = 0; i < max && q < end; i++) {
        uint8_t b = *q++;
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = r;
            *p = q;
            return true;
        }
    }
    return false;
}

/* The length-prefixed bytes at *p in *out (NULL data when empty, as
 * protobuf-c gives them). */
static bool bytes(const uint8_t **p, const uint8_t *end, ProtobufCBinaryData *out)
{
    uint64_t n;
    if (!varint(p, end, 4, &n) || n > (uint64_t)(end - *p))
        return false;
    out->len = (size_t)n;
    out->data = n ? (uint8_t *)*p : NULL;
    *p += n;
    return true;
}

enum { WT_VARINT = 0, WT_LEN = 2 };

Starling__Chan__Frame *chan_frame_unpack_publish(ProtobufCAllocator *al, size_t len,
                                                 const uint8_t *data)
{
    const uint8_t *p = data, *end = data + len;
    uint64_t key, plen;
    /* the Frame: field 3 (publish), length-delimited, and nothing after it */
    if (!varint(&p, end, 1, &key) || key != (3u << 3 | WT_LEN) || !varint(&p, end, 4, &plen) ||
        plen != (uint64_t)(end - p))
        return NULL;
    /* decoded in place (a failed decode leaves its bytes to the arena) */
    size_t fsz = (sizeof(Starling__Chan__Frame) + 15) & ~(size_t)15;
    unsigned char *mem = al->alloc(al->allocator_data, fsz + sizeof(Starling__Chan__Publish));
    if (!mem)
        return NULL;
    Starling__Chan__Frame *f = (Starling__Chan__Frame *)mem;
    Starling__Chan__Publish *pp = (Starling__Chan__Publish *)(mem + fsz);
    *pp = (Starling__Chan__Publish)STARLING__CHAN__PUBLISH__INIT;
    ProtobufCBinaryData shares[MAX_SHARES];
    size_t n_shares = 0;
    uint32_t seen = 0; /* fields met, by number (each at most once, shares aside) */
    while (p < end) {
        uint64_t v;
        if (!varint(&p, end, 2, &key))
            return NULL;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (field == 0 || field > 31 || (field != 9 && (seen & (1u << field))))
            return NULL;
        seen |= 1u << field;
        switch (field) {
        case 1:
        case 2:
        case 8:
        case 16:
        case 20:
        case 21:
            if (wt != WT_VARINT || !varint(&p, end, 10, &v))
                return NULL;
            if (field == 1) {
                pp->origin = v;
            } else if (field == 2) {
                pp->seq = v;
            } else if (field == 8) {
                pp->has_expiry_at_ms = 1;
                pp->expiry_at_ms = v;
            } else if (field == 16) {
                pp->has_prev = 1;
                pp->prev = v;
            } else if (field == 20) {
                pp->has_route_index = 1;
                pp->route_index = v;
            } else {
                pp->has_pub_id = 1;
                pp->pub_id = v;
            }
            break;
        case 5:
            if (wt != WT_VARINT || !varint(&p, end, 4, &v))
                return NULL;
            pp->qos = (uint32_t)v;
            break;
        case 6:
            if (wt != WT_VARINT || !varint(&p, end, 1, &v) || v > 1)
                return NULL;
            pp->has_retain = 1;
            pp->retain = (protobuf_c_boolean)v;
            break;
        case 3:
        case 4:
        case 7:
        case 9: {
            ProtobufCBinaryData b;
            if (wt != WT_LEN || !bytes(&p, end, &b))
                return NULL;
            if (field == 3) {
                pp->topic = b;
            } else if (field == 4) {
                pp->payload = b;
            } else if (field == 7) {
                pp->has_properties = 1;
                pp->properties = b;
            } else {
                if (n_shares == MAX_SHARES)
                    return NULL;
                shares[n_shares++] = b;
            }
            break;
        }
        default:
            return NULL; /* unknown to this decoder: protobuf-c keeps it */
        }
    }
    const uint32_t required = 1u << 1 | 1u << 2 | 1u << 3 | 1u << 4 | 1u << 5;
    if ((seen & required) != required)
        return NULL;
    if (n_shares) {
        pp->shares = al->alloc(al->allocator_data, n_shares * sizeof(shares[0]));
        if (!pp->shares)
            return NULL;
        memcpy(pp->shares, shares, n_shares * sizeof(shares[0]));
        pp->n_shares = n_shares;
    }
    *f = (Starling__Chan__Frame)STARLING__CHAN__FRAME__INIT;
    f->frame_case = STARLING__CHAN__FRAME__FRAME_PUBLISH;
    f->publish = pp;
    return f;
}
