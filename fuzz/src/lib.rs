//! Fuzzing the Head: arbitrary bytes become a sequence of [`Op`]s fed straight to a
//! [`Head`] (no testkit in between), so that malformed and hostile inputs reach
//! [`Head::handle_input`]: messages from nodes that never registered or were declared dead,
//! arbitrary task specs, completions of attempts that never ran, stale attempts, garbage outcomes.
//!
//! [`run`] asserts, for every input:
//! - the Head never panics (a panic is a kernel bug; the fuzzer reports it as a crash);
//! - [`Head::check_invariants`] holds after it;
//! - a refused input returns `Err` and counts in [`HeadStats::inputs_refused`](keel_kernel::head::HeadStats),
//!   an accepted one returns `Ok` and does not;
//! - inputs that must be refused are: a driver message for a job that never registered or has
//!   ended, and any message from a node id the Head never handed out.
//!
//! Structured operations (`Submit`, `Start`, `Finish`, `Fail`) build well-formed inputs from what
//! the Head said so far, so the fuzzer also gets deep into scheduling, completion and retries.

use arbitrary::{Arbitrary, Unstructured};
use keel_kernel::errors::TaskFailure;
use keel_kernel::head::{Head, HeadConfig, HeadInput, HeadOutput, HeadStats};
use keel_kernel::proto::{
    Arg, DriverToHead, HeadToNode, Hello, Labels, NodeToHead, ReturnValue, SchedulingStrategy, TaskOutcome, TaskSpec,
    Welcome, PROTOCOL_VERSION,
};
use keel_kernel::{Amount, ConnId, Duration, InputError, JobId, NodeId, ObjectId, ResourceSet, TaskId, Time, WorkerId};

/// How many operations one input may hold (keeps every run short).
pub const MAX_OPS: usize = 256;

/// A reference to a node or job: one the Head handed out (by index), or any raw id.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The `i`-th id the Head handed out (modulo how many), or a raw id when there is none yet.
    Known(u8),
    /// Any id at all.
    Raw(u64),
}

/// One step of a fuzzed run.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// A node registers (with a wrong protocol version when `bad_version`).
    RegisterNode {
        /// Announce a version the Head must refuse.
        bad_version: bool,
        /// Whole CPUs.
        cpus: u8,
        /// Whole GPUs.
        gpus: u8,
        /// Arbitrary resources instead of the CPUs and GPUs above.
        raw: Option<ResourceSet>,
        /// Its labels.
        labels: Labels,
    },
    /// A driver registers a job.
    RegisterJob {
        /// Announce a version the Head must refuse.
        bad_version: bool,
        /// The job's name.
        name: String,
    },
    /// Any driver message; with `own_job`, task specs are rewritten to claim the sender's job.
    Driver {
        /// The sending job.
        job: Who,
        /// The message.
        msg: DriverToHead,
        /// Make submitted specs claim the sending job, so that they get past the first check.
        own_job: bool,
    },
    /// A well-formed normal task with by-reference arguments drawn from earlier objects.
    Submit {
        /// The sending job.
        job: Who,
        /// Task sequence number (duplicates are refused).
        seq: u16,
        /// Tenths of a CPU.
        cpu_tenths: u8,
        /// Quarters of a GPU.
        gpu_quarters: u8,
        /// Indices into the objects seen so far.
        args: Vec<u8>,
        /// How many values it returns (kept small).
        returns: u8,
        /// Where it may run.
        strategy: SchedulingStrategy,
        /// How many retries.
        retries: u8,
    },
    /// A driver puts a small inline object.
    Put {
        /// The sending job.
        job: Who,
        /// The put counter (duplicates are refused).
        seq: u16,
        /// Its size.
        len: u8,
    },
    /// Any node message, from a known or raw node id.
    Node {
        /// The sender.
        node: Who,
        /// The message.
        msg: NodeToHead,
    },
    /// A node reports that a dispatched attempt started.
    Start {
        /// Which dispatched attempt.
        pick: u8,
        /// Its worker.
        worker: u64,
    },
    /// A node reports that a dispatched attempt finished with well-shaped values.
    Finish {
        /// Which dispatched attempt.
        pick: u8,
        /// Size of each value.
        size: u32,
        /// Send the values inline (refused when too big) rather than stored on the node.
        inline: bool,
    },
    /// A node reports that a dispatched attempt failed.
    Fail {
        /// Which dispatched attempt.
        pick: u8,
        /// How.
        failure: TaskFailure,
    },
    /// An operator drains a node.
    Drain(Who),
    /// A driver's connection drops.
    DriverGone(Who),
    /// A node's connection drops (it is lost at once).
    NodeGone(Who),
    /// Time passes (nodes that send nothing are declared dead after the node timeout).
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// Every registered, live node sends a heartbeat.
    Heartbeats,
}

/// What the run knows from the Head's outputs.
struct World {
    head: Head,
    now: Time,
    next_conn: u64,
    /// Every node id the Head handed out, in order (also the ones declared dead since).
    nodes: Vec<NodeId>,
    /// Nodes declared dead.
    dead: Vec<NodeId>,
    /// Every job the Head registered, in order, and whether it is still running.
    jobs: Vec<(JobId, bool)>,
    /// Attempts the Head dispatched: node, spec, attempt.
    dispatched: Vec<(NodeId, std::sync::Arc<TaskSpec>, u32)>,
    /// Objects that may exist: returns of submitted tasks and puts.
    objects: Vec<ObjectId>,
}

impl World {
    fn new() -> World {
        World {
            head: Head::new(HeadConfig::default()),
            now: Time::ZERO,
            next_conn: 0,
            nodes: Vec::new(),
            dead: Vec::new(),
            jobs: Vec::new(),
            dispatched: Vec::new(),
            objects: Vec::new(),
        }
    }

    fn node(&self, who: Who) -> NodeId {
        match who {
            Who::Known(i) if !self.nodes.is_empty() => self.nodes[i as usize % self.nodes.len()],
            Who::Known(i) => NodeId(u64::from(i)),
            Who::Raw(n) => NodeId(n),
        }
    }

    fn job(&self, who: Who) -> JobId {
        match who {
            Who::Known(i) if !self.jobs.is_empty() => self.jobs[i as usize % self.jobs.len()].0,
            Who::Known(i) => JobId(u64::from(i)),
            Who::Raw(n) => JobId(n),
        }
    }

    fn job_running(&self, job: JobId) -> bool {
        self.jobs.iter().any(|(j, running)| *j == job && *running)
    }

    fn node_handed_out(&self, node: NodeId) -> bool {
        self.nodes.contains(&node)
    }

    /// Feeds one input and checks what every input must satisfy.
    fn input(&mut self, input: HeadInput) -> Result<(), InputError> {
        let must_refuse = match &input {
            HeadInput::FromDriver { job, .. } | HeadInput::DriverDisconnected(job) => !self.job_running(*job),
            HeadInput::FromNode { node, .. } | HeadInput::DrainNode(node) => !self.node_handed_out(*node),
            HeadInput::Connect { .. } | HeadInput::LaunchFailed { .. } | HeadInput::NodeDisconnected(_) => false,
        };
        let refused_before = self.head.stats().inputs_refused;
        let result = self.head.handle_input(self.now, input.clone());
        let refused_after = self.head.stats().inputs_refused;
        match &result {
            Ok(()) => assert_eq!(refused_after, refused_before, "an accepted input counted as refused: {input:?}"),
            Err(_) => assert_eq!(refused_after, refused_before + 1, "a refused input not counted: {input:?}"),
        }
        if must_refuse {
            assert!(result.is_err(), "the head accepted an input it must refuse: {input:?}");
        }
        if let (
            HeadInput::FromDriver { job, msg: DriverToHead::FinishJob } | HeadInput::DriverDisconnected(job),
            Ok(()),
        ) = (&input, &result)
        {
            for (j, running) in &mut self.jobs {
                if j == job {
                    *running = false;
                }
            }
        }
        self.drain();
        self.head.check_invariants();
        result
    }

    fn drain(&mut self) {
        while let Some(output) = self.head.poll_output() {
            match output {
                HeadOutput::ToConn { msg: Welcome::NodeRegistered(node), .. } => {
                    assert!(!self.nodes.contains(&node), "node id {node:?} handed out twice");
                    self.nodes.push(node);
                }
                HeadOutput::ToConn { msg: Welcome::JobRegistered(job), .. } => {
                    assert!(!self.jobs.iter().any(|(j, _)| *j == job), "job id {job:?} handed out twice");
                    self.jobs.push((job, true));
                }
                HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, .. } } => {
                    assert!(!self.dead.contains(&node), "a task dispatched to dead node {node:?}");
                    if self.dispatched.len() < 1024 {
                        self.dispatched.push((node, spec, attempt));
                    }
                }
                HeadOutput::NodeDead(node) => self.dead.push(node),
                _ => {}
            }
        }
    }

    fn fire_timers(&mut self) {
        while let Some(t) = self.head.poll_timeout().filter(|t| *t <= self.now) {
            self.head.handle_timeout(self.now);
            self.drain();
            self.head.check_invariants();
            assert!(self.head.poll_timeout().is_none_or(|next| next > t || next > self.now), "a timer did not fire");
            if self.head.poll_timeout() == Some(t) {
                break;
            }
        }
    }

    fn connect(&mut self, hello: Hello) {
        self.next_conn += 1;
        let _ = self.input(HeadInput::Connect { conn: ConnId(self.next_conn), hello });
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::RegisterNode { bad_version, cpus, gpus, raw, labels } => {
                let resources = raw.unwrap_or_else(|| {
                    ResourceSet::cpus(u64::from(cpus % 16)).with_gpu(Amount::units(u64::from(gpus % 4)))
                });
                let version = if bad_version { PROTOCOL_VERSION + 1 } else { PROTOCOL_VERSION };
                self.connect(Hello::RegisterNode { version, resources, labels });
            }
            Op::RegisterJob { bad_version, name } => {
                let version = if bad_version { PROTOCOL_VERSION.wrapping_sub(1) } else { PROTOCOL_VERSION };
                self.connect(Hello::RegisterJob { version, name });
            }
            Op::Driver { job, mut msg, own_job } => {
                let job = self.job(job);
                if own_job {
                    match &mut msg {
                        DriverToHead::SubmitTask(spec) => std::sync::Arc::make_mut(spec).job = job,
                        DriverToHead::CreateActor { creation: spec, .. } => std::sync::Arc::make_mut(spec).job = job,
                        _ => {}
                    }
                }
                let _ = self.input(HeadInput::FromDriver { job, msg });
            }
            Op::Submit { job, seq, cpu_tenths, gpu_quarters, args, returns, strategy, retries } => {
                let job = self.job(job);
                let task = TaskId::child(TaskId::driver(job), 0, u64::from(seq));
                let mut spec = TaskSpec::new(task, job, "f");
                spec.resources = ResourceSet {
                    cpu: Amount(u64::from(cpu_tenths % 40) * 1_000),
                    gpu: Amount(u64::from(gpu_quarters % 12) * 2_500),
                    ..ResourceSet::default()
                };
                spec.args = args
                    .iter()
                    .filter_map(|i| self.objects.get(*i as usize % self.objects.len().max(1)).map(|o| Arg::Ref(*o)))
                    .collect();
                spec.num_returns = u32::from(returns % 4);
                spec.strategy = strategy;
                spec.max_retries = u32::from(retries % 4);
                let outs: Vec<ObjectId> = spec.return_ids().collect();
                if self.input(HeadInput::FromDriver { job, msg: DriverToHead::SubmitTask(spec.into()) }).is_ok() {
                    self.objects.extend(outs);
                }
            }
            Op::Put { job, seq, len } => {
                let job = self.job(job);
                let object = ObjectId::for_put(TaskId::driver(job), u32::from(seq));
                let inline = Some(vec![len; usize::from(len)]);
                let msg = DriverToHead::Put { object, size: u64::from(len), inline, node: None, nested: Vec::new() };
                if self.input(HeadInput::FromDriver { job, msg }).is_ok() {
                    self.objects.push(object);
                }
            }
            Op::Node { node, msg } => {
                let node = self.node(node);
                let _ = self.input(HeadInput::FromNode { node, msg });
            }
            Op::Start { pick, worker } => {
                if let Some((node, spec, attempt)) = self.pick(pick) {
                    let msg = NodeToHead::TaskStarted { task: spec.task, attempt, worker: WorkerId(worker) };
                    let _ = self.input(HeadInput::FromNode { node, msg });
                }
            }
            Op::Finish { pick, size, inline } => {
                if let Some((node, spec, attempt)) = self.pick(pick) {
                    let size = u64::from(size % 300_000);
                    let returns = spec
                        .return_ids()
                        .map(|object| ReturnValue {
                            object,
                            size,
                            inline: inline.then(|| vec![7; size as usize]),
                            nested: Vec::new(),
                        })
                        .collect();
                    let outcome = TaskOutcome::Finished(returns);
                    let _ = self.input(HeadInput::FromNode {
                        node,
                        msg: NodeToHead::TaskEnded { task: spec.task, attempt, outcome },
                    });
                }
            }
            Op::Fail { pick, failure } => {
                if let Some((node, spec, attempt)) = self.pick(pick) {
                    let outcome = TaskOutcome::Failed(failure);
                    let _ = self.input(HeadInput::FromNode {
                        node,
                        msg: NodeToHead::TaskEnded { task: spec.task, attempt, outcome },
                    });
                }
            }
            Op::Drain(node) => {
                let node = self.node(node);
                let _ = self.input(HeadInput::DrainNode(node));
            }
            Op::DriverGone(job) => {
                let job = self.job(job);
                let _ = self.input(HeadInput::DriverDisconnected(job));
            }
            Op::NodeGone(node) => {
                let node = self.node(node);
                // Accepted whatever the node: a node no longer live is ignored.
                assert_eq!(self.input(HeadInput::NodeDisconnected(node)), Ok(()));
                assert!(!self.head.live_nodes().any(|n| n == node), "a disconnected node is still live");
            }
            Op::Advance { ms } => {
                self.now = self.now + Duration::from_millis(u64::from(ms));
            }
            Op::Heartbeats => {
                let live: Vec<NodeId> = self.head.live_nodes().collect();
                for node in live {
                    self.input(HeadInput::FromNode { node, msg: NodeToHead::Heartbeat })
                        .expect("a live node's heartbeat");
                }
            }
        }
        self.fire_timers();
    }

    fn pick(&self, pick: u8) -> Option<(NodeId, std::sync::Arc<TaskSpec>, u32)> {
        if self.dispatched.is_empty() {
            return None;
        }
        let (node, spec, attempt) = &self.dispatched[pick as usize % self.dispatched.len()];
        Some((*node, spec.clone(), *attempt))
    }
}

/// Runs one fuzz input: decodes up to [`MAX_OPS`] operations and applies them to a fresh Head,
/// asserting what the module docs list. Bytes that do not decode end the run early.
pub fn run(data: &[u8]) {
    run_with_stats(data);
}

/// [`run`], returning the Head's counters at the end (to pick corpus seeds that reach deep).
pub fn run_with_stats(data: &[u8]) -> HeadStats {
    let mut u = Unstructured::new(data);
    let mut world = World::new();
    world.head.check_invariants();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        world.apply(op);
    }
    world.head.stats().clone()
}
