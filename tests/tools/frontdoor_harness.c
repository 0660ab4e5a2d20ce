/*
 * frontdoor_harness.c - the front-door engines on real sockets, for tests.
 *
 * Until the broker's transports use them, this puts the PROXY parser, the
 * TLS engine and the WebSocket engine, stacked as a listener would stack
 * them, in front of a plain MQTT broker: every accepted connection gets its
 * own thread and its own connection to the backend, and the MQTT byte
 * stream is relayed both ways. Independent clients (mosquitto_pub/sub,
 * paho over websockets) then talk to the engines as they will talk to
 * Starling. tests/integration/test_frontdoor.py drives it.
 *
 *   frontdoor_harness -b BACKEND_PORT [-p] [-t CERT KEY] [-a CAFILE] [-r] [-w]
 *     -p  expect a PROXY v1/v2 header     -t  TLS with this certificate/key
 *     -a  verify client certificates       -r  require one (mutual TLS)
 *     -w  WebSocket (path /mqtt)
 *
 * It listens on a free 127.0.0.1 port and prints "listening PORT", then
 * one line per event: "client ADDR" (from a PROXY header), "identity CN"
 * (a verified client certificate), "refused REASON".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy_proto.h"
#include "tls.h"
#include "ws.h"

static int backend_port;
static bool use_proxy, use_ws;
static struct tls_ctx *tls;
static const struct ws_config ws_cfg = {0};
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, const char *arg)
{
    pthread_mutex_lock(&out_lock);
    printf(fmt, arg);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static int write_all(int fd, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p = (const char *)p + w;
        n -= (size_t)w;
    }
    return 0;
}

struct relay {
    int client, backend;
    struct proxy_parser proxy;
    bool proxy_done;
    struct tls_conn *tls;
    bool identity_said;
    struct ws_conn *ws;
};

static int flush_tls(struct relay *r)
{
    char buf[16384];
    size_t n;
    while ((n = tls_conn_take_output(r->tls, buf, sizeof(buf))) > 0)
        if (write_all(r->client, buf, n) < 0)
            return -1;
    return 0;
}

/* Bytes for the client below the WebSocket layer. */
static int to_client(struct relay *r, const void *p, size_t n)
{
    if (!r->tls)
        return write_all(r->client, p, n);
    if (tls_conn_write(r->tls, p, n) < 0)
        return -1;
    return flush_tls(r);
}

static int flush_ws(struct relay *r)
{
    char buf[16384];
    size_t n;
    while ((n = ws_conn_take_output(r->ws, buf, sizeof(buf))) > 0)
        if (to_client(r, buf, n) < 0)
            return -1;
    return 0;
}

/* Plaintext from the client (above TLS): through WebSocket to the backend. */
static int from_client_plain(struct relay *r, const char *p, size_t n)
{
    if (!r->ws)
        return write_all(r->backend, p, n);
    int e = ws_conn_feed(r->ws, p, n);
    if (flush_ws(r) < 0)
        return -1;
    char buf[16384];
    long m;
    while ((m = ws_conn_read(r->ws, buf, sizeof(buf))) > 0)
        if (write_all(r->backend, buf, (size_t)m) < 0)
            return -1;
    if (e < 0 || m < 0) {
        say("refused %s", ws_conn_error(r->ws)[0] ? ws_conn_error(r->ws) : "websocket closed");
        return -1;
    }
    return 0;
}

static int from_client(struct relay *r, const char *p, size_t n)
{
    if (use_proxy && !r->proxy_done) {
        struct proxy_header h;
        size_t used = 0;
        int s = proxy_parser_feed(&r->proxy, (const uint8_t *)p, n, &used, &h);
        if (s < 0) {
            say("refused %s", proxy_strerror(s));
            return -1;
        }
        if (s == PROXY_NEED_MORE)
            return 0;
        char addr[160];
        say("client %s", h.local ? "local" : proxy_addr_str(&h.src, addr, sizeof(addr)));
        r->proxy_done = true;
        p += used;
        n -= used;
    }
    if (!r->tls)
        return from_client_plain(r, p, n);
    int e = tls_conn_feed(r->tls, p, n);
    if (flush_tls(r) < 0)
        return -1;
    if (e < 0) {
        say("refused %s", tls_conn_error(r->tls));
        return -1;
    }
    if (tls_conn_handshake_done(r->tls) && !r->identity_said) {
        char cn[256];
        r->identity_said = true;
        if (tls_conn_peer_identity(r->tls, TLS_ID_CN, cn, sizeof(cn)) > 0)
            say("identity %s", cn);
    }
    char buf[16384];
    long m;
    while ((m = tls_conn_read(r->tls, buf, sizeof(buf))) > 0)
        if (from_client_plain(r, buf, (size_t)m) < 0)
            return -1;
    return m < 0 ? -1 : 0;
}

static int from_backend(struct relay *r, const char *p, size_t n)
{
    if (!r->ws)
        return to_client(r, p, n);
    if (ws_conn_write(r->ws, p, n) < 0)
        return -1;
    return flush_ws(r);
}

static void *relay_run(void *arg)
{
    struct relay *r = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)backend_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->backend = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(r->backend, (struct sockaddr *)&a, sizeof(a)) < 0) {
        say("refused %s", "backend unreachable");
        goto done;
    }
    if (tls)
        r->tls = tls_conn_new(tls);
    if (use_ws)
        r->ws = ws_conn_new(&ws_cfg);
    char buf[16384];
    for (;;) {
        struct pollfd p[2] = {{.fd = r->client, .events = POLLIN},
                              {.fd = r->backend, .events = POLLIN}};
        if (poll(p, 2, 60000) <= 0)
            break;
        if (p[0].revents) {
            ssize_t n = read(r->client, buf, sizeof(buf));
            if (n <= 0 || from_client(r, buf, (size_t)n) < 0)
                break;
        }
        if (p[1].revents) {
            ssize_t n = read(r->backend, buf, sizeof(buf));
            if (n <= 0 || from_backend(r, buf, (size_t)n) < 0)
                break;
        }
    }
done:
    close(r->client);
    if (r->backend >= 0)
        close(r->backend);
    tls_conn_free(r->tls);
    ws_conn_free(r->ws);
    free(r);
    return NULL;
}

int main(int argc, char **argv)
{
    struct tls_config tc = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-b") == 0 && i + 1 < argc)
            backend_port = atoi(argv[++i]);
        else if (strcmp(argv[i], "-p") == 0)
            use_proxy = true;
        else if (strcmp(argv[i], "-w") == 0)
            use_ws = true;
        else if (strcmp(argv[i], "-t") == 0 && i + 2 < argc) {
            tc.certfile = argv[++i];
            tc.keyfile = argv[++i];
        } else if (strcmp(argv[i], "-a") == 0 && i + 1 < argc)
            tc.cafile = argv[++i];
        else if (strcmp(argv[i], "-r") == 0)
            tc.require_certificate = true;
        else {
            fprintf(stderr, "usage: %s -b BACKEND_PORT [-p] [-t CERT KEY] [-a CA] [-r] [-w]\n",
                    argv[0]);
            return 2;
        }
    }
    if (tc.certfile) {
        char err[512];
        if (tls_ctx_new(&tc, &tls, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 64) < 0 ||
        getsockname(s, (struct sockaddr *)&a, &al) < 0) {
        perror("listen");
        return 1;
    }
    char port[16];
    snprintf(port, sizeof(port), "%u", ntohs(a.sin_port));
    say("listening %s", port);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        struct relay *r = calloc(1, sizeof(*r));
        r->client = c;
        r->backend = -1;
        proxy_parser_init(&r->proxy);
        pthread_t t;
        pthread_create(&t, NULL, relay_run, r);
        pthread_detach(t);
    }
    tls_ctx_unref(tls);
    return 0;
}
