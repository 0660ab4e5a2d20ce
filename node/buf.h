/*
 * buf.h - a growable byte buffer.
 *
 * The one byte buffer of the code base: the codec encodes packets into it,
 * connections coalesce output in it, the store encodes its records in it
 * (storage/store_rec.h).
 * A struct buf is owned by whoever embeds it; it is not thread safe.
 */
#ifndef STARLING_BUF_H
#define STARLING_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

/* Make room for at least `extra` more bytes. Returns 0 or -ENOMEM. */
int buf_reserve(struct buf *b, size_t extra);
/* Append bytes. Returns 0 or -ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_put_u8(struct buf *b, uint8_t v);
int buf_put_u16(struct buf *b, uint16_t v);
int buf_put_u32(struct buf *b, uint32_t v);
/* MQTT variable byte integer (v must be <= 268435455). */
int buf_put_varint(struct buf *b, uint32_t v);
/* MQTT string / binary data: two-byte big-endian length then bytes. */
int buf_put_str(struct buf *b, const void *p, uint16_t n);
/* Drop the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
/* Forget the contents, keep the memory. */
static inline void buf_reset(struct buf *b)
{
    b->len = 0;
}
/* Release the memory; the buffer is empty and reusable afterwards. */
void buf_free(struct buf *b);

/* Write v (<= 268435455) as an MQTT variable byte integer into out; returns
 * the number of bytes (1 to 4). */
size_t varint_encode(uint8_t out[4], uint32_t v);

/* Number of bytes buf_put_varint writes for v. */
size_t varint_size(uint32_t v);

#endif
