//! The state every handler can reach.

use std::sync::Arc;

use eventstore::EventStore;
use projections::analytics::AnalyticsReader;
use projections::catalogue::CatalogueReader;
use projections::engine::Engine;
use projections::rentals::RentalsReader;
use sqlx::PgPool;

use crate::accounts::Accounts;
use crate::cache::Cache;
use crate::config::Config;

/// The state: one pointer, so the clone every middleware layer and extractor makes per request is
/// one reference count, not one for each handle (a profile of cached reads showed those clones and
/// drops at about 6% of the server's time).
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// The state over its handles.
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// Shared handles.
pub struct Handles {
    /// The configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub db: PgPool,
    /// The event store and command executor.
    pub store: EventStore,
    /// Accounts and tokens.
    pub accounts: Accounts,
    /// The keys idempotency records are hashed and sealed with.
    pub secrets: Arc<crate::secret::Secrets>,
    /// The price plan new charges are assessed with.
    pub price_plan: Arc<domain::price::PricePlan>,
    /// Where a payment that finds its charge pending waits for it: `None` when no payments
    /// process manager runs in this process (it would not be woken).
    pub charge_waits: Option<projections::payments::ChargeWaits>,
    /// The catalogue read model.
    pub catalogue: CatalogueReader,
    /// The rental status read model.
    pub rentals: RentalsReader,
    /// The analytics read model.
    pub analytics: AnalyticsReader,
    /// The movie-details cache (Redis, connected lazily).
    pub cache: Cache,
    /// The projections (for operating them).
    pub engine: Engine,
    /// What `/ready` and `/metrics` read, shared between callers.
    pub status: crate::status::StatusBoard,
}
