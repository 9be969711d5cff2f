//! Connecting to PostgreSQL: create the database when missing, pool, migrate.

use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::{Config, DatabaseConfig};
use crate::private_pg::PrivatePostgres;

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

/// How long a connection may have been idle in the pool and still be handed out without a ping.
///
/// sqlx 0.8 pings a connection (one round trip) when it is handed back to the pool, and, by
/// default, again when it is taken out: two round trips around every use, which under the
/// `commands` load were 7 % of `serve`'s samples. The ping on the way back stays (it also
/// discards a connection left in a bad state); the one on the way out is kept only for a
/// connection that has sat idle longer than this since that check, so a server that restarted
/// or a connection that was cut meanwhile is still found before a caller uses it.
pub const UNTESTED_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A pool with the configured limits.
pub async fn pool(config: &DatabaseConfig, options: PgConnectOptions) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for <= UNTESTED_IDLE {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
        .connect_with(options)
        .await
        .context("could not connect to PostgreSQL (DATABASE_URL)")
}

/// Applies the embedded migrations (safe to run from several processes at once: sqlx holds an
/// advisory lock while migrating), then gives every stored name its comparison key, which SQL
/// cannot compute ([`crate::name_keys`]).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    crate::MIGRATOR.run(pool).await.context("could not run migrations")?;
    crate::name_keys::settle(pool).await.context("could not compute the stored names' keys")?;
    Ok(())
}

/// Decides which PostgreSQL this process uses (API.md, `MOVIESTORE_EMBEDDED_POSTGRES`) and logs
/// it, without the password: the one `DATABASE_URL` names, or the private cluster under
/// `MOVIESTORE_DATA_DIR`, started or joined here. The returned cluster is stopped when this
/// process owns it and drops it.
pub async fn resolve(config: &mut Config) -> anyhow::Result<Option<PrivatePostgres>> {
    use crate::config::EmbeddedPostgres;
    let private = match config.database.embedded {
        EmbeddedPostgres::Never => false,
        EmbeddedPostgres::Always => true,
        EmbeddedPostgres::Auto => !config.database.url_given && !default_server_answers().await,
    };
    if !private {
        tracing::info!(database = %without_password(config.database.url.expose_secret()), "using PostgreSQL");
        return Ok(None);
    }
    let data_dir = config.data_dir.clone();
    let pg_bin = config.database.pg_bin.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        let bin = crate::private_pg::find_server_programs(pg_bin.as_deref())?;
        PrivatePostgres::start_or_join(&data_dir, &bin, &[])
    })
    .await
    .context("starting the private PostgreSQL")??;
    tracing::info!(
        database = %cluster.display_url("moviestore"),
        pgdata = %cluster.pgdata().display(),
        how = cluster.how(),
        "using the private PostgreSQL"
    );
    config.database.url = cluster.url("moviestore").into();
    Ok(Some(cluster))
}

/// Stops a private cluster this process owns, off the async threads.
pub async fn release(cluster: Option<PrivatePostgres>) {
    if let Some(mut cluster) = cluster {
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = cluster.stop() {
                tracing::warn!(%error, "could not stop the private PostgreSQL");
            }
        })
        .await;
    }
}

/// Whether something accepts connections at the default address (127.0.0.1:5432).
async fn default_server_answers() -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", 5432));
    matches!(tokio::time::timeout(std::time::Duration::from_secs(2), connect).await, Ok(Ok(_)))
}

/// A database URL fit for logs: the password replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    if rest.contains('/') {
        format!("{scheme}://{authority}/{tail}")
    } else {
        format!("{scheme}://{authority}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::PgPool;

    use super::*;
    use crate::config::EmbeddedPostgres;

    /// A pool of one connection made as the app makes its pools, on the test's database.
    async fn one_connection(test_pool: &PgPool) -> PgPool {
        let config = DatabaseConfig {
            url: String::new().into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            run_migrations: false,
            url_given: true,
            embedded: EmbeddedPostgres::Never,
            pg_bin: None,
        };
        pool(&config, (*test_pool.connect_options()).clone()).await.expect("a pool")
    }

    async fn backend(pool: &PgPool) -> i32 {
        sqlx::query_scalar("select pg_backend_pid()").fetch_one(pool).await.expect("a backend pid")
    }

    #[sqlx::test(migrations = false)]
    async fn a_connection_the_server_ended_while_it_sat_idle_is_never_handed_out(test_pool: PgPool) {
        // Arrange: the pool's one connection, used and handed back.
        let pool = one_connection(&test_pool).await;
        let first = backend(&pool).await;

        // Act: the server ends it while it sits idle, longer than a connection goes untested.
        let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&test_pool)
            .await
            .expect("terminate");
        assert!(ended);
        tokio::time::sleep(UNTESTED_IDLE + Duration::from_millis(200)).await;

        // Assert: the next caller gets a live connection, a new one.
        let second = backend(&pool).await;
        assert_ne!(second, first, "the ended connection was replaced");
        assert_eq!(pool.size(), 1);
    }

    #[test]
    fn a_logged_url_never_shows_its_password() {
        assert_eq!(
            super::without_password("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(super::without_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::without_password("postgres://h"), "postgres://h");
    }
}
