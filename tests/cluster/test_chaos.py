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


def test_chaos_weight_sets_a_faults_share(tmp_path):
    """--weight FAULT=W sets that fault's weight in the random choice (0
    leaves it out) and keeps the others' as they were, so a run without it
    draws the same sequence for its seed."""
    plain = Chaos(1, 1, base=str(tmp_path / "plain"), more=True)
    weighted = Chaos(1, 1, base=str(tmp_path / "weighted"), more=True,
                     weights={"restart-all": 6, "kill": 0})
    try:
        before = {n: w for n, _, w in plain.menu()}
        after = {n: w for n, _, w in weighted.menu()}
        assert before["restart-all"] == 1 and before["kill"] == 3
        assert after == dict(before, **{"restart-all": 6, "kill": 0})
    finally:
        plain.close()
        weighted.close()


def test_chaos_weight_refuses_what_it_cannot_use(tmp_path):
    """A --weight that names no fault of the run's menu (cut-link needs
    --links), or whose weight is not a whole number >= 0, ends the runner
    with the usage error (exit 2) before any node starts, and leaves no
    data behind."""
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chaos.py")
    ch = Chaos(1, 1, base=str(tmp_path / "menu"))
    names = [n for n, _, _ in ch.menu()]  # partition only where nftables works
    ch.close()
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, TMPDIR=str(run))
    none = [x for n in names for x in ("--weight", f"{n}=0")]
    for args, says in ((["--weight", "cut-link=2"], "no fault ['cut-link']"),
                       (["--weight", "kill=-1"], "'kill=-1': FAULT=W"),
                       (["--weight", "kill"], "'kill': FAULT=W"),
                       (none, "every fault of the menu has weight 0")):
        p = subprocess.run([sys.executable, runner, "--seed", "7", "--minutes", "1"] + args,
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert says in p.stderr, (args, p.stderr)
        assert os.listdir(run) == [], (args, os.listdir(run))
        assert processes_with(str(run)) == []
