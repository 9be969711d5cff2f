//! Grouped appends: the commands that arrive while an append transaction is in flight go
//! together as the next one.
//!
//! A command costs PostgreSQL a load, an append and a commit. [`EventStore::execute`] does not
//! run its command alone: it queues it for its stream kind, and one task per kind takes whatever
//! has queued as a group, with no timer (a lone command waits for nothing). One query loads every
//! stream of the group (snapshots and the events after them), each command is handled in memory
//! by its own stream's aggregate, in the order they came (commands on the same stream see each
//! other's events, and a refused one leaves the state as it was, as it would alone), and one
//! transaction appends every event with the lookup rows, the snapshots and each command's
//! idempotency mark. Each caller gets its own answer: its events, its position, or exactly the
//! domain's refusal.
//!
//! When the group's transaction meets a concurrent append to one of its streams, a unique lookup
//! rule (two categories given one name) or a claim another request took over, nothing of it is
//! kept and each of its commands runs again alone ([`EventStore::execute_alone`], which reloads
//! and retries conflicts), so a command that conflicts never fails the others. Groups keep
//! transactions short: at most [`MAX_GROUP`] commands.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cqrs_es::Aggregate;
use tokio::sync::{mpsc, oneshot};

use crate::batch::{
    append_failed, assign, write_batch, AfterRefusal, BatchCommand, CommandOutcome, Prepared,
};
use crate::executor::{record_command, AppendError, CommandContext, CommandError, Committed, EventStore};
use crate::idempotency;
use crate::stream::StreamKind;

/// The most commands one group carries.
pub const MAX_GROUP: usize = 256;

/// What a caller waits for.
type Answer<A> = Result<Committed<A>, CommandError<<A as Aggregate>::Error>>;

/// A queued command.
struct Queued<A: StreamKind>
where
    A::Command: Clone + Send + Sync,
{
    aggregate_id: String,
    command: A::Command,
    context: CommandContext,
    queued_at: Instant,
    reply: oneshot::Sender<Answer<A>>,
}

/// The queue of each stream kind; each is drained by a task of its own, started with the first
/// command of its kind.
#[derive(Clone, Default)]
pub(crate) struct Groups {
    queues: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>,
}

impl Groups {
    /// The queue of kind `A`, started when missing or when its task is gone (its runtime ended).
    fn queue<A>(&self, store: &EventStore) -> mpsc::UnboundedSender<Queued<A>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
        A::Error: Send + 'static,
    {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let live = queues
            .get(&TypeId::of::<A>())
            .and_then(|queue| queue.downcast_ref::<mpsc::UnboundedSender<Queued<A>>>())
            .filter(|queue| !queue.is_closed())
            .cloned();
        if let Some(queue) = live {
            return queue;
        }
        let (queue, commands) = mpsc::unbounded_channel();
        tokio::spawn(drain::<A>(store.clone(), commands));
        queues.insert(TypeId::of::<A>(), Box::new(queue.clone()));
        queue
    }
}

/// Takes whatever has queued as one group, runs it, and starts again.
async fn drain<A>(store: EventStore, mut commands: mpsc::UnboundedReceiver<Queued<A>>)
where
    A: StreamKind,
    A::Command: Clone + Send + Sync,
    A::Error: Send + 'static,
{
    while let Some(first) = commands.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match commands.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        store.run_group(group).await;
    }
}

/// How a group's own attempt went.
enum Attempt<A: Aggregate> {
    /// Committed (or nothing to commit): one answer per command, in order.
    Answered(Vec<Answer<A>>),
    /// Something stood in the way: nothing was kept.
    Contended(Contention),
}

/// What stood in a group's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contention {
    /// A concurrent append to one of its streams.
    Conflict,
    /// A unique lookup rule, or a claim that is no longer its request's.
    Refusal,
}

impl EventStore {
    /// Runs a command in the next group of its stream kind (see the module's documentation): load,
    /// handle, append, retrying a conflict against fresh state, so the answer is the domain's.
    #[tracing::instrument(skip_all, fields(stream = A::TYPE, aggregate_id = %aggregate_id))]
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
        A::Error: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            aggregate_id: aggregate_id.to_string(),
            command,
            context: context.clone(),
            queued_at: Instant::now(),
            reply,
        };
        if let Err(mpsc::error::SendError(queued)) = self.groups.queue::<A>(self).send(queued) {
            return self.execute_alone::<A>(&queued.aggregate_id, queued.command, &queued.context).await;
        }
        // The group's task answers every command it takes; no answer means it is gone (its
        // runtime is shutting down).
        answer.await.unwrap_or(Err(CommandError::Database(sqlx::Error::WorkerCrashed)))
    }

    /// Runs one group and answers each of its commands.
    async fn run_group<A>(&self, group: Vec<Queued<A>>)
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
        A::Error: Send + 'static,
    {
        metrics::histogram!("command_group_size", "aggregate" => A::TYPE).record(group.len() as f64);
        let commands: Vec<BatchCommand<A::Command>> = group
            .iter()
            .map(|q| BatchCommand {
                aggregate_id: q.aggregate_id.clone(),
                command: q.command.clone(),
                metadata: q.context.metadata.clone(),
            })
            .collect();
        let claims: Vec<Option<&idempotency::Claim>> =
            group.iter().map(|q| q.context.claim.as_ref()).collect();
        let attempt = self.attempt_group::<A>(&commands, &claims).await;
        let outcome = match &attempt {
            Ok(Attempt::Answered(_)) => "answered",
            Ok(Attempt::Contended(_)) => "contended",
            Err(_) => "error",
        };
        metrics::counter!("command_groups_total", "aggregate" => A::TYPE, "outcome" => outcome).increment(1);
        match attempt {
            Ok(Attempt::Answered(answers)) => {
                for (queued, answer) in group.into_iter().zip(answers) {
                    let label = match &answer {
                        Ok(done) if done.events.is_empty() => "unchanged",
                        Ok(_) => "committed",
                        Err(error) => error.outcome(),
                    };
                    let name = A::command_name(&queued.command);
                    record_command(A::TYPE, name, label, Some(queued.queued_at.elapsed().as_secs_f64()));
                    let _ = queued.reply.send(answer);
                }
            }
            // Each command alone, each in a task of its own, so the next group need not wait.
            Ok(Attempt::Contended(_)) | Err(_) => {
                if let Err(error) = &attempt {
                    tracing::debug!(%error, "a group failed as a whole; running its commands alone");
                }
                for Queued { aggregate_id, command, context, reply, .. } in group {
                    if matches!(attempt, Ok(Attempt::Contended(Contention::Conflict))) {
                        let name = A::command_name(&command);
                        metrics::counter!("command_conflicts_total", "aggregate" => A::TYPE, "command" => name)
                            .increment(1);
                    }
                    let store = self.clone();
                    tokio::spawn(async move {
                        let answer = store.execute_alone::<A>(&aggregate_id, command, &context).await;
                        let _ = reply.send(answer);
                    });
                }
            }
        }
    }

    /// The group as one unit: one load, each command handled in memory, one transaction.
    async fn attempt_group<A>(
        &self,
        commands: &[BatchCommand<A::Command>],
        claims: &[Option<&idempotency::Claim>],
    ) -> Result<Attempt<A>, CommandError<A::Error>>
    where
        A: StreamKind,
        A::Command: Clone + Send + Sync,
        A::Error: Send + 'static,
    {
        let prepared = {
            let mut conn = self.pool.acquire().await?;
            self.prepare::<A>(&mut conn, commands, AfterRefusal::GoOn).await?
        };
        let Prepared { streams, rows, command_of, mut outcomes, after } = prepared;
        if !rows.is_empty() {
            let mut tx = crate::db::begin(&self.pool).await?;
            let recorded = match write_batch(&mut tx, &rows, &streams).await {
                Ok(recorded) => recorded,
                Err(AppendError::Conflict) => return Ok(Attempt::Contended(Contention::Conflict)),
                Err(AppendError::Unique(_)) => return Ok(Attempt::Contended(Contention::Refusal)),
                Err(error) => return Err(append_failed(error)),
            };
            let last = recorded.iter().map(|e| e.position).max();
            assign(recorded, &command_of, &mut outcomes);
            // Each request's mark commits with its events, as it would alone.
            let marks: Vec<(&idempotency::Claim, i64)> = outcomes
                .iter()
                .zip(claims)
                .filter_map(|(outcome, claim)| match (outcome, claim) {
                    (CommandOutcome::Appended(events), Some(claim)) => {
                        events.iter().map(|e| e.position).max().map(|position| (*claim, position))
                    }
                    _ => None,
                })
                .collect();
            for (claim, position) in marks {
                if !idempotency::mark_appended(&mut tx, claim, position).await? {
                    return Ok(Attempt::Contended(Contention::Refusal));
                }
            }
            // Past this point the events may be in the log: nothing of the group runs again, and
            // a commit whose outcome is unknown is each caller's to retry (their keys make that
            // safe), as it would be alone.
            if let Err(error) = tx.commit().await {
                let unknown = |_: &CommandOutcome<A::Error>| {
                    Err(CommandError::Database(sqlx::Error::Io(std::io::Error::other(format!(
                        "the commit of a group of commands failed: {error}"
                    )))))
                };
                return Ok(Attempt::Answered(outcomes.iter().map(unknown).collect()));
            }
            self.remember(&streams);
            if let Some(last) = last {
                self.notifier.committed(last);
            }
        }
        let mut answers = Vec::with_capacity(outcomes.len());
        for ((outcome, after), command) in outcomes.into_iter().zip(after).zip(commands) {
            answers.push(match (outcome, after) {
                (CommandOutcome::Appended(mut events), Some((state, version))) => {
                    events.sort_by_key(|e| e.sequence);
                    // An error here is this command's own: the group has committed.
                    let position = match events.last() {
                        Some(last) => Ok(last.position),
                        None => self.stream_position(A::TYPE, &command.aggregate_id).await,
                    };
                    position
                        .map(|position| Committed { state, version, events, position })
                        .map_err(CommandError::Database)
                }
                (CommandOutcome::Failed(error), _) => Err(error),
                // A group goes on after a refusal, so none is skipped; a handled command has its
                // state.
                (CommandOutcome::Skipped, _) | (CommandOutcome::Appended(_), None) => Err(
                    CommandError::Corrupt("a grouped command was neither handled nor refused".to_string()),
                ),
            });
        }
        Ok(Attempt::Answered(answers))
    }
}
