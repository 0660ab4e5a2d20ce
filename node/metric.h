/*
 * metric.h - cheap counters and latency histograms for GET /metrics.
 *
 * The data plane counts into memory that one thread writes (a worker's own
 * struct worker_metrics, the store's writer thread) and that the admin
 * thread sums when it is scraped: a counter of a single writer is a relaxed
 * load and store (no locked instruction, no shared cache line between
 * workers); a counter that several threads write uses a relaxed
 * fetch-and-add. Nothing here takes a lock.
 *
 * A histogram has the fixed buckets of metric_hist_bounds_ns (25 us to
 * 10 s, then +Inf), counted per bucket (not cumulative: the exposition sums
 * them) with the sum of the observations in nanoseconds.
 */
#ifndef STARLING_METRIC_H
#define STARLING_METRIC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

typedef _Atomic uint64_t metric_counter;

/* Add v to a counter that only the calling thread writes. */
static inline void metric_add(metric_counter *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* Add v to a counter that several threads write. */
static inline void metric_add_shared(metric_counter *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t metric_read(const metric_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Monotonic nanoseconds (never 0). */
static inline uint64_t metric_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1u;
}

#define METRIC_HIST_N 18 /* finite buckets; one more for +Inf */
/* Upper bounds (inclusive) of the finite buckets, ascending. */
extern const uint64_t metric_hist_bounds_ns[METRIC_HIST_N];

/* The bucket of an observation of ns nanoseconds (METRIC_HIST_N: +Inf). */
unsigned metric_hist_bucket(uint64_t ns);

/* A histogram that one thread writes and others read. */
struct metric_hist {
    metric_counter n[METRIC_HIST_N + 1];
    metric_counter sum_ns;
};

/* A copy of histograms, added up: plain numbers. */
struct metric_hist_snap {
    uint64_t n[METRIC_HIST_N + 1];
    uint64_t sum_ns;
};

/* Observe ns on h; only h's writer thread. */
static inline void metric_hist_observe(struct metric_hist *h, uint64_t ns)
{
    metric_add(&h->n[metric_hist_bucket(ns)], 1);
    metric_add(&h->sum_ns, ns);
}

/* Observe ns on a plain copy (its owner's lock held, if any). */
static inline void metric_snap_observe(struct metric_hist_snap *s, uint64_t ns)
{
    s->n[metric_hist_bucket(ns)]++;
    s->sum_ns += ns;
}

/* Add h's counts into *acc. Any thread. */
void metric_hist_add_to(const struct metric_hist *h, struct metric_hist_snap *acc);
/* Add s's counts into *acc. */
void metric_snap_add_to(const struct metric_hist_snap *s, struct metric_hist_snap *acc);
/* The number of observations of s. */
uint64_t metric_snap_count(const struct metric_hist_snap *s);

#endif
