#!/usr/bin/env bash
# bench/smoke.sh - quick self-test of starling-bench (about 25 s, bounded).
#
# Starts Starling on a free loopback port, runs every scenario for 1 or 2
# seconds, and checks that each prints one JSON line that parses, reports a
# complete run and the broker's memory, that fanin and indep at QoS 1 lost
# nothing, that the exact counts add up (delivered + dropped = sent), and that
# the slowsub subscriber read at its set rate while the publishers sent
# faster. Then (unless BENCH_CLUSTER=0) a 3-node cluster on 127.0.0.31-33:
# cross-node fan-in and latency, a burst of subscriptions over the three
# nodes, and cross-node takeovers (a few seconds). Ends with "smoke: N passed, M failed" (one per run); exit status 0
# when nothing failed.
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
CPIDS=()
stop_pids() {
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}
cleanup() {
    [ -z "$PID" ] || stop_pids "$PID"
    [ ${#CPIDS[@]} -eq 0 ] || stop_pids "${CPIDS[@]}"
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
admin_port 0
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
failed_runs=0
run() {
    local name=$1 rc=0
    shift
    timeout 15 "$BENCH" "$@" >>"$TMP/out.jsonl" 2>"$TMP/err" || rc=$?
    if [ $rc -ne 0 ]; then
        echo "smoke: FAIL $name (exit status $rc)" >&2
        cat "$TMP/err" >&2
        failed_runs=$((failed_runs + 1))
    fi
}
# QoS 1 first: the QoS 0 run leaves the broker busy with its backlog. The
# large max_queued_messages keeps Starling from dropping QoS 1 messages when
# it takes them in faster than it delivers them (see bench/README.md): this
# is a self-test of the generator, not of that limit.
run fanin_qos1 fanin --qos 1 "${COMMON[@]}"
run fanin_qos0 fanin --qos 0 "${COMMON[@]}"
run fanin_qos1_v5_persistent fanin --qos 1 --mqtt 5 --persistent "${COMMON[@]}"
run indep_qos1 indep --qos 1 "${COMMON[@]}"
run indep_qos0 indep --qos 0 "${COMMON[@]}"
# publishers 2 x 5000 msg/s, the subscriber reads 1000 msg/s for 2 s
SLOW=(--publishers 2 --rate 5000 --sub-rate 1000 --host 127.0.0.1 --port "$PORT" --pid "$PID"
    --label starling --duration 2 --drain 3 --deadline 12)
run slowsub slowsub --qos 0 "${SLOW[@]}"
run slowsub_qos1 slowsub --qos 1 "${SLOW[@]}"
run fanout fanout --subscribers 20 "${COMMON[@]}"
run latency latency --rate 2000 "${COMMON[@]}"
run conns conns --conns 1000 --host 127.0.0.1 --port "$PORT" --pid "$PID" --label starling \
    --deadline 12
run conns_sub conns --conns 500 --subscribe --host 127.0.0.1 --port "$PORT" --pid "$PID" \
    --label starling --deadline 12
run ceiling ceiling --duration 1
alive=1
kill -0 "$PID" 2>/dev/null || {
    echo "smoke: FAIL starling died during the runs" >&2
    alive=0
}
stop_pids "$PID"
PID=""

# The cluster scenarios of `make bench` (cl_*), briefly, on three nodes.
CLUSTER=${BENCH_CLUSTER:-1}
if [ "$CLUSTER" = 1 ]; then
    ADDRS=(127.0.0.31 127.0.0.32 127.0.0.33)
    # shellcheck disable=SC2046
    set -- $("$PYTHON" - "${ADDRS[@]}" <<'PY'
import socket, sys
addrs, ports = sys.argv[1:], []
while len(ports) < 4:
    s = socket.socket()
    s.bind((addrs[0], 0))
    p = s.getsockname()[1]
    ok, held = p not in ports, [s]
    for a in addrs[1:]:
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
print(*ports)
PY
)
    for i in 1 2 3; do
        cat >"$TMP/cl$i.conf" <<CONF
bind_address ${ADDRS[$((i - 1))]}
port $1
workers 1
log_level warn
max_queued_messages 10000000
max_inflight_messages 1000
sys_interval 0
persistence false
data_dir $TMP/cl$i
admin_port $4
node_name smoke$i
cluster_port $2
raft_port $3
cluster_seeds 127.0.0.31,127.0.0.32,127.0.0.33
cluster_name smoke-$3
CONF
        "$BIN" -c "$TMP/cl$i.conf" >"$TMP/cl$i.log" 2>&1 &
        CPIDS+=($!)
    done
    CPORT=$1
    # serving once every node's health says 200 (a leader known)
    formed=0
    for _ in $(seq 300); do
        n=0
        for a in "${ADDRS[@]}"; do
            "$PYTHON" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' \
                "http://$a:$4/api/v1/health" 2>/dev/null && n=$((n + 1))
        done
        [ $n -lt 3 ] || {
            formed=1
            break
        }
        sleep 0.1
    done
    if [ $formed = 1 ]; then
        CL=(--host 127.0.0.31 --sub-host 127.0.0.32 --port "$CPORT" --pid "${CPIDS[0]}"
            --label cluster --deadline 12)
        run cl_fanin_qos0 fanin --qos 0 --duration 1 --drain 2 "${CL[@]}"
        run cl_latency latency --rate 2000 --duration 1 --drain 2 "${CL[@]}"
        run cl_subs conns --conns 300 --sub-burst --hosts 127.0.0.31,127.0.0.32,127.0.0.33 \
            --host 127.0.0.31 --port "$CPORT" --pid "${CPIDS[0]}" --label cluster --deadline 12
        run cl_takeover takeover --conns 30 "${CL[@]}"
    else
        echo "smoke: FAIL the 3-node cluster did not form within 30 s" >&2
        for i in 1 2 3; do tail -n 5 "$TMP/cl$i.log" >&2; done
        failed_runs=$((failed_runs + 4))
    fi
    for p in "${CPIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || {
            echo "smoke: FAIL a cluster node died during the runs" >&2
            alive=0
        }
    done
    stop_pids "${CPIDS[@]}"
    CPIDS=()
fi

# One verdict per expected run: a run that printed nothing counts as failed.
"$PYTHON" - "$TMP/out.jsonl" "$failed_runs" "$alive" "$CLUSTER" <<'PY'
import json, sys
want = ["fanin", "fanin", "fanin", "indep", "indep", "slowsub", "slowsub", "fanout", "latency",
        "conns", "conns", "ceiling"]
if sys.argv[4] == "1":
    want += ["fanin", "latency", "conns", "takeover"]
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
failed_runs, alive = int(sys.argv[2]), sys.argv[3] == "1"

def check(r):
    """The problems of one run (empty when it passed)."""
    bad = []
    sc = r["scenario"]
    if not r.get("complete"):
        bad.append(f"incomplete: {r.get('error')}")
    if r.get("msgs_per_s", 1) <= 0 or r.get("connects_per_s", 1) <= 0:
        bad.append("measured nothing")
    if sc != "ceiling":
        # the broker's memory, sampled during the run
        peak, end, hwm = r.get("rss_peak_kb"), r.get("rss_end_kb"), r.get("rss_hwm_kb")
        if not (isinstance(peak, int) and isinstance(end, int) and isinstance(hwm, int)
                and 0 < end <= peak and hwm > 0):
            bad.append(f"broker memory not sampled: peak {peak} end {end} hwm {hwm}")
    if sc in ("fanin", "indep", "slowsub"):
        if r["delivered"] + r["dropped"] != r["sent"] or r["delivered"] > r["received"]:
            bad.append(f"exact counts do not add up: sent {r['sent']} delivered "
                       f"{r['delivered']} dropped {r['dropped']} received {r['received']}")
        if r["qos"] == 1 and (r["loss"] != 0 or r["acked_lost"] != 0 or r["acked"] == 0
                              or r["received"] < r["acked"]):
            bad.append(f"QoS 1 acknowledged messages lost: loss {r['loss']} acked_lost "
                       f"{r['acked_lost']} acked {r['acked']} received {r['received']}")
    if sc == "slowsub":
        # the subscriber reads at its rate, the publishers send 10x faster,
        # and what piled up arrives in the drain
        if not 0.5 * r["sub_rate"] <= r["delivered_per_s"] <= 1.3 * r["sub_rate"]:
            bad.append(f"subscriber read {r['delivered_per_s']} msg/s, set {r['sub_rate']}")
        if r["publish_per_s"] < 3 * r["sub_rate"] or r["received_after_window"] <= 0:
            bad.append(f"no backlog: published {r['publish_per_s']} msg/s, "
                       f"{r['received_after_window']} received after the window")
    if sc == "latency" and r["samples"] <= 0:
        bad.append("no latency samples")
    if r.get("sub_burst") and not (r["subacked"] == r["conns"] and r["subacks_per_s"] > 0):
        bad.append(f"{r['subacked']} of {r['conns']} SUBACKs")
    if sc == "takeover" and not (r["taken"] == r["kicked"] == r["conns"] and r["p50_us"] > 0
                                 and not r["same_node"]):
        bad.append(f"takeover: {r['taken']} taken, {r['kicked']} kicked of {r['conns']}")
    return bad

passed = failed = 0
for r in runs:
    bad = check(r)
    name = f"{r['scenario']} qos{r['qos']}" + (" (cluster)" if r["broker"] == "cluster" else "")
    if bad:
        failed += 1
        print(f"smoke: FAIL {name}: " + "; ".join(bad), file=sys.stderr)
    else:
        passed += 1
        print(f"smoke: ok {name}: " +
              ", ".join(f"{k}={r[k]}" for k in ("msgs_per_s", "connects_per_s", "loss",
                                                 "dropped", "acked_lost", "p99_us",
                                                 "subacks_per_s", "takeovers_per_s",
                                                 "rss_peak_kb") if k in r))
got = [r["scenario"] for r in runs]
if got != want:
    print(f"smoke: expected scenarios {want}, got {got}", file=sys.stderr)
# runs that printed no result at all
failed += max(len(want) - len(runs), 0)
if not any(r["scenario"] == "conns" and r.get("subscribe") for r in runs):
    print("smoke: FAIL no conns --subscribe run among the results", file=sys.stderr)
    failed += 1
if not any(r.get("mqtt") == "5" and r.get("persistent") for r in runs):
    print("smoke: FAIL no MQTT 5.0 persistent run among the results", file=sys.stderr)
    failed += 1
if not alive:
    failed += 1
# a run that exited non-zero but printed a complete-looking line
failed = max(failed, failed_runs)
print(f"smoke: {passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
PY
