#!/usr/bin/python3
"""The seeded chaos runner of issue 10: a random sequence of faults under
continuous QoS 1/2 traffic on a 3-node cluster, then everything healed and
checked.

    chaos.py [--seed N] [--minutes M] [--stop-seconds S] [--hold MIN,MAX] [--keep] [--more]
             [--no-lb] [--resend] [--cut-on output|input] [--links] [--overlap]
             [--weight FAULT=W ...]
    make chaos SEED=N MINUTES=M

The faults (each held 2..8 s, or as --hold MIN,MAX says, then undone; 1..3 s
between two):
SIGKILL of a node (then started again on its data), SIGKILL of the leader,
a node cut off with nftables (the leader or not; skipped without root/nft),
SIGSTOP of a node for --stop-seconds (default 10), a clean restart (SIGTERM),
and (rarely) SIGKILL of every node, started again in a random order.
Clients behave as behind a load balancer with health checks: they connect
to the next node that is up (a stopped or dead one is skipped; a cut-off
one too, but with --no-lb). --more adds SIGSTOP of the leader, a cut of the
leader and a rolling restart with SIGKILL (another sequence for a seed).
--links adds a cut of one link: two nodes cut apart while both still reach
the third. --overlap adds two faults at once: a node cut off while another
is SIGKILLed or SIGSTOPped (no majority meanwhile). Each changes the
sequence of a seed too. --weight FAULT=W sets one fault's weight in the
random choice (repeatable; 0 leaves it out; --help lists the weights):
--weight restart-all=6 for many whole-cluster SIGKILLs. Without it a seed
draws as before.
--resend makes the publishers persistent: a message without its
acknowledgement is published again on the next connection (DUP 1, its
packet id) until acknowledged, as a client that must deliver it does (the
checker then counts it once; a second copy is a QoS 2 duplicate).

At the end: health within 30 s of the last heal, every acknowledged QoS 1
delivered at least once and QoS 2 exactly once to every persistent
subscriber, per-publisher order outside the fault windows (plus 5 s), one
owner per client id (each subscriber connected on the node the registry
names), the same routes and registry on every node. The seed is printed
first: the same seed gives the same fault sequence (timings vary).
Exit 0 when every check passed, 1 otherwise (the report says which).
--keep keeps the run's directory (printed at the end): the nodes' data and
logs, and traffic.txt, the clients' trace (every client's events and each
lost or duplicated message on the nodes' log clock), without
STARLING_TEST_KEEP_TMP=1.
"""

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import importlib.util  # noqa: E402

import faults  # noqa: E402
from traffic import Traffic  # noqa: E402


def _cluster_class():
    """conftest.Cluster of this directory (loaded by path: under pytest,
    "conftest" may name another directory's)."""
    spec = importlib.util.spec_from_file_location("starling_cluster_conftest",
                                                  os.path.join(HERE, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Cluster


Cluster = _cluster_class()

HEAL_HEALTHY = 30.0
# each fault's weight in the random choice (menu(); --weight sets one); the
# last five come with --more, --links and --overlap, the cuts with nftables
FAULT_WEIGHTS = {"kill": 3, "kill-leader": 2, "stop": 2, "restart": 2, "restart-all": 1,
                 "partition": 3, "stop-leader": 2, "rolling-kill": 2, "cut-leader": 2,
                 "cut-link": 3, "cut-and-fault": 3}


class Chaos:
    def __init__(self, seed, seconds, stop_seconds=10.0, base=None, log=print,
                 claim_timeout_ms=2000, more=False, lb=True, keep=False, keep_failed=False,
                 resend=False, hold=(2.0, 8.0), cut_hook="output", links=False,
                 overlap=False, weights=None):
        self.seed = seed
        self.weights = dict(weights or {})  # a fault's name -> its weight in menu() (--weight)
        self.hold = hold  # how long a kill or a cut lasts: uniform in this range (s)
        self.cut_hook = cut_hook  # where a cut drops packets (faults.Partition)
        self.resend = resend  # publishers resend what was not acknowledged (traffic.py)
        self.keep = keep  # traffic.txt and the subscribers' packet traces beside the logs
        self.keep_failed = keep_failed  # traffic.txt written; main() keeps a failed run's data
        self.more = more
        self.links = links  # cuts of one link (--links)
        self.overlap = overlap  # two faults at once (--overlap)
        self.lb = lb  # clients keep off a cut-off node (a load balancer's health check)
        self.rng = random.Random(seed)
        self.seconds = seconds
        self.stop_seconds = stop_seconds
        self.log = log
        self.own_base = base is None
        self.base = base or tempfile.mkdtemp(prefix="starling-chaos-")
        self.cluster = Cluster(os.path.join(self.base, "c"),
                               extra_env={"STARLING_CLUSTER_CLAIM_TIMEOUT": str(claim_timeout_ms)})
        os.makedirs(self.cluster.base, exist_ok=True)
        if keep or keep_failed:  # paho_trace: <base>/<client>.trace (Traffic's clients)
            os.environ.setdefault("STARLING_TEST_PAHO_TRACE", self.base)
        self.nft = faults.nft_available()
        self.partition = None
        self.traffic = None
        self.t0 = time.monotonic()
        self.faults_done = []

    def say(self, text):
        self.log(f"[chaos {time.monotonic() - self.t0:7.1f} s] {text}")

    # ---- the faults: each returns when it is undone and the cluster healthy
    def _hold(self):
        return self.rng.uniform(*self.hold)

    def _healthy(self, what):
        took = faults.wait_healthy(self.cluster, HEAL_HEALTHY)
        self.say(f"  healthy {took:.1f} s after {what}")

    def f_kill(self, leader=False):
        c = self.cluster
        if leader:
            name = faults.wait_until(lambda: faults.leader(c), 15, "a leader")
            n = faults.node_named(c, name)
        else:
            n = self.rng.choice(c.nodes)
        hold = self._hold()
        self.say(f"SIGKILL {n.name}{' (the leader)' if leader else ''} for {hold:.1f} s")
        faults.kill(n)
        self._wait(hold)
        n.start()
        self._healthy(f"{n.name} restarted")

    def _cut(self, cut, avoid=()):
        """A cut begins: cut(partition) makes it; clients keep off the
        nodes in avoid (a load balancer's health check sees 503 soon)."""
        self.partition = faults.Partition(self.cluster, self.cut_hook)
        cut(self.partition)
        self.traffic.avoid = list(avoid) if self.lb else []

    def _heal(self, what):
        """The cut heals; returns once the cluster is healthy again."""
        self.partition.heal()
        self.partition = None
        self.traffic.avoid = []
        self._healthy(what)

    def f_partition(self):
        c = self.cluster
        n = self.rng.choice(c.nodes)
        hold = self._hold()
        lead = faults.leader(c)
        self.say(f"cut {n.name}{' (the leader)' if lead == n.name else ''} off for {hold:.1f} s")
        self._cut(lambda p: p.isolate(n), [n])
        self._wait(hold)
        self._heal(f"the cut of {n.name} healed")

    def f_stop(self):
        n = self.rng.choice(self.cluster.nodes)
        self.say(f"SIGSTOP {n.name} for {self.stop_seconds:.1f} s")
        faults.pause(n)
        self._wait(self.stop_seconds)
        faults.resume(n)
        self._healthy(f"SIGCONT {n.name}")

    def f_restart(self):
        n = self.rng.choice(self.cluster.nodes)
        self.say(f"restart {n.name} (SIGTERM)")
        rc = n.stop(signal.SIGTERM)
        if rc != 0:
            raise AssertionError(f"{n.name} exited {rc} on SIGTERM:\n{n.logtext()[-3000:]}")
        n.start()
        self._healthy(f"{n.name} restarted")

    def f_stop_leader(self):
        c = self.cluster
        name = faults.wait_until(lambda: faults.leader(c), 15, "a leader")
        n = faults.node_named(c, name)
        self.say(f"SIGSTOP {n.name} (the leader) for {self.stop_seconds:.1f} s")
        faults.pause(n)
        self._wait(self.stop_seconds)
        faults.resume(n)
        self._healthy(f"SIGCONT {n.name}")

    def f_cut_leader(self):
        c = self.cluster
        name = faults.wait_until(lambda: faults.leader(c), 15, "a leader")
        n = faults.node_named(c, name)
        hold = self._hold()
        self.say(f"cut {n.name} (the leader) off for {hold:.1f} s")
        self._cut(lambda p: p.isolate(n), [n])
        self._wait(hold)
        self._heal(f"the cut of {n.name} healed")

    def f_cut_link(self):
        """Two nodes cut apart; both still reach the third (which may be
        the leader, or not: one side of the cut then loses the leader)."""
        c = self.cluster
        x, y = self.rng.sample(c.nodes, 2)
        hold = self._hold()
        lead = faults.leader(c)
        self.say(f"cut the link {x.name} - {y.name} for {hold:.1f} s (leader {lead})")
        self._cut(lambda p: p.cut([x], [y]))
        self._wait(hold)
        self._heal(f"the cut of {x.name} - {y.name} healed")

    def f_cut_and_fault(self):
        """A node cut off, and while it is, another SIGKILLed (started
        again after a while) or SIGSTOPped: no two nodes of the three hear
        each other meanwhile. The cut heals last."""
        c = self.cluster
        x, y = self.rng.sample(c.nodes, 2)
        kill = self.rng.random() < 0.5
        hold = self._hold()
        second = self.rng.uniform(min(2.0, hold), hold) if kill else self.stop_seconds
        self.say(f"cut {x.name} off for {hold + second:.1f} s, and after {hold / 2:.1f} s "
                 f"{'SIGKILL' if kill else 'SIGSTOP'} {y.name} for {second:.1f} s")
        self._cut(lambda p: p.isolate(x), [x])
        self._wait(hold / 2)
        if kill:
            faults.kill(y)
        else:
            faults.pause(y)
        self._wait(second)
        if kill:
            y.start()
        else:
            faults.resume(y)
        self._wait(hold / 2)
        self._heal(f"the cut of {x.name} healed ({y.name} back)")

    def f_rolling_kill(self):
        """A rolling restart with SIGKILL: each node in turn killed and
        started again at once, the next one when the cluster is healthy."""
        order = list(self.cluster.nodes)
        self.rng.shuffle(order)
        self.say(f"rolling SIGKILL restart {[n.name for n in order]}")
        for n in order:
            faults.kill(n)
            n.start()
            self._healthy(f"{n.name} killed and restarted")

    def f_restart_all(self):
        order = list(range(len(self.cluster.nodes)))
        self.rng.shuffle(order)
        self.say(f"SIGKILL every node, start them in the order {[self.cluster.nodes[i].name for i in order]}")
        for n in self.cluster.nodes:
            faults.kill(n)
        self.cluster.start(order=tuple(order))
        self._healthy("the whole cluster restarted")

    def _wait(self, seconds):
        """The fault lasts `seconds` (the traffic goes on meanwhile)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.1, left))
            for e in self.traffic.errors:
                raise AssertionError(f"traffic error: {e}")

    def menu(self):
        m = [("kill", self.f_kill), ("kill-leader", lambda: self.f_kill(leader=True)),
             ("stop", self.f_stop), ("restart", self.f_restart),
             ("restart-all", self.f_restart_all)]
        if self.nft is None:
            m.append(("partition", self.f_partition))
        if self.more:  # faults an outside checker may use (--more)
            m += [("stop-leader", self.f_stop_leader), ("rolling-kill", self.f_rolling_kill)]
            if self.nft is None:
                m.append(("cut-leader", self.f_cut_leader))
        if self.links and self.nft is None:
            m.append(("cut-link", self.f_cut_link))
        if self.overlap and self.nft is None:
            m.append(("cut-and-fault", self.f_cut_and_fault))
        unknown = set(self.weights) - {x[0] for x in m}
        if unknown:
            raise ValueError(f"--weight: no fault {sorted(unknown)} in this run's menu "
                             f"{[x[0] for x in m]}")
        m = [(n, f, self.weights.get(n, FAULT_WEIGHTS[n])) for n, f in m]
        if not any(w > 0 for _, _, w in m):
            raise ValueError("--weight: every fault of the menu has weight 0")
        return m

    def listed_owners(self):
        """Problems of GET /api/v1/clients (every node's sessions): a client
        id listed by two nodes, or connected on two."""
        c = self.cluster
        st, doc = c.nodes[0].http("GET", "/api/v1/clients?limit=1000", timeout=10)
        if st != 200:
            return [f"GET /api/v1/clients answered {st}"]
        where = {}
        for x in doc["data"]:
            where.setdefault(x["clientid"], []).append((x["node"], x["connected"]))
        return [f"{cid} listed on {w}" for cid, w in sorted(where.items()) if len(w) > 1]

    # ---- the run
    def run(self):
        """Returns (ok, report dict)."""
        c = self.cluster
        self.say(f"seed {self.seed}, {self.seconds:.0f} s of faults, SIGSTOP {self.stop_seconds:.0f} s, "
                 f"kills and cuts {self.hold[0]:g}..{self.hold[1]:g} s, data in {self.base}")
        if self.nft:
            self.say(f"no partitions: {self.nft}")
        c.start()
        c.wait_healthy()
        self.traffic = t = Traffic(c, resend=self.resend)
        t.t0 = self.t0  # one clock for the log and the samples
        # and for traffic.txt's wall-clock times (read beside the nodes'
        # logs): before, they were ahead by the cluster's start-up time
        t.t0_wall = time.time() - (time.monotonic() - self.t0)
        t.start()
        t.wait_progress(30)
        menu = self.menu()
        names = [x[0] for x in menu]
        weights = [x[2] for x in menu]
        end = time.monotonic() + self.seconds
        problems = []
        try:
            while time.monotonic() < end:
                k = self.rng.choices(range(len(menu)), weights)[0]
                start = time.monotonic()
                menu[k][1]()
                t.window(start)
                self.faults_done.append(names[k])
                self._wait(self.rng.uniform(1.0, 3.0))
            self.say(f"faults done: {self.faults_done}; healing everything")
        except AssertionError as e:
            problems.append(f"during the faults: {e}")
        # heal everything that may still be broken
        heal_t = time.monotonic()
        if self.partition:
            self.partition.heal()
        t.avoid = []
        for n in c.nodes:
            faults.resume(n)
            if n.proc is None or n.proc.poll() is not None:
                if n.proc is not None:
                    n.stop()
                n.start()
        try:
            took = faults.wait_healthy(c, HEAL_HEALTHY)
            self.say(f"healthy {took:.1f} s after the last heal")
        except AssertionError as e:
            problems.append(f"not healthy within {HEAL_HEALTHY:.0f} s of the last heal: {e}")
        t.window(heal_t)
        r = {}
        try:
            t.wait_progress(20, timeout=30)
            t.stop_publishing()
            missing = t.wait_delivered(30)
            self.say(f"still missing after 30 s: {missing}")
            tabs = faults.converged_tables(c)
            problems += [f"owner: {p}" for p in t.owners_ok(tabs)]
            problems += [f"owner: {p}" for p in self.listed_owners()]
        except AssertionError as e:
            problems.append(str(e))
        finally:
            t.stop()
        r = t.check()
        if self.keep or self.keep_failed or os.environ.get("STARLING_TEST_KEEP_TMP"):
            t.dump(os.path.join(self.cluster.base, "traffic.txt"))  # beside the nodes' logs
        r["problems"] = problems
        r["faults"] = self.faults_done
        r["seed"] = self.seed
        self.say(f"acknowledged {r['acknowledged']} lost {r['lost']} QoS2-duplicates {r['dup2']} "
                 f"QoS1-redeliveries {r['dup1']} misorder {r['misorder']} "
                 f"(in fault windows {r['misorder_in_windows']}) sessions lost {r['sessions_lost']}")
        for s in r["samples"][:15]:
            self.say(f"  {s}")
        for p in problems + r["errors"]:
            self.say(f"PROBLEM {p}")
        ok = not problems and not r["errors"] and r["lost"] == 0 and r["dup2"] == 0 \
            and r["misorder"] == 0 and r["acknowledged"] > 0
        if not ok:
            self.trace_failure(r)
        self.say(f"seed {self.seed}: {'PASSED' if ok else 'FAILED'}")
        return ok, r

    def trace_failure(self, r, per_node=120):
        """For a failed run whose data may not be kept (make test's short
        run, CI): the events of the clients its samples name, and the last
        per_node lines of each node's log that mention them, printed."""
        t = self.traffic
        names = {x.split(":")[0] for x in r["samples"]}
        clients = [c for c in t.subscribers + t.publishers if c.cid in names]
        for c in clients:
            self.say(f"trace {c.cid}: " + "; ".join(
                f"{t.wall(tt)} {what} {node} {detail}".strip()
                for tt, what, node, detail in c.events[-60:]))
        for n in self.cluster.nodes:
            lines = [x for x in n.logtext().splitlines() if any(c.cid in x for c in clients)]
            for x in lines[-per_node:]:
                self.say(f"trace {n.name}: {x}")

    def close(self, keep=False):
        """Stops the nodes; returns the sanitizer reports in their logs
        (read before a directory not kept is removed)."""
        if self.partition:
            self.partition.heal()
        for n in self.cluster.nodes:
            faults.resume(n)
        self.cluster.stop()
        reports = self.cluster.sanitizer_reports()
        if not keep and self.own_base:
            shutil.rmtree(self.base, ignore_errors=True)
        return reports


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--stop-seconds", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true",
                    help="keep the data, the logs, traffic.txt and the subscribers' packet traces")
    ap.add_argument("--keep-failed", action="store_true",
                    help="keep the data, the logs and traffic.txt of a run that fails (no packet "
                         "traces: the run is the same as without it)")
    ap.add_argument("--more", action="store_true",
                    help="add SIGSTOP and cut of the leader and a rolling SIGKILL restart "
                         "to the faults (another sequence for the same seed)")
    ap.add_argument("--no-lb", action="store_true",
                    help="clients connect to a cut-off node too (no load balancer keeping them off)")
    ap.add_argument("--hold", default="2,8", metavar="MIN,MAX",
                    help="how long a SIGKILL or a cut lasts before it is undone, in seconds "
                         "(uniform between MIN and MAX; default 2,8)")
    ap.add_argument("--resend", action="store_true",
                    help="publishers keep a persistent session and publish a message without "
                         "its acknowledgement again on their next connection, until acknowledged")
    ap.add_argument("--cut-on", choices=("output", "input"), default="output",
                    help="where a cut drops packets: as they leave their node (output, the "
                         "default: the sender's kernel sees its send fail) or as they arrive "
                         "(input: as across a network, TCP backs off)")
    ap.add_argument("--links", action="store_true",
                    help="add cuts of one link: two nodes cut apart, both still reaching the "
                         "third (another sequence for the same seed)")
    ap.add_argument("--overlap", action="store_true",
                    help="add two faults at once: a node cut off while another is SIGKILLed or "
                         "SIGSTOPped (another sequence for the same seed)")
    ap.add_argument("--weight", action="append", default=[], metavar="FAULT=W",
                    help="a fault's weight in the random choice (repeatable; 0 leaves it out); "
                         "by default " + ", ".join(f"{n} {w}" for n, w in FAULT_WEIGHTS.items())
                         + " (stop-leader, rolling-kill and cut-leader with --more, cut-link with "
                         "--links, cut-and-fault with --overlap); e.g. --weight restart-all=6 for "
                         "many whole-cluster SIGKILLs")
    a = ap.parse_args(argv)
    try:
        hold = tuple(float(x) for x in a.hold.split(","))
        if len(hold) != 2 or not 0 <= hold[0] <= hold[1]:
            raise ValueError
    except ValueError:
        ap.error(f"--hold {a.hold!r}: MIN,MAX seconds, 0 <= MIN <= MAX")
    weights = {}
    for w in a.weight:
        name, _, v = w.partition("=")
        try:
            weights[name] = int(v)
            if weights[name] < 0:
                raise ValueError
        except ValueError:
            ap.error(f"--weight {w!r}: FAULT=W, W a whole number >= 0")

    # killed from outside (SIGTERM, or SIGHUP: its terminal closed), the run
    # ends as on ^C: the `finally` below stops the nodes and removes the
    # data. Before, the runner died and its nodes ran on.
    def ended(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, ended)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos seed {seed} (rerun: make chaos SEED={seed} MINUTES={a.minutes:g})", flush=True)
    ch = Chaos(seed, a.minutes * 60, a.stop_seconds,
               log=lambda s: print(s, flush=True), more=a.more, lb=not a.no_lb,
               keep=a.keep, keep_failed=a.keep_failed, resend=a.resend, hold=hold,
               cut_hook=a.cut_on, links=a.links, overlap=a.overlap, weights=weights)
    try:
        ch.menu()  # a --weight that names no fault of this run's menu: before any node starts
    except ValueError as e:
        ch.close()
        ap.error(str(e))
    ok = False
    reports = []
    try:
        ok, _ = ch.run()
    finally:
        keep = a.keep or (a.keep_failed and not ok)
        reports = ch.close(keep=keep)
        for r in reports:
            print(f"PROBLEM sanitizer report: {r}", flush=True)
        if keep:
            print(f"data, logs and traffic.txt kept in {ch.cluster.base}")
    return 0 if ok and not reports else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
