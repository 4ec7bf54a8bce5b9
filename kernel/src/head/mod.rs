//! The Head machine: the cluster brain.
//!
//! [`Head`] decides everything cluster-wide: which nodes are alive, where each task runs, which
//! objects exist and where, who owns and who borrows them, what to rebuild when a node is lost,
//! the life of actors and placement groups, and when a job's resources are released.
//!
//! # Driving it
//!
//! Methods are sorted as in quinn-proto: `handle_*` take inputs, `poll_*` hand out outputs and the
//! next timer, getters read state, and [`Head::check_invariants`] asserts its consistency.
//!
//! 1. Feed every input with [`Head::handle_input`], passing the current time. Time never goes
//!    backwards. A refused input returns an [`InputError`] and changes nothing already accepted.
//! 2. After each input or timeout, drain [`Head::poll_output`] until it returns `None`, and
//!    perform each [`HeadOutput`] in order.
//! 3. Ask [`Head::poll_timeout`] for the next deadline, and call [`Head::handle_timeout`] once the
//!    clock reaches it (calling it early is harmless).
//!
//! # Modules
//!
//! - [`scheduler`]: the resource view of the cluster and the node-selection policies.
//! - `nodes`: registration, heartbeats, failure detection, drain and loss.
//! - `tasks`: submission, dependencies, the ready queue, dispatch and completion; a normal task
//!   blocked waiting for objects lends its CPUs until it runs again (then takes them back if they
//!   are free, else runs on without them), so that tasks waiting for their own children cannot
//!   hold every CPU and deadlock.
//! - `failures`: retries, failing for good, the end of a task's life, cancellation, owner death.
//! - `objects`: the object directory, reference counting with borrowers, subscriptions.
//! - `lineage`: bounded lineage and reconstruction of lost objects.
//! - `actors`, `placement`, `jobs`: actors, placement groups and jobs.
//! - `invariants`: [`Head::check_invariants`].
//!
//! # Owner-death semantics
//!
//! An object is owned by its submitter: the driver of a job ([`TaskId::driver`]) or a task (an
//! actor's methods act for the actor, so the actor's creation task owns what they create). The
//! Head itself keeps every owner's metadata, so an owner that *finishes* loses nothing: its objects
//! live until their reference counts reach zero. An owner *dies* when its process dies: a worker
//! crash, a lost node, a forced cancellation, or the end of a driver's job. Then, as in Ray, every
//! object it owns fails with [`OwnerDied`](crate::errors::ErrorReason::OwnerDied) (or
//! [`JobFinished`](crate::errors::ErrorReason::JobFinished) for a driver), the tasks it
//! submitted are cancelled recursively, and its non-detached actors die.

mod bundles;
pub mod scheduler;

mod actors;
mod autoscale;
mod failures;
mod invariants;
mod jobs;
mod lineage;
mod nodes;
mod objects;
mod owners;
mod placement;
mod tasks;

use crate::errors::InputError;
use crate::ids::{ActorId, ConnId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId};
use crate::proto::{DriverToHead, HeadToDriver, HeadToNode, Hello, NodeToHead, Welcome};
use crate::resources::ResourceSet;
use crate::time::{Duration, Time};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use scheduler::{ClusterView, SchedulerConfig};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use actors::ActorSummary;
pub use autoscale::AutoscalerStatus;
pub use tasks::TaskStateKind;

/// The Head's settings. Everything that shapes a decision is here, including the RNG seed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadConfig {
    /// Seed of the Head's RNG (scheduling ties among the top-k nodes).
    pub seed: u64,
    /// How often nodes are expected to send a heartbeat.
    pub heartbeat_period: Duration,
    /// A node that sends nothing for this long is declared dead.
    pub node_timeout: Duration,
    /// A task or placement group that no node could ever fit fails after this long.
    pub infeasible_grace: Duration,
    /// Objects up to this size travel inline in messages and are kept by the Head.
    pub inline_max_bytes: u64,
    /// Bound on the lineage kept for finished tasks; the oldest is evicted first.
    pub max_lineage_bytes: u64,
    /// Node-selection settings.
    pub scheduler: SchedulerConfig,
    /// Autoscaling: node types, limits and timeouts (`None`: the cluster is what registers).
    pub autoscaler: Option<crate::autoscaler::AutoscalerConfig>,
    /// Pipelining of short tasks: when no node has room for a ready task of a scheduling class
    /// whose tasks recently ran for less than this (from dispatch to end, a moving average), it
    /// is handed to the node of a running task of the same job and class, to run next in that
    /// task's resources: the worker goes from one task to the next without waiting for the head.
    /// A running task takes successors one after another (the task with the fewest first) while
    /// the next would start within this long (its class's run time times those ahead of it), up
    /// to `pipeline_depth`. Long tasks are never pipelined, so a successor waits at most about
    /// this long for a place that might have opened elsewhere. Tasks in placement groups and
    /// SPREAD tasks are never pipelined. Zero turns it off. Default 10 ms.
    #[serde(default = "pipeline_under_by_default")]
    pub pipeline_under: Duration,
    /// The most successors a running task holds (see `pipeline_under`). Default 8.
    #[serde(default = "pipeline_depth_by_default")]
    pub pipeline_depth: u32,
}

fn pipeline_under_by_default() -> Duration {
    Duration::from_millis(10)
}

fn pipeline_depth_by_default() -> u32 {
    8
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            seed: 0,
            heartbeat_period: Duration::from_millis(1_000),
            node_timeout: Duration::from_millis(5_000),
            infeasible_grace: Duration::from_secs(10),
            inline_max_bytes: 100 * 1024,
            max_lineage_bytes: 1 << 30,
            scheduler: SchedulerConfig::default(),
            autoscaler: None,
            pipeline_under: pipeline_under_by_default(),
            pipeline_depth: pipeline_depth_by_default(),
        }
    }
}

/// Unplaced demand, as [`Head::demand`] reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Demand {
    /// Tasks waiting for resources: (shape, count).
    pub queued: Vec<(ResourceSet, u64)>,
    /// Tasks no live node can ever run: (shape, count).
    pub infeasible: Vec<(ResourceSet, u64)>,
}

/// Everything that can happen to the Head.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HeadInput {
    /// The first message on a new connection: a node or a driver introduces itself.
    Connect {
        /// The host's handle for the connection, echoed in the answer.
        conn: ConnId,
        /// Who it is.
        hello: Hello,
    },
    /// A message from a registered job's driver.
    FromDriver {
        /// The job.
        job: JobId,
        /// The message.
        msg: DriverToHead,
    },
    /// A message from a registered node.
    FromNode {
        /// The node.
        node: NodeId,
        /// The message.
        msg: NodeToHead,
    },
    /// An operator asks to drain a node: no new work; once idle it is reported drained.
    DrainNode(NodeId),
    /// A driver's connection is gone: its job ends as if it had finished, with owner-death reasons.
    DriverDisconnected(JobId),
    /// The provider could not launch (the rest of) an autoscaler request.
    LaunchFailed {
        /// The request's number.
        request: u64,
        /// Why, for reports.
        reason: String,
    },
    /// A node's connection is gone. A node whose link to the head breaks registers again as a new
    /// node, so nothing can be heard of this one any more: it is lost now, without waiting for
    /// its deadline (a crashed node process is noticed as soon as its connection closes). A node
    /// no longer live is ignored.
    NodeDisconnected(NodeId),
}

/// Everything the Head asks its host to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HeadOutput {
    /// Answer a [`HeadInput::Connect`].
    ToConn {
        /// The connection.
        conn: ConnId,
        /// The answer.
        msg: Welcome,
    },
    /// Send a message to a node.
    ToNode {
        /// The node.
        node: NodeId,
        /// The message.
        msg: HeadToNode,
    },
    /// Send a message to a job's driver.
    ToDriver {
        /// The job.
        job: JobId,
        /// The message.
        msg: HeadToDriver,
    },
    /// The node was declared dead (missed its deadline or left); close its connection.
    NodeDead(NodeId),
    /// A draining node is idle and may be stopped.
    NodeDrained(NodeId),
    /// Ask the provider for `count` nodes of a type; they register with the launch labels
    /// ([`LAUNCH_LABEL`](crate::autoscaler::LAUNCH_LABEL) = `request`), or the provider answers
    /// [`HeadInput::LaunchFailed`].
    Launch {
        /// The request's number.
        request: u64,
        /// The node type's name.
        node_type: String,
        /// How many nodes.
        count: u32,
    },
    /// Stop this node: the autoscaler found it idle (it takes no new work).
    Terminate {
        /// The node.
        node: NodeId,
    },
}

/// A placement-group bundle: the group and the bundle's index.
pub type BundleRef = (PlacementGroupId, u32);

/// Timers other than node deadlines, ordered by time then kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Timer {
    /// Fail the task if it is still infeasible.
    Infeasible(TaskId),
    /// Fail the placement group if it is still infeasible.
    PlacementGroupInfeasible(PlacementGroupId),
    /// Try again a task whose attempt could not fetch an argument.
    RetryArguments(TaskId, u32),
    /// The autoscaler's next decision.
    Autoscale,
}

/// Counters for reports and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadStats {
    /// Tasks accepted.
    pub tasks_submitted: u64,
    /// Task attempts dispatched to nodes.
    pub attempts_dispatched: u64,
    /// Tasks that finished successfully (final attempts).
    pub tasks_finished: u64,
    /// Tasks that failed for good.
    pub tasks_failed: u64,
    /// Attempts retried after a failure.
    pub retries: u64,
    /// Finished tasks re-run to rebuild lost objects.
    pub reconstructions: u64,
    /// Nodes declared dead (not counting those the autoscaler stopped).
    pub nodes_lost: u64,
    /// Inputs refused with an [`InputError`].
    pub inputs_refused: u64,
    /// Of the attempts dispatched, those handed to a node to run next after a running task
    /// (`HeadConfig::pipeline_under`).
    #[serde(default)]
    pub attempts_pipelined: u64,
}

/// The cluster brain. See the [module docs](self) for how to drive it.
///
/// It serialises whole (serde), which is how a host snapshots it: a Head read back from its
/// serialised form, given the same later inputs, decides exactly as the original did (a property
/// test checks this over random operation sequences). The serialised form is not canonical: hash
/// tables come back in another order, which no decision depends on.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Head {
    config: HeadConfig,
    rng: Xoshiro256PlusPlus,
    now: Time,
    outputs: VecDeque<HeadOutput>,
    cluster: ClusterView,
    nodes: nodes::NodeTable,
    jobs: jobs::JobTable,
    tasks: tasks::TaskTable,
    objects: objects::ObjectTable,
    lineage: lineage::LineageCache,
    actors: actors::ActorTable,
    pgs: placement::PgTable,
    timers: BTreeSet<(Time, Timer)>,
    stats: HeadStats,
    /// Connections that have introduced themselves: a second `Connect` on one (a duplicated
    /// message) would register a second node for one machine.
    introduced: BTreeSet<ConnId>,
    /// Per node, tasks running without CPUs they are owed, in the order they ran again.
    debts: BTreeMap<NodeId, Vec<TaskId>>,
    /// The autoscaler's launches, failures and idle nodes.
    autoscale: autoscale::AutoscaleState,
}

impl Head {
    /// A Head with no nodes, jobs or work.
    pub fn new(config: HeadConfig) -> Head {
        assert!(config.node_timeout > config.heartbeat_period, "node_timeout must exceed heartbeat_period");
        assert!(config.scheduler.spread_threshold >= 0.0, "spread_threshold must not be negative");
        Head {
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            cluster: ClusterView::new(config.scheduler.clone()),
            config,
            now: Time::ZERO,
            outputs: VecDeque::new(),
            nodes: nodes::NodeTable::default(),
            jobs: jobs::JobTable::default(),
            tasks: tasks::TaskTable::default(),
            objects: objects::ObjectTable::default(),
            lineage: lineage::LineageCache::default(),
            actors: actors::ActorTable::default(),
            pgs: placement::PgTable::default(),
            timers: BTreeSet::new(),
            stats: HeadStats::default(),
            introduced: BTreeSet::new(),
            debts: BTreeMap::new(),
            autoscale: autoscale::AutoscaleState::default(),
        }
    }

    /// Feeds one input. A refused input returns why and changes nothing already accepted; where
    /// the input came from a driver, the driver is told too.
    pub fn handle_input(&mut self, now: Time, input: HeadInput) -> Result<(), InputError> {
        self.advance(now);
        let result = match input {
            HeadInput::Connect { conn, hello } => self.on_connect(conn, hello),
            HeadInput::FromDriver { job, msg } => self.on_driver_message(job, msg),
            HeadInput::FromNode { node, msg } => self.on_node_message(node, msg),
            HeadInput::DrainNode(node) => self.on_drain_request(node),
            HeadInput::DriverDisconnected(job) => self.on_driver_gone(job),
            HeadInput::LaunchFailed { request, .. } => {
                self.autoscale_launch_failed(request);
                Ok(())
            }
            HeadInput::NodeDisconnected(node) => {
                self.on_node_lost(node);
                Ok(())
            }
        };
        if result.is_err() {
            self.stats.inputs_refused += 1;
        }
        self.schedule_pending();
        result
    }

    /// The next output to perform, in order. Drain until `None` after every input and timeout.
    pub fn poll_output(&mut self) -> Option<HeadOutput> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        let node = self.nodes.next_deadline();
        let timer = self.timers.first().map(|(t, _)| *t);
        match (node, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer due at `now`: node deadlines and infeasibility grace periods.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        for node in self.nodes.expired(now) {
            self.on_node_lost(node);
        }
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Infeasible(task) => self.on_infeasible_timeout(task),
                Timer::PlacementGroupInfeasible(pg) => self.on_pg_infeasible_timeout(pg),
                Timer::RetryArguments(task, attempt) => self.on_argument_retry(task, attempt),
                Timer::Autoscale => self.on_autoscale_timer(),
            }
        }
        self.schedule_pending();
    }

    /// The latest time handed in.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &HeadStats {
        &self.stats
    }

    /// The cluster's resource view.
    pub fn cluster(&self) -> &ClusterView {
        &self.cluster
    }

    /// Live nodes, ascending.
    pub fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.ids()
    }

    /// The state of a task the Head still remembers.
    pub fn task_state(&self, task: TaskId) -> Option<TaskStateKind> {
        self.tasks.get(task).map(|t| t.state.kind())
    }

    /// The current attempt number of a task the Head still remembers.
    pub fn task_attempt(&self, task: TaskId) -> Option<u32> {
        self.tasks.get(task).map(|t| t.attempt)
    }

    /// The node running a task, if it is running.
    pub fn task_node(&self, task: TaskId) -> Option<NodeId> {
        self.tasks.get(task).and_then(|t| t.state.running_node())
    }

    /// How many task records the Head holds (running, queued, and lineage of finished tasks).
    pub fn task_records(&self) -> usize {
        self.tasks.len()
    }

    /// How many object records the Head holds.
    pub fn object_records(&self) -> usize {
        self.objects.len()
    }

    /// Bytes of lineage retained for finished tasks.
    pub fn lineage_bytes(&self) -> u64 {
        self.lineage.bytes()
    }

    /// The nodes holding a copy of `object` (empty for inline or unknown objects).
    pub fn object_locations(&self, object: ObjectId) -> Vec<NodeId> {
        self.objects.get(object).map(|o| o.locations.iter().copied().collect()).unwrap_or_default()
    }

    /// The total reference count of `object` (handles + borrowing tasks + containing objects).
    pub fn object_ref_count(&self, object: ObjectId) -> Option<u64> {
        self.objects.get(object).map(|o| o.ref_count())
    }

    /// Whether `object` exists and is ready.
    pub fn object_ready(&self, object: ObjectId) -> bool {
        self.objects.get(object).is_some_and(|o| o.is_ready())
    }

    /// The reason `object` failed, if it did.
    pub fn object_error(&self, object: ObjectId) -> Option<&crate::errors::ErrorReason> {
        self.objects.get(object).and_then(|o| o.failure())
    }

    /// The name a job registered with.
    pub fn job_name(&self, job: JobId) -> Option<&str> {
        self.jobs.name(job)
    }

    /// How many finished tasks have their lineage retained.
    pub fn lineage_tasks(&self) -> usize {
        self.lineage.len()
    }

    /// Tasks waiting in the ready queues.
    pub fn queued_tasks(&self) -> usize {
        self.tasks.queued_len()
    }

    /// Demand the cluster has not placed: queued tasks and infeasible tasks, each as counts per
    /// resource shape, in shape order (for `keel status` and the autoscaler's reports).
    pub fn demand(&self) -> Demand {
        let mut infeasible: BTreeMap<ResourceSet, u64> = BTreeMap::new();
        for task in self.tasks.infeasible.keys() {
            if let Some(record) = self.tasks.get(*task) {
                *infeasible.entry(record.spec.resources.clone()).or_default() += 1;
            }
        }
        Demand { queued: self.tasks.queued_shapes(), infeasible: infeasible.into_iter().collect() }
    }

    /// Queued and infeasible tasks a node of the right shape could run (not those bound to a
    /// group's bundle or, hard, to one node), as counts per shape and label constraints: the
    /// task demand the autoscaler sees.
    pub fn waiting_shapes(&self) -> Vec<(ResourceSet, Vec<crate::proto::LabelConstraint>, u64)> {
        self.tasks.autoscaler_demand()
    }

    /// Whether `job` is running (registered and not finished).
    pub fn job_running(&self, job: JobId) -> bool {
        self.jobs.is_running(job)
    }

    /// A summary of an actor.
    pub fn actor(&self, actor: ActorId) -> Option<ActorSummary> {
        self.actors.summary(actor)
    }

    /// The nodes of a placement group's bundles (`None` for a bundle not reserved now).
    pub fn placement_group_nodes(&self, pg: PlacementGroupId) -> Option<Vec<Option<NodeId>>> {
        self.pgs.get(pg).map(|p| p.bundles.iter().map(|b| b.as_ref().map(|b| b.node)).collect())
    }

    fn advance(&mut self, now: Time) {
        assert!(now >= self.now, "time went backwards: {:?} < {:?}", now, self.now);
        self.now = now;
        self.autoscale_start();
    }

    fn emit(&mut self, output: HeadOutput) {
        self.outputs.push_back(output);
    }

    fn on_connect(&mut self, conn: ConnId, hello: Hello) -> Result<(), InputError> {
        if !self.introduced.insert(conn) {
            return Err(InputError::DuplicateConnection(conn));
        }
        let answer = match hello {
            Hello::RegisterNode { version, resources, labels } => {
                let registered =
                    self.check_version(version).and_then(|()| self.register_node(resources, labels.clone()));
                if let Ok(node) = registered {
                    self.emit(HeadOutput::ToConn { conn, msg: Welcome::NodeRegistered(node) });
                    self.autoscale_registered(node, &labels);
                    return Ok(());
                }
                registered.map(Welcome::NodeRegistered)
            }
            Hello::RegisterJob { version, name } => {
                self.check_version(version).map(|()| Welcome::JobRegistered(self.register_job(name)))
            }
        };
        let msg = answer.unwrap_or_else(Welcome::Refused);
        self.emit(HeadOutput::ToConn { conn, msg });
        Ok(())
    }

    fn check_version(&self, version: u32) -> Result<(), InputError> {
        if version == crate::proto::PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(InputError::VersionMismatch { got: version, expected: crate::proto::PROTOCOL_VERSION })
        }
    }

    fn on_driver_message(&mut self, job: JobId, msg: DriverToHead) -> Result<(), InputError> {
        if !self.jobs.is_running(job) {
            return Err(InputError::UnknownJob(job));
        }
        let submitter = TaskId::driver(job);
        let result = self.on_client_message(submitter, job, msg);
        if let Err(error) = &result {
            self.emit(HeadOutput::ToDriver { job, msg: HeadToDriver::Rejected { error: error.clone() } });
        }
        result
    }

    /// A message from a submitter: a driver, or a task running on some node.
    fn on_client_message(&mut self, submitter: TaskId, job: JobId, msg: DriverToHead) -> Result<(), InputError> {
        match msg {
            DriverToHead::SubmitTask(spec) => self.submit_task(submitter, job, spec),
            DriverToHead::CreateActor { options, creation } => self.create_actor(submitter, job, options, creation),
            DriverToHead::Put { object, size, inline, node, nested } => {
                self.put_object(submitter, object, size, inline, node, nested)
            }
            DriverToHead::AddRef(object) => self.add_handle(submitter, object),
            DriverToHead::RemoveRef(object) => self.remove_handle(submitter, object),
            DriverToHead::Subscribe(objects) => self.subscribe(submitter, objects),
            DriverToHead::RequestResources(shapes) => {
                for (shape, _) in &shapes {
                    shape
                        .validate()
                        .map_err(|e| InputError::Malformed { what: format!("requested resources: {e}") })?;
                }
                self.request_resources(job, shapes);
                Ok(())
            }
            DriverToHead::Cancel { task, force, recursive } => {
                // A job may cancel only its own work.
                match self.tasks.get(task) {
                    Some(t) if t.spec.job != job => Err(InputError::UnknownTask(task)),
                    _ => self.cancel_task(task, force, recursive),
                }
            }
            DriverToHead::KillActor { actor, no_restart } => self.kill_actor(actor, no_restart),
            DriverToHead::GetNamedActor { namespace, name } => {
                let actor = self.actors.by_name(&namespace, &name);
                self.send_to_submitter(submitter, HeadToDriver::NamedActor { namespace, name, actor });
                Ok(())
            }
            DriverToHead::CreatePlacementGroup { pg, spec } => self.create_placement_group(submitter, job, pg, spec),
            DriverToHead::RemovePlacementGroup(pg) => self.remove_placement_group(pg),
            DriverToHead::FinishJob => {
                if submitter == TaskId::driver(job) {
                    self.on_driver_gone(job)
                } else {
                    Err(InputError::Malformed { what: "only a job's driver can finish the job".into() })
                }
            }
        }
    }

    /// Sends `msg` to a submitter: a driver directly, or a task through the node it runs on.
    fn send_to_submitter(&mut self, submitter: TaskId, msg: HeadToDriver) {
        if let Some(job) = self.jobs.job_of_driver(submitter) {
            self.emit(HeadOutput::ToDriver { job, msg });
            return;
        }
        if let Some(node) = self.tasks.get(submitter).and_then(|t| t.state.running_node()) {
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::ToSubmitter { task: submitter, msg } });
            return;
        }
        if let Some(node) = self.actors.node_of_creation_task(submitter) {
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::ToSubmitter { task: submitter, msg } });
        }
        // Otherwise the submitter is gone; nobody is left to tell.
    }

    fn set_timer(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, timer));
    }
}
#[cfg(test)]
mod sizes {
    use std::mem::size_of;

    /// Inputs and messages are moved by value through every handler: the rare large variants
    /// (an actor's constructor, a message relayed from a running task) are boxed or shared so
    /// that the common ones stay small.
    #[test]
    fn inputs_and_messages_stay_small() {
        assert!(size_of::<super::HeadInput>() <= 96, "HeadInput is {} bytes", size_of::<super::HeadInput>());
        assert!(
            size_of::<crate::proto::DriverToHead>() <= 88,
            "DriverToHead is {} bytes",
            size_of::<crate::proto::DriverToHead>()
        );
        assert!(
            size_of::<crate::proto::NodeToHead>() <= 48,
            "NodeToHead is {} bytes",
            size_of::<crate::proto::NodeToHead>()
        );
    }
}
