#!/usr/bin/env bash
# bench/run.sh - Starling vs Eclipse Mosquitto with starling-bench (`make bench`).
#
# Runs every scenario against both brokers, alternating (starling, mosquitto,
# starling, mosquitto, ...), BENCH_REPS times, each broker freshly started on
# a free loopback port for every run, once with each broker configuration set
# of BENCH_CONFIGS: "tuned" (the queue sizes below) and "defaults" (each
# broker as a user starts it: Starling with no configuration file, only -p
# PORT and STARLING_DATA_DIR; Mosquitto with a file holding only its listener
# and allow_anonymous true). Prints a table of medians with the ratio
# Starling / Mosquitto for each set side by side, with the broker's peak
# memory, and writes every run and the medians to
# bench/results/<timestamp>.json.
#
# It builds and installs nothing: `make bench` does (build/release must hold
# node/starling and bench/starling-bench; /usr/sbin/mosquitto must exist).
#
# Environment:
#   BENCH_REPS       repetitions (default 3)
#   BENCH_DURATION   seconds per throughput/latency run (default 5)
#   BENCH_CONNS      connections of the conns scenario (default 10000, <= 19000)
#   BENCH_CONFIGS    broker configuration sets, space or comma separated:
#                    tuned, defaults (default: both)
#   BENCH_SCENARIOS  subset, space or comma separated, of:
#                    fanin_qos0 fanin_qos1 fanin_qos1_persistent fanout latency
#                    conns conns_sub indep_qos0 indep_qos1 slowsub slowsub_qos1
#                    ceiling ("fanin" means the three fanin runs, "indep" the
#                    two indep runs; default: all but slowsub_qos1).
#                    conns_sub is conns with every connection subscribed to a
#                    topic of its own; indep_* is issue 12's scenario (8
#                    unpaced publishers, one subscriber on '#', exact counts of
#                    dropped and acknowledged-but-lost messages); slowsub*
#                    has one subscriber reading at BENCH_SLOW_SUB_RATE msg/s
#   BENCH_CLUSTER    1 (default) runs the cluster scenarios (cl_*), 0 skips them
#   BENCH_CLUSTER_DURATION seconds of the cl_fanin_* runs (default 3)
#   BENCH_CLUSTER_LATENCY_DURATION seconds of cl_latency (default 10: its p99
#                    is over about 95,000 messages, so that one stall of a
#                    few ms on the shared cores does not decide it)
#   BENCH_CLUSTER_CONNS connections of cl_subs and cl_conns (default 5000)
#   BENCH_CLUSTER_TAKEOVERS client ids taken over in cl_takeover (default 200)
#   BENCH_CLUSTER_WORKERS workers of each cluster node (default 1: three
#                    nodes and the generator share the cores)
#   BENCH_SLOW_RATE  slowsub: messages/s of each of its 4 publishers, 0 =
#                    unpaced (default 10000)
#   BENCH_SLOW_SUB_RATE slowsub: messages/s the subscriber reads (default 2000)
#                    tls_fanin tls_conns ws_fanin (in the default list too):
#                    fanin_qos0 over TLS / WebSocket, and conns over TLS
#                    (BENCH_TLS_CONNS connections, default 2000), each broker
#                    with a TLS (P-256 certificate) or WebSocket listener;
#                    they run with the tuned configuration set only
#   BENCH_WORKERS    Starling worker threads (default: number of cores)
#   BENCH_THREADS    generator threads (default 2)
#   BENCH_MQTT       protocol version of the generator's connections, 3.1.1
#                    or 5 (default 3.1.1)
#   BENCH_QUEUE      max_queued_messages of both brokers (default 100000)
#   BENCH_QOS1_QUEUE max_queued_messages for the fanin runs, QoS 0 and 1
#                    (default 10000000, and Starling's max_queued_bytes 0): both
#                    brokers acknowledge a PUBLISH before delivering it, so the
#                    publisher windows do not bound the subscriber's backlog, and
#                    with 100000 both drop acknowledged QoS 1 messages; QoS 0
#                    publishers have no window at all, so the same large queue
#                    makes QoS 0 loss the brokers' and not the queue limit's
#
# Cluster scenarios (BENCH_CLUSTER=1, or selected by name; "cluster" means all
# eight): a fresh 3-node Starling cluster on 127.0.0.31-33 (one free port each
# for MQTT, the forwarding channel, Raft and the admin API, the same on every
# address), side by side with a fresh single Starling (tuned) in the same
# repetition:
#   cl_fanin_qos0  fanin QoS 0, publishers on node 1, the subscriber on node 2
#                  (and Mosquitto's single-node rate, for the 3x target)
#   cl_latency     latency, publisher on node 1, subscriber on node 2
#   cl_subs        conns --sub-burst spread over the 3 nodes: every connection
#                  open, then all subscribe to their own topic at once: SUBACKs/s
#   cl_conns       conns spread over the 3 nodes: each CONNECT claims its
#                  client id through Raft
#   cl_takeover    takeover: a client on node 1 reconnects with the same id and
#                  clean start 0 to node 2; CONNECT -> CONNACK (session present 1)
#   cl_fanin_qos1  fanin QoS 1 as cl_fanin_qos0, persistence false: a forward
#                  is sent at most once (no outbox without a store)
#   cl_fanin_qos1_persistent  the same with a persistent subscriber and, on
#                  every node (and the single one), persistence true and sync
#                  always: the origin's PUBACK waits for its outbox row, the
#                  destination acknowledges a forward once stored (issue 10's
#                  cost of the cross-node guarantees)
#   cl_takeover_persistent  cl_takeover with persistence true and sync always:
#                  the CONNACK waits for the claim's store write
#
# fanin_qos1_persistent is fanin QoS 1 with a persistent subscriber (clean
# session 0, fixed client id): Starling with persistence true, sync always and
# a fresh data_dir per run; Mosquitto with persistence true, a fresh
# persistence_location and its default autosave (it writes its database
# periodically and at exit, never per message, so it does no fsync per
# message). The data directories live under $TMP, which must not be a tmpfs
# (fsync there is free): set TMPDIR to a directory on a disk if /tmp is one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/build/release/bench/starling-bench
STARLING=$ROOT/build/release/node/starling
MOSQUITTO=${BENCH_MOSQUITTO:-/usr/sbin/mosquitto}
REPS=${BENCH_REPS:-3}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNS:-10000}
WORKERS=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}
THREADS=${BENCH_THREADS:-2}
MQTT=${BENCH_MQTT:-3.1.1}
QUEUE=${BENCH_QUEUE:-100000}
QOS1_QUEUE=${BENCH_QOS1_QUEUE:-10000000}
SCENARIOS=${BENCH_SCENARIOS:-fanin_qos0 fanin_qos1 fanin_qos1_persistent fanout latency conns conns_sub indep_qos0 indep_qos1 slowsub ceiling tls_fanin tls_conns ws_fanin cluster}
CLUSTER=${BENCH_CLUSTER:-1}
CL_DURATION=${BENCH_CLUSTER_DURATION:-3}
CL_LAT_DURATION=${BENCH_CLUSTER_LATENCY_DURATION:-10}
CL_CONNS=${BENCH_CLUSTER_CONNS:-5000}
CL_TAKEOVERS=${BENCH_CLUSTER_TAKEOVERS:-200}
CL_WORKERS=${BENCH_CLUSTER_WORKERS:-1}
CL_ADDRS=(127.0.0.31 127.0.0.32 127.0.0.33)
TLS_CONNS=${BENCH_TLS_CONNS:-2000}
CONFIGS=${BENCH_CONFIGS:-tuned,defaults}
SLOW_RATE=${BENCH_SLOW_RATE:-10000}
SLOW_SUB_RATE=${BENCH_SLOW_SUB_RATE:-2000}
PYTHON=${PYTHON:-/usr/bin/python3}

die() {
    echo "bench: $*" >&2
    exit 1
}

for f in "$BENCH" "$STARLING"; do
    [ -x "$f" ] || die "$f is missing: run 'make bench' (it builds first)"
done
[ -x "$MOSQUITTO" ] || die "$MOSQUITTO is missing: apt-get install mosquitto (make bench does)"
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive integer"
[[ "$DURATION" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_DURATION must be a number of seconds"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] && [ "$CONNS" -le 19000 ] || die "BENCH_CONNS must be 1..19000"
[[ "$WORKERS" =~ ^[0-9]+$ ]] || die "BENCH_WORKERS must be an integer"
[[ "$QUEUE" =~ ^[0-9]+$ ]] || die "BENCH_QUEUE must be an integer"
[ "$MQTT" = 3.1.1 ] || [ "$MQTT" = 5 ] || die "BENCH_MQTT must be 3.1.1 or 5"
[[ "$QOS1_QUEUE" =~ ^[0-9]+$ ]] || die "BENCH_QOS1_QUEUE must be an integer"
[[ "$SLOW_RATE" =~ ^[0-9]+$ ]] || die "BENCH_SLOW_RATE must be an integer (0 = unpaced)"
[[ "$SLOW_SUB_RATE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SLOW_SUB_RATE must be a positive integer"
[ "$CLUSTER" = 0 ] || [ "$CLUSTER" = 1 ] || die "BENCH_CLUSTER must be 0 or 1"
[[ "$CL_DURATION" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_CLUSTER_DURATION must be a number of seconds"
[[ "$CL_LAT_DURATION" =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
    die "BENCH_CLUSTER_LATENCY_DURATION must be a number of seconds"
[[ "$CL_CONNS" =~ ^[1-9][0-9]*$ ]] && [ "$CL_CONNS" -le 19000 ] || die "BENCH_CLUSTER_CONNS must be 1..19000"
[[ "$CL_TAKEOVERS" =~ ^[1-9][0-9]*$ ]] && [ "$CL_TAKEOVERS" -le 9000 ] || die "BENCH_CLUSTER_TAKEOVERS must be 1..9000"
[[ "$CL_WORKERS" =~ ^[0-9]+$ ]] || die "BENCH_CLUSTER_WORKERS must be an integer"

cfgs=()
for c in ${CONFIGS//,/ }; do
    case "$c" in
    tuned | defaults)
        case " ${cfgs[*]} " in *" $c "*) ;; *) cfgs+=("$c") ;; esac
        ;;
    *) die "unknown configuration set '$c' in BENCH_CONFIGS (tuned, defaults)" ;;
    esac
done
[ ${#cfgs[@]} -gt 0 ] || die "BENCH_CONFIGS selects nothing"

# Normalise the scenario list.
sel=()
for s in ${SCENARIOS//,/ }; do
    case "$s" in
    fanin) sel+=(fanin_qos0 fanin_qos1 fanin_qos1_persistent) ;;
    indep) sel+=(indep_qos0 indep_qos1) ;;
    cluster)
        sel+=(cl_fanin_qos0 cl_latency cl_subs cl_conns cl_takeover cl_fanin_qos1
            cl_fanin_qos1_persistent cl_takeover_persistent)
        ;;
    cl_fanin_qos0 | cl_latency | cl_subs | cl_conns | cl_takeover | cl_fanin_qos1 | \
        cl_fanin_qos1_persistent | cl_takeover_persistent)
        sel+=("$s")
        ;;
    fanin_qos0 | fanin_qos1 | fanin_qos1_persistent | fanout | latency | conns | conns_sub | \
        indep_qos0 | indep_qos1 | slowsub | slowsub_qos1 | ceiling | tls_fanin | tls_conns | ws_fanin)
        sel+=("$s")
        ;;
    *) die "unknown scenario '$s' in BENCH_SCENARIOS" ;;
    esac
done
if [ "$CLUSTER" = 0 ]; then # BENCH_CLUSTER=0 skips the cluster scenarios
    keep=()
    for s in "${sel[@]}"; do [[ "$s" == cl_* ]] || keep+=("$s"); done
    sel=(${keep[@]+"${keep[@]}"})
fi
[ ${#sel[@]} -gt 0 ] || die "BENCH_SCENARIOS selects nothing"

# Both brokers and the generator may hold many sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The broker must not pick up STARLING_* settings from the caller.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^STARLING_' || true)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/starling-bench.XXXXXX")
# fsync on a tmpfs costs nothing: the persistent runs would measure no disk
case "$(findmnt -n -o FSTYPE -T "$TMP" 2>/dev/null || true)" in
tmpfs | ramfs)
    case " ${sel[*]} " in
    *" fanin_qos1_persistent "* | *"_persistent "*)
        echo "bench: WARNING: $TMP is on a tmpfs; the persistent runs do not touch a disk" \
            "(set TMPDIR to a directory on a disk)" >&2
        ;;
    esac
    ;;
esac
BPID=""
BDATA=""
CPIDS=()
cleanup() {
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then
        kill -KILL "$BPID" 2>/dev/null || true
    fi
    local p
    for p in ${CPIDS[@]+"${CPIDS[@]}"}; do
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$ROOT/bench/results
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$STAMP.json
RUNS=$TMP/runs.jsonl
: >"$RUNS"
FAILURES=0

# The TLS scenarios' certificate (both brokers use the same one).
make_cert() {
    [ -f "$TMP/cert.pem" ] && return 0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 ||
        die "openssl could not make the TLS scenarios' certificate"
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_broker NAME SCENARIO CONFIG: sets BPID, BPORT and XPORT (the port
# the generator uses: BPORT, or the TLS / WebSocket listener's), or returns 1.
start_broker() {
    local name=$1 conf=$TMP/$1.conf log=$TMP/$1.log queue=$QUEUE qbytes=67108864
    local persist=false data="" xkind=""
    case "$2" in
    tls_*) xkind=tls ;;
    ws_*) xkind=ws ;;
    esac
    if [ "$3" = defaults ]; then
        BPORT=$(free_port)
        XPORT=$BPORT
        if [ "$name" = starling ]; then
            # no configuration file: built-in defaults (persistence true,
            # sync always, max_queued_messages 1000, ...). Only the port, a
            # fresh data directory instead of ./data, and the loopback address
            # (like Mosquitto's listener below; it changes nothing else)
            BDATA=$(mktemp -d "$TMP/$name-data.XXXXXX")
            STARLING_DATA_DIR=$BDATA STARLING_BIND_ADDRESS=127.0.0.1 "$STARLING" -p "$BPORT" \
                >"$log" 2>&1 &
        else
            # a listener and nothing else; Mosquitto 2 refuses anonymous
            # clients on a configured listener unless allow_anonymous true
            # (without any file it accepts them on localhost)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$BPORT" >"$conf"
            "$MOSQUITTO" -c "$conf" >"$log" 2>&1 &
        fi
        BPID=$!
        wait_listening "$name"
        return
    fi
    case "$2" in
    fanin_* | tls_fanin | ws_fanin) # every fanin run: see BENCH_QOS1_QUEUE above
        queue=$QOS1_QUEUE
        qbytes=0
        ;;
    esac
    if [[ "$2" == *_persistent ]]; then # fanin_qos1_persistent, cl_*_persistent
        persist=true
        data=$(mktemp -d "$TMP/$name-data.XXXXXX") # fresh store for every run
    fi
    BPORT=$(free_port)
    XPORT=$BPORT
    [ -z "$xkind" ] || XPORT=$(free_port)
    [ "$xkind" != tls ] || make_cert
    if [ "$name" = starling ]; then
        cat >"$conf" <<EOF
bind_address 127.0.0.1
port $BPORT
workers $WORKERS
log_level warn
max_queued_messages $queue
max_queued_bytes $qbytes
max_inflight_messages 1000
sys_interval 0
admin_port 0
persistence $persist
EOF
        [ -z "$data" ] || printf 'data_dir %s\nsync always\n' "$data" >>"$conf"
        [ "$xkind" != tls ] || printf 'tls_port %s\ntls_certfile %s\ntls_keyfile %s\n' \
            "$XPORT" "$TMP/cert.pem" "$TMP/key.pem" >>"$conf"
        [ "$xkind" != ws ] || printf 'ws_port %s\n' "$XPORT" >>"$conf"
        "$STARLING" -c "$conf" >"$log" 2>&1 &
    else
        cat >"$conf" <<EOF
listener $BPORT 127.0.0.1
allow_anonymous true
persistence $persist
max_queued_messages $queue
max_inflight_messages 1000
max_connections -1
sys_interval 0
log_dest stderr
log_type error
log_type warning
EOF
        [ -z "$data" ] || printf 'persistence_location %s/\n' "$data" >>"$conf"
        # the same listener, after the plain one (run as us: the key is ours)
        [ -z "$xkind" ] || printf 'user %s\nlistener %s 127.0.0.1\n' "$(id -un)" "$XPORT" >>"$conf"
        [ "$xkind" != tls ] || printf 'certfile %s\nkeyfile %s\n' "$TMP/cert.pem" \
            "$TMP/key.pem" >>"$conf"
        [ "$xkind" != ws ] || printf 'protocol websockets\n' >>"$conf"
        "$MOSQUITTO" -c "$conf" >"$log" 2>&1 &
    fi
    BPID=$!
    BDATA=$data
    wait_listening "$name"
}

# wait_listening NAME: until BPID listens on BPORT (0), or it died (1).
wait_listening() {
    local name=$1 log=$TMP/$1.log i
    for i in $(seq 100); do
        if ! kill -0 "$BPID" 2>/dev/null; then
            echo "bench: $name exited at start-up:" >&2
            tail -n 5 "$log" >&2
            BPID=""
            return 1
        fi
        if [ -n "$(ss -Hltn "sport = :$BPORT" 2>/dev/null)" ] &&
            [ -n "$(ss -Hltn "sport = :$XPORT" 2>/dev/null)" ]; then
            sleep 0.3 # let it settle before the memory baseline
            return 0
        fi
        sleep 0.05
    done
    echo "bench: $name does not listen on port $BPORT" >&2
    return 1
}

stop_broker() {
    local name=$1
    [ -n "$BPID" ] || return 0
    if ! kill -0 "$BPID" 2>/dev/null; then
        echo "bench: $name (pid $BPID) died during the run; log tail:" >&2
        tail -n 10 "$TMP/$name.log" >&2 || true
        FAILURES=$((FAILURES + 1))
        wait "$BPID" 2>/dev/null || true
        BPID=""
        [ -z "$BDATA" ] || rm -rf "$BDATA"
        BDATA=""
        return 0
    fi
    kill -TERM "$BPID" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$BPID" 2>/dev/null; then
        echo "bench: $name did not stop on SIGTERM within 5 s; killing it" >&2
        kill -KILL "$BPID" 2>/dev/null || true
    fi
    wait "$BPID" 2>/dev/null || true
    BPID=""
    [ -z "$BDATA" ] || rm -rf "$BDATA"
    BDATA=""
}

# start_cluster [PERSIST]: three fresh nodes on CL_ADDRS with the tuned
# settings (the fanin runs' queues), each with CL_WORKERS workers, persistence
# false or, with PERSIST true, persistence true and sync always in a fresh
# data_dir (the cross-node guarantees: QoS 1/2 forwards in the origin's outbox
# until the destination stored them, claims stored before their CONNACK); sets
# CPIDS and CPORT, and returns 0 once every node lists three reachable members
# and a leader, or 1.
start_cluster() {
    local ports i key persist=${1:-false}
    # four ports free on all three addresses: MQTT, channel, Raft, admin
    ports=$("$PYTHON" - "${CL_ADDRS[@]}" <<'PYEOF'
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
PYEOF
)
    # shellcheck disable=SC2086
    set -- $ports
    CPORT=$1
    key="bench:$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    CPIDS=()
    for i in 1 2 3; do
        mkdir -p "$TMP/cl$i"
        cat >"$TMP/cl$i.conf" <<CONF
bind_address ${CL_ADDRS[$((i - 1))]}
port $1
workers $CL_WORKERS
log_level warn
max_queued_messages $QOS1_QUEUE
max_queued_bytes 0
max_inflight_messages 1000
sys_interval 0
persistence $persist
sync always
data_dir $TMP/cl$i
admin_port $4
api_key $key
node_name bench$i
cluster_port $2
raft_port $3
cluster_seeds $(
            IFS=,
            echo "${CL_ADDRS[*]}"
        )
cluster_name bench-$3
cluster_secret bench-secret-$3
CONF
        "$STARLING" -c "$TMP/cl$i.conf" >"$TMP/cl$i.log" 2>&1 &
        CPIDS+=($!)
    done
    if ! "$PYTHON" - "$4" "$key" "${CL_ADDRS[@]}" <<'PYEOF'; then
import base64, json, sys, time, urllib.request
port, key, addrs = sys.argv[1], sys.argv[2], sys.argv[3:]
auth = "Basic " + base64.b64encode(key.encode()).decode()
def get(a, path):
    r = urllib.request.Request(f"http://{a}:{port}{path}", headers={"Authorization": auth})
    with urllib.request.urlopen(r, timeout=2) as f:
        return json.loads(f.read() or b"null")
end = time.monotonic() + 40
while time.monotonic() < end:
    try:
        docs = [get(a, "/api/v1/cluster") for a in addrs]
        if all(len(d["nodes"]) == 3 and all(x["reachable"] for x in d["nodes"]) and d["leader"]
               for d in docs):
            [get(a, "/api/v1/health") for a in addrs]  # 200 on every node: serving
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PYEOF
        echo "bench: the 3-node cluster did not form within 40 s; log tails:" >&2
        for i in 1 2 3; do tail -n 5 "$TMP/cl$i.log" >&2; done
        stop_cluster
        return 1
    fi
    sleep 0.3 # let it settle
}

stop_cluster() {
    local p i
    for p in ${CPIDS[@]+"${CPIDS[@]}"}; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "bench: cluster node (pid $p) died during the run" >&2
            FAILURES=$((FAILURES + 1))
        fi
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in ${CPIDS[@]+"${CPIDS[@]}"}; do
        for i in $(seq 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$p" 2>/dev/null; then
            echo "bench: cluster node (pid $p) did not stop on SIGTERM within 5 s; killing it" >&2
            kill -KILL "$p" 2>/dev/null || true
        fi
        wait "$p" 2>/dev/null || true
    done
    CPIDS=()
    rm -rf "$TMP"/cl[123]
}

# cluster_args SCENARIO WHERE: generator arguments of a cluster scenario, for
# WHERE = single (one broker on 127.0.0.1:BPORT) or cluster (CL_ADDRS:CPORT).
cluster_args() {
    local h1=127.0.0.1 h2=127.0.0.1 port=${BPORT:-0} hosts=""
    if [ "$2" = cluster ]; then
        h1=${CL_ADDRS[0]}
        h2=${CL_ADDRS[1]}
        port=$CPORT
        hosts="--hosts $(
            IFS=,
            echo "${CL_ADDRS[*]}"
        )"
    fi
    case "$1" in
    cl_fanin_qos0) echo "fanin --qos 0 --duration $CL_DURATION --host $h1 --sub-host $h2 --port $port" ;;
    cl_latency) echo "latency --duration $CL_LAT_DURATION --host $h1 --sub-host $h2 --port $port" ;;
    cl_subs) echo "conns --conns $CL_CONNS --sub-burst --host $h1 --port $port $hosts" ;;
    cl_conns) echo "conns --conns $CL_CONNS --host $h1 --port $port $hosts" ;;
    cl_takeover | cl_takeover_persistent)
        echo "takeover --conns $CL_TAKEOVERS --host $h1 --sub-host $h2 --port $port"
        ;;
    cl_fanin_qos1) echo "fanin --qos 1 --duration $CL_DURATION --host $h1 --sub-host $h2 --port $port" ;;
    cl_fanin_qos1_persistent)
        echo "fanin --qos 1 --persistent --duration $CL_DURATION --host $h1 --sub-host $h2 --port $port"
        ;;
    esac
}

# run_cluster_scenario REP SCENARIO: a single Starling (tuned; for
# cl_fanin_qos0 also Mosquitto) and the 3-node cluster, which goes first
# alternating with the repetition like the brokers above. Every run is
# recorded with config "cluster"; the label says where it ran.
run_cluster_scenario() {
    local rep=$1 sc=$2 order="single cluster" where mapped=cl b persist=false
    [ $((rep % 2)) -eq 1 ] || order="cluster single"
    case "$sc" in # the single node's settings: the fanin runs' queues, persistence
    cl_fanin_*) mapped=${sc#cl_} ;;
    cl_*_persistent) mapped=$sc ;;
    esac
    [[ "$sc" != *_persistent ]] || persist=true
    for where in $order; do
        if [ "$where" = cluster ]; then
            if start_cluster "$persist"; then
                # shellcheck disable=SC2046
                run_bench "$rep" cluster "$sc" cluster $(cluster_args "$sc" cluster) \
                    --pid "${CPIDS[0]}"
            else
                FAILURES=$((FAILURES + 1))
            fi
            stop_cluster
            continue
        fi
        for b in starling $([ "$sc" = cl_fanin_qos0 ] && echo mosquitto); do
            if ! start_broker "$b" "$mapped" tuned; then
                FAILURES=$((FAILURES + 1))
                stop_broker "$b"
                continue
            fi
            # shellcheck disable=SC2046
            run_bench "$rep" "$b" "$sc" cluster $(cluster_args "$sc" single) --pid "$BPID"
            stop_broker "$b"
        done
    done
}

# run_bench REP LABEL ID CONFIG ARGS...: one generator run, its JSON line appended.
run_bench() {
    local rep=$1 label=$2 id=$3 cfg=$4
    shift 4
    local line rc=0
    line=$("$BENCH" "$@" --label "$label" --threads "$THREADS" --mqtt "$MQTT" | tail -n 1) || rc=$?
    if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
        echo "bench: $id against $label ($cfg) produced no result (exit $rc)" >&2
        FAILURES=$((FAILURES + 1))
        return 0
    fi
    [ $rc -eq 0 ] || {
        echo "bench: $id against $label ($cfg) incomplete (exit $rc)" >&2
        FAILURES=$((FAILURES + 1))
    }
    echo "{\"rep\":$rep,\"id\":\"$id\",\"config\":\"$cfg\",${line:1}" >>"$RUNS"
}

scenario_args() {
    case "$1" in
    fanin_qos0) echo "fanin --qos 0 --duration $DURATION" ;;
    fanin_qos1) echo "fanin --qos 1 --duration $DURATION" ;;
    fanin_qos1_persistent) echo "fanin --qos 1 --persistent --duration $DURATION" ;;
    fanout) echo "fanout --duration $DURATION" ;;
    latency) echo "latency --duration $DURATION" ;;
    conns) echo "conns --conns $CONNS" ;;
    conns_sub) echo "conns --conns $CONNS --subscribe" ;;
    indep_qos0) echo "indep --qos 0 --duration $DURATION" ;;
    indep_qos1) echo "indep --qos 1 --duration $DURATION" ;;
    slowsub | slowsub_qos1)
        echo "slowsub --qos $([ "$1" = slowsub ] && echo 0 || echo 1) --duration $DURATION" \
            "--publishers 4 --rate $SLOW_RATE --sub-rate $SLOW_SUB_RATE"
        ;;
    ceiling) echo "ceiling --duration $DURATION" ;;
    tls_fanin) echo "fanin --qos 0 --duration $DURATION --transport tls" ;;
    tls_conns) echo "conns --conns $TLS_CONNS --transport tls" ;;
    ws_fanin) echo "fanin --qos 0 --duration $DURATION --transport ws" ;;
    esac
}

T0=$(date +%s)
echo "bench: ${sel[*]} x $REPS reps x configurations ${cfgs[*]}, ${DURATION}s runs, $CONNS conns," \
    "Starling workers $WORKERS (tuned), generator threads $THREADS, MQTT $MQTT," \
    "tuned queues $QUEUE (fanin: $QOS1_QUEUE), $(nproc) cores" >&2
[ "$CLUSTER" = 0 ] || echo "bench: cluster scenarios: 3 nodes on ${CL_ADDRS[*]}, workers" \
    "$CL_WORKERS each, ${CL_DURATION}s fan-in and ${CL_LAT_DURATION}s latency runs, $CL_CONNS conns," \
    "$CL_TAKEOVERS takeovers" \
    "(BENCH_CLUSTER=0 skips them)" >&2
for rep in $(seq "$REPS"); do
    echo "bench: repetition $rep/$REPS" >&2
    for sc in "${sel[@]}"; do
        # shellcheck disable=SC2207
        args=($(scenario_args "$sc"))
        if [ "$sc" = ceiling ]; then
            run_bench "$rep" generator "$sc" - "${args[@]}"
            continue
        fi
        if [[ "$sc" == cl_* ]]; then
            run_cluster_scenario "$rep" "$sc"
            continue
        fi
        # ABBA: which broker goes first alternates with the repetition, so
        # neither always runs right after the other's heavier scenario
        order="starling mosquitto"
        [ $((rep % 2)) -eq 1 ] || order="mosquitto starling"
        for cfg in "${cfgs[@]}"; do
            case "$sc" in
            tls_* | ws_*) [ "$cfg" = tuned ] || continue ;; # a listener to configure
            esac
            for broker in $order; do
                if ! start_broker "$broker" "$sc" "$cfg"; then
                    FAILURES=$((FAILURES + 1))
                    stop_broker "$broker"
                    continue
                fi
                run_bench "$rep" "$broker" "$sc" "$cfg" "${args[@]}" --host 127.0.0.1 \
                    --port "$XPORT" --pid "$BPID"
                stop_broker "$broker"
            done
        done
    done
done
ELAPSED=$(($(date +%s) - T0))

"$PYTHON" - "$RUNS" "$OUT" "$STAMP" "$ELAPSED" "$REPS" "$DURATION" "$CONNS" "$WORKERS" \
    "$THREADS" "$(nproc)" "$QUEUE" "$QOS1_QUEUE" "$(
        "$MOSQUITTO" -h 2>/dev/null | head -n 1 || true
    )" "${cfgs[*]}" "$SLOW_RATE" "$SLOW_SUB_RATE" "$CL_WORKERS" <<'PYEOF'
import json, statistics, sys

(runs_path, out_path, stamp, elapsed, reps, duration, conns, workers, threads, cores, queue,
 qos1_queue, mosq, cfgs, slow_rate, slow_sub_rate, cl_workers) = sys.argv[1:18]
cfgs = cfgs.split()
runs = [json.loads(l) for l in open(runs_path) if l.strip()]

def med(id_, broker, key, cfg):
    v = [r[key] for r in runs if r["id"] == id_ and r["broker"] == broker
         and r.get("config") in (cfg, "-") and isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None

# (scenario id, metric key, label, better: "higher", "lower" or "info", scale)
METRICS = [
    ("fanin_qos0", "msgs_per_s", "fanin QoS 0 msg/s", "higher"),
    ("fanin_qos0", "loss_pct", "fanin QoS 0 loss %", "lower"),
    ("fanin_qos1", "msgs_per_s", "fanin QoS 1 msg/s", "higher"),
    ("fanin_qos1", "loss", "fanin QoS 1 lost msgs (must be 0)", "lower"),
    ("fanin_qos1_persistent", "msgs_per_s", "fanin QoS 1 persistent msg/s (*)", "higher"),
    ("fanin_qos1_persistent", "loss", "fanin QoS 1 persistent lost msgs (must be 0)", "lower"),
    ("fanout", "deliveries_per_s", "fanout deliveries/s", "higher"),
    ("latency", "p50_us", "latency p50 us", "lower"),
    ("latency", "p99_us", "latency p99 us", "lower"),
    ("latency", "p999_us", "latency p99.9 us", "lower"),
    ("latency", "max_us", "latency max us", "lower"),
    ("conns", "connects_per_s", "conns connects/s", "higher"),
    ("conns", "bytes_per_conn", "conns bytes/conn (RSS)", "lower"),
    ("conns", "listen_overflows", "conns SYNs dropped (backlog full)", "lower"),
    ("conns_sub", "connects_per_s", "conns+subscribe connects/s", "higher"),
    ("conns_sub", "bytes_per_conn", "conns+subscribe bytes/conn (RSS)", "lower"),
    ("indep_qos0", "delivered_per_s", "indep QoS 0 delivered msg/s", "higher"),
    ("indep_qos0", "dropped_pct", "indep QoS 0 dropped %", "lower"),
    ("indep_qos1", "delivered_per_s", "indep QoS 1 delivered msg/s", "higher"),
    ("indep_qos1", "acked_lost", "indep QoS 1 acked-but-lost msgs (must be 0)", "lower"),
    ("slowsub", "delivered_per_s", "slowsub delivered msg/s", "higher"),
    ("slowsub", "publish_per_s", "slowsub publishers msg/s", "info"),
    ("slowsub", "dropped_pct", "slowsub dropped %", "lower"),
    ("slowsub", "rss_end_kb", "slowsub broker RSS at end MB", "lower"),
    ("slowsub_qos1", "delivered_per_s", "slowsub QoS 1 delivered msg/s", "higher"),
    ("slowsub_qos1", "publish_per_s", "slowsub QoS 1 publishers msg/s", "info"),
    ("slowsub_qos1", "dropped_pct", "slowsub QoS 1 dropped %", "lower"),
    ("slowsub_qos1", "acked_lost", "slowsub QoS 1 acked-but-lost msgs (must be 0)", "lower"),
    ("slowsub_qos1", "rss_end_kb", "slowsub QoS 1 broker RSS at end MB", "lower"),
    ("tls_fanin", "msgs_per_s", "TLS fanin QoS 0 msg/s", "higher"),
    ("tls_fanin", "loss_pct", "TLS fanin QoS 0 loss %", "lower"),
    ("tls_conns", "connects_per_s", "TLS connects/s", "higher"),
    ("ws_fanin", "msgs_per_s", "WebSocket fanin QoS 0 msg/s", "higher"),
    ("ws_fanin", "loss_pct", "WebSocket fanin QoS 0 loss %", "lower"),
]
IDS = ["fanin_qos0", "fanin_qos1", "fanin_qos1_persistent", "fanout", "latency", "conns",
       "conns_sub", "indep_qos0", "indep_qos1", "slowsub", "slowsub_qos1", "tls_fanin",
       "tls_conns", "ws_fanin"]
# the broker's peak memory in every scenario
METRICS += [(i, "rss_peak_kb", f"{i} broker peak RSS MB", "lower") for i in IDS]

def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v else "0"

def mb(key, v):
    return v / 1024 if v is not None and key.endswith("_kb") else v

def verdict(s, m, better):
    if better == "info" or s is None or m is None:
        return ""
    if s == m:
        return "same"
    return "Starling" if (s > m) == (better == "higher") else "Mosquitto"

rows, summary = [], []
def add_row(label, better, cells):
    """cells: {cfg: (starling, mosquitto, ratio text, winner)}"""
    row = [label, better]
    for c in cfgs:
        row += list(cells.get(c, ("-", "-", "", "")))
    rows.append(row)

for id_, key, label, better in METRICS:
    cells, any_v = {}, False
    for c in cfgs:
        s, m = mb(key, med(id_, "starling", key, c)), mb(key, med(id_, "mosquitto", key, c))
        if s is None and m is None:
            continue
        any_v = True
        ratio = s / m if s is not None and m else None
        w = verdict(s, m, better)
        cells[c] = (fmt(s), fmt(m), f"{ratio:.2f}" if ratio is not None else "-", w)
        summary.append({"config": c, "scenario": id_, "metric": key, "better": better,
                        "starling": s, "mosquitto": m, "ratio": ratio, "winner": w})
    if any_v:
        add_row(label, better, cells)

# what a persistent subscriber costs each broker, next to the fanin rows
cells = {}
for c in cfgs:
    s1, m1 = med("fanin_qos1", "starling", "msgs_per_s", c), med("fanin_qos1", "mosquitto", "msgs_per_s", c)
    sp, mp = (med("fanin_qos1_persistent", "starling", "msgs_per_s", c),
              med("fanin_qos1_persistent", "mosquitto", "msgs_per_s", c))
    if s1 and m1 and sp is not None and mp is not None:
        cells[c] = (f"{sp / s1:.2f}", f"{mp / m1:.2f}", "", "")
        summary.append({"config": c, "scenario": "fanin_qos1_persistent",
                        "metric": "ratio_to_fanin_qos1", "better": "info",
                        "starling": sp / s1, "mosquitto": mp / m1})
if cells:
    at = next(i for i, r in enumerate(rows) if r[0].startswith("fanin QoS 1 persistent lost")) + 1
    n = len(rows)
    add_row("fanin QoS 1 persistent / non-persistent", "info", cells)
    rows.insert(at, rows.pop(n))

for id_ in IDS:
    cells = {}
    for c in cfgs:
        s, m = med(id_, "starling", "broker_cpu", c), med(id_, "mosquitto", "broker_cpu", c)
        gs, gm = med(id_, "starling", "bench_cpu", c), med(id_, "mosquitto", "bench_cpu", c)
        if s is None and m is None:
            continue
        cells[c] = (fmt(s), fmt(m), f"{s / m:.2f}" if s is not None and m else "-",
                    f"gen {fmt(gs)}/{fmt(gm)}")
        summary.append({"config": c, "scenario": id_, "metric": "broker_cpu", "better": "info",
                        "starling": s, "mosquitto": m, "bench_cpu_starling": gs,
                        "bench_cpu_mosquitto": gm})
    if cells:
        add_row(f"{id_} broker CPU (cores)", "info", cells)
cells = {}
for c in cfgs:
    for id_ in IDS:
        s, m = med(id_, "starling", "steal_pct", c), med(id_, "mosquitto", "steal_pct", c)
        if s is None and m is None:
            continue
        if id_ == "latency":
            # a hypervisor's steal time shows up directly in the latency tail
            cells[c] = (fmt(s), fmt(m), "", "")
        summary.append({"config": c, "scenario": id_, "metric": "steal_pct", "better": "info",
                        "starling": s, "mosquitto": m})
if cells:
    add_row("latency host steal % (**)", "info", cells)
ceil = med("ceiling", "generator", "msgs_per_s", "-")
if ceil is not None:
    row = ["generator ceiling msg/s", "info", fmt(ceil), "", "",
           f"gen cpu {fmt(med('ceiling', 'generator', 'bench_cpu', '-'))}"]
    rows.append(row + [""] * (len(rows[0]) - len(row) if rows else 0))
    summary.append({"config": "-", "scenario": "ceiling", "metric": "msgs_per_s",
                    "better": "info", "generator": ceil})

head = ["metric (median)", "better"]
for c in cfgs:
    head += [f"Starling {c}", f"Mosquitto {c}", f"S/M {c}", f"winner {c}"]
rows = [r + [""] * (len(head) - len(r)) for r in rows]
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
def cell(i, c):
    # label, better and winner columns left-aligned, numbers right-aligned
    return str(c).ljust(w[i]) if i < 2 or (i - 2) % 4 == 3 else str(c).rjust(w[i])
line = lambda r: "| " + " | ".join(cell(i, c) for i, c in enumerate(r)) + " |"
print()
print(f"Starling vs {mosq.strip() or 'Mosquitto'}: medians of {reps} runs, {duration} s each, "
      f"{cores} cores shared by broker and generator; "
      f"MQTT {next((r['mqtt'] for r in runs if r.get('mqtt')), '3.1.1')}")
if "tuned" in cfgs:
    print(f"tuned: Starling workers {workers}, max_queued_messages {queue} (fanin runs: "
          f"{qos1_queue}), max_inflight_messages 1000, persistence false (bench/README.md)")
if "defaults" in cfgs:
    print("defaults: Starling with no configuration file (-p PORT, STARLING_DATA_DIR, "
          "STARLING_BIND_ADDRESS=127.0.0.1); Mosquitto with 'listener PORT 127.0.0.1' and "
          "'allow_anonymous true' only")
if any(r["id"].startswith("slowsub") for r in runs):
    print(f"slowsub: 4 publishers at {slow_rate} msg/s each (0 = unpaced), one subscriber "
          f"reading {slow_sub_rate} msg/s during the window, then all it can (drain)")
print("S/M = Starling / Mosquitto; 'better' says which direction wins (latency, loss and "
      "memory: lower is better)")
if rows:
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))

# The cluster scenarios: one Starling against the 3-node cluster, same
# repetitions, with issue 9's targets.
def cmed(id_, where, key):
    v = [r[key] for r in runs if r["id"] == id_ and r["broker"] == where
         and isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None

CL = [
    # (id, key, label, better, target: (kind, factor) or None)
    ("cl_fanin_qos0", "msgs_per_s", "fan-in QoS 0 msg/s (pubs node 1, sub node 2)", "higher",
     ("x_single_ge", 0.5)),
    ("cl_fanin_qos0", "msgs_per_s", "  same, cluster / Mosquitto single", "higher",
     ("x_mosq_ge", 3.0)),
    ("cl_fanin_qos0", "loss", "fan-in QoS 0 lost msgs", "lower", None),
    ("cl_latency", "p50_us", "latency p50 us (pub node 1, sub node 2)", "lower", None),
    ("cl_latency", "p99_us", "latency p99 us", "lower", ("x_single_le", 2.0)),
    ("cl_latency", "p999_us", "latency p99.9 us", "lower", None),
    ("cl_subs", "subacks_per_s", "subscriptions committed/s (SUBACKs/s)", "higher",
     ("abs_ge", 10000)),
    ("cl_subs", "connects_per_s", "  its connects/s (before subscribing)", "higher", None),
    ("cl_conns", "connects_per_s", "connects/s (ids claimed through Raft)", "higher", None),
    ("cl_takeover", "p50_us", "takeover CONNECT->CONNACK p50 us", "lower", None),
    ("cl_takeover", "p99_us", "takeover CONNECT->CONNACK p99 us", "lower", None),
    ("cl_takeover", "takeovers_per_s", "takeovers/s", "higher", None),
    # issue 10: what the cross-node guarantees cost. Without persistence a
    # forward is sent at most once and a claim answers at its commit; with it
    # (sync always) the origin's PUBACK waits for the outbox row, the
    # destination acknowledges a forward once stored, and a takeover's CONNACK
    # waits for the claim's store write (docs/cluster.md)
    ("cl_fanin_qos1", "msgs_per_s", "fan-in QoS 1 msg/s, persistence false", "higher", None),
    ("cl_fanin_qos1", "loss", "  its lost msgs (at most once without a store)", "lower", None),
    ("cl_fanin_qos1_persistent", "msgs_per_s",
     "fan-in QoS 1 msg/s, persistent sub, sync always", "higher", None),
    ("cl_fanin_qos1_persistent", "loss", "  its lost msgs (must be 0)", "lower", None),
    ("cl_takeover_persistent", "p50_us", "takeover p50 us, persistence true", "lower", None),
    ("cl_takeover_persistent", "p99_us", "takeover p99 us, persistence true", "lower", None),
    ("cl_takeover_persistent", "takeovers_per_s", "takeovers/s, persistence true", "higher",
     None),
]
crow = []
for id_, key, label, better, target in CL:
    one, clu = cmed(id_, "starling", key), cmed(id_, "cluster", key)
    if one is None and clu is None:
        continue
    base, ref = one, "single"
    if target and target[0] == "x_mosq_ge":
        base, ref = cmed(id_, "mosquitto", key), "Mosquitto"
        one = base
    ratio = clu / base if clu is not None and base else None
    tgt, met = "", ""
    if target:
        kind, f = target
        if kind == "abs_ge":
            tgt = f">= {f:,.0f}"
            ok = clu is not None and clu >= f
        elif kind.endswith("_ge"):
            tgt = f">= {f:g}x {ref}"
            ok = ratio is not None and ratio >= f
        else:
            tgt = f"<= {f:g}x {ref}"
            ok = ratio is not None and ratio <= f
        met = "yes" if ok else "NO"
        summary.append({"config": "cluster", "scenario": id_, "metric": key, "target": tgt,
                        "met": ok, "single": base, "cluster": clu, "ratio": ratio})
    else:
        summary.append({"config": "cluster", "scenario": id_, "metric": key, "better": better,
                        "single": one, "cluster": clu, "ratio": ratio})
    crow.append([label, better, fmt(one), fmt(clu), f"{ratio:.2f}" if ratio is not None else "-",
                 tgt, met])
# the guarantees' cost on each side: persistent / non-persistent
for id_, base_id, key, label in [
        ("cl_fanin_qos1_persistent", "cl_fanin_qos1", "msgs_per_s",
         "fan-in QoS 1, persistent / persistence false"),
        ("cl_takeover_persistent", "cl_takeover", "p50_us",
         "takeover p50, persistence true / false")]:
    r = []
    for where in ("starling", "cluster"):
        p, q = cmed(id_, where, key), cmed(base_id, where, key)
        r.append(p / q if p is not None and q else None)
    if any(x is not None for x in r):
        crow.append([label, "info"] + [f"{x:.2f}" if x is not None else "-" for x in r] +
                    ["", "", ""])
        summary.append({"config": "cluster", "scenario": id_, "metric": key + "_ratio_to_" + base_id,
                        "better": "info", "single": r[0], "cluster": r[1]})
if crow:
    ch = ["cluster metric (median)", "better", "single node", "3-node cluster", "cluster/single",
          "target (issue 9)", "met"]
    cw = [max(len(str(r[i])) for r in crow + [ch]) for i in range(len(ch))]
    cl_line = lambda r: "| " + " | ".join(
        str(c).ljust(cw[i]) if i in (0, 1, 5, 6) else str(c).rjust(cw[i])
        for i, c in enumerate(r)) + " |"
    print()
    print(f"Starling single node vs a 3-node cluster on 127.0.0.31-33 (nodes with "
          f"{cl_workers} worker(s) each, the single node as tuned above; 'single node' is "
          f"Mosquitto in the '/ Mosquitto' row)")
    print(cl_line(ch))
    print("|" + "|".join("-" * (x + 2) for x in cw) + "|")
    for r in crow:
        print(cl_line(r))
incomplete = [f"{r['id']}/{r['broker']}/{r.get('config')}/rep{r['rep']}" for r in runs
              if not r.get("complete")]
if incomplete:
    print("incomplete runs: " + ", ".join(incomplete))
for r in runs:
    lost = r.get("acked_lost", r.get("loss") if r["id"].startswith("fanin_qos1") or
                 r["id"] == "cl_fanin_qos1_persistent" else None)
    if lost:
        print(f"WARNING: {r['broker']} ({r.get('config')}) acknowledged {lost} QoS 1 messages "
              f"that never reached the subscriber ({r['id']}, rep {r['rep']})")
if any(r["id"] == "fanin_qos1_persistent" for r in runs):
    print("(*) persistent subscriber (clean session 0): Starling stores every message with "
          "sync always (fsync before PUBACK); Mosquitto keeps it in memory and writes its "
          "database only periodically and at exit (no fsync per message; with its defaults "
          "it does not persist at all)")
if any(r["id"] == "latency" and r.get("steal_pct") is not None for r in runs):
    print("(**) CPU time the hypervisor gave to other guests during the run (the steal column "
          "of /proc/stat), in % of all cores: a run with more steal has a longer latency tail "
          "whichever broker it measures; every run's value is in the JSON file")
print(f"total time {elapsed} s; results: {out_path}")

json.dump({"timestamp": stamp, "elapsed_s": int(elapsed), "reps": int(reps),
           "duration_s": float(duration), "conns": int(conns), "starling_workers": int(workers),
           "generator_threads": int(threads), "cores": int(cores), "configs": cfgs,
           "max_queued_messages": int(queue), "qos1_max_queued_messages": int(qos1_queue),
           "slowsub_publisher_rate": int(slow_rate), "slowsub_subscriber_rate": int(slow_sub_rate),
           "mosquitto": mosq.strip(), "summary": summary, "runs": runs},
          open(out_path, "w"), indent=1)
PYEOF

if [ "$FAILURES" -gt 0 ]; then
    echo "bench: $FAILURES run(s) failed or were incomplete (see above)" >&2
    exit 1
fi
