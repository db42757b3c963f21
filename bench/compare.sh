#!/usr/bin/env bash
# Compare machat with Redis pub/sub and NATS on the same load, using machat-bench.
#
#   bench/compare.sh              # all scenarios: F1 F2 F3 I1
#   bench/compare.sh F1 F2        # some of them
#   RUNS=5 TARGETS="machat nats" bench/compare.sh F3
#   TARGETS="machat-nohist machat" bench/compare.sh F1   # history off vs on (the default)
#   TARGETS="machat machat-ws" bench/compare.sh F1 I1    # WebSocket clients beside TCP ones
#   TARGETS="machat-ws nchan" bench/compare.sh F1 F3     # machat over WebSocket and nginx + nchan
#   TARGETS="machat-json machat-ws" bench/compare.sh F1  # the same JSON events, TCP lines vs frames
#   TARGETS="machat machat-cluster1 machat-cluster2" bench/compare.sh F1 F2 F3   # cluster mode
#
# Every run gets a fresh server on a free loopback port, started here and stopped after the
# run; runs go round-robin over the targets (machat, redis, nats), RUNS times.
#
# machat targets: `machat` (clients over TCP), `machat-nohist` (the same with --history off),
# `machat-json` (clients over TCP in the JSON format: the events WebSocket clients get, as lines)
# and `machat-ws` (clients over WebSocket, ws://127.0.0.1:HTTPPORT/ws). All of them start the same
# server, with the web side on a second free port (--http 127.0.0.1:HTTPPORT, instead of the
# default localhost:8080 that another server on this machine may hold), so they differ only in
# how the bench connects. Scenario flags below apply to all of them.
#
# Cluster targets (`--nats`, NATS JetStream): `machat-cluster1` is one node on a fresh
# `nats-server -js` (free loopback port, fresh store dir under target/bench/); `machat-cluster2`
# is two nodes on one such nats-server, with the senders on node 1 and the readers of every room
# spread over both (`machat-bench fanout --reader-addr NODE1 --reader-addr NODE2`), so the
# readers on node 2 measure cross-node latency. The bench gets every process's pid (nodes, then
# nats-server) and reports their sum as the server's CPU and peak RSS, and each apart. I1 with a
# cluster target opens its connections on node 1 only. After each run every process the run
# started is stopped (the nodes first, then nats-server) and its data dirs are removed.
#
# Raw JSON lines go to target/bench/raw-<date>.jsonl, server logs to target/bench/logs/, and a
# table of medians is printed at the end (and saved as target/bench/medians-<date>.md).
#
# Scenarios:
#   F1  throughput: 1 room, 100 clients, 10 senders x 10,000 messages, as fast as possible
#       (10M deliveries). machat runs with --max-line-rate 0 (no per-connection rate limit).
#   F2  latency: 100 rooms x 10 clients, 1 sender per room, 2,000 msgs/s in total, 20 s.
#       machat runs with its default flags.
#   F3  big room: 1 room of 1,000 clients, 1 sender, 200 msgs/s, 20 s.
#       machat runs with --max-line-rate 0.
#   I1  19,000 idle connections, 10 per room (Redis: a subscribed connection; NATS: a
#       connection with one SUB). machat runs with its default flags.
#
# Environment: RUNS (3), TARGETS ("machat redis nats"; also machat-nohist, machat-json, machat-ws, nchan,
# machat-cluster1, machat-cluster2), BENCH_THREADS (1, generator threads),
# DURATION (override F2/F3 seconds, for quick checks), F1_MESSAGES (override 10000),
# CLUSTER_F1_MESSAGES (F1 messages per sender for the cluster targets; default F1_MESSAGES),
# I1_CONNS (override 19000), SKIP_BUILD=1 (use the binaries as they are).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${RUNS:-3}"
TARGETS="${TARGETS:-machat redis nats}"
BENCH_THREADS="${BENCH_THREADS:-1}"
SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
    SCENARIOS=(F1 F2 F3 I1)
fi
for s in "${SCENARIOS[@]}"; do
    case "$s" in
        F1 | F2 | F3 | I1) ;;
        *)
            echo "unknown scenario: $s (use F1 F2 F3 I1)" >&2
            exit 2
            ;;
    esac
done
export PATH="$PATH:/usr/sbin:/sbin"

# --- tools -----------------------------------------------------------------------------------
need=()
case " $TARGETS " in *" redis "*) command -v redis-server >/dev/null || need+=(redis-server) ;; esac
case " $TARGETS " in *" nats "* | *" machat-cluster"*) command -v nats-server >/dev/null || need+=(nats-server) ;; esac
case " $TARGETS " in *" nchan "*) [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(nginx-light libnginx-mod-nchan) ;; esac
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${need[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y "${need[@]}" >/dev/null
    }
fi
command -v python3 >/dev/null || {
    echo "python3 is needed for ports and medians" >&2
    exit 1
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    case " $TARGETS " in
        *" machat "* | *" machat-nohist "* | *" machat-ws "* | *" machat-json "* | *" machat-cluster"*) cargo build --release --workspace ;;
        *) cargo build --release -p machat-bench ;;
    esac
fi
BENCH="$ROOT/target/release/machat-bench"
# MACHAT_BIN runs another build of the server (a before/after comparison in one session).
MACHAT="${MACHAT_BIN:-$ROOT/target/release/machat}"

# Servers and the bench both need many descriptors for I1.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/target/bench"
mkdir -p "$OUT/logs"
RAW="$OUT/raw-$STAMP.jsonl"
: >"$RAW"

# --- servers ---------------------------------------------------------------------------------
# A target is one or more processes: SERVER_PIDS holds them all in the order the bench reports
# them (machat node 1, node 2, then nats-server for the cluster targets), SERVER_PID the first
# (the one the bench's clients connect to), DATA_DIRS what they write, removed after each run.
SERVER_PID=""
SERVER_PIDS=()
DATA_DIRS=()
# Cluster targets: the chat ports of the nodes (node 1 first).
NODE_PORTS=()

stop_server() {
    local pid
    # machat nodes before nats-server: a node's clean stop publishes its members' goodbyes and
    # gives back their names through NATS.
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ ${#DATA_DIRS[@]} -gt 0 ]; then
        rm -rf "${DATA_DIRS[@]}"
    fi
    SERVER_PID=""
    SERVER_PIDS=()
    DATA_DIRS=()
    NODE_PORTS=()
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A free port that none of the ports given is.
other_free_port() {
    local p
    p=$(free_port)
    while [[ " $* " == *" $p "* ]]; do p=$(free_port); done
    echo "$p"
}

port_listening() {
    if command -v ss >/dev/null; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# wait_listening NAME PID LOG PORT [PORT...]: until the process listens on every port.
wait_listening() {
    local name=$1 pid=$2 log=$3 port all
    shift 3
    for _ in $(seq 1 200); do
        all=1
        for port in "$@"; do
            port_listening "$port" || all=0
        done
        [ $all = 1 ] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server $name exited at start; log $log:" >&2
            tail -5 "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "server $name did not listen on $* within 10 s" >&2
    return 1
}

# start_machat SCENARIO PORT HTTP_PORT LOG [FLAGS...]: one machat process with a fresh data dir.
start_machat() {
    local scenario=$1 port=$2 http_port=$3 log=$4
    shift 4
    # Defaults otherwise: --max-per-ip 4096 (I1's 19,000 connections come from 32 source
    # addresses, ~600 each) and --max-connections = the descriptor limit (raised to the hard
    # limit, 20,000 here) minus 64; both count TCP and WebSocket clients alike.
    local extra=(--data-dir "$OUT/data-$port" --http "127.0.0.1:$http_port")
    rm -rf "$OUT/data-$port"
    DATA_DIRS+=("$OUT/data-$port")
    case "$scenario" in F1 | F3) extra+=(--max-line-rate 0) ;; esac
    "$MACHAT" -a "127.0.0.1:$port" "${extra[@]}" "$@" >"$log" 2>&1 &
    local pid=$!
    SERVER_PIDS+=("$pid")
    wait_listening machat "$pid" "$log" "$port" "$http_port"
}

# start_server TARGET SCENARIO PORT LOG [HTTP_PORT]: sets SERVER_PID, SERVER_PIDS, NODE_PORTS
start_server() {
    local target=$1 scenario=$2 port=$3 log=$4 http_port=${5:-}
    case "$target" in
        machat | machat-nohist | machat-ws | machat-json)
            # A fresh history database per run (machat-nohist: history off, for the on/off ratio).
            local flags=()
            [ "$target" = machat-nohist ] && flags+=(--history off)
            start_machat "$scenario" "$port" "$http_port" "$log" "${flags[@]}" || return 1
            ;;
        machat-cluster1 | machat-cluster2)
            # A fresh nats-server with JetStream (its own store dir) and one or two nodes on it;
            # history lives in JetStream (the nodes' --history and data dirs go unused).
            local nats_port nats_dir="$OUT/nats-$port" n=1 node_port node_http
            nats_port=$(other_free_port "$port" "$http_port")
            rm -rf "$nats_dir"
            mkdir -p "$nats_dir"
            nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$nats_dir" >"${log%.log}-nats.log" 2>&1 &
            local nats_pid=$!
            DATA_DIRS+=("$nats_dir")
            wait_listening nats-server "$nats_pid" "${log%.log}-nats.log" "$nats_port" || {
                SERVER_PIDS+=("$nats_pid")
                return 1
            }
            [ "$target" = machat-cluster2 ] && n=2
            NODE_PORTS=("$port")
            start_machat "$scenario" "$port" "$http_port" "$log" --nats "nats://127.0.0.1:$nats_port" || {
                SERVER_PIDS+=("$nats_pid")
                return 1
            }
            if [ $n = 2 ]; then
                node_port=$(other_free_port "$port" "$http_port" "$nats_port")
                node_http=$(other_free_port "$port" "$http_port" "$nats_port" "$node_port")
                NODE_PORTS+=("$node_port")
                start_machat "$scenario" "$node_port" "$node_http" "${log%.log}-node2.log" \
                    --nats "nats://127.0.0.1:$nats_port" || {
                    SERVER_PIDS+=("$nats_pid")
                    return 1
                }
            fi
            # nats-server last: the bench reports the processes in this order, and it is
            # stopped after the nodes.
            SERVER_PIDS+=("$nats_pid")
            ;;
        redis)
            # protected-mode off: clients come from 127.0.0.2.. (spread source addresses), which
            # Redis would otherwise refuse; it still listens on 127.0.0.1 only.
            redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --protected-mode no --maxclients 19500 >"$log" 2>&1 &
            SERVER_PIDS+=($!)
            wait_listening redis "$!" "$log" "$port" || return 1
            ;;
        nats)
            nats-server -a 127.0.0.1 -p "$port" >"$log" 2>&1 &
            SERVER_PIDS+=($!)
            wait_listening nats "$!" "$log" "$port" || return 1
            ;;
        nchan)
            # nginx + nchan, a pub/sub location over WebSocket: a frame sent is published to the
            # room's channel and every member gets it (no message kept: machat-nohist's peer).
            # Two workers, one per core, as machat runs a runtime per core.
            local dir="$OUT/nchan-$port"
            rm -rf "$dir"
            mkdir -p "$dir"
            DATA_DIRS+=("$dir")
            cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 2;
worker_rlimit_nofile 40000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  nchan_shared_memory_size 256M;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location ~ ^/room/(\w+)\$ {
      nchan_pubsub websocket;
      nchan_channel_id \$1;
      nchan_store_messages off;
    }
  }
}
CONF
            nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' >"$log" 2>&1 &
            local master=$!
            SERVER_PIDS+=("$master")
            wait_listening nchan "$master" "$log" "$port" || return 1
            # The workers do the work: the bench adds up every process's CPU and RSS.
            local w
            for w in $(pgrep -P "$master"); do SERVER_PIDS+=("$w"); done
            ;;
    esac
    SERVER_PID=${SERVER_PIDS[0]}
}

scenario_args() {
    local d="${DURATION:-20}"
    case "$1" in
        F1) echo "fanout --clients 100 --rooms 1 --senders 10 --messages $2 --rate 0" ;;
        F2) echo "fanout --clients 1000 --rooms 100 --senders 1 --rate 2000 --duration $d" ;;
        F3) echo "fanout --clients 1000 --rooms 1 --senders 1 --rate 200 --duration $d" ;;
        I1) echo "idle --conns ${I1_CONNS:-19000} --per-room 10" ;;
    esac
}

# --- runs ------------------------------------------------------------------------------------
echo "machat-bench compare: scenarios ${SCENARIOS[*]}, targets $TARGETS, $RUNS run(s) each" >&2
echo "raw results: $RAW" >&2
for scenario in "${SCENARIOS[@]}"; do
    for run in $(seq 1 "$RUNS"); do
        for target in $TARGETS; do
            port=$(free_port)
            http_port=""
            bench_port=$port
            case "$target" in
                machat | machat-nohist | machat-ws | machat-json | machat-cluster1 | machat-cluster2)
                    http_port=$(other_free_port "$port")
                    # machat-ws: the bench connects to ws://127.0.0.1:HTTPPORT/ws
                    [ "$target" = machat-ws ] && bench_port=$http_port
                    ;;
            esac
            log="$OUT/logs/$STAMP-$scenario-$target-$run.log"
            if ! start_server "$target" "$scenario" "$port" "$log" "$http_port"; then
                printf '{"label":"%s","target":"%s","run":%s,"error":"server did not start"}\n' \
                    "$scenario" "$target" "$run" >>"$RAW"
                stop_server
                continue
            fi
            f1_messages=${F1_MESSAGES:-10000}
            bench_target=${target%-nohist}
            pid_args=()
            for pid in "${SERVER_PIDS[@]}"; do pid_args+=(--server-pid "$pid"); done
            case "$target" in
                machat-cluster*)
                    bench_target=machat
                    f1_messages=${CLUSTER_F1_MESSAGES:-$f1_messages}
                    ;;
            esac
            args=$(scenario_args "$scenario" "$f1_messages")
            # machat-cluster2: senders on node 1 (--addr), readers spread over both nodes.
            if [ "$target" = machat-cluster2 ] && [ "$scenario" != I1 ]; then
                for p in "${NODE_PORTS[@]}"; do args+=" --reader-addr 127.0.0.1:$p"; done
            fi
            echo "== $scenario run $run/$RUNS: $target (port $bench_port, pids ${SERVER_PIDS[*]})" >&2
            set +e
            # shellcheck disable=SC2086
            line=$("$BENCH" --target "$bench_target" --addr "127.0.0.1:$bench_port" "${pid_args[@]}" \
                --threads "$BENCH_THREADS" --json --label "$scenario" $args 2>"$OUT/last-error.txt")
            rc=$?
            set -e
            if [ $rc -eq 0 ] && [ -n "$line" ]; then
                echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); r["run"] = int(sys.argv[1]); r["target"] = sys.argv[2]
# Cluster targets: the processes are the nodes, then nats-server (the order of --server-pid).
procs = r.get("servers") or []
if sys.argv[2].startswith("machat-cluster") and len(procs) >= 2:
    nodes, nats = procs[:-1], procs[-1]
    r["machat_cpu_s"] = sum(p["cpu_s"] for p in nodes)
    r["machat_peak_rss_kib"] = sum(p["peak_rss_kib"] for p in nodes)
    r["nats_cpu_s"] = nats["cpu_s"]
    r["nats_peak_rss_kib"] = nats["peak_rss_kib"]
# Readers on several nodes: the node of the senders and the others (cross-node), flat for the medians.
if r.get("nodes"):
    for k in ("p50_us", "p99_us", "max_us"):
        r["same_node_" + k] = r["nodes"][0]["latency"][k]
        r["cross_node_" + k] = r["cross_node"][k]
print(json.dumps(r))
' "$run" "$target" >>"$RAW"
                echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
if r["scenario"] == "fanout":
    cpu = r["server_cpu_s"]
    print("   delivered %.0f/s  lost %d  p50 %d us  p99 %d us  peak RSS %s KiB  server CPU %s s"
          % (r["delivered_per_s"], r["lost"], r["p50_us"], r["p99_us"], r["server_peak_rss_kib"],
             "-" if cpu is None else "%.2f" % cpu), file=sys.stderr)
    if r.get("cross_node"):
        c = r["cross_node"]
        print("   cross-node: %d deliveries  p50 %d us  p99 %d us  max %d us"
              % (c["deliveries"], c["p50_us"], c["p99_us"], c["max_us"]), file=sys.stderr)
else:
    print("   opened %d/%d in %.2f s  RSS/conn %s B  peak RSS %s KiB"
          % (r["opened"], r["conns"], r["open_secs"], r["rss_per_conn_bytes"] and round(r["rss_per_conn_bytes"]),
             r["server_peak_rss_kib"]), file=sys.stderr)
'
            else
                err=$(tr -d '"\\' <"$OUT/last-error.txt" | tr '\n' ' ')
                echo "   FAILED (exit $rc): $err" >&2
                printf '{"label":"%s","target":"%s","run":%s,"error":"%s"}\n' \
                    "$scenario" "$target" "$run" "$err" >>"$RAW"
            fi
            stop_server
        done
    done
done

# --- medians ---------------------------------------------------------------------------------
MED="$OUT/medians-$STAMP.md"
python3 - "$RAW" "$TARGETS" >"$MED" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
targets = sys.argv[2].split()
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"
order = []
for r in rows:
    if r["label"] not in order:
        order.append(r["label"])
for label in order:
    mine = [r for r in rows if r["label"] == label]
    ok = [r for r in mine if "error" not in r]
    if not ok:
        print(f"\n### {label}: all runs failed\n")
        continue
    idle = ok[0]["scenario"] == "idle"
    print(f"\n### {label}\n")
    if idle:
        cols = [("open_secs", "open s", 2), ("open_p99_us", "open p99 us", 0),
                ("rss_per_conn_bytes", "RSS/conn B", 0), ("server_rss_after_kib", "RSS after KiB", 0),
                ("server_peak_rss_kib", "peak RSS KiB", 0), ("server_cpu_s", "server CPU s", 2),
                ("failed", "failed", 0)]
    else:
        cols = [("delivered_per_s", "delivered/s", 0), ("offered_per_s", "offered/s", 0),
                ("lost", "lost", 0), ("p50_us", "p50 us", 0), ("p99_us", "p99 us", 0),
                ("p999_us", "p99.9 us", 0), ("max_us", "max us", 0),
                ("server_peak_rss_kib", "peak RSS KiB", 0), ("server_cpu_s", "server CPU s", 2),
                ("gen_cpu_s", "bench CPU s", 2), ("send_lag_p99_us", "send lag p99 us", 0)]
    print("| target | runs ok | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for t in targets:
        rs = [r for r in ok if r["target"] == t]
        failed = len([r for r in mine if r["target"] == t and "error" in r])
        if not rs and not failed:
            continue
        cells = [fmt(med([r.get(c[0]) for r in rs]), c[2]) for c in cols]
        print(f"| {t} | {len(rs)}/{len(rs) + failed} | " + " | ".join(cells) + " |")
    # WebSocket beside TCP: the ratio of the medians, same run.
    if "machat" in targets and "machat-ws" in targets:
        cells = []
        for c in cols:
            a = med([r.get(c[0]) for r in ok if r["target"] == "machat-ws"])
            b = med([r.get(c[0]) for r in ok if r["target"] == "machat"])
            cells.append(f"{a / b:.2f}" if a is not None and b else "-")
        print("| machat-ws / machat | | " + " | ".join(cells) + " |")
    # Cluster targets beside the embedded server, same run; then what only they have: the CPU
    # and memory of the nodes and of nats-server, and latency by reader node.
    clusters = [t for t in targets if t.startswith("machat-cluster") and any(r["target"] == t for r in ok)]
    if "machat" in targets:
        for t in clusters:
            cells = []
            for c in cols:
                a = med([r.get(c[0]) for r in ok if r["target"] == t])
                b = med([r.get(c[0]) for r in ok if r["target"] == "machat"])
                cells.append(f"{a / b:.2f}" if a is not None and b else "-")
            print(f"| {t} / machat | | " + " | ".join(cells) + " |")
    if clusters and not idle:
        ccols = [("machat_cpu_s", "machat nodes CPU s", 2), ("nats_cpu_s", "nats-server CPU s", 2),
                 ("machat_peak_rss_kib", "machat nodes peak RSS KiB", 0),
                 ("nats_peak_rss_kib", "nats-server peak RSS KiB", 0),
                 ("same_node_p50_us", "senders' node p50 us", 0),
                 ("same_node_p99_us", "senders' node p99 us", 0),
                 ("cross_node_p50_us", "cross-node p50 us", 0),
                 ("cross_node_p99_us", "cross-node p99 us", 0),
                 ("cross_node_max_us", "cross-node max us", 0)]
        print(f"\n{label}, cluster targets (server CPU and peak RSS above are the sums of these "
              "processes; latency by the node the reader is connected to):\n")
        print("| target | " + " | ".join(c[1] for c in ccols) + " |")
        print("|---|" + "---|" * len(ccols))
        for t in clusters:
            rs = [r for r in ok if r["target"] == t]
            cells = [fmt(med([r.get(c[0]) for r in rs]), c[2]) for c in ccols]
            print(f"| {t} | " + " | ".join(cells) + " |")
PY
cat "$MED"
echo >&2
echo "raw: $RAW" >&2
echo "medians: $MED" >&2
