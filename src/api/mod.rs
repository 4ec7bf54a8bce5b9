//! The API's types: [`Keel`], [`ObjectRef`], [`Remote`], [`TaskOptions`], [`Error`].

mod blob;
mod capture;
mod core;
mod local;
mod worker;

use self::blob::BlobSlice;
pub use self::blob::{Blob, BlobView};
use self::core::{Bytes, Resolution, Shared};
use keel_kernel::errors::ErrorReason;
use keel_kernel::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId};
use keel_kernel::proto::{
    Arg, DriverToHead, Function, LabelConstraint, ObjectData, PlacementGroupSpec, PlacementStrategy,
    SchedulingStrategy, TaskKind, TaskSpec,
};
use keel_kernel::ResourceSet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Values up to this size travel inline with the messages (the head's default limit).
pub const INLINE_MAX_BYTES: usize = 100 * 1024;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task (or the object) failed; the cluster says why.
    #[error("{0}")]
    Task(ErrorReason),
    /// The head refused a request.
    #[error("the head refused the request: {0}")]
    Refused(String),
    /// The connection to the cluster failed.
    #[error("cluster connection: {0}")]
    Connection(String),
    /// A value's bytes are not a `T`.
    #[error("object {object} does not decode as the type asked for: {detail}")]
    Decode {
        /// The object.
        object: ObjectId,
        /// The decoder's complaint.
        detail: String,
    },
    /// A value could not be read from any node that holds it.
    #[error("object {object} could not be read from any holder: {detail}")]
    Unreadable {
        /// The object.
        object: ObjectId,
        /// What went wrong.
        detail: String,
    },
    /// A put too large to travel inline could not be stored on any node.
    #[error("object {object} could not be stored on any node: {detail}")]
    Unstored {
        /// The object.
        object: ObjectId,
        /// What went wrong with each node tried.
        detail: String,
    },
    /// The setup is wrong (environment, token, embedded cluster).
    #[error("{0}")]
    Setup(String),
    /// A value is too large for where it is put.
    #[error("{0}")]
    TooLarge(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a task runs.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// What it needs (one CPU by default).
    pub resources: ResourceSet,
    /// Where it may run.
    pub strategy: SchedulingStrategy,
    /// Hard label constraints on its node.
    pub labels: Vec<LabelConstraint>,
    /// Retries after its worker or node dies.
    pub max_retries: u32,
    /// Whether an error the function returns is retried too.
    pub retry_exceptions: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            resources: ResourceSet::cpus(1),
            strategy: SchedulingStrategy::Default,
            labels: Vec::new(),
            max_retries: TaskSpec::DEFAULT_MAX_RETRIES,
            retry_exceptions: false,
        }
    }
}

/// Whose ids new tasks and puts take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdSpace {
    /// The submitter: the driver, or the running task.
    pub parent: TaskId,
    pub attempt: u32,
    pub is_driver: bool,
    pub next_task: u64,
    pub next_put: u32,
}

pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub job: JobId,
    pub ids: Mutex<IdSpace>,
    pub handles: Mutex<rustc_hash::FxHashMap<ObjectId, usize>>,
    /// The next call's sequence number, per actor this process calls.
    pub actor_seqs: Mutex<rustc_hash::FxHashMap<ActorId, u64>>,
    pub host: String,
    /// In a worker: this node and its store, for large puts.
    pub local_node: Option<(NodeId, std::path::PathBuf)>,
    pub runtime: Option<tokio::runtime::Runtime>,
    pub embedded: Mutex<Option<local::Embedded>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.ids.lock().map(|i| i.is_driver).unwrap_or(false) {
            self.shared.finish();
        }
        if let Some(e) = self.embedded.lock().ok().and_then(|mut e| e.take()) {
            e.stop();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

/// A connection to a cluster: submit tasks, put and get values.
#[derive(Clone)]
pub struct Keel {
    pub(crate) inner: Arc<Inner>,
}

static CURRENT: OnceLock<Mutex<Weak<Inner>>> = OnceLock::new();

/// The process's `Keel`: the driver's after [`init`], or, inside a task, the worker's (for
/// nested calls). `None` before `init` or after the driver dropped it.
pub fn current() -> Option<Keel> {
    CURRENT.get()?.lock().ok()?.upgrade().map(|inner| Keel { inner })
}

fn set_current(keel: &Keel) {
    let cell = CURRENT.get_or_init(|| Mutex::new(Weak::new()));
    if let Ok(mut w) = cell.lock() {
        *w = Arc::downgrade(&keel.inner);
    }
}

/// Connects to the cluster at `KEEL_ADDRESS` (with the token in `KEEL_TOKEN_FILE`, or in the
/// Keel home), or, when it is unset, starts a local cluster in this process: a head and one node
/// with this machine's cores, whose workers are this same binary.
///
/// `functions` are the remote functions this binary offers. When a node starts the binary as a
/// worker (it sets `KEEL_WORKER_SOCKET`), `init` serves tasks and never returns; call it first
/// thing in `main`, before anything that should only happen in the driver.
pub fn init(functions: &[&'static dyn Registered]) -> Result<Keel> {
    if std::env::var_os("KEEL_WORKER_SOCKET").is_some() {
        worker::run(functions);
    }
    let keel = core::connect_driver()?;
    set_current(&keel);
    Ok(keel)
}

impl Keel {
    /// The job this driver runs.
    pub fn job(&self) -> JobId {
        self.inner.job
    }

    fn next_task_id(&self) -> TaskId {
        let mut ids = self.inner.ids.lock().expect("ids");
        let id = TaskId::child(ids.parent, ids.attempt, ids.next_task);
        ids.next_task += 1;
        id
    }

    fn next_put_id(&self) -> ObjectId {
        let mut ids = self.inner.ids.lock().expect("ids");
        let seq = ids.next_put;
        ids.next_put += 1;
        if ids.is_driver {
            ObjectId::for_put(ids.parent, seq)
        } else {
            ObjectId::for_task_put(ids.parent, ids.attempt, seq)
        }
    }

    pub(crate) fn send(&self, msg: DriverToHead) -> Result<()> {
        self.inner.shared.send(msg)
    }

    /// A handle on `object`, counted locally; the head hears when the last one goes.
    /// A handle on a reference received inside a value: the first one this process holds is a
    /// new borrow the cluster hears of (the last one dropped ends it, as for any handle).
    pub(crate) fn borrowed_handle<T>(&self, object: ObjectId) -> ObjectRef<T> {
        let first = {
            let mut handles = self.inner.handles.lock().expect("handles");
            let n = handles.entry(object).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let _ = self.send(DriverToHead::AddRef(object));
        }
        ObjectRef { handle: Handle { object, keel: self.clone(), quiet: false }, _t: PhantomData }
    }

    pub(crate) fn handle<T>(&self, object: ObjectId) -> ObjectRef<T> {
        *self.inner.handles.lock().expect("handles").entry(object).or_insert(0) += 1;
        ObjectRef { handle: Handle { object, keel: self.clone(), quiet: false }, _t: PhantomData }
    }

    /// Submits a task calling the function named `name` with already-built arguments.
    pub(crate) fn submit(&self, name: &'static str, args: Vec<Arg>, options: &TaskOptions) -> Result<ObjectId> {
        let mut spec = TaskSpec::calling(self.next_task_id(), self.inner.job, Function::Named(name.into()));
        spec.args = args;
        spec.resources = options.resources.clone();
        spec.strategy = options.strategy.clone();
        spec.label_selector = options.labels.clone();
        spec.max_retries = options.max_retries;
        spec.retry_exceptions = options.retry_exceptions;
        let object = spec.return_ids().next().expect("one return");
        self.send(DriverToHead::SubmitTask(Arc::new(spec)))?;
        Ok(object)
    }

    /// Stores `value` in the cluster and returns a reference to it.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        let object = self.store_value(value)?;
        Ok(self.handle(object))
    }

    /// Stores `bytes` as a [`Blob`] without copying them into one first (a large value is
    /// serialised straight into the store's shared memory).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectRef<Blob>> {
        let object = self.store_value(&BlobSlice(bytes))?;
        Ok(self.handle(object))
    }

    /// Serialises `value` where it will live: inline in the message when small, else straight
    /// into a store's shared memory (this worker's node, or a node on this machine), uploaded to
    /// a node otherwise. Returns the new object's id once the head has been told.
    fn store_value<V: Serialize + ?Sized>(&self, value: &V) -> Result<ObjectId> {
        let cannot = |e: postcard::Error| Error::Setup(format!("cannot serialise the value: {e}"));
        let size = postcard::experimental::serialized_size(value).map_err(cannot)?;
        let object = self.next_put_id();
        let msg = if size <= INLINE_MAX_BYTES {
            let Encoded { bytes, nested, .. } = serialize(value).map_err(cannot)?;
            DriverToHead::Put { object, size: bytes.len() as u64, inline: Some(bytes), node: None, nested }
        } else {
            let mut nested = Vec::new();
            // The handles on the references inside go: the caller's own keep them alive.
            let mut fill = |out: &mut dyn std::io::Write| -> std::io::Result<()> {
                nested = serialize_into(value, out)?.0;
                Ok(())
            };
            let node = match &self.inner.local_node {
                Some((node, dir)) => {
                    keel_shm::write_sealed_with(dir, object, size as u64, &mut fill)
                        .map_err(|e| Error::Setup(e.to_string()))?;
                    *node
                }
                // A driver has no store: a node keeps the bytes (written straight into its store
                // on this machine, else uploaded), and the head learns where from this driver's
                // own `Put`, in order with its other messages.
                None => self.inner.shared.store(object, size, &mut fill, &self.inner.host)?,
            };
            // Sealed there now: a wait for it reads it without asking anyone.
            self.inner.shared.note_located(object, node);
            DriverToHead::Put { object, size: size as u64, inline: None, node: Some(node), nested }
        };
        self.send(msg)?;
        Ok(object)
    }

    /// Waits for the value of `r`.
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T> {
        let resolution = self.inner.shared.resolve(r.id())?;
        self.decode(r.id(), resolution)
    }

    /// Waits for every value, in order. A failure is returned as soon as one is known (the first
    /// in `refs`' order among those known then), without waiting for the rest.
    pub fn get_all<T: DeserializeOwned>(&self, refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
        let gather = self.inner.shared.subscribe(refs.iter().map(|r| r.id()).collect(), refs.len(), true)?;
        self.inner.shared.wait_gathered(&gather, None);
        let answers = gather.take();
        let failure =
            answers.iter().position(|a| matches!(a, Some(answer) if !matches!(answer, Ok(Resolution::Ready(_)))));
        if let Some(i) = failure {
            let answer = answers.into_iter().nth(i).flatten().expect("a known failure");
            return Err(match answer {
                Ok(Resolution::Failed(reason)) => Error::Task(reason),
                Ok(Resolution::Refused(why)) => Error::Refused(why),
                Ok(Resolution::Ready(_)) => unreachable!("a value is no failure"),
                Err(why) => Error::Connection(why),
            });
        }
        refs.iter()
            .zip(answers)
            .map(|(r, answer)| match answer {
                Some(Ok(resolution)) => self.decode(r.id(), resolution),
                Some(Err(why)) => Err(Error::Connection(why)),
                None => Err(Error::Connection("the cluster connection closed".into())),
            })
            .collect()
    }

    /// Waits until `n` of `refs` are resolved (ready or failed) or `timeout` passes; returns the
    /// indices of the resolved ones and of the others, each in order.
    pub fn wait<T>(&self, refs: &[ObjectRef<T>], n: usize, timeout: Duration) -> Result<(Vec<usize>, Vec<usize>)> {
        let gather = self.inner.shared.subscribe(refs.iter().map(|r| r.id()).collect(), n, false)?;
        self.inner.shared.wait_gathered(&gather, Some(std::time::Instant::now() + timeout));
        let (mut ready, mut rest) = (Vec::new(), Vec::new());
        for (i, answer) in gather.take().into_iter().enumerate() {
            if matches!(answer, Some(Ok(_))) {
                ready.push(i);
            } else {
                rest.push(i);
            }
        }
        Ok((ready, rest))
    }

    /// Kills an actor; with `no_restart` false it may restart if its budget allows.
    pub fn kill<S>(&self, actor: &ActorHandle<S>, no_restart: bool) -> Result<()> {
        self.send(DriverToHead::KillActor { actor: actor.id, no_restart })
    }

    /// Finds a live actor by name (in `namespace`, or `"default"` when empty).
    pub fn get_actor<S>(&self, namespace: &str, name: &str) -> Result<Option<ActorHandle<S>>> {
        let namespace = if namespace.is_empty() { "default" } else { namespace };
        let Some(actor) = self.inner.shared.named_actor(namespace, name)? else { return Ok(None) };
        // The creation value of an actor found by name belongs to its creator; this handle only
        // names the actor.
        let created = ObjectId::for_return(TaskId(actor.0), 1);
        let first = {
            let mut handles = self.inner.handles.lock().expect("handles");
            let n = handles.entry(created).or_insert(0);
            *n += 1;
            *n == 1
        };
        // The head counts one handle per holder: only the first local one is announced.
        if first {
            self.send(DriverToHead::AddRef(created))?;
        }
        Ok(Some(ActorHandle {
            id: actor,
            created: ObjectRef {
                handle: Handle { object: created, keel: self.clone(), quiet: false },
                _t: PhantomData,
            },
            _s: PhantomData,
        }))
    }

    /// Reserves `bundles` together, laid out by `strategy`, and waits until the reservation is
    /// made (or fails with the reason, or `timeout` passes).
    pub fn placement_group(
        &self,
        bundles: Vec<ResourceSet>,
        strategy: PlacementStrategy,
        timeout: Duration,
    ) -> Result<PlacementGroup> {
        let seq = {
            let mut ids = self.inner.ids.lock().expect("ids");
            ids.next_task += 1;
            TaskId::child(ids.parent, ids.attempt, ids.next_task - 1)
        };
        let pg = PlacementGroupId(seq.0);
        let n = bundles.len();
        let waiting = self.inner.shared.await_group(pg)?;
        self.send(DriverToHead::CreatePlacementGroup {
            pg,
            spec: PlacementGroupSpec { bundles, strategy, name: None, detached: false },
        })?;
        match self.inner.shared.block_for(waiting, timeout)? {
            Some(Ok(_nodes)) => Ok(PlacementGroup { id: pg, bundles: n }),
            Some(Err(reason)) => Err(Error::Task(reason)),
            None => Err(Error::Refused(format!("placement group {pg} was not reserved within {timeout:?}"))),
        }
    }

    /// Removes a placement group: its bundles are freed and the tasks inside it are killed.
    pub fn remove_placement_group(&self, pg: &PlacementGroup) -> Result<()> {
        self.send(DriverToHead::RemovePlacementGroup(pg.id))
    }

    /// Cancels the task that produces `r`; `force` kills its worker if it is running.
    pub fn cancel<T>(&self, r: &ObjectRef<T>, force: bool) -> Result<()> {
        self.send(DriverToHead::Cancel { task: r.id().task, force, recursive: true })
    }

    /// Waits for the [`Blob`] of `r` and returns its bytes where they lie: mapped from the store
    /// when a node on this machine holds them (no copy, whatever the size), else owned.
    pub fn get_bytes(&self, r: &ObjectRef<Blob>) -> Result<BlobView> {
        let resolution = self.inner.shared.resolve(r.id())?;
        let bytes = self.value_bytes(r.id(), resolution)?;
        BlobView::new(bytes).map_err(|detail| Error::Decode { object: r.id(), detail })
    }

    fn decode<T: DeserializeOwned>(&self, object: ObjectId, resolution: Resolution) -> Result<T> {
        let bytes = self.value_bytes(object, resolution)?;
        decoding_with(self, || postcard::from_bytes::<T>(&bytes))
            .map_err(|e| Error::Decode { object, detail: e.to_string() })
    }

    /// The bytes of a resolved value: inline, or read from a holder.
    fn value_bytes(&self, object: ObjectId, resolution: Resolution) -> Result<Bytes> {
        match resolution {
            Resolution::Failed(reason) => Err(Error::Task(reason)),
            Resolution::Refused(why) => Err(Error::Refused(why)),
            Resolution::Ready(ObjectData::Inline(bytes)) => Ok(Bytes::Owned(bytes)),
            Resolution::Ready(ObjectData::At(nodes)) => {
                let mut failed = match self.inner.shared.read(object, &nodes, &self.inner.host) {
                    Ok(bytes) => return Ok(bytes),
                    Err(e) => e,
                };
                // The holders known when it was ready are gone. Until the head has noticed (a
                // dead node is declared so after its timeout, and the value then rebuilt or
                // found elsewhere), it names them again: ask again, a little later each time.
                let deadline = std::time::Instant::now() + UNREADABLE_FOR;
                let mut delay = Duration::from_millis(2);
                // Waiting, in a worker, lends the task's CPUs.
                let _blocked = self.inner.shared.blocked();
                loop {
                    self.inner.shared.invalidate(object);
                    match self.inner.shared.resolve(object)? {
                        Resolution::Ready(ObjectData::At(nodes)) => {
                            match self.inner.shared.read(object, &nodes, &self.inner.host) {
                                Ok(bytes) => return Ok(bytes),
                                Err(e) if std::time::Instant::now() < deadline => failed = e,
                                Err(_) => return Err(failed),
                            }
                        }
                        Resolution::Ready(ObjectData::Inline(bytes)) => return Ok(Bytes::Owned(bytes)),
                        Resolution::Failed(reason) => return Err(Error::Task(reason)),
                        Resolution::Refused(why) => return Err(Error::Refused(why)),
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}

/// How long a value whose holders cannot be read is asked for again before the read fails.
const UNREADABLE_FOR: Duration = Duration::from_secs(60);

/// A reference to a value in the cluster (a task's result or a put). Cloning is cheap; when the
/// last clone in this process is dropped, the cluster may free the value.
pub struct ObjectRef<T> {
    handle: Handle,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.object
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({:?})", self.handle.object)
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        self.handle.keel.handle(self.handle.object)
    }
}

/// One counted handle on an object, whatever its type.
pub struct Handle {
    object: ObjectId,
    keel: Keel,
    /// Dropping it tells the cluster nothing (see [`Handle::release_quietly`]).
    quiet: bool,
}

impl Handle {
    /// Lets the handle go without telling the cluster, which already let go of it: a task's
    /// handles are released by the cluster when its attempt ends.
    pub(crate) fn release_quietly(mut self) {
        self.quiet = true;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let last = {
            let Ok(mut handles) = self.keel.inner.handles.lock() else { return };
            match handles.get_mut(&self.object) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    handles.remove(&self.object);
                    true
                }
                None => false,
            }
        };
        if last {
            if !self.quiet {
                let _ = self.keel.send(DriverToHead::RemoveRef(self.object));
            }
            self.keel.inner.shared.forget(self.object);
        }
    }
}

/// A function callable as a task, registered by name in the binary.
pub struct Remote<A, R> {
    name: &'static str,
    f: fn(A) -> R,
}

/// Declares a remote function: `name` must be unique in the binary; `f` takes its arguments as
/// one tuple.
pub const fn remote<A, R>(name: &'static str, f: fn(A) -> R) -> Remote<A, R> {
    Remote { name, f }
}

impl<A: Args, R: Serialize + DeserializeOwned> Remote<A, R> {
    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the function as a task with default options; returns a reference to its result.
    pub fn call(&self, keel: &Keel, args: impl IntoArgs<A>) -> Result<ObjectRef<R>> {
        self.call_with(keel, args, &TaskOptions::default())
    }

    /// Runs the function as a task with `options`.
    pub fn call_with(&self, keel: &Keel, args: impl IntoArgs<A>, options: &TaskOptions) -> Result<ObjectRef<R>> {
        let mut keep = Vec::new();
        let args = args.into_args(&mut keep)?;
        let object = keel.submit(self.name, args, options)?;
        drop(keep);
        Ok(keel.handle(object))
    }
}

/// The state of the actor a worker hosts, if any.
pub type ActorState = Option<Box<dyn std::any::Any + Send>>;

/// A remote function, actor class or actor method as the worker side sees it: a name, and bytes
/// in, bytes out.
pub trait Registered: Sync {
    /// Its name.
    fn name(&self) -> &'static str;
    /// Decodes the arguments, runs the code (on the worker's actor, for a method), encodes the
    /// result: a small one into bytes, a large one through `store`, which writes it in place.
    fn invoke(
        &self,
        actor: &mut ActorState,
        args: &[&[u8]],
        store: &mut StoreLarge<'_>,
    ) -> std::result::Result<Encoded, String>;
}

/// A value's bytes, the references serialised inside it, and a handle on each of them: a task's
/// worker holds those until the cluster has its result, so that the references outlive the
/// task's own handles.
pub struct Encoded {
    /// The bytes (empty when the value was stored).
    pub bytes: Vec<u8>,
    /// The size of a value written through a [`StoreLarge`] rather than into `bytes`.
    pub stored: Option<u64>,
    /// The references inside, sorted.
    pub nested: Vec<ObjectId>,
    /// A handle on each reference inside.
    pub keep: Vec<Handle>,
}

/// Writes a large value of the given size in place: the writer is handed to the closure, which
/// serialises into it.
pub type StoreLarge<'a> = dyn FnMut(usize, &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>) -> std::result::Result<(), String>
    + 'a;

/// Encodes a result: inline when small, else serialised straight into its place through `store`
/// (no intermediate buffer of its size).
fn encode<R: Serialize>(result: &R, store: &mut StoreLarge<'_>) -> std::result::Result<Encoded, String> {
    let cannot = |e: postcard::Error| format!("cannot serialise the result: {e}");
    let size = postcard::experimental::serialized_size(result).map_err(cannot)?;
    if size <= INLINE_MAX_BYTES {
        return serialize(result).map_err(cannot);
    }
    let mut inside = None;
    store(size, &mut |out| {
        inside = Some(serialize_into(result, out)?);
        Ok(())
    })?;
    let (nested, keep) = inside.expect("the store wrote the value");
    Ok(Encoded { bytes: Vec::new(), stored: Some(size as u64), nested, keep })
}

thread_local! {
    /// Handles on the references met while serialising a value on this thread (one list per
    /// serialisation under way, the innermost last).
    static CAPTURE: std::cell::RefCell<Vec<Vec<Handle>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The handle that decoded references belong to, while decoding on this thread.
    static DECODER: std::cell::RefCell<Option<Keel>> = const { std::cell::RefCell::new(None) };
}

/// Serialises `value`, collecting the [`ObjectRef`]s inside it: the cluster keeps them alive as
/// long as the value lives.
fn serialize<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Encoded, postcard::Error> {
    let (bytes, keep) = capturing(|| postcard::to_allocvec(value));
    let nested = nested_ids(&keep);
    Ok(Encoded { bytes: bytes?, stored: None, nested, keep })
}

/// Serialises `value` into `out`; returns the references inside, and a handle on each.
fn serialize_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut dyn std::io::Write,
) -> std::io::Result<(Vec<ObjectId>, Vec<Handle>)> {
    /// A postcard output that writes through (keeping the first error, which postcard cannot carry).
    struct Through<'a> {
        out: &'a mut dyn std::io::Write,
        failed: &'a mut Option<std::io::Error>,
    }
    impl postcard::ser_flavors::Flavor for Through<'_> {
        type Output = ();
        fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
            self.try_extend(&[byte])
        }
        fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
            self.out.write_all(bytes).map_err(|e| {
                *self.failed = Some(e);
                postcard::Error::SerializeBufferFull
            })
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    let mut failed = None;
    let (written, keep) =
        capturing(|| postcard::serialize_with_flavor::<T, _, ()>(value, Through { out, failed: &mut failed }));
    if let Some(e) = failed {
        return Err(e);
    }
    written.map_err(std::io::Error::other)?;
    Ok((nested_ids(&keep), keep))
}

/// Runs a serialisation, collecting handles on the [`ObjectRef`]s it meets.
fn capturing<R>(f: impl FnOnce() -> R) -> (R, Vec<Handle>) {
    /// Pops this serialisation's list even if a `Serialize` impl panics.
    struct Frame;
    impl Drop for Frame {
        fn drop(&mut self) {
            // Handles left by an unwinding serialisation are dropped (released) here.
            let _ = CAPTURE.with(|c| c.borrow_mut().pop());
        }
    }
    CAPTURE.with(|c| c.borrow_mut().push(Vec::new()));
    let frame = Frame;
    let out = f();
    let keep = CAPTURE.with(|c| c.borrow_mut().last_mut().map(std::mem::take)).unwrap_or_default();
    drop(frame);
    (out, keep)
}

fn nested_ids(keep: &[Handle]) -> Vec<ObjectId> {
    let mut nested: Vec<ObjectId> = keep.iter().map(|h| h.object).collect();
    nested.sort_unstable();
    nested.dedup();
    nested
}

/// Runs `f` with `keel` as the owner of the references it decodes.
pub(crate) fn decoding_with<T>(keel: &Keel, f: impl FnOnce() -> T) -> T {
    let old = DECODER.with(|d| d.replace(Some(keel.clone())));
    let out = f();
    DECODER.with(|d| *d.borrow_mut() = old);
    out
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        CAPTURE.with(|c| {
            if let Some(top) = c.borrow_mut().last_mut() {
                top.push(self.handle.keel.handle::<()>(self.id()).handle);
            }
        });
        self.id().serialize(serializer)
    }
}

impl<'de, T> serde::Deserialize<'de> for ObjectRef<T> {
    /// A reference received inside a value: this process now holds a handle, and tells the
    /// cluster so (a borrow) before the value holding it can go.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let object = ObjectId::deserialize(deserializer)?;
        let keel = DECODER.with(|d| d.borrow().clone()).or_else(current).ok_or_else(|| {
            <D::Error as serde::de::Error>::custom("an ObjectRef is decoded only by keel (get, or a task's arguments)")
        })?;
        Ok(keel.borrowed_handle(object))
    }
}

impl<A: Args, R: Serialize> Registered for Remote<A, R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn invoke(
        &self,
        _: &mut ActorState,
        args: &[&[u8]],
        store: &mut StoreLarge<'_>,
    ) -> std::result::Result<Encoded, String> {
        encode(&(self.f)(A::decode(args)?), store)
    }
}

/// An actor class: a name and a constructor. Register it with [`init`] like a function.
pub struct ActorClass<S, A> {
    name: &'static str,
    new: fn(A) -> S,
}

/// Declares an actor class: `name` must be unique in the binary; `new` builds the state from a
/// tuple of arguments.
pub const fn actor<S, A>(name: &'static str, new: fn(A) -> S) -> ActorClass<S, A> {
    ActorClass { name, new }
}

/// A method of an actor class. Register it with [`init`] like a function.
pub struct Method<S, A, R> {
    name: &'static str,
    f: fn(&mut S, A) -> R,
}

/// Declares a method: `name` must be unique in the binary (say `"Counter.add"`).
pub const fn method<S, A, R>(name: &'static str, f: fn(&mut S, A) -> R) -> Method<S, A, R> {
    Method { name, f }
}

impl<S: Send + 'static, A: Args> Registered for ActorClass<S, A> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn invoke(
        &self,
        actor: &mut ActorState,
        args: &[&[u8]],
        store: &mut StoreLarge<'_>,
    ) -> std::result::Result<Encoded, String> {
        *actor = Some(Box::new((self.new)(A::decode(args)?)));
        encode(&(), store)
    }
}

impl<S: 'static, A: Args, R: Serialize> Registered for Method<S, A, R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn invoke(
        &self,
        actor: &mut ActorState,
        args: &[&[u8]],
        store: &mut StoreLarge<'_>,
    ) -> std::result::Result<Encoded, String> {
        let state = actor
            .as_mut()
            .and_then(|a| a.downcast_mut::<S>())
            .ok_or_else(|| format!("{} called on a worker that does not host an actor of its class", self.name))?;
        encode(&(self.f)(state, A::decode(args)?), store)
    }
}

/// A live actor: calls through it run, in the order this process makes them, on the actor's
/// dedicated worker.
pub struct ActorHandle<S> {
    id: ActorId,
    created: ObjectRef<()>,
    _s: PhantomData<fn() -> S>,
}

impl<S> Clone for ActorHandle<S> {
    fn clone(&self) -> Self {
        ActorHandle { id: self.id, created: self.created.clone(), _s: PhantomData }
    }
}

impl<S> ActorHandle<S> {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// A reference that resolves when the constructor has run (or fails with why it could not).
    pub fn ready(&self) -> &ObjectRef<()> {
        &self.created
    }
}

/// How an actor lives.
#[derive(Clone, Debug, Default)]
pub struct ActorOptions {
    /// A name (unique in its namespace) under which [`Keel::get_actor`] finds it.
    pub name: Option<String>,
    /// The namespace of the name (`"default"` when empty).
    pub namespace: String,
    /// A detached actor outlives its creator's job; it lives until killed.
    pub detached: bool,
    /// Restarts after its worker or node dies.
    pub max_restarts: u32,
    /// Retries of a call that was running when the actor died.
    pub max_task_retries: u32,
    /// What its worker holds while it lives (nothing by default).
    pub resources: ResourceSet,
    /// Where it may run.
    pub strategy: SchedulingStrategy,
}

impl<S: Send + 'static, A: Args> ActorClass<S, A> {
    /// Starts an actor with default options.
    pub fn create(&self, keel: &Keel, args: impl IntoArgs<A>) -> Result<ActorHandle<S>> {
        self.create_with(keel, args, &ActorOptions::default())
    }

    /// Starts an actor.
    pub fn create_with(&self, keel: &Keel, args: impl IntoArgs<A>, options: &ActorOptions) -> Result<ActorHandle<S>> {
        let mut keep = Vec::new();
        let args = args.into_args(&mut keep)?;
        let task = keel.next_task_id();
        let actor = ActorId(task.0);
        let mut spec = TaskSpec::calling(task, keel.inner.job, Function::Named(self.name.into()));
        spec.args = args;
        spec.kind = TaskKind::ActorCreation(actor);
        spec.resources = options.resources.clone();
        spec.strategy = options.strategy.clone();
        spec.max_retries = options.max_restarts;
        let kernel_options = keel_kernel::proto::ActorOptions {
            name: options.name.clone(),
            namespace: if options.namespace.is_empty() { "default".into() } else { options.namespace.clone() },
            detached: options.detached,
            max_restarts: options.max_restarts,
            max_task_retries: options.max_task_retries,
        };
        let created = spec.return_ids().next().expect("one return");
        keel.send(DriverToHead::CreateActor { options: kernel_options, creation: Arc::new(spec) })?;
        drop(keep);
        Ok(ActorHandle { id: actor, created: keel.handle(created), _s: PhantomData })
    }
}

impl<S, A: Args, R: Serialize + DeserializeOwned> Method<S, A, R> {
    /// Calls the method on `actor`; calls from this process run in the order they are made.
    pub fn call(&self, keel: &Keel, actor: &ActorHandle<S>, args: impl IntoArgs<A>) -> Result<ObjectRef<R>> {
        let mut keep = Vec::new();
        let args = args.into_args(&mut keep)?;
        let seq = {
            let mut seqs = keel.inner.actor_seqs.lock().expect("seqs");
            let next = seqs.entry(actor.id).or_insert(0);
            *next += 1;
            *next - 1
        };
        let mut spec = TaskSpec::calling(keel.next_task_id(), keel.inner.job, Function::Named(self.name.into()));
        spec.args = args;
        spec.kind = TaskKind::ActorMethod { actor: actor.id, seq };
        spec.resources = ResourceSet::default();
        let object = spec.return_ids().next().expect("one return");
        keel.send(DriverToHead::SubmitTask(Arc::new(spec)))?;
        drop(keep);
        Ok(keel.handle(object))
    }
}

/// A placement group: bundles of resources reserved together (see [`Keel::placement_group`]).
#[derive(Clone, Debug)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: usize,
}

impl PlacementGroup {
    /// Its id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// Options that run a task in bundle `bundle` (or in any bundle that fits, with `None`).
    pub fn bundle(&self, bundle: Option<usize>) -> TaskOptions {
        let bundle = bundle.map(|b| {
            assert!(b < self.bundles, "bundle {b} of a group of {}", self.bundles);
            b as u32
        });
        TaskOptions { strategy: SchedulingStrategy::PlacementGroup { pg: self.id, bundle }, ..TaskOptions::default() }
    }
}

/// A tuple of argument types.
pub trait Args: Sized {
    /// Decodes the tuple from each argument's bytes.
    fn decode(parts: &[&[u8]]) -> std::result::Result<Self, String>;
}

/// What can be passed where a `T` argument is expected: a `T`, or a reference to one.
pub trait ArgFor<T> {
    /// The task argument. A reference given by value is kept in `keep` until the task is
    /// submitted, so that the cluster hears of the task before it hears the handle is gone.
    fn into_arg(self, keep: &mut Vec<Handle>) -> Result<Arg>;
}

impl<T: Serialize> ArgFor<T> for T {
    fn into_arg(self, keep: &mut Vec<Handle>) -> Result<Arg> {
        let Encoded { bytes: data, nested, keep: held, .. } =
            serialize(&self).map_err(|e| Error::Setup(format!("cannot serialise an argument: {e}")))?;
        // The references inside stay held until the task is submitted: the value may have held
        // the last handles, and the cluster must hear of the task before it hears they are gone.
        keep.extend(held);
        Ok(Arg::Value { data, nested })
    }
}

impl<T> ArgFor<T> for &ObjectRef<T> {
    fn into_arg(self, _: &mut Vec<Handle>) -> Result<Arg> {
        Ok(Arg::Ref(self.id()))
    }
}

impl<T> ArgFor<T> for ObjectRef<T> {
    fn into_arg(self, keep: &mut Vec<Handle>) -> Result<Arg> {
        let object = self.id();
        keep.push(self.handle);
        Ok(Arg::Ref(object))
    }
}

/// A tuple of arguments matching the tuple of types `A`.
pub trait IntoArgs<A> {
    /// The task arguments (handles given by value go into `keep`).
    fn into_args(self, keep: &mut Vec<Handle>) -> Result<Vec<Arg>>;
}

macro_rules! tuples {
    ($( ($($t:ident $x:ident $i:tt),*) )*) => {$(
        impl<$($t: DeserializeOwned),*> Args for ($($t,)*) {
            #[allow(unused_variables)]
            fn decode(parts: &[&[u8]]) -> std::result::Result<Self, String> {
                let indices: &[usize] = &[$($i),*];
                let expected = indices.len();
                if parts.len() != expected {
                    return Err(format!("expected {expected} arguments, got {}", parts.len()));
                }
                Ok(($(postcard::from_bytes::<$t>(parts[$i]).map_err(|e| format!("argument {}: {e}", $i))?,)*))
            }
        }

        impl<$($t, $x: ArgFor<$t>),*> IntoArgs<($($t,)*)> for ($($x,)*) {
            #[allow(non_snake_case, unused_variables)]
            fn into_args(self, keep: &mut Vec<Handle>) -> Result<Vec<Arg>> {
                let ($($x,)*) = self;
                Ok(vec![$($x.into_arg(keep)?),*])
            }
        }
    )*};
}

tuples! {
    ()
    (T0 X0 0)
    (T0 X0 0, T1 X1 1)
    (T0 X0 0, T1 X1 1, T2 X2 2)
    (T0 X0 0, T1 X1 1, T2 X2 2, T3 X3 3)
    (T0 X0 0, T1 X1 1, T2 X2 2, T3 X3 3, T4 X4 4)
    (T0 X0 0, T1 X1 1, T2 X2 2, T3 X3 3, T4 X4 4, T5 X5 5)
}
