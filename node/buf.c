/*
 * buf.c - growable byte buffer (see buf.h).
 */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int buf_reserve(struct buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (buf_reserve(b, n))
        return -ENOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int buf_put_u8(struct buf *b, uint8_t v)
{
    return buf_append(b, &v, 1);
}

int buf_put_u16(struct buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return buf_append(b, x, 2);
}

int buf_put_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return buf_append(b, x, 4);
}

size_t varint_size(uint32_t v)
{
    if (v < 128)
        return 1;
    if (v < 16384)
        return 2;
    if (v < 2097152)
        return 3;
    return 4;
}

size_t varint_encode(uint8_t out[4], uint32_t v)
{
    size_t n = 0;
    do {
        uint8_t d = v % 128;
        v /= 128;
        if (v)
            d |= 0x80;
        out[n++] = d;
    } while (v && n < 4);
    return n;
}

int buf_put_varint(struct buf *b, uint32_t v)
{
    uint8_t x[4];
    return buf_append(b, x, varint_encode(x, v));
}

int buf_put_str(struct buf *b, const void *p, uint16_t n)
{
    if (buf_put_u16(b, n))
        return -ENOMEM;
    return buf_append(b, p, n);
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
