//! [`Head::check_invariants`]: the Head's state checked against itself. Tests and the simulator
//! call it after every step; a failure is a kernel bug and panics with what broke.

use super::tasks::{arg_ref, TaskState};
use super::Head;
use crate::ids::{NodeId, ObjectId, PlacementGroupId, TaskId};
use crate::resources::ResourceSet;
use std::collections::BTreeMap;

impl Head {
    /// Asserts every invariant of the Head: resource sums per node and per bundle, every running
    /// task on a live node, reference counts equal to their holders, nothing freed while
    /// referenced, lineage present for every referenced reconstructable object, and placement
    /// groups all-or-nothing. Costs time linear in the state; meant for tests and simulation.
    pub fn check_invariants(&self) {
        self.cluster.check_invariants();
        self.nodes.check_invariants();
        assert_eq!(self.cluster.len(), self.nodes.len(), "cluster view and node table disagree");
        self.check_resource_sums();
        self.check_running_tasks();
        self.check_reference_counts();
        self.check_lineage();
        self.check_actor_invariants();
        self.check_group_invariants();
        self.check_debts();
        self.check_successors();
    }

    /// A task handed over to run next follows a normal task running on the same node that lists
    /// it among its successors, once, and the other way round.
    fn check_successors(&self) {
        for (id, t) in self.tasks.iter_unordered() {
            match &t.state {
                TaskState::Running { node, next, bundle, .. } if !next.is_empty() => {
                    assert_eq!(t.spec.kind, crate::proto::TaskKind::Normal, "{id} of another kind has a successor");
                    assert!(bundle.is_none(), "{id} in a bundle has a successor");
                    assert!(next.len() <= self.config.pipeline_depth as usize, "{id} has {} successors", next.len());
                    for (i, successor) in next.iter().enumerate() {
                        assert!(!next[..i].contains(successor), "{id} lists {successor} twice");
                        let state = self.tasks.get(*successor).map(|n| &n.state);
                        let follows =
                            matches!(state, Some(TaskState::Next { node: n, after }) if n == node && *after == id);
                        assert!(follows, "{id} lists {successor} as its successor, which does not follow it on {node}");
                    }
                }
                TaskState::Next { node, after } => {
                    let state = self.tasks.get(*after).map(|n| &n.state);
                    let listed = matches!(state, Some(TaskState::Running { node: n, next, .. }) if n == node && next.contains(&id));
                    assert!(listed, "{id} follows {after} on {node}, which does not list it");
                }
                _ => {}
            }
        }
    }

    /// A task owed CPUs is queued for them on its node, and is not blocked at the same time.
    fn check_debts(&self) {
        for (id, t) in self.tasks.iter_unordered() {
            if let TaskState::Running { node, owed, blocked, .. } = &t.state {
                if *owed > crate::resources::Amount::ZERO {
                    assert!(blocked.is_none(), "{id} is owed CPUs while blocked");
                    assert!(
                        self.debts.get(node).is_some_and(|q| q.contains(&id)),
                        "{id} is owed CPUs on {node} but not queued for them"
                    );
                }
            }
        }
    }

    fn check_resource_sums(&self) {
        let mut used: BTreeMap<NodeId, ResourceSet> = BTreeMap::new();
        let mut in_bundle: BTreeMap<(PlacementGroupId, u32), ResourceSet> = BTreeMap::new();
        let mut charge = |node: NodeId, set: &ResourceSet, bundle: Option<(PlacementGroupId, u32)>| match bundle {
            Some(b) => in_bundle.entry(b).or_default().add(set),
            None => used.entry(node).or_default().add(set),
        };
        for (_, t) in self.tasks.iter_unordered() {
            if let TaskState::Running { node, alloc, bundle, .. } = &t.state {
                charge(*node, &alloc.resources, *bundle);
            }
        }
        for (node, alloc, bundle) in self.actors.allocations() {
            if self.node_is_live(node) {
                charge(node, &alloc.resources, bundle);
            }
        }
        for (pg, g) in self.pgs.iter() {
            for (i, b) in g.bundles.iter().enumerate() {
                if let Some(b) = b {
                    used.entry(b.node).or_default().add(&b.alloc.resources);
                    let mut bundle_used = b.pool.total().clone();
                    bundle_used.sub(b.pool.available());
                    let expected = in_bundle.remove(&(pg, i as u32)).unwrap_or_default();
                    assert_eq!(bundle_used, expected, "bundle {i} of {pg}: pool use disagrees with its tasks");
                }
            }
        }
        for (node, sched) in self.cluster.nodes() {
            let mut pool_used = sched.pool.total().clone();
            pool_used.sub(sched.pool.available());
            let expected = used.remove(&node).unwrap_or_default();
            assert_eq!(pool_used, expected, "node {node}: pool use disagrees with tasks, actors and bundles");
        }
        assert!(used.is_empty(), "resources charged to dead nodes: {used:?}");
    }

    fn check_running_tasks(&self) {
        let indexed = self.tasks.iter_unordered().filter(|(_, t)| t.owner_indexed).count();
        assert_eq!(self.tasks.owned_len(), indexed, "owner index size");
        for (id, t) in self.tasks.iter_unordered() {
            // Driver ids only ever join the job table, so an item left out of the index stays a
            // driver's (scans at job end find indexed and unindexed items alike).
            assert!(t.owner_indexed || self.jobs.is_driver(t.owner), "task {id}: a task owner's task is not indexed");
            assert!(!t.owner_indexed || self.tasks.owner_lists(t.owner, id), "owner index misses task {id}");
        }
        for (id, t) in self.tasks.iter_unordered() {
            if let Some(node) = t.state.running_node() {
                let n = self.nodes.get(node).unwrap_or_else(|| panic!("task {id} runs on dead node {node}"));
                assert!(n.running.contains(&id), "node {node} does not list running task {id}");
            }
        }
        for (node, n) in self.nodes.iter() {
            for task in &n.running {
                let t = self.tasks.get(*task).unwrap_or_else(|| panic!("node {node} lists unknown task {task}"));
                assert_eq!(t.state.running_node(), Some(node), "node {node} lists task {task} not running there");
            }
        }
    }

    fn check_reference_counts(&self) {
        let mut handles: BTreeMap<ObjectId, u64> = BTreeMap::new();
        for (_, object, n) in self.objects.handle_entries() {
            assert!(n > 0, "zero handle entry for {object}");
            *handles.entry(object).or_default() += n;
        }
        let mut arg_uses: BTreeMap<ObjectId, u64> = BTreeMap::new();
        let mut lineage_uses: BTreeMap<ObjectId, u64> = BTreeMap::new();
        for (_, t) in self.tasks.iter_unordered() {
            if !t.state.is_ended() {
                for o in t.spec.referenced_objects() {
                    *arg_uses.entry(o).or_default() += 1;
                }
            }
            if t.lineage_bytes > 0 {
                for o in t.spec.args.iter().filter_map(arg_ref) {
                    *lineage_uses.entry(o).or_default() += 1;
                }
            }
        }
        let mut contained: BTreeMap<ObjectId, u64> = BTreeMap::new();
        for (_, o) in self.objects.iter_unordered() {
            for inner in &o.nested {
                *contained.entry(*inner).or_default() += 1;
            }
        }
        let indexed = self.objects.iter_unordered().filter(|(_, o)| o.owner_indexed).count();
        assert_eq!(self.objects.owned_len(), indexed, "owner index size");
        assert_eq!(self.objects.owner_in_borrowers(), None, "an owner's handles are kept as a borrower's");
        for (id, o) in self.objects.iter_unordered() {
            assert!(o.owner_indexed || self.jobs.is_driver(o.owner), "{id}: a task owner's object is not indexed");
            assert!(!o.owner_indexed || self.objects.owner_lists(o.owner, id), "owner index misses {id}");
            let settled = o.is_ready() || o.failure().is_some();
            assert!(!(settled && o.has_waiters()), "{id} is ready or failed but still has waiters");
            assert_eq!(o.handles, handles.get(&id).copied().unwrap_or(0), "{id}: handle count");
            assert_eq!(o.arg_uses, arg_uses.get(&id).copied().unwrap_or(0), "{id}: borrowing tasks");
            assert_eq!(o.lineage_uses, lineage_uses.get(&id).copied().unwrap_or(0), "{id}: lineage uses");
            assert_eq!(o.contained_in, contained.get(&id).copied().unwrap_or(0), "{id}: containing objects");
            if o.ref_count() > 0 {
                assert!(!o.released, "{id} released while referenced");
            }
            if o.released {
                assert!(o.locations.is_empty() && o.inline.is_none(), "{id} released but its value is kept");
                assert!(o.nested.is_empty(), "{id} released but still holds nested references");
            }
            for node in &o.locations {
                let n = self.nodes.get(*node).unwrap_or_else(|| panic!("{id} located on dead node {node}"));
                assert!(n.objects.contains(&id), "node {node} does not list {id}");
            }
        }
        for (node, n) in self.nodes.iter() {
            for object in &n.objects {
                let o = self.objects.get(*object).unwrap_or_else(|| panic!("node {node} lists unknown {object}"));
                assert!(o.locations.contains(&node), "node {node} lists {object} without a location");
            }
        }
    }

    fn check_lineage(&self) {
        let (mut bytes, mut retained) = (0, 0);
        let listed = self.lineage.listed();
        for (id, t) in self.tasks.iter_unordered() {
            bytes += t.lineage_bytes;
            retained += usize::from(t.lineage_bytes > 0);
            assert!(
                t.lineage_bytes == 0 || listed.contains(&id),
                "task {id}: retained lineage is not in the eviction order"
            );
        }
        assert_eq!(retained, self.lineage.len(), "retained lineage count");
        assert_eq!(bytes, self.lineage.bytes(), "lineage bytes");
        for (id, o) in self.objects.iter_unordered() {
            let needs_producer =
                o.ref_count() > 0 && o.failure().is_none() && !id.is_put() && !o.lineage_evicted && o.inline.is_none();
            if needs_producer {
                let producer: TaskId = id.task;
                assert!(
                    self.tasks.get(producer).is_some(),
                    "{id} is referenced and rebuildable but its lineage is gone"
                );
            }
        }
    }
}
