//! Rebuilding and verifying read models.
//!
//! Both replay the whole log into a shadow schema (`read_shadow_<name>`, tables made `like` the
//! live ones, indexes included) in large batches, while the live tables keep serving. A rebuild
//! then takes the projection's lock (the live runner pauses), applies what arrived meanwhile and,
//! in the same transaction, moves the shadow tables into `read` in place of the live ones (with
//! the live ones' grants) and moves the checkpoint. A verify instead catches the shadow up to
//! exactly the live checkpoint and compares the tables row for row; it changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::engine::{
    checkpoint, ensure_checkpoints, read_batch, Checkpoint, Projection, ProjectionError, Touched,
};

/// Events per batch when replaying through `apply_batch`.
pub const REPLAY_BATCH: i64 = 10_000;

/// Events per read when replaying in memory.
const REPLAY_READ_BATCH: i64 = 50_000;

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

/// A shadow schema being filled: its tables keep only their primary keys while the log is
/// replayed (maintaining trigram and array indexes row by row is what makes a replay slow); the
/// other indexes are built once, in bulk, before the shadow is compared or swapped in.
struct Shadow {
    schema: String,
    deferred_indexes: Vec<String>,
}

async fn create_shadow(
    pool: &PgPool,
    projection: &dyn Projection,
    in_memory: bool,
) -> Result<Shadow, sqlx::Error> {
    let schema = shadow_schema(projection);
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("drop schema if exists {schema} cascade")).execute(&mut *tx).await?;
    sqlx::query(&format!("create schema {schema}")).execute(&mut *tx).await?;
    for table in projection.tables() {
        sqlx::query(&format!("create table {schema}.{table} (like read.{table} including all)"))
            .execute(&mut *tx)
            .await?;
    }
    // The shadow's tables start with no index but their primary key; the live tables' indexes
    // are re-created from their definitions (keeping their names) once the shadow is filled. An
    // in-memory replay writes each row once into empty tables, so even the primary key can wait;
    // a replay through `apply_batch` upserts, which needs it.
    let shadow_indexes: Vec<(String, bool)> = sqlx::query_as(
        "select i.indexrelid::regclass::text, i.indisprimary
           from pg_index i join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace
          where n.nspname = $1",
    )
    .bind(&schema)
    .fetch_all(&mut *tx)
    .await?;
    for (name, primary) in shadow_indexes {
        if primary && !in_memory {
            continue;
        }
        if primary {
            let (table, constraint): (String, String) = sqlx::query_as(
                "select conrelid::regclass::text, conname from pg_constraint where conindid = $1::regclass",
            )
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(&format!("alter table {table} drop constraint {constraint}"))
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(&format!("drop index {name}")).execute(&mut *tx).await?;
        }
    }
    let live_indexes: Vec<(String, String, bool, Option<String>)> = sqlx::query_as(
        "select t.relname::text, pg_get_indexdef(i.indexrelid), i.indisprimary,
                (select pg_get_constraintdef(c.oid) || ' ' || c.conname from pg_constraint c
                  where c.conindid = i.indexrelid and c.contype = 'p')
           from pg_index i join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace
          where n.nspname = 'read' and t.relname = any($1)
          order by i.indisprimary desc",
    )
    .bind(projection.tables())
    .fetch_all(&mut *tx)
    .await?;
    let mut deferred_indexes = Vec::new();
    for (table, definition, primary, constraint) in live_indexes {
        match (primary, constraint) {
            (true, _) if !in_memory => {}
            (true, Some(constraint)) => {
                let (definition, name) = constraint.rsplit_once(' ').unwrap_or((&constraint, "pkey"));
                deferred_indexes
                    .push(format!("alter table {schema}.{table} add constraint {name} {definition}"));
            }
            _ => deferred_indexes.push(definition.replacen(" ON read.", &format!(" ON {schema}."), 1)),
        }
    }
    tx.commit().await?;
    Ok(Shadow { schema, deferred_indexes })
}

/// Builds the indexes that were left out while filling.
async fn index_shadow(conn: &mut PgConnection, shadow: &Shadow) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    for definition in &shadow.deferred_indexes {
        sqlx::query(definition).execute(&mut *conn).await?;
    }
    tracing::info!(schema = %shadow.schema, index_ms = started.elapsed().as_millis() as u64, "indexes built");
    sqlx::query(&format!("analyze {}", shadow.schema.as_str())).execute(&mut *conn).await.ok();
    Ok(())
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
    let mut events = read_batch(conn, from, limit).await?;
    if let Some(until) = until {
        events.retain(|e| Checkpoint { xid: e.xid, position: e.position } <= until);
    }
    let Some(last) = events.last() else { return Ok((from, 0)) };
    from = Checkpoint { xid: last.xid, position: last.position };
    projection.apply_batch(conn, &events, &mut Touched::default()).await?;
    Ok((from, events.len() as u64))
}

/// Reads the log in large batches, without metadata (read models do not use it), up to the
/// horizon or `until`, and sends them on; returns the time spent reading.
async fn read_ahead(
    pool: PgPool,
    until: Option<Checkpoint>,
    batches: tokio::sync::mpsc::Sender<Result<Vec<crate::engine::StoredEvent>, sqlx::Error>>,
) -> Duration {
    let mut reading = Duration::ZERO;
    let mut at = Checkpoint::default();
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = batches.send(Err(e)).await;
            return reading;
        }
    };
    loop {
        let started = Instant::now();
        let result = crate::engine::read_batch_without_metadata(&mut conn, at, REPLAY_READ_BATCH).await;
        reading += started.elapsed();
        let mut events = match result {
            Ok(events) => events,
            Err(e) => {
                let _ = batches.send(Err(e)).await;
                return reading;
            }
        };
        let complete = (events.len() as i64) < REPLAY_READ_BATCH;
        if let Some(until) = until {
            events.retain(|e| Checkpoint { xid: e.xid, position: e.position } <= until);
        }
        let Some(last) = events.last() else { return reading };
        at = Checkpoint { xid: last.xid, position: last.position };
        let stop = complete || until.is_some_and(|until| at >= until);
        if batches.send(Ok(events)).await.is_err() || stop {
            return reading;
        }
    }
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
) -> Result<(Shadow, Checkpoint, u64), ProjectionError> {
    let replay = projection.replay();
    let shadow = create_shadow(pool, projection, replay.is_some()).await?;
    let schema = shadow.schema.clone();
    let total = count_events(pool).await?;
    let mut at = Checkpoint::default();
    let mut applied = 0u64;
    if let Some(mut replay) = replay {
        // Fold the whole log in memory, then write each row once. A reader task fetches the next
        // batch while this one is folded.
        let (tx_batches, mut batches) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_ahead(pool.clone(), until, tx_batches));
        let mut folding = Duration::ZERO;
        while let Some(events) = batches.recv().await {
            let events = events?;
            let Some(last) = events.last() else { break };
            at = Checkpoint { xid: last.xid, position: last.position };
            let started = Instant::now();
            replay.apply(&events)?;
            folding += started.elapsed();
            applied += events.len() as u64;
            progress.advanced(applied, total.max(applied));
        }
        let reading = reader.await.map_err(|e| ProjectionError::Decode(format!("reader task: {e}")))?;
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("set local search_path to {schema}, public")).execute(&mut *tx).await?;
        replay.flush(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(
            projection = projection.name(),
            events = applied,
            read_ms = reading.as_millis() as u64,
            fold_ms = folding.as_millis() as u64,
            write_ms = started.elapsed().as_millis() as u64,
            "replayed in memory"
        );
        return Ok((shadow, at, applied));
    }
    loop {
        let mut tx = pool.begin().await?;
        let (next, n) = replay_into(&mut tx, projection, &schema, at, until, REPLAY_BATCH).await?;
        tx.commit().await?;
        at = next;
        applied += n;
        progress.advanced(applied, total.max(applied));
        if n < REPLAY_BATCH as u64 {
            return Ok((shadow, at, applied));
        }
    }
}

/// Gives the shadow table every privilege others hold on the live one (e.g. the analyst role's
/// `select`). A table made `like` another does not copy its grants, and default privileges on
/// schema `read` do not cover it either: they apply where a table is created, and the shadow is
/// created in its own schema before it is moved into `read`.
async fn copy_grants(conn: &mut PgConnection, table: &str, shadow: &str) -> Result<(), sqlx::Error> {
    let grants: Vec<(String, String, bool)> = sqlx::query_as(
        "select a.privilege_type,
                case when a.grantee = 0 then 'public' else quote_ident(r.rolname) end,
                a.is_grantable
           from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           cross join lateral aclexplode(c.relacl) a
           left join pg_roles r on r.oid = a.grantee
          where n.nspname = 'read' and c.relname = $1 and a.grantee <> c.relowner",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    for (privilege, grantee, grantable) in grants {
        let option = if grantable { " with grant option" } else { "" };
        sqlx::query(&format!("grant {privilege} on {shadow}.{table} to {grantee}{option}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Rebuilds one read model into shadow tables and swaps them in atomically.
pub async fn rebuild(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    progress: &dyn Progress,
) -> Result<Rebuilt, ProjectionError> {
    if !projection.is_read_model() {
        return Err(ProjectionError::Decode(format!(
            "{} is not a read model and is never rebuilt",
            projection.name()
        )));
    }
    ensure_checkpoints(pool, &[projection.name()]).await?;
    let (shadow, mut at, mut events) = fill_shadow(pool, projection.as_ref(), None, progress).await?;
    let schema = shadow.schema.clone();
    index_shadow(&mut *pool.acquire().await?, &shadow).await?;

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
        copy_grants(&mut tx, table, &schema).await?;
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
    let (shadow, mut at, _) = fill_shadow(pool, projection.as_ref(), Some(live), progress).await?;
    let schema = shadow.schema.clone();
    index_shadow(&mut *pool.acquire().await?, &shadow).await?;

    let mut tx = pool.begin().await?;
    sqlx::query(lock_sql()).bind(projection.name()).execute(&mut *tx).await?;
    let live = checkpoint(&mut tx, projection.name()).await?;
    loop {
        let (next, n) =
            replay_into(&mut tx, projection.as_ref(), &schema, at, Some(live), REPLAY_BATCH).await?;
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
