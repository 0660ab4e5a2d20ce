/*
 * tls.h - a TLS server engine over memory BIOs (OpenSSL 3).
 *
 * No sockets and no event loop here: the transport feeds the ciphertext it
 * reads into tls_conn_feed, reads the plaintext out with tls_conn_read,
 * hands plaintext to send to tls_conn_write, and sends what
 * tls_conn_take_output gives it. The same shape as ws.h, so the two stack
 * (wss: TCP -> TLS -> WebSocket -> MQTT).
 *
 * A struct tls_ctx is a loaded server configuration (certificate, key,
 * optional chain and CA, versions, ciphers). It is reference counted and
 * immutable: reload = tls_ctx_new from the files again, swap the pointer
 * the listener uses for new connections, tls_ctx_unref the old one.
 * Connections made from the old context keep it (OpenSSL's own reference)
 * until they close. tls_ctx_* may be called from any thread.
 *
 * A struct tls_conn belongs to one connection and is used by one thread.
 */
#ifndef STARLING_TLS_H
#define STARLING_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct tls_config {
    const char *certfile;  /* PEM: the server certificate, may be followed by its chain */
    const char *keyfile;   /* PEM: its private key */
    const char *chainfile; /* optional PEM: intermediate certificates */
    const char *cafile;    /* optional PEM: CAs that sign client certificates */
    /* Refuse clients without a certificate signed by cafile (mutual TLS).
     * Without it, a client certificate is optional but verified if sent. */
    bool require_certificate;
    int min_version;          /* 12 (TLS 1.2, the default when 0) or 13 */
    const char *ciphers;      /* optional: OpenSSL cipher list for TLS 1.2 */
    const char *ciphersuites; /* optional: TLS 1.3 suites ("TLS_AES_128_GCM_SHA256:...") */
};

struct tls_ctx;
struct tls_conn;

/*
 * Build a server context. On error returns a negative errno (-EINVAL for a
 * bad setting, -ENOENT for a missing file, -EPROTO for what OpenSSL
 * refused) and writes into err which key and file, and OpenSSL's reason,
 * e.g. "tls_keyfile /etc/x.key: does not match tls_certfile /etc/x.pem
 * (key values mismatch)".
 */
int tls_ctx_new(const struct tls_config *cfg, struct tls_ctx **out, char *err, size_t errlen);
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
void tls_ctx_unref(struct tls_ctx *ctx);

/* A server-side connection in the handshake state; NULL when out of memory. */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx);
void tls_conn_free(struct tls_conn *c);

/* Error codes of tls_conn_* besides -ENOMEM. */
#define TLS_ERR_PROTO (-1000)  /* handshake or record failure: close the connection */
#define TLS_ERR_CLOSED (-1001) /* the peer sent close_notify */
#define TLS_ERR_FULL (-1002)   /* too much ciphertext fed without reading */

/*
 * Ciphertext received from the peer (any piece size). Drives the
 * handshake; afterwards call tls_conn_read. Returns 0, TLS_ERR_FULL when
 * more than TLS_FEED_MAX bytes wait unread, or TLS_ERR_PROTO (the reason:
 * tls_conn_error) -- in every case, first send what tls_conn_take_output has
 * (a handshake alert, for instance).
 */
#define TLS_FEED_MAX (256 * 1024)
int tls_conn_feed(struct tls_conn *c, const void *data, size_t len);

/*
 * Decrypted plaintext into buf (at most cap bytes). Returns the number of
 * bytes (> 0), 0 when no complete record waits, TLS_ERR_CLOSED after the
 * peer's close_notify, TLS_ERR_PROTO on a bad record.
 */
long tls_conn_read(struct tls_conn *c, void *buf, size_t cap);

/* Encrypt len bytes for the peer (only once the handshake is done).
 * Returns 0, -EAGAIN before the handshake, TLS_ERR_PROTO. */
int tls_conn_write(struct tls_conn *c, const void *data, size_t len);

/* Queue close_notify for the peer (then send the output and close). */
void tls_conn_close(struct tls_conn *c);

/* Bytes of ciphertext waiting to be sent, and up to cap of them moved into
 * buf (returns how many). */
size_t tls_conn_output_len(const struct tls_conn *c);
size_t tls_conn_take_output(struct tls_conn *c, void *buf, size_t cap);

bool tls_conn_handshake_done(const struct tls_conn *c);

/* OpenSSL's reason for the last TLS_ERR_PROTO ("" if none). */
const char *tls_conn_error(const struct tls_conn *c);

/* The negotiated version ("TLSv1.3") and cipher, for logs. */
const char *tls_conn_version(const struct tls_conn *c);
const char *tls_conn_cipher(const struct tls_conn *c);

enum tls_identity {
    TLS_ID_CN,  /* the subject's common name (Mosquitto's use_identity_as_username) */
    TLS_ID_SAN, /* the first subjectAltName: DNS name, else e-mail, else URI */
};

/*
 * The verified client certificate's identity as a NUL-terminated UTF-8
 * string in out. Returns its length, -ENOENT when there is no verified
 * certificate or no such name, -EINVAL when the name contains a NUL byte,
 * -ENOSPC when it does not fit.
 */
int tls_conn_peer_identity(const struct tls_conn *c, enum tls_identity which, char *out,
                           size_t outlen);

#endif
