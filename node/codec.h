/*
 * codec.h - MQTT 3.1, 3.1.1 and 5.0 packet encoding and decoding.
 *
 * Decoding is zero-copy: every string and binary field of a decoded packet
 * (struct mqtt_bytes) points into the caller's input buffer and is valid only
 * while that buffer is. Decoding validates everything the specification lets
 * a receiver validate from the bytes alone: reserved flags, remaining length
 * consistency, UTF-8 well-formedness [MQTT-3.1.1 1.5.3-1..3, MQTT-5.0 1.5.4-1..3], property
 * identifiers allowed for the packet type, duplicated properties, property value ranges. It does
 * not know session state (packet identifiers in use, topic aliases).
 *
 * Encoding appends one complete packet to a struct buf.
 *
 * All functions are pure and thread safe.
 */
#ifndef STARLING_CODEC_H
#define STARLING_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Protocol levels (the "protocol version" byte of CONNECT). */
#define MQTT_V31 3
#define MQTT_V311 4
#define MQTT_V5 5

/* The largest remaining length MQTT can express. */
#define MQTT_MAX_REMAINING 268435455u

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
    MQTT_AUTH = 15,
};

/* MQTT 5.0 reason codes used by the broker. */
enum mqtt_rc {
    MQTT_RC_SUCCESS = 0x00,
    MQTT_RC_GRANTED_QOS1 = 0x01,
    MQTT_RC_GRANTED_QOS2 = 0x02,
    MQTT_RC_DISCONNECT_WITH_WILL = 0x04,
    MQTT_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    MQTT_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
    MQTT_RC_CONTINUE_AUTHENTICATION = 0x18,
    MQTT_RC_REAUTHENTICATE = 0x19,
    MQTT_RC_UNSPECIFIED = 0x80,
    MQTT_RC_MALFORMED = 0x81,
    MQTT_RC_PROTOCOL_ERROR = 0x82,
    MQTT_RC_IMPL_SPECIFIC = 0x83,
    MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84,
    MQTT_RC_CLIENT_ID_NOT_VALID = 0x85,
    MQTT_RC_BAD_USERNAME_OR_PASSWORD = 0x86,
    MQTT_RC_NOT_AUTHORIZED = 0x87,
    MQTT_RC_SERVER_UNAVAILABLE = 0x88,
    MQTT_RC_SERVER_BUSY = 0x89,
    MQTT_RC_BANNED = 0x8A,
    MQTT_RC_SERVER_SHUTTING_DOWN = 0x8B,
    MQTT_RC_BAD_AUTH_METHOD = 0x8C,
    MQTT_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    MQTT_RC_SESSION_TAKEN_OVER = 0x8E,
    MQTT_RC_TOPIC_FILTER_INVALID = 0x8F,
    MQTT_RC_TOPIC_NAME_INVALID = 0x90,
    MQTT_RC_PACKET_ID_IN_USE = 0x91,
    MQTT_RC_PACKET_ID_NOT_FOUND = 0x92,
    MQTT_RC_RECEIVE_MAX_EXCEEDED = 0x93,
    MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    MQTT_RC_PACKET_TOO_LARGE = 0x95,
    MQTT_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
    MQTT_RC_QUOTA_EXCEEDED = 0x97,
    MQTT_RC_ADMIN_ACTION = 0x98,
    MQTT_RC_PAYLOAD_FORMAT_INVALID = 0x99,
    MQTT_RC_RETAIN_NOT_SUPPORTED = 0x9A,
    MQTT_RC_QOS_NOT_SUPPORTED = 0x9B,
    MQTT_RC_USE_ANOTHER_SERVER = 0x9C,
    MQTT_RC_SERVER_MOVED = 0x9D,
    MQTT_RC_SHARED_SUBS_NOT_SUPPORTED = 0x9E,
    MQTT_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
    MQTT_RC_MAX_CONNECT_TIME = 0xA0,
    MQTT_RC_SUB_IDS_NOT_SUPPORTED = 0xA1,
    MQTT_RC_WILDCARD_SUBS_NOT_SUPPORTED = 0xA2,
};

/* MQTT 3.1.1 CONNACK return codes. */
enum mqtt_connack_v3 {
    MQTT3_CONNACK_ACCEPTED = 0,
    MQTT3_CONNACK_BAD_PROTOCOL = 1,
    MQTT3_CONNACK_ID_REJECTED = 2,
    MQTT3_CONNACK_SERVER_UNAVAILABLE = 3,
    MQTT3_CONNACK_BAD_CREDENTIALS = 4,
    MQTT3_CONNACK_NOT_AUTHORIZED = 5,
};

/* A string or binary field. For UTF-8 strings the bytes are not
 * NUL-terminated. data may be NULL when len is 0. */
struct mqtt_bytes {
    const uint8_t *data;
    uint32_t len;
};

/* Property identifiers (MQTT 5.0 section 2.2.2.2). */
enum mqtt_prop_id {
    MQTT_PROP_PAYLOAD_FORMAT = 0x01,
    MQTT_PROP_MESSAGE_EXPIRY = 0x02,
    MQTT_PROP_CONTENT_TYPE = 0x03,
    MQTT_PROP_RESPONSE_TOPIC = 0x08,
    MQTT_PROP_CORRELATION_DATA = 0x09,
    MQTT_PROP_SUBSCRIPTION_ID = 0x0B,
    MQTT_PROP_SESSION_EXPIRY = 0x11,
    MQTT_PROP_ASSIGNED_CLIENT_ID = 0x12,
    MQTT_PROP_SERVER_KEEP_ALIVE = 0x13,
    MQTT_PROP_AUTH_METHOD = 0x15,
    MQTT_PROP_AUTH_DATA = 0x16,
    MQTT_PROP_REQUEST_PROBLEM_INFO = 0x17,
    MQTT_PROP_WILL_DELAY = 0x18,
    MQTT_PROP_REQUEST_RESPONSE_INFO = 0x19,
    MQTT_PROP_RESPONSE_INFO = 0x1A,
    MQTT_PROP_SERVER_REFERENCE = 0x1C,
    MQTT_PROP_REASON_STRING = 0x1F,
    MQTT_PROP_RECEIVE_MAX = 0x21,
    MQTT_PROP_TOPIC_ALIAS_MAX = 0x22,
    MQTT_PROP_TOPIC_ALIAS = 0x23,
    MQTT_PROP_MAX_QOS = 0x24,
    MQTT_PROP_RETAIN_AVAILABLE = 0x25,
    MQTT_PROP_USER_PROPERTY = 0x26,
    MQTT_PROP_MAX_PACKET_SIZE = 0x27,
    MQTT_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
    MQTT_PROP_SUB_ID_AVAILABLE = 0x29,
    MQTT_PROP_SHARED_SUB_AVAILABLE = 0x2A,
};

/* Presence bits for struct mqtt_props.present, one per property. */
#define MQTT_PF(id) (1ull << (id))

/*
 * The properties of one packet (MQTT 5.0 only; empty for 3.1.1).
 *
 * Decoding sets a bit in `present` for each property found. Encoding writes
 * each property whose bit is set, in ascending identifier order, then the
 * user properties (user_props, already encoded), then `raw` verbatim.
 */
struct mqtt_props {
    uint64_t present;
    uint8_t payload_format;
    uint8_t request_problem_info;
    uint8_t request_response_info;
    uint8_t max_qos;
    uint8_t retain_available;
    uint8_t wildcard_sub_available;
    uint8_t sub_id_available;
    uint8_t shared_sub_available;
    uint16_t server_keep_alive;
    uint16_t receive_max;
    uint16_t topic_alias_max;
    uint16_t topic_alias;
    uint32_t message_expiry;
    uint32_t session_expiry;
    uint32_t will_delay;
    uint32_t max_packet_size;
    struct mqtt_bytes content_type;
    struct mqtt_bytes response_topic;
    struct mqtt_bytes correlation_data;
    struct mqtt_bytes assigned_client_id;
    struct mqtt_bytes auth_method;
    struct mqtt_bytes auth_data;
    struct mqtt_bytes response_info;
    struct mqtt_bytes server_reference;
    struct mqtt_bytes reason_string;
    /* Subscription identifiers. Decoding: n_sub_ids is how many were found
     * and sub_id the first one (only PUBLISH may carry several, and only
     * from server to client). Encoding: sub_ids[0..n_sub_ids) are written
     * (sub_id is ignored); the MQTT_PROP_SUBSCRIPTION_ID bit is not used. */
    uint32_t sub_id;
    uint32_t n_sub_ids;
    const uint32_t *sub_ids;
    /* User properties: the encoded property entries (each 0x26, key, value)
     * concatenated, as they appeared in the packet; n_user_props entries.
     * Iterate with mqtt_user_prop_next(). Encoding copies them verbatim. */
    struct mqtt_bytes user_props;
    uint32_t n_user_props;
    /* Encoding only: already-encoded properties appended verbatim. */
    struct mqtt_bytes raw;
};

/* Iterate user properties. *pos starts at 0. Returns 1 and sets key/value
 * for the next pair, 0 at the end. */
int mqtt_user_prop_next(const struct mqtt_props *p, uint32_t *pos, struct mqtt_bytes *key,
                        struct mqtt_bytes *value);

struct mqtt_connect {
    struct mqtt_bytes protocol_name;
    uint8_t protocol_version; /* MQTT_V31, MQTT_V311 or MQTT_V5 */
    bool clean_start;
    bool will_flag;
    uint8_t will_qos;
    bool will_retain;
    bool username_flag;
    bool password_flag;
    uint16_t keep_alive;
    struct mqtt_props props;
    struct mqtt_bytes client_id;
    struct mqtt_props will_props;
    struct mqtt_bytes will_topic;
    struct mqtt_bytes will_payload;
    struct mqtt_bytes username;
    struct mqtt_bytes password;
};

struct mqtt_connack {
    bool session_present;
    uint8_t reason; /* 3.1.1 return code or 5.0 reason code */
    struct mqtt_props props;
};

struct mqtt_publish {
    bool dup;
    uint8_t qos;
    bool retain;
    struct mqtt_bytes topic; /* may be empty in 5.0 when a topic alias is used */
    uint16_t packet_id;      /* 0 for QoS 0 */
    struct mqtt_props props;
    struct mqtt_bytes payload;
};

/* PUBACK, PUBREC, PUBREL, PUBCOMP. */
struct mqtt_ack {
    uint16_t packet_id;
    uint8_t reason; /* 0 when absent */
    struct mqtt_props props;
};

/* SUBSCRIBE and UNSUBSCRIBE: the topic filter list is kept encoded and walked
 * with mqtt_sub_next(); decoding has already validated every entry. */
struct mqtt_subscribe {
    uint16_t packet_id;
    struct mqtt_props props;
    struct mqtt_bytes entries; /* the payload */
    uint32_t count;            /* number of topic filters (>= 1) */
};

/* Subscription options byte (MQTT 5.0 3.8.3.1); for 3.1.1 only the QoS. */
#define MQTT_SUBOPT_QOS_MASK 0x03
#define MQTT_SUBOPT_NO_LOCAL 0x04
#define MQTT_SUBOPT_RAP 0x08
#define MQTT_SUBOPT_RH_SHIFT 4
#define MQTT_SUBOPT_RH_MASK 0x30

/* Walk the entries of a decoded SUBSCRIBE (options valid) or UNSUBSCRIBE
 * (options set to 0). *pos starts at 0. Returns 1 with the next entry, 0 at
 * the end. */
int mqtt_sub_next(const struct mqtt_subscribe *s, enum mqtt_type type, uint32_t *pos,
                  struct mqtt_bytes *filter, uint8_t *options);

/* Build the payload of a SUBSCRIBE or UNSUBSCRIBE for encoding: append one
 * entry (filter, then the options byte for MQTT_SUBSCRIBE only) to entries;
 * the caller counts entries in mqtt_subscribe.count. Returns 0, -ENOMEM, or
 * -EINVAL when type is neither MQTT_SUBSCRIBE nor MQTT_UNSUBSCRIBE. */
int mqtt_sub_entry_append(struct buf *entries, uint8_t type, const char *filter, uint16_t len,
                          uint8_t options);

/* SUBACK and UNSUBACK. */
struct mqtt_suback {
    uint16_t packet_id;
    struct mqtt_props props;
    const uint8_t *reasons; /* 3.1.1 UNSUBACK has none */
    uint32_t n_reasons;
};

/* DISCONNECT and AUTH. */
struct mqtt_disconnect {
    uint8_t reason;
    struct mqtt_props props;
};

struct mqtt_packet {
    enum mqtt_type type;
    uint8_t flags; /* low nibble of the fixed header */
    union {
        struct mqtt_connect connect;
        struct mqtt_connack connack;
        struct mqtt_publish publish;
        struct mqtt_ack ack;
        struct mqtt_subscribe subscribe;   /* and UNSUBSCRIBE */
        struct mqtt_suback suback;         /* and UNSUBACK */
        struct mqtt_disconnect disconnect; /* and AUTH */
    } u;
};

/*
 * Find the next packet in buf[0..len).
 * Returns 0 when more bytes are needed, or the total length of the packet
 * (fixed header + remaining length) when it is complete in the buffer, or
 * a negative MQTT reason code:
 *   -MQTT_RC_MALFORMED        the remaining length is not a valid varint,
 *                             or the packet type is 0;
 *   -MQTT_RC_PACKET_TOO_LARGE the packet would exceed max_size bytes
 *                             (reported as soon as the header is known).
 * *hdr_len receives the length of the fixed header when known.
 */
long mqtt_frame(const uint8_t *buf, size_t len, uint32_t max_size, uint32_t *hdr_len);

/*
 * Decode one complete packet of exactly `len` bytes (as framed by
 * mqtt_frame). `version` is the protocol level of the connection (ignored
 * for CONNECT, which carries its own; use 0 before CONNECT).
 * Returns 0, or a negative MQTT reason code: -MQTT_RC_MALFORMED or
 * -MQTT_RC_PROTOCOL_ERROR (as the 5.0 specification classifies the fault),
 * -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION for a CONNECT with an unknown
 * protocol name or level (out->u.connect.protocol_version is still set so
 * that the caller can answer in the right version).
 */
int mqtt_decode(uint8_t version, const uint8_t *buf, size_t len, struct mqtt_packet *out);

/*
 * Append one encoded packet to out. `version` selects the wire format
 * (properties are written only for MQTT_V5). Returns the number of bytes
 * appended, or a negative errno (-ENOMEM, -EINVAL for values the format
 * cannot carry).
 */
long mqtt_encode(struct buf *out, uint8_t version, const struct mqtt_packet *p);

/* Size in bytes of the encoded property block (without its length prefix). */
size_t mqtt_props_size(const struct mqtt_props *p);
/* Append the property block (length prefix + properties). */
int mqtt_props_encode(struct buf *out, const struct mqtt_props *p);

/* Validate MQTT UTF-8: well-formed, no surrogates, no U+0000
 * [MQTT-3.1.1 1.5.3-1/2, MQTT-5.0 1.5.4-1/2]. */
bool mqtt_utf8_valid(const uint8_t *s, size_t len);

/* Text of a reason code, for logs. */
const char *mqtt_rc_str(uint8_t rc);
const char *mqtt_type_str(enum mqtt_type t);

#endif
