//! The payments process manager: turns `MovieRented` into `OpenRental` and `MovieReturned` into
//! `CloseRental` (which assesses the charge inside the `Rental` aggregate). It runs at least once
//! per event, so both commands are idempotent in the aggregate. It is not a read model: it owns
//! no table and is never rebuilt (a rebuild would re-issue its commands).

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

/// The payments process manager.
#[derive(Clone)]
pub struct Payments {
    store: EventStore,
    plan: Arc<PricePlan>,
}

impl Payments {
    /// Issues its commands through `store`, pricing with `plan`.
    pub fn new(store: EventStore, plan: PricePlan) -> Self {
        Self { store, plan: Arc::new(plan) }
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
            for event in events {
                self.handle(event).await?;
            }
            Ok(())
        })
    }
}

impl Payments {
    /// Issues the command an event calls for, if any; each command has its own transaction.
    async fn handle(&self, event: &StoredEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != "movie" {
            return Ok(());
        }
        let (rental_id, command) = match event.decode::<MovieEvent>()? {
            MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                let movie_id = event.stream_uuid()?;
                (rental_id, RentalCommand::OpenRental { movie_id, customer_id, rented_at })
            }
            MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
                (rental_id, RentalCommand::CloseRental { returned_at, plan: (*self.plan).clone() })
            }
            _ => return Ok(()),
        };
        self.store
            .execute::<Rental>(&rental_id.to_string(), command, &caused_by(event))
            .await
            .map(|_| ())
            .map_err(|e| {
                ProjectionError::Command(format!("rental {rental_id} for event {}: {e}", event.position))
            })
    }
}
