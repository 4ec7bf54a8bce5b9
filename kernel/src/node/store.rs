//! The local object table: which objects are sealed here, their sizes, primary or secondary, pins,
//! capacity, and eviction of unpinned secondary copies, least recently used first.
//!
//! The table only decides; the node turns its answers into `DeleteObject` outputs and
//! `ObjectRemoved` reports. Recency is a logical tick, bumped on every use, so eviction order is the
//! same on every run.

use super::io::LocalObject;
use crate::ids::{NodeId, ObjectId, TaskId};
use crate::vecset::{VecMap, VecSet};
use std::collections::VecDeque;

/// What [`ObjectTable::free`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreeResult {
    /// Deleted now.
    Deleted,
    /// Pinned: deleted when the last pin goes.
    Deferred,
    /// Not here.
    Absent,
}

/// The objects sealed in this node's store.
#[derive(Clone, Debug)]
pub(crate) struct ObjectTable {
    capacity_bytes: u64,
    used_bytes: u64,
    tick: u64,
    /// Hashed: looked up by id on every use; listed (rarely) in id order by [`iter`](Self::iter).
    objects: crate::slab::SlabMap<ObjectId, LocalObject>,
    /// The recency index: `(tick, object)` for every use, oldest first. An entry is live while its
    /// tick is the object's `last_used_tick`; older entries of the object are stale, skipped, and
    /// dropped when they reach the front or outnumber the live ones. Ticks only grow, so live
    /// entries are in the order a sorted `(last_used_tick, object)` set would list them.
    lru: VecDeque<(u64, ObjectId)>,
}

impl ObjectTable {
    /// An empty table holding at most `capacity_bytes` of evictable data.
    pub(crate) fn new(capacity_bytes: u64) -> ObjectTable {
        assert!(capacity_bytes > 0, "object store capacity must be positive");
        let table =
            ObjectTable { capacity_bytes, used_bytes: 0, tick: 0, objects: Default::default(), lru: VecDeque::new() };
        assert!(table.objects.is_empty());
        table
    }

    /// Forgets everything (the host deletes the bytes on `Reset`).
    pub(crate) fn clear(&mut self) {
        self.objects.clear();
        self.lru.clear();
        self.used_bytes = 0;
        assert!(self.lru.is_empty());
    }

    pub(crate) fn get(&self, object: ObjectId) -> Option<&LocalObject> {
        self.objects.get(&object)
    }

    pub(crate) fn contains(&self, object: ObjectId) -> bool {
        self.objects.contains_key(&object)
    }

    /// Every entry, in object id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ObjectId, &LocalObject)> {
        let mut entries: Vec<(ObjectId, &LocalObject)> = self.objects.iter_unordered().map(|(o, e)| (*o, e)).collect();
        entries.sort_unstable_by_key(|(o, _)| *o);
        entries.into_iter()
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Marks `object` as just used.
    pub(crate) fn touch(&mut self, object: ObjectId) {
        let entry = self.objects.get_mut(&object).expect("touch of an object that is not local");
        self.tick += 1;
        entry.last_used_tick = self.tick;
        self.record_use(object);
    }

    /// Appends the recency entry of `object`'s use at the current tick; drops the stale entries
    /// once they outnumber the live ones (amortised: each entry is dropped once).
    fn record_use(&mut self, object: ObjectId) {
        self.lru.push_back((self.tick, object));
        if self.lru.len() > 2 * self.objects.len() + 32 {
            let objects = &self.objects;
            self.lru.retain(|(tick, o)| objects.get(o).is_some_and(|e| e.last_used_tick == *tick));
            assert_eq!(self.lru.len(), self.objects.len(), "recency index out of step");
        }
    }

    /// Whether a recency entry is the object's latest use.
    fn is_live(&self, tick: u64, object: ObjectId) -> bool {
        self.objects.get(&object).is_some_and(|e| e.last_used_tick == tick)
    }

    /// Whether a new secondary copy of `size_bytes` could be made to fit by evicting.
    pub(crate) fn could_fit(&self, size_bytes: u64) -> bool {
        let evictable: u64 =
            self.objects.iter_unordered().map(|(_, e)| e).filter(|e| e.is_evictable()).map(|e| e.size).sum();
        assert!(evictable <= self.used_bytes);
        let unevictable = self.used_bytes - evictable;
        unevictable.saturating_add(size_bytes) <= self.capacity_bytes
    }

    /// Evicts unpinned secondary copies, least recently used first, until `size_bytes` more fit or
    /// nothing evictable is left. Returns the evicted objects, in eviction order.
    pub(crate) fn make_room(&mut self, size_bytes: u64) -> Vec<ObjectId> {
        let mut evicted = Vec::new();
        while self.used_bytes.saturating_add(size_bytes) > self.capacity_bytes {
            while self.lru.front().is_some_and(|&(tick, o)| !self.is_live(tick, o)) {
                self.lru.pop_front();
            }
            let victim = self
                .lru
                .iter()
                .find_map(|&(tick, o)| (self.is_live(tick, o) && self.objects[&o].is_evictable()).then_some(o));
            let Some(victim) = victim else { break };
            self.remove(victim);
            evicted.push(victim);
        }
        assert!(evicted.iter().all(|o| !self.objects.contains_key(o)));
        evicted
    }

    /// Records a sealed copy, evicting first to make room (see [`make_room`](Self::make_room)); a
    /// primary copy or a pinned one may still push the store past capacity, since its bytes are
    /// already there. An existing entry is touched and becomes primary if `primary`; a free that
    /// was waiting for it to be unpinned is dropped, since the head asked to delete the copy it
    /// knew of, not the value sealed now (a rebuild's fresh output under the same id).
    pub(crate) fn insert(&mut self, object: ObjectId, size_bytes: u64, primary: bool) -> Vec<ObjectId> {
        if let Some(entry) = self.objects.get_mut(&object) {
            entry.primary |= primary;
            entry.free_pending = false;
            self.touch(object);
            return Vec::new();
        }
        let evicted = self.make_room(size_bytes);
        self.tick += 1;
        let entry = LocalObject {
            size: size_bytes,
            primary,
            pinned_by: VecSet::new(),
            sends: VecMap::new(),
            free_pending: false,
            last_used_tick: self.tick,
        };
        self.objects.insert(object, entry);
        self.record_use(object);
        self.used_bytes += size_bytes;
        assert!(self.objects.contains_key(&object));
        evicted
    }

    fn remove(&mut self, object: ObjectId) {
        let entry = self.objects.remove(&object).expect("removing an object that is not local");
        assert!(!entry.is_pinned(), "removing pinned object {object}");
        assert!(self.used_bytes >= entry.size);
        self.used_bytes -= entry.size;
    }

    /// `task` holds `object` as an argument.
    pub(crate) fn pin(&mut self, object: ObjectId, task: TaskId) {
        let entry = self.objects.get_mut(&object).expect("pinning an object that is not local");
        entry.pinned_by.insert(task);
        self.touch(object);
        assert!(self.objects[&object].is_pinned());
    }

    /// `task` no longer holds `object`. Returns whether the object was deleted (it was freed while pinned).
    pub(crate) fn unpin(&mut self, object: ObjectId, task: TaskId) -> bool {
        let entry = self.objects.get_mut(&object).expect("unpinning an object that is not local");
        let was_pinned = entry.pinned_by.remove(&task);
        assert!(was_pinned, "{task} did not pin {object}");
        self.delete_if_freed(object)
    }

    /// A transfer of `object` to `to` starts.
    pub(crate) fn begin_send(&mut self, object: ObjectId, to: NodeId) {
        let entry = self.objects.get_mut(&object).expect("sending an object that is not local");
        assert!(!entry.free_pending, "sending freed object {object}");
        *entry.sends.get_or_insert_with(to, || 0) += 1;
        self.touch(object);
    }

    /// A transfer of `object` to `to` ended. `None` when no such transfer was in progress; otherwise
    /// whether the object was deleted (it was freed during the transfer).
    pub(crate) fn end_send(&mut self, object: ObjectId, to: NodeId) -> Option<bool> {
        let entry = self.objects.get_mut(&object)?;
        let count = entry.sends.get_mut(&to)?;
        assert!(*count > 0);
        *count -= 1;
        if *count == 0 {
            entry.sends.remove(&to);
        }
        Some(self.delete_if_freed(object))
    }

    fn delete_if_freed(&mut self, object: ObjectId) -> bool {
        let entry = &self.objects[&object];
        if entry.free_pending && !entry.is_pinned() {
            self.remove(object);
            return true;
        }
        false
    }

    /// The head freed `object`: delete it now, or once unpinned.
    pub(crate) fn free(&mut self, object: ObjectId) -> FreeResult {
        let Some(entry) = self.objects.get_mut(&object) else { return FreeResult::Absent };
        if entry.is_pinned() {
            entry.free_pending = true;
            return FreeResult::Deferred;
        }
        self.remove(object);
        assert!(!self.objects.contains_key(&object));
        FreeResult::Deleted
    }

    /// Panics if the table is inconsistent.
    pub(crate) fn check_invariants(&self) {
        // Ticks are distinct and each object has one `last_used_tick`, so as many live entries as
        // objects means every object has its entry.
        assert!(self.lru.iter().zip(self.lru.iter().skip(1)).all(|(a, b)| a.0 < b.0), "recency index out of order");
        let live = self.lru.iter().filter(|&&(tick, o)| self.is_live(tick, o)).count();
        assert_eq!(live, self.objects.len(), "an object is missing from the recency index");
        let mut used_bytes = 0u64;
        for (object, entry) in self.iter() {
            assert!(entry.last_used_tick <= self.tick, "{object} used in the future");
            assert!(!entry.free_pending || entry.is_pinned(), "{object} freed but kept while unpinned");
            assert!(entry.sends.values().all(|c| *c > 0), "{object} has an empty send count");
            used_bytes += entry.size;
        }
        assert_eq!(used_bytes, self.used_bytes, "used bytes out of step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u64) -> ObjectId {
        ObjectId::for_return(TaskId(i), 1)
    }

    #[test]
    fn make_room_evicts_least_recently_used_secondaries_only() {
        let mut t = ObjectTable::new(100);
        assert!(t.insert(obj(1), 40, false).is_empty());
        assert!(t.insert(obj(2), 40, true).is_empty());
        assert!(t.insert(obj(3), 10, false).is_empty());
        t.touch(obj(1));
        let evicted = t.insert(obj(4), 30, false);
        assert_eq!(evicted, vec![obj(3), obj(1)]);
        assert!(t.contains(obj(2)));
        t.check_invariants();
    }

    #[test]
    fn eviction_order_survives_the_recency_index_dropping_stale_entries() {
        let mut t = ObjectTable::new(100);
        for i in 1..=5 {
            t.insert(obj(i), 10, false);
        }
        // Hundreds of uses leave stale entries behind, which the index drops as it grows.
        for round in 0..100 {
            for i in [3, 1, 5, 2, 4] {
                t.touch(obj(i));
                assert!(t.lru.len() <= 2 * 5 + 32 + 1, "round {round}: stale entries pile up");
            }
        }
        t.remove(obj(5));
        t.insert(obj(6), 10, false);
        t.check_invariants();
        // Last uses: 3, 1, 2, 4 in that order, then 6 new: evicted oldest first.
        assert_eq!(t.insert(obj(7), 100, false), vec![obj(3), obj(1), obj(2), obj(4), obj(6)]);
        t.check_invariants();
    }

    #[test]
    fn freed_pinned_object_is_deleted_on_last_unpin() {
        let mut t = ObjectTable::new(100);
        t.insert(obj(1), 10, true);
        t.pin(obj(1), TaskId(9));
        assert_eq!(t.free(obj(1)), FreeResult::Deferred);
        t.check_invariants();
        assert!(t.unpin(obj(1), TaskId(9)));
        assert!(!t.contains(obj(1)));
        assert_eq!(t.used_bytes(), 0);
        t.check_invariants();
    }
}
