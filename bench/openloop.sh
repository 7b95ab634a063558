#!/usr/bin/env bash
# Open-loop writers against a fresh 3-node cluster of each given build, one after the other:
#
#   bash bench/openloop.sh THREADS THINK_MS BIN...      # e.g. 48 5 old/raftkv target/release/raftkv
#
# For each BIN: starts a cluster (ports 127.0.0.1:25001-25003, as bench/ab.sh), runs
# bench/openloop.py against the leader for 10 s (THREADS writers, each pausing an exponential
# THINK_MS between writes over its own keep-alive connection), prints one line, stops it.
# Needs python3 and the built load generator (cluster readiness). Every process started here is stopped by PID on exit; data dirs removed.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 3 ] || { sed -n 2,9p "$0"; exit 2; }
THREADS="$1" THINK_MS="$2"; shift 2
RK_PORTS_LIST="25001 25002 25003" NODES=3 RAFTKV_ARGS=""
LOADGEN="$BENCH/loadgen/target/release/loadgen"   # cluster.sh's readiness checks use it
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"   # log, die, the cleanup trap, start_raftkv, stop_cluster
command -v python3 >/dev/null || die "python3 is needed"
[ -x "$LOADGEN" ] || die "build the load generator first: (cd bench/loadgen && cargo build --release --locked)"
check_ports_free "${RK_PORTS[@]}"
WORK="$(mktemp -d "$BENCH/tmp.openloop.XXXX")"

n=0
for bin in "$@"; do
  n=$((n + 1))
  [ -x "$bin" ] || die "$bin is not an executable"
  RAFTKV="$(realpath "$bin")" start_raftkv "$WORK/c$n" ""
  printf '%s %s\n' "$bin" "$(python3 "$BENCH/openloop.py" "$LEADER" "$THREADS" "$THINK_MS" 10)"
  stop_cluster
done
