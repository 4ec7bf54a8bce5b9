//! Keel's own recordings: a head's journal verified against a fresh kernel (`keel replay
//! --verify`), or read back as a workload to replay in the simulator (`keel replay --format keel`).
//!
//! Reading a workload back runs the journal through a fresh kernel (the same pass as the
//! verification) and watches what happened: nodes registering (the cluster: the most nodes alive
//! at once), tasks submitted (by drivers or by tasks), each attempt's start and end on its node.
//! Each job becomes a trace job whose tasks keep their submit times, resources, GPU model
//! constraint, dependencies (arguments that are other tasks' values) and the run time of their
//! last attempt. Actors and their calls, and placement groups, are not replayed (they are
//! counted); label constraints other than `gpu_model` are dropped.

use keel_daemon::journal::Entry;
use keel_daemon::recording::{self, Verified};
use keel_kernel::head::HeadOutput;
use keel_kernel::ids::{JobId, TaskId};
use keel_kernel::proto::{Arg, DriverToHead, LabelConstraint, NodeToHead, SchedulingStrategy, TaskKind, TaskOutcome};
use keel_kernel::{HeadInput, Time};
use keel_traces::{Job, NodeShape, Recorded, Status, Task};
use std::collections::BTreeMap;
use std::path::Path;

/// `keel replay JOURNAL --verify`.
pub fn run_verify(path: &Path, json: bool) -> Result<(), String> {
    let started = std::time::Instant::now();
    let rec = recording::read(path).map_err(|e| e.to_string())?;
    let torn = rec.torn_tail_bytes;
    let verified = recording::verify(rec, |_, _, _| {}).map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let out = serde_json::json!({
            "journal": path.display().to_string(),
            "verified": verified,
            "torn_tail_bytes": torn,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        print_verified(path, &verified, torn, seconds);
    }
    Ok(())
}

fn print_verified(path: &Path, v: &Verified, torn: u64, seconds: f64) {
    println!("{}: verified", path.display());
    println!(
        "a fresh kernel fed {} inputs and {} timer runs decided the same {} outputs, byte for byte, in all {} batches",
        v.inputs, v.timeouts, v.outputs, v.batches
    );
    if v.from_generation > 0 {
        println!("(from snapshot {}: the records before it were compacted into it)", v.from_generation);
    }
    if v.superseded_records > 0 {
        println!(
            "the journal's last {} records were left unchecked: the head stopped right after writing snapshot {}, which holds them",
            v.superseded_records, v.from_generation
        );
    }
    if v.restarts > 0 {
        println!("the head restarted {} times during the recording (each time from its journal)", v.restarts);
    }
    if v.unfinished_inputs > 0 || torn > 0 {
        println!(
            "the last {} inputs were never made durable with their decisions ({} bytes cut short): the head stopped there",
            v.unfinished_inputs, torn
        );
    }
    println!("{} records in {seconds:.2} s", v.records);
}

/// What was seen of one task.
struct Seen {
    job: JobId,
    submit: Time,
    spec: std::sync::Arc<keel_kernel::proto::TaskSpec>,
    /// The latest attempt's start, and its run time once it ended.
    started: Option<Time>,
    ran_ms: Option<u64>,
    status: Status,
    output_bytes: u64,
}

/// A recording as jobs, and the cluster it ran on, with notes on what was left out.
pub struct Workload {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// The cluster: the most nodes alive at once.
    pub nodes: Vec<NodeShape>,
    /// What could not be replayed.
    pub notes: Vec<String>,
}

/// Reads the journal at `path` as a workload (verifying it on the way: a recording that does
/// not verify is not read).
pub fn workload(path: &Path) -> Result<Workload, String> {
    let rec = recording::read(path).map_err(|e| e.to_string())?;
    let mut tasks: BTreeMap<TaskId, Seen> = BTreeMap::new();
    let mut order: Vec<TaskId> = Vec::new();
    let mut names: BTreeMap<JobId, String> = BTreeMap::new();
    let nodes_of = |head: &keel_kernel::Head| -> Vec<NodeShape> {
        head.live_nodes()
            .filter_map(|id| head.cluster().node(id).map(|n| (id, n)))
            .map(|(id, n)| NodeShape {
                name: id.to_string(),
                resources: n.pool.total().clone(),
                gpu_model: n.labels.get("gpu_model").cloned(),
            })
            .collect()
    };
    // A journal that goes on from a snapshot starts with the snapshot's nodes.
    let mut peak: Vec<NodeShape> = rec.snapshot.as_ref().map(|s| nodes_of(&s.head)).unwrap_or_default();
    let from_snapshot = rec.snapshot.as_ref().map(|s| s.generation);
    let (mut actor_tasks, mut group_tasks, mut labelled) = (0u64, 0u64, 0u64);
    let verified = recording::verify(rec, |head, entry, _outputs: &[HeadOutput]| {
        let Entry::Input { now, input } = entry else { return };
        let submitted = match input {
            HeadInput::FromDriver { msg: DriverToHead::SubmitTask(spec), .. } => Some(spec),
            HeadInput::FromNode { msg: NodeToHead::FromSubmitter { msg, .. }, .. } => match msg.as_ref() {
                DriverToHead::SubmitTask(spec) => Some(spec),
                _ => None,
            },
            _ => None,
        };
        if let Some(spec) = submitted {
            if !matches!(spec.kind, TaskKind::Normal) {
                actor_tasks += 1;
            } else if let std::collections::btree_map::Entry::Vacant(slot) = tasks.entry(spec.task) {
                if matches!(spec.strategy, SchedulingStrategy::PlacementGroup { .. }) {
                    group_tasks += 1;
                }
                order.push(spec.task);
                slot.insert(Seen {
                    job: spec.job,
                    submit: *now,
                    spec: spec.clone(),
                    started: None,
                    ran_ms: None,
                    status: Status::Unknown,
                    output_bytes: 0,
                });
                if let Some(name) = head.job_name(spec.job) {
                    names.entry(spec.job).or_insert_with(|| format!("{} {name}", spec.job));
                }
            }
        }
        if let HeadInput::FromNode { msg, .. } = input {
            match msg {
                NodeToHead::TaskStarted { task, .. } => {
                    if let Some(t) = tasks.get_mut(task) {
                        t.started = Some(*now);
                    }
                }
                NodeToHead::TaskEnded { task, outcome, .. } => {
                    if let Some(t) = tasks.get_mut(task) {
                        if let Some(start) = t.started.take() {
                            t.ran_ms = Some(now.saturating_since(start).0 / 1_000_000);
                        }
                        match outcome {
                            TaskOutcome::Finished(values) => {
                                t.status = Status::Completed;
                                t.output_bytes = values.iter().map(|v| v.size).max().unwrap_or(0);
                            }
                            TaskOutcome::Failed(_) => t.status = Status::Failed,
                        }
                    }
                }
                _ => {}
            }
        }
        // The cluster is largest right after a node joins.
        if !matches!(input, HeadInput::Connect { hello: keel_kernel::proto::Hello::RegisterNode { .. }, .. }) {
            return;
        }
        if head.live_nodes().count() > peak.len() {
            peak = nodes_of(head);
        }
    })
    .map_err(|e| format!("{e}\n(a recording is read only once it verifies)"))?;
    // Jobs in order of their first submission; tasks in submission order (so dependencies
    // point backwards).
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_index: BTreeMap<JobId, usize> = BTreeMap::new();
    let mut task_index: BTreeMap<TaskId, (usize, usize)> = BTreeMap::new();
    for id in &order {
        let t = &tasks[id];
        let j = *job_index.entry(t.job).or_insert_with(|| {
            jobs.push(Job {
                id: names.get(&t.job).cloned().unwrap_or_else(|| t.job.to_string()),
                submit_ms: t.submit.0 / 1_000_000,
                tasks: Vec::new(),
                gang: false,
                after: None,
                recorded: Recorded::default(),
            });
            jobs.len() - 1
        });
        let job = &mut jobs[j];
        let deps: Vec<usize> = t
            .spec
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref(object) => task_index.get(&object.task).filter(|(jj, _)| *jj == j).map(|(_, k)| *k),
                Arg::Value { .. } => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut gpu_models = Vec::new();
        for c in &t.spec.label_selector {
            match c {
                LabelConstraint::In { key, values } if key == "gpu_model" => gpu_models = values.clone(),
                _ => labelled += 1,
            }
        }
        // The job's status is its tasks' worst: failed, then unknown, then completed.
        job.recorded.status = match (job.recorded.status, t.status) {
            _ if job.tasks.is_empty() => t.status,
            (Status::Failed, _) | (_, Status::Failed) => Status::Failed,
            (Status::Unknown, _) | (_, Status::Unknown) => Status::Unknown,
            _ => Status::Completed,
        };
        task_index.insert(*id, (j, job.tasks.len()));
        job.tasks.push(Task {
            name: id.to_string(),
            instances: 1,
            resources: t.spec.resources.clone(),
            gpu_models,
            duration_ms: t.ran_ms.unwrap_or(0),
            deps,
            output_bytes: t.output_bytes,
            submit_offset_ms: (t.submit.0 / 1_000_000).saturating_sub(job.submit_ms),
        });
    }
    let mut notes = Vec::new();
    if let Some(generation) = from_snapshot {
        notes.push(format!(
            "the journal goes on from snapshot {generation}: work submitted before it is not in the workload"
        ));
    }
    let never = tasks.values().filter(|t| t.ran_ms.is_none()).count();
    if never > 0 {
        notes.push(format!("{never} tasks never ended in the recording: replayed as taking no time"));
    }
    if actor_tasks > 0 {
        notes.push(format!("{actor_tasks} actor creations and calls are not replayed"));
    }
    if group_tasks > 0 {
        notes.push(format!("{group_tasks} tasks ran in placement groups: replayed as plain tasks"));
    }
    if labelled > 0 {
        notes.push(format!("{labelled} label constraints other than gpu_model are dropped"));
    }
    notes.push(format!(
        "verified first: {} outputs in {} batches matched a fresh kernel",
        verified.outputs, verified.batches
    ));
    Ok(Workload { jobs, nodes: peak, notes })
}
