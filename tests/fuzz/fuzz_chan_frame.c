/*
 * fuzz_chan_frame.c - libFuzzer target for chan_frame_unpack_publish
 * (cluster/chan_frame.c), the forwarding channel's decoder of plain Publish
 * frames.
 *
 * The input is a frame's bytes. When the decoder takes them, protobuf-c's
 * unpack must take them too and give the same Publish, field by field, with
 * no unknown field; topic, payload, properties and shares must lie within
 * the input. When it does not, nothing is checked (the channel then unpacks
 * the frame with protobuf-c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chan_frame.h"
#include "../common/blocks_alloc.h"
#include "fuzz_check.h"

static void bin_check(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b,
                      const uint8_t *data, size_t size)
{
    FUZZ_CHECK(a->len == b->len);
    FUZZ_CHECK((a->data == NULL) == (a->len == 0) && (b->data == NULL) == (b->len == 0));
    if (a->len) {
        FUZZ_CHECK(a->data >= data && a->data + a->len <= data + size);
        FUZZ_CHECK(memcmp(a->data, b->data, a->len) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    struct blocks bl = {.n = 0};
    ProtobufCAllocator al = blocks_allocator(&bl);
    Starling__Chan__Frame *fast = chan_frame_unpack_publish(&al, size, copy);
    if (fast) {
        Starling__Chan__Frame *slow = starling__chan__frame__unpack(NULL, size, copy);
        FUZZ_CHECK(slow);
        FUZZ_CHECK(fast->frame_case == STARLING__CHAN__FRAME__FRAME_PUBLISH);
        FUZZ_CHECK(slow->frame_case == STARLING__CHAN__FRAME__FRAME_PUBLISH);
        FUZZ_CHECK(!slow->base.n_unknown_fields && !slow->publish->base.n_unknown_fields);
        FUZZ_CHECK(fast->base.descriptor == slow->base.descriptor);
        const Starling__Chan__Publish *a = fast->publish, *b = slow->publish;
        FUZZ_CHECK(a->base.descriptor == b->base.descriptor && !a->base.n_unknown_fields);
        FUZZ_CHECK(a->origin == b->origin && a->seq == b->seq && a->qos == b->qos);
        bin_check(&a->topic, &b->topic, copy, size);
        bin_check(&a->payload, &b->payload, copy, size);
        FUZZ_CHECK(a->has_retain == b->has_retain && a->retain == b->retain);
        FUZZ_CHECK(a->has_properties == b->has_properties);
        bin_check(&a->properties, &b->properties, copy, size);
        FUZZ_CHECK(a->has_expiry_at_ms == b->has_expiry_at_ms &&
                   a->expiry_at_ms == b->expiry_at_ms);
        FUZZ_CHECK(a->n_shares == b->n_shares);
        for (size_t i = 0; i < a->n_shares; i++)
            bin_check(&a->shares[i], &b->shares[i], copy, size);
        FUZZ_CHECK(a->has_prev == b->has_prev && a->prev == b->prev);
        FUZZ_CHECK(a->has_route_index == b->has_route_index && a->route_index == b->route_index);
        FUZZ_CHECK(a->has_pub_id == b->has_pub_id && a->pub_id == b->pub_id);
        starling__chan__frame__free_unpacked(slow, NULL);
    }
    blocks_release(&bl);
    free(copy);
    return 0;
}
