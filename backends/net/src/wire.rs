//! The envelopes the hosts exchange. The kernel's protocol messages ride inside them unchanged;
//! the envelopes add only what hosts need and the kernel does not decide: where a node's data port
//! is, which program a job's workers run, captured output, and operators' requests.
//!
//! Connections and their first frame (after the handshake):
//! - to the head: [`Register`], then [`ToHead`] frames one way and [`FromHead`] the other;
//! - node to node, on the data port: [`PeerFrame`], starting with [`PeerFrame::Hello`];
//! - node to worker, on the node's local socket: [`FromWorker`], starting with
//!   [`FromWorker::Hello`], and [`ToWorker`].

use keel_kernel::ids::{JobId, NodeId, ObjectId, TaskId, WorkerId};
use keel_kernel::node::ExecArg;
use keel_kernel::proto::{
    DriverToHead, HeadToDriver, HeadToNode, Hello, NodeToHead, NodeToNode, TaskOutcome, TaskSpec, Welcome,
};
use keel_kernel::resources::ResourceSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The first frame on a connection to the head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Register {
    /// A node daemon joins; peers reach its data port at `data_addr`.
    Node {
        /// The kernel's registration.
        hello: Hello,
        /// Where other nodes connect to fetch objects.
        data_addr: String,
        /// The machine's host name.
        host: String,
        /// The node's object store directory: clients on the same machine map objects from it.
        store_dir: String,
    },
    /// A driver starts a job.
    Driver {
        /// The kernel's registration.
        hello: Hello,
        /// What the job's workers run; `None` for jobs of command tasks only.
        program: Option<WorkerProgram>,
        /// Take up this job again after the connection was lost (the head restarted, say)
        /// instead of starting a new one; `hello` is then only checked for its version.
        resume: Option<JobId>,
    },
    /// An operator's request (`keel status`, `keel stop`); answered once, then the connection ends.
    Admin(AdminRequest),
}

/// The program a job's workers run: the driver's own binary, started again in worker mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerProgram {
    /// The executable.
    pub path: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl WorkerProgram {
    /// `path` with `args`, in the starting process's directory and environment.
    pub fn new(path: impl Into<String>, args: Vec<String>) -> WorkerProgram {
        WorkerProgram { path: path.into(), args, cwd: String::new(), env: Vec::new() }
    }
}

/// What an operator asks the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Nodes, resources in use, queued and infeasible demand.
    Status,
    /// Stop the cluster: the head tells every node to stop, then exits.
    Stop,
}

/// Frames to the head after [`Register`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToHead {
    /// A node's message to the head machine.
    Node(NodeToHead),
    /// A driver's message to the head machine.
    Driver(DriverToHead),
    /// Output a task printed, on its way to the task's submitter.
    Output(OutputChunk),
}

/// Frames from the head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromHead {
    /// The answer to [`Register`].
    Welcome(Welcome),
    /// The head machine's message to a node.
    Node(HeadToNode),
    /// The head machine's message to a driver.
    Driver(HeadToDriver),
    /// Where a node is (sent to nodes and drivers as nodes join).
    Peer(PeerInfo),
    /// What a job's workers run (sent to nodes as jobs start).
    Job {
        /// The job.
        job: JobId,
        /// Its worker program, or none for command tasks only.
        program: Option<WorkerProgram>,
    },
    /// Output of one of the driver's tasks.
    Output(OutputChunk),
    /// The answer to [`AdminRequest::Status`].
    Status(ClusterStatus),
    /// The cluster is stopping: a node exits, a driver's job ends.
    Stopping,
}

/// Where a node's objects can be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node.
    pub node: NodeId,
    /// Its data address.
    pub addr: String,
    /// Its machine's host name.
    pub host: String,
    /// Its object store directory (readable from the same machine).
    pub store_dir: String,
}

/// Which stream a task wrote to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Bytes a task wrote, forwarded to whoever submitted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The task's job.
    pub job: JobId,
    /// The task.
    pub task: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// Where it ran.
    pub node: NodeId,
    /// Which stream.
    pub stream: Stream,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The cluster as `keel status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Live nodes, by id.
    pub nodes: Vec<NodeStatus>,
    /// Jobs running, by id.
    pub jobs: Vec<(JobId, String)>,
    /// Tasks waiting for resources, grouped by shape.
    pub queued: Vec<Demand>,
    /// Tasks no node can ever run, grouped by shape.
    pub infeasible: Vec<Demand>,
    /// Head counters.
    pub tasks_submitted: u64,
    /// Tasks finished.
    pub tasks_finished: u64,
    /// Tasks failed for good.
    pub tasks_failed: u64,
    /// Nodes declared dead since the head started.
    pub nodes_lost: u64,
    /// Attempts retried after a worker or node failure.
    pub retries: u64,
    /// Tasks run again to rebuild lost values.
    pub reconstructions: u64,
    /// Seconds since the head started.
    pub uptime_s: f64,
    /// Open connections of nodes (registered or not yet) and drivers.
    pub connections: u64,
    /// The autoscaler's state, when the head runs one.
    pub autoscaler: Option<AutoscalerReport>,
}

/// The autoscaler in [`ClusterStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerReport {
    /// Launches not yet registered: request, node type, nodes still to come.
    pub launching: Vec<(u64, String, u32)>,
    /// Demand the last decision could not serve: shape, count, and why.
    pub unmet: Vec<(ResourceSet, u64, keel_kernel::autoscaler::Unmet)>,
    /// Node types left alone after failed launches, with the seconds left.
    pub backing_off: Vec<(String, f64)>,
    /// Launches the provider reported failed since the head started.
    pub launches_failed: u64,
    /// The last one's reason.
    pub last_launch_failure: Option<String>,
}

/// One node in [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its data address.
    pub addr: String,
    /// Its machine.
    pub host: String,
    /// What it offers.
    pub total: ResourceSet,
    /// What is free now.
    pub available: ResourceSet,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A group of identical resource requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// The shape.
    pub shape: ResourceSet,
    /// How many tasks.
    pub count: u64,
}

/// Frames between nodes on the data port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// The first frame: who is connecting.
    Hello {
        /// The connecting node.
        from: NodeId,
    },
    /// A node machine's message to its peer.
    Msg(NodeToNode),
    /// A slice of an object's bytes; `last` ends the object.
    Chunk {
        /// The object.
        object: ObjectId,
        /// The object's whole size.
        total: u64,
        /// Where the slice starts.
        offset: u64,
        /// The bytes (at most the sender's chunk size).
        data: Vec<u8>,
        /// Whether this is the final slice.
        last: bool,
    },
    /// The sender could not finish sending `object` (its copy went away).
    Abort {
        /// The object.
        object: ObjectId,
    },
    /// A client (a driver) asks for an object's bytes; the node answers with chunks or an abort.
    /// It may be the first frame instead of `Hello`.
    Fetch {
        /// The object.
        object: ObjectId,
    },
    /// A client (a driver, which has no store) wrote the sealed bytes of its put into this node's
    /// store directory itself (same machine): the node takes the object in as a primary copy and
    /// answers [`PeerFrame::Stored`] or [`PeerFrame::Refused`]. A first frame.
    Adopt {
        /// The object (a put id).
        object: ObjectId,
        /// Its size in bytes.
        size: u64,
    },
    /// A client on another machine sends the bytes of its put: [`PeerFrame::Chunk`] frames follow
    /// on this connection, then the node answers [`PeerFrame::Stored`] or [`PeerFrame::Refused`].
    /// A first frame.
    Upload {
        /// The object (a put id).
        object: ObjectId,
        /// Its size in bytes.
        total: u64,
    },
    /// The node holds the client's put as a primary copy; `node` is its id now (the client names
    /// it in its `Put` to the head).
    Stored {
        /// The object.
        object: ObjectId,
        /// The node's id.
        node: NodeId,
    },
    /// The node could not take the client's put.
    Refused {
        /// The object.
        object: ObjectId,
        /// Why, for people.
        reason: String,
    },
}

/// Frames from a worker process to its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first frame: which worker this is (the node gave the id in the worker's environment).
    Hello {
        /// The worker's id.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// An attempt ended.
    Done {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// How it ended.
        outcome: TaskOutcome,
    },
    /// The running task submits work or talks to the head (it is a submitter too).
    Submit(DriverToHead),
    /// Output the running attempt printed; it all comes before the attempt's `Done`.
    Output {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The running task is blocked waiting for objects (true), or runs again (false).
    Blocked(bool),
    /// Attempts handed over ahead were given back unstarted, all those asked (answering
    /// `ToWorker::Withdraw`).
    Withdrawn {
        /// The tasks and attempts, in the order asked.
        tasks: Vec<(TaskId, u32)>,
    },
}

/// Frames from a node to one of its worker processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run an attempt. Arguments sealed in the node's store are read there by the worker.
    Execute {
        /// The task.
        spec: Arc<TaskSpec>,
        /// The attempt.
        attempt: u32,
        /// Its arguments, aligned with the spec's.
        args: Vec<ExecArg>,
        /// Where the node's object store lives.
        store_dir: String,
    },
    /// The head's answer to something the running task submitted.
    Message(HeadToDriver),
    /// Where a node is, so that the running task can read values held there.
    Peer(PeerInfo),
    /// Stop the running attempt if it can be stopped.
    Interrupt {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Give back attempts handed over ahead, the first and those held behind it, if the first
    /// has not started (answer `Withdrawn`); else run them all.
    Withdraw {
        /// The tasks and attempts, in the order held.
        tasks: Vec<(TaskId, u32)>,
    },
}
