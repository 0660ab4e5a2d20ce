"""The order of late messages across session takeovers (docs/cluster.md,
"Ordering of late messages"; issue 9, [MQTT-4.6.0-5]).

A persistent session (clean start 0) moves A -> B -> A ... while
publishers stream numbered QoS 1 and QoS 2 messages at a steady rate. A
message routed to the old owner just before the new owner's routes applied
on its publisher's node comes to the new owner as a late message; a later
message of the same publisher goes to the new owner directly. The new owner
holds what reaches it directly until the old owner's first batch of late
messages after SessionRouted is in, and queues the late ones before them:
per publisher, per topic and QoS, nothing lost, nothing out of order, QoS 2
once."""

import os

from faults import wait_until
from traffic import Traffic

MOVES = int(os.environ.get("STARLING_LATE_ORDER_MOVES", "8"))


def test_late_messages_keep_each_publishers_order_across_takeovers(cluster):
    a, b, c = cluster.nodes
    # the subscriber starts on A; QoS 1 and QoS 2 publishers on every node,
    # C's being the case of the issue (routed to A just before B's routes
    # applied on C); 40 messages/s each, one at a time
    t = Traffic(cluster, pubs_per_node=(1, 1), rate=40.0, subscribers_on=[0])
    try:
        t.start()
        sub = t.subscribers[0]
        t.wait_progress(60)
        hops = []
        for m in range(MOVES):
            dest = b if m % 2 == 0 else a
            t.wait_progress(40)  # traffic between two moves
            sub.move_to(dest)
            wait_until(sub.moved, 30, f"the session moved to {dest.name}")
            assert sub.node is dest
            hops.append(sub.events[-1][3])
        t.wait_progress(40)
        t.stop_publishing()
        missing = t.wait_delivered(30)
    finally:
        t.stop()
    r = t.check()
    print(f"\nacknowledged {r['acknowledged']} lost {r['lost']} QoS2-duplicates {r['dup2']} "
          f"QoS1-redeliveries {r['dup1']} misordered {r['misorder']} sessions lost "
          f"{r['sessions_lost']} hops {hops}")
    for s in r["samples"][:10]:
        print("   ", s)
    assert not r["errors"], r["errors"]
    assert r["acknowledged"] > 0
    assert all(h == "session present 1" for h in hops), hops
    assert r["sessions_lost"] == 0
    assert r["lost"] == 0, (missing, r["samples"][:10])
    assert r["dup2"] == 0, r["samples"][:10]
    assert r["misorder"] == 0, r["samples"][:10]
