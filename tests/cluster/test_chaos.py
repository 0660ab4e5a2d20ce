"""A short seeded run of the chaos runner (chaos.py) in `make test`: about
45 s of random faults (SIGKILL, leader SIGKILL, nftables cut, SIGSTOP 5 s,
SIGTERM restart, whole-cluster SIGKILL) under QoS 1/2 traffic, then healed
and checked. The seed is printed; STARLING_CHAOS_SEED picks it,
STARLING_CHAOS_SECONDS the length. `make chaos SEED=... MINUTES=...` runs a
long one (SIGSTOP 10 s).

Asserted: healthy within 30 s of the last heal, the same routes and
registry on every node, one owner per client id (each subscriber connected
where the registry says), no traffic error, nothing acknowledged lost, QoS 2
exactly once, per-publisher order outside the fault windows."""

import os
import random
import signal
import subprocess
import sys

from chaos import Chaos


def test_chaos_short(tmp_path):
    seed = int(os.environ.get("STARLING_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    seconds = float(os.environ.get("STARLING_CHAOS_SECONDS", "45"))
    print(f"\nchaos seed {seed} (rerun: STARLING_CHAOS_SEED={seed}, or make chaos SEED={seed})")
    ch = Chaos(seed, seconds, stop_seconds=5.0, base=str(tmp_path / "chaos"),
               log=lambda s: print(s, flush=True))
    reports = []
    try:
        ok, r = ch.run()
    finally:
        reports = ch.close()
    assert not reports, f"seed {seed}: sanitizer reports in the nodes' logs: {reports}"
    assert not r["problems"], f"seed {seed}: {r['problems']}"
    assert not r["errors"], f"seed {seed}: {r['errors']}"
    assert r["acknowledged"] > 0
    counts = (f"seed {seed}: {r['lost']} acknowledged lost, {r['dup2']} QoS 2 duplicates, "
              f"{r['misorder']} misordered, {r['sessions_lost']} sessions lost; faults {r['faults']}")
    assert ok, counts


def processes_with(text):
    """The pids of the processes whose environment holds `text`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_chaos_runner_killed_from_outside_stops_its_nodes(tmp_path):
    """`make chaos` killed from outside (SIGTERM) once its faults have
    begun stops its three nodes and removes its data, as on ^C: nothing of
    it runs on. Before, the runner died at once and its nodes ran on."""
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chaos.py")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, runner, "--minutes", "1", "--seed", "7"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        # its second line is the first fault's: the nodes and the traffic run
        for line in p.stdout:
            lines.append(line.rstrip())
            if sum(x.startswith("[chaos") for x in lines) == 2:
                break
        assert processes_with(str(tmp_path)), f"no node of the run found: {lines}"
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=120)[0]
        print("\n".join(lines[-3:]), rest[-2000:], sep="\n")
        assert p.returncode == 128 + signal.SIGTERM, p.returncode
        left = processes_with(str(tmp_path))
        assert left == [], f"processes of the killed run still there: {left}"
        assert not [x for x in os.listdir(tmp_path) if x.startswith("starling-chaos-")]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in processes_with(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
