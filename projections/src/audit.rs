//! The event log as auditors read it: the global feed (the projection engine's own query, order
//! and horizon, with filters), one stream in stream order, a stream's state as of a time (folded
//! through the aggregate's own `apply`, after the upcasters), and the contract's `Event` shape,
//! one line of which is also what the NDJSON export writes. All SQL auditors run on `events`
//! lives here or in the engine's feed. Nothing here changes the log.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::engine::{self, Checkpoint, EventFilter, ProjectionError, StoredEvent};

/// The columns of a stream read.
const STREAM_COLUMNS: &str = "select position, transaction_id::text::bigint as xid, event_id, aggregate_type,
        aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
   from events";

/// The stream types of the product, as the audit names them.
pub const STREAM_TYPES: [&str; 3] = ["movie", "rental", "category"];

/// The longest any one audit query may run unless told otherwise; then PostgreSQL cancels it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the log for auditors; cheap to clone. Every query runs under a statement timeout, so no
/// audit request keeps PostgreSQL busy after its caller has been answered.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
    timeout: Duration,
}

/// One page of a stream: its events and whether more follow.
#[derive(Debug)]
pub struct StreamPage {
    /// Events after the requested version, in stream order.
    pub events: Vec<StoredEvent>,
    /// Whether the stream holds events after the last of these.
    pub more: bool,
}

impl AuditLog {
    /// A reader over the pool's `events`, with [`STATEMENT_TIMEOUT`].
    pub fn new(pool: PgPool) -> Self {
        Self { pool, timeout: STATEMENT_TIMEOUT }
    }

    /// The same reader with another statement timeout (at least a millisecond).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// A transaction whose statements PostgreSQL cancels after the timeout (SQLSTATE 57014).
    async fn bounded(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = eventstore::db::begin(&self.pool).await?;
        let millis = self.timeout.as_millis().min(i32::MAX as u128);
        sqlx::query(&format!("set local statement_timeout = {millis}")).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// Up to `limit` events after `after` that `filter` keeps, in the feed's order, only from
    /// transactions older than every running one: events committed later always come after
    /// `after`, so paging never skips or repeats one.
    pub async fn page(
        &self,
        after: Checkpoint,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let mut tx = self.bounded().await?;
        let events = engine::read_filtered(&mut tx, after, limit, filter).await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Every event of one stream, in stream order; with `as_of`, only those recorded at or
    /// before it.
    pub async fn stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let mut tx = self.bounded().await?;
        let events = sqlx::query_as(&format!(
            "{STREAM_COLUMNS} where aggregate_type = $1 and aggregate_id = $2
                and ($3::timestamptz is null or recorded_at <= $3)
              order by sequence"
        ))
        .bind(stream_type)
        .bind(stream_id)
        .bind(as_of)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Up to `limit` events of one stream after version `after_version`, in stream order.
    pub async fn stream_page(
        &self,
        stream_type: &str,
        stream_id: &str,
        after_version: i64,
        limit: i64,
    ) -> Result<StreamPage, sqlx::Error> {
        let mut tx = self.bounded().await?;
        let mut events: Vec<StoredEvent> = sqlx::query_as(&format!(
            "{STREAM_COLUMNS} where aggregate_type = $1 and aggregate_id = $2 and sequence > $3
              order by sequence limit $4"
        ))
        .bind(stream_type)
        .bind(stream_id)
        .bind(after_version)
        .bind(limit.saturating_add(1))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let more = events.len() as i64 > limit;
        events.truncate(limit.max(0) as usize);
        Ok(StreamPage { events, more })
    }

    /// Whether the stream has any event.
    pub async fn stream_exists(&self, stream_type: &str, stream_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "select exists (select 1 from events where aggregate_type = $1 and aggregate_id = $2)",
        )
        .bind(stream_type)
        .bind(stream_id)
        .fetch_one(&self.pool)
        .await
    }

    /// How many events the log holds (committed ones), for progress reports.
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("select count(*) from events").fetch_one(&self.pool).await
    }

    /// The feed checkpoint of the event at `position` (`None`: no such event), so a reader can
    /// start right after a known position.
    pub async fn checkpoint_at(&self, position: i64) -> Result<Option<Checkpoint>, sqlx::Error> {
        let xid: Option<i64> =
            sqlx::query_scalar("select transaction_id::text::bigint from events where position = $1")
                .bind(position)
                .fetch_optional(&self.pool)
                .await?;
        Ok(xid.map(|xid| Checkpoint { xid, position }))
    }
}

/// An event's place in the feed: paging resumes after it.
pub fn checkpoint_of(event: &StoredEvent) -> Checkpoint {
    Checkpoint { xid: event.xid, position: event.position }
}

/// The contract's `Event`, as the feed, the stream pages and the export write it: the payload as
/// stored (in its `schema_version`), the metadata with the fields the contract names. Fields are
/// in the order of their names, as the export has always written them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct AuditEvent<'a> {
    pub event_id: Uuid,
    /// Who and what caused it.
    pub metadata: AuditMetadata,
    #[schema(value_type = Object)]
    pub payload: &'a Value,
    /// The global position.
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub schema_version: &'a str,
    #[schema(value_type = Uuid)]
    pub stream_id: &'a str,
    /// `movie`, `rental` or `category`.
    pub stream_type: &'a str,
    /// The event type, e.g. `MovieRented`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The event's sequence number in its stream, from 1.
    pub version: i64,
}

/// Who and what caused an event, as its metadata holds them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EventMetadata)]
pub struct AuditMetadata {
    #[schema(value_type = Option<Uuid>)]
    pub actor_id: Value,
    /// The `event_id` a process manager reacted to; null for client commands.
    #[schema(value_type = Option<Uuid>)]
    pub causation_id: Value,
    /// The request id of the client command that started the chain.
    #[schema(value_type = Option<String>)]
    pub correlation_id: Value,
    #[schema(value_type = Option<String>)]
    pub request_id: Value,
}

impl<'a> From<&'a StoredEvent> for AuditEvent<'a> {
    fn from(event: &'a StoredEvent) -> Self {
        let meta = |key: &str| event.metadata.get(key).cloned().unwrap_or(Value::Null);
        Self {
            event_id: event.event_id,
            metadata: AuditMetadata {
                actor_id: meta("actor_id"),
                causation_id: meta("causation_id"),
                correlation_id: meta("correlation_id"),
                request_id: meta("request_id"),
            },
            payload: &event.payload,
            position: event.position,
            recorded_at: event.recorded_at,
            schema_version: &event.event_version,
            stream_id: &event.aggregate_id,
            stream_type: &event.aggregate_type,
            kind: &event.event_type,
            version: event.sequence,
        }
    }
}

/// One NDJSON line of the export: the `Event` and a newline.
pub fn ndjson_line(event: &StoredEvent) -> String {
    let mut line = serde_json::to_string(&AuditEvent::from(event)).expect("an event serializes");
    line.push('\n');
    line
}

/// An aggregate rebuilt from some of its events, and the version (last sequence) it reflects.
#[derive(Debug, Clone)]
pub struct Rebuilt<A> {
    /// The state.
    pub state: A,
    /// The last sequence applied.
    pub version: i64,
}

/// Folds a stream's events, in order, through the aggregate's own `apply` (each decoded after
/// the upcasters), so the state is exactly the one the aggregate had after the last of them.
/// `None` when there are no events.
pub fn fold<A: Aggregate>(events: &[StoredEvent]) -> Result<Option<Rebuilt<A>>, ProjectionError> {
    let mut rebuilt: Option<Rebuilt<A>> = None;
    for event in events {
        let decoded: A::Event = event.decode()?;
        let current = rebuilt.get_or_insert_with(|| Rebuilt { state: A::default(), version: 0 });
        current.state.apply(decoded);
        current.version = event.sequence;
    }
    Ok(rebuilt)
}

/// How many events the export reads per query.
pub const EXPORT_PAGE: i64 = 500;

/// The log as NDJSON, read page by page in the feed's order, so memory stays constant for any
/// log size. It ends at the end of the log released when its last page was read.
#[derive(Debug)]
pub struct Export {
    log: AuditLog,
    after: Checkpoint,
    filter: EventFilter,
    page: i64,
    done: bool,
}

impl Export {
    /// The events after `after` that `filter` keeps.
    pub fn new(log: AuditLog, after: Checkpoint, filter: EventFilter) -> Self {
        Self { log, after, filter, page: EXPORT_PAGE, done: false }
    }

    /// Reads `page` events per query instead of [`EXPORT_PAGE`].
    pub fn with_page_size(mut self, page: i64) -> Self {
        self.page = page.max(1);
        self
    }

    /// The next page as NDJSON lines, with its number of events; `None` once the end is reached.
    pub async fn next_chunk(&mut self) -> Result<Option<(String, u64)>, sqlx::Error> {
        if self.done {
            return Ok(None);
        }
        let events = self.log.page(self.after, self.page, &self.filter).await?;
        self.done = (events.len() as i64) < self.page;
        let Some(last) = events.last() else { return Ok(None) };
        self.after = checkpoint_of(last);
        let chunk: String = events.iter().map(ndjson_line).collect();
        Ok(Some((chunk, events.len() as u64)))
    }
}
