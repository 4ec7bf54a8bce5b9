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
//!   node that has been in its current state longest (first in, first out), and the pick is
//!   uniformly random among the first `top_k` candidates.
//! - [`SchedulingStrategy::Spread`]: the least utilised node that fits, the longest in its state
//!   first. Every allocation or release sends a node to the back of its bucket, so ties rotate
//!   round-robin and SPREAD keeps spreading when every node is equally busy (Ray #23595).
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
//! fixed-point amounts and rounded up. Schedulable nodes sit in *buckets* keyed by
//! `(utilisation, shape class, free amounts of every resource and GPU device)`: nodes that share a
//! bucket are interchangeable for every request except by labels, so one test of a bucket's first
//! node decides the whole bucket. A bucket is a doubly linked list of node slots in arrival order;
//! bucket keys are interned as small ids. Two indices (GPU-less and GPU nodes) map each
//! utilisation level (0..=10,000) to its non-empty buckets, with a two-level bitmap of occupied
//! levels, so the next occupied level above or below any level is found in a few word scans.
//!
//! A decision walks occupied levels from the preferred end, tests each bucket once and merges the
//! fitting buckets' lists by arrival until it has `top_k` candidates. Its cost is O(B + k), where
//! B is the number of buckets visited: a handful for a homogeneous cluster (one bucket per
//! distinct fill level), whatever the number of nodes. Label constraints are checked per node.
//! An allocation or release moves one node between buckets in O(1) (one interning lookup).
//! Feasibility is decided per shape class (distinct node totals), and with label constraints it
//! is cached per request shape until nodes join, leave or change schedulability.
//!
//! A plain request (no labels, locality or custom resources; DEFAULT or SPREAD) that fitted
//! nowhere is remembered with the *capacity epoch*, which every release and every change of
//! membership or schedulability advances. While the epoch stands, the same shape waits at once;
//! after a single release, only the released node can have room, so it alone is tested, and it is
//! the policy's choice when it fits (the only candidate). A queue blocked behind a full cluster
//! thus costs O(1) per release instead of a walk.
//!
//! Hash maps are for lookup only (node id to slot, bucket key to id): every walk follows lists
//! and bitmaps whose order the inputs alone decide, so the same inputs give the same decisions.

use crate::ids::NodeId;
use crate::proto::{LabelConstraint, Labels, SchedulingStrategy};
use crate::resources::{Allocation, Amount, ResourcePool, ResourceSet, ResourceSum};
use rand_core::RngCore;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// Utilisation of a full node, in basis points (parts per 10,000).
pub const UTILISATION_FULL_BP: u32 = 10_000;

/// How many request shapes with label constraints the feasibility cache remembers.
const FEASIBILITY_CACHE_ENTRIES_MAX: usize = 64;

/// The scheduler's tunables.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchedNode {
    /// Its resources and what is allocated from them.
    pub pool: ResourcePool,
    /// The labels it registered with.
    pub labels: Labels,
    /// Whether it takes new work (false while draining).
    pub schedulable: bool,
}

/// Why a request was not placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

/// No node slot or bucket: the end of a list.
const NIL: u32 = u32::MAX;

/// Cached bucket moves kept (beyond four per bucket) before the cache is cleared.
const MOVES_MAX: usize = 4096;

/// Bucket ids kept interned while empty, beyond which empty buckets are forgotten.
const EMPTY_BUCKETS_SLACK: usize = 64;

/// A bucket of interchangeable nodes: a FIFO list of node slots, oldest arrival first.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Bucket {
    key: BucketKey,
    /// Which index it belongs to: 0 for GPU-less nodes, 1 for GPU nodes.
    kind: usize,
    first: u32,
    last: u32,
    len: u32,
    /// Whether the id is free for reuse (the key is stale).
    free: bool,
    /// The last plain test of this bucket and its answer (a bucket's key never changes while it
    /// is interned, so the answer holds until the id is freed).
    memo: Cell<Option<(PlainTest, bool)>>,
}

/// The amounts of a request without custom resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PlainShape {
    cpu: u64,
    memory: u64,
    gpu: u64,
}

impl PlainShape {
    fn of(req: &ResourceSet) -> Option<PlainShape> {
        req.custom.is_empty().then_some(PlainShape { cpu: req.cpu.0, memory: req.memory.0, gpu: req.gpu.0 })
    }
}

/// A bucket test that depends on the request's amounts alone: does it fit, and does the node's
/// utilisation stay at or under `max_bp` after placing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PlainTest {
    cpu: u64,
    memory: u64,
    gpu: u64,
    max_bp: u32,
}

/// A change of a node's free amounts that moves it between buckets predictably: no GPU device
/// and no custom resource involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Move {
    from: u32,
    cpu: u64,
    memory: u64,
    gpu: u64,
    /// An allocation (true) or a release (false).
    allocated: bool,
}

impl Move {
    /// The amounts of `alloc` when a move can be cached for them.
    fn of(alloc: &Allocation, allocated: bool) -> Option<(u64, u64, u64, bool)> {
        let r = &alloc.resources;
        (alloc.gpus.is_empty() && r.gpu.0 == 0 && r.custom.is_empty())
            .then_some((r.cpu.0, r.memory.0, r.gpu.0, allocated))
    }
}

/// Non-empty utilisation levels of one index, and the non-empty buckets at each level.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Levels {
    /// Bit `l` is set exactly when level `l` holds a non-empty bucket.
    occupied: Vec<u64>,
    /// Bit `w` is set exactly when word `w` of `occupied` is not zero.
    summary: Vec<u64>,
    /// Per level: its non-empty bucket ids, in the order they gained a node.
    buckets: Vec<SmallVec<[u32; 2]>>,
}

/// The highest set bit of `words` at or below bit `at`.
fn last_set_at_or_below(words: &[u64], at: usize) -> Option<usize> {
    let word = at / 64;
    let bits = words[word] & (u64::MAX >> (63 - at % 64));
    if bits != 0 {
        return Some(word * 64 + 63 - bits.leading_zeros() as usize);
    }
    (0..word).rev().find(|&w| words[w] != 0).map(|w| w * 64 + 63 - words[w].leading_zeros() as usize)
}

/// The lowest set bit of `words` at or above bit `at`.
fn first_set_at_or_above(words: &[u64], at: usize) -> Option<usize> {
    let word = at / 64;
    if word >= words.len() {
        return None;
    }
    let bits = words[word] & (u64::MAX << (at % 64));
    if bits != 0 {
        return Some(word * 64 + bits.trailing_zeros() as usize);
    }
    (word + 1..words.len()).find(|&w| words[w] != 0).map(|w| w * 64 + words[w].trailing_zeros() as usize)
}

impl Levels {
    fn new() -> Levels {
        let levels = UTILISATION_FULL_BP as usize + 1;
        let words = levels.div_ceil(64);
        Levels {
            occupied: vec![0; words],
            summary: vec![0; words.div_ceil(64)],
            buckets: vec![SmallVec::new(); levels],
        }
    }

    fn add(&mut self, level: u32, bucket: u32) {
        let l = level as usize;
        assert!(!self.buckets[l].contains(&bucket), "bucket {bucket} listed twice at level {level}");
        self.buckets[l].push(bucket);
        self.occupied[l / 64] |= 1 << (l % 64);
        self.summary[l / 4096] |= 1 << (l / 64 % 64);
    }

    fn remove(&mut self, level: u32, bucket: u32) {
        let l = level as usize;
        let at = self.buckets[l].iter().position(|b| *b == bucket).expect("an emptied bucket is listed at its level");
        self.buckets[l].remove(at);
        if self.buckets[l].is_empty() {
            self.occupied[l / 64] &= !(1 << (l % 64));
            if self.occupied[l / 64] == 0 {
                self.summary[l / 4096] &= !(1 << (l / 64 % 64));
            }
        }
    }

    /// The highest occupied level at or below `level`.
    fn at_or_below(&self, level: u32) -> Option<u32> {
        let l = level.min(UTILISATION_FULL_BP) as usize;
        let word = l / 64;
        let bits = self.occupied[word] & (u64::MAX >> (63 - l % 64));
        if bits != 0 {
            return Some((word * 64 + 63 - bits.leading_zeros() as usize) as u32);
        }
        let below = last_set_at_or_below(&self.summary, word.checked_sub(1)?)?;
        Some((below * 64 + 63 - self.occupied[below].leading_zeros() as usize) as u32)
    }

    /// The lowest occupied level at or above `level`.
    fn at_or_above(&self, level: u32) -> Option<u32> {
        let l = level as usize;
        if l > UTILISATION_FULL_BP as usize {
            return None;
        }
        let word = l / 64;
        let bits = self.occupied[word] & (u64::MAX << (l % 64));
        if bits != 0 {
            return Some((word * 64 + bits.trailing_zeros() as usize) as u32);
        }
        let above = first_set_at_or_above(&self.summary, word + 1)?;
        Some((above * 64 + self.occupied[above].trailing_zeros() as usize) as u32)
    }
}

/// Nodes of one shape class share their totals (and so their GPU device layout).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct NodeClass {
    /// An empty pool with the class's totals, for feasibility tests.
    empty: ResourcePool,
    has_gpu: bool,
    nodes_count: usize,
    schedulable_count: usize,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    id: NodeId,
    node: SchedNode,
    class: u32,
    /// Free amount of each GPU device, mirrored from the allocations (the pool keeps it private).
    gpu_free: Vec<u64>,
    /// Some exactly while the node is schedulable and indexed.
    bucket: Option<u32>,
    /// When it entered its bucket (a counter shared by every bucket): walks merge buckets of one
    /// level by this stamp, oldest first.
    arrived: u64,
    /// Neighbours in its bucket's list (slots, [`NIL`] at the ends).
    prev: u32,
    next: u32,
}

/// A total or a request as an ordered key.
type ShapeKey = (u64, u64, u64, Vec<(String, u64)>);
/// A request shape with its label constraints, as an ordered key.
type FeasibilityKey = (ShapeKey, Vec<(u8, String, Vec<String>)>);
/// Cached feasibility per request shape; values keep the request so invariant checks can redo them.
type FeasibilityCache = BTreeMap<FeasibilityKey, (ResourceSet, Vec<LabelConstraint>, bool)>;

/// Which of the two indices a walk visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Nodes a walk found, in the order it found them.
pub(super) type Candidates = SmallVec<[NodeId; 4]>;

/// A node's "bucket test": whether a bucket's representative pool qualifies.
pub(super) type BucketTest<'t> = dyn FnMut(&ResourcePool) -> bool + 't;

/// How a walk tests buckets: a plain test of amounts (remembered per bucket), or any test.
pub(super) enum Test<'a, 't> {
    /// The request fits and leaves utilisation at or under `max_bp`.
    Plain(&'a ResourceSet, u32),
    /// Any test of a bucket's representative pool.
    Custom(&'a mut BucketTest<'t>),
}
/// A per-node test (labels, exclusions).
pub(super) type NodeTest<'t> = dyn Fn(NodeId, &SchedNode) -> bool + 't;

/// The cluster's resource view and scheduling policy. See the [module docs](self).
///
/// Mutators: [`add_node`](Self::add_node), [`remove_node`](Self::remove_node),
/// [`set_schedulable`](Self::set_schedulable), [`allocate`](Self::allocate),
/// [`release`](Self::release). Decisions: [`schedule`](Self::schedule),
/// [`reserve_bundles`](Self::reserve_bundles). Getters: [`node`](Self::node),
/// [`nodes`](Self::nodes), [`feasible_anywhere`](Self::feasible_anywhere).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    config: SchedulerConfig,
    spread_threshold_bp: u32,
    /// Lookup only; listings sort by id.
    slot_of: FxHashMap<NodeId, u32>,
    /// Node entries by slot; `None` for a free slot.
    slots: Vec<Option<Entry>>,
    free_slots: Vec<u32>,
    classes: Vec<NodeClass>,
    class_by_total: BTreeMap<ShapeKey, u32>,
    /// Buckets by id; ids are interned from keys and kept while empty, up to a slack.
    buckets: Vec<Bucket>,
    bucket_ids: FxHashMap<BucketKey, u32>,
    free_buckets: Vec<u32>,
    empty_buckets: usize,
    /// Occupied utilisation levels: `[GPU-less, GPU]`.
    levels: [Levels; 2],
    /// The next arrival stamp.
    arrivals: u64,
    /// Bumped by every change that can make room or change feasibility: a release, a node
    /// joining, leaving or changing schedulability. Allocations only take room.
    epoch: u64,
    /// The slot of the node whose release made the current epoch (`None` when another change
    /// made it).
    released_at: Option<u32>,
    /// A plain request shape that fitted nowhere, and the epoch when that was found.
    blocked: Option<(PlainShape, u64)>,
    /// How many times empty bucket ids were freed: a move is cached only when no sweep happened
    /// while it was made (a swept id may be reused at once, for another key).
    sweeps: u64,
    /// Where an allocation or release of a GPU-less, custom-free shape takes a node of a given
    /// bucket: the new key follows from the old key and the amounts alone. Cleared when bucket
    /// ids are freed.
    moves: FxHashMap<Move, u32>,
    /// Feasibility of request shapes with label constraints; cleared when nodes join, leave or
    /// change schedulability.
    feasibility_cache: RefCell<FeasibilityCache>,
    /// What the schedulable nodes have free, summed: a group that asks for more cannot be
    /// reserved now, whatever the layout (see `reserve_bundles`). Not in snapshots (their
    /// layout stays as it was): `None` after a load, until first needed.
    #[serde(skip)]
    schedulable_free: Option<ResourceSum>,
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
    let used = (total - available).checked_add(extra);
    match used.and_then(|u| u.checked_mul(u64::from(UTILISATION_FULL_BP))) {
        Some(scaled) => u128::from(scaled.div_ceil(total)),
        None => {
            let used = u128::from(total - available) + u128::from(extra);
            (used * u128::from(UTILISATION_FULL_BP)).div_ceil(u128::from(total))
        }
    }
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
            slot_of: FxHashMap::default(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            classes: Vec::new(),
            class_by_total: BTreeMap::new(),
            buckets: Vec::new(),
            bucket_ids: FxHashMap::default(),
            free_buckets: Vec::new(),
            empty_buckets: 0,
            levels: [Levels::new(), Levels::new()],
            arrivals: 0,
            epoch: 0,
            released_at: None,
            blocked: None,
            sweeps: 0,
            moves: FxHashMap::default(),
            feasibility_cache: RefCell::new(BTreeMap::new()),
            schedulable_free: Some(ResourceSum::default()),
        }
    }

    /// What the schedulable nodes have free, summed (worked out afresh once after a load).
    pub(super) fn schedulable_free(&mut self) -> &ResourceSum {
        if self.schedulable_free.is_none() {
            self.schedulable_free = Some(self.free_summed());
        }
        self.schedulable_free.as_ref().expect("just set")
    }

    fn free_summed(&self) -> ResourceSum {
        let mut free = ResourceSum::default();
        for (_, entry) in self.entries().filter(|(_, e)| e.node.schedulable) {
            free.add(entry.node.pool.available());
        }
        free
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn entry(&self, node: NodeId) -> Option<&Entry> {
        self.slot_of.get(&node).map(|&slot| self.at(slot))
    }

    fn at(&self, slot: u32) -> &Entry {
        self.slots[slot as usize].as_ref().expect("a live slot")
    }

    fn at_mut(&mut self, slot: u32) -> &mut Entry {
        self.slots[slot as usize].as_mut().expect("a live slot")
    }

    /// Every live entry, in slot order (not id order: only for order-independent uses).
    fn entries(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.slots.iter().enumerate().filter_map(|(slot, e)| e.as_ref().map(|e| (slot as u32, e)))
    }

    /// Registers a schedulable node. Panics if `node` is already present.
    pub fn add_node(&mut self, node: NodeId, total: ResourceSet, labels: Labels) {
        assert!(!self.slot_of.contains_key(&node), "node {node} added twice");
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
        if let Some(free) = &mut self.schedulable_free {
            free.add(&total);
        }
        let pool = ResourcePool::new(total);
        let node_state = SchedNode { pool, labels, schedulable: true };
        let entry =
            Entry { id: node, node: node_state, class, gpu_free, bucket: None, arrived: 0, prev: NIL, next: NIL };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                assert!(self.slots[slot as usize].is_none(), "a free slot is in use");
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).expect("node slots fit in u32")
            }
        };
        self.slot_of.insert(node, slot);
        let class = &mut self.classes[class as usize];
        class.nodes_count += 1;
        class.schedulable_count += 1;
        self.index_insert(slot);
        self.feasibility_cache.get_mut().clear();
        self.new_epoch(None);
        assert!(self.at(slot).bucket.is_some());
    }

    /// Forgets a node (it died or left) and returns what the view knew of it.
    pub fn remove_node(&mut self, node: NodeId) -> Option<SchedNode> {
        let slot = *self.slot_of.get(&node)?;
        self.index_remove(slot);
        self.slot_of.remove(&node);
        let entry = self.slots[slot as usize].take().expect("a live slot");
        self.free_slots.push(slot);
        let class = &mut self.classes[entry.class as usize];
        class.nodes_count = class.nodes_count.checked_sub(1).expect("class node count underflow");
        if entry.node.schedulable {
            class.schedulable_count = class.schedulable_count.checked_sub(1).expect("schedulable count underflow");
            if let Some(free) = &mut self.schedulable_free {
                free.sub(entry.node.pool.available());
            }
        }
        self.feasibility_cache.get_mut().clear();
        self.new_epoch(None);
        assert!(!self.slot_of.contains_key(&node));
        Some(entry.node)
    }

    /// Marks a node as taking new work or not (draining). Unknown nodes are ignored.
    pub fn set_schedulable(&mut self, node: NodeId, schedulable: bool) {
        let Some(&slot) = self.slot_of.get(&node) else { return };
        let entry = self.at_mut(slot);
        if entry.node.schedulable == schedulable {
            return;
        }
        entry.node.schedulable = schedulable;
        let available = entry.node.pool.available().clone();
        match (&mut self.schedulable_free, schedulable) {
            (Some(free), true) => free.add(&available),
            (Some(free), false) => free.sub(&available),
            (None, _) => {}
        }
        let entry = self.at(slot);
        let class = entry.class as usize;
        let class = &mut self.classes[class];
        if schedulable {
            class.schedulable_count += 1;
            self.index_insert(slot);
        } else {
            class.schedulable_count = class.schedulable_count.checked_sub(1).expect("schedulable count underflow");
            self.index_remove(slot);
        }
        self.feasibility_cache.get_mut().clear();
        self.new_epoch(None);
        assert_eq!(self.at(slot).bucket.is_some(), schedulable);
    }

    /// A node, if known.
    pub fn node(&self, node: NodeId) -> Option<&SchedNode> {
        self.entry(node).map(|e| &e.node)
    }

    /// Every known node, ascending by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &SchedNode)> {
        let mut ids: Vec<(NodeId, u32)> = self.slot_of.iter().map(|(id, slot)| (*id, *slot)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(id, slot)| (id, &self.at(slot).node))
    }

    /// How many nodes are known (schedulable or not).
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
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
        // A request without labels, locality or custom resources, placed by DEFAULT or SPREAD, fits
        // on a node exactly when any node could take it: remember when it fitted nowhere.
        let plain = match req.strategy {
            SchedulingStrategy::Default | SchedulingStrategy::Spread
                if req.labels.is_empty() && req.locality.is_empty() =>
            {
                PlainShape::of(req.resources)
            }
            _ => None,
        };
        if let Some(answer) = plain.and_then(|shape| self.blocked_answer(shape, req)) {
            let node = answer?;
            let alloc = self.allocate(node, req.resources).expect("the released node fits the request");
            return Ok((node, alloc));
        }
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
            let why = self.no_placement(req.resources, req.labels);
            if let (Some(shape), NoPlacement::Wait) = (plain, why) {
                self.blocked = Some((shape, self.epoch));
            }
            return Err(why);
        };
        // Checked in debug builds (every test): the policy only chooses eligible nodes that fit.
        debug_assert!(self.fits_now_on(node, req.resources, req.labels), "the chosen node must fit the request");
        let alloc = self.allocate(node, req.resources).expect("the chosen node fits the request");
        debug_assert_eq!(&alloc.resources, req.resources);
        Ok((node, alloc))
    }

    /// Allocates `req` directly on `node` (schedulable or not); `None` if the node is unknown or
    /// `req` does not fit there now. The node goes to the back of its new bucket.
    pub fn allocate(&mut self, node: NodeId, req: &ResourceSet) -> Option<Allocation> {
        let slot = *self.slot_of.get(&node)?;
        let entry = self.at_mut(slot);
        let alloc = entry.node.pool.try_allocate(req)?;
        for (device, amount) in &alloc.gpus {
            let free = &mut entry.gpu_free[*device as usize];
            *free = free.checked_sub(amount.0).expect("GPU device mirror underflow");
        }
        assert_eq!(entry.gpu_free.iter().sum::<u64>(), entry.node.pool.available().gpu.0);
        if entry.node.schedulable {
            if let Some(free) = self.schedulable_free.as_mut() {
                free.sub(&alloc.resources);
            }
        }
        self.reindex(slot, Move::of(&alloc, true));
        Some(alloc)
    }

    /// Gives back an allocation made on `node`; does nothing if the node is unknown (it died).
    pub fn release(&mut self, node: NodeId, alloc: &Allocation) {
        let Some(&slot) = self.slot_of.get(&node) else { return };
        let entry = self.at_mut(slot);
        entry.node.pool.release(alloc);
        let capacities =
            if alloc.gpus.is_empty() { Vec::new() } else { gpu_device_capacities(entry.node.pool.total().gpu) };
        for (device, amount) in &alloc.gpus {
            let free = &mut entry.gpu_free[*device as usize];
            *free += amount.0;
            assert!(*free <= capacities[*device as usize], "GPU device {device} over-released");
        }
        assert_eq!(entry.gpu_free.iter().sum::<u64>(), entry.node.pool.available().gpu.0);
        if entry.node.schedulable {
            if let Some(free) = self.schedulable_free.as_mut() {
                free.add(&alloc.resources);
            }
        }
        self.reindex(slot, Move::of(alloc, false));
        self.new_epoch(Some(slot));
    }

    /// Something changed that can make room (`released` names the node, when a release did).
    fn new_epoch(&mut self, released: Option<u32>) {
        self.epoch += 1;
        self.released_at = released;
    }

    /// What the memo of blocked shapes says of a plain request: `Some(Err(Wait))` when nothing
    /// can have made room since it fitted nowhere; `Some(Ok(node))` when one release made the
    /// only room there may be and the request fits there (the policy's choice, since no other
    /// node fits); `None` when a full decision is needed.
    fn blocked_answer(&mut self, shape: PlainShape, req: &PlacementRequest<'_>) -> Option<Result<NodeId, NoPlacement>> {
        let (blocked, at) = self.blocked?;
        if blocked != shape {
            return None;
        }
        if at == self.epoch {
            return Some(Err(NoPlacement::Wait));
        }
        let slot = self.released_at.filter(|_| at + 1 == self.epoch)?;
        let entry = self.at(slot);
        if entry.node.schedulable && entry.node.pool.fits_now(req.resources) {
            return Some(Ok(entry.id));
        }
        // The one node that gained room cannot take it either: still nothing fits.
        self.blocked = Some((shape, self.epoch));
        Some(Err(NoPlacement::Wait))
    }

    /// Whether some schedulable node matching `labels` could hold `resources` when empty.
    pub fn feasible_anywhere(&self, resources: &ResourceSet, labels: &[LabelConstraint]) -> bool {
        if labels.is_empty() {
            return self.classes.iter().any(|c| c.schedulable_count > 0 && c.empty.could_ever_fit(resources));
        }
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
        self.entries()
            .any(|(_, e)| e.node.schedulable && class_fits[e.class as usize] && labels_match(labels, &e.node.labels))
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
        self.entry(node)
            .is_some_and(|e| e.node.schedulable && labels_match(labels, &e.node.labels) && e.node.pool.fits_now(req))
    }

    /// Whether `node` has GPUs (false when unknown).
    pub(super) fn has_gpu(&self, node: NodeId) -> bool {
        self.entry(node).is_some_and(|e| self.classes[e.class as usize].has_gpu)
    }

    /// For each node shape with schedulable nodes outside `exclude` (distinct ids): an empty pool
    /// of that shape and how many such nodes there are.
    pub(super) fn schedulable_shapes(&self, exclude: &[NodeId]) -> Vec<(&ResourcePool, usize)> {
        let mut counts: Vec<usize> = self.classes.iter().map(|c| c.schedulable_count).collect();
        for node in exclude {
            if let Some(entry) = self.entry(*node).filter(|e| e.node.schedulable) {
                let count = &mut counts[entry.class as usize];
                *count = count.checked_sub(1).expect("excluded nodes must be distinct");
            }
        }
        let shapes: Vec<(&ResourcePool, usize)> =
            self.classes.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(c, n)| (&c.empty, n)).collect();
        assert!(shapes.len() <= self.classes.len());
        shapes
    }

    /// The first node of every bucket of `kinds` with its pool, most utilised first (ties by id).
    /// Nodes in one bucket are interchangeable, so this lists every distinct state.
    pub(super) fn bucket_heads(&self, kinds: NodeKinds) -> Vec<(NodeId, &ResourcePool)> {
        let mut heads: Vec<(u32, NodeId, &ResourcePool)> = Vec::new();
        for &kind in kinds.slots() {
            let levels = &self.levels[kind];
            let mut from = Some(UTILISATION_FULL_BP);
            while let Some(level) = from.and_then(|l| levels.at_or_below(l)) {
                for &bucket in &levels.buckets[level as usize] {
                    let first = self.at(self.buckets[bucket as usize].first);
                    heads.push((level, first.id, &first.node.pool));
                }
                from = level.checked_sub(1);
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
        let entry = self.entry(node).ok_or(NoPlacement::Infeasible)?;
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
        let labelled = (!req.labels.is_empty()).then_some(&labelled as &NodeTest<'_>);
        let packs = Test::Plain(resources, threshold_bp);
        let mut candidates = self.walk(kinds, threshold_bp, true, top_k, packs, labelled);
        if candidates.is_empty() {
            let fits = Test::Plain(resources, UTILISATION_FULL_BP);
            candidates = self.walk(kinds, 0, false, top_k, fits, labelled);
        }
        assert!(candidates.len() <= top_k);
        pick_uniform(&candidates, rng)
    }

    /// The least utilised node that fits, the longest in its state first: since an allocation
    /// sends a node to the back of its bucket, ties rotate round-robin.
    fn choose_spread(&self, req: &PlacementRequest<'_>) -> Option<NodeId> {
        let resources = req.resources;
        let labelled = |_: NodeId, n: &SchedNode| labels_match(req.labels, &n.labels);
        let labelled = (!req.labels.is_empty()).then_some(&labelled as &NodeTest<'_>);
        NodeKinds::passes(resources.needs_gpu(), self.config.avoid_gpu_nodes).iter().find_map(|&kinds| {
            let fits = Test::Plain(resources, UTILISATION_FULL_BP);
            self.walk(kinds, 0, false, 1, fits, labelled).first().copied()
        })
    }

    /// The nearest non-empty utilisation level to `from_bp` (inclusive), downwards or upwards.
    fn next_level_bp(&self, kinds: NodeKinds, from_bp: u32, descending: bool) -> Option<u32> {
        assert!(from_bp <= UTILISATION_FULL_BP + 1);
        let mut best: Option<u32> = None;
        for &kind in kinds.slots() {
            let levels = &self.levels[kind];
            let found = if descending { levels.at_or_below(from_bp) } else { levels.at_or_above(from_bp) };
            let Some(level) = found else { continue };
            best = Some(best.map_or(level, |b| if descending { b.max(level) } else { b.min(level) }));
        }
        debug_assert!(best.is_none_or(|b| if descending { b <= from_bp } else { b >= from_bp }));
        best
    }

    /// Appends to `out`, until it holds `need`, the nodes of utilisation level `level_bp` whose
    /// bucket passes `bucket_ok` and that pass `node_ok`, the longest in their state first.
    fn level_candidates(
        &self,
        kinds: NodeKinds,
        level_bp: u32,
        need: usize,
        test: &mut Test<'_, '_>,
        node_ok: Option<&NodeTest<'_>>,
        out: &mut Candidates,
    ) {
        let node_ok = |entry: &Entry| node_ok.is_none_or(|ok| ok(entry.id, &entry.node));
        // One cursor (a slot) per qualifying bucket; each bucket's list is in arrival order.
        let mut cursors: SmallVec<[u32; 4]> = SmallVec::new();
        for &kind in kinds.slots() {
            for &id in &self.levels[kind].buckets[level_bp as usize] {
                let bucket = &self.buckets[id as usize];
                debug_assert!(bucket.len > 0 && bucket.key.utilisation_bp == level_bp, "bucket {id} misfiled");
                if self.passes(bucket, test) {
                    cursors.push(bucket.first);
                }
            }
        }
        if let [only] = cursors[..] {
            // One stream: no merge.
            let mut slot = only;
            while slot != NIL && out.len() < need {
                let entry = self.at(slot);
                if node_ok(entry) {
                    out.push(entry.id);
                }
                slot = entry.next;
            }
            return;
        }
        while out.len() < need {
            let mut oldest: Option<(usize, u64)> = None;
            for (i, &slot) in cursors.iter().enumerate() {
                if slot != NIL {
                    let arrived = self.at(slot).arrived;
                    if oldest.is_none_or(|(_, best)| arrived < best) {
                        oldest = Some((i, arrived));
                    }
                }
            }
            let Some((i, _)) = oldest else { break };
            let entry = self.at(cursors[i]);
            cursors[i] = entry.next;
            if node_ok(entry) {
                out.push(entry.id);
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
    ) -> Candidates {
        self.walk(kinds, from_bp, descending, need, Test::Custom(bucket_ok), Some(node_ok))
    }

    /// Whether a bucket passes `test` (a plain test is answered from the bucket's memo when it
    /// asked the same last time).
    fn passes(&self, bucket: &Bucket, test: &mut Test<'_, '_>) -> bool {
        let pool = &self.at(bucket.first).node.pool;
        match test {
            Test::Custom(bucket_ok) => bucket_ok(pool),
            Test::Plain(req, max_bp) => {
                let compute = || pool.fits_now(req) && utilisation_bp(pool, Some(req)) <= *max_bp;
                if !req.custom.is_empty() {
                    return compute();
                }
                let asked = PlainTest { cpu: req.cpu.0, memory: req.memory.0, gpu: req.gpu.0, max_bp: *max_bp };
                match bucket.memo.get() {
                    Some((last, answer)) if last == asked => answer,
                    _ => {
                        let answer = compute();
                        bucket.memo.set(Some((asked, answer)));
                        answer
                    }
                }
            }
        }
    }

    /// Up to `need` nodes, walking utilisation levels from `from_bp` downwards or upwards.
    fn walk(
        &self,
        kinds: NodeKinds,
        from_bp: u32,
        descending: bool,
        need: usize,
        mut test: Test<'_, '_>,
        node_ok: Option<&NodeTest<'_>>,
    ) -> Candidates {
        assert!(need >= 1);
        let mut out = Candidates::new();
        let mut from = Some(from_bp);
        while let Some(from_bp) = from {
            if out.len() >= need {
                break;
            }
            let Some(level_bp) = self.next_level_bp(kinds, from_bp, descending) else { break };
            self.level_candidates(kinds, level_bp, need, &mut test, node_ok, &mut out);
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

    fn kind_of(&self, entry: &Entry) -> usize {
        usize::from(self.classes[entry.class as usize].has_gpu)
    }

    /// The id of `key`'s bucket, interned on first use.
    fn intern(&mut self, key: BucketKey, kind: usize) -> u32 {
        if let Some(&id) = self.bucket_ids.get(&key) {
            return id;
        }
        let bucket =
            Bucket { key: key.clone(), kind, first: NIL, last: NIL, len: 0, free: false, memo: Cell::new(None) };
        let id = match self.free_buckets.pop() {
            Some(id) => {
                assert!(self.buckets[id as usize].free, "a reused bucket id is in use");
                self.buckets[id as usize] = bucket;
                id
            }
            None => {
                self.buckets.push(bucket);
                u32::try_from(self.buckets.len() - 1).expect("bucket ids fit in u32")
            }
        };
        self.bucket_ids.insert(key, id);
        self.empty_buckets += 1;
        id
    }

    /// Files a schedulable node at the back of its bucket.
    fn index_insert(&mut self, slot: u32) {
        let entry = self.at(slot);
        assert!(entry.bucket.is_none(), "node {} indexed twice", entry.id);
        assert!(entry.node.schedulable, "only schedulable nodes are indexed");
        let (key, kind) = (self.bucket_key(entry), self.kind_of(entry));
        let id = self.intern(key, kind);
        self.index_insert_at(slot, id);
    }

    /// Files a schedulable node at the back of bucket `id` (which must be its bucket).
    fn index_insert_at(&mut self, slot: u32, id: u32) {
        assert!(self.at(slot).bucket.is_none(), "node {} indexed twice", self.at(slot).id);
        let bucket = &mut self.buckets[id as usize];
        assert!(!bucket.free, "filing a node in a free bucket");
        let (level, kind) = (bucket.key.utilisation_bp, bucket.kind);
        let last = bucket.last;
        bucket.last = slot;
        if last == NIL {
            bucket.first = slot;
        }
        bucket.len += 1;
        if bucket.len == 1 {
            self.empty_buckets -= 1;
            self.levels[kind].add(level, id);
        } else {
            self.at_mut(last).next = slot;
        }
        self.arrivals += 1;
        let arrived = self.arrivals;
        let entry = self.at_mut(slot);
        (entry.bucket, entry.arrived, entry.prev, entry.next) = (Some(id), arrived, last, NIL);
    }

    /// Takes a node out of its bucket (if it is in one).
    fn index_remove(&mut self, slot: u32) {
        let entry = self.at_mut(slot);
        let Some(id) = entry.bucket.take() else { return };
        let (prev, next) = (entry.prev, entry.next);
        (entry.prev, entry.next) = (NIL, NIL);
        if prev != NIL {
            self.at_mut(prev).next = next;
        }
        if next != NIL {
            self.at_mut(next).prev = prev;
        }
        let bucket = &mut self.buckets[id as usize];
        if bucket.first == slot {
            bucket.first = next;
        }
        if bucket.last == slot {
            bucket.last = prev;
        }
        bucket.len = bucket.len.checked_sub(1).expect("bucket length underflow");
        if bucket.len == 0 {
            let (level, kind) = (bucket.key.utilisation_bp, bucket.kind);
            self.levels[kind].remove(level, id);
            self.empty_buckets += 1;
            if self.empty_buckets > EMPTY_BUCKETS_SLACK + 2 * self.slot_of.len() {
                self.forget_empty_buckets();
            }
        }
    }

    /// Frees the ids of every empty bucket (amortised: only when too many are kept).
    fn forget_empty_buckets(&mut self) {
        for (id, bucket) in self.buckets.iter_mut().enumerate() {
            if bucket.len == 0 && !bucket.free {
                assert_eq!(self.bucket_ids.remove(&bucket.key), Some(id as u32), "bucket interning out of sync");
                bucket.free = true;
                self.free_buckets.push(id as u32);
            }
        }
        self.empty_buckets = 0;
        self.sweeps += 1;
        self.moves.clear();
    }

    /// Re-files a node after its free amounts changed by `change`: at the back of its (new)
    /// bucket, found from the move cache when the change is one it can describe.
    fn reindex(&mut self, slot: u32, change: Option<(u64, u64, u64, bool)>) {
        let Some(from) = self.at(slot).bucket else { return };
        let Some((cpu, memory, gpu, allocated)) = change else {
            self.index_remove(slot);
            self.index_insert(slot);
            return;
        };
        let step = Move { from, cpu, memory, gpu, allocated };
        match self.moves.get(&step) {
            Some(&to) => {
                self.index_remove(slot);
                // The removal may have swept empty buckets, `to` among them.
                if self.buckets[to as usize].free {
                    self.index_insert(slot);
                } else {
                    self.index_insert_at(slot, to);
                }
            }
            None => {
                let sweeps = self.sweeps;
                self.index_remove(slot);
                self.index_insert(slot);
                let to = self.at(slot).bucket.expect("re-filed");
                // A sweep during the removal may have freed `from` and handed its id to `to`'s key:
                // the move would then be cached under an id that means another bucket.
                if self.sweeps == sweeps {
                    if self.moves.len() >= MOVES_MAX + 4 * self.buckets.len() {
                        self.moves.clear();
                    }
                    self.moves.insert(step, to);
                }
            }
        }
    }

    /// Asserts that every index agrees with the pools; panics on a bug.
    pub fn check_invariants(&self) {
        let mut nodes_count = vec![0usize; self.classes.len()];
        let mut schedulable_count = vec![0usize; self.classes.len()];
        assert_eq!(self.entries().count(), self.slot_of.len(), "slots and ids disagree");
        for (slot, entry) in self.entries() {
            let id = entry.id;
            assert_eq!(self.slot_of.get(&id), Some(&slot), "node {id} is not at its slot");
            entry.node.pool.check_invariants();
            let class = &self.classes[entry.class as usize];
            assert!(entry.node.pool.total() == class.empty.total(), "node {id} is not of its class's shape");
            self.check_gpu_mirror(id, entry);
            nodes_count[entry.class as usize] += 1;
            if entry.node.schedulable {
                schedulable_count[entry.class as usize] += 1;
                let bucket = &self.buckets[entry.bucket.expect("a schedulable node is indexed") as usize];
                assert!(!bucket.free && bucket.len > 0, "node {id} is in a free bucket");
                assert_eq!(bucket.key, self.bucket_key(entry), "node {id} is in a stale bucket");
                assert_eq!(bucket.kind, self.kind_of(entry), "node {id} is in the wrong index");
            } else {
                assert!(entry.bucket.is_none(), "unschedulable node {id} is indexed");
            }
        }
        if let Some(free) = &self.schedulable_free {
            assert_eq!(*free, self.free_summed(), "the schedulable nodes' free sum is stale");
        }
        for (i, class) in self.classes.iter().enumerate() {
            assert_eq!(class.nodes_count, nodes_count[i], "class {i} node count");
            assert_eq!(class.schedulable_count, schedulable_count[i], "class {i} schedulable count");
        }
        let mut indexed = 0;
        let mut empty = 0;
        for (id, bucket) in self.buckets.iter().enumerate() {
            let id = id as u32;
            if bucket.free {
                assert!(self.free_buckets.contains(&id), "free bucket {id} not reusable");
                continue;
            }
            assert_eq!(self.bucket_ids.get(&bucket.key), Some(&id), "bucket {id} not interned");
            let level = bucket.key.utilisation_bp as usize;
            let levels = &self.levels[bucket.kind];
            let listed = levels.buckets[level].contains(&id) && levels.occupied[level / 64] >> (level % 64) & 1 == 1;
            assert_eq!(listed, bucket.len > 0, "bucket {id} listed at its level exactly while non-empty");
            empty += usize::from(bucket.len == 0);
            let (mut slot, mut prev, mut len, mut last_arrival) = (bucket.first, NIL, 0, 0);
            while slot != NIL {
                let entry = self.at(slot);
                assert_eq!(entry.bucket, Some(id), "node {} linked into another bucket", entry.id);
                assert_eq!(entry.prev, prev, "bucket {id}: broken back link");
                assert!(entry.arrived > last_arrival, "bucket {id} is not in arrival order");
                (prev, last_arrival, slot) = (slot, entry.arrived, entry.next);
                len += 1;
            }
            assert_eq!((bucket.last, bucket.len), (prev, len), "bucket {id}: length or tail");
            if let (Some((asked, answer)), true) = (bucket.memo.get(), bucket.first != NIL) {
                let req = ResourceSet {
                    cpu: Amount(asked.cpu),
                    memory: Amount(asked.memory),
                    gpu: Amount(asked.gpu),
                    ..ResourceSet::default()
                };
                let pool = &self.at(bucket.first).node.pool;
                let fresh = pool.fits_now(&req) && utilisation_bp(pool, Some(&req)) <= asked.max_bp;
                assert_eq!(answer, fresh, "bucket {id} remembers a stale test answer");
            }
            indexed += len as usize;
        }
        assert_eq!(empty, self.empty_buckets, "empty bucket count");
        assert_eq!(self.bucket_ids.len() + self.free_buckets.len(), self.buckets.len(), "bucket ids out of sync");
        assert_eq!(
            indexed,
            schedulable_count.iter().sum::<usize>(),
            "index holds other nodes than the schedulable ones"
        );
        // Every non-empty bucket is listed at its level (above); occupied levels list exactly those.
        let mut listed = 0;
        for levels in &self.levels {
            let mut from = Some(UTILISATION_FULL_BP);
            while let Some(level) = from.and_then(|l| levels.at_or_below(l)) {
                let ids = &levels.buckets[level as usize];
                assert!(!ids.is_empty(), "level {level} is marked occupied but lists no bucket");
                listed += ids.len();
                from = level.checked_sub(1);
            }
        }
        assert_eq!(listed, self.buckets.iter().filter(|b| b.len > 0).count(), "levels list other buckets");
        if let Some((shape, at)) = self.blocked {
            // Nothing fits the blocked shape, except perhaps on the node whose release made the
            // next epoch.
            let req = ResourceSet {
                cpu: Amount(shape.cpu),
                memory: Amount(shape.memory),
                gpu: Amount(shape.gpu),
                ..ResourceSet::default()
            };
            let spared = match (at + 1 == self.epoch, self.released_at) {
                (true, Some(slot)) => Some(slot),
                _ => None,
            };
            if at == self.epoch || spared.is_some() {
                for (slot, entry) in self.entries() {
                    let fits = entry.node.schedulable && entry.node.pool.fits_now(&req);
                    assert!(!fits || Some(slot) == spared, "node {} fits a shape remembered as blocked", entry.id);
                }
            }
        }
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
