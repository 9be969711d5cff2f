//! The projection engine: an ordered, checkpointed, gap-free feed of the global log.
//!
//! Each projection reads `events` behind the horizon of running transactions,
//!
//! ```sql
//! where transaction_id < pg_snapshot_xmin(pg_current_snapshot())
//!   and (transaction_id, position) > ($last_xid, $last_position)
//! order by transaction_id, position
//! ```
//!
//! so an event whose transaction committed late (after later positions were already visible) is
//! still read, in order: a plain `position > $n` would skip it for good. A batch's read-model
//! changes and the new checkpoint commit in one transaction, so a crash neither repeats nor loses
//! anything. Each batch holds a transaction-level advisory lock on the projection, so any number
//! of processes can run the engine and each batch is applied by exactly one of them.
//!
//! It must not skip an event to keep going: a failing batch is retried with backoff, and the
//! error is recorded in the checkpoint row (for `/api/v1/admin/projections`) and logged.

mod copy;
mod feed;
mod model;
mod runner;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use domain::rental::RentalEvent;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub use copy::BulkCopy;
pub use feed::{
    checkpoint, checkpoints, ensure_checkpoints, position_given_out, read_batch, read_filtered,
    read_for_replay, wait_for_position, wait_for_release, Checkpoint, EventFilter, ReplayBatch, Status,
};
pub use model::{rows_by_id, Model, ReadModel, WriteMode, WRITE_CHUNK};
pub(crate) use runner::save_checkpoint as save;
pub use runner::{BatchOutcome, Engine, EngineConfig, Listener, LAG_HISTOGRAM};

/// An event as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    /// Global position.
    pub position: i64,
    /// The id of the transaction that appended it.
    pub xid: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Stream type (`movie`, `rental`, `category`).
    pub aggregate_type: String,
    /// Stream id.
    pub aggregate_id: String,
    /// Version within the stream.
    pub sequence: i64,
    /// Event type, e.g. `MovieRented`.
    pub event_type: String,
    /// Payload schema version.
    pub event_version: String,
    /// The event's fields.
    pub payload: Value,
    /// Actor, request, correlation, causation.
    pub metadata: Value,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// The kinds of stream the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `category` streams ([`domain::category::CategoryEvent`]).
    Category,
    /// `movie` streams ([`domain::movie::MovieEvent`]).
    Movie,
    /// `rental` streams ([`domain::rental::RentalEvent`]).
    Rental,
}

impl StreamType {
    /// The stream type stored in `aggregate_type`, when it is one this version knows.
    pub fn of(aggregate_type: &str) -> Option<Self> {
        use cqrs_es::Aggregate;
        match aggregate_type {
            domain::category::Category::TYPE => Some(Self::Category),
            domain::movie::Movie::TYPE => Some(Self::Movie),
            domain::rental::Rental::TYPE => Some(Self::Rental),
            _ => None,
        }
    }
}

impl StoredEvent {
    /// The kind of stream it belongs to (`None`: one this version does not know, which every
    /// projection passes over).
    pub fn stream_type(&self) -> Option<StreamType> {
        StreamType::of(&self.aggregate_type)
    }

    /// The stream id as a UUID (every stream id of this product is one).
    pub fn stream_uuid(&self) -> Result<Uuid, ProjectionError> {
        parse_stream(&self.aggregate_id)
    }

    /// Decodes the payload into the stream's event type.
    pub fn decode<E: cqrs_es::DomainEvent>(&self) -> Result<E, ProjectionError> {
        eventstore::decode_event(&self.event_type, &self.event_version, &self.payload)
            .map_err(|e| decode_error(self.position, &self.event_type, e))
    }
}

/// An event of the log decoded into its stream's event type, with its place in the log. The
/// engine decodes each batch once into these; read models match on [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    /// Global position.
    pub position: i64,
    /// The id of the transaction that appended it.
    pub xid: i64,
    /// The stream's id.
    pub stream: Uuid,
    /// Version within the stream.
    pub sequence: i64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The event.
    pub event: Event,
}

/// The events of the log, by the kind of stream they belong to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Of a `category` stream.
    Category(CategoryEvent),
    /// Of a `movie` stream.
    Movie(MovieEvent),
    /// Of a `rental` stream.
    Rental(RentalEvent),
}

fn parse_stream(aggregate_id: &str) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(aggregate_id)
        .map_err(|e| ProjectionError::Decode(format!("stream id {aggregate_id}: {e}")))
}

fn decode_error(position: i64, event_type: &str, e: serde_json::Error) -> ProjectionError {
    ProjectionError::Decode(format!("event at position {position} ({event_type}): {e}"))
}

impl Event {
    /// Decodes a payload as stored in text (a replay's read), without building a JSON tree.
    fn from_text(
        kind: StreamType,
        event_type: &str,
        event_version: &str,
        payload: &str,
    ) -> serde_json::Result<Self> {
        use eventstore::decode_event_str as decode;
        Ok(match kind {
            StreamType::Category => Self::Category(decode(event_type, event_version, payload)?),
            StreamType::Movie => Self::Movie(decode(event_type, event_version, payload)?),
            StreamType::Rental => Self::Rental(decode(event_type, event_version, payload)?),
        })
    }
}

impl LogEvent {
    /// Decodes a stored event (`None`: a stream type this version does not know, which every
    /// projection passes over).
    pub fn decode(e: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let Some(kind) = e.stream_type() else { return Ok(None) };
        let event = match kind {
            StreamType::Category => Event::Category(e.decode()?),
            StreamType::Movie => Event::Movie(e.decode()?),
            StreamType::Rental => Event::Rental(e.decode()?),
        };
        Ok(Some(Self {
            position: e.position,
            xid: e.xid,
            stream: e.stream_uuid()?,
            sequence: e.sequence,
            recorded_at: e.recorded_at,
            event,
        }))
    }

    /// Decodes the events of a batch that belong to streams of `kinds`, leaving out the others.
    pub fn decode_batch(
        events: &[Arc<StoredEvent>],
        kinds: &[StreamType],
    ) -> Result<Vec<Self>, ProjectionError> {
        let mut decoded = Vec::with_capacity(events.len());
        for e in events.iter().filter(|e| e.stream_type().is_some_and(|kind| kinds.contains(&kind))) {
            decoded.extend(Self::decode(e)?);
        }
        Ok(decoded)
    }

    /// The place in the log.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint { xid: self.xid, position: self.position }
    }
}

/// What a batch changed that caches outside the database must hear about: rows by table, each
/// with the row's new revision. A read model notes its rows ([`ReadModel::touched`]); the engine
/// hands them to its listeners around the batch's commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    rows: std::collections::BTreeMap<&'static str, Vec<(Uuid, i64)>>,
}

impl Touched {
    /// Notes a changed row of `table` and its new revision.
    pub fn row(&mut self, table: &'static str, id: Uuid, revision: i64) {
        let rows = self.rows.entry(table).or_default();
        match rows.iter_mut().find(|(known, _)| *known == id) {
            Some((_, known)) => *known = (*known).max(revision),
            None => rows.push((id, revision)),
        }
    }

    /// The changed rows of `table`, each with its new revision.
    pub fn of(&self, table: &str) -> &[(Uuid, i64)] {
        self.rows.get(table).map_or(&[], Vec::as_slice)
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.rows.values().all(Vec::is_empty)
    }
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event could not be read.
    #[error("decode: {0}")]
    Decode(String),
    /// A process manager's command failed.
    #[error("command: {0}")]
    Command(String),
    /// A rebuild or verify of this read model runs already (in this or another process).
    #[error("a rebuild or verify of {0} is running")]
    RebuildRunning(String),
    /// This one event could not be applied (the batch was narrowed down to it).
    #[error("event at position {position} ({stream}, {event_type}): {source}")]
    AtEvent {
        /// Its global position.
        position: i64,
        /// Its stream, `type/id`.
        stream: String,
        /// Its type.
        event_type: String,
        /// Why it could not be applied.
        source: Box<ProjectionError>,
    },
}

/// A boxed future, so projections can be held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A projection's state during an in-memory replay. Memory grows with the number of rows of
/// the read model (not with the number of events).
pub trait Replay: Send {
    /// Folds events, in log order, into the in-memory rows.
    fn apply(&mut self, events: &[LogEvent]) -> Result<(), ProjectionError>;

    /// Writes every row to the (empty) tables the connection's `search_path` puts first.
    fn flush<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

/// One consumer of the log.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint's key.
    fn name(&self) -> &'static str;

    /// The tables it owns in schema `read`, in creation order. None (the default) for a process
    /// manager, which is never rebuilt (a rebuild would re-issue its commands).
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    /// Applies a batch of events, in order, inside the batch's transaction, whose `search_path`
    /// puts the target schema (`read`, or a shadow schema during a rebuild) first: handlers name
    /// tables without a schema. Must be idempotent: an event a row already reflects (by its stream
    /// version or revision) changes nothing.
    /// The events are shared with the engine's window of the recent log (and so with the other
    /// projections of the process): each is read and parsed once, not copied per projection.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// An in-memory replay from empty tables, for rebuilds: the whole log is folded in memory with
    /// the same rules as [`Projection::apply_batch`] and each row is written once at the end,
    /// instead of being updated batch after batch. `None`: rebuilds use `apply_batch`.
    fn replay(&self) -> Option<Box<dyn Replay>> {
        None
    }

    /// Whether requests wait on this projection's batches (as a payment waits for the charge the
    /// payments process manager assesses): the engine then starts its next batch as soon as
    /// events arrive, without gathering them first ([`EngineConfig::gather`]).
    fn awaited(&self) -> bool {
        false
    }

    /// Whether this is a read model (rebuildable) rather than a process manager.
    fn is_read_model(&self) -> bool {
        !self.tables().is_empty()
    }
}
