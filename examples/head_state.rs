//! How much state the Head keeps per finished-and-freed task.
//!
//! Runs tasks through a Head on 1,000 nodes of 16 CPUs (node answers are synthesised here), drops
//! the driver's handle to every result, then prints the Head's record counts, its retained lineage
//! and the process's resident-memory growth.
//!
//! `cargo run --release --example head_state [-- TASKS]` (default 1,000,000).

use keel_kernel::synthetic::Synthetic;
use keel_kernel::HeadConfig;
use std::time::Instant;

const NODES: u64 = 1_000;
const CPUS: u64 = 16;
/// Tasks submitted before their results are awaited (one round).
const ROUND: u64 = 10_000;
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

fn main() {
    let tasks: u64 = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().expect("TASKS is a number"));
    let mut s = Synthetic::new(HeadConfig::default(), NODES, CPUS);
    // One warm-up round so that the queues' high-water mark is in the baseline.
    s.run_tasks(0, ROUND.min(tasks));
    let before = rss_bytes();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut seq = ROUND;
    while seq < ROUND + tasks {
        let count = ROUND.min(ROUND + tasks - seq);
        assert_eq!(s.run_tasks(seq, count), count);
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
    println!("task_records()        {}", s.head.task_records());
    println!("object_records()      {}", s.head.object_records());
    println!("lineage_bytes()       {}", s.head.lineage_bytes());
    println!("lineage_tasks()       {}", s.head.lineage_tasks());
    println!("queued_tasks()        {}", s.head.queued_tasks());
    println!("rss before / after    {before} / {after} bytes");
    println!("rss delta             {delta} bytes ({:.3} bytes per task)", delta as f64 / tasks as f64);
    println!("stats                 {:?}", s.head.stats());
}
