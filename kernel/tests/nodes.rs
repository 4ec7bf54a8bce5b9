//! Node membership: failure detection by deadline, busy nodes, re-registration as a new node,
//! flapping, and drain.

use keel_kernel::head::{HeadOutput, TaskStateKind};
use keel_kernel::proto::{DriverToHead, HeadToNode, Labels};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

fn cluster(nodes: usize) -> Cluster {
    let mut c = Cluster::new(HeadConfig::default(), NodeConfig::default(), Duration::from_millis(1));
    for _ in 0..nodes {
        c.add_host(ResourceSet::cpus(2), Labels::new());
    }
    c.run_for(Duration::from_millis(10));
    c
}

fn is_dead(c: &Cluster, node: NodeId) -> bool {
    c.head_log.iter().any(|(_, o)| *o == HeadOutput::NodeDead(node))
}

/// Submits a 20 s task, subscribes to its value and lets it start: (task, value, node, host).
fn long_task_running(c: &mut Cluster, job: JobId) -> (TaskId, ObjectId, NodeId, usize) {
    let spec = task(job, 0, "ms=20000");
    let (t, out) = (spec.task, spec.return_ids().next().unwrap());
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    c.run_for(Duration::from_millis(50));
    let node = c.head.task_node(t).expect("running");
    (t, out, node, c.host_of(node).unwrap())
}

#[test]
fn a_node_busy_with_a_long_task_is_never_declared_dead() {
    let mut c = cluster(1);
    let job = c.start_job("busy");
    let spec = task(job, 0, "ms=30000");
    let t = spec.task;
    c.submit(job, spec).unwrap();
    c.run_for(Duration::from_secs(40));
    c.check_invariants();
    assert!(!is_dead(&c, c.node_id(0)), "a busy node was declared dead");
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Finished));
    assert_eq!(c.head.task_attempt(t), Some(0), "the task was retried although its node was alive");
}

#[test]
fn a_silent_node_is_declared_dead_after_the_timeout_and_not_before() {
    let mut c = cluster(2);
    let node = c.node_id(0);
    c.crash_host(0);
    let timeout = c.head.config().node_timeout;
    c.run_for(Duration(timeout.0 - Duration::from_millis(1_100).0));
    assert!(!is_dead(&c, node), "declared dead before its deadline");
    assert!(c.head.live_nodes().any(|n| n == node));
    c.run_for(Duration::from_millis(1_200));
    assert!(is_dead(&c, node), "not declared dead after its deadline");
    assert!(!c.head.live_nodes().any(|n| n == node));
    c.check_invariants();
}

#[test]
fn a_node_cut_off_then_healed_rejoins_as_a_new_node_and_its_task_runs_again() {
    let mut c = cluster(2);
    let job = c.start_job("partition");
    let (t, out, old, host) = long_task_running(&mut c, job);
    c.set_partitioned(host, true);
    c.run_for(Duration::from_secs(8));
    assert!(is_dead(&c, old));
    assert_eq!(c.head.task_attempt(t), Some(1), "the task was not retried on the other node");
    c.set_partitioned(host, false);
    c.run_for(Duration::from_secs(3));
    c.check_invariants();
    let reregister = c
        .head_log
        .iter()
        .any(|(_, o)| matches!(o, HeadOutput::ToNode { node, msg: HeadToNode::Reregister } if *node == old));
    assert!(reregister, "the healed node was not told to register again");
    let new = c.hosts[host].id.expect("registered again");
    assert_ne!(new, old, "a node declared dead came back under its old id");
    assert!(c.head.live_nodes().any(|n| n == new));
    c.run_for(Duration::from_secs(30));
    assert!(matches!(c.fetch(job, out), Some(Ok(_))));
}

#[test]
fn a_flapping_node_gets_a_new_id_every_time_and_work_still_completes() {
    let mut c = cluster(2);
    let job = c.start_job("flap");
    let mut outs = Vec::new();
    for i in 0..6 {
        let spec = task(job, i, "ms=3000");
        outs.extend(spec.return_ids());
        c.submit(job, spec).unwrap();
    }
    c.driver(job, DriverToHead::Subscribe(outs.clone())).unwrap();
    let mut ids = vec![c.node_id(0)];
    for _ in 0..3 {
        c.set_partitioned(0, true);
        c.run_for(Duration::from_secs(7));
        c.set_partitioned(0, false);
        c.run_for(Duration::from_secs(2));
        c.check_invariants();
        ids.push(c.hosts[0].id.expect("registered"));
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a node id was reused: {ids:?}");
    c.run_for(Duration::from_secs(30));
    c.check_invariants();
    for o in outs {
        assert!(matches!(c.fetch(job, o), Some(Ok(_))), "{o} did not complete");
    }
}

#[test]
fn a_draining_node_gets_no_new_work_and_is_reported_drained_once_idle() {
    let mut c = cluster(2);
    let job = c.start_job("drain");
    let first = task(job, 0, "ms=500");
    let t0 = first.task;
    let mut spec = first;
    spec.strategy = proto::SchedulingStrategy::NodeAffinity { node: c.node_id(0), soft: false };
    c.submit(job, spec).unwrap();
    c.run_for(Duration::from_millis(10));
    assert_eq!(c.head.task_node(t0), Some(c.node_id(0)));
    c.drain(0).unwrap();
    let mut later = Vec::new();
    for i in 1..5 {
        let spec = task(job, i, "ms=10");
        later.push(spec.task);
        c.submit(job, spec).unwrap();
    }
    c.run_for(Duration::from_millis(100));
    for t in &later {
        assert_ne!(c.head.task_node(*t), Some(c.node_id(0)), "new work went to a draining node");
    }
    let node = c.node_id(0);
    let drained = |c: &Cluster| c.head_log.iter().any(|(_, o)| matches!(o, HeadOutput::NodeDrained(n) if *n == node));
    assert!(!drained(&c), "reported drained while a task still runs");
    c.run_for(Duration::from_secs(1));
    c.check_invariants();
    assert!(drained(&c), "not reported drained once idle");
    assert_eq!(c.head.task_state(t0), Some(TaskStateKind::Finished));
    assert_eq!(c.head.task_attempt(t0), Some(0), "draining must not retry running work");
    assert!(!c.hosts[0].up, "the host stops its drained node");
    assert!(!c.head.live_nodes().any(|n| n == node), "a drained node that left is still counted live");
}

#[test]
fn queued_work_that_only_a_drained_node_could_hold_fails_as_infeasible() {
    let mut c = cluster(1);
    let job = c.start_job("drain-infeasible");
    let mut long = task(job, 0, "ms=1000000");
    long.resources = ResourceSet::cpus(2);
    let mut waiting = task(job, 1, "ms=10");
    waiting.resources = ResourceSet::cpus(2);
    let (l, w) = (long.task, waiting.task);
    c.submit(job, long).unwrap();
    c.run_for(Duration::from_millis(10));
    c.submit(job, waiting).unwrap();
    c.run_for(Duration::from_millis(10));
    assert_eq!(c.head.task_state(w), Some(TaskStateKind::Queued), "the only node is busy: it waits");
    c.drain(0).unwrap();
    let grace = c.head.config().infeasible_grace;
    c.run_for(Duration(grace.0 + Duration::from_secs(1).0));
    c.check_invariants();
    assert_eq!(c.head.task_state(l), Some(TaskStateKind::Running), "draining does not stop running work");
    assert_eq!(c.head.task_state(w), Some(TaskStateKind::Failed), "no schedulable node can ever hold it");
}

/// A task cancelled without force runs on and seals its value after its only handle was
/// dropped: whatever the head makes of the late completion, the orphaned value must not stay
/// on the node.
#[test]
fn a_value_sealed_by_an_attempt_the_head_no_longer_wants_is_deleted() {
    let mut c = cluster(1);
    let job = c.start_job("orphans");
    let spec = task(job, 0, "ms=50;bytes=300000");
    let (t, out) = (spec.task, spec.return_ids().next().unwrap());
    c.submit(job, spec).unwrap();
    c.run_for(Duration::from_millis(10));
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Running));
    c.driver(job, DriverToHead::Cancel { task: t, force: false, recursive: false }).unwrap();
    c.driver(job, DriverToHead::RemoveRef(out)).unwrap();
    c.run_for(Duration::from_millis(200));
    c.check_invariants();
    assert!(c.hosts[0].store.is_empty(), "the orphaned value of {out} is still stored");
    assert!(c.hosts[0].node.local_object(out).is_none(), "the node still lists {out}");
}

/// A forced cancel crosses the attempt's completion on the wire: the head has ended the
/// attempt, refuses the completion, and has the node delete the value it sealed.
#[test]
fn a_value_sealed_by_an_attempt_cancelled_in_flight_is_deleted() {
    let mut c = Cluster::new(HeadConfig::default(), NodeConfig::default(), Duration::from_millis(10));
    c.add_host(ResourceSet::cpus(2), Labels::new());
    c.run_for(Duration::from_millis(30));
    let job = c.start_job("crossing");
    let spec = task(job, 0, "ms=50;bytes=300000");
    let (t, out) = (spec.task, spec.return_ids().next().unwrap());
    c.submit(job, spec).unwrap();
    // The node finishes while the cancel is on its way.
    let mut waited = 0;
    while c.hosts[0].node.task_count() == 0 {
        c.run_for(Duration::from_millis(1));
        waited += 1;
        assert!(waited < 500, "the task never reached its node");
    }
    while c.hosts[0].node.task_count() > 0 {
        c.run_for(Duration::from_millis(1));
        waited += 1;
        assert!(waited < 500, "the task never finished on its node");
    }
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Running), "the completion is still on the wire");
    c.driver(job, DriverToHead::Cancel { task: t, force: true, recursive: false }).unwrap();
    c.run_for(Duration::from_millis(200));
    c.check_invariants();
    assert!(c.hosts[0].store.is_empty(), "the orphaned value of {out} is still stored");
    assert!(c.hosts[0].node.local_object(out).is_none(), "the node still lists {out}");
}

#[test]
fn a_node_whose_connection_closes_is_lost_at_once_and_its_task_runs_again_elsewhere() {
    let mut c = cluster(2);
    let job = c.start_job("crash");
    let (t, out, old, host) = long_task_running(&mut c, job);
    // The process dies and the head's end of its connection closes: no waiting for the deadline.
    c.crash_host(host);
    c.head_input(HeadInput::NodeDisconnected(old)).unwrap();
    assert!(is_dead(&c, old), "a node whose connection closed is still live");
    assert!(!c.head.live_nodes().any(|n| n == old));
    c.run_for(Duration::from_millis(10));
    assert_eq!(c.head.task_attempt(t), Some(1), "the task was not retried at once");
    assert_ne!(c.head.task_node(t), Some(old));
    // A second notice, or one for a node long gone, changes nothing.
    c.head_input(HeadInput::NodeDisconnected(old)).unwrap();
    c.check_invariants();
    c.run_for(Duration::from_secs(30));
    assert!(matches!(c.fetch(job, out), Some(Ok(_))));
}
