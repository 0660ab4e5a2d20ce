/*
 * cmd.h - building the command batches that the cluster proposes.
 *
 * A struct cmd_batch collects commands (proto/raft_cmd.proto) and encodes
 * them as one starling.cmd.CommandBatch: the payload of one Raft entry,
 * applied by cluster/fsm.h. Each add function encodes its command at once
 * (it copies its arguments), so a batch is one growing buffer.
 *
 * Threads: a batch belongs to one thread at a time; no global state.
 * Errors: 0, -EINVAL (empty or too long key, node 0), -ENOMEM.
 */
#ifndef STARLING_CMD_H
#define STARLING_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cmd_batch;

/* The role of a member (starling.cmd.NodeRole). */
enum cmd_role { CMD_ROLE_VOTER = 0, CMD_ROLE_STANDBY = 1, CMD_ROLE_SPARE = 2 };

struct cmd_batch *cmd_batch_new(void);
void cmd_batch_free(struct cmd_batch *b);
/* Number of commands added. */
size_t cmd_batch_count(const struct cmd_batch *b);
/*
 * The Raft entry of the batch: a pointer into b (valid until b changes or is
 * freed) and its length, or NULL when out of memory. An entry is
 *   "ST" 0x01 0x00, u32le n, n bytes of encoded CommandBatch, zero padding
 * to a multiple of 8 bytes: raft_uv 0.15 sends and stores entry buffers
 * as 8-byte words (an entry of another length corrupts the stream of
 * AppendEntries that carries it), and protobuf cannot be padded with zeros.
 */
#define CMD_ENTRY_HEADER 8
const void *cmd_batch_data(struct cmd_batch *b, size_t *len);
/* The encoded CommandBatch alone (for the channel's Propose frame). */
const void *cmd_batch_pb(const struct cmd_batch *b, size_t *len);
/* The CommandBatch inside an entry: 0, or -EINVAL for a malformed entry. */
int cmd_entry_unwrap(const void *entry, size_t len, const void **pb, size_t *pb_len);
/* An entry (malloc'ed, caller frees) around an encoded CommandBatch, e.g.
 * one received in a Propose frame. */
int cmd_entry_wrap(const void *pb, size_t pb_len, void **entry, size_t *len);
/* Append every command of src to dst. 0 or -ENOMEM. */
int cmd_batch_append(struct cmd_batch *dst, const struct cmd_batch *src);
/* Forget the commands, keep the buffer. */
void cmd_batch_reset(struct cmd_batch *b);

int cmd_route_add(struct cmd_batch *b, const char *filter, size_t len, uint64_t node);
int cmd_route_remove(struct cmd_batch *b, const char *filter, size_t len, uint64_t node);
int cmd_session_claim(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                      uint64_t epoch);
/* The same, saying whether the claimant starts a new session, and whether
 * it stores the session before answering its client (SessionClaim.stored). */
int cmd_session_claim_clean(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                            uint64_t epoch, int clean_start, int stored);
int cmd_session_release(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                        uint64_t epoch, int expired);
/* props: encoded MQTT 5.0 properties (may be NULL/0); expiry_at_ms 0 = none. */
int cmd_retained_set(struct cmd_batch *b, const char *topic, size_t len, unsigned qos,
                     const void *payload, size_t payload_len, const void *props, size_t props_len,
                     uint64_t expiry_at_ms, uint64_t origin, uint64_t seq);
int cmd_retained_clear(struct cmd_batch *b, const char *topic, size_t len, uint64_t origin,
                       uint64_t seq);
/* raft_address: the node's Raft address when it is not "address:raft_port"
 * (a host name, cluster_advertise), else NULL. */
int cmd_member(struct cmd_batch *b, uint64_t node, const char *name, const char *address,
               unsigned cluster_port, unsigned raft_port, const char *raft_address,
               enum cmd_role role, int left);
int cmd_member_remove(struct cmd_batch *b, uint64_t node);
int cmd_node_purge(struct cmd_batch *b, uint64_t node);
/* The operator's tables (AdminPut / AdminDelete). */
int cmd_admin_put(struct cmd_batch *b, unsigned table, const char *key, size_t klen,
                  const char *val, size_t vlen);
int cmd_admin_delete(struct cmd_batch *b, unsigned table, const char *key, size_t klen);

/* A subscription of a session record (the filter is copied by the add). */
struct cmd_session_sub {
    const char *filter;
    size_t len;
    uint8_t options;
    uint32_t sub_id;
};
/* SessionRecord: the subscriptions, expiry and user of a persistent session
 * owned by (node, epoch); expiry 0 deletes the record. username may be
 * NULL (anonymous). next_pid: the owner's next packet id (1..65535), 0
 * when not known (not written). routed_from: the index from which the
 * owner's session takes forwards (session.h), 0 when not known (not
 * written; RecordOwner.routed_from). local_from: the first publish number
 * of the owner's own publishes that its session got locally (session.h),
 * 0 when not known (RecordOwner.local_from). */
int cmd_session_record(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                       uint64_t epoch, uint32_t expiry, unsigned version, const char *username,
                       const struct cmd_session_sub *subs, size_t n_subs, uint16_t next_pid,
                       uint64_t routed_from, uint64_t local_from);
/* The forwards that reached the owner's node before its session joined
 * the index there (RecordOwner.pubs_seen): per origin, the highest
 * publish number. */
struct cmd_pub_seen {
    uint64_t origin, pub_id;
};
/* cmd_session_record with the owner's pubs_seen (n_seen entries; with
 * seen_known false, none is written: not known), and whether its session
 * began clean at this claim (SessionRecord.began_clean). */
int cmd_session_record_seen(struct cmd_batch *b, const char *client_id, size_t len, uint64_t node,
                            uint64_t epoch, uint32_t expiry, unsigned version, const char *username,
                            const struct cmd_session_sub *subs, size_t n_subs, uint16_t next_pid,
                            uint64_t routed_from, uint64_t local_from,
                            const struct cmd_pub_seen *seen, size_t n_seen, bool seen_known,
                            bool began_clean);
/* Where a session resumed from its record (an unpacked SessionRecord)
 * starts its packet ids: the middle of the largest gap, on the circle of
 * ids 1..65535, between the next packet ids of the owners the record names
 * (RecordOwner.next_packet_id, and the record's own). The client may hold
 * an unfinished QoS 2 exchange of each of those owners, whose ids are just
 * below its next id, and the owners went on numbering up from it. 0 when
 * the record tells none. */
struct Starling__Cmd__SessionRecord;
uint16_t cmd_record_resume_pid(const struct Starling__Cmd__SessionRecord *rec);
/* NodeDown: the routes of a node that stopped reporting go, except those
 * its persistent sessions need, each counted (NodeDown.keepers): a record
 * that stops naming the node takes its routes with it. */
int cmd_node_down(struct cmd_batch *b, uint64_t node);

/*
 * For the log (docs/cluster.md, "Route changes in the log"): a bounded
 * description of the route commands of a batch, per node the RouteAdds and
 * RouteRemoves (counts and the first CMD_DESCRIBE_FILTERS filters of
 * each), then each NodePurge and NodeDown. `changed`, when not NULL, holds
 * per command whether it changed the table (the state machine's result):
 * the others are only counted, as no-ops. Writes at most outlen bytes
 * (always terminated) and returns a mask of CMD_ROUTES_ADD (a route added,
 * or only no-ops) and CMD_ROUTES_GONE (a route removed, a NodePurge or a
 * NodeDown that changed the table); 0 when the batch has no route command
 * (out is then "").
 */
#define CMD_DESCRIBE_FILTERS 3
#define CMD_ROUTES_ADD 1
#define CMD_ROUTES_GONE 2
struct Starling__Cmd__CommandBatch;
int cmd_routes_describe(const struct Starling__Cmd__CommandBatch *b, const unsigned char *changed,
                        char *out, size_t outlen);
/* The same for an entry (cmd_batch_data's layout): -EINVAL when it does
 * not decode. */
int cmd_entry_routes_describe(const void *entry, size_t len, char *out, size_t outlen);
#endif
