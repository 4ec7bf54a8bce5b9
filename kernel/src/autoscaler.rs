//! The autoscaler's bin-packing: which nodes to launch for the demand the cluster cannot place.
//!
//! [`plan`] is pure and deterministic. Its input is the demand, each piece counted once:
//! - queued task shapes (with their label constraints);
//! - pending placement groups as gangs: STRICT_PACK bundles together on one node, STRICT_SPREAD
//!   bundles on distinct nodes, PACK/SPREAD bundles as separate items;
//! - explicit resource requests.
//!
//! Its bins are the free room of the nodes that exist and the whole of the nodes already
//! launching (so demand they will serve is not launched for again). Its output is how many
//! nodes of each type to launch, and the demand it could not serve (and why).
//!
//! **Algorithm: first-fit decreasing, by shape.** Items are grouped by shape and sorted by their
//! dominant share of the largest node type (GPUs first), largest first. Each shape fills the
//! existing bins first-fit (as many copies as fit in a bin at once), then new nodes. A new node's
//! type is the one whose empty node, filled first-fit with the remaining demand, is used best
//! (the mean over resources of the share used; ties to the smaller type, then the earlier one),
//! and as many identical nodes as that fill repeats are opened at once. First-fit decreasing is
//! the classic choice: simple, deterministic, within 11/9 of optimal for one resource, and good
//! in practice for several; the per-shape grouping makes it cost the number of distinct shapes
//! times the number of bins rather than the number of tasks (see the tests for how far from
//! optimal it lands on small random cases).
//!
//! Limits: each type's `max_workers`, the cluster's `max_workers`, and `upscaling_speed` (at
//! most `max(5, speed x nodes running)` nodes launching at once). Each type's `min_workers` are
//! launched whatever the demand, and take demand like any node.

use crate::proto::{LabelConstraint, Labels, PlacementStrategy};
use crate::resources::{Amount, ResourceSet};
use std::collections::BTreeMap;

/// A kind of node the provider can launch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeType {
    /// Its name (the provider's key).
    pub name: String,
    /// What one node offers.
    pub resources: ResourceSet,
    /// Its labels.
    pub labels: Labels,
    /// Nodes of this type kept running whatever the demand.
    pub min_workers: u32,
    /// At most this many nodes of this type.
    pub max_workers: u32,
}

/// The autoscaler's limits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// At most this many worker nodes in all.
    pub max_workers: u32,
    /// At most `max(5, upscaling_speed x nodes running)` nodes launching at once.
    pub upscaling_speed: f64,
}

/// A node that exists or is launching, as a bin.
#[derive(Clone, Debug, PartialEq)]
pub struct Bin {
    /// Its type (index into the types), if it is one of them.
    pub node_type: Option<usize>,
    /// What it has free (a launching node: all of its type's resources).
    pub free: ResourceSet,
    /// Its labels.
    pub labels: Labels,
    /// Still launching.
    pub launching: bool,
}

/// Demand the cluster cannot place now, each piece counted once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Demand {
    /// Queued tasks: shape, label constraints, count.
    pub tasks: Vec<(ResourceSet, Vec<LabelConstraint>, u64)>,
    /// Pending placement groups: their unplaced bundles.
    pub gangs: Vec<Gang>,
    /// Explicit requests (`request_resources`): shape, count.
    pub requests: Vec<(ResourceSet, u64)>,
}

/// A pending placement group's bundles not placed yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Gang {
    /// The group's strategy.
    pub strategy: PlacementStrategy,
    /// The bundles still to place.
    pub bundles: Vec<ResourceSet>,
    /// The bins (indices into the plan's bins) that hold the group's placed bundles: a
    /// STRICT_SPREAD group's others may not go there, and a STRICT_PACK group's may go nowhere
    /// else (so no new node is launched for them).
    pub placed: Vec<usize>,
}

impl Gang {
    /// A group none of whose bundles is placed.
    pub fn new(strategy: PlacementStrategy, bundles: Vec<ResourceSet>) -> Gang {
        Gang { strategy, bundles, placed: Vec::new() }
    }
}

impl Demand {
    /// The same demand for the bins left when the bins `removed` (indices) are taken away: the
    /// placed bundles' bin indices follow the bins they name.
    pub fn without_bins(&self, removed: &[usize]) -> Demand {
        let mut demand = self.clone();
        for gang in &mut demand.gangs {
            gang.placed = gang
                .placed
                .iter()
                .filter(|b| !removed.contains(b))
                .map(|&b| b - removed.iter().filter(|&&r| r < b).count())
                .collect();
        }
        demand
    }
}

/// Why demand was not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Unmet {
    /// No node type (and no node) could ever hold it.
    Infeasible,
    /// A type could hold it, but the limits stop more launches now.
    AtLimit,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to launch, by type index, ascending; counts above zero.
    pub launch: Vec<(usize, u32)>,
    /// Demand not served: shape, count, why.
    pub unmet: Vec<(ResourceSet, u64, Unmet)>,
}

/// One demand shape: what one copy needs, where it may go, how many copies.
#[derive(Clone, Debug)]
struct Item {
    need: ResourceSet,
    labels: Vec<LabelConstraint>,
    count: u64,
    /// Copies must go to distinct bins (a STRICT_SPREAD gang's bundles: one item per gang).
    distinct: bool,
    /// Bins (by index) it may not go to: those holding its gang's placed bundles.
    avoid: Vec<usize>,
    /// It may go only to these bins (the rest of a STRICT_PACK gang placed in part: its
    /// siblings' node), and never to a new node.
    only: Option<Vec<usize>>,
    size: u64,
}

/// A bin being filled: free amounts and GPU devices.
#[derive(Clone, Debug)]
struct Room {
    free: ResourceSet,
    /// Free share of each GPU device, in `Amount` units.
    gpus: Vec<u64>,
    labels: Labels,
}

impl Room {
    fn new(free: ResourceSet, labels: Labels) -> Room {
        let whole = free.gpu.0 / Amount::SCALE;
        let mut gpus = vec![Amount::SCALE; whole as usize];
        if free.gpu.0 % Amount::SCALE > 0 {
            gpus.push(free.gpu.0 % Amount::SCALE);
        }
        Room { free, gpus, labels }
    }

    /// How many copies of `need` fit, at most `cap`.
    fn copies(&self, need: &ResourceSet, cap: u64) -> u64 {
        let ratio = |have: u64, want: u64| have.checked_div(want).unwrap_or(u64::MAX);
        let mut k = cap
            .min(ratio(self.free.cpu.0, need.cpu.0))
            .min(ratio(self.free.memory.0, need.memory.0))
            .min(ratio(self.free.gpu.0, need.gpu.0));
        for (name, want) in &need.custom {
            k = k.min(ratio(self.free.custom.get(name).map_or(0, |a| a.0), want.0));
        }
        if need.gpu.0 > 0 && k > 0 {
            let g = need.gpu.0;
            let by_device: u64 = if g < Amount::SCALE {
                self.gpus.iter().map(|&d| d / g).sum()
            } else {
                self.gpus.iter().filter(|&&d| d == Amount::SCALE).count() as u64 / g.div_ceil(Amount::SCALE)
            };
            k = k.min(by_device);
        }
        k
    }

    /// Takes `k` copies of `need` (they fit).
    fn take(&mut self, need: &ResourceSet, k: u64) {
        if k == 0 {
            return;
        }
        self.free.cpu.0 -= need.cpu.0 * k;
        self.free.memory.0 -= need.memory.0 * k;
        self.free.gpu.0 -= need.gpu.0 * k;
        for (name, want) in &need.custom {
            let have = self.free.custom.get_mut(name).expect("fits");
            have.0 -= want.0 * k;
        }
        let g = need.gpu.0;
        if g > 0 && g < Amount::SCALE {
            let mut left = k;
            for d in &mut self.gpus {
                let here = (*d / g).min(left);
                *d -= here * g;
                left -= here;
            }
            debug_assert_eq!(left, 0);
        } else if g > 0 {
            let mut left = k * g.div_ceil(Amount::SCALE);
            for d in self.gpus.iter_mut().filter(|d| **d == Amount::SCALE) {
                if left == 0 {
                    break;
                }
                *d = 0;
                left -= 1;
            }
        }
    }
}

/// The nodes to launch for `demand`, given the `bins` that exist or are launching.
pub fn plan(types: &[NodeType], limits: &Limits, bins: &[Bin], demand: &Demand) -> Plan {
    let mut items = items_of(types, bins, demand);
    let mut rooms: Vec<Room> = bins.iter().map(|b| Room::new(b.free.clone(), b.labels.clone())).collect();
    // Quotas.
    let mut per_type: Vec<u32> = vec![0; types.len()];
    for b in bins {
        if let Some(t) = b.node_type.filter(|t| *t < types.len()) {
            per_type[t] += 1;
        }
    }
    let running = bins.iter().filter(|b| !b.launching).count() as f64;
    let launching = bins.iter().filter(|b| b.launching).count() as u64;
    // Workers are the nodes of the types (a static node, without a type, is not one).
    let workers = bins.iter().filter(|b| b.node_type.is_some()).count() as u64;
    let pending_cap = ((limits.upscaling_speed.max(0.0) * running).ceil() as u64).max(5);
    let mut budget = pending_cap.saturating_sub(launching).min(u64::from(limits.max_workers).saturating_sub(workers));
    let mut launch: BTreeMap<usize, u32> = BTreeMap::new();
    // Minimum workers first: they take demand like any node.
    for (t, ty) in types.iter().enumerate() {
        let short = ty.min_workers.saturating_sub(per_type[t]).min(ty.max_workers.saturating_sub(per_type[t]));
        let short = u64::from(short).min(budget);
        for _ in 0..short {
            rooms.push(Room::new(ty.resources.clone(), labels_of(ty)));
        }
        if short > 0 {
            *launch.entry(t).or_default() += short as u32;
            per_type[t] += short as u32;
            budget = budget.saturating_sub(short);
        }
    }
    // Existing room first, first-fit, each shape as many copies at a time as fit.
    for item in &mut items {
        fill(&mut rooms, item);
    }
    // Then new nodes.
    let mut unmet: BTreeMap<(ResourceSet, Unmet), u64> = BTreeMap::new();
    // The rest of a STRICT_PACK group placed in part waits for room beside its siblings: no
    // new node can take it.
    for item in items.iter_mut().filter(|i| i.only.is_some()) {
        item.count = 0;
    }
    while let Some(first) = items.iter().position(|i| i.count > 0) {
        let fits_type = |t: usize, item: &Item| {
            let ty = &types[t];
            labels_match(&item.labels, &labels_of(ty))
                && Room::new(ty.resources.clone(), Labels::new()).copies(&item.need, 1) == 1
        };
        let can_open = |t: usize| per_type[t] < types[t].max_workers;
        let candidates: Vec<usize> = (0..types.len()).filter(|&t| fits_type(t, &items[first]) && can_open(t)).collect();
        if candidates.is_empty() || budget == 0 {
            let why =
                if (0..types.len()).any(|t| fits_type(t, &items[first])) { Unmet::AtLimit } else { Unmet::Infeasible };
            let item = &mut items[first];
            *unmet.entry((item.need.clone(), why)).or_default() += item.count;
            item.count = 0;
            continue;
        }
        // The type whose fresh node the remaining demand uses best.
        let mut best: Option<(usize, f64, Vec<u64>)> = None;
        for &t in &candidates {
            let (used, pattern) = trial_fill(&types[t], &items);
            let better = match &best {
                None => true,
                Some((b, score, _)) => {
                    used > *score + 1e-12
                        || ((used - *score).abs() <= 1e-12
                            && size_of(&types[t].resources) < size_of(&types[*b].resources))
                }
            };
            if better {
                best = Some((t, used, pattern));
            }
        }
        let (t, _, pattern) = best.expect("a candidate");
        // As many identical nodes as the pattern repeats (distinct items: once per node).
        let mut repeat = u64::MAX;
        for (item, &p) in items.iter().zip(&pattern) {
            if let Some(r) = item.count.checked_div(p) {
                repeat = repeat.min(r);
            }
        }
        let quota = u64::from(types[t].max_workers - per_type[t]);
        let total_left = u64::from(limits.max_workers).saturating_sub(workers + launched(&launch));
        let repeat = repeat.max(1).min(quota).min(budget).min(total_left);
        if repeat == 0 {
            // The cluster-wide limit: nothing more can open.
            budget = 0;
            continue;
        }
        for (item, &p) in items.iter_mut().zip(&pattern) {
            item.count -= (p * repeat).min(item.count);
        }
        *launch.entry(t).or_default() += repeat as u32;
        per_type[t] += repeat as u32;
        budget -= repeat;
    }
    Plan {
        launch: launch.into_iter().filter(|(_, n)| *n > 0).collect(),
        unmet: unmet.into_iter().map(|((need, why), n)| (need, n, why)).collect(),
    }
}

/// A node type's labels as its nodes carry them: its own, and its name under
/// [`NODE_TYPE_LABEL`] (so work can ask for a type by name).
pub fn labels_of(ty: &NodeType) -> Labels {
    let mut labels = ty.labels.clone();
    labels.insert(NODE_TYPE_LABEL.to_string(), ty.name.clone());
    labels
}

fn labels_match(constraints: &[LabelConstraint], labels: &Labels) -> bool {
    constraints.iter().all(|c| c.matches(labels))
}

fn launched(launch: &BTreeMap<usize, u32>) -> u64 {
    launch.values().map(|&n| u64::from(n)).sum()
}

/// The demand as items, largest first.
fn items_of(types: &[NodeType], bins: &[Bin], demand: &Demand) -> Vec<Item> {
    // The largest amount of each resource a node offers: the scale of "dominant share".
    let mut scale = ResourceSet::default();
    let widen = |scale: &mut ResourceSet, r: &ResourceSet| {
        scale.cpu = scale.cpu.max(r.cpu);
        scale.memory = scale.memory.max(r.memory);
        scale.gpu = scale.gpu.max(r.gpu);
        for (k, v) in &r.custom {
            let e = scale.custom.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    };
    for t in types {
        widen(&mut scale, &t.resources);
    }
    for b in bins {
        widen(&mut scale, &b.free);
    }
    let mut grouped: BTreeMap<(ResourceSet, Vec<LabelConstraint>, bool), u64> = BTreeMap::new();
    let mut add = |need: ResourceSet, labels: Vec<LabelConstraint>, count: u64, distinct: bool| {
        if count > 0 && !need.is_empty() {
            *grouped.entry((need, labels, distinct)).or_default() += count;
        }
    };
    for (need, labels, count) in &demand.tasks {
        add(need.clone(), labels.clone(), *count, false);
    }
    for (need, count) in &demand.requests {
        add(need.clone(), Vec::new(), *count, false);
    }
    let mut spread_gangs = Vec::new();
    let mut pack_rests = Vec::new();
    for gang in &demand.gangs {
        match gang.strategy {
            PlacementStrategy::StrictPack => {
                let mut sum = ResourceSet::default();
                for b in &gang.bundles {
                    sum.add(b);
                }
                if gang.placed.is_empty() {
                    add(sum, Vec::new(), 1, false);
                } else {
                    pack_rests.push((sum, gang.placed.clone()));
                }
            }
            PlacementStrategy::StrictSpread => spread_gangs.push((gang.bundles.clone(), gang.placed.clone())),
            PlacementStrategy::Pack | PlacementStrategy::Spread => {
                for b in &gang.bundles {
                    add(b.clone(), Vec::new(), 1, false);
                }
            }
        }
    }
    let mut items: Vec<Item> = grouped
        .into_iter()
        .map(|((need, labels, distinct), count)| Item {
            size: size_against(&need, &scale),
            need,
            labels,
            count,
            distinct,
            avoid: Vec::new(),
            only: None,
        })
        .collect();
    // A STRICT_SPREAD gang: one distinct item of as many copies as bundles, each copy the
    // largest of the bundles in every resource (mixed bundles must not share a node either;
    // this may ask for a little more than they need, never for too little).
    // Bundles of a group placed in part keep away from (STRICT_SPREAD) or to (STRICT_PACK) the
    // bins of their placed siblings.
    for (bundles, mut avoid) in spread_gangs {
        avoid.sort_unstable();
        avoid.dedup();
        let mut cover = ResourceSet::default();
        for b in &bundles {
            widen(&mut cover, b);
        }
        let count = bundles.len() as u64;
        let size = size_against(&cover, &scale);
        items.push(Item { size, need: cover, labels: Vec::new(), count, distinct: true, avoid, only: None });
    }
    for (need, mut placed) in pack_rests {
        placed.sort_unstable();
        placed.dedup();
        let size = size_against(&need, &scale);
        let only = Some(placed);
        items.push(Item { size, need, labels: Vec::new(), count: 1, distinct: false, avoid: Vec::new(), only });
    }
    items.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.need.cmp(&b.need)).then_with(|| a.labels.cmp(&b.labels)));
    items
}

/// Dominant share of `need` against `scale`, in millionths, GPUs weighing first.
fn size_against(need: &ResourceSet, scale: &ResourceSet) -> u64 {
    let share =
        |n: Amount, s: Amount| if s.0 == 0 { 0 } else { (u128::from(n.0) * 1_000_000 / u128::from(s.0)) as u64 };
    let mut dominant = share(need.cpu, scale.cpu).max(share(need.memory, scale.memory));
    for (k, v) in &need.custom {
        dominant = dominant.max(share(*v, scale.custom.get(k).copied().unwrap_or_default()));
    }
    let gpu = share(need.gpu, scale.gpu);
    if gpu > 0 {
        2_000_000 + gpu.max(dominant)
    } else {
        dominant
    }
}

/// The total of a node's amounts, to prefer smaller types on ties.
fn size_of(r: &ResourceSet) -> u128 {
    u128::from(r.cpu.0)
        + u128::from(r.memory.0 >> 20)
        + u128::from(r.gpu.0) * 1000
        + r.custom.values().map(|v| u128::from(v.0)).sum::<u128>()
}

/// Fills the rooms first-fit with `item`'s copies.
fn fill(rooms: &mut [Room], item: &mut Item) {
    for (i, room) in rooms.iter_mut().enumerate() {
        if item.count == 0 {
            return;
        }
        let barred = item.avoid.binary_search(&i).is_ok()
            || item.only.as_ref().is_some_and(|only| only.binary_search(&i).is_err());
        if barred || !labels_match(&item.labels, &room.labels) {
            continue;
        }
        let cap = if item.distinct { 1 } else { item.count };
        let k = room.copies(&item.need, cap);
        room.take(&item.need, k);
        item.count -= k;
    }
}

/// One empty node of `ty` filled first-fit with the items: the mean share of its resources used,
/// and how many copies of each item it took.
fn trial_fill(ty: &NodeType, items: &[Item]) -> (f64, Vec<u64>) {
    let mut room = Room::new(ty.resources.clone(), labels_of(ty));
    let mut pattern = vec![0; items.len()];
    for (i, item) in items.iter().enumerate() {
        if item.count == 0 || item.only.is_some() || !labels_match(&item.labels, &room.labels) {
            continue;
        }
        let cap = if item.distinct { 1 } else { item.count };
        let k = room.copies(&item.need, cap);
        room.take(&item.need, k);
        pattern[i] = k;
    }
    let total = &ty.resources;
    let mut shares = Vec::new();
    let used = |t: Amount, f: Amount| if t.0 == 0 { None } else { Some(1.0 - f.0 as f64 / t.0 as f64) };
    shares.extend(used(total.cpu, room.free.cpu));
    shares.extend(used(total.memory, room.free.memory));
    shares.extend(used(total.gpu, room.free.gpu));
    for (k, v) in &total.custom {
        shares.extend(used(*v, room.free.custom.get(k).copied().unwrap_or_default()));
    }
    let mean = if shares.is_empty() { 0.0 } else { shares.iter().sum::<f64>() / shares.len() as f64 };
    (mean, pattern)
}

/// The autoscaler's settings (in [`HeadConfig`](crate::HeadConfig); `None` there: no autoscaling).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoscalerConfig {
    /// The node types the provider can launch.
    pub node_types: Vec<NodeType>,
    /// Cluster-wide limits.
    pub limits: Limits,
    /// How often it decides.
    pub period: crate::time::Duration,
    /// A managed node idle this long is terminated, unless its type is at `min_workers` or
    /// pending demand could use it.
    pub idle_timeout: crate::time::Duration,
    /// Nodes of a launch that have not registered after this long count as failed.
    pub launch_timeout: crate::time::Duration,
    /// After this many failed launches of a type in a row, the type is left alone for
    /// `failure_backoff` (and demand only it can hold is reported at a limit).
    pub max_launch_failures: u32,
    /// See `max_launch_failures`.
    pub failure_backoff: crate::time::Duration,
}

/// The label a launched node carries with its launch request's number (the provider sets it),
/// so that the head counts it against its launch.
pub const LAUNCH_LABEL: &str = "keel.launch";
/// The label a launched node carries with the provider's name for its machine, so that a node
/// registering again (after a partition, a daemon restart) does not count twice for its launch.
pub const INSTANCE_LABEL: &str = "keel.instance";
/// The label a launched node carries with its type's name.
pub const NODE_TYPE_LABEL: &str = "keel.node-type";
