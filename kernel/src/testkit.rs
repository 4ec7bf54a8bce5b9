//! An in-memory cluster for tests, fuzzing, benchmarks and demos: one [`Head`], several [`Node`]s
//! and simulated workers, stepped to the earliest wake-up with no I/O.
//!
//! This is a minimal, deterministic stepper (one event queue ordered by time and sequence number,
//! a fixed message latency, no faults but the ones a test asks for). The full simulator with a
//! network model, fault injection and oracles lives in `keel-sim`.
//!
//! Workers run *behaviours* named by the task's function, so tests can say what a task does:
//!
//! | function name           | behaviour                                                       |
//! |-------------------------|-----------------------------------------------------------------|
//! | `ms=N`                  | runs for N milliseconds (default 1)                             |
//! | `bytes=N`               | each return value is N bytes (default 8; above the inline limit |
//! |                         | it is sealed in the node's store)                               |
//! | `fail`                  | raises an application error                                     |
//! | `crash`                 | the worker process dies mid-task                                |
//!
//! Parts combine with `;`, for example `ms=5;bytes=200000`. A return value's bytes are a
//! deterministic function of the function name, the return index and the argument values, so a
//! rebuilt object equals the original byte for byte.

use crate::errors::{ErrorReason, InputError, TaskFailure};
use crate::head::{Head, HeadConfig, HeadInput, HeadOutput};
use crate::ids::{ConnId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::node::{ExecArg, Node, NodeConfig, NodeInput, NodeOutput};
use crate::proto::{
    Arg, DriverToHead, Function, HeadToDriver, Hello, Labels, ObjectData, ReturnValue, TaskOutcome, TaskSpec, Welcome,
    PROTOCOL_VERSION,
};
use crate::resources::ResourceSet;
use crate::time::{Duration, Time};
use std::collections::{BTreeMap, BTreeSet};

/// What a task's function name asks the simulated worker to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// How long it runs.
    pub duration: Duration,
    /// Size of each return value in bytes.
    pub return_bytes: u64,
    /// Raise an application error.
    pub fail: bool,
    /// Kill the worker process.
    pub crash: bool,
}

impl Behaviour {
    /// Parses a function name (unknown parts are ignored, so any name is a valid 1 ms task).
    pub fn parse(function: &Function) -> Behaviour {
        let mut b = Behaviour { duration: Duration::from_millis(1), return_bytes: 8, fail: false, crash: false };
        let Function::Named(name) = function else { return b };
        for part in name.split(';') {
            match part.split_once('=') {
                Some(("ms", v)) => b.duration = Duration::from_millis(v.parse().unwrap_or(1)),
                Some(("bytes", v)) => b.return_bytes = v.parse().unwrap_or(8),
                _ if part == "fail" => b.fail = true,
                _ if part == "crash" => b.crash = true,
                _ => {}
            }
        }
        b
    }
}

/// The deterministic bytes of a return value.
pub fn value_bytes(spec: &TaskSpec, index: u32, args: &[Vec<u8>], len: u64) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    if let Function::Named(name) = &spec.function {
        feed(name.as_bytes());
    }
    feed(&index.to_le_bytes());
    for a in args {
        feed(&(a.len() as u64).to_le_bytes());
        feed(a);
    }
    (0..len).map(|i| (h.rotate_left((i % 64) as u32) ^ i) as u8).collect()
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    ToHead(HeadInputKey),
    /// To a host's node, as it was when sent (its connection): what was on its way to a node
    /// that crashed is lost with it, not delivered to the one that restarted there.
    ToNode {
        host: usize,
        conn: ConnId,
        input: NodeInputKey,
    },
}

// Inputs are stored beside the queue (they are not `Ord`); the queue holds keys.
/// What a node hands a worker: the attempt and where its arguments are.
type Execution = (std::sync::Arc<TaskSpec>, u32, Vec<ExecArg>);

type HeadInputKey = u64;
type NodeInputKey = u64;

/// One simulated machine: a Node and its store of object bytes and workers.
pub struct Host {
    /// The node machine.
    pub node: Node,
    /// The id the head gave it (changes when it registers again).
    pub id: Option<NodeId>,
    /// Whether it is up. A down host receives nothing and sends nothing.
    pub up: bool,
    /// Cut off from the network: it keeps running (workers, timers) but every message to or from
    /// it is lost.
    pub partitioned: bool,
    /// Object bytes in its store.
    pub store: BTreeMap<ObjectId, Vec<u8>>,
    /// Workers' current work: (task, attempt) and when it completes.
    running: BTreeMap<WorkerId, (TaskId, u32)>,
    /// Attempts handed to a busy worker, which it runs in order after its current one (the flag:
    /// interrupted before it started, so it is skipped as cancelled).
    ahead: BTreeMap<WorkerId, std::collections::VecDeque<(Execution, bool)>>,
    resources: ResourceSet,
    labels: Labels,
    conn: ConnId,
}

/// What a job's driver has heard.
#[derive(Debug, Default)]
pub struct DriverView {
    /// Ready objects.
    pub ready: BTreeMap<ObjectId, ObjectData>,
    /// Failed objects.
    pub failed: BTreeMap<ObjectId, ErrorReason>,
    /// Every message, in order.
    pub inbox: Vec<HeadToDriver>,
}

/// A Head, Nodes and simulated workers wired together in memory.
pub struct Cluster {
    /// The head.
    pub head: Head,
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    /// What each driver heard.
    pub drivers: BTreeMap<JobId, DriverView>,
    now: Time,
    latency: Duration,
    seq: u64,
    queue: BTreeSet<(Time, u64, Event)>,
    head_inputs: BTreeMap<u64, HeadInput>,
    node_inputs: BTreeMap<u64, NodeInput>,
    conns: BTreeMap<ConnId, Option<usize>>,
    next_conn: u64,
    node_config: NodeConfig,
    /// Every head output, in order (for tests that look at decisions).
    pub head_log: Vec<(Time, HeadOutput)>,
    /// Inputs the head refused.
    pub refused: Vec<InputError>,
}

impl Cluster {
    /// An empty cluster; messages take `latency` to arrive.
    pub fn new(config: HeadConfig, node_config: NodeConfig, latency: Duration) -> Cluster {
        Cluster {
            head: Head::new(config),
            hosts: Vec::new(),
            drivers: BTreeMap::new(),
            now: Time::ZERO,
            latency,
            seq: 0,
            queue: BTreeSet::new(),
            head_inputs: BTreeMap::new(),
            node_inputs: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            node_config,
            head_log: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Adds a host and starts its registration; returns its index. Run the cluster to complete it.
    pub fn add_host(&mut self, resources: ResourceSet, labels: Labels) -> usize {
        let host = self.hosts.len();
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let node = Node::new(self.node_config.clone());
        self.hosts.push(Host {
            node,
            id: None,
            up: true,
            partitioned: false,
            store: BTreeMap::new(),
            running: BTreeMap::new(),
            ahead: BTreeMap::new(),
            resources,
            labels,
            conn,
        });
        self.register(host);
        host
    }

    fn register(&mut self, host: usize) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let h = &mut self.hosts[host];
        h.conn = conn;
        let hello =
            Hello::RegisterNode { version: PROTOCOL_VERSION, resources: h.resources.clone(), labels: h.labels.clone() };
        self.conns.insert(conn, Some(host));
        self.send_head(HeadInput::Connect { conn, hello });
    }

    /// Registers a job directly (drivers run in the test's own code) and returns its id.
    pub fn start_job(&mut self, name: &str) -> JobId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.conns.insert(conn, None);
        let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name: name.to_string() };
        self.deliver_head(HeadInput::Connect { conn, hello }).expect("a job registration is never refused");
        let job = self
            .head_log
            .iter()
            .rev()
            .find_map(|(_, o)| match o {
                HeadOutput::ToConn { conn: c, msg: Welcome::JobRegistered(j) } if *c == conn => Some(*j),
                _ => None,
            })
            .expect("the head registers a job at once");
        self.drivers.entry(job).or_default();
        job
    }

    /// A driver message, delivered to the head now.
    pub fn driver(&mut self, job: JobId, msg: DriverToHead) -> Result<(), InputError> {
        self.deliver_head(HeadInput::FromDriver { job, msg })
    }

    /// Any head input, delivered to the head now (for example a message from a node that does
    /// not exist, as a fuzzer or a test of refusals would send).
    pub fn head_input(&mut self, input: HeadInput) -> Result<(), InputError> {
        self.deliver_head(input)
    }

    /// An operator asks the head to drain a registered host's node.
    pub fn drain_host(&mut self, host: usize) -> Result<(), InputError> {
        let node = self.node_id(host);
        self.deliver_head(HeadInput::DrainNode(node))
    }

    /// Submits a task from a job's driver.
    pub fn submit(&mut self, job: JobId, spec: TaskSpec) -> Result<(), InputError> {
        self.driver(job, DriverToHead::SubmitTask(spec.into()))
    }

    /// The node id of a host, once registered.
    pub fn node_id(&self, host: usize) -> NodeId {
        self.hosts[host].id.expect("host is registered")
    }

    /// The host index of a node id.
    pub fn host_of(&self, node: NodeId) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == Some(node))
    }

    /// Crashes a host: it stops sending and receiving; its workers and bytes are gone. The head
    /// notices by the missing heartbeats.
    pub fn crash_host(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        h.up = false;
        h.store.clear();
        h.running.clear();
        h.ahead.clear();
    }

    /// Cuts a host off from the network, or heals the cut. A cut host keeps running; if the head
    /// declares it dead meanwhile, it is told to register again once the cut heals.
    pub fn set_partitioned(&mut self, host: usize, partitioned: bool) {
        self.hosts[host].partitioned = partitioned;
    }

    /// Asks the head to drain a node (no new work; reported drained once idle).
    pub fn drain(&mut self, host: usize) -> Result<(), InputError> {
        let node = self.node_id(host);
        self.deliver_head(HeadInput::DrainNode(node))
    }

    /// Brings a crashed host back with a fresh node machine, registering again as a new node.
    pub fn restart_host(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        assert!(!h.up, "restarting a host that is up");
        h.up = true;
        h.id = None;
        h.node = Node::new(self.node_config.clone());
        self.register(host);
    }

    /// Runs until nothing is left to do before `deadline` (or the queue is empty and no machine
    /// has a timer before it). Returns the number of events handled.
    pub fn run_until(&mut self, deadline: Time) -> u64 {
        let mut steps = 0;
        while let Some(at) = self.next_wakeup().filter(|t| *t <= deadline) {
            self.step_at(at);
            steps += 1;
        }
        self.now = self.now.max(deadline);
        steps
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) -> u64 {
        let deadline = self.now + d;
        self.run_until(deadline)
    }

    /// Runs until no message is in flight and no task is running, or `limit` of simulated time passes.
    /// Heartbeats go on, so "quiet" means no work, not no events.
    pub fn run_until_quiet(&mut self, limit: Duration) {
        let deadline = self.now + limit;
        while self.now < deadline {
            let busy = !self.queue.is_empty() || self.hosts.iter().any(|h| h.up && !h.running.is_empty());
            if !busy {
                break;
            }
            let Some(at) = self.next_wakeup() else { break };
            self.step_at(at.min(deadline));
        }
    }

    fn next_wakeup(&self) -> Option<Time> {
        let mut best = self.queue.first().map(|(t, _, _)| *t);
        let mut consider = |t: Option<Time>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        consider(self.head.poll_timeout());
        for h in self.hosts.iter().filter(|h| h.up) {
            consider(h.node.poll_timeout());
        }
        best.map(|t| t.max(self.now))
    }

    fn step_at(&mut self, at: Time) {
        self.now = self.now.max(at);
        let now = self.now;
        if let Some(&(t, s, ref e)) = self.queue.first() {
            if t <= now {
                let e = e.clone();
                self.queue.remove(&(t, s, e.clone()));
                match e {
                    Event::ToHead(key) => {
                        let input = self.head_inputs.remove(&key).expect("queued head input");
                        let _ = self.deliver_head(input);
                    }
                    Event::ToNode { host, conn, input } => {
                        let input = self.node_inputs.remove(&input).expect("queued node input");
                        if self.hosts[host].conn == conn {
                            self.deliver_node(host, input);
                        }
                    }
                }
                return;
            }
        }
        if self.head.poll_timeout().is_some_and(|t| t <= now) {
            self.head.handle_timeout(now);
            self.drain_head();
        }
        for host in 0..self.hosts.len() {
            if self.hosts[host].up && self.hosts[host].node.poll_timeout().is_some_and(|t| t <= now) {
                self.hosts[host].node.handle_timeout(now);
                self.drain_node(host);
            }
        }
    }

    fn send_head(&mut self, input: HeadInput) {
        self.seq += 1;
        self.head_inputs.insert(self.seq, input);
        self.queue.insert((self.now + self.latency, self.seq, Event::ToHead(self.seq)));
    }

    fn send_node(&mut self, host: usize, input: NodeInput, delay: Duration) {
        self.seq += 1;
        self.node_inputs.insert(self.seq, input);
        let conn = self.hosts[host].conn;
        self.queue.insert((self.now + delay, self.seq, Event::ToNode { host, conn, input: self.seq }));
    }

    fn deliver_head(&mut self, input: HeadInput) -> Result<(), InputError> {
        let result = self.head.handle_input(self.now, input);
        if let Err(e) = &result {
            self.refused.push(e.clone());
        }
        self.drain_head();
        result
    }

    fn drain_head(&mut self) {
        while let Some(output) = self.head.poll_output() {
            self.head_log.push((self.now, output.clone()));
            match output {
                HeadOutput::ToConn { conn, msg } => {
                    if let (Some(Some(host)), Welcome::NodeRegistered(id)) = (self.conns.get(&conn).copied(), &msg) {
                        self.hosts[host].id = Some(*id);
                        self.send_node(host, NodeInput::Registered(*id), self.latency);
                    }
                }
                HeadOutput::ToNode { node, msg } => {
                    if let Some(host) = self.host_of(node).filter(|h| !self.hosts[*h].partitioned) {
                        self.send_node(host, NodeInput::FromHead(msg), self.latency);
                    }
                }
                HeadOutput::ToDriver { job, msg } => self.deliver_to_driver(job, msg),
                HeadOutput::NodeDead(_) => {}
                // A drained node's daemon is stopped by its host, and so is one the autoscaler
                // terminates.
                HeadOutput::NodeDrained(node) | HeadOutput::Terminate { node } => {
                    if let Some(host) = self.host_of(node) {
                        self.crash_host(host);
                    }
                }
                // Launches are in `head_log`: a test plays the provider (`add_host` with the
                // launch labels).
                HeadOutput::Launch { .. } => {}
            }
        }
    }

    fn deliver_to_driver(&mut self, job: JobId, msg: HeadToDriver) {
        let view = self.drivers.entry(job).or_default();
        match &msg {
            HeadToDriver::ObjectReady { object, data, .. } => {
                view.ready.insert(*object, data.clone());
            }
            HeadToDriver::ObjectFailed { object, reason } => {
                view.failed.insert(*object, reason.clone());
            }
            _ => {}
        }
        view.inbox.push(msg);
    }

    fn deliver_node(&mut self, host: usize, input: NodeInput) {
        if !self.hosts[host].up {
            return;
        }
        let next_of = match &input {
            NodeInput::TaskDone { worker, .. } => {
                self.hosts[host].running.remove(worker);
                Some(*worker)
            }
            NodeInput::WorkerExited { worker, .. } => {
                self.hosts[host].running.remove(worker);
                self.hosts[host].ahead.remove(worker);
                None
            }
            _ => None,
        };
        let _ = self.hosts[host].node.handle_input(self.now, input);
        self.drain_node(host);
        if let Some(worker) = next_of {
            self.run_next(host, worker);
        }
    }

    /// A worker that ended its attempt runs the next one handed to it ahead, if any.
    fn run_next(&mut self, host: usize, worker: WorkerId) {
        if self.hosts[host].running.contains_key(&worker) {
            return;
        }
        let Some(queue) = self.hosts[host].ahead.get_mut(&worker) else { return };
        let ((spec, attempt, args), interrupted) = queue.pop_front().expect("ahead queues are never kept empty");
        if queue.is_empty() {
            self.hosts[host].ahead.remove(&worker);
        }
        if interrupted {
            let (task, outcome) = (spec.task, TaskOutcome::Failed(TaskFailure::Cancelled));
            self.hosts[host].running.insert(worker, (task, attempt));
            self.send_node(host, NodeInput::TaskDone { worker, task, attempt, outcome }, Duration::ZERO);
        } else {
            self.execute(host, worker, spec, attempt, args);
        }
    }

    fn drain_node(&mut self, host: usize) {
        while let Some(output) = self.hosts[host].node.poll_output() {
            self.perform(host, output);
        }
    }

    fn perform(&mut self, host: usize, output: NodeOutput) {
        let latency = self.latency;
        match output {
            NodeOutput::ToHead(msg) => {
                if let Some(node) = self.hosts[host].id.filter(|_| !self.hosts[host].partitioned) {
                    self.send_head(HeadInput::FromNode { node, msg });
                }
            }
            NodeOutput::ToPeer { node, msg } => {
                let from = self.hosts[host].id.expect("registered");
                let cut = self.hosts[host].partitioned;
                if let Some(peer) =
                    self.host_of(node).filter(|p| self.hosts[*p].up && !cut && !self.hosts[*p].partitioned)
                {
                    self.send_node(peer, NodeInput::FromPeer { from, msg }, latency);
                }
            }
            NodeOutput::StartWorker { worker, .. } => {
                self.send_node(host, NodeInput::WorkerStarted { worker }, latency)
            }
            NodeOutput::Execute { worker, spec, attempt, args } => {
                let h = &self.hosts[host];
                if h.running.contains_key(&worker) || h.ahead.contains_key(&worker) {
                    self.hosts[host].ahead.entry(worker).or_default().push_back(((spec, attempt, args), false));
                } else {
                    self.execute(host, worker, spec, attempt, args);
                }
            }
            NodeOutput::InterruptTask { worker, task, attempt } => {
                // A worker skips an attempt it holds but has not started; a running one goes on.
                let queue = self.hosts[host].ahead.get_mut(&worker).into_iter().flatten();
                for ((spec, a, _), interrupted) in queue {
                    if spec.task == task && *a == attempt {
                        *interrupted = true;
                    }
                }
            }
            NodeOutput::WithdrawTask { worker, tasks } => {
                // Given back, all of them, if the first has not started; else they run on.
                if let Some(queue) = self.hosts[host].ahead.get_mut(&worker) {
                    if crate::node::withdraw_held(queue, &tasks, |((s, a, _), _)| (s.task, *a)) {
                        if queue.is_empty() {
                            self.hosts[host].ahead.remove(&worker);
                        }
                        // The answer takes a while to arrive: orders, ends and blocks may cross it.
                        self.send_node(host, NodeInput::TaskWithdrawn { worker, tasks }, latency);
                    }
                }
            }
            NodeOutput::KillWorker { worker } => {
                self.hosts[host].running.remove(&worker);
                self.hosts[host].ahead.remove(&worker);
                self.send_node(host, NodeInput::WorkerExited { worker, exit_code: None }, latency);
            }
            NodeOutput::SendObject { object, to, .. } => self.transfer(host, object, to),
            NodeOutput::DeleteObject(object) => {
                self.hosts[host].store.remove(&object);
            }
            NodeOutput::ToWorker { .. } => {}
            NodeOutput::Reset => {
                let h = &mut self.hosts[host];
                h.store.clear();
                h.running.clear();
                h.ahead.clear();
                h.id = None;
                self.register(host);
            }
        }
    }

    fn transfer(&mut self, host: usize, object: ObjectId, to: NodeId) {
        let from = self.hosts[host].id.expect("registered");
        let bytes = self.hosts[host].store.get(&object).cloned();
        let cut = self.hosts[host].partitioned;
        let peer = self.host_of(to).filter(|p| self.hosts[*p].up && !cut && !self.hosts[*p].partitioned);
        match (bytes, peer) {
            (Some(bytes), Some(peer)) => {
                let size = bytes.len() as u64;
                self.hosts[peer].store.insert(object, bytes);
                self.send_node(peer, NodeInput::ObjectSealed { object, size }, self.latency);
            }
            (None, Some(peer)) => self.send_node(peer, NodeInput::PullFailed { object, from }, self.latency),
            _ => {}
        }
        self.send_node(host, NodeInput::SendEnded { object, to }, self.latency);
    }

    fn execute(
        &mut self,
        host: usize,
        worker: WorkerId,
        spec: std::sync::Arc<TaskSpec>,
        attempt: u32,
        args: Vec<ExecArg>,
    ) {
        let behaviour = Behaviour::parse(&spec.function);
        let mut values = Vec::new();
        for (arg, exec) in spec.args.iter().zip(&args) {
            values.push(match (arg, exec) {
                (Arg::Value { data, .. }, _) => data.clone(),
                (_, ExecArg::Inline(bytes)) => bytes.clone(),
                (_, ExecArg::Local { object, .. }) => self.hosts[host].store.get(object).cloned().unwrap_or_default(),
                (_, ExecArg::Value) => Vec::new(),
            });
        }
        self.hosts[host].running.insert(worker, (spec.task, attempt));
        let delay = behaviour.duration;
        if behaviour.crash {
            self.send_node(host, NodeInput::WorkerExited { worker, exit_code: Some(137) }, delay);
            return;
        }
        let outcome = if behaviour.fail {
            TaskOutcome::Failed(TaskFailure::Application { message: "the task raised on purpose".into() })
        } else {
            let inline_max = self.head.config().inline_max_bytes;
            let returns = spec
                .return_ids()
                .enumerate()
                .map(|(i, object)| {
                    let bytes = value_bytes(&spec, i as u32 + 1, &values, behaviour.return_bytes);
                    let size = bytes.len() as u64;
                    let inline = if size <= inline_max {
                        Some(bytes)
                    } else {
                        self.hosts[host].store.insert(object, bytes);
                        None
                    };
                    ReturnValue { object, size, inline, nested: Vec::new() }
                })
                .collect();
            TaskOutcome::Finished(returns)
        };
        let task = spec.task;
        self.send_node(host, NodeInput::TaskDone { worker, task, attempt, outcome }, delay);
    }

    /// Checks the head's and every live node's invariants.
    pub fn check_invariants(&self) {
        self.head.check_invariants();
        for h in self.hosts.iter().filter(|h| h.up) {
            h.node.check_invariants();
        }
    }

    /// The bytes of an object as a driver would get them: inline, or from a live host holding it.
    pub fn fetch(&self, job: JobId, object: ObjectId) -> Option<Result<Vec<u8>, ErrorReason>> {
        let view = self.drivers.get(&job)?;
        if let Some(reason) = view.failed.get(&object) {
            return Some(Err(reason.clone()));
        }
        match view.ready.get(&object)? {
            ObjectData::Inline(bytes) => Some(Ok(bytes.clone())),
            ObjectData::At(nodes) => nodes
                .iter()
                .filter_map(|n| self.host_of(*n))
                .find_map(|h| self.hosts[h].store.get(&object).cloned())
                .map(Ok),
        }
    }
}

/// A one-CPU task of `job` with a deterministic id and behaviour `function`.
pub fn task(job: JobId, seq: u64, function: &str) -> TaskSpec {
    TaskSpec::new(TaskId::child(TaskId::driver(job), 0, seq), job, function)
}
