//! Tests of the Node machine, driven through its public contract. Every step drains the outputs and
//! calls `check_invariants`.

mod leases;
mod lifecycle;
mod objects;
mod pulls;
mod random;
mod successors;

use super::{Node, NodeConfig, NodeInput, NodeOutput};
use crate::errors::InputError;
use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::proto::{Arg, ArgSource, HeadToNode, NodeToHead, ReturnValue, TaskKind, TaskOutcome, TaskSpec};
use crate::resources::{Allocation, Amount, ResourceSet};
use crate::time::{Duration, Time};

/// This node's id in every test.
const ME: NodeId = NodeId(1);
const JOB: JobId = JobId(1);

/// A registered node, a clock, and helpers that drain and check after every step.
struct Harness {
    node: Node,
    now: Time,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(NodeConfig::default())
    }

    fn with_config(config: NodeConfig) -> Harness {
        let mut h = Harness { node: Node::new(config), now: Time::ZERO };
        let out = h.input(NodeInput::Registered(ME));
        assert!(out.is_empty());
        h
    }

    /// Feeds an input that must be accepted; returns the drained outputs.
    fn input(&mut self, input: NodeInput) -> Vec<NodeOutput> {
        match self.try_input(input) {
            Ok(out) => out,
            Err(e) => panic!("input refused: {e}"),
        }
    }

    /// Feeds an input; a refusal must leave the machine exactly as it was, with no output.
    fn try_input(&mut self, input: NodeInput) -> Result<Vec<NodeOutput>, InputError> {
        let before = format!("{:?}", self.node);
        let result = self.node.handle_input(self.now, input);
        let out = self.drain();
        self.node.check_invariants();
        if result.is_err() {
            assert!(out.is_empty(), "a refused input produced {out:?}");
            assert_eq!(before, format!("{:?}", self.node), "a refused input changed the state");
        }
        result.map(|()| out)
    }

    /// Feeds an input that must be refused; returns the error.
    fn refused(&mut self, input: NodeInput) -> InputError {
        self.try_input(input).expect_err("input should be refused")
    }

    fn drain(&mut self) -> Vec<NodeOutput> {
        std::iter::from_fn(|| self.node.poll_output()).collect()
    }

    /// Moves the clock to `t` and fires every deadline due by then, one wake-up at a time.
    fn advance_to(&mut self, t: Time) -> Vec<NodeOutput> {
        assert!(t >= self.now);
        let mut out = Vec::new();
        while let Some(wake) = self.node.poll_timeout().filter(|w| *w <= t) {
            self.now = wake.max(self.now);
            self.node.handle_timeout(self.now);
            out.extend(self.drain());
            self.node.check_invariants();
        }
        self.now = t;
        out
    }

    fn head(&mut self, msg: HeadToNode) -> Vec<NodeOutput> {
        self.input(NodeInput::FromHead(msg))
    }

    fn run(&mut self, spec: TaskSpec, args: Vec<(ObjectId, ArgSource)>) -> Vec<NodeOutput> {
        self.head(run_task(spec, 0, Allocation::default(), args, None))
    }

    /// Runs `spec` with no by-reference argument and starts its new worker; returns the worker.
    fn run_on_new_worker(&mut self, spec: TaskSpec) -> WorkerId {
        let out = self.run(spec, vec![]);
        let worker = started_worker(&out).expect("a new worker is started");
        self.input(NodeInput::WorkerStarted { worker });
        worker
    }

    /// Runs `spec` with no by-reference argument on an idle worker or a new one; returns the worker.
    fn run_anywhere(&mut self, spec: TaskSpec) -> WorkerId {
        let task = spec.task;
        let out = self.run(spec, vec![]);
        let Some(worker) = started_worker(&out) else { return executed(&out)[0].0 };
        let out = self.input(NodeInput::WorkerStarted { worker });
        assert_eq!(executed(&out), vec![(worker, task)]);
        worker
    }

    fn done(&mut self, worker: WorkerId, task: TaskId, outcome: TaskOutcome) -> Vec<NodeOutput> {
        self.input(NodeInput::TaskDone { worker, task, attempt: 0, outcome })
    }

    fn finish(&mut self, worker: WorkerId, task: TaskId) -> Vec<NodeOutput> {
        self.done(worker, task, TaskOutcome::Finished(vec![inline_return(task)]))
    }
}

fn run_task(
    spec: TaskSpec,
    attempt: u32,
    allocation: Allocation,
    args: Vec<(ObjectId, ArgSource)>,
    actor_worker: Option<WorkerId>,
) -> HeadToNode {
    HeadToNode::RunTask { spec: spec.into(), attempt, allocation, args, actor_worker, after: vec![] }
}

/// `RunTask` for a successor of `before` (attempt 0).
fn run_after(spec: TaskSpec, before: TaskId) -> HeadToNode {
    run_behind(spec, &[before])
}

/// `RunTask` for a successor of the running `chain[0]` behind the successors `chain[1..]`
/// (attempts 0).
fn run_behind(spec: TaskSpec, chain: &[TaskId]) -> HeadToNode {
    HeadToNode::RunTask {
        spec: spec.into(),
        attempt: 0,
        allocation: Allocation::default(),
        args: vec![],
        actor_worker: None,
        after: chain.iter().map(|t| (*t, 0)).collect(),
    }
}

fn task(n: u64) -> TaskSpec {
    TaskSpec::new(TaskId(n), JOB, "f")
}

/// A task taking the given objects by reference.
fn task_with_refs(n: u64, refs: &[ObjectId]) -> TaskSpec {
    let mut spec = task(n);
    spec.args = refs.iter().map(|o| Arg::Ref(*o)).collect();
    spec
}

fn actor_creation(n: u64, actor: u64) -> TaskSpec {
    let mut spec = task(n);
    spec.kind = TaskKind::ActorCreation(ActorId(actor));
    spec
}

fn method(n: u64, actor: u64, seq: u64) -> TaskSpec {
    let mut spec = task(n);
    spec.kind = TaskKind::ActorMethod { actor: ActorId(actor), seq };
    spec
}

/// An object produced elsewhere (by task 1000 + n).
fn obj(n: u64) -> ObjectId {
    ObjectId::for_return(TaskId(1000 + n), 1)
}

fn at(size: u64, nodes: &[u64]) -> ArgSource {
    ArgSource::At { size, nodes: nodes.iter().map(|n| NodeId(*n)).collect() }
}

fn gpu_allocation(devices: &[u32]) -> Allocation {
    let units = devices.len() as u64;
    Allocation {
        resources: ResourceSet::cpus(1).with_gpu(Amount::units(units)),
        gpus: devices.iter().map(|d| (*d, Amount::ONE)).collect(),
    }
}

fn inline_return(task: TaskId) -> ReturnValue {
    ReturnValue { object: ObjectId::for_return(task, 1), size: 3, inline: Some(vec![1, 2, 3]), nested: vec![] }
}

fn sealed_return(task: TaskId, size: u64) -> ReturnValue {
    ReturnValue { object: ObjectId::for_return(task, 1), size, inline: None, nested: vec![] }
}

fn started_worker(out: &[NodeOutput]) -> Option<WorkerId> {
    out.iter().find_map(|o| match o {
        NodeOutput::StartWorker { worker, .. } => Some(*worker),
        _ => None,
    })
}

fn executed(out: &[NodeOutput]) -> Vec<(WorkerId, TaskId)> {
    let f = |o: &NodeOutput| match o {
        NodeOutput::Execute { worker, spec, .. } => Some((*worker, spec.task)),
        _ => None,
    };
    out.iter().filter_map(f).collect()
}

fn to_head(out: &[NodeOutput]) -> Vec<NodeToHead> {
    let f = |o: &NodeOutput| match o {
        NodeOutput::ToHead(m) => Some(m.clone()),
        _ => None,
    };
    out.iter().filter_map(f).collect()
}

/// The `TaskEnded` reports in `out`: `(task, attempt, outcome)`.
/// The tasks reported started, in order.
fn started(out: &[NodeOutput]) -> Vec<TaskId> {
    to_head(out)
        .into_iter()
        .filter_map(|m| if let NodeToHead::TaskStarted { task, .. } = m { Some(task) } else { None })
        .collect()
}

fn ended(out: &[NodeOutput]) -> Vec<(TaskId, u32, TaskOutcome)> {
    let f = |m: NodeToHead| match m {
        NodeToHead::TaskEnded { task, attempt, outcome } => Some((task, attempt, outcome)),
        _ => None,
    };
    to_head(out).into_iter().filter_map(f).collect()
}

fn pulls_sent(out: &[NodeOutput]) -> Vec<(NodeId, ObjectId)> {
    let f = |o: &NodeOutput| match o {
        NodeOutput::ToPeer { node, msg: crate::proto::NodeToNode::Pull { object } } => Some((*node, *object)),
        _ => None,
    };
    out.iter().filter_map(f).collect()
}

fn deleted(out: &[NodeOutput]) -> Vec<ObjectId> {
    let f = |o: &NodeOutput| match o {
        NodeOutput::DeleteObject(object) => Some(*object),
        _ => None,
    };
    out.iter().filter_map(f).collect()
}

fn killed(out: &[NodeOutput]) -> Vec<WorkerId> {
    let f = |o: &NodeOutput| match o {
        NodeOutput::KillWorker { worker } => Some(*worker),
        _ => None,
    };
    out.iter().filter_map(f).collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
