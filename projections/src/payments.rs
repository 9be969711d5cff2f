//! The payments process manager: turns `MovieRented` into `OpenRental` (which fixes the due time
//! from the loan policy and, in its append transaction, sets the rental's overdue timer) and
//! `MovieReturned` into `CloseRental` (which assesses the charge inside the `Rental` aggregate and
//! cancels the timer). It runs at least once
//! per event, so both commands are idempotent in the aggregate. It is not a read model: it owns
//! no table and is never rebuilt (a rebuild would re-issue its commands).
//!
//! A batch's commands run through [`EventStore::execute_batch`], in chunks of at most
//! [`MAX_COMMANDS_PER_APPEND`]: each chunk loads its rentals in one query and appends all its
//! events in one transaction, followed by one notification. A rental's commands keep the log's
//! order (an open and a close in one chunk run on the same in-memory aggregate; a later chunk
//! starts from what the earlier one committed). The batch (and so the checkpoint) completes only
//! once every command has succeeded; a refused command skips the rest of its own rental's steps
//! and fails the batch, which the engine retries, and the commands that had succeeded change
//! nothing the second time.
//!
//! A customer may pay right after the return, before the charge is assessed. [`ChargeWaits`]
//! lets such a payment wait for this process's process manager instead of answering
//! `charge-pending` at once: a waiter registers before its command runs, and each committed
//! close wakes the waiters of its rental.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use domain::loan::LoanPolicy;
use domain::movie::MovieEvent;
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::{BoxFuture, Projection, ProjectionError, StoredEvent, StreamType, Touched};
use eventstore::{BatchCommand, CommandOutcome, EventStore, Metadata};

/// The process manager's name.
pub const NAME: &str = "payments";

/// The most commands appended in one transaction. A chunk's transaction holds every projector
/// behind it while it runs (they read only behind the oldest running transaction), so it is kept
/// to a few hundred rows.
pub const MAX_COMMANDS_PER_APPEND: usize = 250;

/// The payments process manager.
#[derive(Clone)]
pub struct Payments {
    store: EventStore,
    plan: Arc<PricePlan>,
    loan: LoanPolicy,
    waits: ChargeWaits,
}

impl Payments {
    /// Issues its commands through `store`, pricing with `plan` and fixing due times with `loan`;
    /// wakes the callers waiting in `waits` for the charges it assesses.
    pub fn new(store: EventStore, plan: PricePlan, loan: LoanPolicy, waits: ChargeWaits) -> Self {
        Self { store, plan: Arc::new(plan), loan, waits }
    }
}

/// The callers waiting, in this process, for rentals' charges to be assessed. Clones share the
/// waiters.
#[derive(Clone, Default)]
pub struct ChargeWaits(Arc<Mutex<HashMap<Uuid, Vec<oneshot::Sender<()>>>>>);

impl ChargeWaits {
    /// Starts waiting for `rental`'s charge. Taken before the command that may find it pending,
    /// so a charge assessed in between still wakes the wait.
    pub fn wait_for(&self, rental: Uuid) -> ChargeWait {
        let (sender, receiver) = oneshot::channel();
        self.waiters().entry(rental).or_default().push(sender);
        ChargeWait { waits: self.clone(), rental, receiver }
    }

    /// Wakes every wait for these rentals: their charges are assessed.
    fn assessed(&self, rentals: impl IntoIterator<Item = Uuid>) {
        let mut waiters = self.waiters();
        if waiters.is_empty() {
            return;
        }
        for rental in rentals {
            for sender in waiters.remove(&rental).unwrap_or_default() {
                let _ = sender.send(());
            }
        }
    }

    /// How many rentals have a wait (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters().len()
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<oneshot::Sender<()>>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One caller's wait for a rental's charge; dropping it stops waiting.
pub struct ChargeWait {
    waits: ChargeWaits,
    rental: Uuid,
    receiver: oneshot::Receiver<()>,
}

impl ChargeWait {
    /// Whether the charge was assessed since the wait was taken, waiting up to `limit` from this
    /// call for it.
    pub async fn assessed_within(mut self, limit: std::time::Duration) -> bool {
        matches!(tokio::time::timeout(limit, &mut self.receiver).await, Ok(Ok(())))
    }
}

impl Drop for ChargeWait {
    fn drop(&mut self) {
        self.receiver.close();
        let mut waiters = self.waits.waiters();
        if let Some(senders) = waiters.get_mut(&self.rental) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiters.remove(&self.rental);
            }
        }
    }
}

/// The command an event calls for, with the rental it is for; `None` for every other event.
enum Step {
    Open { rental_id: Uuid, movie_id: Uuid, customer_id: Uuid, rented_at: chrono::DateTime<chrono::Utc> },
    Close { rental_id: Uuid, returned_at: chrono::DateTime<chrono::Utc> },
}

impl Step {
    fn of(event: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        if event.stream_type() != Some(StreamType::Movie)
            || !matches!(event.event_type.as_str(), "MovieRented" | "MovieReturned")
        {
            return Ok(None);
        }
        Ok(match event.decode::<MovieEvent>()? {
            MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                Some(Step::Open { rental_id, movie_id: event.stream_uuid()?, customer_id, rented_at })
            }
            MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
                Some(Step::Close { rental_id, returned_at })
            }
            _ => None,
        })
    }

    fn rental_id(&self) -> Uuid {
        match self {
            Step::Open { rental_id, .. } | Step::Close { rental_id, .. } => *rental_id,
        }
    }
}

/// The metadata of a command caused by `event`: same actor, request and correlation; the event
/// itself as the cause.
fn caused_by(event: &StoredEvent) -> Metadata {
    let text = |key: &str| event.metadata.get(key).and_then(Value::as_str).map(str::to_string);
    Metadata {
        actor_id: text("actor_id").and_then(|id| Uuid::parse_str(&id).ok()),
        request_id: text("request_id"),
        correlation_id: text("correlation_id").or_else(|| text("request_id")),
        causation_id: Some(event.event_id),
    }
}

impl Projection for Payments {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A payment waits for the charge this process manager assesses on a return.
    fn awaited(&self) -> bool {
        true
    }

    fn apply_batch<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut steps = Vec::new();
            for event in events {
                if let Some(step) = Step::of(event)? {
                    steps.push((step, caused_by(event), event.position));
                }
            }
            // A refused command stops its own rental (its later steps must wait for it), in this
            // chunk and the next ones, not the other rentals.
            let mut failed: HashSet<Uuid> = HashSet::new();
            let mut first_error = None;
            for chunk in steps.chunks(MAX_COMMANDS_PER_APPEND) {
                let chunk: Vec<_> =
                    chunk.iter().filter(|(step, ..)| !failed.contains(&step.rental_id())).collect();
                if chunk.is_empty() {
                    continue;
                }
                let commands =
                    chunk.iter().map(|(step, metadata, _)| self.command(step, metadata.clone())).collect();
                let outcomes = self.store.execute_batch::<Rental>(commands).await.map_err(|e| {
                    let (first, last) = (chunk[0].2, chunk[chunk.len() - 1].2);
                    ProjectionError::Command(format!(
                        "{} rental commands for events {first}..={last}: {e}",
                        chunk.len()
                    ))
                })?;
                let mut closed = Vec::new();
                for ((step, _, position), outcome) in chunk.iter().zip(outcomes) {
                    match outcome {
                        CommandOutcome::Failed(error) => {
                            let rental_id = step.rental_id();
                            failed.insert(rental_id);
                            first_error.get_or_insert_with(|| {
                                ProjectionError::Command(format!(
                                    "rental {rental_id} for event {position}: {error}"
                                ))
                            });
                        }
                        CommandOutcome::Appended(_) => {
                            if let Step::Close { rental_id, .. } = step {
                                closed.push(*rental_id);
                            }
                        }
                        CommandOutcome::Skipped => {}
                    }
                }
                // Committed: a payment waiting for one of these charges finds it now.
                self.waits.assessed(closed);
            }
            first_error.map_or(Ok(()), Err)
        })
    }
}

impl Payments {
    /// The command of one step, on its rental's stream.
    fn command(&self, step: &Step, metadata: Metadata) -> BatchCommand<RentalCommand> {
        let (rental_id, command) = match *step {
            Step::Open { rental_id, movie_id, customer_id, rented_at } => {
                (rental_id, RentalCommand::OpenRental { movie_id, customer_id, rented_at, loan: self.loan })
            }
            Step::Close { rental_id, returned_at } => {
                (rental_id, RentalCommand::CloseRental { returned_at, plan: (*self.plan).clone() })
            }
        };
        BatchCommand { aggregate_id: rental_id.to_string(), command, metadata }
    }
}
