#!/usr/bin/env bash
# Where a sequential write's time goes: one client writes (HTTP, like scenario a) to a fresh
# 3-node cluster while `perf record` traces every system call and context switch of the machine
# for a moment; bench/timeline.py then follows each write through the trace (client → leader →
# append → follower fsync → ack → commit → answer → client) and prints the median of each step.
#
#   bash bench/timeline.sh [RAFTKV_BIN]        # default target/release/raftkv
#
# Needs perf (apt-get install linux-perf) with tracepoints, run as root, and python3. Tracing
# costs each system call a few µs, so the traced total is above the untraced p50 the loadgen
# prints (both shown); the steps' shares are what to read. Ports 127.0.0.1:25001-25003 (as
# bench/ab.sh); every process started here is stopped by PID on exit.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
RAFTKV="$(realpath "${1:-$BENCH/../target/release/raftkv}")"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RK_PORTS_LIST="25001 25002 25003" NODES=3 RAFTKV_ARGS=""
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"
need_loadgen
need_perf
command -v python3 >/dev/null || die "python3 not installed"
check_ports_free "${RK_PORTS[@]}"
WORK="$(mktemp -d "$BENCH/tmp.timeline.XXXX")"

start_raftkv "$WORK/c" ""
preload raftkv 10000 "$WORK/load.txt"
"$LOADGEN" run --system raftkv --duration 8 --warmup 1 --keys 10000 --clients 1 --pids "$(pidlist)" \
  --target "$LEADER" --out "$WORK/out.txt" --op write >/dev/null &
lg=$!
sleep 4
perf record -q -a -e raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch \
  -o "$WORK/trace.perf" -- sleep 0.5 >/dev/null 2>&1 || die "perf record failed (root? tracepoints?)"
wait "$lg" || die "loadgen failed"
perf script -i "$WORK/trace.perf" -F comm,pid,tid,cpu,time,event,trace 2>/dev/null >"$WORK/trace.txt"
log "untraced p50 (loadgen, whole run): $(grep -E '^p50_us=' "$WORK/out.txt" | cut -d= -f2) µs"
python3 "$BENCH/timeline.py" "$WORK/trace.txt" "${PID_OF[$LEADER]}" "${PID_OF[${FOLLOWERS[0]}]}" \
  "${PID_OF[${FOLLOWERS[1]}]}" "$lg"
