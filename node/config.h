/*
 * config.h - the node's configuration.
 *
 * Sources, later ones overriding earlier: built-in defaults, the config file
 * (if any), STARLING_* environment variables, command-line options (applied
 * by main). The file format: one "key value" per line, '#' starts a comment,
 * blank lines ignored. Every key KEY has the environment variable
 * STARLING_KEY (upper case). docs/configuration.md documents every key.
 *
 * Loaded once at start-up by main, read-only afterwards (any thread may read).
 */
#ifndef STARLING_CONFIG_H
#define STARLING_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

enum queue_policy { QUEUE_DROP_NEW = 0, QUEUE_DROP_OLDEST = 1 };

/* What happens when a message finds a *connected* subscriber's queue full
 * (docs/configuration.md says what each loses). */
enum slow_policy {
    SLOW_BACKPRESSURE = 0, /* pause the publishers feeding it (then drop_new) */
    SLOW_DROP_NEW = 1,
    SLOW_DROP_OLDEST = 2,
    SLOW_DISCONNECT = 3,
};

/* When the storage of persistent sessions reaches the disk. */
enum sync_mode { SYNC_ALWAYS = 0, SYNC_INTERVAL = 1, SYNC_NONE = 2 };

struct config {
    char bind_address[64];        /* bind_address, default "0.0.0.0" */
    uint16_t port;                /* port, default 1883 */
    int workers;                  /* workers, default 0 = number of cores */
    enum log_level log_level;     /* log_level, default info */
    enum log_format log_format;   /* log_format: text (default) | json */
    uint32_t max_packet_size;     /* max_packet_size, default 1048576 */
    uint32_t max_connections;     /* max_connections, default 0 = unlimited */
    uint16_t receive_maximum;     /* receive_maximum, default 65535 (incoming QoS>0 window) */
    uint16_t max_inflight;        /* max_inflight_messages, default 20 (outgoing window) */
    uint32_t max_queued_messages; /* max_queued_messages, default 1000000 */
    uint64_t max_queued_bytes;    /* max_queued_bytes, default 4194304; 0 = no byte limit */
    enum queue_policy queue_full_policy; /* queue_full_policy: drop_new (default) | drop_oldest */
    enum slow_policy slow_subscriber_policy; /* slow_subscriber_policy, default backpressure */
    uint32_t max_publisher_pause_ms;         /* max_publisher_pause (ms), default 5000 */
    uint32_t max_write_buffer;               /* max_write_buffer bytes, default 262144 */
    bool queue_qos0_offline;                 /* queue_qos0_messages, default false */
    uint16_t topic_alias_maximum;            /* topic_alias_maximum, default 10 */
    uint16_t max_keepalive;                  /* max_keepalive, default 65535 */
    uint16_t max_topic_levels;               /* max_topic_levels, default 200; 0 = no limit */
    uint32_t connect_timeout;                /* connect_timeout seconds, default 10 */
    uint32_t sys_interval;                   /* sys_interval seconds, default 10; 0 = off */
    uint32_t max_session_expiry;             /* max_session_expiry seconds, default 0 = no cap */
    bool retain_available;                   /* retain_available, default true */
    uint8_t max_qos;                         /* max_qos, default 2 */
    bool allow_zero_length_clientid;         /* allow_zero_length_clientid, default true */
    bool persistence;                        /* persistence, default true */
    char data_dir[256];                      /* data_dir, default "./data" */
    enum sync_mode sync;                     /* sync: always (default) | interval MS | none */
    uint32_t sync_interval_ms;               /* the MS of "sync interval MS" */

    /* Listeners besides `port` (docs/security.md); 0 = off. */
    uint16_t tls_port;                 /* tls_port: MQTT over TLS, default 0 */
    uint16_t ws_port;                  /* ws_port: MQTT over WebSocket (/mqtt), default 0 */
    uint16_t wss_port;                 /* wss_port: WebSocket over TLS, default 0 */
    unsigned proxy_protocol;           /* proxy_protocol: CONFIG_XPORT_* bits, default none */
    char tls_certfile[256];            /* tls_certfile: PEM certificate (+ chain) */
    char tls_keyfile[256];             /* tls_keyfile: PEM private key */
    char tls_cafile[256];              /* tls_cafile: CAs of client certificates */
    bool tls_require_certificate;      /* tls_require_certificate, default false */
    bool tls_use_identity_as_username; /* tls_use_identity_as_username, default false */
    uint8_t tls_min_version;           /* tls_min_version: 12 (default) or 13 */
    char tls_ciphers[256];             /* tls_ciphers: OpenSSL list for TLS 1.2, "" = default */
    char ws_origins[256]; /* ws_origins: comma list of allowed browser Origins, "" = any */
    /* allow_anonymous: default true without password_file, false with one
     * (config_allow_anonymous gives the effective value) */
    bool allow_anonymous;
    bool allow_anonymous_set;
    char password_file[256]; /* password_file: Mosquitto format, "" = none */
    char acl_file[256];      /* acl_file: Mosquitto aclfile, "" = none */

    /* Limits (docs/security.md); 0 = unlimited. */
    uint32_t max_connections_per_listener; /* per listener (tcp, tls, ws, wss) */
    uint32_t max_connection_rate;          /* new connections per second per source address */
    uint32_t max_subscriptions_per_client; /* subscriptions one session may hold */
    uint16_t max_topic_length;             /* bytes of a topic name or filter, default 65535 */
    uint32_t max_publish_rate;             /* PUBLISH packets per second per client */
    /* The admin HTTP API (admin/admin.h, docs/api.md). */
    uint16_t admin_port; /* admin_port, default 18083; 0 = no admin API */
    char admin_bind[64]; /* admin_bind, default "" = bind_address */
    char api_key[200];   /* api_key KEY:SECRET, default "" = none (only the public endpoints) */
    bool metrics_auth;   /* metrics_auth, default false: GET /metrics needs no API key */
    bool admin_tls;      /* admin_tls, default false: HTTPS with tls_certfile/tls_keyfile */

    /* The cluster (docs/cluster.md). With neither cluster_seeds nor
     * cluster_dns the node runs alone: no cluster thread, no extra port. */
    char node_name[128];            /* node_name, default "" = the host name */
    char cluster_address[64];       /* cluster_address (IPv4), default "" = bind_address */
    char cluster_advertise[256];    /* cluster_advertise host name, default "" = none */
    uint16_t cluster_port;          /* cluster_port, default 4370 (forwarding channel) */
    uint16_t raft_port;             /* raft_port, default 4371 */
    char cluster_seeds[1024];       /* cluster_seeds host[:raft_port],...; default "" */
    char cluster_dns[256];          /* cluster_dns NAME (A records), default "" */
    char cluster_name[64];          /* cluster_name, default "starling" */
    char cluster_secret[256];       /* cluster_secret, default "" */
    uint32_t cluster_claim_timeout; /* cluster_claim_timeout ms, default 5000 */
    uint32_t cluster_down_after;    /* cluster_down_after ms, default 5000 */
    uint32_t cluster_resend_wait;   /* cluster_resend_wait ms, default 60000 */
    bool cluster_auto_rebuild;      /* cluster_auto_rebuild, default true */
    /* per destination node: QoS 1/2 forwards not acknowledged yet
     * (node/cluster_fwd.c) */
    uint64_t cluster_outbox_messages; /* cluster_outbox_messages, default 1000000 */
    uint64_t cluster_outbox_bytes;    /* cluster_outbox_bytes, default 256 MiB */
};

/* A session resumed from its replicated record (cluster) waits for its old
 * owner's QoS 2 ids twice cluster_resend_wait (struct session.blind_until):
 * a resend is held unanswered in the first half, and for one
 * cluster_resend_wait from its connection (session_holds); ids that come
 * after the hold still answer the client's later resends, and go on with
 * the session to its next node (docs/cluster.md, *Ids that come after the
 * hold still answer resends*). */
#define CONFIG_RESEND_KNOW_MS(c) (2 * (uint64_t)(c)->cluster_resend_wait)

/* The transports (listener kinds), also the bits of proxy_protocol. */
enum config_xport { CONFIG_XPORT_TCP = 0, CONFIG_XPORT_TLS, CONFIG_XPORT_WS, CONFIG_XPORT_WSS };
#define CONFIG_XPORT_COUNT 4
/* "tcp", "tls", "ws", "wss" */
const char *config_xport_name(int xport);

/* The effective allow_anonymous: as set, else true only without a password_file. */
bool config_allow_anonymous(const struct config *c);

/* Whether the configuration asks for a cluster (cluster_seeds or
 * cluster_dns set). */
bool config_clustered(const struct config *c);

/*
 * Complete and check the cluster keys of a clustered configuration: an empty
 * node_name becomes the host name; an empty cluster_address becomes
 * bind_address, which must then be an IPv4 address that is not the
 * wildcard 0.0.0.0. Returns 0, or -EINVAL with the reason in err.
 */
int config_cluster_resolve(struct config *c, char *err, size_t errlen);

/*
 * Split cluster_seeds into "host:port" strings (the port defaults to
 * raft_port): out[i] holds at most 255 characters. Returns how many (at most
 * max), or -EINVAL with the reason in err (empty item, bad port, bad host).
 */
int config_seeds_split(const struct config *c, char (*out)[256], unsigned max, char *err,
                       size_t errlen);

/* Fill c with the built-in defaults. */
void config_defaults(struct config *c);

/* Apply one key/value (as from the file or environment). Returns 0, or
 * -EINVAL with a reason written to err (unknown key, bad value). */
int config_set(struct config *c, const char *key, const char *value, char *err, size_t errlen);

/* Read a config file over c. On error returns -EINVAL (or -errno for I/O)
 * and writes "FILE:LINE: reason" to err. */
int config_load_file(struct config *c, const char *path, char *err, size_t errlen);

/* Apply STARLING_* variables from envp (NULL-terminated, like environ).
 * Unknown STARLING_ variables are errors ("STARLING_X: unknown key").
 * Returns 0 or -EINVAL with err set. */
int config_load_env(struct config *c, char *const *envp, char *err, size_t errlen);

/* Number of workers to run: c->workers, or the number of online CPUs. */
int config_worker_count(const struct config *c);

#endif
