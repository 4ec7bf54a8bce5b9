//! Placement groups: all-or-nothing reservation of bundles, tasks and actors inside bundles,
//! removal, and re-placing only the bundles lost with a node (Ray #40212 re-placed whole groups).
//!
//! A group that was never reserved holds nothing: its bundles are reserved together or not at
//! all. After a node loss, the surviving bundles keep their reservations and their work; only the
//! lost bundles are placed again, under the same strategy constraints.

use super::scheduler::NoPlacement;
use super::{Head, Timer};
use crate::errors::{ErrorReason, InputError};
use crate::ids::{JobId, NodeId, PlacementGroupId, TaskId};
use crate::proto::{HeadToDriver, PlacementGroupSpec, SchedulingStrategy};
use crate::resources::{Allocation, ResourcePool, ResourceSet};
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum PgState {
    /// Some bundles are not reserved (never were, or lost with a node).
    Pending,
    /// Every bundle is reserved.
    Created,
    /// Removed or failed: holds nothing.
    Removed,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Bundle {
    pub node: NodeId,
    /// What the bundle took from its node.
    pub alloc: Allocation,
    /// The bundle's own pool, from which its tasks allocate.
    pub pool: ResourcePool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PgRecord {
    pub spec: PlacementGroupSpec,
    pub job: JobId,
    pub owner: TaskId,
    pub state: PgState,
    pub bundles: Vec<Option<Bundle>>,
    /// Whether every bundle was reserved at least once.
    pub ever_created: bool,
    pub infeasible_since: Option<Time>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct PgTable {
    groups: BTreeMap<PlacementGroupId, PgRecord>,
    pub(super) pending: BTreeSet<PlacementGroupId>,
    /// Whether pending groups are worth trying again (capacity changed).
    retry: bool,
}

impl PgTable {
    pub fn get(&self, pg: PlacementGroupId) -> Option<&PgRecord> {
        self.groups.get(&pg)
    }

    pub fn iter(&self) -> impl Iterator<Item = (PlacementGroupId, &PgRecord)> {
        self.groups.iter().map(|(k, v)| (*k, v))
    }
}

impl Head {
    pub(super) fn create_placement_group(
        &mut self,
        owner: TaskId,
        job: JobId,
        pg: PlacementGroupId,
        spec: PlacementGroupSpec,
    ) -> Result<(), InputError> {
        if self.pgs.groups.contains_key(&pg) {
            return Err(InputError::DuplicatePlacementGroup(pg));
        }
        if spec.bundles.is_empty() {
            return Err(InputError::Malformed { what: format!("placement group {pg} has no bundles") });
        }
        for (i, b) in spec.bundles.iter().enumerate() {
            b.validate().map_err(|e| InputError::Malformed { what: format!("bundle {i} of {pg}: {e}") })?;
            if b.is_empty() {
                return Err(InputError::Malformed { what: format!("bundle {i} of {pg} is empty") });
            }
        }
        let bundles = spec.bundles.iter().map(|_| None).collect();
        let record = PgRecord {
            spec,
            job,
            owner,
            state: PgState::Pending,
            bundles,
            ever_created: false,
            infeasible_since: None,
        };
        self.pgs.groups.insert(pg, record);
        self.pgs.pending.insert(pg);
        self.pgs.retry = true;
        Ok(())
    }

    pub(super) fn pgs_mark_all_pending_retry(&mut self) {
        if !self.pgs.pending.is_empty() {
            self.pgs.retry = true;
        }
    }

    /// Tries to reserve every pending group, oldest id first.
    pub(super) fn schedule_pending_groups(&mut self) {
        if !std::mem::take(&mut self.pgs.retry) {
            return;
        }
        let pending: Vec<PlacementGroupId> = self.pgs.pending.iter().copied().collect();
        let mut reserved_any = false;
        for pg in pending {
            reserved_any |= self.try_reserve(pg);
        }
        if reserved_any {
            self.queue_all_runnable();
            // Newly runnable tasks may place now; groups take what is left at the next release.
            let retry = self.pgs.retry;
            self.schedule_pending();
            self.pgs.retry |= retry;
        }
    }

    /// Reserves the unreserved bundles of one group; true when the group became complete.
    fn try_reserve(&mut self, pg: PlacementGroupId) -> bool {
        let record = self.pgs.groups.get(&pg).expect("pending group exists");
        let placed: Vec<Option<NodeId>> = record.bundles.iter().map(|b| b.as_ref().map(|b| b.node)).collect();
        let result = self.cluster.reserve_bundles(&record.spec.bundles, record.spec.strategy, &placed);
        match result {
            Ok(reserved) => {
                for (index, node, alloc) in reserved {
                    let pool = ResourcePool::from_allocation(&alloc);
                    self.nodes.get_mut(node).expect("reserved on a live node").bundles.insert((pg, index as u32));
                    let record = self.pgs.groups.get_mut(&pg).expect("group");
                    assert!(record.bundles[index].is_none(), "bundle {index} of {pg} reserved twice");
                    record.bundles[index] = Some(Bundle { node, alloc, pool });
                }
                let record = self.pgs.groups.get_mut(&pg).expect("group");
                record.state = PgState::Created;
                record.ever_created = true;
                record.infeasible_since = None;
                self.pgs.pending.remove(&pg);
                let nodes = record.bundles.iter().map(|b| b.as_ref().expect("reserved").node).collect();
                let owner = record.owner;
                self.send_to_submitter(owner, HeadToDriver::PlacementGroupReady { pg, nodes });
                true
            }
            Err(NoPlacement::Wait) => false,
            Err(NoPlacement::Infeasible) => {
                let record = self.pgs.groups.get_mut(&pg).expect("group");
                if record.infeasible_since.is_none() {
                    record.infeasible_since = Some(self.now);
                    let at = self.now + self.config.infeasible_grace;
                    self.set_timer(at, Timer::PlacementGroupInfeasible(pg));
                }
                false
            }
        }
    }

    pub(super) fn on_pg_infeasible_timeout(&mut self, pg: PlacementGroupId) {
        let Some(record) = self.pgs.groups.get(&pg) else { return };
        let Some(since) = record.infeasible_since else { return };
        if record.state != PgState::Pending || self.now.saturating_since(since) < self.config.infeasible_grace {
            return;
        }
        // Still infeasible? Ask once more against the cluster as it is now.
        self.pgs.groups.get_mut(&pg).expect("group").infeasible_since = None;
        if self.try_reserve(pg) {
            self.queue_all_runnable();
            return;
        }
        if self.pgs.groups.get(&pg).expect("group").infeasible_since.is_some() {
            if self.autoscaler_could_hold_group(pg) {
                // Nodes the autoscaler can launch would hold it: it waits for them.
                let record = self.pgs.groups.get_mut(&pg).expect("group");
                record.infeasible_since = Some(self.now);
                let at = self.now + self.config.infeasible_grace;
                self.set_timer(at, Timer::PlacementGroupInfeasible(pg));
                return;
            }
            self.remove_group(pg, ErrorReason::PlacementGroupInfeasible { pg });
        }
    }

    /// Whether node types the autoscaler can launch could hold the group: every bundle fits a
    /// type, and a STRICT_PACK group fits one node of a type whole.
    fn autoscaler_could_hold_group(&self, pg: PlacementGroupId) -> bool {
        let Some(record) = self.pgs.groups.get(&pg) else { return false };
        let bundles = &record.spec.bundles;
        if record.spec.strategy == crate::proto::PlacementStrategy::StrictPack {
            let mut sum = ResourceSet::default();
            for b in bundles {
                sum.add(b);
            }
            return self.autoscaler_could_hold(&sum, &[]);
        }
        bundles.iter().all(|b| self.autoscaler_could_hold(b, &[]))
    }

    pub(super) fn remove_placement_group(&mut self, pg: PlacementGroupId) -> Result<(), InputError> {
        match self.pgs.groups.get(&pg) {
            None => Err(InputError::UnknownPlacementGroup(pg)),
            Some(r) if r.state == PgState::Removed => Ok(()),
            Some(_) => {
                self.remove_group(pg, ErrorReason::PlacementGroupRemoved { pg });
                Ok(())
            }
        }
    }

    /// Frees every bundle, fails the work inside or waiting for the group, and tells the owner.
    fn remove_group(&mut self, pg: PlacementGroupId, reason: ErrorReason) {
        let waiting: Vec<TaskId> = self
            .tasks
            .in_group(pg)
            .into_iter()
            .filter(|id| self.tasks.get(*id).is_some_and(|t| !t.state.is_ended()))
            .collect();
        for task in waiting {
            self.fail_task(task, reason.clone());
        }
        self.kill_group_actors(pg);
        let record = self.pgs.groups.get_mut(&pg).expect("group");
        record.state = PgState::Removed;
        let bundles: Vec<(usize, Bundle)> =
            record.bundles.iter_mut().enumerate().filter_map(|(i, b)| b.take().map(|b| (i, b))).collect();
        let owner = record.owner;
        self.pgs.pending.remove(&pg);
        for (index, bundle) in bundles {
            if let Some(n) = self.nodes.get_mut(bundle.node) {
                n.bundles.remove(&(pg, index as u32));
            }
            self.cluster.release(bundle.node, &bundle.alloc);
            if self.debts.contains_key(&bundle.node) {
                self.settle_debts(bundle.node);
            }
            self.check_drained(bundle.node);
        }
        self.queue_all_runnable();
        self.pgs_mark_all_pending_retry();
        self.send_to_submitter(owner, HeadToDriver::PlacementGroupFailed { pg, reason });
    }

    /// Non-detached groups of a finished job are removed.
    pub(super) fn remove_job_groups(&mut self, job: JobId) {
        let groups: Vec<PlacementGroupId> = self
            .pgs
            .groups
            .iter()
            .filter(|(_, g)| g.job == job && !g.spec.detached && g.state != PgState::Removed)
            .map(|(id, _)| *id)
            .collect();
        for pg in groups {
            self.remove_group(pg, ErrorReason::JobFinished { job });
        }
    }

    /// A bundle's node died: only that bundle is placed again.
    pub(super) fn on_bundle_lost(&mut self, pg: PlacementGroupId, index: u32) {
        let Some(record) = self.pgs.groups.get_mut(&pg) else { return };
        if record.state == PgState::Removed {
            return;
        }
        record.bundles[index as usize] = None;
        record.state = PgState::Pending;
        self.pgs.pending.insert(pg);
        self.pgs.retry = true;
    }

    /// Allocates a task's resources inside a bundle of `pg` (a given one, or the first that fits).
    pub(super) fn place_in_group(
        &mut self,
        pg: PlacementGroupId,
        bundle: Option<u32>,
        resources: &ResourceSet,
    ) -> Result<(u32, NodeId, Allocation), NoPlacement> {
        let record = self.pgs.groups.get_mut(&pg).ok_or(NoPlacement::Infeasible)?;
        if record.state == PgState::Removed {
            return Err(NoPlacement::Infeasible);
        }
        let candidates: Vec<usize> = match bundle {
            Some(i) if (i as usize) < record.bundles.len() => vec![i as usize],
            Some(_) => return Err(NoPlacement::Infeasible),
            None => (0..record.bundles.len()).collect(),
        };
        for i in &candidates {
            if let Some(b) = record.bundles[*i].as_mut() {
                if let Some(alloc) = b.pool.try_allocate(resources) {
                    return Ok((*i as u32, b.node, alloc));
                }
            }
        }
        let could =
            candidates.iter().any(|i| ResourcePool::new(record.spec.bundles[*i].clone()).could_ever_fit(resources));
        Err(if could { NoPlacement::Wait } else { NoPlacement::Infeasible })
    }

    /// Whether some bundle of `pg` (or the given one) could ever hold `resources`.
    pub(super) fn group_could_fit(&self, pg: PlacementGroupId, bundle: Option<u32>, resources: &ResourceSet) -> bool {
        let Some(record) = self.pgs.groups.get(&pg).filter(|r| r.state != PgState::Removed) else { return false };
        let fits = |i: usize| {
            record.spec.bundles.get(i).is_some_and(|b| ResourcePool::new(b.clone()).could_ever_fit(resources))
        };
        match bundle {
            Some(i) => fits(i as usize),
            None => (0..record.spec.bundles.len()).any(fits),
        }
    }

    /// Allocates `req` in bundle `index` of `pg` on `node`, if it fits there now.
    pub(super) fn allocate_in_bundle(
        &mut self,
        pg: PlacementGroupId,
        index: u32,
        node: NodeId,
        req: &ResourceSet,
    ) -> Option<Allocation> {
        let record = self.pgs.groups.get_mut(&pg)?;
        let b = record.bundles.get_mut(index as usize)?.as_mut().filter(|b| b.node == node)?;
        b.pool.try_allocate(req)
    }

    pub(super) fn release_in_group(&mut self, pg: PlacementGroupId, index: u32, node: NodeId, alloc: &Allocation) {
        let Some(record) = self.pgs.groups.get_mut(&pg) else { return };
        if let Some(b) = record.bundles.get_mut(index as usize).and_then(|b| b.as_mut()).filter(|b| b.node == node) {
            b.pool.release(alloc);
        }
    }

    /// Actors placed inside a removed group die with it.
    fn kill_group_actors(&mut self, pg: PlacementGroupId) {
        // Actors' creation tasks, in task id order (not every task: a head keeps many).
        let creations: Vec<TaskId> = self
            .actors
            .creation_tasks()
            .filter(|id| {
                self.tasks.get(*id).is_some_and(|t| {
                    matches!(t.spec.kind, crate::proto::TaskKind::ActorCreation(_))
                        && matches!(t.spec.strategy, SchedulingStrategy::PlacementGroup { pg: p, .. } if p == pg)
                })
            })
            .collect();
        for creation in creations {
            if let crate::proto::TaskKind::ActorCreation(actor) = self.tasks.get(creation).expect("task").spec.kind {
                let _ = self.kill_actor(actor, true);
            }
        }
    }

    /// Checks groups: all-or-nothing before the first reservation, pools within their bundles.
    pub(super) fn check_group_invariants(&self) {
        for (pg, g) in &self.pgs.groups {
            match g.state {
                PgState::Created => {
                    assert!(g.bundles.iter().all(|b| b.is_some()), "created group {pg} misses a bundle")
                }
                PgState::Removed => assert!(g.bundles.iter().all(|b| b.is_none()), "removed group {pg} holds a bundle"),
                PgState::Pending => {
                    if !g.ever_created {
                        assert!(g.bundles.iter().all(|b| b.is_none()), "group {pg} partly reserved before creation");
                    }
                    assert!(self.pgs.pending.contains(pg), "pending group {pg} not in the pending set");
                }
            }
            for (i, b) in g.bundles.iter().enumerate() {
                if let Some(b) = b {
                    b.pool.check_invariants();
                    let node = self.nodes.get(b.node).expect("bundle on a dead node");
                    assert!(node.bundles.contains(&(*pg, i as u32)), "node does not list bundle {i} of {pg}");
                }
            }
        }
    }
}
