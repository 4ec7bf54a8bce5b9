//! Replay benchmarks: whole traces through the simulator with the real kernel, as `keel replay`
//! runs them (reading included).
//!
//! `cargo bench --bench replay` (about two minutes). The shared trace samples are read from
//! `../shared/traces` (or `KEEL_TRACES_DIR`); a sample that is absent is skipped, saying so.
//!
//! - `nasa`: the whole NASA iPSC/860 SWF log, 18,239 jobs on its 128 nodes (target < 2 s);
//! - `openb`: the Alibaba GPU 2023 pods on their GPU nodes (target < 2 s);
//! - `synthetic_100k`: 100,000 synthetic tasks on 1,000 nodes.
//!
//! The 1,000,000-task, 10,000-node figure takes half a minute a run, too long for criterion's
//! samples: `keel replay --synthetic 1000000 --nodes 10000 --json` prints its `seconds`, and
//! `/usr/bin/time -f %M` its peak memory (README).

use criterion::{criterion_group, criterion_main, Criterion};
use keel_traces::replay::{replay, Options, Policy};
use keel_traces::{open, shared_traces_dir, Job, NodeShape};
use std::hint::black_box;
use std::time::Duration;

// The `keel` binary's allocator (the library sets it), so that the figures are the command's.
use keel as _;

fn options(nodes: Vec<NodeShape>) -> Options {
    Options { nodes, policy: Policy::Hybrid, failures: Vec::new(), seed: 1, progress: None, autoscale: None }
}

fn nasa() -> Option<(Vec<Job>, Vec<NodeShape>)> {
    let path = shared_traces_dir()?.join("swf/NASA-iPSC-1993-3.1-cln.swf.gz");
    let reader = keel_traces::swf::SwfReader::new(open(&path).ok()?, "NASA").ok()?;
    let nodes = reader.header().cluster()?;
    Some((reader.collect::<Result<_, _>>().ok()?, nodes))
}

fn openb() -> Option<(Vec<Job>, Vec<NodeShape>)> {
    let dir = shared_traces_dir()?.join("alibaba-gpu-v2023");
    let nodes = keel_traces::openb::read_nodes(open(&dir.join("openb_node_list_gpu_node.csv")).ok()?, "nodes").ok()?;
    let pods = keel_traces::openb::PodReader::new(open(&dir.join("openb_pod_list_default.csv")).ok()?, "pods").ok()?;
    Some((pods.collect::<Result<_, _>>().ok()?, nodes))
}

fn traces(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, load) in [("nasa", nasa as fn() -> _), ("openb", openb)] {
        let Some((jobs, nodes)) = load() else {
            eprintln!("skipping {name}: the shared trace samples are not there (KEEL_TRACES_DIR or ../shared/traces)");
            continue;
        };
        let options = options(nodes);
        group.bench_function(name, |b| b.iter(|| black_box(replay(&jobs, &options).expect("replays"))));
    }
    let jobs = keel_traces::synthetic::jobs(100_000, 1_000, 1);
    let options = options(keel_traces::synthetic::cluster(1_000));
    group.bench_function("synthetic_100k", |b| b.iter(|| black_box(replay(&jobs, &options).expect("replays"))));
    group.finish();
}

criterion_group!(benches, traces);
criterion_main!(benches);
