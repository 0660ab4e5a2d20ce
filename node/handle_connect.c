/*
 * handle_connect.c - CONNECT (see handle.h).
 *
 * In order: refuse what the server does not support (each with its reason
 * code), take the connection's parameters (session expiry, receive maximum,
 * maximum packet size, topic aliases, keep alive), build the will,
 * authenticate the client (a password is verified on libuv's thread pool:
 * PBKDF2 costs about a millisecond, which the worker's other clients must
 * not wait for; meanwhile the connection is CONN_CLAIMING and reads
 * nothing), then claim the client id from the session registry. The claim answers through
 * handle_connect_claimed, at once (a single node) or later (the cluster):
 * meanwhile the connection is CONN_CLAIMING and reads nothing, and it may
 * close; the claim holds a reference to it. Then CONNACK, and a resumed
 * session resends what was inflight and sends what is queued.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "broker.h"
#include "conn.h"
#include "handle.h"
#include "log.h"
#include "passwd.h"
#include "registry.h"
#include "session.h"
#include "tables.h"
#include "topic.h"
#include "worker.h"

/* A CONNECT between its claim and the registry's answer. */
struct connect_claim {
    struct conn *c; /* a reference */
    uint32_t expiry;
    bool server_ka;     /* the keep alive was changed: tell the client */
    bool expiry_capped; /* the session expiry was lowered: tell the client */
    bool returned;      /* registry_claim has returned */
    bool answered;      /* handle_connect_claimed has run */
    bool async;         /* the password was verified off the loop: reading was stopped */
    bool clean_start;
    uint8_t version;
    uint16_t id_len;
    char assigned[64]; /* a client id the server assigned, or "" */
    char *id_copy;     /* the client id, kept while the password is verified */
    char *user;        /* the authenticated user name, or NULL (anonymous) */
    char *pw;          /* the password to verify (NULL: none given) */
    size_t pw_len;
    char *table_hash; /* the user's hash in the user table (tables.h), or NULL */
};

/* A password being verified on the thread pool. */
struct connect_verify {
    uv_work_t req;
    struct connect_claim *cl;
    struct passwd_db *db; /* a reference */
    bool ok;
};

static void connect_claim_free(struct connect_claim *cl)
{
    free(cl->id_copy);
    free(cl->user);
    free(cl->table_hash);
    if (cl->pw) {
        OPENSSL_cleanse(cl->pw, cl->pw_len);
        free(cl->pw);
    }
    free(cl);
}

void handle_connect_refuse(struct conn *c, uint8_t version, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNACK;
    p.u.connack.reason = reason;
    c->version = version;
    conn_send(c, &p);
    c->state = CONN_CLOSING;
    c->state_since = uv_now(&c->w->loop);
    conn_io_stop(c);
    conn_flush(c);
}

/* What this server refuses in a CONNECT (before any state is made): returns
 * the CONNACK reason (5.0 reason code or 3.1.1 return code), 0 to accept,
 * or -1: closed without a CONNACK. */
static int handle_connect_check(const struct config *cfg, const struct mqtt_connect *ck)
{
    bool v5 = ck->protocol_version == MQTT_V5;
    const struct mqtt_props *wp = &ck->will_props;
    /* Authentication Data without an Authentication Method is a protocol
     * error (5.0 section 3.1.2.11.10) */
    if (v5 && (ck->props.present & MQTT_PF(MQTT_PROP_AUTH_DATA)) &&
        !(ck->props.present & MQTT_PF(MQTT_PROP_AUTH_METHOD)))
        return MQTT_RC_PROTOCOL_ERROR;
    /* the will's Response Topic is a topic name (no wildcards) */
    if (v5 && (wp->present & MQTT_PF(MQTT_PROP_RESPONSE_TOPIC)) &&
        !topic_name_valid((const char *)wp->response_topic.data, wp->response_topic.len))
        return MQTT_RC_PROTOCOL_ERROR;
    /* no authentication method is configured on this node */
    if (v5 && (ck->props.present & MQTT_PF(MQTT_PROP_AUTH_METHOD)))
        return MQTT_RC_BAD_AUTH_METHOD;
    if (!ck->will_flag)
        return 0;
    if (!topic_name_valid((const char *)ck->will_topic.data, ck->will_topic.len) ||
        handle_topic_too_deep(cfg, (const char *)ck->will_topic.data, ck->will_topic.len))
        /* (deeper than max_topic_levels: refused like an invalid topic)
         * [MQTT-3.1.1 3.1.4-1] a 3.x CONNECT that does not conform (a will
         * topic that is no topic name: empty [MQTT-3.1.1 4.7.3-1] or with
         * wildcards [MQTT-3.1.1 3.3.2-2]) is closed without a CONNACK; 5.0
         * answers 0x90 */
        return v5 ? MQTT_RC_TOPIC_NAME_INVALID : -1;
    if (v5 && ck->will_qos > cfg->max_qos)
        return MQTT_RC_QOS_NOT_SUPPORTED; /* [MQTT-5.0 3.2.2-12] */
    if (v5 && ck->will_retain && !cfg->retain_available)
        return MQTT_RC_RETAIN_NOT_SUPPORTED; /* [MQTT-5.0 3.2.2-13] */
    if (v5 && (wp->present & MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT)) && wp->payload_format == 1 &&
        !mqtt_utf8_valid(ck->will_payload.data, ck->will_payload.len))
        return MQTT_RC_PAYLOAD_FORMAT_INVALID;
    return 0;
}

/* The client id, or one assigned into cl->assigned [MQTT-3.1.1 3.1.3-6, MQTT-5.0 3.1.3-6]. Returns
 * the CONNACK reason that refuses it, 0 when accepted. */
static uint8_t handle_connect_id(const struct config *cfg, const struct mqtt_connect *ck,
                                 struct connect_claim *cl, const char **id)
{
    bool v5 = ck->protocol_version == MQTT_V5;
    *id = (const char *)ck->client_id.data;
    cl->id_len = (uint16_t)ck->client_id.len;
    if (cl->id_len > 0)
        return 0;
    if (!v5 && !ck->clean_start)
        return MQTT3_CONNACK_ID_REJECTED; /* [MQTT-3.1.1 3.1.3-8] an empty id needs clean session */
    if (!cfg->allow_zero_length_clientid)
        return v5 ? MQTT_RC_CLIENT_ID_NOT_VALID : MQTT3_CONNACK_ID_REJECTED;
    static atomic_ulong counter;
    unsigned long n = atomic_fetch_add(&counter, 1);
    snprintf(cl->assigned, sizeof(cl->assigned), "starling-%016" PRIx64 "-%lu",
             broker_now_mono_ms() ^ (uint64_t)(uintptr_t)cl, n);
    *id = cl->assigned;
    cl->id_len = (uint16_t)strlen(cl->assigned);
    return 0;
}

/* Session expiry, the client's limits and keep alive, from the CONNECT. */
static void handle_connect_params(struct conn *c, const struct config *cfg,
                                  const struct mqtt_connect *ck, struct connect_claim *cl)
{
    const struct mqtt_props *pr = &ck->props;
    uint32_t expiry;
    if (ck->protocol_version == MQTT_V5) {
        expiry = (pr->present & MQTT_PF(MQTT_PROP_SESSION_EXPIRY)) ? pr->session_expiry : 0;
        if (cfg->max_session_expiry && expiry > cfg->max_session_expiry) {
            expiry = cfg->max_session_expiry;
            cl->expiry_capped = true;
        }
        c->client_receive_max =
            (pr->present & MQTT_PF(MQTT_PROP_RECEIVE_MAX)) ? pr->receive_max : 65535;
        c->client_max_packet =
            (pr->present & MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE)) ? pr->max_packet_size : UINT32_MAX;
        c->client_alias_max =
            (pr->present & MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX)) ? pr->topic_alias_max : 0;
        c->problem_info =
            !(pr->present & MQTT_PF(MQTT_PROP_REQUEST_PROBLEM_INFO)) || pr->request_problem_info;
    } else {
        /* 3.1.1 clean session 0 keeps the session forever */
        expiry = ck->clean_start ? 0 : UINT32_MAX;
        if (!ck->clean_start && cfg->max_session_expiry)
            expiry = cfg->max_session_expiry;
        c->client_receive_max = 0;
        c->client_max_packet = UINT32_MAX;
    }
    c->connect_expiry = cl->expiry = expiry;
    /* Keep alive: a 5.0 client asking for more than max_keepalive (or for
     * none) is told the Server Keep Alive [MQTT-5.0 3.2.2-21]. */
    c->keepalive = ck->keep_alive;
    if (ck->protocol_version == MQTT_V5 && cfg->max_keepalive < 65535 &&
        (ck->keep_alive == 0 || ck->keep_alive > cfg->max_keepalive)) {
        c->keepalive = cfg->max_keepalive;
        cl->server_ka = true;
    }
}

/* The will message of the CONNECT into c->will. Returns 0 or -ENOMEM. */
static int handle_connect_will(struct conn *c, const struct config *cfg,
                               const struct mqtt_connect *ck)
{
    if (!ck->will_flag)
        return 0;
    bool v5 = ck->protocol_version == MQTT_V5;
    struct buf props = {0};
    if (!conn_x(c) || (v5 && handle_passthrough_props(&ck->will_props, &props) < 0)) {
        buf_free(&props);
        return -ENOMEM;
    }
    uint8_t wq = ck->will_qos > cfg->max_qos ? cfg->max_qos : ck->will_qos;
    c->will = msg_new(ck->will_topic.data, (uint16_t)ck->will_topic.len, ck->will_payload.data,
                      ck->will_payload.len, props.data, (uint32_t)props.len, wq,
                      ck->will_retain && cfg->retain_available, 0, NULL);
    buf_free(&props);
    if (!c->will)
        return -ENOMEM;
    if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_WILL_DELAY)))
        c->x->will_delay = ck->will_props.will_delay;
    if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY)))
        c->x->will_expiry = ck->will_props.message_expiry;
    return 0;
}

/* The CONNACK of an accepted CONNECT. Returns whether it was sent. */
static bool handle_connack(struct conn *c, const struct config *cfg, const struct connect_claim *cl,
                           bool present)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNACK;
    struct mqtt_connack *ca = &p.u.connack;
    /* [MQTT-3.1.1 3.2.2-1..3, MQTT-5.0 3.2.2-2/3] session present */
    ca->session_present = present;
    ca->reason = 0;
    if (c->version == MQTT_V5) {
        struct mqtt_props *pr = &ca->props;
        pr->present |=
            MQTT_PF(MQTT_PROP_RECEIVE_MAX) | MQTT_PF(MQTT_PROP_RETAIN_AVAILABLE) |
            MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE) | MQTT_PF(MQTT_PROP_WILDCARD_SUB_AVAILABLE) |
            MQTT_PF(MQTT_PROP_SUB_ID_AVAILABLE) | MQTT_PF(MQTT_PROP_SHARED_SUB_AVAILABLE);
        pr->receive_max = cfg->receive_maximum;
        pr->retain_available = cfg->retain_available;
        pr->max_packet_size = cfg->max_packet_size;
        pr->wildcard_sub_available = 1;
        pr->sub_id_available = 1;
        pr->shared_sub_available = 1;
        if (cfg->max_qos < 2) {
            pr->present |= MQTT_PF(MQTT_PROP_MAX_QOS);
            pr->max_qos = cfg->max_qos;
        }
        if (cfg->topic_alias_maximum) {
            pr->present |= MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX);
            pr->topic_alias_max = cfg->topic_alias_maximum;
        }
        if (cl->assigned[0]) {
            pr->present |= MQTT_PF(MQTT_PROP_ASSIGNED_CLIENT_ID);
            pr->assigned_client_id.data = (const uint8_t *)cl->assigned;
            pr->assigned_client_id.len = cl->id_len;
        }
        if (cl->server_ka) {
            pr->present |= MQTT_PF(MQTT_PROP_SERVER_KEEP_ALIVE);
            pr->server_keep_alive = c->keepalive;
        }
        if (cl->expiry_capped) {
            pr->present |= MQTT_PF(MQTT_PROP_SESSION_EXPIRY);
            pr->session_expiry = cl->expiry;
        }
    }
    return conn_send(c, &p) == 1;
}

/* The registry answered the claim (registry_done_fn), on c's worker. */
static void handle_connect_claimed(void *ud, int status, struct session *s)
{
    struct connect_claim *cl = ud;
    struct conn *c = cl->c;
    struct broker *b = c->w->b;
    bool later = cl->returned; /* the answer came after registry_claim returned */
    cl->answered = true;
    if (c->state != CONN_CLAIMING) {
        /* closed while the registry answered: the session goes back */
        if (s)
            registry_release(b, s, c, NULL, false, c->w);
    } else if (status < 0) {
        bool v5 = c->version == MQTT_V5;
        handle_connect_refuse(c, c->version,
                              v5 ? MQTT_RC_SERVER_UNAVAILABLE : MQTT3_CONNACK_SERVER_UNAVAILABLE);
    } else {
        c->session = s;
        c->state = CONN_ACTIVE;
        session_hold_connected(s, broker_now_mono_ms());
        /* who the client is, for the ACL of the connection's packets (the
         * session's deliveries: s->user, set by the claim) */
        if (cl->user && conn_x(c)) {
            c->x->user = cl->user;
            cl->user = NULL;
        }
        if (!handle_connack(c, &b->cfg, cl, status != REGISTRY_NEW)) {
            /* [MQTT-5.0 3.1.2-24] even the smallest CONNACK exceeds the client's
             * Maximum Packet Size: close rather than leave it waiting */
            conn_close(c, 0, false);
        } else {
            log_event(LOG_LEVEL_INFO, "connect", s->client_id, s->id_len, CONN_PEER(c), NULL,
                      "MQTT %s, %s, keep alive %u s, session present %d",
                      c->version == MQTT_V5     ? "5.0"
                      : c->version == MQTT_V311 ? "3.1.1"
                                                : "3.1",
                      config_xport_name(c->xport), c->keepalive, status != REGISTRY_NEW);
            /* Resume: resend what was inflight, then what is queued. */
            lock_acquire(&s->lock);
            if (s->conn == c)
                session_resume_locked(b, s);
            lock_release(&s->lock);
        }
    }
    if (later) {
        if (c->state == CONN_ACTIVE)
            conn_io_start(c); /* and the packets that arrived meanwhile */
        conn_unref(c);
        connect_claim_free(cl);
    }
}

/* Claim the client id (cl holds a reference on c). */
static void handle_connect_claim(struct conn *c, struct connect_claim *cl, const char *id)
{
    struct broker *b = c->w->b;
    /* A will the ACL does not let the client publish is dropped. */
    if (c->will && !broker_acl_allows(b, cl->user, id, cl->id_len, msg_topic(c->will),
                                      c->will->topic_len, ACL_WRITE)) {
        log_info("%s: will on '%.*s' refused by the ACL", CONN_PEER(c), (int)c->will->topic_len,
                 msg_topic(c->will));
        msg_unref(c->will);
        c->will = NULL;
    }
    c->state = CONN_CLAIMING;
    /* the claim has connect_timeout of its own from here (conn_check_timers) */
    c->state_since = uv_now(&c->w->loop);
    struct registry_claim req = {
        .id = id,
        .id_len = cl->id_len,
        .clean_start = cl->clean_start,
        .version = cl->version,
        .user = cl->user,
        .expiry = cl->expiry,
        .conn = c,
        .w = c->w,
    };
    registry_claim(b, &req, handle_connect_claimed, cl);
    cl->returned = true;
    if (cl->answered) {
        if (cl->async && c->state == CONN_ACTIVE)
            conn_io_start(c); /* reading stopped for the password check */
        conn_unref(c);
        connect_claim_free(cl);
    } else if (!cl->async) {
        conn_io_stop(c); /* nothing is read until the registry answers */
    }
}

/* Whether a ban of the operator's (tables.h) names the client id (NULL: an
 * assigned one), the user name or the address of the client. */
static bool handle_connect_banned(struct conn *c, const struct mqtt_connect *ck, const char *id,
                                  size_t id_len)
{
    struct broker *b = c->w->b;
    if (!b->tables || b->tables->empty(b->tables_ud, TABLES_BANNED))
        return false;
    char user[TABLES_KEY_MAX + 1];
    bool has_user = ck->username_flag && ck->username.len < sizeof(user) &&
                    !memchr(ck->username.data, 0, ck->username.len);
    if (has_user) {
        memcpy(user, ck->username.data, ck->username.len);
        user[ck->username.len] = '\0';
    }
    /* the address without its port: "1.2.3.4:5" or "[::1]:5" */
    char addr[64];
    conn_peer(c, addr, sizeof(addr));
    char *host = addr;
    if (addr[0] == '[') {
        host = addr + 1;
        char *e = strchr(host, ']');
        if (e)
            *e = '\0';
    } else {
        char *e = strrchr(addr, ':');
        if (e)
            *e = '\0';
    }
    bool banned =
        tables_banned(b, id, id ? id_len : 0, has_user ? user : NULL, host, msg_now_real_ms());
    if (banned)
        log_event(LOG_LEVEL_INFO, "ban", id, id ? id_len : 0, CONN_PEER(c), "banned",
                  "CONNECT refused: banned");
    return banned;
}

/* Refuse a CONNECT for its credentials (counted in $SYS). */
static void handle_connect_refuse_auth(struct conn *c, uint8_t reason, const char *id,
                                       size_t id_len, const char *user)
{
    atomic_fetch_add_explicit(&c->w->b->stats.auth_failed, 1, memory_order_relaxed);
    log_event(LOG_LEVEL_INFO, "auth_failure", id, id_len, CONN_PEER(c),
              c->version == MQTT_V5                     ? mqtt_rc_str(reason)
              : reason == MQTT3_CONNACK_BAD_CREDENTIALS ? "bad user name or password"
                                                        : "not authorized",
              "CONNECT refused%s", user ? " (with a user name)" : "");
    handle_connect_refuse(c, c->version, reason);
}

/*
 * Who the client is. Returns 0 to go on (cl->user set, or NULL for an
 * anonymous client), 1 when cl->pw must be verified against the password
 * file, or the CONNACK reason that refuses it: 5.0 0x86 / 3.1.1 4 (bad user
 * name or password), 5.0 0x87 / 3.1.1 5 (not authorized).
 */
static int handle_connect_auth(struct conn *c, const struct mqtt_connect *ck,
                               struct connect_claim *cl)
{
    const struct config *cfg = &c->w->b->cfg;
    bool v5 = ck->protocol_version == MQTT_V5;
    uint8_t not_authorized = v5 ? MQTT_RC_NOT_AUTHORIZED : MQTT3_CONNACK_NOT_AUTHORIZED;
    uint8_t bad_credentials = v5 ? MQTT_RC_BAD_USERNAME_OR_PASSWORD : MQTT3_CONNACK_BAD_CREDENTIALS;
    if (cfg->tls_use_identity_as_username && conn_is_tls(c)) {
        /* the certificate names the user; no password is asked for */
        const char *id = conn_tls_identity(c);
        if (!id)
            return not_authorized;
        cl->user = strdup(id);
        return cl->user ? 0 : not_authorized;
    }
    bool anonymous_ok = config_allow_anonymous(cfg);
    if (!ck->username_flag)
        return anonymous_ok ? 0 : not_authorized;
    if (memchr(ck->username.data, 0, ck->username.len))
        return bad_credentials;
    cl->user = strndup((const char *)ck->username.data, ck->username.len);
    if (!cl->user)
        return not_authorized;
    /* a user of the user table (tables.h) is verified against it first */
    cl->table_hash = tables_user_hash(c->w->b, cl->user);
    if (!cfg->password_file[0] && !cl->table_hash)
        /* no password file: a user name is taken as given (Mosquitto) */
        return anonymous_ok ? 0 : not_authorized;
    if (ck->password_flag) {
        cl->pw = malloc(ck->password.len ? ck->password.len : 1);
        if (!cl->pw)
            return not_authorized;
        memcpy(cl->pw, ck->password.data, ck->password.len);
        cl->pw_len = ck->password.len;
    }
    return 1;
}

static void handle_connect_verify_work(uv_work_t *req)
{
    struct connect_verify *v = req->data;
    struct connect_claim *cl = v->cl;
    /* a user without a password is hashed all the same (the same time) */
    bool ok;
    if (cl->table_hash)
        ok = passwd_hash_verify(cl->table_hash, cl->pw ? cl->pw : "", cl->pw_len) == 1;
    else
        ok = passwd_check(v->db, cl->user, strlen(cl->user), cl->pw ? cl->pw : "", cl->pw_len);
    v->ok = ok && cl->pw;
}

static void handle_connect_verified(uv_work_t *req, int status)
{
    struct connect_verify *v = req->data;
    struct connect_claim *cl = v->cl;
    struct conn *c = cl->c;
    passwd_unref(v->db);
    bool ok = status == 0 && v->ok;
    free(v);
    if (c->state != CONN_CLAIMING) {
        /* closed meanwhile */
        conn_unref(c);
        connect_claim_free(cl);
        return;
    }
    if (!ok) {
        const char *id = cl->assigned[0] ? cl->assigned : cl->id_copy;
        handle_connect_refuse_auth(c,
                                   c->version == MQTT_V5 ? MQTT_RC_BAD_USERNAME_OR_PASSWORD
                                                         : MQTT3_CONNACK_BAD_CREDENTIALS,
                                   id, id ? strlen(id) : 0, cl->user);
        conn_unref(c);
        connect_claim_free(cl);
        return;
    }
    handle_connect_claim(c, cl, cl->assigned[0] ? cl->assigned : cl->id_copy);
}

/* Verify cl->pw on the thread pool, then claim. */
static void handle_connect_verify(struct conn *c, struct connect_claim *cl, const char *id)
{
    struct broker *b = c->w->b;
    struct connect_verify *v = calloc(1, sizeof(*v));
    if (!cl->assigned[0])
        cl->id_copy = strndup(id, cl->id_len);
    if (!v || (!cl->assigned[0] && !cl->id_copy)) {
        free(v);
        connect_claim_free(cl);
        conn_close(c, 0, false);
        return;
    }
    v->cl = cl;
    v->db = auth_passwd(&b->auth);
    v->req.data = v;
    cl->c = conn_ref(c);
    cl->async = true;
    c->state = CONN_CLAIMING; /* reads nothing until the answer */
    conn_io_stop(c);
    if ((!v->db && !cl->table_hash) ||
        uv_queue_work(&c->w->loop, &v->req, handle_connect_verify_work, handle_connect_verified) !=
            0) {
        passwd_unref(v->db);
        free(v);
        conn_unref(c);
        connect_claim_free(cl);
        conn_close(c, 0, false);
    }
}

void handle_connect(struct conn *c, const struct mqtt_connect *ck)
{
    const struct config *cfg = &c->w->b->cfg;
    uint8_t v = ck->protocol_version;
    c->version = v;
    int check = handle_connect_check(cfg, ck);
    if (check < 0) {
        conn_close(c, 0, false);
        return;
    }
    if (check) {
        handle_connect_refuse(c, v, (uint8_t)check);
        return;
    }
    struct connect_claim *cl = calloc(1, sizeof(*cl));
    const char *id = NULL;
    if (!cl) {
        conn_close(c, 0, false);
        return;
    }
    cl->clean_start = ck->clean_start;
    cl->version = v;
    uint8_t rc = handle_connect_id(cfg, ck, cl, &id);
    if (rc) {
        connect_claim_free(cl);
        handle_connect_refuse(c, v, rc);
        return;
    }
    if (handle_connect_banned(c, ck, cl->assigned[0] ? NULL : id, cl->id_len)) {
        connect_claim_free(cl);
        handle_connect_refuse(c, v, v == MQTT_V5 ? MQTT_RC_BANNED : MQTT3_CONNACK_NOT_AUTHORIZED);
        return;
    }
    int auth = handle_connect_auth(c, ck, cl);
    if (auth > 1) {
        handle_connect_refuse_auth(c, (uint8_t)auth, id, cl->id_len, cl->user);
        connect_claim_free(cl);
        return;
    }
    handle_connect_params(c, cfg, ck, cl);
    if (handle_connect_will(c, cfg, ck) < 0) {
        connect_claim_free(cl);
        conn_close(c, 0, false);
        return;
    }
    if (auth == 1) {
        handle_connect_verify(c, cl, id);
        return;
    }
    cl->c = conn_ref(c);
    handle_connect_claim(c, cl, id);
}
