//! Task throughput and latency on a local cluster: `cargo run --release --example bench`.
//!
//! Without `KEEL_ADDRESS` it starts the embedded default (a head and a node in this process;
//! tasks run in worker processes, which are this same binary). Each workload runs `--runs` times
//! after a warm-up; the line printed gives the median with the min and max across runs.
//!
//! - `noop-tasks`: `--tasks` no-op tasks submitted from one driver, then all awaited: tasks/s.
//! - `round-trip`: `--round-trips` sequential submit-then-get of a no-op task: p50 and p99 of
//!   each run, in microseconds (median of the runs' p50s and of their p99s).
//! - `startup`: a fresh process of this program, from its start to its first task's result
//!   (the embedded cluster started on the way), in seconds.
//! - `actor-calls`: one actor, `--tasks` method calls submitted then awaited (calls/s), and
//!   `--round-trips` sequential calls (p50, microseconds).
//! - `put-get`: a 100 MiB buffer put (`put_bytes`), then got back (`get_bytes`: a view mapped
//!   from the store, no copy): GB/s each way, after four rounds of warm-up (a program that puts
//!   large objects again and again writes over pages the store pooled and this process keeps
//!   mapped; the first put of all allocates fresh pages and runs at about 3 GB/s here).
//! - `small-puts`: 10,000 puts of 1 KiB (`put_bytes`): puts/s.
//! - `map-reduce`: 200 map tasks each returning 1 MiB (a `Blob`), 10 reduce tasks each taking 20
//!   of them by reference and reading them where they lie: seconds, after one round of warm-up
//!   (the first round of all writes into fresh pages and takes about twice as long).
//! - `chain`: 1,000 tasks, each taking the previous one's result: seconds.
//! - `reconstruction`: a fresh process of this program starts a head whose failure-detection
//!   timeout is 1 s (nodes' heartbeats every 100 ms) and two nodes in it, makes a 1 MiB value on
//!   the second node, then kills that node's daemon (its workers stop, its store directory goes,
//!   and its connection to the head closes, as when a node process dies): seconds from the kill
//!   to the value read again, rebuilt from its lineage on the other node. The closed connection
//!   tells the head at once; a machine that vanishes without closing it is found by the 1 s
//!   deadline instead.
//! - `idle-memory`: resident memory of this process and every process under it (the embedded
//!   head and node, and the workers), idle after the warm-up (1,000 no-op tasks): MiB.
//!
//! `--json` prints one JSON object per workload instead; `--only noop-tasks,chain` runs only those.

use keel::{actor, method, remote, ActorClass, Blob, Method, ObjectRef, Remote};
use std::time::{Duration, Instant};

static NOOP: Remote<(), ()> = remote("noop", |()| ());
static MIB: Remote<(u64,), Blob> = remote("mib", |(i,)| Blob(vec![i as u8; 1 << 20]));
static REDUCE: Remote<(Vec<ObjectRef<Blob>>,), u64> = remote("reduce", |(parts,)| {
    let keel = keel::current().expect("a task runs under a cluster");
    // Each part is read where it lies (mapped from the store), as Ray reads a NumPy array.
    parts.iter().map(|p| keel.get_bytes(p).expect("a map output").len() as u64).sum()
});
static NEXT: Remote<(u64,), u64> = remote("next", |(x,)| x + 1);

struct Counter {
    calls: u64,
}
static COUNTER: ActorClass<Counter, ()> = actor("Counter", |()| Counter { calls: 0 });
static TICK: Method<Counter, (), u64> = method("Counter.tick", |c, ()| {
    c.calls += 1;
    c.calls
});

struct Args {
    runs: usize,
    tasks: usize,
    round_trips: usize,
    json: bool,
    /// Workloads to run (all when empty).
    only: Vec<String>,
}

/// Rounds of put and get before `put-get` is measured (the same on every side).
const PUT_WARM_UPS: usize = 4;

/// Rounds of `map-reduce` before it is measured (the same on every side).
const MAP_REDUCE_WARM_UPS: usize = 1;

/// The workloads, in the order they run.
const WORKLOADS: [&str; 10] = [
    "idle-memory",
    "noop-tasks",
    "round-trip",
    "startup",
    "reconstruction",
    "actor-calls",
    "put-get",
    "small-puts",
    "map-reduce",
    "chain",
];

impl Args {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

fn parse() -> Args {
    let mut args = Args { runs: 5, tasks: 20_000, round_trips: 2_000, json: false, only: Vec::new() };
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
            "--only" => {
                for name in it.next().expect("--only takes workload names, comma-separated").split(',') {
                    if !WORKLOADS.contains(&name) {
                        panic!("--only: no workload is called {name:?}; there are {}", WORKLOADS.join(", "));
                    }
                    args.only.push(name.to_string());
                }
            }
            "--startup-probe" | "--reconstruction-probe" => {}
            "-h" | "--help" => {
                println!("bench [--runs N] [--tasks N] [--round-trips N] [--json] [--only WORKLOAD,...]");
                println!("workloads: {}", WORKLOADS.join(", "));
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

/// A figure with the digits that matter.
fn shown(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

fn report(args: &Args, name: &str, unit: &str, figures: &[(&str, Vec<f64>)]) {
    if args.json {
        let fields: Vec<String> = figures
            .iter()
            .map(|(what, xs)| {
                let (med, min, max) = summary(xs.clone());
                format!("\"{what}\":{{\"median\":{med},\"min\":{min},\"max\":{max}}}")
            })
            .collect();
        println!("{{\"workload\":\"{name}\",\"unit\":\"{unit}\",\"runs\":{},{}}}", args.runs, fields.join(","));
    } else {
        let parts: Vec<String> = figures
            .iter()
            .map(|(what, xs)| {
                let (med, min, max) = summary(xs.clone());
                let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
                format!("{what} {}{unit} [{}, {}]", shown(med), shown(min), shown(max))
            })
            .collect();
        println!("{name:<12} {} (median [min, max] of {} runs)", parts.join(", "), args.runs);
    }
}

/// Resident memory of `pid` and every process under it, in bytes.
fn tree_rss(pid: u32) -> u64 {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .unwrap_or(0)
        * 1024;
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    rss + children.into_iter().map(tree_rss).sum::<u64>()
}

/// Per run: the seconds a fresh process of this program, started with `flag`, prints.
fn probes(args: &Args, flag: &str) -> Vec<f64> {
    let exe = std::env::current_exe().expect("this program");
    (0..args.runs)
        .map(|_| {
            let out = std::process::Command::new(&exe)
                .arg(flag)
                .env_remove("KEEL_ADDRESS")
                .output()
                .expect("a probe process");
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim().parse::<f64>().unwrap_or_else(|_| {
                panic!("the {flag} process printed no figure: {text}{}", String::from_utf8_lossy(&out.stderr))
            })
        })
        .collect()
}

fn main() -> keel::Result<()> {
    let began = Instant::now();
    let functions: [&'static dyn keel::Registered; 6] = [&NOOP, &MIB, &REDUCE, &NEXT, &COUNTER, &TICK];
    if std::env::args().any(|a| a == "--reconstruction-probe") && std::env::var_os("KEEL_WORKER_SOCKET").is_none() {
        println!("{}", reconstruction(&functions)?);
        return Ok(());
    }
    let keel = keel::init(&functions)?;
    if std::env::args().any(|a| a == "--startup-probe") {
        keel.get(&NOOP.call(&keel, ())?)?;
        println!("{}", began.elapsed().as_secs_f64());
        return Ok(());
    }
    let args = parse();
    // Warm-up: workers started, code paths and allocators warm.
    let warm: Vec<_> = (0..1_000).map(|_| NOOP.call(&keel, ())).collect::<keel::Result<_>>()?;
    keel.get_all(&warm)?;
    drop(warm);

    if args.wants("idle-memory") {
        let idle: Vec<f64> = (0..args.runs)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                tree_rss(std::process::id()) as f64 / (1u64 << 20) as f64
            })
            .collect();
        report(&args, "idle-memory", "MiB", &[("resident", idle)]);
    }
    if args.wants("noop-tasks") {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let start = Instant::now();
            let refs: Vec<_> = (0..args.tasks).map(|_| NOOP.call(&keel, ())).collect::<keel::Result<_>>()?;
            keel.get_all(&refs)?;
            rates.push(args.tasks as f64 / start.elapsed().as_secs_f64());
        }
        report(&args, "noop-tasks", "tasks/s", &[("throughput", rates)]);
    }
    if args.wants("round-trip") {
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
    }
    if args.wants("startup") {
        let startups = probes(&args, "--startup-probe").into_iter().map(|s| s * 1e3).collect();
        report(&args, "startup", "ms", &[("to first result", startups)]);
    }
    if args.wants("reconstruction") {
        report(&args, "reconstruction", "s", &[("kill to value", probes(&args, "--reconstruction-probe"))]);
    }

    if args.wants("actor-calls") {
        let counter = COUNTER.create(&keel, ())?;
        keel.get(counter.ready())?;
        let (mut rates, mut p50s) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let start = Instant::now();
            let refs: Vec<_> = (0..args.tasks).map(|_| TICK.call(&keel, &counter, ())).collect::<keel::Result<_>>()?;
            keel.get_all(&refs)?;
            rates.push(args.tasks as f64 / start.elapsed().as_secs_f64());
            let mut times = Vec::with_capacity(args.round_trips);
            for _ in 0..args.round_trips {
                let start = Instant::now();
                keel.get(&TICK.call(&keel, &counter, ())?)?;
                times.push(start.elapsed());
            }
            times.sort();
            p50s.push(percentile(&times, 0.50));
        }
        report(&args, "actor-calls", "", &[("calls/s", rates), ("sync p50 us", p50s)]);
    }
    if args.wants("put-get") {
        let buffer = vec![7u8; 100 << 20];
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        for _ in 0..PUT_WARM_UPS {
            let r = keel.put_bytes(&buffer)?;
            assert_eq!(keel.get_bytes(&r)?.len(), buffer.len());
        }
        for _ in 0..args.runs {
            let start = Instant::now();
            let r = keel.put_bytes(&buffer)?;
            puts.push(buffer.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
            let start = Instant::now();
            let back = keel.get_bytes(&r)?;
            gets.push(buffer.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
            assert_eq!(back.len(), buffer.len());
        }
        report(&args, "put-get", "GB/s", &[("put", puts), ("get", gets)]);
    }
    if args.wants("small-puts") {
        let small = vec![1u8; 1024];
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let start = Instant::now();
            let refs: Vec<_> = (0..10_000).map(|_| keel.put_bytes(&small)).collect::<keel::Result<_>>()?;
            rates.push(refs.len() as f64 / start.elapsed().as_secs_f64());
        }
        report(&args, "small-puts", "puts/s", &[("rate", rates)]);
    }
    if args.wants("map-reduce") {
        let round = || -> keel::Result<f64> {
            let start = Instant::now();
            let maps: Vec<_> = (0..200).map(|i| MIB.call(&keel, (i,))).collect::<keel::Result<_>>()?;
            let reduces: Vec<_> =
                maps.chunks(20).map(|part| REDUCE.call(&keel, (part.to_vec(),))).collect::<keel::Result<_>>()?;
            let total: u64 = keel.get_all(&reduces)?.into_iter().sum();
            assert_eq!(total, 200 << 20);
            Ok(start.elapsed().as_secs_f64())
        };
        for _ in 0..MAP_REDUCE_WARM_UPS {
            round()?;
        }
        let walls = (0..args.runs).map(|_| round()).collect::<keel::Result<Vec<_>>>()?;
        report(&args, "map-reduce", "s", &[("wall", walls)]);
    }
    if args.wants("chain") {
        let mut walls = Vec::new();
        for _ in 0..args.runs {
            let start = Instant::now();
            let mut last = NEXT.call(&keel, (0,))?;
            for _ in 1..1_000 {
                last = NEXT.call(&keel, (&last,))?;
            }
            assert_eq!(keel.get(&last)?, 1_000);
            walls.push(start.elapsed().as_secs_f64());
        }
        report(&args, "chain", "s", &[("wall", walls)]);
    }
    Ok(())
}

/// Workload 9, in a process of its own: see the module's documentation.
fn reconstruction(functions: &[&'static dyn keel::Registered]) -> keel::Result<f64> {
    use keel_daemon::head::{self, HeadOptions};
    use keel_daemon::node::{self, NodeOptions};
    let dir = std::env::temp_dir().join(format!("keel-bench-reconstruction-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let token = keel_net::Token::generate();
    let token_file = dir.join("token");
    token.save(&token_file).expect("the token file");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let (head, nodes, ids) = rt.block_on(async {
        let mut options = HeadOptions::new("127.0.0.1:0", token.clone());
        options.config.node_timeout = keel_kernel::Duration::from_millis(1_000);
        options.config.heartbeat_period = keel_kernel::Duration::from_millis(100);
        let head = head::start(options).await.expect("a head");
        let mut nodes = Vec::new();
        for i in 0..2 {
            let (work, store) = (dir.join(format!("node-{i}")), dir.join(format!("store-{i}")));
            let worker = keel_net::wire::WorkerProgram::new("/bin/false", Vec::new());
            let options = NodeOptions {
                config: keel_kernel::NodeConfig {
                    heartbeat_period: keel_kernel::Duration::from_millis(100),
                    ..keel_kernel::NodeConfig::default()
                },
                ..NodeOptions::new(
                    head.addr().to_string(),
                    token.clone(),
                    keel::ResourceSet::cpus(1),
                    work,
                    store,
                    worker,
                )
            };
            nodes.push(node::start(options).await.expect("a node"));
        }
        let ids = loop {
            let status = keel_daemon::client::status(&head.addr().to_string(), &token).await.expect("status");
            if status.nodes.len() == 2 {
                break status.nodes.iter().map(|n| (n.id, n.addr.clone())).collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        (head, nodes, ids)
    });
    std::env::set_var("KEEL_ADDRESS", head.addr().to_string());
    std::env::set_var("KEEL_TOKEN_FILE", &token_file);
    let keel = keel::init(functions)?;
    // The value is made on the second node (the soft affinity lets its rebuild go elsewhere).
    let (victim, victim_addr) = ids[1].clone();
    let options = keel::TaskOptions {
        strategy: keel::SchedulingStrategy::NodeAffinity { node: victim, soft: true },
        ..keel::TaskOptions::default()
    };
    let value = MIB.call_with(&keel, (9,), &options)?;
    keel.wait(std::slice::from_ref(&value), 1, Duration::from_secs(30))?;
    let index = nodes.iter().position(|n| n.data_addr().to_string() == victim_addr).expect("the victim is one of ours");
    let killed = Instant::now();
    nodes[index].abort();
    let back = keel.get_bytes(&value)?;
    let seconds = killed.elapsed().as_secs_f64();
    assert!(back.len() == 1 << 20 && back.iter().all(|&b| b == 9), "the rebuilt value differs");
    drop(back);
    drop(keel);
    for n in &nodes {
        n.abort();
    }
    head.abort();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(seconds)
}
