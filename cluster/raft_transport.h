/*
 * raft_transport.h - the TCP transport of the Raft group (a struct
 * raft_uv_transport for libraft 0.15's raft_uv).
 *
 * Why not raft_uv_tcp: 0.15's TCP transport binds only its listening socket
 * (raft_uv_tcp_set_bind_address); outgoing connections leave from whatever
 * source address the kernel picks (127.0.0.1 for a peer on 127.0.0.12), so
 * firewall rules between two nodes' addresses cannot cut them, and its
 * handshake carries no cluster identity, so nothing stops two clusters (or a
 * stray process) from talking. This transport:
 *   - listens on the node's own address and binds every outgoing socket to
 *     the same IP (port 0) before connecting;
 *   - takes Raft addresses as "a.b.c.d:port" or "host.name:port": a name is
 *     resolved (A records) at every connection attempt, so that a node whose
 *     IP changes (a restarted Kubernetes pod) keeps its Raft address and id;
 *   - opens each connection with a handshake:
 *       "STRF" u32be version, u64be server id, u16be address length,
 *       u16be cluster name length, 32 bytes proof, address, cluster name
 *     where proof = HMAC-SHA256(cluster_secret, "starling-raft" || u64be id ||
 *     address || cluster name) (an empty secret still yields a proof; it
 *     only checks the name then);
 *   - refuses a peer whose version, cluster name or proof differ, or whose
 *     source IP is not the IP of the address it claims (for a name: not one
 *     of the name's addresses when it connects).
 * The proof is not bound to a nonce (a captured handshake can be replayed);
 * the Raft port belongs on the cluster network only (docs/cluster.md).
 *
 * Threads: all on the raft loop's thread, like everything of libraft.
 */
#ifndef STARLING_RAFT_TRANSPORT_H
#define STARLING_RAFT_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>
#include <stdint.h>

#define RAFT_TRANSPORT_VERSION 1
/* Longest Raft address, "host:port" with a DNS name of up to 253 bytes. */
#define RAFT_TRANSPORT_ADDR_MAX 264

/* Set up t (zeroed by the caller's storage or not) to run on loop. name and
 * secret are copied. bind_ip is the IPv4 address to listen on and to send
 * from; NULL or "" means the host of the node's Raft address, which must
 * then be an IPv4 literal. Returns 0 or RAFT_NOMEM. */
int raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, const char *cluster_name,
                        const char *cluster_secret, const char *bind_ip);
/* Free t's memory after libraft closed it (raft_uv_close). */
void raft_transport_close(struct raft_uv_transport *t);

/* Counters: handshakes refused (bad name/proof/version/source address). */
uint64_t raft_transport_refused(struct raft_uv_transport *t);

#endif
