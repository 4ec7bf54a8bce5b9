//! Actors (ordering, restarts, names, detached, kill) and placement groups (strategies,
//! all-or-nothing, removal, node loss, infeasibility).

mod common;

use common::*;
use keel_kernel::head::TaskStateKind;
use keel_kernel::proto::{
    ActorOptions, ActorState, DriverToHead, HeadToDriver, HeadToNode, PlacementGroupSpec, PlacementStrategy,
    SchedulingStrategy, TaskKind,
};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

fn create_actor(c: &mut Cluster, job: JobId, seq: u64, actor: ActorId, options: ActorOptions) {
    c.driver(job, DriverToHead::CreateActor { options, creation: actor_creation(job, seq, actor).into() }).unwrap();
}

fn alive_on(c: &Cluster, actor: ActorId) -> Option<NodeId> {
    match c.head.actor(actor)?.state {
        ActorState::Alive { node, .. } => Some(node),
        _ => None,
    }
}

fn call(c: &mut Cluster, job: JobId, seq: u64, actor: ActorId, n: u64) -> ObjectId {
    let spec = actor_call(job, seq, actor, n, "ms=1");
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    out
}

#[test]
fn actor_calls_run_in_the_callers_order_whatever_the_submission_order() {
    let mut c = cluster(2, 2);
    let job = c.start_job("order");
    let actor = ActorId(1);
    create_actor(&mut c, job, 0, actor, ActorOptions::default());
    run(&mut c, Duration::from_millis(20));
    assert!(alive_on(&c, actor).is_some());
    let mut outs = Vec::new();
    for n in [2u64, 0, 1] {
        outs.push(call(&mut c, job, 10 + n, actor, n));
        c.check_invariants();
    }
    run(&mut c, Duration::from_millis(100));
    let dispatched: Vec<u64> = c
        .head_log
        .iter()
        .filter_map(|(_, o)| match o {
            HeadOutput::ToNode { msg: HeadToNode::RunTask { spec, .. }, .. } => match spec.kind {
                TaskKind::ActorMethod { actor: a, seq } if a == actor => Some(seq),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(dispatched, vec![0, 1, 2]);
    for o in outs {
        assert!(matches!(c.fetch(job, o), Some(Ok(_))));
    }
}

#[test]
fn an_actor_with_restarts_comes_back_elsewhere_and_serves_later_calls() {
    let mut c = cluster(3, 2);
    let job = c.start_job("restart");
    let actor = ActorId(1);
    create_actor(&mut c, job, 0, actor, ActorOptions { max_restarts: 1, ..ActorOptions::default() });
    run(&mut c, Duration::from_millis(20));
    let first = alive_on(&c, actor).expect("alive");
    let before = call(&mut c, job, 1, actor, 0);
    run(&mut c, Duration::from_millis(20));
    assert!(c.head.object_ready(before));
    c.crash_host(c.host_of(first).unwrap());
    run(&mut c, Duration::from_secs(10));
    let second = alive_on(&c, actor).expect("restarted");
    assert_ne!(second, first);
    assert_eq!(c.head.actor(actor).unwrap().restarts, 1);
    let after = call(&mut c, job, 2, actor, 1);
    run(&mut c, Duration::from_millis(50));
    assert!(matches!(c.fetch(job, after), Some(Ok(_))));
}

#[test]
fn an_actor_without_restarts_dies_with_its_node_and_later_calls_fail_actor_died() {
    let mut c = cluster(3, 2);
    let job = c.start_job("norestart");
    let actor = ActorId(1);
    create_actor(&mut c, job, 0, actor, ActorOptions::default());
    run(&mut c, Duration::from_millis(20));
    let node = alive_on(&c, actor).expect("alive");
    c.crash_host(c.host_of(node).unwrap());
    run(&mut c, Duration::from_secs(10));
    let state = c.head.actor(actor).unwrap().state;
    assert!(
        matches!(&state, ActorState::Dead(ErrorReason::ActorDied { actor: a, cause: ActorDeath::RestartsExhausted { restarts: 0 } }) if *a == actor),
        "{state:?}"
    );
    let out = call(&mut c, job, 1, actor, 0);
    run(&mut c, Duration::from_millis(20));
    assert!(matches!(c.fetch(job, out), Some(Err(ErrorReason::ActorDied { actor: a, .. })) if a == actor));
}

#[test]
fn a_named_actor_is_found_by_name_and_a_duplicate_name_is_refused() {
    let mut c = cluster(2, 2);
    let job = c.start_job("names");
    let options = ActorOptions { name: Some("svc".into()), ..ActorOptions::default() };
    create_actor(&mut c, job, 0, ActorId(1), options.clone());
    run(&mut c, Duration::from_millis(20));
    c.driver(job, DriverToHead::GetNamedActor { namespace: "default".into(), name: "svc".into() }).unwrap();
    c.driver(job, DriverToHead::GetNamedActor { namespace: "other".into(), name: "svc".into() }).unwrap();
    let answers: Vec<Option<ActorId>> = c.drivers[&job]
        .inbox
        .iter()
        .filter_map(|m| match m {
            HeadToDriver::NamedActor { actor, .. } => Some(*actor),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![Some(ActorId(1)), None]);
    let records = c.head.task_records();
    let dup = c.driver(job, DriverToHead::CreateActor { options, creation: actor_creation(job, 1, ActorId(2)).into() });
    assert!(
        matches!(&dup, Err(InputError::DuplicateActorName { namespace, name }) if namespace == "default" && name == "svc")
    );
    assert!(c.head.actor(ActorId(2)).is_none());
    assert_eq!(c.head.task_records(), records, "a refused creation leaves no task behind");
    // Once the first is killed, the name is free again.
    c.driver(job, DriverToHead::KillActor { actor: ActorId(1), no_restart: true }).unwrap();
    let options = ActorOptions { name: Some("svc".into()), ..ActorOptions::default() };
    c.driver(job, DriverToHead::CreateActor { options, creation: actor_creation(job, 2, ActorId(3)).into() }).unwrap();
    run(&mut c, Duration::from_millis(20));
    c.driver(job, DriverToHead::GetNamedActor { namespace: "default".into(), name: "svc".into() }).unwrap();
    assert!(matches!(c.drivers[&job].inbox.last(), Some(HeadToDriver::NamedActor { actor: Some(ActorId(3)), .. })));
}

#[test]
fn a_detached_actor_survives_its_job_and_a_non_detached_one_dies_with_it() {
    let mut c = cluster(2, 2);
    let job = c.start_job("detach");
    let other = c.start_job("other");
    create_actor(&mut c, job, 0, ActorId(1), ActorOptions { detached: true, ..ActorOptions::default() });
    create_actor(&mut c, job, 1, ActorId(2), ActorOptions::default());
    run(&mut c, Duration::from_millis(20));
    assert!(alive_on(&c, ActorId(1)).is_some() && alive_on(&c, ActorId(2)).is_some());
    c.driver(job, DriverToHead::FinishJob).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert!(alive_on(&c, ActorId(1)).is_some(), "detached survives");
    let state = c.head.actor(ActorId(2)).unwrap().state;
    assert!(
        matches!(state, ActorState::Dead(ErrorReason::ActorDied { cause: ActorDeath::JobFinished, .. })),
        "{state:?}"
    );
    // Another job can still call the detached actor.
    let out = call(&mut c, other, 0, ActorId(1), 0);
    run(&mut c, Duration::from_millis(20));
    assert!(matches!(c.fetch(other, out), Some(Ok(_))));
}

#[test]
fn a_killed_actor_is_dead_and_its_calls_fail_killed() {
    let mut c = cluster(2, 2);
    let job = c.start_job("kill");
    let actor = ActorId(1);
    create_actor(&mut c, job, 0, actor, ActorOptions { max_restarts: 5, ..ActorOptions::default() });
    run(&mut c, Duration::from_millis(20));
    let running = actor_call(job, 1, actor, 0, "ms=100000");
    let rout = running.return_ids().next().unwrap();
    c.submit(job, running).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![rout])).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.actor(actor).unwrap().running_calls, 1);
    c.driver(job, DriverToHead::KillActor { actor, no_restart: true }).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert!(matches!(
        c.head.actor(actor).unwrap().state,
        ActorState::Dead(ErrorReason::ActorDied { cause: ActorDeath::Killed, .. })
    ));
    assert_eq!(c.head.actor(actor).unwrap().running_calls, 0);
    assert!(matches!(c.fetch(job, rout), Some(Err(ErrorReason::ActorDied { cause: ActorDeath::Killed, .. }))));
    let later = call(&mut c, job, 2, actor, 1);
    run(&mut c, Duration::from_millis(20));
    assert!(matches!(c.fetch(job, later), Some(Err(ErrorReason::ActorDied { cause: ActorDeath::Killed, .. }))));
    assert_eq!(c.head.actor(actor).unwrap().restarts, 0);
    // Its resources are free: two 2-CPU tasks fit on the two nodes.
    let mut outs = Vec::new();
    for i in 0..2 {
        let mut spec = task(job, 10 + i, "ms=100000");
        spec.resources = ResourceSet::cpus(2);
        outs.push(spec.task);
        c.submit(job, spec).unwrap();
    }
    run(&mut c, Duration::from_millis(20));
    for t in outs {
        assert_eq!(c.head.task_state(t), Some(TaskStateKind::Running));
    }
}

fn create_group(c: &mut Cluster, job: JobId, pg: u64, bundles: Vec<ResourceSet>, strategy: PlacementStrategy) {
    let spec = PlacementGroupSpec { bundles, strategy, name: None, detached: false };
    c.driver(job, DriverToHead::CreatePlacementGroup { pg: PlacementGroupId(pg), spec }).unwrap();
}

fn group_nodes(c: &Cluster, pg: u64) -> Vec<Option<NodeId>> {
    c.head.placement_group_nodes(PlacementGroupId(pg)).expect("known group")
}

fn distinct(nodes: &[Option<NodeId>]) -> usize {
    let mut v: Vec<NodeId> = nodes.iter().map(|n| n.expect("reserved")).collect();
    v.sort();
    v.dedup();
    v.len()
}

#[test]
fn each_placement_strategy_reserves_as_it_promises() {
    let mut c = cluster(3, 4);
    let job = c.start_job("strategies");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(1); 2], PlacementStrategy::Pack);
    create_group(&mut c, job, 2, vec![ResourceSet::cpus(1); 3], PlacementStrategy::Spread);
    create_group(&mut c, job, 3, vec![ResourceSet::cpus(1); 2], PlacementStrategy::StrictPack);
    create_group(&mut c, job, 4, vec![ResourceSet::cpus(1); 3], PlacementStrategy::StrictSpread);
    run(&mut c, Duration::from_millis(20));
    assert_eq!(distinct(&group_nodes(&c, 1)), 1, "pack fits on one node");
    assert_eq!(distinct(&group_nodes(&c, 2)), 3, "spread uses every node");
    assert_eq!(distinct(&group_nodes(&c, 3)), 1);
    assert_eq!(distinct(&group_nodes(&c, 4)), 3);
    let ready = c.drivers[&job].inbox.iter().filter(|m| matches!(m, HeadToDriver::PlacementGroupReady { .. })).count();
    assert_eq!(ready, 4);
    // 10 of 12 CPUs are reserved: a 3-CPU task cannot run anywhere, a 1-CPU task inside a group can.
    let mut big = task(job, 0, "ms=1");
    big.resources = ResourceSet::cpus(3);
    let big_t = big.task;
    c.submit(job, big).unwrap();
    let mut inside = task(job, 1, "ms=100000");
    inside.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(4), bundle: Some(2) };
    let inside_t = inside.task;
    c.submit(job, inside).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.task_state(big_t), Some(TaskStateKind::Queued));
    assert_eq!(c.head.task_node(inside_t), group_nodes(&c, 4)[2]);
}

#[test]
fn a_group_that_does_not_fit_reserves_nothing() {
    let mut c = cluster(3, 4);
    let job = c.start_job("all-or-nothing");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(1); 4], PlacementStrategy::StrictSpread);
    create_group(&mut c, job, 2, vec![ResourceSet::cpus(3); 2], PlacementStrategy::StrictPack);
    create_group(
        &mut c,
        job,
        3,
        vec![ResourceSet::cpus(4), ResourceSet::cpus(4), ResourceSet::cpus(4), ResourceSet::cpus(1)],
        PlacementStrategy::Spread,
    );
    run(&mut c, Duration::from_millis(20));
    for pg in 1..=3 {
        assert!(group_nodes(&c, pg).iter().all(Option::is_none), "group {pg} holds a partial reservation");
    }
    // Nothing is held: a whole-node task runs on each of the three nodes.
    let mut ts = Vec::new();
    for i in 0..3 {
        let mut spec = task(job, i, "ms=100000");
        spec.resources = ResourceSet::cpus(4);
        ts.push(spec.task);
        c.submit(job, spec).unwrap();
    }
    run(&mut c, Duration::from_millis(20));
    for t in ts {
        assert_eq!(c.head.task_state(t), Some(TaskStateKind::Running));
    }
}

#[test]
fn removing_a_group_frees_its_resources_and_fails_the_tasks_inside() {
    let mut c = cluster(1, 2);
    let job = c.start_job("remove");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(2)], PlacementStrategy::Pack);
    run(&mut c, Duration::from_millis(20));
    let mut inside = task(job, 0, "ms=100000");
    inside.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(1), bundle: None };
    let inside_out = inside.return_ids().next().unwrap();
    c.submit(job, inside).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![inside_out])).unwrap();
    let mut outside = task(job, 1, "ms=1");
    outside.resources = ResourceSet::cpus(2);
    let outside_out = outside.return_ids().next().unwrap();
    c.submit(job, outside).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![outside_out])).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.task_state(inside_out.task), Some(TaskStateKind::Running));
    assert_eq!(c.head.task_state(outside_out.task), Some(TaskStateKind::Queued));
    c.driver(job, DriverToHead::RemovePlacementGroup(PlacementGroupId(1))).unwrap();
    run(&mut c, Duration::from_millis(50));
    assert!(
        matches!(c.fetch(job, inside_out), Some(Err(ErrorReason::PlacementGroupRemoved { pg })) if pg == PlacementGroupId(1))
    );
    assert!(matches!(c.fetch(job, outside_out), Some(Ok(_))), "the freed CPUs ran the waiting task");
    assert!(c.drivers[&job].inbox.iter().any(|m| matches!(
        m,
        HeadToDriver::PlacementGroupFailed { reason: ErrorReason::PlacementGroupRemoved { .. }, .. }
    )));
    assert!(group_nodes(&c, 1).iter().all(Option::is_none));
}

#[test]
fn on_node_loss_only_the_lost_bundle_is_placed_again() {
    let mut c = cluster(4, 2);
    let job = c.start_job("bundle-loss");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(1); 3], PlacementStrategy::StrictSpread);
    run(&mut c, Duration::from_millis(20));
    let before = group_nodes(&c, 1);
    assert_eq!(distinct(&before), 3);
    let mut inside = task(job, 0, "ms=100000");
    inside.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(1), bundle: Some(0) };
    let t = inside.task;
    c.submit(job, inside).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.task_node(t), before[0]);
    c.crash_host(c.host_of(before[1].unwrap()).unwrap());
    run(&mut c, Duration::from_secs(10));
    let after = group_nodes(&c, 1);
    assert_eq!(after[0], before[0], "bundle 0 keeps its node");
    assert_eq!(after[2], before[2], "bundle 2 keeps its node");
    assert!(after[1].is_some() && after[1] != before[1], "bundle 1 moved: {after:?}");
    assert_eq!(distinct(&after), 3, "still strictly spread");
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Running));
    assert_eq!(c.head.task_attempt(t), Some(0), "the task in a surviving bundle was not restarted");
    assert_eq!(c.head.task_node(t), before[0]);
}

#[test]
fn an_infeasible_group_fails_after_the_grace_period() {
    let mut c = cluster(2, 2);
    let job = c.start_job("infeasible");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(3)], PlacementStrategy::Pack);
    let mut waiting = task(job, 0, "ms=1");
    waiting.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(1), bundle: None };
    let out = waiting.return_ids().next().unwrap();
    c.submit(job, waiting).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    let failed = |c: &Cluster| {
        c.drivers[&job].inbox.iter().any(|m| matches!(
            m,
            HeadToDriver::PlacementGroupFailed { pg, reason: ErrorReason::PlacementGroupInfeasible { .. } } if *pg == PlacementGroupId(1)
        ))
    };
    run(&mut c, Duration::from_secs(9));
    assert!(!failed(&c), "still within the grace period");
    run(&mut c, Duration::from_secs(2));
    assert!(failed(&c));
    assert!(matches!(c.fetch(job, out), Some(Err(ErrorReason::PlacementGroupInfeasible { .. }))));
}

#[test]
fn removing_a_group_kills_the_actor_inside_and_frees_everything() {
    let mut c = cluster(1, 2);
    let job = c.start_job("group-actor");
    create_group(&mut c, job, 1, vec![ResourceSet::cpus(2)], PlacementStrategy::StrictPack);
    run(&mut c, Duration::from_millis(20));
    let actor = ActorId(1);
    let mut creation = actor_creation(job, 0, actor);
    creation.strategy = SchedulingStrategy::PlacementGroup { pg: PlacementGroupId(1), bundle: Some(0) };
    let options = ActorOptions { max_restarts: 3, ..ActorOptions::default() };
    c.driver(job, DriverToHead::CreateActor { options, creation: creation.into() }).unwrap();
    run(&mut c, Duration::from_millis(20));
    assert!(alive_on(&c, actor).is_some());
    let pending = call(&mut c, job, 1, actor, 0);
    c.driver(job, DriverToHead::RemovePlacementGroup(PlacementGroupId(1))).unwrap();
    run(&mut c, Duration::from_millis(50));
    let state = c.head.actor(actor).unwrap().state;
    assert!(matches!(state, ActorState::Dead(ErrorReason::ActorDied { .. })), "{state:?}");
    assert_eq!(c.head.actor(actor).unwrap().restarts, 0, "a removed group's actor does not restart");
    assert!(matches!(c.fetch(job, pending), Some(Err(_))));
    let mut whole = task(job, 5, "ms=1");
    whole.resources = ResourceSet::cpus(2);
    let out = whole.return_ids().next().unwrap();
    c.submit(job, whole).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    run(&mut c, Duration::from_millis(50));
    assert!(matches!(c.fetch(job, out), Some(Ok(_))), "the node's CPUs are all free again");
}

#[test]
fn calls_lost_with_a_restarting_actor_are_retried_in_the_callers_order() {
    let mut c = cluster(3, 2);
    let job = c.start_job("retry-order");
    let actor = ActorId(1);
    let options = ActorOptions { max_restarts: 1, max_task_retries: 1, ..ActorOptions::default() };
    create_actor(&mut c, job, 0, actor, options);
    run(&mut c, Duration::from_millis(20));
    let first = alive_on(&c, actor).unwrap();
    let long = actor_call(job, 1, actor, 0, "ms=3000");
    let long_out = long.return_ids().next().unwrap();
    c.submit(job, long).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![long_out])).unwrap();
    run(&mut c, Duration::from_millis(20));
    let later: Vec<ObjectId> = (1..=2).map(|n| call(&mut c, job, 1 + n, actor, n)).collect();
    run(&mut c, Duration::from_millis(20));
    assert_eq!(c.head.actor(actor).unwrap().running_calls, 3, "calls are pipelined to the actor's node");
    assert!(!c.head.object_ready(later[0]), "but run after call 0");
    let mark = c.head_log.len();
    c.crash_host(c.host_of(first).unwrap());
    run(&mut c, Duration::from_secs(15));
    let dispatched: Vec<(u64, u32)> = c.head_log[mark..]
        .iter()
        .filter_map(|(_, o)| match o {
            HeadOutput::ToNode { msg: HeadToNode::RunTask { spec, attempt, .. }, .. } => match spec.kind {
                TaskKind::ActorMethod { actor: a, seq } if a == actor => Some((seq, *attempt)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(dispatched, vec![(0, 1), (1, 1), (2, 1)], "every pipelined call is retried, in order");
    assert!(matches!(c.fetch(job, long_out), Some(Ok(_))));
    for o in later {
        assert!(matches!(c.fetch(job, o), Some(Ok(_))));
    }
}

#[test]
fn a_call_lost_with_its_actors_worker_on_a_live_node_fails_worker_died_not_node_lost() {
    let mut c = cluster(1, 2);
    let job = c.start_job("worker-died");
    let actor = ActorId(1);
    create_actor(&mut c, job, 0, actor, ActorOptions { max_restarts: 1, ..ActorOptions::default() });
    run(&mut c, Duration::from_millis(20));
    assert!(alive_on(&c, actor).is_some());
    let spec = actor_call(job, 10, actor, 0, "ms=5000");
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    run(&mut c, Duration::from_millis(20));
    c.driver(job, DriverToHead::KillActor { actor, no_restart: false }).unwrap();
    run(&mut c, Duration::from_millis(50));
    c.check_invariants();
    let reason = c.drivers[&job].failed.get(&out).expect("the call failed");
    assert!(
        matches!(reason, ErrorReason::TaskFailed { failure: TaskFailure::WorkerDied { .. }, .. }),
        "a live node must not be blamed: {reason:?}"
    );
    assert!(alive_on(&c, actor).is_some(), "the actor restarts on its node");
}
