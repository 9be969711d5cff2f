//! The event store on a real database, one test binary: appends, snapshots, conflicts and lookup
//! tables (`store`), batches (`batch`), grouped appends (`group`), idempotency records
//! (`idempotency`), the commit
//! notifier (`notifier`) and cancel-safe transactions (`transactions`).

mod batch;
mod common;
mod group;
mod idempotency;
mod notifier;
mod store;
mod transactions;
