"""`starling ctl cluster status|leave|forget` against a 3-node cluster."""

import os
import signal
import subprocess
import time

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
