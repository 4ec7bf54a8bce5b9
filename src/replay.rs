//! `keel replay`: a workload trace run through the real scheduling kernel in the simulator.

use indicatif::{ProgressBar, ProgressStyle};
use keel_traces::replay::{replay, Options, Policy, Replay, Stats};
use keel_traces::{Job, NodeShape, TraceError};
use std::path::{Path, PathBuf};

/// Replay a workload trace in the simulator, with the real Head and Node machines, and report
/// how it went: per-job completion time, queueing delay and bounded slowdown (p50/p95/p99/mean),
/// makespan, utilisation of each resource, throughput and node-hours.
///
/// What-ifs: another cluster (`--nodes`), another policy (`--policy`), failures (`--fail`); or
/// two runs side by side (`--vs-policy`, `--vs-nodes`), with the ratios. `--report DIR` writes
/// summary.json, jobs.csv and SVG plots (utilisation and queue over time, completion-time CDF;
/// both runs overlaid when comparing). The same file, settings and seed always give the same
/// figures and event-log hash.
///
/// Formats (guessed from the file name when `--format` is not given):
///   swf      Standard Workload Format (.swf, .swf.gz): a job of N processors is a gang of N
///            one-CPU bundles; the cluster is the header's MaxNodes x (MaxProcs/MaxNodes) CPUs.
///   alibaba  Alibaba v2018 batch_task (CSV): DAG jobs; machines of 96 CPUs.
///   openb    Alibaba GPU 2023 pods (CSV): fractional GPUs and GPU models; the cluster is the
///            node list beside it (openb_node_list_gpu_node.csv) or --node-list.
///   philly   Philly via Gavel (.trace): GPU jobs timed from Gavel's throughputs file beside it.
///   keel     A Keel head's journal (keel head --state-dir DIR writes DIR/head.journal): with
///            --verify, checked against a fresh kernel.
///
/// A cluster file (--cluster) lists groups of identical nodes:
///   [[nodes]]
///   name = "gpu"           # optional: nodes gpu-0, gpu-1, ...
///   count = 4
///   cpus = 96
///   memory_gib = 512       # optional
///   gpus = 8               # optional
///   gpu_model = "V100"     # optional: tasks that ask for a model run only on its nodes
///   resources = { nvme = 2 }    # optional custom resources
///
/// Examples:
///   keel replay ../shared/traces/swf/NASA-iPSC-1993-3.1-cln.swf.gz
///   keel replay trace.swf --nodes 64 --policy spread --fail 3@3600 --json
///   keel replay trace.swf --vs-policy pack --report out/
///   keel replay batch_task.csv.gz --cluster mine.toml --skip-bad-jobs
///   keel replay --compare before.json after.json    (two saved `--json` results)
///   keel replay ~/.keel/head/head.journal --verify
///   keel replay --synthetic 1000000 --nodes 10000
///   keel replay trace.swf --autoscale cluster.toml --report out/
///
/// An autoscaling cluster file (--autoscale):
///   [autoscaler]               # every field optional
///   max_workers = 40           # worker nodes in all (default: the sum of the types' maxima)
///   upscaling_speed = 1.0      # at most max(5, speed x nodes running) launching at once
///   period_s = 5               # how often the autoscaler decides
///   idle_timeout_s = 60        # an idle node is stopped after this long
///   launch_timeout_s = 600     # a node not registered this long after its launch has failed
///   max_launch_failures = 3    # failed launches in a row before a type is left alone ...
///   failure_backoff_s = 300    # ... for this long
///   [[node_type]]
///   name = "cpu32"
///   cpus = 32                  # and gpus, memory_gib, resources = { .. }, labels = { .. }
///   min_workers = 0
///   max_workers = 20
///   launch_min_s = 30          # boot delay: min + an exponential tail of this mean, at most max
///   launch_mean_s = 60
///   launch_max_s = 180
///   launch_fail_p = 0.05       # probability that a launch request fails as a whole
///   preempt_mean_s = 7200      # spot nodes: mean lifetime before the cloud takes one back
///   cost_per_hour = 1.20       # for the cost report
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReplayArgs {
    /// The trace (a `.gz` name is read compressed).
    #[arg(required_unless_present_any = ["compare", "synthetic"])]
    file: Option<PathBuf>,
    /// Instead of a file, a synthetic workload of this many task instances (bags of tasks,
    /// map-reduce DAGs and gangs, offered at 70% of the cluster's capacity) on --nodes nodes of
    /// 16 CPUs (default: one node per 100 tasks).
    #[arg(long, value_name = "TASKS", conflicts_with_all = ["file", "format", "cluster", "node_list"])]
    synthetic: Option<usize>,
    /// Compare two saved results (`keel replay ... --json > a.json`) instead of replaying.
    #[arg(long, num_args = 2, value_names = ["A_JSON", "B_JSON"], conflicts_with = "file")]
    compare: Vec<PathBuf>,
    /// Its format.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Replay on this many nodes: the first N of the trace's cluster (or of --cluster), its mix
    /// repeated when N is larger. Philly: N nodes of --gpu-type. A header-less SWF file: N nodes
    /// of one processor.
    #[arg(long)]
    nodes: Option<usize>,
    /// The cluster, from a TOML file of node groups (count, cpus, memory_gib, gpus, gpu_model,
    /// resources), instead of the trace's own (see the example above).
    #[arg(long, value_name = "TOML", conflicts_with = "node_list")]
    cluster: Option<PathBuf>,
    /// openb: the node list.
    #[arg(long, value_name = "CSV")]
    node_list: Option<PathBuf>,
    /// alibaba: leave out bad jobs and rows (bad task names, cycles, dangling dependencies,
    /// short rows) and count them, rather than stop at the first.
    #[arg(long)]
    skip_bad_jobs: bool,
    /// philly: Gavel's throughputs file.
    #[arg(long, value_name = "JSON")]
    throughputs: Option<PathBuf>,
    /// philly: the GPU type the jobs run on (their duration is measured on it).
    #[arg(long, default_value = "v100")]
    gpu_type: String,
    /// philly: GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Where tasks go: hybrid (pack under half use, then spread), spread or pack.
    #[arg(long, value_enum, default_value = "hybrid")]
    policy: PolicyArg,
    /// A node that fails for good at a time: NODE@SECONDS (node index from 0). Repeatable.
    #[arg(long = "fail", value_name = "NODE@SECONDS")]
    fail: Vec<String>,
    /// Replay only the first N jobs.
    #[arg(long)]
    limit: Option<usize>,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Also replay with this policy, and compare.
    #[arg(long, value_enum)]
    vs_policy: Option<PolicyArg>,
    /// Also replay on this many nodes, and compare.
    #[arg(long)]
    vs_nodes: Option<usize>,
    /// Write summary.json, jobs.csv and SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// keel: feed the head's journal through a fresh kernel and check that it decides every
    /// output exactly as the recorded head did, byte for byte (no simulation).
    #[arg(long)]
    verify: bool,
    /// Replay on an autoscaling cluster: the autoscaler launches the file's node types as the
    /// work asks for them (a simulated provider boots them after their launch delay, and may
    /// fail launches or take spot nodes back), and stops them when idle. The static nodes are
    /// then only those of --cluster or --nodes (none by default). Reports node-hours, cost, the
    /// tasks' pending time, and (with --report) nodes over time. The file's format is above.
    #[arg(long, value_name = "TOML")]
    autoscale: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Swf,
    Alibaba,
    Openb,
    Philly,
    Keel,
    /// Generated (`--synthetic`), not read.
    #[value(skip)]
    Synthetic,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PolicyArg {
    Hybrid,
    Spread,
    Pack,
}

fn guess(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".swf") {
        Some(Format::Swf)
    } else if name.contains("pod") && name.ends_with(".csv") {
        Some(Format::Openb)
    } else if name.ends_with(".csv") {
        Some(Format::Alibaba)
    } else if name.ends_with(".trace") {
        Some(Format::Philly)
    } else if name.ends_with(".journal") {
        Some(Format::Keel)
    } else {
        None
    }
}

fn collect(jobs: impl Iterator<Item = Result<Job, TraceError>>, limit: Option<usize>) -> Result<Vec<Job>, String> {
    jobs.take(limit.unwrap_or(usize::MAX)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// A trace read, and the cluster it describes (before `--nodes`).
struct Loaded {
    jobs: Vec<Job>,
    format: Format,
    /// The trace's own cluster or `--cluster`; `None` for a header-less SWF file.
    nodes: Option<Vec<NodeShape>>,
    what: String,
    /// Bad jobs and rows left out (`--skip-bad-jobs`), and the first few errors.
    skipped: (u64, Vec<String>),
}

/// Reads the trace and its cluster.
fn load(args: &ReplayArgs, path: &Path) -> Result<Loaded, String> {
    if let Some(tasks) = args.synthetic {
        let nodes = args.nodes.unwrap_or(tasks / 100).max(1);
        let jobs = keel_traces::synthetic::jobs(tasks, nodes, args.seed);
        let what = format!("synthetic: {tasks} tasks in {} jobs, seed {}", jobs.len(), args.seed);
        return Ok(Loaded {
            jobs,
            format: Format::Synthetic,
            nodes: Some(keel_traces::synthetic::cluster(nodes)),
            what,
            skipped: (0, Vec::new()),
        });
    }
    let name = path.display().to_string();
    let format = args
        .format
        .or_else(|| guess(path))
        .ok_or_else(|| format!("{name}: cannot tell its format from its name; pass --format"))?;
    if args.skip_bad_jobs && format != Format::Alibaba {
        return Err("--skip-bad-jobs is for --format alibaba (the other importers stop at the first bad line)".into());
    }
    let open = |p: &Path| keel_traces::open(p).map_err(|e| e.to_string());
    let given = match &args.cluster {
        Some(spec) => {
            let text = std::fs::read_to_string(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
            Some(keel_traces::cluster::parse(&text, &spec.display().to_string()).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let beside = |file: &str| path.with_file_name(file);
    let mut skipped = (0, Vec::new());
    let (jobs, nodes, what) = match format {
        Format::Swf => {
            let reader = keel_traces::swf::SwfReader::new(open(path)?, &name).map_err(|e| e.to_string())?;
            let header = reader.header().clone();
            let jobs = collect(reader, args.limit)?;
            let what = match header.max_procs.or(header.max_nodes) {
                Some(_) => format!("SWF, MaxNodes {:?}, MaxProcs {:?}", header.max_nodes, header.max_procs),
                None => "SWF without a cluster in its header".to_string(),
            };
            (jobs, given.or_else(|| header.cluster()), what)
        }
        Format::Alibaba => {
            let mut reader = keel_traces::alibaba::BatchTaskReader::new(open(path)?, &name);
            if args.skip_bad_jobs {
                reader = reader.skip_bad_input();
            }
            let jobs = collect(reader.by_ref(), args.limit)?;
            let (count, first) = reader.skipped();
            skipped = (count, first.iter().map(ToString::to_string).collect());
            let nodes = given.unwrap_or_else(|| keel_traces::alibaba::cluster(100));
            (jobs, Some(nodes), "Alibaba v2018 batch_task".to_string())
        }
        Format::Openb => {
            let nodes = match given {
                Some(nodes) => nodes,
                None => {
                    let list = args.node_list.clone().unwrap_or_else(|| beside("openb_node_list_gpu_node.csv"));
                    let list_name = list.display().to_string();
                    let file = keel_traces::open(&list).map_err(|e| format!("{e} (pass --node-list or --cluster)"))?;
                    keel_traces::openb::read_nodes(file, &list_name).map_err(|e| e.to_string())?
                }
            };
            let reader = keel_traces::openb::PodReader::new(open(path)?, &name).map_err(|e| e.to_string())?;
            (collect(reader, args.limit)?, Some(nodes), "openb pods".to_string())
        }
        Format::Philly => {
            let tp = args.throughputs.clone().unwrap_or_else(|| beside("simulation_throughputs.json"));
            let json =
                std::fs::read_to_string(&tp).map_err(|e| format!("{}: {e} (pass --throughputs)", tp.display()))?;
            let throughputs = keel_traces::philly::Throughputs::read(&json, &args.gpu_type, &tp.display().to_string())
                .map_err(|e| e.to_string())?;
            let nodes = match given {
                Some(nodes) => nodes,
                None => {
                    let spec = std::fs::read_to_string(beside("cluster_specs.json"))
                        .ok()
                        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                        .and_then(|v| v.get("philly")?.get(0)?.as_str().map(str::to_string))
                        .unwrap_or_else(|| "500:0:0".into());
                    keel_traces::philly::cluster(&spec, args.gpus_per_node)
                        .ok_or_else(|| format!("cluster spec {spec:?} is not v100:p100:k80 GPU counts"))?
                }
            };
            let reader = keel_traces::philly::PhillyReader::new(open(path)?, &name, throughputs);
            (collect(reader, args.limit)?, Some(nodes), format!("Philly via Gavel, timed on {}", args.gpu_type))
        }
        Format::Synthetic => unreachable!("a synthetic workload is made above, not read"),
        Format::Keel => {
            let mut w = crate::recording::workload(path)?;
            w.jobs.truncate(args.limit.unwrap_or(usize::MAX));
            if w.nodes.is_empty() && given.is_none() {
                return Err(format!("{name}: no node ever joined the recorded cluster; pass --cluster or --nodes"));
            }
            let nodes = given.unwrap_or(w.nodes);
            (w.jobs, (!nodes.is_empty()).then_some(nodes), format!("a Keel recording; {}", w.notes.join("; ")))
        }
    };
    Ok(Loaded { jobs, format, nodes, what, skipped })
}

/// The cluster to replay on: the loaded one, or `n` nodes of it (its first `n`, or its mix
/// repeated); Philly's `n` nodes are of the GPU type the jobs are timed on.
fn cluster(args: &ReplayArgs, loaded: &Loaded, n: Option<usize>) -> Result<Vec<NodeShape>, String> {
    if n == Some(0) {
        return Err("--nodes 0: a cluster needs at least one node".into());
    }
    let nodes = match (&loaded.nodes, n) {
        (_, Some(n)) if loaded.format == Format::Philly && args.cluster.is_none() => {
            let gpus = n as u32 * args.gpus_per_node;
            let spec = match args.gpu_type.as_str() {
                "p100" => format!("0:{gpus}:0"),
                "k80" => format!("0:0:{gpus}"),
                _ => format!("{gpus}:0:0"),
            };
            keel_traces::philly::cluster(&spec, args.gpus_per_node).unwrap_or_default()
        }
        (Some(nodes), Some(n)) => keel_traces::cluster::resize(nodes, n),
        (Some(nodes), None) => nodes.clone(),
        // A header-less SWF file: N nodes of one processor.
        (None, Some(n)) => (0..n)
            .map(|i| NodeShape {
                name: format!("node-{i}"),
                resources: keel_kernel::ResourceSet::cpus(1),
                gpu_model: None,
            })
            .collect(),
        (None, None) => {
            return Err("the trace does not say what cluster it ran on: pass --nodes N (one processor each) or \
                        --cluster spec.toml"
                .into())
        }
    };
    if loaded.format == Format::Philly && !nodes.iter().any(|n| n.gpu_model.as_deref() == Some(&args.gpu_type)) {
        let models: std::collections::BTreeSet<&str> = nodes.iter().filter_map(|n| n.gpu_model.as_deref()).collect();
        return Err(format!(
            "--gpu-type {}: the jobs are timed on {0} GPUs and run only on them, but the cluster has none (it has {}); \
             pass --nodes N for N nodes of {0}, or a --cluster with gpu_model = \"{0}\"",
            args.gpu_type,
            models.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(nodes)
}

fn parse_failures(specs: &[String]) -> Result<Vec<(usize, u64)>, String> {
    specs
        .iter()
        .map(|s| {
            let (node, at) = s.split_once('@').ok_or_else(|| format!("--fail {s}: expected NODE@SECONDS"))?;
            let node = node.parse().map_err(|_| format!("--fail {s}: {node:?} is not a node index"))?;
            let at: f64 = at.parse().map_err(|_| format!("--fail {s}: {at:?} is not a number of seconds"))?;
            if !(0.0..1e12).contains(&at) {
                return Err(format!("--fail {s}: the time is out of range"));
            }
            Ok((node, (at * 1000.0) as u64))
        })
        .collect()
}

/// `keel replay`.
pub fn run_replay(args: &ReplayArgs) -> Result<(), String> {
    if let [a, b] = args.compare.as_slice() {
        let (a_name, a) = saved(a)?;
        let (b_name, b) = saved(b)?;
        print_comparison(&a_name, &a, &b_name, &b);
        return Ok(());
    }
    let synthetic_name = args.synthetic.map(|n| PathBuf::from(format!("synthetic-{n}-tasks")));
    let file = args
        .file
        .as_deref()
        .or(synthetic_name.as_deref())
        .ok_or("which trace? give a file, --synthetic TASKS, or --compare A B")?;
    if args.verify {
        return crate::recording::run_verify(file, args.json);
    }
    let started = std::time::Instant::now();
    let loaded = load(args, file)?;
    let autoscale = match &args.autoscale {
        Some(path) => Some(keel_sim::autoscale::AutoscaleSpec::load_simulated(path).map_err(|e| e.to_string())?),
        None => None,
    };
    // With an autoscaler, static nodes only where asked for.
    let nodes = if autoscale.is_some() && args.nodes.is_none() && args.cluster.is_none() {
        Vec::new()
    } else {
        cluster(args, &loaded, args.nodes)?
    };
    let vs_nodes = args.vs_nodes.map(|n| cluster(args, &loaded, Some(n))).transpose()?;
    let Loaded { jobs, what, skipped, .. } = loaded;
    if jobs.is_empty() {
        return Err(format!("{}: no jobs", file.display()));
    }
    let options = Options {
        nodes,
        policy: policy(args.policy),
        failures: parse_failures(&args.fail)?,
        seed: args.seed,
        progress: None,
        autoscale,
    };
    let read_in = started.elapsed();
    // The bar follows simulated time up to the last submit (the tail after it is short).
    let t0 = jobs.iter().map(|j| j.submit_ms).min().unwrap_or(0);
    let span_ms = jobs.iter().map(|j| j.submit_ms - t0).max().unwrap_or(0).max(1);
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(span_ms);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {percent:>3}% of the trace's time simulated; {msg} [{elapsed}]")
                .expect("a valid template"),
        );
        bar.set_message(format!("{} jobs on {} nodes", jobs.len(), options.nodes.len()));
        bar
    };
    let mut options = options;
    let tick = bar.clone();
    let total = jobs.iter().filter(|j| !j.recorded.never_ran).count();
    options.progress = Some(keel_traces::replay::ReplayProgress(std::sync::Arc::new(move |sim_ms, events, done| {
        tick.set_position(sim_ms.min(span_ms));
        tick.set_message(format!("{done} of {total} jobs done, {events} events"));
    })));
    let result = replay(&jobs, &options);
    let r = result?;
    let took = started.elapsed();
    let other = if args.vs_policy.is_some() || args.vs_nodes.is_some() {
        let mut o = options.clone();
        if let Some(p) = args.vs_policy {
            o.policy = policy(p);
        }
        if let Some(nodes) = vs_nodes {
            o.nodes = nodes;
        }
        bar.set_position(0);
        bar.set_message(format!("{} jobs on {} nodes, to compare", jobs.len(), o.nodes.len()));
        let label = describe(&o);
        Some((replay(&jobs, &o)?, label))
    } else {
        None
    };
    bar.finish_and_clear();
    if let Some(dir) = &args.report {
        let first = describe(&options);
        let mut runs: Vec<(&str, &Replay)> = vec![(first.as_str(), &r)];
        if let Some((o, label)) = &other {
            runs.push((label.as_str(), o));
        }
        let files = keel_traces::report::write(dir, &runs).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !args.json {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            eprintln!("report: {}", names.join(", "));
        }
    }
    if let Some((o, label)) = &other {
        if args.json {
            let out = serde_json::json!({
                "trace": file.display().to_string(),
                "runs": [
                    { "run": describe(&options), "summary": r.summary },
                    { "run": label, "summary": o.summary },
                ],
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        } else {
            print_comparison(&describe(&options), &r.summary, label, &o.summary);
        }
        return Ok(());
    }
    if args.json {
        let out = serde_json::json!({
            "trace": file.display().to_string(),
            "what": what,
            "nodes": options.nodes.len(),
            "policy": format!("{:?}", args.policy).to_lowercase(),
            "seed": args.seed,
            "skipped_bad_input": skipped.0,
            "summary": r.summary,
            "seconds": took.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        if skipped.0 > 0 {
            println!("left out {} bad jobs and rows of the trace; the first: {}", skipped.0, skipped.1.join("; "));
        }
        print_summary(file, args, &what, &options, &r, read_in, took);
    }
    Ok(())
}

fn policy(p: PolicyArg) -> Policy {
    match p {
        PolicyArg::Hybrid => Policy::Hybrid,
        PolicyArg::Spread => Policy::Spread,
        PolicyArg::Pack => Policy::Pack,
    }
}

fn describe(o: &Options) -> String {
    let scaled = if o.autoscale.is_some() { " + autoscaler" } else { "" };
    format!("{} nodes{scaled}, {:?}", o.nodes.len(), o.policy).to_lowercase()
}

/// A saved `--json` result: its name (file and settings) and its summary.
fn saved(path: &Path) -> Result<(String, keel_traces::replay::Summary), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a saved result ({e})", path.display()))?;
    let summary = value
        .get("summary")
        .or_else(|| value.get("runs").and_then(|r| r.get(0)).and_then(|r| r.get("summary")))
        .ok_or_else(|| format!("{}: no summary in it (save `keel replay ... --json`)", path.display()))?;
    let summary = serde_json::from_value(summary.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = match (value.get("nodes"), value.get("policy")) {
        (Some(n), Some(p)) => format!("{} nodes, {}", n, p.as_str().unwrap_or("?")),
        _ => path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
    };
    Ok((name, summary))
}

fn print_comparison(a_name: &str, a: &keel_traces::replay::Summary, b_name: &str, b: &keel_traces::replay::Summary) {
    println!("{:<28}{:>20}{:>20}{:>10}", "", a_name, b_name, "ratio");
    let row = |name: &str, x: f64, y: f64| {
        let ratio = if x != 0.0 { format!("{:.2}", y / x) } else { "-".into() };
        println!("{name:<28}{x:>20.1}{y:>20.1}{ratio:>10}");
    };
    row("jobs completed", a.completed as f64, b.completed as f64);
    row("makespan (s)", a.makespan_s, b.makespan_s);
    row("completion p50 (s)", a.completion_s.p50, b.completion_s.p50);
    row("completion p99 (s)", a.completion_s.p99, b.completion_s.p99);
    row("completion mean (s)", a.completion_s.mean, b.completion_s.mean);
    row("wait p50 (s)", a.wait_s.p50, b.wait_s.p50);
    row("wait p99 (s)", a.wait_s.p99, b.wait_s.p99);
    row("wait mean (s)", a.wait_s.mean, b.wait_s.mean);
    row("bounded slowdown mean", a.bounded_slowdown.mean, b.bounded_slowdown.mean);
    row("jobs per hour", a.jobs_per_hour, b.jobs_per_hour);
    row("node-hours", a.node_hours, b.node_hours);
    row("task pending p50 (s)", a.task_pending_s.p50, b.task_pending_s.p50);
    if let (Some(x), Some(y)) = (&a.autoscale, &b.autoscale) {
        row("autoscaler cost", x.cost, y.cost);
    }
    for (k, v) in &a.utilisation {
        row(&format!("{k} utilisation (%)"), v * 100.0, b.utilisation.get(k).copied().unwrap_or(0.0) * 100.0);
    }
    if let (Some(x), Some(y)) = (&a.gpu_fragmentation, &b.gpu_fragmentation) {
        row("GPU fragmented (%)", x.fragmented_share * 100.0, y.fragmented_share * 100.0);
    }
}

fn print_summary(
    file: &Path,
    args: &ReplayArgs,
    what: &str,
    options: &Options,
    r: &Replay,
    loaded: std::time::Duration,
    took: std::time::Duration,
) {
    let s = &r.summary;
    println!("{} ({what})", file.display());
    let on = match &options.autoscale {
        Some(a) => {
            let types: Vec<&str> = a.node_types.iter().map(|t| t.name.as_str()).collect();
            format!("{} static nodes and an autoscaler ({})", options.nodes.len(), types.join(", "))
        }
        None => format!("{} nodes", options.nodes.len()),
    };
    println!(
        "replayed {} jobs on {on}, {:?} policy, seed {}: {} completed, {} unfinished, {} attempts retried",
        s.jobs, args.policy, args.seed, s.completed, s.unfinished, s.retries
    );
    println!("makespan {}; {:.1} jobs/h; {:.1} node-hours", human_seconds(s.makespan_s), s.jobs_per_hour, s.node_hours);
    println!("{:<24}{:>12}{:>12}{:>12}{:>12}{:>12}", "", "mean", "p50", "p95", "p99", "max");
    let row = |name: &str, st: &Stats| {
        println!("{name:<24}{:>12.1}{:>12.1}{:>12.1}{:>12.1}{:>12.1}", st.mean, st.p50, st.p95, st.p99, st.max);
    };
    row("completion time (s)", &s.completion_s);
    row("queueing delay (s)", &s.wait_s);
    row("bounded slowdown", &s.bounded_slowdown);
    row("task pending (s)", &s.task_pending_s);
    if let Some(recorded) = &s.recorded_wait_s {
        row("recorded wait (s)", recorded);
    }
    let util: Vec<String> = s.utilisation.iter().map(|(k, v)| format!("{k} {:.1}%", v * 100.0)).collect();
    println!("utilisation: {}", util.join(", "));
    if let Some(a) = &s.autoscale {
        let hours: Vec<String> = a.node_hours_by_type.iter().map(|(t, h)| format!("{t} {h:.1}")).collect();
        println!(
            "autoscaler: {} launch requests ({} failed), {} nodes launched, {} stopped when idle, {} preempted, \
             at most {} at once, {} at the end; {:.1} node-hours ({}), cost {:.2}",
            a.requests,
            a.failed_requests,
            a.launched,
            a.terminated,
            a.preempted,
            a.peak_nodes,
            a.end_nodes,
            a.node_hours,
            hours.join(", "),
            a.cost
        );
    }
    if let Some(f) = &s.gpu_fragmentation {
        println!(
            "GPU fragmentation: {:.1}% of GPU capacity idle on partly used GPUs ({:.1}% of the idle GPU capacity), at most {:.1} GPUs",
            f.fragmented_share * 100.0,
            f.share_of_idle * 100.0,
            f.peak_gpus
        );
    }
    if s.infeasible > 0 {
        println!(
            "warning: {} jobs can never run on this cluster (a task no node holds, or a gang larger than the \
             cluster); the scheduler reported them infeasible",
            s.infeasible
        );
    }
    if s.unfinished > s.infeasible {
        println!(
            "warning: {} jobs did not finish ({} never started); the figures above are over the jobs that did",
            s.unfinished - s.infeasible,
            s.never_started.saturating_sub(s.infeasible)
        );
    }
    if !s.failure_reasons.is_empty() {
        let reasons: Vec<String> = s.failure_reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("tasks failed for good: {}", reasons.join(", "));
    }
    if s.recorded_failed + s.recorded_cancelled > 0 {
        println!(
            "the trace records {} failed and {} cancelled jobs (replayed as they ran)",
            s.recorded_failed, s.recorded_cancelled
        );
    }
    println!(
        "{} simulator events, event-log hash {}; read in {:.2} s, replayed in {:.2} s",
        s.events,
        s.hash,
        loaded.as_secs_f64(),
        (took - loaded).as_secs_f64()
    );
}

fn human_seconds(s: f64) -> String {
    if s >= 86_400.0 {
        format!("{:.1} d", s / 86_400.0)
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{s:.1} s")
    }
}
