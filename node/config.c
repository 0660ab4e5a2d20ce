/*
 * config.c - the node's configuration (see config.h).
 *
 * Every key is described once in the table `keys` below: its name, its type
 * and allowed range, and where it lives in struct config. Parsing is strict:
 * integers are plain decimal with no sign, no spaces and no trailing
 * characters; words (booleans, enumerations) are matched case-insensitively.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define ENV_PREFIX "STARLING_"
#define ENV_TEST_PREFIX "STARLING_TEST_"
/* At most this many characters of an offending value are quoted in errors. */
#define ERR_VALUE_MAX 80

enum key_type {
    T_ADDRESS, /* char[64], IPv4 or IPv6 literal */
    T_U8,
    T_U16,
    T_U32,
    T_U64,
    T_INT,
    T_BOOL,
    T_LOG_LEVEL,
    T_LOG_FORMAT,
    T_QUEUE_POLICY,
    T_SLOW_POLICY,
    T_PATH, /* char[256] */
    T_SYNC,
    T_FILE,        /* char[256], a file path; "" = unset */
    T_TLS_VERSION, /* uint8_t 12 | 13 */
    T_XPORTS,      /* unsigned: comma list of tcp,tls,ws,wss */
    T_ANON,        /* allow_anonymous: bool + "was set" */
    T_API_KEY,     /* char[200], KEY:SECRET */
    T_IPV4,        /* char[64], IPv4 literal */
    T_STR,         /* char[max], printable, no blanks */
    T_HOST,        /* char[max], a DNS name or IPv4 literal */
    T_SEEDS,       /* char[max], host[:port],... */
};

struct key_def {
    const char *name;
    enum key_type type;
    size_t offset;
    uint64_t min, max; /* integer types only */
};

#define KEY(name, type, field, min, max)                                                           \
    {                                                                                              \
        name, type, offsetof(struct config, field), min, max                                       \
    }

static const struct key_def keys[] = {
    KEY("bind_address", T_ADDRESS, bind_address, 0, 0),
    KEY("port", T_U16, port, 1, 65535),
    KEY("workers", T_INT, workers, 0, 256),
    KEY("log_level", T_LOG_LEVEL, log_level, 0, 0),
    KEY("log_format", T_LOG_FORMAT, log_format, 0, 0),
    KEY("max_packet_size", T_U32, max_packet_size, 64, 268435455),
    KEY("max_connections", T_U32, max_connections, 0, 10000000),
    KEY("receive_maximum", T_U16, receive_maximum, 1, 65535),
    KEY("max_inflight_messages", T_U16, max_inflight, 1, 65535),
    KEY("max_queued_messages", T_U32, max_queued_messages, 0, 10000000),
    KEY("max_queued_bytes", T_U64, max_queued_bytes, 0, (uint64_t)1 << 40),
    KEY("queue_full_policy", T_QUEUE_POLICY, queue_full_policy, 0, 0),
    KEY("queue_qos0_messages", T_BOOL, queue_qos0_offline, 0, 0),
    KEY("slow_subscriber_policy", T_SLOW_POLICY, slow_subscriber_policy, 0, 0),
    KEY("max_publisher_pause", T_U32, max_publisher_pause_ms, 0, 3600000),
    KEY("max_write_buffer", T_U32, max_write_buffer, 4096, 1073741824),
    KEY("topic_alias_maximum", T_U16, topic_alias_maximum, 0, 65535),
    KEY("max_keepalive", T_U16, max_keepalive, 1, 65535),
    KEY("max_topic_levels", T_U16, max_topic_levels, 0, 65535),
    KEY("connect_timeout", T_U32, connect_timeout, 1, 3600),
    KEY("sys_interval", T_U32, sys_interval, 0, 86400),
    KEY("max_session_expiry", T_U32, max_session_expiry, 0, 4294967295u),
    KEY("retain_available", T_BOOL, retain_available, 0, 0),
    KEY("max_qos", T_U8, max_qos, 0, 2),
    KEY("allow_zero_length_clientid", T_BOOL, allow_zero_length_clientid, 0, 0),
    KEY("persistence", T_BOOL, persistence, 0, 0),
    KEY("data_dir", T_PATH, data_dir, 0, 0),
    KEY("sync", T_SYNC, sync, 0, 0),
    KEY("tls_port", T_U16, tls_port, 0, 65535),
    KEY("ws_port", T_U16, ws_port, 0, 65535),
    KEY("wss_port", T_U16, wss_port, 0, 65535),
    KEY("proxy_protocol", T_XPORTS, proxy_protocol, 0, 0),
    KEY("tls_certfile", T_FILE, tls_certfile, 0, 0),
    KEY("tls_keyfile", T_FILE, tls_keyfile, 0, 0),
    KEY("tls_cafile", T_FILE, tls_cafile, 0, 0),
    KEY("tls_require_certificate", T_BOOL, tls_require_certificate, 0, 0),
    KEY("tls_use_identity_as_username", T_BOOL, tls_use_identity_as_username, 0, 0),
    KEY("tls_ciphers", T_FILE, tls_ciphers, 0, 0),
    KEY("tls_min_version", T_TLS_VERSION, tls_min_version, 0, 0),
    KEY("ws_origins", T_FILE, ws_origins, 0, 0),
    KEY("allow_anonymous", T_ANON, allow_anonymous, 0, 0),
    KEY("password_file", T_FILE, password_file, 0, 0),
    KEY("acl_file", T_FILE, acl_file, 0, 0),
    KEY("max_connections_per_listener", T_U32, max_connections_per_listener, 0, 10000000),
    KEY("max_connection_rate", T_U32, max_connection_rate, 0, 1000000),
    KEY("max_subscriptions_per_client", T_U32, max_subscriptions_per_client, 0, 10000000),
    KEY("max_topic_length", T_U16, max_topic_length, 1, 65535),
    KEY("max_publish_rate", T_U32, max_publish_rate, 0, 10000000),
    KEY("admin_port", T_U16, admin_port, 0, 65535),
    KEY("admin_bind", T_ADDRESS, admin_bind, 0, 0),
    KEY("api_key", T_API_KEY, api_key, 0, 0),
    KEY("metrics_auth", T_BOOL, metrics_auth, 0, 0),
    KEY("admin_tls", T_BOOL, admin_tls, 0, 0),
    KEY("node_name", T_STR, node_name, 1, sizeof(((struct config *)0)->node_name)),
    KEY("cluster_address", T_IPV4, cluster_address, 0, 0),
    KEY("cluster_advertise", T_HOST, cluster_advertise, 0,
        sizeof(((struct config *)0)->cluster_advertise)),
    KEY("cluster_port", T_U16, cluster_port, 1, 65535),
    KEY("raft_port", T_U16, raft_port, 1, 65535),
    KEY("cluster_seeds", T_SEEDS, cluster_seeds, 0, sizeof(((struct config *)0)->cluster_seeds)),
    KEY("cluster_dns", T_HOST, cluster_dns, 0, sizeof(((struct config *)0)->cluster_dns)),
    KEY("cluster_name", T_STR, cluster_name, 1, sizeof(((struct config *)0)->cluster_name)),
    KEY("cluster_secret", T_STR, cluster_secret, 0, sizeof(((struct config *)0)->cluster_secret)),
    KEY("cluster_claim_timeout", T_U32, cluster_claim_timeout, 100, 600000),
    KEY("cluster_down_after", T_U32, cluster_down_after, 100, 86400000),
    KEY("cluster_resend_wait", T_U32, cluster_resend_wait, 0, 600000),
    KEY("cluster_auto_rebuild", T_BOOL, cluster_auto_rebuild, 0, 0),
    KEY("cluster_outbox_messages", T_U64, cluster_outbox_messages, 16, 1000000000),
    KEY("cluster_outbox_bytes", T_U64, cluster_outbox_bytes, 65536, (uint64_t)1 << 40),
};

static const char *const xport_names[CONFIG_XPORT_COUNT] = {"tcp", "tls", "ws", "wss"};

const char *config_xport_name(int xport)
{
    return xport >= 0 && xport < CONFIG_XPORT_COUNT ? xport_names[xport] : "?";
}

bool config_allow_anonymous(const struct config *c)
{
    return c->allow_anonymous_set ? c->allow_anonymous : c->password_file[0] == '\0';
}

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof(*c));
    strcpy(c->bind_address, "0.0.0.0");
    c->port = 1883;
    c->workers = 0;
    c->log_level = LOG_LEVEL_INFO;
    c->max_packet_size = 1048576;
    c->max_connections = 0;
    c->receive_maximum = 65535;
    c->max_inflight = 20;
    c->max_queued_messages = 1000000;
    c->max_queued_bytes = 4194304;
    c->queue_full_policy = QUEUE_DROP_NEW;
    c->slow_subscriber_policy = SLOW_BACKPRESSURE;
    c->max_publisher_pause_ms = 5000;
    c->max_write_buffer = 262144;
    c->queue_qos0_offline = false;
    c->topic_alias_maximum = 10;
    c->max_keepalive = 65535;
    c->max_topic_levels = 200;
    c->connect_timeout = 10;
    c->sys_interval = 10;
    c->max_session_expiry = 0;
    c->retain_available = true;
    c->max_qos = 2;
    c->allow_zero_length_clientid = true;
    c->persistence = true;
    strcpy(c->data_dir, "./data");
    c->sync = SYNC_ALWAYS;
    c->sync_interval_ms = 0;
    c->tls_min_version = 12;
    c->allow_anonymous = true;
    c->max_topic_length = 65535;
    c->admin_port = 18083;
    c->admin_bind[0] = '\0';
    c->api_key[0] = '\0';
    c->metrics_auth = false;
    c->node_name[0] = '\0';
    c->cluster_address[0] = '\0';
    c->cluster_advertise[0] = '\0';
    c->cluster_port = 4370;
    c->raft_port = 4371;
    c->cluster_seeds[0] = '\0';
    c->cluster_dns[0] = '\0';
    strcpy(c->cluster_name, "starling");
    c->cluster_secret[0] = '\0';
    c->cluster_claim_timeout = 5000;
    c->cluster_down_after = 5000;
    c->cluster_resend_wait = 60000;
    c->cluster_auto_rebuild = true;
    c->cluster_outbox_messages = 1000000;
    c->cluster_outbox_bytes = 256ull << 20;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const struct key_def *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* "bad value 'v' for key 'k': reason (expected ...)"; long values are cut. */
static int bad_value(char *err, size_t errlen, const struct key_def *k, const char *value,
                     const char *reason, const char *expected)
{
    size_t n = strlen(value);
    set_err(err, errlen, "bad value '%.*s%s' for key '%s': %s (expected %s)", ERR_VALUE_MAX, value,
            n > ERR_VALUE_MAX ? "..." : "", k->name, reason, expected);
    return -EINVAL;
}

/* Strict unsigned decimal: digits only, no sign, no blanks, no overflow. */
static int parse_uint(const char *s, uint64_t *out)
{
    if (!*s)
        return -EINVAL;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* NULL when v is KEY:SECRET as the admin API takes it (admin_api_key_valid
 * in admin/keys.c checks the same): KEY 1..64 of [A-Za-z0-9._-], SECRET 8..128
 * printable ASCII characters without blanks. Else the reason. */
static const char *api_key_check(const char *v)
{
    const char *colon = strchr(v, ':');
    if (!colon)
        return "no ':' between the key and the secret";
    size_t klen = (size_t)(colon - v);
    if (klen < 1 || klen > 64)
        return "the key must have 1 to 64 characters";
    for (size_t i = 0; i < klen; i++)
        if (!isalnum((unsigned char)v[i]) && v[i] != '.' && v[i] != '_' && v[i] != '-')
            return "the key may hold only letters, digits, '.', '_' and '-'";
    size_t slen = strlen(colon + 1);
    if (slen < 8 || slen > 128)
        return "the secret must have 8 to 128 characters";
    for (const char *p = colon + 1; *p; p++)
        if (*p <= ' ' || *p > '~')
            return "the secret may hold only printable ASCII characters without blanks";
    return NULL;
}

/* A DNS name (letters, digits, '-', '.', '_') or an IPv4 literal. */
static bool host_valid(const char *h, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '-' && h[i] != '.' && h[i] != '_')
            return false;
    return true;
}

/* NULL when v is a list host[:port],... (blanks around items allowed), else
 * the reason. */
static const char *seeds_check(const char *v)
{
    const char *p = v;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && end[-1] == ' ')
            end--;
        if (end == start)
            return "an empty item";
        const char *colon = memchr(start, ':', (size_t)(end - start));
        const char *hend = colon ? colon : end;
        if (!host_valid(start, (size_t)(hend - start)))
            return "a bad host name (expected a DNS name or an IPv4 address)";
        if (colon) {
            char port[8];
            size_t pl = (size_t)(end - colon - 1);
            uint64_t v64;
            if (pl == 0 || pl >= sizeof(port))
                return "a bad port";
            memcpy(port, colon + 1, pl);
            port[pl] = '\0';
            if (parse_uint(port, &v64) < 0 || v64 < 1 || v64 > 65535)
                return "a bad port";
        }
        if (*p == ',')
            p++;
        if (*p == '\0' && p > v && p[-1] == ',')
            return "an empty item";
    }
    return NULL;
}

static int set_integer(struct config *c, const struct key_def *k, const char *value, char *err,
                       size_t errlen)
{
    char expected[64];
    snprintf(expected, sizeof(expected), "an integer in %llu..%llu", (unsigned long long)k->min,
             (unsigned long long)k->max);
    uint64_t v;
    int rc = parse_uint(value, &v);
    if (rc == -EINVAL)
        return bad_value(err, errlen, k, value, *value ? "not a decimal integer" : "empty value",
                         expected);
    if (rc < 0 || v < k->min || v > k->max)
        return bad_value(err, errlen, k, value, "out of range", expected);
    char *field = (char *)c + k->offset;
    switch (k->type) {
    case T_U8:
        *(uint8_t *)field = (uint8_t)v;
        break;
    case T_U16:
        *(uint16_t *)field = (uint16_t)v;
        break;
    case T_U32:
        *(uint32_t *)field = (uint32_t)v;
        break;
    case T_U64:
        *(uint64_t *)field = v;
        break;
    case T_INT:
        *(int *)field = (int)v;
        break;
    default:
        break;
    }
    return 0;
}

/* One parser per key type below: each checks value for key k and, when it is
 * valid, stores it in field (the key's member of the config). */

static int set_address(const struct key_def *k, char *field, const char *value, char *err,
                       size_t errlen)
{
    const char *expected = "an IPv4 or IPv6 address literal such as 0.0.0.0 or ::";
    if (!*value)
        return bad_value(err, errlen, k, value, "empty value", expected);
    if (strlen(value) >= sizeof(((struct config *)0)->bind_address))
        return bad_value(err, errlen, k, value, "too long", expected);
    unsigned char addr[16];
    if (inet_pton(AF_INET, value, addr) != 1 && inet_pton(AF_INET6, value, addr) != 1)
        return bad_value(err, errlen, k, value, "not an IP address", expected);
    strcpy(field, value); /* every T_ADDRESS field is char[64] */
    return 0;
}

static int set_ipv4(const struct key_def *k, char *field, const char *value, char *err,
                    size_t errlen)
{
    const char *expected = "an IPv4 address literal such as 10.0.0.5";
    unsigned char addr[4];
    if (!*value)
        return bad_value(err, errlen, k, value, "empty value", expected);
    if (strlen(value) >= 16 || inet_pton(AF_INET, value, addr) != 1)
        return bad_value(err, errlen, k, value, "not an IPv4 address", expected);
    strcpy(field, value);
    return 0;
}

static int set_str(const struct key_def *k, char *field, const char *value, char *err,
                   size_t errlen)
{
    const char *expected = "printable ASCII characters without blanks";
    size_t n = strlen(value);
    if (n < k->min)
        return bad_value(err, errlen, k, value, "empty value", expected);
    if (n >= k->max)
        return bad_value(err, errlen, k, value, "too long", expected);
    for (const char *p = value; *p; p++)
        if (*p <= ' ' || *p > '~') {
            /* cluster_secret is a secret: never quoted */
            if (strcmp(k->name, "cluster_secret") == 0) {
                set_err(err, errlen, "bad value for key '%s': not %s", k->name, expected);
                return -EINVAL;
            }
            return bad_value(err, errlen, k, value, "bad character", expected);
        }
    strcpy(field, value);
    return 0;
}

static int set_host(const struct key_def *k, char *field, const char *value, char *err,
                    size_t errlen)
{
    size_t n = strlen(value);
    if (n && (n >= k->max || !host_valid(value, n)))
        return bad_value(err, errlen, k, value, "not a host name", "a DNS name");
    strcpy(field, value);
    return 0;
}

static int set_seeds(const struct key_def *k, char *field, const char *value, char *err,
                     size_t errlen)
{
    const char *why = seeds_check(value);
    if (strlen(value) >= k->max)
        why = "too long";
    if (why)
        return bad_value(err, errlen, k, value, why, "a comma-separated list of host[:port]");
    strcpy(field, value);
    return 0;
}

static int set_api_key(const struct key_def *k, char *field, const char *value, char *err,
                       size_t errlen)
{
    /* the value is a secret: never quoted in an error */
    const char *why = api_key_check(value);
    if (why) {
        set_err(err, errlen, "bad value for key '%s': %s (expected KEY:SECRET)", k->name, why);
        return -EINVAL;
    }
    strcpy(field, value);
    return 0;
}

static int set_bool(const struct key_def *k, bool *field, const char *value, char *err,
                    size_t errlen)
{
    bool b;
    if (parse_bool(value, &b) < 0)
        return bad_value(err, errlen, k, value, *value ? "not a boolean" : "empty value",
                         "true|false|yes|no|on|off|1|0");
    *field = b;
    return 0;
}

static int set_log_level(const struct key_def *k, enum log_level *field, const char *value,
                         char *err, size_t errlen)
{
    enum log_level l;
    if (log_level_parse(value, &l) < 0)
        return bad_value(err, errlen, k, value, *value ? "not a log level" : "empty value",
                         "error|warn|info|debug");
    *field = l;
    return 0;
}

static int set_log_format(const struct key_def *k, enum log_format *field, const char *value,
                          char *err, size_t errlen)
{
    enum log_format f;
    if (log_format_parse(value, &f) < 0)
        return bad_value(err, errlen, k, value, *value ? "not a log format" : "empty value",
                         "text|json");
    *field = f;
    return 0;
}

static int set_queue_policy(const struct key_def *k, enum queue_policy *field, const char *value,
                            char *err, size_t errlen)
{
    enum queue_policy p;
    if (strcasecmp(value, "drop_new") == 0)
        p = QUEUE_DROP_NEW;
    else if (strcasecmp(value, "drop_oldest") == 0)
        p = QUEUE_DROP_OLDEST;
    else
        return bad_value(err, errlen, k, value, *value ? "not a queue policy" : "empty value",
                         "drop_new|drop_oldest");
    *field = p;
    return 0;
}

static int set_slow_policy(const struct key_def *k, enum slow_policy *field, const char *value,
                           char *err, size_t errlen)
{
    static const char *const names[] = {"backpressure", "drop_new", "drop_oldest", "disconnect"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(value, names[i]) == 0) {
            *field = (enum slow_policy)i;
            return 0;
        }
    }
    return bad_value(err, errlen, k, value, *value ? "not a slow subscriber policy" : "empty value",
                     "backpressure|drop_new|drop_oldest|disconnect");
}

static int set_path(const struct key_def *k, char *field, const char *value, char *err,
                    size_t errlen)
{
    if (!*value)
        return bad_value(err, errlen, k, value, "empty value", "a directory path");
    if (strlen(value) >= sizeof(((struct config *)0)->data_dir))
        return bad_value(err, errlen, k, value, "too long", "a path of at most 255 bytes");
    strcpy(field, value);
    return 0;
}

static int set_sync(struct config *c, const struct key_def *k, const char *value, char *err,
                    size_t errlen)
{
    const char *expected = "always|none|interval MS (MS from 1 to 3600000)";
    if (strcasecmp(value, "always") == 0) {
        c->sync = SYNC_ALWAYS;
        c->sync_interval_ms = 0;
    } else if (strcasecmp(value, "none") == 0) {
        c->sync = SYNC_NONE;
        c->sync_interval_ms = 0;
    } else if (strncasecmp(value, "interval", 8) == 0 && isspace((unsigned char)value[8])) {
        const char *ms = value + 8;
        while (isspace((unsigned char)*ms))
            ms++;
        uint64_t v;
        if (parse_uint(ms, &v) < 0 || v < 1 || v > 3600000)
            return bad_value(err, errlen, k, value, "bad interval", expected);
        c->sync = SYNC_INTERVAL;
        c->sync_interval_ms = (uint32_t)v;
    } else {
        return bad_value(err, errlen, k, value, *value ? "not a sync mode" : "empty value",
                         expected);
    }
    return 0;
}

static int set_file(const struct key_def *k, char *field, const char *value, char *err,
                    size_t errlen)
{
    if (strlen(value) >= 256)
        return bad_value(err, errlen, k, value, "too long", "at most 255 bytes");
    strcpy(field, value);
    return 0;
}

static int set_tls_version(const struct key_def *k, uint8_t *field, const char *value, char *err,
                           size_t errlen)
{
    uint8_t v;
    if (strcasecmp(value, "tlsv1.2") == 0 || strcmp(value, "1.2") == 0)
        v = 12;
    else if (strcasecmp(value, "tlsv1.3") == 0 || strcmp(value, "1.3") == 0)
        v = 13;
    else
        return bad_value(err, errlen, k, value, "not a TLS version", "tlsv1.2|tlsv1.3");
    *field = v;
    return 0;
}

static int set_xports(const struct key_def *k, unsigned *field, const char *value, char *err,
                      size_t errlen)
{
    unsigned bits = 0;
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == 0)
            break;
        int found = -1;
        for (int i = 0; i < CONFIG_XPORT_COUNT; i++)
            if (strlen(xport_names[i]) == n && strncasecmp(p, xport_names[i], n) == 0)
                found = i;
        if (found < 0 && !(n == 4 && strncasecmp(p, "none", 4) == 0))
            return bad_value(err, errlen, k, value, "unknown listener",
                             "a comma list of tcp,tls,ws,wss (or none)");
        if (found >= 0)
            bits |= 1u << found;
        p += n;
    }
    *field = bits;
    return 0;
}

static int set_anon(struct config *c, const struct key_def *k, const char *value, char *err,
                    size_t errlen)
{
    bool b;
    if (parse_bool(value, &b) < 0)
        return bad_value(err, errlen, k, value, *value ? "not a boolean" : "empty value",
                         "true|false|yes|no|on|off|1|0");
    c->allow_anonymous = b;
    c->allow_anonymous_set = true;
    return 0;
}

int config_set(struct config *c, const char *key, const char *value, char *err, size_t errlen)
{
    const struct key_def *k = find_key(key);
    if (!k) {
        set_err(err, errlen, "unknown key '%s'", key);
        return -EINVAL;
    }
    char *field = (char *)c + k->offset;
    switch (k->type) {
    case T_ADDRESS:
        return set_address(k, field, value, err, errlen);
    case T_IPV4:
        return set_ipv4(k, field, value, err, errlen);
    case T_STR:
        return set_str(k, field, value, err, errlen);
    case T_HOST:
        return set_host(k, field, value, err, errlen);
    case T_SEEDS:
        return set_seeds(k, field, value, err, errlen);
    case T_API_KEY:
        return set_api_key(k, field, value, err, errlen);
    case T_BOOL:
        return set_bool(k, (bool *)field, value, err, errlen);
    case T_LOG_LEVEL:
        return set_log_level(k, (enum log_level *)field, value, err, errlen);
    case T_LOG_FORMAT:
        return set_log_format(k, (enum log_format *)field, value, err, errlen);
    case T_QUEUE_POLICY:
        return set_queue_policy(k, (enum queue_policy *)field, value, err, errlen);
    case T_SLOW_POLICY:
        return set_slow_policy(k, (enum slow_policy *)field, value, err, errlen);
    case T_PATH:
        return set_path(k, field, value, err, errlen);
    case T_SYNC:
        return set_sync(c, k, value, err, errlen);
    case T_FILE:
        return set_file(k, field, value, err, errlen);
    case T_TLS_VERSION:
        return set_tls_version(k, (uint8_t *)field, value, err, errlen);
    case T_XPORTS:
        return set_xports(k, (unsigned *)field, value, err, errlen);
    case T_ANON:
        return set_anon(c, k, value, err, errlen);
    default:
        return set_integer(c, k, value, err, errlen);
    }
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Parse one (already trimmed, non-empty, non-comment) line into tmp. */
static int apply_line(struct config *tmp, char *line, char *err, size_t errlen)
{
    char *key = line;
    char *p = line;
    while (*p && !isspace((unsigned char)*p))
        p++;
    char *value = p;
    if (*p) {
        *p = '\0';
        value = trim(p + 1);
    }
    if (!find_key(key)) {
        set_err(err, errlen, "unknown key '%s'", key);
        return -EINVAL;
    }
    if (!*value) {
        set_err(err, errlen, "missing value for key '%s' (expected \"%s VALUE\")", key, key);
        return -EINVAL;
    }
    return config_set(tmp, key, value, err, errlen);
}

int config_load_file(struct config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        set_err(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct config tmp = *c;
    char *line = NULL;
    size_t cap = 0;
    unsigned long lineno = 0;
    int rc = 0;
    char why[512];
    errno = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (memchr(line, '\0', (size_t)n)) {
            set_err(err, errlen, "%s:%lu: line contains a NUL byte", path, lineno);
            rc = -EINVAL;
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        if (apply_line(&tmp, s, why, sizeof(why)) < 0) {
            set_err(err, errlen, "%s:%lu: %s", path, lineno, why);
            rc = -EINVAL;
            break;
        }
        errno = 0;
    }
    if (rc == 0 && ferror(f)) {
        int e = errno ? errno : EIO;
        set_err(err, errlen, "%s: %s", path, strerror(e));
        rc = -e;
    }
    free(line);
    fclose(f);
    if (rc == 0)
        *c = tmp;
    return rc;
}

/* Variables Kubernetes injects for a Service named "starling"
 * (STARLING_PORT=tcp://..., STARLING_SERVICE_HOST, STARLING_PORT_1883_TCP...). */
static bool looks_like_service_link(const char *key, const char *value)
{
    return strncmp(value, "tcp://", 6) == 0 || strncmp(value, "udp://", 6) == 0 ||
           strncmp(value, "sctp://", 7) == 0 || strncmp(key, "service_", 8) == 0 ||
           strncmp(key, "port_", 5) == 0;
}

int config_load_env(struct config *c, char *const *envp, char *err, size_t errlen)
{
    if (!envp)
        return 0;
    const size_t plen = strlen(ENV_PREFIX);
    struct config tmp = *c;
    for (char *const *e = envp; *e; e++) {
        const char *var = *e;
        if (strncmp(var, ENV_PREFIX, plen) != 0 ||
            strncmp(var, ENV_TEST_PREFIX, strlen(ENV_TEST_PREFIX)) == 0)
            continue;
        const char *eq = strchr(var, '=');
        if (!eq)
            continue;
        const char *value = eq + 1;
        size_t namelen = (size_t)(eq - var);
        size_t keylen = namelen - plen;
        char key[128];
        if (keylen >= sizeof(key)) {
            set_err(err, errlen, "%.*s: unknown key", (int)namelen, var);
            return -EINVAL;
        }
        for (size_t i = 0; i < keylen; i++)
            key[i] = (char)tolower((unsigned char)var[plen + i]);
        key[keylen] = '\0';
        char why[512];
        if (config_set(&tmp, key, value, why, sizeof(why)) < 0) {
            const char *hint = looks_like_service_link(key, value)
                                   ? "; this looks like a Kubernetes service link variable: set "
                                     "enableServiceLinks: false in the pod spec"
                                   : "";
            set_err(err, errlen, "%.*s: %s%s", (int)namelen, var, why, hint);
            return -EINVAL;
        }
    }
    *c = tmp;
    return 0;
}

int config_worker_count(const struct config *c)
{
    if (c->workers > 0)
        return c->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    if (n > 256)
        return 256;
    return (int)n;
}

bool config_clustered(const struct config *c)
{
    return c->cluster_seeds[0] != '\0' || c->cluster_dns[0] != '\0';
}

int config_cluster_resolve(struct config *c, char *err, size_t errlen)
{
    if (!c->node_name[0]) {
        if (gethostname(c->node_name, sizeof(c->node_name) - 1) != 0 || !c->node_name[0])
            snprintf(c->node_name, sizeof(c->node_name), "starling");
        c->node_name[sizeof(c->node_name) - 1] = '\0';
    }
    if (!c->cluster_address[0]) {
        unsigned char addr[4];
        if (inet_pton(AF_INET, c->bind_address, addr) != 1 ||
            strcmp(c->bind_address, "0.0.0.0") == 0) {
            set_err(err, errlen,
                    "cluster_address is required: bind_address '%s' is not an IPv4 address other "
                    "nodes can reach (set cluster_address to this node's IPv4 address)",
                    c->bind_address);
            return -EINVAL;
        }
        snprintf(c->cluster_address, sizeof(c->cluster_address), "%s", c->bind_address);
    }
    if (c->cluster_port == c->raft_port) {
        set_err(err, errlen, "cluster_port and raft_port must differ (both are %u)",
                c->cluster_port);
        return -EINVAL;
    }
    return 0;
}

int config_seeds_split(const struct config *c, char (*out)[256], unsigned max, char *err,
                       size_t errlen)
{
    const char *why = seeds_check(c->cluster_seeds);
    if (why) {
        set_err(err, errlen, "cluster_seeds: %s", why);
        return -EINVAL;
    }
    unsigned n = 0;
    const char *p = c->cluster_seeds;
    while (*p && n < max) {
        while (*p == ' ')
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && end[-1] == ' ')
            end--;
        if (memchr(start, ':', (size_t)(end - start)))
            snprintf(out[n], 256, "%.*s", (int)(end - start), start);
        else
            snprintf(out[n], 256, "%.*s:%u", (int)(end - start), start, c->raft_port);
        n++;
        if (*p == ',')
            p++;
    }
    return (int)n;
}
