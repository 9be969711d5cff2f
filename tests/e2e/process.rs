//! The process: start, SIGTERM, CLI.

use sqlx::PgPool;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn sigterm_stops_the_server_cleanly(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let status = app.shutdown().await;
    assert!(status.success(), "exit status {status:?}");
}
