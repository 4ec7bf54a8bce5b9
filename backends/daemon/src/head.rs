//! The head daemon: hosts the Head machine.
//!
//! One task (the core) owns the machine. Connection tasks authenticate peers, read their frames
//! and hand them to the core over a channel; the core feeds them to the machine with the time
//! since the head started, drains every output and queues each on the right connection's writer.
//! A connection that sends garbage, an oversized frame or a message its role may not send is
//! closed with a logged reason; nothing else is affected.
//!
//! With a provider ([`HeadOptions::provider`]), the machine's `Launch` and `Terminate` outputs
//! are handed to it, and so are the registrations of nodes, so that it knows which of its nodes
//! came up; like frames, they leave once the journal holds what caused them. The launches it
//! reports failed come back to the core as `HeadInput::LaunchFailed`, journaled like every
//! input. The provider carries the decisions out; it makes none.

use crate::conn::{self, Outbound};
use crate::journal::{Entry, Journal, JournalError};
use keel_kernel::autoscaler::NodeType;
use keel_kernel::head::HeadOutput;
use keel_kernel::ids::{ConnId, JobId, NodeId};
use keel_kernel::proto::{DriverToHead, Hello, Labels, Welcome};
use keel_kernel::{Head, HeadConfig, HeadInput, InputError, Time};
use keel_net::wire::{
    AdminRequest, AutoscalerReport, ClusterStatus, Demand, FromHead, NodeStatus, PeerInfo, Register, ToHead,
    WorkerProgram,
};
use keel_net::{Connection, Listener, NetError, Tcp, Token, Transport, DEFAULT_MAX_FRAME, KEEPALIVE_EVERY};
use keel_provider::{Events, Provider, ProviderEvent, SharedProvider};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The journal size that triggers a snapshot by default.
pub const DEFAULT_SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

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
    /// The journal (see [`crate::journal`]); a restarted head replays it. None: nothing survives a restart.
    pub journal: Option<PathBuf>,
    /// A snapshot is taken, and the journal started afresh, once the journal holds this many bytes.
    pub snapshot_after_bytes: u64,
    /// Who starts and stops nodes for the autoscaler (`config.autoscaler`). The head attaches it
    /// when it listens and shuts it down when it stops (not when aborted: then its owner does).
    /// A head restarted from a journal does not know of launches its provider did not carry out
    /// for it: they time out as failed launches.
    pub provider: Option<SharedProvider>,
}

impl HeadOptions {
    /// Defaults: the machine's defaults and a 64 MiB frame limit.
    pub fn new(listen: impl Into<String>, token: Token) -> HeadOptions {
        HeadOptions {
            listen: listen.into(),
            token,
            config: HeadConfig::default(),
            max_frame: DEFAULT_MAX_FRAME,
            journal: None,
            snapshot_after_bytes: DEFAULT_SNAPSHOT_AFTER_BYTES,
            provider: None,
        }
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
    /// The journal cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
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
    Provider(ProviderEvent),
}

/// What the core asks of the provider, queued like frames until the journal is synced.
enum ProviderCall {
    Launch { request: u64, node_type: NodeType, count: u32 },
    Registered { node: NodeId, labels: Labels },
    Terminate { node: NodeId, labels: Labels },
}

/// Binds the listening socket and starts the head; returns once it accepts connections.
pub async fn start(options: HeadOptions) -> Result<HeadHandle, HeadError> {
    start_on(options, Tcp).await
}

/// [`start`] over another transport (turmoil's simulated network, in tests).
pub async fn start_on<T: Transport>(options: HeadOptions, transport: T) -> Result<HeadHandle, HeadError> {
    let mut core = Core::new(options.config.clone());
    let mut first_conn = 1;
    if let Some(path) = &options.journal {
        let (journal, recovered) = Journal::open(path)?;
        if let (None, Some(Entry::Config(config))) = (&recovered.snapshot, recovered.entries.first()) {
            // The machine is rebuilt as it was made, so that it decides again as it did.
            let (kept, asked) = (format!("{config:?}"), format!("{:?}", options.config));
            if kept != asked {
                tracing::warn!(
                    kept,
                    asked,
                    "the head keeps the settings its journal began with; the settings given now are not used"
                );
            }
            core = Core::new(config.clone());
        }
        let fresh = recovered.snapshot.is_none() && recovered.entries.is_empty();
        if recovered.torn_tail_bytes > 0 {
            tracing::warn!(path = %path.display(), bytes = recovered.torn_tail_bytes, "dropped a record cut short by a crash");
        }
        if recovered.superseded_records > 0 {
            tracing::info!(
                records = recovered.superseded_records,
                "dropped journal records the snapshot already holds"
            );
        }
        if let Some(snapshot) = recovered.snapshot {
            tracing::info!(generation = snapshot.generation, "loaded the snapshot");
            // The machine comes back as it was, settings included (its seed and clock go on).
            let (kept, asked) = (format!("{:?}", snapshot.head.config()), format!("{:?}", options.config));
            if kept != asked {
                tracing::warn!(
                    kept,
                    asked,
                    "the head keeps the settings of its snapshot; the settings given now are not used"
                );
            }
            core.head = snapshot.head;
            core.jobs = snapshot.jobs;
            core.max_conn = snapshot.max_conn;
        }
        let n = recovered.entries.len();
        first_conn = core.replay(recovered.entries) + 1;
        if n > 0 {
            tracing::info!(path = %path.display(), records = n, "replayed the journal");
        }
        core.journal = Some(journal);
        core.snapshot_after_bytes = options.snapshot_after_bytes;
        core.record(&if fresh { Entry::Config(options.config.clone()) } else { Entry::Restarted });
    }
    let listener = transport
        .bind(&options.listen)
        .await
        .map_err(|source| HeadError::Listen { addr: options.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| HeadError::Listen { addr: options.listen.clone(), source })?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    if let Some(provider) = &options.provider {
        let tx = events_tx.clone();
        let events = Events::new(move |e| drop(tx.send(CoreEvent::Provider(e))));
        lock(provider).attach(addr, events);
        core.provider = Some(provider.clone());
    }
    let next_conn = Arc::new(AtomicU64::new(first_conn));
    let token = options.token.clone();
    if T::IN_PROCESS_LINKS {
        publish_local(addr, &events_tx, &next_conn, &options);
    }
    let max_frame = options.max_frame;
    // A node's connection on which nothing arrived for a node timeout is closed: the machine
    // declares the node dead then anyway, and the node registers again when it can.
    let node_silence = std::time::Duration::from_nanos(core.head.config().node_timeout.0);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(keel_net::handshake::MAX_PENDING_HANDSHAKES));
    let accept = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many connections handshaking at once; closed this one");
                        continue;
                    };
                    let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
                    let limits = Limits { max_frame, node_silence };
                    tokio::spawn(serve(stream, peer, conn, token.clone(), limits, events_tx.clone(), permit));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    core.stays_hot = T::STAYS_HOT;
    let core = tokio::spawn(core.run(events_rx));
    tracing::info!(%addr, "head listening");
    Ok(HeadHandle { addr, core, accept })
}

#[derive(Clone, Copy)]
struct Limits {
    max_frame: usize,
    node_silence: std::time::Duration,
}

/// One connection: handshake, registration, then frames to the core until it ends. The head
/// sends keepalives to nodes and drivers (so that they notice a head that vanished), and closes
/// a node's connection that falls silent.
async fn serve<R, W>(
    stream: Connection<R, W>,
    peer: SocketAddr,
    conn: ConnId,
    token: Token,
    limits: Limits,
    events: mpsc::UnboundedSender<CoreEvent>,
    handshaking: tokio::sync::OwnedSemaphorePermit,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer_name = peer.to_string();
    let (mut reader, writer) = match conn::accept(stream.read, stream.write, &peer_name, &token, limits.max_frame).await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(peer = %peer_name, error = %e, "refused a connection");
            return;
        }
    };
    let register =
        match tokio::time::timeout(keel_net::handshake::HANDSHAKE_TIMEOUT, reader.recv::<Register>("registration"))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(peer = %peer_name, "no registration after the handshake; closed");
                return;
            }
        };
    drop(handshaking);
    let register: Register = match register {
        Ok(r) => r,
        Err(e) => {
            log_close(&peer_name, &e);
            return;
        }
    };
    let keepalive = match register {
        Register::Node { .. } => {
            reader.set_silence_limit(Some(limits.node_silence));
            Some(KEEPALIVE_EVERY)
        }
        Register::Driver { .. } => Some(KEEPALIVE_EVERY),
        Register::Admin(_) => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    conn::spawn_writer(writer, rx, keepalive);
    if events.send(CoreEvent::Register { conn, peer: peer_name.clone(), register, tx }).is_err() {
        return;
    }
    let why = loop {
        // A head that stopped (or was aborted) closes its connections.
        let frame = tokio::select! {
            f = reader.recv::<ToHead>("message to the head") => f,
            _ = events.closed() => return,
        };
        match frame {
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

/// Heads of this process by listening address, for the nodes and drivers of the same process.
type LocalHeads = std::sync::Mutex<std::collections::HashMap<SocketAddr, LocalHead>>;

/// A head as its in-process peers reach it: its core's queue (weak: the registry must not keep a
/// stopped head's queue open), its connection numbers and its token.
struct LocalHead {
    events: mpsc::WeakUnboundedSender<CoreEvent>,
    next_conn: Arc<AtomicU64>,
    token: Token,
    max_frame: usize,
}

impl LocalHead {
    /// Its core's queue, unless the head stopped.
    fn live(&self) -> Option<mpsc::UnboundedSender<CoreEvent>> {
        self.events.upgrade().filter(|e| !e.is_closed())
    }
}

fn local_heads() -> &'static LocalHeads {
    static HEADS: std::sync::OnceLock<LocalHeads> = std::sync::OnceLock::new();
    HEADS.get_or_init(Default::default)
}

/// A node's or driver's link to a head of the same process: what it sends goes straight into the
/// head core's queue, and what the head sends arrives typed on `from_head`. No frame is encoded,
/// no byte copied and no connection task runs between them. The messages, their order, the
/// registration and the closing are those of a connection.
#[derive(Debug)]
pub struct LocalLink {
    /// The way to the head.
    pub to_head: HeadSender,
    /// The head's messages; `Outbound::Close`, or the end of the queue, is the head closing the link.
    pub from_head: mpsc::UnboundedReceiver<Outbound<FromHead>>,
}

/// The sending side of a [`LocalLink`]. Dropping it closes the link, as closing a socket does.
#[derive(Debug)]
pub struct HeadSender {
    conn: ConnId,
    events: mpsc::UnboundedSender<CoreEvent>,
    closed: std::sync::atomic::AtomicBool,
    /// The head's limit on a message's encoded size, as on its connections.
    max_frame: usize,
}

impl HeadSender {
    /// Hands `msg` to the head; false when the link is closed or the head gone. A message larger
    /// encoded than the head takes on a connection closes the link, as it closes a connection.
    pub fn send(&self, msg: ToHead) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let size = postcard::experimental::serialized_size(&msg).unwrap_or(usize::MAX);
        if size > self.max_frame {
            self.close_for(Some(format!("a message of {size} bytes, over the limit of {}", self.max_frame)));
            return false;
        }
        self.events.send(CoreEvent::Frame { conn: self.conn, msg }).is_ok()
    }

    /// Closes the link: the head forgets the connection as if its peer had hung up.
    pub fn close(&self) {
        self.close_for(None);
    }

    fn close_for(&self, why: Option<String>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.events.send(CoreEvent::Closed { conn: self.conn, why });
        }
    }
}

impl Drop for HeadSender {
    fn drop(&mut self) {
        self.close();
    }
}

/// Registers with the head listening at `addr` when it runs in this process and takes `token`
/// (else None: dial it over the network, which also says why a wrong token is refused); the
/// registration is made only then. The head's welcome is the first message on the returned link.
pub fn connect_local(addr: &str, token: &Token, register: impl FnOnce() -> Register) -> Option<LocalLink> {
    let (events, conn, max_frame) = {
        let mut heads = local_heads().lock().ok()?;
        // Stopped heads go first, so that one does not hide a live head on the wildcard address.
        heads.retain(|_, h| h.live().is_some());
        let head = keel_net::transport::find_local(&heads, addr)?;
        if head.token != *token {
            return None;
        }
        (head.live()?, ConnId(head.next_conn.fetch_add(1, Ordering::Relaxed)), head.max_frame)
    };
    let (tx, from_head) = mpsc::unbounded_channel();
    let peer = format!("{addr} (in this process)");
    events.send(CoreEvent::Register { conn, peer, register: register(), tx }).ok()?;
    let to_head = HeadSender { conn, events, closed: std::sync::atomic::AtomicBool::new(false), max_frame };
    Some(LocalLink { to_head, from_head })
}

/// Lets this process's nodes and drivers reach the head at `addr` directly.
fn publish_local(
    addr: SocketAddr,
    events: &mpsc::UnboundedSender<CoreEvent>,
    next_conn: &Arc<AtomicU64>,
    options: &HeadOptions,
) {
    if let Ok(mut heads) = local_heads().lock() {
        // Heads that stopped leave their entries; a new one at the same address replaces them.
        heads.retain(|_, h| h.live().is_some());
        let head = LocalHead {
            events: events.downgrade(),
            next_conn: next_conn.clone(),
            token: options.token.clone(),
            max_frame: options.max_frame,
        };
        heads.insert(addr, head);
    }
}

fn log_close(peer: &str, e: &NetError) {
    if e.is_clean_close() {
        tracing::debug!(%peer, "connection closed");
    } else {
        tracing::warn!(%peer, error = %e, "closing the connection");
    }
}

enum Role {
    PendingNode { addr: String, host: String, store_dir: String },
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
    info: PeerInfo,
}

struct Core {
    head: Head,
    /// Whether its thread keeps running for a while after each event ([`keel_net::stay_hot`]).
    stays_hot: bool,
    start: Instant,
    conns: BTreeMap<ConnId, ConnState>,
    /// Live nodes, as peers and drivers learn of them.
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// The connection of every node that has one, dead or alive in the machine's eyes.
    routes: BTreeMap<NodeId, ConnId>,
    drivers: BTreeMap<JobId, ConnId>,
    jobs: BTreeMap<JobId, Option<WorkerProgram>>,
    stopping: bool,
    journal: Option<Journal>,
    /// Machine time when this process started (after a replay, where the journal ended).
    base: Time,
    /// Frames waiting for the journal to be synced.
    pending: Vec<(ConnId, Outbound<FromHead>)>,
    /// The first journal append of this batch that failed.
    journal_failed: Option<JournalError>,
    /// The highest connection id the machine has seen (a restart numbers new ones above it).
    max_conn: u64,
    snapshot_after_bytes: u64,
    /// What the batch decided, for its [`Entry::Decided`] record.
    decided: Decided,
    provider: Option<SharedProvider>,
    /// Calls waiting for the journal to be synced.
    provider_calls: Vec<ProviderCall>,
    /// Launches the provider reported failed, and the last one's reason (for status).
    launches_failed: u64,
    last_launch_failure: Option<String>,
    /// Nodes handed to the provider to stop, until they are declared dead (an expected loss).
    stopped: std::collections::BTreeSet<NodeId>,
}

fn lock(provider: &SharedProvider) -> std::sync::MutexGuard<'_, dyn Provider> {
    provider.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The outputs of a batch, counted and hashed (see [`Entry::Decided`]).
#[derive(Default)]
pub(crate) struct Decided {
    records: u64,
    outputs: u64,
    hasher: sha2::Sha256,
    scratch: Vec<u8>,
}

impl Decided {
    pub(crate) fn output(&mut self, output: &HeadOutput) {
        use sha2::Digest;
        self.scratch.clear();
        let bytes =
            postcard::to_extend(output, std::mem::take(&mut self.scratch)).expect("serialising to a Vec cannot fail");
        self.hasher.update(&bytes);
        self.scratch = bytes;
        self.outputs += 1;
    }

    pub(crate) fn record(&mut self) {
        self.records += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0 && self.outputs == 0
    }

    /// The batch's record; starts the next batch.
    pub(crate) fn take(&mut self) -> Entry {
        use sha2::Digest;
        let hasher = std::mem::take(&mut self.hasher);
        let entry = Entry::Decided { records: self.records, outputs: self.outputs, digest: hasher.finalize().into() };
        self.records = 0;
        self.outputs = 0;
        entry
    }
}

impl Core {
    fn new(config: HeadConfig) -> Core {
        Core {
            stays_hot: false,
            head: Head::new(config),
            start: Instant::now(),
            conns: BTreeMap::new(),
            nodes: BTreeMap::new(),
            routes: BTreeMap::new(),
            drivers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            stopping: false,
            journal: None,
            base: Time::ZERO,
            pending: Vec::new(),
            journal_failed: None,
            max_conn: 0,
            snapshot_after_bytes: DEFAULT_SNAPSHOT_AFTER_BYTES,
            decided: Decided::default(),
            provider: None,
            provider_calls: Vec::new(),
            launches_failed: 0,
            last_launch_failure: None,
            stopped: std::collections::BTreeSet::new(),
        }
    }

    /// The machine's clock: nanoseconds since the head started, never going back.
    fn now(&self) -> Time {
        Time(self.base.0 + self.start.elapsed().as_nanos() as u64).max(self.head.now())
    }

    async fn run(mut self, events: mpsc::UnboundedReceiver<CoreEvent>) {
        self.serve(events).await;
        if let Some(provider) = self.provider.take() {
            tracing::info!("stopping the provider's nodes");
            let done = lock(&provider).shutdown();
            done.await;
        }
    }

    async fn serve(&mut self, mut events: mpsc::UnboundedReceiver<CoreEvent>) {
        // One timer, set again only when the machine's next deadline changes (a new one for each
        // event costs a registration with the runtime's timer wheel every time).
        let timer = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Time> = None;
        loop {
            // The next event (a node's report, a driver's next call) mostly comes within a spin.
            if self.stays_hot {
                keel_net::stay_hot(|| !events.is_empty()).await;
            }
            let deadline = self.head.poll_timeout();
            let event = match deadline {
                Some(t) => {
                    if armed != Some(t) {
                        let wait = std::time::Duration::from_nanos(t.0.saturating_sub(self.now().0));
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                        armed = Some(t);
                    }
                    tokio::select! {
                        e = events.recv() => e,
                        () = &mut timer => {
                            armed = None;
                            let now = self.now();
                            self.record(&Entry::Timeout { now });
                            self.decided.record();
                            self.head.handle_timeout(now);
                            self.drain();
                            if let Err(e) = self.release() {
                                tracing::error!(error = %e, "the journal failed; the head stops");
                                return;
                            }
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
            if let Err(e) = self.release() {
                tracing::error!(error = %e, "the journal failed; the head stops");
                return;
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
        if let HeadInput::Connect { conn, .. } = &input {
            self.max_conn = self.max_conn.max(conn.0);
        }
        if self.journal.is_some() {
            self.record(&Entry::Input { now, input: input.clone() });
            self.decided.record();
        }
        let what = tracing::enabled!(tracing::Level::WARN).then(|| {
            let mut text = format!("{input:?}");
            text.truncate(300);
            text
        });
        if let Err(e) = self.head.handle_input(now, input) {
            tracing::warn!(error = %e, input = what.unwrap_or_default(), "the head refused an input");
        }
        self.drain();
    }

    /// Queues a frame; it leaves once the journal holds what caused it (see [`Core::release`]).
    fn send(&mut self, conn: ConnId, frame: FromHead) {
        self.pending.push((conn, Outbound::Frame(frame)));
    }

    fn close(&mut self, conn: ConnId, why: &str) {
        if let Some(c) = self.conns.get(&conn) {
            tracing::warn!(peer = %c.peer, reason = why, "closing the connection");
            self.pending.push((conn, Outbound::Close));
        }
    }

    /// Makes the batch's journal records durable, then sends what the batch produced; takes a
    /// snapshot when the journal has grown long.
    fn release(&mut self) -> Result<(), JournalError> {
        // A batch whose journal append failed gets no record of what it decided: it reads as
        // unfinished (and is not sent).
        if self.journal.is_some() && !self.decided.is_empty() && self.journal_failed.is_none() {
            let decided = self.decided.take();
            self.record(&decided);
        }
        if let Some(e) = self.journal_failed.take() {
            return Err(e);
        }
        if let Some(j) = self.journal.as_mut() {
            j.sync()?;
        }
        for (conn, item) in self.pending.drain(..) {
            if let Some(c) = self.conns.get(&conn) {
                let _ = c.tx.send(item);
            }
        }
        if let Some(provider) = &self.provider {
            let mut provider = lock(provider);
            for call in self.provider_calls.drain(..) {
                match call {
                    ProviderCall::Launch { request, node_type, count } => provider.launch(request, &node_type, count),
                    ProviderCall::Registered { node, labels } => provider.registered(node, &labels),
                    ProviderCall::Terminate { node, labels } => provider.terminate(node, &labels),
                }
            }
        }
        if let Some(j) = self.journal.as_mut() {
            if j.len_bytes() >= self.snapshot_after_bytes {
                let started = std::time::Instant::now();
                let journal_bytes = j.len_bytes();
                let (snapshot, bytes) = j.snapshot(&self.head, &self.jobs, self.max_conn)?;
                // Go on with the machine as a restart would load it.
                self.head = snapshot.head;
                tracing::info!(
                    generation = snapshot.generation,
                    bytes,
                    journal_bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "took a snapshot; the journal starts afresh"
                );
            }
        }
        Ok(())
    }

    /// Appends to the journal. A failed append poisons the batch: [`Core::release`] then
    /// reports it and the head stops, rather than send outputs a restart would not know of.
    fn record(&mut self, entry: &Entry) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.append(entry) {
                tracing::error!(error = %e, "cannot write the journal");
                self.journal_failed.get_or_insert(e);
            }
        }
    }

    /// Feeds a journal's records to the fresh machine; returns the highest connection id seen.
    fn replay(&mut self, entries: Vec<Entry>) -> u64 {
        let mut max_conn = self.max_conn;
        let mut last = self.head.now();
        for entry in entries {
            match entry {
                Entry::Input { now, input } => {
                    if let HeadInput::Connect { conn, .. } = &input {
                        max_conn = max_conn.max(conn.0);
                    }
                    let _ = self.head.handle_input(now, input);
                    last = now;
                }
                Entry::Timeout { now } => {
                    self.head.handle_timeout(now);
                    last = now;
                }
                Entry::Program { job, program } => {
                    self.jobs.insert(job, program);
                }
                Entry::Config(_) | Entry::Begins { .. } | Entry::Decided { .. } | Entry::Restarted => {}
            }
            while self.head.poll_output().is_some() {}
        }
        // Only running jobs keep their programs (the journal holds those of ended jobs too).
        let head = &self.head;
        self.jobs.retain(|job, _| head.job_running(*job));
        // The clock goes on from where the journal ends.
        self.base = Time(last.0 + 1_000_000);
        self.max_conn = max_conn;
        max_conn
    }

    /// A driver takes up its job again on a new connection.
    /// The newer connection wins: a driver resumes when it stopped hearing from the head, which
    /// may still hold its old connection (a stalled link the head has no limit on); that one is
    /// closed without counting as the driver going away.
    fn resume_job(&mut self, conn: ConnId, peer: String, tx: mpsc::UnboundedSender<Outbound<FromHead>>, job: JobId) {
        if !self.head.job_running(job) {
            tracing::warn!(%peer, %job, "refused to resume a job that is not running");
            let _ = tx.send(Outbound::Frame(FromHead::Welcome(Welcome::Refused(InputError::UnknownJob(job)))));
            let _ = tx.send(Outbound::Close);
            return;
        }
        if let Some(old) = self.drivers.remove(&job) {
            if let Some(c) = self.conns.get_mut(&old) {
                c.role = Role::Admin;
                tracing::info!(%job, old = %c.peer, "a newer connection of the job's driver replaces this one");
                let _ = c.tx.send(Outbound::Close);
            }
        }
        tracing::info!(%peer, %job, "driver resumed its job");
        self.conns.insert(conn, ConnState { tx, peer, role: Role::Driver(job) });
        self.drivers.insert(job, conn);
        self.send(conn, FromHead::Welcome(Welcome::JobRegistered(job)));
        self.introduce_nodes_to(conn);
    }

    /// A driver learns where every node is (to read objects from them).
    fn introduce_nodes_to(&mut self, conn: ConnId) {
        let infos: Vec<PeerInfo> = self.nodes.values().map(|n| n.info.clone()).collect();
        for info in infos {
            self.send(conn, FromHead::Peer(info));
        }
    }

    fn on_event(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::Register { conn, peer, register, tx } => {
                let (role, hello) = match register {
                    Register::Node { hello, data_addr, host, store_dir } => {
                        if !matches!(hello, Hello::RegisterNode { .. }) {
                            let _ = tx.send(Outbound::Close);
                            tracing::warn!(%peer, "a node registration carried a driver's hello; closed");
                            return;
                        }
                        (Role::PendingNode { addr: data_addr, host, store_dir }, Some(hello))
                    }
                    Register::Driver { hello, program, resume } => {
                        if !matches!(hello, Hello::RegisterJob { .. }) {
                            let _ = tx.send(Outbound::Close);
                            tracing::warn!(%peer, "a driver registration carried a node's hello; closed");
                            return;
                        }
                        if let Some(job) = resume {
                            self.resume_job(conn, peer, tx, job);
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
                        self.jobs.remove(&job);
                        self.input(HeadInput::DriverDisconnected(job));
                    }
                    // A node whose connection is gone registers again as a new node: this one
                    // is lost now (its tasks retried, its objects rebuilt), not at its deadline.
                    Role::Node(node) if self.routes.get(&node) == Some(&conn) => {
                        self.routes.remove(&node);
                        tracing::info!(%node, "node connection closed; the node is lost");
                        self.input(HeadInput::NodeDisconnected(node));
                    }
                    _ => {}
                }
            }
            CoreEvent::Provider(ProviderEvent::LaunchFailed { request, reason }) => {
                tracing::warn!(request, reason, "the provider could not launch nodes");
                self.launches_failed += 1;
                self.last_launch_failure = Some(reason.clone());
                self.input(HeadInput::LaunchFailed { request, reason });
            }
            CoreEvent::Provider(other) => tracing::debug!(?other, "a provider event this head does not use"),
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.head.poll_output() {
            if self.journal.is_some() {
                self.decided.output(&output);
            }
            self.perform(output);
        }
    }

    fn perform(&mut self, output: HeadOutput) {
        match output {
            HeadOutput::ToConn { conn, msg } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let role = std::mem::replace(&mut c.role, Role::Admin);
                c.role = match (&msg, role) {
                    (Welcome::NodeRegistered(node), Role::PendingNode { addr, host, store_dir }) => {
                        let node = *node;
                        tracing::info!(%node, %addr, %host, "node registered");
                        self.nodes.insert(node, NodeEntry { conn, info: PeerInfo { node, addr, host, store_dir } });
                        self.routes.insert(node, conn);
                        if let (Some(_), Some(n)) = (&self.provider, self.head.cluster().node(node)) {
                            self.provider_calls.push(ProviderCall::Registered { node, labels: n.labels.clone() });
                        }
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
                        self.introduce_nodes_to(conn);
                        let program = self.jobs.get(&job).cloned().flatten();
                        self.record(&Entry::Program { job, program: program.clone() });
                        let conns: Vec<ConnId> = self.nodes.values().map(|n| n.conn).collect();
                        for c in conns {
                            self.send(c, FromHead::Job { job, program: program.clone() });
                        }
                    }
                    Welcome::Refused(e) => {
                        tracing::warn!(error = %e, "registration refused");
                        self.close(conn, "registration refused");
                    }
                }
            }
            // A node declared dead is still reachable while its connection lasts: that is how
            // it hears it must register again.
            HeadOutput::ToNode { node, msg } => {
                if let Some(&conn) = self.routes.get(&node) {
                    self.send(conn, FromHead::Node(msg));
                }
            }
            HeadOutput::ToDriver { job, msg } => {
                if let Some(&conn) = self.drivers.get(&job) {
                    self.send(conn, FromHead::Driver(msg));
                }
            }
            HeadOutput::NodeDead(node) => {
                if self.stopped.remove(&node) {
                    tracing::info!(%node, "a node the autoscaler stopped is gone");
                } else {
                    tracing::warn!(%node, "node declared dead");
                }
                self.nodes.remove(&node);
            }
            HeadOutput::NodeDrained(node) => tracing::info!(%node, "node drained"),
            HeadOutput::Launch { request, node_type, count } => self.launch(request, &node_type, count),
            HeadOutput::Terminate { node } => {
                if self.provider.is_none() {
                    tracing::warn!(%node, "the autoscaler would stop this idle node, but this head has no provider");
                    return;
                }
                let labels = self.head.cluster().node(node).map(|n| n.labels.clone()).unwrap_or_default();
                tracing::info!(%node, "the autoscaler stops this idle node");
                self.provider_calls.push(ProviderCall::Terminate { node, labels });
                self.stopped.insert(node);
            }
        }
    }

    /// Queues a launch for the provider.
    fn launch(&mut self, request: u64, node_type: &str, count: u32) {
        if self.provider.is_none() {
            tracing::warn!(request, node_type, count, "the autoscaler asked for nodes, but this head has no provider");
            return;
        }
        let config = self.head.config().autoscaler.as_ref().expect("only an autoscaler launches");
        let ty = config.node_types.iter().find(|t| t.name == node_type).expect("the autoscaler launches its own types");
        tracing::info!(request, node_type, count, "the autoscaler launches nodes");
        self.provider_calls.push(ProviderCall::Launch { request, node_type: ty.clone(), count });
    }

    /// A new node learns where every peer is and every job's program; the other nodes and the
    /// drivers learn where it is.
    fn introduce_node(&mut self, node: NodeId) {
        let Some(entry) = self.nodes.get(&node) else { return };
        let (conn, info) = (entry.conn, entry.info.clone());
        let mut frames = Vec::new();
        for (&other, e) in &self.nodes {
            if other != node {
                frames.push((conn, FromHead::Peer(e.info.clone())));
                frames.push((e.conn, FromHead::Peer(info.clone())));
            }
        }
        for &driver in self.drivers.values() {
            frames.push((driver, FromHead::Peer(info.clone())));
        }
        // Every running job, its driver connected or not: after a head restart a node may join
        // before the drivers are back, and their tasks need their programs.
        for (&job, program) in &self.jobs {
            frames.push((conn, FromHead::Job { job, program: program.clone() }));
        }
        for (conn, frame) in frames {
            self.send(conn, frame);
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
                        addr: entry.map(|e| e.info.addr.clone()).unwrap_or_default(),
                        host: entry.map(|e| e.info.host.clone()).unwrap_or_default(),
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
            retries: stats.retries,
            reconstructions: stats.reconstructions,
            uptime_s: self.start.elapsed().as_secs_f64(),
            connections: self.conns.values().filter(|c| !matches!(c.role, Role::Admin)).count() as u64,
            autoscaler: self.head.config().autoscaler.is_some().then(|| self.autoscaler_report()),
        }
    }

    fn autoscaler_report(&self) -> AutoscalerReport {
        let status = self.head.autoscaler_status();
        let now = self.now();
        AutoscalerReport {
            launching: status.launching,
            unmet: status.unmet,
            backing_off: status
                .backing_off
                .into_iter()
                .map(|(ty, until)| (ty, until.0.saturating_sub(now.0) as f64 / 1e9))
                .collect(),
            launches_failed: self.launches_failed,
            last_launch_failure: self.last_launch_failure.clone(),
        }
    }
}
