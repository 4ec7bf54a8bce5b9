//! The local provider with stand-in `keel` executables (shell scripts): failed starts, nodes that
//! exit before registering, stops with and without a grace period, registration deadlines and
//! shutdown, with no process left behind.

use keel_kernel::autoscaler::NodeType;
use keel_kernel::ids::NodeId;
use keel_kernel::proto::Labels;
use keel_kernel::ResourceSet;
use keel_provider::local::{LocalOptions, LocalProvider};
use keel_provider::{Events, Provider, ProviderEvent, INSTANCE_LABEL};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// A node that runs until `SIGTERM`.
const SERVES: &str = "trap 'exit 0' TERM; while :; do sleep 0.05; done";
/// A node that ignores `SIGTERM`, and says so once it does (a signal before its `trap` would
/// still stop it).
const STUBBORN: &str = "trap '' TERM; : > \"$work/trapped\"; while :; do sleep 0.05; done";
/// Instance `*-1` ignores `SIGTERM`, the others stop on it.
const MIXED: &str = "case \"$work\" in *-1) trap '' TERM;; *) trap 'exit 0' TERM;; esac; while :; do sleep 0.05; done";
/// A node that refuses its flags.
const REFUSES: &str = "echo \"error: unexpected argument '--bogus' found\" >&2; exit 2";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-provider-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stand-in `keel` that writes its arguments to `args` in its work directory, then runs `body`.
fn fake_keel(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("keel");
    let script = format!(
        "#!/bin/sh\nprev=''\nfor a in \"$@\"; do [ \"$prev\" = --work-dir ] && work=\"$a\"; prev=\"$a\"; done\n\
         printf '%s\\n' \"$@\" > \"$work/args\"\n{body}\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn node_type(name: &str) -> NodeType {
    NodeType {
        name: name.into(),
        resources: ResourceSet::cpus(1),
        labels: Labels::new(),
        min_workers: 0,
        max_workers: 4,
    }
}

fn provider(
    dir: &Path,
    body: &str,
    tweak: impl FnOnce(&mut LocalOptions),
) -> (LocalProvider, UnboundedReceiver<ProviderEvent>) {
    let mut options = LocalOptions::new(fake_keel(dir, body), dir.join("token"), dir.join("run"));
    options.grace = Duration::from_millis(300);
    tweak(&mut options);
    let mut p = LocalProvider::new(options);
    let (events, rx) = Events::channel();
    p.attach("127.0.0.1:6380".parse().unwrap(), events);
    (p, rx)
}

async fn next_event(rx: &mut UnboundedReceiver<ProviderEvent>) -> ProviderEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("an event within 10 s").expect("open")
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn labels_of_instance(id: &str) -> Labels {
    [(INSTANCE_LABEL.to_string(), id.to_string())].into_iter().collect()
}

#[tokio::test]
async fn a_node_that_cannot_be_started_fails_its_launch() {
    let dir = scratch("no-exe");
    let mut p = LocalProvider::new(LocalOptions::new(dir.join("missing-keel"), dir.join("token"), dir.join("run")));
    let (events, mut rx) = Events::channel();
    p.attach("127.0.0.1:6380".parse().unwrap(), events);
    p.launch(3, &node_type("cpu"), 2);
    let ProviderEvent::LaunchFailed { request, reason } = next_event(&mut rx).await else { panic!("not a failure") };
    assert_eq!(request, 3);
    assert!(reason.contains("cannot start") && reason.contains("missing-keel"), "{reason}");
    assert!(p.instances().is_empty());
    assert!(rx.try_recv().is_err(), "a request fails once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nodes_that_exit_before_registering_fail_their_launch_once_quoting_their_log() {
    let dir = scratch("refuses");
    let (mut p, mut rx) = provider(&dir, REFUSES, |_| {});
    p.launch(1, &node_type("bad"), 2);
    let ProviderEvent::LaunchFailed { request, reason } = next_event(&mut rx).await else { panic!("not a failure") };
    assert_eq!(request, 1);
    assert!(reason.contains("before it registered"), "{reason}");
    assert!(reason.contains("unexpected argument '--bogus'"), "the node's own words: {reason}");
    assert!(reason.contains("`bad`"), "the type: {reason}");
    until("both processes are reaped", || p.instances().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "the second node's exit is the same failed request");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_registered_node_is_stopped_on_terminate_and_its_exit_is_no_failure() {
    let dir = scratch("terminate");
    let (mut p, mut rx) = provider(&dir, SERVES, |_| {});
    let mut ty = node_type("cpu");
    ty.labels.insert("zone".into(), "a".into());
    p.launch(4, &ty, 1);
    let instance = p.instances().pop().expect("one instance");
    assert_eq!((instance.id.as_str(), instance.request, instance.node), ("cpu-0", 4, None));
    let args_file = dir.join("run").join("cpu-0").join("args");
    until("the node wrote its arguments", || std::fs::read_to_string(&args_file).is_ok_and(|s| s.contains("zone=a")))
        .await;
    let args = std::fs::read_to_string(&args_file).unwrap();
    for want in
        ["--head\n127.0.0.1:6380\n", "--cpus\n1\n", "keel.launch=4\n", "keel.instance=cpu-0\n", "keel.node-type=cpu\n"]
    {
        assert!(args.contains(want), "{want:?} missing from {args:?}");
    }
    p.registered(NodeId(9), &labels_of_instance("cpu-0"));
    assert_eq!(p.instances()[0].node, Some(NodeId(9)));
    p.terminate(NodeId(9), &labels_of_instance("cpu-0"));
    until("the node is reaped", || p.instances().is_empty()).await;
    assert!(!alive(instance.pid));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "a stopped node is no failure");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = scratch("stubborn");
    let (mut p, mut rx) = provider(&dir, STUBBORN, |_| {});
    p.launch(0, &node_type("cpu"), 1);
    let pid = p.instances()[0].pid;
    let trapped = dir.join("run").join("cpu-0").join("trapped");
    until("the node ignores SIGTERM", || trapped.exists()).await;
    p.registered(NodeId(2), &labels_of_instance("cpu-0"));
    // Found by its node id alone.
    let started = Instant::now();
    p.terminate(NodeId(2), &Labels::new());
    until("the node is reaped", || p.instances().is_empty()).await;
    assert!(started.elapsed() >= Duration::from_millis(300), "killed before the grace period ended");
    assert!(!alive(pid));
    assert!(rx.try_recv().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_not_registered_in_time_is_stopped_and_its_launch_fails() {
    let dir = scratch("slow");
    let (mut p, mut rx) = provider(&dir, SERVES, |o| o.register_within = Some(Duration::from_millis(300)));
    p.launch(6, &node_type("cpu"), 1);
    let pid = p.instances()[0].pid;
    let ProviderEvent::LaunchFailed { request, reason } = next_event(&mut rx).await else { panic!("not a failure") };
    assert_eq!(request, 6);
    assert!(reason.contains("did not register within 0.3 s"), "{reason}");
    until("the node is reaped", || p.instances().is_empty()).await;
    assert!(!alive(pid));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_stops_every_node_and_later_launches_fail() {
    let dir = scratch("shutdown");
    // The second node ignores SIGTERM.
    let (mut p, mut rx) = provider(&dir, MIXED, |_| {});
    p.launch(0, &node_type("cpu"), 3);
    let pids: Vec<u32> = p.instances().iter().map(|i| i.pid).collect();
    assert_eq!(pids.len(), 3);
    for i in 0..3 {
        let args_file = dir.join("run").join(format!("cpu-{i}")).join("args");
        until("the node started", || args_file.exists()).await;
    }
    tokio::time::timeout(Duration::from_secs(10), p.shutdown()).await.expect("shutdown within 10 s");
    assert!(p.instances().is_empty());
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the shutdown");
    }
    assert!(rx.try_recv().is_err(), "stopped nodes are no failures");
    p.launch(1, &node_type("cpu"), 1);
    let ProviderEvent::LaunchFailed { request, reason } = next_event(&mut rx).await else { panic!("not a failure") };
    assert_eq!(request, 1);
    assert!(reason.contains("shutting down"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrapper_that_does_not_exec_leaves_no_node_behind_when_stopped() {
    let dir = scratch("wrapper");
    // The wrapper runs the "node" as its child (which ignores SIGTERM) and waits for it.
    let body = "sh -c \"trap '' TERM; while :; do sleep 0.05; done\" & echo $! > \"$work/child\"; wait";
    let (mut p, mut rx) = provider(&dir, body, |_| {});
    p.launch(7, &node_type("wrapped"), 1);
    until("the instance starts", || p.instances().len() == 1).await;
    let id = p.instances()[0].id.clone();
    let child_file = dir.join("run").join(&id).join("child");
    until("the wrapper starts its node", || std::fs::read_to_string(&child_file).is_ok_and(|s| s.ends_with('\n')))
        .await;
    let child: u32 = std::fs::read_to_string(&child_file).unwrap().trim().parse().unwrap();
    let node = NodeId(5);
    p.registered(node, &labels_of_instance(&id));
    p.terminate(node, &labels_of_instance(&id));
    until("the instance is reaped", || p.instances().is_empty()).await;
    until("the wrapper's node is gone too", || !alive(child)).await;
    assert!(rx.try_recv().is_err(), "a stopped node is no failed launch");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn when_one_node_of_a_request_fails_its_unregistered_siblings_are_stopped() {
    let dir = scratch("siblings");
    let body = "case \"$work\" in *-0) exit 3;; *) trap 'exit 0' TERM; while :; do sleep 0.05; done;; esac";
    let (mut p, mut rx) = provider(&dir, body, |_| {});
    p.launch(9, &node_type("cpu"), 2);
    let ProviderEvent::LaunchFailed { request, .. } = next_event(&mut rx).await else { panic!("not a failure") };
    assert_eq!(request, 9);
    // The sibling would register late, on top of whatever the Head launches instead.
    until("the sibling is stopped and reaped", || p.instances().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "the request failed once");
    let _ = std::fs::remove_dir_all(&dir);
}
