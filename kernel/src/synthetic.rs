//! A Head driven with synthesised node answers (no Node machine, no network), for benchmarks and
//! measurements of the Head alone (feature `testkit`).
//!
//! Every `RunTask` the Head dispatches is answered as finished by its node, with small inline
//! values or with values sealed on that node; the clock never moves, so no deadline fires.

use crate::head::{Head, HeadConfig, HeadInput, HeadOutput};
use crate::ids::{ConnId, JobId, NodeId, ObjectId, TaskId};
use crate::proto::{
    DriverToHead, Function, HeadToNode, Hello, NodeToHead, ReturnValue, TaskOutcome, TaskSpec, Welcome,
    PROTOCOL_VERSION,
};
use crate::resources::ResourceSet;
use crate::time::Time;
use std::collections::VecDeque;

/// The time handed to every input.
const NOW: Time = Time(0);

/// A task attempt the Head handed to a node.
#[derive(Clone, Debug)]
pub struct Run {
    /// The node it runs on.
    pub node: NodeId,
    /// The task.
    pub task: TaskId,
    /// Its attempt.
    pub attempt: u32,
    /// Its return objects.
    pub returns: smallvec::SmallVec<[ObjectId; 2]>,
}

/// A Head, its nodes and one job, with the attempts it dispatched not yet answered.
pub struct Synthetic {
    /// The Head.
    pub head: Head,
    /// Registered nodes, in registration order.
    pub nodes: Vec<NodeId>,
    /// The job every task belongs to.
    pub job: JobId,
    /// Dispatched attempts not answered yet, in dispatch order.
    pub runs: VecDeque<Run>,
    /// The function every task calls (one shared name, as a driver keeps it).
    function: Function,
    next_conn: u64,
}

impl Synthetic {
    /// A Head with `nodes` nodes of `cpus` CPUs each and one registered job.
    pub fn new(config: HeadConfig, nodes: u64, cpus: u64) -> Synthetic {
        let mut s = Synthetic {
            head: Head::new(config),
            nodes: Vec::new(),
            job: JobId(0),
            runs: VecDeque::new(),
            function: Function::Named("f".into()),
            next_conn: 0,
        };
        for _ in 0..nodes {
            s.add_node(cpus);
        }
        let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name: "synthetic".into() };
        s.job = match s.connect(hello) {
            Welcome::JobRegistered(job) => job,
            other => panic!("job registration refused: {other:?}"),
        };
        s
    }

    /// Registers one more node of `cpus` CPUs.
    pub fn add_node(&mut self, cpus: u64) -> NodeId {
        let hello = Hello::RegisterNode {
            version: PROTOCOL_VERSION,
            resources: ResourceSet::cpus(cpus),
            labels: Default::default(),
        };
        let node = match self.connect(hello) {
            Welcome::NodeRegistered(node) => node,
            other => panic!("node registration refused: {other:?}"),
        };
        self.nodes.push(node);
        node
    }

    fn connect(&mut self, hello: Hello) -> Welcome {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.head.handle_input(NOW, HeadInput::Connect { conn, hello }).expect("registration is valid");
        let mut answer = None;
        while let Some(out) = self.head.poll_output() {
            match out {
                HeadOutput::ToConn { conn: c, msg } if c == conn => answer = Some(msg),
                other => self.keep(other),
            }
        }
        answer.expect("the head answers a registration at once")
    }

    fn keep(&mut self, out: HeadOutput) {
        if let HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, .. } } = out {
            let returns = spec.return_ids().collect();
            self.runs.push_back(Run { node, task: spec.task, attempt, returns });
        }
    }

    fn input(&mut self, input: HeadInput) {
        self.head.handle_input(NOW, input).expect("synthetic inputs are valid");
        while let Some(out) = self.head.poll_output() {
            self.keep(out);
        }
    }

    /// Submits the job's task number `seq` (one CPU, one return value).
    pub fn submit(&mut self, seq: u64) {
        let task = TaskId::child(TaskId::driver(self.job), 0, seq);
        let msg = DriverToHead::SubmitTask(TaskSpec::calling(task, self.job, self.function.clone()).into());
        self.input(HeadInput::FromDriver { job: self.job, msg });
    }

    /// Answers an attempt as finished: small inline values, or `sealed_bytes` sealed on its node.
    pub fn finish(&mut self, run: &Run, sealed_bytes: Option<u64>) {
        let values = run
            .returns
            .iter()
            .map(|&object| match sealed_bytes {
                Some(size) => ReturnValue { object, size, inline: None, nested: Vec::new() },
                None => ReturnValue { object, size: 8, inline: Some(vec![7; 8]), nested: Vec::new() },
            })
            .collect();
        let msg =
            NodeToHead::TaskEnded { task: run.task, attempt: run.attempt, outcome: TaskOutcome::Finished(values) };
        self.input(HeadInput::FromNode { node: run.node, msg });
    }

    /// The driver drops its handle to `object`.
    pub fn release(&mut self, object: ObjectId) {
        self.input(HeadInput::FromDriver { job: self.job, msg: DriverToHead::RemoveRef(object) });
    }

    /// Submits `count` tasks from sequence number `first`, finishes every attempt dispatched
    /// (including those that waited for room) and frees every result. Returns the tasks finished.
    pub fn run_tasks(&mut self, first: u64, count: u64) -> u64 {
        for seq in first..first + count {
            self.submit(seq);
        }
        let mut finished = 0;
        while let Some(run) = self.runs.pop_front() {
            self.finish(&run, None);
            for &object in &run.returns {
                self.release(object);
            }
            finished += 1;
        }
        finished
    }

    /// A node leaves (as if it had been declared dead).
    pub fn lose(&mut self, node: NodeId) {
        self.input(HeadInput::FromNode { node, msg: NodeToHead::Leaving });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_finishes_and_nothing_is_retained() {
        let mut s = Synthetic::new(HeadConfig::default(), 4, 2);
        assert_eq!(s.run_tasks(0, 100), 100, "tasks that waited for room must finish too");
        assert_eq!(s.head.task_records(), 0);
        assert_eq!(s.head.object_records(), 0);
        s.head.check_invariants();
    }

    #[test]
    fn losing_the_holder_of_sealed_values_rebuilds_them() {
        let mut s = Synthetic::new(HeadConfig::default(), 1, 4);
        for seq in 0..8 {
            s.submit(seq);
        }
        while let Some(run) = s.runs.pop_front() {
            s.finish(&run, Some(1 << 20));
        }
        s.add_node(4);
        let holder = s.nodes[0];
        s.lose(holder);
        assert_eq!(s.head.stats().reconstructions, 8);
        assert!(s.runs.iter().all(|r| r.node != holder));
        s.head.check_invariants();
    }
}
