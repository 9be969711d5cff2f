//! The process: start, SIGTERM, CLI.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn sigterm_stops_the_server_cleanly(pool: PgPool) {
    let app = TestApp::process(pool).await;
    signal(app.pid(), "0"); // the process is there
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let status = app.shutdown().await;
    assert!(status.success(), "exit status {status:?}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn create_user_makes_a_staff_account_that_logs_in_with_its_role(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;

    // Act
    let (ok, stdout, stderr) =
        run_cli(&app.database_url, &["create-user", "--role", "auditor", "Audrey"], "auditor-password-1\n")
            .await;

    // Assert
    assert!(ok, "create-user failed: {stderr}");
    let line = stdout.lines().find(|line| line.trim_start().starts_with('{')).unwrap_or(&stdout);
    let user: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("a User on stdout: {stdout}"));
    assert_eq!(user["username"], "Audrey");
    assert_eq!(user["role"], "auditor");
    assert!(user["email"].is_null(), "staff need no email: {user}");
    assert_eq!(uuid(&user["id"]), app.user_id("audrey").await);
    let token = app.login("audrey", "auditor-password-1").await;
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(me["role"], "auditor");
    let rent = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
    assert_problem(rent, 403, "forbidden").await;
    let category = app.post("/api/v1/categories", Some(&token), Some(json!({"name": "Noir"}))).await;
    assert_problem(category, 403, "forbidden").await;

    // A customer made with an email rents; the same username again is refused.
    let (ok, _, stderr) = run_cli(
        &app.database_url,
        &["create-user", "--role", "customer", "--email", "walter@example.com", "walter"],
        "walter-password-1\n",
    )
    .await;
    assert!(ok, "create-user customer failed: {stderr}");
    let walter = app.login("walter", "walter-password-1").await;
    app.rent(movie, &walter).await;
    let (ok, _, _) =
        run_cli(&app.database_url, &["create-user", "--role", "analyst", "AUDREY"], "another-password-1\n")
            .await;
    assert!(!ok, "a taken username must fail");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn create_user_refuses_invalid_input_with_a_failing_exit_status(pool: PgPool) {
    let database = pool.connect_options().get_database().expect("test database name").to_string();
    let database_url = database_url(&database);
    let cases: [(&str, &[&str], &str); 7] = [
        ("a customer without --email", &["create-user", "--role", "customer", "greg"], "password-123\n"),
        ("an unknown role", &["create-user", "--role", "superuser", "greg"], "password-123\n"),
        ("no role", &["create-user", "greg"], "password-123\n"),
        ("a username too short", &["create-user", "--role", "auditor", "ab"], "password-123\n"),
        (
            "a bad email",
            &["create-user", "--role", "customer", "--email", "not-an-email", "greg"],
            "password-123\n",
        ),
        ("a password too short", &["create-user", "--role", "auditor", "greg"], "short\n"),
        ("no password at all", &["create-user", "--role", "auditor", "greg"], ""),
    ];
    for (case, args, stdin) in cases {
        let (ok, _, stderr) = run_cli(&database_url, args, stdin).await;
        assert!(!ok, "{case}: expected a failing exit status");
        assert!(!stderr.trim().is_empty(), "{case}: an explanation on stderr");
    }
    let accounts: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&pool).await.unwrap();
    assert_eq!(accounts, 0, "no account was made");
}

async fn count_events(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events where event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn last_position(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select coalesce(max(position), 0) from events").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn seed_adds_the_default_catalogue_through_commands_once_and_generates_movies_on_request(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.admin().await;
    // A category an admin made before seeding is reused, not duplicated (names are case-insensitive).
    app.category("comedy").await;

    // Act
    let (ok, stdout, stderr) = run_cli(&app.database_url, &["seed", "--movies", "40"], "").await;

    // Assert: every category and movie has its events, and the read side shows them.
    assert!(ok, "seed failed: {stderr}");
    assert!(stdout.contains("11 categories created, 1 existed"), "seed said: {stdout}");
    assert_eq!(count_events(&pool, "CategoryCreated").await, 12);
    let default_movies = api::seed::MOVIES.len() as i64;
    assert_eq!(count_events(&pool, "MovieAdded").await, default_movies + 40);
    let seen = format!("?min_position={}", last_position(&pool).await);
    let categories =
        expect_status(app.get(&format!("/api/v1/categories{seen}"), Some(&admin)).await, StatusCode::OK)
            .await;
    let items = categories["items"].as_array().unwrap();
    assert_eq!(items.len(), 12, "{categories}");
    let total: i64 = items.iter().map(|c| c["movie_count"].as_i64().unwrap()).sum();
    let memberships: i64 = api::seed::MOVIES.iter().map(|m| m.categories.len() as i64).sum::<i64>()
        + (1..=40u64).map(|n| if n.is_multiple_of(3) { 2 } else { 1 }).sum::<i64>();
    assert_eq!(total, memberships, "movie counts over all categories: {categories}");
    let found =
        expect_status(app.get("/api/v1/movies?q=lebow%20coen", Some(&admin)).await, StatusCode::OK).await;
    let titles: Vec<&str> =
        found["items"].as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["The Big Lebowski"]);
    // The admin's own spelling of the category it made is kept.
    assert_eq!(found["items"][0]["categories"], json!(["comedy", "Crime"]));
    let documentaries =
        expect_status(app.get("/api/v1/movies?category=documentary", Some(&admin)).await, StatusCode::OK)
            .await;
    let defaults: Vec<&str> = documentaries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .filter(|title| api::seed::MOVIES.iter().any(|m| m.title == *title))
        .collect();
    assert_eq!(defaults, ["Hoop Dreams", "Man on Wire"], "the default documentaries, by title");
    let generated = expect_status(
        app.get("/api/v1/movies?q=generated%20movie&limit=100", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(generated["items"].as_array().unwrap().len(), 40, "generated movies are searchable");

    // The seed entered back-dated rentals for its demo customer: once the process manager has
    // opened them, three are overdue (the scheduler marks them) and two fall due soon.
    assert!(stdout.contains("5 demo rentals recorded, 0 existed"), "seed said: {stdout}");
    let settled = Instant::now() + Duration::from_secs(15);
    while (count_events(&pool, "RentalOpened").await, count_events(&pool, "RentalOverdue").await) != (5, 3) {
        assert!(Instant::now() < settled, "the demo rentals did not open and go overdue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::read_side::wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let demo = app.user_id(api::seed::DEMO_CUSTOMER).await;
    let overdue = expect_status(
        app.get(&format!("/api/v1/rentals?overdue=true&customer_id={demo}"), Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    let mut titles: Vec<&str> =
        overdue["items"].as_array().unwrap().iter().map(|r| r["movie_title"].as_str().unwrap()).collect();
    titles.sort();
    assert_eq!(titles, ["Alien", "Fargo", "Psycho"]);

    // A second run adds nothing; a larger --movies adds only the missing generated ones.
    let events_before = last_position(&pool).await;
    let (ok, stdout, stderr) = run_cli(&app.database_url, &["seed", "--movies", "40"], "").await;
    assert!(ok, "second seed failed: {stderr}");
    assert!(
        stdout.contains("0 categories created, 12 existed; 0 movies added"),
        "second seed said: {stdout}"
    );
    assert!(stdout.contains("0 demo rentals recorded, 5 existed"), "second seed said: {stdout}");
    assert_eq!(last_position(&pool).await, events_before, "a repeated seed appends no event");
    let (ok, stdout, stderr) = run_cli(&app.database_url, &["seed", "--movies", "45"], "").await;
    assert!(ok, "third seed failed: {stderr}");
    assert!(stdout.contains("5 movies added"), "third seed said: {stdout}");
    assert_eq!(count_events(&pool, "MovieAdded").await, default_movies + 45);

    // Seeded events say who made them: the system, under one correlation id per run.
    let metadata: Vec<Value> =
        sqlx::query_scalar("select metadata from events where event_type = 'MovieAdded' order by position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(metadata.iter().all(|m| m["actor_id"].is_null()), "seeded by the system");
    let runs: std::collections::HashSet<&str> =
        metadata.iter().map(|m| m["correlation_id"].as_str().expect("correlation id")).collect();
    assert_eq!(runs.len(), 2, "two seeds added movies: {runs:?}");
}
