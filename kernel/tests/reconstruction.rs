//! Kernel-level versions of Ray's object reconstruction stories.

mod common;

use common::*;
use keel_kernel::head::TaskStateKind;
use keel_kernel::proto::{ActorOptions, Arg, DriverToHead, NodeToHead};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

const BIG: &str = "ms=1;bytes=200000";

fn submit_out(c: &mut Cluster, job: JobId, spec: proto::TaskSpec) -> ObjectId {
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    out
}

/// A subscription answers once; a driver asks again after a loss (as `get` would).
fn resubscribe(c: &mut Cluster, job: JobId, object: ObjectId) {
    c.driver(job, DriverToHead::Subscribe(vec![object])).unwrap();
}

fn lose_host_of(c: &mut Cluster, object: ObjectId) -> NodeId {
    let locs = c.head.object_locations(object);
    assert_eq!(locs.len(), 1, "{object} should have one holder, has {locs:?}");
    c.crash_host(c.host_of(locs[0]).unwrap());
    locs[0]
}

#[test]
fn a_cached_copy_on_another_node_survives_the_first_holders_death() {
    let mut c = cluster(2, 2);
    let job = c.start_job("cached");
    let (n0, n1) = (c.node_id(0), c.node_id(1));
    let a = submit_out(&mut c, job, hard_on(task(job, 0, BIG), n0));
    run(&mut c, Duration::from_millis(50));
    let original = stored_bytes(&c, a).expect("a is sealed");
    let mut user = hard_on(task(job, 1, "ms=1"), n1);
    user.args.push(Arg::Ref(a));
    let b = submit_out(&mut c, job, user);
    run(&mut c, Duration::from_millis(100));
    assert!(c.head.object_ready(b));
    assert_eq!(c.head.object_locations(a), vec![n0, n1], "the argument was pulled to n1");
    c.crash_host(0);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().nodes_lost, 1);
    assert_eq!(c.head.stats().reconstructions, 0, "the copy on n1 suffices");
    assert!(c.head.object_ready(a));
    assert_eq!(c.head.object_locations(a), vec![n1]);
    assert_eq!(c.hosts[1].store.get(&a), Some(&original));
}

#[test]
fn a_lost_object_with_an_argument_is_rebuilt_with_identical_bytes() {
    let mut c = cluster(3, 2);
    let job = c.start_job("basic");
    let n0 = c.node_id(0);
    let a = submit_out(&mut c, job, soft_on(task(job, 0, "bytes=16"), n0));
    let mut bs = soft_on(task(job, 1, BIG), n0);
    bs.args.push(Arg::Ref(a));
    let b = submit_out(&mut c, job, bs);
    run(&mut c, Duration::from_millis(100));
    let original = stored_bytes(&c, b).expect("b sealed");
    assert_eq!(lose_host_of(&mut c, b), n0);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 1, "only b had no copy left (a is inline)");
    assert!(c.head.object_ready(b));
    assert_ne!(c.head.object_locations(b), vec![n0]);
    assert_eq!(stored_bytes(&c, b), Some(original));
    assert_eq!(c.head.task_state(b.task), Some(TaskStateKind::Finished));
}

#[test]
fn retries_are_exhausted_when_the_holder_is_lost_twice() {
    let mut c = cluster(3, 2);
    let job = c.start_job("exhaust");
    let mut spec = task(job, 0, BIG);
    spec.max_retries = 1;
    let a = submit_out(&mut c, job, spec);
    run(&mut c, Duration::from_millis(50));
    lose_host_of(&mut c, a);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 1);
    assert!(c.head.object_ready(a), "the first loss is rebuilt");
    let second = lose_host_of(&mut c, a);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 1, "no retry left for a second rebuild");
    assert!(
        matches!(c.head.object_error(a), Some(ErrorReason::NodeLost { task, node }) if *task == a.task && *node == second),
        "{:?}",
        c.head.object_error(a)
    );
    resubscribe(&mut c, job, a);
    assert!(matches!(c.drivers[&job].failed.get(&a), Some(ErrorReason::NodeLost { .. })));
}

#[test]
fn a_put_object_is_not_reconstructable() {
    let mut c = cluster(2, 1);
    let job = c.start_job("put");
    let n0 = c.node_id(0);
    let object = ObjectId::for_put(TaskId::driver(job), 1);
    c.hosts[0].store.insert(object, vec![7u8; 200_000]);
    c.driver(job, DriverToHead::Put { object, size: 200_000, inline: None, node: Some(n0), nested: vec![] }).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![object])).unwrap();
    run(&mut c, Duration::from_millis(10));
    assert!(c.head.object_ready(object));
    assert_eq!(c.head.object_locations(object), vec![n0]);
    c.crash_host(0);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 0);
    assert!(matches!(c.head.object_error(object), Some(ErrorReason::PutObjectLost { object: o }) if *o == object));
    resubscribe(&mut c, job, object);
    assert!(matches!(c.drivers[&job].failed.get(&object), Some(ErrorReason::PutObjectLost { .. })));
}

fn actor_output_story(max_task_retries: u32) -> (Cluster, JobId, ActorId, ObjectId, NodeId, Vec<u8>) {
    let mut c = cluster(3, 2);
    let job = c.start_job("actor");
    let actor = ActorId(1);
    let options = ActorOptions { max_restarts: 1, max_task_retries, ..ActorOptions::default() };
    c.driver(job, DriverToHead::CreateActor { options, creation: actor_creation(job, 0, actor).into() }).unwrap();
    run(&mut c, Duration::from_millis(50));
    assert!(matches!(c.head.actor(actor).unwrap().state, proto::ActorState::Alive { .. }));
    let out = submit_out(&mut c, job, actor_call(job, 1, actor, 0, BIG));
    run(&mut c, Duration::from_millis(50));
    let original = stored_bytes(&c, out).expect("the call's output is sealed");
    let lost = lose_host_of(&mut c, out);
    run(&mut c, Duration::from_secs(10));
    (c, job, actor, out, lost, original)
}

#[test]
fn an_actor_call_output_is_rebuilt_by_calling_the_restarted_actor_again() {
    let (c, _job, actor, out, lost, original) = actor_output_story(1);
    let summary = c.head.actor(actor).unwrap();
    assert_eq!(summary.restarts, 1);
    assert!(matches!(summary.state, proto::ActorState::Alive { node, .. } if node != lost));
    assert_eq!(c.head.stats().reconstructions, 1);
    assert!(c.head.object_ready(out));
    assert_eq!(stored_bytes(&c, out), Some(original));
}

#[test]
fn an_actor_call_output_without_task_retries_fails_when_lost() {
    let (c, job, actor, out, _lost, _) = actor_output_story(0);
    assert!(matches!(c.head.actor(actor).unwrap().state, proto::ActorState::Alive { .. }), "the actor restarted");
    assert!(!c.head.object_ready(out));
    let error = c.head.object_error(out).expect("the output failed");
    assert!(
        matches!(error, ErrorReason::NodeLost { task, .. } if *task == out.task),
        "a live actor whose calls may not be retried loses the output with its node: {error:?}"
    );
    let mut c = c;
    resubscribe(&mut c, job, out);
    assert!(c.drivers[&job].failed.contains_key(&out));
}

#[test]
fn four_downstream_tasks_sharing_a_lost_input_rebuild_it_once() {
    let mut c = cluster(4, 2);
    let job = c.start_job("share");
    let a = submit_out(&mut c, job, task(job, 0, BIG));
    run(&mut c, Duration::from_millis(50));
    let original = stored_bytes(&c, a).unwrap();
    lose_host_of(&mut c, a);
    // The head has not noticed yet: the four users are accepted against the stale location.
    let mut outs = Vec::new();
    for i in 1..=4 {
        let mut spec = task(job, i, "ms=2");
        spec.args.push(Arg::Ref(a));
        outs.push(submit_out(&mut c, job, spec));
    }
    run(&mut c, Duration::from_secs(30));
    assert_eq!(c.head.stats().reconstructions, 1, "the shared input is rebuilt once");
    for o in &outs {
        assert!(c.head.object_ready(*o), "{o} not ready: {:?}", c.head.object_error(*o));
        assert!(matches!(c.fetch(job, *o), Some(Ok(_))));
    }
    assert_eq!(stored_bytes(&c, a), Some(original));
}

#[test]
fn a_twenty_deep_chain_lost_with_its_node_is_rebuilt_to_the_same_result() {
    let mut c = cluster(3, 4);
    let job = c.start_job("chain");
    let n0 = c.node_id(0);
    let mut prev: Option<ObjectId> = None;
    let mut chain = Vec::new();
    for i in 0..20 {
        let mut spec = soft_on(task(job, i, BIG), n0);
        if let Some(p) = prev {
            spec.args.push(Arg::Ref(p));
        }
        let out = spec.return_ids().next().unwrap();
        c.submit(job, spec).unwrap();
        chain.push(out);
        prev = Some(out);
    }
    let last = *chain.last().unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![last])).unwrap();
    run(&mut c, Duration::from_millis(500));
    for o in &chain {
        assert_eq!(c.head.object_locations(*o), vec![n0], "every link lives on n0 only");
    }
    let original = stored_bytes(&c, last).unwrap();
    c.crash_host(0);
    run(&mut c, Duration::from_secs(20));
    assert_eq!(c.head.stats().reconstructions, 20, "every referenced link is rebuilt once");
    for o in &chain {
        assert!(c.head.object_ready(*o), "{o}: {:?}", c.head.object_error(*o));
        assert!(!c.head.object_locations(*o).contains(&n0));
    }
    assert_eq!(stored_bytes(&c, last), Some(original));
}

#[test]
fn a_thousand_objects_lost_at_once_are_all_rebuilt() {
    let config = HeadConfig { inline_max_bytes: 1024, ..HeadConfig::default() };
    let mut c = Cluster::new(config, NodeConfig::default(), Duration::from_millis(1));
    c.add_host(ResourceSet::cpus(1000), proto::Labels::new());
    for _ in 0..4 {
        c.add_host(ResourceSet::cpus(8), proto::Labels::new());
    }
    run(&mut c, Duration::from_millis(10));
    let job = c.start_job("many");
    let n0 = c.node_id(0);
    let mut outs = Vec::new();
    for i in 0..1000 {
        let out = submit_out(&mut c, job, soft_on(task(job, i, "ms=1;bytes=4096"), n0));
        outs.push(out);
    }
    run(&mut c, Duration::from_secs(2));
    let mut originals = Vec::new();
    for o in &outs {
        assert_eq!(c.head.object_locations(*o), vec![n0]);
        originals.push(stored_bytes(&c, *o).unwrap());
    }
    c.crash_host(0);
    run(&mut c, Duration::from_secs(30));
    assert_eq!(c.head.stats().reconstructions, 1000);
    for (o, bytes) in outs.iter().zip(&originals) {
        assert!(c.head.object_ready(*o), "{o}: {:?}", c.head.object_error(*o));
        assert_eq!(stored_bytes(&c, *o).as_ref(), Some(bytes));
    }
}

#[test]
fn an_object_whose_lineage_was_evicted_fails_with_lineage_evicted() {
    let config = HeadConfig { max_lineage_bytes: 1, ..HeadConfig::default() };
    let mut c = cluster_with(config, 2, 1);
    let job = c.start_job("evicted");
    let a = submit_out(&mut c, job, task(job, 0, BIG));
    run(&mut c, Duration::from_millis(50));
    assert!(c.head.object_ready(a));
    assert_eq!(c.head.lineage_tasks(), 0, "no lineage fits in one byte");
    assert_eq!(c.head.lineage_bytes(), 0);
    lose_host_of(&mut c, a);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 0);
    assert!(matches!(c.head.object_error(a), Some(ErrorReason::LineageEvicted { object }) if *object == a));
    resubscribe(&mut c, job, a);
    assert!(matches!(c.drivers[&job].failed.get(&a), Some(ErrorReason::LineageEvicted { .. })));
}

#[test]
fn with_two_returns_one_lost_output_is_rebuilt_and_both_stay_correct() {
    let mut c = cluster(3, 2);
    let job = c.start_job("two");
    let (n0, n1) = (c.node_id(0), c.node_id(1));
    let mut spec = soft_on(task(job, 0, BIG), n0);
    spec.num_returns = 2;
    let outs: Vec<ObjectId> = spec.return_ids().collect();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(outs.clone())).unwrap();
    run(&mut c, Duration::from_millis(50));
    let originals: Vec<Vec<u8>> = outs.iter().map(|o| stored_bytes(&c, *o).unwrap()).collect();
    assert_ne!(originals[0], originals[1]);
    // Pull the first output to n1 as an argument.
    let mut user = hard_on(task(job, 1, "ms=1"), n1);
    user.args.push(Arg::Ref(outs[0]));
    submit_out(&mut c, job, user);
    run(&mut c, Duration::from_millis(100));
    assert_eq!(c.head.object_locations(outs[0]), vec![n0, n1]);
    assert_eq!(c.head.object_locations(outs[1]), vec![n0]);
    c.crash_host(0);
    run(&mut c, Duration::from_secs(10));
    assert_eq!(c.head.stats().reconstructions, 1);
    for (o, bytes) in outs.iter().zip(&originals) {
        assert!(c.head.object_ready(*o), "{o}: {:?}", c.head.object_error(*o));
        assert_eq!(stored_bytes(&c, *o).as_ref(), Some(bytes));
        assert!(!c.head.object_locations(*o).contains(&n0));
    }
}

#[test]
fn when_a_submitting_task_crashes_its_children_are_cancelled_and_their_outputs_fail_owner_died() {
    let mut c = cluster(2, 2);
    let job = c.start_job("owner");
    let mut parent = task(job, 0, "ms=1000;crash");
    parent.max_retries = 0;
    let p = parent.task;
    let pout = submit_out(&mut c, job, parent);
    run(&mut c, Duration::from_millis(100));
    let node = c.head.task_node(p).expect("parent running");
    // The parent submits a long child through its node.
    let child = proto::TaskSpec::new(TaskId::child(p, 0, 0), job, "ms=100000");
    let cout = child.return_ids().next().unwrap();
    let now = c.now();
    c.head
        .handle_input(
            now,
            HeadInput::FromNode {
                node,
                msg: NodeToHead::FromSubmitter { task: p, msg: Box::new(DriverToHead::SubmitTask(child.into())) },
            },
        )
        .unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![cout])).unwrap();
    run(&mut c, Duration::from_millis(100));
    assert_eq!(c.head.task_state(cout.task), Some(TaskStateKind::Running));
    // The parent's worker dies.
    run(&mut c, Duration::from_secs(2));
    assert!(
        matches!(c.head.object_error(pout), Some(ErrorReason::TaskFailed { .. })),
        "{:?}",
        c.head.object_error(pout)
    );
    assert!(matches!(c.head.task_state(cout.task), None | Some(TaskStateKind::Cancelled | TaskStateKind::Failed)));
    assert!(
        matches!(c.drivers[&job].failed.get(&cout), Some(ErrorReason::OwnerDied { owner }) if *owner == p),
        "{:?}",
        c.drivers[&job].failed.get(&cout)
    );
    run(&mut c, Duration::from_secs(1));
    assert_eq!(c.head.task_node(cout.task), None, "the child no longer holds a node");
}

#[test]
fn when_a_job_finishes_its_running_tasks_are_cancelled_and_its_objects_fail_job_finished() {
    let mut c = cluster(2, 2);
    let job = c.start_job("finishing");
    let other = c.start_job("bystander");
    let long = task(job, 0, "ms=100000");
    let lt = long.task;
    let out = submit_out(&mut c, job, long);
    let keep = submit_out(&mut c, other, task(other, 0, "ms=50"));
    run(&mut c, Duration::from_millis(10));
    assert_eq!(c.head.task_state(lt), Some(TaskStateKind::Running));
    c.driver(job, DriverToHead::FinishJob).unwrap();
    assert!(
        matches!(c.drivers[&job].failed.get(&out), Some(ErrorReason::JobFinished { job: j }) if *j == job),
        "{:?}",
        c.drivers[&job].failed.get(&out)
    );
    run(&mut c, Duration::from_millis(200));
    assert!(matches!(c.head.task_state(lt), None | Some(TaskStateKind::Cancelled | TaskStateKind::Failed)));
    assert!(c.head.task_node(lt).is_none());
    assert!(matches!(c.driver(job, DriverToHead::Subscribe(vec![out])), Err(InputError::UnknownJob(j)) if j == job));
    assert!(matches!(c.fetch(other, keep), Some(Ok(_))), "another job's work is undisturbed");
}

#[test]
fn a_lost_call_output_of_an_actor_that_died_for_good_fails_with_the_actors_real_death() {
    let mut c = cluster(3, 2);
    let job = c.start_job("dead-actor");
    let actor = ActorId(1);
    let options = ActorOptions { max_restarts: 0, max_task_retries: 2, ..ActorOptions::default() };
    c.driver(job, DriverToHead::CreateActor { options, creation: actor_creation(job, 0, actor).into() }).unwrap();
    run(&mut c, Duration::from_millis(50));
    let out = submit_out(&mut c, job, actor_call(job, 1, actor, 0, BIG));
    run(&mut c, Duration::from_millis(50));
    assert!(c.head.object_ready(out));
    lose_host_of(&mut c, out);
    run(&mut c, Duration::from_secs(10));
    let state = c.head.actor(actor).unwrap().state;
    assert!(
        matches!(
            &state,
            proto::ActorState::Dead(ErrorReason::ActorDied { cause: ActorDeath::RestartsExhausted { .. }, .. })
        ),
        "{state:?}"
    );
    let error = c.head.object_error(out).cloned();
    assert!(
        matches!(&error, Some(ErrorReason::ActorDied { actor: a, cause: ActorDeath::RestartsExhausted { .. } }) if *a == actor),
        "the output fails with why the actor died: {error:?}"
    );
}

fn run_attempt(outs: &[HeadOutput], task: TaskId) -> Option<(NodeId, u32)> {
    outs.iter().find_map(|o| match o {
        HeadOutput::ToNode { node, msg: proto::HeadToNode::RunTask { spec, attempt, .. } } if spec.task == task => {
            Some((*node, *attempt))
        }
        _ => None,
    })
}

#[test]
fn an_owner_that_finishes_loses_nothing_its_returned_child_ref_stays_alive() {
    let mut b = Bench::new();
    let node = b.node(4);
    let job = b.job();
    let parent = task(job, 0, "parent");
    let p = parent.task;
    let (r, outs) = b.driver(job, DriverToHead::SubmitTask(parent.into()));
    r.unwrap();
    assert_eq!(run_attempt(&outs, p), Some((node, 0)));
    let child = proto::TaskSpec::new(TaskId::child(p, 0, 0), job, "child");
    let cout = child.return_ids().next().unwrap();
    let submit = NodeToHead::FromSubmitter { task: p, msg: Box::new(DriverToHead::SubmitTask(child.clone().into())) };
    let (r, outs) = b.node_says(node, submit);
    r.unwrap();
    assert_eq!(run_attempt(&outs, child.task), Some((node, 0)));
    // The parent returns a value holding the child's ref, and ends.
    let pout = ObjectId::for_return(p, 1);
    let value = proto::ReturnValue { object: pout, size: 1, inline: Some(vec![9]), nested: vec![cout] };
    let ended = NodeToHead::TaskEnded { task: p, attempt: 0, outcome: proto::TaskOutcome::Finished(vec![value]) };
    b.node_says(node, ended).0.unwrap();
    assert_eq!(b.head.task_state(p), Some(TaskStateKind::Finished));
    assert_eq!(b.head.object_error(cout), None, "a finished owner is not a dead one");
    assert_eq!(b.head.task_state(child.task), Some(TaskStateKind::Running));
    b.driver(job, DriverToHead::Subscribe(vec![pout, cout])).0.unwrap();
    let value = proto::ReturnValue { object: cout, size: 2, inline: Some(vec![1, 2]), nested: vec![] };
    let ended =
        NodeToHead::TaskEnded { task: child.task, attempt: 0, outcome: proto::TaskOutcome::Finished(vec![value]) };
    let (r, outs) = b.node_says(node, ended);
    r.unwrap();
    assert!(b.head.object_ready(cout));
    assert!(outs.iter().any(|o| matches!(
        o,
        HeadOutput::ToDriver { msg: proto::HeadToDriver::ObjectReady { object, .. }, .. } if *object == cout
    )));
    // Dropping the parent's value releases the child's output too.
    b.driver(job, DriverToHead::RemoveRef(pout)).0.unwrap();
    assert_eq!(b.head.object_ref_count(cout).unwrap_or(0), 0);
}

#[test]
fn a_lost_object_whose_dropped_argument_was_lost_too_is_rebuilt_recursively() {
    let mut c = cluster(3, 2);
    let job = c.start_job("recursive");
    let n0 = c.node_id(0);
    let a = submit_out(&mut c, job, soft_on(task(job, 0, BIG), n0));
    let mut bs = soft_on(task(job, 1, BIG), n0);
    bs.args.push(Arg::Ref(a));
    let b = submit_out(&mut c, job, bs);
    run(&mut c, Duration::from_millis(100));
    let (orig_a, orig_b) = (stored_bytes(&c, a).unwrap(), stored_bytes(&c, b).unwrap());
    c.driver(job, DriverToHead::RemoveRef(a)).unwrap();
    run(&mut c, Duration::from_millis(10));
    assert_eq!(c.head.object_locations(b), vec![n0]);
    c.crash_host(0);
    run(&mut c, Duration::from_secs(10));
    assert!(c.head.object_ready(b), "{:?}", c.head.object_error(b));
    assert_eq!(stored_bytes(&c, b), Some(orig_b), "b rebuilt from a rebuilt a");
    assert_eq!(c.head.stats().reconstructions, 2, "a (needed as an argument) and b");
    if let Some(bytes) = stored_bytes(&c, a) {
        assert_eq!(bytes, orig_a);
    }
    // Once b is dropped too, nothing is left of either.
    c.driver(job, DriverToHead::RemoveRef(b)).unwrap();
    run(&mut c, Duration::from_millis(50));
    assert_eq!(c.head.object_ref_count(b).unwrap_or(0), 0);
    assert_eq!(c.head.lineage_tasks(), 0);
    assert_eq!(c.head.lineage_bytes(), 0);
}

/// A lost value needs its argument again, but that argument was an inline value already freed
/// and its producer has no retries left: the reason names the spent retries, not a crash that
/// never happened (found by keel chaos).
#[test]
fn an_argument_that_cannot_be_rebuilt_fails_with_retries_exhausted() {
    let mut c = cluster(3, 2);
    let job = c.start_job("spent");
    let n0 = c.node_id(0);
    let mut first = soft_on(task(job, 0, "bytes=16"), n0);
    first.max_retries = 0;
    let a = first.return_ids().next().unwrap();
    c.submit(job, first).unwrap();
    let mut second = soft_on(task(job, 1, BIG), n0);
    second.args.push(Arg::Ref(a));
    let b = submit_out(&mut c, job, second);
    c.driver(job, DriverToHead::RemoveRef(a)).unwrap();
    run(&mut c, Duration::from_millis(100));
    assert!(c.head.object_ready(b));
    lose_host_of(&mut c, b);
    resubscribe(&mut c, job, b);
    run(&mut c, Duration::from_secs(10));
    let reason = c.head.object_error(b).cloned().expect("b cannot come back");
    let ErrorReason::DependencyFailed { object, cause, .. } = reason else { panic!("{reason:?}") };
    assert_eq!(object, a);
    assert_eq!(*cause, ErrorReason::RetriesExhausted { object: a, task: a.task, attempts: 1 });
}

#[test]
fn an_argument_lost_with_its_holder_is_waited_for_and_rebuilt_without_spending_retries() {
    // Pulls give up fast (100 ms), long before the head declares the holder dead (10 s).
    let node_config =
        NodeConfig { pull_timeout: Duration::from_millis(100), pull_max_attempts: 1, ..NodeConfig::default() };
    let mut c = Cluster::new(HeadConfig::default(), node_config, Duration::from_millis(1));
    for _ in 0..2 {
        c.add_host(ResourceSet::cpus(2), proto::Labels::new());
    }
    run(&mut c, Duration::from_millis(10));
    let job = c.start_job("argument-wait");
    let (n0, n1) = (c.node_id(0), c.node_id(1));
    let a = submit_out(&mut c, job, soft_on(task(job, 0, BIG), n0));
    run(&mut c, Duration::from_millis(50));
    assert_eq!(c.head.object_locations(a), vec![n0]);
    // The holder dies; the head does not know yet when the consumer, with no retries, is placed.
    c.crash_host(0);
    let mut user = hard_on(task(job, 1, "ms=1"), n1);
    user.max_retries = 0;
    user.args.push(Arg::Ref(a));
    let b = submit_out(&mut c, job, user);
    run(&mut c, Duration::from_secs(30));
    assert!(c.head.object_ready(b), "the consumer failed: {:?}", c.head.object_error(b));
    assert!(c.head.stats().retries >= 2, "the consumer's fetch never failed: {:?}", c.head.stats());
    assert_eq!(c.head.stats().nodes_lost, 1);
    assert_eq!(c.head.stats().reconstructions, 1, "the lost argument was rebuilt");
    c.check_invariants();
}
