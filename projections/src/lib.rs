//! The event store's write path and the read side of the movie store.
//!
//! Map:
//! - [`store`]: appending events (our write path over cqrs-es aggregates), loading streams
//!   through postgres-es, snapshots, the synchronous lookup tables, and the command executor
//!   that retries on conflicts. It lives here, below the API, because the payments process
//!   manager issues commands too.
//!
//! Nothing here knows about HTTP.

pub mod store;
