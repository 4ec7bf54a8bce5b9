"""What `ray_side.py` and `dask_side.py` share: memory of a process tree, percentiles, and
report lines in the format of `examples/bench.rs`."""

import json
import os
import statistics


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
