#!/usr/bin/env bash
# bench/crosscheck.sh - Starling vs Mosquitto with a load generator that is
# not ours: Debian's mosquitto_pub and mosquitto_sub (`make bench-crosscheck`).
#
# mosquitto_pub -l publishes one message per line of its standard input as
# fast as it can; mosquitto_sub -C N exits after N messages. Each run starts a
# fresh broker on a free loopback port, starts the subscribers, then the
# publishers, and times from the first publisher's start to the last
# subscriber's exit. The broker's CPU time over the run (/proc/PID/stat) is
# divided by the messages it delivered: with clients this heavy the machine is
# saturated by them, so broker CPU per delivery is the figure that shows the
# broker's own cost; messages/s shows what the clients got.
#
# Scenarios (each bounded by a 120 s timeout):
#   fanin_qos0, fanin_qos1  8 publishers x 50,000 messages of 64 bytes to
#                           bench/<i>, one subscriber on bench/#
#   fanout                  1 publisher x 10,000 messages to bench/fanout,
#                           20 subscribers
#
# Environment: CROSSCHECK_REPS (default 3), BENCH_WORKERS (default: cores).
# Needs build/release/node/starling, /usr/sbin/mosquitto, mosquitto-clients.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STARLING=$ROOT/build/release/node/starling
MOSQUITTO=${BENCH_MOSQUITTO:-/usr/sbin/mosquitto}
REPS=${CROSSCHECK_REPS:-3}
WORKERS=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}
PYTHON=${PYTHON:-/usr/bin/python3}
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || {
    echo "crosscheck: CROSSCHECK_REPS must be a positive integer" >&2
    exit 1
}
for f in "$STARLING" "$MOSQUITTO" "$(command -v mosquitto_pub || true)" \
    "$(command -v mosquitto_sub || true)"; do
    [ -n "$f" ] && [ -x "$f" ] || {
        echo "crosscheck: missing $f (make bench-crosscheck builds and installs)" >&2
        exit 1
    }
done
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^STARLING_' || true)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/starling-crosscheck.XXXXXX")
BPID=""
cleanup() {
    jobs -p | xargs -r kill -KILL 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 64-byte payloads, one per line
"$PYTHON" -c 'import sys; [print("%063d" % i) for i in range(50000)]' >"$TMP/lines50k"
head -n 10000 "$TMP/lines50k" >"$TMP/lines10k"
RESULTS=$TMP/results.txt
: >"$RESULTS"

start_broker() { # NAME -> BPID, BPORT
    BPORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    if [ "$1" = starling ]; then
        printf '%s\n' "bind_address 127.0.0.1" "port $BPORT" "workers $WORKERS" "log_level warn" \
            "sys_interval 0" "persistence false" "max_queued_messages 10000000" \
            "max_queued_bytes 0" "max_inflight_messages 1000" "admin_port 0" >"$TMP/b.conf"
        "$STARLING" -c "$TMP/b.conf" >"$TMP/b.log" 2>&1 &
    else
        printf '%s\n' "listener $BPORT 127.0.0.1" "allow_anonymous true" "persistence false" \
            "sys_interval 0" "max_queued_messages 10000000" "max_inflight_messages 1000" \
            >"$TMP/b.conf"
        "$MOSQUITTO" -c "$TMP/b.conf" >"$TMP/b.log" 2>&1 &
    fi
    BPID=$!
    for _ in $(seq 100); do
        [ -n "$(ss -Hltn "sport = :$BPORT" 2>/dev/null)" ] && return 0
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "crosscheck: $1 did not start" >&2
    cat "$TMP/b.log" >&2
    exit 1
}

stop_broker() {
    kill -TERM "$BPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
    BPID=""
}

cpu_ticks() { # utime + stime of BPID in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$BPID/stat"
}

# one_run NAME SCENARIO
one_run() {
    local name=$1 sc=$2 qos=0 npub nsub per lines topic filter
    case "$sc" in
    fanin_qos0 | fanin_qos1)
        npub=8 nsub=1 per=50000 lines=$TMP/lines50k filter='bench/#'
        [ "$sc" = fanin_qos1 ] && qos=1
        ;;
    fanout) npub=1 nsub=20 per=10000 lines=$TMP/lines10k filter=bench/fanout ;;
    esac
    local want=$((npub * per)) i subs=() pubs=()
    start_broker "$name"
    # A retained probe tells when a subscription is active: each subscriber
    # also subscribes to cc/probe, receives it once, and writes it out first.
    mosquitto_pub -p "$BPORT" -q 1 -r -t cc/probe -m probe -i cc-probe
    for i in $(seq "$nsub"); do
        timeout 120 mosquitto_sub -p "$BPORT" -q "$qos" -t "$filter" -t cc/probe \
            -C $((want + 1)) -i "cc-sub-$i" >"$TMP/sub$i.out" 2>"$TMP/sub$i.err" &
        subs+=($!)
    done
    local ready=0
    for _ in $(seq 500); do
        ready=0
        for i in $(seq "$nsub"); do [ -s "$TMP/sub$i.out" ] && ready=$((ready + 1)); done
        [ "$ready" -eq "$nsub" ] && break
        sleep 0.02
    done
    if [ "$ready" -ne "$nsub" ]; then
        echo "crosscheck: $sc against $name: subscribers not ready within 10 s" >&2
        stop_broker
        echo "$name $sc FAILED" >>"$RESULTS"
        return 0
    fi
    local c0 t0 t1 c1 rc=0
    c0=$(cpu_ticks)
    t0=$(date +%s%N)
    for i in $(seq "$npub"); do
        topic=bench/$i
        [ "$sc" = fanout ] && topic=bench/fanout
        timeout 120 mosquitto_pub -p "$BPORT" -q "$qos" -t "$topic" -l -i "cc-pub-$i" \
            <"$lines" 2>"$TMP/pub$i.err" &
        pubs+=($!)
    done
    for p in "${subs[@]}"; do wait "$p" || rc=$?; done
    t1=$(date +%s%N)
    c1=$(cpu_ticks)
    for p in "${pubs[@]}"; do wait "$p" || rc=$?; done
    stop_broker
    local deliveries=$((want * nsub))
    if [ "$rc" -ne 0 ]; then
        echo "crosscheck: $sc against $name: a client failed or timed out (status $rc)" >&2
        echo "$name $sc FAILED" >>"$RESULTS"
        return 0
    fi
    "$PYTHON" - "$name" "$sc" "$deliveries" "$t0" "$t1" "$c0" "$c1" "$(getconf CLK_TCK)" \
        >>"$RESULTS" <<'PY'
import sys
name, sc, n, t0, t1, c0, c1, hz = sys.argv[1:]
wall = (int(t1) - int(t0)) / 1e9
cpu = (int(c1) - int(c0)) / int(hz)
print(f"{name} {sc} {int(n) / wall:.0f} {cpu * 1e6 / int(n):.2f}")
PY
    tail -n 1 "$RESULTS" | awk '{printf "crosscheck: %-9s %-10s %9s deliveries/s  broker %s us CPU per delivery\n", $1, $2, $3, $4}' >&2
}

for rep in $(seq "$REPS"); do
    echo "crosscheck: repetition $rep/$REPS" >&2
    for sc in fanin_qos0 fanin_qos1 fanout; do
        order="starling mosquitto"
        [ $((rep % 2)) -eq 1 ] || order="mosquitto starling"
        for b in $order; do one_run "$b" "$sc"; done
    done
done

"$PYTHON" - "$RESULTS" "$REPS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
failed = [r for r in rows if r[2] == "FAILED"]
ok = [r for r in rows if r[2] != "FAILED"]
def med(b, sc, i):
    v = [float(r[i]) for r in ok if r[0] == b and r[1] == sc]
    return statistics.median(v) if v else None
print()
print(f"Starling vs Mosquitto with mosquitto_pub / mosquitto_sub as the load generator, "
      f"medians of {sys.argv[2]} runs")
print("| scenario | Starling deliveries/s | Mosquitto deliveries/s | S/M | "
      "Starling us CPU/delivery | Mosquitto us CPU/delivery | S/M |")
print("|---|---:|---:|---:|---:|---:|---:|")
for sc in ("fanin_qos0", "fanin_qos1", "fanout"):
    s, m = med("starling", sc, 2), med("mosquitto", sc, 2)
    sc_, mc = med("starling", sc, 3), med("mosquitto", sc, 3)
    if s is None or m is None:
        print(f"| {sc} | - | - | - | - | - | - |")
        continue
    print(f"| {sc} | {s:,.0f} | {m:,.0f} | {s / m:.2f} | {sc_:.2f} | {mc:.2f} | "
          f"{sc_ / mc:.2f} |")
for r in failed:
    print(f"FAILED: {r[0]} {r[1]}")
sys.exit(1 if failed else 0)
PY
