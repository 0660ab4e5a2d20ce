"""Persistent sessions across node faults (docs/cluster.md "Faults"): a
session whose node died is resumed on another node from its replicated
record (session present 1, subscriptions intact); the messages the dead
node held follow it when that node returns; a dead node's routes go after
cluster_down_after, but those of its persistent sessions; a session that
ends releases its registry record; messages published while a session
moves between nodes all arrive."""

import signal
import threading
import time

from helpers import WAIT as CLIENT_WAIT
from conftest import wait_for
from helpers import PahoClient, uid
from sessions import WAIT, expiry, offline_witnessed, resumed_on, subscriber

DOWN_AFTER = 1500
ENV = {"STARLING_CLUSTER_DOWN_AFTER": str(DOWN_AFTER)}
SETTLE = 20  # the bound of the waits for what the cluster does after a change (s)
EXPIRY = 300  # the persistent sessions' expiry interval (s)


def formed(cluster_factory):
    """A formed cluster whose nodes take a node for down after DOWN_AFTER ms."""
    c = cluster_factory(extra_env=ENV)
    c.start()
    c.wait_healthy()
    return c


def members(node):
    """name -> member record of /api/v1/cluster as `node` sees it."""
    status, doc = node.http("GET", "/api/v1/cluster")
    assert status == 200
    return {m["name"]: m for m in doc["nodes"]}


def kill(node):
    node.stop(sig=signal.SIGKILL)


def test_session_of_a_killed_node_is_resumed_elsewhere(cluster_factory):
    c = formed(cluster_factory)
    a, b, third = c.nodes
    cid = uid("orphan")
    topic = uid("sf/t")
    x = subscriber(a, cid, topic, EXPIRY)
    kill(a)
    x.stop()
    # the client comes back on another node within a few seconds, without
    # waiting for the dead one
    t0 = time.monotonic()
    y = resumed_on(b, cid, EXPIRY, timeout=WAIT + 5)
    assert time.monotonic() - t0 < WAIT
    # its subscription was resumed: a publish on the third node reaches it
    p = PahoClient(third, uid("pub"), 5)
    p.connect()
    p.publish(topic, b"after-the-fault", qos=1)
    m = y.get(WAIT)
    assert (m.topic, m.payload, m.qos) == (topic, b"after-the-fault", 1)
    y.disconnect()
    p.disconnect()


def test_messages_held_by_a_dead_node_follow_the_session(cluster_factory):
    c = formed(cluster_factory)
    a, b, third = c.nodes
    cid = uid("held")
    topic = uid("sf/h")
    sent = [f"held-{i}".encode() for i in range(12)]
    # a witness on node a: once it has every message, so has the offline
    # session there (one ordered channel from the publisher's node)
    witness, pub = offline_witnessed(a, third, cid, topic, sent, EXPIRY)
    # one more, published on node a itself: its PUBACK comes once it is
    # stored there, after the forwarded ones (the store commits in order;
    # that a forward is stored before the origin's PUBACK is the durable
    # forwarding's part, not this test's)
    pa = PahoClient(a, uid("pub"), 5)
    pa.connect()
    sent.append(b"held-on-a")
    pa.publish(topic, sent[-1], qos=1)
    assert witness.get(WAIT).payload == sent[-1]
    pa.stop()
    witness.stop()
    kill(a)
    # resumed on node b from the replicated record, node a still down
    y = resumed_on(b, cid, EXPIRY, timeout=WAIT + 5, tries=3)
    pub.publish(topic, b"while-down", qos=1)
    assert y.get(WAIT).payload == b"while-down"
    # node a returns: what it held for the session goes to node b
    a.start()
    # (an ASan node on a loaded machine may take a while to start and catch
    # up: the wait for its messages starts once it serves)
    c.wait_healthy()
    got = [y.get(20).payload for _ in sent]
    assert sorted(got) == sorted(sent)  # every acknowledged message, once
    assert got == sent  # and in their order
    y.disconnect()
    pub.disconnect()


def test_routes_of_a_dead_node_go_but_its_sessions_keep_theirs(cluster_factory):
    c = formed(cluster_factory)
    a, b, _ = c.nodes
    keep = subscriber(a, uid("keep"), uid("sf/keep") + "/#", EXPIRY)
    gone = PahoClient(a, uid("gone"), 5)  # a clean session: expiry 0
    gone.connect()
    assert gone.subscribe(uid("sf/gone1"), qos=1) == [1]
    assert gone.subscribe(uid("sf/gone2"), qos=0) == [0]
    # (the SUBACKs mean the routes are on every live node)
    assert members(b)["n1"]["routes"] == 3
    kill(a)
    keep.stop()
    gone.stop()
    t0 = time.monotonic()
    wait_for(lambda: members(b)["n1"]["routes"] == 1, SETTLE, "node a's routes to go")
    assert time.monotonic() - t0 >= DOWN_AFTER / 1000 - 0.2
    # only the persistent session's route is left, on every node (the third
    # applies the NodeDown when it applies it: waited for, bounded)
    for n in (b, c.nodes[2]):
        wait_for(lambda: (lambda m: not m["reachable"] and m["routes"] == 1)(members(n)["n1"]),
                 SETTLE, f"{n.name} to show node a unreachable with 1 route")
        m = members(n)["n1"]
        assert not m["reachable"]
        assert m["routes"] == 1


def test_an_ended_session_releases_its_registry_record(cluster_factory):
    c = formed(cluster_factory)
    a, b, _ = c.nodes
    assert members(b)["n1"]["sessions"] == 0
    x = PahoClient(a, uid("clean"), 5)  # clean start, expiry 0
    x.connect()
    assert x.subscribe(uid("sf/c"), qos=1) == [1]
    p = PahoClient(a, uid("persist"), 5, clean=True, properties=expiry(EXPIRY))
    p.connect()
    wait_for(lambda: members(b)["n1"]["sessions"] == 2, SETTLE, "two records naming node a")
    x.disconnect()
    p.disconnect()
    # the clean session ended: its record goes; the persistent one stays
    wait_for(lambda: members(b)["n1"]["sessions"] == 1, SETTLE, "the clean session's release")
    # the persistent one ends too when its client says so (expiry 0 on
    # DISCONNECT is refused by 5.0 after a non-zero one: reconnect clean)
    q = PahoClient(a, p.client_id, 5, clean=True)
    q.connect()
    q.disconnect()
    wait_for(lambda: members(b)["n1"]["sessions"] == 0, SETTLE, "no record naming node a")


def test_messages_published_while_a_session_moves_all_arrive(cluster_factory):
    c = formed(cluster_factory)
    a, b, third = c.nodes
    cid = uid("moving")
    topic = uid("sf/m")
    got = []
    x = subscriber(a, cid, topic, EXPIRY)
    acked = []
    stop = threading.Event()

    def publish():
        pub = PahoClient(third, uid("pub"), 5)
        pub.connect()
        i = 0
        while not stop.is_set():
            payload = f"m{i}".encode()
            pub.publish(topic, payload, qos=1)  # returns once PUBACKed
            acked.append(payload)
            i += 1
        pub.disconnect()

    t = threading.Thread(target=publish)
    t.start()
    try:
        wait_for(lambda: len(acked) >= 30, SETTLE, "messages on node a")
        # the client moves to node b while the publisher goes on
        y = resumed_on(b, cid, EXPIRY, timeout=CLIENT_WAIT)
        moved_at = len(acked)
        wait_for(lambda: len(acked) >= moved_at + 50, 30, "more messages after the move")
    finally:
        stop.set()
        t.join(30)
    x.stop()
    while not x.messages.empty():
        got.append(x.messages.get().payload)
    want = set(acked)
    deadline = time.monotonic() + WAIT
    while not want <= set(got) and time.monotonic() < deadline:
        try:
            got.append(y.get(0.5).payload)
        except AssertionError:
            pass
    missing = sorted(want - set(got), key=lambda p: int(p[1:]))
    assert not missing, f"{len(missing)} acknowledged message(s) lost: {missing[:20]}"
    y.disconnect()


def subscriptions(node):
    status, doc = node.http("GET", "/api/v1/stats")
    assert status == 200
    return {n["node"]: n for n in doc["nodes"]}[node.name]["subscriptions"]


def test_clean_start_elsewhere_ends_the_old_session_at_once(cluster_factory):
    # [MQTT-5.0 3.1.2-4] a clean start discards the session: its old node
    # ends its copy as soon as it applies the claim (neither kept for a
    # request that will not come, nor sent on to the new node)
    c = formed(cluster_factory)
    a, b, third = c.nodes
    cid = uid("fresh")
    topic = uid("sf/f")
    witness, pub = offline_witnessed(a, third, cid, topic, [f"old{i}".encode() for i in range(5)],
                                     EXPIRY)
    assert subscriptions(a) == 2
    y = PahoClient(b, cid, 5, clean=True, properties=expiry(EXPIRY))
    y.connect()
    assert not y.session_present
    # (within 3 s: the copy of a claim that resumes is kept up to
    # cluster_claim_timeout + 1 s = 6 s)
    wait_for(lambda: subscriptions(a) == 1, 3, "the old copy to end")
    assert y.subscribe(topic, qos=1) == [1]
    pub.publish(topic, b"new", qos=1)
    assert y.get(WAIT).payload == b"new"
    y.disconnect()
