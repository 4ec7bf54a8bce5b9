//! The head daemon: hosts the Head machine.
//!
//! One task (the core) owns the machine. Connection tasks authenticate peers, read their frames
//! and hand them to the core over a channel; the core feeds them to the machine with the time
//! since the head started, drains every output and queues each on the right connection's writer.
//! A connection that sends garbage, an oversized frame or a message its role may not send is
//! closed with a logged reason; nothing else is affected.

use crate::conn::{self, Outbound};
use keel_kernel::head::HeadOutput;
use keel_kernel::ids::{ConnId, JobId, NodeId};
use keel_kernel::proto::{DriverToHead, Hello, Welcome};
use keel_kernel::{Head, HeadConfig, HeadInput, Time};
use keel_net::wire::{AdminRequest, ClusterStatus, Demand, FromHead, NodeStatus, Register, ToHead, WorkerProgram};
use keel_net::{NetError, Token, DEFAULT_MAX_FRAME};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How to run a head.
#[derive(Clone, Debug)]
pub struct HeadOptions {
    /// Where to listen (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The cluster's secret.
    pub token: Token,
    /// The Head machine's settings.
    pub config: HeadConfig,
    /// The largest frame accepted from an authenticated peer.
    pub max_frame: usize,
}

impl HeadOptions {
    /// Defaults: the machine's defaults and a 64 MiB frame limit.
    pub fn new(listen: impl Into<String>, token: Token) -> HeadOptions {
        HeadOptions { listen: listen.into(), token, config: HeadConfig::default(), max_frame: DEFAULT_MAX_FRAME }
    }
}

/// Why the head could not run.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running head.
pub struct HeadHandle {
    addr: SocketAddr,
    core: JoinHandle<()>,
    accept: JoinHandle<()>,
}

impl HeadHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the head stops (after `keel stop`).
    pub async fn wait(self) {
        let _ = self.core.await;
        self.accept.abort();
    }

    /// Stops the head at once (its connections close).
    pub fn abort(&self) {
        self.core.abort();
        self.accept.abort();
    }
}

enum CoreEvent {
    Register { conn: ConnId, peer: String, register: Register, tx: mpsc::UnboundedSender<Outbound<FromHead>> },
    Frame { conn: ConnId, msg: ToHead },
    Closed { conn: ConnId, why: Option<String> },
}

/// Binds the listening socket and starts the head; returns once it accepts connections.
pub async fn start(options: HeadOptions) -> Result<HeadHandle, HeadError> {
    let listener = TcpListener::bind(&options.listen)
        .await
        .map_err(|source| HeadError::Listen { addr: options.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| HeadError::Listen { addr: options.listen.clone(), source })?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let next_conn = Arc::new(AtomicU64::new(1));
    let token = options.token.clone();
    let max_frame = options.max_frame;
    let accept = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
                    tokio::spawn(serve(stream, peer, conn, token.clone(), max_frame, events_tx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    let core = Core::new(options.config);
    let core = tokio::spawn(core.run(events_rx));
    tracing::info!(%addr, "head listening");
    Ok(HeadHandle { addr, core, accept })
}

/// One connection: handshake, registration, then frames to the core until it ends.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    token: Token,
    max_frame: usize,
    events: mpsc::UnboundedSender<CoreEvent>,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let peer_name = peer.to_string();
    let (mut reader, writer) = match conn::accept(r, w, &peer_name, &token, max_frame).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(peer = %peer_name, error = %e, "refused a connection");
            return;
        }
    };
    let register: Register = match reader.recv("registration").await {
        Ok(r) => r,
        Err(e) => {
            log_close(&peer_name, &e);
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    conn::spawn_writer(writer, rx);
    if events.send(CoreEvent::Register { conn, peer: peer_name.clone(), register, tx }).is_err() {
        return;
    }
    let why = loop {
        match reader.recv::<ToHead>("message to the head").await {
            Ok(msg) => {
                if events.send(CoreEvent::Frame { conn, msg }).is_err() {
                    return;
                }
            }
            Err(e) => {
                log_close(&peer_name, &e);
                break (!e.is_clean_close()).then(|| e.to_string());
            }
        }
    };
    let _ = events.send(CoreEvent::Closed { conn, why });
}

fn log_close(peer: &str, e: &NetError) {
    if e.is_clean_close() {
        tracing::debug!(%peer, "connection closed");
    } else {
        tracing::warn!(%peer, error = %e, "closing the connection");
    }
}

enum Role {
    PendingNode { addr: String, host: String },
    Node(NodeId),
    PendingDriver { program: Option<WorkerProgram> },
    Driver(JobId),
    Admin,
}

struct ConnState {
    tx: mpsc::UnboundedSender<Outbound<FromHead>>,
    peer: String,
    role: Role,
}

struct NodeEntry {
    conn: ConnId,
    addr: String,
    host: String,
}

struct Core {
    head: Head,
    start: Instant,
    conns: BTreeMap<ConnId, ConnState>,
    nodes: BTreeMap<NodeId, NodeEntry>,
    drivers: BTreeMap<JobId, ConnId>,
    jobs: BTreeMap<JobId, Option<WorkerProgram>>,
    stopping: bool,
}

impl Core {
    fn new(config: HeadConfig) -> Core {
        Core {
            head: Head::new(config),
            start: Instant::now(),
            conns: BTreeMap::new(),
            nodes: BTreeMap::new(),
            drivers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            stopping: false,
        }
    }

    /// The machine's clock: nanoseconds since the head started, never going back.
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64).max(self.head.now())
    }

    async fn run(mut self, mut events: mpsc::UnboundedReceiver<CoreEvent>) {
        loop {
            let deadline = self.head.poll_timeout();
            let event = match deadline {
                Some(t) => {
                    let wait = std::time::Duration::from_nanos(t.0.saturating_sub(self.now().0));
                    tokio::select! {
                        e = events.recv() => e,
                        _ = tokio::time::sleep(wait) => {
                            let now = self.now();
                            self.head.handle_timeout(now);
                            self.drain();
                            continue;
                        }
                    }
                }
                None => events.recv().await,
            };
            let Some(event) = event else { return };
            self.on_event(event);
            // Take whatever else is already queued before sleeping again.
            while let Ok(event) = events.try_recv() {
                self.on_event(event);
            }
            if self.stopping {
                // Let the writers flush the goodbyes.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                tracing::info!("head stopped");
                return;
            }
        }
    }

    fn input(&mut self, input: HeadInput) {
        let now = self.now();
        if let Err(e) = self.head.handle_input(now, input) {
            tracing::warn!(error = %e, "the head refused an input");
        }
        self.drain();
    }

    fn send(&self, conn: ConnId, frame: FromHead) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(Outbound::Frame(frame));
        }
    }

    fn close(&mut self, conn: ConnId, why: &str) {
        if let Some(c) = self.conns.get(&conn) {
            tracing::warn!(peer = %c.peer, reason = why, "closing the connection");
            let _ = c.tx.send(Outbound::Close);
        }
    }

    fn on_event(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::Register { conn, peer, register, tx } => {
                let (role, hello) = match register {
                    Register::Node { hello, data_addr, host } => {
                        if !matches!(hello, Hello::RegisterNode { .. }) {
                            let _ = tx.send(Outbound::Close);
                            tracing::warn!(%peer, "a node registration carried a driver's hello; closed");
                            return;
                        }
                        (Role::PendingNode { addr: data_addr, host }, Some(hello))
                    }
                    Register::Driver { hello, program } => {
                        if !matches!(hello, Hello::RegisterJob { .. }) {
                            let _ = tx.send(Outbound::Close);
                            tracing::warn!(%peer, "a driver registration carried a node's hello; closed");
                            return;
                        }
                        (Role::PendingDriver { program }, Some(hello))
                    }
                    Register::Admin(AdminRequest::Status) => {
                        let _ = tx.send(Outbound::Frame(FromHead::Status(self.status())));
                        let _ = tx.send(Outbound::Close);
                        (Role::Admin, None)
                    }
                    Register::Admin(AdminRequest::Stop) => {
                        tracing::info!(%peer, "stop requested");
                        for c in self.conns.values() {
                            let _ = c.tx.send(Outbound::Frame(FromHead::Stopping));
                            let _ = c.tx.send(Outbound::Close);
                        }
                        let _ = tx.send(Outbound::Frame(FromHead::Stopping));
                        let _ = tx.send(Outbound::Close);
                        self.stopping = true;
                        (Role::Admin, None)
                    }
                };
                self.conns.insert(conn, ConnState { tx, peer, role });
                if let Some(hello) = hello {
                    self.input(HeadInput::Connect { conn, hello });
                }
            }
            CoreEvent::Frame { conn, msg } => {
                let Some(c) = self.conns.get(&conn) else { return };
                match (&c.role, msg) {
                    (Role::Node(node), ToHead::Node(msg)) => {
                        let node = *node;
                        self.input(HeadInput::FromNode { node, msg });
                    }
                    (Role::Driver(job), ToHead::Driver(msg)) => {
                        let job = *job;
                        let finished = matches!(msg, DriverToHead::FinishJob);
                        self.input(HeadInput::FromDriver { job, msg });
                        if finished {
                            // The job is over: its connection closing later is not a disconnect.
                            self.drivers.remove(&job);
                            self.jobs.remove(&job);
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.role = Role::Admin;
                            }
                        }
                    }
                    (Role::Node(_), ToHead::Output(chunk)) => {
                        if let Some(&driver) = self.drivers.get(&chunk.job) {
                            self.send(driver, FromHead::Output(chunk));
                        }
                    }
                    (_, msg) => {
                        let what = match msg {
                            ToHead::Node(_) => "a node message",
                            ToHead::Driver(_) => "a driver message",
                            ToHead::Output(_) => "task output",
                        };
                        self.close(conn, &format!("{what} from a connection not registered for it"));
                    }
                }
            }
            CoreEvent::Closed { conn, why } => {
                let Some(c) = self.conns.remove(&conn) else { return };
                if let Some(why) = why {
                    tracing::warn!(peer = %c.peer, reason = %why, "connection lost");
                }
                match c.role {
                    Role::Driver(job) => {
                        self.drivers.remove(&job);
                        self.input(HeadInput::DriverDisconnected(job));
                    }
                    // The machine decides when the node is dead (heartbeats stop); only the route goes.
                    Role::Node(node) if self.nodes.get(&node).is_some_and(|n| n.conn == conn) => {
                        tracing::info!(%node, "node connection closed");
                    }
                    _ => {}
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.head.poll_output() {
            self.perform(output);
        }
    }

    fn perform(&mut self, output: HeadOutput) {
        match output {
            HeadOutput::ToConn { conn, msg } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let role = std::mem::replace(&mut c.role, Role::Admin);
                c.role = match (&msg, role) {
                    (Welcome::NodeRegistered(node), Role::PendingNode { addr, host }) => {
                        let node = *node;
                        tracing::info!(%node, %addr, %host, "node registered");
                        self.nodes.insert(node, NodeEntry { conn, addr: addr.clone(), host });
                        Role::Node(node)
                    }
                    (Welcome::JobRegistered(job), Role::PendingDriver { program }) => {
                        let job = *job;
                        tracing::info!(%job, "job started");
                        self.drivers.insert(job, conn);
                        self.jobs.insert(job, program);
                        Role::Driver(job)
                    }
                    (_, role) => role,
                };
                self.send(conn, FromHead::Welcome(msg.clone()));
                match msg {
                    Welcome::NodeRegistered(node) => self.introduce_node(node),
                    Welcome::JobRegistered(job) => {
                        let program = self.jobs.get(&job).cloned().flatten();
                        for n in self.nodes.values() {
                            self.send(n.conn, FromHead::Job { job, program: program.clone() });
                        }
                    }
                    Welcome::Refused(e) => {
                        tracing::warn!(error = %e, "registration refused");
                        self.close(conn, "registration refused");
                    }
                }
            }
            HeadOutput::ToNode { node, msg } => {
                if let Some(n) = self.nodes.get(&node) {
                    self.send(n.conn, FromHead::Node(msg));
                }
            }
            HeadOutput::ToDriver { job, msg } => {
                if let Some(&conn) = self.drivers.get(&job) {
                    self.send(conn, FromHead::Driver(msg));
                }
            }
            HeadOutput::NodeDead(node) => {
                tracing::warn!(%node, "node declared dead");
                self.nodes.remove(&node);
            }
            HeadOutput::NodeDrained(node) => tracing::info!(%node, "node drained"),
        }
    }

    /// A new node learns every peer's data address and every job's program; the others learn its address.
    fn introduce_node(&mut self, node: NodeId) {
        let Some(entry) = self.nodes.get(&node) else { return };
        let (conn, addr) = (entry.conn, entry.addr.clone());
        for (&other, e) in &self.nodes {
            if other != node {
                self.send(conn, FromHead::Peer { node: other, addr: e.addr.clone() });
                self.send(e.conn, FromHead::Peer { node, addr: addr.clone() });
            }
        }
        for (&job, program) in &self.jobs {
            if self.drivers.contains_key(&job) {
                self.send(conn, FromHead::Job { job, program: program.clone() });
            }
        }
    }

    fn status(&self) -> ClusterStatus {
        let demand = self.head.demand();
        let stats = self.head.stats();
        let to_demand = |v: Vec<(keel_kernel::ResourceSet, u64)>| {
            v.into_iter().map(|(shape, count)| Demand { shape, count }).collect::<Vec<_>>()
        };
        ClusterStatus {
            nodes: self
                .head
                .cluster()
                .nodes()
                .map(|(id, n)| {
                    let entry = self.nodes.get(&id);
                    NodeStatus {
                        id,
                        addr: entry.map(|e| e.addr.clone()).unwrap_or_default(),
                        host: entry.map(|e| e.host.clone()).unwrap_or_default(),
                        total: n.pool.total().clone(),
                        available: n.pool.available().clone(),
                        labels: n.labels.clone(),
                    }
                })
                .collect(),
            jobs: self
                .drivers
                .keys()
                .map(|&job| (job, self.head.job_name(job).unwrap_or_default().to_string()))
                .collect(),
            queued: to_demand(demand.queued),
            infeasible: to_demand(demand.infeasible),
            tasks_submitted: stats.tasks_submitted,
            tasks_finished: stats.tasks_finished,
            tasks_failed: stats.tasks_failed,
            nodes_lost: stats.nodes_lost,
            uptime_s: self.start.elapsed().as_secs_f64(),
        }
    }
}
