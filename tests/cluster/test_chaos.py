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
