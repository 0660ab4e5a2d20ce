/*
 * blocks_alloc.h - a ProtobufCAllocator for tests whose blocks are all freed
 * at once (blocks_release), like the forwarding channel's arena:
 * chan_frame_unpack_publish never frees what it allocates. Used by the
 * channel's unit test and its fuzz target.
 */
#ifndef STARLING_TEST_BLOCKS_ALLOC_H
#define STARLING_TEST_BLOCKS_ALLOC_H

#include <stdlib.h>

#include <protobuf-c/protobuf-c.h>

struct blocks {
    void *v[64];
    unsigned n;
};

static inline void *blocks_alloc(void *ud, size_t size)
{
    struct blocks *b = ud;
    if (b->n == sizeof b->v / sizeof b->v[0])
        return NULL;
    return b->v[b->n++] = malloc(size);
}

static inline void blocks_free(void *ud, void *p)
{
    (void)ud;
    (void)p;
}

static inline void blocks_release(struct blocks *b)
{
    while (b->n)
        free(b->v[--b->n]);
}

/* An allocator over b; its blocks stay until blocks_release(b). */
static inline ProtobufCAllocator blocks_allocator(struct blocks *b)
{
    ProtobufCAllocator al = {blocks_alloc, blocks_free, b};
    return al;
}

#endif
