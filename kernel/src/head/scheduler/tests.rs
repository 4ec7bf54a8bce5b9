//! Tests of the scheduler's policies and indices.

use super::*;
use crate::proto::PlacementStrategy;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gpus(amount: u64) -> ResourceSet {
    ResourceSet::default().with_gpu(Amount(amount))
}

fn deterministic() -> SchedulerConfig {
    SchedulerConfig { top_k: 1, ..SchedulerConfig::default() }
}

/// A view with `count` nodes `1..=count` of `cpus` CPUs each.
fn cpu_cluster(config: SchedulerConfig, count: u64, cpus: u64) -> ClusterView {
    let mut view = ClusterView::new(config);
    for id in 1..=count {
        view.add_node(n(id), ResourceSet::cpus(cpus), Labels::new());
    }
    view.check_invariants();
    view
}

/// Schedules and checks the invariants afterwards.
fn place_with(
    view: &mut ClusterView,
    resources: &ResourceSet,
    strategy: SchedulingStrategy,
    label_constraints: &[LabelConstraint],
    locality: &[(NodeId, u64)],
) -> Result<(NodeId, Allocation), NoPlacement> {
    let req = PlacementRequest { resources, strategy: &strategy, labels: label_constraints, locality };
    let placed = view.schedule(&req, &mut rng(1));
    view.check_invariants();
    placed
}

fn place(view: &mut ClusterView, resources: &ResourceSet) -> Result<NodeId, NoPlacement> {
    place_with(view, resources, SchedulingStrategy::Default, &[], &[]).map(|(node, _)| node)
}

fn spread(view: &mut ClusterView, resources: &ResourceSet) -> Result<NodeId, NoPlacement> {
    place_with(view, resources, SchedulingStrategy::Spread, &[], &[]).map(|(node, _)| node)
}

#[test]
fn pack_fills_a_node_to_the_threshold_before_spilling() {
    let mut view = cpu_cluster(deterministic(), 2, 8);
    let first: Vec<NodeId> = (0..4).map(|_| place(&mut view, &ResourceSet::cpus(1)).unwrap()).collect();
    assert_eq!(first, vec![n(1); 4], "node 1 takes work until it is half full");
    let second: Vec<NodeId> = (0..4).map(|_| place(&mut view, &ResourceSet::cpus(1)).unwrap()).collect();
    assert_eq!(second, vec![n(2); 4], "then node 2 fills to the threshold");
    let beyond: Vec<NodeId> = (0..4).map(|_| place(&mut view, &ResourceSet::cpus(1)).unwrap()).collect();
    assert_eq!(beyond, vec![n(1), n(2), n(1), n(2)], "past the threshold it spreads, least utilised first");
}

#[test]
fn pack_prefers_the_most_utilised_node_that_stays_under_the_threshold() {
    let mut view = cpu_cluster(deterministic(), 3, 10);
    view.allocate(n(2), &ResourceSet::cpus(3)).unwrap();
    view.allocate(n(3), &ResourceSet::cpus(5)).unwrap();
    assert_eq!(place(&mut view, &ResourceSet::cpus(2)), Ok(n(2)), "node 3 would pass 0.5, node 2 is fuller than 1");
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Ok(n(1)), "nodes 2 and 3 would pass 0.5: node 1");
}

#[test]
fn top_k_choice_is_reproducible_with_the_same_seed_and_varies_across_seeds() {
    let run = |seed: u64| -> Vec<NodeId> {
        let mut view = cpu_cluster(SchedulerConfig::default(), 10, 100);
        let mut seeded = rng(seed);
        let req = PlacementRequest {
            resources: &ResourceSet::cpus(1),
            strategy: &SchedulingStrategy::Default,
            labels: &[],
            locality: &[],
        };
        (0..30).map(|_| view.schedule(&req, &mut seeded).unwrap().0).collect()
    };
    assert_eq!(run(42), run(42), "the same seed gives the same decisions");
    let runs: Vec<Vec<NodeId>> = (0..8).map(run).collect();
    assert!(runs.iter().any(|r| *r != runs[0]), "different seeds choose differently among the top 3");
    assert!(runs.iter().flatten().all(|node| node.0 <= 3), "every pick is among the top 3 candidates");
}

#[test]
fn spread_breaks_ties_round_robin_when_utilisation_does_not_move() {
    let mut view = cpu_cluster(deterministic(), 3, 1000);
    let tiny = ResourceSet { cpu: Amount(1), ..ResourceSet::default() };
    let picks: Vec<u64> = (0..9).map(|_| spread(&mut view, &tiny).unwrap().0).collect();
    assert_eq!(picks, vec![1, 2, 3, 1, 2, 3, 1, 2, 3], "ties at the same level rotate instead of packing node 1");
}

#[test]
fn spread_under_load_still_alternates() {
    let mut view = cpu_cluster(deterministic(), 3, 100);
    for id in 1..=3 {
        view.allocate(n(id), &ResourceSet::cpus(90)).unwrap();
    }
    let picks: Vec<u64> = (0..9).map(|_| spread(&mut view, &ResourceSet::cpus(1)).unwrap().0).collect();
    assert_eq!(picks, vec![1, 2, 3, 1, 2, 3, 1, 2, 3]);
    let until_full: usize = std::iter::from_fn(|| spread(&mut view, &ResourceSet::cpus(1)).ok()).count();
    assert_eq!(until_full, 21, "the three nodes fill up to 100 CPUs each");
    assert_eq!(spread(&mut view, &ResourceSet::cpus(1)), Err(NoPlacement::Wait));
}

#[test]
fn label_constraints_choose_nodes_and_unmatched_labels_are_infeasible() {
    let mut view = ClusterView::new(deterministic());
    view.add_node(n(1), ResourceSet::cpus(4), labels(&[("zone", "a")]));
    view.add_node(n(2), ResourceSet::cpus(4), labels(&[("zone", "b"), ("ssd", "yes")]));
    let zone = |values: &[&str]| LabelConstraint::In {
        key: "zone".into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let cpu = ResourceSet::cpus(1);
    let on = |view: &mut ClusterView, constraints: &[LabelConstraint]| {
        place_with(view, &cpu, SchedulingStrategy::Default, constraints, &[]).map(|(node, _)| node)
    };
    assert_eq!(on(&mut view, &[zone(&["b"])]), Ok(n(2)));
    assert_eq!(on(&mut view, &[LabelConstraint::Exists("ssd".into())]), Ok(n(2)));
    assert_eq!(on(&mut view, &[LabelConstraint::DoesNotExist("ssd".into())]), Ok(n(1)));
    let not_a = LabelConstraint::NotIn { key: "zone".into(), values: vec!["a".into()] };
    assert_eq!(on(&mut view, &[not_a, zone(&["a", "b"])]), Ok(n(2)));
    assert_eq!(on(&mut view, &[zone(&["c"])]), Err(NoPlacement::Infeasible));
    view.allocate(n(2), &ResourceSet::cpus(1)).unwrap();
    assert_eq!(on(&mut view, &[zone(&["b"])]), Err(NoPlacement::Wait), "node 2 is full but could hold it");
    let spread_b = place_with(&mut view, &cpu, SchedulingStrategy::Spread, &[zone(&["a"])], &[]);
    assert_eq!(spread_b.map(|(node, _)| node), Ok(n(1)), "SPREAD honours labels too");
}

#[test]
fn hard_affinity_waits_for_its_node_and_is_infeasible_when_it_can_never_run_there() {
    let mut view = cpu_cluster(deterministic(), 2, 4);
    let hard = |node| SchedulingStrategy::NodeAffinity { node: n(node), soft: false };
    let on = |view: &mut ClusterView, req: &ResourceSet, node| {
        place_with(view, req, hard(node), &[], &[]).map(|(node, _)| node)
    };
    assert_eq!(on(&mut view, &ResourceSet::cpus(4), 2), Ok(n(2)), "node 2 although node 1 is emptier");
    assert_eq!(on(&mut view, &ResourceSet::cpus(1), 2), Err(NoPlacement::Wait), "no room now on node 2");
    assert_eq!(on(&mut view, &ResourceSet::cpus(5), 1), Err(NoPlacement::Infeasible), "never fits node 1");
    assert_eq!(on(&mut view, &ResourceSet::cpus(1), 9), Err(NoPlacement::Infeasible), "unknown node");
    view.set_schedulable(n(1), false);
    view.check_invariants();
    assert_eq!(on(&mut view, &ResourceSet::cpus(1), 1), Err(NoPlacement::Infeasible), "draining node");
    let wrong_label = [LabelConstraint::Exists("gpu-type".into())];
    view.set_schedulable(n(1), true);
    let labelled = place_with(&mut view, &ResourceSet::cpus(1), hard(1), &wrong_label, &[]);
    assert_eq!(labelled.map(|(node, _)| node), Err(NoPlacement::Infeasible), "labels never match");
}

#[test]
fn soft_affinity_falls_back_to_the_default_policy() {
    let mut view = cpu_cluster(deterministic(), 3, 4);
    let soft = |node| SchedulingStrategy::NodeAffinity { node: n(node), soft: true };
    let on = |view: &mut ClusterView, req: &ResourceSet, node| {
        place_with(view, req, soft(node), &[], &[]).map(|(node, _)| node)
    };
    assert_eq!(on(&mut view, &ResourceSet::cpus(4), 3), Ok(n(3)), "node 3 while it fits");
    assert_eq!(on(&mut view, &ResourceSet::cpus(1), 3), Ok(n(1)), "node 3 is full: hybrid picks node 1");
    assert_eq!(on(&mut view, &ResourceSet::cpus(1), 99), Ok(n(1)), "unknown node: hybrid packs node 1");
    assert_eq!(on(&mut view, &ResourceSet::cpus(5), 3), Err(NoPlacement::Infeasible));
}

#[test]
fn cpu_only_work_avoids_gpu_nodes_until_no_gpu_less_node_fits() {
    let mut view = ClusterView::new(deterministic());
    view.add_node(n(1), ResourceSet::cpus(4).with_gpu(Amount::units(1)), Labels::new());
    view.add_node(n(2), ResourceSet::cpus(4), Labels::new());
    assert_eq!(place(&mut view, &ResourceSet::cpus(3)), Ok(n(2)), "the GPU-less node, though node 1 ranks first");
    let local = place_with(&mut view, &ResourceSet::cpus(1), SchedulingStrategy::Default, &[], &[(n(1), 1 << 30)]);
    assert_eq!(local.map(|(node, _)| node), Ok(n(2)), "GPU avoidance outranks locality");
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Ok(n(1)), "node 2 is full: the GPU node takes it");
    assert_eq!(place(&mut view, &ResourceSet::cpus(1).with_gpu(Amount::ONE)), Ok(n(1)), "GPU work on GPU nodes");
    assert_eq!(place(&mut view, &gpus(5_000)), Err(NoPlacement::Wait), "the only GPU is taken");
}

#[test]
fn gpu_avoidance_can_be_turned_off() {
    let mut view = ClusterView::new(SchedulerConfig { avoid_gpu_nodes: false, ..deterministic() });
    view.add_node(n(1), ResourceSet::cpus(4).with_gpu(Amount::units(1)), Labels::new());
    view.add_node(n(2), ResourceSet::cpus(4), Labels::new());
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Ok(n(1)), "lowest id on a tie");
    assert_eq!(spread(&mut view, &ResourceSet::cpus(1)), Ok(n(2)), "least utilised across both kinds");
}

#[test]
fn locality_prefers_the_node_holding_most_bytes_and_falls_back_in_order() {
    let mut view = cpu_cluster(deterministic(), 3, 4);
    let locality = [(n(3), 500), (n(2), 100)];
    let cpu = ResourceSet::cpus(2);
    let mut on = || place_with(&mut view, &cpu, SchedulingStrategy::Default, &[], &locality).map(|(node, _)| node);
    assert_eq!(on(), Ok(n(3)));
    assert_eq!(on(), Ok(n(3)));
    assert_eq!(on(), Ok(n(2)), "node 3 is full: the next locality node");
    assert_eq!(on(), Ok(n(2)));
    assert_eq!(on(), Ok(n(1)), "no locality node fits: hybrid");
}

#[test]
fn infeasible_and_wait_are_told_apart() {
    let mut view = cpu_cluster(deterministic(), 1, 4);
    assert_eq!(place(&mut view, &ResourceSet::cpus(5)), Err(NoPlacement::Infeasible), "larger than any node");
    let tpu = ResourceSet::cpus(1).with_custom("tpu", Amount::ONE);
    assert_eq!(place(&mut view, &tpu), Err(NoPlacement::Infeasible), "a resource no node has");
    assert_eq!(place(&mut view, &gpus(15_000)), Err(NoPlacement::Infeasible), "an invalid shape");
    assert_eq!(place(&mut view, &ResourceSet::cpus(3)), Ok(n(1)));
    assert_eq!(place(&mut view, &ResourceSet::cpus(2)), Err(NoPlacement::Wait), "fits only when empty");
    view.set_schedulable(n(1), false);
    view.check_invariants();
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Err(NoPlacement::Infeasible), "draining nodes count not");
    let strategy = SchedulingStrategy::PlacementGroup { pg: crate::ids::PlacementGroupId(1), bundle: None };
    view.set_schedulable(n(1), true);
    let in_group = place_with(&mut view, &ResourceSet::cpus(1), strategy, &[], &[]);
    assert_eq!(in_group.map(|(node, _)| node), Err(NoPlacement::Infeasible), "placement groups are not scheduled here");
}

#[test]
fn infeasible_becomes_wait_or_placed_when_a_big_enough_node_joins() {
    let mut view = cpu_cluster(deterministic(), 1, 4);
    let zone_b = [LabelConstraint::In { key: "zone".into(), values: vec!["b".into()] }];
    let big = ResourceSet::cpus(8);
    let try_big = |view: &mut ClusterView| place_with(view, &big, SchedulingStrategy::Default, &zone_b, &[]);
    assert_eq!(try_big(&mut view).map(|(node, _)| node), Err(NoPlacement::Infeasible));
    assert!(!view.feasible_anywhere(&big, &zone_b), "cached as infeasible");
    view.add_node(n(2), ResourceSet::cpus(8), labels(&[("zone", "b")]));
    view.check_invariants();
    assert!(view.feasible_anywhere(&big, &zone_b), "the cache forgot on add_node");
    let (node, alloc) = try_big(&mut view).unwrap();
    assert_eq!(node, n(2));
    assert_eq!(try_big(&mut view).map(|(node, _)| node), Err(NoPlacement::Wait));
    view.set_schedulable(n(2), false);
    assert_eq!(try_big(&mut view).map(|(node, _)| node), Err(NoPlacement::Infeasible), "cache forgot on drain");
    view.release(n(2), &alloc);
    assert!(view.remove_node(n(2)).is_some());
    view.check_invariants();
    assert!(!view.feasible_anywhere(&big, &zone_b));
}

#[test]
fn fractional_gpus_share_one_device_through_schedule() {
    let mut view = ClusterView::new(deterministic());
    view.add_node(n(1), ResourceSet::cpus(8).with_gpu(Amount::units(2)), Labels::new());
    let (_, a) = place_with(&mut view, &gpus(5_000), SchedulingStrategy::Default, &[], &[]).unwrap();
    let (_, b) = place_with(&mut view, &gpus(5_000), SchedulingStrategy::Default, &[], &[]).unwrap();
    assert_eq!(a.gpus, vec![(0, Amount(5_000))]);
    assert_eq!(b.gpus, vec![(0, Amount(5_000))], "both halves on device 0");
    let (_, c) = place_with(&mut view, &gpus(7_000), SchedulingStrategy::Default, &[], &[]).unwrap();
    assert_eq!(c.gpus, vec![(1, Amount(7_000))]);
    assert_eq!(place(&mut view, &gpus(4_000)), Err(NoPlacement::Wait), "0.3 left on one device only");
    assert_eq!(place(&mut view, &gpus(3_000)), Ok(n(1)));
    view.release(n(1), &a);
    view.check_invariants();
    assert_eq!(place(&mut view, &gpus(Amount::SCALE)), Err(NoPlacement::Wait), "no wholly free device");
    assert_eq!(place(&mut view, &gpus(3 * Amount::SCALE)), Err(NoPlacement::Infeasible), "only two devices");
}

#[test]
fn releases_on_removed_nodes_are_ignored_and_direct_allocation_checks_room() {
    let mut view = cpu_cluster(deterministic(), 2, 4);
    let alloc = view.allocate(n(2), &ResourceSet::cpus(4)).unwrap();
    assert!(view.allocate(n(2), &ResourceSet::cpus(1)).is_none(), "no room");
    assert!(view.allocate(n(7), &ResourceSet::cpus(1)).is_none(), "unknown node");
    let removed = view.remove_node(n(2)).unwrap();
    assert_eq!(removed.pool.available().cpu, Amount::ZERO);
    view.release(n(2), &alloc);
    view.check_invariants();
    assert_eq!(view.len(), 1);
    assert!(view.remove_node(n(2)).is_none());
    assert_eq!(view.nodes().map(|(id, _)| id).collect::<Vec<_>>(), vec![n(1)]);
}

#[test]
fn draining_nodes_get_no_new_work_but_keep_their_allocations() {
    let mut view = cpu_cluster(deterministic(), 2, 4);
    let alloc = view.allocate(n(1), &ResourceSet::cpus(1)).unwrap();
    view.set_schedulable(n(1), false);
    view.check_invariants();
    assert!((0..4).all(|_| place(&mut view, &ResourceSet::cpus(1)) == Ok(n(2))));
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Err(NoPlacement::Wait), "node 1 drains");
    view.release(n(1), &alloc);
    view.set_schedulable(n(1), true);
    view.check_invariants();
    assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Ok(n(1)));
}

/// What the hybrid policy must choose with top_k = 1, by brute force over every node: ties go to
/// the node that has been in its state longest (its arrival stamp).
fn reference_default(view: &ClusterView, req: &ResourceSet, constraints: &[LabelConstraint]) -> Option<NodeId> {
    for &kinds in NodeKinds::passes(req.needs_gpu(), view.config.avoid_gpu_nodes) {
        let fitting: Vec<(u32, u32, u64, NodeId)> = view
            .nodes()
            .filter(|(id, node)| node.schedulable && kinds.admits(view.has_gpu(*id)))
            .filter(|(_, node)| labels_match(constraints, &node.labels) && node.pool.fits_now(req))
            .map(|(id, node)| {
                let arrived = view.entry(id).unwrap().arrived;
                (utilisation_bp(&node.pool, None), utilisation_bp(&node.pool, Some(req)), arrived, id)
            })
            .collect();
        let pack = fitting
            .iter()
            .filter(|(_, after, _, _)| *after <= view.spread_threshold_bp)
            .min_by_key(|(now, _, arrived, _)| (std::cmp::Reverse(*now), *arrived));
        let spread = fitting.iter().min_by_key(|(now, _, arrived, _)| (*now, *arrived));
        if let Some(&(_, _, _, id)) = pack.or(spread) {
            return Some(id);
        }
    }
    None
}

/// The least utilisation among nodes that fit, in the first pass where any does.
fn reference_spread_level(view: &ClusterView, req: &ResourceSet, constraints: &[LabelConstraint]) -> Option<u32> {
    NodeKinds::passes(req.needs_gpu(), view.config.avoid_gpu_nodes).iter().find_map(|&kinds| {
        view.nodes()
            .filter(|(id, node)| node.schedulable && kinds.admits(view.has_gpu(*id)))
            .filter(|(_, node)| labels_match(constraints, &node.labels) && node.pool.fits_now(req))
            .map(|(_, node)| utilisation_bp(&node.pool, None))
            .min()
    })
}

/// Every node's free amounts are its total minus exactly the live allocations on it.
fn check_ledger(view: &ClusterView, live: &[(NodeId, Allocation)]) {
    for (id, node) in view.nodes() {
        let mut expected_free = node.pool.total().clone();
        for (_, alloc) in live.iter().filter(|(on, _)| *on == id) {
            expected_free.sub(&alloc.resources);
        }
        let available = node.pool.available();
        assert!(expected_free.fits_in(available) && available.fits_in(&expected_free), "node {id} ledger");
        let float_bp = node.pool.utilisation() * f64::from(UTILISATION_FULL_BP);
        assert!((float_bp - f64::from(utilisation_bp(&node.pool, None))).abs() <= 1.0, "node {id} utilisation");
    }
}

fn random_shape(world: &mut Xoshiro256PlusPlus) -> (ResourceSet, Labels) {
    let total = match world.next_u32() % 5 {
        0 => ResourceSet::cpus(4),
        1 => ResourceSet::cpus(8).with_memory_bytes(1_000),
        2 => ResourceSet::cpus(8).with_gpu(Amount::units(2)),
        3 => ResourceSet::cpus(16).with_gpu(Amount(15_000)),
        _ => ResourceSet::cpus(4).with_custom("tpu", Amount::units(2)),
    };
    let zone = if world.next_u32() % 2 == 0 { "a" } else { "b" };
    (total, labels(&[("zone", zone)]))
}

fn random_request(world: &mut Xoshiro256PlusPlus) -> (ResourceSet, Vec<LabelConstraint>) {
    let mut req = ResourceSet { cpu: Amount(u64::from(world.next_u32() % 60_000)), ..ResourceSet::default() };
    req = match world.next_u32() % 8 {
        0 => req.with_gpu(Amount(5_000)),
        1 => req.with_gpu(Amount::units(u64::from(world.next_u32() % 3))),
        2 => req.with_custom("tpu", Amount::ONE),
        3 => req.with_memory_bytes(u64::from(world.next_u32() % 1_200)),
        _ => req,
    };
    let constraints = match world.next_u32() % 4 {
        0 => vec![LabelConstraint::In { key: "zone".into(), values: vec!["a".into()] }],
        _ => Vec::new(),
    };
    (req, constraints)
}

/// One random scheduling decision, checked against brute force.
fn random_decision(view: &mut ClusterView, world: &mut Xoshiro256PlusPlus, live: &mut Vec<(NodeId, Allocation)>) {
    let (req, constraints) = random_request(world);
    let use_spread = world.next_u32() % 3 == 0;
    let strategy = if use_spread { SchedulingStrategy::Spread } else { SchedulingStrategy::Default };
    let expected_node = reference_default(view, &req, &constraints);
    let expected_level = reference_spread_level(view, &req, &constraints);
    let feasible = view.nodes().any(|(_, node)| {
        node.schedulable && labels_match(&constraints, &node.labels) && node.pool.could_ever_fit(&req)
    });
    let placed = place_with(view, &req, strategy, &constraints, &[]);
    match placed {
        Ok((node, alloc)) => {
            let pool = &view.node(node).unwrap().pool;
            if use_spread {
                let mut before = pool.clone();
                before.release(&alloc);
                assert_eq!(Some(utilisation_bp(&before, None)), expected_level, "SPREAD takes the least utilised");
            } else {
                assert_eq!(Some(node), expected_node, "hybrid decision differs from brute force");
            }
            live.push((node, alloc));
        }
        Err(NoPlacement::Wait) => assert!(feasible && expected_node.is_none(), "Wait while a node fits now"),
        Err(NoPlacement::Infeasible) => assert!(!feasible, "Infeasible while some node could hold it"),
    }
}

/// One random placement-group reservation: all or nothing, strategy respected.
fn random_reservation(view: &mut ClusterView, world: &mut Xoshiro256PlusPlus, live: &mut Vec<(NodeId, Allocation)>) {
    let strategies = [
        PlacementStrategy::Pack,
        PlacementStrategy::Spread,
        PlacementStrategy::StrictPack,
        PlacementStrategy::StrictSpread,
    ];
    let strategy = strategies[world.next_u32() as usize % strategies.len()];
    let bundles: Vec<ResourceSet> = (0..1 + world.next_u32() % 4).map(|_| random_request(world).0).collect();
    let before: Vec<(NodeId, ResourceSet, Vec<u64>)> =
        view.entries().map(|(_, e)| (e.id, e.node.pool.available().clone(), e.gpu_free.clone())).collect();
    match view.reserve_bundles(&bundles, strategy, &vec![None; bundles.len()]) {
        Ok(reserved) => {
            assert_eq!(reserved.len(), bundles.len());
            let mut nodes: Vec<NodeId> = reserved.iter().map(|(_, node, _)| *node).collect();
            nodes.dedup();
            if strategy == PlacementStrategy::StrictPack {
                assert_eq!(nodes.len(), 1, "STRICT_PACK on one node");
            }
            nodes.sort();
            nodes.dedup();
            if strategy == PlacementStrategy::StrictSpread {
                assert_eq!(nodes.len(), bundles.len(), "STRICT_SPREAD on distinct nodes");
            }
            live.extend(reserved.into_iter().map(|(_, node, alloc)| (node, alloc)));
        }
        Err(_) => {
            let after: Vec<(NodeId, ResourceSet, Vec<u64>)> =
                view.entries().map(|(_, e)| (e.id, e.node.pool.available().clone(), e.gpu_free.clone())).collect();
            assert_eq!(before, after, "a failed reservation leaves nothing allocated");
        }
    }
}

fn random_step(
    view: &mut ClusterView,
    world: &mut Xoshiro256PlusPlus,
    live: &mut Vec<(NodeId, Allocation)>,
    next_id: &mut u64,
) {
    let ids: Vec<NodeId> = view.nodes().map(|(id, _)| id).collect();
    let some_node = |world: &mut Xoshiro256PlusPlus| ids[world.next_u32() as usize % ids.len()];
    match world.next_u32() % 10 {
        0 | 1 => {
            let (total, node_labels) = random_shape(world);
            view.add_node(n(*next_id), total, node_labels);
            *next_id += 1;
        }
        2 if !ids.is_empty() && world.next_u32() % 3 == 0 => {
            let gone = some_node(world);
            assert!(view.remove_node(gone).is_some());
            live.retain(|(on, _)| *on != gone);
        }
        3 if !ids.is_empty() => view.set_schedulable(some_node(world), world.next_u32() % 3 != 0),
        4 | 5 if !live.is_empty() => {
            let (node, alloc) = live.swap_remove(world.next_u32() as usize % live.len());
            view.release(node, &alloc);
        }
        6 => random_reservation(view, world, live),
        _ => random_decision(view, world, live),
    }
}

#[test]
fn randomised_operations_keep_invariants_and_agree_with_brute_force() {
    for seed in 0..24u64 {
        let config = SchedulerConfig {
            spread_threshold: [0.0, 0.5, 1.0][seed as usize % 3],
            top_k: 1,
            avoid_gpu_nodes: seed % 2 == 0,
        };
        let mut view = ClusterView::new(config);
        let mut world = rng(seed);
        let (mut live, mut next_id) = (Vec::new(), 1);
        for _ in 0..400 {
            random_step(&mut view, &mut world, &mut live, &mut next_id);
            view.check_invariants();
            check_ledger(&view, &live);
        }
        for (node, alloc) in live.drain(..) {
            view.release(node, &alloc);
        }
        view.check_invariants();
        assert!(view.nodes().all(|(_, node)| node.pool.available() == node.pool.total()), "seed {seed}: leak");
    }
}

#[test]
fn a_homogeneous_cluster_keeps_one_bucket_per_fill_level() {
    let mut view = cpu_cluster(deterministic(), 10_000, 8);
    let req = PlacementRequest {
        resources: &ResourceSet::cpus(1),
        strategy: &SchedulingStrategy::Default,
        labels: &[],
        locality: &[],
    };
    let mut seeded = rng(3);
    for _ in 0..50_000 {
        view.schedule(&req, &mut seeded).unwrap();
        let buckets = view.buckets.iter().filter(|b| b.len > 0).count();
        assert!(buckets <= 9, "10,000 nodes of 8 CPUs have at most 9 fill levels, got {buckets}");
    }
    view.check_invariants();
    assert!(view.nodes().all(|(_, node)| node.pool.available().cpu == Amount::units(3)));
    assert!(view.moves.len() <= 9, "one cached move per fill level, got {}", view.moves.len());
    assert!(!view.moves.is_empty(), "allocations of one CPU re-file nodes through the move cache");
}

#[test]
fn a_node_filled_one_cpu_at_a_time_stays_in_the_right_bucket_while_empty_buckets_are_swept() {
    // One node: every allocation empties its bucket, so empty buckets pile up and are swept, and
    // a swept id is reused at once. The move cache must never remember a move across a sweep.
    for top_k in [1, 3] {
        let mut view = cpu_cluster(SchedulerConfig { top_k, ..SchedulerConfig::default() }, 1, 80);
        for i in 0..80 {
            assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Ok(n(1)), "allocation {i}");
        }
        assert_eq!(place(&mut view, &ResourceSet::cpus(1)), Err(NoPlacement::Wait), "the node is full");
        assert!(view.sweeps > 0, "the test must cross a sweep of empty buckets");
    }
}

#[test]
fn a_shape_that_fitted_nowhere_is_answered_from_the_last_release_alone_and_as_brute_force_would() {
    // Only two shapes, on full clusters: most decisions follow a Wait, so the memo of blocked
    // shapes answers them. Every answer must be the one a full decision gives.
    for seed in 0..8u64 {
        let config = SchedulerConfig { top_k: 1, avoid_gpu_nodes: seed % 2 == 0, ..SchedulerConfig::default() };
        let mut view = ClusterView::new(config);
        view.add_node(n(1), ResourceSet::cpus(4), Labels::new());
        view.add_node(n(2), ResourceSet::cpus(4).with_gpu(Amount::units(1)), Labels::new());
        view.add_node(n(3), ResourceSet::cpus(2), Labels::new());
        let mut world = rng(seed);
        let mut live: Vec<(NodeId, Allocation)> = Vec::new();
        let (mut waits, mut remembered) = (0, 0);
        for _ in 0..2_000 {
            if world.next_u32() % 3 == 0 && !live.is_empty() {
                let (node, alloc) = live.swap_remove(world.next_u32() as usize % live.len());
                view.release(node, &alloc);
            } else {
                let req = ResourceSet::cpus(1 + u64::from(world.next_u32() % 2));
                let strategy =
                    if world.next_u32() % 4 == 0 { SchedulingStrategy::Spread } else { SchedulingStrategy::Default };
                let expected = reference_default(&view, &req, &[]);
                let was_blocked = view.blocked.is_some_and(|(shape, _)| Some(shape) == PlainShape::of(&req));
                match place_with(&mut view, &req, strategy.clone(), &[], &[]) {
                    Ok((node, alloc)) => {
                        assert!(expected.is_some(), "placed while nothing fits");
                        if strategy == SchedulingStrategy::Default {
                            assert_eq!(Some(node), expected, "a decision after a Wait differs from brute force");
                        }
                        remembered += usize::from(was_blocked);
                        live.push((node, alloc));
                    }
                    Err(why) => {
                        assert_eq!((why, expected), (NoPlacement::Wait, None), "Wait while a node fits");
                        waits += 1;
                        remembered += usize::from(was_blocked);
                    }
                }
            }
            check_ledger(&view, &live);
        }
        assert!(
            waits > 100 && remembered > 100,
            "seed {seed}: the memo was not exercised ({waits} waits, {remembered} answered)"
        );
    }
}

#[test]
fn level_bitmaps_find_the_nearest_occupied_level_like_an_ordered_set() {
    let mut world = rng(11);
    let mut levels = Levels::new();
    let mut reference: BTreeMap<u32, u32> = BTreeMap::new();
    for bucket in 0..2_000u32 {
        let level = world.next_u32() % (UTILISATION_FULL_BP + 1);
        if let Some(old) = reference.remove(&level) {
            levels.remove(level, old);
        } else {
            levels.add(level, bucket);
            reference.insert(level, bucket);
        }
        let probe = world.next_u32() % (UTILISATION_FULL_BP + 2);
        let below = reference.range(..=probe).next_back().map(|(l, _)| *l);
        let above = reference.range(probe..).next().map(|(l, _)| *l);
        assert_eq!(levels.at_or_below(probe.min(UTILISATION_FULL_BP)), below, "at or below {probe}");
        assert_eq!(levels.at_or_above(probe), above, "at or above {probe}");
    }
    for (level, bucket) in reference {
        levels.remove(level, bucket);
    }
    assert!(levels.occupied.iter().chain(&levels.summary).all(|w| *w == 0), "emptied levels leave no bit set");
}
