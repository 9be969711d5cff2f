//! The event store on a real database, one test binary: appends, snapshots, conflicts and lookup
//! tables (`store`), batches (`batch`), idempotency records (`idempotency`) and the commit
//! notifier (`notifier`).

mod batch;
mod common;
mod idempotency;
mod notifier;
mod store;
