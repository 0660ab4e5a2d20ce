"""$SYS topics (Mosquitto's names), published every sys_interval seconds."""

import re
import time

import mqttraw as M
from helpers import raw

REQUIRED = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
]


def _collect(s, until, timeout):
    """Read $SYS PUBLISHes into a dict topic -> latest payload until
    until(dict) is true; bounded by `timeout` seconds."""
    seen = {}
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"$SYS condition not met within {timeout} s; saw {seen}"
        try:
            p = s.recv(timeout=left)
        except M.Timeout:
            continue
        if p.type == M.PUBLISH:
            seen[p.topic] = p.payload.decode("utf-8", "replace")
    return seen


def _int(v):
    m = re.match(r"^\s*(\d+)", v)
    assert m, f"not a number: {v!r}"
    return int(m.group(1))


def test_sys_broker_topics_published(broker):
    """Subscribing to $SYS/broker/# yields the standard statistics with
    plausible values."""
    b = broker(sys_interval=1)
    s = raw(b)
    a = s.subscribe(("$SYS/broker/#", 0))
    assert a.reason_codes == [0]
    # values from one interval: wait until this client is counted in both
    seen = _collect(s, lambda d: all(t in d for t in REQUIRED)
                    and _int(d["$SYS/broker/clients/connected"]) >= 1
                    and _int(d["$SYS/broker/clients/total"]) >= 1, timeout=5)
    assert re.search(r"\d", seen["$SYS/broker/version"]), seen["$SYS/broker/version"]
    assert re.match(r"^\d+( seconds)?$", seen["$SYS/broker/uptime"]), seen["$SYS/broker/uptime"]
    for t in REQUIRED[2:]:
        _int(seen[t])
    assert _int(seen["$SYS/broker/clients/connected"]) >= 1
    assert all(t.startswith("$SYS/broker/") for t in seen)


def test_sys_clients_connected_reflects_connections(broker):
    """$SYS/broker/clients/connected follows the number of connected clients."""
    b = broker(sys_interval=1)
    s = raw(b)
    s.subscribe(("$SYS/broker/clients/connected", 0))
    others = [raw(b) for _ in range(3)]
    _collect(s, lambda d: d.get("$SYS/broker/clients/connected") == "4", timeout=5)
    for o in others[:2]:
        o.disconnect()
    _collect(s, lambda d: d.get("$SYS/broker/clients/connected") == "2", timeout=5)


def test_sys_counters_increase(broker):
    """messages/received and bytes/received grow as clients publish."""
    b = broker(sys_interval=1)
    s = raw(b)
    s.subscribe(("$SYS/broker/messages/received", 0))
    first = _collect(s, lambda d: "$SYS/broker/messages/received" in d, timeout=5)
    before = _int(first["$SYS/broker/messages/received"])
    c = raw(b)
    for i in range(20):
        c.publish("sysc/t", b"x", qos=1)
        c.expect(M.PUBACK)
    _collect(s, lambda d: "$SYS/broker/messages/received" in d
             and _int(d["$SYS/broker/messages/received"]) >= before + 20, timeout=5)


def test_MQTT_311_4_7_2_1_sys_wildcard_subscription(broker):
    """'$SYS/#' matches $SYS topics (while '#' alone would not)."""
    b = broker(sys_interval=1)
    s = raw(b)
    s.subscribe(("$SYS/#", 0))
    p = s.recv_publish(timeout=5)
    assert p.topic.startswith("$SYS/")


SPOOF = "$SYS/broker/clients/connected"


def _spoof_and_marker(b, version):
    """A subscriber of $SYS/# and of a marker topic; a client of `version`
    publishes a spoofed statistic at QoS 0, 1 and 2 (retained), then the
    marker. Returns (the acknowledgement packets the publisher got, what
    the subscriber received before the marker, what a later subscriber of
    $SYS/# gets retained before its marker)."""
    sub = raw(b)
    sub.subscribe([("$SYS/#", 2), ("sys-test/marker", 0)])
    pub = raw(b, version=version)
    acks = []
    for qos in (0, 1, 2):
        pid = pub.publish(SPOOF, b"999", qos=qos, retain=True)
        if qos:
            p = pub.recv()
            acks.append(p)
            assert p.packet_id == pid
            if p.type == M.PUBREC and p.reason_code < 0x80:
                pub.pubrel(pid)
                assert pub.expect(M.PUBCOMP).packet_id == pid
    pub.publish("sys-test/marker", b"m", qos=1)
    assert pub.expect(M.PUBACK).reason_code in (0, 0x10)
    before = []
    while True:
        p = sub.recv_publish()
        if p.topic == "sys-test/marker":
            break
        before.append(p)
    late = raw(b)
    late.subscribe([("$SYS/#", 0), ("sys-test/marker", 0)])
    pub.publish("sys-test/marker", b"m2", qos=1)
    pub.expect(M.PUBACK)
    retained = []
    while True:
        p = late.recv_publish()
        if p.topic == "sys-test/marker":
            break
        retained.append(p)
    return acks, before, retained


def test_MQTT_50_4_7_2_client_publish_to_sys_refused_0x87(broker):
    """(MQTT 5.0 section 4.7.2) the server should prevent clients from using
    $-topics to exchange messages with other clients; $SYS is the broker's.
    A 5.0 client's QoS 1/2 PUBLISH there is refused with 0x87 (Not
    authorized), QoS 0 is dropped; no subscriber sees the spoofed value,
    and nothing is retained."""
    b = broker(sys_interval=0)
    acks, before, retained = _spoof_and_marker(b, 5)
    assert [(p.type, p.reason_code) for p in acks] == [(M.PUBACK, 0x87), (M.PUBREC, 0x87)]
    assert before == [] and retained == []


def test_MQTT_311_4_7_2_client_publish_to_sys_dropped(broker):
    """(MQTT 3.1.1 section 4.7.2) $-topics are the server's; 3.1.1 has no
    reason code to refuse a PUBLISH: as Mosquitto does, a
    client's PUBLISH to $SYS is acknowledged normally (PUBACK; PUBREC,
    PUBREL, PUBCOMP) and dropped: no subscriber sees it, nothing is
    retained."""
    b = broker(sys_interval=0)
    acks, before, retained = _spoof_and_marker(b, 4)
    assert [(p.type, p.reason_code) for p in acks] == [(M.PUBACK, 0), (M.PUBREC, 0)]
    assert before == [] and retained == []
