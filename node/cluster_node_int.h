/*
 * cluster_node_int.h - what cluster_node.c and cluster_registry.c share:
 * the glue's state. Not for other modules (they use cluster_node.h).
 */
#ifndef STARLING_CLUSTER_NODE_INT_H
#define STARLING_CLUSTER_NODE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "admin.h"
#include "channel.pb-c.h"
#include "cluster.h"
#include "cluster_node.h"
#include "registry.h"

struct cl_claim;
struct surrendered;
struct cmd_batch;
struct cluster_fwd;

#define MAX_SEEDS 64
#define MAX_PEERS 64
#define REPORT_EVERY_MS 200
#define RETRY_MS 100
#define CN_HEARTBEAT_MS 15 /* Raft heartbeat (cluster_node.c) */

struct waiter {
    struct waiter *next;
    uint64_t ticket; /* route changes up to this one */
    uint64_t index;  /* Raft index that holds them, 0 until committed */
    void (*done)(void *arg);
    void *arg;
};

struct peer {
    uint64_t node;
    uint64_t applied;
    uint64_t seen_ms; /* 0 = never heard from */
    char name[ADMIN_NAME_MAX];
    char address[ADMIN_NAME_MAX];
    bool left;
};

struct cluster_node {
    struct broker *b;
    struct cluster *c;
    struct raft_node *raft;
    struct fsm *fsm;
    uint64_t self;
    atomic_bool stopped;
    char node_name[128];

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit;                 /* mu */
    struct cmd_batch *pending; /* mu: route commands not proposed yet */
    bool purge_first;          /* mu: the first batch starts with NodePurge(self) */
    bool loaded;               /* mu: the store's sessions are loaded (attach_store) */
    uint64_t queued;           /* mu: last ticket taken */
    uint64_t committed;        /* mu: last ticket committed */
    uint64_t everywhere;       /* mu: last ticket applied on every live member */
    struct waiter *waiters;    /* mu */
    /* the batch in flight (mu) */
    void *inflight;
    size_t inflight_len;
    uint64_t inflight_ticket;
    bool inflight_busy;
    uint64_t retry_at_ms;

    struct peer peers[MAX_PEERS]; /* mu: the other members */
    unsigned n_peers;

    atomic_uint_fast64_t pub_seq; /* per-origin sequence of retained messages */
    struct cluster_fwd *fwd;      /* forwards: outbox, resend, acks */
    atomic_uint_fast64_t pick;    /* shared group picks */

    /* the registry (cluster_registry.c) */
    pthread_mutex_t reg_mu;
    struct cl_claim *claims;         /* reg_mu: retrying, or awaiting state */
    struct surrendered *surrendered; /* reg_mu: sessions given up, kept for their claimant */

    struct admin_local *admin;
    struct admin_provider local; /* the per-node provider (stats, publish) */
};

static inline uint64_t cn_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* cluster_registry.c */
extern const struct registry_ops cluster_registry_ops;
/* Retries and deadlines (the glue's thread, no lock held). */
void cn_registry_poll(struct cluster_node *cn, uint64_t now);
/* After the cluster stopped. */
void cn_registry_drain(struct cluster_node *cn);
/* Cluster thread: the observer saw a claim of another node applied. */
void cn_registry_claimed_elsewhere(struct cluster_node *cn, const char *id, uint16_t len);
void cn_registry_on_request(struct cluster_node *cn, uint64_t from,
                            const Starling__Chan__SessionRequest *r);
void cn_registry_on_state(struct cluster_node *cn, const Starling__Chan__SessionState *st);

#endif
