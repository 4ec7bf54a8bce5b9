#!/usr/bin/env python3
"""Ray's side of `benches/compare.sh`: the workloads of `examples/bench.rs`, with the same
parameters, printed as the same JSON lines (`--json`) or the same text lines.

Needs `pip install ray numpy`. Run by compare.sh; alone: `python3 benches/ray_side.py --json`.
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


def reconstruction_probe():
    """Workload 9: two one-CPU nodes under a head whose health checks declare a node dead after
    1 s (every 100 ms, 10 misses); a 1 MiB value made on the second node; that node killed; the
    seconds from the kill to the value read again (rebuilt from its lineage on the first)."""
    import numpy as np
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    checks = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 100,
        "health_check_timeout_ms": 100,
        "health_check_failure_threshold": 10,
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": checks})
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)

    @ray.remote(max_retries=3)
    def mib(i):
        return np.full(1 << 20, i, dtype=np.uint8)

    on_victim = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
    value = mib.options(scheduling_strategy=on_victim).remote(9)
    ray.wait([value], fetch_local=False)
    killed = time.perf_counter()
    cluster.remove_node(victim, allow_graceful=False)
    back = ray.get(value)
    seconds = time.perf_counter() - killed
    assert back.nbytes == 1 << 20 and (back == 9).all()
    ray.shutdown()
    cluster.shutdown()
    print(seconds)


def main():
    args = common_arguments(argparse.ArgumentParser())
    if args.reconstruction_probe:
        reconstruction_probe()
        return

    import numpy as np
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

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
    report(args, "idle-memory", "MiB", [("resident", idle_memory(args.runs))])

    throughput = rates(args.runs, args.tasks, lambda: ray.get([noop.remote() for _ in range(args.tasks)]))
    report(args, "noop-tasks", "tasks/s", [("throughput", throughput)])
    trips = [latencies(args.round_trips, lambda: ray.get(noop.remote())) for _ in range(args.runs)]
    report(args, "round-trip", "us", [("p50", [percentile(t, 0.50) for t in trips]), ("p99", [percentile(t, 0.99) for t in trips])])
    report(args, "startup", "ms", [("to first result", startups(args.runs, __file__, args.cpus))])
    report(args, "reconstruction", "s", [("kill to value", reconstructions(args.runs, __file__, args.cpus))])

    counter = Counter.remote()
    ray.get(counter.tick.remote())
    calls = rates(args.runs, args.tasks, lambda: ray.get([counter.tick.remote() for _ in range(args.tasks)]))
    sync = [percentile(latencies(args.round_trips, lambda: ray.get(counter.tick.remote())), 0.50) for _ in range(args.runs)]
    report(args, "actor-calls", "", [("calls/s", calls), ("sync p50 us", sync)])

    buffer = np.full(100 << 20, 7, dtype=np.uint8)
    puts, gets = [], []
    for _ in range(PUT_WARM_UPS):
        r = ray.put(buffer)
        assert ray.get(r).nbytes == buffer.nbytes
        del r
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
    report(args, "small-puts", "puts/s", [("rate", rates(args.runs, 10_000, lambda: [ray.put(small) for _ in range(10_000)]))])

    def map_reduce():
        maps = [mib.remote(i) for i in range(200)]
        reduces = [reduce.remote(*maps[i : i + 20]) for i in range(0, 200, 20)]
        assert sum(ray.get(reduces)) == 200 << 20

    for _ in range(MAP_REDUCE_WARM_UPS):
        map_reduce()
    report(args, "map-reduce", "s", [("wall", walls(args.runs, map_reduce))])

    def chain():
        last = nxt.remote(0)
        for _ in range(1, 1_000):
            last = nxt.remote(last)
        assert ray.get(last) == 1_000

    report(args, "chain", "s", [("wall", walls(args.runs, chain))])
    ray.shutdown()


if __name__ == "__main__":
    main()
