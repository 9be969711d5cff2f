//! The read side of the movie store: everything that follows the log after the event store
//! ([`eventstore`]) has appended to it.
//!
//! Map:
//! - [`engine`]: the projection engine: a gap-free, checkpointed feed of the global log.
//! - [`catalogue`], [`rentals`], [`analytics`]: read models (handler and reader in one module each).
//! - [`payments`]: the process manager that opens and closes rentals (assessing charges).
//! - [`deadlines`]: the due-date scheduler, which fires durable timers as commands (overdue
//!   rentals), exactly once across processes and crashes.
//! - [`notifications`]: the email outbox: the projection that queues receipts and reminders,
//!   the reminder timers, and the queue's SQL (the sender itself lives in the API crate).
//! - [`rebuild`]: replaying read models into shadow tables, swapping them in, verifying them.
//! - [`audit`]: the log as auditors read it: the filtered feed, streams, state as of a time.
//!
//! Nothing here knows about HTTP.

pub mod analytics;
pub mod audit;
pub mod catalogue;
pub mod deadlines;
pub mod engine;
pub mod notifications;
pub mod payments;
pub mod rebuild;
pub mod rentals;

use std::sync::Arc;

use engine::{Model, Projection};

/// Every projection of the product: the read models, the payments process manager (which
/// prices with `plan`, fixes due times with `loan` and wakes the payments waiting in `waits`) and
/// the notifications projection.
pub fn all(
    store: eventstore::EventStore,
    plan: domain::price::PricePlan,
    loan: domain::loan::LoanPolicy,
    waits: payments::ChargeWaits,
) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(Model::<catalogue::Catalogue>::new()),
        Arc::new(Model::<rentals::Rentals>::new()),
        Arc::new(Model::<analytics::Analytics>::new()),
        Arc::new(payments::Payments::new(store, plan, loan, waits)),
        Arc::new(notifications::Notifications),
    ]
}
