"""Open-loop writers against one raftkv node: each of THREADS threads writes a 100-byte value over
its own keep-alive HTTP connection, then sleeps an exponential think time (mean THINK_MS), until
SECS have passed. Prints the count and the write latency p50/p90/p99/p99.9 in µs.

    python3 bench/openloop.py HOST:PORT THREADS THINK_MS SECS

Used by bench/openloop.sh to check that a batching policy does not delay writers that pause
between writes (BENCHMARKS.md, "Gathering closed-loop writers"). The client's own overhead
(Python, its GIL) is in every figure: compare builds in the same sitting, not against other tools.
"""
import http.client
import random
import sys
import threading
import time


def main():
    addr, threads, think_ms, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    host, port = addr.rsplit(":", 1)
    latencies = []
    lock = threading.Lock()
    stop = time.time() + secs
    failures = []

    def writer(t):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        mine = []
        i = 0
        while time.time() < stop:
            started = time.perf_counter()
            conn.request("POST", f"/db/ol{t}-{i % 1000}", body=b"x" * 100)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
                break
            mine.append((time.perf_counter() - started) * 1e6)
            i += 1
            time.sleep(random.expovariate(1.0 / think_ms) / 1000.0)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures or not latencies:
        sys.exit(f"openloop: {len(failures)} writers got a non-200 answer: {failures[:5]}")
    latencies.sort()

    def q(p):
        return int(latencies[min(len(latencies) - 1, int(p * len(latencies)))])

    print(f"writes={len(latencies)} p50_us={q(.5)} p90_us={q(.9)} p99_us={q(.99)} p999_us={q(.999)}")


if __name__ == "__main__":
    main()
