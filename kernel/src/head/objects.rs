//! The object directory and reference counting.
//!
//! An object's reference count is the sum of three kinds of holders:
//! - **handles**: the owner's and borrowers' own references (a driver or a task holds `n` handles);
//! - **borrowing tasks**: tasks not yet ended that take the object as an argument, by reference or
//!   nested in a value;
//! - **containing objects**: live objects whose value holds a reference to it.
//!
//! When the count reaches zero the object is freed on every node that holds a copy. Its record
//! stays, *released*, while retained lineage (a finished task that took it as an argument) may
//! need to rebuild it; then it goes too.

use super::owners::OwnerIndex;
use super::{Head, HeadOutput};
use crate::errors::{ErrorReason, InputError};
use crate::ids::{NodeId, ObjectId, TaskId};
use crate::proto::{HeadToDriver, HeadToNode, ObjectData};
use crate::slab::SlabMap;
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

/// Whether an object's value exists.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum ObjState {
    /// Not produced yet (or being rebuilt).
    Pending,
    /// Produced: inline bytes or copies at `locations` (possibly none, if all were lost and it is
    /// released or about to be recovered).
    Ready,
    /// Will never be available (boxed: rare, and it would double the record's size).
    Failed(Box<ErrorReason>),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ObjectRecord {
    pub owner: TaskId,
    pub state: ObjState,
    pub size: u64,
    pub inline: Option<Vec<u8>>,
    pub locations: BTreeSet<NodeId>,
    pub nested: Vec<ObjectId>,
    /// Sum of all handles held: the owner's, plus the borrowers' in [`ObjectTable::handles`].
    pub handles: u64,
    /// The handles its owner holds (kept here: the owner is nearly always the only holder).
    pub owner_handles: u64,
    pub arg_uses: u64,
    pub contained_in: u64,
    /// Retained lineage records of finished tasks that take this object by reference.
    pub lineage_uses: u64,
    /// Who waits for it: kept out of line, since most objects are awaited by nobody or only
    /// after they are ready.
    waiters: Option<Box<Waiters>>,
    /// Every reference was dropped: the value is freed; the record stays for lineage only.
    pub released: bool,
    /// The producer's lineage was evicted: the object can no longer be rebuilt.
    pub lineage_evicted: bool,
    /// The node its last copy was lost with, for the reason given if it cannot be rebuilt.
    pub lost_with: Option<NodeId>,
    /// Whether the owner index lists it (a task owner's); a driver's objects are found by a scan
    /// when the job ends.
    pub owner_indexed: bool,
}

impl ObjectRecord {
    pub fn new(owner: TaskId, owner_indexed: bool) -> ObjectRecord {
        ObjectRecord {
            owner,
            state: ObjState::Pending,
            size: 0,
            inline: None,
            locations: BTreeSet::new(),
            nested: Vec::new(),
            handles: 0,
            owner_handles: 0,
            arg_uses: 0,
            contained_in: 0,
            lineage_uses: 0,
            waiters: None,
            released: false,
            lineage_evicted: false,
            lost_with: None,
            owner_indexed,
        }
    }

    pub fn ref_count(&self) -> u64 {
        self.handles + self.arg_uses + self.contained_in
    }

    /// Ready with bytes that can be read now (inline, or at least one copy).
    pub fn is_ready(&self) -> bool {
        self.state == ObjState::Ready && (self.inline.is_some() || !self.locations.is_empty())
    }

    pub fn failure(&self) -> Option<&ErrorReason> {
        match &self.state {
            ObjState::Failed(r) => Some(&**r),
            _ => None,
        }
    }

    /// Who waits for it, created on first use.
    pub fn waiters_mut(&mut self) -> &mut Waiters {
        self.waiters.get_or_insert_with(Box::default)
    }

    /// Takes every waiter (none left after).
    pub fn take_waiters(&mut self) -> Waiters {
        self.waiters.take().map(|w| *w).unwrap_or_default()
    }

    /// `task` no longer waits for it.
    pub fn stop_waiting(&mut self, task: TaskId) {
        if let Some(waiters) = self.waiters.as_mut() {
            waiters.waiting_tasks.remove(&task);
        }
    }

    /// Whether anyone waits for it (for the invariants).
    pub fn has_waiters(&self) -> bool {
        self.waiters.as_ref().is_some_and(|w| !w.subscribers.is_empty() || !w.waiting_tasks.is_empty())
    }

    pub fn data(&self) -> ObjectData {
        match &self.inline {
            Some(bytes) => ObjectData::Inline(bytes.clone()),
            None => ObjectData::At(self.locations.iter().copied().collect()),
        }
    }
}

/// Who waits for an object.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Waiters {
    /// Submitters to tell when it is ready or failed.
    pub subscribers: BTreeSet<TaskId>,
    /// Tasks waiting for it before they can run.
    pub waiting_tasks: BTreeSet<TaskId>,
}

/// Objects whose release is being decided (inline for the common case of one or two).
pub(super) type ReleaseWork = smallvec::SmallVec<[ObjectId; 4]>;

/// The object directory. The maps are for lookup only: whatever is listed from them is sorted
/// before it can reach an output.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct ObjectTable {
    objects: SlabMap<ObjectId, ObjectRecord>,
    /// Handles per borrower (a holder other than the owner), per object.
    handles: FxHashMap<TaskId, FxHashMap<ObjectId, u64>>,
    /// Objects per task owner, for owner death. Drivers' objects are not indexed: a driver owns
    /// nearly every object and dies once, when its job ends, so a scan then is cheaper than an
    /// index entry per object.
    owned: OwnerIndex<ObjectId>,
}

impl ObjectTable {
    pub fn get(&self, object: ObjectId) -> Option<&ObjectRecord> {
        self.objects.get(&object)
    }

    pub fn get_mut(&mut self, object: ObjectId) -> Option<&mut ObjectRecord> {
        self.objects.get_mut(&object)
    }

    pub fn contains(&self, object: ObjectId) -> bool {
        self.objects.contains_key(&object)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Every object in no particular order: only for checks whose result does not depend on order.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (ObjectId, &ObjectRecord)> {
        self.objects.iter_unordered().map(|(k, v)| (*k, v))
    }

    /// Every (holder, object, handles) entry, in no particular order (for the invariants).
    pub fn handle_entries(&self) -> impl Iterator<Item = (TaskId, ObjectId, u64)> + '_ {
        let owners = self
            .objects
            .iter_unordered()
            .filter(|(_, r)| r.owner_handles > 0)
            .map(|(o, r)| (r.owner, *o, r.owner_handles));
        self.handles.iter().flat_map(|(h, m)| m.iter().map(move |(o, n)| (*h, *o, *n))).chain(owners)
    }

    /// Whether a borrower entry names the object's owner (for the invariants: it must not).
    pub fn owner_in_borrowers(&self) -> Option<(TaskId, ObjectId)> {
        self.handles
            .iter()
            .flat_map(|(h, m)| m.keys().map(move |o| (*h, *o)))
            .find(|(h, o)| self.objects.get(o).is_some_and(|r| r.owner == *h))
    }

    /// Whether the owner index lists `object` under `owner` (for the invariants).
    pub fn owner_lists(&self, owner: TaskId, object: ObjectId) -> bool {
        self.owned.contains(owner, object)
    }

    /// The size of the owner index (for the invariants).
    pub fn owned_len(&self) -> usize {
        self.owned.pairs()
    }

    /// A new pending object owned by `owner`, with `handles` handles held by the owner; listed
    /// in the owner index when `owner_indexed` (the owner is not a driver).
    pub fn create(&mut self, object: ObjectId, owner: TaskId, handles: u64, owner_indexed: bool) {
        let mut record = ObjectRecord::new(owner, owner_indexed);
        (record.handles, record.owner_handles) = (handles, handles);
        assert!(self.objects.insert(object, record).is_none(), "object {object} created twice");
        if owner_indexed {
            self.owned.insert(owner, object);
        }
    }

    fn remove(&mut self, object: ObjectId) -> ObjectRecord {
        let record = self.objects.remove(&object).expect("removing an unknown object");
        assert_eq!(record.handles, 0, "removing an object with handles");
        if record.owner_indexed {
            assert!(self.owned.remove(record.owner, object), "owner index misses {object}");
        }
        record
    }

    /// `holder` takes `n` more handles to `object` (which must exist).
    fn add_handles(&mut self, holder: TaskId, object: ObjectId, n: u64) {
        let record = self.objects.get_mut(&object).expect("a handle to an unknown object");
        record.handles += n;
        if record.owner == holder {
            record.owner_handles += n;
        } else {
            *self.handles.entry(holder).or_default().entry(object).or_default() += n;
        }
    }

    /// `holder` drops one handle to `object`; false when it held none.
    fn take_handle(&mut self, holder: TaskId, object: ObjectId) -> bool {
        if let Some(record) = self.objects.get_mut(&object).filter(|r| r.owner == holder) {
            if record.owner_handles == 0 {
                return false;
            }
            record.owner_handles -= 1;
            record.handles -= 1;
            return true;
        }
        let Some(held) = self.handles.get_mut(&holder) else { return false };
        let Some(count) = held.get_mut(&object) else { return false };
        *count -= 1;
        if *count == 0 {
            held.remove(&object);
            if held.is_empty() {
                self.handles.remove(&holder);
            }
        }
        self.objects.get_mut(&object).expect("a handle to an unknown object").handles -= 1;
        true
    }

    /// `holder` drops every handle it has; returns the objects it held, in ascending order.
    /// A driver's own objects are found by a scan (`is_driver`).
    fn take_all_handles(&mut self, holder: TaskId, is_driver: bool) -> Vec<ObjectId> {
        let mut objects = Vec::new();
        for object in self.owned_unordered(holder, is_driver) {
            let record = self.objects.get_mut(&object).expect("the owner index lists known objects");
            if record.owner_handles > 0 {
                record.handles -= record.owner_handles;
                record.owner_handles = 0;
                objects.push(object);
            }
        }
        if let Some(held) = self.handles.remove(&holder) {
            for (object, n) in held {
                self.objects.get_mut(&object).expect("a handle to an unknown object").handles -= n;
                objects.push(object);
            }
        }
        objects.sort_unstable();
        objects
    }

    /// Removes `node` from the object's locations; true when that was its last copy of a value
    /// that still matters (not inline, not released).
    pub fn remove_location(&mut self, object: ObjectId, node: NodeId) -> bool {
        let Some(record) = self.objects.get_mut(&object) else { return false };
        let last = record.locations.remove(&node) && record.locations.is_empty() && record.inline.is_none();
        if last {
            record.lost_with = Some(node);
        }
        last && !record.released
    }

    /// The objects an owner owns, in ascending order.
    pub fn owned_by(&self, owner: TaskId, is_driver: bool) -> Vec<ObjectId> {
        let mut objects = self.owned_unordered(owner, is_driver);
        objects.sort_unstable();
        objects
    }

    /// The objects an owner owns, in no particular order; a driver's by a scan, which finds what
    /// the index holds too (driver ids only ever join the job table).
    fn owned_unordered(&self, owner: TaskId, is_driver: bool) -> Vec<ObjectId> {
        if is_driver {
            self.objects.iter_unordered().filter(|(_, r)| r.owner == owner).map(|(id, _)| *id).collect()
        } else {
            self.owned.items_unordered(owner).collect()
        }
    }
}

impl Head {
    pub(super) fn put_object(
        &mut self,
        owner: TaskId,
        object: ObjectId,
        size: u64,
        inline: Option<Vec<u8>>,
        node: Option<NodeId>,
        nested: Vec<ObjectId>,
    ) -> Result<(), InputError> {
        let attempt = self.tasks.get(owner).map(|t| t.attempt);
        let own_space = match attempt {
            Some(attempt) => object.task == TaskId::put_space(owner, attempt),
            None => object.task == owner,
        };
        if !object.is_put() || !own_space {
            return Err(InputError::Malformed { what: format!("{object} is not a put id of its submitter {owner}") });
        }
        if self.objects.contains(object) {
            return Err(InputError::DuplicateObject(object));
        }
        self.check_value_shape(size, inline.as_deref(), node)?;
        if let Some(missing) = nested.iter().find(|o| !self.objects.contains(**o)) {
            return Err(InputError::UnknownObject(*missing));
        }
        let owner_indexed = !self.jobs.is_driver(owner);
        self.objects.create(object, owner, 1, owner_indexed);
        self.seal_value(object, size, inline, node, nested);
        Ok(())
    }

    /// Checks that a value is inline and small, or stored on a live node.
    pub(super) fn check_value_shape(
        &self,
        size: u64,
        inline: Option<&[u8]>,
        node: Option<NodeId>,
    ) -> Result<(), InputError> {
        match (inline, node) {
            (Some(bytes), _) => {
                if bytes.len() as u64 != size {
                    return Err(InputError::Malformed {
                        what: format!("inline value of {} bytes claims {size}", bytes.len()),
                    });
                }
                if size > self.config.inline_max_bytes {
                    return Err(InputError::Malformed {
                        what: format!("inline value of {size} bytes exceeds {}", self.config.inline_max_bytes),
                    });
                }
                Ok(())
            }
            (None, Some(node)) if self.node_is_live(node) => Ok(()),
            (None, Some(node)) => Err(InputError::UnknownNode(node)),
            (None, None) => Err(InputError::Malformed { what: "a value must be inline or stored on a node".into() }),
        }
    }

    /// Makes an object ready with its value, wakes its waiters and notifies subscribers. Nested
    /// references gain a containing-object count (a rebuilt value replaces the old value's).
    pub(super) fn seal_value(
        &mut self,
        object: ObjectId,
        size: u64,
        inline: Option<Vec<u8>>,
        node: Option<NodeId>,
        nested: Vec<ObjectId>,
    ) {
        let record = self.objects.get_mut(object).expect("sealing an unknown object");
        assert!(!matches!(record.state, ObjState::Failed(_)), "sealing a failed object");
        assert!(!record.released, "sealing a released object");
        record.state = ObjState::Ready;
        record.size = size;
        let stored_on = match inline {
            Some(bytes) => {
                record.inline = Some(bytes);
                None
            }
            None => node,
        };
        if let Some(node) = stored_on {
            record.locations.insert(node);
            self.nodes.get_mut(node).expect("sealed on a dead node").objects.insert(object);
        }
        let old = std::mem::replace(&mut self.objects.get_mut(object).expect("sealed").nested, nested.clone());
        for inner in &nested {
            if let Some(r) = self.objects.get_mut(*inner) {
                r.contained_in += 1;
            }
        }
        for inner in old {
            if let Some(r) = self.objects.get_mut(inner) {
                r.contained_in -= 1;
                self.maybe_release(inner);
            }
        }
        self.on_object_ready(object);
    }

    /// Wakes tasks waiting for `object` and answers its subscribers.
    pub(super) fn on_object_ready(&mut self, object: ObjectId) {
        let record = self.objects.get_mut(object).expect("ready object exists");
        let Waiters { subscribers, waiting_tasks: waiting } = record.take_waiters();
        if subscribers.is_empty() && waiting.is_empty() {
            return;
        }
        let (size, data) = (record.size, record.data());
        for subscriber in subscribers {
            let msg = HeadToDriver::ObjectReady { object, size, data: data.clone() };
            self.send_to_submitter(subscriber, msg);
        }
        for task in waiting {
            self.on_dependency_ready(task);
        }
    }

    /// Marks `object` failed for good, tells its subscribers and fails the tasks waiting on it.
    pub(super) fn fail_object(&mut self, object: ObjectId, reason: ErrorReason) {
        let Some(record) = self.objects.get_mut(object) else { return };
        if matches!(record.state, ObjState::Failed(_)) {
            return;
        }
        record.state = ObjState::Failed(Box::new(reason.clone()));
        let Waiters { subscribers, waiting_tasks: waiting } = record.take_waiters();
        let locations = std::mem::take(&mut record.locations);
        record.inline = None;
        self.free_copies(object, locations);
        for subscriber in subscribers {
            self.send_to_submitter(subscriber, HeadToDriver::ObjectFailed { object, reason: reason.clone() });
        }
        for task in waiting {
            self.on_dependency_failed(task, object, reason.clone());
        }
    }

    fn free_copies(&mut self, object: ObjectId, locations: BTreeSet<NodeId>) {
        for node in locations {
            if let Some(n) = self.nodes.get_mut(node) {
                n.objects.remove(&object);
                self.emit(HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(vec![object]) });
            }
        }
    }

    pub(super) fn add_handle(&mut self, holder: TaskId, object: ObjectId) -> Result<(), InputError> {
        match self.objects.get(object) {
            Some(record) if !record.released => {
                self.objects.add_handles(holder, object, 1);
                Ok(())
            }
            _ => Err(InputError::UnknownObject(object)),
        }
    }

    pub(super) fn remove_handle(&mut self, holder: TaskId, object: ObjectId) -> Result<(), InputError> {
        if !self.objects.take_handle(holder, object) {
            return Err(InputError::UnknownObject(object));
        }
        self.maybe_release(object);
        Ok(())
    }

    /// Drops every handle `holder` has (its process ended).
    pub(super) fn drop_all_handles(&mut self, holder: TaskId) {
        let is_driver = self.jobs.is_driver(holder);
        for object in self.objects.take_all_handles(holder, is_driver) {
            self.maybe_release(object);
        }
    }

    pub(super) fn add_arg_use(&mut self, object: ObjectId) {
        if let Some(record) = self.objects.get_mut(object) {
            record.arg_uses += 1;
        }
    }

    pub(super) fn remove_arg_use(&mut self, object: ObjectId) {
        if let Some(record) = self.objects.get_mut(object) {
            record.arg_uses = record.arg_uses.checked_sub(1).expect("arg use underflow");
            self.maybe_release(object);
        }
    }

    pub(super) fn remove_lineage_use(&mut self, object: ObjectId) {
        if let Some(record) = self.objects.get_mut(object) {
            record.lineage_uses = record.lineage_uses.checked_sub(1).expect("lineage use underflow");
            self.maybe_release(object);
        }
    }

    /// Frees an object whose count reached zero, and forgets it once no lineage needs it. Cascades
    /// through nested references and through producers whose returns are all gone.
    pub(super) fn maybe_release(&mut self, object: ObjectId) {
        let mut work: ReleaseWork = smallvec::smallvec![object];
        while let Some(object) = work.pop() {
            let Some(record) = self.objects.get_mut(object) else { continue };
            if record.ref_count() > 0 {
                continue;
            }
            if !record.released {
                record.released = true;
                record.inline = None;
                let locations = std::mem::take(&mut record.locations);
                let nested = std::mem::take(&mut record.nested);
                self.free_copies(object, locations);
                for inner in nested {
                    if let Some(r) = self.objects.get_mut(inner) {
                        r.contained_in -= 1;
                        work.push(inner);
                    }
                }
            }
            let record = self.objects.get(object).expect("still here");
            let producer_active = !object.is_put() && self.tasks.get(object.task).is_some_and(|t| !t.state.is_ended());
            if record.lineage_uses == 0 && !producer_active {
                self.objects.remove(object);
                if !object.is_put() {
                    self.on_return_forgotten(object.task, &mut work);
                }
            }
        }
    }

    pub(super) fn subscribe(&mut self, subscriber: TaskId, objects: Vec<ObjectId>) -> Result<(), InputError> {
        if let Some(unknown) = objects.iter().find(|o| self.objects.get(**o).is_none_or(|r| r.released)) {
            return Err(InputError::UnknownObject(*unknown));
        }
        for object in objects {
            let record = self.objects.get_mut(object).expect("checked above");
            if record.is_ready() {
                let msg = HeadToDriver::ObjectReady { object, size: record.size, data: record.data() };
                self.send_to_submitter(subscriber, msg);
            } else if let Some(reason) = record.failure().cloned() {
                self.send_to_submitter(subscriber, HeadToDriver::ObjectFailed { object, reason });
            } else {
                record.waiters_mut().subscribers.insert(subscriber);
            }
        }
        Ok(())
    }

    pub(super) fn on_object_added(&mut self, node: NodeId, object: ObjectId, size: u64) -> Result<(), InputError> {
        let Some(record) = self.objects.get_mut(object) else {
            // Freed meanwhile: the copy is garbage.
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(vec![object]) });
            return Err(InputError::UnknownObject(object));
        };
        if record.released || record.state != ObjState::Ready || record.inline.is_some() {
            self.emit(HeadOutput::ToNode { node, msg: HeadToNode::FreeObjects(vec![object]) });
            return Ok(());
        }
        if record.size != size {
            return Err(InputError::Malformed {
                what: format!("{object} copy of {size} bytes, expected {}", record.size),
            });
        }
        record.locations.insert(node);
        self.nodes.get_mut(node).expect("live node").objects.insert(object);
        Ok(())
    }

    pub(super) fn on_object_removed(&mut self, node: NodeId, object: ObjectId) -> Result<(), InputError> {
        if !self.objects.contains(object) {
            return Err(InputError::UnknownObject(object));
        }
        self.nodes.get_mut(node).expect("live node").objects.remove(&object);
        if self.objects.remove_location(object, node) {
            self.recover_objects(&[object], node);
        }
        Ok(())
    }

    /// The owner died: every object it owns fails with `reason` and is freed.
    pub(super) fn fail_owned_objects(&mut self, owner: TaskId, reason: ErrorReason) {
        for object in self.objects.owned_by(owner, self.jobs.is_driver(owner)) {
            self.fail_object(object, reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ObjectId {
        ObjectId::for_return(TaskId(1), n)
    }

    #[test]
    fn handles_are_counted_per_holder_and_in_total() {
        let mut table = ObjectTable::default();
        let (driver, task) = (TaskId(10), TaskId(20));
        table.create(id(1), driver, 1, false);
        table.add_handles(task, id(1), 2);
        assert_eq!(table.get(id(1)).map(|o| o.handles), Some(3));
        assert!(table.take_handle(task, id(1)));
        assert!(!table.take_handle(TaskId(99), id(1)), "a holder without handles takes none");
        assert_eq!(table.take_all_handles(task, false), vec![id(1)]);
        assert_eq!(table.get(id(1)).map(|o| o.handles), Some(1));
        assert!(table.take_all_handles(task, false).is_empty());
        assert_eq!(table.take_all_handles(driver, true), vec![id(1)], "a driver's own handles are found by a scan");
        assert_eq!(table.get(id(1)).map(|o| (o.handles, o.owner_handles)), Some((0, 0)));
    }

    #[test]
    fn owned_objects_are_listed_in_id_order_and_forgotten_on_removal() {
        let mut table = ObjectTable::default();
        let (owner, driver) = (TaskId(7), TaskId(8));
        for n in [3, 1, 2] {
            table.create(id(n), owner, 0, true);
            table.create(ObjectId::for_put(driver, n), driver, 0, false);
        }
        assert_eq!(table.owned_by(owner, false), vec![id(1), id(2), id(3)]);
        let puts: Vec<ObjectId> = (1..=3).map(|n| ObjectId::for_put(driver, n)).collect();
        assert_eq!(table.owned_by(driver, true), puts, "a driver's objects are found by a scan, in order");
        table.remove(id(2));
        table.remove(puts[0]);
        assert_eq!(table.owned_by(owner, false), vec![id(1), id(3)]);
        assert_eq!(table.owned_by(driver, true), puts[1..].to_vec());
        assert_eq!(table.owned_len(), 2, "only the task owner's objects are indexed");
    }

    #[test]
    fn losing_the_last_copy_is_reported_once_and_remembers_the_node() {
        let mut table = ObjectTable::default();
        table.create(id(1), TaskId(1), 1, true);
        let record = table.get_mut(id(1)).expect("created");
        record.state = ObjState::Ready;
        record.locations.extend([NodeId(1), NodeId(2)]);
        assert!(!table.remove_location(id(1), NodeId(1)), "another copy is left");
        assert!(table.remove_location(id(1), NodeId(2)), "that was the last copy");
        assert!(!table.remove_location(id(1), NodeId(2)), "reported once");
        assert_eq!(table.get(id(1)).and_then(|o| o.lost_with), Some(NodeId(2)));
    }
}
