//! The least a Head can cost per task on this machine: the memory work without the decisions.
//!
//! For each task it does what the throughput benchmark's shape forces on any Head that keeps a
//! task record and a return-object record per task in flight: the driver allocates a shared
//! spec, the Head writes the two records into hash tables and queues one `RunTask` output; the
//! node's answer seals an 8-byte inline value; the driver's release removes both records. There
//! is no scheduling, no reference counting and no lineage, so the rate printed is an upper bound
//! for the Head itself, and the ratio to the benchmark's figure says how much the decisions cost.
//!
//! The records are padded to the Head's own sizes (task 168 bytes, object 176 bytes), then to
//! small ones, to show how much of the bound is memory traffic.
//!
//! `cargo run --release --example head_floor [-- TASKS]` (default 100,000 in flight, as in the
//! benchmark).

use keel_kernel::proto::{Function, TaskSpec};
use keel_kernel::{JobId, TaskId};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// A record of `N` words, written in full when created.
struct Record<const N: usize> {
    words: [u64; N],
    inline: Option<Vec<u8>>,
}

impl<const N: usize> Record<N> {
    fn new(seed: u64) -> Self {
        Record { words: [seed; N], inline: None }
    }
}

/// Runs `tasks` tasks through the skeleton with task records of `T` words and object records of
/// `O` words; returns tasks per second.
fn run<const T: usize, const O: usize>(tasks: u64) -> f64 {
    let job = JobId(1);
    let function = Function::Named("f".into());
    let mut task_records: FxHashMap<TaskId, (Arc<TaskSpec>, Record<T>)> = FxHashMap::default();
    let mut object_records: FxHashMap<TaskId, Record<O>> = FxHashMap::default();
    let mut outputs: VecDeque<Arc<TaskSpec>> = VecDeque::new();
    let mut runs: VecDeque<TaskId> = VecDeque::new();
    let start = Instant::now();
    for seq in 0..tasks {
        let id = TaskId::child(TaskId::driver(job), 0, seq);
        let spec = Arc::new(TaskSpec::calling(id, job, function.clone()));
        task_records.insert(id, (spec.clone(), Record::new(seq)));
        object_records.insert(id, Record::new(seq));
        outputs.push_back(spec);
        while let Some(spec) = outputs.pop_front() {
            runs.push_back(spec.task);
        }
    }
    while let Some(id) = runs.pop_front() {
        let task = task_records.get_mut(&id).expect("recorded");
        task.1.words[0] += 1;
        object_records.get_mut(&id).expect("recorded").inline = Some(vec![7; 8]);
        black_box(object_records.remove(&id));
        black_box(task_records.remove(&id));
    }
    tasks as f64 / start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let tasks: u64 = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("TASKS is a number"));
    const RUNS: usize = 7;
    let head_sized = median((0..RUNS).map(|_| run::<17, 19>(tasks)).collect());
    let small = median((0..RUNS).map(|_| run::<4, 4>(tasks)).collect());
    println!("tasks in flight                    {tasks} (medians of {RUNS} runs)");
    println!("records of the Head's sizes        {head_sized:.0} tasks/s");
    println!("records of 56 bytes                {small:.0} tasks/s");
}
