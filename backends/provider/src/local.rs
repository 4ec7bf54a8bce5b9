//! Nodes as `keel node` child processes on this machine.
//!
//! Each node of a launch is an instance named `<type>-<n>`. Its directory `<run dir>/<instance>`
//! is the node's work directory (worker logs), and the node's own output goes to `node.log`
//! there. The node is started as
//!
//! ```text
//! keel node --head ADDR --token-file FILE --work-dir DIR --cpus N [--gpus N] [--memory BYTES]
//!           [--resources NAME=AMOUNT ...] --labels keel.node-type=TYPE --labels keel.launch=REQUEST
//!           --labels keel.instance=INSTANCE [--labels KEY=VALUE ...] [extra arguments]
//! ```
//!
//! A launch fails (reported once per request) when a process cannot be started, when one exits
//! before it registered (the reason quotes the end of its log), or when one has not registered
//! within [`LocalOptions::register_within`] (it is then stopped). A node is stopped with
//! `SIGTERM` (on which `keel node` stops its workers and removes its object store), and
//! `SIGKILL` after [`LocalOptions::grace`]; then it is reaped. Every node gets `SIGTERM` if this
//! process dies (`PR_SET_PDEATHSIG`), so none outlives it, and [`Provider::shutdown`] stops them
//! all and waits for them.

use crate::{Events, Provider, Shutdown, INSTANCE_LABEL, LAUNCH_LABEL};
use keel_kernel::autoscaler::{labels_of, NodeType};
use keel_kernel::ids::NodeId;
use keel_kernel::proto::Labels;
use keel_kernel::{Amount, ResourceSet};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the local provider starts nodes.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The `keel` executable.
    pub keel: PathBuf,
    /// The cluster token file the nodes read.
    pub token_file: PathBuf,
    /// Instances' directories go under it.
    pub run_dir: PathBuf,
    /// The address nodes dial. None: the head's listening address (loopback when it listens
    /// on every interface).
    pub head: Option<String>,
    /// How long a node may take to stop after `SIGTERM` before it is killed.
    pub grace: Duration,
    /// An instance not registered this long after it started is stopped, and its launch
    /// reported failed. None: only the Head's launch timeout applies (and the process is left
    /// running).
    pub register_within: Option<Duration>,
    /// Arguments added to every `keel node` (`--store-capacity 512MiB`, say).
    pub node_args: Vec<String>,
    /// Per node type (by name): the program its nodes run instead of `keel` (given the same
    /// arguments), such as a wrapper script that prepares the machine.
    pub programs: std::collections::BTreeMap<String, PathBuf>,
}

impl LocalOptions {
    /// Defaults: five seconds' grace, no registration deadline, no extra arguments.
    pub fn new(keel: impl Into<PathBuf>, token_file: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> LocalOptions {
        LocalOptions {
            keel: keel.into(),
            token_file: token_file.into(),
            run_dir: run_dir.into(),
            head: None,
            grace: Duration::from_secs(5),
            register_within: None,
            node_args: Vec::new(),
            programs: std::collections::BTreeMap::new(),
        }
    }
}

/// One node process, as [`LocalProvider::instances`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its name (`<type>-<n>`), also its [`INSTANCE_LABEL`].
    pub id: String,
    /// The launch request it serves.
    pub request: u64,
    /// Its node type.
    pub node_type: String,
    /// Its process id.
    pub pid: u32,
    /// The node it registered as, once it did.
    pub node: Option<NodeId>,
    /// Being stopped.
    pub stopping: bool,
}

/// Starts nodes as `keel node` processes on this machine (see the [module docs](self)).
#[derive(Debug)]
pub struct LocalProvider {
    options: LocalOptions,
    /// The address nodes dial (known once attached).
    head: Option<String>,
    events: Option<Events>,
    next_instance: u64,
    state: Arc<Mutex<State>>,
    watchers: Vec<JoinHandle<()>>,
    closed: bool,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<String, Running>,
    /// Requests already reported failed, while instances of theirs remain.
    failed: BTreeSet<u64>,
}

#[derive(Debug)]
struct Running {
    request: u64,
    node_type: String,
    pid: u32,
    node: Option<NodeId>,
    /// Taken when the instance is asked to stop.
    stop: Option<oneshot::Sender<()>>,
}

impl State {
    /// Reports `request` failed, unless it already was.
    fn fail(&mut self, events: &Events, request: u64, reason: String) {
        if self.failed.contains(&request) {
            tracing::info!(request, reason, "another node of a failed launch did not start");
            return;
        }
        tracing::warn!(request, reason, "launch failed");
        if self.instances.values().any(|i| i.request == request) {
            self.failed.insert(request);
        }
        // The Head counts the whole request as failed and may launch again: its other nodes
        // that have not registered are stopped, so that none comes late on top of the new ones.
        for running in self.instances.values_mut().filter(|i| i.request == request && i.node.is_none()) {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
        }
        events.launch_failed(request, reason);
    }
}

impl LocalProvider {
    /// A provider that starts nodes as `options` says.
    pub fn new(options: LocalOptions) -> LocalProvider {
        LocalProvider {
            options,
            head: None,
            events: None,
            next_instance: 0,
            state: Arc::default(),
            watchers: Vec::new(),
            closed: false,
        }
    }

    /// Its node processes, by instance name.
    pub fn instances(&self) -> Vec<Instance> {
        lock(&self.state)
            .instances
            .iter()
            .map(|(id, r)| Instance {
                id: id.clone(),
                request: r.request,
                node_type: r.node_type.clone(),
                pid: r.pid,
                node: r.node,
                stopping: r.stop.is_none(),
            })
            .collect()
    }

    /// Starts one instance of `ty` for `request`.
    fn spawn(&mut self, request: u64, ty: &NodeType, events: &Events) -> Result<(), String> {
        let head = self.head.clone().expect("attached");
        let id = format!("{}-{}", ty.name, self.next_instance);
        self.next_instance += 1;
        let dir = self.options.run_dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log_path = dir.join("node.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
        let args = node_args(&head, &self.options, &dir, ty, request, &id);
        let program = self.options.programs.get(&ty.name).unwrap_or(&self.options.keel).clone();
        let mut command = tokio::process::Command::new(&program);
        command.args(&args).stdin(Stdio::null()).stdout(log).stderr(log_err);
        // Its own process group (a terminal's Ctrl-C reaches `keel up`, which stops the nodes in
        // order), killed if dropped, and stopped if this process dies.
        command.kill_on_drop(true).process_group(0);
        let parent = std::process::id();
        // SAFETY: prctl(2) and getppid(2) are async-signal-safe and touch no memory of this process.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The parent may have died before the line above: then no signal would come.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the provider's process is gone"));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id().unwrap_or(0);
        let (stop_tx, stop_rx) = oneshot::channel();
        let running = Running { request, node_type: ty.name.clone(), pid, node: None, stop: Some(stop_tx) };
        let previous = lock(&self.state).instances.insert(id.clone(), running);
        assert!(previous.is_none(), "instance names are not reused");
        tracing::info!(instance = %id, pid, request, log = %log_path.display(), "started a node process");
        let watch = Watch {
            id,
            log: log_path,
            grace: self.options.grace,
            register_within: self.options.register_within,
            state: self.state.clone(),
            events: events.clone(),
        };
        self.watchers.push(tokio::spawn(watch.run(child, stop_rx)));
        Ok(())
    }
}

impl Provider for LocalProvider {
    fn attach(&mut self, head: SocketAddr, events: Events) {
        let dial = if head.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], head.port())) } else { head };
        self.head = Some(self.options.head.clone().unwrap_or_else(|| dial.to_string()));
        self.events = Some(events);
    }

    fn launch(&mut self, request: u64, node_type: &NodeType, count: u32) {
        let events = self.events.clone().expect("Provider::attach comes before any launch");
        self.watchers.retain(|w| !w.is_finished());
        let refused =
            if self.closed { Some("the provider is shutting down".to_string()) } else { check(node_type).err() };
        if let Some(reason) = refused {
            lock(&self.state).fail(&events, request, reason);
            return;
        }
        tracing::info!(request, node_type = %node_type.name, count, "launching nodes");
        for _ in 0..count {
            if let Err(reason) = self.spawn(request, node_type, &events) {
                // The rest of the request is not started: it is reported failed as a whole.
                lock(&self.state).fail(&events, request, reason);
                return;
            }
        }
    }

    fn registered(&mut self, node: NodeId, labels: &Labels) {
        let mut state = lock(&self.state);
        let Some(id) = labels.get(INSTANCE_LABEL) else { return };
        if let Some(running) = state.instances.get_mut(id) {
            running.node = Some(node);
            tracing::info!(instance = %id, %node, "node registered");
        }
    }

    fn terminate(&mut self, node: NodeId, labels: &Labels) {
        let mut state = lock(&self.state);
        let by_label = labels.get(INSTANCE_LABEL).filter(|id| state.instances.contains_key(*id)).cloned();
        let id =
            by_label.or_else(|| state.instances.iter().find(|(_, r)| r.node == Some(node)).map(|(id, _)| id.clone()));
        let Some(id) = id else {
            tracing::warn!(%node, "asked to stop a node this provider did not start (or that has already ended)");
            return;
        };
        let running = state.instances.get_mut(&id).expect("found above");
        running.node.get_or_insert(node);
        if let Some(stop) = running.stop.take() {
            tracing::info!(instance = %id, %node, "stopping the node");
            let _ = stop.send(());
        }
    }

    fn shutdown(&mut self) -> Shutdown {
        self.closed = true;
        for running in lock(&self.state).instances.values_mut() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
        }
        let watchers = std::mem::take(&mut self.watchers);
        Box::pin(async move {
            for w in watchers {
                let _ = w.await;
            }
        })
    }
}

impl Drop for LocalProvider {
    /// Dropped without [`Provider::shutdown`]: the nodes are still asked to stop (their
    /// watchers carry it out while the runtime lasts; a dropped runtime kills them).
    fn drop(&mut self) {
        drop(self.shutdown());
    }
}

/// Watches one instance until its process is gone.
struct Watch {
    id: String,
    log: PathBuf,
    grace: Duration,
    register_within: Option<Duration>,
    state: Arc<Mutex<State>>,
    events: Events,
}

impl Watch {
    async fn run(self, mut child: Child, mut stop: oneshot::Receiver<()>) {
        let pid = child.id();
        let deadline = self.register_within.map(|d| tokio::time::Instant::now() + d);
        let registering = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut stop => self.stop(&mut child, pid).await,
            () = registering => {
                if !self.give_up_registering() {
                    // Registered in time: only the process's end or a stop are awaited now.
                    return self.finish_registered(child, stop).await;
                }
                self.stop(&mut child, pid).await
            }
        };
        self.ended(status);
    }

    /// The registration deadline passed: a node that has not registered is marked stopping and
    /// its launch reported failed. Returns whether to stop it now.
    fn give_up_registering(&self) -> bool {
        let mut state = lock(&self.state);
        let Some(running) = state.instances.get_mut(&self.id) else { return false };
        if running.stop.is_none() {
            // Already asked to stop.
            return true;
        }
        if running.node.is_some() {
            return false;
        }
        running.stop = None;
        let (request, ty) = (running.request, running.node_type.clone());
        let within = self.register_within.unwrap_or_default().as_secs_f64();
        let reason = format!(
            "the node of type `{ty}` (instance {}) did not register within {within} s{}",
            self.id,
            log_tail(&self.log)
        );
        state.fail(&self.events, request, reason);
        true
    }

    async fn finish_registered(self, mut child: Child, mut stop: oneshot::Receiver<()>) {
        let pid = child.id();
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut stop => self.stop(&mut child, pid).await,
        };
        self.ended(status);
    }

    /// `SIGTERM` to the node's process group (the node, or a wrapper `program` and the node it
    /// runs), then `SIGKILL` to the group after the grace period; returns once the process is
    /// reaped and nothing of its group is left.
    async fn stop(&self, child: &mut Child, pid: Option<u32>) -> std::io::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + self.grace;
        let group = |signal: i32| {
            if let Some(pid) = pid {
                // SAFETY: kill(2) with a negative pid signals the process group the child leads
                // (it was started in a group of its own); no memory is involved.
                unsafe { libc::kill(-(pid as i32), signal) == 0 }
            } else {
                false
            }
        };
        group(libc::SIGTERM);
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(instance = %self.id, grace_s = self.grace.as_secs_f64(), "the node did not stop in time; killing it");
                group(libc::SIGKILL);
                let _ = child.start_kill();
                child.wait().await
            }
        };
        // A wrapper that did not `exec` leaves the node it started: it has the SIGTERM too, and
        // the rest of the grace period to stop, then the group is killed.
        while group(0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        group(libc::SIGKILL);
        status
    }

    /// The process is gone: forget it, and report its launch failed if it never registered
    /// and was not asked to stop.
    fn ended(&self, status: std::io::Result<ExitStatus>) {
        let what = match &status {
            Ok(s) => format!("exited ({s})"),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let tail = log_tail(&self.log);
        let mut state = lock(&self.state);
        let Some(running) = state.instances.remove(&self.id) else { return };
        let stopping = running.stop.is_none();
        match (running.node, stopping) {
            (None, false) => {
                let reason = format!(
                    "the node of type `{}` (instance {}) {what} before it registered{tail}",
                    running.node_type, self.id
                );
                state.fail(&self.events, running.request, reason);
            }
            (Some(node), false) => {
                tracing::warn!(instance = %self.id, %node, log = %self.log.display(), "a node process {what} on its own");
            }
            (_, true) => tracing::info!(instance = %self.id, "node process stopped: {what}"),
        }
        if !state.instances.values().any(|i| i.request == running.request) {
            state.failed.remove(&running.request);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `keel node` could not be told: a label or resource name holding `,` or `=`, which its
/// flags split on.
fn check(ty: &NodeType) -> Result<(), String> {
    let bad = |s: &str| s.is_empty() || s.contains([',', '=']);
    for (k, v) in &ty.labels {
        if bad(k) || v.contains(',') {
            return Err(format!("node type `{}`: the label {k}={v} cannot be given to `keel node --labels`", ty.name));
        }
    }
    if let Some(name) = ty.resources.custom.keys().find(|n| bad(n)) {
        return Err(format!(
            "node type `{}`: the resource `{name}` cannot be given to `keel node --resources`",
            ty.name
        ));
    }
    Ok(())
}

/// The arguments of one instance's `keel node`.
fn node_args(head: &str, options: &LocalOptions, dir: &Path, ty: &NodeType, request: u64, id: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["node".into(), "--head".into(), head.into()];
    args.extend(["--token-file".into(), options.token_file.clone().into_os_string()]);
    args.extend(["--work-dir".into(), dir.as_os_str().to_owned()]);
    args.extend(resource_args(&ty.resources).into_iter().map(OsString::from));
    let mut labels = labels_of(ty);
    labels.insert(LAUNCH_LABEL.to_string(), request.to_string());
    labels.insert(INSTANCE_LABEL.to_string(), id.to_string());
    for (k, v) in &labels {
        args.extend(["--labels".into(), format!("{k}={v}").into()]);
    }
    args.extend(options.node_args.iter().map(OsString::from));
    args
}

/// `--cpus` (always: the node's default is the machine's cores), then `--gpus`, `--memory`
/// and `--resources` where the type has them.
fn resource_args(r: &ResourceSet) -> Vec<String> {
    let mut args = vec!["--cpus".to_string(), r.cpu.to_string()];
    if r.gpu != Amount::ZERO {
        args.extend(["--gpus".to_string(), r.gpu.to_string()]);
    }
    if r.memory != Amount::ZERO {
        args.extend(["--memory".to_string(), (r.memory.0 / Amount::SCALE).to_string()]);
    }
    for (name, amount) in &r.custom {
        args.extend(["--resources".to_string(), format!("{name}={amount}")]);
    }
    args
}

/// The last lines of a node's log, for a failure's reason (`": ..."`, or nothing).
fn log_tail(log: &Path) -> String {
    let Ok(bytes) = std::fs::read(log) else { return String::new() };
    let start = bytes.len().saturating_sub(4096);
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[start..]));
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(3)..];
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" | "))
    }
}

/// Drops terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> NodeType {
        NodeType {
            name: "gpu".into(),
            resources: ResourceSet::cpus(4)
                .with_gpu(Amount::from_f64(0.5).unwrap())
                .with_memory_bytes(1 << 30)
                .with_custom("nvme", Amount::units(2)),
            labels: [("zone".to_string(), "a".to_string())].into_iter().collect(),
            min_workers: 0,
            max_workers: 2,
        }
    }

    #[test]
    fn a_node_is_started_with_its_types_resources_and_labels_and_its_launch_and_instance() {
        let options = LocalOptions::new("/bin/keel", "/tmp/token", "/tmp/run");
        let args = node_args("127.0.0.1:6380", &options, Path::new("/tmp/run/gpu-0"), &ty(), 7, "gpu-0");
        let text: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let want = [
            "node",
            "--head",
            "127.0.0.1:6380",
            "--token-file",
            "/tmp/token",
            "--work-dir",
            "/tmp/run/gpu-0",
            "--cpus",
            "4",
            "--gpus",
            "0.5",
            "--memory",
            "1073741824",
            "--resources",
            "nvme=2",
            "--labels",
            "keel.instance=gpu-0",
            "--labels",
            "keel.launch=7",
            "--labels",
            "keel.node-type=gpu",
            "--labels",
            "zone=a",
        ];
        assert_eq!(text, want);
    }

    #[test]
    fn names_that_the_node_flags_would_split_are_refused() {
        assert!(check(&ty()).is_ok());
        let mut t = ty();
        t.labels.insert("rack".into(), "1,2".into());
        assert!(check(&t).unwrap_err().contains("rack=1,2"));
        let mut t = ty();
        t.resources = t.resources.with_custom("a=b", Amount::ONE);
        assert!(check(&t).unwrap_err().contains("`a=b`"));
    }

    #[test]
    fn a_log_tail_is_its_last_lines_without_colours() {
        let dir = std::env::temp_dir().join(format!("keel-provider-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("node.log");
        std::fs::write(&log, "one\n\n\u{1b}[31mtwo\u{1b}[0m\nthree\nfour\n").unwrap();
        assert_eq!(log_tail(&log), ": two | three | four");
        std::fs::write(&log, "").unwrap();
        assert_eq!(log_tail(&log), "");
        assert_eq!(log_tail(&dir.join("missing")), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
