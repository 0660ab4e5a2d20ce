/*
 * test_tls.c - the TLS server engine (node/tls.h) against an in-process
 * OpenSSL client over memory BIOs.
 *
 * Certificates and keys are made at test time with the `openssl` command
 * in a temporary directory that the test removes: a CA, a server
 * certificate for localhost, a client certificate from that CA, and a
 * second CA with its own client certificate.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"

static char dir[] = "/tmp/test_tls_XXXXXX";

static const char *path(const char *name)
{
    static char p[128][256];
    static int i;
    i = (i + 1) % 128;
    snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
    return p[i];
}

static int make_certs(void)
{
    if (!mkdtemp(dir))
        return -1;
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "set -e; cd %s; exec >openssl.log 2>&1\n"
             "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1; }\n"
             "ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "
             "\"/CN=$2\"; }\n"
             "leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj \"/CN=$3\";\n"
             "  printf 'subjectAltName=%%s\\n' \"$4\" > $1.ext;\n"
             "  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -days 2 "
             "-extfile $1.ext -out $1.pem; }\n"
             "ca ca 'Starling Test CA'\n"
             "ca ca2 'Other CA'\n"
             "leaf server ca localhost DNS:localhost\n"
             "leaf server2 ca localhost2 DNS:localhost\n"
             "leaf client ca client1 'email:c1@example.com,DNS:client1.example'\n"
             "leaf other ca2 intruder DNS:intruder.example\n"
             "leaf nosan ca 'only cn' email:x@example.com\n"
             "echo garbage > garbage.pem\n",
             dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int init_suite(void)
{
    return make_certs();
}

static int clean_suite(void)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct tls_ctx *server_ctx(const struct tls_config *cfg)
{
    struct tls_ctx *ctx = NULL;
    char err[512] = "";
    int r = tls_ctx_new(cfg, &ctx, err, sizeof(err));
    if (r != 0)
        fprintf(stderr, "tls_ctx_new: %s\n", err);
    CU_ASSERT_EQUAL(r, 0);
    return ctx;
}

/* An in-process client over memory BIOs. */
struct client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out;
};

static void client_init(struct client *cl, int max_version, const char *cert, const char *key)
{
    cl->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(cl->ctx, path("ca.pem"), NULL);
    SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_PEER, NULL);
    if (max_version)
        SSL_CTX_set_max_proto_version(cl->ctx, max_version);
    if (cert) {
        CU_ASSERT_EQUAL(SSL_CTX_use_certificate_file(cl->ctx, path(cert), SSL_FILETYPE_PEM), 1);
        CU_ASSERT_EQUAL(SSL_CTX_use_PrivateKey_file(cl->ctx, path(key), SSL_FILETYPE_PEM), 1);
    }
    cl->ssl = SSL_new(cl->ctx);
    cl->in = BIO_new(BIO_s_mem());
    cl->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(cl->in, -1);
    SSL_set_bio(cl->ssl, cl->in, cl->out);
    SSL_set1_host(cl->ssl, "localhost");
    SSL_set_connect_state(cl->ssl);
}

static void client_free(struct client *cl)
{
    SSL_free(cl->ssl);
    SSL_CTX_free(cl->ctx);
    ERR_clear_error();
}

/* Move bytes both ways until nothing moves; the server is fed in pieces of
 * `piece` bytes. Returns the last tls_conn_feed result. */
static int pump(struct client *cl, struct tls_conn *s, size_t piece)
{
    int last = 0;
    for (int round = 0; round < 200; round++) {
        if (!SSL_is_init_finished(cl->ssl))
            SSL_do_handshake(cl->ssl);
        bool moved = false;
        char buf[4096];
        int n;
        while ((n = BIO_read(cl->out, buf, (int)(piece < sizeof(buf) ? piece : sizeof(buf)))) > 0) {
            moved = true;
            last = tls_conn_feed(s, buf, (size_t)n);
            if (last < 0)
                break;
        }
        size_t m;
        while ((m = tls_conn_take_output(s, buf, sizeof(buf))) > 0) {
            moved = true;
            BIO_write(cl->in, buf, (int)m);
        }
        if (last < 0 || (!moved && SSL_is_init_finished(cl->ssl)))
            break;
        if (!moved && round > 0 && !SSL_is_init_finished(cl->ssl)) {
            SSL_do_handshake(cl->ssl);
            if (BIO_ctrl_pending(cl->out) == 0)
                break;
        }
    }
    return last;
}

/* Plaintext from the server engine, up to want bytes. */
static size_t server_read_all(struct tls_conn *s, char *buf, size_t want)
{
    size_t got = 0;
    long n;
    while (got < want && (n = tls_conn_read(s, buf + got, want - got)) > 0)
        got += (size_t)n;
    return got;
}

static void exchange(struct client *cl, struct tls_conn *s)
{
    /* client -> server: an MQTT CONNECT's worth of bytes. */
    static const char hello[] = "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
    CU_ASSERT_EQUAL(SSL_write(cl->ssl, hello, sizeof(hello) - 1), (int)sizeof(hello) - 1);
    CU_ASSERT_EQUAL(pump(cl, s, 7), 0);
    char buf[64];
    CU_ASSERT_EQUAL(server_read_all(s, buf, sizeof(hello) - 1), sizeof(hello) - 1);
    CU_ASSERT_EQUAL(memcmp(buf, hello, sizeof(hello) - 1), 0);
    CU_ASSERT_EQUAL(tls_conn_read(s, buf, sizeof(buf)), 0);
    /* server -> client: a CONNACK. */
    CU_ASSERT_EQUAL(tls_conn_write(s, "\x20\x02\x00\x00", 4), 0);
    CU_ASSERT(tls_conn_output_len(s) > 4);
    pump(cl, s, 4096);
    CU_ASSERT_EQUAL(SSL_read(cl->ssl, buf, sizeof(buf)), 4);
    CU_ASSERT_EQUAL(memcmp(buf, "\x20\x02\x00\x00", 4), 0);
}

static void test_handshake_and_data(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"), .keyfile = path("server.key")};
    struct tls_ctx *ctx = server_ctx(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
    for (int v = 0; v < 2; v++) {
        size_t piece = v ? 1 : 4096; /* also byte by byte */
        struct client cl;
        client_init(&cl, v ? TLS1_2_VERSION : 0, NULL, NULL);
        struct tls_conn *s = tls_conn_new(ctx);
        CU_ASSERT_FALSE(tls_conn_handshake_done(s));
        CU_ASSERT_EQUAL(tls_conn_write(s, "x", 1), -EAGAIN);
        CU_ASSERT_EQUAL(pump(&cl, s, piece), 0);
        CU_ASSERT_TRUE(tls_conn_handshake_done(s));
        CU_ASSERT_TRUE(SSL_is_init_finished(cl.ssl));
        CU_ASSERT_EQUAL(SSL_get_verify_result(cl.ssl), X509_V_OK);
        CU_ASSERT_STRING_EQUAL(tls_conn_version(s), v ? "TLSv1.2" : "TLSv1.3");
        exchange(&cl, s);
        char id[64];
        CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, sizeof(id)), -ENOENT);
        tls_conn_free(s);
        client_free(&cl);
    }
    tls_ctx_unref(ctx);
}

static void test_close_notify(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"), .keyfile = path("server.key")};
    struct tls_ctx *ctx = server_ctx(&cfg);
    struct client cl;
    client_init(&cl, 0, NULL, NULL);
    struct tls_conn *s = tls_conn_new(ctx);
    pump(&cl, s, 4096);
    SSL_shutdown(cl.ssl);
    pump(&cl, s, 4096);
    char buf[16];
    CU_ASSERT_EQUAL(tls_conn_read(s, buf, sizeof(buf)), TLS_ERR_CLOSED);
    tls_conn_free(s);
    client_free(&cl);

    client_init(&cl, 0, NULL, NULL);
    s = tls_conn_new(ctx);
    pump(&cl, s, 4096);
    tls_conn_close(s);
    pump(&cl, s, 4096);
    CU_ASSERT_EQUAL(SSL_read(cl.ssl, buf, sizeof(buf)), 0);
    CU_ASSERT_EQUAL(SSL_get_error(cl.ssl, 0), SSL_ERROR_ZERO_RETURN);
    tls_conn_free(s);
    client_free(&cl);
    tls_ctx_unref(ctx);
}

static void test_min_version_13(void)
{
    struct tls_config cfg = {
        .certfile = path("server.pem"), .keyfile = path("server.key"), .min_version = 13};
    struct tls_ctx *ctx = server_ctx(&cfg);
    struct client cl;
    client_init(&cl, TLS1_2_VERSION, NULL, NULL);
    struct tls_conn *s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), TLS_ERR_PROTO);
    CU_ASSERT_FALSE(tls_conn_handshake_done(s));
    CU_ASSERT_STRING_EQUAL(tls_conn_error(s), "unsupported protocol");
    tls_conn_free(s);
    client_free(&cl);
    tls_ctx_unref(ctx);
}

static void test_mutual_tls(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"),
                             .keyfile = path("server.key"),
                             .cafile = path("ca.pem"),
                             .require_certificate = true};
    struct tls_ctx *ctx = server_ctx(&cfg);
    char id[128];

    /* With a certificate from the CA: CN and SAN are the identity. */
    struct client cl;
    client_init(&cl, 0, "client.pem", "client.key");
    struct tls_conn *s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), 0);
    CU_ASSERT_TRUE(tls_conn_handshake_done(s));
    exchange(&cl, s);
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, sizeof(id)), 7);
    CU_ASSERT_STRING_EQUAL(id, "client1");
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_SAN, id, sizeof(id)), 15);
    CU_ASSERT_STRING_EQUAL(id, "client1.example");
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, 7), -ENOSPC);
    tls_conn_free(s);
    client_free(&cl);

    /* SAN without a DNS name: the e-mail address. */
    client_init(&cl, 0, "nosan.pem", "nosan.key");
    s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), 0);
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_SAN, id, sizeof(id)), 13);
    CU_ASSERT_STRING_EQUAL(id, "x@example.com");
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, sizeof(id)), 7);
    CU_ASSERT_STRING_EQUAL(id, "only cn");
    tls_conn_free(s);
    client_free(&cl);

    /* No certificate: refused (TLS 1.3 refuses after the client's Finished). */
    for (int v = 0; v < 2; v++) {
        client_init(&cl, v ? TLS1_2_VERSION : 0, NULL, NULL);
        s = tls_conn_new(ctx);
        CU_ASSERT_EQUAL(pump(&cl, s, 4096), TLS_ERR_PROTO);
        CU_ASSERT_FALSE(tls_conn_handshake_done(s));
        CU_ASSERT_STRING_EQUAL(tls_conn_error(s), "peer did not return a certificate");
        tls_conn_free(s);
        client_free(&cl);
    }

    /* A certificate from another CA: refused. */
    client_init(&cl, 0, "other.pem", "other.key");
    s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), TLS_ERR_PROTO);
    CU_ASSERT_FALSE(tls_conn_handshake_done(s));
    CU_ASSERT_PTR_NOT_NULL(strstr(tls_conn_error(s), "certificate verify failed"));
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, sizeof(id)), -ENOENT);
    tls_conn_free(s);
    client_free(&cl);
    tls_ctx_unref(ctx);

    /* Optional client certificates: none is fine, a bad one is not. */
    cfg.require_certificate = false;
    ctx = server_ctx(&cfg);
    client_init(&cl, 0, NULL, NULL);
    s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), 0);
    CU_ASSERT_TRUE(tls_conn_handshake_done(s));
    CU_ASSERT_EQUAL(tls_conn_peer_identity(s, TLS_ID_CN, id, sizeof(id)), -ENOENT);
    tls_conn_free(s);
    client_free(&cl);
    client_init(&cl, 0, "other.pem", "other.key");
    s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), TLS_ERR_PROTO);
    tls_conn_free(s);
    client_free(&cl);
    tls_ctx_unref(ctx);
}

/* A reload swaps contexts; a connection made before keeps working. */
static void test_reload_keeps_connections(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"), .keyfile = path("server.key")};
    struct tls_ctx *old = server_ctx(&cfg);
    struct client c1;
    client_init(&c1, 0, NULL, NULL);
    struct tls_conn *s1 = tls_conn_new(old);
    CU_ASSERT_EQUAL(pump(&c1, s1, 4096), 0);

    cfg.certfile = path("server2.pem");
    cfg.keyfile = path("server2.key");
    struct tls_ctx *fresh = server_ctx(&cfg);
    tls_ctx_unref(old); /* the listener's reference goes; s1 keeps its own */
    exchange(&c1, s1);

    struct client c2;
    client_init(&c2, 0, NULL, NULL);
    struct tls_conn *s2 = tls_conn_new(fresh);
    CU_ASSERT_EQUAL(pump(&c2, s2, 4096), 0);
    X509 *peer = SSL_get0_peer_certificate(c2.ssl);
    char cn[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof(cn));
    CU_ASSERT_STRING_EQUAL(cn, "localhost2");
    tls_conn_free(s1);
    tls_conn_free(s2);
    client_free(&c1);
    client_free(&c2);
    tls_ctx_unref(fresh);
}

static void expect_ctx_error(const struct tls_config *cfg, int want_r, const char *want_prefix,
                             const char *want_sub)
{
    struct tls_ctx *ctx = NULL;
    char err[512] = "";
    int r = tls_ctx_new(cfg, &ctx, err, sizeof(err));
    CU_ASSERT_EQUAL(r, want_r);
    CU_ASSERT_PTR_NULL(ctx);
    bool ok =
        strncmp(err, want_prefix, strlen(want_prefix)) == 0 && (!want_sub || strstr(err, want_sub));
    if (!ok)
        fprintf(stderr, "error was '%s'\n", err);
    CU_ASSERT_TRUE(ok);
}

static void test_load_errors(void)
{
    char want[512];
    struct tls_config cfg = {.certfile = path("missing.pem"), .keyfile = path("server.key")};
    snprintf(want, sizeof(want), "tls_certfile %s: No such file or directory", cfg.certfile);
    expect_ctx_error(&cfg, -ENOENT, want, NULL);

    cfg.certfile = path("garbage.pem");
    snprintf(want, sizeof(want), "tls_certfile %s: ", cfg.certfile);
    expect_ctx_error(&cfg, -EPROTO, want, "no start line");

    cfg.certfile = path("server.pem");
    cfg.keyfile = path("garbage.pem");
    snprintf(want, sizeof(want), "tls_keyfile %s: ", cfg.keyfile);
    expect_ctx_error(&cfg, -EPROTO, want, NULL);

    cfg.keyfile = path("client.key");
    snprintf(want, sizeof(want), "tls_keyfile %s: does not match tls_certfile %s (", cfg.keyfile,
             cfg.certfile);
    expect_ctx_error(&cfg, -EPROTO, want, "mismatch");

    cfg.keyfile = path("server.key");
    cfg.ciphers = "NO-SUCH-CIPHER";
    expect_ctx_error(&cfg, -EPROTO, "tls_ciphers \"NO-SUCH-CIPHER\": ", "no cipher match");
    cfg.ciphers = NULL;
    cfg.min_version = 11;
    expect_ctx_error(&cfg, -EINVAL, "tls_min_version must be 1.2 or 1.3", NULL);
    cfg.min_version = 0;
    cfg.require_certificate = true;
    expect_ctx_error(&cfg, -EINVAL, "tls_require_certificate needs tls_cafile", NULL);
    cfg.cafile = path("garbage.pem");
    snprintf(want, sizeof(want), "tls_cafile %s: ", cfg.cafile);
    expect_ctx_error(&cfg, -EPROTO, want, NULL);
    cfg.cafile = NULL;
    cfg.require_certificate = false;
    cfg.chainfile = path("garbage.pem");
    snprintf(want, sizeof(want), "tls_chainfile %s: no certificate in the file", cfg.chainfile);
    expect_ctx_error(&cfg, -EPROTO, want, NULL);
    /* A chain file that loads. */
    cfg.chainfile = path("ca.pem");
    struct tls_ctx *ctx = server_ctx(&cfg);
    tls_ctx_unref(ctx);
}

/* Ciphers restricted for TLS 1.2: the client sees the one allowed. */
static void test_cipher_list(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"),
                             .keyfile = path("server.key"),
                             .ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"};
    struct tls_ctx *ctx = server_ctx(&cfg);
    struct client cl;
    client_init(&cl, TLS1_2_VERSION, NULL, NULL);
    struct tls_conn *s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(pump(&cl, s, 4096), 0);
    CU_ASSERT_STRING_EQUAL(tls_conn_cipher(s), "ECDHE-ECDSA-AES128-GCM-SHA256");
    tls_conn_free(s);
    client_free(&cl);
    tls_ctx_unref(ctx);
}

/* Garbage instead of a ClientHello: an error, not a crash or a wait. */
static void test_garbage_input(void)
{
    struct tls_config cfg = {.certfile = path("server.pem"), .keyfile = path("server.key")};
    struct tls_ctx *ctx = server_ctx(&cfg);
    struct tls_conn *s = tls_conn_new(ctx);
    CU_ASSERT_EQUAL(tls_conn_feed(s, "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c", 12), TLS_ERR_PROTO);
    CU_ASSERT_STRING_NOT_EQUAL(tls_conn_error(s), "");
    tls_conn_free(s);
    /* Unread ciphertext is bounded. */
    s = tls_conn_new(ctx);
    static char big[TLS_FEED_MAX + 1];
    big[0] = 0x16; /* a handshake record header that never completes */
    big[1] = 0x03;
    big[2] = 0x01;
    big[3] = 0x40;
    big[4] = 0x00;
    CU_ASSERT_EQUAL(tls_conn_feed(s, big, 5), 0);
    CU_ASSERT_EQUAL(tls_conn_feed(s, big, sizeof(big)), TLS_ERR_FULL);
    tls_conn_free(s);
    tls_ctx_unref(ctx);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("tls", init_suite, clean_suite);
    CU_add_test(s, "handshake_and_data", test_handshake_and_data);
    CU_add_test(s, "close_notify", test_close_notify);
    CU_add_test(s, "min_version_13", test_min_version_13);
    CU_add_test(s, "mutual_tls", test_mutual_tls);
    CU_add_test(s, "reload_keeps_connections", test_reload_keeps_connections);
    CU_add_test(s, "load_errors", test_load_errors);
    CU_add_test(s, "cipher_list", test_cipher_list);
    CU_add_test(s, "garbage_input", test_garbage_input);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
