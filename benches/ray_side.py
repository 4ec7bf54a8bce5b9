#!/usr/bin/env python3
"""Ray's side of `benches/compare.sh`: the workloads of `examples/bench.rs`, with the same
parameters, printed as the same JSON lines (`--json`) or the same text lines.

Needs `pip install ray numpy`. Run by compare.sh; alone: `python3 benches/ray_side.py --json`.
"""

import time

BEGAN = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_common import percentile, report, tree_rss  # noqa: E402


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
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")

    @ray.remote
    def noop():
        return None

    if args.startup_probe:
        ray.get(noop.remote())
        print(time.perf_counter() - BEGAN)
        return

    @ray.remote
    def mib(i):
        return np.full(1 << 20, i % 256, dtype=np.uint8)

    @ray.remote
    def reduce(*parts):
        return sum(len(p) for p in parts)

    @ray.remote
    def nxt(x):
        return x + 1

    @ray.remote
    class Counter:
        def __init__(self):
            self.calls = 0

        def tick(self):
            self.calls += 1
            return self.calls

    ray.get([noop.remote() for _ in range(1_000)])

    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        ray.get([noop.remote() for _ in range(args.tasks)])
        rates.append(args.tasks / (time.perf_counter() - start))
    report(args, "noop-tasks", "tasks/s", [("throughput", rates)])

    p50s, p99s = [], []
    for _ in range(args.runs):
        times = []
        for _ in range(args.round_trips):
            start = time.perf_counter()
            ray.get(noop.remote())
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

    counter = Counter.remote()
    ray.get(counter.tick.remote())
    rates, p50s = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        ray.get([counter.tick.remote() for _ in range(args.tasks)])
        rates.append(args.tasks / (time.perf_counter() - start))
        times = []
        for _ in range(args.round_trips):
            start = time.perf_counter()
            ray.get(counter.tick.remote())
            times.append((time.perf_counter() - start) * 1e6)
        times.sort()
        p50s.append(percentile(times, 0.50))
    report(args, "actor-calls", "", [("calls/s", rates), ("sync p50 us", p50s)])

    buffer = np.full(100 << 20, 7, dtype=np.uint8)
    puts, gets = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        r = ray.put(buffer)
        puts.append(buffer.nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        back = ray.get(r)  # zero-copy: a read-only view of the object store
        gets.append(buffer.nbytes / (time.perf_counter() - start) / 1e9)
        assert back.nbytes == buffer.nbytes
        del back, r
    report(args, "put-get", "GB/s", [("put", puts), ("get", gets)])

    small = bytes(1024)
    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        refs = [ray.put(small) for _ in range(10_000)]
        rates.append(len(refs) / (time.perf_counter() - start))
        del refs
    report(args, "small-puts", "puts/s", [("rate", rates)])

    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        maps = [mib.remote(i) for i in range(200)]
        reduces = [reduce.remote(*maps[i : i + 20]) for i in range(0, 200, 20)]
        assert sum(ray.get(reduces)) == 200 << 20
        walls.append(time.perf_counter() - start)
        del maps, reduces
    report(args, "map-reduce", "s", [("wall", walls)])

    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        last = nxt.remote(0)
        for _ in range(1, 1_000):
            last = nxt.remote(last)
        assert ray.get(last) == 1_000
        walls.append(time.perf_counter() - start)
    report(args, "chain", "s", [("wall", walls)])
    ray.shutdown()


if __name__ == "__main__":
    main()
