//! The command executor: load, handle, append, retry on conflict. It also counts commands by
//! outcome and conflicts by command (the `metrics` facade; the binary installs the exporter),
//! marks the request's idempotency claim, when there is one, in the append transaction, and, once
//! the append has committed, tells the [`Notifier`] (which wakes projectors without the command
//! waiting for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::codec::{decode_event, encode_event};
use crate::idempotency::{self, Claim};
use crate::lookup::Constraint;
use crate::notifier::Notifier;
use crate::recent::RecentStates;
use crate::stream::{Loaded, StreamKind};

/// Who and what caused an append; recorded with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// The account that issued the command (`None` for the system itself).
    pub actor_id: Option<Uuid>,
    /// The request id of the HTTP request that carried the command.
    pub request_id: Option<String>,
    /// The request id of the client command that started the chain.
    pub correlation_id: Option<String>,
    /// The `event_id` of the event a process manager reacted to.
    pub causation_id: Option<Uuid>,
}

/// What a command carries besides itself: who and what caused it, and the idempotency claim of
/// the request it belongs to, if any (marked in the append transaction, so a key whose command
/// appended is never run again).
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// Recorded with every event the command appends.
    pub metadata: Metadata,
    /// The request's claim on its `Idempotency-Key`.
    pub claim: Option<Claim>,
}

impl From<Metadata> for CommandContext {
    /// A command that belongs to no idempotent request.
    fn from(metadata: Metadata) -> Self {
        Self { metadata, claim: None }
    }
}

/// One appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position in the log.
    pub position: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Its sequence in its stream.
    pub sequence: i64,
    /// Its type.
    pub event_type: String,
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Committed<A> {
    /// The aggregate's state after the command.
    pub state: A,
    /// The stream's version after the command.
    pub version: i64,
    /// The events appended, in order (none when the command changed nothing).
    pub events: Vec<RecordedEvent>,
    /// The position of the last event appended or, when nothing was appended, of the stream's
    /// last event (0 for an empty stream), so a client can always read its own writes.
    pub position: i64,
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// Every attempt met a concurrent append to the same stream.
    #[error("concurrent update of the same stream, retries exhausted")]
    Conflict,
    /// A lookup's unique rule refused the append (e.g. a category name already taken).
    #[error("unique rule {0:?} violated")]
    Unique(Constraint),
    /// The database failed.
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event or snapshot could not be read back.
    #[error("event store: {0}")]
    Corrupt(String),
    /// The request's idempotency claim was taken over before its command could append (its lease
    /// ran out): nothing was appended.
    #[error("the idempotency key was claimed by another request")]
    ClaimLost,
}

impl<E: std::error::Error> CommandError<E> {
    /// The `outcome` label of the command counter.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Self::Rejected(_) | Self::Unique(_) => "rejected",
            Self::Conflict => "conflict",
            Self::ClaimLost => "claim_lost",
            Self::Database(_) | Self::Corrupt(_) => "error",
        }
    }
}

/// How conflicts are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; each retry doubles it, plus up to as much again of jitter.
    pub base_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { retries: 5, base_backoff: Duration::from_millis(2) }
    }
}

/// Loads and appends streams; cheap to clone (clones share one [`Notifier`]).
#[derive(Clone)]
pub struct EventStore {
    pub(super) pool: PgPool,
    repo: Arc<PostgresEventRepository>,
    retry: RetryPolicy,
    pub(super) notifier: Notifier,
    pub(super) groups: crate::group::Groups,
    pub(super) recent: RecentStates,
}

enum Attempt<A: Aggregate> {
    Done(Committed<A>),
    Conflict,
}

impl EventStore {
    /// A store over the pool's `events` and `snapshots` tables. Its notifier (one connection of
    /// its own, outside the pool) starts with the first append and stops when the pool is closed
    /// or the last clone of the store is dropped.
    pub fn new(pool: PgPool) -> Self {
        let repo = Arc::new(PostgresEventRepository::new(pool.clone()));
        let notifier = Notifier::new(pool.clone());
        Self {
            pool,
            repo,
            retry: RetryPolicy::default(),
            notifier,
            groups: Default::default(),
            recent: RecentStates::new(RecentStates::DEFAULT_CAPACITY),
        }
    }

    /// Loads an aggregate as a command would: from the state this process remembers of it or else
    /// from its latest snapshot, then the events after that (see the batch loader), and remembers
    /// the result.
    pub async fn load<A>(&self, aggregate_id: &str) -> Result<Loaded<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut conn = self.pool.acquire().await?;
        let mut loaded = self.load_many::<A>(&mut conn, &[aggregate_id]).await?;
        // One state for each stream named.
        Ok(loaded.swap_remove(0))
    }

    /// Rebuilds an aggregate from every one of its events, ignoring snapshots.
    pub async fn replay<A>(&self, aggregate_id: &str) -> Result<Loaded<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut loaded = Loaded { state: A::default(), version: 0 };
        let events = self
            .repo
            .get_events::<A>(aggregate_id)
            .await
            .map_err(|e| CommandError::Corrupt(e.to_string()))?;
        for event in events {
            apply_stored(&mut loaded, event)?;
        }
        Ok(loaded)
    }

    /// Runs a command alone, outside any group: load, handle, append. A conflicting concurrent
    /// append is retried against fresh state (the aggregate re-validates, so the final answer is
    /// the domain's). [`EventStore::execute`] groups commands and falls back to this.
    #[tracing::instrument(skip_all, fields(stream = A::TYPE, aggregate_id = %aggregate_id))]
    pub async fn execute_alone<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let name = A::command_name(&command);
        let started = Instant::now();
        let result = self.run::<A>(aggregate_id, command, context, name).await;
        let outcome = match &result {
            Ok(committed) if committed.events.is_empty() => "unchanged",
            Ok(_) => "committed",
            Err(error) => error.outcome(),
        };
        record_command(A::TYPE, name, outcome, Some(started.elapsed().as_secs_f64()));
        result
    }

    async fn run<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        name: &'static str,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut backoff = self.retry.base_backoff;
        for attempt in 0..=self.retry.retries {
            if attempt > 0 {
                let jitter = rand::rng().random_range(0..=backoff.as_micros() as u64);
                tokio::time::sleep(backoff + Duration::from_micros(jitter)).await;
                backoff *= 2;
                tracing::debug!(attempt, "retrying after a concurrent append");
            }
            match self.attempt::<A>(aggregate_id, command.clone(), context).await? {
                Attempt::Done(committed) => return Ok(committed),
                Attempt::Conflict => {
                    metrics::counter!("command_conflicts_total", "aggregate" => A::TYPE, "command" => name)
                        .increment(1);
                    continue;
                }
            }
        }
        Err(CommandError::Conflict)
    }

    async fn attempt<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Attempt<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let Loaded { mut state, version } = self.load::<A>(aggregate_id).await?;
        let sink = EventSink::<A>::default();
        state.handle(command, &(), &sink).await.map_err(CommandError::Rejected)?;
        // The sink has already applied each event to `state`: it is the state after the command,
        // and it is what a snapshot must hold (never apply the events a second time).
        let events = sink.collect().await;
        if events.is_empty() {
            let position = self.stream_position(A::TYPE, aggregate_id).await?;
            return Ok(Attempt::Done(Committed { state, version, events: vec![], position }));
        }
        match self.append::<A>(aggregate_id, version, &events, &state, context).await {
            Ok(recorded) => {
                let position = recorded.last().map_or(0, |e| e.position);
                self.notifier.committed(position);
                let version = version + events.len() as i64;
                self.recent.put(aggregate_id, &state, version);
                Ok(Attempt::Done(Committed { state, version, events: recorded, position }))
            }
            Err(AppendError::Conflict) => Ok(Attempt::Conflict),
            Err(AppendError::Unique(constraint)) => Err(CommandError::Unique(constraint)),
            Err(AppendError::Database(e)) => Err(CommandError::Database(e)),
            Err(AppendError::Encode(e)) => Err(CommandError::Corrupt(e.to_string())),
            Err(AppendError::ClaimLost) => Err(CommandError::ClaimLost),
        }
    }

    async fn append<A>(
        &self,
        aggregate_id: &str,
        version: i64,
        events: &[A::Event],
        state: &A,
        context: &CommandContext,
    ) -> Result<Vec<RecordedEvent>, AppendError>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let metadata = serde_json::to_value(&context.metadata).map_err(AppendError::Encode)?;
        let mut rows = Rows::default();
        for (i, event) in events.iter().enumerate() {
            rows.push(aggregate_id, version + 1 + i as i64, event, &metadata).map_err(AppendError::Encode)?;
        }
        let new_version = version + events.len() as i64;

        let mut tx = crate::db::begin(&self.pool).await?;
        let mut recorded = rows.insert(&mut tx, A::TYPE).await?;
        recorded.sort_by_key(|e| e.sequence);
        A::write_lookups(&mut tx, &[(aggregate_id, events)]).await?;
        write_snapshot(&mut tx, aggregate_id, version, new_version, state).await?;
        // The idempotency record commits with the events, so a key whose command appended is never
        // run again, whatever happens to the process after this commit.
        if let Some(claim) = &context.claim {
            let last = recorded.last().map_or(0, |e| e.position);
            if !idempotency::mark_appended(&mut tx, claim, last).await? {
                return Err(AppendError::ClaimLost);
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    pub(super) async fn stream_position(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64, sqlx::Error> {
        let position: Option<i64> = sqlx::query_scalar(
            "select max(position) from events where aggregate_type = $1 and aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(position.unwrap_or(0))
    }
}

/// Counts one command in `commands_total` by its outcome and, when it ran, records how long it
/// took in `command_duration_seconds`.
pub(super) fn record_command(
    aggregate: &'static str,
    command: &'static str,
    outcome: &'static str,
    elapsed_secs: Option<f64>,
) {
    metrics::counter!("commands_total", "aggregate" => aggregate, "command" => command, "outcome" => outcome)
        .increment(1);
    if let Some(elapsed) = elapsed_secs {
        metrics::histogram!("command_duration_seconds", "aggregate" => aggregate, "command" => command)
            .record(elapsed);
    }
}

fn apply_stored<A: Aggregate>(
    loaded: &mut Loaded<A>,
    event: SerializedEvent,
) -> Result<(), CommandError<A::Error>> {
    let stored = StoredRow {
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence as i64,
        event_type: &event.event_type,
        event_version: &event.event_version,
        payload: &event.payload,
    };
    stored.apply_to(loaded)
}

/// A stored event as the loaders read it.
pub(super) struct StoredRow<'a> {
    pub(super) aggregate_id: &'a str,
    pub(super) sequence: i64,
    pub(super) event_type: &'a str,
    pub(super) event_version: &'a str,
    pub(super) payload: &'a Value,
}

impl StoredRow<'_> {
    /// Decodes the event (upcasting an older version) and applies it.
    pub(super) fn apply_to<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
    ) -> Result<(), CommandError<A::Error>> {
        let decoded: A::Event =
            decode_event(self.event_type, self.event_version, self.payload).map_err(|e| {
                CommandError::Corrupt(format!("{} {} #{}: {e}", A::TYPE, self.aggregate_id, self.sequence))
            })?;
        loaded.state.apply(decoded);
        loaded.version = self.sequence;
        Ok(())
    }
}

/// Events ready to insert, column by column, in the order they are to take positions; each row
/// has its own stream and metadata, so one insert serves one command or a batch of them.
#[derive(Default)]
pub(super) struct Rows {
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
    ids: Vec<Uuid>,
}

impl Rows {
    /// Adds one event; returns the id it will be stored under.
    pub(super) fn push<E: cqrs_es::DomainEvent>(
        &mut self,
        aggregate_id: &str,
        sequence: i64,
        event: &E,
        metadata: &Value,
    ) -> Result<Uuid, serde_json::Error> {
        let encoded = encode_event(event)?;
        let id = Uuid::now_v7();
        self.aggregate_ids.push(aggregate_id.to_string());
        self.sequences.push(sequence);
        self.types.push(encoded.event_type);
        self.versions.push(encoded.event_version);
        self.payloads.push(encoded.payload);
        self.metadata.push(metadata.clone());
        self.ids.push(id);
        Ok(id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Inserts every row in one statement, positions in the order the rows were pushed; returns
    /// what was recorded (in no particular order) with each row's stream id.
    pub(super) async fn insert(
        &self,
        conn: &mut PgConnection,
        aggregate_type: &str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let recorded = sqlx::query_as::<_, (i64, Uuid, i64, String)>(
            "insert into events
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                  metadata, event_id)
             select $1, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload,
                    e.metadata, e.event_id
               from unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[],
                           $8::uuid[])
                    with ordinality
                    as e(aggregate_id, sequence, event_type, event_version, payload, metadata, event_id,
                         ord)
              order by e.ord
             returning position, event_id, sequence, event_type",
        )
        .bind(aggregate_type)
        .bind(&self.aggregate_ids)
        .bind(&self.sequences)
        .bind(&self.types)
        .bind(&self.versions)
        .bind(&self.payloads)
        .bind(&self.metadata)
        .bind(&self.ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|(position, event_id, sequence, event_type)| RecordedEvent {
            position,
            event_id,
            sequence,
            event_type,
        })
        .collect();
        Ok(recorded)
    }
}

/// Writes the stream's snapshot when the append took its version across a multiple of the
/// kind's interval, from `state`: the state the sink already produced (never re-applied).
pub(super) async fn write_snapshot<A>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    version: i64,
    new_version: i64,
    state: &A,
) -> Result<(), AppendError>
where
    A: StreamKind,
    A::Command: Clone + Send + Sync,
{
    let Some(every) = A::SNAPSHOT_EVERY else {
        return Ok(());
    };
    if new_version / every <= version / every {
        return Ok(());
    }
    let payload = serde_json::to_value(state).map_err(AppendError::Encode)?;
    sqlx::query(
        "insert into snapshots
             (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         values ($1, $2, $3, $4, $5)
         on conflict (aggregate_type, aggregate_id) do update
            set last_sequence = excluded.last_sequence,
                current_snapshot = excluded.current_snapshot,
                payload = excluded.payload
          where snapshots.last_sequence < excluded.last_sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(new_version)
    .bind(new_version / every)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// Why an append did not commit.
pub(super) enum AppendError {
    Conflict,
    ClaimLost,
    Unique(Constraint),
    Database(sqlx::Error),
    Encode(serde_json::Error),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        if let Some(db) = error.as_database_error() {
            if db.is_unique_violation() {
                match db.constraint() {
                    Some("events_pkey") => return AppendError::Conflict,
                    Some(index) => {
                        if let Some(constraint) = Constraint::of_index(index) {
                            return AppendError::Unique(constraint);
                        }
                    }
                    None => {}
                }
            }
        }
        AppendError::Database(error)
    }
}
