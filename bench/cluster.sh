# Shared by bench/run.sh and bench/curve.sh (sourced, not run): process bookkeeping, the 127.0.0.1
# clusters of raftkv and etcd (3 or 5 nodes), one measured scenario.
#
# The sourcing script sets: LOADGEN, RAFTKV, RAFTKV_ARGS, WORK (temp dir removed on exit),
# DURATION, WARMUP, KEYS. NODES (default 3, at most 5) is read at each start_*.
# Ports: raftkv 24001-24005 (RK_PORTS_LIST overrides: bench/ab.sh uses 25001-25003, so an A/B
# can run beside another benchmark's clusters); etcd clients 24101-24105, peers 24201-24205.
#
# Every process started here is stopped by PID on exit (trap), and WORK is removed. Every wait
# is bounded.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_loadgen() { [ -x "$LOADGEN" ] || die "build the load generator first: (cd bench/loadgen && cargo build --release --locked)"; }
need_perf() { command -v perf >/dev/null || die "perf not installed (apt-get install linux-perf)"; }

read -r -a RK_PORTS <<<"${RK_PORTS_LIST:-24001 24002 24003 24004 24005}"
ET_CPORTS=(24101 24102 24103 24104 24105)
ET_PPORTS=(24201 24202 24203 24204 24205)
NODES="${NODES:-3}"

LIVE=()          # PIDs of server processes we started and have not stopped yet
WORK="${WORK:-}"
PIDS=()
declare -A PID_OF
declare -A CMD_OF

stop_pids() {    # stop_pids PID...: SIGTERM, up to 10 s, then SIGKILL; reaps them
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  local keep=() q
  for q in "${LIVE[@]}"; do
    local gone=0
    for p in "$@"; do [ "$p" = "$q" ] && gone=1; done
    [ $gone = 1 ] || keep+=("$q")
  done
  LIVE=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#LIVE[@]} -gt 0 ]; then log "stopping ${#LIVE[@]} server process(es)"; stop_pids "${LIVE[@]}"; fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports_free() {
  local p
  for p in "$@"; do port_busy "$p" && die "port 127.0.0.1:$p is already in use (another benchmark running?)"; done
  return 0
}

check_nodes() {
  case "$NODES" in 1|2|3|4|5) ;; *) die "NODES=$NODES: 1 to 5 nodes" ;; esac
  [ "$NODES" -le ${#RK_PORTS[@]} ] || die "NODES=$NODES but only ${#RK_PORTS[@]} raftkv ports"
}

# Each start_* sets LEADER, FOLLOWERS (array), ALL (comma list), PIDS (array), PID_OF (addr->pid),
# CMD_OF (addr->command line).

spawn() {   # spawn ADDR LOGFILE CMD...: starts a server in the background, records its PID
  local addr="$1" logf="$2"; shift 2
  "$@" >>"$logf" 2>&1 &
  local pid=$!
  LIVE+=("$pid"); PIDS+=("$pid"); PID_OF[$addr]=$pid
}

set_roles() {   # set_roles "LEADER F1 F2 ..." PORTS...: LEADER, FOLLOWERS, ALL
  local ready="$1"; shift
  local rest
  read -r LEADER rest <<<"$ready"
  read -r -a FOLLOWERS <<<"$rest"
  local p all=""
  for p in "$@"; do all+="${all:+,}127.0.0.1:$p"; done
  ALL="$all"
}

start_raftkv() {   # start_raftkv DIR EXTRA_ARGS: NODES nodes, the first bootstraps, the others join it
  local dir="$1" extra="$2" i
  check_nodes
  local ports=("${RK_PORTS[@]:0:$NODES}")
  check_ports_free "${ports[@]}"
  PIDS=(); PID_OF=(); CMD_OF=()
  mkdir -p "$dir"
  for i in $(seq 0 $((NODES - 1))); do
    local addr="127.0.0.1:${ports[$i]}"
    local join=()
    [ "$i" -gt 0 ] && join=(-join "127.0.0.1:${ports[0]}")
    # shellcheck disable=SC2206
    local cmd=("$RAFTKV" -haddr "$addr" -id "n$i" ${extra} $RAFTKV_ARGS "$dir/n$i")
    CMD_OF[$addr]="${cmd[*]}"
    spawn "$addr" "$dir/n$i.log" "${cmd[@]:0:${#cmd[@]}-1}" "${join[@]}" "$dir/n$i"
    timeout 90 "$LOADGEN" raftkv-ready --target "127.0.0.1:${ports[0]}" --voters $((i + 1)) --timeout 60 >/dev/null \
      || { tail -20 "$dir"/n*.log >&2; die "raftkv node n$i did not join"; }
  done
  local ready
  ready="$(timeout 90 "$LOADGEN" raftkv-ready --target "127.0.0.1:${ports[0]}" --voters "$NODES" --timeout 60)"
  set_roles "$ready" "${ports[@]}"
  log "raftkv up ($NODES nodes): leader $LEADER, followers ${FOLLOWERS[*]} (pids ${PIDS[*]})"
}

start_etcd() {   # start_etcd DIR: NODES members, started together
  local dir="$1" i cluster=""
  check_nodes
  local cports=("${ET_CPORTS[@]:0:$NODES}") pports=("${ET_PPORTS[@]:0:$NODES}")
  check_ports_free "${cports[@]}" "${pports[@]}"
  PIDS=(); PID_OF=(); CMD_OF=()
  mkdir -p "$dir"
  for i in $(seq 0 $((NODES - 1))); do cluster+="${cluster:+,}e$i=http://127.0.0.1:${pports[$i]}"; done
  for i in $(seq 0 $((NODES - 1))); do
    local addr="127.0.0.1:${cports[$i]}"
    local cmd=(etcd --name "e$i" --data-dir "$dir/e$i"
      --listen-client-urls "http://$addr" --advertise-client-urls "http://$addr"
      --listen-peer-urls "http://127.0.0.1:${pports[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}"
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token raftkv-bench
      --logger zap --log-level warn --quota-backend-bytes 8589934592)
    CMD_OF[$addr]="${cmd[*]}"
    spawn "$addr" "$dir/e$i.log" "${cmd[@]}"
  done
  local targets="" p ready
  for p in "${cports[@]}"; do targets+="${targets:+,}127.0.0.1:$p"; done
  ready="$(timeout 90 "$LOADGEN" etcd-ready --target "$targets" --timeout 60)" \
    || { tail -20 "$dir"/e*.log >&2; die "etcd cluster did not start"; }
  set_roles "$ready" "${cports[@]}"
  log "etcd up ($NODES members): leader $LEADER, followers ${FOLLOWERS[*]} (pids ${PIDS[*]})"
}

stop_cluster() { stop_pids "${PIDS[@]}"; PIDS=(); sleep 2; }   # let the page cache settle

pidlist() { local IFS=,; echo "${PIDS[*]}"; }

scenario() {   # scenario SYSTEM NAME OUTFILE loadgen-run-args...
  local sys="$1" name="$2" out="$3"; shift 3
  local bound=$(( ${DURATION%.*} + ${WARMUP%.*} + 60 + ${EXTRA_BOUND:-0} ))
  log "$sys $name"
  timeout "$bound" "$LOADGEN" run --system "$sys" --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" \
    --pids "$(pidlist)" --out "$out" "$@" >/dev/null || log "warning: $sys $name: loadgen failed (rc=$?)"
  [ -f "$out" ] && log "  $(grep -E '^(ops_per_s|p50_us|p99_us|errors|cpu_s_per_1k)=' "$out" | tr '\n' ' ')"
  return 0
}

preload() {   # preload SYSTEM KEYS OUTFILE: writes keys 0..KEYS once through the leader
  local sys="$1" keys="$2" out="$3"
  log "$sys: preloading $keys keys"
  timeout 3600 "$LOADGEN" load --system "$sys" --target "$LEADER" --keys "$keys" --clients 64 --max-seconds 3000 > "$out" \
    || log "warning: $sys preload incomplete: $(tr '\n' ' ' < "$out")"
}

idle_now() { "$LOADGEN" idle --ms 1000; }

# For the tables of bench/ab.sh and bench/wan.sh: one `key=value` of a loadgen output file, and
# the median of the numbers on stdin ("-" if none).
field() { sed -n "s/^$1=//p" "$2"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2); else print "-"}'; }
