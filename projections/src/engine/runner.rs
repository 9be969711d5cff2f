//! Running projections: one task per projection, woken by NOTIFY, with a polling fallback.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::feed::{ensure_checkpoints, Checkpoint};
use super::window::RecentLog;
use super::{Projection, ProjectionError, Touched};
use eventstore::EVENTS_CHANNEL;

/// Told what a batch changed, around its commit (e.g. to keep a cache from serving stale rows).
pub trait Listener: Send + Sync + 'static {
    /// Called just before the commit of a batch that changed something, while its transaction
    /// still holds the projection's lock: a cache must stop serving what the batch replaces.
    fn committing<'a>(&'a self, projection: &'a str, touched: &'a Touched) -> super::BoxFuture<'a, ()>;

    /// Called after the commit of a batch that changed something.
    fn committed<'a>(&'a self, projection: &'a str, touched: &'a Touched) -> super::BoxFuture<'a, ()>;
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Events per batch.
    pub batch_size: i64,
    /// How often to look for events when no notification came (other processes' appends, a lost
    /// notification, transactions that were still running at the last look).
    pub poll_interval: Duration,
    /// Longest pause between retries of a failing batch.
    pub max_backoff: Duration,
    /// How long after a batch that applied events a projection waits before its next one, so
    /// that the events appended meanwhile go in one batch: under a steady stream of appends, each
    /// projection runs at most one batch (one transaction, a fixed number of round trips) per
    /// this interval instead of one per append. A batch after a quiet spell (the last one longer
    /// ago than this) waits for nothing. Projections a request waits on
    /// ([`Projection::awaited`]) never wait.
    pub gather: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            gather: Duration::from_millis(10),
        }
    }
}

/// The set of projections a process advances.
#[derive(Clone)]
pub struct Engine {
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    listener: Option<Arc<dyn Listener>>,
    config: EngineConfig,
    recent: Arc<RecentLog>,
}

/// The outcome of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Another process holds this projection's lock right now.
    Busy,
    /// Applied this many events (0: caught up).
    Applied(usize),
}

impl Engine {
    /// An engine over these projections.
    pub fn new(pool: PgPool, projections: Vec<Arc<dyn Projection>>, config: EngineConfig) -> Self {
        Self { pool, projections, listener: None, config, recent: Arc::default() }
    }

    /// The same engine, telling `listener` what each batch changed.
    pub fn with_listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The projections.
    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    /// The projection with this name.
    pub fn projection(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name).cloned()
    }

    /// Advances every projection until `shutdown`, each in its own task.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        ensure_checkpoints(&self.pool, &names).await?;
        let (wake_tx, wake_rx) = watch::channel(0u64);
        let listen = tokio::spawn(listen_for_appends(self.pool.clone(), wake_tx, shutdown.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        for projection in &self.projections {
            let engine = self.clone();
            let projection = projection.clone();
            let (wake, shutdown) = (wake_rx.clone(), shutdown.clone());
            tasks.spawn(async move { engine.drive(projection, wake, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
        listen.abort();
        Ok(())
    }

    async fn drive(
        &self,
        projection: Arc<dyn Projection>,
        mut wake: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let name = projection.name();
        let mut backoff = Duration::from_millis(100);
        // After a batch failed, the events it held are applied one a transaction, so that the
        // one that cannot be applied is named (and those before it are not held back with it).
        let mut one_by_one = 0i64;
        let gather = if projection.awaited() { Duration::ZERO } else { self.config.gather };
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let limit = if one_by_one > 0 { 1 } else { self.config.batch_size };
            let outcome = self.run_batch_of(projection.as_ref(), limit).await;
            // After a batch that applied events, the next starts no sooner than `gather` later.
            let next_at = (!gather.is_zero() && matches!(outcome, Ok(BatchOutcome::Applied(n)) if n > 0))
                .then(|| tokio::time::Instant::now() + gather);
            let pause = match outcome {
                Ok(BatchOutcome::Applied(n)) if n as i64 >= limit => {
                    backoff = Duration::from_millis(100);
                    one_by_one = (one_by_one - n as i64).max(0);
                    continue;
                }
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    one_by_one = 0;
                    self.config.poll_interval
                }
                Err(error) if limit > 1 && !matches!(error, ProjectionError::RebuildRunning(_)) => {
                    tracing::warn!(projection = name, %error, "projection batch failed; applying its events one by one");
                    one_by_one = limit;
                    continue;
                }
                Err(error) => {
                    match &error {
                        ProjectionError::AtEvent { position, stream, event_type, source } => tracing::error!(
                            projection = name, position, stream, event_type, error = %source, ?backoff,
                            "projection cannot apply an event; retrying it, never skipping it"
                        ),
                        _ => {
                            tracing::error!(projection = name, %error, ?backoff, "projection batch failed; retrying")
                        }
                    }
                    record_error(&self.pool, name, &error.to_string()).await;
                    let pause = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    pause
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = wake.changed() => {},
                () = tokio::time::sleep(pause) => {},
            }
            if let Some(next_at) = next_at {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(next_at) => {},
                }
            }
        }
    }

    /// Applies one batch of one projection (used by the runner and by tests).
    pub async fn run_batch(&self, projection: &dyn Projection) -> Result<BatchOutcome, ProjectionError> {
        self.run_batch_of(projection, self.config.batch_size).await
    }

    /// Applies at most `limit` events of one projection in one transaction. A batch of one event
    /// that fails says which event it was ([`ProjectionError::AtEvent`]).
    pub async fn run_batch_of(
        &self,
        projection: &dyn Projection,
        limit: i64,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut tx = eventstore::db::begin(&self.pool).await?;
        // The lock, the read models' `search_path`, kept plans for the batch's statements (the
        // log's read among them) and the checkpoint read after the lock, in one round trip.
        let (locked, xid, position): (bool, Option<i64>, Option<i64>) =
            sqlx::query_as("select locked, last_xid, last_position from projection_batch_start($1)")
                .bind(projection.name())
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            return Ok(BatchOutcome::Busy);
        }
        let from = match (xid, position) {
            (Some(xid), Some(position)) => Checkpoint { xid, position },
            _ => Checkpoint::default(),
        };
        let events = self.recent.read(&mut tx, from, limit).await?;
        let Some(last) = events.last() else {
            return Ok(BatchOutcome::Applied(0));
        };
        let to = Checkpoint { xid: last.xid, position: last.position };
        let mut touched = Touched::default();
        let applied = async {
            projection.apply_batch(&mut tx, &events, &mut touched).await?;
            save_checkpoint(&mut tx, projection.name(), to).await?;
            Ok::<_, ProjectionError>(())
        }
        .await;
        if let Err(error) = applied {
            return Err(match events.as_slice() {
                [event] if !matches!(error, ProjectionError::AtEvent { .. }) => ProjectionError::AtEvent {
                    position: event.position,
                    stream: format!("{}/{}", event.aggregate_type, event.aggregate_id),
                    event_type: event.event_type.clone(),
                    source: Box::new(error),
                },
                _ => error,
            });
        }
        let listener = self.listener.as_ref().filter(|_| !touched.is_empty());
        if let Some(listener) = listener {
            listener.committing(projection.name(), &touched).await;
        }
        tx.commit().await?;
        observe_lag(projection.name(), &events);
        if let Some(listener) = listener {
            listener.committed(projection.name(), &touched).await;
        }
        Ok(BatchOutcome::Applied(events.len()))
    }

    /// Runs batches of one projection until it is caught up (for tests and the CLI).
    pub async fn catch_up(&self, name: &str) -> Result<usize, ProjectionError> {
        let projection = self
            .projection(name)
            .ok_or_else(|| ProjectionError::Decode(format!("no projection named {name}")))?;
        ensure_checkpoints(&self.pool, &[name]).await?;
        let mut total = 0;
        loop {
            match self.run_batch(projection.as_ref()).await? {
                BatchOutcome::Applied(0) => return Ok(total),
                BatchOutcome::Applied(n) => total += n,
                BatchOutcome::Busy => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// The histogram of the time from an event's recording to the commit of the batch that applied
/// it, by projection: the read model's (or the process manager's) lag as a reader meets it.
pub const LAG_HISTOGRAM: &str = "projection_commit_lag_seconds";

/// Records, for each event of a batch just committed, how long after its `recorded_at` (taken
/// inside its append transaction, just before that commits) the batch committed. The clocks are
/// PostgreSQL's and this process's; on one machine they agree, and a negative difference counts
/// as 0.
fn observe_lag(projection: &'static str, events: &[Arc<super::StoredEvent>]) {
    let now = chrono::Utc::now();
    let histogram = metrics::histogram!(LAG_HISTOGRAM, "projection" => projection);
    for event in events {
        let lag = (now - event.recorded_at).to_std().unwrap_or_default();
        histogram.record(lag.as_secs_f64());
    }
}

/// Moves the checkpoint and clears any recorded error.
pub(crate) async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    to: Checkpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into projection_checkpoint (name, last_xid, last_position, updated_at) values ($1, $2, $3, now())
         on conflict (name) do update
            set last_xid = $2, last_position = $3, updated_at = now(), last_error = null, failing_since = null",
    )
    .bind(name)
    .bind(to.xid)
    .bind(to.position)
    .execute(conn)
    .await?;
    Ok(())
}

async fn record_error(pool: &PgPool, name: &str, error: &str) {
    let result = sqlx::query(
        "update projection_checkpoint
            set last_error = $2, failing_since = coalesce(failing_since, now())
          where name = $1",
    )
    .bind(name)
    .bind(error)
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(projection = name, error = %e, "could not record the projection's error");
    }
}

/// Forwards NOTIFYs on the events channel to the projectors; reconnects when the connection drops.
async fn listen_for_appends(pool: PgPool, wake: watch::Sender<u64>, shutdown: CancellationToken) {
    let mut count = 0u64;
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "cannot LISTEN yet; projectors poll meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(EVENTS_CHANNEL).await {
            tracing::debug!(%error, "LISTEN failed; projectors poll meanwhile");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => {
                        count += 1;
                        wake.send_replace(count);
                    }
                    // The connection was lost (and notifications with it): wake everyone to poll.
                    Ok(None) => {
                        count += 1;
                        wake.send_replace(count);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "LISTEN connection failed");
                        break;
                    }
                },
            }
        }
    }
}
