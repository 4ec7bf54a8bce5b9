//! Worker events and the end of running attempts: started, start failed, exited, task done,
//! cancel, kill actor, and the messages between running tasks and the head.

use super::io::{NodeOutput, TaskPhase, WorkerKind, WorkerState};
use super::Node;
use crate::errors::{InputError, TaskFailure};
use crate::ids::{ActorId, ObjectId, TaskId, WorkerId};
use crate::proto::{DriverToHead, HeadToDriver, NodeToHead, TaskKind, TaskOutcome};
use crate::vecset::VecSet;

impl Node {
    pub(super) fn on_worker_started(&mut self, worker: WorkerId) -> Result<(), InputError> {
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        match info.state {
            WorkerState::Stopping => Ok(()),
            WorkerState::Starting { task: Some(task) } => {
                self.execute(task, worker);
                Ok(())
            }
            WorkerState::Starting { task: None } => {
                assert_eq!(info.kind, WorkerKind::Pool, "an actor worker outlived its creation task");
                self.workers.set_state(worker, WorkerState::Idle);
                self.trim_idle_workers();
                Ok(())
            }
            WorkerState::Idle | WorkerState::Busy(_) => {
                Err(InputError::Malformed { what: format!("worker {worker} reported started twice") })
            }
        }
    }

    pub(super) fn on_worker_start_failed(&mut self, worker: WorkerId, message: String) -> Result<(), InputError> {
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        let leased = match info.state {
            WorkerState::Starting { task } => task,
            WorkerState::Stopping => None,
            WorkerState::Idle | WorkerState::Busy(_) => {
                return Err(InputError::Malformed { what: format!("worker {worker} failed to start after starting") })
            }
        };
        if let Some(task) = leased {
            let task = self.detach_lease(worker, task);
            self.abort_task(task, TaskFailure::WorkerStartFailed { message });
        }
        self.fail_actor_queue(worker, None);
        self.workers.remove(worker);
        Ok(())
    }

    pub(super) fn on_worker_exited(&mut self, worker: WorkerId, exit_code: Option<i32>) -> Result<(), InputError> {
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        let (kind, state) = (info.kind, info.state);
        match state {
            WorkerState::Stopping | WorkerState::Starting { task: None } => {}
            WorkerState::Starting { task: Some(task) } => {
                let task = self.detach_lease(worker, task);
                self.abort_task(task, TaskFailure::WorkerDied { exit_code });
            }
            WorkerState::Busy(task) => {
                // An actor's process died mid-call: the head must learn that the actor is gone
                // before it hears of the call, or it would retry the call on the dead worker.
                if let WorkerKind::Actor(actor) = kind {
                    self.send_to_head(NodeToHead::ActorWorkerDied { actor, worker });
                }
                self.workers.set_state(worker, WorkerState::Stopping);
                let cancelled = self.tasks[&task].cancel_requested;
                let failure = if cancelled { TaskFailure::Cancelled } else { TaskFailure::WorkerDied { exit_code } };
                self.end_running(task, TaskOutcome::Failed(failure));
                self.release_successor(task);
            }
            WorkerState::Idle => {
                if let WorkerKind::Actor(actor) = kind {
                    self.send_to_head(NodeToHead::ActorWorkerDied { actor, worker });
                }
            }
        }
        self.fail_actor_queue(worker, exit_code);
        self.workers.remove(worker);
        Ok(())
    }

    pub(super) fn on_task_done(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) -> Result<(), InputError> {
        let me = self.registered()?;
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        let current = self.tasks.get(&task).is_some_and(|t| t.attempt == attempt);
        if info.state != WorkerState::Busy(task) || !current {
            return Err(InputError::StaleAttempt { task, attempt, node: me });
        }
        if let TaskOutcome::Finished(values) = &outcome {
            let expected: VecSet<_> = self.tasks[&task].spec.return_ids().collect();
            let reported: VecSet<_> = values.iter().map(|v| v.object).collect();
            if reported != expected || reported.len() != values.len() {
                return Err(InputError::Malformed { what: format!("task {task} reported the wrong return values") });
            }
        }
        let sealed: Vec<(ObjectId, u64)> = match &outcome {
            TaskOutcome::Finished(values) => {
                values.iter().filter(|v| v.inline.is_none()).map(|v| (v.object, v.size)).collect()
            }
            TaskOutcome::Failed(_) => Vec::new(),
        };
        let creation_failed = matches!(self.tasks[&task].spec.kind, TaskKind::ActorCreation(_))
            && !matches!(outcome, TaskOutcome::Finished(_));
        let outcome = match outcome {
            TaskOutcome::Failed(_) if self.tasks[&task].cancel_requested => TaskOutcome::Failed(TaskFailure::Cancelled),
            other => other,
        };
        if let Some(group) = self.tasks[&task].withdraw_asked {
            self.withdrawal_failed(worker, group);
        }
        self.end_running(task, outcome);
        if !self.promote_sent_ahead(worker) {
            self.workers.set_state(worker, WorkerState::Idle);
        }
        for (object, size) in sealed {
            self.seal_here(object, size, true);
        }
        // A successor still waiting for this task takes the worker first, before idle workers
        // are trimmed.
        self.release_successor(task);
        if creation_failed {
            self.stop_worker(worker);
        } else {
            self.trim_idle_workers();
            self.dispatch_actor(worker);
        }
        Ok(())
    }

    /// Removes a running attempt, unpins its arguments and reports `outcome`. The caller has already
    /// moved its worker out of `Busy` or does so right after.
    fn end_running(&mut self, task: TaskId, outcome: TaskOutcome) {
        let record = self.tasks.remove(&task).expect("ending an unknown task");
        assert!(matches!(record.phase, TaskPhase::Running(_)), "{task} is not running");
        assert!(record.missing.is_empty(), "{task} ran without its arguments");
        self.release_pins(task, &record.pinned);
        self.ended.insert((task, record.attempt));
        self.send_to_head(NodeToHead::TaskEnded { task, attempt: record.attempt, outcome });
    }

    pub(super) fn on_cancel_task(&mut self, task: TaskId, attempt: u32, force: bool) -> Result<(), InputError> {
        let me = self.registered()?;
        let record = self.tasks.get(&task).ok_or(InputError::UnknownTask(task))?;
        if record.attempt != attempt {
            return Err(InputError::StaleAttempt { task, attempt, node: me });
        }
        let (worker, started) = match record.phase {
            TaskPhase::Running(worker) => (worker, true),
            TaskPhase::SentAhead(worker) => (worker, false),
            _ => {
                self.abort_task(task, TaskFailure::Cancelled);
                return Ok(());
            }
        };
        // A method is never force-cancelled: killing its worker would kill the actor. Nor is an
        // attempt handed to a worker ahead: the worker runs another one now, and skips this one.
        let is_method = matches!(record.spec.kind, TaskKind::ActorMethod { .. });
        if force && !is_method && started {
            self.kill_busy_worker(worker, task, TaskFailure::Cancelled);
            return Ok(());
        }
        let record = self.tasks.get_mut(&task).expect("task exists");
        record.kill_requested |= force && !is_method;
        if !record.cancel_requested {
            record.cancel_requested = true;
            self.emit(NodeOutput::InterruptTask { worker, task, attempt });
        }
        Ok(())
    }

    /// `KillActor`: its running attempt (creation or method) and queued methods end as
    /// `WorkerDied { exit_code: None }`, the worker is killed; no `ActorWorkerDied` follows.
    pub(super) fn on_kill_actor(&mut self, actor: ActorId, worker: WorkerId) -> Result<(), InputError> {
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        if info.kind != WorkerKind::Actor(actor) {
            return Err(InputError::UnknownActor(actor));
        }
        match info.state {
            WorkerState::Stopping => return Ok(()),
            WorkerState::Starting { task: Some(task) } => {
                let task = self.detach_lease(worker, task);
                self.abort_task(task, TaskFailure::WorkerDied { exit_code: None });
            }
            WorkerState::Busy(task) => {
                self.kill_busy_worker(worker, task, TaskFailure::WorkerDied { exit_code: None });
                return Ok(());
            }
            WorkerState::Idle | WorkerState::Starting { task: None } => {}
        }
        self.stop_worker(worker);
        Ok(())
    }

    /// Kills a worker in the middle of `task`, which ends now with `failure`.
    pub(super) fn kill_busy_worker(&mut self, worker: WorkerId, task: TaskId, failure: TaskFailure) {
        assert_eq!(self.workers.get(worker).map(|w| w.state), Some(WorkerState::Busy(task)));
        self.workers.set_state(worker, WorkerState::Stopping);
        let failure_of_kill = failure.clone();
        self.end_running(task, TaskOutcome::Failed(failure));
        self.emit(NodeOutput::KillWorker { worker });
        // Killed to cancel `task` by force: what it held behind it fails as that cancel's doing.
        let held = match failure_of_kill {
            TaskFailure::Cancelled => TaskFailure::WorkerKilledForCancel { cancelled: task },
            _ => TaskFailure::WorkerDied { exit_code: None },
        };
        self.fail_held(worker, held, None);
        self.release_successor(task);
        assert!(!self.tasks.contains_key(&task));
    }

    /// Detaches the task leased to a starting worker (which is failing, dying or being killed) and
    /// returns it in the `Fetching` phase, ready for [`abort_task`](Self::abort_task).
    fn detach_lease(&mut self, worker: WorkerId, task: TaskId) -> TaskId {
        assert_eq!(self.workers.get(worker).map(|w| w.state), Some(WorkerState::Starting { task: Some(task) }));
        self.workers.set_state(worker, WorkerState::Starting { task: None });
        let record = self.tasks.get_mut(&task).expect("leased task exists");
        record.phase = TaskPhase::Fetching;
        task
    }

    /// Kills a worker: it becomes `Stopping` until `WorkerExited`; methods queued on it fail.
    pub(super) fn stop_worker(&mut self, worker: WorkerId) {
        let state = self.workers.get(worker).expect("stopping an unknown worker").state;
        assert!(!matches!(state, WorkerState::Busy(_)), "stopping {worker} while it runs a task");
        if state != WorkerState::Stopping {
            self.workers.set_state(worker, WorkerState::Stopping);
            self.emit(NodeOutput::KillWorker { worker });
        }
        self.fail_actor_queue(worker, None);
    }

    /// Kills the oldest idle pool workers beyond the limit (all of them while draining).
    pub(super) fn trim_idle_workers(&mut self) {
        let max_idle = if self.draining { 0 } else { self.config.max_idle_workers };
        for worker in self.workers.excess_idle(max_idle) {
            self.stop_worker(worker);
        }
        assert!(self.workers.idle_pool_len() <= max_idle);
    }

    /// `ToSubmitter`: forward to the worker running `task`.
    pub(super) fn on_to_submitter(&mut self, task: TaskId, msg: HeadToDriver) -> Result<(), InputError> {
        let me = self.registered()?;
        match self.tasks.get(&task).map(|t| t.phase) {
            Some(TaskPhase::Running(worker)) => {
                self.emit(NodeOutput::ToWorker { worker, msg });
                Ok(())
            }
            _ => Err(InputError::SubmitterNotRunning { task, node: me }),
        }
    }

    /// A running task blocked in `get` or running again: the head hears it with the attempt.
    pub(super) fn on_worker_blocked(&mut self, worker: WorkerId, blocked: bool) -> Result<(), InputError> {
        self.registered()?;
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        let WorkerState::Busy(task) = info.state else {
            return Err(InputError::Malformed { what: format!("worker {worker} is blocked while running nothing") });
        };
        let record = self.tasks.get(&task).expect("a busy worker's task is held");
        let attempt = record.attempt;
        if let Some(group) = record.withdraw_asked {
            self.withdrawal_failed(worker, group);
        }
        let msg = if blocked {
            NodeToHead::TaskBlocked { task, attempt }
        } else {
            NodeToHead::TaskUnblocked { task, attempt }
        };
        self.send_to_head(msg);
        Ok(())
    }

    /// A running task's message: forwarded to the head; a put sealed here becomes a primary copy.
    pub(super) fn on_worker_message(&mut self, worker: WorkerId, msg: DriverToHead) -> Result<(), InputError> {
        let me = self.registered()?;
        let info = self.workers.get(worker).ok_or(InputError::UnknownWorker(worker))?;
        let WorkerState::Busy(task) = info.state else {
            return Err(InputError::Malformed {
                what: format!("worker {worker} sent a message while running nothing"),
            });
        };
        if let DriverToHead::Put { object, size, inline: None, node: Some(node), .. } = &msg {
            if *node == me {
                self.seal_here(*object, *size, true);
            }
        }
        self.send_to_head(NodeToHead::FromSubmitter { task, msg: Box::new(msg) });
        Ok(())
    }

    pub(super) fn check_workers_against_tasks(&self) {
        for (worker, info) in self.workers.iter() {
            match info.state {
                WorkerState::Busy(task) => {
                    let phase = self.tasks.get(&task).map(|t| t.phase);
                    assert_eq!(phase, Some(TaskPhase::Running(worker)), "{worker} busy with {task}");
                }
                WorkerState::Starting { task: Some(task) } => {
                    let phase = self.tasks.get(&task).map(|t| t.phase);
                    assert_eq!(phase, Some(TaskPhase::Leasing(worker)), "{worker} starting for {task}");
                }
                WorkerState::Starting { task: None } => {
                    assert_eq!(info.kind, WorkerKind::Pool, "actor worker {worker} starting for nothing");
                }
                WorkerState::Idle | WorkerState::Stopping => {}
            }
        }
    }
}
