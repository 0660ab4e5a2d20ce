"""MQTT 5.0 properties: message expiry, topic aliases, maximum packet size,
pass-through of application properties, payload format, AUTH."""

import time

import pytest

import mqttraw as M
from helpers import PacketTypes, paho, props, raw, raw_marker, uid


# ------------------------------------------------------------ message expiry

def _offline_subscriber(b, topic):
    cid = uid()
    s = raw(b, cid, clean=False, properties={"session_expiry_interval": 300})
    s.subscribe([(topic, 1), (topic + "/marker", 0)])
    s.disconnect()
    return cid


def _resume(b, cid):
    s = raw(b, cid, clean=False, properties={"session_expiry_interval": 300})
    assert s.connack.session_present
    return s


def test_MQTT_50_3_3_2_5_expired_message_not_delivered(broker):
    """[MQTT-5.0 3.3.2-5] a message queued longer than its Message Expiry Interval
    is not delivered; a non-expiring one queued after it is."""
    b = broker()
    cid = _offline_subscriber(b, "exp/t")
    c = raw(b)
    c.publish("exp/t", b"expires", qos=1, properties={"message_expiry_interval": 1})
    c.expect(M.PUBACK)
    c.publish("exp/t", b"durable", qos=1)
    c.expect(M.PUBACK)
    time.sleep(2.1)  # let the 1 s expiry pass
    s = _resume(b, cid)
    p = s.recv_publish()
    assert p.payload == b"durable"
    raw_marker(s, c, "exp/t/marker")


def test_MQTT_50_3_3_2_6_expiry_interval_decremented(broker):
    """[MQTT-5.0 3.3.2-6] the Message Expiry Interval sent on is the received value
    minus the time the message waited in the server."""
    b = broker()
    cid = _offline_subscriber(b, "expd/t")
    c = raw(b)
    c.publish("expd/t", b"waits", qos=1, properties={"message_expiry_interval": 30})
    c.expect(M.PUBACK)
    time.sleep(1.6)  # time must pass for the decrement to be visible
    s = _resume(b, cid)
    p = s.recv_publish()
    assert p.payload == b"waits"
    assert 1 <= p.properties["message_expiry_interval"] <= 29


def test_MQTT_50_3_3_2_6_expiry_interval_forwarded_live(broker):
    b = broker()
    s = raw(b)
    s.subscribe(("expl/t", 0))
    c = raw(b)
    c.publish("expl/t", b"x", properties={"message_expiry_interval": 100})
    p = s.recv_publish()
    assert 99 <= p.properties["message_expiry_interval"] <= 100


def test_MQTT_50_3_3_2_retained_message_expires(broker):
    """A retained message whose expiry has passed is not sent to new subscribers."""
    b = broker()
    c = raw(b)
    c.publish("expr/t", b"short-lived", qos=1, retain=True,
              properties={"message_expiry_interval": 1})
    c.expect(M.PUBACK)
    time.sleep(2.1)  # let the 1 s expiry pass
    s = raw(b)
    s.subscribe([("expr/t", 0), ("expr/marker", 0)])
    raw_marker(s, c, "expr/marker")


# ------------------------------------------------------------ topic aliases, client -> server

def test_MQTT_50_3_3_2_12_topic_alias_from_client(broker):
    """A client sets alias 1 with a topic, then publishes with an empty topic
    and alias 1; both arrive on the full topic; an alias can be remapped."""
    b = broker(topic_alias_maximum=5)
    s = raw(b)
    s.subscribe([("alias/a", 0), ("alias/b", 0)])
    c = raw(b)
    assert c.connack.properties.get("topic_alias_maximum") == 5
    c.publish("alias/a", b"1", properties={"topic_alias": 1})
    c.publish("", b"2", properties={"topic_alias": 1})
    c.publish("alias/b", b"3", properties={"topic_alias": 1})
    c.publish("", b"4", properties={"topic_alias": 1})
    got = [(p.topic, p.payload) for p in (s.recv_publish() for _ in range(4))]
    assert got == [("alias/a", b"1"), ("alias/a", b"2"), ("alias/b", b"3"), ("alias/b", b"4")]


@pytest.mark.parametrize("alias", [
    # mosquitto 2.0.11 answers alias 0 with DISCONNECT 0x81 (malformed) instead of 0x94
    pytest.param(0, marks=pytest.mark.starling_only), 3])
def test_MQTT_50_3_3_2_8_topic_alias_out_of_range(broker, alias):
    """[MQTT-5.0 3.3.2-8/9] topic alias 0 or above the server's Topic Alias
    Maximum (2): DISCONNECT 0x94 topic alias invalid."""
    b = broker(topic_alias_maximum=2)
    c = raw(b)
    c.publish("alias/x", b"x", properties={"topic_alias": alias})
    c.expect_disconnect(0x94)


def test_MQTT_50_3_3_4_unknown_topic_alias_protocol_error(broker):
    """An empty topic with an alias that has no mapping is a protocol error:
    DISCONNECT 0x82."""
    b = broker(topic_alias_maximum=5)
    c = raw(b)
    c.publish("", b"x", properties={"topic_alias": 2})
    c.expect_disconnect(0x82)


def test_MQTT_50_3_3_2_empty_topic_without_alias_protocol_error(broker):
    b = broker()
    c = raw(b)
    c.publish("", b"x")
    c.expect_disconnect(0x82)


# ------------------------------------------------------------ topic aliases, server -> client

@pytest.mark.starling_only  # mosquitto 2.0.11 never sends topic aliases to clients
def test_MQTT_50_3_1_2_26_server_topic_alias_to_client(broker):
    """A client announcing Topic Alias Maximum 5: the first PUBLISH on a topic
    carries the topic and an alias in 1..5, a later one on the same topic an
    empty topic and the same alias."""
    b = broker()
    s = raw(b, properties={"topic_alias_maximum": 5})
    s.subscribe(("salias/#", 1))
    c = raw(b)
    for i in range(3):
        c.publish("salias/long/topic/name", b"%d" % i, qos=1)
        c.expect(M.PUBACK)
    first = s.recv_publish()
    alias = first.properties.get("topic_alias")
    assert first.topic == "salias/long/topic/name" and first.payload == b"0"
    assert alias is not None and 1 <= alias <= 5
    for i in (1, 2):
        p = s.recv_publish()
        assert p.payload == b"%d" % i
        assert (p.topic, p.properties.get("topic_alias")) == ("", alias)


def test_MQTT_50_3_1_2_27_no_alias_when_client_max_is_0(broker):
    """Without a client Topic Alias Maximum (default 0) the server sends
    no Topic Alias."""
    b = broker()
    s = raw(b)
    s.subscribe(("noalias/t", 0))
    c = raw(b)
    for i in range(2):
        c.publish("noalias/t", b"x")
    for _ in range(2):
        p = s.recv_publish()
        assert p.topic == "noalias/t" and "topic_alias" not in p.properties


# ------------------------------------------------------------ maximum packet size

def test_MQTT_50_3_2_2_maximum_packet_size_exceeded_v5(broker):
    """A PUBLISH larger than max_packet_size (300): DISCONNECT 0x95 packet too large."""
    b = broker(max_packet_size=300)
    c = raw(b)
    assert c.connack.properties.get("maximum_packet_size") == 300
    c.publish("big/t", b"x" * 400, qos=1)
    c.expect_disconnect(0x95)


def test_MQTT_50_3_2_2_maximum_packet_size_exceeded_311(broker):
    b = broker(max_packet_size=300)
    c = raw(b, version=4)
    c.publish("big/t", b"x" * 400, qos=1)
    c.expect_closed_without_disconnect()


def test_MQTT_50_3_2_2_packet_at_limit_accepted(broker):
    b = broker(max_packet_size=300)
    s = raw(b)
    s.subscribe(("lim/t", 0))
    c = raw(b)
    pkt = M.publish("lim/t", b"y" * 200)
    c.send(pkt)
    assert len(pkt) < 300
    assert s.recv_publish().payload == b"y" * 200


def test_MQTT_50_3_1_2_25_not_sent_above_client_maximum_packet_size(broker):
    """[MQTT-5.0 3.1.2-25] a message larger than the subscriber's Maximum Packet
    Size is not sent to it (the marker arrives first); a smaller one is."""
    b = broker()
    s = raw(b, properties={"maximum_packet_size": 128})
    s.subscribe([("cmps/t", 1), ("cmps/marker", 0)])
    c = raw(b)
    c.publish("cmps/t", b"z" * 300, qos=1)
    c.expect(M.PUBACK)
    raw_marker(s, c, "cmps/marker")
    c.publish("cmps/t", b"small", qos=1)
    c.expect(M.PUBACK)
    assert s.recv_publish().payload == b"small"


# ------------------------------------------------------------ pass-through

def test_MQTT_50_3_3_2_application_properties_passed_through(broker):
    """[MQTT-5.0 3.3.2-4/15/16/17/18/20] payload format indicator, content
    type, response topic, correlation data and user properties (order and
    repeats kept) are forwarded unchanged."""
    b = broker()
    s = raw(b)
    s.subscribe(("pass/t", 1))
    c = raw(b)
    users = [("z", "1"), ("a", "2"), ("z", "3"), ("", ""), ("ключ", "значение")]
    c.publish("pass/t", "ünïcödé".encode(), qos=1, properties=[
        ("payload_format_indicator", 1), ("content_type", "text/plain; charset=utf-8"),
        ("response_topic", "pass/reply"), ("correlation_data", b"\xff\x00\xfe"),
        *[("user_property", u) for u in users]])
    c.expect(M.PUBACK)
    p = s.recv_publish()
    pr = p.properties
    assert p.payload == "ünïcödé".encode()
    assert pr["payload_format_indicator"] == 1
    assert pr["content_type"] == "text/plain; charset=utf-8"
    assert pr["response_topic"] == "pass/reply"
    assert pr["correlation_data"] == b"\xff\x00\xfe"
    assert pr["user_property"] == users


def test_MQTT_50_3_3_2_properties_passed_through_paho(broker):
    b = broker()
    s = paho(b)
    s.subscribe("pp/t", 1)
    c = paho(b)
    c.publish("pp/t", b"req", qos=1, properties=props(
        PacketTypes.PUBLISH, ResponseTopic="pp/resp", CorrelationData=b"id-1",
        UserProperty=[("a", "1"), ("b", "2")], ContentType="x/y"))
    m = s.get()
    assert m.properties.ResponseTopic == "pp/resp"
    assert m.properties.CorrelationData == b"id-1"
    assert m.properties.UserProperty == [("a", "1"), ("b", "2")]
    assert m.properties.ContentType == "x/y"


def test_MQTT_50_3_3_2_properties_dropped_for_311_subscriber(broker):
    """A 5.0 message with properties reaches a 3.1.1 subscriber as a valid
    3.1.1 PUBLISH (no property block)."""
    b = broker()
    s = raw(b, version=4)
    s.subscribe(("p311/t", 1))
    c = raw(b)
    c.publish("p311/t", b"plain", qos=1, properties={"user_property": [("k", "v")],
                                                    "content_type": "c"})
    c.expect(M.PUBACK)
    p = s.recv_publish()
    assert p.payload == b"plain"
    assert p.raw == b"\x32" + M.varint(len(p.body)) + M.utf8("p311/t") + \
        p.packet_id.to_bytes(2, "big") + b"plain"


@pytest.mark.starling_only  # mosquitto 2.0.11 accepts it (PUBACK 0x00) and forwards the payload
def test_MQTT_50_3_3_2_4_payload_format_invalid_utf8(broker):
    """Payload Format Indicator 1 with a payload that is not UTF-8: PUBACK
    0x99 payload format invalid, or DISCONNECT 0x99."""
    b = broker()
    s = raw(b)
    s.subscribe([("pfi/t", 0), ("pfi/marker", 0)])
    c = raw(b)
    c.publish("pfi/t", b"\xff\xfe bad", qos=1, properties={"payload_format_indicator": 1})
    p = c.recv()
    if p.type == M.PUBACK:
        assert p.reason_code == 0x99
    else:
        assert p.type == M.DISCONNECT and p.reason_code == 0x99, p
        c.expect_closed()
    raw_marker(s, s, "pfi/marker")


# ------------------------------------------------------------ AUTH, server DISCONNECT

@pytest.mark.starling_only  # mosquitto 2.0.11 closes the connection without DISCONNECT 0x82
def test_MQTT_50_4_12_0_auth_without_method_protocol_error(broker):
    """AUTH from a client that did not use extended authentication:
    DISCONNECT 0x82 protocol error."""
    b = broker()
    c = raw(b)
    c.send(M.auth(0x18, {"authentication_method": "X"}))
    c.expect_disconnect(0x82)


def test_MQTT_50_3_14_client_disconnect_reason_and_properties_accepted(broker):
    """A DISCONNECT with a reason code and properties (reason string, user
    property) closes cleanly: no will."""
    b = broker()
    s = raw(b)
    s.subscribe([("dprop/will", 0), ("dprop/marker", 0)])
    w = raw(b, will={"topic": "dprop/will", "payload": b"no"})
    w.send(M.disconnect(0x00, {"reason_string": "bye", "user_property": [("k", "v")]}))
    w.expect_closed()
    raw_marker(s, s, "dprop/marker")


def test_MQTT_50_4_13_server_disconnect_has_no_forbidden_properties(broker):
    """A server DISCONNECT (here 0x95) carries at most a reason string, user
    properties or server reference; it never has a session expiry interval
    [MQTT-5.0 3.14.2-2]."""
    b = broker(max_packet_size=100)
    c = raw(b)
    c.publish("x", b"q" * 200)
    d = c.expect_disconnect(0x95)
    assert set(d.properties) <= {"reason_string", "user_property", "server_reference"}
