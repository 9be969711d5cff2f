//! A map whose memory is bounded by two generations of at most `capacity` entries each: when the
//! young one is full it becomes the old one and the old one is dropped; an entry found in the old
//! one moves back to the young one. So what is in use stays, what is not goes within two
//! generations, and no entry is ever evicted one at a time (no list to keep in order).
//!
//! Not shared by itself: its users keep it behind their own lock.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `2 × capacity` entries (`0` keeps none).
#[derive(Debug)]
pub struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Generations<K, V> {
    /// An empty map of at most `2 × capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), capacity }
    }

    /// The entry of `key`, moved to the young generation when it was in the old one.
    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        if !self.young.contains_key(key) {
            let value = self.old.remove(key)?;
            self.insert(key.clone(), value);
        }
        self.young.get_mut(key)
    }

    /// The entry of `key`, wherever it is, without moving it.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Puts an entry in the young generation (replacing any entry of `key`), which becomes the
    /// old one first when it is full.
    pub fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        self.old.remove(&key);
        if self.young.len() >= self.capacity && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_two_generations_are_kept_and_an_entry_in_use_stays() {
        let mut map = Generations::new(4);
        for i in 0..5 {
            map.insert(i, i * 10);
        }
        // The fifth entry started a new generation.
        assert_eq!(map.len(), 5);
        // 0 is used again: it moves back to the young generation.
        assert_eq!(map.get(&0), Some(&mut 0));
        for i in 5..9 {
            map.insert(i, i * 10);
        }
        assert!(map.len() <= 8, "{} entries kept", map.len());
        assert_eq!(map.peek(&0), Some(&0));
        assert_eq!(map.peek(&1), None);
        assert_eq!(map.peek(&8), Some(&80));
    }

    #[test]
    fn an_entry_is_replaced_and_can_be_changed_in_place() {
        let mut map = Generations::new(2);
        map.insert("a", 1);
        map.insert("a", 2);
        assert_eq!(map.len(), 1);
        *map.get(&"a").expect("kept") += 1;
        assert_eq!(map.peek(&"a"), Some(&3));
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing() {
        let mut map = Generations::new(0);
        map.insert(1, 1);
        assert!(map.is_empty());
        assert_eq!(map.get(&1), None);
    }
}
