//! Schemathesis against `/openapi.json`: generated valid and invalid requests for every
//! operation; no answer may be a 5xx, every answer's status must be documented, and every 4xx
//! must be the documented problem+json.
//!
//! Two runs. Every operation but logout and the password change runs with one admin's token;
//! those two end a token's life (logout revokes the token it is called with, a password change the
//! account's other tokens), so they run apart, each case with an account of its own (the hooks in
//! `fuzz_hooks.py`).
//!
//! Needs `st` (`pip install schemathesis==4.32.5`); without it the tests fail (`.ci/run` installs
//! it). `FUZZ_EXAMPLES` sets the examples per operation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

use crate::support::*;

const CHECKS: &str =
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance";

/// The two operations the first run leaves out.
const LOGOUT: &str = "/api/v1/auth/logout";
const PASSWORD_CHANGE: &str = "/api/v1/me/password";

fn schemathesis() -> &'static str {
    ["st", "schemathesis"]
        .into_iter()
        .find(|program| {
            std::process::Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("the fuzz tests need schemathesis: pip install schemathesis==4.32.5 (puts `st` on the PATH)")
}

/// What one schemathesis run printed.
struct Run {
    stdout: String,
    /// The summary line, `N generated, N passed` and so on.
    summary: String,
    /// The number of cases generated.
    generated: u64,
    /// `Tested: N operations`.
    tested: String,
}

/// Runs `st run` on the app's spec with the shared options and `extra` ones; asserts it found
/// no failure.
async fn run_schemathesis(app: &TestApp, extra: impl FnOnce(&mut tokio::process::Command)) -> Run {
    let examples = std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let reports = std::env::temp_dir().join(format!("moviestore-fuzz-{}", uuid::Uuid::now_v7()));
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(&reports)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    extra(&mut command);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis finished in 10 minutes")
        .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary =
        stdout.lines().find(|line| line.contains(" generated, ")).unwrap_or_default().trim().to_string();
    let generated = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let tested = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("Tested:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Run { stdout, summary, generated, tested }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer_in_any_operation(pool: PgPool) {
    // Arrange: some data, so generated ids sometimes meet real resources; no general rate limit,
    // since the fuzzer sends thousands of requests from one address.
    let options = Options { extra_env: vec![("MOVIESTORE_RATE_LIMIT_PER_SEC".into(), "0".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let admin = app.admin().await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let (_, customer) = app.customer("fuzzed").await;
    app.rent(movie, &customer).await;

    // Act: these two would end the shared token's life halfway through; the next test runs them.
    let run = run_schemathesis(&app, |command| {
        command.args(["--header", &format!("Authorization: Bearer {admin}")]).args([
            "--exclude-path",
            LOGOUT,
            "--exclude-path",
            PASSWORD_CHANGE,
        ]);
    })
    .await;

    // Assert
    assert!(run.generated > 500, "schemathesis ran a real number of cases: {}", run.summary);
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK, "the server survived");
    println!(
        "schemathesis: {} operations, {}: 0 server errors, 0 undocumented statuses or types",
        run.tested, run.summary
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn schemathesis_fuzzes_logout_and_the_password_change_with_an_account_per_case(pool: PgPool) {
    // Arrange
    let options = Options { extra_env: vec![("MOVIESTORE_RATE_LIMIT_PER_SEC".into(), "0".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fuzz_hooks.py");
    let statuses = scratch_dir("fuzz").join("statuses");

    // Act
    let run = run_schemathesis(&app, |command| {
        command
            .args(["--include-path", LOGOUT, "--include-path", PASSWORD_CHANGE])
            .env("SCHEMATHESIS_HOOKS", &hooks)
            .env("MOVIESTORE_FUZZ_URL", &app.address)
            .env("MOVIESTORE_FUZZ_PASSWORD", "fuzz-password-1")
            .env("MOVIESTORE_FUZZ_STATUSES", &statuses);
    })
    .await;

    // Assert: both operations ran for real, their success included, with no failure.
    let sent = std::fs::read_to_string(&statuses).unwrap_or_default();
    // POST answers by path and status; other methods (the coverage phase tries them) by path.
    let mut answers: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    let mut other_methods: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    for line in sent.lines() {
        let mut fields = line.split(' ');
        let (Some(method), Some(path), Some(status)) = (fields.next(), fields.next(), fields.next()) else {
            panic!("an unreadable status line: {line:?}");
        };
        let tally = if method == "POST" { &mut answers } else { &mut other_methods };
        *tally.entry(path).or_default().entry(status.parse().expect("a status")).or_default() += 1;
    }
    assert_eq!(run.tested, "Tested: 2", "both operations were fuzzed:\n{}", run.stdout);
    let counted: usize = answers.values().chain(other_methods.values()).flat_map(|s| s.values()).sum();
    assert_eq!(counted as u64, run.generated, "every case went through the hooks: {}", run.summary);
    for path in [LOGOUT, PASSWORD_CHANGE] {
        let by_status = answers.get(path).cloned().unwrap_or_default();
        let cases: usize = by_status.values().sum();
        assert!(cases >= 30, "{path}: a real number of cases, got {by_status:?}");
        assert!(
            by_status.get(&204).is_some_and(|n| *n > 0),
            "{path}: the success was reached: {by_status:?}"
        );
        assert!(by_status.keys().all(|s| *s < 500), "{path}: {by_status:?}");
    }
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK, "the server survived");
    println!(
        "schemathesis, one account per case: {}, {}: 0 server errors, 0 undocumented statuses or types; \
         POST answers {answers:?}, other methods {other_methods:?}",
        run.tested, run.summary
    );
}
