"""What `ray_side.py` and `dask_side.py` share: the options, the timing loops, memory of a
process tree, percentiles, and report lines in the format of `examples/bench.rs`."""

import json
import os
import statistics
import subprocess
import sys
import time


# Rounds of put and get before `put-get` is measured (the same on every side, Keel's included).
PUT_WARM_UPS = 4

# Rounds of `map-reduce` before it is measured (the same on every side).
MAP_REDUCE_WARM_UPS = 1


def tree_rss(pid):
    """Resident memory of `pid` and every process under it, in bytes."""
    rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        return 0
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return rss + sum(tree_rss(c) for c in children)


def percentile(sorted_us, p):
    i = min(max(int(-(-len(sorted_us) * p // 1)), 1), len(sorted_us)) - 1
    return sorted_us[i]


def report(args, name, unit, figures):
    if args.json:
        fields = {
            what: {"median": statistics.median_low(xs), "min": min(xs), "max": max(xs)} for what, xs in figures
        }
        print(json.dumps({"workload": name, "unit": unit, "runs": args.runs, **fields}), flush=True)
    else:
        parts = [f"{what} {statistics.median_low(xs):.4g} {unit} [{min(xs):.4g}, {max(xs):.4g}]" for what, xs in figures]
        print(f"{name:<12} {', '.join(parts)} (median [min, max] of {args.runs} runs)", flush=True)


def rates(runs, count, batch):
    """Per run: `batch()` does `count` operations; their rate per second."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        batch()
        out.append(count / (time.perf_counter() - start))
    return out


def latencies(count, one):
    """`count` sequential calls of `one()`, each timed: sorted microseconds."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        one()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return times


def walls(runs, once):
    """Per run: the seconds `once()` takes."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        out.append(time.perf_counter() - start)
    return out


def idle_memory(runs):
    """Per run, after a pause: the resident memory of this process tree, in MiB."""
    out = []
    for _ in range(runs):
        time.sleep(0.2)
        out.append(tree_rss(os.getpid()) / (1 << 20))
    return out


def probes(runs, script, flag, cpus):
    """Per run: the figure a fresh `script FLAG` process prints last (seconds)."""
    out = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, script, flag, "--cpus", str(cpus)], capture_output=True, text=True, check=True)
        out.append(float(done.stdout.strip().splitlines()[-1]))
    return out


def startups(runs, script, cpus):
    """Per run: a fresh `script --startup-probe` process's time to its first result, in ms."""
    return [s * 1e3 for s in probes(runs, script, "--startup-probe", cpus)]


def reconstructions(runs, script, cpus):
    """Per run: a fresh `script --reconstruction-probe` process's time from killing the node
    that holds a value to the value read again, in seconds."""
    return probes(runs, script, "--reconstruction-probe", cpus)


def common_arguments(parser):
    """The options both sides take, with the defaults of `examples/bench.rs`."""
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--startup-probe", action="store_true")
    parser.add_argument("--reconstruction-probe", action="store_true")
    return parser.parse_args()
