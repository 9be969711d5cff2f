//! The due-date scheduler: turns durable timers into commands.
//!
//! A rental's `overdue` timer is a row of `deadline`, set in the append transaction of its
//! `RentalOpened` and cancelled in that of its `RentalClosed` (see [`eventstore::deadline`]).
//! A scheduler runs in every `serve` and `worker` process. Each round it opens a transaction,
//! claims up to [`SchedulerConfig::batch`] due rows with `for update skip locked` (rows another
//! process holds are skipped, not waited for), runs `MarkOverdue` for each through the event
//! store inside that same transaction, deletes the rows and commits: the timers' deletion and the
//! events they caused commit together or not at all. So a timer fires once across any number of
//! processes, and a crash at any moment (kill -9 included) leaves either both or neither; the
//! rows of a rolled-back round are claimed again by the next one.
//!
//! The aggregate is the last word: `MarkOverdue` on a rental that is returned (on its own stream,
//! or on the movie's, through the rental lookup), already overdue, or due at another time records
//! nothing, so a late or repeated timer is harmless. A round that meets a concurrent append to one
//! of its rentals (a return at that instant) rolls back and is run again at once, against fresh
//! state.
//!
//! Between rounds the scheduler sleeps until the earliest timer is due, at most
//! [`SchedulerConfig::poll`]. A timer set when its due time had already passed (a back-dated rent)
//! waits [`SchedulerConfig::grace`] after it was set, so that a back-office entry of a rental and
//! its return, sent one after the other, is not marked overdue in between.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::rental::{Rental, RentalCommand};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::engine::Status;
use eventstore::{deadline, BatchCommand, CommandError, CommandOutcome, EventStore, Metadata};

/// The scheduler's name in `/api/v1/admin/projections` and in `scheduler_status`.
pub const NAME: &str = "due-dates";

/// The histogram of the delay from a timer's due time to the commit of the event it fired.
pub const DELAY_HISTOGRAM: &str = "deadline_fire_delay_seconds";

/// How the scheduler paces itself.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// The most timers fired in one transaction.
    pub batch: i64,
    /// The longest sleep between rounds.
    pub poll: Duration,
    /// How long a timer set when already due waits after it was set.
    pub grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { batch: 250, poll: Duration::from_secs(1), grace: Duration::from_secs(2) }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Timers claimed, fired and deleted.
    pub claimed: usize,
    /// `RentalOverdue` events appended (the other timers were no-ops).
    pub overdue: usize,
    /// The position of the last event appended (0 when none).
    pub last_position: i64,
    /// The round met a concurrent append and rolled back: run it again.
    pub contended: bool,
}

/// The due-date scheduler of one process.
#[derive(Clone)]
pub struct Scheduler {
    pool: PgPool,
    store: EventStore,
    config: SchedulerConfig,
}

/// A due timer as claimed.
#[derive(sqlx::FromRow)]
struct Due {
    stream_id: String,
    due_at: DateTime<Utc>,
    correlation_id: Option<String>,
    returned_at: Option<DateTime<Utc>>,
}

impl Scheduler {
    /// A scheduler that fires through `store`.
    pub fn new(pool: PgPool, store: EventStore) -> Self {
        Self::with_config(pool, store, SchedulerConfig::default())
    }

    /// The same, paced by `config`.
    pub fn with_config(pool: PgPool, store: EventStore, config: SchedulerConfig) -> Self {
        Self { pool, store, config }
    }

    /// Runs one round: claims the due timers (up to the batch size), fires them, deletes them and
    /// commits, all in one transaction.
    pub async fn fire_due(&self) -> Result<Round, CommandError<domain::rental::RentalError>> {
        let mut tx = eventstore::db::begin(&self.pool).await?;
        let due: Vec<Due> = sqlx::query_as(
            "select d.stream_id, d.due_at, o.metadata->>'correlation_id' as correlation_id, l.returned_at
               from deadline d
               left join events o
                 on o.aggregate_type = 'rental' and o.aggregate_id = d.stream_id and o.sequence = 1
               left join rental_lookup l on l.rental_id = d.stream_id::uuid
              where d.kind = $1 and d.due_at <= now()
                and d.created_at <= now() - make_interval(secs => $3)
              order by d.due_at
              limit $2
              for update of d skip locked",
        )
        .bind(deadline::OVERDUE)
        .bind(self.config.batch)
        .bind(self.config.grace.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            return Ok(Round::default());
        }
        let commands = due
            .iter()
            .map(|d| BatchCommand {
                aggregate_id: d.stream_id.clone(),
                command: RentalCommand::MarkOverdue { due_at: d.due_at, returned_at: d.returned_at },
                // The system acts (no actor, no request of its own) on behalf of the chain the
                // rent started; no event caused it but the passing of time.
                metadata: Metadata {
                    actor_id: None,
                    request_id: None,
                    correlation_id: d.correlation_id.clone(),
                    causation_id: None,
                },
            })
            .collect();
        let outcomes = match self.store.execute_batch_in::<Rental>(&mut tx, commands).await {
            Ok(outcomes) => outcomes,
            Err(CommandError::Conflict | CommandError::Unique(_)) => {
                tx.rollback().await?;
                return Ok(Round { contended: true, ..Round::default() });
            }
            Err(error) => return Err(error),
        };
        let mut round = Round { claimed: due.len(), ..Round::default() };
        let mut fired_due = Vec::new();
        for (timer, outcome) in due.iter().zip(&outcomes) {
            match outcome {
                CommandOutcome::Appended(events) if !events.is_empty() => {
                    round.overdue += 1;
                    round.last_position =
                        round.last_position.max(events.iter().map(|e| e.position).max().unwrap_or(0));
                    fired_due.push(timer.due_at);
                }
                CommandOutcome::Appended(_) => {}
                CommandOutcome::Failed(error) => {
                    // Only a stream that was never opened refuses; its timer can never fire.
                    tracing::warn!(rental = %timer.stream_id, %error, "dropping a timer its rental refuses");
                }
                CommandOutcome::Skipped => {}
            }
        }
        let ids: Vec<&str> = due.iter().map(|d| d.stream_id.as_str()).collect();
        sqlx::query("delete from deadline where kind = $1 and stream_id = any($2)")
            .bind(deadline::OVERDUE)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let committed = Utc::now();
        if round.last_position > 0 {
            self.store.announce(round.last_position);
        }
        for due_at in fired_due {
            let delay = (committed - due_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            metrics::histogram!(DELAY_HISTOGRAM).record(delay.max(0.0));
        }
        metrics::counter!("deadlines_fired_total", "outcome" => "overdue").increment(round.overdue as u64);
        metrics::counter!("deadlines_fired_total", "outcome" => "no_op")
            .increment((round.claimed - round.overdue) as u64);
        Ok(round)
    }

    /// How long until the earliest timer may fire, at most the poll interval. Only the timers due
    /// within the poll interval can be earlier than that, so the statement reads those alone,
    /// through the index on `due_at`, however many rentals are open.
    async fn next_wait(&self) -> Result<Duration, sqlx::Error> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "select extract(epoch from min(greatest(due_at, created_at + make_interval(secs => $1))) - now())::float8
               from deadline
              where due_at <= now() + make_interval(secs => $2)",
        )
        .bind(self.config.grace.as_secs_f64())
        .bind(self.config.poll.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        let poll = self.config.poll;
        Ok(seconds.map_or(poll, |s| Duration::from_secs_f64(s.clamp(0.0, poll.as_secs_f64()))))
    }

    /// Fires timers as they fall due until `shutdown`. A failing round is retried with backoff
    /// and its error shown in the scheduler's status until a round succeeds.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failing = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.fire_due().await {
                Ok(round) => {
                    if failing {
                        failing = !self.record(None, round.last_position).await;
                    } else if round.last_position > 0 {
                        self.record(None, round.last_position).await;
                    }
                    backoff = Duration::from_millis(100);
                    if round.contended || round.claimed as i64 >= self.config.batch {
                        continue;
                    }
                    match self.next_wait().await {
                        Ok(wait) => wait,
                        Err(_) => self.config.poll,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "firing due timers failed; retrying");
                    failing = true;
                    self.record(Some(&error.to_string()), 0).await;
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    wait
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Records the last event fired and the error of a failing round (`None` clears it); `true`
    /// when recorded.
    async fn record(&self, error: Option<&str>, last_position: i64) -> bool {
        let result = sqlx::query(
            "insert into scheduler_status as s (name, last_position, updated_at, last_error, failing_since)
             values ($1, $2, now(), $3, case when $3::text is null then null else now() end)
             on conflict (name) do update
                set last_position = greatest(s.last_position, excluded.last_position),
                    updated_at = now(),
                    last_error = excluded.last_error,
                    failing_since = case when excluded.last_error is null then null
                                         else coalesce(s.failing_since, now()) end",
        )
        .bind(NAME)
        .bind(last_position)
        .bind(error)
        .execute(&self.pool)
        .await;
        if let Err(error) = &result {
            tracing::debug!(%error, "could not record the scheduler's status");
        }
        result.is_ok()
    }
}

/// The scheduler's progress, shaped like a projection's: the last `RentalOverdue` it appended,
/// how many timers are due and not fired yet and how late the oldest of them is, and its state.
pub async fn status(pool: &PgPool) -> Result<Status, sqlx::Error> {
    sqlx::query_as(
        "select $1::text as name, coalesce(s.last_position, 0) as position,
                due.count as lag_events,
                coalesce(extract(epoch from (now() - due.oldest))::float8, 0) as lag_seconds,
                case when s.last_error is not null then 'failing'
                     when due.count > 0 then 'catching-up'
                     else 'running' end as state,
                s.last_error, s.updated_at
           from (select count(*) as count, min(due_at) as oldest from deadline where due_at <= now()) due
           left join scheduler_status s on s.name = $1",
    )
    .bind(NAME)
    .fetch_one(pool)
    .await
}
