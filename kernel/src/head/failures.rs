//! Failures: retries within the budget, failing a task for good, the end of a task's life
//! (lineage kept or forgotten), recursive cancellation, and owner death.

use super::tasks::{arg_ref, TaskState};
use super::{Head, HeadOutput};
use crate::errors::{ErrorReason, InputError, TaskFailure};
use crate::ids::{NodeId, ObjectId, TaskId};
use crate::proto::{HeadToNode, TaskKind};

/// How many times in a row a task may find an argument unfetchable before it spends its retries.
pub const MAX_ARGUMENT_FAILURES: u8 = 8;

impl Head {
    /// An attempt failed: retry within the budget, or fail the task for good.
    ///
    /// An argument that could not be fetched says little about the task: usually its holder has
    /// just died and the failure detector has not noticed yet. Such an attempt is tried again
    /// after a pause that grows with each failure (a quarter of the node timeout per failure),
    /// without spending the task's retries, so that the holder is declared dead meanwhile and the
    /// argument rebuilt from lineage; only after [`MAX_ARGUMENT_FAILURES`] does it count.
    pub(super) fn on_attempt_failed(&mut self, task: TaskId, failure: TaskFailure) {
        let record = self.tasks.get_mut(task).expect("task");
        if matches!(failure, TaskFailure::ArgumentUnavailable { .. })
            && matches!(record.spec.kind, TaskKind::Normal)
            && !record.cancel_requested
            && record.argument_failures < MAX_ARGUMENT_FAILURES
        {
            record.argument_failures += 1;
            record.attempt += 1;
            record.state = TaskState::WaitingDeps { missing: 0 };
            let (attempt, failures) = (record.attempt, u64::from(record.argument_failures));
            self.stats.retries += 1;
            let pause = crate::time::Duration((self.config.node_timeout.0 / 4).max(1_000_000) * failures);
            let at = self.now + pause;
            self.set_timer(at, super::Timer::RetryArguments(task, attempt));
            return;
        }
        let record = self.tasks.get_mut(task).expect("task");
        if matches!(failure, TaskFailure::WorkerKilledForCancel { .. }) && !record.cancel_requested {
            // Another task's cancel stopped it: the retry is not charged to it.
            record.retries_left += 1;
        }
        let retryable = !record.cancel_requested
            && (failure.is_system() || (record.spec.retry_exceptions && !matches!(failure, TaskFailure::Cancelled)));
        let cancelled = matches!(failure, TaskFailure::Cancelled) || record.cancel_requested;
        let retries_left = record.retries_left;
        if let TaskKind::ActorMethod { actor, .. } = record.spec.kind {
            self.on_actor_call_ended(actor, task);
        }
        if cancelled {
            self.fail_task(task, ErrorReason::Cancelled { task });
        } else if retryable && retries_left > 0 {
            self.retry_task(task);
        } else {
            self.fail_task_for(task, failure);
        }
    }

    pub(super) fn fail_task_for(&mut self, task: TaskId, failure: TaskFailure) {
        let attempts = self.tasks.get(task).expect("task").attempt + 1;
        self.fail_task(task, ErrorReason::TaskFailed { task, attempts, failure });
    }

    /// The attempt's process is gone (its node died, or its actor's worker): an owner death too.
    /// Without retries left the task fails with `NodeLost` when the node is dead, else `failure`.
    pub(super) fn on_attempt_lost(&mut self, task: TaskId, node: NodeId, failure: TaskFailure) {
        let Some(record) = self.tasks.get(task) else { return };
        if record.state.running_node() != Some(node) {
            return;
        }
        let is_creation = matches!(record.spec.kind, TaskKind::ActorCreation(_));
        let holder = self.holder_of(task);
        self.end_attempt(task);
        if holder == task {
            self.on_owner_died(task);
        }
        if is_creation {
            // The actor's restart logic decides (on_actor_lost runs for the node's actors).
            let TaskKind::ActorCreation(actor) = self.tasks.get(task).expect("task").spec.kind else { unreachable!() };
            self.on_actor_creation_lost(actor, node);
            return;
        }
        let record = self.tasks.get(task).expect("task");
        if !record.cancel_requested && record.retries_left > 0 {
            self.retry_task(task);
        } else if record.cancel_requested {
            self.fail_task(task, ErrorReason::Cancelled { task });
        } else if self.node_is_live(node) {
            self.fail_task_for(task, failure);
        } else {
            self.fail_task(task, ErrorReason::NodeLost { task, node });
        }
    }

    /// The pause after an argument failure is over: resolve the task's arguments again (a lost
    /// one is rebuilt, or waited for) unless the task moved on meanwhile.
    pub(super) fn on_argument_retry(&mut self, task: TaskId, attempt: u32) {
        let Some(record) = self.tasks.get(task) else { return };
        if record.attempt == attempt && matches!(record.state, TaskState::WaitingDeps { missing: 0 }) {
            self.resolve_dependencies(task);
        }
    }

    /// Sends the task back through dependency resolution with one retry less.
    pub(super) fn retry_task(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(task).expect("task");
        assert!(record.retries_left > 0, "retry without budget");
        assert!(!record.state.is_ended() || matches!(record.state, TaskState::Finished), "retry of a failed task");
        record.retries_left -= 1;
        record.attempt += 1;
        record.state = TaskState::WaitingDeps { missing: 0 };
        self.stats.retries += 1;
        if let TaskKind::ActorMethod { actor, .. } = record.spec.kind {
            self.requeue_actor_call(actor, task);
        }
        self.resolve_dependencies(task);
    }

    /// Fails a task that has not finished: its returns fail with `reason`, its borrows end.
    pub(super) fn fail_task(&mut self, task: TaskId, reason: ErrorReason) {
        let Some(record) = self.tasks.get(task) else { return };
        if record.state.is_ended() {
            return;
        }
        if record.state.running_node().is_some() {
            // Its node is told to stop it; the resources are free from now on.
            let (node, attempt) = (record.state.running_node().expect("running"), record.attempt);
            self.end_attempt(task);
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::CancelTask { task, attempt, force: true } });
        }
        let record = self.tasks.get_mut(task).expect("task");
        let cancelled = matches!(reason, ErrorReason::Cancelled { .. });
        record.state = if cancelled { TaskState::Cancelled } else { TaskState::Failed };
        let returns: Vec<ObjectId> = record.spec.return_ids().collect();
        let kind = record.spec.kind.clone();
        self.stats.tasks_failed += 1;
        self.tasks.infeasible.remove(&task);
        self.unwait(task);
        // End the task's own bookkeeping before failing anything: failing its returns fails their
        // waiters, and an actor's death forgets its creation task, either of which may forget this
        // task's record.
        self.on_task_ended_for_good(task, false);
        for object in returns {
            // A rebuild that fails leaves the outputs that still have a copy alone.
            if !self.objects.get(object).is_some_and(|o| o.is_ready()) {
                self.fail_object(object, reason.clone());
            }
        }
        match kind {
            TaskKind::ActorCreation(actor) => self.on_actor_creation_failed(actor, reason),
            TaskKind::ActorMethod { actor, .. } => self.on_actor_call_ended(actor, task),
            TaskKind::Normal => {}
        }
    }

    /// Removes a task from the waiter lists of its arguments.
    pub(super) fn unwait(&mut self, task: TaskId) {
        let refs: Vec<ObjectId> = self.tasks.get(task).expect("task").spec.args.iter().filter_map(arg_ref).collect();
        for object in refs {
            if let Some(record) = self.objects.get_mut(object) {
                record.stop_waiting(task);
            }
        }
    }

    /// The task will not run again (unless rebuilt): its borrows end; lineage is kept if it
    /// finished and some return is still referenced, else the record goes.
    pub(super) fn on_task_ended_for_good(&mut self, task: TaskId, finished: bool) {
        let record = self.tasks.get(task).expect("task");
        let refs: Vec<ObjectId> = record.spec.referenced_objects().collect();
        let by_ref: Vec<ObjectId> = record.spec.args.iter().filter_map(arg_ref).collect();
        let keep_lineage = finished && record.live_returns > 0 && self.is_reconstructable_kind(task);
        if keep_lineage && record.lineage_bytes == 0 {
            for object in &by_ref {
                if let Some(o) = self.objects.get_mut(*object) {
                    o.lineage_uses += 1;
                }
            }
            self.retain_lineage(task);
        }
        for object in refs {
            self.remove_arg_use(object);
        }
        let returns = self.tasks.get(task).map_or(0, |t| t.spec.num_returns);
        for index in 1..=returns {
            // Ids come from the task id alone: a release may forget the task's record meanwhile.
            self.maybe_release(ObjectId::for_return(task, index));
        }
        if !keep_lineage {
            self.forget_task_if_done(task);
        }
    }

    pub(super) fn is_reconstructable_kind(&self, task: TaskId) -> bool {
        let record = self.tasks.get(task).expect("task");
        match record.spec.kind {
            TaskKind::Normal => true,
            TaskKind::ActorMethod { actor, .. } => self.actors.max_task_retries(actor) > 0,
            TaskKind::ActorCreation(_) => false,
        }
    }

    /// Forgets an ended task once no return record remains and it holds no lineage.
    pub(super) fn forget_task_if_done(&mut self, task: TaskId) {
        let Some(record) = self.tasks.get(task) else { return };
        if !record.state.is_ended() || record.live_returns > 0 || record.lineage_bytes > 0 {
            return;
        }
        if matches!(record.spec.kind, TaskKind::ActorCreation(actor) if self.actors.is_live(actor)) {
            return;
        }
        self.tasks.remove(task);
    }

    /// One of `task`'s return records was forgotten.
    pub(super) fn on_return_forgotten(&mut self, task: TaskId, work: &mut super::objects::ReleaseWork) {
        let Some(record) = self.tasks.get_mut(task) else { return };
        record.live_returns -= 1;
        if record.live_returns == 0 && record.state.is_ended() {
            if record.lineage_bytes > 0 {
                let by_ref: Vec<ObjectId> = record.spec.args.iter().filter_map(arg_ref).collect();
                self.drop_lineage(task);
                for object in by_ref {
                    if let Some(o) = self.objects.get_mut(object) {
                        o.lineage_uses -= 1;
                        work.push(object);
                    }
                }
            }
            self.forget_task_if_done(task);
        }
    }

    pub(super) fn cancel_task(&mut self, task: TaskId, force: bool, recursive: bool) -> Result<(), InputError> {
        if self.tasks.get(task).is_none() {
            return Err(InputError::UnknownTask(task));
        }
        let mut work = vec![task];
        while let Some(task) = work.pop() {
            if recursive {
                work.extend(self.tasks.owned_by(task, self.jobs.is_driver(task)));
            }
            self.cancel_one(task, force);
        }
        Ok(())
    }

    pub(super) fn cancel_one(&mut self, task: TaskId, force: bool) {
        let Some(record) = self.tasks.get_mut(task) else { return };
        match &record.state {
            TaskState::Running { node, .. } | TaskState::Next { node, .. } => {
                let (node, attempt) = (*node, record.attempt);
                record.cancel_requested = true;
                if force {
                    self.end_attempt(task);
                    self.on_owner_died(task);
                    self.fail_task(task, ErrorReason::Cancelled { task });
                }
                self.emit(HeadOutput::ToNode { node, msg: HeadToNode::CancelTask { task, attempt, force } });
            }
            TaskState::WaitingDeps { .. } | TaskState::Queued => self.fail_task(task, ErrorReason::Cancelled { task }),
            _ => {}
        }
    }

    /// An owner's process died: its objects fail, its tasks are cancelled, its actors die.
    pub(super) fn on_owner_died(&mut self, owner: TaskId) {
        let (reason, death) = match self.jobs.job_of_driver(owner) {
            Some(job) => (ErrorReason::JobFinished { job }, crate::errors::ActorDeath::JobFinished),
            None => (ErrorReason::OwnerDied { owner }, crate::errors::ActorDeath::OwnerDied),
        };
        let is_driver = self.jobs.is_driver(owner);
        self.drop_all_handles(owner);
        // Owned objects fail first, so that the cancellation of the children producing them does
        // not fail them with `Cancelled` instead of the owner-death reason.
        self.fail_owned_objects(owner, reason);
        for child in self.tasks.owned_by(owner, is_driver) {
            let _ = self.cancel_task(child, true, true);
        }
        self.kill_owned_actors(owner, death);
    }
}
