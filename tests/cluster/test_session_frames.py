"""The messages of a moved session cross between nodes in frames that are
acknowledged (docs/cluster.md "Moved messages that must arrive"): the
old owner's SessionState on a takeover and the SessionMessages of a copy
that still got messages for a session that moved. A frame lost on the way
(a channel connection that broke with it queued: the debug hook
STARLING_TEST_SESSION_FRAME_LOSE) is sent again, and a receiver killed
before its store committed what it got (STARLING_TEST_STORE_HOLD) gets it
again once it is back: every acknowledged message reaches the client, once
and in order."""

import signal
import time

import faults
from helpers import uid
from sessions import WAIT, queued_offline, resumed_on


def wait_for(what, cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def collect(client, n, timeout=30):
    """Up to n payloads (fewer when they stop coming), then nothing more
    within a second (nothing twice)."""
    got = []
    try:
        while len(got) < n:
            got.append(client.get(timeout).payload)
        got.append(client.get(1).payload)  # one too many: a duplicate
    except AssertionError:
        pass
    return got


def restarted_gets_all(c, b, cid, sent):
    """Node b, killed, starts again; cid resumes there and gets every
    message of `sent` once, in order."""
    b.start()
    c.wait_healthy(60)
    z = resumed_on(b, cid)
    assert collect(z, len(sent), timeout=40) == sent
    z.disconnect()


def losing_frames(cluster_factory, what):
    """A formed cluster whose node a loses its session frames of kind `what`
    on the way once (STARLING_TEST_SESSION_FRAME_LOSE)."""
    from conftest import Node
    c = cluster_factory()
    a = c.nodes[0]
    a.env = lambda: {**Node.env(a), "STARLING_TEST_SESSION_FRAME_LOSE": what}
    c.start()
    c.wait_healthy()
    return c


def holding_commits_of_b(cluster_factory, tmp_path):
    """A formed cluster whose node b's store commits nothing while the
    returned file exists (STARLING_TEST_STORE_HOLD): returns (cluster, file)."""
    c = cluster_factory()
    hold = tmp_path / "hold-b-commits"
    faults.store_held(c.nodes[1], hold)
    c.start()
    c.wait_healthy()
    return c, hold


def test_a_session_state_lost_on_the_way_is_sent_again(cluster_factory):
    """Node a, which holds the offline session with 12 acknowledged
    messages, loses its SessionState to node b on the way (as a channel
    connection that breaks with the frame queued would): the session's
    client, connected on b, still gets all 12, once and in order."""
    c = losing_frames(cluster_factory, "state")
    a, b, third = c.nodes
    cid = uid("lost-state")
    topic = uid("sfr/s")
    sent = queued_offline(a, third, cid, topic, 12, "st")
    y = resumed_on(b, cid)
    assert "this SessionState is lost on the way" in a.logtext()
    assert collect(y, len(sent)) == sent
    y.disconnect()


def killed_holder_resumed_elsewhere(c, lose_env=None):
    """Node a holds the offline session's acknowledged messages and is
    killed; the client resumes the session on node b (from its record);
    node a returns with `lose_env` and sends b what it held (late
    messages). Returns (client on b, payloads, cid, topic)."""
    a, b, third = c.nodes
    cid = uid("held")
    topic = uid("sfr/h")
    sent = queued_offline(a, third, cid, topic, 12, "late")
    a.stop(sig=signal.SIGKILL)
    y = resumed_on(b, cid, tries=3)
    return y, sent, cid, topic


def test_messages_of_a_returning_node_lost_on_the_way_are_sent_again(cluster_factory):
    """Node a is killed holding 12 acknowledged messages of an offline
    session, which is resumed on node b; when a returns, the frame that
    carries them to b is lost on the way: they arrive all the same. (That
    frame is a SessionMessages from a's start-up pass, or a SessionState
    when b's request for the session, queued for a while it was down,
    reaches a first: both are lost once.)"""
    c = losing_frames(cluster_factory, "both")
    a = c.nodes[0]
    y, sent, _, _ = killed_holder_resumed_elsewhere(c)
    a.start()
    c.wait_healthy(60)
    assert collect(y, len(sent), timeout=40) == sent
    assert "is lost on the way" in a.logtext()
    y.disconnect()


def test_late_messages_survive_a_receiver_killed_before_its_commit(cluster_factory, tmp_path):
    """As above, but the client is offline on node b when node a returns,
    and b's store commits nothing (STARLING_TEST_STORE_HOLD) when a's late
    messages come: b is killed after it got them and before they were on
    its disk. Once b is back, the client resumes there and gets all 12."""
    c, hold = holding_commits_of_b(cluster_factory, tmp_path)
    a, b, _ = c.nodes
    y, sent, cid, _ = killed_holder_resumed_elsewhere(c)
    y.disconnect()  # offline on b, stored there
    hold.touch()
    try:
        a.start()
        got_them = f"late message(s) of '{cid}' came from"
        wait_for("node b getting the late messages", lambda: got_them in b.logtext(), 60)
        b.stop(sig=signal.SIGKILL)
    finally:
        hold.unlink(missing_ok=True)
    restarted_gets_all(c, b, cid, sent)


def test_session_state_survives_a_claimant_killed_before_its_commit(cluster_factory, tmp_path):
    """The client of an offline session that node a holds with 12
    acknowledged messages connects on node b: b's claim gets a's
    SessionState, but b's store commits nothing (STARLING_TEST_STORE_HOLD)
    and its claim waits for its routes on the third node (stopped), so no
    CONNACK comes; b is SIGKILLed. Once b is back, the client resumes the
    session there and gets all 12, once and in order."""
    import socket

    import mqttraw
    c, hold = holding_commits_of_b(cluster_factory, tmp_path)
    a, b, third = c.nodes
    cid = uid("claimant-killed")
    topic = uid("sfr/c")
    sent = queued_offline(a, third, cid, topic, 12, "ck")
    hold.touch()
    third.proc.send_signal(signal.SIGSTOP)
    raw = None
    try:
        raw = socket.create_connection((b.host, b.port), timeout=WAIT)
        raw.sendall(mqttraw.connect(cid, 5, clean=False,
                                    properties={"session_expiry_interval": 600}))
        moved = f"the session of '{cid}' moved here"
        wait_for("node b getting the session state", lambda: moved in b.logtext(), 60)
        b.stop(sig=signal.SIGKILL)
    finally:
        third.proc.send_signal(signal.SIGCONT)
        hold.unlink(missing_ok=True)
        if raw is not None:
            raw.close()
    restarted_gets_all(c, b, cid, sent)


def test_a_session_state_larger_than_the_channel_queue_arrives(cluster_factory):
    """An offline session on node a holds 12 MiB of acknowledged messages
    (120 of 100 KiB; max_queued_bytes raised to 32 MiB): more than the
    channel's queue bound (8 MiB), so a SessionState that carried them all
    was refused by the channel and lost. They go in frames of a bounded
    size: its client, connected on node b, gets all 120, once and in
    order."""
    c = cluster_factory(extra_env={"STARLING_MAX_QUEUED_BYTES": str(32 << 20)})
    c.start()
    c.wait_healthy()
    a, b, third = c.nodes
    cid = uid("big-state")
    sent = queued_offline(a, third, cid, uid("sfr/b"), 120, "big", size=100 * 1024)
    y = resumed_on(b, cid)
    got = collect(y, len(sent), timeout=40)
    assert [p[:4] for p in got] == [p[:4] for p in sent]
    assert got == sent
    y.disconnect()


def test_frames_behind_the_state_while_its_claim_routes_keep_their_order(cluster_factory):
    """1,000 acknowledged messages of an offline session on node a go to
    node b in four frames (256 a frame): the SessionState, then three
    SessionMessages right behind it, which b's cluster thread applies while
    the claim's worker routes the session. A frame's lookup of its claim's
    session that straddled that moment (not yet routed when looked for as
    routed, routed when looked for as not yet) found none: the frame's
    messages went to a session rebuilt from the record beside the claim,
    and came to the client after the later frames' (seen once in a whole
    run of the suite: test_session_big_moves.py, "first difference at
    256"). Debug hooks on b widen that moment: the claim's worker routes
    the session 30 ms late (STARLING_TEST_CLAIM_ROUTE_DELAY_MS), and a frame
    that found it not routed looks again 100 ms later
    (STARLING_TEST_LATE_LOOKUP_DELAY_MS). The client, connected on b, gets all 1,000 once and in
    order, and b rebuilt no session."""
    from conftest import Node
    c = cluster_factory()
    a, b, third = c.nodes
    b.env = lambda: {**Node.env(b), "STARLING_TEST_LATE_LOOKUP_DELAY_MS": "100",
                     "STARLING_TEST_CLAIM_ROUTE_DELAY_MS": "30"}
    c.start()
    c.wait_healthy()
    cid = uid("frames-order")
    sent = queued_offline(a, third, cid, uid("sfr/o"), 1000, "ord")
    y = resumed_on(b, cid)
    got = collect(y, len(sent), timeout=40)
    y.disconnect()
    first = next((i for i, (x, z) in enumerate(zip(got, sent)) if x != z), None)
    assert got == sent, f"{len(got)} of {len(sent)}, first difference at {first}"
    assert "rebuilt from its record" not in b.logtext()
