"""The session registry across nodes (docs/cluster.md "Takeover"): a client
id is owned by one node of the cluster; a CONNECT on another node kicks the
old connection (5.0 DISCONNECT 0x8E) and, with clean start 0, moves the
session there: session present 1, queued messages in order, none lost,
none twice. Without a leader a CONNECT is refused after
cluster_claim_timeout (5.0 CONNACK 0x88, 3.1.1 return code 3)."""

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttraw
from helpers import PahoClient, uid

WAIT = 10


def expiry(seconds):
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p


def test_takeover_across_nodes_moves_the_session(cluster):
    a, b, c = cluster.nodes
    cid = uid("mover")
    topic = uid("tk/t")
    x = PahoClient(a, cid, 5, clean=True, properties=expiry(300))
    x.connect()
    assert x.subscribe(topic, qos=1) == [1]
    assert x.subscribe(topic + "/two", qos=2) == [2]
    x.disconnect()
    # queued on node a for the offline session, published on node c; the
    # client moves at once, with forwards still on their way to node a:
    # those follow the session to node b (late messages, docs/cluster.md)
    pub = PahoClient(c, uid("pub"), 5)
    pub.connect()
    sent = [f"q{i}".encode() for i in range(40)]
    for i, p in enumerate(sent):
        pub.publish(topic if i % 2 == 0 else topic + "/two", p, qos=1)
    pa = PahoClient(a, uid("pub"), 5)
    pa.connect()
    # the same client id resumes on node b
    y = PahoClient(b, cid, 5, clean=False, properties=expiry(300))
    y.connect()
    assert y.session_present
    # the subscriptions moved too, and their routes are in effect on every
    # node by the CONNACK (as by a SUBACK): a publish on node a right after
    # it reaches node b
    pa.publish(topic, b"after", qos=1)
    got = [y.get(WAIT) for _ in range(len(sent) + 1)]
    # none lost and none twice; the queued ones in order ("after" may come
    # before late ones: see the ordering of late messages)
    assert sorted(m.payload for m in got) == sorted(sent + [b"after"])
    assert [m.payload for m in got if m.payload != b"after"] == sent
    assert [m.qos for m in got] == [1] * (len(sent) + 1)
    # and nothing more comes
    pa.publish(topic, b"marker", qos=1)
    assert y.get(WAIT).payload == b"marker"
    y.disconnect()


def test_connect_on_another_node_kicks_with_0x8e(cluster):
    a, b, _ = cluster.nodes
    cid = uid("kick")
    x = mqttraw.connected(a, cid, 5)
    y = PahoClient(b, cid, 5)
    y.connect()
    x.expect_disconnect(0x8E, timeout=WAIT)  # Session taken over
    assert not y.disconnected.is_set()
    # y is alive and owns the id: it gets what is published for it
    topic = uid("k/t")
    assert y.subscribe(topic, qos=1) == [1]
    p = PahoClient(a, uid("p"), 5)
    p.connect()
    p.publish(topic, b"to-y", qos=1)
    assert y.get(WAIT).payload == b"to-y"


def test_simultaneous_connects_exactly_one_survives(cluster):
    a, b, c = cluster.nodes
    for round_ in range(5):
        cid = uid(f"race{round_}")
        clients = [PahoClient(n, cid, 5) for n in (a, b, c)]
        go = threading.Barrier(len(clients))

        def run(cl):
            go.wait()
            cl.connect(expect_rc=None)

        ts = [threading.Thread(target=run, args=(cl,)) for cl in clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT + 5)
        # settle: every client that lost has been told (refused or kicked)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            alive = [cl for cl in clients
                     if cl.connack and cl.connack["rc"] == 0 and not cl.disconnected.is_set()]
            if len(alive) == 1:
                break
            time.sleep(0.05)
        assert len(alive) == 1, [(cl.connack, cl.disconnect_rc) for cl in clients]
        for cl in clients:
            cl.stop()


def test_connect_without_a_leader_is_refused(cluster_factory):
    c = cluster_factory(extra_env={"STARLING_CLUSTER_CLAIM_TIMEOUT": "1500"})
    c.start()
    c.wait_healthy()
    survivor = c.nodes[0]
    c.nodes[1].stop()
    c.nodes[2].stop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and survivor.health() != 503:
        time.sleep(0.1)
    assert survivor.health() == 503
    t0 = time.monotonic()
    x = PahoClient(survivor, uid("nolead"), 5)
    x.connect(timeout=WAIT, expect_rc=0x88)  # Server unavailable
    assert time.monotonic() - t0 >= 1.0  # after waiting for a quorum
    x.stop()
    y = PahoClient(survivor, uid("nolead311"), 4)
    y.connect(timeout=WAIT, expect_rc=3)  # 3.1.1: server unavailable
    y.stop()


def test_takeover_across_nodes_keeps_packet_ids(cluster):
    # [MQTT-5.0 4.4.0-1] a resumed session resends what was unacknowledged
    # (and the PUBREL of a QoS 2 message past PUBREC) with the original
    # packet identifiers, also when the session moved to another node
    a, b, c = cluster.nodes
    cid = uid("pids")
    topic = uid("tk/p")
    x = mqttraw.connected(a, cid, 5, clean=True,
                          properties={"session_expiry_interval": 300})
    x.subscribe((topic, mqttraw.sub_options(qos=2)))
    pub = PahoClient(c, uid("pub"), 5)
    pub.connect()
    # three acknowledged first, so that the packet ids are past 1..3
    for i in range(3):
        pub.publish(topic, f"done{i}".encode(), qos=1)
        assert x.recv_publish(timeout=WAIT).payload == f"done{i}".encode()
    pub.publish(topic, b"released", qos=2)
    p2 = x.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert (p2.payload, p2.qos) == (b"released", 2)
    x.pubrec(p2.packet_id)
    assert x.expect(mqttraw.PUBREL, timeout=WAIT).packet_id == p2.packet_id
    pub.publish(topic, b"unacked", qos=1)
    p1 = x.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert (p1.payload, p1.qos) == (b"unacked", 1)
    assert p1.packet_id != p2.packet_id and p2.packet_id > 1
    x.close()
    y = mqttraw.connected(b, cid, 5, clean=False,
                          properties={"session_expiry_interval": 300})
    assert y.connack.session_present
    rel = y.expect(mqttraw.PUBREL, timeout=WAIT)
    assert rel.packet_id == p2.packet_id
    again = y.expect(mqttraw.PUBLISH, timeout=WAIT)
    assert (again.payload, again.packet_id) == (b"unacked", p1.packet_id)
    y.pubcomp(p2.packet_id)
    y.puback(p1.packet_id)
    y.disconnect()
