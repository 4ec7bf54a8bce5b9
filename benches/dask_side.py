#!/usr/bin/env python3
"""Dask's side of `benches/compare.sh`: the workloads of `examples/bench.rs` on a local Dask
cluster (one single-threaded worker process per CPU), printed as the same JSON or text lines.

Needs `pip install "dask[distributed]" numpy`. Run by compare.sh; alone:
`python3 benches/dask_side.py --json`.
"""

import time

BEGAN = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_common import percentile, report, tree_rss  # noqa: E402


def noop(_=None):
    return None


def mib(i):
    import numpy as np

    return np.full(1 << 20, i % 256, dtype=np.uint8)


def reduce(*parts):
    return sum(len(p) for p in parts)


def nxt(x):
    return x + 1


class Counter:
    def __init__(self):
        self.calls = 0

    def tick(self):
        self.calls += 1
        return self.calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--startup-probe", action="store_true")
    args = parser.parse_args()

    import numpy as np
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=args.cpus, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)

    if args.startup_probe:
        client.submit(noop, pure=False).result()
        print(time.perf_counter() - BEGAN)
        client.close()
        cluster.close()
        return

    client.gather(client.map(noop, range(1_000), pure=False))

    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        client.gather(client.map(noop, range(args.tasks), pure=False))
        rates.append(args.tasks / (time.perf_counter() - start))
    report(args, "noop-tasks", "tasks/s", [("throughput", rates)])

    p50s, p99s = [], []
    for _ in range(args.runs):
        times = []
        for _ in range(args.round_trips):
            start = time.perf_counter()
            client.submit(noop, pure=False).result()
            times.append((time.perf_counter() - start) * 1e6)
        times.sort()
        p50s.append(percentile(times, 0.50))
        p99s.append(percentile(times, 0.99))
    report(args, "round-trip", "us", [("p50", p50s), ("p99", p99s)])

    idle = []
    for _ in range(args.runs):
        time.sleep(0.2)
        idle.append(tree_rss(os.getpid()) / (1 << 20))
    report(args, "idle-memory", "MiB", [("resident", idle)])

    startups = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, __file__, "--startup-probe", "--cpus", str(args.cpus)],
            capture_output=True,
            text=True,
            check=True,
        )
        startups.append(float(out.stdout.strip().splitlines()[-1]) * 1e3)
    report(args, "startup", "ms", [("to first result", startups)])

    counter = client.submit(Counter, actor=True).result()
    counter.tick().result()
    rates, p50s = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        calls = [counter.tick() for _ in range(args.tasks)]
        for c in calls:
            c.result()
        rates.append(args.tasks / (time.perf_counter() - start))
        times = []
        for _ in range(args.round_trips):
            start = time.perf_counter()
            counter.tick().result()
            times.append((time.perf_counter() - start) * 1e6)
        times.sort()
        p50s.append(percentile(times, 0.50))
    report(args, "actor-calls", "", [("calls/s", rates), ("sync p50 us", p50s)])

    buffer = np.full(100 << 20, 7, dtype=np.uint8)
    puts, gets = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        future = client.scatter(buffer)
        puts.append(buffer.nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        back = future.result()
        gets.append(buffer.nbytes / (time.perf_counter() - start) / 1e9)
        assert back.nbytes == buffer.nbytes
        del back, future
    report(args, "put-get", "GB/s", [("put", puts), ("get", gets)])

    small = bytes(1024)
    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        futures = [client.scatter(small, hash=False) for _ in range(10_000)]
        rates.append(len(futures) / (time.perf_counter() - start))
        del futures
    report(args, "small-puts", "puts/s", [("rate", rates)])

    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        maps = client.map(mib, range(200), pure=False)
        reduces = [client.submit(reduce, *maps[i : i + 20], pure=False) for i in range(0, 200, 20)]
        assert sum(client.gather(reduces)) == 200 << 20
        walls.append(time.perf_counter() - start)
        del maps, reduces
    report(args, "map-reduce", "s", [("wall", walls)])

    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        last = client.submit(nxt, 0, pure=False)
        for _ in range(1, 1_000):
            last = client.submit(nxt, last, pure=False)
        assert last.result() == 1_000
        walls.append(time.perf_counter() - start)
    report(args, "chain", "s", [("wall", walls)])
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
