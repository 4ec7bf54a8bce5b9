//! One autoscaler decision at scale: 100,000 pending tasks of 50 distinct shapes over 20 node
//! types, with 1,000 nodes running (a fifth of them with some room left). Target: < 10 ms.
//!
//! `cargo bench --bench autoscaler`

use criterion::{criterion_group, criterion_main, Criterion};
use keel_kernel::autoscaler::{plan, Bin, Demand, Limits, NodeType};
use keel_kernel::proto::Labels;
use keel_kernel::{Amount, ResourceSet};
use std::hint::black_box;

fn setup() -> (Vec<NodeType>, Limits, Vec<Bin>, Demand) {
    let gib = |n: u64| n << 30;
    let types: Vec<NodeType> = (0..20u64)
        .map(|t| {
            let cpu = [4, 8, 16, 32, 64][(t % 5) as usize];
            let mut r = ResourceSet::cpus(cpu).with_memory_bytes(gib(cpu * [2, 4, 8, 4][(t % 4) as usize]));
            if t >= 15 {
                r = r.with_gpu(Amount::units(1 + t % 4 * 2));
            }
            NodeType {
                name: format!("type-{t}"),
                resources: r,
                labels: Labels::new(),
                min_workers: 0,
                max_workers: 2_000,
            }
        })
        .collect();
    let limits = Limits { max_workers: 50_000, upscaling_speed: 100.0 };
    let bins: Vec<Bin> = (0..1_000u64)
        .map(|i| Bin {
            node_type: Some((i % 20) as usize),
            free: if i % 5 == 0 { ResourceSet::cpus(2).with_memory_bytes(gib(4)) } else { ResourceSet::default() },
            labels: Labels::new(),
            launching: false,
        })
        .collect();
    let shapes: Vec<ResourceSet> = (0..50u64)
        .map(|s| {
            let r = ResourceSet::cpus(1 + s % 8).with_memory_bytes(gib(1 + s % 16));
            if s % 10 == 9 {
                r.with_gpu(Amount::from_f64(if s % 20 == 9 { 0.5 } else { 1.0 }).expect("an amount"))
            } else {
                r
            }
        })
        .collect();
    let demand = Demand { tasks: shapes.into_iter().map(|s| (s, Vec::new(), 2_000)).collect(), ..Demand::default() };
    (types, limits, bins, demand)
}

fn decision(c: &mut Criterion) {
    let (types, limits, bins, demand) = setup();
    let p = plan(&types, &limits, &bins, &demand);
    let launched: u32 = p.launch.iter().map(|(_, n)| n).sum();
    eprintln!("one decision: {launched} nodes launched over {} types, {} shapes unmet", p.launch.len(), p.unmet.len());
    c.bench_function("autoscaler/100k_tasks_50_shapes_20_types", |b| {
        b.iter(|| black_box(plan(&types, &limits, &bins, &demand)))
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
