//! Reading the log behind the horizon, and the checkpoints.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use super::{decode_error, parse_stream, Event, LogEvent, ProjectionError, StoredEvent, StreamType};

/// Where a projection is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// Transaction id of the last event applied.
    pub xid: i64,
    /// Position of the last event applied.
    pub position: i64,
}

/// Reads up to `limit` events after `after`, only from transactions older than every running
/// one, in (transaction id, position) order. Each event comes shared, as projections take them
/// ([`super::Projection::apply_batch`]).
pub async fn read_batch(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<Arc<StoredEvent>>, sqlx::Error> {
    Ok(read(conn, after, limit, &EventFilter::default()).await?.into_iter().map(Arc::new).collect())
}

/// A batch of the log read for a replay.
#[derive(Debug, Default)]
pub struct ReplayBatch {
    /// Events read, also those of stream types this version does not know (which `events` leaves
    /// out): fewer than the limit means the log behind the horizon is read to its end.
    pub read: usize,
    /// Where the last event read is.
    pub last: Option<Checkpoint>,
    /// The events, decoded.
    pub events: Vec<LogEvent>,
}

/// A row of the log as a replay reads it: the payload as text, no metadata, its text borrowed
/// from the row as received.
#[derive(sqlx::FromRow)]
struct ReplayRow<'r> {
    position: i64,
    xid: i64,
    aggregate_type: &'r str,
    aggregate_id: &'r str,
    sequence: i64,
    event_type: &'r str,
    event_version: &'r str,
    payload: &'r str,
    recorded_at: DateTime<Utc>,
}

/// [`read_batch`] for replays of read models: without the metadata (which they do not use), the
/// payload read as text and decoded straight into its event type, with no JSON tree between. Each
/// row is decoded as it arrives, while PostgreSQL still sends the rest, and its text is borrowed
/// from the received row instead of copied.
pub async fn read_for_replay(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
) -> Result<ReplayBatch, ProjectionError> {
    use futures_util::TryStreamExt;
    use sqlx::FromRow;

    let mut rows = sqlx::query(
        "select position, transaction_id::text::bigint as xid, aggregate_type, aggregate_id, sequence,
                event_type, event_version, payload::text as payload, recorded_at
           from events
          where transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            and (transaction_id, position) > ($1::text::xid8, $2)
          order by transaction_id, position
          limit $3",
    )
    .bind(after.xid.to_string())
    .bind(after.position)
    .bind(limit)
    .fetch(conn);
    let mut batch =
        ReplayBatch { read: 0, last: None, events: Vec::with_capacity(limit.clamp(0, 65_536) as usize) };
    while let Some(received) = rows.try_next().await? {
        let row = ReplayRow::from_row(&received)?;
        batch.read += 1;
        batch.last = Some(Checkpoint { xid: row.xid, position: row.position });
        let Some(kind) = StreamType::of(row.aggregate_type) else { continue };
        let event = Event::from_text(kind, row.event_type, row.event_version, row.payload)
            .map_err(|e| decode_error(row.position, row.event_type, e))?;
        batch.events.push(LogEvent {
            position: row.position,
            xid: row.xid,
            stream: parse_stream(row.aggregate_id)?,
            sequence: row.sequence,
            recorded_at: row.recorded_at,
            event,
        });
    }
    Ok(batch)
}

/// [`read_batch`] keeping only the events `filter` matches: the same order and horizon, so a
/// reader that pages with the last event's checkpoint never skips or repeats one.
pub async fn read_filtered(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
    filter: &EventFilter,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(conn, after, limit, filter).await
}

/// Which events a filtered read keeps; every `None` keeps all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Stream type (`movie`, `rental`, `category`).
    pub stream_type: Option<String>,
    /// Stream id.
    pub stream_id: Option<String>,
    /// Event type, e.g. `MovieRented`.
    pub event_type: Option<String>,
    /// Recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before this time.
    pub until: Option<DateTime<Utc>>,
}

async fn read(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
    filter: &EventFilter,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(
        "select position, transaction_id::text::bigint as xid, event_id, aggregate_type, aggregate_id,
                sequence, event_type, event_version, payload, metadata, recorded_at
           from events
          where transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            and (transaction_id, position) > (",
    );
    query.push_bind(after.xid.to_string()).push("::text::xid8, ").push_bind(after.position).push(")");
    if let Some(stream_type) = &filter.stream_type {
        query.push(" and aggregate_type = ").push_bind(stream_type.clone());
    }
    if let Some(stream_id) = &filter.stream_id {
        query.push(" and aggregate_id = ").push_bind(stream_id.clone());
    }
    if let Some(event_type) = &filter.event_type {
        query.push(" and event_type = ").push_bind(event_type.clone());
    }
    if let Some(since) = filter.since {
        query.push(" and recorded_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" and recorded_at < ").push_bind(until);
    }
    query.push(" order by transaction_id, position limit ").push_bind(limit);
    query.build_query_as().fetch_all(conn).await
}

/// Makes sure each projection has a checkpoint row.
pub async fn ensure_checkpoints(pool: &PgPool, names: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("insert into projection_checkpoint (name) select unnest($1::text[]) on conflict do nothing")
        .bind(names)
        .execute(pool)
        .await?;
    Ok(())
}

/// A projection's checkpoint.
pub async fn checkpoint(conn: &mut PgConnection, name: &str) -> Result<Checkpoint, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("select last_xid, last_position from projection_checkpoint where name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(xid, position)| Checkpoint { xid, position }).unwrap_or_default())
}

/// A projection's progress, for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Status {
    /// Projection name.
    pub name: String,
    /// Position of the last event applied.
    pub position: i64,
    /// Events committed and not yet applied.
    pub lag_events: i64,
    /// Age of the oldest event not yet applied, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// `running`, `catching-up` or `failing`.
    pub state: String,
    /// The last error, while failing.
    pub last_error: Option<String>,
    /// When the checkpoint last moved.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Every projection's progress.
///
/// Each projection's lag is counted by a statement of its own, with its checkpoint as parameters:
/// in one statement joining the checkpoints, the planner cannot tell how many events lie beyond a
/// checkpoint it does not know yet, assumes a third of the log, and scans all of it once per
/// projection (measured at 4.5 million events under load: 1.5-7.4 s a reading). Given the
/// checkpoint, it reads the few events beyond it through the `(transaction_id, position)` index.
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<Status>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        name: String,
        last_xid: i64,
        last_position: i64,
        last_error: Option<String>,
        updated_at: Option<DateTime<Utc>>,
    }
    let mut conn = pool.acquire().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "select name, last_xid, last_position, last_error, updated_at from projection_checkpoint order by name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut statuses = Vec::with_capacity(rows.len());
    for Row { name, last_xid, last_position: position, last_error, updated_at } in rows {
        let (lag_events, lag_seconds): (i64, f64) = sqlx::query_as(
            "select count(*), coalesce(extract(epoch from (now() - min(recorded_at)))::float8, 0)
               from events where (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(last_xid)
        .bind(position)
        .fetch_one(&mut *conn)
        .await?;
        let state = match (&last_error, lag_events) {
            (Some(_), _) => "failing",
            (None, 0) => "running",
            (None, _) => "catching-up",
        };
        statuses.push(Status {
            name,
            position,
            lag_events,
            lag_seconds,
            state: state.to_owned(),
            last_error,
            updated_at,
        });
    }
    Ok(statuses)
}

/// Waits until every named projection has applied the event at `position`: its checkpoint has
/// passed `(transaction id of that event, position)`. `Ok(false)` when `timeout` runs out first.
/// A position no event holds (its append rolled back) is reached once every transaction that was
/// running at the start has ended and the projections have applied what those committed.
pub async fn wait_for_position(
    pool: &PgPool,
    names: &[&str],
    position: i64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    let running_before = fence_if_missing(pool, position).await?;
    poll_until(timeout, || {
        // A position with no event (its append rolled back) is reached once every transaction
        // that could have held it has ended and the projections have applied all they committed.
        sqlx::query_scalar(
            "select case
                 when exists (select 1 from events where position = $1) then
                   (select bool_and((c.last_xid, c.last_position) >= (e.transaction_id::text::bigint, e.position))
                      from events e cross join projection_checkpoint c
                     where e.position = $1 and c.name = any($2))
                 when pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= $3 then
                   not exists (select 1 from events e join projection_checkpoint c on c.name = any($2)
                                where e.transaction_id::text::bigint < $3
                                  and (e.transaction_id::text::bigint, e.position) > (c.last_xid, c.last_position))
                 else false
               end",
        )
        .bind(position)
        .bind(names)
        .bind(running_before)
        .fetch_one(pool)
    })
    .await
}

/// Whether `position` was ever given out to an event (committed, running or rolled back): a
/// position beyond that was never a command's answer, so waiting for it would be pointless.
pub async fn position_given_out(pool: &PgPool, position: i64) -> Result<bool, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar(
        "select pg_sequence_last_value(pg_get_serial_sequence('events', 'position')::regclass)",
    )
    .fetch_one(pool)
    .await?;
    Ok(last.is_some_and(|last| position <= last))
}

/// Waits until the event at `position` is released to readers of the log in the engine's order
/// (its transaction is older than every running one), for at most `timeout`; a position with no
/// event (its append rolled back) is released once every transaction running at the start has
/// ended. `false` when that did not happen in time.
pub async fn wait_for_release(pool: &PgPool, position: i64, timeout: Duration) -> Result<bool, sqlx::Error> {
    let running_before = fence_if_missing(pool, position).await?;
    poll_until(timeout, || {
        sqlx::query_scalar(
            "select case
                 when exists (select 1 from events where position = $1) then
                   (select transaction_id < pg_snapshot_xmin(pg_current_snapshot()) from events where position = $1)
                 else pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= $2
               end",
        )
        .bind(position)
        .bind(running_before)
        .fetch_one(pool)
    })
    .await
}

/// When no committed event holds `position` yet, a fence: a transaction id newer than every
/// transaction that can hold it, read without assigning one (a reader never consumes transaction
/// ids, however often it asks). Once every transaction below the fence has ended, an event still
/// missing never will be there. Where the event exists the fence is not needed (`i64::MAX`).
///
/// A snapshot's `xmax` alone is not such a fence: it is one past the newest *completed*
/// transaction, so the newest running one (the append holding the position, when nothing later
/// has finished) can equal it and is then missing from the snapshot's `xmin` too. Every running
/// transaction holds a lock on its own id, so the fence is also past the newest id in `pg_locks`
/// (32-bit there: widened with `xmax`'s epoch, either side of a wraparound).
async fn fence_if_missing(pool: &PgPool, position: i64) -> Result<i64, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select exists (select 1 from events where position = $1)")
        .bind(position)
        .fetch_one(pool)
        .await?;
    if exists {
        return Ok(i64::MAX);
    }
    sqlx::query_scalar(
        "with snapshot as (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax),
              running as (
                select ((s.xmax >> 32) << 32) + l.transactionid::text::bigint as id, s.xmax
                  from pg_locks l cross join snapshot s
                 where l.locktype = 'transactionid')
         select greatest(
                  (select xmax from snapshot),
                  (select max(case when id < xmax - 2147483648 then id + 4294967296
                                   when id > xmax + 2147483648 then id - 4294967296
                                   else id end) + 1
                     from running))",
    )
    .fetch_one(pool)
    .await
}

/// Asks `reached` with a growing pause (2 ms up to 50 ms) until it answers `Some(true)` or
/// `timeout` passes.
async fn poll_until<F, Fut>(timeout: Duration, mut reached: F) -> Result<bool, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<bool>, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if reached().await? == Some(true) {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
