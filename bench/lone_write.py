"""Where the CPU of one client's writes goes, thread by thread (bench/lone-write.sh, PROFILE=1).

Arguments: PERF_DATA OPS_PER_S SECONDS LEADER_PID FOLLOWER_PID... — a `perf record -a -g -F 2999`
of the whole machine for SECONDS while one client wrote at OPS_PER_S. Prints each thread's CPU
µs per write (one sample = 1/2999 s of CPU), the functions the leader's samples land in most
(kernel ones included), then how the leader's tokio workers' samples split over the tasks they
ran, by the outermost known frame of each stack. Stacks need a frame-pointer build of raftkv; a
stack cut short counts under "other".
"""

import collections
import subprocess
import sys

HZ = 2999
# (label, substring of a frame), the outermost matching frame decides; checked in this order.
TASKS = [
    ("openraft core task", "RaftCore<C,NF,LS,SM>::do_main"),
    ("client HTTP connections (hyper, axum, handlers)", "raftkv::serve::serve"),
    ("peer links, append pipeline", "raftkv::raft::network::pipeline"),
    ("peer links, append pipeline", "raftkv::peer::link"),
    ("state machine task", "state_machine"),
    ("openraft replication tasks", "replication::"),
    ("parked (epoll_wait, futex)", "park_internal"),
    ("socket sends (stack cut at libc)", "__send"),
    ("socket reads (stack cut at libc)", "__libc_recv"),
]


def samples(path):
    """Yields (pid, tid, comm, [frames, innermost first]) for each sample."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,pid,tid,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    for block in out.split("\n\n"):
        lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
        if not lines:
            continue
        head = lines[0].rsplit(None, 1)
        if len(head) != 2 or "/" not in head[1]:
            continue
        comm = head[0]
        pid, tid = (int(x) for x in head[1].split("/"))
        frames = [l.split(None, 1)[1] if " " in l else l for l in lines[1:]]
        yield pid, tid, comm, frames


def main():
    path, ops, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    roles = {int(p): ("leader" if i == 0 else f"follower {i}") for i, p in enumerate(sys.argv[4:])}
    writes = ops * secs
    per_thread = collections.Counter()
    split = collections.Counter()
    leaves = collections.Counter()
    leader_samples = 0
    worker_samples = 0
    for pid, tid, comm, frames in samples(path):
        role = roles.get(pid)
        if role is None:
            continue
        per_thread[(role, comm, tid)] += 1
        if role != "leader":
            continue
        leader_samples += 1
        leaves[frames[0] if frames else "?"] += 1
        if comm != "tokio-rt-worker":
            continue
        worker_samples += 1
        label = "other (tokio's scheduler, timers, cut stacks)"
        for frame in reversed(frames):
            hit = next((name for name, sub in TASKS if sub in frame), None)
            if hit:
                label = hit
                break
        split[label] += 1

    def us(n):
        return n * 1e6 / HZ / writes

    print("| thread | CPU µs per write |")
    print("|---|---:|")
    for (role, comm, tid), n in sorted(per_thread.items(), key=lambda kv: (kv[0][0], -kv[1])):
        print(f"| {role} {comm} ({tid}) | {us(n):.0f} |")
    print()
    print("| the leader's samples land in | share |")
    print("|---|---:|")
    for leaf, n in leaves.most_common(8):
        print(f"| `{leaf[:80]}` | {100 * n / max(leader_samples, 1):.1f} % |")
    print()
    print(f"leader's tokio workers: {us(worker_samples):.0f} µs per write")
    print("| task | CPU µs per write | share |")
    print("|---|---:|---:|")
    for label, n in split.most_common():
        print(f"| {label} | {us(n):.0f} | {100 * n / max(worker_samples, 1):.0f} % |")


if __name__ == "__main__":
    main()
