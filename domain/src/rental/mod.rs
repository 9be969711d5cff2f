//! The `Rental` aggregate: one rental of one movie, from opening to payment. Its stream is opened
//! and closed by the payments process manager (reacting to `MovieRented` / `MovieReturned`), so
//! those commands are idempotent under redelivery. On closing, the rental assesses its own charge
//! from its own times and the price plan, so a replay always gives the same amount. It is paid
//! exactly once, for exactly the charge. It is due a loan's length after it opens (the policy
//! comes in `OpenRental`, like the price plan); when its due time comes while the copy is out, the
//! due-date scheduler's `MarkOverdue` records `RentalOverdue`, once.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{Rental, RentalStatus};
pub use command::RentalCommand;
pub use error::RentalError;
pub use event::{upcasters, RentalEvent, RENTAL_OPENED_VERSION, RENTAL_PAID_VERSION};
