//! The `Movie` aggregate: a catalogue entry with exactly one copy. It holds the one-copy
//! invariant (at most one open rental), knows who holds the copy (so only the renter or an admin
//! returns it), refuses to rent or change a retired movie, and keeps rentals of its copy from
//! overlapping in business time. A popular movie's stream grows with every rental, so it is
//! snapshotted.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{Movie, MovieDetails, OpenRental};
pub use command::{MovieChanges, MovieCommand};
pub use error::MovieError;
pub use event::MovieEvent;
