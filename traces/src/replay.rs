//! Replaying a workload in the simulator, with the real Head and Node machines, and measuring it.
//!
//! Each trace job becomes tasks of one simulated driver, submitted at the job's submit time
//! (relative to the first job's):
//! - a task of `n` instances becomes `n` tasks; a task that others wait for gets a join (a task
//!   that needs no resources and takes no time) that waits for all its instances, and the tasks
//!   that depend on it wait for the join;
//! - a gang job becomes a placement group of one bundle per instance, created at its submit time
//!   and removed when the job ends, and one task in its first bundle that runs for the job's
//!   duration (the group holds every bundle's resources the whole time, as a gang does);
//! - GPU model constraints become a label constraint on `gpu_model`, which nodes with GPUs carry;
//! - a job that must follow another (SWF fields 17-18) waits for it, and for a task that takes the
//!   think time and needs nothing.
//!
//! Metrics come from every attempt's run: a job starts when its first attempt starts and ends when
//! its last task ends.

use crate::{Job, NodeShape, Status};
use keel_kernel::proto::{LabelConstraint, Labels, PlacementStrategy};
use keel_kernel::{Duration, HeadConfig, NodeConfig, ResourceSet, TaskId};
use keel_sim::faults::{Fault, Timed};
use keel_sim::workload::{GroupPlan, Placement, TaskPlan, Workload};
use keel_sim::world::{HostSpec, NetParams, Params, World};
use std::collections::HashMap;

/// How tasks are placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Pack onto nodes while they are under half used, then spread (the default).
    #[default]
    Hybrid,
    /// Spread over the least used nodes.
    Spread,
    /// Pack onto as few nodes as possible.
    Pack,
}

/// A replay's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster.
    pub nodes: Vec<NodeShape>,
    /// The placement policy.
    pub policy: Policy,
    /// Nodes (by index) that fail, and when (ms from the start).
    pub failures: Vec<(usize, u64)>,
    /// The seed of every random choice.
    pub seed: u64,
    /// Told now and then how far the replay is (for a progress bar).
    pub progress: Option<ReplayProgress>,
    /// An autoscaler and its node types, launched by the simulated provider beside `nodes`
    /// (which may then be empty).
    pub autoscale: Option<keel_sim::autoscale::AutoscaleSpec>,
}

/// A progress report: called now and then with the simulated time (ms), the events handled and
/// the jobs done (every task that ends a job has ended, finished or failed).
#[derive(Clone)]
pub struct ReplayProgress(pub std::sync::Arc<dyn Fn(u64, u64, usize) + Send + Sync>);

impl std::fmt::Debug for ReplayProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayProgress")
    }
}

/// Jobs done from the planned tasks whose awaited values resolved.
struct JobsDone {
    job_of: Vec<u32>,
    /// Per job: awaited planned tasks not resolved yet.
    left: Vec<u32>,
    seen: Vec<bool>,
    done: usize,
}

impl JobsDone {
    fn new(w: &Workload, origin: &[Origin], jobs: usize) -> JobsDone {
        let mut left = vec![0u32; jobs];
        for (t, o) in w.tasks.iter().zip(origin) {
            if t.final_output {
                left[o.job as usize] += 1;
            }
        }
        JobsDone { job_of: origin.iter().map(|o| o.job).collect(), left, seen: vec![false; origin.len()], done: 0 }
    }

    fn resolved(&mut self, plan_indices: &[u32]) -> usize {
        for &i in plan_indices {
            let i = i as usize;
            if i < self.seen.len() && !std::mem::replace(&mut self.seen[i], true) {
                let left = &mut self.left[self.job_of[i] as usize];
                *left -= 1;
                self.done += usize::from(*left == 0);
            }
        }
        self.done
    }
}

/// What became of one job.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobResult {
    /// The trace's id.
    pub id: String,
    /// Submitted (ms from the start). A job that follows another is submitted when the other
    /// has ended and the think time has passed, which in a replay is rarely the trace's time.
    pub submit_ms: u64,
    /// It can never run on this cluster: a task that no node could hold, or a gang larger than
    /// the cluster (the scheduler reports it infeasible and it fails).
    pub infeasible: bool,
    /// Its first attempt started, if any did.
    pub start_ms: Option<u64>,
    /// Its last task ended, if all its tasks finished.
    pub end_ms: Option<u64>,
    /// Attempts retried (after node failures).
    pub retries: u32,
    /// What the trace recorded: status and wait.
    pub recorded_status: &'static str,
    /// The wait the trace recorded, if any.
    pub recorded_wait_ms: Option<u64>,
}

impl JobResult {
    /// Start minus submit.
    pub fn wait_ms(&self) -> Option<u64> {
        self.start_ms.map(|s| s.saturating_sub(self.submit_ms))
    }

    /// End minus submit.
    pub fn completion_ms(&self) -> Option<u64> {
        self.end_ms.map(|e| e.saturating_sub(self.submit_ms))
    }

    /// Bounded slowdown with a 10 s threshold: `max(1, (wait + run) / max(run, 10 s))`.
    pub fn bounded_slowdown(&self) -> Option<f64> {
        let (start, end) = (self.start_ms?, self.end_ms?);
        let run = end.saturating_sub(start) as f64;
        let total = end.saturating_sub(self.submit_ms) as f64;
        Some((total / run.max(10_000.0)).max(1.0))
    }
}

/// Median, tail and mean of a metric.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// How many values.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// Of `values` (nearest-rank percentiles).
    pub fn of(mut values: Vec<f64>) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
        Stats {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// A replay's figures.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Jobs replayed.
    pub jobs: usize,
    /// Jobs of the trace left out because they never ran there (withdrawn while waiting).
    #[serde(default)]
    pub not_replayed: usize,
    /// Jobs whose every task finished.
    pub completed: usize,
    /// Jobs that did not finish (a task failed for good, or never ran).
    pub unfinished: usize,
    /// Jobs that never started.
    pub never_started: usize,
    /// Jobs that can never run on this cluster (found before replaying; counted as unfinished).
    pub infeasible: usize,
    /// Jobs the trace recorded as failed / cancelled (replayed as they ran).
    pub recorded_failed: usize,
    /// See `recorded_failed`.
    pub recorded_cancelled: usize,
    /// Task attempts retried.
    pub retries: u64,
    /// From the first submit to the last end, seconds.
    pub makespan_s: f64,
    /// Completion time (end - submit), seconds.
    pub completion_s: Stats,
    /// Queueing delay (start - submit), seconds, of every job that started (finished or not).
    pub wait_s: Stats,
    /// Bounded slowdown (10 s threshold).
    pub bounded_slowdown: Stats,
    /// Time-weighted share of each resource in use over the makespan (CPU, GPU, memory and
    /// custom resources the cluster has).
    pub utilisation: std::collections::BTreeMap<String, f64>,
    /// Jobs completed per hour.
    pub jobs_per_hour: f64,
    /// Nodes times the makespan, hours; with an autoscaler, the static nodes' and the hours its
    /// nodes were billed, from launch to stop.
    pub node_hours: f64,
    /// GPU fragmentation, on clusters with GPUs: see [`GpuFragmentation`].
    #[serde(default)]
    pub gpu_fragmentation: Option<GpuFragmentation>,
    /// The recorded waits, when the trace has them: to compare with `wait_s`.
    pub recorded_wait_s: Option<Stats>,
    /// Why tasks failed for good, by kind, with counts (`PlacementGroupInfeasible` for gangs
    /// larger than the cluster, `NodeDied` for work lost with nodes that did not come back...).
    #[serde(default)]
    pub failure_reasons: std::collections::BTreeMap<String, u64>,
    /// Simulated time when the replay ended, seconds.
    #[serde(default)]
    pub simulated_s: f64,
    /// Simulator events handled.
    pub events: u64,
    /// The event log's hash (the same inputs and seed give the same hash).
    pub hash: String,
    /// How long tasks waited for resources: from when they could run (submitted, and every
    /// value they take made) to their first start, seconds.
    #[serde(default)]
    pub task_pending_s: Stats,
    /// What the autoscaler did (launches, node-hours, cost), when it ran.
    #[serde(default)]
    pub autoscale: Option<keel_sim::provider::AutoscaleReport>,
}

/// How much idle GPU capacity lay on GPUs that were partly in use (shared by fractional tasks),
/// where a task wanting a whole GPU cannot use it. Time-weighted over the time anything ran.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuFragmentation {
    /// Idle capacity on partly used GPUs, as a share of all the cluster's GPU capacity.
    pub fragmented_share: f64,
    /// The same, as a share of the idle GPU capacity.
    pub share_of_idle: f64,
    /// The most GPUs' worth fragmented at any moment.
    pub peak_gpus: f64,
}

/// A replay's result.
#[derive(Clone, Debug)]
pub struct Replay {
    /// Per job, in the order given.
    pub jobs: Vec<JobResult>,
    /// The figures.
    pub summary: Summary,
    /// What ran when: `(start_ms, end_ms, share of each resource of the cluster)`, one entry
    /// per attempt (for plots over time).
    pub usage: Vec<(u64, u64, Vec<f64>)>,
    /// The resources `usage` gives shares of, in order.
    pub resources: Vec<String>,
}

/// Where each planned task comes from.
#[derive(Clone, Copy)]
struct Origin {
    job: u32,
    /// The task's resources count for utilisation (joins and think tasks do not).
    counted: bool,
    /// Its resources are those of a gang's whole group (the group holds them all).
    gang_instances: u32,
    task: u32,
    /// The think time before a job that follows another: its end is when the job is submitted.
    think: bool,
}

const GPU_MODEL: &str = "gpu_model";

/// Turns jobs into a simulated driver's plan.
fn plan(jobs: &[Job], policy: Policy) -> Result<(Workload, Vec<Origin>), String> {
    let t0 = jobs.iter().map(|j| j.submit_ms).min().unwrap_or(0);
    // Submission order must follow time (the driver submits in plan order).
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| (jobs[j].submit_ms, j));
    let by_id: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id.as_str(), i)).collect();
    let mut w = Workload::default();
    let mut origin = Vec::new();
    // Per job: the plan index whose end is the job's end (for jobs that follow it).
    let mut last_of: Vec<Option<usize>> = vec![None; jobs.len()];
    let followed: std::collections::HashSet<&str> =
        jobs.iter().filter_map(|j| j.after.as_ref().map(|(before, _)| before.as_str())).collect();
    for &j in &order {
        let job = &jobs[j];
        let at_ms = job.submit_ms - t0;
        let labels = |t: &crate::Task| -> Vec<LabelConstraint> {
            if t.gpu_models.is_empty() {
                Vec::new()
            } else {
                vec![LabelConstraint::In { key: GPU_MODEL.into(), values: t.gpu_models.clone() }]
            }
        };
        let placement = if policy == Policy::Spread { Placement::Spread } else { Placement::Default };
        // A job that follows another: a think task after the other's end.
        let mut entry_deps = Vec::new();
        let mut gate = None;
        if let Some((before, think_ms)) = &job.after {
            if let Some(&b) = by_id.get(before.as_str()) {
                match last_of[b] {
                    Some(end) => {
                        w.tasks.push(TaskPlan {
                            at_ms,
                            deps: vec![(end, 1)],
                            resources: Some(ResourceSet::default()),
                            final_output: false,
                            ..TaskPlan::new(*think_ms, 8)
                        });
                        origin.push(Origin { job: j as u32, counted: false, gang_instances: 0, task: 0, think: true });
                        entry_deps.push((w.tasks.len() - 1, 1));
                        gate = Some(w.tasks.len() - 1);
                    }
                    None => return Err(format!("job {} follows job {before}, which is submitted after it", job.id)),
                }
            }
        }
        if job.gang {
            let task = job.tasks.first().ok_or_else(|| format!("gang job {} has no task", job.id))?;
            let group = w.groups.len();
            w.groups.push(GroupPlan {
                at_ms,
                bundles: task.instances.max(1),
                cpu_hundredths: 0,
                bundle: Some(task.resources.clone()),
                // The policy decides how a gang's bundles lie: spread over nodes, or packed.
                strategy: if policy == Policy::Spread { PlacementStrategy::Spread } else { PlacementStrategy::Pack },
                release_when_done: true,
                // A gang that follows another job reserves nothing before it may start.
                after: gate,
            });
            w.tasks.push(TaskPlan {
                at_ms,
                deps: entry_deps.clone(),
                resources: Some(task.resources.clone()),
                labels: labels(task),
                placement: Placement::Group { group, bundle: 0 },
                ..TaskPlan::new(task.duration_ms, task.output_bytes.max(8))
            });
            origin.push(Origin {
                job: j as u32,
                counted: true,
                gang_instances: task.instances.max(1),
                task: 0,
                think: false,
            });
            last_of[j] = Some(w.tasks.len() - 1);
            continue;
        }
        // Tasks in dependency order.
        let n = job.tasks.len();
        let mut indegree: Vec<usize> = job.tasks.iter().map(|t| t.deps.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, t) in job.tasks.iter().enumerate() {
            for &d in &t.deps {
                if d >= n {
                    return Err(format!("job {}: task {} depends on task index {d} of {n}", job.id, t.name));
                }
                dependents[d].push(i);
            }
        }
        // Ready tasks by submit offset, then index: a job's tasks are submitted in time order.
        let mut ready: std::collections::BTreeSet<(u64, usize)> =
            (0..n).filter(|&i| indegree[i] == 0).map(|i| (job.tasks[i].submit_offset_ms, i)).collect();
        // Per task: the plan index that stands for its end (its only instance, or its join).
        let mut end_of: Vec<Option<usize>> = vec![None; n];
        let mut sinks = Vec::new();
        let mut done = 0;
        while let Some((_, i)) = ready.pop_first() {
            done += 1;
            let t = &job.tasks[i];
            let mut deps: Vec<(usize, u32)> = t.deps.iter().map(|&d| (end_of[d].expect("in order"), 1)).collect();
            deps.extend(entry_deps.iter().copied());
            let waited_for = !dependents[i].is_empty();
            let first = w.tasks.len();
            let task_at = at_ms.saturating_add(t.submit_offset_ms);
            for _ in 0..t.instances.max(1) {
                w.tasks.push(TaskPlan {
                    at_ms: task_at,
                    deps: deps.clone(),
                    resources: Some(t.resources.clone()),
                    labels: labels(t),
                    placement,
                    final_output: !waited_for,
                    ..TaskPlan::new(t.duration_ms, t.output_bytes.max(8))
                });
                origin.push(Origin { job: j as u32, counted: true, gang_instances: 0, task: i as u32, think: false });
            }
            let end = if t.instances <= 1 {
                first
            } else if waited_for {
                w.tasks.push(TaskPlan {
                    at_ms: task_at,
                    deps: (first..w.tasks.len()).map(|k| (k, 1)).collect(),
                    resources: Some(ResourceSet::default()),
                    final_output: false,
                    ..TaskPlan::new(0, 8)
                });
                origin.push(Origin { job: j as u32, counted: false, gang_instances: 0, task: i as u32, think: false });
                w.tasks.len() - 1
            } else {
                first
            };
            end_of[i] = Some(end);
            if !waited_for {
                sinks.extend(first..first + t.instances.max(1) as usize);
            }
            for &k in &dependents[i] {
                indegree[k] -= 1;
                if indegree[k] == 0 {
                    ready.insert((job.tasks[k].submit_offset_ms, k));
                }
            }
        }
        if done != n {
            return Err(format!("job {}: its tasks depend on each other in a cycle", job.id));
        }
        // A job that others follow ends when all its sinks' instances have: one join for them.
        last_of[j] = if sinks.len() > 1 && followed.contains(job.id.as_str()) {
            w.tasks.push(TaskPlan {
                at_ms,
                deps: sinks.iter().map(|&k| (k, 1)).collect(),
                resources: Some(ResourceSet::default()),
                final_output: false,
                ..TaskPlan::new(0, 8)
            });
            origin.push(Origin { job: j as u32, counted: false, gang_instances: 0, task: 0, think: false });
            Some(w.tasks.len() - 1)
        } else {
            sinks.last().copied()
        };
    }
    let (w, origin) = in_time_order(w, origin);
    w.validate()?;
    Ok((w, origin))
}

/// The plan with its tasks in submission-time order (the driver submits in plan order, so a
/// task submitted late in one job must not hold back the next job's). A task is submitted no
/// earlier than the tasks it depends on; the sort is stable, so dependencies still point back.
fn in_time_order(mut w: Workload, origin: Vec<Origin>) -> (Workload, Vec<Origin>) {
    for i in 0..w.tasks.len() {
        let after = w.tasks[i].deps.iter().map(|&(d, _)| w.tasks[d].at_ms).max().unwrap_or(0);
        w.tasks[i].at_ms = w.tasks[i].at_ms.max(after);
    }
    if w.tasks.windows(2).all(|p| p[0].at_ms <= p[1].at_ms) {
        return (w, origin);
    }
    let mut order: Vec<usize> = (0..w.tasks.len()).collect();
    order.sort_by_key(|&i| (w.tasks[i].at_ms, i));
    let mut new_index = vec![0; order.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut tasks: Vec<Option<TaskPlan>> = std::mem::take(&mut w.tasks).into_iter().map(Some).collect();
    w.tasks = order
        .iter()
        .map(|&old| {
            let mut t = tasks[old].take().expect("each task once");
            for dep in &mut t.deps {
                dep.0 = new_index[dep.0];
            }
            t
        })
        .collect();
    for g in &mut w.groups {
        g.after = g.after.map(|a| new_index[a]);
    }
    let origin = order.iter().map(|&old| origin[old]).collect();
    (w, origin)
}

/// Replays `jobs` on `options.nodes` (all but those that never ran in the trace; `Replay::jobs`
/// lists the replayed ones in the order given).
pub fn replay(jobs: &[Job], options: &Options) -> Result<Replay, String> {
    if options.nodes.is_empty() && options.autoscale.is_none() {
        return Err("the cluster has no nodes".into());
    }
    // Jobs that never ran in the trace (withdrawn while waiting) have nothing to replay.
    let not_replayed = jobs.iter().filter(|j| j.recorded.never_ran).count();
    let kept: Vec<Job>;
    let jobs = if not_replayed > 0 {
        kept = jobs.iter().filter(|j| !j.recorded.never_ran).cloned().collect();
        &kept[..]
    } else {
        jobs
    };
    let (workload, origin) = plan(jobs, options.policy)?;
    let progress = options.progress.clone().map(|report| {
        let state = std::sync::Mutex::new(JobsDone::new(&workload, &origin, jobs.len()));
        keel_sim::world::Progress(std::sync::Arc::new(move |sim_ms, events, resolved: &[u32]| {
            let done = state.lock().map(|mut s| s.resolved(resolved)).unwrap_or(0);
            (report.0)(sim_ms, events, done);
        }))
    });
    let hosts: Vec<HostSpec> = options
        .nodes
        .iter()
        .map(|n| HostSpec {
            resources: n.resources.clone(),
            labels: n.gpu_model.iter().map(|m| (GPU_MODEL.to_string(), m.clone())).collect::<Labels>(),
        })
        .collect();
    // Heartbeats only matter to notice failures; over months of trace time, one a second per
    // node would be most of the simulation's work. With failures to notice: one a minute, and a
    // node is declared dead three minutes after it failed; without: one a day.
    // Spot nodes taken back are failures to notice too.
    let spot = options.autoscale.as_ref().is_some_and(|a| a.node_types.iter().any(|t| t.preempt_mean_s.is_some()));
    let heartbeat =
        if options.failures.is_empty() && !spot { Duration::from_secs(86_400) } else { Duration::from_secs(60) };
    let mut head =
        HeadConfig { heartbeat_period: heartbeat, node_timeout: Duration(heartbeat.0 * 3), ..HeadConfig::default() };
    head.scheduler.spread_threshold = match options.policy {
        Policy::Pack => 1.0,
        Policy::Hybrid | Policy::Spread => head.scheduler.spread_threshold,
    };
    let node = NodeConfig { heartbeat_period: heartbeat, ..NodeConfig::default() };
    let mut faults = Vec::new();
    for &(host, at_ms) in &options.failures {
        if host >= hosts.len() {
            return Err(format!("node {host} fails, but the cluster has {} nodes", hosts.len()));
        }
        faults.push(Timed { at_ms, fault: Fault::CrashNode { host, restart_ms: None } });
    }
    let last_fault = options.failures.iter().map(|f| f.1).max().unwrap_or(0);
    // Every feasible schedule ends by the last submit plus all the work done one task after
    // another (and a while per failure to notice it): past that, what is left cannot run.
    let t0 = jobs.iter().map(|j| j.submit_ms).min().unwrap_or(0);
    let span = jobs.iter().map(|j| j.submit_ms - t0).max().unwrap_or(0).max(last_fault);
    let serial: u64 = jobs
        .iter()
        .flat_map(|j| {
            let think = j.after.as_ref().map_or(0, |a| a.1);
            let work = j.tasks.iter().map(move |t| {
                if j.gang {
                    t.duration_ms
                } else {
                    t.duration_ms.saturating_mul(u64::from(t.instances))
                }
            });
            work.chain(std::iter::once(think))
        })
        .fold(0u64, |a, b| a.saturating_add(b));
    let bound_ms = span.saturating_add(serial).saturating_add(600_000 * (1 + options.failures.len() as u64));
    // When each task is submitted, and the tasks whose values it takes (for its pending time).
    let submitted: Vec<(u64, Vec<usize>)> =
        workload.tasks.iter().map(|t| (t.at_ms, t.deps.iter().map(|(d, _)| *d).collect())).collect();
    let params = Params {
        seed: options.seed,
        hosts,
        head,
        node,
        net: NetParams::default(),
        worker_start: Duration::from_millis(1),
        workload,
        faults,
        safety: Duration::from_millis(last_fault + 1),
        liveness: Duration::from_millis(bound_ms),
        check_every: 0,
        tamper: None,
        timeline: false,
        record_runs: true,
        exact_durations: true,
        crashed_stay_down: true,
        progress,
        autoscale: options.autoscale.clone(),
    };
    // What the cluster could ever have: its nodes, and every node the autoscaler may launch.
    let mut reachable = options.nodes.clone();
    for t in options.autoscale.iter().flat_map(|a| &a.node_types) {
        let shape =
            NodeShape { name: t.name.clone(), resources: t.resources(), gpu_model: t.labels.get(GPU_MODEL).cloned() };
        reachable.extend(std::iter::repeat_n(shape, t.max_workers.min(100_000) as usize));
    }
    let outcome = World::new(params).run();
    let job = outcome.job.ok_or("the simulated driver never registered")?;
    // The driver starts a moment after the clock does: plan times are from its start.
    let mut results: Vec<JobResult> = jobs
        .iter()
        .map(|j| JobResult {
            id: j.id.clone(),
            submit_ms: j.submit_ms - t0,
            infeasible: !fits(j, &reachable),
            start_ms: None,
            end_ms: None,
            retries: 0,
            recorded_status: match j.recorded.status {
                Status::Completed => "completed",
                Status::Failed => "failed",
                Status::Cancelled => "cancelled",
                Status::Unknown => "unknown",
            },
            recorded_wait_ms: j.recorded.wait_ms,
        })
        .collect();
    let index: HashMap<TaskId, usize> =
        (0..origin.len()).map(|i| (TaskId::child(TaskId::driver(job), 0, i as u64), i)).collect();
    // Per planned task: finished end, and every attempt's start.
    let mut finished_end: Vec<Option<u64>> = vec![None; origin.len()];
    let mut first_start: Vec<Option<u64>> = vec![None; origin.len()];
    // The first time each task's values were made (a value rebuilt later does not delay what
    // had already started).
    let mut first_end: Vec<Option<u64>> = vec![None; origin.len()];
    let mut busy: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let static_capacity = options.nodes.iter().fold(ResourceSet::default(), |mut acc, n| {
        acc.add(&n.resources);
        acc
    });
    // Shares over time are of the most the cluster had: its nodes and the autoscaler's peak.
    let mut capacity = static_capacity.clone();
    if let (Some(spec), Some(report)) = (&options.autoscale, &outcome.autoscale) {
        for t in &spec.node_types {
            for _ in 0..report.peak_by_type.get(&t.name).copied().unwrap_or(0) {
                capacity.add(&t.resources());
            }
        }
    }
    let capacity_of: Vec<(String, f64)> = resource_amounts(&capacity).into_iter().filter(|(_, c)| *c > 0.0).collect();
    let share = |amounts: &[(String, f64)], name: &str, cap: f64| {
        amounts.iter().find(|(n, _)| n == name).map_or(0.0, |(_, a)| a / cap)
    };
    let mut usage = Vec::new();
    // Times from the driver's start, as the plan's are.
    let started = outcome.driver_started;
    let ms = |ns: u64| ns.saturating_sub(started) / 1_000_000;
    for run in &outcome.runs {
        let Some(&i) = index.get(&run.task) else { continue };
        let o = origin[i];
        let r = &mut results[o.job as usize];
        if o.counted || o.gang_instances > 0 {
            r.start_ms = Some(r.start_ms.map_or(ms(run.start), |s| s.min(ms(run.start))));
        }
        if run.attempt > 0 && o.counted {
            r.retries += 1;
        }
        first_start[i] = Some(first_start[i].map_or(ms(run.start), |s: u64| s.min(ms(run.start))));
        if run.how == "finished" {
            finished_end[i] = Some(ms(run.end));
            first_end[i] = Some(first_end[i].map_or(ms(run.end), |e: u64| e.min(ms(run.end))));
            if o.think {
                r.submit_ms = ms(run.end);
            }
        }
        if o.counted {
            let task = &jobs[o.job as usize].tasks[o.task as usize];
            let seconds = run.end.saturating_sub(run.start) as f64 / 1e9;
            let copies = f64::from(o.gang_instances.max(1));
            let amounts = resource_amounts(&task.resources);
            usage.push((
                ms(run.start),
                ms(run.end),
                capacity_of.iter().map(|(name, cap)| share(&amounts, name, *cap) * copies).collect(),
            ));
            for (name, amount) in amounts {
                *busy.entry(name).or_default() += amount * seconds * copies;
            }
        }
    }
    for (i, o) in origin.iter().enumerate() {
        let r = &mut results[o.job as usize];
        match finished_end[i] {
            Some(end) if r.end_ms != Some(u64::MAX) => r.end_ms = Some(r.end_ms.map_or(end, |e| e.max(end))),
            None => r.end_ms = Some(u64::MAX),
            _ => {}
        }
    }
    for r in &mut results {
        if r.end_ms == Some(u64::MAX) {
            r.end_ms = None;
        }
    }
    let completed: Vec<&JobResult> = results.iter().filter(|r| r.end_ms.is_some()).collect();
    let makespan_ms = completed.iter().filter_map(|r| r.end_ms).max().unwrap_or(0);
    let makespan_s = makespan_ms as f64 / 1000.0;
    // Utilisation is over the whole time anything ran (attempts lost to failures and jobs that
    // never finished included), so that it never exceeds the capacity.
    let busy_until_s = usage.iter().map(|u| u.1).max().unwrap_or(0).max(makespan_ms) as f64 / 1000.0;
    // Of what the cluster offered: its nodes over that time, and the autoscaler's nodes while they
    // were billed.
    let mut offered: std::collections::BTreeMap<String, f64> =
        resource_amounts(&static_capacity).into_iter().map(|(name, cap)| (name, cap * busy_until_s)).collect();
    if let (Some(spec), Some(report)) = (&options.autoscale, &outcome.autoscale) {
        for t in &spec.node_types {
            let seconds = report.node_hours_by_type.get(&t.name).copied().unwrap_or(0.0) * 3600.0;
            for (name, amount) in resource_amounts(&t.resources()) {
                *offered.entry(name).or_default() += amount * seconds;
            }
        }
    }
    let utilisation = offered
        .into_iter()
        .filter(|(_, offered)| *offered > 0.0)
        .map(|(name, offered)| {
            let used = busy.get(&name).copied().unwrap_or(0.0);
            (name, used / offered)
        })
        .collect();
    // A task could run once submitted and once every value it takes was made.
    let pending: Vec<f64> = (0..origin.len())
        .filter(|&i| origin[i].counted)
        .filter_map(|i| {
            let (at_ms, deps) = &submitted[i];
            let ready = deps.iter().filter_map(|d| first_end[*d]).fold(*at_ms, u64::max);
            first_start[i].map(|s| s.saturating_sub(ready) as f64 / 1000.0)
        })
        .collect();
    let recorded: Vec<f64> = results.iter().filter_map(|r| r.recorded_wait_ms).map(|w| w as f64 / 1000.0).collect();
    let gpu_fragmentation = gpu_fragmentation(&outcome.runs, &options.nodes);
    let summary = Summary {
        jobs: results.len(),
        not_replayed,
        completed: completed.len(),
        unfinished: results.len() - completed.len(),
        never_started: results.iter().filter(|r| r.start_ms.is_none()).count(),
        infeasible: results.iter().filter(|r| r.infeasible).count(),
        recorded_failed: results.iter().filter(|r| r.recorded_status == "failed").count(),
        recorded_cancelled: results.iter().filter(|r| r.recorded_status == "cancelled").count(),
        retries: results.iter().map(|r| u64::from(r.retries)).sum(),
        makespan_s,
        completion_s: Stats::of(
            completed.iter().filter_map(|r| r.completion_ms()).map(|v| v as f64 / 1000.0).collect(),
        ),
        wait_s: Stats::of(results.iter().filter_map(|r| r.wait_ms()).map(|v| v as f64 / 1000.0).collect()),
        bounded_slowdown: Stats::of(completed.iter().filter_map(|r| r.bounded_slowdown()).collect()),
        utilisation,
        jobs_per_hour: if makespan_s > 0.0 { completed.len() as f64 / (makespan_s / 3600.0) } else { 0.0 },
        node_hours: options.nodes.len() as f64 * makespan_s / 3600.0
            + outcome.autoscale.as_ref().map_or(0.0, |a| a.node_hours),
        gpu_fragmentation,
        recorded_wait_s: (!recorded.is_empty()).then(|| Stats::of(recorded)),
        failure_reasons: outcome.failure_reasons.clone(),
        simulated_s: outcome.end_ms as f64 / 1000.0,
        events: outcome.counts.events,
        hash: outcome.hash.clone(),
        task_pending_s: Stats::of(pending),
        autoscale: outcome.autoscale.clone(),
    };
    usage.sort_by_key(|u| (u.0, u.1));
    let resources = capacity_of.into_iter().map(|(name, _)| name).collect();
    Ok(Replay { jobs: results, summary, usage, resources })
}

/// Sweeps every attempt's GPU devices over time (see [`GpuFragmentation`]); `None` when the
/// cluster has no GPU.
fn gpu_fragmentation(runs: &[keel_sim::world::Run], nodes: &[NodeShape]) -> Option<GpuFragmentation> {
    use keel_kernel::Amount;
    // Devices as the kernel makes them: one per whole GPU, and the fraction left as one more.
    let devices: Vec<Vec<u64>> = nodes
        .iter()
        .map(|n| {
            let g = n.resources.gpu.0;
            let mut d = vec![Amount::SCALE; (g / Amount::SCALE) as usize];
            if g % Amount::SCALE > 0 {
                d.push(g % Amount::SCALE);
            }
            d
        })
        .collect();
    let capacity: u64 = devices.iter().flatten().sum();
    if capacity == 0 {
        return None;
    }
    // (time, +1 start / -1 end, host, device, amount); ends before starts at the same time.
    let mut events: Vec<(u64, i8, usize, u32, u64)> = Vec::new();
    for run in runs {
        for &(device, amount) in &run.gpus {
            events.push((run.start, 1, run.host, device, amount.0));
            events.push((run.end, -1, run.host, device, amount.0));
        }
    }
    events.sort_unstable();
    let mut used: Vec<Vec<u64>> = devices.iter().map(|d| vec![0; d.len()]).collect();
    let mut idle = capacity;
    let mut fragmented = 0u64;
    let (mut weighted_fragmented, mut weighted_idle, mut peak) = (0u128, 0u128, 0u64);
    let (first, mut last) = (events.first().map_or(0, |e| e.0), events.first().map_or(0, |e| e.0));
    for (at, sign, host, device, amount) in events {
        let span = u128::from(at - last);
        weighted_fragmented += u128::from(fragmented) * span;
        weighted_idle += u128::from(idle) * span;
        last = at;
        let Some(cap) = devices.get(host).and_then(|d| d.get(device as usize)).copied() else { continue };
        let slot = &mut used[host][device as usize];
        let part = |u: u64| if u > 0 && u < cap { cap - u } else { 0 };
        fragmented -= part(*slot);
        if sign > 0 {
            *slot = (*slot + amount).min(cap);
            idle = idle.saturating_sub(amount);
        } else {
            *slot = slot.saturating_sub(amount);
            idle = (idle + amount).min(capacity);
        }
        fragmented += part(*slot);
        peak = peak.max(fragmented);
    }
    let whole = u128::from(capacity) * u128::from(last - first);
    Some(GpuFragmentation {
        fragmented_share: if whole > 0 { weighted_fragmented as f64 / whole as f64 } else { 0.0 },
        share_of_idle: if weighted_idle > 0 { weighted_fragmented as f64 / weighted_idle as f64 } else { 0.0 },
        peak_gpus: peak as f64 / Amount::SCALE as f64,
    })
}

/// Whether `job` could ever run on `nodes`: each task fits some node whose GPU model it accepts,
/// and a gang's instances fit the cluster together (counted per node: how many fit on it empty).
pub fn fits(job: &Job, nodes: &[NodeShape]) -> bool {
    use keel_kernel::ResourcePool;
    job.tasks.iter().all(|t| {
        let model_ok =
            |n: &NodeShape| t.gpu_models.is_empty() || n.gpu_model.as_ref().is_some_and(|m| t.gpu_models.contains(m));
        let candidates = nodes.iter().filter(|n| model_ok(n));
        if !job.gang {
            return candidates.into_iter().any(|n| ResourcePool::new(n.resources.clone()).could_ever_fit(&t.resources));
        }
        let wanted = t.instances.max(1) as usize;
        let mut room = 0usize;
        for n in candidates {
            let mut pool = ResourcePool::new(n.resources.clone());
            room += (0..wanted - room).take_while(|_| pool.try_allocate(&t.resources).is_some()).count();
            if room >= wanted {
                return true;
            }
        }
        false
    })
}

/// Each resource of `r` by name, as a plain number (CPUs, GPUs, bytes, custom units).
fn resource_amounts(r: &ResourceSet) -> Vec<(String, f64)> {
    let mut out = vec![
        ("CPU".to_string(), r.cpu.as_f64()),
        ("GPU".to_string(), r.gpu.as_f64()),
        ("memory".to_string(), r.memory.as_f64()),
    ];
    out.extend(r.custom.iter().map(|(k, v)| (k.clone(), v.as_f64())));
    out
}
