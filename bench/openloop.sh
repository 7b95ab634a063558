#!/usr/bin/env bash
# Open-loop writers against a fresh 3-node cluster of each given build, one after the other:
#
#   bash bench/openloop.sh THREADS THINK_MS BIN...      # e.g. 48 5 old/raftkv target/release/raftkv
#
# For each BIN: starts a cluster (ports 127.0.0.1:25001-25003, as bench/ab.sh), runs the load
# generator against the leader (`loadgen run --op write --think-ms`: THREADS writers, each over its
# own keep-alive connection, pausing an exponential THINK_MS between writes; 2 s warm-up, 10 s
# measured), prints one line (writes, writes/s, write latency p50/p90/p99/p99.9 in µs, pauses
# excluded), stops it. Needs the built load generator. Every process started here is stopped by
# PID on exit; data dirs removed.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
THREADS="$1" THINK_MS="$2"; shift 2
RK_PORTS_LIST="25001 25002 25003" NODES=3 RAFTKV_ARGS=""
LOADGEN="$BENCH/loadgen/target/release/loadgen"
DURATION=10 WARMUP=2
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"   # log, die, the cleanup trap, start_raftkv, stop_cluster, pidlist, field
need_loadgen
check_ports_free "${RK_PORTS[@]}"
WORK="$(mktemp -d "$BENCH/tmp.openloop.XXXX")"

n=0
for bin in "$@"; do
  n=$((n + 1))
  [ -x "$bin" ] || die "$bin is not an executable"
  RAFTKV="$(realpath "$bin")" start_raftkv "$WORK/c$n" ""
  out="$WORK/c$n.txt"
  timeout $((DURATION + WARMUP + 60)) "$LOADGEN" run --system raftkv --op write --clients "$THREADS" \
    --think-ms "$THINK_MS" --duration "$DURATION" --warmup "$WARMUP" --target "$LEADER" --pids "$(pidlist)" \
    --out "$out" >/dev/null || die "$bin: loadgen failed"
  line="writes=$(field ops "$out")"
  for key in ops_per_s p50_us p90_us p99_us p999_us errors think_actual_ms cpu_s_per_1k; do
    line+=" $key=$(field "$key" "$out")"
  done
  printf '%s %s\n' "$bin" "$line"
  stop_cluster
done
