//! The world: one event queue, the real Head and Node machines, a network, worker processes, a
//! driver, and faults.
//!
//! Events are ordered by (time, sequence number); the sequence number breaks ties in the order
//! events were scheduled, so a run is a function of its parameters and seed alone. The machines
//! are the kernel's, unchanged: the world only carries their outputs (messages over simulated
//! links, processes, object bytes) and feeds back what happened as inputs.
//!
//! The network models what the real transport gives: each link is a TCP connection, reliable
//! and in order while it is up; a partition holds back what crosses it until it heals (TCP
//! retransmits); clogging delays without reordering; a broken connection loses what was in
//! flight and the node's daemon starts over.
//! Duplicates between the head and the nodes, and reordering between nodes, are faults the
//! protocol must absorb (attempt numbers, stale replies ignored).

use crate::faults::{Fault, Timed};
use crate::oracle::{Observer, Property, Resolution};
use crate::rng::{mix64, Rng, Stream};
use crate::workload::{Placement, Workload};
use keel_kernel::errors::TaskFailure;
use keel_kernel::head::{HeadConfig, HeadInput, HeadOutput};
use keel_kernel::node::{ExecArg, NodeConfig, NodeInput, NodeOutput};
use keel_kernel::proto::{
    ActorOptions, Arg, DriverToHead, Function, HeadToDriver, HeadToNode, Hello, Labels, NodeToHead, ObjectData,
    PlacementGroupSpec, ReturnValue, SchedulingStrategy, TaskKind, TaskOutcome, TaskSpec, Welcome, PROTOCOL_VERSION,
};
use keel_kernel::resources::{Amount, ResourceSet};
use keel_kernel::{
    ActorId, ConnId, Duration, Head, JobId, Node, NodeId, ObjectId, PlacementGroupId, TaskId, Time, WorkerId,
};
use rustc_hash::FxHashMap;
use slab::Slab;
use smallvec::{smallvec, SmallVec};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// One machine of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    /// Its resources.
    pub resources: ResourceSet,
    /// Its labels.
    pub labels: Labels,
}

/// The network's normal behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct NetParams {
    /// Base one-way latency.
    pub latency: Duration,
    /// Extra random delay, up to this much (order is kept on each link).
    pub jitter: Duration,
    /// Bytes per second of an object transfer between nodes.
    pub bandwidth: u64,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams { latency: Duration::from_millis(1), jitter: Duration::from_millis(1), bandwidth: 1_000_000_000 }
    }
}

/// A corruption of the kernel's outputs, to prove that the matching oracle catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// The first task completion a node sends is lost on its way to the head.
    DropCompletion,
    /// Every dispatch is also delivered, as is, to the next host.
    DuplicateDispatch,
    /// The first awaited value that becomes ready is deleted from every store at once.
    FreeEarly,
    /// Every dispatch goes to host 0, whatever node the head chose.
    OverCommit,
    /// The first value rebuilt is produced with different content.
    CorruptRebuild,
    /// The provider boots one node more than each launch asks for.
    OverLaunch,
    /// The first node launched is stopped, as if by the autoscaler, soon after it registers,
    /// while the work it was launched for still waits.
    StopWanted,
}

/// Everything a run is made of.
#[derive(Clone, Debug)]
pub struct Params {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// The machines.
    pub hosts: Vec<HostSpec>,
    /// The Head's configuration (its seed is replaced by one drawn from `seed`).
    pub head: HeadConfig,
    /// The Nodes' configuration (seeds likewise).
    pub node: NodeConfig,
    /// The network.
    pub net: NetParams,
    /// How long a worker process takes to start.
    pub worker_start: Duration,
    /// What the job does.
    pub workload: Workload,
    /// Faults, by time.
    pub faults: Vec<Timed>,
    /// End of the safety phase: every fault heals then.
    pub safety: Duration,
    /// Bound on the liveness phase: every awaited value must resolve by `safety + liveness`.
    pub liveness: Duration,
    /// Run the Head's `check_invariants` after every this many of its steps, and each Node's
    /// after every this many of its own (1: every step; 0: never). The checks walk the whole
    /// state, so large runs space them out.
    pub check_every: u64,
    /// A deliberate corruption (oracle self-tests only).
    pub tamper: Option<Tamper>,
    /// Record a timeline of task executions and faults (for `--timeline`).
    pub timeline: bool,
    /// Record every task attempt's run (for trace replay's metrics).
    pub record_runs: bool,
    /// Tasks run exactly as long as planned (trace replay), instead of up to 10% longer.
    pub exact_durations: bool,
    /// Crashed nodes stay down when the safety phase ends (trace replay's failures), instead of
    /// restarting with every other fault's healing.
    pub crashed_stay_down: bool,
    /// Told now and then how far the run is (for a progress bar).
    pub progress: Option<Progress>,
    /// An autoscaling cluster: the head's autoscaler is configured from it (unless `head`
    /// already has one), and a simulated provider carries out its launches and terminations.
    /// The hosts above are then static nodes beside the autoscaler's.
    pub autoscale: Option<crate::autoscale::AutoscaleSpec>,
}

/// A progress report: called every 65,536 events, and once at the end, with the simulated time
/// (ms), the events handled, and the planned tasks (by index) whose awaited value was resolved
/// since the last report.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<ProgressFn>);

/// What [`Progress`] calls: simulated ms, events, planned tasks resolved since the last call.
pub type ProgressFn = dyn Fn(u64, u64, &[u32]) + Send + Sync;

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// One task attempt's run on a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The task.
    pub task: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// The host (by index).
    pub host: usize,
    /// Start, in nanoseconds of simulated time.
    pub start: u64,
    /// End.
    pub end: u64,
    /// How it ended: finished, failed, died, killed, lost.
    pub how: &'static str,
    /// The GPU devices it held: `(device index, amount)`.
    pub gpus: Vec<(u32, keel_kernel::Amount)>,
}

/// One span of a timeline: a task attempt on a worker, or a fault (zero length).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    /// The host (by index).
    pub host: usize,
    /// The worker, for task spans.
    pub worker: Option<u64>,
    /// What ran or happened.
    pub name: String,
    /// Start, in nanoseconds of simulated time.
    pub start: u64,
    /// End (equal to the start for a fault).
    pub end: u64,
    /// How it ended: finished, failed, died, killed, lost, fault.
    pub how: &'static str,
}

/// Who sends and receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Head,
    Host(usize),
    Driver,
}

#[derive(Clone, Debug)]
enum Event {
    /// A message arrives at the head.
    ToHead {
        from: Endpoint,
        epoch: u64,
        input: HeadInput,
    },
    /// A message arrives at a host's node machine (or a local report from its processes).
    ToNode {
        host: usize,
        inc: u64,
        epoch: Option<u64>,
        input: NodeInput,
    },
    /// A message arrives at the driver.
    ToDriver(HeadToDriver),
    /// A machine's timer may be due.
    HeadTimer {
        at: Time,
    },
    NodeTimer {
        at: Time,
        host: usize,
        inc: u64,
    },
    /// The driver's next planned submissions may be due.
    DriverWake,
    /// A fault starts.
    Fault(Fault),
    /// A lasting fault ends.
    Heal(Heal),
    /// A launched instance has booted: it becomes a host and registers.
    Boot {
        instance: usize,
    },
    /// The provider reports a launch request failed.
    LaunchFailed {
        request: u64,
        reason: String,
    },
    /// The cloud takes a spot instance back.
    Reclaim {
        instance: usize,
    },
    /// The instance is stopped as if the autoscaler had terminated it (oracle self-tests).
    TamperStop {
        instance: usize,
    },
    /// A worker's task is over (done, or its process died).
    WorkerEnd {
        host: usize,
        inc: u64,
        worker: WorkerId,
        input: NodeInput,
    },
    /// The bytes of a transfer land in a host's store.
    BytesArrive {
        host: usize,
        inc: u64,
        object: ObjectId,
        size: u64,
        digest: u64,
    },
    /// The safety phase ends.
    SafetyEnd,
}

#[derive(Clone, Copy, Debug)]
enum Heal {
    Clog(usize),
    Duplicate,
    Reorder,
    Restart(usize),
}

/// A queued event: its time, its sequence number and its slot in the world's event arena. The
/// queue's sift moves only this small header, not whole messages, and an event costs no
/// allocation of its own (the arena reuses freed slots).
struct Scheduled {
    at: Time,
    seq: u64,
    slot: usize,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What a node hands a worker: the attempt and where its arguments are.
type Execution = (Arc<TaskSpec>, u32, Vec<ExecArg>);

/// A simulated worker's current work.
#[derive(Clone, Debug)]
struct Work {
    task: TaskId,
    resources: ResourceSet,
    /// An actor's worker keeps its creation task's resources while it lives.
    actor: Option<ActorId>,
    /// Values the task writes to the store when it ends: object, size, digest.
    sealed: Vec<(ObjectId, u64, u64)>,
}

/// One machine: its node machine, store, workers and fault state.
struct Host {
    spec: HostSpec,
    node: Node,
    id: Option<NodeId>,
    up: bool,
    /// Bumped whenever the daemon starts over: events of an older incarnation are dropped.
    inc: u64,
    /// Bumped when the connection to the head breaks: messages of an older epoch are lost.
    epoch: u64,
    conn: ConnId,
    /// Object contents held: size and digest.
    store: BTreeMap<ObjectId, (u64, u64)>,
    workers: BTreeMap<WorkerId, Work>,
    /// Attempts handed to a busy worker, which it runs in order after its current one (the flag:
    /// interrupted before it started, so it is skipped as cancelled).
    ahead: BTreeMap<WorkerId, VecDeque<(Execution, bool)>>,
    /// When each worker's last report reaches the node: a worker's reports arrive in the order it
    /// sent them (one socket), however late each is.
    reported_at: BTreeMap<WorkerId, Time>,
    timer: Option<Time>,
    paused_until: Time,
    /// Messages from the head are held back until then (a partition; TCP delivers them late).
    cut_in_until: Time,
    /// Messages to the head are held back until then.
    cut_out_until: Time,
    clog: Duration,
    hang_next: Option<Duration>,
    clock_offset: Duration,
    steps: u64,
    /// Stopped by the provider (terminated or taken back): it never comes back.
    gone: bool,
    /// The provider's instance it is.
    instance: Option<usize>,
}

impl Host {
    /// Host `index` of a run, up and not yet registered.
    fn new(params: &Params, index: usize, spec: HostSpec) -> Host {
        let mut config = params.node.clone();
        config.seed = mix64(crate::rng::stream_seed(params.seed, Stream::Nodes) ^ index as u64);
        Host {
            spec,
            node: Node::new(config),
            id: None,
            up: true,
            inc: 0,
            epoch: 0,
            conn: ConnId(0),
            store: BTreeMap::new(),
            workers: BTreeMap::new(),
            ahead: BTreeMap::new(),
            reported_at: BTreeMap::new(),
            timer: None,
            paused_until: Time::ZERO,
            cut_in_until: Time::ZERO,
            cut_out_until: Time::ZERO,
            clog: Duration::ZERO,
            hang_next: None,
            clock_offset: Duration::ZERO,
            steps: 0,
            gone: false,
            instance: None,
        }
    }
}

/// The driver of the one job, following its workload plan.
#[derive(Default)]
struct Driver {
    job: Option<JobId>,
    started: Time,
    gone: bool,
    next_task: usize,
    next_actor: usize,
    next_group: usize,
    actors: Vec<ActorId>,
    groups: Vec<PlacementGroupId>,
    /// Groups due but waiting for their `after` task to end.
    due_groups: BTreeSet<usize>,
    /// Per planned group: created.
    made: Vec<bool>,
    /// Planned tasks that groups wait for, by their first value, and those that have ended.
    gates: BTreeMap<ObjectId, usize>,
    gate_tasks: BTreeSet<usize>,
    gates_ended: BTreeSet<usize>,
    /// Planned tasks due but held back: their group is not created yet, or they take the value
    /// of a task held back.
    deferred: BTreeSet<usize>,
    /// Per planned task: consumers not submitted yet.
    consumers_left: Vec<u32>,
    /// Handles the driver holds.
    held: BTreeSet<ObjectId>,
    /// Awaited objects and what became of them.
    awaited: BTreeMap<ObjectId, Option<Resolution>>,
    /// Nested refs found inside awaited values (a spawning task's children).
    nested: BTreeSet<ObjectId>,
    actor_calls: Vec<u64>,
    /// Tasks placed in groups released when done, and each such group's tasks not yet ended.
    group_of: FxHashMap<TaskId, usize>,
    group_left: Vec<u32>,
    released: bool,
    refetches: u64,
    wake: Option<Time>,
}

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Events handled.
    pub events: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost with a broken connection.
    pub lost: u64,
    /// Messages held back by a partition (delivered when it heals, as TCP does).
    pub held: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Faults injected.
    pub faults: u64,
    /// Attempts executed by workers.
    pub executions: u64,
    /// Values rebuilt and equal to the original.
    pub rebuilt_equal: u64,
    /// Awaited values ready / failed.
    pub ready: u64,
    /// Awaited values that failed for good.
    pub failed: u64,
    /// Driver fetches that found no copy and asked again.
    pub refetches: u64,
}

/// The world.
pub struct World {
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// The queued events, by slot.
    events: Slab<Event>,
    head: Head,
    head_timer: Option<Time>,
    hosts: Vec<Host>,
    by_node: FxHashMap<NodeId, usize>,
    conns: FxHashMap<ConnId, Endpoint>,
    next_conn: u64,
    driver: Driver,
    params: Params,
    net_rng: Rng,
    proc_rng: Rng,
    unfold_rng: Rng,
    /// Last arrival time per directed link, to keep each link in order (keyed by `link_key`;
    /// looked up, never iterated).
    last_arrival: FxHashMap<u64, Time>,
    duplicate_p: f64,
    reorder_jitter: Option<Duration>,
    obs: Observer,
    counts: Counts,
    log: u64,
    buf: Vec<u8>,
    safety_over: bool,
    tamper_spent: bool,
    /// Functions by name, shared (`Arc<str>`) as a driver would keep them.
    functions: FxHashMap<String, Function>,
    /// The same, by what a planned task does (no name to format for a shape seen before).
    plan_functions: FxHashMap<(u64, u64, bool, u32), Function>,
    /// Refs inside each value produced (what the driver finds when it deserialises the value).
    nested_of: BTreeMap<ObjectId, Vec<ObjectId>>,
    trace_filter: Option<String>,
    /// A kernel entry point panicked: the run stops.
    crashed: bool,
    /// Objects deleted by the step in progress, and those it reported evicted.
    deleted_in_step: Vec<ObjectId>,
    evicted_in_step: Vec<ObjectId>,
    timeline: Vec<Span>,
    runs: Vec<Run>,
    open_runs: FxHashMap<(usize, u64, WorkerId), (TaskId, u32, Time)>,
    /// Planned tasks (by index) whose awaited value resolved since the last progress report,
    /// and the indices of awaited tasks (kept only while progress is reported).
    resolved_since: Vec<u32>,
    awaited_index: FxHashMap<TaskId, u32>,
    /// GPU devices of dispatched attempts, while runs are recorded.
    run_gpus: FxHashMap<(TaskId, u32), Vec<(u32, keel_kernel::Amount)>>,
    head_steps: u64,
    /// Open spans of the timeline, by (host, incarnation, worker).
    open_spans: BTreeMap<(usize, u64, WorkerId), (Time, String)>,
    /// The simulated provider, for an autoscaling cluster.
    provider: Option<crate::provider::Provider>,
    provider_rng: Rng,
}

/// The end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The hash of the event log.
    pub hash: String,
    /// Simulated time at the end, in milliseconds.
    pub end_ms: u64,
    /// What happened.
    pub counts: Counts,
    /// Broken properties.
    pub violations: Vec<crate::oracle::Violation>,
    /// Failure reasons of awaited values that failed, by kind, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Tasks the Head reports finished, failed, retried and rebuilt.
    pub head: HeadCounts,
    /// Task executions and faults, when asked for.
    #[serde(skip)]
    pub timeline: Vec<Span>,
    /// Every task attempt's run, when asked for, in the order they ended.
    #[serde(skip)]
    pub runs: Vec<Run>,
    /// The driver's job (its tasks are `TaskId::child(TaskId::driver(job), 0, i)` for planned
    /// task `i`).
    #[serde(skip)]
    pub job: Option<JobId>,
    /// When the driver registered, in nanoseconds: planned times count from then.
    #[serde(skip)]
    pub driver_started: u64,
    /// What the autoscaler and its provider did, for an autoscaling cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::provider::AutoscaleReport>,
}

/// The Head's own counts at the end of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HeadCounts {
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks finished.
    pub finished: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Retries.
    pub retries: u64,
    /// Reconstructions.
    pub reconstructions: u64,
    /// Nodes declared lost.
    pub nodes_lost: u64,
    /// Inputs refused.
    pub refused: u64,
    /// Attempts handed to a node to run next after a running task.
    pub pipelined: u64,
}

const MS: u64 = 1_000_000;

/// A worker's report of an attempt's end reaches its node within this many nanoseconds.
const REPORT_DELAY_NS: u64 = 20_000;

impl World {
    /// A world for `params`, ready to [`run`](World::run).
    pub fn new(mut params: Params) -> World {
        let params_seed = params.seed;
        params.head.seed = crate::rng::stream_seed(params.seed, Stream::Head);
        if let Some(spec) = &params.autoscale {
            params.head.autoscaler.get_or_insert_with(|| spec.config());
        }
        let provider = params.autoscale.clone().map(crate::provider::Provider::new);
        let hosts = params.hosts.iter().enumerate().map(|(i, spec)| Host::new(&params, i, spec.clone())).collect();
        let mut world = World {
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Slab::new(),
            head: Head::new(params.head.clone()),
            head_timer: None,
            hosts,
            by_node: FxHashMap::default(),
            conns: FxHashMap::default(),
            next_conn: 0,
            driver: Driver::default(),
            net_rng: Rng::new(params.seed, Stream::Network),
            proc_rng: Rng::new(params.seed, Stream::Process),
            unfold_rng: Rng::new(params.seed, Stream::Unfold),
            params,
            last_arrival: FxHashMap::default(),
            duplicate_p: 0.0,
            reorder_jitter: None,
            obs: Observer::default(),
            counts: Counts::default(),
            log: 0xcbf2_9ce4_8422_2325,
            buf: Vec::new(),
            safety_over: false,
            tamper_spent: false,
            functions: FxHashMap::default(),
            plan_functions: FxHashMap::default(),
            nested_of: BTreeMap::new(),
            trace_filter: std::env::var("KEEL_SIM_TRACE").ok().filter(|s| !s.is_empty()),
            crashed: false,
            deleted_in_step: Vec::new(),
            evicted_in_step: Vec::new(),
            timeline: Vec::new(),
            runs: Vec::new(),
            open_runs: FxHashMap::default(),
            run_gpus: FxHashMap::default(),
            resolved_since: Vec::new(),
            awaited_index: FxHashMap::default(),
            head_steps: 0,
            open_spans: BTreeMap::new(),
            provider,
            provider_rng: Rng::new(params_seed, Stream::Provider),
        };
        // Clocks of nodes differ by up to 50 ms (the Head never compares them).
        for i in 0..world.hosts.len() {
            world.hosts[i].clock_offset = Duration(world.proc_rng.below(50) * MS);
        }
        world
    }

    /// Runs to the end of the liveness bound and returns what happened.
    pub fn run(mut self) -> Outcome {
        for host in 0..self.hosts.len() {
            self.register(host);
        }
        self.connect_driver();
        for timed in std::mem::take(&mut self.params.faults) {
            self.schedule(Time(timed.at_ms * MS), Event::Fault(timed.fault));
        }
        let safety_end = Time(self.params.safety.0);
        self.schedule(safety_end, Event::SafetyEnd);
        let deadline = safety_end + self.params.liveness;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > deadline {
                self.queue.push(Reverse(next));
                break;
            }
            self.now = self.now.max(next.at);
            self.counts.events += 1;
            if self.counts.events & 0xffff == 0 {
                self.report_progress();
            }
            let event = self.events.remove(next.slot);
            self.handle(event);
            if self.crashed || self.finished() {
                break;
            }
        }
        self.report_progress();
        self.finish(deadline)
    }

    /// Every awaited value resolved, released, the cluster quiet, and an autoscaled cluster
    /// shrunk back.
    fn finished(&self) -> bool {
        self.quiet() && self.provider.as_ref().is_none_or(|p| p.settled())
    }

    /// Every awaited value resolved, released, and the cluster quiet.
    fn quiet(&self) -> bool {
        self.safety_over
            && (self.driver.released || self.driver.gone)
            && self.head.task_records() == 0
            && self.head.object_records() == 0
            && self
                .hosts
                .iter()
                .all(|h| !h.up || (h.store.is_empty() && h.workers.is_empty() && h.node.task_count() == 0))
    }

    fn finish(mut self, deadline: Time) -> Outcome {
        let unresolved: Vec<ObjectId> =
            self.driver.awaited.iter().filter(|(_, r)| r.is_none()).map(|(o, _)| *o).collect();
        if !self.driver.gone && !self.all_submitted() {
            self.obs.violate(
                Property::Liveness,
                deadline,
                format!(
                    "no liveness: the driver submitted {} of its {} tasks by the end",
                    self.driver.next_task,
                    self.params.workload.tasks.len()
                ),
            );
        } else if !self.driver.gone && (!unresolved.is_empty() || self.driver.job.is_none()) {
            let shown: Vec<String> = unresolved.iter().take(5).map(|o| o.to_string()).collect();
            self.obs.violate(
                Property::Liveness,
                deadline,
                format!(
                    "no liveness: {} awaited values unresolved {} ms after every fault healed ({})",
                    unresolved.len(),
                    self.params.liveness.0 / MS,
                    shown.join(", ")
                ),
            );
        } else if !self.quiet() {
            // (An autoscaled cluster that did not shrink back is the expectations' to report.)
            let stored: u64 = self.hosts.iter().filter(|h| h.up).map(|h| h.store.len() as u64).sum();
            let examples: Vec<String> = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.up)
                .flat_map(|(i, h)| h.store.keys().map(move |o| (i, h, *o)))
                .take(3)
                .map(|(i, h, o)| {
                    let known = h.node.local_object(o).map_or("unknown to its node".to_string(), |l| format!("{l:?}"));
                    format!("{o} on host {i} ({known})")
                })
                .collect();
            self.obs.violate(
                Property::NoLeak,
                deadline,
                format!(
                    "after the driver dropped everything: {} task records, {} object records, {} stored objects{}",
                    self.head.task_records(),
                    self.head.object_records(),
                    stored,
                    if examples.is_empty() { String::new() } else { format!(": {}", examples.join("; ")) }
                ),
            );
        }
        let mut failure_reasons = BTreeMap::new();
        for r in self.driver.awaited.values().flatten() {
            if let Resolution::Failed(reason) = r {
                *failure_reasons.entry(reason_kind(reason)).or_insert(0) += 1;
            }
        }
        let stats = self.head.stats();
        let head = HeadCounts {
            submitted: stats.tasks_submitted,
            finished: stats.tasks_finished,
            failed: stats.tasks_failed,
            retries: stats.retries,
            reconstructions: stats.reconstructions,
            nodes_lost: stats.nodes_lost,
            refused: stats.inputs_refused,
            pipelined: stats.attempts_pipelined,
        };
        for ((host, _, worker), (start, name)) in std::mem::take(&mut self.open_spans) {
            let end = self.now.0;
            self.timeline.push(Span { host, worker: Some(worker.0), name, start: start.0, end, how: "lost" });
        }
        let mut open: Vec<_> = std::mem::take(&mut self.open_runs).into_iter().collect();
        open.sort_unstable_by_key(|(key, _)| *key);
        for ((host, _, _), (task, attempt, start)) in open {
            let gpus = self.run_gpus.remove(&(task, attempt)).unwrap_or_default();
            self.runs.push(Run { task, attempt, host, start: start.0, end: self.now.0, how: "lost", gpus });
        }
        self.counts.executions = self.obs.executions;
        self.counts.rebuilt_equal = self.obs.rebuilt_equal;
        self.counts.refetches = self.driver.refetches;
        Outcome {
            hash: format!("{:016x}", self.log),
            end_ms: self.now.0 / MS,
            counts: self.counts,
            violations: self.obs.violations().to_vec(),
            failure_reasons,
            head,
            timeline: std::mem::take(&mut self.timeline),
            runs: std::mem::take(&mut self.runs),
            job: self.driver.job,
            driver_started: self.driver.started.0,
            autoscale: self.provider.as_ref().map(|p| p.report(self.now)),
        }
    }

    /// Runs a kernel entry point; a panic (a kernel bug) becomes a violation and ends the run,
    /// so that a chaos run reports the seed instead of losing the thread. False when it panicked.
    fn guard(&mut self, what: &str, f: impl FnOnce(&mut World)) -> bool {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(()) => true,
            Err(panic) => {
                let detail = panic_text(&panic);
                self.obs.violate(Property::KernelInvariant, self.now, format!("panic in {what}: {detail}"));
                self.crashed = true;
                false
            }
        }
    }

    /// With `KEEL_SIM_TRACE=TEXT`, prints every message that mentions TEXT (debugging aid).
    fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(filter) = &self.trace_filter {
            let line = line();
            if line.contains(filter.as_str()) {
                eprintln!("{:>10.3} ms  {line}", self.now.0 as f64 / MS as f64);
            }
        }
    }

    // ---- the queue and the log ----

    fn schedule(&mut self, at: Time, event: Event) {
        self.seq += 1;
        let slot = self.events.insert(event);
        self.queue.push(Reverse(Scheduled { at: at.max(self.now), seq: self.seq, slot }));
    }

    fn log_bytes(&mut self, kind: u64, bytes_of: impl FnOnce(&mut Vec<u8>)) {
        self.buf.clear();
        bytes_of(&mut self.buf);
        let mut h = self.log ^ mix64(self.now.0 ^ kind.rotate_left(56));
        for chunk in self.buf.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = mix64(h ^ u64::from_le_bytes(word));
        }
        self.log = h;
    }

    fn log_ids(&mut self, kind: u64, ids: &[u64]) {
        let mut h = self.log ^ mix64(self.now.0 ^ kind.rotate_left(56));
        for id in ids {
            h = mix64(h ^ id);
        }
        self.log = h;
    }

    // ---- events ----

    fn handle(&mut self, event: Event) {
        match event {
            Event::ToHead { from, epoch, input } => {
                if let Endpoint::Host(h) = from {
                    if self.hosts[h].epoch != epoch {
                        self.counts.lost += 1;
                        return;
                    }
                }
                self.deliver_head(input);
            }
            Event::ToNode { host, inc, epoch, input } => {
                let h = &self.hosts[host];
                if !h.up || h.inc != inc || epoch.is_some_and(|e| e != h.epoch) {
                    return;
                }
                if h.paused_until > self.now {
                    let at = h.paused_until;
                    self.schedule(at, Event::ToNode { host, inc, epoch, input });
                    return;
                }
                self.deliver_node(host, input);
            }
            Event::WorkerEnd { host, inc, worker, input } => {
                if self.params.timeline || self.params.record_runs {
                    let how = match &input {
                        NodeInput::TaskDone { outcome: TaskOutcome::Finished(_), .. } => "finished",
                        NodeInput::TaskDone { .. } => "failed",
                        _ => "died",
                    };
                    self.close_span(host, inc, worker, how);
                }
                let h = &self.hosts[host];
                if !h.up || h.inc != inc || !h.workers.contains_key(&worker) {
                    return;
                }
                if h.paused_until > self.now {
                    let at = h.paused_until;
                    self.schedule(at, Event::WorkerEnd { host, inc, worker, input });
                    return;
                }
                let ends_worker = matches!(input, NodeInput::WorkerExited { .. });
                let h = &mut self.hosts[host];
                if !ends_worker {
                    // The task's values are in the store once it returns, not before.
                    let sealed = h.workers.get_mut(&worker).map(|w| std::mem::take(&mut w.sealed)).unwrap_or_default();
                    for (object, size, digest) in sealed {
                        h.store.insert(object, (size, digest));
                    }
                }
                if ends_worker {
                    h.ahead.remove(&worker);
                }
                if ends_worker || h.workers.get(&worker).is_some_and(|w| w.actor.is_none()) {
                    h.workers.remove(&worker);
                } else if let Some(w) = h.workers.get_mut(&worker) {
                    // An actor's worker goes on holding its creation's resources.
                    w.task = TaskId(0);
                }
                if ends_worker {
                    self.deliver_node(host, input);
                } else {
                    // The worker goes on at once with what it was handed ahead; its report reaches
                    // the node a moment later, so orders the node sends meanwhile (a cancel, a
                    // withdrawal) meet a worker that has moved on, as they can for real.
                    self.run_next(host, inc, worker);
                    let late = self.now + Duration(self.proc_rng.below(REPORT_DELAY_NS + 1));
                    let h = &mut self.hosts[host];
                    let at = h.reported_at.get(&worker).map_or(late, |last| late.max(*last));
                    h.reported_at.insert(worker, at);
                    self.local(host, at.saturating_since(self.now), input);
                }
            }
            Event::ToDriver(msg) => self.deliver_driver(msg),
            Event::BytesArrive { host, inc, object, size, digest } => {
                let h = &self.hosts[host];
                if !h.up || h.inc != inc {
                    return;
                }
                if h.paused_until > self.now {
                    let at = h.paused_until;
                    self.schedule(at, Event::BytesArrive { host, inc, object, size, digest });
                    return;
                }
                self.hosts[host].store.insert(object, (size, digest));
                self.deliver_node(host, NodeInput::ObjectSealed { object, size });
            }
            Event::HeadTimer { at } => {
                if self.head_timer != Some(at) {
                    return; // superseded by an earlier timer
                }
                self.head_timer = None;
                if self.head.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.log_ids(1, &[]);
                    let now = self.now;
                    if self.guard("head timeout", |w| w.head.handle_timeout(now)) {
                        self.after_head_step();
                    }
                } else {
                    self.arm_head_timer();
                }
            }
            Event::NodeTimer { host, inc, at } => {
                let h = &mut self.hosts[host];
                if !h.up || h.inc != inc || h.timer != Some(at) {
                    return;
                }
                h.timer = None;
                if h.paused_until > self.now {
                    let at = h.paused_until;
                    h.timer = Some(at);
                    self.schedule(at, Event::NodeTimer { host, inc, at });
                    return;
                }
                let local = self.now + h.clock_offset;
                if h.node.poll_timeout().is_some_and(|t| t <= local) {
                    self.log_ids(2, &[host as u64]);
                    if self.guard("node timeout", |w| w.hosts[host].node.handle_timeout(local)) {
                        self.after_node_step(host);
                    }
                } else {
                    self.arm_node_timer(host);
                }
            }
            Event::DriverWake => {
                self.driver.wake = None;
                self.driver_step();
            }
            Event::Fault(fault) => self.inject(fault),
            Event::Heal(heal) => self.heal(heal),
            Event::Boot { instance } => self.boot(instance),
            Event::LaunchFailed { request, reason } => self.deliver_head(HeadInput::LaunchFailed { request, reason }),
            Event::Reclaim { instance } => self.stop_instance(instance, "preempted"),
            Event::TamperStop { instance } => self.stop_instance(instance, "terminated"),
            Event::SafetyEnd => {
                self.safety_over = true;
                self.log_ids(3, &[]);
                for host in 0..self.hosts.len() {
                    let h = &mut self.hosts[host];
                    (h.clog, h.hang_next) = (Duration::ZERO, None);
                    if !h.up && !h.gone && !self.params.crashed_stay_down {
                        self.restart(host);
                    }
                }
                self.duplicate_p = 0.0;
                self.reorder_jitter = None;
                self.driver_maybe_release();
            }
        }
    }

    // ---- the network ----

    fn send(&mut self, from: Endpoint, to: Endpoint, bytes: u64, event: Event) {
        self.counts.messages += 1;
        let host = match (from, to) {
            (Endpoint::Host(h), _) | (_, Endpoint::Host(h)) => Some(h),
            _ => None,
        };
        let held_until = match (from, to, host) {
            (Endpoint::Head, _, Some(h)) => self.hosts[h].cut_in_until,
            (_, Endpoint::Head, Some(h)) => self.hosts[h].cut_out_until,
            _ => Time::ZERO,
        };
        if held_until > self.now {
            self.counts.held += 1;
        }
        let p = &self.params.net;
        let mut delay =
            p.latency.0 + self.net_rng.below(p.jitter.0 + 1) + bytes.saturating_mul(1_000_000_000) / p.bandwidth.max(1);
        for end in [from, to] {
            if let Endpoint::Host(h) = end {
                delay += self.hosts[h].clog.0;
            }
        }
        let peer_link = matches!((from, to), (Endpoint::Host(_), Endpoint::Host(_)));
        let at = match self.reorder_jitter.filter(|_| peer_link) {
            Some(j) => self.now + Duration(delay + self.net_rng.below(j.0 + 1)),
            None => {
                let last = self.last_arrival.entry(link_key(from, to)).or_insert(Time::ZERO);
                let at = (self.now.max(held_until) + Duration(delay)).max(*last);
                *last = at;
                at
            }
        };
        let head_link = host.is_some() && !peer_link;
        if head_link && self.duplicate_p > 0.0 && self.net_rng.chance(self.duplicate_p) {
            self.counts.duplicated += 1;
            let copy = event.clone();
            let later = at + Duration(self.net_rng.below(2 * MS));
            self.schedule(later, copy);
        }
        self.schedule(at, event);
    }

    fn send_to_head(&mut self, host: usize, msg: NodeToHead) {
        let Some(node) = self.hosts[host].id else { return };
        let epoch = self.hosts[host].epoch;
        if self.params.tamper == Some(Tamper::DropCompletion) && !self.tamper_spent {
            if let NodeToHead::TaskEnded { outcome: TaskOutcome::Finished(_), .. } = &msg {
                self.tamper_spent = true;
                return;
            }
        }
        let size = message_size(&msg);
        self.send(
            Endpoint::Host(host),
            Endpoint::Head,
            size,
            Event::ToHead { from: Endpoint::Host(host), epoch, input: HeadInput::FromNode { node, msg } },
        );
    }

    fn send_to_node(&mut self, host: usize, input: NodeInput) {
        let (inc, epoch) = (self.hosts[host].inc, self.hosts[host].epoch);
        self.send(Endpoint::Head, Endpoint::Host(host), 0, Event::ToNode { host, inc, epoch: Some(epoch), input });
    }

    /// A report from the host's own processes (no network).
    fn local(&mut self, host: usize, delay: Duration, input: NodeInput) {
        let inc = self.hosts[host].inc;
        self.schedule(self.now + delay, Event::ToNode { host, inc, epoch: None, input });
    }

    // ---- the head ----

    fn deliver_head(&mut self, input: HeadInput) {
        self.trace(|| format!("head <- {input:?}"));
        let kind = match &input {
            HeadInput::Connect { .. } => 10,
            HeadInput::FromDriver { .. } => 11,
            HeadInput::FromNode { .. } => 12,
            HeadInput::DrainNode(_) => 13,
            HeadInput::DriverDisconnected(_) => 14,
            HeadInput::LaunchFailed { .. } => 17,
            HeadInput::NodeDisconnected(_) => 18,
        };
        match &input {
            HeadInput::FromDriver { msg: DriverToHead::SubmitTask(spec), .. } => {
                self.log_ids(15, &[spec.task.0, spec.args.len() as u64, u64::from(spec.num_returns)])
            }
            HeadInput::FromDriver { msg, .. } => self.log_bytes(kind, |b| postcard_into(b, msg)),
            HeadInput::FromNode { node, msg: NodeToHead::TaskEnded { task, attempt, outcome } } => {
                let mut ids: SmallVec<[u64; 16]> = smallvec![node.0, task.0, u64::from(*attempt)];
                match outcome {
                    TaskOutcome::Finished(values) => {
                        for v in values {
                            ids.extend([v.object.task.0, u64::from(v.object.index), v.size]);
                            ids.push(v.inline.as_deref().map_or(0, |b| digest_of_content(b) ^ b.len() as u64));
                            ids.extend(v.nested.iter().map(|o| o.task.0));
                        }
                    }
                    TaskOutcome::Failed(failure) => ids.push(digest_bytes(format!("{failure:?}").as_bytes())),
                }
                self.log_ids(16, &ids);
            }
            HeadInput::FromNode { node, msg } => {
                let node = node.0;
                self.log_bytes(kind, |b| {
                    b.extend_from_slice(&node.to_le_bytes());
                    postcard_into(b, msg)
                })
            }
            HeadInput::Connect { conn, hello } => {
                let conn = conn.0;
                self.log_bytes(kind, |b| {
                    b.extend_from_slice(&conn.to_le_bytes());
                    postcard_into(b, hello)
                })
            }
            HeadInput::DrainNode(n) => self.log_ids(kind, &[n.0]),
            HeadInput::DriverDisconnected(j) => self.log_ids(kind, &[j.0]),
            HeadInput::LaunchFailed { request, .. } => self.log_ids(kind, &[*request]),
            HeadInput::NodeDisconnected(n) => self.log_ids(kind, &[n.0]),
        }
        let now = self.now;
        if self.guard("head input", |w| {
            let _ = w.head.handle_input(now, input);
        }) {
            self.after_head_step();
        }
    }

    fn after_head_step(&mut self) {
        self.head_steps += 1;
        if self.params.check_every > 0 && self.head_steps % self.params.check_every == 0 {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.head.check_invariants())) {
                let detail = panic_text(&panic);
                self.obs.violate(Property::KernelInvariant, self.now, format!("head: {detail}"));
            }
        }
        while let Some(output) = self.head.poll_output() {
            self.perform_head(output);
        }
        self.arm_head_timer();
    }

    fn arm_head_timer(&mut self) {
        if let Some(t) = self.head.poll_timeout() {
            if self.head_timer.is_none_or(|armed| t < armed) {
                self.head_timer = Some(t);
                self.schedule(t, Event::HeadTimer { at: t });
            }
        }
    }

    fn perform_head(&mut self, output: HeadOutput) {
        self.trace(|| format!("head -> {output:?}"));
        match output {
            HeadOutput::ToConn { conn, msg } => match (self.conns.get(&conn).copied(), msg) {
                (Some(Endpoint::Host(host)), Welcome::NodeRegistered(id)) if self.hosts[host].conn == conn => {
                    self.hosts[host].id = Some(id);
                    self.by_node.insert(id, host);
                    self.send_to_node(host, NodeInput::Registered(id));
                }
                (Some(Endpoint::Driver), Welcome::JobRegistered(job)) => {
                    let at = self.now + self.params.net.latency;
                    self.driver.job = Some(job);
                    self.driver.started = at;
                    self.wake_driver(at);
                }
                _ => {}
            },
            HeadOutput::ToNode { node, msg } => {
                let Some(&host) = self.by_node.get(&node) else { return };
                if let HeadToNode::RunTask { spec, attempt, allocation, .. } = &msg {
                    if self.params.record_runs && !allocation.gpus.is_empty() {
                        self.run_gpus.insert((spec.task, *attempt), allocation.gpus.clone());
                    }
                    match self.params.tamper {
                        Some(Tamper::OverCommit) => {
                            self.send_to_node(0, NodeInput::FromHead(msg));
                            return;
                        }
                        Some(Tamper::DuplicateDispatch) if self.hosts.len() > 1 => {
                            let other = (host + 1) % self.hosts.len();
                            self.send_to_node(other, NodeInput::FromHead(msg.clone()));
                        }
                        _ => {}
                    }
                }
                self.send_to_node(host, NodeInput::FromHead(msg));
            }
            HeadOutput::ToDriver { msg, .. } => {
                if !self.driver.gone {
                    self.send(Endpoint::Head, Endpoint::Driver, 0, Event::ToDriver(msg));
                }
            }
            // The dead node's daemon may still be running (a partition, a pause): the head's
            // answers, such as `Reregister`, still reach it until it registers again.
            HeadOutput::NodeDead(_) => {}
            HeadOutput::NodeDrained(_) => {}
            HeadOutput::Launch { request, node_type, count } => self.launch(request, &node_type, count),
            HeadOutput::Terminate { node } => {
                if let Some(instance) = self.by_node.get(&node).and_then(|&h| self.hosts[h].instance) {
                    self.stop_instance(instance, "terminated");
                }
            }
        }
    }

    // ---- the nodes ----

    fn register(&mut self, host: usize) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.conns.insert(conn, Endpoint::Host(host));
        let h = &mut self.hosts[host];
        h.conn = conn;
        let hello = Hello::RegisterNode {
            version: PROTOCOL_VERSION,
            resources: h.spec.resources.clone(),
            labels: h.spec.labels.clone(),
        };
        let epoch = h.epoch;
        self.send(
            Endpoint::Host(host),
            Endpoint::Head,
            0,
            Event::ToHead { from: Endpoint::Host(host), epoch, input: HeadInput::Connect { conn, hello } },
        );
    }

    fn deliver_node(&mut self, host: usize, input: NodeInput) {
        self.trace(|| format!("host {host} <- {input:?}"));
        self.log_node_input(host, &input);
        let local = self.now + self.hosts[host].clock_offset;
        if self.guard("node input", |w| {
            let _ = w.hosts[host].node.handle_input(local, input);
        }) {
            self.after_node_step(host);
        }
    }

    fn log_node_input(&mut self, host: usize, input: &NodeInput) {
        let h = host as u64;
        match input {
            // The commonest messages are logged by their identity (a spec is immutable once
            // submitted, so its task id stands for it); the rest by their bytes.
            NodeInput::FromHead(HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, after }) => {
                let ids = [h, spec.task.0, u64::from(*attempt), allocation.resources.cpu.0, args.len() as u64];
                self.log_ids(28, &ids);
                if let Some(w) = actor_worker {
                    self.log_ids(29, &[w.0]);
                }
                for (before, a) in after {
                    self.log_ids(34, &[before.0, u64::from(*a)]);
                }
            }
            NodeInput::FromHead(msg) => self.log_bytes(20, |b| {
                b.extend_from_slice(&h.to_le_bytes());
                postcard_into(b, msg)
            }),
            NodeInput::FromPeer { from, msg } => {
                let from = from.0;
                self.log_bytes(21, |b| {
                    b.extend_from_slice(&[h, from].map(u64::to_le_bytes).concat());
                    postcard_into(b, msg)
                })
            }
            NodeInput::Registered(id) => self.log_ids(22, &[h, id.0]),
            NodeInput::WorkerStarted { worker } => self.log_ids(23, &[h, worker.0]),
            NodeInput::WorkerExited { worker, .. } => self.log_ids(24, &[h, worker.0]),
            NodeInput::TaskDone { worker, task, attempt, .. } => {
                self.log_ids(25, &[h, worker.0, task.0, u64::from(*attempt)])
            }
            NodeInput::ObjectSealed { object, size } => {
                self.log_ids(26, &[h, object.task.0, u64::from(object.index), *size])
            }
            NodeInput::PullFailed { object, from } => {
                self.log_ids(30, &[h, object.task.0, u64::from(object.index), from.0])
            }
            NodeInput::SendEnded { object, to } => self.log_ids(31, &[h, object.task.0, u64::from(object.index), to.0]),
            // The rest (workers' messages, start failures) by their bytes.
            other => self.log_bytes(27, |b| {
                b.extend_from_slice(&h.to_le_bytes());
                postcard_into(b, other)
            }),
        }
    }

    fn after_node_step(&mut self, host: usize) {
        self.hosts[host].steps += 1;
        if self.params.check_every > 0 && self.hosts[host].steps % self.params.check_every == 0 {
            let node = &self.hosts[host].node;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| node.check_invariants())) {
                let detail = panic_text(&panic);
                self.obs.violate(Property::KernelInvariant, self.now, format!("node on host {host}: {detail}"));
            }
        }
        while let Some(output) = self.hosts[host].node.poll_output() {
            self.perform_node(host, output);
            if !self.hosts[host].up {
                break;
            }
        }
        // Evicted secondary copies are losses the node reports, not frees.
        // (Both lists keep their buffers from step to step.)
        if !self.deleted_in_step.is_empty() {
            let mut deleted = std::mem::take(&mut self.deleted_in_step);
            for object in &deleted {
                if !self.evicted_in_step.contains(object) {
                    self.check_early_free(*object);
                }
            }
            deleted.clear();
            self.deleted_in_step = deleted;
        }
        self.evicted_in_step.clear();
        if self.hosts[host].up {
            self.arm_node_timer(host);
        }
    }

    fn arm_node_timer(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        if let Some(local) = h.node.poll_timeout() {
            let t = Time(local.0.saturating_sub(h.clock_offset.0));
            if h.timer.is_none_or(|armed| t < armed) {
                h.timer = Some(t);
                let inc = h.inc;
                self.schedule(t, Event::NodeTimer { host, inc, at: t });
            }
        }
    }

    fn perform_node(&mut self, host: usize, output: NodeOutput) {
        self.trace(|| format!("host {host} -> {output:?}"));
        match output {
            NodeOutput::ToHead(msg) => {
                if let NodeToHead::ObjectRemoved(object) = &msg {
                    self.evicted_in_step.push(*object);
                }
                self.send_to_head(host, msg)
            }
            NodeOutput::ToPeer { node, msg } => {
                let Some(from) = self.hosts[host].id else { return };
                let Some(&peer) = self.by_node.get(&node) else { return };
                let (inc, up) = (self.hosts[peer].inc, self.hosts[peer].up);
                if up {
                    self.send(
                        Endpoint::Host(host),
                        Endpoint::Host(peer),
                        0,
                        Event::ToNode { host: peer, inc, epoch: None, input: NodeInput::FromPeer { from, msg } },
                    );
                }
            }
            NodeOutput::StartWorker { worker, .. } => {
                let delay = Duration(self.params.worker_start.0 + self.proc_rng.below(self.params.worker_start.0 + 1));
                self.local(host, delay, NodeInput::WorkerStarted { worker });
            }
            NodeOutput::Execute { worker, spec, attempt, args } => {
                let h = &mut self.hosts[host];
                let busy = h.workers.get(&worker).is_some_and(|w| w.task != TaskId(0));
                if busy || h.ahead.contains_key(&worker) {
                    h.ahead.entry(worker).or_default().push_back(((spec, attempt, args), false));
                } else {
                    self.execute(host, worker, spec, attempt, args);
                }
            }
            NodeOutput::InterruptTask { worker, task, attempt } => {
                // A worker skips an attempt it holds but has not started; a running one goes on.
                for ((spec, a, _), interrupted) in self.hosts[host].ahead.get_mut(&worker).into_iter().flatten() {
                    if spec.task == task && *a == attempt {
                        *interrupted = true;
                    }
                }
            }
            NodeOutput::WithdrawTask { worker, tasks } => {
                // Given back, all of them, if the first has not started; else they run on.
                let h = &mut self.hosts[host];
                if let Some(queue) = h.ahead.get_mut(&worker) {
                    if keel_kernel::node::withdraw_held(queue, &tasks, |((s, a, _), _)| (s.task, *a)) {
                        if queue.is_empty() {
                            h.ahead.remove(&worker);
                        }
                        self.local(host, Duration::ZERO, NodeInput::TaskWithdrawn { worker, tasks });
                    }
                }
            }
            NodeOutput::ToWorker { .. } => {}
            NodeOutput::KillWorker { worker } => {
                if self.params.timeline || self.params.record_runs {
                    self.close_span(host, self.hosts[host].inc, worker, "killed");
                }
                self.hosts[host].workers.remove(&worker);
                self.hosts[host].ahead.remove(&worker);
                self.local(host, Duration::ZERO, NodeInput::WorkerExited { worker, exit_code: None });
            }
            NodeOutput::SendObject { object, to, .. } => self.transfer(host, object, to),
            NodeOutput::DeleteObject(object) => {
                self.hosts[host].store.remove(&object);
                self.deleted_in_step.push(object);
            }
            NodeOutput::Reset => {
                let h = &mut self.hosts[host];
                // Reports still on their way to the old daemon's machine are for the old node.
                h.inc += 1;
                h.timer = None;
                h.store.clear();
                h.workers.clear();
                h.ahead.clear();
                h.reported_at.clear();
                if let Some(old) = h.id.take() {
                    self.by_node.remove(&old);
                }
                self.register(host);
            }
        }
    }

    fn transfer(&mut self, host: usize, object: ObjectId, to: NodeId) {
        let Some(from) = self.hosts[host].id else { return };
        let held = self.hosts[host].store.get(&object).copied();
        let Some(&peer) = self.by_node.get(&to) else {
            self.local(host, Duration::ZERO, NodeInput::SendEnded { object, to });
            return;
        };
        let size = held.map_or(0, |(s, _)| s);
        let inc = self.hosts[peer].inc;
        let p = &self.params.net;
        let took = Duration(p.latency.0 + size.saturating_mul(1_000_000_000) / p.bandwidth.max(1));
        match held {
            Some((size, digest)) => {
                // The bytes land when the transfer ends, if the peer is still the same daemon.
                self.counts.messages += 1;
                self.schedule(self.now + took, Event::BytesArrive { host: peer, inc, object, size, digest });
            }
            None => self.schedule(
                self.now + took,
                Event::ToNode { host: peer, inc, epoch: None, input: NodeInput::PullFailed { object, from } },
            ),
        }
        self.local(host, took, NodeInput::SendEnded { object, to });
    }

    /// A worker of incarnation `inc` that ended its attempt runs the next one handed to it ahead,
    /// if any.
    fn run_next(&mut self, host: usize, inc: u64, worker: WorkerId) {
        let h = &mut self.hosts[host];
        let idle = h.workers.get(&worker).is_none_or(|w| w.task == TaskId(0));
        if !h.up || h.inc != inc || !idle {
            return;
        }
        let Some(queue) = h.ahead.get_mut(&worker) else { return };
        let ((spec, attempt, args), interrupted) = queue.pop_front().expect("ahead queues are never kept empty");
        if queue.is_empty() {
            h.ahead.remove(&worker);
        }
        if interrupted {
            let task = spec.task;
            // A pool worker has no entry between tasks: it holds this one now, skipping it.
            let resources = ResourceSet::default();
            let idle = Work { task, resources, actor: None, sealed: Vec::new() };
            h.workers.entry(worker).or_insert(idle).task = task;
            let outcome = TaskOutcome::Failed(TaskFailure::Cancelled);
            let input = NodeInput::TaskDone { worker, task, attempt, outcome };
            self.schedule(self.now, Event::WorkerEnd { host, inc, worker, input });
        } else {
            self.execute(host, worker, spec, attempt, args);
        }
    }

    fn execute(&mut self, host: usize, worker: WorkerId, spec: Arc<TaskSpec>, attempt: u32, args: Vec<ExecArg>) {
        self.obs.on_execute(self.now, host, spec.task, attempt);
        if self.params.timeline {
            let name = format!("{} #{attempt} {}", spec.task, function_name(&spec.function));
            self.open_spans.insert((host, self.hosts[host].inc, worker), (self.now, name));
        }
        if self.params.record_runs {
            self.open_runs.insert((host, self.hosts[host].inc, worker), (spec.task, attempt, self.now));
        }
        let behaviour = Behaviour::parse(&spec.function);
        let inc = self.hosts[host].inc;
        // Argument digests, as the worker reads them.
        let mut digests = Vec::with_capacity(args.len());
        for (arg, exec) in spec.args.iter().zip(&args) {
            digests.push(match (arg, exec) {
                (Arg::Value { data, .. }, _) => digest_bytes(data),
                // An inline value is `content` made from its digest.
                (_, ExecArg::Inline(bytes)) => digest_of_content(bytes),
                (_, ExecArg::Local { object, .. }) => self.hosts[host].store.get(object).map_or(0, |(_, d)| *d),
                (_, ExecArg::Value) => 0,
            });
        }
        let actor = match spec.kind {
            TaskKind::ActorCreation(actor) => Some(actor),
            TaskKind::ActorMethod { actor, seq } => {
                self.obs.on_actor_call(self.now, (host, inc, worker), actor, seq);
                self.hosts[host].workers.get(&worker).and_then(|w| w.actor)
            }
            TaskKind::Normal => None,
        };
        let resources = match spec.kind {
            TaskKind::ActorMethod { .. } => {
                self.hosts[host].workers.get(&worker).map(|w| w.resources.clone()).unwrap_or_default()
            }
            _ => spec.resources.clone(),
        };
        self.hosts[host].workers.insert(worker, Work { task: spec.task, resources, actor, sealed: Vec::new() });
        self.check_load(host);
        if let Some(after) = self.hosts[host].hang_next.take() {
            self.schedule(
                self.now + after,
                Event::WorkerEnd { host, inc, worker, input: NodeInput::WorkerExited { worker, exit_code: Some(137) } },
            );
            return;
        }
        let jitter = if self.params.exact_durations { 0 } else { self.proc_rng.below(behaviour.duration.0 / 10 + 1) };
        let ends = self.now + Duration(behaviour.duration.0 + jitter);
        let mut sealed = Vec::new();
        let outcome = if behaviour.fail {
            TaskOutcome::Failed(TaskFailure::Application { message: "the task raised on purpose".into() })
        } else {
            // Children first: their refs go inside the value.
            let mut nested = Vec::new();
            for c in 0..behaviour.spawn {
                let child = TaskSpec::calling(
                    TaskId::child(spec.task, attempt, u64::from(c)),
                    spec.job,
                    self.function("ms=5;bytes=8"),
                );
                nested.push(ObjectId::for_return(child.task, 1));
                self.local(
                    host,
                    Duration::ZERO,
                    NodeInput::FromWorker { worker, msg: DriverToHead::SubmitTask(child.into()) },
                );
            }
            let inline_max = self.params.head.inline_max_bytes;
            let mut values = Vec::new();
            for (i, object) in spec.return_ids().enumerate() {
                let mut digest = mix64(digest_bytes(function_name(&spec.function).as_bytes()) ^ (i as u64 + 1));
                for d in &digests {
                    digest = mix64(digest ^ d);
                }
                if self.params.tamper == Some(Tamper::CorruptRebuild) && !self.tamper_spent && attempt > 0 {
                    self.tamper_spent = true;
                    digest ^= 1;
                }
                let size = behaviour.return_bytes;
                let value_nested = if i == 0 { nested.clone() } else { Vec::new() };
                let inline = (size <= inline_max).then(|| content(digest, size));
                values.push((object, size, digest, inline, value_nested));
            }
            for (object, size, digest, inline, nested) in &values {
                self.obs.on_value(self.now, *object, *size, *digest);
                if !nested.is_empty() {
                    self.nested_of.insert(*object, nested.clone());
                }
                if inline.is_none() {
                    sealed.push((*object, *size, *digest));
                }
            }
            TaskOutcome::Finished(
                values
                    .into_iter()
                    .map(|(object, size, _, inline, nested)| ReturnValue { object, size, inline, nested })
                    .collect(),
            )
        };
        if let Some(w) = self.hosts[host].workers.get_mut(&worker) {
            w.sealed = sealed;
        }
        self.schedule(
            ends,
            Event::WorkerEnd {
                host,
                inc,
                worker,
                input: NodeInput::TaskDone { worker, task: spec.task, attempt, outcome },
            },
        );
    }

    fn check_load(&mut self, host: usize) {
        let h = &self.hosts[host];
        let mut load = ResourceSet::default();
        for w in h.workers.values() {
            load.add(&w.resources);
        }
        let total = h.spec.resources.clone();
        self.obs.check_host_load(self.now, host, &total, &load);
    }

    fn check_early_free(&mut self, object: ObjectId) {
        if !self.driver.held.contains(&object) || self.driver.gone {
            return;
        }
        let anywhere = self.hosts.iter().any(|h| h.up && h.store.contains_key(&object));
        // The head may delete the copies of an object it is rebuilding (it declared the only
        // holder dead); an early free is the last copy deleted while the head calls it ready.
        if !anywhere && self.head.object_ready(object) {
            self.obs.violate(
                Property::NoEarlyFree,
                self.now,
                format!("{object} was deleted from every store while the driver still holds it"),
            );
        }
    }

    fn function(&mut self, name: &str) -> Function {
        if let Some(function) = self.functions.get(name) {
            return function.clone();
        }
        let function = Function::Named(name.into());
        self.functions.insert(name.to_string(), function.clone());
        function
    }

    fn close_span(&mut self, host: usize, inc: u64, worker: WorkerId, how: &'static str) {
        if let Some((start, name)) = self.open_spans.remove(&(host, inc, worker)) {
            self.timeline.push(Span { host, worker: Some(worker.0), name, start: start.0, end: self.now.0, how });
        }
        if let Some((task, attempt, start)) = self.open_runs.remove(&(host, inc, worker)) {
            let gpus = self.run_gpus.remove(&(task, attempt)).unwrap_or_default();
            self.runs.push(Run { task, attempt, host, start: start.0, end: self.now.0, how, gpus });
        }
    }

    // ---- faults ----

    fn inject(&mut self, fault: Fault) {
        if self.safety_over {
            return;
        }
        if fault.host().is_some_and(|h| h >= self.hosts.len()) {
            return;
        }
        self.counts.faults += 1;
        if self.params.timeline {
            let name = format!("{fault:?}");
            let host = fault.host().unwrap_or(usize::MAX);
            self.timeline.push(Span { host, worker: None, name, start: self.now.0, end: self.now.0, how: "fault" });
        }
        self.log_bytes(4, |b| b.extend_from_slice(format!("{fault:?}").as_bytes()));
        match fault {
            Fault::CrashNode { host, restart_ms } => {
                if !self.hosts[host].up {
                    return;
                }
                self.connection_closed(host);
                self.take_down(host);
                if let Some(ms) = restart_ms {
                    self.schedule(self.now + Duration(ms.saturating_mul(MS)), Event::Heal(Heal::Restart(host)));
                }
            }
            Fault::Partition { host, ms, inbound, outbound } => {
                // Healed by the end of the safety phase at the latest.
                let until = (self.now + Duration(ms.saturating_mul(MS))).min(Time(self.params.safety.0));
                let h = &mut self.hosts[host];
                if inbound {
                    h.cut_in_until = h.cut_in_until.max(until);
                }
                if outbound {
                    h.cut_out_until = h.cut_out_until.max(until);
                }
            }
            Fault::Clog { host, ms, extra_ms } => {
                self.hosts[host].clog = Duration(extra_ms.saturating_mul(MS));
                self.schedule(self.now + Duration(ms.saturating_mul(MS)), Event::Heal(Heal::Clog(host)));
            }
            Fault::Pause { host, ms } => {
                let until = (self.now + Duration(ms.saturating_mul(MS))).min(Time(self.params.safety.0));
                let h = &mut self.hosts[host];
                h.paused_until = h.paused_until.max(until);
            }
            Fault::Swizzle { ms } => {
                // Clog a random half of the hosts one by one, then unclog them in another order.
                let n = self.hosts.len();
                if n == 0 {
                    return;
                }
                let mut chosen: Vec<usize> = (0..n).filter(|_| self.unfold_rng.chance(0.5)).collect();
                if chosen.is_empty() {
                    chosen.push(self.unfold_rng.below(n as u64) as usize);
                }
                for i in (1..chosen.len()).rev() {
                    chosen.swap(i, self.unfold_rng.below(i as u64 + 1) as usize);
                }
                let span = ms.max(2);
                let step = span / 2 / chosen.len() as u64;
                for (i, &host) in chosen.iter().enumerate() {
                    let start = i as u64 * step;
                    let unclog = span / 2 + self.unfold_rng.below(span / 2);
                    let extra_ms = self.unfold_rng.between(5, 100);
                    let clog = Fault::Clog { host, ms: unclog.saturating_sub(start).max(1), extra_ms };
                    self.schedule(self.now + Duration(start.saturating_mul(MS)), Event::Fault(clog));
                }
            }
            Fault::CrashWorker { host } => {
                let h = &self.hosts[host];
                if !h.up {
                    return;
                }
                let busy = h.workers.iter().find(|(_, w)| w.task != TaskId(0)).map(|(id, _)| *id);
                if let Some(worker) = busy {
                    if self.params.timeline || self.params.record_runs {
                        self.close_span(host, self.hosts[host].inc, worker, "died");
                    }
                    self.hosts[host].workers.remove(&worker);
                    self.hosts[host].ahead.remove(&worker);
                    self.local(host, Duration::ZERO, NodeInput::WorkerExited { worker, exit_code: Some(137) });
                }
            }
            Fault::Hang { host, ms } => {
                let left = self.params.safety.0.saturating_sub(self.now.0);
                self.hosts[host].hang_next = Some(Duration(ms.saturating_mul(MS).min(left)));
            }
            Fault::Duplicate { p, ms } => {
                self.duplicate_p = p;
                self.schedule(self.now + Duration(ms.saturating_mul(MS)), Event::Heal(Heal::Duplicate));
            }
            Fault::Reorder { jitter_ms, ms } => {
                self.reorder_jitter = Some(Duration(jitter_ms.saturating_mul(MS)));
                self.schedule(self.now + Duration(ms.saturating_mul(MS)), Event::Heal(Heal::Reorder));
            }
            Fault::Disconnect { host } => {
                if !self.hosts[host].up {
                    return;
                }
                // Messages in flight on the connection are lost; the daemon starts over.
                self.connection_closed(host);
                self.hosts[host].epoch += 1;
                self.hosts[host].up = false;
                self.hosts[host].inc += 1;
                self.restart(host);
            }
            Fault::Preempt { node_type } => {
                let Some(p) = &self.provider else { return };
                let matches = |t: usize| node_type.as_ref().is_none_or(|n| *n == p.spec.node_types[t].name);
                let oldest =
                    p.instances.iter().position(|i| i.ended.is_none() && i.host.is_some() && matches(i.node_type));
                if let Some(instance) = oldest {
                    self.stop_instance(instance, "preempted");
                }
            }
            Fault::DriverExit => {
                if let Some(job) = self.driver.job.filter(|_| !self.driver.gone) {
                    self.driver.gone = true;
                    self.send(
                        Endpoint::Driver,
                        Endpoint::Head,
                        0,
                        Event::ToHead { from: Endpoint::Driver, epoch: 0, input: HeadInput::DriverDisconnected(job) },
                    );
                }
            }
        }
    }

    fn heal(&mut self, heal: Heal) {
        self.log_ids(5, &[]);
        match heal {
            Heal::Clog(host) => self.hosts[host].clog = Duration::ZERO,
            Heal::Duplicate => self.duplicate_p = 0.0,
            Heal::Reorder => self.reorder_jitter = None,
            Heal::Restart(host) => {
                if !self.hosts[host].up && !self.hosts[host].gone {
                    self.restart(host);
                }
            }
        }
    }

    /// The host's daemon crashed or its connection broke: the head's end sees the connection
    /// close once what was sent before it has arrived (TCP delivers the close in order, and holds
    /// it back across a partition like any segment). A host cut off without a close (a machine
    /// that vanished) is noticed only by its deadline.
    fn connection_closed(&mut self, host: usize) {
        let Some(node) = self.hosts[host].id else { return };
        // From the head's own end of the connection: no epoch of the host's applies.
        let event = Event::ToHead { from: Endpoint::Head, epoch: 0, input: HeadInput::NodeDisconnected(node) };
        self.send(Endpoint::Host(host), Endpoint::Head, 0, event);
    }

    /// The host's machine stops: its workers and stored bytes are lost.
    fn take_down(&mut self, host: usize) {
        if self.params.record_runs {
            // The host's running attempts end with it.
            let inc = self.hosts[host].inc;
            let mut gone: Vec<_> = self.open_runs.keys().filter(|(h, i, _)| *h == host && *i == inc).copied().collect();
            gone.sort_unstable();
            for (h, i, worker) in gone {
                self.close_span(h, i, worker, "lost");
            }
        }
        let h = &mut self.hosts[host];
        h.up = false;
        h.inc += 1;
        h.store.clear();
        h.workers.clear();
        h.ahead.clear();
        h.reported_at.clear();
        h.timer = None;
    }

    // ---- the provider ----

    /// The head asks for `count` nodes of a type: the request fails as a whole, or each node
    /// boots after its own delay.
    fn launch(&mut self, request: u64, node_type: &str, count: u32) {
        let Some(p) = &mut self.provider else { return };
        p.requests += 1;
        let Some(t) = p.spec.node_types.iter().position(|ty| ty.name == node_type) else {
            p.failed_requests += 1;
            let reason = format!("no node type `{node_type}`");
            self.schedule(self.now, Event::LaunchFailed { request, reason });
            return;
        };
        let ty = p.spec.node_types[t].clone();
        let stopped = p.stopped_while_wanted[t];
        self.log_ids(20, &[request, t as u64, u64::from(count)]);
        if self.provider_rng.chance(ty.launch_fail_p) {
            self.provider.as_mut().expect("checked").failed_requests += 1;
            // The cloud's API answers within the shortest boot time.
            let after = crate::autoscale::seconds(ty.launch_min_s * self.provider_rng.unit());
            let reason = format!("{node_type}: the cloud has no capacity for {count} nodes");
            self.schedule(self.now + after, Event::LaunchFailed { request, reason });
            return;
        }
        let config = self.params.head.autoscaler.as_ref().expect("set with the provider");
        let (limit, window) = (config.limits.max_workers, config.idle_timeout);
        // Launched again for work that waited when one of its nodes was stopped: flapping.
        if let Some(stopped) = stopped.filter(|s| self.now.saturating_since(*s) < window) {
            let detail = format!(
                "a node of type {node_type} was stopped at {} ms while waiting work could use it, and {count} more were launched {} ms later",
                stopped.0 / MS,
                self.now.saturating_since(stopped).0 / MS
            );
            self.obs.violate(Property::NoFlapping, self.now, detail);
        }
        let extra = u32::from(self.params.tamper == Some(Tamper::OverLaunch));
        for _ in 0..count + extra {
            let delay = ty.launch_delay(self.provider_rng.unit());
            let p = self.provider.as_mut().expect("checked");
            let instance = p.instances.len();
            p.instances.push(crate::provider::Instance {
                node_type: t,
                request,
                launched: self.now,
                host: None,
                ended: None,
            });
            self.schedule(self.now + delay, Event::Boot { instance });
        }
        let p = self.provider.as_mut().expect("checked");
        p.note(self.now);
        let (of_type, total) = (p.live(Some(t)), p.live(None));
        self.obs.on_launch(self.now, node_type, (of_type, ty.max_workers), (total, limit));
        if self.params.timeline {
            let name = format!("launch {count} x {node_type} (request {request})");
            let (start, end) = (self.now.0, self.now.0);
            self.timeline.push(Span { host: usize::MAX, worker: None, name, start, end, how: "fault" });
        }
    }

    /// An instance has booted: a new host, with the type's resources and the launch's labels.
    fn boot(&mut self, instance: usize) {
        let Some(p) = &mut self.provider else { return };
        let inst = &p.instances[instance];
        if inst.ended.is_some() {
            return;
        }
        let ty = &p.spec.node_types[inst.node_type];
        let kernel_type =
            &self.params.head.autoscaler.as_ref().expect("set with the provider").node_types[inst.node_type];
        let mut labels = keel_kernel::autoscaler::labels_of(kernel_type);
        let request = inst.request;
        labels.insert(keel_kernel::autoscaler::LAUNCH_LABEL.to_string(), request.to_string());
        labels.insert(keel_kernel::autoscaler::INSTANCE_LABEL.to_string(), format!("i-{instance}"));
        let spec = HostSpec { resources: ty.resources(), labels };
        let lifetime = ty.preempt_mean_s.map(|mean| -mean * (1.0 - self.provider_rng.unit()).ln());
        let host = self.hosts.len();
        let mut h = Host::new(&self.params, host, spec);
        h.clock_offset = Duration(self.provider_rng.below(50) * MS);
        h.instance = Some(instance);
        self.hosts.push(h);
        let p = self.provider.as_mut().expect("checked");
        p.instances[instance].host = Some(host);
        p.note(self.now);
        self.log_ids(21, &[instance as u64, host as u64]);
        if let Some(s) = lifetime {
            self.schedule(self.now + crate::autoscale::seconds(s), Event::Reclaim { instance });
        }
        if self.params.tamper == Some(Tamper::StopWanted) && !self.tamper_spent {
            self.tamper_spent = true;
            self.schedule(self.now + Duration::from_millis(50), Event::TamperStop { instance });
        }
        self.register(host);
    }

    /// An instance stops (`terminated` by the autoscaler, or `preempted` by the cloud).
    fn stop_instance(&mut self, instance: usize, how: &'static str) {
        let now = self.now;
        let Some(p) = &mut self.provider else { return };
        let inst = &mut p.instances[instance];
        if inst.ended.is_some() {
            return;
        }
        inst.ended = Some((now, how));
        let (t, host) = (inst.node_type, inst.host);
        p.note(now);
        self.log_ids(22, &[instance as u64, u64::from(how == "preempted")]);
        if how == "terminated" && self.work_waits_for(t) {
            self.provider.as_mut().expect("checked").stopped_while_wanted[t] = Some(now);
        }
        if let Some(host) = host {
            if self.params.timeline {
                let name = format!("{how} (instance {instance})");
                self.timeline.push(Span { host, worker: None, name, start: now.0, end: now.0, how: "fault" });
            }
            self.hosts[host].gone = true;
            if self.hosts[host].up {
                self.take_down(host);
            }
        }
    }

    /// Whether work waits that an empty node of type `t` could run: a queued task, or an
    /// unplaced bundle of a group the driver made.
    fn work_waits_for(&self, t: usize) -> bool {
        let Some(config) = &self.params.head.autoscaler else { return false };
        let ty = &config.node_types[t];
        let pool = keel_kernel::resources::ResourcePool::new(ty.resources.clone());
        let labels = keel_kernel::autoscaler::labels_of(ty);
        let waiting = self.head.waiting_shapes();
        if waiting.iter().any(|(shape, on, _)| pool.could_ever_fit(shape) && on.iter().all(|c| c.matches(&labels))) {
            return true;
        }
        self.driver.groups.iter().any(|&pg| {
            let Some(nodes) = self.head.placement_group_nodes(pg) else { return false };
            let g = &self.params.workload.groups[pg.0 as usize - 1];
            let bundle = g.bundle.clone().unwrap_or_else(|| cpu_hundredths(g.cpu_hundredths));
            nodes.iter().any(Option::is_none) && pool.could_ever_fit(&bundle)
        })
    }

    /// A host comes back with a fresh daemon, registering as a new node.
    fn restart(&mut self, host: usize) {
        let mut config = self.params.node.clone();
        let h = &mut self.hosts[host];
        config.seed = mix64(crate::rng::stream_seed(self.params.seed, Stream::Nodes) ^ host as u64 ^ (h.inc << 32));
        h.up = true;
        h.inc += 1;
        h.node = Node::new(config);
        h.store.clear();
        h.workers.clear();
        h.ahead.clear();
        h.reported_at.clear();
        h.timer = None;
        if let Some(old) = h.id.take() {
            self.by_node.remove(&old);
        }
        self.register(host);
    }

    // ---- the driver ----

    fn connect_driver(&mut self) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.conns.insert(conn, Endpoint::Driver);
        self.send(
            Endpoint::Driver,
            Endpoint::Head,
            0,
            Event::ToHead {
                from: Endpoint::Driver,
                epoch: 0,
                input: HeadInput::Connect {
                    conn,
                    hello: Hello::RegisterJob { version: PROTOCOL_VERSION, name: "sim".into() },
                },
            },
        );
    }

    fn wake_driver(&mut self, at: Time) {
        if self.driver.wake.is_none_or(|w| at < w) {
            self.driver.wake = Some(at);
            self.schedule(at, Event::DriverWake);
        }
    }

    fn driver_send(&mut self, msg: DriverToHead) {
        let Some(job) = self.driver.job else { return };
        if self.driver.gone {
            return;
        }
        self.send(
            Endpoint::Driver,
            Endpoint::Head,
            0,
            Event::ToHead { from: Endpoint::Driver, epoch: 0, input: HeadInput::FromDriver { job, msg } },
        );
    }

    /// Submits whatever the plan has due by now, in plan order.
    fn driver_step(&mut self) {
        let Some(job) = self.driver.job else { return };
        if self.driver.gone {
            return;
        }
        let elapsed_ms = self.now.saturating_since(self.driver.started).0 / MS;
        let plan = std::mem::take(&mut self.params.workload);
        if self.driver.consumers_left.is_empty() && !plan.tasks.is_empty() {
            let mut left = vec![0u32; plan.tasks.len()];
            for t in &plan.tasks {
                for &(d, _) in &t.deps {
                    left[d] += 1;
                }
            }
            self.driver.consumers_left = left;
            self.driver.actor_calls = vec![0; plan.actors.len()];
            self.driver.gate_tasks = plan.groups.iter().filter_map(|g| g.after).collect();
        }
        while let Some(a) = plan.actors.get(self.driver.next_actor).filter(|a| a.at_ms <= elapsed_ms) {
            let i = self.driver.next_actor;
            let actor = ActorId(i as u64 + 1);
            let task = TaskId::child(TaskId::driver(job), 0, (1 << 40) + i as u64);
            let mut creation = TaskSpec::calling(task, job, self.function("ms=1;bytes=8"));
            creation.kind = TaskKind::ActorCreation(actor);
            creation.resources = cpu_hundredths(a.cpu_hundredths);
            let options = ActorOptions {
                max_restarts: a.max_restarts,
                max_task_retries: a.max_task_retries,
                ..ActorOptions::default()
            };
            // The creation's own return value is not awaited: drop the handle at once.
            let returned: Vec<ObjectId> = creation.return_ids().collect();
            self.driver_send(DriverToHead::CreateActor { options, creation: creation.into() });
            for o in returned {
                self.driver_send(DriverToHead::RemoveRef(o));
            }
            self.driver.actors.push(actor);
            self.driver.next_actor += 1;
        }
        if self.driver.made.len() != plan.groups.len() {
            self.driver.made = vec![false; plan.groups.len()];
        }
        while plan.groups.get(self.driver.next_group).is_some_and(|g| g.at_ms <= elapsed_ms) {
            self.driver.due_groups.insert(self.driver.next_group);
            self.driver.next_group += 1;
        }
        let startable: Vec<usize> = self
            .driver
            .due_groups
            .iter()
            .copied()
            .filter(|&g| plan.groups[g].after.is_none_or(|t| self.driver.gates_ended.contains(&t)))
            .collect();
        for group in startable {
            let g = &plan.groups[group];
            let pg = PlacementGroupId(group as u64 + 1);
            let spec = PlacementGroupSpec {
                bundles: (0..g.bundles)
                    .map(|_| g.bundle.clone().unwrap_or_else(|| cpu_hundredths(g.cpu_hundredths)))
                    .collect(),
                strategy: g.strategy,
                name: None,
                detached: false,
            };
            self.driver_send(DriverToHead::CreatePlacementGroup { pg, spec });
            self.driver.groups.push(pg);
            self.driver.due_groups.remove(&group);
            self.driver.made[group] = true;
        }
        // Tasks held back whose group now exists go first, in plan order (a task's dependencies
        // come before it, so one pass frees chains).
        for i in self.driver.deferred.clone() {
            if !self.held_back(&plan, i) {
                self.driver.deferred.remove(&i);
                self.driver_submit(&plan, i, job);
            }
        }
        while plan.tasks.get(self.driver.next_task).is_some_and(|t| t.at_ms <= elapsed_ms) {
            let i = self.driver.next_task;
            self.driver.next_task += 1;
            if self.held_back(&plan, i) {
                self.driver.deferred.insert(i);
            } else {
                self.driver_submit(&plan, i, job);
            }
        }
        let next_at = [
            plan.tasks.get(self.driver.next_task).map(|t| t.at_ms),
            plan.actors.get(self.driver.next_actor).map(|a| a.at_ms),
            plan.groups.get(self.driver.next_group).map(|g| g.at_ms),
        ]
        .into_iter()
        .flatten()
        .min();
        self.params.workload = plan;
        if let Some(ms) = next_at {
            let at = self.driver.started + Duration(ms.saturating_mul(MS));
            self.wake_driver(at.max(self.now + Duration(MS)));
        }
        self.driver_maybe_release();
    }

    /// Whether planned task `i` must wait: its group is not created yet, or it takes the value of
    /// a task held back.
    fn held_back(&self, plan: &Workload, i: usize) -> bool {
        let t = &plan.tasks[i];
        let group_missing = matches!(t.placement, Placement::Group { group, .. } if !self.driver.made[group]);
        group_missing || t.deps.iter().any(|(d, _)| self.driver.deferred.contains(d))
    }

    /// Submits planned task `i`.
    fn driver_submit(&mut self, plan: &Workload, i: usize, job: JobId) {
        let id = planned_task(job, i);
        let t = &plan.tasks[i];
        let function = match self.plan_functions.get(&t.behaviour()) {
            Some(f) => f.clone(),
            None => {
                let f = self.function(&t.function());
                self.plan_functions.insert(t.behaviour(), f.clone());
                f
            }
        };
        let mut spec = TaskSpec::calling(id, job, function);
        spec.num_returns = t.returns;
        spec.max_retries = t.retries;
        spec.resources = t.resources.clone().unwrap_or_else(|| cpu_hundredths(t.cpu_hundredths));
        spec.label_selector = t.labels.clone();
        spec.args = t.deps.iter().map(|&(d, r)| Arg::Ref(ObjectId::for_return(planned_task(job, d), r))).collect();
        spec.strategy = match t.placement {
            Placement::Default => SchedulingStrategy::Default,
            Placement::Spread => SchedulingStrategy::Spread,
            Placement::Group { group, bundle } => {
                SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(group as u64 + 1), bundle: Some(bundle) }
            }
        };
        if let Some(a) = t.actor {
            let seq = self.driver.actor_calls[a];
            self.driver.actor_calls[a] += 1;
            spec.kind = TaskKind::ActorMethod { actor: ActorId(a as u64 + 1), seq };
            spec.resources = ResourceSet::default();
        }
        if let Placement::Group { group, .. } = t.placement {
            if plan.groups.get(group).is_some_and(|g| g.release_when_done) {
                if self.driver.group_left.len() <= group {
                    self.driver.group_left.resize(group + 1, 0);
                }
                self.driver.group_left[group] += 1;
                self.driver.group_of.insert(id, group);
            }
        }
        let returns: Vec<ObjectId> = spec.return_ids().collect();
        self.driver_send(DriverToHead::SubmitTask(spec.into()));
        self.driver.held.extend(returns.iter().copied());
        if self.driver.gate_tasks.contains(&i) {
            self.driver.gates.insert(returns[0], i);
            if !t.final_output {
                self.driver_send(DriverToHead::Subscribe(vec![returns[0]]));
            }
        }
        if t.final_output && self.params.progress.is_some() {
            self.awaited_index.insert(id, i as u32);
        }
        if t.final_output {
            for &o in &returns {
                self.driver.awaited.insert(o, None);
            }
            self.driver_send(DriverToHead::Subscribe(returns.clone()));
        }
        // A dependency whose consumers are all submitted is dropped, unless awaited.
        for &(d, _) in &t.deps {
            self.driver.consumers_left[d] -= 1;
            if self.driver.consumers_left[d] == 0 && !plan.tasks[d].final_output {
                self.drop_returns_of(d, plan.tasks[d].returns);
            }
        }
        if !t.final_output && self.driver.consumers_left[i] == 0 {
            self.drop_returns_of(i, t.returns);
        }
    }

    fn drop_returns_of(&mut self, task: usize, returns: u32) {
        if self.driver.gate_tasks.contains(&task) && !self.driver.gates_ended.contains(&task) {
            return; // dropped once it has ended (see `gate_ended`)
        }
        let id = planned_task(self.driver.job.expect("registered"), task);
        for r in 1..=returns {
            let o = ObjectId::for_return(id, r);
            if self.driver.held.remove(&o) {
                self.driver_send(DriverToHead::RemoveRef(o));
            }
        }
    }

    /// A task that groups wait for has ended: create them, submit what waited, and drop its
    /// values if nothing else wants them.
    fn gate_ended(&mut self, object: ObjectId) {
        let Some(task) = self.driver.gates.remove(&object) else { return };
        self.driver.gates_ended.insert(task);
        let w = &self.params.workload;
        let (returns, final_output) = (w.tasks[task].returns, w.tasks[task].final_output);
        if !final_output && self.driver.consumers_left.get(task) == Some(&0) {
            self.drop_returns_of(task, returns);
        }
        self.driver_step();
    }

    fn all_submitted(&self) -> bool {
        let w = &self.params.workload;
        self.driver.job.is_some()
            && self.driver.next_task >= w.tasks.len()
            && self.driver.next_actor >= w.actors.len()
            && self.driver.next_group >= w.groups.len()
            && self.driver.due_groups.is_empty()
            && self.driver.deferred.is_empty()
    }

    fn deliver_driver(&mut self, msg: HeadToDriver) {
        if self.driver.gone {
            return;
        }
        match &msg {
            // The commonest message by identity: an inline value is fully determined by its
            // length and its first eight bytes (its digest; see `content`).
            HeadToDriver::ObjectReady { object, size, data } => {
                let mut ids: SmallVec<[u64; 16]> = smallvec![object.task.0, u64::from(object.index), *size];
                match data {
                    ObjectData::Inline(bytes) => ids.extend([bytes.len() as u64, digest_of_content(bytes)]),
                    ObjectData::At(nodes) => ids.extend(nodes.iter().map(|n| n.0 | 1 << 63)),
                }
                self.log_ids(32, &ids);
            }
            other => self.log_bytes(33, |b| postcard_into(b, other)),
        }
        match &msg {
            HeadToDriver::ObjectReady { object, .. } | HeadToDriver::ObjectFailed { object, .. } => {
                self.gate_ended(*object);
            }
            _ => {}
        }
        match msg {
            HeadToDriver::ObjectReady { object, data, .. } => {
                if !matches!(self.driver.awaited.get(&object), Some(None)) {
                    return;
                }
                let digest = match &data {
                    ObjectData::Inline(bytes) => Some(digest_of_content(bytes)),
                    ObjectData::At(nodes) => nodes
                        .iter()
                        .filter_map(|n| self.by_node.get(n))
                        .filter(|h| self.hosts[**h].up)
                        .find_map(|h| self.hosts[*h].store.get(&object).map(|(_, d)| *d)),
                };
                match digest {
                    Some(d) => {
                        if let ObjectData::Inline(bytes) = &data {
                            if bytes.len() >= 8 {
                                self.obs.on_read(self.now, object, d);
                            }
                        } else {
                            self.obs.on_read(self.now, object, d);
                        }
                        self.driver.awaited.insert(object, Some(Resolution::Ready(d)));
                        self.counts.ready += 1;
                        self.note_resolved(object.task);
                        self.task_ended_in_group(object.task);
                        self.tamper_free_early(object);
                        // A spawning task's value holds its children's refs: await them too.
                        let children: Vec<ObjectId> = self
                            .nested_of
                            .get(&object)
                            .into_iter()
                            .flatten()
                            .filter(|c| !self.driver.nested.contains(c))
                            .copied()
                            .collect();
                        if !children.is_empty() {
                            for c in &children {
                                self.driver.nested.insert(*c);
                                self.driver.awaited.insert(*c, None);
                            }
                            self.driver_send(DriverToHead::Subscribe(children));
                        }
                    }
                    None => {
                        // Every listed copy is gone: ask again (the head rebuilds or fails it).
                        self.driver.refetches += 1;
                        self.driver_send(DriverToHead::Subscribe(vec![object]));
                    }
                }
            }
            HeadToDriver::ObjectFailed { object, reason } => {
                if matches!(self.driver.awaited.get(&object), Some(None)) {
                    self.driver.awaited.insert(object, Some(Resolution::Failed(reason)));
                    self.counts.failed += 1;
                    self.note_resolved(object.task);
                    self.task_ended_in_group(object.task);
                }
            }
            HeadToDriver::PlacementGroupReady { pg, nodes } => {
                let group = pg.0 as usize - 1;
                if let Some(g) = self.params.workload.groups.get(group) {
                    let (bundles, strategy) = (g.bundles as usize, g.strategy);
                    self.obs.on_group_ready(self.now, group, bundles, strategy, &nodes);
                }
            }
            _ => {}
        }
        self.driver_maybe_release();
    }

    /// A task placed in a group released when done has ended: the last one removes the group.
    fn task_ended_in_group(&mut self, task: TaskId) {
        let Some(group) = self.driver.group_of.remove(&task) else { return };
        self.driver.group_left[group] -= 1;
        if self.driver.group_left[group] == 0 {
            let pg = PlacementGroupId(group as u64 + 1);
            self.driver.groups.retain(|g| *g != pg);
            self.driver_send(DriverToHead::RemovePlacementGroup(pg));
        }
    }

    fn tamper_free_early(&mut self, object: ObjectId) {
        if self.params.tamper != Some(Tamper::FreeEarly) || self.tamper_spent {
            return;
        }
        self.tamper_spent = true;
        for host in 0..self.hosts.len() {
            if self.hosts[host].id.is_some() {
                self.send_to_node(host, NodeInput::FromHead(HeadToNode::FreeObjects(vec![object])));
            }
        }
        self.driver.awaited.insert(object, None);
        self.driver_send(DriverToHead::Subscribe(vec![object]));
    }

    /// Once everything is submitted and every awaited value resolved, the driver drops all it
    /// holds (after the safety phase, so that faults find work to hit).
    fn driver_maybe_release(&mut self) {
        if self.driver.released || self.driver.gone || !self.safety_over || !self.all_submitted() {
            return;
        }
        if self.driver.awaited.values().any(|r| r.is_none()) {
            return;
        }
        self.driver.released = true;
        let held: Vec<ObjectId> = std::mem::take(&mut self.driver.held).into_iter().collect();
        for o in held {
            self.driver_send(DriverToHead::RemoveRef(o));
        }
        for pg in self.driver.groups.clone() {
            self.driver_send(DriverToHead::RemovePlacementGroup(pg));
        }
        for actor in self.driver.actors.clone() {
            self.driver_send(DriverToHead::KillActor { actor, no_restart: true });
        }
    }
}

impl World {
    fn report_progress(&mut self) {
        if let Some(p) = &self.params.progress {
            (p.0)(self.now.0 / MS, self.counts.events, &self.resolved_since);
            self.resolved_since.clear();
        }
    }

    /// An awaited value resolved: note its planned task for the next progress report.
    fn note_resolved(&mut self, task: TaskId) {
        if let Some(&i) = self.awaited_index.get(&task) {
            self.resolved_since.push(i);
        }
    }
}

/// The id of planned task `i` of the driver of `job`.
fn planned_task(job: JobId, i: usize) -> TaskId {
    TaskId::child(TaskId::driver(job), 0, i as u64)
}

/// What a task's function name tells the simulated worker.
struct Behaviour {
    duration: Duration,
    return_bytes: u64,
    fail: bool,
    spawn: u32,
}

impl Behaviour {
    fn parse(function: &Function) -> Behaviour {
        let mut b = Behaviour { duration: Duration::from_millis(1), return_bytes: 8, fail: false, spawn: 0 };
        for part in function_name(function).split(';') {
            match part.split_once('=') {
                Some(("ms", v)) => b.duration = Duration::from_millis(v.parse().unwrap_or(1)),
                Some(("bytes", v)) => b.return_bytes = v.parse().unwrap_or(8),
                Some(("spawn", v)) => b.spawn = v.parse().unwrap_or(0).min(64),
                _ if part == "fail" => b.fail = true,
                _ => {}
            }
        }
        b
    }
}

/// A directed link as one number: each endpoint in 32 bits.
fn link_key(from: Endpoint, to: Endpoint) -> u64 {
    let code = |end: Endpoint| match end {
        Endpoint::Head => 0,
        Endpoint::Driver => 1,
        Endpoint::Host(h) => h as u64 + 2,
    };
    (code(from) << 32) | code(to)
}

fn function_name(function: &Function) -> &str {
    match function {
        Function::Named(name) => name,
        Function::Command(argv) => argv.first().map_or("", String::as_str),
    }
}

fn cpu_hundredths(h: u64) -> ResourceSet {
    ResourceSet { cpu: Amount(h * (Amount::SCALE / 100)), ..ResourceSet::default() }
}

fn digest_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    mix64(h ^ bytes.len() as u64)
}

/// The bytes of an inline value: its digest, then filler derived from it (a Weyl sequence: the
/// value is fully determined by its length and first eight bytes).
fn content(digest: u64, size: u64) -> Vec<u8> {
    const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = vec![0u8; size as usize];
    let mut x = digest;
    let mut words = out.chunks_exact_mut(8);
    for word in &mut words {
        word.copy_from_slice(&x.to_le_bytes());
        x = x.wrapping_add(STEP);
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&x.to_le_bytes()[..n]);
    out
}

/// The digest an inline value was made from (its first 8 bytes; shorter values hash whole).
fn digest_of_content(bytes: &[u8]) -> u64 {
    if bytes.len() >= 8 {
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
    } else {
        digest_bytes(bytes)
    }
}

fn message_size(msg: &NodeToHead) -> u64 {
    match msg {
        NodeToHead::TaskEnded { outcome: TaskOutcome::Finished(values), .. } => {
            values.iter().map(|v| v.inline.as_ref().map_or(0, |b| b.len() as u64)).sum()
        }
        _ => 0,
    }
}

fn postcard_into<T: serde::Serialize>(buf: &mut Vec<u8>, value: &T) {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(value, taken).expect("messages serialise");
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic with no message".into())
}

/// The kind of a failure reason (its variant name), for summaries and expectations.
pub fn reason_kind(reason: &keel_kernel::ErrorReason) -> String {
    let text = format!("{reason:?}");
    text.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("").to_string()
}
