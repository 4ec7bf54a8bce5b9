//! Bad input: unknown ids, duplicates, stale and late messages, version mismatches, malformed
//! return values and impossible requests are refused with typed errors and change nothing else.

mod common;

use common::*;
use keel_kernel::head::TaskStateKind;
use keel_kernel::proto::{
    ActorOptions, Arg, DriverToHead, HeadToDriver, HeadToNode, Hello, Labels, NodeToHead, PlacementGroupSpec,
    PlacementStrategy, ReturnValue, SchedulingStrategy, TaskOutcome, TaskSpec, Welcome, PROTOCOL_VERSION,
};
use keel_kernel::resources::InvalidRequest;
use keel_kernel::testkit::task;
use keel_kernel::*;

fn run_task_attempt(outs: &[HeadOutput], task: TaskId) -> Option<(NodeId, u32)> {
    outs.iter().find_map(|o| match o {
        HeadOutput::ToNode { node, msg: HeadToNode::RunTask { spec, attempt, .. } } if spec.task == task => {
            Some((*node, *attempt))
        }
        _ => None,
    })
}

fn rejected(outs: &[HeadOutput], job: JobId) -> Vec<InputError> {
    outs.iter()
        .filter_map(|o| match o {
            HeadOutput::ToDriver { job: j, msg: HeadToDriver::Rejected { error } } if *j == job => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn finished(spec: &TaskSpec) -> TaskOutcome {
    let returns = spec
        .return_ids()
        .map(|object| ReturnValue { object, size: 3, inline: Some(vec![1, 2, 3]), nested: vec![] })
        .collect();
    TaskOutcome::Finished(returns)
}

/// A bench with one 4-CPU node, a job, and one long task running on the node.
fn bench_with_running_task() -> (Bench, NodeId, JobId, TaskSpec) {
    let mut b = Bench::new();
    let node = b.node(4);
    let job = b.job();
    let spec = task(job, 0, "ms=100000");
    let (r, outs) = b.driver(job, DriverToHead::SubmitTask(spec.clone().into()));
    r.unwrap();
    assert_eq!(run_task_attempt(&outs, spec.task), Some((node, 0)));
    (b, node, job, spec)
}

#[test]
fn unknown_ids_are_refused_with_typed_errors_and_change_nothing() {
    let (mut b, node, job, spec) = bench_with_running_task();
    let before = b.snapshot(spec.task);
    let ghost_task = TaskId(12345);
    let ghost_object = ObjectId::for_return(ghost_task, 1);
    let cases: Vec<(DriverToHead, InputError)> = vec![
        (DriverToHead::Cancel { task: ghost_task, force: true, recursive: true }, InputError::UnknownTask(ghost_task)),
        (DriverToHead::AddRef(ghost_object), InputError::UnknownObject(ghost_object)),
        (DriverToHead::RemoveRef(ghost_object), InputError::UnknownObject(ghost_object)),
        (
            DriverToHead::Subscribe(vec![spec.return_ids().next().unwrap(), ghost_object]),
            InputError::UnknownObject(ghost_object),
        ),
        (DriverToHead::KillActor { actor: ActorId(77), no_restart: true }, InputError::UnknownActor(ActorId(77))),
        (
            DriverToHead::RemovePlacementGroup(PlacementGroupId(9)),
            InputError::UnknownPlacementGroup(PlacementGroupId(9)),
        ),
        (
            DriverToHead::SubmitTask({
                let mut s = task(job, 1, "x");
                s.args.push(Arg::Ref(ghost_object));
                s.into()
            }),
            InputError::UnknownObject(ghost_object),
        ),
        (
            DriverToHead::SubmitTask(actor_call(job, 2, ActorId(77), 0, "m").into()),
            InputError::UnknownActor(ActorId(77)),
        ),
        (
            DriverToHead::SubmitTask({
                let mut s = task(job, 3, "x");
                s.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(9), bundle: None };
                s.into()
            }),
            InputError::UnknownPlacementGroup(PlacementGroupId(9)),
        ),
    ];
    for (msg, expected) in cases {
        let (r, outs) = b.driver(job, msg.clone());
        assert_eq!(r.as_ref().err(), Some(&expected), "{msg:?}");
        assert_eq!(rejected(&outs, job), vec![expected], "the driver is told");
        assert_eq!(b.snapshot(spec.task), before, "{msg:?} changed state");
    }
    let ghost_node = NodeId(999);
    assert!(matches!(b.input(HeadInput::DrainNode(ghost_node)).0, Err(InputError::UnknownNode(n)) if n == ghost_node));
    let (r, outs) = b.node_says(ghost_node, NodeToHead::Heartbeat);
    assert!(matches!(r, Err(InputError::UnknownNode(n)) if n == ghost_node));
    assert!(outs.contains(&HeadOutput::ToNode { node: ghost_node, msg: HeadToNode::Reregister }));
    let ghost_job = JobId(999);
    assert!(matches!(b.driver(ghost_job, DriverToHead::FinishJob).0, Err(InputError::UnknownJob(j)) if j == ghost_job));
    assert!(matches!(b.input(HeadInput::DriverDisconnected(ghost_job)).0, Err(InputError::UnknownJob(_))));
    let (r, _) = b.node_says(node, NodeToHead::TaskEnded { task: ghost_task, attempt: 0, outcome: finished(&spec) });
    assert!(matches!(r, Err(InputError::UnknownTask(t)) if t == ghost_task));
    assert_eq!(b.snapshot(spec.task), before);
    assert_eq!(b.head.stats().inputs_refused, 14);
}

#[test]
fn duplicate_ids_are_refused() {
    let (mut b, _node, job, spec) = bench_with_running_task();
    let before = b.snapshot(spec.task);
    let (r, _) = b.driver(job, DriverToHead::SubmitTask(spec.clone().into()));
    assert!(matches!(r, Err(InputError::DuplicateTask(t)) if t == spec.task));
    // A task id that is a driver's id.
    let mut as_driver = spec.clone();
    as_driver.task = TaskId::driver(job);
    assert!(matches!(b.driver(job, DriverToHead::SubmitTask(as_driver.into())).0, Err(InputError::DuplicateTask(_))));
    // The driver id of a job that has ended stays reserved.
    let ended = b.job();
    b.input(HeadInput::DriverDisconnected(ended)).0.unwrap();
    let mut as_ended_driver = task(job, 99, "ms=1");
    as_ended_driver.task = TaskId::driver(ended);
    let (r, _) = b.driver(job, DriverToHead::SubmitTask(as_ended_driver.into()));
    assert!(matches!(r, Err(InputError::DuplicateTask(t)) if t == TaskId::driver(ended)));
    // A put over an existing return value (not a put id), then a put twice.
    let ret = spec.return_ids().next().unwrap();
    let put = |object| DriverToHead::Put { object, size: 1, inline: Some(vec![0]), node: None, nested: vec![] };
    assert!(matches!(b.driver(job, put(ret)).0, Err(InputError::Malformed { .. })));
    let p = ObjectId::for_put(TaskId::driver(job), 1);
    b.driver(job, put(p)).0.unwrap();
    assert!(matches!(b.driver(job, put(p)).0, Err(InputError::DuplicateObject(o)) if o == p));
    // A placement group id twice.
    let pg_spec = PlacementGroupSpec {
        bundles: vec![ResourceSet::cpus(1)],
        strategy: PlacementStrategy::Pack,
        name: None,
        detached: false,
    };
    let pg = PlacementGroupId(5);
    b.driver(job, DriverToHead::CreatePlacementGroup { pg, spec: pg_spec.clone() }).0.unwrap();
    let (r, _) = b.driver(job, DriverToHead::CreatePlacementGroup { pg, spec: pg_spec });
    assert!(matches!(r, Err(InputError::DuplicatePlacementGroup(g)) if g == pg));
    // An actor id twice, and an actor call sequence number twice.
    let actor = ActorId(3);
    b.driver(
        job,
        DriverToHead::CreateActor { options: ActorOptions::default(), creation: actor_creation(job, 10, actor).into() },
    )
    .0
    .unwrap();
    let (r, _) = b.driver(
        job,
        DriverToHead::CreateActor { options: ActorOptions::default(), creation: actor_creation(job, 11, actor).into() },
    );
    assert!(matches!(r, Err(InputError::Malformed { .. })), "{r:?}");
    assert_eq!(b.head.task_state(actor_creation(job, 11, actor).task), None, "the refused creation left nothing");
    b.driver(job, DriverToHead::SubmitTask(actor_call(job, 20, actor, 0, "m").into())).0.unwrap();
    let (r, _) = b.driver(job, DriverToHead::SubmitTask(actor_call(job, 21, actor, 0, "m").into()));
    assert!(matches!(r, Err(InputError::Malformed { .. })), "{r:?}");
    assert_eq!(b.head.task_state(actor_call(job, 21, actor, 0, "m").task), None);
    // The running task was never disturbed.
    let after = b.snapshot(spec.task);
    assert_eq!((after.state, after.attempt, after.node), (before.state, before.attempt, before.node));
}

#[test]
fn a_node_declared_dead_is_told_to_register_again() {
    let (mut b, node, _job, spec) = bench_with_running_task();
    let other = b.node(4);
    let outs = b.advance(Duration::from_secs(6), &[other]);
    assert!(outs.contains(&HeadOutput::NodeDead(node)));
    assert_eq!(b.head.live_nodes().collect::<Vec<_>>(), vec![other]);
    assert_eq!(run_task_attempt(&outs, spec.task), Some((other, 1)), "the task was retried on the live node");
    let before = b.snapshot(spec.task);
    for msg in [
        NodeToHead::Heartbeat,
        NodeToHead::TaskEnded { task: spec.task, attempt: 0, outcome: finished(&spec) },
        NodeToHead::ObjectAdded { object: ObjectId::for_return(spec.task, 1), size: 1_000_000 },
    ] {
        let (r, outs) = b.node_says(node, msg);
        assert!(matches!(r, Err(InputError::UnknownNode(n)) if n == node));
        assert_eq!(outs, vec![HeadOutput::ToNode { node, msg: HeadToNode::Reregister }]);
        assert_eq!(b.snapshot(spec.task), before);
    }
}

#[test]
fn a_stale_or_misdirected_completion_is_refused_and_changes_nothing() {
    let (mut b, node, _job, spec) = bench_with_running_task();
    let other = b.node(4);
    let before = b.snapshot(spec.task);
    let cases = [
        (node, 1, finished(&spec)),
        (node, 7, TaskOutcome::Failed(TaskFailure::WorkerDied { exit_code: None })),
        (other, 0, finished(&spec)),
    ];
    for (from, attempt, outcome) in cases {
        let (r, _) = b.node_says(from, NodeToHead::TaskEnded { task: spec.task, attempt, outcome });
        assert!(
            matches!(r, Err(InputError::StaleAttempt { task, attempt: a, node: n }) if task == spec.task && a == attempt && n == from)
        );
        assert_eq!(b.snapshot(spec.task), before);
    }
    // The real completion is accepted once; a duplicate of it is stale.
    b.node_says(node, NodeToHead::TaskEnded { task: spec.task, attempt: 0, outcome: finished(&spec) }).0.unwrap();
    let done = b.snapshot(spec.task);
    assert_eq!(done.state, Some(TaskStateKind::Finished));
    assert!(done.ready);
    let (r, _) = b.node_says(
        node,
        NodeToHead::TaskEnded {
            task: spec.task,
            attempt: 0,
            outcome: TaskOutcome::Failed(TaskFailure::WorkerDied { exit_code: None }),
        },
    );
    assert!(matches!(r, Err(InputError::StaleAttempt { .. })));
    assert_eq!(b.snapshot(spec.task), done);
    let (r, _) = b.node_says(node, NodeToHead::TaskStarted { task: spec.task, attempt: 0, worker: WorkerId(1) });
    assert!(matches!(r, Err(InputError::StaleAttempt { .. })), "{r:?}");
    assert_eq!(b.snapshot(spec.task), done);
}

#[test]
fn a_peer_with_another_protocol_version_is_refused() {
    let mut b = Bench::new();
    let wrong = PROTOCOL_VERSION + 1;
    let answer =
        b.connect(Hello::RegisterNode { version: wrong, resources: ResourceSet::cpus(1), labels: Labels::new() });
    assert!(
        matches!(answer, Welcome::Refused(InputError::VersionMismatch { got, expected }) if got == wrong && expected == PROTOCOL_VERSION)
    );
    let answer = b.connect(Hello::RegisterJob { version: 0, name: "old".into() });
    assert!(matches!(answer, Welcome::Refused(InputError::VersionMismatch { got: 0, .. })));
    assert_eq!(b.head.live_nodes().count(), 0);
    assert!(b.head.job_name(JobId(1)).is_none() && b.head.job_name(JobId(0)).is_none());
}

#[test]
fn a_duplicated_introduction_on_one_connection_is_refused_and_registers_nothing() {
    let mut b = Bench::new();
    let hello =
        Hello::RegisterNode { version: PROTOCOL_VERSION, resources: ResourceSet::cpus(4), labels: Labels::new() };
    let conn = ConnId(777);
    let (first, outs) = b.input(HeadInput::Connect { conn, hello: hello.clone() });
    assert!(first.is_ok() && outs.len() == 1);
    // Found in simulation: a copy of the Connect registered a second node for one machine,
    // and the head then placed twice its CPUs there.
    let (again, outs) = b.input(HeadInput::Connect { conn, hello });
    assert_eq!(again, Err(InputError::DuplicateConnection(conn)));
    assert!(outs.is_empty(), "a refused introduction is not answered");
    assert_eq!(b.head.live_nodes().count(), 1);
}

/// Builds a task's (malformed) return values.
type MakeReturns = Box<dyn Fn(&TaskSpec) -> Vec<ReturnValue>>;

#[test]
fn malformed_return_values_fail_the_task_with_a_typed_reason() {
    let value = |object, size, inline: Option<Vec<u8>>| ReturnValue { object, size, inline, nested: vec![] };
    let cases: Vec<MakeReturns> = vec![
        Box::new(|_| vec![]),
        Box::new(move |s| vec![value(ObjectId::for_return(s.task, 2), 1, Some(vec![0]))]),
        Box::new(move |s| vec![value(ObjectId::for_return(s.task, 1), 5, Some(vec![0]))]),
        Box::new(move |s| vec![value(ObjectId::for_return(s.task, 1), 200_000, Some(vec![0; 200_000]))]),
        Box::new(move |s| {
            let o = ObjectId::for_return(s.task, 1);
            vec![value(o, 1, Some(vec![0])), value(o, 1, Some(vec![0]))]
        }),
    ];
    for make in cases {
        let (mut b, node, job, spec) = bench_with_running_task();
        let out = spec.return_ids().next().unwrap();
        b.driver(job, DriverToHead::Subscribe(vec![out])).0.unwrap();
        let returns = make(&spec);
        let (r, outs) = b.node_says(
            node,
            NodeToHead::TaskEnded { task: spec.task, attempt: 0, outcome: TaskOutcome::Finished(returns) },
        );
        assert!(matches!(r, Err(InputError::Malformed { .. })), "{r:?}");
        assert!(!b.head.object_ready(out));
        assert!(
            matches!(b.head.object_error(out), Some(ErrorReason::TaskFailed { task, failure: TaskFailure::Application { .. }, .. }) if *task == spec.task)
        );
        assert!(outs.iter().any(|o| matches!(o, HeadOutput::ToDriver { msg: HeadToDriver::ObjectFailed { object, .. }, .. } if *object == out)));
        assert_eq!(b.head.task_node(spec.task), None, "the attempt's resources were released");
    }
}

#[test]
fn an_impossible_request_fails_infeasible_after_the_grace_and_a_malformed_one_at_once() {
    let mut c = cluster(2, 4);
    let job = c.start_job("impossible");
    let mut huge = task(job, 0, "ms=1");
    huge.resources = ResourceSet::cpus(64);
    let huge_out = huge.return_ids().next().unwrap();
    let mut frac = task(job, 1, "ms=1");
    frac.resources = ResourceSet::cpus(1).with_gpu(Amount::from_f64(1.5).unwrap());
    let frac_out = frac.return_ids().next().unwrap();
    c.submit(job, huge).unwrap();
    c.submit(job, frac).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![huge_out, frac_out])).unwrap();
    assert!(
        matches!(c.fetch(job, frac_out), Some(Err(ErrorReason::InvalidRequest { task, error: InvalidRequest::FractionalMultiGpu { .. } })) if task == frac_out.task)
    );
    run(&mut c, Duration::from_secs(9));
    assert_eq!(c.fetch(job, huge_out), None, "still within the grace period");
    assert_eq!(c.head.task_state(huge_out.task), Some(TaskStateKind::Queued));
    run(&mut c, Duration::from_secs(2));
    assert!(
        matches!(c.fetch(job, huge_out), Some(Err(ErrorReason::Infeasible { task, request })) if task == huge_out.task && request == ResourceSet::cpus(64))
    );
}

#[test]
fn a_big_enough_node_joining_within_the_grace_rescues_an_infeasible_task() {
    let mut c = cluster(1, 4);
    let job = c.start_job("rescue");
    let mut huge = task(job, 0, "ms=1");
    huge.resources = ResourceSet::cpus(16);
    let out = huge.return_ids().next().unwrap();
    c.submit(job, huge).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    run(&mut c, Duration::from_secs(5));
    c.add_host(ResourceSet::cpus(16), Labels::new());
    run(&mut c, Duration::from_secs(10));
    assert!(matches!(c.fetch(job, out), Some(Ok(_))));
}

#[test]
fn bad_input_from_one_job_does_not_disturb_another_jobs_work() {
    let mut c = cluster(2, 2);
    let good = c.start_job("good");
    let bad = c.start_job("bad");
    let mut outs = Vec::new();
    let mut specs = Vec::new();
    for i in 0..4 {
        let spec = task(good, i, "ms=20;bytes=200000");
        outs.push(spec.return_ids().next().unwrap());
        specs.push(spec.clone());
        c.submit(good, spec).unwrap();
    }
    c.driver(good, DriverToHead::Subscribe(outs.clone())).unwrap();
    run(&mut c, Duration::from_millis(5));
    // The other job reuses the good job's ids, claims its job, and drops refs it does not hold.
    let mut stolen = specs[0].clone();
    stolen.job = bad;
    assert!(matches!(c.submit(bad, stolen), Err(InputError::DuplicateTask(_))));
    assert!(matches!(c.submit(bad, specs[1].clone()), Err(InputError::Malformed { .. })));
    assert!(matches!(c.driver(bad, DriverToHead::RemoveRef(outs[2])), Err(InputError::UnknownObject(_))));
    let put = DriverToHead::Put { object: outs[3], size: 1, inline: Some(vec![1]), node: None, nested: vec![] };
    assert!(matches!(c.driver(bad, put), Err(InputError::Malformed { .. })));
    let theirs = ObjectId::for_put(TaskId::driver(good), 1);
    let put = DriverToHead::Put { object: theirs, size: 1, inline: Some(vec![1]), node: None, nested: vec![] };
    assert!(matches!(c.driver(bad, put), Err(InputError::Malformed { .. })), "a put id of another submitter");
    let mut frac = task(bad, 0, "x");
    frac.resources = ResourceSet::cpus(1).with_gpu(Amount::from_f64(2.5).unwrap());
    c.submit(bad, frac).unwrap();
    c.driver(bad, DriverToHead::FinishJob).unwrap();
    run(&mut c, Duration::from_millis(200));
    for o in &outs {
        assert!(matches!(c.fetch(good, *o), Some(Ok(_))), "{o}");
        assert_eq!(c.head.object_ref_count(*o), Some(1), "the good job still holds its handle");
    }
    assert!(c.drivers[&good]
        .inbox
        .iter()
        .all(|m| !matches!(m, HeadToDriver::Rejected { .. } | HeadToDriver::ObjectFailed { .. })));
}

#[test]
fn a_return_value_nesting_an_unknown_or_released_reference_is_malformed() {
    for released in [true, false] {
        let (mut b, node, job, spec) = bench_with_running_task();
        let inner = if released {
            let p = ObjectId::for_put(TaskId::driver(job), 1);
            let put = DriverToHead::Put { object: p, size: 1, inline: Some(vec![0]), node: None, nested: vec![] };
            b.driver(job, put).0.unwrap();
            b.driver(job, DriverToHead::RemoveRef(p)).0.unwrap();
            p
        } else {
            ObjectId::for_return(TaskId(4242), 1)
        };
        let out = spec.return_ids().next().unwrap();
        let value = ReturnValue { object: out, size: 1, inline: Some(vec![0]), nested: vec![inner] };
        let (r, _) = b.node_says(
            node,
            NodeToHead::TaskEnded { task: spec.task, attempt: 0, outcome: TaskOutcome::Finished(vec![value]) },
        );
        assert!(matches!(r, Err(InputError::Malformed { .. })), "{r:?}");
        assert!(matches!(
            b.head.object_error(out),
            Some(ErrorReason::TaskFailed { failure: TaskFailure::Application { .. }, .. })
        ));
    }
}

#[test]
fn a_queued_task_that_becomes_infeasible_when_the_only_big_node_dies_fails_after_the_grace() {
    let mut c = cluster(1, 2);
    c.add_host(ResourceSet::cpus(16), Labels::new());
    run(&mut c, Duration::from_millis(10));
    let job = c.start_job("became-infeasible");
    let mut first = task(job, 0, "ms=100000");
    first.resources = ResourceSet::cpus(16);
    first.max_retries = 0;
    let first_out = first.return_ids().next().unwrap();
    let mut second = task(job, 1, "ms=1");
    second.resources = ResourceSet::cpus(16);
    let second_out = second.return_ids().next().unwrap();
    c.submit(job, first).unwrap();
    c.submit(job, second).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![first_out, second_out])).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.task_state(first_out.task), Some(TaskStateKind::Running));
    assert_eq!(c.head.task_state(second_out.task), Some(TaskStateKind::Queued));
    c.crash_host(1);
    run(&mut c, Duration::from_secs(8));
    assert!(matches!(c.fetch(job, first_out), Some(Err(ErrorReason::NodeLost { .. }))));
    assert_eq!(c.head.task_state(second_out.task), Some(TaskStateKind::Queued), "within the grace");
    run(&mut c, Duration::from_secs(12));
    assert!(
        matches!(c.fetch(job, second_out), Some(Err(ErrorReason::Infeasible { task, .. })) if task == second_out.task),
        "{:?}",
        c.fetch(job, second_out)
    );
}

#[test]
fn demand_reports_queued_and_infeasible_tasks_per_shape() {
    let mut b = Bench::new();
    b.node(2);
    let job = b.job();
    let two = |seq: u64| {
        let mut spec = TaskSpec::new(TaskId::child(TaskId::driver(job), 0, seq), job, "f");
        spec.resources = ResourceSet::cpus(2);
        spec
    };
    for seq in 0..3 {
        b.driver(job, DriverToHead::SubmitTask(std::sync::Arc::new(two(seq)))).0.unwrap();
    }
    let mut huge = TaskSpec::new(TaskId::child(TaskId::driver(job), 0, 9), job, "f");
    huge.resources = ResourceSet::cpus(64);
    b.driver(job, DriverToHead::SubmitTask(std::sync::Arc::new(huge))).0.unwrap();
    let demand = b.head.demand();
    // One two-CPU task runs; two wait; the 64-CPU task can never run here.
    assert_eq!(demand.queued, vec![(ResourceSet::cpus(2), 2)]);
    assert_eq!(demand.infeasible, vec![(ResourceSet::cpus(64), 1)]);
}
