/*
 * server.h - running a broker on the network: the worker threads with their
 * listeners, the main thread's loop (signals, the housekeeping timer that
 * expires sessions and publishes delayed wills, the $SYS timer), and the
 * network layer's sink installed on the broker (sink.h).
 *
 * Main thread only: broker_init, (persist_open), server_run, server_cleanup,
 * broker_cleanup, in that order.
 */
#ifndef STARLING_SERVER_H
#define STARLING_SERVER_H

struct broker;

/* Install the sink, start workers and listeners, run until SIGINT/SIGTERM
 * stopped every worker. Returns 0 or a negative errno when the listeners
 * cannot be set up. */
int server_run(struct broker *b);
/* Commit what the store has pending, then free the workers (after
 * server_run returned, before broker_cleanup). */
void server_cleanup(struct broker *b);

#endif
