/*
 * chan_frame.h - the forwarding channel's most common frame, a Frame that
 * holds a Publish (a forwarded PUBLISH), unpacked without protobuf-c's
 * generic decoder.
 *
 * protobuf-c's unpack walks each message twice (it first scans and counts
 * the fields, then parses them), looks every field up in the descriptor,
 * initialises the Publish through its descriptor and copies every bytes
 * field: about a third of a receiving node's cluster thread in a cross-node
 * fan-in (docs/performance.md, "The receiving node's decode"). This decoder
 * takes only frames of the plain shape (one Publish, each field at most
 * once, of the wire type it has in channel.proto, every required field
 * present, no unknown field, varints no longer than protobuf-c reads them
 * the same way); for anything else it returns NULL and the caller unpacks
 * the frame with protobuf-c, which then decides as before. What it returns
 * is what protobuf-c's unpack gives for the same bytes, except that
 * topic, payload, properties and shares point into the frame's own bytes
 * instead of copies (an empty one is NULL, as there).
 */
#ifndef STARLING_CHAN_FRAME_H
#define STARLING_CHAN_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "channel.pb-c.h"

/* The Frame of the len bytes at data if it is a plain Publish frame (see
 * above), or NULL. The Frame, the Publish and the shares array come from al
 * (its free is not called: an arena's), and the frame points into data,
 * which must stay as it is while the frame is used. */
Starling__Chan__Frame *chan_frame_unpack_publish(ProtobufCAllocator *al, size_t len,
                                                 const uint8_t *data);

#endif
