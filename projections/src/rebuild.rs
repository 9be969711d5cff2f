//! Rebuilding and verifying read models.
//!
//! Both replay the whole log into a shadow schema (`read_shadow_<name>`, tables made `like` the
//! live ones, indexes included) in large batches, while the live tables keep serving. A rebuild
//! then takes the projection's lock (the live runner pauses), applies what arrived meanwhile and,
//! in the same transaction, moves the shadow tables into `read` in place of the live ones and
//! moves the checkpoint. A verify instead catches the shadow up to exactly the live checkpoint and
//! compares the tables row for row; it changes nothing.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};

use crate::engine::{checkpoint, ensure_checkpoints, read_batch, Checkpoint, Projection, ProjectionError, Touched};

/// Events per batch when replaying.
pub const REPLAY_BATCH: i64 = 10_000;

/// Progress reports: events applied so far, and the total expected.
pub trait Progress: Send + Sync {
    /// Called after each batch.
    fn advanced(&self, applied: u64, total: u64);
}

impl Progress for () {
    fn advanced(&self, _applied: u64, _total: u64) {}
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events replayed.
    pub events: u64,
    /// The checkpoint the new tables reflect.
    pub checkpoint: Checkpoint,
}

/// Rows that differ between a live table and its replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiff {
    /// The table in schema `read`.
    pub table: String,
    /// Rows in the live table that the replay does not have.
    pub only_live: i64,
    /// Rows in the replay that the live table does not have.
    pub only_replayed: i64,
}

fn shadow_schema(projection: &dyn Projection) -> String {
    format!("read_shadow_{}", projection.name())
}

fn lock_sql() -> &'static str {
    "select pg_advisory_xact_lock(hashtext('projection:' || $1))"
}

async fn create_shadow(pool: &PgPool, projection: &dyn Projection) -> Result<String, sqlx::Error> {
    let schema = shadow_schema(projection);
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("drop schema if exists {schema} cascade")).execute(&mut *tx).await?;
    sqlx::query(&format!("create schema {schema}")).execute(&mut *tx).await?;
    for table in projection.tables() {
        sqlx::query(&format!("create table {schema}.{table} (like read.{table} including all)"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(schema)
}

async fn drop_shadow(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("drop schema if exists {schema} cascade")).execute(pool).await?;
    Ok(())
}

/// Applies events after `from` into the shadow, up to the horizon or `until`, inside `conn`'s
/// transaction. Returns the new position and how many events were applied.
async fn replay_into(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    mut from: Checkpoint,
    until: Option<Checkpoint>,
    limit: i64,
) -> Result<(Checkpoint, u64), ProjectionError> {
    sqlx::query(&format!("set local search_path to {schema}, public")).execute(&mut *conn).await?;
    let events = read_batch(conn, from, limit).await?;
    let mut applied = 0;
    let mut touched = Touched::default();
    for event in &events {
        let at = Checkpoint { xid: event.xid, position: event.position };
        if until.is_some_and(|until| at > until) {
            break;
        }
        projection.apply(conn, event, &mut touched).await?;
        from = at;
        applied += 1;
    }
    Ok((from, applied))
}

async fn count_events(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(pool).await?;
    Ok(n as u64)
}

/// Replays from the start into a fresh shadow schema in large batches, each its own transaction,
/// up to the horizon (or `until`).
async fn fill_shadow(
    pool: &PgPool,
    projection: &dyn Projection,
    until: Option<Checkpoint>,
    progress: &dyn Progress,
) -> Result<(String, Checkpoint, u64), ProjectionError> {
    let schema = create_shadow(pool, projection).await?;
    let total = count_events(pool).await?;
    let mut at = Checkpoint::default();
    let mut applied = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let (next, n) = replay_into(&mut tx, projection, &schema, at, until, REPLAY_BATCH).await?;
        tx.commit().await?;
        at = next;
        applied += n;
        progress.advanced(applied, total.max(applied));
        if n < REPLAY_BATCH as u64 {
            return Ok((schema, at, applied));
        }
    }
}

/// Rebuilds one read model into shadow tables and swaps them in atomically.
pub async fn rebuild(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    progress: &dyn Progress,
) -> Result<Rebuilt, ProjectionError> {
    if !projection.is_read_model() {
        return Err(ProjectionError::Decode(format!("{} is not a read model and is never rebuilt", projection.name())));
    }
    ensure_checkpoints(pool, &[projection.name()]).await?;
    let (schema, mut at, mut events) = fill_shadow(pool, projection.as_ref(), None, progress).await?;

    let mut tx = pool.begin().await?;
    sqlx::query(lock_sql()).bind(projection.name()).execute(&mut *tx).await?;
    loop {
        let (next, n) = replay_into(&mut tx, projection.as_ref(), &schema, at, None, REPLAY_BATCH).await?;
        at = next;
        events += n;
        if n < REPLAY_BATCH as u64 {
            break;
        }
    }
    sqlx::query("set local search_path to public").execute(&mut *tx).await?;
    for table in projection.tables() {
        sqlx::query(&format!("drop table read.{table}")).execute(&mut *tx).await?;
        sqlx::query(&format!("alter table {schema}.{table} set schema read")).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("drop schema {schema}")).execute(&mut *tx).await?;
    crate::engine::save(&mut tx, projection.name(), at).await?;
    tx.commit().await?;
    progress.advanced(events, events);
    Ok(Rebuilt { events, checkpoint: at })
}

/// Replays one read model and compares it with the live tables at the same checkpoint.
pub async fn verify(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    progress: &dyn Progress,
) -> Result<Vec<TableDiff>, ProjectionError> {
    ensure_checkpoints(pool, &[projection.name()]).await?;
    let live = {
        let mut conn = pool.acquire().await?;
        checkpoint(&mut conn, projection.name()).await?
    };
    // The live checkpoint only moves forward, so replaying up to it never overshoots.
    let (schema, mut at, _) = fill_shadow(pool, projection.as_ref(), Some(live), progress).await?;

    let mut tx = pool.begin().await?;
    sqlx::query(lock_sql()).bind(projection.name()).execute(&mut *tx).await?;
    let live = checkpoint(&mut tx, projection.name()).await?;
    loop {
        let (next, n) = replay_into(&mut tx, projection.as_ref(), &schema, at, Some(live), REPLAY_BATCH).await?;
        at = next;
        if n == 0 {
            break;
        }
    }
    sqlx::query("set local search_path to public").execute(&mut *tx).await?;
    let mut diffs = Vec::new();
    for table in projection.tables() {
        let count = |a: &str, b: &str| {
            format!("select count(*) from (select * from {a}.{table} except all select * from {b}.{table}) d")
        };
        let only_live: i64 = sqlx::query_scalar(&count("read", &schema)).fetch_one(&mut *tx).await?;
        let only_replayed: i64 = sqlx::query_scalar(&count(&schema, "read")).fetch_one(&mut *tx).await?;
        if only_live != 0 || only_replayed != 0 {
            diffs.push(TableDiff { table: format!("read.{table}"), only_live, only_replayed });
        }
    }
    tx.rollback().await?;
    drop_shadow(pool, &schema).await?;
    Ok(diffs)
}
