//! The autoscaler's bin-packing: the cases Ray's users hit, and first-fit decreasing against the
//! optimal packing of small random cases found by brute force.

use keel_kernel::autoscaler::{plan, Bin, Demand, Gang, Limits, NodeType, Plan, Unmet};
use keel_kernel::proto::{LabelConstraint, Labels, PlacementStrategy};
use keel_kernel::{Amount, ResourceSet};
use rand_core::{RngCore, SeedableRng};

fn cpus(n: u64) -> ResourceSet {
    ResourceSet::cpus(n)
}

fn node_type(name: &str, resources: ResourceSet, max_workers: u32) -> NodeType {
    NodeType { name: name.into(), resources, labels: Labels::new(), min_workers: 0, max_workers }
}

fn limits() -> Limits {
    Limits { max_workers: 1_000, upscaling_speed: 1.0 }
}

/// `n` running nodes with nothing free (so that the upscaling budget is `max(5, n)`).
fn busy(n: usize) -> Vec<Bin> {
    (0..n)
        .map(|_| Bin { node_type: None, free: ResourceSet::default(), labels: Labels::new(), launching: false })
        .collect()
}

fn tasks(shape: ResourceSet, count: u64) -> Demand {
    Demand { tasks: vec![(shape, Vec::new(), count)], ..Demand::default() }
}

#[test]
fn a_burst_launches_enough_nodes_within_the_upscaling_speed() {
    let types = [node_type("m16", cpus(16), 100)];
    // 100 one-CPU tasks need 7 nodes of 16. Nothing runs yet: at most 5 launch at once.
    let p = plan(&types, &limits(), &[], &tasks(cpus(1), 100));
    assert_eq!(p.launch, vec![(0, 5)]);
    assert_eq!(p.unmet, vec![(cpus(1), 20, Unmet::AtLimit)]);
    // With 10 nodes running (all busy), up to 10 may launch: all 7.
    let p = plan(&types, &limits(), &busy(10), &tasks(cpus(1), 100));
    assert_eq!(p, Plan { launch: vec![(0, 7)], unmet: Vec::new() });
}

#[test]
fn demand_that_fits_existing_or_launching_nodes_launches_nothing() {
    let types = [node_type("m16", cpus(16), 100)];
    let free =
        |cpu: u64, launching: bool| Bin { node_type: Some(0), free: cpus(cpu), labels: Labels::new(), launching };
    // 12 free CPUs on two nodes hold 12 tasks.
    let p = plan(&types, &limits(), &[free(4, false), free(8, false)], &tasks(cpus(1), 12));
    assert_eq!(p, Plan::default());
    // A node already launching is counted once (Ray #36926): its 16 CPUs take the 16 tasks.
    let p = plan(&types, &limits(), &[free(16, true)], &tasks(cpus(1), 16));
    assert_eq!(p, Plan::default());
    let p = plan(&types, &limits(), &[free(16, true)], &tasks(cpus(1), 17));
    assert_eq!(p.launch, vec![(0, 1)], "one more task, one more node");
}

#[test]
fn large_items_go_first_so_nothing_is_launched_for_bad_ordering() {
    // Ray #19124: 12-CPU and 4-CPU tasks on 16-CPU nodes. In arrival order (4, 4, 12, 12) a
    // first-fit would need 3 nodes; largest first needs 2.
    let types = [node_type("m16", cpus(16), 100)];
    let demand = Demand { tasks: vec![(cpus(4), Vec::new(), 2), (cpus(12), Vec::new(), 2)], ..Demand::default() };
    assert_eq!(plan(&types, &limits(), &busy(10), &demand).launch, vec![(0, 2)]);
}

#[test]
fn placement_groups_are_packed_as_gangs_and_a_gang_larger_than_any_node_is_infeasible() {
    let types = [node_type("m16", cpus(16), 100)];
    let gang = |strategy, n: usize, each: u64| Demand {
        gangs: vec![Gang::new(strategy, vec![cpus(each); n])],
        ..Demand::default()
    };
    // STRICT_SPREAD: four 4-CPU bundles on four distinct nodes, not one.
    let p = plan(&types, &limits(), &busy(10), &gang(PlacementStrategy::StrictSpread, 4, 4));
    assert_eq!(p.launch, vec![(0, 4)]);
    // STRICT_PACK: 3 x 8 CPUs must share one node; none has 24.
    let p = plan(&types, &limits(), &busy(10), &gang(PlacementStrategy::StrictPack, 3, 8));
    assert_eq!((p.launch.clone(), p.unmet.clone()), (Vec::new(), vec![(cpus(24), 1, Unmet::Infeasible)]));
    // Mixed STRICT_SPREAD bundles must not share a node either: {3, 1} CPUs on 4-CPU nodes: two.
    let mixed =
        Demand { gangs: vec![Gang::new(PlacementStrategy::StrictSpread, vec![cpus(3), cpus(1)])], ..Demand::default() };
    let four = [node_type("m4", cpus(4), 100)];
    assert_eq!(plan(&four, &limits(), &busy(10), &mixed).launch, vec![(0, 2)]);
    // A larger type holds it.
    let types = [node_type("m16", cpus(16), 100), node_type("m32", cpus(32), 100)];
    let p = plan(&types, &limits(), &busy(10), &gang(PlacementStrategy::StrictPack, 3, 8));
    assert_eq!(p.launch, vec![(1, 1)]);
    // PACK: the bundles are separate items; 3 x 8 CPUs: a full m16 first (used best), then an
    // m16 for the third bundle (half used, and smaller than an m32 at a quarter).
    let p = plan(&types, &limits(), &busy(10), &gang(PlacementStrategy::Pack, 3, 8));
    assert_eq!((p.launch, p.unmet), (vec![(0, 2)], Vec::new()));
}

#[test]
fn the_rest_of_a_group_placed_in_part_keeps_its_strategy_against_its_placed_bundles() {
    let types = [node_type("m4", cpus(4), 100)];
    let free = |cpu: u64| Bin { node_type: Some(0), free: cpus(cpu), labels: Labels::new(), launching: false };
    // A STRICT_SPREAD group lost one bundle; its sibling is on bin 0, which has room for it.
    let lost = |placed: Vec<usize>| Demand {
        gangs: vec![Gang { placed, ..Gang::new(PlacementStrategy::StrictSpread, vec![cpus(1)]) }],
        ..Demand::default()
    };
    // Planned as new, it would "fit" beside its sibling and nothing would launch.
    assert_eq!(plan(&types, &limits(), &[free(3)], &lost(Vec::new())).launch, Vec::new());
    // Kept away from its sibling's node, it needs a node of its own ...
    assert_eq!(plan(&types, &limits(), &[free(3)], &lost(vec![0])).launch, vec![(0, 1)]);
    // ... and takes the room of another node where there is one.
    assert_eq!(plan(&types, &limits(), &[free(3), free(2)], &lost(vec![0])), Plan::default());
    // The rest of a STRICT_PACK group can only join its siblings' node: nothing new is launched
    // for it, even when it does not fit there now.
    let pack = Demand {
        gangs: vec![Gang { placed: vec![0], ..Gang::new(PlacementStrategy::StrictPack, vec![cpus(2)]) }],
        ..Demand::default()
    };
    assert_eq!(plan(&types, &limits(), &[free(1)], &pack), Plan::default());
    // Taking bins away keeps the placed indices pointing at the same bins.
    let d = Demand {
        gangs: vec![Gang { placed: vec![0, 2, 3], ..Gang::new(PlacementStrategy::Spread, vec![]) }],
        ..Demand::default()
    };
    assert_eq!(d.without_bins(&[1, 2]).gangs[0].placed, vec![0, 1]);
}

#[test]
fn per_type_and_cluster_limits_hold_and_what_they_stop_is_reported() {
    let types = [node_type("small", cpus(4), 2), node_type("big", cpus(16), 1)];
    let roomy = Limits { max_workers: 100, upscaling_speed: 100.0 };
    // 40 CPUs of demand: one big (16) and two small (8) are all the types allow: 24 CPUs.
    let p = plan(&types, &roomy, &busy(10), &tasks(cpus(1), 40));
    assert_eq!(p.launch, vec![(0, 2), (1, 1)]);
    assert_eq!(p.unmet, vec![(cpus(1), 16, Unmet::AtLimit)]);
    // The cluster's own limit: 10 workers exist, 12 at most: two launches. Static nodes (no
    // type) are not workers and do not count.
    let l = Limits { max_workers: 12, upscaling_speed: 100.0 };
    let types = [node_type("small", cpus(4), 100)];
    let workers: Vec<Bin> = busy(10).into_iter().map(|b| Bin { node_type: Some(0), ..b }).collect();
    let p = plan(&types, &l, &workers, &tasks(cpus(1), 40));
    assert_eq!(p.launch, vec![(0, 2)]);
    assert_eq!(p.unmet, vec![(cpus(1), 32, Unmet::AtLimit)]);
    let p = plan(&types, &l, &busy(10), &tasks(cpus(1), 40));
    assert_eq!(p.launch, vec![(0, 10)], "ten static nodes, no workers yet: ten launches (the demand)");
    // A shape no type has is infeasible, not at a limit.
    let p = plan(&types, &l, &busy(10), &tasks(cpus(1).with_gpu(Amount::units(1)), 3));
    assert_eq!((p.launch, p.unmet), (Vec::new(), vec![(cpus(1).with_gpu(Amount::units(1)), 3, Unmet::Infeasible)]));
}

#[test]
fn min_workers_are_launched_without_demand_and_take_demand_first() {
    let mut t = node_type("m8", cpus(8), 10);
    t.min_workers = 2;
    let p = plan(&[t.clone()], &limits(), &busy(10), &Demand::default());
    assert_eq!(p.launch, vec![(0, 2)]);
    // 16 one-CPU tasks fit the two minimum nodes: nothing more.
    let p = plan(&[t.clone()], &limits(), &busy(10), &tasks(cpus(1), 16));
    assert_eq!(p.launch, vec![(0, 2)]);
    // The upscaling speed bounds them too: 8 minimum with nothing running: 5 now.
    t.min_workers = 8;
    assert_eq!(plan(&[t], &limits(), &[], &Demand::default()).launch, vec![(0, 5)]);
}

#[test]
fn label_constraints_and_fractional_gpus_choose_the_type() {
    let mut a100 = node_type("a100", cpus(8).with_gpu(Amount::units(4)), 10);
    a100.labels.insert("gpu_model".into(), "A100".into());
    let mut t4 = node_type("t4", cpus(8).with_gpu(Amount::units(4)), 10);
    t4.labels.insert("gpu_model".into(), "T4".into());
    let types = [a100, t4];
    let on_t4 = vec![LabelConstraint::In { key: "gpu_model".into(), values: vec!["T4".into()] }];
    let half = cpus(1).with_gpu(Amount::from_f64(0.5).unwrap());
    let demand = Demand { tasks: vec![(half.clone(), on_t4, 9)], ..Demand::default() };
    // Nine half-GPU tasks: 8 fit one T4 node (4 GPUs x 2), the ninth needs another.
    let p = plan(&types, &limits(), &busy(10), &demand);
    assert_eq!(p.launch, vec![(1, 2)]);
    // A type can be asked for by name.
    let by_name = vec![LabelConstraint::In { key: "keel.node-type".into(), values: vec!["a100".into()] }];
    let demand = Demand { tasks: vec![(cpus(1), by_name, 1)], ..Demand::default() };
    assert_eq!(plan(&types, &limits(), &busy(10), &demand).launch, vec![(0, 1)]);
}

// ---- against brute force ----

/// A node's price: its CPUs plus a quarter of its GiB.
fn price(r: &ResourceSet) -> u64 {
    r.cpu.0 / Amount::SCALE + ((r.memory.0 / Amount::SCALE) >> 30) / 4
}

/// The cheapest packing of `items` into new nodes of `types` (unlimited), by exhaustive search.
fn optimal(types: &[NodeType], items: &[ResourceSet]) -> Option<u64> {
    fn go(
        types: &[NodeType],
        items: &[ResourceSet],
        i: usize,
        bins: &mut Vec<ResourceSet>,
        cost: u64,
        best: &mut Option<u64>,
    ) {
        if best.is_some_and(|b| cost >= b) {
            return;
        }
        if i == items.len() {
            *best = Some(cost);
            return;
        }
        let mut tried: Vec<ResourceSet> = Vec::new();
        for b in 0..bins.len() {
            if items[i].fits_in(&bins[b]) && !tried.contains(&bins[b]) {
                tried.push(bins[b].clone());
                bins[b].sub(&items[i]);
                go(types, items, i + 1, bins, cost, best);
                bins[b].add(&items[i]);
            }
        }
        for t in types {
            if items[i].fits_in(&t.resources) {
                let mut room = t.resources.clone();
                room.sub(&items[i]);
                bins.push(room);
                go(types, items, i + 1, bins, cost + price(&t.resources), best);
                bins.pop();
            }
        }
    }
    let mut best = None;
    go(types, items, 0, &mut Vec::new(), 0, &mut best);
    best
}

#[test]
fn first_fit_decreasing_stays_close_to_the_optimal_packing_of_small_random_cases() {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let mut below = |n: u64| rng.next_u64() % n;
    let gib = |n: u64| n << 30;
    let (mut ratios, mut exact) = (Vec::new(), 0);
    let mut case = 0;
    while ratios.len() < 300 {
        case += 1;
        let types: Vec<NodeType> = (0..1 + below(3))
            .map(|t| {
                let (c, m) = ([4, 8, 16][below(3) as usize], [8, 16, 64][below(3) as usize]);
                node_type(&format!("t{t}"), cpus(c).with_memory_bytes(gib(m)), 1_000)
            })
            .collect();
        let items: Vec<ResourceSet> =
            (0..2 + below(6)).map(|_| cpus(1 + below(8)).with_memory_bytes(gib(1 + below(16)))).collect();
        // Only cases where every item fits some type.
        let Some(best) = optimal(&types, &items) else { continue };
        let mut demand = Demand::default();
        for it in &items {
            demand.tasks.push((it.clone(), Vec::new(), 1));
        }
        let p = plan(&types, &Limits { max_workers: 1_000, upscaling_speed: 100.0 }, &busy(10), &demand);
        assert!(p.unmet.is_empty(), "case {case}: every item fits some type, yet {p:?}");
        let cost: u64 = p.launch.iter().map(|&(t, n)| u64::from(n) * price(&types[t].resources)).sum();
        assert!(cost >= best, "case {case}: cheaper than the optimum? {cost} < {best}");
        ratios.push(cost as f64 / best as f64);
        exact += usize::from(cost == best);
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    println!(
        "first-fit decreasing vs optimal over {} cases: {exact} optimal, mean {mean:.3}x, worst {worst:.2}x",
        ratios.len()
    );
    // Seeded, so these are fixed figures: 257 of 300 optimal, mean 1.032x, worst 1.67x. Packing
    // smallest first instead gives 225 and 1.061x, and fails here.
    assert!(worst <= 2.0, "worst {worst}");
    assert!(mean <= 1.05 && exact >= 240, "mean {mean}, {exact} optimal");
}
