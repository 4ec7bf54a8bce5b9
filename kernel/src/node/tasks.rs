//! Accepting task attempts, waiting for their arguments, leasing workers, executing, and ending
//! attempts that never ran. Running attempts end in `lifecycle`.

use super::io::{ExecArg, NodeOutput, TaskPhase, WorkerKind, WorkerState};
use super::Node;
use crate::errors::{InputError, TaskFailure};
use crate::ids::{ObjectId, TaskId, WorkerId};
use crate::proto::{Arg, ArgSource, NodeToHead, NodeToNode, TaskKind, TaskSpec};
use crate::resources::Allocation;
use crate::time::Time;
use crate::vecset::{VecMap, VecSet};
use smallvec::{smallvec, SmallVec};
use std::collections::VecDeque;

/// One task attempt held by the node.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub(crate) spec: std::sync::Arc<TaskSpec>,
    /// The head's attempt number, echoed in every report.
    pub(crate) attempt: u32,
    /// GPU device indices of the allocation, in device order (the worker lease key, with the job).
    pub(crate) gpus: Vec<u32>,
    /// Where each by-reference argument is.
    pub(crate) sources: VecMap<ObjectId, ArgSource>,
    /// By-reference arguments not yet local (each has a pull this task waits on).
    pub(crate) missing: VecSet<ObjectId>,
    /// Local arguments this task pins.
    pub(crate) pinned: VecSet<ObjectId>,
    pub(crate) phase: TaskPhase,
    /// An unforced cancel arrived while it ran.
    pub(crate) cancel_requested: bool,
    /// Its worker was asked to give it back (`WithdrawTask`), with the task this names and those
    /// between: only then is `TaskWithdrawn` taken, and only for that request.
    pub(crate) withdraw_asked: Option<TaskId>,
    /// A forced cancel came while it was held by a worker ahead: if that worker turns out to
    /// run it, the worker is killed.
    pub(crate) kill_requested: bool,
}

/// The fields of a `RunTask` order.
pub(super) struct RunOrder {
    pub(super) spec: std::sync::Arc<TaskSpec>,
    pub(super) attempt: u32,
    pub(super) allocation: Allocation,
    pub(super) args: Vec<(ObjectId, ArgSource)>,
    pub(super) actor_worker: Option<WorkerId>,
    pub(super) after: Vec<(TaskId, u32)>,
}

impl Node {
    /// `RunTask`: validate, then accept (or refuse with a report when draining or the actor is gone).
    pub(super) fn on_run_task(&mut self, now: Time, order: RunOrder) -> Result<(), InputError> {
        let RunOrder { spec, attempt, allocation, args, actor_worker, after } = order;
        if self.ended.contains((spec.task, attempt)) {
            // A copy of an order already carried out (a duplicated message).
            return Err(InputError::DuplicateTask(spec.task));
        }
        let sources = self.validate_run_task(&spec, &allocation, args, actor_worker, &after)?;
        let task = spec.task;
        // The last predecessor still held here; those that ended already leave nothing to wait for.
        let predecessor = self.last_held(&after);
        if self.draining && actor_worker.is_none() {
            let message = "the node is draining".to_string();
            self.failure_report(task, attempt, TaskFailure::WorkerStartFailed { message });
            return Ok(());
        }
        if let Some(worker) = actor_worker {
            let alive = self.workers.get(worker).is_some_and(|w| w.state != WorkerState::Stopping);
            if !alive {
                self.failure_report(task, attempt, TaskFailure::WorkerDied { exit_code: None });
                return Ok(());
            }
        }
        if let Some(object) = self.unreachable_argument(&sources) {
            self.failure_report(task, attempt, TaskFailure::ArgumentUnavailable { object });
            return Ok(());
        }
        let phase = match (actor_worker, predecessor) {
            (Some(worker), _) => TaskPhase::ActorQueued(worker),
            (None, Some(before)) => TaskPhase::After(before),
            (None, None) => TaskPhase::Fetching,
        };
        let gpus = allocation.gpus.iter().map(|(d, _)| *d).collect();
        let record = Task {
            spec,
            attempt,
            gpus,
            sources,
            missing: VecSet::new(),
            pinned: VecSet::new(),
            phase,
            cancel_requested: false,
            withdraw_asked: None,
            kill_requested: false,
        };
        self.tasks.insert(task, record);
        self.gather_arguments(now, task);
        match actor_worker {
            Some(worker) => {
                self.actor_queues.entry(worker).or_default().push_back(task);
                self.dispatch_actor(worker);
            }
            None => match predecessor {
                Some(before) => {
                    self.successors.insert(before, task);
                    self.hand_ahead(task);
                }
                None => self.lease_if_ready(task),
            },
        }
        Ok(())
    }

    /// Checks a `RunTask` against itself and this node's state; returns its argument sources.
    fn validate_run_task(
        &self,
        spec: &TaskSpec,
        allocation: &Allocation,
        args: Vec<(ObjectId, ArgSource)>,
        actor_worker: Option<WorkerId>,
        after: &[(TaskId, u32)],
    ) -> Result<VecMap<ObjectId, ArgSource>, InputError> {
        let malformed = |what: String| Err(InputError::Malformed { what });
        if self.tasks.contains_key(&spec.task) {
            return Err(InputError::DuplicateTask(spec.task));
        }
        for (i, (before, attempt)) in after.iter().enumerate() {
            if spec.kind != TaskKind::Normal || *before == spec.task || after[..i].iter().any(|(t, _)| t == before) {
                return malformed(format!("task {} cannot follow {before}", spec.task));
            }
            let held = self.tasks.get(before).is_some_and(|r| r.attempt == *attempt);
            if held && self.tasks[before].spec.kind != TaskKind::Normal {
                return malformed(format!("task {} follows {before}, which is not a normal task", spec.task));
            }
        }
        if let Some(last) = self.last_held(after) {
            // The last one it follows has no successor yet: none waits for it, and none was handed
            // to its worker ahead behind it (one cancelled there, which the worker will skip, no
            // longer counts).
            if self.successors.contains_key(&last) || self.live_behind(last) > 0 {
                return malformed(format!("task {last} already has a successor"));
            }
        }
        let devices: Vec<u32> = allocation.gpus.iter().map(|(d, _)| *d).collect();
        if !devices.windows(2).all(|p| p[0] < p[1]) {
            return malformed(format!("task {}: GPU devices {devices:?} not in order", spec.task));
        }
        match (&spec.kind, actor_worker) {
            (TaskKind::ActorMethod { actor, .. }, Some(worker)) => {
                let kind = self.workers.get(worker).map(|w| w.kind);
                if kind.is_some_and(|k| k != WorkerKind::Actor(*actor)) {
                    return malformed(format!("worker {worker} does not host actor {actor}"));
                }
            }
            (TaskKind::ActorMethod { .. }, None) => return malformed(format!("method {} has no worker", spec.task)),
            (_, Some(_)) => return malformed(format!("task {} is not a method but names a worker", spec.task)),
            (_, None) => {}
        }
        let refs: VecSet<ObjectId> =
            spec.args.iter().filter_map(|a| if let Arg::Ref(o) = a { Some(*o) } else { None }).collect();
        // The first source, in message order, that names no argument or one already named.
        let mut named: SmallVec<[bool; 8]> = smallvec![false; refs.len()];
        for (object, _) in &args {
            match refs.position(object) {
                Some(i) if !named[i] => named[i] = true,
                _ => return malformed(format!("task {}: unexpected or repeated argument source {object}", spec.task)),
            }
        }
        let mut args = args;
        args.sort_unstable_by_key(|(object, _)| *object);
        let sources: VecMap<ObjectId, ArgSource> = VecMap::from_sorted(args);
        if sources.len() != refs.len() {
            return malformed(format!("task {}: a by-reference argument has no source", spec.task));
        }
        Ok(sources)
    }

    /// The first argument that is neither inline, local, being pulled, nor held by another node.
    fn unreachable_argument(&self, sources: &VecMap<ObjectId, ArgSource>) -> Option<ObjectId> {
        let me = self.node_id.expect("registered");
        sources.iter().find_map(|(object, source)| match source {
            ArgSource::Inline(_) => None,
            ArgSource::At { .. } if self.objects.contains(*object) || self.pulls.get(*object).is_some() => None,
            ArgSource::At { nodes, .. } => (!nodes.iter().any(|n| *n != me)).then_some(*object),
        })
    }

    /// Pins the local arguments of a new task and joins or starts pulls for the others.
    fn gather_arguments(&mut self, now: Time, task: TaskId) {
        let me = self.node_id.expect("registered");
        let sources: Vec<(ObjectId, u64, Vec<crate::ids::NodeId>)> = self.tasks[&task]
            .sources
            .iter()
            .filter_map(|(o, s)| match s {
                ArgSource::Inline(_) => None,
                ArgSource::At { size, nodes } => Some((*o, *size, nodes.clone())),
            })
            .collect();
        for (object, size, nodes) in sources {
            if self.objects.contains(object) {
                self.pin_argument(task, object);
                continue;
            }
            if self.pulls.get(object).is_none() {
                let holders: Vec<_> = nodes.into_iter().filter(|n| *n != me).collect();
                let first = self.pulls.start(object, size, holders, now);
                self.emit(NodeOutput::ToPeer { node: first, msg: NodeToNode::Pull { object } });
            }
            self.pulls.add_waiter(object, task);
            let record = self.tasks.get_mut(&task).expect("task exists");
            record.missing.insert(object);
        }
        assert!(self.tasks[&task].missing.iter().all(|o| !self.objects.contains(*o)));
    }

    pub(super) fn pin_argument(&mut self, task: TaskId, object: ObjectId) {
        self.objects.pin(object, task);
        let record = self.tasks.get_mut(&task).expect("pinning for an unknown task");
        record.pinned.insert(object);
        assert!(!record.missing.contains(&object));
    }

    /// A pulled argument of `task` arrived: pin it, and run the task if it was the last one missing.
    pub(super) fn argument_arrived(&mut self, task: TaskId, object: ObjectId) {
        let record = self.tasks.get_mut(&task).expect("argument for an unknown task");
        let was_missing = record.missing.remove(&object);
        assert!(was_missing, "{object} was not missing for {task}");
        self.pin_argument(task, object);
        match self.tasks[&task].phase {
            TaskPhase::Fetching => self.lease_if_ready(task),
            TaskPhase::ActorQueued(worker) => self.dispatch_actor(worker),
            TaskPhase::After(_) => self.hand_ahead(task),
            phase => panic!("{task} received an argument in phase {phase:?}"),
        }
    }

    /// The last of `after` this node holds (in that attempt).
    fn last_held(&self, after: &[(TaskId, u32)]) -> Option<TaskId> {
        let held = |(t, a): &&(TaskId, u32)| self.tasks.get(t).is_some_and(|r| r.attempt == *a);
        after.iter().rev().find(held).map(|(t, _)| *t)
    }

    /// The attempts handed ahead to the worker that runs or holds `task` that follow it there and
    /// that no cancel was asked for. A worker's queue holds the chain behind the task it runs, or,
    /// while they are being asked back, the first successor and those behind it (they follow
    /// that one now, wherever it runs): each follows the one before it of its own kind.
    fn live_behind(&self, task: TaskId) -> usize {
        let live = |t: &TaskId| !self.tasks[t].cancel_requested;
        let asked = |t: &TaskId| self.tasks[t].withdraw_asked;
        match self.tasks.get(&task).map(|r| r.phase) {
            Some(TaskPhase::Running(w)) => {
                self.sent_ahead.get(&w).into_iter().flatten().filter(|t| asked(t).is_none() && live(t)).count()
            }
            Some(TaskPhase::SentAhead(w)) => {
                let mine = asked(&task);
                let queue = self.sent_ahead.get(&w).into_iter().flatten();
                let behind = queue.skip_while(|t| **t != task).skip(1);
                behind.filter(|t| asked(t) == mine && live(t)).count()
            }
            _ => 0,
        }
    }

    /// Whether tasks are being asked back from `worker`.
    fn asking(&self, worker: WorkerId) -> bool {
        let running = match self.workers.get(worker).map(|w| w.state) {
            Some(WorkerState::Busy(task)) => Some(task),
            _ => None,
        };
        let held = self.sent_ahead.get(&worker).into_iter().flatten();
        running.iter().chain(held).any(|t| self.tasks[t].withdraw_asked.is_some())
    }

    /// The tasks asked back from `worker` were given back, or it kept them: a successor waiting
    /// for a task it runs or holds (behind which only cancelled ones are left) goes to it ahead,
    /// if it may.
    fn ask_settled(&mut self, worker: WorkerId) {
        let running = match self.workers.get(worker).map(|w| w.state) {
            Some(WorkerState::Busy(task)) => Some(task),
            _ => None,
        };
        let held = self.sent_ahead.get(&worker).into_iter().flatten();
        let waiting = running.iter().chain(held).find_map(|t| self.successors.get(t).copied());
        if let Some(next) = waiting {
            self.hand_ahead(next);
        }
    }

    /// Where `task` stands in its chain of successors: the task it follows (waits for, or is
    /// held behind by its worker; see [`live_behind`](Self::live_behind)), if any.
    fn chain_predecessor(&self, task: TaskId) -> Option<TaskId> {
        match self.tasks.get(&task)?.phase {
            TaskPhase::After(before) => Some(before),
            TaskPhase::SentAhead(worker) => {
                let mine = self.tasks[&task].withdraw_asked;
                let queue = self.sent_ahead.get(&worker)?;
                let at = queue.iter().position(|t| *t == task)?;
                let before = queue.iter().take(at).rev().find(|t| self.tasks[*t].withdraw_asked == mine).copied();
                // The first of those being asked back follows nothing any more.
                let running = || match self.workers.get(worker)?.state {
                    WorkerState::Busy(running) if mine.is_none() => Some(running),
                    _ => None,
                };
                before.or_else(running).filter(|t| self.tasks.contains_key(t))
            }
            _ => None,
        }
    }

    /// Hands a successor whose arguments are all here to its predecessor's worker, behind the
    /// predecessor (which runs there or is held there ahead), when that is a pool worker the
    /// successor may use (same job, same devices; not a command task); else it goes on waiting.
    /// Its own successor, if any, follows it there the same way.
    fn hand_ahead(&mut self, task: TaskId) {
        let mut task = task;
        loop {
            let record = &self.tasks[&task];
            let TaskPhase::After(before) = record.phase else { panic!("{task} does not follow a task") };
            if !record.missing.is_empty() {
                return;
            }
            let (TaskPhase::Running(worker) | TaskPhase::SentAhead(worker)) = self.tasks[&before].phase else { return };
            let info = self.workers.get(worker).expect("a running task's worker exists");
            if info.kind != WorkerKind::Pool || info.job != record.spec.job || info.gpus != record.gpus {
                return;
            }
            // A command worker runs one process at a time and holds nothing ahead. While tasks are
            // being asked back from a worker, nothing new goes to it: whether it gives them back
            // or has started the first (and keeps them all) is not known yet, and what follows
            // the task it runs must not end up behind them (the asking settles it: see
            // `ask_settled`).
            let command = |t: &Task| matches!(t.spec.function, crate::proto::Function::Command(_));
            let prior = &self.tasks[&before];
            if command(record) || command(prior) || self.asking(worker) {
                return;
            }
            assert!(matches!(info.state, WorkerState::Busy(_)), "{worker} holds {before} but is not busy");
            assert_eq!(self.live_behind(before), 0, "{before} has a successor ahead and {task} waiting");
            assert_eq!(self.successors.remove(&before), Some(task));
            self.hand_over(task, worker);
            self.tasks.get_mut(&task).expect("task exists").phase = TaskPhase::SentAhead(worker);
            self.sent_ahead.entry(worker).or_default().push_back(task);
            match self.successors.get(&task) {
                Some(&next) => task = next,
                None => return,
            }
        }
    }

    /// `StartNow`: a successor runs on its own from now on (the task it followed is blocked and
    /// lent it its CPUs). One still waiting is leased a worker; one handed to the predecessor's
    /// worker ahead is asked back from it.
    pub(super) fn on_start_now(&mut self, task: TaskId, attempt: u32) -> Result<(), InputError> {
        let me = self.registered()?;
        let record = self.tasks.get(&task).ok_or(InputError::UnknownTask(task))?;
        if record.attempt != attempt {
            return Err(InputError::StaleAttempt { task, attempt, node: me });
        }
        if record.spec.kind != TaskKind::Normal {
            return Err(InputError::Malformed { what: format!("StartNow for {task}, which is not a normal task") });
        }
        match record.phase {
            TaskPhase::After(before) => {
                assert_eq!(self.successors.remove(&before), Some(task));
                self.tasks.get_mut(&task).expect("task exists").phase = TaskPhase::Fetching;
                self.lease_if_ready(task);
            }
            // Asked back from the worker with those held behind it (they follow it, and must not
            // run there without it), all or none: a worker that started it keeps them all.
            TaskPhase::SentAhead(worker) if record.withdraw_asked.is_none() => {
                let queue = self.sent_ahead.get(&worker).expect("sent-ahead queue exists");
                let from = queue.iter().position(|t| *t == task).expect("held ahead");
                let tasks: Vec<TaskId> = queue.iter().skip(from).copied().collect();
                let mut asked = Vec::with_capacity(tasks.len());
                for t in tasks {
                    let record = self.tasks.get_mut(&t).expect("task exists");
                    record.withdraw_asked = Some(task);
                    asked.push((t, record.attempt));
                }
                self.emit(NodeOutput::WithdrawTask { worker, tasks: asked });
            }
            // The task it followed ended meanwhile: it runs, or is about to, already.
            _ => {}
        }
        Ok(())
    }

    /// `TaskWithdrawn`: a worker gave back, unstarted, attempts handed to it ahead (those asked
    /// back together, in order). The first is leased a worker as a new task would be (or ends,
    /// if its cancel was asked meanwhile); the others follow it again, as they did on the worker.
    pub(super) fn on_task_withdrawn(&mut self, worker: WorkerId, tasks: &[(TaskId, u32)]) -> Result<(), InputError> {
        let me = self.registered()?;
        let Some(&(first, _)) = tasks.first() else {
            return Err(InputError::Malformed { what: format!("worker {worker} gave back no task") });
        };
        for (i, &(task, attempt)) in tasks.iter().enumerate() {
            let stale = InputError::StaleAttempt { task, attempt, node: me };
            let asked = |r: &&Task| r.attempt == attempt && r.withdraw_asked == Some(first);
            let Some(record) = self.tasks.get(&task).filter(asked) else {
                return Err(stale);
            };
            let fits = match record.phase {
                TaskPhase::SentAhead(w) => w == worker,
                // Made the running one when the task before it ended, but the worker gave it back.
                TaskPhase::Running(w) => w == worker && i == 0,
                _ => false,
            };
            if !fits {
                return Err(stale);
            }
        }
        // Exactly the first and those its worker held behind it when asked, in order (tasks handed
        // over behind them since, to follow the task before them, are not asked back).
        let queue = self.sent_ahead.get(&worker).into_iter().flatten();
        let mut behind: Vec<TaskId> = match self.tasks[&first].phase {
            TaskPhase::SentAhead(_) => queue.skip_while(|t| **t != first).skip(1).copied().collect(),
            _ => queue.copied().collect(),
        };
        let asked_with_it = behind.iter().take_while(|t| self.tasks[*t].withdraw_asked == Some(first)).count();
        behind.truncate(asked_with_it);
        if !behind.iter().eq(tasks[1..].iter().map(|(t, _)| t)) {
            let (task, attempt) = tasks[0];
            return Err(InputError::StaleAttempt { task, attempt, node: me });
        }
        if let Some(queue) = self.sent_ahead.get_mut(&worker) {
            queue.retain(|t| !tasks.iter().any(|(w, _)| w == t));
            if queue.is_empty() {
                self.sent_ahead.remove(&worker);
            }
        }
        if matches!(self.tasks[&first].phase, TaskPhase::Running(_)) {
            // The worker goes on with what it holds next, or is idle.
            if !self.promote_sent_ahead(worker) {
                self.workers.set_state(worker, WorkerState::Idle);
            }
        }
        // Out of the worker: nothing may follow it there any more.
        self.tasks.get_mut(&first).expect("task exists").phase = TaskPhase::Fetching;
        // A task waiting for one of them (not handed to the worker, its arguments missing) was the
        // next after them all, those behind that one being cancelled: it waits for the last now.
        let waiting: Vec<TaskId> = tasks.iter().filter_map(|(t, _)| self.successors.remove(t)).collect();
        assert!(waiting.len() <= 1, "tasks given back together had several waiting: {waiting:?}");
        // The others wait behind the first again, in order.
        for pair in tasks.windows(2) {
            let (before, task) = (pair[0].0, pair[1].0);
            let record = self.tasks.get_mut(&task).expect("task exists");
            record.phase = TaskPhase::After(before);
            record.withdraw_asked = None;
            record.kill_requested = false;
            self.successors.insert(before, task);
        }
        if let (Some(&next), Some(&(last, _))) = (waiting.first(), tasks.last()) {
            self.tasks.get_mut(&next).expect("a waiting successor exists").phase = TaskPhase::After(last);
            self.successors.insert(last, next);
        }
        // Those cancelled meanwhile end now, before anything is leased (the ones behind each move
        // up); then the first is leased a worker, or ends if cancelled (and the next takes its
        // place).
        for &(task, _) in &tasks[1..] {
            if self.tasks.get(&task).is_some_and(|r| r.cancel_requested) {
                self.abort_task(task, TaskFailure::Cancelled);
            }
        }
        self.requeue_unstarted(first);
        self.ask_settled(worker);
        self.trim_idle_workers();
        Ok(())
    }

    /// `worker` runs a task it was asked to give back with those behind it (`group` names the
    /// first): it had started it, so it keeps them all and no answer comes; they may be asked
    /// back again. Another withdrawal from the same worker is not affected.
    pub(super) fn withdrawal_failed(&mut self, worker: WorkerId, group: TaskId) {
        let running = match self.workers.get(worker).map(|w| w.state) {
            Some(WorkerState::Busy(task)) => Some(task),
            _ => None,
        };
        let held = self.sent_ahead.get(&worker).into_iter().flatten().copied();
        let asked: Vec<TaskId> = running.into_iter().chain(held).collect();
        for task in asked {
            let record = self.tasks.get_mut(&task).expect("a held task exists");
            if record.withdraw_asked == Some(group) {
                record.withdraw_asked = None;
            }
        }
        self.ask_settled(worker);
    }

    /// An attempt a worker gave back unstarted is leased a worker as a new task would be, or ends
    /// as cancelled if a cancel was asked meanwhile.
    fn requeue_unstarted(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(&task).expect("task exists");
        record.phase = TaskPhase::Fetching;
        record.withdraw_asked = None;
        record.kill_requested = false;
        if record.cancel_requested {
            self.abort_task(task, TaskFailure::Cancelled);
        } else {
            self.lease_if_ready(task);
        }
    }

    /// `task` ended here: its successor still waiting for it is leased a worker as a new task
    /// would be (the worker that ran `task` first, if it is idle now).
    pub(super) fn release_successor(&mut self, task: TaskId) {
        let Some(next) = self.successors.remove(&task) else { return };
        let record = self.tasks.get_mut(&next).expect("a successor exists");
        assert_eq!(record.phase, TaskPhase::After(task));
        record.phase = TaskPhase::Fetching;
        self.lease_if_ready(next);
    }

    /// Leases a worker for a normal or actor creation task whose arguments are all local.
    fn lease_if_ready(&mut self, task: TaskId) {
        let record = &self.tasks[&task];
        assert_eq!(record.phase, TaskPhase::Fetching, "{task} leased twice");
        if !record.missing.is_empty() {
            return;
        }
        let (job, gpus) = (record.spec.job, record.gpus.clone());
        let kind = match record.spec.kind {
            TaskKind::ActorCreation(actor) => WorkerKind::Actor(actor),
            TaskKind::Normal => WorkerKind::Pool,
            TaskKind::ActorMethod { .. } => panic!("method {task} leased like a task"),
        };
        if kind == WorkerKind::Pool {
            if let Some(worker) = self.workers.find_idle(job, &gpus) {
                self.execute(task, worker);
                return;
            }
        }
        let worker = self.workers.allocate(job, kind, gpus.clone(), task);
        self.tasks.get_mut(&task).expect("task exists").phase = TaskPhase::Leasing(worker);
        self.emit(NodeOutput::StartWorker { worker, job, kind, gpus });
    }

    /// Hands the methods at the front of an actor worker's queue to it, in order, while their
    /// arguments are local: the first to an idle worker, the next ones ahead of a running method
    /// up to `actor_pipeline` in all.
    pub(super) fn dispatch_actor(&mut self, worker: WorkerId) {
        while let Some(&front) = self.actor_queues.get(&worker).and_then(|q| q.front()) {
            if !self.tasks[&front].missing.is_empty() {
                return;
            }
            match self.workers.get(worker).map(|w| w.state) {
                Some(WorkerState::Idle) => {
                    self.dequeue_method(worker, front);
                    self.execute(front, worker);
                    assert_eq!(self.tasks[&front].phase, TaskPhase::Running(worker));
                }
                Some(WorkerState::Busy(running)) if self.room_ahead(worker, running) => {
                    self.dequeue_method(worker, front);
                    self.hand_over(front, worker);
                    self.tasks.get_mut(&front).expect("task exists").phase = TaskPhase::SentAhead(worker);
                    self.sent_ahead.entry(worker).or_default().push_back(front);
                }
                _ => return,
            }
        }
    }

    /// Whether a worker running `running` takes one more method ahead: only behind a method (an
    /// actor's creation must succeed first), and within `actor_pipeline`.
    fn room_ahead(&self, worker: WorkerId, running: TaskId) -> bool {
        let behind_method = matches!(self.tasks[&running].spec.kind, TaskKind::ActorMethod { .. });
        let held = 1 + self.sent_ahead.get(&worker).map_or(0, VecDeque::len);
        behind_method && held < self.config.actor_pipeline
    }

    /// The worker ended its running method: the first one handed to it ahead runs now (true), or
    /// there is none (false).
    pub(super) fn promote_sent_ahead(&mut self, worker: WorkerId) -> bool {
        let Some(queue) = self.sent_ahead.get_mut(&worker) else { return false };
        let next = queue.pop_front().expect("sent-ahead queues are never kept empty");
        if queue.is_empty() {
            self.sent_ahead.remove(&worker);
        }
        assert_eq!(self.tasks[&next].phase, TaskPhase::SentAhead(worker));
        self.start_running(next, worker);
        if self.tasks[&next].kill_requested {
            // Cancelled by force while the worker held it: the worker may have started it since.
            self.kill_busy_worker(worker, next, TaskFailure::Cancelled);
        }
        true
    }

    fn dequeue_method(&mut self, worker: WorkerId, task: TaskId) {
        let queue = self.actor_queues.get_mut(&worker).expect("actor queue exists");
        let position = queue.iter().position(|t| *t == task).expect("method is queued");
        queue.remove(position);
        if queue.is_empty() {
            self.actor_queues.remove(&worker);
        }
    }

    /// Hands an attempt to a started, idle (or just started) worker.
    pub(super) fn execute(&mut self, task: TaskId, worker: WorkerId) {
        self.hand_over(task, worker);
        self.start_running(task, worker);
    }

    /// Sends an attempt, with where its arguments are, to a worker.
    fn hand_over(&mut self, task: TaskId, worker: WorkerId) {
        let record = &self.tasks[&task];
        assert!(record.missing.is_empty(), "{task} executed before its arguments arrived");
        let args: Vec<ExecArg> = record
            .spec
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Value { .. } => ExecArg::Value,
                Arg::Ref(object) => match &record.sources[object] {
                    ArgSource::Inline(bytes) => ExecArg::Inline(bytes.clone()),
                    ArgSource::At { .. } => {
                        let size = self.objects.get(*object).expect("pinned argument is local").size;
                        ExecArg::Local { object: *object, size }
                    }
                },
            })
            .collect();
        let (spec, attempt) = (record.spec.clone(), record.attempt);
        self.emit(NodeOutput::Execute { worker, spec, attempt, args });
    }

    /// The worker runs `task` from now on (and its successor may go to the worker ahead).
    fn start_running(&mut self, task: TaskId, worker: WorkerId) {
        self.workers.set_state(worker, WorkerState::Busy(task));
        let record = self.tasks.get_mut(&task).expect("task exists");
        record.phase = TaskPhase::Running(worker);
        let attempt = record.attempt;
        self.send_to_head(NodeToHead::TaskStarted { task, attempt, worker });
        if let Some(&next) = self.successors.get(&task) {
            self.hand_ahead(next);
        }
    }

    /// Ends an attempt that is not running (fetching, leasing or queued) and reports `failure`.
    pub(super) fn abort_task(&mut self, task: TaskId, failure: TaskFailure) {
        let predecessor = self.chain_predecessor(task);
        let record = self.tasks.remove(&task).expect("aborting an unknown task");
        assert!(!matches!(record.phase, TaskPhase::Running(_)), "{task} is running; end it instead");
        for object in &record.missing {
            if self.pulls.get(*object).is_some() && !self.pulls.remove_waiter(*object, task) {
                self.pulls.remove(*object);
            }
        }
        self.release_pins(task, &record.pinned);
        match record.phase {
            TaskPhase::Leasing(worker) => self.release_lease(worker, task),
            TaskPhase::ActorQueued(worker) => {
                self.dequeue_method(worker, task);
                self.dispatch_actor(worker);
            }
            TaskPhase::SentAhead(worker) => {
                let queue = self.sent_ahead.get_mut(&worker).expect("sent-ahead queue exists");
                queue.retain(|t| *t != task);
                if queue.is_empty() {
                    self.sent_ahead.remove(&worker);
                }
            }
            TaskPhase::After(before) => {
                assert_eq!(self.successors.remove(&before), Some(task));
            }
            TaskPhase::Fetching | TaskPhase::Running(_) => {}
        }
        self.failure_report(task, record.attempt, failure);
        // A successor waiting for it takes its place in the chain (it never ran, so the task
        // before it is what frees the resources), or, following nothing, is leased a worker.
        match (self.successors.get(&task).copied(), predecessor) {
            (Some(next), Some(before)) if !self.successors.contains_key(&before) => {
                self.successors.remove(&task);
                self.successors.insert(before, next);
                self.tasks.get_mut(&next).expect("a successor exists").phase = TaskPhase::After(before);
                self.hand_ahead(next);
            }
            _ => self.release_successor(task),
        }
    }

    /// A starting worker's task went away: a pool worker will join the idle pool once started; an
    /// actor's worker is killed, since it was started for that actor only.
    fn release_lease(&mut self, worker: WorkerId, task: TaskId) {
        let info = self.workers.get(worker).expect("leased worker exists");
        assert_eq!(info.state, WorkerState::Starting { task: Some(task) });
        match info.kind {
            WorkerKind::Pool => self.workers.set_state(worker, WorkerState::Starting { task: None }),
            WorkerKind::Actor(_) => self.stop_worker(worker),
        }
    }

    /// Unpins a finished attempt's arguments, deleting those the head freed meanwhile.
    pub(super) fn release_pins(&mut self, task: TaskId, pinned: &VecSet<ObjectId>) {
        for object in pinned {
            if self.objects.unpin(*object, task) {
                self.emit(NodeOutput::DeleteObject(*object));
            }
        }
        assert!(pinned.iter().all(|o| self.objects.get(*o).is_none_or(|e| !e.pinned_by.contains(&task))));
    }

    /// Fails every method queued for an actor worker that is going away.
    /// A worker is dying: what was handed to it ahead, then the methods queued for it, fail. What
    /// it held may have started (the end of the attempt before it can be on its way), so it ends
    /// as the worker's death, and the head runs it again as a new attempt.
    pub(super) fn fail_actor_queue(&mut self, worker: WorkerId, exit_code: Option<i32>) {
        self.fail_held(worker, TaskFailure::WorkerDied { exit_code }, exit_code);
    }

    /// [`fail_actor_queue`](Self::fail_actor_queue), where what the worker held ahead fails with
    /// `held`.
    pub(super) fn fail_held(&mut self, worker: WorkerId, held: TaskFailure, exit_code: Option<i32>) {
        // The attempts handed to it ahead first, in the order it would have run them; one whose
        // cancel was asked ends as cancelled, as a running one does.
        let ahead: VecDeque<TaskId> = self.sent_ahead.get(&worker).cloned().unwrap_or_default();
        for task in ahead {
            let failure = if self.tasks[&task].cancel_requested { TaskFailure::Cancelled } else { held.clone() };
            self.abort_task(task, failure);
        }
        let queued: VecDeque<TaskId> = self.actor_queues.get(&worker).cloned().unwrap_or_default();
        for task in queued {
            self.abort_task(task, TaskFailure::WorkerDied { exit_code });
        }
        assert!(!self.actor_queues.contains_key(&worker), "methods left for a dead actor worker");
        assert!(!self.sent_ahead.contains_key(&worker), "methods left with a dead actor worker");
    }

    pub(super) fn check_task(&self, id: TaskId, task: &Task) {
        assert_eq!(task.spec.task, id, "task record under the wrong id");
        assert!(task.missing.is_disjoint(&task.pinned), "{id} pins a missing argument");
        for object in &task.missing {
            let pull = self.pulls.get(*object).expect("a missing argument has a pull");
            assert!(pull.waiters.contains(&id), "{id} not waiting on the pull of {object}");
            assert!(!self.objects.contains(*object), "{object} missing for {id} but local");
        }
        for object in &task.pinned {
            let entry = self.objects.get(*object).expect("a pinned argument is local");
            assert!(entry.pinned_by.contains(&id), "{object} not pinned by {id}");
            assert!(task.sources.contains_key(object), "{id} pins {object}, not an argument");
        }
        let is_method = matches!(task.spec.kind, TaskKind::ActorMethod { .. });
        match task.phase {
            TaskPhase::Fetching => assert!(!task.missing.is_empty() && !is_method, "{id} fetching nothing"),
            TaskPhase::Leasing(w) => {
                assert!(task.missing.is_empty(), "{id} leasing before its arguments arrived");
                let state = self.workers.get(w).map(|i| i.state);
                assert_eq!(state, Some(WorkerState::Starting { task: Some(id) }), "{id} leasing {w}");
            }
            TaskPhase::ActorQueued(w) => {
                assert!(is_method, "{id} queued on an actor but not a method");
                let queued = self.actor_queues.get(&w).is_some_and(|q| q.contains(&id));
                assert!(queued, "{id} not in the queue of {w}");
            }
            TaskPhase::Running(w) => {
                assert!(task.missing.is_empty(), "{id} running without its arguments");
                let state = self.workers.get(w).map(|i| i.state);
                assert_eq!(state, Some(WorkerState::Busy(id)), "{id} running on {w}");
            }
            TaskPhase::SentAhead(w) => {
                assert!(task.missing.is_empty(), "{id} handed over without its arguments");
                let ahead = self.sent_ahead.get(&w).is_some_and(|q| q.contains(&id));
                assert!(ahead, "{id} not among the attempts sent ahead to {w}");
            }
            TaskPhase::After(before) => {
                assert!(self.tasks.contains_key(&before), "{id} follows {before}, which is gone");
                assert_eq!(self.successors.get(&before), Some(&id), "{id} follows {before} unlisted");
                assert_eq!(task.spec.kind, TaskKind::Normal, "{id} follows a task but is not a normal task");
            }
        }
    }

    pub(super) fn check_actor_queues(&self) {
        for (worker, queue) in &self.actor_queues {
            assert!(!queue.is_empty(), "empty actor queue kept for {worker}");
            let info = self.workers.get(*worker).expect("actor queue of an unknown worker");
            assert!(matches!(info.kind, WorkerKind::Actor(_)), "methods queued on pool worker {worker}");
            assert!(info.state != WorkerState::Stopping, "methods queued on stopping worker {worker}");
            for task in queue {
                let phase = self.tasks.get(task).map(|t| t.phase);
                assert_eq!(phase, Some(TaskPhase::ActorQueued(*worker)), "{task} queued on {worker}");
            }
        }
        for (worker, ahead) in &self.sent_ahead {
            assert!(!ahead.is_empty(), "empty sent-ahead queue kept for {worker}");
            let info = self.workers.get(*worker).expect("attempts sent ahead to an unknown worker");
            let WorkerState::Busy(running) = info.state else {
                panic!("attempts sent ahead to {worker}, which runs nothing");
            };
            let wanted = match info.kind {
                WorkerKind::Actor(_) => {
                    assert!(
                        ahead.len() < self.config.actor_pipeline,
                        "{worker} holds more methods than actor_pipeline"
                    );
                    |kind: &TaskKind| matches!(kind, TaskKind::ActorMethod { .. })
                }
                WorkerKind::Pool => |kind: &TaskKind| *kind == TaskKind::Normal,
            };
            assert!(wanted(&self.tasks[&running].spec.kind), "{worker} runs {running}, of the wrong kind");
            for task in ahead {
                let phase = self.tasks.get(task).map(|t| t.phase);
                assert_eq!(phase, Some(TaskPhase::SentAhead(*worker)), "{task} sent ahead to {worker}");
                assert!(wanted(&self.tasks[task].spec.kind), "{task} sent ahead to {worker} is of the wrong kind");
            }
        }
        for (before, next) in &self.successors {
            let phase = self.tasks.get(next).map(|t| t.phase);
            assert_eq!(phase, Some(TaskPhase::After(*before)), "{next} listed as following {before}");
        }
    }
}
