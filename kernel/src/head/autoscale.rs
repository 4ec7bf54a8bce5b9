//! The Head's autoscaling decisions (when [`HeadConfig::autoscaler`](super::HeadConfig) is set).
//!
//! Every `period` the Head gathers its demand (queued and infeasible task shapes, pending
//! placement groups as gangs, and the jobs' explicit `RequestResources`), asks
//! [`autoscaler::plan`] which nodes to launch given the nodes that exist and those already
//! launching, and emits [`HeadOutput::Launch`]. The provider's nodes register with the
//! [`LAUNCH_LABEL`] and [`NODE_TYPE_LABEL`] labels, which settle their launch; a launch the
//! provider reports failed ([`HeadInput::LaunchFailed`](super::HeadInput)) or that does not
//! register within `launch_timeout` counts against its type, which is left alone for
//! `failure_backoff` after `max_launch_failures` in a row.
//!
//! A managed node (one with a node-type label) with no task, actor, bundle or only copy of a
//! referenced object is idle; idle for `idle_timeout`, it is drained and terminated
//! ([`HeadOutput::Terminate`]) unless its type is at `min_workers`, or the last decision left
//! demand unserved, or a placement group is pending: a node is never stopped while work that
//! could use it waits, so the cluster does not launch and stop for the same demand (Ray #50783).

use super::{Head, HeadOutput, Timer};
use crate::autoscaler::{self, Bin, Demand, Gang, NodeType, Unmet, INSTANCE_LABEL, LAUNCH_LABEL, NODE_TYPE_LABEL};
use crate::ids::{JobId, NodeId};
use crate::resources::ResourceSet;
use crate::time::Time;
use std::collections::BTreeMap;

/// A launch not yet fully registered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Launching {
    node_type: usize,
    /// Nodes still to register.
    left: u32,
    since: Time,
    /// The machines ([`INSTANCE_LABEL`]) that registered for it.
    seen: Vec<String>,
}

/// The autoscaler's memory.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct AutoscaleState {
    next_request: u64,
    pub launching: BTreeMap<u64, Launching>,
    /// Per type: failed launches in a row, and until when the type is left alone.
    failures: BTreeMap<usize, (u32, Time)>,
    idle_since: BTreeMap<NodeId, Time>,
    /// Each job's explicit requests (the latest replaces the one before).
    pub requests: BTreeMap<JobId, Vec<(ResourceSet, u64)>>,
    /// What the last decision could not serve.
    pub unmet: Vec<(ResourceSet, u64, Unmet)>,
    /// Nodes the autoscaler terminated (they take no work; their loss is expected).
    pub terminated: Vec<NodeId>,
    /// The machines ([`INSTANCE_LABEL`]) of the last nodes it terminated, newest last: one that
    /// registers again (it outlived its stop) is stopped again rather than given work.
    stopped_instances: std::collections::VecDeque<String>,
    started: bool,
}

/// What the autoscaler is doing, for status reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoscalerStatus {
    /// Launches not yet registered: request, node type, nodes left.
    pub launching: Vec<(u64, String, u32)>,
    /// Demand the last decision could not serve.
    pub unmet: Vec<(ResourceSet, u64, Unmet)>,
    /// Types left alone after failed launches, until when.
    pub backing_off: Vec<(String, Time)>,
}

impl Head {
    /// Starts the decision timer the first time the Head sees time pass.
    pub(super) fn autoscale_start(&mut self) {
        if self.config.autoscaler.is_some() && !self.autoscale.started {
            self.autoscale.started = true;
            let at = self.now + period(self.config.autoscaler.as_ref().expect("set"));
            self.set_timer(at, Timer::Autoscale);
        }
    }

    /// A node registered: settle its launch, if it came from one; stop it again if it is a
    /// machine the autoscaler already stopped.
    pub(super) fn autoscale_registered(&mut self, node: NodeId, labels: &crate::proto::Labels) {
        if labels.get(INSTANCE_LABEL).is_some_and(|i| self.autoscale.stopped_instances.contains(i)) {
            self.autoscale_stop(node);
            return;
        }
        let Some(request) = labels.get(LAUNCH_LABEL).and_then(|r| r.parse::<u64>().ok()) else { return };
        let Some(launch) = self.autoscale.launching.get_mut(&request) else { return };
        // A machine registering again is not one more node of its launch.
        if let Some(instance) = labels.get(INSTANCE_LABEL) {
            if launch.seen.contains(instance) {
                return;
            }
            launch.seen.push(instance.clone());
        }
        launch.left = launch.left.saturating_sub(1);
        let node_type = launch.node_type;
        if launch.left == 0 {
            self.autoscale.launching.remove(&request);
        }
        // A node came: the failures in a row end (a backoff under way runs its course).
        if let Some(entry) = self.autoscale.failures.get_mut(&node_type) {
            entry.0 = 0;
        }
    }

    /// The provider could not launch (the rest of) a request.
    pub(super) fn autoscale_launch_failed(&mut self, request: u64) {
        if let Some(launch) = self.autoscale.launching.remove(&request) {
            self.autoscale_failed(launch.node_type);
        }
    }

    fn autoscale_failed(&mut self, node_type: usize) {
        let Some(config) = &self.config.autoscaler else { return };
        let (max, backoff) = (config.max_launch_failures.max(1), config.failure_backoff);
        // One failed request is one failure, however many nodes it asked for.
        let entry = self.autoscale.failures.entry(node_type).or_insert((0, Time::ZERO));
        entry.0 = entry.0.saturating_add(1);
        if entry.0 >= max {
            entry.1 = self.now + backoff;
            entry.0 = 0;
        }
    }

    /// Whether a node type the autoscaler may launch could hold `resources` (with `labels`):
    /// work that only such a node could run waits for one instead of failing as infeasible.
    pub(super) fn autoscaler_could_hold(
        &self,
        resources: &ResourceSet,
        labels: &[crate::proto::LabelConstraint],
    ) -> bool {
        self.config.autoscaler.as_ref().is_some_and(|c| {
            c.node_types.iter().any(|t| {
                t.max_workers > 0
                    && labels.iter().all(|l| l.matches(&autoscaler::labels_of(t)))
                    && crate::resources::ResourcePool::new(t.resources.clone()).could_ever_fit(resources)
            })
        })
    }

    /// A job asks that the cluster hold at least these shapes (replacing its earlier request).
    pub(super) fn request_resources(&mut self, job: JobId, shapes: Vec<(ResourceSet, u64)>) {
        if shapes.is_empty() {
            self.autoscale.requests.remove(&job);
        } else {
            self.autoscale.requests.insert(job, shapes);
        }
    }

    /// One decision: timeouts, launches, idle nodes.
    pub(super) fn on_autoscale_timer(&mut self) {
        let Some(config) = self.config.autoscaler.clone() else { return };
        self.set_timer(self.now + period(&config), Timer::Autoscale);
        // Nodes stopped at the last decision are gone (their provider has been told): forget
        // them now rather than when their silence reaches the node timeout, so that they weigh
        // on nothing meanwhile. They are idle and drained: nothing is lost with them.
        for node in self.autoscale.terminated.clone() {
            if self.nodes.get(node).is_some() {
                self.on_node_lost(node);
            }
        }
        // Launches that did not register in time failed.
        let expired: Vec<u64> = self
            .autoscale
            .launching
            .iter()
            .filter(|(_, l)| self.now.saturating_since(l.since) >= config.launch_timeout)
            .map(|(r, _)| *r)
            .collect();
        for request in expired {
            self.autoscale_launch_failed(request);
        }
        // Bins: the room of schedulable nodes, and launching nodes whole.
        let mut bins: Vec<Bin> = Vec::new();
        let mut bin_nodes: Vec<NodeId> = Vec::new();
        for node in self.live_nodes().collect::<Vec<_>>() {
            let Some(n) = self.cluster.node(node) else { continue };
            if self.autoscale.terminated.contains(&node) {
                continue;
            }
            bin_nodes.push(node);
            let free = if n.schedulable { n.pool.available().clone() } else { ResourceSet::default() };
            bins.push(Bin {
                node_type: type_index(&config, &n.labels),
                free,
                labels: n.labels.clone(),
                launching: false,
            });
        }
        for launch in self.autoscale.launching.values() {
            let ty = &config.node_types[launch.node_type];
            for _ in 0..launch.left {
                bins.push(Bin {
                    node_type: Some(launch.node_type),
                    free: ty.resources.clone(),
                    labels: autoscaler::labels_of(ty),
                    launching: true,
                });
            }
        }
        // Types backing off after failures take nothing now.
        let types: Vec<NodeType> = config
            .node_types
            .iter()
            .enumerate()
            .map(|(i, t)| match self.autoscale.failures.get(&i) {
                Some(&(_, until)) if until > self.now => NodeType { max_workers: 0, min_workers: 0, ..t.clone() },
                _ => t.clone(),
            })
            .collect();
        let demand = self.autoscale_demand(&bin_nodes);
        let plan = autoscaler::plan(&types, &config.limits, &bins, &demand);
        for &(node_type, count) in &plan.launch {
            let request = self.autoscale.next_request;
            self.autoscale.next_request += 1;
            self.autoscale
                .launching
                .insert(request, Launching { node_type, left: count, since: self.now, seen: Vec::new() });
            let name = config.node_types[node_type].name.clone();
            self.emit(HeadOutput::Launch { request, node_type: name, count });
        }
        // Demand no type could ever hold does not keep idle nodes; demand held back by a limit does.
        let at_limit = plan.unmet.iter().any(|(_, _, why)| *why == Unmet::AtLimit);
        let busy = at_limit || !plan.launch.is_empty() || !self.pgs.pending.is_empty();
        self.autoscale.unmet = plan.unmet;
        self.autoscale_idle(&config, busy, &types, &bins, &demand);
    }

    /// The demand; `bin_nodes` are the nodes of the plan's bins, in order (a group placed in
    /// part names its placed bundles' bins).
    fn autoscale_demand(&self, bin_nodes: &[NodeId]) -> Demand {
        let mut demand = Demand { tasks: self.tasks.autoscaler_demand(), ..Demand::default() };
        for record in self.pgs.pending.iter().filter_map(|pg| self.pgs.get(*pg)) {
            if record.state != super::placement::PgState::Pending {
                continue;
            }
            let unplaced: Vec<ResourceSet> = record
                .spec
                .bundles
                .iter()
                .zip(&record.bundles)
                .filter(|(_, b)| b.is_none())
                .map(|(r, _)| r.clone())
                .collect();
            if !unplaced.is_empty() {
                let placed = record
                    .bundles
                    .iter()
                    .flatten()
                    .filter_map(|b| bin_nodes.iter().position(|n| *n == b.node))
                    .collect();
                demand.gangs.push(Gang { placed, ..Gang::new(record.spec.strategy, unplaced) });
            }
        }
        for shapes in self.autoscale.requests.values() {
            demand.requests.extend(shapes.iter().cloned());
        }
        demand
    }

    /// Terminates managed nodes idle for the timeout, unless demand waits or their type is at
    /// its minimum.
    fn autoscale_idle(
        &mut self,
        config: &autoscaler::AutoscalerConfig,
        busy: bool,
        types: &[NodeType],
        bins: &[Bin],
        demand: &Demand,
    ) {
        let mut per_type: BTreeMap<usize, u32> = BTreeMap::new();
        let mut idle: Vec<(NodeId, usize)> = Vec::new();
        let live: Vec<NodeId> = self.live_nodes().collect();
        for &node in &live {
            let Some(n) = self.cluster.node(node) else { continue };
            let Some(t) = type_index(config, &n.labels) else { continue };
            if self.autoscale.terminated.contains(&node) {
                continue;
            }
            *per_type.entry(t).or_default() += 1;
            if self.node_is_idle(node) {
                idle.push((node, t));
            } else {
                self.autoscale.idle_since.remove(&node);
            }
        }
        self.autoscale.idle_since.retain(|n, _| live.contains(n));
        self.autoscale.terminated.retain(|n| live.contains(n));
        // The bins of the live nodes, in the order `bins` lists them (launching ones follow).
        let live_bins: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|n| self.cluster.node(*n).is_some() && !self.autoscale.terminated.contains(n))
            .collect();
        let mut gone: Vec<usize> = Vec::new();
        let wanted = !demand.tasks.is_empty() || !demand.gangs.is_empty() || !demand.requests.is_empty();
        for (node, t) in idle {
            let since = *self.autoscale.idle_since.entry(node).or_insert(self.now);
            if busy || self.now.saturating_since(since) < config.idle_timeout {
                continue;
            }
            let count = per_type.entry(t).or_default();
            if *count <= config.node_types[t].min_workers {
                continue;
            }
            // Demand the cluster holds now (explicit requests, say) must still fit without it.
            if wanted {
                let Some(i) = live_bins.iter().position(|n| *n == node) else { continue };
                let without: Vec<Bin> = bins
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i && !gone.contains(j))
                    .map(|(_, b)| b.clone())
                    .collect();
                let mut removed = gone.clone();
                removed.push(i);
                let plan = autoscaler::plan(types, &config.limits, &without, &demand.without_bins(&removed));
                if !plan.launch.is_empty() || plan.unmet.iter().any(|(_, _, why)| *why == Unmet::AtLimit) {
                    continue;
                }
                gone.push(i);
            }
            *count -= 1;
            self.autoscale.idle_since.remove(&node);
            self.autoscale_stop(node);
        }
    }

    /// Stops a node: it drains (no new work goes there; it is idle, so not reported drained
    /// separately), its provider is told, and its machine is remembered.
    fn autoscale_stop(&mut self, node: NodeId) {
        /// Machines remembered as stopped.
        const REMEMBERED: usize = 4096;
        self.autoscale.terminated.push(node);
        if let Some(instance) = self.cluster.node(node).and_then(|n| n.labels.get(INSTANCE_LABEL)).cloned() {
            if self.autoscale.stopped_instances.len() == REMEMBERED {
                self.autoscale.stopped_instances.pop_front();
            }
            self.autoscale.stopped_instances.push_back(instance);
        }
        if let Some(record) = self.nodes.get_mut(node) {
            record.draining = true;
            record.drained_reported = true;
        }
        self.cluster.set_schedulable(node, false);
        self.emit(HeadOutput::Terminate { node });
    }

    /// No task, actor or bundle there, and no only copy of a referenced object.
    fn node_is_idle(&self, node: NodeId) -> bool {
        let Some(record) = self.nodes.get(node) else { return false };
        if !record.running.is_empty() || !record.actors.is_empty() || !record.bundles.is_empty() {
            return false;
        }
        !record.objects.iter().any(|&o| {
            self.object_ref_count(o).is_some_and(|c| c > 0) && self.object_locations(o).iter().all(|n| *n == node)
        })
    }

    /// The autoscaler's launches in flight, unmet demand and types backing off.
    pub fn autoscaler_status(&self) -> AutoscalerStatus {
        let Some(config) = &self.config.autoscaler else { return AutoscalerStatus::default() };
        AutoscalerStatus {
            launching: self
                .autoscale
                .launching
                .iter()
                .map(|(r, l)| (*r, config.node_types[l.node_type].name.clone(), l.left))
                .collect(),
            unmet: self.autoscale.unmet.clone(),
            backing_off: self
                .autoscale
                .failures
                .iter()
                .filter(|(_, (_, until))| *until > self.now)
                .map(|(t, (_, until))| (config.node_types[*t].name.clone(), *until))
                .collect(),
        }
    }
}

/// How often the autoscaler decides: its period, and at least a millisecond (a zero period
/// would decide forever at one instant).
fn period(config: &autoscaler::AutoscalerConfig) -> crate::time::Duration {
    config.period.max(crate::time::Duration::from_millis(1))
}

/// The index of the node type a node's [`NODE_TYPE_LABEL`] names (`None`: not a managed node).
fn type_index(config: &autoscaler::AutoscalerConfig, labels: &crate::proto::Labels) -> Option<usize> {
    labels.get(NODE_TYPE_LABEL).and_then(|name| config.node_types.iter().position(|t| &t.name == name))
}
