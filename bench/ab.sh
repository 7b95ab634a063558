#!/usr/bin/env bash
# A/B of two raftkv builds on the same machine in the same sitting: the way to tell whether a change
# made raftkv faster or slower (this machine's noise between sittings is larger than most changes).
#
#   bash bench/ab.sh BIN_A BIN_B [OPS...]        # OPS from: write lread sread fwrite mixed gwrite glread
#                                                 # gsread swrite sfwrite owrite [write lread sread]; g* = through etcd's
#                                                 # gRPC API, swrite = 1 client (sfwrite: to a follower), owrite = HTTP
#                                                 # writes with pauses (OPEN_CLIENTS, THINK_MS)
#
# Each round starts a fresh 3-node cluster of A, preloads, runs every OP, stops it; then the same for
# B; rounds alternate A B A B ... so drift of the machine hits both. The table shows every round's
# ops/s and CPU-seconds per 1k ops (all three nodes' CPU), then the medians, and (last columns) the
# median p50 and p99 latency in µs (owrite's latency excludes the pauses); each round's log line
# and result file also give each node's CPU-seconds over the run, leader first (`node_cpu_s`), and
# how many batch entries the leader proposed and how many writes they held (`write_batches`,
# `batched_writes`), and how many holds of a batch for the writers just answered filled or ran out
# (`holds_filled`, `holds_expired`; gathering), from its /metrics.
#
# Environment: ROUNDS [3]  DURATION [8]  WARMUP [2]  CLIENTS [64]  KEYS [100000]
#   OPEN_CLIENTS [48]  THINK_MS [5]   owrite's clients, each pausing an exponential time (mean
#            THINK_MS ms) after each write, so they are idle between writes (loadgen --think-ms)
#   PERF=1   also records the leader (PERF_ROLE=follower: a follower) for 5 s of each OP with
#            `perf record -g` (first round only)
#            into $RESULTS/<A|B>-<op>.perf (read with `perf report -i FILE --no-children`)
#   RESULTS [bench/results/ab-<date>]
# Ports 127.0.0.1:25001-25003 (bench/cluster.sh's clusters, on other ports). Every process started
# here is stopped by PID on exit; data dirs removed.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 2 ] || { sed -n 2,20p "$0"; exit 2; }
BIN_A="$(realpath "$1")" BIN_B="$(realpath "$2")"; shift 2
OPS=("$@"); [ ${#OPS[@]} -gt 0 ] || OPS=(write lread sread)
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-8}" WARMUP="${WARMUP:-2}" CLIENTS="${CLIENTS:-64}"
KEYS="${KEYS:-100000}" PERF="${PERF:-0}" PERF_ROLE="${PERF_ROLE:-leader}"
OPEN_CLIENTS="${OPEN_CLIENTS:-48}" THINK_MS="${THINK_MS:-5}"
RESULTS="${RESULTS:-$BENCH/results/ab-$(date +%Y%m%d-%H%M%S)}"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RK_PORTS_LIST="25001 25002 25003" NODES=3 RAFTKV_ARGS=""
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"   # log, die, the cleanup trap, start_raftkv, stop_cluster, preload

need_loadgen
[ -x "$BIN_A" ] && [ -x "$BIN_B" ] || die "both binaries must exist and be executable"
check_ports_free "${RK_PORTS[@]}"
mkdir -p "$RESULTS"
WORK="$(mktemp -d "$BENCH/tmp.ab.XXXX")"

# metric ADDR NAME: one value from a node's /metrics (0 when absent).
metric() {
  local v
  v="$(exec 3<>"/dev/tcp/${1%:*}/${1##*:}" && printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3 \
    && awk -v n="$2" '$1 == n {print $2}' <&3)" || true
  echo "${v:-0}"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }   # user + system, in clock ticks

one() {   # one TAG BIN ROUND
  local tag="$1" bin="$2" round="$3" op
  local dir="$WORK/$tag$round"
  RAFTKV="$bin" start_raftkv "$dir" ""
  preload raftkv "$KEYS" "$dir/load.txt"
  local pids; pids="$(pidlist)"
  for op in "${OPS[@]}"; do
    local args=(--op "$op") target="$LEADER" clients="$CLIENTS"
    case "$op" in
      fwrite) args=(--op write); target="${FOLLOWERS[0]}" ;;
      sfwrite) args=(--op write); target="${FOLLOWERS[0]}"; clients=1 ;;
      mixed) args=(--op mixed --read-pct 90) ;;
      gwrite|glread|gsread) args=(--api grpc --op "${op#g}") ;;
      swrite) args=(--op write); clients=1 ;;
      owrite) args=(--op write --think-ms "$THINK_MS"); clients="$OPEN_CLIENTS" ;;
    esac
    local out="$RESULTS/$tag-$op-$round.txt" perf_pid=""
    local perf_node="$LEADER"; [ "$PERF_ROLE" = follower ] && perf_node="${FOLLOWERS[0]}"
    if [ "$PERF" = 1 ] && [ "$round" = 1 ]; then
      (sleep "$((WARMUP + 1))"; perf record -q -g -p "${PID_OF[$perf_node]}" -o "$RESULTS/$tag-$op.perf" -- sleep 5 >/dev/null 2>&1) &
      perf_pid=$!
    fi
    local before=() pid order=("${PID_OF[$LEADER]}") f
    for f in "${FOLLOWERS[@]}"; do order+=("${PID_OF[$f]}"); done
    for pid in "${order[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    local batches0 batched0 filled0 expired0
    batches0="$(metric "$LEADER" raftkv_server_write_batches_total)"
    batched0="$(metric "$LEADER" raftkv_server_batched_writes_total)"
    filled0="$(metric "$LEADER" raftkv_server_write_holds_filled_total)"
    expired0="$(metric "$LEADER" raftkv_server_write_holds_expired_total)"
    timeout $((DURATION + WARMUP + 60)) "$LOADGEN" run --system raftkv --duration "$DURATION" --warmup "$WARMUP" \
      --keys "$KEYS" --clients "$clients" --pids "$pids" --target "$target" --out "$out" "${args[@]}" >/dev/null \
      || log "warning: $tag $op: loadgen failed"
    [ -n "$perf_pid" ] && wait "$perf_pid"
    # Each node's CPU over the whole run (warm-up included), leader first: where the CPU goes.
    local split="" i=0
    for pid in "${order[@]}"; do
      split+="$(awk -v a="${before[$i]}" -v b="$(cpu_ticks "$pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}') "
      i=$((i + 1))
    done
    local batches=$(($(metric "$LEADER" raftkv_server_write_batches_total) - batches0))
    local batched=$(($(metric "$LEADER" raftkv_server_batched_writes_total) - batched0))
    local filled=$(($(metric "$LEADER" raftkv_server_write_holds_filled_total) - filled0))
    local expired=$(($(metric "$LEADER" raftkv_server_write_holds_expired_total) - expired0))
    printf 'node_cpu_s=%s\nwrite_batches=%s\nbatched_writes=%s\nholds_filled=%s\nholds_expired=%s\n' \
      "$split" "$batches" "$batched" "$filled" "$expired" >>"$out"
    log "$tag round $round $op: $(grep -E '^(ops_per_s|cpu_s_per_1k|p50_us|p99_us|errors)=' "$out" | tr '\n' ' ')node_cpu_s(leader first)=$split write_batches=$batches batched_writes=$batched holds_filled=$filled holds_expired=$expired"
  done
  stop_cluster
  rm -rf "$dir"
}

for round in $(seq "$ROUNDS"); do
  one A "$BIN_A" "$round"
  one B "$BIN_B" "$round"
done

{
  echo "# A/B $(date -u +%Y-%m-%dT%H:%MZ): A=$BIN_A B=$BIN_B"
  echo "rounds=$ROUNDS duration=${DURATION}s clients=$CLIENTS keys=$KEYS open_clients=$OPEN_CLIENTS think_ms=$THINK_MS"
  echo
  # New columns go at the end of a row: readers of older reports count columns from the left.
  echo "| op | A ops/s (median) | B ops/s (median) | B/A | A CPU-s/1k | B CPU-s/1k | rounds A | rounds B | A p50 µs | B p50 µs | A p99 µs | B p99 µs |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for op in "${OPS[@]}"; do
    ra="" rb=""
    for r in $(seq "$ROUNDS"); do
      ra+="$(field ops_per_s "$RESULTS/A-$op-$r.txt" 2>/dev/null) "
      rb+="$(field ops_per_s "$RESULTS/B-$op-$r.txt" 2>/dev/null) "
    done
    ma="$(tr ' ' '\n' <<<"$ra" | grep . | median)"
    mb="$(tr ' ' '\n' <<<"$rb" | grep . | median)"
    ca="$(for r in $(seq "$ROUNDS"); do field cpu_s_per_1k "$RESULTS/A-$op-$r.txt" 2>/dev/null; done | median)"
    cb="$(for r in $(seq "$ROUNDS"); do field cpu_s_per_1k "$RESULTS/B-$op-$r.txt" 2>/dev/null; done | median)"
    ratio="$(awk -v a="$ma" -v b="$mb" 'BEGIN {if (a > 0) printf "%.2f", b / a; else print "-"}')"
    lat=""   # median p50 and p99 of A and B, in µs
    for key in p50_us p99_us; do
      for tag in A B; do
        lat+=" $(for r in $(seq "$ROUNDS"); do field "$key" "$RESULTS/$tag-$op-$r.txt" 2>/dev/null; done | median) |"
      done
    done
    echo "| $op | $ma | $mb | $ratio | $ca | $cb | $ra| $rb|$lat"
  done
} | tee "$RESULTS/report.md"
