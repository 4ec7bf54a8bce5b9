//! The simulated cloud provider: what the autoscaler's launches and terminations become.
//!
//! A launch request either fails as a whole (with the type's `launch_fail_p`: no capacity, a
//! quota) and is reported to the head as `LaunchFailed`, or becomes one instance per node, each
//! booting after its own delay drawn from the type's distribution and then registering as a new
//! host with the launch's labels. Spot instances (a type with `preempt_mean_s`) are taken back
//! after an exponential lifetime. An instance is billed from its launch until it is stopped or
//! taken back, or the run ends. The world keeps the hosts; this keeps the instances, the counts
//! and the figures of the report.

use crate::autoscale::AutoscaleSpec;
use keel_kernel::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node the provider was asked for.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    pub node_type: usize,
    /// The launch request it came from.
    pub request: u64,
    pub launched: Time,
    /// When it registered as a host, and which.
    pub host: Option<usize>,
    /// When and how it ended: `terminated` or `preempted`.
    pub ended: Option<(Time, &'static str)>,
}

/// The provider's state during a run.
#[derive(Clone, Debug)]
pub(crate) struct Provider {
    pub spec: AutoscaleSpec,
    pub instances: Vec<Instance>,
    pub requests: u64,
    pub failed_requests: u64,
    /// Per type: the last time one of its nodes was stopped while waiting work could use it.
    pub stopped_while_wanted: Vec<Option<Time>>,
    /// (ms, booting, running) at each change.
    pub series: Vec<NodesAt>,
}

/// Worker nodes at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesAt {
    /// Simulated time, in milliseconds.
    pub ms: u64,
    /// Launched and still booting.
    pub booting: u32,
    /// Registered and running.
    pub running: u32,
}

/// What the autoscaler and its provider did in a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleReport {
    /// Launch requests the head made.
    pub requests: u64,
    /// Of which failed as a whole.
    pub failed_requests: u64,
    /// Nodes launched (instances created).
    pub launched: u64,
    /// Nodes stopped by the autoscaler.
    pub terminated: u64,
    /// Spot nodes taken back by the cloud.
    pub preempted: u64,
    /// The most worker nodes at once (booting or running).
    pub peak_nodes: u32,
    /// Worker nodes running at the end.
    pub end_nodes: u32,
    /// The most nodes of each type at once (booting or running).
    pub peak_by_type: BTreeMap<String, u32>,
    /// Node-hours billed, by type.
    pub node_hours_by_type: BTreeMap<String, f64>,
    /// Node-hours billed in all.
    pub node_hours: f64,
    /// What they cost, at each type's `cost_per_hour`.
    pub cost: f64,
    /// Worker nodes over time.
    #[serde(skip)]
    pub nodes_over_time: Vec<NodesAt>,
}

impl Provider {
    pub fn new(spec: AutoscaleSpec) -> Provider {
        let types = spec.node_types.len();
        Provider {
            spec,
            instances: Vec::new(),
            requests: 0,
            failed_requests: 0,
            stopped_while_wanted: vec![None; types],
            series: vec![NodesAt { ms: 0, booting: 0, running: 0 }],
        }
    }

    /// Instances launching or running: of `node_type` (all when `None`).
    pub fn live(&self, node_type: Option<usize>) -> u64 {
        self.instances.iter().filter(|i| i.ended.is_none() && node_type.is_none_or(|t| i.node_type == t)).count() as u64
    }

    /// Instances still booting.
    pub fn booting(&self) -> u32 {
        self.instances.iter().filter(|i| i.ended.is_none() && i.host.is_none()).count() as u32
    }

    /// Instances registered and running.
    pub fn running(&self) -> u32 {
        self.instances.iter().filter(|i| i.ended.is_none() && i.host.is_some()).count() as u32
    }

    /// Notes the counts after a change.
    pub fn note(&mut self, now: Time) {
        let at = NodesAt { ms: now.0 / 1_000_000, booting: self.booting(), running: self.running() };
        match self.series.last_mut() {
            Some(last) if last.ms == at.ms => *last = at,
            _ => self.series.push(at),
        }
    }

    /// Nothing booting and no more nodes running than the types' minimum: the cluster has
    /// settled after its work.
    pub fn settled(&self) -> bool {
        let min: u64 = self.spec.node_types.iter().map(|t| u64::from(t.min_workers)).sum();
        self.booting() == 0 && u64::from(self.running()) <= min
    }

    /// The report at the end of the run.
    pub fn report(&self, end: Time) -> AutoscaleReport {
        let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
        let mut cost = 0.0;
        for i in &self.instances {
            let until = i.ended.map_or(end, |(t, _)| t);
            let hours = until.saturating_since(i.launched).0 as f64 / 3.6e12;
            let t = &self.spec.node_types[i.node_type];
            *by_type.entry(t.name.clone()).or_default() += hours;
            cost += hours * t.cost_per_hour;
        }
        let mut peak_by_type: BTreeMap<String, u32> = BTreeMap::new();
        for (t, ty) in self.spec.node_types.iter().enumerate() {
            let most = peak(self.instances.iter().filter(|i| i.node_type == t));
            if most > 0 {
                peak_by_type.insert(ty.name.clone(), most);
            }
        }
        let ended = |how: &str| self.instances.iter().filter(|i| i.ended.is_some_and(|(_, h)| h == how)).count() as u64;
        AutoscaleReport {
            requests: self.requests,
            failed_requests: self.failed_requests,
            launched: self.instances.len() as u64,
            terminated: ended("terminated"),
            preempted: ended("preempted"),
            peak_nodes: peak(self.instances.iter()),
            end_nodes: self.running(),
            peak_by_type,
            node_hours: by_type.values().fold(0.0, |a, h| a + h),
            node_hours_by_type: by_type,
            cost,
            nodes_over_time: self.series.clone(),
        }
    }
}

/// The most instances alive at once: a sweep of launches (+1) and ends (-1), ends first at one
/// time.
fn peak<'a>(instances: impl Iterator<Item = &'a Instance>) -> u32 {
    let mut steps: Vec<(Time, i8)> = Vec::new();
    for i in instances {
        steps.push((i.launched, 1));
        if let Some((at, _)) = i.ended {
            steps.push((at, -1));
        }
    }
    steps.sort_unstable();
    let (mut level, mut most) = (0i64, 0i64);
    for (_, d) in steps {
        level += i64::from(d);
        most = most.max(level);
    }
    most as u32
}
