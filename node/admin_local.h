/*
 * admin_local.h - the admin API's provider for a single node: answers from
 * this node's broker (read-only counters, its session table under its lock)
 * and publishes through broker_publish. The cluster will install its own
 * provider, which answers for every node.
 *
 * Threads: admin_local_init and admin_local_detach on the main thread
 * around broker_run; the provider's functions on the admin server's thread.
 */
#ifndef STARLING_ADMIN_LOCAL_H
#define STARLING_ADMIN_LOCAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include <uv.h>

#include "admin.h"

struct broker;

struct admin_local {
    struct broker *b;
    char name[ADMIN_NAME_MAX];
    char address[ADMIN_NAME_MAX];
    /* Set once the broker's main loop runs with every worker listening. */
    atomic_bool serving;
    uv_prepare_t probe; /* on the broker's main loop: sets `serving` */
    bool probe_open;
};

/* Fill *p with the provider for broker b (after broker_init, before
 * broker_run) and watch b's main loop to learn when it serves clients. */
void admin_local_init(struct admin_local *l, struct broker *b, struct admin_provider *p);
/* Remove the retained message of topic on this node, without a delivery:
 * 0, -ENOENT (none), -EINVAL (not a topic name) with err. */
int admin_local_retained_clear(struct admin_local *l, const char *topic, char *err, size_t errlen);

/* The API key table (tables.h, TABLES_APIKEYS): 0 when secret is key's,
 * -ENOENT for an unknown key, -EACCES for a wrong secret. */
int admin_local_key_verify(struct admin_local *l, const char *key, const char *secret);

/* After broker_run returned: release what admin_local_init set up. */
void admin_local_detach(struct admin_local *l);

#endif
