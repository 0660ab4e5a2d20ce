#!/usr/bin/python3
"""A measurement, not a test of the suite: how often a persistent QoS 2
publisher's node killed mid-traffic gives its subscriber a duplicate.

    kill_resend.py [--trials N] [--stop S]   (STARLING_TEST_BIN names the binary)

Each trial forms a fresh 3-node cluster (conftest.Cluster) under a
temporary directory: a subscriber (QoS 2) on the third node, and a paho
publisher with a persistent session (MQTT 5.0, session expiry 600 s) on
the first, publishing QoS 2 one message at a time. About 2 s in (a little
later each trial), a thread SIGKILLs the first node while the publisher's
loop runs; the publisher then connects the same paho client to the second
node, which resends the message it had in flight (DUP 1, its packet id)
or its PUBREL, as paho does, and goes on for a few seconds. At the end:
how many messages were published and acknowledged, and which arrived at
the subscriber twice or not at all. docs/cluster.md, *A forward sent
before its origin's commit*, gives the figures it measured. Every node it
starts is stopped and its directory removed.

With --stop S, the first node is SIGSTOPped instead, for S seconds, then
SIGCONT: the publisher waits 1 s for each acknowledgement; one that does
not come while the node is stopped makes it connect the same client to the
second node (which resumes the session from its record once its claim's
wait for the stopped node, cluster_claim_timeout, ran out), and it resends
there as above. docs/cluster.md, *A publish completed by a stalled node
after its client resent it elsewhere*, gives what it measured.
"""

import argparse
import collections
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("starling_cluster_conftest",
                                               os.path.join(HERE, "conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
WAIT = 10.0


def _props():
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 600
    return p


def _until(cond, timeout=WAIT):
    """cond() polled (a client on its own thread) for at most timeout."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def _wait(client, cond, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        client.loop(0.05)
    return cond()


def trial(base, k, stop=0.0):
    c = _conftest.Cluster(os.path.join(base, f"t{k}"))
    os.makedirs(c.base)
    try:
        c.start()
        c.wait_healthy()
        a, b, third = c.nodes
        topic = f"kill-resend/{k}"
        got = collections.Counter()
        sub = mqtt.Client(f"krs-sub-{k}", protocol=mqtt.MQTTv5)
        sub.on_message = lambda cl, ud, m: got.update([m.payload])
        subscribed = threading.Event()
        sub.on_subscribe = lambda *args: subscribed.set()
        sub.connect(third.host, third.port, 30, clean_start=True, properties=_props())
        sub.loop_start()
        sub.subscribe(topic, qos=2)
        assert subscribed.wait(WAIT), "no SUBACK"
        pub = mqtt.Client(f"krs-pub-{k}", protocol=mqtt.MQTTv5)
        done, up = set(), {"on": False}
        pub.on_publish = lambda cl, ud, mid: done.add(mid)
        pub.on_connect = lambda cl, ud, fl, rc, pr=None: up.update(on=(rc == 0))
        pub.on_disconnect = lambda cl, ud, rc, pr=None: up.update(on=False)
        pub.connect(a.host, a.port, 30, clean_start=False, properties=_props())
        assert _wait(pub, lambda: up["on"]), "no CONNACK from the first node"
        kill_at = time.monotonic() + 2 + (k % 5) * 0.137
        end = kill_at + 5
        killed, n, acked = False, 0, 0

        def kill():
            time.sleep(0.0005 * (k % 7))
            if not stop:
                os.kill(a.proc.pid, signal.SIGKILL)
                return
            os.kill(a.proc.pid, signal.SIGSTOP)
            time.sleep(stop)
            os.kill(a.proc.pid, signal.SIGCONT)

        if stop:
            end += stop

        while time.monotonic() < end:
            if not killed and time.monotonic() >= kill_at:
                killed = True
                threading.Thread(target=kill).start()
            if not up["on"]:
                if killed:  # to the second node, the same client (its resend)
                    try:
                        pub.connect(b.host, b.port, 30, clean_start=False, properties=_props())
                    except OSError:
                        time.sleep(0.1)
                        continue
                    _wait(pub, lambda: up["on"])
                else:
                    pub.loop(0.05)
                continue
            mid = pub.publish(topic, f"m{n}".encode(), qos=2).mid
            n += 1
            _wait(pub, lambda: mid in done or not up["on"], 1 if stop and killed else 30)
            if stop and killed and mid not in done and up["on"] and pub._host == a.host:
                up["on"] = False  # the node stopped: to the second one (reconnect closes)
            acked += mid in done
        _wait(pub, lambda: not pub._out_messages, 30)
        pub.disconnect()
        payloads = [f"m{i}".encode() for i in range(n)]
        # every message published arrived (the last one of each: its PUBCOMP
        # came): the subscriber's count settles
        _until(lambda: all(got[p] for p in payloads), 30)
        sub.loop_stop()
        sub.disconnect()
        twice = sorted(p.decode() for p in payloads if got[p] > 1)
        missing = sorted(p.decode() for p in payloads if not got[p])
        print(f"trial {k}: published {n}, acknowledged in the loop {acked}, received "
              f"{sum(got.values())}, twice {twice}, missing {missing}", flush=True)
        return bool(twice), bool(missing)
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--stop", type=float, default=0.0,
                    help="SIGSTOP the first node for this many seconds instead of SIGKILL")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="starling-kill-resend-")
    dup = lost = 0
    try:
        for k in range(args.trials):
            d, m = trial(base, k, args.stop)
            dup += d
            lost += m
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.trials} trials: a duplicate in {dup}, a message missing in {lost}")


if __name__ == "__main__":
    main()
