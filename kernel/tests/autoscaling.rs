//! The Head's autoscaling decisions, end to end in the in-memory cluster: the test plays the
//! provider (it starts a node with the launch labels for each node launched).

use keel_kernel::autoscaler::{
    AutoscalerConfig, Limits, NodeType, Unmet, INSTANCE_LABEL, LAUNCH_LABEL, NODE_TYPE_LABEL,
};
use keel_kernel::proto::{DriverToHead, Labels};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

fn config(max_workers: u32, min_workers: u32) -> HeadConfig {
    let cpu4 = NodeType {
        name: "cpu4".into(),
        resources: ResourceSet::cpus(4),
        labels: Labels::new(),
        min_workers,
        max_workers,
    };
    HeadConfig {
        autoscaler: Some(AutoscalerConfig {
            node_types: vec![cpu4],
            limits: Limits { max_workers: 20, upscaling_speed: 1.0 },
            period: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            launch_timeout: Duration::from_secs(20),
            max_launch_failures: 2,
            failure_backoff: Duration::from_secs(60),
        }),
        ..HeadConfig::default()
    }
}

fn cluster(config: HeadConfig) -> Cluster {
    Cluster::new(config, NodeConfig::default(), Duration::from_millis(1))
}

/// Launch requests emitted so far: (request, type, count).
fn launches(c: &Cluster) -> Vec<(u64, String, u32)> {
    c.head_log
        .iter()
        .filter_map(|(_, o)| match o {
            HeadOutput::Launch { request, node_type, count } => Some((*request, node_type.clone(), *count)),
            _ => None,
        })
        .collect()
}

fn terminated(c: &Cluster) -> Vec<(Time, NodeId)> {
    c.head_log
        .iter()
        .filter_map(|(at, o)| match o {
            HeadOutput::Terminate { node } => Some((*at, *node)),
            _ => None,
        })
        .collect()
}

/// The labels of a `cpu4` node of launch `request` on machine `instance`.
fn launched(request: &str, instance: &str) -> Labels {
    let mut labels = Labels::new();
    labels.insert(LAUNCH_LABEL.into(), request.into());
    labels.insert(NODE_TYPE_LABEL.into(), "cpu4".into());
    labels.insert(INSTANCE_LABEL.into(), instance.into());
    labels
}

/// Plays the provider: starts the nodes of every launch not yet started.
fn provide(c: &mut Cluster, started: &mut usize) {
    let all = launches(c);
    for (request, node_type, count) in all.into_iter().skip(*started) {
        for _ in 0..count {
            let mut labels = Labels::new();
            labels.insert(LAUNCH_LABEL.into(), request.to_string());
            labels.insert(NODE_TYPE_LABEL.into(), node_type.clone());
            c.add_host(ResourceSet::cpus(4), labels);
        }
        *started += 1;
    }
}

#[test]
fn a_burst_grows_the_cluster_from_zero_runs_everything_and_shrinks_back_after_the_idle_timeout() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("burst");
    let mut outs = Vec::new();
    for i in 0..8 {
        let spec = task(job, i, "ms=3000");
        outs.push(spec.return_ids().next().unwrap());
        c.submit(job, spec).unwrap();
    }
    c.driver(job, DriverToHead::Subscribe(outs.clone())).unwrap();
    c.run_for(Duration::from_millis(1_500));
    // 8 one-CPU tasks, nodes of 4 CPUs: two nodes, asked for once.
    assert_eq!(launches(&c), vec![(0, "cpu4".into(), 2)]);
    let mut started = 0;
    provide(&mut c, &mut started);
    c.run_for(Duration::from_secs(5));
    let view = &c.drivers[&job];
    assert!(outs.iter().all(|o| view.ready.contains_key(o)), "every task finished: {:?}", view.failed);
    assert!(terminated(&c).is_empty(), "nothing is stopped before the idle timeout");
    assert_eq!(launches(&c).len(), 1, "the launching nodes were counted: nothing launched twice");
    c.run_for(Duration::from_secs(8));
    let stopped = terminated(&c);
    assert_eq!(stopped.len(), 2, "both idle nodes are stopped: {stopped:?}");
    let finished_at = c.head_log.iter().rev().find_map(|(at, o)| match o {
        HeadOutput::ToDriver { .. } => Some(*at),
        _ => None,
    });
    assert!(stopped.iter().all(|(at, _)| at.saturating_since(finished_at.unwrap()) >= Duration::from_secs(5)));
    c.run_for(Duration::from_secs(30));
    assert_eq!(launches(&c).len(), 1, "no flapping: nothing launched again without demand");
    assert_eq!(c.head.live_nodes().count(), 0, "back to zero");
    c.check_invariants();
}

#[test]
fn a_machine_that_registers_twice_counts_once_for_its_launch() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("twice");
    for i in 0..8 {
        c.submit(job, task(job, i, "ms=3000")).unwrap();
    }
    c.run_for(Duration::from_millis(1_500));
    assert_eq!(launches(&c), vec![(0, "cpu4".into(), 2)]);
    let mut labels = launched("0", "machine-1");
    // The same machine registers, then registers again (as after a partition).
    c.add_host(ResourceSet::cpus(4), labels.clone());
    c.run_for(Duration::from_millis(100));
    c.add_host(ResourceSet::cpus(4), labels.clone());
    c.run_for(Duration::from_millis(100));
    let status = c.head.autoscaler_status();
    assert_eq!(status.launching, vec![(0, "cpu4".to_string(), 1)], "one node of the launch is still to come");
    // The other machine settles the launch.
    labels.insert(INSTANCE_LABEL.into(), "machine-2".into());
    c.add_host(ResourceSet::cpus(4), labels);
    c.run_for(Duration::from_millis(100));
    assert!(c.head.autoscaler_status().launching.is_empty());
}

#[test]
fn a_stopped_machine_that_registers_again_is_stopped_again_and_given_no_work() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("again");
    c.submit(job, task(job, 0, "ms=100")).unwrap();
    c.run_for(Duration::from_millis(1_500));
    let labels = launched("0", "machine-1");
    c.add_host(ResourceSet::cpus(4), labels.clone());
    // The task runs, the node idles past the timeout and is stopped.
    c.run_for(Duration::from_secs(10));
    assert_eq!(terminated(&c).len(), 1);
    // The machine outlived its stop and registers again: it is stopped again at once.
    c.add_host(ResourceSet::cpus(4), labels);
    c.run_for(Duration::from_millis(100));
    let stopped = terminated(&c);
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    let again = stopped[1].1;
    let spec = task(job, 1, "ms=100");
    c.submit(job, spec.clone()).unwrap();
    c.run_for(Duration::from_millis(100));
    assert_ne!(c.head.task_node(spec.task), Some(again), "no work goes to a machine being stopped");
    assert_eq!(c.head.stats().nodes_lost, 0);
}

#[test]
fn work_only_a_launchable_node_could_run_waits_instead_of_failing_as_infeasible() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("patient");
    let spec = task(job, 0, "ms=10");
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    // Longer than the infeasible grace (10 s) before any node comes.
    c.run_for(Duration::from_secs(25));
    assert!(c.drivers[&job].failed.is_empty(), "{:?}", c.drivers[&job].failed);
    let mut started = 0;
    provide(&mut c, &mut started);
    c.run_for(Duration::from_secs(2));
    assert!(c.drivers[&job].ready.contains_key(&out));
    // A shape no type has still fails (after the grace).
    let mut big = task(job, 1, "ms=10");
    big.resources = ResourceSet::cpus(64);
    let big_out = big.return_ids().next().unwrap();
    c.submit(job, big).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![big_out])).unwrap();
    c.run_for(Duration::from_secs(12));
    assert!(c.drivers[&job].failed.contains_key(&big_out));
    assert!(c.head.autoscaler_status().unmet.iter().all(|(_, _, why)| *why == Unmet::Infeasible));
}

#[test]
fn failed_and_timed_out_launches_are_retried_then_the_type_backs_off() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("unlucky");
    c.submit(job, task(job, 0, "ms=10")).unwrap();
    c.run_for(Duration::from_millis(1_500));
    let first = launches(&c);
    assert_eq!(first.len(), 1);
    // The provider fails it: the next decision asks again.
    c.head_input(HeadInput::LaunchFailed { request: first[0].0, reason: "no capacity".into() }).unwrap();
    c.run_for(Duration::from_secs(1));
    let second = launches(&c);
    assert_eq!(second.len(), 2, "{second:?}");
    // This one never registers: after the launch timeout it counts as the second failure, and
    // the type is left alone for the backoff.
    c.run_for(Duration::from_secs(21));
    let status = c.head.autoscaler_status();
    assert_eq!(status.backing_off.len(), 1, "{status:?}");
    assert!(status.unmet.iter().any(|(_, n, why)| *n == 1 && *why == Unmet::AtLimit), "{status:?}");
    let during = launches(&c).len();
    c.run_for(Duration::from_secs(30));
    assert_eq!(launches(&c).len(), during, "no launch while backing off");
    c.run_for(Duration::from_secs(40));
    assert_eq!(launches(&c).len(), during + 1, "asked again once the backoff is over");
}

#[test]
fn min_workers_stay_and_explicit_requests_count_as_demand() {
    let mut c = cluster(config(10, 1));
    let job = c.start_job("steady");
    c.run_for(Duration::from_millis(1_500));
    assert_eq!(launches(&c), vec![(0, "cpu4".into(), 1)], "the minimum, without demand");
    let mut started = 0;
    provide(&mut c, &mut started);
    c.run_for(Duration::from_secs(20));
    assert!(terminated(&c).is_empty(), "the minimum node is never stopped for idleness");
    // Ask for room for 10 CPUs: the one node holds 4, two more are launched.
    c.driver(job, DriverToHead::RequestResources(vec![(ResourceSet::cpus(1), 10)])).unwrap();
    c.run_for(Duration::from_secs(2));
    assert_eq!(launches(&c)[1..], [(1, "cpu4".into(), 2)]);
    provide(&mut c, &mut started);
    c.run_for(Duration::from_secs(20));
    assert!(terminated(&c).is_empty(), "requested room is kept");
    // Withdrawn: the two extra nodes go, the minimum stays.
    c.driver(job, DriverToHead::RequestResources(Vec::new())).unwrap();
    c.run_for(Duration::from_secs(10));
    assert_eq!(terminated(&c).len(), 2);
    assert_eq!(c.head.live_nodes().count(), 1);
}

#[test]
fn nodes_launched_for_a_pending_placement_group_are_not_stopped_while_it_waits_for_the_rest() {
    // Ray #50783: a STRICT_SPREAD group of three 4-CPU bundles needs three nodes. Two arrive at
    // once, the third late; the two sit idle (the group is all-or-nothing) but must not be
    // stopped, or the cluster launches and stops for the same group forever.
    let mut c = cluster(config(10, 0));
    let job = c.start_job("gang");
    let spec = keel_kernel::proto::PlacementGroupSpec {
        bundles: vec![ResourceSet::cpus(4); 3],
        strategy: keel_kernel::proto::PlacementStrategy::StrictSpread,
        name: None,
        detached: false,
    };
    c.driver(job, DriverToHead::CreatePlacementGroup { pg: PlacementGroupId(1), spec }).unwrap();
    c.run_for(Duration::from_millis(1_500));
    let asked = launches(&c);
    assert_eq!(asked, vec![(0, "cpu4".into(), 3)]);
    for _ in 0..2 {
        let mut labels = Labels::new();
        labels.insert(LAUNCH_LABEL.into(), "0".into());
        labels.insert(NODE_TYPE_LABEL.into(), "cpu4".into());
        c.add_host(ResourceSet::cpus(4), labels);
    }
    c.run_for(Duration::from_secs(12));
    assert!(terminated(&c).is_empty(), "idle, but the pending group needs them: {:?}", terminated(&c));
    assert_eq!(launches(&c).len(), 1, "the third node is still counted as launching");
    let mut labels = Labels::new();
    labels.insert(LAUNCH_LABEL.into(), "0".into());
    labels.insert(NODE_TYPE_LABEL.into(), "cpu4".into());
    c.add_host(ResourceSet::cpus(4), labels);
    c.run_for(Duration::from_secs(2));
    let nodes = c.head.placement_group_nodes(PlacementGroupId(1)).unwrap();
    assert!(nodes.iter().all(Option::is_some), "the group is placed: {nodes:?}");
}

/// A config with a second type, `zone-a`, whose nodes carry `zone=a`.
fn config_with_zone() -> HeadConfig {
    let mut c = config(10, 0);
    let mut zone = NodeType {
        name: "zone-a".into(),
        resources: ResourceSet::cpus(4),
        labels: Labels::new(),
        min_workers: 0,
        max_workers: 10,
    };
    zone.labels.insert("zone".into(), "a".into());
    c.autoscaler.as_mut().unwrap().node_types.push(zone);
    c
}

#[test]
fn a_task_whose_labels_only_a_launchable_type_has_gets_a_node_of_that_type() {
    let mut c = cluster(config_with_zone());
    // A static node with room, but no `zone=a`.
    c.add_host(ResourceSet::cpus(4), Labels::new());
    let job = c.start_job("zoned");
    let mut spec = task(job, 0, "ms=10");
    spec.label_selector =
        vec![keel_kernel::proto::LabelConstraint::In { key: "zone".into(), values: vec!["a".into()] }];
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    c.run_for(Duration::from_millis(1_500));
    assert_eq!(launches(&c), vec![(0, "zone-a".into(), 1)]);
    let mut labels = Labels::new();
    labels.insert(LAUNCH_LABEL.into(), "0".into());
    labels.insert(NODE_TYPE_LABEL.into(), "zone-a".into());
    labels.insert("zone".into(), "a".into());
    c.add_host(ResourceSet::cpus(4), labels);
    c.run_for(Duration::from_secs(2));
    assert!(c.drivers[&job].ready.contains_key(&out));
}

#[test]
fn work_bound_to_one_node_still_fails_as_infeasible_and_launches_nothing() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("bound");
    let mut spec = task(job, 0, "ms=10");
    spec.strategy = keel_kernel::proto::SchedulingStrategy::NodeAffinity { node: NodeId(99), soft: false };
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    c.run_for(Duration::from_secs(12));
    assert!(c.drivers[&job].failed.contains_key(&out), "a new node cannot be node 99");
    assert!(launches(&c).is_empty(), "{:?}", launches(&c));
}

#[test]
fn demand_no_type_could_hold_does_not_keep_idle_nodes() {
    let mut c = cluster(config(10, 0));
    let job = c.start_job("greedy");
    c.driver(job, DriverToHead::RequestResources(vec![(ResourceSet::cpus(2), 3)])).unwrap();
    c.run_for(Duration::from_millis(1_500));
    let mut started = 0;
    provide(&mut c, &mut started);
    c.run_for(Duration::from_secs(2));
    // Now ask for 64 CPUs at once instead: no type has them; the two nodes are idle.
    c.driver(job, DriverToHead::RequestResources(vec![(ResourceSet::cpus(64), 1)])).unwrap();
    c.run_for(Duration::from_secs(8));
    assert_eq!(terminated(&c).len(), 2, "{:?}", c.head.autoscaler_status());
}
