//! The event store on a real database, one test binary: appends, snapshots, conflicts and lookup
//! tables (`store`), batches (`batch`), grouped appends (`group`), idempotency records
//! (`idempotency`) and the commit
//! notifier (`notifier`).

mod batch;
mod common;
mod group;
mod idempotency;
mod notifier;
mod store;
