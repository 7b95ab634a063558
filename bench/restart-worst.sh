#!/usr/bin/env bash
# The worst-case restart of a node holding 1M keys: raftkv against etcd 3.4, same run, same
# machine, alternating (BENCHMARKS.md, "The worst-case restart").
#
#   bash bench/restart-worst.sh [--keys N] [--rounds R] [--no-build] [--no-etcd] [--results DIR]
#
# raftkv builds a snapshot once max(--snapshot-every, keys / 4) writes were applied since its last
# one (src/raft/snapshot_policy.rs), so a restart replays at most keys / 4 writes after loading
# its newest snapshot: that is the worst case measured here. One node of each system:
#   raftkv: started with --snapshot-every 100000000 (no snapshot), N keys written; started again
#     with the default, so it builds a snapshot of the N keys (awaited in its log); started again
#     with --snapshot-every 100000000, then N / 4 overwrites (keys 0..N/4) and a marker: its log
#     holds N / 4 + 1 writes after the snapshot, which every restart below replays.
#   etcd: N keys, the same overwrites and marker (its own --snapshot-count, 100,000 entries by
#     default, bounds its WAL replay).
# Then R rounds, the systems alternating: kill -9, start again with the same command, time until
# a serializable read on it returns the marker. Prints one line per restart and the medians.
#
# Traffic goes to 127.0.0.1 only (raftkv 24001, etcd 24101/24201). Every process started here is
# stopped by PID on exit, and the data dirs are removed. Every wait is bounded.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
KEYS=1000000 ROUNDS=3 BUILD=1 DO_ETCD=1 RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --no-etcd) DO_ETCD=0 ;;
    --results) RESULTS="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "restart-worst.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

NODES=1
RAFTKV="${RAFTKV:-$REPO/target/release/raftkv}"   # RAFTKV=path: another build (with --no-build)
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RAFTKV_ARGS=""
WORK="$(mktemp -d "$REPO/bench/tmp.XXXXXX")"
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"

if [ $BUILD = 1 ]; then
  (cd "$REPO" && cargo build --release --locked)
  (cd "$BENCH/loadgen" && cargo build --release --locked)
fi
[ -x "$RAFTKV" ] && [ -x "$LOADGEN" ] || die "build raftkv and bench/loadgen first (or drop --no-build)"
RESULTS="${RESULTS:-$BENCH/results/$(date -u +%Y-%m-%d)/restart-worst}"
mkdir -p "$RESULTS"
OUT="$RESULTS/restarts.txt"
: > "$OUT"
OVERWRITES=$((KEYS / 4))

# wait_log FILE PATTERN SECONDS: until FILE has a line matching PATTERN
wait_log() {
  local i
  for i in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  die "no '$2' in $1 after $3 s"
}

# Each system's one node: its address, PID and command (cluster.sh's PID_OF and CMD_OF are reset
# by every start_*).
declare -A ADDR_OF NODE_PID NODE_CMD
remember() {   # remember SYSTEM ADDR
  ADDR_OF[$1]="$2"; NODE_PID[$1]="${PID_OF[$2]}"; NODE_CMD[$1]="${CMD_OF[$2]}"
}

# restart SYSTEM DIR: kill -9 its node, start it again with the same command, time it
restart() {
  local sys="$1" addr="${ADDR_OF[$1]}" logf="$2/$1.log"
  local pid="${NODE_PID[$1]}" cmd
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  local keep=() q; for q in "${LIVE[@]}"; do [ "$q" = "$pid" ] || keep+=("$q"); done; LIVE=("${keep[@]}")
  read -r -a cmd <<<"${NODE_CMD[$sys]}"
  sleep 1
  local t0; t0=$(date +%s%N)
  spawn "$addr" "$logf" "${cmd[@]}"
  NODE_PID[$sys]="${PID_OF[$addr]}"
  "$LOADGEN" wait-read --system "$sys" --target "$addr" --key bench-marker --value worst --timeout 300 >/dev/null \
    || die "$sys did not serve the marker after its restart"
  local s; s=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.2f", (b-a)/1e9}')
  local detail=""
  if [ "$sys" = raftkv ]; then
    detail="$(grep 'loaded snapshot' "$logf" | tail -1 | grep -oE 'took_ms=[0-9]+' | sed 's/^/snapshot_load_/') \
$(grep 'recovery 2/3' "$logf" | tail -1 | grep -oE 'replayed_entries=[0-9]+ took_ms=[0-9]+' | sed 's/took_ms/replay_ms/')"
  fi
  echo "system=$sys restart_s=$s rss_mib=$(awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/${NODE_PID[$sys]}/status") $detail" | tee -a "$OUT"
}

# --- raftkv: N keys, a snapshot of them, then N/4 overwrites left in the log
RK="127.0.0.1:${RK_PORTS[0]}" RKDIR="$WORK/raftkv"
mkdir -p "$RKDIR"
rk_start() {   # rk_start EXTRA...
  local cmd=("$RAFTKV" -haddr "$RK" -id n0 "$@" "$RKDIR/n0")
  CMD_OF[$RK]="${cmd[*]}"
  spawn "$RK" "$RKDIR/raftkv.log" "${cmd[@]}"
  timeout 600 "$LOADGEN" raftkv-ready --target "$RK" --voters 1 --timeout 590 >/dev/null || die "raftkv did not start"
}
check_ports_free "${RK_PORTS[0]}"
rk_start --snapshot-every 100000000
LEADER="$RK"
preload raftkv "$KEYS" "$RESULTS/raftkv-load.txt"
stop_pids "${PID_OF[$RK]}"
log "raftkv: restart with the default snapshot policy, wait for its snapshot of $KEYS keys"
rk_start
wait_log "$RKDIR/raftkv.log" "built snapshot .* keys=$KEYS " 600
stop_pids "${PID_OF[$RK]}"
rk_start --snapshot-every 100000000
preload raftkv "$OVERWRITES" "$RESULTS/raftkv-overwrite.txt"
"$LOADGEN" put --system raftkv --target "$RK" --key bench-marker --value worst
remember raftkv "$RK"

# --- etcd: the same writes
ET=""
if [ $DO_ETCD = 1 ]; then
  command -v etcd >/dev/null || die "etcd is not installed (apt-get install -y etcd-server)"
  start_etcd "$WORK/etcd"
  ET="$LEADER"
  preload etcd "$KEYS" "$RESULTS/etcd-load.txt"
  preload etcd "$OVERWRITES" "$RESULTS/etcd-overwrite.txt"
  "$LOADGEN" put --system etcd --target "$ET" --key bench-marker --value worst
  remember etcd "$ET"
fi

for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS"
  restart raftkv "$RKDIR"
  if [ -n "$ET" ]; then restart etcd "$WORK/etcd"; fi
done

for sys in raftkv etcd; do
  m=$(sed -n "s/^system=$sys restart_s=\([0-9.]*\).*/\1/p" "$OUT" | median)
  [ "$m" = "-" ] || log "$sys: median restart ${m} s over $ROUNDS restarts ($KEYS keys, $OVERWRITES overwrites after raftkv's snapshot)"
done
cp "$RKDIR/raftkv.log" "$RESULTS/" 2>/dev/null || true
log "done; $OUT"
