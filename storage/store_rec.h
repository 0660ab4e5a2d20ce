/*
 * store_rec.h - keys and record encodings of the store (internal to storage/).
 *
 * Keys are big-endian so that LMDB's byte order is numeric order; values are
 * little-endian. Every value starts with a record version byte (REC_VERSION).
 *
 *   idkey(id)      = u16 BE id_len, then the id bytes when id_len <=
 *                    REC_INLINE_MAX, else SHA-256(id) (32 bytes). The length
 *                    prefix tells which; idkeys are never prefixes of one
 *                    another, so idkey(id) is a safe range-scan prefix.
 *   sessions key   = idkey(client id)
 *   msgs key       = idkey(client id) + u64 BE seq
 *   qos2 key       = idkey(client id) + u16 BE pid
 *   retained key   = idkey(topic)
 *
 * When a client id is hashed in the key, the value holds the full id right
 * after the version byte (id_len bytes, the length comes from the key), and
 * the loader checks that it hashes to the key. Retained values always hold
 * the full topic (inside the message).
 */
#ifndef STARLING_STORE_REC_H
#define STARLING_STORE_REC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "store.h"

#define REC_VERSION 1
/* Session records are version 2 since they hold the user name (version 1,
 * without it, is still read: the session is then anonymous). A binary that
 * knows only version 1 refuses them (-EPROTO) rather than misread them. */
#define REC_SESSION_VERSION 5
/* Version 3 adds the message identities the session got (n_seen, seen);
 * versions 1 and 2 are read with none. Version 4 adds the epoch of the
 * session's cluster claim (epoch); older versions are read with 0.
 * Version 5 adds the session's wait for an old owner's QoS 2 ids
 * (wait_until_ms, ...); older versions are read with none. */
/* Message records are version 2 since they hold the message's cluster
 * identity (origin node, publish number); version 1 is read without it.
 * Version 3 adds the route table index of the message (route_index);
 * older versions are read with 0 (unknown). Version 4 adds the other nodes
 * its origin forwarded it to (also_to); older versions are read with none
 * listed (an old copy's owners rule then keeps the message). */
#define REC_MSG_VERSION 4
/* Rows of ended copies' QoS 2 ids ("handed") are version 2 since they hold
 * the copy's own wait for another node's ids (wait_node, ...); version 1
 * is read without one. */
#define REC_HANDED_VERSION 2
/* Longest id or topic kept verbatim in a key. LMDB's default maximum key
 * size is 511 bytes; 2 + 400 + 8 leaves room. */
#define REC_INLINE_MAX 400
#define REC_HASH_LEN 32
#define REC_IDKEY_MAX (2 + REC_INLINE_MAX)
#define REC_KEY_MAX (REC_IDKEY_MAX + 8)

/* A record being encoded: a struct buf (buf.h) with a sticky error, so that
 * an encoder checks once at the end: a failed allocation sets oom and drops
 * every later write. */
struct rbuf {
    struct buf b;
    bool oom;
};

void rbuf_free(struct rbuf *b);
void rbuf_put(struct rbuf *b, const void *d, size_t n);
void rbuf_u8(struct rbuf *b, uint8_t v);
void rbuf_le16(struct rbuf *b, uint16_t v);
void rbuf_le32(struct rbuf *b, uint32_t v);
void rbuf_le64(struct rbuf *b, uint64_t v);
void rbuf_be16(struct rbuf *b, uint16_t v);
void rbuf_be64(struct rbuf *b, uint64_t v);

static inline bool rec_hashed(uint16_t len)
{
    return len > REC_INLINE_MAX;
}

/* Append idkey(id) to b. */
void rec_put_idkey(struct rbuf *b, const void *id, uint16_t len);
/* Append a value header: version (REC_VERSION, or REC_SESSION_VERSION for
 * a session), then the id when it is hashed. */
void rec_put_header(struct rbuf *b, uint8_t version, const void *id, uint16_t len);
/* Append the body of a session / message value. */
void rec_put_session(struct rbuf *b, const struct store_session *rec);
void rec_put_msg(struct rbuf *b, const struct store_msg *rec);
/* Append an encoded struct msg (also the whole body of a retained value). */
void rec_put_message(struct rbuf *b, const struct msg *m);

/* A read cursor over a stored value or key. Reads past the end set bad. */
struct rdec {
    const uint8_t *p;
    size_t n;
    bool bad;
};

uint8_t rdec_u8(struct rdec *d);
uint16_t rdec_le16(struct rdec *d);
uint32_t rdec_le32(struct rdec *d);
uint64_t rdec_le64(struct rdec *d);
uint16_t rdec_be16(struct rdec *d);
uint64_t rdec_be64(struct rdec *d);
const uint8_t *rdec_bytes(struct rdec *d, size_t n);

/*
 * Parse the idkey at the start of key (advancing it) and the header of the
 * value (advancing it): checks the version byte (1 to max_version, stored
 * in *version) and, for a hashed id, that the full id in the value hashes
 * to the key. Sets *id / *len to the full id. Returns 0, -EIO (corrupt) or
 * -EPROTO (unknown record version).
 */
int rec_get_id(struct rdec *key, struct rdec *val, uint8_t max_version, uint8_t *version,
               const char **id, uint16_t *len);

/* Decode the body of a session value of record version `version`; *subs,
 * *seen and *wait_ids are malloc'ed (free them), filters and the user name
 * point into the value. Returns 0, -EIO or -ENOMEM. */
int rec_get_session(struct rdec *val, uint8_t version, struct store_session *rec,
                    struct store_sub **subs, struct store_seen **seen, uint16_t **wait_ids);
/* Decode the body of a message value of record version `version`; *ids is
 * malloc'ed (free it), rec->m is a new struct msg (unref it). Returns 0,
 * -EIO or -ENOMEM. */
int rec_get_msg(struct rdec *val, uint8_t version, struct store_msg *rec, uint32_t **ids);
/* Decode an encoded struct msg into a new one. Returns 0, -EIO or -ENOMEM. */
int rec_get_message(struct rdec *val, struct msg **out);

#endif
