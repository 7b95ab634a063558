#!/usr/bin/env bash
# What one client's writes cost in CPU, process by process: a fresh 3-node cluster, one client
# writing over HTTP as in bench/run.sh's scenario a (raftkv's API; etcd's /v3/kv/put gateway),
# and `perf stat` on every server process and the load generator for 3 s of it. Prints CPU µs
# and context switches per write for each, leader first.
#
#   bash bench/lone-write.sh [RAFTKV_BIN]      # default target/release/raftkv; etcd too if installed
#
# Environment: NO_ETCD=1 skips etcd.  PROFILE=1 also records the whole machine for 2 s
#   (`perf record -a -g -F 2999`) during raftkv's run and prints (bench/lone_write.py) each
#   thread's CPU per write, the functions the leader's samples land in most, and how the leader's
#   tokio workers' CPU splits over tasks — build raftkv with RUSTFLAGS="-C
#   force-frame-pointers=yes" for the split, or the stacks are cut short.
#   RESULTS [bench/results/lone-write-<date>]
# Needs perf (apt-get install linux-perf), run as root. Ports 127.0.0.1:25001-25003 (as
# bench/ab.sh) and etcd's of bench/cluster.sh; every process started here is stopped by PID on exit.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
RAFTKV="$(realpath "${1:-$BENCH/../target/release/raftkv}")"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RK_PORTS_LIST="25001 25002 25003" NODES=3 RAFTKV_ARGS=""
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"
need_loadgen
need_perf
RESULTS="${RESULTS:-$BENCH/results/lone-write-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS"
WORK="$(mktemp -d "$BENCH/tmp.lone.XXXX")"

measure() {   # measure SYSTEM: one client writes for 10 s; perf stat from 3 s to 6 s
  local sys="$1" out="$RESULTS/$1"
  mkdir -p "$out"
  preload "$sys" 10000 "$WORK/load-$sys.txt"
  "$LOADGEN" run --system "$sys" --duration 10 --warmup 1 --keys 10000 --clients 1 --pids "$(pidlist)" \
    --target "$LEADER" --out "$out/run.txt" --op write >/dev/null &
  local lg=$! stats=() p
  sleep 3
  local order=("${PID_OF[$LEADER]}")
  for p in "${FOLLOWERS[@]}"; do order+=("${PID_OF[$p]}"); done
  order+=("$lg")
  for p in "${order[@]}"; do
    perf stat -e task-clock,context-switches -p "$p" -o "$out/stat.$p" -- sleep 3 & stats+=($!)
  done
  wait "${stats[@]}"
  if [ "$sys" = raftkv ] && [ "${PROFILE:-0}" = 1 ]; then
    perf record -q -a -g -F 2999 -o "$out/machine.perf" -- sleep 2 >/dev/null 2>&1 || die "perf record failed"
  fi
  wait "$lg" || die "loadgen failed"
  local ops; ops="$(field ops_per_s "$out/run.txt")"
  log "$sys: $ops writes/s, p50 $(field p50_us "$out/run.txt") µs, machine busy $(field machine_busy_pct "$out/run.txt") %"
  local names=(leader follower follower loadgen) i=0
  echo "| $sys process | CPU µs per write | context switches per write |"
  echo "|---|---:|---:|"
  for p in "${order[@]}"; do
    awk -v ops="$ops" -v who="${names[$i]}" '
      /task-clock/ { gsub(",", "", $1); cpu = $1 }
      /context-switches/ { gsub(",", "", $1); cs = $1 }
      END { printf "| %s | %.0f | %.1f |\n", who, cpu * 1000 / (3 * ops), cs / (3 * ops) }' "$out/stat.$p"
    i=$((i + 1))
  done
  if [ "$sys" = raftkv ] && [ "${PROFILE:-0}" = 1 ]; then
    python3 "$BENCH/lone_write.py" "$out/machine.perf" "$ops" 2 "${order[@]:0:3}"
  fi
}

start_raftkv "$WORK/rk" ""
measure raftkv
stop_cluster
if [ "${NO_ETCD:-0}" != 1 ] && command -v etcd >/dev/null; then
  start_etcd "$WORK/etcd"
  measure etcd
  stop_cluster
fi
