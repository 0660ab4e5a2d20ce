#!/usr/bin/python3
"""tests/run_all.py - what `make test` runs, in parallel where it can.

The suite is a set of parts (builds and test runs) with dependencies. A part
starts as soon as what it needs is built and the machine has room for it
(each part has a cost in CPU slots, the budget is twice the number of
cores). Each part's output goes to build/test-logs/<part>.log and is printed
whole when the part ends, with how long it took; a summary closes the run.
The exit status is 0 only when no part failed.

Every part gets its own empty TMPDIR, under $TMPDIR (default /tmp); a part
that leaves anything there fails, and the directory is removed either way.

A part exits 77 (or pytest 5, "no tests collected") to report that it could
not run: it is counted as skipped, not passed.

Usage: run_all.py [PART...]   no argument: every part; a named part brings
the parts it depends on. `run_all.py --list` prints the parts.

Environment: STARLING_TEST_XDIST=N runs each integration suite with N
pytest-xdist workers (default 2 when python3-pytest-xdist is installed, 0
without it); STARLING_TEST_PART_TIMEOUT (seconds, default 1800).
"""

import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "build" / "test-logs"
PYTHON = "/usr/bin/python3"
NCPU = len(os.sched_getaffinity(0)) or 2
BUDGET = 2 * NCPU
PART_TIMEOUT = float(os.environ.get("STARLING_TEST_PART_TIMEOUT", "1800"))
SKIPPED_RC = 77


def _xdist_workers():
    v = os.environ.get("STARLING_TEST_XDIST")
    if v is not None:
        return int(v)
    return 2 if importlib.util.find_spec("xdist") is not None else 0


XDIST = _xdist_workers()


def make(target):
    # NODEPS=1: `make test` checked the Debian packages once, before
    return ["make", "--no-print-directory", "NODEPS=1", target]


def pytest(path):
    # --durations: the slowest tests in the part's log (build/test-logs),
    # to see where the suite's time goes
    argv = [PYTHON, "-m", "pytest", "-q", "-rfEsxX", "-p", "no:cacheprovider", "--durations=25"]
    if XDIST > 0:
        argv += ["-n", str(XDIST)]
    return argv + [path]


def integration_env(workers):
    return {"STARLING_TEST_BIN": str(ROOT / "build/asan/node/starling"),
            "STARLING_TEST_WORKERS": str(workers)}


# The file of tests/cluster that runs as a part of its own (cluster-later).
CLUSTER_LATER = "test_forward.py"


def has_tests(folder):
    return any((ROOT / folder).glob("**/test_*.py"))


class Part:
    """One step of the suite: a command, what it needs first, its cost."""

    def __init__(self, name, argv, needs=(), cost=1, env=None, when=None, what="", after=()):
        self.name = name
        # exit codes that mean "could not run": 77, and pytest's 5 (no tests)
        self.skip_codes = (SKIPPED_RC, 5) if "pytest" in argv else (SKIPPED_RC,)
        self.argv = argv
        self.needs = list(needs)
        # parts it waits for when they run too (ended, however), without
        # bringing them in: a place in the schedule, not a need
        self.after = list(after)
        self.cost = cost
        self.env = env or {}
        self.when = when  # None, or a function returning a reason to skip
        self.what = what
        self.state = "waiting"  # waiting, running, passed, failed, skipped
        self.detail = ""
        self.proc = None
        self.log = LOGS / f"{name}.log"
        self.tmp = None
        self.start = self.seconds = None


# Costs: a build (make -j NCPU) fills the cores, so do the fuzz targets
# (ctest -j NCPU) and the load generator; an integration suite is mostly
# waiting on its brokers and sockets (one slot, xdist processes included).
PARTS = [
    Part("build-asan", make("build-asan"), cost=BUDGET,
         what="Debug build with ASan and UBSan, unit tests included (build/asan)"),
    Part("unit", ["ctest", "--test-dir", "build/asan", "-j", str(NCPU), "--output-on-failure"],
         needs=["build-asan"], what="CUnit unit tests through ctest"),
    Part("npm-deps", make("npm-deps"), what="MQTT.js and puppeteer-core from npm for the WebSocket and dashboard tests (build/npm)"),
    Part("integration-w1", pytest("tests/integration"), needs=["build-asan", "npm-deps"],
         env=integration_env(1),
         what="pytest tests/integration against the ASan node, 1 worker thread"),
    Part("integration-w2", pytest("tests/integration"), needs=["build-asan", "npm-deps"],
         env=integration_env(2),
         what="pytest tests/integration against the ASan node, 2 worker threads"),
    Part("memory-bound", [PYTHON, "-m", "pytest", "-q", "-rfEsxX", "-p", "no:cacheprovider",
                          "tests/integration/test_flow_memory.py"],
         needs=["integration-w1", "integration-w2"], cost=BUDGET,
         env=dict(integration_env(2), STARLING_TEST_HEAVY="1"),
         what="10,000 stuck subscribers: the memory bound, alone on the machine"),
    Part("admin-heavy", [PYTHON, "-m", "pytest", "-q", "-rfEsxX", "-s", "-p", "no:cacheprovider",
                         "tests/integration/test_admin_heavy.py"],
         needs=["build-release", "memory-bound"], cost=BUDGET,
         env={"STARLING_TEST_BIN": str(ROOT / "build/release/node/starling"),
              "STARLING_TEST_HEAVY": "1"},
         what="GET /api/v1/clients with 10,000 clients: a page within 200 ms (Release, alone)"),
    # tests/cluster, the longest part, in two: the most of it from the
    # start, beside the integration suites; test_forward.py once the fuzz
    # targets and the deployment checks are done, in the time when the rest
    # of the cluster tests ran alone on the machine (22 minutes in one part,
    # 2026-12-06)
    Part("cluster", pytest("tests/cluster") + ["--ignore", "tests/cluster/" + CLUSTER_LATER],
         needs=["build-asan", "npm-deps"],
         env=integration_env(2),
         when=lambda: None if has_tests("tests/cluster") else "no tests in tests/cluster",
         what="pytest tests/cluster (but " + CLUSTER_LATER + "): several nodes on 127.0.0.x"),
    Part("cluster-later", pytest("tests/cluster/" + CLUSTER_LATER), needs=["build-asan", "npm-deps"],
         after=["fuzz", "bench-smoke", "deploy"],
         env=integration_env(2),
         when=lambda: None if (ROOT / "tests/cluster" / CLUSTER_LATER).exists()
         else "no tests/cluster/" + CLUSTER_LATER,
         what="pytest tests/cluster/" + CLUSTER_LATER + ": several nodes on 127.0.0.x"),
    Part("cluster-timed", [PYTHON, "-m", "pytest", "-q", "-rfEsxX", "-s", "-p", "no:cacheprovider",
                           "tests/cluster/test_faults.py::"
                           "test_leader_killed_new_leader_quickly_nothing_committed_lost"],
         needs=["cluster", "cluster-later"], cost=BUDGET,
         env=dict(integration_env(2), STARLING_TEST_HEAVY="1"),
         what="the leader SIGKILLed: a new leader within 2 s (issue 10), alone on the machine"),
    # these two builds after npm-deps only, so that the cluster part, the
    # longest, takes its slot as soon as it can run (else a build that began
    # meanwhile held it back, 80 s in CI)
    Part("build-fuzz", make("build-fuzz"), needs=["npm-deps"], cost=NCPU,
         what="clang libFuzzer targets (build/fuzz)"),
    Part("fuzz", ["ctest", "--test-dir", "build/fuzz", "-j", str(NCPU), "--output-on-failure"],
         needs=["build-fuzz"], cost=NCPU, what="every fuzz target for FUZZ_SECONDS"),
    Part("build-release", make("build"), needs=["npm-deps"], cost=NCPU,
         what="Release build (build/release)"),
    Part("bench-smoke", ["bash", "bench/smoke.sh"], needs=["build-release"], cost=NCPU,
         what="self-test of the load generator against the Release node"),
    Part("deploy", pytest("tests/deploy"), needs=["build-release"],
         env={"STARLING_TEST_BIN": str(ROOT / "build/release/node/starling")},
         what="Dockerfile, install tree, systemd unit, Helm chart, cloud recipes (tests/deploy)"),
]
BY_NAME = {p.name: p for p in PARTS}

# The line of a part's log shown in the summary: the last one that counts.
DETAIL = re.compile(r"(\d+ (passed|failed|skipped|errors?)\b|tests passed|tests failed)")


def log_detail(text, any_line=False):
    """The last line of a log that counts tests, else (any_line) its last line."""
    lines = [line.strip("= ").strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if DETAIL.search(line):
            return line
    return lines[-1][:120] if lines and any_line else ""


def group_members(pgid):
    """The live (not zombie) processes of process group pgid, from /proc."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def elapsed(t0):
    return time.monotonic() - t0


class Runner:
    def __init__(self, parts):
        self.parts = parts
        self.t0 = time.monotonic()
        self.used = 0
        self.ended = queue.Queue()
        base = os.environ.get("TMPDIR") or None
        self.tmp_root = Path(tempfile.mkdtemp(prefix="starling-test-", dir=base))

    def say(self, text):
        print(f"[{elapsed(self.t0):7.1f} s] {text}", flush=True)

    def ready(self, p):
        return (p.state == "waiting" and
                all(BY_NAME[n].state in ("passed", "skipped") for n in p.needs
                    if n in self.names) and
                all(BY_NAME[n].state in ("passed", "skipped", "failed") for n in p.after
                    if n in self.names))

    def blocked(self, p):
        bad = [n for n in p.needs if n in self.names and BY_NAME[n].state == "failed"]
        return bad[0] if bad else None

    def launch(self, p):
        reason = p.when() if p.when else None
        if reason:
            p.state, p.detail, p.seconds = "skipped", reason, 0.0
            self.say(f"skip  {p.name}: {reason}")
            return
        p.tmp = self.tmp_root / p.name
        p.tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(p.tmp), PYTHONDONTWRITEBYTECODE="1", **p.env)
        self.say(f"start {p.name}: {' '.join(p.argv)}")
        p.logf = open(p.log, "wb")
        p.start = time.monotonic()
        p.proc = subprocess.Popen(p.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=p.logf, stderr=subprocess.STDOUT, start_new_session=True)
        p.state = "running"
        self.used += p.cost
        threading.Thread(target=self.watch, args=(p,), daemon=True).start()

    def watch(self, p):
        """Wait for a part, bounded by PART_TIMEOUT; report it to run()."""
        try:
            rc = p.proc.wait(PART_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(p)
            p.proc.wait()
            rc = None
        self.ended.put((p, rc))

    def finish(self, p, rc):
        p.seconds = time.monotonic() - p.start
        p.logf.close()
        self.used -= p.cost
        notes = []
        if rc is None:
            notes.append(f"killed after {PART_TIMEOUT:.0f} s (STARLING_TEST_PART_TIMEOUT)")
        if self.kill(p):
            # a test must stop what it starts; the part is not failed for it
            # (a process may be on its way out), but the log says so
            with open(p.log, "a") as f:
                f.write("run_all: processes of this part were still running; killed\n")
            stray = "processes left running (killed)"
        else:
            stray = ""
        left = sorted(x.name for x in p.tmp.iterdir())
        if left:
            notes.append(f"left {len(left)} entries in its TMPDIR: {', '.join(left[:10])}")
        shutil.rmtree(p.tmp, ignore_errors=True)
        if notes:
            with open(p.log, "a") as f:
                f.write("".join(f"run_all: {n}\n" for n in notes))
        text = p.log.read_text(errors="replace")
        if rc in p.skip_codes and not notes:
            p.state = "skipped"
        else:
            p.state = "passed" if rc == 0 and not notes else "failed"
        p.detail = "; ".join(notes) or log_detail(text, p.state != "passed")
        if stray:
            p.detail = f"{p.detail}; {stray}" if p.detail else stray
        bar = "-" * 20
        print(f"{bar} {p.name} ({p.what}) {bar}", flush=True)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        print(f"{bar} {p.name}: {p.state.upper()} in {p.seconds:.1f} s (exit {rc}, "
              f"log {p.log.relative_to(ROOT)}) {bar}", flush=True)

    def kill(self, p):
        """SIGKILL the live processes left in a part's process group (zombies
        waiting for a parent that does not reap them do not count); True if
        there were any."""
        left = group_members(p.proc.pid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return bool(left)

    def run(self):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.names = {p.name for p in self.parts}
        self.say(f"{len(self.parts)} parts, {NCPU} cores, "
                 f"xdist workers per pytest suite: {XDIST or 'none'}; logs in {LOGS.relative_to(ROOT)}/")
        try:
            while True:
                for p in self.parts:
                    if p.state == "waiting" and self.blocked(p):
                        p.state, p.seconds = "failed", 0.0
                        p.detail = f"not run: {self.blocked(p)} failed"
                        self.say(f"{p.name}: {p.detail}")
                launched = False
                for p in self.parts:
                    if self.ready(p) and (self.used + p.cost <= BUDGET or self.used == 0):
                        self.launch(p)
                        launched = True
                running = [p for p in self.parts if p.state == "running"]
                if not running:
                    if launched:
                        continue  # only skipped parts: their dependents are ready now
                    for p in self.parts:
                        if p.state == "waiting":  # cannot happen: needs form no cycle
                            p.state, p.seconds, p.detail = "failed", 0.0, "never became ready"
                    break
                self.finish(*self.ended.get())
        except KeyboardInterrupt:
            for p in self.parts:
                if p.state == "running":
                    self.kill(p)
            raise
        finally:
            shutil.rmtree(self.tmp_root, ignore_errors=True)
        return self.summary()

    def summary(self):
        total = elapsed(self.t0)
        print("=" * 30 + " summary " + "=" * 30)
        for p in self.parts:
            secs = "" if p.seconds is None else f"{p.seconds:7.1f} s"
            print(f"{p.name:16} {p.state:8} {secs:>9}  {p.detail}")
        counts = {}
        for p in self.parts:
            counts[p.state] = counts.get(p.state, 0) + 1
        words = ", ".join(f"{counts[s]} {s}" for s in ("failed", "passed", "skipped") if counts.get(s))
        print("=" * 20 + f" {words} in {total:.1f}s " + "=" * 20, flush=True)
        return 1 if counts.get("failed") else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a CI timeout): stop the parts as on ^C


def main(argv):
    signal.signal(signal.SIGTERM, _terminate)
    if argv[:1] == ["--list"]:
        for p in PARTS:
            print(f"{p.name:16} needs {', '.join(p.needs) or '-':12} {p.what}")
        return 0
    wanted = set()

    def add(name):
        if name not in BY_NAME:
            raise SystemExit(f"run_all.py: no part {name!r} (see --list)")
        if name not in wanted:
            wanted.add(name)
            for n in BY_NAME[name].needs:
                add(n)

    for name in argv or [p.name for p in PARTS]:
        add(name)
    return Runner([p for p in PARTS if p.name in wanted]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
