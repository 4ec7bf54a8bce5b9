//! Resources: fixed-point amounts, resource sets, and per-node pools with GPU devices.
//!
//! Amounts are integers in units of 1/10000 ([`Amount::SCALE`]), so sums never drift. A pool is
//! never over-committed: [`ResourcePool::try_allocate`] either takes everything a request asks for
//! or changes nothing.
//!
//! GPUs are devices. A fractional request (below one GPU) is served by a single device; a request
//! of one or more GPUs must be whole and takes that many distinct, wholly free devices. The
//! [`Allocation`] names the device indices, so the task can be told which GPUs are its own.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A fixed-point resource amount in units of 1/10000.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Amount(pub u64);

impl Amount {
    /// Units per whole resource.
    pub const SCALE: u64 = 10_000;
    /// Nothing.
    pub const ZERO: Amount = Amount(0);
    /// One whole unit (one CPU, one GPU).
    pub const ONE: Amount = Amount(Self::SCALE);

    /// `n` whole units.
    pub const fn units(n: u64) -> Amount {
        Amount(n * Self::SCALE)
    }

    /// The nearest amount to `x` whole units; `None` for negative, non-finite or too large values.
    pub fn from_f64(x: f64) -> Option<Amount> {
        if !x.is_finite() || x < 0.0 || x > (u64::MAX / Self::SCALE) as f64 {
            return None;
        }
        Some(Amount((x * Self::SCALE as f64).round() as u64))
    }

    /// As a floating-point number of whole units (for display and metrics only).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }

    /// Whether this is a whole number of units.
    pub fn is_whole(self) -> bool {
        self.0 % Self::SCALE == 0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() {
            write!(f, "{}", self.0 / Self::SCALE)
        } else {
            write!(f, "{}", self.as_f64())
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A bundle of resource amounts: what a task asks for or what a node offers.
///
/// `memory` is in bytes (as an [`Amount`] of whole bytes). Custom resources are named; a missing
/// name is zero.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ResourceSet {
    /// CPUs.
    pub cpu: Amount,
    /// Memory, in whole bytes.
    pub memory: Amount,
    /// GPUs (a fraction below one stays on one device).
    pub gpu: Amount,
    /// Custom resources by name; zero amounts are not stored.
    pub custom: BTreeMap<String, Amount>,
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        let mut sep = "";
        for (name, v) in [("CPU", self.cpu), ("GPU", self.gpu)] {
            if v != Amount::ZERO {
                write!(f, "{sep}{name}: {v}")?;
                sep = ", ";
            }
        }
        if self.memory != Amount::ZERO {
            write!(f, "{sep}memory: {}B", self.memory.0 / Amount::SCALE)?;
            sep = ", ";
        }
        for (k, v) in &self.custom {
            write!(f, "{sep}{k}: {v}")?;
            sep = ", ";
        }
        write!(f, "}}")
    }
}

/// Why a resource request can never be served, whatever the cluster looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum InvalidRequest {
    /// More than one GPU, but not a whole number of them.
    #[error("a request for {gpu} GPUs must be a whole number when it is more than one GPU")]
    FractionalMultiGpu {
        /// The amount asked for.
        gpu: Amount,
    },
    /// A custom resource with an empty name.
    #[error("a custom resource has an empty name")]
    EmptyCustomName,
}

impl ResourceSet {
    /// `n` CPUs and nothing else.
    pub fn cpus(n: u64) -> ResourceSet {
        ResourceSet { cpu: Amount::units(n), ..ResourceSet::default() }
    }

    /// Builder: with `gpu` GPUs.
    pub fn with_gpu(mut self, gpu: Amount) -> ResourceSet {
        self.gpu = gpu;
        self
    }

    /// Builder: with `bytes` of memory.
    pub fn with_memory_bytes(mut self, bytes: u64) -> ResourceSet {
        self.memory = Amount::units(bytes);
        self
    }

    /// Builder: with a custom resource.
    pub fn with_custom(mut self, name: &str, amount: Amount) -> ResourceSet {
        if amount != Amount::ZERO {
            self.custom.insert(name.to_string(), amount);
        } else {
            self.custom.remove(name);
        }
        self
    }

    /// Whether the set asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.cpu == Amount::ZERO && self.memory == Amount::ZERO && self.gpu == Amount::ZERO && self.custom.is_empty()
    }

    /// Checks the request's shape (not whether anything can hold it).
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.gpu > Amount::ONE && !self.gpu.is_whole() {
            return Err(InvalidRequest::FractionalMultiGpu { gpu: self.gpu });
        }
        if self.custom.keys().any(|k| k.is_empty()) {
            return Err(InvalidRequest::EmptyCustomName);
        }
        Ok(())
    }

    /// Whether every amount in `self` is at most the matching amount in `other`.
    pub fn fits_in(&self, other: &ResourceSet) -> bool {
        self.cpu <= other.cpu
            && self.memory <= other.memory
            && self.gpu <= other.gpu
            && self.custom.iter().all(|(k, v)| other.custom.get(k).is_some_and(|o| v <= o))
    }

    /// `self += other`.
    pub fn add(&mut self, other: &ResourceSet) {
        self.cpu.0 += other.cpu.0;
        self.memory.0 += other.memory.0;
        self.gpu.0 += other.gpu.0;
        for (k, v) in &other.custom {
            self.custom.entry(k.clone()).or_default().0 += v.0;
        }
    }

    /// `self -= other`; panics if any amount would go negative (a kernel bug).
    pub fn sub(&mut self, other: &ResourceSet) {
        self.cpu.0 = self.cpu.0.checked_sub(other.cpu.0).expect("cpu underflow");
        self.memory.0 = self.memory.0.checked_sub(other.memory.0).expect("memory underflow");
        self.gpu.0 = self.gpu.0.checked_sub(other.gpu.0).expect("gpu underflow");
        for (k, v) in &other.custom {
            let have = self.custom.get_mut(k).expect("custom resource missing");
            have.0 = have.0.checked_sub(v.0).expect("custom underflow");
            if have.0 == 0 {
                self.custom.remove(k);
            }
        }
    }

    /// Whether the set asks for any GPU.
    pub fn needs_gpu(&self) -> bool {
        self.gpu != Amount::ZERO
    }

    /// The largest fraction `self / total` over every resource `total` has (0.0 when `total` is empty).
    /// This is the node's critical-resource utilisation when `self` is what is in use.
    pub fn max_fraction_of(&self, total: &ResourceSet) -> f64 {
        let mut worst: f64 = 0.0;
        let mut frac = |used: Amount, tot: Amount| {
            if tot.0 > 0 {
                worst = worst.max(used.0 as f64 / tot.0 as f64);
            }
        };
        frac(self.cpu, total.cpu);
        frac(self.memory, total.memory);
        frac(self.gpu, total.gpu);
        for (k, t) in &total.custom {
            frac(self.custom.get(k).copied().unwrap_or_default(), *t);
        }
        worst
    }
}

/// What one allocation took from a pool, including which GPU devices (and how much of each).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Allocation {
    /// The amounts taken.
    pub resources: ResourceSet,
    /// `(device index, amount)` for each GPU device used, in device order.
    pub gpus: Vec<(u32, Amount)>,
}

/// A pool of resources (a node, or a placement-group bundle reserved on a node) with its GPU devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcePool {
    total: ResourceSet,
    available: ResourceSet,
    /// `(device index, free amount)` per GPU device of this pool, in device order.
    gpu_free: Vec<(u32, Amount)>,
    /// The capacity of each device in this pool, in the same order as `gpu_free`.
    gpu_total: Vec<Amount>,
}

impl ResourcePool {
    /// A pool with `total` resources; GPUs become devices `0..total.gpu` of one unit each
    /// (a fractional remainder becomes one smaller device).
    pub fn new(total: ResourceSet) -> ResourcePool {
        let whole = total.gpu.0 / Amount::SCALE;
        let rest = total.gpu.0 % Amount::SCALE;
        let mut gpu_total: Vec<Amount> = (0..whole).map(|_| Amount::ONE).collect();
        if rest > 0 {
            gpu_total.push(Amount(rest));
        }
        let gpu_free = gpu_total.iter().enumerate().map(|(i, a)| (i as u32, *a)).collect();
        ResourcePool { available: total.clone(), total, gpu_free, gpu_total }
    }

    /// A pool made of exactly what `alloc` took from a parent pool (a placement-group bundle).
    pub fn from_allocation(alloc: &Allocation) -> ResourcePool {
        ResourcePool {
            total: alloc.resources.clone(),
            available: alloc.resources.clone(),
            gpu_free: alloc.gpus.clone(),
            gpu_total: alloc.gpus.iter().map(|(_, a)| *a).collect(),
        }
    }

    /// Everything the pool has.
    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    /// What is not allocated.
    pub fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// Whether the pool, when empty, could ever hold `req` (feasibility, GPU device shape included).
    pub fn could_ever_fit(&self, req: &ResourceSet) -> bool {
        req.fits_in(&self.total)
            && (req.gpu == Amount::ZERO
                || Self::gpu_pick(
                    &self.gpu_total.iter().copied().enumerate().map(|(i, a)| (i as u32, a)).collect::<Vec<_>>(),
                    req.gpu,
                )
                .is_some())
    }

    /// Whether `req` fits in what is available now.
    pub fn fits_now(&self, req: &ResourceSet) -> bool {
        req.fits_in(&self.available) && (req.gpu == Amount::ZERO || Self::gpu_pick(&self.gpu_free, req.gpu).is_some())
    }

    /// Takes `req` from the pool, or returns `None` and changes nothing.
    pub fn try_allocate(&mut self, req: &ResourceSet) -> Option<Allocation> {
        if !req.fits_in(&self.available) {
            return None;
        }
        let picks = if req.gpu == Amount::ZERO { Vec::new() } else { Self::gpu_pick(&self.gpu_free, req.gpu)? };
        let mut gpus = Vec::with_capacity(picks.len());
        for (slot, amount) in picks {
            let dev = &mut self.gpu_free[slot];
            dev.1 .0 -= amount.0;
            gpus.push((dev.0, amount));
        }
        self.available.sub(req);
        Some(Allocation { resources: req.clone(), gpus })
    }

    /// Gives back what [`try_allocate`](Self::try_allocate) took.
    pub fn release(&mut self, alloc: &Allocation) {
        self.available.add(&alloc.resources);
        for (dev, amount) in &alloc.gpus {
            let slot = self.gpu_free.iter().position(|(d, _)| d == dev).expect("released GPU device not in pool");
            self.gpu_free[slot].1 .0 += amount.0;
            assert!(self.gpu_free[slot].1 <= self.gpu_total[slot], "GPU device {dev} over-released");
        }
        assert!(self.available.fits_in(&self.total), "pool over-released");
    }

    /// The critical-resource utilisation in `[0, 1]`: the largest used fraction of any resource.
    pub fn utilisation(&self) -> f64 {
        let mut used = self.total.clone();
        used.sub(&self.available);
        used.max_fraction_of(&self.total)
    }

    /// The utilisation after `req` were allocated (used by the scheduler to rank nodes).
    pub fn utilisation_with(&self, req: &ResourceSet) -> f64 {
        let mut used = self.total.clone();
        used.sub(&self.available);
        used.add(req);
        used.max_fraction_of(&self.total)
    }

    /// Checks the pool's own sums; panics on a kernel bug.
    pub fn check_invariants(&self) {
        assert!(
            self.available.fits_in(&self.total),
            "available exceeds total: {:?} > {:?}",
            self.available,
            self.total
        );
        let free: u64 = self.gpu_free.iter().map(|(_, a)| a.0).sum();
        assert_eq!(free, self.available.gpu.0, "GPU device free amounts disagree with the pool's GPU total");
        for ((_, f), t) in self.gpu_free.iter().zip(&self.gpu_total) {
            assert!(f <= t, "a GPU device has more free than its capacity");
        }
    }

    /// Chooses devices for a GPU request: `(slot, amount)` pairs, or `None` if it does not fit.
    /// A fraction goes to the fullest device that still fits it (best fit, to keep whole devices
    /// free); whole GPUs take the lowest-numbered wholly free devices.
    fn gpu_pick(devices: &[(u32, Amount)], gpu: Amount) -> Option<Vec<(usize, Amount)>> {
        if gpu == Amount::ZERO {
            return Some(Vec::new());
        }
        if gpu < Amount::ONE {
            let slot = devices
                .iter()
                .enumerate()
                .filter(|(_, (_, free))| *free >= gpu)
                .min_by_key(|(slot, (_, free))| (*free, *slot))?
                .0;
            return Some(vec![(slot, gpu)]);
        }
        if !gpu.is_whole() {
            return None;
        }
        let want = (gpu.0 / Amount::SCALE) as usize;
        let picks: Vec<(usize, Amount)> = devices
            .iter()
            .enumerate()
            .filter(|(_, (_, free))| *free >= Amount::ONE)
            .take(want)
            .map(|(slot, _)| (slot, Amount::ONE))
            .collect();
        (picks.len() == want).then_some(picks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus: u64, gpus: u64) -> ResourcePool {
        ResourcePool::new(ResourceSet::cpus(cpus).with_gpu(Amount::units(gpus)))
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut p = node(2, 0);
        let a = p.try_allocate(&ResourceSet::cpus(2)).expect("fits");
        assert!(p.try_allocate(&ResourceSet::cpus(1)).is_none());
        assert_eq!(p.available().cpu, Amount::ZERO);
        p.release(&a);
        assert_eq!(p.available().cpu, Amount::units(2));
        p.check_invariants();
    }

    #[test]
    fn fractional_gpu_stays_on_one_device_and_packs() {
        let mut p = node(8, 2);
        let half = ResourceSet::default().with_gpu(Amount(5_000));
        let a = p.try_allocate(&half).unwrap();
        let b = p.try_allocate(&half).unwrap();
        assert_eq!(a.gpus, vec![(0, Amount(5_000))]);
        assert_eq!(b.gpus, vec![(0, Amount(5_000))], "best fit packs the second half onto device 0");
        let c = p.try_allocate(&ResourceSet::default().with_gpu(Amount(7_000))).unwrap();
        assert_eq!(c.gpus, vec![(1, Amount(7_000))]);
        assert!(
            p.try_allocate(&ResourceSet::default().with_gpu(Amount(4_000))).is_none(),
            "0.3 free is split across no device"
        );
        p.check_invariants();
    }

    #[test]
    fn whole_gpus_get_distinct_free_devices() {
        let mut p = node(8, 4);
        let frac = p.try_allocate(&ResourceSet::default().with_gpu(Amount(1_000))).unwrap();
        let two = p.try_allocate(&ResourceSet::default().with_gpu(Amount::units(2))).unwrap();
        assert_eq!(two.gpus, vec![(1, Amount::ONE), (2, Amount::ONE)]);
        assert!(
            p.try_allocate(&ResourceSet::default().with_gpu(Amount::units(2))).is_none(),
            "device 0 is partly used"
        );
        p.release(&frac);
        assert!(p.try_allocate(&ResourceSet::default().with_gpu(Amount::units(2))).is_some());
        p.check_invariants();
    }

    #[test]
    fn invalid_shapes_are_typed_errors() {
        let bad = ResourceSet::default().with_gpu(Amount(15_000));
        assert_eq!(bad.validate(), Err(InvalidRequest::FractionalMultiGpu { gpu: Amount(15_000) }));
        assert!(ResourceSet::cpus(1).with_custom("", Amount::ONE).validate().is_err());
        assert!(ResourceSet::cpus(1).with_gpu(Amount(5_000)).validate().is_ok());
    }

    #[test]
    fn custom_resources_and_feasibility() {
        let p = ResourcePool::new(ResourceSet::cpus(4).with_custom("tpu", Amount::units(1)));
        assert!(p.could_ever_fit(&ResourceSet::cpus(1).with_custom("tpu", Amount::ONE)));
        assert!(!p.could_ever_fit(&ResourceSet::cpus(1).with_custom("tpu", Amount::units(2))));
        assert!(!p.could_ever_fit(&ResourceSet::cpus(1).with_custom("fpga", Amount::ONE)));
        assert!(!p.could_ever_fit(&ResourceSet::cpus(5)));
    }

    #[test]
    fn bundle_pool_inherits_device_indices() {
        let mut node = node(8, 4);
        node.try_allocate(&ResourceSet::default().with_gpu(Amount::ONE)).unwrap();
        let bundle_alloc = node.try_allocate(&ResourceSet::cpus(2).with_gpu(Amount::units(2))).unwrap();
        let mut bundle = ResourcePool::from_allocation(&bundle_alloc);
        let t = bundle.try_allocate(&ResourceSet::cpus(1).with_gpu(Amount::ONE)).unwrap();
        assert_eq!(t.gpus, vec![(1, Amount::ONE)]);
        bundle.check_invariants();
    }

    #[test]
    fn utilisation_is_the_critical_resource() {
        let mut p = ResourcePool::new(ResourceSet::cpus(4).with_memory_bytes(100));
        p.try_allocate(&ResourceSet::cpus(1).with_memory_bytes(75)).unwrap();
        assert!((p.utilisation() - 0.75).abs() < 1e-9);
        assert!((p.utilisation_with(&ResourceSet::cpus(3)) - 1.0).abs() < 1e-9);
    }
}

/// Amounts summed over many sets (a cluster's free room, a group's bundles) without overflow:
/// a cluster's memory in `Amount` units passes `u64::MAX` at about 1.6 PiB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceSum {
    cpu: u128,
    memory: u128,
    gpu: u128,
    /// No entry at zero.
    custom: BTreeMap<String, u128>,
}

impl ResourceSum {
    /// `self += r`.
    pub fn add(&mut self, r: &ResourceSet) {
        self.cpu += u128::from(r.cpu.0);
        self.memory += u128::from(r.memory.0);
        self.gpu += u128::from(r.gpu.0);
        for (k, v) in r.custom.iter().filter(|(_, v)| v.0 > 0) {
            *self.custom.entry(k.clone()).or_default() += u128::from(v.0);
        }
    }

    /// `self -= r`; panics if any amount would go negative (a kernel bug).
    pub fn sub(&mut self, r: &ResourceSet) {
        let less = |have: u128, take: u64, what: &str| {
            have.checked_sub(u128::from(take)).unwrap_or_else(|| panic!("{what} sum underflow"))
        };
        self.cpu = less(self.cpu, r.cpu.0, "cpu");
        self.memory = less(self.memory, r.memory.0, "memory");
        self.gpu = less(self.gpu, r.gpu.0, "gpu");
        for (k, v) in r.custom.iter().filter(|(_, v)| v.0 > 0) {
            let have = self.custom.get_mut(k).unwrap_or_else(|| panic!("custom resource {k} missing from the sum"));
            *have = less(*have, v.0, "custom");
            if *have == 0 {
                self.custom.remove(k);
            }
        }
    }

    /// Whether every amount in `self` is at most the matching amount in `other`.
    pub fn within(&self, other: &ResourceSum) -> bool {
        self.cpu <= other.cpu
            && self.memory <= other.memory
            && self.gpu <= other.gpu
            && self.custom.iter().all(|(k, v)| other.custom.get(k).is_some_and(|o| v <= o))
    }
}
