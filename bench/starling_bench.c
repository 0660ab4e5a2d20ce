/*
 * starling_bench.c - MQTT load generator for Starling (and any MQTT 3.1.1
 * broker).
 *
 *   starling-bench SCENARIO --host H --port P [options]
 *
 * Scenarios: fanin, fanout, latency, conns, ceiling, indep, slowsub, takeover
 * (see bench/README.md).
 *
 * Clusters: --sub-host/--sub-port put the subscribers (and the takeover
 * scenario's second connections) on another node than the publishers;
 * --hosts spreads the conns connections over several nodes.
 *
 * Design: G.n_threads generator threads, each with its own libuv loop, own
 * the client connections. Packets are encoded with the project codec
 * (node/codec.h) into per-connection double buffers; a publisher encodes a
 * whole batch of PUBLISH packets and hands it to the kernel with one
 * uv_write, and encodes the next batch only when that write has completed,
 * so it sends as fast as the socket takes. Reads go into a per-thread
 * buffer and only the tail of an incomplete packet is copied into the
 * connection. Nothing is allocated per message.
 *
 * The main thread drives the phases (SETUP -> RUN -> DRAIN -> STOP) through
 * an atomic the loops poll every millisecond, samples counters the loops
 * publish with relaxed atomic stores, and prints one JSON line on stdout and
 * one human-readable row on stderr.
 *
 * Payloads (at least 16 bytes) start with a tag: publisher index (u32),
 * sequence number (u32), CLOCK_MONOTONIC send time in ns (u64), so that
 * subscribers detect lost, duplicated and reordered messages and measure
 * latency. With one subscriber (fanin, indep, slowsub) the subscriber keeps a
 * bitmap of the sequence numbers it received from each publisher, and a QoS 1
 * publisher one of the sequence numbers the broker acknowledged, so that the
 * messages dropped (sent, never delivered) and the messages acknowledged but
 * never delivered are counted exactly, message by message.
 *
 * slowsub: the subscriber reads at most --sub-rate messages per second by
 * stopping its reads (uv_read_stop) and restarting them from a timer, so the
 * TCP window towards it really fills and the broker has to hold, drop or push
 * back.
 *
 * With --pid, the main thread samples the broker's VmRSS every 10 ms while
 * the connections are set up, during the measurement and during the drain.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "hoptrace.h"
#include "bench_xport.h"
#include "buf.h"
#include "codec.h"

#define RBUF_SIZE (256u * 1024u)
#define TAG_SIZE 16u
#define MAX_THREADS 16
#define TICK_MS 1

enum scenario {
    SC_FANIN,
    SC_FANOUT,
    SC_LATENCY,
    SC_CONNS,
    SC_CEILING,
    SC_INDEP,
    SC_SLOWSUB,
    SC_TAKEOVER
};
static const char *const scenario_names[] = {"fanin",   "fanout", "latency", "conns",
                                             "ceiling", "indep",  "slowsub", "takeover"};
/* --hosts: at most this many addresses */
#define MAX_HOSTS 16
#define N_SCENARIOS ((int)(sizeof(scenario_names) / sizeof(scenario_names[0])))
/* slowsub: bytes the throttled subscriber reads at most per read call */
#define SLOW_CHUNK 4096u
/* broker memory: sampling period of VmRSS */
#define RSS_PERIOD_NS 10000000ull

enum phase { PH_SETUP, PH_RUN, PH_DRAIN, PH_STOP };
/* takeover: R_OLD connects first (--host), R_NEW then takes its client id
 * over (--sub-host); the broker closing an R_OLD connection is expected */
enum role { R_PUB, R_SUB, R_IDLE, R_SINK, R_OLD, R_NEW };
/* C_RESETTING: a --persistent subscriber sent DISCONNECT after its clean
 * session 1 connection and waits for the broker to close it */
enum cstate { C_INIT, C_CONNECTING, C_WAIT_CONNACK, C_WAIT_SUBACK, C_READY, C_RESETTING, C_DEAD };

struct wkr;

/* A growable bitmap of sequence numbers (one per publisher). */
struct bits {
    uint64_t *w;
    uint32_t nwords;
};

struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    struct wkr *w;
    enum role role;
    enum cstate state;
    uint32_t idx;
    bool writing;
    bool closing;
    bool reset_done;   /* --persistent subscriber: the clean session 1 pass is over */
    uint64_t start_ns; /* when CONNECT was queued (takeover time) */
    struct buf out[2]; /* out[cur] accumulates, out[cur ^ 1] is being written */
    int cur;
    struct buf in; /* tail of an incomplete packet */
    /* --transport tls|ws|wss (bench_xport.h): NULL for plain TCP */
    struct bench_xport *x;
    struct buf xwire; /* handshake and control bytes for the broker */
    /* publisher */
    char topic[32];
    uint16_t topic_len;
    uint8_t *payload;
    uint32_t seq;      /* next sequence number (messages encoded) */
    uint32_t wmsgs;    /* messages in the write in progress */
    uint32_t inflight; /* QoS 1: unacknowledged */
    uint16_t next_ack; /* QoS 1: packet id expected next in PUBACK */
    uint64_t sent, acked, ack_mismatch;
    /* subscriber */
    uint64_t recv, dups, gaps, bad_tag;
    uint32_t *expect; /* next sequence number per publisher */
    uint32_t n_expect;
    struct bits *seen; /* exact accounting: sequence numbers received, per publisher */
    uv_timer_t pause;  /* slowsub: restarts the paused reads */
    bool pause_init;   /* the pause timer is initialised */
    bool paused;       /* slowsub: reads are stopped */
    /* exact accounting, QoS 1 publisher */
    struct bits acked_bits; /* sequence numbers the broker acknowledged */
    uint32_t ack_lo;        /* lowest sequence number not yet acknowledged */
    /* published for the main thread (relaxed stores by the owner) */
    _Atomic uint64_t a_sent, a_acked, a_recv;
    _Atomic uint32_t a_progress; /* subscriber: highest sequence + 1 from publisher 0 */
    _Atomic bool a_busy;         /* publisher: a write is in progress */
};

struct wkr {
    int id;
    uv_loop_t loop;
    uv_timer_t tick;
    uv_tcp_t server; /* ceiling: the sink listener */
    bool is_sink;
    bool stopping;
    pthread_t th;
    struct client **cl;
    uint32_t ncl, capcl;
    uint8_t *rbuf;
    bool started;
    /* conns: indices id, id + n_threads, ... are opened by this thread */
    uint32_t conn_next;
    uint32_t conn_inflight;
    uint32_t conn_max_inflight;
    uint64_t sink_msgs, sink_bytes;
    _Atomic uint64_t a_sink_msgs, a_sink_bytes;
    _Atomic uint32_t a_connected, a_failed;
    _Atomic uint64_t a_last_connack_ns;
    /* conns --sub-burst: this thread sent its SUBSCRIBEs; SUBACKs received */
    bool sub_sent;
    _Atomic uint32_t a_subacked;
    _Atomic uint64_t a_last_suback_ns;
    /* takeover: CONNECT-to-CONNACK times of the R_NEW clients (us) */
    uint32_t *tk_lat;
    uint32_t n_tk_lat;
    _Atomic uint32_t a_taken, a_kicked;
};

static struct {
    /* options */
    enum scenario sc;
    const char *host;
    int port;
    int pid;
    const char *label;
    int publishers, subscribers, size, qos, window, rate, conns, concurrency;
    int sub_rate; /* slowsub: messages/s the subscriber reads */
    bool exact;   /* per-message accounting (one subscriber, many publishers) */
    int n_threads, batch, lead, keepalive, src_addrs;
    bool persistent;      /* subscribers use clean session 0 and a fixed client id */
    uint8_t ver;          /* MQTT_V311 or MQTT_V5 */
    bool conn_sub;        /* conns: each connection subscribes to its own topic */
    bool sub_burst;       /* conns: connect all first, then all subscribe at once */
    const char *sub_host; /* subscribers (takeover: second connections) */
    int sub_port;
    struct sockaddr_in sub_addr;
    struct sockaddr_in hosts[MAX_HOSTS]; /* --hosts: conns connection i on i % n */
    int n_hosts;
    _Atomic uint32_t conn_limit;    /* conns/takeover: clients below it may start */
    _Atomic int sub_go;             /* conns --sub-burst: subscribe now */
    enum bench_transport transport; /* --transport */
    double duration, deadline_s, drain_s, quiet_s, warmup_s;
    /* run state */
    struct sockaddr_in addr;
    struct wkr w[MAX_THREADS + 1];
    int n_wkr; /* generator threads + sink thread */
    struct client *clients;
    uint32_t n_clients;
    struct client **pubs, **subs;
    uint32_t n_pubs, n_subs;
    _Atomic int phase;
    _Atomic int ready;
    _Atomic int failed;
    _Atomic int lost_conns; /* connections closed unexpectedly */
    uint64_t t0_ns;
    uint64_t deadline_ns;
    /* latency samples (written by the one subscriber's thread) */
    uint32_t *lat;
    size_t n_lat, cap_lat;
    uint64_t lat_overflow;
    /* broker memory in kB (main thread only), -1 when unknown */
    long rss_start, rss_peak, rss_end, rss_drained;
    uint64_t rss_last_ns;
    char errmsg[256];
} G;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

/* Remember the first error, for the JSON line. */
__attribute__((format(printf, 1, 2))) static void set_err(const char *fmt, ...)
{
    pthread_mutex_lock(&err_lock);
    if (!G.errmsg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(G.errmsg, sizeof(G.errmsg), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&err_lock);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---- process statistics ------------------------------------------------- */

static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of a process in seconds, or -1. */
static double cpu_pid_s(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(line, 1, sizeof(line) - 1, f);
    fclose(f);
    line[n] = 0;
    char *p = strrchr(line, ')');
    if (!p)
        return -1;
    p += 2; /* field 3: state */
    unsigned long long ut = 0, st = 0;
    /* fields 3..13 skipped, 14 utime, 15 stime */
    for (int field = 3; field < 14 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p || sscanf(p, "%llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The machine's steal time in seconds (the "cpu" line of /proc/stat: time
 * a hypervisor ran something else while this guest had work), or -1. */
static double steal_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[8];
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    return (double)v[7] / (double)sysconf(_SC_CLK_TCK);
}

/* Percentage of all CPUs' time stolen between two steal_s() readings. */
static double steal_pct(double s0, double s1, double wall)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (s0 < 0 || s1 < 0 || wall <= 0 || ncpu < 1)
        return -1;
    return (s1 - s0) / (wall * (double)ncpu) * 100.0;
}

/* A "Vm...:" field of /proc/PID/status in kB (VmRSS: resident now, VmHWM:
 * the peak resident size since the process started), or -1. */
static long status_kb(int pid, const char *field)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0) {
            kb = strtol(line + n, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static long rss_kb(int pid)
{
    return status_kb(pid, "VmRSS:");
}

/* Main thread: sample the broker's VmRSS, at most every RSS_PERIOD_NS unless
 * force, keep the peak, and return the sample (or -1). */
static long rss_poll(bool force)
{
    if (G.pid <= 0)
        return -1;
    uint64_t t = now_ns();
    if (!force && t - G.rss_last_ns < RSS_PERIOD_NS)
        return -1;
    G.rss_last_ns = t;
    long kb = rss_kb(G.pid);
    if (kb > G.rss_peak)
        G.rss_peak = kb;
    return kb;
}

/* ---- exact accounting ---------------------------------------------------- */

/* Set bit i; returns true when it was already set. */
static bool bits_set(struct bits *b, uint32_t i)
{
    uint32_t wi = i / 64;
    if (wi >= b->nwords) {
        uint32_t n = b->nwords ? b->nwords : 1024;
        while (n <= wi)
            n = n > UINT32_MAX / 2 ? UINT32_MAX : n * 2;
        uint64_t *w = realloc(b->w, (size_t)n * sizeof(uint64_t));
        if (!w) {
            fprintf(stderr, "starling-bench: out of memory (sequence bitmap)\n");
            exit(2);
        }
        memset(w + b->nwords, 0, (size_t)(n - b->nwords) * sizeof(uint64_t));
        b->w = w;
        b->nwords = n;
    }
    uint64_t m = 1ull << (i % 64);
    bool was = (b->w[wi] & m) != 0;
    b->w[wi] |= m;
    return was;
}

static bool bits_get(const struct bits *b, uint32_t i)
{
    return i / 64 < b->nwords && (b->w[i / 64] >> (i % 64)) & 1u;
}

/* Bits set among 0..n-1. */
static uint64_t bits_count(const struct bits *b, uint64_t n)
{
    uint64_t c = 0;
    uint64_t full = n / 64;
    for (uint64_t i = 0; i < full && i < b->nwords; i++)
        c += (uint64_t)__builtin_popcountll(b->w[i]);
    if (n % 64 && full < b->nwords)
        c += (uint64_t)__builtin_popcountll(b->w[full] & ((1ull << (n % 64)) - 1));
    return c;
}

/* Bits set in a but not in b. */
static uint64_t bits_count_andnot(const struct bits *a, const struct bits *b)
{
    uint64_t c = 0;
    for (uint32_t i = 0; i < a->nwords; i++)
        c += (uint64_t)__builtin_popcountll(a->w[i] & ~(i < b->nwords ? b->w[i] : 0));
    return c;
}

/* TcpExt ListenOverflows of this network namespace (SYNs dropped because a
 * listen backlog was full), or -1. */
static long listen_overflows(void)
{
    FILE *f = fopen("/proc/net/netstat", "r");
    if (!f)
        return -1;
    static char names[8192], values[8192];
    long v = -1;
    while (fgets(names, sizeof(names), f) && fgets(values, sizeof(values), f)) {
        if (strncmp(names, "TcpExt:", 7) != 0)
            continue;
        char *sn, *sv;
        char *n = strtok_r(names, " \n", &sn), *x = strtok_r(values, " \n", &sv);
        while (n && x) {
            if (!strcmp(n, "ListenOverflows")) {
                v = strtol(x, NULL, 10);
                break;
            }
            n = strtok_r(NULL, " \n", &sn);
            x = strtok_r(NULL, " \n", &sv);
        }
        break;
    }
    fclose(f);
    return v;
}

/* ---- client connections --------------------------------------------------- */

static void on_close(uv_handle_t *h);
static void client_start(struct client *c);
static void client_reset(struct client *c);
static void conns_pump(struct wkr *w);
static void on_write(uv_write_t *req, int status);
static void pub_pump(struct client *c);

static void on_reset_close(uv_handle_t *h)
{
    struct client *c = h->data;
    c->closing = false;
    c->writing = false;
    c->state = C_INIT;
    c->cur = 0;
    buf_reset(&c->in);
    buf_reset(&c->out[0]);
    buf_reset(&c->out[1]);
    bench_xport_free(c->x);
    c->x = NULL;
    buf_reset(&c->xwire);
    if (atomic_load(&G.phase) >= PH_STOP) {
        c->state = C_DEAD;
        return;
    }
    client_start(c);
}

/* --persistent: close the first (clean session 1) connection of a subscriber
 * and open the real one with clean session 0. */
static void client_reset(struct client *c)
{
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_reset_close);
}

static void client_close(struct client *c)
{
    if (c->pause_init) {
        c->pause_init = false;
        uv_close((uv_handle_t *)&c->pause, NULL);
    }
    if (c->closing || c->state == C_INIT)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_close(uv_handle_t *h)
{
    struct client *c = h->data;
    c->state = C_DEAD;
    atomic_store_explicit(&c->a_busy, false, memory_order_relaxed);
    buf_free(&c->in);
    buf_free(&c->out[0]);
    buf_free(&c->out[1]);
    bench_xport_free(c->x);
    c->x = NULL;
    buf_free(&c->xwire);
}

/* A connection failed or was closed by the peer. */
static void client_fail(struct client *c, const char *what, int code)
{
    if (c->closing)
        return;
    if (c->state == C_RESETTING) {
        /* the broker closed the clean session 1 connection: reconnect */
        client_reset(c);
        return;
    }
    if (c->role == R_OLD && c->state == C_READY) {
        /* taken over: the broker closes the first connection */
        atomic_fetch_add_explicit(&c->w->a_kicked, 1, memory_order_relaxed);
        client_close(c);
        return;
    }
    int ph = atomic_load(&G.phase);
    if (c->state == C_READY) {
        if (ph < PH_STOP) {
            atomic_fetch_add(&G.lost_conns, 1);
            set_err("connection lost: %s (%d)", what, code);
        }
    } else {
        atomic_fetch_add(&G.failed, 1);
        atomic_fetch_add_explicit(&c->w->a_failed, 1, memory_order_relaxed);
        if (G.sc != SC_CONNS)
            set_err("connection failed: %s (%d)", what, code);
        if ((G.sc == SC_CONNS || G.sc == SC_TAKEOVER) && c->w->conn_inflight)
            c->w->conn_inflight--;
    }
    client_close(c);
}

/* --transport: frame / encrypt out[cur] (plaintext MQTT) behind the
 * transport's own bytes; returns -1 on failure. */
static int client_wrap(struct client *c)
{
    struct buf *b = &c->out[c->cur];
    if (bench_xport_wrap(c->x, b->data, b->len, &c->xwire) < 0)
        return -1;
    buf_reset(b);
    int r = buf_append(b, c->xwire.data, c->xwire.len);
    buf_reset(&c->xwire);
    return r < 0 ? -1 : 0;
}

static void client_flush(struct client *c)
{
    if (c->writing || c->closing || (c->out[c->cur].len == 0 && c->xwire.len == 0))
        return;
    if (c->x && client_wrap(c) < 0) {
        client_fail(c, "transport error", 0);
        return;
    }
    struct buf *b = &c->out[c->cur];
    uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)b->len);
    int r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &ub, 1, on_write);
    if (r) {
        client_fail(c, uv_strerror(r), r);
        return;
    }
    c->writing = true;
    atomic_store_explicit(&c->a_busy, true, memory_order_relaxed);
    c->cur ^= 1;
    buf_reset(&c->out[c->cur]);
}

static void on_write(uv_write_t *req, int status)
{
    struct client *c = req->handle->data;
    c->writing = false;
    if (status < 0) {
        atomic_store_explicit(&c->a_busy, false, memory_order_relaxed);
        if (status != UV_ECANCELED && c->state != C_RESETTING)
            client_fail(c, uv_strerror(status), status);
        return;
    }
    if (c->role == R_PUB && c->wmsgs) {
        c->sent += c->wmsgs;
        c->wmsgs = 0;
        atomic_store_explicit(&c->a_sent, c->sent, memory_order_relaxed);
    }
    if (c->out[c->cur].len || c->xwire.len)
        client_flush(c);
    else if (c->role == R_PUB)
        pub_pump(c);
    if (!c->writing)
        atomic_store_explicit(&c->a_busy, false, memory_order_release);
}

static void send_packet(struct client *c, const struct mqtt_packet *p)
{
    if (mqtt_encode(&c->out[c->cur], G.ver, p) < 0) {
        fprintf(stderr, "starling-bench: encode failed (out of memory?)\n");
        exit(2);
    }
}

static void send_connect(struct client *c)
{
    char id[48];
    bool persistent = G.persistent && c->role == R_SUB;
    int n;
    bool takeover = c->role == R_OLD || c->role == R_NEW;
    if (persistent) /* fixed, so that the session is the same across runs */
        n = snprintf(id, sizeof(id), "sb-persistent-s%u", c->idx);
    else if (takeover) /* both connections of a takeover pair share the id */
        n = snprintf(id, sizeof(id), "sb%d-t%u", (int)getpid(), c->idx);
    else
        n = snprintf(id, sizeof(id), "sb%d-%c%u", (int)getpid(), "psis"[c->role], c -> idx);
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNECT;
    p.u.connect.protocol_version = G.ver;
    /* a persistent subscriber first connects with clean session 1, which
     * discards whatever an earlier run left, then with clean session 0 */
    p.u.connect.clean_start = !takeover && (!persistent || !c->reset_done);
    /* 5.0: the reset connection's session ends with it (expiry 0), the
     * second one's outlives the connection */
    if (((persistent && c->reset_done) || takeover) && G.ver == MQTT_V5) {
        p.u.connect.props.present |= MQTT_PF(MQTT_PROP_SESSION_EXPIRY);
        p.u.connect.props.session_expiry = UINT32_MAX;
    }
    p.u.connect.keep_alive = (uint16_t)G.keepalive;
    p.u.connect.client_id.data = (const uint8_t *)id;
    p.u.connect.client_id.len = (uint32_t)n;
    send_packet(c, &p);
}

static void send_subscribe(struct client *c)
{
    char filter[64];
    if (G.sc == SC_FANIN || G.sc == SC_SLOWSUB)
        snprintf(filter, sizeof(filter), "bench/#");
    else if (G.sc == SC_INDEP)
        snprintf(filter, sizeof(filter), "#");
    else if (G.sc == SC_FANOUT)
        snprintf(filter, sizeof(filter), "bench/fanout");
    else if (G.sc == SC_CONNS)
        snprintf(filter, sizeof(filter), "bench/conn/%u", c->idx);
    else
        snprintf(filter, sizeof(filter), "bench/latency");
    struct buf entries = {0};
    if (mqtt_sub_entry_append(&entries, MQTT_SUBSCRIBE, filter, (uint16_t)strlen(filter),
                              (uint8_t)G.qos)) {
        fprintf(stderr, "starling-bench: out of memory\n");
        exit(2);
    }
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_SUBSCRIBE;
    p.flags = 2;
    p.u.subscribe.packet_id = 1;
    p.u.subscribe.entries.data = entries.data;
    p.u.subscribe.entries.len = (uint32_t)entries.len;
    p.u.subscribe.count = 1;
    send_packet(c, &p);
    buf_free(&entries);
}

static void became_ready(struct client *c)
{
    c->state = C_READY;
    if (G.sc == SC_CONNS || G.sc == SC_TAKEOVER) {
        struct wkr *w = c->w;
        w->conn_inflight--;
        if (c->role == R_NEW) {
            uint64_t us = (now_ns() - c->start_ns + 500) / 1000;
            w->tk_lat[w->n_tk_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
            atomic_fetch_add_explicit(&w->a_taken, 1, memory_order_release);
            conns_pump(w);
            return;
        }
        atomic_fetch_add_explicit(&w->a_connected, 1, memory_order_relaxed);
        atomic_store_explicit(&w->a_last_connack_ns, now_ns(), memory_order_relaxed);
        conns_pump(w);
        return;
    }
    atomic_fetch_add(&G.ready, 1);
}

static void on_publish(struct client *c, const struct mqtt_publish *pub)
{
    c->recv++;
    if (pub->qos == 1) {
        struct mqtt_packet a;
        memset(&a, 0, sizeof(a));
        a.type = MQTT_PUBACK;
        a.u.ack.packet_id = pub->packet_id;
        send_packet(c, &a);
    }
    if (pub->payload.len < TAG_SIZE) {
        c->bad_tag++;
        return;
    }
    const uint8_t *pl = pub->payload.data;
    uint32_t from = get_u32(pl), seq = get_u32(pl + 4);
    if (from >= c->n_expect) {
        c->bad_tag++;
        return;
    }
    if (G.exact)
        bits_set(&c->seen[from], seq);
    uint32_t want = c->expect[from];
    if (seq == want) {
        c->expect[from] = seq + 1;
    } else if (seq > want) {
        c->gaps += seq - want;
        c->expect[from] = seq + 1;
    } else {
        c->dups++; /* duplicate or reordered */
    }
    if (from == 0)
        atomic_store_explicit(&c->a_progress, c->expect[0], memory_order_relaxed);
    if (G.sc == SC_LATENCY) {
        uint64_t ts = get_u64(pl + 8);
        uint64_t t = now_ns();
        uint64_t warm = G.t0_ns + (uint64_t)(G.warmup_s * 1e9);
        uint64_t end = G.t0_ns + (uint64_t)(G.duration * 1e9);
        if (ts >= warm && ts < end) {
            HOPTRACE_PAYLOAD(HOP_BENCH_RECV, pl, 16);
            if (G.n_lat < G.cap_lat) {
                uint64_t us = (t - ts + 500) / 1000;
                G.lat[G.n_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
            } else {
                G.lat_overflow++;
            }
        }
    }
}

/* Handle one complete packet. Returns 0, or -1 when the connection was
 * closed. */
static int handle_packet(struct client *c, const uint8_t *p, size_t n)
{
    if (c->role == R_SINK) {
        uint8_t type = p[0] >> 4;
        if (type == MQTT_PUBLISH) {
            c->w->sink_msgs++;
        } else if (type == MQTT_CONNECT) {
            struct mqtt_packet a;
            memset(&a, 0, sizeof(a));
            a.type = MQTT_CONNACK;
            send_packet(c, &a);
        }
        c->w->sink_bytes += n;
        return 0;
    }
    struct mqtt_packet pkt;
    int rc = mqtt_decode(G.ver, p, n, &pkt);
    if (rc < 0) {
        client_fail(c, "undecodable packet from broker", rc);
        return -1;
    }
    switch (pkt.type) {
    case MQTT_CONNACK:
        if (c->state != C_WAIT_CONNACK || pkt.u.connack.reason != 0) {
            client_fail(c, "CONNACK refused", pkt.u.connack.reason);
            return -1;
        }
        if (G.persistent && c->role == R_SUB && !c->reset_done) {
            struct mqtt_packet d;
            memset(&d, 0, sizeof(d));
            d.type = MQTT_DISCONNECT;
            send_packet(c, &d);
            c->reset_done = true;
            c->state = C_RESETTING; /* the broker closes; then reconnect */
            break;
        }
        if (G.persistent && c->role == R_SUB && pkt.u.connack.session_present) {
            client_fail(c, "session present after the clean session reset", 1);
            return -1;
        }
        if (c->role == R_NEW && !pkt.u.connack.session_present) {
            /* the session of the first connection must have moved here */
            client_fail(c, "takeover: CONNACK with session present 0", 0);
            return -1;
        }
        if (c->role == R_SUB || (c->role == R_IDLE && G.conn_sub && !G.sub_burst)) {
            send_subscribe(c);
            c->state = C_WAIT_SUBACK;
        } else {
            became_ready(c);
        }
        break;
    case MQTT_SUBACK:
        if (c->state != C_WAIT_SUBACK || pkt.u.suback.n_reasons < 1 ||
            pkt.u.suback.reasons[0] >= 0x80) {
            client_fail(c, "SUBACK refused", pkt.u.suback.n_reasons ? pkt.u.suback.reasons[0] : 0);
            return -1;
        }
        if (pkt.u.suback.reasons[0] != G.qos) {
            client_fail(c, "SUBACK granted another QoS", pkt.u.suback.reasons[0]);
            return -1;
        }
        if (G.sub_burst) {
            c->state = C_READY;
            atomic_fetch_add_explicit(&c->w->a_subacked, 1, memory_order_relaxed);
            atomic_store_explicit(&c->w->a_last_suback_ns, now_ns(), memory_order_relaxed);
            break;
        }
        became_ready(c);
        break;
    case MQTT_PUBLISH:
        on_publish(c, &pkt.u.publish);
        break;
    case MQTT_PUBACK:
        if (c->inflight) {
            c->inflight--;
            c->acked++;
        }
        if (pkt.u.ack.packet_id != c->next_ack)
            c->ack_mismatch++;
        if (G.exact && pkt.u.ack.packet_id > 0) {
            /* the one unacknowledged sequence number with this packet id
             * (packet id = seq % 65535 + 1, and the window is < 65535) */
            uint32_t s =
                c->ack_lo + (pkt.u.ack.packet_id - 1u + 65535u - c->ack_lo % 65535u) % 65535u;
            if (s < c->seq) {
                bits_set(&c->acked_bits, s);
                while (c->ack_lo < c->seq && bits_get(&c->acked_bits, c->ack_lo))
                    c->ack_lo++;
            }
        }
        c->next_ack = pkt.u.ack.packet_id == 65535 ? 1 : pkt.u.ack.packet_id + 1;
        break;
    default:
        break;
    }
    return 0;
}

/* Handle the complete packets in data[0..len); returns the bytes consumed or
 * -1 when the connection was closed. */
static long process(struct client *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        uint32_t hl = 0;
        long n = mqtt_frame(data + off, len - off, 0, &hl);
        if (n < 0) {
            client_fail(c, "bad framing from peer", (int)n);
            return -1;
        }
        if (n == 0)
            break;
        if (handle_packet(c, data + off, (size_t)n) < 0)
            return -1;
        off += (size_t)n;
    }
    return (long)off;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct client *c = h->data;
    /* the throttled subscriber takes small bites, so its rate is smooth */
    bool slow = G.sc == SC_SLOWSUB && c->role == R_SUB &&
                atomic_load_explicit(&G.phase, memory_order_relaxed) == PH_RUN;
    if (c->in.len == 0 || c->x) {
        *b = uv_buf_init((char *)c->w->rbuf, slow ? SLOW_CHUNK : RBUF_SIZE);
        return;
    }
    if (c->in.cap - c->in.len < 16384 && buf_reserve(&c->in, 65536)) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    size_t room = c->in.cap - c->in.len;
    if (slow && room > SLOW_CHUNK)
        room = SLOW_CHUNK;
    *b = uv_buf_init((char *)c->in.data + c->in.len, (unsigned)room);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

/* slowsub: start reading again. */
static void slow_resume(struct client *c)
{
    if (!c->paused || c->closing)
        return;
    c->paused = false;
    if (c->pause_init)
        uv_timer_stop(&c->pause);
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r)
        client_fail(c, uv_strerror(r), r);
}

static void on_pause_timer(uv_timer_t *t)
{
    slow_resume(t->data);
}

/* slowsub: after a read, stop reading while the subscriber is ahead of
 * --sub-rate messages per second since the run began, and restart from a
 * timer when it is due again. Only during the measurement window: in the
 * drain the subscriber reads what the broker still holds at full speed. */
static void slow_throttle(struct client *c)
{
    if (G.sc != SC_SLOWSUB || c->role != R_SUB || c->closing || c->paused || !c->pause_init ||
        atomic_load_explicit(&G.phase, memory_order_relaxed) != PH_RUN)
        return;
    double elapsed = (double)(now_ns() - G.t0_ns) / 1e9;
    double allowed = (double)G.sub_rate * elapsed;
    if ((double)c->recv < allowed)
        return;
    /* due again when allowed reaches recv */
    double wait_ms = ((double)c->recv / (double)G.sub_rate - elapsed) * 1000.0;
    uint64_t ms = wait_ms < 1 ? 1 : (uint64_t)(wait_ms + 0.999);
    int r = uv_read_stop((uv_stream_t *)&c->tcp);
    if (r) {
        client_fail(c, uv_strerror(r), r);
        return;
    }
    c->paused = true;
    uv_timer_start(&c->pause, on_pause_timer, ms, 0);
}

static void after_input(struct client *c)
{
    if (c->closing)
        return;
    if (c->role == R_SUB)
        atomic_store_explicit(&c->a_recv, c->recv, memory_order_relaxed);
    else if (c->role == R_PUB)
        atomic_store_explicit(&c->a_acked, c->acked, memory_order_relaxed);
    else if (c->role == R_SINK) {
        atomic_store_explicit(&c->w->a_sink_msgs, c->w->sink_msgs, memory_order_relaxed);
        atomic_store_explicit(&c->w->a_sink_bytes, c->w->sink_bytes, memory_order_relaxed);
    }
    client_flush(c);
    if (c->role == R_PUB)
        pub_pump(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct client *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (c->role == R_SINK) {
            client_close(c);
            return;
        }
        client_fail(c, nread == UV_EOF ? "closed by broker" : uv_strerror((int)nread), (int)nread);
        return;
    }
    if (c->x) {
        /* --transport: unwrap into c->in, then as a buffered tail */
        size_t before = c->in.len;
        if (bench_xport_input(c->x, b->base, (size_t)nread, &c->in, &c->xwire) < 0) {
            client_fail(c, "transport error", 0);
            return;
        }
        if (c->in.len > before) {
            long used = process(c, c->in.data, c->in.len);
            if (used < 0)
                return;
            buf_consume(&c->in, (size_t)used);
        }
    } else if ((uint8_t *)b->base == c->w->rbuf) {
        long used = process(c, c->w->rbuf, (size_t)nread);
        if (used < 0)
            return;
        if ((size_t)used < (size_t)nread &&
            buf_append(&c->in, c->w->rbuf + used, (size_t)nread - (size_t)used)) {
            client_fail(c, "out of memory", 0);
            return;
        }
    } else {
        c->in.len += (size_t)nread;
        long used = process(c, c->in.data, c->in.len);
        if (used < 0)
            return;
        buf_consume(&c->in, (size_t)used);
    }
    after_input(c);
    slow_throttle(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct client *c = req->handle->data;
    if (c->closing)
        return;
    if (status < 0) {
        client_fail(c, uv_strerror(status), status);
        return;
    }
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r) {
        client_fail(c, uv_strerror(r), r);
        return;
    }
    c->state = C_WAIT_CONNACK;
    c->start_ns = now_ns();
    if (G.transport != BX_TCP && !(c->x = bench_xport_new(G.transport, G.host))) {
        client_fail(c, "out of memory", 0);
        return;
    }
    send_connect(c);
    client_flush(c);
}

/* Open the TCP connection of c (on its worker's loop). */
static void client_start(struct client *c)
{
    struct wkr *w = c->w;
    int r;
    c->tcp.data = c;
    if (G.src_addrs > 1) {
        r = uv_tcp_init_ex(&w->loop, &c->tcp, AF_INET);
        if (r == 0) {
            c->state = C_CONNECTING;
            uv_os_fd_t fd;
            int one = 1;
            if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
                setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
            struct sockaddr_in src;
            char ip[32];
            snprintf(ip, sizeof(ip), "127.0.0.%u", 1 + c->idx % (unsigned)G.src_addrs);
            uv_ip4_addr(ip, 0, &src);
            r = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
        }
    } else {
        r = uv_tcp_init(&w->loop, &c->tcp);
        if (r == 0)
            c->state = C_CONNECTING;
    }
    if (r == 0 && G.sc == SC_SLOWSUB && c->role == R_SUB && !c->pause_init) {
        uv_timer_init(&w->loop, &c->pause);
        c->pause.data = c;
        c->pause_init = true;
    }
    if (r == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        const struct sockaddr_in *to = &G.addr;
        if (c->role == R_SUB || c->role == R_NEW)
            to = &G.sub_addr;
        else if (c->role == R_IDLE && G.n_hosts > 0)
            to = &G.hosts[c->idx % (uint32_t)G.n_hosts];
        r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)to, on_connect);
    }
    if (r) {
        if (c->state == C_INIT) {
            /* the handle was never initialised */
            atomic_fetch_add(&G.failed, 1);
            atomic_fetch_add_explicit(&w->a_failed, 1, memory_order_relaxed);
            if ((G.sc == SC_CONNS || G.sc == SC_TAKEOVER) && w->conn_inflight)
                w->conn_inflight--;
            set_err("socket: %s (%d)", uv_strerror(r), r);
            c->state = C_DEAD;
            c->closing = true;
            return;
        }
        client_fail(c, uv_strerror(r), r);
    }
}

/* ---- publishing ---------------------------------------------------------- */

static uint32_t min_progress(void)
{
    uint32_t m = UINT32_MAX;
    for (uint32_t i = 0; i < G.n_subs; i++) {
        uint32_t p = atomic_load_explicit(&G.subs[i]->a_progress, memory_order_relaxed);
        if (p < m)
            m = p;
    }
    return m;
}

/* Encode the next batch of PUBLISH packets, within the QoS 1 window, the
 * fanout lead and the latency pacing, and write it. */
static void pub_pump(struct client *c)
{
    if (c->writing || c->closing || c->state != C_READY ||
        atomic_load_explicit(&G.phase, memory_order_relaxed) != PH_RUN)
        return;
    uint64_t n = (uint64_t)G.batch;
    uint64_t t = 0;
    if (G.sc == SC_LATENCY || (G.sc == SC_SLOWSUB && G.rate > 0)) {
        t = now_ns();
        uint64_t due = (uint64_t)((double)(t - G.t0_ns) * G.rate / 1e9) + 1;
        n = due > c->seq ? due - c->seq : 0;
        if (n > (uint64_t)G.batch * 8)
            n = (uint64_t)G.batch * 8;
    }
    if (G.qos == 1) {
        uint64_t room = (uint64_t)G.window - c->inflight;
        if (n > room)
            n = room;
    }
    if (G.lead > 0) {
        uint32_t m = min_progress();
        uint64_t limit = (uint64_t)m + (uint64_t)G.lead;
        uint64_t room = limit > c->seq ? limit - c->seq : 0;
        if (n > room)
            n = room;
    }
    if (n == 0)
        return;
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_PUBLISH;
    p.u.publish.qos = (uint8_t)G.qos;
    p.u.publish.topic.data = (const uint8_t *)c->topic;
    p.u.publish.topic.len = c->topic_len;
    p.u.publish.payload.data = c->payload;
    p.u.publish.payload.len = (uint32_t)G.size;
    struct buf *b = &c->out[c->cur];
    for (uint64_t i = 0; i < n; i++) {
        put_u32(c->payload + 4, c->seq);
        if (G.sc == SC_LATENCY)
            put_u64(c->payload + 8, now_ns());
        if (G.qos == 1)
            p.u.publish.packet_id = (uint16_t)(c->seq % 65535u + 1u);
        if (mqtt_encode(b, G.ver, &p) < 0) {
            fprintf(stderr, "starling-bench: encode failed\n");
            exit(2);
        }
        c->seq++;
    }
    if (G.qos == 1)
        c->inflight += (uint32_t)n;
    c->wmsgs = (uint32_t)n;
    client_flush(c);
}

/* ---- worker loops --------------------------------------------------------- */

static void conns_pump(struct wkr *w)
{
    uint32_t step = (uint32_t)G.n_threads;
    uint32_t limit = atomic_load_explicit(&G.conn_limit, memory_order_acquire);
    while (w->conn_next < limit && w->conn_inflight < w->conn_max_inflight) {
        struct client *c = &G.clients[w->conn_next];
        w->conn_next += step;
        w->conn_inflight++;
        client_start(c);
    }
}

static void close_all(struct wkr *w)
{
    for (uint32_t i = 0; i < w->ncl; i++)
        client_close(w->cl[i]);
    if (G.sc == SC_CONNS || G.sc == SC_TAKEOVER)
        for (uint32_t i = (uint32_t)w->id; i < G.n_clients; i += (uint32_t)G.n_threads)
            client_close(&G.clients[i]);
}

static void sink_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h) && h->type == UV_TCP && h->data) {
        struct client *c = h->data;
        client_close(c);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct wkr *w = t->data;
    int ph = atomic_load(&G.phase);
    if (ph >= PH_STOP) {
        if (w->stopping)
            return;
        w->stopping = true;
        if (w->is_sink) {
            uv_close((uv_handle_t *)&w->server, NULL);
            uv_walk(&w->loop, sink_close_walk, NULL);
        } else {
            close_all(w);
        }
        uv_close((uv_handle_t *)&w->tick, NULL);
        return;
    }
    if (w->is_sink) {
        return;
    }
    if (G.sc == SC_CONNS || G.sc == SC_TAKEOVER) {
        conns_pump(w);
        if (G.sub_burst && !w->sub_sent && atomic_load(&G.sub_go)) {
            /* every connection of this thread subscribes at once */
            w->sub_sent = true;
            for (uint32_t i = (uint32_t)w->id; i < G.n_clients; i += (uint32_t)G.n_threads) {
                struct client *c = &G.clients[i];
                if (c->state != C_READY || c->closing)
                    continue;
                send_subscribe(c);
                c->state = C_WAIT_SUBACK;
                client_flush(c);
            }
        }
        return;
    }
    if (ph == PH_RUN)
        for (uint32_t i = 0; i < w->ncl; i++)
            if (w->cl[i]->role == R_PUB)
                pub_pump(w->cl[i]);
    if (ph == PH_DRAIN && G.sc == SC_SLOWSUB)
        for (uint32_t i = 0; i < w->ncl; i++)
            if (w->cl[i]->role == R_SUB && w->cl[i]->paused)
                slow_resume(w->cl[i]);
}

static void on_sink_conn(uv_stream_t *server, int status)
{
    struct wkr *w = server->data;
    if (status < 0)
        return;
    struct client *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->w = w;
    c->role = R_SINK;
    c->state = C_READY;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (w->ncl == w->capcl) {
            w->capcl = w->capcl ? w->capcl * 2 : 16;
            w->cl = realloc(w->cl, w->capcl * sizeof(*w->cl));
            if (!w->cl)
                exit(2);
        }
        w->cl[w->ncl++] = c;
    } else {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

static void *wkr_main(void *arg)
{
    struct wkr *w = arg;
    if (!w->is_sink && G.sc != SC_CONNS && G.sc != SC_TAKEOVER)
        for (uint32_t i = 0; i < w->ncl; i++)
            client_start(w->cl[i]);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void wkr_add(struct wkr *w, struct client *c)
{
    if (w->ncl == w->capcl) {
        w->capcl = w->capcl ? w->capcl * 2 : 16;
        w->cl = realloc(w->cl, w->capcl * sizeof(*w->cl));
        if (!w->cl) {
            fprintf(stderr, "starling-bench: out of memory\n");
            exit(2);
        }
    }
    w->cl[w->ncl++] = c;
    c->w = w;
}

static void wkr_init(struct wkr *w, int id)
{
    w->id = id;
    if (uv_loop_init(&w->loop)) {
        fprintf(stderr, "starling-bench: uv_loop_init failed\n");
        exit(2);
    }
    w->rbuf = malloc(RBUF_SIZE);
    if (!w->rbuf)
        exit(2);
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS);
}

/* ---- set-up --------------------------------------------------------------- */

static struct client *new_client(uint32_t i, enum role role, uint32_t idx)
{
    struct client *c = &G.clients[i];
    c->role = role;
    c->idx = idx;
    c->next_ack = 1;
    if (role == R_PUB) {
        c->payload = calloc(1, (size_t)G.size);
        if (!c->payload)
            exit(2);
        memset(c->payload + TAG_SIZE, 'x', (size_t)G.size - TAG_SIZE);
        put_u32(c->payload, idx);
        int n;
        if (G.sc == SC_FANOUT)
            n = snprintf(c->topic, sizeof(c->topic), "bench/fanout");
        else if (G.sc == SC_LATENCY)
            n = snprintf(c->topic, sizeof(c->topic), "bench/latency");
        else
            n = snprintf(c->topic, sizeof(c->topic), "bench/%u", idx);
        c->topic_len = (uint16_t)n;
    } else if (role == R_SUB) {
        c->n_expect = (uint32_t)G.n_pubs;
        c->expect = calloc(c->n_expect ? c->n_expect : 1, sizeof(uint32_t));
        if (!c->expect)
            exit(2);
        if (G.exact) {
            c->seen = calloc(c->n_expect ? c->n_expect : 1, sizeof(struct bits));
            if (!c->seen)
                exit(2);
        }
    }
    return c;
}

/* Place clients on threads. Subscribers go on thread 0 (fanin, latency) or
 * round-robin (fanout); publishers on threads 1..n-1 (thread 0 if n == 1). */
static void build_clients(void)
{
    int nt = G.n_threads;
    if (G.sc == SC_CONNS || G.sc == SC_TAKEOVER) {
        /* takeover: clients 0..N-1 connect first (R_OLD), N..2N-1 take
         * their ids over (R_NEW) once conn_limit lets them */
        uint32_t n = (uint32_t)G.conns;
        G.n_clients = G.sc == SC_TAKEOVER ? 2 * n : n;
        G.clients = calloc(G.n_clients, sizeof(*G.clients));
        if (!G.clients)
            exit(2);
        for (uint32_t i = 0; i < G.n_clients; i++) {
            G.clients[i].role = G.sc == SC_CONNS ? R_IDLE : i < n ? R_OLD : R_NEW;
            G.clients[i].idx = i % n;
            G.clients[i].w = &G.w[i % (uint32_t)nt];
        }
        atomic_store(&G.conn_limit, n);
        if (G.sc == SC_TAKEOVER)
            for (int t = 0; t < nt; t++) {
                G.w[t].tk_lat = calloc(n, sizeof(uint32_t));
                if (!G.w[t].tk_lat)
                    exit(2);
            }
        for (int t = 0; t < nt; t++) {
            G.w[t].conn_next = (uint32_t)t;
            G.w[t].conn_max_inflight = (uint32_t)((G.concurrency + nt - 1) / nt);
        }
        return;
    }
    switch (G.sc) {
    case SC_FANIN:
    case SC_INDEP:
    case SC_SLOWSUB:
        G.n_pubs = (uint32_t)G.publishers;
        G.n_subs = 1;
        G.exact = true;
        break;
    case SC_CEILING:
        G.n_pubs = (uint32_t)G.publishers;
        G.n_subs = 0;
        break;
    case SC_FANOUT:
        G.n_pubs = 1;
        G.n_subs = (uint32_t)G.subscribers;
        break;
    default:
        G.n_pubs = 1;
        G.n_subs = 1;
        break;
    }
    G.n_clients = G.n_pubs + G.n_subs;
    G.clients = calloc(G.n_clients, sizeof(*G.clients));
    G.pubs = calloc(G.n_pubs + 1, sizeof(*G.pubs));
    G.subs = calloc(G.n_subs + 1, sizeof(*G.subs));
    if (!G.clients || !G.pubs || !G.subs)
        exit(2);
    uint32_t k = 0;
    for (uint32_t i = 0; i < G.n_subs; i++) {
        struct client *c = new_client(k++, R_SUB, i);
        G.subs[i] = c;
        int t = G.sc == SC_FANOUT ? (int)(i % (uint32_t)nt) : 0;
        wkr_add(&G.w[t], c);
    }
    for (uint32_t i = 0; i < G.n_pubs; i++) {
        struct client *c = new_client(k++, R_PUB, i);
        G.pubs[i] = c;
        int t;
        if (nt == 1)
            t = 0;
        else if (G.sc == SC_FANOUT || G.sc == SC_LATENCY)
            t = nt - 1;
        else
            t = 1 + (int)(i % (uint32_t)(nt - 1));
        wkr_add(&G.w[t], c);
    }
}

/* ---- measurement helpers -------------------------------------------------- */

struct totals {
    uint64_t sent, acked, recv, dups, gaps, bad_tag, ack_mismatch;
    bool busy;
};

static struct totals totals(void)
{
    struct totals t = {0};
    for (uint32_t i = 0; i < G.n_pubs; i++) {
        /* busy first: a publisher stores a_sent before clearing a_busy */
        if (atomic_load_explicit(&G.pubs[i]->a_busy, memory_order_acquire))
            t.busy = true;
        t.sent += atomic_load_explicit(&G.pubs[i]->a_sent, memory_order_relaxed);
        t.acked += atomic_load_explicit(&G.pubs[i]->a_acked, memory_order_relaxed);
    }
    for (uint32_t i = 0; i < G.n_subs; i++)
        t.recv += atomic_load_explicit(&G.subs[i]->a_recv, memory_order_relaxed);
    return t;
}

/* After the threads have stopped: exact totals, including dups and gaps. */
static struct totals final_totals(void)
{
    struct totals t = {0};
    for (uint32_t i = 0; i < G.n_pubs; i++) {
        t.sent += G.pubs[i]->sent;
        t.acked += G.pubs[i]->acked;
        t.ack_mismatch += G.pubs[i]->ack_mismatch;
    }
    for (uint32_t i = 0; i < G.n_subs; i++) {
        t.recv += G.subs[i]->recv;
        t.dups += G.subs[i]->dups;
        t.gaps += G.subs[i]->gaps;
        t.bad_tag += G.subs[i]->bad_tag;
    }
    return t;
}

static uint64_t sink_msgs(void)
{
    return G.n_wkr > G.n_threads
               ? atomic_load_explicit(&G.w[G.n_threads].a_sink_msgs, memory_order_relaxed)
               : 0;
}

static bool past_deadline(void)
{
    return now_ns() >= G.deadline_ns;
}

static void start_threads(void)
{
    for (int i = 0; i < G.n_wkr; i++)
        if (pthread_create(&G.w[i].th, NULL, wkr_main, &G.w[i])) {
            fprintf(stderr, "starling-bench: pthread_create failed\n");
            exit(2);
        }
}

static void stop_threads(void)
{
    atomic_store(&G.phase, PH_STOP);
    for (int i = 0; i < G.n_wkr; i++) {
        pthread_join(G.w[i].th, NULL);
        uv_loop_close(&G.w[i].loop);
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

static void print_cpu(FILE *f, double bench_cpu, double broker_cpu, double steal)
{
    fprintf(f, ",\"bench_cpu\":%.3f", bench_cpu);
    if (broker_cpu >= 0)
        fprintf(f, ",\"broker_cpu\":%.3f", broker_cpu);
    else
        fprintf(f, ",\"broker_cpu\":null");
    if (steal >= 0)
        fprintf(f, ",\"steal_pct\":%.2f", steal);
    else
        fprintf(f, ",\"steal_pct\":null");
}

/* The broker's memory: VmRSS with every connection open (start), sampled
 * peak, at the end of the measurement window (end), after the drain, and the
 * kernel's high-water mark VmHWM since the broker started. */
static void print_mem(void)
{
    long hwm = status_kb(G.pid, "VmHWM:");
    const char *names[] = {"rss_start_kb", "rss_peak_kb", "rss_end_kb", "rss_drained_kb",
                           "rss_hwm_kb"};
    long v[] = {G.rss_start, G.rss_peak, G.rss_end, G.rss_drained, hwm};
    for (int i = 0; i < 5; i++)
        if (v[i] >= 0)
            printf(",\"%s\":%ld", names[i], v[i]);
        else
            printf(",\"%s\":null", names[i]);
}

/* Exact counts from the sequence bitmaps (one subscriber). */
struct exact {
    uint64_t delivered;  /* distinct messages the subscriber received */
    uint64_t dropped;    /* sent and never received */
    uint64_t acked_lost; /* QoS 1: acknowledged by the broker, never received */
};

static struct exact exact_totals(void)
{
    struct exact x = {0};
    if (!G.exact || G.n_subs != 1)
        return x;
    const struct client *s = G.subs[0];
    for (uint32_t i = 0; i < G.n_pubs; i++) {
        const struct client *p = G.pubs[i];
        uint64_t got = bits_count(&s->seen[i], p->sent);
        x.delivered += got;
        x.dropped += p->sent - got;
        if (G.qos == 1)
            x.acked_lost += bits_count_andnot(&p->acked_bits, &s->seen[i]);
    }
    return x;
}

static void print_head(void)
{
    printf("{\"scenario\":\"%s\",\"broker\":\"%s\",\"qos\":%d", scenario_names[G.sc], G.label,
           G.qos);
    if (G.persistent)
        printf(",\"persistent\":true");
    printf(",\"mqtt\":\"%s\"", G.ver == MQTT_V5 ? "5" : "3.1.1");
    if (G.transport != BX_TCP)
        printf(",\"transport\":\"%s\"",
               (const char *const[]){"tcp", "tls", "ws", "wss"}[G.transport]);
}

static void print_tail(bool complete)
{
    printf(",\"threads\":%d,\"complete\":%s", G.n_threads, complete ? "true" : "false");
    if (G.errmsg[0]) {
        printf(",\"error\":\"");
        for (const char *p = G.errmsg; *p; p++)
            if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
                putchar(*p);
        printf("\"");
    }
    printf("}\n");
    fflush(stdout);
}

/* ---- scenarios -------------------------------------------------------------- */

/* Wait until every client is ready; false on failure or deadline. */
static bool wait_ready(void)
{
    int want = (int)(G.n_pubs + G.n_subs);
    while (atomic_load(&G.ready) < want) {
        if (atomic_load(&G.failed) > 0 || atomic_load(&G.lost_conns) > 0)
            return false;
        if (past_deadline()) {
            set_err("setup: connections not ready before the deadline");
            return false;
        }
        rss_poll(false);
        sleep_ms(2);
    }
    return true;
}

static int run_messages(void)
{
    build_clients();
    if (G.sc == SC_CEILING) {
        /* the sink: a trivial server on its own thread */
        struct wkr *s = &G.w[G.n_threads];
        wkr_init(s, G.n_threads);
        s->is_sink = true;
        uv_tcp_init(&s->loop, &s->server);
        s->server.data = s;
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", 0, &a);
        int r = uv_tcp_bind(&s->server, (const struct sockaddr *)&a, 0);
        if (!r)
            r = uv_listen((uv_stream_t *)&s->server, 1024, on_sink_conn);
        if (r) {
            fprintf(stderr, "starling-bench: sink listen: %s\n", uv_strerror(r));
            return 2;
        }
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        uv_tcp_getsockname(&s->server, (struct sockaddr *)&ss, &len);
        G.addr = *(struct sockaddr_in *)&ss;
        G.n_wkr = G.n_threads + 1;
    }
    if (G.sc == SC_LATENCY) {
        G.cap_lat = (size_t)((double)G.rate * G.duration * 1.2) + 1024;
        G.lat = malloc(G.cap_lat * sizeof(uint32_t));
        if (!G.lat)
            exit(2);
    }
    G.rss_start = rss_poll(true);
    start_threads();
    bool ok = wait_ready();
    if (ok)
        G.rss_start = rss_poll(true); /* with every connection open */
    uint64_t t0 = now_ns(), t1 = t0;
    double cpu0 = cpu_self_s(), bcpu0 = cpu_pid_s(G.pid), cpu1 = cpu0, bcpu1 = bcpu0;
    double st0 = steal_s(), st1 = st0;
    struct totals win = {0};
    uint64_t win_sink = 0;
    double drain = 0;
    bool drained = false;
    if (ok) {
        G.t0_ns = t0;
        atomic_store(&G.phase, PH_RUN);
        uint64_t end = t0 + (uint64_t)(G.duration * 1e9);
        while (now_ns() < end) {
            if (atomic_load(&G.lost_conns) > 0 || past_deadline()) {
                ok = false;
                break;
            }
            rss_poll(false);
            sleep_ms(1);
        }
        t1 = now_ns();
        G.rss_end = rss_poll(true);
        win = totals();
        win_sink = sink_msgs();
        cpu1 = cpu_self_s();
        bcpu1 = cpu_pid_s(G.pid);
        st1 = steal_s();
        atomic_store(&G.phase, PH_DRAIN);
        /* drain: until everything arrived, nothing arrived for quiet_s, or drain_s */
        uint64_t d0 = now_ns(), last_change = d0;
        uint64_t last_recv = UINT64_MAX, prev_sent = UINT64_MAX;
        int done_polls = 0;
        while (ok) {
            struct totals t = totals();
            uint64_t got = G.sc == SC_CEILING ? sink_msgs() : t.recv;
            uint64_t want;
            bool settled = !t.busy;
            if (G.qos == 1) {
                want = t.acked * (G.sc == SC_FANOUT ? G.n_subs : 1);
                /* every message written has been acknowledged (nothing is
                 * encoded but unwritten while no write is in progress) */
                settled = settled && t.acked == t.sent;
            } else {
                want = t.sent * (G.sc == SC_FANOUT ? G.n_subs : 1);
            }
            uint64_t n = now_ns();
            /* twice in a row: a publisher that saw PH_RUN just before the
             * switch may still be starting its last write */
            if (settled && got >= want && t.sent == prev_sent) {
                if (++done_polls >= 2) {
                    drained = true;
                    break;
                }
            } else {
                done_polls = 0;
            }
            prev_sent = t.sent;
            if (got != last_recv) {
                last_recv = got;
                last_change = n;
            }
            if (n - last_change >= (uint64_t)(G.quiet_s * 1e9) ||
                n - d0 >= (uint64_t)(G.drain_s * 1e9) || past_deadline())
                break;
            rss_poll(false);
            sleep_ms(2);
        }
        drain = (double)(now_ns() - d0) / 1e9;
        G.rss_drained = rss_poll(true);
    }
    stop_threads();
    struct totals f = final_totals();
    double wall = (double)(t1 - t0) / 1e9;
    if (wall <= 0)
        wall = 1e-9;
    double bench_cpu = (cpu1 - cpu0) / wall;
    double broker_cpu = (bcpu0 >= 0 && bcpu1 >= 0) ? (bcpu1 - bcpu0) / wall : -1;
    double steal = steal_pct(st0, st1, wall);
    bool complete = ok && atomic_load(&G.lost_conns) == 0;

    print_head();
    printf(",\"duration_s\":%.3f", wall);
    if (G.sc == SC_CEILING) {
        uint64_t got = atomic_load(&G.w[G.n_threads].a_sink_msgs);
        double rate = (double)win_sink / wall;
        double mbps =
            (double)atomic_load(&G.w[G.n_threads].a_sink_bytes) / (double)(wall + drain) / 1e6;
        printf(",\"publishers\":%u,\"payload\":%d,\"msgs_per_s\":%.0f,\"sent\":%" PRIu64
               ",\"received\":%" PRIu64 ",\"sink_mb_per_s\":%.1f,\"loss\":%" PRIu64,
               G.n_pubs, G.size, rate, f.sent, got, mbps, f.sent > got ? f.sent - got : 0);
        print_cpu(stdout, bench_cpu, -1, steal);
        print_tail(complete);
        fprintf(stderr, "%-8s %-10s ceiling   %10.0f msg/s  sent %" PRIu64 "  bench cpu %.2f\n",
                G.label, "", rate, f.sent, bench_cpu);
        return complete ? 0 : 1;
    }
    uint64_t expected = G.qos == 1 ? f.acked : f.sent;
    uint64_t unique = f.recv - (f.dups < f.recv ? f.dups : f.recv);
    if (G.sc == SC_FANOUT)
        expected *= G.n_subs;
    uint64_t loss = expected > unique ? expected - unique : 0;
    double loss_pct = expected ? 100.0 * (double)loss / (double)expected : 0;
    if (G.sc != SC_LATENCY) {
        double rate = (double)win.recv / wall;
        printf(",\"publishers\":%u,\"subscribers\":%u,\"payload\":%d", G.n_pubs, G.n_subs, G.size);
        if (G.qos == 1)
            printf(",\"window\":%d", G.window);
        if (G.sc == SC_FANOUT)
            printf(",\"lead\":%d,\"deliveries_per_s\":%.0f,\"publish_per_s\":%.0f", G.lead, rate,
                   (double)win.sent / wall);
        printf(",\"msgs_per_s\":%.0f,\"sent\":%" PRIu64 ",\"acked\":%" PRIu64
               ",\"received\":%" PRIu64 ",\"received_in_window\":%" PRIu64 ",\"expected\":%" PRIu64
               ",\"loss\":%" PRIu64 ",\"loss_pct\":%.4f"
               ",\"duplicates\":%" PRIu64 ",\"gaps\":%" PRIu64 ",\"drain_s\":%.3f"
               ",\"drained\":%s",
               rate, f.sent, f.acked, f.recv, win.recv, expected, loss, loss_pct, f.dups, f.gaps,
               drain, drained ? "true" : "false");
        if (G.qos == 1)
            printf(",\"unacked\":%" PRIu64 ",\"ack_order_errors\":%" PRIu64,
                   f.sent > f.acked ? f.sent - f.acked : 0, f.ack_mismatch);
        struct exact x = exact_totals();
        if (G.exact) {
            if (G.sc == SC_SLOWSUB)
                printf(",\"sub_rate\":%d,\"rate\":%d", G.sub_rate, G.rate);
            printf(",\"delivered_per_s\":%.0f,\"publish_per_s\":%.0f,\"delivered\":%" PRIu64
                   ",\"received_after_window\":%" PRIu64 ",\"dropped\":%" PRIu64
                   ",\"dropped_pct\":%.4f",
                   rate, (double)win.sent / wall, x.delivered, f.recv - win.recv, x.dropped,
                   f.sent ? 100.0 * (double)x.dropped / (double)f.sent : 0.0);
            if (G.qos == 1)
                printf(",\"acked_lost\":%" PRIu64, x.acked_lost);
        }
        print_cpu(stdout, bench_cpu, broker_cpu, steal);
        print_mem();
        print_tail(complete);
        if (G.sc == SC_INDEP || G.sc == SC_SLOWSUB) {
            char al[48] = "";
            if (G.qos == 1)
                snprintf(al, sizeof(al), "  acked-lost %" PRIu64, x.acked_lost);
            fprintf(stderr,
                    "%-8s %-7s qos%d %10.0f delivered/s  %.0f published/s  sent %" PRIu64
                    "  dropped %" PRIu64 " (%.2f%%)%s  broker rss peak %.1f MB end %.1f MB  "
                    "broker cpu %.2f%s\n",
                    G.label, scenario_names[G.sc], G.qos, rate, (double)win.sent / wall, f.sent,
                    x.dropped, f.sent ? 100.0 * (double)x.dropped / (double)f.sent : 0.0, al,
                    (double)G.rss_peak / 1024.0, (double)G.rss_end / 1024.0, broker_cpu,
                    complete ? "" : "  INCOMPLETE");
            return complete ? 0 : 1;
        }
        fprintf(stderr,
                "%-8s %-7s qos%d %10.0f %s  sent %" PRIu64 "  recv %" PRIu64 "  loss %" PRIu64
                " (%.3f%%)  bench cpu %.2f  broker cpu %.2f%s\n",
                G.label, scenario_names[G.sc], G.qos, rate,
                G.sc == SC_FANOUT ? "deliveries/s" : "msg/s", f.sent, f.recv, loss, loss_pct,
                bench_cpu, broker_cpu, complete ? "" : "  INCOMPLETE");
        return complete ? 0 : 1;
    }
    /* latency */
    qsort(G.lat, G.n_lat, sizeof(uint32_t), cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < G.n_lat; i++)
        mean += G.lat[i];
    mean = G.n_lat ? mean / (double)G.n_lat : 0;
    uint32_t p50 = pct(G.lat, G.n_lat, 50), p99 = pct(G.lat, G.n_lat, 99),
             p999 = pct(G.lat, G.n_lat, 99.9), mx = G.n_lat ? G.lat[G.n_lat - 1] : 0;
    if (G.n_lat == 0) {
        complete = false;
        set_err("latency: no samples");
    }
    printf(",\"rate\":%d,\"payload\":%d,\"msgs_per_s\":%.0f,\"sent\":%" PRIu64
           ",\"received\":%" PRIu64 ",\"loss\":%" PRIu64 ",\"gaps\":%" PRIu64
           ",\"drained\":%s,\"samples\":%zu"
           ",\"p50_us\":%u,\"p99_us\":%u,\"p999_us\":%u,\"max_us\":%u,\"mean_us\":%.1f",
           G.rate, G.size, (double)win.sent / wall, f.sent, f.recv, loss, f.gaps,
           drained ? "true" : "false", G.n_lat, p50, p99, p999, mx, mean);
    print_cpu(stdout, bench_cpu, broker_cpu, steal);
    print_mem();
    print_tail(complete);
    fprintf(stderr,
            "%-8s latency qos0 %d msg/s  p50 %u us  p99 %u us  p99.9 %u us  max %u us  loss "
            "%" PRIu64 "  bench cpu %.2f  broker cpu %.2f  steal %.1f%%%s\n",
            G.label, G.rate, p50, p99, p999, mx, loss, bench_cpu, broker_cpu, steal,
            complete ? "" : "  INCOMPLETE");
    return complete ? 0 : 1;
}

static int run_conns(void)
{
    build_clients();
    long rss0 = rss_poll(true);
    G.rss_start = rss0;
    long lo0 = listen_overflows();
    double cpu0 = cpu_self_s(), bcpu0 = cpu_pid_s(G.pid), st0 = steal_s();
    uint64_t t0 = now_ns();
    G.t0_ns = t0;
    atomic_store(&G.phase, PH_RUN);
    start_threads();
    uint32_t connected = 0, failed = 0;
    bool ok = true;
    for (;;) {
        connected = failed = 0;
        for (int i = 0; i < G.n_threads; i++) {
            connected += atomic_load_explicit(&G.w[i].a_connected, memory_order_relaxed);
            failed += atomic_load_explicit(&G.w[i].a_failed, memory_order_relaxed);
        }
        if (connected + failed >= G.n_clients)
            break;
        if (past_deadline()) {
            set_err("conns: not all connections done before the deadline");
            ok = false;
            break;
        }
        rss_poll(false);
        sleep_ms(2);
    }
    uint64_t tl = t0;
    for (int i = 0; i < G.n_threads; i++) {
        uint64_t x = atomic_load_explicit(&G.w[i].a_last_connack_ns, memory_order_relaxed);
        if (x > tl)
            tl = x;
    }
    /* --sub-burst: every connection is open; now all of them subscribe at
     * once, and the rate is SUBACKs per second */
    uint32_t subacked = 0;
    double sub_wall = 0;
    if (G.sub_burst && ok && failed == 0) {
        uint64_t ts = now_ns();
        atomic_store(&G.sub_go, 1);
        for (;;) {
            subacked = 0;
            uint32_t f = 0;
            for (int i = 0; i < G.n_threads; i++) {
                subacked += atomic_load_explicit(&G.w[i].a_subacked, memory_order_relaxed);
                f += atomic_load_explicit(&G.w[i].a_failed, memory_order_relaxed);
            }
            if (subacked >= connected || f > failed || atomic_load(&G.lost_conns) > 0)
                break;
            if (past_deadline()) {
                set_err("conns: not all SUBACKs before the deadline");
                ok = false;
                break;
            }
            rss_poll(false);
            sleep_ms(2);
        }
        uint64_t tsl = ts;
        for (int i = 0; i < G.n_threads; i++) {
            uint64_t x = atomic_load_explicit(&G.w[i].a_last_suback_ns, memory_order_relaxed);
            if (x > tsl)
                tsl = x;
        }
        sub_wall = (double)(tsl - ts) / 1e9;
        if (subacked < connected)
            ok = false;
    }
    double cpu1 = cpu_self_s(), bcpu1 = cpu_pid_s(G.pid), st1 = steal_s();
    double wall = (double)(tl - t0) / 1e9;
    if (wall <= 0)
        wall = 1e-9;
    double wall_cpu = (double)(now_ns() - t0) / 1e9;
    /* let the broker settle, then read its memory with every connection open */
    uint64_t settle_end = now_ns() + 1000000000ull;
    while (now_ns() < settle_end && !past_deadline()) {
        rss_poll(false);
        sleep_ms(10);
    }
    long rss1 = rss_poll(true);
    G.rss_end = rss1;
    long lo1 = listen_overflows();
    int lost = atomic_load(&G.lost_conns);
    stop_threads();
    if (failed > 0)
        set_err("conns: some connections failed");
    if (G.sub_burst) { /* a refused SUBSCRIBE counts as a failed connection */
        failed = 0;
        for (int i = 0; i < G.n_threads; i++)
            failed += atomic_load_explicit(&G.w[i].a_failed, memory_order_relaxed);
    }
    bool complete = ok && failed == 0 && lost == 0;
    double rate = (double)connected / wall;
    double bench_cpu = (cpu1 - cpu0) / wall_cpu;
    double broker_cpu = (bcpu0 >= 0 && bcpu1 >= 0) ? (bcpu1 - bcpu0) / wall_cpu : -1;
    double steal = steal_pct(st0, st1, wall_cpu);
    print_head();
    printf(",\"subscribe\":%s", G.conn_sub ? "true" : "false");
    if (G.sub_burst)
        printf(",\"sub_burst\":true,\"subacked\":%u,\"sub_duration_s\":%.3f"
               ",\"subacks_per_s\":%.0f",
               subacked, sub_wall, sub_wall > 0 ? (double)subacked / sub_wall : 0.0);
    if (G.n_hosts > 0)
        printf(",\"hosts\":%d", G.n_hosts);
    printf(",\"duration_s\":%.3f,\"conns\":%u,\"connected\":%u,\"failed\":%u,\"lost\":%d"
           ",\"concurrency\":%d,\"src_addrs\":%d,\"connects_per_s\":%.0f",
           wall, G.n_clients, connected, failed, lost, G.concurrency, G.src_addrs, rate);
    double per_conn = -1;
    if (rss0 >= 0 && rss1 >= 0) {
        per_conn = connected ? (double)(rss1 - rss0) * 1024.0 / connected : 0;
        printf(",\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"bytes_per_conn\":%.0f", rss0, rss1,
               per_conn);
    } else {
        printf(",\"rss_before_kb\":null,\"rss_after_kb\":null,\"bytes_per_conn\":null");
    }
    /* SYNs dropped on a full listen backlog are retried by the kernel after
     * 1 s: they show up here and explain a low connects_per_s */
    printf(",\"listen_overflows\":%ld", lo0 >= 0 && lo1 >= 0 ? lo1 - lo0 : -1);
    print_cpu(stdout, bench_cpu, broker_cpu, steal);
    print_mem();
    print_tail(complete);
    fprintf(stderr,
            "%-8s conns   %u/%u connected  %.0f conn/s  %.0f B/conn (rss %ld -> %ld kB)  bench "
            "cpu %.2f  broker cpu %.2f%s\n",
            G.label, connected, G.n_clients, rate, per_conn, rss0, rss1, bench_cpu, broker_cpu,
            complete ? "" : "  INCOMPLETE");
    if (G.sub_burst)
        fprintf(stderr, "%-8s subscribe burst  %u/%u SUBACKs in %.3f s  %.0f SUBACK/s\n", G.label,
                subacked, connected, sub_wall, sub_wall > 0 ? (double)subacked / sub_wall : 0.0);
    return complete ? 0 : 1;
}

/* Sum of a per-thread counter. */
static uint32_t sum_wkr(size_t off)
{
    uint32_t n = 0;
    for (int i = 0; i < G.n_threads; i++)
        n +=
            atomic_load_explicit((_Atomic uint32_t *)((char *)&G.w[i] + off), memory_order_acquire);
    return n;
}

/* Wait until the per-thread counter at off reaches want, a connection
 * failed, or the deadline passed. */
static bool wait_counter(size_t off, uint32_t want, const char *what)
{
    while (sum_wkr(off) < want) {
        if (sum_wkr(offsetof(struct wkr, a_failed)) > 0) {
            set_err("takeover: a connection failed during %s", what);
            return false;
        }
        if (past_deadline()) {
            set_err("takeover: %s not done before the deadline", what);
            return false;
        }
        rss_poll(false);
        sleep_ms(1);
    }
    return true;
}

/* takeover: --conns clients connect to --host with clean start 0, then each
 * connects again with the same client id and clean start 0 to --sub-host
 * (another node of a cluster), --concurrency at a time. Result: the time from
 * that CONNECT to its CONNACK with session present 1, p50/p99/max, and
 * takeovers per second. */
static int run_takeover(void)
{
    build_clients();
    uint32_t n = (uint32_t)G.conns;
    G.rss_start = rss_poll(true);
    atomic_store(&G.phase, PH_RUN);
    start_threads();
    bool ok = wait_counter(offsetof(struct wkr, a_connected), n, "the first connections");
    double cpu0 = cpu_self_s(), bcpu0 = cpu_pid_s(G.pid), st0 = steal_s();
    uint64_t t0 = now_ns();
    G.t0_ns = t0;
    if (ok) {
        atomic_store_explicit(&G.conn_limit, 2 * n, memory_order_release);
        ok = wait_counter(offsetof(struct wkr, a_taken), n, "the takeovers");
    }
    uint64_t t1 = now_ns();
    double cpu1 = cpu_self_s(), bcpu1 = cpu_pid_s(G.pid), st1 = steal_s();
    /* every old connection must be closed by the broker (one owner) */
    uint64_t kick_end = now_ns() + 2000000000ull;
    while (ok && sum_wkr(offsetof(struct wkr, a_kicked)) < n && now_ns() < kick_end)
        sleep_ms(2);
    uint32_t kicked = sum_wkr(offsetof(struct wkr, a_kicked));
    uint32_t taken = sum_wkr(offsetof(struct wkr, a_taken));
    uint32_t failed = sum_wkr(offsetof(struct wkr, a_failed));
    int lost = atomic_load(&G.lost_conns);
    G.rss_end = rss_poll(true);
    stop_threads();
    if (ok && kicked < n)
        set_err("takeover: %u old connections were not closed by the broker", n - kicked);
    bool complete = ok && taken == n && kicked == n && failed == 0 && lost == 0;
    /* the threads are stopped: their samples can be merged */
    uint32_t *lat = malloc((size_t)n * sizeof(uint32_t) + 1);
    size_t nl = 0;
    if (!lat)
        exit(2);
    for (int i = 0; i < G.n_threads; i++)
        for (uint32_t k = 0; k < G.w[i].n_tk_lat && nl < n; k++)
            lat[nl++] = G.w[i].tk_lat[k];
    qsort(lat, nl, sizeof(uint32_t), cmp_u32);
    double wall = (double)(t1 - t0) / 1e9;
    if (wall <= 0)
        wall = 1e-9;
    double bench_cpu = (cpu1 - cpu0) / wall;
    double broker_cpu = (bcpu0 >= 0 && bcpu1 >= 0) ? (bcpu1 - bcpu0) / wall : -1;
    double steal = steal_pct(st0, st1, wall);
    uint32_t p50 = pct(lat, nl, 50), p99 = pct(lat, nl, 99), mx = nl ? lat[nl - 1] : 0;
    print_head();
    printf(",\"duration_s\":%.3f,\"conns\":%u,\"taken\":%u,\"kicked\":%u,\"failed\":%u"
           ",\"lost\":%d,\"concurrency\":%d,\"same_node\":%s,\"takeovers_per_s\":%.0f"
           ",\"p50_us\":%u,\"p99_us\":%u,\"max_us\":%u",
           wall, n, taken, kicked, failed, lost, G.concurrency,
           G.sub_addr.sin_addr.s_addr == G.addr.sin_addr.s_addr &&
                   G.sub_addr.sin_port == G.addr.sin_port
               ? "true"
               : "false",
           (double)taken / wall, p50, p99, mx);
    print_cpu(stdout, bench_cpu, broker_cpu, steal);
    print_mem();
    print_tail(complete);
    fprintf(stderr,
            "%-8s takeover %u/%u taken, %u kicked  %.0f/s  p50 %u us  p99 %u us  max %u us%s\n",
            G.label, taken, n, kicked, (double)taken / wall, p50, p99, mx,
            complete ? "" : "  INCOMPLETE");
    free(lat);
    return complete ? 0 : 1;
}

/* ---- command line ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: starling-bench SCENARIO --host H --port P [options]\n"
               "scenarios: fanin fanout latency conns ceiling indep slowsub takeover\n"
               "  --host H           broker address (IPv4 literal, default 127.0.0.1)\n"
               "  --port P           broker port (default 1883; ignored by ceiling)\n"
               "  --sub-host H       subscribers' broker (another cluster node; takeover:\n"
               "                     where the second connections go; default --host)\n"
               "  --sub-port P       port at --sub-host (default --port)\n"
               "  --hosts H1,H2,..   conns: connection i goes to H(i mod n), port --port\n"
               "  --sub-burst        conns: open every connection first, then all subscribe\n"
               "                     to bench/conn/<i> at once; adds subacks_per_s\n"
               "  --pid PID          broker process: report its CPU use and memory (VmRSS\n"
               "                     sampled every 10 ms: start, peak, end, after drain)\n"
               "  --label NAME       broker name in the output (default \"broker\")\n"
               "  --duration T       measurement seconds (default 5)\n"
               "  --publishers P     fanin/indep/slowsub/ceiling publishers (default 8)\n"
               "  --subscribers N    fanout subscribers (default 100)\n"
               "  --size S           payload bytes, >= 16 (default 64)\n"
               "  --qos 0|1          publish and subscription QoS (default 0; latency: 0 only)\n"
               "  --persistent       subscribers connect with clean session 0 and a fixed\n"
               "                     client id (after one clean session 1 connection that\n"
               "                     discards an earlier run's session); fanin, fanout, latency\n"
               "  --subscribe        conns: every connection subscribes to its own topic\n"
               "                     bench/conn/<i> (at --qos) and counts once SUBACK came\n"
               "  --window W         QoS 1 unacknowledged messages per publisher (default 64)\n"
               "  --lead L           fanout: max messages the publisher runs ahead of the\n"
               "                     slowest subscriber, 0 = unbounded (default 1000)\n"
               "  --rate R           latency: messages per second (default 10000);\n"
               "                     slowsub: per publisher, 0 = unpaced (default 0)\n"
               "  --sub-rate N       slowsub: messages per second the subscriber reads\n"
               "                     (default 2000)\n"
               "  --conns C          conns: connections (default 10000, at most 19000);\n"
               "                     takeover: client ids taken over (default 200, <= 9000)\n"
               "  --concurrency K    conns, takeover: handshakes in flight (default 500;\n"
               "                     takeover: 4)\n"
               "  --src-addrs K      spread client sockets over 127.0.0.1..K (default: auto)\n"
               "  --mqtt 3.1.1|5     protocol version of every connection (default 3.1.1)\n"
               "  --transport T      tcp (default), tls, ws or wss (WebSocket on /mqtt)\n"
               "  --keepalive S      keep alive seconds (default 60; conns: 300)\n"
               "  --threads N        generator threads (default 2)\n"
               "  --batch B          PUBLISH packets per write (default 512)\n"
               "  --drain S          max seconds to wait for in-flight messages (default 5)\n"
               "  --quiet S          the drain ends earlier when nothing arrived for S\n"
               "                     seconds (default 1)\n"
               "  --deadline S       abort after S seconds (default duration + 15; conns 60)\n");
}

static int parse_int(const char *name, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "starling-bench: bad value '%s' for %s (expected %ld..%ld)\n", v, name, lo,
                hi);
        exit(2);
    }
    return (int)x;
}

static double parse_double(const char *name, const char *v, double lo, double hi)
{
    char *end;
    double x = strtod(v, &end);
    if (*end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "starling-bench: bad value '%s' for %s (expected %g..%g)\n", v, name, lo,
                hi);
        exit(2);
    }
    return x;
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    int sc = -1;
    for (int i = 0; i < N_SCENARIOS; i++)
        if (!strcmp(argv[1], scenario_names[i]))
            sc = i;
    if (sc < 0) {
        fprintf(stderr, "starling-bench: unknown scenario '%s'\n", argv[1]);
        usage(stderr);
        exit(2);
    }
    G.sc = (enum scenario)sc;
    G.host = "127.0.0.1";
    G.port = 1883;
    G.label = "broker";
    G.publishers = 8;
    G.subscribers = 100;
    G.size = 64;
    G.window = 64;
    G.lead = -1;
    G.rate = -1;
    G.sub_rate = -1;
    G.rss_start = G.rss_peak = G.rss_end = G.rss_drained = -1;
    G.conns = 10000;
    G.concurrency = 500;
    G.src_addrs = 0;
    G.keepalive = -1;
    G.ver = MQTT_V311;
    G.n_threads = 2;
    G.batch = 512;
    G.duration = 5;
    G.drain_s = 5;
    G.quiet_s = 1;
    G.deadline_s = -1;
    G.warmup_s = 0.5;
    const char *hosts = NULL;
    int conns = -1, concurrency = -1;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(o, "--persistent")) {
            G.persistent = true;
            continue;
        }
        if (!strcmp(o, "--subscribe")) {
            G.conn_sub = true;
            continue;
        }
        if (!strcmp(o, "--sub-burst")) {
            G.conn_sub = true;
            G.sub_burst = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "starling-bench: %s needs a value\n", o);
            exit(2);
        }
        const char *v = argv[++i];
        if (!strcmp(o, "--host"))
            G.host = v;
        else if (!strcmp(o, "--sub-host"))
            G.sub_host = v;
        else if (!strcmp(o, "--sub-port"))
            G.sub_port = parse_int(o, v, 1, 65535);
        else if (!strcmp(o, "--hosts"))
            hosts = v;
        else if (!strcmp(o, "--port"))
            G.port = parse_int(o, v, 1, 65535);
        else if (!strcmp(o, "--pid"))
            G.pid = parse_int(o, v, 1, INT_MAX);
        else if (!strcmp(o, "--label"))
            G.label = v;
        else if (!strcmp(o, "--duration"))
            G.duration = parse_double(o, v, 0.1, 3600);
        else if (!strcmp(o, "--publishers"))
            G.publishers = parse_int(o, v, 1, 10000);
        else if (!strcmp(o, "--subscribers"))
            G.subscribers = parse_int(o, v, 1, 10000);
        else if (!strcmp(o, "--size"))
            G.size = parse_int(o, v, TAG_SIZE, 1 << 20);
        else if (!strcmp(o, "--qos"))
            G.qos = parse_int(o, v, 0, 1);
        else if (!strcmp(o, "--window"))
            G.window = parse_int(o, v, 1, 60000);
        else if (!strcmp(o, "--lead"))
            G.lead = parse_int(o, v, 0, 100000000);
        else if (!strcmp(o, "--rate"))
            G.rate = parse_int(o, v, 0, 10000000);
        else if (!strcmp(o, "--sub-rate"))
            G.sub_rate = parse_int(o, v, 1, 10000000);
        else if (!strcmp(o, "--conns"))
            conns = parse_int(o, v, 1, 19000);
        else if (!strcmp(o, "--concurrency"))
            concurrency = parse_int(o, v, 1, 19000);
        else if (!strcmp(o, "--src-addrs"))
            G.src_addrs = parse_int(o, v, 1, 254);
        else if (!strcmp(o, "--mqtt")) {
            if (!strcmp(v, "3.1.1"))
                G.ver = MQTT_V311;
            else if (!strcmp(v, "5"))
                G.ver = MQTT_V5;
            else {
                fprintf(stderr, "starling-bench: --mqtt takes 3.1.1 or 5\n");
                exit(2);
            }
        } else if (!strcmp(o, "--transport")) {
            if (!strcmp(v, "tcp"))
                G.transport = BX_TCP;
            else if (!strcmp(v, "tls"))
                G.transport = BX_TLS;
            else if (!strcmp(v, "ws"))
                G.transport = BX_WS;
            else if (!strcmp(v, "wss"))
                G.transport = BX_WSS;
            else {
                fprintf(stderr, "starling-bench: --transport takes tcp, tls, ws or wss\n");
                exit(2);
            }
        } else if (!strcmp(o, "--keepalive"))
            G.keepalive = parse_int(o, v, 0, 65535);
        else if (!strcmp(o, "--threads"))
            G.n_threads = parse_int(o, v, 1, MAX_THREADS);
        else if (!strcmp(o, "--batch"))
            G.batch = parse_int(o, v, 1, 1000000);
        else if (!strcmp(o, "--drain"))
            G.drain_s = parse_double(o, v, 0, 600);
        else if (!strcmp(o, "--quiet"))
            G.quiet_s = parse_double(o, v, 0.01, 600);
        else if (!strcmp(o, "--deadline"))
            G.deadline_s = parse_double(o, v, 1, 7200);
        else {
            fprintf(stderr, "starling-bench: unknown option '%s'\n", o);
            usage(stderr);
            exit(2);
        }
    }
    if (G.sc == SC_LATENCY && G.qos != 0) {
        fprintf(stderr, "starling-bench: latency runs at QoS 0\n");
        exit(2);
    }
    if (G.sc == SC_CEILING && G.qos != 0) {
        fprintf(stderr, "starling-bench: ceiling runs at QoS 0 (the sink sends no PUBACK)\n");
        exit(2);
    }
    G.conns = conns > 0 ? conns : G.sc == SC_TAKEOVER ? 200 : 10000;
    G.concurrency = concurrency > 0 ? concurrency : G.sc == SC_TAKEOVER ? 4 : 500;
    if (G.sc == SC_TAKEOVER && G.conns > 9000) {
        fprintf(stderr, "starling-bench: takeover takes at most 9000 --conns\n");
        exit(2);
    }
    if (hosts && G.sc != SC_CONNS) {
        fprintf(stderr, "starling-bench: --hosts applies to conns\n");
        exit(2);
    }
    if ((G.sub_host || G.sub_port) && (G.sc == SC_CONNS || G.sc == SC_CEILING)) {
        fprintf(stderr, "starling-bench: --sub-host/--sub-port do not apply to %s\n",
                scenario_names[G.sc]);
        exit(2);
    }
    if (hosts) {
        char tmp[64];
        const char *p = hosts;
        while (*p) {
            size_t k = strcspn(p, ",");
            if (k == 0 || k >= sizeof(tmp) || G.n_hosts == MAX_HOSTS) {
                fprintf(stderr,
                        "starling-bench: --hosts takes 1..%d IPv4 addresses, "
                        "comma-separated\n",
                        MAX_HOSTS);
                exit(2);
            }
            memcpy(tmp, p, k);
            tmp[k] = 0;
            if (strncmp(tmp, "127.", 4) != 0 && G.src_addrs > 1) {
                fprintf(stderr, "starling-bench: --src-addrs needs 127.x.x.x hosts\n");
                exit(2);
            }
            if (uv_ip4_addr(tmp, G.port, &G.hosts[G.n_hosts++])) {
                fprintf(stderr, "starling-bench: --hosts: '%s' is not an IPv4 address literal\n",
                        tmp);
                exit(2);
            }
            p += k;
            if (*p == ',')
                p++;
        }
    }
    if (G.conn_sub && G.sc != SC_CONNS) {
        fprintf(stderr, "starling-bench: --subscribe applies to conns\n");
        exit(2);
    }
    if (G.persistent && (G.sc == SC_CONNS || G.sc == SC_CEILING || G.sc == SC_TAKEOVER)) {
        fprintf(stderr, "starling-bench: --persistent applies to fanin, fanout and latency\n");
        exit(2);
    }
    if (G.rate >= 0 && G.sc != SC_LATENCY && G.sc != SC_SLOWSUB) {
        fprintf(stderr, "starling-bench: --rate applies to latency and slowsub\n");
        exit(2);
    }
    if (G.sc == SC_LATENCY && G.rate == 0) {
        fprintf(stderr, "starling-bench: latency needs --rate >= 1\n");
        exit(2);
    }
    if (G.sub_rate >= 0 && G.sc != SC_SLOWSUB) {
        fprintf(stderr, "starling-bench: --sub-rate applies to slowsub\n");
        exit(2);
    }
    if (G.rate < 0)
        G.rate = G.sc == SC_LATENCY ? 10000 : 0;
    if (G.sub_rate < 0)
        G.sub_rate = 2000;
    if (G.persistent && G.sc == SC_SLOWSUB) {
        fprintf(stderr, "starling-bench: --persistent applies to fanin, fanout and latency\n");
        exit(2);
    }
    if (G.lead < 0)
        G.lead = G.sc == SC_FANOUT ? 1000 : 0;
    if (G.sc != SC_FANOUT)
        G.lead = 0;
    if (G.keepalive < 0)
        G.keepalive = G.sc == SC_CONNS || G.sc == SC_TAKEOVER ? 300 : 60;
    if (G.deadline_s < 0)
        G.deadline_s = G.sc == SC_CONNS || G.sc == SC_TAKEOVER ? 60 : G.duration + 15;
    if (G.sc == SC_LATENCY && G.duration <= G.warmup_s)
        G.warmup_s = 0;
    bool loopback = strncmp(G.host, "127.", 4) == 0;
    if (G.src_addrs == 0)
        G.src_addrs = (G.sc == SC_CONNS && loopback) ? (G.conns + 7999) / 8000 : 1;
    if (G.src_addrs > 1 && !loopback) {
        fprintf(stderr, "starling-bench: --src-addrs needs a 127.x.x.x host\n");
        exit(2);
    }
    if (uv_ip4_addr(G.host, G.port, &G.addr)) {
        fprintf(stderr, "starling-bench: --host must be an IPv4 address literal\n");
        exit(2);
    }
    if (uv_ip4_addr(G.sub_host ? G.sub_host : G.host, G.sub_port ? G.sub_port : G.port,
                    &G.sub_addr)) {
        fprintf(stderr, "starling-bench: --sub-host must be an IPv4 address literal\n");
        exit(2);
    }
}

static void on_watchdog(int sig)
{
    (void)sig;
    static const char msg[] = "starling-bench: watchdog expired, aborting\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    if (bench_xport_init(G.transport) < 0) {
        fprintf(stderr, "starling-bench: TLS client set-up failed\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_watchdog);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int nfd = G.sc == SC_TAKEOVER ? 2 * G.conns : G.conns;
    if ((G.sc == SC_CONNS || G.sc == SC_TAKEOVER) && getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
        rl.rlim_cur < (rlim_t)nfd + 64) {
        fprintf(stderr, "starling-bench: %d connections need more file descriptors (limit %lu)\n",
                G.conns, (unsigned long)rl.rlim_cur);
        return 2;
    }
    G.deadline_ns = now_ns() + (uint64_t)(G.deadline_s * 1e9);
    alarm((unsigned)G.deadline_s + 10);
    for (int i = 0; i < G.n_threads; i++)
        wkr_init(&G.w[i], i);
    G.n_wkr = G.n_threads;
    int rc = G.sc == SC_CONNS ? run_conns() : G.sc == SC_TAKEOVER ? run_takeover() : run_messages();
    return rc;
}
