//! The connection's core: one task owns the link to the head (a driver's TCP connection, or a
//! worker's socket to its node) and the table of awaited objects. User threads talk to it through
//! a channel and wait on one-shot answers, so every call on [`super::Keel`] is a plain blocking
//! call that needs no async runtime of the user's.

use super::{Error, IdSpace, Inner, Keel, Result};
use keel_daemon::conn;
use keel_kernel::errors::{ErrorReason, InputError};
use keel_kernel::ids::{ActorId, NodeId, ObjectId, PlacementGroupId, TaskId};
use keel_kernel::proto::{DriverToHead, HeadToDriver, Hello, ObjectData, Welcome, PROTOCOL_VERSION};
use keel_kernel::slab::SlabMap;
use keel_net::wire::{FromHead, PeerFrame, PeerInfo, Register, ToHead, WorkerProgram};
use keel_net::{Token, DEFAULT_MAX_FRAME};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// What became of an awaited object.
#[derive(Clone, Debug)]
pub(crate) enum Resolution {
    Ready(ObjectData),
    Failed(ErrorReason),
    /// The head refused to tell (it does not know the object).
    Refused(String),
}

pub(crate) enum Incoming {
    Msg(HeadToDriver),
    Peer(PeerInfo),
    /// The link to the head broke and was made again (the head may have restarted).
    Reconnected,
    Lost(String),
}

enum Cmd {
    Send(DriverToHead),
    /// Answer each object into its slot (one message to the head for all). The slots are made by
    /// the caller: should the command never be carried out, dropping them answers the waiter.
    Subscribe {
        objects: Vec<(ObjectId, Slot)>,
    },
    Forget(ObjectId),
    Invalidate(ObjectId),
    Finish(oneshot::Sender<()>),
    /// Run this once everything sent before has been handed to the link.
    Then(Box<dyn FnOnce() + Send>),
    Named {
        namespace: String,
        name: String,
        reply: oneshot::Sender<Option<ActorId>>,
    },
    Group {
        pg: PlacementGroupId,
        reply: oneshot::Sender<GroupOutcome>,
    },
}

/// What became of a placement group: the node of each bundle, or why it failed.
pub(crate) type GroupOutcome = std::result::Result<Vec<NodeId>, ErrorReason>;

/// Tells the node whether the task is blocked waiting for objects (worker mode only).
/// Tells the node that the task waits (true) or runs again (false); called on the core, after
/// everything the task sent before, so that it never overtakes the end of the task before it.
pub(crate) type BlockHook = Arc<dyn Fn(bool) + Send + Sync>;

/// How long a task may wait before it counts as blocked (and lends its CPUs): what the core knows
/// already comes back within microseconds, and a report and its undoing cost more than that.
const WAIT_GRACE: std::time::Duration = std::time::Duration::from_micros(200);

/// How long a thread about to sleep for an answer from another thread first keeps its CPU,
/// yielding it to whoever else runs there: an answer that comes within this reaches it without a
/// wake-up, which on an idle CPU (halted, in a virtual machine) costs tens of microseconds.
pub(crate) use keel_net::SPIN;

/// How long a wait until `deadline` spins before it sleeps: [`SPIN`], never past the deadline.
fn spin_limit(deadline: Option<std::time::Instant>, now: std::time::Instant) -> std::time::Duration {
    deadline.map_or(SPIN, |d| SPIN.min(d.saturating_duration_since(now)))
}

/// Yields the CPU in a loop until `ready` or `limit` passes; returns `ready()`.
pub(crate) fn spin_until(limit: std::time::Duration, ready: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

/// The answers for a batch of awaited objects: the core fills one slot per object, and one user
/// thread sleeps until enough are filled. One wake-up for a whole batch, however large.
pub(crate) struct Gather {
    state: Mutex<Gathered>,
    filled: std::sync::Condvar,
    /// Set with the wake-up: a waiter spinning before it sleeps looks here, not at the lock the
    /// core answers under.
    woken: std::sync::atomic::AtomicBool,
}

struct Gathered {
    answers: Vec<Option<Result<Resolution, String>>>,
    filled: usize,
    /// How many answers the waiter needs before it is woken.
    need: usize,
    /// Wake the waiter at the first answer that is not a value.
    stop_at_failure: bool,
    failed: bool,
}

impl Gather {
    fn new(len: usize, need: usize, stop_at_failure: bool) -> Arc<Gather> {
        let state =
            Gathered { answers: vec![None; len], filled: 0, need: need.min(len), stop_at_failure, failed: false };
        let woken = std::sync::atomic::AtomicBool::new(state.need == 0);
        Arc::new(Gather { state: Mutex::new(state), filled: std::sync::Condvar::new(), woken })
    }

    fn answer(&self, index: usize, answer: Result<Resolution, String>) {
        let mut s = self.state.lock().expect("gather");
        // After [`Gather::take`] (a wait that timed out) late answers have nowhere to go.
        if let Some(slot @ None) = s.answers.get_mut(index) {
            let failure = !matches!(answer, Ok(Resolution::Ready(_)));
            *slot = Some(answer);
            s.filled += 1;
            if s.filled == s.need || (failure && s.stop_at_failure && !s.failed) {
                s.failed |= failure;
                self.woken.store(true, std::sync::atomic::Ordering::Release);
                self.filled.notify_all();
            }
        }
    }

    fn done(&self) -> bool {
        let s = self.state.lock().expect("gather");
        s.filled >= s.need || (s.stop_at_failure && s.failed)
    }

    /// Sleeps until enough answers are in or `deadline` passes; with `spin`, first yields the CPU
    /// in a loop for up to [`SPIN`] (never past the deadline).
    fn sleep(&self, deadline: Option<std::time::Instant>, spin: bool) {
        if spin {
            #[cfg(test)]
            tests::SPINS.with(|n| n.set(n.get() + 1));
            let limit = spin_limit(deadline, std::time::Instant::now());
            let _waiting = keel_net::hot::Waiting::start();
            spin_until(limit, || self.woken.load(std::sync::atomic::Ordering::Acquire));
        }
        let mut s = self.state.lock().expect("gather");
        while s.filled < s.need && !(s.stop_at_failure && s.failed) {
            s = match deadline {
                None => self.filled.wait(s).expect("gather"),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.filled.wait_timeout(s, left).expect("gather").0
                }
            };
        }
    }

    /// The answers so far, one per object in order (`None`: not yet answered).
    pub fn take(&self) -> Vec<Option<Result<Resolution, String>>> {
        std::mem::take(&mut self.state.lock().expect("gather").answers)
    }
}

/// One object's slot in a [`Gather`]. A slot dropped unanswered (the core ended) is answered
/// with the connection's loss, so that no waiter sleeps forever.
pub(crate) struct Slot {
    gather: Arc<Gather>,
    index: usize,
    answered: bool,
}

impl Slot {
    fn answer(mut self, answer: Result<Resolution, String>) {
        self.answered = true;
        self.gather.answer(self.index, answer);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.answered {
            self.gather.answer(self.index, Err("the connection to the cluster is closed".into()));
        }
    }
}

/// What user threads share with the core.
pub(crate) struct Shared {
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Commands sent to the core, and those it has carried out (see [`Shared::quiet`]).
    counts: Arc<CmdCounts>,
    handle: tokio::runtime::Handle,
    peers: Arc<Mutex<BTreeMap<NodeId, PeerInfo>>>,
    token: Token,
    on_block: std::sync::OnceLock<BlockHook>,
    /// Threads of the task waiting now (a task may wait from several threads).
    waiting: std::sync::atomic::AtomicUsize,
    /// Nanoseconds the running task has spent in waits that timed out unreported (a polling
    /// loop): they come out of the grace of its next waits.
    unreported_wait: std::sync::atomic::AtomicU64,
    /// Where values known to be in a store lie (this process's own puts, and values the head
    /// named): a wait for one of them asks neither the core nor the head.
    located: Located,
}

/// How many commands user threads sent the core, and how many it carried out.
#[derive(Default)]
struct CmdCounts {
    sent: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

/// Objects in a store, and their holders, as far as this process knows.
type Located = Arc<Mutex<FxHashMap<ObjectId, Vec<NodeId>>>>;

/// While it lives, the task counts as blocked (see [`Shared::blocked`]).
pub(crate) struct Blocked<'a>(&'a Shared);

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            if let Some(hook) = self.0.on_block.get().cloned() {
                self.0.then(move || hook(false));
            }
        }
    }
}

/// A value's bytes: owned, or mapped from a store on this machine.
pub(crate) enum Bytes {
    Owned(Vec<u8>),
    Mapped(keel_shm::View),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

fn lost() -> Error {
    Error::Connection("the connection to the cluster is closed".into())
}

impl Shared {
    /// Starts the core on `handle`: `incoming` brings what the head says, `out` sends to it.
    pub fn start(
        handle: tokio::runtime::Handle,
        incoming: mpsc::UnboundedReceiver<Incoming>,
        out: Box<dyn Fn(DriverToHead) -> bool + Send>,
        token: Token,
    ) -> Arc<Shared> {
        let (cmds, rx) = mpsc::unbounded_channel();
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let located = Located::default();
        let counts = Arc::new(CmdCounts::default());
        handle.spawn(run(rx, incoming, out, peers.clone(), located.clone(), counts.clone()));
        Arc::new(Shared {
            cmds,
            counts,
            handle,
            peers,
            token,
            on_block: std::sync::OnceLock::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            unreported_wait: std::sync::atomic::AtomicU64::new(0),
            located,
        })
    }

    /// This process put `object` into `node`'s store.
    pub fn note_located(&self, object: ObjectId, node: NodeId) {
        if let Ok(mut located) = self.located.lock() {
            located.insert(object, vec![node]);
        }
    }

    /// In a worker: how to tell the node that the task is blocked waiting, or runs again. The
    /// head lends a blocked task's CPUs to other tasks, so that a task waiting for children it
    /// submitted cannot starve them of CPUs.
    pub fn set_block_hook(&self, hook: BlockHook) {
        let _ = self.on_block.set(hook);
    }

    /// Marks the task blocked until the guard drops (the first waiting thread tells the node,
    /// the last one to stop waiting tells it again).
    pub fn blocked(&self) -> Blocked<'_> {
        if self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            if let Some(hook) = self.on_block.get().cloned() {
                self.then(move || hook(true));
            }
        }
        Blocked(self)
    }

    /// Hands `cmd` to the core (counted: see [`Shared::quiet`]).
    fn command(&self, cmd: Cmd) -> std::result::Result<(), mpsc::error::SendError<Cmd>> {
        self.counts.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cmds.send(cmd)
    }

    /// Whether the core has carried out every command sent to it so far (what they send is on
    /// its way out): then something sent straight to the link now goes after all of it.
    pub fn quiet(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.counts.done.load(SeqCst) == self.counts.sent.load(SeqCst)
    }

    pub fn send(&self, msg: DriverToHead) -> Result<()> {
        self.command(Cmd::Send(msg)).map_err(|_| lost())
    }

    /// Asks to be told what becomes of each of `objects`; the answers gather in the result, and
    /// [`Shared::wait_gathered`] waits until `need` of them are in, or with `stop_at_failure`
    /// until one is not a value.
    pub fn subscribe(&self, objects: Vec<ObjectId>, need: usize, stop_at_failure: bool) -> Result<Arc<Gather>> {
        let gather = Gather::new(objects.len(), need, stop_at_failure);
        let objects = objects
            .into_iter()
            .enumerate()
            .map(|(index, object)| (object, Slot { gather: gather.clone(), index, answered: false }))
            .collect();
        self.command(Cmd::Subscribe { objects }).map_err(|_| lost())?;
        Ok(gather)
    }

    /// Waits (a blocking call; not from inside an async task) until `gather` has the answers it
    /// needs, or `deadline` passes. Only a real wait counts as blocked (and lends the task's
    /// CPUs, in a worker, to a successor handed over behind the task first): the first
    /// `WAIT_GRACE` of sleep, counted over the task's waits that timed out, is not reported.
    pub fn wait_gathered(&self, gather: &Gather, deadline: Option<std::time::Instant>) {
        use std::sync::atomic::Ordering::Relaxed;
        if gather.done() {
            return;
        }
        // Nobody hears of this process's waits (a driver's): no grace to count, a spin first.
        if self.on_block.get().is_none() {
            gather.sleep(deadline, true);
            return;
        }
        // The grace is the task's, not each wait's: a loop of short waits that time out is a
        // wait like any other once their sum passes it.
        let spent = std::time::Duration::from_nanos(self.unreported_wait.load(Relaxed));
        let start = std::time::Instant::now();
        let grace = start + WAIT_GRACE.saturating_sub(spent);
        // Spinning first: an answer the core has, or the head sends at once, comes within it.
        gather.sleep(Some(deadline.map_or(grace, |d| d.min(grace))), grace > start);
        if gather.done() {
            return;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            let waited = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.unreported_wait.fetch_add(waited, Relaxed);
            return;
        }
        let _blocked = self.blocked();
        gather.sleep(deadline, false);
    }

    /// A new task starts in this process: its waits have their whole grace again.
    pub fn new_attempt(&self) {
        self.unreported_wait.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for `object` (a blocking call; not from inside an async task).
    pub fn resolve(&self, object: ObjectId) -> Result<Resolution> {
        if let Some(nodes) = self.located.lock().ok().and_then(|l| l.get(&object).cloned()) {
            return Ok(Resolution::Ready(ObjectData::At(nodes)));
        }
        let gather = self.subscribe(vec![object], 1, false)?;
        self.wait_gathered(&gather, None);
        match gather.take().pop().flatten() {
            Some(Ok(r)) => Ok(r),
            Some(Err(why)) => Err(Error::Connection(why)),
            None => Err(lost()),
        }
    }

    /// Runs `f` on the core once everything sent before has been handed to the link (without
    /// waiting for it).
    pub fn then(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.command(Cmd::Then(Box::new(f)));
    }

    /// Asks the head for the actor named `name`.
    pub fn named_actor(&self, namespace: &str, name: &str) -> Result<Option<ActorId>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Named { namespace: namespace.to_string(), name: name.to_string(), reply };
        self.command(cmd).map_err(|_| lost())?;
        rx.blocking_recv().map_err(|_| lost())
    }

    /// Prepares to hear what becomes of placement group `pg` (call before creating it).
    pub fn await_group(&self, pg: PlacementGroupId) -> Result<oneshot::Receiver<GroupOutcome>> {
        let (reply, rx) = oneshot::channel();
        self.command(Cmd::Group { pg, reply }).map_err(|_| lost())?;
        Ok(rx)
    }

    /// Runs `fut` to its end on the core's runtime from a user's thread. A thread of its own
    /// does the waiting, so that this works even when the caller is inside some async runtime.
    fn block<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| s.spawn(|| self.handle.block_on(fut)).join().expect("the waiting thread panicked"))
    }

    /// Waits for `rx` at most `timeout`; `None` when the time ran out.
    pub fn block_for<T: Send>(&self, rx: oneshot::Receiver<T>, timeout: std::time::Duration) -> Result<Option<T>> {
        // The timer is made inside the runtime: a tokio timer needs one when it is created.
        let waited = self.block(async move { tokio::time::timeout(timeout, rx).await });
        waited.map_or(Ok(None), |r| r.map(Some).map_err(|_| lost()))
    }

    /// Forgets what the head said of `object`, so that the next wait asks it again.
    pub fn invalidate(&self, object: ObjectId) {
        unlocate(&self.located, object);
        let _ = self.command(Cmd::Invalidate(object));
    }

    pub fn forget(&self, object: ObjectId) {
        unlocate(&self.located, object);
        let _ = self.command(Cmd::Forget(object));
    }

    pub fn add_peer(&self, info: PeerInfo) {
        if let Ok(mut p) = self.peers.lock() {
            p.insert(info.node, info);
        }
    }

    /// Ends the job and waits (briefly) until the message has left.
    pub fn finish(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Cmd::Finish(tx)).is_ok() {
            let _ = self.block_for(rx, std::time::Duration::from_millis(500));
        }
    }

    /// Stores a driver's large put on a node and returns the node's id: `fill` writes its `size`
    /// bytes straight into the store of a node on this machine, which adopts it (no copy through
    /// a socket), else into a buffer uploaded to a node's data port. Nodes are tried in turn,
    /// starting at one chosen by the object's id so that puts spread over the nodes.
    pub fn store(
        &self,
        object: ObjectId,
        size: usize,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
        host: &str,
    ) -> Result<NodeId> {
        let mut peers: Vec<PeerInfo> = Vec::new();
        // Just after connecting, the head may not have introduced the nodes yet.
        for _ in 0..500 {
            peers = self.peers.lock().map_err(|_| lost())?.values().cloned().collect();
            if !peers.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if peers.is_empty() {
            return Err(Error::Unstored { object, detail: "no node is known".into() });
        }
        let start = (object.index as usize).wrapping_add(object.task.0 as usize) % peers.len();
        peers.rotate_left(start);
        // Nodes on this machine first.
        peers.sort_by_key(|p| p.host != host);
        let mut problems = Vec::new();
        let mut buffer: Option<Vec<u8>> = None;
        for p in &peers {
            let stored = if p.host == host && Path::new(&p.store_dir).is_dir() {
                match keel_shm::write_sealed_with(Path::new(&p.store_dir), object, size as u64, &mut *fill) {
                    Ok(()) => {
                        let adopted =
                            self.block(keel_daemon::client::adopt_put(&p.addr, &self.token, object, size as u64));
                        if adopted.is_err() {
                            // Not the node's: it would never delete it.
                            let _ = std::fs::remove_file(keel_shm::path_of(Path::new(&p.store_dir), object));
                        }
                        adopted
                    }
                    Err(e) => {
                        problems.push(format!("{}: {e}", p.node));
                        continue;
                    }
                }
            } else {
                if buffer.is_none() {
                    let mut b = Vec::with_capacity(size);
                    fill(&mut b).map_err(|e| Error::Setup(format!("cannot serialise the value: {e}")))?;
                    buffer = Some(b);
                }
                let bytes = buffer.as_deref().expect("filled");
                self.block(keel_daemon::client::upload_put(&p.addr, &self.token, object, bytes))
            };
            match stored {
                Ok(node) => return Ok(node),
                Err(e) => problems.push(format!("{} at {}: {e}", p.node, p.addr)),
            }
        }
        Err(Error::Unstored { object, detail: problems.join("; ") })
    }

    /// Reads a value held by `nodes`: mapped from the store when a holder is on this machine,
    /// fetched over a holder's data port otherwise.
    pub fn read(&self, object: ObjectId, nodes: &[NodeId], host: &str) -> Result<Bytes> {
        let peers: Vec<PeerInfo> = {
            let p = self.peers.lock().map_err(|_| lost())?;
            nodes.iter().filter_map(|n| p.get(n).cloned()).collect()
        };
        let mut problems = Vec::new();
        for p in peers.iter().filter(|p| p.host == host) {
            match keel_shm::map(Path::new(&p.store_dir), object) {
                Ok(view) => return Ok(Bytes::Mapped(view)),
                Err(e) => problems.push(format!("{}: {e}", p.node)),
            }
        }
        for p in &peers {
            let fetched = self.block(fetch(&p.addr, &self.token, object));
            match fetched {
                Ok(bytes) => return Ok(Bytes::Owned(bytes)),
                Err(e) => problems.push(format!("{} at {}: {e}", p.node, p.addr)),
            }
        }
        if peers.is_empty() {
            problems.push(format!("no address known for {nodes:?}"));
        }
        Err(Error::Unreadable { object, detail: problems.join("; ") })
    }
}

/// Fetches an object's bytes from a node's data port.
async fn fetch(addr: &str, token: &Token, object: ObjectId) -> Result<Vec<u8>, String> {
    let (mut r, mut w) = conn::dial(addr, token, DEFAULT_MAX_FRAME).await.map_err(|e| e.to_string())?;
    w.send(&PeerFrame::Fetch { object }).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    loop {
        match r.recv::<PeerFrame>("object chunk").await.map_err(|e| e.to_string())? {
            PeerFrame::Chunk { object: o, total, offset, data, last } if o == object => {
                if offset != bytes.len() as u64 {
                    return Err(format!("chunk at {offset} after {} bytes", bytes.len()));
                }
                if bytes.is_empty() {
                    // The size is the peer's word: reserve up front only within reason.
                    bytes.reserve(total.min(64 << 20) as usize);
                }
                bytes.extend_from_slice(&data);
                if last {
                    return Ok(bytes);
                }
            }
            PeerFrame::Abort { .. } => return Err("the node no longer holds it".into()),
            other => return Err(format!("unexpected frame {other:?}")),
        }
    }
}

#[derive(Default)]
struct Awaited {
    resolution: Option<Resolution>,
    waiters: Vec<Slot>,
    subscribed: bool,
}

async fn run(
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    out: Box<dyn Fn(DriverToHead) -> bool + Send>,
    peers: Arc<Mutex<BTreeMap<NodeId, PeerInfo>>>,
    located: Located,
    counts: Arc<CmdCounts>,
) {
    let mut objects: SlabMap<ObjectId, Awaited> = SlabMap::new();
    // Submissions and puts whose value is still wanted, in the order they were sent: after a
    // reconnection they are sent again (the head refuses what it already has), in case the head
    // lost them with the batch it had not yet made durable.
    let mut resend: Vec<(ObjectId, DriverToHead)> = Vec::new();
    // The keys of `resend` still wanted (entries of others are dropped lazily).
    let mut wanted: FxHashSet<ObjectId> = FxHashSet::default();
    let mut named: HashMap<(String, String), Vec<oneshot::Sender<Option<ActorId>>>> = HashMap::new();
    let mut groups: HashMap<PlacementGroupId, oneshot::Sender<GroupOutcome>> = HashMap::new();
    let mut gone: Option<String> = None;
    loop {
        // While this process's program waits for an answer, kept hot for `SPIN` after each
        // command or message: its next call, or the answer to its last (read by this runtime's
        // other tasks as it polls its sockets between turns), mostly comes within it, and then
        // finds this thread running rather than asleep, which costs tens of microseconds to wake.
        keel_net::stay_hot(|| !cmds.is_empty() || (gone.is_none() && !incoming.is_empty())).await;
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Cmd::Send(msg) => {
                        let key = match &msg {
                            DriverToHead::SubmitTask(spec) => spec.return_ids().next(),
                            DriverToHead::CreateActor { creation, .. } => creation.return_ids().next(),
                            DriverToHead::Put { object, .. } => Some(*object),
                            _ => None,
                        };
                        // This process made the put: it knows the value without asking the
                        // head (should its holder be lost, the read fails and the head is asked).
                        if let DriverToHead::Put { object, inline, node, .. } = &msg {
                            let data = match (inline, node) {
                                (Some(bytes), _) => Some(ObjectData::Inline(bytes.clone())),
                                (None, Some(node)) => Some(ObjectData::At(vec![*node])),
                                (None, None) => None,
                            };
                            if let Some(data) = data {
                                objects.get_or_insert_with(*object, Awaited::default).resolution = Some(Resolution::Ready(data));
                            }
                        }
                        if let Some(key) = key {
                            wanted.insert(key);
                            resend.push((key, msg.clone()));
                            if resend.len() > 2 * wanted.len() + 64 {
                                resend.retain(|(k, _)| wanted.contains(k));
                            }
                        }
                        out(msg);
                    }
                    Cmd::Subscribe { objects: wanted_now } => {
                        let mut ask = Vec::new();
                        for (object, slot) in wanted_now {
                            let entry = objects.get_or_insert_with(object, Awaited::default);
                            if let Some(r) = &entry.resolution {
                                slot.answer(Ok(r.clone()));
                            } else if let Some(why) = &gone {
                                slot.answer(Err(why.clone()));
                            } else {
                                entry.waiters.push(slot);
                                if !entry.subscribed {
                                    entry.subscribed = true;
                                    ask.push(object);
                                }
                            }
                        }
                        if !ask.is_empty() {
                            out(DriverToHead::Subscribe(ask));
                        }
                    }
                    Cmd::Forget(object) => {
                        // Also here: the head may have named its holders since the caller forgot it.
                        unlocate(&located, object);
                        objects.remove(&object);
                        wanted.remove(&object);
                    }
                    Cmd::Invalidate(object) => {
                        unlocate(&located, object);
                        if let Some(a) = objects.get_mut(&object) {
                            a.resolution = None;
                            a.subscribed = false;
                        }
                    }
                    Cmd::Finish(done) => {
                        out(DriverToHead::FinishJob);
                        let _ = done.send(());
                    }
                    Cmd::Then(f) => f(),
                    Cmd::Named { namespace, name, reply } => {
                        let waiting = named.entry((namespace.clone(), name.clone())).or_default();
                        waiting.push(reply);
                        if waiting.len() == 1 {
                            out(DriverToHead::GetNamedActor { namespace, name });
                        }
                    }
                    Cmd::Group { pg, reply } => {
                        groups.insert(pg, reply);
                    }
                }
                counts.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            msg = incoming.recv(), if gone.is_none() => {
                let msg = msg.unwrap_or_else(|| Incoming::Lost("the connection to the cluster closed".into()));
                match msg {
                    Incoming::Msg(HeadToDriver::ObjectReady { object, data, .. }) => {
                        wanted.remove(&object);
                        if let (ObjectData::At(nodes), Some(_), Ok(mut l)) = (&data, objects.get(&object), located.lock()) {
                            l.insert(object, nodes.clone());
                        }
                        resolve(&mut objects, object, Resolution::Ready(data));
                    }
                    Incoming::Msg(HeadToDriver::ObjectFailed { object, reason }) => {
                        wanted.remove(&object);
                        resolve(&mut objects, object, Resolution::Failed(reason));
                    }
                    // Sent again after a reconnection, and the head had it: nothing is wrong.
                    Incoming::Msg(HeadToDriver::Rejected {
                        error: InputError::DuplicateTask(_) | InputError::DuplicateObject(_),
                    }) => {}
                    Incoming::Reconnected => {
                        resend.retain(|(k, _)| wanted.contains(k));
                        for (_, msg) in &resend {
                            out(msg.clone());
                        }
                        let mut waited: Vec<ObjectId> =
                            objects.iter_unordered().filter(|(_, a)| a.resolution.is_none() && a.subscribed).map(|(o, _)| *o).collect();
                        waited.sort_unstable();
                        if !waited.is_empty() {
                            out(DriverToHead::Subscribe(waited));
                        }
                    }
                    Incoming::Msg(HeadToDriver::Rejected { error }) => {
                        // A refused subscription ends the wait for that object.
                        if let InputError::UnknownObject(object) = &error {
                            if objects.get(object).is_some_and(|a| !a.waiters.is_empty()) {
                                let r = Resolution::Refused(error.to_string());
                                resolve(&mut objects, *object, r);
                                continue;
                            }
                        }
                        tracing::warn!(%error, "the head refused a request");
                    }
                    Incoming::Msg(HeadToDriver::NamedActor { namespace, name, actor }) => {
                        for w in named.remove(&(namespace, name)).unwrap_or_default() {
                            let _ = w.send(actor);
                        }
                    }
                    Incoming::Msg(HeadToDriver::PlacementGroupReady { pg, nodes }) => {
                        if let Some(w) = groups.remove(&pg) {
                            let _ = w.send(Ok(nodes));
                        }
                    }
                    Incoming::Msg(HeadToDriver::PlacementGroupFailed { pg, reason }) => {
                        if let Some(w) = groups.remove(&pg) {
                            let _ = w.send(Err(reason));
                        }
                    }
                    Incoming::Msg(_) => {}
                    Incoming::Peer(info) => {
                        if let Ok(mut p) = peers.lock() {
                            p.insert(info.node, info);
                        }
                    }
                    Incoming::Lost(why) => {
                        for (_, a) in objects.iter_mut_unordered() {
                            for w in a.waiters.drain(..) {
                                w.answer(Err(why.clone()));
                            }
                        }
                        named.clear();
                        groups.clear();
                        gone = Some(why);
                    }
                }
            }
        }
    }
}

fn unlocate(located: &Located, object: ObjectId) {
    if let Ok(mut located) = located.lock() {
        located.remove(&object);
    }
}

fn resolve(objects: &mut SlabMap<ObjectId, Awaited>, object: ObjectId, r: Resolution) {
    if let Some(a) = objects.get_mut(&object) {
        for w in a.waiters.drain(..) {
            w.answer(Ok(r.clone()));
        }
        a.resolution = Some(r);
    }
}

type HeadReader = keel_net::FrameReader<keel_net::transport::TcpRead>;
type HeadWriter = keel_net::FrameWriter<keel_net::transport::TcpWrite>;

/// Where the head's messages come from: a connection, or the head itself when it runs in this
/// process (the embedded default), which hands them over typed.
enum FromHeadLink {
    Socket(HeadReader),
    Local(mpsc::UnboundedReceiver<keel_daemon::conn::Outbound<FromHead>>),
}

impl FromHeadLink {
    /// The head's next message; Err (why) once the link is gone.
    async fn recv(&mut self) -> std::result::Result<FromHead, String> {
        match self {
            FromHeadLink::Socket(r) => r.recv::<FromHead>("message from the head").await.map_err(|e| e.to_string()),
            FromHeadLink::Local(rx) => match rx.recv().await {
                Some(keel_daemon::conn::Outbound::Frame(msg)) => Ok(msg),
                _ => Err("the head closed the link".into()),
            },
        }
    }
}

/// Where the driver's messages go: a connection's writer, or the head's own queue.
enum ToHeadLink {
    Socket(HeadWriter),
    Local(keel_daemon::head::HeadSender),
}

impl ToHeadLink {
    /// Queues `frame` (a connection's writer sends it at the next flush); false once the link broke.
    async fn feed(&mut self, frame: ToHead) -> bool {
        match self {
            ToHeadLink::Socket(w) => w.feed(&frame).await.is_ok(),
            ToHeadLink::Local(to_head) => to_head.send(frame),
        }
    }

    async fn flush(&mut self) {
        if let ToHeadLink::Socket(w) = self {
            let _ = w.flush().await;
        }
    }
}

enum Registration {
    Refused(String),
    Failed(String),
}

/// Dials the head and registers a driver (a new job, or `resume` an existing one). A head of this
/// process is reached directly.
async fn register_driver(
    addr: &str,
    token: &Token,
    hello: Hello,
    program: Option<WorkerProgram>,
    resume: Option<keel_kernel::JobId>,
) -> Result<(FromHeadLink, ToHeadLink, keel_kernel::JobId), Registration> {
    let register = Register::Driver { hello, program, resume };
    let (mut reader, writer) = match keel_daemon::head::connect_local(addr, token, || register.clone()) {
        Some(link) => (FromHeadLink::Local(link.from_head), ToHeadLink::Local(link.to_head)),
        None => {
            let failed = |e: keel_net::NetError| Registration::Failed(e.to_string());
            let (mut reader, mut writer) = conn::dial(addr, token, DEFAULT_MAX_FRAME).await.map_err(failed)?;
            writer.send(&register).await.map_err(failed)?;
            // The head sends keepalives to drivers: silence means it is gone, and we reconnect.
            reader.set_silence_limit(Some(keel_daemon::node::DEFAULT_HEAD_SILENCE));
            (FromHeadLink::Socket(reader), ToHeadLink::Socket(writer))
        }
    };
    match reader.recv().await.map_err(Registration::Failed)? {
        FromHead::Welcome(Welcome::JobRegistered(job)) => Ok((reader, writer, job)),
        FromHead::Welcome(Welcome::Refused(e)) => Err(Registration::Refused(e.to_string())),
        other => Err(Registration::Failed(format!("unexpected answer {other:?}"))),
    }
}

/// What the forwarder writes: frames, and the connection to write them to from then on. Both
/// travel on one queue, so that every frame sent after a reconnection goes to the new connection.
enum Link {
    Frame(ToHead),
    Writer(ToHeadLink),
}

/// Writes the driver's frames to the current connection; frames written to a connection that
/// broke are lost (the core sends what matters again after the reconnection).
async fn forward(mut links: mpsc::UnboundedReceiver<Link>, mut writer: ToHeadLink) {
    while let Some(first) = links.recv().await {
        let mut next = Some(first);
        let mut ok = true;
        while let Some(item) = next.take() {
            match item {
                Link::Frame(frame) => {
                    if ok {
                        ok = writer.feed(frame).await;
                    }
                }
                Link::Writer(w) => {
                    writer.flush().await;
                    writer = w;
                    ok = true;
                }
            }
            next = links.try_recv().ok();
        }
        writer.flush().await;
    }
}

/// What the job's tasks print, written to the driver's own output a whole line at a time, so
/// that tasks printing at once (a line may reach the driver in several pieces) do not cut into
/// each other's lines. An unfinished line is written as it is once it has waited
/// [`OutputLines::PATIENCE`], grown past [`OutputLines::MAX_HELD`], or its task's result arrives
/// (a task's output comes before its end), and when the driver's link ends or the driver stops.
#[derive(Default)]
struct OutputLines {
    /// The unfinished line of each task attempt's stream, and since when it waits.
    partial: BTreeMap<(keel_kernel::TaskId, u32, bool), (Vec<u8>, tokio::time::Instant)>,
}

impl OutputLines {
    /// How long an unfinished line waits for its end.
    const PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);
    /// The longest unfinished line held.
    const MAX_HELD: usize = 64 << 10;

    /// When the oldest unfinished line is due.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.partial.values().map(|(_, since)| *since + Self::PATIENCE).min()
    }

    /// Takes a piece of output; returns what is ready to be written (and whether for stderr):
    /// the whole lines it completes, or everything held once that grew too long.
    fn lines(&mut self, chunk: keel_net::wire::OutputChunk, now: tokio::time::Instant) -> Option<(bool, Vec<u8>)> {
        let stderr = chunk.stream == keel_net::wire::Stream::Stderr;
        let key = (chunk.task, chunk.attempt, stderr);
        let (held, _) = self.partial.entry(key).or_insert_with(|| (Vec::new(), now));
        let before = held.len();
        held.extend_from_slice(&chunk.data);
        let ready = match chunk.data.iter().rposition(|b| *b == b'\n') {
            _ if held.len() > Self::MAX_HELD => std::mem::take(held),
            Some(end) => {
                let rest = held.split_off(before + end + 1);
                std::mem::replace(held, rest)
            }
            None => return None,
        };
        if held.is_empty() {
            self.partial.remove(&key);
        } else if let Some(entry) = self.partial.get_mut(&key) {
            // What is left is a new unfinished line.
            entry.1 = now;
        }
        Some((stderr, ready))
    }

    /// The unfinished lines of `task` (all tasks when None) due by `now` (all when None), in the
    /// order of their keys.
    fn unfinished(
        &mut self,
        task: Option<keel_kernel::TaskId>,
        now: Option<tokio::time::Instant>,
    ) -> Vec<(bool, Vec<u8>)> {
        let due: Vec<_> = self
            .partial
            .iter()
            .filter(|((t, _, _), (_, since))| {
                task.is_none_or(|task| *t == task) && now.is_none_or(|now| *since + Self::PATIENCE <= now)
            })
            .map(|(key, _)| *key)
            .collect();
        due.into_iter().filter_map(|key| self.partial.remove(&key).map(|(bytes, _)| (key.2, bytes))).collect()
    }

    fn take(&mut self, chunk: keel_net::wire::OutputChunk) {
        if let Some((stderr, lines)) = self.lines(chunk, tokio::time::Instant::now()) {
            Self::write(stderr, &lines);
        }
    }

    /// Writes the unfinished lines of `task` (of all tasks when None) due by `now` (all when None).
    fn flush(&mut self, task: Option<keel_kernel::TaskId>, now: Option<tokio::time::Instant>) {
        for (stderr, bytes) in self.unfinished(task, now) {
            Self::write(stderr, &bytes);
        }
    }

    fn write(stderr: bool, bytes: &[u8]) {
        use std::io::Write;
        let _ = if stderr {
            std::io::stderr().write_all(bytes)
        } else {
            // Standard output is buffered by lines: an unfinished one must not wait there.
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        };
    }
}

impl Drop for OutputLines {
    /// The driver stops, or its link is gone for good: what is held is written.
    fn drop(&mut self) {
        self.flush(None, None);
    }
}

/// Reads the head's frames; when the connection breaks (the head restarted, say), reconnects and
/// resumes the job for up to [`keel_daemon::client::RECONNECT_FOR`].
async fn read_head(
    mut reader: FromHeadLink,
    incoming: mpsc::UnboundedSender<Incoming>,
    links: mpsc::UnboundedSender<Link>,
    addr: String,
    token: Token,
    hello: Hello,
    job: keel_kernel::JobId,
) {
    let mut output = OutputLines::default();
    loop {
        // A line a task left unfinished is written once it has waited long enough.
        let next = match output.due() {
            Some(due) => tokio::select! {
                next = reader.recv() => next,
                _ = tokio::time::sleep_until(due) => {
                    output.flush(None, Some(tokio::time::Instant::now()));
                    continue;
                }
            },
            None => reader.recv().await,
        };
        let lost = match next {
            Ok(FromHead::Driver(m)) => {
                // A task's output comes before its end: what it left unfinished goes before its result.
                if let HeadToDriver::ObjectReady { object, .. } | HeadToDriver::ObjectFailed { object, .. } = &m {
                    output.flush(Some(object.task), None);
                }
                if incoming.send(Incoming::Msg(m)).is_err() {
                    return;
                }
                continue;
            }
            Ok(FromHead::Peer(info)) => {
                let _ = incoming.send(Incoming::Peer(info));
                continue;
            }
            Ok(FromHead::Stopping) => {
                output.flush(None, None);
                let _ = incoming.send(Incoming::Lost("the cluster is stopping".into()));
                return;
            }
            // What the job's tasks print appears in the driver's own output, as it comes.
            Ok(FromHead::Output(chunk)) => {
                output.take(chunk);
                continue;
            }
            Ok(_) => continue,
            Err(e) => e,
        };
        output.flush(None, None);
        tracing::warn!(error = %lost, "lost the head; reconnecting");
        let deadline = tokio::time::Instant::now() + keel_daemon::client::RECONNECT_FOR;
        let mut backoff = keel_net::backoff::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(2),
            job.0,
        );
        loop {
            if incoming.is_closed() {
                return;
            }
            match register_driver(&addr, &token, hello.clone(), None, Some(job)).await {
                Ok((r, w, _)) => {
                    reader = r;
                    // The new connection first, then the news: what the core sends again goes to it.
                    let _ = links.send(Link::Writer(w));
                    let _ = incoming.send(Incoming::Reconnected);
                    break;
                }
                Err(Registration::Failed(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(Registration::Refused(why) | Registration::Failed(why)) => {
                    let _ = incoming.send(Incoming::Lost(format!("{lost}; then {why}")));
                    return;
                }
            }
        }
    }
}

/// Connects a driver: to `KEEL_ADDRESS`, or to a local cluster started in this process.
pub(crate) fn connect_driver() -> Result<Keel> {
    keel_shm::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keel")
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(format!("cannot start the runtime: {e}")))?;
    let (addr, token, embedded) = match std::env::var("KEEL_ADDRESS") {
        Ok(addr) => {
            let file = std::env::var_os("KEEL_TOKEN_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| keel_daemon::client::keel_home().join("token"));
            let token = Token::load(&file).map_err(|e| Error::Setup(e.to_string()))?;
            (addr, token, None)
        }
        Err(_) => {
            let (addr, token, embedded) = runtime.block_on(super::local::start())?;
            (addr, token, Some(embedded))
        }
    };
    let exe = std::env::current_exe().map_err(|e| Error::Setup(format!("cannot find this program: {e}")))?;
    let program = WorkerProgram {
        path: exe.display().to_string(),
        args: std::env::args().skip(1).collect(),
        cwd: std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        env: Vec::new(),
    };
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hello = Hello::RegisterJob { version: PROTOCOL_VERSION, name };
    let (reader, writer, job) =
        runtime.block_on(register_driver(&addr, &token, hello.clone(), Some(program), None)).map_err(|e| match e {
            Registration::Refused(why) => Error::Refused(why),
            Registration::Failed(why) => Error::Connection(why),
        })?;
    let _guard = runtime.enter();
    // Frames to the head go through one queue whatever the connection: a forwarder writes them to
    // the current connection, and the reader hands it a new one after a reconnection.
    let (links_tx, links_rx) = mpsc::unbounded_channel::<Link>();
    runtime.spawn(forward(links_rx, writer));
    let (itx, irx) = mpsc::unbounded_channel();
    runtime.spawn(read_head(reader, itx, links_tx.clone(), addr.clone(), token.clone(), hello, job));
    let out = Box::new(move |m: DriverToHead| links_tx.send(Link::Frame(ToHead::Driver(m))).is_ok());
    let shared = Shared::start(runtime.handle().clone(), irx, out, token);
    drop(_guard);
    let ids = IdSpace { parent: TaskId::driver(job), attempt: 0, is_driver: true, next_task: 0, next_put: 0 };
    let inner = Inner {
        shared,
        job,
        ids: Mutex::new(ids),
        handles: Mutex::new(FxHashMap::default()),
        actor_seqs: Mutex::new(FxHashMap::default()),
        host: keel_daemon::node::hostname(),
        local_node: None,
        runtime: Some(runtime),
        embedded: Mutex::new(embedded),
    };
    Ok(Keel { inner: Arc::new(inner) })
}

#[cfg(test)]
mod tests {
    use super::{Incoming, OutputLines, Resolution, Shared};
    use keel_kernel::ids::{JobId, NodeId, TaskId};
    use keel_kernel::proto::{DriverToHead, HeadToDriver, ObjectData};
    use keel_kernel::ObjectId;
    use keel_net::wire::{OutputChunk, Stream};
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_wait_spins_at_most_spin_and_never_past_its_deadline() {
        use super::{spin_limit, SPIN};
        use std::time::{Duration, Instant};
        let now = Instant::now();
        assert_eq!(spin_limit(None, now), SPIN);
        assert_eq!(spin_limit(Some(now + Duration::from_secs(1)), now), SPIN);
        assert_eq!(spin_limit(Some(now + Duration::from_micros(30)), now), Duration::from_micros(30));
        assert_eq!(spin_limit(Some(now), now), Duration::ZERO, "a poll does not spin");
        assert_eq!(spin_limit(Some(now - Duration::from_micros(5)), now), Duration::ZERO);
    }

    thread_local! {
        /// Waits of this thread that began with a spin.
        pub(super) static SPINS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_drivers_wait_spins_first_however_many_of_its_waits_timed_out_before() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (_itx, irx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared::start(runtime.handle().clone(), irx, Box::new(|_| true), keel_net::Token::generate());
        let gather = super::Gather::new(1, 1, false);
        // Far more than a worker's grace, spent in waits that timed out.
        let soon = || Some(std::time::Instant::now() + std::time::Duration::from_micros(150));
        for _ in 0..5 {
            shared.wait_gathered(&gather, soon());
        }
        let before = SPINS.with(|n| n.get());
        shared.wait_gathered(&gather, soon());
        assert_eq!(SPINS.with(|n| n.get()), before + 1, "a driver's wait no longer spins");
        assert_eq!(before, 5);
    }

    #[test]
    fn a_command_counts_as_carried_out_only_once_the_core_has_done_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (_itx, irx) = tokio::sync::mpsc::unbounded_channel();
        // The core's link blocks until the test lets it go: the command stays in progress.
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let out = Box::new(move |_m: DriverToHead| gate.lock().unwrap().recv().is_ok());
        let shared = Shared::start(runtime.handle().clone(), irx, out, keel_net::Token::generate());
        assert!(shared.quiet(), "nothing sent yet");
        shared.send(DriverToHead::FinishJob).unwrap();
        assert!(!shared.quiet(), "sent, and its message not yet handed to the link");
        gate_tx.send(()).unwrap();
        let start = std::time::Instant::now();
        while !shared.quiet() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "the core never finished the command");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_value_this_process_put_is_read_without_asking_and_a_forgotten_one_is_asked_for_again() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (itx, irx) = tokio::sync::mpsc::unbounded_channel();
        let sent: Arc<Mutex<Vec<DriverToHead>>> = Arc::default();
        let to_head = sent.clone();
        let out = Box::new(move |m: DriverToHead| {
            to_head.lock().unwrap().push(m);
            true
        });
        let shared = Shared::start(runtime.handle().clone(), irx, out, keel_net::Token::generate());
        let object = ObjectId::for_put(TaskId::driver(JobId(1)), 1);
        let at = |r: Resolution| match r {
            Resolution::Ready(ObjectData::At(nodes)) => nodes,
            _ => panic!("not a stored value"),
        };
        shared.note_located(object, NodeId(3));
        // Nobody answers for the head here: asking it would wait for ever.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = shared.clone();
        std::thread::spawn(move || tx.send(reader.resolve(object).map(at).ok()));
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the head was asked about this put");
        assert_eq!(got, Some(vec![NodeId(3)]));
        assert!(sent.lock().unwrap().is_empty(), "the head was asked about a value this process put");
        // Forgotten (or its holder gone): the head is asked again, and what it says is kept.
        shared.forget(object);
        let asked = sent.clone();
        let head = std::thread::spawn(move || loop {
            if asked.lock().unwrap().iter().any(|m| matches!(m, DriverToHead::Subscribe(o) if o == &vec![object])) {
                let ready = HeadToDriver::ObjectReady { object, size: 1 << 20, data: ObjectData::At(vec![NodeId(4)]) };
                itx.send(Incoming::Msg(ready)).unwrap();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        assert_eq!(at(shared.resolve(object).unwrap()), vec![NodeId(4)]);
        head.join().unwrap();
        let asked_before = sent.lock().unwrap().len();
        assert_eq!(at(shared.resolve(object).unwrap()), vec![NodeId(4)]);
        assert_eq!(sent.lock().unwrap().len(), asked_before, "a value the head named was asked for twice");
    }

    fn piece(task: u64, stream: Stream, data: &str) -> OutputChunk {
        OutputChunk { job: JobId(1), task: TaskId(task), attempt: 0, node: NodeId(1), stream, data: data.into() }
    }

    #[test]
    fn tasks_printing_at_once_get_whole_lines_and_an_unfinished_line_waits_until_due() {
        let mut out = OutputLines::default();
        let t0 = tokio::time::Instant::now();
        let later = t0 + OutputLines::PATIENCE;
        // Two tasks' lines arrive cut into pieces, interleaved.
        assert_eq!(out.lines(piece(1, Stream::Stderr, "counted "), t0), None);
        assert_eq!(out.lines(piece(2, Stream::Stderr, "counted "), t0), None);
        assert_eq!(out.lines(piece(2, Stream::Stdout, "other\n"), t0), Some((false, b"other\n".to_vec())));
        assert_eq!(
            out.lines(piece(1, Stream::Stderr, "f1: 3\nand a "), later),
            Some((true, b"counted f1: 3\n".to_vec()))
        );
        assert_eq!(out.lines(piece(2, Stream::Stderr, "f2: 4\n"), t0), Some((true, b"counted f2: 4\n".to_vec())));
        // Task 1's unfinished line waits from when it began, not from the first piece of the line before.
        assert_eq!(out.due(), Some(later + OutputLines::PATIENCE));
        assert!(out.unfinished(None, Some(later)).is_empty());
        assert_eq!(out.unfinished(Some(TaskId(2)), None), vec![]);
        assert_eq!(out.unfinished(Some(TaskId(1)), None), vec![(true, b"and a ".to_vec())]);
        assert_eq!(out.due(), None);
    }

    #[test]
    fn a_line_that_never_ends_is_written_once_it_grows_too_long() {
        let mut out = OutputLines::default();
        let now = tokio::time::Instant::now();
        let piece_of = |n: usize| piece(1, Stream::Stdout, &"x".repeat(n));
        assert_eq!(out.lines(piece_of(OutputLines::MAX_HELD), now), None);
        let (stderr, bytes) = out.lines(piece_of(10), now).expect("written");
        assert!(!stderr && bytes.len() == OutputLines::MAX_HELD + 10);
        assert_eq!(out.due(), None);
    }
}
