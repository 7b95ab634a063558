#!/usr/bin/env bash
# How long a joining node takes to catch up from a snapshot of KEYS keys, for one or more raftkv
# builds in the same sitting: one node is loaded (its log is compacted by then), a second joins;
# the leader's log says how long sending the snapshot took, and the join is timed until the new
# node is a voter. RSS of both nodes afterwards.
#
#   bash bench/snapshot.sh BIN [BIN ...]        # env: KEYS [1000000], ROUNDS [1]
#
# Ports 127.0.0.1:24001-24002 (bench/cluster.sh). Every process started here is stopped by PID
# on exit; data dirs removed.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n 2,10p "$0"; exit 2; }
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
need_loadgen
KEYS="${KEYS:-1000000}" ROUNDS="${ROUNDS:-1}" RAFTKV_ARGS="-v" DURATION=0 WARMUP=0
WORK="$(mktemp -d "$BENCH/tmp.snap.XXXX")"
rss_mib() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    RAFTKV="$(realpath "$bin")" NODES=1
    dir="$WORK/r$round"
    start_raftkv "$dir" ""
    preload raftkv "$KEYS" "$dir/preload.txt"
    joiner="127.0.0.1:${RK_PORTS[1]}"
    t0=$(date +%s%N)
    spawn "$joiner" "$dir/n1.log" "$RAFTKV" -haddr "$joiner" -id n1 -v -join "127.0.0.1:${RK_PORTS[0]}" "$dir/n1"
    timeout 900 "$LOADGEN" raftkv-ready --target "127.0.0.1:${RK_PORTS[0]}" --voters 2 --timeout 800 >/dev/null \
      || { tail -20 "$dir"/n*.log >&2; die "the joiner did not become a voter"; }
    join_s="$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.2f", (b-a)/1e9}')"
    sent="$(grep 'sent snapshot' "$dir/n0.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')"
    bytes="$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$sent")"
    took="$(sed -n 's/.*took_ms=\([0-9]*\).*/\1/p' <<<"$sent")"
    echo "round=$round bin=$bin keys=$KEYS snapshot_bytes=${bytes:-?} send_ms=${took:-?} join_s=$join_s rss_leader_mib=$(rss_mib "${PIDS[0]}") rss_joiner_mib=$(rss_mib "${PIDS[1]}")"
    stop_cluster
    rm -rf "$dir"
  done
done
