"""A persistent session that moves on while its old copy still collects
(docs/cluster.md, "How a takeover flows", late messages, and *Messages
missing after session moves under heavy load*): what its client sees,
counted by payload.

Each test starts its own 3-node cluster (conftest.py); the debug-build hook
STARLING_TEST_FWD_HOLD holds the nodes' QoS 1/2 forwards in their outboxes
while a file exists (as a full channel would), to put a forward behind the
old copy's last frame, as a loaded machine did.
"""

import os
import re
import time

import pytest

import faults
import mqttraw
from helpers import PahoClient, uid
from sessions import offline_witnessed, resumed_elsewhere

WAIT = 30.0


def session_props(seconds=600):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p


def test_a_message_skipped_by_the_old_copy_as_direct_is_not_taken_for_had(cluster_factory,
                                                                          tmp_path):
    """A persistent QoS 1 subscriber S moves C -> A -> B. A's copy, moving
    out, still collects what is forwarded to A for S during its grace, and
    does not send on what was routed with B's routes in effect (it reaches
    B directly): M, published on C, whose forward to B waits in C's outbox
    (held: a full channel). A's last frame (the identities of what it got)
    reaches B before that forward. S on B must get M. (Published on A
    itself, M's forward and A's frames to B share one sequence since
    moved messages are sequenced too, and the frame cannot pass it.)

    Before, the identities sent with that frame included M's, though the
    copy had neither delivered M to a client nor sent it on: B took them as
    "its client had them" and dropped M when its forward came ("had it
    already: not again"). test_blackbox.py::test_session_moves_under_traffic
    lost 6 messages of one publisher that way (3 QoS 1, 3 QoS 2) with
    STARLING_BB_SCALE=4 on a loaded machine."""
    from conftest import Node
    hold = tmp_path / "fwd-hold"
    c = cluster_factory()
    a, b, cn = c.nodes
    cn.env = lambda: {**Node.env(cn), "STARLING_TEST_FWD_HOLD": str(hold)}
    c.start()
    c.wait_healthy()
    cid = uid("mv")
    topic = uid("mv/t")
    s = PahoClient(cn, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(topic + "/#", qos=1) == [1]
    s.stop()
    # on A it records the identities of what it gets (a session that moved)
    s = PahoClient(a, cid, 5, clean=False, properties=session_props())
    s.connect(timeout=WAIT)
    assert s.session_present
    p = PahoClient(cn, uid("mvp"), 5)
    p.connect()
    s.stop()
    s = PahoClient(b, cid, 5, clean=False, properties=session_props())
    s.connect(timeout=WAIT)
    assert s.session_present
    # B's routes are in effect everywhere (the CONNACK waited for them): A's
    # copy, in its grace, collects M and skips it (it reached B directly)
    hold.write_text(f"{faults.node_id(b):016x}\n")  # C's frames to B wait, to A not
    p.publish(topic + "/x", b"M", qos=1)
    # the copy's last frame, with its identities, reaches B (LATE_GRACE_MS
    # after B's routes: 6 s)
    last = f"late message(s) of '{cid}' came from {faults.node_id(a):016x}"
    faults.wait_until(lambda: last in b.logtext(), WAIT, f"{b.name} getting the last frame of "
                      f"{a.name}'s copy of {cid}")
    os.unlink(hold)  # M's forward goes from C to B now
    p.publish(topic + "/marker", b"marker", qos=1)
    got = [m.payload for m in s.get_until(topic + "/marker", WAIT)]
    assert got == [b"M", b"marker"], got
    s.stop()
    p.disconnect()


def test_a_claim_slower_than_connect_timeout_gets_a_connack(cluster_factory):
    """A persistent session's client comes back on node B while its old
    node A is stopped (SIGSTOP): B's claim waits for A's answer (up to
    cluster_claim_timeout), longer than connect_timeout (2 s here). The
    client gets a CONNACK: 0x88 Server unavailable [MQTT-5.0 3.2.2.2] once
    its claim has not answered within connect_timeout of the CONNECT, and
    it may connect again. Before, connect_timeout counted from the accept
    for a connection waiting for its claim too, and closed it without a
    CONNACK (test_blackbox.py::test_session_moves_under_traffic under
    heavy load: "timed out waiting for CONNACK")."""
    c = cluster_factory(extra_env={"STARLING_CONNECT_TIMEOUT": "2",
                                   "STARLING_CLUSTER_CLAIM_TIMEOUT": "8000"})
    c.start()
    c.wait_healthy()
    a, b, _ = c.nodes
    cid = uid("slow")
    s = PahoClient(a, cid, 5, properties=session_props())
    s.connect()
    assert s.subscribe(uid("slow/t") + "/#", qos=1) == [1]
    s.stop()
    faults.pause(a)
    try:
        s2 = PahoClient(b, cid, 5, clean=False, properties=session_props())
        t0 = time.monotonic()
        ack = s2.connect(timeout=WAIT, expect_rc=None)
        took = time.monotonic() - t0
        assert ack["rc"] == 0x88, (ack, took)
        s2.stop()
    finally:
        faults.resume(a)
    faults.wait_healthy(c)
    # A answers again: the client gets its session back on B
    s3 = PahoClient(b, cid, 5, clean=False, properties=session_props())
    s3.connect(timeout=WAIT)
    assert s3.session_present
    s3.disconnect()


def overtaken_claim(cluster_factory, name, clean, qos=1):
    """A persistent QoS 1 session on node A holds m0..m9 offline; A is
    stopped (SIGSTOP) and the client comes back on B: B's claim waits for
    A's answer past connect_timeout, so the client gets 0x88 and connects
    to B again at once (clean start `clean`), a second claim; then A runs
    again and answers the first claim, which finds itself overtaken.
    Returns (topic, sent, publisher on the third node, the second client
    with its CONNACK read, the cluster as `.cluster` and the client id as
    `.cid`). `qos`: of the subscription and the publishes. connect_timeout
    is 4 s: the second claim must be answered within it of its CONNECT,
    and with 2 s a 2 s stall of B's cluster thread under the whole make
    test refused it once (0x88)."""
    c = cluster_factory(extra_env={"STARLING_CONNECT_TIMEOUT": "4",
                                   "STARLING_CLUSTER_CLAIM_TIMEOUT": "8000"})
    c.start()
    c.wait_healthy()
    a, b, cn = c.nodes
    cid, topic = uid(name), uid(name + "/t")
    props = {"session_expiry_interval": 600}
    s = mqttraw.connected(a, cid, 5, properties=props)
    assert s.subscribe((f"{topic}/#", mqttraw.sub_options(qos=qos))).reason_codes == [qos]
    s.disconnect()
    p = mqttraw.connected(cn, uid(name + "p"), 5)
    sent = [f"m{k}".encode() for k in range(10)]
    for m in sent:
        pid = p.publish(f"{topic}/x", m, qos=qos)
        if qos == 2:
            assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == pid
            p.pubrel(pid)
            assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == pid
        else:
            assert p.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == pid
    faults.pause(a)
    try:
        s2 = mqttraw.Client(b)
        ack = s2.connect(cid, clean=False, properties=props, timeout=WAIT)
        assert ack.reason_code == 0x88, ack
        s2.close()
        s3 = mqttraw.Client(b)
        s3.connect(cid, clean=clean, properties=props, expect=False)
    finally:
        faults.resume(a)
    s3.connack = s3.expect(mqttraw.CONNACK, timeout=WAIT)
    s3.cluster, s3.cid = c, cid
    return topic, sent, p, s3


def test_a_claim_overtaken_by_its_clients_next_connect_hands_on_what_it_got(cluster_factory):
    """overtaken_claim with the session resumed: the client must get every
    message in the session it ends up with. Before, the overtaken claim
    ended its session with them (test_blackbox.py under heavy load: 17,339
    of 28,381 missing)."""
    _, sent, p, s3 = overtaken_claim(cluster_factory, "over", clean=False)
    assert s3.connack.reason_code == 0 and s3.connack.session_present, s3.connack
    got = [s3.recv_publish(timeout=WAIT).payload for _ in sent]
    assert sorted(got) == sorted(sent), got
    s3.disconnect()
    p.disconnect()


def test_an_overtaken_claims_messages_completed_on_its_node_are_not_given_again_after_a_kill(
        cluster_factory):
    """overtaken_claim at QoS 2 with the session resumed: the overtaken
    claim's copy is folded into B's new session, and the client completes
    m0..m9 there (PUBREC, PUBREL, PUBCOMP). B is SIGKILLed once that is on
    its disk and started again; the client, back on B, must get none of
    them again. Before, the copy ended beside the new session without
    deleting its rows (they have the same keys), and they loaded into the
    session at B's start: every one of them came again, a QoS 2 duplicate
    (issue 10: the kill test and the long chaos run of seed 1946164343,
    docs/cluster.md "QoS 2 messages of a copy folded on its node")."""
    topic, sent, p, s3 = overtaken_claim(cluster_factory, "overk", clean=False, qos=2)
    assert s3.connack.reason_code == 0 and s3.connack.session_present, s3.connack
    c = s3.cluster
    _, b, _ = c.nodes
    # each completed: PUBREC, PUBREL, PUBCOMP (recv_publish)
    got = [s3.recv_publish(timeout=WAIT).payload for _ in sent]
    assert sorted(got) == sorted(sent), got
    # a QoS 1 publish on B: its PUBACK waits for its store batch, committed
    # after every earlier one (the PUBCOMPs' deletes among them)
    s3.publish(uid("overk/sync"), b"sync", qos=1, packet_id=1)
    assert s3.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == 1
    s3.close()
    faults.kill(b)
    b.start()
    faults.wait_healthy(c)
    for _ in range(3):
        # connect_timeout is 4 s here: a claim that a leader's stall under
        # load (make test) holds longer gets 0x88, and the client connects again
        s4 = mqttraw.Client(b)
        ack = s4.connect(s3.cid, clean=False, properties={"session_expiry_interval": 600},
                         timeout=30)
        if ack.reason_code != 0x88:
            break
        s4.close()
    assert ack.reason_code == 0 and ack.session_present, ack
    mark = b"marker"
    pid = p.publish(f"{topic}/mark", mark, qos=2)
    assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == pid
    p.pubrel(pid)
    assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == pid
    again = []
    while True:
        m = s4.recv(WAIT)
        if m.type == mqttraw.PUBREL:  # an exchange resumed past PUBREC: not a new delivery
            s4.pubcomp(m.packet_id)
            continue
        assert m.type == mqttraw.PUBLISH, m
        s4.pending.insert(0, m)
        m = s4.recv_publish(timeout=WAIT)
        if m.payload == mark:
            break
        again.append(m.payload)
    assert again == [], f"{len(again)} QoS 2 message(s) the client had completed came again " \
        f"after {b.name}'s restart: {again}"
    s4.disconnect()
    p.disconnect()


def test_a_claim_overtaken_by_a_clean_start_hands_on_nothing(cluster_factory):
    """overtaken_claim with a clean start: the session the first claim
    brought is discarded [MQTT-3.1.2-4], so the new session gets none of
    its messages (the first thing it receives is a marker published to
    its own new subscription)."""
    _, _, p, s3 = overtaken_claim(cluster_factory, "overc", clean=True)
    assert s3.connack.reason_code == 0 and not s3.connack.session_present, s3.connack
    mark = uid("overc/mark")
    assert s3.subscribe((mark, mqttraw.sub_options(qos=1))).reason_codes == [1]
    pid = p.publish(mark, b"marker", qos=1)
    assert p.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == pid
    first = s3.recv_publish(timeout=WAIT)
    assert (first.topic, first.payload) == (mark, b"marker"), first
    s3.disconnect()
    p.disconnect()


def test_a_request_that_meets_an_older_claim_in_progress_waits_for_its_session(cluster_factory):
    """A persistent QoS 1 session S on A holds m0..m4. A's Raft port is cut
    (its channel goes on: it reports, answers and forwards, but applies no
    new entry), so every wait for the tables on every member holds (as
    long as the cut lasts here, faults.LEADERLESS_WAITED; 3 s without it,
    once A knows no leader). S's
    client connects to B: B's claim gets A's state (S moves to B whole),
    and waits for its routes to be in effect everywhere (A). d0..d4 are
    published on B: B's session takes them. The client gives up on B and
    connects to C: C's claim, later than B's, asks B for the session while
    B's claim still holds it (out of the table until that claim ends).
    e0..e4 are published on B, the cut heals, and a marker is published
    once the client is answered. The client must get m0..m4, d0..d4,
    e0..e4 and the marker, in this order, each once.

    Before, B answered "no session to hand over" (docs/cluster.md, item 109
    of the afternoon's chaos runs): C resumed from the record, got e0..e4
    directly, and what B's claim held came only as late messages once
    that claim had ended overtaken, 6 s later, after the marker (or after
    B's restart when B was SIGKILLed meanwhile)."""
    reason = faults.nft_available()
    if reason:
        pytest.skip(reason)
    c = cluster_factory(extra_env={"STARLING_CLUSTER_CLAIM_TIMEOUT": "8000",
                                   **faults.LEADERLESS_WAITED})
    c.start()
    c.wait_healthy()
    a, b, cn = c.nodes
    part = faults.Partition(c)
    try:
        cid, topic = uid("held"), uid("held/t")
        m = [f"m{k}".encode() for k in range(5)]
        witness, pub = offline_witnessed(a, b, cid, topic, m)
        witness.disconnect()
        part.cut([a], [b, cn], raft_only=True)
        faults.wait_until(lambda: faults.leader(c, [b, cn]), WAIT, "a leader among b and c")
        props = {"session_expiry_interval": 600}
        s1 = mqttraw.Client(b)
        s1.connect(cid, clean=False, properties=props, expect=False)
        faults.wait_until(lambda: f"the session of '{cid}' moved here" in b.logtext(), WAIT,
                          f"{b.name} getting the state of {cid} from {a.name}")
        # published once the session joined B's subscriptions: before, a
        # message published on B reaches it only through A's copy, as a late
        # message, after the marker (a whole make test: d0 came last once)
        faults.wait_until(lambda: re.search(rf"the session of '{re.escape(cid)}' \(claim \d+\) "
                                            r"joined this node's subscriptions", b.logtext()),
                          WAIT, f"{cid}'s session joining {b.name}'s subscriptions")
        d = [f"d{k}".encode() for k in range(5)]
        for x in d:
            pub.publish(topic, x, qos=1)
        s2 = mqttraw.Client(cn)
        s2.connect(cid, clean=False, properties=props, expect=False)
        held = re.compile(f"for '{cid}' \\(claim \\d+\\) waits for this node's claim")
        faults.wait_until(
            lambda: held.search(b.logtext()) or
            f"no session '{cid}' to hand over" in cn.logtext(), WAIT,
            f"{b.name} answering (or holding) the request of {cn.name}")
        e = [f"e{k}".encode() for k in range(5)]
        for x in e:
            pub.publish(topic, x, qos=1)
        part.heal()
        ack = s2.expect(mqttraw.CONNACK, timeout=WAIT)
        assert ack.reason_code == 0 and ack.session_present, ack
        pub.publish(topic, b"marker", qos=1)
        got = []
        while not got or got[-1] != b"marker":
            got.append(s2.recv_publish(timeout=WAIT).payload)
        assert got == m + d + e + [b"marker"], got
        s2.disconnect()
        s1.close()
        pub.disconnect()
    finally:
        part.heal()


def restored_held_message(cluster_factory, name, extra_env=None):
    """A persistent QoS 2 subscriber on A completes m0 and gets m1's
    PUBLISH, which it holds unanswered (a client that delivers at PUBLISH
    has delivered m1 and keeps its packet id until the PUBREL [MQTT-5.0
    4.3.3]); then A is SIGKILLed. Returns the cluster, the client's id and
    CONNECT properties, m1's PUBLISH as it came, and publish(payload),
    which completes a QoS 2 publish on the third node."""
    c = cluster_factory(extra_env=extra_env)
    c.start()
    c.wait_healthy()
    a, b, cn = c.nodes
    cid, topic = uid(name), uid(f"{name}/t")
    props = {"session_expiry_interval": 600}
    s = mqttraw.connected(a, cid, 5, properties=props)
    assert s.subscribe((f"{topic}/#", mqttraw.sub_options(qos=2))).reason_codes == [2]
    p = mqttraw.connected(cn, uid(f"{name}p"), 5)

    def publish(payload):
        pid = p.publish(f"{topic}/x", payload, qos=2)
        assert p.expect(mqttraw.PUBREC, timeout=WAIT).packet_id == pid
        p.pubrel(pid)
        assert p.expect(mqttraw.PUBCOMP, timeout=WAIT).packet_id == pid

    publish(b"m0")
    m0 = s.recv_publish(timeout=WAIT)  # completed: PUBREC, PUBREL, PUBCOMP
    assert m0.payload == b"m0", m0
    publish(b"m1")
    m1 = s.expect(mqttraw.PUBLISH, timeout=WAIT)  # held: no PUBREC
    assert m1.payload == b"m1" and not m1.dup and m1.packet_id != m0.packet_id, m1
    # a QoS 1 publish on A: its PUBACK waits for its store batch, committed
    # after every earlier one (m0's PUBCOMP, m1 in the session's queue)
    s.publish(uid(f"{name}/sync"), b"sync", qos=1, packet_id=1)
    assert s.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == 1
    faults.kill(a)
    s.close()
    return c, cid, props, m1, publish


def same_message_then_next(s2, m1, publish, wait):
    """m1 comes to s2 again with the packet id it came with, DUP 1, and the
    next message after it with a new one."""
    again = s2.recv_publish(timeout=wait)
    assert (again.payload, again.packet_id, again.dup) == (b"m1", m1.packet_id, True), again
    publish(b"m2")
    m2 = s2.recv_publish(timeout=WAIT)
    assert m2.payload == b"m2" and m2.packet_id not in (m1.packet_id, 0), m2
    s2.disconnect()


def test_a_restored_message_moved_in_a_state_keeps_its_packet_id(cluster_factory):
    """restored_held_message; A is started again: m1 comes back from A's
    store with no record that it was sent. The client comes back on B,
    which asks A for the session: m1 must come to it with the packet id A
    sent it with, DUP 1, so that such a client knows it for the same
    message, as it would from A itself after the restart. Before, A's state
    carried m1 without a packet id and B numbered it anew (packet id 1,
    m0's)."""
    c, cid, props, m1, publish = restored_held_message(cluster_factory, "rpid")
    a, b, _ = c.nodes
    a.start()
    faults.wait_healthy(c)
    # a claim that a stall under load holds past connect_timeout gets 0x88,
    # and the client connects again
    s2 = resumed_elsewhere(b, cid, props, WAIT, tries=3)
    same_message_then_next(s2, m1, publish, WAIT)


def test_a_restored_message_sent_as_a_late_message_keeps_its_packet_id(cluster_factory):
    """As above, but the client comes back on B while A is down: B resumes
    the session from its record, and A, started again, finds its copy
    claimed and sends what it restored as late messages. m1 must still
    come with the packet id A sent it with, DUP 1: a client that delivers
    QoS 2 at PUBLISH and holds that id takes it for the same message, and
    a new id would make it deliver m1 twice. Before, B sent it with packet
    id 32768, DUP 0.

    A's restored copy then ends, and its log line names the claim it was
    stored under (claim 1), not "claim 0" as it did while it printed the
    claim the copy had made here (none)."""
    c, cid, props, m1, publish = restored_held_message(cluster_factory, "rlate",
                                                       {"STARLING_LOG_LEVEL": "debug"})
    a, b, _ = c.nodes
    s2 = resumed_elsewhere(b, cid, props, WAIT, tries=3)
    a.start()
    same_message_then_next(s2, m1, publish, 60)
    ended = f"'{cid}' (claim 1) ended: every record of its id leaves the store"
    faults.wait_until(lambda: ended in a.logtext(), 60, f"a's restored copy of {cid} ending")
    assert f"'{cid}' (claim 0) ended" not in a.logtext()
