//! The real cluster on loopback: a head and nodes as daemons (in this process, or as `keel`
//! processes), worker processes, command tasks, bad peers and failures.

use keel_daemon::client::{self, Driver, SubmitOptions, SubmitOutcome};
use keel_daemon::head::{self, HeadHandle, HeadOptions};
use keel_daemon::node::{self, NodeHandle, NodeOptions};
use keel_kernel::errors::{ErrorReason, TaskFailure};
use keel_kernel::proto::{DriverToHead, Function, HeadToDriver, TaskSpec};
use keel_kernel::ResourceSet;
use keel_net::wire::{FromHead, PeerFrame, WorkerProgram};
use keel_net::{NetError, Token};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn token() -> Token {
    Token::from_bytes(b"a-test-cluster-token-0123456789").unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-cluster-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A head and nodes in this process; their workers are `keel worker` processes.
struct Local {
    head: HeadHandle,
    nodes: Vec<NodeHandle>,
    dir: PathBuf,
}

impl Local {
    async fn start(name: &str, nodes: usize, tweak: impl FnOnce(&mut HeadOptions)) -> Local {
        let dir = scratch(name);
        let mut options = HeadOptions::new("127.0.0.1:0", token());
        tweak(&mut options);
        let head = head::start(options).await.unwrap();
        let mut handles = Vec::new();
        for i in 0..nodes {
            let (work, store) = (dir.join(format!("node-{i}")), dir.join(format!("store-{i}")));
            let worker = WorkerProgram::new(KEEL, vec!["worker".into()]);
            let options = NodeOptions::new(head.addr().to_string(), token(), ResourceSet::cpus(1), work, store, worker);
            handles.push(node::start(options).await.unwrap());
        }
        let local = Local { head, nodes: handles, dir };
        local.wait_for_nodes(nodes).await;
        local
    }

    fn addr(&self) -> String {
        self.head.addr().to_string()
    }

    async fn wait_for_nodes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = client::status(&self.addr(), &token()).await.unwrap();
            if status.nodes.len() == n {
                return;
            }
            assert!(Instant::now() < deadline, "{} of {n} nodes registered", status.nodes.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn submit(&self, argv: &[&str]) -> (SubmitOutcome, Vec<u8>) {
        let mut out = Vec::new();
        let options =
            SubmitOptions { resources: ResourceSet::cpus(1), labels: Vec::new(), max_retries: 3, name: "test".into() };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let outcome = client::submit_command(&self.addr(), &token(), argv, options, |c| out.extend_from_slice(&c.data))
            .await
            .unwrap();
        (outcome, out)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.abort();
        }
        self.head.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_task_streams_its_output_and_returns_its_exit_code() {
    let cluster = Local::start("exit-code", 2, |_| {}).await;
    let (outcome, out) = cluster.submit(&["sh", "-c", "echo hello; echo to-stderr >&2; exit 7"]).await;
    assert_eq!(outcome, SubmitOutcome::Exited(7));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("hello\n") && text.contains("to-stderr\n"), "{text:?}");
    let (outcome, _) = cluster.submit(&["true"]).await;
    assert_eq!(outcome, SubmitOutcome::Exited(0));
    let status = client::status(&cluster.addr(), &token()).await.unwrap();
    assert_eq!(status.tasks_finished, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_function_name_fails_the_task_with_a_clear_error() {
    let cluster = Local::start("unknown-fn", 1, |_| {}).await;
    let mut driver = Driver::connect(&cluster.addr(), &token(), "unknown").await.unwrap();
    let spec = TaskSpec::calling(driver.task_id(0), driver.job(), Function::Named("no_such_function".into()));
    let object = spec.return_ids().next().unwrap();
    driver.send(DriverToHead::SubmitTask(Arc::new(spec))).await.unwrap();
    driver.send(DriverToHead::Subscribe(vec![object])).await.unwrap();
    let reason = loop {
        if let FromHead::Driver(HeadToDriver::ObjectFailed { reason, .. }) = driver.recv().await.unwrap() {
            break reason;
        }
    };
    match &reason {
        ErrorReason::TaskFailed { failure: TaskFailure::UnknownFunction { name }, .. } => {
            assert_eq!(name, "no_such_function")
        }
        other => panic!("expected an unknown-function failure, got {other:?}"),
    }
    assert!(reason.to_string().contains("\"no_such_function\" is not registered"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_request_fails_fast_naming_what_no_node_has() {
    let cluster = Local::start("infeasible", 1, |o| {
        o.config.infeasible_grace = keel_kernel::Duration::from_millis(200);
    })
    .await;
    let options =
        SubmitOptions { resources: ResourceSet::cpus(64), labels: Vec::new(), max_retries: 0, name: "big".into() };
    let started = Instant::now();
    let outcome =
        client::submit_command(&cluster.addr(), &token(), vec!["true".into()], options, |_| {}).await.unwrap();
    match outcome {
        SubmitOutcome::Failed(reason @ ErrorReason::Infeasible { .. }) => {
            assert!(reason.to_string().contains("CPU: 64"), "{reason}")
        }
        other => panic!("expected infeasible, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_the_cluster_keeps_serving() {
    let cluster = Local::start("token", 1, |_| {}).await;
    let wrong = Token::from_bytes(b"not-the-cluster-token-at-all!!").unwrap();
    let err = client::status(&cluster.addr(), &wrong).await.unwrap_err();
    assert!(err.to_string().contains("wrong token"), "{err}");
    let err = Driver::connect(&cluster.addr(), &wrong, "intruder").await.err().expect("refused");
    assert!(matches!(err, client::ClientError::Net(NetError::Handshake { .. })), "{err}");
    assert_eq!(cluster.submit(&["true"]).await.0, SubmitOutcome::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_link_takes_the_token_refuses_a_foreign_role_and_closes_as_a_connection_does() {
    use keel_daemon::conn::Outbound;
    use keel_kernel::proto::{Hello, NodeToHead, Welcome, PROTOCOL_VERSION};
    use keel_net::wire::{Register, ToHead};
    let cluster = Local::start("local-link", 1, |_| {}).await;
    let register = || Register::Driver {
        hello: Hello::RegisterJob { version: PROTOCOL_VERSION, name: "in-process".into() },
        program: None,
        resume: None,
    };
    let wrong = Token::from_bytes(b"not-the-cluster-token-at-all!!").unwrap();
    assert!(head::connect_local(&cluster.addr(), &wrong, register).is_none(), "a wrong token gets no link");
    assert!(head::connect_local("127.0.0.1:1", &token(), register).is_none(), "no head listens there");
    let jobs = || async { client::status(&cluster.addr(), &token()).await.unwrap().jobs };

    // A driver's link: welcomed with a job, which the head lists.
    let mut link = head::connect_local(&cluster.addr(), &token(), register).expect("the head runs in this process");
    let job = match link.from_head.recv().await {
        Some(Outbound::Frame(FromHead::Welcome(Welcome::JobRegistered(job)))) => job,
        other => panic!("expected a job, got {other:?}"),
    };
    assert!(jobs().await.iter().any(|(j, _)| *j == job));
    // A node's message on a driver's link closes that link, and only it.
    assert!(link.to_head.send(ToHead::Node(NodeToHead::Heartbeat)));
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match link.from_head.recv().await {
                Some(Outbound::Close) | None => return,
                Some(Outbound::Frame(_)) => {}
            }
        }
    });
    assert!(closed.await.is_ok(), "the head closes the link");
    drop(link);
    let deadline = Instant::now() + Duration::from_secs(5);
    while jobs().await.iter().any(|(j, _)| *j == job) {
        assert!(Instant::now() < deadline, "the job of a closed link is forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node, also linked in this process, still serves.
    assert_eq!(cluster.submit(&["true"]).await.0, SubmitOutcome::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_message_over_the_heads_frame_limit_closes_that_link_and_no_other() {
    use keel_daemon::conn::Outbound;
    use keel_kernel::proto::{Hello, Welcome, PROTOCOL_VERSION};
    use keel_net::wire::{Register, ToHead};
    let cluster = Local::start("local-limit", 1, |o| o.max_frame = 64 << 10).await;
    let register = || Register::Driver {
        hello: Hello::RegisterJob { version: PROTOCOL_VERSION, name: "in-process".into() },
        program: None,
        resume: None,
    };
    let mut link = head::connect_local(&cluster.addr(), &token(), register).expect("the head runs in this process");
    let job = match link.from_head.recv().await {
        Some(Outbound::Frame(FromHead::Welcome(Welcome::JobRegistered(job)))) => job,
        other => panic!("expected a job, got {other:?}"),
    };
    let object = keel_kernel::ObjectId::for_put(keel_kernel::ids::TaskId::driver(job), 1);
    let put = |size: usize| DriverToHead::Put {
        object,
        size: size as u64,
        inline: Some(vec![7; size]),
        node: None,
        nested: vec![],
    };
    assert!(!link.to_head.send(ToHead::Driver(put(100 << 10))), "a message over the limit was taken");
    assert!(!link.to_head.send(ToHead::Driver(put(10))), "the link stays open after an oversized message");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Outbound::Frame(_)) = link.from_head.recv().await {}
    });
    assert!(closed.await.is_ok(), "the head closes the link");
    // The node's link, and the cluster, are untouched.
    assert_eq!(cluster.submit(&["true"]).await.0, SubmitOutcome::Exited(0));
}

/// Reads an object's bytes from a node's data port, as a driver on another machine does.
async fn fetch(addr: &str, object: keel_kernel::ObjectId) -> Option<Vec<u8>> {
    let (mut r, mut w) = keel_daemon::conn::dial(addr, &token(), 4 << 20).await.unwrap();
    w.send(&PeerFrame::Fetch { object }).await.unwrap();
    let mut bytes = Vec::new();
    loop {
        match r.recv::<PeerFrame>("chunk").await.unwrap() {
            PeerFrame::Chunk { data, last, .. } => {
                bytes.extend_from_slice(&data);
                if last {
                    return Some(bytes);
                }
            }
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_put_uploaded_to_a_node_is_served_from_there_and_bad_uploads_are_refused() {
    let cluster = Local::start("upload", 1, |_| {}).await;
    let node = client::status(&cluster.addr(), &token()).await.unwrap().nodes.remove(0);
    let mut driver = Driver::connect(&cluster.addr(), &token(), "uploader").await.unwrap();
    let me = keel_kernel::ids::TaskId::driver(driver.job());
    let object = keel_kernel::ObjectId::for_put(me, 1);
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 239) as u8).collect();

    // Cut off after its first chunk: nothing is kept, and the same put can be sent again.
    {
        let (_r, mut w) = keel_daemon::conn::dial(&node.addr, &token(), 4 << 20).await.unwrap();
        w.feed(&PeerFrame::Upload { object, total: bytes.len() as u64 }).await.unwrap();
        let first = PeerFrame::Chunk {
            object,
            total: bytes.len() as u64,
            offset: 0,
            data: bytes[..1000].to_vec(),
            last: false,
        };
        w.send(&first).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch(&node.addr, object).await, None, "a cut upload is not served");

    let stored = client::upload_put(&node.addr, &token(), object, &bytes).await.unwrap();
    assert_eq!(stored, node.id);
    let again = client::upload_put(&node.addr, &token(), object, &bytes).await.unwrap_err();
    assert!(matches!(&again, client::ClientError::Refused(why) if why.contains("already")), "{again}");
    // A claimed adoption of bytes that are not in the store, and a put id that is no put's.
    let missing = keel_kernel::ObjectId::for_put(me, 2);
    let err = client::adopt_put(&node.addr, &token(), missing, 10).await.unwrap_err();
    assert!(matches!(err, client::ClientError::Refused(_)), "{err}");
    let not_a_put = keel_kernel::ObjectId::for_return(me, 1);
    let err = client::upload_put(&node.addr, &token(), not_a_put, &[1, 2, 3]).await.unwrap_err();
    assert!(matches!(&err, client::ClientError::Refused(why) if why.contains("not a put")), "{err}");

    // The driver tells the head where its put is; the head then points readers at the node.
    let size = bytes.len() as u64;
    driver.send(DriverToHead::Put { object, size, inline: None, node: Some(node.id), nested: vec![] }).await.unwrap();
    driver.send(DriverToHead::Subscribe(vec![object])).await.unwrap();
    let data = loop {
        if let FromHead::Driver(HeadToDriver::ObjectReady { object: o, data, .. }) = driver.recv().await.unwrap() {
            assert_eq!(o, object);
            break data;
        }
    };
    assert_eq!(data, keel_kernel::proto::ObjectData::At(vec![node.id]));
    assert_eq!(fetch(&node.addr, object).await.as_deref(), Some(&bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_resuming_while_the_head_still_holds_its_old_connection_takes_the_job_over() {
    // A driver that stopped hearing from the head (a stalled link) resumes on a new connection
    // while the head still holds the old one: the newer connection wins, the job goes on.
    let cluster = Local::start("resume-over", 1, |_| {}).await;
    let mut old = Driver::connect(&cluster.addr(), &token(), "stalled").await.unwrap();
    let job = old.job();
    let mut new = Driver::resume(&cluster.addr(), &token(), job).await.unwrap();
    assert_eq!(new.job(), job);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if old.recv().await.is_err() {
                return;
            }
        }
    });
    assert!(closed.await.is_ok(), "the head closes the replaced connection");
    let object = keel_kernel::ObjectId::for_put(keel_kernel::ids::TaskId::driver(job), 1);
    let put = DriverToHead::Put { object, size: 3, inline: Some(vec![1, 2, 3]), node: None, nested: vec![] };
    new.send(put).await.unwrap();
    new.send(DriverToHead::Subscribe(vec![object])).await.unwrap();
    loop {
        match new.recv().await.unwrap() {
            FromHead::Driver(HeadToDriver::ObjectReady { object: o, .. }) if o == object => break,
            FromHead::Driver(HeadToDriver::ObjectFailed { reason, .. }) => panic!("the job ended: {reason:?}"),
            _ => {}
        }
    }
    let status = client::status(&cluster.addr(), &token()).await.unwrap();
    assert!(status.jobs.iter().any(|(j, _)| *j == job), "the job still runs: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_that_never_authenticate_is_capped_and_harms_no_connected_user() {
    let cluster = Local::start("flood", 1, |_| {}).await;
    let mut driver = Driver::connect(&cluster.addr(), &token(), "steady").await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..keel_net::handshake::MAX_PENDING_HANDSHAKES {
        flood.push(tokio::net::TcpStream::connect(cluster.addr()).await.unwrap());
    }
    // Let the head accept them all; the next one is closed at once instead of waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = tokio::net::TcpStream::connect(cluster.addr()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut extra, &mut buf);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), read).await.is_ok(),
        "a connection over the cap is closed at once"
    );
    // A driver already connected is served as before.
    let object = keel_kernel::ObjectId::for_put(keel_kernel::ids::TaskId::driver(driver.job()), 1);
    let put = DriverToHead::Put { object, size: 1, inline: Some(vec![9]), node: None, nested: vec![] };
    driver.send(put).await.unwrap();
    driver.send(DriverToHead::Subscribe(vec![object])).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let FromHead::Driver(HeadToDriver::ObjectReady { .. }) = driver.recv().await.unwrap() {
                return;
            }
        }
    });
    assert!(answered.await.is_ok(), "the connected driver is still served during the flood");
    // Once the flood goes, new connections are welcome again.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client::status(&cluster.addr(), &token()).await.unwrap().nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upload_of_the_same_object_is_refused_without_touching_the_one_in_progress() {
    let cluster = Local::start("dupupload", 1, |_| {}).await;
    let node = client::status(&cluster.addr(), &token()).await.unwrap().nodes.remove(0);
    let driver = Driver::connect(&cluster.addr(), &token(), "uploader").await.unwrap();
    let object = keel_kernel::ObjectId::for_put(keel_kernel::ids::TaskId::driver(driver.job()), 1);
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 239) as u8).collect();
    let total = bytes.len() as u64;
    let (mut first_r, mut first_w) = keel_daemon::conn::dial(&node.addr, &token(), 4 << 20).await.unwrap();
    first_w.feed(&PeerFrame::Upload { object, total }).await.unwrap();
    let start = PeerFrame::Chunk { object, total, offset: 0, data: bytes[..1000].to_vec(), last: false };
    first_w.send(&start).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another client sends the same object meanwhile: refused, and its chunks and its close go nowhere.
    let second = client::upload_put(&node.addr, &token(), object, &bytes).await.unwrap_err();
    assert!(matches!(&second, client::ClientError::Refused(why) if why.contains("already")), "{second}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = PeerFrame::Chunk { object, total, offset: 1000, data: bytes[1000..].to_vec(), last: true };
    first_w.send(&rest).await.unwrap();
    let answer = first_r.recv::<PeerFrame>("answer").await.unwrap();
    assert!(matches!(answer, PeerFrame::Stored { .. }), "the first upload completes: {answer:?}");
    assert_eq!(fetch(&node.addr, object).await.as_deref(), Some(&bytes[..]));
}

/// Sends `bytes` and checks that the peer closes the connection (reading reaches its end).
async fn send_raw(addr: &str, bytes: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf);
    let closed = tokio::time::timeout(Duration::from_secs(5), read).await;
    assert!(closed.is_ok(), "{addr} kept the connection open after {} bad bytes", bytes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let cluster = Local::start("garbage", 2, |o| o.max_frame = 1 << 20).await;
    let data = cluster.nodes[0].data_addr().to_string();
    for addr in [cluster.addr(), data] {
        // Garbage instead of a handshake.
        send_raw(&addr, b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n").await;
        // A length prefix of 3 GiB.
        send_raw(&addr, &(3u32 << 30).to_le_bytes()).await;
    }
    // An authenticated driver that then sends an oversized frame, and one that sends garbage.
    for bad in [vec![0xff; 16], vec![]] {
        let (_r, mut w) = keel_daemon::conn::dial(&cluster.addr(), &token(), 4 << 20).await.unwrap();
        // The head may close before the whole frame is written: a failed write is expected.
        if bad.is_empty() {
            let _ = w.send(&vec![0u8; 2 << 20]).await;
        } else {
            let _ = w.feed_bytes(bad.into()).await;
            let _ = w.flush().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = client::status(&cluster.addr(), &token()).await.unwrap();
    assert_eq!(status.nodes.len(), 2);
    assert_eq!(
        cluster.submit(&["sh", "-c", "echo still fine"]).await,
        (SubmitOutcome::Exited(0), b"still fine\n".to_vec())
    );
}

/// A `keel` process whose stdout lines can be read; killed on drop.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str], home: &Path) -> Proc {
        let mut child = Command::new(KEEL)
            .args(args)
            .env("KEEL_HOME", home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines: rx }
    }

    fn line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).expect("a line of output")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keel head` and three `keel node` processes.
struct Processes {
    head: Proc,
    nodes: Vec<(Proc, PathBuf)>,
    home: PathBuf,
    addr: String,
}

impl Processes {
    fn start(name: &str) -> Processes {
        let home = scratch(name);
        let state = home.join("head");
        let head = Proc::spawn(
            &["head", "--port", "0", "--state-dir", state.to_str().unwrap(), "--node-timeout-ms", "2500"],
            &home,
        );
        let first = head.line(Duration::from_secs(20));
        let addr = first.rsplit_once(" on ").unwrap().1.split(' ').next().unwrap().to_string();
        let token_file = state.join("token");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = home.join(format!("node-{i}"));
            let p = Proc::spawn(
                &[
                    "node",
                    "--head",
                    &addr,
                    "--token-file",
                    token_file.to_str().unwrap(),
                    "--cpus",
                    "1",
                    "--work-dir",
                    dir.to_str().unwrap(),
                ],
                &home,
            );
            nodes.push((p, dir));
        }
        let processes = Processes { head, nodes, home, addr };
        processes.wait_for_nodes(3);
        processes
    }

    fn token(&self) -> Token {
        Token::load(&self.home.join("head").join("token")).unwrap()
    }

    fn wait_for_nodes(&self, n: usize) {
        wait_for_nodes(&self.addr, &self.home, n);
    }

    fn submit(&self, script: &str) -> Proc {
        submit(&self.addr, &self.home, script)
    }
}

/// Waits until `n` nodes are registered with the head whose state is in `home/head`.
fn wait_for_nodes(addr: &str, home: &Path, n: usize) {
    let token = Token::load(&home.join("head").join("token")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = rt.block_on(client::status(addr, &token)).map(|s| s.nodes.len()).unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{count} of {n} nodes registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `keel submit -- sh -c SCRIPT` against that head.
fn submit(addr: &str, home: &Path, script: &str) -> Proc {
    let token_file = home.join("head").join("token");
    Proc::spawn(
        &["submit", "--address", addr, "--token-file", token_file.to_str().unwrap(), "--", "sh", "-c", script],
        home,
    )
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = self.head.child.kill();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "the process did not end in {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_killed_mid_task_is_declared_dead_and_the_task_finishes_elsewhere() {
    let mut cluster = Processes::start("kill-node");
    // The task says which node runs it (its worker's socket is in the node's directory), then works.
    let mut submit = cluster.submit("echo $KEEL_WORKER_SOCKET; sleep 2; echo finished");
    let socket = submit.line(Duration::from_secs(20));
    let victim =
        cluster.nodes.iter().position(|(_, dir)| socket.starts_with(dir.to_str().unwrap())).expect("a node ran it");
    let (mut proc, _) = cluster.nodes.remove(victim);
    proc.child.kill().unwrap(); // SIGKILL: no goodbye to the head
    let _ = proc.child.wait();
    // The second attempt runs on another node and prints its socket, then finishes.
    let again = submit.line(Duration::from_secs(30));
    assert_ne!(again, socket, "the retry ran on the dead node");
    assert_eq!(submit.line(Duration::from_secs(30)), "finished");
    assert_eq!(wait_exit(&mut submit, Duration::from_secs(10)), 0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(client::status(&cluster.addr, &cluster.token())).unwrap();
    assert_eq!((status.nodes.len(), status.nodes_lost), (2, 1));
}

#[test]
fn a_killed_worker_process_is_retried_and_the_retry_succeeds() {
    let cluster = Processes::start("kill-worker");
    let mark = cluster.home.join("first-attempt-ran");
    // The first attempt kills its own worker process ($PPID is `keel worker`), once its first line
    // has had time to travel; the retry finishes.
    let script = format!(
        "if [ ! -e {m} ]; then touch {m}; echo first; sleep 0.5; kill -9 $PPID; sleep 5; fi; echo second",
        m = mark.display()
    );
    let mut submit = cluster.submit(&script);
    assert_eq!(submit.line(Duration::from_secs(20)), "first");
    assert_eq!(submit.line(Duration::from_secs(20)), "second");
    assert_eq!(wait_exit(&mut submit, Duration::from_secs(10)), 0);
}

#[test]
fn a_node_paused_past_its_timeout_is_declared_dead_and_registers_again_when_it_resumes() {
    let cluster = Processes::start("pause-node");
    let pid = cluster.nodes[0].0.child.id() as i32;
    // SAFETY: signals to a child process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client::status(&cluster.addr, &cluster.token())).unwrap().nodes_lost == 0 {
        assert!(Instant::now() < deadline, "the paused node was never declared dead");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // It hears it is unknown, resets, and joins again under a new id: three live nodes again.
    cluster.wait_for_nodes(3);
    let status = rt.block_on(client::status(&cluster.addr, &cluster.token())).unwrap();
    assert_eq!((status.nodes.len(), status.nodes_lost), (3, 1));
    assert!(status.nodes.iter().any(|n| n.id.0 > 3), "no node registered under a new id: {status:?}");
}

#[test]
fn a_map_reduce_on_a_head_and_three_node_processes_gives_the_right_answer() {
    let cluster = Processes::start("wordcount");
    // Seven files whose word counts are known: file i holds i+1 "alpha", 2 "beta", and "gamma{i}".
    let texts = cluster.home.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    let files: Vec<String> = (0..7)
        .map(|i| {
            let path = texts.join(format!("f{i}.txt"));
            let text = format!("{} beta beta gamma{i}\n", vec!["alpha"; i + 1].join(" "));
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        })
        .collect();
    // The driver is the wordcount example; the nodes run it again as their workers.
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().and_then(Path::parent).unwrap().join("examples").join("wordcount");
    assert!(example.exists(), "{} is missing (cargo test builds the examples)", example.display());
    let out = Command::new(&example)
        .args(&files)
        .env("KEEL_ADDRESS", &cluster.addr)
        .env("KEEL_TOKEN_FILE", cluster.home.join("head").join("token"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("7 files, 9 distinct words"), "{stdout}");
    let count = |word: &str| {
        stdout.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let n = parts.next()?.parse::<u64>().ok()?;
            (parts.next()? == word).then_some(n)
        })
    };
    assert_eq!((count("alpha"), count("beta"), count("gamma3")), (Some(28), Some(14), Some(1)), "{stdout}");
    // What each map task printed on its node reached the driver.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for f in &files {
        assert!(stderr.contains(&format!("counted {f}: ")), "no output from the task on {f}: {stderr}");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(client::status(&cluster.addr, &cluster.token())).unwrap();
    assert_eq!(status.tasks_finished, 7 + 6, "seven maps and six pairwise merges: {status:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_head_restarted_mid_task_replays_its_journal_and_the_task_still_finishes() {
    let home = scratch("head-restart");
    let state = home.join("head");
    let port = free_port().to_string();
    let head_args =
        ["head", "--port", port.as_str(), "--state-dir", state.to_str().unwrap(), "--node-timeout-ms", "2500"];
    let mut head = Proc::spawn(&head_args, &home);
    let addr = head.line(Duration::from_secs(20)).rsplit_once(" on ").unwrap().1.split(' ').next().unwrap().to_string();
    let token_file = state.join("token");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let dir = home.join(format!("node-{i}"));
        let args = [
            "node",
            "--head",
            &addr,
            "--token-file",
            token_file.to_str().unwrap(),
            "--work-dir",
            dir.to_str().unwrap(),
        ];
        nodes.push(Proc::spawn(&args, &home));
    }
    wait_for_nodes(&addr, &home, 2);
    let mut submit = submit(&addr, &home, "echo started; sleep 2; echo finished");
    assert_eq!(submit.line(Duration::from_secs(20)), "started");
    // kill -9 the head while the task runs, and start it again on the same port and directory.
    head.child.kill().unwrap();
    let _ = head.child.wait();
    let head = Proc::spawn(&head_args, &home);
    assert!(head.line(Duration::from_secs(20)).contains(&addr));
    // The nodes register again as new nodes; the old ones are declared dead, and the task, which
    // the journal kept, runs again and finishes. The submitter reconnects and gets its result.
    let mut saw_finished = false;
    while let Ok(line) = submit.lines.recv_timeout(Duration::from_secs(40)) {
        if line == "finished" {
            saw_finished = true;
            break;
        }
    }
    assert!(saw_finished, "the task never finished after the head restarted");
    assert_eq!(wait_exit(&mut submit, Duration::from_secs(20)), 0);
    let token = Token::load(&token_file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(client::status(&addr, &token)).unwrap();
    assert_eq!((status.tasks_submitted, status.tasks_finished), (1, 1), "{status:?}");
    assert!(status.nodes_lost >= 2, "the old nodes were not declared dead: {status:?}");
    // The journal, across the kill and the restart, decides again exactly as the head did.
    let out =
        Command::new(KEEL).args(["replay", "--verify", "--json"]).arg(state.join("head.journal")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"]["restarts"], 1, "{json}");
    assert!(json["verified"]["batches"].as_u64().unwrap() > 10, "{json}");
    drop((head, nodes));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn keel_stop_ends_the_head_and_its_nodes() {
    let mut cluster = Processes::start("stop");
    let token_file = cluster.home.join("head").join("token");
    let out = Command::new(KEEL)
        .args(["stop", "--address", &cluster.addr, "--token-file", token_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_exit(&mut cluster.head, Duration::from_secs(10)), 0);
    for (p, _) in &mut cluster.nodes {
        assert_eq!(wait_exit(p, Duration::from_secs(10)), 0);
    }
    let _ = std::io::stdout().flush();
}
