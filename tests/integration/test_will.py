"""Will messages."""

import time

import pytest

import mqttraw as M
from helpers import paho, raw, raw_marker, uid


def _watch(b, topic, qos=0, version=5):
    s = raw(b, version=version)
    s.subscribe([(topic, qos), (topic + "/marker", 0)])
    return s


def _will_client(b, topic, payload=b"will", version=5, **kw):
    will = {"topic": topic, "payload": payload, "qos": kw.pop("will_qos", 0),
            "retain": kw.pop("will_retain", False)}
    if "will_properties" in kw:
        will["properties"] = kw.pop("will_properties")
    return raw(b, version=version, will=will, **kw)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_8_will_sent_on_abnormal_close(broker, version):
    """[MQTT-3.1.1 3.1.2-8, MQTT-5.0 3.1.2-8]
    closing the socket without DISCONNECT publishes the will."""
    b = broker()
    s = _watch(b, "will/abn", version=version)
    w = _will_client(b, "will/abn", b"gone", version=version)
    w.close()
    p = s.recv_publish()
    assert (p.topic, p.payload, p.retain) == ("will/abn", b"gone", False)


def test_MQTT_311_3_1_2_8_will_sent_on_reset(broker):
    b = broker()
    s = _watch(b, "will/rst")
    w = _will_client(b, "will/rst", b"reset")
    w.abort()
    assert s.recv_publish().payload == b"reset"


@pytest.mark.parametrize("violation", [
    # mosquitto 2.0.11 does not publish the will after a second CONNECT
    pytest.param(M.connect("again", version=4), marks=pytest.mark.starling_only, id="second-connect"),
    pytest.param(b"\x36\x05\x00\x01a\x00\x01", id="publish-qos3"),
])
def test_MQTT_311_3_1_2_8_will_sent_on_protocol_error(broker, violation):
    """[MQTT-3.1.1 3.1.2-8] a connection closed by the server for a protocol
    violation publishes its will."""
    b = broker()
    s = _watch(b, "will/perr", version=4)
    w = _will_client(b, "will/perr", b"violated", version=4)
    w.send(violation)
    w.expect_closed()
    assert s.recv_publish().payload == b"violated"


def test_MQTT_311_3_1_2_8_will_sent_on_keep_alive_timeout(broker):
    """The will is published when the server closes a silent keep alive 1 s
    connection (bounded wait; mosquitto 2.0.11 takes ~5 s)."""
    b = broker()
    s = _watch(b, "will/ka")
    w = _will_client(b, "will/ka", b"timed out", keepalive=1)
    t0 = time.monotonic()
    p = s.recv_publish(timeout=9)
    assert p.payload == b"timed out"
    assert time.monotonic() - t0 >= 1.0
    w.close()


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_311_3_1_2_10_no_will_after_normal_disconnect(broker, version):
    """[MQTT-3.1.1 3.1.2-10/3.14.4-3, MQTT-5.0 3.1.2-10/3.14.4-3] DISCONNECT (0x00) removes the
    will: it is not published."""
    b = broker()
    s = _watch(b, "will/norm", version=version)
    w = _will_client(b, "will/norm", b"must not arrive", version=version)
    w.send(M.disconnect(0x00 if version == 5 else None, version=version))
    w.expect_closed()
    raw_marker(s, s, "will/norm/marker")


def test_MQTT_50_3_14_2_disconnect_with_will_message_0x04(broker):
    """5.0 DISCONNECT reason 0x04 (disconnect with will message): the will is
    published."""
    b = broker()
    s = _watch(b, "will/x04")
    w = _will_client(b, "will/x04", b"asked for")
    w.send(M.disconnect(0x04))
    w.expect_closed()
    assert s.recv_publish().payload == b"asked for"


def test_MQTT_311_3_1_2_17_will_qos_and_retain(broker):
    """[MQTT-3.1.1 3.1.2-14/17] will QoS 1 delivered at QoS 1; will retain 1 stores
    it as a retained message."""
    b = broker()
    s = _watch(b, "will/qr", qos=2)
    w = _will_client(b, "will/qr", b"retained will", will_qos=1, will_retain=True)
    w.abort()
    p = s.recv_publish()
    assert (p.payload, p.qos) == (b"retained will", 1)
    late = raw(b)
    late.subscribe(("will/qr", 2))
    p = late.recv_publish()
    assert (p.payload, p.qos, p.retain) == (b"retained will", 1, True)


def test_MQTT_50_3_1_3_will_properties_passed_through(broker):
    """5.0 will properties (payload format, content type, response topic,
    correlation data, user properties in order) reach the subscriber."""
    b = broker()
    s = _watch(b, "will/props")
    users = [("k1", "v1"), ("k2", "v2"), ("k1", "v3")]
    w = _will_client(b, "will/props", b"{}", will_properties=[
        ("payload_format_indicator", 1), ("content_type", "application/json"),
        ("response_topic", "will/reply"), ("correlation_data", b"\x00\x01corr"),
        *[("user_property", u) for u in users]])
    w.abort()
    p = s.recv_publish()
    pr = p.properties
    assert pr.get("payload_format_indicator") == 1
    assert pr.get("content_type") == "application/json"
    assert pr.get("response_topic") == "will/reply"
    assert pr.get("correlation_data") == b"\x00\x01corr"
    assert pr.get("user_property") == users


def test_MQTT_50_3_1_3_9_will_delay_sent_after_delay(broker):
    """[MQTT-5.0 3.1.3-9] with Will Delay Interval 1 the will is published after
    the delay, not at once."""
    b = broker()
    s = _watch(b, "will/delay")
    w = _will_client(b, "will/delay", b"late", will_properties={"will_delay_interval": 1},
                     clean=False, properties={"session_expiry_interval": 30})
    t0 = time.monotonic()
    w.abort()
    p = s.recv_publish(timeout=6)
    elapsed = time.monotonic() - t0
    assert p.payload == b"late"
    assert 0.9 <= elapsed <= 4.0, f"will after {elapsed:.2f} s"


def test_MQTT_50_3_1_3_9_will_delay_cancelled_by_reconnect(broker):
    """[MQTT-5.0 3.1.3-9] the will is not published if the client reconnects
    (same session) before the Will Delay Interval passes."""
    b = broker()
    s = _watch(b, "will/cancel")
    cid = uid()
    w = _will_client(b, "will/cancel", b"must not arrive", client_id=cid,
                     will_properties={"will_delay_interval": 2},
                     clean=False, properties={"session_expiry_interval": 30})
    w.abort()
    w2 = raw(b, cid, clean=False, properties={"session_expiry_interval": 30})
    assert w2.connack.session_present
    time.sleep(2.5)  # let the will delay pass
    raw_marker(s, s, "will/cancel/marker")
    w2.disconnect(0)


def test_MQTT_311_3_1_2_will_paho_v311(broker):
    b = broker()
    s = paho(b, version=4)
    s.subscribe("will/paho", 1)
    w = paho(b, version=4, will={"topic": "will/paho", "payload": b"paho will", "qos": 1})
    w.stop()
    m = s.get()
    assert (m.topic, m.payload, m.qos) == ("will/paho", b"paho will", 1)
