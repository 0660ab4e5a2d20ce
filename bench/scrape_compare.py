#!/usr/bin/python3
"""scrape_compare.py - does the admin API under a scrape every second move
the data plane's figures (issue 13)? One Starling node (the tuned fanin
configuration of run.sh, persistence false, the admin API on), and for each
repetition and scenario two runs back to back: one while a scraper GETs
/metrics and /api/v1/stats once a second, one without; which goes first
alternates with the repetition, so the machine's load moves both alike.

    bench/scrape_compare.py [SCENARIO...]   (default: fanin_qos0 latency)
    bench/scrape_compare.py --cost [N]      (the scrape's own cost: the time
                                             of GET /metrics and
                                             /api/v1/stats with 0 and N
                                             clients connected, default 10000)

Scenarios: fanin_qos0 (figure: msgs_per_s), fanin_qos1 (msgs_per_s),
latency (figures: p50_us, p99_us). With BIN_B set, no scraper: two nodes
side by side, BIN's and BIN_B's, each scenario on one then the other (the
cost of the data plane's counters: a build against another). Environment:
BIN (the starling binary, default build/release/node/starling), BIN_B, GEN
(starling-bench), REPS (4), DUR
(seconds per run, 5), WORKERS (default: the number of cores), INTERVAL
(seconds between scrapes, 1), SCRAPE_PATHS (comma-separated, default
/metrics,/api/v1/stats). Prints one line per run, then per scenario and
figure the median and range with and without the scraper and the ratio of
the medians (with / without). Every process it starts is stopped and its
directory removed at the end.
"""
import base64
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("BIN", ROOT + "/build/release/node/starling")
GEN = os.environ.get("GEN", ROOT + "/build/release/bench/starling-bench")
REPS = int(os.environ.get("REPS", "4"))
DUR = os.environ.get("DUR", "5")
WORKERS = os.environ.get("WORKERS", str(os.cpu_count() or 2))
INTERVAL = float(os.environ.get("INTERVAL", "1"))
SCENARIOS = {
    "fanin_qos0": (["fanin", "--qos", "0"], ["msgs_per_s"]),
    "fanin_qos1": (["fanin", "--qos", "1"], ["msgs_per_s"]),
    "latency": (["latency"], ["p50_us", "p99_us"]),
}
PATHS = tuple(os.environ.get("SCRAPE_PATHS", "/metrics,/api/v1/stats").split(","))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    """A Starling node on 127.0.0.1 with its admin API, in a directory of its own."""

    def __init__(self, tmp, binary=BIN):
        tmp = tempfile.mkdtemp(dir=tmp)
        self.port, self.admin = free_port(), free_port()
        key = "bench:secret%08d" % os.getpid()
        self.auth = "Basic " + base64.b64encode(key.encode()).decode()
        conf = os.path.join(tmp, "node.conf")
        with open(conf, "w") as f:
            f.write(f"bind_address 127.0.0.1\nport {self.port}\nworkers {WORKERS}\n"
                    "log_level warn\nmax_queued_messages 10000000\nmax_queued_bytes 0\n"
                    "max_inflight_messages 1000\nmax_connections 0\nsys_interval 0\n"
                    f"persistence false\ndata_dir {tmp}/data\nadmin_port {self.admin}\n"
                    f"api_key {key}\n")
        self.log = open(os.path.join(tmp, "node.log"), "w")
        self.proc = subprocess.Popen([binary, "-c", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"starling exited {self.proc.returncode}")
            try:
                self.get("/api/v1/health")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("starling did not answer /api/v1/health within 20 s")

    def get(self, path):
        """GET path; returns the seconds it took (the whole request)."""
        r = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}",
                                   headers={"Authorization": self.auth})
        t0 = time.monotonic()
        with urllib.request.urlopen(r, timeout=10) as f:
            f.read()
        return time.monotonic() - t0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Scraper(threading.Thread):
    """GET every path of PATHS every INTERVAL seconds until stopped."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node, self.stop_ev, self.times, self.errors = node, threading.Event(), [], 0

    def run(self):
        due = time.monotonic()
        while not self.stop_ev.is_set():
            for p in PATHS:
                try:
                    self.times.append(self.node.get(p))
                except OSError:
                    self.errors += 1
            due += INTERVAL
            self.stop_ev.wait(max(0.0, due - time.monotonic()))

    def stop(self):
        self.stop_ev.set()
        self.join(15)


def summary(v):
    return f"median {statistics.median(v):.0f} (range {min(v):.0f}-{max(v):.0f}, n={len(v)})"


def compare(variants, names):
    """variants: two (label, node, scrape?) run in turn, the first one first
    in even repetitions."""
    results = {}  # (scenario, figure, label) -> [values]
    scrapes = []
    for rep in range(REPS):
        for sc in names:
            args, figures = SCENARIOS[sc]
            for label, node, on in (variants if rep % 2 == 0 else variants[::-1]):
                scraper = Scraper(node) if on else None
                if scraper:
                    scraper.start()
                cmd = [GEN] + args + ["--duration", DUR, "--port", str(node.port),
                                      "--pid", str(node.proc.pid)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if scraper:
                    scraper.stop()
                    scrapes += scraper.times
                lines = out.stdout.strip().splitlines()
                j = json.loads(lines[-1]) if lines else {}
                fig = {f: j.get(f) for f in figures}
                print(rep, sc, label, json.dumps(fig),
                      f"scrapes={len(scraper.times)} errors={scraper.errors}" if scraper else "",
                      "" if out.returncode == 0 else f"(generator exit {out.returncode})",
                      flush=True)
                for f, v in fig.items():
                    if isinstance(v, (int, float)):
                        results.setdefault((sc, f, label), []).append(v)
                if node.proc.poll() is not None:
                    raise RuntimeError("starling died")
    a, b = variants[0][0], variants[1][0]
    print(f"\nscenario figure: {a} | {b} | ratio of the medians ({a} / {b})")
    for sc in names:
        for f in SCENARIOS[sc][1]:
            on, off = results.get((sc, f, a), []), results.get((sc, f, b), [])
            if on and off:
                print(f"{sc} {f}: {summary(on)} | {summary(off)} | "
                      f"{statistics.median(on) / statistics.median(off):.3f}")
    if scrapes:
        ms = sorted(t * 1000 for t in scrapes)
        print(f"scrape requests: {len(ms)}, median {statistics.median(ms):.2f} ms, "
              f"max {ms[-1]:.2f} ms")


def connect_clients(node, n):
    """n MQTT 3.1.1 clients (clean session, keepalive 0) kept open; returns
    the sockets once every CONNACK arrived."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 200)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    socks = []
    for i in range(n):
        cid = b"scrape-%06d" % i
        body = (b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid)
        s = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        s.sendall(b"\x10" + bytes([len(body)]) + body)
        socks.append(s)
    for s in socks:
        got = b""
        while len(got) < 4:
            chunk = s.recv(4 - len(got))
            if not chunk:
                raise RuntimeError("a client was disconnected before its CONNACK")
            got += chunk
        if got[0] != 0x20 or got[3] != 0:
            raise RuntimeError(f"CONNACK refused: {got!r}")
    return socks


def cpu_seconds(pid):
    """User + system CPU time of process pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost(node, n):
    def measure(label):
        for p in PATHS:
            for _ in range(3):
                node.get(p)  # warm up
            cpu0 = cpu_seconds(node.proc.pid)
            t = sorted(node.get(p) * 1000 for _ in range(200))
            cpu = (cpu_seconds(node.proc.pid) - cpu0) / 200 * 1000
            print(f"{label} GET {p}: median {statistics.median(t):.2f} ms, "
                  f"p90 {t[179]:.2f} ms (200 requests, each on a new connection); "
                  f"the node's CPU time {cpu:.2f} ms per request", flush=True)
    measure("0 clients:")
    socks = connect_clients(node, n)
    try:
        measure(f"{n} clients:")
    finally:
        for s in socks:
            s.close()


def main():
    argv = sys.argv[1:]
    tmp = tempfile.mkdtemp(prefix="scrape_compare.")
    node = node_b = None
    try:
        node = Node(tmp)
        if argv and argv[0] == "--cost":
            cost(node, int(argv[1]) if len(argv) > 1 else 10000)
            return 0
        names = argv or ["fanin_qos0", "latency"]
        for sc in names:
            if sc not in SCENARIOS:
                print(f"scrape_compare: unknown scenario {sc} ({', '.join(SCENARIOS)})",
                      file=sys.stderr)
                return 2
        if os.environ.get("BIN_B"):
            node_b = Node(tmp, os.environ["BIN_B"])
            compare([("A", node, False), ("B", node_b, False)], names)
        else:
            compare([("scrape", node, True), ("quiet", node, False)], names)
        return 0
    finally:
        for n in (node, node_b):
            if n:
                n.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
