"""The fault toolkit of tests/cluster (issue 10): what an operator's worst
day does to a 3-node cluster of conftest.Cluster, each fault undone by the
test's teardown even when the test fails.

* processes: kill (SIGKILL), pause/resume (SIGSTOP/SIGCONT), restart with the
  same data directory, rolling restart (SIGTERM, start, wait healthy);
* network: a Partition is an nftables table of our own (one per Partition,
  `starling_test_<pid>_<n>`) with `drop` rules for the cluster's inter-node
  ports between node addresses, both ways; heal() deletes the table. Client
  and admin traffic (from 127.0.0.1) and other tests' clusters (other
  ports) are never touched;
* disk: a node's data_dir on a small tmpfs (root) that fill() fills up and
  unfill() frees again;
* state: the replicated tables of each node read straight from its LMDB
  environment (DATA_DIR/cluster/fsm, read-only), the leader, health.

Every wait is bounded; nothing here sleeps as synchronisation.
"""

import atexit
import errno
import itertools
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

HEALTHY_TIMEOUT = 30.0


def node_id(node):
    """The node's Raft id: FNV-1a 64 of "a.b.c.d:raft_port" (raft_node_id_of)."""
    h = 1469598103934665603
    for ch in f"{node.host}:{node.cluster.raft_port}".encode():
        h ^= ch
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h or 1


def node_of_id(cluster, nid):
    for n in cluster.nodes:
        if node_id(n) == nid:
            return n.name
    return f"?{nid:x}"


def wait_until(cond, timeout, what, interval=0.05):
    """Poll cond() until it returns a true value (returned), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ processes

def alive(node):
    return node.proc is not None and node.proc.poll() is None


def kill(node):
    """SIGKILL: no shutdown, no flush beyond what was committed."""
    assert alive(node), f"{node.name} is not running"
    node.paused = False
    return node.stop(signal.SIGKILL)


def pause(node):
    assert alive(node), f"{node.name} is not running"
    node.proc.send_signal(signal.SIGSTOP)
    node.paused = True


def resume(node):
    if alive(node) and getattr(node, "paused", False):
        node.proc.send_signal(signal.SIGCONT)
    node.paused = False


def hears(node, other):
    """node serves its API and lists `other` as reachable."""
    try:
        st, doc = node.http("GET", "/api/v1/cluster", timeout=2)
    except OSError:
        return False
    return st == 200 and any(x["name"] == other.name and x["reachable"] for x in doc["nodes"])


def node_healthy(node, cluster):
    """Health 200 and every node of `cluster` listed as reachable."""
    if node.health() != 200:
        return False
    try:
        st, doc = node.http("GET", "/api/v1/cluster", timeout=2)
    except OSError:
        return False
    return st == 200 and doc["leader"] and len(doc["nodes"]) == len(cluster.nodes) and \
        all(x["reachable"] for x in doc["nodes"])


def wait_healthy(cluster, timeout=HEALTHY_TIMEOUT):
    """Every running node healthy (a leader, every member reachable)."""
    def ok():
        for n in cluster.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise AssertionError(f"{n.name} exited {n.proc.returncode}:\n{n.logtext()[-4000:]}")
        return all(node_healthy(n, cluster) for n in cluster.nodes if alive(n))
    t0 = time.monotonic()
    try:
        wait_until(ok, timeout, "a healthy cluster")
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{describe(cluster)}") from None
    return time.monotonic() - t0


def describe(cluster, log_tail=1500):
    """Each node's health, view of the cluster and last log lines."""
    out = []
    for n in cluster.nodes:
        if not alive(n):
            out.append(f"--- {n.name}: not running")
            continue
        try:
            st, doc = n.http("GET", "/api/v1/cluster", timeout=2)
            view = f"leader {doc.get('leader')} " + " ".join(
                f"{x['name']}:{x['role']}:{'up' if x['reachable'] else 'DOWN'}" for x in doc["nodes"])
        except Exception as e:  # a diagnosis must not fail
            view = f"no answer ({e})"
        out.append(f"--- {n.name}: health {n.health()} {view}\n{n.logtext()[-log_tail:]}")
    return "\n".join(out)


def restart(node, sig=signal.SIGTERM, wait=True):
    """Stop the node (SIGTERM: a clean shutdown; SIGKILL: a crash) and start
    it again on the same data directory; wait until the cluster is healthy."""
    resume(node)
    rc = node.stop(sig)
    node.start()
    if wait:
        wait_healthy(node.cluster)
    return rc


def rolling_restart(cluster, before_stop=None, after_start=None):
    """Each node in turn: SIGTERM, start again, wait until every node is
    healthy. before_stop(node) / after_start(node) are called around it.
    Returns the exit codes of the clean shutdowns."""
    rcs = {}
    for n in cluster.nodes:
        if before_stop:
            before_stop(n)
        rcs[n.name] = n.stop(signal.SIGTERM)
        n.start()
        wait_healthy(cluster)
        if after_start:
            after_start(n)
    return rcs


def leader(cluster, among=None):
    """The name of the leader as every node of `among` (default: the running
    ones) names it, when they agree and it is one of them; else None."""
    among = [n for n in (among or cluster.nodes) if alive(n)]
    names = set()
    for n in among:
        try:
            st, doc = n.http("GET", "/api/v1/cluster", timeout=1)
        except OSError:
            return None
        if st != 200 or not doc.get("leader"):
            return None
        names.add(doc["leader"])
    if len(names) != 1:
        return None
    name = names.pop()
    return name if any(n.name == name for n in among) else None


def leader_serving_since(node, after):
    """The wall-clock time (time.time()) at which `node` logged that it
    leads and serves ("cluster: leader of term N, barrier applied,
    serving") at or after `after`, or None. The node's own timestamp: a
    measure of the election that the test's polling under load does not
    lengthen."""
    import datetime
    for line in node.logtext().splitlines():
        if "leader of term" not in line or "serving" not in line:
            continue
        try:
            ts = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            continue
        if ts >= after:
            return ts
    return None


def node_named(cluster, name):
    return next(n for n in cluster.nodes if n.name == name)


def store_held(node, path):
    """Debug builds: node's store commits nothing while the file `path`
    exists (STARLING_TEST_STORE_HOLD), from its next start on."""
    base = node.env
    node.env = lambda: {**base(), "STARLING_TEST_STORE_HOLD": str(path)}


# --------------------------------------------------------------------- network

def nft_available():
    """None when nftables partitions can be made here, else the reason."""
    if os.geteuid() != 0:
        return "nftables partitions need root"
    if shutil.which("nft") is None:
        return "nft is not installed (Debian package nftables)"
    probe = f"starling_probe_{os.getpid()}"
    r = subprocess.run(["nft", "add", "table", "ip", probe], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        return f"nft cannot create a table here: {r.stderr.strip()}"
    subprocess.run(["nft", "delete", "table", "ip", probe], capture_output=True, timeout=10)
    return None


_tables = itertools.count()


# The environment of a debug build that waits for a member knowing no Raft
# leader as for any other member that answers (3 s without it,
# STARLING_TEST_SYNC_LEADERLESS_MS): for a test whose claim must wait for a
# member cut off from Raft alone, as for one that applies slowly.
LEADERLESS_WAITED = {"STARLING_TEST_SYNC_LEADERLESS_MS": "600000"}


class Partition:
    """Cut node groups apart in both directions on the cluster's own ports.

    cut(a, b): every packet between an address of group a and one of group
    b to or from the channel and Raft ports is dropped (TCP sees silence,
    not a reset: what a real cut looks like). heal(): the table is deleted.
    Use as a fixture (partition) so that heal() always runs.

    hook: where the packets are dropped. "output": as they leave their
    node; the sender's kernel sees its send fail and tries again on a
    short timer, so what it sent into the cut goes again soon after the
    heal. "input": as they arrive; the sender's kernel took them for sent,
    as across a real network, and sends them again with a backoff that
    doubles."""

    def __init__(self, cluster, hook="output"):
        assert hook in ("output", "input"), hook
        self.cluster = cluster
        self.hook = hook
        self.table = f"starling_test_{os.getpid()}_{next(_tables)}"
        self.made = False
        self.cuts = []

    def _nft(self, *args, script=None):
        r = subprocess.run(["nft", *args], input=script, capture_output=True, text=True,
                           timeout=10)
        if r.returncode != 0:
            raise AssertionError(f"nft {' '.join(args)} failed: {r.stderr.strip()}\n{script or ''}")

    def cut(self, group_a, group_b, raft_only=False, channel_only=False):
        """raft_only: Raft's port alone, the channel goes on (a node that
        reports, answers and forwards, but applies no new entry);
        channel_only: the channel's alone, Raft goes on (entries commit and
        apply, but neither side hears the other's frames)."""
        ports = (f"{{ {self.cluster.raft_port} }}" if raft_only else
                 f"{{ {self.cluster.chan_port} }}" if channel_only else
                 f"{{ {self.cluster.chan_port}, {self.cluster.raft_port} }}")
        rules = []
        for a in group_a:
            for b in group_b:
                for s, d in ((a.host, b.host), (b.host, a.host)):
                    rules.append(f"ip saddr {s} ip daddr {d} tcp dport {ports} drop")
                    rules.append(f"ip saddr {s} ip daddr {d} tcp sport {ports} drop")
        self._drop(rules, [n.name for n in group_a], [n.name for n in group_b])

    def _drop(self, rules, names_a, names_b):
        """Add the nft rules to this partition's table (made on first use)."""
        # either hook sees loopback traffic once (output before input)
        script = (f"table ip {self.table} {{\n"
                  f"  chain cut {{ type filter hook {self.hook} priority 0; policy accept;\n"
                  + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")
        self._nft("-f", "-", script=script)
        if not self.made:
            atexit.register(self.heal)  # even if the test process dies in between
        self.made = True
        self.cuts.append((names_a, names_b))

    def hold_channel(self, a, b):
        """What node a sends node b on its channel connection waits: a's
        packets to b's channel port are dropped (TCP sends them again once
        healed); b's frames to a, and Raft both ways, still go."""
        self._drop([f"ip saddr {a.host} ip daddr {b.host} tcp dport {self.cluster.chan_port} drop"],
                   [a.name], [b.name])

    def one_way(self, src, dst):
        """Every packet from node src to node dst on the cluster's ports is
        dropped, the other way goes on: dst's connections to src still
        carry their data to src, but src's acknowledgements of it are lost,
        so that data stays in flight on dst's side (TCP retransmits it)."""
        ports = f"{{ {self.cluster.chan_port}, {self.cluster.raft_port} }}"
        self._drop([f"ip saddr {src.host} ip daddr {dst.host} tcp dport {ports} drop",
                    f"ip saddr {src.host} ip daddr {dst.host} tcp sport {ports} drop"],
                   [src.name], [dst.name])

    def isolate(self, node):
        self.cut([node], [n for n in self.cluster.nodes if n is not node])

    def heal(self):
        if self.made:
            subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True,
                           timeout=10)
            self.made = False
            self.cuts = []

    def active(self):
        return self.made


# ------------------------------------------------------------------------ disk

class SmallDisk:
    """A node's data_dir on a tmpfs of its own (root only: skipped else);
    with `at`, the tmpfs is mounted there instead (e.g. a node's Raft
    directory, DATA_DIR/cluster/raft). fill() takes every free byte with a
    filler file; unfill() deletes it."""

    def __init__(self, base, size="64m", at=None):
        self.base = base
        self.size = size
        self.at = at
        self.mnt = None
        self.filler = None

    def mount(self):
        if os.geteuid() != 0:
            pytest.skip("a small disk (tmpfs) for one node needs root")
        self.mnt = self.at or os.path.join(self.base, f"disk{os.getpid()}")
        os.makedirs(self.mnt, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", self.mnt],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            self.mnt = None
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        return self.mnt

    def free_bytes(self):
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill(self, leave=0):
        """Write a filler file until at most `leave` bytes are free. The
        writes are unbuffered: the node may take some of the space between
        free_bytes() and a write, and a buffered file would keep what did
        not fit and fail again (ENOSPC) when closed."""
        self.filler = os.path.join(self.mnt, "filler")
        chunk = b"\0" * (1 << 20)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while self.free_bytes() > leave:
                n = min(len(chunk), self.free_bytes() - leave)
                try:
                    os.write(fd, chunk[:max(n, 4096)])
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)
        return self.free_bytes()

    def unfill(self):
        if self.filler and os.path.exists(self.filler):
            os.unlink(self.filler)
        self.filler = None

    def cleanup(self):
        self.unfill()
        if self.mnt:
            r = subprocess.run(["umount", self.mnt], capture_output=True, timeout=20)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=20)
            shutil.rmtree(self.mnt, ignore_errors=True)
            self.mnt = None


# ----------------------------------------------------------------------- state

def _pb_varint(buf, i):
    """A protobuf varint at buf[i]: (value, index after it)."""
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def _pb_varint_field(buf, field):
    """The value of varint field `field` of a packed protobuf message
    (None when absent)."""
    i = 0
    while i < len(buf):
        key, i = _pb_varint(buf, i)
        kind = key & 7
        if kind == 0:
            v, i = _pb_varint(buf, i)
            if key >> 3 == field:
                return v
        elif kind == 2:
            n, i = _pb_varint(buf, i)
            i += n
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        else:
            return None
    return None


def tables(node):
    """The replicated tables of a node as its LMDB environment holds them:
    {"applied": int, "checksum": int, "routes": {(node_id, filter)},
    "registry": {client_id: (node_id, epoch)}, "retained": {topic: bytes},
    "sessions": {client_id}} (the ids with a session record), "record_node":
    {client_id: the node its record names}.
    Read-only, while the node runs (LMDB readers never block the writer)."""
    import lmdb
    path = os.path.join(node.dir, "cluster", "fsm")
    env = lmdb.open(path, readonly=True, max_dbs=8, lock=True, subdir=True)
    try:
        out = {"routes": set(), "registry": {}, "retained": {}, "sessions": set(),
               "record_node": {}}
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            a = txn.get(b"applied", db=meta)
            c = txn.get(b"checksum", db=meta)
            out["applied"] = struct.unpack("<Q", a)[0] if a else 0
            out["checksum"] = struct.unpack("<Q", c)[0] if c else 0
            def records(name):
                # a record's value is u32le klen || key || value (storage/rtable.c)
                for _, v in txn.cursor(db=env.open_db(name, txn=txn, create=False)):
                    kl = struct.unpack("<I", v[:4])[0]
                    yield v[4:4 + kl], v[4 + kl:]
            for k, _ in records(b"routes"):
                out["routes"].add((struct.unpack(">Q", k[:8])[0], k[8:].decode(errors="replace")))
            for k, v in records(b"registry"):
                out["registry"][k.decode(errors="replace")] = struct.unpack("<QQ", v[:16])
            for k, v in records(b"retained"):
                out["retained"][k.decode(errors="replace")] = v[16:]
            for k, v in records(b"sessions"):
                out["sessions"].add(k.decode(errors="replace"))
                out["record_node"][k.decode(errors="replace")] = _pb_varint_field(v, 2)
        return out
    finally:
        env.close()


def converged_tables(cluster, timeout=HEALTHY_TIMEOUT):
    """Wait until every running node has applied the same index with the same
    checksum; return their tables (equal on every node)."""
    def same():
        ts = [tables(n) for n in cluster.nodes if alive(n)]
        if len({(t["applied"], t["checksum"]) for t in ts}) == 1:
            return ts
        return None
    try:
        ts = wait_until(same, timeout, "equal replicated tables", interval=0.1)
    except AssertionError:
        ts = [tables(n) for n in cluster.nodes if alive(n)]
        raise AssertionError("replicated tables differ: " + ", ".join(
            f"{n.name} applied {t['applied']} checksum {t['checksum']:#x}"
            for n, t in zip([n for n in cluster.nodes if alive(n)], ts))) from None
    for t in ts[1:]:
        assert t["routes"] == ts[0]["routes"] and t["registry"] == ts[0]["registry"]
    return ts[0]


def stats(node):
    st, doc = node.http("GET", "/api/v1/stats", timeout=3)
    assert st == 200, doc
    mine = [x for x in doc["nodes"] if x["node"] == node.name]
    return mine[0] if mine else doc["total"]
