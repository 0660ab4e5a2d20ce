"""max_topic_levels: topic names and filters with more levels than the limit
(default 200, Mosquitto's fixed limit) are refused; see
docs/configuration.md."""

import pytest

import mqttraw as M
from helpers import raw, raw_marker, uid

pytestmark = pytest.mark.starling_only  # the limit is configurable here


def deep(n, leaf="x"):
    """A topic of n levels."""
    return "/".join([leaf] * n)


@pytest.mark.parametrize("version", [4, 5])
def test_max_topic_levels_default_200_publish(broker, version):
    """200 levels are published and delivered; 201 close the connection
    (5.0: DISCONNECT 0x90 Topic Name invalid; 3.1.1: no DISCONNECT)."""
    b = broker()
    sub = raw(b, version=version)
    sub.subscribe(("x/#", 1))
    pub = raw(b, version=version)
    pub.publish(deep(200), b"ok", qos=1)
    assert pub.expect(M.PUBACK).reason_code == 0
    p = sub.recv_publish()
    assert (p.topic, p.payload) == (deep(200), b"ok")
    pub.publish(deep(201), b"too deep", qos=1)
    if version == 5:
        pub.expect_disconnect(0x90)
    else:
        assert pub.expect_closed_without_disconnect() == []
    raw_marker(sub, raw(b, version=version), "x/marker")


@pytest.mark.parametrize("version", [4, 5])
def test_max_topic_levels_subscribe_refused_per_filter(broker, version):
    """A filter deeper than max_topic_levels gets its own refusal in the
    SUBACK (5.0: 0x8F; 3.1.1: 0x80); the others in the packet are granted.
    For a shared subscription the filter after $share/{group}/ counts."""
    b = broker(max_topic_levels=3)
    c = raw(b, version=version)
    filters = [("a/b/c", 1), ("a/b/c/d", 1), ("a/+/#", 0), ("+/+/+/+", 0)]
    if version == 5:
        filters += [("$share/g/a/b/c", 1), ("$share/g/a/b/c/d", 1)]
    ack = c.subscribe(filters)
    bad = 0x8F if version == 5 else 0x80
    want = [1, bad, 0, bad] + ([1, bad] if version == 5 else [])
    assert ack.reason_codes == want


@pytest.mark.parametrize("version", [4, 5])
def test_max_topic_levels_configured_publish(broker, version):
    b = broker(max_topic_levels=3)
    c = raw(b, version=version)
    c.subscribe(("#", 0))
    c.publish("a/b/c", b"three")
    assert c.recv_publish().payload == b"three"
    c.publish("a/b/c/d", b"four")
    if version == 5:
        c.expect_disconnect(0x90)
    else:
        assert c.expect_closed_without_disconnect() == []


@pytest.mark.parametrize("version", [4, 5])
def test_max_topic_levels_will_topic_refused(broker, version):
    """A will topic is a topic name: too deep, the CONNECT is refused (5.0:
    CONNACK 0x90; 3.1.1: closed without a CONNACK [MQTT-3.1.1 3.1.4-1])."""
    b = broker(max_topic_levels=2)
    c = M.Client(b, version=version)
    c.send(M.connect(uid(), version=version, will={"topic": "w/x/y", "payload": b"x"}))
    got = c.expect_closed()
    if version == 5:
        assert [(p.type, p.reason_code) for p in got] == [(M.CONNACK, 0x90)]
    else:
        assert got == []
    ok = raw(b, version=version, will={"topic": "w/x", "payload": b"x"})
    assert ok.connack.reason_code == 0


def test_max_topic_levels_0_is_no_limit(broker):
    b = broker(max_topic_levels=0)
    c = raw(b)
    assert c.subscribe((deep(1000), 0)).reason_codes == [0]
    c.publish(deep(1000), b"deep")
    assert c.recv_publish().payload == b"deep"
