/// Why a rental command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RentalError {
    /// The rental's stream has not been opened (yet): the process manager has not caught up.
    #[error("the rental is not open yet")]
    NotOpened,
    /// `OpenRental` repeated with other facts than the first time.
    #[error("the rental was opened with other facts")]
    OpenedDifferently,
    /// `CloseRental` repeated with another time than the first time.
    #[error("the rental was closed at another time")]
    ClosedDifferently,
    /// A return cannot precede its rental.
    #[error("returned_at must not be before rented_at")]
    ReturnedBeforeRent,
    /// The copy is still out: there is nothing to pay yet.
    #[error("the rental has not been returned")]
    NotReturned,
    /// The rental was paid already.
    #[error("the rental is paid already")]
    AlreadyPaid,
    /// Only the exact charge can be paid.
    #[error("the amount must equal the charge of {expected_cents} cents")]
    WrongAmount {
        /// The charge.
        expected_cents: i64,
    },
    /// Only the customer who rented, or an admin, may pay.
    #[error("only the renter or an admin may pay for this rental")]
    NotTheRenter,
}
