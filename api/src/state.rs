//! The state every handler can reach.

use std::sync::Arc;

use projections::store::EventStore;
use sqlx::PgPool;

use crate::accounts::Accounts;
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
}
