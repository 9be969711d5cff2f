//! The event log as auditors read it: the global feed (the projection engine's own query, order
//! and horizon, with filters), one stream in stream order, a stream's state as of a time (folded
//! through the aggregate's own `apply`, after the upcasters), and the contract's `Event` shape,
//! one line of which is also what the NDJSON export writes. All SQL auditors run on `events`
//! lives here or in the engine's feed. Nothing here changes the log.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::engine::{self, Checkpoint, EventFilter, ProjectionError, StoredEvent};

/// The stream types of the product, as the audit names them.
pub const STREAM_TYPES: [&str; 3] = ["movie", "rental", "category"];

/// Reads the log for auditors; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
}

impl AuditLog {
    /// A reader over the pool's `events`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
        let mut conn = self.pool.acquire().await?;
        engine::read_filtered(&mut conn, after, limit, filter).await
    }

    /// Every event of one stream, in stream order; with `as_of`, only those recorded at or
    /// before it.
    pub async fn stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        sqlx::query_as(
            "select position, transaction_id::text::bigint as xid, event_id, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, payload, metadata, recorded_at
               from events
              where aggregate_type = $1 and aggregate_id = $2
                and ($3::timestamptz is null or recorded_at <= $3)
              order by sequence",
        )
        .bind(stream_type)
        .bind(stream_id)
        .bind(as_of)
        .fetch_all(&self.pool)
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

/// The contract's `Event`: the payload as stored (in its `schema_version`), the metadata with
/// exactly its four keys.
pub fn event_json(event: &StoredEvent) -> Value {
    let meta = |key: &str| event.metadata.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "position": event.position,
        "event_id": event.event_id,
        "stream_type": event.aggregate_type,
        "stream_id": event.aggregate_id,
        "version": event.sequence,
        "type": event.event_type,
        "schema_version": event.event_version,
        "recorded_at": event.recorded_at,
        "payload": event.payload,
        "metadata": {
            "actor_id": meta("actor_id"),
            "request_id": meta("request_id"),
            "correlation_id": meta("correlation_id"),
            "causation_id": meta("causation_id"),
        },
    })
}

/// One NDJSON line of the export: the `Event` and a newline.
pub fn ndjson_line(event: &StoredEvent) -> String {
    let mut line = event_json(event).to_string();
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
