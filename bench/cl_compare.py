#!/usr/bin/python3
"""cl_compare.py - the cluster scenarios of run.sh, back to back on ONE
formed 3-node cluster (127.0.0.31-33, workers 1, persistence false) and ONE
single node (127.0.0.1, workers 2), alternating which goes first, so that a
binary can be compared with another in the same minutes (the machine's load
moves a lot; run.sh starts fresh brokers for every run, which takes longer).

    bench/cl_compare.py [SCENARIO...]     (default: cl_latency cl_subs cl_conns cl_takeover)

Scenarios: cl_latency, cl_latency_same (both ends on node 1), cl_subs,
cl_conns, cl_takeover, cl_fanin_qos0, idle (6 s of nothing, for a probe).
Environment: BIN (the starling binary, default build/release/node/starling),
REPS (2), CONNS (5000), DUR (seconds of latency/fanin, 3), TAKE (200),
ONLY=single|cluster, PROBE (a shell command started for each run of
PROBE_WHERE, default cluster, and stopped with SIGINT after it; {pid} is
node 1's or the single node's pid, {pids} the three nodes', {sc} the
scenario), TMPDIR (data directories: keep it on a disk, not a tmpfs).
Prints one line per run: repetition, scenario, where, the main figures.
Every process it starts is stopped and its directory removed at the end.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("BIN", ROOT + "/build/release/node/starling")
GEN = os.environ.get("GEN", ROOT + "/build/release/bench/starling-bench")
ADDRS = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
CONNS = os.environ.get("CONNS", "5000")
DUR = os.environ.get("DUR", "3")
REPS = int(os.environ.get("REPS", "2"))
TAKE = os.environ.get("TAKE", "200")
KEYS = ("p50", "p99", "per_s", "error", "lost", "loss", "duration", "failed")


def free_ports(n):
    """n ports free on every cluster address and on 127.0.0.1."""
    ports = []
    while len(ports) < n:
        s = socket.socket()
        s.bind((ADDRS[0], 0))
        p = s.getsockname()[1]
        ok, held = p not in ports, [s]
        for a in ADDRS[1:] + ["127.0.0.1"]:
            t = socket.socket()
            held.append(t)
            try:
                t.bind((a, p))
            except OSError:
                ok = False
        for h in held:
            h.close()
        if ok:
            ports.append(p)
    return ports


def main():
    scenarios = sys.argv[1:] or ["cl_latency", "cl_subs", "cl_conns", "cl_takeover"]
    tmp = tempfile.mkdtemp(prefix="cl_compare.")
    port, cport, rport, aport, sport = free_ports(5)
    key = "bench:secret%08d" % os.getpid()
    procs, single = [], None
    try:
        for i, a in enumerate(ADDRS, 1):
            os.makedirs(f"{tmp}/cl{i}")
            with open(f"{tmp}/cl{i}.conf", "w") as f:
                f.write(f"bind_address {a}\nport {port}\nworkers 1\nlog_level warn\n"
                        "max_queued_messages 10000000\nmax_queued_bytes 0\n"
                        "max_inflight_messages 1000\nsys_interval 0\npersistence false\n"
                        f"data_dir {tmp}/cl{i}\nadmin_port {aport}\napi_key {key}\n"
                        f"node_name bench{i}\ncluster_port {cport}\nraft_port {rport}\n"
                        f"cluster_seeds {','.join(ADDRS)}\ncluster_name bench-{rport}\n"
                        f"cluster_secret bench-secret-{rport}\n")
            procs.append(subprocess.Popen([BIN, "-c", f"{tmp}/cl{i}.conf"],
                                          stdout=open(f"{tmp}/cl{i}.log", "w"),
                                          stderr=subprocess.STDOUT))
        with open(f"{tmp}/single.conf", "w") as f:
            f.write(f"bind_address 127.0.0.1\nport {sport}\nworkers 2\nlog_level warn\n"
                    "max_queued_messages 10000000\nmax_queued_bytes 0\n"
                    "max_inflight_messages 1000\nsys_interval 0\nadmin_port 0\n"
                    "persistence false\n")
        single = subprocess.Popen([BIN, "-c", f"{tmp}/single.conf"],
                                  stdout=open(f"{tmp}/single.log", "w"), stderr=subprocess.STDOUT)
        auth = "Basic " + base64.b64encode(key.encode()).decode()

        def get(a, path):
            r = urllib.request.Request(f"http://{a}:{aport}{path}",
                                       headers={"Authorization": auth})
            with urllib.request.urlopen(r, timeout=2) as f:
                return json.loads(f.read() or b"null")

        end, formed = time.monotonic() + 40, False
        while time.monotonic() < end and not formed:
            try:
                docs = [get(a, "/api/v1/cluster") for a in ADDRS]
                formed = all(len(d["nodes"]) == 3 and all(x["reachable"] for x in d["nodes"])
                             and d["leader"] for d in docs)
                if formed:
                    [get(a, "/api/v1/health") for a in ADDRS]
            except OSError:
                formed = False
            if not formed:
                time.sleep(0.1)
        if not formed:
            print("cl_compare: the cluster did not form within 40 s", file=sys.stderr)
            return 1
        leader = [x["name"] for x in docs[0]["nodes"] if x["leader"]]
        print("leader", *leader, flush=True)
        time.sleep(0.5)

        def args(sc, where):
            h1, h2, p, hosts = "127.0.0.1", "127.0.0.1", sport, []
            if where == "cluster":
                h1, h2, p, hosts = ADDRS[0], ADDRS[1], port, ["--hosts", ",".join(ADDRS)]
            common = ["--port", str(p)]
            return {
                "cl_latency": ["latency", "--duration", DUR, "--host", h1, "--sub-host", h2],
                "cl_latency_same": ["latency", "--duration", DUR, "--host", h1, "--sub-host", h1],
                "cl_subs": ["conns", "--conns", CONNS, "--sub-burst", "--host", h1] + hosts,
                "cl_conns": ["conns", "--conns", CONNS, "--host", h1] + hosts,
                "cl_takeover": ["takeover", "--conns", TAKE, "--host", h1, "--sub-host", h2],
                "cl_fanin_qos0": ["fanin", "--qos", "0", "--duration", DUR, "--host", h1,
                                  "--sub-host", h2],
            }[sc] + common

        for rep in range(REPS):
            for sc in scenarios:
                wheres = ["single", "cluster"] if rep % 2 == 0 else ["cluster", "single"]
                if os.environ.get("ONLY"):
                    wheres = [os.environ["ONLY"]]
                for where in wheres:
                    pid = single.pid if where == "single" else procs[0].pid
                    probe = None
                    if os.environ.get("PROBE") and where == os.environ.get("PROBE_WHERE",
                                                                           "cluster"):
                        cmd = os.environ["PROBE"].format(
                            pid=pid, pids=",".join(str(x.pid) for x in procs), sc=sc)
                        probe = subprocess.Popen(cmd, shell=True, start_new_session=True)
                        time.sleep(1)
                    cmd = (["sleep", "6"] if sc == "idle"
                           else [GEN] + args(sc, where) + ["--pid", str(pid)])
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                    if probe:
                        os.killpg(probe.pid, signal.SIGINT)
                        try:
                            probe.wait(10)
                        except subprocess.TimeoutExpired:
                            os.killpg(probe.pid, signal.SIGKILL)
                            probe.wait()
                    lines = out.stdout.strip().splitlines()
                    try:
                        j = json.loads(lines[-1]) if lines else {}
                    except ValueError:
                        j = {"raw": lines[-1]}
                    short = {k: v for k, v in j.items() if any(s in k for s in KEYS)}
                    print(rep, sc, where, json.dumps(short), flush=True)
                    if any(p.poll() is not None for p in procs + [single]):
                        print("cl_compare: a broker died", file=sys.stderr)
                        return 1
        return 0
    finally:
        for p in procs + ([single] if single else []):
            p.terminate()
        for p in procs + ([single] if single else []):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
