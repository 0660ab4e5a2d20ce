/*
 * test_codec.c - unit tests for the MQTT codec (node/codec.c).
 *
 * Round trips for every packet type in 3.1.1 and 5.0, framing, and one test
 * per malformed / protocol error case with hand-written packets.
 */
#include <CUnit/Basic.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define MAL (-MQTT_RC_MALFORMED)
#define PERR (-MQTT_RC_PROTOCOL_ERROR)

/* A string literal as struct mqtt_bytes. */
#define B(s) ((struct mqtt_bytes){(const uint8_t *)(s), sizeof(s) - 1})

/* Decode a hand-written packet; also checks that mqtt_frame agrees with the
 * remaining length written in the array. */
#define DEC(v, ...)                                                                                \
    dec_bytes((v), (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}), NULL)
#define DECP(v, pkt, ...)                                                                          \
    dec_bytes((v), (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}), (pkt))

static struct buf g_out;
/* The last decoded input, copied to the heap with its exact size (so that
 * ASan catches any read past the end) and kept alive for the decoded
 * packet's pointers until the next decode. */
static uint8_t *g_in;

static int dec_bytes(uint8_t v, const uint8_t *p, size_t n, struct mqtt_packet *pkt)
{
    struct mqtt_packet tmp;
    uint32_t hdr = 0;
    free(g_in);
    g_in = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g_in);
    memcpy(g_in, p, n);
    CU_ASSERT_EQUAL(mqtt_frame(g_in, n, 0, &hdr), (long)n);
    return mqtt_decode(v, g_in, n, pkt ? pkt : &tmp);
}

static bool bytes_eq(struct mqtt_bytes a, struct mqtt_bytes b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

/* Encode into g_out, check framing, decode. */
static int roundtrip(uint8_t v, const struct mqtt_packet *in, struct mqtt_packet *out)
{
    buf_reset(&g_out);
    long n = mqtt_encode(&g_out, v, in);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL(n, (long)g_out.len);
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(g_out.data, g_out.len, 0, &hdr), n);
    return mqtt_decode(v, g_out.data, g_out.len, out);
}

/* Append an encoded user property (0x26, key, value). */
static void user_prop_add(struct buf *b, struct mqtt_props *p, const char *k, const char *v)
{
    size_t start = b->len;
    CU_ASSERT_EQUAL(buf_put_u8(b, MQTT_PROP_USER_PROPERTY), 0);
    CU_ASSERT_EQUAL(buf_put_str(b, k, (uint16_t)strlen(k)), 0);
    CU_ASSERT_EQUAL(buf_put_str(b, v, (uint16_t)strlen(v)), 0);
    (void)start;
    p->user_props.data = b->data;
    p->user_props.len = (uint32_t)b->len;
    p->n_user_props++;
    p->present |= MQTT_PF(MQTT_PROP_USER_PROPERTY);
}

static void assert_user_props(const struct mqtt_props *a, const struct mqtt_props *b)
{
    uint32_t pa = 0, pb = 0, n = 0;
    struct mqtt_bytes ka, va, kb, vb;
    CU_ASSERT_EQUAL(a->n_user_props, b->n_user_props);
    while (mqtt_user_prop_next(a, &pa, &ka, &va)) {
        CU_ASSERT_FATAL(mqtt_user_prop_next(b, &pb, &kb, &vb));
        CU_ASSERT(bytes_eq(ka, kb));
        CU_ASSERT(bytes_eq(va, vb));
        n++;
    }
    CU_ASSERT_FALSE(mqtt_user_prop_next(b, &pb, &kb, &vb));
    CU_ASSERT_EQUAL(n, a->n_user_props);
}

/* Every property field of the decoded block b equals the input a. */
static void assert_props(const struct mqtt_props *a, const struct mqtt_props *b)
{
    CU_ASSERT_EQUAL(a->present, b->present);
    CU_ASSERT_EQUAL(a->payload_format, b->payload_format);
    CU_ASSERT_EQUAL(a->request_problem_info, b->request_problem_info);
    CU_ASSERT_EQUAL(a->request_response_info, b->request_response_info);
    CU_ASSERT_EQUAL(a->max_qos, b->max_qos);
    CU_ASSERT_EQUAL(a->retain_available, b->retain_available);
    CU_ASSERT_EQUAL(a->wildcard_sub_available, b->wildcard_sub_available);
    CU_ASSERT_EQUAL(a->sub_id_available, b->sub_id_available);
    CU_ASSERT_EQUAL(a->shared_sub_available, b->shared_sub_available);
    CU_ASSERT_EQUAL(a->server_keep_alive, b->server_keep_alive);
    CU_ASSERT_EQUAL(a->receive_max, b->receive_max);
    CU_ASSERT_EQUAL(a->topic_alias_max, b->topic_alias_max);
    CU_ASSERT_EQUAL(a->topic_alias, b->topic_alias);
    CU_ASSERT_EQUAL(a->message_expiry, b->message_expiry);
    CU_ASSERT_EQUAL(a->session_expiry, b->session_expiry);
    CU_ASSERT_EQUAL(a->will_delay, b->will_delay);
    CU_ASSERT_EQUAL(a->max_packet_size, b->max_packet_size);
    CU_ASSERT(bytes_eq(a->content_type, b->content_type));
    CU_ASSERT(bytes_eq(a->response_topic, b->response_topic));
    CU_ASSERT(bytes_eq(a->correlation_data, b->correlation_data));
    CU_ASSERT(bytes_eq(a->assigned_client_id, b->assigned_client_id));
    CU_ASSERT(bytes_eq(a->auth_method, b->auth_method));
    CU_ASSERT(bytes_eq(a->auth_data, b->auth_data));
    CU_ASSERT(bytes_eq(a->response_info, b->response_info));
    CU_ASSERT(bytes_eq(a->server_reference, b->server_reference));
    CU_ASSERT(bytes_eq(a->reason_string, b->reason_string));
    CU_ASSERT_EQUAL(a->n_sub_ids, b->n_sub_ids);
    if (a->n_sub_ids)
        CU_ASSERT_EQUAL(a->sub_ids ? a->sub_ids[0] : a->sub_id, b->sub_id);
    CU_ASSERT_PTR_NULL(b->sub_ids);
    CU_ASSERT_EQUAL(b->raw.len, 0);
    assert_user_props(a, b);
}

static bool props_empty(const struct mqtt_props *p)
{
    return p->present == 0 && p->n_user_props == 0 && p->n_sub_ids == 0;
}

/* ------------------------------------------------------------------------ */
/* Framing                                                                   */
/* ------------------------------------------------------------------------ */

static void test_frame_incomplete(void)
{
    const uint8_t p[] = {0x30, 0x80, 0x01};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, 0, 0, &hdr), 0);
    CU_ASSERT_EQUAL(mqtt_frame(p, 1, 0, &hdr), 0);
    CU_ASSERT_EQUAL(mqtt_frame(p, 2, 0, &hdr), 0); /* varint continues */
    CU_ASSERT_EQUAL(mqtt_frame(p, 3, 0, &hdr), 0); /* header known, body missing */
    CU_ASSERT_EQUAL(hdr, 3);
}

static void test_frame_complete(void)
{
    const uint8_t p[] = {0xC0, 0x00, 0xD0, 0x00};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 0, &hdr), 2);
    CU_ASSERT_EQUAL(hdr, 2);
    const uint8_t q[] = {0x30, 0x03, 0x00, 0x01, 't', 0xFF};
    CU_ASSERT_EQUAL(mqtt_frame(q, sizeof(q), 100, &hdr), 5);
}

static void test_frame_varint_max(void)
{
    const uint8_t p[] = {0x30, 0xFF, 0xFF, 0xFF, 0x7F};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 0, &hdr), 0);
    CU_ASSERT_EQUAL(hdr, 5);
    /* 1 + 4 + 268435455 bytes */
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 268435460u, &hdr), 0);
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 268435459u, &hdr), -MQTT_RC_PACKET_TOO_LARGE);
    const uint8_t q[] = {0x30, 0x80, 0x80, 0x80, 0x01}; /* 2097152 */
    CU_ASSERT_EQUAL(mqtt_frame(q, sizeof(q), 0, &hdr), 0);
    CU_ASSERT_EQUAL(hdr, 5);
}

static void test_frame_varint_5_bytes(void)
{
    const uint8_t p[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 0, &hdr), MAL);
    /* The fourth byte's continuation bit alone is enough to know. */
    CU_ASSERT_EQUAL(mqtt_frame(p, 5, 0, &hdr), MAL);
}

static void test_frame_varint_not_minimal(void)
{
    const uint8_t p[] = {0x30, 0x80, 0x00};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 0, &hdr), MAL);
}

static void test_frame_type_zero(void)
{
    const uint8_t p[] = {0x00, 0x00};
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 0, &hdr), MAL);
    CU_ASSERT_EQUAL(mqtt_decode(MQTT_V311, p, sizeof(p), &(struct mqtt_packet){0}), MAL);
}

static void test_frame_too_large(void)
{
    const uint8_t p[] = {0x30, 0xE8, 0x07}; /* remaining 1000: total 1003 */
    uint32_t hdr = 0;
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 1002, &hdr), -MQTT_RC_PACKET_TOO_LARGE);
    CU_ASSERT_EQUAL(hdr, 3);
    CU_ASSERT_EQUAL(mqtt_frame(p, sizeof(p), 1003, &hdr), 0);
}

static void test_decode_length_mismatch(void)
{
    const uint8_t p[] = {0xC0, 0x00, 0x00};
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(mqtt_decode(MQTT_V311, p, sizeof(p), &pkt), MAL);
    CU_ASSERT_EQUAL(mqtt_decode(MQTT_V311, p, 1, &pkt), MAL);
    const uint8_t q[] = {0x30, 0x05, 0x00, 0x01, 't'};
    CU_ASSERT_EQUAL(mqtt_decode(MQTT_V311, q, sizeof(q), &pkt), MAL);
}

/* ------------------------------------------------------------------------ */
/* Round trips: MQTT 3.1.1 and 3.1                                           */
/* ------------------------------------------------------------------------ */

static void check_connect_v3(uint8_t v)
{
    struct mqtt_packet in = {.type = MQTT_CONNECT}, out;
    struct mqtt_connect *c = &in.u.connect;
    c->clean_start = true;
    c->will_flag = true;
    c->will_qos = 2;
    c->will_retain = true;
    c->username_flag = true;
    c->password_flag = true;
    c->keep_alive = 60;
    c->client_id = B("client-1");
    c->will_topic = B("will/t\xC3\xA9");
    c->will_payload = B("bye\0x");
    c->username = B("user");
    c->password = B("p\0ss");
    CU_ASSERT_EQUAL_FATAL(roundtrip(v, &in, &out), 0);
    const struct mqtt_connect *d = &out.u.connect;
    CU_ASSERT_EQUAL(out.type, MQTT_CONNECT);
    CU_ASSERT_EQUAL(out.flags, 0);
    CU_ASSERT_EQUAL(d->protocol_version, v);
    CU_ASSERT(bytes_eq(d->protocol_name, v == MQTT_V31 ? B("MQIsdp") : B("MQTT")));
    CU_ASSERT(d->clean_start && d->will_flag && d->will_retain);
    CU_ASSERT_EQUAL(d->will_qos, 2);
    CU_ASSERT(d->username_flag && d->password_flag);
    CU_ASSERT_EQUAL(d->keep_alive, 60);
    CU_ASSERT(bytes_eq(d->client_id, c->client_id));
    CU_ASSERT(bytes_eq(d->will_topic, c->will_topic));
    CU_ASSERT(bytes_eq(d->will_payload, c->will_payload));
    CU_ASSERT(bytes_eq(d->username, c->username));
    CU_ASSERT(bytes_eq(d->password, c->password));
    CU_ASSERT(props_empty(&d->props) && props_empty(&d->will_props));
}

static void test_v311_connect(void)
{
    check_connect_v3(MQTT_V311);
    /* Minimal: empty client id, nothing else. */
    struct mqtt_packet in = {.type = MQTT_CONNECT}, out;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.connect.client_id.len, 0);
    CU_ASSERT_FALSE(out.u.connect.clean_start || out.u.connect.will_flag);
    const uint8_t expect[] = {0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(g_out.len, sizeof(expect));
    CU_ASSERT(memcmp(g_out.data, expect, sizeof(expect)) == 0);
}

static void test_v31_connect(void)
{
    check_connect_v3(MQTT_V31);
    struct mqtt_packet pkt;
    /* MQIsdp level 3, hand-written */
    CU_ASSERT_EQUAL(
        DECP(0, &pkt, 0x10, 15, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3, 0x02, 0, 0x3C, 0, 1, 'a'),
        0);
    CU_ASSERT_EQUAL(pkt.u.connect.protocol_version, MQTT_V31);
    CU_ASSERT(bytes_eq(pkt.u.connect.client_id, B("a")));
}

static void test_v311_connack(void)
{
    struct mqtt_packet in = {.type = MQTT_CONNACK}, out;
    in.u.connack.session_present = true;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 4); /* 3.1.1 CONNACK: 2 bytes of variable header */
    CU_ASSERT(out.u.connack.session_present);
    CU_ASSERT_EQUAL(out.u.connack.reason, 0);
    in.u.connack.session_present = false;
    in.u.connack.reason = MQTT3_CONNACK_NOT_AUTHORIZED;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_FALSE(out.u.connack.session_present);
    CU_ASSERT_EQUAL(out.u.connack.reason, MQTT3_CONNACK_NOT_AUTHORIZED);
    const uint8_t expect[] = {0x20, 2, 0, 5};
    CU_ASSERT(memcmp(g_out.data, expect, 4) == 0);
}

/* MQTT 3.1 has no session present flag: the byte is reserved, 0. */
static void test_v31_connack_has_no_session_present(void)
{
    struct mqtt_packet in = {.type = MQTT_CONNACK}, out;
    in.u.connack.session_present = true;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V31, &in, &out), 0);
    const uint8_t expect[] = {0x20, 2, 0, 0};
    CU_ASSERT_EQUAL(g_out.len, sizeof(expect));
    CU_ASSERT(memcmp(g_out.data, expect, sizeof(expect)) == 0);
    CU_ASSERT_FALSE(out.u.connack.session_present);
    /* and a 3.1 CONNACK's first byte is ignored when decoded */
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(MQTT_V31, &pkt, 0x20, 2, 0x01, 0), 0);
    CU_ASSERT_FALSE(pkt.u.connack.session_present);
    CU_ASSERT_EQUAL(DECP(MQTT_V311, &pkt, 0x20, 2, 0x01, 0), 0);
    CU_ASSERT_TRUE(pkt.u.connack.session_present);
}

/* PUBLISH without properties takes mqtt_encode's direct path: exact bytes,
 * a two-byte remaining length, appending after earlier output, and the
 * same bytes as the general path gives once a property is present. */
static void test_publish_plain_bytes(void)
{
    struct mqtt_packet p = {.type = MQTT_PUBLISH};
    p.u.publish.qos = 1;
    p.u.publish.dup = true;
    p.u.publish.retain = true;
    p.u.publish.packet_id = 0x1234;
    p.u.publish.topic = B("a/b");
    p.u.publish.payload = B("xyz");
    struct buf out = {0};
    buf_append(&out, "pre", 3);
    CU_ASSERT_EQUAL(mqtt_encode(&out, MQTT_V311, &p), 12);
    const uint8_t v3[] = {'p', 'r', 'e', 0x3B, 10, 0, 3, 'a', '/', 'b', 0x12, 0x34, 'x', 'y', 'z'};
    CU_ASSERT_EQUAL_FATAL(out.len, sizeof(v3));
    CU_ASSERT(memcmp(out.data, v3, sizeof(v3)) == 0);
    /* 5.0, QoS 0: no packet id, a zero property length */
    buf_reset(&out);
    p.u.publish.qos = 0;
    p.u.publish.dup = false;
    CU_ASSERT_EQUAL(mqtt_encode(&out, MQTT_V5, &p), 11);
    const uint8_t v5[] = {0x31, 9, 0, 3, 'a', '/', 'b', 0, 'x', 'y', 'z'};
    CU_ASSERT_EQUAL_FATAL(out.len, sizeof(v5));
    CU_ASSERT(memcmp(out.data, v5, sizeof(v5)) == 0);
    /* 200-byte payload: remaining length 2 + 3 + 1 + 200 = 206 = 0xCE 0x01 */
    uint8_t big[200];
    memset(big, 'p', sizeof(big));
    p.u.publish.payload = (struct mqtt_bytes){big, sizeof(big)};
    buf_reset(&out);
    CU_ASSERT_EQUAL(mqtt_encode(&out, MQTT_V5, &p), 209);
    CU_ASSERT_EQUAL(out.data[1], 0xCE);
    CU_ASSERT_EQUAL(out.data[2], 0x01);
    CU_ASSERT_EQUAL(out.data[8], 0); /* property length */
    CU_ASSERT(memcmp(out.data + 9, big, sizeof(big)) == 0);
    /* with a property present the general path writes it: only the
     * property bytes differ from the plain packet */
    struct buf gen = {0};
    p.u.publish.props.present = MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT);
    p.u.publish.props.payload_format = 1;
    CU_ASSERT_EQUAL(mqtt_encode(&gen, MQTT_V5, &p), 211);
    CU_ASSERT_EQUAL(gen.data[1], 0xD0); /* 208 */
    CU_ASSERT_EQUAL(gen.data[8], 2);
    CU_ASSERT_EQUAL(gen.data[9], MQTT_PROP_PAYLOAD_FORMAT);
    CU_ASSERT(memcmp(gen.data + 3, out.data + 3, 5) == 0);
    CU_ASSERT(memcmp(gen.data + 11, out.data + 9, sizeof(big)) == 0);
    /* a topic longer than a string can be is refused, nothing written */
    buf_reset(&out);
    static uint8_t long_topic[65536];
    p.u.publish.props.present = 0;
    p.u.publish.topic = (struct mqtt_bytes){long_topic, sizeof(long_topic)};
    CU_ASSERT(mqtt_encode(&out, MQTT_V311, &p) < 0);
    CU_ASSERT_EQUAL(out.len, 0);
    buf_free(&gen);
    buf_free(&out);
}

static void check_publish(uint8_t v, uint8_t qos, bool dup, bool retain)
{
    struct mqtt_packet in = {.type = MQTT_PUBLISH}, out;
    struct mqtt_publish *p = &in.u.publish;
    p->qos = qos;
    p->dup = dup;
    p->retain = retain;
    p->topic = B("a/b/c");
    p->packet_id = qos ? 0x1234 : 0;
    p->payload = B("hello\0world");
    CU_ASSERT_EQUAL_FATAL(roundtrip(v, &in, &out), 0);
    const struct mqtt_publish *d = &out.u.publish;
    CU_ASSERT_EQUAL(out.type, MQTT_PUBLISH);
    CU_ASSERT_EQUAL(out.flags, (dup ? 8 : 0) | qos << 1 | (retain ? 1 : 0));
    CU_ASSERT_EQUAL(d->qos, qos);
    CU_ASSERT_EQUAL(d->dup, dup);
    CU_ASSERT_EQUAL(d->retain, retain);
    CU_ASSERT(bytes_eq(d->topic, p->topic));
    CU_ASSERT_EQUAL(d->packet_id, p->packet_id);
    CU_ASSERT(bytes_eq(d->payload, p->payload));
    CU_ASSERT(props_empty(&d->props));
}

static void test_v311_publish(void)
{
    check_publish(MQTT_V311, 0, false, false);
    check_publish(MQTT_V311, 0, false, true);
    check_publish(MQTT_V311, 1, false, false);
    check_publish(MQTT_V311, 2, true, true);
    /* Empty payload */
    struct mqtt_packet in = {.type = MQTT_PUBLISH}, out;
    in.u.publish.topic = B("t");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.publish.payload.len, 0);
    CU_ASSERT_EQUAL(g_out.len, 5);
}

static void check_acks(uint8_t v)
{
    const enum mqtt_type types[] = {MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL, MQTT_PUBCOMP};
    for (size_t i = 0; i < 4; i++) {
        struct mqtt_packet in = {.type = types[i]}, out;
        in.u.ack.packet_id = (uint16_t)(0xFFF0 + i);
        CU_ASSERT_EQUAL_FATAL(roundtrip(v, &in, &out), 0);
        CU_ASSERT_EQUAL(g_out.len, 4);
        CU_ASSERT_EQUAL(g_out.data[0], types[i] << 4 | (types[i] == MQTT_PUBREL ? 2 : 0));
        CU_ASSERT_EQUAL(out.type, types[i]);
        CU_ASSERT_EQUAL(out.u.ack.packet_id, 0xFFF0 + i);
        CU_ASSERT_EQUAL(out.u.ack.reason, 0);
        CU_ASSERT(props_empty(&out.u.ack.props));
    }
}

static void test_v311_acks(void)
{
    check_acks(MQTT_V311);
}

static void test_v311_subscribe(void)
{
    struct buf e = {0};
    struct mqtt_packet in = {.type = MQTT_SUBSCRIBE}, out;
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_SUBSCRIBE, "a/+", 3, 0), 0);
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_SUBSCRIBE, "b/#", 3, 1), 0);
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_SUBSCRIBE, "c", 1, 2), 0);
    in.u.subscribe.packet_id = 7;
    in.u.subscribe.entries = (struct mqtt_bytes){e.data, (uint32_t)e.len};
    in.u.subscribe.count = 3;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(out.flags, 2);
    CU_ASSERT_EQUAL(out.u.subscribe.packet_id, 7);
    CU_ASSERT_EQUAL(out.u.subscribe.count, 3);
    uint32_t pos = 0;
    struct mqtt_bytes f;
    uint8_t o;
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_SUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("a/+")) && o == 0);
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_SUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("b/#")) && o == 1);
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_SUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("c")) && o == 2);
    CU_ASSERT_FALSE(mqtt_sub_next(&out.u.subscribe, MQTT_SUBSCRIBE, &pos, &f, &o));
    buf_free(&e);
}

static void test_v311_suback(void)
{
    const uint8_t rc[] = {0, 1, 2, 0x80};
    struct mqtt_packet in = {.type = MQTT_SUBACK}, out;
    in.u.suback.packet_id = 7;
    in.u.suback.reasons = rc;
    in.u.suback.n_reasons = 4;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.suback.packet_id, 7);
    CU_ASSERT_EQUAL_FATAL(out.u.suback.n_reasons, 4);
    CU_ASSERT(memcmp(out.u.suback.reasons, rc, 4) == 0);
}

static void test_v311_unsubscribe(void)
{
    struct buf e = {0};
    struct mqtt_packet in = {.type = MQTT_UNSUBSCRIBE}, out;
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_UNSUBSCRIBE, "a/+", 3, 0xFF), 0);
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_UNSUBSCRIBE, "b", 1, 0), 0);
    CU_ASSERT_EQUAL(e.len, 8); /* no options byte */
    in.u.subscribe.packet_id = 9;
    in.u.subscribe.entries = (struct mqtt_bytes){e.data, (uint32_t)e.len};
    in.u.subscribe.count = 2;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(out.flags, 2);
    CU_ASSERT_EQUAL(out.u.subscribe.packet_id, 9);
    CU_ASSERT_EQUAL(out.u.subscribe.count, 2);
    uint32_t pos = 0;
    struct mqtt_bytes f;
    uint8_t o = 0xAA;
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_UNSUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("a/+")) && o == 0);
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_UNSUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("b")));
    CU_ASSERT_FALSE(mqtt_sub_next(&out.u.subscribe, MQTT_UNSUBSCRIBE, &pos, &f, &o));
    buf_free(&e);
}

static void test_v311_unsuback(void)
{
    const uint8_t rc[] = {0};
    struct mqtt_packet in = {.type = MQTT_UNSUBACK}, out;
    in.u.suback.packet_id = 9;
    in.u.suback.reasons = rc; /* ignored in 3.1.1 */
    in.u.suback.n_reasons = 1;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 4);
    CU_ASSERT_EQUAL(out.u.suback.packet_id, 9);
    CU_ASSERT_EQUAL(out.u.suback.n_reasons, 0);
}

static void check_empty_packet(uint8_t v, enum mqtt_type t)
{
    struct mqtt_packet in = {.type = t}, out;
    CU_ASSERT_EQUAL_FATAL(roundtrip(v, &in, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 2);
    CU_ASSERT_EQUAL(g_out.data[0], t << 4);
    CU_ASSERT_EQUAL(g_out.data[1], 0);
    CU_ASSERT_EQUAL(out.type, t);
}

static void test_v311_ping_disconnect(void)
{
    check_empty_packet(MQTT_V311, MQTT_PINGREQ);
    check_empty_packet(MQTT_V311, MQTT_PINGRESP);
    check_empty_packet(MQTT_V311, MQTT_DISCONNECT);
    /* A reason code is not part of 3.1.1: still 2 bytes. */
    struct mqtt_packet in = {.type = MQTT_DISCONNECT}, out;
    in.u.disconnect.reason = 0x8B;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V311, &in, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 2);
}

/* ------------------------------------------------------------------------ */
/* Round trips: MQTT 5.0                                                     */
/* ------------------------------------------------------------------------ */

static void test_v5_connect(void)
{
    struct buf u = {0}, wu = {0};
    struct mqtt_packet in = {.type = MQTT_CONNECT}, out;
    struct mqtt_connect *c = &in.u.connect;
    struct mqtt_props *p = &c->props, *w = &c->will_props;
    c->clean_start = true;
    c->will_flag = true;
    c->will_qos = 1;
    c->username_flag = true;
    c->password_flag = true;
    c->keep_alive = 0xFFFF;
    c->client_id = B("id");
    c->will_topic = B("will");
    c->will_payload = B("\x00\x01\x02");
    c->username = B("u");
    c->password = B("pw");
    p->present = MQTT_PF(MQTT_PROP_SESSION_EXPIRY) | MQTT_PF(MQTT_PROP_AUTH_METHOD) |
                 MQTT_PF(MQTT_PROP_AUTH_DATA) | MQTT_PF(MQTT_PROP_REQUEST_PROBLEM_INFO) |
                 MQTT_PF(MQTT_PROP_REQUEST_RESPONSE_INFO) | MQTT_PF(MQTT_PROP_RECEIVE_MAX) |
                 MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX) | MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE);
    p->session_expiry = 0xFFFFFFFF;
    p->auth_method = B("SCRAM-SHA-1");
    p->auth_data = B("\x01\x00\x02");
    p->request_problem_info = 0;
    p->request_response_info = 1;
    p->receive_max = 20;
    p->topic_alias_max = 10;
    p->max_packet_size = 1 << 20;
    user_prop_add(&u, p, "k1", "v1");
    user_prop_add(&u, p, "k1", "v2");
    w->present = MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT) | MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY) |
                 MQTT_PF(MQTT_PROP_CONTENT_TYPE) | MQTT_PF(MQTT_PROP_RESPONSE_TOPIC) |
                 MQTT_PF(MQTT_PROP_CORRELATION_DATA) | MQTT_PF(MQTT_PROP_WILL_DELAY);
    w->payload_format = 1;
    w->message_expiry = 3600;
    w->content_type = B("text/plain");
    w->response_topic = B("resp/t");
    w->correlation_data = B("\xFF\x00");
    w->will_delay = 30;
    user_prop_add(&wu, w, "wk", "");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    const struct mqtt_connect *d = &out.u.connect;
    CU_ASSERT_EQUAL(d->protocol_version, MQTT_V5);
    CU_ASSERT(bytes_eq(d->protocol_name, B("MQTT")));
    CU_ASSERT(d->clean_start && d->will_flag && !d->will_retain);
    CU_ASSERT_EQUAL(d->will_qos, 1);
    CU_ASSERT(d->username_flag && d->password_flag);
    CU_ASSERT_EQUAL(d->keep_alive, 0xFFFF);
    CU_ASSERT(bytes_eq(d->client_id, c->client_id));
    CU_ASSERT(bytes_eq(d->will_topic, c->will_topic));
    CU_ASSERT(bytes_eq(d->will_payload, c->will_payload));
    CU_ASSERT(bytes_eq(d->username, c->username));
    CU_ASSERT(bytes_eq(d->password, c->password));
    assert_props(p, &d->props);
    assert_props(w, &d->will_props);
    CU_ASSERT_EQUAL(d->props.n_user_props, 2);
    buf_free(&u);
    buf_free(&wu);
}

static void test_v5_connack(void)
{
    struct buf u = {0};
    struct mqtt_packet in = {.type = MQTT_CONNACK}, out;
    struct mqtt_props *p = &in.u.connack.props;
    in.u.connack.session_present = true;
    p->present = MQTT_PF(MQTT_PROP_SESSION_EXPIRY) | MQTT_PF(MQTT_PROP_ASSIGNED_CLIENT_ID) |
                 MQTT_PF(MQTT_PROP_SERVER_KEEP_ALIVE) | MQTT_PF(MQTT_PROP_AUTH_METHOD) |
                 MQTT_PF(MQTT_PROP_AUTH_DATA) | MQTT_PF(MQTT_PROP_RESPONSE_INFO) |
                 MQTT_PF(MQTT_PROP_SERVER_REFERENCE) | MQTT_PF(MQTT_PROP_REASON_STRING) |
                 MQTT_PF(MQTT_PROP_RECEIVE_MAX) | MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX) |
                 MQTT_PF(MQTT_PROP_MAX_QOS) | MQTT_PF(MQTT_PROP_RETAIN_AVAILABLE) |
                 MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE) | MQTT_PF(MQTT_PROP_WILDCARD_SUB_AVAILABLE) |
                 MQTT_PF(MQTT_PROP_SUB_ID_AVAILABLE) | MQTT_PF(MQTT_PROP_SHARED_SUB_AVAILABLE);
    p->session_expiry = 120;
    p->assigned_client_id = B("auto-1234");
    p->server_keep_alive = 30;
    p->auth_method = B("m");
    p->auth_data = B("d");
    p->response_info = B("ri");
    p->server_reference = B("other:1883");
    p->reason_string = B("welcome");
    p->receive_max = 65535;
    p->topic_alias_max = 100;
    p->max_qos = 1;
    p->retain_available = 1;
    p->max_packet_size = 268435460u;
    p->wildcard_sub_available = 0;
    p->sub_id_available = 1;
    p->shared_sub_available = 1;
    user_prop_add(&u, p, "node", "n1");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT(out.u.connack.session_present);
    CU_ASSERT_EQUAL(out.u.connack.reason, 0);
    assert_props(p, &out.u.connack.props);

    /* A failure reason, no properties: 3 bytes of variable header. */
    struct mqtt_packet in2 = {.type = MQTT_CONNACK};
    in2.u.connack.reason = MQTT_RC_NOT_AUTHORIZED;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in2, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 5);
    CU_ASSERT_EQUAL(out.u.connack.reason, MQTT_RC_NOT_AUTHORIZED);
    CU_ASSERT(props_empty(&out.u.connack.props));
    buf_free(&u);
}

static void test_v5_publish(void)
{
    struct buf u = {0};
    const uint32_t ids[] = {1, 268435455, 300};
    struct mqtt_packet in = {.type = MQTT_PUBLISH}, out;
    struct mqtt_publish *pub = &in.u.publish;
    struct mqtt_props *p = &pub->props;
    pub->qos = 2;
    pub->retain = true;
    pub->topic = B("x/y");
    pub->packet_id = 1;
    pub->payload = B("{\"v\":1}");
    p->present = MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT) | MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY) |
                 MQTT_PF(MQTT_PROP_CONTENT_TYPE) | MQTT_PF(MQTT_PROP_RESPONSE_TOPIC) |
                 MQTT_PF(MQTT_PROP_CORRELATION_DATA) | MQTT_PF(MQTT_PROP_TOPIC_ALIAS) |
                 MQTT_PF(MQTT_PROP_SUBSCRIPTION_ID);
    p->payload_format = 1;
    p->message_expiry = 10;
    p->content_type = B("application/json");
    p->response_topic = B("r");
    p->correlation_data = B("corr");
    p->topic_alias = 3;
    p->sub_ids = ids;
    p->n_sub_ids = 3;
    user_prop_add(&u, p, "a", "1");
    user_prop_add(&u, p, "b", "2");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    const struct mqtt_publish *d = &out.u.publish;
    CU_ASSERT_EQUAL(d->qos, 2);
    CU_ASSERT(d->retain && !d->dup);
    CU_ASSERT(bytes_eq(d->topic, pub->topic));
    CU_ASSERT_EQUAL(d->packet_id, 1);
    CU_ASSERT(bytes_eq(d->payload, pub->payload));
    assert_props(p, &d->props);
    CU_ASSERT_EQUAL(d->props.n_sub_ids, 3);
    CU_ASSERT_EQUAL(d->props.sub_id, 1);
    /* All three identifiers are on the wire, in order, at id 0x0B. */
    const uint8_t sub_bytes[] = {0x0B, 0x01, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F, 0x0B, 0xAC, 0x02};
    CU_ASSERT_PTR_NOT_NULL(memmem(g_out.data, g_out.len, sub_bytes, sizeof(sub_bytes)));

    /* Empty topic with a topic alias (the alias value is the broker's check). */
    struct mqtt_packet in2 = {.type = MQTT_PUBLISH};
    in2.u.publish.props.present = MQTT_PF(MQTT_PROP_TOPIC_ALIAS);
    in2.u.publish.props.topic_alias = 1;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in2, &out), 0);
    CU_ASSERT_EQUAL(out.u.publish.topic.len, 0);
    CU_ASSERT_EQUAL(out.u.publish.props.topic_alias, 1);
    buf_free(&u);
}

static void test_v5_acks(void)
{
    check_acks(MQTT_V5); /* reason 0, no properties: 2-byte form */
    const enum mqtt_type types[] = {MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL, MQTT_PUBCOMP};
    const uint8_t reasons[] = {MQTT_RC_NO_MATCHING_SUBSCRIBERS, MQTT_RC_QUOTA_EXCEEDED,
                               MQTT_RC_PACKET_ID_NOT_FOUND, MQTT_RC_PACKET_ID_NOT_FOUND};
    for (size_t i = 0; i < 4; i++) {
        struct buf u = {0};
        struct mqtt_packet in = {.type = types[i]}, out;
        in.u.ack.packet_id = 42;
        in.u.ack.reason = reasons[i];
        /* reason only: 3-byte form */
        CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
        CU_ASSERT_EQUAL(g_out.len, 5);
        CU_ASSERT_EQUAL(out.u.ack.reason, reasons[i]);
        /* reason and properties */
        in.u.ack.props.present = MQTT_PF(MQTT_PROP_REASON_STRING);
        in.u.ack.props.reason_string = B("why");
        user_prop_add(&u, &in.u.ack.props, "k", "v");
        CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
        CU_ASSERT_EQUAL(out.type, types[i]);
        CU_ASSERT_EQUAL(out.u.ack.packet_id, 42);
        CU_ASSERT_EQUAL(out.u.ack.reason, reasons[i]);
        assert_props(&in.u.ack.props, &out.u.ack.props);
        /* reason 0 with properties keeps the reason byte */
        in.u.ack.reason = 0;
        CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
        CU_ASSERT_EQUAL(out.u.ack.reason, 0);
        assert_props(&in.u.ack.props, &out.u.ack.props);
        buf_free(&u);
    }
}

static void test_v5_subscribe(void)
{
    struct buf e = {0}, u = {0};
    const uint32_t id = 77;
    struct mqtt_packet in = {.type = MQTT_SUBSCRIBE}, out;
    struct mqtt_subscribe *s = &in.u.subscribe;
    uint8_t o1 = 2 | MQTT_SUBOPT_NO_LOCAL | MQTT_SUBOPT_RAP | 2 << MQTT_SUBOPT_RH_SHIFT;
    uint8_t o2 = 1 | 1 << MQTT_SUBOPT_RH_SHIFT;
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_SUBSCRIBE, "s/+/t", 5, o1), 0);
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_SUBSCRIBE, "$share/g/x", 10, o2), 0);
    s->packet_id = 0xFFFF;
    s->entries = (struct mqtt_bytes){e.data, (uint32_t)e.len};
    s->count = 2;
    s->props.sub_ids = &id;
    s->props.n_sub_ids = 1;
    s->props.present = MQTT_PF(MQTT_PROP_SUBSCRIPTION_ID);
    user_prop_add(&u, &s->props, "x", "y");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    const struct mqtt_subscribe *d = &out.u.subscribe;
    CU_ASSERT_EQUAL(d->packet_id, 0xFFFF);
    CU_ASSERT_EQUAL(d->count, 2);
    assert_props(&s->props, &d->props);
    CU_ASSERT_EQUAL(d->props.sub_id, 77);
    uint32_t pos = 0;
    struct mqtt_bytes f;
    uint8_t o;
    CU_ASSERT_FATAL(mqtt_sub_next(d, MQTT_SUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("s/+/t")));
    CU_ASSERT_EQUAL(o, o1);
    CU_ASSERT_FATAL(mqtt_sub_next(d, MQTT_SUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("$share/g/x")));
    CU_ASSERT_EQUAL(o, o2);
    CU_ASSERT_FALSE(mqtt_sub_next(d, MQTT_SUBSCRIBE, &pos, &f, &o));
    buf_free(&e);
    buf_free(&u);
}

static void test_v5_suback(void)
{
    struct buf u = {0};
    const uint8_t rc[] = {0, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
    struct mqtt_packet in = {.type = MQTT_SUBACK}, out;
    in.u.suback.packet_id = 3;
    in.u.suback.reasons = rc;
    in.u.suback.n_reasons = sizeof(rc);
    in.u.suback.props.present = MQTT_PF(MQTT_PROP_REASON_STRING);
    in.u.suback.props.reason_string = B("partial");
    user_prop_add(&u, &in.u.suback.props, "k", "v");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.suback.packet_id, 3);
    CU_ASSERT_EQUAL_FATAL(out.u.suback.n_reasons, sizeof(rc));
    CU_ASSERT(memcmp(out.u.suback.reasons, rc, sizeof(rc)) == 0);
    assert_props(&in.u.suback.props, &out.u.suback.props);
    buf_free(&u);
}

static void test_v5_unsubscribe(void)
{
    struct buf e = {0}, u = {0};
    struct mqtt_packet in = {.type = MQTT_UNSUBSCRIBE}, out;
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&e, MQTT_UNSUBSCRIBE, "a/#", 3, 0), 0);
    in.u.subscribe.packet_id = 5;
    in.u.subscribe.entries = (struct mqtt_bytes){e.data, (uint32_t)e.len};
    in.u.subscribe.count = 1;
    user_prop_add(&u, &in.u.subscribe.props, "k", "v");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.subscribe.packet_id, 5);
    CU_ASSERT_EQUAL(out.u.subscribe.count, 1);
    assert_props(&in.u.subscribe.props, &out.u.subscribe.props);
    uint32_t pos = 0;
    struct mqtt_bytes f;
    uint8_t o;
    CU_ASSERT_FATAL(mqtt_sub_next(&out.u.subscribe, MQTT_UNSUBSCRIBE, &pos, &f, &o));
    CU_ASSERT(bytes_eq(f, B("a/#")));
    buf_free(&e);
    buf_free(&u);
}

static void test_v5_unsuback(void)
{
    struct buf u = {0};
    const uint8_t rc[] = {0, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
    struct mqtt_packet in = {.type = MQTT_UNSUBACK}, out;
    in.u.suback.packet_id = 5;
    in.u.suback.reasons = rc;
    in.u.suback.n_reasons = sizeof(rc);
    in.u.suback.props.present = MQTT_PF(MQTT_PROP_REASON_STRING);
    in.u.suback.props.reason_string = B("r");
    user_prop_add(&u, &in.u.suback.props, "k", "v");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.suback.packet_id, 5);
    CU_ASSERT_EQUAL_FATAL(out.u.suback.n_reasons, sizeof(rc));
    CU_ASSERT(memcmp(out.u.suback.reasons, rc, sizeof(rc)) == 0);
    assert_props(&in.u.suback.props, &out.u.suback.props);
    buf_free(&u);
}

static void test_v5_ping(void)
{
    check_empty_packet(MQTT_V5, MQTT_PINGREQ);
    check_empty_packet(MQTT_V5, MQTT_PINGRESP);
}

static void test_v5_disconnect(void)
{
    struct buf u = {0};
    struct mqtt_packet out;
    check_empty_packet(MQTT_V5, MQTT_DISCONNECT); /* reason 0, no properties */
    struct mqtt_packet in = {.type = MQTT_DISCONNECT};
    in.u.disconnect.reason = MQTT_RC_DISCONNECT_WITH_WILL;
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(g_out.len, 3);
    CU_ASSERT_EQUAL(out.u.disconnect.reason, MQTT_RC_DISCONNECT_WITH_WILL);
    struct mqtt_props *p = &in.u.disconnect.props;
    in.u.disconnect.reason = MQTT_RC_USE_ANOTHER_SERVER;
    p->present = MQTT_PF(MQTT_PROP_SESSION_EXPIRY) | MQTT_PF(MQTT_PROP_SERVER_REFERENCE) |
                 MQTT_PF(MQTT_PROP_REASON_STRING);
    p->session_expiry = 0;
    p->server_reference = B("b:1883");
    p->reason_string = B("moving");
    user_prop_add(&u, p, "k", "v");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(out.u.disconnect.reason, MQTT_RC_USE_ANOTHER_SERVER);
    assert_props(p, &out.u.disconnect.props);
    buf_free(&u);
}

static void test_v5_auth(void)
{
    struct buf u = {0};
    struct mqtt_packet out;
    check_empty_packet(MQTT_V5, MQTT_AUTH);
    struct mqtt_packet in = {.type = MQTT_AUTH};
    struct mqtt_props *p = &in.u.disconnect.props;
    in.u.disconnect.reason = MQTT_RC_CONTINUE_AUTHENTICATION;
    p->present = MQTT_PF(MQTT_PROP_AUTH_METHOD) | MQTT_PF(MQTT_PROP_AUTH_DATA) |
                 MQTT_PF(MQTT_PROP_REASON_STRING);
    p->auth_method = B("SCRAM-SHA-256");
    p->auth_data = B("\x00\x01\x02\x03");
    p->reason_string = B("more");
    user_prop_add(&u, p, "k", "v");
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &in, &out), 0);
    CU_ASSERT_EQUAL(out.type, MQTT_AUTH);
    CU_ASSERT_EQUAL(out.u.disconnect.reason, MQTT_RC_CONTINUE_AUTHENTICATION);
    assert_props(p, &out.u.disconnect.props);
    buf_free(&u);
}

/* ------------------------------------------------------------------------ */
/* Properties encoding                                                       */
/* ------------------------------------------------------------------------ */

static void test_props_order_and_size(void)
{
    struct buf u = {0}, out = {0};
    const uint32_t ids[] = {5, 128};
    const uint8_t raw[] = {0x26, 0, 1, 'r', 0, 0};
    struct mqtt_props p = {0};
    user_prop_add(&u, &p, "k", "v");
    p.present = MQTT_PF(MQTT_PROP_TOPIC_ALIAS) | MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT) |
                MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY);
    p.topic_alias = 0x0102;
    p.payload_format = 1;
    p.message_expiry = 0x01020304;
    p.sub_ids = ids;
    p.n_sub_ids = 2;
    p.raw = (struct mqtt_bytes){raw, sizeof(raw)};
    const uint8_t expect[] = {28,   0x01, 0x01, 0x02, 0x01, 0x02, 0x03, 0x04, 0x0B, 0x05,
                              0x0B, 0x80, 0x01, 0x23, 0x01, 0x02, 0x26, 0,    1,    'k',
                              0,    1,    'v',  0x26, 0,    1,    'r',  0,    0};
    CU_ASSERT_EQUAL(mqtt_props_size(&p), sizeof(expect) - 1);
    CU_ASSERT_EQUAL(mqtt_props_encode(&out, &p), 0);
    CU_ASSERT_EQUAL_FATAL(out.len, sizeof(expect));
    CU_ASSERT(memcmp(out.data, expect, sizeof(expect)) == 0);
    /* Empty block: one byte, 0. */
    struct mqtt_props none = {0};
    buf_reset(&out);
    CU_ASSERT_EQUAL(mqtt_props_size(&none), 0);
    CU_ASSERT_EQUAL(mqtt_props_encode(&out, &none), 0);
    CU_ASSERT_EQUAL(out.len, 1);
    CU_ASSERT_EQUAL(out.data[0], 0);
    buf_free(&u);
    buf_free(&out);
}

static void test_props_user_interleaved(void)
{
    /* User properties separated by another property: the iterator and the
     * encoder skip the property in between. */
    struct mqtt_packet pkt, out;
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x30, 21, 0, 1, 't', 16, 0x26, 0, 1, 'a', 0, 1, '1', 0x01,
                         0x01, 0x26, 0, 1, 'b', 0, 1, '2', 'P'),
                    0);
    const struct mqtt_props *p = &pkt.u.publish.props;
    CU_ASSERT_EQUAL(p->n_user_props, 2);
    CU_ASSERT_EQUAL(p->payload_format, 1);
    CU_ASSERT(bytes_eq(pkt.u.publish.payload, B("P")));
    uint32_t pos = 0;
    struct mqtt_bytes k, v;
    CU_ASSERT_FATAL(mqtt_user_prop_next(p, &pos, &k, &v));
    CU_ASSERT(bytes_eq(k, B("a")) && bytes_eq(v, B("1")));
    CU_ASSERT_FATAL(mqtt_user_prop_next(p, &pos, &k, &v));
    CU_ASSERT(bytes_eq(k, B("b")) && bytes_eq(v, B("2")));
    CU_ASSERT_FALSE(mqtt_user_prop_next(p, &pos, &k, &v));
    CU_ASSERT_EQUAL(mqtt_props_size(p), 2 + 14);
    CU_ASSERT_EQUAL_FATAL(roundtrip(MQTT_V5, &pkt, &out), 0);
    assert_props(p, &out.u.publish.props);
}

/* ------------------------------------------------------------------------ */
/* Encoding errors                                                           */
/* ------------------------------------------------------------------------ */

static void test_encode_einval(void)
{
    struct buf b = {0};
    static uint8_t big[70000];
    struct mqtt_packet p = {.type = MQTT_PUBLISH};
    CU_ASSERT_EQUAL(buf_append(&b, "x", 1), 0);
    p.u.publish.topic = (struct mqtt_bytes){big, 65536};
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), -EINVAL);
    p.u.publish.topic = (struct mqtt_bytes){big, 65535};
    CU_ASSERT(mqtt_encode(&b, MQTT_V311, &p) > 65535);
    buf_reset(&b);
    /* Remaining length over the maximum (the payload is never read). */
    p.u.publish.topic = B("t");
    p.u.publish.payload = (struct mqtt_bytes){big, MQTT_MAX_REMAINING - 2};
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), -EINVAL);
    p.u.publish.payload = B("");
    p.u.publish.qos = 3;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), -EINVAL);
    p.u.publish.qos = 0;
    /* Subscription identifiers: 0, or several without the array. */
    p.u.publish.props.n_sub_ids = 1;
    p.u.publish.props.sub_id = 0;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V5, &p), -EINVAL);
    p.u.publish.props.n_sub_ids = 2;
    p.u.publish.props.sub_id = 1;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V5, &p), -EINVAL);
    /* Properties are not written before 5.0. */
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), 5);
    buf_reset(&b);
    /* A property string too long */
    struct mqtt_packet d = {.type = MQTT_DISCONNECT};
    d.u.disconnect.props.present = MQTT_PF(MQTT_PROP_REASON_STRING);
    d.u.disconnect.props.reason_string = (struct mqtt_bytes){big, 65536};
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V5, &d), -EINVAL);
    /* AUTH before 5.0, bad type, bad version */
    struct mqtt_packet a = {.type = MQTT_AUTH};
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &a), -EINVAL);
    a.type = (enum mqtt_type)0;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V5, &a), -EINVAL);
    a.type = MQTT_PINGREQ;
    CU_ASSERT_EQUAL(mqtt_encode(&b, 6, &a), -EINVAL);
    /* Will QoS 3 */
    struct mqtt_packet c = {.type = MQTT_CONNECT};
    c.u.connect.will_flag = true;
    c.u.connect.will_qos = 3;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &c), -EINVAL);
    CU_ASSERT_EQUAL(b.len, 0); /* nothing appended on error */
    CU_ASSERT_EQUAL(mqtt_sub_entry_append(&b, MQTT_PUBLISH, "a", 1, 0), -EINVAL);
    buf_free(&b);
}

static void test_encode_appends(void)
{
    struct buf b = {0};
    struct mqtt_packet p = {.type = MQTT_PINGREQ};
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), 2);
    p.type = MQTT_PINGRESP;
    CU_ASSERT_EQUAL(mqtt_encode(&b, MQTT_V311, &p), 2);
    const uint8_t expect[] = {0xC0, 0, 0xD0, 0};
    CU_ASSERT_EQUAL_FATAL(b.len, 4);
    CU_ASSERT(memcmp(b.data, expect, 4) == 0);
    buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Fixed header flags                                                        */
/* ------------------------------------------------------------------------ */

static void test_flags_pubrel(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x60, 2, 0, 1), MAL); /* [MQTT-3.1.1 2.2.2-2] */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x62, 2, 0, 1), 0);
}

static void test_flags_subscribe(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x80, 6, 0, 1, 0, 1, 't', 1), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x83, 6, 0, 1, 0, 1, 't', 1), MAL);
}

static void test_flags_unsubscribe(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xA0, 5, 0, 1, 0, 1, 't'), MAL);
}

static void test_flags_others(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x42, 2, 0, 1), MAL);    /* PUBACK */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xC1, 0), MAL);          /* PINGREQ */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xD8, 0), MAL);          /* PINGRESP */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xE2, 0), MAL);          /* DISCONNECT */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x24, 2, 0, 0), MAL);    /* CONNACK */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x92, 3, 0, 1, 0), MAL); /* SUBACK */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xF1, 0), MAL);            /* AUTH */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x12, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 0, 0, 1, 'a'), MAL);
}

static void test_publish_qos3(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x36, 5, 0, 1, 't', 0, 1), MAL); /* [MQTT-3.1.1 3.3.1-4] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x36, 6, 0, 1, 't', 0, 1, 0), MAL);
}

static void test_publish_dup_qos0(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x38, 3, 0, 1, 't'), MAL); /* [MQTT-3.1.1 3.3.1-2] */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x3A, 5, 0, 1, 't', 0, 1), 0);
}

/* ------------------------------------------------------------------------ */
/* CONNECT                                                                   */
/* ------------------------------------------------------------------------ */

static void test_connect_bad_protocol_name(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(0, &pkt, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'X', 4, 0x02, 0, 0x3C, 0, 1, 'a'),
                    -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    CU_ASSERT_EQUAL(pkt.u.connect.protocol_version, 4);
    CU_ASSERT_EQUAL(
        DECP(0, &pkt, 0x10, 15, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 4, 0x02, 0, 0x3C, 0, 1, 'a'),
        -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    CU_ASSERT_EQUAL(pkt.u.connect.protocol_version, 4);
}

static void test_connect_bad_protocol_level(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(0, &pkt, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 6, 0x02, 0, 0x3C, 0, 1, 'a'),
                    -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    CU_ASSERT_EQUAL(pkt.u.connect.protocol_version, 6);
    CU_ASSERT_EQUAL(DECP(0, &pkt, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 3, 0x02, 0, 0x3C, 0, 1, 'a'),
                    -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    CU_ASSERT_EQUAL(pkt.u.connect.protocol_version, 3);
}

static void test_connect_reserved_flag(void)
{
    /* [MQTT-3.1.1 3.1.2-3, MQTT-5.0 3.1.2-3] */
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 0x3C, 0, 1, 'a'), MAL);
    CU_ASSERT_EQUAL(DEC(0, 0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x01, 0, 0x3C, 0, 0, 1, 'a'),
                    MAL);
}

static void test_connect_will_qos3(void)
{
    CU_ASSERT_EQUAL(
        DEC(0, 0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x1E, 0, 0x3C, 0, 1, 'a', 0, 1, 'w', 0, 0),
        MAL);
}

static void test_connect_will_qos_without_will(void)
{
    /* [MQTT-3.1.1 3.1.2-13] */
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x0A, 0, 0x3C, 0, 1, 'a'), MAL);
}

static void test_connect_will_retain_without_will(void)
{
    /* [MQTT-3.1.1 3.1.2-15] */
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x22, 0, 0x3C, 0, 1, 'a'), MAL);
}

static void test_connect_password_without_username(void)
{
    struct mqtt_packet pkt;
    /* [MQTT-3.1.1 3.1.2-22] */
    CU_ASSERT_EQUAL(
        DEC(0, 0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x42, 0, 0x3C, 0, 1, 'a', 0, 1, 'p'), MAL);
    /* allowed in 5.0 */
    CU_ASSERT_EQUAL(DECP(0, &pkt, 0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x42, 0, 0x3C, 0, 0, 1,
                         'a', 0, 1, 'p'),
                    0);
    CU_ASSERT(pkt.u.connect.password_flag && !pkt.u.connect.username_flag);
    CU_ASSERT(bytes_eq(pkt.u.connect.password, B("p")));
}

static void test_connect_client_id_utf8(void)
{
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0x3C, 0, 1, 0xFF), MAL);
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0x3C, 0, 1, 0x00), MAL);
}

static void test_connect_will_topic_utf8(void)
{
    CU_ASSERT_EQUAL(
        DEC(0, 0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 0x3C, 0, 1, 'a', 0, 1, 0xC0, 0, 0),
        MAL);
}

static void test_connect_username_utf8(void)
{
    CU_ASSERT_EQUAL(DEC(0, 0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 0x3C, 0, 1, 'a', 0, 3,
                        0xED, 0xA0, 0x80),
                    MAL);
}

static void test_connect_binary_fields(void)
{
    /* Will payload and password are binary: invalid UTF-8 is fine. */
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(0, &pkt, 0x10, 25, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xC6, 0, 0x3C, 0, 1, 'a',
                         0, 1, 'w', 0, 1, 0xFF, 0, 1, 'u', 0, 1, 0x00),
                    0);
    CU_ASSERT_EQUAL(pkt.u.connect.will_payload.data[0], 0xFF);
    CU_ASSERT_EQUAL(pkt.u.connect.password.data[0], 0x00);
}

static void test_connect_trailing_bytes(void)
{
    CU_ASSERT_EQUAL(DEC(0, 0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0x3C, 0, 1, 'a', 'x'),
                    MAL);
}

static void test_connect_truncated(void)
{
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0x3C, 0, 5, 'a'), MAL);
    CU_ASSERT_EQUAL(DEC(0, 0x10, 4, 0, 4, 'M', 'Q'), MAL);
    /* username flag set, username missing */
    CU_ASSERT_EQUAL(DEC(0, 0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x82, 0, 0x3C, 0, 1, 'a'), MAL);
}

/* A 5.0 CONNECT carrying the given property block. */
static int dec_connect5_props(const uint8_t *props, size_t n)
{
    uint8_t p[256];
    size_t i = 0;
    const uint8_t head[] = {0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 0x3C};
    p[i++] = 0x10;
    p[i++] = (uint8_t)(sizeof(head) + 1 + n + 3);
    memcpy(p + i, head, sizeof(head));
    i += sizeof(head);
    p[i++] = (uint8_t)n;
    memcpy(p + i, props, n);
    i += n;
    p[i++] = 0;
    p[i++] = 1;
    p[i++] = 'a';
    return dec_bytes(MQTT_V5, p, i, NULL);
}

/* A 5.0 CONNECT with a will carrying the given will property block. */
static int dec_connect5_will_props(const uint8_t *props, size_t n)
{
    uint8_t p[256];
    size_t i = 0;
    const uint8_t head[] = {0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 0x3C, 0, 0, 1, 'a'};
    p[i++] = 0x10;
    p[i++] = (uint8_t)(sizeof(head) + 1 + n + 5);
    memcpy(p + i, head, sizeof(head));
    i += sizeof(head);
    p[i++] = (uint8_t)n;
    memcpy(p + i, props, n);
    i += n;
    memcpy(p + i, (const uint8_t[]){0, 1, 'w', 0, 0}, 5);
    i += 5;
    return dec_bytes(MQTT_V5, p, i, NULL);
}

static int dec_connack5_props(const uint8_t *props, size_t n)
{
    uint8_t p[256] = {0x20, (uint8_t)(3 + n), 0, 0, (uint8_t)n};
    memcpy(p + 5, props, n);
    return dec_bytes(MQTT_V5, p, 5 + n, NULL);
}

static int dec_publish5_props(const uint8_t *props, size_t n)
{
    uint8_t p[256] = {0x30, (uint8_t)(4 + n), 0, 1, 't', (uint8_t)n};
    memcpy(p + 6, props, n);
    return dec_bytes(MQTT_V5, p, 6 + n, NULL);
}

#define PROPS(f, ...) f((const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}))

static void test_connect_will_props(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connect5_will_props, 0x18, 0, 0, 0, 5), 0);
    CU_ASSERT_EQUAL(PROPS(dec_connect5_will_props, 0x01, 1, 0x02, 0, 0, 0, 1, 0x03, 0, 1, 'c', 0x08,
                          0, 1, 'r', 0x09, 0, 0, 0x26, 0, 0, 0, 0),
                    0);
    /* Session expiry is not a will property. */
    CU_ASSERT_EQUAL(PROPS(dec_connect5_will_props, 0x11, 0, 0, 0, 5), MAL);
    /* Will delay is not a CONNECT property. */
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x18, 0, 0, 0, 5), MAL);
    /* Will property length past the packet */
    CU_ASSERT_EQUAL(
        DEC(0, 0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 0x3C, 0, 0, 1, 'a', 9, 0x18, 0, 0),
        MAL);
}

/* ------------------------------------------------------------------------ */
/* Properties                                                                */
/* ------------------------------------------------------------------------ */

static void test_prop_not_allowed(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x11, 0, 0, 0, 1), MAL);   /* session expiry */
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x23, 0, 1), MAL);         /* topic alias */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x0B, 1), MAL);            /* subscription id */
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x24, 1), MAL);            /* maximum QoS */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x40, 6, 0, 1, 0, 2, 0x01, 0x01), MAL); /* PUBACK payload fmt */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xE0, 4, 0, 2, 0x21, 0), MAL);          /* DISCONNECT recv max */
}

static void test_prop_unknown_id(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x05, 0), MAL);
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x7F, 0), MAL);
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0xA6, 0x00, 0, 0, 0, 0), MAL); /* non-minimal id */
}

static void test_prop_duplicate(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x01, 0, 0x01, 0), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x1F, 0, 0, 0x1F, 0, 0), PERR);
    /* user properties may repeat */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0), 0);
}

static void test_prop_payload_format_range(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x01, 2), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x01, 1), 0);
}

static void test_prop_request_info_range(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x17, 2), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x19, 2), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x17, 1, 0x19, 1), 0);
}

static void test_prop_receive_max_zero(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x21, 0, 0), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x21, 0, 0), PERR);
}

static void test_prop_max_packet_size_zero(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connect5_props, 0x27, 0, 0, 0, 0), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x27, 0, 0, 0, 0), PERR);
}

static void test_prop_connack_byte_ranges(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x24, 2), PERR); /* maximum QoS */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x25, 2), PERR); /* retain available */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x28, 2), PERR); /* wildcard available */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x29, 2), PERR); /* sub ids available */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x2A, 2), PERR); /* shared available */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x24, 0, 0x25, 1, 0x28, 0, 0x29, 1, 0x2A, 0), 0);
}

static void test_prop_topic_alias_zero_accepted(void)
{
    struct mqtt_packet pkt;
    /* Topic alias 0 is a protocol error the broker reports, not the codec. */
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x30, 7, 0, 1, 't', 3, 0x23, 0, 0), 0);
    CU_ASSERT((pkt.u.publish.props.present & MQTT_PF(MQTT_PROP_TOPIC_ALIAS)) != 0);
    CU_ASSERT_EQUAL(pkt.u.publish.props.topic_alias, 0);
}

static void test_prop_string_utf8(void)
{
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x03, 0, 1, 0xFF), MAL);       /* content type */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x08, 0, 2, 0xC0, 0x80), MAL); /* response topic */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x26, 0, 1, 0x00, 0, 0), MAL); /* user key */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x26, 0, 0, 0, 1, 0xFE), MAL); /* user value */
    CU_ASSERT_EQUAL(PROPS(dec_connack5_props, 0x1F, 0, 1, 0x80), MAL);       /* reason string */
    /* correlation data is binary */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x09, 0, 1, 0xFF), 0);
}

static void test_prop_length_past_packet(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x30, 5, 0, 1, 't', 5, 0x01), MAL);
    /* property length is not a valid varint */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x30, 8, 0, 1, 't', 0xFF, 0xFF, 0xFF, 0xFF, 0x01), MAL);
}

static void test_prop_value_past_block(void)
{
    /* message expiry needs 4 bytes, the block has 1 (payload follows) */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x30, 9, 0, 1, 't', 2, 0x02, 0, 'p', 'a', 'y'), MAL);
    /* string length past the block */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x03, 0, 5, 'a'), MAL);
    /* user property missing its value */
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x26, 0, 1, 'k'), MAL);
}

static void test_prop_sub_id_zero(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 9, 0, 1, 2, 0x0B, 0x00, 0, 1, 't', 0), PERR);
    CU_ASSERT_EQUAL(PROPS(dec_publish5_props, 0x0B, 0x00), PERR);
}

static void test_prop_sub_id_twice_subscribe(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, 't', 0), PERR);
}

static void test_prop_sub_ids_publish(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x30, 11, 0, 1, 't', 7, 0x0B, 9, 0x0B, 0x80, 0x01, 0x0B, 3),
                    0);
    CU_ASSERT_EQUAL(pkt.u.publish.props.n_sub_ids, 3);
    CU_ASSERT_EQUAL(pkt.u.publish.props.sub_id, 9);
}

/* ------------------------------------------------------------------------ */
/* PUBLISH                                                                   */
/* ------------------------------------------------------------------------ */

static void test_publish_topic_utf8(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x30, 3, 0, 1, 0x80), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x30, 6, 0, 3, 0xED, 0xBF, 0xBF, 0), MAL);
}

static void test_publish_packet_id_zero(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x32, 5, 0, 1, 't', 0, 0), PERR); /* [MQTT-3.1.1 2.3.1-1] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x34, 6, 0, 1, 't', 0, 0, 0), PERR);
}

static void test_publish_packet_id_missing(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x32, 4, 0, 1, 't', 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x30, 1, 0), MAL);
}

static void test_publish_v5_missing_props(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x30, 3, 0, 1, 't'), MAL);
}

/* ------------------------------------------------------------------------ */
/* Acknowledgements                                                          */
/* ------------------------------------------------------------------------ */

static void test_ack_v311_length(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x40, 3, 0, 1, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x50, 1, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x70, 4, 0, 1, 0, 0), MAL);
}

static void test_ack_packet_id_zero(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x40, 2, 0, 0), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x50, 3, 0, 0, 0x10), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x62, 2, 0, 0), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x70, 2, 0, 0), PERR);
}

static void test_ack_v5_lengths(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x40, 2, 0, 1), 0);
    CU_ASSERT_EQUAL(pkt.u.ack.reason, 0);
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x40, 3, 0, 1, 0x10), 0);
    CU_ASSERT_EQUAL(pkt.u.ack.reason, 0x10);
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x50, 4, 0, 1, 0x97, 0), 0);
    CU_ASSERT_EQUAL(pkt.u.ack.reason, 0x97);
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0x62, 8, 0, 1, 0x92, 4, 0x1F, 0, 1, 'x'), 0);
    CU_ASSERT_EQUAL(pkt.u.ack.reason, 0x92);
    CU_ASSERT(bytes_eq(pkt.u.ack.props.reason_string, B("x")));
    /* trailing bytes after the properties */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x40, 6, 0, 1, 0, 0, 0xAA, 0xBB), MAL);
}

static void test_ack_v5_bad_reason(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x40, 3, 0, 1, 0x92), PERR); /* [MQTT-5.0 3.4.2-1] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x62, 3, 0, 1, 0x10), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x70, 3, 0, 1, 0x80), PERR);
}

/* ------------------------------------------------------------------------ */
/* SUBSCRIBE / UNSUBSCRIBE                                                   */
/* ------------------------------------------------------------------------ */

static void test_subscribe_packet_id_zero(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 6, 0, 0, 0, 1, 't', 1), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xA2, 5, 0, 0, 0, 1, 't'), PERR);
}

static void test_subscribe_no_entries(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 2, 0, 1), PERR); /* [MQTT-3.1.1 3.8.3-3] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 3, 0, 1, 0), PERR);
}

static void test_subscribe_filter_utf8(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 6, 0, 1, 0, 1, 0xFF, 1), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 11, 0, 1, 0, 0, 1, 'a', 0, 0, 2, 0xC3, 0), MAL);
}

static void test_subscribe_missing_options(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 5, 0, 1, 0, 1, 't'), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 8, 0, 1, 0, 1, 't', 1, 0, 1), MAL);
}

static void test_subscribe_v311_reserved_bits(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 6, 0, 1, 0, 1, 't', 0x04), MAL); /* [MQTT-3.1.1 3.8.3-4] */
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 6, 0, 1, 0, 1, 't', 0x80), MAL);
}

static void test_subscribe_v311_qos3(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x82, 6, 0, 1, 0, 1, 't', 0x03), MAL);
}

static void test_subscribe_v5_reserved_bits(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 7, 0, 1, 0, 0, 1, 't', 0x40), MAL); /* [MQTT-5.0 3.8.3-5] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 7, 0, 1, 0, 0, 1, 't', 0x80), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 7, 0, 1, 0, 0, 1, 't', 0x2E), 0);
}

static void test_subscribe_v5_retain_handling3(void)
{
    /* 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3" */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 7, 0, 1, 0, 0, 1, 't', 0x30), PERR);
}

static void test_subscribe_v5_qos3(void)
{
    /* 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3" */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 7, 0, 1, 0, 0, 1, 't', 0x03), PERR);
}

static void test_subscribe_v5_bad_prop(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x82, 9, 0, 1, 2, 0x01, 0, 0, 1, 't', 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xA2, 8, 0, 1, 2, 0x0B, 1, 0, 1, 't'), MAL);
}

static void test_unsubscribe_no_entries(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xA2, 2, 0, 1), PERR); /* [MQTT-3.1.1 3.10.3-2] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xA2, 3, 0, 1, 0), PERR);
}

static void test_unsubscribe_filter_utf8(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xA2, 5, 0, 1, 0, 1, 0xFF), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xA2, 5, 0, 1, 0, 2, 'a'), MAL);
}

/* ------------------------------------------------------------------------ */
/* CONNACK, SUBACK, UNSUBACK                                                 */
/* ------------------------------------------------------------------------ */

static void test_connack_reserved_flags(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x20, 2, 0x02, 0), MAL); /* [MQTT-5.0 3.2.2-1] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x20, 3, 0x80, 0, 0), MAL);
}

static void test_connack_length(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x20, 3, 0, 0, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x20, 1, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x20, 4, 0, 0, 0, 0), MAL);
    /* 5.0 without the property length is accepted */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x20, 2, 0, 0), 0);
}

static void test_connack_bad_reason(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x20, 2, 0, 6), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x20, 3, 0, 0x01, 0), PERR);
}

static void test_connack_session_present_on_failure(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x20, 2, 1, 5), PERR); /* [MQTT-3.1.1 3.2.2-4] */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x20, 3, 1, 0x87, 0), PERR);
}

static void test_suback_bad_reason(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x90, 3, 0, 1, 0x03), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x90, 3, 0, 1, 0x87), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x90, 4, 0, 1, 0, 0x11), PERR);
}

static void test_suback_empty(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0x90, 2, 0, 1), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0x90, 3, 0, 1, 0), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xB0, 3, 0, 1, 0), PERR);
}

static void test_unsuback_v311_length(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xB0, 3, 0, 1, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xB0, 4, 0, 1, 0, 0x02), PERR);
}

/* ------------------------------------------------------------------------ */
/* PINGREQ, PINGRESP, DISCONNECT, AUTH                                       */
/* ------------------------------------------------------------------------ */

static void test_ping_length(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xC0, 1, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xD0, 1, 0), MAL);
}

static void test_disconnect_v311_length(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xE0, 1, 0), MAL);
}

static void test_disconnect_v5_short(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0xE0, 0), 0);
    CU_ASSERT_EQUAL(pkt.u.disconnect.reason, 0);
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0xE0, 1, 0x8B), 0);
    CU_ASSERT_EQUAL(pkt.u.disconnect.reason, 0x8B);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xE0, 1, 0x01), PERR); /* not a DISCONNECT reason */
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xE0, 3, 0, 0, 0), MAL);
}

static void test_auth_v311(void)
{
    CU_ASSERT_EQUAL(DEC(MQTT_V311, 0xF0, 0), MAL);
    CU_ASSERT_EQUAL(DEC(MQTT_V31, 0xF0, 0), MAL);
}

static void test_auth_v5_short(void)
{
    struct mqtt_packet pkt;
    CU_ASSERT_EQUAL(DECP(MQTT_V5, &pkt, 0xF0, 0), 0);
    CU_ASSERT_EQUAL(pkt.type, MQTT_AUTH);
    CU_ASSERT_EQUAL(pkt.u.disconnect.reason, 0);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xF0, 2, 0x04, 0), PERR);
    CU_ASSERT_EQUAL(DEC(MQTT_V5, 0xF0, 4, 0x18, 2, 0x11, 0), MAL); /* session expiry */
}

/* ------------------------------------------------------------------------ */
/* UTF-8 and text                                                            */
/* ------------------------------------------------------------------------ */

#define U8(s) mqtt_utf8_valid((const uint8_t *)(s), sizeof(s) - 1)

static void test_utf8_valid(void)
{
    CU_ASSERT(U8(""));
    CU_ASSERT(U8("abc/def"));
    CU_ASSERT(U8("\xC3\xA9"));         /* U+00E9 */
    CU_ASSERT(U8("\xE2\x82\xAC"));     /* U+20AC */
    CU_ASSERT(U8("\xF0\x9F\x98\x80")); /* U+1F600 */
    CU_ASSERT(U8("\xF4\x8F\xBF\xBF")); /* U+10FFFF */
    CU_ASSERT(U8("\xED\x9F\xBF"));     /* U+D7FF */
    CU_ASSERT(U8("\xEE\x80\x80"));     /* U+E000 */
    CU_ASSERT(U8("\xEF\xBF\xBF"));     /* U+FFFF: a non-character, allowed */
    CU_ASSERT(U8("\xEF\xBB\xBF"));     /* BOM [MQTT-3.1.1 1.5.3-3, MQTT-5.0 1.5.4-3] */
    CU_ASSERT(U8("\x01\x7F"));         /* control characters are allowed */
}

static void test_utf8_nul(void)
{
    CU_ASSERT_FALSE(U8("\x00"));
    CU_ASSERT_FALSE(U8("a\x00"
                       "b"));
}

static void test_utf8_overlong(void)
{
    CU_ASSERT_FALSE(U8("\xC0\x80"));
    CU_ASSERT_FALSE(U8("\xC1\xBF"));
    CU_ASSERT_FALSE(U8("\xE0\x80\x80"));
    CU_ASSERT_FALSE(U8("\xE0\x9F\xBF"));
    CU_ASSERT_FALSE(U8("\xF0\x80\x80\x80"));
    CU_ASSERT_FALSE(U8("\xF0\x8F\xBF\xBF"));
}

static void test_utf8_surrogates(void)
{
    CU_ASSERT_FALSE(U8("\xED\xA0\x80")); /* U+D800 */
    CU_ASSERT_FALSE(U8("\xED\xBF\xBF")); /* U+DFFF */
    CU_ASSERT_FALSE(U8("\xED\xA0\xBD\xED\xB8\x80"));
}

static void test_utf8_too_large(void)
{
    CU_ASSERT_FALSE(U8("\xF4\x90\x80\x80")); /* U+110000 */
    CU_ASSERT_FALSE(U8("\xF5\x80\x80\x80"));
    CU_ASSERT_FALSE(U8("\xF8\x88\x80\x80\x80"));
    CU_ASSERT_FALSE(U8("\xFF"));
}

static void test_utf8_truncated(void)
{
    CU_ASSERT_FALSE(U8("\xC3"));
    CU_ASSERT_FALSE(U8("\xE2\x82"));
    CU_ASSERT_FALSE(U8("\xF0\x9F\x98"));
    CU_ASSERT_FALSE(U8("a\xE2\x82z"));
    CU_ASSERT_FALSE(U8("\x80"));         /* lone continuation */
    CU_ASSERT_FALSE(U8("\xC3\xA9\xA9")); /* extra continuation */
}

static void test_text(void)
{
    CU_ASSERT_STRING_EQUAL(mqtt_type_str(MQTT_CONNECT), "CONNECT");
    CU_ASSERT_STRING_EQUAL(mqtt_type_str(MQTT_AUTH), "AUTH");
    CU_ASSERT_STRING_EQUAL(mqtt_type_str((enum mqtt_type)16), "UNKNOWN");
    CU_ASSERT_STRING_EQUAL(mqtt_rc_str(MQTT_RC_MALFORMED), "malformed packet");
    CU_ASSERT_STRING_EQUAL(mqtt_rc_str(MQTT_RC_PROTOCOL_ERROR), "protocol error");
    CU_ASSERT_STRING_EQUAL(mqtt_rc_str(0), "success");
    for (unsigned rc = 0; rc < 256; rc++)
        CU_ASSERT_PTR_NOT_NULL(mqtt_rc_str((uint8_t)rc));
    CU_ASSERT_STRING_EQUAL(mqtt_rc_str(0x03), "unknown reason code");
    CU_ASSERT_STRING_EQUAL(mqtt_rc_str(0xFF), "unknown reason code");
}

/* ------------------------------------------------------------------------ */

struct test_def {
    const char *name;
    CU_TestFunc fn;
};

#define T(f)                                                                                       \
    {                                                                                              \
#f, f                                                                                      \
    }

static const struct test_def tests[] = {
    T(test_frame_incomplete),
    T(test_frame_complete),
    T(test_frame_varint_max),
    T(test_frame_varint_5_bytes),
    T(test_frame_varint_not_minimal),
    T(test_frame_type_zero),
    T(test_frame_too_large),
    T(test_decode_length_mismatch),
    T(test_v311_connect),
    T(test_v31_connect),
    T(test_v311_connack),
    T(test_v31_connack_has_no_session_present),
    T(test_publish_plain_bytes),
    T(test_v311_publish),
    T(test_v311_acks),
    T(test_v311_subscribe),
    T(test_v311_suback),
    T(test_v311_unsubscribe),
    T(test_v311_unsuback),
    T(test_v311_ping_disconnect),
    T(test_v5_connect),
    T(test_v5_connack),
    T(test_v5_publish),
    T(test_v5_acks),
    T(test_v5_subscribe),
    T(test_v5_suback),
    T(test_v5_unsubscribe),
    T(test_v5_unsuback),
    T(test_v5_ping),
    T(test_v5_disconnect),
    T(test_v5_auth),
    T(test_props_order_and_size),
    T(test_props_user_interleaved),
    T(test_encode_einval),
    T(test_encode_appends),
    T(test_flags_pubrel),
    T(test_flags_subscribe),
    T(test_flags_unsubscribe),
    T(test_flags_others),
    T(test_publish_qos3),
    T(test_publish_dup_qos0),
    T(test_connect_bad_protocol_name),
    T(test_connect_bad_protocol_level),
    T(test_connect_reserved_flag),
    T(test_connect_will_qos3),
    T(test_connect_will_qos_without_will),
    T(test_connect_will_retain_without_will),
    T(test_connect_password_without_username),
    T(test_connect_client_id_utf8),
    T(test_connect_will_topic_utf8),
    T(test_connect_username_utf8),
    T(test_connect_binary_fields),
    T(test_connect_trailing_bytes),
    T(test_connect_truncated),
    T(test_connect_will_props),
    T(test_prop_not_allowed),
    T(test_prop_unknown_id),
    T(test_prop_duplicate),
    T(test_prop_payload_format_range),
    T(test_prop_request_info_range),
    T(test_prop_receive_max_zero),
    T(test_prop_max_packet_size_zero),
    T(test_prop_connack_byte_ranges),
    T(test_prop_topic_alias_zero_accepted),
    T(test_prop_string_utf8),
    T(test_prop_length_past_packet),
    T(test_prop_value_past_block),
    T(test_prop_sub_id_zero),
    T(test_prop_sub_id_twice_subscribe),
    T(test_prop_sub_ids_publish),
    T(test_publish_topic_utf8),
    T(test_publish_packet_id_zero),
    T(test_publish_packet_id_missing),
    T(test_publish_v5_missing_props),
    T(test_ack_v311_length),
    T(test_ack_packet_id_zero),
    T(test_ack_v5_lengths),
    T(test_ack_v5_bad_reason),
    T(test_subscribe_packet_id_zero),
    T(test_subscribe_no_entries),
    T(test_subscribe_filter_utf8),
    T(test_subscribe_missing_options),
    T(test_subscribe_v311_reserved_bits),
    T(test_subscribe_v311_qos3),
    T(test_subscribe_v5_reserved_bits),
    T(test_subscribe_v5_retain_handling3),
    T(test_subscribe_v5_qos3),
    T(test_subscribe_v5_bad_prop),
    T(test_unsubscribe_no_entries),
    T(test_unsubscribe_filter_utf8),
    T(test_connack_reserved_flags),
    T(test_connack_length),
    T(test_connack_bad_reason),
    T(test_connack_session_present_on_failure),
    T(test_suback_bad_reason),
    T(test_suback_empty),
    T(test_unsuback_v311_length),
    T(test_ping_length),
    T(test_disconnect_v311_length),
    T(test_disconnect_v5_short),
    T(test_auth_v311),
    T(test_auth_v5_short),
    T(test_utf8_valid),
    T(test_utf8_nul),
    T(test_utf8_overlong),
    T(test_utf8_surrogates),
    T(test_utf8_too_large),
    T(test_utf8_truncated),
    T(test_text),
};

static int suite_clean(void)
{
    buf_free(&g_out);
    free(g_in);
    g_in = NULL;
    return 0;
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("codec", NULL, suite_clean);
    if (!s)
        goto fail;
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (!CU_add_test(s, tests[i].name, tests[i].fn))
            goto fail;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    if (CU_basic_run_tests() != CUE_SUCCESS)
        goto fail;
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
fail:
    CU_cleanup_registry();
    return 2;
}
