//! The Node machine's inputs and outputs: what the host reports, and what it must do.

use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::proto::{DriverToHead, HeadToDriver, HeadToNode, NodeToHead, NodeToNode, TaskOutcome, TaskSpec};
use serde::{Deserialize, Serialize};

/// What the host reports to the node machine. Each comes with `now` through
/// [`Node::handle_input`](super::Node::handle_input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum NodeInput {
    /// The head accepted our registration under this id; heartbeats start now.
    Registered(NodeId),
    /// A message from the head.
    FromHead(HeadToNode),
    /// A control message from another node (the pull protocol, see the module docs).
    FromPeer {
        /// The sending node.
        from: NodeId,
        /// The message.
        msg: NodeToNode,
    },
    /// A worker asked for with [`NodeOutput::StartWorker`] is up and ready to execute.
    WorkerStarted {
        /// The worker.
        worker: WorkerId,
    },
    /// A worker asked for with [`NodeOutput::StartWorker`] could not be started.
    WorkerStartFailed {
        /// The worker.
        worker: WorkerId,
        /// What went wrong, for people.
        message: String,
    },
    /// A worker process exited (killed on request, crashed, or ended by itself).
    WorkerExited {
        /// The worker.
        worker: WorkerId,
        /// Its exit code, when known (a signal has none).
        exit_code: Option<i32>,
    },
    /// A worker finished an attempt it was given with [`NodeOutput::Execute`]. Return values that are
    /// not inline were already sealed in the local store, sizes in the [`crate::proto::ReturnValue`]s.
    TaskDone {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
        /// The attempt, as given in [`NodeOutput::Execute`].
        attempt: u32,
        /// How it ended.
        outcome: TaskOutcome,
    },
    /// A worker gave back attempts handed to it ahead, before starting them (answering
    /// [`NodeOutput::WithdrawTask`], all it asked for); a worker that had started the first says
    /// nothing and runs them all.
    TaskWithdrawn {
        /// The worker.
        worker: WorkerId,
        /// The tasks and attempts, in the order asked.
        tasks: Vec<(TaskId, u32)>,
    },
    /// The task a worker runs is blocked waiting for objects (`get`, `wait`), or runs again:
    /// reported to the head, which lends the task's CPUs to others meanwhile.
    WorkerBlocked {
        /// The worker.
        worker: WorkerId,
        /// Blocked (true) or running again (false).
        blocked: bool,
    },
    /// A running task submits work, puts an object, subscribes... (forwarded to the head as
    /// [`NodeToHead::FromSubmitter`]). A non-inline `Put` whose `node` is this node also records the
    /// object as a primary copy in the local table: the worker sealed its bytes before sending it.
    FromWorker {
        /// The worker running the submitting task.
        worker: WorkerId,
        /// The message.
        msg: DriverToHead,
    },
    /// A client (a driver, which has no store of its own) sealed the bytes of its put `object` in
    /// the local store: it becomes a primary copy here. The client then tells the head itself,
    /// with a `Put` naming this node, on the same connection as its other messages, so that the
    /// head learns of the object before any task that uses it.
    ClientPut {
        /// The object (a put id).
        object: ObjectId,
        /// Its size in bytes.
        size: u64,
    },
    /// The bytes of `object` arrived from a peer and are sealed in the local store (a pull completed).
    ObjectSealed {
        /// The object.
        object: ObjectId,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of `object` are arriving from `from`: a pull that makes progress is not timed out
    /// (its deadline restarts), however long the whole object takes to arrive.
    PullProgress {
        /// The object.
        object: ObjectId,
        /// The peer sending it.
        from: NodeId,
    },
    /// The data path from `from` failed while pulling `object` (connection lost, transfer aborted).
    PullFailed {
        /// The object.
        object: ObjectId,
        /// The peer that was sending it.
        from: NodeId,
    },
    /// A transfer asked for with [`NodeOutput::SendObject`] ended (delivered or not): the object's
    /// transfer pin is released.
    SendEnded {
        /// The object.
        object: ObjectId,
        /// The peer it was sent to.
        to: NodeId,
    },
}

/// What a worker process is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum WorkerKind {
    /// A pool worker: runs normal tasks of its job, one at a time, and is reused.
    Pool,
    /// A worker dedicated to one actor: runs its creation task, then its methods, until it dies.
    Actor(ActorId),
}

/// One argument of an [`NodeOutput::Execute`], aligned with the spec's `args`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ExecArg {
    /// The spec's argument at this position is a value: its bytes are in the spec itself.
    Value,
    /// A by-reference argument whose bytes the head inlined.
    Inline(Vec<u8>),
    /// A by-reference argument sealed in the local store; it stays pinned until the attempt ends.
    Local {
        /// The object.
        object: ObjectId,
        /// Its size in bytes.
        size: u64,
    },
}

/// What the node machine asks its host to do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum NodeOutput {
    /// Send a message to the head.
    ToHead(NodeToHead),
    /// Send a control message to another node.
    ToPeer {
        /// The peer.
        node: NodeId,
        /// The message.
        msg: NodeToNode,
    },
    /// Start a worker process for `job` that sees exactly the GPU devices `gpus` (for example through
    /// `CUDA_VISIBLE_DEVICES`); answer with `WorkerStarted` or `WorkerStartFailed`.
    StartWorker {
        /// The new worker's id (allocated by the node, increasing).
        worker: WorkerId,
        /// The job whose binary it runs.
        job: JobId,
        /// Pool worker or dedicated to an actor.
        kind: WorkerKind,
        /// GPU device indices, in device order (empty for CPU-only work).
        gpus: Vec<u32>,
    },
    /// Run an attempt of a task in a started, idle worker; answer with `TaskDone`.
    Execute {
        /// The worker.
        worker: WorkerId,
        /// The task.
        spec: std::sync::Arc<TaskSpec>,
        /// The head's attempt number, echoed in `TaskDone`.
        attempt: u32,
        /// Its arguments, one per `spec.args` entry.
        args: Vec<ExecArg>,
    },
    /// Ask a worker to stop the attempt it runs (a cooperative, unforced cancel); it still answers
    /// with `TaskDone`. The host may ignore this if its workers cannot be interrupted.
    InterruptTask {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Ask a worker to give back attempts handed to it ahead, the first and those it holds
    /// behind it, in order, if it has not started the first: it gives back all and answers
    /// with `TaskWithdrawn`, or runs them all and answers with a `TaskDone` for each.
    WithdrawTask {
        /// The worker.
        worker: WorkerId,
        /// The tasks and attempts.
        tasks: Vec<(TaskId, u32)>,
    },
    /// Kill a worker process; answer with `WorkerExited`.
    KillWorker {
        /// The worker.
        worker: WorkerId,
    },
    /// Stream the bytes of a local object to a peer that pulled it; answer with `SendEnded`.
    SendObject {
        /// The object.
        object: ObjectId,
        /// The peer.
        to: NodeId,
        /// Its size in bytes.
        size: u64,
    },
    /// Delete an object's bytes from the local store.
    DeleteObject(ObjectId),
    /// Forward a message from the head to the worker running the submitting task.
    ToWorker {
        /// The worker.
        worker: WorkerId,
        /// The message.
        msg: HeadToDriver,
    },
    /// The head declared this node dead: kill every worker, delete every local object, and register
    /// again (the node machine has forgotten everything and waits for a new `Registered`).
    Reset,
}

/// The state of a worker process, as the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    /// Asked to start; `task` is the attempt waiting for it (none when that task was cancelled).
    Starting {
        /// The task leased to it.
        task: Option<TaskId>,
    },
    /// Started and running nothing.
    Idle,
    /// Running an attempt of `task`.
    Busy(TaskId),
    /// Asked to die; waiting for `WorkerExited`.
    Stopping,
}

/// What the node knows about one of its workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The job whose binary it runs.
    pub job: JobId,
    /// Pool or dedicated to an actor.
    pub kind: WorkerKind,
    /// The GPU devices it sees (its lease key, with the job).
    pub gpus: Vec<u32>,
    /// What it is doing.
    pub state: WorkerState,
}

/// Where a task attempt stands on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskPhase {
    /// Waiting for by-reference arguments to be pulled.
    Fetching,
    /// Waiting for a worker to start.
    Leasing(WorkerId),
    /// An actor method waiting for its turn on the actor's worker (or for its arguments).
    ActorQueued(WorkerId),
    /// Executing in a worker.
    Running(WorkerId),
    /// Handed to a worker behind its running attempt (an actor's next method, or a pool worker's
    /// successor task); the worker runs it next, in order. A cancel reaches it as an interrupt:
    /// a worker that has not started it skips it.
    SentAhead(WorkerId),
    /// A successor waiting for this task to end (while its arguments arrive).
    After(TaskId),
}

/// One copy of an object in the local store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalObject {
    /// Size in bytes.
    pub size: u64,
    /// A primary copy (a task return or a put made here) is never evicted, only freed.
    pub primary: bool,
    /// Tasks holding it as an argument; it cannot be evicted or deleted while any does.
    pub pinned_by: crate::vecset::VecSet<TaskId>,
    /// Transfers to peers in progress (one per `SendObject` not yet answered by `SendEnded`).
    pub sends: crate::vecset::VecMap<NodeId, u32>,
    /// The head freed it while it was pinned: deleted once the last pin goes.
    pub free_pending: bool,
    /// Logical time of its last use (least recently used copies are evicted first).
    pub last_used_tick: u64,
}

impl LocalObject {
    /// Whether anything prevents deleting the bytes now.
    pub fn is_pinned(&self) -> bool {
        !self.pinned_by.is_empty() || !self.sends.is_empty()
    }

    /// Whether eviction may take it: an unpinned secondary copy.
    pub fn is_evictable(&self) -> bool {
        !self.primary && !self.is_pinned()
    }
}

/// A pull in progress, as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullStatus {
    /// The holder asked in the current try.
    pub holder: crate::ids::NodeId,
    /// Tries started so far, the current one included.
    pub tries: u32,
    /// The size the head announced, in bytes.
    pub expected_size_bytes: u64,
    /// Tasks waiting for it, by id.
    pub waiters: Vec<TaskId>,
    /// Whether the head asked for a copy (`CopyObject`).
    pub for_copy: bool,
}

/// A worker's answer to [`NodeOutput::WithdrawTask`], over the attempts it holds and has not
/// started, in the order it would run them (`id` names each): if it holds the first asked, it
/// gives back all those asked (the first and those behind it) and returns true; otherwise it
/// started the first, keeps the others to run after it, and returns false.
pub fn withdraw_held<T>(
    held: &mut std::collections::VecDeque<T>,
    asked: &[(TaskId, u32)],
    id: impl Fn(&T) -> (TaskId, u32),
) -> bool {
    let Some(first) = asked.first() else { return false };
    if !held.iter().any(|h| id(h) == *first) {
        return false;
    }
    held.retain(|h| !asked.contains(&id(h)));
    true
}
