//! Connecting to PostgreSQL: create the database when missing, pool, migrate.

use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseConfig;

/// Connection options shared by every pool of the app. A write transaction left open holds every
/// projector back (they read only behind the oldest running transaction), so an idle one is
/// ended by the server after a few seconds.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("moviestore")
        .options([("idle_in_transaction_session_timeout", "5s")]))
}

/// Creates the database if missing, then opens a pool.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let url = config.url.expose_secret();
    if config.run_migrations && !Postgres::database_exists(url).await.unwrap_or(true) {
        Postgres::create_database(url)
            .await
            .or_else(|e| match e.as_database_error().and_then(|db| db.code()) {
                // Another process created it first.
                Some(code) if code == "42P04" => Ok(()),
                _ => Err(e),
            })
            .context("could not create the database")?;
    }
    pool(config, connect_options(url)?).await
}

/// A pool with the configured limits.
pub async fn pool(config: &DatabaseConfig, options: PgConnectOptions) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .context("could not connect to PostgreSQL (DATABASE_URL)")
}

/// Applies the embedded migrations (safe to run from several processes at once: sqlx holds an
/// advisory lock while migrating).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    crate::MIGRATOR.run(pool).await.context("could not run migrations")
}
