//! The real cluster's commands: `keel head`, `keel node`, `keel up`, `keel status`,
//! `keel submit`, `keel stop` and the hidden `keel worker`.
//!
//! Where to find the cluster: `--address`, else `KEEL_ADDRESS`, else the address file that
//! `keel head` and `keel up` write in the Keel home (`KEEL_HOME`, else `~/.keel`). The token:
//! `--token-file`, else `KEEL_TOKEN_FILE`, else `token` in the Keel home (created by the first
//! `keel head` or `keel up` when missing, readable by its owner only).

use keel_daemon::client::{self, keel_home, SubmitOptions, SubmitOutcome};
use keel_daemon::head::{self, HeadOptions};
use keel_daemon::node::{self, NodeOptions};
use keel_kernel::autoscaler::{Unmet, NODE_TYPE_LABEL};
use keel_kernel::proto::{LabelConstraint, Labels};
use keel_kernel::{Amount, NodeConfig, ResourceSet};
use keel_net::wire::{AutoscalerReport, ClusterStatus, Stream, WorkerProgram};
use keel_net::{Token, DEFAULT_MAX_FRAME};
use keel_provider::local::{LocalOptions, LocalProvider};
use keel_provider::SharedProvider;
use keel_sim::autoscale::AutoscaleSpec;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default port of the head.
pub const DEFAULT_PORT: u16 = 6380;

/// Where the cluster is and how to prove membership.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// The head's address (host:port). Default: $KEEL_ADDRESS, else the address file in the Keel home.
    #[arg(long)]
    address: Option<String>,
    /// The cluster token file. Default: $KEEL_TOKEN_FILE, else `token` in the Keel home.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// What a node offers, or what a task needs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ResourceFlags {
    /// CPUs (fractions allowed).
    #[arg(long)]
    cpus: Option<f64>,
    /// GPUs (a fraction below one shares a device).
    #[arg(long)]
    gpus: Option<f64>,
    /// Memory: bytes, or with a unit (512MiB, 4GiB, 2GB).
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Custom resources: NAME=AMOUNT, comma-separated or repeated (e.g. --resources disk=2,fpga=1).
    #[arg(long, value_delimiter = ',', value_parser = parse_custom)]
    resources: Vec<(String, f64)>,
}

/// Start the head: the cluster's scheduler, object directory and failure detector.
///
/// It listens for nodes, drivers and operators; every peer must prove it holds the cluster token
/// before anything else is read. Prints the address nodes join with.
///
/// Example: keel head --port 6380  (then, on each machine: keel node --head HOST:6380)
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct HeadArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// The port (0 picks a free one).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The cluster token file (created with a fresh token when missing).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A directory for the head's state: its journal of every input (fsync'd in batches before
    /// any decision leaves), its address file, and the token when no --token-file. A head
    /// restarted with the same directory loads the latest snapshot, replays the journal after it
    /// and carries on: jobs, tasks and objects it had accepted are not lost. Without it, nothing
    /// survives a restart.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Snapshot the head's state, and start the journal afresh, when the journal reaches this
    /// many MiB.
    #[arg(long, default_value_t = 64)]
    snapshot_mib: u64,
    /// Declare a node dead after this long without a heartbeat.
    #[arg(long, default_value_t = 10_000)]
    node_timeout_ms: u64,
}

/// Start a node daemon and join a cluster.
///
/// The node offers its resources to the head, starts worker processes for the tasks it is given
/// (their output is logged under the work directory and streamed to whoever submitted the task),
/// and serves object bytes to its peers on its data port.
///
/// Example: keel node --head 10.0.0.1:6380 --cpus 8 --gpus 1 --labels zone=a
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct NodeArgs {
    /// The head's address.
    #[arg(long)]
    head: Option<String>,
    /// The cluster token file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    resources: ResourceFlags,
    /// Labels: KEY=VALUE, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The address the data port listens on (0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// The data port (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    data_port: u16,
    /// The address peers are told to dial for the data port (HOST:PORT). Default: the listening
    /// address, or, when listening on 0.0.0.0, this machine's address on the route to the head.
    #[arg(long)]
    advertise: Option<String>,
    /// Seconds the head may say nothing (it sends a keepalive every second) before this node
    /// gives the connection up and registers again.
    #[arg(long, default_value_t = 10)]
    head_silence_s: u64,
    /// The node's directory (logs, worker socket). Default: a fresh one under the Keel home.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Object store capacity.
    #[arg(long, value_parser = parse_bytes, default_value = "2GiB")]
    store_capacity: u64,
}

/// Start a head and nodes on this machine, in one process, and keep them running until
/// `keel stop` or Ctrl-C. Writes the address and the token to the Keel home, so that
/// `keel submit`, `keel status` and `keel stop` find the cluster without flags.
///
/// With --autoscale FILE, the cluster grows and shrinks with its work: when tasks wait, the
/// head's autoscaler launches nodes of the file's types, each a `keel node` process on this
/// machine (its log in the run directory printed at start), and stops nodes idle for
/// idle_timeout_s. `keel status` shows the launches in flight, the demand no node serves and
/// the types left alone after failed launches. A cluster file (every [autoscaler] field and
/// every field but name and max_workers optional; the simulator's launch_* and preempt_mean_s
/// fields are ignored here):
///
///   [autoscaler]
///   period_s = 5             # how often the autoscaler decides
///   idle_timeout_s = 60      # a node idle this long is stopped
///   launch_timeout_s = 600   # a node not registered by then is stopped, its launch failed
///   max_launch_failures = 3  # failed launches of a type in a row before it is left
///   failure_backoff_s = 300  # alone this long
///
///   [[node_type]]
///   name = "cpu2"
///   cpus = 2
///   memory_gib = 4
///   labels = { zone = "a" }
///   min_workers = 0          # nodes kept whatever the demand
///   max_workers = 4
///
/// Examples: keel up --nodes 3   then   keel submit -- echo hello
///           keel up --autoscale cluster.toml   then   keel submit -- echo hello; keel status
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct UpArgs {
    /// How many fixed nodes (in this process). Default: 2; with --autoscale, none (only the
    /// autoscaler's nodes).
    #[arg(long)]
    nodes: Option<usize>,
    /// CPUs per node (default: this machine's cores, shared among the nodes, at least 1).
    #[arg(long)]
    cpus: Option<f64>,
    /// The head's port (0 picks a free one).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Autoscale with the node types and settings of this cluster file (TOML, see above).
    #[arg(long, value_name = "FILE")]
    autoscale: Option<PathBuf>,
}

/// Show the cluster: nodes with their resources in use, jobs, queued and infeasible demand.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    connect: Connect,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Run a command as a task on the cluster, stream its output, and exit with its exit code.
///
/// The command runs on a node with the resources asked for (one CPU by default). If its worker
/// or node dies, it is retried. If the cluster can never run it (no node has the resources),
/// the reason is printed and the exit code is 1.
///
/// Example: keel submit --cpus 2 -- python train.py --epochs 3
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SubmitArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(flatten)]
    resources: ResourceFlags,
    /// Run only on nodes with these labels: KEY=VALUE, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Retries after a worker or node failure.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Stop the cluster: the head tells its nodes to stop (their workers are killed), then exits.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    connect: Connect,
}

/// Loads the token, or creates it when `create` and the file is missing.
fn token_at(path: &Path, create: bool) -> Result<Token, String> {
    if !path.exists() && create {
        let token = Token::generate();
        token.save(path).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), "created a cluster token");
        return Ok(token);
    }
    Token::load(path).map_err(|e| format!("{e} (every node and client needs the cluster's token file)"))
}

fn default_token_file(flag: &Option<PathBuf>) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os("KEEL_TOKEN_FILE").map(PathBuf::from))
        .unwrap_or_else(|| keel_home().join("token"))
}

impl Connect {
    fn resolve(&self) -> Result<(String, Token), String> {
        let address = match self.address.clone().or_else(|| std::env::var("KEEL_ADDRESS").ok()) {
            Some(a) => a,
            None => {
                let file = keel_home().join("address");
                std::fs::read_to_string(&file).map(|s| s.trim().to_string()).map_err(|_| {
                    format!(
                        "no cluster address: pass --address, set KEEL_ADDRESS, or start one with `keel up` ({} is missing)",
                        file.display()
                    )
                })?
            }
        };
        let token = token_at(&default_token_file(&self.token_file), false)?;
        Ok((address, token))
    }
}

impl ResourceFlags {
    fn to_set(&self, default_cpus: f64) -> Result<ResourceSet, String> {
        let amount = |what: &str, x: f64| Amount::from_f64(x).ok_or(format!("--{what} {x} is not a valid amount"));
        let mut set = ResourceSet { cpu: amount("cpus", self.cpus.unwrap_or(default_cpus))?, ..ResourceSet::default() };
        if let Some(g) = self.gpus {
            set.gpu = amount("gpus", g)?;
        }
        if let Some(m) = self.memory {
            set = set.with_memory_bytes(m);
        }
        for (name, x) in &self.resources {
            set = set.with_custom(name, amount("resources", *x)?);
        }
        set.validate().map_err(|e| format!("invalid resources: {e}"))?;
        Ok(set)
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{s:?} is not a size (try 512MiB or 4GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * scale as f64) as u64)
}

fn parse_custom(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s.split_once('=').ok_or(format!("{s:?} is not NAME=AMOUNT"))?;
    let v: f64 = v.parse().map_err(|_| format!("{v:?} in {s:?} is not a number"))?;
    Ok((k.to_string(), v))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or(format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Ctrl-C or `SIGTERM`.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match &mut term {
            Some(t) => drop(t.recv().await),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())
}

fn command_worker() -> Result<WorkerProgram, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the keel executable: {e}"))?;
    Ok(WorkerProgram {
        path: exe.display().to_string(),
        args: vec!["worker".into()],
        cwd: String::new(),
        env: Vec::new(),
    })
}

fn write_address(dir: &Path, addr: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("address");
    std::fs::write(&file, format!("{addr}\n")).map_err(|e| format!("{}: {e}", file.display()))
}

/// `keel head`.
pub fn run_head(args: &HeadArgs) -> Result<(), String> {
    let state = args.state_dir.clone().unwrap_or_else(keel_home);
    let token_file = args.token_file.clone().unwrap_or_else(|| state.join("token"));
    let token = token_at(&token_file, true)?;
    let mut options = HeadOptions::new(format!("{}:{}", args.bind, args.port), token);
    options.config.node_timeout = keel_kernel::Duration::from_millis(args.node_timeout_ms);
    options.journal = args.state_dir.as_ref().map(|d| d.join("head.journal"));
    options.snapshot_after_bytes = args.snapshot_mib.max(1) << 20;
    runtime()?.block_on(async {
        let head = head::start(options).await.map_err(|e| e.to_string())?;
        let addr = head.addr().to_string();
        write_address(&state, &addr)?;
        println!("keel head listening on {addr} (token: {})", token_file.display());
        println!("join with: keel node --head {addr} --token-file {}", token_file.display());
        tokio::select! {
            _ = head.wait() => {}
            _ = tokio::signal::ctrl_c() => println!("keel head: interrupted"),
        }
        Ok(())
    })
}

fn node_options(args: &NodeArgs) -> Result<NodeOptions, String> {
    let head = args
        .head
        .clone()
        .or_else(|| std::env::var("KEEL_ADDRESS").ok())
        .ok_or("which head? pass --head HOST:PORT or set KEEL_ADDRESS")?;
    let token = token_at(&default_token_file(&args.token_file), false)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let resources = args.resources.to_set(cores)?;
    let labels: Labels = args.labels.iter().cloned().collect();
    let work_dir =
        args.work_dir.clone().unwrap_or_else(|| keel_home().join("nodes").join(format!("node-{}", std::process::id())));
    let store_dir = shm_dir().join(format!("keel-{}-{}", std::process::id(), work_dir.display().to_string().len()));
    let config = NodeConfig { object_store_capacity_bytes: args.store_capacity, ..NodeConfig::default() };
    Ok(NodeOptions {
        head,
        token,
        resources,
        labels,
        data_listen: format!("{}:{}", args.bind, args.data_port),
        data_advertise: args.advertise.clone(),
        head_silence: std::time::Duration::from_secs(args.head_silence_s.max(2)),
        work_dir,
        store_dir,
        config,
        command_worker: command_worker()?,
        max_frame: DEFAULT_MAX_FRAME,
    })
}

fn shm_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// `keel node`.
pub fn run_node(args: &NodeArgs) -> Result<(), String> {
    let options = node_options(args)?;
    let swept = keel_shm::sweep_orphans(&shm_dir(), "keel-");
    if swept > 0 {
        tracing::info!(swept, "removed the object stores of node processes that died");
    }
    let store = options.store_dir.clone();
    let result = runtime()?.block_on(async {
        let node = node::start(options).await.map_err(|e| e.to_string())?;
        println!("keel node: data port {}", node.data_addr());
        tokio::select! {
            r = node.wait() => r.map_err(|e| e.to_string()),
            () = interrupted() => Ok(()),
        }
    });
    let _ = keel_shm::remove_store(&store);
    result
}

/// `keel up`.
pub fn run_up(args: &UpArgs) -> Result<(), String> {
    // A bad cluster file is reported before anything starts.
    let spec = args.autoscale.as_deref().map(AutoscaleSpec::load).transpose().map_err(|e| e.to_string())?;
    let nodes = args.nodes.unwrap_or(if spec.is_some() { 0 } else { 2 });
    if nodes == 0 && spec.is_none() {
        return Err("--nodes must be at least 1 (or give --autoscale FILE)".into());
    }
    let home = keel_home();
    let token_file = home.join("token");
    let token = token_at(&token_file, true)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let cpus = args.cpus.unwrap_or_else(|| (cores / nodes.max(1) as f64).max(1.0).floor());
    let worker = command_worker()?;
    let run_dir = home.join("up").join(std::process::id().to_string());
    let store_root = shm_dir().join(format!("keel-up-{}", std::process::id()));
    let mut options = HeadOptions::new(format!("127.0.0.1:{}", args.port), token.clone());
    let provider = match &spec {
        Some(spec) => Some(autoscaling(&mut options, spec, &token_file, &run_dir)?),
        None => None,
    };
    let result = runtime()?.block_on(async {
        let head = head::start(options).await.map_err(|e| e.to_string())?;
        let addr = head.addr().to_string();
        let mut handles = Vec::new();
        for i in 0..nodes {
            let resources = ResourceSet { cpu: Amount::from_f64(cpus).ok_or("bad --cpus")?, ..ResourceSet::default() };
            let (work, store) = (run_dir.join(format!("node-{i}")), store_root.join(format!("node-{i}")));
            let options = NodeOptions::new(&addr, token.clone(), resources, work, store, worker.clone());
            handles.push(node::start(options).await.map_err(|e| e.to_string())?);
        }
        write_address(&home, &addr)?;
        match &spec {
            None => println!("keel up: head on {addr}, {nodes} nodes of {cpus} CPUs each"),
            Some(spec) => print_autoscaling(&addr, spec, nodes, cpus),
        }
        println!("  logs:   {}", run_dir.display());
        if spec.is_some() {
            println!("          (an autoscaled node's log: autoscaled/TYPE-N/node.log in there)");
        }
        println!("  try:    keel submit -- echo hello");
        println!("  stop:   keel stop (or Ctrl-C)");
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = head.wait() => {}
            () = interrupted() => println!("keel up: interrupted"),
        }
        if let Some(provider) = &provider {
            let done = provider.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
            done.await;
        }
        for n in &handles {
            n.abort();
        }
        Ok(())
    });
    let _ = keel_shm::remove_store(&store_root);
    result
}

/// Sets the head up to autoscale with `spec`, its nodes local `keel node` processes; returns
/// the provider (for `keel up` to stop its nodes when interrupted).
fn autoscaling(
    options: &mut HeadOptions,
    spec: &AutoscaleSpec,
    token_file: &Path,
    run_dir: &Path,
) -> Result<SharedProvider, String> {
    let config = spec.config();
    let keel = std::env::current_exe().map_err(|e| format!("cannot find the keel executable: {e}"))?;
    let mut local = LocalOptions::new(keel, token_file, run_dir.join("autoscaled"));
    local.programs =
        spec.node_types.iter().filter_map(|t| Some((t.name.clone(), PathBuf::from(t.program.as_ref()?)))).collect();
    // A node the head has given up on does not linger.
    local.register_within = Some(std::time::Duration::from_nanos(config.launch_timeout.0));
    options.config.autoscaler = Some(config);
    let provider = keel_provider::shared(LocalProvider::new(local));
    options.provider = Some(provider.clone());
    Ok(provider)
}

fn print_autoscaling(addr: &str, spec: &AutoscaleSpec, nodes: usize, cpus: f64) {
    let fixed = if nodes == 0 { String::new() } else { format!(" and {nodes} fixed nodes of {cpus} CPUs each") };
    println!("keel up: head on {addr}, autoscaling{fixed}");
    for t in &spec.node_types {
        println!(
            "  type:   {} ({}), {} to {} nodes",
            t.name,
            resources_text(&t.resources()),
            t.min_workers,
            t.max_workers
        );
    }
    let s = &spec.autoscaler;
    println!(
        "  nodes:  `keel node` processes started when work waits (at most {} in all), stopped after {} s idle",
        spec.max_workers(),
        s.idle_timeout_s
    );
    println!("  watch:  keel status  (nodes, queued work, the autoscaler's launches and failures)");
}

/// `keel status`.
pub fn run_status(args: &StatusArgs) -> Result<(), String> {
    let (addr, token) = args.connect.resolve()?;
    let status = runtime()?.block_on(client::status(&addr, &token)).map_err(|e| format!("{addr}: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&status)).expect("JSON"));
    } else {
        print_status(&addr, &status);
    }
    Ok(())
}

fn resources_text(r: &ResourceSet) -> String {
    let mut parts = vec![format!("{} CPU", r.cpu.as_f64())];
    if r.gpu != Amount::ZERO {
        parts.push(format!("{} GPU", r.gpu.as_f64()));
    }
    if r.memory != Amount::ZERO {
        parts.push(format!("{:.1} GiB", r.memory.as_f64() / (1u64 << 30) as f64));
    }
    for (k, v) in &r.custom {
        parts.push(format!("{} {k}", v.as_f64()));
    }
    parts.join(", ")
}

fn status_json(s: &ClusterStatus) -> serde_json::Value {
    let res = |r: &ResourceSet| {
        let mut m = serde_json::Map::new();
        m.insert("cpu".into(), r.cpu.as_f64().into());
        m.insert("gpu".into(), r.gpu.as_f64().into());
        m.insert("memory_bytes".into(), r.memory.as_f64().into());
        for (k, v) in &r.custom {
            m.insert(k.clone(), v.as_f64().into());
        }
        serde_json::Value::Object(m)
    };
    serde_json::json!({
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "id": n.id.0, "addr": n.addr, "host": n.host, "total": res(&n.total),
            "available": res(&n.available), "labels": n.labels,
        })).collect::<Vec<_>>(),
        "jobs": s.jobs.iter().map(|(j, name)| serde_json::json!({"id": j.0, "name": name})).collect::<Vec<_>>(),
        "queued": s.queued.iter().map(|d| serde_json::json!({"shape": res(&d.shape), "count": d.count})).collect::<Vec<_>>(),
        "infeasible": s.infeasible.iter().map(|d| serde_json::json!({"shape": res(&d.shape), "count": d.count})).collect::<Vec<_>>(),
        "tasks_submitted": s.tasks_submitted,
        "tasks_finished": s.tasks_finished,
        "tasks_failed": s.tasks_failed,
        "nodes_lost": s.nodes_lost,
        "retries": s.retries,
        "reconstructions": s.reconstructions,
        "uptime_s": s.uptime_s,
        "connections": s.connections,
        "autoscaler": s.autoscaler.as_ref().map(|a| serde_json::json!({
            "launching": a.launching.iter().map(|(request, ty, left)| serde_json::json!({
                "request": request, "node_type": ty, "nodes_left": left,
            })).collect::<Vec<_>>(),
            "unmet": a.unmet.iter().map(|(shape, count, why)| serde_json::json!({
                "shape": res(shape), "count": count, "why": unmet_text(*why),
            })).collect::<Vec<_>>(),
            "backing_off": a.backing_off.iter().map(|(ty, left)| serde_json::json!({
                "node_type": ty, "seconds_left": left,
            })).collect::<Vec<_>>(),
            "launches_failed": a.launches_failed,
            "last_launch_failure": a.last_launch_failure,
        })),
    })
}

fn unmet_text(why: Unmet) -> &'static str {
    match why {
        Unmet::Infeasible => "no node type can hold it",
        Unmet::AtLimit => "held back by a limit",
    }
}

fn print_autoscaler(a: &AutoscalerReport) {
    let left: u32 = a.launching.iter().map(|(_, _, n)| n).sum();
    println!(
        "autoscaler: {left} nodes launching, {} types backing off, {} launches failed",
        a.backing_off.len(),
        a.launches_failed
    );
    for (request, ty, n) in &a.launching {
        println!("  launching    {n} x {ty} (request {request})");
    }
    for (shape, count, why) in &a.unmet {
        println!("  unmet        {count} x {} ({})", resources_text(shape), unmet_text(*why));
    }
    for (ty, seconds) in &a.backing_off {
        println!("  backing off  {ty} ({seconds:.0} s left)");
    }
    if let Some(reason) = &a.last_launch_failure {
        println!("  last failed launch: {reason}");
    }
}

fn print_status(addr: &str, s: &ClusterStatus) {
    println!("cluster at {addr}, up {:.0} s, {} node and driver connections", s.uptime_s, s.connections);
    println!("{} nodes", s.nodes.len());
    for n in &s.nodes {
        let mut used = n.total.clone();
        used.sub(&n.available);
        let ty = n.labels.get(NODE_TYPE_LABEL).map(|t| format!(" ({t})")).unwrap_or_default();
        println!(
            "  {:<6} {:<22} used {} of {}{ty}",
            n.id.to_string(),
            n.addr,
            resources_text(&used),
            resources_text(&n.total)
        );
    }
    println!("{} jobs running", s.jobs.len());
    for (job, name) in &s.jobs {
        println!("  {job:<6} {name}");
    }
    let demand = |title: &str, d: &[keel_net::wire::Demand]| {
        let total: u64 = d.iter().map(|x| x.count).sum();
        println!("{total} {title}");
        for x in d {
            println!("  {:>6} x {}", x.count, resources_text(&x.shape));
        }
    };
    demand("tasks queued", &s.queued);
    demand("tasks infeasible", &s.infeasible);
    println!(
        "tasks: {} submitted, {} finished, {} failed, {} retried, {} rebuilt; {} nodes lost",
        s.tasks_submitted, s.tasks_finished, s.tasks_failed, s.retries, s.reconstructions, s.nodes_lost
    );
    if let Some(a) = &s.autoscaler {
        print_autoscaler(a);
    }
}

/// `keel submit`; returns the process exit code.
pub fn run_submit(args: &SubmitArgs) -> Result<u8, String> {
    let (addr, token) = args.connect.resolve()?;
    let resources = args.resources.to_set(1.0)?;
    let labels =
        args.labels.iter().map(|(k, v)| LabelConstraint::In { key: k.clone(), values: vec![v.clone()] }).collect();
    let options = SubmitOptions { resources, labels, max_retries: args.retries, name: args.command.join(" ") };
    let outcome = runtime()?
        .block_on(client::submit_command(&addr, &token, args.command.clone(), options, |chunk| {
            let _ = match chunk.stream {
                Stream::Stdout => std::io::stdout().write_all(&chunk.data),
                Stream::Stderr => std::io::stderr().write_all(&chunk.data),
            };
        }))
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = std::io::stdout().flush();
    match outcome {
        SubmitOutcome::Exited(code) => Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        SubmitOutcome::Failed(reason) => {
            eprintln!("keel submit: {reason}");
            Ok(1)
        }
    }
}

/// `keel stop`.
pub fn run_stop(args: &StopArgs) -> Result<(), String> {
    let (addr, token) = args.connect.resolve()?;
    runtime()?.block_on(client::stop(&addr, &token)).map_err(|e| format!("{addr}: {e}"))?;
    println!("keel stop: the cluster at {addr} is stopping");
    Ok(())
}

/// `keel worker` (started by nodes).
pub fn run_worker() -> Result<(), String> {
    runtime()?.block_on(keel_daemon::worker::run_command_worker()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units_and_bad_units_are_named() {
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("1.5kb").unwrap(), 1500);
        assert!(parse_bytes("3 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn resource_flags_build_a_set_and_refuse_negative_amounts() {
        let flags = ResourceFlags {
            cpus: Some(2.0),
            gpus: Some(0.5),
            memory: Some(1 << 30),
            resources: vec![("disk".into(), 3.0)],
        };
        let set = flags.to_set(1.0).unwrap();
        assert_eq!(set.cpu, Amount::units(2));
        assert_eq!(set.gpu, Amount::from_f64(0.5).unwrap());
        assert_eq!(set.custom["disk"], Amount::units(3));
        let bad = ResourceFlags { cpus: Some(-1.0), ..Default::default() };
        assert!(bad.to_set(1.0).unwrap_err().contains("--cpus -1"));
    }

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("=a").is_err());
    }
}
