/*
 * fuzz_codec.c - libFuzzer target for the MQTT codec.
 *
 * For each protocol level 3, 4 and 5: frame the input, decode the packet,
 * and when it decodes, encode it again, decode the result and check that
 * the key fields survived the round trip. Also walks user properties and
 * subscription entries. See README.md.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fuzz_check.h"

static int fuzz_bytes_eq(const struct mqtt_bytes *a, const struct mqtt_bytes *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* User properties compared pair by pair (a decoded block may interleave
 * other properties; the encoder writes only the user properties). */
static void fuzz_check_user_props(const struct mqtt_props *a, const struct mqtt_props *b)
{
    uint32_t pa = 0, pb = 0, n = 0;
    struct mqtt_bytes ka, va, kb, vb;
    FUZZ_CHECK(a->n_user_props == b->n_user_props);
    while (mqtt_user_prop_next(a, &pa, &ka, &va)) {
        FUZZ_CHECK(mqtt_user_prop_next(b, &pb, &kb, &vb));
        FUZZ_CHECK(fuzz_bytes_eq(&ka, &kb));
        FUZZ_CHECK(fuzz_bytes_eq(&va, &vb));
        n++;
    }
    FUZZ_CHECK(!mqtt_user_prop_next(b, &pb, &kb, &vb));
    FUZZ_CHECK(n == a->n_user_props);
}

static void fuzz_check_props(const struct mqtt_props *a, const struct mqtt_props *b)
{
    FUZZ_CHECK(a->present == b->present);
    FUZZ_CHECK(a->payload_format == b->payload_format);
    FUZZ_CHECK(a->request_problem_info == b->request_problem_info);
    FUZZ_CHECK(a->request_response_info == b->request_response_info);
    FUZZ_CHECK(a->max_qos == b->max_qos);
    FUZZ_CHECK(a->retain_available == b->retain_available);
    FUZZ_CHECK(a->wildcard_sub_available == b->wildcard_sub_available);
    FUZZ_CHECK(a->sub_id_available == b->sub_id_available);
    FUZZ_CHECK(a->shared_sub_available == b->shared_sub_available);
    FUZZ_CHECK(a->server_keep_alive == b->server_keep_alive);
    FUZZ_CHECK(a->receive_max == b->receive_max);
    FUZZ_CHECK(a->topic_alias_max == b->topic_alias_max);
    FUZZ_CHECK(a->topic_alias == b->topic_alias);
    FUZZ_CHECK(a->message_expiry == b->message_expiry);
    FUZZ_CHECK(a->session_expiry == b->session_expiry);
    FUZZ_CHECK(a->will_delay == b->will_delay);
    FUZZ_CHECK(a->max_packet_size == b->max_packet_size);
    FUZZ_CHECK(fuzz_bytes_eq(&a->content_type, &b->content_type));
    FUZZ_CHECK(fuzz_bytes_eq(&a->response_topic, &b->response_topic));
    FUZZ_CHECK(fuzz_bytes_eq(&a->correlation_data, &b->correlation_data));
    FUZZ_CHECK(fuzz_bytes_eq(&a->assigned_client_id, &b->assigned_client_id));
    FUZZ_CHECK(fuzz_bytes_eq(&a->auth_method, &b->auth_method));
    FUZZ_CHECK(fuzz_bytes_eq(&a->auth_data, &b->auth_data));
    FUZZ_CHECK(fuzz_bytes_eq(&a->response_info, &b->response_info));
    FUZZ_CHECK(fuzz_bytes_eq(&a->server_reference, &b->server_reference));
    FUZZ_CHECK(fuzz_bytes_eq(&a->reason_string, &b->reason_string));
    FUZZ_CHECK(a->n_sub_ids == b->n_sub_ids);
    FUZZ_CHECK(a->sub_id == b->sub_id);
    fuzz_check_user_props(a, b);
}

static void fuzz_check_connect(const struct mqtt_connect *a, const struct mqtt_connect *b)
{
    FUZZ_CHECK(a->protocol_version == b->protocol_version);
    FUZZ_CHECK(fuzz_bytes_eq(&a->protocol_name, &b->protocol_name));
    FUZZ_CHECK(a->clean_start == b->clean_start);
    FUZZ_CHECK(a->will_flag == b->will_flag);
    FUZZ_CHECK(a->will_qos == b->will_qos);
    FUZZ_CHECK(a->will_retain == b->will_retain);
    FUZZ_CHECK(a->username_flag == b->username_flag);
    FUZZ_CHECK(a->password_flag == b->password_flag);
    FUZZ_CHECK(a->keep_alive == b->keep_alive);
    FUZZ_CHECK(fuzz_bytes_eq(&a->client_id, &b->client_id));
    FUZZ_CHECK(fuzz_bytes_eq(&a->will_topic, &b->will_topic));
    FUZZ_CHECK(fuzz_bytes_eq(&a->will_payload, &b->will_payload));
    FUZZ_CHECK(fuzz_bytes_eq(&a->username, &b->username));
    FUZZ_CHECK(fuzz_bytes_eq(&a->password, &b->password));
    fuzz_check_props(&a->props, &b->props);
    fuzz_check_props(&a->will_props, &b->will_props);
}

/* Walk the entries of a SUBSCRIBE / UNSUBSCRIBE in both packets. */
static void fuzz_check_subscribe(enum mqtt_type t, const struct mqtt_subscribe *a,
                                 const struct mqtt_subscribe *b)
{
    uint32_t pa = 0, pb = 0, n = 0;
    struct mqtt_bytes fa, fb;
    uint8_t oa, ob;
    FUZZ_CHECK(a->packet_id == b->packet_id);
    FUZZ_CHECK(a->count == b->count);
    FUZZ_CHECK(fuzz_bytes_eq(&a->entries, &b->entries));
    fuzz_check_props(&a->props, &b->props);
    while (mqtt_sub_next(a, t, &pa, &fa, &oa)) {
        FUZZ_CHECK(mqtt_sub_next(b, t, &pb, &fb, &ob));
        FUZZ_CHECK(fuzz_bytes_eq(&fa, &fb) && oa == ob);
        FUZZ_CHECK(mqtt_utf8_valid(fa.data, fa.len));
        n++;
    }
    FUZZ_CHECK(n == a->count);
}

static void fuzz_check_packet(const struct mqtt_packet *a, const struct mqtt_packet *b)
{
    FUZZ_CHECK(a->type == b->type);
    FUZZ_CHECK(a->flags == b->flags);
    switch (a->type) {
    case MQTT_CONNECT:
        fuzz_check_connect(&a->u.connect, &b->u.connect);
        break;
    case MQTT_CONNACK:
        FUZZ_CHECK(a->u.connack.session_present == b->u.connack.session_present);
        FUZZ_CHECK(a->u.connack.reason == b->u.connack.reason);
        fuzz_check_props(&a->u.connack.props, &b->u.connack.props);
        break;
    case MQTT_PUBLISH:
        FUZZ_CHECK(a->u.publish.dup == b->u.publish.dup);
        FUZZ_CHECK(a->u.publish.qos == b->u.publish.qos);
        FUZZ_CHECK(a->u.publish.retain == b->u.publish.retain);
        FUZZ_CHECK(a->u.publish.packet_id == b->u.publish.packet_id);
        FUZZ_CHECK(fuzz_bytes_eq(&a->u.publish.topic, &b->u.publish.topic));
        FUZZ_CHECK(fuzz_bytes_eq(&a->u.publish.payload, &b->u.publish.payload));
        fuzz_check_props(&a->u.publish.props, &b->u.publish.props);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        FUZZ_CHECK(a->u.ack.packet_id == b->u.ack.packet_id);
        FUZZ_CHECK(a->u.ack.reason == b->u.ack.reason);
        fuzz_check_props(&a->u.ack.props, &b->u.ack.props);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        fuzz_check_subscribe(a->type, &a->u.subscribe, &b->u.subscribe);
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        FUZZ_CHECK(a->u.suback.packet_id == b->u.suback.packet_id);
        FUZZ_CHECK(a->u.suback.n_reasons == b->u.suback.n_reasons);
        FUZZ_CHECK(a->u.suback.n_reasons == 0 ||
                   memcmp(a->u.suback.reasons, b->u.suback.reasons, a->u.suback.n_reasons) == 0);
        fuzz_check_props(&a->u.suback.props, &b->u.suback.props);
        break;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        FUZZ_CHECK(a->u.disconnect.reason == b->u.disconnect.reason);
        fuzz_check_props(&a->u.disconnect.props, &b->u.disconnect.props);
        break;
    default:
        break;
    }
}

static const struct mqtt_props *fuzz_props_of(const struct mqtt_packet *p)
{
    switch (p->type) {
    case MQTT_PUBLISH:
        return &p->u.publish.props;
    default:
        return NULL;
    }
}

static void fuzz_one(uint8_t version, const uint8_t *data, size_t size)
{
    uint32_t hdr = 0;
    long n = mqtt_frame(data, size, 1u << 20, &hdr);
    if (n <= 0)
        return;
    FUZZ_CHECK((size_t)n <= size && hdr >= 2 && hdr <= 5);

    struct mqtt_packet a;
    int rc = mqtt_decode(version, data, (size_t)n, &a);
    (void)mqtt_rc_str((uint8_t)-rc);
    (void)mqtt_type_str(a.type);
    if (rc != 0) {
        FUZZ_CHECK(rc == -MQTT_RC_MALFORMED || rc == -MQTT_RC_PROTOCOL_ERROR ||
                   rc == -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
        return;
    }
    uint8_t ev = a.type == MQTT_CONNECT ? a.u.connect.protocol_version : version;

    struct buf out = {0};
    long m = mqtt_encode(&out, ev, &a);
    const struct mqtt_props *pp = fuzz_props_of(&a);
    if (pp && pp->n_sub_ids > 1) {
        /* A decoded block keeps only the first subscription identifier. */
        FUZZ_CHECK(m == -EINVAL);
        buf_free(&out);
        return;
    }
    FUZZ_CHECK(m > 0 && (size_t)m == out.len);

    uint32_t hdr2 = 0;
    long n2 = mqtt_frame(out.data, out.len, 0, &hdr2);
    FUZZ_CHECK(n2 == m);
    struct mqtt_packet b;
    rc = mqtt_decode(version, out.data, out.len, &b);
    FUZZ_CHECK(rc == 0);
    fuzz_check_packet(&a, &b);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy so that any read past the end is caught by ASan. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    for (uint8_t v = MQTT_V31; v <= MQTT_V5; v++)
        fuzz_one(v, copy, size);
    (void)mqtt_utf8_valid(copy, size);
    free(copy);
    return 0;
}
