//! The cluster's resource view and node-selection policy, used by the Head.
//!
//! [`ClusterView`] holds every registered node's [`ResourcePool`] and [`Labels`] and decides where
//! new work goes: [`ClusterView::schedule`] for tasks and actors, and
//! [`ClusterView::reserve_bundles`] (in `bundles.rs`) for placement groups. It reads no clock and
//! owns no randomness: the caller hands in its seeded RNG.
//!
//! ## Policy
//!
//! - Only schedulable nodes (not draining) get new work, and only when every [`LabelConstraint`]
//!   of the request matches the node's labels.
//! - [`SchedulingStrategy::Default`] (hybrid): locality first (the first node of
//!   [`PlacementRequest::locality`] that fits now); otherwise *pack*: among nodes whose
//!   critical-resource utilisation after placing stays at or under the spread threshold, the most
//!   utilised now; when there is none, *spread*: the least utilised that fits. Ties go to the
//!   lowest [`NodeId`], and the pick is uniformly random among the first `top_k` candidates.
//! - [`SchedulingStrategy::Spread`]: the least utilised node that fits; ties go round-robin from
//!   a cursor, so that it keeps spreading when every node is equally busy (Ray #23595).
//! - [`SchedulingStrategy::NodeAffinity`]: that node only (hard), or that node if it fits now and
//!   the default policy otherwise (soft).
//! - Work that needs no GPU avoids GPU nodes: it goes to a node with GPUs only when no GPU-less
//!   node fits it now. This outranks locality.
//! - A request that no schedulable node could ever hold, even empty, is [`NoPlacement::Infeasible`];
//!   one that merely has to wait for capacity is [`NoPlacement::Wait`].
//!
//! ## Index and cost
//!
//! Utilisation is an integer in basis points (parts per 10,000), computed exactly from the
//! fixed-point amounts and rounded up. Schedulable nodes sit in two ordered indices (GPU-less and
//! GPU nodes), each a `BTreeMap` from a *bucket key* to the set of nodes in that bucket. The key is
//! `(utilisation, shape class, free amounts of every resource and GPU device)`: nodes that share a
//! bucket are interchangeable for every request except by labels, so one test of a bucket's first
//! node decides the whole bucket. A decision walks utilisation levels from the preferred end,
//! tests each bucket once and merges the fitting buckets' node sets by id until it has `top_k`
//! candidates. Its cost is O(B log n), where B is the number of buckets visited: a handful for a
//! homogeneous cluster (one bucket per distinct fill level), whatever the number of nodes. Label
//! constraints are checked per node. An allocation or release moves one node between buckets
//! (O(log n)). Feasibility is decided per shape class (distinct node totals), and with label
//! constraints it is cached per request shape until nodes join, leave or change schedulability.
//!
//! No hash maps: every iteration is ordered, so the same inputs give the same decisions.

use crate::ids::NodeId;
use crate::proto::{LabelConstraint, Labels, SchedulingStrategy};
use crate::resources::{Allocation, Amount, ResourcePool, ResourceSet};
use rand_core::RngCore;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Utilisation of a full node, in basis points (parts per 10,000).
pub const UTILISATION_FULL_BP: u32 = 10_000;

/// How many request shapes with label constraints the feasibility cache remembers.
const FEASIBILITY_CACHE_ENTRIES_MAX: usize = 64;

/// The scheduler's tunables.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Hybrid policy: pack onto nodes while their utilisation after placing stays at or under this
    /// fraction (in `[0, 1]`), then spread. Default 0.5.
    pub spread_threshold: f64,
    /// Hybrid policy: choose uniformly at random among this many best candidates (at least 1;
    /// 1 makes decisions deterministic without drawing from the RNG). Default 3.
    pub top_k: usize,
    /// Work that needs no GPU goes to a GPU node only when no GPU-less node fits it. Default true.
    pub avoid_gpu_nodes: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { spread_threshold: 0.5, top_k: 3, avoid_gpu_nodes: true }
    }
}

/// One node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedNode {
    /// Its resources and what is allocated from them.
    pub pool: ResourcePool,
    /// The labels it registered with.
    pub labels: Labels,
    /// Whether it takes new work (false while draining).
    pub schedulable: bool,
}

/// Why a request was not placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPlacement {
    /// Some schedulable node could hold it, but none has room now: try again after a release.
    Wait,
    /// No schedulable node could ever hold it, even empty (labels included).
    Infeasible,
}

/// What [`ClusterView::schedule`] is asked to place.
#[derive(Clone, Copy, Debug)]
pub struct PlacementRequest<'a> {
    /// The resources to allocate.
    pub resources: &'a ResourceSet,
    /// Where it may go. [`SchedulingStrategy::PlacementGroup`] is not handled here.
    pub strategy: &'a SchedulingStrategy,
    /// Hard label constraints, all of which must match.
    pub labels: &'a [LabelConstraint],
    /// `(node, argument bytes held there)`, most bytes first.
    pub locality: &'a [(NodeId, u64)],
}

/// What makes nodes interchangeable (labels aside): nodes with equal keys share a bucket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct BucketKey {
    /// Critical-resource utilisation now, in basis points.
    pub(super) utilisation_bp: u32,
    /// The node's shape class (its total resources).
    class: u32,
    /// Free amounts: CPU, memory, GPU, each custom resource of the class (0 when absent, amount
    /// plus one when present), then each GPU device. Inline up to eight amounts, so re-filing a
    /// node after an allocation allocates nothing.
    free: SmallVec<[u64; 8]>,
}

/// A bucket's place in an index: its utilisation level, then its interned id (the order of
/// buckets within a level does not matter: walks merge their nodes by id).
type IndexKey = (u32, u32);

/// The smallest index key at a utilisation level.
fn level_start(utilisation_bp: u32) -> IndexKey {
    (utilisation_bp, 0)
}

/// Bucket keys interned as small ids, so that the ordered indices compare two integers; an id is
/// freed when its bucket empties, and reused.
#[derive(Clone, Debug, Default)]
struct BucketIds {
    by_key: FxHashMap<BucketKey, u32>,
    /// Per id: its key and how many nodes are in the bucket (0 for a free id).
    keys: Vec<(BucketKey, usize)>,
    free: Vec<u32>,
}

impl BucketIds {
    /// The id of `key`, counting one more node in it.
    fn acquire(&mut self, key: BucketKey) -> u32 {
        if let Some(&id) = self.by_key.get(&key) {
            self.keys[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                assert_eq!(self.keys[id as usize].1, 0, "a free bucket id still holds nodes");
                self.keys[id as usize] = (key.clone(), 1);
                id
            }
            None => {
                self.keys.push((key.clone(), 1));
                u32::try_from(self.keys.len() - 1).expect("bucket ids fit in u32")
            }
        };
        self.by_key.insert(key, id);
        id
    }

    /// One node fewer in bucket `id`; the id is freed when none is left.
    fn release(&mut self, id: u32) {
        let (key, count) = &mut self.keys[id as usize];
        *count = count.checked_sub(1).expect("bucket count underflow");
        if *count == 0 {
            assert_eq!(self.by_key.remove(key), Some(id), "bucket interning out of sync");
            self.free.push(id);
        }
    }

    fn key(&self, id: u32) -> &BucketKey {
        &self.keys[id as usize].0
    }

    fn count(&self, id: u32) -> usize {
        self.keys[id as usize].1
    }
}

/// Nodes of one shape class share their totals (and so their GPU device layout).
#[derive(Clone, Debug)]
struct NodeClass {
    /// An empty pool with the class's totals, for feasibility tests.
    empty: ResourcePool,
    has_gpu: bool,
    nodes_count: usize,
    schedulable_count: usize,
}

#[derive(Clone, Debug)]
struct Entry {
    node: SchedNode,
    class: u32,
    /// Free amount of each GPU device, mirrored from the allocations (the pool keeps it private).
    gpu_free: Vec<u64>,
    /// Some exactly while the node is schedulable and indexed.
    bucket: Option<IndexKey>,
}

/// A total or a request as an ordered key.
type ShapeKey = (u64, u64, u64, Vec<(String, u64)>);
/// A request shape with its label constraints, as an ordered key.
type FeasibilityKey = (ShapeKey, Vec<(u8, String, Vec<String>)>);
/// Cached feasibility per request shape; values keep the request so invariant checks can redo them.
type FeasibilityCache = BTreeMap<FeasibilityKey, (ResourceSet, Vec<LabelConstraint>, bool)>;

/// Which of the two indices a walk visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeKinds {
    /// Nodes without GPUs.
    GpuLess,
    /// Nodes with GPUs.
    Gpu,
    /// Both.
    Any,
}

impl NodeKinds {
    fn slots(self) -> &'static [usize] {
        match self {
            NodeKinds::GpuLess => &[0],
            NodeKinds::Gpu => &[1],
            NodeKinds::Any => &[0, 1],
        }
    }

    pub(super) fn admits(self, has_gpu: bool) -> bool {
        match self {
            NodeKinds::GpuLess => !has_gpu,
            NodeKinds::Gpu => has_gpu,
            NodeKinds::Any => true,
        }
    }

    /// The passes a request makes: GPU nodes only when it needs a GPU; GPU-less nodes first when
    /// GPU nodes are avoided; otherwise every node at once.
    pub(super) fn passes(needs_gpu: bool, avoid_gpu_nodes: bool) -> &'static [NodeKinds] {
        match (needs_gpu, avoid_gpu_nodes) {
            (true, _) => &[NodeKinds::Gpu],
            (false, true) => &[NodeKinds::GpuLess, NodeKinds::Gpu],
            (false, false) => &[NodeKinds::Any],
        }
    }
}

/// A node's "bucket test": whether a bucket's representative pool qualifies.
pub(super) type BucketTest<'t> = dyn FnMut(&ResourcePool) -> bool + 't;
/// A per-node test (labels, exclusions).
pub(super) type NodeTest<'t> = dyn Fn(NodeId, &SchedNode) -> bool + 't;

/// The cluster's resource view and scheduling policy. See the [module docs](self).
///
/// Mutators: [`add_node`](Self::add_node), [`remove_node`](Self::remove_node),
/// [`set_schedulable`](Self::set_schedulable), [`allocate`](Self::allocate),
/// [`release`](Self::release). Decisions: [`schedule`](Self::schedule),
/// [`reserve_bundles`](Self::reserve_bundles). Getters: [`node`](Self::node),
/// [`nodes`](Self::nodes), [`feasible_anywhere`](Self::feasible_anywhere).
#[derive(Clone, Debug)]
pub struct ClusterView {
    config: SchedulerConfig,
    spread_threshold_bp: u32,
    /// Lookup only; listings sort by id.
    entries: FxHashMap<NodeId, Entry>,
    classes: Vec<NodeClass>,
    class_by_total: BTreeMap<ShapeKey, u32>,
    /// Schedulable nodes by bucket: `[GPU-less, GPU]`.
    index: [BTreeMap<IndexKey, BTreeSet<NodeId>>; 2],
    buckets: BucketIds,
    /// The node the last SPREAD decision chose: ties go to the next one after it.
    spread_cursor: Option<NodeId>,
    /// Feasibility of request shapes with label constraints; cleared when nodes join, leave or
    /// change schedulability.
    feasibility_cache: RefCell<FeasibilityCache>,
}

/// Whether every constraint matches `labels`.
pub(super) fn labels_match(constraints: &[LabelConstraint], labels: &Labels) -> bool {
    constraints.iter().all(|c| c.matches(labels))
}

fn shape_key(set: &ResourceSet) -> ShapeKey {
    (set.cpu.0, set.memory.0, set.gpu.0, set.custom.iter().map(|(k, v)| (k.clone(), v.0)).collect())
}

fn feasibility_key(resources: &ResourceSet, labels: &[LabelConstraint]) -> FeasibilityKey {
    let label_key = labels
        .iter()
        .map(|c| match c {
            LabelConstraint::In { key, values } => (0, key.clone(), values.clone()),
            LabelConstraint::NotIn { key, values } => (1, key.clone(), values.clone()),
            LabelConstraint::Exists(key) => (2, key.clone(), Vec::new()),
            LabelConstraint::DoesNotExist(key) => (3, key.clone(), Vec::new()),
        })
        .collect();
    (shape_key(resources), label_key)
}

/// The GPU devices `ResourcePool::new` makes for `gpu`: whole devices, then one partial device.
fn gpu_device_capacities(gpu: Amount) -> Vec<u64> {
    let whole = gpu.0 / Amount::SCALE;
    let rest = gpu.0 % Amount::SCALE;
    let mut devices: Vec<u64> = (0..whole).map(|_| Amount::SCALE).collect();
    if rest > 0 {
        devices.push(rest);
    }
    assert_eq!(devices.iter().sum::<u64>(), gpu.0, "GPU devices must add up to the GPU total");
    devices
}

/// `ceil(used / total)` in basis points; resources a node does not have count as 0.
fn fraction_bp(total: u64, available: u64, extra: u64) -> u128 {
    assert!(available <= total, "available exceeds total");
    if total == 0 {
        return 0;
    }
    let used = u128::from(total - available) + u128::from(extra);
    (used * u128::from(UTILISATION_FULL_BP)).div_ceil(u128::from(total))
}

/// The critical-resource utilisation of `pool`, in basis points, after `extra` were allocated
/// (exact, rounded up; above [`UTILISATION_FULL_BP`] only when `extra` does not fit).
pub(super) fn utilisation_bp(pool: &ResourcePool, extra: Option<&ResourceSet>) -> u32 {
    let (total, available) = (pool.total(), pool.available());
    let none = ResourceSet::default();
    let extra = extra.unwrap_or(&none);
    let mut worst = fraction_bp(total.cpu.0, available.cpu.0, extra.cpu.0)
        .max(fraction_bp(total.memory.0, available.memory.0, extra.memory.0))
        .max(fraction_bp(total.gpu.0, available.gpu.0, extra.gpu.0));
    for (name, t) in &total.custom {
        let free = available.custom.get(name).map_or(0, |a| a.0);
        let more = extra.custom.get(name).map_or(0, |a| a.0);
        worst = worst.max(fraction_bp(t.0, free, more));
    }
    let bp = u32::try_from(worst).unwrap_or(u32::MAX);
    assert!(bp <= UTILISATION_FULL_BP || !extra.fits_in(available), "utilisation above full for a fitting request");
    bp
}

/// Uniformly one of `candidates` (the first when there is only one: no draw).
fn pick_uniform(candidates: &[NodeId], rng: &mut dyn RngCore) -> Option<NodeId> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let index = ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize;
            assert!(index < n);
            Some(candidates[index])
        }
    }
}

impl ClusterView {
    /// An empty view. Panics if `spread_threshold` is outside `[0, 1]` or `top_k` is 0.
    pub fn new(config: SchedulerConfig) -> ClusterView {
        assert!((0.0..=1.0).contains(&config.spread_threshold), "spread_threshold must be within [0, 1]");
        assert!(config.top_k >= 1, "top_k must be at least 1");
        let spread_threshold_bp = (config.spread_threshold * f64::from(UTILISATION_FULL_BP)).round() as u32;
        assert!(spread_threshold_bp <= UTILISATION_FULL_BP);
        ClusterView {
            config,
            spread_threshold_bp,
            entries: FxHashMap::default(),
            classes: Vec::new(),
            class_by_total: BTreeMap::new(),
            index: [BTreeMap::new(), BTreeMap::new()],
            buckets: BucketIds::default(),
            spread_cursor: None,
            feasibility_cache: RefCell::new(BTreeMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Registers a schedulable node. Panics if `node` is already present.
    pub fn add_node(&mut self, node: NodeId, total: ResourceSet, labels: Labels) {
        assert!(!self.entries.contains_key(&node), "node {node} added twice");
        let key = shape_key(&total);
        let class = match self.class_by_total.get(&key) {
            Some(&class) => class,
            None => {
                let class = u32::try_from(self.classes.len()).expect("too many node shapes");
                let empty = ResourcePool::new(total.clone());
                self.classes.push(NodeClass {
                    empty,
                    has_gpu: total.needs_gpu(),
                    nodes_count: 0,
                    schedulable_count: 0,
                });
                self.class_by_total.insert(key, class);
                class
            }
        };
        let gpu_free = gpu_device_capacities(total.gpu);
        let pool = ResourcePool::new(total);
        let node_state = SchedNode { pool, labels, schedulable: true };
        self.entries.insert(node, Entry { node: node_state, class, gpu_free, bucket: None });
        let class = &mut self.classes[class as usize];
        class.nodes_count += 1;
        class.schedulable_count += 1;
        self.index_insert(node);
        self.feasibility_cache.get_mut().clear();
        assert!(self.entries[&node].bucket.is_some());
    }

    /// Forgets a node (it died or left) and returns what the view knew of it.
    pub fn remove_node(&mut self, node: NodeId) -> Option<SchedNode> {
        self.entries.get(&node)?;
        self.index_remove(node);
        let entry = self.entries.remove(&node).expect("present above");
        let class = &mut self.classes[entry.class as usize];
        class.nodes_count = class.nodes_count.checked_sub(1).expect("class node count underflow");
        if entry.node.schedulable {
            class.schedulable_count = class.schedulable_count.checked_sub(1).expect("schedulable count underflow");
        }
        self.feasibility_cache.get_mut().clear();
        assert!(!self.entries.contains_key(&node));
        Some(entry.node)
    }

    /// Marks a node as taking new work or not (draining). Unknown nodes are ignored.
    pub fn set_schedulable(&mut self, node: NodeId, schedulable: bool) {
        let Some(entry) = self.entries.get_mut(&node) else { return };
        if entry.node.schedulable == schedulable {
            return;
        }
        entry.node.schedulable = schedulable;
        let class = &mut self.classes[entry.class as usize];
        if schedulable {
            class.schedulable_count += 1;
            self.index_insert(node);
        } else {
            class.schedulable_count = class.schedulable_count.checked_sub(1).expect("schedulable count underflow");
            self.index_remove(node);
        }
        self.feasibility_cache.get_mut().clear();
        assert_eq!(self.entries[&node].bucket.is_some(), schedulable);
    }

    /// A node, if known.
    pub fn node(&self, node: NodeId) -> Option<&SchedNode> {
        self.entries.get(&node).map(|e| &e.node)
    }

    /// Every known node, ascending by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &SchedNode)> {
        let mut ids: Vec<NodeId> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| (id, &self.entries[&id].node))
    }

    /// How many nodes are known (schedulable or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Picks a node for the request and allocates on it, all or nothing.
    ///
    /// [`SchedulingStrategy::PlacementGroup`] is not handled here (the head schedules inside the
    /// group's bundles itself) and always answers [`NoPlacement::Infeasible`].
    pub fn schedule(
        &mut self,
        req: &PlacementRequest<'_>,
        rng: &mut impl RngCore,
    ) -> Result<(NodeId, Allocation), NoPlacement> {
        let chosen = match *req.strategy {
            SchedulingStrategy::Default => self.choose_default(req, rng),
            SchedulingStrategy::Spread => self.choose_spread(req),
            SchedulingStrategy::NodeAffinity { node, soft: false } => return self.place_hard_affinity(req, node),
            SchedulingStrategy::NodeAffinity { node, soft: true } => {
                if self.fits_now_on(node, req.resources, req.labels) {
                    Some(node)
                } else {
                    self.choose_default(req, rng)
                }
            }
            SchedulingStrategy::PlacementGroup { .. } => return Err(NoPlacement::Infeasible),
        };
        let Some(node) = chosen else {
            return Err(self.no_placement(req.resources, req.labels));
        };
        assert!(self.fits_now_on(node, req.resources, req.labels), "the chosen node must fit the request");
        let alloc = self.allocate(node, req.resources).expect("the chosen node fits the request");
        assert_eq!(&alloc.resources, req.resources);
        Ok((node, alloc))
    }

    /// Allocates `req` directly on `node` (schedulable or not); `None` if the node is unknown or
    /// `req` does not fit there now.
    pub fn allocate(&mut self, node: NodeId, req: &ResourceSet) -> Option<Allocation> {
        let entry = self.entries.get_mut(&node)?;
        let alloc = entry.node.pool.try_allocate(req)?;
        for (device, amount) in &alloc.gpus {
            let free = &mut entry.gpu_free[*device as usize];
            *free = free.checked_sub(amount.0).expect("GPU device mirror underflow");
        }
        assert_eq!(entry.gpu_free.iter().sum::<u64>(), entry.node.pool.available().gpu.0);
        self.reindex(node);
        Some(alloc)
    }

    /// Gives back an allocation made on `node`; does nothing if the node is unknown (it died).
    pub fn release(&mut self, node: NodeId, alloc: &Allocation) {
        let Some(entry) = self.entries.get_mut(&node) else { return };
        entry.node.pool.release(alloc);
        let capacities =
            if alloc.gpus.is_empty() { Vec::new() } else { gpu_device_capacities(entry.node.pool.total().gpu) };
        for (device, amount) in &alloc.gpus {
            let free = &mut entry.gpu_free[*device as usize];
            *free += amount.0;
            assert!(*free <= capacities[*device as usize], "GPU device {device} over-released");
        }
        assert_eq!(entry.gpu_free.iter().sum::<u64>(), entry.node.pool.available().gpu.0);
        self.reindex(node);
    }

    /// Whether some schedulable node matching `labels` could hold `resources` when empty.
    pub fn feasible_anywhere(&self, resources: &ResourceSet, labels: &[LabelConstraint]) -> bool {
        let class_fits: Vec<bool> =
            self.classes.iter().map(|c| c.schedulable_count > 0 && c.empty.could_ever_fit(resources)).collect();
        let any_class = class_fits.iter().any(|fits| *fits);
        if !any_class || labels.is_empty() {
            return any_class;
        }
        let key = feasibility_key(resources, labels);
        if let Some((_, _, feasible)) = self.feasibility_cache.borrow().get(&key) {
            return *feasible;
        }
        let feasible = self.feasible_by_scan(&class_fits, labels);
        let mut cache = self.feasibility_cache.borrow_mut();
        if cache.len() >= FEASIBILITY_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(key, (resources.clone(), labels.to_vec(), feasible));
        feasible
    }

    fn feasible_by_scan(&self, class_fits: &[bool], labels: &[LabelConstraint]) -> bool {
        assert_eq!(class_fits.len(), self.classes.len());
        self.entries
            .values()
            .any(|e| e.node.schedulable && class_fits[e.class as usize] && labels_match(labels, &e.node.labels))
    }

    /// Wait when some schedulable node could ever hold the request, Infeasible otherwise.
    pub(super) fn no_placement(&self, resources: &ResourceSet, labels: &[LabelConstraint]) -> NoPlacement {
        if self.feasible_anywhere(resources, labels) {
            NoPlacement::Wait
        } else {
            NoPlacement::Infeasible
        }
    }

    /// Whether `node` is schedulable, matches `labels` and has room for `req` now.
    pub(super) fn fits_now_on(&self, node: NodeId, req: &ResourceSet, labels: &[LabelConstraint]) -> bool {
        self.entries
            .get(&node)
            .is_some_and(|e| e.node.schedulable && labels_match(labels, &e.node.labels) && e.node.pool.fits_now(req))
    }

    /// Whether `node` has GPUs (false when unknown).
    pub(super) fn has_gpu(&self, node: NodeId) -> bool {
        self.entries.get(&node).is_some_and(|e| self.classes[e.class as usize].has_gpu)
    }

    /// For each node shape with schedulable nodes outside `exclude` (distinct ids): an empty pool
    /// of that shape and how many such nodes there are.
    pub(super) fn schedulable_shapes(&self, exclude: &[NodeId]) -> Vec<(&ResourcePool, usize)> {
        let mut counts: Vec<usize> = self.classes.iter().map(|c| c.schedulable_count).collect();
        for node in exclude {
            if let Some(entry) = self.entries.get(node).filter(|e| e.node.schedulable) {
                let count = &mut counts[entry.class as usize];
                *count = count.checked_sub(1).expect("excluded nodes must be distinct");
            }
        }
        let shapes: Vec<(&ResourcePool, usize)> =
            self.classes.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(c, n)| (&c.empty, n)).collect();
        assert!(shapes.len() <= self.classes.len());
        shapes
    }

    /// The first (lowest-id) node of every bucket of `kinds` with its pool, most utilised first
    /// (ties by id). Nodes in one bucket are interchangeable, so this lists every distinct state.
    pub(super) fn bucket_heads(&self, kinds: NodeKinds) -> Vec<(NodeId, &ResourcePool)> {
        let mut heads: Vec<(u32, NodeId, &ResourcePool)> = Vec::new();
        for &slot in kinds.slots() {
            for (key, ids) in &self.index[slot] {
                let first = *ids.first().expect("buckets are never empty");
                heads.push((key.0, first, &self.entries[&first].node.pool));
            }
        }
        heads.sort_by_key(|(bp, id, _)| (std::cmp::Reverse(*bp), *id));
        assert!(heads.windows(2).all(|w| w[0].0 >= w[1].0));
        heads.into_iter().map(|(_, id, pool)| (id, pool)).collect()
    }

    fn place_hard_affinity(
        &mut self,
        req: &PlacementRequest<'_>,
        node: NodeId,
    ) -> Result<(NodeId, Allocation), NoPlacement> {
        let entry = self.entries.get(&node).ok_or(NoPlacement::Infeasible)?;
        let eligible = entry.node.schedulable && labels_match(req.labels, &entry.node.labels);
        if !eligible || !entry.node.pool.could_ever_fit(req.resources) {
            return Err(NoPlacement::Infeasible);
        }
        let alloc = self.allocate(node, req.resources).ok_or(NoPlacement::Wait)?;
        assert_eq!(&alloc.resources, req.resources);
        Ok((node, alloc))
    }

    fn choose_default(&self, req: &PlacementRequest<'_>, rng: &mut dyn RngCore) -> Option<NodeId> {
        assert!(req.locality.windows(2).all(|w| w[0].1 >= w[1].1), "locality must list most bytes first");
        for &kinds in NodeKinds::passes(req.resources.needs_gpu(), self.config.avoid_gpu_nodes) {
            let local =
                req.locality.iter().map(|(node, _)| *node).find(|node| {
                    kinds.admits(self.has_gpu(*node)) && self.fits_now_on(*node, req.resources, req.labels)
                });
            if local.is_some() {
                return local;
            }
            if let Some(node) = self.choose_hybrid(req, kinds, rng) {
                return Some(node);
            }
        }
        None
    }

    fn choose_hybrid(&self, req: &PlacementRequest<'_>, kinds: NodeKinds, rng: &mut dyn RngCore) -> Option<NodeId> {
        let (threshold_bp, top_k, resources) = (self.spread_threshold_bp, self.config.top_k, req.resources);
        let labelled = |_: NodeId, n: &SchedNode| labels_match(req.labels, &n.labels);
        let mut packs =
            |pool: &ResourcePool| pool.fits_now(resources) && utilisation_bp(pool, Some(resources)) <= threshold_bp;
        let mut candidates = self.walk_candidates(kinds, threshold_bp, true, top_k, &mut packs, &labelled);
        if candidates.is_empty() {
            let mut fits = |pool: &ResourcePool| pool.fits_now(resources);
            candidates = self.walk_candidates(kinds, 0, false, top_k, &mut fits, &labelled);
        }
        assert!(candidates.len() <= top_k);
        pick_uniform(&candidates, rng)
    }

    fn choose_spread(&mut self, req: &PlacementRequest<'_>) -> Option<NodeId> {
        let resources = req.resources;
        let labelled = |_: NodeId, n: &SchedNode| labels_match(req.labels, &n.labels);
        let mut fits = |pool: &ResourcePool| pool.fits_now(resources);
        let after_cursor = self.spread_cursor.map_or(Bound::Unbounded, Bound::Excluded);
        for &kinds in NodeKinds::passes(resources.needs_gpu(), self.config.avoid_gpu_nodes) {
            let mut from_bp = 0;
            while let Some(level_bp) = self.next_level_bp(kinds, from_bp, false) {
                let mut found = Vec::with_capacity(1);
                self.level_candidates(kinds, level_bp, after_cursor, 1, &mut fits, &labelled, &mut found);
                if found.is_empty() {
                    self.level_candidates(kinds, level_bp, Bound::Unbounded, 1, &mut fits, &labelled, &mut found);
                }
                if let Some(&node) = found.first() {
                    self.spread_cursor = Some(node);
                    return Some(node);
                }
                from_bp = level_bp + 1;
            }
        }
        None
    }

    /// The nearest non-empty utilisation level to `from_bp` (inclusive), downwards or upwards.
    fn next_level_bp(&self, kinds: NodeKinds, from_bp: u32, descending: bool) -> Option<u32> {
        assert!(from_bp <= UTILISATION_FULL_BP + 1);
        let mut best: Option<u32> = None;
        for &slot in kinds.slots() {
            let map = &self.index[slot];
            let found = if descending {
                map.range(..level_start(from_bp + 1)).next_back()
            } else {
                map.range(level_start(from_bp)..).next()
            };
            let Some((key, _)) = found else { continue };
            let level = key.0;
            best = Some(best.map_or(level, |b| if descending { b.max(level) } else { b.min(level) }));
        }
        assert!(best.is_none_or(|b| if descending { b <= from_bp } else { b >= from_bp }));
        best
    }

    /// Appends to `out`, until it holds `need`, the nodes of utilisation level `level_bp` whose
    /// bucket passes `bucket_ok` and that pass `node_ok`, by ascending id from `start`.
    #[allow(clippy::too_many_arguments)]
    fn level_candidates(
        &self,
        kinds: NodeKinds,
        level_bp: u32,
        start: Bound<NodeId>,
        need: usize,
        bucket_ok: &mut BucketTest<'_>,
        node_ok: &NodeTest<'_>,
        out: &mut Vec<NodeId>,
    ) {
        let mut streams: SmallVec<[_; 4]> = SmallVec::new();
        for &slot in kinds.slots() {
            let level = level_start(level_bp)..level_start(level_bp + 1);
            for (key, ids) in self.index[slot].range(level) {
                let first = ids.first().expect("buckets are never empty");
                let entry = &self.entries[first];
                assert_eq!(entry.bucket.as_ref(), Some(key), "index and node disagree on the bucket");
                if bucket_ok(&entry.node.pool) {
                    streams.push(ids.range((start, Bound::Unbounded)).peekable());
                }
            }
        }
        while out.len() < need {
            let mut lowest: Option<(usize, NodeId)> = None;
            for (i, stream) in streams.iter_mut().enumerate() {
                if let Some(&&id) = stream.peek() {
                    if lowest.is_none_or(|(_, best)| id < best) {
                        lowest = Some((i, id));
                    }
                }
            }
            let Some((i, id)) = lowest else { break };
            streams[i].next();
            if node_ok(id, &self.entries[&id].node) {
                out.push(id);
            }
        }
    }

    /// Up to `need` nodes, walking utilisation levels from `from_bp` downwards or upwards.
    pub(super) fn walk_candidates(
        &self,
        kinds: NodeKinds,
        from_bp: u32,
        descending: bool,
        need: usize,
        bucket_ok: &mut BucketTest<'_>,
        node_ok: &NodeTest<'_>,
    ) -> Vec<NodeId> {
        assert!(need >= 1);
        let mut out = Vec::with_capacity(need);
        let mut from = Some(from_bp);
        while let Some(from_bp) = from {
            if out.len() >= need {
                break;
            }
            let Some(level_bp) = self.next_level_bp(kinds, from_bp, descending) else { break };
            self.level_candidates(kinds, level_bp, Bound::Unbounded, need, bucket_ok, node_ok, &mut out);
            from = if descending { level_bp.checked_sub(1) } else { Some(level_bp + 1) };
        }
        assert!(out.len() <= need);
        out
    }

    /// The bucket key `node` belongs in, from its pool and GPU mirror.
    fn bucket_key(&self, entry: &Entry) -> BucketKey {
        let (total, available) = (entry.node.pool.total(), entry.node.pool.available());
        let mut free = SmallVec::with_capacity(3 + total.custom.len() + entry.gpu_free.len());
        free.extend([available.cpu.0, available.memory.0, available.gpu.0]);
        for name in total.custom.keys() {
            free.push(available.custom.get(name).map_or(0, |a| a.0.checked_add(1).expect("custom amount overflow")));
        }
        assert!(available.custom.keys().all(|k| total.custom.contains_key(k)), "a node gained a custom resource");
        free.extend_from_slice(&entry.gpu_free);
        let utilisation_bp = utilisation_bp(&entry.node.pool, None);
        assert!(utilisation_bp <= UTILISATION_FULL_BP);
        BucketKey { utilisation_bp, class: entry.class, free }
    }

    fn slot_of(&self, entry: &Entry) -> usize {
        usize::from(self.classes[entry.class as usize].has_gpu)
    }

    fn index_insert(&mut self, node: NodeId) {
        let entry = &self.entries[&node];
        assert!(entry.bucket.is_none(), "node {node} indexed twice");
        assert!(entry.node.schedulable, "only schedulable nodes are indexed");
        let (key, slot) = (self.bucket_key(entry), self.slot_of(entry));
        let at = (key.utilisation_bp, self.buckets.acquire(key));
        let fresh = self.index[slot].entry(at).or_default().insert(node);
        assert!(fresh, "node {node} already in its bucket");
        self.entries.get_mut(&node).expect("known").bucket = Some(at);
    }

    fn index_remove(&mut self, node: NodeId) {
        let entry = self.entries.get_mut(&node).expect("index_remove of an unknown node");
        let Some(key) = entry.bucket.take() else { return };
        let slot = usize::from(self.classes[entry.class as usize].has_gpu);
        let ids = self.index[slot].get_mut(&key).expect("a node's bucket exists");
        assert!(ids.remove(&node), "node {node} missing from its bucket");
        if ids.is_empty() {
            self.index[slot].remove(&key);
        }
        self.buckets.release(key.1);
    }

    fn reindex(&mut self, node: NodeId) {
        if self.entries[&node].bucket.is_some() {
            self.index_remove(node);
            self.index_insert(node);
        }
    }

    /// Asserts that every index agrees with the pools; panics on a bug.
    pub fn check_invariants(&self) {
        let mut nodes_count = vec![0usize; self.classes.len()];
        let mut schedulable_count = vec![0usize; self.classes.len()];
        for (id, entry) in &self.entries {
            entry.node.pool.check_invariants();
            let class = &self.classes[entry.class as usize];
            assert!(entry.node.pool.total() == class.empty.total(), "node {id} is not of its class's shape");
            self.check_gpu_mirror(*id, entry);
            nodes_count[entry.class as usize] += 1;
            if entry.node.schedulable {
                schedulable_count[entry.class as usize] += 1;
                let key = entry.bucket.as_ref().expect("a schedulable node is indexed");
                let fresh = self.bucket_key(entry);
                assert_eq!(key.0, fresh.utilisation_bp, "node {id} is at a stale level");
                assert_eq!(self.buckets.key(key.1), &fresh, "node {id} is in a stale bucket");
                let ids = self.index[self.slot_of(entry)].get(key);
                assert!(ids.is_some_and(|ids| ids.contains(id)), "node {id} missing from its bucket");
            } else {
                assert!(entry.bucket.is_none(), "unschedulable node {id} is indexed");
            }
        }
        for (i, class) in self.classes.iter().enumerate() {
            assert_eq!(class.nodes_count, nodes_count[i], "class {i} node count");
            assert_eq!(class.schedulable_count, schedulable_count[i], "class {i} schedulable count");
        }
        let indexed: usize = self.index.iter().flat_map(|m| m.values()).map(|ids| ids.len()).sum();
        assert_eq!(
            indexed,
            schedulable_count.iter().sum::<usize>(),
            "index holds other nodes than the schedulable ones"
        );
        assert!(self.index.iter().flat_map(|m| m.values()).all(|ids| !ids.is_empty()), "empty bucket kept");
        for (key, ids) in self.index.iter().flat_map(|m| m.iter()) {
            assert_eq!(self.buckets.count(key.1), ids.len(), "bucket {} counts other nodes", key.1);
        }
        let interned = self.buckets.keys.iter().filter(|(_, n)| *n > 0).count();
        assert_eq!(interned, self.buckets.by_key.len(), "interned bucket ids out of sync");
        assert_eq!(self.class_by_total.len(), self.classes.len());
        for (resources, labels, feasible) in self.feasibility_cache.borrow().values() {
            let class_fits: Vec<bool> =
                self.classes.iter().map(|c| c.schedulable_count > 0 && c.empty.could_ever_fit(resources)).collect();
            assert_eq!(*feasible, self.feasible_by_scan(&class_fits, labels), "stale feasibility cache entry");
        }
    }

    /// The GPU mirror must agree with the pool: sums, capacities, and what fits.
    fn check_gpu_mirror(&self, id: NodeId, entry: &Entry) {
        let pool = &entry.node.pool;
        let capacities = gpu_device_capacities(pool.total().gpu);
        assert_eq!(capacities.len(), entry.gpu_free.len(), "node {id}: GPU device count");
        assert!(
            entry.gpu_free.iter().zip(&capacities).all(|(free, cap)| free <= cap),
            "node {id}: GPU device over-free"
        );
        assert_eq!(entry.gpu_free.iter().sum::<u64>(), pool.available().gpu.0, "node {id}: GPU free sum");
        let whole_free = entry.gpu_free.iter().filter(|free| **free >= Amount::SCALE).count() as u64;
        let gpus = |amount: u64| ResourceSet::default().with_gpu(Amount(amount));
        assert!(whole_free == 0 || pool.fits_now(&gpus(whole_free * Amount::SCALE)), "node {id}: whole GPUs");
        assert!(!pool.fits_now(&gpus((whole_free + 1) * Amount::SCALE)), "node {id}: too many whole GPUs");
        let largest = entry.gpu_free.iter().copied().max().unwrap_or(0).min(Amount::SCALE - 1);
        assert!(largest == 0 || pool.fits_now(&gpus(largest)), "node {id}: largest GPU fraction");
        assert!(largest + 1 >= Amount::SCALE || !pool.fits_now(&gpus(largest + 1)), "node {id}: GPU fraction");
    }
}

#[cfg(test)]
mod tests;
