//! Due dates and periodic jobs, through the real binary: a back-dated rent goes overdue within
//! seconds, once, with the metadata chain of its rent; `?overdue=` lists it; a process killed
//! while timers fire loses and repeats none; a failing job shows in `/api/v1/admin/jobs` and is
//! retried.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::wait_for_projections;
use crate::support::*;

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time_of(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|_| panic!("expected an RFC 3339 time, got {value}"))
}

/// Waits until the rental's `overdue_at` is set; returns the rental.
pub(crate) async fn wait_for_overdue(app: &TestApp, token: &str, rental: Uuid, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let response = app.get(&format!("/api/v1/rentals/{rental}"), Some(token)).await;
        let last = if response.status() == StatusCode::NOT_FOUND {
            Value::Null
        } else {
            let body = expect_status(response, StatusCode::OK).await;
            if !body["overdue_at"].is_null() {
                return body;
            }
            body
        };
        assert!(Instant::now() < deadline, "rental {rental} did not go overdue within {within:?}: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admin's back-dated rent for `customer`, sent with this request id; returns the rental id.
async fn rent_back_dated(
    app: &TestApp,
    admin: &str,
    movie: Uuid,
    customer: Uuid,
    rented_at: DateTime<Utc>,
    request_id: &str,
) -> Uuid {
    let response = app
        .client
        .request(Method::POST, app.url(&format!("/api/v1/movies/{movie}/rent")))
        .bearer_auth(admin)
        .header("x-request-id", request_id)
        .json(&json!({"customer_id": customer, "rented_at": rfc3339(rented_at)}))
        .send()
        .await
        .unwrap();
    uuid(&expect_status(response, StatusCode::CREATED).await["rental_id"])
}

async fn listed(app: &TestApp, token: &str, query: &str) -> Vec<Uuid> {
    let body =
        expect_status(app.get(&format!("/api/v1/rentals?{query}"), Some(token)).await, StatusCode::OK).await;
    body["items"].as_array().unwrap().iter().map(|r| uuid(&r["id"])).collect()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_back_dated_rent_goes_overdue_within_5_seconds_once_and_is_listed_as_overdue(pool: PgPool) {
    // Arrange
    let app = TestApp::process(pool).await;
    let admin = app.admin().await;
    let (greg, greg_token) = app.customer("greg").await;
    let (maude, maude_token) = app.customer("maude").await;
    let (_, auditor) = app.staff("auditor", "auditor").await;
    let category = app.category("Noir").await;
    let (late, fresh, other) = (
        app.movie("The Third Man", &[category]).await,
        app.movie("Gilda", &[category]).await,
        app.movie("Laura", &[category]).await,
    );
    let rented_at = (Utc::now() - chrono::Duration::days(8)).trunc_subsecs(0);

    // Act
    let started = Instant::now();
    let overdue = rent_back_dated(&app, &admin, late, greg, rented_at, "late-rent-1").await;
    let became = wait_for_overdue(&app, &greg_token, overdue, Duration::from_secs(5)).await;
    let took = started.elapsed();
    let current = app.rent(fresh, &greg_token).await;
    let maudes = rent_back_dated(&app, &admin, other, maude, rented_at, "late-rent-2").await;
    wait_for_overdue(&app, &maude_token, maudes, Duration::from_secs(5)).await;

    // Assert: overdue within 5 s, at the due time it passed (7 days after the rent).
    println!("a rental 1 day overdue when entered went overdue {took:?} after its rent answered");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let due_at = rented_at + chrono::Duration::days(7);
    assert_eq!(time_of(&became["due_at"]), due_at);
    assert_eq!(time_of(&became["overdue_at"]), due_at);
    assert_eq!(became["status"], "active");
    let fresh_rental = expect_status(
        app.get(&format!("/api/v1/rentals/{current}"), Some(&greg_token)).await,
        StatusCode::OK,
    )
    .await;
    assert!(fresh_rental["overdue_at"].is_null());
    let rented = time_of(&fresh_rental["rented_at"]);
    assert_eq!(time_of(&fresh_rental["due_at"]), rented + chrono::Duration::days(7));

    // `?overdue=`: the caller's own for a customer; everyone's for admins and auditors.
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    assert_eq!(listed(&app, &greg_token, "overdue=true").await, vec![overdue]);
    assert_eq!(listed(&app, &greg_token, "overdue=false").await, vec![current]);
    assert_eq!(listed(&app, &maude_token, "overdue=true").await, vec![maudes]);
    let mut everyone = vec![overdue, maudes];
    everyone.sort();
    for token in [&admin, &auditor] {
        let mut all = listed(&app, token, "overdue=true").await;
        all.sort();
        assert_eq!(all, everyone);
        assert_eq!(listed(&app, token, "overdue=false").await, vec![current]);
        assert_eq!(listed(&app, token, &format!("overdue=true&customer_id={maude}")).await, vec![maudes]);
    }
    let bogus = app.get("/api/v1/rentals?overdue=yes", Some(&greg_token)).await;
    assert_invalid(bogus, &["overdue"], "overdue=yes").await;

    // The audit stream has one RentalOverdue: the system's act, in the chain of the rent.
    let stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{overdue}"), Some(&auditor)).await,
        StatusCode::OK,
    )
    .await;
    let items = stream["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["RentalOpened", "RentalOverdue"]);
    assert_eq!(items[0]["payload"]["due_at"], json!(rfc3339(due_at)));
    assert_eq!(items[0]["schema_version"], "2.0");
    assert_eq!(items[1]["payload"], json!({"due_at": rfc3339(due_at)}));
    assert_eq!(
        items[1]["metadata"],
        json!({"actor_id": null, "request_id": null, "correlation_id": "late-rent-1", "causation_id": null})
    );

    // The scrape counts both and has their delays; the scheduler is listed with the projections.
    let scrape = app.get("/metrics", None).await.text().await.unwrap();
    assert_eq!(value(samples(&scrape, "rentals_overdue", &[])[0]), 2.0, "{scrape}");
    let fired = samples(&scrape, "deadline_fire_delay_seconds_count", &[]);
    assert_eq!(fired.len(), 1, "{scrape}");
    assert_eq!(value(fired[0]), 2.0);
    let delay_sum = value(samples(&scrape, "deadline_fire_delay_seconds_sum", &[])[0]);
    assert!(delay_sum > 2.0 * 86_400.0, "each fired a day after its due time: {delay_sum}");
    let progress = wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let scheduler = progress.iter().find(|p| p["name"] == "due-dates").expect("due-dates listed");
    assert!(scheduler["position"].as_i64().unwrap() > 0, "{scheduler}");
    assert_eq!(scheduler["state"], "running");

    // An overdue rental can still be returned, and is charged as usual: 8 days, 550 cents.
    let returned = app.post(&format!("/api/v1/rentals/{overdue}/return"), Some(&greg_token), None).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!((returned["status"].clone(), time_of(&returned["overdue_at"])), (json!("returned"), due_at));
    let charged = crate::read_side::wait_for_rental_status(
        &app,
        &app.address,
        &greg_token,
        overdue,
        "charged",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(charged["charge"], json!({"days": 9, "amount_cents": 600, "currency": "EUR"}));
    assert!(listed(&app, &greg_token, "overdue=true&min_position=0").await.is_empty());
    let overdue_events: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'RentalOverdue'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(overdue_events, 2, "one per overdue rental, never again");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_return_answers_the_overdue_its_stream_recorded_even_before_the_read_model_shows_it(pool: PgPool) {
    // Arrange: an overdue rental whose read-model row is held back to before its `RentalOverdue`,
    // as it is for the moments between the overdue's append and the rentals projection's batch.
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, greg_token) = app.customer("greg").await;
    let category = app.category("Noir").await;
    let movie = app.movie("The Third Man", &[category]).await;
    let rented_at = (Utc::now() - chrono::Duration::days(8)).trunc_subsecs(0);
    let rental = rent_back_dated(&app, &admin, movie, greg, rented_at, "late-rent-3").await;
    let due_at = rented_at + chrono::Duration::days(7);
    wait_for_overdue(&app, &greg_token, rental, Duration::from_secs(5)).await;
    let held_back = sqlx::query("update read.rental set overdue_at = null where rental_id = $1")
        .bind(rental)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(held_back.rows_affected(), 1);

    // Act
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&greg_token), None).await;

    // Assert: the answer is the stream's (overdue at its due time), not the lagging row's.
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(
        (returned["status"].clone(), time_of(&returned["due_at"]), time_of(&returned["overdue_at"])),
        (json!("returned"), due_at, due_at)
    );
    // And the payment's answer names the movie as the rental does (the title when rented).
    let charged = crate::read_side::wait_for_rental_status(
        &app,
        &app.address,
        &greg_token,
        rental,
        "charged",
        Duration::from_secs(10),
    )
    .await;
    let paid = app
        .post(
            &format!("/api/v1/rentals/{rental}/pay"),
            Some(&greg_token),
            Some(json!({"amount_cents": charged["charge"]["amount_cents"]})),
        )
        .await;
    let paid = expect_status(paid, StatusCode::OK).await;
    assert_eq!(
        (paid["status"].clone(), paid["movie_title"].clone()),
        (json!("paid"), json!("The Third Man"))
    );
    assert_eq!((time_of(&paid["due_at"]), time_of(&paid["overdue_at"])), (due_at, due_at));
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_loan_policy_sets_due_times_and_an_invalid_one_stops_the_process(pool: PgPool) {
    // Arrange
    let options = Options { extra_env: vec![("MOVIESTORE_LOAN_DAYS".into(), "3".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let (_, token) = app.customer("greg").await;
    let category = app.category("Noir").await;
    let movie = app.movie("The Third Man", &[category]).await;

    // Act
    let rental = app.rent(movie, &token).await;
    let answer = crate::read_side::wait_for_rental_status(
        &app,
        &app.address,
        &token,
        rental,
        "active",
        Duration::from_secs(10),
    )
    .await;

    // Assert: due 3 days after the rent; a loan outside 1..=365 days refuses to start.
    assert_eq!(time_of(&answer["due_at"]), time_of(&answer["rented_at"]) + chrono::Duration::days(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    let opened = loop {
        if let Some((_, payload, _)) = app.events_of("rental", rental).await.into_iter().next() {
            break payload;
        }
        assert!(Instant::now() < deadline, "the rental was not opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(time_of(&opened["due_at"]), time_of(&answer["due_at"]), "recorded in RentalOpened");
    for wrong in ["0", "366", "a week"] {
        let output = std::process::Command::new(binary())
            .arg("migrate")
            .env("DATABASE_URL", &app.database_url)
            .env("MOVIESTORE_LOAN_DAYS", wrong)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "MOVIESTORE_LOAN_DAYS={wrong} was accepted");
        assert!(stderr.contains("MOVIESTORE_LOAN_DAYS") && stderr.contains("365"), "{wrong}: {stderr}");
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_process_killed_while_100_timers_fire_loses_and_repeats_none(pool: PgPool) {
    // Arrange: 100 movies and a customer.
    const N: usize = 100;
    let app = TestApp::process(pool.clone()).await;
    let admin = app.admin().await;
    let (customer, _) = app.customer("greg").await;
    let category = app.category("Noir").await;
    let mut movies = Vec::with_capacity(N);
    for i in 0..N {
        movies.push(app.movie(&format!("Film {i:03}"), &[category]).await);
    }
    let overdue_count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from events where event_type = 'RentalOverdue'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    // Act: 100 rentals entered 8 days late; kill -9 the process once the first timers fire.
    let rented_at = (Utc::now() - chrono::Duration::days(8)).trunc_subsecs(0);
    for (i, movie) in movies.iter().enumerate() {
        rent_back_dated(&app, &admin, *movie, customer, rented_at, &format!("rent-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while overdue_count(pool.clone()).await == 0 {
        assert!(Instant::now() < deadline, "no timer fired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(app.pid(), "KILL");
    drop(app);
    let fired_before = overdue_count(pool.clone()).await;
    let timers_left: i64 = sqlx::query_scalar("select count(*) from deadline where kind = 'overdue'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let app = TestApp::process(pool.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while overdue_count(pool.clone()).await < N as i64 {
        assert!(Instant::now() < deadline, "not every timer fired after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_projections(&app, &app.address, Duration::from_secs(20)).await;

    // Assert: each rental overdue exactly once, no timer left, the read models equal a replay.
    println!(
        "killed -9 with {fired_before} of {N} timers fired ({timers_left} timers set and not fired yet); \
         after the restart all {N} fired"
    );
    let per_rental: Vec<i64> = sqlx::query_scalar(
        "select count(e.*) filter (where e.event_type = 'RentalOverdue')
           from rental_lookup l left join events e on e.aggregate_type = 'rental' and e.aggregate_id = l.rental_id::text
          group by l.rental_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_rental.len(), N);
    assert!(per_rental.iter().all(|n| *n == 1), "each exactly once: {per_rental:?}");
    let left: i64 = sqlx::query_scalar("select count(*) from deadline where kind = 'overdue'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // Each overdue rental now has its next reminder's timer instead (the notifications projection's).
    let reminders: i64 = sqlx::query_scalar("select count(*) from deadline where kind = 'reminder'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reminders, N as i64);
    let admin = app.admin().await;
    assert_eq!(listed(&app, &admin, "overdue=true&limit=100").await.len(), N);
    let (code, output) = cli_status(&app.database_url, &["verify"]).await;
    assert_eq!(code, 0, "verify: {output}");
    assert!(output.contains("rentals: live tables equal a replay of the log"), "{output}");
    assert!(output.contains("analytics: live tables equal a replay of the log"), "{output}");
}

/// The jobs as `/api/v1/admin/jobs` lists them, by name.
async fn jobs(app: &TestApp, admin: &str) -> Vec<Value> {
    let body = expect_status(app.get("/api/v1/admin/jobs", Some(admin)).await, StatusCode::OK).await;
    body["items"].as_array().unwrap().clone()
}

/// Waits until the job's last outcome satisfies `done`; returns the job.
async fn wait_for_job(app: &TestApp, admin: &str, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = jobs(app, admin).await.into_iter().find(|j| j["name"] == name).expect(name);
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {name} did not get there: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_failing_job_shows_its_error_in_admin_jobs_and_the_next_run_retries_it(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    let name = "purge-idempotency-records";
    let first = wait_for_job(&app, &admin, name, |j| !j["last_outcome"].is_null()).await;

    // Assert the list: every job, admin only.
    assert_problem(app.get("/api/v1/admin/jobs", None).await, 401, "unauthorized").await;
    assert_problem(app.get("/api/v1/admin/jobs", Some(&customer)).await, 403, "forbidden").await;
    let names: Vec<String> =
        jobs(&app, &admin).await.iter().map(|j| j["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        [
            "purge-expired-tokens",
            "purge-idempotency-records",
            "purge-login-failures",
            "purge-old-notifications",
            "purge-password-reset-tokens"
        ]
    );
    assert_eq!(first["last_outcome"], "ok: 0 rows", "{first}");
    assert_eq!(first["every_seconds"], 600);
    assert!(time_of(&first["next_run_at"]) > time_of(&first["last_run_at"]));
    let notifications =
        wait_for_job(&app, &admin, "purge-old-notifications", |j| !j["last_outcome"].is_null()).await;
    // The outbox exists, and nothing in it is 30 days old.
    assert_eq!(notifications["last_outcome"], "ok: 0 rows", "{notifications}");
    let resets =
        wait_for_job(&app, &admin, "purge-password-reset-tokens", |j| !j["last_outcome"].is_null()).await;
    assert_eq!(resets["last_outcome"], "ok: 0 rows", "{resets}");

    // Act: two expired records to purge; the job's table moves away, and its run is made due now.
    for key in ["k1", "k2"] {
        sqlx::query(
            "insert into idempotency (scope, key, method, path, body_hash, claim, lease_until, expires_at)
             values ('test', $1, 'POST', '/x', '\\x00', $2, now() - interval '2 days', now() - interval '1 day')",
        )
        .bind(key)
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("alter table idempotency rename to idempotency_moved").execute(&pool).await.unwrap();
    sqlx::query("update job set next_run_at = now() where name = $1")
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
    let failed = wait_for_job(&app, &admin, name, |j| {
        j["last_outcome"].as_str().is_some_and(|o| o.starts_with("error"))
    })
    .await;
    sqlx::query("alter table idempotency_moved rename to idempotency").execute(&pool).await.unwrap();
    let retried = wait_for_job(&app, &admin, name, |j| j["last_outcome"] == "ok: 2 rows").await;

    // Assert: the failure was visible with its cause and a retry seconds later, which purged.
    println!("failed: {failed}\nretried: {retried}");
    let outcome = failed["last_outcome"].as_str().unwrap();
    assert!(outcome.contains("idempotency") && outcome.contains("does not exist"), "{outcome}");
    let retry_in = time_of(&failed["next_run_at"]) - time_of(&failed["last_run_at"]);
    assert_eq!(retry_in, chrono::Duration::seconds(5), "retried 5 s later");
    assert!(time_of(&retried["last_run_at"]) >= time_of(&failed["next_run_at"]));
    let left: i64 = sqlx::query_scalar("select count(*) from idempotency").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    let next_in = time_of(&retried["next_run_at"]) - time_of(&retried["last_run_at"]);
    assert_eq!(next_in, chrono::Duration::seconds(600), "back to its interval");
}
