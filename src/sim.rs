//! `keel sim` and `keel chaos`: scenario runs in the deterministic simulator.

use indicatif::{ProgressBar, ProgressStyle};
use keel_sim::scenario::Scenario;
use keel_sim::world::{Outcome, Span};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The story `keel sim` tells without a file: a node lost in the middle of a shuffle.
const BUILT_IN: &str = include_str!("../scenarios/node_lost_mid_shuffle.toml");
const BUILT_IN_NAME: &str = "scenarios/node_lost_mid_shuffle.toml (built in)";

/// Run a scenario in the simulator, over one seed or a range.
///
/// Each seed runs the real Head and Node machines in a simulated cluster with the scenario's
/// faults, then checks every oracle (no task lost, no duplicate execution, no over-commit, no
/// early free, no leak, same content when rebuilt, gangs all-or-nothing, actor call order) and
/// the scenario's expectations. Every run prints the hash of its event log: the same seed gives
/// the same hash. A failing seed prints the command that reproduces it; the exit status is
/// non-zero when any seed fails.
///
/// Examples:
///   keel sim                                         (the built-in story, over its seeds)
///   keel sim scenarios/flapping_node.toml --seeds 0..100
///   keel sim scenarios/chain_of_20_lost_and_rebuilt.toml --seed 3 --timeline run.json
///   keel sim story.toml --seed 9 --shrink            (writes story-seed9.shrunk.toml)
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SimArgs {
    /// The scenario file (TOML; see scenarios/). Without one, the built-in story runs.
    file: Option<PathBuf>,
    /// Run this seed only.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds A..B (B excluded). By default, the range the scenario file gives.
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Print one JSON object per seed instead of the table.
    #[arg(long)]
    json: bool,
    /// Run every seed twice and fail if the two event logs differ.
    #[arg(long)]
    check_determinism: bool,
    /// Write a Chrome/Perfetto trace of the first seed's run (tasks per node over time, faults).
    #[arg(long, value_name = "OUT.json")]
    timeline: Option<PathBuf>,
    /// Shrink each failing seed to a smaller scenario that fails the same way, and write it
    /// beside the scenario as NAME-seedN.shrunk.toml (for the built-in story, in the current
    /// folder as node_lost_mid_shuffle-seedN.shrunk.toml).
    #[arg(long)]
    shrink: bool,
    /// Runs the shrinker may try per failing seed.
    #[arg(long, default_value_t = 300)]
    shrink_budget: usize,
}

/// Run generated workloads under random faults, seed after seed (swarm testing).
///
/// Every seed draws a random DAG and a fault mix (crashes, partitions, clogs, pauses, hangs,
/// duplicates, reordering, broken connections) from the seed, runs it on both cores, and checks
/// every oracle. Seeds run on every core (see --jobs). A failing seed prints the command that
/// reproduces it.
///
/// Examples:
///   keel chaos                        (200 seeds of a 50-node, 5,000-task DAG)
///   keel chaos --minutes 10 --json
///   keel chaos --seed 1234            (reproduce one seed)
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ChaosArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 200, conflicts_with = "minutes")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this seed only.
    #[arg(long, conflicts_with_all = ["seeds", "first", "minutes"])]
    seed: Option<u64>,
    /// Keep running seeds until this many minutes have passed (instead of --seeds).
    #[arg(long)]
    minutes: Option<f64>,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Tasks in each generated DAG.
    #[arg(long, default_value_t = 5000)]
    tasks: usize,
    /// Threads running seeds (default: every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print one JSON object per seed instead of the table.
    #[arg(long)]
    json: bool,
    /// Shrink each failing seed and write the result as chaos-seedN.shrunk.toml.
    #[arg(long)]
    shrink: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}`: expected A..B, for example 0..100"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("`{a}` is not a seed"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("`{b}` is not a seed"))?;
    if a >= b {
        return Err(format!("`{s}` is empty: the end is excluded"));
    }
    Ok((a, b))
}

fn load(file: Option<&Path>) -> Result<(Scenario, String), String> {
    match file {
        Some(path) => Ok((Scenario::load(path).map_err(|e| e.to_string())?, path.display().to_string())),
        None => {
            let s = Scenario::parse(Path::new(BUILT_IN_NAME), BUILT_IN).map_err(|e| e.to_string())?;
            Ok((s, BUILT_IN_NAME.to_string()))
        }
    }
}

/// `keel sim`.
pub fn run_sim(args: &SimArgs) -> Result<(), String> {
    let (scenario, name) = load(args.file.as_deref())?;
    let (first, end) = match (args.seed, args.seeds) {
        (Some(s), _) => (s, s.checked_add(1).ok_or("--seed: the largest seed is 18446744073709551614")?),
        (None, Some(r)) => r,
        (None, None) => (scenario.seeds[0], scenario.seeds[1]),
    };
    if !args.json {
        println!("{name}: {}", scenario.description);
    }
    let reproduce = |seed: u64| match &args.file {
        Some(f) => format!("keel sim {} --seed {seed}", f.display()),
        None => format!("keel sim --seed {seed}"),
    };
    let bar = progress(end - first, args.json);
    let started = Instant::now();
    let mut summary = Summary::default();
    for seed in first..end {
        let mut params = scenario.params(seed);
        params.timeline = args.timeline.is_some() && seed == first;
        let outcome = scenario.run_params(params);
        if seed == first {
            if let Some(path) = &args.timeline {
                write_timeline(path, &outcome.timeline)?;
                note(&bar, args.json, format!("timeline of seed {seed} written to {}", path.display()));
            }
        }
        let mut determinism = None;
        if args.check_determinism {
            let again = scenario.run(seed, None);
            determinism = Some(again.hash == outcome.hash);
        }
        report(&bar, args.json, seed, &outcome, determinism, &reproduce(seed));
        summary.add(&outcome, determinism);
        if args.shrink && !outcome.violations.is_empty() {
            let stem = args
                .file
                .as_deref()
                .and_then(Path::file_stem)
                .map_or("node_lost_mid_shuffle".into(), |s| s.to_string_lossy().to_string());
            let dir = args.file.as_deref().and_then(Path::parent).unwrap_or(Path::new("."));
            let out = dir.join(format!("{stem}-seed{seed}.shrunk.toml"));
            shrink_to(&bar, args.json, &scenario, seed, args.shrink_budget, &out, |p| {
                format!("keel sim {p} --seed {seed}")
            })?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.print(args.json, started.elapsed());
    summary.verdict()
}

/// `keel chaos`.
pub fn run_chaos(args: &ChaosArgs) -> Result<(), String> {
    if args.nodes == 0 || args.tasks == 0 {
        return Err("--nodes and --tasks must be above 0".into());
    }
    let scenario = Scenario::chaos(args.nodes, args.tasks);
    let reproduce = |seed: u64| format!("keel chaos --seed {seed} --nodes {} --tasks {}", args.nodes, args.tasks);
    if let Some(m) = args.minutes.filter(|m| !(m.is_finite() && *m > 0.0 && *m <= 1e6)) {
        return Err(format!("--minutes {m}: expected a positive number of minutes"));
    }
    // Seeds first..end (end excluded), counted without overflow.
    let (first, end) = match args.seed {
        Some(s) => (s, s.checked_add(1).ok_or("--seed: the largest seed is 18446744073709551614")?),
        None if args.minutes.is_some() => (args.first, u64::MAX),
        None => (args.first, args.first.checked_add(args.seeds).ok_or("--first + --seeds is past the last seed")?),
    };
    let count = end - first;
    let deadline = args.minutes.map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    if !args.json {
        println!("{} ({jobs} threads)", scenario.description);
    }
    let bar = progress(if deadline.is_some() { 0 } else { count }, args.json);
    let next = AtomicU64::new(first);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<(u64, Outcome)>();
    let mut results: Vec<(u64, Outcome)> = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (tx, next, scenario) = (tx.clone(), &next, &scenario);
            scope.spawn(move || loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                // fetch_update stops at `end` instead of wrapping past the last seed.
                let Ok(seed) = next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| (s < end).then(|| s + 1))
                else {
                    break;
                };
                if tx.send((seed, scenario.run(seed, None))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (seed, outcome) in rx {
            if !outcome.violations.is_empty() && !args.json {
                say(&bar, format!("seed {seed} FAILED: {} -- reproduce: {}", outcome.violations[0], reproduce(seed)));
            }
            bar.inc(1);
            results.push((seed, outcome));
        }
    });
    bar.finish_and_clear();
    results.sort_by_key(|(s, _)| *s);
    let mut summary = Summary::default();
    for (seed, outcome) in &results {
        if args.json || results.len() == 1 {
            report(&bar, args.json, *seed, outcome, None, &reproduce(*seed));
        }
        summary.add(outcome, None);
        if args.shrink && !outcome.violations.is_empty() {
            let out = PathBuf::from(format!("chaos-seed{seed}.shrunk.toml"));
            shrink_to(&bar, args.json, &scenario, *seed, 300, &out, |p| format!("keel sim {p} --seed {seed}"))?;
        }
    }
    if !args.json && results.len() > 1 {
        for (seed, outcome) in results.iter().filter(|(_, o)| !o.violations.is_empty()) {
            for v in &outcome.violations {
                println!("seed {seed}: {v}");
            }
            println!("  reproduce: {}", reproduce(*seed));
        }
    }
    summary.print(args.json, started.elapsed());
    summary.verdict()
}

/// A line of output, above the progress bar when one is drawn.
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        println!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}

/// A remark (timeline written, shrinking): to stderr when stdout carries JSON.
fn note(bar: &ProgressBar, json: bool, line: impl AsRef<str>) {
    if json {
        eprintln!("{}", line.as_ref());
    } else {
        say(bar, line);
    }
}

fn progress(len: u64, hidden: bool) -> ProgressBar {
    if hidden || len == 1 {
        return ProgressBar::hidden();
    }
    let bar = if len == 0 { ProgressBar::new_spinner() } else { ProgressBar::new(len) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} seeds ({per_sec}) {msg}")
            .expect("a valid template"),
    );
    bar
}

fn report(bar: &ProgressBar, json: bool, seed: u64, o: &Outcome, determinism: Option<bool>, reproduce: &str) {
    if json {
        let mut value = serde_json::to_value(o).expect("an outcome serialises");
        value["seed"] = seed.into();
        value["ok"] = (o.violations.is_empty() && determinism != Some(false)).into();
        if let Some(d) = determinism {
            value["deterministic"] = d.into();
        }
        if !o.violations.is_empty() {
            value["reproduce"] = reproduce.into();
        }
        say(bar, value.to_string());
        return;
    }
    let verdict = if !o.violations.is_empty() {
        "FAILED"
    } else if determinism == Some(false) {
        "NONDETERMINISTIC"
    } else {
        "ok"
    };
    let h = &o.head;
    say(bar, format!(
        "seed {seed:<6} {verdict:<6} hash {}  {:>8} events  {:>7} ms simulated  faults {:<3} retries {:<4} rebuilt {:<5} nodes lost {:<3} pipelined {:<5} ready {} failed {}",
        o.hash, o.counts.events, o.end_ms, o.counts.faults, h.retries, h.reconstructions, h.nodes_lost, h.pipelined, o.counts.ready, o.counts.failed
    ));
    if let Some(a) = &o.autoscale {
        say(bar, format!(
            "  autoscaler: {} launch requests ({} failed), {} nodes launched, {} stopped, {} preempted, peak {}, {} at the end; {:.3} node-hours, cost {:.4}",
            a.requests, a.failed_requests, a.launched, a.terminated, a.preempted, a.peak_nodes, a.end_nodes, a.node_hours, a.cost
        ));
    }
    for v in &o.violations {
        say(bar, format!("  {v}"));
    }
    if determinism == Some(false) {
        say(bar, "  the same seed gave a different event log the second time");
    }
    if !o.violations.is_empty() || determinism == Some(false) {
        say(bar, format!("  reproduce: {reproduce}"));
    }
}

fn shrink_to(
    bar: &ProgressBar,
    json: bool,
    scenario: &Scenario,
    seed: u64,
    budget: usize,
    out: &Path,
    command: impl Fn(&str) -> String,
) -> Result<(), String> {
    note(bar, json, format!("shrinking seed {seed} (at most {budget} runs)..."));
    let Some(shrunk) = keel_sim::shrink::shrink(scenario, seed, None, budget) else {
        note(bar, json, "  the seed did not fail again: nothing to shrink");
        return Ok(());
    };
    std::fs::write(out, shrunk.scenario.to_toml()).map_err(|e| format!("{}: {e}", out.display()))?;
    note(
        bar,
        json,
        format!(
            "  still breaks {} with {} faults after {} runs: {}\n  reproduce: {}",
            shrunk.property,
            shrunk.scenario.faults.len(),
            shrunk.runs,
            out.display(),
            command(&out.display().to_string())
        ),
    );
    Ok(())
}

/// Chrome's trace event format (Perfetto opens it): one process per host, one thread per worker.
fn write_timeline(path: &Path, spans: &[Span]) -> Result<(), String> {
    let events: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let pid = if s.host == usize::MAX { 0 } else { s.host as u64 + 1 };
            if s.how == "fault" {
                serde_json::json!({"name": s.name, "ph": "i", "s": "p", "ts": s.start as f64 / 1000.0, "pid": pid, "tid": 0})
            } else {
                serde_json::json!({
                    "name": s.name, "ph": "X", "ts": s.start as f64 / 1000.0,
                    "dur": (s.end - s.start) as f64 / 1000.0, "pid": pid, "tid": s.worker.unwrap_or(0),
                    "args": {"how": s.how},
                })
            }
        })
        .collect();
    let mut names: Vec<serde_json::Value> =
        vec![serde_json::json!({"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "cluster"}})];
    let hosts: std::collections::BTreeSet<usize> = spans.iter().map(|s| s.host).filter(|h| *h != usize::MAX).collect();
    for h in hosts {
        names.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": h as u64 + 1, "args": {"name": format!("host {h}")}}));
    }
    let trace = serde_json::json!({"traceEvents": names.into_iter().chain(events).collect::<Vec<_>>(), "displayTimeUnit": "ms"});
    std::fs::write(path, trace.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Default)]
struct Summary {
    seeds: u64,
    failed: u64,
    nondeterministic: u64,
    events: u64,
    simulated_ms: u64,
}

impl Summary {
    fn add(&mut self, o: &Outcome, determinism: Option<bool>) {
        self.seeds += 1;
        self.failed += u64::from(!o.violations.is_empty());
        self.nondeterministic += u64::from(determinism == Some(false));
        self.events += o.counts.events;
        self.simulated_ms += o.end_ms;
    }

    fn print(&self, json: bool, wall: Duration) {
        if json {
            return;
        }
        let secs = wall.as_secs_f64().max(1e-9);
        println!(
            "{} seeds, {} failed{}; {} events in {:.2} s ({:.0} events/s, {:.1} seeds/min), {:.1} s simulated",
            self.seeds,
            self.failed,
            if self.nondeterministic > 0 {
                format!(", {} nondeterministic", self.nondeterministic)
            } else {
                String::new()
            },
            self.events,
            secs,
            self.events as f64 / secs,
            self.seeds as f64 * 60.0 / secs,
            self.simulated_ms as f64 / 1000.0
        );
    }

    fn verdict(&self) -> Result<(), String> {
        match (self.failed, self.nondeterministic) {
            (0, 0) => Ok(()),
            (f, 0) => Err(format!("{f} of {} seeds broke a property", self.seeds)),
            (f, n) => Err(format!("{f} of {} seeds broke a property; {n} were not deterministic", self.seeds)),
        }
    }
}
