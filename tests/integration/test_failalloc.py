"""No acknowledgement without its write (issue 8 item 5): a broker whose own
allocations fail at random never acknowledges a PUBLISH that it did not
store and queue for every matching subscriber, and does not crash.

How the allocations fail: tests/failalloc/failalloc.c, an LD_PRELOAD shim
built by CMake next to the broker (build/<dir>/tests/failalloc/
libfailalloc.so). It fails malloc/calloc/realloc calls made from the
broker's own code (the main executable, into which Starling's modules are
linked statically), not those of libc, libuv or LMDB, and only while armed:
the test arms it with SIGUSR2 once the broker runs and the subscribers are
set up, and disarms it the same way, waiting each time for the shim's
"failalloc: armed" / "failalloc: disarmed" line: the signal is handled by
whichever broker thread the kernel picks, and on a loaded machine the
other threads can run on for a while before it is (a check made right
after kill(2) could still meet failures). The integration suite runs against the
ASan build; AddressSanitizer interposes malloc itself, and an LD_PRELOAD
library placed before its runtime still works, provided ASan's start-up
check of the library order is turned off (ASAN_OPTIONS=
verify_asan_link_order=0): the shim is found first and forwards to ASan's
allocator (dlsym RTLD_NEXT), so ASan still checks every block. That keeps
the test on the same binary as the rest of the suite, with its leak and
memory checks, rather than on a separate build with a compile-time hook
that would have to be threaded through every allocation on those paths.

What is checked: every QoS 1/2 PUBLISH acknowledged with success (PUBACK /
PUBREC reason < 0x80) while allocations failed is delivered, after a
restart of the broker from its store, to both persistent subscribers (one
offline during the failures, one online), and every acknowledged retained
one (one in five) is retained; the broker refused some
publishes (5.0: 0x97; 3.1.1: closed) rather than none, and exits cleanly
with no sanitizer report.
"""

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

import mqttraw as M
from conftest import STARLING_BIN, is_starling
from helpers import failalloc_sweep, uid

pytestmark = pytest.mark.starling_only

SHIM = Path(os.environ.get(
    "STARLING_TEST_FAILALLOC",
    str(Path(STARLING_BIN).resolve().parents[1] / "tests" / "failalloc" / "libfailalloc.so")))
TOPIC = "fa/t"
FILTER = "fa/#"
N_PER_CLIENT = 150
# the failures are pseudo-random: a failing seed reproduces a failure
SEED = int(os.environ.get("STARLING_TEST_FAILALLOC_SEED", "7"))
PROB = float(os.environ.get("STARLING_TEST_FAILALLOC_PROB", "0.03"))
SESSION_EXPIRY = {"session_expiry_interval": 3600}


def shim_env(prob, seed):
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {
        "LD_PRELOAD": str(SHIM),
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0",
        "FAILALLOC_PROB": str(prob),
        "FAILALLOC_SEED": str(seed),
    }


def nth_sweep_env():
    """The shim's environment for a sweep that fails the Nth allocation of
    round N (FAILALLOC_NTH, no random failures); skips without the shim."""
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built (cmake --build builds target failalloc)")
    env = shim_env(0, 1)
    del env["FAILALLOC_PROB"]
    env["FAILALLOC_NTH"] = "1"
    return env


def nth_rounds(one_round, limit=500):
    """A FAILALLOC_NTH sweep: one_round(k) for k = 1, 2, ..., each returning
    whether the shim failed a call in it, until one in which it failed
    none (the operation made fewer than k allocations: each failed once).
    Returns the number of rounds."""
    for k in range(1, limit):
        if not one_round(k):
            return k
    pytest.fail(f"the sweep did not end within {limit} rounds")


def toggle(b, state):
    """Arm or disarm the shim (state "armed" / "disarmed") and wait until
    the broker's handler says the new state is in effect."""
    line = f"failalloc: {state}"
    before = b.stderr_text().splitlines().count(line)
    b.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while b.stderr_text().splitlines().count(line) == before:
        assert time.monotonic() < deadline, f"the shim did not report {state!r}"
        assert b.alive(), "the broker exited"
        time.sleep(0.005)


def store_conf(data, **extra):
    """The broker configuration of these tests: a store under data."""
    return dict(persistence=True, data_dir=os.path.join(data, "store"),
                max_queued_messages=100000, log_level="error", **extra)


def offline_subscriber(b, topic):
    """A new persistent 5.0 subscriber of topic (QoS 2), left offline;
    returns its client id."""
    cid = uid("off")
    c, _ = subscriber(b, cid, 5)
    c.subscribe((topic, M.sub_options(qos=2)))
    c.disconnect()
    return cid


def subscriber(b, cid, version):
    """Connect the persistent subscriber `cid`; returns the client and its
    CONNACK."""
    c = M.Client(b, version=version)
    if version == 5:
        ack = c.connect(cid, clean=False, properties=SESSION_EXPIRY)
    else:
        ack = c.connect(cid, clean=False)
    assert ack.reason_code == 0, ack
    return c, ack


def publish_all(b, version, tag, n):
    """Publish n QoS 1/2 messages, reconnecting whenever the broker closes
    the connection or refuses it. Returns (acknowledged, refused) payloads."""
    acked, refused = set(), set()
    i = 0
    c = None
    deadline = time.monotonic() + 120
    while i < n and time.monotonic() < deadline:
        if c is None:
            try:
                c = M.Client(b, version=version)
                ack = c.connect(uid("pub"), clean=True)
            except (M.MQTTError, OSError, AssertionError):
                c = None
                continue
            if ack.reason_code != 0:
                c.close()
                c = None
                continue
        payload = f"{tag}-{i}".encode()
        qos = 1 + i % 2
        # every 5th is retained, on a topic of its own
        topic, retain = (f"fa/r/{tag}-{i}", True) if i % 5 == 0 else (TOPIC, False)
        try:
            pid = c.publish(topic, payload, qos=qos, retain=retain)
            p = c.recv()
            while p.type not in (M.PUBACK, M.PUBREC):
                p = c.recv()
            assert p.packet_id == pid, p
            if p.reason_code < 0x80:
                acked.add(payload)
            else:
                assert version == 5 and p.reason_code == 0x97, p
                refused.add(payload)
            if p.type == M.PUBREC and p.reason_code < 0x80:
                c.pubrel(pid)
                q = c.recv()
                while q.type != M.PUBCOMP:
                    q = c.recv()
        except (M.MQTTError, OSError):
            # closed: 3.1.1 refuses so (or any version, out of memory on
            # another path); the message was not acknowledged
            if payload not in acked:
                refused.add(payload)
            c.close()
            c = None
        i += 1
    if c is not None:
        c.disconnect()
    assert i == n, f"published only {i} of {n} within the time limit"
    return acked, refused


def publish_resending(b, version, tag, n):
    """Publish n QoS 1/2 messages as a client with a persistent session
    does: when the broker closes the connection, reconnect to the same
    session and resend the unacknowledged PUBLISH with DUP and its packet
    id, or the PUBREL of one past PUBREC [MQTT-3.1.1 4.4.0-1, MQTT-5.0
    4.4.0-1]. Returns the acknowledged payloads (a 5.0 refusal, 0x97, ends
    a message's attempts)."""
    cid = uid("pubr")
    acked = set()
    c = None
    deadline = time.monotonic() + 120
    for i in range(n):
        payload = f"{tag}-{i}".encode()
        qos, pid = 1 + i % 2, i + 1  # ids never repeat: no stale id is hit
        dup, phase = False, "pub"
        while phase != "done":
            assert time.monotonic() < deadline, f"published only {i} of {n} within the time limit"
            if c is None:
                try:
                    c = M.Client(b, version=version)
                    kw = {"properties": SESSION_EXPIRY} if version == 5 else {}
                    ack = c.connect(cid, clean=False, **kw)
                except (M.MQTTError, OSError, AssertionError):
                    c = None
                    continue
                if ack.reason_code != 0:
                    c.close()
                    c = None
                    continue
            try:
                if phase == "pub":
                    c.publish(TOPIC, payload, qos=qos, dup=dup, packet_id=pid)
                    p = c.recv()
                    while p.type not in (M.PUBACK, M.PUBREC):
                        p = c.recv()
                    assert p.packet_id == pid, p
                    if p.reason_code >= 0x80:
                        assert version == 5 and p.reason_code == 0x97, p
                        phase = "done"
                        continue
                    acked.add(payload)
                    phase = "rel" if qos == 2 else "done"
                if phase == "rel":
                    c.pubrel(pid)
                    q = c.recv()
                    while q.type != M.PUBCOMP:
                        q = c.recv()
                    phase = "done"
            except (M.MQTTError, OSError):
                c.close()
                c = None
                dup = True
    if c is not None:
        c.disconnect()
    return acked


def retained_now(b):
    """The payloads retained under fa/r/# on b, as a new subscriber gets
    them (before a marker published after it subscribed)."""
    r = M.Client(b, version=5)
    r.connect(uid("ret"))
    r.subscribe([("fa/r/#", 1), ("fa/m", 1)])
    got = collect(r, publish_marker(b, "fa/m"))
    r.disconnect()
    return got


def retained_of(acked):
    return {x for x in acked if int(x.split(b"-")[-1]) % 5 == 0}


def received_until(c, marker):
    """The payloads c receives before `marker` (published after the rest),
    in order."""
    got = []
    while True:
        p = c.recv_publish(timeout=10)
        if p.payload == marker:
            return got
        got.append(p.payload)


def publish_marker(b, topic):
    """Publish a new marker payload on topic (QoS 1, acknowledged); returns
    it."""
    marker = b"marker-" + uid().encode()
    p = M.Client(b, version=5)
    p.connect(uid("pub"))
    p.publish(topic, marker, qos=1)
    assert p.expect(M.PUBACK).reason_code == 0
    p.disconnect()
    return marker


def offline_received(b, cid, topic):
    """What the offline persistent 5.0 subscriber `cid` of `topic` receives
    on its next connection to b, in order (up to a marker published on
    topic after it connected)."""
    s, ack = subscriber(b, cid, 5)
    assert ack.session_present, cid
    marker = publish_marker(b, topic)
    got = received_until(s, marker)
    s.disconnect()
    return got


def collect(c, marker):
    """The set of payloads received by c until `marker`."""
    return set(received_until(c, marker))


@pytest.mark.skipif(not is_starling(), reason="Starling only")
def test_no_acknowledgement_without_its_write(broker):
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built (cmake --build builds target failalloc)")
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        conf = store_conf(data)
        b = broker(_env=shim_env(PROB, SEED), **conf)
        offline, online = uid("off"), uid("on")
        for cid in (offline, online):
            c, _ = subscriber(b, cid, 5)
            c.subscribe((FILTER, M.sub_options(qos=2)))
            if cid == offline:
                c.disconnect()
            else:
                live = c  # stays connected, reads nothing until the end

        toggle(b, "armed")
        acked5, refused5 = publish_all(b, 5, "v5", N_PER_CLIENT)
        acked3, refused3 = publish_all(b, 4, "v311", N_PER_CLIENT)
        # a persistent publisher resends what was not acknowledged
        resent = publish_resending(b, 4, "v311r", N_PER_CLIENT)
        resent |= publish_resending(b, 5, "v5r", N_PER_CLIENT)
        toggle(b, "disarmed")
        live.close()
        # every acknowledged retained message is retained (in memory)...
        want = retained_of(acked5 | acked3)
        assert want, "no retained message was acknowledged"
        missing = sorted(want - retained_now(b))
        assert not missing, f"acknowledged but not retained: {missing[:10]}"
        b.stop()
        failures = [l for l in b.stderr_text().splitlines() if l.startswith("failalloc:")]
        assert failures and failures[-1] != "failalloc: 0 allocations failed", failures

        acked = acked5 | acked3 | resent
        assert acked, "nothing was acknowledged: the test proves nothing"
        assert refused5 or refused3, "nothing was refused: no failure reached the publish path"

        # Restarted from the store, without the shim: each persistent
        # session holds every message that was acknowledged.
        b2 = broker(**conf)
        subs = {cid: subscriber(b2, cid, 5) for cid in (offline, online)}
        for cid, (c, ack) in subs.items():
            assert ack.session_present, cid
        marker = publish_marker(b2, TOPIC)
        for cid, (c, _) in subs.items():
            got = collect(c, marker)
            missing = sorted(acked - got)
            assert not missing, f"{cid}: acknowledged but not delivered: {missing[:10]}"
            c.disconnect()
        # ... and in the store
        missing = sorted(want - retained_now(b2))
        assert not missing, f"acknowledged but not retained after restart: {missing[:10]}"

    finally:
        shutil.rmtree(data, ignore_errors=True)


N_RETAINED = 20


def _subscribe_round(b, version, marker):
    """One round of the sweep below: a new subscriber to fa/s/# (and to
    fa/m), the shim armed for its SUBSCRIBE only. Returns None when the
    broker refused it (closed the connection, or a failure code in the
    SUBACK), else the retained payloads it got before `marker`."""
    c = M.Client(b, version=version)
    c.connect(uid("sw"), clean=True)
    toggle(b, "armed")
    try:
        pid = c.subscribe([("fa/s/#", 1), ("fa/m", 1)], expect=False)
        early = []
        p = c.recv()
        while p.type != M.SUBACK:
            early.append(p)  # the server may send before its SUBACK
            p = c.recv()
        assert p.packet_id == pid, p
    except M.ConnectionClosed:
        return None
    finally:
        toggle(b, "disarmed")
    try:
        if any(rc >= 0x80 for rc in p.reason_codes):
            return None
        pub = M.Client(b, version=5)
        pub.connect(uid("pub"))
        pub.publish("fa/m", marker, qos=1)
        assert pub.expect(M.PUBACK).reason_code == 0
        pub.disconnect()
        c.pending = early + c.pending
        return collect(c, marker)
    except M.ConnectionClosed:
        return None
    finally:
        c.close()


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_gets_every_retained_message_or_is_refused(broker, version):
    """The retained messages a new subscription must get [MQTT-3.1.1
    3.3.1-6, MQTT-5.0 3.3.1-9]: each allocation made while a SUBSCRIBE is
    handled fails in turn, one per round (FAILALLOC_NTH), and each round
    ends with every retained message delivered, or the subscription
    refused; never a successful SUBACK with a message silently missing
    (what test_no_acknowledgement_without_its_write met when its failures
    were not yet off)."""
    env = nth_sweep_env()
    b = broker(_env=env, log_level="error")
    want = {b"r%d" % i for i in range(N_RETAINED)}
    p = M.Client(b, version=5)
    p.connect(uid("pub"))
    for i in range(N_RETAINED):
        p.publish(f"fa/s/{i}", b"r%d" % i, qos=1, retain=True)
        assert p.expect(M.PUBACK).reason_code < 0x80  # 0x10: no subscriber yet
    p.disconnect()

    refused = complete = 0
    for k in range(1, 500):
        before = b.stderr_text().count("failalloc: failed call")
        got = _subscribe_round(b, version, b"marker-%d" % k)
        failed = b.stderr_text().count("failalloc: failed call") > before
        if got is None:
            assert failed, f"round {k}: refused with no allocation failed"
            refused += 1
        else:
            missing = sorted(want - got)
            assert not missing, f"round {k}: subscribed, but retained messages missing: {missing}"
            complete += 1
        if not failed:
            break  # the SUBSCRIBE made fewer than k allocations: all were failed once
    else:
        pytest.fail("the sweep did not end within 500 rounds")
    # the sweep reached the retained messages: at least one per message
    print(f"sweep: {k} rounds, {refused} refused, {complete} complete")
    assert k > N_RETAINED, k
    assert refused, "no failure refused a subscription: the sweep proves nothing"
    b.stop()


def _pubrec_armed(b, c, send, others=None):
    """send() (a QoS 2 PUBLISH on c, returning its packet id) with the shim
    armed, and the PUBREC that answers it; None when the broker closed the
    connection (c closed then). Packets before the PUBREC are skipped, or,
    with `others`, must be of those types."""
    toggle(b, "armed")
    try:
        pid = send()
        p = c.recv()
        while p.type != M.PUBREC:
            assert others is None or p.type in others, p
            p = c.recv()
        assert p.packet_id == pid, p
    except (M.MQTTError, OSError):
        c.close()
        return None
    finally:
        toggle(b, "disarmed")
    return p


def _publish_round(b, c, payload):
    """One round of the sweep below: the shim armed for one QoS 2 PUBLISH
    of `payload` on c (5.0) and its PUBREC only. Returns ("acked", c),
    ("refused", c) for a PUBREC 0x97, or ("closed", None) when the broker
    closed the connection (not acknowledged: either outcome is allowed)."""
    p = _pubrec_armed(b, c, lambda: c.publish("fa/q", payload, qos=2))
    if p is None:
        return "closed", None
    if p.reason_code >= 0x80:
        assert p.reason_code == 0x97, p
        return "refused", c
    try:
        c.pubrel(p.packet_id)
        c.expect(M.PUBCOMP)
    except (M.MQTTError, OSError):
        c.close()
        return "acked", None  # PUBREC 0x00: received, stored
    return "acked", c


@pytest.mark.skipif(not is_starling(), reason="Starling only")
def test_publish_refused_for_memory_leaves_no_row_after_sigkill(broker):
    """A QoS 2 PUBLISH refused because an allocation failed while it was
    queued for its subscribers (broker_publish -ENOMEM: 5.0 PUBREC 0x97)
    is not delivered after a SIGKILL and a restart: the rows it had put
    for the persistent sessions that did take it are not committed.
    Before, its batch was committed with them, and the sessions' deletes
    came only later (when the session flushed the rejected message: an
    offline one only after it came back), so the restarted broker
    delivered a message its publisher was told was refused (and publishes
    again). Each allocation of a PUBLISH fails in turn, one per round
    (FAILALLOC_NTH), with two offline persistent QoS 2 subscribers; after
    the SIGKILL and restart each gets every acknowledged message exactly
    once and none of the refused ones."""
    env = nth_sweep_env()
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        conf = store_conf(data)
        b = broker(_env=env, **conf)
        subs = [offline_subscriber(b, "fa/q") for _ in range(2)]

        c = None

        def publish_ok(payload):
            """A QoS 2 PUBLISH with the shim disarmed: acknowledged (after
            every batch submitted before its own committed: in order)."""
            nonlocal c
            if c is None:
                c = M.Client(b, version=5)
                assert c.connect(uid("pub"), clean=True).reason_code == 0
            pid = c.publish("fa/q", payload, qos=2)
            rec = c.expect(M.PUBREC)
            assert rec.packet_id == pid and rec.reason_code == 0, rec
            c.pubrel(pid)
            c.expect(M.PUBCOMP)

        def publish_armed(payload):
            nonlocal c
            what, c = _publish_round(b, c, payload)
            return what

        outcome = failalloc_sweep(publish_ok, publish_armed,
                                  lambda: b.stderr_text().count("failalloc: failed call"))
        c.close()
        b.stop(signal.SIGKILL, check=False)

        b2 = broker(**conf)
        got = {}
        clients = {cid: subscriber(b2, cid, 5) for cid in subs}
        p = M.Client(b2, version=5)
        p.connect(uid("pub"))
        marker = b"marker-" + uid().encode()
        p.publish("fa/q", marker, qos=1)
        assert p.expect(M.PUBACK).reason_code == 0
        p.disconnect()
        for cid, (s, ack) in clients.items():
            assert ack.session_present, cid
            got[cid] = []
            while True:
                m = s.recv_publish(timeout=10)
                if m.payload == marker:
                    break
                got[cid].append(m.payload)
            s.disconnect()
        for cid, seq in got.items():
            counts = {x: seq.count(x) for x in set(seq)}
            back = sorted(x for x in outcome["refused"] if x in counts)
            assert not back, f"{cid}: refused (0x97), delivered after the restart: {back}"
            missing = sorted(outcome["acked"] - set(counts))
            assert not missing, f"{cid}: acknowledged, not delivered: {missing}"
            twice = sorted(x for x, n in counts.items() if n > 1)
            assert not twice, f"{cid}: delivered more than once: {twice}"
        b2.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _received_then_resent(b, connect, pid, payload):
    """One round of the sweep below: `payload` published as QoS 2 with
    packet id `pid` (the shim disarmed) and received (PUBREC 0x00), its
    PUBREL not sent; the client disconnects, connects again to its session
    and resends the PUBLISH (DUP 1, same id) with the shim armed. Returns
    (what, c): what is "acked" (PUBREC < 0x80), "refused" (PUBREC >= 0x80)
    or "closed" (no PUBREC), c the connection (None when closed)."""
    c = connect()
    c.publish("fa/d", payload, qos=2, packet_id=pid)
    rec = c.expect(M.PUBREC)
    assert rec.packet_id == pid and rec.reason_code == 0, rec
    c.disconnect()  # waits for the broker's close: the id stays recorded
    c = connect()
    p = _pubrec_armed(b, c, lambda: c.publish("fa/d", payload, qos=2, dup=True, packet_id=pid),
                      others=(M.DISCONNECT,))  # 5.0: closed with a reason
    if p is None:
        return "closed", None
    return ("refused" if p.reason_code >= 0x80 else "acked"), c


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.parametrize("version", [4, 5])
def test_failed_allocation_on_a_qos2_resend_of_a_received_message(broker, version):
    """A QoS 2 PUBLISH whose packet id is recorded (received, PUBREC 0x00
    sent, its PUBREL not yet come) is resent with DUP 1 on the client's next
    connection, and each allocation made while the broker handles the
    resend fails in turn, one per round (FAILALLOC_NTH). The resend is a
    duplicate [MQTT-3.1.1 4.3.3-2, MQTT-5.0 4.3.3-10]: it is acknowledged
    (PUBREC 0x00) or, out of memory, the connection is closed without an
    answer (the client resends it on its next one); never refused (5.0
    0x97: the client would take a message that was received and delivered
    for not received, while the broker kept its id, so that the client's
    next message with that id was taken for a duplicate: acknowledged and
    never delivered). After each round the client publishes a new message
    with the same packet id, as it may once the exchange is over. The
    offline persistent subscriber gets each message exactly once."""
    env = nth_sweep_env()
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        b = broker(_env=env, **store_conf(data))
        sub_cid, pub_cid = offline_subscriber(b, "fa/d"), uid("pubd")

        def connect():
            c = M.Client(b, version=version)
            kw = {"properties": SESSION_EXPIRY} if version == 5 else {}
            ack = c.connect(pub_cid, clean=False, **kw)
            assert ack.reason_code == 0, ack
            return c

        def complete(c, pid):
            """PUBREL for pid, PUBCOMP back."""
            c.pubrel(pid)
            comp = c.expect(M.PUBCOMP)
            assert comp.packet_id == pid and comp.reason_code == 0, comp

        outcome = {"acked": [], "refused": [], "closed": []}
        sent = []
        for k in range(1, 500):
            pid = k
            payload = b"q%d" % k
            before = b.stderr_text().count("failalloc: failed call")
            what, c = _received_then_resent(b, connect, pid, payload)
            failed = b.stderr_text().count("failalloc: failed call") > before
            outcome[what].append(payload)
            sent.append(payload)
            if what == "closed":
                # a client resends on its next connection until answered
                c = connect()
                c.publish("fa/d", payload, qos=2, dup=True, packet_id=pid)
                rec = c.expect(M.PUBREC)
                assert rec.packet_id == pid and rec.reason_code == 0, rec
            if what != "refused":
                complete(c, pid)
            # the exchange is over (a refusal ends it): the id is free for
            # a new message [MQTT-5.0 4.3.3-9]
            fresh = b"n%d" % k
            c.publish("fa/d", fresh, qos=2, packet_id=pid)
            rec = c.expect(M.PUBREC)
            assert rec.packet_id == pid and rec.reason_code == 0, rec
            complete(c, pid)
            sent.append(fresh)
            c.disconnect()
            if not failed:
                break  # the resend made fewer than k allocations: each failed once
        else:
            pytest.fail("the sweep did not end within 500 rounds")
        print(f"sweep: {k} rounds, " + ", ".join(f"{w} {len(v)}" for w, v in outcome.items()))
        assert len(outcome["closed"]) + len(outcome["refused"]) > 0, \
            "no failure reached the resend: the sweep proves nothing"

        got = offline_received(b, sub_cid, "fa/d")
        counts = {x: got.count(x) for x in set(got)}
        lost = [x for x in sent if x not in counts]
        twice = sorted(x for x, n in counts.items() if n > 1)
        assert not outcome["refused"], \
            f"received (PUBREC 0x00), resend refused, delivered: {outcome['refused']}; " \
            f"acknowledged, never delivered: {lost}"
        assert not lost, f"acknowledged, never delivered: {lost}"
        assert not twice, f"delivered more than once: {twice}"
        b.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _connect_served(b, cid, version, given_up, attempts=24):
    """Connect `cid` to its session on b, past a worker held by
    STARLING_TEST_ACK_CLOSED_HOLD: the kernel hands each connection to one
    of the workers' listeners (SO_REUSEPORT, by a hash of its addresses and
    ports: a coin toss with two workers), and the held one answers nothing,
    so a CONNECT without its CONNACK within 2 s is given up (counted in
    given_up[0]) and made again on a new connection. A CONNECT given up on
    a worker that was only slow is harmless: it takes the session over and
    then finds its connection closed. With 8 attempts of 5 s, all 8 went to
    the held worker once in CI (1 in 256 for each held round)."""
    kw = {"properties": SESSION_EXPIRY} if version == 5 else {}
    for _ in range(attempts):
        c = M.Client(b, version=version)
        try:
            ack = c.connect(cid, clean=False, timeout=2, **kw)
        except M.Timeout:
            c.close()
            given_up[0] += 1
            continue
        assert ack.reason_code == 0 and ack.session_present, ack
        return c
    pytest.fail(f"no CONNACK for {cid} in {attempts} connections")


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.parametrize("version", [4, 5])
def test_a_resend_after_a_close_while_acknowledging_waits_for_the_original(broker, version):
    """A fresh connection's first QoS 2 PUBLISH, each of its allocations
    failing in turn (FAILALLOC_NTH), as in CI's failure of
    test_no_acknowledgement_without_its_write: the failure of the
    allocation that queues the PUBREC closed the connection before the
    message's batch was submitted. The client's resend (DUP 1) on its next
    connection, served by another worker, then had its duplicate's empty
    batch committed first and was answered PUBREC 0x00 on the strength of
    an id whose message was not stored yet, and was lost when that batch
    then failed, or when the broker died first. Here the closing worker is
    held after queuing (STARLING_TEST_ACK_CLOSED_HOLD), the client resends
    and completes the exchange on the other worker, and the broker is
    SIGKILLed while the worker is still held. Every message acknowledged
    (PUBREC 0x00) reaches the offline persistent subscriber once."""
    env = nth_sweep_env()
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    hold = os.path.join(data, "hold")
    env["STARLING_TEST_ACK_CLOSED_HOLD"] = hold
    conf = dict(store_conf(data), workers=2, log_level="warn")
    try:
        b = broker(_env=env, **conf)
        sub_cid, pub_cid = offline_subscriber(b, "fa/h"), uid("pubh")
        subscriber(b, pub_cid, version)[0].disconnect()  # its session, for _connect_served
        acked, held, given_up = [], 0, [0]

        def one_round(k):
            nonlocal b, held
            pid, payload = k, b"h%d" % k
            # this round's id: a worker late from the last is not held. Whole
            # at once (a rename): an empty file, as open(hold, "w") leaves it
            # for a moment, holds any worker
            with open(hold + ".new", "w") as f:
                f.write(str(pid))
            os.replace(hold + ".new", hold)
            c = _connect_served(b, pub_cid, version, given_up)  # no worker held yet
            before = b.stderr_text().count("failalloc: failed call")
            p = _pubrec_armed(b, c, lambda: c.publish("fa/h", payload, qos=2, packet_id=pid),
                              others=(M.DISCONNECT,))
            failed = b.stderr_text().count("failalloc: failed call") > before
            if p is not None and p.reason_code >= 0x80:
                assert version == 5 and p.reason_code == 0x97, p  # refused: the exchange ends
                c.disconnect()
                os.unlink(hold)
                return failed
            if p is None:
                # closed unanswered: resent on the next connection until answered
                c = _connect_served(b, pub_cid, version, given_up)
                c.publish("fa/h", payload, qos=2, dup=True, packet_id=pid)
                p = c.expect(M.PUBREC)
                assert p.packet_id == pid and p.reason_code == 0, p
            c.pubrel(pid)
            comp = c.expect(M.PUBCOMP)
            assert comp.packet_id == pid and comp.reason_code == 0, comp
            acked.append(payload)
            c.disconnect()
            if f"closed while queuing the acknowledgement of publish {pid}\n" in b.stderr_text():
                held += 1
                b.stop(signal.SIGKILL, check=False)  # the closing worker still held
                os.unlink(hold)
                b = broker(_env=dict(env, FAILALLOC_NTH=str(k + 1)), **conf)  # the sweep goes on
            else:
                os.unlink(hold)
            return failed

        k = nth_rounds(one_round)
        print(f"sweep: {k} rounds, {held} held, {given_up[0]} CONNECT(s) given up")
        assert held, "no connection closed while queuing its PUBREC: the test proves nothing"

        got = offline_received(b, sub_cid, "fa/h")
        lost = [x for x in acked if x not in got]
        twice = sorted({x for x in got if got.count(x) > 1})
        assert not lost, f"acknowledged (PUBREC 0x00), never delivered: {lost}"
        assert not twice, f"delivered more than once: {twice}"
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _armed_answer(b, c, send, answer):
    """send() on c with the shim armed, and the packet of type `answer` that
    follows: (that packet, or None when the broker closed the connection
    (5.0: with a DISCONNECT), and whether the shim failed a call)."""
    before = b.stderr_text().count("failalloc: failed call")
    toggle(b, "armed")
    try:
        send()
        got = c.recv()
        assert got.type in (answer, M.DISCONNECT), got  # 5.0: closed with a reason
    except (M.MQTTError, OSError):
        got = None
    finally:
        toggle(b, "disarmed")
    if got is not None and got.type == M.DISCONNECT:
        got = None
    return got, b.stderr_text().count("failalloc: failed call") > before


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.parametrize("version", [4, 5])
def test_failed_allocation_on_a_pubrel_keeps_the_id_until_its_deletion_is_stored(broker, version):
    """A persistent publisher's QoS 2 exchanges, each PUBREL handled with
    each of its allocations failing in turn, one per round (FAILALLOC_NTH).
    Once the client has the PUBCOMP it may reuse the packet id [MQTT-3.1.1
    4.3.3-2, MQTT-5.0 4.3.3-9], so the PUBCOMP comes only once the id's
    deletion is stored; else the connection closes and the client sends the
    PUBREL again on its next one. After a restart from the store, a new
    message with each id is delivered. Before, a PUBCOMP went out although
    the deletion's batch had failed: the id stayed stored, and after the
    restart the new message with it was taken for a duplicate, acknowledged
    and never delivered."""
    env = nth_sweep_env()
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        conf = store_conf(data)
        b = broker(_env=env, **conf)
        sub_cid, pub_cid = offline_subscriber(b, "fa/c"), uid("pubc")

        def exchange(b, c, pid, payload):
            """A whole QoS 2 exchange of payload with packet id pid on c."""
            c.publish("fa/c", payload, qos=2, packet_id=pid)
            rec = c.expect(M.PUBREC)
            assert (rec.packet_id, rec.reason_code) == (pid, 0), rec
            c.pubrel(pid)
            comp = c.expect(M.PUBCOMP)
            assert (comp.packet_id, comp.reason_code) == (pid, 0), comp

        closed = 0

        def one_round(k):
            nonlocal closed
            pid = k
            c = subscriber(b, pub_cid, version)[0]
            c.publish("fa/c", b"c%d" % k, qos=2, packet_id=pid)
            rec = c.expect(M.PUBREC)
            assert (rec.packet_id, rec.reason_code) == (pid, 0), rec
            comp, failed = _armed_answer(b, c, lambda: c.pubrel(pid), M.PUBCOMP)
            if comp is None:
                closed += 1
                c.close()
                # [MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1] no PUBCOMP: the PUBREL again
                c = subscriber(b, pub_cid, version)[0]
                c.pubrel(pid)
                comp = c.expect(M.PUBCOMP)
                # 0x92: the deletion was stored, only its answer was not sent
                assert comp.packet_id == pid and comp.reason_code in (0, 0x92), comp
            else:
                assert comp.packet_id == pid and comp.reason_code == 0, comp
            c.disconnect()
            return failed

        k = nth_rounds(one_round)
        print(f"sweep: {k} rounds, {closed} closed")
        assert closed, "no failure closed a connection: the sweep proves nothing"
        b.stop()

        b = broker(**conf)
        c = subscriber(b, pub_cid, version)[0]
        for pid in range(1, k + 1):
            exchange(b, c, pid, b"r%d" % pid)
        c.disconnect()
        got = offline_received(b, sub_cid, "fa/c")
        want = [b"c%d" % i for i in range(1, k + 1)] + [b"r%d" % i for i in range(1, k + 1)]
        lost = [x for x in want if x not in got]
        assert not lost, f"acknowledged (PUBREC 0x00), never delivered: {lost}"
        assert sorted(got) == sorted(want), f"delivered more than once: {got}"
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.parametrize("version", [4, 5])
def test_failed_allocation_on_a_pubrec_sends_no_pubrel_the_store_lacks(broker, version):
    """A persistent QoS 2 subscriber's PUBRECs, each handled with each of
    its allocations failing in turn, one per round (FAILALLOC_NTH). Once
    the broker sent the PUBREL it must not send the PUBLISH again
    [MQTT-3.1.1 4.3.3-1, MQTT-5.0 4.3.3-5]: the client may have completed
    the message, and would take it for a new one. So the PUBREL comes only
    once the PUBREC's record is stored; else the connection closes and the
    PUBLISH comes again (DUP 1) on the next one. The subscriber sends no
    PUBCOMP; the broker is SIGKILLed and started again from its store:
    every exchange goes on with its PUBREL, none with its PUBLISH. Before,
    a PUBREL went out although the batch of its record had failed, and
    after the restart that message came again as a PUBLISH."""
    env = nth_sweep_env()
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        # every exchange stays open (no PUBCOMP) within the window
        conf = store_conf(data, max_inflight_messages=1000)
        b = broker(_env=env, **conf)
        cid = uid("subr")
        s, _ = subscriber(b, cid, version)
        s.subscribe(("fa/r", M.sub_options(qos=2)))
        released = {}  # packet id: payload, each PUBREL the subscriber had
        closed = 0

        def one_round(k):
            nonlocal s, closed
            payload = b"r%d" % k
            p = M.Client(b, version=5)
            p.connect(uid("pub"))
            p.publish("fa/r", payload, qos=2)
            rec = p.expect(M.PUBREC)
            p.pubrel(rec.packet_id)
            p.expect(M.PUBCOMP)
            p.disconnect()
            pub = s.expect(M.PUBLISH)
            assert (pub.payload, pub.qos) == (payload, 2), pub
            rel, failed = _armed_answer(b, s, lambda: s.pubrec(pub.packet_id), M.PUBREL)
            if rel is None:
                closed += 1
                s.close()
                s, ack = subscriber(b, cid, version)
                assert ack.session_present
                # the exchanges before go on with their PUBREL, this one
                # with its PUBLISH again [MQTT-3.1.1 4.4.0-1, MQTT-5.0
                # 4.4.0-1], or with its PUBREL if its record was stored
                # (only sending it failed)
                again = s.recv()
                while again.type == M.PUBREL and again.packet_id in released:
                    again = s.recv()
                if again.type == M.PUBLISH:
                    assert (again.packet_id, again.payload, again.dup) == \
                        (pub.packet_id, payload, True), again
                    s.pubrec(pub.packet_id)
                    again = s.recv()
                rel = again
                assert rel.type == M.PUBREL, rel
            assert rel.packet_id == pub.packet_id, rel
            released[pub.packet_id] = payload
            return failed

        k = nth_rounds(one_round)
        print(f"sweep: {k} rounds, {closed} closed")
        assert closed, "no failure closed a connection: the sweep proves nothing"
        b.stop(signal.SIGKILL, check=False)

        b = broker(**conf)
        s, ack = subscriber(b, cid, version)
        assert ack.session_present
        completed = set()
        for _ in released:
            rel = s.recv()
            assert rel.type == M.PUBREL, \
                f"after its PUBREL, a PUBLISH again (a new message to the client): {rel}"
            completed.add(rel.packet_id)
            s.pubcomp(rel.packet_id)
        assert completed == set(released)
        marker = publish_marker(b, "fa/r")
        assert received_until(s, marker) == []
        s.disconnect()
    finally:
        shutil.rmtree(data, ignore_errors=True)
