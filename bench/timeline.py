"""Follows each 1-client write through a `perf script` trace of system calls (bench/timeline.sh).

Arguments: TRACE LEADER_PID FOLLOWER1_PID FOLLOWER2_PID LOADGEN_PID. A write is the span between
two requests the load generator writes; in it: the leader reads the request, its log thread
fsyncs, it writes the append to each follower, each follower reads it, fsyncs and writes its
ack, the leader reads the first ack (with its own fsync done, a majority has the entry: commit),
writes the answer, and the client reads it. Messages are told apart by size (the most common
size of each kind in the trace). Prints a markdown table of each step's p50, p10 and p90 (µs).
"""

import bisect
import collections
import re
import sys

SYSCALLS = {1: "write", 20: "writev", 44: "sendto", 45: "recvfrom", 75: "fdatasync"}
LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def load(path, roles):
    events = []  # (µs, role, on the log's flush thread, syscall, '>' enter / '<' exit, result)
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, _tid, _cpu, t, event, rest = m.groups()
        role = roles.get(int(pid))
        if role is None or "raw_syscalls" not in event:
            continue
        nr = int(re.search(r"NR (\d+)", rest).group(1))
        if nr not in SYSCALLS:
            continue
        wal = "wal" in comm
        if event.endswith("sys_enter"):
            events.append((float(t) * 1e6, role, wal, SYSCALLS[nr], ">", None))
        else:
            events.append((float(t) * 1e6, role, wal, SYSCALLS[nr], "<", int(rest.split("=")[-1])))
    return events


def main():
    path, leader, f1, f2, client = sys.argv[1], *map(int, sys.argv[2:6])
    roles = {leader: "L", f1: "F1", f2: "F2", client: "G"}
    ev = load(path, roles)
    times = [e[0] for e in ev]

    def sizes(role, call):
        return collections.Counter(e[5] for e in ev if e[1] == role and e[3] == call and e[4] == "<")

    request = sizes("G", "writev").most_common(1)[0][0]
    answer = sizes("G", "recvfrom").most_common(1)[0][0]
    append = max(s for s, _ in sizes("L", "sendto").most_common(2))
    ack = sizes("F1", "sendto").most_common(1)[0][0]

    def first(t0, t1, role, call, end, size=None, wal=None):
        i = bisect.bisect_left(times, t0)
        while i < len(ev) and ev[i][0] < t1:
            e = ev[i]
            if (e[1] == role and e[3] == call and e[4] == end and (size is None or e[5] == size)
                    and (wal is None or e[2] == wal)):
                return e[0]
            i += 1
        return None

    starts = [e[0] for e in ev if e[1] == "G" and e[3] == "writev" and e[4] == "<" and e[5] == request]
    writes = []
    for t0, t1 in zip(starts, starts[1:]):
        w = {"send": t0, "L_recv": first(t0, t1, "L", "recvfrom", "<", request)}
        if w["L_recv"] is None:
            continue
        w["L_fs0"] = first(w["L_recv"], t1, "L", "fdatasync", ">", wal=True)
        w["L_app"] = first(w["L_recv"], t1, "L", "sendto", "<", append)
        if w["L_fs0"] is None or w["L_app"] is None:
            continue
        w["L_fs1"] = first(w["L_fs0"], t1, "L", "fdatasync", "<", wal=True)
        acks = []
        for f in ("F1", "F2"):
            got = first(w["L_app"], t1, f, "recvfrom", "<", append)
            f0 = got and first(got, t1, f, "fdatasync", ">", wal=True)
            f1_ = f0 and first(f0, t1, f, "fdatasync", "<", wal=True)
            sent = f1_ and first(f1_, t1, f, "sendto", "<", ack)
            if sent:
                acks.append((sent, got, f0, f1_))
        if not acks or w["L_fs1"] is None:
            continue
        w["ack"], w["F_recv"], w["F_fs0"], w["F_fs1"] = min(acks)
        w["L_ack"] = first(w["ack"], t1, "L", "recvfrom", "<", ack)
        if w["L_ack"] is None:
            continue
        w["L_resp"] = first(max(w["L_fs1"], w["L_ack"]), t1, "L", "writev", "<", answer)
        w["G_recv"] = w["L_resp"] and first(w["L_resp"], t1, "G", "recvfrom", "<", answer)
        if w["G_recv"]:
            writes.append(w)
    print(f"{len(starts) - 1} writes traced, {len(writes)} with every step found "
          f"(request {request} B, append {append} B, ack {ack} B, answer {answer} B)")
    if not writes:
        return

    def q(f):
        v = sorted(f(w) for w in writes)
        return v[len(v) // 2], v[len(v) // 10], v[9 * len(v) // 10]

    steps = [
        ("client writes the request → leader reads it", lambda w: w["L_recv"] - w["send"]),
        ("leader reads the request → writes the first append", lambda w: w["L_app"] - w["L_recv"]),
        ("leader reads the request → its log's fdatasync starts", lambda w: w["L_fs0"] - w["L_recv"]),
        ("leader's fdatasync", lambda w: w["L_fs1"] - w["L_fs0"]),
        ("append written → the first-acking follower reads it", lambda w: w["F_recv"] - w["L_app"]),
        ("follower reads the append → its fdatasync starts", lambda w: w["F_fs0"] - w["F_recv"]),
        ("follower's fdatasync", lambda w: w["F_fs1"] - w["F_fs0"]),
        ("follower's fdatasync returns → it writes the ack", lambda w: w["ack"] - w["F_fs1"]),
        ("ack written → leader reads it", lambda w: w["L_ack"] - w["ack"]),
        ("commit (own fsync done and ack read) → answer written",
         lambda w: w["L_resp"] - max(w["L_fs1"], w["L_ack"])),
        ("answer written → client reads it", lambda w: w["G_recv"] - w["L_resp"]),
        ("**client writes the request → reads the answer**", lambda w: w["G_recv"] - w["send"]),
        ("leader's own fsync done minus ack read (< 0: the ack came later)",
         lambda w: w["L_fs1"] - w["L_ack"]),
    ]
    print("| step | p50 µs | p10 | p90 |")
    print("|---|---:|---:|---:|")
    for name, f in steps:
        p50, p10, p90 = q(f)
        print(f"| {name} | {p50:.0f} | {p10:.0f} | {p90:.0f} |")


if __name__ == "__main__":
    main()
