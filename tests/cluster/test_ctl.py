"""`starling ctl cluster status|leave|forget` against a 3-node cluster."""

import os
import signal
import subprocess
import time

import urllib.request

import mqttraw
import promtext
from conftest import API_KEY, BIN

WAIT = 20


def ctl(node, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
    r = subprocess.run([BIN, "ctl", "--host", node.host, "--port", str(node.admin_port),
                        "--api-key", API_KEY, *args], env=env, capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout + r.stderr


def wait_for(pred, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def members(node):
    return {x["name"]: x for x in node.http("GET", "/api/v1/cluster")[1]["nodes"]}


def test_ctl_status_forget_and_leave(cluster_factory):
    c = cluster_factory(extra_env={"STARLING_CLUSTER_DOWN_AFTER": "1000"})
    c.start()
    c.wait_healthy()
    n1, n2, n3 = c.nodes
    rc, out = ctl(n2, "cluster", "status")
    assert rc == 0, out
    for name in ("n1", "n2", "n3"):
        assert name in out
    # a live node cannot be forgotten
    rc, out = ctl(n1, "cluster", "forget", "n3")
    assert rc == 1 and "alive" in out, out
    rc, out = ctl(n1, "cluster", "forget", "nobody")
    assert rc == 1, out
    # n3 dies; once it is unreachable it can be forgotten
    n3.stop(sig=signal.SIGKILL)
    wait_for(lambda: not members(n1)["n3"]["reachable"])
    rc, out = ctl(n1, "cluster", "forget", "n3")
    assert rc == 0, out
    wait_for(lambda: set(members(n1)) == {"n1", "n2"} and set(members(n2)) == {"n1", "n2"})
    # n2 leaves: the last member lists itself alone
    rc, out = ctl(n2, "cluster", "leave")
    assert rc == 0, out
    wait_for(lambda: set(members(n1)) == {"n1"})


def metrics(node):
    url = f"http://{node.host}:{node.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return promtext.parse(r.read().decode("utf-8"))


def outbox_rows(node):
    """The rows of node's forwarding outbox (its store, storage/store.c),
    read from its LMDB environment while it is stopped."""
    import lmdb
    envs = [d for d, _, files in os.walk(node.dir) if "data.mdb" in files
            and os.path.relpath(d, node.dir).split(os.sep)[0] != "cluster"]
    assert len(envs) == 1, envs
    env = lmdb.open(envs[0], readonly=True, max_dbs=16, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return txn.stat(env.open_db(b"outbox", txn=txn, create=False))["entries"]
    finally:
        env.close()


def dropped_forgotten(node):
    fam = metrics(node)["starling_messages_dropped_total"]["samples"]
    return fam.get((("reason", "node_forgotten"),))


def test_forgotten_nodes_outbox_is_dropped(cluster_factory):
    """n3 holds a persistent QoS 1 session and dies; the 25 QoS 1 messages
    published on n1 for it wait in n1's outbox (the dead node's route is
    kept for its session). Once n3 is forgotten they can never be
    delivered: n1 drops them, counted as node_forgotten, and its outbox no
    longer holds them after a restart (before, they stayed on disk and
    against cluster_outbox_messages for good)."""
    c = cluster_factory(extra_env={"STARLING_CLUSTER_DOWN_AFTER": "1000"})
    c.start()
    c.wait_healthy()
    n1, n2, n3 = c.nodes
    s = mqttraw.connected(n3, "forgotten-sub", 5, properties={"session_expiry_interval": 600})
    assert s.subscribe(("forgotten/#", mqttraw.sub_options(qos=1))).reason_codes == [1]
    s.close()
    n3.stop(sig=signal.SIGKILL)
    wait_for(lambda: not members(n1)["n3"]["reachable"])
    p = mqttraw.connected(n1, "forgotten-pub", 5)
    for k in range(25):
        p.publish("forgotten/x", f"m{k}".encode(), qos=1, packet_id=k + 1)
        assert p.expect(mqttraw.PUBACK, timeout=WAIT).packet_id == k + 1
    p.close()
    outbox = ("starling_forward_outbox_messages", (("peer", "n3"),))
    wait_for(lambda: metrics(n1)[outbox[0]]["samples"].get(outbox[1]) == 25)
    assert dropped_forgotten(n1) == 0
    rc, out = ctl(n1, "cluster", "forget", "n3")
    assert rc == 0, out
    wait_for(lambda: dropped_forgotten(n1) == 25)
    assert dropped_forgotten(n2) == 0
    # deleted from n1's store too (the poll's range delete; a SIGTERM
    # commits what is queued before the node exits)
    n1.stop()
    assert outbox_rows(n1) == 0
