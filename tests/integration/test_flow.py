"""Flow control for slow subscribers (issue 12): fast publishers are paused
instead of losing messages, each slow_subscriber_policy does what
docs/configuration.md says, max_publisher_pause bounds a pause, and the
drops are counted in $SYS."""

import socket
import threading
import time

import pytest

import mqttraw as M
from helpers import raw, uid

pytestmark = pytest.mark.starling_only  # Starling's flow control and $SYS counters


def wait_sys(b, topic, want, timeout=15):
    """Wait (bounded) until the $SYS `topic` reads `want`; returns it."""
    c = raw(b, version=4)
    c.subscribe((topic, 0))
    deadline = time.monotonic() + timeout
    last = None
    try:
        while time.monotonic() < deadline:
            try:
                p = c.recv_publish(timeout=max(0.1, deadline - time.monotonic()))
            except M.Timeout:
                break
            last = p.payload.decode()
            if last == str(want):
                return last
    finally:
        c.close()
    raise AssertionError(f"{topic} is {last!r}, expected {want!r}")


def slow_reader(sub, total, got, per_read=65536, pause=0.004):
    """Read `total` PUBLISH packets from a raw socket at a bounded rate (a
    slow subscriber), appending (publisher, seq) to `got`."""
    def run():
        sub.sock.settimeout(30)
        while len(got) < total:
            while True:
                pkt = sub._parse()
                if pkt is None:
                    break
                p = M.decode(pkt[0], pkt[1], pkt[2], sub.version, pkt[3])
                if p.type == M.PUBLISH:
                    w, n = p.payload.split(b" ", 2)[:2]
                    got.append((int(w), int(n)))
                    if p.qos == 1:
                        sub.puback(p.packet_id)
            if len(got) >= total:
                break
            data = sub.sock.recv(per_read)
            if not data:
                return
            sub.buf += data
            time.sleep(pause)  # the subscriber's pace, not synchronisation
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def publisher(b, k, n, qos, payload, acks, done):
    """An unpaced publisher: n messages "k seq payload", 100 per write; QoS 1:
    collects the PUBACKed sequence numbers."""
    def run():
        c = raw(b, version=4)
        c.sock.settimeout(60)
        pid = 0
        for start in range(0, n, 100):
            data = bytearray()
            for i in range(start, min(n, start + 100)):
                pid = i % 65535 + 1
                data += M.publish("fan/in/%d" % k, b"%d %d " % (k, i) + payload, qos=qos,
                                  packet_id=pid if qos else None, version=4)
            c.send(data)
            if qos:
                for i in range(start, min(n, start + 100)):
                    a = c.expect(M.PUBACK, timeout=60)
                    assert a.packet_id == i % 65535 + 1
                    acks[k].append(i)
        c.pingreq()
        c.expect(M.PINGRESP, timeout=60)
        done[k] = time.monotonic()
        c.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def check_order(got, n_pub, n):
    per = {k: [] for k in range(n_pub)}
    for k, i in got:
        per[k].append(i)
    for k in range(n_pub):
        assert per[k] == list(range(n)), \
            f"publisher {k}: {len(per[k])} of {n} messages, in order: {per[k][:5]}..."


def test_fan_in_qos0_default_config_no_drops_publishers_slowed(broker):
    """The issue's scenario, small: 8 unpaced QoS 0 publishers, one `#`
    subscriber reading slowly, default configuration: every message arrives,
    in per-publisher order, nothing is dropped, and the publishers are held
    back: when the last one is done (its PINGRESP came after every message
    was handled), the subscriber has already read most of the stream."""
    b = broker(sys_interval=1)
    sub = raw(b, version=4)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sub.subscribe(("#", 0))
    n_pub, n, payload = 8, 4000, b"x" * 1000
    total = n_pub * n
    got = []
    reader = slow_reader(sub, total, got)
    done = {}
    pubs = [publisher(b, k, n, 0, payload, None, done) for k in range(n_pub)]
    for t in pubs:
        t.join(120)
    assert len(done) == n_pub, "a publisher did not finish"
    read_when_done = len(got)
    reader.join(120)
    assert len(got) == total, f"{len(got)} of {total} messages arrived"
    check_order(got, n_pub, n)
    # Without flow control the publishers finish at once while the reader
    # has read little (and most messages are dropped). With it, what is
    # unread when they finish is bounded by the subscriber's queue (at most
    # twice max_queued_bytes, 4 MiB by default: ~3,800 messages of 1 KB
    # each counted with their overhead), its write buffer and the sockets.
    unread_bound = 2 * 3800 + 256 + 8000
    assert total - read_when_done <= unread_bound, \
        f"publishers finished with {total - read_when_done} messages unread"
    wait_sys(b, "$SYS/broker/messages/dropped", 0)
    wait_sys(b, "$SYS/broker/publishers/pause_expired", 0)
    sub.close()


def test_fan_in_qos1_every_acknowledged_message_arrives(broker):
    """QoS 1 publishers and a slow QoS 1 subscriber with a small queue
    (256 KiB): every message the broker PUBACKed arrives, in order."""
    b = broker(max_queued_bytes=262144, sys_interval=1)
    sub = raw(b, version=4)
    sub.subscribe(("#", 1))
    n_pub, n, payload = 4, 1500, b"q" * 1000
    acks = {k: [] for k in range(n_pub)}
    got = []
    reader = slow_reader(sub, n_pub * n, got)
    done = {}
    pubs = [publisher(b, k, n, 1, payload, acks, done) for k in range(n_pub)]
    for t in pubs:
        t.join(120)
    assert len(done) == n_pub
    for k in range(n_pub):
        assert acks[k] == list(range(n))
    reader.join(120)
    check_order(got, n_pub, n)
    wait_sys(b, "$SYS/broker/messages/dropped", 0)


# ------------------------------------------------------------ each policy

def stuck_subscriber(b, topic):
    """A QoS 1 subscriber that received message 0 and acknowledges nothing:
    with max_inflight_messages 1, everything after waits in its queue."""
    sub = raw(b, version=5)
    sub.subscribe((topic, 1))
    return sub


def publish_acks(pub, topic, rng):
    out = []
    for i in rng:
        pid = pub.publish(topic, b"%d" % i, qos=1)
        a = pub.expect(M.PUBACK, timeout=10)
        assert a.packet_id == pid
        out.append(a.reason_code)
    return out


def first_in_flight(sub, pub, topic):
    """Message 0, received (not acknowledged) by sub: the window is full."""
    assert publish_acks(pub, topic, [0]) == [0]
    p = sub.recv_publish(ack=False)
    assert p.payload == b"0"
    return p


def drain(sub, first, n):
    """Acknowledge message `first` and read the next n, acknowledging each."""
    sub.puback(first.packet_id)
    return [sub.recv_publish().payload for _ in range(n)]


def test_policy_drop_new(broker):
    """drop_new: with message 0 inflight and 3 queued, messages 4..9 are
    refused with PUBACK 0x97 (never accepted and then lost), counted per
    reason, and the subscriber gets 0..3."""
    b = broker(slow_subscriber_policy="drop_new", max_queued_messages=3,
               max_inflight_messages=1, sys_interval=1)
    sub = stuck_subscriber(b, "pol/new")
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "pol/new")
    assert publish_acks(pub, "pol/new", range(1, 10)) == [0, 0, 0] + [0x97] * 6
    assert drain(sub, first, 3) == [b"1", b"2", b"3"]
    wait_sys(b, "$SYS/broker/messages/dropped/slow_new", 6)
    wait_sys(b, "$SYS/broker/messages/dropped", 6)
    assert "slow subscriber" in b.stderr_text()


def test_policy_drop_oldest(broker):
    """drop_oldest: every message is accepted; the oldest queued ones make
    room (1..6 are lost although acknowledged: what this policy trades for
    freshness); the subscriber gets 0, 7, 8, 9."""
    b = broker(slow_subscriber_policy="drop_oldest", max_queued_messages=3,
               max_inflight_messages=1, sys_interval=1)
    sub = stuck_subscriber(b, "pol/old")
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "pol/old")
    assert publish_acks(pub, "pol/old", range(1, 10)) == [0] * 9
    assert drain(sub, first, 3) == [b"7", b"8", b"9"]
    wait_sys(b, "$SYS/broker/messages/dropped/slow_oldest", 6)


def test_policy_disconnect(broker):
    """disconnect: the message that finds the queue full is refused (0x97)
    and the subscriber is disconnected with DISCONNECT 0x97; counted."""
    b = broker(slow_subscriber_policy="disconnect", max_queued_messages=3,
               max_inflight_messages=1, sys_interval=1)
    sub = stuck_subscriber(b, "pol/disc")
    pub = raw(b, version=5)
    first_in_flight(sub, pub, "pol/disc")
    assert publish_acks(pub, "pol/disc", range(1, 5)) == [0, 0, 0, 0x97]
    sub.expect_disconnect(0x97, timeout=10)
    wait_sys(b, "$SYS/broker/clients/slow_disconnected", 1)
    wait_sys(b, "$SYS/broker/messages/dropped/slow_disconnect", 1)


def test_backpressure_max_publisher_pause_releases_publisher(broker):
    """backpressure: the message that takes the queue over its bound is
    accepted and the publisher paused (its next message is not read);
    after max_publisher_pause (500 ms) the publisher resumes, the slow
    subscriber's messages are refused for it (0x97), counted and logged
    with its client id, and every accepted message reaches it."""
    b = broker(max_queued_messages=3, max_inflight_messages=1, max_publisher_pause=500,
               sys_interval=1)
    cid = uid("slow")
    sub = raw(b, cid, version=5)
    sub.subscribe(("bp/t", 1))
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "bp/t")
    # 1..3 fill the queue, 4 goes over its bound: accepted, publisher paused
    assert publish_acks(pub, "bp/t", range(1, 5)) == [0, 0, 0, 0]
    t0 = time.monotonic()
    pid = pub.publish("bp/t", b"5", qos=1)
    a = pub.expect(M.PUBACK, timeout=10)
    waited = time.monotonic() - t0
    assert a.packet_id == pid and a.reason_code == 0x97
    assert 0.4 <= waited < 5, f"PUBACK after {waited:.2f} s"
    assert drain(sub, first, 4) == [b"1", b"2", b"3", b"4"]
    wait_sys(b, "$SYS/broker/publishers/pause_expired", 1)
    wait_sys(b, "$SYS/broker/messages/dropped/slow_new", 1)
    assert f"slow subscriber '{cid}'" in b.stderr_text()


def test_backpressure_publisher_resumes_when_subscriber_drains(broker):
    """backpressure, no expiry: a paused publisher resumes as soon as the
    subscriber reads its queue below the low-water mark; nothing dropped."""
    b = broker(max_queued_messages=4, max_inflight_messages=1, max_publisher_pause=0,
               sys_interval=1)
    sub = stuck_subscriber(b, "bp/r")
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "bp/r")
    assert publish_acks(pub, "bp/r", range(1, 6)) == [0] * 5  # 5 is over: paused
    pid = pub.publish("bp/r", b"6", qos=1)
    with pytest.raises(M.Timeout):
        pub.expect(M.PUBACK, timeout=1.0)  # not read while paused
    assert drain(sub, first, 6) == [b"%d" % i for i in range(1, 7)]
    a = pub.expect(M.PUBACK, timeout=10)
    assert a.packet_id == pid and a.reason_code == 0
    wait_sys(b, "$SYS/broker/messages/dropped", 0)


def test_paused_publisher_does_not_block_unrelated_pair(broker):
    """One worker: a publisher paused for a stuck subscriber (no expiry)
    does not hold back an unrelated publisher and subscriber on the same
    worker, which exchange 200 QoS 1 messages meanwhile."""
    b = broker(workers=1, max_queued_messages=2, max_inflight_messages=1,
               max_publisher_pause=0)
    stuck = stuck_subscriber(b, "bp/stuck")
    pub = raw(b, version=5)
    first_in_flight(stuck, pub, "bp/stuck")
    assert publish_acks(pub, "bp/stuck", range(1, 4)) == [0] * 3  # paused after 3
    pending = pub.publish("bp/stuck", b"4", qos=1)
    other_sub = raw(b, version=5)
    other_sub.subscribe(("other/t", 1))
    other_pub = raw(b, version=5)
    for i in range(200):
        other_pub.publish("other/t", b"o%d" % i, qos=1)
        assert other_pub.expect(M.PUBACK).reason_code == 0
        assert other_sub.recv_publish().payload == b"o%d" % i
    with pytest.raises(M.Timeout):
        pub.expect(M.PUBACK, timeout=0.2)  # still paused
    stuck.close()  # the stuck subscriber goes away: its session ends
    a = pub.expect(M.PUBACK, timeout=10)
    assert a.packet_id == pending


def test_publisher_never_waits_on_its_own_session(broker):
    """A client subscribed (QoS 1) to the topic it publishes to, that
    acknowledges nothing it receives, with no max_publisher_pause: it is not
    paused for its own queue (it could never drain: its PUBACKs would not be
    read). Its queue takes it to twice its bound, further messages are
    refused with 0x97, and nothing stalls."""
    b = broker(max_queued_messages=3, max_inflight_messages=1, max_publisher_pause=0)
    c = raw(b, version=5)
    c.subscribe(("self/t", 1))
    codes = []
    for i in range(10):
        pid = c.publish("self/t", b"%d" % i, qos=1)
        while True:
            p = c.recv(timeout=5)
            if p.type == M.PUBACK:
                assert p.packet_id == pid
                codes.append(p.reason_code)
                break
            assert p.type == M.PUBLISH and p.payload == b"0"  # the one inflight
            first = p
    # 0 inflight, 1..6 queued (twice the bound of 3), 7..9 refused
    assert codes == [0] * 7 + [0x97] * 3
    c.puback(first.packet_id)
    assert [c.recv_publish().payload for _ in range(6)] == [b"%d" % i for i in range(1, 7)]


def test_refused_qos2_ends_the_exchange_and_frees_the_packet_id(broker):
    """drop_new, a QoS 2 publisher: the message the full queue refuses gets
    PUBREC 0x97 (the exchange ends there [MQTT-4.3.3]), and its packet id
    can carry a new message at once, which is delivered once there is room
    (not taken for a duplicate)."""
    b = broker(slow_subscriber_policy="drop_new", max_queued_messages=1,
               max_inflight_messages=1)
    sub = stuck_subscriber(b, "q2/t")
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "q2/t")
    pub.publish("q2/t", b"1", qos=2, packet_id=7)
    rec = pub.expect(M.PUBREC)
    assert (rec.packet_id, rec.reason_code) == (7, 0)
    pub.pubrel(7)
    assert pub.expect(M.PUBCOMP).packet_id == 7
    pub.publish("q2/t", b"2", qos=2, packet_id=8)  # the queue (1) is full
    rec = pub.expect(M.PUBREC)
    assert (rec.packet_id, rec.reason_code) == (8, 0x97)
    assert drain(sub, first, 1) == [b"1"]
    pub.publish("q2/t", b"3", qos=2, packet_id=8)  # same id, a new message
    rec = pub.expect(M.PUBREC)
    assert (rec.packet_id, rec.reason_code) == (8, 0)
    pub.pubrel(8)
    assert pub.expect(M.PUBCOMP).packet_id == 8
    assert sub.recv_publish().payload == b"3"


def test_refused_qos1_from_311_publisher_closes_without_puback(broker):
    """drop_new, an MQTT 3.1.1 QoS 1 publisher: PUBACK has no reason code,
    so a refused message is never acknowledged: the connection is closed
    and the client publishes it again when it reconnects."""
    b = broker(slow_subscriber_policy="drop_new", max_queued_messages=1,
               max_inflight_messages=1)
    sub = stuck_subscriber(b, "q311/t")
    pub = raw(b, version=5)
    first = first_in_flight(sub, pub, "q311/t")
    assert publish_acks(pub, "q311/t", [1]) == [0]  # fills the queue
    old = raw(b, version=4)
    old.publish("q311/t", b"2", qos=1, packet_id=5)
    got = old.expect_closed_without_disconnect(timeout=10)
    assert not [p for p in got if p.type == M.PUBACK], got
    assert drain(sub, first, 1) == [b"1"]
