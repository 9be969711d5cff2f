//! Operating the projections over HTTP: progress, rebuild, readiness.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::read_side::wait_for_projections;
use crate::support::*;

async fn titles(app: &TestApp, token: &str) -> Value {
    let body =
        expect_status(app.get("/api/v1/movies?available=any&limit=100", Some(token)).await, StatusCode::OK)
            .await;
    body["items"].clone()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_sees_projection_progress_and_rebuilds_a_read_model_while_it_keeps_serving(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    for title in ["Heat", "Ran", "Alien"] {
        app.movie(title, &[drama]).await;
    }
    let items = wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let names: Vec<&str> = items.iter().map(|p| p["name"].as_str().unwrap()).collect();
    // The due-date scheduler and the email sender are listed with the projections and the
    // process managers (payments, notifications).
    assert_eq!(
        names,
        [
            "analytics",
            "catalogue",
            "due-dates",
            "notification-sender",
            "notifications",
            "payments",
            "rentals"
        ]
    );
    for item in &items {
        for field in ["position", "lag_events", "lag_seconds", "state", "last_error"] {
            assert!(item.get(field).is_some(), "{field} in {item}");
        }
        // The email sender may still be writing the welcome email (it is not waited for).
        if item["name"] != "notification-sender" {
            assert_eq!(item["state"], "running", "{item}");
        }
    }
    let before = titles(&app, &customer).await;
    assert_eq!(before.as_array().unwrap().len(), 3);
    let checkpoint_moved = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "select updated_at from projection_checkpoint where name = 'catalogue'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let moved_before = checkpoint_moved().await;

    // Act
    let started = app.post("/api/v1/admin/projections/catalogue/rebuild", Some(&admin), None).await;

    // Assert
    let started = expect_status(started, StatusCode::ACCEPTED).await;
    assert_eq!(started["name"], "catalogue");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shadows: i64 =
            sqlx::query_scalar("select count(*) from pg_namespace where nspname like 'read_shadow_%'")
                .fetch_one(&pool)
                .await
                .unwrap();
        // Reads keep being served during and after the swap.
        assert_eq!(titles(&app, &customer).await, before);
        // Nothing else is appended meanwhile: only the swap moves the checkpoint.
        if shadows == 0 && checkpoint_moved().await != moved_before {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.movie("Brazil", &[drama]).await;
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    assert_eq!(
        titles(&app, &customer).await.as_array().unwrap().len(),
        4,
        "the rebuilt model keeps following the log"
    );
    println!("rebuild over HTTP: 202, reads unchanged throughout, new events applied after the swap");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn only_read_models_are_rebuilt_and_only_by_admins(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;

    let payments = app.post("/api/v1/admin/projections/payments/rebuild", Some(&admin), None).await;
    assert_problem(payments, 409, "not-rebuildable").await;
    let unknown = app.post("/api/v1/admin/projections/nonesuch/rebuild", Some(&admin), None).await;
    assert_problem(unknown, 404, "not-found").await;
    let by_customer = app.post("/api/v1/admin/projections/catalogue/rebuild", Some(&customer), None).await;
    assert_problem(by_customer, 403, "forbidden").await;
    assert_problem(app.get("/api/v1/admin/projections", Some(&customer)).await, 403, "forbidden").await;
    assert_problem(app.get("/api/v1/admin/projections", None).await, 401, "unauthorized").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn readiness_reports_postgres_redis_and_every_projection(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    expect_status(app.get("/health", None).await, StatusCode::OK).await;
    let ready = expect_status(app.get("/ready", None).await, StatusCode::OK).await;
    assert_eq!(ready["postgres"], "up");
    assert_eq!(ready["redis"], "up");
    let names: Vec<&str> =
        ready["projections"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["analytics", "catalogue", "notifications", "payments", "rentals"]);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_second_rebuild_of_a_read_model_is_refused_in_every_process_while_the_first_runs(pool: PgPool) {
    // Arrange: two processes over one database, some catalogue to rebuild.
    let first = TestApp::spawn(pool.clone()).await;
    let second = TestApp::spawn(pool.clone()).await;
    let admin = first.admin().await;
    let drama = first.category("Drama").await;
    first.movie("Heat", &[drama]).await;
    wait_for_projections(&first, &first.address, Duration::from_secs(10)).await;
    // Hold the catalogue's projection lock: the rebuild fills its shadow and then waits to swap,
    // so it stays running for as long as this test needs.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock(hashtext('projection:catalogue'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = first.post("/api/v1/admin/projections/catalogue/rebuild", Some(&admin), None).await;
    expect_status(started, StatusCode::ACCEPTED).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_namespace where nspname = 'read_shadow_catalogue')
                and exists (select 1 from pg_stat_activity
                             where datname = current_database() and wait_event = 'advisory')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild never reached its swap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act: the same rebuild again, from each process and from the command line, and a verify.
    let again = first.post("/api/v1/admin/projections/catalogue/rebuild", Some(&admin), None).await;
    let elsewhere = second.post("/api/v1/admin/projections/catalogue/rebuild", Some(&admin), None).await;
    let other_model = second.post("/api/v1/admin/projections/rentals/rebuild", Some(&admin), None).await;
    let (cli_code, cli_output) = cli_status(&first.database_url, &["rebuild", "catalogue"]).await;
    let (verify_code, verify_output) = cli_status(&first.database_url, &["verify"]).await;
    let shadows_while_running: i64 =
        sqlx::query_scalar("select count(*) from pg_namespace where nspname = 'read_shadow_catalogue'")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("select pg_advisory_unlock(hashtext('projection:catalogue'))")
        .execute(&mut *holder)
        .await
        .unwrap();

    // Assert
    assert_problem(again, 409, "rebuild-running").await;
    assert_problem(elsewhere, 409, "rebuild-running").await;
    expect_status(other_model, StatusCode::ACCEPTED).await;
    assert_eq!(cli_code, 1, "{cli_output}");
    assert!(cli_output.contains("a rebuild or verify of catalogue is running"), "{cli_output}");
    assert_eq!(verify_code, 1, "{verify_output}");
    assert!(verify_output.contains("is running"), "{verify_output}");
    assert_eq!(shadows_while_running, 1, "the running rebuild's shadow was left alone");
    // Once the first rebuild has swapped, a new one starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let again = first.post("/api/v1/admin/projections/catalogue/rebuild", Some(&admin), None).await;
        if again.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_problem(again, 409, "rebuild-running").await;
        assert!(Instant::now() < deadline, "the first rebuild never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_projections(&first, &first.address, Duration::from_secs(20)).await;
    println!("rebuild while one runs: 409 rebuild-running from both processes, CLI rebuild and verify exit 1; 202 once it finished");
}
