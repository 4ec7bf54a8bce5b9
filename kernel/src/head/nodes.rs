//! Nodes: registration, heartbeats, failure detection by deadline, drain, and loss.
//!
//! Any message from a node proves it alive, not only heartbeats, so a node busy with work is never
//! declared dead for want of a heartbeat. A node that misses its deadline is dead for good: its id
//! is never reused, and if it speaks again it is told to register again as a new node.

use super::{Head, HeadOutput};
use crate::errors::{InputError, TaskFailure};
use crate::ids::{ActorId, NodeId, ObjectId, PlacementGroupId, TaskId};
use crate::proto::{HeadToNode, Labels, NodeToHead};
use crate::resources::ResourceSet;
use crate::time::Time;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeSet;

/// A hashed set's items in ascending order.
fn sorted<T: Copy + Ord>(set: &FxHashSet<T>) -> Vec<T> {
    let mut items: Vec<T> = set.iter().copied().collect();
    items.sort_unstable();
    items
}

/// What the Head knows of one live node.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct NodeRecord {
    /// When the node is declared dead unless it speaks.
    pub deadline: Time,
    /// When the deadline is next checked (at or before `deadline`): messages only move
    /// `deadline`, and a check that finds it moved files the node again, so that a busy node costs
    /// no index update per message.
    check_at: Time,
    /// Draining: no new work; reported drained once idle.
    pub draining: bool,
    /// `NodeDrained` was emitted.
    pub drained_reported: bool,
    /// Task attempts running there (normal tasks, actor creations and actor methods). Lookup
    /// only: listings are sorted.
    pub running: FxHashSet<TaskId>,
    /// Objects with a copy there. Lookup only: listings are sorted.
    pub objects: FxHashSet<ObjectId>,
    /// Actors living there.
    pub actors: BTreeSet<ActorId>,
    /// Placement-group bundles reserved there.
    pub bundles: BTreeSet<(PlacementGroupId, u32)>,
}

impl NodeRecord {
    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.actors.is_empty() && self.bundles.is_empty()
    }
}

/// Live nodes and their deadline checks.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct NodeTable {
    /// Lookup only: listings are sorted.
    nodes: FxHashMap<NodeId, NodeRecord>,
    /// `(check_at, node)`, one entry per node.
    checks: BTreeSet<(Time, NodeId)>,
    next_id: u64,
}

impl NodeTable {
    pub fn get(&self, node: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&node)
    }

    pub fn get_mut(&mut self, node: NodeId) -> Option<&mut NodeRecord> {
        self.nodes.get_mut(&node)
    }

    /// Live nodes, ascending.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// Live nodes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &NodeRecord)> {
        self.ids().map(|id| (id, &self.nodes[&id]))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The next deadline check (possibly before any real deadline: checking early is harmless).
    pub fn next_deadline(&self) -> Option<Time> {
        self.checks.first().map(|(t, _)| *t)
    }

    /// Nodes whose deadline is at or before `now`, in deadline order; nodes checked but heard
    /// from meanwhile are filed again at their new deadline.
    pub fn expired(&mut self, now: Time) -> Vec<NodeId> {
        let mut due = Vec::new();
        while self.checks.first().is_some_and(|(at, _)| *at <= now) {
            due.push(self.checks.pop_first().expect("checked").1);
        }
        let mut expired = Vec::new();
        for node in due {
            let record = self.nodes.get_mut(&node).expect("a check for an unknown node");
            if record.deadline <= now {
                expired.push((record.deadline, node));
            }
            // Filed at its deadline: the node loss removes it, or the next check looks again.
            record.check_at = record.deadline;
            self.checks.insert((record.deadline, node));
        }
        expired.sort_unstable();
        expired.into_iter().map(|(_, n)| n).collect()
    }

    fn insert(&mut self, deadline: Time) -> NodeId {
        self.next_id += 1;
        let id = NodeId(self.next_id);
        let record = NodeRecord {
            deadline,
            check_at: deadline,
            draining: false,
            drained_reported: false,
            running: FxHashSet::default(),
            objects: FxHashSet::default(),
            actors: BTreeSet::new(),
            bundles: BTreeSet::new(),
        };
        assert!(self.nodes.insert(id, record).is_none(), "node id reused");
        self.checks.insert((deadline, id));
        id
    }

    fn touch(&mut self, node: NodeId, deadline: Time) {
        let record = self.nodes.get_mut(&node).expect("touch of an unknown node");
        record.deadline = deadline.max(record.deadline);
    }

    fn remove(&mut self, node: NodeId) -> Option<NodeRecord> {
        let record = self.nodes.remove(&node)?;
        assert!(self.checks.remove(&(record.check_at, node)), "deadline index out of sync");
        Some(record)
    }

    /// Checks the deadline index.
    pub fn check_invariants(&self) {
        assert_eq!(self.checks.len(), self.nodes.len(), "one deadline check per node");
        for (id, n) in &self.nodes {
            assert!(self.checks.contains(&(n.check_at, *id)), "node {id} check missing from the index");
            assert!(n.check_at <= n.deadline, "node {id} checked after its deadline");
            assert!(id.0 <= self.next_id, "node id above the allocator");
        }
    }
}

/// The most GPUs a node may register with.
const MAX_NODE_GPUS: u64 = 4096;

impl Head {
    pub(super) fn register_node(&mut self, resources: ResourceSet, labels: Labels) -> Result<NodeId, InputError> {
        resources.validate().map_err(|e| InputError::Malformed { what: format!("node resources: {e}") })?;
        // Each GPU becomes a device in the node's pool: bound them before anything is allocated.
        if resources.gpu.0 / crate::resources::Amount::SCALE > MAX_NODE_GPUS {
            return Err(InputError::Malformed { what: format!("node resources: {} GPUs is too many", resources.gpu) });
        }
        let deadline = self.now + self.config.node_timeout;
        let node = self.nodes.insert(deadline);
        self.cluster.add_node(node, resources, labels);
        // New capacity: infeasible work and pending groups may fit now.
        self.retry_infeasible();
        self.queue_all_runnable();
        self.pgs_mark_all_pending_retry();
        Ok(node)
    }

    pub(super) fn on_node_message(&mut self, node: NodeId, msg: NodeToHead) -> Result<(), InputError> {
        if self.nodes.get(node).is_none() {
            // Declared dead (or never registered): it must come back as a new node.
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::Reregister });
            return Err(InputError::UnknownNode(node));
        }
        let deadline = self.now + self.config.node_timeout;
        self.nodes.touch(node, deadline);
        match msg {
            NodeToHead::Heartbeat => Ok(()),
            NodeToHead::TaskStarted { task, attempt, worker } => self.on_task_started(node, task, attempt, worker),
            NodeToHead::TaskEnded { task, attempt, outcome } => self.on_task_ended(node, task, attempt, outcome),
            NodeToHead::TaskBlocked { task, attempt } => self.on_task_blocked(node, task, attempt),
            NodeToHead::TaskUnblocked { task, attempt } => self.on_task_unblocked(node, task, attempt),
            NodeToHead::ActorWorkerDied { actor, worker } => self.on_actor_worker_died(node, actor, worker),
            NodeToHead::ObjectAdded { object, size } => self.on_object_added(node, object, size),
            NodeToHead::ObjectRemoved(object) => self.on_object_removed(node, object),
            NodeToHead::FromSubmitter { task, msg } => {
                let record = self.tasks.get(task);
                let runs_here = record.is_some_and(|t| t.state.running_node() == Some(node));
                let actor = self.actors.holder_on_node(task, node);
                if !runs_here && actor.is_none() {
                    return Err(InputError::SubmitterNotRunning { task, node });
                }
                let holder = actor.unwrap_or_else(|| self.holder_of(task));
                let job = self.tasks.get(holder).map(|t| t.spec.job).or_else(|| record.map(|t| t.spec.job));
                let job = job.expect("a running submitter has a job");
                let result = self.on_client_message(holder, job, *msg);
                if let Err(error) = &result {
                    let reply = crate::proto::HeadToDriver::Rejected { error: error.clone() };
                    self.emit(HeadOutput::ToNode { node, msg: HeadToNode::ToSubmitter { task, msg: reply } });
                }
                result
            }
            NodeToHead::Leaving => {
                self.on_node_lost(node);
                Ok(())
            }
        }
    }

    pub(super) fn on_drain_request(&mut self, node: NodeId) -> Result<(), InputError> {
        let record = self.nodes.get_mut(node).ok_or(InputError::UnknownNode(node))?;
        if !record.draining {
            record.draining = true;
            self.cluster.set_schedulable(node, false);
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::Drain });
            // Queued work that only this node could hold is now infeasible: look again.
            self.queue_all_runnable();
        }
        self.check_drained(node);
        Ok(())
    }

    /// Reports a draining node once nothing runs or is reserved there.
    pub(super) fn check_drained(&mut self, node: NodeId) {
        let Some(record) = self.nodes.get_mut(node) else { return };
        if record.draining && !record.drained_reported && record.is_idle() {
            record.drained_reported = true;
            self.emit(HeadOutput::NodeDrained(node));
        }
    }

    /// A node is gone (missed its deadline, or left): retry its tasks, restart its actors, re-place
    /// its bundles, and recover every still-referenced object that lost its last copy.
    pub(super) fn on_node_lost(&mut self, node: NodeId) {
        let Some(record) = self.nodes.remove(node) else { return };
        // A node the autoscaler stopped was expected to go: it is not a loss.
        if !self.autoscale.terminated.contains(&node) {
            self.stats.nodes_lost += 1;
        }
        self.cluster.remove_node(node);
        self.emit(HeadOutput::NodeDead(node));
        // Copies first, so that tasks retried below see their lost arguments as missing.
        let mut lost = Vec::new();
        for object in sorted(&record.objects) {
            if self.objects.remove_location(object, node) {
                lost.push(object);
            }
        }
        // Actors next, so that their calls retried below wait for the restart.
        for actor in &record.actors {
            self.on_actor_lost(*actor, node);
        }
        for task in sorted(&record.running) {
            self.on_attempt_lost(task, node, TaskFailure::WorkerDied { exit_code: None });
        }
        for (pg, bundle) in &record.bundles {
            self.on_bundle_lost(*pg, *bundle);
        }
        self.recover_objects(&lost, node);
        self.queue_all_runnable();
    }

    pub(super) fn node_is_live(&self, node: NodeId) -> bool {
        self.nodes.get(node).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_heard_from_is_not_expired_and_is_checked_again_at_its_new_deadline() {
        let mut table = NodeTable::default();
        let a = table.insert(Time(100));
        let b = table.insert(Time(100));
        table.touch(a, Time(250));
        assert_eq!(table.next_deadline(), Some(Time(100)), "checks are filed lazily");
        assert_eq!(table.expired(Time(100)), vec![b]);
        assert_eq!(table.next_deadline(), Some(Time(100)), "the expired node stays filed until removed");
        table.remove(b).expect("b is known");
        assert_eq!(table.next_deadline(), Some(Time(250)), "a is filed again at its new deadline");
        assert!(table.expired(Time(249)).is_empty());
        assert_eq!(table.expired(Time(250)), vec![a]);
        table.check_invariants();
    }

    #[test]
    fn node_ids_are_never_reused() {
        let mut table = NodeTable::default();
        let a = table.insert(Time(1));
        table.remove(a).expect("known");
        let b = table.insert(Time(1));
        assert_ne!(a, b);
        assert!(b > a);
        table.check_invariants();
    }

    #[test]
    fn expired_nodes_come_out_in_deadline_order() {
        let mut table = NodeTable::default();
        let a = table.insert(Time(30));
        let b = table.insert(Time(10));
        let c = table.insert(Time(20));
        assert_eq!(table.expired(Time(40)), vec![b, c, a]);
    }
}
