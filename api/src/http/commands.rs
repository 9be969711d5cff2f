//! How the outcome of a command becomes an HTTP answer: each domain refusal gets a status and a
//! stable slug here (the domain never knows HTTP), conflicts that survived every retry become 409
//! `conflict`, and store failures 503 or 500.

use axum::http::StatusCode;
use domain::category::CategoryError;
use domain::movie::MovieError;
use domain::rental::RentalError;
use eventstore::lookup::Constraint;
use eventstore::CommandError;

use crate::http::error::ApiError;

/// A domain error's HTTP meaning.
pub trait DomainRejection: std::error::Error {
    /// What the refusal becomes.
    fn into_api_error(self) -> ApiError;
}

fn conflict(kind: &'static str, message: String) -> ApiError {
    ApiError::rejected(StatusCode::CONFLICT, kind, message)
}

impl DomainRejection for MovieError {
    fn into_api_error(self) -> ApiError {
        let message = self.to_string();
        match self {
            MovieError::NotFound => ApiError::NotFound("movie"),
            MovieError::AlreadyExists => conflict("already-exists", message),
            MovieError::Retired => conflict("retired", message),
            MovieError::NotAvailable => conflict("not-available", message),
            MovieError::NotActive => conflict("not-active", message),
            MovieError::NotTheRenter => {
                ApiError::Forbidden("only the renter or an admin may return this rental")
            }
            MovieError::RentedInFuture | MovieError::RentedBeforePreviousReturn => {
                ApiError::field("rented_at", message)
            }
            MovieError::ReturnedInFuture | MovieError::ReturnedBeforeRent => {
                ApiError::field("returned_at", message)
            }
        }
    }
}

impl DomainRejection for CategoryError {
    fn into_api_error(self) -> ApiError {
        match self {
            CategoryError::NotFound => ApiError::NotFound("category"),
            CategoryError::AlreadyExists => conflict("already-exists", self.to_string()),
        }
    }
}

impl DomainRejection for RentalError {
    fn into_api_error(self) -> ApiError {
        let message = self.to_string();
        match self {
            // The rental's stream is opened and closed by the payments process manager: until it
            // has caught up, a returned rental has no charge yet.
            RentalError::NotOpened | RentalError::NotReturned => conflict(
                "charge-pending",
                "the rental was returned and its charge is not computed yet; retry shortly".into(),
            ),
            RentalError::AlreadyPaid => conflict("already-paid", message),
            RentalError::WrongAmount { .. } => ApiError::field("amount_cents", message),
            RentalError::NotTheRenter => {
                ApiError::Forbidden("only the renter or an admin may pay for this rental")
            }
            RentalError::OpenedDifferently
            | RentalError::ClosedDifferently
            | RentalError::ReturnedBeforeRent => {
                ApiError::Internal(anyhow::anyhow!("rental stream refused a payment: {message}"))
            }
        }
    }
}

impl<E: DomainRejection> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(e) => e.into_api_error(),
            CommandError::Conflict => conflict("conflict", "concurrent update; retry the request".into()),
            CommandError::Unique(Constraint::CategoryName) => {
                conflict("name-taken", "a category with that name exists".into())
            }
            CommandError::Database(e) => e.into(),
            CommandError::Corrupt(message) => ApiError::Internal(anyhow::anyhow!(message)),
            CommandError::ClaimLost => conflict(
                crate::http::error::IN_PROGRESS,
                "another request holds this Idempotency-Key; retry shortly".into(),
            ),
        }
    }
}

impl From<crate::accounts::CreateError> for ApiError {
    fn from(error: crate::accounts::CreateError) -> Self {
        use crate::accounts::CreateError;
        match error {
            CreateError::UsernameTaken => conflict("username-taken", error.to_string()),
            CreateError::EmailTaken => conflict("email-taken", error.to_string()),
            CreateError::Database(e) => e.into(),
        }
    }
}
