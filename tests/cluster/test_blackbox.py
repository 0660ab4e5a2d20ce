"""An outsider's multi-node checker (issue 9): three nodes started exactly
as README.md's "A 3-node cluster on one machine" says, with only the
documented keys (docs/configuration.md: node_name, bind_address, port,
cluster_address, cluster_port, raft_port, cluster_seeds, admin_port,
data_dir, api_key; each node its own 127.0.0.x address, the same free ports
on all three), fresh data directories; then only public behaviour: MQTT
(Debian's paho-mqtt, a raw socket client for exact packets) and the admin
HTTP API. It counts, and asserts to be zero:

* lost, duplicated and misordered messages (per publisher) of QoS 0/1/2
  streams published on every node to subscribers on every node: exact
  topics, `+`/`#` wildcards, overlapping subscriptions in 3.1.1 and 5.0
  (one copy with the highest granted QoS and every matching subscription
  identifier, as the node does alone [MQTT-3.3.4-2], [MQTT-3.3.4-3]),
  a `$share` group with members on every node (each message to exactly one
  member);
* SUBACK-then-publish misses (a publish on the two other nodes accepted
  after the SUBACK must arrive), and deliveries after an UNSUBACK of what
  was published after it [MQTT-3.10.4-2];
* double session owners: one client id CONNECTing on two nodes at once,
  3.1.1 and 5.0, clean start 0 and 1: exactly one connection survives, the
  other is refused (CONNACK 0x88 / rc 3) or told (5.0 DISCONNECT 0x8E,
  3.1.1 closed), and every node's admin API names the survivor's node;
* a persistent session moved node to node with queued QoS 1/2 messages:
  session present 1, every queued message once, in order;
* retained messages set on one node seen on every node, the last write
  wins; wills published across nodes once.

The heavier parts scale with STARLING_BB_SCALE (default 1.0). The binary is
$STARLING_TEST_BIN (build/asan/node/starling by default), the addresses
$STARLING_BB_ADDRS (default 127.0.0.21,127.0.0.22,127.0.0.23).
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import paho_trace
import ports

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("STARLING_TEST_BIN", os.path.join(ROOT, "build", "asan", "node", "starling"))
ADDRS = os.environ.get("STARLING_BB_ADDRS", "127.0.0.21,127.0.0.22,127.0.0.23").split(",")
SCALE = float(os.environ.get("STARLING_BB_SCALE", "1.0"))
API_KEY = "bb:blackbox-secret"
WAIT = 30.0  # the bound of every wait for something that must happen


def scaled(n):
    return max(1, int(n * SCALE))


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---- the cluster, as README.md starts it ---------------------------------

def free_ports(n):
    """n ports free on every address of ADDRS, never the defaults, reserved
    against other test processes until release (tests/ports.py)."""
    return ports.reserve(n)


class BBNode:
    def __init__(self, i, base, ports):
        self.i = i
        self.host = ADDRS[i]
        self.name = f"bb{i + 1}"
        self.port, self.cluster_port, self.raft_port, self.admin_port = ports
        self.dir = os.path.join(base, self.name)
        self.log_path = os.path.join(base, self.name + ".log")
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
        env.update({
            "STARLING_NODE_NAME": self.name,
            "STARLING_BIND_ADDRESS": self.host,
            "STARLING_PORT": str(self.port),
            "STARLING_CLUSTER_ADDRESS": self.host,
            "STARLING_CLUSTER_PORT": str(self.cluster_port),
            "STARLING_RAFT_PORT": str(self.raft_port),
            "STARLING_CLUSTER_SEEDS": ",".join(ADDRS),
            "STARLING_ADMIN_PORT": str(self.admin_port),
            "STARLING_DATA_DIR": self.dir,
            "STARLING_API_KEY": API_KEY,
        })
        if os.environ.get("STARLING_BB_LOG_LEVEL"):  # e.g. debug, to follow a message
            env["STARLING_LOG_LEVEL"] = os.environ["STARLING_BB_LOG_LEVEL"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, timeout=30):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def http(self, path, auth=True, timeout=10):
        req = urllib.request.Request(f"http://{self.host}:{self.admin_port}{path}")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(API_KEY.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body) if body else None
            except ValueError:
                return e.code, None

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def diagnosis(nodes):
    """What the admin API says of the cluster, for failure messages."""
    out = []
    for n in nodes:
        try:
            st, doc = n.http("/api/v1/cluster", timeout=5)
            view = [(x["name"], x["reachable"], x.get("routes")) for x in doc["nodes"]] if st == 200 else st
            req = urllib.request.Request(f"http://{n.host}:{n.admin_port}/metrics")
            with urllib.request.urlopen(req, timeout=5) as r:
                metrics = [line for line in r.read().decode().splitlines()
                           if "cluster" in line and not line.startswith("#")]
            out.append(f"{n.name}: leader {doc.get('leader')}, members {view}, {metrics}")
        except (OSError, ValueError, KeyError) as e:
            out.append(f"{n.name}: {e!r}")
        # the node's own warnings (e.g. "this node was taken for dead")
        out += [f"  {n.name} log: {line}" for line in n.logtext().splitlines()
                if " WARN " in line or " ERROR " in line][-8:]
    return "\n".join(out)


class known_open:
    """Around a test's final assertions: a failure while a node logged that
    it was taken for dead while alive (docs/cluster.md, "What is not
    guaranteed yet": a node taken for dead while it runs loses its clean
    subscribers' messages until it proposes its routes again, and ends
    those sessions: their clients are disconnected) is that open item,
    reported as an xfail with the failure; any other failure fails."""

    def __init__(self, nodes):
        self.nodes = nodes

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or not issubclass(kind, AssertionError):
            return False
        dead = [n.name for n in self.nodes if "this node was taken for dead" in n.logtext()]
        if dead:
            pytest.xfail(f"{', '.join(dead)} taken for dead while alive (docs/cluster.md): "
                         f"{str(exc)[:2000]}")
        return False


def wait_until(cond, timeout=WAIT, what="condition", step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("blackbox"))
    port_list = free_ports(4)
    ns = [BBNode(i, base, port_list) for i in range(3)]
    for n in ns:
        n.start()

    def formed():
        for n in ns:
            if n.proc.poll() is not None:
                raise AssertionError(f"{n.name} exited {n.proc.returncode}:\n{n.logtext()[-4000:]}")
            try:
                if n.http("/api/v1/health", auth=False, timeout=2)[0] != 200:
                    return False
                st, doc = n.http("/api/v1/cluster", timeout=2)
            except OSError:
                return False
            if st != 200 or not doc.get("leader") or len(doc["nodes"]) != 3 \
                    or not all(x["reachable"] for x in doc["nodes"]):
                return False
        return True

    try:
        wait_until(formed, 60, "three nodes healthy with one leader")
        yield ns
    finally:
        rcs = {n.name: n.stop() for n in ns}
        ports.release(*port_list)
        logs = {n.name: n.logtext() for n in ns}
        if not os.environ.get("STARLING_TEST_KEEP_TMP"):
            shutil.rmtree(base, ignore_errors=True)
    # a clean stop: exit 0 (the ASan build also fails on leaks and errors)
    bad = {k: v for k, v in rcs.items() if v != 0}
    assert not bad, "nodes did not stop cleanly: %r\n%s" % (
        bad, "\n".join(f"--- {k}\n{logs[k][-4000:]}" for k in bad))


# ---- a paho client that records everything --------------------------------

class Client:
    def __init__(self, node, cid=None, version=5, clean=True, expiry=None, will=None):
        self.node = node
        self.cid = cid or uid("bb")
        self.version = version
        self.clean = clean
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.c = mqtt.Client(client_id=self.cid, protocol=proto,
                             clean_session=None if version == 5 else clean,
                             reconnect_on_failure=False)
        self.c.max_inflight_messages_set(64)
        self.expiry = expiry
        if will:
            self.c.will_set(*will)
        self.cond = threading.Condition()
        self.msgs = []  # (topic, payload, qos, dup, retain, subids)
        self.acks = {}
        self.connack = None
        self.session_present = None
        self.disconnected = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe

    def _on_connect(self, c, u, flags, rc, properties=None):
        with self.cond:
            self.connack = int(rc.value if hasattr(rc, "value") else rc)
            self.session_present = bool(flags.get("session present"))
            self.cond.notify_all()

    def _on_disconnect(self, c, u, rc, properties=None):
        with self.cond:
            self.disconnected = rc
            self.cond.notify_all()

    def _on_message(self, c, u, m):
        subids = ()
        if self.version == 5 and hasattr(m, "properties") and m.properties is not None:
            subids = tuple(sorted(getattr(m.properties, "SubscriptionIdentifier", []) or []))
        with self.cond:
            self.msgs.append((m.topic, m.payload, m.qos, bool(m.dup), bool(m.retain), subids))
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, granted, properties=None):
        with self.cond:
            self.acks[mid] = [int(getattr(g, "value", g)) for g in granted]
            self.cond.notify_all()

    def _on_unsubscribe(self, c, u, mid, properties=None, reasoncodes=None):
        with self.cond:
            self.acks[mid] = True
            self.cond.notify_all()

    def wait(self, pred, timeout=WAIT, what="event"):
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError(f"{self.cid} on {self.node.name}: timed out waiting for {what}")

    def connect(self, expect=0):
        kw = {}
        if self.version == 5:
            kw["clean_start"] = self.clean
            if self.expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = self.expiry
                kw["properties"] = p
        self.c.connect(self.node.host, self.node.port, 60, **kw)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, what="CONNACK")
        if expect is not None:
            assert self.connack == expect, (self.cid, self.node.name, self.connack)
        return self

    def subscribe(self, topic, qos, subid=None):
        """SUBSCRIBE one filter; returns the granted QoS once the SUBACK came."""
        if self.version == 5:
            props = None
            if subid is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = subid
            rc, mid = self.c.subscribe(topic, options=SubscribeOptions(qos=qos), properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == 0
        self.wait(lambda: mid in self.acks, what=f"SUBACK of {topic}")
        return self.acks.pop(mid)[0]

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == 0
        self.wait(lambda: mid in self.acks, what=f"UNSUBACK of {topic}")
        self.acks.pop(mid)

    def publish(self, topic, payload, qos, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        assert info.rc == 0, info.rc
        return info

    def count(self):
        with self.cond:
            return len(self.msgs)

    def taken(self):
        with self.cond:
            return list(self.msgs)

    def close(self, clean=True):
        if clean and self.c.is_connected():
            self.c.disconnect()
        self.c.loop_stop()
        try:
            self.c.socket() and self.c.socket().close()
        except OSError:
            pass


def publish_all(infos, timeout=WAIT):
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "a QoS 1/2 publish was not acknowledged in time"


# ---- raw MQTT for exact packets --------------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b):
    return struct.pack(">H", len(b)) + b


class Raw:
    """One raw MQTT connection: CONNECT, then packets as (type, flags, body)."""

    def __init__(self, node, cid, version, clean, expiry=None):
        self.node = node
        self.sock = socket.create_connection((node.host, node.port), timeout=WAIT)
        self.buf = b""
        self.closed = False
        flags = 0x02 if clean else 0
        body = _s(b"MQTT") + bytes([version, flags]) + struct.pack(">H", 60)
        if version == 5:
            props = b""
            if expiry:
                props = b"\x11" + struct.pack(">I", expiry)
            body += _varint(len(props)) + props
        body += _s(cid.encode())
        self.pkt = b"\x10" + _varint(len(body)) + body
        self.version = version

    def send_connect(self):
        self.sock.sendall(self.pkt)

    def read(self, timeout):
        """The next packet (type, flags, body), or None on EOF / reset;
        raises socket.timeout when nothing came in time."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                mult, n, i = 1, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        if len(self.buf) >= i + n:
                            t = self.buf[0]
                            body = self.buf[i:i + n]
                            self.buf = self.buf[i + n:]
                            return (t >> 4, t & 0xF, body)
                        break
            try:
                d = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                d = b""
            if not d:
                self.closed = True
                return None
            self.buf += d

    def ping(self, timeout=WAIT):
        """True when the connection answers a PINGREQ."""
        try:
            self.sock.sendall(b"\xc0\x00")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                p = self.read(max(0.1, deadline - time.monotonic()))
                if p is None:
                    return False
                if p[0] == 13:
                    return True
            return False
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- 0. a fresh cluster serves SUBSCRIBEs at once ---------------------------

def test_fresh_cluster_first_suback_prompt(nodes):
    """Right after the three nodes report health 200 with a leader, a
    SUBSCRIBE on each node is answered about as fast as later ones (a commit
    and a report from every node: tens of ms; docs/cluster.md, "How a
    subscription flows"), and what is published on the others right after
    arrives. (A follower's first answers from the leader were dropped: its
    SUBACKs waited 4 to 5 s, the proposal timeout.) The bound, 2.5 s, is
    generous for a loaded machine and below that timeout."""
    topic = uid("bb/fresh")
    took = {}
    subs = []
    for i, n in enumerate(nodes):
        s = Client(n, version=5).connect()
        t0 = time.monotonic()
        assert s.subscribe(f"{topic}/{i}", 1) == 1
        took[n.name] = round(time.monotonic() - t0, 3)
        subs.append(s)
    pubs = [Client(n, version=4).connect() for n in nodes]
    for i, s in enumerate(subs):
        for p in pubs:
            p.publish(f"{topic}/{i}", p.node.name.encode(), 1)
        s.wait(lambda: len(s.msgs) >= 3, WAIT, "a message from every node")
        assert sorted(m[1] for m in s.taken()) == [b"bb1", b"bb2", b"bb3"]
    for c in subs + pubs:
        c.close()
    print(f"\nfresh cluster: first SUBACK per node {took} s")
    assert max(took.values()) < 2.5, took


# ---- 1. streams on every node, every kind of subscription -----------------

def test_streams_lost_duplicated_misordered_zero(nodes):
    base = uid("bb/s")
    n_per = scaled(300)
    rate = 100.0 * SCALE if SCALE > 1 else 100.0  # messages/s per publisher
    topics = {(i, q): f"{base}/t/n{i}/q{q}" for i in range(3) for q in range(3)}
    subs = {}
    for j, node in enumerate(nodes):
        e = Client(node, version=4).connect()
        for t in topics.values():
            assert e.subscribe(t, 2) == 2
        w = Client(node, version=5).connect()
        assert w.subscribe(f"{base}/t/+/+", 2, subid=1) == 2
        assert w.subscribe(f"{base}/t/#", 1, subid=2) == 1
        assert w.subscribe(f"{base}/t/n{j}/+", 0, subid=3) == 0
        o = Client(node, version=4).connect()
        assert o.subscribe(f"{base}/t/+/q1", 0) == 0
        assert o.subscribe(f"{base}/t/#", 1) == 1
        subs[("exact", j)] = e
        subs[("wild5", j)] = w
        subs[("overlap311", j)] = o
    group = uid("g")
    members = []
    for node in nodes:
        for v in (5, 4):
            m = Client(node, version=v).connect()
            assert m.subscribe(f"$share/{group}/{base}/t/#", 2) == 2
            members.append(m)

    pubs = {(i, q): Client(nodes[i], version=5 if q != 1 else 4).connect()
            for i in range(3) for q in range(3)}
    infos = {k: [] for k in pubs}
    errors = []

    def run(k):
        i, q = k
        p, t = pubs[k], topics[k]
        t0 = time.monotonic()
        try:
            for s in range(n_per):
                due = t0 + s / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)  # pacing the stream, not waiting for anything
                info = p.publish(t, f"{i}:{q}:{s}".encode(), q)
                if q:
                    infos[k].append(info)
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append((k, repr(ex)))

    threads = [threading.Thread(target=run, args=(k,)) for k in pubs]
    t_start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT + n_per / rate)
    assert not errors, errors
    for k in pubs:
        publish_all(infos[k], WAIT)
    t_pub = time.monotonic() - t_start
    total = n_per * len(pubs)
    # every subscriber gets every message (a bounded wait for what must come)
    bound = WAIT + total / 200.0
    deadline = time.monotonic() + bound
    for s in subs.values():
        try:
            s.wait(lambda: len(s.msgs) >= total, max(1.0, deadline - time.monotonic()), "the streams")
        except AssertionError:
            pass  # counted as lost below
    try:
        wait_until(lambda: sum(m.count() for m in members) >= total,
                   max(1.0, deadline - time.monotonic()), "the shared group")
    except AssertionError:
        pass
    # then a marker per publisher, QoS 2, after which nothing more may come:
    # a late duplicate of the stream would come before it (order per publisher)
    mk = [pubs[k].publish(topics[k], f"{k[0]}:{k[1]}:end".encode(), 2) for k in pubs]
    publish_all(mk)
    for s in subs.values():
        s.wait(lambda: sum(1 for x in s.msgs if x[1].endswith(b":end")) >= len(pubs),
               WAIT, "the end markers")
    wait_until(lambda: sum(sum(1 for x in m.taken() if x[1].endswith(b":end")) for m in members)
               >= len(pubs), WAIT, "the end markers in the group")

    report = {"lost": 0, "duplicated": 0, "misordered": 0, "wrong_qos": 0,
              "wrong_subids": 0, "group_lost": 0, "group_duplicated": 0,
              "group_misordered": 0}
    detail = []
    for (kind, j), s in subs.items():
        seen = {}
        for topic, payload, qos, dup, retain, subids in s.taken():
            i, q, seq = payload.decode().split(":")
            i, q = int(i), int(q)
            if seq == "end":
                continue
            seen.setdefault((i, q), []).append(int(seq))
            want_q = min(q, {"exact": 2, "wild5": 2, "overlap311": 1}[kind])
            if qos != want_q:
                report["wrong_qos"] += 1
            if kind == "wild5":
                want_ids = (1, 2, 3) if i == j else (1, 2)
                if subids != want_ids:
                    report["wrong_subids"] += 1
                    if len(detail) < 10:
                        detail.append((kind, j, payload, subids, want_ids))
        for k in pubs:
            got = seen.get(k, [])
            lost = n_per - len(set(got))
            dups = len(got) - len(set(got))
            mis = sum(1 for a, b in zip(got, got[1:]) if b <= a)
            report["lost"] += lost
            report["duplicated"] += dups
            report["misordered"] += mis
            if (lost or dups or mis) and len(detail) < 20:
                detail.append((kind, nodes[j].name, "from", k, "lost", lost, "dup", dups, "mis", mis))
    allg = {}
    for m in members:
        per = {}
        for topic, payload, qos, dup, retain, subids in m.taken():
            i, q, seq = payload.decode().split(":")
            if seq == "end":
                continue
            k = (int(i), int(q))
            per.setdefault(k, []).append(int(seq))
            allg.setdefault(k, []).append(int(seq))
        for k, got in per.items():
            report["group_misordered"] += sum(1 for a, b in zip(got, got[1:]) if b <= a)
    for k in pubs:
        got = allg.get(k, [])
        report["group_lost"] += n_per - len(set(got))
        report["group_duplicated"] += len(got) - len(set(got))
    spread = sum(1 for m in members if m.count() > len(pubs))
    print(f"\nstreams: {total} messages published in {t_pub:.1f} s on 3 nodes, "
          f"{total * len(subs) + total} deliveries expected; counts {report}; "
          f"group members that got messages: {spread}/{len(members)}")
    for c in list(subs.values()) + members + list(pubs.values()):
        c.close()
    with known_open(nodes):
        assert report == {k: 0 for k in report}, (report, detail, diagnosis(nodes))
    assert spread >= 2  # the group is served on more than one node


# ---- 2. SUBACK-then-publish, UNSUBACK-then-publish ------------------------

def test_suback_then_publish_and_unsuback(nodes):
    rounds = scaled(70)  # per lane; three lanes at once
    base = uid("bb/sp")
    counts = {"rounds": 0, "suback_misses": 0, "after_unsuback": 0, "resubscribe_misses": 0,
              "other_subscriber_misses": 0}
    lat = []
    lock = threading.Lock()
    errors = []

    def lane(x):
        y, z = (x + 1) % 3, (x + 2) % 3
        s = Client(nodes[x], version=5 if x != 1 else 4).connect()
        s2 = Client(nodes[x], version=4 if x != 1 else 5).connect()
        py = Client(nodes[y], version=5).connect()
        pz = Client(nodes[z], version=4).connect()
        marker = f"{base}/{x}/marker"
        assert s.subscribe(marker, 1) == 1
        try:
            for k in range(rounds):
                topic = f"{base}/{x}/{k // 2}/leaf"
                filt = [topic, f"{base}/{x}/{k // 2}/+", f"{base}/{x}/{k // 2}/#"][k % 3]
                tag = f"{k}".encode()
                t0 = time.monotonic()
                assert s.subscribe(filt, 1) == 1
                t1 = time.monotonic()
                # the moment the SUBACK is here: publish on the two other nodes
                iy = py.publish(topic, b"y" + tag, 1)
                pz.publish(topic, b"z" + tag, 0)
                want = {b"y" + tag, b"z" + tag}
                try:
                    s.wait(lambda: want <= {m[1] for m in s.msgs if m[0] == topic}, WAIT,
                           "the publishes after the SUBACK")
                except AssertionError:
                    pass
                got = [m[1] for m in s.taken() if m[0] == topic and m[1] in want]
                miss = len(want - set(got))
                iy.wait_for_publish(WAIT)
                # every fourth round another client on the same node has the
                # same filter: the node's route must stay for it
                keep = k % 4 == 3
                if keep:
                    assert s2.subscribe(filt, 1) == 1
                # unsubscribe; what is published after the UNSUBACK must not come
                s.unsubscribe(filt)
                py.publish(topic, b"Y" + tag, 1)
                pz.publish(topic, b"Z" + tag, 1)
                my = py.publish(marker, b"my" + tag, 1)
                mz = pz.publish(marker, b"mz" + tag, 1)
                try:
                    s.wait(lambda: {b"my" + tag, b"mz" + tag} <= {m[1] for m in s.msgs}, WAIT,
                           "the markers")
                except AssertionError:
                    raise AssertionError(
                        f"round {k} on {nodes[x].name}: markers from {nodes[y].name}, "
                        f"{nodes[z].name} missing; got {[(m[0][-12:], m[1]) for m in s.taken()]}, subscriber disconnected: "
                        f"{s.disconnected}, publishers: {py.disconnected} {pz.disconnected}, "
                        f"marker acks: {my.is_published()} {mz.is_published()}\n" + diagnosis(nodes))
                publish_all([my, mz])
                after = sum(1 for m in s.taken() if m[0] == topic and m[1] in (b"Y" + tag, b"Z" + tag))
                kept_miss = 0
                if keep:
                    want2 = {b"Y" + tag, b"Z" + tag}
                    try:
                        s2.wait(lambda: want2 <= {m[1] for m in s2.msgs}, WAIT,
                                "the publishes for the other subscriber")
                    except AssertionError:
                        pass
                    kept_miss = len(want2 - {m[1] for m in s2.taken()})
                    s2.unsubscribe(filt)
                    with s2.cond:
                        s2.msgs.clear()
                with lock:
                    counts["rounds"] += 1
                    if k % 2:
                        counts["resubscribe_misses"] += miss
                    else:
                        counts["suback_misses"] += miss
                    counts["after_unsuback"] += after
                    counts["other_subscriber_misses"] += kept_miss
                    lat.append(t1 - t0)
                with s.cond:
                    s.msgs.clear()
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append((x, repr(ex)))
        finally:
            for c in (s, s2, py, pz):
                c.close()

    threads = [threading.Thread(target=lane, args=(x,)) for x in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT * 10 + rounds * 2)
    lat.sort()
    print(f"\nSUBACK-then-publish: {counts}; SUBACK latency median "
          f"{lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms" if lat else "")
    with known_open(nodes):
        assert not errors, errors
        assert counts["rounds"] == 3 * rounds
        assert counts["suback_misses"] == 0 and counts["resubscribe_misses"] == 0, (
            counts, diagnosis(nodes))
        assert counts["after_unsuback"] == 0 and counts["other_subscriber_misses"] == 0, counts


# ---- 3. one client id on two nodes at once --------------------------------

def _client_nodes(node, cid):
    """What node's admin API says of cid: the sessions of that id in the
    list [(node name, connected)], and GET /api/v1/clients/{id}'s."""
    st, doc = node.http(f"/api/v1/clients?clientid_prefix={cid}&limit=100")
    assert st == 200, (st, doc)
    listed = sorted((d["node"], d["connected"]) for d in doc["data"] if d["clientid"] == cid)
    st, one = node.http(f"/api/v1/clients/{cid}")
    return listed + ([("one", one["node"], one["connected"])] if st == 200 else [("one", st)])


def test_double_owner_one_survives(nodes):
    rounds = scaled(48)
    counts = {"rounds": 0, "double_owners": 0, "no_survivor": 0, "wrong_reason": 0,
              "api_disagrees": 0}
    outcomes = {}
    detail = []
    for r in range(rounds):
        version = 5 if r % 2 else 4
        clean = (r // 2) % 2 == 0
        a, b = nodes[r % 3], nodes[(r + 1) % 3]
        cid = uid(f"dbl{version}{int(clean)}")
        ca = Raw(a, cid, version, clean, expiry=60 if not clean else None)
        cb = Raw(b, cid, version, clean, expiry=60 if not clean else None)
        # both CONNECTs as close together as a client can make them, or the
        # second a few ms later (into the first one's claim)
        ca.send_connect()
        gap = (r // 4 % 4) * 0.007
        if gap:
            time.sleep(gap)  # the gap under test, not a wait for anything
        cb.send_connect()
        state = {}

        def first(conn):
            p = conn.read(WAIT)
            if p is None:
                return None  # closed before any CONNACK
            assert p[0] == 2, (conn.node.name, p)  # CONNACK
            return p[2][1]

        for name, conn in (("a", ca), ("b", cb)):
            state[name] = {"connack": first(conn), "end": None}
        alive = [n for n in state if state[n]["connack"] == 0]
        for n in state:
            if state[n]["connack"] != 0:
                state[n]["end"] = f"refused {state[n]['connack']}"
                if state[n]["connack"] not in ((0x88,) if version == 5 else (3, None)):
                    counts["wrong_reason"] += 1
                    detail.append((cid, n, "connack", state[n]["connack"]))
        if len(alive) == 2:
            # one of them must be told: wait for the first that ends
            conns = {"a": ca, "b": cb}
            deadline = time.monotonic() + WAIT
            ended = None
            while ended is None and time.monotonic() < deadline:
                for n in ("a", "b"):
                    try:
                        p = conns[n].read(0.05)
                    except socket.timeout:
                        continue
                    if p is None:
                        ended = (n, "closed")
                    elif p[0] == 14:
                        reason = p[2][0] if p[2] else 0
                        ended = (n, f"disconnect 0x{reason:02x}")
                    if ended:
                        break
            if ended is None:
                counts["double_owners"] += 1
                detail.append((cid, "both alive after", WAIT))
            else:
                state[ended[0]]["end"] = ended[1]
                alive.remove(ended[0])
                want = "disconnect 0x8e" if version == 5 else "closed"
                if ended[1] != want:
                    counts["wrong_reason"] += 1
                    detail.append((cid, ended))
        if len(alive) == 0:
            counts["no_survivor"] += 1
            detail.append((cid, state))
        elif len(alive) == 1:
            survivor = {"a": ca, "b": cb}[alive[0]]
            if not survivor.ping():
                counts["no_survivor"] += 1
                detail.append((cid, "survivor does not answer PINGREQ", state))
            else:
                want = [(survivor.node.name, True), ("one", survivor.node.name, True)]
                try:
                    wait_until(lambda: all(_client_nodes(n, cid) == want for n in nodes),
                               WAIT, "every node's API to name the survivor")
                except AssertionError:
                    counts["api_disagrees"] += 1
                    detail.append((cid, want, [_client_nodes(n, cid) for n in nodes]))
        key = (version, int(clean), tuple(sorted(str(state[n]["end"]) for n in state)))
        outcomes[key] = outcomes.get(key, 0) + 1
        counts["rounds"] += 1
        ca.close()
        cb.close()
    print(f"\ndouble owners: {counts}; outcomes {outcomes}")
    assert counts == {"rounds": rounds, "double_owners": 0, "no_survivor": 0, "wrong_reason": 0,
                      "api_disagrees": 0}, (counts, detail[:10])


# ---- 4. a persistent session moved node to node with queued messages -------

def _queued(node, cid):
    st, doc = node.http(f"/api/v1/clients/{cid}")
    if st != 200:
        return -1
    return doc["queued"] + doc["inflight"]


@pytest.mark.parametrize("version", [5, 4])
def test_persistent_session_moves_with_its_queue(nodes, version):
    per_hop = scaled(60)  # per publisher and hop
    cid = uid(f"mv{version}")
    base = uid("bb/mv")
    t1, t2 = f"{base}/one", f"{base}/two/x"
    x = Client(nodes[0], cid, version, clean=False, expiry=600).connect()
    assert x.subscribe(t1, 1) == 1
    assert x.subscribe(f"{base}/two/+", 2) == 2
    x.close()
    counts = {"hops": 0, "session_present_0": 0, "lost": 0, "duplicated": 0, "misordered": 0,
              "wrong_qos": 0}
    pubs = [Client(n, version=5).connect() for n in nodes]
    home = 0
    for hop in range(4):
        others = [i for i in range(3) if i != home]
        infos = []
        for s in range(per_hop):
            for i in others:
                infos.append(pubs[i].publish(t1 if s % 2 == 0 else t2, f"{i}:{hop}:{s}".encode(),
                                             1 if s % 2 == 0 else 2))
        publish_all(infos)
        want = per_hop * len(others)
        # every message is queued in the offline session before it moves
        wait_until(lambda: _queued(nodes[home], cid) == want, WAIT,
                   f"{want} messages queued on {nodes[home].name} "
                   f"(has {_queued(nodes[home], cid)})")
        dest = (home + 1 + hop % 2) % 3
        y = Client(nodes[dest], cid, version, clean=False, expiry=600).connect()
        if not y.session_present:
            counts["session_present_0"] += 1
        try:
            y.wait(lambda: len(y.msgs) >= want, WAIT, f"{want} queued messages")
        except AssertionError:
            pass
        # a marker from every node: nothing more may come before it
        mk = [p.publish(t1, f"{i}:{hop}:end".encode(), 1) for i, p in enumerate(pubs)]
        publish_all(mk)
        y.wait(lambda: sum(1 for m in y.msgs if m[1].endswith(b":end")) >= 3, WAIT, "markers")
        seen = {}
        for topic, payload, qos, dup, retain, subids in y.taken():
            i, h, s = payload.decode().split(":")
            if s == "end":
                continue
            s = int(s)
            if qos != (1 if s % 2 == 0 else 2) or int(h) != hop:
                counts["wrong_qos"] += 1
            seen.setdefault((int(i), s % 2), []).append(s)
        for i in others:
            for q in (0, 1):
                got = seen.get((i, q), [])
                counts["lost"] += per_hop // 2 + (per_hop % 2 if q == 0 else 0) - len(set(got))
                counts["duplicated"] += len(got) - len(set(got))
                # MQTT orders per topic and QoS (an "ordered topic", MQTT 5.0
                # 4.6): per publisher, per topic here
                counts["misordered"] += sum(1 for a, b in zip(got, got[1:]) if b <= a)
        counts["hops"] += 1
        y.close()
        home = dest
    for p in pubs:
        p.close()
    # end the session
    z = Client(nodes[home], cid, version, clean=True).connect()
    z.close()
    print(f"\nsession moves (MQTT {version}): {counts}")
    with known_open(nodes):
        assert counts == {"hops": 4, "session_present_0": 0, "lost": 0, "duplicated": 0,
                          "misordered": 0, "wrong_qos": 0}, counts


# ---- 5. retained messages -------------------------------------------------

def _retained_on(node, topic, version=5):
    """The retained message a new subscriber on node gets for topic (None
    when a marker published after the SUBACK comes first)."""
    s = Client(node, version=version).connect()
    try:
        assert s.subscribe(topic, 1) == 1
        mark = topic + "/__mark"
        assert s.subscribe(mark, 1) == 1
        p = s.publish(mark, b"m", 1)
        s.wait(lambda: any(m[0] == mark for m in s.msgs), WAIT, "marker")
        p.wait_for_publish(WAIT)
        got = [m for m in s.taken() if m[0] == topic]
        assert len(got) <= 1, got
        return (got[0][1], got[0][4]) if got else None
    finally:
        s.close()


def test_retained_last_write_wins_everywhere(nodes):
    """A retained message published (QoS 1, acknowledged) on one node is
    replicated through Raft, and acknowledged once that committed: every
    node serves it once it applied it (docs/cluster.md, "How a publish
    flows" 5). Writes one after the other (each after the previous PUBACK)
    from different nodes: every node ends with the same message, the last
    one written (before the PUBACK waited for the commit, an earlier write
    whose proposal took longer could commit last and win everywhere)."""
    rbase = uid("bb/ret")
    topic = rbase + "/t"
    pubs = [Client(n, version=5).connect() for n in nodes]
    vals = []
    t0 = time.monotonic()
    for k in range(scaled(18)):
        i = k % 3
        v = f"v{k}-from-{nodes[i].name}".encode()
        pubs[i].publish(topic, v, 1, retain=True).wait_for_publish(WAIT)
        vals.append(v)
    last = vals[-1]
    views = {}
    t_last = time.monotonic()
    when = {}
    history = []

    same_since = [None, None]  # the value every node served, since when

    def agreed():
        for n in nodes:
            views[n.name] = _retained_on(n, topic)
            if views[n.name] == (last, True):
                when.setdefault(n.name, round(time.monotonic() - t_last, 2))
            else:
                when.pop(n.name, None)
                history.append((round(time.monotonic() - t_last, 2), n.name, views[n.name]))
        # every node serves the last one, or the same one for 3 s
        if all(v == (last, True) for v in views.values()):
            return True
        one = set(views.values())
        if len(one) != 1 or same_since[0] != next(iter(one)):
            same_since[:] = [next(iter(one)), time.monotonic()] if len(one) == 1 else [None, None]
            return False
        return time.monotonic() - same_since[1] >= 3.0

    with known_open(nodes):
        try:
            wait_until(agreed, WAIT, "every node to serve one retained message", step=0.2)
        except AssertionError:
            raise AssertionError(f"retained value per node {views}, last written {last}\n"
                                 + diagnosis(nodes))
    print(f"\nretained: {len(vals)} writes ({time.monotonic() - t0:.2f} s); every node serves "
          f"{views[nodes[0].name]}; the last seen since (s after its PUBACK) {when}; "
          f"before: {history[:6]}")
    # a QoS 1 retained publish is acknowledged once its RetainedSet
    # committed, so the last acknowledged is the last in the log
    assert views[nodes[0].name] == (last, True), \
        f"an older retained message won everywhere: {views[nodes[0].name]}, last written {last}"
    # and a wildcard subscriber on each node gets exactly it
    for n in nodes:
        s = Client(n, version=4).connect()
        s.subscribe(rbase + "/+", 1)
        s.wait(lambda: any(m[0] == topic for m in s.msgs), WAIT, "the retained message")
        assert [m[1] for m in s.taken() if m[0] == topic] == [last]
        s.close()
    # cleared on one node: gone everywhere
    pubs[1].publish(topic, b"", 1, retain=True).wait_for_publish(WAIT)
    wait_until(lambda: all(_retained_on(n, topic) is None for n in nodes), WAIT,
               "the cleared retained message gone everywhere", step=0.2)
    for p in pubs:
        p.close()


# ---- 6. wills across nodes ------------------------------------------------

@pytest.mark.parametrize("version", [5, 4])
def test_will_across_nodes_once(nodes, version):
    topic = uid("bb/will")
    subs = [Client(n, version=v).connect() for n in nodes for v in (5, 4)]
    for s in subs:
        assert s.subscribe(topic + "/#", 2) == 2
    for i, n in enumerate(nodes):
        # a client that dies: its will reaches every node once
        w = Client(n, version=version, will=(f"{topic}/{i}", f"dead-{i}".encode(), 1 + i % 2))
        w.connect()
        w.c.loop_stop()
        w.c.socket().close()  # no DISCONNECT
        # a client that says goodbye: no will
        g = Client(n, version=version, will=(f"{topic}/{i}", f"bye-{i}".encode(), 1))
        g.connect()
        g.close(clean=True)
    for s in subs:
        s.wait(lambda: sum(1 for m in s.msgs if m[1].startswith(b"dead-")) >= 3, WAIT, "three wills")
    # a marker from every node after the wills: no second copy, no goodbye will
    mk = Client(nodes[0], version=5).connect()
    for i in range(3):
        p = Client(nodes[i], version=5).connect()
        p.publish(f"{topic}/m", b"mark", 2).wait_for_publish(WAIT)
        p.close()
    for s in subs:
        s.wait(lambda: sum(1 for m in s.msgs if m[1] == b"mark") >= 3, WAIT, "markers")
        got = sorted(m[1] for m in s.taken() if m[1] != b"mark")
        assert got == [b"dead-0", b"dead-1", b"dead-2"], (s.node.name, got)
        assert all(m[2] == 1 + int(m[1][-1:]) % 2 for m in s.taken() if m[1].startswith(b"dead"))
        s.close()
    mk.close()


def _will_client(node, cid, topic, version, delay=None, clean=True, expiry=None):
    c = Client(node, cid, version=version, clean=clean, expiry=expiry)
    props = None
    if delay is not None:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = delay
    c.c.will_set(topic, f"will-{cid}".encode(), 1, False, props)
    return c.connect()


@pytest.mark.parametrize("version", [5, 4])
def test_will_on_takeover_same_as_on_one_node(nodes, version):
    """A connection taken over by a CONNECT of the same client id ends
    without DISCONNECT, so its will (no delay) is published [MQTT-5.0
    3.1.2-8]; whatever the node does when the takeover is on the same node,
    it does when the new CONNECT is on another node: the same wills, once."""
    topic = uid("bb/wt")
    subs = [Client(n, version=5).connect() for n in nodes]
    for s in subs:
        assert s.subscribe(topic + "/#", 1) == 1
    got = {}
    for where in ("same", "other"):
        for clean in (True, False):
            cid = uid(f"wt{where}{int(clean)}")
            t = f"{topic}/{cid}"
            old = _will_client(nodes[0], cid, t, version, clean=clean,
                               expiry=None if clean else 60)
            new = Client(nodes[0] if where == "same" else nodes[1], cid, version=version,
                         clean=clean, expiry=None if clean else 60).connect()
            # once the old connection is closed, a marker from its node: a
            # will published at the takeover comes before it
            old.wait(lambda: old.disconnected is not None, WAIT, "the old connection to close")
            mk = Client(old.node, version=5).connect()
            mk.publish(t, b"mark", 1).wait_for_publish(WAIT)
            for s in subs:
                s.wait(lambda: any(m[0] == t and m[1] == b"mark" for m in s.msgs), WAIT, "marker")
            got[(where, clean)] = [sum(1 for m in s.taken() if m[0] == t and m[1] != b"mark")
                                   for s in subs]
            for c in (old, new, mk):
                c.close()
            if not clean:
                Client(nodes[2], cid, version=version, clean=True).connect().close()
    for s in subs:
        s.close()
    print(f"\nwills at a takeover (MQTT {version}), per subscriber node: {got}")
    for clean in (True, False):
        assert got[("other", clean)] == got[("same", clean)], got
    assert all(v in ([1, 1, 1], [0, 0, 0]) for v in got.values()), got


def test_delayed_will_cancelled_by_reconnect_on_another_node(nodes):
    """MQTT 5.0: a will with a delay is not published when a new connection
    of the client id comes within the delay [MQTT-3.1.2-8]; the reconnection
    may be on another node (clients move behind a load balancer)."""
    topic = uid("bb/wd")
    subs = [Client(n, version=5).connect() for n in nodes]
    for s in subs:
        assert s.subscribe(topic + "/#", 1) == 1
    results = {}
    for where in (0, 1):
        cid = uid(f"wd{where}")
        t = f"{topic}/{cid}"
        w = _will_client(nodes[0], cid, t, 5, delay=3, clean=False, expiry=60)
        w.c.loop_stop()
        w.c.socket().close()  # no DISCONNECT: the will waits 3 s
        t_dead = time.monotonic()
        # the same node or another one: the session is resumed within the delay
        r = Client(nodes[where], cid, version=5, clean=False, expiry=60).connect()
        t_back = time.monotonic() - t_dead
        assert r.session_present
        # bounded wait for what must not come: past the delay, then a marker
        deadline = time.monotonic() + 3 + 3
        while time.monotonic() < deadline:
            if any(m[0] == t for s in subs for m in s.taken()):
                break
            time.sleep(0.1)
        mk = Client(nodes[2], version=5).connect()
        mk.publish(t, b"mark", 1).wait_for_publish(WAIT)
        for s in subs:
            s.wait(lambda: any(m[0] == t and m[1] == b"mark" for m in s.msgs), WAIT, "marker")
        results[nodes[where].name] = [sum(1 for m in s.taken() if m[0] == t and m[1] != b"mark")
                                      for s in subs] + [f"CONNACK after {t_back:.2f} s"]
        r.close()
        mk.close()
        Client(nodes[where], cid, version=5, clean=True).connect().close()
    for s in subs:
        s.close()
    print(f"\ndelayed wills after a reconnection within the delay, per node: {results}")
    assert all(v[:3] == [0, 0, 0] for v in results.values()), results


@pytest.mark.parametrize("version", [5, 4])
def test_session_moves_under_traffic(nodes, version):
    """A persistent session (one paho client object, which keeps its own
    QoS 2 state across reconnections, as a real client does) moves from node
    to node every half second while QoS 1 and QoS 2 publishers on every node
    publish without pause: by docs/cluster.md ("How a takeover flows", late
    messages) nothing acknowledged is lost, and QoS 2 comes exactly once
    (QoS 1 at least once, and late messages may come after newer ones:
    both are counted and printed, not asserted)."""
    moves = scaled(8)
    cid = uid(f"mt{version}")
    topic = uid("bb/mt")
    sub = Client(nodes[0], cid, version, clean=False, expiry=600)
    sub.hop_of = []
    sub.hop = "bb1"
    orig = sub._on_message

    def on_msg(c, u, m):
        with sub.cond:
            sub.hop_of.append(sub.hop)
        orig(c, u, m)
    sub.c.on_message = on_msg
    paho_trace.maybe_trace(sub.c, cid)  # STARLING_TEST_PAHO_TRACE
    sub.connect()
    assert sub.subscribe(topic + "/#", 2) == 2
    pubs = {(i, q): Client(nodes[i], version=5).connect() for i in range(3) for q in (1, 2)}
    stop = threading.Event()
    sent = {k: 0 for k in pubs}
    infos = {k: [] for k in pubs}
    errors = []

    def run(k):
        i, q = k
        t0 = time.monotonic()
        try:
            while not stop.is_set():
                due = t0 + sent[k] / 40.0
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)  # pacing the stream
                infos[k].append(pubs[k].publish(f"{topic}/{i}/{q}", f"{i}:{q}:{sent[k]}".encode(), q))
                sent[k] += 1
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append((k, repr(ex)))

    threads = [threading.Thread(target=run, args=(k,)) for k in pubs]
    for th in threads:
        th.start()
    hops = []
    refused = 0  # CONNACKs Server unavailable, connected again
    try:
        for m in range(moves):
            # about 20 messages per publisher between two moves
            n0 = sum(sent.values())
            wait_until(lambda: sum(sent.values()) >= n0 + 60, WAIT, "publishes between moves", 0.02)
            dest = nodes[(m + 1) % 3]
            if m % 2 == 0:
                sub.c.disconnect()  # a clean DISCONNECT, then elsewhere
                sub.wait(lambda: sub.disconnected is not None, WAIT, "the DISCONNECT")
            # else: the connection just drops (connect() closes the socket)
            sub.hop = f"{dest.name}#{m}"
            for attempt in range(6):
                sub.c.loop_stop()
                sub.node, sub.connack, sub.disconnected = dest, None, None
                sub.connect(expect=None)
                # a claim not answered within connect_timeout of the CONNECT
                # (a loaded machine, a session with thousands of messages):
                # 0x88 / 3 Server unavailable, and a client connects again
                if sub.connack not in (0x88, 3) or attempt == 5:
                    break
                refused += 1
            assert sub.connack == 0, (cid, dest.name, sub.connack)
            hops.append((dest.name, sub.session_present))
    finally:
        stop.set()
        for th in threads:
            th.join(WAIT)
    assert not errors, errors
    for k in pubs:
        publish_all(infos[k])
    total = sum(sent.values())
    try:
        sub.wait(lambda: len({m[1] for m in sub.msgs}) >= total, WAIT + total / 100.0,
                 "every acknowledged message")
    except AssertionError:
        pass  # counted below
    mk = [pubs[(i, 1)].publish(f"{topic}/{i}/1", f"{i}:1:end".encode(), 1) for i in range(3)]
    publish_all(mk)
    sub.wait(lambda: sum(1 for m in sub.msgs if m[1].endswith(b":end")) >= 3, WAIT, "markers")
    # late messages of a move may come after the markers (they are not
    # ordered, docs/cluster.md): a loaded machine gets a bounded while
    # longer before what is missing counts as lost
    try:
        sub.wait(lambda: len({m[1] for m in sub.msgs}) >= total + 3, WAIT,
                 "every acknowledged message")
    except AssertionError:
        pass  # counted below
    counts = {"lost_qos1": 0, "lost_qos2": 0, "dup_qos2": 0, "dup_qos1": 0, "misordered": 0}
    seen = {}
    for t, payload, qos, dup, retain, subids in sub.taken():
        i, q, s = payload.decode().split(":")
        if s != "end":
            seen.setdefault((int(i), int(q)), []).append(int(s))
    for k in pubs:
        got = seen.get(k, [])
        counts[f"lost_qos{k[1]}"] += sent[k] - len(set(got))
        counts[f"dup_qos{k[1]}"] += len(got) - len(set(got))
        counts["misordered"] += sum(1 for a, b in zip(got, got[1:]) if b <= a)
    # where each duplicate came: (payload, [(arrival hop, node, dup flag)])
    dups = {}
    arr = sub.taken()
    for idx, (t, payload, qos, dup, retain, subids) in enumerate(arr):
        if sum(1 for x in arr if x[1] == payload) > 1:
            dups.setdefault(payload, []).append((idx, sub.hop_of[idx], qos, dup))
    if dups:
        print("\nduplicates:", list(dups.items())[:12])
    sub.close()
    Client(nodes[0], cid, version, clean=True).connect().close()
    for p in pubs.values():
        p.close()
    print(f"\nsession moving under traffic (MQTT {version}): {total} messages, "
          f"{len(hops)} moves {hops}, {refused} CONNACK(s) Server unavailable; counts {counts}")
    assert all(sp for _, sp in hops), hops
    with known_open(nodes):
        assert counts["lost_qos1"] == 0 and counts["lost_qos2"] == 0, counts
        # QoS 2 once: a message published on the new owner B while the
        # session moves there is delivered by B directly and also sent back
        # by the old owner's copy as a late message; B takes it once by its
        # identity (docs/cluster.md, "Ordering of late messages"). This was
        # an xfail ("QoS 2 twice when published on the new owner during a
        # move") until the identities; 0 in every run since (issue 10).
        assert counts["dup_qos2"] == 0, (counts, list(dups.items())[:12])



def test_properties_retain_flag_and_expiry_across_nodes(nodes):
    """What a 5.0 PUBLISH carries reaches subscribers on other nodes as on
    the publisher's: user properties in order [MQTT-3.3.2-18], content
    type, response topic, correlation data, payload format; the message
    expiry interval counted down [MQTT-3.3.2-6]; the retain flag as the
    subscription's Retain As Published says [MQTT-3.3.1-12/13]; a topic
    alias resolved; and a message that expired while queued for an offline
    session on another node is not delivered [MQTT-3.3.2-5]."""
    topic = uid("bb/props")
    rap = [Client(n, version=5).connect() for n in nodes]
    plain = [Client(n, version=5).connect() for n in nodes]
    got = {}

    def record(cl):
        def on(c, u, m):
            with cl.cond:
                cl.msgs.append((m.topic, m.payload, m.qos, bool(m.dup), bool(m.retain), m.properties))
                cl.cond.notify_all()
        cl.c.on_message = on

    for c in rap + plain:
        record(c)
    for c in rap:
        rc, mid = c.c.subscribe(topic + "/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        c.wait(lambda: mid in c.acks, what="SUBACK")
    for c in plain:
        assert c.subscribe(topic + "/#", 1) == 1
    pub = Client(nodes[0], version=5).connect()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("b", "2"), ("a", "1"), ("b", "1")]
    props.ContentType = "text/x-checker"
    props.ResponseTopic = topic + "/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 600
    pub.c.publish(topic + "/p", b"with-props", 1, True, props).wait_for_publish(WAIT)
    alias = Properties(PacketTypes.PUBLISH)
    alias.TopicAlias = 3
    pub.c.publish(topic + "/alias", b"a1", 1, False, alias).wait_for_publish(WAIT)
    alias2 = Properties(PacketTypes.PUBLISH)
    alias2.TopicAlias = 3
    pub.c.publish("", b"a2", 1, False, alias2).wait_for_publish(WAIT)
    for c in rap + plain:
        c.wait(lambda: len(c.msgs) >= 3, WAIT, "three messages")
        m = c.taken()
        assert [(x[0], x[1]) for x in m] == [(topic + "/p", b"with-props"), (topic + "/alias", b"a1"),
                                             (topic + "/alias", b"a2")], (c.node.name, m)
        p = m[0][5]
        assert p.UserProperty == [("b", "2"), ("a", "1"), ("b", "1")], (c.node.name, p)
        assert (p.ContentType, p.ResponseTopic, p.CorrelationData, p.PayloadFormatIndicator) == (
            "text/x-checker", topic + "/reply", b"\x00\x01corr", 1), (c.node.name, p)
        assert 590 <= p.MessageExpiryInterval <= 600, (c.node.name, p.MessageExpiryInterval)
        assert m[0][4] is (c in rap), (c.node.name, "retain flag", m[0][4])
        got[c.node.name] = got.get(c.node.name, 0) + 1
    # expiry while queued on another node
    cid = uid("exp")
    off = Client(nodes[1], cid, 5, clean=False, expiry=600).connect()
    assert off.subscribe(topic + "/e", 1) == 1
    off.close()
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.c.publish(topic + "/e", b"expires", 1, False, short).wait_for_publish(WAIT)
    pub.publish(topic + "/e", b"stays", 1).wait_for_publish(WAIT)
    t_pub = time.monotonic()
    wait_until(lambda: _queued(nodes[1], cid) == 2, WAIT, "two messages queued")
    remaining = 2.5 - (time.monotonic() - t_pub)
    if remaining > 0:
        time.sleep(remaining)  # the expiry interval must pass: the time is what is under test
    back = Client(nodes[1], cid, 5, clean=False, expiry=600).connect()
    assert back.session_present
    back.wait(lambda: any(x[1] == b"stays" for x in back.msgs), WAIT, "the message that stays")
    assert [x[1] for x in back.taken()] == [b"stays"], back.taken()
    back.close()
    Client(nodes[1], cid, 5, clean=True).connect().close()
    for c in rap + plain + [pub]:
        c.close()


def test_subscribe_burst_same_filter_on_every_node(nodes):
    """Many clients on all three nodes SUBSCRIBE to the same fresh filter at
    once (three nodes adding the same route concurrently), then half of
    them UNSUBSCRIBE at once: once each has its SUBACK every publish from
    any node reaches it, and once each UNSUBACK is in nothing more reaches
    the unsubscribed, while the others still get everything."""
    rounds = scaled(10)
    clients = [Client(nodes[i % 3], version=5 if i % 2 else 4).connect() for i in range(30)]
    pubs = [Client(n, version=5).connect() for n in nodes]
    counts = {"rounds": 0, "misses": 0, "after_unsuback": 0, "kept_misses": 0}
    base = uid("bb/burst")
    for r in range(rounds):
        filt = [f"{base}/{r}/+", f"{base}/{r}/#", f"{base}/{r}/x"][r % 3]
        topic = f"{base}/{r}/x"
        mids = []
        for c in clients:
            if c.version == 5:
                rc, mid = c.c.subscribe(filt, options=SubscribeOptions(qos=1))
            else:
                rc, mid = c.c.subscribe(filt, 1)
            mids.append(mid)
        for c, mid in zip(clients, mids):
            c.wait(lambda: mid in c.acks, WAIT, "SUBACK")
            c.acks.pop(mid)
        infos = [p.publish(topic, f"{r}:one:{p.node.name}".encode(), 1) for p in pubs]
        publish_all(infos)
        for c in clients:
            try:
                c.wait(lambda: sum(1 for m in c.msgs if m[0] == topic) >= 3, WAIT, "three messages")
            except AssertionError:
                pass
            counts["misses"] += 3 - len({m[1] for m in c.taken() if m[0] == topic})
        leaving = clients[::2]
        mids = [c.c.unsubscribe(filt)[1] for c in leaving]
        for c, mid in zip(leaving, mids):
            c.wait(lambda: mid in c.acks, WAIT, "UNSUBACK")
            c.acks.pop(mid)
        infos = [p.publish(topic, f"{r}:two:{p.node.name}".encode(), 1) for p in pubs]
        publish_all(infos)
        for c in clients[1::2]:
            try:
                c.wait(lambda: sum(1 for m in c.msgs if b":two:" in m[1]) >= 3, WAIT, "three more")
            except AssertionError:
                pass
            counts["kept_misses"] += 3 - len({m[1] for m in c.taken() if b":two:" in m[1]})
        # a marker on a topic every client has: after it, nothing of round two
        # may have reached the unsubscribed ones (per-publisher order)
        for c in leaving:
            assert c.subscribe(f"{base}/{r}/mark", 1) == 1
        infos = [p.publish(f"{base}/{r}/mark", b"mark", 1) for p in pubs]
        publish_all(infos)
        for c in leaving:
            c.wait(lambda: sum(1 for m in c.msgs if m[1] == b"mark") >= 3, WAIT, "markers")
            counts["after_unsuback"] += sum(1 for m in c.taken() if b":two:" in m[1])
            c.c.unsubscribe(f"{base}/{r}/mark")
        for c in clients[1::2]:
            rc, mid = c.c.unsubscribe(filt)
            c.wait(lambda: mid in c.acks, WAIT, "UNSUBACK")
        for c in clients:
            with c.cond:
                c.msgs.clear()
        counts["rounds"] += 1
    for c in clients + pubs:
        c.close()
    print(f"\nsubscribe bursts (30 clients on 3 nodes): {counts}")
    with known_open(nodes):
        assert counts == {"rounds": rounds, "misses": 0, "after_unsuback": 0, "kept_misses": 0}, (
            counts, diagnosis(nodes))
