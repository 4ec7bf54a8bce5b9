//! Simulator benchmarks: the event loop's speed, and a large map-reduce under node loss.
//!
//! `cargo bench --bench sim` (about three minutes). `keel chaos --seeds 200` reports the third
//! figure of the README, chaos seeds per minute on every core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel_sim::scenario::Scenario;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

// The `keel` binary's allocator (the library sets it), so that the figures are the command's.
use keel as _;

/// One chaos seed (50 nodes, a 5,000-task random DAG, a swarm of faults), invariant checks off:
/// the simulator's own speed, in events per second.
fn events(c: &mut Criterion) {
    let mut scenario = Scenario::chaos(50, 5000);
    scenario.check_every = 0;
    let events = scenario.run(0, None).counts.events;
    let mut group = c.benchmark_group("sim");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(events));
    group.bench_function("chaos_seed_50_nodes_5000_tasks", |b| b.iter(|| black_box(scenario.run(0, None))));
    group.finish();
}

/// A map-reduce of 100,000 tasks (99,000 maps of 200 kB, 1,000 reduces of 99 maps each) on
/// 1,000 four-CPU nodes, ten of which die while the maps run and come back a second later.
fn big_map_reduce(c: &mut Criterion) {
    let mut text = String::from(
        r#"
description = "1,000 nodes, a 100,000-task map-reduce, 1% of the nodes lost"
check_every = 0
[cluster]
nodes = 1000
cpus = 4
[timing]
node_timeout_ms = 500
safety_ms = 4000
[workload]
kind = "map_reduce"
maps = 99000
reduces = 1000
fan_in = 99
ms = 20
bytes = 200000
"#,
    );
    for host in (10..1000).step_by(100) {
        text.push_str(&format!("[[fault]]\nat_ms = 300\nkind = \"crash_node\"\nhost = {host}\nrestart_ms = 1000\n"));
    }
    let scenario = Scenario::parse(Path::new("map_reduce_1000_nodes.toml"), &text).expect("a valid scenario");
    let outcome = scenario.run(0, None);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    assert_eq!(outcome.head.nodes_lost, 10);
    let mut group = c.benchmark_group("sim");
    group.sample_size(10).measurement_time(Duration::from_secs(60));
    group.bench_function("map_reduce_100k_tasks_1000_nodes_1pct_lost", |b| b.iter(|| black_box(scenario.run(0, None))));
    group.finish();
}

criterion_group!(benches, events, big_map_reduce);
criterion_main!(benches);
