//! One pipeline for every read model: the engine decodes a batch once into [`LogEvent`]s; a read
//! model loads the rows they touch, folds the events into them in memory and writes the changed
//! rows back. A read model says how to do each step ([`ReadModel`]); the engine runs them, the
//! same way for a live batch and for a rebuild's in-memory replay (where one decoded batch feeds
//! every read model), and owns what is shared: the decoding, the write chunk and the touched rows.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use sqlx::PgConnection;

use super::{BoxFuture, LogEvent, Projection, ProjectionError, Replay, StoredEvent, StreamType, Touched};

/// Rows per statement when a read model writes back.
pub const WRITE_CHUNK: usize = 20_000;

/// The rows of a read model's table that a batch touches: `sql` selects them by the ids bound as
/// `$1`. No round trip when there are none (a batch of rents touches no category row).
pub async fn rows_by_id<T>(
    conn: &mut PgConnection,
    sql: &str,
    ids: &[uuid::Uuid],
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(sql).bind(ids).fetch_all(conn).await
}

/// How changed rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Live batches: insert or update.
    Upsert,
    /// A rebuild's in-memory replay: a [`BulkCopy`](super::BulkCopy) into empty tables, which
    /// have no unique index to resolve conflicts with until the end.
    Bulk,
}

/// What a read model knows; the engine's [`Model`] does the rest.
pub trait ReadModel: Send + Sync + 'static {
    /// The rows a batch touches (or, in a replay, every row), with what changed.
    type Rows: Default + Send + Sync;

    /// The checkpoint's key.
    const NAME: &'static str;
    /// Its tables in schema `read`, in creation order.
    const TABLES: &'static [&'static str];

    /// The kinds of stream it reads: a live batch decodes only their events, and a batch with
    /// none of them loads nothing.
    const STREAMS: &'static [StreamType];

    /// Loads the stored rows the events touch.
    fn load<'a>(
        conn: &'a mut PgConnection,
        events: &'a [LogEvent],
    ) -> impl Future<Output = Result<Self::Rows, sqlx::Error>> + Send + 'a;

    /// Folds the events, in log order, into the rows (passing over those it does not read).
    fn fold(rows: &mut Self::Rows, events: &[LogEvent]) -> Result<(), ProjectionError>;

    /// Writes the changed rows.
    fn write<'a>(
        conn: &'a mut PgConnection,
        rows: &'a Self::Rows,
        mode: WriteMode,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Notes what a live batch changed that caches outside the database must hear about.
    fn touched(_rows: &Self::Rows, _touched: &mut Touched) {}
}

/// A read model as a projection of the engine.
pub struct Model<M>(PhantomData<fn() -> M>);

impl<M> Model<M> {
    /// The projection of read model `M`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<M> Default for Model<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: ReadModel> Projection for Model<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        M::TABLES
    }

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let events = LogEvent::decode_batch(events, M::STREAMS)?;
            if events.is_empty() {
                return Ok(());
            }
            let mut rows = M::load(conn, &events).await?;
            M::fold(&mut rows, &events)?;
            M::write(conn, &rows, WriteMode::Upsert).await?;
            M::touched(&rows, touched);
            Ok(())
        })
    }

    fn replay(&self) -> Option<Box<dyn Replay>> {
        Some(Box::new(ModelReplay::<M>(M::Rows::default())))
    }
}

/// A read model folded in memory from empty tables.
struct ModelReplay<M: ReadModel>(M::Rows);

impl<M: ReadModel> Replay for ModelReplay<M> {
    fn apply(&mut self, events: &[LogEvent]) -> Result<(), ProjectionError> {
        M::fold(&mut self.0, events)
    }

    fn flush<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move { Ok(M::write(conn, &self.0, WriteMode::Bulk).await?) })
    }
}
