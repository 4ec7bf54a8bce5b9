//! Task throughput and latency on a local cluster: `cargo run --release --example bench`.
//!
//! Without `KEEL_ADDRESS` it starts the embedded default (a head and a node in this process;
//! tasks run in worker processes, which are this same binary). Each workload runs `--runs` times
//! after a warm-up; the line printed gives the median with the min and max across runs.
//!
//! - `noop-tasks`: `--tasks` no-op tasks submitted from one driver, then all awaited: tasks/s.
//! - `round-trip`: `--round-trips` sequential submit-then-get of a no-op task: p50 and p99 of
//!   each run, in microseconds (median of the runs' p50s and of their p99s).
//!
//! `--json` prints one JSON object per workload instead.

use keel::{remote, Remote};
use std::time::{Duration, Instant};

static NOOP: Remote<(), ()> = remote("noop", |()| ());

struct Args {
    runs: usize,
    tasks: usize,
    round_trips: usize,
    json: bool,
}

fn parse() -> Args {
    let mut args = Args { runs: 5, tasks: 20_000, round_trips: 2_000, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match a.as_str() {
            "--runs" => args.runs = num("--runs").max(1),
            "--tasks" => args.tasks = num("--tasks").max(1),
            "--round-trips" => args.round_trips = num("--round-trips").max(1),
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!("bench [--runs N] [--tasks N] [--round-trips N] [--json]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
    }
    args
}

/// Median, min and max of a run's figures.
fn summary(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn report(args: &Args, name: &str, unit: &str, figures: &[(&str, Vec<f64>)]) {
    if args.json {
        let fields: Vec<String> = figures
            .iter()
            .map(|(what, xs)| {
                let (med, min, max) = summary(xs.clone());
                format!("\"{what}\":{{\"median\":{med:.1},\"min\":{min:.1},\"max\":{max:.1}}}")
            })
            .collect();
        println!("{{\"workload\":\"{name}\",\"unit\":\"{unit}\",\"runs\":{},{}}}", args.runs, fields.join(","));
    } else {
        let parts: Vec<String> = figures
            .iter()
            .map(|(what, xs)| {
                let (med, min, max) = summary(xs.clone());
                format!("{what} {med:.0} {unit} [{min:.0}, {max:.0}]")
            })
            .collect();
        println!("{name:<12} {} (median [min, max] of {} runs)", parts.join(", "), args.runs);
    }
}

fn main() -> keel::Result<()> {
    let keel = keel::init(&[&NOOP])?;
    let args = parse();
    // Warm-up: workers started, code paths and allocators warm.
    let warm: Vec<_> = (0..1_000).map(|_| NOOP.call(&keel, ())).collect::<keel::Result<_>>()?;
    keel.get_all(&warm)?;
    drop(warm);

    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let refs: Vec<_> = (0..args.tasks).map(|_| NOOP.call(&keel, ())).collect::<keel::Result<_>>()?;
        keel.get_all(&refs)?;
        rates.push(args.tasks as f64 / start.elapsed().as_secs_f64());
    }
    report(&args, "noop-tasks", "tasks/s", &[("throughput", rates)]);

    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut times = Vec::with_capacity(args.round_trips);
        for _ in 0..args.round_trips {
            let start = Instant::now();
            let r = NOOP.call(&keel, ())?;
            keel.get(&r)?;
            times.push(start.elapsed());
        }
        times.sort();
        p50s.push(percentile(&times, 0.50));
        p99s.push(percentile(&times, 0.99));
    }
    report(&args, "round-trip", "us", &[("p50", p50s), ("p99", p99s)]);
    Ok(())
}
