/*
 * fuzz_tls.c - libFuzzer target for the TLS server engine's input side.
 *
 * A server context is made once from a key and certificate generated with
 * the `openssl` command into a temporary directory (removed at exit). Each
 * input is fed to a fresh connection in pieces whose sizes come from the
 * first byte, as a client's ClientHello and records would arrive; whatever
 * plaintext comes out is read. The engine must answer with data or an
 * error, never crash or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tls.h"

static struct tls_ctx *fuzz_ctx;
static char fuzz_dir[] = "/tmp/fuzz_tls_XXXXXX";

static void fuzz_cleanup(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", fuzz_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", fuzz_dir);
    tls_ctx_unref(fuzz_ctx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (!mkdtemp(fuzz_dir))
        abort();
    char cmd[1024], cert[300], key[300], err[512];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout %s/k.pem -out %s/c.pem -days 2 -subj /CN=localhost >/dev/null 2>&1",
             fuzz_dir, fuzz_dir);
    if (system(cmd) != 0)
        abort();
    snprintf(cert, sizeof(cert), "%s/c.pem", fuzz_dir);
    snprintf(key, sizeof(key), "%s/k.pem", fuzz_dir);
    struct tls_config cfg = {.certfile = cert, .keyfile = key};
    if (tls_ctx_new(&cfg, &fuzz_ctx, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    atexit(fuzz_cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] * 4 + 1;
    data++;
    size--;
    struct tls_conn *c = tls_conn_new(fuzz_ctx);
    if (!c)
        return 0;
    uint8_t out[4096];
    for (size_t off = 0; off < size;) {
        size_t n = step < size - off ? step : size - off;
        int r = tls_conn_feed(c, data + off, n);
        off += n;
        while (tls_conn_take_output(c, out, sizeof(out)) > 0)
            ;
        if (r < 0)
            break;
        long m;
        while ((m = tls_conn_read(c, out, sizeof(out))) > 0)
            ;
        if (m < 0)
            break;
    }
    tls_conn_free(c);
    return 0;
}
