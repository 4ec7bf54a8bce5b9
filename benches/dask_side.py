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
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_common import (  # noqa: E402
    MAP_REDUCE_WARM_UPS,
    PUT_WARM_UPS,
    common_arguments,
    idle_memory,
    latencies,
    percentile,
    rates,
    reconstructions,
    report,
    startups,
    walls,
)


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


def reconstruction_probe():
    """Workload 9: two single-threaded worker processes; a 1 MiB value made on the second; that
    worker's process killed (its nanny starts another); the seconds from the kill to the value
    read again, recomputed by the scheduler. Dask notices a dead worker when its connection
    closes, so no timeout applies."""
    from dask.distributed import Client, LocalCluster, wait

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    victim = sorted(client.scheduler_info()["workers"])[1]
    value = client.submit(mib, 9, workers=[victim], allow_other_workers=True, pure=False)
    wait(value)
    killed = time.perf_counter()
    try:
        client.run(os._exit, 1, workers=[victim], wait=False)
    except Exception:  # the worker dies under the call
        pass
    back = value.result()
    seconds = time.perf_counter() - killed
    assert back.nbytes == 1 << 20 and (back == 9).all()
    client.close()
    cluster.close()
    print(seconds)


def main():
    args = common_arguments(argparse.ArgumentParser())
    if args.reconstruction_probe:
        reconstruction_probe()
        return

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
    report(args, "idle-memory", "MiB", [("resident", idle_memory(args.runs))])

    throughput = rates(args.runs, args.tasks, lambda: client.gather(client.map(noop, range(args.tasks), pure=False)))
    report(args, "noop-tasks", "tasks/s", [("throughput", throughput)])
    trips = [latencies(args.round_trips, lambda: client.submit(noop, pure=False).result()) for _ in range(args.runs)]
    report(args, "round-trip", "us", [("p50", [percentile(t, 0.50) for t in trips]), ("p99", [percentile(t, 0.99) for t in trips])])
    report(args, "startup", "ms", [("to first result", startups(args.runs, __file__, args.cpus))])
    report(args, "reconstruction", "s", [("kill to value", reconstructions(args.runs, __file__, args.cpus))])

    counter = client.submit(Counter, actor=True).result()
    counter.tick().result()

    def many_calls():
        for call in [counter.tick() for _ in range(args.tasks)]:
            call.result()

    calls = rates(args.runs, args.tasks, many_calls)
    sync = [percentile(latencies(args.round_trips, lambda: counter.tick().result()), 0.50) for _ in range(args.runs)]
    report(args, "actor-calls", "", [("calls/s", calls), ("sync p50 us", sync)])

    buffer = np.full(100 << 20, 7, dtype=np.uint8)
    puts, gets = [], []
    for _ in range(PUT_WARM_UPS):
        future = client.scatter(buffer)
        assert future.result().nbytes == buffer.nbytes
        del future
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
    scatter = lambda: [client.scatter(small, hash=False) for _ in range(10_000)]  # noqa: E731
    report(args, "small-puts", "puts/s", [("rate", rates(args.runs, 10_000, scatter))])

    def map_reduce():
        maps = client.map(mib, range(200), pure=False)
        reduces = [client.submit(reduce, *maps[i : i + 20], pure=False) for i in range(0, 200, 20)]
        assert sum(client.gather(reduces)) == 200 << 20

    for _ in range(MAP_REDUCE_WARM_UPS):
        map_reduce()
    report(args, "map-reduce", "s", [("wall", walls(args.runs, map_reduce))])

    def chain():
        last = client.submit(nxt, 0, pure=False)
        for _ in range(1, 1_000):
            last = client.submit(nxt, last, pure=False)
        assert last.result() == 1_000

    report(args, "chain", "s", [("wall", walls(args.runs, chain))])
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
