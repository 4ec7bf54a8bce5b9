//! Helpers shared by the integration tests.
#![allow(dead_code)]

use keel_kernel::head::{HeadStats, TaskStateKind};
use keel_kernel::proto::{
    DriverToHead, Hello, Labels, NodeToHead, SchedulingStrategy, TaskKind, TaskSpec, Welcome, PROTOCOL_VERSION,
};
use keel_kernel::testkit::Cluster;
use keel_kernel::*;

/// A cluster of `nodes` hosts with `cpus` CPUs each, registered and settled.
pub fn cluster_with(config: HeadConfig, nodes: usize, cpus: u64) -> Cluster {
    let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
    for _ in 0..nodes {
        c.add_host(ResourceSet::cpus(cpus), Labels::new());
    }
    c.run_for(Duration::from_millis(10));
    c.check_invariants();
    c
}

/// A cluster with the default head settings.
pub fn cluster(nodes: usize, cpus: u64) -> Cluster {
    cluster_with(HeadConfig::default(), nodes, cpus)
}

/// The bytes of `object` read from a live host the head lists as a holder.
pub fn stored_bytes(c: &Cluster, object: ObjectId) -> Option<Vec<u8>> {
    c.head
        .object_locations(object)
        .into_iter()
        .filter_map(|n| c.host_of(n))
        .filter(|h| c.hosts[*h].up)
        .find_map(|h| c.hosts[h].store.get(&object).cloned())
}

/// Pins a spec to `node`, falling back elsewhere when it is dead.
pub fn soft_on(mut spec: TaskSpec, node: NodeId) -> TaskSpec {
    spec.strategy = SchedulingStrategy::NodeAffinity { node, soft: true };
    spec
}

/// Pins a spec to `node`, with no fallback.
pub fn hard_on(mut spec: TaskSpec, node: NodeId) -> TaskSpec {
    spec.strategy = SchedulingStrategy::NodeAffinity { node, soft: false };
    spec
}

/// The creation task of `actor` (one CPU held for the actor's life).
pub fn actor_creation(job: JobId, seq: u64, actor: ActorId) -> TaskSpec {
    let mut spec = keel_kernel::testkit::task(job, seq, "ctor");
    spec.kind = TaskKind::ActorCreation(actor);
    spec
}

/// A method call on `actor` with the caller's sequence number `call`.
pub fn actor_call(job: JobId, seq: u64, actor: ActorId, call: u64, function: &str) -> TaskSpec {
    let mut spec = keel_kernel::testkit::task(job, seq, function);
    spec.kind = TaskKind::ActorMethod { actor, seq: call };
    spec.resources = ResourceSet::default();
    spec
}

/// Runs `d` and checks every invariant.
pub fn run(c: &mut Cluster, d: Duration) {
    c.run_for(d);
    c.check_invariants();
}

/// A Head driven by hand: inputs at a clock the test moves.
pub struct Bench {
    pub head: Head,
    pub now: Time,
    conn: u64,
}

impl Bench {
    pub fn new() -> Bench {
        Bench { head: Head::new(HeadConfig::default()), now: Time::ZERO, conn: 0 }
    }

    pub fn input(&mut self, input: HeadInput) -> (Result<(), InputError>, Vec<HeadOutput>) {
        let result = self.head.handle_input(self.now, input);
        self.head.check_invariants();
        (result, self.drain())
    }

    pub fn drain(&mut self) -> Vec<HeadOutput> {
        std::iter::from_fn(|| self.head.poll_output()).collect()
    }

    pub fn connect(&mut self, hello: Hello) -> Welcome {
        self.conn += 1;
        let conn = ConnId(self.conn);
        let (result, outs) = self.input(HeadInput::Connect { conn, hello });
        result.unwrap();
        outs.into_iter()
            .find_map(|o| match o {
                HeadOutput::ToConn { conn: c, msg } if c == conn => Some(msg),
                _ => None,
            })
            .expect("an answer to the hello")
    }

    pub fn node(&mut self, cpus: u64) -> NodeId {
        let hello = Hello::RegisterNode {
            version: PROTOCOL_VERSION,
            resources: ResourceSet::cpus(cpus),
            labels: Labels::new(),
        };
        match self.connect(hello) {
            Welcome::NodeRegistered(n) => n,
            other => panic!("{other:?}"),
        }
    }

    pub fn job(&mut self) -> JobId {
        match self.connect(Hello::RegisterJob { version: PROTOCOL_VERSION, name: "bench".into() }) {
            Welcome::JobRegistered(j) => j,
            other => panic!("{other:?}"),
        }
    }

    pub fn driver(&mut self, job: JobId, msg: DriverToHead) -> (Result<(), InputError>, Vec<HeadOutput>) {
        self.input(HeadInput::FromDriver { job, msg })
    }

    pub fn node_says(&mut self, node: NodeId, msg: NodeToHead) -> (Result<(), InputError>, Vec<HeadOutput>) {
        self.input(HeadInput::FromNode { node, msg })
    }

    /// Moves the clock by `d`, firing timers, while `alive` nodes keep sending heartbeats.
    pub fn advance(&mut self, d: Duration, alive: &[NodeId]) -> Vec<HeadOutput> {
        let end = self.now + d;
        let mut outs = Vec::new();
        while self.now < end {
            self.now = (self.now + Duration::from_millis(500)).min(end);
            for n in alive {
                let (r, o) = self.node_says(*n, NodeToHead::Heartbeat);
                r.unwrap();
                outs.extend(o);
            }
            self.head.handle_timeout(self.now);
            self.head.check_invariants();
            outs.extend(self.drain());
        }
        outs
    }

    /// What the getters say about a task and its first output.
    pub fn snapshot(&self, task: TaskId) -> Snapshot {
        let out = ObjectId::for_return(task, 1);
        let mut stats = self.head.stats().clone();
        stats.inputs_refused = 0;
        Snapshot {
            state: self.head.task_state(task),
            attempt: self.head.task_attempt(task),
            node: self.head.task_node(task),
            ready: self.head.object_ready(out),
            error: self.head.object_error(out).cloned(),
            refs: self.head.object_ref_count(out),
            locations: self.head.object_locations(out),
            stats,
            tasks: self.head.task_records(),
            objects: self.head.object_records(),
            queued: self.head.queued_tasks(),
            lineage: self.head.lineage_bytes(),
            nodes: self.head.live_nodes().collect(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub state: Option<TaskStateKind>,
    pub attempt: Option<u32>,
    pub node: Option<NodeId>,
    pub ready: bool,
    pub error: Option<ErrorReason>,
    pub refs: Option<u64>,
    pub locations: Vec<NodeId>,
    pub stats: HeadStats,
    pub tasks: usize,
    pub objects: usize,
    pub queued: usize,
    pub lineage: u64,
    pub nodes: Vec<NodeId>,
}
