//! The states this process last saw its streams in, kept in memory as snapshots that are never
//! trusted alone.
//!
//! Loading a stream for a command costs PostgreSQL a snapshot and up to a snapshot interval of
//! events, read, sent and decoded, for every command; most of them the process itself appended a
//! moment before. A remembered state is used exactly like a snapshot: the load still reads the
//! log, but only the events after the remembered version (usually none: an index probe), so a
//! stream another process appended to is brought up to date from the log, and an append made
//! against a state that is behind still meets the primary key `(aggregate_type, aggregate_id,
//! sequence)`. Only committed states are remembered (a load's, or an append's after its commit),
//! and a state never replaces a newer one.
//!
//! The memory is bounded by two [`Generations`] of at most [`RecentStates::capacity`] streams
//! each.

use std::any::Any;
use std::sync::{Arc, Mutex};

use crate::generations::Generations;
use crate::stream::{Loaded, StreamKind};

/// The streams' remembered states, shared by every clone of a store.
#[derive(Clone)]
pub(crate) struct RecentStates {
    inner: Arc<Mutex<Generations<Key, Remembered>>>,
    capacity: usize,
}

type Key = (&'static str, String);

struct Remembered {
    version: i64,
    state: Box<dyn Any + Send + Sync>,
}

impl RecentStates {
    /// Streams per generation by default: the streams in use at once (a movie and its rentals for
    /// each client at work) stay loaded from memory, and all of them take a few hundred KB.
    pub(crate) const DEFAULT_CAPACITY: usize = 1024;

    /// At most `2 × capacity` states (`0` remembers none).
    pub(crate) fn new(capacity: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(Generations::new(capacity))), capacity }
    }

    /// The remembered state of a stream, if any.
    pub(crate) fn get<A>(&self, aggregate_id: &str) -> Option<Loaded<A>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        if self.capacity == 0 {
            return None;
        }
        let key = (A::TYPE, aggregate_id.to_string());
        let mut generations = self.lock();
        let remembered = generations.get(&key)?;
        let state = remembered.state.downcast_ref::<A>()?.clone();
        Some(Loaded { state, version: remembered.version })
    }

    /// Remembers a committed state of a stream, unless a newer one is remembered already.
    pub(crate) fn put<A>(&self, aggregate_id: &str, state: &A, version: i64)
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        if self.capacity == 0 {
            return;
        }
        let key = (A::TYPE, aggregate_id.to_string());
        let mut generations = self.lock();
        if generations.peek(&key).is_some_and(|r| r.version >= version) {
            return;
        }
        generations.insert(key, Remembered { version, state: Box::new(state.clone()) });
    }

    /// How many streams are remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<Key, Remembered>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::category::Category;

    #[test]
    fn a_state_never_replaces_a_newer_one() {
        let states = RecentStates::new(8);
        states.put::<Category>("a", &Category::default(), 5);
        states.put::<Category>("a", &Category::default(), 4);
        assert_eq!(states.get::<Category>("a").expect("remembered").version, 5);
        states.put::<Category>("a", &Category::default(), 6);
        assert_eq!(states.get::<Category>("a").expect("remembered").version, 6);
    }

    #[test]
    fn at_most_two_generations_are_kept_and_a_state_in_use_stays() {
        let states = RecentStates::new(4);
        for i in 0..4 {
            states.put::<Category>(&format!("s{i}"), &Category::default(), 1);
        }
        // The young generation is full: the next one starts a new generation.
        states.put::<Category>("s4", &Category::default(), 1);
        assert_eq!(states.len(), 5);
        // s0 is used again: it moves back to the young generation.
        assert!(states.get::<Category>("s0").is_some());
        // Filling the young generation again drops the old one, except what was used meanwhile.
        for i in 5..9 {
            states.put::<Category>(&format!("s{i}"), &Category::default(), 1);
        }
        assert!(states.len() <= 8, "{} states kept", states.len());
        assert!(states.get::<Category>("s0").is_some());
        assert!(states.get::<Category>("s1").is_none());
        assert!(states.get::<Category>("s8").is_some());
    }

    #[test]
    fn a_capacity_of_zero_remembers_nothing() {
        let states = RecentStates::new(0);
        states.put::<Category>("a", &Category::default(), 1);
        assert!(states.get::<Category>("a").is_none());
    }
}
