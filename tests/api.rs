//! The Rust API end to end. This test binary is its own worker program: a node starts it again
//! with `KEEL_WORKER_SOCKET` set, and `keel::init` then serves the functions below.
//!
//! Part one runs against a cluster of a head and two one-CPU nodes (daemons in this process, the
//! address in `KEEL_ADDRESS`); part two against the embedded default (no address).

use keel::{
    actor, method, remote, ActorClass, ActorOptions, Blob, Error, ErrorReason, Keel, Method, ObjectRef,
    PlacementStrategy, Remote, TaskFailure, TaskOptions,
};
use keel_daemon::head::{self, HeadOptions};
use keel_daemon::node::{self, NodeOptions};
use keel_kernel::proto::SchedulingStrategy;
use keel_kernel::{NodeConfig, NodeId, ResourceSet};
use keel_net::wire::WorkerProgram;
use keel_net::Token;
use std::time::{Duration, Instant};

static SQUARE: Remote<(u64,), u64> = remote("square", |(x,)| x * x);
static ADD: Remote<(u64, u64), u64> = remote("add", |(a, b)| a + b);
static BLOB: Remote<(usize, u8), Vec<u8>> = remote("blob", |(len, fill)| vec![fill; len]);
static CHECKSUM: Remote<(Vec<u8>,), u64> = remote("checksum", |(bytes,)| bytes.iter().map(|&b| u64::from(b)).sum());
static SLEEP_MS: Remote<(u64,), u64> = remote("sleep_ms", |(ms,)| {
    std::thread::sleep(Duration::from_millis(ms));
    ms
});
static PANICS: Remote<(), u64> = remote("panics", |()| panic!("deliberately"));
static SUM_OF_SQUARES: Remote<(u64,), u64> = remote("sum_of_squares", |(n,)| {
    // A nested call: a task submitting tasks through the worker's own handle.
    let keel = keel::current().expect("a worker has a current handle");
    let refs: Vec<_> = (1..=n).map(|i| SQUARE.call(&keel, (i,)).expect("submit")).collect();
    keel.get_all(&refs).expect("results").iter().sum()
});
/// An actor: a running total, and the calls it saw in order.
struct Counter {
    total: i64,
    seen: Vec<i64>,
}
static COUNTER: ActorClass<Counter, (i64,)> = actor("Counter", |(start,)| Counter { total: start, seen: Vec::new() });
static COUNTER_ADD: Method<Counter, (i64,), i64> = method("Counter.add", |c, (x,)| {
    c.total += x;
    c.seen.push(x);
    c.total
});
static COUNTER_SEEN: Method<Counter, (), Vec<i64>> = method("Counter.seen", |c, ()| c.seen.clone());
static COUNTER_SLOW_ADD: Method<Counter, (i64, u64), i64> = method("Counter.slow_add", |c, (x, ms)| {
    std::thread::sleep(Duration::from_millis(ms));
    c.total += x;
    c.seen.push(x);
    c.total
});
static WHERE: Remote<(), u64> = remote("where", |()| std::env::var("KEEL_NODE_ID").unwrap().parse().unwrap());
const PART: usize = 1 << 20;
static PART_OF: Remote<(u64,), Vec<u8>> =
    remote("part_of", |(i,)| (0..PART + i as usize).map(|j| (j as u64 * (i + 1)) as u8).collect());
static LEN2: Remote<(Vec<u8>, Vec<u8>), u64> = remote("len2", |(a, b)| (a.len() + b.len()) as u64);

/// Declared but not registered with `init`: calling it must fail with a clear error.
static NOT_REGISTERED: Remote<(), u64> = remote("not_registered", |()| 0);

/// References travelling inside values: received as an argument, made and returned.
static SUM_REFS: Remote<(Vec<ObjectRef<u64>>,), u64> = remote("sum_refs", |(refs,)| {
    let keel = keel::current().expect("a worker has a current handle");
    keel.get_all(&refs).expect("the referenced values").iter().sum()
});
static MAKE_REFS: Remote<(u64,), Vec<ObjectRef<u64>>> = remote("make_refs", |(n,)| {
    let keel = keel::current().expect("a worker has a current handle");
    (0..n).map(|i| SQUARE.call(&keel, (i,)).expect("submit")).collect()
});

static COUNTER_MAKE: Method<Counter, (u64,), Vec<ObjectRef<u64>>> = method("Counter.make", |_, (n,)| {
    let keel = keel::current().expect("a worker has a current handle");
    (0..n).map(|i| SQUARE.call(&keel, (i + 100,)).expect("submit")).collect()
});

const FUNCTIONS: &[&dyn keel::Registered] = &[
    &COUNTER_MAKE,
    &SUM_REFS,
    &MAKE_REFS,
    &SQUARE,
    &ADD,
    &BLOB,
    &CHECKSUM,
    &SLEEP_MS,
    &PANICS,
    &SUM_OF_SQUARES,
    &COUNTER,
    &COUNTER_ADD,
    &COUNTER_SLOW_ADD,
    &COUNTER_SEEN,
    &WHERE,
    &PART_OF,
    &LEN2,
];

fn check(name: &str, f: impl FnOnce()) {
    let started = Instant::now();
    f();
    println!("test {name} ... ok ({:.2} s)", started.elapsed().as_secs_f64());
}

fn values_and_references_flow_between_tasks(keel: &Keel) {
    let a = SQUARE.call(keel, (3,)).unwrap();
    let b = SQUARE.call(keel, (4,)).unwrap();
    let sum = ADD.call(keel, (&a, &b)).unwrap();
    assert_eq!(keel.get(&sum).unwrap(), 25);
    let mixed = ADD.call(keel, (a, 100)).unwrap();
    assert_eq!(keel.get(&mixed).unwrap(), 109);
    let many: Vec<_> = (0..40).map(|i| SQUARE.call(keel, (i,)).unwrap()).collect();
    assert_eq!(keel.get_all(&many).unwrap(), (0..40).map(|i| i * i).collect::<Vec<u64>>());
}

fn a_large_value_moves_between_nodes_and_reaches_the_driver(keel: &Keel, nodes: &[NodeId]) {
    let on = |node: NodeId| TaskOptions {
        strategy: SchedulingStrategy::NodeAffinity { node, soft: false },
        ..TaskOptions::default()
    };
    // 3 MiB made on the first node (stored in its shared memory, not inline)...
    let blob = BLOB.call_with(keel, (3 << 20, 7u8), &on(nodes[0])).unwrap();
    // ...read by a task on the second node (pulled over the data port in chunks)...
    let sum = CHECKSUM.call_with(keel, (&blob,), &on(nodes[1])).unwrap();
    assert_eq!(keel.get(&sum).unwrap(), 7 * (3 << 20) as u64);
    // ...and by the driver (mapped from a store on this machine).
    let bytes = keel.get(&blob).unwrap();
    assert_eq!((bytes.len(), bytes[0], bytes[bytes.len() - 1]), (3 << 20, 7, 7));
}

fn a_panicking_function_fails_its_task_with_the_message(keel: &Keel) {
    let r = PANICS.call(keel, ()).unwrap();
    match keel.get(&r) {
        Err(Error::Task(ErrorReason::TaskFailed { failure: TaskFailure::Application { message }, .. })) => {
            assert!(message.contains("deliberately"), "{message}")
        }
        other => panic!("expected an application failure, got {other:?}"),
    }
}

fn an_unregistered_function_fails_with_its_name(keel: &Keel) {
    let r = NOT_REGISTERED.call(keel, ()).unwrap();
    match keel.get(&r) {
        Err(Error::Task(ErrorReason::TaskFailed { failure: TaskFailure::UnknownFunction { name }, .. })) => {
            assert_eq!(name, "not_registered")
        }
        other => panic!("expected an unknown function, got {other:?}"),
    }
}

fn puts_small_and_large_round_trip_and_feed_tasks(keel: &Keel) {
    let r = keel.put(&vec![1u32, 2, 3]).unwrap();
    assert_eq!(keel.get(&r).unwrap(), vec![1, 2, 3]);
    let s = ADD.call(keel, (keel.put(&40u64).unwrap(), 2)).unwrap();
    assert_eq!(keel.get(&s).unwrap(), 42);
    // Too large to travel inline: the bytes go into a node's store, and tasks anywhere read them.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected: u64 = big.iter().map(|&b| u64::from(b)).sum();
    let refs: Vec<_> = (0..4).map(|_| keel.put(&big).unwrap()).collect();
    assert_eq!(keel.get(&refs[0]).unwrap(), big);
    let sums: Vec<_> = refs.iter().map(|r| CHECKSUM.call(keel, (r,)).unwrap()).collect();
    assert_eq!(keel.get_all(&sums).unwrap(), vec![expected; 4]);
    // Bytes as one block: written straight into a node's store, read back mapped from it (no
    // copy), and the same value to anything that decodes it.
    let blob = keel.put_bytes(&big).unwrap();
    let view = keel.get_bytes(&blob).unwrap();
    assert!(view.is_mapped(), "{view:?}");
    assert_eq!(&*view, &big[..]);
    assert_eq!(keel.get(&blob).unwrap(), Blob(big.clone()));
    let small = keel.put_bytes(b"inline").unwrap();
    let view = keel.get_bytes(&small).unwrap();
    assert!(!view.is_mapped(), "a small value travels inline: {view:?}");
    assert_eq!(&*view, b"inline");
}

fn wait_returns_the_first_finished_and_leaves_the_rest(keel: &Keel) {
    let refs = vec![
        SLEEP_MS.call(keel, (10,)).unwrap(),
        SLEEP_MS.call(keel, (3_000,)).unwrap(),
        SLEEP_MS.call(keel, (20,)).unwrap(),
    ];
    let (ready, rest) = keel.wait(&refs, 2, Duration::from_secs(2)).unwrap();
    assert_eq!((ready, rest), (vec![0, 2], vec![1]));
    let (ready, _) = keel.wait(&refs, 3, Duration::from_millis(10)).unwrap();
    assert!(ready.len() < 3, "the slow task cannot have finished");
    // get_all returns a failure once it is known, without waiting for the slow one before it.
    let started = Instant::now();
    match keel.get_all(&[refs[1].clone(), PANICS.call(keel, ()).unwrap()]) {
        Err(Error::Task(ErrorReason::TaskFailed { .. })) => {}
        other => panic!("expected the second task's failure, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(2_000), "get_all waited for the 3 s task");
    // Cancelling the slow one (killing its worker) fails it with the reason, and frees its CPU.
    keel.cancel(&refs[1], true).unwrap();
    match keel.get(&refs[1]) {
        Err(Error::Task(ErrorReason::Cancelled { .. })) => {}
        other => panic!("expected a cancellation, got {other:?}"),
    }
}

fn a_task_can_submit_tasks_and_wait_for_them(keel: &Keel) {
    let r = SUM_OF_SQUARES.call(keel, (5,)).unwrap();
    assert_eq!(keel.get(&r).unwrap(), 1 + 4 + 9 + 16 + 25);
}

fn references_inside_values_keep_their_objects_alive_and_resolve_anywhere(keel: &Keel) {
    // Inside a put: the put keeps the referenced value alive after the driver's own handle goes.
    let inner = SQUARE.call(keel, (7,)).unwrap();
    let outer = keel.put(&vec![inner.clone(), inner.clone()]).unwrap();
    drop(inner);
    let got: Vec<ObjectRef<u64>> = keel.get(&outer).unwrap();
    drop(outer);
    assert_eq!(keel.get_all(&got).unwrap(), vec![49, 49]);
    // Inside a task's argument, resolved by the task; the argument may hold the only handles.
    let refs: Vec<_> = (1..=3).map(|i| SQUARE.call(keel, (i,)).unwrap()).collect();
    assert_eq!(keel.get_all(&refs).unwrap(), vec![1, 4, 9]);
    let sum = SUM_REFS.call(keel, (refs,)).unwrap();
    assert_eq!(keel.get(&sum).unwrap(), 1 + 4 + 9);
    let puts: Vec<_> = (1..=3u64).map(|i| keel.put(&(i * 10)).unwrap()).collect();
    let sum = SUM_REFS.call(keel, (puts,)).unwrap();
    assert_eq!(keel.get(&sum).unwrap(), 60);
    // Made by a task and returned inside its result: the result keeps them alive after the
    // task's own handles are gone.
    let made = MAKE_REFS.call(keel, (4,)).unwrap();
    let refs: Vec<ObjectRef<u64>> = keel.get(&made).unwrap();
    drop(made);
    assert_eq!(keel.get_all(&refs).unwrap(), vec![0, 1, 4, 9]);
    // Made by an actor's method, twice (the first call's references are let go in the second).
    let counter = COUNTER.create(keel, (0,)).unwrap();
    for _ in 0..2 {
        let made = COUNTER_MAKE.call(keel, &counter, (2,)).unwrap();
        let refs: Vec<ObjectRef<u64>> = keel.get(&made).unwrap();
        drop(made);
        assert_eq!(keel.get_all(&refs).unwrap(), vec![10_000, 10_201]);
    }
    keel.kill(&counter, true).unwrap();
}

fn parents_waiting_for_their_children_on_every_cpu_lend_their_cpus_and_do_not_deadlock(keel: &Keel) {
    // Two CPUs in the cluster, both taken by parents that wait for children: the children run
    // only on the CPUs their blocked parents lend.
    let parents: Vec<_> = (0..2).map(|_| SUM_OF_SQUARES.call(keel, (4,)).unwrap()).collect();
    let (ready, _) = keel.wait(&parents, 2, Duration::from_secs(30)).unwrap();
    assert_eq!(ready, vec![0, 1], "the parents deadlocked waiting for CPUs they hold");
    assert_eq!(keel.get_all(&parents).unwrap(), vec![1 + 4 + 9 + 16; 2]);
}

fn an_impossible_request_is_reported_as_infeasible(keel: &Keel) {
    let options = TaskOptions { resources: ResourceSet::cpus(64), ..TaskOptions::default() };
    let r = SQUARE.call_with(keel, (2,), &options).unwrap();
    match keel.get(&r) {
        Err(Error::Task(reason @ ErrorReason::Infeasible { .. })) => assert!(reason.to_string().contains("CPU: 64")),
        other => panic!("expected infeasible, got {other:?}"),
    }
}

fn an_actor_keeps_state_runs_calls_in_order_is_found_by_name_skips_a_cancelled_call_and_dies_when_killed(keel: &Keel) {
    let options = ActorOptions { name: Some("the-counter".into()), ..ActorOptions::default() };
    let counter = COUNTER.create_with(keel, (10,), &options).unwrap();
    keel.get(counter.ready()).unwrap();
    let calls: Vec<_> = (1..=20).map(|x| COUNTER_ADD.call(keel, &counter, (x,)).unwrap()).collect();
    let totals = keel.get_all(&calls).unwrap();
    assert_eq!(totals.last(), Some(&(10 + 210)));
    let seen = keel.get(&COUNTER_SEEN.call(keel, &counter, ()).unwrap()).unwrap();
    assert_eq!(seen, (1..=20).collect::<Vec<i64>>(), "calls ran out of order");
    let found = keel.get_actor::<Counter>("", "the-counter").unwrap().expect("found by name");
    assert_eq!(found.id(), counter.id());
    assert_eq!(keel.get(&COUNTER_ADD.call(keel, &found, (1,)).unwrap()).unwrap(), 221);
    assert!(keel.get_actor::<Counter>("", "no-such-actor").unwrap().is_none());
    // The calls after a slow one are already with the actor's worker; one cancelled there before
    // it starts is skipped, and the ones around it run in order.
    let slow = COUNTER_SLOW_ADD.call(keel, &counter, (100, 300)).unwrap();
    let doomed = COUNTER_ADD.call(keel, &counter, (1_000,)).unwrap();
    let after = COUNTER_ADD.call(keel, &counter, (5,)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    keel.cancel(&doomed, false).unwrap();
    assert_eq!(keel.get(&slow).unwrap(), 321);
    match keel.get(&doomed) {
        Err(Error::Task(ErrorReason::Cancelled { .. })) => {}
        other => panic!("expected the call to be cancelled, got {other:?}"),
    }
    assert_eq!(keel.get(&after).unwrap(), 326, "the cancelled call ran");
    keel.kill(&counter, true).unwrap();
    match keel.get(&COUNTER_ADD.call(keel, &counter, (1,)).unwrap()) {
        Err(Error::Task(ErrorReason::ActorDied { .. })) => {}
        other => panic!("expected the actor to be dead, got {other:?}"),
    }
}

fn a_placement_group_reserves_bundles_on_distinct_nodes_and_runs_tasks_in_them(keel: &Keel) {
    let bundles = vec![ResourceSet::cpus(1), ResourceSet::cpus(1)];
    let pg = keel.placement_group(bundles, PlacementStrategy::StrictSpread, Duration::from_secs(10)).unwrap();
    let a = WHERE.call_with(keel, (), &pg.bundle(Some(0))).unwrap();
    let b = WHERE.call_with(keel, (), &pg.bundle(Some(1))).unwrap();
    let (a, b) = (keel.get(&a).unwrap(), keel.get(&b).unwrap());
    assert_ne!(a, b, "strict spread put both bundles on one node");
    keel.remove_placement_group(&pg).unwrap();
    // Three one-CPU bundles on distinct nodes cannot exist on two nodes.
    let bundles = vec![ResourceSet::cpus(1); 3];
    match keel.placement_group(bundles, PlacementStrategy::StrictSpread, Duration::from_secs(10)) {
        Err(Error::Task(reason)) => assert!(reason.to_string().contains("infeasible"), "{reason}"),
        other => panic!("expected an infeasible group, got {other:?}"),
    }
}

fn values_lost_with_a_node_are_rebuilt_from_lineage(keel: &Keel, nodes: &[NodeId], kill: impl FnOnce()) {
    let on = |node: NodeId| TaskOptions {
        strategy: SchedulingStrategy::NodeAffinity { node, soft: true },
        ..TaskOptions::default()
    };
    let parts: Vec<_> = (0..4).map(|i| PART_OF.call_with(keel, (i,), &on(nodes[i as usize % 2])).unwrap()).collect();
    let (ready, _) = keel.wait(&parts, 4, Duration::from_secs(30)).unwrap();
    assert_eq!(ready.len(), 4);
    // The first node dies with two of the parts; the reduces need them.
    kill();
    let a = LEN2.call(keel, (&parts[0], &parts[1])).unwrap();
    let b = LEN2.call(keel, (&parts[2], &parts[3])).unwrap();
    assert_eq!(keel.get(&a).unwrap(), (2 * PART + 1) as u64);
    assert_eq!(keel.get(&b).unwrap(), (2 * PART + 5) as u64);
    let bytes = keel.get(&parts[0]).unwrap();
    assert_eq!(bytes.len(), PART, "a rebuilt value differs");
}

fn a_driver_survives_a_head_restart_from_snapshot_and_journal_and_gets_its_results(
    dir: &std::path::Path,
    token: &Token,
    token_file: &std::path::Path,
) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut options = HeadOptions::new("127.0.0.1:0", token.clone());
    options.config.node_timeout = keel_kernel::Duration::from_millis(1500);
    options.journal = Some(dir.join("restart").join("head.journal"));
    // A snapshot after every batch: the head always goes on with the machine a restart would
    // load, and the restart below loads a snapshot and the short journal after it.
    options.snapshot_after_bytes = 1;
    let head = rt.block_on(head::start(options.clone())).unwrap();
    let addr = head.addr().to_string();
    options.listen = addr.clone();
    let (work, store) = (dir.join("restart").join("node"), dir.join("restart").join("store"));
    let node = rt
        .block_on(node::start(NodeOptions {
            config: NodeConfig { heartbeat_period: keel_kernel::Duration::from_millis(250), ..NodeConfig::default() },
            ..NodeOptions::new(
                &addr,
                token.clone(),
                ResourceSet::cpus(2),
                work,
                store,
                WorkerProgram::new("/bin/false", vec![]),
            )
        }))
        .unwrap();
    std::env::set_var("KEEL_ADDRESS", &addr);
    std::env::set_var("KEEL_TOKEN_FILE", token_file);
    let keel = keel::init(FUNCTIONS).unwrap();
    let before = SQUARE.call(&keel, (9,)).unwrap();
    assert_eq!(keel.get(&before).unwrap(), 81);
    let slow = SLEEP_MS.call(&keel, (1_000,)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    head.abort();
    std::thread::sleep(Duration::from_millis(200));
    let snapshot = keel_daemon::journal::read_snapshot(&dir.join("restart").join("head.journal.snapshot"));
    assert!(snapshot.unwrap().expect("a snapshot was taken").generation > 1);
    let head = rt.block_on(head::start(options)).unwrap();
    // The task the journal kept runs again on the node, which registered anew.
    assert_eq!(keel.get(&slow).unwrap(), 1_000);
    let after = ADD.call(&keel, (&before, 1)).unwrap();
    assert_eq!(keel.get(&after).unwrap(), 82);
    drop(keel);
    node.abort();
    head.abort();
    // The journal goes on from the last snapshot, which a fresh verification loads.
    let journal = dir.join("restart").join("head.journal");
    let verified =
        keel_daemon::recording::verify(keel_daemon::recording::read(&journal).unwrap(), |_, _, _| {}).unwrap();
    assert!(verified.from_generation > 1, "a snapshot after every batch: {verified:?}");
}

/// Part one's recording: every output the head decided (tasks, actors, placement groups, a node
/// killed and values rebuilt) is decided again, byte for byte, by a fresh kernel fed the
/// journal; the same journal with one input left out is refused at the first batch it changes;
/// and the recording replays in the simulator as a workload.
fn the_recorded_run_verifies_byte_for_byte_against_a_fresh_kernel_and_replays_as_a_workload(journal: &std::path::Path) {
    use keel_daemon::journal::{Entry, Journal};
    use keel_daemon::recording::{self, RecordingError};
    const KEEL: &str = env!("CARGO_BIN_EXE_keel");
    let verified = recording::verify(recording::read(journal).unwrap(), |_, _, _| {}).unwrap();
    assert!(verified.inputs > 100 && verified.outputs > 100 && verified.batches > 50, "{verified:?}");
    println!("    {} inputs, {} outputs in {} batches verified", verified.inputs, verified.outputs, verified.batches);
    let out = std::process::Command::new(KEEL).args(["replay", "--verify", "--json"]).arg(journal).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"]["outputs"], verified.outputs);
    // Two tampered copies: one missing the first task end a node reported, one where that task
    // failed instead of finishing. The first is refused for its missing record, the second at the
    // batch whose outputs the kernel now decides otherwise.
    let entries = recording::read(journal).unwrap().entries;
    let ended = |e: &Entry| {
        matches!(
            e,
            Entry::Input {
                input: keel_kernel::HeadInput::FromNode {
                    msg: keel_kernel::proto::NodeToHead::TaskEnded {
                        outcome: keel_kernel::proto::TaskOutcome::Finished(_),
                        ..
                    },
                    ..
                },
                ..
            }
        )
    };
    let first_end = entries.iter().position(ended).unwrap();
    let write = |name: &str, change: &dyn Fn(usize, &Entry) -> Option<Entry>| {
        let path = journal.with_file_name(name);
        let _ = std::fs::remove_file(&path);
        let (mut copy, _) = Journal::open(&path).unwrap();
        for (i, e) in entries.iter().enumerate() {
            if let Some(e) = change(i, e) {
                copy.append(&e).unwrap();
            }
        }
        copy.sync().unwrap();
        path
    };
    let missing = write("missing.journal", &|i, e| (i != first_end).then(|| e.clone()));
    match recording::verify(recording::read(&missing).unwrap(), |_, _, _| {}) {
        Err(RecordingError::MissingRecords { record, .. }) => assert!(record as usize >= first_end),
        other => panic!("a journal missing an input verified: {other:?}"),
    }
    let failed = write("failed.journal", &|i, e| {
        let mut e = e.clone();
        if i == first_end {
            if let Entry::Input {
                input:
                    keel_kernel::HeadInput::FromNode {
                        msg: keel_kernel::proto::NodeToHead::TaskEnded { outcome, .. }, ..
                    },
                ..
            } = &mut e
            {
                *outcome = keel_kernel::proto::TaskOutcome::Failed(keel_kernel::TaskFailure::Application {
                    message: "tampered".into(),
                });
            }
        }
        Some(e)
    });
    match recording::verify(recording::read(&failed).unwrap(), |_, _, _| {}) {
        Err(RecordingError::Mismatch { record, .. }) => assert!(record as usize > first_end, "{record} <= {first_end}"),
        other => panic!("a journal with a changed input verified: {other:?}"),
    }
    for tampered in [&missing, &failed] {
        let out = std::process::Command::new(KEEL).args(["replay", "--verify"]).arg(tampered).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(".journal: record"), "{err}");
    }
    // The recording as a workload: its jobs and tasks, on the nodes it ran on.
    let out =
        std::process::Command::new(KEEL).args(["replay", "--format", "keel", "--json"]).arg(journal).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &json["summary"];
    assert_eq!(json["nodes"], 2, "{json}");
    // Part one is one driver: one job, which never finishes in the replay either, since one of its
    // tasks asked for more CPUs than any node has.
    assert_eq!((summary["jobs"].as_u64(), summary["infeasible"].as_u64()), (Some(1), Some(1)), "{json}");
    assert!(summary["utilisation"]["CPU"].as_f64().unwrap() > 0.0, "{json}");
    let what = json["what"].as_str().unwrap();
    assert!(what.contains("actor creations and calls are not replayed"), "{what}");
}

fn main() {
    if std::env::var_os("KEEL_WORKER_SOCKET").is_some() {
        keel::init(FUNCTIONS).expect("worker");
        unreachable!("init serves tasks in a worker");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let dir = std::env::temp_dir().join(format!("keel-api-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let token = Token::generate();
    let token_file = dir.join("token");
    token.save(&token_file).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (head, nodes) = rt.block_on(async {
        let mut options = HeadOptions::new("127.0.0.1:0", token.clone());
        options.config.infeasible_grace = keel_kernel::Duration::from_millis(200);
        options.config.node_timeout = keel_kernel::Duration::from_millis(1500);
        // Everything part one does is recorded, and checked against a fresh kernel at its end.
        options.journal = Some(dir.join("recorded").join("head.journal"));
        options.snapshot_after_bytes = u64::MAX;
        let head = head::start(options).await.unwrap();
        let mut nodes = Vec::new();
        for i in 0..2 {
            let (work, store) = (dir.join(format!("node-{i}")), dir.join(format!("store-{i}")));
            let worker = WorkerProgram::new("/bin/false", Vec::new());
            let options = NodeOptions {
                config: NodeConfig {
                    heartbeat_period: keel_kernel::Duration::from_millis(250),
                    ..NodeConfig::default()
                },
                ..NodeOptions::new(head.addr().to_string(), token.clone(), ResourceSet::cpus(1), work, store, worker)
            };
            nodes.push(node::start(options).await.unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let ids = loop {
            let status = keel_daemon::client::status(&head.addr().to_string(), &token).await.unwrap();
            if status.nodes.len() == 2 {
                break status.nodes.iter().map(|n| n.id).collect::<Vec<_>>();
            }
            assert!(Instant::now() < deadline, "the nodes did not register");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        (head, (nodes, ids))
    });
    let (node_handles, node_ids) = nodes;
    std::env::set_var("KEEL_ADDRESS", head.addr().to_string());
    std::env::set_var("KEEL_TOKEN_FILE", &token_file);
    let keel = keel::init(FUNCTIONS).unwrap();
    check("values_and_references_flow_between_tasks", || values_and_references_flow_between_tasks(&keel));
    check("a_large_value_moves_between_nodes_and_reaches_the_driver", || {
        a_large_value_moves_between_nodes_and_reaches_the_driver(&keel, &node_ids)
    });
    check("a_panicking_function_fails_its_task_with_the_message", || {
        a_panicking_function_fails_its_task_with_the_message(&keel)
    });
    check("an_unregistered_function_fails_with_its_name", || an_unregistered_function_fails_with_its_name(&keel));
    check("puts_small_and_large_round_trip_and_feed_tasks", || puts_small_and_large_round_trip_and_feed_tasks(&keel));
    check("wait_returns_the_first_finished_and_leaves_the_rest", || {
        wait_returns_the_first_finished_and_leaves_the_rest(&keel)
    });
    check("a_task_can_submit_tasks_and_wait_for_them", || a_task_can_submit_tasks_and_wait_for_them(&keel));
    check("references_inside_values_keep_their_objects_alive_and_resolve_anywhere", || {
        references_inside_values_keep_their_objects_alive_and_resolve_anywhere(&keel)
    });
    check("parents_waiting_for_their_children_on_every_cpu_lend_their_cpus_and_do_not_deadlock", || {
        parents_waiting_for_their_children_on_every_cpu_lend_their_cpus_and_do_not_deadlock(&keel)
    });
    check("an_impossible_request_is_reported_as_infeasible", || an_impossible_request_is_reported_as_infeasible(&keel));
    check(
        "an_actor_keeps_state_runs_calls_in_order_is_found_by_name_skips_a_cancelled_call_and_dies_when_killed",
        || an_actor_keeps_state_runs_calls_in_order_is_found_by_name_skips_a_cancelled_call_and_dies_when_killed(&keel),
    );
    check("a_placement_group_reserves_bundles_on_distinct_nodes_and_runs_tasks_in_them", || {
        a_placement_group_reserves_bundles_on_distinct_nodes_and_runs_tasks_in_them(&keel)
    });
    check("values_lost_with_a_node_are_rebuilt_from_lineage", || {
        values_lost_with_a_node_are_rebuilt_from_lineage(&keel, &node_ids, || node_handles[0].abort())
    });
    drop(keel);
    for n in &node_handles {
        n.abort();
    }
    head.abort();
    drop(rt);
    check("the_recorded_run_verifies_byte_for_byte_against_a_fresh_kernel_and_replays_as_a_workload", || {
        the_recorded_run_verifies_byte_for_byte_against_a_fresh_kernel_and_replays_as_a_workload(
            &dir.join("recorded").join("head.journal"),
        )
    });

    // A head with a journal, killed and started again on the same address while a task runs: the
    // driver reconnects, takes up its job again, and gets its result.
    check("a_driver_survives_a_head_restart_from_snapshot_and_journal_and_gets_its_results", || {
        a_driver_survives_a_head_restart_from_snapshot_and_journal_and_gets_its_results(&dir, &token, &token_file)
    });

    // The embedded default: no address, a cluster in this process.
    std::env::remove_var("KEEL_ADDRESS");
    check("the_embedded_default_starts_a_cluster_and_runs_tasks", || {
        let started = Instant::now();
        let keel = keel::init(FUNCTIONS).unwrap();
        let r = SQUARE.call(&keel, (12,)).unwrap();
        assert_eq!(keel.get(&r).unwrap(), 144);
        println!("    first result {:.1} ms after init", started.elapsed().as_secs_f64() * 1000.0);
        values_and_references_flow_between_tasks(&keel);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
