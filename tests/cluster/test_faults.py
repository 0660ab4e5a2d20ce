"""The faults of issue 10 (docs/cluster.md "Faults"), each with real
clients that count what was acknowledged against what arrived: a node
killed under QoS 1/2 traffic, the leader killed, a partition, a rolling
restart, a stalled node, a full disk, the whole cluster killed.

Every fault is undone by the
fixtures even when a test fails (nodes continued, nftables table deleted,
tmpfs unmounted, every process stopped).

STARLING_FAULT_STOP_SECONDS: how long the stalled-node test keeps its node
stopped (default 5; the chaos runner uses 10)."""

import os
import re
import signal
import threading
import time

import pytest

import faults
import mqttraw
from faults import alive, kill, pause, resume, converged_tables, wait_healthy, wait_until
from helpers import PahoClient, uid
from sessions import offline_witnessed, resumed_on, witness_and_publisher
from traffic import Traffic

WAIT = 10
CLAIM_TIMEOUT_MS = 2000
DOWN_AFTER = 5.0  # cluster_down_after's default, seconds
CUT_SECONDS = 8.0  # how long test_partition_nothing_acknowledged_lost cuts a node off
LONG_CUT_SECONDS = 27.0  # test_a_long_cut_heals_within_seconds: past TCP's 25.4 s retransmission
HEALED_WITHIN = 15.0  # and healthy again within this many seconds of the heal
N_BIG_RETAINED = 48  # test_disk_full_replicated_tables_cannot_grow: entries of 64 KiB
RAFT_DISK_MIB = 32  # test_disk_full_raft_log_cannot_grow: the full node's Raft directory
N_RAFT_FILL = 600  # and at most this many entries of 64 KiB (37.5 MiB) to fill it
ROLE_TRIES = 10  # restarts to make that node the leader or a follower
N_LATE = 200  # test_late_messages_acknowledged_before_their_store_are_not_given_again
STOP_SECONDS = float(os.environ.get("STARLING_FAULT_STOP_SECONDS", "5"))

FAULT_ENV = {"STARLING_CLUSTER_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT_MS)}


def connected_after_fault(node, client_id, version=5, tries=5, **kw):
    """An mqttraw client connected to node right after a fault: a CONNECT
    whose claim waits for an election (the leader was killed or stopped)
    is refused with 0x88 (Server unavailable) after cluster_claim_timeout,
    and the client tries again, as clients do."""
    for _ in range(tries):
        cl = mqttraw.Client(node, version=version)
        ack = cl.connect(client_id, **kw)
        if ack.reason_code != 0x88:
            break
        cl.close()
    assert ack.reason_code == 0, f"CONNACK {ack}"
    cl.connack = ack
    return cl


def raw_persistent_subscriber(node, name, qos):
    """An mqttraw 5.0 client on node with a session of 600 s, subscribed to
    topic/# at qos. Returns (cid, topic, props, client)."""
    cid, topic = uid(name), uid(name + "/t")
    props = {"session_expiry_interval": 600}
    s = mqttraw.connected(node, cid, 5, properties=props)
    assert s.subscribe((f"{topic}/#", mqttraw.sub_options(qos=qos))).reason_codes == [qos]
    return cid, topic, props, s


def stored_then_killed(node, sync_topic, to, cid, props):
    """A QoS 1 publish to sync_topic on node, whose PUBACK waits for its
    store batch (committed after every earlier one: one writer, in order),
    then node SIGKILLed; cid resumes on node `to` with session present 1.
    Returns its client."""
    q = mqttraw.connected(node, uid("sync"), 5)
    q.publish(sync_topic, b"sync", qos=1, packet_id=1)
    assert q.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == 1
    kill(node)
    s = connected_after_fault(to, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present, s.connack
    return s


def stored_on_then_killed(a, cid):
    """Every exchange of cid's session finished on node a (its PUBACKs and
    PUBCOMPs in), then a later batch committed there (a persistent
    session's SUBACK waits for its record's commit; batches commit in
    order): what cid's client got is on a's disk; then a is SIGKILLed."""
    session_settled_then_synced(a, cid)
    kill(a)


class Background:
    """fn() on a thread of its own, while the test goes on (a CONNECT whose
    answer waits for what the test does next). join() waits for it;
    result() returns what fn returned, or raises what it raised."""

    def __init__(self, fn):
        self._out = {}

        def run():
            try:
                self._out["value"] = fn()
            except Exception as e:  # noqa: BLE001 (raised again by result)
                self._out["error"] = e
        self._t = threading.Thread(target=run)
        self._t.start()

    def join(self, timeout=90):
        self._t.join(timeout)

    def result(self, timeout=90):
        self.join(timeout)
        if "error" in self._out:
            raise self._out["error"]
        assert "value" in self._out, f"still running after {timeout} s"
        return self._out["value"]


def session_props(seconds=600):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p


@pytest.fixture
def fault_cluster(cluster_factory):
    """A formed 3-node cluster with a short claim timeout; every paused node
    is continued before the cluster is stopped."""
    c = cluster_factory(extra_env=dict(FAULT_ENV))
    c.start()
    c.wait_healthy()
    yield c
    for n in c.nodes:
        resume(n)


@pytest.fixture
def traffic_factory():
    made = []

    def make(cluster, **kw):
        t = Traffic(cluster, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.stop()


@pytest.fixture
def partition_factory():
    reason = faults.nft_available()
    if reason:
        pytest.skip(reason)
    made = []

    def make(cluster, hook="output"):
        p = faults.Partition(cluster, hook)
        made.append(p)
        return p
    yield make
    for p in made:
        p.heal()


def report(name, r):
    print(f"\n[{name}] acknowledged {r['acknowledged']} lost {r['lost']} QoS2-duplicates "
          f"{r['dup2']} QoS1-redeliveries {r['dup1']} misorder {r['misorder']} "
          f"(in fault windows {r['misorder_in_windows']}) sessions lost {r['sessions_lost']}")
    lost = [s for s in r["samples"] if " lost: " in s]
    for s in ([s for s in r["samples"] if " lost: " not in s][:10] + lost[:10]):
        print("   ", s)


def assert_clean(r, what):
    assert not r["errors"], r["errors"]
    assert r["acknowledged"] > 0, f"{what}: nothing was acknowledged"
    assert r["dup2"] == 0, f"{what}: {r['dup2']} QoS 2 duplicates: {r['samples'][:10]}"
    assert r["lost"] == 0, f"{what}: {r['lost']} acknowledged messages lost: {r['samples'][:10]}"


def finish(t, cluster, name, timeout=30):
    """Stop publishing, wait (bounded) for every acknowledged message, check
    the owners and the tables, stop the clients; the counts."""
    t.stop_publishing()
    t.wait_delivered(timeout)
    tabs = converged_tables(cluster)
    owners = t.owners_ok(tabs)
    t.stop()
    r = t.check()
    report(name, r)
    if os.environ.get("STARLING_TEST_KEEP_TMP"):  # beside the nodes' logs
        t.dump(os.path.join(cluster.base, "traffic.txt"))
    return r, owners, tabs


# ------------------------------------------------------------ 1. node killed

def test_node_killed_under_qos12_traffic(fault_cluster, traffic_factory):
    c = fault_cluster
    t = traffic_factory(c).start()
    t.wait_progress(60)
    victim = c.nodes[1]
    moved = [s for s in t.subscribers if s.node is victim]
    t0 = time.monotonic()
    kill(victim)
    # the cluster goes on: messages keep being acknowledged
    t.wait_progress(60, timeout=30)
    # the victim's subscriber is back elsewhere with its session
    for s in moved:
        wait_until(lambda: s.node is not None and s.node is not victim, 30,
                   f"{s.cid} connected to another node")
    victim.start()
    wait_healthy(c)
    t.window(t0)
    t.wait_progress(30)
    r, owners, _ = finish(t, c, "node killed")
    assert not owners, owners
    assert r["sessions_lost"] == 0, \
        f"a persistent session came back without its state: {t.summary_events()}"
    assert_clean(r, "SIGKILL of a node")


KILLS = int(os.environ.get("STARLING_FAULT_KILLS", "4"))


def test_killed_nodes_subscribers_resumed_elsewhere_repeatedly(fault_cluster, traffic_factory):
    """A persistent QoS 2 and a persistent QoS 1 subscriber on one node,
    publishers on every node; the subscribers' node is SIGKILLed mid-stream
    KILLS times (the subscribers resume elsewhere from their records, the
    node returns and moves its copies' messages as late ones; then they
    move back to it, from a live node): every
    acknowledged message arrives at least once, each QoS 2 one once."""
    c = fault_cluster
    victim = c.nodes[2]
    t = traffic_factory(c, subscribers_on=[2, 2], subscriber_qos=[2, 1], pubs_per_node=(1, 2),
                        rate=30.0).start()
    t.wait_progress(60)
    for k in range(KILLS):
        if k:
            # back to the victim (a takeover from a live node: exact)
            for s in t.subscribers:
                s.move_to(victim)
            for s in t.subscribers:
                wait_until(s.moved, 30, f"{s.cid} back on {victim.name} (kill {k})")
            t.wait_progress(60)
        assert all(s.node is victim for s in t.subscribers), t.summary_events()
        t0 = time.monotonic()
        kill(victim)
        for s in t.subscribers:
            wait_until(lambda: s.node is not None and s.node is not victim, 30,
                       f"{s.cid} connected to another node (kill {k})")
        t.wait_progress(30, timeout=30)
        victim.start()
        wait_healthy(c)
        t.window(t0)
        t.wait_progress(60)
    r, owners, _ = finish(t, c, f"subscribers' node killed {KILLS} times")
    assert not owners, owners
    assert r["sessions_lost"] == 0, \
        f"a persistent session came back without its state: {t.summary_events()}"
    assert_clean(r, f"{KILLS} SIGKILLs of the subscribers' node")


def test_session_resumed_elsewhere_gets_what_its_dead_node_held_once(fault_cluster):
    """A persistent QoS 2 subscriber's node is killed and the subscriber
    resumes on another node from its record; messages published then (before
    NodeDown) go both to the new node and, for the dead node's kept route, to
    the publisher's outbox. The node returns and moves what it got for the
    session as late messages: each message arrives exactly once (their
    identity, node/msg_seen.h)."""
    c = fault_cluster
    home, new, pubnode = c.nodes[1], c.nodes[0], c.nodes[2]
    cid = uid("once")
    topic = uid("once/t")
    s = PahoClient(home, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    s.disconnect()
    p = PahoClient(pubnode, uid("oncep"), 5)
    p.connect()
    kill(home)
    t0 = time.monotonic()
    for _ in range(5):
        # home may have led: a claim that waits for the election longer than
        # cluster_claim_timeout is refused with 0x88, and the client tries
        # again, as clients do (a CI run: an election of 2.9 s under load)
        s2 = PahoClient(new, cid, 5, clean=False, properties=session_props())
        ack = s2.connect(timeout=30, expect_rc=None)
        if ack["rc"] != 0x88:
            break
        s2.stop()
    assert ack["rc"] == 0 and s2.session_present, ack
    sent = [f"m{k}".encode() for k in range(30)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    if time.monotonic() - t0 >= DOWN_AFTER:
        pytest.skip("the publishes ended after NodeDown could have removed the dead node's route")
    home.start()
    wait_healthy(c)
    # the returning node hands over what it held (the new node logs it)
    wait_until(lambda: f"of '{cid}' came from" in new.logtext(), 30,
               f"the late messages of {cid} on {new.name}")
    marker = uid("marker").encode()
    p.publish(topic + "/marker", marker, qos=2)
    got = [m.payload for m in s2.get_until(topic + "/marker", 30)]
    assert got[-1] == marker
    got = got[:-1]
    dups = sorted({m for m in got if got.count(m) > 1})
    assert not dups, f"QoS 2 messages delivered twice: {dups}"
    assert sorted(got) == sorted(sent), f"missing: {sorted(set(sent) - set(got))}"
    print(f"\n[resumed once] {len(got)} of {len(sent)} once")
    s2.disconnect()
    p.disconnect()


def acked_qos1(p, topic, n):
    """mqttraw client p publishes m0..m<n-1> to topic at QoS 1, one at a
    time, each acknowledged; returns their payloads."""
    sent = [f"m{k}".encode() for k in range(n)]
    for k, m in enumerate(sent):
        p.publish(topic, m, qos=1, packet_id=k + 1)
        assert p.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == k + 1
    return sent


def test_taken_over_sessions_messages_survive_a_kill_of_its_new_node(fault_cluster):
    """A persistent QoS 1 subscriber S, offline on A with M0..M9 queued,
    resumes on B (a takeover: A sends its state, with the messages, and
    drops them from its copy) with Receive Maximum 1, so that B holds
    M1..M9 undelivered; B is SIGKILLed. S resumes on C from its record; B
    comes back and moves what its copy held: S gets every message. Before,
    B held moved messages in memory only (not in its store until
    delivered): M0..M9 were lost (the same loss, on a few messages, made
    test_killed_nodes_subscribers_resumed_elsewhere_repeatedly an xfail)."""
    c = fault_cluster
    a, b, cn = c.nodes
    cid, topic, props, s = raw_persistent_subscriber(a, "tk", 1)
    s.disconnect()
    p = mqttraw.connected(cn, uid("tkp"), 5)
    sent = acked_qos1(p, f"{topic}/x", 10)
    s2 = mqttraw.connected(b, cid, 5, clean=False,
                           properties=dict(props, receive_maximum=1))
    assert s2.connack.session_present, s2.connack
    first = s2.expect(mqttraw.PUBLISH, timeout=WAIT)  # not acknowledged
    assert first.payload == sent[0], first
    # a QoS 1 publish on B whose PUBACK waits for its store batch, committed
    # after the claim's (one writer, in order): the moved state is on disk
    s3 = stored_then_killed(b, f"{topic}/sync", cn, cid, props)
    b.start()
    wait_healthy(c)
    want = set(sent) | {b"sync"}
    got = []
    deadline = time.monotonic() + 30
    while not want <= set(got) and time.monotonic() < deadline:
        try:
            got.append(s3.recv_publish(timeout=max(0.1, deadline - time.monotonic())).payload)
        except mqttraw.Timeout:
            break
    assert want <= set(got), f"missing: {sorted(want - set(got))} (got {got})"
    print(f"\n[taken over, new node killed] {len(got)} delivered, {len(want)} expected")
    for x in (s3, p):
        x.disconnect()


def test_taken_over_session_answered_once_its_new_node_stored_it(cluster_factory, tmp_path):
    """A persistent QoS 1 subscriber S, offline on A with M0..M9 queued,
    resumes on B, whose store holds every commit (STARLING_TEST_STORE_HOLD,
    debug builds): the CONNACK (session present 1) waits for B's commit of
    the session with the messages it brought, so once S has it, a SIGKILL
    of B loses none of them (S resumes on C; B returns and moves them).
    Before, B answered with the commit submitted, not done: B killed while
    its disk had not answered lost M0..M9 (A had let them go with the
    state it sent)."""
    c = cluster_factory(extra_env=dict(FAULT_ENV))
    a, b, cn = c.nodes
    hold = tmp_path / "hold-b-commits"
    faults.store_held(b, hold)
    c.start()
    c.wait_healthy()
    cid, topic, props, s = raw_persistent_subscriber(a, "cs", 1)
    s.disconnect()
    p = mqttraw.connected(cn, uid("csp"), 5)
    sent = acked_qos1(p, f"{topic}/x", 10)
    hold.touch()
    early = None
    try:
        s2 = mqttraw.Client(b)
        s2.connect(cid, expect=False, clean=False, properties=props)
        wait_until(lambda: f"the session of '{cid}' moved here" in b.logtext(), 30,
                   f"the state of {cid} on {b.name}")
        try:  # a CONNACK that does not wait for the store comes now
            early = s2.recv(timeout=5)
        except mqttraw.Timeout:
            pass
        if early is not None:
            kill(b)  # its store still holds the commit of the session
    finally:
        hold.unlink(missing_ok=True)
    ack = early
    if ack is None:
        ack = s2.expect(mqttraw.CONNACK, timeout=WAIT)
        kill(b)
    assert ack.type == mqttraw.CONNACK and ack.reason_code == 0 and ack.session_present, ack
    s3 = connected_after_fault(cn, cid, 5, clean=False, properties=props, timeout=30)
    assert s3.connack.session_present, s3.connack
    b.start()
    wait_healthy(c)
    got = []
    deadline = time.monotonic() + 30
    while not set(sent) <= set(got) and time.monotonic() < deadline:
        try:
            got.append(s3.recv_publish(timeout=max(0.1, deadline - time.monotonic())).payload)
        except mqttraw.Timeout:
            break
    assert set(sent) <= set(got), \
        f"missing: {sorted(set(sent) - set(got))} (got {got}; CONNACK before the commit: " \
        f"{early is not None})"
    assert early is None, f"CONNACK while {b.name}'s store held the session's commit: {early}"
    for x in (s3, p):
        x.disconnect()


def test_resumed_sessions_packet_ids_keep_away_from_its_dead_copys(fault_cluster):
    """A persistent QoS 2 subscriber S on A got M0's PUBLISH (packet id P)
    and its PUBREL, and has not completed it (as a client whose PUBREL was
    lost in the kill would hold M0, awaiting it); A is SIGKILLed. S resumes
    on B from its record: B numbers its PUBLISHes half the packet id space
    away from A's next id in the record (the middle of the largest gap
    between the next ids of the owners the record names, A's alone here;
    a fixed third from the last owner's while the record kept only its:
    test_third_resumption_from_a_record_keeps_off_the_first_copys_
    packet_ids), so they do not reuse P, which the
    client still holds (paho replaces such a held message by a new PUBLISH
    of the same id: lost). A returns, B takes the unfinished exchange over
    with P and sends its PUBREL. Before, B started at a random place: a
    kill now and then lost a message that way (the open item of
    test_node_killed_under_qos12_traffic)."""
    c = fault_cluster
    a, b, cn = c.nodes
    cid, topic, props, s = raw_persistent_subscriber(a, "pk", 2)
    p = mqttraw.connected(cn, uid("pkp"), 5)

    def publish(payload, k):
        p.publish(f"{topic}/x", payload, qos=2, packet_id=k)
        assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == k
        p.pubrel(k)
        assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == k

    publish(b"m0", 1)
    m0 = s.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert m0.payload == b"m0", m0
    s.pubrec(m0.packet_id)
    assert s.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == m0.packet_id
    # a QoS 1 publish on A whose PUBACK waits for its store batch, committed
    # after the one of the PUBREC (one writer, in order)
    s2 = stored_then_killed(a, uid("pk/none"), b, cid, props)
    publish(b"m1", 2)
    m1 = s2.recv_publish(timeout=WAIT)
    assert m1.payload == b"m1", m1
    d = (m1.packet_id - m0.packet_id) % 65535
    assert min(d, 65535 - d) > 30000, \
        f"packet id {m1.packet_id} on {b.name} near {m0.packet_id}, held from {a.name}"
    a.start()
    wait_healthy(c)
    rel = s2.expect(mqttraw.PUBREL, timeout=30)
    assert rel.packet_id == m0.packet_id, rel
    s2.pubcomp(rel.packet_id)
    print(f"\n[packet ids] {a.name} used {m0.packet_id}, {b.name} {m1.packet_id}; "
          f"PUBREL {rel.packet_id} after the return")
    for x in (s2, p):
        x.disconnect()


def held_awaiting_pubrel(p, s, topic, payload=b"m0", k=1):
    """payload published at QoS 2 by the raw client p (packet id k,
    completed); the raw subscriber s gets it, answers PUBREC and gets the
    PUBREL, which it does not complete yet (as a client whose PUBCOMP was
    lost holds it, awaiting the PUBREL again). Returns its PUBLISH at s."""
    p.publish(f"{topic}/x", payload, qos=2, packet_id=k)
    assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == k
    p.pubrel(k)
    assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == k
    m = s.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert m.payload == payload, m
    s.pubrec(m.packet_id)
    assert s.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == m.packet_id
    return m


def test_adopted_exchange_survives_a_kill_of_its_new_owner(fault_cluster):
    """A persistent QoS 2 subscriber S on A holds M0 (packet id P) awaiting
    PUBREL; A is SIGKILLed, S resumes on B from its record; A returns and
    B takes the unfinished exchange over (adopted, P) and sends its PUBREL,
    which S does not complete. B is SIGKILLed, S resumes on C; B returns:
    the exchange comes back with B's store and C sends the PUBREL of P
    again. Before, an adopted exchange was in B's memory only: C never sent
    it, and M0, which S holds until that PUBREL, was lost."""
    c = fault_cluster
    a, b, cn = c.nodes
    cid, topic, props, s = raw_persistent_subscriber(a, "ax", 2)
    p = mqttraw.connected(cn, uid("axp"), 5)
    m0 = held_awaiting_pubrel(p, s, topic)
    s2 = stored_then_killed(a, uid("ax/none"), b, cid, props)
    a.start()
    wait_healthy(c)
    rel = s2.expect(mqttraw.PUBREL, timeout=30)  # B adopted the exchange
    assert rel.packet_id == m0.packet_id, rel
    s3 = stored_then_killed(b, uid("ax/none"), cn, cid, props)
    b.start()
    wait_healthy(c)
    rel = s3.expect(mqttraw.PUBREL, timeout=30)
    assert rel.packet_id == m0.packet_id, rel
    s3.pubcomp(rel.packet_id)
    print(f"\n[adopted exchange] PUBREL {rel.packet_id} from {cn.name} after {b.name}'s return")
    for x in (s3, p):
        x.disconnect()


def test_routes_of_a_node_that_stays_down_are_purged(fault_cluster):
    c = fault_cluster
    down = c.nodes[2]
    plain = uid("purge/plain")
    x = PahoClient(down, uid("pp"), 5)
    x.connect()
    assert x.subscribe(plain, qos=1) == [1]
    me = faults.node_id(down)
    assert (me, plain) in converged_tables(c)["routes"]
    kill(down)
    t0 = time.monotonic()
    # a non-persistent subscriber's route goes once the node has been down
    # for cluster_down_after (5 s), bounded here by 3 times that
    wait_until(lambda: (me, plain) not in faults.tables(c.nodes[0])["routes"], 3 * DOWN_AFTER,
               f"the route of {down.name}'s {plain} purged")
    print(f"\n[purge] {down.name}'s route purged {time.monotonic() - t0:.1f} s after its death")



def leader_and_followers(c):
    """The leader of cluster c, its two followers B and A, and B's node id."""
    ld = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    b, a = [n for n in c.nodes if n is not ld]
    return ld, b, a, faults.node_id(b)


@pytest.mark.parametrize("load", ["first", "late"])
def test_dead_nodes_sessions_expire_while_it_stays_down(fault_cluster, load):
    """A node that stays down does not keep its sessions forever: once a
    session's expiry interval has passed since the leader took its node for
    dead, the leader releases it (SessionRelease, expired), and its record
    and the route NodeDown kept for it go on every node; a session with a
    longer interval stays, with its route. When the node comes back, its
    copy of the expired session ends there too: its client gets a new
    session (session present 0), the other client its session back. The
    node applies the release as it catches up (`first`: its store loaded
    by then), or finds the id released in its start-up pass (`late`: its
    store loaded after the entries came, STARLING_TEST_START_HOLD_MS, as
    when its tables come as a snapshot)."""
    c = fault_cluster
    ld, b, a, bid = leader_and_followers(c)
    expiry = 4
    short, keep = uid("dexps"), uid("dexpk")
    ts, tk = uid("dexp/s"), uid("dexp/k")
    xs = PahoClient(b, short, 5, clean=False, properties=session_props(expiry))
    xs.connect()
    assert xs.subscribe(ts, qos=1) == [1]
    xk = PahoClient(b, keep, 5, clean=False, properties=session_props(600))
    xk.connect()
    assert xk.subscribe(tk, qos=1) == [1]
    before = converged_tables(c)
    assert {(bid, ts), (bid, tk)} <= before["routes"]
    assert {short, keep} <= before["sessions"]
    kill(b)  # both clients connected: their sessions' intervals start now
    xs.stop()
    xk.stop()
    t0 = time.monotonic()
    wait_until(lambda: short not in faults.tables(ld)["registry"], 3 * DOWN_AFTER + expiry + 10,
               f"{short} released by the leader")
    took = time.monotonic() - t0
    print(f"\n[dead expiry] {short} (expiry {expiry} s) released {took:.1f} s after its node's "
          f"death")
    assert took >= expiry
    after = converged_tables(c)
    assert (bid, ts) not in after["routes"] and short not in after["sessions"]
    assert (bid, tk) in after["routes"] and keep in after["sessions"]
    assert after["registry"][keep][0] == bid
    assert metric_value(ld, "starling_cluster_dead_sessions_released_total") >= 1
    start = len(b.logtext())
    if load == "late":
        c.extra_env["STARLING_TEST_START_HOLD_MS"] = "3000"
    try:
        b.start()
    finally:
        c.extra_env.pop("STARLING_TEST_START_HOLD_MS", None)
    wait_healthy(c)
    ended = re.compile(rf"'{short}' \(claim \d+\) (expired while this node was taken for dead|"
                       rf"was released while this node was down): it ends")
    how = wait_until(lambda: ended.search(b.logtext()[start:]), 30, f"{b.name} ending {short}")
    print(f"[dead expiry] {b.name}: {short} {how.group(1)}")
    assert how.group(1).startswith("expired" if load == "first" else "was released")
    y = PahoClient(b, short, 5, clean=False, properties=session_props(expiry))
    y.connect()
    assert not y.session_present, f"{short} found its expired session on {b.name}"
    y.disconnect()
    z = resumed_on(b, keep)
    z.disconnect()



def test_dead_nodes_sessions_expire_across_leader_changes(fault_cluster):
    """A dead node's session expires on time also across a change of
    leader: the leader counts from when the node's silence passed
    cluster_down_after by its own measure, which it kept as a follower too,
    not from its own election. Node b dies with a 20 s session; 10 s later
    the leader is SIGKILLed and started again until the other follower a
    leads (b's NodeDown was committed by then). a must release the session
    less than its interval after a's election, about death + down_after +
    interval. Before, each new leader began the count again: the release
    came a whole interval after a's election (a cluster whose leadership
    changed more often than a session's interval never expired it). (With
    a 10 s session, three restarts to make a the leader under the whole
    suite's load took until after the release was due: failed once.)"""
    c = fault_cluster
    ld, b, a, bid = leader_and_followers(c)
    expiry = 20
    short = uid("lexps")
    x = PahoClient(b, short, 5, clean=False, properties=session_props(expiry))
    x.connect()
    assert x.subscribe(uid("lexp/s"), qos=1) == [1]
    wait_until(lambda: short in faults.tables(a)["registry"], WAIT, f"{short} registered")
    kill(b)
    x.stop()
    t0 = time.monotonic()
    wait_until(lambda: "its routes go (NodeDown)" in ld.logtext(), 3 * DOWN_AFTER,
               f"{b.name} taken for dead")
    time.sleep(max(0.0, t0 + 10 - time.monotonic()))  # the fault's moment, 10 s after
    for _ in range(ROLE_TRIES):
        kill(ld)
        ld.start()
        now = wait_until(lambda: faults.leader(c, among=[a, ld]), 30, "a leader")
        elected = time.monotonic()
        if now == a.name:
            break
        ld = faults.node_named(c, now)
    else:
        pytest.skip(f"{a.name} was not made the leader in {ROLE_TRIES} restarts")
    assert short in faults.tables(a)["registry"], "released before the leader changed"
    wait_until(lambda: short not in faults.tables(a)["registry"], 60, f"{short} released")
    done = time.monotonic()
    print(f"\n[dead expiry] {short} (expiry {expiry} s) released {done - t0:.1f} s after its "
          f"node's death, {done - elected:.1f} s after {a.name} was elected")
    assert done - t0 >= expiry
    assert done - elected < expiry - 3, (
        f"released {done - elected:.1f} s after the new leader's election: it counted from "
        f"there")


def test_forgotten_nodes_sessions_expire(fault_cluster):
    """A dead node forgotten by the operator (`starling ctl cluster forget`)
    is no member any more, and its sessions still expire: the leader
    releases each once its interval has passed since the node was
    forgotten (or taken for dead); a session that never expires stays, and
    its client resumes it elsewhere."""
    from test_ctl import ctl, members, wait_for
    c = fault_cluster
    ld, b, a, bid = leader_and_followers(c)
    expiry = 3
    short, never = uid("fexps"), uid("fexpn")
    ts, tn = uid("fexp/s"), uid("fexp/n")
    for cid, topic, seconds in ((short, ts, expiry), (never, tn, 0xFFFFFFFF)):
        x = PahoClient(b, cid, 5, clean=False, properties=session_props(seconds))
        x.connect()
        assert x.subscribe(topic, qos=1) == [1]
        x.disconnect()
    converged_tables(c)
    kill(b)
    wait_for(lambda: not members(a)[b.name]["reachable"], 30)
    rc, out = ctl(a, "cluster", "forget", b.name)
    assert rc == 0, out
    t0 = time.monotonic()
    wait_until(lambda: short not in faults.tables(ld)["registry"], expiry + 3 * DOWN_AFTER,
               f"{short} of the forgotten {b.name} released")
    print(f"\n[forgotten expiry] {short} (expiry {expiry} s) released "
          f"{time.monotonic() - t0:.1f} s after {b.name} was forgotten")
    after = converged_tables(c)
    assert (bid, ts) not in after["routes"] and short not in after["sessions"]
    # (a forgotten node's routes went with it: the session is resumed
    # elsewhere from its record)
    assert after["registry"][never][0] == bid and never in after["sessions"]
    y = PahoClient(a, short, 5, clean=False, properties=session_props(expiry))
    y.connect()
    assert not y.session_present
    y.disconnect()
    z = resumed_on(a, never)
    z.disconnect()


def metric_value(node, name):
    """A counter or gauge without labels from node's GET /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://{node.host}:{node.admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in {node.name}'s /metrics")


def copies_held_cluster(cluster_factory, tmp_path, claim_timeout_ms, **holds):
    """A formed cluster with debug logs, the given cluster_claim_timeout,
    old copies held collecting while tmp_path/moving-hold exists
    (STARLING_TEST_MOVING_HOLD) and each node's reports held while
    tmp_path/reports-held-NAME exists (and the hooks of `holds`, as
    hold_files_per_node reads them). Returns the cluster, the moving
    hold's path, the leader and the two followers."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV,
                                       STARLING_CLUSTER_CLAIM_TIMEOUT=str(claim_timeout_ms),
                                       STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    hold_files_per_node(c, tmp_path, STARLING_TEST_REPORTS_HOLD="reports-held", **holds)
    c.start()
    c.wait_healthy()
    lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
    a, b = [n for n in c.nodes if n is not lead]
    return c, hold, lead, a, b


def hold_files_per_node(c, tmp_path, **holds):
    """Each node of c reads each debug hook VAR of holds as the file
    tmp_path/PREFIX-NAME (holds: VAR=PREFIX, NAME the node's name)."""
    from conftest import Node
    for n in c.nodes:
        n.env = (lambda n=n: {**Node.env(n), **{var: str(tmp_path / f"{prefix}-{n.name}")
                                                 for var, prefix in holds.items()}})


def down_cluster(cluster_factory, tmp_path, down_after_ms):
    """fault_cluster with a shorter cluster_down_after, each node reading
    STARLING_TEST_REPORTS_HOLD=tmp_path/reports-held-NAME (debug builds):
    while that file exists the node sends neither its chan.Applied reports
    nor its checkpoints, so the channel carries nothing from it to the
    leader while Raft goes on; and
    STARLING_TEST_TABLES_SYNC_HOLD=tmp_path/sync-held-NAME: while that file
    exists, an fdatasync of the node's replicated tables does not return
    (a disk that does not answer); a held sync creates sync-held-NAME.held."""
    env = dict(FAULT_ENV)
    env["STARLING_CLUSTER_DOWN_AFTER"] = str(down_after_ms)
    c = cluster_factory(extra_env=env)
    hold_files_per_node(c, tmp_path, STARLING_TEST_REPORTS_HOLD="reports-held",
                        STARLING_TEST_TABLES_SYNC_HOLD="sync-held")
    c.start()
    c.wait_healthy()
    return c


class HeldFollower:
    """A follower of a down_cluster with a clean QoS 1 subscriber, and a
    publisher on the other follower: the two tests of a live node that a
    fault makes look silent."""

    def __init__(self, c, prefix):
        self.c = c
        self.lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
        self.held, other = [n for n in c.nodes if n is not self.lead]
        self.topic = uid(f"{prefix}/t")
        self.sub = PahoClient(self.held, uid(f"{prefix}sub"), 5, keepalive=120)
        self.sub.connect()
        assert self.sub.subscribe(self.topic, qos=1) == [1]
        self.me = faults.node_id(self.held)
        assert (self.me, self.topic) in converged_tables(c)["routes"]
        self.pub = PahoClient(other, uid(f"{prefix}pub"), 5, keepalive=120)
        self.pub.connect()
        self.sent = 0

    def publish_for(self, seconds):
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            self.pub.publish(self.topic, f"m{self.sent}".encode(), qos=1)
            self.sent += 1
            time.sleep(0.1)  # the pace of the publishes during the fault

    def received(self):
        got = set()
        deadline = time.monotonic() + WAIT
        while len(got) < self.sent and time.monotonic() < deadline:
            try:
                got.add(self.sub.messages.get(timeout=0.5).payload.decode())
            except Exception:
                continue
        return got

    def assert_alive(self, got):
        assert "this node was taken for dead" not in self.held.logtext(), \
            "a live node was taken for dead"
        assert "(NodeDown)" not in self.lead.logtext()
        assert metric_value(self.lead, "starling_cluster_nodes_down_total") == 0
        assert not self.sub.disconnected.is_set(), "the clean subscriber was disconnected"
        assert (self.me, self.topic) in converged_tables(self.c)["routes"]
        assert len(got) == self.sent, f"{self.sent - len(got)} of {self.sent} missing"
        self.sub.disconnect()
        self.pub.disconnect()


def test_a_node_silent_on_the_channel_but_heard_by_raft_is_not_taken_for_dead(cluster_factory,
                                                                            tmp_path):
    """A follower that serves, answers Raft, but sends the leader nothing on
    the forwarding channel for three times cluster_down_after (its reports
    and checkpoints held back: on a loaded machine they were late behind a
    slow thread, and live followers were taken for dead every 30 s or so,
    their clean subscribers losing messages silently) is not taken for
    dead: the leader judges by Raft too. Its clean subscriber gets every
    message published meanwhile on another node."""
    down_after = 3.0  # well above a loaded node's pauses: only the hold may count
    h = HeldFollower(down_cluster(cluster_factory, tmp_path, int(down_after * 1000)), "alive")
    hold = tmp_path / f"reports-held-{h.held.name}"
    hold.touch()
    try:
        # (nothing here asks the admin API, whose answers would go over the
        # channel: the held node must send the leader nothing)
        h.publish_for(3 * down_after)
    finally:
        hold.unlink()
    got = h.received()
    print(f"\n[silent channel] {h.held.name}'s reports held {3 * down_after:.0f} s "
          f"(cluster_down_after {down_after:.0f} s): its subscriber got {len(got)} of {h.sent}")
    h.assert_alive(got)


def test_a_node_whose_tables_wait_for_the_disk_is_not_taken_for_dead(cluster_factory, tmp_path):
    """A follower whose replicated tables wait for their disk (an fdatasync
    that does not return) for three times cluster_down_after is alive: it
    is not taken for dead (the thread that answers Raft and the channel
    does not wait for the tables' disk), its clean subscriber stays
    connected, and gets every message another node published meanwhile."""
    down_after = 3.0
    h = HeldFollower(down_cluster(cluster_factory, tmp_path, int(down_after * 1000)), "disk")
    hold = tmp_path / f"sync-held-{h.held.name}"
    took = tmp_path / f"sync-held-{h.held.name}.held"
    hold.touch()
    try:
        # a Raft entry (a retained message), so that the held node's tables
        # commit, and wait for their sync
        h.pub.publish(uid("disk/r"), b"r", qos=1, retain=True)
        wait_until(took.exists, WAIT, f"{h.held.name}'s tables' sync held")
        h.publish_for(3 * down_after)
    finally:
        hold.unlink()
    got = h.received()
    print(f"\n[tables' disk] {h.held.name}'s tables' sync held {3 * down_after:.0f} s "
          f"(cluster_down_after {down_after:.0f} s): its subscriber got {len(got)} of {h.sent}, "
          f"{'disconnected' if h.sub.disconnected.is_set() else 'connected'}")
    h.assert_alive(got)


def test_tables_open_when_the_machine_stopped_are_rebuilt_from_the_raft_log(fault_cluster):
    """The replicated tables' commits do not wait for their disk (a thread
    syncs after them), so a machine that stops may leave them torn on disk;
    while they are open they carry the mark of the running boot. A node
    killed (the same boot) keeps them; a node whose tables carry the mark
    of another boot (as after a machine stop) starts them empty and
    rebuilds them from its Raft snapshot and log: equal to the others', and
    it serves from them (a retained message, a route)."""
    c = fault_cluster
    x = c.nodes[2]
    topic_r, topic = uid("boot/r"), uid("boot/t")
    pub = PahoClient(c.nodes[0], uid("bpub"), 5)
    pub.connect()
    pub.publish(topic_r, b"kept", qos=1, retain=True)
    before = converged_tables(c)
    assert topic_r in before["retained"]
    kill(x)
    mark = os.path.join(x.dir, "cluster", "fsm", "OPEN")
    assert os.path.exists(mark), "a killed node's tables have no mark"
    with open(mark, "w") as f:
        f.write("another boot\n")
    x.start()
    wait_until(lambda: "were open when the machine stopped" in x.logtext(), WAIT,
               f"{x.name} starting its tables empty")
    wait_healthy(c)
    after = converged_tables(c)
    assert topic_r in after["retained"] and after["applied"] >= before["applied"]
    sub = PahoClient(x, uid("bsub"), 5)
    sub.connect()
    assert sub.subscribe(topic_r, qos=1) == [1]
    assert sub.get().payload == b"kept"
    assert sub.subscribe(topic, qos=1) == [1]
    pub.publish(topic, b"after", qos=1)
    assert sub.get().payload == b"after"
    sub.disconnect()
    pub.disconnect()


def test_a_node_taken_for_dead_ends_its_clean_subscribers(cluster_factory, tmp_path):
    """A follower stopped (SIGSTOP) beyond cluster_down_after is taken for
    dead: the leader removes the routes of its clean sessions (those of its
    persistent sessions stay). Once it runs again, it learns it, and ends
    its clean sessions that subscribed (they may have missed messages): the
    5.0 client gets DISCONNECT 0x89 (Server busy), the 3.1.1 one a closed
    connection; its persistent session and a clean session without
    subscriptions stay connected; the counters say so, and a client that
    subscribes again there gets what is published."""
    down_after = 2.0
    c = down_cluster(cluster_factory, tmp_path, int(down_after * 1000))
    lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
    x, other = [n for n in c.nodes if n is not lead]
    t_clean, t_kept = uid("dead/clean"), uid("dead/kept")
    # raw clients: to see the DISCONNECT and its reason code
    clean5 = mqttraw.connected(x, uid("c5"), keepalive=120)
    assert clean5.subscribe([(t_clean, mqttraw.sub_options(qos=1))]).reason_codes == [1]
    clean3 = mqttraw.connected(x, uid("c3"), version=4, keepalive=120)
    assert clean3.subscribe([(t_clean, mqttraw.sub_options(qos=1))]).reason_codes == [1]
    kept = PahoClient(x, uid("p5"), 5, keepalive=120, properties=session_props())
    kept.connect()
    assert kept.subscribe(t_kept, qos=1) == [1]
    idle = PahoClient(x, uid("idle"), 5, keepalive=120)
    idle.connect()
    me = faults.node_id(x)
    routes = converged_tables(c)["routes"]
    assert (me, t_clean) in routes and (me, t_kept) in routes
    pause(x)
    try:
        t0 = time.monotonic()
        wait_until(lambda: (me, t_clean) not in faults.tables(lead)["routes"], 5 * down_after + WAIT,
                   f"{x.name}'s clean route removed (NodeDown)")
        gone = time.monotonic() - t0
        assert (me, t_kept) in faults.tables(lead)["routes"], "a persistent session's route went"
    finally:
        resume(x)
    print(f"\n[taken for dead] {x.name} stopped: its clean route went {gone:.1f} s after the stop "
          f"(cluster_down_after {down_after:.0f} s)")
    clean5.expect_disconnect(0x89, timeout=WAIT)
    clean3.expect_closed_without_disconnect(timeout=WAIT)
    wait_until(lambda: "2 clean session(s) with subscriptions ended" in x.logtext(), WAIT,
               f"{x.name}'s log line")
    assert not kept.disconnected.is_set() and not idle.disconnected.is_set()
    assert metric_value(x, "starling_cluster_taken_for_dead_total") >= 1
    assert metric_value(x, "starling_cluster_sessions_ended_taken_for_dead_total") == 2
    assert metric_value(lead, "starling_cluster_nodes_down_total") >= 1
    # the node serves as before: its persistent subscriber and a new clean
    # subscriber get what another node publishes
    wait_healthy(c)
    again = PahoClient(x, uid("c5b"), 5, keepalive=120)
    again.connect()
    assert again.subscribe(t_clean, qos=1) == [1]
    pub = PahoClient(other, uid("dpub"), 5)
    pub.connect()
    pub.publish(t_clean, b"after", qos=1)
    pub.publish(t_kept, b"kept", qos=1)
    assert again.get().payload == b"after"
    assert kept.get().payload == b"kept"
    for k in (again, pub, kept, idle):
        k.stop()
    clean5.close()
    clean3.close()


def test_a_stalled_leader_takes_nobody_for_dead(cluster_factory, tmp_path):
    """The leader stopped (SIGSTOP) for three times cluster_down_after: the
    others elect another leader and take the stopped one for dead; the old
    leader, running again, reads their bytes late, but its judgement counts
    its own running time, not the time it was stopped: it takes neither
    follower for dead (their clean subscribers stay connected)."""
    down_after = 3.0
    c = down_cluster(cluster_factory, tmp_path, int(down_after * 1000))
    old = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
    others = [n for n in c.nodes if n is not old]
    subs = []
    for n in others:
        s = mqttraw.connected(n, uid("ls"), keepalive=120)
        assert s.subscribe([(uid("ls/t"), mqttraw.sub_options(qos=1))]).reason_codes == [1]
        subs.append(s)
    pause(old)
    try:
        wait_until(lambda: faults.leader(c, others), 20, "a new leader")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * down_after:
            time.sleep(0.1)  # the stall lasts that long (that is the fault)
    finally:
        resume(old)
    wait_healthy(c)
    for n in others:
        assert "this node was taken for dead" not in n.logtext(), f"{n.name} taken for dead"
    assert "(NodeDown)" not in old.logtext(), "the old leader took a follower for dead"
    for s in subs:
        s.pingreq()
        assert s.recv(timeout=WAIT).type == mqttraw.PINGRESP
        s.close()


# ------------------------------------------------------------ 2. leader killed

def test_leader_killed_new_leader_quickly_nothing_committed_lost(cluster):
    # Issue 10's bound (a new leader within 2 s) is a time: measured alone on
    # the machine (make test's cluster-timed part), as the other timed parts
    # are. Among the cluster part's ASan nodes on 2 cores it measured 2.016
    # and 2.167 s in two whole runs (1.1 to 1.3 s alone).
    if os.environ.get("STARLING_TEST_HEAVY") != "1":
        pytest.skip("timed: runs alone as make test's cluster-timed part (STARLING_TEST_HEAVY=1)")
    c = cluster  # the default cluster_claim_timeout (5 s): a CONNECT may wait that long
    name = wait_until(lambda: faults.leader(c), 20, "a leader")
    old = faults.node_named(c, name)
    survivors = [n for n in c.nodes if n is not old]
    # committed state: routes, registrations (persistent sessions), retained
    keep = []
    topics = []
    for i, n in enumerate(c.nodes):
        cid = uid(f"lk{i}")
        x = PahoClient(n, cid, 5, properties=session_props())
        x.connect()
        assert x.subscribe(f"lk/{cid}/#", qos=1, timeout=WAIT) == [1]
        x.disconnect()
        keep.append(cid)
        topic = uid(f"lk/ret{i}")
        p = PahoClient(n, uid("lkp"), 5)
        p.connect()
        p.publish(topic, f"kept-{i}".encode(), qos=1, retain=True)
        p.disconnect()
        topics.append(topic)
    # retained messages are proposed after their PUBACK: wait until applied
    wait_until(lambda: all(t in faults.tables(n)["retained"] for t in topics for n in c.nodes),
               WAIT, "the retained messages in every node's tables")
    before = converged_tables(c)
    for cid in keep:
        assert cid in before["registry"]
    for topic in topics:
        assert topic in before["retained"]

    # CONNECT + SUBSCRIBE on a survivor throughout the election
    stalls = []  # (CONNECT seconds, SUBSCRIBE seconds)
    failures = []
    stop = threading.Event()

    def probe():
        k = 0
        while not stop.is_set():
            k += 1
            t1 = time.monotonic()
            try:
                x = PahoClient(survivors[k % 2], uid("probe"), 5)
                x.connect(timeout=WAIT)
                t2 = time.monotonic()
                x.subscribe(uid("probe/t"), qos=1, timeout=WAIT)
                stalls.append((t2 - t1, time.monotonic() - t2))
                x.disconnect()
            except AssertionError as e:
                failures.append(str(e))
                x.stop()

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    wait_until(lambda: len(stalls) >= 3, 20, "CONNECT/SUBSCRIBE before the kill")
    n_before = len(stalls)
    t0 = time.monotonic()
    wall0 = time.time()
    kill(old)
    new = wait_until(lambda: faults.leader(c, survivors), 10, "a new leader", interval=0.01)
    seen = time.monotonic() - t0
    # the admin API names the leader once it won the vote; its log line
    # follows when its barrier is applied: wait for it (bounded)
    since = wait_until(lambda: faults.leader_serving_since(faults.node_named(c, new), wall0),
                       10, f"{new} logging that it leads and serves")
    elected = since - wall0
    print(f"\n[leader killed] {old.name} killed, {new} leads and serves after {elected:.3f} s "
          f"(its log); both survivors name it after {seen:.3f} s (the admin API)")
    # probes that ran during the election, and a few after it
    wait_until(lambda: len(stalls) >= n_before + 5, 30, "CONNECT/SUBSCRIBE after the election")
    stop.set()
    th.join(2 * WAIT)
    worst_c = max(x[0] for x in stalls[n_before:])
    worst_s = max(x[1] for x in stalls[n_before:])
    print(f"[leader killed] longest CONNECT across the election {worst_c:.3f} s, "
          f"longest SUBSCRIBE {worst_s:.3f} s")
    assert new != old.name
    assert elected < 2.0, f"a new leader after {elected:.3f} s (wanted < 2 s)"
    assert not failures, failures
    assert worst_c < seen + 1.0, \
        f"CONNECT stalled {worst_c:.3f} s, the election took {elected:.3f} s"
    # a SUBACK also waits for every live member (docs/cluster.md, "Routes
    # and SUBACK"): the dead leader counts as live for cluster_down_after
    # (5 s); test_subscribe_stall_with_a_dead_member holds issue 10's bound
    assert worst_s < max(seen, DOWN_AFTER) + 1.5, \
        f"SUBSCRIBE stalled {worst_s:.3f} s, the election took {elected:.3f} s"
    # nothing committed is lost on the survivors
    after = converged_tables(c)
    assert before["routes"] <= after["routes"], before["routes"] - after["routes"]
    for cid in keep:
        assert after["registry"].get(cid) == before["registry"][cid]
    for topic in topics:
        assert after["retained"].get(topic) == before["retained"][topic]
    for n in survivors:
        s = PahoClient(n, uid("lkr"), 5)
        s.connect()
        s.subscribe("lk/#", qos=1)
        got = sorted(s.get(WAIT).payload for _ in topics)
        assert got == sorted(f"kept-{i}".encode() for i in range(3)), got
        s.disconnect()
    # and the old leader comes back as a follower with the same tables
    old.start()
    wait_healthy(c)
    final = converged_tables(c)
    assert {cid: final["registry"].get(cid) for cid in keep} == \
        {cid: before["registry"][cid] for cid in keep}


def test_retained_published_during_the_election_is_replicated(cluster):
    """A retained message acknowledged while there is no leader is proposed
    again until it commits: every node has it once a leader is back."""
    c = cluster
    lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
    survivors = [n for n in c.nodes if n is not lead]
    pubs = [PahoClient(n, uid("rp"), 5) for n in survivors]
    for p in pubs:
        p.connect()
    kill(lead)
    topics = []
    for i in range(10):  # during the election (and a little after)
        topic = uid(f"re/{i}")
        pubs[i % 2].publish(topic, f"during-{i}".encode(), qos=1, retain=True)
        topics.append(topic)
    wait_until(lambda: faults.leader(c, survivors), 20, "a new leader")
    try:
        wait_until(lambda: all(t in faults.tables(n)["retained"] for t in topics
                               for n in survivors), 15, "the retained messages everywhere")
    except AssertionError:
        missing = {n.name: [t for t in topics if t not in faults.tables(n)["retained"]]
                   for n in survivors}
        raise AssertionError(f"acknowledged retained messages not replicated: {missing}") from None
    for p in pubs:
        p.disconnect()


def test_subscribe_stall_with_a_dead_member(fault_cluster):
    c = fault_cluster
    lead = wait_until(lambda: faults.leader(c), 10, "a leader")
    dead = next(n for n in c.nodes if n.name != lead)
    other = next(n for n in c.nodes if n.name != lead and n is not dead)
    x = PahoClient(other, uid("st"), 5)
    x.connect()
    kill(dead)
    worst = 0.0
    for i in range(5):
        t1 = time.monotonic()
        assert x.subscribe(uid(f"st/{i}"), qos=1, timeout=WAIT) == [1]
        worst = max(worst, time.monotonic() - t1)
    print(f"\n[dead member] longest SUBSCRIBE right after {dead.name} died: {worst:.3f} s")
    x.disconnect()
    assert worst < 2.0, f"SUBSCRIBE stalled {worst:.3f} s with a dead member"


# ------------------------------------------------------------ 3. partition

def test_partition_minority_refuses_majority_goes_on(fault_cluster, partition_factory):
    c = fault_cluster
    lead = wait_until(lambda: faults.leader(c), 10, "a leader")
    minority = next(n for n in c.nodes if n.name != lead)  # a follower (chaos.py cuts leaders)
    majority = [n for n in c.nodes if n is not minority]
    # clients on the minority before the cut: local traffic, and a
    # persistent session that the majority will take over
    local_sub = PahoClient(minority, uid("msub"), 5)
    local_sub.connect()
    assert local_sub.subscribe("local/#", qos=1) == [1]
    local_pub = PahoClient(minority, uid("mpub"), 5)
    local_pub.connect()
    owned = uid("owned")
    stale = PahoClient(minority, owned, 5, properties=session_props())
    stale.connect()

    part = partition_factory(c)
    t_cut = time.monotonic()
    part.isolate(minority)
    # the majority has (or elects) a leader of its own and goes on
    wait_until(lambda: faults.leader(c, majority), 15, "a leader in the majority")
    print(f"\n[partition] majority leader after {time.monotonic() - t_cut:.2f} s")
    s = PahoClient(majority[0], uid("maj"), 5)
    s.connect(timeout=WAIT)
    topic = uid("maj/t")
    assert s.subscribe(topic, qos=1) == [1]
    p = PahoClient(majority[1], uid("majp"), 5)
    p.connect(timeout=WAIT)
    for i in range(20):
        p.publish(topic, f"m{i}".encode(), qos=1)
    assert [s.get(WAIT).payload for _ in range(20)] == [f"m{i}".encode() for i in range(20)]
    # a takeover in the majority of a session whose connection is on the
    # minority: accepted (the registry lives with the majority)
    taker = PahoClient(majority[0], owned, 5, clean=False, properties=session_props())
    taker.connect(timeout=WAIT + CLAIM_TIMEOUT_MS / 1000)

    # the minority refuses a CONNECT that needs the registry, after the
    # claim timeout: 5.0 0x88, 3.1.1 return code 3
    for version, rc in ((5, 0x88), (4, 3)):
        t1 = time.monotonic()
        x = PahoClient(minority, uid("minor"), version)
        x.connect(timeout=WAIT + CLAIM_TIMEOUT_MS / 1000, expect_rc=rc)
        waited = time.monotonic() - t1
        x.stop()
        assert waited >= CLAIM_TIMEOUT_MS / 1000 * 0.9, f"refused after {waited:.2f} s only"
        assert waited < CLAIM_TIMEOUT_MS / 1000 + 3, f"refused after {waited:.2f} s"
    # its health says 503 (no leader known): a load balancer sends new
    # clients elsewhere
    wait_until(lambda: minority.health() == 503, WAIT, f"health 503 on the cut {minority.name}")
    # clients already connected there keep working locally
    for i in range(10):
        local_pub.publish("local/x", f"l{i}".encode(), qos=1)
    assert [local_sub.get(WAIT).payload for _ in range(10)] == [f"l{i}".encode()
                                                               for i in range(10)]

    part.heal()
    t_heal = time.monotonic()
    wait_healthy(c)
    print(f"[partition] healthy {time.monotonic() - t_heal:.2f} s after the heal")
    # one owner per client id: the minority's connection of `owned` goes
    assert stale.disconnected.wait(WAIT), "the minority's stale connection of a client id " \
        "taken over in the majority is still connected after the heal"
    assert not taker.disconnected.is_set(), f"the majority's owner was kicked: {taker.disconnect_rc}"
    tabs = converged_tables(c)
    assert faults.node_of_id(c, tabs["registry"][owned][0]) == majority[0].name, \
        f"{owned} owned by {faults.node_of_id(c, tabs['registry'][owned][0])}, " \
        f"taken over on {majority[0].name}, minority {minority.name}"
    # and the cluster works across the healed cut
    q = PahoClient(minority, uid("after"), 5)
    q.connect(timeout=WAIT)
    q.publish(topic, b"healed", qos=1)
    assert s.get(WAIT).payload == b"healed"
    for x in (local_sub, local_pub, s, p, taker, q):
        x.disconnect()


def test_a_member_cut_off_from_raft_alone_stalls_no_resume_or_subscribe_elsewhere(
        cluster_factory, partition_factory):
    """A follower F is cut off from the others' Raft alone (nftables on the
    Raft port): it knows no leader and applies nothing, but its channel
    goes on (it reports, answers requests and forwards). A persistent QoS 1
    subscriber S, on F, resumes on the other follower A, and a new
    subscriber T subscribes there. Before, A's claim and SUBACK waited for
    F to apply their routes, that is until the cut healed: S's CONNECT was
    refused (0x88) after connect_timeout and T got no SUBACK. Now F's
    reports say how long it has known no leader, and past
    CN_SYNC_LEADERLESS_MS (3 s) A does not wait for it, as for a silent
    member: S resumes (session present 1) and T gets its SUBACK.
    F's old copy of S then has its SessionRouted while F has not applied
    A's routes: F's own clients' publishes to S still match that copy
    only. It stays past its grace until F applied them (F counts as a
    member not clear for it) and passes them on: S gets m0..m9, published
    on F during the cut, each once. Ended at its grace, they matched
    nothing on F and were lost."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    c.start()
    c.wait_healthy()
    x = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    f, a = [n for n in c.nodes if n is not x]
    fid = f"{faults.node_id(f):016x}"
    cid, topic = uid("leaderless"), uid("leaderless/t")
    s = PahoClient(f, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=1) == [1]
    p = PahoClient(f, uid("leaderlessp"), 5)
    p.connect()
    part = partition_factory(c)
    part.cut([f], [x, a], raft_only=True)
    wait_until(lambda: f.health() == 503, WAIT, f"{f.name} knowing no leader")
    t0 = time.monotonic()
    s.stop()
    s = resumed_on(a, cid, timeout=WAIT)
    resumed_s = time.monotonic() - t0
    t = PahoClient(a, uid("leaderlesst"), 5)
    t.connect()
    t0 = time.monotonic()
    assert t.subscribe(uid("leaderless/u"), qos=1) == [1]
    subscribed_s = time.monotonic() - t0
    print(f"\n[leaderless member] {f.name} cut off from Raft alone: S resumed on {a.name} "
          f"{resumed_s:.1f} s after {f.name} knew no leader, a SUBACK there in {subscribed_s:.1f} s")
    # what an operator of A reads
    assert re.search(rf"INFO cluster: {f.name} \({fid}\) has known no Raft leader for \d+ ms "
                     r"\(cut off from the leader\?\): SUBACKs and claims no longer wait for it",
                     a.logtext())
    # F's copy of S: routed, its grace over, F itself not clear for it
    # (before: it ended)
    stays = (f"the old copy of '{cid}' stays past its time: this node has not applied its new "
             "owner's routes yet")
    ended = f"the old copy of '{cid}' ends"
    wait_until(lambda: stays in f.logtext() or ended in f.logtext(), WAIT,
               f"{f.name}'s copy of {cid} past its grace")
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=1)
    got = [s.get(WAIT).payload for _ in sent]
    part.heal()
    wait_healthy(c)
    assert sorted(got) == sorted(sent)
    p.publish(topic + "/x", b"healed", qos=1)
    assert s.get(WAIT).payload == b"healed"  # nothing again before it
    again = f"INFO cluster: {f.name} ({fid}) knows a Raft leader again: SUBACKs and claims wait"
    wait_until(lambda: again in a.logtext(), WAIT, f"{a.name} logging {f.name}'s leader again")
    for y in (s, t, p):
        y.disconnect()


def test_partition_nothing_acknowledged_lost(fault_cluster, traffic_factory, partition_factory):
    c = fault_cluster
    t = traffic_factory(c).start()
    t.wait_progress(60)
    minority = c.nodes[2]
    majority = c.nodes[:2]
    part = partition_factory(c)
    t0 = time.monotonic()
    part.isolate(minority)
    wait_until(lambda: faults.leader(c, majority), 15, "a leader in the majority")
    t.wait_progress(60, timeout=30)  # the majority goes on
    # the cut lasts past cluster_down_after and the channel's liveness, so
    # that the connections across it break (a short cut is hidden by TCP)
    while time.monotonic() < t0 + CUT_SECONDS:
        time.sleep(0.1)
    part.heal()
    wait_healthy(c)
    t.window(t0)
    t.wait_progress(30)
    r, owners, _ = finish(t, c, "partition")
    assert not owners, owners
    assert_clean(r, "partition of one node")


@pytest.mark.parametrize("hook", ["output", "input"])
def test_a_long_cut_heals_within_seconds(fault_cluster, partition_factory, hook):
    """Node A is cut off for LONG_CUT_SECONDS while B sends to it (its
    reports, and a publisher's forwards to a persistent subscriber on A,
    64 KiB each). What B wrote into the cut stays unacknowledged, and TCP
    sends it again with a doubling backoff (from 0.2 s on loopback: at
    12.6 s and 25.4 s into the cut, then at 51 s); with B's socket buffer
    full, no write of B's makes it send sooner. Once the cut heals, every
    node must take every other for reachable within HEALED_WITHIN seconds,
    and the subscriber get every message B acknowledged meanwhile, in
    order. Before, B's channel connection waited for that next
    retransmission: healthy 26.4 s after the heal, 3 runs of 3 (chaos seed
    11101 with --hold 15,60: not within 30 s of a cut of 55 s). Now the
    kernel gives the connection up (cluster/tcp_bounds.h, TCP_USER_TIMEOUT)
    and it is dialled again: 0.5 and 1.5 s. `input` drops the packets as
    they arrive, not as they leave (faults.Partition): then Raft's own
    connections, which carry the leader's heartbeats, wait the same way
    unless bounded. Before they were, A applied nothing until 25.8 to 27.7 s
    after the heal in 4 runs of 7 (the other three 0.6 to 1.2 s); since,
    0.4 to 1.5 s in 5 of 5."""
    c = fault_cluster
    a, b, _ = c.nodes
    topic = uid("longcut/t")
    s = PahoClient(a, uid("longcutsub"), 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic, qos=1) == [1]
    p = PahoClient(b, uid("longcutpub"), 5)
    p.connect()
    p.publish(topic, b"before", qos=1)
    assert s.get(WAIT).payload == b"before"
    part = partition_factory(c, hook)
    # first A's packets to B alone: B's forward of "during" reaches A, and
    # A's acknowledgement of it is lost, so that B's connection has data in
    # flight when the cut begins, as a loaded one has (without, what the
    # kernel's output hook drops was never in flight, and the next write
    # after the heal goes out at once)
    part.one_way(a, b)
    p.publish(topic, b"during", qos=1)
    assert s.get(WAIT).payload == b"during"
    t0 = time.monotonic()
    part.isolate(a)
    sent = []
    while time.monotonic() < t0 + LONG_CUT_SECONDS:
        # 64 KiB each: what B writes for A (and writes again, unacknowledged)
        # fills its socket's buffer, so that no write of B's pushes TCP to
        # send once the cut heals
        payload = f"m{len(sent)} ".encode() + bytes(64 << 10)
        p.publish(topic, payload, qos=1)  # PUBACK: B holds it for A
        sent.append(payload)
        time.sleep(0.5)  # a message every half second through the cut
    part.heal()
    t1 = time.monotonic()
    took = wait_healthy(c, 60)
    got = [s.get(60).payload for _ in sent]
    arrived = time.monotonic() - t1
    print(f"\n[long cut] {LONG_CUT_SECONDS:.0f} s cut: healthy {took:.1f} s after the heal, "
          f"the {len(sent)} messages published meanwhile arrived {arrived:.1f} s after it")
    assert [g[:8] for g in got] == [x[:8] for x in sent] and got == sent
    assert took < HEALED_WITHIN and arrived < HEALED_WITHIN, \
        f"healthy {took:.1f} s and every message there {arrived:.1f} s after a cut of " \
        f"{LONG_CUT_SECONDS:.0f} s healed"
    s.disconnect()
    p.disconnect()


def test_a_route_change_held_across_a_cut_is_not_applied_after_later_ones(fault_cluster,
                                                                          partition_factory):
    """Issue 10 (chaos seed 1875013960: a node without a route for its own
    subscriber's filter for 12 s, 104 lost). A follower P's route batch
    (the RouteRemove of an UNSUBSCRIBE) goes to the leader L just as L is
    cut off, and waits in TCP. P, told of the new leader, proposes it there
    again and goes on: the client subscribes again, SUBACK. After the heal
    TCP brought the old batch to L, a follower by then, which relayed it to
    the new leader: the RouteRemove committed after the RouteAdd, and what
    was published on the third node for P's subscriber matched no route
    (acknowledged, lost) until P's routes changed again. Every message
    published on Q for the next 8 s (TCP resends the held bytes within a few
    seconds of the heal) must arrive."""
    c = fault_cluster
    lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 10, "a leader"))
    p_node, q_node = [n for n in c.nodes if n is not lead]
    topic = uid("held/t")
    s = PahoClient(p_node, uid("heldsub"), 5)
    s.connect()
    assert s.subscribe(topic, qos=1) == [1]
    pub = PahoClient(q_node, uid("heldpub"), 5)
    pub.connect()
    part = partition_factory(c)
    part.isolate(lead)
    s.unsubscribe(topic)  # its RouteRemove goes to the cut leader
    wait_until(lambda: faults.leader(c, [p_node, q_node]), 15, "a leader of the other two")
    assert s.subscribe(topic, qos=1) == [1]  # the RouteAdd is in effect on P and Q
    pub.publish(topic, b"before the heal", qos=1)
    assert s.get(WAIT).payload == b"before the heal"
    part.heal()
    wait_healthy(c)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() < t0 + 8.0:  # each message waits for the one before
        payload = f"m{i}".encode()
        pub.publish(topic, payload, qos=1)  # PUBACK: acknowledged
        try:
            got = s.get(WAIT).payload
        except AssertionError:
            got = None
        assert got == payload, f"message {i}, published on {q_node.name} " \
            f"{time.monotonic() - t0:.1f} s after the cluster was healthy again and " \
            f"acknowledged, did not reach the subscriber on {p_node.name} (got {got!r})"
        i += 1
    print(f"\n[held route batch] {i} messages after the heal, all delivered")
    s.disconnect()
    pub.disconnect()


def subscriber_on_a_publisher_on_c(c, name):
    """A persistent QoS 1 subscriber S of topic/# on A (the first node), a
    publisher P on C (the third); a first message from P reached S.
    Returns (S's client id, topic, S, P)."""
    a, _, cn = c.nodes
    cid, topic = uid(name), uid(name + "/t")
    s = PahoClient(a, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=1) == [1]
    p = PahoClient(cn, uid(name + "p"), 5)
    p.connect()
    p.publish(topic + "/x", b"before", qos=1)
    assert s.get(WAIT).payload == b"before"
    return cid, topic, s, p


def test_forwards_held_by_a_cut_off_node_reach_a_session_that_moved_meanwhile(
        fault_cluster, partition_factory):
    """Chaos seed 11800 with --links --overlap (567 messages lost at two
    subscribers), made deterministic. A persistent QoS 1 subscriber S on A,
    a publisher on C. C is cut off; the messages it acknowledges meanwhile
    wait in its outbox for A, routed there with the tables of then. S moves
    to B (A and B are a majority, and C counts as down: B's routes are
    everywhere without it), and A's old copy of S gets B's SessionRouted.
    The cut lasts past the copy's grace (6 s). Once healed, C's forwards
    reach A: its copy must pass them on to S on B. Before, the copy had
    ended at its grace and they matched nothing on A: lost."""
    c = fault_cluster
    a, b, cn = c.nodes
    cid, topic, s, p = subscriber_on_a_publisher_on_c(c, "heldcut")
    part = partition_factory(c)
    part.isolate(cn)
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=1)  # PUBACK: C holds it for A
    s.disconnect()
    s = resumed_on(b, cid, timeout=30, tries=5)
    time.sleep(9)  # the cut outlasts the grace of A's copy (6 s after the move)
    part.heal()
    got = [s.get(30).payload for _ in sent]
    assert sorted(got) == sorted(sent)
    s.disconnect()
    p.disconnect()


def test_reports_of_a_node_whose_outbox_loads_keep_an_old_copy_waiting(cluster_factory,
                                                                        tmp_path):
    """Chaos seed 18011 with --resend --more --weight restart-all=8 (2
    messages lost at one subscriber), made deterministic. A persistent QoS
    1 subscriber S on A, a publisher on C. C's forwards to A wait in its
    outbox (STARLING_TEST_FWD_HOLD) while C acknowledges M0..M9; S moves to
    B, and A's old copy of S stays for them (C's reports name the outbox's
    rows). C is SIGKILLed and started again, its outbox's load held
    (STARLING_TEST_OUTBOX_HOLD); once its reports have reached A, with an
    index past B's routes (a SUBACK on A waits for them), the load goes on
    and C replays M0..M9 to A. A's copy must pass them on to S on B.
    Before, a report sent before the outbox was loaded said it was empty,
    A took C for clear and the copy ended: the replay matched nothing on A
    (lost)."""
    fwd_hold, outbox_hold = tmp_path / "fwd-hold", tmp_path / "outbox-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    a, b, cn = c.nodes
    cn.env = (lambda base: lambda: {**base(), "STARLING_TEST_FWD_HOLD": str(fwd_hold),
                                    "STARLING_TEST_OUTBOX_HOLD": str(outbox_hold)})(cn.env)
    c.start()
    c.wait_healthy()
    cid, topic, s, p = subscriber_on_a_publisher_on_c(c, "outboxreport")
    fwd_hold.write_text(f"{faults.node_id(a):016x}")
    sent = [f"m{k}".encode() for k in range(10)]
    try:
        for m in sent:
            p.publish(topic + "/x", m, qos=1)  # PUBACK: C holds it for A
        s.disconnect()
        s = resumed_on(b, cid, timeout=30)
        stays = f"the old copy of '{cid}' stays past its time: {faults.node_id(cn):016x} has " \
            "not sent all it routed"
        wait_until(lambda: stays in a.logtext(), 30, f"A's copy of {cid} waiting for C")
        p.stop()
        kill(cn)
        fwd_hold.unlink()
        outbox_hold.touch()
        start = len(cn.logtext())
        cn.start()
        wait_until(lambda: "the outbox's load waits (STARLING_TEST_OUTBOX_HOLD)" in cn.logtext(),
                   30, "C holding its outbox's load")
        # the index A's copy waits for C to be clear for: B's routes'
        applied = int(re.search(re.escape(stays) + r".*\(entry (\d+)\)", a.logtext()).group(1))

        def caught_up():  # (C's admin API starts once its outbox is loaded)
            got = re.findall(r"entry (\d+) applied|route matcher loaded \(entry (\d+)\)",
                             cn.logtext()[start:])
            return max((int(x or y) for x, y in got), default=0) >= applied
        wait_until(caught_up, 30, "C applying B's routes")
        wait_until(lambda: faults.hears(a, cn), 30, "A hearing C's reports")
        # a SUBACK on A waits until every live member reported the route's
        # entry applied: C's report of a later index has reached A
        w = PahoClient(a, uid("outboxreportw"), 5)
        w.connect()
        assert w.subscribe(uid("outboxreport/w"), qos=1) == [1]
        w.disconnect()
    finally:
        fwd_hold.unlink(missing_ok=True)
        outbox_hold.unlink(missing_ok=True)
    got = [s.get(30).payload for _ in sent]
    assert sorted(got) == sorted(sent)
    s.disconnect()


@pytest.mark.parametrize("stopped", [False, True], ids=["cut", "cut_and_stopped"])
def test_forwards_held_for_a_restarted_node_reach_its_sessions_new_owner_after_a_long_cut(
        fault_cluster, partition_factory, stopped):
    """A persistent QoS 1 subscriber S on A, a publisher on C. A is
    SIGKILLed: what C acknowledges for S meanwhile waits in C's outbox for
    A (A's routes stay for S). S resumes on B from its record. C is cut
    off, and A is started again: its stored copy of S, claimed away, sends
    on what it holds and must stay until C is back and has sent its
    outbox, which A's copy passes on to S on B. Before, the copy ended at
    the latest 30 s after A's start (RESTART_SETTLE_CAP_MS); the cut lasting
    longer, C's forwards then matched nothing on A: lost. [cut_and_stopped]:
    A is also SIGSTOPped for 10 s across those 30 s, so that when it
    continues, B too looks silent to it; the copy, not ending on that
    (chaos seed 11950 with --hold 15,60: 3 lost), stays as well."""
    c = fault_cluster
    a, b, cn = c.nodes
    cid, topic, s, p = subscriber_on_a_publisher_on_c(c, "heldrestart")
    kill(a)
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=1)  # PUBACK: C holds it for A
    s.stop()
    s = resumed_on(b, cid, timeout=30, tries=5)
    part = partition_factory(c)
    part.isolate(cn)
    a.start()
    if stopped:
        time.sleep(24)
        pause(a)
        time.sleep(10)  # past RESTART_SETTLE_CAP_MS (30 s) after A's start
        resume(a)
        time.sleep(3)  # the cut outlasts A's first look at the copy after it continued
    else:
        time.sleep(35)  # the cut outlasts RESTART_SETTLE_CAP_MS (30 s) after A's start
    part.heal()
    got = []
    while len(got) < len(sent):
        m = s.get(30).payload
        if m != b"before":  # QoS 1: its PUBACK may not have been stored before the kill
            got.append(m)
    assert sorted(got) == sorted(sent)
    s.disconnect()
    p.disconnect()


# ------------------------------------------------------------ 4. rolling restart

def test_rolling_restart_persistent_subscribers_follow(fault_cluster, traffic_factory):
    """Every node in turn SIGTERMed, started again, healthy; the persistent
    subscribers follow their node's shutdown to the next node: nothing
    acknowledged lost, no QoS 2 duplicate, one owner per client id. (What it
    took: the stopping node hands its sessions over whole, an old copy
    sends what still comes for 6 s after the new owner's SessionRouted, a
    claim whose leader stopped finds its own earlier attempt; docs/cluster.md
    'A rolling restart'.)"""
    c = fault_cluster
    t = traffic_factory(c).start()
    t.wait_progress(60)
    t0 = time.monotonic()
    rcs = faults.rolling_restart(c, after_start=lambda n: t.wait_progress(30, timeout=30))
    t.window(t0)
    assert rcs == {"n1": 0, "n2": 0, "n3": 0}, rcs
    r, owners, _ = finish(t, c, "rolling restart")
    assert not owners, owners
    assert_clean(r, "rolling restart")


def test_sigterm_hands_a_persistent_session_over_whole(fault_cluster):
    """A SIGTERMed node waits (at most cluster_claim_timeout) for its
    persistent sessions to be claimed where their clients reconnect, and
    hands them over whole: S has a QoS 2 message past PUBREC (the client
    waits for its PUBREL, and delivers it only then, as paho does) and one
    sent and not acknowledged. On the next node S is present at once and
    gets the PUBREL and the PUBLISH (DUP 1) with their packet ids. Before,
    the stopping node exited at once: the claim waited for no answer, S
    came from its record without them, and the stored copy's messages came
    as late ones after its restart, the PUBREL'd one dropped (its client
    "had it"): never delivered (test_rolling_restart_..., a few per run)."""
    sigterm_handover(fault_cluster)


def test_sigterm_hand_over_waits_for_an_answer_on_its_way(cluster_factory):
    """As above, with the stopping node's answer to the claimant's request
    slowed down between taking the session out of its surrendered ones
    and counting it as moving out (STARLING_TEST_ANSWER_DELAY_MS). Its
    hand-over found nothing left in that moment, the node stopped before
    the state went out, and the claimant resumed S from its record after
    cluster_claim_timeout (seen once in a whole make test, without the
    delay): S then got neither the PUBREL nor m2 at once. Now the answer in
    progress counts."""
    c = cluster_factory(extra_env={**FAULT_ENV, "STARLING_TEST_ANSWER_DELAY_MS": "300"})
    c.start()
    c.wait_healthy()
    sigterm_handover(c)


def sigterm_handover(c):
    """test_sigterm_hands_a_persistent_session_over_whole on cluster c."""
    a, b = c.nodes[0], c.nodes[1]
    sid, topic = uid("ho"), f"ho/{uid('t')}"
    s = mqttraw.connected(a, sid, 5, properties={"session_expiry_interval": 600})
    s.subscribe((f"{topic}/#", mqttraw.sub_options(qos=2)))
    pub = mqttraw.connected(b, uid("hop"), 5)

    def publish(payload):
        pub.publish(f"{topic}/x", payload, qos=2)
        rec = pub.expect(mqttraw.PUBREC, timeout=WAIT)
        pub.pubrel(rec.packet_id)
        pub.expect(mqttraw.PUBCOMP, timeout=WAIT)

    publish(b"m1")
    m1 = s.expect(mqttraw.PUBLISH, timeout=WAIT)
    s.pubrec(m1.packet_id)
    assert s.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == m1.packet_id
    publish(b"m2")  # sent to S, not acknowledged
    m2 = s.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert (m1.payload, m2.payload) == (b"m1", b"m2")
    a.proc.send_signal(signal.SIGTERM)
    s.expect_disconnect(0x8B, timeout=WAIT)  # server shutting down
    s2 = mqttraw.connected(b, sid, 5, clean=False, properties={"session_expiry_interval": 600})
    assert s2.connack.session_present, s2.connack
    # the stopping node answered with the session: B did not wait out
    # cluster_claim_timeout and resume it from its record (a log line, not
    # the CONNACK's time: that varies with the machine's load)
    assert f"no session state for '{sid}' from its old node" not in b.logtext()
    rel = s2.expect(mqttraw.PUBREL, timeout=WAIT)
    assert rel.packet_id == m1.packet_id
    again = s2.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert (again.payload, again.packet_id, again.dup) == (b"m2", m2.packet_id, True)
    s2.pubcomp(rel.packet_id)
    s2.pubrec(again.packet_id)
    assert s2.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == again.packet_id
    s2.pubcomp(again.packet_id)
    assert a.proc.wait(WAIT) == 0  # (a second SIGTERM would end the hand-over)
    a.stop()
    # A waited for nothing, or for S until it was claimed (the claim may
    # complete before A counts what it waits for: then it logs no count)
    assert "the others resume from their records" not in a.logtext()
    # nothing more comes for S (its old copy's late messages, if any, are
    # taken once)
    with pytest.raises(mqttraw.Timeout):
        p = s2.recv(timeout=1.0)
        raise AssertionError(f"unexpected {p}")
    a.start()
    wait_healthy(c)
    s2.disconnect()
    pub.disconnect()


def resumed_on_a(cluster_factory, tmp_path, name):
    """A cluster whose nodes hold old copies of moved sessions while the
    file `hold` exists (STARLING_TEST_MOVING_HOLD), and a persistent QoS 2
    subscriber S of topic/# that was on node B: B stopped (SIGTERM, its
    store keeps S's copy) and S resumed on A from its record. Returns (c,
    hold, cid, topic, s); B is down."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_TEST_MOVING_HOLD=str(hold)))
    c.start()
    c.wait_healthy()
    a, b, _ = c.nodes
    cid = uid(name)
    topic = uid(name + "/t")
    s = PahoClient(b, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    assert b.stop(signal.SIGTERM) == 0
    s.stop()
    s = resumed_on(a, cid, timeout=30)
    return c, hold, cid, topic, s


def delivered_before_a_marker(s, p, topic):
    """What subscriber s gets before a marker that p publishes (QoS 2) on
    topic/marker: after everything else it was to get."""
    p.publish(topic + "/marker", uid("marker").encode(), qos=2)
    return [m.payload for m in s.get_until(topic + "/marker", 30)][:-1]


def none_delivered_again(what, s, p, topic, detail=lambda: "", also=()):
    """Subscriber s gets nothing again before a marker that p publishes:
    prints what it got with `what` and detail() (read after the marker),
    asserts none, and disconnects s, the clients in `also`, and p."""
    again = delivered_before_a_marker(s, p, topic)
    print(f"\n[{what}] {len(again)} delivered again{detail()}")
    assert again == [], f"QoS 2 messages delivered twice: {again}"
    for c in (s, *also, p):
        c.disconnect()


def none_again_after_late_messages(sender, owner, cid, s, p, topic, what, timeout):
    """Once `owner` has taken late messages of cid from `sender` (its log
    says so, also for an empty last frame), subscriber s gets none of them
    again: nothing comes before a marker that p publishes."""
    came = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(sender):016x}")
    wait_until(lambda: came.findall(owner.logtext()), timeout,
               f"{owner.name} taking {sender.name}'s late messages of {cid}")
    none_delivered_again(what, s, p, topic,
                         lambda: f" on {owner.name}; late messages from {sender.name}: "
                         f"{came.findall(owner.logtext())}")


def raw_got_before_a_marker(s, publish):
    """What raw subscriber s gets (its QoS 1 and 2 exchanges completed)
    before a marker that publish(marker) publishes: after everything else
    it was to get."""
    marker = uid("marker").encode()
    publish(marker)
    out = []
    while (m := s.recv_publish(30).payload) != marker:
        out.append(m)
    return out


def released_then_logged(held, node, text, start, what):
    """The hold file `held` removed, node's log (from `start` on) says
    `text` within 30 s."""
    held.unlink()
    wait_until(lambda: text in node.logtext()[start:], 30, what)


def connected_once_stored(y, node, cid, props, start):
    """y, a raw client whose CONNACK for cid on node came (y.connack). The
    CONNECT's wait (cluster_claim_timeout) may end just before the claim's
    own wait for the old owner's state: refused with 0x88, it connects
    again, as clients do, once that claim's session is stored (node's log
    from `start` on). Returns the client connected."""
    if y.connack.reason_code != 0x88:
        return y
    staged = re.compile(rf"'{re.escape(cid)}' \(claim \d+\) stored with")
    wait_until(lambda: staged.search(node.logtext()[start:]), 30,
               f"{node.name} storing the session of its claim of {cid}")
    y.close()
    return connected_after_fault(node, cid, clean=False, properties=props, timeout=30)


def copy_collecting_what_s_got(cluster_factory, tmp_path, name):
    """The start of the two tests below: a persistent QoS 2 subscriber S
    on node B; B restarts (SIGTERM) while S moves to A (resumed from its
    record); B's stored copy of S, claimed away, collects what is published
    for S, held by STARLING_TEST_MOVING_HOLD (the file `hold`); S gets
    M0..M19 (`sent`, published by p on C) on A. Returns (c, hold, cid,
    topic, s, p, sent)."""
    c, hold, cid, topic, s = resumed_on_a(cluster_factory, tmp_path, name)
    p, sent = b_returns_collecting(c, hold, cid, topic, s, name)
    return c, hold, cid, topic, s, p, sent


def b_returns_collecting(c, hold, cid, topic, s, name):
    """B (down, its stored copy of S claimed away by A) starts with the
    copies held; S, on A, gets M0..M19 (`sent`), published by p on C, which
    the held copy collects too. Returns (p, sent)."""
    a, b, cn = c.nodes
    hold.write_text("")
    b.start()
    wait_healthy(c)
    # B found its stored copy claimed away by A (catching up, in its
    # start-up pass, or asked by A's claim): the copy collects what comes
    # for S, held
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name} finding its copy of {cid} claimed away")
    p, sent = twenty_delivered(cn, name + "p", topic, s, in_order=False)
    return p, sent


def test_restarted_nodes_copies_of_a_session_deliver_each_qos2_message_once(cluster_factory,
                                                                             tmp_path):
    """Seed 101 of the chaos runner (SIGTERM restarts), made deterministic:
    a persistent QoS 2 subscriber S on node B; B restarts while S moves to
    A, and B's stored copy of S (claimed away while B was down) collects
    what is published for S until its messages follow S (held here by the
    debug hook STARLING_TEST_MOVING_HOLD). S gets M0..M19 on A; then A
    restarts and S moves to C. When B's copy sends M0..M19 as late
    messages, none may reach S again: S had them on A, so A, passing them
    on, leaves them out (its own old copy of S knows), or C drops them
    (before: the identities
    S got on A were in A's memory only, lost with its restart, and C
    delivered all 20 a second time)."""
    c, hold, cid, topic, s, p, sent = copy_collecting_what_s_got(cluster_factory, tmp_path, "twice")
    a, _, cn = c.nodes
    # A restarts; S moves to C
    assert a.stop(signal.SIGTERM) == 0
    s.stop()
    a.start()
    wait_healthy(c)
    s = resumed_on(cn, cid, timeout=30)
    # B's copy sends what it collected (M0..M19): to A, which passes it on
    # (leaving out what its own old copy of S knows S had: all of them,
    # when that copy is still there) or C takes them. A copy that answered
    # A's request (held while B was down) with its state collects none of
    # them (routed once A had its routes: the owners rule): its last frame
    # comes empty, passed on by A.
    mark = len(a.logtext())
    hold.unlink()
    late = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from \S+, "
                      rf"(\d+) of them had come directly")
    passed = re.compile(rf"(\d+) late message\(s\) for '{re.escape(cid)}' \(claim \d+\) "
                        rf"passed on to its owner \S+ \(claim \d+\), (\d+) left out")

    def judged():
        if any(int(n) >= len(sent) for n, _ in late.findall(cn.logtext())):
            return True
        return any(int(n) == 0 and int(left) >= len(sent)
                   for n, left in passed.findall(a.logtext())) or \
            bool(passed.findall(a.logtext()[mark:]))
    wait_until(judged, 30, f"B's {len(sent)} late messages of {cid} judged on {a.name} or "
               f"{cn.name}")
    none_delivered_again("restarted copies", s, p, topic,
                         lambda: f" on {cn.name}; late messages (count, had come directly): "
                         f"{late.findall(cn.logtext())}; passed on by {a.name} (count, left "
                         f"out): {passed.findall(a.logtext())}")


def test_killed_owners_copy_judges_late_messages_passed_through_it(cluster_factory, tmp_path):
    """Chaos seed 44, made deterministic: a persistent QoS 2 subscriber S
    on node B; B restarts while S moves to A, and B's stored copy of S
    (claimed away) collects M0..M19 (held by STARLING_TEST_MOVING_HOLD)
    while S gets them on A. A is SIGKILLed; S resumes on C from its
    replicated record, which knows nothing of M0..M19. B's copy sends its
    20 late messages to A, its addressee; A, back, passes them on to C.
    A's own stored copy of S knows S had them (the identities are written
    with the session's record whenever one of its messages leaves the
    store), so A leaves them out: C delivers none again. Before, A's store
    held the identities of S's connect only (a SIGKILL forgot those got
    since), A passed all 20 on, and C delivered all 20 a second time."""
    c, hold, cid, topic, s, p, sent = copy_collecting_what_s_got(cluster_factory, tmp_path,
                                                                 "through")
    a, b, cn = c.nodes
    stored_on_then_killed(a, cid)
    s.stop()
    s = resumed_on(cn, cid, timeout=30, tries=3)
    # B's copy sends what it collected to A, its addressee, which is down
    # (none of M0..M19 when the copy answered A's request, held while B
    # was down, with its state: routed once A had its routes, they stay
    # out by the owners rule; its last frame comes empty)
    hold.unlink()
    sent_b = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' sent to its owner")
    wait_until(lambda: any(int(n) >= len(sent) or int(n) == 0
                           for n in sent_b.findall(b.logtext())), 30,
               f"{b.name} sending its copy's late messages of {cid}")
    a.start()
    wait_healthy(c)
    passed = re.compile(rf"(\d+) late message\(s\) for '{re.escape(cid)}' \(claim \d+\) "
                        rf"passed on to its owner \S+ \(claim \d+\), (\d+) left out")
    # or, when B's resent frame reaches A, restarting, before A has found
    # its stored copy of S: A rebuilds S from its record for it ("is not
    # here ... rebuilt from its record"), then, applying C's claim, sends
    # that copy's messages on to C as an ended copy's last frame, which C
    # judges by its own identities (3 of 20 runs under load, 2026-12-02)
    came = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(a):016x}")
    wait_until(lambda: passed.findall(a.logtext()) or came.findall(cn.logtext()), 30,
               f"{a.name} passing on B's late messages of {cid}")
    none_delivered_again("through a killed owner", s, p, topic,
                         lambda: f" on {cn.name}; passed on, left out: "
                         f"{passed.findall(a.logtext())}; came to {cn.name} from {a.name}: "
                         f"{came.findall(cn.logtext())}")


def test_returning_copy_leaves_out_what_its_restarted_owner_got_directly(cluster_factory,
                                                                       tmp_path):
    """Chaos seed 572744100 (every node SIGKILLed), made deterministic: a
    persistent QoS 2 subscriber S on node B; B stops (SIGTERM) and S
    resumes on A from its record, B's store keeps its copy. A is SIGKILLed
    and started again (B still down): S reconnects to A, its owner, whose
    session comes from A's store and no longer records the identities it
    gets (that is for SESSION_SEEN_RECORD_MS after a move). B starts: its
    stored copy, claimed away, stays subscribed until it ends (held here by
    STARLING_TEST_MOVING_HOLD) and collects M0..M19, which S gets directly
    on A. Then the copy sends what it holds to A. Before, it sent M0..M19
    and A delivered all 20 a second time (nothing told it S had them); now
    the copy knows the owner's routes were everywhere when it found its
    session claimed away (the owner's session record), so what was routed
    since reached the owner directly and is not taken: none comes again."""
    c, hold, cid, topic, s = resumed_on_a(cluster_factory, tmp_path, "direct")
    a, b, _ = c.nodes
    kill(a)
    s.stop()
    a.start()
    wait_until(lambda: faults.leader(c), 30, "a leader of A and C")
    s = resumed_on(a, cid, timeout=30)
    p, _ = b_returns_collecting(c, hold, cid, topic, s, "direct")
    # B's copy ends and sends what it holds to A (its last frame, also when
    # empty: A logs it)
    hold.unlink()
    none_again_after_late_messages(b, a, cid, s, p, topic, "returning copy", 30)


def test_late_messages_acknowledged_before_their_store_are_not_given_again(cluster_factory):
    """Chaos seed 7, made deterministic: a persistent QoS 2 subscriber S
    on node B; B is SIGKILLed; N_LATE messages, published on C, wait in
    C's outbox for B; S resumes on A from its record. B comes back: its
    stored copy of S, claimed away, takes them and sends them to A as late
    messages, which S gets there. The batch that stores them on A was
    submitted after the whole frame was queued (here also delayed by the
    debug hook STARLING_TEST_LATE_SUBMIT_DELAY_MS), so S's
    acknowledgements (deleting them) could reach the store before it and
    their rows stayed. A is then SIGKILLed and started again and S
    reconnects there: before, A's copy of S held the early ones again and
    S got them a second time (main: 20 of 200); now late messages wait for
    their commit before they go out, and none comes again."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_TEST_LATE_SUBMIT_DELAY_MS="500"))
    c.start()
    c.wait_healthy()
    a, b, cn = c.nodes
    cid = uid("lateack")
    topic = uid("lateack/t")
    s = PahoClient(b, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    kill(b)
    s.stop()
    p = PahoClient(cn, uid("lateackp"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(N_LATE)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    s = resumed_on(a, cid, timeout=30)
    b.start()
    got = [s.get(30).payload for _ in sent]
    assert sorted(got) == sorted(sent)
    late = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}")
    assert late.findall(a.logtext()), f"the messages did not come to {a.name} as late messages"

    stored_on_then_killed(a, cid)
    s.stop()
    a.start()
    wait_healthy(c)
    s = resumed_on(a, cid, timeout=30)
    none_delivered_again("late messages acknowledged early", s, p, topic,
                         lambda: f" on {a.name}")


def test_forwards_routed_before_a_session_moved_to_their_node_are_not_given_again(
        cluster_factory, partition_factory):
    """Chaos seed 1081842757, made deterministic: a persistent QoS 2
    subscriber S on node B (the leader), another subscriber T of the same
    topics on C, a publisher on A. A is cut off from C (B still hears both):
    S gets M0..M19 on B, their forwards to C (for T) wait in A's outbox. S
    moves to C (a takeover from live B). The cut heals and A's forwards,
    routed before S's claim, reach C: T gets them; S had them on B and must
    not get them again (before: all 20 a second time; in the chaos run the
    outbox was held by a whole-cluster SIGKILL)."""
    c = cluster_factory(extra_env=FAULT_ENV)
    c.start()
    c.wait_healthy()
    wait_until(lambda: faults.leader(c), 30, "a leader")
    b = faults.node_named(c, faults.leader(c))
    a, cn = [n for n in c.nodes if n is not b]
    cid = uid("routedbefore")
    topic = uid("routedbefore/t")
    s = PahoClient(b, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    t = PahoClient(cn, uid("routedbeforet"), 5, properties=session_props())
    t.connect()
    assert t.subscribe(topic + "/#", qos=2) == [2]
    p = PahoClient(a, uid("routedbeforep"), 5)
    p.connect()
    part = partition_factory(c)
    part.cut([a], [cn])
    sent = [f"m{k}".encode() for k in range(20)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    got = [s.get(WAIT).payload for _ in sent]
    assert sorted(got) == sorted(sent)
    s.disconnect()
    s = resumed_on(cn, cid, timeout=30)
    part.heal()
    # T gets them once A's forwards reach C
    got_t = [t.get(30).payload for _ in sent]
    assert sorted(got_t) == sorted(sent)
    none_delivered_again("routed before the move", s, p, topic, lambda: f" on {cn.name}",
                         also=(t,))


# ------------------------------------------------------------ 5. stalled node

@pytest.fixture
def stall_cluster(cluster_factory):
    """fault_cluster, with cluster_down_after above the stall: a stall of
    cluster_down_after or more is a death to the others (NodeDown removes
    the stalled node's routes of clean sessions, and publishes until its
    routes are proposed again do not go there: docs/cluster.md "A stalled
    node"); this one tests a stall."""
    env = dict(FAULT_ENV)
    env["STARLING_CLUSTER_DOWN_AFTER"] = str(int((STOP_SECONDS + 10) * 1000))
    c = cluster_factory(extra_env=env)
    c.start()
    c.wait_healthy()
    yield c
    for n in c.nodes:
        resume(n)


def test_stalled_node_others_go_on_nothing_silently_dropped(stall_cluster, traffic_factory):
    c = stall_cluster
    stalled = c.nodes[2]
    # traffic among the two other nodes; one subscriber of the same topics
    # waits on the stalled node with a long keepalive (it stays connected)
    t = traffic_factory(c, subscribers_on=[0, 1])
    t.avoid = [stalled]
    far = PahoClient(stalled, uid("far"), 5, keepalive=120)
    far.connect()
    assert far.subscribe(f"{t.prefix}/#", qos=2) == [2]
    t.start()
    t.wait_progress(40)
    dropped0 = sum(faults.stats(n)["messages_dropped"] for n in c.nodes)
    t1 = time.monotonic()
    n1 = t.acked_count()
    pause(stalled)
    # while it is stopped, the others' clients go on
    deadline = time.monotonic() + STOP_SECONDS
    t.wait_progress(20, timeout=STOP_SECONDS + 5)
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the stall lasts STOP_SECONDS (that is the fault)
    during = t.acked_count() - n1
    rate_before = n1 / max(0.001, t1 - min(p.acked[0][1] for p in t.publishers if p.acked))
    resume(stalled)
    t.window(t1)
    print(f"\n[stalled node] {stalled.name} stopped {STOP_SECONDS:.0f} s: {during} acknowledged "
          f"meanwhile ({during / STOP_SECONDS:.0f}/s; before {rate_before:.0f}/s)")
    wait_healthy(c)
    t.wait_progress(20)
    r, owners, _ = finish(t, c, "stalled node")
    assert not owners, owners
    assert_clean(r, "a node stalled (others)")
    assert during / STOP_SECONDS >= rate_before / 4, "the other nodes were slowed by the stall"
    # the stalled node's subscriber: everything acknowledged arrives, or
    # what does not is counted as dropped
    acked = {(p.cid, s) for p in t.publishers for s, _ in p.acked}
    have = set()
    deadline = time.monotonic() + 30
    while not acked <= have and time.monotonic() < deadline:
        try:
            m = far.messages.get(timeout=0.5)
        except Exception:
            continue
        pub, seq = m.payload.decode().rsplit(":", 1)
        have.add((pub, int(seq)))
    missing = len(acked - have)
    dropped = sum(faults.stats(n)["messages_dropped"] for n in c.nodes) - dropped0
    print(f"[stalled node] its subscriber misses {missing} of {len(acked)}; dropped counted {dropped}")
    assert missing <= dropped, \
        f"{missing} messages silently dropped for the stalled node: {sorted(acked - have)[:10]}"
    assert "taken for dead" not in stalled.logtext(), "the stall was taken for a death"
    far.disconnect()


class _MovingSubscriber:
    """A persistent-session subscriber (MQTT 5.0, session expiry) whose one
    paho client (its QoS 2 state kept) is moved by the test from node to
    node: stop, then connect elsewhere with clean start 0."""

    def __init__(self, node, cid, qos, topic):
        import paho.mqtt.client as mqtt
        self.cid, self.qos, self.topic = cid, qos, topic
        self.got = []  # (publisher, seq, node name)
        self.node = None
        self.connack = None
        self.cond = threading.Condition()
        self.c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.suback = None
        self.connect(node, clean=True)
        self.c.subscribe(topic, options=__import__("paho.mqtt.subscribeoptions",
                                                   fromlist=["x"]).SubscribeOptions(qos=qos))
        with self.cond:
            assert self.cond.wait_for(lambda: self.suback is not None, WAIT), f"{cid}: no SUBACK"
        assert self.suback == [qos], self.suback

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        with self.cond:
            self.connack = (rc.value if hasattr(rc, "value") else rc,
                            bool(flags.get("session present")))
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        with self.cond:
            self.suback = [g.value if hasattr(g, "value") else g for g in granted]
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        pub, seq = msg.payload.decode().rsplit(":", 1)
        with self.cond:
            self.got.append((pub, int(seq), self.node.name if self.node else "-"))

    def connect(self, node, clean, timeout=30):
        self.connack = None
        self.c.connect(node.host, node.port, 60, clean_start=clean,
                       properties=session_props())
        self.c.loop_start()
        with self.cond:
            assert self.cond.wait_for(lambda: self.connack is not None, timeout), \
                f"{self.cid}: no CONNACK from {node.name}"
        assert self.connack[0] == 0, f"{self.cid}: CONNACK {self.connack} from {node.name}"
        self.node = node
        return self.connack[1]

    def leave(self):
        """The connection ends without a DISCONNECT (its node is stopped),
        once the client has read what the node wrote before it stopped
        (it is in this end's socket buffer: on loopback, a write lands
        there at once)."""
        import socket as so
        self.c.loop_stop()
        sock = self.c.socket()
        while sock is not None:
            try:
                if not sock.recv(1, so.MSG_PEEK | so.MSG_DONTWAIT):
                    break
            except BlockingIOError:
                break
            except OSError:
                break
            self.c.loop(0.01)
        try:
            sock.close()
        except Exception:
            pass
        self.c._sock = None
        self.node = None

    def have(self):
        with self.cond:
            return [(p, s) for p, s, _ in self.got]

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


@pytest.mark.parametrize("stop,move_at", [(4.0, 0.0), (9.0, 0.0), (9.0, DOWN_AFTER - 1.0)],
                         ids=["shorter", "longer", "longer-claims-across-nodedown"])
def test_stopped_nodes_persistent_subscribers_resumed_elsewhere_lose_nothing(
        cluster_factory, traffic_factory, stop, move_at):
    """Chaos seed 101's losses, made deterministic: a persistent QoS 1 and a
    QoS 2 subscriber on node C; publishers on A and B publish numbered
    streams; C is SIGSTOPped and the subscribers resume their sessions on A
    (session present 1, from the replicated record: C does not answer);
    publishing goes on; C continues after `stop` seconds (shorter and
    longer than cluster_down_after). Every acknowledged message arrives at
    least once at both, every QoS 2 message exactly once at the QoS 2
    subscriber.

    "longer-claims-across-nodedown": the clients come back just before
    cluster_down_after, so their claims commit, wait for C's answer
    (cluster_claim_timeout) and resume from the record after the leader's
    NodeDown(C). NodeDown took C's routes (the registry no longer named C)
    while A's were not in effect yet: what was published in between went
    nowhere (before the fix, 23 messages of each publisher lost at both
    subscribers, in one stretch, as in chaos seed 101).

    In every case, the QoS 2 exchanges C had not finished when it stopped
    (its client's PUBREC read only after SIGCONT, its PUBREL written to the
    closed connection) are finished by A with their packet ids (before: 1
    to 3 messages, at most one of each QoS 2 publisher, acknowledged at the
    moment of the stop, lost at the QoS 2 subscriber in 7 runs of 9: C's
    late messages left out what was past PUBREC, "its client has it", but
    paho delivers a QoS 2 message at PUBREL; 0 in 9 runs after)."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    c.start()
    c.wait_healthy()
    # C a follower (a stopped leader adds an election to the fault)
    ld = wait_until(lambda: faults.leader(c), WAIT, "a leader")
    cn = next(n for n in reversed(c.nodes) if n.name != ld)
    a, b = [n for n in c.nodes if n is not cn]
    t = traffic_factory(c, subscribers_on=[])
    t.avoid = [cn]  # its publishers go to A
    tag = t.prefix.split("/")[1]
    subs = [_MovingSubscriber(cn, f"st{q}-{tag}", q, f"{t.prefix}/#") for q in (1, 2)]
    try:
        t.start()
        t.wait_progress(60)
        pause(cn)
        t0 = time.monotonic()
        for s in subs:
            s.leave()
        while time.monotonic() < t0 + move_at:
            time.sleep(0.05)  # when the clients come back is part of the fault
        # both resume on A at once (each claim waits for C's answer first)
        present = {}
        movers = [threading.Thread(target=lambda s=s: present.update({s.cid: s.connect(a, False)}))
                  for s in subs]
        for m in movers:
            m.start()
        for m in movers:
            m.join(60)
        assert all(present.get(s.cid) for s in subs), f"session present on {a.name}: {present}"
        moved = time.monotonic() - t0
        t.wait_progress(20, timeout=30)
        while time.monotonic() < t0 + stop:
            time.sleep(0.05)  # the stop lasts `stop` seconds (that is the fault)
        resume(cn)
        t.window(t0)
        wait_healthy(c)
        t.wait_progress(60, timeout=60)
        t.stop_publishing()
        acked = {(p.cid, seq): at for p in t.publishers for seq, at in p.acked}
        qos2 = {p.cid for p in t.publishers if p.qos == 2}

        def complete():
            return all(set(acked) <= set(s.have()) for s in subs)
        deadline = time.monotonic() + 40
        last, since = None, time.monotonic()
        while not complete() and time.monotonic() < deadline and time.monotonic() - since < 15:
            n = sum(len(s.got) for s in subs)
            if n != last:
                last, since = n, time.monotonic()
            time.sleep(0.2)
        lines = []
        lost_total = dup_total = 0
        for s in subs:
            have = s.have()
            lost = sorted(k for k in acked if k not in set(have))
            counts = {}
            for k in have:
                counts[k] = counts.get(k, 0) + 1
            dups = sorted(k for k, n in counts.items() if n > 1 and k[0] in qos2)
            if s.qos == 2:
                dup_total += len(dups)
            lost_total += len(lost)
            by_pub = {}
            for p, q in lost:
                by_pub.setdefault(p, []).append(q)
            lines.append(f"{s.cid} (QoS {s.qos}): {len(have)} received, {len(lost)} lost "
                         f"{ {p: _ranges_of(v) for p, v in by_pub.items()} }"
                         f" lost acked at {sorted({round(acked[k] - t0, 1) for k in lost})[:8]}, "
                         f"QoS 2 twice {len(dups)} {dups[:6]}")
        print(f"\n[stopped node, {stop:.0f} s] moved in {moved:.1f} s; {len(acked)} acknowledged")
        for line in lines:
            print("   ", line)
        assert lost_total == 0 and dup_total == 0, "\n".join(lines)
    finally:
        resume(cn)
        for s in subs:
            s.close()


def _ranges_of(seqs):
    from traffic import _ranges
    return _ranges(sorted(seqs))


# ------------------------------------------------------------ 6. disk full

def published_until_refused(pub, topic):
    """QoS 1 publishes of 64 KiB to topic/0, topic/1, ... on a full disk
    (an mqttraw client) until one is refused with 0x97 (Quota exceeded),
    at most 100. Returns each PUBACK's reason code."""
    codes = []
    for i in range(100):
        pid = pub.publish(f"{topic}/{i}", bytes(64 * 1024), qos=1)
        ack = pub.expect(mqttraw.PUBACK, timeout=WAIT)
        assert ack.packet_id == pid
        codes.append(ack.reason_code)
        if ack.reason_code == 0x97:
            break
    assert codes[-1] == 0x97, f"no PUBACK 0x97 (quota exceeded) on a full disk: {codes}"
    return codes


def test_small_disk_fill_takes_what_is_left_when_a_node_writes_meanwhile(tmp_path):
    """The harness alone, no node: the node on a SmallDisk may take space
    between fill()'s look at what is free and its write. Here the disk is
    full while free_bytes() still says 4096 bytes twice, as after such a
    write. fill() stops at the full disk and returns; a buffered filler
    kept the 4096 bytes and failed with ENOSPC when closed (one CI run)."""
    disk = faults.SmallDisk(str(tmp_path), size="4m")
    disk.mount()
    try:
        real = disk.free_bytes
        stale = [2]

        def free_bytes():
            left = real()
            if left == 0 and stale[0]:
                stale[0] -= 1
                return 4096
            return left

        disk.free_bytes = free_bytes
        assert disk.fill() == 0
        assert stale[0] == 0, "the disk was never seen full"
        assert os.path.getsize(disk.filler) == 4 << 20
    finally:
        disk.cleanup()


def test_disk_full_on_one_node(cluster_factory, tmp_path):
    disk = faults.SmallDisk(str(tmp_path), size="48m")
    disk.mount()
    c = None
    try:
        c = cluster_factory(extra_env=dict(FAULT_ENV))
        full = c.nodes[2]
        full.dir = os.path.join(disk.mnt, "n3")
        c.start()
        c.wait_healthy()
        # a persistent session on the full node, so that QoS 1/2 there must be stored
        sid = uid("dfs")
        s = mqttraw.connected(full, sid, 5, properties={"session_expiry_interval": 600})
        s.subscribe(("df/#", mqttraw.sub_options(qos=2)))
        s.disconnect()
        # and a subscriber of the same topics on a healthy node
        other = PahoClient(c.nodes[0], uid("dfo"), 5)
        other.connect()
        assert other.subscribe("df/#", qos=1) == [1]
        left = disk.fill()
        print(f"\n[disk full] {full.name}'s disk filled ({left} bytes free)")
        pub = mqttraw.connected(full, uid("dfp"), 5)
        codes = published_until_refused(pub, "df")
        pid = pub.publish("df/q2", bytes(64 * 1024), qos=2)
        rec = pub.expect(mqttraw.PUBREC, timeout=WAIT)
        assert (rec.packet_id, rec.reason_code) == (pid, 0x97), rec
        # the rest of the cluster goes on: connects (registry), subscribes
        # (routes), publishes between the healthy nodes
        x = PahoClient(c.nodes[1], uid("dfx"), 5)
        x.connect(timeout=WAIT)
        t2 = uid("df2/t")
        assert x.subscribe(t2, qos=1) == [1]
        y = PahoClient(c.nodes[0], uid("dfy"), 5)
        y.connect(timeout=WAIT)
        for i in range(10):
            y.publish(t2, f"ok{i}".encode(), qos=1)
        assert [x.get(WAIT).payload for _ in range(10)] == [f"ok{i}".encode() for i in range(10)]
        # room again: the node stores QoS 1 again, its Raft log intact
        disk.unfill()
        ok = False
        for i in range(50):
            pid = pub.publish("df/again", b"stored", qos=1)
            if pub.expect(mqttraw.PUBACK, timeout=WAIT).reason_code == 0:
                ok = True
                break
            time.sleep(0.1)  # pacing between attempts while space is given back
        assert ok, "QoS 1 still refused after the disk was freed"
        pub.disconnect()
        wait_healthy(c)
        converged_tables(c)
        # a crash right after: the node restarts from its log and catches up
        faults.restart(full, sig=signal.SIGKILL)
        tabs = converged_tables(c)
        assert sid in tabs["registry"]
        s = mqttraw.connected(full, sid, 5, clean=False,
                              properties={"session_expiry_interval": 600})
        assert s.connack.session_present
        got = []
        while True:
            m = s.recv_publish(timeout=WAIT)
            got.append(m.topic)
            if m.topic == "df/again":
                break
        accepted = [f"df/{i}" for i, rc in enumerate(codes) if rc == 0]
        assert got == accepted + ["df/again"], got
        s.disconnect()
        for z in (other, x, y):
            z.disconnect()
    finally:
        if c is not None:
            c.stop()
        disk.cleanup()


def test_a_publish_refused_on_a_full_disk_does_not_keep_old_copies_past_their_grace(
        cluster_factory, tmp_path):
    """A persistent QoS 1 subscriber S on A; C's disk is filled and a
    publish on C for S is refused (0x97): its outbox row to A failed with
    its store batch and is never sent. The disk freed, S moves to B. A's
    old copy of S ends at its grace (LATE_GRACE_MS, 6 s) once every member
    has sent A what it routed before (Applied.fwd_next): C has, the refused
    row being nothing to send. Before, C named that row as still to come,
    and the copy (and A's route for S) stayed for COPY_CLEAR_CAP_MS (10
    minutes)."""
    disk = faults.SmallDisk(str(tmp_path), size="48m")
    disk.mount()
    c = None
    try:
        c = cluster_factory(extra_env=dict(FAULT_ENV))
        a, b, full = c.nodes
        full.dir = os.path.join(disk.mnt, "n3")
        c.start()
        c.wait_healthy()
        cid, topic = uid("dfcopy"), uid("dfcopy/t")
        s = PahoClient(a, cid, 5, properties=session_props())
        s.connect()
        assert s.subscribe(topic + "/#", qos=1) == [1]
        pub = mqttraw.connected(full, uid("dfcopyp"), 5)
        pid = pub.publish(topic + "/x", b"before", qos=1)
        assert pub.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == pid
        assert s.get(WAIT).payload == b"before"
        disk.fill()
        codes = published_until_refused(pub, topic)
        disk.unfill()
        pub.disconnect()
        accepted = [f"{topic}/{i}" for i, rc in enumerate(codes) if rc == 0]
        assert [s.get(WAIT).topic for _ in accepted] == accepted
        wait_healthy(c)
        converged_tables(c)
        s.stop()
        s = resumed_on(b, cid)
        filt = topic + "/#"
        ida, idb = faults.node_id(a), faults.node_id(b)

        def owners():
            return {n for n, f in faults.tables(a)["routes"] if f == filt}
        wait_until(lambda: idb in owners(), WAIT, "B's route for S")
        # the copy's grace (6 s) and a few Applied reports; far less than
        # the 10 minutes it stayed before
        wait_until(lambda: owners() == {idb}, 30, "A's route for S's old copy gone")
        assert ida not in owners()
        s.disconnect()
    finally:
        if c is not None:
            c.stop()
        disk.cleanup()


def caught_up_or_restarted(c, node):
    """The tables once `node`, just started, caught up. Should its Raft log
    stop growing during the catch-up (docs/cluster.md, "A full disk on one
    node": the open item of 2 runs in 85), it logs why and stops with exit
    status 74 within 30 s; it is started again once, as its supervisor
    would, and must then catch up. Printed when that happens."""
    def done():
        if not alive(node):
            return "stopped"
        try:
            return converged_tables(c, timeout=0.5)
        except AssertionError:
            return None
    wait_healthy(c)
    try:
        r = wait_until(done, 75, f"{node.name} caught up, or stopped")
    except AssertionError:
        converged_tables(c, timeout=0.5)  # says which node applied what
        raise
    if r == "stopped":
        log = node.logtext()
        rc = node.stop()
        assert rc == 74 and "Raft server cannot go on" in log, f"{node.name} exited {rc}:\n{log[-3000:]}"
        print(f"[catch-up] {node.name} stopped (exit 74) during its catch-up: "
              f"{log.split('cannot go on: ')[-1].splitlines()[0]}; started again")
        node.start()
        wait_healthy(c)
        r = converged_tables(c)
    return r


def stopped_for_its_disk(c, full, says):
    """The full node stops by itself with exit 74, its log saying `says`;
    the other two are healthy (a leader). Returns its log and the others."""
    wait_until(lambda: full.proc.poll() is not None, 60, f"{full.name} to stop ({says})")
    log = full.logtext()
    rc = full.stop()
    assert rc == 74, f"{full.name} exited {rc}:\n{log[-3000:]}"
    assert says in log, log[-3000:]
    healthy = [n for n in c.nodes if n is not full]
    wait_until(lambda: all(n.health() == 200 for n in healthy), 30,
               "the other nodes healthy (a leader)")
    return log, healthy


def test_disk_full_replicated_tables_cannot_grow(cluster_factory, tmp_path):
    """The full node must write more of the replicated state than its disk
    holds (the test above fits in what was allocated before the fill):
    retained messages of 64 KiB published on a healthy node are Raft entries
    of that size (3 MiB in all), which every node writes into its Raft log
    and its tables' LMDB. The tables' file cannot grow (the Raft log still
    has room in its preallocated segment), so the full node cannot apply
    them: it says so and stops (exit status 74) rather than staying a member
    that never applies (every SUBACK in the cluster would wait for it); the
    rest of the cluster goes on. Nothing of its state is corrupt: started
    again once there is room, it catches up and its tables equal the
    others'."""
    disk = faults.SmallDisk(str(tmp_path), size="64m")
    disk.mount()
    c = None
    n_retained = N_BIG_RETAINED
    try:
        c = cluster_factory(extra_env=dict(FAULT_ENV))
        full = c.nodes[2]
        full.dir = os.path.join(disk.mnt, "n3")
        c.start()
        c.wait_healthy()
        left = disk.fill()
        print(f"\n[disk full] {full.name}'s disk filled ({left} bytes free)")
        # The first claims after the fill are applied on the full node too:
        # when it was the leader it stops there, and a CONNECT made before
        # the other two elect again is refused with 0x88 (Server
        # unavailable, after cluster_claim_timeout); the client tries again.
        pub = connected_after_fault(c.nodes[0], uid("dfr"))
        for i in range(n_retained):
            pid = pub.publish(f"dfr/{i}", bytes([i % 251]) * (64 * 1024), qos=1, retain=True)
            ack = pub.expect(mqttraw.PUBACK, timeout=WAIT)
            assert (ack.packet_id, ack.reason_code) in ((pid, 0), (pid, 0x10)), ack
        pub.disconnect()
        log, healthy = stopped_for_its_disk(c, full, "cannot write its replicated tables")
        print(f"[disk full] {full.name} stopped (exit 74) after entry "
              f"{log.split('cannot apply entry ')[1].split()[0] if 'cannot apply entry ' in log else '?'}")

        def replicated():
            return all(len([t for t in faults.tables(n)["retained"] if t.startswith("dfr/")])
                       == n_retained for n in healthy)
        wait_until(replicated, 60, "the retained messages on the healthy nodes")
        # the rest goes on: a connect, a subscription (its SUBACK does not
        # wait for the stopped node) and a publish between healthy nodes
        # (a CONNECT refused with 0x88 while the two elect a leader again -
        # they may, at a high load, once the third stopped - is tried again,
        # as a client does)
        for attempt in range(5):
            x = PahoClient(c.nodes[1], uid("dfrx"), 5)
            x.connect(timeout=WAIT, expect_rc=None)
            if x.connack["rc"] != 0x88:
                break
            x.stop()
        assert x.connack["rc"] == 0, x.connack
        t2 = uid("dfr2/t")
        assert x.subscribe(t2, qos=1) == [1]
        y = PahoClient(c.nodes[0], uid("dfry"), 5)
        y.connect(timeout=WAIT)
        y.publish(t2, b"ok", qos=1)
        assert x.get(WAIT).payload == b"ok"
        x.disconnect()
        y.disconnect()
        # room again: started, it catches up from its log and the leader
        disk.unfill()
        full.start()
        tabs = caught_up_or_restarted(c, full)
        got = {t: v for t, v in tabs["retained"].items() if t.startswith("dfr/")}
        assert len(got) == n_retained
        assert all(v.endswith(bytes([int(t.split("/")[1]) % 251]) * (64 * 1024)) for t, v in got.items())
    finally:
        if c is not None:
            c.stop()
        disk.cleanup()


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_disk_full_raft_log_cannot_grow(cluster_factory, tmp_path, role):
    """The full disk holds the full node's Raft log only (its Raft
    directory is a small filesystem of its own; its tables have room):
    retained messages of 64 KiB, published on a healthy node to a few
    topics (the tables stay small), fill the open segment that libraft
    allocated before the fill, and the next segment cannot be allocated.
    libraft 0.15 fails the write without telling its user: a follower
    answers the leader with a rejection and never stores again (healthy,
    applying nothing), a leader drops the entries its followers already
    have and then crashes reading a snapshot it does not have. The node
    must see it and stop as when its tables cannot be written (exit status
    74, its clients go elsewhere); the rest of the cluster goes on, and
    started again once there is room it catches up and its tables equal the
    others'. Run with the full node as a follower and as the leader."""
    c = cluster_factory(extra_env=dict(FAULT_ENV))
    full = c.nodes[2]
    disk = faults.SmallDisk(str(tmp_path), size=f"{RAFT_DISK_MIB}m",
                            at=os.path.join(full.dir, "cluster", "raft"))
    disk.mount()
    try:
        c.start()
        c.wait_healthy()
        # the role: restart the full node while it leads (follower), or
        # the leader while it is another node (leader)
        for _ in range(ROLE_TRIES):
            now = wait_until(lambda: faults.leader(c), 30, "a leader")
            if (now == full.name) == (role == "leader"):
                break
            faults.restart(full if role == "follower" else
                           next(n for n in c.nodes if n.name == now))
        else:
            pytest.skip(f"{full.name} was not made the {role} in {ROLE_TRIES} restarts")
        left = disk.fill()
        print(f"\n[raft disk full] {full.name}'s Raft directory filled ({left} bytes free)")
        pub = connected_after_fault(c.nodes[0], uid("dfl"))
        sent = {}
        for i in range(N_RAFT_FILL):
            if full.proc.poll() is not None:
                break
            topic, payload = f"dfl/{i % 4}", bytes([i % 251]) * (64 * 1024)
            pid = pub.publish(topic, payload, qos=1, retain=True)
            ack = pub.expect(mqttraw.PUBACK, timeout=WAIT)
            assert (ack.packet_id, ack.reason_code) in ((pid, 0), (pid, 0x10)), ack
            sent[topic] = payload
        pub.disconnect()
        log, healthy = stopped_for_its_disk(c, full, "Raft server cannot go on")
        print(f"[raft disk full] {full.name} ({role}) stopped (exit 74): "
              f"{log.split('cannot go on: ')[1].splitlines()[0] if 'cannot go on: ' in log else '?'}")
        def held(tabs):  # a retained record ends with its payload
            return {t: v[-len(sent[t]):] for t, v in tabs["retained"].items() if t in sent}
        wait_until(lambda: all(held(faults.tables(n)) == sent for n in healthy), 60,
                   "the retained messages on the healthy nodes")
        # the rest goes on: a connect, a subscription, a publish between them
        x = connected_after_fault(c.nodes[1], uid("dflx"))
        t2 = uid("dfl2/t")
        assert x.subscribe((t2, mqttraw.sub_options(qos=1))).reason_codes == [1]
        y = connected_after_fault(c.nodes[0], uid("dfly"))
        pid = y.publish(t2, b"ok", qos=1)
        assert y.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == pid
        assert x.recv_publish(timeout=WAIT).payload == b"ok"
        x.disconnect()
        y.disconnect()
        # room again: started, it catches up and its tables equal the others'
        disk.unfill()
        full.start()
        wait_healthy(c)
        assert held(converged_tables(c)) == sent
    finally:
        c.stop()
        disk.cleanup()


N_CATCH_UP = 100  # test_restarted_follower_gets_what_it_missed_once: entries of 64 KiB
CATCH_UP_COPIES = 20  # copies of them it may get (2 or 3 measured; 154 before the fix)


def appends_received(log):
    """The AppendEntries that carried entries, in the order a node got them,
    as (prev_log_index, n_entries), from libraft 0.15's own trace
    (LIBRAFT_TRACE=1: "src/recv_append_entries.c:36 ... n_entries:N
    prev_log_index:P")."""
    return [(int(m.group(2)), int(m.group(1))) for m in
            re.finditer(r"recv_append_entries\.c:\d+ .*?n_entries:(\d+) prev_log_index:(\d+)", log)
            if int(m.group(1))]


def test_restarted_follower_gets_what_it_missed_once(cluster_factory):
    """Issue 10 (test_disk_full_raft_log_cannot_grow[leader] once under a
    heavy load: the restarted node applied 409, the others 411). A follower
    started again after missing N_CATCH_UP entries of 64 KiB (6.4 MiB) is
    in probe mode at the leader, which in libraft 0.15 sends it every entry
    from its next index on at every heartbeat (15 ms) until it answers,
    whether or not the copy before went out. Before, the follower, busy
    writing and applying them, found hundreds of copies of them queued
    (93 to 261 in the traces of that test; 6.4 MiB each here) and read them
    one by one, for up to 23 s, while what came after waited behind them.
    Now a copy that starts where an unwritten one to the same follower
    starts goes as a heartbeat: the next copy goes once the one before was
    read, the follower gets them a few times (2 or 3 measured; 154 on main's
    build), and its tables equal the others'."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, LIBRAFT_TRACE="1"))
    c.start()
    c.wait_healthy()
    ld = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    f = next(n for n in c.nodes if n is not ld)
    kill(f)
    pub = connected_after_fault(ld, uid("cup"))
    sent = {}
    for i in range(N_CATCH_UP):
        topic, payload = f"cup/{i % 4}", bytes([i % 251]) * (64 * 1024)
        pid = pub.publish(topic, payload, qos=1, retain=True)
        ack = pub.expect(mqttraw.PUBACK, timeout=WAIT)
        assert (ack.packet_id, ack.reason_code) in ((pid, 0), (pid, 0x10)), ack
        sent[topic] = payload
    pub.disconnect()
    mark = len(f.logtext())
    f.start()
    wait_healthy(c)
    tabs = converged_tables(c)
    assert {t: v[-len(sent[t]):] for t, v in tabs["retained"].items() if t in sent} == sent
    got = appends_received(f.logtext()[mark:])
    missed = [a for a in got if a[1] >= N_CATCH_UP]  # the copies of what it missed
    print(f"\n[catch-up] {f.name} got {len(missed)} copies of the {N_CATCH_UP} entries "
          f"it missed: {missed[:5]}{' ...' if len(missed) > 5 else ''}")
    assert 1 <= len(missed) <= CATCH_UP_COPIES, missed


# ------------------------------------------------------------ 7. whole cluster

def test_whole_cluster_killed_and_restarted_in_another_order(fault_cluster):
    c = fault_cluster
    sessions = {}
    witnesses = []
    for i, n in enumerate(c.nodes):
        cid = uid(f"wc{i}")
        x = PahoClient(n, cid, 5, properties=session_props())
        x.connect()
        assert x.subscribe(f"wc/{i}/#", qos=1) == [1]
        assert x.subscribe(f"wc/{i}/two/#", qos=2) == [2]
        x.disconnect()
        w = PahoClient(n, uid("wcw"), 5)
        w.connect()
        w.subscribe(f"wc/{i}/#", qos=1)
        witnesses.append(w)
        sessions[cid] = (n, i)
    # queued for the offline sessions, published on the other nodes
    sent = {i: [] for i in range(3)}
    for i in range(3):
        p = PahoClient(c.nodes[(i + 1) % 3], uid("wcp"), 5)
        p.connect()
        for k in range(20):
            topic = f"wc/{i}/m" if k % 2 == 0 else f"wc/{i}/two/m"
            p.publish(topic, f"{i}-{k}".encode(), qos=1 if k % 2 == 0 else 2)
            sent[i].append(f"{i}-{k}".encode())
        p.publish(f"wc/ret/{i}", f"retained-{i}".encode(), qos=1, retain=True)
        p.disconnect()
    for i, w in enumerate(witnesses):  # the forwards are all on their node
        assert [w.get(WAIT).payload for _ in sent[i]] == sent[i]
        w.disconnect()
    # the retained messages are proposed after their PUBACK: wait until the
    # three are applied everywhere before taking the tables
    wait_until(lambda: all(f"wc/ret/{i}" in faults.tables(n)["retained"]
                           for i in range(3) for n in c.nodes), WAIT, "the retained messages")
    before = converged_tables(c)
    for n in c.nodes:
        kill(n)
    c.start(order=(2, 0, 1))
    print(f"\n[whole cluster] healthy {wait_healthy(c):.1f} s after the start")
    after = converged_tables(c)
    assert after["routes"] == before["routes"], (before["routes"] ^ after["routes"])
    # the persistent sessions' registrations stay; the clean sessions
    # (witnesses, publishers) ended with their connections and were released
    assert {k: v for k, v in after["registry"].items() if k in sessions} == \
        {k: v for k, v in before["registry"].items() if k in sessions}
    assert set(after["registry"]) <= set(before["registry"])
    assert after["retained"] == before["retained"]
    for cid, (n, i) in sessions.items():
        y = PahoClient(n, cid, 5, clean=False, properties=session_props())
        y.connect(timeout=WAIT)
        assert y.session_present, f"{cid} lost its session on {n.name}"
        got = [y.get(WAIT) for _ in sent[i]]
        # every message once, in order on each topic (an ordered topic,
        # [MQTT-4.6.0-6]; two topics at two QoS are not ordered between them)
        for topic, parity in ((f"wc/{i}/m", 0), (f"wc/{i}/two/m", 1)):
            assert [m.payload for m in got if m.topic == topic] == \
                [p for k, p in enumerate(sent[i]) if k % 2 == parity], \
                (topic, [m.payload for m in got])
        assert sorted(m.payload for m in got) == sorted(sent[i])
        print(f"[whole cluster] {cid}: {[m.payload.decode() for m in got]}")
        y.disconnect()
    s = PahoClient(c.nodes[1], uid("wcr"), 5)
    s.connect()
    s.subscribe("wc/ret/#", qos=1)
    assert sorted(s.get(WAIT).payload for _ in range(3)) == \
        [f"retained-{i}".encode() for i in range(3)]
    s.disconnect()


def subscriber_on_a_follower(c, name, topic):
    """Starts cluster c and gives a follower B a persistent QoS 2 subscriber
    S of uid(topic)/# (client id uid(name)), offline. Returns the leader, B,
    the other follower A, S's client id and topic."""
    c.start()
    c.wait_healthy()
    ld = wait_until(lambda: faults.leader(c), WAIT, "a leader")
    cn = faults.node_named(c, ld)
    b, a = [n for n in c.nodes if n is not cn]
    cid, topic = uid(name), uid(topic)
    s = PahoClient(b, cid, 5, clean=True, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    s.disconnect()
    return cn, b, a, cid, topic


def held_copy_with_a_watcher(cluster_factory, tmp_path, name, topic, **env):
    """subscriber_on_a_follower on a cluster whose old copies moving out
    wait while tmp_path/moving-hold exists (STARLING_TEST_MOVING_HOLD) and
    whose nodes' batches of routes and records wait while their
    batch-hold-NODE file does (STARLING_TEST_BATCH_HOLD), with W, a QoS 2
    subscriber of the same filter on A (A routes it already). Returns the
    cluster, the hold file, the leader, B, A, S's client id, the topic and
    W. env: more of the nodes' environment."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold), **env))
    hold_files_per_node(c, tmp_path, STARLING_TEST_BATCH_HOLD="batch-hold")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, name, topic)
    w = PahoClient(a, uid(name + "w"), 5)
    w.connect()
    assert w.subscribe(topic + "/#", qos=2) == [2]
    return c, hold, cn, b, a, cid, topic, w


def claimed_by_a_then_resumed_on_c(cn, b, a, cid, s, also=()):
    """Once B applies A's claim of cid, its copy of S waits for A's request
    (cluster_claim_timeout + 1 s; none comes when A resumed S from its
    record), collecting; meanwhile A is SIGKILLed (s and the clients in
    `also` stop) and S resumes on C (cn), so that the copy's wait ends with
    C the owner. Returns S's client on C."""
    claimed = f"'{cid}' was claimed by node {faults.node_id(a):016x} (claim"
    wait_until(lambda: claimed in b.logtext(), 30, f"{b.name} applying A's claim of {cid}")
    kill(a)
    for x in (s, *also):
        x.stop()
    return resumed_on(cn, cid, timeout=30, tries=3)


def test_stopped_nodes_copy_leaves_out_what_a_later_owner_had(cluster_factory):
    """Chaos seeds 937187427 and 1946164343 (QoS 2 duplicates), made
    deterministic: a persistent QoS 2 subscriber S, offline, on node B; B
    is SIGSTOPped and taken for dead (NodeDown keeps its route for S, whose
    record names B); S resumes on A from its record and gets M0..M19,
    published on C, which C also holds for B (that route). B continues
    and applies A's claim: its copy of S, claimed away, takes M0..M19 from
    C's outbox and waits for A's request. A is SIGKILLed and S resumes on
    C from its record, which knows nothing of M0..M19; the copy's wait
    over, it sends what it took to S's owner, C. Before, the copy left out
    only what was routed after the moment it looked (when its owner's
    record was there), and C delivered all 20 a second time (main's build:
    3 of 3 runs); now it leaves out what was routed after the first owner
    after it (A) had its routes everywhere (SessionRecord.owners): none
    comes again."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "third", "tc/t")
    pause(b)
    try:
        # the leader takes B for dead (its NodeDown is in the log before
        # A's claim: proposed by the leader before the claim reaches it)
        silent = f"member {faults.node_id(b):016x} silent for"
        wait_until(lambda: silent in cn.logtext(), 30, f"{cn.name} taking {b.name} for dead")
        s = resumed_on(a, cid, timeout=30)
        p, sent = twenty_delivered(cn, "thirdp", topic, s)
    finally:
        resume(b)
    s = claimed_by_a_then_resumed_on_c(cn, b, a, cid, s)
    # B's copy takes M0..M19 (C's outbox) and sends what it holds to C
    none_again_after_late_messages(b, cn, cid, s, p, topic, "third copy", 40)


def held_copies_and_a_subscriber(cluster_factory, tmp_path, name, **env):
    """A cluster with debug logs and env whose old copies are held
    (STARLING_TEST_MOVING_HOLD, its file present), started by
    subscriber_on_a_follower; a publisher on the leader and M0..M19 to
    publish. Returns (cluster, the hold's file, leader, B, A, S's client id,
    S's topic, the publisher, M0..M19)."""
    hold = tmp_path / "moving-hold"
    hold.write_text("")
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold), **env))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, name, name + "/t")
    p = PahoClient(cn, uid(name + "p"), 5)
    p.connect()
    return c, hold, cn, b, a, cid, topic, p, [f"m{k}".encode() for k in range(20)]


def twenty_delivered(cn, name, topic, s, in_order=True):
    """A QoS 2 publisher p on cn sends M0..M19 to topic/x; s gets each of
    them (in order, or in any order). Returns (p, sent)."""
    p = PahoClient(cn, uid(name), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(20)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    got = [s.get(WAIT).payload for _ in sent]
    assert (got if in_order else sorted(got)) == (sent if in_order else sorted(sent))
    return p, sent


def forwards_to_b_in(b, p, name):
    """What was forwarded to B before now is in: a marker published by p
    after it, to a fresh subscriber on B, arrives (the origin's forwards to
    B come in order, and B handles and stores them in order)."""
    sync = uid(name + "/sync")
    q = PahoClient(b, uid(name + "q"), 5, clean=True, properties=session_props())
    q.connect()
    assert q.subscribe(sync, qos=1) == [1]
    p.publish(sync, b"sync", qos=1)
    assert q.get(30).payload == b"sync"
    q.stop()


def test_restarted_nodes_copy_leaves_out_what_a_later_owner_had(cluster_factory, tmp_path):
    """Chaos seed 288425677 (2,256 QoS 2 duplicates), made deterministic: a
    persistent QoS 2 subscriber S, offline, on node B; B is SIGSTOPped and
    taken for dead (NodeDown keeps its route for S); S resumes on A from
    its record and gets M0..M19, published on C, which C also holds for B.
    B continues, applies A's claim, and its copy of S, claimed away, takes
    M0..M19 from C's outbox and stores them; it sends nothing (held:
    STARLING_TEST_MOVING_HOLD). A is SIGKILLed and S resumes on C from its
    record (no identity of M0..M19 there); B is SIGKILLed and started
    again, and its stored copy, claimed away, sends what it holds to C.
    Before, the copy had forgotten its claim with the restart, kept
    everything, and C delivered M0..M19 a second time; now the store keeps
    the claim's epoch and each message's route table index, and the copy
    leaves out what was routed once A, the owner after it, had its routes
    everywhere."""
    c, hold, cn, b, a, cid, topic, p, sent = held_copies_and_a_subscriber(cluster_factory,
                                                                          tmp_path, "restcopy")
    pause(b)
    try:
        silent = f"member {faults.node_id(b):016x} silent for"
        wait_until(lambda: silent in cn.logtext(), 30, f"{cn.name} taking {b.name} for dead")
        s = resumed_on(a, cid, timeout=30)
        for m in sent:
            p.publish(topic + "/x", m, qos=2)
        assert [s.get(WAIT).payload for _ in sent] == sent
    finally:
        resume(b)
    claimed = f"'{cid}' was claimed by node {faults.node_id(a):016x} (claim"
    wait_until(lambda: claimed in b.logtext(), 30, f"{b.name} applying A's claim of {cid}")
    # B's copy took M0..M19 from C's outbox, in order before a marker that
    # C forwards to a subscriber on B after them: once that is delivered,
    # its batch and every earlier one are on B's disk
    forwards_to_b_in(b, p, "restcopy")
    kill(a)
    s.stop()
    s = resumed_on(cn, cid, timeout=30, tries=3)
    kill(b)
    start = len(b.logtext())
    b.start()
    moved = f"the session of '{cid}' moved to {faults.node_id(cn):016x}"
    wait_until(lambda: moved in b.logtext()[start:], 60,
               f"{b.name} finding its stored copy of {cid} claimed away by {cn.name}")
    # the copy no longer held: it sends what it holds to S's owner, C (once
    # the forwards held for B while it was down have had time to come: A
    # stays down, so RESTART_SETTLE_CAP_MS, 30 s after B's start; A back
    # would hand C the identities its copy got, which hide the case)
    hold.unlink()
    leaves = re.findall(rf"the old copy of '{re.escape(cid)}' takes nothing routed from index "
                        r"\d+", b.logtext()[start:])
    none_again_after_late_messages(b, cn, cid, s, p, topic, f"restarted copy {leaves}", 60)


def copy_on_a_stopped_node_takes_what_s_got(cn, b, a, cid, topic, p, sent, name):
    """B, S's node, SIGSTOPped until C takes it for dead and S resumes on
    A. B, taken for dead, proposes the route of its copy of S again; the
    copy, claimed away and waiting for A's request (cluster_claim_timeout +
    1 s), takes everything that comes for it (as n3's did for 3 s in the
    chaos run of seed 1188520366): `sent`, published by p on C, which S gets
    on A directly. Returns S, once the copy's messages are on B's disk (a
    marker C forwards after them was delivered)."""
    bid, aid = (f"{faults.node_id(n):016x}" for n in (b, a))
    pause(b)
    try:
        silent = f"member {bid} silent for"
        wait_until(lambda: silent in cn.logtext(), 30, f"{cn.name} taking {b.name} for dead")
        s = resumed_on(a, cid, timeout=30)
    finally:
        resume(b)
    claimed = f"'{cid}' was claimed by node {aid} (claim"
    wait_until(lambda: claimed in b.logtext(), 30, f"{b.name} applying A's claim of {cid}")
    wait_until(lambda: (faults.node_id(b), topic + "/#") in faults.tables(cn)["routes"], 30,
               f"{b.name}'s route for its copy of {cid}")
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    assert [s.get(WAIT).payload for _ in sent] == sent
    forwards_to_b_in(b, p, name)
    return s


def test_restarted_copys_state_leaves_out_its_stored_messages_a_later_owner_had(
        cluster_factory, tmp_path):
    """Chaos seed 1188520366 with --more (655 QoS 2 duplicates, each sent
    again with DUP 1, 2026-12-03), made deterministic: a persistent QoS 2
    subscriber S, offline, on node B; B is SIGSTOPped and taken for dead;
    S resumes on A from its record. B continues, applies A's claim and
    proposes the route of its copy of S again; the copy, claimed away,
    waits for A's request (none comes) and takes what C forwards
    meanwhile: M0..M19, which S gets on A too. It stores them
    (STARLING_TEST_MOVING_HOLD keeps it from sending anything). S's client connects to B with B's Raft port cut
    (`Partition.cut(raft_only=True)`): B's claim commits on C and A but B
    never applies it (in the chaos run, n3 was SIGKILLed right after its
    claim); B is SIGKILLed and started again, Raft still cut, its stored
    copy of S loaded. S's client connects to C, whose claim asks B (the
    owner its registry names); B, not caught up, answers with its stored
    copy, judged by the owners rule (A, the first owner after the copy's
    claim). Before, the rule left out only messages in state "queued", and
    a message loaded from the store is restored as possibly sent (state
    "PUBLISH sent", no packet id): the state carried M0..M19, and C
    delivered all 20 again (DUP 1); now a message that carries no exchange
    with a packet id is left out as a queued one is."""
    reason = faults.nft_available()
    if reason:
        pytest.skip(reason)
    c, hold, cn, b, a, cid, topic, p, sent = held_copies_and_a_subscriber(
        cluster_factory, tmp_path, "restate", STARLING_CLUSTER_CLAIM_TIMEOUT="8000")
    cnid = f"{faults.node_id(cn):016x}"
    s = copy_on_a_stopped_node_takes_what_s_got(cn, b, a, cid, topic, p, sent, "restate")
    s.stop()
    epoch_a = faults.tables(cn)["registry"][cid][1]
    part = faults.Partition(c)
    try:
        # S's client on B: B's claim commits without B (its Raft cut, its
        # proposal goes to the leader on the channel) and B never applies it
        part.cut([b], [n for n in c.nodes if n is not b], raft_only=True)
        x = mqttraw.Client(b, version=5)
        x.connect(cid, clean=False, properties={"session_expiry_interval": 600}, expect=False)
        wait_until(lambda: faults.tables(cn)["registry"].get(cid, (0, 0))[0] ==
                   faults.node_id(b), 30, f"B's claim of {cid} committed")
        assert faults.tables(cn)["registry"][cid][1] > epoch_a
        kill(b)
        x.close()
        start = len(b.logtext())
        b.start()
        loaded = wait_until(lambda: re.search(r"INFO store \S+: \d+ sessions, (\d+) queued messages",
                                              b.logtext()[start:]), 30,
                            f"{b.name} loading its store")
        assert int(loaded.group(1)) >= len(sent), loaded.group(0)  # the copy's M0..M19
        # the cluster's side loaded too (the outbox after the sessions):
        # before, B answered "not found" to a request that came first
        wait_until(lambda: "the store is loaded: requests for stored sessions are answered" in
                   b.logtext()[start:], 30, f"{b.name} answering for its stored sessions")
        # S's client on C: C's claim asks B, which answers with its stored
        # copy before it caught up (its start-up pass has not run)
        bg = Background(lambda: resumed_on(cn, cid, timeout=60))
        moved = f"the session of '{cid}' moved to {cnid} (claim"
        try:
            wait_until(lambda: moved in b.logtext()[start:], 30,
                       f"{b.name} answering {cn.name}'s request with its stored copy")
            assert "start-up pass over" not in b.logtext()[start:]
        finally:
            part.heal()
            bg.join()
    finally:
        part.heal()
    s = bg.result()
    # the copies no longer held: what reaches C directly waits no more for
    # the late messages of B's copy (the marker below)
    hold.unlink()
    left = re.findall(rf"(\d+) message\(s\) of '{re.escape(cid)}' left out of its state",
                      b.logtext()[start:])
    none_delivered_again("restarted copy's state", s, p, topic,
                         lambda: f" on {cn.name}; left out of B's state: {left}")


@pytest.mark.parametrize("state_stored", [True, False], ids=["state-stored", "before-state"])
def test_killed_claims_stored_session_takes_none_of_its_old_copys_messages_a_later_owner_had(
        cluster_factory, tmp_path, state_stored):
    """Chaos seed 1188520366 with --more (366 and 484 QoS 2 duplicates with
    DUP 1, 2026-12-03), made deterministic. A persistent QoS 2 subscriber
    S, offline, on node B; B is SIGSTOPped and taken for dead, S resumes
    on A from its record and gets M0..M19, published on C, which C also
    B continues, applies A's claim and proposes the route of its copy of S
    again; the copy, claimed away, takes M0..M19, published on C, which S
    gets on A, and stores them; when its wait for A's request is over it
    moves out to A, judged by the owners rule (A had its routes everywhere
    before M0..M19 were routed), held there (STARLING_TEST_MOVING_HOLD). S's client connects to B, which takes S
    over from A: A's state comes ("moved here") and is stored under S's id,
    beside the copy's rows; the claim waits for its routes (B's batch
    held, STARLING_TEST_BATCH_HOLD), so the old copy is not folded yet. B
    is SIGKILLed and started again: its store loads the claim's session
    and the copy's rows as one session, the claim's. S's client connects
    to C, which takes S over from B. Before, B's state carried M0..M19 and C
    delivered all 20 a second time; now the copy's rows that the owners
    rule leaves out leave the store once it knows its bound.
    `before-state`: B is SIGKILLed after it applied its claim, before A's
    state came (A SIGSTOPped, continued once B is down): the start-up pass
    names the stored copy the claim's session, with the same outcome
    before."""
    hold = tmp_path / "moving-hold"
    hold.write_text("")
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_CLUSTER_CLAIM_TIMEOUT="8000",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    hold_files_per_node(c, tmp_path, STARLING_TEST_BATCH_HOLD="batch-hold")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "oldrows", "oldrows/t")
    aid = f"{faults.node_id(a):016x}"
    p = PahoClient(cn, uid("oldrowsp"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(20)]
    s = copy_on_a_stopped_node_takes_what_s_got(cn, b, a, cid, topic, p, sent, "oldrows")
    # then the copy moves out to A, judged
    moved = f"the session of '{cid}' moved to {aid}"
    assert moved not in b.logtext(), f"{b.name}'s copy moved out before it took M0..M19"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name}'s copy of {cid} moving out to A")
    bound = wait_until(lambda: re.search(rf"the old copy of '{re.escape(cid)}' takes nothing "
                                         r"routed from index (\d+)", b.logtext()), 30,
                       f"{b.name}'s copy of {cid} judged by the owners rule")
    # a persistent publisher on B: its QoS 2 PUBREC waits for its store
    # batch, committed after every earlier one
    bar = mqttraw.connected(b, uid("oldrowsbar"), 5, properties={"session_expiry_interval": 600})
    s.disconnect()
    b_hold = tmp_path / f"batch-hold-{b.name}"
    b_hold.write_text("")
    start = len(b.logtext())
    here = f"the session of '{cid}' moved here"
    x = mqttraw.Client(b, version=5)
    try:
        if not state_stored:
            pause(a)
        # S's client on B: A's state comes and is stored; the claim's
        # routes wait (B's batch held), and with them the fold of B's copy
        x.connect(cid, clean=False, properties={"session_expiry_interval": 600}, expect=False)
        if state_stored:
            wait_until(lambda: here in b.logtext()[start:], 30,
                       f"{b.name} taking {cid} over from A")
            wait_until(lambda: "this node's batch waits" in b.logtext()[start:], 30,
                       f"{b.name} holding the routes of its claim of {cid}")
            bar.publish(uid("oldrows/bar"), b"bar", qos=2, packet_id=1)
            assert bar.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == 1
        else:
            # (A stopped: the claim waits for its state)
            wait_until(lambda: faults.tables(b)["registry"].get(cid, (0, 0))[0] ==
                       faults.node_id(b), 30, f"{b.name}'s claim of {cid} applied there")
            assert here not in b.logtext()[start:]
        assert f"'{cid}' is claimed here again while its old copy" not in b.logtext()[start:]
        kill(b)
    finally:
        resume(a)
        b_hold.unlink()
        x.close()
        bar.close()
    start = len(b.logtext())
    b.start()
    wait_healthy(c)
    loaded = wait_until(lambda: re.search(r"INFO store \S+: \d+ sessions, (\d+) queued messages",
                                          b.logtext()[start:]), 30, f"{b.name} loading its store")
    wait_until(lambda: "start-up pass over" in b.logtext()[start:], 30,
               f"{b.name}'s start-up pass")
    assert faults.tables(cn)["registry"][cid][0] == faults.node_id(b)
    # S's client on C: C takes S over from B, whose state comes from its store
    s = resumed_on(cn, cid, timeout=60)
    hold.unlink()
    gone = re.compile(rf"(\d+) stored message\(s\) of the old copy of '{re.escape(cid)}' that its "
                      r"owner had \(routed from index \d+ on, or its own publishes\) leave the store")
    none_delivered_again("old copy's rows beside a killed claim", s, p, topic,
                         lambda: f" on {cn.name}; B's copy judged from index {bound.group(1)}, "
                         f"its rows that left the store then: {gone.findall(b.logtext())}; "
                         f"B loaded {loaded.group(1)} queued message(s)")


@pytest.mark.parametrize("at", ["stored", "ended"])
def test_fold_cut_by_a_kill_keeps_the_copys_messages(cluster_factory, tmp_path, at):
    """Chaos seed 1093382011 with --more (227 acknowledged QoS 1/2 messages
    lost, 2026-12-03), made deterministic. A persistent subscriber S,
    offline, on node B gets M0..M19 (each acknowledged once it is on B's
    disk); B is SIGKILLed, and S resumes on A from its record, without
    them. A is SIGSTOPped (its request for S's state waits in it) and B
    started again: its stored copy of S, claimed away by A, moves out to A
    and holds M0..M19 (STARLING_TEST_MOVING_HOLD). S's client connects to
    B, whose claim resumes S from its record (A does not answer) and folds
    that copy into the claim's session (`cn_moving_detach`,
    `cn_moving_fold`); B ends as a SIGKILL would once the claim's store
    batch committed, before the fold's writes go (STARLING_TEST_FOLD_CUT).
    A is continued, B started again, and S's client resumes on B. Before,
    the copy's end had deleted every row of S's id in a batch of its own,
    the claim's session went in the next, and M0..M19, put into it by the
    fold in a later batch, were nowhere: S got none of them; now S gets
    each of them once. `ended`: the cut comes once the copy ended, before
    the claim's session is stored (before, the copy's rows were gone then
    too, and the claim's session not stored: S resumed from its record)."""
    hold = tmp_path / "moving-hold"
    hold.write_text("")
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    hold_files_per_node(c, tmp_path, STARLING_TEST_FOLD_CUT="fold-cut")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "foldcut", "foldcut/t")
    aid = f"{faults.node_id(a):016x}"
    # M0..M19 from a publisher on B: each PUBACK waits for the batch that
    # stores it for S, offline there
    q = mqttraw.connected(b, uid("foldcutq"), 5)
    sent = acked_qos1(q, topic + "/x", 20)
    q.close()
    kill(b)
    s = resumed_on(a, cid, timeout=30)  # from its record: without M0..M19
    s.disconnect()
    cut = tmp_path / f"fold-cut-{b.name}"
    pause(a)
    try:
        start = len(b.logtext())
        b.start()
        moved = f"the session of '{cid}' moved to {aid}"
        wait_until(lambda: all(t in b.logtext()[start:] for t in
                               (moved, "start-up pass over", "(MQTT, ")), 60,
                   f"{b.name} finding its stored copy of {cid} claimed away by {a.name}, "
                   "then listening")
        cut.write_text(at if at != "stored" else "")
        x = mqttraw.Client(b, version=5)
        try:
            # S's client on B: B's claim resumes S from its record and
            # folds the held copy
            x.connect(cid, clean=False, properties={"session_expiry_interval": 600},
                      expect=False)
            wait_until(lambda: b.proc.poll() is not None, 60, f"{b.name} cut within the fold")
        finally:
            x.close()
    finally:
        resume(a)
        if cut.exists():
            cut.unlink()
    log = b.logtext()[start:]
    assert f"'{cid}' is claimed here again while its old copy" in log
    assert f"cut at '{at}' of its fold" in log
    b.stop()
    hold.unlink()
    start = len(b.logtext())
    b.start()
    wait_healthy(c)
    s = resumed_on(b, cid, timeout=60)
    p = PahoClient(cn, uid("foldcutp"), 5)
    p.connect()
    got = delivered_before_a_marker(s, p, topic)
    print(f"\n[fold cut {at}] S got {len(got)} of {len(sent)}: {got}")
    assert sorted(got, key=lambda m: int(m[1:])) == sent, f"lost or given twice: {got}"
    for cl in (s, p):
        cl.disconnect()


def taken_over_beside_a_held_copy(cluster_factory, tmp_path, name, topic):
    """subscriber_on_a_follower (S on B) on a cluster with debug logs whose
    old copies moving out wait while tmp_path/moving-hold exists
    (STARLING_TEST_MOVING_HOLD, present); S's client connects to A, which
    takes S over, and B's copy moves out to A, held. Returns the cluster,
    the hold's file, the leader, B, A, S's client id and topic, S's client
    on A and the log line of B's copy moving out."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, name, topic)
    hold.write_text("")
    s = resumed_on(a, cid, timeout=30)
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name}'s copy of {cid} moving out to {a.name}")
    return c, hold, cn, b, a, cid, topic, s, moved


@pytest.mark.parametrize("restart,via_c", [(False, False), (True, False), (False, True),
                                            (True, True)],
                         ids=["running", "restarted", "running-via-c", "restarted-via-c"])
def test_copy_folded_after_a_resumption_from_the_record_leaves_out_what_its_owner_had(
        cluster_factory, tmp_path, restart, via_c):
    """The folds of test_killed_nodes_subscribers_resumed_elsewhere_
    repeatedly (after a resumption from the record), made deterministic: a
    persistent QoS 2 subscriber S, offline, on node B; S's client connects
    to A, which takes S over from B; B's copy of S, moving out to A, is
    held there (STARLING_TEST_MOVING_HOLD) and collects M0..M19, published
    on C, which S gets on A; B is SIGKILLed and started again, its stored
    copy held (`restarted`), or not. A is SIGKILLed and S's client comes
    back to B: S resumes there from A's record, and B's copy is folded
    into it. Before, such a
    fold (after a resumption from the record, unlike one after a takeover)
    took the copy's messages whole, and B delivered M0..M19 a second time.
    Leaving them out had lost messages: the fold moved the session's next
    sequence number past the copy's rows, every packet id in between
    counted as used since the record, and A's exchanges past PUBREC were
    refused. Now the session knows the ids it handed out (pids_used), and
    the fold leaves out what reached A directly: nothing comes twice.
    `via_c`: S resumes on C from A's record first, and its client then
    comes to B, which takes S over from C: the claim that folds B's copy
    took the session from C, not from A, the copy's owner (chaos seed
    1093382011 with --more: a claim of n3 between n2's and n1's, 180 QoS 2
    duplicates with DUP 0). Before, only a claim from the copy's owner left
    out what reached it directly, and B delivered M0..M19 again."""
    c, hold, cn, b, a, cid, topic, s, moved = taken_over_beside_a_held_copy(
        cluster_factory, tmp_path, "foldrec", "fr/t")
    p, sent = twenty_delivered(cn, "foldrecp", topic, s)
    # B's copy took M0..M19 once a marker forwarded after them reaches a
    # subscriber on B (C's forwards to B come in order)
    forwards_to_b_in(b, p, "foldrec")
    start = 0
    if restart:
        kill(b)
        start = len(b.logtext())
        b.start()
        wait_healthy(c)
        wait_until(lambda: moved in b.logtext()[start:], 60,
                   f"{b.name} finding its stored copy of {cid} claimed away by {a.name}")
    kill(a)
    s.stop()
    if via_c:
        s = resumed_on(cn, cid, timeout=30, tries=3)
        assert f"the session of '{cid}' resumed from its record" in cn.logtext()
        s.disconnect()
    s = resumed_on(b, cid, timeout=30)
    hold.unlink()
    log = b.logtext()[start:]
    if not via_c:
        assert f"the session of '{cid}' resumed from its record" in log
    assert f"'{cid}' is claimed here again while its old copy" in log
    none_delivered_again(f"fold after the record, {'restarted' if restart else 'running'}"
                         f"{', via C' if via_c else ''}", s, p, topic, lambda: f" on {b.name}")


@pytest.mark.parametrize("cut", [False, True], ids=["folded", "cut"])
def test_copy_folded_into_a_claim_is_judged_by_the_owners_rule_when_its_bound_came_late(
        cluster_factory, tmp_path, cut):
    """Chaos seed 1093382011 with --minutes 4 --more (537 QoS 2 duplicates,
    2026-12-03: n2's claims committed before the whole cluster's SIGKILL,
    their records never), made deterministic. A persistent QoS 2
    subscriber S, offline, on node B; B is SIGKILLed. S's client connects
    to A, whose claim resumes S from its record (B is dead; its answer to
    A's request, if it comes, comes after the claim went on, and no
    SessionRouted) while A's batch of routes and records waits
    (STARLING_TEST_BATCH_HOLD). B starts again: its stored copy of S,
    claimed away by A, moves out to A with no owner after its claim in the
    record yet, so its bound is not known (no "takes nothing routed from
    index"), and is held (STARLING_TEST_MOVING_HOLD). A's batch goes;
    M0..M19, published on C, reach S on A, and B's copy (B's kept route).
    A's session records no identities (STARLING_TEST_SEEN_RECORD_MS=0: as
    once 60 s passed, or after a restart of its node: in the run, the
    session went on through two restarted nodes). S's client connects to
    B, which takes S over from A and folds its copy into the claim's
    session (`cn_moving_detach`). Before, the fold used the bound the copy
    had when it began to move out (none) and B delivered M0..M19 again;
    now it judges the copy by the owners rule at the fold, as the copy's
    end does (`moving_end`): A's record came before M0..M19 were routed,
    and none comes again.

    `cut`: chaos seed 1093382011 with --more (348 QoS 2 duplicates with DUP
    1, 2026-12-03). B ends as a SIGKILL would within that takeover, once
    the copy ended and before the claim's batch (which takes the copy's
    rows out of the store, and stores the claim's session) is submitted
    (STARLING_TEST_FOLD_CUT "ended"); A's state, stored at once when it
    came, is on B's disk. B is started again and S's client connects to C,
    which takes S over from B. Before, B's copy had stored M0..M19 (its
    bound judged only at the fold), B loaded them with A's state as the
    claim's session (the registry names B), which the owners rule does not
    judge, and C delivered all of them again (restored as possibly sent:
    DUP 1). Now B's copy is judged once A's record is applied on B and
    takes nothing routed past it: none comes again."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_SEEN_RECORD_MS="0",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    hold_files_per_node(c, tmp_path, STARLING_TEST_BATCH_HOLD="batch-hold",
                        STARLING_TEST_FOLD_CUT="fold-cut")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "latebound", "latebound/t")
    aid = f"{faults.node_id(a):016x}"
    hold.write_text("")
    kill(b)
    a_hold = tmp_path / f"batch-hold-{a.name}"
    a_hold.write_text("")
    bg = Background(lambda: resumed_on(a, cid, timeout=90))
    try:
        # A's claim committed and resumed S from its record; its routes
        # and record wait
        wait_until(lambda: f"the session of '{cid}' resumed from its record" in a.logtext(), 60,
                   f"{a.name} resuming {cid} from its record")
        wait_until(lambda: "this node's batch waits" in a.logtext(), 30,
                   f"{a.name} holding the routes and record of {cid}")
        start = len(b.logtext())
        b.start()
        moved = f"the session of '{cid}' moved to {aid} (claim"
        wait_until(lambda: all(t in b.logtext()[start:] for t in
                               (moved, "start-up pass over", "(MQTT, ")), 60,
                   f"{b.name} finding its stored copy of {cid} claimed away by {a.name}")
        judged = f"the old copy of '{cid}' takes nothing routed from index"
        assert judged not in b.logtext()[start:], f"{b.name}'s copy judged before A's record came"
    finally:
        a_hold.unlink()
    s = bg.result()
    wait_healthy(c)
    p, sent = twenty_delivered(cn, "latebndp", topic, s)
    # B's copy took M0..M19 (C's forwards to B come in order)
    forwards_to_b_in(b, p, "latebound")
    session_settled_then_synced(a, cid)
    s.disconnect()
    bound = re.compile(re.escape(judged) + r" (\d+)")
    if cut:
        cut_file = tmp_path / f"fold-cut-{b.name}"
        cut_file.write_text("ended")
        x = mqttraw.Client(b, version=5)
        try:
            # S's client on B: B takes S over from A; the fold is cut
            x.connect(cid, clean=False, properties={"session_expiry_interval": 600},
                      expect=False)
            wait_until(lambda: b.proc.poll() is not None, 60, f"{b.name} cut within the fold")
        finally:
            x.close()
            cut_file.unlink()
        log = b.logtext()[start:]
        assert f"the session of '{cid}' moved here" in log
        assert f"'{cid}' is claimed here again while its old copy" in log
        assert "cut at 'ended' of its fold" in log
        judged_at = bound.findall(log)
        b.stop()
        start = len(b.logtext())
        b.start()
        wait_healthy(c)
        loaded = re.search(r"store \S+: \d+ sessions, (\d+) queued", b.logtext()[start:])
        # S's client on C: C takes S over from B, which answers from its store
        s = resumed_on(cn, cid, timeout=60)
        hold.unlink()
        none_delivered_again("copy folded into a takeover, its bound late, the fold cut", s, p,
                             topic, lambda: f" on {cn.name}; B's copy judged from index "
                             f"{judged_at}; B loaded {loaded and loaded.group(1)} queued "
                             "message(s)")
        return
    # S's client on B: B takes S over from A and folds its held copy
    s = resumed_on(b, cid, timeout=60)
    log = b.logtext()[start:]
    assert f"the session of '{cid}' moved here" in log
    assert f"'{cid}' is claimed here again while its old copy" in log
    hold.unlink()
    none_delivered_again("copy folded into a takeover, its bound late", s, p, topic,
                         lambda: f" on {b.name}; judged at the fold from index "
                         f"{bound.findall(b.logtext()[start:])}")


@pytest.mark.parametrize("mode", ["running", "restarted", "sent"])
def test_copy_folded_after_a_resumption_from_the_record_leaves_out_what_its_owner_published(
        cluster_factory, tmp_path, mode):
    """Chaos seed 1188520366 with --more (2 QoS 2 duplicates, 2026-12-03:
    the owners rule's bound missed a message that the owner's own publisher
    gave it locally), made deterministic. A persistent QoS 2 subscriber S,
    offline, on node B; S's client connects to A, which takes S over from
    B, while A's batch of routes and records waits (STARLING_TEST_BATCH_HOLD):
    S's session is in A's index, its routes and record are not in the log
    yet. M0..M19, published by a client of A, reach S's session on A
    locally, and B too (B's route for S's copy, which moves out to A, held:
    STARLING_TEST_MOVING_HOLD). A's batch goes; S gets M0..M19 on A.
    `running`, `restarted`: B is SIGKILLed and started again, its stored
    copy held (`restarted`), or not; A is SIGKILLed and S's client comes
    back to B: S resumes there from A's record, and B's copy is folded into
    it. `sent`: A's session records no identities
    (STARLING_TEST_SEEN_RECORD_MS=0, as once 60 s passed, or after A's
    restart), and B's copy, no longer held, sends what it holds to A. The
    copy's bound (A's routes everywhere: SessionRouted, or A's first record
    by the owners rule) is an index of routed messages; M0..M19 were routed
    before it, though A's session had them (a publish on A is delivered
    there without a route). Before, the fold (or A) gave them again (main's
    build: all 20, each variant); now A's record says from which of its
    publish numbers its own publishes reached S's session there
    (RecordOwner.local_from), and the copy leaves those out."""
    hold = tmp_path / "moving-hold"
    env = dict(FAULT_ENV, STARLING_LOG_LEVEL="debug", STARLING_TEST_MOVING_HOLD=str(hold))
    if mode == "sent":
        env["STARLING_TEST_SEEN_RECORD_MS"] = "0"
    c = cluster_factory(extra_env=env)
    hold_files_per_node(c, tmp_path, STARLING_TEST_BATCH_HOLD="batch-hold")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "ownpub", "op/t")
    hold.write_text("")
    p = PahoClient(a, uid("ownpubp"), 5)
    p.connect()
    a_hold = tmp_path / f"batch-hold-{a.name}"
    a_hold.write_text("")
    bg = Background(lambda: resumed_on(a, cid, timeout=60))
    sent = [f"m{k}".encode() for k in range(20)]
    try:
        moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
        wait_until(lambda: moved in b.logtext(), 30,
                   f"{b.name}'s copy of {cid} moving out to {a.name}")
        # S's session joined A's index: its routes wait in A's batch
        wait_until(lambda: "this node's batch waits" in a.logtext(), 30,
                   f"{a.name} holding the routes of {cid}")
        for m in sent:
            p.publish(topic + "/x", m, qos=2)
        # B's copy took M0..M19 (A forwards to B in order)
        forwards_to_b_in(b, p, "ownpub")
    finally:
        a_hold.unlink()
        bg.join()
    s = bg.result()
    assert [s.get(WAIT).payload for _ in sent] == sent
    if mode == "sent":
        hold.unlink()
        none_again_after_late_messages(b, a, cid, s, p, topic, "copy sent to the owner", 30)
        return
    start = 0
    if mode == "restarted":
        session_settled_then_synced(a, cid)
        kill(b)
        start = len(b.logtext())
        b.start()
        wait_healthy(c)
        wait_until(lambda: moved in b.logtext()[start:], 60,
                   f"{b.name} finding its stored copy of {cid} claimed away by {a.name}")
    session_settled_then_synced(a, cid)
    kill(a)
    s.stop()
    p.stop()
    s = resumed_on(b, cid, timeout=30, tries=3)
    hold.unlink()
    log = b.logtext()[start:]
    assert f"the session of '{cid}' resumed from its record" in log
    assert f"'{cid}' is claimed here again while its old copy" in log
    pc = PahoClient(cn, uid("ownpubc"), 5)
    pc.connect()
    none_delivered_again(f"fold of a copy, the owner's own publishes, {mode}", s, pc, topic,
                         lambda: f" on {b.name}")


def test_owners_own_publishes_before_its_session_joined_come_from_the_old_copy(cluster_factory):
    """The other side of the test above: what the owner's own publishers
    published before its session was in its index reached only the old
    copy, which must hand it on. A persistent QoS 2 subscriber S, offline,
    on node B; B is SIGSTOPped; S's client connects to A, whose claim
    commits and then waits for B's state (cluster_claim_timeout, 4 s here)
    while M0..M4 are published by a client of A: A forwards them to B (its
    route for S) and S's session, not in A's index yet, does not get them.
    A resumes S from its record. B continues: its copy of S, claimed away,
    has M0..M4 (routed before A's first record, numbered before A's
    session joined the index: RecordOwner.local_from) and sends them to A.
    S gets each once."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_CLUSTER_CLAIM_TIMEOUT="4000"))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "ownbefore", "ob/t")
    p = PahoClient(a, uid("ownbeforep"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(5)]
    resumed = f"the session of '{cid}' resumed from its record"
    pause(b)
    try:
        bg = Background(lambda: resumed_on(a, cid, timeout=60))
        wait_until(lambda: faults.tables(cn)["registry"].get(cid, (0, 0))[0] ==
                   faults.node_id(a), 30, f"{a.name}'s claim of {cid} committed")
        for m in sent:
            p.publish(topic + "/x", m, qos=2)
        # A's claim still waits for B's state: S's session is not in A's
        # index yet
        assert resumed not in a.logtext()
        s = bg.result()
    finally:
        resume(b)
    assert resumed in a.logtext()
    got = [s.get(30).payload for _ in sent]
    assert sorted(got) == sent, got
    none_delivered_again("owner's own publishes before its session joined", s, p, topic,
                         lambda: f"; got first {got}")


def routed_before_a_held_record(tmp_path, hold, cn, b, a, cid, topic, w, old, b_stays=False,
                                between=None):
    """The start of held_copy_with_a_watcher's tests of a forward routed
    between a claim and its record: S's client connects to A, which takes
    S over while A's batch of routes and records waits
    (STARLING_TEST_BATCH_HOLD); `stopped`: B SIGSTOPped and taken for dead
    first (A resumes S from its record), and continued at the end unless
    b_stays; M0..M19, published by p on C, reach A by W's route and B by
    S's; between(p), if given, runs; A's batch goes. Returns (S's client
    on A, p, M0..M19)."""
    p = PahoClient(cn, uid(cid + "p"), 5)
    p.connect()
    hold.write_text("")
    a_hold = tmp_path / f"batch-hold-{a.name}"
    sent = [f"m{k}".encode() for k in range(20)]
    if old == "stopped":
        pause(b)
    try:
        if old == "stopped":
            # A resumes S from its record without asking B (else B, back,
            # answers the request with its copy, M0..M19 in it)
            silent = f"member {faults.node_id(b):016x} silent for"
            wait_until(lambda: silent in cn.logtext(), 30, f"{cn.name} taking {b.name} for dead")
            wait_until(lambda: one_down_for(a), 30, f"{a.name} listing {b.name} as unreachable")
        a_hold.write_text("")
        bg = Background(lambda: resumed_on(a, cid, timeout=60))
        try:
            # S's session joined A's index: its routes and record wait
            wait_until(lambda: "this node's batch waits" in a.logtext(), 30,
                       f"{a.name} holding the routes and record of {cid}")
            # C applied A's claim (A's session takes what C routes from now on)
            applied = metric_value(a, "starling_raft_applied_index")
            wait_until(lambda: metric_value(cn, "starling_raft_applied_index") >= applied, 30,
                       f"{cn.name} applying entry {applied}")
            for m in sent:
                p.publish(topic + "/x", m, qos=2)
            # they reached A (W's route), S's session there too
            assert [w.get(WAIT).payload for _ in sent] == sent
            if between:
                between(p)
        finally:
            a_hold.unlink()
            bg.join()
    except BaseException:
        resume(b)
        raise
    if not b_stays:
        resume(b)
    s = bg.result()
    if old == "stopped":
        assert f"'{cid}' was owned by {faults.node_id(b):016x}, which is down" in a.logtext()
    return s, p, sent


@pytest.mark.parametrize("old", ["stopped", "running", "restarted"])
def test_forward_routed_between_the_new_owners_claim_and_its_record_comes_once(
        cluster_factory, tmp_path, old):
    """Chaos seed 7303 with --more (3 QoS 2 duplicates, 2026-12-03), made
    deterministic. A persistent QoS 2 subscriber S, offline, on node B, and
    W, a subscriber of the same filter on A (A routes it already). S's
    client connects to A, which takes S over while A's batch of routes and
    records waits (STARLING_TEST_BATCH_HOLD): S's session is in A's index,
    taking forwards from its claim's index, and its record is not in the
    log. `stopped`: B is SIGSTOPped and taken for dead first (A resumes S
    from its record, NodeDown keeps B's route for S); `running`: B answers
    with S's state. M0..M19, published on C, reach A by W's route (W gets
    them) and B by S's route; B's copy of S, claimed away, takes them and
    is held (STARLING_TEST_MOVING_HOLD). A's batch goes. A is SIGKILLed and
    S's client comes back to B: S resumes there from A's record and B's
    copy is folded in, leaving out what was routed from A's record on (the
    owners rule). M0..M19 were routed before it: before, S got them on A
    (its session took them) and again on B (the fold), 20 of 20 twice. Now
    C's forwards name their other destinations (Publish.also_to), and A's
    record says which of C's forwards A had begun to deliver when S joined
    its index (RecordOwner.pubs_seen): B's copy leaves out M0..M19, which
    came to A after that, and S gets each once.
    `restarted`: as `running`, and B is SIGKILLed once its copy took
    M0..M19, before A's record came (the record would have had B leave out
    of its store what A had), and started again: the copy, read back from
    B's store, is judged and folded. Before, a message's other
    destinations (Publish.also_to) were not stored, the rule could not
    tell that A had M0..M19, and the copy kept them all (chaos seed 10702
    with --resend --more: n1 restarted between taking a message and
    giving its copy up; 1 QoS 2 duplicate). A short cluster_resend_wait
    ends the wait such messages are parked for (S is blind: test_own_
    copy_moving_out_folded_into_a_resumption_waits_for_the_owner_it_
    waits_for) before the marker; now none is kept."""
    env = {"STARLING_CLUSTER_RESEND_WAIT": "2000"} if old == "restarted" else {}
    c, hold, cn, b, a, cid, topic, w = held_copy_with_a_watcher(cluster_factory, tmp_path,
                                                                "routewin", "rw/t", **env)

    def took_then_killed(p):
        forwards_to_b_in(b, p, "routewin")
        kill(b)

    s, p, sent = routed_before_a_held_record(
        tmp_path, hold, cn, b, a, cid, topic, w, "stopped" if old == "stopped" else "running",
        between=took_then_killed if old == "restarted" else None)
    on_a = delivered_before_a_marker(s, p, topic)
    # B's copy of S, claimed away, moving out to A and held, took M0..M19
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    start = 0
    if old == "restarted":
        start = len(b.logtext())
        b.start()
        wait_healthy(c)
    wait_until(lambda: moved in b.logtext()[start:], 60,
               f"{b.name}'s copy of {cid} moving out to {a.name}")
    if old != "restarted":
        forwards_to_b_in(b, p, "routewin")
    s = killed_a_then_back_on_b(a, b, cid, s, w, hold)
    log = b.logtext()[start:]
    assert f"the session of '{cid}' resumed from its record" in log
    assert f"'{cid}' is claimed here again while its old copy" in log
    if old == "restarted":
        if any(int(n) for _, n in own_copy_folded(b, cid, start)):
            parked_judged(b, a, cid, "routed between claim and record, restarted")
    on_b = delivered_before_a_marker(s, p, topic)
    print(f"\n[routed between claim and record, {old}] on A: {len(on_a)}, on B: {len(on_b)}; "
          f"twice: {sorted(set(on_a) & set(on_b))}")
    assert sorted(on_a + on_b) == sorted(sent), f"on A {on_a}, on B {on_b}"
    for x in (s, p):
        x.disconnect()


def killed_a_then_back_on_b(a, b, cid, s, w, hold):
    """Once what S's session wrote on A is on A's disk, A is SIGKILLed (S's
    and W's clients stop) and S's client comes back to B, where S resumes
    from A's record; then B's old copies go on (`hold` removed). Returns
    S's client on B."""
    session_settled_then_synced(a, cid)
    kill(a)
    s.stop()
    w.stop()
    s = resumed_on(b, cid, timeout=30, tries=3)
    hold.unlink()
    return s


def parked_judged(cn, a, cid, what):
    """node cn's judgements of cid's parked late messages, once it logged
    one (A's copy came, or the wait ran out): [(waited, had, taken)]."""
    judged = re.compile(rf"'{re.escape(cid)}': (\d+) late message\(s\) of older copies waited "
                        rf"for its old owner's: (\d+) of them it had by then \(not again\), "
                        rf"(\d+) taken")
    counts = wait_until(lambda: judged.findall(cn.logtext()), 60,
                        f"{cn.name} judging what waited for {a.name}'s copy")
    print(f"\n[{what}] judged {counts}")
    return counts


def own_copy_folded(b, cid, start=0):
    """B's account of its own copy of cid folded into cid's session there
    (its log from `start` on), once it logged one: [(late messages,
    parked)]."""
    came = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}, \d+ of them had come directly \(not again\), "
                      rf"\d+ past PUBREC not taken, (\d+) parked")
    return wait_until(lambda: came.findall(b.logtext()[start:]), 30, f"{b.name} folding its copy")


def parked_passed_then_judged(p, s, topic, node, a, cid, sent, what):
    """M0..M19 (sent) parked in S's queue on `node`: a marker p publishes
    passes them (S gets it first); A starts again, its copy's state comes,
    and `node` judges all of them as had: none comes again."""
    marker = uid("marker").encode()
    p.publish(topic + "/marker", marker, qos=2)
    got = s.get(30).payload
    assert got == marker, f"delivered before the marker: {got!r}"
    a.start()
    counts = parked_judged(node, a, cid, what)
    assert counts == [(str(len(sent)), str(len(sent)), "0")]
    none_delivered_again(what, s, p, topic)


def test_own_copy_moving_out_folded_into_a_resumption_waits_for_the_owner_it_waits_for(
        cluster_factory, tmp_path):
    """Chaos seed 10702 with --resend --more (1 QoS 2 duplicate at 2
    subscribers, 2026-12-06): a node's own copy, moving out, folded into a
    claim of that node resumed from the record, where the owners rule did
    not bound what the copy held. As in test_forward_routed_between_the_
    new_owners_claim_and_its_record_comes_once (`running`): S's client
    connects to A, which takes S over from B while A's routes and
    record wait; M0..M19, published on C, reach A by W's route (S gets them
    there) and B by S's route, where B's copy of S, moving out to A and
    held (STARLING_TEST_MOVING_HOLD), takes them. STARLING_TEST_OWNERS_
    UNKNOWN makes the record show no owner after B's claim, so the copy
    keeps them all. A is SIGKILLed and S's client comes back to B: S
    resumes there from A's record, waiting for A's copy (blind), and B's
    copy is folded in. Before, B delivered M0..M19 at once, a second time
    (another node's copy's late messages waited for A's; this node's own
    did not). Now they wait in S's queue as those do: a marker published
    after them passes them, and A, started again, sends its copy's state,
    whose identities say that S's client had all 20: none comes again."""
    c, hold, cn, b, a, cid, topic, w = held_copy_with_a_watcher(
        cluster_factory, tmp_path, "ownpark", "op/t", STARLING_TEST_OWNERS_UNKNOWN="1",
        STARLING_CLUSTER_RESEND_WAIT="120000")
    s, p, sent = routed_before_a_held_record(tmp_path, hold, cn, b, a, cid, topic, w, "running")
    assert delivered_before_a_marker(s, p, topic) == sent
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name}'s copy of {cid} moving out to {a.name}")
    forwards_to_b_in(b, p, "ownpark")
    s = killed_a_then_back_on_b(a, b, cid, s, w, hold)
    assert f"the session of '{cid}' resumed from its record" in b.logtext()
    folded = own_copy_folded(b, cid)
    assert f"'{cid}' is claimed here again while its old copy" in b.logtext()
    assert folded == [(str(len(sent)), str(len(sent)))]
    parked_passed_then_judged(p, s, topic, b, a, cid, sent, "own copy, parked")


def test_a_third_copys_late_messages_wait_for_the_copy_a_resumed_session_waits_for(
        cluster_factory, tmp_path):
    """Chaos seed 1399756914 (CI, 2026-12-05: 1 QoS 2 duplicate), its shape
    made deterministic. As in the test above (`stopped`), S's client
    connects to A while B is SIGSTOPped and A's routes and record wait; S
    gets M0..M19 on A, which C also holds for B (S's route there). B
    continues and its copy of S, claimed away by A, takes M0..M19 from C's
    outbox and waits for A's request; meanwhile A is SIGKILLed and S
    resumes on C from its record, waiting for A's copy (blind). No request
    came, and B's copy sends what it holds to C. It keeps all of them:
    STARLING_TEST_OWNERS_UNKNOWN makes the record show no owner after B's
    claim, as when the owners rule cannot bound a copy (docs/cluster.md,
    *What is not guaranteed yet*). cluster_claim_timeout is 5 s here, so
    that B's copy waits 6 s for A's request while S moves to C.
    Before, C delivered them a second time. Now they wait in S's queue (a
    marker published after them passes them) until A, started again,
    sends its copy's state, whose identities say that A's client had all
    20: none comes again."""
    c, hold, cn, b, a, cid, topic, w = held_copy_with_a_watcher(
        cluster_factory, tmp_path, "parked", "pk/t", STARLING_TEST_OWNERS_UNKNOWN="1",
        STARLING_CLUSTER_RESEND_WAIT="120000", STARLING_CLUSTER_CLAIM_TIMEOUT="5000")
    s, p, sent = routed_before_a_held_record(tmp_path, hold, cn, b, a, cid, topic, w, "stopped",
                                             b_stays=True)
    try:
        assert delivered_before_a_marker(s, p, topic) == sent
        session_settled_then_synced(a, cid)
    finally:
        resume(b)
    s = claimed_by_a_then_resumed_on_c(cn, b, a, cid, s, also=(w,))
    hold.unlink()
    came = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}")
    wait_until(lambda: sum(int(n) for n in came.findall(cn.logtext())) >= len(sent), 40,
               f"{cn.name} taking {b.name}'s copy of M0..M19")
    parked_passed_then_judged(p, s, topic, cn, a, cid, sent, "third copy, parked")


def copy_held_on_b_and_s_on_a(cluster_factory, tmp_path, name):
    """held_copy_with_a_watcher: a persistent QoS 2 subscriber S, offline,
    on B, W subscribed to its filter on A; then S moves to A, and B's old
    copy, claimed away, stays held (STARLING_TEST_MOVING_HOLD, every node:
    in its store too). Returns the cluster, the hold file, the leader C, B,
    A, S's client id, the topic, W, a publisher on C, and B's batch hold
    file (STARLING_TEST_BATCH_HOLD)."""
    c, hold, cn, b, a, cid, topic, w = held_copy_with_a_watcher(cluster_factory, tmp_path,
                                                                name, name + "/t")
    p = PahoClient(cn, uid(name + "p"), 5)
    p.connect()
    hold.write_text("")
    s = resumed_on(a, cid, timeout=30)
    s.disconnect()
    to_a = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: to_a in b.logtext(), 30, f"{b.name}'s copy of {cid} moving out to {a.name}")
    session_settled_then_synced(a, cid)
    return c, hold, cn, b, a, cid, topic, w, p, tmp_path / f"batch-hold-{b.name}"


def b_claiming_while_its_batch_waits(a, b, cid):
    """S's client connects to B (a raw 5.0 client, returned) while B's
    batch of routes and records waits: B's claim applies, A hands S's state
    over (A's session becomes a copy moving out to B, held), and the claim
    waits for its routes."""
    y = mqttraw.Client(b, version=5)
    y.connect(cid, clean=False, properties={"session_expiry_interval": 600}, expect=False)
    to_b = f"the session of '{cid}' moved to {faults.node_id(b):016x}"
    wait_until(lambda: to_b in a.logtext(), 30, f"{a.name} handing {cid}'s state to {b.name}")
    wait_until(lambda: "this node's batch waits" in b.logtext(), 30,
               f"{b.name} holding the routes and record of {cid}")
    return y


@pytest.mark.parametrize("how", ["restarted", "copy"])
def test_session_a_claim_found_on_its_node_records_what_it_took(cluster_factory, tmp_path, how):
    """Chaos seed 7820 with --more --no-lb (6 QoS 2 duplicates, 2026-12-03),
    made deterministic. A persistent QoS 2 subscriber S, offline, on node
    B, moves to A; B's old copy stays (STARLING_TEST_MOVING_HOLD, on every
    node), in its store too. S's client connects to B while B's batch of
    routes and records waits (STARLING_TEST_BATCH_HOLD): B's claim commits
    and A hands S's state over (A's session becomes a copy moving out to B,
    held). `restarted` (the chaos run's shape): B is SIGKILLed before it
    answers and started again; the registry names B and its store has the
    old copy, which becomes S's session there, while S's record still
    names A; S connects to B again, a claim that gives it the session B
    holds (none comes with it), while B's batch waits again. `copy`: B's
    claim goes on, S's session joins B's index beside the old copy (which
    is folded into it), and its CONNACK waits for the batch. M0..M19,
    published on the leader C, reach A's copy (W's route) and S's session
    on B (B's routes proposed again at its start; `copy`: the route of V,
    a subscriber there), and S gets them on B. B's
    batch goes; B is SIGKILLed and S resumes on A from B's record, into
    which A's copy is folded. Before, that record said nothing of what B's
    session took (it had not come by a claim that moved it with no copy
    on B): A's copy kept M0..M19, routed before that record, and S got them
    a second time (main's build: 20 of 20, `restarted` 2 of 2 runs). Now
    the record says from which route table index B's session took every
    forward and which of C's forwards had reached B at its claim
    (RecordOwner.routed_from, pubs_seen), and A's copy leaves out M0..M19."""
    c, hold, cn, b, a, cid, topic, w, p, b_hold = copy_held_on_b_and_s_on_a(
        cluster_factory, tmp_path, "ownheld")
    v = None
    if how == "copy":
        v = PahoClient(b, uid("ownheldv"), 5)
        v.connect()
        assert v.subscribe(topic + "/#", qos=2) == [2]
    b_hold.write_text("")
    y = b_claiming_while_its_batch_waits(a, b, cid)
    claimed = faults.tables(cn)["registry"][cid]
    assert claimed[0] == faults.node_id(b), f"registry {claimed}"
    sent = [f"m{k}".encode() for k in range(20)]
    try:
        if how == "restarted":
            kill(b)
            y.close()
            b_hold.unlink()
            start = len(b.logtext())
            b.start()
            wait_healthy(c)
            wait_until(lambda: "start-up pass over" in b.logtext()[start:], 30,
                       f"{b.name}'s start-up pass")
            # B's routes, proposed again at its start, are in C's table
            wait_until(lambda: (faults.node_id(b), topic + "/#") in faults.tables(cn)["routes"],
                       30, f"{b.name}'s route of {topic}/# on {cn.name}")
            b_hold.write_text("")
            s = resumed_on(b, cid, timeout=30)
            log = b.logtext()[start:]
            # no session came with this claim: B gave S the one it held
            for other in (f"the session of '{cid}' moved here",
                          f"the session of '{cid}' resumed",
                          f"'{cid}' is this node's by the registry but not in its store",
                          f"'{cid}' was owned by", f"no session record of '{cid}'"):
                assert other not in log, f"{b.name}: {other}"
            mine = faults.tables(cn)["registry"][cid]
            assert mine[0] == faults.node_id(b) and mine[1] > claimed[1], f"registry {mine}"
            for m in sent:
                p.publish(topic + "/x", m, qos=2)
        else:
            for m in sent:
                p.publish(topic + "/x", m, qos=2)
            assert [v.get(WAIT).payload for _ in sent] == sent  # they reached B
            b_hold.unlink()
            y.connack = y.expect(mqttraw.CONNACK, 30)
            assert y.connack.reason_code == 0 and y.connack.session_present, y.connack
            y.close()
            s = resumed_on(b, cid, timeout=30)
            mine = faults.tables(cn)["registry"][cid]
        assert [w.get(WAIT).payload for _ in sent] == sent  # they reached A
        on_b = delivered_before_a_marker(s, p, topic)
        assert on_b == sent, f"on {b.name}: {on_b}"
    finally:
        if b_hold.exists():
            b_hold.unlink()
    wait_until(lambda: cid in faults.tables(cn)["sessions"] and
               faults.tables(cn)["registry"][cid] == mine, 30, f"{b.name}'s record of {cid}")
    session_settled_then_synced(b, cid)
    kill(b)
    for x in (s, w, v):
        if x:
            x.stop()
    s = resumed_on(a, cid, timeout=30, tries=3)
    hold.unlink()
    assert f"'{cid}' is claimed here again while its old copy" in a.logtext()
    on_a = delivered_before_a_marker(s, p, topic)
    print(f"\n[{how}: a session the claim found on its node] on {b.name}: {len(on_b)}, "
          f"again on {a.name}: {len(on_a)}")
    assert on_a == [], f"QoS 2 messages delivered twice: {on_a}"
    for x in (s, p):
        x.disconnect()


class _HoldingSubscriber:
    """QoS 2 receipt as paho 1.6 does it: a PUBLISH is kept by packet id
    (a later PUBLISH with that id replaces it) and given to the application
    at its PUBREL. `got` is what the application got, in order."""

    def __init__(self, cl):
        self.cl, self.held, self.got = cl, {}, []

    def step(self, timeout):
        p = self.cl.recv(timeout)
        if p.type == mqttraw.PUBLISH and p.qos == 2:
            self.held[p.packet_id] = p.payload
            self.cl.pubrec(p.packet_id)
        elif p.type == mqttraw.PUBREL:
            if p.packet_id in self.held:
                self.got.append(self.held.pop(p.packet_id))
            self.cl.pubcomp(p.packet_id)
        return p


def holding_m0_awaiting_pubrel(cluster_factory, name):
    """A cluster; a raw persistent QoS 2 subscriber S on a follower A gets
    M0, published on the leader, and answers PUBREC; A's PUBREL does not
    reach it (its connection is closed): S holds M0 awaiting PUBREL.
    Returns (the cluster, leader, A, B, client id, topic, S's properties, the
    publisher, M0's PUBLISH)."""
    c = cluster_factory(extra_env=FAULT_ENV)
    c.start()
    c.wait_healthy()
    ld = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    a, b = [n for n in c.nodes if n is not ld]
    cid, topic, props, s = raw_persistent_subscriber(a, name, 2)
    p = mqttraw.connected(ld, uid(name + "p"), 5)
    p.publish(topic + "/x", b"m0", qos=2, packet_id=1)
    assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == 1
    p.pubrel(1)
    assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == 1
    m0 = s.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert m0.payload == b"m0" and m0.qos == 2
    s.pubrec(m0.packet_id)
    # A has the PUBREC (stored past PUBREC): S misses the PUBREL
    assert s.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == m0.packet_id
    s.close()
    return c, ld, a, b, cid, topic, props, p, m0


def m1_to_m5_delivered(p, h, topic):
    """M1..M5 published at QoS 2 (packet ids 2..6) and each completed; the
    holding subscriber h gets exactly them, in order. Returns them."""
    sent = [f"m{k}".encode() for k in range(1, 6)]
    for k, m in enumerate(sent):
        p.publish(topic + "/x", m, qos=2, packet_id=k + 2)
        assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == k + 2
        p.pubrel(k + 2)
        assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == k + 2
    end = time.monotonic() + 30
    while not all(m in h.got for m in sent) and time.monotonic() < end:
        h.step(WAIT)
    assert h.got == sent, h.got
    return sent


def m0_released(h):
    """The holding subscriber h gets M0 (its PUBREL) once, within 10 s."""
    end = time.monotonic() + 10
    while b"m0" not in h.got and time.monotonic() < end:
        try:
            h.step(max(0.1, end - time.monotonic()))
        except mqttraw.Timeout:
            break
    assert h.got.count(b"m0") == 1, f"S got {h.got}, holds {h.held}"


def test_moved_sessions_packet_ids_go_on_from_its_old_copys(cluster_factory):
    """Chaos seed 501923417 (1 acknowledged QoS 2 message lost), made
    deterministic. S on A gets M0 (packet id P) and answers PUBREC; A sends
    PUBREL, which S does not get (its connection breaks): S holds M0
    awaiting PUBREL. A is SIGSTOPped; S resumes on B from its record (B
    numbers half the id space away from A's ids), leaves, and connects to
    C, which takes B's session whole: it has no message in flight, so its
    state carried no packet id, and C numbered from 1 again: M1.. got A's
    ids, and S replaced the M0 it held by M1 (P). A continues; its copy's
    unfinished exchange of M0 goes to C, which has P free and sends its
    PUBREL: S has nothing under P: M0 lost (main's build). Now the state
    carries the old copy's next packet id and C goes on from there: S gets
    M0 at that PUBREL, once."""
    _, ld, a, b, cid, topic, props, p, m0 = holding_m0_awaiting_pubrel(cluster_factory, "pidfar")
    pause(a)
    try:
        s = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
        assert s.connack.session_present
        s.disconnect()
        s = connected_after_fault(ld, cid, 5, clean=False, properties=props, timeout=30)
        assert s.connack.session_present
        h = _HoldingSubscriber(s)
        h.held[m0.packet_id] = m0.payload  # what S holds from A
        m1_to_m5_delivered(p, h, topic)
    finally:
        resume(a)
    # A's copy hands what it holds on to S's owner: its unfinished exchange
    # of M0 (packet id P) comes to the leader, which completes it
    came = re.compile(rf"unfinished QoS 2 exchange\(s\) of '{cid}'|late message\(s\) of '{cid}' "
                      rf"came from \S+, \d+ of them had come directly \(not again\), [1-9]")
    wait_until(lambda: came.search(ld.logtext()), 60, f"{ld.name} meeting A's exchange of M0")
    m0_released(h)
    assert h.got.count(b"m1") == 1
    s.disconnect()
    p.disconnect()


def m0_exchange_on_b_killed(cluster_factory, name):
    """holding_m0_awaiting_pubrel, then: A SIGKILLed, S resumed on B from
    A's record and gone; A back, its copy's unfinished exchange of M0 taken
    by B (with M0's packet id, S not connected); B SIGKILLed. Returns what
    holding_m0_awaiting_pubrel does."""
    got = holding_m0_awaiting_pubrel(cluster_factory, name)
    c, ld, a, b, cid, topic, props, p, m0 = got
    kill(a)
    s = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    s.disconnect()
    a.start()
    wait_healthy(c, 30)
    took = re.compile(rf"unfinished QoS 2 exchange\(s\) of '{cid}' from \S+ taken")
    wait_until(lambda: took.search(b.logtext()), 60, f"{b.name} taking A's exchange of M0")
    kill(b)
    return got


def test_second_resumption_from_a_record_keeps_off_the_first_copys_packet_ids(cluster_factory):
    """Chaos seed 1093382011 with --more (1 to 2 acknowledged QoS 2
    messages lost at each subscriber), made deterministic. S on A gets M0
    (packet id P) and answers PUBREC; the PUBREL does not reach it: S holds
    M0 awaiting PUBREL. A is SIGKILLed; S resumes on B from A's record (B
    numbers its ids a step away from A's), and leaves. A returns; its
    copy's unfinished exchange of M0 goes to B, which takes it with P (S is
    not connected). B is SIGKILLed; S resumes on C from B's record, a step
    away from B's ids. With half the id space as that step, two steps came
    back to A's ids: C gave P to M2, which replaced M0 at S (paho keeps one
    message per packet id), and when B returned, C refused its exchange of
    M0 (P used since the record): M0 lost (main's build then). With a
    third of the id space, C's ids kept off A's and B's; now the record
    keeps each owner's next id and C numbers in the middle of the largest
    gap between A's and B's: C takes the exchange and releases M0, S gets
    it once."""
    c, ld, a, b, cid, topic, props, p, m0 = m0_exchange_on_b_killed(cluster_factory, "pid3rd")
    s = connected_after_fault(ld, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    h = _HoldingSubscriber(s)
    h.held[m0.packet_id] = m0.payload  # what S holds from A
    sent = m1_to_m5_delivered(p, h, topic)
    # B's copy hands what it holds on to S's owner: the exchange of M0
    # (packet id P) it took from A comes to the leader
    b.start()
    came = re.compile(rf"unfinished QoS 2 exchange\(s\) of '{cid}'|late message\(s\) of '{cid}' "
                      rf"came from \S+, \d+ of them had come directly \(not again\), [1-9]")
    wait_until(lambda: came.search(ld.logtext()), 60, f"{ld.name} meeting B's exchange of M0")
    m0_released(h)
    assert all(h.got.count(m) == 1 for m in sent), h.got
    s.disconnect()
    p.disconnect()


def test_third_resumption_from_a_record_keeps_off_the_first_copys_packet_ids(cluster_factory):
    """Issue 10: three resumptions from the record in a row. S holds M0
    (packet id P) from A awaiting PUBREL; A is SIGKILLed, S resumes on B
    from A's record and leaves; B takes A's exchange of M0, is SIGKILLed,
    S resumes on the leader L from B's record and leaves; B returns and L
    takes B's exchange of M0 (S not connected). L is SIGKILLed; S resumes
    on A from L's record and M1..M5 are published there. Each resumption
    numbered a third of the id space from the record's next id (only the
    last owner's was kept): the third came back to P, A gave it to M1,
    which replaced M0 at S, and when L returned A refused its exchange of
    M0 (P used since the record): M0 lost (main's build). Now the record
    keeps every owner's next id and a resumption numbers in the middle of
    the largest gap between them: A takes L's exchange and releases M0, S
    gets it once."""
    c, ld, a, b, cid, topic, props, p, m0 = m0_exchange_on_b_killed(cluster_factory, "pid4th")
    s = connected_after_fault(ld, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    s.disconnect()
    b.start()
    wait_healthy(c, 30)
    took = re.compile(rf"unfinished QoS 2 exchange\(s\) of '{cid}' from \S+ taken")
    wait_until(lambda: took.search(ld.logtext()), 60, f"{ld.name} taking B's exchange of M0")
    p.close()
    kill(ld)
    s = connected_after_fault(a, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    h = _HoldingSubscriber(s)
    h.held[m0.packet_id] = m0.payload  # what S holds from A's first copy
    p = connected_after_fault(a, uid("pid4thp"), 5)
    sent = m1_to_m5_delivered(p, h, topic)
    # L's copy hands what it holds on to S's owner: the exchange of M0
    # (packet id P) it took from B comes to A
    start = len(a.logtext())
    ld.start()
    came = re.compile(rf"unfinished QoS 2 exchange\(s\) of '{cid}'|late message\(s\) of '{cid}' "
                      rf"came from \S+, \d+ of them had come directly \(not again\), [1-9]")
    wait_until(lambda: came.search(a.logtext()[start:]), 60, f"{a.name} meeting L's exchange of M0")
    m0_released(h)
    assert all(h.got.count(m) == 1 for m in sent), h.got
    s.disconnect()
    p.disconnect()


def test_resumption_on_its_records_own_node_tells_the_record_its_packet_ids(cluster_factory,
                                                                            tmp_path):
    """Chaos seed 9987 with --resend (1 acknowledged QoS 2 message lost,
    2026-12-05), made deterministic. S's record names B. S's client
    connects to A, whose claim commits while A's batch of routes and
    records waits (STARLING_TEST_BATCH_HOLD), and A is SIGKILLed: a claim
    that wrote no record. S resumes on B from B's own record, numbering its
    packet ids away from those the record names; S gets M0 (packet id P)
    and its PUBREL, and does not complete it (a client whose PUBCOMP was
    lost in the kill holds M0, awaiting the PUBREL again). B is SIGKILLed;
    S resumes on the leader C from the record. Before, B did not write the
    record again (it named B, with the same subscriptions), so C numbered
    from the same place as B: M1 got P, which replaces M0 at such a client
    (paho), and C refused B's exchange of M0 when B returned (P used since):
    M0 lost. Now the record tells the next packet id of B's resumed copy:
    C numbers away from it, takes B's exchange and sends M0's PUBREL."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    hold_files_per_node(c, tmp_path, STARLING_TEST_BATCH_HOLD="batch-hold")
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "recpid", "recpid/t")
    props = {"session_expiry_interval": 600}
    (tmp_path / f"batch-hold-{a.name}").write_text("")
    y = b_claiming_while_its_batch_waits(b, a, cid)
    kill(a)
    y.close()
    s = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present, s.connack
    assert f"the session of '{cid}' resumed from its record" in b.logtext()
    p = mqttraw.connected(cn, uid("recpidp"), 5)
    m0 = held_awaiting_pubrel(p, s, topic)
    # B's store has the exchange past PUBREC before B dies; A is back (a
    # majority without B)
    session_settled_then_synced(b, cid, inflight=1)
    (tmp_path / f"batch-hold-{a.name}").unlink()
    a.start()
    wait_healthy(c)
    kill(b)
    s.close()
    s2 = connected_after_fault(cn, cid, 5, clean=False, properties=props, timeout=30)
    assert s2.connack.session_present, s2.connack
    m1 = held_awaiting_pubrel(p, s2, topic, b"m1", 2)
    d = (m1.packet_id - m0.packet_id) % 65535
    print(f"\n[record's packet ids] {b.name} gave M0 {m0.packet_id}, {cn.name} M1 "
          f"{m1.packet_id}")
    assert min(d, 65535 - d) > 10000, \
        f"packet id {m1.packet_id} on {cn.name} near {m0.packet_id}, held from {b.name}"
    s2.pubcomp(m1.packet_id)
    # B returns: its copy's exchange of M0 goes to C, which completes it
    b.start()
    rel = s2.expect(mqttraw.PUBREL, timeout=60)
    assert rel.packet_id == m0.packet_id, rel
    s2.pubcomp(rel.packet_id)
    for x in (s2, p):
        x.disconnect()


def session_settled_then_synced(node, cid, inflight=0):
    """Every exchange of cid's session on node finished or none begun (but
    `inflight` of them), then a later batch committed there (a persistent
    session's SUBACK waits for its record's commit; batches commit in
    order): what cid's session wrote on node is on its disk."""
    def settled():
        st, doc = node.http("GET", "/api/v1/clients/" + cid)
        return st == 200 and doc.get("inflight") == inflight and doc.get("queued") == 0
    wait_until(settled, 30, f"{cid}'s exchanges settled on {node.name}")
    later = PahoClient(node, uid("later"), 5, clean=False, properties=session_props())
    later.connect()
    assert later.subscribe(uid("later/t"), qos=1) == [1]
    later.stop()


def test_exchange_passed_through_a_node_whose_copy_took_the_message_reaches_the_owner(
        cluster_factory, tmp_path):
    """Chaos seed 1188520366 with --more (7 acknowledged QoS 2 messages
    lost), made deterministic. S, on B after a takeover (its session
    records the identities it gets), is offline when M is published: B's
    session takes M. B is SIGSTOPped; S resumes on A from the record, and
    B, continued, answers A's request with its state (M): A gives M to S
    (packet id P), S answers PUBREC and misses the PUBREL: S holds M
    awaiting PUBREL, A's copy has the exchange past PUBREC. A is
    SIGKILLed; S resumes on B from A's record, and B's old copy (held
    moving out, STARLING_TEST_MOVING_HOLD) is folded into that session with
    its identities: M among them, though S never completed M through B. A
    starts again, its stored copy (held) moving out to B's claim. S leaves
    B, B is SIGKILLed, S resumes on the leader C from B's record (C knows
    nothing of M) and B starts again, its stored copy (held) moving out to
    C. A's copy then sends its exchange of M to B's claim: B passes the
    frame on to C. Before, B left the exchange out there ("its client had
    them here": its old copy's identities say the copy took M, not that S
    completed it), and M was never released: lost (main's build). Now an
    exchange goes on, for the owner to judge: C takes it with P and sends
    its PUBREL, S gets M once."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    hold_files_per_node(c, tmp_path, STARLING_TEST_MOVING_HOLD="moving-hold")
    c.start()
    c.wait_healthy()
    ld = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    a, b = [n for n in c.nodes if n is not ld]
    hold_a, hold_b = tmp_path / f"moving-hold-{a.name}", tmp_path / f"moving-hold-{b.name}"
    id_a, id_b, id_c = (f"{faults.node_id(n):016x}" for n in (a, b, ld))
    # S on C, then taken over by B (its state: B's session records what it
    # gets), offline there
    cid, topic, props, s = raw_persistent_subscriber(ld, "exchpass", 2)
    s.disconnect()
    s = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    s.disconnect()
    # M, published on C: B's session takes it (queued, S offline)
    p = mqttraw.connected(ld, uid("exchpassp"), 5)
    p.publish(topic + "/x", b"m0", qos=2, packet_id=1)
    assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == 1
    p.pubrel(1)
    assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == 1

    def queued_on_b():
        st, doc = b.http("GET", "/api/v1/clients/" + cid)
        return st == 200 and doc.get("queued") == 1
    wait_until(queued_on_b, WAIT, f"M queued in {cid}'s session on {b.name}")
    # B stopped: S resumes on A from the record; B, continued (its old
    # copies held), answers A's request with its state: A gives M to S
    pause(b)
    try:
        s = connected_after_fault(a, cid, 5, clean=False, properties=props, timeout=30)
        assert s.connack.session_present
        hold_b.write_text("")
        hold_a.write_text("")
    finally:
        resume(b)
    m = s.expect(mqttraw.PUBLISH, timeout=30)
    assert m.payload == b"m0" and m.qos == 2, m
    s.pubrec(m.packet_id)
    # A has the PUBREC (stored past PUBREC): S misses the PUBREL
    assert s.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == m.packet_id
    s.close()
    assert f"the session of '{cid}' moved to {id_a}" in b.logtext()
    q = mqttraw.connected(a, uid("sync"), 5)
    q.publish(uid("sync/t"), b"sync", qos=1, packet_id=1)
    assert q.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == 1
    kill(a)
    q.close()
    # S resumes on B from A's record without asking A (else A, back,
    # answers the held request with its copy, and B judges it then): B's
    # old copy (identities: M) is folded into that session
    wait_until(lambda: one_down_for(b), 30, f"{b.name} listing {a.name} as unreachable")
    s = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    assert f"'{cid}' was owned by {id_a}, which is down" in b.logtext()
    assert f"'{cid}' is claimed here again while its old copy" in b.logtext()
    s.disconnect()
    # A starts: its stored copy (the exchange of M) moves out to B's claim, held
    mark = len(a.logtext())
    a.start()
    wait_healthy(c, 30)
    wait_until(lambda: f"the session of '{cid}' moved to {id_b}" in a.logtext()[mark:], 30,
               f"{a.name}'s stored copy of {cid} moving out to {b.name}")
    # S's session on B is on B's disk with its identities; B is SIGKILLed and
    # S resumes on C from B's record
    session_settled_then_synced(b, cid)
    kill(b)
    # (without asking B: its answer would bring C its identities, M among them)
    wait_until(lambda: one_down_for(ld), 30, f"{ld.name} listing {b.name} as unreachable")
    s = connected_after_fault(ld, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    assert f"'{cid}' was owned by {id_b}, which is down" in ld.logtext()
    h = _HoldingSubscriber(s)
    h.held[m.packet_id] = m.payload  # what S holds from A
    # B starts: its stored copy (identities: M) moves out to C, held
    mark = len(b.logtext())
    b.start()
    wait_healthy(c, 30)
    wait_until(lambda: f"the session of '{cid}' moved to {id_c}" in b.logtext()[mark:], 30,
               f"{b.name}'s stored copy of {cid} moving out to {ld.name}")
    # A's copy sends its exchange of M to B's claim; B passes the frame on
    # to C (with it or without it: 1 passed on or 1 left out)
    hold_a.unlink()
    passed = re.compile(rf"(\d+) late message\(s\) for '{re.escape(cid)}' \(claim \d+\) "
                        rf"passed on to its owner {id_c} \(claim \d+\), (\d+) left out")
    wait_until(lambda: passed.findall(b.logtext()[mark:]), 30,
               f"{b.name} passing on A's late messages of {cid}")
    # B's copy ends too: its last frame (no message, its identities) goes to C
    hold_b.unlink()
    ended = re.compile(rf"\d+ late message\(s\) of '{re.escape(cid)}' sent to its owner {id_c}")
    wait_until(lambda: ended.search(b.logtext()[mark:]), 30,
               f"{b.name}'s copy of {cid} sending its last frame")
    judged = re.compile(rf"late message of '{re.escape(cid)}' \(.* from {id_b}: .*")
    print(f"\n[exchange passed through] passed on by {b.name} (count, left out): "
          f"{passed.findall(b.logtext()[mark:])}; judged on {ld.name}: "
          f"{judged.findall(ld.logtext())}")
    assert [sum(map(int, x)) for x in passed.findall(b.logtext()[mark:])] == [1]
    m0_released(h)
    # and nothing else: a marker published after it comes next
    p.publish(topic + "/x", b"marker", qos=2, packet_id=2)
    assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == 2
    p.pubrel(2)
    assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == 2
    end = time.monotonic() + WAIT
    while b"marker" not in h.got and time.monotonic() < end:
        h.step(WAIT)
    assert h.got == [b"m0", b"marker"], f"S got {h.got}, holds {h.held}"
    s.disconnect()
    p.disconnect()


def test_node_started_again_at_once_takes_early_frames_and_entries(cluster_factory):
    """Chaos seed 1188520366 with --more (a rolling restart with SIGKILL:
    each node killed and started again at once): n2 stopped on its start
    with a null-pointer access (fsm_members of the peers' refresh). The
    cluster's thread runs from inside cluster_start: the other members'
    Applied frames, and the entries the node catches up on (here a claim
    and a subscription made while it was down), came to its callbacks
    before cluster_node_start had set the tables, the Raft node and its own
    id. The moment is widened here (STARLING_TEST_START_HOLD_MS, debug
    builds: 3 s): main's code with that hook stopped in each run (the
    peers' refresh, or the claim's registry read); now those are set before
    the thread runs (cluster.h on_ready): the node starts, the cluster is
    healthy and the session that moved away while it was down is not
    there."""
    c = cluster_factory(extra_env=FAULT_ENV)
    c.start()
    c.wait_healthy()
    ld = wait_until(lambda: faults.leader(c), WAIT, "a leader")
    n = [x for x in c.nodes if x.name != ld][0]
    cid, topic, props, s = raw_persistent_subscriber(n, "early", 2)
    s.close()
    kill(n)
    other = [x for x in c.nodes if x is not n][0]
    s = connected_after_fault(other, cid, 5, clean=False, properties=props, timeout=30)
    assert s.connack.session_present
    s2 = mqttraw.connected(other, uid("early2"), 5, properties=props)
    assert s2.subscribe((f"{topic}/#", mqttraw.sub_options(qos=1))).reason_codes == [1]
    c.extra_env["STARLING_TEST_START_HOLD_MS"] = "3000"
    try:
        n.start()
    finally:
        del c.extra_env["STARLING_TEST_START_HOLD_MS"]
    wait_healthy(c, 30)  # fails when a node exited
    assert alive(n)
    # it serves, and the session is where its client is
    s.disconnect()
    s = mqttraw.connected(n, cid, 5, clean=False, properties=props)
    assert s.connack.session_present
    s.disconnect()
    s2.disconnect()


def test_node_taken_for_dead_routes_a_filter_its_claimed_away_copy_held(cluster_factory):
    """Chaos seed 1093382011 (about 1,300 lost): S1's session on A; A is
    SIGSTOPped, taken for dead (its route goes), and S1 resumes on B. A
    continues: its copy of S1, claimed away, stays subscribed until its
    claimant's wait is over, and A re-proposes the routes of its sessions
    only (none). S2 subscribes to the same filter on A meanwhile: the
    filter has a local subscriber already (the copy), so no route is
    proposed, and when the copy ends none goes either: main's build left A
    without a route while S2 was there, and M, published on B, never came.
    Now the routes of such copies are proposed again too (they keep them
    until they end, as copies moving out do): S2 gets M."""
    c = cluster_factory(extra_env=FAULT_ENV)
    c.start()
    c.wait_healthy()
    ld = faults.node_named(c, wait_until(lambda: faults.leader(c), WAIT, "a leader"))
    a, b = [n for n in c.nodes if n is not ld]
    cid, topic, props, s1 = raw_persistent_subscriber(a, "downcopy", 1)
    s1.close()
    pause(a)
    try:
        # S1 resumes on B from its record before A is taken for dead, so
        # that the NodeDown keeps no route of A's (the record names B)
        s1 = connected_after_fault(b, cid, 5, clean=False, properties=props, timeout=30)
        assert s1.connack.session_present
        down = f"NodeDown({faults.node_id(a):016x}): 1 gone"
        wait_until(lambda: down in ld.logtext(), 30, f"{ld.name} taking {a.name}'s route")
    finally:
        resume(a)
    wait_until(lambda: "this node was taken for dead" in a.logtext(), 30,
               f"{a.name} applying its NodeDown")
    s2 = mqttraw.connected(a, uid("downcopy2"), 5)
    assert s2.subscribe((f"{topic}/#", mqttraw.sub_options(qos=1))).reason_codes == [1]
    wait_until(lambda: f"the session of '{cid}' moved to" in a.logtext(), 30,
               f"{a.name} letting its copy of {cid} go")
    p = mqttraw.connected(b, uid("downcopyp"), 5)
    for k in range(3):
        p.publish(f"{topic}/x", f"m{k}".encode(), qos=1, packet_id=k + 1)
        assert p.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == k + 1
    got = [s2.recv_publish(timeout=WAIT).payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    s1.disconnect()
    s2.disconnect()
    p.disconnect()


def outbox_for(node, peer):
    """What node holds in its outbox for peer (the node's name):
    starling_forward_outbox_messages{peer=...} of its GET /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://{node.host}:{node.admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("starling_forward_outbox_messages{") and \
                    f'peer="{peer}"' in line:
                return int(float(line.split()[-1]))
    return 0


def resumed_while_taken_for_dead(c, name):
    """Starts cluster c; a persistent QoS 2 subscriber S (client id
    uid(name)) of node B, a follower, offline; B SIGSTOPped until the
    leader's NodeDown(B) applied (B's route for S kept: a count written, or
    nothing changed); S resumed on A from its record. Returns the leader,
    B (still stopped), A, S's client id and topic, and S's client on A."""
    cn, b, a, cid, topic = subscriber_on_a_follower(c, name, name + "/t")
    bid = f"{faults.node_id(b):016x}"
    pause(b)
    down = re.compile(rf"entry \d+ applied, routes: .*NodeDown\({bid}\)")
    wait_until(lambda: down.search(cn.logtext()), 30, f"{cn.name} taking {b.name} for dead")
    s = resumed_on(a, cid, timeout=30)
    return cn, b, a, cid, topic, s


def started_with_copies_held(c, cn, a, b, cid, hold):
    """B starts (again) with its copies of moved sessions held (the file
    hold, STARLING_TEST_MOVING_HOLD): its stored copy of cid finds itself
    claimed away by A and takes what C (cn) held for B, until C's outbox
    for B is empty."""
    hold.write_text("")
    b.start()
    wait_healthy(c)
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name} finding its copy of {cid} claimed away")
    wait_until(lambda: outbox_for(cn, b.name) == 0, 30, f"{cn.name}'s outbox for {b.name} sent")


def test_dead_nodes_kept_route_goes_when_its_session_moves(cluster_factory, tmp_path):
    """Issue 10, the third copy at its source (chaos seed 288425677): a
    persistent QoS 2 subscriber S of node B; B is SIGSTOPped and taken for
    dead (NodeDown keeps its route for S, whose record names B); S resumes
    on A from its record and gets M0..M19, published on C. Before, B's kept
    route stayed until the next NodeDown (cluster_down_after later), so C
    also held M0..M19 for B. B is SIGKILLed (still stopped) and restarts:
    its stored copy of S, claimed away (its claim no longer known after
    the restart), takes what C held for it (kept here by the debug hook
    STARLING_TEST_MOVING_HOLD); A dies and S's client comes back to B,
    where S resumes from A's record, which knows nothing of M0..M19, and
    B's copy is folded into it: all 20 delivered again. Now the route goes
    with the record (the count NodeDown.keepers put on it): C routes
    nothing more to B once A's record names A, holds nothing for it, and
    nothing comes twice."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold)))
    cn, b, a, cid, topic, s = resumed_while_taken_for_dead(c, "gone")
    bid = f"{faults.node_id(b):016x}"
    p, sent = twenty_delivered(cn, "gonep", topic, s)
    held = outbox_for(cn, b.name)
    left = re.findall(rf"SessionRecord\('{re.escape(cid)}'\) left {bid}: \d+ gone",
                      cn.logtext())
    # B restarts, its copies of moved sessions held; its copy of S, claimed
    # away by A, takes what C held for B
    kill(b)
    started_with_copies_held(c, cn, a, b, cid, hold)
    # A dies; S's client comes back to B: S resumes there from A's record,
    # which knows nothing of M0..M19, and B's copy is folded into it
    kill(a)
    s.stop()
    s = resumed_on(b, cid, timeout=30, tries=3)
    hold.unlink()
    folded = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from {bid}")
    none_delivered_again("kept route", s, p, topic,
                         lambda: f"; {held} held for {b.name} on {cn.name}; record left "
                         f"{b.name}: {left}; late messages of its copy: "
                         f"{folded.findall(b.logtext())}")


def test_session_back_on_its_returning_node_gets_what_is_published(cluster_factory):
    """The other side of NodeDown.keepers: a persistent QoS 2 subscriber S
    of node B; B is SIGSTOPped and taken for dead; S resumes on A from its
    record, which takes B's counted route for S. B continues: its copy of
    S, claimed away, still holds S's filter in B's index. S's client comes
    back to B at once: the session built there joins the index beside the
    copy, so B proposes no route for the filter, and with the route gone
    nothing published elsewhere would reach S any more once A's copy ended.
    B, taken for dead, proposes again the routes of the copies it holds
    too: S gets everything published, before and after A's copy ended."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    cn, b, a, cid, topic, s = resumed_while_taken_for_dead(c, "back")
    s.disconnect()
    resume(b)
    claimed = f"'{cid}' was claimed by node {faults.node_id(a):016x} (claim"
    wait_until(lambda: claimed in b.logtext(), 30, f"{b.name} applying A's claim of {cid}")
    s = resumed_on(b, cid, timeout=30)
    p = PahoClient(cn, uid("backp"), 5)
    p.connect()
    first = [f"m{k}".encode() for k in range(10)]
    for m in first:
        p.publish(topic + "/x", m, qos=2)
    # A's copy of S (taken over by B) ends: from then on only routes to B
    # bring S anything
    ended = f"the old copy of '{cid}' ends"
    wait_until(lambda: ended in a.logtext(), 30, f"{a.name}'s copy of {cid} ending")
    then = [f"n{k}".encode() for k in range(10)]
    for m in then:
        p.publish(topic + "/x", m, qos=2)
    again = delivered_before_a_marker(s, p, topic)
    print(f"\n[back on B] got {len(again)} of {len(first) + len(then)}: "
          f"lost {sorted(set(first + then) - set(again))}")
    assert sorted(set(again)) == sorted(first + then), "messages lost"
    assert len(again) == len(first + then), "QoS 2 messages delivered twice"
    s.disconnect()
    p.disconnect()



def test_subscriber_beside_a_returning_nodes_copy_gets_what_is_published(cluster_factory,
                                                                          tmp_path):
    """Issue 10, "a SUBACK means the route is everywhere" after a node's
    return: a persistent QoS 2 subscriber S of node B; B is SIGSTOPped and
    taken for dead (NodeDown counts B's route for S, whose record names
    B); S resumes on A from its record, which takes that route. B
    continues: its copy of S, claimed away, still holds S's filter in B's
    index (held here by STARLING_TEST_MOVING_HOLD), and B has not proposed
    its routes again yet (its glue's thread late, as under load: held by
    STARLING_TEST_REANNOUNCE_HOLD). Another client S2 subscribes on B to
    the same filter: the index had a local subscriber of it already, so
    main's build proposed no route, answered the SUBACK at once, and what
    C published then never reached S2. Now a subscriber joining a filter
    whose route this node does not hold as its own proposes it again, and
    the SUBACK waits for it: S2 gets everything, while the copy is there
    and after it ended."""
    hold = tmp_path / "moving-hold"
    again = tmp_path / "reannounce-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold),
                                       STARLING_TEST_REANNOUNCE_HOLD=str(again)))
    cn, b, a, cid, topic, s = resumed_while_taken_for_dead(c, "beside")
    bid = f"{faults.node_id(b):016x}"
    hold.write_text("")
    again.write_text("")
    resume(b)
    # B applied A's record of S, which took B's route for S's filter
    left = f"SessionRecord('{cid}') left {bid}: 1 gone"
    wait_until(lambda: left in b.logtext(), 30, f"{b.name} applying A's record of {cid}")
    s2 = PahoClient(b, uid("beside2"), 5, clean=True, properties=session_props())
    s2.connect()
    assert s2.subscribe(topic + "/#", qos=2) == [2]
    p = PahoClient(cn, uid("besidep"), 5)
    p.connect()
    first = [f"m{k}".encode() for k in range(10)]
    for m in first:
        p.publish(topic + "/x", m, qos=2)
    got = delivered_before_a_marker(s2, p, topic)
    # B answers its NodeDown, the copy ends: only S2 holds the filter on B
    again.unlink()
    hold.unlink()
    ended = f"the old copy of '{cid}' ends"
    wait_until(lambda: ended in b.logtext(), 30, f"{b.name}'s copy of {cid} ending")
    then = [f"n{k}".encode() for k in range(10)]
    for m in then:
        p.publish(topic + "/x", m, qos=2)
    got += delivered_before_a_marker(s2, p, topic)
    assert got == first + then
    s.disconnect()
    s2.disconnect()
    p.disconnect()


@pytest.mark.parametrize("order", ["as_it_comes", "request_before_catch_up"])
def test_restarted_copy_asked_for_its_state_leaves_out_what_its_claimant_had(cluster_factory,
                                                                             tmp_path, order):
    """Chaos seed 1188520366 with --more (312 QoS 2 duplicates), made
    deterministic: a persistent QoS 2 subscriber S, offline, on node B. B
    is SIGKILLed; S's client connects to A at once, whose claim asks B for
    the state (B is not taken for dead: no NodeDown, B's route stays), gets
    no answer and resumes S from its record. B starts again: its stored
    copy of S, claimed away, is sent on to A, and then A's request, held in
    the channel while B was down, comes: the copy goes to A as a state
    after all, and collects what still comes for it (its end held by
    STARLING_TEST_MOVING_HOLD). A's session records no identities
    (STARLING_TEST_SEEN_RECORD_MS=0: as once SESSION_SEEN_RECORD_MS, 60 s,
    passed after the state came; in the chaos run, A was restarted and its
    session rebuilt from the record instead). S gets M0..M19, published on
    C, on A; B's copy gets them too.
    Before, the copy lost the owners rule with its state, took M0..M19 and
    sent them to A, which delivered all 20 again; now a copy of an older
    claim than the last owner's leaves out, from its state and from what
    it collects, what was routed once that owner had its routes
    everywhere.
    request_before_catch_up: B's Raft traffic is cut (the channel goes on)
    until B has answered A's request with its stored copy, before B applied
    A's claim and before its start-up pass named the copy (in CI, under
    load, the request came 0.7 s before the pass): before, such a copy
    went unjudged and A delivered all 20 again (also 6 of 78 runs of the
    as_it_comes order under load); now it is named by the registry B
    applied, as the pass names it."""
    if order == "request_before_catch_up":
        reason = faults.nft_available()
        if reason:
            pytest.skip(reason)
    moving_hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_CLUSTER_DOWN_AFTER="120000",
                                       STARLING_TEST_SEEN_RECORD_MS="0",
                                       STARLING_TEST_MOVING_HOLD=str(moving_hold)))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "askedcopy", "ak/t")
    bid, aid = f"{faults.node_id(b):016x}", f"{faults.node_id(a):016x}"
    moving_hold.write_text("")
    kill(b)
    s = resumed_on(a, cid, timeout=30)
    assert f"no session state for '{cid}' from its old node" in a.logtext()
    start = len(b.logtext())
    part = faults.Partition(c) if order == "request_before_catch_up" else None
    try:
        if part:
            part.cut([b], [n for n in c.nodes if n is not b], raft_only=True)
        b.start()
        # B answers A's request with its stored copy (a state that came late)
        late_state = f"the session state of '{cid}' from {bid} came after its claim went on"
        wait_until(lambda: late_state in a.logtext(), 60, f"{b.name} answering {a.name}'s request")
        assert re.search(rf"the session of '{re.escape(cid)}' moved to {aid} \(claim \d+\)\n",
                         b.logtext()[start:])
        if part:
            assert "start-up pass over" not in b.logtext()[start:]
            assert "while this node was down" not in b.logtext()[start:]
    finally:
        if part:
            part.heal()
    if part:
        wait_until(lambda: "start-up pass over 0 stored session(s)" in b.logtext()[start:], 60,
                   f"{b.name}'s start-up pass")
    p, sent = twenty_delivered(cn, "askedcopyp", topic, s)
    moving_hold.unlink()  # B's copy sends what it holds to A
    none_again_after_late_messages(b, a, cid, s, p, topic, "asked copy", 60)


def published_for_a_killed_copy(cn, b, topic, name):
    """B SIGKILLed; M0..M9 published on C for B's offline subscriber, held
    in C's outbox for B. Returns the publisher and M0..M9."""
    kill(b)
    p = PahoClient(cn, uid(name + "p"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    assert outbox_for(cn, b.name) == len(sent)
    return p, sent


def one_down_for(node):
    """node lists one member as unreachable (the only node down)."""
    st, doc = node.http("GET", "/api/v1/cluster", timeout=2)
    return st == 200 and any(not x["reachable"] for x in doc["nodes"])


# cluster_resend_wait where the owner of now's session waits for a dead
# owner's copy that never comes: the 30 s the tests were written with (its
# default then); the default of 60 s outlasts their reads
OWNER_OF_NOW_WAIT = {"STARLING_CLUSTER_RESEND_WAIT": "30000"}


def owner_of_now_gets(b, cid, s, p, topic, sent, what):
    """B's held copy of cid ends; S, on the owner of now, gets M0..M9 and
    nothing again before a marker. Returns what came again and B's lines
    of what it sent the owner of now."""
    ended = f"the old copy of '{cid}' ends"
    wait_until(lambda: ended in b.logtext(), 30, f"{b.name}'s copy of {cid} ending")
    got = [s.get(30).payload for _ in sent]
    again = delivered_before_a_marker(s, p, topic)
    went = re.findall(rf"(\d+) late message\(s\) of '{re.escape(cid)}' routed before .* go to "
                      r"the owner of now", b.logtext())
    print(f"\n[{what}] {len(again)} delivered again: {again}; sent to the owner of now by "
          f"{b.name}: {went}")
    assert sorted(got) == sorted(sent)
    assert again == [], f"QoS 2 messages delivered twice: {again}"


def test_restarted_nodes_copy_sends_its_messages_to_the_owner_of_now(cluster_factory, tmp_path):
    """Issue 10 (chaos seed 1188520366 with --more), made deterministic: a
    persistent QoS 2 subscriber S of node B, offline; B is SIGKILLed and C
    holds M0..M9, published for S, for B (S's record names B); S resumes on
    A from its record. B restarts: its stored copy of S, claimed away,
    takes M0..M9 from C and is to send them to A, the owner at B's start
    (the copy held by STARLING_TEST_MOVING_HOLD). A dies and S resumes on C
    from A's record. When B's copy ends, A is down: what it holds that was
    routed before A's routes were everywhere (the owners rule: M0..M9, which
    A's client could not have had) goes to C, the owner of now, and S gets
    each once. Before, the copy sent M0..M9 to A, dead: they waited in B's
    outbox and S did not get them while A stayed down. (Sending C all of
    it gives QoS 2 duplicates where A's client had had them:
    test_killed_owners_copy_judges_late_messages_passed_through_it.)
    A stays down: what C parks for A's copy waits for it until
    cluster_resend_wait runs out (OWNER_OF_NOW_WAIT)."""
    hold = tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       STARLING_TEST_MOVING_HOLD=str(hold), **OWNER_OF_NOW_WAIT))
    cn, b, a, cid, topic = subscriber_on_a_follower(c, "ownernow", "ownernow/t")
    p, sent = published_for_a_killed_copy(cn, b, topic, "ownernow")
    # A resumes S from its record without asking B (else B, back, answers
    # the held request with its copy, M0..M9 included, and S has them on A)
    wait_until(lambda: one_down_for(a), 30, f"{a.name} listing {b.name} as unreachable")
    s = resumed_on(a, cid, timeout=30)
    assert f"'{cid}' was owned by {faults.node_id(b):016x}, which is down" in a.logtext()
    started_with_copies_held(c, cn, a, b, cid, hold)
    kill(a)
    s.stop()
    s = resumed_on(cn, cid, timeout=30, tries=3)
    wait_until(lambda: one_down_for(b), 30, f"{b.name} listing {a.name} as unreachable")
    hold.unlink()
    owner_of_now_gets(b, cid, s, p, topic, sent, "owner of now")
    s.disconnect()
    p.disconnect()


def test_owner_of_now_takes_a_copys_messages_whose_identities_went_to_the_dead_owner(
        cluster_factory):
    """Chaos seed 9995 with --resend --more (270 acknowledged messages lost,
    2026-12-05), made deterministic. A persistent QoS 2 subscriber S moves
    from A to B (B's session records the identities it takes) and leaves.
    B is SIGSTOPped; M0..M9, published on the leader C, wait in C's outbox
    for B. S resumes on A from its record; A is SIGKILLed and S resumes on C
    from A's record, waiting for A's copy (cluster_resend_wait). B continues:
    its copy takes M0..M9 and, claimed away by A, ends while A is down:
    M0..M9, routed before A took forwards, go to C, the owner of now, where
    they wait for A's copy (parked); the rest goes to A, with the copy's
    identities. A starts again. Before, those identities included M0..M9:
    A's copy told them on to C, which took M0..M9 for had ("10 of them it
    had by then"), and S never got them. Now they leave the identities
    sent to A: S gets M0..M9, once each."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    cn, a, b, cid, topic = subscriber_on_a_follower(c, "nowids", "nowids/t")  # S on A
    s = resumed_on(b, cid, timeout=30)
    s.disconnect()
    bid = f"{faults.node_id(b):016x}"
    pause(b)
    try:
        down = re.compile(rf"entry \d+ applied, routes: .*NodeDown\({bid}\)")
        wait_until(lambda: down.search(cn.logtext()), 30, f"{cn.name} taking {b.name} for dead")
        p = PahoClient(cn, uid("nowidsp"), 5)
        p.connect()
        sent = [f"m{k}".encode() for k in range(10)]
        for m in sent:
            p.publish(topic + "/x", m, qos=2)
        assert outbox_for(cn, b.name) == len(sent)
        s = resumed_on(a, cid, timeout=30)
        s.stop()
    finally:
        resume(b)
    # B's copy takes M0..M9 and applies A's claim: it moves out to A. A
    # stops, S resumes on C
    to_a = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: to_a in b.logtext(), 30, f"{b.name}'s copy of {cid} moving out to {a.name}")
    pause(a)
    try:
        # C resumes S from A's record without asking A (as when A was taken
        # for down): A's copy, continued, moves out on its own, after it
        # got B's frame
        wait_until(lambda: one_down_for(cn), 30, f"{cn.name} listing {a.name} as unreachable")
        s = resumed_on(cn, cid, timeout=30, tries=3)
        went = f"late message(s) of '{cid}' routed before"
        wait_until(lambda: went in b.logtext(), 30, f"{b.name} sending M0..M9 to the owner of now")
        parked = re.compile(rf"late message\(s\) of '{re.escape(cid)}' came from .* 10 parked")
        wait_until(lambda: parked.search(cn.logtext()), 30, f"{cn.name} parking B's M0..M9")
    finally:
        resume(a)
    parked_judged(cn, a, cid, "owner of now, A back")
    owner_of_now_gets(b, cid, s, p, topic, sent, "owner of now, A back")
    s.disconnect()
    p.disconnect()


def test_restarted_nodes_copy_sends_the_owner_of_now_only_what_its_owner_did_not_take(
        cluster_factory, tmp_path):
    """Issue 10, ownernow's window: as the test above (S offline on B; B
    SIGKILLed, C holds M0..M9 for it; S resumed on A from its record; B's
    restarted copy takes them; A SIGKILLed, S resumed on C), but A routes
    S's filter already (a subscriber W of it there) and A's record of S
    waits (A's batch held, STARLING_TEST_BATCH_HOLD) while N0..N4 are
    published on C: they reach S's session on A, which took forwards from
    its claim on, and C holds them for B too (B's route, kept for S's
    record). S gets N0..N4 on A. Routed before A's first record, they went
    with M0..M9 to C, the owner of now, as routed before A had its routes,
    and S got them twice. Now the bound is the index from which A's session
    took forwards (RecordOwner.routed_from): M0..M9 go to C and S gets them
    once; N0..N4 wait for A, which knows its client had them. As above,
    A stays down (OWNER_OF_NOW_WAIT)."""
    c, hold, cn, b, a, cid, topic, w = held_copy_with_a_watcher(cluster_factory, tmp_path,
                                                                "window", "window/t",
                                                                **OWNER_OF_NOW_WAIT)
    p, sent = published_for_a_killed_copy(cn, b, topic, "window")
    wait_until(lambda: one_down_for(a), 30, f"{a.name} listing {b.name} as unreachable")
    a_hold = tmp_path / f"batch-hold-{a.name}"
    a_hold.write_text("")
    bg = Background(lambda: resumed_on(a, cid, timeout=60))
    try:
        wait_until(lambda: f"'{cid}' was owned by {faults.node_id(b):016x}, which is down"
                   in a.logtext(), 30, f"{a.name} resuming {cid} from its record")
        wait_until(lambda: "this node's batch waits" in a.logtext(), 30,
                   f"{a.name} holding the record of {cid}")
        # C applied A's claim (A's session takes what C routes from now on)
        applied = metric_value(a, "starling_raft_applied_index")
        wait_until(lambda: metric_value(cn, "starling_raft_applied_index") >= applied, 30,
                   f"{cn.name} applying entry {applied}")
        window = [f"n{k}".encode() for k in range(5)]
        for m in window:
            p.publish(topic + "/x", m, qos=2)
        assert outbox_for(cn, b.name) == len(sent) + len(window)
    finally:
        a_hold.unlink()
        bg.join()
    s = bg.result()
    assert [s.get(WAIT).payload for _ in window] == window  # S has N0..N4 on A
    started_with_copies_held(c, cn, a, b, cid, hold)
    kill(a)
    s.stop()
    w.stop()
    s = resumed_on(cn, cid, timeout=30, tries=3)
    wait_until(lambda: one_down_for(b), 30, f"{b.name} listing {a.name} as unreachable")
    hold.unlink()
    owner_of_now_gets(b, cid, s, p, topic, sent, "window")
    s.disconnect()
    p.disconnect()


def held_then_restarted(c, name, hold_var, hold):
    """subscriber_on_a_follower(c, name, name + "/t"): S, offline on B,
    holds M0..M9 (QoS 2, published on the leader; a witness on B got them
    all); then B is SIGKILLed, `hold` created, and B started again with
    hold_var naming it. Returns the leader, B, A, S's client id and topic,
    the publisher and M0..M9."""
    cn, b, a, cid, topic = subscriber_on_a_follower(c, name, name + "/t")
    witness, p = witness_and_publisher(b, cn, topic + "/x")
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    assert [witness.get(WAIT).payload for _ in sent] == sent  # S holds them all on B
    witness.disconnect()
    kill(b)
    hold.touch()
    b.env = (lambda base: lambda: {**base(), hold_var: str(hold)})(b.env)
    b.start()
    return cn, b, a, cid, topic, p, sent


def test_session_asked_for_while_its_node_loads_its_store_keeps_its_messages(cluster_factory,
                                                                             tmp_path):
    """Chaos seed 1188520366 with --more (201 lost, issue 10): a node
    SIGKILLed and started again answered a claim's request for a stored
    session (and applied the claim) while its store was still loading: the
    session was in the table, its queued messages not yet, so it was handed
    on with none of them, and the load then deleted their rows as those of
    no session. Here: a persistent QoS 2 subscriber S of follower B,
    offline, holds M0..M9; B is SIGKILLed and started again, its load held
    before the first queued message (STARLING_TEST_LOAD_HOLD); S resumes
    on A, whose claim asks B then. Main's build: S gets none of M0..M9. Now
    B answers "not found" until its store is loaded (A resumes S from the
    record) and its start-up pass sends its stored copy to A: S gets
    M0..M9, once each."""
    hold = tmp_path / "load-hold"
    c = cluster_factory(extra_env=FAULT_ENV)
    cn, b, a, cid, topic, p, sent = held_then_restarted(c, "loadhold", "STARLING_TEST_LOAD_HOLD",
                                                        hold)
    wait_until(lambda: "their messages wait (STARLING_TEST_LOAD_HOLD)" in b.logtext(), 30,
               f"{b.name} holding its store's load")
    s = resumed_on(a, cid, timeout=30)
    asked = re.compile(rf"the session '{re.escape(cid)}' was asked for before this node loaded"
                       rf"|the session of '{re.escape(cid)}' (moved to|was claimed by node)")
    wait_until(lambda: asked.search(b.logtext()), 30, f"{b.name} asked for {cid} or its claim")
    hold.unlink()
    got = [s.get(30).payload for _ in sent]
    assert sorted(got) == sorted(sent)
    none_delivered_again("asked for the claim", s, p, topic)


def test_session_asked_for_while_its_node_loads_its_outbox_leaves_no_rows_behind(cluster_factory,
                                                                                 tmp_path):
    """test_killed_nodes_subscribers_resumed_elsewhere_repeatedly's QoS 2
    duplicates (28, and 319 in a whole make test, issue 10): a node
    SIGKILLed and started again answered a claim's request for a stored
    session once its sessions were loaded but while its forwarding outbox
    still loaded: the state went at most once, not through the outbox, and
    its messages' rows stayed in the store. The client came back to that
    node while the old copy was still there (its session stored beside it,
    same keys); after the node's next SIGKILL and start those rows loaded
    with that session and went to the client's next node again. Here: a
    persistent QoS 2 subscriber S of follower B, offline, holds M0..M9; B
    is SIGKILLed and started again, its outbox's load held
    (STARLING_TEST_OUTBOX_HOLD) and its old copies kept
    (STARLING_TEST_MOVING_HOLD); S's claim on A asks B for the session
    (main's build: S gets M0..M9 there); S comes back to B (now: S gets
    M0..M9 there); B is SIGKILLed, S resumes on A, B starts again. Main's build: S gets M0..M9 a second time. Now B answers "not
    found" until its outbox is loaded too, and its start-up pass sends the
    stored copy through the outbox, its rows gone in the same batch: S gets
    them once."""
    hold, moving = tmp_path / "outbox-hold", tmp_path / "moving-hold"
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_TEST_MOVING_HOLD=str(moving)))
    moving.touch()  # B's old copy of S stays until S is back on B
    cn, b, a, cid, topic, p, sent = held_then_restarted(c, "outboxhold",
                                                        "STARLING_TEST_OUTBOX_HOLD", hold)
    wait_until(lambda: "the outbox's load waits (STARLING_TEST_OUTBOX_HOLD)" in b.logtext(), 30,
               f"{b.name} holding its outbox's load")
    s = resumed_on(a, cid, timeout=30)
    # B answered the claim's request (S's CONNACK waited for it) with the
    # state, or with "not found" (then its copy is held until S is back)
    got = []
    if "was asked for before this node loaded its store" not in b.logtext():
        got = [s.get(30).payload for _ in sent]
    s.disconnect()
    hold.unlink()
    moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
    wait_until(lambda: moved in b.logtext(), 30, f"{b.name} letting its copy of {cid} go")
    wait_healthy(c)
    back = resumed_on(b, cid, timeout=30)
    got += delivered_before_a_marker(back, p, topic)
    assert sorted(got) == sorted(sent)
    assert f"'{cid}' is claimed here again while its old copy" in b.logtext()
    kill(b)
    back.stop()
    moving.unlink()
    s = resumed_on(a, cid, timeout=30)
    b.start()
    none_again_after_late_messages(b, a, cid, s, p, topic, "asked while the outbox loaded", 60)


def test_late_messages_before_the_senders_state_reach_the_claim(cluster_factory,
                                                                 partition_factory):
    """Chaos seed 1093382011 with --more (54 lost, issue 10): late messages
    of a claim that came from the very node the claim awaited the session's
    state from, before that state (which follows them in the same sequence),
    found no session and no claim that could wait for them (waiting would
    hold the state back), and `adopt_lost` rebuilt a session from the
    record beside the claim to take them; the claim's own session then
    replaced it in the table (registry_local_stage), and they were gone.
    Here: S, offline on X, holds M0..M9; what A sends X on the channel waits
    (nft), so A's claim of S, waiting 30 s for X's state, asks X in vain;
    X, whose claim timeout is 1 s, lets its surrendered copy go to A as late
    messages of that claim. Main's build: S resumed on A with none of
    M0..M9. Now the claim resumes from the record at once and the frame
    goes into its session: S gets M0..M9, once each."""
    c = cluster_factory(extra_env=FAULT_ENV)
    c.start()
    c.wait_healthy()
    # followers both (a claim goes to the leader on the channel), started
    # again with their claim timeouts
    ld = wait_until(lambda: faults.leader(c), WAIT, "a leader")
    x, a = [n for n in c.nodes if n.name != ld]
    for n, ms in ((x, 1000), (a, 30000)):
        n.env = (lambda base, ms: lambda: {**base(), "STARLING_CLUSTER_CLAIM_TIMEOUT": str(ms)})(
            n.env, ms)
        faults.restart(n)
    wait_healthy(c)
    assert wait_until(lambda: faults.leader(c), WAIT, "a leader") == ld, \
        "the leader changed with its followers' restarts"
    cid, topic = uid("early"), uid("early/t")
    sent = [f"m{k}".encode() for k in range(10)]
    witness, p = offline_witnessed(x, x, cid, topic, sent)
    witness.disconnect()
    part = partition_factory(c)
    part.hold_channel(a, x)
    bg = Background(lambda: resumed_on(a, cid, timeout=60))
    try:
        moved = f"the session of '{cid}' moved to {faults.node_id(a):016x}"
        wait_until(lambda: moved in x.logtext(), 30, f"{x.name} letting its copy of {cid} go")
        came = re.compile(rf"late message\(s\) of '{re.escape(cid)}' came from "
                          rf"{faults.node_id(x):016x}")
        wait_until(lambda: came.search(a.logtext()), 30,
                   f"{a.name} getting {x.name}'s late messages of {cid}")
    finally:
        part.heal()
        bg.join()
    s = bg.result()
    marker = uid("marker").encode()
    p.publish(topic, marker, qos=1)
    seen = []
    while True:
        m = s.get(30).payload
        if m == marker:
            break
        seen.append(m)
    print(f"\n[late before state] {len(seen)} of {len(sent)} delivered on {a.name}: {seen}")
    assert seen == sent
    s.disconnect()
    p.disconnect()


def test_stored_copy_that_the_start_up_pass_names_the_claims_keeps_the_session(cluster_factory,
                                                                                tmp_path):
    """Issue 10, "sessions lost" in chaos runs (seed 1188520366 --more: the
    client got session present 0 and the registry then gave it claim 1),
    made deterministic. A persistent QoS 1 subscriber S moves from A to B;
    A's old copy stays in its store (STARLING_TEST_MOVING_HOLD) and A is
    SIGKILLed; M0..M9 are queued for S on B. A starts again and serves
    before it has caught up (the leader's reports held:
    STARLING_TEST_REPORTS_HOLD), so its start-up pass has not run; B is
    SIGSTOPped and S connects to A: A's claim applies and asks B, which
    does not answer. Then the leader's reports come, A's start-up pass finds
    the stored copy and the registry giving S to A: it gives the copy the
    claim's epoch. The claim resumes from the record after its timeout and
    its session replaces the copy in A's table. Before, that copy's end
    released S (SessionRelease: registry entry and record gone; the claim,
    when the release applied first, was "overtaken", CONNACK 0x88): S's
    next claim was claim 1, session present 0. Now S is resumed on A, gets
    M0..M9 (B's state, once B continued), and again on the leader's node
    (session present 1), which the registry names."""
    c, hold, lead, a, b = copies_held_cluster(cluster_factory, tmp_path, 8000)
    cid, topic = uid("passcopy"), uid("passcopy/t")
    props = {"session_expiry_interval": 600}
    s = PahoClient(a, cid, 5, clean=False, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=1) == [1]
    s.disconnect()
    hold.write_text("")  # A's copy, claimed away, stays (in its store too)
    s = resumed_on(b, cid, timeout=30)
    s.disconnect()
    moved = f"the session of '{cid}' moved to {faults.node_id(b):016x}"
    wait_until(lambda: moved in a.logtext(), 30, f"{a.name} letting its copy of {cid} go")
    p = PahoClient(lead, uid("passcopyp"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=1)
    # the leader's reports held before A dies: none queued for A meanwhile
    # (the channel sends a peer what was queued for it once it is back)
    held = tmp_path / f"reports-held-{lead.name}"
    held.write_text("")
    kill(a)
    hold.unlink()
    start = len(a.logtext())
    a.start()

    # A serves and hears B (B's claim below asks it)
    wait_until(lambda: faults.hears(a, b), 30, f"{a.name} serving and hearing {b.name}")
    pass_done = "cluster: start-up pass over"
    got = {}
    pause(b)
    try:
        def connect():
            y = mqttraw.Client(a, version=5)
            y.connack = y.connect(cid, clean=False, properties=props, timeout=60)
            got["s"] = y
        t = threading.Thread(target=connect)
        t.start()
        me = faults.node_id(a)
        wait_until(lambda: faults.tables(a)["registry"].get(cid, (0, 0))[0] == me, 30,
                   f"{a.name}'s claim of {cid} applied there")
        assert pass_done not in a.logtext()[start:], \
            f"{a.name}'s start-up pass ran before its claim"
        held.unlink()
        wait_until(lambda: pass_done in a.logtext()[start:], 30, f"{a.name}'s start-up pass")
        t.join(90)
    finally:
        if held.exists():
            held.unlink()
        resume(b)
    s = got["s"]
    acks = [s.connack]
    for _ in range(3):  # a refused CONNECT (0x88) is tried again, as clients do
        if s.connack.reason_code != 0x88:
            break
        s.close()
        s = mqttraw.Client(a, version=5)
        s.connack = s.connect(cid, clean=False, properties=props, timeout=30)
        acks.append(s.connack)
    print(f"\n[start-up pass copy] CONNACKs {[(k.reason_code, k.session_present) for k in acks]}")
    assert s.connack.reason_code == 0, f"CONNACK {s.connack}"
    assert s.connack.session_present, f"{cid}'s session lost: session present 0 ({acks})"
    # M0..M9, which B's state (B continued) brings
    delivered = []
    try:
        while len(delivered) < len(sent):
            m = s.expect(mqttraw.PUBLISH, timeout=30)
            s.puback(m.packet_id)
            delivered.append(m.payload)
    except (AssertionError, OSError, TimeoutError):
        pass
    s.disconnect()
    # and the session stays S's: resumed on the leader's node
    again = mqttraw.Client(lead, version=5)
    ack = again.connect(cid, clean=False, properties=props, timeout=30)
    print(f"[start-up pass copy] {len(delivered)} of {len(sent)} delivered on {a.name}; "
          f"then on {lead.name}: CONNACK {ack.reason_code}, session present {ack.session_present}")
    assert sorted(delivered) == sent, f"{len(sent) - len(delivered)} of {len(sent)} lost"
    assert ack.reason_code == 0 and ack.session_present, \
        f"{cid}'s session lost: session present 0 on {lead.name}"
    assert converged_tables(c)["registry"][cid][0] == faults.node_id(lead)
    s = again
    s.disconnect()
    p.disconnect()


@pytest.mark.parametrize("qos,retry", [(1, False), (2, False), (2, True)])
def test_stored_copy_standing_in_for_the_claims_session_hands_on_what_it_took(cluster_factory,
                                                                                tmp_path, qos,
                                                                                retry):
    """Issue 10 ("What is not guaranteed yet", first item): a stored copy
    that the start-up pass names the claim's session stands in for it until
    the claim's own session replaces it in the node's table
    (registry_local_stage); what reached it meanwhile ended with it. Here:
    a persistent subscriber S (QoS 1, QoS 2) moves from A to B; A's old
    copy stays in its store (STARLING_TEST_MOVING_HOLD) and A is
    SIGKILLed, then started with the leader's reports held
    (STARLING_TEST_REPORTS_HOLD), so that its start-up pass waits. B is
    SIGSTOPped and S connects to A: A's claim applies and asks B, which
    does not answer; the reports come, and the pass names the stored copy
    the claim's. N0..N4 are published on A (at S's QoS) while the claim
    waits: they reach that copy, and B's outbox only. B is SIGKILLed; the
    claim resumes from the record after its timeout. Before, the claim's
    session replaced the copy, and N0..N4 never came (B, dead, the only
    other holder). Now the copy is folded into the claim's session: S gets
    N0..N4 once, before a marker; and none again once B, restarted, has
    handed on what it held. `retry`: S's client gives up waiting and
    connects again at once, while the claim still waits; that second claim
    of A resumes the stand-in itself (the registry names A, the session is
    there), and the first one, overtaken, folds into it. Before, the
    stand-in recorded no identities, and what B's copy handed on came
    twice."""
    c, hold, lead, a, b = copies_held_cluster(cluster_factory, tmp_path, 10000)
    cid, topic, props, s = raw_persistent_subscriber(a, "standin", qos)
    s.disconnect()
    hold.write_text("")  # A's copy, claimed away, stays (in its store too)
    s = resumed_on(b, cid, timeout=30)
    s.disconnect()
    moved = f"the session of '{cid}' moved to {faults.node_id(b):016x}"
    wait_until(lambda: moved in a.logtext(), 30, f"{a.name} letting its copy of {cid} go")
    held = tmp_path / f"reports-held-{lead.name}"
    held.write_text("")
    kill(a)
    hold.unlink()
    start = len(a.logtext())
    a.start()

    wait_until(lambda: faults.hears(a, b), 30, f"{a.name} serving and hearing {b.name}")
    p = PahoClient(a, uid("standinp"), 5)
    p.connect()
    pass_done = "cluster: start-up pass over"
    timed_out = f"no session state for '{cid}' from its old node"
    sent = [f"n{k}".encode() for k in range(5)]
    got = {}
    pause(b)
    try:
        y = mqttraw.Client(a, version=5)
        y.connect(cid, clean=False, properties=props, expect=False)

        def connack():
            y.connack = y.expect(mqttraw.CONNACK, 60)
            got["s"] = y
        t = threading.Thread(target=connack)
        if not retry:
            t.start()
        me = faults.node_id(a)
        wait_until(lambda: faults.tables(a)["registry"].get(cid, (0, 0))[0] == me, 30,
                   f"{a.name}'s claim of {cid} applied there")
        assert pass_done not in a.logtext()[start:], \
            f"{a.name}'s start-up pass ran before its claim"
        held.unlink()
        wait_until(lambda: pass_done in a.logtext()[start:], 30, f"{a.name}'s start-up pass")
        for m in sent:
            p.publish(topic + "/x", m, qos=qos)
        assert timed_out not in a.logtext()[start:], \
            f"{a.name}'s claim went on before N0..N4 were published"
        kill(b)
        if retry:
            y.abort()
            got["s"] = connected_after_fault(a, cid, clean=False, properties=props, timeout=30)
            assert timed_out not in a.logtext()[start:], \
                f"{a.name}'s first claim went on before the second one"
        else:
            t.join(90)
    finally:
        if held.exists():
            held.unlink()
        resume(b)
    first = (got["s"].connack.reason_code, got["s"].connack.session_present)
    # (sooner, the `retry` case)
    s = connected_once_stored(got["s"], a, cid, props, start)
    print(f"\n[stand-in] CONNACKs {first}, then {s.connack}")
    assert s.connack.reason_code == 0 and s.connack.session_present, f"CONNACK {s.connack}"
    wait_until(lambda: timed_out in a.logtext()[start:], 30, f"{a.name}'s claim going on")

    def before_marker():
        return raw_got_before_a_marker(s, lambda m: p.publish(topic + "/marker", m, qos=qos))
    delivered = before_marker()
    folded = f"'{cid}' is claimed here while another session of it stood in"
    print(f"[stand-in] delivered on {a.name} before a marker: {delivered} "
          f"(the copy folded: {folded in a.logtext()[start:]})")
    assert delivered == sent, f"{len(sent) - len(set(delivered) & set(sent))} of {len(sent)} lost"
    # B, back, hands on its copy (and the forwards A held for it): none again
    b.start()
    came = re.compile(rf"late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}")
    wait_until(lambda: came.search(a.logtext()), 60, f"{a.name} taking {b.name}'s late messages")
    again = before_marker()
    print(f"[stand-in] after {b.name}'s late messages {came.findall(a.logtext())}: {again}")
    assert again == [], f"QoS {qos} messages delivered twice: {again}"
    s.disconnect()
    p.disconnect()


@pytest.mark.parametrize("mode", ["resumed", "resumed_replayed_first", "resumed_past_two",
                                  "folded", "folded_then_replayed"])
def test_a_stand_in_leaves_out_what_its_copys_owner_had_directly(cluster_factory, tmp_path,
                                                                   mode):
    """Issue 10, chaos seed 17603 (2 QoS 2 duplicates, DUP 0, after a
    whole-cluster SIGKILL), made deterministic. A persistent QoS 2
    subscriber S moves from A to B; A's old copy stays (held moving out,
    STARLING_TEST_MOVING_HOLD, and in A's store). B's forwards to A wait in
    B's outbox (STARLING_TEST_FWD_HOLD) while M0..M4 are published on B: S
    gets and completes them there. M0..M4 were routed once B's routes were
    everywhere, so they reached B directly: by the owners rule A's copy
    left them out, a rule that is not stored with it. A is SIGKILLed and
    started again, and the stored copy stands in for a later claim of A:
    * `resumed`: B's store has S settled; B is SIGSTOPped, S connects to A,
      whose claim applies and asks B; A and B are SIGKILLed and started
      again (A's start-up pass names the copy the claim's); S connects to
      A, whose claim resumes the stand-in, and B's outbox replays M0..M4
      to it;
    * `resumed_replayed_first`: the same, but B's outbox replays M0..M4 to
      A while A's start-up pass waits (the leader's reports held), before
      it names the copy;
    * `resumed_past_two`: as `resumed`, but S moves from A to the leader
      first, then to B: M0..M4 reached B, the second owner after A's
      copy's claim (chaos seed 18002 on 7b51ab1: the rule named the first
      owner alone, up to the second one's record);
    * `folded`: A's pass waits while S connects to A, whose claim applies
      and asks B; B's outbox replays M0..M4, then B's state comes, and the
      stored copy, not named yet, is folded into the claim's session. B's
      sessions record no identities (STARLING_TEST_SEEN_RECORD_MS=0, as
      once the 60 s after a move are over), so its state does not say that
      S had M0..M4;
    * `folded_then_replayed`: the same, but M0..M4 are published on the
      leader, whose outbox replays them to A once the copy is folded: the
      claim's session takes them.
    Before, the stand-in (or the claim's session) took M0..M4 and S got
    them again. Now S gets none of them again, and N0..N2, published on A
    while the copy stands in, once."""
    c, hold, lead, a, b = copies_held_cluster(cluster_factory, tmp_path, 10000,
                                              STARLING_TEST_FWD_HOLD="fwd-held")
    fold = mode.startswith("folded")
    origin = lead if mode == "folded_then_replayed" else b
    if fold:
        # B's sessions record no identities (as once the 60 s after a move
        # are over): its state does not say that S had M0..M4
        kill(b)
        b.env = (lambda base: lambda: {**base(), "STARLING_TEST_SEEN_RECORD_MS": "0"})(b.env)
        b.start()
        wait_until(lambda: faults.hears(a, b) and faults.hears(b, a), 60,
                   f"{b.name} back, heard by {a.name}")
    cid, topic, props, s = raw_persistent_subscriber(a, "standdirect", 2)
    s.disconnect()
    hold.write_text("")  # A's copy, claimed away, stays (in its store too)
    two = mode == "resumed_past_two"
    s = connected_after_fault(lead if two else b, cid, clean=False, properties=props, timeout=30)
    assert s.connack.session_present, s.connack
    bound = re.compile(rf"the old copy of '{re.escape(cid)}' takes nothing routed from "
                       rf"index \d+ on")
    wait_until(lambda: bound.search(a.logtext()), 30, f"{a.name}'s copy of {cid} bound")
    if two:
        s.disconnect()
        s = connected_after_fault(b, cid, clean=False, properties=props, timeout=30)
        assert s.connack.session_present, s.connack
        wait_until(lambda: bound.search(lead.logtext()), 30, f"{lead.name}'s copy of {cid} bound")
    fwd_held = tmp_path / f"fwd-held-{origin.name}"
    fwd_held.write_text(f"{faults.node_id(a):x}\n")
    p = mqttraw.connected(origin, uid("standdirectp"), 5)
    sent = [f"m{k}".encode() for k in range(5)]
    for k, m in enumerate(sent):
        p.publish(topic + "/x", m, qos=2, packet_id=k + 1)
        assert p.expect(mqttraw.PUBREC, timeout=30).packet_id == k + 1
        p.pubrel(k + 1)
        assert p.expect(mqttraw.PUBCOMP, timeout=30).packet_id == k + 1
    got = [s.recv_publish(30).payload for _ in sent]
    assert got == sent, got
    p.disconnect()
    me = faults.node_id(a)
    pass_done = "cluster: start-up pass over"
    later = [f"n{k}".encode() for k in range(3)]
    rule = f"the stored copy of '{cid}' (claim 1) leaves out what was routed"
    replayed = f"'{sent[-1].decode()}') applied"
    reports_held = tmp_path / f"reports-held-{lead.name}"
    folded = f"'{cid}' is claimed here while another session of it stood in"

    def publish_later():
        q = mqttraw.connected(a, uid("standdirectq"), 5)
        for k, m in enumerate(later):
            q.publish(topic + "/x", m, qos=1, packet_id=k + 1)
            assert q.expect(mqttraw.PUBACK, timeout=30).packet_id == k + 1
        return q

    if not fold:
        session_settled_then_synced(b, cid)
        s.disconnect()
        pause(b)
        y = mqttraw.Client(a, version=5)
        y.connect(cid, clean=False, properties=props, expect=False)
        wait_until(lambda: faults.tables(a)["registry"].get(cid, (0, 0))[0] == me, 30,
                   f"{a.name}'s claim of {cid} applied there")
        kill(a)
        kill(b)
        y.close()
        hold.unlink()
        start = len(a.logtext())
        first = mode == "resumed_replayed_first"
        if first:
            reports_held.write_text("")
        try:
            a.start()
            if first:
                b.start()
                wait_until(lambda: faults.hears(a, b), 60, f"{a.name} hearing {b.name}")
                released_then_logged(fwd_held, a, replayed, start,
                                     f"{b.name}'s outbox replaying M0..M4 to {a.name}")
                assert pass_done not in a.logtext()[start:], \
                    f"{a.name}'s start-up pass ran before M0..M4 came"
        finally:
            if first:
                reports_held.unlink()
        wait_until(lambda: pass_done in a.logtext()[start:], 60, f"{a.name}'s start-up pass")
        q = publish_later()
        if not first:
            b.start()
            wait_until(lambda: faults.hears(a, b), 60, f"{a.name} hearing {b.name}")
            fwd_held.unlink()
        s = connected_after_fault(a, cid, clean=False, properties=props, timeout=30)
    else:
        s.disconnect()
        kill(a)
        hold.unlink()
        reports_held.write_text("")
        start = len(a.logtext())
        try:
            a.start()
            wait_until(lambda: faults.hears(a, b), 60,
                       f"{a.name} serving and hearing {b.name}")
            y = mqttraw.Client(a, version=5)
            y.connect(cid, clean=False, properties=props, expect=False)
            connack = Background(lambda: y.expect(mqttraw.CONNACK, 60))
            wait_until(lambda: faults.tables(a)["registry"].get(cid, (0, 0))[0] == me, 30,
                       f"{a.name}'s claim of {cid} applied there")
            if origin is b:
                released_then_logged(fwd_held, a, folded, start,
                                     f"{a.name} folding the stored copy of {cid}")
            assert pass_done not in a.logtext()[start:], \
                f"{a.name}'s start-up pass ran before its claim"
        finally:
            reports_held.unlink()
        wait_until(lambda: pass_done in a.logtext()[start:], 30, f"{a.name}'s start-up pass")
        q = publish_later()
        if origin is not b:
            wait_until(lambda: folded in a.logtext()[start:], 30,
                       f"{a.name} folding the stand-in of {cid}")
            released_then_logged(fwd_held, a, replayed, start,
                                 f"{origin.name}'s outbox replaying M0..M4 to {a.name}")
        y.connack = connack.result()
        s = connected_once_stored(y, a, cid, props, start)
    print(f"\n[stand-in direct] {mode}: CONNACK {s.connack}; the stand-in's rule: "
          f"{[x for x in a.logtext()[start:].splitlines() if rule in x]}")
    assert s.connack.reason_code == 0 and s.connack.session_present, s.connack

    def marker(m):
        q.publish(topic + "/marker", m, qos=1, packet_id=9)
        assert q.expect(mqttraw.PUBACK, timeout=30).packet_id == 9
    came = re.compile(rf"late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}")
    wait_until(lambda: came.search(a.logtext()[start:]), 60,
               f"{a.name} taking {b.name}'s late messages")
    delivered = raw_got_before_a_marker(s, marker) + raw_got_before_a_marker(s, marker)
    print(f"[stand-in direct] delivered on {a.name}: {delivered}")
    assert [m for m in delivered if m in sent] == [], f"M0..M4 again: {delivered}"
    assert sorted(m for m in delivered if m in later) == later, f"N0..N2: {delivered}"
    s.disconnect()
    q.disconnect()


def test_late_messages_in_the_handover_window_follow_the_copy(cluster_factory, tmp_path,
                                                              partition_factory):
    """Issue 10 (chaos: 123 and 210 QoS 2 duplicates with stop 16's tree),
    made deterministic: a node X that answers a claimant's SessionRequest
    before it has applied that claim has handed its session on and still
    finds itself its owner; late messages of its own claim that came then
    found no session, and `adopt_lost` rebuilt one from the record (no
    identities) that took them and, once X applied the claim, went on to
    the owner of then. Here: a persistent QoS 2 subscriber S (also in a
    shared group: its old copies take everything, at least once) moves
    from the leader W to X with W's state; W's old copy (held by
    STARLING_TEST_MOVING_HOLD) collects M0..M9, which S gets on X. X
    restarts (its session of S comes from its store) and holds N0..N4,
    which W's copy collects too. X's Raft is cut (nft); S moves to C, whose
    request X answers before it applies C's claim, and C's claim waits for
    X (faults.LEADERLESS_WAITED); S gets N0..N4 on C.
    W's copy sends M0..M9 and N0..N4 to X, for X's claim. X's Raft is
    healed, C SIGKILLed, and S resumes on W from its record. Before (main's
    build), the rebuilt session went to W, which delivered M0..M9 and
    N0..N4 again; now they go through X's copy, which knows S had them:
    S gets none of them again."""
    holds = {}
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug",
                                       **faults.LEADERLESS_WAITED))
    for n in c.nodes:
        holds[n.name] = tmp_path / f"moving-hold-{n.name}"
        n.env = (lambda base, h: lambda: {**base(), "STARLING_TEST_MOVING_HOLD": str(h)})(
            n.env, holds[n.name])
    c.start()
    c.wait_healthy()
    ld = wait_until(lambda: faults.leader(c), WAIT, "a leader")
    w = faults.node_named(c, ld)
    x, cn = [n for n in c.nodes if n is not w]
    cid, topic = uid("window"), uid("window/t")
    xid, cnid = f"{faults.node_id(x):016x}", f"{faults.node_id(cn):016x}"
    s = PahoClient(w, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    assert s.subscribe(f"$share/g/{topic}-shared", qos=2) == [2]
    s.disconnect()
    # S moves to X with W's state; W's old copy stays and collects
    holds[w.name].write_text("")
    s = resumed_on(x, cid, timeout=30)
    wait_until(lambda: f"the session of '{cid}' moved to {xid}" in w.logtext(), 30,
               f"{w.name} handing {cid} to {x.name}")
    p = PahoClient(cn, uid("windowp"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        p.publish(topic + "/x", m, qos=2)
    assert [s.get(WAIT).payload for _ in sent] == sent
    # X restarts (S offline): its session of S comes from its store (else,
    # listed as the session that came with X's claim, cn_incoming, it takes
    # X's late messages for 60 s)
    s.disconnect()
    assert x.stop(signal.SIGTERM) == 0
    x.start()
    wait_healthy(c)
    # N0..N4, queued for S on X (and in W's copy): S gets them on C
    queued = [f"n{k}".encode() for k in range(5)]
    for m in queued:
        p.publish(topic + "/x", m, qos=2)
    # X applies nothing (its claim's routes everywhere, C's claim
    # completes once X is back); S moves to C, whose request X answers
    holds[x.name].write_text("")
    part = partition_factory(c)
    part.cut([x], [w, cn], raft_only=True)
    bg = Background(lambda: resumed_on(cn, cid, timeout=60))
    try:
        answered = re.compile(rf"the session of '{re.escape(cid)}' moved to {cnid} "
                              rf"\(claim \d+\)\n")
        wait_until(lambda: answered.search(x.logtext()), 30, f"{x.name} answering {cn.name}")
        assert f"'{cid}' was claimed by node {cnid}" not in x.logtext()
        # W's copy sends M0..M9 to X, for X's claim
        holds[w.name].unlink()
        came = re.compile(rf"the session of '{re.escape(cid)}' \(claim \d+\) is not here|"
                          rf"late message\(s\) of '{re.escape(cid)}' \(claim \d+\) came from "
                          rf".* after this node handed the session on")
        wait_until(lambda: came.search(x.logtext()), 30, f"{x.name} taking W's late messages")
        assert f"'{cid}' was claimed by node {cnid}" not in x.logtext()
    finally:
        part.heal()
        bg.join()
    on_c = bg.result()
    assert [on_c.get(WAIT).payload for _ in queued] == queued
    on_c.stop()
    kill(cn)
    try:
        s = resumed_on(w, cid, timeout=60)
    finally:
        holds[x.name].unlink()
    # X's copies of S end: the one that went to C and, where one was
    # rebuilt from the record, that one, sent to W (the owner of then)
    rebuilt = f"the session of '{cid}' (claim" in x.logtext() and "is not here" in x.logtext()
    ended = f"the old copy of '{cid}' ends"
    wait_until(lambda: x.logtext().count(ended) >= 1 + rebuilt, 60,
               f"{x.name}'s copies of {cid} ending")
    if rebuilt:
        from_x = f"late message(s) of '{cid}' came from {xid}"
        wait_until(lambda: from_x in w.logtext(), 30, f"{w.name} taking {x.name}'s copy")
    p.stop()  # its node, C, is down
    p = PahoClient(w, uid("windowp2"), 5)
    p.connect()
    none_delivered_again("handover window", s, p, topic,
                         lambda: f" on {w.name}; {x.name}: {came.findall(x.logtext())}")


def test_late_frame_passed_on_to_a_later_claim_brings_no_identities(cluster_factory, tmp_path):
    """Chaos seed 1093382011 (--more --minutes 4, rolling SIGKILLs: one QoS 2
    message lost at two subscribers), made deterministic. S's session
    moved to A, so A's session records the identities of what it takes;
    M is queued to it there. S claims it on B: A's state carries M to B
    (which sends M to S's client; not completed), and A's old copy, moving
    out to B's claim, keeps M's identity (held by STARLING_TEST_MOVING_HOLD).
    B is SIGKILLed and, once taken for dead, S resumes on C from its
    record (B not asked), without M. B comes back with its stored copy,
    which follows C's claim (held too). A's copy
    then sends its last frame (no message) to B, its addressee; B passes it
    on to C. C must not take that frame's identities: M went to B's claim
    with A's state, not to C, and when B's copy hands M on, C took it for
    one it had ("... ('M') already: not again"): lost. Before, the
    passed-on frame carried A's copy's identities and C merged them
    (docs/cluster.md, Faults, "A late frame passed on to a later claim")."""
    c = cluster_factory(extra_env=dict(FAULT_ENV, STARLING_LOG_LEVEL="debug"))
    hold_files_per_node(c, tmp_path, STARLING_TEST_MOVING_HOLD="moving-hold")
    c.start()
    c.wait_healthy()
    lead = faults.node_named(c, wait_until(lambda: faults.leader(c), 20, "a leader"))
    b = next(n for n in c.nodes if n is not lead)  # killed below: not the leader
    a, cn = [n for n in c.nodes if n is not b]
    hold_a, hold_b = tmp_path / f"moving-hold-{a.name}", tmp_path / f"moving-hold-{b.name}"
    cid, topic = uid("passon"), uid("passon/t")
    props = {"session_expiry_interval": 600}
    # S subscribes on C, then moves to A (which records what S's session takes)
    s = mqttraw.connected(cn, cid, 5, properties=props)
    assert s.subscribe((f"{topic}/#", mqttraw.sub_options(qos=2))).reason_codes == [2]
    s.disconnect()
    s = mqttraw.connected(a, cid, 5, clean=False, properties=props)
    assert s.connack.session_present
    s.disconnect()
    # M, published on A and completed there, is queued to S's session on A
    p = PahoClient(a, uid("passonp"), 5)
    p.connect()
    p.publish(topic + "/m", b"M", qos=2)
    p.disconnect()
    # S claims it on B (A's old copy held); B sends M to S, not completed
    hold_a.write_text("")
    hold_b.write_text("")
    s = mqttraw.connected(b, cid, 5, clean=False, properties=props)
    assert s.connack.session_present
    m = s.expect(mqttraw.PUBLISH, timeout=WAIT)  # no PUBREC
    assert m.payload == b"M", m
    s.disconnect()
    moved = f"the session of '{cid}' moved to {faults.node_id(b):016x}"
    wait_until(lambda: moved in a.logtext(), 30, f"{a.name}'s copy of {cid} moving out to {b.name}")
    # B, which stored S's session with M, is killed; S resumes on C from
    # its record
    later = PahoClient(b, uid("later"), 5, clean=False, properties=session_props())
    later.connect()
    assert later.subscribe(uid("later/t"), qos=1) == [1]  # after S's batches: on disk
    later.stop()
    kill(b)
    # once B is taken for dead, C asks it nothing (its answer, at its
    # return, would bring M before A's frame)
    down = f"NodeDown({faults.node_id(b):016x})"
    wait_until(lambda: down in cn.logtext(), 30, f"{cn.name} applying {b.name}'s NodeDown")
    y = resumed_on(cn, cid, timeout=30)
    owned = f"'{cid}' was owned by {faults.node_id(b):016x}, which is down"
    assert owned in cn.logtext()
    # B comes back: its stored copy follows C's claim (held)
    b.start()
    wait_healthy(c)
    moved_c = f"the session of '{cid}' moved to {faults.node_id(cn):016x}"
    wait_until(lambda: moved_c in b.logtext(), 30, f"{b.name} applying {cn.name}'s claim of {cid}")
    # A's copy sends its last frame (no message: M went with its state) to
    # B, which passes it on to C
    mark = len(cn.logtext())
    hold_a.unlink()
    passed = re.compile(rf"(\d+) late message\(s\) for '{re.escape(cid)}' \(claim \d+\) "
                        rf"passed on to its owner {faults.node_id(cn):016x}")
    wait_until(lambda: passed.findall(b.logtext()), 30, f"{b.name} passing on A's frame of {cid}")
    ranges = re.compile(rf"'{re.escape(cid)}' had \d+ identity range\(s\) recorded")
    wait_until(lambda: ranges.findall(cn.logtext()[mark:]), 30,
               f"{cn.name} taking the passed-on frame of {cid}")
    # B's copy hands M on to C: S gets it there
    hold_b.unlink()
    came = re.compile(rf"(\d+) late message\(s\) of '{re.escape(cid)}' came from "
                      rf"{faults.node_id(b):016x}")
    try:
        got = y.get(20).payload
    except AssertionError:
        got = None
    print(f"\n[passed-on identities] S got {got} on {cn.name}; late messages from {b.name}: "
          f"{came.findall(cn.logtext())}")
    assert got == b"M", f"M lost: {cn.name} took {b.name}'s M for one it had"
    y.disconnect()


def test_owners_own_publishes_held_in_its_outbox_across_a_kill_come_once(cluster_factory,
                                                                        tmp_path):
    """Chaos seed 9205 with --more (36 QoS 2 duplicates, 2026-12-04), made
    deterministic. A persistent QoS 2 subscriber S, offline, on node B; S's
    client connects to A, which takes S over; B's copy, moving out to A, is
    held (STARLING_TEST_MOVING_HOLD), so B still routes S's filter. B is
    SIGSTOPped; M0..M19, published by a client of A, reach S on A (its
    client completes each) and wait in A's outbox for B. A and B are
    SIGKILLed. B starts again with its stored copy; S's client comes back
    to B, which resumes S from A's record (A down) and folds the copy into
    it. A starts again and sends its outbox: M0..M19 reach B, routed with
    A's routes everywhere, before B's claim. The fold left such messages
    out of what the copy held (the owners rule); the forwards that came
    for the copy after the fold were taken by the session, which takes
    everything routed to B: S got all 20 again, each as a new message."""
    c, hold, cn, b, a, cid, topic, s, moved = taken_over_beside_a_held_copy(
        cluster_factory, tmp_path, "outkill", "ok/t")
    p = PahoClient(a, uid("outkillp"), 5)
    p.connect()
    sent = [f"m{k}".encode() for k in range(20)]
    pause(b)
    try:
        for m in sent:
            p.publish(topic + "/x", m, qos=2)
        assert [s.get(WAIT).payload for _ in sent] == sent
        wait_until(lambda: outbox_for(a, b.name) >= len(sent), 30,
                   f"{a.name}'s outbox holding M0..M19 for {b.name}")
        session_settled_then_synced(a, cid)
        kill(a)
    finally:
        kill(b)
    s.stop()
    p.stop()
    start = len(b.logtext())
    b.start()
    wait_until(lambda: moved in b.logtext()[start:], 60,
               f"{b.name} finding its stored copy of {cid} claimed away by {a.name}")
    # (its MQTT listener opens after that pass: once, the CONNECT came first)
    wait_until(lambda: "(MQTT, " in b.logtext()[start:], 60, f"{b.name} listening")
    s = resumed_on(b, cid, timeout=30, tries=3)
    log = b.logtext()[start:]
    assert f"the session of '{cid}' resumed from its record" in log
    assert f"'{cid}' is claimed here again while its old copy" in log
    hold.unlink()
    a.start()
    wait_healthy(c)
    wait_until(lambda: outbox_for(a, b.name) == 0, 30, f"{a.name}'s outbox for {b.name} sent")
    pc = PahoClient(cn, uid("outkillc"), 5)
    pc.connect()
    none_delivered_again("the owner's outbox after a kill", s, pc, topic, lambda: f" on {b.name}")


def test_copy_given_up_beside_a_later_claim_here_stores_nothing_that_claim_got(cluster_factory):
    """Chaos seed 10254 with --resend --more (44 QoS 2 duplicates at one
    subscriber, DUP 0). A persistent QoS 2 subscriber S on A; A stalls
    (SIGSTOP), and S resumes on C from its record (claim 2). A runs again:
    its copy of S is given up to C's claim (set aside, in A's index still)
    and waits cluster_claim_timeout + 1 s for C's request, which never comes.
    S comes back to A (claim 3, C's state) and gets M0..M19 there. Before,
    the copy set aside took M0..M19 too and stored them, under the keys it
    shares with claim 3's session; A was SIGKILLed before that copy's wait
    ended, and came back with them as claim 3's queued messages: sent on to
    S's next node (claim 4, on C), S got them all again. Now claim 3 takes
    the copy set aside in when it completes (the copy ends, as an old copy
    moving out of A does), and A's store holds nothing that S got."""
    c = cluster_factory(extra_env={"STARLING_CLUSTER_CLAIM_TIMEOUT": "15000"})
    c.start()
    c.wait_healthy()
    a, b, cn = c.nodes
    cid, topic = uid("aside"), uid("aside/t")
    s = PahoClient(a, cid, 5, clean=False, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=2) == [2]
    pause(a)
    try:
        wait_until(lambda: one_down_for(cn), 30, f"{cn.name} taking {a.name} for dead")
        s.stop()
        resumed_on(cn, cid, timeout=30).disconnect()  # claim 2, from the record
    finally:
        resume(a)
    given = f"the session of '{cid}' was claimed by node {faults.node_id(cn):016x}"
    wait_until(lambda: given in a.logtext(), 30, f"{a.name} giving its copy of {cid} up")
    s = resumed_on(a, cid, timeout=30)  # claim 3: C's state; the copy is still set aside
    ended = f"'{cid}' is claimed here again while its copy of claim 1, given up to claim 2"
    assert ended in a.logtext()  # (before claim 3's CONNACK)
    p, sent = twenty_delivered(b, "asidep", topic, s, in_order=False)
    kill(a)
    s.stop()
    wait_until(lambda: one_down_for(cn), 30, f"{cn.name} taking {a.name} for dead")
    s = resumed_on(cn, cid, timeout=30)  # claim 4, from the record
    a.start()
    none_again_after_late_messages(a, cn, cid, s, p, topic, "copy set aside", 60)
