//! The process: start, SIGTERM, CLI.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn sigterm_stops_the_server_cleanly(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    signal(app.pid(), "0"); // the process is there
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let status = app.shutdown().await;
    assert!(status.success(), "exit status {status:?}");
}

/// Runs `moviestore ARGS` against a database with `stdin` as its input; returns (success, stdout, stderr).
async fn run_cli(database_url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(binary())
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("MOVIESTORE_ARGON2_MEMORY_KIB", "512")
        .env("MOVIESTORE_ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moviestore");
    let mut input = child.stdin.take().expect("stdin");
    // The command may exit before reading its input; a broken pipe is fine then.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finished in time")
        .expect("wait");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
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
