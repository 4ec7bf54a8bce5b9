//! The messages between drivers, the head and nodes: one enum per direction.
//!
//! Every enum is `serde`-serialisable (the real cluster frames them with postcard). The
//! registration messages carry [`PROTOCOL_VERSION`]; the head refuses any other version with a
//! typed reason. Object bytes never travel through these enums except small inlined objects
//! (at most the head's `inline_max_bytes`); large objects move node to node through the hosts.

use crate::errors::{ErrorReason, TaskFailure};
use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::resources::{Allocation, ResourceSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The protocol version every peer announces when it registers.
pub const PROTOCOL_VERSION: u32 = 2;

/// Node labels: `key = value` pairs a node registers with.
pub type Labels = BTreeMap<String, String>;

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Function {
    /// A function registered by name in the user's binary. The name is shared: a driver keeps one
    /// handle per function and clones it into every spec, so submitting a task copies no string.
    Named(Arc<str>),
    /// A command line run as a process (`argv[0]` is the program).
    Command(Vec<String>),
}

/// A task argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Arg {
    /// An argument passed by value; `nested` are object references serialised inside it,
    /// which the task borrows while it runs.
    Value {
        /// Serialised bytes.
        data: Vec<u8>,
        /// References contained in `data`.
        nested: Vec<ObjectId>,
    },
    /// An argument passed by reference: the task waits until the object exists.
    Ref(ObjectId),
}

/// A hard label constraint on the node a task may run on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LabelConstraint {
    /// The label `key` has one of `values`.
    In {
        /// Label key.
        key: String,
        /// Accepted values.
        values: Vec<String>,
    },
    /// The label `key` is absent or has none of `values`.
    NotIn {
        /// Label key.
        key: String,
        /// Refused values.
        values: Vec<String>,
    },
    /// The label `key` is present.
    Exists(String),
    /// The label `key` is absent.
    DoesNotExist(String),
}

impl LabelConstraint {
    /// Whether a node with `labels` satisfies the constraint.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            LabelConstraint::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            LabelConstraint::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            LabelConstraint::Exists(key) => labels.contains_key(key),
            LabelConstraint::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// Where a task may be placed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SchedulingStrategy {
    /// Hybrid: pack onto nodes until their utilisation passes the spread threshold, then spread;
    /// prefers nodes holding most argument bytes.
    #[default]
    Default,
    /// Spread over nodes, least utilised first, even when every node is busy.
    Spread,
    /// Run on `node`; when `soft`, fall back to the default policy if it is dead or cannot fit.
    NodeAffinity {
        /// The node.
        node: NodeId,
        /// Whether the affinity may be ignored.
        soft: bool,
    },
    /// Run inside a placement group, in `bundle` or in any bundle that fits.
    PlacementGroup {
        /// The group.
        pg: PlacementGroupId,
        /// A bundle index, or any.
        bundle: Option<u32>,
    },
}

/// What kind of task this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum TaskKind {
    /// An ordinary stateless task.
    Normal,
    /// The creation of an actor: it runs the constructor in a dedicated worker that then hosts the actor.
    ActorCreation(ActorId),
    /// A method call on an actor; `seq` orders the calls of one caller (0-based, no gaps).
    ActorMethod {
        /// The actor.
        actor: ActorId,
        /// The caller's sequence number for this actor.
        seq: u64,
    },
}

/// Everything the cluster needs to know to run a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TaskSpec {
    /// The task's id, chosen by the submitter (see [`TaskId::child`]).
    pub task: TaskId,
    /// The job it belongs to.
    pub job: JobId,
    /// What to run.
    pub function: Function,
    /// Its arguments.
    pub args: Vec<Arg>,
    /// How many objects it returns (their ids are [`ObjectId::for_return`] 1..=n).
    pub num_returns: u32,
    /// What it needs while it runs.
    pub resources: ResourceSet,
    /// Where it may run.
    pub strategy: SchedulingStrategy,
    /// Hard label constraints on the node.
    pub label_selector: Vec<LabelConstraint>,
    /// How many times it is retried after a system failure (worker or node death); default 3.
    pub max_retries: u32,
    /// Whether application errors are retried too.
    pub retry_exceptions: bool,
    /// Normal task, actor creation or actor method.
    pub kind: TaskKind,
}

impl TaskSpec {
    /// The default number of retries.
    pub const DEFAULT_MAX_RETRIES: u32 = 3;

    /// A one-CPU normal task calling the function named `function`, with no arguments and one
    /// return value.
    pub fn new(task: TaskId, job: JobId, function: &str) -> TaskSpec {
        TaskSpec::calling(task, job, Function::Named(function.into()))
    }

    /// A one-CPU normal task running `function`, with no arguments and one return value.
    pub fn calling(task: TaskId, job: JobId, function: Function) -> TaskSpec {
        TaskSpec {
            task,
            job,
            function,
            args: Vec::new(),
            num_returns: 1,
            resources: ResourceSet::cpus(1),
            strategy: SchedulingStrategy::Default,
            label_selector: Vec::new(),
            max_retries: Self::DEFAULT_MAX_RETRIES,
            retry_exceptions: false,
            kind: TaskKind::Normal,
        }
    }

    /// The ids of the objects this task returns.
    pub fn return_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (1..=self.num_returns).map(|i| ObjectId::for_return(self.task, i))
    }

    /// Every object this task refers to: its by-reference arguments and the refs nested in its values.
    pub fn referenced_objects(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.args.iter().flat_map(|a| match a {
            Arg::Ref(o) => std::slice::from_ref(o).iter().copied(),
            Arg::Value { nested, .. } => nested.iter().copied(),
        })
    }
}

/// Options of an actor, given when it is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ActorOptions {
    /// A name, unique within `namespace`, under which others can find the actor.
    pub name: Option<String>,
    /// The namespace of `name`.
    pub namespace: String,
    /// A detached actor outlives its creator and its job; it lives until killed.
    pub detached: bool,
    /// How many times the actor is restarted after its worker or node dies (-1 is not allowed; use u32::MAX).
    pub max_restarts: u32,
    /// How many times a method call is retried after the actor died while running it.
    pub max_task_retries: u32,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions { name: None, namespace: "default".into(), detached: false, max_restarts: 0, max_task_retries: 0 }
    }
}

/// How the bundles of a placement group are spread over nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PlacementStrategy {
    /// As few nodes as possible (best effort).
    Pack,
    /// As many nodes as possible (best effort).
    Spread,
    /// All bundles on one node, or not at all.
    StrictPack,
    /// Every bundle on a different node, or not at all.
    StrictSpread,
}

/// A placement group to reserve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PlacementGroupSpec {
    /// The bundles, each reserved whole on one node.
    pub bundles: Vec<ResourceSet>,
    /// How bundles are laid out.
    pub strategy: PlacementStrategy,
    /// An optional name (informational).
    pub name: Option<String>,
    /// A detached group outlives its job.
    pub detached: bool,
}

/// Where the bytes of an object can be found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ObjectData {
    /// The bytes themselves (small objects).
    Inline(Vec<u8>),
    /// Nodes that hold a sealed copy, lowest id first.
    At(Vec<NodeId>),
}

/// A task's return value as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReturnValue {
    /// Which return (must be one of the task's return ids).
    pub object: ObjectId,
    /// Size in bytes.
    pub size: u64,
    /// The bytes, for small values (at most the inline limit); otherwise the value is sealed in the
    /// reporting node's store.
    pub inline: Option<Vec<u8>>,
    /// References serialised inside the value; they stay alive while the value does.
    pub nested: Vec<ObjectId>,
}

/// State changes of an actor, as the head reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ActorState {
    /// Waiting for its creation task to be placed or to finish.
    PendingCreation,
    /// Running on `node` in `worker`.
    Alive {
        /// Where.
        node: NodeId,
        /// Its worker.
        worker: WorkerId,
    },
    /// Restarting after a failure (`restarts` so far).
    Restarting {
        /// Restarts used.
        restarts: u32,
    },
    /// Gone for good.
    Dead(ErrorReason),
}

/// A driver's (or a running task's) messages to the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum DriverToHead {
    /// Submit a task (normal or actor method). The spec is shared, never copied: the Head keeps
    /// this allocation and hands the same one to the node in [`HeadToNode::RunTask`].
    SubmitTask(Arc<TaskSpec>),
    /// Create an actor: `creation` is its constructor task ([`TaskKind::ActorCreation`]).
    CreateActor {
        /// The actor's options.
        options: ActorOptions,
        /// The constructor (shared with the node that runs it, like [`DriverToHead::SubmitTask`]).
        creation: Arc<TaskSpec>,
    },
    /// Record an object the submitter put; inline when small, else sealed on `node`.
    Put {
        /// Its id ([`ObjectId::for_put`]).
        object: ObjectId,
        /// Size in bytes.
        size: u64,
        /// The bytes when small.
        inline: Option<Vec<u8>>,
        /// Where it is sealed, when not inline.
        node: Option<NodeId>,
        /// References inside it.
        nested: Vec<ObjectId>,
    },
    /// The sender took another handle to `object` (for example, after receiving it inside a value).
    AddRef(ObjectId),
    /// The sender dropped its last handle to `object`.
    RemoveRef(ObjectId),
    /// Tell me when these objects are ready or failed (get and wait).
    Subscribe(Vec<ObjectId>),
    /// Cancel a task; `recursive` cancels the tasks it submitted too; `force` kills its worker.
    Cancel {
        /// The task.
        task: TaskId,
        /// Kill the worker if it is running.
        force: bool,
        /// Cancel its children too.
        recursive: bool,
    },
    /// Kill an actor; with `no_restart` false, it may restart if its budget allows.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Forbid restarting.
        no_restart: bool,
    },
    /// Look up a named actor.
    GetNamedActor {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Reserve a placement group with the given id (chosen by the submitter).
    CreatePlacementGroup {
        /// The group's id.
        pg: PlacementGroupId,
        /// What to reserve.
        spec: PlacementGroupSpec,
    },
    /// Remove a placement group: its bundles are freed and the tasks inside it are killed.
    RemovePlacementGroup(PlacementGroupId),
    /// The driver is done: its job ends, its objects and non-detached actors are released.
    FinishJob,
    /// Ask the autoscaler to keep room for these shapes (shape, count), whatever the queued
    /// work; replaces the job's earlier request (an empty list withdraws it).
    RequestResources(Vec<(ResourceSet, u64)>),
}

/// The head's messages to a driver or submitting task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HeadToDriver {
    /// A subscribed object is ready.
    ObjectReady {
        /// The object.
        object: ObjectId,
        /// Size in bytes.
        size: u64,
        /// Its bytes or where to find them.
        data: ObjectData,
    },
    /// A subscribed object can never be produced; `reason` says why.
    ObjectFailed {
        /// The object.
        object: ObjectId,
        /// Why.
        reason: ErrorReason,
    },
    /// A request was refused (unknown id, duplicate, invalid shape...).
    Rejected {
        /// What was wrong.
        error: crate::errors::InputError,
    },
    /// An actor's state changed.
    ActorStateChanged {
        /// The actor.
        actor: ActorId,
        /// Its new state.
        state: ActorState,
    },
    /// The answer to [`DriverToHead::GetNamedActor`].
    NamedActor {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The actor, if one has that name.
        actor: Option<ActorId>,
    },
    /// A placement group was reserved: bundle `i` is on `nodes[i]`.
    PlacementGroupReady {
        /// The group.
        pg: PlacementGroupId,
        /// The node of each bundle.
        nodes: Vec<NodeId>,
    },
    /// A placement group can never be reserved, or was removed.
    PlacementGroupFailed {
        /// The group.
        pg: PlacementGroupId,
        /// Why.
        reason: ErrorReason,
    },
}

/// First message on a new connection to the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Hello {
    /// A node joins with its resources and labels.
    RegisterNode {
        /// Must be [`PROTOCOL_VERSION`].
        version: u32,
        /// What it offers.
        resources: ResourceSet,
        /// Its labels.
        labels: Labels,
    },
    /// A driver starts a job.
    RegisterJob {
        /// Must be [`PROTOCOL_VERSION`].
        version: u32,
        /// A name for the job (informational).
        name: String,
    },
}

/// The head's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Welcome {
    /// The node is registered under this id.
    NodeRegistered(NodeId),
    /// The job started under this id.
    JobRegistered(JobId),
    /// Refused.
    Refused(crate::errors::InputError),
}

/// Where a task argument's bytes are, as the head tells the node that will run the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ArgSource {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// Nodes that hold a copy (the running node may be among them).
    At {
        /// Size in bytes.
        size: u64,
        /// Holders, preferred first.
        nodes: Vec<NodeId>,
    },
}

/// The head's messages to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HeadToNode {
    /// Run attempt `attempt` of a task with this allocation; by-reference arguments are at `args`.
    RunTask {
        /// The task (shared with the head's own record: dispatching copies nothing).
        spec: Arc<TaskSpec>,
        /// Its attempt number (0 first).
        attempt: u32,
        /// The resources (and GPU devices) it holds.
        allocation: Allocation,
        /// Where each by-reference argument can be fetched.
        args: Vec<(ObjectId, ArgSource)>,
        /// For an actor method: the worker hosting the actor.
        actor_worker: Option<WorkerId>,
        /// Run it after these attempts of tasks on this node end, in the resources the first
        /// holds: that one runs, the others were handed over before this one to follow it, in
        /// order (a successor handed over ahead of time, so that a worker goes from one task to
        /// the next without a round trip to the head). It waits for the last of them the node
        /// still holds; if the node holds none, it runs now. Empty for a task dispatched as usual.
        after: Vec<(TaskId, u32)>,
    },
    /// Cancel a task attempt; `force` kills its worker.
    CancelTask {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Kill the worker.
        force: bool,
    },
    /// Stop an actor's worker.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Its worker.
        worker: WorkerId,
    },
    /// Delete these objects from the local store.
    FreeObjects(Vec<ObjectId>),
    /// Fetch a copy of `object` from `from` (to rebuild lost redundancy or for locality).
    CopyObject {
        /// The object.
        object: ObjectId,
        /// Its size.
        size: u64,
        /// Holders to fetch from.
        from: Vec<NodeId>,
    },
    /// Forward a message to the submitter running `task` on this node.
    ToSubmitter {
        /// The running task that submitted work.
        task: TaskId,
        /// The message.
        msg: HeadToDriver,
    },
    /// The head does not know this node (declared dead or removed): stop everything and register again.
    Reregister,
    /// Stop accepting work; running tasks finish.
    Drain,
    /// A successor handed over to follow a task (`RunTask::after`) runs now on its own: the task
    /// it followed is blocked and lent it its CPUs.
    StartNow {
        /// The successor.
        task: TaskId,
        /// Its attempt.
        attempt: u32,
    },
}

/// How a task attempt ended, as the node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum TaskOutcome {
    /// It returned these values.
    Finished(Vec<ReturnValue>),
    /// It failed.
    Failed(TaskFailure),
}

/// A node's messages to the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum NodeToHead {
    /// Liveness, on its own timer.
    Heartbeat,
    /// An attempt started in `worker` (actor creation tasks tell the head which worker hosts the actor).
    TaskStarted {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: WorkerId,
    },
    /// A running attempt is blocked waiting for objects (its code called `get` or `wait`): the
    /// head lends its CPUs to other tasks until [`NodeToHead::TaskUnblocked`], so that tasks that
    /// wait for tasks they submitted cannot starve the cluster of CPUs and deadlock.
    TaskBlocked {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// A blocked attempt runs again: it takes its CPUs back if they are free, else runs on
    /// without them until it ends (the node is briefly oversubscribed, rather than wait).
    TaskUnblocked {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt ended.
    TaskEnded {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// How.
        outcome: TaskOutcome,
    },
    /// An actor's worker died on its own (not killed by the head's `KillActor`). When it died
    /// mid-call, this comes before the call's `TaskEnded`, so that the head restarts the actor
    /// instead of retrying the call on the dead worker.
    ActorWorkerDied {
        /// The actor.
        actor: ActorId,
        /// Its worker.
        worker: WorkerId,
    },
    /// A copy of `object` was sealed in this node's store (a pulled argument or a copy).
    ObjectAdded {
        /// The object.
        object: ObjectId,
        /// Size in bytes.
        size: u64,
    },
    /// The local copy of `object` is gone (evicted or deleted).
    ObjectRemoved(ObjectId),
    /// A message from the submitter running `task` on this node.
    FromSubmitter {
        /// The running task.
        task: TaskId,
        /// The message (boxed: most messages a node sends are small).
        msg: Box<DriverToHead>,
    },
    /// The node is leaving on purpose.
    Leaving,
}

/// A node's messages to another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum NodeToNode {
    /// Send me `object` (the bytes move through the hosts' data path in chunks).
    Pull {
        /// The object.
        object: ObjectId,
    },
    /// The answer to a pull: `Some(size)` when the object was sent, `None` when it is not here.
    PullReply {
        /// The object.
        object: ObjectId,
        /// Its size, or not here.
        size: Option<u64>,
    },
}
