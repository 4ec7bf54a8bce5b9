//! One chaos seed in the simulator, invariant checks off: the shape `cargo bench --bench sim`
//! measures, as a plain program for profilers (`valgrind --tool=callgrind`, `perf record`).
//!
//! `cargo run --release --example sim_seed -- [SEED] [NODES] [TASKS]` (defaults 0, 50, 5000)
//! prints the events handled, the wall time and the rate.

use keel_sim::scenario::Scenario;
use std::time::Instant;

// The `keel` binary's allocator (the library sets it).
use keel as _;

fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).map_or(default, |a| a.parse().expect("a number"));
    let (seed, nodes, tasks) = (arg(1, 0), arg(2, 50) as usize, arg(3, 5000) as usize);
    let mut scenario = Scenario::chaos(nodes, tasks);
    scenario.check_every = 0;
    let started = Instant::now();
    let outcome = scenario.run(seed, None);
    let took = started.elapsed().as_secs_f64();
    let events = outcome.counts.events;
    println!(
        "seed {seed}: {events} events in {took:.3} s ({:.0} events/s), hash {}, {} violations",
        events as f64 / took,
        outcome.hash,
        outcome.violations.len()
    );
}
