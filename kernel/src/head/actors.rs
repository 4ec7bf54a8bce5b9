//! Actors: creation as a placed task, a dedicated worker, method calls ordered per caller,
//! restarts (`max_restarts`), method retries (`max_task_retries`), names, detached actors,
//! fate-sharing with the owner, and kill.
//!
//! The actor holds the resources of its creation task for its whole life. Method calls use no
//! resources of their own and run one at a time in the actor's worker. Calls from one caller are
//! dispatched in the order of their sequence numbers; a call that fails before it runs is skipped
//! so it never blocks the calls after it.

use super::{Head, HeadOutput};
use crate::errors::{ActorDeath, ErrorReason, InputError};
use crate::ids::{ActorId, JobId, NodeId, PlacementGroupId, TaskId, WorkerId};
use crate::proto::{ActorOptions, ActorState, HeadToDriver, HeadToNode, TaskKind, TaskSpec};
use crate::resources::Allocation;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Life {
    Pending,
    Alive,
    Restarting,
    Dead(ErrorReason),
}

/// Calls from one caller: dispatched lowest sequence number first, once every lower number was submitted.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CallerQueue {
    /// The lowest sequence number not yet submitted.
    submitted_upto: u64,
    /// Submitted numbers above `submitted_upto`.
    seen_above: BTreeSet<u64>,
    /// Submitted calls not dispatched yet (or sent back for a retry).
    waiting: BTreeMap<u64, TaskId>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ActorRecord {
    options: ActorOptions,
    creation: TaskId,
    job: JobId,
    owner: TaskId,
    life: Life,
    node: Option<NodeId>,
    worker: Option<WorkerId>,
    allocation: Option<(NodeId, Allocation, Option<super::BundleRef>)>,
    restarts: u32,
    callers: BTreeMap<TaskId, CallerQueue>,
    running_calls: BTreeSet<TaskId>,
}

/// What the Head tells about an actor.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActorSummary {
    /// Its state.
    pub state: ActorState,
    /// Restarts used.
    pub restarts: u32,
    /// Its name, if any.
    pub name: Option<String>,
    /// Calls dispatched and not ended.
    pub running_calls: usize,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct ActorTable {
    actors: BTreeMap<ActorId, ActorRecord>,
    names: BTreeMap<(String, String), ActorId>,
    by_creation: BTreeMap<TaskId, ActorId>,
}

impl ActorTable {
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<ActorId> {
        self.names.get(&(namespace.to_string(), name.to_string())).copied()
    }

    /// Every actor's creation task, in task id order.
    pub fn creation_tasks(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.by_creation.keys().copied()
    }

    pub fn max_task_retries(&self, actor: ActorId) -> u32 {
        self.actors.get(&actor).map_or(0, |a| a.options.max_task_retries)
    }

    pub fn max_restarts(&self, actor: ActorId) -> u32 {
        self.actors.get(&actor).map_or(0, |a| a.options.max_restarts)
    }

    /// The creation task of an actor.
    pub fn creation_of(&self, actor: ActorId) -> Option<TaskId> {
        self.actors.get(&actor).map(|a| a.creation)
    }

    pub fn is_live(&self, actor: ActorId) -> bool {
        self.actors.get(&actor).is_some_and(|a| !matches!(a.life, Life::Dead(_)))
    }

    /// Whether lost outputs of the actor's calls can be rebuilt by calling it again.
    pub fn can_rerun_calls(&self, actor: ActorId) -> bool {
        self.actors.get(&actor).is_some_and(|a| !matches!(a.life, Life::Dead(_)) && a.options.max_task_retries > 0)
    }

    /// Why the actor died, if it is dead.
    pub fn death(&self, actor: ActorId) -> Option<&ErrorReason> {
        self.actors.get(&actor).and_then(|a| match &a.life {
            Life::Dead(reason) => Some(reason),
            _ => None,
        })
    }

    pub fn node_of_creation_task(&self, task: TaskId) -> Option<NodeId> {
        let actor = self.actors.get(self.by_creation.get(&task)?)?;
        (actor.life == Life::Alive).then_some(actor.node).flatten()
    }

    /// `task` when it is the creation task of an actor alive on `node` (the actor speaking for itself).
    pub fn holder_on_node(&self, task: TaskId, node: NodeId) -> Option<TaskId> {
        (self.node_of_creation_task(task) == Some(node)).then_some(task)
    }

    pub fn set_worker(&mut self, actor: ActorId, worker: WorkerId) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.worker = Some(worker);
        }
    }

    pub fn park_allocation(
        &mut self,
        actor: ActorId,
        node: NodeId,
        alloc: Allocation,
        bundle: Option<(PlacementGroupId, u32)>,
    ) {
        let record = self.actors.get_mut(&actor).expect("parking for an unknown actor");
        assert!(record.allocation.is_none(), "actor {actor} already holds an allocation");
        record.allocation = Some((node, alloc, bundle));
        record.node = Some(node);
    }

    pub fn summary(&self, actor: ActorId) -> Option<ActorSummary> {
        let a = self.actors.get(&actor)?;
        Some(ActorSummary {
            state: a.state(),
            restarts: a.restarts,
            name: a.options.name.clone(),
            running_calls: a.running_calls.len(),
        })
    }

    /// Allocations held by live actors, for the invariants.
    pub fn allocations(&self) -> impl Iterator<Item = (NodeId, &Allocation, Option<(PlacementGroupId, u32)>)> {
        self.actors.values().filter_map(|a| a.allocation.as_ref().map(|(n, al, b)| (*n, al, *b)))
    }
}

impl ActorRecord {
    fn state(&self) -> ActorState {
        match &self.life {
            Life::Pending => ActorState::PendingCreation,
            Life::Alive => ActorState::Alive {
                node: self.node.expect("alive actor has a node"),
                worker: self.worker.unwrap_or(WorkerId(0)),
            },
            Life::Restarting => ActorState::Restarting { restarts: self.restarts },
            Life::Dead(reason) => ActorState::Dead(reason.clone()),
        }
    }
}

impl Head {
    pub(super) fn create_actor(
        &mut self,
        submitter: TaskId,
        job: JobId,
        options: ActorOptions,
        creation: std::sync::Arc<TaskSpec>,
    ) -> Result<(), InputError> {
        self.validate_spec(job, &creation)?;
        let TaskKind::ActorCreation(actor) = creation.kind else {
            return Err(InputError::Malformed { what: "CreateActor needs an ActorCreation task".into() });
        };
        if self.actors.actors.contains_key(&actor) {
            return Err(InputError::Malformed { what: format!("actor {actor} already exists") });
        }
        if let Some(name) = &options.name {
            let key = (options.namespace.clone(), name.clone());
            if self.actors.names.get(&key).is_some_and(|a| self.actors.is_live(*a)) {
                return Err(InputError::DuplicateActorName { namespace: key.0, name: key.1 });
            }
            self.actors.names.insert(key, actor);
        }
        let task = creation.task;
        let record = ActorRecord {
            options,
            creation: task,
            job,
            owner: submitter,
            life: Life::Pending,
            node: None,
            worker: None,
            allocation: None,
            restarts: 0,
            callers: BTreeMap::new(),
            running_calls: BTreeSet::new(),
        };
        self.actors.actors.insert(actor, record);
        self.actors.by_creation.insert(task, actor);
        self.accept_task(submitter, creation);
        match self.tasks.get(task).expect("accepted").spec.resources.validate() {
            Err(error) => self.fail_task(task, ErrorReason::InvalidRequest { task, error }),
            Ok(()) => self.resolve_dependencies(task),
        }
        Ok(())
    }

    /// Checks a method call before it is accepted: a known actor, a fresh sequence number.
    pub(super) fn check_actor_call(&self, submitter: TaskId, spec: &TaskSpec) -> Result<(), InputError> {
        let TaskKind::ActorMethod { actor, seq } = spec.kind else { return Ok(()) };
        let record = self.actors.actors.get(&actor).ok_or(InputError::UnknownActor(actor))?;
        if let Some(q) = record.callers.get(&submitter) {
            if seq < q.submitted_upto || q.seen_above.contains(&seq) {
                return Err(InputError::Malformed { what: format!("call {seq} to {actor} was already submitted") });
            }
        }
        Ok(())
    }

    /// Registers an accepted call with its caller's queue; fails it at once if the actor is dead.
    pub(super) fn register_actor_call(&mut self, submitter: TaskId, task: TaskId, actor: ActorId, seq: u64) {
        let record = self.actors.actors.get_mut(&actor).expect("checked actor");
        let queue = record.callers.entry(submitter).or_default();
        queue.seen_above.insert(seq);
        while queue.seen_above.remove(&queue.submitted_upto) {
            queue.submitted_upto += 1;
        }
        queue.waiting.insert(seq, task);
        if let Life::Dead(reason) = record.life.clone() {
            self.fail_task(task, reason);
        }
    }

    /// Dispatches every call that is next in its caller's order and ready, if the actor is alive.
    pub(super) fn on_actor_call_ready(&mut self, actor: ActorId) {
        let Some(record) = self.actors.actors.get_mut(&actor) else { return };
        if record.life != Life::Alive {
            return;
        }
        let (node, worker) = (record.node.expect("alive actor has a node"), record.worker);
        let mut to_dispatch = Vec::new();
        for queue in record.callers.values_mut() {
            while let Some((&seq, &task)) = queue.waiting.first_key_value() {
                let queued = self.tasks.get(task).is_some_and(|t| matches!(t.state, super::tasks::TaskState::Queued));
                let ended = self.tasks.get(task).is_none_or(|t| t.state.is_ended());
                if ended {
                    queue.waiting.remove(&seq);
                    continue;
                }
                if seq >= queue.submitted_upto || !queued {
                    break;
                }
                queue.waiting.remove(&seq);
                to_dispatch.push(task);
            }
        }
        for task in to_dispatch {
            self.actors.actors.get_mut(&actor).expect("actor").running_calls.insert(task);
            self.dispatch(task, node, Allocation::default(), None, worker);
        }
    }

    /// A call sent back for a retry goes back into its caller's queue.
    pub(super) fn requeue_actor_call(&mut self, actor: ActorId, task: TaskId) {
        let record = self.tasks.get(task).expect("task");
        let (caller, TaskKind::ActorMethod { seq, .. }) = (record.owner, &record.spec.kind) else { return };
        let seq = *seq;
        if let Some(a) = self.actors.actors.get_mut(&actor) {
            a.running_calls.remove(&task);
            a.callers.entry(caller).or_default().waiting.insert(seq, task);
        }
    }

    pub(super) fn on_actor_call_ended(&mut self, actor: ActorId, task: TaskId) {
        if let Some(a) = self.actors.actors.get_mut(&actor) {
            a.running_calls.remove(&task);
        }
        self.on_actor_call_ready(actor);
    }

    /// The constructor finished: the actor is alive where it ran.
    pub(super) fn on_actor_created(&mut self, actor: ActorId) {
        let record = self.actors.actors.get_mut(&actor).expect("created actor exists");
        if matches!(record.life, Life::Dead(_)) {
            return;
        }
        record.life = Life::Alive;
        let node = record.node.expect("created actor has a node");
        let (owner, state) = (record.owner, record.state());
        self.nodes.get_mut(node).expect("actor on a live node").actors.insert(actor);
        self.send_to_submitter(owner, HeadToDriver::ActorStateChanged { actor, state });
        self.on_actor_call_ready(actor);
    }

    pub(super) fn on_actor_creation_failed(&mut self, actor: ActorId, reason: ErrorReason) {
        self.actor_dies(actor, ActorDeath::CreationFailed(Box::new(reason)));
    }

    /// The node running the constructor died.
    pub(super) fn on_actor_creation_lost(&mut self, actor: ActorId, _node: NodeId) {
        self.restart_or_die(actor);
    }

    /// The node hosting a live actor died.
    pub(super) fn on_actor_lost(&mut self, actor: ActorId, _node: NodeId) {
        self.restart_or_die(actor);
    }

    pub(super) fn on_actor_worker_died(
        &mut self,
        node: NodeId,
        actor: ActorId,
        worker: WorkerId,
    ) -> Result<(), InputError> {
        let record = self.actors.actors.get(&actor).ok_or(InputError::UnknownActor(actor))?;
        if record.life != Life::Alive || record.node != Some(node) || record.worker.is_some_and(|w| w != worker) {
            return Err(InputError::UnknownWorker(worker));
        }
        for task in record.running_calls.clone() {
            self.on_attempt_lost(task, node, crate::errors::TaskFailure::WorkerDied { exit_code: None });
        }
        self.restart_or_die(actor);
        Ok(())
    }

    pub(super) fn kill_actor(&mut self, actor: ActorId, no_restart: bool) -> Result<(), InputError> {
        let record = self.actors.actors.get(&actor).ok_or(InputError::UnknownActor(actor))?;
        if matches!(record.life, Life::Dead(_)) {
            return Ok(());
        }
        let alive = record.life == Life::Alive;
        let (node, worker, calls) = (record.node, record.worker, record.running_calls.clone());
        if let (true, Some(node), Some(worker)) = (alive, node, worker) {
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::KillActor { actor, worker } });
        }
        if no_restart {
            self.actor_dies(actor, ActorDeath::Killed);
        } else if alive {
            for task in calls {
                if let Some(node) = node {
                    self.on_attempt_lost(task, node, crate::errors::TaskFailure::WorkerDied { exit_code: None });
                }
            }
            self.restart_or_die(actor);
        }
        Ok(())
    }

    /// The actor's process is gone: restart it within `max_restarts`, or it dies.
    fn restart_or_die(&mut self, actor: ActorId) {
        let record = self.actors.actors.get_mut(&actor).expect("actor");
        if matches!(record.life, Life::Dead(_)) {
            return;
        }
        let creation = record.creation;
        self.release_actor(actor);
        // The actor's process owned what its methods created.
        self.on_owner_died(creation);
        let record = self.actors.actors.get_mut(&actor).expect("actor");
        if record.restarts >= record.options.max_restarts {
            let restarts = record.restarts;
            self.actor_dies(actor, ActorDeath::RestartsExhausted { restarts });
            return;
        }
        record.restarts += 1;
        record.life = Life::Restarting;
        let (owner, state) = (record.owner, record.state());
        self.send_to_submitter(owner, HeadToDriver::ActorStateChanged { actor, state });
        self.resubmit_creation(creation);
    }

    /// Runs the constructor again for a restart. A finished constructor borrows its arguments again.
    fn resubmit_creation(&mut self, creation: TaskId) {
        let task = self.tasks.get_mut(creation).expect("creation task of a live actor");
        assert!(task.state.running_node().is_none(), "restarting an actor whose constructor still runs");
        let was_finished = matches!(task.state, super::tasks::TaskState::Finished);
        task.attempt += 1;
        task.state = super::tasks::TaskState::WaitingDeps { missing: 0 };
        self.stats.retries += 1;
        if was_finished {
            let refs: Vec<_> = self.tasks.get(creation).expect("task").spec.referenced_objects().collect();
            for object in refs {
                self.add_arg_use(object);
            }
        }
        self.resolve_dependencies(creation);
    }

    /// Gives back the actor's resources and unlinks it from its node.
    fn release_actor(&mut self, actor: ActorId) {
        let record = self.actors.actors.get_mut(&actor).expect("actor");
        let parked = record.allocation.take();
        let node = record.node.take();
        record.worker = None;
        if let Some(node) = node {
            if let Some(n) = self.nodes.get_mut(node) {
                n.actors.remove(&actor);
            }
        }
        if let Some((node, alloc, bundle)) = parked {
            self.release_allocation(node, &alloc, bundle);
            self.check_drained(node);
        }
    }

    /// The actor is dead for good: its calls fail, its name is free, its owner is told.
    fn actor_dies(&mut self, actor: ActorId, cause: ActorDeath) {
        let Some(record) = self.actors.actors.get_mut(&actor) else { return };
        if matches!(record.life, Life::Dead(_)) {
            return;
        }
        let reason = ErrorReason::ActorDied { actor, cause };
        record.life = Life::Dead(reason.clone());
        let creation = record.creation;
        if let Some(name) = record.options.name.clone() {
            let key = (record.options.namespace.clone(), name);
            if self.actors.names.get(&key) == Some(&actor) {
                self.actors.names.remove(&key);
            }
        }
        if let (Some(node), Some(worker)) = (record.node, record.worker) {
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::KillActor { actor, worker } });
        }
        self.release_actor(actor);
        let record = self.actors.actors.get_mut(&actor).expect("actor");
        let mut calls: Vec<TaskId> = record.running_calls.iter().copied().collect();
        for q in record.callers.values_mut() {
            calls.extend(std::mem::take(&mut q.waiting).into_values());
        }
        let owner = record.owner;
        for task in calls {
            self.fail_task(task, reason.clone());
        }
        self.fail_task(creation, reason.clone());
        self.send_to_submitter(owner, HeadToDriver::ActorStateChanged { actor, state: ActorState::Dead(reason) });
        self.forget_task_if_done(creation);
    }

    /// Non-detached actors created by `owner` share its fate (`death` says how it ended).
    pub(super) fn kill_owned_actors(&mut self, owner: TaskId, death: ActorDeath) {
        self.kill_live_actors(|a| a.owner == owner && !a.options.detached, death);
    }

    /// Non-detached actors of a finished job die with it.
    pub(super) fn kill_job_actors(&mut self, job: JobId) {
        self.kill_live_actors(|a| a.job == job && !a.options.detached, ActorDeath::JobFinished);
    }

    /// Every live actor that `doomed` selects dies with `death`, in id order.
    fn kill_live_actors(&mut self, doomed: impl Fn(&ActorRecord) -> bool, death: ActorDeath) {
        let actors: Vec<ActorId> = self
            .actors
            .actors
            .iter()
            .filter(|(_, a)| !matches!(a.life, Life::Dead(_)) && doomed(a))
            .map(|(id, _)| *id)
            .collect();
        for actor in actors {
            self.actor_dies(actor, death.clone());
        }
    }

    /// Checks actor bookkeeping against the node and task tables.
    pub(super) fn check_actor_invariants(&self) {
        for (id, a) in &self.actors.actors {
            match &a.life {
                Life::Alive => {
                    let node = a.node.expect("alive actor has a node");
                    assert!(
                        self.nodes.get(node).is_some_and(|n| n.actors.contains(id)),
                        "alive actor {id} not on a live node"
                    );
                    assert!(a.allocation.is_some(), "alive actor {id} holds no allocation");
                }
                Life::Dead(_) => {
                    assert!(a.allocation.is_none(), "dead actor {id} still holds resources");
                    assert!(a.running_calls.is_empty(), "dead actor {id} has running calls");
                }
                Life::Pending | Life::Restarting => {}
            }
            for call in &a.running_calls {
                let t = self.tasks.get(*call).expect("running call has a record");
                assert!(t.state.running_node().is_some(), "actor {id} call {call} is not running");
            }
        }
    }
}
