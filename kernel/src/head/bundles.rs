//! Placement-group bundle reservation on the [`ClusterView`]: [`ClusterView::reserve_bundles`].
//!
//! - STRICT_PACK: every unplaced bundle on one node: the node that already holds the group's
//!   bundles if any, otherwise the most utilised node that holds them all now.
//! - STRICT_SPREAD: every unplaced bundle on a node of its own, never one that already holds a
//!   bundle of the group; hardest bundles (most GPU, then CPU, then memory) first, each on the
//!   least utilised node that fits it.
//! - PACK: as few nodes as possible, best effort: first the nodes the group already uses, then,
//!   repeatedly, the node that holds most of the remaining bundles now (most utilised on ties).
//! - SPREAD: like STRICT_SPREAD, but a bundle that finds no fresh node shares the least utilised
//!   node that fits it.
//!
//! Bundles that need no GPU avoid GPU nodes as tasks do. Reservation is all or nothing: on failure
//! every allocation made is released before the answer. Failure is [`NoPlacement::Infeasible`]
//! when the group could never fit the current schedulable nodes even empty (STRICT_PACK: no node
//! shape holds all bundles; STRICT_SPREAD: too few suitable nodes; PACK and SPREAD: a bundle fits
//! no node shape), [`NoPlacement::Wait`] otherwise. STRICT_SPREAD places greedily, so it may wait
//! in the rare case where only another assignment of bundles to nodes would fit now.

use super::scheduler::{ClusterView, NoPlacement, NodeKinds, UTILISATION_FULL_BP};
use crate::ids::NodeId;
use crate::proto::PlacementStrategy;
use crate::resources::{Allocation, ResourcePool, ResourceSet, ResourceSum};

/// Reserved bundles: `(bundle index, node, allocation)`.
type Reserved = Vec<(usize, NodeId, Allocation)>;

/// How many of `indices`' bundles `pool` takes now, allocating them in order and skipping misfits.
fn fitting_count(pool: &ResourcePool, bundles: &[ResourceSet], indices: &[usize]) -> usize {
    let mut trial = pool.clone();
    let count = indices.iter().filter(|&&i| trial.try_allocate(&bundles[i]).is_some()).count();
    assert!(count <= indices.len());
    count
}

/// Whether `pool` takes every one of `indices`' bundles now.
fn fits_all(pool: &ResourcePool, bundles: &[ResourceSet], indices: &[usize]) -> bool {
    fitting_count(pool, bundles, indices) == indices.len()
}

/// The unplaced bundles, hardest to place first (most GPU, CPU, memory, custom), stable by index.
fn hardest_first(bundles: &[ResourceSet], unplaced: &[usize]) -> Vec<usize> {
    let mut order = unplaced.to_vec();
    order.sort_by_key(|&i| {
        let b = &bundles[i];
        let custom: u64 = b.custom.values().map(|a| a.0).sum();
        (std::cmp::Reverse((b.gpu, b.cpu, b.memory, custom)), i)
    });
    assert_eq!(order.len(), unplaced.len());
    order
}

impl ClusterView {
    /// Reserves placement-group bundles all-or-nothing. `placed[i]` is `Some(node)` for bundles
    /// already reserved (left alone); returns, for each `i` with `placed[i] == None`, in order,
    /// `(i, node, allocation)`. Nothing is allocated unless every unplaced bundle fits.
    /// See `head/bundles.rs` for how each strategy lays bundles out.
    pub fn reserve_bundles(
        &mut self,
        bundles: &[ResourceSet],
        strategy: PlacementStrategy,
        placed: &[Option<NodeId>],
    ) -> Result<Vec<(usize, NodeId, Allocation)>, NoPlacement> {
        assert_eq!(bundles.len(), placed.len(), "one placement slot per bundle");
        let unplaced: Vec<usize> = (0..bundles.len()).filter(|&i| placed[i].is_none()).collect();
        let mut group_nodes: Vec<NodeId> = Vec::new();
        for node in placed.iter().flatten() {
            if !group_nodes.contains(node) {
                group_nodes.push(*node);
            }
        }
        let spread_strictly = strategy == PlacementStrategy::StrictSpread;
        assert!(!spread_strictly || group_nodes.len() == bundles.len() - unplaced.len(), "STRICT_SPREAD shares a node");
        if unplaced.is_empty() {
            return Ok(Vec::new());
        }
        // More than all the free room there is: no layout fits now, so skip the attempt (and its
        // rollback) and answer as a failed attempt would.
        let mut need = ResourceSum::default();
        for &i in &unplaced {
            need.add(&bundles[i]);
        }
        if !need.within(self.schedulable_free()) {
            return Err(self.bundles_no_placement(bundles, strategy, placed, &unplaced, &group_nodes));
        }
        let mut made: Reserved = Vec::with_capacity(unplaced.len());
        let done = match strategy {
            PlacementStrategy::StrictPack => self.reserve_strict_pack(bundles, &unplaced, &group_nodes, &mut made),
            PlacementStrategy::Pack => self.reserve_pack(bundles, &unplaced, &group_nodes, &mut made),
            PlacementStrategy::StrictSpread => self.reserve_spread(bundles, &unplaced, &group_nodes, true, &mut made),
            PlacementStrategy::Spread => self.reserve_spread(bundles, &unplaced, &group_nodes, false, &mut made),
        };
        if !done {
            for (_, node, alloc) in made.iter().rev() {
                self.release(*node, alloc);
            }
            return Err(self.bundles_no_placement(bundles, strategy, placed, &unplaced, &group_nodes));
        }
        made.sort_by_key(|(i, _, _)| *i);
        assert!(made.iter().map(|(i, _, _)| *i).eq(unplaced.iter().copied()), "one reservation per unplaced bundle");
        Ok(made)
    }

    fn reserve_strict_pack(
        &mut self,
        bundles: &[ResourceSet],
        unplaced: &[usize],
        group_nodes: &[NodeId],
        made: &mut Reserved,
    ) -> bool {
        assert!(group_nodes.len() <= 1, "a STRICT_PACK group lives on one node");
        let target = match group_nodes.first() {
            Some(&node) if self.node(node).is_some_and(|n| n.schedulable) => node,
            Some(_) => return false,
            None => {
                let needs_gpu = unplaced.iter().any(|&i| bundles[i].needs_gpu());
                let mut holds_all = |pool: &ResourcePool| fits_all(pool, bundles, unplaced);
                let passes = NodeKinds::passes(needs_gpu, self.config().avoid_gpu_nodes);
                let found = passes.iter().find_map(|&kinds| {
                    self.walk_candidates(kinds, UTILISATION_FULL_BP, true, 1, &mut holds_all, &|_, _| true)
                        .first()
                        .copied()
                });
                match found {
                    Some(node) => node,
                    None => return false,
                }
            }
        };
        for &i in unplaced {
            match self.allocate(target, &bundles[i]) {
                Some(alloc) => made.push((i, target, alloc)),
                None => return false,
            }
        }
        assert_eq!(made.len(), unplaced.len());
        true
    }

    fn reserve_pack(
        &mut self,
        bundles: &[ResourceSet],
        unplaced: &[usize],
        group_nodes: &[NodeId],
        made: &mut Reserved,
    ) -> bool {
        let mut remaining = hardest_first(bundles, unplaced);
        for &node in group_nodes {
            if self.node(node).is_some_and(|n| n.schedulable) {
                self.reserve_what_fits(node, bundles, &mut remaining, made);
            }
        }
        while !remaining.is_empty() {
            let Some(node) = self.node_holding_most(bundles, &remaining) else { return false };
            let before = remaining.len();
            self.reserve_what_fits(node, bundles, &mut remaining, made);
            assert!(remaining.len() < before, "the chosen node takes at least one bundle");
        }
        assert_eq!(made.len(), unplaced.len());
        true
    }

    /// Reserves on `node`, in order, each of `remaining`'s bundles that fits; keeps the others.
    fn reserve_what_fits(
        &mut self,
        node: NodeId,
        bundles: &[ResourceSet],
        remaining: &mut Vec<usize>,
        made: &mut Reserved,
    ) {
        let before = remaining.len() + made.len();
        let mut rest = Vec::with_capacity(remaining.len());
        for i in remaining.drain(..) {
            match self.allocate(node, &bundles[i]) {
                Some(alloc) => made.push((i, node, alloc)),
                None => rest.push(i),
            }
        }
        *remaining = rest;
        assert_eq!(remaining.len() + made.len(), before);
    }

    /// The schedulable node that takes most of `remaining` now (most utilised on ties); GPU-less
    /// nodes first when no remaining bundle needs a GPU and GPU nodes are avoided.
    fn node_holding_most(&self, bundles: &[ResourceSet], remaining: &[usize]) -> Option<NodeId> {
        assert!(!remaining.is_empty());
        let needs_gpu = remaining.iter().any(|&i| bundles[i].needs_gpu());
        let passes: &[NodeKinds] =
            if needs_gpu { &[NodeKinds::Any] } else { NodeKinds::passes(false, self.config().avoid_gpu_nodes) };
        for &kinds in passes {
            let mut best: Option<(usize, NodeId)> = None;
            for (node, pool) in self.bucket_heads(kinds) {
                let count = fitting_count(pool, bundles, remaining);
                if count > best.map_or(0, |(c, _)| c) {
                    best = Some((count, node));
                }
            }
            if let Some((_, node)) = best {
                return Some(node);
            }
        }
        None
    }

    fn reserve_spread(
        &mut self,
        bundles: &[ResourceSet],
        unplaced: &[usize],
        group_nodes: &[NodeId],
        strict: bool,
        made: &mut Reserved,
    ) -> bool {
        let mut taken: Vec<NodeId> = group_nodes.to_vec();
        for i in hardest_first(bundles, unplaced) {
            let fresh = self.least_utilised_fit(&bundles[i], &taken);
            let node = match fresh {
                Some(node) => node,
                None if strict => return false,
                None => match self.least_utilised_fit(&bundles[i], &[]) {
                    Some(node) => node,
                    None => return false,
                },
            };
            let alloc = self.allocate(node, &bundles[i]).expect("the chosen node fits the bundle");
            made.push((i, node, alloc));
            if !taken.contains(&node) {
                taken.push(node);
            }
        }
        assert!(!strict || taken.len() == group_nodes.len() + unplaced.len(), "STRICT_SPREAD reused a node");
        true
    }

    /// The least utilised schedulable node outside `exclude` that fits `bundle` now (the longest
    /// in its state on ties), GPU-less nodes first for bundles that need no GPU.
    fn least_utilised_fit(&self, bundle: &ResourceSet, exclude: &[NodeId]) -> Option<NodeId> {
        let mut fits = |pool: &ResourcePool| pool.fits_now(bundle);
        let outside = |node: NodeId, _: &super::scheduler::SchedNode| !exclude.contains(&node);
        let passes = NodeKinds::passes(bundle.needs_gpu(), self.config().avoid_gpu_nodes);
        let found = passes
            .iter()
            .find_map(|&kinds| self.walk_candidates(kinds, 0, false, 1, &mut fits, &outside).first().copied());
        assert!(found.is_none_or(|n| !exclude.contains(&n)));
        found
    }

    /// Whether the schedulable nodes together could hold the group's bundles that need them:
    /// the unplaced ones and those already placed on schedulable nodes (a bundle on a draining
    /// node takes none of their room). Identical bundles, as in MPI gangs, are counted exactly:
    /// how many fit on each empty node, summed. Otherwise each resource is summed, a necessary
    /// condition for any layout.
    fn holds_in_total(&self, bundles: &[ResourceSet], placed: &[Option<NodeId>]) -> bool {
        let counted: Vec<&ResourceSet> = bundles
            .iter()
            .zip(placed)
            .filter(|(_, at)| at.is_none_or(|node| self.node(node).is_some_and(|n| n.schedulable)))
            .map(|(b, _)| b)
            .collect();
        let shapes = self.schedulable_shapes(&[]);
        if counted.windows(2).all(|w| w[0] == w[1]) {
            let Some(bundle) = counted.first() else { return true };
            let mut room = 0usize;
            for (pool, count) in shapes {
                let mut empty = ResourcePool::new(pool.total().clone());
                let copies = (0..counted.len()).take_while(|_| empty.try_allocate(bundle).is_some()).count();
                room = room.saturating_add(copies.saturating_mul(count));
                if room >= counted.len() {
                    return true;
                }
            }
            return false;
        }
        let mut need = ResourceSum::default();
        for bundle in &counted {
            need.add(bundle);
        }
        let mut have = ResourceSum::default();
        for (pool, count) in shapes {
            for _ in 0..count {
                have.add(pool.total());
                if need.within(&have) {
                    return true;
                }
            }
        }
        need.within(&have)
    }

    fn bundles_no_placement(
        &self,
        bundles: &[ResourceSet],
        strategy: PlacementStrategy,
        placed: &[Option<NodeId>],
        unplaced: &[usize],
        group_nodes: &[NodeId],
    ) -> NoPlacement {
        let feasible = match strategy {
            PlacementStrategy::StrictPack => match group_nodes.first() {
                Some(&node) => self.node(node).is_some_and(|n| {
                    let all: Vec<usize> = (0..bundles.len()).collect();
                    n.schedulable && fits_all(&ResourcePool::new(n.pool.total().clone()), bundles, &all)
                }),
                None => self.schedulable_shapes(&[]).iter().any(|(pool, _)| fits_all(pool, bundles, unplaced)),
            },
            PlacementStrategy::StrictSpread => {
                let shapes = self.schedulable_shapes(group_nodes);
                let fits_ever = |pool: &ResourcePool, i: usize| pool.could_ever_fit(&bundles[i]);
                let each_fits = unplaced.iter().all(|&i| shapes.iter().any(|(pool, _)| fits_ever(pool, i)));
                let suitable: usize = shapes
                    .iter()
                    .filter(|(pool, _)| unplaced.iter().any(|&i| fits_ever(pool, i)))
                    .map(|(_, count)| count)
                    .sum();
                each_fits && suitable >= unplaced.len()
            }
            PlacementStrategy::Pack | PlacementStrategy::Spread => {
                unplaced.iter().all(|&i| self.feasible_anywhere(&bundles[i], &[]))
                    && self.holds_in_total(bundles, placed)
            }
        };
        if feasible {
            NoPlacement::Wait
        } else {
            NoPlacement::Infeasible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::scheduler::SchedulerConfig;
    use crate::proto::Labels;
    use crate::resources::Amount;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    /// Nodes `1..` with the given CPU counts (a GPU node where `gpus` > 0).
    fn cluster(nodes: &[(u64, u64)]) -> ClusterView {
        let mut view = ClusterView::new(SchedulerConfig::default());
        for (i, &(cpus, gpus)) in nodes.iter().enumerate() {
            view.add_node(n(i as u64 + 1), ResourceSet::cpus(cpus).with_gpu(Amount::units(gpus)), Labels::new());
        }
        view.check_invariants();
        view
    }

    fn reserve(
        view: &mut ClusterView,
        bundles: &[ResourceSet],
        strategy: PlacementStrategy,
        placed: &[Option<NodeId>],
    ) -> Result<Vec<NodeId>, NoPlacement> {
        let reserved = view.reserve_bundles(bundles, strategy, placed);
        view.check_invariants();
        let reserved = reserved?;
        let expected: Vec<usize> = (0..bundles.len()).filter(|&i| placed[i].is_none()).collect();
        assert_eq!(reserved.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), expected, "one answer per unplaced bundle");
        assert!(reserved.iter().all(|(i, _, alloc)| alloc.resources == bundles[*i]));
        Ok(reserved.into_iter().map(|(_, node, _)| node).collect())
    }

    fn free_cpus(view: &ClusterView) -> Vec<u64> {
        view.nodes().map(|(_, node)| node.pool.available().cpu.0 / Amount::SCALE).collect()
    }

    #[test]
    fn strict_pack_puts_every_bundle_on_one_node_and_prefers_the_fullest() {
        let mut view = cluster(&[(8, 0), (8, 0), (8, 0)]);
        view.allocate(n(2), &ResourceSet::cpus(2)).unwrap();
        let bundles = vec![ResourceSet::cpus(2); 3];
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::StrictPack, &[None; 3]), Ok(vec![n(2); 3]));
        assert_eq!(free_cpus(&view), vec![8, 0, 8]);
    }

    #[test]
    fn strict_pack_waits_or_is_infeasible_and_leaves_nothing_allocated() {
        let mut view = cluster(&[(4, 0), (4, 0)]);
        let too_big = vec![ResourceSet::cpus(3); 2];
        let strict_pack = PlacementStrategy::StrictPack;
        assert_eq!(reserve(&mut view, &too_big, strict_pack, &[None; 2]), Err(NoPlacement::Infeasible), "6 > 4 CPUs");
        view.allocate(n(1), &ResourceSet::cpus(1)).unwrap();
        view.allocate(n(2), &ResourceSet::cpus(1)).unwrap();
        let fits_empty = vec![ResourceSet::cpus(2); 2];
        assert_eq!(reserve(&mut view, &fits_empty, strict_pack, &[None; 2]), Err(NoPlacement::Wait));
        assert_eq!(free_cpus(&view), vec![3, 3], "no bundle stays reserved after a failure");
    }

    #[test]
    fn strict_pack_replaces_lost_bundles_on_the_node_of_the_survivors() {
        let mut view = cluster(&[(8, 0), (8, 0)]);
        let bundles = vec![ResourceSet::cpus(2); 3];
        let placed = reserve(&mut view, &bundles, PlacementStrategy::StrictPack, &[None; 3]).unwrap();
        assert_eq!(placed, vec![n(1); 3]);
        let survivors = [Some(n(1)), None, Some(n(1))];
        let lost = view.reserve_bundles(&bundles, PlacementStrategy::StrictPack, &[Some(n(1)), Some(n(1)), Some(n(1))]);
        assert_eq!(lost, Ok(Vec::new()), "nothing to place when every bundle survives");
        view.release(n(1), &Allocation { resources: ResourceSet::cpus(2), gpus: Vec::new() });
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::StrictPack, &survivors), Ok(vec![n(1)]));
        view.set_schedulable(n(1), false);
        let drained = reserve(&mut view, &bundles, PlacementStrategy::StrictPack, &[Some(n(1)), None, None]);
        assert_eq!(drained, Err(NoPlacement::Infeasible), "the survivors' node takes no new bundles");
    }

    #[test]
    fn strict_spread_uses_distinct_nodes_and_needs_enough_of_them() {
        let mut view = cluster(&[(4, 0), (4, 0), (4, 0)]);
        let bundles = vec![ResourceSet::cpus(1); 3];
        let mut placed = reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &[None; 3]).unwrap();
        placed.sort();
        assert_eq!(placed, vec![n(1), n(2), n(3)]);
        let four = vec![ResourceSet::cpus(1); 4];
        let none = [None; 4];
        assert_eq!(reserve(&mut view, &four, PlacementStrategy::StrictSpread, &none), Err(NoPlacement::Infeasible));
        assert_eq!(free_cpus(&view), vec![3, 3, 3], "the failed group left nothing behind");
    }

    #[test]
    fn strict_spread_waits_when_a_needed_node_is_full_and_rolls_back() {
        let mut view = cluster(&[(4, 0), (4, 0), (4, 0)]);
        view.allocate(n(3), &ResourceSet::cpus(4)).unwrap();
        let bundles = vec![ResourceSet::cpus(1); 3];
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &[None; 3]), Err(NoPlacement::Wait));
        assert_eq!(free_cpus(&view), vec![4, 4, 0], "bundles placed before the failure were released");
    }

    #[test]
    fn strict_spread_replaces_only_lost_bundles_away_from_the_survivors() {
        let mut view = cluster(&[(4, 0), (4, 0), (4, 0), (4, 0)]);
        let bundles = vec![ResourceSet::cpus(1); 3];
        let placed = reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &[None; 3]).unwrap();
        let lost = placed[1];
        assert!(view.remove_node(lost).is_some());
        let survivors = [Some(placed[0]), None, Some(placed[2])];
        let again = reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &survivors).unwrap();
        assert_eq!(again.len(), 1, "only the lost bundle is placed again");
        assert!(!placed.contains(&again[0]), "never on a node holding a bundle of the group");
        assert!(view.remove_node(again[0]).is_some());
        let short = reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &survivors);
        assert_eq!(short, Err(NoPlacement::Infeasible), "no third node is left");
    }

    #[test]
    fn pack_uses_one_node_when_it_can_and_few_nodes_otherwise() {
        let mut view = cluster(&[(4, 0), (8, 0), (4, 0)]);
        let bundles = vec![ResourceSet::cpus(2); 3];
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::Pack, &[None; 3]), Ok(vec![n(2); 3]));
        let more = vec![ResourceSet::cpus(2); 4];
        let placed = reserve(&mut view, &more, PlacementStrategy::Pack, &[None; 4]).unwrap();
        let mut used = placed.clone();
        used.sort();
        used.dedup();
        assert_eq!(used, vec![n(1), n(3)], "two empty nodes hold two bundles each; node 2 holds only one");
        assert_eq!(free_cpus(&view), vec![0, 2, 0]);
        let mut view = cluster(&[(4, 0), (4, 0)]);
        view.allocate(n(1), &ResourceSet::cpus(2)).unwrap();
        let pair = vec![ResourceSet::cpus(1); 2];
        let lost = [Some(n(2)), None];
        assert_eq!(reserve(&mut view, &pair, PlacementStrategy::Pack, &lost), Ok(vec![n(2)]), "the group's node first");
    }

    #[test]
    fn pack_failure_is_all_or_nothing() {
        let mut view = cluster(&[(4, 0), (4, 0)]);
        view.allocate(n(2), &ResourceSet::cpus(3)).unwrap();
        let bundles = vec![ResourceSet::cpus(2); 3];
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::Pack, &[None; 3]), Err(NoPlacement::Wait));
        assert_eq!(free_cpus(&view), vec![4, 1], "the two bundles that fitted were released");
        let huge = vec![ResourceSet::cpus(1), ResourceSet::cpus(5)];
        assert_eq!(reserve(&mut view, &huge, PlacementStrategy::Pack, &[None; 2]), Err(NoPlacement::Infeasible));
        assert_eq!(free_cpus(&view), vec![4, 1]);
    }

    #[test]
    fn a_soft_group_larger_than_the_whole_cluster_is_infeasible_not_left_waiting() {
        let mut view = cluster(&[(4, 0), (4, 0)]);
        let nine = vec![ResourceSet::cpus(1); 9];
        for strategy in [PlacementStrategy::Pack, PlacementStrategy::Spread] {
            assert_eq!(reserve(&mut view, &nine, strategy, &[None; 9]), Err(NoPlacement::Infeasible), "9 > 8 CPUs");
        }
        view.allocate(n(1), &ResourceSet::cpus(1)).unwrap();
        let eight = vec![ResourceSet::cpus(1); 8];
        assert_eq!(
            reserve(&mut view, &eight, PlacementStrategy::Spread, &[None; 8]),
            Err(NoPlacement::Wait),
            "fits once freed"
        );
        let mut placed = [None; 9];
        placed[0] = Some(n(2));
        let grown = reserve(&mut view, &nine, PlacementStrategy::Pack, &placed);
        assert_eq!(grown, Err(NoPlacement::Infeasible), "bundles already placed count against the total");
        let mut view = cluster(&[(4, 0), (2, 0), (2, 0)]);
        let threes = vec![ResourceSet::cpus(3); 2];
        let answer = reserve(&mut view, &threes, PlacementStrategy::Spread, &[None; 2]);
        assert_eq!(answer, Err(NoPlacement::Infeasible), "8 CPUs in all, but only one node holds 3");
        let mixed = vec![ResourceSet::cpus(3), ResourceSet::cpus(2), ResourceSet::cpus(2)];
        assert!(reserve(&mut view, &mixed, PlacementStrategy::Pack, &[None; 3]).is_ok());
    }

    #[test]
    fn bundles_left_on_a_draining_node_take_none_of_the_schedulable_room() {
        // A Pack group of 8 lay on nodes 1 and 2; node 2 drains, node 1 dies: 4 bundles must be
        // placed again, and node 3 (4 CPUs, 1 of them busy) will hold them once it is free.
        let mut view = cluster(&[(4, 0), (4, 0), (4, 0)]);
        let eight = vec![ResourceSet::cpus(1); 8];
        let placed = reserve(&mut view, &eight, PlacementStrategy::Pack, &[None; 8]).unwrap();
        assert!(placed.iter().all(|&node| node != n(3)), "{placed:?}");
        view.set_schedulable(n(2), false);
        assert!(view.remove_node(n(1)).is_some());
        view.allocate(n(3), &ResourceSet::cpus(1)).unwrap();
        let left: Vec<Option<NodeId>> = placed.iter().map(|&p| (p == n(2)).then_some(p)).collect();
        assert_eq!(reserve(&mut view, &eight, PlacementStrategy::Pack, &left), Err(NoPlacement::Wait));
    }

    #[test]
    fn a_cluster_with_more_memory_than_a_u64_of_amount_units_sums_it_without_overflow() {
        let mut view = ClusterView::new(SchedulerConfig::default());
        for i in 0..2_000 {
            view.add_node(n(i + 1), ResourceSet::cpus(4).with_memory_bytes(1 << 40), Labels::new());
        }
        view.check_invariants();
        let bundles = vec![ResourceSet::cpus(1).with_memory_bytes(1 << 39); 3];
        assert!(reserve(&mut view, &bundles, PlacementStrategy::Spread, &[None; 3]).is_ok());
        let too_big = vec![ResourceSet::cpus(4).with_memory_bytes(1 << 40); 2_001];
        assert_eq!(reserve(&mut view, &too_big, PlacementStrategy::Pack, &[None; 2_001]), Err(NoPlacement::Infeasible));
    }

    #[test]
    fn a_view_read_back_from_a_snapshot_works_out_its_free_sum_again() {
        let mut view = cluster(&[(4, 0), (4, 0)]);
        view.allocate(n(1), &ResourceSet::cpus(3)).unwrap();
        let bytes = postcard::to_allocvec(&view).unwrap();
        let mut back: ClusterView = postcard::from_bytes(&bytes).unwrap();
        back.check_invariants();
        let six = vec![ResourceSet::cpus(1); 6];
        assert_eq!(reserve(&mut back, &six, PlacementStrategy::Pack, &[None; 6]), Err(NoPlacement::Wait), "5 free");
        let five = vec![ResourceSet::cpus(1); 5];
        assert!(reserve(&mut back, &five, PlacementStrategy::Pack, &[None; 5]).is_ok());
        assert_eq!(free_cpus(&back), vec![0, 0]);
    }

    #[test]
    fn spread_prefers_distinct_nodes_but_shares_when_it_must() {
        let mut view = cluster(&[(4, 0), (4, 0)]);
        let bundles = vec![ResourceSet::cpus(1); 3];
        let placed = reserve(&mut view, &bundles, PlacementStrategy::Spread, &[None; 3]).unwrap();
        assert!(placed.contains(&n(1)) && placed.contains(&n(2)), "both nodes are used: {placed:?}");
        assert_eq!(free_cpus(&view), vec![2, 3], "the third bundle shares the least utilised node");
        let wide = vec![ResourceSet::cpus(3); 2];
        assert_eq!(reserve(&mut view, &wide, PlacementStrategy::Spread, &[None; 2]), Err(NoPlacement::Wait));
        assert_eq!(free_cpus(&view), vec![2, 3]);
    }

    #[test]
    fn gpu_bundles_use_gpu_nodes_and_cpu_bundles_avoid_them() {
        let mut view = cluster(&[(8, 2), (8, 0)]);
        let gpu = ResourceSet::cpus(1).with_gpu(Amount::ONE);
        let bundles = vec![gpu.clone(), ResourceSet::cpus(1)];
        assert_eq!(reserve(&mut view, &bundles, PlacementStrategy::StrictSpread, &[None; 2]), Ok(vec![n(1), n(2)]));
        let cpu_only = vec![ResourceSet::cpus(2); 2];
        assert_eq!(reserve(&mut view, &cpu_only, PlacementStrategy::Pack, &[None; 2]), Ok(vec![n(2); 2]));
        let mixed = vec![ResourceSet::cpus(1), gpu];
        assert_eq!(reserve(&mut view, &mixed, PlacementStrategy::StrictPack, &[None; 2]), Ok(vec![n(1); 2]));
        let three_gpus = vec![ResourceSet::default().with_gpu(Amount::ONE); 3];
        let none = [None; 3];
        assert_eq!(reserve(&mut view, &three_gpus, PlacementStrategy::StrictPack, &none), Err(NoPlacement::Infeasible));
    }
}
