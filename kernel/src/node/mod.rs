//! The Node machine: the pure decision core of one node daemon.
//!
//! The head decides placement and allocates resources; the node carries out its orders. It leases
//! worker processes, keeps the table of objects sealed in its store, pulls task arguments from peers,
//! runs tasks through their lifecycle, serves peers' pulls and sends heartbeats. The host performs
//! its outputs (sends messages, starts and kills processes, moves object bytes) and reports what
//! happened as inputs.
//!
//! # Driving it
//!
//! [`Node`] sorts its methods like quinn-proto's `Connection`: `handle_*` take inputs, `poll_*`
//! give outputs and the next wake-up, then getters, then [`Node::check_invariants`].
//!
//! ```
//! use keel_kernel::node::{Node, NodeConfig, NodeInput};
//! use keel_kernel::{NodeId, Time};
//! let mut node = Node::new(NodeConfig::default());
//! let now = Time::ZERO;
//! node.handle_input(now, NodeInput::Registered(NodeId(1))).unwrap();
//! // 1. drain every output after each handle_input or handle_timeout, in order:
//! while let Some(output) = node.poll_output() {
//!     let _ = output; // the host performs it
//! }
//! // 2. then ask when to wake up; call handle_timeout once the clock reaches it, and drain again.
//! let wake = node.poll_timeout().expect("a registered node always has a heartbeat deadline");
//! node.handle_timeout(wake);
//! assert!(node.poll_output().is_some()); // the heartbeat
//! ```
//!
//! `now` must never go backwards. An input the node refuses returns an [`InputError`] and changes
//! nothing (no state, no output); it never panics. Kernel bugs panic.
//!
//! # Decisions
//!
//! - **Worker leases** (`workers`): a task whose by-reference arguments are all local runs in an idle
//!   pool worker of its job that sees exactly the GPU devices of its allocation (the most recently
//!   idle one), or in a new worker the host is asked to start (ids allocated here, increasing). An
//!   actor creation task gets a new dedicated worker that stays with the actor; its methods
//!   (`actor_worker: Some(w)`) run there one at a time in arrival order. Idle pool workers beyond
//!   `max_idle_workers` are killed, oldest idle first.
//! - **Local objects** (`store`): sizes, primary copies (task returns and puts made here: never
//!   evicted, only freed by the head) and secondary copies (pulled here), pins held by tasks on their
//!   arguments and by transfers to peers, and eviction of unpinned secondary copies, least recently
//!   used first, when a new object would not fit (each one reported as
//!   [`NodeToHead::ObjectRemoved`]). `FreeObjects` deletes, deferred until unpinned.
//! - **Pulls** (`pulls`): see below.
//! - **Task lifecycle** (`tasks`, `lifecycle`): `TaskStarted` when an attempt is handed to a worker,
//!   `TaskEnded` when it ends (finished, failed, worker died, cancelled), always with the head's
//!   attempt number.
//! - **Actor pipelining**: while an actor's worker runs a method, up to `actor_pipeline - 1` of
//!   the next methods whose arguments are local are handed to it ahead (`SentAhead`); it runs them
//!   in order, so a call does not wait for the node between two methods. Each becomes `Running`
//!   (with its `TaskStarted`) when the one before it ends. If the worker dies, they end as
//!   `WorkerDied` like the methods still queued; a cancel reaches them as an interrupt, which the
//!   worker honours by skipping a method it has not started.
//! - **Successors**: a `RunTask` may name a running task and the successors handed over before it
//!   (`after`): the head handed it over early, to run after them in the resources the running one
//!   holds. It waits (`After`) for the last of them still held here while its arguments arrive,
//!   then goes to that one's worker ahead (`SentAhead`, behind it) when that is a pool worker of
//!   its job and devices, so the worker goes from one task to the next without a round trip. A
//!   chain member that ends without running gives its place to the one behind it. When the
//!   running one blocks, the head's `StartNow` takes the first successor back from the worker
//!   with those behind it (all or none: `WithdrawTask`), and they follow it on its own worker.
//!   When the predecessor ends any other way (its worker dies or is killed), a successor still
//!   waiting is leased a worker as a new task would be (it has not started, so nothing is lost);
//!   those its worker held may have started, and end as `WorkerDied` with it (as
//!   `WorkerKilledForCancel` when the worker was killed to cancel a task by force: the head runs
//!   them again without spending their retries).
//! - **Heartbeats**: every `heartbeat_period` from registration, on their own timer that no other
//!   input moves.
//! - **Drain**: running tasks and hosted actors go on; a `RunTask` for anything but a method of an
//!   actor hosted here is answered at once with `TaskEnded { Failed(WorkerStartFailed) }`, a system
//!   failure the head retries elsewhere; idle pool workers are killed; once no task is left and no
//!   actor is hosted, the node sends [`NodeToHead::Leaving`] once.
//! - **Reregister**: the head declared this node dead. The node outputs [`NodeOutput::Reset`] (the
//!   host kills every worker, deletes every local object and registers again), forgets everything
//!   and waits for a new `Registered`. Worker ids keep increasing so late reports about old workers
//!   are refused as unknown.
//!
//! # The pull protocol
//!
//! The control path goes through the node machines, the data path through the hosts:
//!
//! 1. The puller sends [`NodeToNode::Pull`] to the first holder the head listed (skipping itself)
//!    and arms a `pull_timeout` deadline. Several tasks needing the same object share one pull.
//! 2. The holder's machine answers from its table: `PullReply { size: Some(size) }` plus
//!    [`NodeOutput::SendObject`] (its host streams the bytes; the copy stays pinned until
//!    `SendEnded`), or `PullReply { size: None }` when it has no copy (or the copy was freed).
//! 3. The puller's host seals the bytes and reports `ObjectSealed`; the copy is secondary and is
//!    reported to the head as [`NodeToHead::ObjectAdded`]. A positive reply restarts the deadline;
//!    a negative reply, `PullFailed` from the current holder or the deadline moves on to the next
//!    holder, going round the list up to `pull_max_attempts` times; then every waiting task fails
//!    with [`TaskFailure::ArgumentUnavailable`]. Replies and failures from a holder that is no
//!    longer the current one are ignored. Bytes sealed when no pull wants them (the tasks were
//!    cancelled meanwhile) are deleted at once.
//!
//! Going through the holder's machine (rather than having the puller's host fetch the bytes on its
//! own) lets the holder refuse a copy it no longer has or that was freed, and pin the copy for the
//! length of the transfer so that eviction cannot delete it mid-send; in the simulator, both control
//! messages cross the simulated network like any other. Objects put by a local worker are not
//! pulled: they are recorded as primary copies from the worker's own `Put` message.
//!
//! # Modules
//!
//! - `io`: [`NodeInput`], [`NodeOutput`] and the views the getters return.
//! - `store`: the local object table. `pulls`: pulls in progress. `workers`: the worker table.
//! - `tasks`: accepting, dispatching and ending attempts. `lifecycle`: worker events, cancel, kill.
//! - `objects`: the node's handling of seals, pulls, transfers, frees and copies.

mod io;
mod lifecycle;
mod objects;
mod pulls;
mod store;
mod tasks;
mod workers;

#[cfg(test)]
mod tests;

pub use io::{
    withdraw_held, ExecArg, LocalObject, NodeInput, NodeOutput, PullStatus, TaskPhase, WorkerInfo, WorkerKind,
    WorkerState,
};

use crate::errors::{InputError, TaskFailure};
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::proto::{HeadToNode, NodeToHead, NodeToNode};
use crate::time::{Duration, Time};
use pulls::PullTable;
use std::collections::{BTreeMap, VecDeque};
use store::ObjectTable;
use tasks::Task;
use workers::WorkerTable;

/// The node machine's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Time between heartbeats, counted from registration.
    pub heartbeat_period: Duration,
    /// How long one try of a pull may take before the next holder is asked.
    pub pull_timeout: Duration,
    /// How many rounds over an object's holders a pull makes before giving up.
    pub pull_max_attempts: u32,
    /// Bytes of local objects above which unpinned secondary copies are evicted.
    pub object_store_capacity_bytes: u64,
    /// Idle pool workers kept for reuse; the oldest idle beyond this are killed.
    pub max_idle_workers: usize,
    /// Actor methods an actor's worker holds at once: the running one and those handed to it
    /// ahead, which it runs in order without waiting for the node between them. 1 hands a method
    /// over only when the worker is idle.
    pub actor_pipeline: usize,
    /// Seed of the machine's randomness (its decisions currently need none; kept so that any future
    /// random choice stays reproducible).
    pub seed: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            heartbeat_period: Duration::from_secs(1),
            pull_timeout: Duration::from_secs(5),
            pull_max_attempts: 3,
            object_store_capacity_bytes: 2 << 30,
            max_idle_workers: 8,
            actor_pipeline: 16,
            seed: 0,
        }
    }
}

/// The pure decision core of one node daemon. See the [module docs](self) for the contract.
///
/// Methods: [`handle_input`](Self::handle_input) and [`handle_timeout`](Self::handle_timeout) take
/// inputs; [`poll_output`](Self::poll_output) (drain fully after each input) and
/// [`poll_timeout`](Self::poll_timeout) give outputs and the next wake-up; then getters;
/// [`check_invariants`](Self::check_invariants) panics on a kernel bug.
#[derive(Clone, Debug)]
pub struct Node {
    config: NodeConfig,
    /// Set by `Registered`, cleared by `Reregister`.
    node_id: Option<NodeId>,
    /// The next heartbeat; set exactly while registered.
    next_heartbeat: Option<Time>,
    draining: bool,
    /// `Leaving` was sent.
    left: bool,
    outputs: VecDeque<NodeOutput>,
    workers: WorkerTable,
    objects: ObjectTable,
    pulls: PullTable,
    /// Hashed: looked up by id; listed (rarely) sorted by id.
    tasks: crate::slab::SlabMap<TaskId, Task>,
    /// Methods waiting for each actor worker, in arrival order (no empty queues).
    actor_queues: BTreeMap<WorkerId, VecDeque<TaskId>>,
    /// Attempts handed to a busy worker behind its running one, in the order it runs them: an
    /// actor's next methods, or a pool worker's next tasks (successors, each following the one
    /// before it).
    sent_ahead: BTreeMap<WorkerId, VecDeque<TaskId>>,
    /// Successors waiting for a task to end (`TaskPhase::After`), by the task they follow; a
    /// successor handed to its predecessor's worker ahead leaves this map.
    successors: BTreeMap<TaskId, TaskId>,
    /// The attempts this node ended most recently: a `RunTask` for one of them is a copy of an
    /// order already carried out, refused instead of run twice.
    ended: RecentAttempts,
}

/// How many ended attempts a node remembers to refuse duplicated orders. A copy arrives within
/// moments of the original (a retransmission), long before this many other attempts end here.
pub const REMEMBERED_ATTEMPTS: usize = 4096;

/// A bounded memory of (task, attempt) pairs, oldest forgotten first.
#[derive(Clone, Debug, Default)]
struct RecentAttempts {
    order: VecDeque<(TaskId, u32)>,
    /// Looked up, never iterated.
    set: rustc_hash::FxHashSet<(TaskId, u32)>,
}

impl RecentAttempts {
    fn insert(&mut self, key: (TaskId, u32)) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > REMEMBERED_ATTEMPTS {
                let old = self.order.pop_front().expect("non-empty");
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, key: (TaskId, u32)) -> bool {
        self.set.contains(&key)
    }
}

impl Node {
    /// A node that is not yet registered: its id is unknown until the host feeds `Registered`.
    pub fn new(config: NodeConfig) -> Node {
        assert!(config.heartbeat_period > Duration::ZERO, "heartbeat_period must be positive");
        assert!(config.pull_timeout > Duration::ZERO, "pull_timeout must be positive");
        let node = Node {
            workers: WorkerTable::new(),
            objects: ObjectTable::new(config.object_store_capacity_bytes),
            pulls: PullTable::new(config.pull_max_attempts, config.pull_timeout),
            config,
            node_id: None,
            next_heartbeat: None,
            draining: false,
            left: false,
            outputs: VecDeque::new(),
            tasks: Default::default(),
            actor_queues: BTreeMap::new(),
            sent_ahead: BTreeMap::new(),
            successors: BTreeMap::new(),
            ended: RecentAttempts::default(),
        };
        node.check_invariants();
        node
    }

    // ---- inputs ----

    /// Feeds one input. A refused input returns a typed error and changes nothing.
    pub fn handle_input(&mut self, now: Time, input: NodeInput) -> Result<(), InputError> {
        let outputs_before = self.outputs.len();
        let result = match input {
            NodeInput::Registered(id) => self.on_registered(now, id),
            NodeInput::FromHead(msg) => self.on_head_message(now, msg),
            NodeInput::FromPeer { from, msg } => self.on_peer_message(now, from, msg),
            NodeInput::WorkerStarted { worker } => self.on_worker_started(worker),
            NodeInput::WorkerStartFailed { worker, message } => self.on_worker_start_failed(worker, message),
            NodeInput::WorkerExited { worker, exit_code } => self.on_worker_exited(worker, exit_code),
            NodeInput::TaskDone { worker, task, attempt, outcome } => self.on_task_done(worker, task, attempt, outcome),
            NodeInput::TaskWithdrawn { worker, tasks } => self.on_task_withdrawn(worker, &tasks),
            NodeInput::FromWorker { worker, msg } => self.on_worker_message(worker, msg),
            NodeInput::WorkerBlocked { worker, blocked } => self.on_worker_blocked(worker, blocked),
            NodeInput::ClientPut { object, size } => self.on_client_put(object, size),
            NodeInput::ObjectSealed { object, size } => self.on_object_sealed(object, size),
            NodeInput::PullProgress { object, from } => self.on_pull_progress(now, object, from),
            NodeInput::PullFailed { object, from } => self.on_pull_failed(now, object, from),
            NodeInput::SendEnded { object, to } => self.on_send_ended(object, to),
        };
        if result.is_err() {
            assert_eq!(self.outputs.len(), outputs_before, "a refused input produced outputs");
            return result;
        }
        self.maybe_leave();
        result
    }

    /// Acts on every deadline that has passed at `now`: the heartbeat, then pull tries that timed out.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(next) = self.next_heartbeat {
            if next <= now {
                self.send_to_head(NodeToHead::Heartbeat);
                let period = self.config.heartbeat_period.0;
                let periods_passed = (now.0 - next.0) / period + 1;
                let following = Time(next.0 + periods_passed * period);
                assert!(following > now, "the next heartbeat must be in the future");
                self.next_heartbeat = Some(following);
            }
        }
        for object in self.pulls.expired(now) {
            // Giving up an earlier pull aborts its tasks, which may drop this one.
            if self.pulls.get(object).is_some() {
                self.advance_pull(now, object);
            }
        }
        assert!(self.pulls.next_deadline().is_none_or(|t| t > now), "an expired pull was left behind");
        self.maybe_leave();
    }

    // ---- outputs ----

    /// The next thing for the host to do; drain until `None` after every input and timeout.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next: the earlier of the next heartbeat
    /// (always present while registered) and the first pull deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        let pull = self.pulls.next_deadline();
        let earliest = match (self.next_heartbeat, pull) {
            (Some(h), Some(p)) => Some(h.min(p)),
            (h, p) => h.or(p),
        };
        assert!(self.node_id.is_none() || earliest.is_some(), "a registered node always has a deadline");
        earliest
    }

    // ---- getters ----

    /// The id the head gave this node, once registered.
    pub fn node_id(&self) -> Option<NodeId> {
        self.node_id
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether the head asked this node to drain.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// When the next heartbeat is due (none before registration).
    pub fn next_heartbeat(&self) -> Option<Time> {
        self.next_heartbeat
    }

    /// Task attempts executing in a worker: `(task, attempt, worker)`, by task id.
    pub fn running_tasks(&self) -> Vec<(TaskId, u32, WorkerId)> {
        let mut running: Vec<_> = self
            .tasks
            .iter_unordered()
            .filter_map(|(id, t)| match t.phase {
                TaskPhase::Running(w) => Some((*id, t.attempt, w)),
                _ => None,
            })
            .collect();
        running.sort_unstable();
        running
    }

    /// Where an attempt of `task` stands here, if the node has one.
    pub fn task_phase(&self, task: TaskId) -> Option<TaskPhase> {
        self.tasks.get(&task).map(|t| t.phase)
    }

    /// How many task attempts the node holds, in any phase.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// A local copy of `object`, if sealed here.
    pub fn local_object(&self, object: ObjectId) -> Option<&LocalObject> {
        self.objects.get(object)
    }

    /// Every local copy, by object id.
    pub fn local_objects(&self) -> impl Iterator<Item = (ObjectId, &LocalObject)> {
        self.objects.iter()
    }

    /// Local objects that a task or a transfer pins, by object id.
    pub fn pinned_objects(&self) -> Vec<ObjectId> {
        self.objects.iter().filter(|(_, e)| e.is_pinned()).map(|(o, _)| o).collect()
    }

    /// Bytes of local objects.
    pub fn used_bytes(&self) -> u64 {
        self.objects.used_bytes()
    }

    /// Bytes of local objects above which secondary copies are evicted.
    pub fn capacity_bytes(&self) -> u64 {
        self.objects.capacity_bytes()
    }

    /// A worker, if the node knows it.
    pub fn worker(&self, worker: WorkerId) -> Option<&WorkerInfo> {
        self.workers.get(worker)
    }

    /// Every worker, by id.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, &WorkerInfo)> {
        self.workers.iter()
    }

    /// Idle pool workers, oldest idle first.
    pub fn idle_workers(&self) -> Vec<WorkerId> {
        self.workers.idle_pool()
    }

    /// A pull in progress, if any.
    pub fn pull_status(&self, object: ObjectId) -> Option<PullStatus> {
        self.pulls.get(object).map(|p| PullStatus {
            holder: p.current(),
            tries: p.tries,
            expected_size_bytes: p.size,
            waiters: p.waiters.iter().copied().collect(),
            for_copy: p.for_copy,
        })
    }

    /// The objects whose pull is waiting on `holder` now, in id order (a host that lost its
    /// connection to `holder` reports each as a failed pull).
    pub fn pulls_from(&self, holder: NodeId) -> Vec<ObjectId> {
        let mut objects: Vec<ObjectId> =
            self.pulls.iter().filter(|(_, p)| p.current() == holder).map(|(o, _)| o).collect();
        objects.sort_unstable();
        objects
    }

    /// How many pulls are in progress.
    pub fn pull_count(&self) -> usize {
        self.pulls.len()
    }

    /// Methods queued for an actor worker and not yet handed to it, in the order they will run.
    pub fn actor_queue(&self, worker: WorkerId) -> Vec<TaskId> {
        self.actor_queues.get(&worker).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }

    /// Methods handed to an actor worker behind its running one, in the order it runs them.
    pub fn sent_ahead(&self, worker: WorkerId) -> Vec<TaskId> {
        self.sent_ahead.get(&worker).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }

    // ---- internals shared by the submodules ----

    fn emit(&mut self, output: NodeOutput) {
        self.outputs.push_back(output);
    }

    fn send_to_head(&mut self, msg: NodeToHead) {
        assert!(self.node_id.is_some(), "only a registered node talks to the head");
        self.emit(NodeOutput::ToHead(msg));
    }

    /// This node's id; inputs that need it are refused before registration.
    fn registered(&self) -> Result<NodeId, InputError> {
        self.node_id.ok_or_else(|| InputError::Malformed { what: "the node is not registered yet".into() })
    }

    fn on_registered(&mut self, now: Time, id: NodeId) -> Result<(), InputError> {
        if let Some(current) = self.node_id {
            return Err(InputError::Malformed { what: format!("already registered as {current}") });
        }
        assert!(self.tasks.is_empty(), "an unregistered node holds tasks");
        self.node_id = Some(id);
        self.next_heartbeat = Some(now + self.config.heartbeat_period);
        Ok(())
    }

    fn on_head_message(&mut self, now: Time, msg: HeadToNode) -> Result<(), InputError> {
        self.registered()?;
        match msg {
            HeadToNode::RunTask { spec, attempt, allocation, args, actor_worker, after } => {
                let order = tasks::RunOrder { spec, attempt, allocation, args, actor_worker, after };
                self.on_run_task(now, order)
            }
            HeadToNode::CancelTask { task, attempt, force } => self.on_cancel_task(task, attempt, force),
            HeadToNode::KillActor { actor, worker } => self.on_kill_actor(actor, worker),
            HeadToNode::FreeObjects(objects) => {
                self.on_free_objects(objects);
                Ok(())
            }
            HeadToNode::CopyObject { object, size, from } => {
                self.on_copy_object(now, object, size, from);
                Ok(())
            }
            HeadToNode::ToSubmitter { task, msg } => self.on_to_submitter(task, msg),
            HeadToNode::StartNow { task, attempt } => self.on_start_now(task, attempt),
            HeadToNode::Reregister => {
                self.reset();
                Ok(())
            }
            HeadToNode::Drain => {
                self.on_drain();
                Ok(())
            }
        }
    }

    fn on_peer_message(&mut self, now: Time, from: NodeId, msg: NodeToNode) -> Result<(), InputError> {
        let me = self.registered()?;
        if from == me {
            return Err(InputError::Malformed { what: format!("a peer message from this node itself ({me})") });
        }
        match msg {
            NodeToNode::Pull { object } => self.on_peer_pull(from, object),
            NodeToNode::PullReply { object, size } => self.on_pull_reply(now, from, object, size),
        }
        Ok(())
    }

    fn on_drain(&mut self) {
        self.draining = true;
        self.trim_idle_workers();
        assert_eq!(self.workers.idle_pool_len(), 0, "a draining node keeps no idle worker");
    }

    /// Sends `Leaving` once a draining node has nothing left to run or host.
    fn maybe_leave(&mut self) {
        if !self.draining || self.left || !self.tasks.is_empty() || self.workers.hosts_actors() {
            return;
        }
        self.left = true;
        self.send_to_head(NodeToHead::Leaving);
        assert!(self.tasks.is_empty());
    }

    /// `Reregister`: forget everything and ask the host to reset; only worker ids carry over.
    fn reset(&mut self) {
        assert!(self.node_id.is_some(), "reset of an unregistered node");
        self.node_id = None;
        self.next_heartbeat = None;
        self.draining = false;
        self.left = false;
        self.tasks.clear();
        self.actor_queues.clear();
        self.sent_ahead.clear();
        self.successors.clear();
        self.workers.clear();
        self.objects.clear();
        self.pulls.clear();
        self.emit(NodeOutput::Reset);
        assert!(self.poll_timeout().is_none(), "an unregistered node has no deadline");
    }

    fn failure_report(&mut self, task: TaskId, attempt: u32, failure: TaskFailure) {
        self.ended.insert((task, attempt));
        let outcome = crate::proto::TaskOutcome::Failed(failure);
        self.send_to_head(NodeToHead::TaskEnded { task, attempt, outcome });
    }

    // ---- invariants ----

    /// Panics if the machine's state is inconsistent (a kernel bug). Tests call it after every step.
    pub fn check_invariants(&self) {
        self.objects.check_invariants();
        self.pulls.check_invariants();
        self.workers.check_invariants();
        assert_eq!(self.node_id.is_some(), self.next_heartbeat.is_some(), "heartbeat armed iff registered");
        assert!(!self.left || self.draining, "left without draining");
        if self.node_id.is_none() {
            assert!(self.tasks.is_empty(), "an unregistered node holds tasks");
            assert_eq!(self.workers.iter().count(), 0, "an unregistered node holds workers");
            assert_eq!(self.objects.iter().count(), 0, "an unregistered node holds objects");
            assert_eq!(self.pulls.len(), 0, "an unregistered node pulls");
        }
        let max_idle = if self.draining { 0 } else { self.config.max_idle_workers };
        assert!(self.workers.idle_pool_len() <= max_idle, "too many idle workers");
        // In id order, so that a failed check names the same task on every build.
        let mut ids: Vec<TaskId> = self.tasks.iter_unordered().map(|(k, _)| *k).collect();
        ids.sort_unstable();
        for id in ids {
            self.check_task(id, &self.tasks[&id]);
        }
        self.check_workers_against_tasks();
        self.check_objects_against_tasks();
        self.check_actor_queues();
    }
}
