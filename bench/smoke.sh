#!/usr/bin/env bash
# bench/smoke.sh - quick self-test of starling-bench (about 15 s, bounded).
#
# Starts Starling on a free loopback port, runs every scenario for 1 second,
# and checks that each prints one JSON line that parses, reports a complete
# run, and that fanin at QoS 1 lost nothing. Exit status 0 on success.
#
# Environment: STARLING_BIN (default build/release/node/starling),
# STARLING_BENCH_BIN (default build/release/bench/starling-bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${STARLING_BIN:-$ROOT/build/release/node/starling}
BENCH=${STARLING_BENCH_BIN:-$ROOT/build/release/bench/starling-bench}
PYTHON=${PYTHON:-/usr/bin/python3}
for f in "$BIN" "$BENCH"; do
    [ -x "$f" ] || {
        echo "smoke: $f is missing (build first)" >&2
        exit 1
    }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^STARLING_' || true)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/starling-smoke.XXXXXX")
PID=""
cleanup() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$TMP/starling.conf" <<CONF
bind_address 127.0.0.1
port $PORT
log_level warn
max_queued_messages 10000000
max_inflight_messages 1000
sys_interval 0
data_dir $TMP/data
CONF
"$BIN" -c "$TMP/starling.conf" >"$TMP/starling.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    [ -n "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ] && break
    kill -0 "$PID" 2>/dev/null || {
        echo "smoke: starling did not start:" >&2
        cat "$TMP/starling.log" >&2
        exit 1
    }
    sleep 0.05
done

COMMON=(--host 127.0.0.1 --port "$PORT" --pid "$PID" --label starling --duration 1 --drain 2
    --deadline 12)
: >"$TMP/out.jsonl"
fail=0
run() {
    local name=$1
    shift
    if ! timeout 15 "$BENCH" "$@" >>"$TMP/out.jsonl" 2>"$TMP/err"; then
        echo "smoke: FAIL $name (exit status $?)" >&2
        cat "$TMP/err" >&2
        fail=1
    fi
}
# QoS 1 first: the QoS 0 run leaves the broker busy with its backlog. The
# large max_queued_messages keeps Starling from dropping QoS 1 messages when
# it takes them in faster than it delivers them (see bench/README.md): this
# is a self-test of the generator, not of that limit.
run fanin_qos1 fanin --qos 1 "${COMMON[@]}"
run fanin_qos0 fanin --qos 0 "${COMMON[@]}"
run fanin_qos1_v5_persistent fanin --qos 1 --mqtt 5 --persistent "${COMMON[@]}"
run fanout fanout --subscribers 20 "${COMMON[@]}"
run latency latency --rate 2000 "${COMMON[@]}"
run conns conns --conns 1000 --host 127.0.0.1 --port "$PORT" --pid "$PID" --label starling \
    --deadline 12
run conns_sub conns --conns 500 --subscribe --host 127.0.0.1 --port "$PORT" --pid "$PID" \
    --label starling --deadline 12
run ceiling ceiling --duration 1
kill -0 "$PID" 2>/dev/null || {
    echo "smoke: FAIL starling died during the runs" >&2
    fail=1
}

"$PYTHON" - "$TMP/out.jsonl" <<'PY' || fail=1
import json, sys
want = ["fanin", "fanin", "fanin", "fanout", "latency", "conns", "conns", "ceiling"]
lines = [l for l in open(sys.argv[1]) if l.strip()]
runs = [json.loads(l) for l in lines]
ok = True
got = [r["scenario"] for r in runs]
if got != want:
    print(f"smoke: expected scenarios {want}, got {got}", file=sys.stderr)
    ok = False
for r in runs:
    if not r.get("complete"):
        print(f"smoke: incomplete {r['scenario']}: {r.get('error')}", file=sys.stderr)
        ok = False
    if r.get("msgs_per_s", 1) <= 0 or r.get("connects_per_s", 1) <= 0:
        print(f"smoke: {r['scenario']} measured nothing", file=sys.stderr)
        ok = False
if not any(r["scenario"] == "conns" and r.get("subscribe") for r in runs):
    print("smoke: no conns --subscribe run among the results", file=sys.stderr)
    ok = False
if not any(r.get("mqtt") == "5" and r.get("persistent") for r in runs):
    print("smoke: no MQTT 5.0 persistent run among the results", file=sys.stderr)
    ok = False
for r in runs:
    if r["scenario"] == "fanin" and r["qos"] == 1:
        if r["loss"] != 0 or r["received"] < r["acked"] or r["acked"] == 0:
            print(f"smoke: fanin QoS 1 lost messages: {r}", file=sys.stderr)
            ok = False
    if r["scenario"] == "latency" and r["samples"] <= 0:
        print("smoke: latency has no samples", file=sys.stderr)
        ok = False
for r in runs:
    print(f"smoke: ok {r['scenario']} qos{r['qos']}: " +
          ", ".join(f"{k}={r[k]}" for k in ("msgs_per_s", "connects_per_s", "loss", "p99_us")
                    if k in r))
sys.exit(0 if ok else 1)
PY
runs=$(grep -c . "$TMP/out.jsonl" || true)
[ $fail -eq 0 ] && echo "smoke: $runs passed, 0 failed" || { echo "smoke: FAIL" >&2; exit 1; }
