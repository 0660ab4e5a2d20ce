/* hoptrace.c - see hoptrace.h (measurement builds only). */
#include "hoptrace.h"

#ifdef STARLING_HOPTRACE
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct rec {
    uint64_t t, sent;
    uint32_t seq;
    uint32_t hop;
};

#define REC_MAX (4u << 20)
#define PEND_MAX 1024u

static struct rec *recs;
static atomic_uint n_recs;
static atomic_int state; /* 0 unknown, 1 on, -1 off */
static char path[512];

static _Thread_local uint32_t pend_seq[HOP_N][PEND_MAX];
static _Thread_local uint64_t pend_sent[HOP_N][PEND_MAX];
static _Thread_local unsigned pend_n[HOP_N];
static _Thread_local uint64_t marks[HOP_N];

uint64_t hoptrace_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void dump(void)
{
    unsigned n = atomic_load(&n_recs);
    if (n > REC_MAX)
        n = REC_MAX;
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    for (unsigned i = 0; i < n; i++)
        fprintf(f, "%u %u %llu %llu\n", recs[i].hop, recs[i].seq, (unsigned long long)recs[i].t,
                (unsigned long long)recs[i].sent);
    fclose(f);
}

static bool on(void)
{
    int s = atomic_load_explicit(&state, memory_order_relaxed);
    if (s)
        return s > 0;
    static atomic_flag once = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&once)) {
        const char *d = getenv("HOPTRACE_DIR");
        if (d && *d && (recs = calloc(REC_MAX, sizeof *recs))) {
            snprintf(path, sizeof path, "%s/hops.%d", d, (int)getpid());
            atexit(dump);
            atomic_store(&state, 1);
        } else {
            atomic_store(&state, -1);
        }
    }
    while (!(s = atomic_load(&state)))
        ;
    return s > 0;
}

static void add(int hop, uint32_t seq, uint64_t t, uint64_t sent)
{
    unsigned i = atomic_fetch_add_explicit(&n_recs, 1, memory_order_relaxed);
    if (i >= REC_MAX)
        return;
    recs[i] = (struct rec){.t = t, .sent = sent, .seq = seq, .hop = (uint32_t)hop};
}

static bool tag(const void *payload, size_t len, uint32_t *seq, uint64_t *sent)
{
    if (!payload || len < 16)
        return false;
    memcpy(seq, (const char *)payload + 4, 4);
    memcpy(sent, (const char *)payload + 8, 8);
    return true;
}

void hoptrace_payload(int hop, const void *payload, size_t len, uint64_t t)
{
    uint32_t seq;
    uint64_t sent;
    if (!on() || !tag(payload, len, &seq, &sent))
        return;
    add(hop, seq, t ? t : hoptrace_now(), sent);
}

void hoptrace_pend(int hop, const void *payload, size_t len)
{
    uint32_t seq;
    uint64_t sent;
    if (!on() || !tag(payload, len, &seq, &sent) || pend_n[hop] >= PEND_MAX)
        return;
    pend_seq[hop][pend_n[hop]] = seq;
    pend_sent[hop][pend_n[hop]++] = sent;
}

void hoptrace_stamp_as(int hop, int as)
{
    if (!pend_n[hop])
        return;
    uint64_t t = hoptrace_now();
    for (unsigned i = 0; i < pend_n[hop]; i++)
        add(as, pend_seq[hop][i], t, pend_sent[hop][i]);
    pend_n[hop] = 0;
}

void hoptrace_stamp_keep(int hop, int as)
{
    uint64_t t = hoptrace_now();
    for (unsigned i = 0; i < pend_n[hop]; i++)
        add(as, pend_seq[hop][i], t, pend_sent[hop][i]);
}

void hoptrace_stamp(int hop)
{
    hoptrace_stamp_as(hop, hop);
}

void hoptrace_drop(int hop)
{
    pend_n[hop] = 0;
}

void hoptrace_mark(int hop)
{
    marks[hop] = hoptrace_now();
}

uint64_t hoptrace_marked(int hop)
{
    return marks[hop];
}
#endif
