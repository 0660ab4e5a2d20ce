"""MQTT 5.0 conformance, in the spirit of the Paho interoperability suite
(client_test5.py) and of a broker's own protocol tests: CONNECT properties,
session expiry, will delay, shared subscriptions, topic aliases, maximum
packet size, flow control, request/response, subscribe options, assigned
client id, user properties, payload format, message expiry, subscription
identifiers and reason codes.

Every wait is bounded; absence is proven with a marker message.
"""

import time

import pytest

import mqttraw as M
from helpers import PacketTypes, paho, props, raw, raw_marker, uid

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82


def sync(c):
    """PINGREQ/PINGRESP round trip: the broker has handled every packet `c`
    sent before (packets of one connection are handled in order)."""
    c.pingreq()
    c.expect(M.PINGRESP)


def r5(b, cid=None, **kw):
    return raw(b, cid if cid is not None else uid(), version=5, **kw)


def refused(c, codes):
    """CONNECT refused: a CONNACK with a reason code in `codes` (or none at
    all), then the close; never a DISCONNECT before CONNACK
    [MQTT-5.0 3.14.0-1]."""
    got = c.expect_closed()
    assert all(p.type == M.CONNACK for p in got), got
    for p in got:
        assert p.reason_code in codes, got
    return got


def qos2_publish(c, topic, payload, properties=None, retain=False):
    pid = c.publish(topic, payload, qos=2, properties=properties, retain=retain)
    rec = c.expect(M.PUBREC)
    assert rec.packet_id == pid
    c.pubrel(pid)
    comp = c.expect(M.PUBCOMP)
    assert comp.packet_id == pid
    return rec, comp


# ================================================================ CONNECT

@pytest.mark.parametrize("prop,value", [
    ("receive_maximum", 0),
    ("maximum_packet_size", 0),
    ("request_problem_information", 2),
    ("request_response_information", 2),
], ids=["receive-maximum-0", "maximum-packet-size-0", "request-problem-2", "request-response-2"])
def test_MQTT_50_3_1_2_connect_property_value_protocol_error(broker, prop, value):
    """(MQTT 5.0 sections 3.1.2.11.3-7) Receive Maximum 0, Maximum Packet Size 0 and
    Request Problem/Response Information other than 0/1 are protocol
    errors: CONNACK 0x82 (or 0x81) then close."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), properties={prop: value}))
    refused(c, {PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_2_2_2_duplicate_connect_property_protocol_error(broker):
    """(MQTT 5.0 section 2.2.2.2) a property other than User Property twice: protocol
    error."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), properties=[("session_expiry_interval", 10),
                                        ("session_expiry_interval", 20)]))
    refused(c, {PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_3_1_2_connect_publish_only_property_protocol_error(broker):
    """A property that is not allowed in CONNECT (Topic Alias) is a protocol
    error (malformed per 2.2.2.2)."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), properties={"topic_alias": 1}))
    refused(c, {PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_3_1_3_will_property_not_allowed_protocol_error(broker):
    """Will Properties may only hold will properties; Session Expiry there is
    malformed/protocol error."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), will={"topic": "w", "payload": b"x",
                                  "properties": {"session_expiry_interval": 5}}))
    refused(c, {PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_3_1_3_will_payload_format_invalid_utf8(broker):
    """(MQTT 5.0 section 3.1.3.2.3) Will Payload Format Indicator 1 with a payload that is
    not UTF-8: the server may refuse with 0x99; if it accepts, it must be
    consistent (never crash)."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), will={"topic": "wpf/t", "payload": b"\xff\xfe",
                                  "properties": {"payload_format_indicator": 1}}))
    p = c.recv()
    assert p.type == M.CONNACK and p.reason_code in (0x00, 0x99), p
    assert b.alive()


def test_MQTT_50_3_2_2_connack_v5_no_unexpected_properties(broker):
    """CONNACK 5.0 for a plain CONNECT: reason 0, session present 0, and
    every property it carries is a CONNACK property, none twice."""
    b = broker()
    c = M.Client(b, version=5)
    ack = c.connect(uid())
    assert ack.body[:2] == b"\x00\x00"
    allowed = {"session_expiry_interval", "receive_maximum", "maximum_qos", "retain_available",
               "maximum_packet_size", "assigned_client_identifier", "topic_alias_maximum",
               "reason_string", "user_property", "wildcard_subscription_available",
               "subscription_identifier_available", "shared_subscription_available",
               "server_keep_alive", "response_information", "server_reference",
               "authentication_method", "authentication_data"}
    names = [n for n, _v in ack.property_list]
    assert set(names) <= allowed, names
    assert len(names) == len(set(names)), names
    assert "assigned_client_identifier" not in names


def test_MQTT_50_3_2_2_3_session_present_v5(broker):
    """[MQTT-5.0 3.2.2-2/3] Clean Start 0 resuming a stored session: Session
    Present 1; Clean Start 1: Session Present 0."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is False
    c.disconnect()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is True
    c.disconnect()
    c = r5(b, cid, clean=True, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is False


def test_MQTT_50_3_2_2_16_assigned_client_id_resumable(broker):
    """Paho test_assigned_clientid: the Assigned Client Identifier names a
    real session that can be resumed with Clean Start 0."""
    b = broker()
    c = M.Client(b, version=5)
    ack = c.connect("", clean=True, properties={"session_expiry_interval": 60})
    assert ack.reason_code == 0
    assigned = ack.properties["assigned_client_identifier"]
    c.subscribe(("acid/t", 1))
    c.disconnect()
    pub = r5(b)
    pub.publish("acid/t", b"for assigned", qos=1)
    pub.expect(M.PUBACK)
    c = r5(b, assigned, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is True
    assert "assigned_client_identifier" not in c.connack.properties
    assert c.recv_publish().payload == b"for assigned"


def test_MQTT_50_3_1_2_23_session_expiry_absent_means_0(broker):
    """[MQTT-5.0 3.1.2-23] no Session Expiry Interval: the session ends with the
    network connection, even with Clean Start 0."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False)
    c.subscribe(("sx0/t", 1))
    c.disconnect()
    c = r5(b, cid, clean=False)
    assert c.connack.session_present is False


def test_MQTT_50_3_14_2_disconnect_session_expiry_after_0_protocol_error(broker):
    """(MQTT 5.0 section 3.14.2.2.2) the client must not set a non-zero Session Expiry
    Interval in DISCONNECT when CONNECT had 0: the server answers with
    DISCONNECT 0x82 (and the session is not kept)."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False)
    c.send(M.disconnect(0, {"session_expiry_interval": 60}))
    c.expect_disconnect(PROTOCOL_ERROR)
    c = r5(b, cid, clean=False)
    assert c.connack.session_present is False


def test_MQTT_50_3_14_2_disconnect_extends_session_expiry(broker):
    """DISCONNECT may change a non-zero Session Expiry Interval: 1 -> 60
    keeps the session past the original 1 s."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 1})
    c.subscribe(("sxe/t", 1))
    c.send(M.disconnect(0, {"session_expiry_interval": 60}))
    c.expect_closed()
    time.sleep(1.6)  # let the original 1 s expiry pass
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert c.connack.session_present is True


def test_MQTT_50_3_1_2_session_expiry_max_never_expires_and_queues(broker):
    """Session Expiry 0xFFFFFFFF: the session never expires; QoS 1 messages
    are queued while offline and delivered on resume."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 0xFFFFFFFF})
    c.subscribe(("sxm/t", 1))
    c.disconnect()
    pub = r5(b)
    pub.publish("sxm/t", b"kept", qos=1)
    pub.expect(M.PUBACK)
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 0xFFFFFFFF})
    assert c.connack.session_present is True
    assert c.recv_publish().payload == b"kept"


def test_MQTT_50_3_2_2_server_keep_alive_for_keepalive_0(broker):
    """Keep Alive 0 with max_keepalive 30: CONNACK carries Server Keep Alive
    30."""
    b = broker(max_keepalive=30)
    c = r5(b, keepalive=0)
    assert c.connack.properties.get("server_keep_alive") == 30


@pytest.mark.starling_only  # mosquitto 2.0.11 does not publish the will of a taken-over connection
def test_MQTT_50_3_1_4_takeover_v5_session_and_will(broker):
    """Takeover of a 5.0 connection: the old one gets DISCONNECT 0x8E; its
    will (no delay) is published [MQTT-5.0 3.1.4-3]."""
    b = broker()
    live = r5(b)
    live.subscribe(("tow/t", 0))
    cid = uid()
    old = M.Client(b, version=5)
    old.connect(cid, will={"topic": "tow/t", "payload": b"old will"})
    new = r5(b, cid)
    old.expect_disconnect(0x8E)
    assert live.recv_publish().payload == b"old will"
    new.disconnect()


# ================================================================ will delay

def test_MQTT_50_3_1_3_9_will_delay_longer_than_session_expiry(broker):
    """The will is sent when the session ends, even if the Will Delay
    Interval is longer: session expiry 1, will delay 60 -> sent after ~1 s."""
    b = broker()
    live = r5(b)
    live.subscribe(("wds/t", 0))
    w = M.Client(b, version=5)
    w.connect(uid(), clean=True, properties={"session_expiry_interval": 1},
              will={"topic": "wds/t", "payload": b"at session end",
                    "properties": {"will_delay_interval": 60}})
    t0 = time.monotonic()
    w.abort()
    p = live.recv_publish(timeout=4)
    assert p.payload == b"at session end"
    assert time.monotonic() - t0 >= 0.8


@pytest.mark.starling_only  # mosquitto 2.0.11 waits for the will delay although the session has ended
def test_MQTT_50_3_1_3_9_will_delay_with_session_expiry_0_sent_at_close(broker):
    """Will delay 60 but Session Expiry 0: the session ends with the
    connection, so the will is sent right away."""
    b = broker()
    live = r5(b)
    live.subscribe(("wd0/t", 0))
    w = M.Client(b, version=5)
    w.connect(uid(), will={"topic": "wd0/t", "payload": b"now",
                           "properties": {"will_delay_interval": 60}})
    w.abort()
    assert live.recv_publish(timeout=2).payload == b"now"


def test_MQTT_50_3_1_3_9_will_delay_not_sent_on_normal_disconnect(broker):
    """DISCONNECT 0x00 removes the will even with a delay pending."""
    b = broker()
    live = r5(b)
    live.subscribe([("wdn/t", 0), ("wdn/m", 0)])
    w = M.Client(b, version=5)
    w.connect(uid(), properties={"session_expiry_interval": 10},
              will={"topic": "wdn/t", "payload": b"never",
                    "properties": {"will_delay_interval": 1}})
    w.disconnect(0)
    time.sleep(1.5)  # let the will delay pass
    raw_marker(live, r5(b), "wdn/m")


def test_MQTT_50_3_1_2_will_properties_user_props_and_retain(broker):
    """Will with properties and Retain 1: a later subscriber gets it retained
    with the user properties, content type and response topic intact."""
    b = broker()
    w = M.Client(b, version=5)
    wp = {"content_type": "text/plain", "response_topic": "wpr/resp",
          "correlation_data": b"\x01\x02", "user_property": [("k1", "v1"), ("k1", "v2")]}
    w.connect(uid(), will={"topic": "wpr/t", "payload": b"will body", "qos": 1,
                           "retain": True, "properties": wp})
    w.abort()
    # the will is published asynchronously: poll with fresh subscribers (one
    # that subscribes before the will is published gets it live, retain 0)
    deadline = time.monotonic() + 5
    while True:
        s = r5(b)
        s.subscribe([("wpr/t", 1), ("wpr/m", 0)])
        p = s.recv()
        if p.type == M.PUBLISH and p.topic == "wpr/t" and p.retain:
            break
        assert time.monotonic() < deadline, "retained will never stored"
        s.close()
    assert p.retain and p.payload == b"will body" and p.qos == 1
    assert p.properties["content_type"] == "text/plain"
    assert p.properties["response_topic"] == "wpr/resp"
    assert p.properties["correlation_data"] == b"\x01\x02"
    assert p.properties["user_property"] == [("k1", "v1"), ("k1", "v2")]


# ================================================================ shared subscriptions

@pytest.mark.starling_only  # mosquitto 2.0.11 sends retained messages to shared subscriptions
def test_MQTT_50_3_3_1_retained_not_sent_to_shared_subscription(broker):
    """(MQTT 5.0 sections 3.3.1.3 and 4.8.2) retained messages are sent for new non-shared
    subscriptions only: subscribing $share/g/t does not deliver the
    retained message of t."""
    b = broker()
    pub = r5(b)
    pub.publish("shr/t", b"retained", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    s = r5(b)
    ack = s.subscribe([("$share/g/shr/t", 0), ("shr/m", 0)])
    assert ack.reason_codes == [0, 0]
    raw_marker(s, pub, "shr/m")


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts $share/g, $share//t and $share/g/ as ordinary filters
@pytest.mark.parametrize("flt", ["$share/g", "$share//t", "$share/g+/t", "$share/g#/t",
                                 "$share/g/", "$share/g/a/#/b"],
                         ids=["no-filter", "empty-group", "plus-in-group", "hash-in-group",
                              "empty-filter", "bad-filter"])
def test_MQTT_50_4_8_2_1_invalid_shared_filter(broker, flt):
    """[MQTT-5.0 4.8.2-1/2] an invalid shared subscription filter: SUBACK 0x8F
    (Topic Filter invalid) or DISCONNECT 0x81/0x82 -- never a grant."""
    b = broker()
    c = r5(b)
    c.subscribe((flt, 0), expect=False)
    try:
        p = c.recv()
    except M.ConnectionClosed:
        pytest.fail("closed without DISCONNECT")
    if p.type == M.DISCONNECT:
        assert p.reason_code in (MALFORMED, PROTOCOL_ERROR)
    else:
        assert p.type == M.SUBACK and p.reason_codes in ([0x8F], [0x80]), p


def test_MQTT_50_4_8_2_shared_and_non_shared_both_deliver(broker):
    """4.8.2: "If a Client has a Shared Subscription and a Non-shared
    Subscription and a message matches both of them, the Client will
    receive a copy of the message by virtue of it having the Non-shared
    Subscription. A second copy of the message will be delivered to one of
    the subscribers to the Shared Subscription" -- with the client the only
    member of the group, it gets exactly two copies."""
    b = broker()
    c = r5(b)
    c.subscribe([("$share/g/sb/t", 1), ("sb/t", 1), ("sb/m", 0)])
    pub = r5(b)
    pub.publish("sb/t", b"x", qos=1)
    pub.expect(M.PUBACK)
    got = [c.recv_publish() for _ in range(2)]
    assert [p.payload for p in got] == [b"x", b"x"]
    raw_marker(c, pub, "sb/m")


def test_MQTT_50_4_8_2_same_session_in_two_groups_gets_two_copies(broker):
    """Each Shared Subscription (group) delivers its own copy: a client that
    is the only member of groups a and b gets the message twice, each copy
    with the identifier of its subscription."""
    b = broker()
    c = r5(b)
    c.subscribe(("$share/a/tg/t", 1), properties={"subscription_identifier": 1})
    c.subscribe(("$share/b/tg/t", 1), properties={"subscription_identifier": 2})
    c.subscribe(("tg/m", 0))
    pub = r5(b)
    pub.publish("tg/t", b"x", qos=1)
    pub.expect(M.PUBACK)
    got = [c.recv_publish() for _ in range(2)]
    assert [p.payload for p in got] == [b"x", b"x"]
    assert sorted(p.properties.get("subscription_identifier", [None])[0] for p in got) == [1, 2]
    raw_marker(c, pub, "tg/m")


def test_MQTT_50_4_8_2_shared_qos1_load_balanced_and_complete(broker):
    """100 QoS 1 messages to a group of two: every message is delivered once
    to exactly one member."""
    b = broker()
    m1, m2 = r5(b), r5(b)
    for m in (m1, m2):
        m.subscribe(("$share/lb/lb/t", 1))
    pub = r5(b)
    for i in range(100):
        pub.publish("lb/t", b"%d" % i, qos=1)
        pub.expect(M.PUBACK)
    got = []
    for m in (m1, m2):
        while True:
            try:
                got.append(int(m.recv_publish(timeout=0.5).payload))
            except M.Timeout:
                break
    assert sorted(got) == list(range(100))


def test_MQTT_50_4_8_2_shared_member_leaves_messages_go_to_other(broker):
    """After one member unsubscribes, the other gets every message."""
    b = broker()
    m1, m2 = r5(b), r5(b)
    m1.subscribe(("$share/lv/lv/t", 0))
    m2.subscribe(("$share/lv/lv/t", 0))
    m1.unsubscribe("$share/lv/lv/t")
    pub = r5(b)
    for i in range(10):
        pub.publish("lv/t", b"%d" % i)
    assert [m2.recv_publish().payload for _ in range(10)] == [b"%d" % i for i in range(10)]


def test_MQTT_50_4_8_2_shared_subscription_identifier(broker):
    """A Subscription Identifier on a shared subscription is delivered with
    the message."""
    b = broker()
    c = r5(b)
    c.subscribe(("$share/sid/sid/t", 1), properties={"subscription_identifier": 77})
    pub = r5(b)
    pub.publish("sid/t", b"x", qos=1)
    pub.expect(M.PUBACK)
    p = c.recv_publish()
    assert p.properties.get("subscription_identifier") == [77]


def test_MQTT_50_4_8_2_unsubscribe_shared_not_subscribed_0x11(broker):
    """UNSUBSCRIBE of a shared filter that is not subscribed: 0x11."""
    b = broker()
    c = r5(b)
    c.subscribe(("$share/a/us/t", 0))
    ack = c.unsubscribe(["$share/b/us/t", "$share/a/us/t", "us/t"])
    assert ack.reason_codes == [0x11, 0x00, 0x11]


# ================================================================ topic aliases

def test_MQTT_50_3_3_2_topic_alias_with_topic_and_alias_updates_mapping(broker):
    """Topic + alias already mapped replaces the mapping; the empty-topic
    form then uses the new topic (paho test_client_topic_alias)."""
    b = broker(topic_alias_maximum=3)
    s = r5(b)
    s.subscribe([("ta/#", 0)])
    c = r5(b)
    c.publish("ta/1", b"a", properties={"topic_alias": 1})
    c.publish("ta/2", b"b", properties={"topic_alias": 2})
    c.publish("", b"c", properties={"topic_alias": 1})
    c.publish("", b"d", properties={"topic_alias": 2})
    c.publish("ta/3", b"e", properties={"topic_alias": 1})
    c.publish("", b"f", properties={"topic_alias": 1})
    got = [(p.topic, p.payload) for p in (s.recv_publish() for _ in range(6))]
    assert got == [("ta/1", b"a"), ("ta/2", b"b"), ("ta/1", b"c"), ("ta/2", b"d"),
                   ("ta/3", b"e"), ("ta/3", b"f")]


def test_MQTT_50_3_3_2_topic_alias_not_forwarded_to_subscriber(broker):
    """The publisher's Topic Alias is not forwarded: a subscriber with Topic
    Alias Maximum 0 gets the full topic and no topic_alias property."""
    b = broker(topic_alias_maximum=3)
    s = r5(b)
    s.subscribe(("taf/t", 0))
    c = r5(b)
    c.publish("taf/t", b"x", properties={"topic_alias": 1})
    c.publish("", b"y", properties={"topic_alias": 1})
    for pl in (b"x", b"y"):
        p = s.recv_publish()
        assert p.topic == "taf/t" and p.payload == pl
        assert "topic_alias" not in p.properties


def test_MQTT_50_3_3_2_topic_alias_scoped_to_connection(broker):
    """[MQTT-5.0 3.3.2-7] aliases do not survive a reconnect (even when the
    session does): using the old alias alone is a protocol error."""
    b = broker(topic_alias_maximum=3)
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.publish("tas/t", b"x", properties={"topic_alias": 1})
    c.disconnect()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.publish("", b"y", properties={"topic_alias": 1})
    c.expect_disconnect(PROTOCOL_ERROR)


def test_MQTT_50_3_3_2_topic_alias_when_maximum_0_is_invalid(broker):
    """topic_alias_maximum 0: any Topic Alias from the client is invalid,
    DISCONNECT 0x94 [MQTT-5.0 3.2.2-18]."""
    b = broker(topic_alias_maximum=0)
    c = r5(b)
    assert c.connack.properties.get("topic_alias_maximum", 0) == 0
    c.publish("taz/t", b"x", properties={"topic_alias": 1})
    c.expect_disconnect(0x94)


def test_MQTT_50_3_3_2_server_alias_reused_for_second_publish(broker):
    """Server -> client aliases: the first PUBLISH carries topic + alias,
    the next one on the same topic an empty topic and the same alias."""
    b = broker()
    s = r5(b, properties={"topic_alias_maximum": 2})
    s.subscribe(("sal/#", 0))
    pub = r5(b)
    for t in ("sal/a", "sal/a", "sal/b", "sal/b", "sal/c", "sal/a"):
        pub.publish(t, t.encode())
    aliases = {}
    for t in ("sal/a", "sal/a", "sal/b", "sal/b", "sal/c", "sal/a"):
        p = s.recv_publish()
        a = p.properties.get("topic_alias")
        assert p.payload == t.encode()
        if p.topic:
            assert p.topic == t
            if a is not None:
                assert 1 <= a <= 2
                aliases[a] = t
        else:
            assert a is not None and aliases.get(a) == t, (p, aliases)


# ================================================================ maximum packet size

def test_MQTT_50_3_1_2_24_not_sent_to_client_over_max_and_later_ones_are(broker):
    """A message too big for the client's Maximum Packet Size is discarded
    [MQTT-5.0 3.1.2-25] (as if delivered, not queued); the next small one
    arrives."""
    b = broker()
    s = r5(b, properties={"maximum_packet_size": 200})
    s.subscribe(("mps/t", 1))
    pub = r5(b)
    pub.publish("mps/t", b"x" * 500, qos=1)
    pub.expect(M.PUBACK)
    pub.publish("mps/t", b"small", qos=1)
    pub.expect(M.PUBACK)
    p = s.recv_publish()
    assert p.payload == b"small"


def test_MQTT_50_3_1_2_24_retained_over_client_max_not_sent(broker):
    """The same limit applies to retained messages sent on subscribe."""
    b = broker()
    pub = r5(b)
    pub.publish("mpr/big", b"x" * 500, retain=True)
    pub.publish("mpr/small", b"s", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    s = r5(b, properties={"maximum_packet_size": 200})
    s.subscribe(("mpr/+", 0))
    p = s.recv_publish()
    assert p.topic == "mpr/small"
    s.subscribe(("mpr/m", 0))
    raw_marker(s, pub, "mpr/m")


def test_MQTT_50_3_2_2_maximum_packet_size_announced(broker):
    b = broker(max_packet_size=4096)
    c = r5(b)
    assert c.connack.properties.get("maximum_packet_size") == 4096


def test_MQTT_50_4_13_packet_too_large_0x95(broker):
    """A PUBLISH larger than the announced Maximum Packet Size: DISCONNECT
    0x95 [MQTT-5.0 3.2.2-15]."""
    b = broker(max_packet_size=1024)
    c = r5(b)
    c.publish("ptl/t", b"x" * 1100, qos=1)
    c.expect_disconnect(0x95)


def test_MQTT_50_3_1_2_24_small_client_maximum_packet_size_acks_fit(broker):
    """With a client Maximum Packet Size of 64 every packet the server sends
    (CONNACK, SUBACK, PUBACK, PUBLISH) is at most 64 bytes."""
    b = broker()
    c = r5(b, properties={"maximum_packet_size": 64})
    assert len(c.connack.raw) <= 64
    s = c.subscribe(("rsd/t", 1))
    assert len(s.raw) <= 64
    c.publish("rsd/t", b"x", qos=1)
    got = [c.recv(), c.recv()]
    assert sorted(p.type for p in got) == [M.PUBLISH, M.PUBACK]
    assert all(len(p.raw) <= 64 for p in got)


def test_MQTT_50_3_1_2_24_connack_larger_than_client_maximum_not_left_hanging(broker):
    """A Maximum Packet Size smaller than the CONNACK the server would send
    (16 bytes): the server must not send the oversized CONNACK
    [MQTT-5.0 3.1.2-24]; it must then not leave the client waiting forever
    either -- it sends a CONNACK that fits, or closes the connection."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), properties={"maximum_packet_size": 16}))
    try:
        p = c.recv()
    except M.ConnectionClosed:
        return
    assert p.type == M.CONNACK and len(p.raw) <= 16, p


# ================================================================ flow control

def test_MQTT_50_4_9_0_2_receive_maximum_1_serialises_qos2(broker):
    """Client Receive Maximum 1: QoS 2 messages are sent one at a time;
    the next PUBLISH comes only after PUBCOMP."""
    b = broker()
    s = r5(b, properties={"receive_maximum": 1})
    s.subscribe([("rm1/t", 2), ("rm1/m", 0)])
    pub = r5(b)
    for i in range(3):
        qos2_publish(pub, "rm1/t", b"%d" % i)
    p = s.recv_publish(ack=False)
    assert p.payload == b"0"
    s.pubrec(p.packet_id)
    rel = s.expect(M.PUBREL)
    # still in flight until PUBCOMP: the server handles PUBREC before the
    # PINGREQ, so a PUBLISH sent because of the PUBREC would come first
    s.pingreq()
    assert s.recv().type == M.PINGRESP
    s.pubcomp(rel.packet_id)
    assert s.recv_publish().payload == b"1"
    assert s.recv_publish().payload == b"2"


def test_MQTT_50_4_9_0_qos0_while_window_full_delivered(broker):
    """Receive Maximum limits QoS 1/2; QoS 0 messages published while the
    window is full may be sent at once or held back (4.9 allows both) but
    are not lost: after the PUBACK everything arrives, each topic in
    order."""
    b = broker()
    s = r5(b, properties={"receive_maximum": 1})
    s.subscribe([("rmq/one", 1), ("rmq/zero", 0)])
    pub = r5(b)
    pub.publish("rmq/one", b"a", qos=1)
    pub.expect(M.PUBACK)
    pub.publish("rmq/one", b"b", qos=1)
    pub.expect(M.PUBACK)
    first = s.recv_publish(ack=False)
    assert first.payload == b"a"
    for i in range(5):
        pub.publish("rmq/zero", b"%d" % i)
    pub.pingreq()
    pub.expect(M.PINGRESP)  # the broker has routed all five
    s.puback(first.packet_id)
    got = [s.recv_publish() for _ in range(6)]
    assert [p.payload for p in got if p.topic == "rmq/zero"] == [b"%d" % i for i in range(5)]
    assert [p.payload for p in got if p.topic == "rmq/one"] == [b"b"]


@pytest.mark.starling_only  # mosquitto has no receive_maximum option in this harness
def test_MQTT_50_3_3_4_7_server_receive_maximum_qos2_counts_until_pubcomp(broker):
    """Server Receive Maximum 2: two QoS 2 PUBLISHes awaiting PUBREL fill the
    window; a third is 'Receive Maximum exceeded' (DISCONNECT 0x93)."""
    b = broker(receive_maximum=2)
    c = r5(b)
    assert c.connack.properties.get("receive_maximum") == 2
    c.publish("srm/t", b"1", qos=2, packet_id=1)
    c.expect(M.PUBREC)
    c.publish("srm/t", b"2", qos=2, packet_id=2)
    c.expect(M.PUBREC)
    c.publish("srm/t", b"3", qos=2, packet_id=3)
    c.expect_disconnect(0x93)


def test_MQTT_50_3_3_4_7_server_receive_maximum_window_frees_after_pubcomp(broker):
    b = broker(receive_maximum=1)
    c = r5(b)
    for pid in (1, 2, 3):
        c.publish("srf/t", b"x", qos=2, packet_id=pid)
        c.expect(M.PUBREC)
        c.pubrel(pid)
        c.expect(M.PUBCOMP)
    c.pingreq()
    c.expect(M.PINGRESP)


# ================================================================ request / response

def test_MQTT_50_4_10_request_response_round_trip(broker):
    """Paho test_request_response: Response Topic and Correlation Data pass
    to the responder unchanged; the response reaches the requester."""
    b = broker()
    req = r5(b)
    req.subscribe(("rr/resp/x", 1))
    rsp = r5(b)
    rsp.subscribe(("rr/req", 1))
    req.publish("rr/req", b"question", qos=1,
                properties={"response_topic": "rr/resp/x", "correlation_data": b"\x00id\xff"})
    req.expect(M.PUBACK)
    q = rsp.recv_publish()
    assert q.properties["response_topic"] == "rr/resp/x"
    assert q.properties["correlation_data"] == b"\x00id\xff"
    rsp.publish(q.properties["response_topic"], b"answer", qos=1,
                properties={"correlation_data": q.properties["correlation_data"]})
    rsp.expect(M.PUBACK)
    a = req.recv_publish()
    assert a.payload == b"answer" and a.properties["correlation_data"] == b"\x00id\xff"


@pytest.mark.starling_only  # mosquitto 2.0.11 does not check the Response Topic either
def test_MQTT_50_3_3_2_14_response_topic_wildcard_protocol_error(broker):
    """[MQTT-5.0 3.3.2-14] the Response Topic must not contain wildcards:
    DISCONNECT 0x82 (malformed 0x81 accepted)."""
    b = broker()
    c = r5(b)
    c.publish("rrw/t", b"x", properties={"response_topic": "a/+"})
    c.expect_disconnect({PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_3_1_2_28_request_response_information_1(broker):
    """Request Response Information 1: the server may answer with a Response
    Information; if present it is a UTF-8 string."""
    b = broker()
    c = r5(b, properties={"request_response_information": 1})
    ri = c.connack.properties.get("response_information")
    assert ri is None or isinstance(ri, str)


# ================================================================ subscribe options / identifiers

def test_MQTT_50_3_8_3_3_no_local_false_delivers_own(broker):
    b = broker()
    c = r5(b)
    c.subscribe(("nlf/t", M.sub_options(0, nl=False)))
    c.publish("nlf/t", b"own")
    assert c.recv_publish().payload == b"own"


def test_MQTT_50_3_8_3_no_local_with_wildcard_and_other_publisher(broker):
    """No Local drops only the client's own messages; other clients' still
    arrive."""
    b = broker()
    c = r5(b)
    c.subscribe(("nlw/#", M.sub_options(1, nl=True)))
    c.publish("nlw/a", b"own", qos=1)
    c.expect(M.PUBACK)
    o = r5(b)
    o.publish("nlw/b", b"other", qos=1)
    o.expect(M.PUBACK)
    p = c.recv_publish()
    assert p.payload == b"other"


def test_MQTT_50_3_3_1_12_rap_on_retained_at_subscribe(broker):
    """Retained messages sent because of a new subscription always have
    RETAIN 1, with or without Retain As Published."""
    b = broker()
    pub = r5(b)
    pub.publish("rapr/t", b"r", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    for rap in (False, True):
        s = r5(b)
        s.subscribe(("rapr/t", M.sub_options(0, rap=rap)))
        assert s.recv_publish().retain is True


def test_MQTT_50_3_8_2_subscription_identifier_max_value(broker):
    """Subscription Identifier 268435455 (the maximum) round-trips."""
    b = broker()
    c = r5(b)
    c.subscribe(("sidm/t", 0), properties={"subscription_identifier": 268435455})
    c.publish("sidm/t", b"x")
    assert c.recv_publish().properties["subscription_identifier"] == [268435455]


def test_MQTT_50_3_8_2_resubscribe_without_identifier_removes_it(broker):
    """Re-subscribing without an identifier replaces the subscription: the
    message then has no Subscription Identifier."""
    b = broker()
    c = r5(b)
    c.subscribe(("sidr/t", 0), properties={"subscription_identifier": 5})
    c.subscribe(("sidr/t", 0))
    c.publish("sidr/t", b"x")
    p = c.recv_publish()
    assert "subscription_identifier" not in p.properties


def test_MQTT_50_3_3_4_3_subscription_identifier_on_retained_message(broker):
    """The identifier also accompanies a retained message sent on
    subscribe."""
    b = broker()
    pub = r5(b)
    pub.publish("sidret/t", b"r", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    c = r5(b)
    c.subscribe(("sidret/#", 0), properties={"subscription_identifier": 42})
    p = c.recv_publish()
    assert p.retain and p.properties.get("subscription_identifier") == [42]


def test_MQTT_50_3_3_4_subscription_identifier_survives_session_resume(broker):
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("sids/t", 1), properties={"subscription_identifier": 9})
    c.disconnect()
    pub = r5(b)
    pub.publish("sids/t", b"q", qos=1)
    pub.expect(M.PUBACK)
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    p = c.recv_publish()
    assert p.properties.get("subscription_identifier") == [9]


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts two Subscription Identifiers
def test_MQTT_50_3_8_2_two_subscription_identifiers_protocol_error(broker):
    """More than one Subscription Identifier in SUBSCRIBE is a protocol
    error."""
    b = broker()
    c = r5(b)
    c.subscribe(("sid2/t", 0), properties=[("subscription_identifier", 1),
                                           ("subscription_identifier", 2)], expect=False)
    c.expect_disconnect({PROTOCOL_ERROR, MALFORMED})


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts a Subscription Identifier in PUBLISH
def test_MQTT_50_3_3_4_6_publish_with_subscription_identifier_protocol_error(broker):
    """[MQTT-5.0 3.3.4-6] a PUBLISH from a client must not contain a
    Subscription Identifier: protocol error."""
    b = broker()
    c = r5(b)
    c.publish("pubsid/t", b"x", properties={"subscription_identifier": 3})
    c.expect_disconnect(PROTOCOL_ERROR)


def test_MQTT_50_3_8_4_subscribe_no_local_shared_protocol_error_code(broker):
    """SUBACK codes per filter: a mix of valid QoS grants and a wildcard
    filter."""
    b = broker()
    c = r5(b)
    ack = c.subscribe([("sm/a", M.sub_options(2)), ("sm/#", M.sub_options(1)),
                       ("sm/+/x", M.sub_options(0))])
    assert ack.reason_codes == [2, 1, 0]


def test_MQTT_50_3_8_3_5_subscribe_options_reserved_bits_malformed(broker):
    b = broker()
    c = r5(b)
    c.subscribe(("sor/t", 0x40), expect=False)
    c.expect_disconnect(MALFORMED)


# ================================================================ unsubscribe

def test_MQTT_50_3_11_3_unsuback_codes(broker):
    """UNSUBACK 5.0: one reason code per filter, 0x00 or 0x11, in order;
    an invalid filter gets 0x8F."""
    b = broker()
    c = r5(b)
    c.subscribe([("ua/a", 0), ("ua/b", 0)])
    ack = c.unsubscribe(["ua/a", "ua/zzz", "ua/b", "ua/a"])
    assert ack.reason_codes == [0x00, 0x11, 0x00, 0x11]


def test_MQTT_50_3_10_4_unsubscribe_invalid_filter(broker):
    """An invalid filter in UNSUBSCRIBE: UNSUBACK 0x8F (or 0x11), or a
    DISCONNECT for a malformed packet; never a success."""
    b = broker()
    c = r5(b)
    c.unsubscribe(["ub/#/x"], expect=False)
    p = c.recv()
    if p.type == M.DISCONNECT:
        assert p.reason_code in (MALFORMED, PROTOCOL_ERROR)
    else:
        assert p.type == M.UNSUBACK and p.reason_codes in ([0x8F], [0x11]), p


# ================================================================ user properties / payload format / expiry

def test_MQTT_50_3_3_2_17_user_properties_order_and_duplicates(broker):
    """[MQTT-5.0 3.3.2-17/18] user properties are forwarded unaltered, in order,
    duplicates kept, including empty strings and UTF-8."""
    b = broker()
    s = r5(b)
    s.subscribe(("up/t", 2))
    pub = r5(b)
    ups = [("a", "1"), ("b", "2"), ("a", "3"), ("", ""), ("ключ", "значение")] + \
          [("k%d" % i, "v%d" % i) for i in range(50)]
    qos2_publish(pub, "up/t", b"x", properties={"user_property": ups})
    p = s.recv_publish()
    assert p.properties["user_property"] == ups


def test_MQTT_50_3_3_2_payload_format_and_content_type_forwarded(broker):
    b = broker()
    s = r5(b)
    s.subscribe(("pf/t", 1))
    pub = r5(b)
    pub.publish("pf/t", "héllo".encode(), qos=1,
                properties={"payload_format_indicator": 1, "content_type": "text/x-é"})
    pub.expect(M.PUBACK)
    p = s.recv_publish()
    assert p.properties["payload_format_indicator"] == 1
    assert p.properties["content_type"] == "text/x-é"


def test_MQTT_50_3_3_2_expiry_on_retained_decremented(broker):
    """A retained message's Message Expiry Interval sent to a new subscriber
    is decremented by the time it has been stored."""
    b = broker()
    pub = r5(b)
    pub.publish("rexp/t", b"r", qos=1, retain=True, properties={"message_expiry_interval": 60})
    pub.expect(M.PUBACK)
    time.sleep(1.2)  # time must pass for the decrement
    s = r5(b)
    s.subscribe(("rexp/t", 0))
    p = s.recv_publish()
    assert 1 <= p.properties["message_expiry_interval"] <= 59


@pytest.mark.starling_only  # mosquitto 2.0.11 delivers the expired message
def test_MQTT_50_3_3_2_expired_in_flight_queue_not_delivered(broker):
    """A message that expires while waiting behind a full receive window
    (online client) is not delivered."""
    b = broker()
    s = r5(b, properties={"receive_maximum": 1})
    s.subscribe([("efq/t", 1), ("efq/m", 1)])
    pub = r5(b)
    pub.publish("efq/t", b"first", qos=1)
    pub.expect(M.PUBACK)
    pub.publish("efq/t", b"expires", qos=1, properties={"message_expiry_interval": 1})
    pub.expect(M.PUBACK)
    pub.publish("efq/m", b"marker", qos=1)
    pub.expect(M.PUBACK)
    first = s.recv_publish(ack=False)
    assert first.payload == b"first"
    time.sleep(1.6)  # let the expiry pass while the message waits
    s.puback(first.packet_id)
    p = s.recv_publish()
    assert p.payload == b"marker", p


# ================================================================ QoS flows / reason codes

def test_MQTT_50_3_4_2_puback_no_matching_subscribers_0x10(broker):
    b = broker()
    c = r5(b)
    c.publish("nobody/here", b"x", qos=1, packet_id=5)
    p = c.expect(M.PUBACK)
    assert p.packet_id == 5 and p.reason_code in (0x00, 0x10)


def test_MQTT_50_4_3_3_subscriber_pubrec_error_ends_flow(broker):
    """A subscriber answering PUBLISH QoS 2 with PUBREC >= 0x80 ends the
    flow: no PUBREL follows, and the packet id is free again (the next
    message flows)."""
    b = broker()
    s = r5(b, properties={"receive_maximum": 1})
    s.subscribe(("pre/t", 2))
    pub = r5(b)
    qos2_publish(pub, "pre/t", b"rejected")
    qos2_publish(pub, "pre/t", b"next")
    p = s.recv_publish(ack=False)
    assert p.payload == b"rejected"
    s.pubrec(p.packet_id, 0x80)
    p2 = s.expect(M.PUBLISH)
    assert p2.payload == b"next", p2


def test_MQTT_50_4_3_2_subscriber_puback_error_code_accepted(broker):
    """PUBACK with reason 0x80 from the subscriber ends the QoS 1 flow too."""
    b = broker()
    s = r5(b, properties={"receive_maximum": 1})
    s.subscribe(("pae/t", 1))
    pub = r5(b)
    for pl in (b"a", b"b"):
        pub.publish("pae/t", pl, qos=1)
        pub.expect(M.PUBACK)
    p = s.recv_publish(ack=False)
    s.puback(p.packet_id, 0x80)
    assert s.recv_publish().payload == b"b"


def test_MQTT_50_4_4_0_1_v5_pubrel_resent_on_resume_then_pubcomp(broker):
    """A QoS 2 message PUBRECed but not PUBCOMPed: on resume the server sends
    the PUBREL (not the PUBLISH) [MQTT-5.0 4.4.0-1]."""
    b = broker()
    cid = uid()
    s = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    s.subscribe(("prs/t", 2))
    pub = r5(b)
    qos2_publish(pub, "prs/t", b"x")
    p = s.recv_publish(ack=False)
    s.pubrec(p.packet_id)
    assert s.expect(M.PUBREL).packet_id == p.packet_id
    s.abort()
    s = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    rel = s.recv()
    assert rel.type == M.PUBREL and rel.packet_id == p.packet_id, rel
    s.pubcomp(rel.packet_id)
    s.subscribe(("prs/m", 0))
    raw_marker(s, pub, "prs/m")


def test_MQTT_50_3_4_unexpected_puback_ignored_or_protocol_error(broker):
    """A PUBACK for a packet id the server never used: ignored (connection
    usable) or a protocol error with DISCONNECT; never a crash."""
    b = broker()
    c = r5(b)
    c.puback(999)
    c.pingreq()
    p = c.recv()
    assert p.type == M.PINGRESP or (p.type == M.DISCONNECT and p.reason_code == PROTOCOL_ERROR)


def test_MQTT_50_3_14_disconnect_reason_0x04_will_qos1_retained(broker):
    """DISCONNECT with 0x04 (with will) publishes the will with its QoS."""
    b = broker()
    live = r5(b)
    live.subscribe(("w04/t", 2))
    w = M.Client(b, version=5)
    w.connect(uid(), will={"topic": "w04/t", "payload": b"w", "qos": 2})
    w.send(M.disconnect(0x04))
    p = live.recv_publish()
    assert p.payload == b"w" and p.qos == 2


@pytest.mark.starling_only  # mosquitto 2.0.11 sends retained messages to shared subscriptions
def test_MQTT_50_3_1_2_retain_handling_1_with_shared_ignored(broker):
    """Retain Handling does not bring retained messages to shared
    subscriptions either."""
    b = broker()
    pub = r5(b)
    pub.publish("rhs/t", b"r", retain=True)
    sync(pub)  # the broker has stored it before others subscribe
    s = r5(b)
    s.subscribe([("$share/g/rhs/t", M.sub_options(0, rh=1)), ("rhs/m", 0)])
    raw_marker(s, pub, "rhs/m")


# ================================================================ paho client_test5 style

def test_paho_v5_basic(broker):
    b = broker()
    c = paho(b)
    assert c.subscribe("paho5/basic", 2) == [2]
    c.publish("paho5/basic", b"qos 0")
    c.publish("paho5/basic", b"qos 1", 1)
    c.publish("paho5/basic", b"qos 2", 2)
    got = sorted(c.get().payload for _ in range(3))
    assert got == [b"qos 0", b"qos 1", b"qos 2"]
    c.disconnect()


def test_paho_v5_session_expiry_and_offline_queue(broker):
    b = broker()
    cid = uid()
    c = paho(b, cid, clean=False, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=30))
    c.subscribe("paho5/off/#", 2)
    c.disconnect()
    p = paho(b)
    p.publish("paho5/off/1", b"q1", 1)
    p.publish("paho5/off/2", b"q2", 2)
    c = paho(b, cid, clean=False, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=30))
    assert c.session_present
    got = sorted(c.get().payload for _ in range(2))
    assert got == [b"q1", b"q2"]
    c.disconnect()
    p.disconnect()


def test_paho_v5_user_properties(broker):
    b = broker()
    c = paho(b)
    c.subscribe("paho5/up", 2)
    up = [("a", "2"), ("c", "3"), ("a", "1")]
    c.publish("paho5/up", b"x", 1, properties=props(PacketTypes.PUBLISH, UserProperty=up))
    m = c.get()
    assert m.properties.UserProperty == up
    c.disconnect()


# ================================================================ more CONNECT / capability checks

def test_MQTT_50_3_1_2_19_v5_password_without_username_accepted(broker):
    """5.0 allows a Password without a User Name (3.1.2.9 changed from
    3.1.1): with anonymous access the CONNECT is accepted."""
    b = broker()
    c = M.Client(b, version=5)
    ack = c.connect(uid(), password=b"token-only")
    assert ack.reason_code == 0


def test_MQTT_50_3_2_2_12_will_qos_above_maximum_qos_refused_0x9b(broker):
    """[MQTT-5.0 3.2.2-12] a Will QoS above the server's Maximum QoS: the
    connection is rejected, with CONNACK 0x9B (QoS not supported)."""
    b = broker(max_qos=1)
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), will={"topic": "wq/t", "payload": b"x", "qos": 2}))
    got = refused(c, {0x9B})
    assert got, "no CONNACK"


def test_MQTT_50_3_2_2_13_will_retain_without_retain_available_refused_0x9a(broker):
    """[MQTT-5.0 3.2.2-13] Will Retain 1 when retained messages are not
    supported: the connection is rejected, with CONNACK 0x9A."""
    b = broker(retain_available=False)
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), will={"topic": "wr/t", "payload": b"x", "retain": True}))
    got = refused(c, {0x9A})
    assert got, "no CONNACK"


def test_MQTT_50_2_2_2_unknown_property_malformed(broker):
    """An unknown property identifier makes the packet malformed: DISCONNECT
    0x81."""
    b = broker()
    c = r5(b)
    body = M.utf8("up/t") + bytes([3, 0x7F, 0, 0]) + b"x"
    c.send(M.packet(M.PUBLISH, 0, body))
    c.expect_disconnect(MALFORMED)


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts Payload Format Indicator 2
def test_MQTT_50_3_3_2_payload_format_indicator_2_protocol_error(broker):
    """Payload Format Indicator values other than 0 and 1 are a protocol
    error (or malformed)."""
    b = broker()
    c = r5(b)
    c.publish("pfi/t", b"x", properties={"payload_format_indicator": 2})
    c.expect_disconnect({PROTOCOL_ERROR, MALFORMED})


@pytest.mark.starling_only  # mosquitto 2.0.11 does not validate the Response Topic
def test_MQTT_50_1_5_4_response_topic_invalid_utf8_malformed(broker):
    b = broker()
    c = r5(b)
    c.publish("rti/t", b"x", properties={"response_topic": b"a\xff"})
    c.expect_disconnect(MALFORMED)


@pytest.mark.starling_only  # mosquitto 2.0.11 does not validate user property strings
def test_MQTT_50_1_5_7_user_property_invalid_utf8_malformed(broker):
    b = broker()
    c = r5(b)
    # a user property whose name is an overlong (invalid) UTF-8 encoding of '/'
    c.publish("upi/t", b"x", properties=[(0x26, M.utf8(b"k\xc0\xaf") + M.utf8("v"))])
    c.expect_disconnect(MALFORMED)


@pytest.mark.starling_only  # mosquitto 2.0.11 ignores Authentication Data without a method
def test_MQTT_50_4_12_authentication_data_without_method_protocol_error(broker):
    """Authentication Data without Authentication Method in CONNECT is a
    protocol error: CONNACK 0x82 (or 0x81)."""
    b = broker()
    c = M.Client(b, version=5)
    c.send(M.connect(uid(), properties={"authentication_data": b"xx"}))
    refused(c, {PROTOCOL_ERROR, MALFORMED})


def test_MQTT_50_4_9_resumed_queue_respects_receive_maximum(broker):
    """Queued messages delivered on resume honour the new connection's
    Receive Maximum (2): only two PUBLISHes before an ack."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("rrm/t", 1))
    c.disconnect()
    pub = r5(b)
    for i in range(5):
        pub.publish("rrm/t", b"%d" % i, qos=1)
        pub.expect(M.PUBACK)
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60, "receive_maximum": 2})
    first = [c.recv_publish(ack=False) for _ in range(2)]
    c.pingreq()
    assert c.recv().type == M.PINGRESP, "more than Receive Maximum in flight"
    for p in first:
        c.puback(p.packet_id)
    rest = [c.recv_publish() for _ in range(3)]
    assert [p.payload for p in first + rest] == [b"%d" % i for i in range(5)]


def test_MQTT_50_3_1_2_session_resumed_across_protocol_versions(broker):
    """A session created by a 5.0 client is resumed by a 3.1.1 client with
    the same id: subscriptions and queued messages carry over (properties
    are not sent to the 3.1.1 client)."""
    b = broker()
    cid = uid()
    c = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    c.subscribe(("xv/t", 1))
    c.disconnect()
    pub = r5(b)
    pub.publish("xv/t", b"cross", qos=1, properties={"user_property": [("a", "b")]})
    pub.expect(M.PUBACK)
    c = raw(b, cid, version=4, clean=False)
    assert c.connack.session_present is True
    p = c.recv_publish()
    assert p.payload == b"cross" and p.qos == 1
    assert p.body == M.utf8("xv/t") + M.u16(p.packet_id) + b"cross"


def test_MQTT_50_3_3_2_6_v5_will_message_expiry_forwarded(broker):
    """A will with a Message Expiry Interval is published with it."""
    b = broker()
    live = r5(b)
    live.subscribe(("wme/t", 0))
    w = M.Client(b, version=5)
    w.connect(uid(), will={"topic": "wme/t", "payload": b"w",
                           "properties": {"message_expiry_interval": 100}})
    w.abort()
    p = live.recv_publish()
    assert 99 <= p.properties["message_expiry_interval"] <= 100


def test_MQTT_50_3_8_4_8_max_qos_0_subscription_downgrades_retained(broker):
    """Retained QoS 2 message, subscription QoS 0 (5.0): delivered at QoS 0
    with RETAIN 1."""
    b = broker()
    pub = r5(b)
    qos2_publish(pub, "rq0/t", b"r", retain=True)
    s = r5(b)
    s.subscribe(("rq0/t", M.sub_options(0)))
    p = s.recv_publish()
    assert p.qos == 0 and p.retain and p.packet_id is None


@pytest.mark.starling_only  # mosquitto 2.0.11 keeps waiting for the will delay
def test_MQTT_50_3_1_3_9_will_delay_reconnect_with_clean_start_ends_session_sends_will(broker):
    """Will Delay 30 s, session expiry 60 s, then the client reconnects with
    Clean Start 1: the old Session ends [MQTT-5.0 3.1.2-4], so its will is
    published at once (the will is delayed until the delay passes 'or the
    Session ends, whichever happens first')."""
    b = broker()
    live = r5(b)
    live.subscribe(("wdc/t", 0))
    cid = uid()
    w = M.Client(b, version=5)
    w.connect(cid, clean=True, properties={"session_expiry_interval": 60},
              will={"topic": "wdc/t", "payload": b"session ended",
                    "properties": {"will_delay_interval": 30}})
    w.abort()
    n = r5(b, cid, clean=True)
    assert n.connack.session_present is False
    assert live.recv_publish(timeout=3).payload == b"session ended"


def test_MQTT_50_3_1_3_9_will_delay_reconnect_clean_start_0_no_will(broker):
    """Will Delay 30 s and a reconnect with Clean Start 0 (same session)
    before it passes: no will [MQTT-5.0 3.1.3-9]."""
    b = broker()
    live = r5(b)
    live.subscribe([("wdk/t", 0), ("wdk/m", 0)])
    cid = uid()
    w = M.Client(b, version=5)
    w.connect(cid, clean=True, properties={"session_expiry_interval": 60},
              will={"topic": "wdk/t", "payload": b"never",
                    "properties": {"will_delay_interval": 30}})
    w.abort()
    n = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert n.connack.session_present is True
    n.disconnect()
    raw_marker(live, r5(b), "wdk/m")


@pytest.mark.starling_only  # mosquitto 2.0.11 publishes the will on takeover
def test_MQTT_50_3_1_3_9_takeover_with_clean_start_0_does_not_send_delayed_will(broker):
    """Session takeover (the old connection still open) by a new connection
    with Clean Start 0 before the Will Delay Interval (30 s) has passed:
    the Session continues, so the will must not be sent [MQTT-5.0 3.1.3-9]."""
    b = broker()
    live = r5(b)
    live.subscribe([("wdt/t", 0), ("wdt/m", 0)])
    cid = uid()
    old = M.Client(b, version=5)
    old.connect(cid, clean=True, properties={"session_expiry_interval": 60},
                will={"topic": "wdt/t", "payload": b"never",
                      "properties": {"will_delay_interval": 30}})
    n = r5(b, cid, clean=False, properties={"session_expiry_interval": 60})
    assert n.connack.session_present is True
    old.expect_disconnect(0x8E)
    raw_marker(live, r5(b), "wdt/m")
    n.disconnect()
