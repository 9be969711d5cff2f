//! The recent log, read once for all the projections of a process.
//!
//! Every projection reads the same log, and they usually stand within a batch of each other: read
//! on its own, each event was fetched, sent and decoded once per projection. A read behind the
//! horizon is final: every event between its starting checkpoint and the last event it returned is
//! in it (their transactions ended before the read), and no such event can appear later. So the
//! engine keeps the last run of the log it read as one contiguous window, and a projection whose
//! checkpoint falls inside it takes its events from there; only what lies beyond the window is
//! read from the log, in the projection's own transaction, and extends the window.
//!
//! The window holds at most [`RecentLog::CAPACITY`] events; a projection behind it (a new one, or
//! one that was failing) reads the log itself and leaves the window to the others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sqlx::PgConnection;

use super::feed::{read_batch, Checkpoint};
use super::StoredEvent;

/// The window: every event after `after`, up to the last one held, in log order.
#[derive(Default)]
pub(crate) struct RecentLog {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    after: Checkpoint,
    events: VecDeque<Arc<StoredEvent>>,
}

fn key(event: &StoredEvent) -> Checkpoint {
    Checkpoint { xid: event.xid, position: event.position }
}

impl Window {
    /// The last checkpoint the window is complete up to.
    fn end(&self) -> Checkpoint {
        self.events.back().map_or(self.after, |e| key(e))
    }
}

impl RecentLog {
    /// Events the window holds at most.
    pub(crate) const CAPACITY: usize = 1024;

    /// Up to `limit` events after `from`, behind the horizon, in log order: from the window as far
    /// as it reaches, then from the log through `conn`.
    pub(crate) async fn read(
        &self,
        conn: &mut PgConnection,
        from: Checkpoint,
        limit: i64,
    ) -> Result<Vec<Arc<StoredEvent>>, sqlx::Error> {
        let mut events = self.held(from, limit);
        let next = events.last().map_or(from, |e| key(e));
        let wanted = limit - events.len() as i64;
        if wanted > 0 {
            let read = read_batch(conn, next, wanted).await?;
            self.extend(next, &read);
            events.extend(read);
        }
        Ok(events)
    }

    /// What the window holds after `from`, when it holds `from` itself.
    fn held(&self, from: Checkpoint, limit: i64) -> Vec<Arc<StoredEvent>> {
        let window = self.lock();
        if from < window.after || from >= window.end() {
            return Vec::new();
        }
        let start = window.events.partition_point(|e| key(e) <= from);
        window.events.range(start..).take(limit.max(0) as usize).cloned().collect()
    }

    /// Adds a read that started at `next` (complete up to its last event) to the window: what lies
    /// beyond the window's end when the read starts inside it, or the read as the new window when
    /// it starts beyond the window's end.
    fn extend(&self, next: Checkpoint, read: &[Arc<StoredEvent>]) {
        let Some(last) = read.last() else { return };
        let mut window = self.lock();
        let end = window.end();
        if next < window.after || key(last) <= end {
            return;
        }
        if next > end {
            window.after = next;
            window.events.clear();
        }
        let fresh = read.partition_point(|e| key(e) <= end);
        window.events.extend(read[fresh..].iter().cloned());
        while window.events.len() > Self::CAPACITY {
            if let Some(dropped) = window.events.pop_front() {
                window.after = key(&dropped);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(xid: i64, position: i64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            position,
            xid,
            event_id: uuid::Uuid::nil(),
            aggregate_type: "movie".into(),
            aggregate_id: "m".into(),
            sequence: position,
            event_type: "MovieRetired".into(),
            event_version: "1.0".into(),
            payload: serde_json::json!({}),
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
        })
    }

    fn at(xid: i64, position: i64) -> Checkpoint {
        Checkpoint { xid, position }
    }

    fn positions(events: &[Arc<StoredEvent>]) -> Vec<i64> {
        events.iter().map(|e| e.position).collect()
    }

    #[test]
    fn a_checkpoint_inside_the_window_is_served_from_it_and_one_outside_is_not() {
        let log = RecentLog::default();
        log.extend(at(0, 0), &[event(10, 1), event(10, 2), event(12, 3)]);
        assert_eq!(positions(&log.held(at(0, 0), 10)), [1, 2, 3]);
        assert_eq!(positions(&log.held(at(10, 1), 10)), [2, 3]);
        assert_eq!(positions(&log.held(at(10, 1), 1)), [2]);
        // At the window's end, or past it: nothing held.
        assert!(log.held(at(12, 3), 10).is_empty());
        assert!(log.held(at(13, 9), 10).is_empty());
    }

    #[test]
    fn a_read_from_inside_the_window_extends_it_and_a_read_beyond_it_replaces_it() {
        let log = RecentLog::default();
        log.extend(at(0, 0), &[event(10, 1), event(10, 2)]);
        // A read that started before the window's end repeats what it holds and adds the rest.
        log.extend(at(10, 1), &[event(10, 2), event(11, 4)]);
        assert_eq!(positions(&log.held(at(0, 0), 10)), [1, 2, 4]);
        // A read beyond the end leaves a gap (positions 5 to 7 were read by nobody): it starts anew.
        log.extend(at(14, 7), &[event(14, 8)]);
        assert!(log.held(at(0, 0), 10).is_empty());
        assert_eq!(positions(&log.held(at(14, 7), 10)), [8]);
        // A read from behind the window leaves it as it is.
        log.extend(at(0, 0), &[event(10, 1)]);
        assert_eq!(positions(&log.held(at(14, 7), 10)), [8]);
    }

    #[test]
    fn projections_that_read_from_the_window_share_its_events_rather_than_copies() {
        let log = RecentLog::default();
        log.extend(at(0, 0), &[event(10, 1), event(10, 2)]);
        let one = log.held(at(0, 0), 10);
        let other = log.held(at(10, 1), 10);
        assert_eq!(positions(&one), [1, 2]);
        assert!(Arc::ptr_eq(&one[1], &other[0]), "one event, held once");
    }

    #[test]
    fn the_window_keeps_at_most_its_capacity_dropping_the_oldest() {
        let log = RecentLog::default();
        let read: Vec<Arc<StoredEvent>> =
            (1..=RecentLog::CAPACITY as i64 + 10).map(|p| event(p, p)).collect();
        log.extend(at(0, 0), &read);
        assert!(log.held(at(0, 0), 1).is_empty(), "the first ten events were dropped");
        let held = log.held(at(10, 10), i64::MAX);
        assert_eq!(held.len(), RecentLog::CAPACITY);
        assert_eq!(held[0].position, 11);
    }
}
