//! Worker mode: a node started this binary to run tasks. `init` lands here and never returns.

use super::core::{Incoming, Shared};
use super::{ActorState, Error, IdSpace, Inner, Keel, Registered, Result};
use keel_daemon::worker::{WorkerEnv, WorkerLink};
use keel_kernel::errors::TaskFailure;
use keel_kernel::ids::{JobId, NodeId, ObjectId, TaskId};
use keel_kernel::node::ExecArg;
use keel_kernel::proto::{Arg, DriverToHead, Function, ReturnValue, TaskOutcome, TaskSpec};
use keel_net::unix::DirectWriter;
use keel_net::wire::{FromWorker, PeerInfo, ToWorker};
use keel_net::DEFAULT_MAX_FRAME;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::mpsc;

struct Execute {
    spec: Arc<TaskSpec>,
    attempt: u32,
    args: Vec<ExecArg>,
    store_dir: String,
    /// Interrupted before it started: it is skipped and ends as cancelled.
    interrupted: bool,
}

/// The attempts the node handed to this worker, in the order it runs them: an actor's next methods
/// come while the current one runs.
#[derive(Default)]
struct Inbox {
    state: Mutex<Held>,
    ready: Condvar,
    /// Whether an attempt is there to take or the connection closed (set under the lock): a
    /// `next` spinning before it sleeps looks here, not at the lock the reader pushes under.
    changed: AtomicBool,
}

/// What an [`Inbox`] holds under its lock.
#[derive(Default)]
struct Held {
    /// The attempts not started.
    queue: VecDeque<Execute>,
    /// Whether the node's connection closed.
    closed: bool,
    /// Whether `next` sleeps on `ready`: only then does a push wake it, so that a worker busy or
    /// spinning costs its reader no system call per attempt. One thread takes attempts (the
    /// worker's main thread): with two, one could clear it while the other slept on.
    sleeping: bool,
}

impl Inbox {
    fn push(&self, exec: Execute) {
        let mut state = self.state.lock().expect("inbox");
        state.queue.push_back(exec);
        self.changed.store(true, Ordering::Release);
        let wake = state.sleeping;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Marks a held attempt interrupted; one already started runs on (it cannot be stopped).
    fn interrupt(&self, task: TaskId, attempt: u32) {
        let mut state = self.state.lock().expect("inbox");
        if let Some(exec) = state.queue.iter_mut().find(|e| e.spec.task == task && e.attempt == attempt) {
            exec.interrupted = true;
        }
    }

    /// Takes back held attempts not started yet, the first and those behind it, all or none;
    /// false when the first is not held (it runs, or ran, and those behind it follow it here).
    fn withdraw(&self, tasks: &[(TaskId, u32)]) -> bool {
        let mut state = self.state.lock().expect("inbox");
        keel_kernel::node::withdraw_held(&mut state.queue, tasks, |e| (e.spec.task, e.attempt))
    }

    /// The node is gone: what it handed over and was not started is dropped (the head runs it
    /// again elsewhere), so that nothing runs twice.
    fn close(&self) {
        let mut state = self.state.lock().expect("inbox");
        state.queue.clear();
        state.closed = true;
        self.changed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The next attempt, waiting for one; `None` once the connection closed and none is left.
    fn next(&self) -> Option<Execute> {
        super::core::spin_until(super::core::SPIN, || self.changed.load(Ordering::Acquire));
        let mut state = self.state.lock().expect("inbox");
        loop {
            if let Some(exec) = state.queue.pop_front() {
                self.changed.store(!state.queue.is_empty() || state.closed, Ordering::Release);
                return Some(exec);
            }
            if state.closed {
                return None;
            }
            self.changed.store(false, Ordering::Release);
            state.sleeping = true;
            state = self.ready.wait(state).expect("inbox");
            state.sleeping = false;
        }
    }
}

/// Serves tasks until the node closes the socket, then exits the process.
pub(crate) fn run(functions: &[&'static dyn Registered]) -> ! {
    let code = match serve(functions) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keel worker: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn env_u64(name: &str) -> Result<u64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Setup(format!("{name} is missing or not a number (a node sets it for its workers)")))
}

fn serve(functions: &[&'static dyn Registered]) -> Result<()> {
    keel_shm::raise_open_file_limit();
    let env = WorkerEnv::from_env().map_err(|e| Error::Setup(e.to_string()))?;
    let node = NodeId(env_u64("KEEL_NODE_ID")?);
    let job = JobId(env_u64("KEEL_JOB_ID")?);
    let store_dir =
        PathBuf::from(std::env::var("KEEL_STORE_DIR").map_err(|_| Error::Setup("KEEL_STORE_DIR is missing".into()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keel-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(format!("cannot start the runtime: {e}")))?;
    let WorkerLink { mut reader, writer } =
        runtime.block_on(WorkerLink::connect(&env)).map_err(|e| Error::Connection(e.to_string()))?;
    let guard = runtime.enter();
    // Frames to the node go out from whichever thread sends them, in order (a task's end from the
    // thread that ran it, with no hand-off).
    let direct = DirectWriter::start(writer.into_inner(), DEFAULT_MAX_FRAME);
    let wtx = Link(direct);
    let inbox = Arc::new(Inbox::default());
    let (itx, irx) = mpsc::unbounded_channel();
    let to_inbox = inbox.clone();
    let withdrawn_tx = wtx.clone();
    runtime.spawn(async move {
        loop {
            match reader.recv::<ToWorker>("message to a worker").await {
                Ok(ToWorker::Execute { spec, attempt, args, store_dir }) => {
                    to_inbox.push(Execute { spec, attempt, args, store_dir, interrupted: false });
                }
                Ok(ToWorker::Message(m)) => {
                    let _ = itx.send(Incoming::Msg(m));
                }
                Ok(ToWorker::Peer(info)) => {
                    let _ = itx.send(Incoming::Peer(info));
                }
                // A running function cannot be stopped from outside (a forced cancel kills the
                // process); one not started yet is skipped.
                Ok(ToWorker::Interrupt { task, attempt }) => to_inbox.interrupt(task, attempt),
                // Given back only if not started; a started one ends as usual.
                Ok(ToWorker::Withdraw { tasks }) => {
                    if to_inbox.withdraw(&tasks) {
                        let _ = withdrawn_tx.send(&FromWorker::Withdrawn { tasks });
                    }
                }
                Err(e) => {
                    to_inbox.close();
                    let _ = itx.send(Incoming::Lost(e.to_string()));
                    return;
                }
            }
        }
    });
    let current: super::capture::Current = Arc::new(Mutex::new(None));
    let output_tx = wtx.clone();
    let capture = super::capture::Capture::start(current.clone(), move |frame| {
        let _ = output_tx.send(&frame);
    })
    .map_err(|e| Error::Setup(format!("cannot capture the worker's output: {e}")))?;
    let submit_tx = wtx.clone();
    let out = Box::new(move |m: DriverToHead| submit_tx.send(&FromWorker::Submit(m)));
    let shared = Shared::start(runtime.handle().clone(), irx, out, env.token.clone());
    let block_tx = wtx.clone();
    shared.set_block_hook(Arc::new(move |blocked| {
        let _ = block_tx.send(&FromWorker::Blocked(blocked));
    }));
    drop(guard);
    let host = keel_daemon::node::hostname();
    shared.add_peer(PeerInfo {
        node,
        addr: String::new(),
        host: host.clone(),
        store_dir: store_dir.display().to_string(),
    });
    let ids = IdSpace { parent: TaskId(0), attempt: 0, is_driver: false, next_task: 0, next_put: 0 };
    let keel = Keel {
        inner: Arc::new(Inner {
            shared,
            job,
            ids: Mutex::new(ids),
            handles: Mutex::new(Default::default()),
            actor_seqs: Mutex::new(Default::default()),
            host,
            local_node: Some((node, store_dir)),
            runtime: Some(runtime),
            embedded: Mutex::new(None),
        }),
    };
    super::set_current(&keel);
    let registry: HashMap<&str, &'static dyn Registered> = functions.iter().map(|f| (f.name(), *f)).collect();
    // The actor this worker hosts, once its constructor ran.
    let mut actor: ActorState = None;
    // An actor's call's result references, held until its next call (see below).
    let mut actor_keep: Vec<super::Handle> = Vec::new();
    while let Some(exec) = inbox.next() {
        if exec.interrupted {
            let outcome = TaskOutcome::Failed(TaskFailure::Cancelled);
            let done = FromWorker::Done { task: exec.spec.task, attempt: exec.attempt, outcome };
            end_attempt(&keel.inner.shared, &wtx, done);
            continue;
        }
        // The head recorded the previous actor call's result, which holds those references:
        // they go now, in a call of the same actor, which the head charges them to.
        drop(std::mem::take(&mut actor_keep));
        *keel.inner.ids.lock().expect("ids") =
            IdSpace { parent: exec.spec.task, attempt: exec.attempt, is_driver: false, next_task: 0, next_put: 0 };
        keel.inner.shared.new_attempt();
        // The head orders actor calls per calling task: each task numbers its calls from 0.
        keel.inner.actor_seqs.lock().expect("seqs").clear();
        *current.lock().expect("current") = Some((exec.spec.task, exec.attempt));
        let mut keep = Vec::new();
        let outcome = execute(&keel, &registry, &exec, &mut actor, &mut keep);
        // Everything it printed goes before its end.
        capture.sync();
        *current.lock().expect("current") = None;
        let done = FromWorker::Done { task: exec.spec.task, attempt: exec.attempt, outcome };
        end_attempt(&keel.inner.shared, &wtx, done);
        // The result, which holds these references, is recorded with the end. A normal task's
        // handles are released by the head when its attempt ends: let them go quietly (a release
        // sent now would come from a worker that runs nothing). An actor's are the actor's own:
        // they go in its next call.
        if matches!(exec.spec.kind, keel_kernel::proto::TaskKind::Normal) {
            keep.into_iter().for_each(super::Handle::release_quietly);
        } else {
            actor_keep = keep;
        }
    }
    Ok(())
}

/// The link to the node: frames from any thread, in order (see [`DirectWriter`]).
#[derive(Clone)]
struct Link(Arc<DirectWriter>);

impl Link {
    /// Sends a frame; false when the connection is gone (or the frame is over the limit).
    fn send(&self, frame: &FromWorker) -> bool {
        match self.0.send(&keel_net::frame::encode(frame)) {
            Ok(()) => true,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    tracing::error!(error = %e, "cannot send to the node; the link to it is closed");
                }
                false
            }
        }
    }
}

/// Reports an attempt's end. What the function sent (its submissions, the handles it dropped)
/// goes before it: when the core has sent all of that already, this thread sends the end itself;
/// otherwise the core sends it after the rest. Either way this thread goes on to the next task.
fn end_attempt(shared: &Shared, link: &Link, done: FromWorker) {
    if shared.quiet() {
        link.send(&done);
    } else {
        let link = link.clone();
        shared.then(move || {
            link.send(&done);
        });
    }
}

fn failed(message: String) -> TaskOutcome {
    TaskOutcome::Failed(TaskFailure::Application { message })
}

/// Runs one attempt. Handles on the references inside its result go into `keep`: the caller
/// drops them only after the attempt's end is sent, so that they outlive the task's own handles.
fn execute(
    keel: &Keel,
    registry: &HashMap<&str, &'static dyn Registered>,
    exec: &Execute,
    actor: &mut ActorState,
    keep: &mut Vec<super::Handle>,
) -> TaskOutcome {
    let spec = &exec.spec;
    let function = match &spec.function {
        Function::Named(name) => match registry.get(&**name) {
            Some(f) => *f,
            None => return TaskOutcome::Failed(TaskFailure::UnknownFunction { name: name.to_string() }),
        },
        Function::Command(_) => {
            return failed("command tasks run in `keel worker`, not in a program's own workers".into())
        }
    };
    if spec.num_returns != 1 {
        return failed(format!("a remote function returns one value, not {}", spec.num_returns));
    }
    let dir = Path::new(&exec.store_dir);
    let mut mapped = Vec::new();
    for exec_arg in &exec.args {
        if let ExecArg::Local { object, .. } = exec_arg {
            match keel_shm::map(dir, *object) {
                Ok(view) => mapped.push(view),
                Err(_) => return TaskOutcome::Failed(TaskFailure::ArgumentUnavailable { object: *object }),
            }
        }
    }
    let mut views = mapped.iter();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(spec.args.len());
    for (arg, exec_arg) in spec.args.iter().zip(&exec.args) {
        parts.push(match (arg, exec_arg) {
            (Arg::Value { data, .. }, _) => data,
            (_, ExecArg::Inline(bytes)) => bytes,
            (_, ExecArg::Local { .. }) => views.next().expect("one view per local argument"),
            (Arg::Ref(object), ExecArg::Value) => {
                return TaskOutcome::Failed(TaskFailure::ArgumentUnavailable { object: *object })
            }
        });
    }
    let object = ObjectId::for_return(spec.task, 1);
    // A large result is serialised straight into the node's store.
    let mut store = |size: usize, fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>| {
        keel_shm::write_sealed_with(dir, object, size as u64, fill).map_err(|e| format!("cannot store the result: {e}"))
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::decoding_with(keel, || function.invoke(actor, &parts, &mut store))
    }));
    drop(parts);
    drop(mapped);
    let super::Encoded { bytes, stored, nested, keep: handles } = match result {
        Ok(Ok(encoded)) => encoded,
        Ok(Err(message)) => return failed(message),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            return failed(format!("the function panicked: {text}"));
        }
    };
    *keep = handles;
    match stored {
        Some(size) => TaskOutcome::Finished(vec![ReturnValue { object, size, inline: None, nested }]),
        None => {
            let size = bytes.len() as u64;
            TaskOutcome::Finished(vec![ReturnValue { object, size, inline: Some(bytes), nested }])
        }
    }
}
