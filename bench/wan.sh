#!/usr/bin/env bash
# Sequential writes when the links between raftkv nodes have a round trip: every peer link of a
# 3-node cluster passes `loadgen delay-proxy`, which delivers each byte DELAY ms after it was sent,
# both ways (a round trip of 2 × DELAY); the client talks to the leader directly. No network
# configuration is touched: the proxies are ordinary processes on 127.0.0.1.
#
#   bash bench/wan.sh BIN_A BIN_B [DELAYS...]     # DELAYS in ms one way [0 1 5]
#
# Each round, for each delay: a fresh cluster of A, then of B (nodes advertise the proxies' ports
# as their Raft addresses), 1 client writing for DURATION s after WARMUP s; the table shows each
# round's writes/s and p50, then the medians.
# Environment: ROUNDS [2]  DURATION [8]  WARMUP [2]  RESULTS [bench/results/wan-<date>]
# Ports 127.0.0.1:26001-26003 (HTTP), 26101-26103 (Raft), 26201-26203 (proxies). Every process
# started here is stopped by PID on exit; data dirs removed.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 2 ] || { sed -n 2,14p "$0"; exit 2; }
BIN_A="$(realpath "$1")" BIN_B="$(realpath "$2")"; shift 2
DELAYS=("$@"); [ ${#DELAYS[@]} -gt 0 ] || DELAYS=(0 1 5)
ROUNDS="${ROUNDS:-2}" DURATION="${DURATION:-8}" WARMUP="${WARMUP:-2}"
RESULTS="${RESULTS:-$BENCH/results/wan-$(date +%Y%m%d-%H%M%S)}"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RK_PORTS_LIST="26001 26002 26003" NODES=3
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"   # log, die, spawn, stop_pids, field, median, the cleanup trap

need_loadgen
[ -x "$BIN_A" ] && [ -x "$BIN_B" ] || die "both binaries must exist and be executable"
check_ports_free 26001 26002 26003 26101 26102 26103 26201 26202 26203
mkdir -p "$RESULTS"
WORK="$(mktemp -d "$BENCH/tmp.wan.XXXX")"

one() {   # one TAG BIN DELAY ROUND
  local tag="$1" bin="$2" delay="$3" round="$4" i
  local dir="$WORK/$tag-$delay-$round"
  mkdir -p "$dir"
  PIDS=(); PID_OF=()
  spawn proxy "$dir/proxy.log" "$LOADGEN" delay-proxy --delay-ms "$delay" \
    --pair 26201:26101 --pair 26202:26102 --pair 26203:26103
  for i in 1 2 3; do
    local join=(); [ "$i" -gt 1 ] && join=(-join 127.0.0.1:26001)
    spawn "127.0.0.1:2600$i" "$dir/n$i.log" "$bin" -haddr "127.0.0.1:2600$i" --raddr "127.0.0.1:2610$i" \
      --advertise-raddr "127.0.0.1:2620$i" -id "n$i" "${join[@]}" "$dir/n$i"
    timeout 90 "$LOADGEN" raftkv-ready --target 127.0.0.1:26001 --voters "$i" --timeout 60 >/dev/null \
      || { tail -20 "$dir"/n*.log >&2; die "node n$i did not join"; }
  done
  local out="$RESULTS/$tag-d$delay-$round.txt" pids
  pids="${PID_OF[127.0.0.1:26001]},${PID_OF[127.0.0.1:26002]},${PID_OF[127.0.0.1:26003]}"
  timeout $((DURATION + WARMUP + 60)) "$LOADGEN" run --system raftkv --duration "$DURATION" --warmup "$WARMUP" \
    --keys 1000 --clients 1 --pids "$pids" --target 127.0.0.1:26001 --out "$out" --op write >/dev/null \
    || log "warning: $tag delay $delay: loadgen failed"
  log "$tag delay ${delay} ms round $round: $(grep -E '^(ops_per_s|p50_us|errors)=' "$out" | tr '\n' ' ')"
  stop_cluster
  rm -rf "$dir"
}

for round in $(seq "$ROUNDS"); do
  for delay in "${DELAYS[@]}"; do
    one A "$BIN_A" "$delay" "$round"
    one B "$BIN_B" "$delay" "$round"
  done
done

{
  echo "# wan $(date -u +%Y-%m-%dT%H:%MZ): A=$BIN_A B=$BIN_B"
  echo "rounds=$ROUNDS duration=${DURATION}s, 1 client, peer links delayed by the given ms each way"
  echo
  echo "| delay one way | A writes/s | B writes/s | B/A | A p50 µs | B p50 µs | rounds A (writes/s) | rounds B (writes/s) |"
  echo "|---|---|---|---|---|---|---|---|"
  for delay in "${DELAYS[@]}"; do
    row=("$delay ms")
    for t in A B; do row+=("$(for f in "$RESULTS/$t-d$delay-"*.txt; do field ops_per_s "$f"; done | median)"); done
    ratio="$(awk -v a="${row[1]}" -v b="${row[2]}" 'BEGIN {if (a > 0) printf "%.2f", b / a; else print "-"}')"
    pa="$(for f in "$RESULTS/A-d$delay-"*.txt; do field p50_us "$f"; done | median)"
    pb="$(for f in "$RESULTS/B-d$delay-"*.txt; do field p50_us "$f"; done | median)"
    ra="$(for f in "$RESULTS/A-d$delay-"*.txt; do field ops_per_s "$f"; done | tr '\n' ' ')"
    rb="$(for f in "$RESULTS/B-d$delay-"*.txt; do field ops_per_s "$f"; done | tr '\n' ' ')"
    echo "| ${row[0]} | ${row[1]} | ${row[2]} | $ratio | $pa | $pb | $ra | $rb |"
  done
} | tee "$RESULTS/wan.md"
