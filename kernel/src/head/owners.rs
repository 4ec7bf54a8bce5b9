//! What each owner (a driver or a task attempt) owns: the index behind owner death and recursive
//! cancellation, shared by the task and object tables.

use crate::ids::TaskId;
use rustc_hash::{FxHashMap, FxHashSet};
use std::hash::Hash;

/// Emptied sets kept (beyond half the owners) before they are swept.
const EMPTY_SETS_SLACK: usize = 1024;

/// Items per owner. An owner's set is kept when it empties, since a long-lived owner (a driver)
/// soon creates more; emptied sets are swept once there are many of them. Lookup only: listings
/// are sorted.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(serialize = "T: serde::Serialize", deserialize = "T: serde::Deserialize<'de> + Eq + std::hash::Hash"))]
pub(super) struct OwnerIndex<T> {
    sets: FxHashMap<TaskId, FxHashSet<T>>,
    /// Sets that emptied since the last sweep (a new set has no capacity and is not counted).
    empty: usize,
}

impl<T> Default for OwnerIndex<T> {
    fn default() -> Self {
        OwnerIndex { sets: FxHashMap::default(), empty: 0 }
    }
}

impl<T: Copy + Eq + Hash + Ord> OwnerIndex<T> {
    /// Records that `owner` owns `item`; false if it was already recorded.
    pub fn insert(&mut self, owner: TaskId, item: T) -> bool {
        let set = self.sets.entry(owner).or_default();
        if set.is_empty() && set.capacity() > 0 {
            self.empty -= 1;
        }
        set.insert(item)
    }

    /// Forgets that `owner` owns `item`; false if it was not recorded.
    pub fn remove(&mut self, owner: TaskId, item: T) -> bool {
        let Some(set) = self.sets.get_mut(&owner) else { return false };
        if !set.remove(&item) {
            return false;
        }
        if set.is_empty() {
            self.empty += 1;
            if self.empty > EMPTY_SETS_SLACK + self.sets.len() / 2 {
                self.sets.retain(|_, set| !set.is_empty());
                self.empty = 0;
            }
        }
        true
    }

    /// Whether `owner` is recorded as owning `item`.
    pub fn contains(&self, owner: TaskId, item: T) -> bool {
        self.sets.get(&owner).is_some_and(|s| s.contains(&item))
    }

    /// What `owner` owns, in no particular order (for order-independent work only).
    pub fn items_unordered(&self, owner: TaskId) -> impl Iterator<Item = T> + '_ {
        self.sets.get(&owner).into_iter().flatten().copied()
    }

    /// What `owner` owns, in ascending order.
    pub fn items(&self, owner: TaskId) -> Vec<T> {
        let mut items: Vec<T> = self.items_unordered(owner).collect();
        items.sort_unstable();
        items
    }

    /// The number of (owner, item) pairs.
    pub fn pairs(&self) -> usize {
        self.sets.values().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptied_sets_are_reused_then_swept_and_listings_are_sorted() {
        let mut index: OwnerIndex<u32> = OwnerIndex::default();
        let owner = TaskId(1);
        for item in [3, 1, 2] {
            assert!(index.insert(owner, item));
        }
        assert!(!index.insert(owner, 2), "recorded once");
        assert_eq!(index.items(owner), vec![1, 2, 3]);
        for item in [1, 2, 3] {
            assert!(index.remove(owner, item));
        }
        assert!(!index.remove(owner, 3), "already forgotten");
        assert_eq!((index.empty, index.pairs()), (1, 0), "the emptied set is kept and counted");
        assert!(index.insert(owner, 9));
        assert_eq!(index.empty, 0, "refilling it uncounts it");
        for n in 0..5_000u64 {
            index.insert(TaskId(100 + n), 0);
            index.remove(TaskId(100 + n), 0);
        }
        // A sweep comes once the emptied sets outnumber 1,024 plus half the owners: about every 2,050.
        assert!(index.sets.len() <= 2_100, "emptied sets are swept, {} of 5,001 kept", index.sets.len());
        assert!(index.contains(owner, 9) && index.pairs() == 1, "a non-empty set survives the sweep");
    }
}
