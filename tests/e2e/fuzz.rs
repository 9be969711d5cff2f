//! Schemathesis against `/openapi.json`: generated valid and invalid requests for every
//! operation, with an admin's token; no answer may be a 5xx, every answer's status must be
//! documented, and every 4xx must be the documented problem+json.
//!
//! Needs `st` (`pip install schemathesis`); `.ci/run` installs it. Without it the test says so and
//! passes, except under CI, where it fails. `FUZZ_EXAMPLES` sets the examples per operation.

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

use crate::support::*;

fn schemathesis() -> Option<&'static str> {
    ["st", "schemathesis"].into_iter().find(|program| {
        std::process::Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer_in_any_operation(pool: PgPool) {
    let program = schemathesis()
        .expect("the fuzz test needs schemathesis: pip install schemathesis==4.32.5 (puts `st` on the PATH)");
    // Arrange: some data, so generated ids sometimes meet real resources; no general rate limit,
    // since the fuzzer sends thousands of requests from one address.
    let options = Options { extra_env: vec![("MOVIESTORE_RATE_LIMIT_PER_SEC".into(), "0".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let admin = app.admin().await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let (_, customer) = app.customer("fuzzed").await;
    app.rent(movie, &customer).await;
    let examples = std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let reports = std::env::temp_dir().join(format!("moviestore-fuzz-{}", uuid::Uuid::now_v7()));

    // Act
    let output = tokio::process::Command::new(program)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance"])
        .args(["--max-examples", &examples])
        .args(["--phases", "examples,coverage,fuzzing"])
        // These two would end the shared token's life halfway through.
        .args(["--exclude-path", "/api/v1/auth/logout", "--exclude-path", "/api/v1/me/password"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(&reports)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .expect("schemathesis finished in 10 minutes")
        .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&reports);

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary =
        stdout.lines().find(|line| line.contains(" generated, ")).unwrap_or_default().trim().to_string();
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated: u64 = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(generated > 500, "schemathesis ran a real number of cases: {summary}");
    let tested =
        stdout.lines().find(|line| line.trim_start().starts_with("Tested:")).unwrap_or_default().trim();
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), reqwest::StatusCode::OK, "the server survived");
    println!(
        "schemathesis: {tested} operations, {summary}: 0 server errors, 0 undocumented statuses or types"
    );
}
