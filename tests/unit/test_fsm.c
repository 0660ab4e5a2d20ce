/*
 * test_fsm.c - the replicated state machine (cluster/fsm.h) over its LMDB
 * tables (storage/rtable.h), with batches built by cluster/cmd.h: apply,
 * replay after reopen, idempotent commands, session epochs, retained
 * (origin, seq), node purge, long keys, the checksum (incremental = recomputed,
 * equal across environments), snapshot/restore, malformed input, the entry
 * hook and fsm_visible, the tables of a machine that stopped while they were
 * open (the mark of another boot: they start empty), an entry's route
 * changes seen at once by a reader, and described for the log.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "test_util.h"

#include "cmd.h"
#include "fsm.h"
#include "routes.h"
#include "raft_cmd.pb-c.h"

#define S(x) (x), strlen(x)

static char *tmpdir(void)
{
    const char *t = getenv("TMPDIR");
    char *d = NULL;
    if (asprintf(&d, "%s/test_fsm.XXXXXX", t && *t ? t : "/tmp") < 0)
        d = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(d));
    return d;
}

static void rmdir_free(char *d)
{
    test_rm_tree(d);
    free(d);
}

static struct fsm *open_fsm(const char *dir)
{
    struct fsm_options o = {.dir = dir};
    struct fsm *f = NULL;
    char err[256];
    int rc = fsm_open(&f, &o, err, sizeof err);
    if (rc)
        fprintf(stderr, "fsm_open: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return f;
}

static struct fsm_batch_result res;

/* Apply batch b at index and reset b. */
static int apply(struct fsm *f, uint64_t index, struct cmd_batch *b)
{
    size_t len;
    const void *p = cmd_batch_data(b, &len);
    int rc = fsm_apply(f, index, p, len, &res);
    cmd_batch_reset(b);
    return rc;
}

static void assert_checksum_consistent(struct fsm *f)
{
    uint64_t c = 1;
    CU_ASSERT_EQUAL(fsm_checksum_verify(f, &c), 0);
    CU_ASSERT_EQUAL(c, fsm_checksum(f));
}

static void test_apply_routes_and_replay(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    CU_ASSERT_EQUAL(fsm_applied(f), 0);
    CU_ASSERT_EQUAL(fsm_checksum(f), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("a/b"), 2), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("a/+"), 1), 0); /* twice in one batch */
    CU_ASSERT_EQUAL(cmd_batch_count(b), 3);
    CU_ASSERT_EQUAL(apply(f, 5, b), 0);
    CU_ASSERT_FALSE(res.skipped);
    CU_ASSERT_EQUAL(res.index, 5);
    CU_ASSERT_EQUAL(res.n, 3);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    CU_ASSERT_EQUAL(res.results[2], FSM_NOOP);
    CU_ASSERT_EQUAL(fsm_applied(f), 5);
    CU_ASSERT_NOT_EQUAL(fsm_checksum(f), 0);
    assert_checksum_consistent(f);
    uint64_t n[4];
    CU_ASSERT_EQUAL(routes_nodes(fsm_routes(f), S("a/b"), 0, n, 4), 2);

    /* The same index again (a replay): skipped, nothing changes. */
    uint64_t sum = fsm_checksum(f);
    CU_ASSERT_EQUAL(cmd_route_remove(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 5, b), 0);
    CU_ASSERT_TRUE(res.skipped);
    CU_ASSERT_EQUAL(cmd_route_remove(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 4, b), 0);
    CU_ASSERT_TRUE(res.skipped);
    CU_ASSERT_EQUAL(fsm_checksum(f), sum);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 2);

    /* Reopen: the applied index and the routes are back. */
    fsm_close(f);
    f = open_fsm(d);
    CU_ASSERT_EQUAL(fsm_applied(f), 5);
    CU_ASSERT_EQUAL(fsm_checksum(f), sum);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 2);
    CU_ASSERT_EQUAL(routes_nodes(fsm_routes(f), S("a/x"), 0, n, 4), 1);
    CU_ASSERT_EQUAL(n[0], 1);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 5, b), 0);
    CU_ASSERT_TRUE(res.skipped);

    /* A remove, and a remove of what is not there. */
    CU_ASSERT_EQUAL(cmd_route_remove(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(cmd_route_remove(b, S("a/+"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 6, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(routes_nodes(fsm_routes(f), S("a/x"), 0, n, 4), 0);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

static void test_session_epochs(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    uint64_t node, epoch;
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c1"), &node, &epoch), -ENOENT);
    cmd_session_claim(b, S("c1"), 1, 1); /* OK */
    cmd_session_claim(b, S("c1"), 1, 1); /* same claim: no-op */
    cmd_session_claim(b, S("c1"), 2, 1); /* same epoch, other node */
    cmd_session_claim(b, S("c1"), 2, 0); /* epoch 0 is invalid */
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.n, 4);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(res.results[2], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(res.results[3], FSM_INVALID);
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c1"), &node, &epoch), 0);
    CU_ASSERT_EQUAL(node, 1);
    CU_ASSERT_EQUAL(epoch, 1);

    cmd_session_claim(b, S("c1"), 2, 5);      /* takeover: higher epoch */
    cmd_session_claim(b, S("c1"), 1, 4);      /* lower epoch: rejected */
    cmd_session_release(b, S("c1"), 1, 1, 0); /* old owner: rejected */
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(res.results[2], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c1"), &node, &epoch), 0);
    CU_ASSERT_EQUAL(node, 2);
    CU_ASSERT_EQUAL(epoch, 5);

    /* The registry keeps a claim's stored flag (SessionClaim.stored) with
     * its owner: a claim without it clears it, and a node whose tables
     * come as a snapshot reads it there. */
    bool stored = true;
    CU_ASSERT_EQUAL(fsm_registry_claim(f, S("c1"), &node, &epoch, &stored), 0);
    CU_ASSERT_FALSE(stored);
    cmd_session_claim_clean(b, S("c1"), 2, 6, 0, 1);
    CU_ASSERT_EQUAL(apply(f, 3, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(fsm_registry_claim(f, S("c1"), &node, &epoch, &stored), 0);
    CU_ASSERT_EQUAL(epoch, 6);
    CU_ASSERT_TRUE(stored);
    cmd_session_claim(b, S("c1"), 2, 7);
    CU_ASSERT_EQUAL(apply(f, 4, b), 0);
    CU_ASSERT_EQUAL(fsm_registry_claim(f, S("c1"), &node, &epoch, &stored), 0);
    CU_ASSERT_EQUAL(epoch, 7);
    CU_ASSERT_FALSE(stored);
    cmd_session_claim_clean(b, S("c1"), 2, 8, 0, 1);
    CU_ASSERT_EQUAL(apply(f, 5, b), 0);

    cmd_session_release(b, S("c1"), 2, 5, 1); /* an older claim: rejected */
    cmd_session_release(b, S("c1"), 2, 8, 1); /* the owner: removed */
    cmd_session_release(b, S("c1"), 2, 8, 1); /* again: no-op */
    CU_ASSERT_EQUAL(apply(f, 6, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    CU_ASSERT_EQUAL(res.results[2], FSM_NOOP);
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c1"), &node, &epoch), -ENOENT);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

static void test_retained_origin_seq(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    cmd_retained_set(b, S("r/1"), 1, "hello", 5, "\x01\x01", 2, 1234, 7, 10);
    cmd_retained_set(b, S("r/1"), 1, "dup", 3, NULL, 0, 0, 7, 10); /* same (origin, seq) */
    cmd_retained_set(b, S("r/1"), 1, "old", 3, NULL, 0, 0, 7, 9);  /* older */
    cmd_retained_clear(b, S("r/2"), 7, 11);                        /* nothing to clear */
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_STALE_SEQ);
    CU_ASSERT_EQUAL(res.results[2], FSM_STALE_SEQ);
    CU_ASSERT_EQUAL(res.results[3], FSM_NOOP);
    void *m;
    size_t mlen;
    uint64_t origin, seq;
    CU_ASSERT_EQUAL_FATAL(fsm_retained_get(f, S("r/1"), &m, &mlen, &origin, &seq), 0);
    CU_ASSERT_EQUAL(origin, 7);
    CU_ASSERT_EQUAL(seq, 10);
    /* The stored message is the encoded RetainedMessage: qos 1 (field 1),
     * payload "hello" (field 2), properties (field 3), expiry (field 4). */
    const unsigned char want[] = {0x08, 0x01, 0x12, 0x05, 'h',  'e',  'l',  'l',
                                  'o',  0x1a, 0x02, 0x01, 0x01, 0x20, 0xd2, 0x09};
    CU_ASSERT_EQUAL(mlen, sizeof want);
    CU_ASSERT_EQUAL(memcmp(m, want, sizeof want), 0);
    free(m);

    /* Another origin replaces it whatever its seq; then the same origin
     * clears it with a newer seq. */
    cmd_retained_set(b, S("r/1"), 0, "x", 1, NULL, 0, 0, 8, 1);
    cmd_retained_clear(b, S("r/1"), 8, 1); /* stale */
    cmd_retained_clear(b, S("r/1"), 8, 2);
    cmd_retained_set(b, S("r/+"), 0, "x", 1, NULL, 0, 0, 8, 3); /* not a topic name */
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_STALE_SEQ);
    CU_ASSERT_EQUAL(res.results[2], FSM_OK);
    CU_ASSERT_EQUAL(res.results[3], FSM_INVALID);
    CU_ASSERT_EQUAL(fsm_retained_get(f, S("r/1"), &m, &mlen, &origin, &seq), -ENOENT);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

static int count_member(void *ud, uint64_t node, const void *m, size_t len)
{
    (void)m;
    CU_ASSERT_TRUE(len > 0);
    uint64_t *sum = ud;
    *sum += node;
    return 0;
}

static void test_members_and_purge(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    char longf[1200];
    memset(longf, 'x', sizeof longf);
    memcpy(longf, "long/", 5);
    cmd_member(b, 3, "n3", "127.0.0.13", 4370, 4371, NULL, CMD_ROLE_VOTER, 0);
    cmd_member(b, 4, "n4", "127.0.0.14", 4370, 4371, NULL, CMD_ROLE_SPARE, 0);
    cmd_member(b, 3, "n3", "127.0.0.13", 4370, 4371, NULL, CMD_ROLE_VOTER, 0); /* same */
    cmd_route_add(b, S("a"), 3);
    cmd_route_add(b, S("$share/g/b/#"), 3);
    cmd_route_add(b, longf, sizeof longf, 3); /* hashed LMDB key */
    cmd_route_add(b, S("a"), 4);
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.results[2], FSM_NOOP);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 4);
    uint64_t sum = 0;
    CU_ASSERT_EQUAL(fsm_members(f, count_member, &sum), 0);
    CU_ASSERT_EQUAL(sum, 7);

    cmd_node_purge(b, 3);
    cmd_node_purge(b, 3);
    cmd_member_remove(b, 4);
    cmd_member_remove(b, 4);
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(res.results[2], FSM_OK);
    CU_ASSERT_EQUAL(res.results[3], FSM_NOOP);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 1);
    uint64_t r, s, ret, m;
    CU_ASSERT_EQUAL(fsm_counts(f, &r, &s, &ret, &m), 0);
    CU_ASSERT_EQUAL(r, 1);
    CU_ASSERT_EQUAL(m, 1);
    sum = 0;
    CU_ASSERT_EQUAL(fsm_members(f, count_member, &sum), 0);
    CU_ASSERT_EQUAL(sum, 3);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* Decode the session record of id: its filters joined by ',' into out. */
static int record_filters(struct fsm *f, const char *id, char *out, size_t cap, uint32_t *expiry,
                          char *user, size_t ucap)
{
    void *buf;
    size_t len;
    int rc = fsm_session_record_get(f, id, strlen(id), &buf, &len);
    if (rc)
        return rc;
    Starling__Cmd__SessionRecord *r = starling__cmd__session_record__unpack(NULL, len, buf);
    free(buf);
    if (!r)
        return -EIO;
    out[0] = '\0';
    for (size_t i = 0; i < r->n_subs; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%.*s:%u:%u", i ? "," : "",
                 (int)r->subs[i]->filter.len, (const char *)r->subs[i]->filter.data,
                 r->subs[i]->options, r->subs[i]->sub_id);
    *expiry = r->expiry_interval;
    snprintf(user, ucap, "%s", r->username ? r->username : "(none)");
    starling__cmd__session_record__free_unpacked(r, NULL);
    return 0;
}

static void test_session_records_and_node_down(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    struct cmd_session_sub subs[] = {{S("p/#"), 1, 7}, {S("$share/g/q"), 2, 0}};
    char got[256], user[32];
    uint32_t expiry = 0;
    /* written only by the owner the registry names */
    cmd_session_record(b, S("c1"), 1, 1, 300, 5, "alice", subs, 2, 0, 0, 0); /* no claim yet */
    cmd_session_claim(b, S("c1"), 1, 1);
    cmd_session_record(b, S("c1"), 1, 1, 300, 5, "alice", subs, 2, 0, 0, 0);
    cmd_session_record(b, S("c1"), 1, 1, 300, 5, "alice", subs, 2, 0, 0, 0); /* same: no-op */
    cmd_session_record(b, S("c1"), 2, 1, 300, 5, NULL, subs, 1, 0, 0, 0);    /* not the owner */
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    CU_ASSERT_EQUAL(res.results[2], FSM_OK);
    CU_ASSERT_EQUAL(res.results[3], FSM_NOOP);
    CU_ASSERT_EQUAL(res.results[4], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(record_filters(f, "c1", got, sizeof got, &expiry, user, sizeof user), 0);
    CU_ASSERT_STRING_EQUAL(got, "p/#:1:7,$share/g/q:2:0");
    CU_ASSERT_EQUAL(expiry, 300);
    CU_ASSERT_STRING_EQUAL(user, "alice");

    /* a takeover keeps the record (the claimant resumes from it) until the
     * new owner writes its own */
    cmd_session_claim(b, S("c1"), 2, 2);
    cmd_session_record(b, S("c1"), 1, 1, 300, 5, NULL, subs, 1, 0, 0, 0); /* old owner: refused */
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(res.results[1], FSM_STALE_EPOCH);
    CU_ASSERT_EQUAL(record_filters(f, "c1", got, sizeof got, &expiry, user, sizeof user), 0);
    CU_ASSERT_STRING_EQUAL(got, "p/#:1:7,$share/g/q:2:0");
    const struct cmd_pub_seen seen[] = {{3, 500}, {1, 7}}, later[] = {{3, 999}};
    cmd_session_record_seen(b, S("c1"), 2, 2, 60, 5, NULL, subs, 1, 40000, 2, 77, seen, 2, true,
                            true);
    cmd_session_record_seen(b, S("c1"), 2, 2, 60, 5, NULL, subs, 1, 40000, 9, 99, later, 1, true,
                            true); /* entry kept */
    CU_ASSERT_EQUAL(apply(f, 3, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(record_filters(f, "c1", got, sizeof got, &expiry, user, sizeof user), 0);
    CU_ASSERT_STRING_EQUAL(got, "p/#:1:7");
    CU_ASSERT_EQUAL(expiry, 60);
    CU_ASSERT_STRING_EQUAL(user, "(none)");
    /* the owner's next packet id goes with it (a copy resumed from the
     * record numbers its own away from it); the first record had none */
    void *rv;
    size_t rlen;
    CU_ASSERT_EQUAL(fsm_session_record_get(f, S("c1"), &rv, &rlen), 0);
    Starling__Cmd__SessionRecord *rec = starling__cmd__session_record__unpack(NULL, rlen, rv);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    CU_ASSERT_TRUE(rec->has_next_packet_id);
    CU_ASSERT_EQUAL(rec->next_packet_id, 40000);
    /* a session that began clean at this claim says so */
    CU_ASSERT_TRUE(rec->has_began_clean && rec->began_clean);
    /* the owners it named, each with the entry of its first record (the
     * same owner writing again adds none) */
    CU_ASSERT_EQUAL_FATAL(rec->n_owners, 2);
    CU_ASSERT_EQUAL(rec->owners[0]->node, 1);
    CU_ASSERT_EQUAL(rec->owners[0]->epoch, 1);
    CU_ASSERT_EQUAL(rec->owners[0]->index, 1);
    CU_ASSERT_EQUAL(rec->owners[1]->node, 2);
    CU_ASSERT_EQUAL(rec->owners[1]->epoch, 2);
    CU_ASSERT_EQUAL(rec->owners[1]->index, 3);
    /* with the index from which its session took forwards, from its first
     * record (RecordOwner.routed_from); the first owner's said none */
    CU_ASSERT_FALSE(rec->owners[0]->has_routed_from);
    CU_ASSERT_TRUE(rec->owners[1]->has_routed_from);
    CU_ASSERT_EQUAL(rec->owners[1]->routed_from, 2);
    /* and the first publish number of its own publishes that it got
     * locally (RecordOwner.local_from), from its first record too */
    CU_ASSERT_FALSE(rec->owners[0]->has_local_from);
    CU_ASSERT_TRUE(rec->owners[1]->has_local_from);
    CU_ASSERT_EQUAL(rec->owners[1]->local_from, 77);
    /* and the forwards its node had begun to deliver when its session
     * joined the index (RecordOwner.pubs_seen), from its first record */
    CU_ASSERT_FALSE(rec->owners[0]->pubs_seen_known);
    CU_ASSERT_EQUAL(rec->owners[0]->n_pubs_seen, 0);
    CU_ASSERT_TRUE(rec->owners[1]->pubs_seen_known);
    CU_ASSERT_EQUAL_FATAL(rec->owners[1]->n_pubs_seen, 2);
    CU_ASSERT_EQUAL(rec->owners[1]->pubs_seen[0]->origin, 3);
    CU_ASSERT_EQUAL(rec->owners[1]->pubs_seen[0]->pub_id, 500);
    CU_ASSERT_EQUAL(rec->owners[1]->pubs_seen[1]->origin, 1);
    CU_ASSERT_EQUAL(rec->owners[1]->pubs_seen[1]->pub_id, 7);
    starling__cmd__session_record__free_unpacked(rec, NULL);
    free(rv);

    /* expiry 0 deletes the record; the release deletes both */
    cmd_session_claim(b, S("c2"), 1, 1);
    cmd_session_record(b, S("c2"), 1, 1, 10, 4, NULL, subs + 1, 1, 0, 0, 0);
    CU_ASSERT_EQUAL(apply(f, 4, b), 0);
    cmd_session_record(b, S("c2"), 1, 1, 0, 4, NULL, NULL, 0, 0, 0, 0);
    cmd_session_record(b, S("c2"), 1, 1, 0, 4, NULL, NULL, 0, 0, 0, 0);
    cmd_session_release(b, S("c1"), 2, 2, 0);
    CU_ASSERT_EQUAL(apply(f, 5, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(res.results[2], FSM_OK);
    CU_ASSERT_EQUAL(record_filters(f, "c2", got, sizeof got, &expiry, user, sizeof user), -ENOENT);
    CU_ASSERT_EQUAL(record_filters(f, "c1", got, sizeof got, &expiry, user, sizeof user), -ENOENT);
    uint64_t node, epoch;
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c1"), &node, &epoch), -ENOENT);
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("c2"), &node, &epoch), 0);

    /* NodeDown(3): its routes go, but those of the persistent sessions it
     * still owns (c3) and of those claimed away whose new owner has not
     * written its record yet (c4: node 4 owns it, its record names node 3) */
    cmd_route_add(b, S("keep/+"), 3);
    cmd_route_add(b, S("$share/g/k"), 3);
    cmd_route_add(b, S("gone"), 3);
    cmd_route_add(b, S("moved"), 3);
    cmd_route_add(b, S("gone"), 4);
    cmd_session_claim(b, S("c3"), 3, 1);
    struct cmd_session_sub keep[] = {{S("keep/+"), 1, 0}, {S("$share/g/k"), 0, 0}};
    cmd_session_record(b, S("c3"), 3, 1, 100, 5, NULL, keep, 2, 0, 0, 0);
    cmd_session_claim(b, S("c4"), 3, 1);
    struct cmd_session_sub moved[] = {{S("moved"), 1, 0}};
    cmd_session_record(b, S("c4"), 3, 1, 100, 5, NULL, moved, 1, 0, 0, 0);
    cmd_session_claim(b, S("c4"), 4, 2);
    CU_ASSERT_EQUAL(apply(f, 6, b), 0);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 5);
    uint64_t nr = 0, ns = 0;
    CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
    CU_ASSERT_EQUAL(nr, 4);
    CU_ASSERT_EQUAL(ns, 1);
    cmd_node_down(b, 3);
    cmd_node_down(b, 3);
    CU_ASSERT_EQUAL(cmd_node_down(b, 0), -EINVAL);
    CU_ASSERT_EQUAL(apply(f, 7, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
    CU_ASSERT_EQUAL(nr, 3);
    /* the matcher follows the table */
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 4);
    /* once node 4 wrote c4's record, "moved" goes with it (its count,
     * NodeDown.keepers: test_node_down_keepers); a NodeDown after it finds
     * nothing more to take */
    cmd_session_record(b, S("c4"), 4, 2, 100, 5, NULL, moved, 1, 0, 0, 0);
    cmd_node_down(b, 3);
    CU_ASSERT_EQUAL(apply(f, 8, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_NOOP);
    CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
    CU_ASSERT_EQUAL(nr, 2);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 3);
    assert_checksum_consistent(f);
    CU_ASSERT_EQUAL(fsm_routes_index(f), 8);

    /* the records travel in snapshots */
    void *snap;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f, &snap, &len), 0);
    char *d2 = tmpdir();
    struct fsm *f2 = open_fsm(d2);
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, len, false, NULL), 0);
    CU_ASSERT_EQUAL(fsm_checksum(f2), fsm_checksum(f));
    CU_ASSERT_EQUAL(record_filters(f2, "c3", got, sizeof got, &expiry, user, sizeof user), 0);
    CU_ASSERT_STRING_EQUAL(got, "keep/+:1:0,$share/g/k:0:0");
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f2)), 3);
    CU_ASSERT_EQUAL(fsm_routes_index(f2), 8);
    free(snap);
    fsm_close(f2);
    rmdir_free(d2);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* The packet id a copy resumed from c's current record starts at
 * (cmd_record_resume_pid), 0 when it tells none. */
static uint16_t resume_pid(struct fsm *f, const char *id)
{
    void *rv;
    size_t rlen;
    if (fsm_session_record_get(f, id, strlen(id), &rv, &rlen) != 0)
        return 0;
    Starling__Cmd__SessionRecord *rec = starling__cmd__session_record__unpack(NULL, rlen, rv);
    free(rv);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    uint16_t pid = cmd_record_resume_pid(rec);
    starling__cmd__session_record__free_unpacked(rec, NULL);
    return pid;
}

/* Each owner a record names keeps the next packet id of its latest record
 * (RecordOwner.next_packet_id), and a copy resumed from the record numbers
 * in the middle of the largest gap between them. Before, only the last
 * owner's id was kept and a resumption numbered a third of the space from
 * it: the third resumption in a row came back to the first owner's ids,
 * where its client may still hold a PUBLISH awaiting PUBREL (issue 10). */
static void test_record_owners_packet_ids(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    struct cmd_session_sub subs[] = {{S("p/#"), 2, 0}};
    cmd_session_claim(b, S("c"), 1, 1);
    cmd_session_record(b, S("c"), 1, 1, 300, 5, NULL, subs, 1, 5, 0, 0);
    cmd_session_record(b, S("c"), 1, 1, 300, 5, NULL, subs, 1, 9, 0, 0); /* its entry follows */
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    /* one owner: half the space away (9 + 32,767) */
    CU_ASSERT_EQUAL(resume_pid(f, "c"), 32776);
    cmd_session_claim(b, S("c"), 2, 2);
    cmd_session_record(b, S("c"), 2, 2, 300, 5, NULL, subs, 1, 32776, 0, 0);
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    /* 9 and 32,776: the gap past 32,776 round to 9 is the larger */
    CU_ASSERT_EQUAL(resume_pid(f, "c"), 49160);
    cmd_session_claim(b, S("c"), 3, 3);
    cmd_session_record(b, S("c"), 3, 3, 300, 5, NULL, subs, 1, 49160, 0, 0);
    cmd_session_record(b, S("c"), 3, 3, 300, 5, NULL, subs, 1, 49200, 0, 0);
    CU_ASSERT_EQUAL(apply(f, 3, b), 0);
    void *rv;
    size_t rlen;
    CU_ASSERT_EQUAL_FATAL(fsm_session_record_get(f, S("c"), &rv, &rlen), 0);
    Starling__Cmd__SessionRecord *rec = starling__cmd__session_record__unpack(NULL, rlen, rv);
    free(rv);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    CU_ASSERT_EQUAL_FATAL(rec->n_owners, 3);
    uint32_t want[3][2] = {{1, 9}, {2, 32776}, {3, 49200}};
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(rec->owners[i]->node, want[i][0]);
        CU_ASSERT_TRUE(rec->owners[i]->has_next_packet_id);
        CU_ASSERT_EQUAL(rec->owners[i]->next_packet_id, want[i][1]);
    }
    /* the third resumption keeps off the first owner's ids (a third of
     * the space from the last owner's, as before, gave 49,200 + 21,845 -
     * 65,535 = 5,510, and three thirds from 9 gave 9 again) */
    CU_ASSERT_EQUAL(cmd_record_resume_pid(rec), 16392);
    /* a record of a build before the owners' ids: its own id alone */
    for (size_t i = 0; i < rec->n_owners; i++)
        rec->owners[i]->has_next_packet_id = false;
    CU_ASSERT_EQUAL(cmd_record_resume_pid(rec), (49200 + 32767) % 65535);
    rec->has_next_packet_id = false;
    CU_ASSERT_EQUAL(cmd_record_resume_pid(rec), 0);
    /* the largest gap across the wrap, and 0 is not an id */
    rec->owners[0]->has_next_packet_id = true;
    rec->owners[0]->next_packet_id = 65000;
    rec->owners[1]->has_next_packet_id = true;
    rec->owners[1]->next_packet_id = 100;
    CU_ASSERT_EQUAL(cmd_record_resume_pid(rec), 32550);
    rec->owners[1]->next_packet_id = 65535;
    rec->owners[2]->has_next_packet_id = true;
    rec->owners[2]->next_packet_id = 1;
    CU_ASSERT_EQUAL(cmd_record_resume_pid(rec), 32500); /* 1 .. 65,000 */
    starling__cmd__session_record__free_unpacked(rec, NULL);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* A NodeDown as a build before NodeDown.keepers wrote it (no count), or
 * (keepers) before NodeDown.owners_marked. */
static int apply_node_down_of(struct fsm *f, uint64_t index, uint64_t node, bool keepers)
{
    Starling__Cmd__NodeDown m = STARLING__CMD__NODE_DOWN__INIT;
    m.node = node;
    m.has_keepers = keepers;
    m.keepers = keepers;
    Starling__Cmd__Command c = STARLING__CMD__COMMAND__INIT;
    c.cmd_case = STARLING__CMD__COMMAND__CMD_NODE_DOWN;
    c.node_down = &m;
    Starling__Cmd__Command *cs[1] = {&c};
    Starling__Cmd__CommandBatch bt = STARLING__CMD__COMMAND_BATCH__INIT;
    bt.n_commands = 1;
    bt.commands = cs;
    size_t n = starling__cmd__command_batch__get_packed_size(&bt);
    unsigned char *pb = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pb);
    starling__cmd__command_batch__pack(&bt, pb);
    void *e;
    size_t elen;
    CU_ASSERT_EQUAL_FATAL(cmd_entry_wrap(pb, n, &e, &elen), 0);
    int rc = fsm_apply(f, index, e, elen, &res);
    free(e);
    free(pb);
    return rc;
}

/* The entries of test_node_down_keepers, one per index (1..KEEPERS_N). */
#define KEEPERS_N 7
static int apply_old_node_down(struct fsm *f, uint64_t index, uint64_t node)
{
    return apply_node_down_of(f, index, node, false);
}

static void keepers_entry(struct cmd_batch *b, int i)
{
    struct cmd_session_sub s1[] = {{S("a/#"), 2, 0}, {S("sh/+"), 2, 0}};
    struct cmd_session_sub s2[] = {{S("b"), 1, 0}, {S("sh/+"), 1, 0}};
    struct cmd_session_sub s3[] = {{S("own"), 1, 0}};
    switch (i) {
    case 1: /* node 3 with three persistent sessions and a route of none */
        cmd_route_add(b, S("a/#"), 3);
        cmd_route_add(b, S("sh/+"), 3);
        cmd_route_add(b, S("b"), 3);
        cmd_route_add(b, S("own"), 3);
        cmd_route_add(b, S("clean"), 3);
        cmd_session_claim(b, S("k1"), 3, 1);
        cmd_session_record(b, S("k1"), 3, 1, 100, 5, NULL, s1, 2, 0, 0, 0);
        cmd_session_claim(b, S("k2"), 3, 1);
        cmd_session_record(b, S("k2"), 3, 1, 100, 5, NULL, s2, 2, 0, 0, 0);
        cmd_session_claim(b, S("k3"), 3, 1);
        cmd_session_record(b, S("k3"), 3, 1, 100, 5, NULL, s3, 1, 0, 0, 0);
        break;
    case 2: /* taken for dead */
        cmd_node_down(b, 3);
        break;
    case 3: /* k1 resumed on node 4 from its record: its routes, then its
             * record (cluster_registry.c queues them so) */
        cmd_session_claim(b, S("k1"), 4, 2);
        cmd_route_add(b, S("a/#"), 4);
        cmd_route_add(b, S("sh/+"), 4);
        break;
    case 4:
        cmd_session_record(b, S("k1"), 4, 2, 100, 5, NULL, s1, 2, 0, 0, 0);
        break;
    case 5: /* node 3 adds "own" itself (it came back): no longer counted;
             * k3 moves to node 4 */
        cmd_route_add(b, S("own"), 3);
        cmd_session_claim(b, S("k3"), 4, 2);
        cmd_route_add(b, S("own"), 4);
        cmd_session_record(b, S("k3"), 4, 2, 100, 5, NULL, s3, 1, 0, 0, 0);
        break;
    case 6: /* k2 claimed by node 4 and ended there before its record */
        cmd_session_claim(b, S("k2"), 4, 2);
        cmd_session_release(b, S("k2"), 4, 2, 0);
        break;
    case 7: /* the next NodeDown (node 3 silent again): "own" goes, no
             * record needs it */
        cmd_node_down(b, 3);
        break;
    }
}

static uint64_t route_count_of(struct fsm *f, const char *topic, uint64_t node)
{
    uint64_t n[8];
    int k = routes_nodes(fsm_routes(f), topic, strlen(topic), 0, n, 8);
    uint64_t hits = 0;
    for (int i = 0; i < k && i < 8; i++)
        hits += n[i] == node;
    return hits;
}

/* fsm_node_expired's callback: the ids (in the registry's key order) and
 * their epochs, in a string "id:epoch id:epoch ". */
static int expired_note(void *ud, const void *id, size_t len, uint64_t epoch)
{
    char *out = ud;
    size_t at = strlen(out);
    snprintf(out + at, 256 - at, "%.*s:%llu ", (int)len, (const char *)id,
             (unsigned long long)epoch);
    return 0;
}

/*
 * The sessions of a node taken for dead expire: fsm_node_expired names
 * those of its records whose expiry interval is at most the time since
 * (not those that never expire, of another node, or without a record),
 * and the least interval still to come; a SessionRelease with `expired`
 * (the leader's, for that node) takes the routes NodeDown kept for the
 * record away with it, where the owner's own release leaves its routes to
 * the owner.
 */
static void test_dead_nodes_sessions_expire(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    struct cmd_session_sub sx[] = {{S("x/#"), 1, 0}};
    struct cmd_session_sub sy[] = {{S("y"), 1, 0}};
    struct cmd_session_sub sz[] = {{S("z"), 1, 0}};
    cmd_route_add(b, S("x/#"), 3);
    cmd_route_add(b, S("y"), 3);
    cmd_route_add(b, S("z"), 3);
    cmd_route_add(b, S("w"), 3);
    cmd_session_claim(b, S("k1"), 3, 1);
    cmd_session_record(b, S("k1"), 3, 1, 10, 5, NULL, sx, 1, 0, 0, 0);
    cmd_session_claim(b, S("k2"), 3, 2);
    cmd_session_record(b, S("k2"), 3, 2, 1000, 5, NULL, sy, 1, 0, 0, 0);
    cmd_session_claim(b, S("k3"), 3, 1);
    cmd_session_record(b, S("k3"), 3, 1, UINT32_MAX, 5, NULL, sz, 1, 0, 0, 0);
    cmd_session_claim(b, S("k4"), 3, 1); /* no record: expiry 0 */
    /* claimed by node 3 from node 4, which wrote the record: not node 3's
     * interval */
    cmd_session_claim(b, S("k6"), 4, 1);
    cmd_session_record(b, S("k6"), 4, 1, 1, 5, NULL, sy, 1, 0, 0, 0);
    cmd_session_claim(b, S("k6"), 3, 2);
    cmd_session_claim(b, S("k5"), 4, 1);
    cmd_session_record(b, S("k5"), 4, 1, 1, 5, NULL, sx, 1, 0, 0, 0);
    CU_ASSERT_EQUAL_FATAL(apply(f, 1, b), 0);
    cmd_node_down(b, 3); /* w goes; x/#, y, z are counted */
    CU_ASSERT_EQUAL_FATAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(fsm_node_routes(f, 3), 3);

    char got[256] = "";
    uint64_t next = 0;
    CU_ASSERT_EQUAL(fsm_node_expired(f, 3, 9, 16, expired_note, got, &next), 0);
    CU_ASSERT_STRING_EQUAL(got, "");
    CU_ASSERT_EQUAL(next, 10);
    CU_ASSERT_EQUAL(fsm_node_expired(f, 3, 10, 16, expired_note, got, &next), 1);
    CU_ASSERT_STRING_EQUAL(got, "k1:1 ");
    CU_ASSERT_EQUAL(next, 1000);
    got[0] = 0;
    CU_ASSERT_EQUAL(fsm_node_expired(f, 3, 5000, 16, expired_note, got, &next), 2);
    CU_ASSERT_STRING_EQUAL(got, "k1:1 k2:2 ");
    CU_ASSERT_EQUAL(next, UINT64_MAX);
    got[0] = 0; /* at most `max`: look again */
    CU_ASSERT_EQUAL(fsm_node_expired(f, 3, 5000, 1, expired_note, got, &next), 1);
    CU_ASSERT_STRING_EQUAL(got, "k1:1 ");
    CU_ASSERT_EQUAL(next, 5000);

    /* the leader's release of k1 for the dead node: x/# of node 3 goes */
    cmd_session_release(b, S("k1"), 3, 1, 1);
    CU_ASSERT_EQUAL_FATAL(apply(f, 3, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    uint64_t node = 0, epoch = 0;
    CU_ASSERT_EQUAL(fsm_registry_get(f, S("k1"), &node, &epoch), -ENOENT);
    CU_ASSERT_EQUAL(route_count_of(f, "x/a", 3), 0);
    CU_ASSERT_EQUAL(fsm_node_routes(f, 3), 2);
    /* a stale one (another claim) changes nothing */
    cmd_session_release(b, S("k2"), 3, 1, 1);
    CU_ASSERT_EQUAL_FATAL(apply(f, 4, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_STALE_EPOCH);
    /* the owner's own release: its routes are its own to remove */
    cmd_session_release(b, S("k2"), 3, 2, 0);
    CU_ASSERT_EQUAL_FATAL(apply(f, 5, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(route_count_of(f, "y", 3), 1);
    got[0] = 0;
    CU_ASSERT_EQUAL(fsm_node_expired(f, 3, 5000, 16, expired_note, got, &next), 0);
    CU_ASSERT_EQUAL(next, UINT64_MAX);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/*
 * NodeDown.keepers: the routes a NodeDown keeps for a dead node's
 * persistent sessions go as those sessions' records leave it (written by
 * the new owner after its routes, deleted, released), in the same entry,
 * on every node alike (tables, matcher, checksum; across a snapshot and a
 * reopen); a route the node adds itself again is its own; a NodeDown of a
 * build before the counts keeps its routes until the next NodeDown, as
 * that build did.
 */
static void test_node_down_keepers(void)
{
    char *d = tmpdir(), *d2 = tmpdir(), *d3 = tmpdir();
    struct fsm *f = open_fsm(d), *f2 = open_fsm(d2), *f3 = open_fsm(d3);
    struct cmd_batch *b = cmd_batch_new();
    uint64_t nr = 0, ns = 0;
    void *snap = NULL;
    size_t snap_len = 0;
    for (int i = 1; i <= KEEPERS_N; i++) {
        keepers_entry(b, i);
        size_t len;
        const void *p = cmd_batch_data(b, &len);
        CU_ASSERT_EQUAL_FATAL(fsm_apply(f2, (uint64_t)i, p, len, NULL), 0);
        CU_ASSERT_EQUAL_FATAL(apply(f, (uint64_t)i, b), 0);
        CU_ASSERT_EQUAL(fsm_checksum(f2), fsm_checksum(f));
        switch (i) {
        case 2:
            /* "clean" went, the four others are kept (counts: sh/+ 2) */
            CU_ASSERT_EQUAL(res.results[0], FSM_OK);
            CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
            CU_ASSERT_EQUAL(nr, 4);
            CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 4);
            /* the snapshot of a table with counts (restored into f3 below) */
            CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f, &snap, &snap_len), 0);
            break;
        case 3:
            /* the claim alone takes nothing: node 4's routes may not be in
             * effect (here they are in the same entry, but its record comes
             * after) */
            CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
            CU_ASSERT_EQUAL(nr, 4);
            CU_ASSERT_EQUAL(route_count_of(f, "a/x", 3), 1);
            CU_ASSERT_EQUAL(route_count_of(f, "a/x", 4), 1);
            break;
        case 4:
            /* k1's record names node 4: a/# of node 3 went, sh/+ stays for
             * k2, and a publish on a/x goes to node 4 only */
            CU_ASSERT_EQUAL(res.results[0], FSM_OK);
            CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
            CU_ASSERT_EQUAL(nr, 3);
            CU_ASSERT_EQUAL(route_count_of(f, "a/x", 3), 0);
            CU_ASSERT_EQUAL(route_count_of(f, "a/x", 4), 1);
            CU_ASSERT_EQUAL(route_count_of(f, "sh/x", 3), 1);
            break;
        case 5:
            /* "own", added by node 3 itself, stays when k3 leaves */
            CU_ASSERT_EQUAL(res.results[0], FSM_NOOP);
            CU_ASSERT_EQUAL(route_count_of(f, "own", 3), 1);
            CU_ASSERT_EQUAL(route_count_of(f, "own", 4), 1);
            break;
        case 6:
            /* k2's record (naming node 3) went with its release: b and
             * sh/+ of node 3 go */
            CU_ASSERT_EQUAL(res.results[1], FSM_OK);
            CU_ASSERT_EQUAL(fsm_node_counts(f, 3, &nr, &ns), 0);
            CU_ASSERT_EQUAL(nr, 1);
            CU_ASSERT_EQUAL(route_count_of(f, "sh/x", 3), 0);
            CU_ASSERT_EQUAL(route_count_of(f, "b", 3), 0);
            break;
        case 7:
            CU_ASSERT_EQUAL(res.results[0], FSM_OK);
            CU_ASSERT_EQUAL(fsm_node_routes(f, 3), 0);
            CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 3); /* own, a/#, sh/+ of node 4 */
            break;
        }
        assert_checksum_consistent(f);
    }
    /* from the snapshot with the counts, the later entries give the same */
    CU_ASSERT_EQUAL(fsm_restore(f3, snap, snap_len, false, NULL), 0);
    CU_ASSERT_EQUAL(fsm_node_routes(f3, 3), 4);
    for (int i = 3; i <= KEEPERS_N; i++) {
        keepers_entry(b, i);
        CU_ASSERT_EQUAL_FATAL(apply(f3, (uint64_t)i, b), 0);
    }
    CU_ASSERT_EQUAL(fsm_checksum(f3), fsm_checksum(f));
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f3)), routes_count(fsm_routes(f)));
    /* and across a reopen: the counts are in the table */
    fsm_close(f3);
    f3 = open_fsm(d3);
    CU_ASSERT_EQUAL(fsm_checksum(f3), fsm_checksum(f));
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f3)), 3);
    assert_checksum_consistent(f3);
    free(snap);

    /* a NodeDown of the build before (no keepers): the routes stay when
     * the record leaves, until the next NodeDown, as that build applied
     * it; replayed twice alike */
    for (int run = 0; run < 2; run++) {
        struct fsm *g = run ? f3 : f2;
        char *gd = run ? d3 : d2;
        fsm_close(g);
        test_rm_tree(gd);
        CU_ASSERT_EQUAL_FATAL(mkdir(gd, 0700), 0);
        g = open_fsm(gd);
        keepers_entry(b, 1);
        CU_ASSERT_EQUAL_FATAL(apply(g, 1, b), 0);
        CU_ASSERT_EQUAL_FATAL(apply_old_node_down(g, 2, 3), 0);
        CU_ASSERT_EQUAL(res.results[0], FSM_OK);
        for (int i = 3; i <= 4; i++) {
            keepers_entry(b, i);
            CU_ASSERT_EQUAL_FATAL(apply(g, (uint64_t)i, b), 0);
        }
        CU_ASSERT_EQUAL(route_count_of(g, "a/x", 3), 1);
        CU_ASSERT_EQUAL(fsm_node_routes(g, 3), 4);
        CU_ASSERT_EQUAL_FATAL(apply_old_node_down(g, 5, 3), 0);
        CU_ASSERT_EQUAL(route_count_of(g, "a/x", 3), 0);
        CU_ASSERT_EQUAL(fsm_node_routes(g, 3), 3);
        assert_checksum_consistent(g);
        if (run)
            f3 = g;
        else
            f2 = g;
    }
    CU_ASSERT_EQUAL(fsm_checksum(f2), fsm_checksum(f3));
    cmd_batch_free(b);
    fsm_close(f);
    fsm_close(f2);
    fsm_close(f3);
    rmdir_free(d);
    rmdir_free(d2);
    rmdir_free(d3);
}

/*
 * NodeDown.owners_marked: a record that the registry gives to the dead
 * node while it still names another one (the node claimed the session and
 * died before writing its own record) keeps the dead node's route, counted;
 * when the session moves on (a third node's record), that count goes too,
 * on every node alike. A NodeDown of the build before (keepers, no marks)
 * kept the route until the next NodeDown, and replays so.
 */
static void test_node_down_owner_kept(void)
{
    struct cmd_session_sub s1[] = {{S("m/#"), 2, 0}};
    char *d = tmpdir(), *d2 = tmpdir();
    struct fsm *f = open_fsm(d), *f2 = open_fsm(d2);
    struct cmd_batch *b = cmd_batch_new();
    for (int run = 0; run < 2; run++) {
        struct fsm *g = run ? f2 : f;
        /* m1 owned by node 6 (its record), then claimed by node 5, whose
         * routes commit, and which dies before its record */
        cmd_route_add(b, S("m/#"), 6);
        cmd_session_claim(b, S("m1"), 6, 1);
        cmd_session_record(b, S("m1"), 6, 1, 100, 5, NULL, s1, 1, 0, 0, 0);
        cmd_session_claim(b, S("m1"), 5, 2);
        cmd_route_add(b, S("m/#"), 5);
        CU_ASSERT_EQUAL_FATAL(apply(g, 1, b), 0);
        if (run) {
            CU_ASSERT_EQUAL_FATAL(apply_node_down_of(g, 2, 5, true), 0);
        } else {
            cmd_node_down(b, 5);
            CU_ASSERT_EQUAL_FATAL(apply(g, 2, b), 0);
        }
        CU_ASSERT_EQUAL(route_count_of(g, "m/x", 5), 1); /* kept for m1 */
        /* m1 resumed on node 7 from its record: routes, then record */
        cmd_session_claim(b, S("m1"), 7, 3);
        cmd_route_add(b, S("m/#"), 7);
        CU_ASSERT_EQUAL_FATAL(apply(g, 3, b), 0);
        CU_ASSERT_EQUAL(route_count_of(g, "m/x", 5), 1); /* a claim takes nothing */
        cmd_session_record(b, S("m1"), 7, 3, 100, 5, NULL, s1, 1, 0, 0, 0);
        CU_ASSERT_EQUAL_FATAL(apply(g, 4, b), 0);
        CU_ASSERT_EQUAL(res.results[0], FSM_OK);
        /* the marked record took node 5's count: nothing more for m1 is
         * forwarded to node 5; the build before kept it */
        CU_ASSERT_EQUAL(route_count_of(g, "m/x", 5), run ? 1 : 0);
        CU_ASSERT_EQUAL(route_count_of(g, "m/x", 7), 1);
        CU_ASSERT_EQUAL(fsm_node_routes(g, 5), run ? 1 : 0);
        assert_checksum_consistent(g);
    }
    /* the same entries on another machine: the same tables */
    char *d3 = tmpdir();
    struct fsm *f3 = open_fsm(d3);
    cmd_route_add(b, S("m/#"), 6);
    cmd_session_claim(b, S("m1"), 6, 1);
    cmd_session_record(b, S("m1"), 6, 1, 100, 5, NULL, s1, 1, 0, 0, 0);
    cmd_session_claim(b, S("m1"), 5, 2);
    cmd_route_add(b, S("m/#"), 5);
    CU_ASSERT_EQUAL_FATAL(apply(f3, 1, b), 0);
    cmd_node_down(b, 5);
    CU_ASSERT_EQUAL_FATAL(apply(f3, 2, b), 0);
    void *snap;
    size_t snap_len;
    CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f3, &snap, &snap_len), 0);
    struct fsm *f4 = NULL;
    char *d4 = tmpdir();
    f4 = open_fsm(d4);
    CU_ASSERT_EQUAL(fsm_restore(f4, snap, snap_len, false, NULL), 0);
    free(snap);
    for (struct fsm **g = (struct fsm *[]){f3, f4, NULL}; *g; g++) {
        cmd_session_claim(b, S("m1"), 7, 3);
        cmd_route_add(b, S("m/#"), 7);
        CU_ASSERT_EQUAL_FATAL(apply(*g, 3, b), 0);
        cmd_session_record(b, S("m1"), 7, 3, 100, 5, NULL, s1, 1, 0, 0, 0);
        CU_ASSERT_EQUAL_FATAL(apply(*g, 4, b), 0);
        CU_ASSERT_EQUAL(fsm_checksum(*g), fsm_checksum(f));
        CU_ASSERT_EQUAL(route_count_of(*g, "m/x", 5), 0);
    }
    cmd_batch_free(b);
    fsm_close(f);
    fsm_close(f2);
    fsm_close(f3);
    fsm_close(f4);
    rmdir_free(d);
    rmdir_free(d2);
    rmdir_free(d3);
    rmdir_free(d4);
}

static void test_long_keys(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    /* Two 600-byte client ids that share their first 480 bytes. */
    char id1[600], id2[600];
    memset(id1, 'c', sizeof id1);
    memcpy(id2, id1, sizeof id2);
    id2[599] = 'd';
    cmd_session_claim(b, id1, sizeof id1, 1, 1);
    cmd_session_claim(b, id2, sizeof id2, 2, 1);
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    uint64_t node, epoch;
    CU_ASSERT_EQUAL(fsm_registry_get(f, id1, sizeof id1, &node, &epoch), 0);
    CU_ASSERT_EQUAL(node, 1);
    CU_ASSERT_EQUAL(fsm_registry_get(f, id2, sizeof id2, &node, &epoch), 0);
    CU_ASSERT_EQUAL(node, 2);
    assert_checksum_consistent(f);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

static void test_malformed_entry(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    /* No entry header. */
    const unsigned char junk[] = {0x0a, 0x7f, 0x01, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(fsm_apply(f, 3, junk, sizeof junk, &res), 0);
    CU_ASSERT_EQUAL(res.n, 0);
    CU_ASSERT_FALSE(res.skipped);
    CU_ASSERT_EQUAL(fsm_applied(f), 3);
    CU_ASSERT_EQUAL(fsm_checksum(f), 0);
    /* A header whose length does not fit the entry, a good header around
     * bad protobuf. */
    const unsigned char badlen[] = {'S', 'T', 1, 0, 9, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(fsm_apply(f, 4, badlen, sizeof badlen, &res), 0);
    CU_ASSERT_EQUAL(res.n, 0);
    void *e;
    size_t elen;
    CU_ASSERT_EQUAL_FATAL(cmd_entry_wrap("\x0a\x7f\x01", 3, &e, &elen), 0);
    CU_ASSERT_EQUAL(elen, 16);
    CU_ASSERT_EQUAL(fsm_apply(f, 5, e, elen, &res), 0);
    CU_ASSERT_EQUAL(res.n, 0);
    free(e);
    /* An empty batch is an empty entry; entries are 8-byte words. */
    struct cmd_batch *b = cmd_batch_new();
    const void *p = cmd_batch_data(b, &elen);
    CU_ASSERT_EQUAL(elen, 8);
    CU_ASSERT_EQUAL(fsm_apply(f, 6, p, elen, &res), 0);
    CU_ASSERT_EQUAL(res.n, 0);
    CU_ASSERT_EQUAL(fsm_applied(f), 6);
    CU_ASSERT_FALSE(fsm_broken(f));
    /* wrap(pb of a batch) is the batch's own entry. */
    cmd_route_add(b, S("w"), 1);
    size_t pblen, blen;
    const void *pb = cmd_batch_pb(b, &pblen);
    CU_ASSERT_EQUAL_FATAL(cmd_entry_wrap(pb, pblen, &e, &elen), 0);
    p = cmd_batch_data(b, &blen);
    CU_ASSERT_EQUAL(blen % 8, 0);
    CU_ASSERT_EQUAL(elen, blen);
    CU_ASSERT_EQUAL(memcmp(e, p, elen), 0);
    const void *in;
    size_t inlen;
    CU_ASSERT_EQUAL(cmd_entry_unwrap(e, elen, &in, &inlen), 0);
    CU_ASSERT_EQUAL(inlen, pblen);
    CU_ASSERT_EQUAL(cmd_entry_unwrap(e, elen - 8, &in, &inlen), -EINVAL);
    free(e);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* The same entries on two environments: equal checksums after each one. A
 * third environment that reaches the same tables by another path (add and
 * remove extra records) has the same checksum too. */
static void test_checksum_across_environments(void)
{
    char *d1 = tmpdir(), *d2 = tmpdir(), *d3 = tmpdir();
    struct fsm *f1 = open_fsm(d1), *f2 = open_fsm(d2), *f3 = open_fsm(d3);
    struct cmd_batch *b = cmd_batch_new();
    char s[32];
    for (uint64_t i = 1; i <= 50; i++) {
        snprintf(s, sizeof s, "t/%llu/#", (unsigned long long)i);
        cmd_route_add(b, S(s), 1 + i % 3);
        snprintf(s, sizeof s, "client-%llu", (unsigned long long)(i % 7));
        cmd_session_claim(b, S(s), 1 + i % 3, i);
        snprintf(s, sizeof s, "ret/%llu", (unsigned long long)(i % 5));
        cmd_retained_set(b, S(s), 0, s, strlen(s), NULL, 0, 0, 1, i);
        size_t len;
        const void *p = cmd_batch_data(b, &len);
        CU_ASSERT_EQUAL(fsm_apply(f1, i, p, len, NULL), 0);
        CU_ASSERT_EQUAL(fsm_apply(f2, i, p, len, NULL), 0);
        cmd_batch_reset(b);
        CU_ASSERT_EQUAL(fsm_checksum(f1), fsm_checksum(f2));
    }
    /* f3: the same final state in one entry, after a detour. */
    cmd_route_add(b, S("detour/+"), 9);
    cmd_session_claim(b, S("detour"), 9, 1);
    for (uint64_t i = 1; i <= 50; i++) {
        snprintf(s, sizeof s, "t/%llu/#", (unsigned long long)i);
        cmd_route_add(b, S(s), 1 + i % 3);
    }
    for (uint64_t i = 44; i <= 50; i++) {
        snprintf(s, sizeof s, "client-%llu", (unsigned long long)(i % 7));
        cmd_session_claim(b, S(s), 1 + i % 3, i);
    }
    for (uint64_t i = 46; i <= 50; i++) {
        snprintf(s, sizeof s, "ret/%llu", (unsigned long long)(i % 5));
        cmd_retained_set(b, S(s), 0, s, strlen(s), NULL, 0, 0, 1, i);
    }
    CU_ASSERT_EQUAL(apply(f3, 1, b), 0);
    CU_ASSERT_NOT_EQUAL(fsm_checksum(f3), fsm_checksum(f1));
    cmd_route_remove(b, S("detour/+"), 9);
    cmd_session_release(b, S("detour"), 9, 1, 0);
    CU_ASSERT_EQUAL(apply(f3, 2, b), 0);
    CU_ASSERT_EQUAL(fsm_checksum(f3), fsm_checksum(f1));
    assert_checksum_consistent(f1);
    assert_checksum_consistent(f3);
    cmd_batch_free(b);
    fsm_close(f1);
    fsm_close(f2);
    fsm_close(f3);
    rmdir_free(d1);
    rmdir_free(d2);
    rmdir_free(d3);
}

static void test_snapshot_restore(void)
{
    char *d1 = tmpdir(), *d2 = tmpdir();
    struct fsm *f1 = open_fsm(d1), *f2 = open_fsm(d2);
    struct cmd_batch *b = cmd_batch_new();
    cmd_route_add(b, S("x/+"), 1);
    cmd_route_add(b, S("$share/g/y"), 2);
    cmd_session_claim(b, S("c"), 1, 3);
    cmd_session_claim_clean(b, S("st"), 2, 4, 0, 1);
    cmd_retained_set(b, S("r"), 2, "p", 1, NULL, 0, 0, 1, 1);
    cmd_member(b, 1, "one", "127.0.0.11", 1, 2, NULL, CMD_ROLE_VOTER, 0);
    CU_ASSERT_EQUAL(apply(f1, 10, b), 0);
    /* f2 holds something else, which the restore must replace. */
    cmd_route_add(b, S("other"), 5);
    cmd_session_claim(b, S("other"), 5, 1);
    CU_ASSERT_EQUAL(apply(f2, 20, b), 0);

    void *snap;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f1, &snap, &len), 0);
    /* Malformed snapshots change nothing. */
    uint64_t before = fsm_checksum(f2);
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, len - 1, false, NULL), -EINVAL);
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, 10, false, NULL), -EINVAL);
    unsigned char *bad = malloc(len);
    memcpy(bad, snap, len);
    bad[len - 1] ^= 1; /* a record byte: the checksum no longer adds up */
    CU_ASSERT_EQUAL(fsm_restore(f2, bad, len, false, NULL), -EINVAL);
    free(bad);
    CU_ASSERT_EQUAL(fsm_checksum(f2), before);
    CU_ASSERT_EQUAL(fsm_applied(f2), 20);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f2)), 1);

    /* keep_newer: f2 applied a later index (20 > 10), nothing changes. */
    bool skipped = false;
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, len, true, &skipped), 0);
    CU_ASSERT_TRUE(skipped);
    CU_ASSERT_EQUAL(fsm_applied(f2), 20);
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, len, false, &skipped), 0);
    CU_ASSERT_FALSE(skipped);
    /* Now f2 holds it: the same index and checksum is skipped too. */
    CU_ASSERT_EQUAL(fsm_restore(f2, snap, len, true, &skipped), 0);
    CU_ASSERT_TRUE(skipped);
    free(snap);
    CU_ASSERT_EQUAL(fsm_applied(f2), 10);
    CU_ASSERT_EQUAL(fsm_checksum(f2), fsm_checksum(f1));
    assert_checksum_consistent(f2);
    uint64_t node, epoch;
    CU_ASSERT_EQUAL(fsm_registry_get(f2, S("other"), &node, &epoch), -ENOENT);
    bool stored = true;
    CU_ASSERT_EQUAL(fsm_registry_claim(f2, S("c"), &node, &epoch, &stored), 0);
    CU_ASSERT_EQUAL(epoch, 3);
    CU_ASSERT_FALSE(stored);
    CU_ASSERT_EQUAL(fsm_registry_claim(f2, S("st"), &node, &epoch, &stored), 0);
    CU_ASSERT_EQUAL(node, 2);
    CU_ASSERT_EQUAL(epoch, 4);
    CU_ASSERT_TRUE(stored);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f2)), 2);
    uint64_t n[4];
    CU_ASSERT_EQUAL(routes_nodes(fsm_routes(f2), S("y"), 0, n, 4), 1);
    CU_ASSERT_EQUAL(n[0], 2);
    CU_ASSERT_EQUAL(routes_nodes(fsm_routes(f2), S("other"), 0, n, 4), 0);
    /* After the restore, the next entry applies on both alike. */
    cmd_route_add(b, S("z"), 3);
    size_t blen;
    const void *p = cmd_batch_data(b, &blen);
    CU_ASSERT_EQUAL(fsm_apply(f1, 11, p, blen, NULL), 0);
    CU_ASSERT_EQUAL(fsm_apply(f2, 11, p, blen, NULL), 0);
    CU_ASSERT_EQUAL(fsm_checksum(f2), fsm_checksum(f1));
    cmd_batch_free(b);
    fsm_close(f1);
    fsm_close(f2);
    rmdir_free(d1);
    rmdir_free(d2);
}
/* The operator's tables (AdminPut / AdminDelete): set semantics, per table
 * key spaces, scans in key order, carried by snapshots. */
struct admin_rows {
    char text[512];
};

static int admin_row(void *ud, const char *key, const char *val)
{
    struct admin_rows *r = ud;
    size_t n = strlen(r->text);
    snprintf(r->text + n, sizeof(r->text) - n, "%s=%s;", key, val);
    return 0;
}

static void test_admin_tables(void)
{
    char *d1 = tmpdir(), *d2 = tmpdir();
    struct fsm *f = open_fsm(d1), *g = open_fsm(d2);
    struct cmd_batch *b = cmd_batch_new();
    CU_ASSERT_TRUE(fsm_admin_empty(f, 1));
    cmd_admin_put(b, 1, S("clientid:x"), S("{\"a\":1}"));
    cmd_admin_put(b, 1, S("address:1.2.3.4"), S("{}"));
    cmd_admin_put(b, 1, S("clientid:x"), S("{\"a\":1}"));    /* same again */
    cmd_admin_put(b, 2, S("clientid:x"), S("{\"user\":1}")); /* another table */
    cmd_admin_delete(b, 3, S("nobody"));
    CU_ASSERT_EQUAL(apply(f, 1, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    CU_ASSERT_EQUAL(res.results[2], FSM_NOOP);
    CU_ASSERT_EQUAL(res.results[3], FSM_OK);
    CU_ASSERT_EQUAL(res.results[4], FSM_NOOP);
    CU_ASSERT_FALSE(fsm_admin_empty(f, 1));
    CU_ASSERT_FALSE(fsm_admin_empty(f, 2));
    CU_ASSERT_TRUE(fsm_admin_empty(f, 3));
    char *v = NULL;
    CU_ASSERT_EQUAL(fsm_admin_get(f, 1, S("clientid:x"), &v), 0);
    CU_ASSERT_STRING_EQUAL(v, "{\"a\":1}");
    free(v);
    CU_ASSERT_EQUAL(fsm_admin_get(f, 3, S("clientid:x"), &v), -ENOENT);
    struct admin_rows rows = {""};
    CU_ASSERT_EQUAL(fsm_admin_scan(f, 1, admin_row, &rows), 0);
    CU_ASSERT_STRING_EQUAL(rows.text, "address:1.2.3.4={};clientid:x={\"a\":1};");
    /* a changed value, a delete */
    cmd_admin_put(b, 1, S("clientid:x"), S("{\"a\":2}"));
    cmd_admin_delete(b, 1, S("address:1.2.3.4"));
    cmd_admin_delete(b, 1, S("address:1.2.3.4"));
    CU_ASSERT_EQUAL(apply(f, 2, b), 0);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    CU_ASSERT_EQUAL(res.results[1], FSM_OK);
    CU_ASSERT_EQUAL(res.results[2], FSM_NOOP);
    rows.text[0] = '\0';
    CU_ASSERT_EQUAL(fsm_admin_scan(f, 1, admin_row, &rows), 0);
    CU_ASSERT_STRING_EQUAL(rows.text, "clientid:x={\"a\":2};");
    /* bad commands are refused by the builder */
    CU_ASSERT_EQUAL(cmd_admin_put(b, 0, S("k"), S("{}")), -EINVAL);
    CU_ASSERT_EQUAL(cmd_admin_put(b, 1, "", 0, S("{}")), -EINVAL);
    assert_checksum_consistent(f);
    /* a snapshot carries the table */
    void *snap;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f, &snap, &len), 0);
    CU_ASSERT_EQUAL(fsm_restore(g, snap, len, false, NULL), 0);
    free(snap);
    CU_ASSERT_EQUAL(fsm_checksum(g), fsm_checksum(f));
    rows.text[0] = '\0';
    CU_ASSERT_EQUAL(fsm_admin_scan(g, 2, admin_row, &rows), 0);
    CU_ASSERT_STRING_EQUAL(rows.text, "clientid:x={\"user\":1};");
    cmd_batch_free(b);
    fsm_close(f);
    fsm_close(g);
    rmdir_free(d1);
    rmdir_free(d2);
}

/* The entry hook: called once per entry in effect (and after a restore),
 * when the route matcher already shows the entry's routes and fsm_visible
 * gives its index; never for a replay. */
struct hook_rec {
    struct fsm *f;
    unsigned calls;
    uint64_t last, visible_at_call;
    int routes_at_call;
};

static void entry_hook(void *ud, uint64_t index)
{
    struct hook_rec *h = ud;
    h->calls++;
    h->last = index;
    h->visible_at_call = fsm_visible(h->f);
    uint64_t n[4];
    h->routes_at_call = routes_nodes(fsm_routes(h->f), S("h/b"), 0, n, 4);
}

static void test_entry_hook(void)
{
    char *d = tmpdir(), *d2 = tmpdir();
    struct hook_rec h = {0};
    struct fsm_options o = {.dir = d, .observer_ud = &h, .on_entry = entry_hook};
    char err[256];
    CU_ASSERT_EQUAL_FATAL(fsm_open(&h.f, &o, err, sizeof err), 0);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 0);
    CU_ASSERT_EQUAL(h.calls, 0);
    struct cmd_batch *b = cmd_batch_new();
    /* the last command's route is in the matcher when the hook runs */
    cmd_route_add(b, S("h/a"), 1);
    cmd_route_add(b, S("h/+"), 2);
    cmd_route_add(b, S("h/b"), 3);
    CU_ASSERT_EQUAL(apply(h.f, 3, b), 0);
    CU_ASSERT_EQUAL(h.calls, 1);
    CU_ASSERT_EQUAL(h.last, 3);
    CU_ASSERT_EQUAL(h.visible_at_call, 3);
    CU_ASSERT_EQUAL(h.routes_at_call, 2);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 3);
    /* an entry whose commands change nothing still counts */
    cmd_route_add(b, S("h/a"), 1);
    CU_ASSERT_EQUAL(apply(h.f, 4, b), 0);
    CU_ASSERT_EQUAL(h.calls, 2);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 4);
    /* a replay: no call, nothing goes back */
    cmd_route_remove(b, S("h/a"), 1);
    CU_ASSERT_EQUAL(apply(h.f, 4, b), 0);
    CU_ASSERT_TRUE(res.skipped);
    CU_ASSERT_EQUAL(h.calls, 2);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 4);
    /* reopened: fsm_visible starts at the applied index */
    fsm_close(h.f);
    CU_ASSERT_EQUAL_FATAL(fsm_open(&h.f, &o, err, sizeof err), 0);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 4);
    /* a restore (here to an earlier index): the hook tells its index */
    struct fsm *f2 = open_fsm(d2);
    cmd_route_add(b, S("z"), 9);
    CU_ASSERT_EQUAL(apply(f2, 2, b), 0);
    void *snap;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(fsm_snapshot(f2, &snap, &len), 0);
    CU_ASSERT_EQUAL(fsm_restore(h.f, snap, len, false, NULL), 0);
    free(snap);
    CU_ASSERT_EQUAL(h.calls, 3);
    CU_ASSERT_EQUAL(h.last, 2);
    CU_ASSERT_EQUAL(fsm_visible(h.f), 2);
    CU_ASSERT_EQUAL(h.routes_at_call, 0);
    cmd_batch_free(b);
    fsm_close(f2);
    fsm_close(h.f);
    rmdir_free(d);
    rmdir_free(d2);
}

/* Many routes: the map grows during an apply and nothing is lost. */
static void test_map_growth(void)
{
    char *d = tmpdir();
    struct fsm_options o = {.dir = d, .map_size = 1 << 20};
    struct fsm *f = NULL;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(fsm_open(&f, &o, err, sizeof err), 0);
    struct cmd_batch *b = cmd_batch_new();
    char s[64];
    uint64_t index = 0;
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 4000; i++) {
            snprintf(s, sizeof s, "grow/%d/%d/%s", round, i, "padding-padding-padding");
            cmd_route_add(b, S(s), 1);
        }
        CU_ASSERT_EQUAL_FATAL(apply(f, ++index, b), 0);
    }
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 40000);
    uint64_t r, x, y, z;
    CU_ASSERT_EQUAL(fsm_counts(f, &r, &x, &y, &z), 0);
    CU_ASSERT_EQUAL(r, 40000);
    assert_checksum_consistent(f);
    struct stat st;
    CU_ASSERT_EQUAL(stat(d, &st), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/data.mdb", d);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_TRUE(st.st_size > (1 << 20)); /* the map grew past 1 MiB */
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* Write text to dir/OPEN, the mark of open tables (storage/rtable.c). */
static void write_mark(const char *dir, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/OPEN", dir);
    FILE *m = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    fputs(text, m);
    fclose(m);
}

static bool mark_exists(const char *dir)
{
    char p[512];
    snprintf(p, sizeof p, "%s/OPEN", dir);
    struct stat st;
    return stat(p, &st) == 0;
}

static void test_machine_stopped_while_open(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    CU_ASSERT_FALSE(fsm_tables_reset(f));
    CU_ASSERT_TRUE(mark_exists(d)); /* open: marked with this boot */
    struct cmd_batch *b = cmd_batch_new();
    CU_ASSERT_EQUAL(cmd_route_add(b, S("m/a"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 3, b), 0);
    fsm_close(f);
    CU_ASSERT_FALSE(mark_exists(d)); /* closed: every commit synced */

    /* The process died (the mark of this boot left behind): the page cache
     * held every commit, the tables are kept. */
    char boot[64] = "";
    FILE *bf = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (bf) {
        if (!fgets(boot, sizeof boot, bf))
            boot[0] = 0;
        fclose(bf);
    }
    if (boot[0]) {
        write_mark(d, boot);
        f = open_fsm(d);
        CU_ASSERT_FALSE(fsm_tables_reset(f));
        CU_ASSERT_EQUAL(fsm_applied(f), 3);
        CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 1);
        fsm_close(f);
    }

    /* The machine stopped while they were open (the mark of another boot):
     * they may be torn on disk; they start empty (Raft's log rebuilds
     * them), and an entry applies as in new tables. */
    write_mark(d, "another boot\n");
    f = open_fsm(d);
    CU_ASSERT_TRUE(fsm_tables_reset(f));
    CU_ASSERT_EQUAL(fsm_applied(f), 0);
    CU_ASSERT_EQUAL(fsm_checksum(f), 0);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 0);
    CU_ASSERT_EQUAL(cmd_route_add(b, S("m/a"), 1), 0);
    CU_ASSERT_EQUAL(apply(f, 3, b), 0);
    CU_ASSERT_FALSE(res.skipped);
    CU_ASSERT_EQUAL(res.results[0], FSM_OK);
    assert_checksum_consistent(f);
    fsm_close(f);

    /* A sync that fails (debug builds: STARLING_TEST_TABLES_SYNC_FAIL):
     * the commits after it fail (-EIO: the state machine is broken), the
     * mark says so, and the next open starts empty. */
#ifndef NDEBUG
    f = open_fsm(d);
    setenv("STARLING_TEST_TABLES_SYNC_FAIL", "1", 1);
    int rc = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* commits until the syncer has failed (bounded: 30 s) */
    for (uint64_t i = 10; rc == 0; i++) {
        CU_ASSERT_EQUAL(cmd_route_add(b, S("m/f"), i), 0);
        rc = apply(f, i, b);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 30)
            break;
    }
    unsetenv("STARLING_TEST_TABLES_SYNC_FAIL");
    CU_ASSERT_EQUAL(rc, -EIO);
    CU_ASSERT_TRUE(fsm_broken(f));
    fsm_close(f);
    CU_ASSERT_TRUE(mark_exists(d));
    f = open_fsm(d);
    CU_ASSERT_TRUE(fsm_tables_reset(f));
    CU_ASSERT_EQUAL(fsm_applied(f), 0);
    fsm_close(f);
    CU_ASSERT_FALSE(mark_exists(d));
#endif
    /* The mark of a failed sync from an earlier run: the same. */
    write_mark(d, "sync failed\n");
    f = open_fsm(d);
    CU_ASSERT_TRUE(fsm_tables_reset(f));
    CU_ASSERT_EQUAL(fsm_applied(f), 0);
    fsm_close(f);
    f = open_fsm(d);
    CU_ASSERT_FALSE(fsm_tables_reset(f));
    fsm_close(f);
    cmd_batch_free(b);
    rmdir_free(d);
}

/* A reader on another thread (a publish) during entries that change a
 * node's routes as a whole: it always finds the route the node keeps. */
struct route_reader {
    struct fsm *f;
    _Atomic int stop;
    unsigned long reads, misses;
};

static void *route_reader_run(void *ud)
{
    struct route_reader *r = ud;
    while (!r->stop) {
        uint64_t nodes[4];
        int n = routes_nodes(fsm_routes(r->f), S("k/x"), 0, nodes, 4);
        if (n != 1 || nodes[0] != 3)
            r->misses++;
        r->reads++;
    }
    return NULL;
}

static void test_node_routes_changed_at_once(void)
{
    char *d = tmpdir();
    struct fsm *f = open_fsm(d);
    struct cmd_batch *b = cmd_batch_new();
    struct cmd_session_sub subs[] = {{S("k/#"), 1, 0}};
    cmd_session_claim(b, S("c1"), 3, 1);
    cmd_session_record(b, S("c1"), 3, 1, 300, 5, NULL, subs, 1, 0, 0, 0);
    cmd_route_add(b, S("k/#"), 3);
    uint64_t index = 1;
    CU_ASSERT_EQUAL_FATAL(apply(f, index++, b), 0);
    struct route_reader r = {.f = f};
    pthread_t th;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, route_reader_run, &r), 0);
    for (int i = 0; i < 400; i++) {
        if (i % 2 == 0) {
            /* a returning node: NodePurge(self) and the routes of its
             * sessions in one entry (cluster_node.c route_take) */
            cmd_node_purge(b, 3);
            char filter[16];
            for (int k = 0; k < 40; k++) {
                snprintf(filter, sizeof filter, "z/%d", k);
                cmd_route_add(b, filter, strlen(filter), 3);
            }
            cmd_route_add(b, S("k/#"), 3);
        } else {
            /* NodeDown keeps the filters of the node's session records */
            cmd_node_down(b, 3);
        }
        CU_ASSERT_EQUAL(apply(f, index++, b), 0);
    }
    r.stop = 1;
    pthread_join(th, NULL);
    CU_ASSERT(r.reads > 0);
    CU_ASSERT_EQUAL(r.misses, 0);
    if (r.misses)
        fprintf(stderr, "\n%lu of %lu reads found no route to node 3\n", r.misses, r.reads);
    CU_ASSERT_EQUAL(routes_count(fsm_routes(f)), 1);
    cmd_batch_free(b);
    fsm_close(f);
    rmdir_free(d);
}

/* The log's description of an entry's route changes (cmd_routes_describe):
 * per node counts and the first filters, no-ops counted apart, NodePurge
 * and NodeDown named, the mask saying whether a route went. */
static void test_routes_described(void)
{
    struct cmd_batch *b = cmd_batch_new();
    char d[512];
    size_t len;
    const void *e;
    cmd_route_add(b, S("a"), 3);
    cmd_route_add(b, S("b/+"), 3);
    cmd_session_claim(b, S("c1"), 3, 1); /* not a route */
    cmd_route_add(b, S("c/#"), 3);
    cmd_route_add(b, S("d"), 3);
    cmd_route_remove(b, S("x"), 4);
    e = cmd_batch_data(b, &len);
    CU_ASSERT_EQUAL(cmd_entry_routes_describe(e, len, d, sizeof d),
                    CMD_ROUTES_ADD | CMD_ROUTES_GONE);
    CU_ASSERT_STRING_EQUAL(d, "0000000000000003 +4 [a, b/+, c/#, ...]; 0000000000000004 -1 [x]");
    cmd_batch_reset(b);
    cmd_route_add(b, S("a"), 3);
    e = cmd_batch_data(b, &len);
    CU_ASSERT_EQUAL(cmd_entry_routes_describe(e, len, d, sizeof d), CMD_ROUTES_ADD);
    cmd_batch_reset(b);
    cmd_session_claim(b, S("c1"), 3, 1);
    e = cmd_batch_data(b, &len);
    CU_ASSERT_EQUAL(cmd_entry_routes_describe(e, len, d, sizeof d), 0);
    CU_ASSERT_STRING_EQUAL(d, "");
    /* as applied: the no-op counted apart; a NodePurge and a NodeDown */
    cmd_batch_reset(b);
    cmd_node_purge(b, 5);
    cmd_route_add(b, S("a"), 5);
    cmd_route_add(b, S("b"), 5);
    cmd_node_down(b, 6);
    e = cmd_batch_data(b, &len);
    const void *pb;
    size_t pb_len;
    CU_ASSERT_EQUAL_FATAL(cmd_entry_unwrap(e, len, &pb, &pb_len), 0);
    Starling__Cmd__CommandBatch *cb = starling__cmd__command_batch__unpack(NULL, pb_len, pb);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cb);
    unsigned char changed[4] = {1, 1, 0, 0};
    CU_ASSERT_EQUAL(cmd_routes_describe(cb, changed, d, sizeof d),
                    CMD_ROUTES_ADD | CMD_ROUTES_GONE);
    CU_ASSERT_STRING_EQUAL(d, "NodePurge(0000000000000005); NodeDown(0000000000000006) no-op; "
                              "0000000000000005 +1 [a] (1 no-op)");
    /* bounded: a short buffer is cut, terminated */
    CU_ASSERT_EQUAL(cmd_routes_describe(cb, NULL, d, 10), CMD_ROUTES_ADD | CMD_ROUTES_GONE);
    CU_ASSERT_STRING_EQUAL(d, "NodePurge");
    /* a NodeDown that changed nothing alone: not a route gone */
    cmd_batch_reset(b);
    cmd_node_down(b, 6);
    e = cmd_batch_data(b, &len);
    starling__cmd__command_batch__free_unpacked(cb, NULL);
    CU_ASSERT_EQUAL_FATAL(cmd_entry_unwrap(e, len, &pb, &pb_len), 0);
    cb = starling__cmd__command_batch__unpack(NULL, pb_len, pb);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cb);
    unsigned char unchanged[1] = {0};
    CU_ASSERT_EQUAL(cmd_routes_describe(cb, unchanged, d, sizeof d), CMD_ROUTES_ADD);
    CU_ASSERT_STRING_EQUAL(d, "NodeDown(0000000000000006) no-op");
    starling__cmd__command_batch__free_unpacked(cb, NULL);
    cmd_batch_free(b);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("fsm", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "routes, replay skipped, reopen", test_apply_routes_and_replay);
    CU_add_test(s, "session claims and epochs", test_session_epochs);
    CU_add_test(s, "retained (origin, seq)", test_retained_origin_seq);
    CU_add_test(s, "members and node purge", test_members_and_purge);
    CU_add_test(s, "session records and node down", test_session_records_and_node_down);
    CU_add_test(s, "session records: the owners' packet ids", test_record_owners_packet_ids);
    CU_add_test(s, "node down: counted routes go with their records", test_node_down_keepers);
    CU_add_test(s, "node down: its sessions expire", test_dead_nodes_sessions_expire);
    CU_add_test(s, "node down: a record counted for its registry owner", test_node_down_owner_kept);
    CU_add_test(s, "long keys", test_long_keys);
    CU_add_test(s, "malformed entry", test_malformed_entry);
    CU_add_test(s, "checksum across environments", test_checksum_across_environments);
    CU_add_test(s, "snapshot and restore", test_snapshot_restore);
    CU_add_test(s, "map growth", test_map_growth);
    CU_add_test(s, "entry hook and fsm_visible", test_entry_hook);
    CU_add_test(s, "operator tables (AdminPut, AdminDelete)", test_admin_tables);
    CU_add_test(s, "tables open when the machine stopped", test_machine_stopped_while_open);
    CU_add_test(s, "a node's routes changed at once for readers", test_node_routes_changed_at_once);
    CU_add_test(s, "an entry's route changes described for the log", test_routes_described);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
