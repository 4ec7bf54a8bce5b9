//! The node daemon: hosts a Node machine.
//!
//! One task (the core) owns the machine. Around it:
//! - the head link: dials the head with backoff, registers, and relays frames both ways. When it
//!   is lost, or the head asks the node to register again, the core resets (kills its workers,
//!   empties its store) and registers afresh: the head will have given the old node's work to
//!   others, and a new registration gets a new node id;
//! - the data port: peers connect to it to send object bytes and the node machines' messages;
//! - the worker socket: worker processes connect back to it, prove the token, and say who they are;
//! - worker processes, whose output is logged and streamed to the head for the task's submitter.

use crate::conn::{self, Outbound};
use crate::head;
use keel_kernel::errors::TaskFailure;
use keel_kernel::ids::{JobId, NodeId, ObjectId, WorkerId};
use keel_kernel::node::{NodeOutput, WorkerKind};
use keel_kernel::proto::{DriverToHead, ReturnValue, TaskOutcome};
use keel_kernel::proto::{Hello, Labels, NodeToNode, Welcome, PROTOCOL_VERSION};
use keel_kernel::{Node, NodeConfig, NodeInput, ResourceSet, Time};
use keel_net::backoff::Backoff;
use keel_net::wire::{
    FromHead, FromWorker, OutputChunk, PeerFrame, PeerInfo, Register, ToHead, ToWorker, WorkerProgram,
};
use keel_net::{Listener, NetError, Tcp, Token, Transport, KEEPALIVE_EVERY};
use keel_process::{ExitStatus, ProcessEvent, ProcessHandle, ProcessSpec, Spawner};
use keel_shm::{Creating, ShmStore};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Object bytes move between nodes in slices of this size.
pub const CHUNK_BYTES: usize = 1 << 20;

/// How long a node waits on a silent head by default (the head sends a keepalive every second).
pub const DEFAULT_HEAD_SILENCE: Duration = Duration::from_secs(10);

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The head's address.
    pub head: String,
    /// The cluster's secret.
    pub token: Token,
    /// What the node offers.
    pub resources: ResourceSet,
    /// Its labels.
    pub labels: Labels,
    /// Where peers connect (`host:port`; port 0 picks one).
    pub data_listen: String,
    /// The address peers are told to dial (`host:port`). None: the listening address, or, when
    /// that is a wildcard (`0.0.0.0`), this machine's address on the route to the head.
    pub data_advertise: Option<String>,
    /// How long the head may say nothing (not even a keepalive) before the node gives the
    /// connection up and registers again.
    pub head_silence: Duration,
    /// Its private directory: logs, the worker socket.
    pub work_dir: PathBuf,
    /// Where object bytes live (a tmpfs by default).
    pub store_dir: PathBuf,
    /// The Node machine's settings.
    pub config: NodeConfig,
    /// What a worker for command-only jobs runs (`keel worker`).
    pub command_worker: WorkerProgram,
    /// The largest frame accepted.
    pub max_frame: usize,
}

impl NodeOptions {
    /// A node on this machine: peers reach it on a free loopback port; no labels; the machine's
    /// default settings; frames up to the default limit.
    pub fn new(
        head: impl Into<String>,
        token: Token,
        resources: ResourceSet,
        work_dir: PathBuf,
        store_dir: PathBuf,
        command_worker: WorkerProgram,
    ) -> NodeOptions {
        NodeOptions {
            head: head.into(),
            token,
            resources,
            labels: Labels::new(),
            data_listen: "127.0.0.1:0".into(),
            data_advertise: None,
            head_silence: DEFAULT_HEAD_SILENCE,
            work_dir,
            store_dir,
            config: NodeConfig::default(),
            command_worker,
            max_frame: keel_net::DEFAULT_MAX_FRAME,
        }
    }
}

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A socket or directory could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The head refused the registration.
    #[error("the head refused this node: {0}")]
    Refused(String),
}

/// A running node.
pub struct NodeHandle {
    data_addr: SocketAddr,
    core: JoinHandle<Result<(), NodeError>>,
    listeners: Vec<JoinHandle<()>>,
    store_dir: PathBuf,
}

impl NodeHandle {
    /// Where peers reach it.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Waits until the node stops (the cluster stopped, or the head refused it).
    pub async fn wait(self) -> Result<(), NodeError> {
        self.core.await.unwrap_or(Ok(()))
    }

    /// Stops the node at once, as a crash would: its workers are killed, its connections close
    /// and its objects are gone.
    pub fn abort(&self) {
        self.core.abort();
        for l in &self.listeners {
            l.abort();
        }
        let _ = keel_shm::remove_store(&self.store_dir);
    }
}

enum Ev {
    HeadUp(HeadLink, u64),
    Head(FromHead, u64),
    HeadLost(u64),
    Peer {
        from: NodeId,
        frame: PeerFrame,
    },
    PeerGone {
        from: NodeId,
    },
    PeerUnreachable {
        node: NodeId,
        pulls: Vec<ObjectId>,
    },
    PeerLinkDown {
        node: NodeId,
        link: u64,
    },
    WorkerHello {
        worker: WorkerId,
        tx: mpsc::UnboundedSender<Outbound<ToWorker>>,
    },
    Worker {
        worker: WorkerId,
        msg: FromWorker,
    },
    Process(ProcessEvent<WorkerId>),
    SendEnded {
        object: ObjectId,
        to: NodeId,
    },
    Fetch {
        object: ObjectId,
        tx: mpsc::UnboundedSender<Outbound<PeerFrame>>,
    },
    /// A client wrote its put into the store directory; take it in and answer on `tx`.
    ClientAdopt {
        object: ObjectId,
        size: u64,
        tx: mpsc::UnboundedSender<Outbound<PeerFrame>>,
    },
    /// A client starts sending its put's bytes on data connection `conn`.
    UploadStart {
        conn: u64,
        object: ObjectId,
        total: u64,
        tx: mpsc::UnboundedSender<Outbound<PeerFrame>>,
    },
    UploadChunk {
        conn: u64,
        object: ObjectId,
        offset: u64,
        data: Vec<u8>,
        last: bool,
    },
    /// The client's connection ended before the last chunk.
    UploadGone {
        conn: u64,
        object: ObjectId,
    },
}

/// Sets up the node's sockets and starts it.
pub async fn start(options: NodeOptions) -> Result<NodeHandle, NodeError> {
    start_on(options, Tcp).await
}

/// [`start`] over another transport (turmoil's simulated network, in tests).
pub async fn start_on<T: Transport>(options: NodeOptions, transport: T) -> Result<NodeHandle, NodeError> {
    // Workers, peers and clients each hold a descriptor, and readers' views of large objects too.
    keel_shm::raise_open_file_limit();
    let setup = |what: &str| {
        let what = what.to_string();
        move |source| NodeError::Setup { what, source }
    };
    std::fs::create_dir_all(&options.work_dir).map_err(setup("creating the node's directory"))?;
    let store = ShmStore::open(&options.store_dir, options.config.object_store_capacity_bytes).map_err(|e| {
        NodeError::Setup { what: "opening the object store".into(), source: std::io::Error::other(e.to_string()) }
    })?;
    let data = transport.bind(&options.data_listen).await.map_err(setup("opening the data port"))?;
    let data_addr = data.local_addr().map_err(setup("opening the data port"))?;
    let socket_path = options.work_dir.join("worker.sock");
    let _ = std::fs::remove_file(&socket_path);
    let workers = UnixListener::bind(&socket_path).map_err(setup("opening the worker socket"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let spawner = Spawner::new(&options.work_dir.join("logs"), ptx).map_err(setup("creating the log directory"))?;
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = prx.recv().await {
                if tx.send(Ev::Process(e)).is_err() {
                    return;
                }
            }
        });
    }
    let listeners = vec![
        tokio::spawn(accept_peers(data, options.token.clone(), options.max_frame, tx.clone())),
        tokio::spawn(accept_workers(workers, options.token.clone(), options.max_frame, tx.clone())),
    ];
    let store_dir = options.store_dir.clone();
    let core = Core {
        node: Node::new(options.config.clone()),
        start: Instant::now(),
        data_addr,
        transport,
        socket_path,
        store,
        spawner,
        events: tx,
        head: None,
        link: 0,
        link_task: None,
        id: None,
        peers: BTreeMap::new(),
        out: BTreeMap::new(),
        next_peer_link: 0,
        incoming: BTreeMap::new(),
        uploads: BTreeMap::new(),
        jobs: BTreeMap::new(),
        workers: BTreeMap::new(),
        options,
    };
    let core = tokio::spawn(core.run(rx));
    Ok(NodeHandle { data_addr, core, listeners, store_dir })
}

async fn accept_peers<L>(listener: L, token: Token, max_frame: usize, events: mpsc::UnboundedSender<Ev>)
where
    L: Listener,
    L::Read: tokio::io::AsyncRead + Unpin + Send + 'static,
    L::Write: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(keel_net::handshake::MAX_PENDING_HANDSHAKES));
    let mut next_conn = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        next_conn += 1;
        let conn = next_conn;
        let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many data connections handshaking at once; closed this one");
            continue;
        };
        let token = token.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let name = peer.to_string();
            let (mut reader, writer) = match conn::accept(stream.read, stream.write, &name, &token, max_frame).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(peer = %name, error = %e, "refused a data connection");
                    return;
                }
            };
            drop(handshaking);
            let from = match reader.recv::<PeerFrame>("peer hello").await {
                Ok(PeerFrame::Hello { from }) => from,
                Ok(PeerFrame::Fetch { object }) => {
                    // A client reading an object: answer on this connection, then it is done.
                    let (tx, rx) = mpsc::unbounded_channel();
                    conn::spawn_writer(writer, rx, None);
                    if events.send(Ev::Fetch { object, tx }).is_ok() {
                        // Keep reading until the client goes, so its close is noticed.
                        until_closed(&mut reader, &events).await;
                    }
                    return;
                }
                Ok(PeerFrame::Adopt { object, size }) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    conn::spawn_writer(writer, rx, None);
                    if events.send(Ev::ClientAdopt { object, size, tx }).is_ok() {
                        until_closed(&mut reader, &events).await;
                    }
                    return;
                }
                Ok(PeerFrame::Upload { object, total }) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    conn::spawn_writer(writer, rx, None);
                    if events.send(Ev::UploadStart { conn, object, total, tx }).is_err() {
                        return;
                    }
                    loop {
                        let frame = tokio::select! {
                            f = reader.recv::<PeerFrame>("upload chunk") => f,
                            _ = events.closed() => return,
                        };
                        match frame {
                            Ok(PeerFrame::Chunk { object: o, offset, data, last, .. }) if o == object => {
                                if events.send(Ev::UploadChunk { conn, object, offset, data, last }).is_err() || last {
                                    break;
                                }
                            }
                            Ok(_) => {
                                tracing::warn!(peer = %name, %object, "an upload sent something else than its chunks");
                                let _ = events.send(Ev::UploadGone { conn, object });
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(peer = %name, error = %e, %object, "an upload ended early");
                                let _ = events.send(Ev::UploadGone { conn, object });
                                return;
                            }
                        }
                    }
                    until_closed(&mut reader, &events).await;
                    return;
                }
                Ok(_) => {
                    tracing::warn!(peer = %name, "a data connection did not start with its hello; closed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(peer = %name, error = %e, "closing a data connection");
                    return;
                }
            };
            loop {
                let frame = tokio::select! {
                    f = reader.recv::<PeerFrame>("peer frame") => f,
                    _ = events.closed() => return,
                };
                match frame {
                    Ok(frame) => {
                        if events.send(Ev::Peer { from, frame }).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if !e.is_clean_close() {
                            tracing::warn!(peer = %name, error = %e, "closing a data connection");
                        }
                        let _ = events.send(Ev::PeerGone { from });
                        return;
                    }
                }
            }
        });
    }
}

/// Keeps reading a client's connection until the client goes (or the node stops).
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut keel_net::FrameReader<R>,
    events: &mpsc::UnboundedSender<Ev>,
) {
    loop {
        tokio::select! {
            r = reader.recv_bytes() => if r.is_err() { return },
            _ = events.closed() => return,
        }
    }
}

async fn accept_workers(listener: UnixListener, token: Token, max_frame: usize, events: mpsc::UnboundedSender<Ev>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let token = token.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let (r, w) = match keel_net::unix::split(stream) {
                Ok(halves) => halves,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot use a worker connection");
                    return;
                }
            };
            let (mut reader, writer) = match conn::accept(r, w, "a worker", &token, max_frame).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "refused a worker connection");
                    return;
                }
            };
            let worker = match reader.recv::<FromWorker>("worker hello").await {
                Ok(FromWorker::Hello { worker, .. }) => worker,
                Ok(_) | Err(_) => {
                    tracing::warn!("a worker connection did not start with its hello; closed");
                    return;
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            conn::spawn_writer(writer, rx, None);
            if events.send(Ev::WorkerHello { worker, tx }).is_err() {
                return;
            }
            loop {
                let msg = tokio::select! {
                    m = reader.recv::<FromWorker>("worker message") => m,
                    _ = events.closed() => return,
                };
                let Ok(msg) = msg else { return };
                if events.send(Ev::Worker { worker, msg }).is_err() {
                    return;
                }
            }
            // The process's exit is reported by the spawner; a closed socket alone says nothing more.
        });
    }
}

/// Dials the head until it answers, registers, and relays its frames. `link` tags this link's
/// events so that the core ignores a link it has already replaced. A head silent for
/// `options.head_silence` (gone without closing, or cut off) counts as lost.
async fn head_link<T: Transport>(
    transport: T,
    options: NodeOptions,
    data_addr: SocketAddr,
    link: u64,
    events: mpsc::UnboundedSender<Ev>,
) {
    let hello = Hello::RegisterNode {
        version: PROTOCOL_VERSION,
        resources: options.resources.clone(),
        labels: options.labels.clone(),
    };
    let store_dir = options.store_dir.display().to_string();
    let register = |local: std::net::IpAddr| Register::Node {
        hello: hello.clone(),
        data_addr: advertised(&options, data_addr, local),
        host: hostname(),
        store_dir: store_dir.clone(),
    };
    // A head of this process is reached directly (from the address dialled, as over TCP here).
    let local_ip = match options.head.parse::<SocketAddr>().map(|a| a.ip()) {
        Ok(ip) if !ip.is_unspecified() => ip,
        Ok(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::LOCALHOST.into(),
        _ => std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), u64::from(std::process::id()));
    let (mut reader, writer, local) = loop {
        if T::IN_PROCESS_LINKS {
            if let Some(local) = head::connect_local(&options.head, &options.token, || register(local_ip)) {
                return local_head_link(local, link, events).await;
            }
        }
        match conn::dial_on(&transport, &options.head, &options.token, options.max_frame).await {
            Ok(pair) => break pair,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(head = %options.head, error = %e, retry_ms = wait.as_millis() as u64, "cannot reach the head");
                tokio::time::sleep(wait).await;
                if events.is_closed() {
                    return;
                }
            }
        }
    };
    reader.set_silence_limit(Some(options.head_silence));
    let mut writer = writer;
    if let Err(e) = writer.send(&register(local.ip())).await {
        tracing::warn!(error = %e, "lost the head while registering");
        let _ = events.send(Ev::HeadLost(link));
        return;
    }
    let (typed_tx, typed_rx) = mpsc::unbounded_channel::<Outbound<ToHead>>();
    conn::spawn_writer(writer, typed_rx, Some(KEEPALIVE_EVERY));
    if events.send(Ev::HeadUp(HeadLink::Socket(typed_tx), link)).is_err() {
        return;
    }
    loop {
        match reader.recv::<FromHead>("message from the head").await {
            Ok(msg) => {
                if events.send(Ev::Head(msg, link)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if !e.is_clean_close() {
                    tracing::warn!(error = %e, "lost the head");
                }
                let _ = events.send(Ev::HeadLost(link));
                return;
            }
        }
    }
}

/// Relays a link to a head of this process (see [`head_link`]).
async fn local_head_link(local: head::LocalLink, link: u64, events: mpsc::UnboundedSender<Ev>) {
    let head::LocalLink { to_head, mut from_head } = local;
    if events.send(Ev::HeadUp(HeadLink::Local(to_head), link)).is_err() {
        return;
    }
    while let Some(Outbound::Frame(msg)) = from_head.recv().await {
        if events.send(Ev::Head(msg, link)).is_err() {
            return;
        }
    }
    // The head closed the link, or stopped: the core says so and registers again.
    let _ = events.send(Ev::HeadLost(link));
}

/// The data address this node gives its peers, when its link to the head leaves from `local`.
fn advertised(options: &NodeOptions, data_addr: SocketAddr, local: std::net::IpAddr) -> String {
    match &options.data_advertise {
        Some(addr) if addr.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) => addr.clone(),
        // A host alone: the data port it listens on.
        Some(host) => format!("{host}:{}", data_addr.port()),
        None if data_addr.ip().is_unspecified() => {
            if local.is_loopback() {
                tracing::warn!(
                    head = %options.head,
                    "the head is reached over loopback, so peers are told a loopback data address; \
                     nodes on other machines cannot reach it: pass --advertise HOST"
                );
            }
            SocketAddr::new(local, data_addr.port()).to_string()
        }
        None => data_addr.to_string(),
    }
}

/// The node's way to the head: a connection's writer, or the head's own queue when the head runs
/// in this process ([`head::connect_local`]).
enum HeadLink {
    Socket(mpsc::UnboundedSender<Outbound<ToHead>>),
    Local(head::HeadSender),
}

impl HeadLink {
    fn send(&self, item: Outbound<ToHead>) {
        match (self, item) {
            (HeadLink::Socket(tx), item) => drop(tx.send(item)),
            (HeadLink::Local(to_head), Outbound::Frame(msg)) => drop(to_head.send(msg)),
            (HeadLink::Local(to_head), Outbound::Close) => to_head.close(),
        }
    }
}

/// Streams a sealed object's bytes as chunks into a connection's queue, then reports the end of
/// the send (for a peer) or closes the connection (for a client's fetch).
async fn stream_object(
    object: ObjectId,
    view: std::sync::Arc<keel_shm::View>,
    tx: mpsc::UnboundedSender<Outbound<PeerFrame>>,
    done: Option<(mpsc::UnboundedSender<Ev>, NodeId)>,
) {
    let total = view.len() as u64;
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK_BYTES).min(view.len());
        let last = end == view.len();
        let data = view[offset..end].to_vec();
        if tx.send(Outbound::Frame(PeerFrame::Chunk { object, total, offset: offset as u64, data, last })).is_err() {
            break;
        }
        offset = end;
        if last {
            break;
        }
        tokio::task::yield_now().await;
    }
    match done {
        Some((events, to)) => {
            let _ = events.send(Ev::SendEnded { object, to });
        }
        None => {
            let _ = tx.send(Outbound::Close);
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An outgoing data connection: dial, hello, then frames. Pulls it could not send are reported.
#[allow(clippy::too_many_arguments)]
async fn peer_link<T: Transport>(
    transport: T,
    node: NodeId,
    link: u64,
    me: NodeId,
    addr: String,
    token: Token,
    max_frame: usize,
    mut rx: mpsc::UnboundedReceiver<Outbound<PeerFrame>>,
    events: mpsc::UnboundedSender<Ev>,
) {
    let unsent_pulls = |rx: &mut mpsc::UnboundedReceiver<Outbound<PeerFrame>>| {
        let mut pulls = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Outbound::Frame(PeerFrame::Msg(NodeToNode::Pull { object })) = item {
                pulls.push(object);
            }
        }
        pulls
    };
    let (mut reader, mut writer) = match conn::dial_on(&transport, &addr, &token, max_frame).await {
        Ok((r, w, _)) => (r, w),
        Err(e) => {
            tracing::warn!(%node, %addr, error = %e, "cannot reach a peer");
            rx.close();
            let pulls = unsent_pulls(&mut rx);
            let _ = events.send(Ev::PeerUnreachable { node, pulls });
            return;
        }
    };
    if writer.send(&PeerFrame::Hello { from: me }).await.is_err() {
        let pulls = unsent_pulls(&mut rx);
        let _ = events.send(Ev::PeerUnreachable { node, pulls });
        return;
    }
    conn::spawn_writer(writer, rx, None);
    // The peer never writes on this connection: reading only notices when it ends (the peer died
    // or closed it), so that pulls sent on it fail at once instead of timing out.
    loop {
        tokio::select! {
            r = reader.recv_bytes() => if r.is_err() { break },
            _ = events.closed() => return,
        }
    }
    let _ = events.send(Ev::PeerLinkDown { node, link });
}

/// A client's put arriving on a data connection.
struct Upload {
    /// The connection sending it (no other may write or end it).
    conn: u64,
    creating: Creating,
    written: u64,
    tx: mpsc::UnboundedSender<Outbound<PeerFrame>>,
}

/// Answers a client's put and closes its connection.
fn answer_client(tx: &mpsc::UnboundedSender<Outbound<PeerFrame>>, object: ObjectId, reply: Result<NodeId, String>) {
    let frame = match reply {
        Ok(node) => PeerFrame::Stored { object, node },
        Err(reason) => {
            tracing::warn!(%object, %reason, "refused a client's put");
            PeerFrame::Refused { object, reason }
        }
    };
    let _ = tx.send(Outbound::Frame(frame));
    let _ = tx.send(Outbound::Close);
}

struct WorkerEntry {
    process: Option<ProcessHandle>,
    tx: Option<mpsc::UnboundedSender<Outbound<ToWorker>>>,
    job: JobId,
}

struct Core<T: Transport> {
    node: Node,
    transport: T,
    start: Instant,
    options: NodeOptions,
    data_addr: SocketAddr,
    socket_path: PathBuf,
    store: ShmStore,
    spawner: Spawner<WorkerId>,
    events: mpsc::UnboundedSender<Ev>,
    head: Option<HeadLink>,
    /// The current head link's tag.
    link: u64,
    link_task: Option<JoinHandle<()>>,
    id: Option<NodeId>,
    peers: BTreeMap<NodeId, PeerInfo>,
    /// Outgoing data connections: the queue and the link's tag.
    out: BTreeMap<NodeId, (mpsc::UnboundedSender<Outbound<PeerFrame>>, u64)>,
    next_peer_link: u64,
    /// Objects arriving from peers: sender, the object being written, bytes written so far.
    incoming: BTreeMap<ObjectId, (NodeId, Creating, u64)>,
    /// Clients' puts arriving.
    uploads: BTreeMap<ObjectId, Upload>,
    jobs: BTreeMap<JobId, Option<WorkerProgram>>,
    workers: BTreeMap<WorkerId, WorkerEntry>,
}

impl<T: Transport> Core<T> {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }

    fn connect(&mut self) {
        self.link += 1;
        if let Some(old) = self.link_task.take() {
            old.abort();
        }
        let link = tokio::spawn(head_link(
            self.transport.clone(),
            self.options.clone(),
            self.data_addr,
            self.link,
            self.events.clone(),
        ));
        self.link_task = Some(link);
    }

    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Ev>) -> Result<(), NodeError> {
        self.connect();
        // One timer, set again only when the machine's next deadline changes (a new one for each
        // event costs a registration with the runtime's timer wheel every time).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Time> = None;
        loop {
            // Kept hot for a while after each event: the next (a worker's report, the head's
            // next task) mostly comes within it and then finds this thread running.
            if T::STAYS_HOT {
                keel_net::stay_hot(|| !events.is_empty()).await;
            }
            let event = match self.node.poll_timeout() {
                Some(t) => {
                    if armed != Some(t) {
                        let wait = Duration::from_nanos(t.0.saturating_sub(self.now().0));
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                        armed = Some(t);
                    }
                    tokio::select! {
                        e = events.recv() => e,
                        () = &mut timer => {
                            armed = None;
                            let now = self.now();
                            self.node.handle_timeout(now);
                            self.drain();
                            continue;
                        }
                    }
                }
                None => events.recv().await,
            };
            let Some(event) = event else { return Ok(()) };
            if let Some(done) = self.on_event(event) {
                self.kill_all();
                return done;
            }
        }
    }

    fn input(&mut self, input: NodeInput) {
        let now = self.now();
        if let Err(e) = self.node.handle_input(now, input) {
            tracing::warn!(error = %e, "the node machine refused an input");
        }
        self.drain();
    }

    fn send_to_head(&self, msg: ToHead) {
        if let Some(h) = &self.head {
            h.send(Outbound::Frame(msg));
        }
    }

    /// Returns `Some` when the daemon must stop.
    fn on_event(&mut self, event: Ev) -> Option<Result<(), NodeError>> {
        match event {
            Ev::HeadUp(tx, link) if link == self.link => self.head = Some(tx),
            Ev::Head(msg, link) if link == self.link => return self.on_head(msg),
            Ev::HeadLost(link) if link == self.link => {
                tracing::warn!("lost the head; registering again");
                self.reset();
                self.connect();
            }
            Ev::HeadUp(..) | Ev::Head(..) | Ev::HeadLost(_) => {}
            Ev::Peer { from, frame } => self.on_peer(from, frame),
            Ev::PeerGone { from } => {
                let lost: Vec<ObjectId> =
                    self.incoming.iter().filter(|(_, (f, _, _))| *f == from).map(|(o, _)| *o).collect();
                for object in lost {
                    self.abort_incoming(object);
                    self.input(NodeInput::PullFailed { object, from });
                }
            }
            Ev::PeerUnreachable { node, pulls } => {
                self.out.remove(&node);
                for object in pulls {
                    self.input(NodeInput::PullFailed { object, from: node });
                }
            }
            Ev::PeerLinkDown { node, link } => {
                // Only the link in use: an older one may end after its replacement started.
                if self.out.get(&node).is_some_and(|(_, l)| *l == link) {
                    self.out.remove(&node);
                    tracing::debug!(%node, "the connection to a peer ended");
                    // Whatever was asked of it on that connection will not be answered.
                    for object in self.node.pulls_from(node) {
                        self.input(NodeInput::PullFailed { object, from: node });
                    }
                }
            }
            Ev::WorkerHello { worker, tx } => match self.workers.get_mut(&worker) {
                Some(w) if w.tx.is_none() => {
                    for info in self.peers.values() {
                        let _ = tx.send(Outbound::Frame(ToWorker::Peer(info.clone())));
                    }
                    w.tx = Some(tx);
                    self.input(NodeInput::WorkerStarted { worker });
                }
                _ => {
                    tracing::warn!(%worker, "a process claimed a worker id this node did not start; closed");
                    let _ = tx.send(Outbound::Close);
                }
            },
            Ev::Worker { worker, msg } => match msg {
                FromWorker::Done { task, attempt, outcome } => {
                    let outcome = self.adopt_returns(outcome);
                    self.input(NodeInput::TaskDone { worker, task, attempt, outcome });
                }
                FromWorker::Submit(msg) => {
                    // A large put is sealed in the store's directory by the worker: take it in first.
                    if let DriverToHead::Put { object, size, inline: None, node: Some(n), .. } = &msg {
                        if Some(*n) == self.id {
                            if let Err(e) = self.store.adopt(*object, *size) {
                                tracing::warn!(%object, error = %e, "a worker's put is not in the store");
                                let _ = std::fs::remove_file(keel_shm::path_of(self.store.dir(), *object));
                            }
                        }
                    }
                    self.input(NodeInput::FromWorker { worker, msg })
                }
                FromWorker::Output { task, attempt, stream, data } => {
                    if let (Some(node), Some(w)) = (self.id, self.workers.get(&worker)) {
                        let chunk = OutputChunk { job: w.job, task, attempt, node, stream, data };
                        self.send_to_head(ToHead::Output(chunk));
                    }
                }
                FromWorker::Blocked(blocked) => self.input(NodeInput::WorkerBlocked { worker, blocked }),
                FromWorker::Withdrawn { tasks } => self.input(NodeInput::TaskWithdrawn { worker, tasks }),
                FromWorker::Hello { .. } => tracing::warn!(%worker, "a worker said hello twice"),
            },
            Ev::Process(ProcessEvent::Output { key, stream, data }) => self.on_output(key, stream, data),
            Ev::SendEnded { object, to } => self.input(NodeInput::SendEnded { object, to }),
            Ev::ClientAdopt { object, size, tx } => {
                let reply = if self.store.contains(object) || self.uploads.contains_key(&object) {
                    Err(format!("{object} is already here"))
                } else {
                    match self.store.adopt(object, size) {
                        Ok(_) => self.client_put(object, size),
                        Err(e) => {
                            let _ = std::fs::remove_file(keel_shm::path_of(self.store.dir(), object));
                            Err(e.to_string())
                        }
                    }
                };
                answer_client(&tx, object, reply);
            }
            Ev::UploadStart { conn, object, total, tx } => {
                if self.store.contains(object) || self.uploads.contains_key(&object) {
                    answer_client(&tx, object, Err(format!("{object} is already here")));
                } else {
                    match self.store.create(object, total) {
                        Ok(creating) => {
                            self.uploads.insert(object, Upload { conn, creating, written: 0, tx });
                        }
                        Err(e) => answer_client(&tx, object, Err(e.to_string())),
                    }
                }
            }
            // Only the connection that started an upload writes it or ends it: a second client
            // sending the same object was refused and touches nothing.
            Ev::UploadChunk { conn, object, offset, data, last } => {
                if self.uploads.get(&object).is_some_and(|u| u.conn == conn) {
                    self.on_upload_chunk(object, offset, data, last);
                }
            }
            Ev::UploadGone { conn, object } => {
                if self.uploads.get(&object).is_some_and(|u| u.conn == conn) {
                    let upload = self.uploads.remove(&object).expect("present");
                    self.store.abort(upload.creating);
                }
            }
            Ev::Fetch { object, tx } => match self.store.get(object) {
                Some(view) => {
                    tokio::spawn(stream_object(object, view, tx, None));
                }
                None => {
                    let _ = tx.send(Outbound::Frame(PeerFrame::Abort { object }));
                    let _ = tx.send(Outbound::Close);
                }
            },
            Ev::Process(ProcessEvent::Exited { key, status }) => {
                if self.workers.remove(&key).is_some() {
                    let exit_code = match status {
                        ExitStatus::Unknown => None,
                        s => Some(s.shell_code()),
                    };
                    self.input(NodeInput::WorkerExited { worker: key, exit_code });
                }
            }
        }
        None
    }

    fn on_head(&mut self, msg: FromHead) -> Option<Result<(), NodeError>> {
        match msg {
            FromHead::Welcome(Welcome::NodeRegistered(id)) => {
                tracing::info!(node = %id, data = %self.data_addr, "registered with the head");
                self.id = Some(id);
                self.input(NodeInput::Registered(id));
            }
            FromHead::Welcome(Welcome::Refused(e)) => return Some(Err(NodeError::Refused(e.to_string()))),
            FromHead::Welcome(Welcome::JobRegistered(_)) => tracing::warn!("the head answered as if to a driver"),
            FromHead::Node(msg) => self.input(NodeInput::FromHead(msg)),
            FromHead::Peer(info) => {
                for w in self.workers.values() {
                    if let Some(tx) = &w.tx {
                        let _ = tx.send(Outbound::Frame(ToWorker::Peer(info.clone())));
                    }
                }
                self.peers.insert(info.node, info);
            }
            FromHead::Job { job, program } => {
                self.jobs.insert(job, program);
            }
            FromHead::Stopping => {
                tracing::info!("the cluster is stopping");
                return Some(Ok(()));
            }
            FromHead::Driver(_) | FromHead::Output(_) | FromHead::Status(_) => {
                tracing::warn!("the head sent a node a driver's message; ignored");
            }
        }
        None
    }

    fn on_peer(&mut self, from: NodeId, frame: PeerFrame) {
        match frame {
            PeerFrame::Msg(msg) => self.input(NodeInput::FromPeer { from, msg }),
            PeerFrame::Chunk { object, total, offset, data, last } => {
                if !self.incoming.contains_key(&object) {
                    if offset != 0 {
                        tracing::warn!(%object, %from, offset, "object bytes without their start; the pull fails");
                        self.input(NodeInput::PullFailed { object, from });
                        return;
                    }
                    match self.store.create(object, total) {
                        Ok(c) => {
                            self.incoming.insert(object, (from, c, 0));
                        }
                        Err(e) => {
                            tracing::warn!(%object, error = %e, "cannot store a pulled object");
                            self.input(NodeInput::PullFailed { object, from });
                            return;
                        }
                    }
                }
                let (sender, creating, written) = self.incoming.get_mut(&object).expect("just inserted");
                let end = offset.saturating_add(data.len() as u64);
                if *sender != from || *written != offset || end > creating.size() || (last && end != creating.size()) {
                    tracing::warn!(%object, %from, offset, "object bytes out of order or of the wrong size; the pull fails");
                    self.abort_incoming(object);
                    self.input(NodeInput::PullFailed { object, from });
                    return;
                }
                creating.bytes_mut()[offset as usize..end as usize].copy_from_slice(&data);
                *written = end;
                if !last {
                    // A large object may take longer than the pull timeout to arrive whole.
                    self.input(NodeInput::PullProgress { object, from });
                }
                if last {
                    let (_, creating, _) = self.incoming.remove(&object).expect("present");
                    let size = creating.size();
                    match self.store.seal(creating) {
                        Ok(_) => self.input(NodeInput::ObjectSealed { object, size }),
                        Err(e) => {
                            tracing::warn!(%object, error = %e, "cannot seal a pulled object");
                            self.input(NodeInput::PullFailed { object, from });
                        }
                    }
                }
            }
            PeerFrame::Abort { object } => {
                self.abort_incoming(object);
                self.input(NodeInput::PullFailed { object, from });
            }
            PeerFrame::Hello { .. } | PeerFrame::Fetch { .. } | PeerFrame::Adopt { .. } | PeerFrame::Upload { .. } => {
                tracing::warn!(%from, "a peer sent a frame only a connection's first may be; ignored")
            }
            PeerFrame::Stored { .. } | PeerFrame::Refused { .. } => {
                tracing::warn!(%from, "a peer sent a frame only a node sends a client; ignored")
            }
        }
    }

    /// A slice of a client's upload.
    fn on_upload_chunk(&mut self, object: ObjectId, offset: u64, data: Vec<u8>, last: bool) {
        let Some(Upload { creating, written, .. }) = self.uploads.get_mut(&object) else { return };
        let end = offset.saturating_add(data.len() as u64);
        if *written != offset || end > creating.size() || (last && end != creating.size()) {
            let why = format!("bytes at {offset}..{end} after {written} of {} bytes", creating.size());
            let upload = self.uploads.remove(&object).expect("present");
            self.store.abort(upload.creating);
            answer_client(&upload.tx, object, Err(why));
            return;
        }
        creating.bytes_mut()[offset as usize..end as usize].copy_from_slice(&data);
        *written = end;
        if !last {
            return;
        }
        let Upload { creating, tx, .. } = self.uploads.remove(&object).expect("present");
        let size = creating.size();
        let reply = match self.store.seal(creating) {
            Ok(_) => self.client_put(object, size),
            Err(e) => Err(e.to_string()),
        };
        answer_client(&tx, object, reply);
    }

    /// Records a client's put, now in the store, with the Node machine; on refusal the bytes go.
    fn client_put(&mut self, object: ObjectId, size: u64) -> Result<NodeId, String> {
        let now = self.now();
        let result = self.node.handle_input(now, NodeInput::ClientPut { object, size });
        self.drain();
        match (result, self.id) {
            (Ok(()), Some(id)) => Ok(id),
            (Ok(()), None) => Err("the node is not registered".into()),
            (Err(e), _) => {
                if !matches!(e, keel_kernel::InputError::DuplicateObject(_)) {
                    self.store.delete(object);
                }
                Err(e.to_string())
            }
        }
    }

    /// A worker process wrote to its own standard output or error. It is in the worker's log
    /// file already; what its tasks print reaches their submitters through the worker itself
    /// (`FromWorker::Output`, ordered before the attempt's end), so nothing more is done here.
    fn on_output(&mut self, worker: WorkerId, stream: keel_process::Stream, data: Vec<u8>) {
        tracing::trace!(%worker, ?stream, bytes = data.len(), "worker output (logged)");
    }

    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            self.perform(output);
        }
    }

    fn perform(&mut self, output: NodeOutput) {
        match output {
            NodeOutput::ToHead(msg) => self.send_to_head(ToHead::Node(msg)),
            NodeOutput::ToPeer { node, msg } => self.send_to_peer(node, PeerFrame::Msg(msg)),
            NodeOutput::StartWorker { worker, job, kind, gpus } => self.start_worker(worker, job, kind, &gpus),
            NodeOutput::Execute { worker, spec, attempt, args } => {
                let store_dir = self.store.dir().display().to_string();
                match self.workers.get_mut(&worker) {
                    Some(w) => {
                        if let Some(tx) = &w.tx {
                            let _ = tx.send(Outbound::Frame(ToWorker::Execute { spec, attempt, args, store_dir }));
                        }
                    }
                    None => tracing::warn!(%worker, "asked to run a task in a worker that is gone"),
                }
            }
            NodeOutput::InterruptTask { worker, task, attempt } => {
                self.send_to_worker(worker, ToWorker::Interrupt { task, attempt })
            }
            NodeOutput::WithdrawTask { worker, tasks } => self.send_to_worker(worker, ToWorker::Withdraw { tasks }),
            NodeOutput::KillWorker { worker } => {
                if let Some(p) = self.workers.get_mut(&worker).and_then(|w| w.process.as_mut()) {
                    p.kill();
                }
            }
            NodeOutput::SendObject { object, to, .. } => self.send_object(object, to),
            NodeOutput::DeleteObject(object) => self.store.delete(object),
            NodeOutput::ToWorker { worker, msg } => self.send_to_worker(worker, ToWorker::Message(msg)),
            NodeOutput::Reset => {
                tracing::warn!("the head no longer knows this node; registering again");
                let old = self.head.take();
                self.reset();
                if let Some(h) = old {
                    h.send(Outbound::Close);
                }
                self.connect();
            }
        }
    }

    fn send_to_worker(&self, worker: WorkerId, msg: ToWorker) {
        if let Some(tx) = self.workers.get(&worker).and_then(|w| w.tx.as_ref()) {
            let _ = tx.send(Outbound::Frame(msg));
        }
    }

    /// The channel to a peer's data port, dialling it first if needed; `None` when its address
    /// is unknown.
    fn peer_channel(&mut self, node: NodeId) -> Option<mpsc::UnboundedSender<Outbound<PeerFrame>>> {
        if let Some((tx, _)) = self.out.get(&node).filter(|(tx, _)| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let (Some(me), Some(addr)) = (self.id, self.peers.get(&node).map(|p| p.addr.clone())) else {
            tracing::warn!(%node, "no address for a peer");
            return None;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (token, max_frame, events) = (self.options.token.clone(), self.options.max_frame, self.events.clone());
        self.next_peer_link += 1;
        let link = self.next_peer_link;
        tokio::spawn(peer_link(self.transport.clone(), node, link, me, addr, token, max_frame, rx, events));
        self.out.insert(node, (tx.clone(), link));
        Some(tx)
    }

    fn send_to_peer(&mut self, node: NodeId, frame: PeerFrame) {
        let pull = match &frame {
            PeerFrame::Msg(NodeToNode::Pull { object }) => Some(*object),
            _ => None,
        };
        let sent = self.peer_channel(node).is_some_and(|tx| tx.send(Outbound::Frame(frame)).is_ok());
        if !sent {
            self.out.remove(&node);
            if let Some(object) = pull {
                self.input(NodeInput::PullFailed { object, from: node });
            }
        }
    }

    /// Streams a sealed object to a peer in chunks, off the core: the bytes are read from the
    /// store's mapping by a task of their own, and the end of the send comes back as an event.
    fn send_object(&mut self, object: ObjectId, to: NodeId) {
        let Some(view) = self.store.get(object) else {
            self.send_to_peer(to, PeerFrame::Abort { object });
            self.input(NodeInput::SendEnded { object, to });
            return;
        };
        let Some(tx) = self.peer_channel(to) else {
            self.input(NodeInput::SendEnded { object, to });
            return;
        };
        let done = (self.events.clone(), to);
        tokio::spawn(stream_object(object, view, tx, Some(done)));
    }

    fn abort_incoming(&mut self, object: ObjectId) {
        if let Some((_, creating, _)) = self.incoming.remove(&object) {
            self.store.abort(creating);
        }
    }

    /// A worker sealed its large return values in the store's directory itself: take them in.
    /// A value that is not there as reported fails the attempt with the reason.
    fn adopt_returns(&mut self, outcome: TaskOutcome) -> TaskOutcome {
        let TaskOutcome::Finished(values) = outcome else { return outcome };
        for ReturnValue { object, size, inline, .. } in &values {
            if inline.is_none() {
                if let Err(e) = self.store.adopt(*object, *size) {
                    tracing::warn!(%object, error = %e, "a worker's value is not in the store");
                    let _ = std::fs::remove_file(keel_shm::path_of(self.store.dir(), *object));
                    for ReturnValue { object, inline, .. } in &values {
                        if inline.is_none() {
                            self.store.delete(*object);
                        }
                    }
                    return TaskOutcome::Failed(TaskFailure::Application {
                        message: format!("the worker's return value could not be stored: {e}"),
                    });
                }
            }
        }
        TaskOutcome::Finished(values)
    }

    fn start_worker(&mut self, worker: WorkerId, job: JobId, kind: WorkerKind, gpus: &[u32]) {
        let program = self.jobs.get(&job).cloned().flatten().unwrap_or_else(|| self.options.command_worker.clone());
        let mut env: BTreeMap<String, String> = program.env.iter().cloned().collect();
        env.insert("KEEL_WORKER_SOCKET".into(), self.socket_path.display().to_string());
        env.insert("KEEL_WORKER_ID".into(), worker.0.to_string());
        env.insert("KEEL_JOB_ID".into(), job.0.to_string());
        env.insert("KEEL_STORE_DIR".into(), self.store.dir().display().to_string());
        if let Some(id) = self.id {
            env.insert("KEEL_NODE_ID".into(), id.0.to_string());
        }
        env.insert("KEEL_TOKEN".into(), String::from_utf8_lossy(self.options.token.as_bytes()).into_owned());
        if let WorkerKind::Actor(actor) = kind {
            env.insert("KEEL_ACTOR_ID".into(), actor.0.to_string());
        }
        if !gpus.is_empty() {
            let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
            env.insert("CUDA_VISIBLE_DEVICES".into(), list.join(","));
        }
        let spec = ProcessSpec {
            program: program.path.clone().into(),
            args: program.args.clone(),
            cwd: (!program.cwd.is_empty()).then(|| program.cwd.clone().into()),
            env,
            log_name: format!("worker-{}", worker.0),
        };
        match self.spawner.spawn(worker, &spec) {
            Ok(handle) => {
                tracing::debug!(%worker, pid = handle.pid(), %job, "worker started");
                self.workers.insert(worker, WorkerEntry { process: Some(handle), tx: None, job });
            }
            Err(e) => {
                tracing::warn!(%worker, error = %e, "cannot start a worker");
                self.input(NodeInput::WorkerStartFailed { worker, message: e.to_string() });
            }
        }
    }

    fn kill_all(&mut self) {
        for (_, mut w) in std::mem::take(&mut self.workers) {
            if let Some(p) = w.process.as_mut() {
                p.kill();
            }
        }
    }

    /// Forgets everything: the next registration starts a new node.
    fn reset(&mut self) {
        self.kill_all();
        for object in self.incoming.keys().copied().collect::<Vec<_>>() {
            self.abort_incoming(object);
        }
        for (object, upload) in std::mem::take(&mut self.uploads) {
            self.store.abort(upload.creating);
            answer_client(&upload.tx, object, Err("the node lost the head and started afresh".into()));
        }
        self.store.clear();
        self.out.clear();
        self.head = None;
        self.id = None;
        self.node = Node::new(self.options.config.clone());
    }
}

impl<T: Transport> Drop for Core<T> {
    /// The core ends (the node stops or is aborted): its head link goes, and its workers die.
    fn drop(&mut self) {
        if let Some(link) = self.link_task.take() {
            link.abort();
        }
        self.kill_all();
    }
}

impl From<NetError> for NodeError {
    fn from(e: NetError) -> Self {
        NodeError::Setup { what: "network".into(), source: std::io::Error::other(e.to_string()) }
    }
}
