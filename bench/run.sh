#!/usr/bin/env bash
# raftkv vs etcd, side by side, same machine, same load generator. See BENCHMARKS.md.
#
#   bash bench/run.sh                  # 3 runs x 6 scenarios x {raftkv, etcd} + flush-wait sweep; medians
#   bash bench/run.sh --big            # also: RSS after loading 1M keys, restart time of a node with 1M keys
#   bash bench/run.sh --runs 1 --duration 3 --warmup 1     # smoke run
#
# Options (defaults in brackets):
#   --runs N [3]            full runs; the table shows the median of each cell over the runs
#   --duration S [15]       measured seconds per scenario      --warmup S [3]  unmeasured seconds before
#   --clients N [64]        clients of the concurrent scenarios (b-f)
#   --keys N [100000]       key space (keys read in c/d/f are preloaded)
#   --reads-to leader|all [leader]   where the clients of a-d and f send (e always goes to a follower)
#   --big                   the 1M-key step;   --big-keys N [1000000]
#   --no-sweep              skip the raftkv --flush-wait-us 0/50/200 sweep (scenarios a and b)
#   --no-etcd | --no-raftkv run one system only
#   --no-http | --no-grpc   skip the HTTP scenarios a-f / the etcd gRPC scenarios g1-g5, w1, l1
#   --no-watch | --no-lease skip the gRPC watch fan-out w1 / the lease churn l1
#   --watchers N [1000]     watches of w1 (over 10 gRPC connections to the 3 nodes)
#   --no-install            do not apt-get etcd-server/fio (they must be installed)
#   --no-build              use the existing release binaries
#   --raftkv-args "..."     extra flags for every raftkv node (e.g. "--flush-wait-us 50")
#   --results DIR [bench/results/<date>]   where the per-scenario files and report.md go
#   --data-dir DIR [bench/tmp.XXXX]        parent of the nodes' data dirs (must be on the disk to test)
#
# Traffic goes to 127.0.0.1 only. Every process started here is stopped by PID on exit (trap), and
# the data dirs are removed. Every wait is bounded.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"

RUNS=3 DURATION=15 WARMUP=3 CLIENTS=64 KEYS=100000 READS_TO=leader
BIG=0 BIG_KEYS=1000000 SWEEP=1 DO_ETCD=1 DO_RAFTKV=1 INSTALL=1 BUILD=1 RAFTKV_ARGS=""
DO_HTTP=1 DO_GRPC=1 DO_WATCH=1 DO_LEASE=1 WATCHERS=1000
RESULTS="" DATA_PARENT=""
ORIG_ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --reads-to) READS_TO="$2"; shift ;;
    --big) BIG=1 ;;
    --big-keys) BIG_KEYS="$2"; shift ;;
    --no-sweep) SWEEP=0 ;;
    --sweep) SWEEP=1 ;;
    --no-etcd) DO_ETCD=0 ;;
    --no-raftkv) DO_RAFTKV=0 ;;
    --no-http) DO_HTTP=0 ;;
    --no-grpc) DO_GRPC=0 ;;
    --no-watch) DO_WATCH=0 ;;
    --no-lease) DO_LEASE=0 ;;
    --watchers) WATCHERS="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --raftkv-args) RAFTKV_ARGS="$2"; shift ;;
    --results) RESULTS="$2"; shift ;;
    --data-dir) DATA_PARENT="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

NODES=3   # the table is of 3-node clusters (bench/curve.sh also runs 5)
# log, die, the cleanup trap, start_raftkv/start_etcd/stop_cluster, scenario, preload, idle_now
# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"

# ------------------------------------------------------------------------------------------------
# 1. install
if [ $INSTALL = 1 ]; then
  if ! command -v etcd >/dev/null || ! command -v fio >/dev/null; then
    log "installing etcd-server and fio (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-cache policy etcd-server | sed -n '1,3p' >&2
    apt-get install -y -qq etcd-server fio >/dev/null
  fi
fi
command -v fio >/dev/null || die "fio not installed"
if [ $DO_ETCD = 1 ]; then
  command -v etcd >/dev/null || die "etcd not installed"
  ETCD_VERSION="$(etcd --version | sed -n 's/^etcd Version: //p')"
  case "$ETCD_VERSION" in 3.4.*) ;; *) log "warning: etcd $ETCD_VERSION, the gateway paths assume 3.4" ;; esac
  # Debian's package may start a system etcd on 2379; ours use other ports, so it is left alone.
fi

# ------------------------------------------------------------------------------------------------
# 2. build
LOADGEN="$BENCH/loadgen/target/release/loadgen"
RAFTKV="$REPO/target/release/raftkv"
if [ $BUILD = 1 ]; then
  log "building raftkv (release)"
  (cd "$REPO" && cargo build --release --locked --quiet)
  log "building loadgen (release)"
  (cd "$BENCH/loadgen" && cargo build --release --locked --quiet)
fi
[ -x "$LOADGEN" ] || die "no $LOADGEN"
[ $DO_RAFTKV = 0 ] || [ -x "$RAFTKV" ] || die "no $RAFTKV"

# ------------------------------------------------------------------------------------------------
# dirs
[ -n "$RESULTS" ] || RESULTS="$BENCH/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
if [ -n "$DATA_PARENT" ]; then mkdir -p "$DATA_PARENT"; WORK="$(mktemp -d "$DATA_PARENT/raftkv-bench.XXXXXX")"
else WORK="$(mktemp -d "$BENCH/tmp.XXXXXX")"; fi
FSTYPE="$(df -PT "$WORK" | awk 'NR==2{print $2}')"
[ "$FSTYPE" = tmpfs ] && log "warning: $WORK is on tmpfs: fsync costs nothing there, use --data-dir on a real disk"
log "results in $RESULTS; data dirs under $WORK ($FSTYPE)"

# ------------------------------------------------------------------------------------------------
# 3. physical floor
{
  echo "nproc=$(nproc)"
  echo "command=bench/run.sh $ORIG_ARGS"
  echo "fs=$FSTYPE on $(df -P "$WORK" | awk 'NR==2{print $1}')"
  echo "kernel=$(uname -r)"
  echo "etcd_version=${ETCD_VERSION:-}"
  echo "raftkv_args=$RAFTKV_ARGS"
  echo "duration_s=$DURATION"; echo "warmup_s=$WARMUP"; echo "clients=$CLIENTS"; echo "keys=$KEYS"; echo "reads_to=$READS_TO"
} > "$RESULTS/floor.txt"
log "fio: 4 KiB appends + fdatasync, 64 MiB, in $WORK"
mkdir -p "$WORK/fio"
timeout 300 fio --name=fsync --directory="$WORK/fio" --rw=write --bs=4k --size=64m --fdatasync=1 \
  --ioengine=sync --output-format=json > "$RESULTS/fio.json"
rm -rf "$WORK/fio"
"$LOADGEN" fio "$RESULTS/fio.json" >> "$RESULTS/floor.txt"
log "loopback round trip"
timeout 60 "$LOADGEN" rtt --seconds 2 >> "$RESULTS/floor.txt"
cat "$RESULTS/floor.txt" >&2

# ------------------------------------------------------------------------------------------------
drive() {   # drive SYSTEM RUNDIR: preload, then scenarios a-f
  local sys="$1" rd="$2" rt="$LEADER"
  [ "$READS_TO" = all ] && rt="$ALL"
  preload "$sys" "$KEYS" "$rd/${sys}_preload.txt"
  if [ $DO_HTTP = 1 ]; then
  scenario "$sys" "a. sequential write, 1 client" "$rd/${sys}_a.txt" --op write --clients 1 --target "$rt"
  scenario "$sys" "b. write, $CLIENTS clients" "$rd/${sys}_b.txt" --op write --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "c. linearizable read" "$rd/${sys}_c.txt" --op lread --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "d. stale/serializable read" "$rd/${sys}_d.txt" --op sread --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "e. write via follower ${FOLLOWERS[0]}" "$rd/${sys}_e.txt" --op write --clients "$CLIENTS" --target "${FOLLOWERS[0]}"
  scenario "$sys" "f. mixed 90/10" "$rd/${sys}_f.txt" --op mixed --read-pct 90 --clients "$CLIENTS" --target "$rt"
  fi
  if [ $DO_GRPC = 1 ]; then
  # etcd's v3 gRPC API on both systems (raftkv serves it on its HTTP port): the same etcd-client
  # calls, one HTTP/2 connection per client (bench/loadgen/src/grpc.rs).
  scenario "$sys" "g1. gRPC put, 1 client" "$rd/${sys}_g1.txt" --api grpc --op write --clients 1 --target "$rt"
  scenario "$sys" "g2. gRPC put, $CLIENTS clients" "$rd/${sys}_g2.txt" --api grpc --op write --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "g3. gRPC linearizable range" "$rd/${sys}_g3.txt" --api grpc --op lread --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "g4. gRPC serializable range" "$rd/${sys}_g4.txt" --api grpc --op sread --clients "$CLIENTS" --target "$rt"
  scenario "$sys" "g5. gRPC CAS txn" "$rd/${sys}_g5.txt" --api grpc --op cas --clients "$CLIENTS" --target "$rt"
  # w1: WATCHERS watches of one fresh prefix over 10 connections round-robin on the 3 nodes, while
  # the clients put keys under it; up to 30 s of drain after the window (bench/loadgen/src/watch.rs).
  if [ $DO_WATCH = 1 ]; then
  EXTRA_BOUND=60 scenario "$sys" "w1. gRPC watch fan-out, $WATCHERS watchers" "$rd/${sys}_w1.txt" --api grpc --op watch \
    --clients "$CLIENTS" --watchers "$WATCHERS" --watch-conns 10 --watch-target "$ALL" --drain-s 30 --target "$rt"
  if [ -f "$rd/${sys}_w1.txt" ]; then
    log "  $(grep -E '^(events_per_s|missed|duplicated|lagging_watchers|delivery_p50_us|delivery_p99_us|watch_errors)=' "$rd/${sys}_w1.txt" | tr '\n' ' ')"
  fi
  fi
  # l1: LeaseGrant(ttl 10) + Put with the lease + LeaseRevoke per op.
  if [ $DO_LEASE = 1 ]; then
  scenario "$sys" "l1. gRPC lease churn" "$rd/${sys}_l1.txt" --api grpc --op lease --clients "$CLIENTS" --target "$rt"
  fi
  fi
}

# ------------------------------------------------------------------------------------------------
# 4. runs
for run in $(seq 1 "$RUNS"); do
  rd="$RESULTS/run$run"; mkdir -p "$rd"
  if [ $DO_RAFTKV = 1 ]; then
    idle="$(idle_now)"; echo "raftkv=$idle" >> "$rd/idle.txt"
    log "run $run/$RUNS: raftkv (machine idle CPU before: $idle%)"
    start_raftkv "$WORK/run$run-raftkv" ""
    drive raftkv "$rd"
    stop_cluster; cp "$WORK/run$run-raftkv"/*.log "$rd/" 2>/dev/null || true; rm -rf "$WORK/run$run-raftkv"
  fi
  if [ $DO_ETCD = 1 ]; then
    idle="$(idle_now)"; echo "etcd=$idle" >> "$rd/idle.txt"
    log "run $run/$RUNS: etcd (machine idle CPU before: $idle%)"
    start_etcd "$WORK/run$run-etcd"
    drive etcd "$rd"
    stop_cluster; cp "$WORK/run$run-etcd"/*.log "$rd/" 2>/dev/null || true; rm -rf "$WORK/run$run-etcd"
  fi
done

# ------------------------------------------------------------------------------------------------
# 5. raftkv --flush-wait-us sweep (scenarios a and b, fresh cluster each)
if [ $SWEEP = 1 ] && [ $DO_RAFTKV = 1 ]; then
  mkdir -p "$RESULTS/sweep"
  for w in 0 50 200; do
    log "sweep: raftkv --flush-wait-us $w (idle CPU $(idle_now)%)"
    start_raftkv "$WORK/sweep$w" "--flush-wait-us $w"
    scenario raftkv "a (flush-wait $w)" "$RESULTS/sweep/fw${w}_a.txt" --op write --clients 1 --target "$LEADER"
    scenario raftkv "b (flush-wait $w)" "$RESULTS/sweep/fw${w}_b.txt" --op write --clients "$CLIENTS" --target "$LEADER"
    stop_cluster; rm -rf "$WORK/sweep$w"
  done
fi

# ------------------------------------------------------------------------------------------------
# 6. --big: RSS after loading BIG_KEYS keys, restart time of one node (kill -9) with them
rss_mib() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }

big() {   # big SYSTEM
  local sys="$1"
  local out="$RESULTS/big_$sys.txt" dir="$WORK/big-$sys"
  log "big: $sys, loading $BIG_KEYS keys (idle CPU $(idle_now)%)"
  if [ "$sys" = raftkv ]; then start_raftkv "$dir" ""; else start_etcd "$dir"; fi
  preload "$sys" "$BIG_KEYS" "$out"
  sleep 3
  local rss="" p
  for p in "${PIDS[@]}"; do rss+="${rss:+ / }$(rss_mib "$p")"; done
  echo "keys=$BIG_KEYS" >> "$out"
  echo "rss_mib=$rss" >> "$out"
  du -sm "$dir" | awk '{print "data_mib=" $1}' >> "$out"
  # restart one follower: make sure it holds the newest write, kill -9, start it again, time until a
  # stale/serializable read on it returns that write.
  local victim="${FOLLOWERS[0]}" marker="restart-$RANDOM$RANDOM"
  "$LOADGEN" put --system "$sys" --target "$LEADER" --key bench-marker --value "$marker"
  "$LOADGEN" wait-read --system "$sys" --target "$victim" --key bench-marker --value "$marker" --timeout 60 >/dev/null
  local vpid="${PID_OF[$victim]}"
  log "big: $sys: kill -9 $victim (pid $vpid), restart"
  kill -KILL "$vpid"; wait "$vpid" 2>/dev/null || true
  local keep=() q; for q in "${LIVE[@]}"; do [ "$q" = "$vpid" ] || keep+=("$q"); done; LIVE=("${keep[@]}")
  keep=(); for q in "${PIDS[@]}"; do [ "$q" = "$vpid" ] || keep+=("$q"); done; PIDS=("${keep[@]}")
  local cmd
  read -r -a cmd <<<"${CMD_OF[$victim]}"    # raftkv: no -join (data dir has the cluster state)
  local t0; t0=$(date +%s%N)
  spawn "$victim" "$dir/restart-$sys.log" "${cmd[@]}"
  if "$LOADGEN" wait-read --system "$sys" --target "$victim" --key bench-marker --value "$marker" --timeout 600 >/dev/null; then
    echo "restart_s=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.2f", (b-a)/1e9}')" >> "$out"
  else
    echo "restart_s=FAILED" >> "$out"
  fi
  echo "rss_after_restart_mib=$(rss_mib "${PID_OF[$victim]}")" >> "$out"
  log "big: $sys: $(tr '\n' ' ' < "$out")"
  stop_cluster; cp "$dir"/*.log "$RESULTS/" 2>/dev/null || true; rm -rf "$dir"
}

if [ $BIG = 1 ]; then
  if [ $DO_RAFTKV = 1 ]; then big raftkv; fi
  if [ $DO_ETCD = 1 ]; then big etcd; fi
fi

# ------------------------------------------------------------------------------------------------
# 7. the table
"$LOADGEN" report --dir "$RESULTS" | tee "$RESULTS/report.md"
log "done; per-scenario files and report.md in $RESULTS"
