use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::price::PricePlan;
use crate::Actor;

/// What can be asked of a rental.
#[derive(Debug, Clone, PartialEq)]
pub enum RentalCommand {
    /// Open the rental (issued for `MovieRented`; repeating it with the same facts is a no-op).
    OpenRental {
        /// The movie rented.
        movie_id: Uuid,
        /// The customer.
        customer_id: Uuid,
        /// When it started.
        rented_at: DateTime<Utc>,
    },
    /// Close the rental and assess its charge (issued for `MovieReturned`; repeating it with the
    /// same time is a no-op).
    CloseRental {
        /// When the copy came back.
        returned_at: DateTime<Utc>,
        /// The plan that prices it.
        plan: PricePlan,
    },
    /// Pay the assessed charge.
    PayRental {
        /// The amount offered, which must equal the charge.
        amount_cents: i64,
        /// Who pays: the renter or an admin.
        by: Actor,
        /// When.
        paid_at: DateTime<Utc>,
    },
}
