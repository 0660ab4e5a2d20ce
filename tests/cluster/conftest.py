"""Three-node clusters for tests/cluster: node processes on 127.0.0.11,
127.0.0.12 and 127.0.0.13, each on its own address with the same ports,
reserved for each test (tests/ports.py: other suites run at the same time;
the default ports 1883/4370/4371/18083 are never used). Every wait is
bounded; the fixture stops every node it started and removes their data
directories.

The binary is $STARLING_TEST_BIN (build/asan/node/starling by default).
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/: ports.py

import ports  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("STARLING_TEST_BIN", os.path.join(ROOT, "build", "asan", "node", "starling"))
ADDRS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
# Addresses a test may move a node to or add a node on: ports are free there too.
SPARE_ADDRS = ["127.0.0.14"]
API_KEY = "test:cluster-secret-key"
FORM_TIMEOUT = 30.0


def free_ports(n):
    """n ports free on every address (ADDRS and SPARE_ADDRS included),
    reserved for this test or, outside pytest (chaos.py), this process:
    tests/ports.py. They are outside the ephemeral range, which matters
    here: the nodes bind their own outgoing connections to 127.0.0.x:0."""
    return ports.reserve(n)


class Node:
    def __init__(self, cluster, i):
        self.cluster = cluster
        self.i = i
        self.host = ADDRS[i]
        self.name = f"n{i + 1}"
        self.port = cluster.mqtt_port
        self.admin_port = cluster.admin_port
        self.dir = os.path.join(cluster.base, self.name)
        self.log_path = os.path.join(cluster.base, self.name + ".log")
        self.proc = None

    def env(self):
        c = self.cluster
        e = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
        e.update({
            "STARLING_BIND_ADDRESS": self.host,
            "STARLING_PORT": str(c.mqtt_port),
            "STARLING_WORKERS": os.environ.get("STARLING_TEST_WORKERS", "2"),
            "STARLING_DATA_DIR": self.dir,
            "STARLING_ADMIN_PORT": str(c.admin_port),
            "STARLING_API_KEY": API_KEY,
            "STARLING_SYS_INTERVAL": "0",
            "STARLING_NODE_NAME": self.name,
            "STARLING_CLUSTER_PORT": str(c.chan_port),
            "STARLING_RAFT_PORT": str(c.raft_port),
            "STARLING_CLUSTER_SEEDS": ",".join(ADDRS),
            "STARLING_CLUSTER_NAME": "test-" + str(c.raft_port),
            "STARLING_CLUSTER_SECRET": "s3cret-" + str(c.raft_port),
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=1"),
        })
        if os.environ.get("STARLING_TEST_LOG_LEVEL"):  # e.g. debug, for a failing run
            e["STARLING_LOG_LEVEL"] = os.environ["STARLING_TEST_LOG_LEVEL"]
        e.update(c.extra_env)
        return e

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN], env=self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def http(self, method, path, auth=True, timeout=5):
        req = urllib.request.Request(f"http://{self.host}:{self.admin_port}{path}", method=method)
        if auth:
            req.add_header("Authorization",
                           "Basic " + base64.b64encode(API_KEY.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, (json.loads(body) if body else None)

    def health(self):
        try:
            return self.http("GET", "/api/v1/health", auth=False, timeout=2)[0]
        except (OSError, urllib.error.URLError):
            return None

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


class Cluster:
    def __init__(self, base, extra_env=None):
        self.base = base
        self.extra_env = extra_env or {}
        self.mqtt_port, self.chan_port, self.raft_port, self.admin_port = free_ports(4)
        self.nodes = [Node(self, i) for i in range(3)]

    def start(self, order=(0, 1, 2), delay=0.0):
        for k, i in enumerate(order):
            if k and delay:
                time.sleep(delay)  # start order and gaps are what is under test
            self.nodes[i].start()

    def wait_healthy(self, timeout=FORM_TIMEOUT):
        """Every node answers /api/v1/health 200 (serving, a leader known)
        and lists three reachable members."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise AssertionError(f"{n.name} exited {n.proc.returncode}:\n{n.logtext()}")
            if all(n.health() == 200 for n in self.nodes):
                docs = [n.http("GET", "/api/v1/cluster")[1] for n in self.nodes]
                if all(len(d["nodes"]) == 3 and all(x["reachable"] for x in d["nodes"])
                       and d["leader"] for d in docs):
                    return docs
            time.sleep(0.1)
        raise AssertionError("the cluster did not form:\n" +
                             "\n".join(f"--- {n.name}\n{n.logtext()[-3000:]}" for n in self.nodes))

    def stop(self):
        rcs = {}
        for n in self.nodes:
            rcs[n.name] = n.stop()
        return rcs

    def sanitizer_reports(self):
        """The first line of each ASan/LSan/UBSan report in the nodes' logs
        (the ASan build aborts on one: -fno-sanitize-recover), with its node;
        a node that died of one in a test that kills nodes anyway, or a
        leak reported at a SIGTERM at the end, would go unseen otherwise."""
        found = []
        for n in self.nodes:
            if not os.path.exists(n.log_path):
                continue
            for line in n.logtext().splitlines():
                if any(m in line for m in SANITIZER_MARKS):
                    found.append(f"{n.name}: {line.strip()[:300]}")
                    break
        return found


LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the last lines of every node's log of
    the clusters it made (a run on CI keeps nothing else)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    parts = []
    for c in getattr(item, "starling_clusters", ()):
        for n in c.nodes:
            if not os.path.exists(n.log_path):
                continue
            tail = n.logtext().splitlines()[-LOG_TAIL_LINES:]
            parts.append(f"--- {n.name}: the last {len(tail)} lines of its log")
            parts += [line[:400] for line in tail]
    if parts:
        rep.sections.append(("the nodes' logs", "\n".join(parts)))


@pytest.fixture
def cluster_factory(tmp_path, request):
    made = []
    request.node.starling_clusters = made  # (pytest_runtest_makereport)

    def make(**kw):
        c = Cluster(str(tmp_path / f"c{len(made)}"), **kw)
        os.makedirs(c.base)
        made.append(c)
        return c

    yield make
    reports = []
    for c in made:
        c.stop()
        reports += c.sanitizer_reports()
        if not os.environ.get("STARLING_TEST_KEEP_TMP"):
            shutil.rmtree(c.base, ignore_errors=True)
    assert not reports, f"sanitizer reports in the nodes' logs: {reports}"


@pytest.fixture
def cluster(cluster_factory):
    """A formed 3-node cluster."""
    c = cluster_factory()
    c.start()
    c.wait_healthy()
    return c


WAIT = 30.0


def wait_for(cond, timeout=WAIT, what="condition"):
    """cond()'s first true value, polled until timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    v = None
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {v!r})")


def members(node):
    try:
        st, doc = node.http("GET", "/api/v1/cluster")
    except OSError:
        return None
    return doc if st == 200 else None


def settled(nodes, want):
    """Every node lists exactly the members of `want` ({name: address}), all
    reachable, all voters, and names one leader: returns the documents."""
    docs = [members(n) for n in nodes]
    if not all(docs):
        return None
    for d in docs:
        got = {x["name"]: x for x in d["nodes"]}
        if set(got) != set(want) or not d["leader"]:
            return None
        for name, addr in want.items():
            x = got[name]
            if not x["reachable"] or x["role"] != "voter" or not x["address"].startswith(addr + ":"):
                return None
    if len({d["leader"] for d in docs}) != 1:
        return None
    return docs
