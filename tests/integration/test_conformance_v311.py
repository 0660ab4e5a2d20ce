"""MQTT 3.1.1 conformance, in the spirit of the Paho interoperability suite
(client_test.py) and of a broker's own protocol tests: CONNECT variants,
QoS 1/2 flows both ways (including out-of-order acknowledgements),
redelivery, persistent sessions, retained messages, wills, topic matching,
$-topics, unsubscribe, ordering and limits.

All clients speak MQTT 3.1.1 (protocol level 4) unless a test says
otherwise. Every wait is bounded; absence is proven with a marker message.
"""

import time

import pytest

import mqttraw as M
from helpers import paho, raw, raw_marker, uid

V = 4


def sync(c):
    """PINGREQ/PINGRESP round trip: the broker has handled every packet `c`
    sent before (packets of one connection are handled in order)."""
    c.pingreq()
    c.expect(M.PINGRESP)


def r4(b, cid=None, **kw):
    """A connected raw 3.1.1 client."""
    return raw(b, cid if cid is not None else uid(), version=V, **kw)


def closed_no_connack_accept(c):
    """The connection is closed; anything before the close is a refusing
    CONNACK (never an acceptance)."""
    got = c.expect_closed()
    assert all(p.type == M.CONNACK and p.reason_code != 0 for p in got), got
    return got


# ================================================================ CONNECT

def test_MQTT_311_3_1_2_22_password_without_username_closes(broker):
    """[MQTT-3.1.1 3.1.2-22] if the User Name Flag is 0 the Password Flag must be
    0; a violating CONNECT is closed without being accepted."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(uid(), version=V, password=b"secret"))
    closed_no_connack_accept(c)


@pytest.mark.parametrize("flags", [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20],
                         ids=["will-qos1", "will-qos2", "will-retain"])
def test_MQTT_311_3_1_2_11_will_flag_0_requires_will_qos_and_retain_0(broker, flags):
    """[MQTT-3.1.1 3.1.2-11/13/15] with Will Flag 0, Will QoS and Will Retain must
    be 0; otherwise the CONNECT is malformed and the connection closed."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(uid(), version=V, connect_flags=flags))
    closed_no_connack_accept(c)


def test_MQTT_311_3_1_3_4_client_id_invalid_utf8_closes(broker):
    """[MQTT-3.1.1 3.1.3-4] the client identifier must be valid UTF-8: the
    connection is closed (a CONNACK 0x02 before it is allowed)."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(b"ab\xff\xfe", version=V))
    got = closed_no_connack_accept(c)
    assert all(p.reason_code == 0x02 for p in got), got


def test_MQTT_311_3_1_3_5_long_client_id_accepted(broker):
    """[MQTT-3.1.1 3.1.3-5] servers may accept ids longer than 23 bytes and other
    characters; Starling accepts a 200-character id and serves it."""
    b = broker()
    cid = "x" * 100 + "-ÄÖü-" + "y" * 95
    c = r4(b, cid)
    assert c.connack.body == b"\x00\x00"
    c.subscribe(("long/id", 1))
    c.publish("long/id", b"p", qos=1)
    got = sorted(p.type for p in (c.recv(), c.recv()))
    assert got == [M.PUBLISH, M.PUBACK]


def test_MQTT_311_4_7_1_1_will_topic_wildcard_refused(broker):
    """A will topic is a Topic Name and must not contain wildcards
    [MQTT-3.1.1 4.7.1-1]: the connection is not accepted."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(uid(), version=V, will={"topic": "w/+", "payload": b"x"}))
    closed_no_connack_accept(c)


@pytest.mark.parametrize("topic", ["", "w/+", "w/#"], ids=["empty", "plus", "hash"])
def test_MQTT_311_3_1_4_1_will_topic_not_a_topic_name_closed_without_connack(broker, topic):
    """[MQTT-3.1.1 3.1.4-1] the Server MUST validate that the CONNECT packet
    conforms to section 3.1 and close the Network Connection without
    sending a CONNACK if it does not: a will topic that is empty
    [MQTT-3.1.1 4.7.3-1] or holds wildcards is not a Topic Name."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(uid(), version=V, will={"topic": topic, "payload": b"x"}))
    assert c.expect_closed() == []


def test_MQTT_311_3_1_3_11_username_and_password_accepted(broker):
    """User name (UTF-8) and password (binary) fields are parsed; anonymous
    access is allowed so the CONNECT is accepted."""
    b = broker()
    c = M.Client(b, version=V)
    ack = c.connect(uid(), username="user", password=b"\x00\xffbin")
    assert ack.body == b"\x00\x00"
    c.pingreq()
    assert c.expect(M.PINGRESP).body == b""


def test_MQTT_311_3_2_2_1_connack_exact_bytes(broker):
    """[MQTT-3.1.1 3.2.2-1] CleanSession 1: CONNACK is exactly 20 02 00 00."""
    b = broker()
    c = M.Client(b, version=V)
    ack = c.connect(uid(), clean=True)
    assert ack.raw == b"\x20\x02\x00\x00"


def test_MQTT_311_3_2_2_2_session_present_with_clean_session_0(broker):
    """[MQTT-3.1.1 3.2.2-2/3] CleanSession 0: Session Present 0 the first time,
    1 when a stored session is resumed; CleanSession 1 afterwards gives 0."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    assert c.connack.raw == b"\x20\x02\x00\x00"
    c.disconnect()
    c = r4(b, cid, clean=False)
    assert c.connack.raw == b"\x20\x02\x01\x00"
    c.disconnect()
    c = r4(b, cid, clean=True)
    assert c.connack.raw == b"\x20\x02\x00\x00"
    c.disconnect()
    c = r4(b, cid, clean=False)
    assert c.connack.raw == b"\x20\x02\x00\x00", "clean session did not discard the session"


def test_MQTT_311_3_1_4_2_takeover_then_old_socket_closed_new_works(broker):
    """[MQTT-3.1.1 3.1.4-2] a second connection with the same id closes the first;
    the new one keeps working and the subscriptions of the persistent
    session are still there."""
    b = broker()
    cid = uid()
    a = r4(b, cid, clean=False)
    a.subscribe(("take/t", 1))
    n = r4(b, cid, clean=False)
    assert n.connack.session_present is True
    a.expect_closed_without_disconnect()
    pub = r4(b)
    pub.publish("take/t", b"after takeover", qos=1)
    pub.expect(M.PUBACK)
    p = n.recv_publish()
    assert p.payload == b"after takeover" and p.qos == 1


def test_MQTT_311_3_1_2_24_keepalive_0_not_enforced(broker):
    """Keep Alive 0 turns the mechanism off: an idle connection stays open
    (proved by a PINGREQ answered after a pause longer than 1.5 s)."""
    b = broker()
    c = r4(b, keepalive=0)
    time.sleep(1.6)  # time must pass
    c.pingreq()
    assert c.expect(M.PINGRESP).raw == b"\xd0\x00"


# ================================================================ PUBLISH / QoS

def test_MQTT_311_2_3_1_1_qos1_publish_packet_id_0_closes(broker):
    """[MQTT-3.1.1 2.3.1-1] QoS > 0 PUBLISH must carry a non-zero packet id."""
    b = broker()
    c = r4(b)
    c.send(M.publish("pid0/t", b"x", qos=1, packet_id=0, version=V))
    c.expect_closed_without_disconnect()


def test_MQTT_311_2_3_1_1_subscribe_packet_id_0_closes(broker):
    """[MQTT-3.1.1 2.3.1-1] SUBSCRIBE must carry a non-zero packet id."""
    b = broker()
    c = r4(b)
    c.send(M.subscribe(0, [("a", 0)], version=V))
    c.expect_closed_without_disconnect()


def test_MQTT_311_2_3_1_1_unsubscribe_packet_id_0_closes(broker):
    b = broker()
    c = r4(b)
    c.send(M.unsubscribe(0, ["a"], version=V))
    c.expect_closed_without_disconnect()


def test_MQTT_311_3_3_1_2_qos0_publish_with_dup_closes_or_ignored(broker):
    """[MQTT-3.1.1 3.3.1-2] DUP must be 0 for QoS 0. Servers treat it as malformed
    (close) -- Starling must at least not deliver it as QoS > 0 or crash."""
    b = broker()
    c = r4(b)
    c.send(M.publish("dup0/t", b"x", qos=0, dup=True, version=V))
    try:
        c.pingreq()
        p = c.recv()
        assert p.type == M.PINGRESP
    except (M.ConnectionClosed, OSError):
        pass
    assert b.alive()


def test_MQTT_311_3_6_1_1_pubrel_bad_flags_closes(broker):
    """[MQTT-3.1.1 3.6.1-1] PUBREL fixed header flags must be 0010; 0000 is
    malformed and closes the connection."""
    b = broker()
    c = r4(b)
    c.publish("pr/t", b"x", qos=2, packet_id=7)
    assert c.expect(M.PUBREC).packet_id == 7
    c.send(M.packet(M.PUBREL, 0x0, M.u16(7)))
    c.expect_closed_without_disconnect()


@pytest.mark.starling_only  # mosquitto 2.0.11 ignores reserved flags of these packets
@pytest.mark.parametrize("ptype", [M.PUBACK, M.PUBREC, M.PUBCOMP, M.PINGREQ, M.DISCONNECT])
def test_MQTT_311_2_2_2_2_reserved_flags_nonzero_closes(broker, ptype):
    """[MQTT-3.1.1 2.2.2-2] reserved fixed-header flags that are not as specified
    make the packet malformed: the connection is closed."""
    b = broker()
    c = r4(b)
    body = M.u16(1) if ptype in (M.PUBACK, M.PUBREC, M.PUBCOMP) else b""
    c.send(M.packet(ptype, 0x1, body))
    c.expect_closed_without_disconnect()


def test_MQTT_311_4_3_2_qos1_exact_puback_bytes(broker):
    """[MQTT-3.1.1 4.3.2-2] PUBACK for a QoS 1 PUBLISH carries its packet id:
    exactly 40 02 <id>."""
    b = broker()
    c = r4(b)
    c.publish("q1/t", b"x", qos=1, packet_id=0x1234)
    assert c.recv().raw == b"\x40\x02\x12\x34"


def test_MQTT_311_4_3_3_qos2_exact_pubrec_pubcomp_bytes(broker):
    b = broker()
    c = r4(b)
    c.publish("q2/t", b"x", qos=2, packet_id=0xABCD)
    assert c.recv().raw == b"\x50\x02\xab\xcd"
    c.pubrel(0xABCD)
    assert c.recv().raw == b"\x70\x02\xab\xcd"


def test_MQTT_311_4_3_3_qos2_delivered_to_subscriber_once_on_pubrel_or_publish(broker):
    """A QoS 2 message is forwarded exactly once even if the publisher
    resends the PUBLISH (DUP) and the PUBREL."""
    b = broker()
    sub = r4(b)
    sub.subscribe([("eo/t", 2), ("eo/marker", 0)])
    pub = r4(b)
    pub.publish("eo/t", b"once", qos=2, packet_id=3)
    pub.expect(M.PUBREC)
    pub.publish("eo/t", b"once", qos=2, packet_id=3, dup=True)
    pub.expect(M.PUBREC)
    pub.pubrel(3)
    pub.expect(M.PUBCOMP)
    pub.pubrel(3)
    pub.expect(M.PUBCOMP)
    p = sub.recv_publish()
    assert p.payload == b"once" and p.qos == 2
    raw_marker(sub, pub, "eo/marker")


def test_MQTT_311_4_3_3_packet_id_reusable_after_pubcomp(broker):
    """After PUBCOMP the packet id is free: a new QoS 2 PUBLISH with the same
    id is a new message and is delivered again."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("reuse/t", 2))
    pub = r4(b)
    for payload in (b"first", b"second"):
        pub.publish("reuse/t", payload, qos=2, packet_id=9)
        pub.expect(M.PUBREC)
        pub.pubrel(9)
        pub.expect(M.PUBCOMP)
        assert sub.recv_publish().payload == payload


def test_MQTT_311_4_6_0_out_of_order_pubacks_from_subscriber(broker):
    """The subscriber acknowledges QoS 1 messages out of order (3, 1, 2);
    the broker accepts it and later messages keep flowing."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("ooo/t", 1))
    pub = r4(b)
    for i in range(3):
        pub.publish("ooo/t", b"m%d" % i, qos=1)
        pub.expect(M.PUBACK)
    ps = [sub.recv_publish(ack=False) for _ in range(3)]
    assert [p.payload for p in ps] == [b"m0", b"m1", b"m2"]
    assert len({p.packet_id for p in ps}) == 3
    for i in (2, 0, 1):
        sub.puback(ps[i].packet_id)
    pub.publish("ooo/t", b"m3", qos=1)
    pub.expect(M.PUBACK)
    p = sub.recv_publish()
    assert p.payload == b"m3" and not p.dup


def test_MQTT_311_4_6_0_out_of_order_qos2_acks_from_subscriber(broker):
    """QoS 2 to the subscriber, PUBRECs sent in reverse order: the broker
    sends a PUBREL for each and completes every flow."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("ooo2/t", 2))
    pub = r4(b)
    for i in range(3):
        pub.publish("ooo2/t", b"m%d" % i, qos=2)
        pub.expect(M.PUBREC)
        pub.pubrel(pub._next_id)
        pub.expect(M.PUBCOMP)
    ps = [sub.recv_publish(ack=False) for _ in range(3)]
    assert [p.payload for p in ps] == [b"m0", b"m1", b"m2"]
    for p in reversed(ps):
        sub.pubrec(p.packet_id)
    rels = [sub.expect(M.PUBREL) for _ in range(3)]
    assert [r.packet_id for r in rels] == [p.packet_id for p in reversed(ps)]
    assert all(r.flags == 0x2 for r in rels)
    for r in rels:
        sub.pubcomp(r.packet_id)
    pub.publish("ooo2/t", b"m3", qos=2)
    pub.expect(M.PUBREC)


def test_MQTT_311_4_6_0_publisher_qos2_interleaved_flows(broker):
    """The publisher keeps several QoS 2 flows open and releases them out of
    order; every message is delivered exactly once."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("il/t", 2))
    pub = r4(b)
    for pid in (1, 2, 3):
        pub.publish("il/t", b"p%d" % pid, qos=2, packet_id=pid)
        assert pub.expect(M.PUBREC).packet_id == pid
    for pid in (3, 1, 2):
        pub.pubrel(pid)
        assert pub.expect(M.PUBCOMP).packet_id == pid
    got = sorted(sub.recv_publish().payload for _ in range(3))
    assert got == [b"p1", b"p2", b"p3"]


def test_MQTT_311_4_3_qos_downgrade_matrix(broker):
    """Delivered QoS = min(published QoS, granted QoS) for all 9 pairs."""
    b = broker()
    subs = {}
    for sq in range(3):
        s = r4(b)
        s.subscribe((f"mx/{sq}", sq))
        subs[sq] = s
    pub = r4(b)
    for pq in range(3):
        for sq in range(3):
            pub.publish(f"mx/{sq}", b"%d%d" % (pq, sq), qos=pq)
            if pq == 1:
                pub.expect(M.PUBACK)
            elif pq == 2:
                pub.expect(M.PUBREC)
                pub.pubrel(pub._next_id)
                pub.expect(M.PUBCOMP)
            p = subs[sq].recv_publish()
            assert p.payload == b"%d%d" % (pq, sq)
            assert p.qos == min(pq, sq), (pq, sq, p)


def test_MQTT_311_4_6_0_6_qos1_ordering_200_messages(broker):
    """[MQTT-3.1.1 4.6.0-6] 200 QoS 1 messages from one publisher arrive in order
    (with the inflight window refilled as acks come back)."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("ord/t", 1))
    pub = r4(b)
    for i in range(200):
        pub.publish("ord/t", b"%d" % i, qos=1, packet_id=i % 65535 + 1)
    for i in range(200):
        assert pub.expect(M.PUBACK).packet_id == i % 65535 + 1
    got = [int(sub.recv_publish().payload) for _ in range(200)]
    assert got == list(range(200))


def test_MQTT_311_4_6_0_mixed_qos_ordering(broker):
    """Messages of QoS 0, 1, 2 on one topic reach a QoS 2 subscriber in the
    order they were published."""
    b = broker()
    sub = r4(b)
    sub.subscribe(("mixo/t", 2))
    pub = r4(b)
    for i in range(30):
        q = i % 3
        pid = pub.publish("mixo/t", b"%d" % i, qos=q)
        if q == 1:
            pub.expect(M.PUBACK)
        elif q == 2:
            pub.expect(M.PUBREC)
            pub.pubrel(pid)
            pub.expect(M.PUBCOMP)
    got = [int(sub.recv_publish().payload) for _ in range(30)]
    assert got == list(range(30))


@pytest.mark.starling_only  # mosquitto 2.0.11 does not enforce max_packet_size for 3.1.1
def test_MQTT_311_3_3_5_large_payload_near_max_packet_size(broker):
    """A PUBLISH of exactly max_packet_size is accepted and delivered intact;
    one byte more closes the connection."""
    b = broker(max_packet_size=65536)
    sub = r4(b)
    sub.subscribe(("big/t", 1))
    pub = r4(b)
    overhead = len(M.publish("big/t", b"", qos=1, packet_id=1, version=V))
    # remaining length needs 3 bytes above 16383, which `overhead` (1) did not count
    size = 65536 - overhead - 2
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    pkt = M.publish("big/t", payload, qos=1, packet_id=1, version=V)
    assert len(pkt) == 65536
    pub.send(pkt)
    assert pub.expect(M.PUBACK).packet_id == 1
    p = sub.recv_publish()
    assert p.payload == payload
    pub.send(M.publish("big/t", payload + b"!", qos=1, packet_id=2, version=V))
    pub.expect_closed_without_disconnect()


def test_MQTT_311_3_3_2_zero_length_payload_delivered(broker):
    b = broker()
    sub = r4(b)
    sub.subscribe(("zl/t", 1))
    pub = r4(b)
    pub.publish("zl/t", b"", qos=1)
    pub.expect(M.PUBACK)
    p = sub.recv_publish()
    assert p.payload == b"" and p.topic == "zl/t"


def test_MQTT_311_4_7_3_topic_name_odd_but_valid(broker):
    """Topic names with spaces, empty levels, leading and trailing '/', and
    multi-byte UTF-8 are ordinary topics delivered byte for byte."""
    b = broker()
    topics = ["/", "//", "a//b", " sp ace /x", "a/b/", "日本/語", "$notsys"]
    sub = r4(b)
    for t in topics:
        sub.subscribe((t, 0))
    pub = r4(b)
    for t in topics:
        pub.publish(t, t.encode(), qos=0)
        p = sub.recv_publish()
        assert p.topic == t and p.payload == t.encode()


def test_MQTT_311_1_5_3_long_topic_65535_bytes(broker):
    """A topic name of the maximum length (65535 bytes) is routed."""
    b = broker()
    t = "L/" + "x" * (65535 - 2)
    sub = r4(b)
    assert sub.subscribe((t, 1)).reason_codes == [1]
    pub = r4(b)
    pub.publish(t, b"long", qos=1)
    pub.expect(M.PUBACK)
    p = sub.recv_publish()
    assert p.topic == t and p.payload == b"long"


@pytest.mark.starling_only  # mosquitto 2.0.11 limits topics to 200 levels
def test_MQTT_311_4_7_deep_topic_hierarchy(broker):
    """A topic of 200 levels (the most max_topic_levels allows by default,
    as Mosquitto) matches '#', a '+'-per-level filter prefix and an exact
    filter."""
    b = broker()
    levels = ["l%d" % i for i in range(200)]
    t = "/".join(levels)
    sub = r4(b)
    sub.subscribe([(t, 0), ("l0/+/l2/#", 0)])
    pub = r4(b)
    pub.publish(t, b"deep")
    p = sub.recv_publish()
    assert p.topic == t
    # overlapping subscriptions: 3.1.1 allows one or two copies; the marker
    # ends the wait either way
    pub.publish("l0/x/l2", b"marker")
    seen = [sub.recv_publish()]
    while seen[-1].payload != b"marker":
        seen.append(sub.recv_publish())
    assert all(s.payload in (b"deep", b"marker") for s in seen)


# ================================================================ SUBSCRIBE / UNSUBSCRIBE

def test_MQTT_311_3_8_4_4_suback_codes_in_order_for_multiple_filters(broker):
    """[MQTT-3.1.1 3.8.4-4/5] one SUBACK with one code per filter, in order."""
    b = broker()
    c = r4(b)
    ack = c.subscribe([("m/a", 2), ("m/b", 0), ("m/+/x", 1), ("m/c", 1)])
    assert ack.reason_codes == [2, 0, 1, 1]
    assert ack.raw == b"\x90\x06" + M.u16(ack.packet_id) + b"\x02\x00\x01\x01"


@pytest.mark.parametrize("flt", ["a/#/b", "a+", "a/b#", "+a/b", "#/", ""],
                         ids=["hash-middle", "plus-suffix", "hash-suffix", "plus-prefix",
                              "hash-then-level", "empty"])
def test_MQTT_311_4_7_1_invalid_topic_filter_refused(broker, flt):
    """[MQTT-3.1.1 4.7.1-2/3/4.7.3-1] invalid filters: SUBACK 0x80 (or a close);
    never a grant."""
    b = broker()
    c = r4(b)
    pid = c.subscribe((flt, 0), expect=False)
    try:
        p = c.recv()
    except M.ConnectionClosed:
        return
    assert p.type == M.SUBACK and p.packet_id == pid
    assert p.reason_codes == [0x80]


def test_MQTT_311_4_7_3_1_subscribe_empty_filter_closes(broker):
    """[MQTT-3.1.1 4.7.3-1] topic filters are at least one character long; a
    SUBSCRIBE with an empty one is a protocol violation, on which 3.1.1
    closes the connection [MQTT-3.1.1 4.8.0-1] -- no SUBACK, and the valid
    filter beside it is not subscribed either."""
    b = broker()
    c = r4(b)
    c.subscribe([("ok/filter", 0), ("", 0)], expect=False)
    assert c.expect_closed() == []


def test_MQTT_311_4_7_3_1_unsubscribe_empty_filter_closes(broker):
    """[MQTT-3.1.1 4.7.3-1/4.8.0-1] the same for UNSUBSCRIBE."""
    b = broker()
    c = r4(b)
    c.subscribe(("ok/filter", 0))
    c.unsubscribe(["", "ok/filter"], expect=False)
    assert c.expect_closed() == []


@pytest.mark.parametrize("name", ["MQTX", "mqtt", ""])
def test_MQTT_311_3_1_2_1_wrong_protocol_name_closed_without_connack(broker, name):
    """[MQTT-3.1.1 3.1.2-1, MQTT-5.0 3.1.2-1] if the protocol name is
    incorrect the server may disconnect the client, and must not go on
    processing the CONNECT in line with this specification: closed, without
    a CONNACK."""
    b = broker()
    c = M.Client(b, version=V)
    c.send(M.connect(uid(), version=V, protocol_name=name))
    assert c.expect_closed() == []


def test_MQTT_311_3_8_3_4_subscribe_qos_3_closes(broker):
    """[MQTT-3.1.1 3.8.3-4] a Requested QoS of 3 (or reserved bits) is malformed."""
    b = broker()
    c = r4(b)
    c.send(M.subscribe(1, [("a", 3)], version=V))
    c.expect_closed_without_disconnect()


def test_MQTT_311_3_10_3_2_unsubscribe_without_filters_closes(broker):
    """[MQTT-3.1.1 3.10.3-2] UNSUBSCRIBE must contain at least one filter."""
    b = broker()
    c = r4(b)
    c.send(M.packet(M.UNSUBSCRIBE, 0x2, M.u16(5)))
    c.expect_closed_without_disconnect()


def test_MQTT_311_3_10_4_5_unsuback_for_unknown_filter(broker):
    """[MQTT-3.1.1 3.10.4-5] UNSUBACK even if nothing was unsubscribed: exactly
    B0 02 <id>."""
    b = broker()
    c = r4(b)
    c.send(M.unsubscribe(0x4242, ["never/subscribed", "x/#"], version=V))
    assert c.recv().raw == b"\xb0\x02\x42\x42"


def test_MQTT_311_3_10_4_1_unsubscribe_one_of_two_filters(broker):
    """Unsubscribing one filter leaves the others in place."""
    b = broker()
    c = r4(b)
    c.subscribe([("us/a", 0), ("us/b", 0)])
    c.unsubscribe("us/a")
    pub = r4(b)
    pub.publish("us/a", b"gone")
    pub.publish("us/b", b"kept")
    p = c.recv_publish()
    assert p.topic == "us/b" and p.payload == b"kept"


def test_MQTT_311_3_10_4_3_unsubscribe_with_qos1_in_flight_completes(broker):
    """[MQTT-3.1.1 3.10.4-3] after UNSUBSCRIBE, QoS 1/2 messages already being
    delivered are completed: the un-acked message can still be PUBACKed,
    and no new message on the topic is sent."""
    b = broker()
    c = r4(b)
    c.subscribe([("uif/t", 1), ("uif/marker", 0)])
    pub = r4(b)
    pub.publish("uif/t", b"in flight", qos=1)
    pub.expect(M.PUBACK)
    p = c.recv_publish(ack=False)
    assert p.payload == b"in flight"
    ack = c.unsubscribe("uif/t")
    assert ack.type == M.UNSUBACK
    c.puback(p.packet_id)
    pub.publish("uif/t", b"after", qos=1)
    pub.expect(M.PUBACK)
    raw_marker(c, pub, "uif/marker")


def test_MQTT_311_3_8_4_3_resubscribe_does_not_duplicate(broker):
    """[MQTT-3.1.1 3.8.4-3] subscribing the same filter again replaces it: still
    one copy per message, at the new QoS, and retained messages resent."""
    b = broker()
    pub = r4(b)
    pub.publish("rs/t", b"ret", qos=0, retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    c = r4(b)
    c.subscribe(("rs/#", 0))
    assert c.recv_publish().retain is True
    c.subscribe(("rs/#", 1))
    p = c.recv_publish()
    assert p.payload == b"ret" and p.retain is True and p.qos == 0
    pub.publish("rs/t", b"live", qos=1)
    pub.expect(M.PUBACK)
    p = c.recv_publish()
    assert p.payload == b"live" and p.qos == 1
    c.subscribe(("rs/marker", 0))
    raw_marker(c, pub, "rs/marker")


@pytest.mark.starling_only  # mosquitto 2.0.11 delivers at the QoS of one subscription only
def test_MQTT_311_3_3_5_1_overlapping_subscriptions_311(broker):
    """3.1.1 overlapping subscriptions: at least one copy arrives and the
    copies together cover the maximum granted QoS [MQTT-3.1.1 3.3.5-1]."""
    b = broker()
    c = r4(b)
    c.subscribe([("ov/#", 2), ("ov/+", 0), ("ov/t", 1), ("ovm", 0)])
    pub = r4(b)
    pub.publish("ov/t", b"x", qos=2)
    pub.expect(M.PUBREC)
    pub.pubrel(pub._next_id)
    pub.expect(M.PUBCOMP)
    pub.publish("ovm", b"marker")
    got = []
    while True:
        p = c.recv_publish()
        if p.topic == "ovm":
            break
        got.append(p)
    assert 1 <= len(got) <= 3 and max(p.qos for p in got) == 2, got


def test_many_subscriptions_per_client(broker):
    """2000 subscriptions in one client (10 SUBSCRIBE packets of 200
    filters): every one is granted and every one routes."""
    b = broker()
    c = r4(b)
    for k in range(10):
        ack = c.subscribe([(f"many/{k}/{i}", 1) for i in range(200)])
        assert ack.reason_codes == [1] * 200
    pub = r4(b)
    for k in range(10):
        for i in range(0, 200, 37):
            pub.publish(f"many/{k}/{i}", b"%d/%d" % (k, i))
    expected = [b"%d/%d" % (k, i) for k in range(10) for i in range(0, 200, 37)]
    got = [c.recv_publish().payload for _ in expected]
    assert got == expected


# ================================================================ retained

def test_MQTT_311_3_3_1_5_retained_delivered_with_retain_1_and_stored_qos(broker):
    """[MQTT-3.1.1 3.3.1-5/6/8] a new subscription gets the retained message with
    RETAIN 1 and QoS = min(stored, granted)."""
    b = broker()
    pub = r4(b)
    pub.publish("rq/t", b"r2", qos=2, retain=True)
    pub.expect(M.PUBREC)
    pub.pubrel(pub._next_id)
    pub.expect(M.PUBCOMP)
    for q in range(3):
        s = r4(b)
        s.subscribe(("rq/t", q))
        p = s.recv_publish()
        assert p.retain and p.payload == b"r2" and p.qos == q


def test_MQTT_311_3_3_1_10_zero_length_retained_not_stored_and_forwarded(broker):
    """[MQTT-3.1.1 3.3.1-10/11] an empty retained PUBLISH clears the topic, is
    forwarded to current subscribers (retain 0 on live delivery) and is not
    itself stored."""
    b = broker()
    pub = r4(b)
    pub.publish("zr/t", b"keep", retain=True)
    sync(pub)
    live = r4(b)
    live.subscribe(("zr/t", 0))
    assert live.recv_publish().payload == b"keep"
    pub.publish("zr/t", b"", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    p = live.recv_publish()
    assert p.payload == b""
    late = r4(b)
    late.subscribe([("zr/#", 0), ("zrm", 0)])
    raw_marker(late, pub, "zrm")


def test_MQTT_311_3_3_1_retained_with_persistent_session_reconnect(broker):
    """Resuming a session does not resend retained messages (no new
    subscription is made)."""
    b = broker()
    pub = r4(b)
    pub.publish("rp/t", b"ret", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe([("rp/t", 1), ("rp/m", 0)])
    assert c.recv_publish().payload == b"ret"
    c.disconnect()
    c = r4(b, cid, clean=False)
    assert c.connack.session_present
    raw_marker(c, pub, "rp/m")


def test_MQTT_311_3_3_1_retained_for_each_matching_topic(broker):
    """A wildcard subscription gets one retained message per matching topic,
    with the latest payload of each."""
    b = broker()
    pub = r4(b)
    for i in range(20):
        pub.publish(f"rm/{i}", b"old", retain=True)
        pub.publish(f"rm/{i}", b"v%d" % i, retain=True)
        sync(pub)  # the broker has stored it before others subscribe
    s = r4(b)
    s.subscribe(("rm/+", 0))
    got = {}
    for _ in range(20):
        p = s.recv_publish()
        assert p.retain
        got[p.topic] = p.payload
    assert got == {f"rm/{i}": b"v%d" % i for i in range(20)}


def test_MQTT_311_3_3_1_retained_qos1_to_offline_persistent_subscriber(broker):
    """A retained QoS 1 message published while a persistent subscriber is
    offline is queued and delivered (retain 0: established subscription)
    on reconnect."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("rof/t", 1))
    c.disconnect()
    pub = r4(b)
    pub.publish("rof/t", b"queued retained", qos=1, retain=True)
    pub.expect(M.PUBACK)
    c = r4(b, cid, clean=False)
    p = c.recv_publish()
    assert p.payload == b"queued retained" and p.qos == 1
    assert p.retain is False


# ================================================================ sessions / redelivery

def test_MQTT_311_4_4_0_1_qos2_publish_redelivered_with_dup_then_completed(broker):
    """[MQTT-3.1.1 4.4.0-1] a QoS 2 PUBLISH not PUBRECed is resent with DUP and the
    same packet id when the session resumes; completing it then works."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("rd2/t", 2))
    pub = r4(b)
    pub.publish("rd2/t", b"x2", qos=2)
    pub.expect(M.PUBREC)
    pub.pubrel(pub._next_id)
    pub.expect(M.PUBCOMP)
    p1 = c.recv_publish(ack=False)
    assert not p1.dup
    c.abort()
    c = r4(b, cid, clean=False)
    p2 = c.expect(M.PUBLISH)
    assert p2.dup and p2.packet_id == p1.packet_id and p2.payload == b"x2" and p2.qos == 2
    c.pubrec(p2.packet_id)
    assert c.expect(M.PUBREL).packet_id == p2.packet_id
    c.pubcomp(p2.packet_id)
    c.subscribe(("rd2/m", 0))
    raw_marker(c, pub, "rd2/m")


def test_MQTT_311_4_4_0_1_publisher_qos2_state_survives_reconnect(broker):
    """The server keeps the publisher's QoS 2 state (PUBREC sent) across a
    reconnect of a persistent session: the PUBLISH resent with DUP is not
    delivered twice and the PUBREL completes it."""
    b = broker()
    sub = r4(b)
    sub.subscribe([("pq2/t", 2), ("pq2/m", 0)])
    cid = uid()
    pub = r4(b, cid, clean=False)
    pub.publish("pq2/t", b"only once", qos=2, packet_id=11)
    pub.expect(M.PUBREC)
    pub.abort()
    pub = r4(b, cid, clean=False)
    pub.publish("pq2/t", b"only once", qos=2, packet_id=11, dup=True)
    assert pub.expect(M.PUBREC).packet_id == 11
    pub.pubrel(11)
    assert pub.expect(M.PUBCOMP).packet_id == 11
    assert sub.recv_publish().payload == b"only once"
    raw_marker(sub, pub, "pq2/m")


def test_MQTT_311_3_1_2_5_offline_qos1_qos2_queued_and_qos0_not(broker):
    """Offline messages for a persistent session: QoS 1 and 2 are queued (in
    order, at their QoS), QoS 0 is not (default config)."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("oq/t", 2))
    c.disconnect()
    pub = r4(b)
    for i, q in enumerate([1, 0, 2, 1, 0, 2]):
        pid = pub.publish("oq/t", b"%d" % i, qos=q)
        if q == 1:
            pub.expect(M.PUBACK)
        elif q == 2:
            pub.expect(M.PUBREC)
            pub.pubrel(pid)
            pub.expect(M.PUBCOMP)
    c = r4(b, cid, clean=False)
    got = [c.recv_publish() for _ in range(4)]
    assert [(p.payload, p.qos) for p in got] == [(b"0", 1), (b"2", 2), (b"3", 1), (b"5", 2)]
    c.subscribe(("oq/m", 0))
    raw_marker(c, pub, "oq/m")


def test_MQTT_311_3_1_2_6_clean_session_1_does_not_get_queued_messages(broker):
    """Messages queued for an offline session are discarded when the client
    comes back with CleanSession 1."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("cq/t", 1))
    c.disconnect()
    pub = r4(b)
    pub.publish("cq/t", b"drop me", qos=1)
    pub.expect(M.PUBACK)
    c = r4(b, cid, clean=True)
    assert c.connack.session_present is False
    c.subscribe(("cq/m", 0))
    raw_marker(c, pub, "cq/m")


def test_MQTT_311_4_4_0_1_qos1_queue_and_inflight_redelivered_in_order(broker):
    """Unacked in-flight and queued QoS 1 messages are all delivered on
    reconnect, in publish order, the in-flight ones with DUP 1."""
    b = broker(max_inflight_messages=2)
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("iq/t", 1))
    pub = r4(b)
    for i in range(5):
        pub.publish("iq/t", b"%d" % i, qos=1)
        pub.expect(M.PUBACK)
    first = [c.recv_publish(ack=False) for _ in range(2)]
    assert [p.payload for p in first] == [b"0", b"1"]
    c.abort()
    c = r4(b, cid, clean=False)
    got = [c.recv_publish() for _ in range(5)]
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [p.dup for p in got[:2]] == [True, True]
    assert not any(p.dup for p in got[2:])


def test_MQTT_311_2_3_1_server_packet_ids_unique_across_wrap(broker):
    """66000 QoS 1 messages to one subscriber: the server's packet ids are
    never 0 and never reused while in flight, also after wrapping past
    65535; every message arrives in order (the queue is big enough for
    all of them)."""
    b = broker(max_queued_messages=100000)
    sub = r4(b)
    sub.subscribe(("wrap/t", 1))
    pub = r4(b)
    n = 66000
    data = bytearray()
    for i in range(n):
        data += M.publish("wrap/t", b"%d" % i, qos=1, packet_id=i % 65535 + 1, version=V)
    pub.sock.setblocking(True)
    import threading
    t = threading.Thread(target=pub.sock.sendall, args=(bytes(data),), daemon=True)
    t.start()
    inflight = set()
    expected = 0
    deadline = time.monotonic() + 20
    while expected < n:
        assert time.monotonic() < deadline, f"only {expected} of {n} arrived"
        p = sub.recv()
        acks = bytearray()
        batch = [p]
        while True:
            q = sub._parse()
            if q is None:
                break
            batch.append(M.decode(q[0], q[1], q[2], V, q[3]))
        for p in batch:
            assert p.type == M.PUBLISH and p.qos == 1, p
            assert p.packet_id != 0 and p.packet_id not in inflight, p.packet_id
            assert int(p.payload) == expected, (p.payload, expected)
            expected += 1
            inflight.add(p.packet_id)
        for p in batch:
            acks += M.puback(p.packet_id, version=V)
            inflight.discard(p.packet_id)
        sub.send(acks)
    t.join(5)


# ================================================================ wills

def test_MQTT_311_3_1_2_will_retained_stored(broker):
    """A will with Will Retain 1 is published as a retained message: a later
    subscriber gets it with RETAIN 1."""
    b = broker()
    w = M.Client(b, version=V)
    w.connect(uid(), will={"topic": "wr/t", "payload": b"gone", "qos": 1, "retain": True})
    w.abort()
    # wait for it to be published live, then check it is retained
    s = r4(b)
    s.subscribe(("wr/t", 1))
    deadline = time.monotonic() + 5
    p = s.recv_publish()
    assert p.payload == b"gone" and p.qos == 1
    assert time.monotonic() < deadline


def test_MQTT_311_3_1_2_will_not_retained_when_retain_0(broker):
    """Will Retain 0: the will reaches current subscribers with RETAIN 0 and
    is not stored."""
    b = broker()
    live = r4(b)
    live.subscribe(("wn/t", 1))
    w = M.Client(b, version=V)
    w.connect(uid(), will={"topic": "wn/t", "payload": b"bye", "qos": 1, "retain": False})
    w.abort()
    p = live.recv_publish()
    assert p.payload == b"bye" and p.retain is False and p.qos == 1
    late = r4(b)
    late.subscribe([("wn/t", 1), ("wn/m", 0)])
    raw_marker(late, live, "wn/m")


def test_MQTT_311_3_1_2_8_will_removed_after_disconnect_then_takeover(broker):
    """[MQTT-3.1.1 3.1.2-8] a will is published when a session is taken over by a new connection
    (the old network connection closes without DISCONNECT)."""
    b = broker()
    live = r4(b)
    live.subscribe(("wt/t", 0))
    cid = uid()
    w = M.Client(b, version=V)
    w.connect(cid, will={"topic": "wt/t", "payload": b"taken over"})
    n = r4(b, cid)
    p = live.recv_publish()
    assert p.payload == b"taken over"
    n.disconnect()


def test_MQTT_311_3_1_2_8_will_after_malformed_packet(broker):
    """A will is published when the server closes the connection because of
    a malformed packet."""
    b = broker()
    live = r4(b)
    live.subscribe(("wm/t", 0))
    w = M.Client(b, version=V)
    w.connect(uid(), will={"topic": "wm/t", "payload": b"malformed"})
    w.send(b"\x30\x03\x00\x05a")  # topic length beyond the packet
    w.expect_closed_without_disconnect()
    assert live.recv_publish().payload == b"malformed"


# ================================================================ $ topics

def test_MQTT_311_4_7_2_1_plus_level_does_not_match_dollar(broker):
    """[MQTT-3.1.1 4.7.2-1] '+/x' and '#' do not match '$x/x'; '$x/+' does."""
    b = broker()
    s = r4(b)
    s.subscribe([("+/x", 0), ("#", 0)])
    d = r4(b)
    d.subscribe(("$x/+", 0))
    pub = r4(b)
    pub.publish("$x/x", b"dollar")
    assert d.recv_publish().topic == "$x/x"
    pub.publish("plain/x", b"plain")
    p = s.recv_publish()
    assert p.topic == "plain/x", p  # nothing on $x/x came first
    # the second copy (+/x and # both match): drain it (one or two copies)
    pub.publish("zz", b"end")
    while s.recv_publish().topic != "zz":
        pass


def test_MQTT_311_4_7_2_client_may_publish_to_dollar_topic_not_sys(broker):
    """Publishing to a '$' topic other than $SYS works for subscribers of
    that exact topic."""
    b = broker()
    s = r4(b)
    s.subscribe(("$app/status", 1))
    pub = r4(b)
    pub.publish("$app/status", b"up", qos=1)
    pub.expect(M.PUBACK)
    p = s.recv_publish()
    assert p.topic == "$app/status" and p.payload == b"up"


# ================================================================ paho-style

def test_paho_v311_offline_message_queueing(broker):
    """Paho client_test.py test_offline_message_queueing: QoS 0/1/2 published
    while a persistent subscriber is offline; 2 (QoS 1, 2) or 3 arrive."""
    b = broker()
    cid = uid()
    # a raw client's disconnect waits until the broker closed its side: the
    # session is offline before the publishes (paho's returns at once, and
    # a QoS 0 message matched while it was still online may be queued)
    c = raw(b, cid, version=4, clean=False)
    c.subscribe(("paho/fromb/#", 2))
    c.disconnect()
    p = paho(b, version=4)
    p.publish("paho/fromb/qos0", b"qos 0", 0)
    p.publish("paho/fromb/qos1", b"qos 1", 1)
    p.publish("paho/fromb/qos2", b"qos 2", 2)
    c = paho(b, cid, version=4, clean=False)
    assert c.session_present
    got = sorted(c.get().payload for _ in range(2))
    assert got == [b"qos 1", b"qos 2"]
    c.disconnect()
    p.disconnect()


def test_paho_v311_redelivery_on_reconnect(broker):
    """Paho test_redelivery_on_reconnect: messages published while the
    subscriber's client does not process acks are delivered after
    reconnecting, no duplicate lost."""
    b = broker()
    cid = uid()
    c = r4(b, cid, clean=False)
    c.subscribe(("paho/fromb/#", 2))
    pub = r4(b)
    pub.publish("paho/fromb/r1", b"qos1", qos=1)
    pub.expect(M.PUBACK)
    pid = pub.publish("paho/fromb/r2", b"qos2", qos=2)
    pub.expect(M.PUBREC)
    pub.pubrel(pid)
    pub.expect(M.PUBCOMP)
    first = {c.recv_publish(ack=False).payload for _ in range(2)}
    assert first == {b"qos1", b"qos2"}
    c.abort()
    c = r4(b, cid, clean=False)
    got = {c.recv_publish().payload for _ in range(2)}
    assert got == {b"qos1", b"qos2"}


def test_paho_v311_zero_length_clientid(broker):
    """Paho test_zero_length_clientid: cleansession 0 refused with 0x02,
    cleansession 1 accepted."""
    b = broker()
    c = M.Client(b, version=V)
    ack = c.connect("", clean=False)
    assert ack.raw == b"\x20\x02\x00\x02"
    c.expect_closed()
    c = M.Client(b, version=V)
    assert c.connect("", clean=True).raw == b"\x20\x02\x00\x00"


# ================================================================ more malformed CONNECT / PUBLISH

@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_4_7_3_1_empty_will_topic_refused(broker, version):
    """[MQTT-3.1.1 4.7.3-1, MQTT-5.0 4.7.3-1] topic names are at least one
    character long: a will
    with an empty topic is not accepted."""
    b = broker()
    c = M.Client(b, version=version)
    c.send(M.connect(uid(), version=version, will={"topic": "", "payload": b"x"}))
    closed_no_connack_accept(c)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_1_5_3_username_invalid_utf8_refused(broker, version):
    """[MQTT-3.1.1 1.5.3-1, MQTT-5.0 1.5.4-1] the User Name is a UTF-8 string: invalid bytes make
    the CONNECT malformed."""
    b = broker()
    c = M.Client(b, version=version)
    c.send(M.connect(uid(), version=version, username=b"u\xff"))
    closed_no_connack_accept(c)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_1_5_3_will_topic_invalid_utf8_refused(broker, version):
    b = broker()
    c = M.Client(b, version=version)
    c.send(M.connect(uid(), version=version, will={"topic": b"w/\xed\xa0\x80", "payload": b"x"}))
    closed_no_connack_accept(c)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_connect_trailing_bytes_refused(broker, version):
    """Bytes after the last CONNECT field (remaining length too long for the
    fields the flags announce) make the packet malformed."""
    b = broker()
    c = M.Client(b, version=version)
    pkt = bytearray(M.connect(uid(), version=version))
    body = bytes(pkt[2:]) + b"\x00\x03abc"
    c.send(M.packet(M.CONNECT, 0, body))
    closed_no_connack_accept(c)


def test_MQTT_311_4_7_3_1_publish_empty_topic_closes_311(broker):
    """[MQTT-3.1.1 4.7.3-1] 3.1.1 PUBLISH with a zero-length topic: close."""
    b = broker()
    c = r4(b)
    c.send(M.publish("", b"x", version=V))
    c.expect_closed_without_disconnect()


def test_MQTT_311_3_8_3_subscribe_truncated_filter_closes(broker):
    """A SUBSCRIBE whose last filter lacks its options byte is malformed."""
    b = broker()
    c = r4(b)
    c.send(M.packet(M.SUBSCRIBE, 0x2, M.u16(1) + M.utf8("a") + b"\x00" + M.utf8("b")))
    c.expect_closed_without_disconnect()


def test_MQTT_311_3_1_3_connect_without_client_id_field_closes(broker):
    """A CONNECT that ends before the Client Identifier is malformed."""
    b = broker()
    c = M.Client(b, version=V)
    body = M.utf8("MQTT") + bytes([4, 0x02]) + M.u16(60)
    c.send(M.packet(M.CONNECT, 0, body))
    closed_no_connack_accept(c)


def test_MQTT_311_3_1_0_connect_flags_reserved_type_bits(broker):
    """[MQTT-3.1.1 2.2.2-2] CONNECT fixed-header flags must be 0."""
    b = broker()
    c = M.Client(b, version=V)
    pkt = bytearray(M.connect(uid(), version=V))
    pkt[0] |= 0x01
    c.send(bytes(pkt))
    closed_no_connack_accept(c)
