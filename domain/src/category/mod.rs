//! The `Category` aggregate: a named group of movies. Names are unique case-insensitively; that
//! rule spans aggregates, so the event store enforces it with a lookup table written in the same
//! transaction as the event.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::Category;
pub use command::CategoryCommand;
pub use error::CategoryError;
pub use event::CategoryEvent;
