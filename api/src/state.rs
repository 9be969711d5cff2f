//! The state every handler can reach.

use std::sync::Arc;

use projections::analytics::AnalyticsReader;
use projections::catalogue::CatalogueReader;
use projections::engine::Engine;
use projections::rentals::RentalsReader;
use projections::store::EventStore;
use sqlx::PgPool;

use crate::accounts::Accounts;
use crate::cache::Cache;
use crate::config::Config;

/// Shared, cheap-to-clone handles.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub db: PgPool,
    /// The event store and command executor.
    pub store: EventStore,
    /// Accounts and tokens.
    pub accounts: Accounts,
    /// The price plan new charges are assessed with.
    pub price_plan: Arc<domain::price::PricePlan>,
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
}
