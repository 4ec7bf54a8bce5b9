//! Small ordered sets and maps kept in one sorted vector.
//!
//! The node's per-task and per-object sets (the objects a task misses or pins, the tasks that pin
//! or wait for an object, the transfers of a copy) hold one or two entries almost always and a
//! hundred at most (a reduce's arguments). A `BTreeSet` allocates a node for its first entry and
//! chases pointers on every lookup; these keep the first entry inline (`SmallVec`) and find
//! entries by binary search. They iterate in key order, as the `BTree` collections they replace,
//! so every decision made from them is the same.

use smallvec::SmallVec;
use std::borrow::Borrow;

/// A set of distinct values in ascending order.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VecSet<T>(SmallVec<[T; 1]>);

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet(SmallVec::new())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for VecSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl<T: Ord> VecSet<T> {
    /// An empty set (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; false if it was already there.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; false if it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self.0.binary_search_by(|e| e.borrow().cmp(value)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `value` is in the set.
    pub fn contains<Q: Ord + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.binary_search_by(|e| e.borrow().cmp(value)).is_ok()
    }

    /// The rank of `value` in the set (its index in ascending order), if present.
    pub fn position<Q: Ord + ?Sized>(&self, value: &Q) -> Option<usize>
    where
        T: Borrow<Q>,
    {
        self.0.binary_search_by(|e| e.borrow().cmp(value)).ok()
    }

    /// Whether the two sets share no value.
    pub fn is_disjoint(&self, other: &VecSet<T>) -> bool {
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            match x.cmp(y) {
                std::cmp::Ordering::Less => _ = a.next(),
                std::cmp::Ordering::Greater => _ = b.next(),
                std::cmp::Ordering::Equal => return false,
            }
        }
        true
    }
}

impl<T> VecSet<T> {
    /// The values in ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest value.
    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<T: Ord> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut values: SmallVec<[T; 1]> = iter.into_iter().collect();
        values.sort_unstable();
        values.dedup();
        VecSet(values)
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = smallvec::IntoIter<[T; 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A map with distinct keys in ascending order.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VecMap<K, V>(SmallVec<[(K, V); 1]>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(SmallVec::new())
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            Err(at) => {
                self.0.insert(at, (key, value));
                None
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|at| &self.0[at].1)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|at| &mut self.0[at].1)
    }

    /// The value of `key`, inserted from `make` if absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.find(&key) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (key, make()));
                at
            }
        };
        &mut self.0[at].1
    }

    /// A map of `entries` already in ascending key order, keys distinct (checked).
    pub fn from_sorted(entries: Vec<(K, V)>) -> Self {
        assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0), "entries not sorted or repeated");
        VecMap(SmallVec::from_vec(entries))
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().map(|at| self.0.remove(at).1)
    }

    /// Whether `key` is in the map.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }
}

impl<K, V> VecMap<K, V> {
    /// The entries in ascending key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The values in ascending key order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> std::ops::Index<&K> for VecMap<K, V> {
    type Output = V;
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    proptest! {
        /// Any sequence of inserts and removes leaves the same contents, in the same order, as a
        /// `BTreeSet`, and every call answers as the `BTreeSet`'s does.
        #[test]
        fn a_vec_set_answers_as_a_btree_set_does(ops in prop::collection::vec((any::<bool>(), 0u8..24), 0..200)) {
            let (mut ours, mut model) = (VecSet::new(), BTreeSet::new());
            for (insert, v) in ops {
                if insert {
                    prop_assert_eq!(ours.insert(v), model.insert(v));
                } else {
                    prop_assert_eq!(ours.remove(&v), model.remove(&v));
                }
                prop_assert_eq!(ours.contains(&v), model.contains(&v));
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.first(), model.first());
            }
            prop_assert!(ours.iter().eq(model.iter()));
            let other: Vec<u8> = (0..24).step_by(5).collect();
            let disjoint = model.is_disjoint(&other.iter().copied().collect());
            prop_assert_eq!(ours.is_disjoint(&other.into_iter().collect()), disjoint);
        }

        /// The same for the map against a `BTreeMap`.
        #[test]
        fn a_vec_map_answers_as_a_btree_map_does(ops in prop::collection::vec((0u8..3, 0u8..24, any::<u32>()), 0..200)) {
            let (mut ours, mut model) = (VecMap::new(), BTreeMap::new());
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(ours.insert(k, v), model.insert(k, v)),
                    1 => prop_assert_eq!(ours.remove(&k), model.remove(&k)),
                    _ => {
                        *ours.get_or_insert_with(k, || 0) += 1;
                        *model.entry(k).or_insert(0) += 1;
                    }
                }
                prop_assert_eq!(ours.get(&k), model.get(&k));
                prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
            }
            prop_assert!(ours.iter().eq(model.iter()));
        }
    }

    #[test]
    fn collecting_sorts_and_drops_repeats() {
        let set: VecSet<u32> = [5, 1, 5, 3, 1].into_iter().collect();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![1, 3, 5]);
    }
}
