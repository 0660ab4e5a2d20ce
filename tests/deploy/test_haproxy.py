"""Horizontal, load-balanced ingestion end to end on one machine (issue 14,
item 4): three real nodes on 127.0.0.21-23 formed into one cluster with
`cluster_seeds`, each with `proxy_protocol tcp`, and HAProxy in front of them
in TCP mode (round-robin, `send-proxy-v2`, health checks on each node's
`/api/v1/health`), as docs/deploy.md describes for a load balancer.

Through HAProxy only:
* starling-bench fanin (QoS 1): its publishers and its subscriber are spread
  over the three nodes, and every acknowledged message reaches the
  subscriber, exactly once, across nodes;
* each node's admin API (`/api/v1/stats`) shows the clients it served;
* clients with their own source addresses (127.0.0.31-33) show up in the
  nodes' logs and in the admin API (`GET /api/v1/clients/{id}` on any node)
  with those addresses (from the PROXY header), never with HAProxy's
  (127.0.0.40).

The fan-in rate through HAProxy is printed (docs/performance.md). The Release
build is used (build/release, `make build`), or $STARLING_TEST_BIN.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from conftest import RELEASE_DIR, run, test_ports

ADDRS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
CLIENT_ADDRS = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
HAPROXY_SOURCE = "127.0.0.40"
API_KEY = "lb:test-haproxy-key"
FORM_TIMEOUT = 60.0


def free_ports_on_all(addrs, n):
    """n distinct ports, each free on every address of addrs (tests/ports.py
    reserves them for this process)."""
    del addrs  # reserve() takes ports free on every address
    return test_ports.reserve(n)


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Node:
    def __init__(self, base, i, ports, binary):
        self.host = ADDRS[i]
        self.name = f"lb{i + 1}"
        self.mqtt_port, self.chan_port, self.raft_port, self.admin_port = ports
        self.dir = os.path.join(base, self.name)
        self.log_path = os.path.join(base, self.name + ".log")
        os.makedirs(self.dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
        env.update({
            "STARLING_BIND_ADDRESS": self.host,
            "STARLING_PORT": str(self.mqtt_port),
            "STARLING_WORKERS": "1",
            "STARLING_DATA_DIR": self.dir,
            "STARLING_ADMIN_PORT": str(self.admin_port),
            "STARLING_API_KEY": API_KEY,
            "STARLING_SYS_INTERVAL": "0",
            "STARLING_NODE_NAME": self.name,
            "STARLING_CLUSTER_PORT": str(self.chan_port),
            "STARLING_RAFT_PORT": str(self.raft_port),
            "STARLING_CLUSTER_SEEDS": ",".join(ADDRS),
            "STARLING_CLUSTER_NAME": f"lb-{self.raft_port}",
            "STARLING_CLUSTER_SECRET": f"lb-secret-{self.raft_port}",
            "STARLING_PROXY_PROTOCOL": "tcp",
            # the "client ... connected" line, with the client's address
            "STARLING_LOG_LEVEL": "debug",
            # as `make bench` runs fanin (docs/performance.md): queues large
            # enough that a loss is what the broker drops, not a queue bound
            "STARLING_MAX_QUEUED_MESSAGES": "10000000",
            "STARLING_MAX_QUEUED_BYTES": "0",
        })
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def http(self, path, auth=True, timeout=3):
        req = urllib.request.Request(f"http://{self.host}:{self.admin_port}{path}")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(API_KEY.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None, None

    def own_stats(self):
        status, doc = self.http("/api/v1/stats")
        assert status == 200, f"{self.name}: /api/v1/stats answered {status}"
        (mine,) = [n for n in doc["nodes"] if n["node"] == self.name]
        return mine

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


HAPROXY_CFG = """\
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend mqtt
    bind 127.0.0.1:{port}
    default_backend starling

backend starling
    balance roundrobin
    option httpchk GET /api/v1/health
    http-check expect status 200
    default-server send-proxy-v2 source {source} inter 500ms fall 2 rise 1
{servers}

frontend stats
    mode http
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


def haproxy_servers_up(stats_port):
    """{server name: status} of backend starling, from the CSV stats page."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2) as r:
            lines = r.read().decode().splitlines()
    except OSError:
        return {}
    head = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("pxname") == "starling" and row.get("svname") not in ("BACKEND", None):
            out[row["svname"]] = row["status"]
    return out


@pytest.fixture
def lb_cluster(release_build):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.skip("haproxy is not installed (Debian package haproxy, Makefile TEST_PACKAGES)")
    binary = os.environ.get("STARLING_TEST_BIN") or os.path.join(release_build, "node",
                                                                  "starling")
    base = tempfile.mkdtemp(prefix="starling-lb-")
    ports = free_ports_on_all(ADDRS, 4)
    nodes, hap = [], None
    try:
        nodes = [Node(base, i, ports, binary) for i in range(3)]

        def formed():
            for n in nodes:
                assert n.proc.poll() is None, f"{n.name} exited:\n{n.logtext()[-3000:]}"
            if not all(n.http("/api/v1/health", auth=False)[0] == 200 for n in nodes):
                return False
            docs = [n.http("/api/v1/cluster")[1] for n in nodes]
            return all(d and len(d["nodes"]) == 3 and d["leader"]
                       and all(x["reachable"] for x in d["nodes"]) for d in docs)

        wait_until(formed, FORM_TIMEOUT, "three nodes to form one cluster")

        lb_port = free_ports_on_all(["127.0.0.1"], 1)[0]
        stats_port = free_ports_on_all(["127.0.0.1"], 1)[0]
        servers = "\n".join(f"    server {n.name} {n.host}:{n.mqtt_port} check port {n.admin_port}"
                            for n in nodes)
        cfg = os.path.join(base, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=lb_port, stats_port=stats_port,
                                       source=HAPROXY_SOURCE, servers=servers))
        run([haproxy, "-c", "-f", cfg], timeout=30)
        hap_log = open(os.path.join(base, "haproxy.log"), "ab")
        hap = subprocess.Popen([haproxy, "-f", cfg, "-db"], stdout=hap_log,
                               stderr=subprocess.STDOUT)
        want = {n.name: "UP" for n in nodes}

        def all_up():
            assert hap.poll() is None, f"haproxy exited {hap.returncode}"
            return haproxy_servers_up(stats_port) == want

        wait_until(all_up, 30, "HAProxy to see the three nodes UP (health checks)")
        yield nodes, lb_port
    finally:
        if hap is not None:
            if hap.poll() is None:
                hap.terminate()
                try:
                    hap.wait(10)
                except subprocess.TimeoutExpired:
                    hap.kill()
                    hap.wait(10)
            hap_log.close()
        codes = [n.stop() for n in nodes]
        logs = {n.name: n.logtext()[-2000:] for n in nodes}
        if not os.environ.get("STARLING_TEST_KEEP_TMP"):
            shutil.rmtree(base, ignore_errors=True)
    assert codes == [0, 0, 0], logs


def run_bench(release_build, lb_port, args):
    bench = os.path.join(release_build, "bench", "starling-bench")
    if not os.path.exists(bench):
        run(["cmake", "--build", RELEASE_DIR, "--target", "starling-bench", "-j", "2"],
            timeout=600)
    p = run([bench] + args + ["--host", "127.0.0.1", "--port", str(lb_port), "--size", "64", "--src-addrs", "1",
                              "--label", "haproxy"], timeout=120, check=False)
    lines = p.stdout.strip().splitlines()
    assert lines, f"starling-bench printed nothing:\n{p.stderr}"
    print("\n" + p.stderr.strip())
    return json.loads(lines[-1])


def test_fan_in_through_haproxy_reaches_every_node_loses_nothing(lb_cluster, release_build):
    """Six QoS 1 publishers, paced (LB_RATE per publisher, default 2000 msg/s)
    and one subscriber on bench/#, all through HAProxy: round-robin puts the
    seven connections 3/2/2 on the nodes; what the publishers' nodes took
    crosses the cluster channel to the subscriber's node; every acknowledged
    message is delivered exactly once (the bench's bitmaps, per message)."""
    nodes, lb_port = lb_cluster
    publishers = 6
    rate = int(os.environ.get("LB_RATE", "2000"))
    res = run_bench(release_build, lb_port, ["slowsub", "--qos", "1", "--publishers", str(publishers),
                                    "--rate", str(rate), "--sub-rate", "10000000",
                                    "--duration", "5", "--drain", "20"])
    stats = {n.name: n.own_stats() for n in nodes}
    print(f"fan-in through HAProxy, 3 nodes, {publishers} x {rate} msg/s QoS 1: "
          f"{res['publish_per_s']:.0f} published/s, {res['delivered_per_s']:.0f} delivered/s "
          f"in the window; sent {res['sent']} acked {res['acked']} delivered {res['delivered']}")
    assert res["complete"] and res["drained"], res
    # QoS 1, exact: every acknowledged message arrived once, none lost.
    assert res["sent"] == res["acked"] > 0 and res["unacked"] == 0, res
    assert res["acked_lost"] == 0 and res["dropped"] == 0 and res["loss"] == 0, res
    assert res["delivered"] == res["received"] == res["acked"] and res["duplicates"] == 0, res
    # Connections on all three nodes: 3, 2 and 2 clients at once.
    assert sorted(s["clients_maximum"] for s in stats.values()) == [2, 2, 3], stats
    assert all(s["messages_dropped"] == 0 for s in stats.values()), stats
    # One node serves the subscriber and sent it every message; it counts its
    # own clients' PUBLISH packets and the ones the other nodes forwarded.
    (sub_node,) = [k for k, s in stats.items() if s["messages_sent"] > 0]
    assert stats[sub_node]["messages_sent"] == res["acked"], stats
    assert stats[sub_node]["messages_received"] == res["sent"], stats
    others = {k: s["messages_received"] for k, s in stats.items() if k != sub_node}
    # the other two nodes took PUBLISH packets from their publishers, and the
    # subscriber's node from its own (the remainder)
    assert all(v > 0 for v in others.values()), stats
    assert res["sent"] - sum(others.values()) > 0, stats


def test_unpaced_fan_in_through_haproxy_loses_nothing(lb_cluster, release_build):
    """The same fan-in at full speed (the bench's fanin: publishers limited
    only by their 64 unacknowledged messages). Queues as `make bench` sizes
    them, so a loss is a drop, not a queue bound. The forwards that do not
    fit in a channel queue wait in the origin's outbox (docs/cluster.md,
    "The forwarding channel")."""
    nodes, lb_port = lb_cluster
    res = run_bench(release_build, lb_port, ["fanin", "--qos", "1", "--publishers", "6",
                                    "--duration", "3", "--drain", "30"])
    stats = {n.name: n.own_stats() for n in nodes}
    print(f"unpaced fan-in through HAProxy: {res['sent'] / res['duration_s']:.0f} "
          f"acknowledged/s at the publishers, {res['received']} of {res['acked']} delivered, "
          f"dropped per node {[s['messages_dropped'] for s in stats.values()]}")
    assert res["sent"] == res["acked"] > 0 and res["duplicates"] == 0, res
    assert res["loss"] == 0, f"{res['loss']} of {res['acked']} acknowledged messages lost"


def test_client_addresses_from_the_proxy_header_are_logged_and_in_the_api(lb_cluster):
    """Three clients with their own source addresses, through HAProxy: each
    lands on a node (round-robin: one on each), which logs the client's real
    address and port, not HAProxy's."""
    nodes, lb_port = lb_cluster
    clients = []
    try:
        for i, addr in enumerate(CLIENT_ADDRS):
            connected = threading.Event()
            c = mqtt.Client(client_id=f"lb-client-{i}", protocol=mqtt.MQTTv311)
            c.on_connect = lambda cl, ud, fl, rc, ev=connected: rc == 0 and ev.set()
            c.connect("127.0.0.1", lb_port, keepalive=30, bind_address=addr)
            c.loop_start()
            clients.append(c)
            assert connected.wait(10), f"lb-client-{i} got no CONNACK"
        seen = {}

        def all_logged():
            for n in nodes:
                for m in re.finditer(r"(\S+):(\d+): connect client 'lb-client-(\d)'",
                                     n.logtext()):
                    seen[int(m.group(3))] = (n.name, m.group(1), int(m.group(2)))
            return len(seen) == len(CLIENT_ADDRS)

        wait_until(all_logged, 10, "the three CONNECTs in the nodes' logs")
        for i, c in enumerate(clients):
            local = c.socket().getsockname()
            assert seen[i][1:] == (CLIENT_ADDRS[i], local[1]), (i, seen[i], local)
        assert sorted(v[0] for v in seen.values()) == [n.name for n in nodes], seen
        for n in nodes:
            assert f"{HAPROXY_SOURCE}:" not in n.logtext(), n.name
        # the admin API of any node shows each client's own address
        for i, c in enumerate(clients):
            local = c.socket().getsockname()
            for n in nodes:
                status, doc = n.http(f"/api/v1/clients/lb-client-{i}")
                assert status == 200, (n.name, status)
                doc = doc.get("data", doc)
                assert doc["address"] == f"{CLIENT_ADDRS[i]}:{local[1]}", (n.name, doc)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
