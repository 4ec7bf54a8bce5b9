//! A map whose records live in one dense vector, found through a small hash index.
//!
//! The Head keeps a record per task and per object, tens of thousands of them when a driver
//! submits a burst, each a few hundred bytes. In a hash map the records themselves are the
//! buckets: every lookup lands on a random cache line of a table of megabytes, and on a random
//! page. Here the hash index holds only the key and a slot number (16 or 24 bytes an entry, so
//! it stays in cache), and the records sit in a vector, mostly in the order they were made (a
//! freed slot is taken by the next record made). Work arrives in about that order (tasks end in
//! the order they were submitted), so consecutive lookups touch neighbouring records.
//!
//! When fewer than a quarter of the slots of a large map are full, the records move down into
//! a vector of their own size, in the same order, so that a map that peaked does not keep its
//! peak's memory, nor walk its empty slots when listed. An emptied small map numbers its slots
//! from the start again.
//!
//! Iteration (`iter_unordered`) follows the slots: a function of the operations applied, as a
//! hash map's order is, and like it never to reach an output unsorted. A map serializes as a map
//! of keys to records, as the hash map it replaces did.

use rustc_hash::FxHashMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::hash::Hash;
use std::marker::PhantomData;

/// Maps with at least this many slots give memory back when three quarters of them are empty.
const COMPACT_FROM: usize = 1024;

/// A map from `K` to `V` with its values in a slab (see the module's documentation).
#[derive(Clone)]
pub struct SlabMap<K, V> {
    index: FxHashMap<K, u32>,
    slots: Vec<Option<(K, V)>>,
    /// Empty slots, the last freed on top.
    free: Vec<u32>,
}

impl<K, V> Default for SlabMap<K, V> {
    fn default() -> Self {
        SlabMap { index: FxHashMap::default(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<K: Hash + Eq + Copy, V> SlabMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        let slot = *self.index.get(key)?;
        self.slots[slot as usize].as_ref().map(|(_, v)| v)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = *self.index.get(key)?;
        self.slots[slot as usize].as_mut().map(|(_, v)| v)
    }

    /// Sets the value of `key`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(&slot) = self.index.get(&key) {
            let (_, old) = self.slots[slot as usize].as_mut().expect("an indexed slot is full");
            return Some(std::mem::replace(old, value));
        }
        self.place(key, value);
        None
    }

    /// The value of `key`, made by `make` first if it has none.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let slot = match self.index.get(&key) {
            Some(&slot) => slot,
            None => self.place(key, make()),
        };
        &mut self.slots[slot as usize].as_mut().expect("an indexed slot is full").1
    }

    /// Puts a new entry in a free slot, or a new one; returns the slot.
    fn place(&mut self, key: K, value: V) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((key, value));
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("more than 2^32 entries");
                self.slots.push(Some((key, value)));
                slot
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// Removes the entry of `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.index.remove(key)?;
        let (_, value) = self.slots[slot as usize].take().expect("an indexed slot is full");
        if self.index.is_empty() && self.slots.len() < COMPACT_FROM {
            self.slots.clear();
            self.free.clear();
        } else {
            self.free.push(slot);
            if self.slots.len() >= COMPACT_FROM && self.index.len() * 4 < self.slots.len() {
                self.compact();
            }
        }
        Some(value)
    }

    /// Moves the records down into a vector of their own size, in slot order. At least three
    /// quarters of the slots were freed since the last time, so the work is constant per removal.
    fn compact(&mut self) {
        let live = self.index.len();
        let mut slots = Vec::with_capacity((2 * live).max(COMPACT_FROM / 2));
        for (key, value) in std::mem::take(&mut self.slots).into_iter().flatten() {
            *self.index.get_mut(&key).expect("a full slot is indexed") = slots.len() as u32;
            slots.push(Some((key, value)));
        }
        self.slots = slots;
        self.free = Vec::new();
        self.index.shrink_to(2 * live);
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    /// Every entry, in slot order (see the module's documentation).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(k, v)| (k, v)))
    }

    /// Every entry, to change, in slot order.
    pub fn iter_mut_unordered(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.slots.iter_mut().filter_map(|s| s.as_mut().map(|(k, v)| (&*k, v)))
    }
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, V> std::ops::Index<&K> for SlabMap<K, V> {
    type Output = V;

    /// The value of `key`; panics if it has none.
    fn index(&self, key: &K) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no entry for {key:?}"))
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SlabMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.slots.iter().flatten().map(|(k, v)| (k, v))).finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SlabMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.index.len()))?;
        for (k, v) in self.slots.iter().flatten() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for SlabMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Copy,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Deserialize<'de> + Hash + Eq + Copy,
            V: Deserialize<'de>,
        {
            type Value = SlabMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SlabMap::new();
                while let Some((k, v)) = access.next_entry()? {
                    if map.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("a key appears twice in the map"));
                    }
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::{SlabMap, COMPACT_FROM};
    use std::collections::BTreeMap;

    /// Random inserts and removals over `keys` keys, inserting with probability `inserts[phase]`
    /// percent in each phase of `steps` steps, checked against a `BTreeMap`.
    fn agrees_with_a_btree_map(keys: u64, steps: u64, inserts: &[u64]) {
        let mut ours: SlabMap<u32, u64> = SlabMap::new();
        let mut model: BTreeMap<u32, u64> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for (phase, &insert) in inserts.iter().enumerate() {
            for step in 0..steps {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = (x % keys) as u32;
                if (x >> 32) % 100 < insert {
                    assert_eq!(ours.insert(key, step), model.insert(key, step), "insert {key} in phase {phase}");
                } else {
                    assert_eq!(ours.remove(&key), model.remove(&key), "remove {key} in phase {phase}");
                }
                if step % 7 == 0 {
                    *ours.get_or_insert_with(key, || 0) += 1;
                    *model.entry(key).or_insert(0) += 1;
                }
                assert_eq!(ours.len(), model.len());
                assert_eq!(ours.get(&key), model.get(&key));
            }
            let mut listed: Vec<(u32, u64)> = ours.iter_unordered().map(|(k, v)| (*k, *v)).collect();
            listed.sort_unstable();
            assert_eq!(listed, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), "after phase {phase}");
        }
    }

    #[test]
    fn slab_map_agrees_with_a_btree_map_over_random_operations() {
        agrees_with_a_btree_map(300, 20_000, &[60]);
    }

    #[test]
    fn slab_map_agrees_with_a_btree_map_while_it_grows_and_compacts() {
        // Grows past `COMPACT_FROM` slots, shrinks to a few records (compacting on the way), and
        // grows again over the compacted slots, twice.
        agrees_with_a_btree_map(6_000, 30_000, &[90, 5, 90, 2, 50]);
    }

    #[test]
    fn freed_slots_are_reused_and_an_emptied_small_map_numbers_from_the_start() {
        let mut map: SlabMap<u32, u32> = SlabMap::new();
        for k in 0..10 {
            map.insert(k, k);
        }
        map.remove(&3);
        map.insert(100, 100);
        assert_eq!(map.slots.len(), 10, "the freed slot was taken again");
        for k in (0..10).filter(|&k| k != 3) {
            map.remove(&k);
        }
        map.remove(&100);
        assert!(map.is_empty());
        assert!(map.slots.is_empty() && map.free.is_empty(), "slots {} free {:?}", map.slots.len(), map.free);
    }

    #[test]
    fn a_large_map_that_empties_gives_its_memory_back_and_keeps_its_order() {
        let mut map: SlabMap<u32, [u64; 8]> = SlabMap::new();
        for k in 0..100_000 {
            map.insert(k, [k as u64; 8]);
        }
        let peak = map.slots.capacity();
        // Every 1000th record stays.
        for k in (0..100_000).filter(|k| k % 1000 != 0) {
            map.remove(&k);
        }
        assert_eq!(map.len(), 100);
        assert!(map.slots.len() < 4 * COMPACT_FROM, "{} slots for 100 records", map.slots.len());
        assert!(map.slots.capacity() * 10 < peak, "capacity {} after a peak of {peak}", map.slots.capacity());
        let listed: Vec<u32> = map.iter_unordered().map(|(k, _)| *k).collect();
        assert_eq!(listed, (0..100).map(|i| i * 1000).collect::<Vec<_>>(), "slot order kept");
        for k in (0..100).map(|i| i * 1000) {
            assert_eq!(map.get(&k), Some(&[k as u64; 8]));
            map.remove(&k);
        }
        assert!(map.is_empty() && map.slots.is_empty() && map.free.is_empty());
    }

    #[test]
    fn slab_map_round_trips_through_postcard_as_a_map() {
        let mut map: SlabMap<u64, String> = SlabMap::new();
        map.insert(7, "seven".into());
        map.insert(1, "one".into());
        map.remove(&7);
        map.insert(9, "nine".into());
        let bytes = postcard::to_allocvec(&map).unwrap();
        let as_map: BTreeMap<u64, String> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(as_map, BTreeMap::from([(1, "one".to_string()), (9, "nine".to_string())]));
        let back: SlabMap<u64, String> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.get(&9).map(String::as_str), Some("nine"));
        assert_eq!(back.len(), 2);
        let twice = postcard::to_allocvec(&BTreeMap::from([(1u64, "a")])).unwrap();
        let mut doubled = twice.clone();
        doubled[0] = 2;
        doubled.extend_from_slice(&twice[1..]);
        assert!(postcard::from_bytes::<SlabMap<u64, String>>(&doubled).is_err(), "a repeated key is refused");
    }
}
