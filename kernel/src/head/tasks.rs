//! Tasks: submission, dependency tracking, the ready queue, dispatch, completion, retries and
//! recursive cancellation.
//!
//! A task moves `WaitingDeps -> Queued -> Running -> Finished | Failed | Cancelled`; a system
//! failure (worker or node death) sends a running task back to `WaitingDeps` with its retry budget
//! reduced. Queued tasks wait in per-class queues (a class is a resource shape, strategy and label
//! selector), so that one full class never blocks another and a blocked class costs nothing until
//! resources are released.

use super::owners::OwnerIndex;
use super::scheduler::{NoPlacement, PlacementRequest};
use super::{Head, HeadOutput, Timer};
use crate::errors::{ErrorReason, InputError, TaskFailure};
use crate::ids::{JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::proto::{Arg, ArgSource, HeadToNode, LabelConstraint, SchedulingStrategy, TaskKind, TaskOutcome, TaskSpec};
use crate::resources::{Allocation, Amount, ResourceSet};
use crate::slab::SlabMap;
use crate::time::{Duration, Time};
use crate::vecset::{VecMap, VecSet};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Where a task is in its life, without the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum TaskStateKind {
    /// Waiting for arguments.
    WaitingDeps,
    /// Ready, waiting for resources (or for its actor).
    Queued,
    /// Running on a node.
    Running,
    /// Handed to a node to run after a running task, in that task's resources.
    Next,
    /// Finished successfully (kept as lineage).
    Finished,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum TaskState {
    WaitingDeps {
        missing: u32,
    },
    Queued,
    Running {
        node: NodeId,
        /// What it holds now (less the CPUs lent while it is blocked, or not taken back).
        alloc: Allocation,
        bundle: Option<(PlacementGroupId, u32)>,
        worker: Option<WorkerId>,
        /// While it is blocked waiting for objects: the CPUs it lent to other tasks.
        blocked: Option<Amount>,
        /// CPUs it runs without since it ran again and found them taken: the next CPUs freed on
        /// its node (or in its bundle) go to it before any new task (see `settle_debts`).
        owed: Amount,
        /// The tasks handed to its node to run next, in these resources, one after another
        /// (see `HeadConfig::pipeline_depth`).
        next: Vec<TaskId>,
        /// When it was dispatched (or its predecessor ended), for its class's run time.
        since: Time,
        /// Started by `StartNow`, as a successor of a task that blocked: until its node reports
        /// it started, the node may still hold it behind that task, so its own successors, should
        /// it end first, are started the same way.
        started_now: bool,
    },
    /// Handed to `node` to run after `after` (running there) and the successors `after` lists
    /// before it, in the resources `after` holds when it ends; it holds nothing until then.
    Next {
        node: NodeId,
        after: TaskId,
    },
    Finished,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn kind(&self) -> TaskStateKind {
        match self {
            TaskState::WaitingDeps { .. } => TaskStateKind::WaitingDeps,
            TaskState::Queued => TaskStateKind::Queued,
            TaskState::Running { .. } => TaskStateKind::Running,
            TaskState::Next { .. } => TaskStateKind::Next,
            TaskState::Finished => TaskStateKind::Finished,
            TaskState::Failed => TaskStateKind::Failed,
            TaskState::Cancelled => TaskStateKind::Cancelled,
        }
    }

    /// The node it was dispatched to: running there, or handed over to run next.
    pub fn running_node(&self) -> Option<NodeId> {
        match self {
            TaskState::Running { node, .. } | TaskState::Next { node, .. } => Some(*node),
            _ => None,
        }
    }

    pub fn is_ended(&self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Cancelled)
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskRecord {
    pub spec: Arc<TaskSpec>,
    pub owner: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    pub retries_left: u32,
    /// Attempts that ended because an argument could not be fetched; they wait and try again
    /// without spending retries, up to [`super::failures::MAX_ARGUMENT_FAILURES`].
    pub argument_failures: u8,
    pub cancel_requested: bool,
    /// Return objects whose records still exist.
    pub live_returns: u32,
    /// Lineage bytes charged while finished and retained.
    pub lineage_bytes: u64,
    /// Its scheduling class, once it was first queued.
    pub class: Option<u32>,
    /// Whether the owner index lists it (a task owner's); a driver's tasks are found by a scan
    /// when the job ends.
    pub owner_indexed: bool,
}

/// A scheduling class: tasks with the same shape, strategy and label selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct ClassKey {
    resources: ResourceSet,
    strategy: SchedulingStrategy,
    labels: Vec<LabelConstraint>,
}

impl ClassKey {
    fn matches(&self, spec: &TaskSpec) -> bool {
        self.resources == spec.resources && self.strategy == spec.strategy && self.labels == spec.label_selector
    }
}

/// A set of small ids as a bitmap, popped lowest first.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct IdBits {
    words: Vec<u64>,
}

impl IdBits {
    fn insert(&mut self, id: u32) {
        let word = id as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (id % 64);
    }

    fn remove(&mut self, id: u32) {
        if let Some(word) = self.words.get_mut(id as usize / 64) {
            *word &= !(1 << (id % 64));
        }
    }

    fn pop_first(&mut self) -> Option<u32> {
        let (w, word) = self.words.iter_mut().enumerate().find(|(_, word)| **word != 0)?;
        let bit = word.trailing_zeros();
        *word &= !(1 << bit);
        Some(w as u32 * 64 + bit)
    }

    /// The ids, ascending.
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    w as u32 * 64 + bit
                })
            })
        })
    }

    /// `self |= other`.
    fn union_with(&mut self, other: &IdBits) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }
}

/// Scheduling classes, interned.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Classes {
    ids: FxHashMap<ClassKey, u32>,
    /// Each class's key, by id.
    keys: Vec<ClassKey>,
    /// The class interned last: most submissions repeat the previous shape.
    last: Option<u32>,
}

impl Classes {
    /// The id of the spec's class; a new class gets the next id.
    fn intern(&mut self, spec: &TaskSpec) -> u32 {
        if let Some(last) = self.last.filter(|&c| self.keys[c as usize].matches(spec)) {
            return last;
        }
        let key = ClassKey {
            resources: spec.resources.clone(),
            strategy: spec.strategy.clone(),
            labels: spec.label_selector.clone(),
        };
        let class = match self.ids.get(&key) {
            Some(&class) => class,
            None => {
                let class = u32::try_from(self.keys.len()).expect("class ids fit in u32");
                self.ids.insert(key.clone(), class);
                self.keys.push(key);
                class
            }
        };
        self.last = Some(class);
        class
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskTable {
    /// Lookup only: never iterated into an output without sorting.
    tasks: SlabMap<TaskId, TaskRecord>,
    /// Tasks per task owner, for recursive cancellation and owner death. Drivers' tasks are not
    /// indexed: a driver owns nearly every task and dies once, when its job ends, so a scan then
    /// is cheaper than an index entry per task.
    owned: OwnerIndex<TaskId>,
    classes: Classes,
    /// Ready tasks per class, by class id.
    queues: Vec<VecDeque<TaskId>>,
    /// Classes whose queue is not empty.
    queued: IdBits,
    /// Classes with queued tasks that may be placeable now.
    runnable: IdBits,
    /// Infeasible tasks and since when.
    pub infeasible: BTreeMap<TaskId, crate::time::Time>,
    /// Tasks placed in each placement group (removing a group finds its tasks without a scan).
    in_group: BTreeMap<PlacementGroupId, BTreeSet<TaskId>>,
    /// Per class, running tasks that may take a successor (see `HeadConfig::pipeline_under`),
    /// keyed by how many they have, so that the one with the fewest (the lowest id of those) takes
    /// the next; an entry that no longer qualifies is dropped when next met.
    open_slots: BTreeMap<(u32, JobId), BTreeSet<(u32, TaskId)>>,
    /// Per class (by id), a moving average of how long its tasks ran, from dispatch to end.
    run_times: Vec<Option<Duration>>,
}

impl TaskTable {
    /// The tasks the table holds that run in `pg`, in ascending id order.
    pub fn in_group(&self, pg: PlacementGroupId) -> Vec<TaskId> {
        self.in_group.get(&pg).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    pub fn get(&self, task: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&task)
    }

    pub fn get_mut(&mut self, task: TaskId) -> Option<&mut TaskRecord> {
        self.tasks.get_mut(&task)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Every task in no particular order: only for checks whose result does not depend on order.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (TaskId, &TaskRecord)> {
        self.tasks.iter_unordered().map(|(k, v)| (*k, v))
    }

    fn insert(&mut self, task: TaskId, record: TaskRecord) {
        if record.owner_indexed {
            self.owned.insert(record.owner, task);
        }
        if let SchedulingStrategy::PlacementGroup { pg, .. } = record.spec.strategy {
            self.in_group.entry(pg).or_default().insert(task);
        }
        assert!(self.tasks.insert(task, record).is_none(), "task {task} recorded twice");
    }

    pub fn remove(&mut self, task: TaskId) -> TaskRecord {
        let record = self.tasks.remove(&task).expect("removing an unknown task");
        if record.owner_indexed {
            assert!(self.owned.remove(record.owner, task), "owner index misses task {task}");
        }
        if let SchedulingStrategy::PlacementGroup { pg, .. } = record.spec.strategy {
            if let Some(set) = self.in_group.get_mut(&pg) {
                set.remove(&task);
                if set.is_empty() {
                    self.in_group.remove(&pg);
                }
            }
        }
        record
    }

    /// The tasks `owner` submitted that the table still holds, in ascending id order; for a
    /// driver (`is_driver`), by a scan of every task.
    pub fn owned_by(&self, owner: TaskId, is_driver: bool) -> Vec<TaskId> {
        if !is_driver {
            return self.owned.items(owner);
        }
        let mut tasks: Vec<TaskId> =
            self.tasks.iter_unordered().filter(|(_, t)| t.owner == owner).map(|(id, _)| *id).collect();
        tasks.sort_unstable();
        tasks
    }

    /// Whether the owner index lists `task` under `owner` (for the invariants).
    pub fn owner_lists(&self, owner: TaskId, task: TaskId) -> bool {
        self.owned.contains(owner, task)
    }

    /// The number of (owner, task) pairs in the owner index, for the invariants.
    pub fn owned_len(&self) -> usize {
        self.owned.pairs()
    }

    fn enqueue(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(&task).expect("enqueueing an unknown task");
        let class = *record.class.get_or_insert_with(|| self.classes.intern(&record.spec));
        if class as usize == self.queues.len() {
            self.queues.push(VecDeque::new());
        }
        let queue = &mut self.queues[class as usize];
        queue.push_back(task);
        // Queues are first in, first out: a task queued behind others cannot be placed before
        // them, so only a queue that was empty becomes worth trying. A non-empty one is either
        // runnable already or blocked until a release marks it runnable again.
        if queue.len() == 1 {
            self.queued.insert(class);
            self.runnable.insert(class);
        }
    }

    /// A task of `class` ran for `took`: the class's moving average moves an eighth of the way.
    fn record_run_time(&mut self, class: u32, took: Duration) {
        let class = class as usize;
        if class >= self.run_times.len() {
            self.run_times.resize(class + 1, None);
        }
        let slot = &mut self.run_times[class];
        *slot = Some(match *slot {
            None => took,
            Some(average) => Duration((average.0 / 8) * 7 + took.0 / 8),
        });
    }

    /// Whether a class other than `class` has tasks queued.
    fn others_queued(&self, class: u32) -> bool {
        self.queued.iter().any(|c| c != class)
    }

    /// The moving average of how long tasks of `class` ran, once one finished.
    fn run_time(&self, class: u32) -> Option<Duration> {
        self.run_times.get(class as usize).copied().flatten()
    }

    /// A class with queued tasks becomes worth trying again (a successor may follow a task).
    fn mark_runnable(&mut self, class: u32) {
        if self.queues.get(class as usize).is_some_and(|q| !q.is_empty()) {
            self.runnable.insert(class);
        }
    }

    /// Every class with queued tasks becomes worth trying again (resources were released).
    pub fn mark_all_runnable(&mut self) {
        self.runnable.union_with(&self.queued);
    }

    pub fn queued_len(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
    }

    /// Queued tasks per resource shape (classes of equal resources merged), in shape order.
    pub fn queued_shapes(&self) -> Vec<(ResourceSet, u64)> {
        let mut shapes: BTreeMap<ResourceSet, u64> = BTreeMap::new();
        // Only the classes with a queue: a long run makes many classes, most of them idle.
        for class in self.queued.iter() {
            let queue = &self.queues[class as usize];
            if !queue.is_empty() {
                *shapes.entry(self.classes.keys[class as usize].resources.clone()).or_default() += queue.len() as u64;
            }
        }
        shapes.into_iter().collect()
    }

    /// What waits for a node the autoscaler could launch: each queued or infeasible task counted
    /// once (a task can sit in both, and queues drop stale entries lazily), by shape and label
    /// constraints. Tasks bound to a placement group or to one node are left out: no new node
    /// helps them.
    pub fn autoscaler_demand(&self) -> Vec<(ResourceSet, Vec<LabelConstraint>, u64)> {
        let mut seen: rustc_hash::FxHashSet<TaskId> = rustc_hash::FxHashSet::default();
        let mut shapes: BTreeMap<(ResourceSet, Vec<LabelConstraint>), u64> = BTreeMap::new();
        let queued = self.queued.iter().flat_map(|class| self.queues[class as usize].iter().copied());
        for task in queued.chain(self.infeasible.keys().copied()) {
            if !seen.insert(task) {
                continue;
            }
            let Some(record) = self.get(task) else { continue };
            if !matches!(record.state, TaskState::Queued) {
                continue;
            }
            if a_new_node_could_run(&record.spec.strategy) {
                let key = (record.spec.resources.clone(), record.spec.label_selector.clone());
                *shapes.entry(key).or_default() += 1;
            }
        }
        shapes.into_iter().map(|((r, l), n)| (r, l, n)).collect()
    }

    /// The first task queued in `class`.
    fn queue_front(&self, class: u32) -> Option<TaskId> {
        self.queues[class as usize].front().copied()
    }

    /// Takes the first task queued in `class`.
    fn queue_pop(&mut self, class: u32) {
        let queue = &mut self.queues[class as usize];
        queue.pop_front().expect("popping an empty queue");
        if queue.is_empty() {
            self.queued.remove(class);
        }
    }
}

impl Head {
    /// Who holds handles and owns objects for `task`: the actor (its creation task) for an actor
    /// method, the task itself otherwise.
    pub(super) fn holder_of(&self, task: TaskId) -> TaskId {
        match self.tasks.get(task).map(|t| &t.spec.kind) {
            Some(TaskKind::ActorMethod { actor, .. }) => self.actors.creation_of(*actor).unwrap_or(task),
            _ => task,
        }
    }

    pub(super) fn submit_task(
        &mut self,
        submitter: TaskId,
        job: crate::ids::JobId,
        spec: Arc<TaskSpec>,
    ) -> Result<(), InputError> {
        self.validate_spec(job, &spec)?;
        if let TaskKind::ActorCreation(_) = spec.kind {
            return Err(InputError::Malformed { what: "actor creation tasks are submitted with CreateActor".into() });
        }
        self.check_actor_call(submitter, &spec)?;
        let task = spec.task;
        let call = match spec.kind {
            TaskKind::ActorMethod { actor, seq } => Some((actor, seq)),
            _ => None,
        };
        self.accept_task(submitter, spec);
        if let Some((actor, seq)) = call {
            self.register_actor_call(submitter, task, actor, seq);
        }
        if let Some(reason) = self.task_rejection_reason(task) {
            self.fail_task(task, reason);
        } else if !self.tasks.get(task).expect("accepted").state.is_ended() {
            self.resolve_dependencies(task);
        }
        Ok(())
    }

    /// Checks what every spec must satisfy before anything is recorded.
    pub(super) fn validate_spec(&self, job: crate::ids::JobId, spec: &TaskSpec) -> Result<(), InputError> {
        if spec.job != job {
            return Err(InputError::Malformed {
                what: format!("task {} claims job {} but comes from {job}", spec.task, spec.job),
            });
        }
        // Driver ids stay reserved after their job ends.
        if self.tasks.get(spec.task).is_some() || self.jobs.is_driver(spec.task) {
            return Err(InputError::DuplicateTask(spec.task));
        }
        // Before anything walks the return ids: a huge count would take forever and overflow the index.
        if spec.num_returns > 1 << 20 {
            return Err(InputError::Malformed { what: format!("{} return values is too many", spec.num_returns) });
        }
        if spec.return_ids().any(|o| self.objects.contains(o)) {
            return Err(InputError::DuplicateTask(spec.task));
        }
        if let Some(missing) = spec.referenced_objects().find(|o| self.objects.get(*o).is_none_or(|r| r.released)) {
            return Err(InputError::UnknownObject(missing));
        }
        if let SchedulingStrategy::PlacementGroup { pg, .. } = spec.strategy {
            if self.pgs.get(pg).is_none() {
                return Err(InputError::UnknownPlacementGroup(pg));
            }
        }
        Ok(())
    }

    /// Records an accepted task: its return objects (one handle each for the submitter) and the
    /// borrows of its arguments.
    pub(super) fn accept_task(&mut self, submitter: TaskId, spec: Arc<TaskSpec>) {
        let task = spec.task;
        let owner_indexed = !self.jobs.is_driver(submitter);
        for object in spec.return_ids() {
            self.objects.create(object, submitter, 1, owner_indexed);
        }
        for object in spec.referenced_objects() {
            self.add_arg_use(object);
        }
        let retries_left = match spec.kind {
            TaskKind::ActorMethod { actor, .. } => self.actors.max_task_retries(actor),
            TaskKind::ActorCreation(actor) => self.actors.max_restarts(actor),
            TaskKind::Normal => spec.max_retries,
        };
        let record = TaskRecord {
            live_returns: spec.num_returns,
            spec,
            owner: submitter,
            state: TaskState::WaitingDeps { missing: 0 },
            attempt: 0,
            retries_left,
            argument_failures: 0,
            cancel_requested: false,
            lineage_bytes: 0,
            class: None,
            owner_indexed,
        };
        self.tasks.insert(task, record);
        self.stats.tasks_submitted += 1;
    }

    /// A reason to fail the task at once, whatever the cluster: a malformed resource request.
    fn task_rejection_reason(&self, task: TaskId) -> Option<ErrorReason> {
        let spec = &self.tasks.get(task)?.spec;
        spec.resources.validate().err().map(|error| ErrorReason::InvalidRequest { task, error })
    }

    /// Counts the by-reference arguments that are not ready, registers the task as their waiter,
    /// starts recovering the lost ones, and queues the task when nothing is missing.
    pub(super) fn resolve_dependencies(&mut self, task: TaskId) {
        let refs: Vec<ObjectId> = self.tasks.get(task).expect("task").spec.args.iter().filter_map(arg_ref).collect();
        let mut missing = 0;
        let mut to_recover = Vec::new();
        for object in refs {
            let record = self.objects.get_mut(object).expect("argument record exists");
            if let Some(reason) = record.failure().cloned() {
                self.on_dependency_failed(task, object, reason);
                return;
            }
            if record.is_ready() {
                continue;
            }
            if record.waiters_mut().waiting_tasks.insert(task) {
                missing += 1;
            }
            if record.state == super::objects::ObjState::Ready || record.released {
                to_recover.push(object);
            }
        }
        self.tasks.get_mut(task).expect("task").state = TaskState::WaitingDeps { missing };
        if missing == 0 {
            self.make_ready(task);
        } else if !to_recover.is_empty() {
            self.recover_for_argument(&to_recover);
        }
    }

    pub(super) fn on_dependency_ready(&mut self, task: TaskId) {
        let Some(record) = self.tasks.get_mut(task) else { return };
        let TaskState::WaitingDeps { missing } = &mut record.state else { return };
        *missing -= 1;
        if *missing == 0 {
            self.make_ready(task);
        }
    }

    pub(super) fn on_dependency_failed(&mut self, task: TaskId, object: ObjectId, cause: ErrorReason) {
        let Some(record) = self.tasks.get(task) else { return };
        if record.state.is_ended() {
            return;
        }
        self.fail_task(task, ErrorReason::DependencyFailed { task, object, cause: Box::new(cause) });
    }

    /// All arguments are ready: queue it (normal and creation tasks) or hand it to its actor.
    fn make_ready(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(task).expect("task");
        record.state = TaskState::Queued;
        match record.spec.kind {
            TaskKind::ActorMethod { actor, .. } => self.on_actor_call_ready(actor),
            _ => self.tasks.enqueue(task),
        }
    }

    /// Tries every runnable class in order, dispatching until each blocks.
    pub(super) fn schedule_pending(&mut self) {
        while let Some(class) = self.tasks.runnable.pop_first() {
            while let Some(task) = self.tasks.queue_front(class) {
                let current = self.tasks.get(task).is_some_and(|t| matches!(t.state, TaskState::Queued));
                if !current {
                    self.tasks.queue_pop(class);
                    continue;
                }
                if !self.arguments_ready(task) {
                    // An argument was lost after the task was queued: wait for it again.
                    self.tasks.queue_pop(class);
                    self.resolve_dependencies(task);
                    continue;
                }
                match self.try_place(task) {
                    Ok(()) => self.tasks.queue_pop(class),
                    Err(NoPlacement::Wait) => match self.open_slot(class, task) {
                        Some(before) => {
                            self.tasks.queue_pop(class);
                            self.hand_over_next(task, before);
                        }
                        None => break,
                    },
                    Err(NoPlacement::Infeasible) => {
                        self.tasks.queue_pop(class);
                        self.mark_infeasible(task);
                    }
                }
            }
        }
        self.schedule_pending_groups();
    }

    /// Whether every by-reference argument has a readable value now.
    fn arguments_ready(&self, task: TaskId) -> bool {
        let spec = &self.tasks.get(task).expect("task").spec;
        spec.args.iter().filter_map(arg_ref).all(|o| self.objects.get(o).is_some_and(|r| r.is_ready()))
    }

    /// Places one queued task and dispatches it.
    fn try_place(&mut self, task: TaskId) -> Result<(), NoPlacement> {
        let record = self.tasks.get(task).expect("task");
        let (node, alloc, bundle) = match record.spec.strategy {
            SchedulingStrategy::PlacementGroup { pg, bundle } => {
                let resources = record.spec.resources.clone();
                let (index, node, alloc) = self.place_in_group(pg, bundle, &resources)?;
                (node, alloc, Some((pg, index)))
            }
            _ => {
                let locality = self.argument_locality(&record.spec);
                let req = PlacementRequest {
                    resources: &record.spec.resources,
                    strategy: &record.spec.strategy,
                    labels: &record.spec.label_selector,
                    locality: &locality,
                };
                let (node, alloc) = self.cluster.schedule(&req, &mut self.rng)?;
                (node, alloc, None)
            }
        };
        self.tasks.infeasible.remove(&task);
        self.dispatch(task, node, alloc, bundle, None);
        Ok(())
    }

    /// Argument bytes per node, most first (ties by node id), for locality-aware placement.
    fn argument_locality(&self, spec: &TaskSpec) -> Vec<(NodeId, u64)> {
        let mut bytes: VecMap<NodeId, u64> = VecMap::new();
        for object in spec.args.iter().filter_map(arg_ref) {
            if let Some(record) = self.objects.get(object).filter(|r| r.inline.is_none()) {
                for node in &record.locations {
                    *bytes.get_or_insert_with(*node, || 0) += record.size;
                }
            }
        }
        let mut ranked: Vec<(NodeId, u64)> = bytes.iter().map(|(n, b)| (*n, *b)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
    }

    /// Sends a task attempt to `node`, which already holds its allocation.
    pub(super) fn dispatch(
        &mut self,
        task: TaskId,
        node: NodeId,
        alloc: Allocation,
        bundle: Option<(PlacementGroupId, u32)>,
        actor_worker: Option<WorkerId>,
    ) {
        let args = self.argument_sources(task);
        let record = self.tasks.get_mut(task).expect("task");
        assert!(matches!(record.state, TaskState::Queued), "dispatching a task that is not queued");
        record.state = TaskState::Running {
            node,
            alloc: alloc.clone(),
            bundle,
            worker: actor_worker,
            blocked: None,
            owed: Amount::ZERO,
            next: Vec::new(),
            since: self.now,
            started_now: false,
        };
        let msg = HeadToNode::RunTask {
            spec: record.spec.clone(),
            attempt: record.attempt,
            allocation: alloc,
            args,
            actor_worker,
            after: Vec::new(),
        };
        self.nodes.get_mut(node).expect("dispatch to a live node").running.insert(task);
        self.stats.attempts_dispatched += 1;
        self.open_slot_for(task);
        self.emit(HeadOutput::ToNode { node, msg });
    }

    /// Lists a running task as one a successor may follow, if it may have one more.
    fn open_slot_for(&mut self, task: TaskId) {
        let record = self.tasks.get(task).expect("task");
        let pipelined =
            matches!(record.spec.strategy, SchedulingStrategy::Default | SchedulingStrategy::NodeAffinity { .. });
        // CPU-only: a successor takes the CPUs its predecessor lends when it blocks.
        let resources = &record.spec.resources;
        let cpu_only = *resources == ResourceSet { cpu: resources.cpu, ..ResourceSet::default() };
        let off = self.config.pipeline_under == Duration::ZERO;
        if off || record.spec.kind != TaskKind::Normal || !pipelined || !cpu_only {
            return;
        }
        let TaskState::Running { next, .. } = &record.state else { return };
        let (Some(class), held) = (record.class, next.len() as u32) else { return };
        if held >= self.config.pipeline_depth {
            return;
        }
        self.tasks.open_slots.entry((class, record.spec.job)).or_default().insert((held, task));
    }

    /// Takes a running task off the list of those a successor may follow.
    fn close_slot_of(&mut self, task: TaskId) {
        let Some(record) = self.tasks.get(task) else { return };
        let (Some(class), TaskState::Running { next, .. }) = (record.class, &record.state) else { return };
        let key = (class, record.spec.job);
        let held = next.len() as u32;
        if let Some(slots) = self.tasks.open_slots.get_mut(&key) {
            slots.remove(&(held, task));
            if slots.is_empty() {
                self.tasks.open_slots.remove(&key);
            }
        }
    }

    /// A running task of `class` that `task` may follow, if the class's tasks are short: one of
    /// the same job, running now on a node that takes work, not blocked, owed nothing, not being
    /// cancelled, with the fewest successors (the lowest id of those), and only while the successor
    /// would start within `pipeline_under` (it waits for the task and those handed over before
    /// it). Entries met that no longer qualify are dropped, so each is looked at about once.
    fn open_slot(&mut self, class: u32, task: TaskId) -> Option<TaskId> {
        let run_time = self.tasks.run_time(class).filter(|t| *t < self.config.pipeline_under)?;
        // Only while nothing else waits: a successor takes its predecessor's resources without
        // their being freed, so other classes, placement groups and tasks owed CPUs would not
        // see them.
        if self.tasks.others_queued(class) || !self.pgs.pending.is_empty() {
            return None;
        }
        let key = (class, self.tasks.get(task).expect("task").spec.job);
        loop {
            let slots = self.tasks.open_slots.get_mut(&key)?;
            let Some((held, before)) = slots.pop_first() else {
                self.tasks.open_slots.remove(&key);
                return None;
            };
            // The fewest successors held anywhere is too many to wait behind: so is every other.
            if run_time.0.saturating_mul(u64::from(held) + 1) >= self.config.pipeline_under.0 {
                slots.insert((held, before));
                return None;
            }
            let Some(record) = self.tasks.get(before) else { continue };
            let TaskState::Running { node, blocked: None, owed, bundle: None, next, .. } = &record.state else {
                continue;
            };
            if next.len() as u32 != held {
                continue;
            }
            let schedulable = self.cluster.node(*node).is_some_and(|n| n.schedulable);
            let in_debt = self.debts.contains_key(node);
            if *owed == Amount::ZERO && !record.cancel_requested && schedulable && !in_debt {
                // Taken: `hand_over_next` gives it its successor (and lists it again).
                return Some(before);
            }
        }
    }

    /// Hands `task` to the node running `before`, to run after it and its other successors, in
    /// its resources.
    fn hand_over_next(&mut self, task: TaskId, before: TaskId) {
        let args = self.argument_sources(task);
        let prior = self.tasks.get(before).expect("task");
        let TaskState::Running { node, alloc, next, .. } = &prior.state else {
            panic!("{task} handed over behind {before}, which is not running")
        };
        // The attempts it runs after, in order: the running one, then its successors so far.
        let mut after = Vec::with_capacity(next.len() + 1);
        after.push((before, prior.attempt));
        after.extend(next.iter().map(|t| (*t, self.tasks.get(*t).expect("successor").attempt)));
        let (node, allocation) = (*node, alloc.clone());
        let Some(TaskState::Running { next, .. }) = self.tasks.get_mut(before).map(|r| &mut r.state) else {
            unreachable!()
        };
        next.push(task);
        let record = self.tasks.get_mut(task).expect("task");
        assert!(matches!(record.state, TaskState::Queued), "handing over a task that is not queued");
        record.state = TaskState::Next { node, after: before };
        let msg = HeadToNode::RunTask {
            spec: record.spec.clone(),
            attempt: record.attempt,
            allocation,
            args,
            actor_worker: None,
            after,
        };
        self.tasks.infeasible.remove(&task);
        self.nodes.get_mut(node).expect("hand-over to a live node").running.insert(task);
        self.stats.attempts_dispatched += 1;
        self.stats.attempts_pipelined += 1;
        self.open_slot_for(before);
        self.emit(HeadOutput::ToNode { node, msg });
    }

    /// A task on `node` with `alloc` ended or blocked: the first of its successors, `chain`, runs
    /// now in those resources, taking the CPUs they lack (lent while the task was blocked) if
    /// free, else running without them, owed them first (as a task that runs again after a wait
    /// does). The others follow it now.
    fn promote_next(&mut self, mut chain: Vec<TaskId>, node: NodeId, mut alloc: Allocation, started_now: bool) {
        let next = chain.remove(0);
        for behind in &chain {
            let state = self.tasks.get_mut(*behind).map(|r| &mut r.state);
            let Some(TaskState::Next { after, .. }) = state else { panic!("{behind} listed as a successor") };
            *after = next;
        }
        let record = self.tasks.get(next).expect("successor");
        let lacking = Amount(record.spec.resources.cpu.0.saturating_sub(alloc.resources.cpu.0));
        let mut owed = Amount::ZERO;
        if lacking > Amount::ZERO {
            let want = ResourceSet { cpu: lacking, ..ResourceSet::default() };
            match self.cluster.allocate(node, &want) {
                Some(_) => alloc.resources.cpu = Amount(alloc.resources.cpu.0 + lacking.0),
                None => {
                    owed = lacking;
                    self.debts.entry(node).or_default().push(next);
                }
            }
        }
        let record = self.tasks.get_mut(next).expect("successor");
        record.state = TaskState::Running {
            node,
            alloc,
            bundle: None,
            worker: None,
            blocked: None,
            owed,
            next: chain,
            since: self.now,
            started_now,
        };
        let class = record.class;
        self.open_slot_for(next);
        if let Some(class) = class {
            self.tasks.mark_runnable(class);
        }
    }

    /// One source per distinct by-reference argument (a task may take the same object twice).
    fn argument_sources(&self, task: TaskId) -> Vec<(ObjectId, ArgSource)> {
        let spec = &self.tasks.get(task).expect("task").spec;
        let mut seen = VecSet::new();
        spec.args
            .iter()
            .filter_map(arg_ref)
            .filter(|object| seen.insert(*object))
            .map(|object| {
                let record = self.objects.get(object).expect("argument exists");
                let source = match &record.inline {
                    Some(bytes) => ArgSource::Inline(bytes.clone()),
                    None => ArgSource::At { size: record.size, nodes: record.locations.iter().copied().collect() },
                };
                (object, source)
            })
            .collect()
    }

    fn mark_infeasible(&mut self, task: TaskId) {
        if self.tasks.infeasible.contains_key(&task) {
            return;
        }
        self.tasks.infeasible.insert(task, self.now);
        let at = self.now + self.config.infeasible_grace;
        self.set_timer(at, Timer::Infeasible(task));
    }

    /// New capacity: infeasible tasks go back to their queues.
    pub(super) fn retry_infeasible(&mut self) {
        let tasks: Vec<TaskId> = self.tasks.infeasible.keys().copied().collect();
        for task in tasks {
            if self.tasks.get(task).is_some_and(|t| matches!(t.state, TaskState::Queued)) {
                self.tasks.enqueue(task);
            }
        }
    }

    pub(super) fn queue_all_runnable(&mut self) {
        self.tasks.mark_all_runnable();
    }

    pub(super) fn on_infeasible_timeout(&mut self, task: TaskId) {
        let Some(since) = self.tasks.infeasible.get(&task).copied() else { return };
        if self.now.saturating_since(since) < self.config.infeasible_grace {
            return;
        }
        let record = self.tasks.get(task).expect("infeasible task exists");
        let still_infeasible = matches!(record.state, TaskState::Queued)
            && match record.spec.strategy {
                SchedulingStrategy::PlacementGroup { pg, bundle } => {
                    !self.group_could_fit(pg, bundle, &record.spec.resources)
                }
                // A hard affinity can only ever run on its node, whatever the others could hold.
                SchedulingStrategy::NodeAffinity { node, soft: false } => !self.cluster.node(node).is_some_and(|n| {
                    n.schedulable
                        && n.pool.could_ever_fit(&record.spec.resources)
                        && record.spec.label_selector.iter().all(|l| l.matches(&n.labels))
                }),
                _ => !self.cluster.feasible_anywhere(&record.spec.resources, &record.spec.label_selector),
            };
        let request = record.spec.resources.clone();
        if still_infeasible
            && a_new_node_could_run(&record.spec.strategy)
            && self.autoscaler_could_hold(&request, &record.spec.label_selector)
        {
            // A node the autoscaler can launch would hold it: it waits for one.
            self.tasks.infeasible.insert(task, self.now);
            let at = self.now + self.config.infeasible_grace;
            self.set_timer(at, Timer::Infeasible(task));
            return;
        }
        self.tasks.infeasible.remove(&task);
        if still_infeasible {
            self.fail_task(task, ErrorReason::Infeasible { task, request });
        } else {
            self.tasks.enqueue(task);
        }
    }

    pub(super) fn on_task_started(
        &mut self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        worker: WorkerId,
    ) -> Result<(), InputError> {
        let record = self.current_attempt(node, task, attempt)?;
        if let TaskState::Running { worker: w, started_now, .. } = &mut record.state {
            *w = Some(worker);
            *started_now = false;
        }
        if let TaskKind::ActorCreation(actor) = record.spec.kind {
            self.actors.set_worker(actor, worker);
        }
        Ok(())
    }

    /// `TaskBlocked`: a normal task waiting for objects lends its CPUs (an actor's calls keep the
    /// actor's resources, as actors hold them for life).
    pub(super) fn on_task_blocked(&mut self, node: NodeId, task: TaskId, attempt: u32) -> Result<(), InputError> {
        let record = self.current_attempt(node, task, attempt)?;
        if !matches!(record.spec.kind, TaskKind::Normal) {
            return Ok(());
        }
        let TaskState::Running { blocked, .. } = &record.state else {
            // Handed over to run next: it cannot have started.
            return Err(InputError::StaleAttempt { task, attempt, node });
        };
        if blocked.is_some() {
            return Ok(());
        }
        self.close_slot_of(task);
        let record = self.tasks.get_mut(task).expect("task");
        let TaskState::Running { alloc, bundle, blocked, owed, next, .. } = &mut record.state else { unreachable!() };
        let cpu = std::mem::replace(&mut alloc.resources.cpu, Amount::ZERO);
        // A debt is forgiven while it waits (its queue entry is dropped when next met); what it
        // wants back when it runs again is everything it was given.
        *blocked = Some(Amount(cpu.0 + std::mem::replace(owed, Amount::ZERO).0));
        let bundle = *bundle;
        let lent = Allocation { resources: ResourceSet { cpu, ..ResourceSet::default() }, gpus: Vec::new() };
        // Its successors must not wait for it (one may be what it waits for): the first runs now,
        // in the CPUs lent, which is all a pipelined (CPU-only) task holds; the others follow it.
        let chain = std::mem::take(next);
        if let Some(&successor) = chain.first() {
            self.promote_next(chain, node, lent, true);
            let attempt = self.tasks.get(successor).expect("successor").attempt;
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::StartNow { task: successor, attempt } });
        } else if cpu > Amount::ZERO {
            self.release_allocation(node, &lent, bundle);
        }
        Ok(())
    }

    /// `TaskUnblocked`: the task takes its CPUs back if they are free; else it runs on without
    /// them (briefly oversubscribing the node) rather than wait for them.
    pub(super) fn on_task_unblocked(&mut self, node: NodeId, task: TaskId, attempt: u32) -> Result<(), InputError> {
        let record = self.current_attempt(node, task, attempt)?;
        let TaskState::Running { blocked, bundle, .. } = &mut record.state else {
            // Handed over to run next: it cannot have started.
            return Err(InputError::StaleAttempt { task, attempt, node });
        };
        let Some(cpu) = blocked.take() else { return Ok(()) };
        let bundle = *bundle;
        // It may take successors again (its slot closed when it blocked).
        self.open_slot_for(task);
        if cpu == Amount::ZERO {
            return Ok(());
        }
        let want = ResourceSet { cpu, ..ResourceSet::default() };
        let back = match bundle {
            Some((pg, index)) => self.allocate_in_bundle(pg, index, node, &want),
            None => self.cluster.allocate(node, &want),
        };
        let record = self.tasks.get_mut(task).expect("running task");
        if let TaskState::Running { alloc, owed, .. } = &mut record.state {
            if back.is_some() {
                alloc.resources.cpu = cpu;
            } else {
                // It runs on without them, and is owed them: no new task takes the next CPUs
                // freed there, so the node is oversubscribed only by the tasks that ran again.
                *owed = cpu;
                self.debts.entry(node).or_default().push(task);
            }
        }
        Ok(())
    }

    /// CPUs freed on `node`: tasks that run without the CPUs they are owed take them first, in
    /// the order they ran again (a task whose debt cannot be paid yet stops the queue).
    pub(super) fn settle_debts(&mut self, node: NodeId) {
        let Some(mut queue) = self.debts.remove(&node) else { return };
        let mut paid = 0;
        for &task in &queue {
            let Some(record) = self.tasks.get(task) else {
                paid += 1;
                continue;
            };
            let TaskState::Running { node: n, owed, bundle, .. } = &record.state else {
                paid += 1;
                continue;
            };
            if *n != node || *owed == Amount::ZERO {
                paid += 1;
                continue;
            }
            let (owed, bundle) = (*owed, *bundle);
            let want = ResourceSet { cpu: owed, ..ResourceSet::default() };
            let got = match bundle {
                Some((pg, index)) => self.allocate_in_bundle(pg, index, node, &want),
                None => self.cluster.allocate(node, &want),
            };
            if got.is_none() {
                break;
            }
            if let TaskState::Running { alloc, owed: o, .. } = &mut self.tasks.get_mut(task).expect("task").state {
                alloc.resources.cpu = Amount(alloc.resources.cpu.0 + owed.0);
                *o = Amount::ZERO;
            }
            paid += 1;
        }
        queue.drain(..paid);
        if !queue.is_empty() {
            self.debts.insert(node, queue);
        }
    }

    /// The record of `task` if `attempt` is its current attempt running on `node`.
    fn current_attempt(&mut self, node: NodeId, task: TaskId, attempt: u32) -> Result<&mut TaskRecord, InputError> {
        let stale = InputError::StaleAttempt { task, attempt, node };
        let record = self.tasks.get_mut(task).ok_or(InputError::UnknownTask(task))?;
        if record.attempt != attempt || record.state.running_node() != Some(node) {
            return Err(stale);
        }
        Ok(record)
    }

    pub(super) fn on_task_ended(
        &mut self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) -> Result<(), InputError> {
        if let Err(refused) = self.current_attempt(node, task, attempt) {
            // An attempt the head no longer wants (cancelled, retried elsewhere, its task gone)
            // may still have sealed values on the node: nobody will ever free them but us.
            if let TaskOutcome::Finished(returns) = &outcome {
                let orphans: Vec<ObjectId> = returns
                    .iter()
                    .filter(|v| v.inline.is_none())
                    .map(|v| v.object)
                    .filter(|o| self.objects.get(*o).is_none_or(|r| !r.locations.contains(&node)))
                    .collect();
                if !orphans.is_empty() {
                    self.emit(HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(orphans) });
                }
            }
            return Err(refused);
        }
        match outcome {
            TaskOutcome::Finished(returns) => {
                if let Err(what) = self.check_returns(task, &returns) {
                    let failure = TaskFailure::Application { message: format!("malformed return values: {what}") };
                    self.end_attempt(task);
                    self.fail_task_for(task, failure);
                    return Err(InputError::Malformed { what });
                }
                self.on_task_finished(task, node, returns);
            }
            TaskOutcome::Failed(failure) => {
                let holder = self.holder_of(task);
                self.end_attempt(task);
                if failure.is_system() && holder == task {
                    self.on_owner_died(task);
                }
                self.on_attempt_failed(task, failure);
            }
        }
        Ok(())
    }

    fn check_returns(&self, task: TaskId, returns: &[crate::proto::ReturnValue]) -> Result<(), String> {
        let spec = &self.tasks.get(task).expect("task").spec;
        if returns.len() != spec.num_returns as usize {
            return Err(format!("{} values for {} returns", returns.len(), spec.num_returns));
        }
        for (value, expected) in returns.iter().zip(spec.return_ids()) {
            if value.object != expected {
                return Err(format!("value {} where {} was expected", value.object, expected));
            }
            // As for a put: a value may only contain references that exist (the task holds them).
            if let Some(inner) = value.nested.iter().find(|o| self.objects.get(**o).is_none_or(|r| r.released)) {
                return Err(format!("value {} contains unknown reference {inner}", value.object));
            }
            if let Some(bytes) = &value.inline {
                if bytes.len() as u64 != value.size || value.size > self.config.inline_max_bytes {
                    return Err(format!(
                        "inline value {} of {} bytes (claims {})",
                        value.object,
                        bytes.len(),
                        value.size
                    ));
                }
            }
        }
        Ok(())
    }

    /// Releases the attempt's resources and unlinks it from its node.
    pub(super) fn end_attempt(&mut self, task: TaskId) {
        self.end_attempt_as(task, false);
    }

    /// Ends the attempt; a constructor that `finished` hands its resources to its actor instead.
    fn end_attempt_as(&mut self, task: TaskId, finished: bool) {
        self.close_slot_of(task);
        let record = self.tasks.get_mut(task).expect("task");
        let state = std::mem::replace(&mut record.state, TaskState::Queued);
        if let TaskState::Next { node, after } = state {
            // It never ran and holds nothing: those behind it move up, and the task it followed
            // may take another successor.
            if matches!(self.tasks.get(after).map(|r| &r.state), Some(TaskState::Running { .. })) {
                self.close_slot_of(after);
                let Some(TaskState::Running { next, .. }) = self.tasks.get_mut(after).map(|r| &mut r.state) else {
                    unreachable!()
                };
                let at = next.iter().position(|t| *t == task);
                next.remove(at.unwrap_or_else(|| panic!("{task} followed {after}, which did not list it")));
                self.open_slot_for(after);
                if let Some(class) = self.tasks.get(after).and_then(|r| r.class) {
                    self.tasks.mark_runnable(class);
                }
            }
            if let Some(n) = self.nodes.get_mut(node) {
                n.running.remove(&task);
            }
            self.check_drained(node);
            return;
        }
        let TaskState::Running { node, alloc, bundle, next, started_now, .. } = state else {
            record.state = state;
            return;
        };
        let keeps_allocation = finished && matches!(record.spec.kind, TaskKind::ActorCreation(_));
        if let Some(n) = self.nodes.get_mut(node) {
            n.running.remove(&task);
        }
        // Its successors run now in its resources, the first first; on a lost node they are lost
        // too, and end on their own.
        if !next.is_empty() && self.node_is_live(node) {
            for successor in &next {
                let state = self.tasks.get(*successor).map(|r| &r.state);
                let follows = matches!(state, Some(TaskState::Next { after, .. }) if *after == task);
                assert!(follows, "{task} lists {successor} as its successor, which does not follow it");
            }
            assert!(bundle.is_none() && !keeps_allocation, "{task} with a successor holds a bundle or an actor");
            let first = next[0];
            self.promote_next(next, node, alloc, started_now);
            if started_now {
                // It never started there: the node may hold its successors behind the blocked task.
                let attempt = self.tasks.get(first).expect("successor").attempt;
                self.emit(HeadOutput::ToNode { node, msg: HeadToNode::StartNow { task: first, attempt } });
            }
        } else if !keeps_allocation {
            self.release_allocation(node, &alloc, bundle);
        } else {
            let TaskKind::ActorCreation(actor) = self.tasks.get(task).expect("task").spec.kind else { unreachable!() };
            self.actors.park_allocation(actor, node, alloc, bundle);
        }
        self.drop_all_handles(task);
        self.check_drained(node);
    }

    pub(super) fn release_allocation(
        &mut self,
        node: NodeId,
        alloc: &Allocation,
        bundle: Option<(PlacementGroupId, u32)>,
    ) {
        match bundle {
            Some((pg, index)) => self.release_in_group(pg, index, node, alloc),
            None => self.cluster.release(node, alloc),
        }
        if alloc.resources.cpu > Amount::ZERO && self.debts.contains_key(&node) {
            self.settle_debts(node);
        }
        if !alloc.resources.is_empty() {
            self.queue_all_runnable();
            self.pgs_mark_all_pending_retry();
        }
    }

    fn on_task_finished(&mut self, task: TaskId, node: NodeId, returns: Vec<crate::proto::ReturnValue>) {
        let record = self.tasks.get(task).expect("task");
        if let (TaskState::Running { since, .. }, Some(class)) = (&record.state, record.class) {
            let took = self.now.saturating_since(*since);
            self.tasks.record_run_time(class, took);
        }
        let kind = self.tasks.get(task).expect("task").spec.kind.clone();
        // References returned inside the values outlive the attempt's own handles: hold them while
        // the attempt ends, until the values that contain them are sealed.
        let pinned: Vec<ObjectId> = returns.iter().flat_map(|v| v.nested.iter().copied()).collect();
        for object in &pinned {
            self.add_arg_use(*object);
        }
        self.end_attempt_as(task, true);
        self.tasks.get_mut(task).expect("task").state = TaskState::Finished;
        self.stats.tasks_finished += 1;
        for value in returns {
            let alive = self.objects.get(value.object).is_some_and(|o| !o.released && o.failure().is_none());
            if alive {
                let stored = if value.inline.is_some() { None } else { Some(node) };
                self.seal_value(value.object, value.size, value.inline, stored, value.nested);
            } else if value.inline.is_none() {
                self.emit(HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(vec![value.object]) });
            }
        }
        for object in pinned {
            self.remove_arg_use(object);
        }
        match kind {
            TaskKind::ActorCreation(actor) => self.on_actor_created(actor),
            TaskKind::ActorMethod { actor, .. } => self.on_actor_call_ended(actor, task),
            TaskKind::Normal => {}
        }
        self.on_task_ended_for_good(task, true);
    }
}

/// The object of a by-reference argument.
pub(super) fn arg_ref(arg: &Arg) -> Option<ObjectId> {
    match arg {
        Arg::Ref(object) => Some(*object),
        Arg::Value { .. } => None,
    }
}

/// Whether a task placed by `strategy` could run on a node launched for it: not one bound to a
/// placement group's bundles or, hard, to one node.
fn a_new_node_could_run(strategy: &SchedulingStrategy) -> bool {
    match strategy {
        SchedulingStrategy::Default | SchedulingStrategy::Spread => true,
        SchedulingStrategy::NodeAffinity { soft, .. } => *soft,
        SchedulingStrategy::PlacementGroup { .. } => false,
    }
}
