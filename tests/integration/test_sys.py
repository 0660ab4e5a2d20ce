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
