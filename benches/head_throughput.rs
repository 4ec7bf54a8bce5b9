//! Head throughput and reconstruction-planning benchmarks.
//!
//! The Head is driven directly: node answers are synthesised here (no Node machine). Every
//! `RunTask` is answered with a small inline return value, and the driver then drops its handle,
//! so each task's state is freed once it finishes.
//!
//! `cargo bench --bench head_throughput -- --quick`
//!
//! On a shared machine, `KEEL_BENCH_CPU_TIME=1` makes the throughput group report this thread's
//! CPU time (user + system, from `/proc/thread-self/stat`, 10 ms ticks) instead of wall time.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use keel_kernel::synthetic::Synthetic;
use keel_kernel::{HeadConfig, NodeId};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Tasks pushed through the Head per measured iteration.
const BATCH: u64 = 100_000;
/// CPUs per node.
const CPUS: u64 = 16;

/// Clock ticks per second of `/proc/*/stat` on Linux.
const TICKS_PER_SEC: u64 = 100;

/// This thread's CPU time (user + system), where `/proc/thread-self/stat` can be read.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SEC))
}

/// Wall time, or this thread's CPU time when `KEEL_BENCH_CPU_TIME` is set.
struct Clock {
    cpu: bool,
}

impl Clock {
    fn from_env() -> Clock {
        let cpu = std::env::var_os("KEEL_BENCH_CPU_TIME").is_some() && thread_cpu_time().is_some();
        Clock { cpu }
    }

    /// Runs `f` and returns how long it took on this clock.
    fn time<T>(&self, f: impl FnOnce() -> T) -> (T, Duration) {
        if self.cpu {
            let start = thread_cpu_time().expect("readable");
            let out = f();
            (out, thread_cpu_time().expect("readable").saturating_sub(start))
        } else {
            let start = Instant::now();
            let out = f();
            (out, start.elapsed())
        }
    }
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH));
    let clock = Clock::from_env();
    for nodes in [1_000u64, 10_000] {
        group.bench_function(BenchmarkId::from_parameter(format!("{nodes}_nodes")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut s = Synthetic::new(HeadConfig::default(), nodes, CPUS);
                    let (done, took) = clock.time(|| s.run_tasks(0, BATCH));
                    total += took;
                    assert_eq!(done, BATCH);
                    assert_eq!(s.head.task_records(), 0);
                    black_box(&s.head);
                }
                total
            });
        });
    }
    group.finish();
}

/// Objects held by the node that is lost.
const LOST_OBJECTS: u64 = 10_000;

/// One node holds `LOST_OBJECTS` large objects the driver still references; a second, empty
/// node joins afterwards so the rebuilds have somewhere to run.
fn reconstruction_setup() -> (Synthetic, NodeId) {
    let mut s = Synthetic::new(HeadConfig::default(), 1, CPUS);
    let holder = s.nodes[0];
    for seq in 0..LOST_OBJECTS {
        s.submit(seq);
    }
    while let Some(run) = s.runs.pop_front() {
        assert_eq!(run.node, holder);
        s.finish(&run, Some(1 << 20));
    }
    s.add_node(CPUS);
    s.runs.clear();
    assert_eq!(s.head.object_records() as u64, LOST_OBJECTS);
    (s, holder)
}

fn reconstruction_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconstruction_plan");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.bench_function("10000_objects", |b| {
        b.iter_batched(
            reconstruction_setup,
            |(mut s, holder)| {
                s.lose(holder);
                debug_assert_eq!(s.head.stats().reconstructions, LOST_OBJECTS);
                s
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, throughput, reconstruction_plan);
criterion_main!(benches);
