//! `keel up --autoscale` on loopback: the cluster grows from no nodes for a burst of tasks and
//! shrinks back to none once idle, with no process left; a node type whose nodes cannot start
//! is reported as failed launches while the rest of the cluster serves; a bad cluster file is
//! refused, naming the file, the line and the field.

use keel_daemon::client;
use keel_net::wire::ClusterStatus;
use keel_net::Token;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// One type of one CPU, from no nodes to three; quick decisions and a short idle timeout.
const GROWS: &str = r#"
[autoscaler]
period_s = 0.5
idle_timeout_s = 2

[[node_type]]
name = "cpu1"
cpus = 1
min_workers = 0
max_workers = 3
"#;

/// A good type, and a type whose nodes' program fails before they register (`false`, in place
/// of a wrapper script that cannot prepare the machine); one failed launch and the type is left
/// alone.
const ONE_BROKEN: &str = r#"
[autoscaler]
period_s = 0.5
idle_timeout_s = 2
max_launch_failures = 1
failure_backoff_s = 60

[[node_type]]
name = "cpu1"
cpus = 1
max_workers = 2

[[node_type]]
name = "broken"
cpus = 1
gpus = 1
max_workers = 2
program = "false"
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-autoscale-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `keel up --autoscale` process with its own Keel home; killed on drop.
struct Up {
    child: Child,
    home: PathBuf,
    addr: String,
    rt: tokio::runtime::Runtime,
}

impl Up {
    fn start(name: &str, cluster: &str) -> Up {
        let home = scratch(name);
        let file = home.join("cluster.toml");
        std::fs::write(&file, cluster).unwrap();
        let mut child = Command::new(KEEL)
            .args(["up", "--port", "0", "--autoscale"])
            .arg(&file)
            .env("KEEL_HOME", &home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        // The rest is read (and dropped), so that its prints never meet a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        // "keel up: head on ADDR, autoscaling"
        let addr = first.split(" on ").nth(1).and_then(|s| s.split(',').next()).expect(&first).to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Up { child, home, addr, rt }
    }

    fn token_file(&self) -> PathBuf {
        self.home.join("token")
    }

    fn status(&self) -> ClusterStatus {
        let token = Token::load(&self.token_file()).unwrap();
        self.rt.block_on(client::status(&self.addr, &token)).unwrap()
    }

    /// Polls the status until `want` holds.
    fn until(&self, what: &str, within: Duration, want: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if want(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}: {status:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `keel submit ARGS` (the command after `--`), its output piped.
    fn submit(&self, args: &[&str]) -> Child {
        Command::new(KEEL)
            .arg("submit")
            .args(["--address", &self.addr, "--token-file"])
            .arg(self.token_file())
            .args(args)
            .env("KEEL_HOME", &self.home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `keel ARGS` against this cluster, to its end: exit code and standard output.
    fn keel(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(KEEL)
            .args(args)
            .args(["--address", &self.addr, "--token-file"])
            .arg(self.token_file())
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its nodes stop when it dies; wait for them before the directory goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster_processes(&self.home).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The processes of the cluster in `home` (`keel up`, its nodes, their workers, submitters):
/// those whose environment holds `KEEL_HOME=home`. Pid and command line.
fn cluster_processes(home: &Path) -> Vec<(u32, String)> {
    let mark = format!("KEEL_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmdline.trim().to_string()));
        }
    }
    found
}

/// Waits for `child` to end: exit code, standard output and error.
fn finish(mut child: Child, within: Duration, mut meanwhile: impl FnMut()) -> (i32, String, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a submitted task did not end within {within:?}");
        meanwhile();
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn a_burst_of_tasks_grows_the_cluster_from_no_nodes_and_it_shrinks_back_to_none_once_idle() {
    let mut up = Up::start("grows", GROWS);
    assert!(up.status().nodes.is_empty(), "no node before there is work");
    let submits: Vec<Child> =
        (0..3).map(|i| up.submit(&["--", "sh", "-c", &format!("sleep 2; echo task {i} done")])).collect();
    let grown = up.until("more than one node registers", Duration::from_secs(25), |s| s.nodes.len() > 1);
    let mut most = grown.nodes.len();
    for node in &grown.nodes {
        assert_eq!(node.labels.get("keel.node-type").map(String::as_str), Some("cpu1"), "{node:?}");
        assert!(node.labels.contains_key("keel.launch") && node.labels.contains_key("keel.instance"), "{node:?}");
    }
    for (i, submit) in submits.into_iter().enumerate() {
        let (code, out, err) = finish(submit, Duration::from_secs(25), || most = most.max(up.status().nodes.len()));
        assert_eq!(code, 0, "task {i}: {out}{err}");
        assert_eq!(out.trim(), format!("task {i} done"), "{err}");
    }
    assert!(most <= 3, "more nodes than max_workers: {most}");
    // Idle for idle_timeout_s, the nodes are stopped; the head forgets them at its next
    // decision, and a node it stopped is no loss.
    let done = up.until("every node is stopped", Duration::from_secs(25), |s| s.nodes.is_empty());
    assert_eq!((done.tasks_finished, done.tasks_failed), (3, 0), "{done:#?}");
    assert_eq!(done.nodes_lost, 0, "{done:#?}");
    let autoscaler = done.autoscaler.expect("the head reports its autoscaler");
    assert_eq!((autoscaler.launches_failed, autoscaler.launching.len()), (0, 0), "{autoscaler:#?}");
    // Only `keel up` is left of the cluster: no node process, no worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = cluster_processes(&up.home);
        if left.iter().all(|(pid, _)| *pid == up.child.id()) {
            break;
        }
        assert!(Instant::now() < deadline, "processes left after the nodes stopped: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `keel stop` ends it.
    let (code, out) = up.keel(&["stop"]);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "keel up did not end after keel stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up.child.try_wait().unwrap().is_some_and(|s| s.success()));
}

#[test]
fn a_type_whose_nodes_cannot_start_fails_its_launches_and_the_cluster_goes_on() {
    let mut up = Up::start("broken", ONE_BROKEN);
    // Only a `broken` node could run this one: it waits while its launch fails.
    let mut waits = up.submit(&["--gpus", "1", "--", "true"]);
    let status = up.until("the broken type is left alone", Duration::from_secs(25), |s| {
        s.autoscaler.as_ref().is_some_and(|a| a.backing_off.iter().any(|(ty, _)| ty == "broken"))
    });
    let autoscaler = status.autoscaler.clone().unwrap();
    assert!(autoscaler.launches_failed >= 1, "{autoscaler:#?}");
    let reason = autoscaler.last_launch_failure.unwrap_or_default();
    assert!(reason.contains("`broken`") && reason.contains("before it registered"), "{reason}");
    assert_eq!(status.tasks_failed, 0, "the waiting task is not failed: {status:#?}");
    assert!(waits.try_wait().unwrap().is_none(), "the GPU task waits for a node");
    // The cluster still serves: a CPU task gets a `cpu1` node and runs.
    let (code, out, err) = finish(up.submit(&["--", "sh", "-c", "echo served"]), Duration::from_secs(25), || {});
    assert_eq!((code, out.trim()), (0, "served"), "{err}");
    // `keel status` shows it, as text and as JSON.
    let (code, text) = up.keel(&["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("backing off  broken") && text.contains("last failed launch: "), "{text}");
    let (code, json) = up.keel(&["status", "--json"]);
    assert_eq!(code, 0, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["autoscaler"]["backing_off"][0]["node_type"], "broken", "{json}");
    // No broken node is left running.
    let left = cluster_processes(&up.home);
    assert!(!left.iter().any(|(_, cmd)| cmd.contains("keel.node-type=broken")), "{left:?}");
    // Killed without a goodbye, `keel up` leaves no node or worker behind.
    let _ = waits.kill();
    let _ = waits.wait();
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = cluster_processes(&up.home);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes outlived keel up: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_cluster_file_is_refused_naming_the_file_the_line_and_the_field() {
    let home = scratch("bad-file");
    let cases = [
        (
            GROWS.replace("min_workers = 0", "min_workers = 5"),
            "line 9: node_type[0].min_workers: 5 is above max_workers (3)",
        ),
        (GROWS.replace("period_s = 0.5", "period_s = 0"), "line 3: autoscaler.period_s: 0 s is not a duration"),
        (GROWS.replace("cpus = 1", "cpus = 1\ncolour = \"red\""), "unknown field `colour`"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = home.join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(KEEL)
            .args(["up", "--port", "0", "--autoscale"])
            .arg(&file)
            .env("KEEL_HOME", &home)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("{}: ", file.display())), "the file is named: {stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in: {stderr}");
    }
    let out = Command::new(KEEL)
        .args(["up", "--port", "0", "--autoscale"])
        .arg(home.join("missing.toml"))
        .env("KEEL_HOME", &home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
    // Nothing was started: no address was written.
    assert!(!home.join("address").exists());
    let _ = std::fs::remove_dir_all(&home);
}
