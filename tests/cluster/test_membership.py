"""Membership beyond the seeds (issue 9, item 2; issue 14): a node that is
not in the seed list joins a running cluster by itself, and a node named by
`cluster_advertise` keeps its identity when it comes back under another IP
(a restarted Kubernetes pod)."""

import os
import shutil
import signal
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

from conftest import ADDRS, BIN, WAIT, Node, members, settled, wait_for

class Receiver:
    def __init__(self, host, port, cid, topic):
        self.got = []
        self.cv = threading.Condition()
        self.c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311)
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.loop_start()
        r, mid = self.c.subscribe(topic, qos=1)
        assert r == 0

    def _on_message(self, c, u, m):
        with self.cv:
            self.got.append(m.payload)
            self.cv.notify_all()

    def wait(self, n, timeout=WAIT):
        with self.cv:
            self.cv.wait_for(lambda: len(self.got) >= n, timeout)
            return list(self.got)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def publish_until_received(host, port, topic, rx, payload):
    """Publish (QoS 1) until the receiver has it: a new subscription's route
    is in effect once its SUBACK came, which paho does not expose to the
    caller, so retry a bounded number of times."""
    p = mqtt.Client(client_id="pub-" + payload, protocol=mqtt.MQTTv311)
    p.connect(host, port)
    p.loop_start()
    try:
        for _ in range(50):
            p.publish(topic, payload.encode(), qos=1).wait_for_publish(5)
            with rx.cv:
                if rx.cv.wait_for(lambda: payload.encode() in rx.got, 0.2):
                    return
        raise AssertionError(f"{payload!r} never reached the subscriber")
    finally:
        p.loop_stop()
        p.disconnect()


def test_a_node_not_in_the_seeds_joins_the_running_cluster(cluster):
    n4 = Node(cluster, 0)
    n4.host, n4.name = "127.0.0.14", "n4"
    n4.dir = os.path.join(cluster.base, "n4")
    n4.log_path = os.path.join(cluster.base, "n4.log")
    cluster.nodes.append(n4)  # stopped with the others
    n4.start()
    want = {n.name: n.host for n in cluster.nodes}
    wait_for(lambda: settled(cluster.nodes, want), what="four voters on every node")
    wait_for(lambda: n4.health() == 200, what="n4 healthy")
    assert "refused" not in n4.logtext()

    # Publishes cross both ways with the new node.
    rx = Receiver(n4.host, n4.port, "rx4", "join/#")
    try:
        publish_until_received(ADDRS[0], cluster.mqtt_port, "join/a", rx, "to-n4")
    finally:
        rx.close()
    rx = Receiver(ADDRS[1], cluster.mqtt_port, "rx2", "join/#")
    try:
        publish_until_received(n4.host, n4.port, "join/b", rx, "from-n4")
    finally:
        rx.close()


class NsNode(Node):
    """A node in a mount namespace of its own whose /etc/hosts is the
    test's file: names of the form nX.starling.test resolve to whatever
    the file says at the time."""

    def __init__(self, cluster, i, hosts):
        super().__init__(cluster, i)
        self.hosts = hosts

    def env(self):
        e = super().env()
        names = [f"n{k + 1}.starling.test" for k in range(3)]
        e["STARLING_CLUSTER_ADVERTISE"] = f"{self.name}.starling.test"
        e["STARLING_CLUSTER_SEEDS"] = ",".join(names)
        return e

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$1"',
             self.hosts, BIN],
            env=self.env(), stdout=self.log, stderr=subprocess.STDOUT)


def write_hosts(path, addrs):
    # Rewritten in place: the namespaces' bind mounts point at this inode.
    with open(path, "w") as f:
        for i, a in enumerate(addrs):
            f.write(f"{a} n{i + 1}.starling.test\n")


def namespaces_work():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not namespaces_work(), reason="needs root and unshare -m (mount namespaces)")
def test_a_node_named_by_cluster_advertise_keeps_its_identity_under_a_new_ip(cluster_factory):
    c = cluster_factory()
    hosts = os.path.join(c.base, "hosts")
    write_hosts(hosts, ADDRS)
    c.nodes = [NsNode(c, i, hosts) for i in range(3)]
    c.start()
    want = {n.name: n.host for n in c.nodes}
    wait_for(lambda: settled(c.nodes, want), what="the named cluster to form")

    # n3 comes back with its data directory under another IP, like a pod
    # rescheduled: the name now resolves to 127.0.0.14.
    n3 = c.nodes[2]
    assert n3.stop() == 0
    write_hosts(hosts, ADDRS[:2] + ["127.0.0.14"])
    n3.host = "127.0.0.14"
    n3.start()
    want["n3"] = "127.0.0.14"
    wait_for(lambda: settled(c.nodes, want),
             what="n3 back as the same voter at its new address, on every node")
    wait_for(lambda: all(n.health() == 200 for n in c.nodes), what="all healthy")

    # The moved node carries messages both ways.
    rx = Receiver(n3.host, n3.port, "rx3", "moved/#")
    try:
        publish_until_received(ADDRS[0], c.mqtt_port, "moved/a", rx, "to-moved-n3")
    finally:
        rx.close()

    # It still votes: with n2 gone, n1 and the moved n3 are a majority that
    # keeps (or elects) a leader and serves.
    c.nodes[1].stop(signal.SIGKILL)
    wait_for(lambda: c.nodes[0].health() == 200 and n3.health() == 200,
             what="n1 and n3 keep a leader without n2")
    doc = members(c.nodes[0])
    assert doc["leader"] in ("n1", "n3")
