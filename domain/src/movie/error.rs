/// Why a movie command was refused. Each variant names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MovieError {
    /// A movie with this id exists already.
    #[error("the movie exists already")]
    AlreadyExists,
    /// There is no movie with this id.
    #[error("movie not found")]
    NotFound,
    /// The movie is retired and can no longer change.
    #[error("the movie is retired")]
    Retired,
    /// The copy is out, or the movie is retired.
    #[error("the movie is not available")]
    NotAvailable,
    /// The rental is not the movie's open rental (it was returned already).
    #[error("the rental is not active")]
    NotActive,
    /// Only the customer who rented the copy, or an admin, may return it.
    #[error("only the renter or an admin may return this rental")]
    NotTheRenter,
    /// A rental cannot start in the future.
    #[error("rented_at must not be in the future")]
    RentedInFuture,
    /// Rentals of one copy never overlap: a rental cannot start before the previous return.
    #[error("rented_at must not be before the movie's previous return")]
    RentedBeforePreviousReturn,
    /// A return cannot happen in the future.
    #[error("returned_at must not be in the future")]
    ReturnedInFuture,
    /// A return cannot precede its rental.
    #[error("returned_at must not be before rented_at")]
    ReturnedBeforeRent,
}
