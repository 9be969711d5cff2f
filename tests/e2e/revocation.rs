//! Token revocations across processes: each `serve` caches the tokens it has authenticated, and
//! API.md says "logout takes effect at once in every process". Two processes share one database;
//! a token is cached by one, revoked through the other (or the CLI), and used again on the first
//! right after the revoking answer, with no pause in between.

use std::time::{Duration, Instant};

use api::accounts::token_cache::{ACKNOWLEDGE_LIMIT, LEASE};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

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
    let apps = [TestApp::process(pool.clone()).await, TestApp::process(pool.clone()).await];
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
    let apps = [TestApp::process(pool.clone()).await, TestApp::process(pool.clone()).await];
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
    // Started before PostgreSQL's clock is read, so `waited` spans at least that much of its time.
    let started = Instant::now();
    let sent_at: f64 = sqlx::query_scalar("select extract(epoch from clock_timestamp())::float8")
        .fetch_one(&pool)
        .await
        .unwrap();
    let logout = first.post("/api/v1/auth/logout", Some(&token), None).await;
    let waited = started.elapsed();
    // The killed member's lease is the last one to have run out (the live member renews its own).
    let lease_end: f64 = sqlx::query_scalar(
        "select extract(epoch from max(lease_until))::float8 from token_cache_members
          where lease_until <= clock_timestamp()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let lease_left = Duration::from_secs_f64((lease_end - sent_at).max(0.0));

    // Assert
    println!(
        "revocation faults: {} membership connection(s) dropped; {rounds} logouts around the rejoin, \
         {served_after_logout} served after the logout answered; logout beside a killed member answered \
         in {waited:?}, its lease had {lease_left:?} left when the logout was sent",
        dropped.len()
    );
    assert!(!dropped.is_empty(), "no membership connection was found to drop");
    assert_eq!(served_after_logout, 0);
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    // It waited for the killed member until its lease ran out, not longer (ADR 18: at most LEASE).
    let slack = Duration::from_millis(500);
    assert!(
        waited + Duration::from_millis(5) >= lease_left,
        "answered before the killed member's lease ran out: {waited:?} < {lease_left:?}"
    );
    assert!(waited <= lease_left + slack, "waited {waited:?} past the lease's end ({lease_left:?})");
    assert!(waited <= LEASE + slack, "waited {waited:?}, more than a lease ({LEASE:?})");
    assert_problem(first.get("/api/v1/me", Some(&token)).await, 401, "unauthorized").await;
}

/// The cache membership of the process that joined last: its id.
async fn newest_member(pool: &PgPool, known: &[Uuid]) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let members: Vec<Uuid> =
            sqlx::query_scalar("select member_id from token_cache_members").fetch_all(pool).await.unwrap();
        let new: Vec<Uuid> = members.into_iter().filter(|m| !known.contains(m)).collect();
        if let [member] = new[..] {
            return member;
        }
        assert!(new.len() < 2, "more than one new member: {new:?}");
        assert!(Instant::now() < deadline, "the process never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_member_that_never_acknowledges_holds_a_logout_back_for_5_s_at_most_and_serves_nothing_revoked(
    pool: PgPool,
) {
    // Arrange: two processes; the second caches a token, then stops (SIGSTOP) while its lease is
    // kept alive for it, as by a member that renews its lease but never acknowledges (a defect the
    // revoking side must survive: ACKNOWLEDGE_LIMIT).
    let log = scratch_dir("revocation").join("first.log");
    let first =
        TestApp::spawn_with_stderr(pool.clone(), Options::default(), std::fs::File::create(&log).unwrap())
            .await;
    let (_, greg) = first.customer("greg").await;
    until_cached(&first, &greg).await;
    let first_member = newest_member(&pool, &[]).await;
    let second = TestApp::process(pool.clone()).await;
    let token = first.login("greg", "password-123").await;
    until_cached(&second, &token).await;
    let stopped = newest_member(&pool, &[first_member]).await;
    signal(second.pid(), "STOP");
    sqlx::query(
        "update token_cache_members set lease_until = now() + interval '1 hour' where member_id = $1",
    )
    .bind(stopped)
    .execute(&pool)
    .await
    .unwrap();

    // Act
    let started = Instant::now();
    let logout = first.post("/api/v1/auth/logout", Some(&token), None).await;
    let waited = started.elapsed();
    let on_first = first.get("/api/v1/me", Some(&token)).await.status();
    signal(second.pid(), "CONT");
    // Its cache lapsed on its own clock while it was stopped; it must not serve the token again.
    let on_second = second.get("/api/v1/me", Some(&token)).await.status();
    // Resumed, it acknowledges again: the next logout is not held back.
    let next = first.login("greg", "password-123").await;
    let next_started = Instant::now();
    let next_logout = first.post("/api/v1/auth/logout", Some(&next), None).await;
    let next_waited = next_started.elapsed();

    // Assert
    println!(
        "revocation with a member that does not acknowledge: logout answered {} after {waited:?} \
         (the limit is {ACKNOWLEDGE_LIMIT:?}); the token then {on_first} on the revoking process and {on_second} \
         on the resumed one; the next logout answered in {next_waited:?}",
        logout.status()
    );
    assert_eq!(logout.status(), StatusCode::NO_CONTENT, "the logout still succeeds");
    assert!(waited >= ACKNOWLEDGE_LIMIT, "gave up before the limit: {waited:?}");
    assert!(waited < ACKNOWLEDGE_LIMIT + Duration::from_secs(1), "held back past the limit: {waited:?}");
    assert_eq!(on_first, StatusCode::UNAUTHORIZED);
    assert_eq!(on_second, StatusCode::UNAUTHORIZED, "the resumed process served a revoked token");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("did not acknowledge a revocation in time"),
        "the give-up is logged as an error: {logged}"
    );
    assert_eq!(next_logout.status(), StatusCode::NO_CONTENT);
    assert!(next_waited < Duration::from_secs(1), "the resumed member acknowledges again: {next_waited:?}");
}
