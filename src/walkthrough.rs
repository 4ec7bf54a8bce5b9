//! `keel walkthrough`: the kernel driven in-process, printing every decision of the head.

use keel_kernel::head::HeadOutput;
use keel_kernel::proto::{
    ActorOptions, Arg, DriverToHead, HeadToDriver, HeadToNode, Labels, PlacementGroupSpec, PlacementStrategy,
    SchedulingStrategy, TaskKind, Welcome,
};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::{ActorId, Amount, Duration, HeadConfig, JobId, NodeConfig, ObjectId, PlacementGroupId, ResourceSet};

/// Options of `keel walkthrough`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seed of the head's RNG (ties among equally good nodes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object per decision instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<(), String> {
    let config = HeadConfig { seed: args.seed, infeasible_grace: Duration::from_secs(2), ..HeadConfig::default() };
    let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
    let gib = 1u64 << 30;
    for zone in ["a", "b", "c"] {
        let labels = Labels::from([("zone".to_string(), zone.to_string())]);
        c.add_host(ResourceSet::cpus(4).with_memory_bytes(16 * gib), labels);
    }
    c.add_host(ResourceSet::cpus(8).with_gpu(Amount::units(2)).with_memory_bytes(64 * gib), Labels::new());
    c.run_for(Duration::from_millis(5));
    let job = c.start_job("walkthrough");
    let reduce_out = submit_work(&mut c, job)?;
    c.run_for(Duration::from_millis(60));

    // Lose the node that holds most map outputs, mid-job.
    let victim = busiest_holder(&c).ok_or("no node holds a map output")?;
    let victim_node = c.node_id(victim);
    tracing::info!(node = %victim_node, at = %c.now(), "crashing the node holding most map outputs");
    if !args.json {
        println!("--- crashing {victim_node} at {} (it holds map outputs) ---", c.now());
    }
    c.crash_host(victim);
    c.run_for(Duration::from_secs(10));
    c.check_invariants();

    let mut hasher = Fnv::default();
    for (t, out) in &c.head_log {
        hasher.write(format!("{t:?}{out:?}").as_bytes());
        if args.json {
            let line = serde_json::json!({ "t_ns": t.0, "decision": out });
            println!("{line}");
        } else if let Some(text) = describe(out) {
            println!("{:>9}  {text}", format!("{t}"));
        }
    }
    let reduced = c.fetch(job, reduce_out);
    tracing::info!(decisions = c.head_log.len(), hash = format!("{:016x}", hasher.0), "walkthrough done");
    let stats = c.head.stats();
    if args.json {
        let summary = serde_json::json!({
            "summary": {
                "tasks_submitted": stats.tasks_submitted, "tasks_finished": stats.tasks_finished,
                "tasks_failed": stats.tasks_failed, "retries": stats.retries,
                "reconstructions": stats.reconstructions, "nodes_lost": stats.nodes_lost,
                "reduce_ready": matches!(reduced, Some(Ok(_))), "event_log_hash": format!("{:016x}", hasher.0),
            }
        });
        println!("{summary}");
    } else {
        println!("---");
        println!(
            "tasks submitted {}, finished {}, failed {}, retried {}, rebuilt {}; nodes lost {}",
            stats.tasks_submitted,
            stats.tasks_finished,
            stats.tasks_failed,
            stats.retries,
            stats.reconstructions,
            stats.nodes_lost
        );
        match &reduced {
            Some(Ok(bytes)) => println!("reduce result ready after the loss: {} bytes", bytes.len()),
            Some(Err(reason)) => println!("reduce result failed: {reason}"),
            None => println!("reduce result not ready"),
        }
        println!("event-log hash {:016x} (same seed, same hash)", hasher.0);
    }
    match reduced {
        Some(Ok(_)) => Ok(()),
        _ => Err("the reduce task did not complete after the node loss".into()),
    }
}

/// Submits the walkthrough's work; returns the reduce task's output.
fn submit_work(c: &mut Cluster, job: JobId) -> Result<ObjectId, String> {
    let e = |e: keel_kernel::InputError| e.to_string();
    let mut maps = Vec::new();
    for i in 0..8 {
        let spec = task(job, i, "ms=20;bytes=300000");
        maps.push(spec.return_ids().next().expect("one return"));
        c.submit(job, spec).map_err(e)?;
    }
    let mut reduce = task(job, 100, "ms=200;bytes=64");
    reduce.args = maps.iter().map(|o| Arg::Ref(*o)).collect();
    let reduce_out = reduce.return_ids().next().expect("one return");
    c.submit(job, reduce).map_err(e)?;

    let mut gpu = task(job, 200, "ms=30");
    gpu.resources = ResourceSet::cpus(1).with_gpu(Amount(5_000));
    c.submit(job, gpu).map_err(e)?;

    let mut zoned = task(job, 201, "ms=5");
    zoned.label_selector =
        vec![keel_kernel::proto::LabelConstraint::In { key: "zone".into(), values: vec!["b".into()] }];
    c.submit(job, zoned).map_err(e)?;

    let pg = PlacementGroupId(1);
    let spec = PlacementGroupSpec {
        bundles: vec![ResourceSet::cpus(1); 3],
        strategy: PlacementStrategy::StrictSpread,
        name: Some("gang".into()),
        detached: false,
    };
    c.driver(job, DriverToHead::CreatePlacementGroup { pg, spec }).map_err(e)?;
    let mut in_group = task(job, 300, "ms=15");
    in_group.strategy = SchedulingStrategy::PlacementGroup { pg, bundle: Some(2) };
    c.submit(job, in_group).map_err(e)?;

    let actor = ActorId(1);
    let mut creation = task(job, 400, "ms=2");
    creation.kind = TaskKind::ActorCreation(actor);
    creation.num_returns = 0;
    let options = ActorOptions { name: Some("counter".into()), max_restarts: 1, ..ActorOptions::default() };
    c.driver(job, DriverToHead::CreateActor { options, creation: creation.into() }).map_err(e)?;
    for seq in 0..3 {
        let mut call = task(job, 500 + seq, "ms=1");
        call.resources = ResourceSet::default();
        call.kind = TaskKind::ActorMethod { actor, seq };
        c.submit(job, call).map_err(e)?;
    }

    let mut infeasible = task(job, 600, "ms=1");
    infeasible.resources = ResourceSet::cpus(64);
    let infeasible_out = infeasible.return_ids().next().expect("one return");
    c.submit(job, infeasible).map_err(e)?;
    c.driver(job, DriverToHead::Subscribe(vec![reduce_out, infeasible_out])).map_err(e)?;
    Ok(reduce_out)
}

fn busiest_holder(c: &Cluster) -> Option<usize> {
    (0..c.hosts.len()).filter(|h| c.hosts[*h].up).max_by_key(|h| (c.hosts[*h].store.len(), std::cmp::Reverse(*h)))
}

fn describe(out: &HeadOutput) -> Option<String> {
    Some(match out {
        HeadOutput::ToConn { msg: Welcome::NodeRegistered(n), .. } => format!("register   node {n}"),
        HeadOutput::ToConn { msg: Welcome::JobRegistered(j), .. } => format!("register   job {j}"),
        HeadOutput::ToConn { msg: Welcome::Refused(e), .. } => format!("refuse     {e}"),
        HeadOutput::ToNode { node, msg } => match msg {
            HeadToNode::RunTask { spec, attempt, allocation, args, .. } => {
                let gpus: Vec<u32> = allocation.gpus.iter().map(|(d, _)| *d).collect();
                let what = match &spec.kind {
                    TaskKind::Normal => "task".to_string(),
                    TaskKind::ActorCreation(a) => format!("create {a}"),
                    TaskKind::ActorMethod { actor, seq } => format!("call {actor}#{seq}"),
                };
                format!(
                    "dispatch   {} ({what}, attempt {attempt}) -> {node} {:?}{}{}",
                    spec.task,
                    allocation.resources,
                    if gpus.is_empty() { String::new() } else { format!(" gpus {gpus:?}") },
                    if args.is_empty() { String::new() } else { format!(", {} args", args.len()) }
                )
            }
            HeadToNode::FreeObjects(objs) => format!("free       {} object(s) on {node}", objs.len()),
            HeadToNode::CancelTask { task, .. } => format!("cancel     {task} on {node}"),
            HeadToNode::KillActor { actor, .. } => format!("kill       {actor} on {node}"),
            HeadToNode::Reregister => format!("reregister {node}"),
            _ => return None,
        },
        HeadOutput::ToDriver { msg, .. } => match msg {
            HeadToDriver::ObjectReady { object, size, .. } => format!("ready      {object} ({size} bytes)"),
            HeadToDriver::ObjectFailed { object, reason } => format!("failed     {object}: {reason}"),
            HeadToDriver::ActorStateChanged { actor, state } => format!("actor      {actor} {state:?}"),
            HeadToDriver::PlacementGroupReady { pg, nodes } => format!("group      {pg} reserved on {nodes:?}"),
            HeadToDriver::PlacementGroupFailed { pg, reason } => format!("group      {pg} failed: {reason}"),
            HeadToDriver::Rejected { error } => format!("rejected   {error}"),
            HeadToDriver::NamedActor { .. } => return None,
        },
        HeadOutput::NodeDead(n) => format!("dead       node {n} (missed its deadline)"),
        HeadOutput::NodeDrained(n) => format!("drained    node {n}"),
        HeadOutput::Launch { request, node_type, count } => {
            format!("launch     {count} x {node_type} (request {request})")
        }
        HeadOutput::Terminate { node } => format!("terminate  idle node {node}"),
    })
}

/// FNV-1a, for the event-log hash.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}
