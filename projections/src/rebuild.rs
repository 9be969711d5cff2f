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
    checkpoint, ensure_checkpoints, read_batch, read_for_replay, Checkpoint, LogEvent, Projection,
    ProjectionError, Replay, ReplayBatch, Touched,
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
#[derive(Clone)]
struct Shadow {
    schema: String,
    tables: &'static [&'static str],
    deferred_indexes: Vec<String>,
}

async fn create_shadow(
    pool: &PgPool,
    projection: &dyn Projection,
    in_memory: bool,
) -> Result<Shadow, sqlx::Error> {
    let schema = shadow_schema(projection);
    let mut tx = eventstore::db::begin(pool).await?;
    sqlx::query(&format!("drop schema if exists {schema} cascade")).execute(&mut *tx).await?;
    sqlx::query(&format!("create schema {schema}")).execute(&mut *tx).await?;
    for table in projection.tables() {
        sqlx::query(&format!("create table {schema}.{table} (like read.{table} including all)"))
            .execute(&mut *tx)
            .await?;
        // `like` copies columns, defaults, constraints and indexes, not storage parameters: the
        // free space a table keeps on each page for in-place updates (`fillfactor`) among them.
        let options: Option<Vec<String>> =
            sqlx::query_scalar("select reloptions from pg_class where oid = $1::regclass")
                .bind(format!("read.{table}"))
                .fetch_one(&mut *tx)
                .await?;
        if let Some(options) = options.filter(|options| !options.is_empty()) {
            sqlx::query(&format!("alter table {schema}.{table} set ({})", options.join(", ")))
                .execute(&mut *tx)
                .await?;
        }
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
    Ok(Shadow { schema, tables: projection.tables(), deferred_indexes })
}

/// Memory for sorting an index's keys while it is built (PostgreSQL's default is 64 MB): the
/// largest shadow index sorts in memory instead of spilling runs to disk.
const INDEX_BUILD_MEMORY: &str = "256MB";

/// Builds the indexes that were left out while filling, in one transaction.
async fn index_shadow(pool: &PgPool, shadow: &Shadow) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let mut tx = eventstore::db::begin(pool).await?;
    sqlx::query("select set_config('maintenance_work_mem', $1, true)")
        .bind(INDEX_BUILD_MEMORY)
        .execute(&mut *tx)
        .await?;
    for definition in &shadow.deferred_indexes {
        sqlx::query(definition).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::info!(schema = %shadow.schema, index_ms = started.elapsed().as_millis() as u64, "indexes built");
    // Statistics for the planner, so the tables are not planned as empty once swapped in.
    let tables: Vec<String> =
        shadow.tables.iter().map(|table| format!("{}.{table}", shadow.schema)).collect();
    if !tables.is_empty() {
        sqlx::query(&format!("analyze {}", tables.join(", "))).execute(pool).await?;
    }
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

/// Reads the log in large batches, up to the horizon or `until`, decodes each once (without
/// metadata, which read models do not use) and sends them on; returns the time spent reading and
/// decoding.
async fn read_ahead(
    pool: PgPool,
    until: Option<Checkpoint>,
    batches: tokio::sync::mpsc::Sender<Result<Vec<LogEvent>, ProjectionError>>,
) -> Duration {
    let mut reading = Duration::ZERO;
    let mut at = Checkpoint::default();
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = batches.send(Err(e.into())).await;
            return reading;
        }
    };
    loop {
        let started = Instant::now();
        let result = read_for_replay(&mut conn, at, REPLAY_READ_BATCH).await;
        reading += started.elapsed();
        let ReplayBatch { read, last, mut events } = match result {
            Ok(batch) => batch,
            Err(e) => {
                let _ = batches.send(Err(e)).await;
                return reading;
            }
        };
        let complete = (read as i64) < REPLAY_READ_BATCH;
        let Some(last) = last else { return reading };
        at = last;
        if let Some(until) = until {
            events.retain(|e| e.checkpoint() <= until);
            at = at.min(until);
        }
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

/// A read model's shadow, filled up to `at` with `events` events.
struct Filled {
    shadow: Shadow,
    at: Checkpoint,
    events: u64,
}

/// Replays the log from the start into a fresh shadow schema for each projection, up to the
/// horizon (or that projection's `until`). Projections with an in-memory replay share one read of
/// the log: each batch is read and decoded from the wire once and folded by every projection, in
/// parallel, then each writes its rows on a connection of its own, at the same time as the others.
/// The others replay through `apply_batch` in large batches, each its own transaction. Each
/// shadow's deferred indexes are built as soon as its rows are in.
async fn fill_shadows(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    untils: &[Option<Checkpoint>],
    progress: &dyn Progress,
) -> Result<Vec<Filled>, ProjectionError> {
    // The log is counted (for progress) while the shadows are made, each on a connection of its own.
    let replays: Vec<Option<Box<dyn Replay>>> = projections.iter().map(|p| p.replay()).collect();
    let shadows = projections
        .iter()
        .zip(&replays)
        .map(|(projection, replay)| create_shadow(pool, projection.as_ref(), replay.is_some()));
    let (total, shadows) = tokio::join!(count_events(pool), futures_util::future::try_join_all(shadows));
    let (total, shadows) = (total?, shadows?);
    let mut filled: Vec<Filled> =
        shadows.into_iter().map(|shadow| Filled { shadow, at: Checkpoint::default(), events: 0 }).collect();
    let replays: Vec<(usize, Box<dyn Replay>)> =
        replays.into_iter().enumerate().filter_map(|(i, replay)| Some((i, replay?))).collect();
    let in_memory: Vec<usize> = replays.iter().map(|(i, _)| *i).collect();
    if !replays.is_empty() {
        let members = in_memory.clone();
        // Read as far as the furthest member needs (to the horizon if any member does).
        let read_until = members
            .iter()
            .map(|&i| untils[i])
            .try_fold(Checkpoint::default(), |far, until| until.map(|until| far.max(until)));
        let folded = replay_together(pool, replays, untils, read_until, total, progress).await?;
        let mut writers = tokio::task::JoinSet::new();
        for (i, (mut replay, at, events, fold_ms)) in members.into_iter().zip(folded) {
            filled[i].at = at;
            filled[i].events = events;
            let (pool, shadow, name) = (pool.clone(), filled[i].shadow.clone(), projections[i].name());
            // Each shadow's indexes are built as soon as its rows are in, while the other
            // writers still write theirs.
            writers.spawn(async move {
                let started = Instant::now();
                let mut tx = eventstore::db::begin(&pool).await?;
                sqlx::query(&format!("set local search_path to {}, public", shadow.schema))
                    .execute(&mut *tx)
                    .await?;
                replay.flush(&mut tx).await?;
                tx.commit().await?;
                tracing::info!(
                    projection = name,
                    events,
                    fold_ms,
                    write_ms = started.elapsed().as_millis() as u64,
                    "replayed in memory"
                );
                index_shadow(&pool, &shadow).await?;
                Ok::<_, ProjectionError>(())
            });
        }
        while let Some(written) = writers.join_next().await {
            written.map_err(|e| ProjectionError::Decode(format!("writer task: {e}")))??;
        }
    }
    for (i, projection) in projections.iter().enumerate() {
        if in_memory.contains(&i) {
            continue;
        }
        let schema = filled[i].shadow.schema.clone();
        loop {
            let mut tx = eventstore::db::begin(pool).await?;
            let (next, n) =
                replay_into(&mut tx, projection.as_ref(), &schema, filled[i].at, untils[i], REPLAY_BATCH)
                    .await?;
            tx.commit().await?;
            filled[i].at = next;
            filled[i].events += n;
            progress.advanced(filled[i].events, total.max(filled[i].events));
            if n < REPLAY_BATCH as u64 {
                break;
            }
        }
        index_shadow(pool, &filled[i].shadow).await?;
    }
    Ok(filled)
}

/// A folded replay: its rows, the checkpoint it reached, the events it applied, and the
/// milliseconds spent folding.
type Folded = (Box<dyn Replay>, Checkpoint, u64, u64);

/// One reader task fetches the log in large batches (up to `read_until`, or the horizon); every
/// replay folds each batch, up to its own `until`, on a blocking thread of its own.
async fn replay_together(
    pool: &PgPool,
    replays: Vec<(usize, Box<dyn Replay>)>,
    untils: &[Option<Checkpoint>],
    read_until: Option<Checkpoint>,
    total: u64,
    progress: &dyn Progress,
) -> Result<Vec<Folded>, ProjectionError> {
    let (tx_batches, mut batches) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_ahead(pool.clone(), read_until, tx_batches));
    let mut feeds = Vec::with_capacity(replays.len());
    let mut folders = Vec::with_capacity(replays.len());
    for (i, replay) in replays {
        let (feed, received) = tokio::sync::mpsc::channel::<Arc<Vec<LogEvent>>>(2);
        feeds.push(feed);
        folders.push(tokio::spawn(fold(replay, untils[i], received)));
    }
    let mut read = 0u64;
    'reading: while let Some(events) = batches.recv().await {
        let events = Arc::new(events?);
        read += events.len() as u64;
        for feed in &feeds {
            // A folder that stopped has failed: stop reading and report its error below.
            if feed.send(events.clone()).await.is_err() {
                break 'reading;
            }
        }
        progress.advanced(read, total.max(read));
    }
    drop(feeds);
    drop(batches);
    let reading = reader.await.map_err(|e| ProjectionError::Decode(format!("reader task: {e}")))?;
    tracing::info!(events = read, read_ms = reading.as_millis() as u64, "log read for replay");
    let mut folded = Vec::with_capacity(folders.len());
    for folder in folders {
        folded.push(folder.await.map_err(|e| ProjectionError::Decode(format!("fold task: {e}")))??);
    }
    Ok(folded)
}

/// Folds every batch received into `replay`, keeping only events up to `until`.
async fn fold(
    mut replay: Box<dyn Replay>,
    until: Option<Checkpoint>,
    mut batches: tokio::sync::mpsc::Receiver<Arc<Vec<LogEvent>>>,
) -> Result<Folded, ProjectionError> {
    let (mut at, mut applied, mut folding) = (Checkpoint::default(), 0u64, Duration::ZERO);
    while let Some(events) = batches.recv().await {
        // The log comes in checkpoint order, so the events to keep are a prefix.
        let keep = match until {
            Some(until) => events.partition_point(|e| e.checkpoint() <= until),
            None => events.len(),
        };
        let Some(last) = events[..keep].last() else { continue };
        at = Checkpoint { xid: last.xid, position: last.position };
        applied += keep as u64;
        let started = Instant::now();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = replay.apply(&events[..keep]);
            (replay, result)
        })
        .await
        .map_err(|e| ProjectionError::Decode(format!("fold task: {e}")))?;
        replay = back;
        result?;
        folding += started.elapsed();
    }
    Ok((replay, at, applied, folding.as_millis() as u64))
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
    let mut done = rebuild_many(pool, &[projection], progress).await?;
    Ok(done.remove(0))
}

/// The right to fill the shadow schemas of some read models: a session-level advisory lock per
/// read model, on a connection of its own, held until the claim is dropped (or the process dies,
/// which closes the connection). A second rebuild or verify of one of them, in any process, is
/// refused while the first runs, instead of dropping the first one's shadow.
pub struct RebuildClaim {
    conn: PgConnection,
}

impl RebuildClaim {
    /// Claims every named read model, or none: [`ProjectionError::RebuildRunning`] names the
    /// first one another rebuild or verify holds.
    pub async fn take(pool: &PgPool, names: &[&str]) -> Result<Self, ProjectionError> {
        let mut conn = pool.acquire().await?.detach();
        for name in names {
            let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext('rebuild:' || $1))")
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
            if !taken {
                // Closing the connection releases the locks this call took before.
                return Err(ProjectionError::RebuildRunning((*name).to_string()));
            }
        }
        Ok(Self { conn })
    }

    /// Lets the read models go at once: unlocks them and closes the claim's connection (merely
    /// dropping it leaves the locks held until the server notices the closed socket).
    pub async fn release(mut self) {
        let unlocked = sqlx::query("select pg_advisory_unlock_all()").execute(&mut self.conn).await;
        if let Err(error) = unlocked {
            tracing::warn!(%error, "could not unlock a rebuild claim; closing its connection frees it");
        }
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// Rebuilds several read models from one read of the log (see [`fill_shadows`]); each is then
/// swapped in atomically on its own, in the order given.
pub async fn rebuild_many(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    progress: &dyn Progress,
) -> Result<Vec<Rebuilt>, ProjectionError> {
    if let Some(manager) = projections.iter().find(|p| !p.is_read_model()) {
        return Err(ProjectionError::Decode(format!(
            "{} is not a read model and is never rebuilt",
            manager.name()
        )));
    }
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let claim = RebuildClaim::take(pool, &names).await?;
    rebuild_claimed(pool, claim, projections, progress).await
}

/// [`rebuild_many`] under a claim taken beforehand (so a caller can answer "started" only once
/// the claim is its own).
pub async fn rebuild_claimed(
    pool: &PgPool,
    claim: RebuildClaim,
    projections: &[Arc<dyn Projection>],
    progress: &dyn Progress,
) -> Result<Vec<Rebuilt>, ProjectionError> {
    let done = rebuild_under_claim(pool, projections, progress).await;
    claim.release().await;
    done
}

async fn rebuild_under_claim(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    progress: &dyn Progress,
) -> Result<Vec<Rebuilt>, ProjectionError> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    ensure_checkpoints(pool, &names).await?;
    let filled = fill_shadows(pool, projections, &vec![None; projections.len()], progress).await?;
    let mut done = Vec::with_capacity(projections.len());
    for (projection, Filled { shadow, mut at, mut events }) in projections.iter().zip(filled) {
        let schema = shadow.schema;
        let mut tx = eventstore::db::begin(pool).await?;
        sqlx::query(lock_sql()).bind(projection.name()).execute(&mut *tx).await?;
        loop {
            let (next, n) =
                replay_into(&mut tx, projection.as_ref(), &schema, at, None, REPLAY_BATCH).await?;
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
        done.push(Rebuilt { events, checkpoint: at });
    }
    Ok(done)
}

/// Replays one read model and compares it with the live tables at the same checkpoint.
pub async fn verify(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    progress: &dyn Progress,
) -> Result<Vec<TableDiff>, ProjectionError> {
    let mut diffs = verify_many(pool, &[projection], progress).await?;
    Ok(diffs.remove(0))
}

/// Replays several read models from one read of the log and compares each with its live tables
/// at its own checkpoint; the differences of each, in the order given. Changes nothing.
pub async fn verify_many(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    progress: &dyn Progress,
) -> Result<Vec<Vec<TableDiff>>, ProjectionError> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let claim = RebuildClaim::take(pool, &names).await?;
    let diffs = verify_under_claim(pool, projections, progress).await;
    claim.release().await;
    diffs
}

async fn verify_under_claim(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    progress: &dyn Progress,
) -> Result<Vec<Vec<TableDiff>>, ProjectionError> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    ensure_checkpoints(pool, &names).await?;
    let mut lives = Vec::with_capacity(projections.len());
    {
        let mut conn = pool.acquire().await?;
        for name in &names {
            lives.push(Some(checkpoint(&mut conn, name).await?));
        }
    }
    // A live checkpoint only moves forward, so replaying up to it never overshoots.
    let filled = fill_shadows(pool, projections, &lives, progress).await?;
    let mut all = Vec::with_capacity(projections.len());
    for (projection, Filled { shadow, mut at, .. }) in projections.iter().zip(filled) {
        let schema = shadow.schema;
        let mut tx = eventstore::db::begin(pool).await?;
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
                format!(
                    "select count(*) from (select * from {a}.{table} except all select * from {b}.{table}) d"
                )
            };
            let only_live: i64 = sqlx::query_scalar(&count("read", &schema)).fetch_one(&mut *tx).await?;
            let only_replayed: i64 = sqlx::query_scalar(&count(&schema, "read")).fetch_one(&mut *tx).await?;
            if only_live != 0 || only_replayed != 0 {
                diffs.push(TableDiff { table: format!("read.{table}"), only_live, only_replayed });
            }
        }
        tx.rollback().await?;
        drop_shadow(pool, &schema).await?;
        all.push(diffs);
    }
    Ok(all)
}
