"""A persistent session with a large queue (49,000 QoS 1 and 1,000 QoS 2
messages) moves to another node (docs/cluster.md, *A large moved session*):
while the node that receives it applies what came, its other clients and
the cluster must go on as before, and the moved session must get every
message once, in order.

The receiving node B is the Raft leader. A probe client on B subscribes to
a new filter (its SUBACK waits for a Raft commit and for the route applied
on every node), publishes to it (QoS 1) and pings, again and again, while
the session comes; its answers must come within PROBE_BOUND (below
`cluster_down_after`, 5 s), no leader may be elected (Raft's election
timeout is 600 ms to 1.2 s without a heartbeat) and no member taken for
dead meanwhile, and B's cluster thread must not run its 100 ms timer a
second or more late. Before, B unpacked and delivered every message of the
frames in its buffer on its cluster thread at once, which also runs Raft
and the channel (8 to 17 s for 20,000 to 30,000 messages under heavy
load), and the claim wrote the whole session to the store under its lock.
The nodes log at debug level (a line per moved message), as in the runs
that measured those stalls.

Two ways the session comes: the old owner's SessionState on the takeover,
and the same state coming late (the old owner stopped with SIGSTOP past
`cluster_claim_timeout`, so the claim resumes the session from its record
and the state follows as late messages into the attached session: all of
its frames reach B at once when the old owner runs again).
"""

import threading
import time

import faults
import mqttraw
from helpers import uid

WAIT = 30.0
N_MSGS = 50000
QOS2_EVERY = 50  # every 50th message is QoS 2: 1,000 of them
# seconds for a probe's answer: PINGRESP and its own publish come from B's
# workers; its SUBACK waits for a Raft commit on the leader B and for every
# live node to report the route applied, and the old owner's report comes on
# the same channel connection as the session's frames, behind them (and the
# old owner's own cluster thread may be late around the hand-over: open,
# docs/cluster.md *A large moved session*)
PROBE_BOUND = {"pingresp": 1.0, "puback+publish": 1.0, "suback": 4.0}
WINDOW = 500  # publishes in flight at once


def payloads(n):
    return [(f"{i:06d}".encode(), 2 if i % QOS2_EVERY == QOS2_EVERY - 1 else 1)
            for i in range(n)]


def publish_all(node, topic, msgs):
    """Publish msgs ((payload, qos) in order) on node, WINDOW at a time;
    returns once every one was acknowledged (PUBACK / PUBCOMP)."""
    p = mqttraw.connected(node, uid("bigpub"), 5)
    for start in range(0, len(msgs), WINDOW):
        window = msgs[start:start + WINDOW]
        out = bytearray()
        want = set()
        for payload, qos in window:
            pid = p.next_id()
            out += mqttraw.publish(topic, payload, qos, packet_id=pid)
            want.add(pid)
        p.send(out)
        while want:
            k = p.recv(WAIT)
            if k.type == mqttraw.PUBACK or k.type == mqttraw.PUBCOMP:
                assert k.reason_code in (0, None), k
                want.discard(k.packet_id)
            elif k.type == mqttraw.PUBREC:
                assert k.reason_code in (0, None), k
                p.pubrel(k.packet_id)
            else:
                raise AssertionError(f"unexpected {k}")
    p.disconnect()


def offline_session(node, cid, topic):
    """A persistent session on node subscribed to topic with QoS 2, its
    client gone."""
    s = mqttraw.connected(node, cid, 5, properties={"session_expiry_interval": 600})
    assert s.subscribe((topic, mqttraw.sub_options(qos=2))).reason_codes == [2]
    s.disconnect()


def receive_all(c, n, timeout):
    """Payloads of the PUBLISHes c receives (QoS 1 acknowledged, QoS 2
    completed, acks written once per read) until n came, then until
    nothing more for a second (what comes twice is in the list twice)."""
    got = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while True:
        acks = bytearray()
        while True:  # what is buffered first (it may have come with the CONNACK)
            raw = c._parse()
            if raw is None:
                break
            k = mqttraw.decode(raw[0], raw[1], raw[2], 5, raw[3])
            if k.type == mqttraw.PUBLISH:
                got.append(k.payload)
                if k.qos == 1:
                    acks += mqttraw.puback(k.packet_id)
                elif k.qos == 2:
                    acks += mqttraw.pubrec(k.packet_id)
            elif k.type == mqttraw.PUBREL:
                acks += mqttraw.pubcomp(k.packet_id)
        if acks:
            c.send(acks)
        now = time.monotonic()
        if len(got) >= n and quiet_until is None:
            quiet_until = now + 1.0
        end = quiet_until if quiet_until is not None else deadline
        if now >= end:
            return got
        try:
            c._fill(end)
        except mqttraw.Timeout:
            return got


class Probe(threading.Thread):
    """A client on node that subscribes to a new filter, publishes to it
    (QoS 1) and pings, over and over until stopped, and keeps the longest
    wait of each."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.worst = {"suback": 0.0, "puback+publish": 0.0, "pingresp": 0.0}
        self.rounds = 0
        self.error = None
        self.c = mqttraw.connected(node, uid("probe"), 5)
        self.topic = uid("probe/t")

    def timed(self, what, fn):
        t0 = time.monotonic()
        fn()
        took = time.monotonic() - t0
        self.worst[what] = max(self.worst[what], took)

    def round(self, k):
        t = f"{self.topic}/{k}"
        self.timed("suback", lambda: self.c.subscribe((t, mqttraw.sub_options(qos=1)),
                                                      timeout=WAIT))

        def pub():
            pid = self.c.publish(t, b"p%d" % k, qos=1)
            acked = delivered = False
            while not (acked and delivered):
                x = self.c.recv(WAIT)
                if x.type == mqttraw.PUBACK and x.packet_id == pid:
                    acked = True
                elif x.type == mqttraw.PUBLISH and x.payload == b"p%d" % k:
                    self.c.puback(x.packet_id)
                    delivered = True
                else:
                    raise AssertionError(f"probe: unexpected {x}")
        self.timed("puback+publish", pub)

        def ping():
            self.c.pingreq()
            self.c.expect(mqttraw.PINGRESP, WAIT)
        self.timed("pingresp", ping)

    def run(self):
        try:
            k = 0
            while not self.stop.is_set():
                self.round(k)
                k += 1
                self.rounds = k
                self.stop.wait(0.02)  # pacing between rounds
        except Exception as e:  # reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(WAIT * 2)
        assert not self.is_alive(), "the probe did not end"
        self.c.disconnect(wait=False)
        assert self.error is None, f"probe failed: {self.error!r}"
        return self.worst


def log_lines(node, needle):
    return [ln for ln in node.logtext().splitlines() if needle in ln]


def elections(nodes):
    return sum(len(log_lines(n, "leader of term")) for n in nodes)


def late_ticks(node):
    """The cluster thread's late 100 ms timers (ms), as the node logged
    them ("ran its 100 ms timer N ms after the last time")."""
    out = []
    for ln in log_lines(node, "ran its 100 ms timer"):
        try:
            out.append(int(ln.split("100 ms timer ")[1].split(" ms")[0]))
        except (IndexError, ValueError):
            pass
    return out


def big_move(cluster_factory, late):
    # debug logs (a line per moved message, as in the runs that measured the
    # stalls) make the work of applying the session larger
    extra = {"STARLING_MAX_QUEUED_BYTES": str(64 << 20), "STARLING_LOG_LEVEL": "debug"}
    if late:
        extra["STARLING_CLUSTER_CLAIM_TIMEOUT"] = "1500"
    c = cluster_factory(extra_env=extra)
    c.start()
    c.wait_healthy()
    faults.wait_until(lambda: faults.leader(c) is not None, WAIT, "a leader")
    b = faults.node_named(c, faults.leader(c))
    a, third = [n for n in c.nodes if n is not b]
    cid, topic = uid("big"), uid("big/t")
    offline_session(a, cid, topic)
    msgs = payloads(N_MSGS)
    t0 = time.monotonic()
    publish_all(a, topic, msgs)
    print(f"\n{len(msgs)} messages queued on {a.name} in {time.monotonic() - t0:.1f} s; "
          f"leader {b.name}")
    before_elections = elections(c.nodes)
    before_ticks = len(late_ticks(b))
    before_down = sum(len(log_lines(n, "its routes go (NodeDown)")) for n in c.nodes)
    if late:
        faults.pause(a)
    probe = None
    try:
        if not late:
            probe = Probe(b)
            probe.start()
        s = mqttraw.Client(b)
        t0 = time.monotonic()
        ack = s.connect(cid, clean=False, properties={"session_expiry_interval": 600,
                                                      "receive_maximum": 65535},
                        timeout=WAIT)
        connack = time.monotonic() - t0
        assert ack.reason_code == 0 and ack.session_present, ack
    finally:
        if late:
            faults.resume(a)
    if late:
        # the claim went on from the record; the state comes now
        probe = Probe(b)
        probe.start()
    t1 = time.monotonic()
    try:
        got = receive_all(s, len(msgs), timeout=120)
    finally:
        worst = probe.finish()
    took = time.monotonic() - t1
    ticks = late_ticks(b)[before_ticks:]
    print(f"CONNACK after {connack:.2f} s, {len(got)} received in {took:.1f} s; probe: "
          f"{probe.rounds} rounds, worst " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in worst.items()) +
          f"; {b.name}'s cluster thread late (ms): {ticks}; "
          f"elections {elections(c.nodes) - before_elections}")
    s.disconnect()
    if late:
        assert log_lines(b, f"the session state of '{cid}' from"), \
            "the state did not come late"
    want = [p for p, _ in msgs]
    assert len(got) == len(want) and got == want, (
        f"{len(got)} of {len(want)}; first difference at "
        f"{next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))}")
    assert elections(c.nodes) == before_elections, "a leader was elected meanwhile"
    assert faults.leader(c) == b.name
    assert sum(len(log_lines(n, "its routes go (NodeDown)")) for n in c.nodes) == before_down
    assert all(worst[k] < PROBE_BOUND[k] for k in worst), worst
    assert not [t for t in ticks if t >= 1000], ticks


def test_a_large_session_taken_over_leaves_its_new_node_answering(cluster_factory):
    """The old owner's SessionState brings 31,000 messages to the leader."""
    big_move(cluster_factory, late=False)


def test_a_large_session_state_that_comes_late_leaves_its_node_answering(cluster_factory):
    """The same state comes after the claim went on from the record (the
    old owner stopped past cluster_claim_timeout): taken as late messages
    into the attached session."""
    big_move(cluster_factory, late=True)


def test_a_large_session_taken_over_again_before_its_frames_came_hands_them_on(
        cluster_factory, tmp_path):
    """The session's client resumes on B from the record (its old node A
    stopped past cluster_claim_timeout), then moves on to C while A's
    frames of the session to B still wait in A's outbox (the debug hook
    STARLING_TEST_FWD_HOLD, as a full channel would hold them). When they
    reach B, the session is C's: B must hand what they bring on to C, and
    the client on C must get all 20,000 messages once, in order."""
    hold = tmp_path / "hold-to-b"
    c = cluster_factory(extra_env={"STARLING_MAX_QUEUED_BYTES": str(64 << 20),
                                   "STARLING_CLUSTER_CLAIM_TIMEOUT": "1500",
                                   "STARLING_TEST_FWD_HOLD": str(hold)})
    c.start()
    c.wait_healthy()
    # A, which is stopped below, a follower: a stopped leader leaves B's
    # claim waiting for an election as well, which under load can take
    # longer than the 1.5 s claim timeout (this first CONNACK was 0x88 in 2
    # of 3 whole runs of the suite on 2026-12-02, under load; which node led
    # then was not kept)
    ld = faults.wait_until(lambda: faults.leader(c), WAIT, "a leader")
    a = next(n for n in c.nodes if n is not faults.node_named(c, ld))
    b, third = [n for n in c.nodes if n is not a]
    cid, topic = uid("bigon"), uid("bigon/t")
    offline_session(a, cid, topic)
    msgs = payloads(20000)
    publish_all(a, topic, msgs)
    props = {"session_expiry_interval": 600, "receive_maximum": 65535}
    faults.pause(a)
    try:
        s = mqttraw.Client(b)
        ack = s.connect(cid, clean=False, properties=props, timeout=WAIT)
        assert ack.reason_code == 0 and ack.session_present, ack
    finally:
        hold.write_text(f"{faults.node_id(b):016x}\n")  # A's frames to B wait
        faults.resume(a)
    faults.wait_until(lambda: f"the session of '{cid}' moved to" in a.logtext(), WAIT,
                      f"{a.name} sending the session of {cid}")
    s.disconnect()
    s = mqttraw.Client(third)
    ack = s.connect(cid, clean=False, properties=props, timeout=WAIT)
    assert ack.reason_code == 0 and ack.session_present, ack
    hold.unlink()  # A's frames reach B now, and go on to C
    got = receive_all(s, len(msgs), timeout=120)
    s.disconnect()
    want = [p for p, _ in msgs]
    assert len(got) == len(want) and got == want, (
        f"{len(got)} of {len(want)}; first difference at "
        f"{next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))}")
    # they came to C from B, after the move (B's copy of the session,
    # surrendered to C, collects what still comes for it and sends it on)
    assert f"late message(s) of '{cid}' came from {faults.node_id(b):016x}" in third.logtext()
