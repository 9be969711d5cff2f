//! The event store: the one way events get into `events`, and the way aggregates are loaded.
//! It knows aggregates only through cqrs-es's `Aggregate` trait and the domain's types; the read
//! side (`projections`) and the API build on it.
//!
//! cqrs-es 0.5's own stores cannot give the contract what it needs (see DESIGN.md, "Known
//! defects"): they return neither the position nor the id of what they appended, apply events
//! twice when snapshotting, and cannot write lookup rows in the same transaction. So commands run
//! through [`EventStore::execute`]: load (snapshot + later events, read through postgres-es), call
//! the aggregate's own `handle` with an `EventSink`, then append every event of the command in one
//! multi-row `INSERT ... RETURNING position, event_id`, together with the lookup rows and the
//! snapshot, in one transaction. A concurrent append to the same stream violates the primary key
//! and surfaces as a conflict, which is retried against fresh state.
//!
//! [`EventStore::execute_batch`] runs many commands on streams of one kind the same way, as one
//! unit: one load query, one append transaction (the payments process manager's path). After a
//! commit the store wakes projectors through a notifier that coalesces bursts of commits into
//! one `NOTIFY`, sent from a task of its own, so no command waits for it.

mod batch;
mod codec;
pub mod db;
pub mod deadline;
mod executor;
pub mod generations;
mod group;
pub mod idempotency;
pub mod lookup;
mod notifier;
mod recent;
mod stream;

pub use batch::{BatchCommand, CommandOutcome};
pub use codec::{decode_event, decode_event_str, encode_event, upcast, EncodedEvent};
pub use executor::{
    CommandContext, CommandError, Committed, EventStore, Metadata, RecordedEvent, RetryPolicy,
};
pub use group::MAX_GROUP;
pub use stream::{Loaded, StreamKind};

/// The channel projectors listen on. After appends commit, the store's notifier sends the last
/// position committed on it: once per burst of commits, not once per commit.
pub const EVENTS_CHANNEL: &str = "moviestore_events";
