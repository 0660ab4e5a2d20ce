/*
 * admin_query.h - the queries each node answers for its own part of an
 * admin API request (clients, subscriptions, routes, a client's details, a
 * kick, retained messages): see admin_query.c for the queries.
 * Threads: any thread but a worker's (it waits for the workers).
 */
#ifndef STARLING_ADMIN_QUERY_H
#define STARLING_ADMIN_QUERY_H

#include <stddef.h>

#include <jansson.h>

#include "admin_local.h"

/* Answer query q on this node: a new JSON object, or NULL with err. */
json_t *admin_query_run(struct admin_local *l, json_t *q, char *err, size_t errlen);

#endif
