#!/usr/bin/env bash
# The scale curve: raftkv and etcd in the same run, the same load generator and the same client
# library (etcd's v3 gRPC API through the etcd-client crate, one HTTP/2 connection per client),
# throughput and p50/p99 latency against the number of clients, for 3- and 5-node clusters and
# growing key counts. Draws the pictures itself (`loadgen plot`: SVG) and a table. See BENCHMARKS.md.
#
#   bash bench/curve.sh                                    # the whole curve (about an hour)
#   bash bench/curve.sh --configs 3x100000 --clients 1,16,256 --duration 3 --warmup 1   # smoke
#
# Options (defaults in brackets):
#   --configs "NxK .." [3x100000 5x100000 3x1000000 3x5000000]   clusters of N nodes holding K keys
#   --clients LIST [1,4,16,64,256,1024]   closed-loop clients of each point (all to the leader)
#   --ops LIST [write,lread]   write = Put of one key; lread = linearizable Range of one key
#   --systems LIST [raftkv,etcd]
#   --duration S [5]  --warmup S [1]      measured / unmeasured seconds per point
#   --raftkv-args "..." [--max-connections 4096]   flags for every raftkv node (1,024 clients and
#                                          the peers exceed raftkv's default of 1,024 connections)
#   --no-build            use the existing release binaries
#   --results DIR [bench/results/curve-<date>]   per-point files, curve_<op>.svg, curve.md
#   --data-dir DIR [bench/tmp.XXXX]        parent of the nodes' data dirs (must be on the disk to test)
#
# Each config starts a fresh cluster per system, preloads K keys (64 clients, HTTP), then runs every
# op at every client count, lowest first. Traffic goes to 127.0.0.1 only. Every process started here
# is stopped by PID on exit (trap), and the data dirs are removed. Every wait is bounded.
set -euo pipefail

BENCH="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"

CONFIGS="3x100000 5x100000 3x1000000 3x5000000" CLIENTS_LIST="1,4,16,64,256,1024" OPS="write,lread"
SYSTEMS="raftkv,etcd" DURATION=5 WARMUP=1 RAFTKV_ARGS="--max-connections 4096" BUILD=1
RESULTS="" DATA_PARENT=""
ORIG_ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --configs) CONFIGS="$2"; shift ;;
    --clients) CLIENTS_LIST="$2"; shift ;;
    --ops) OPS="$2"; shift ;;
    --systems) SYSTEMS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --raftkv-args) RAFTKV_ARGS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --results) RESULTS="$2"; shift ;;
    --data-dir) DATA_PARENT="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "curve.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=bench/cluster.sh
source "$BENCH/cluster.sh"

LOADGEN="$BENCH/loadgen/target/release/loadgen"
RAFTKV="$REPO/target/release/raftkv"
if [ $BUILD = 1 ]; then
  log "building raftkv and loadgen (release)"
  (cd "$REPO" && cargo build --release --locked --quiet)
  (cd "$BENCH/loadgen" && cargo build --release --locked --quiet)
fi
[ -x "$LOADGEN" ] || die "no $LOADGEN"
case ",$SYSTEMS," in *,raftkv,*) [ -x "$RAFTKV" ] || die "no $RAFTKV" ;; esac
case ",$SYSTEMS," in *,etcd,*) command -v etcd >/dev/null || die "etcd not installed (apt-get install etcd-server)" ;; esac

# 1,024 clients are 1,024 sockets in the generator and in the leader: raise the descriptor limit
# to the hard limit (bounded, inherited by the servers started below).
ulimit -n "$(ulimit -H -n)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 4096 ] || log "warning: ulimit -n is $(ulimit -n): the 1,024-client points may fail"

[ -n "$RESULTS" ] || RESULTS="$BENCH/results/curve-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
if [ -n "$DATA_PARENT" ]; then mkdir -p "$DATA_PARENT"; WORK="$(mktemp -d "$DATA_PARENT/raftkv-curve.XXXXXX")"
else WORK="$(mktemp -d "$BENCH/tmp.XXXXXX")"; fi
FSTYPE="$(df -PT "$WORK" | awk 'NR==2{print $2}')"
[ "$FSTYPE" = tmpfs ] && log "warning: $WORK is on tmpfs: fsync costs nothing there, use --data-dir on a real disk"
{
  echo "command=bench/curve.sh $ORIG_ARGS"
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$(nproc)"
  echo "fs=$FSTYPE"
  echo "etcd_version=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
  echo "raftkv_args=$RAFTKV_ARGS"
  echo "duration_s=$DURATION"; echo "warmup_s=$WARMUP"
} > "$RESULTS/curve.txt"
log "results in $RESULTS; data dirs under $WORK ($FSTYPE)"

IFS=, read -r -a CLIENTS_ARR <<<"$CLIENTS_LIST"
IFS=, read -r -a OPS_ARR <<<"$OPS"
IFS=, read -r -a SYS_ARR <<<"$SYSTEMS"
for cfg in $CONFIGS; do
  NODES="${cfg%x*}" KEYS="${cfg#*x}"
  [[ "$NODES" =~ ^[0-9]+$ && "$KEYS" =~ ^[0-9]+$ ]] || die "--configs: '$cfg' is not NODESxKEYS"
  for sys in "${SYS_ARR[@]}"; do
    dir="$WORK/$sys-$cfg"
    log "config $cfg: $sys, $NODES nodes, $KEYS keys (machine idle CPU $(idle_now)%)"
    case "$sys" in
      raftkv) start_raftkv "$dir" "" ;;
      etcd) start_etcd "$dir" ;;
      *) die "--systems: unknown system $sys" ;;
    esac
    preload "$sys" "$KEYS" "$RESULTS/${sys}_n${NODES}_k${KEYS}_preload.txt"
    for op in "${OPS_ARR[@]}"; do
      for c in "${CLIENTS_ARR[@]}"; do
        scenario "$sys" "$op, $c clients ($NODES nodes, $KEYS keys)" "$RESULTS/${sys}_n${NODES}_k${KEYS}_${op}_c${c}.txt" \
          --api grpc --op "$op" --clients "$c" --target "$LEADER"
      done
    done
    stop_cluster
    for f in "$dir"/*.log; do [ -f "$f" ] && cp "$f" "$RESULTS/${sys}_${cfg}_$(basename "$f")"; done
    rm -rf "$dir"
  done
done

"$LOADGEN" plot --dir "$RESULTS" | tee "$RESULTS/curve.md"
log "done: $RESULTS/curve_*.svg and curve.md"
