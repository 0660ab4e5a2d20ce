/*
 * metric.c - histogram buckets (see metric.h).
 */
#include "metric.h"

/* 25 us .. 10 s: a delivery inside one loop turn, a commit without fsync,
 * an fsync on a fast disk and one on a slow or saturated disk all fall in
 * different buckets. */
const uint64_t metric_hist_bounds_ns[METRIC_HIST_N] = {
    25000u,     50000u,     100000u,     250000u,     500000u,     1000000u,
    2500000u,   5000000u,   10000000u,   25000000u,   50000000u,   100000000u,
    250000000u, 500000000u, 1000000000u, 2500000000u, 5000000000u, 10000000000u,
};

unsigned metric_hist_bucket(uint64_t ns)
{
    unsigned lo = 0, hi = METRIC_HIST_N;
    while (lo < hi) { /* the first bound >= ns */
        unsigned mid = (lo + hi) / 2;
        if (metric_hist_bounds_ns[mid] < ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void metric_hist_add_to(const struct metric_hist *h, struct metric_hist_snap *acc)
{
    for (unsigned i = 0; i <= METRIC_HIST_N; i++)
        acc->n[i] += metric_read(&h->n[i]);
    acc->sum_ns += metric_read(&h->sum_ns);
}

void metric_snap_add_to(const struct metric_hist_snap *s, struct metric_hist_snap *acc)
{
    for (unsigned i = 0; i <= METRIC_HIST_N; i++)
        acc->n[i] += s->n[i];
    acc->sum_ns += s->sum_ns;
}

uint64_t metric_snap_count(const struct metric_hist_snap *s)
{
    uint64_t n = 0;
    for (unsigned i = 0; i <= METRIC_HIST_N; i++)
        n += s->n[i];
    return n;
}
