//! Many commands on streams of one kind as one unit: every stream loaded in one query, each
//! command handled by its own aggregate, and every event appended in one transaction.
//!
//! This is the process manager's path: it reacts to hundreds of events at a time, each calling
//! for one command on its own rental, and running each through [`EventStore::execute`] cost a load,
//! an append transaction and a notification apiece. Here a batch costs one load query, one
//! multi-row insert (each row with its own command's metadata) with the lookup rows and any
//! snapshots, one commit and one notification.
//!
//! The rules are the executor's. Commands for the same stream are handled in the batch's order on
//! one in-memory aggregate, which the sink has already brought up to date (events are never
//! applied twice). A command the aggregate refuses appends nothing and stops the later commands
//! of its stream (they are skipped), while the other streams' commands go on. Optimistic
//! concurrency is still the primary key `(aggregate_type, aggregate_id, sequence)`: when the
//! append meets a concurrent append to one of the streams (or a lookup's unique rule), nothing of
//! the batch is kept and its commands run again one at a time through [`EventStore::execute`],
//! which reloads and retries, so each command still gets the domain's own answer.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::executor::{
    record_command, write_snapshot, AppendError, CommandError, EventStore, Metadata, RecordedEvent, Rows,
    StoredRow,
};
use crate::stream::{Loaded, StreamKind};

/// One command of a batch.
#[derive(Debug, Clone)]
pub struct BatchCommand<C> {
    /// The stream it is for.
    pub aggregate_id: String,
    /// The command.
    pub command: C,
    /// Who and what caused it; recorded with each of its events.
    pub metadata: Metadata,
}

/// What became of one command of a batch.
#[derive(Debug)]
pub enum CommandOutcome<E: std::error::Error> {
    /// It committed with these events, in stream order (none when it changed nothing).
    Appended(Vec<RecordedEvent>),
    /// It did not commit: the aggregate refused it or, when the batch ran one command at a
    /// time, its own run failed.
    Failed(CommandError<E>),
    /// It was not run: an earlier command of the batch for the same stream failed, and a
    /// stream's commands only make sense in their order.
    Skipped,
}

impl<E: std::error::Error> CommandOutcome<E> {
    /// The `outcome` label of the command counter.
    fn label(&self) -> &'static str {
        match self {
            Self::Appended(events) if events.is_empty() => "unchanged",
            Self::Appended(_) => "committed",
            Self::Failed(error) => error.outcome(),
            Self::Skipped => "skipped",
        }
    }
}

/// A stream of the batch, as the commands handled so far leave it.
pub(crate) struct Stream<'a, A: Aggregate> {
    id: &'a str,
    state: A,
    /// Its version as loaded.
    loaded: i64,
    /// Its version after the commands that succeeded.
    version: i64,
    /// The events of those commands, in order.
    events: Vec<A::Event>,
    /// Whether one of its commands failed (its later ones are skipped).
    failed: bool,
}

/// How the batch itself went.
enum Ran<E: std::error::Error> {
    /// Handled, and appended as one unit (or nothing to append).
    Batched(Vec<CommandOutcome<E>>),
    /// The append met a unique rule: nothing of it was kept.
    Contended,
}

impl EventStore {
    /// Runs `commands`, on streams of kind `A`, as one unit: one query loads every stream they
    /// name (snapshot and later events), each command is handled in order by its own stream's
    /// aggregate, and all resulting events, lookup rows and snapshots are appended in one
    /// transaction, followed by one notification. Commands for the same stream see each other's
    /// events, in the order given.
    ///
    /// The answer has one outcome per command, in order. A refused command appends nothing and
    /// its stream's later commands are [`CommandOutcome::Skipped`]; the other commands still
    /// commit. When the append meets a concurrent append to one of the streams (or a lookup's
    /// unique rule), the whole batch runs again one command at a time through
    /// [`EventStore::execute`], which retries conflicts. `Err`: the batch failed as a whole (the
    /// database, a stored event that cannot be read) and nothing of it was appended.
    ///
    /// Every command is counted in `commands_total` by its outcome; `command_duration_seconds`
    /// records, for each command run, the time until its batch committed (or failed).
    #[tracing::instrument(skip_all, fields(stream = A::TYPE, commands = commands.len()))]
    pub async fn execute_batch<A>(
        &self,
        commands: Vec<BatchCommand<A::Command>>,
    ) -> Result<Vec<CommandOutcome<A::Error>>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let (batch, result) = match self.batch::<A>(&commands).await {
            Ok(Ran::Batched(outcomes)) => {
                let elapsed = started.elapsed().as_secs_f64();
                for (command, outcome) in commands.iter().zip(&outcomes) {
                    record::<A>(&command.command, outcome, elapsed);
                }
                let appended =
                    outcomes.iter().any(|o| matches!(o, CommandOutcome::Appended(e) if !e.is_empty()));
                (if appended { "appended" } else { "unchanged" }, Ok(outcomes))
            }
            Ok(Ran::Contended) => {
                tracing::debug!(
                    "a stream of the batch changed meanwhile; running its commands one at a time"
                );
                ("one_by_one", Ok(self.one_by_one::<A>(commands).await))
            }
            Err(error) => {
                let elapsed = started.elapsed().as_secs_f64();
                for command in &commands {
                    record_command(
                        A::TYPE,
                        A::command_name(&command.command),
                        error.outcome(),
                        Some(elapsed),
                    );
                }
                ("error", Err(error))
            }
        };
        metrics::counter!("command_batches_total", "aggregate" => A::TYPE, "outcome" => batch).increment(1);
        result
    }

    async fn batch<A>(
        &self,
        commands: &[BatchCommand<A::Command>],
    ) -> Result<Ran<A::Error>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let prepared = {
            let mut conn = self.pool.acquire().await?;
            self.prepare::<A>(&mut conn, commands, AfterRefusal::SkipTheStream).await?
        };
        let Prepared { streams, rows, command_of, mut outcomes, .. } = prepared;
        if rows.is_empty() {
            return Ok(Ran::Batched(outcomes));
        }
        let recorded = match self.append_batch(&rows, &streams).await {
            Ok(recorded) => recorded,
            Err(AppendError::Conflict | AppendError::Unique(_)) => return Ok(Ran::Contended),
            Err(error) => return Err(append_failed(error)),
        };
        self.remember(&streams);
        if let Some(last) = recorded.iter().map(|e| e.position).max() {
            self.notifier.committed(last);
        }
        assign(recorded, &command_of, &mut outcomes);
        Ok(Ran::Batched(outcomes))
    }

    /// Runs `commands`, on streams of kind `A`, inside the caller's open transaction: the streams
    /// are loaded through it, and the events, lookup rows and snapshots are written in it, for the
    /// caller to commit together with changes of its own (the due-date scheduler deletes the timers
    /// that fired in the transaction that records what they caused). Nothing is committed or
    /// announced here: once the caller has committed, it calls [`EventStore::announce`].
    ///
    /// Outcomes are as in [`EventStore::execute_batch`], except that a concurrent append to one of
    /// the streams is not retried: it is [`CommandError::Conflict`] (or
    /// [`CommandError::Unique`]), and the transaction is then aborted: the caller rolls it back and
    /// tries again later, against fresh state. Commands are counted in `commands_total` when their
    /// events are written (before the caller's commit).
    pub async fn execute_batch_in<A>(
        &self,
        conn: &mut PgConnection,
        commands: Vec<BatchCommand<A::Command>>,
    ) -> Result<Vec<CommandOutcome<A::Error>>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let started = Instant::now();
        let Prepared { streams, rows, command_of, mut outcomes, .. } =
            self.prepare::<A>(conn, &commands, AfterRefusal::SkipTheStream).await?;
        if !rows.is_empty() {
            let recorded = write_batch(conn, &rows, &streams).await.map_err(|error| match error {
                AppendError::Conflict => CommandError::Conflict,
                AppendError::Unique(constraint) => CommandError::Unique(constraint),
                other => append_failed(other),
            })?;
            assign(recorded, &command_of, &mut outcomes);
        }
        let elapsed = started.elapsed().as_secs_f64();
        for (command, outcome) in commands.iter().zip(&outcomes) {
            record::<A>(&command.command, outcome, elapsed);
        }
        Ok(outcomes)
    }

    /// Wakes the projectors after a commit made outside the store (see
    /// [`EventStore::execute_batch_in`]); `position` is the last one committed.
    pub fn announce(&self, position: i64) {
        self.notifier.committed(position);
    }

    /// Loads every stream the commands name and handles each command on its own stream's
    /// aggregate, in order; returns the streams as the commands leave them and the rows to append.
    pub(crate) async fn prepare<'c, A>(
        &self,
        conn: &mut PgConnection,
        commands: &'c [BatchCommand<A::Command>],
        after_refusal: AfterRefusal,
    ) -> Result<Prepared<'c, A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        // The streams, in the order the batch first names them, and each command's stream.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut ids: Vec<&str> = Vec::new();
        let stream_of: Vec<usize> = commands
            .iter()
            .map(|c| {
                *index.entry(c.aggregate_id.as_str()).or_insert_with(|| {
                    ids.push(c.aggregate_id.as_str());
                    ids.len() - 1
                })
            })
            .collect();
        let mut streams: Vec<Stream<'c, A>> = self
            .load_many::<A>(conn, &ids)
            .await?
            .into_iter()
            .zip(&ids)
            .map(|(Loaded { state, version }, id)| Stream {
                id,
                state,
                loaded: version,
                version,
                events: Vec::new(),
                failed: false,
            })
            .collect();

        let corrupt = |e: serde_json::Error| CommandError::Corrupt(e.to_string());
        let mut rows = Rows::default();
        let mut command_of: HashMap<Uuid, usize> = HashMap::new();
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut after = Vec::with_capacity(commands.len());
        for (i, (command, &s)) in commands.iter().zip(&stream_of).enumerate() {
            let stream = &mut streams[s];
            if stream.failed {
                outcomes.push(CommandOutcome::Skipped);
                after.push(None);
                continue;
            }
            // The sink applies each event as it is written: the state after the command, unless
            // the aggregate refuses it after writing some, so keep the state before it.
            let before = stream.state.clone();
            let sink = EventSink::<A>::default();
            if let Err(refusal) = stream.state.handle(command.command.clone(), &(), &sink).await {
                stream.state = before;
                stream.failed = after_refusal == AfterRefusal::SkipTheStream;
                outcomes.push(CommandOutcome::Failed(CommandError::Rejected(refusal)));
                after.push(None);
                continue;
            }
            let events = sink.collect().await;
            if !events.is_empty() {
                let metadata = serde_json::to_value(&command.metadata).map_err(corrupt)?;
                for event in &events {
                    stream.version += 1;
                    let id = rows.push(stream.id, stream.version, event, &metadata).map_err(corrupt)?;
                    command_of.insert(id, i);
                }
                stream.events.extend(events);
            }
            outcomes.push(CommandOutcome::Appended(Vec::new()));
            // A group answers each command with the state it left; a batch's outcomes need none.
            let state = (after_refusal == AfterRefusal::GoOn).then(|| (stream.state.clone(), stream.version));
            after.push(state);
        }
        Ok(Prepared { streams, rows, command_of, outcomes, after })
    }

    /// The batch's one transaction: every event, then each changed stream's lookup rows and
    /// snapshot. A batch is the process managers' path: its commands belong to no idempotent request.
    async fn append_batch<A>(
        &self,
        rows: &Rows,
        streams: &[Stream<'_, A>],
    ) -> Result<Vec<RecordedEvent>, AppendError>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut tx = crate::db::begin(&self.pool).await?;
        let recorded = write_batch(&mut tx, rows, streams).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// The fallback: each command through [`EventStore::execute_alone`] (which counts it), in order,
    /// skipping a stream's commands after one of them failed.
    async fn one_by_one<A>(&self, commands: Vec<BatchCommand<A::Command>>) -> Vec<CommandOutcome<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut failed: HashSet<String> = HashSet::new();
        let mut outcomes = Vec::with_capacity(commands.len());
        for BatchCommand { aggregate_id, command, metadata } in commands {
            if failed.contains(&aggregate_id) {
                let outcome = CommandOutcome::Skipped;
                record::<A>(&command, &outcome, 0.0);
                outcomes.push(outcome);
                continue;
            }
            match self.execute_alone::<A>(&aggregate_id, command, &metadata.into()).await {
                Ok(committed) => outcomes.push(CommandOutcome::Appended(committed.events)),
                Err(error) => {
                    failed.insert(aggregate_id);
                    outcomes.push(CommandOutcome::Failed(error));
                }
            }
        }
        outcomes
    }
}

/// Counts one command of a batch; its duration only when it ran.
fn record<A>(command: &A::Command, outcome: &CommandOutcome<A::Error>, elapsed: f64)
where
    A: StreamKind,
    A::Command: Clone + Send + Sync,
{
    // A skipped command did not run: counted, but it has no duration.
    let ran = !matches!(outcome, CommandOutcome::Skipped);
    record_command(A::TYPE, A::command_name(command), outcome.label(), ran.then_some(elapsed));
}

impl EventStore {
    /// Loads every stream named, in that order: from the state this process remembers of it or,
    /// for the others, from its snapshot (for kinds that take them, in one query); then every
    /// stream's events after that, in one more query (usually none for a remembered stream).
    /// Every state loaded is remembered.
    pub(crate) async fn load_many<A>(
        &self,
        conn: &mut PgConnection,
        ids: &[&str],
    ) -> Result<Vec<Loaded<A>>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        let mut forgotten: Vec<&str> = Vec::new();
        let mut loaded: Vec<Loaded<A>> = ids
            .iter()
            .map(|id| {
                self.recent.get::<A>(id).unwrap_or_else(|| {
                    forgotten.push(id);
                    Loaded { state: A::default(), version: 0 }
                })
            })
            .collect();
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        if A::SNAPSHOT_EVERY.is_some() && !forgotten.is_empty() {
            let snapshots: Vec<(String, i64, Value)> = sqlx::query_as(
                "select aggregate_id, last_sequence, payload from snapshots
                  where aggregate_type = $1 and aggregate_id = any($2)",
            )
            .bind(A::TYPE)
            .bind(&forgotten)
            .fetch_all(&mut *conn)
            .await?;
            for (id, sequence, payload) in snapshots {
                let Some(&i) = index.get(id.as_str()) else { continue };
                loaded[i].state = serde_json::from_value(payload)
                    .map_err(|e| CommandError::Corrupt(format!("snapshot of {id}: {e}")))?;
                loaded[i].version = sequence;
            }
        }
        let after: Vec<i64> = loaded.iter().map(|l| l.version).collect();
        // One probe of the primary key per stream, whatever the statistics say: `offset 0` keeps
        // the lateral subquery from being flattened into a join the planner may choose to run as
        // a hash join over every event of the kind (a generic plan did, once the log had
        // statistics: 6.4 ms a load at 100,000 movies instead of 0.04 ms).
        let events: Vec<(String, i64, String, String, Value)> = sqlx::query_as(
            "select s.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload
               from unnest($2::text[], $3::bigint[]) as s(aggregate_id, after)
               cross join lateral (
                   select sequence, event_type, event_version, payload from events
                    where aggregate_type = $1 and aggregate_id = s.aggregate_id and sequence > s.after
                   offset 0) e
              order by s.aggregate_id, e.sequence",
        )
        .bind(A::TYPE)
        .bind(ids)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?;
        for (id, sequence, event_type, event_version, payload) in &events {
            let Some(&i) = index.get(id.as_str()) else { continue };
            let row = StoredRow { aggregate_id: id, sequence: *sequence, event_type, event_version, payload };
            row.apply_to(&mut loaded[i])?;
        }
        for (id, loaded) in ids.iter().zip(&loaded) {
            self.recent.put(id, &loaded.state, loaded.version);
        }
        Ok(loaded)
    }

    /// Remembers the state each stream of a committed unit was left in.
    pub(crate) fn remember<A>(&self, streams: &[Stream<'_, A>])
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
    {
        for stream in streams {
            self.recent.put(stream.id, &stream.state, stream.version);
        }
    }
}

/// A batch handled in memory: its streams as the commands leave them, the rows to append, which
/// command each row belongs to, and each command's outcome so far.
pub(crate) struct Prepared<'c, A: Aggregate> {
    pub(crate) streams: Vec<Stream<'c, A>>,
    pub(crate) rows: Rows,
    pub(crate) command_of: HashMap<Uuid, usize>,
    pub(crate) outcomes: Vec<CommandOutcome<A::Error>>,
    /// Each command's stream state and version right after it, when it was handled in a group.
    pub(crate) after: Vec<Option<(A, i64)>>,
}

/// What a refused command means for the later commands of its stream in the same unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterRefusal {
    /// A process manager's batch: a stream's commands only make sense in their order, so the
    /// later ones are skipped.
    SkipTheStream,
    /// A group of independent commands: each later one runs against the state without the
    /// refused one, as it would alone.
    GoOn,
}

/// Writes a handled batch on `conn`: every event, then each changed stream's lookup rows and
/// snapshot. Returns what was recorded, in log order.
pub(crate) async fn write_batch<A>(
    conn: &mut PgConnection,
    rows: &Rows,
    streams: &[Stream<'_, A>],
) -> Result<Vec<RecordedEvent>, AppendError>
where
    A: StreamKind,
    A::Command: Clone + Send + Sync,
{
    let mut recorded = rows.insert(&mut *conn, A::TYPE).await?;
    let changed: Vec<(&str, &[A::Event])> =
        streams.iter().filter(|s| !s.events.is_empty()).map(|s| (s.id, s.events.as_slice())).collect();
    A::write_lookups(&mut *conn, &changed).await?;
    for stream in streams.iter().filter(|s| !s.events.is_empty()) {
        write_snapshot(&mut *conn, stream.id, stream.loaded, stream.version, &stream.state).await?;
    }
    recorded.sort_by_key(|e| e.position);
    Ok(recorded)
}

/// Hands each recorded event to the outcome of the command that wrote it.
pub(crate) fn assign<E: std::error::Error>(
    recorded: Vec<RecordedEvent>,
    command_of: &HashMap<Uuid, usize>,
    outcomes: &mut [CommandOutcome<E>],
) {
    for event in recorded {
        let i = command_of.get(&event.event_id).copied();
        if let Some(CommandOutcome::Appended(events)) = i.and_then(|i| outcomes.get_mut(i)) {
            events.push(event);
        }
    }
}

/// The command error of an append that failed for another reason than a concurrent append.
pub(crate) fn append_failed<E: std::error::Error>(error: AppendError) -> CommandError<E> {
    match error {
        AppendError::Conflict => CommandError::Conflict,
        AppendError::Unique(constraint) => CommandError::Unique(constraint),
        AppendError::Database(e) => CommandError::Database(e),
        AppendError::Encode(e) => CommandError::Corrupt(e.to_string()),
        AppendError::ClaimLost => CommandError::ClaimLost,
    }
}
