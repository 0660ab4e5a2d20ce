/*
 * admin.h - the admin HTTP API of a node (docs/api.md) and `starling ctl`.
 *
 * The admin module serves /api/v1/..., /metrics and the web dashboard (/,
 * /dashboard/...) on its own port, over HTTP or HTTPS, with libmicrohttpd
 * (one internal polling thread of its own) and jansson. It knows
 * nothing of the broker: what it reports and does comes through two small
 * interfaces that the node (and later the cluster) fills in:
 *
 *   struct admin_provider  - health, nodes, counters, publish, cluster
 *                            membership; "the node" on a single node, "the
 *                            whole cluster" once the cluster answers;
 *   struct admin_keys_ops  - who may call the API (API key -> verified or
 *                            not); today a static table holding the bootstrap
 *                            key of the configuration, later the replicated
 *                            API-key table.
 *
 * Threads: admin_start and admin_stop are called by main. Every provider and
 * key function is called on the admin module's own thread(s), concurrently
 * with the broker's threads: they must be thread safe and must not block for
 * long (they answer an HTTP request).
 */
#ifndef STARLING_ADMIN_H
#define STARLING_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "metric.h"

/* ---- what the API reports: filled by the provider ----------------------- */

#define ADMIN_NAME_MAX 128

struct admin_health {
    bool serving;       /* the node accepts MQTT clients */
    bool clustered;     /* the node is part of a cluster */
    bool has_leader;    /* clustered only: the cluster has a leader */
    const char *reason; /* why not healthy (static string), or NULL */
};

/* One node of the cluster (on a single node: the node itself). */
struct admin_node {
    char name[ADMIN_NAME_MAX];
    char address[ADMIN_NAME_MAX]; /* "host:port" other nodes reach it at */
    const char *role;             /* static: "standalone", "voter", "standby", "spare" */
    bool reachable;
    bool leader;
    bool self; /* the node answering the request */
    /* clustered: the replicated routes of the node and the registry records
     * that name it (the answering node's tables) */
    bool has_counts;
    uint64_t routes;
    uint64_t sessions;
};

/* A node's counters: the values of $SYS/broker/... (node/sys.c). */
struct admin_stats {
    char node[ADMIN_NAME_MAX];
    char version[32];
    uint64_t uptime_s;
    uint64_t connections;       /* open TCP connections */
    uint64_t clients_connected; /* connected MQTT clients */
    uint64_t clients_maximum;   /* most clients connected at once */
    uint64_t sessions;          /* sessions, connected or not */
    uint64_t subscriptions;
    uint64_t retained;
    uint64_t msgs_received;
    uint64_t msgs_sent;
    uint64_t msgs_dropped;
    uint64_t bytes_received;
    uint64_t bytes_sent;
};

/* What GET /metrics reports beyond struct admin_stats (the families are
 * listed in docs/operations.md). The caller zeroes it; the provider fills
 * what the node has. */
#define ADMIN_DROP_REASONS_MAX 16
#define ADMIN_PEERS_MAX 64

struct admin_drop_count {
    const char *reason; /* static: a label value ([a-z_]+) */
    uint64_t n;
};

/* Clustered: this node's forwarding to one other node. */
struct admin_peer_metrics {
    char name[ADMIN_NAME_MAX]; /* its node_name */
    bool connected;            /* this node's channel to it is up */
    uint64_t queue_frames;     /* channel frames waiting or being written */
    uint64_t queue_bytes;
    uint64_t outbox_msgs; /* QoS 1/2 forwards it has not acknowledged */
    uint64_t outbox_bytes;
    uint64_t frames_sent; /* counters since the node started */
    uint64_t bytes_sent;
    uint64_t frames_dropped; /* refused: the channel queue was full */
    uint64_t stalls;         /* its queue above half while it did not drain */
};

struct admin_metrics {
    /* PUBLISH packets and their topic + payload bytes, by QoS: received
     * from clients and other nodes, sent to clients */
    uint64_t msgs_in[3], bytes_in[3], msgs_out[3], bytes_out[3];
    struct admin_drop_count dropped[ADMIN_DROP_REASONS_MAX];
    unsigned n_dropped;
    uint64_t inflight, queued;        /* messages in the sessions, all of them */
    struct metric_hist_snap delivery; /* publish-to-delivery latency (sampled) */
    bool has_store;                   /* persistence is on */
    uint64_t store_commits, store_failed, store_fsyncs;
    struct metric_hist_snap store_commit, store_sync;
    bool clustered;
    bool raft_leader; /* this node leads */
    uint64_t raft_term, raft_commit_index, raft_applied_index, raft_leader_changes;
    uint64_t raft_resends_thinned; /* raft_node_stats.resends_thinned */
    uint64_t routes;               /* (filter, node) pairs of the replicated route table */
    /* members this node, leading, took for dead (NodeDown, once per
     * silence); NodeDown(this node) applied while it ran; clean sessions
     * ended for that (docs/cluster.md "A node taken for dead while it runs") */
    uint64_t nodes_down, taken_for_dead, dead_sessions_ended;
    uint64_t dead_sessions_released, dead_sessions_expired;
    struct admin_peer_metrics peers[ADMIN_PEERS_MAX];
    unsigned n_peers;
};

/* A message to publish (POST /api/v1/publish). topic is NUL-terminated,
 * payload is payload_len bytes. */
struct admin_publish {
    const char *topic;
    const void *payload;
    size_t payload_len;
    uint8_t qos;
    bool retain;
};

/*
 * The provider: a table of functions and their `ud`. A NULL function means
 * "not available here" (e.g. cluster_leave on a node that is not clustered).
 * Functions return 0 or a negative errno; on an error they may write a
 * message for the client to err (errlen bytes).
 */
struct admin_provider {
    void *ud;
    void (*health)(void *ud, struct admin_health *out);
    /* Fill v[0..cap) with the nodes of the cluster; returns how many there
     * are (may exceed cap: the caller asks again with more room). */
    int (*nodes)(void *ud, struct admin_node *v, size_t cap);
    /* Fill v[0..cap) with the counters of this node (cluster_wide false, one
     * entry) or of every node (cluster_wide true); returns how many nodes
     * there are, like nodes. */
    int (*stats)(void *ud, bool cluster_wide, struct admin_stats *v, size_t cap);
    /* Fill *out (zeroed) with this node's metrics for GET /metrics: sums
     * read without stopping the data plane (may take locks the data plane
     * takes only briefly: the session table's, each session's). */
    void (*metrics)(void *ud, struct admin_metrics *out);
    /* -EINVAL: bad topic; -EAGAIN: the node is not serving (stopping). */
    int (*publish)(void *ud, const struct admin_publish *p, char *err, size_t errlen);
    /* Membership (NULL when the node is not clustered). cluster_forget:
     * -ENOENT unknown node, -EBUSY the node is alive or is this node. */
    int (*cluster_leave)(void *ud, char *err, size_t errlen);
    int (*cluster_forget)(void *ud, const char *node, char *err, size_t errlen);

    /*
     * Queries answered by each node for its own part (its clients, their
     * subscriptions; docs/api.md lists the queries: node/admin_query.c).
     * A query is a JSON object {"op": NAME, ...}. query_local answers it on
     * this node (a new JSON object, or NULL with err). gather asks every
     * node of the cluster, this one included, and returns a new JSON array
     * with one element per node, in node name order: {"node": NAME,
     * "result": ANSWER}, or {"node": NAME, "error": MESSAGE} for a node
     * that did not answer in time; NULL with err when it cannot ask.
     */
    json_t *(*query_local)(void *ud, json_t *q, char *err, size_t errlen);
    json_t *(*gather)(void *ud, json_t *q, char *err, size_t errlen);

    /*
     * The operator's tables (ADMIN_TABLE_*; replicated on a cluster):
     * records are a text key and a JSON object text. table_get: 0 with *val
     * (malloc'd) or -ENOENT. table_list: a new JSON object key -> record
     * (parsed), or NULL. table_put / table_del: 0 once committed; -ENOENT
     * (del of an absent key), -EAGAIN (no quorum), -EINVAL, with err.
     */
    int (*table_get)(void *ud, int table, const char *key, char **val);
    json_t *(*table_list)(void *ud, int table);
    int (*table_put)(void *ud, int table, const char *key, const char *val, char *err,
                     size_t errlen);
    int (*table_del)(void *ud, int table, const char *key, char *err, size_t errlen);

    /* Remove the retained message of topic (no delivery): 0, -ENOENT. */
    int (*retained_delete)(void *ud, const char *topic, char *err, size_t errlen);
};

/* The tables (equal to node/tables.h's enum tables_id). */
enum {
    ADMIN_TABLE_BANNED = 1,
    ADMIN_TABLE_USERS = 2,
    ADMIN_TABLE_APIKEYS = 3,
};

/* ---- API keys ------------------------------------------------------------ */

/* Key lookup: 0 when `secret` is the secret of API key `key`, -ENOENT for an
 * unknown key, -EACCES for a wrong secret. Must take the same time whether
 * the key exists or not (hash a dummy secret for an unknown key). */
struct admin_keys_ops {
    int (*verify)(void *ud, const char *key, const char *secret);
};

/* The stored form of a secret: "pbkdf2-sha512$ITERATIONS$SALT$HASH" (salt and
 * hash in base64), ADMIN_SECRET_HASH_MAX bytes at most with the NUL. */
#define ADMIN_SECRET_HASH_MAX 160
int admin_secret_hash(const char *secret, char *out, size_t outlen);
/* 0 if secret matches the stored form, -EACCES if not, -EINVAL for a stored
 * form that cannot be read. Compares in constant time. A match is
 * remembered for ADMIN_VERIFIED_TTL_S (a SHA-256 of the stored form and the
 * secret, a few entries): a client that sends the same key with every
 * request (a scraper, the dashboard) pays the derivation once a minute, not
 * per request; a wrong secret always pays it. Any thread. */
int admin_secret_verify(const char *secret, const char *stored);
#define ADMIN_VERIFIED_TTL_S 60
/* Derivations made so far (tests). */
unsigned long admin_secret_derivations(void);

/* A fixed table of keys held in memory (the bootstrap key of the
 * configuration). Any thread may call verify; add only before admin_start. */
struct admin_key_table;
struct admin_key_table *admin_key_table_new(void);
void admin_key_table_free(struct admin_key_table *t);
/* Add "KEY:SECRET" (the secret is stored hashed). 0, -EINVAL, -ENOMEM. */
int admin_key_table_add(struct admin_key_table *t, const char *key_colon_secret);
extern const struct admin_keys_ops admin_key_table_ops; /* ud: the table */

/* "KEY:SECRET" is well formed: KEY 1..64 of [A-Za-z0-9._-], SECRET 8..128
 * printable ASCII characters without blanks. Writes a reason to err. */
bool admin_api_key_valid(const char *key_colon_secret, char *err, size_t errlen);

/* ---- the server ---------------------------------------------------------- */

struct admin_options {
    const char *bind_address; /* IPv4 or IPv6 literal */
    uint16_t port;            /* 0: ephemeral (the caller reads admin_port) */
    bool metrics_auth;        /* /metrics needs an API key too */
    unsigned max_connections; /* 0: ADMIN_DEFAULT_MAX_CONNECTIONS */
    unsigned timeout_s;       /* idle connection timeout; 0: the default */
    size_t max_body;          /* request body limit; 0: the default */
    /* HTTPS (libmicrohttpd with GnuTLS) when both are set: PEM files of the
     * certificate (+ chain) and its private key, read once at start. NULL:
     * plain HTTP. */
    const char *tls_certfile;
    const char *tls_keyfile;
};

#define ADMIN_DEFAULT_MAX_CONNECTIONS 64
#define ADMIN_DEFAULT_TIMEOUT_S 10
#define ADMIN_DEFAULT_MAX_BODY 65536

struct admin;

/* Start serving. The provider and keys (copied by value; their ud must
 * outlive the server) answer the requests. Returns 0 and sets *out, or a
 * negative errno (-EADDRINUSE, -EINVAL for a bad address) with a reason in
 * err. Main thread. */
int admin_start(const struct admin_options *opt, const struct admin_provider *p,
                const struct admin_keys_ops *keys, void *keys_ud, struct admin **out, char *err,
                size_t errlen);
/* Whether the server speaks HTTPS. */
bool admin_tls(const struct admin *a);
/* The port the server listens on. */
uint16_t admin_port(const struct admin *a);
/* Stop: close the listener and every connection, join the thread, free a.
 * No provider function runs after it returns. NULL is a no-op. */
void admin_stop(struct admin *a);

/* ---- starling ctl -------------------------------------------------------- */

/* `starling ctl ARGS...` (argv[0] is "ctl"). Returns the exit code: 0 ok,
 * 1 the API answered with an error, 2 usage, 3 cannot connect. */
int ctl_main(int argc, char **argv);

#endif
