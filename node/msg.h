/*
 * msg.h - the immutable, reference-counted application message.
 *
 * A PUBLISH becomes one struct msg; fan-out passes references to it, never
 * copies of the payload. After msg_new returns, no field changes but `hold`. Any thread
 * may call msg_ref/msg_unref; the last msg_unref frees it.
 */
#ifndef STARLING_MSG_H
#define STARLING_MSG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define MSG_ALSO_TO_MAX 2
#define MSG_ALSO_TO_MANY 255

/* Whether a message may be sent to subscribers yet (struct msg.hold). */
enum { MSG_READY = 0, MSG_HELD = 1, MSG_REJECTED = 2 };

/*
 * Where a message on its way to one session stands: in the session's queue,
 * or inflight waiting for the client's acknowledgement. Sessions keep it in
 * memory (struct qmsg.state) and the store writes the same values to disk
 * (struct store_msg.state): one enum for both, and the numbers are part of the
 * store's format, so they never change.
 */
enum msg_state {
    MSG_STATE_QUEUED = 0,
    MSG_STATE_WAIT_PUBACK = 1,  /* QoS 1 PUBLISH sent */
    MSG_STATE_WAIT_PUBREC = 2,  /* QoS 2 PUBLISH sent */
    MSG_STATE_WAIT_PUBCOMP = 3, /* QoS 2 PUBREC received, PUBREL sent */
};

struct msg {
    atomic_uint refs;
    /* MSG_HELD while the store commits it (a QoS 1/2 message is delivered
     * only once it is durable, so that a crash before the commit cannot make
     * the publisher's resend a second copy); then MSG_READY, or MSG_REJECTED
     * when it could not be stored (the publisher was told so, and nobody gets
     * it). The only field that changes after msg_new, once, one way. */
    atomic_uchar hold;
    uint8_t qos;
    bool retain;
    uint8_t n_also_to; /* also_to: how many (MSG_ALSO_TO_MANY: more than fit) */
    uint16_t topic_len;
    uint32_t payload_len;
    uint32_t props_len;
    /* Absolute expiry time, milliseconds of the realtime clock; 0 = never. */
    uint64_t expiry_at;
    /* The session that published it (for No Local); compared, never
     * dereferenced. NULL for messages the broker makes itself. */
    const void *origin;
    /* Cluster: the Raft index the route table was at (at least) when this
     * message's destinations were chosen on its origin node; 0 = unknown. */
    uint64_t route_index;
    /* Monotonic ns (metric.h) when a client's PUBLISH of it was decoded, for
     * the publish-to-delivery histogram; 0 when it is not one of the sampled
     * messages (worker.h, WORKER_DELIVERY_SAMPLE). */
    uint64_t born_ns;
    /* Cluster: the message's identity, the same on every path (forwards,
     * late messages of a moved session): the node that received the PUBLISH
     * and that node's own publish number (node/msg_seen.h). 0: none (QoS 0,
     * a single node, or a message read back from a store). */
    uint64_t id_node, id_seq;
    /* Cluster, a forward with an identity: the other nodes its origin
     * forwarded it to (Publish.also_to), for an old copy's owners rule
     * (session_owner_had). With more than MSG_ALSO_TO_MAX, none is listed
     * and n_also_to is MSG_ALSO_TO_MANY (not known). */
    uint64_t also_to[MSG_ALSO_TO_MAX];
    /* topic (not NUL-terminated), then payload, then the encoded MQTT 5.0
     * properties passed through to subscribers unchanged (payload format,
     * content type, response topic, correlation data, user properties). */
    uint8_t data[];
};

/* Whether m's origin forwarded it to `node` too (struct msg.also_to). Not
 * known (MSG_ALSO_TO_MANY: none listed): false. Before, such a message's
 * also_to, never written, was read as listed. */
static inline bool msg_also_to(const struct msg *m, uint64_t node)
{
    for (uint8_t i = 0; m->n_also_to <= MSG_ALSO_TO_MAX && i < m->n_also_to; i++)
        if (m->also_to[i] == node)
            return true;
    return false;
}

/* Allocate a message with one reference. Returns NULL on out of memory. */
struct msg *msg_new(const void *topic, uint16_t topic_len, const void *payload,
                    uint32_t payload_len, const void *props, uint32_t props_len, uint8_t qos,
                    bool retain, uint64_t expiry_at, const void *origin);

static inline struct msg *msg_ref(struct msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

/* Drop a reference (m may be NULL); the last one frees m. Inline: every
 * delivery drops one. */
static inline void msg_unref(struct msg *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        free(m);
}

static inline const char *msg_topic(const struct msg *m)
{
    return (const char *)m->data;
}
static inline const uint8_t *msg_payload(const struct msg *m)
{
    return m->data + m->topic_len;
}
static inline const uint8_t *msg_props(const struct msg *m)
{
    return m->data + m->topic_len + m->payload_len;
}

/* Milliseconds of the realtime clock (for expiry that survives restarts). */
uint64_t msg_now_real_ms(void);

/* Debug logs: the first bytes of a payload, printable (others as '.'),
 * NUL-terminated in buf, which it returns: follows one message through the
 * nodes' logs (the test clients' payloads name publisher and number). */
#define MSG_TAG_LEN 33
const char *msg_tag(const void *payload, size_t len, char buf[MSG_TAG_LEN]);

#endif
