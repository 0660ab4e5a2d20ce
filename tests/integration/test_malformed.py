"""Malformed and hostile input: 5.0 clients get DISCONNECT with the right
reason code then the close; 3.1.1 clients just get the close. Plus a bounded
random fuzz run."""

import random
import socket

import pytest

import mqttraw as M
from helpers import raw, uid

MALFORMED, PROTOCOL_ERROR, TOO_LARGE = 0x81, 0x82, 0x95


def _sub_body(filters_raw, version, pid=1):
    body = M.u16(pid)
    if version == 5:
        body += b"\x00"
    return body + filters_raw


def _pub_body(topic_raw, version, extra=b""):
    body = M.utf8(topic_raw)
    if version == 5:
        body += extra if extra else b"\x00"
    return body + b"payload"


# name: (bytes builder(version), 5.0 reason code(s), versions where mosquitto
# 2.0.11 deviates from the spec and the case is therefore starling_only)
CASES = {
    # mosquitto 5.0: closes without sending DISCONNECT 0x81
    "remaining-length-5-bytes": (lambda v: b"\x30\xff\xff\xff\xff\x7f", MALFORMED, {5}),
    "topic-invalid-utf8": (lambda v: M.packet(M.PUBLISH, 0, _pub_body(b"a/\xff\xfe", v)), MALFORMED, ()),
    "topic-surrogate-utf8": (lambda v: M.packet(M.PUBLISH, 0, _pub_body(b"a/\xed\xa0\x80", v)), MALFORMED, ()),
    "topic-with-nul": (lambda v: M.packet(M.PUBLISH, 0, _pub_body(b"a\x00b", v)), MALFORMED, ()),
    "subscribe-reserved-flags": (lambda v: M.subscribe(1, [("a", 0)], version=v, flags=0x0), MALFORMED, ()),
    "unsubscribe-reserved-flags": (lambda v: M.unsubscribe(1, ["a"], version=v, flags=0x0), MALFORMED, ()),
    "publish-qos3": (lambda v: M.packet(M.PUBLISH, 0x06, M.utf8("a") + b"\x00\x01" + (b"\x00" if v == 5 else b"") + b"x"), MALFORMED, ()),
    # [MQTT-3.1.1 3.8.3-3, MQTT-5.0 3.8.3-2]
    # no filters is a protocol error; mosquitto 5.0 sends 0x81
    "subscribe-no-filters": (lambda v: M.packet(M.SUBSCRIBE, 0x2, _sub_body(b"", v)), PROTOCOL_ERROR, {5}),
    "subscribe-options-reserved-bits": (lambda v: M.packet(M.SUBSCRIBE, 0x2, _sub_body(M.utf8("a") + b"\xc0", v)), MALFORMED, ()),
    # 5.0: QoS 3 and Retain Handling 3 in subscription options are protocol
    # errors; mosquitto sends 0x81
    "subscribe-qos3": (lambda v: M.packet(M.SUBSCRIBE, 0x2, _sub_body(M.utf8("a") + b"\x03", v)), PROTOCOL_ERROR, {5}),
    "subscribe-retain-handling-3": (lambda v: M.packet(M.SUBSCRIBE, 0x2, _sub_body(M.utf8("a") + b"\x30", v)), PROTOCOL_ERROR, {5}),
    "string-longer-than-packet": (lambda v: M.packet(M.PUBLISH, 0, b"\x00\x40abc"), MALFORMED, ()),
    # mosquitto ignores the extra byte and answers PINGRESP
    "pingreq-with-body": (lambda v: b"\xc0\x01\x00", MALFORMED, {4, 5}),
    "reserved-packet-type-0": (lambda v: b"\x00\x00", (MALFORMED, PROTOCOL_ERROR), ()),
    # mosquitto 5.0: closes without sending DISCONNECT 0x81
    "puback-too-short": (lambda v: b"\x40\x01\x00", MALFORMED, {5}),
}


def _case_params():
    out = []
    for name in sorted(CASES):
        for version in (4, 5):
            marks = [pytest.mark.starling_only] if version in CASES[name][2] else []
            out.append(pytest.param(name, version, marks=marks, id=f"{name}-{version}"))
    return out


@pytest.mark.parametrize("case,version", _case_params())
def test_MQTT_50_4_13_malformed_packet(broker, case, version):
    """[MQTT-3.1.1 4.8.0-1, MQTT-5.0 4.13.1-1] a malformed packet or protocol
    error closes the connection; 5.0 with DISCONNECT carrying the reason."""
    build, code, _ = CASES[case]
    b = broker()
    c = raw(b, version=version)
    c.send(build(version))
    if version == 5:
        c.expect_disconnect(code)
    else:
        c.expect_closed_without_disconnect()
    assert b.alive()


# 5.0-only property errors
PROP_CASES = {
    # mosquitto 2.0.11 sends 0x81 for a duplicate property (spec: protocol error)
    "duplicate-property": (
        M.packet(M.PUBLISH, 0, M.utf8("a") + M.encode_properties(
            [("content_type", "x"), ("content_type", "y")]) + b"p"), PROTOCOL_ERROR),
    "property-not-allowed-in-publish": (
        M.packet(M.PUBLISH, 0, M.utf8("a") + M.encode_properties(
            [("session_expiry_interval", 5)]) + b"p"), MALFORMED),
    "unknown-property-id": (
        M.packet(M.PUBLISH, 0, M.utf8("a") + b"\x02\x7f\x00" + b"p"), MALFORMED),
    "property-length-beyond-packet": (
        M.packet(M.PUBLISH, 0, M.utf8("a") + b"\x20\x01\x01"), MALFORMED),
    "subscription-identifier-in-publish-from-client": (
        M.packet(M.PUBLISH, 0, M.utf8("a") + M.encode_properties(
            [("subscription_identifier", 3)]) + b"p"), PROTOCOL_ERROR),
}


MOSQUITTO_DEVIATES = {
    "duplicate-property",
    # mosquitto 2.0.11 closes without a DISCONNECT
    "subscription-identifier-in-publish-from-client",
}


@pytest.mark.parametrize("case", [
    pytest.param(n, marks=[pytest.mark.starling_only] if n in MOSQUITTO_DEVIATES else [])
    for n in sorted(PROP_CASES)])
def test_MQTT_50_2_2_2_property_errors_v5(broker, case):
    """Property errors in a 5.0 packet: duplicates and out-of-range values are
    protocol errors (0x82), unknown or misplaced identifiers malformed (0x81)."""
    data, code = PROP_CASES[case]
    b = broker()
    c = raw(b)
    c.send(data)
    c.expect_disconnect(code)


@pytest.mark.parametrize("version", [4, 5])
def test_MQTT_oversized_packet_rejected_from_header(broker, version):
    """A packet whose announced remaining length exceeds max_packet_size is
    rejected from the fixed header alone: only the header is sent, and the
    server closes (5.0: DISCONNECT 0x95) without waiting for the body."""
    b = broker(max_packet_size=1000)
    c = raw(b, version=version)
    c.send(b"\x30" + M.varint(100000))
    if version == 5:
        c.expect_disconnect(TOO_LARGE)
    else:
        c.expect_closed_without_disconnect()


def _shutdown_write(c):
    try:
        c.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.mark.parametrize("cut", [1, 2, 5, 9])
def test_truncated_packet_then_close(broker, cut):
    """A packet cut short followed by the client closing its side: the
    server closes the connection and keeps serving others."""
    b = broker()
    c = raw(b)
    full = M.publish("trunc/topic", b"0123456789", qos=1, packet_id=3)
    c.send(full[:cut])
    _shutdown_write(c)
    got = c.expect_closed()
    assert all(p.type == M.DISCONNECT for p in got), got
    d = raw(b)
    d.pingreq()
    assert d.expect(M.PINGRESP)


def test_truncated_connect_then_close(broker):
    b = broker()
    c = M.Client(b)
    c.send(M.connect(uid())[:7])
    _shutdown_write(c)
    assert c.expect_closed() == []


def test_fuzz_random_input_after_connect(broker):
    """300 random inputs (fixed seed), each on its own connection after a
    valid CONNECT: each connection ends (the client half-closes; the server
    closes), and the broker still serves a normal client afterwards."""
    b = broker()
    rng = random.Random(0x5EED)
    for i in range(300):
        version = 5 if i % 2 else 4
        c = M.Client(b, version=version, timeout=5)
        ack = c.connect("fuzz-%d" % i, version=version)
        assert ack.reason_code == 0
        kind = rng.random()
        if kind < 0.4:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            # roughly framed: a random first byte and a matching length
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 48)))
            data = bytes([rng.randrange(256)]) + M.varint(len(body)) + body
            if kind > 0.8:
                data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        c.try_send(data)
        _shutdown_write(c)
        try:
            c.expect_closed(timeout=5)
        except M.MQTTError:
            pass  # undecodable bytes from a bogus exchange: still closed
        except AssertionError as e:
            raise AssertionError(f"fuzz input {i} {data.hex()}: {e}") from None
        c.close()
        assert b.alive(), f"broker died on fuzz input {i}: {data.hex()}\n{b.stderr_text()}"
    s = raw(b)
    s.subscribe(("after/fuzz", 1))
    p = raw(b, version=4)
    p.publish("after/fuzz", b"still alive", qos=1)
    p.expect(M.PUBACK)
    assert s.recv_publish().payload == b"still alive"
