/*
 * tls.c - a TLS server engine over memory BIOs (see tls.h).
 *
 * Each connection is an SSL object whose read BIO is fed the ciphertext
 * that arrived and whose write BIO collects the ciphertext to send; the
 * handshake runs inside tls_conn_feed. Renegotiation is off (a cheap way
 * for a client to make the server work), buffers are released when idle
 * (thousands of idle connections), and client certificates are verified
 * against the configured CA file.
 */
#include "tls.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_ctx {
    atomic_int refs;
    SSL_CTX *ssl;
};

struct tls_conn {
    SSL *ssl;
    BIO *in, *out; /* owned by ssl */
    bool handshake_done;
    char error[160];
};

static void tls_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* OpenSSL's reason for the first error queued (the root cause, where the
 * last one is the caller's summary such as "PEM lib"), and clear the queue. */
static const char *tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r)
        snprintf(buf, len, "%s", r);
    else if (e)
        snprintf(buf, len, "error %lu", e);
    else
        snprintf(buf, len, "unknown error");
    ERR_clear_error();
    return buf;
}

/* Is path a readable file? Sets err naming the key when not. */
static int tls_check_file(const char *key, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        tls_errf(err, errlen, "%s %s: %s", key, path, strerror(e));
        return -e;
    }
    fclose(f);
    return 0;
}

static int tls_load_chain(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
    char why[128];
    BIO *b = BIO_new_file(path, "r");
    if (!b) {
        tls_errf(err, errlen, "tls_chainfile %s: %s", path, tls_reason(why, sizeof(why)));
        return -EPROTO;
    }
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            X509_free(x);
            BIO_free(b);
            tls_errf(err, errlen, "tls_chainfile %s: %s", path, tls_reason(why, sizeof(why)));
            return -EPROTO;
        }
        n++;
    }
    BIO_free(b);
    unsigned long e = ERR_peek_last_error();
    if (n == 0 ||
        (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))) {
        tls_errf(err, errlen, "tls_chainfile %s: %s", path,
                 n == 0 ? "no certificate in the file" : tls_reason(why, sizeof(why)));
        ERR_clear_error();
        return -EPROTO;
    }
    ERR_clear_error();
    return 0;
}

int tls_ctx_new(const struct tls_config *cfg, struct tls_ctx **out, char *err, size_t errlen)
{
    char why[128];
    int r;
    if (!cfg->certfile || !cfg->keyfile) {
        tls_errf(err, errlen, "TLS needs tls_certfile and tls_keyfile");
        return -EINVAL;
    }
    if (cfg->min_version != 0 && cfg->min_version != 12 && cfg->min_version != 13) {
        tls_errf(err, errlen, "tls_min_version must be 1.2 or 1.3");
        return -EINVAL;
    }
    if (cfg->require_certificate && !cfg->cafile) {
        tls_errf(err, errlen, "tls_require_certificate needs tls_cafile");
        return -EINVAL;
    }
    if ((r = tls_check_file("tls_certfile", cfg->certfile, err, errlen)) < 0 ||
        (r = tls_check_file("tls_keyfile", cfg->keyfile, err, errlen)) < 0 ||
        (cfg->chainfile &&
         (r = tls_check_file("tls_chainfile", cfg->chainfile, err, errlen)) < 0) ||
        (cfg->cafile && (r = tls_check_file("tls_cafile", cfg->cafile, err, errlen)) < 0))
        return r;

    ERR_clear_error();
    SSL_CTX *ssl = SSL_CTX_new(TLS_server_method());
    if (!ssl) {
        tls_errf(err, errlen, "TLS: %s", tls_reason(why, sizeof(why)));
        return -ENOMEM;
    }
    r = -EPROTO;
    SSL_CTX_set_min_proto_version(ssl, cfg->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ssl, cfg->certfile) != 1) {
        tls_errf(err, errlen, "tls_certfile %s: %s", cfg->certfile, tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ssl, cfg->keyfile, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
            tls_errf(err, errlen, "tls_keyfile %s: does not match tls_certfile %s (%s)",
                     cfg->keyfile, cfg->certfile, tls_reason(why, sizeof(why)));
        else
            tls_errf(err, errlen, "tls_keyfile %s: %s", cfg->keyfile, tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_check_private_key(ssl) != 1) {
        tls_errf(err, errlen, "tls_keyfile %s: does not match tls_certfile %s (%s)", cfg->keyfile,
                 cfg->certfile, tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (cfg->chainfile && tls_load_chain(ssl, cfg->chainfile, err, errlen) < 0)
        goto fail;
    if (cfg->ciphers && SSL_CTX_set_cipher_list(ssl, cfg->ciphers) != 1) {
        tls_errf(err, errlen, "tls_ciphers \"%s\": %s", cfg->ciphers, tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (cfg->ciphersuites && SSL_CTX_set_ciphersuites(ssl, cfg->ciphersuites) != 1) {
        tls_errf(err, errlen, "tls_ciphersuites \"%s\": %s", cfg->ciphersuites,
                 tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (cfg->cafile) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->cafile);
        if (!names || SSL_CTX_load_verify_locations(ssl, cfg->cafile, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            tls_errf(err, errlen, "tls_cafile %s: %s", cfg->cafile,
                     names ? tls_reason(why, sizeof(why)) : "no CA certificate in the file");
            ERR_clear_error();
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ssl, names);
        SSL_CTX_set_verify(
            ssl, SSL_VERIFY_PEER | (cfg->require_certificate ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
            NULL);
    }
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        r = -ENOMEM;
        tls_errf(err, errlen, "TLS: out of memory");
        goto fail;
    }
    atomic_init(&ctx->refs, 1);
    ctx->ssl = ssl;
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ssl);
    return r;
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx)
{
    if (ctx)
        atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void tls_ctx_unref(struct tls_ctx *ctx)
{
    if (ctx && atomic_fetch_sub(&ctx->refs, 1) == 1) {
        SSL_CTX_free(ctx->ssl);
        free(ctx);
    }
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx)
{
    struct tls_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ssl = SSL_new(ctx->ssl); /* holds its own reference to the SSL_CTX */
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->in || !c->out) {
        SSL_free(c->ssl);
        BIO_free(c->in);
        BIO_free(c->out);
        free(c);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "wait for more", not end of file. */
    BIO_set_mem_eof_return(c->in, -1);
    SSL_set_bio(c->ssl, c->in, c->out);
    SSL_set_accept_state(c->ssl);
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    free(c);
}

/* Classify a failed SSL_* call; records OpenSSL's reason. */
static int tls_conn_fail(struct tls_conn *c, int ret)
{
    int e = SSL_get_error(c->ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        return TLS_ERR_CLOSED;
    default:
        if (ERR_peek_last_error())
            tls_reason(c->error, sizeof(c->error));
        else
            snprintf(c->error, sizeof(c->error), "TLS protocol error");
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            size_t n = strlen(c->error);
            snprintf(c->error + n, sizeof(c->error) - n, " (%s)", X509_verify_cert_error_string(v));
        }
        ERR_clear_error();
        return TLS_ERR_PROTO;
    }
}

int tls_conn_feed(struct tls_conn *c, const void *data, size_t len)
{
    if ((size_t)BIO_ctrl_pending(c->in) + len > TLS_FEED_MAX)
        return TLS_ERR_FULL;
    if (len && BIO_write(c->in, data, (int)len) != (int)len) {
        ERR_clear_error();
        return -ENOMEM;
    }
    if (!c->handshake_done) {
        int r = SSL_do_handshake(c->ssl);
        if (r == 1)
            c->handshake_done = true;
        else
            return tls_conn_fail(c, r);
    }
    return 0;
}

long tls_conn_read(struct tls_conn *c, void *buf, size_t cap)
{
    if (!c->handshake_done)
        return 0;
    size_t n = 0;
    if (SSL_read_ex(c->ssl, buf, cap, &n) == 1)
        return (long)n;
    return tls_conn_fail(c, 0);
}

int tls_conn_write(struct tls_conn *c, const void *data, size_t len)
{
    if (!c->handshake_done)
        return -EAGAIN;
    size_t n = 0;
    if (len == 0)
        return 0;
    /* The memory BIO grows: a write is taken whole or fails. */
    if (SSL_write_ex(c->ssl, data, len, &n) == 1 && n == len)
        return 0;
    int r = tls_conn_fail(c, 0);
    return r == 0 ? TLS_ERR_PROTO : r;
}

void tls_conn_close(struct tls_conn *c)
{
    if (c->handshake_done)
        SSL_shutdown(c->ssl);
    ERR_clear_error();
}

size_t tls_conn_output_len(const struct tls_conn *c)
{
    return BIO_ctrl_pending(c->out);
}

size_t tls_conn_take_output(struct tls_conn *c, void *buf, size_t cap)
{
    size_t n = 0;
    if (cap && BIO_read_ex(c->out, buf, cap, &n) != 1)
        n = 0;
    return n;
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
    return c->handshake_done;
}

const char *tls_conn_error(const struct tls_conn *c)
{
    return c->error;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return SSL_get_version(c->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return SSL_get_cipher_name(c->ssl);
}

/* Copy an ASN1 string as UTF-8 into out. */
static int tls_copy_name(const ASN1_STRING *s, char *out, size_t outlen)
{
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    if (n < 0)
        return -EINVAL;
    int r = n;
    if (memchr(utf8, '\0', (size_t)n))
        r = -EINVAL;
    else if ((size_t)n >= outlen)
        r = -ENOSPC;
    else {
        memcpy(out, utf8, (size_t)n);
        out[n] = '\0';
    }
    OPENSSL_free(utf8);
    return r;
}

int tls_conn_peer_identity(const struct tls_conn *c, enum tls_identity which, char *out,
                           size_t outlen)
{
    if (!c->handshake_done || SSL_get_verify_result(c->ssl) != X509_V_OK)
        return -ENOENT;
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    if (!cert)
        return -ENOENT;
    if (which == TLS_ID_CN) {
        X509_NAME *subj = X509_get_subject_name(cert);
        int i = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
        if (i < 0)
            return -ENOENT;
        return tls_copy_name(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i)), out, outlen);
    }
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!names)
        return -ENOENT;
    int r = -ENOENT;
    static const int order[] = {GEN_DNS, GEN_EMAIL, GEN_URI};
    for (size_t k = 0; k < 3 && r == -ENOENT; k++) {
        for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
            if (g->type == order[k]) {
                r = tls_copy_name(g->d.ia5, out, outlen);
                break;
            }
        }
    }
    GENERAL_NAMES_free(names);
    return r;
}
