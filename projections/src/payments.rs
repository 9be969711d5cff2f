//! The payments process manager: turns `MovieRented` into `OpenRental` and `MovieReturned` into
//! `CloseRental` (which assesses the charge inside the `Rental` aggregate). It runs at least once
//! per event, so both commands are idempotent in the aggregate. It is not a read model: it owns
//! no table and is never rebuilt (a rebuild would re-issue its commands).
//!
//! A batch's commands run concurrently in lanes: the events of one rental always fall in the same
//! lane and a lane issues its commands one after another, in log order, so a rental is opened
//! before it is closed; different rentals share nothing and need no order. The batch (and so the
//! checkpoint) completes only once every command has succeeded; a refused command skips the rest
//! of its own rental's steps and fails the batch, which the engine retries, and the commands that
//! had succeeded change nothing the second time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use domain::movie::MovieEvent;
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::{BoxFuture, Projection, ProjectionError, StoredEvent, Touched};
use crate::store::{EventStore, Metadata};

/// The process manager's name.
pub const NAME: &str = "payments";

/// Lanes of a batch by default: commands in flight at once. Each holds a pooled connection
/// while it loads and appends, so this stays well below the pool's size.
pub const DEFAULT_LANES: usize = 8;

/// The payments process manager.
#[derive(Clone)]
pub struct Payments {
    store: EventStore,
    plan: Arc<PricePlan>,
    lanes: usize,
}

impl Payments {
    /// Issues its commands through `store`, pricing with `plan`, in [`DEFAULT_LANES`] lanes.
    pub fn new(store: EventStore, plan: PricePlan) -> Self {
        Self { store, plan: Arc::new(plan), lanes: DEFAULT_LANES }
    }

    /// The same process manager with `lanes` lanes (at least 1; 1 issues a batch's commands one
    /// after another).
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }
}

/// The command an event calls for, with the rental it is for; `None` for every other event.
enum Step {
    Open { rental_id: Uuid, movie_id: Uuid, customer_id: Uuid, rented_at: chrono::DateTime<chrono::Utc> },
    Close { rental_id: Uuid, returned_at: chrono::DateTime<chrono::Utc> },
}

impl Step {
    fn of(event: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        if event.aggregate_type != "movie"
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

/// The lane of a rental among `lanes`.
fn lane_of(rental_id: Uuid, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    rental_id.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
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

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn apply_batch<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        events: &'a [StoredEvent],
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut lanes: Vec<Vec<(Step, Metadata, i64)>> = (0..self.lanes).map(|_| Vec::new()).collect();
            for event in events {
                if let Some(step) = Step::of(event)? {
                    let lane = lane_of(step.rental_id(), self.lanes);
                    lanes[lane].push((step, caused_by(event), event.position));
                }
            }
            let mut running = tokio::task::JoinSet::new();
            for lane in lanes.into_iter().filter(|lane| !lane.is_empty()) {
                let this = self.clone();
                running.spawn(async move {
                    // A refused command stops its own rental (its later steps must wait for it),
                    // not the lane's other rentals.
                    let mut failed: Vec<Uuid> = Vec::new();
                    let mut first_error = None;
                    for (step, metadata, position) in lane {
                        let rental_id = step.rental_id();
                        if failed.contains(&rental_id) {
                            continue;
                        }
                        if let Err(error) = this.issue(step, &metadata, position).await {
                            failed.push(rental_id);
                            first_error.get_or_insert(error);
                        }
                    }
                    first_error.map_or(Ok(()), Err)
                });
            }
            // Every lane runs to its end (or its first failure) before the batch answers, so no
            // command of this batch is still in flight when the engine retries it.
            let mut first_error = None;
            while let Some(joined) = running.join_next().await {
                let outcome =
                    joined.unwrap_or_else(|e| Err(ProjectionError::Command(format!("lane failed: {e}"))));
                if let Err(error) = outcome {
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }
}

impl Payments {
    /// Issues the command of one step, in its own transaction.
    async fn issue(&self, step: Step, metadata: &Metadata, position: i64) -> Result<(), ProjectionError> {
        let (rental_id, command) = match step {
            Step::Open { rental_id, movie_id, customer_id, rented_at } => {
                (rental_id, RentalCommand::OpenRental { movie_id, customer_id, rented_at })
            }
            Step::Close { rental_id, returned_at } => {
                (rental_id, RentalCommand::CloseRental { returned_at, plan: (*self.plan).clone() })
            }
        };
        self.store
            .execute::<Rental>(&rental_id.to_string(), command, metadata)
            .await
            .map(|_| ())
            .map_err(|e| ProjectionError::Command(format!("rental {rental_id} for event {position}: {e}")))
    }
}
