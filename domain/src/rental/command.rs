use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::loan::LoanPolicy;
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
        /// The loan policy that fixes when it is due (like the price plan, it comes from the
        /// configuration of the process that opens the rental).
        loan: LoanPolicy,
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
    /// The rental's due time has come (issued by the due-date scheduler when its timer fires; a
    /// late or repeated timer is harmless: a rental already overdue, returned, or due at another
    /// time records nothing).
    MarkOverdue {
        /// The due time the timer was set for.
        due_at: DateTime<Utc>,
        /// When the copy came back, as the movie's own stream has recorded it (the rental's stream
        /// hears of a return only once the payments process manager closes it).
        returned_at: Option<DateTime<Utc>>,
    },
}
