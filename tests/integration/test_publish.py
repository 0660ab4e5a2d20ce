"""PUBLISH flows: QoS 0/1/2 in both directions, downgrade, packet ids,
duplicates, flow control, offline queues, redelivery, ordering."""


import pytest

import mqttraw as M
from helpers import paho, raw, raw_marker, uid

NO_SUBSCRIBERS_OK = (0x00, 0x10)


# ------------------------------------------------------------ client -> broker

@pytest.mark.parametrize("version", [3, 4, 5])
def test_MQTT_311_3_3_4_1_qos1_puback(broker, version):
    """[MQTT-3.1.1 3.3.4-1, MQTT-5.0 3.3.4-1] QoS 1 PUBLISH is answered with PUBACK carrying its
    packet identifier (5.0: reason 0x00, or 0x10 with no subscribers)."""
    b = broker()
    c = raw(b, version=version)
    c.publish("q1/nosub", b"x", qos=1, packet_id=0x1234)
    a = c.expect(M.PUBACK)
    assert a.packet_id == 0x1234
    if version == 5:
        assert a.reason_code in NO_SUBSCRIBERS_OK
    else:
        assert a.raw == b"\x40\x02\x12\x34"


def test_MQTT_50_3_4_2_1_puback_success_with_subscriber_v5(broker):
    b = broker()
    s = raw(b)
    s.subscribe(("q1/sub", 1))
    c = raw(b)
    c.publish("q1/sub", b"x", qos=1, packet_id=7)
    a = c.expect(M.PUBACK)
    assert (a.packet_id, a.reason_code) == (7, 0x00)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_4_3_3_qos2_flow_from_client(broker, version):
    """QoS 2 from a client: PUBREC(id), PUBREL(id) -> PUBCOMP(id); the
    subscriber gets the message once."""
    b = broker()
    s = raw(b, version=version)
    s.subscribe(("q2/in", 2))
    c = raw(b, version=version)
    c.publish("q2/in", b"exactly once", qos=2, packet_id=42)
    rec = c.expect(M.PUBREC)
    assert rec.packet_id == 42 and rec.reason_code in NO_SUBSCRIBERS_OK
    assert rec.raw[0] == 0x50
    c.pubrel(42)
    comp = c.expect(M.PUBCOMP)
    assert comp.packet_id == 42 and comp.reason_code == 0
    assert comp.raw[0] == 0x70
    p = s.recv_publish()
    assert (p.topic, p.payload, p.qos) == ("q2/in", b"exactly once", 2)


def test_MQTT_50_4_3_3_qos2_no_subscribers_v5(broker):
    b = broker()
    c = raw(b)
    c.publish("q2/nobody", b"x", qos=2, packet_id=3)
    assert c.expect(M.PUBREC).reason_code in NO_SUBSCRIBERS_OK
    c.pubrel(3)
    comp = c.expect(M.PUBCOMP)
    assert (comp.packet_id, comp.reason_code) == (3, 0)


def test_MQTT_311_4_3_3_qos2_duplicate_before_pubrel_delivered_once(broker):
    """A QoS 2 PUBLISH resent with DUP before PUBREL (method B) is
    acknowledged again but delivered onward only once."""
    b = broker()
    s = raw(b)
    s.subscribe([("dup/t", 2), ("dup/marker", 0)])
    c = raw(b)
    c.publish("dup/t", b"once", qos=2, packet_id=9)
    assert c.expect(M.PUBREC).packet_id == 9
    c.publish("dup/t", b"once", qos=2, packet_id=9, dup=True)
    assert c.expect(M.PUBREC).packet_id == 9
    c.pubrel(9)
    assert c.expect(M.PUBCOMP).packet_id == 9
    p = s.recv_publish()
    assert p.payload == b"once"
    raw_marker(s, c, "dup/marker")


@pytest.mark.starling_only  # mosquitto 2.0.11 answers an unknown PUBREL with PUBCOMP 0x00
def test_MQTT_50_3_7_2_pubrel_unknown_id_pubcomp_0x92(broker):
    """5.0: PUBREL for a packet identifier the server does not know is
    answered with PUBCOMP 0x92 packet identifier not found."""
    b = broker()
    c = raw(b)
    c.pubrel(77)
    comp = c.expect(M.PUBCOMP)
    assert (comp.packet_id, comp.reason_code) == (77, 0x92)


def test_MQTT_311_3_6_1_pubrel_unknown_id_pubcomp_311(broker):
    b = broker()
    c = raw(b, version=4)
    c.pubrel(77)
    comp = c.expect(M.PUBCOMP)
    assert comp.raw == b"\x70\x02\x00\x4d"


@pytest.mark.starling_only  # mosquitto 2.0.11 answers PUBREC 0x97 (quota exceeded) and stays connected
def test_MQTT_50_3_3_4_7_receive_maximum_exceeded(broker):
    """[MQTT-5.0 3.3.4-7] more unacknowledged QoS 2 PUBLISHes than the server's
    Receive Maximum (2): DISCONNECT 0x93 receive maximum exceeded."""
    b = broker(receive_maximum=2, max_inflight_messages=2)
    c = raw(b)
    assert c.connack.properties.get("receive_maximum") == 2
    for pid in (1, 2):
        c.publish("rm/t", b"x", qos=2, packet_id=pid)
        assert c.expect(M.PUBREC).packet_id == pid
    c.publish("rm/t", b"x", qos=2, packet_id=3)
    c.expect_disconnect(0x93)


@pytest.mark.starling_only  # mosquitto 2.0.11 sends DISCONNECT 0x82 instead of 0x90
def test_MQTT_50_3_3_2_2_publish_wildcard_topic_v5(broker):
    """[MQTT-5.0 3.3.2-2] the topic name of a PUBLISH must not contain wildcards:
    5.0 DISCONNECT 0x90 topic name invalid."""
    b = broker()
    c = raw(b)
    c.publish("a/+/b", b"x")
    c.expect_disconnect(0x90)


@pytest.mark.parametrize("topic", ["a/#", "a/+", "+"])
def test_MQTT_311_3_3_2_2_publish_wildcard_topic_311(broker, topic):
    b = broker()
    c = raw(b, version=4)
    c.publish(topic, b"x")
    c.expect_closed_without_disconnect()


# ------------------------------------------------------------ broker -> client

def test_MQTT_311_4_3_1_qos0_delivery_paho(broker):
    b = broker()
    s = paho(b, version=4)
    assert s.subscribe("q0/t", 0) == [0]
    p = paho(b, version=4)
    p.publish("q0/t", b"hello q0")
    m = s.get()
    assert (m.topic, m.payload, m.qos, m.retain) == ("q0/t", b"hello q0", 0, False)


def test_MQTT_311_4_3_2_qos1_to_subscriber(broker):
    """QoS 1 delivery: PUBLISH with a non-zero packet identifier, DUP 0;
    the subscriber's PUBACK completes it."""
    b = broker()
    s = raw(b)
    s.subscribe(("q1/out", 1))
    c = raw(b)
    c.publish("q1/out", b"one", qos=1)
    c.expect(M.PUBACK)
    p = s.recv_publish(ack=False)
    assert p.qos == 1 and p.dup is False and p.retain is False and p.packet_id != 0
    s.puback(p.packet_id)
    s.pingreq()
    assert s.recv().type == M.PINGRESP


def test_MQTT_311_4_3_3_qos2_to_subscriber(broker):
    """QoS 2 delivery: PUBLISH -> PUBREC -> PUBREL (flags 0x2, same id) -> PUBCOMP."""
    b = broker()
    s = raw(b, version=4)
    s.subscribe(("q2/out", 2))
    c = raw(b, version=4)
    c.publish("q2/out", b"two", qos=2, packet_id=5)
    c.expect(M.PUBREC)
    c.pubrel(5)
    c.expect(M.PUBCOMP)
    p = s.expect(M.PUBLISH)
    assert p.qos == 2 and p.packet_id != 0 and p.payload == b"two"
    s.pubrec(p.packet_id)
    rel = s.expect(M.PUBREL)
    assert rel.raw == b"\x62\x02" + p.packet_id.to_bytes(2, "big")
    s.pubcomp(p.packet_id)
    s.pingreq()
    assert s.recv().type == M.PINGRESP


@pytest.mark.parametrize("pub_qos,sub_qos", [(2, 1), (2, 0), (1, 0), (0, 2), (1, 2)])
def test_MQTT_50_3_8_4_8_qos_is_min_of_publish_and_subscription(broker, pub_qos, sub_qos):
    """[MQTT-3.1.1 3.8.4-6, MQTT-5.0 3.8.4-8] delivery QoS = min(published QoS, granted QoS)."""
    b = broker()
    s = raw(b)
    s.subscribe(("down/t", sub_qos))
    c = paho(b)
    c.publish("down/t", b"d", qos=pub_qos)
    p = s.recv_publish()
    assert p.qos == min(pub_qos, sub_qos)
    assert (p.packet_id is None) == (p.qos == 0)


def test_MQTT_50_2_2_1_4_distinct_packet_ids_in_flight(broker):
    """[MQTT-3.1.1 2.3.1-4, MQTT-5.0 2.2.1-4] concurrent unacknowledged QoS 1 PUBLISHes to a
    client use distinct non-zero packet identifiers."""
    b = broker()
    s = raw(b)
    s.subscribe(("ids/t", 1))
    c = raw(b)
    for i in range(5):
        c.publish("ids/t", b"%d" % i, qos=1)
        c.expect(M.PUBACK)
    got = [s.recv_publish(ack=False) for _ in range(5)]
    ids = [p.packet_id for p in got]
    assert 0 not in ids and len(set(ids)) == 5
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3", b"4"]
    for p in got:
        s.puback(p.packet_id)


def _receive_ids(s, n):
    """Receive n PUBLISHes on s, completing each; returns their packet ids."""
    return [s.recv_publish().packet_id for _ in range(n)]


def _publish_all(c, topic, qoses):
    """Publish one message per QoS of `qoses` on c, each completed."""
    for i, qos in enumerate(qoses):
        pid = c.publish(topic, b"%d" % i, qos=qos)
        if qos == 1:
            assert c.expect(M.PUBACK).packet_id == pid
        else:
            assert c.expect(M.PUBREC).packet_id == pid
            c.pubrel(pid)
            assert c.expect(M.PUBCOMP).packet_id == pid


@pytest.mark.parametrize("version", [4, 5])
def test_new_session_packet_ids_start_at_1(broker, version):
    """A new session's first packet identifier is 1, then 2, 3, ... (QoS 1
    and 2 share the sequence), as clients, packet captures and other
    brokers' test suites expect; a session started again with clean start
    begins at 1 again."""
    b = broker()
    cid = uid("pid1")
    s = raw(b, cid, version)
    s.subscribe(("pid1/t", 2))
    c = raw(b, uid("pub"), version)
    _publish_all(c, "pid1/t", (1, 2, 1))
    assert _receive_ids(s, 3) == [1, 2, 3]
    s.disconnect()
    s = raw(b, cid, version, clean=True)
    s.subscribe(("pid1/t", 2))
    _publish_all(c, "pid1/t", (2,))
    assert _receive_ids(s, 1) == [1]
    s.disconnect()
    c.disconnect()


def test_MQTT_50_4_9_0_client_receive_maximum_honoured(broker):
    """[MQTT-5.0 3.3.4-9/4.9.0-2] the server sends no more unacknowledged QoS 1
    PUBLISHes than the client's Receive Maximum (2); more flow as it acks."""
    b = broker()
    s = raw(b, properties={"receive_maximum": 2})
    s.subscribe(("rmout/t", 1))
    c = raw(b)
    for i in range(5):
        c.publish("rmout/t", b"%d" % i, qos=1)
        c.expect(M.PUBACK)
    first = [s.expect(M.PUBLISH), s.expect(M.PUBLISH)]
    assert [p.payload for p in first] == [b"0", b"1"]
    # Everything is routed (all PUBACKs seen). A PINGREQ round trip plus a
    # short bounded read shows no third PUBLISH while two are unacknowledged.
    s.pingreq()
    extra = []
    while True:
        p = s.recv()
        if p.type == M.PINGRESP:
            break
        extra.append(p)
    try:
        extra.append(s.recv(timeout=0.3))
    except M.Timeout:
        pass
    assert extra == [], f"more than Receive Maximum in flight: {extra}"
    s.puback(first[0].packet_id)
    p3 = s.expect(M.PUBLISH)
    assert p3.payload == b"2"
    s.puback(first[1].packet_id)
    s.puback(p3.packet_id)
    rest = [s.recv_publish() for _ in range(2)]
    assert [p.payload for p in rest] == [b"3", b"4"]


# ------------------------------------------------------------ offline queue, redelivery

def _persistent(b, cid, version=5, **kw):
    if version == 5:
        kw.setdefault("properties", {"session_expiry_interval": 300})
    return raw(b, cid, version=version, clean=False, **kw)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_5_offline_messages_queued_in_order(broker, version):
    """Messages for an offline persistent session are delivered on resume,
    in publish order."""
    b = broker()
    cid = uid()
    s = _persistent(b, cid, version)
    s.subscribe(("offq/t", 1))
    s.disconnect()
    c = raw(b, version=version)
    for i in range(10):
        c.publish("offq/t", b"m%d" % i, qos=1)
        c.expect(M.PUBACK)
    s = _persistent(b, cid, version)
    assert s.connack.session_present
    got = [s.recv_publish().payload for _ in range(10)]
    assert got == [b"m%d" % i for i in range(10)]


def test_offline_queue_bounded_drop_new(broker):
    """max_queued_messages 3 (drop_new): of 6 queued messages the first 3 are
    kept (mosquitto drops new ones too)."""
    b = broker(max_queued_messages=3, queue_full_policy="drop_new")
    cid = uid()
    s = _persistent(b, cid)
    s.subscribe([("qb/t", 1), ("qb/marker", 0)])
    s.disconnect()
    c = raw(b)
    for i in range(6):
        c.publish("qb/t", b"m%d" % i, qos=1)
        c.expect(M.PUBACK)
    s = _persistent(b, cid)
    got = [s.recv_publish().payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    raw_marker(s, c, "qb/marker")


@pytest.mark.starling_only  # mosquitto has no drop_oldest policy
def test_offline_queue_bounded_drop_oldest(broker):
    """max_queued_messages 3 with drop_oldest: the last 3 are kept."""
    b = broker(max_queued_messages=3, queue_full_policy="drop_oldest")
    cid = uid()
    s = _persistent(b, cid)
    s.subscribe([("qo/t", 1), ("qo/marker", 0)])
    s.disconnect()
    c = raw(b)
    for i in range(6):
        c.publish("qo/t", b"m%d" % i, qos=1)
        c.expect(M.PUBACK)
    s = _persistent(b, cid)
    got = [s.recv_publish().payload for _ in range(3)]
    assert got == [b"m3", b"m4", b"m5"]
    raw_marker(s, c, "qo/marker")


def test_queue_qos0_messages_queues_offline_qos0(broker):
    """queue_qos0_messages true: QoS 0 messages are queued for an offline
    persistent session too."""
    b = broker(queue_qos0_messages=True)
    cid = uid()
    s = _persistent(b, cid)
    s.subscribe(("q0q/t", 0))
    s.disconnect()
    c = raw(b)
    for i in range(3):
        c.publish("q0q/t", b"%d" % i, qos=0)
    c.pingreq()
    c.expect(M.PINGRESP)
    s = _persistent(b, cid)
    assert [s.recv_publish().payload for _ in range(3)] == [b"0", b"1", b"2"]


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_50_3_2_2_11_publish_above_maximum_qos(broker, version):
    """[MQTT-5.0 3.2.2-11] with max_qos 1 a QoS 2 PUBLISH is refused: 5.0
    DISCONNECT 0x9B QoS not supported, 3.1.1 close."""
    b = broker(max_qos=1)
    c = raw(b, version=version)
    c.publish("maxq/t", b"x", qos=2)
    if version == 5:
        c.expect_disconnect(0x9B)
    else:
        c.expect_closed_without_disconnect()


def test_MQTT_311_4_3_1_qos0_not_queued_offline_by_default(broker):
    """QoS 0 messages are not queued for an offline session by default."""
    b = broker()
    cid = uid()
    s = _persistent(b, cid)
    s.subscribe([("q0off/t", 0), ("q0off/marker", 0)])
    s.disconnect()
    c = raw(b)
    c.publish("q0off/t", b"dropped", qos=0)
    c.pingreq()
    c.expect(M.PINGRESP)
    s = _persistent(b, cid)
    raw_marker(s, c, "q0off/marker")


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [1, 2])
def test_MQTT_311_4_4_0_1_unacked_redelivered_with_dup(broker, version, qos):
    """[MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1]
    on resuming a session, unacknowledged QoS 1/2 PUBLISHes
    are resent with DUP 1 and the same packet identifier."""
    b = broker()
    cid = uid()
    s = _persistent(b, cid, version)
    s.subscribe(("redeliver/t", qos))
    c = raw(b, version=version)
    c.publish("redeliver/t", b"unacked", qos=qos, packet_id=1)
    if qos == 1:
        c.expect(M.PUBACK)
    else:
        c.expect(M.PUBREC)
        c.pubrel(1)
        c.expect(M.PUBCOMP)
    first = s.expect(M.PUBLISH)
    assert first.dup is False and first.qos == qos
    s.abort()
    s = _persistent(b, cid, version)
    assert s.connack.session_present
    again = s.expect(M.PUBLISH)
    assert again.dup is True
    assert (again.packet_id, again.qos, again.topic, again.payload) == \
        (first.packet_id, qos, "redeliver/t", b"unacked")
    if qos == 1:
        s.puback(again.packet_id)
    else:
        s.pubrec(again.packet_id)
        assert s.expect(M.PUBREL).packet_id == again.packet_id
        s.pubcomp(again.packet_id)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_4_4_0_1_pubrel_resent_on_resume(broker, version):
    """[MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1]
    a QoS 2 message in the PUBREC-received state: on resume
    the server resends PUBREL (not the PUBLISH)."""
    b = broker()
    cid = uid()
    s = _persistent(b, cid, version)
    s.subscribe(("relresume/t", 2))
    c = raw(b, version=version)
    c.publish("relresume/t", b"q2", qos=2, packet_id=1)
    c.expect(M.PUBREC)
    c.pubrel(1)
    c.expect(M.PUBCOMP)
    p = s.expect(M.PUBLISH)
    s.pubrec(p.packet_id)
    assert s.expect(M.PUBREL).packet_id == p.packet_id
    s.abort()
    s = _persistent(b, cid, version)
    rel = s.expect(M.PUBREL)
    assert rel.packet_id == p.packet_id and rel.flags == 0x2
    s.pubcomp(p.packet_id)
    s.subscribe(("relresume/marker", 0))
    raw_marker(s, c, "relresume/marker")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_MQTT_311_4_6_0_6_order_preserved_per_publisher(broker, qos):
    """[MQTT-3.1.1 4.6.0-6, MQTT-5.0 4.6.0-5] messages from one publisher on one topic arrive in the
    order they were published."""
    b = broker()
    s = paho(b)
    s.subscribe("order/t", qos)
    p = paho(b)
    n = 50
    for i in range(n):
        p.c.publish("order/t", b"%03d" % i, qos)
    got = [s.get().payload for _ in range(n)]
    assert got == [b"%03d" % i for i in range(n)]


def test_MQTT_311_4_6_0_order_across_topics_from_one_publisher(broker):
    """One publisher, two topics, one wildcard subscriber: QoS 1 messages
    arrive in publish order."""
    b = broker()
    s = raw(b)
    s.subscribe(("ord2/#", 1))
    c = raw(b)
    for i in range(20):
        c.publish("ord2/%s" % "ab"[i % 2], b"%d" % i, qos=1)
    for i in range(20):
        c.expect(M.PUBACK)
    got = [s.recv_publish() for _ in range(20)]
    assert [p.payload for p in got] == [b"%d" % i for i in range(20)]
