//! How much state the Head keeps per finished-and-freed task.
//!
//! Runs tasks through a Head on 1,000 nodes of 16 CPUs (node answers are synthesised here), drops
//! the driver's handle to every result, then prints the Head's record counts, its retained lineage
//! and the process's resident-memory growth.
//!
//! `cargo run --release --example head_state [-- TASKS]` (default 1,000,000).

use keel_kernel::proto::{
    DriverToHead, HeadToNode, Hello, NodeToHead, ReturnValue, TaskOutcome, Welcome, PROTOCOL_VERSION,
};
use keel_kernel::testkit::task;
use keel_kernel::{
    ConnId, Head, HeadConfig, HeadInput, HeadOutput, JobId, NodeId, ObjectId, ResourceSet, TaskId, Time,
};
use std::collections::VecDeque;
use std::time::Instant;

const NODES: u64 = 1_000;
const CPUS: u64 = 16;
/// Tasks submitted before their results are awaited (one round).
const ROUND: u64 = 10_000;
const NOW: Time = Time(0);
/// Linux page size on the machines this runs on.
const PAGE: u64 = 4096;

/// Resident set size in bytes, from `/proc/self/statm` (0 where it cannot be read).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * PAGE)
}

/// This process's CPU time (user + system) in seconds, from `/proc/self/stat` (100 ticks a second).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

struct Run {
    node: NodeId,
    task: TaskId,
    attempt: u32,
    returns: Vec<ObjectId>,
}

fn drain(head: &mut Head, runs: &mut VecDeque<Run>) {
    while let Some(out) = head.poll_output() {
        if let HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, .. } } = out {
            let returns = spec.return_ids().collect();
            runs.push_back(Run { node, task: spec.task, attempt, returns });
        }
    }
}

fn setup() -> (Head, JobId) {
    let mut head = Head::new(HeadConfig::default());
    for i in 0..NODES {
        let hello = Hello::RegisterNode {
            version: PROTOCOL_VERSION,
            resources: ResourceSet::cpus(CPUS),
            labels: Default::default(),
        };
        head.handle_input(NOW, HeadInput::Connect { conn: ConnId(i), hello }).expect("node registers");
    }
    let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name: "state".into() };
    head.handle_input(NOW, HeadInput::Connect { conn: ConnId(NODES), hello }).expect("job registers");
    let mut job = None;
    while let Some(out) = head.poll_output() {
        if let HeadOutput::ToConn { msg: Welcome::JobRegistered(j), .. } = out {
            job = Some(j);
        }
    }
    (head, job.expect("job registered"))
}

/// Submits `count` tasks from sequence number `first`, finishes them and frees their results.
fn round(head: &mut Head, job: JobId, first: u64, count: u64) {
    let mut runs = VecDeque::new();
    for seq in first..first + count {
        let msg = DriverToHead::SubmitTask(task(job, seq, "f"));
        head.handle_input(NOW, HeadInput::FromDriver { job, msg }).expect("submit");
        drain(head, &mut runs);
    }
    while let Some(run) = runs.pop_front() {
        let values = run
            .returns
            .iter()
            .map(|&object| ReturnValue { object, size: 8, inline: Some(vec![7; 8]), nested: Vec::new() })
            .collect();
        let msg =
            NodeToHead::TaskEnded { task: run.task, attempt: run.attempt, outcome: TaskOutcome::Finished(values) };
        head.handle_input(NOW, HeadInput::FromNode { node: run.node, msg }).expect("task ends");
        drain(head, &mut runs);
        for &object in &run.returns {
            head.handle_input(NOW, HeadInput::FromDriver { job, msg: DriverToHead::RemoveRef(object) }).expect("drop");
            drain(head, &mut runs);
        }
    }
}

fn main() {
    let tasks: u64 = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().expect("TASKS is a number"));
    let (mut head, job) = setup();
    // One warm-up round so that the queues' high-water mark is in the baseline.
    round(&mut head, job, 0, ROUND.min(tasks));
    let before = rss_bytes();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut seq = ROUND;
    while seq < ROUND + tasks {
        let count = ROUND.min(ROUND + tasks - seq);
        round(&mut head, job, seq, count);
        seq += count;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu_start;
    let after = rss_bytes();
    let delta = after.saturating_sub(before);
    println!("tasks                 {tasks} (after a {ROUND}-task warm-up) on {NODES} nodes x {CPUS} CPUs");
    println!(
        "elapsed               {:.3} s ({:.0} tasks/s)",
        elapsed.as_secs_f64(),
        tasks as f64 / elapsed.as_secs_f64()
    );
    println!("cpu time              {cpu:.2} s ({:.0} tasks/s)", tasks as f64 / cpu);
    println!("task_records()        {}", head.task_records());
    println!("object_records()      {}", head.object_records());
    println!("lineage_bytes()       {}", head.lineage_bytes());
    println!("lineage_tasks()       {}", head.lineage_tasks());
    println!("queued_tasks()        {}", head.queued_tasks());
    println!("rss before / after    {before} / {after} bytes");
    println!("rss delta             {delta} bytes ({:.3} bytes per task)", delta as f64 / tasks as f64);
    println!("stats                 {:?}", head.stats());
}
