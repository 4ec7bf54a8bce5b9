//! A synthetic workload of any size, for scale tests and benchmarks: a seeded mix of the shapes
//! real traces have, on a cluster of identical nodes.
//!
//! - 80% of jobs are bags of tasks: one task of 1-32 instances (1-4 CPUs, 1-8 GiB each);
//! - 15% are map-reduce DAGs: 2-16 map instances, then one reduce that waits for all of them;
//! - 5% are gangs (MPI-style): 2-64 one-CPU instances that start together.
//!
//! Run times are drawn from a heavy-tailed mix (most tasks take seconds to minutes, a few take
//! hours). Jobs arrive evenly spread so that the work offered is about 70% of the cluster's
//! capacity over the arrival span: the queue stays short but not empty. The same size, nodes and
//! seed give the same jobs.

use crate::{Job, NodeShape, Recorded, Task};
use keel_kernel::ResourceSet;
use keel_sim::rng::{Rng, Stream};

/// CPUs per node.
pub const NODE_CPUS: u64 = 16;
/// Memory per node, GiB.
pub const NODE_MEMORY_GIB: u64 = 64;
/// The share of the cluster's capacity the offered work takes.
pub const LOAD: f64 = 0.7;

/// `nodes` nodes of [`NODE_CPUS`] CPUs and [`NODE_MEMORY_GIB`] GiB.
pub fn cluster(nodes: usize) -> Vec<NodeShape> {
    (0..nodes)
        .map(|i| NodeShape {
            name: format!("node-{i}"),
            resources: ResourceSet::cpus(NODE_CPUS).with_memory_bytes(NODE_MEMORY_GIB << 30),
            gpu_model: None,
        })
        .collect()
}

/// Jobs with `tasks` task instances in all, for a cluster of `nodes` nodes.
pub fn jobs(tasks: usize, nodes: usize, seed: u64) -> Vec<Job> {
    let mut rng = Rng::new(seed, Stream::Workload);
    let mut jobs = Vec::new();
    let mut left = tasks;
    let mut cpu_seconds = 0.0;
    while left > 0 {
        let kind = rng.below(100);
        let id = format!("job-{}", jobs.len());
        let job = if kind < 80 {
            let n = (rng.between(1, 32) as usize).min(left);
            let cpus = rng.between(1, 4);
            let t = task("bag", n, cpus, rng.between(1, 8), duration_ms(&mut rng), Vec::new());
            cpu_seconds += (n as u64 * cpus) as f64 * t.duration_ms as f64 / 1000.0;
            Job { id, submit_ms: 0, tasks: vec![t], gang: false, after: None, recorded: Recorded::default() }
        } else if kind < 95 && left >= 2 {
            let maps = (rng.between(2, 16) as usize).min(left - 1);
            let map = task("map", maps, 1, 2, duration_ms(&mut rng), Vec::new());
            let reduce = task("reduce", 1, 2, 4, duration_ms(&mut rng) / 2, vec![0]);
            cpu_seconds += maps as f64 * map.duration_ms as f64 / 1000.0 + 2.0 * reduce.duration_ms as f64 / 1000.0;
            Job { id, submit_ms: 0, tasks: vec![map, reduce], gang: false, after: None, recorded: Recorded::default() }
        } else {
            let n = (rng.between(2, 64) as usize).min(left);
            let t = task("rank", n, 1, 1, duration_ms(&mut rng), Vec::new());
            cpu_seconds += n as f64 * t.duration_ms as f64 / 1000.0;
            Job { id, submit_ms: 0, tasks: vec![t], gang: true, after: None, recorded: Recorded::default() }
        };
        left -= job.tasks.iter().map(|t| t.instances as usize).sum::<usize>();
        jobs.push(job);
    }
    // Spread arrivals so that the work is LOAD of the capacity over the span.
    let capacity = (nodes.max(1) as u64 * NODE_CPUS) as f64;
    let span_ms = (cpu_seconds / (capacity * LOAD) * 1000.0) as u64;
    let n = jobs.len() as u64;
    for (i, job) in jobs.iter_mut().enumerate() {
        job.submit_ms = span_ms * i as u64 / n.max(1);
    }
    jobs
}

fn task(name: &str, instances: usize, cpus: u64, gib: u64, duration_ms: u64, deps: Vec<usize>) -> Task {
    Task {
        name: name.to_string(),
        instances: instances as u32,
        resources: ResourceSet::cpus(cpus).with_memory_bytes(gib << 30),
        gpu_models: Vec::new(),
        duration_ms: duration_ms.max(1),
        deps,
        output_bytes: 1 << 10,
        submit_offset_ms: 0,
    }
}

/// Seconds to minutes mostly, an hour or more now and then.
fn duration_ms(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=59 => rng.between(1_000, 60_000),
        60..=94 => rng.between(60_000, 600_000),
        _ => rng.between(600_000, 7_200_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_hold_exactly_the_tasks_asked_for_in_a_fixed_mix_and_arrive_in_order() {
        let jobs = jobs(10_000, 50, 7);
        let instances: usize = jobs.iter().flat_map(|j| &j.tasks).map(|t| t.instances as usize).sum();
        assert_eq!(instances, 10_000);
        assert!(jobs.windows(2).all(|w| w[0].submit_ms <= w[1].submit_ms));
        let gangs = jobs.iter().filter(|j| j.gang).count() as f64 / jobs.len() as f64;
        let dags = jobs.iter().filter(|j| j.tasks.len() == 2).count() as f64 / jobs.len() as f64;
        assert!((0.02..0.08).contains(&gangs) && (0.10..0.20).contains(&dags), "{gangs} {dags}");
        assert_eq!(jobs, super::jobs(10_000, 50, 7), "the same seed, the same jobs");
        assert_ne!(jobs, super::jobs(10_000, 50, 8));
    }
}
