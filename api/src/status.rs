//! What `/ready` and `/metrics` read rather than count: projection progress, the due-date
//! process, the email queue, the count of overdue rentals and whether Redis answers. Read at most once a second
//! per process and shared between callers, so a flood of probes or scrapes costs PostgreSQL and
//! Redis no more than one reading a second: callers that arrive while a reading runs wait for it
//! instead of starting their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use projections::engine::Status;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::cache::Cache;

/// How long a reading is served before the next caller takes a new one.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// One reading. `None` where PostgreSQL did not answer (the error is logged once per reading).
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Every projection and process manager of the engine.
    pub projections: Option<Vec<Status>>,
    /// The due-date process.
    pub deadlines: Option<Status>,
    /// The email sender (its lag is the queue's depth).
    pub sender: Option<Status>,
    /// Active rentals past their due time.
    pub overdue: Option<i64>,
    /// Whether Redis answered a PING; `None` for a process without a cache.
    pub redis: Option<bool>,
}

impl Reading {
    /// Whether PostgreSQL answered the projection query.
    pub fn postgres_up(&self) -> bool {
        self.projections.is_some()
    }
}

/// A reading and when it was taken.
type Taken = (Instant, Arc<Reading>);

/// The shared reading of one process. Cloning shares it.
#[derive(Clone)]
pub struct StatusBoard {
    pool: PgPool,
    cache: Option<Cache>,
    last: Arc<Mutex<Option<Taken>>>,
}

impl StatusBoard {
    /// A board over `pool` and, for a process that serves the API, its cache.
    pub fn new(pool: PgPool, cache: Option<Cache>) -> Self {
        Self { pool, cache, last: Arc::new(Mutex::new(None)) }
    }

    /// The latest reading, taken now when the last one is older than [`FRESH_FOR`]. The lock is
    /// held while reading, so simultaneous callers share one reading.
    pub async fn read(&self) -> Arc<Reading> {
        let mut last = self.last.lock().await;
        if let Some((at, reading)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return reading.clone();
            }
        }
        let reading = Arc::new(self.take().await);
        *last = Some((Instant::now(), reading.clone()));
        reading
    }

    async fn take(&self) -> Reading {
        let redis = async {
            match &self.cache {
                Some(cache) => Some(cache.is_up().await),
                None => None,
            }
        };
        let rentals = projections::rentals::RentalsReader::new(self.pool.clone());
        let (projections, deadlines, sender, overdue, redis) = tokio::join!(
            projections::engine::checkpoints(&self.pool),
            projections::deadlines::status(&self.pool),
            projections::notifications::sender_status(&self.pool),
            rentals.overdue_count(),
            redis,
        );
        Reading {
            projections: logged(projections, "projection progress"),
            deadlines: logged(deadlines, "due-date progress"),
            sender: logged(sender, "the notification queue"),
            overdue: logged(overdue, "the count of overdue rentals"),
            redis,
        }
    }
}

fn logged<T>(result: Result<T, sqlx::Error>, what: &str) -> Option<T> {
    result.map_err(|error| tracing::warn!(%error, "{what} unavailable")).ok()
}
