/*
 * handle.h - the MQTT packet handlers of a connection, one file per kind of
 * packet (as Eclipse Mosquitto splits them):
 *
 *   handle_connect.c    CONNECT: checks, the will, the claim of the client id
 *                       (registry.h), CONNACK, resumption
 *   handle_publish.c    PUBLISH from the client: topic aliases, checks, the
 *                       message, broker_publish, the acknowledgement
 *   handle_subscribe.c  SUBSCRIBE (with retained messages) and UNSUBSCRIBE
 *   handle_ack.c        PUBACK, PUBREC, PUBREL, PUBCOMP
 *   handle_ping.c       PINGREQ and DISCONNECT
 *
 * Called by conn.c's dispatch on the connection's worker with a fully
 * validated packet (codec.h); c->session is set for every packet after
 * CONNECT. A handler answers through conn_send / ackq.h and may close the
 * connection.
 */
#ifndef STARLING_HANDLE_H
#define STARLING_HANDLE_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "codec.h"
#include "config.h"
#include "topic.h"

struct conn;

/* Does a topic name or filter have more levels than max_topic_levels? Such
 * topics are refused, as Mosquitto refuses more than 200 levels. */
static inline bool handle_topic_too_deep(const struct config *cfg, const char *t, size_t len)
{
    return cfg->max_topic_levels && topic_levels(t, len) > cfg->max_topic_levels;
}

void handle_connect(struct conn *c, const struct mqtt_connect *ck);
/* Answer a CONNECT with a refusing CONNACK (reason: 5.0 reason code or 3.1.1
 * return code) and close. */
void handle_connect_refuse(struct conn *c, uint8_t version, uint8_t reason);

void handle_publish(struct conn *c, struct mqtt_publish *p);
/* A QoS 2 PUBLISH that waits for the session's old owner's ids (struct
 * session.blind_until), or one those ids answer: returns true when it was
 * taken here (parked, or acknowledged as received), false when
 * handle_publish is to take it. data/len: the packet as read. */
bool handle_publish_park(struct conn *c, const struct mqtt_publish *p, const uint8_t *data,
                         size_t len);
/* The parked PUBLISH packets whose wait is over (the ids came, or the
 * session's blind_until passed): taken now, in their order. Worker thread
 * of c (its tick, and a post when the ids come). */
void handle_publish_unpark(struct conn *c);
/* The properties a message passes through to subscribers unchanged (payload
 * format, content type, response topic, correlation data, user properties),
 * encoded into out without their length prefix. Returns 0 or -ENOMEM. */
int handle_passthrough_props(const struct mqtt_props *in, struct buf *out);

void handle_subscribe(struct conn *c, const struct mqtt_subscribe *sub);
void handle_unsubscribe(struct conn *c, const struct mqtt_subscribe *sub);

/* type: MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL or MQTT_PUBCOMP. */
void handle_ack(struct conn *c, enum mqtt_type type, const struct mqtt_ack *a);

void handle_pingreq(struct conn *c);
void handle_disconnect(struct conn *c, const struct mqtt_disconnect *d);

#endif
