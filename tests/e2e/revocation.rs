//! Token revocations across processes: each `serve` caches the tokens it has authenticated, and
//! API.md says "logout takes effect at once in every process". Two processes share one database;
//! a token is cached by one, revoked through the other (or the CLI), and used again on the first
//! right after the revoking answer, with no pause in between.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::*;

/// How many tokens `app` has served from its cache so far.
async fn cache_hits(app: &TestApp) -> f64 {
    let scrape = app.get("/metrics", None).await.text().await.unwrap();
    samples(&scrape, "token_cache_lookups_total", &["result=\"hit\""]).iter().map(|s| value(s)).sum()
}

/// Uses `token` on `app` until `app` serves it from its cache (its membership is joined).
async fn until_cached(app: &TestApp, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = cache_hits(app).await;
        expect_status(app.get("/api/v1/me", Some(token)).await, StatusCode::OK).await;
        expect_status(app.get("/api/v1/me", Some(token)).await, StatusCode::OK).await;
        if cache_hits(app).await > before {
            return;
        }
        assert!(Instant::now() < deadline, "the process never served the token from its cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn change_password(app: &TestApp, token: &str, current: &str, new: &str) {
    let body = json!({"current_password": current, "new_password": new});
    let response = app.post("/api/v1/me/password", Some(token), Some(body)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn revocations_take_effect_in_every_process_before_they_answer(pool: PgPool) {
    // Arrange: two processes on one database; both have cached a token.
    let apps = [TestApp::spawn(pool.clone()).await, TestApp::spawn(pool.clone()).await];
    let (_, greg) = apps[0].customer("greg").await;
    for app in &apps {
        until_cached(app, &greg).await;
    }
    let hits_before = cache_hits(&apps[1]).await;

    // Act and assert: logouts, alternating which process revokes and which checks.
    const ROUNDS: usize = 40;
    let mut served_after_logout = 0;
    for round in 0..ROUNDS {
        let (revoker, checker) = (&apps[round % 2], &apps[(round + 1) % 2]);
        let token = revoker.login("greg", "password-123").await;
        for _ in 0..2 {
            expect_status(checker.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
        }
        let logout = revoker.post("/api/v1/auth/logout", Some(&token), None).await;
        assert_eq!(logout.status(), StatusCode::NO_CONTENT);
        if checker.get("/api/v1/me", Some(&token)).await.status() != StatusCode::UNAUTHORIZED {
            served_after_logout += 1;
        }
    }
    let hits = cache_hits(&apps[1]).await - hits_before;
    println!(
        "revocation: {ROUNDS} logouts on one process, each token used on the other right after: \
         {served_after_logout} served after the logout answered; the checking process served {hits} \
         lookups from its cache"
    );
    assert_eq!(served_after_logout, 0);
    assert!(hits >= (ROUNDS / 2) as f64, "the cache was not in use, so this proved nothing: {hits} hits");

    // A role change on one process is what the other serves at once.
    let (ilsa_id, ilsa) = apps[0].customer("ilsa").await;
    until_cached(&apps[1], &ilsa).await;
    let admin = apps[0].admin().await;
    let patched = apps[0]
        .patch(&format!("/api/v1/admin/users/{ilsa_id}"), Some(&admin), json!({"role": "auditor"}))
        .await;
    expect_status(patched, StatusCode::OK).await;
    let me = expect_status(apps[1].get("/api/v1/me", Some(&ilsa)).await, StatusCode::OK).await;
    assert_eq!(me["role"], "auditor", "the other process still served the old role");

    // A password change revokes the account's other tokens everywhere, and keeps the one used.
    let (_, rick_first) = apps[0].customer("rick").await;
    let rick_second = apps[0].login("rick", "password-123").await;
    until_cached(&apps[1], &rick_second).await;
    until_cached(&apps[1], &rick_first).await;
    change_password(&apps[0], &rick_first, "password-123", "password-456").await;
    assert_problem(apps[1].get("/api/v1/me", Some(&rick_second)).await, 401, "unauthorized").await;
    expect_status(apps[1].get("/api/v1/me", Some(&rick_first)).await, StatusCode::OK).await;

    // Erasure from the command line (a third process) revokes in the running ones before it exits.
    let (_, victor) = apps[0].customer("victor").await;
    until_cached(&apps[1], &victor).await;
    let (ok, _, stderr) = run_cli(&apps[0].database_url, &["erase-user", "victor"], "").await;
    assert!(ok, "erase-user failed: {stderr}");
    assert_problem(apps[1].get("/api/v1/me", Some(&victor)).await, 401, "unauthorized").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_lost_listen_connection_or_a_killed_process_neither_serves_revoked_tokens_nor_blocks_logout(
    pool: PgPool,
) {
    // Arrange
    let apps = [TestApp::spawn(pool.clone()).await, TestApp::spawn(pool.clone()).await];
    let (_, greg) = apps[0].customer("greg").await;
    until_cached(&apps[1], &greg).await;

    // Act: PostgreSQL drops every connection that holds a cache membership (they are the ones
    // that LISTEN on the revocation channel), then logouts follow at once and while they rejoin.
    let dropped: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and pid <> pg_backend_pid()
            and query like '%update token_cache_members set%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut served_after_logout = 0;
    let rounds = 30;
    for _ in 0..rounds {
        let token = apps[0].login("greg", "password-123").await;
        expect_status(apps[1].get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
        let logout = apps[0].post("/api/v1/auth/logout", Some(&token), None).await;
        assert_eq!(logout.status(), StatusCode::NO_CONTENT);
        if apps[1].get("/api/v1/me", Some(&token)).await.status() != StatusCode::UNAUTHORIZED {
            served_after_logout += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The membership came back by itself.
    until_cached(&apps[1], &greg).await;

    // A process killed with its token cache full must not hold revocations back beyond its lease.
    let [first, second] = apps;
    signal(second.pid(), "KILL");
    let token = first.login("greg", "password-123").await;
    let started = Instant::now();
    let logout = first.post("/api/v1/auth/logout", Some(&token), None).await;
    let waited = started.elapsed();

    // Assert
    println!(
        "revocation faults: {} membership connection(s) dropped; {rounds} logouts around the rejoin, \
         {served_after_logout} served after the logout answered; logout beside a killed member answered in {waited:?}",
        dropped.len()
    );
    assert!(!dropped.is_empty(), "no membership connection was found to drop");
    assert_eq!(served_after_logout, 0);
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_problem(first.get("/api/v1/me", Some(&token)).await, 401, "unauthorized").await;
}
