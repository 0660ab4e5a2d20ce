"""Retained messages."""

import pytest

import mqttraw as M
from helpers import paho, raw, raw_marker


def _publish_retained(c, topic, payload, qos=1):
    pid = c.publish(topic, payload, qos=qos, retain=True)
    if qos == 1:
        c.expect(M.PUBACK)
    elif qos == 2:
        c.expect(M.PUBREC)
        c.pubrel(pid)
        c.expect(M.PUBCOMP)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_3_1_6_retained_sent_to_new_subscriber(broker, version):
    """[MQTT-3.1.1 3.3.1-5/6, MQTT-5.0 3.3.1-5/9] a retained message is stored and sent to later
    subscribers with RETAIN 1 [MQTT-3.1.1 3.3.1-8]."""
    b = broker()
    c = raw(b, version=version)
    _publish_retained(c, "ret/a", b"stored")
    s = raw(b, version=version)
    s.subscribe(("ret/a", 1))
    p = s.recv_publish()
    assert (p.topic, p.payload, p.retain, p.qos) == ("ret/a", b"stored", True, 1)


def test_MQTT_311_3_3_1_5_retained_replaced(broker):
    b = broker()
    c = raw(b)
    _publish_retained(c, "ret/rep", b"first")
    _publish_retained(c, "ret/rep", b"second")
    s = raw(b)
    s.subscribe([("ret/rep", 0), ("ret/rep/marker", 0)])
    p = s.recv_publish()
    assert (p.payload, p.retain) == (b"second", True)
    raw_marker(s, c, "ret/rep/marker")


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_3_1_10_empty_payload_clears_retained(broker, version):
    """[MQTT-3.1.1 3.3.1-10/11, MQTT-5.0 3.3.1-6/7]
    a retained PUBLISH with an empty payload removes the
    retained message; it is not stored itself."""
    b = broker()
    c = raw(b, version=version)
    _publish_retained(c, "ret/clr", b"gone soon")
    _publish_retained(c, "ret/clr", b"")
    s = raw(b, version=version)
    s.subscribe([("ret/clr", 0), ("ret/clr-marker", 0)])
    raw_marker(s, c, "ret/clr-marker")


def test_MQTT_311_3_3_1_9_live_delivery_retain_flag_0(broker):
    """[MQTT-3.1.1 3.3.1-9, MQTT-5.0 3.3.1-12] a message delivered to an existing
    subscription has RETAIN 0 even if published with RETAIN 1."""
    b = broker()
    s = paho(b, version=4)
    s.subscribe("ret/live", 0)
    c = paho(b, version=4)
    c.publish("ret/live", b"x", qos=1, retain=True)
    m = s.get()
    assert (m.payload, m.retain) == (b"x", False)
    late = paho(b, version=4)
    late.subscribe("ret/live", 0)
    m = late.get()
    assert (m.payload, m.retain) == (b"x", True)


@pytest.mark.parametrize("sub_qos", [0, 1])
def test_MQTT_311_3_3_1_retained_qos_downgraded(broker, sub_qos):
    """A retained QoS 2 message is sent at the subscription's QoS."""
    b = broker()
    c = raw(b)
    _publish_retained(c, "ret/qos", b"q2", qos=2)
    s = raw(b)
    s.subscribe(("ret/qos", sub_qos))
    p = s.recv_publish()
    assert (p.payload, p.qos, p.retain) == (b"q2", sub_qos, True)


def test_MQTT_311_3_3_1_retained_wildcard_subscriber_gets_all(broker):
    b = broker()
    c = raw(b)
    for t in ("retw/a", "retw/b/c", "retw"):
        _publish_retained(c, t, t.encode())
    _publish_retained(c, "other/x", b"no")
    s = raw(b)
    s.subscribe([("retw/#", 0), ("retw-marker", 0)])
    got = sorted(s.recv_publish().topic for _ in range(3))
    assert got == ["retw", "retw/a", "retw/b/c"]
    raw_marker(s, c, "retw-marker")


def test_MQTT_311_3_3_1_retained_qos0_stored(broker):
    """QoS 0 retained messages are stored too [MQTT-3.1.1 3.3.1-7]."""
    b = broker()
    c = raw(b, version=4)
    c.publish("ret/q0", b"zero", qos=0, retain=True)
    c.pingreq()
    c.expect(M.PINGRESP)
    s = raw(b, version=4)
    s.subscribe(("ret/q0", 1))
    p = s.recv_publish()
    assert (p.payload, p.qos, p.retain) == (b"zero", 0, True)


def test_MQTT_311_3_3_1_retained_not_matching_dollar_with_hash(broker):
    """Retained messages on '$' topics are not sent for a '#' subscription."""
    b = broker()
    c = raw(b)
    _publish_retained(c, "$retd/x", b"hidden")
    s = raw(b)
    s.subscribe([("#", 0)])
    c.publish("retd-marker", b"m")
    p = s.recv_publish()
    while p.topic.startswith("$SYS/"):  # mosquitto may have retained $SYS
        p = s.recv_publish()
    assert p.topic == "retd-marker", p


def test_MQTT_50_3_3_1_retain_not_available_disconnect_0x9a(broker):
    """retain_available false: a 5.0 PUBLISH with RETAIN 1 gets DISCONNECT
    0x9A retain not supported."""
    b = broker(retain_available=False)
    c = raw(b)
    assert c.connack.properties.get("retain_available") == 0
    c.publish("noret/t", b"x", qos=1, retain=True)
    c.expect_disconnect(0x9A)
