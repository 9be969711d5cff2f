//! Transactions that a cancelled caller cannot leave open.
//!
//! sqlx 0.8's `Pool::begin` counts a transaction as open only once PostgreSQL has answered its
//! `BEGIN`. A caller dropped in between (a client that disconnects mid-request, a timeout, an
//! aborted task) hands the connection back to the pool inside a transaction that nothing will
//! end: sqlx's rollback-on-drop does not know of it, and the pool's check on release only waits
//! for the server to be ready. Every later statement on that connection then runs inside it,
//! invisible to every other session: a token issued on it is unknown to the next request, and
//! what it wrote is lost when the server ends the idle transaction (sqlx issue 4393, reported on
//! 0.8.6 and 0.9.0). [`begin`] runs the `BEGIN` round trip on a task of its own, which
//! finishes it whatever happens to the caller; a transaction nobody takes is then dropped as
//! any other, and its rollback is sent before the connection is reused.

use sqlx::{PgPool, Postgres, Transaction};

/// Starts a transaction on a connection of `pool`; safe to cancel at any point. Use it instead
/// of `Pool::begin` (clippy's `disallowed-methods` enforces it).
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)] // the one place that may call it
    let beginning = tokio::spawn(async move { pool.begin().await });
    match beginning.await {
        Ok(begun) => begun,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        // The runtime is shutting down: no connection can be used any more.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}
