#!/usr/bin/env bash
# Side-by-side benchmarks: Keel, Ray and Dask on the same workloads, on this machine, in one run.
#
#   benches/compare.sh [--keel-only] [--json] [--runs N]
#
# Keel's side is `examples/bench.rs` (built in release). Ray's and Dask's sides
# (benches/ray_side.py, benches/dask_side.py) run when `python3` can import them (for example in
# a virtualenv: `pip install ray "dask[distributed]" numpy`); when they are absent the script says
# so and runs Keel alone. Every figure is the median of N runs (default 3) with min and max. The
# table's ratio is how many times better Keel is than Ray (above 1: Keel wins), on the figure's own
# sense (higher throughput, lower latency, time and memory).
set -euo pipefail
cd "$(dirname "$0")/.."

keel_only=false json=false runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --keel-only) keel_only=true ;;
    --json) json=true ;;
    --runs) runs="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
PYTHON=${PYTHON:-python3}

echo "keel: building and running examples/bench.rs ($runs runs)..." >&2
cargo build --release --quiet --example bench
env -u KEEL_ADDRESS target/release/examples/bench --json --runs "$runs" > "$out/keel.jsonl"

sides=(keel)
for side in ray dask; do
  if $keel_only; then
    continue
  fi
  module=$side
  [ "$side" = dask ] && module="dask.distributed"
  if command -v "$PYTHON" >/dev/null && "$PYTHON" -c "import $module, numpy" 2>/dev/null; then
    echo "$side: running benches/${side}_side.py ($runs runs)..." >&2
    "$PYTHON" "benches/${side}_side.py" --json --runs "$runs" > "$out/$side.jsonl"
    sides+=("$side")
  else
    echo "$side: not installed for $PYTHON (pip install ray \"dask[distributed]\" numpy in a virtualenv); left out" >&2
  fi
done

if ! command -v "$PYTHON" >/dev/null; then
  cat "$out/keel.jsonl"
  exit 0
fi
"$PYTHON" - "$out" "$json" "${sides[@]}" <<'PY'
import json, sys
out, as_json, sides = sys.argv[1], sys.argv[2] == "true", sys.argv[3:]
results = {}
for side in sides:
    with open(f"{out}/{side}.jsonl") as f:
        for line in f:
            # A side's framework may print its own log lines among the results: only the
            # results are JSON objects.
            if not line.lstrip().startswith("{"):
                continue
            row = json.loads(line)
            for figure, v in row.items():
                if isinstance(v, dict):
                    # Actor calls carry the unit in the figure's name ("calls/s", "sync p50 us").
                    unit = row["unit"] or figure.split()[-1]
                    results.setdefault((row["workload"], figure, unit), {})[side] = v
higher_better = ("/s",)
def ratio(unit, keel, other):
    if keel is None or other is None or keel == 0 or other == 0:
        return None
    return keel / other if unit.endswith(higher_better) else other / keel
if as_json:
    rows = []
    for (workload, figure, unit), by_side in results.items():
        row = {"workload": workload, "figure": figure, "unit": unit, **by_side}
        k, r = by_side.get("keel"), by_side.get("ray")
        row["keel_vs_ray"] = ratio(unit, k and k["median"], r and r["median"])
        rows.append(row)
    print(json.dumps(rows, indent=1))
    sys.exit(0)
def show(v):
    if v is None:
        return "-"
    m = v["median"]
    fmt = (lambda x: f"{x:,.0f}") if m >= 100 else (lambda x: f"{x:.3g}")
    return f"{fmt(m)} [{fmt(v['min'])}, {fmt(v['max'])}]"
head = ["workload", "figure"] + [s.capitalize() for s in ["keel", "ray", "dask"]] + ["Keel vs Ray"]
print(" | ".join(head))
print(" | ".join("---" for _ in head))
for (workload, figure, unit), by_side in results.items():
    k, r = by_side.get("keel"), by_side.get("ray")
    q = ratio(unit, k and k["median"], r and r["median"])
    cells = [workload, f"{figure} ({unit})"] + [show(by_side.get(s)) for s in ["keel", "ray", "dask"]]
    cells.append("-" if q is None else f"{q:.1f}x")
    print(" | ".join(cells))
PY
