//! Typed errors: users' problems (why a task or object failed) and bad input (why an input was refused).
//!
//! Users' problems travel to whoever waits as [`ErrorReason`]; bad input is answered with an
//! [`InputError`] (returned from `handle_input` for the host to log, and sent back to the sender
//! where there is one). Kernel bugs are panics, never errors.

use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::resources::{InvalidRequest, ResourceSet};
use serde::{Deserialize, Serialize};

/// Why one attempt of a task failed, as its node reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum TaskFailure {
    /// The user's code raised an error (retried only with `retry_exceptions`).
    #[error("the task raised an error: {message}")]
    Application {
        /// The error, as text for people.
        message: String,
    },
    /// The worker process died while running it.
    #[error("the worker process died (exit code {exit_code:?})")]
    WorkerDied {
        /// The exit code, when known.
        exit_code: Option<i32>,
    },
    /// Its worker held it to run next and was killed to cancel the attempt before it by force:
    /// it may have started. Retried without spending the task's retries: the failure is the
    /// cancelled task's.
    #[error("its worker was killed to cancel task {cancelled} by force")]
    WorkerKilledForCancel {
        /// The task cancelled.
        cancelled: crate::ids::TaskId,
    },
    /// No worker could be started for it.
    #[error("no worker could be started: {message}")]
    WorkerStartFailed {
        /// What went wrong.
        message: String,
    },
    /// An argument could not be fetched from any holder.
    #[error("argument {object} could not be fetched")]
    ArgumentUnavailable {
        /// The argument.
        object: ObjectId,
    },
    /// The function is not registered in the worker binary.
    #[error("function {name:?} is not registered")]
    UnknownFunction {
        /// Its name.
        name: String,
    },
    /// The attempt was cancelled.
    #[error("the attempt was cancelled")]
    Cancelled,
}

impl TaskFailure {
    /// Whether a failure of the system (not of the user's code) caused it; such failures are retried.
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            TaskFailure::WorkerDied { .. }
                | TaskFailure::WorkerKilledForCancel { .. }
                | TaskFailure::WorkerStartFailed { .. }
                | TaskFailure::ArgumentUnavailable { .. }
        )
    }
}

/// Why an object (a task's return value, or a put) will never be available. Delivered to every
/// subscriber of the object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ErrorReason {
    /// The producing task failed and its retries are exhausted (or the failure is not retried).
    #[error("task {task} failed after {attempts} attempt(s): {failure}")]
    TaskFailed {
        /// The task.
        task: TaskId,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        failure: TaskFailure,
    },
    /// The producing task's node was lost and its retries are exhausted.
    #[error("task {task} was lost with node {node} and has no retries left")]
    NodeLost {
        /// The task.
        task: TaskId,
        /// The node.
        node: NodeId,
    },
    /// The producing task was cancelled.
    #[error("task {task} was cancelled")]
    Cancelled {
        /// The task.
        task: TaskId,
    },
    /// No node of the cluster could ever run the task (after the grace period).
    #[error("task {task} is infeasible: no node can ever provide {request:?}")]
    Infeasible {
        /// The task.
        task: TaskId,
        /// What it asked for.
        request: ResourceSet,
    },
    /// The request is malformed.
    #[error("task {task} has an invalid resource request: {error}")]
    InvalidRequest {
        /// The task.
        task: TaskId,
        /// What is wrong with it.
        error: InvalidRequest,
    },
    /// The object's owner died, so the object and its metadata are gone (Ray's semantics).
    #[error("the owner {owner} of the object died")]
    OwnerDied {
        /// The owner (a task attempt, or a job's driver id).
        owner: TaskId,
    },
    /// Every copy was lost and the object was created by `put`, which cannot be rebuilt.
    #[error("object {object} was put and every copy was lost; put objects cannot be reconstructed")]
    PutObjectLost {
        /// The object.
        object: ObjectId,
    },
    /// Every copy was lost and its lineage was evicted to respect `max_lineage_bytes`.
    #[error("object {object} was lost and its lineage was evicted (max_lineage_bytes)")]
    LineageEvicted {
        /// The object.
        object: ObjectId,
    },
    /// The object's value is gone and rebuilding it would take another run of its producer,
    /// whose retries are spent (every rebuild counts against `max_retries`).
    #[error("object {object} is gone and cannot be rebuilt: task {task} already ran {attempts} time(s), its retries are spent")]
    RetriesExhausted {
        /// The object.
        object: ObjectId,
        /// Its producer.
        task: TaskId,
        /// How many times the producer ran.
        attempts: u32,
    },
    /// An argument of the producing task can never be available.
    #[error("task {task} depends on {object}, which failed: {cause}")]
    DependencyFailed {
        /// The task.
        task: TaskId,
        /// The failed argument.
        object: ObjectId,
        /// Why that argument failed.
        cause: Box<ErrorReason>,
    },
    /// The actor died and will not restart.
    #[error("actor {actor} died: {cause}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Why.
        cause: ActorDeath,
    },
    /// The job ended, releasing its objects.
    #[error("job {job} finished")]
    JobFinished {
        /// The job.
        job: JobId,
    },
    /// The placement group was removed.
    #[error("placement group {pg} was removed")]
    PlacementGroupRemoved {
        /// The group.
        pg: PlacementGroupId,
    },
    /// The placement group can never be reserved.
    #[error("placement group {pg} is infeasible")]
    PlacementGroupInfeasible {
        /// The group.
        pg: PlacementGroupId,
    },
}

/// Why an actor died.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ActorDeath {
    /// Killed on request.
    #[error("killed")]
    Killed,
    /// Its constructor failed.
    #[error("creation failed: {0}")]
    CreationFailed(Box<ErrorReason>),
    /// Its worker or node died and `max_restarts` is used up.
    #[error("restarts exhausted after {restarts}")]
    RestartsExhausted {
        /// Restarts used.
        restarts: u32,
    },
    /// Its owner (the creator) died and it is not detached.
    #[error("its owner died")]
    OwnerDied,
    /// Its job finished and it is not detached.
    #[error("its job finished")]
    JobFinished,
}

/// Why the head refused an input. Nothing already accepted is affected by a refused input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum InputError {
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (expected {expected})")]
    VersionMismatch {
        /// What it announced.
        got: u32,
        /// What the head speaks.
        expected: u32,
    },
    /// A node that is not registered, or was declared dead or removed.
    #[error("node {0} is not registered (it may have been declared dead); it must register again")]
    UnknownNode(NodeId),
    /// A job that is not registered or has finished.
    #[error("job {0} is not running")]
    UnknownJob(JobId),
    /// A task the head does not know.
    #[error("task {0} is unknown")]
    UnknownTask(TaskId),
    /// A connection introduced itself a second time (a duplicated `Connect`).
    #[error("connection {0} already introduced itself")]
    DuplicateConnection(crate::ids::ConnId),
    /// A task id used twice.
    #[error("task {0} was already submitted")]
    DuplicateTask(TaskId),
    /// An object the head does not know.
    #[error("object {0} is unknown")]
    UnknownObject(ObjectId),
    /// An object id used twice.
    #[error("object {0} already exists")]
    DuplicateObject(ObjectId),
    /// An actor the head does not know.
    #[error("actor {0} is unknown")]
    UnknownActor(ActorId),
    /// An actor name already taken in its namespace.
    #[error("an actor named {name:?} already exists in namespace {namespace:?}")]
    DuplicateActorName {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// A placement group the head does not know.
    #[error("placement group {0} is unknown")]
    UnknownPlacementGroup(PlacementGroupId),
    /// A placement group id used twice.
    #[error("placement group {0} already exists")]
    DuplicatePlacementGroup(PlacementGroupId),
    /// A report about a task attempt that is not the current one on that node (late or duplicated).
    #[error("stale report for task {task} attempt {attempt} from node {node}")]
    StaleAttempt {
        /// The task.
        task: TaskId,
        /// The reported attempt.
        attempt: u32,
        /// The reporting node.
        node: NodeId,
    },
    /// A message from a submitter task that is not running on the reporting node.
    #[error("task {task} is not running on node {node}, so it cannot submit")]
    SubmitterNotRunning {
        /// The claimed submitter.
        task: TaskId,
        /// The reporting node.
        node: NodeId,
    },
    /// A spec that contradicts itself (kind, returns, ids).
    #[error("malformed request: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// A worker the node does not know.
    #[error("worker {0} is unknown")]
    UnknownWorker(WorkerId),
}
