/*
 * msg.c - reference-counted messages (see msg.h).
 */
#include "msg.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct msg *msg_new(const void *topic, uint16_t topic_len, const void *payload,
                    uint32_t payload_len, const void *props, uint32_t props_len, uint8_t qos,
                    bool retain, uint64_t expiry_at, const void *origin)
{
    struct msg *m = malloc(sizeof(*m) + (size_t)topic_len + payload_len + props_len);
    if (!m)
        return NULL;
    atomic_init(&m->refs, 1);
    atomic_init(&m->hold, MSG_READY);
    m->qos = qos;
    m->retain = retain;
    m->topic_len = topic_len;
    m->payload_len = payload_len;
    m->props_len = props_len;
    m->expiry_at = expiry_at;
    m->origin = origin;
    m->route_index = 0;
    m->born_ns = 0;
    m->id_node = m->id_seq = 0;
    m->n_also_to = 0;
    if (topic_len)
        memcpy(m->data, topic, topic_len);
    if (payload_len)
        memcpy(m->data + topic_len, payload, payload_len);
    if (props_len)
        memcpy(m->data + topic_len + payload_len, props, props_len);
    return m;
}

uint64_t msg_now_real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *msg_tag(const void *payload, size_t len, char buf[MSG_TAG_LEN])
{
    const unsigned char *p = payload;
    size_t n = len < MSG_TAG_LEN - 1 ? len : MSG_TAG_LEN - 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
    buf[n] = '\0';
    return buf;
}
