//! Lineage: what finished tasks are remembered so that their lost outputs can be rebuilt, and
//! the reconstruction of lost objects.
//!
//! A finished task is kept while one of its return values is still referenced, charged at the
//! approximate size of its spec. The total is bounded by `max_lineage_bytes`; when it is
//! exceeded the oldest lineage is evicted and the outputs it could have rebuilt are marked so
//! that a later loss fails with [`ErrorReason::LineageEvicted`].
//!
//! Recovering a lost object: another copy is used if there is one; a `put` object cannot be
//! rebuilt ([`ErrorReason::PutObjectLost`]); otherwise its producing task is run again, within
//! its retry budget, and recursively so for arguments that were lost or freed meanwhile.

use super::Head;
use crate::errors::ErrorReason;
use crate::ids::{NodeId, ObjectId, TaskId};
use crate::proto::Arg;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;

/// Finished tasks whose lineage is retained, oldest first.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct LineageCache {
    /// Tasks in the order their lineage was retained; a task whose lineage was dropped since
    /// (its record says so) is skipped.
    order: VecDeque<TaskId>,
    /// How many tasks have lineage retained.
    retained: usize,
    bytes: u64,
}

impl LineageCache {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.retained
    }

    /// Every task `order` lists (for the invariants).
    pub fn listed(&self) -> FxHashSet<TaskId> {
        self.order.iter().copied().collect()
    }
}

/// The approximate bytes of lineage a task costs: its spec's variable parts plus a fixed overhead.
fn lineage_cost(spec: &crate::proto::TaskSpec) -> u64 {
    let args: u64 = spec
        .args
        .iter()
        .map(|a| match a {
            Arg::Value { data, nested } => data.len() as u64 + 24 * nested.len() as u64 + 32,
            Arg::Ref(_) => 24,
        })
        .sum();
    let function = match &spec.function {
        crate::proto::Function::Named(name) => name.len() as u64,
        crate::proto::Function::Command(argv) => argv.iter().map(|a| a.len() as u64 + 24).sum(),
    };
    256 + args + function
}

impl Head {
    /// Keeps a finished task's spec as lineage, evicting the oldest if over budget.
    pub(super) fn retain_lineage(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(task).expect("task");
        assert_eq!(record.lineage_bytes, 0, "lineage retained twice");
        let cost = lineage_cost(&record.spec);
        record.lineage_bytes = cost;
        self.lineage.bytes += cost;
        self.lineage.retained += 1;
        self.lineage.order.push_back(task);
        while self.lineage.bytes > self.config.max_lineage_bytes {
            let Some(oldest) = self.lineage.order.pop_front() else { break };
            if self.tasks.get(oldest).is_some_and(|t| t.lineage_bytes > 0) {
                self.evict_lineage(oldest);
            }
        }
    }

    /// Stops charging for a task's lineage (its returns are all gone).
    pub(super) fn drop_lineage(&mut self, task: TaskId) {
        let record = self.tasks.get_mut(task).expect("task");
        assert!(record.lineage_bytes > 0, "dropping lineage that is not retained");
        self.lineage.bytes -= record.lineage_bytes;
        record.lineage_bytes = 0;
        self.lineage.retained = self.lineage.retained.checked_sub(1).expect("lineage count out of sync");
        // `order` is cleaned lazily: entries without retained lineage are skipped.
        if self.lineage.order.len() > 2 * self.lineage.retained + 64 {
            let tasks = &self.tasks;
            let mut seen = FxHashSet::default();
            self.lineage.order.retain(|t| tasks.get(*t).is_some_and(|r| r.lineage_bytes > 0) && seen.insert(*t));
        }
    }

    /// Evicts a task's lineage: its outputs can no longer be rebuilt.
    fn evict_lineage(&mut self, task: TaskId) {
        let record = self.tasks.get(task).expect("task");
        if !record.state.is_ended() {
            // Being rebuilt right now: keep it until it ends; charge it again at the back.
            self.lineage.order.push_back(task);
            return;
        }
        let returns: Vec<ObjectId> = record.spec.return_ids().collect();
        let by_ref: Vec<ObjectId> = record.spec.args.iter().filter_map(super::tasks::arg_ref).collect();
        self.drop_lineage(task);
        for object in returns {
            if let Some(o) = self.objects.get_mut(object) {
                o.lineage_evicted = true;
            }
        }
        // The spec goes: its outputs can no longer be rebuilt, and the state it held is freed.
        self.tasks.remove(task);
        for object in by_ref {
            self.remove_lineage_use(object);
        }
    }

    /// Recovers objects that lost their last copy with `node` (still referenced ones only).
    pub(super) fn recover_objects(&mut self, lost: &[ObjectId], node: NodeId) {
        for object in lost {
            let Some(record) = self.objects.get(*object) else { continue };
            if record.ref_count() == 0 || record.failure().is_some() {
                continue;
            }
            self.recover_one(*object, Some(node));
        }
    }

    /// Recovers arguments needed by a task that is about to run again.
    pub(super) fn recover_for_argument(&mut self, objects: &[ObjectId]) {
        for object in objects {
            let Some(node) = self.objects.get(*object).and_then(|o| o.lost_with) else {
                // Never had a copy to lose: released before it was produced; its producer reruns.
                self.recover_one(*object, None);
                continue;
            };
            self.recover_one(*object, Some(node));
        }
    }

    /// Rebuilds `object` by re-running its producer, or fails it with the reason it cannot be.
    fn recover_one(&mut self, object: ObjectId, lost_with: Option<NodeId>) {
        let record = self.objects.get_mut(object).expect("recovering an unknown object");
        if record.inline.is_some() || !record.locations.is_empty() || record.failure().is_some() {
            return;
        }
        if object.is_put() {
            self.fail_object(object, ErrorReason::PutObjectLost { object });
            return;
        }
        if record.lineage_evicted {
            self.fail_object(object, ErrorReason::LineageEvicted { object });
            return;
        }
        record.state = super::objects::ObjState::Pending;
        record.released = false;
        let producer = object.task;
        let Some(task) = self.tasks.get(producer) else {
            self.fail_object(object, ErrorReason::LineageEvicted { object });
            return;
        };
        if !matches!(task.state, super::tasks::TaskState::Finished) {
            // Not finished (queued, running, or being rebuilt already): it will produce the object.
            return;
        }
        if task.retries_left == 0 {
            let attempts = task.attempt + 1;
            let reason = match lost_with {
                Some(node) => ErrorReason::NodeLost { task: producer, node },
                // Found by keel chaos: this used to claim a worker death that never happened.
                None => ErrorReason::RetriesExhausted { object, task: producer, attempts },
            };
            self.fail_object(object, reason);
            return;
        }
        self.rebuild(producer);
    }

    /// Runs a finished task again to rebuild its lost outputs.
    fn rebuild(&mut self, task: TaskId) {
        self.stats.reconstructions += 1;
        let record = self.tasks.get(task).expect("task");
        let refs: Vec<ObjectId> = record.spec.referenced_objects().collect();
        let returns: Vec<ObjectId> = record.spec.return_ids().collect();
        for object in refs {
            self.add_arg_use(object);
        }
        for object in returns {
            // Outputs with no copy left wait for the new value; the others stay ready.
            if let Some(o) = self.objects.get_mut(object) {
                if o.inline.is_none() && o.locations.is_empty() && o.failure().is_none() {
                    o.state = super::objects::ObjState::Pending;
                }
            }
        }
        if let crate::proto::TaskKind::ActorMethod { actor, .. } = self.tasks.get(task).expect("task").spec.kind {
            if !self.actors.can_rerun_calls(actor) {
                // Retries are left (checked by the caller), so the actor is dead: say why it died.
                let reason = self.actors.death(actor).cloned().expect("an actor that cannot rerun calls is dead");
                self.tasks.get_mut(task).expect("task").state = super::tasks::TaskState::WaitingDeps { missing: 0 };
                self.fail_task(task, reason);
                return;
            }
        }
        self.retry_task(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;
    use crate::proto::TaskSpec;

    #[test]
    fn lineage_cost_grows_with_inline_arguments() {
        let mut spec = TaskSpec::new(TaskId(1), JobId(1), "f");
        let base = lineage_cost(&spec);
        spec.args.push(Arg::Value { data: vec![0; 1000], nested: Vec::new() });
        assert!(lineage_cost(&spec) >= base + 1000);
        spec.args.push(Arg::Ref(ObjectId::for_return(TaskId(2), 1)));
        assert!(lineage_cost(&spec) > base + 1000);
    }
}
