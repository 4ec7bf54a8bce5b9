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
use keel_kernel::proto::{DriverToHead, HeadToNode, Hello, NodeToHead, ReturnValue, TaskOutcome, PROTOCOL_VERSION};
use keel_kernel::testkit::task;
use keel_kernel::{
    ConnId, Head, HeadConfig, HeadInput, HeadOutput, JobId, NodeId, ObjectId, ResourceSet, TaskId, Time,
};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Tasks pushed through the Head per measured iteration.
const BATCH: u64 = 100_000;
/// CPUs per node.
const CPUS: u64 = 16;
/// The clock never moves, so no node deadline ever fires.
const NOW: Time = Time(0);

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

/// A Head with `nodes` nodes of 16 CPUs and one job, outputs drained.
fn cluster(nodes: u64) -> (Head, Vec<NodeId>, JobId) {
    let mut head = Head::new(HeadConfig::default());
    let mut ids = Vec::with_capacity(nodes as usize);
    for i in 0..nodes {
        let hello = Hello::RegisterNode {
            version: PROTOCOL_VERSION,
            resources: ResourceSet::cpus(CPUS),
            labels: Default::default(),
        };
        head.handle_input(NOW, HeadInput::Connect { conn: ConnId(i), hello }).expect("node registers");
        while let Some(out) = head.poll_output() {
            if let HeadOutput::ToConn { msg: keel_kernel::proto::Welcome::NodeRegistered(node), .. } = out {
                ids.push(node);
            }
        }
    }
    let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name: "bench".into() };
    head.handle_input(NOW, HeadInput::Connect { conn: ConnId(nodes), hello }).expect("job registers");
    let mut job = None;
    while let Some(out) = head.poll_output() {
        if let HeadOutput::ToConn { msg: keel_kernel::proto::Welcome::JobRegistered(j), .. } = out {
            job = Some(j);
        }
    }
    assert_eq!(ids.len() as u64, nodes);
    (head, ids, job.expect("job registered"))
}

/// A task attempt handed to a node.
struct Run {
    node: NodeId,
    task: TaskId,
    attempt: u32,
    returns: Vec<ObjectId>,
}

/// Drains the Head's outputs, keeping the `RunTask`s.
fn drain(head: &mut Head, runs: &mut VecDeque<Run>) {
    while let Some(out) = head.poll_output() {
        if let HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, .. } } = out {
            let returns = spec.return_ids().collect();
            runs.push_back(Run { node, task: spec.task, attempt, returns });
        }
    }
}

/// Answers one attempt as finished, returning `inline` (small) or sealing `size` bytes on the node.
fn finish(head: &mut Head, run: &Run, inline: Option<&[u8]>, size: u64) {
    let values = run
        .returns
        .iter()
        .map(|&object| ReturnValue {
            object,
            size: inline.map_or(size, |b| b.len() as u64),
            inline: inline.map(<[u8]>::to_vec),
            nested: Vec::new(),
        })
        .collect();
    let msg = NodeToHead::TaskEnded { task: run.task, attempt: run.attempt, outcome: TaskOutcome::Finished(values) };
    head.handle_input(NOW, HeadInput::FromNode { node: run.node, msg }).expect("task ends");
}

/// Submits `count` tasks (sequence numbers from `first`), finishes every attempt the Head
/// dispatches and drops the driver's handle to each result. Returns how many tasks finished.
fn run_tasks(head: &mut Head, job: JobId, first: u64, count: u64) -> u64 {
    let mut runs = VecDeque::new();
    for seq in first..first + count {
        head.handle_input(NOW, HeadInput::FromDriver { job, msg: DriverToHead::SubmitTask(task(job, seq, "f")) })
            .expect("submit");
        drain(head, &mut runs);
    }
    let value = [7u8; 8];
    let mut finished = 0;
    while let Some(run) = runs.pop_front() {
        finish(head, &run, Some(&value), 0);
        drain(head, &mut runs);
        for &object in &run.returns {
            head.handle_input(NOW, HeadInput::FromDriver { job, msg: DriverToHead::RemoveRef(object) }).expect("drop");
            drain(head, &mut runs);
        }
        finished += 1;
    }
    finished
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
                    let (mut head, _, job) = cluster(nodes);
                    let (done, took) = clock.time(|| run_tasks(&mut head, job, 0, BATCH));
                    total += took;
                    assert_eq!(done, BATCH);
                    assert_eq!(head.task_records(), 0);
                    black_box(&head);
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
fn reconstruction_setup() -> (Head, NodeId) {
    let (mut head, nodes, job) = cluster(1);
    let holder = nodes[0];
    let mut runs = VecDeque::new();
    for seq in 0..LOST_OBJECTS {
        head.handle_input(NOW, HeadInput::FromDriver { job, msg: DriverToHead::SubmitTask(task(job, seq, "f")) })
            .expect("submit");
        drain(&mut head, &mut runs);
    }
    while let Some(run) = runs.pop_front() {
        assert_eq!(run.node, holder);
        finish(&mut head, &run, None, 1 << 20);
        drain(&mut head, &mut runs);
    }
    let hello = Hello::RegisterNode {
        version: PROTOCOL_VERSION,
        resources: ResourceSet::cpus(CPUS),
        labels: Default::default(),
    };
    head.handle_input(NOW, HeadInput::Connect { conn: ConnId(1_000_000), hello }).expect("node registers");
    while head.poll_output().is_some() {}
    assert_eq!(head.object_records() as u64, LOST_OBJECTS);
    (head, holder)
}

fn reconstruction_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconstruction_plan");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.bench_function("10000_objects", |b| {
        b.iter_batched(
            reconstruction_setup,
            |(mut head, holder)| {
                head.handle_input(NOW, HeadInput::FromNode { node: holder, msg: NodeToHead::Leaving }).expect("leaves");
                debug_assert_eq!(head.stats().reconstructions, LOST_OBJECTS);
                head
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, throughput, reconstruction_plan);
criterion_main!(benches);
