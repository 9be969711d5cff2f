//! Roles and ownership (403), and that 403 comes before anything about the body or the resource.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn customers_auditors_and_analysts_are_refused_every_admin_endpoint(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (greg, customer) = app.customer("greg").await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let category = app.category("Comedy").await;
    let movie = app.movie("Airplane!", &[category]).await;
    let unknown = Uuid::now_v7();
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/api/v1/categories".into(), Some(json!({"name": "Drama"}))),
        (Method::PATCH, format!("/api/v1/categories/{category}"), Some(json!({"name": "Drama"}))),
        (Method::PATCH, format!("/api/v1/categories/{unknown}"), Some(json!({"name": "Drama"}))),
        (Method::PATCH, "/api/v1/categories/not-a-uuid".into(), Some(json!({"name": "Drama"}))),
        (Method::POST, "/api/v1/movies".into(), Some(movie_body("Heat", &[category]))),
        (Method::PATCH, format!("/api/v1/movies/{movie}"), Some(json!({"title": "Airplane II"}))),
        (Method::PATCH, format!("/api/v1/movies/{unknown}"), Some(json!({"title": "Airplane II"}))),
        (Method::DELETE, format!("/api/v1/movies/{movie}"), None),
        (Method::DELETE, format!("/api/v1/movies/{unknown}"), None),
        (Method::DELETE, "/api/v1/movies/not-a-uuid".into(), None),
        (Method::PATCH, format!("/api/v1/admin/users/{greg}"), Some(json!({"role": "admin"}))),
        (Method::PATCH, format!("/api/v1/admin/users/{unknown}"), Some(json!({"role": "admin"}))),
        (Method::PATCH, "/api/v1/admin/users/not-a-uuid".into(), Some(json!({"role": "admin"}))),
    ];
    let bad_bodies: [(Option<&str>, &str); 4] = [
        (Some("application/json"), r#"{"name": "#),
        (Some("application/json"), r#"{"title": "", "role": "god", "unknown": 1}"#),
        (Some("text/plain"), "hello"),
        (None, "hello"),
    ];

    for (role, token) in [("customer", &customer), ("auditor", &auditor), ("analyst", &analyst)] {
        for (method, path, body) in &endpoints {
            // Act
            let response = app.request(method.clone(), path, Some(token), body.clone()).await;

            // Assert
            let context = format!("{role} {method} {path}");
            assert_problem_in(response, 403, "forbidden", &context).await;
            // The role is checked before the body is even read.
            for (content_type, bad) in bad_bodies {
                let response = app.raw(method.clone(), path, Some(token), content_type, bad).await;
                let context = format!("{context} with {content_type:?} {bad:?}");
                assert_problem_in(response, 403, "forbidden", &context).await;
            }
        }
    }

    // Nothing changed: one category, one movie, still rentable; greg is still a customer.
    assert_eq!(app.events_of("category", category).await.len(), 1);
    assert_eq!(app.events_of("movie", movie).await.len(), 1);
    let rented = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&customer), None).await;
    expect_status(rented, StatusCode::CREATED).await;
    let categories: i64 = sqlx::query_scalar("select count(*) from events where aggregate_type = 'category'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(categories, 1);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn auditors_and_analysts_cannot_rent_return_or_pay(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (greg, customer) = app.customer("greg").await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let category = app.category("Comedy").await;
    let free = app.movie("Airplane!", &[category]).await;
    let rented = app.movie("Top Secret!", &[category]).await;
    let rental = app.rent(rented, &customer).await;
    let unknown = Uuid::now_v7();
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, format!("/api/v1/movies/{free}/rent"), None),
        (Method::POST, format!("/api/v1/movies/{free}/rent"), Some(json!({}))),
        (Method::POST, format!("/api/v1/movies/{free}/rent"), Some(json!({"customer_id": greg}))),
        (Method::POST, format!("/api/v1/movies/{unknown}/rent"), None),
        (Method::POST, "/api/v1/movies/not-a-uuid/rent".into(), None),
        (Method::POST, format!("/api/v1/rentals/{rental}/return"), None),
        (Method::POST, format!("/api/v1/rentals/{rental}/return"), Some(json!({"returned_at": "x"}))),
        (Method::POST, format!("/api/v1/rentals/{unknown}/return"), None),
        (Method::POST, format!("/api/v1/rentals/{rental}/pay"), Some(json!({"amount_cents": 100}))),
        (Method::POST, format!("/api/v1/rentals/{rental}/pay"), Some(json!({"amount_cents": -1}))),
        (Method::POST, format!("/api/v1/rentals/{unknown}/pay"), Some(json!({"amount_cents": 100}))),
        (Method::POST, "/api/v1/rentals/not-a-uuid/pay".into(), None),
    ];

    for (role, token) in [("auditor", &auditor), ("analyst", &analyst)] {
        for (method, path, body) in &attempts {
            // Act
            let response = app.request(method.clone(), path, Some(token), body.clone()).await;

            // Assert
            assert_problem_in(response, 403, "forbidden", &format!("{role} {method} {path} {body:?}")).await;
        }
        let not_json = app
            .raw(Method::POST, &format!("/api/v1/rentals/{rental}/pay"), Some(token), Some("text/plain"), "1")
            .await;
        assert_problem_in(not_json, 403, "forbidden", &format!("{role} pay with a text body")).await;
    }

    // Nothing changed: the free movie is still free, the rental still greg's and active.
    let kinds: Vec<String> =
        app.events_of("movie", rented).await.into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds, ["MovieAdded", "MovieRented"]);
    assert_eq!(app.events_of("movie", free).await.len(), 1);
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
    expect_status(returned, StatusCode::OK).await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_customer_cannot_act_for_someone_else_or_back_date(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (greg, greg_token) = app.customer("greg").await;
    let (maude, maude_token) = app.customer("maude").await;
    let category = app.category("Comedy").await;
    let free = app.movie("Airplane!", &[category]).await;
    let rented = app.movie("Top Secret!", &[category]).await;
    let rental = app.rent(rented, &greg_token).await;
    let unknown = Uuid::now_v7();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();

    // Act / Assert: fields only an admin may pass, whatever their values.
    for (path, body) in [
        (format!("/api/v1/movies/{free}/rent"), json!({"customer_id": maude})),
        (format!("/api/v1/movies/{free}/rent"), json!({"customer_id": greg})),
        (format!("/api/v1/movies/{free}/rent"), json!({"rented_at": yesterday})),
        (format!("/api/v1/movies/{free}/rent"), json!({"customer_id": greg, "rented_at": yesterday})),
        (format!("/api/v1/movies/{free}/rent"), json!({"customer_id": "not-a-uuid", "rented_at": 5})),
        (format!("/api/v1/movies/{free}/rent"), json!({"customer_id": maude, "unknown": true})),
        (format!("/api/v1/movies/{unknown}/rent"), json!({"customer_id": maude})),
        (format!("/api/v1/movies/{rented}/rent"), json!({"customer_id": maude})),
        (format!("/api/v1/rentals/{rental}/return"), json!({"returned_at": yesterday})),
        (format!("/api/v1/rentals/{rental}/return"), json!({"returned_at": "garbage"})),
    ] {
        let response = app.post(&path, Some(&greg_token), Some(body.clone())).await;
        assert_problem_in(response, 403, "forbidden", &format!("greg POST {path} {body}")).await;
    }

    // Act / Assert: someone else's rental, with good and bad bodies alike.
    let return_path = format!("/api/v1/rentals/{rental}/return");
    let pay_path = format!("/api/v1/rentals/{rental}/pay");
    let attempts: Vec<(&str, Option<&str>, String)> = vec![
        (&return_path, None, String::new()),
        (&return_path, Some("application/json"), "{}".into()),
        (&return_path, Some("application/json"), json!({"returned_at": yesterday}).to_string()),
        (&return_path, Some("application/json"), "{".into()),
        (&return_path, Some("text/plain"), "please".into()),
        (&pay_path, Some("application/json"), json!({"amount_cents": 100}).to_string()),
        (&pay_path, Some("application/json"), json!({"amount_cents": -5}).to_string()),
        (&pay_path, Some("application/json"), json!({"amount_cents": "lots"}).to_string()),
        (&pay_path, Some("application/json"), json!({"tip": 1}).to_string()),
        (&pay_path, Some("application/json"), "[1, 2".into()),
        (&pay_path, Some("application/x-www-form-urlencoded"), "amount_cents=100".into()),
        (&pay_path, None, String::new()),
    ];
    for (path, content_type, body) in attempts {
        let response = app.raw(Method::POST, path, Some(&maude_token), content_type, body.clone()).await;
        let context = format!("maude POST {path} {content_type:?} {body:?}");
        assert_problem_in(response, 403, "forbidden", &context).await;
    }

    // Nothing changed: greg's rental is still active and his alone; the free movie is free.
    let kinds: Vec<String> =
        app.events_of("movie", rented).await.into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds, ["MovieAdded", "MovieRented"]);
    assert_eq!(app.events_of("movie", free).await.len(), 1);
    let returned = app.post(&return_path, Some(&greg_token), None).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(uuid(&returned["customer_id"]), greg);
    // Even after the return the rental stays greg's.
    let pay = app.post(&pay_path, Some(&maude_token), Some(json!({"amount_cents": 100}))).await;
    assert_problem(pay, 403, "forbidden").await;
    let again = app.post(&return_path, Some(&maude_token), None).await;
    assert_problem(again, 403, "forbidden").await;
}

/// The callers of the matrix, in its column order.
const CALLERS: [&str; 6] = ["anonymous", "customer", "other customer", "auditor", "analyst", "admin"];

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_endpoint_answers_each_kind_of_caller_as_the_contract_says(pool: PgPool) {
    // Arrange: the owner has an active rental; bodies are chosen so that a caller who may act
    // gets past role and ownership and stops at the body (422) or the resource (404), changing
    // nothing, while a caller who may not gets 401 or 403.
    let app = TestApp::process(pool).await;
    let admin = app.admin().await;
    let (owner_id, owner) = app.customer("owner").await;
    let (_, other) = app.customer("other").await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let rental = app.rent(movie, &owner).await;
    // The read models are eventually consistent, and the projectors' horizon is held back by other
    // tests' transactions: wait until both show the movie and the rental, so that the rows below
    // test authorization and not projection lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for path in [format!("/api/v1/movies/{movie}"), format!("/api/v1/rentals/{rental}")] {
        while app.get(&path, Some(&owner)).await.status() != StatusCode::OK {
            assert!(std::time::Instant::now() < deadline, "{path} never became readable");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let unknown = Uuid::now_v7();
    let tokens =
        [None, Some(owner.clone()), Some(other.clone()), Some(auditor), Some(analyst), Some(admin.clone())];
    let bad = json!({"unexpected": 1});
    // (method, path, template in the spec, body, expected status per caller in CALLERS order)
    type Row = (Method, String, &'static str, Option<Value>, [u16; 6]);
    let rows: Vec<Row> = vec![
        (Method::GET, "/health".into(), "/health", None, [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/ready".into(), "/ready", None, [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/metrics".into(), "/metrics", None, [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/openapi.json".into(), "/openapi.json", None, [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/docs".into(), "/docs", None, [200, 200, 200, 200, 200, 200]),
        (Method::GET, "/docs/index.css".into(), "/docs/{file}", None, [200, 200, 200, 200, 200, 200]),
        (Method::POST, "/api/v1/auth/register".into(), "/api/v1/auth/register", Some(bad.clone()), [422; 6]),
        (Method::POST, "/api/v1/auth/login".into(), "/api/v1/auth/login", Some(bad.clone()), [422; 6]),
        (Method::GET, "/api/v1/me".into(), "/api/v1/me", None, [401, 200, 200, 200, 200, 200]),
        (
            Method::POST,
            "/api/v1/me/password".into(),
            "/api/v1/me/password",
            Some(bad.clone()),
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::PATCH,
            format!("/api/v1/admin/users/{owner_id}"),
            "/api/v1/admin/users/{id}",
            Some(bad.clone()),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::GET,
            "/api/v1/categories".into(),
            "/api/v1/categories",
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/api/v1/categories".into(),
            "/api/v1/categories",
            Some(bad.clone()),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::PATCH,
            format!("/api/v1/categories/{category}"),
            "/api/v1/categories/{id}",
            Some(bad.clone()),
            [401, 403, 403, 403, 403, 422],
        ),
        (Method::GET, "/api/v1/movies".into(), "/api/v1/movies", None, [401, 200, 200, 200, 200, 200]),
        (
            Method::GET,
            format!("/api/v1/movies/{movie}"),
            "/api/v1/movies/{id}",
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/api/v1/movies".into(),
            "/api/v1/movies",
            Some(bad.clone()),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::PATCH,
            format!("/api/v1/movies/{movie}"),
            "/api/v1/movies/{id}",
            Some(bad.clone()),
            [401, 403, 403, 403, 403, 422],
        ),
        (
            Method::DELETE,
            format!("/api/v1/movies/{unknown}"),
            "/api/v1/movies/{id}",
            None,
            [401, 403, 403, 403, 403, 404],
        ),
        // An admin renting must name the customer: without a body it is 422.
        (
            Method::POST,
            format!("/api/v1/movies/{unknown}/rent"),
            "/api/v1/movies/{id}/rent",
            None,
            [401, 404, 404, 403, 403, 422],
        ),
        (Method::GET, "/api/v1/rentals".into(), "/api/v1/rentals", None, [401, 200, 200, 200, 200, 200]),
        (
            Method::GET,
            format!("/api/v1/rentals/{rental}"),
            "/api/v1/rentals/{id}",
            None,
            [401, 200, 403, 200, 403, 200],
        ),
        (
            Method::POST,
            format!("/api/v1/rentals/{rental}/return"),
            "/api/v1/rentals/{id}/return",
            Some(bad.clone()),
            [401, 422, 403, 403, 403, 422],
        ),
        (
            Method::POST,
            format!("/api/v1/rentals/{rental}/pay"),
            "/api/v1/rentals/{id}/pay",
            Some(bad.clone()),
            [401, 422, 403, 403, 403, 422],
        ),
        (
            Method::GET,
            "/api/v1/audit/events".into(),
            "/api/v1/audit/events",
            None,
            [401, 403, 403, 200, 403, 200],
        ),
        (
            Method::GET,
            format!("/api/v1/audit/streams/movie/{movie}"),
            "/api/v1/audit/streams/{type}/{id}",
            None,
            [401, 403, 403, 200, 403, 200],
        ),
        (
            Method::GET,
            format!("/api/v1/audit/streams/movie/{movie}/state"),
            "/api/v1/audit/streams/{type}/{id}/state",
            None,
            [401, 403, 403, 200, 403, 200],
        ),
        (
            Method::GET,
            "/api/v1/audit/export".into(),
            "/api/v1/audit/export",
            None,
            [401, 403, 403, 200, 403, 200],
        ),
        (
            Method::GET,
            "/api/v1/analytics/revenue?group_by=day".into(),
            "/api/v1/analytics/revenue",
            None,
            [401, 403, 403, 403, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/analytics/top-movies".into(),
            "/api/v1/analytics/top-movies",
            None,
            [401, 403, 403, 403, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/analytics/utilization".into(),
            "/api/v1/analytics/utilization",
            None,
            [401, 403, 403, 403, 200, 200],
        ),
        (
            Method::GET,
            "/api/v1/admin/projections".into(),
            "/api/v1/admin/projections",
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::POST,
            "/api/v1/admin/projections/no-such/rebuild".into(),
            "/api/v1/admin/projections/{name}/rebuild",
            None,
            [401, 403, 403, 403, 403, 404],
        ),
        (
            Method::GET,
            "/api/v1/admin/jobs".into(),
            "/api/v1/admin/jobs",
            None,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::POST,
            "/api/v1/auth/password-reset".into(),
            "/api/v1/auth/password-reset",
            Some(bad.clone()),
            [422; 6],
        ),
        (
            Method::POST,
            "/api/v1/auth/password-reset/confirm".into(),
            "/api/v1/auth/password-reset/confirm",
            Some(bad.clone()),
            [422; 6],
        ),
        (
            Method::GET,
            "/api/v1/me/notifications".into(),
            "/api/v1/me/notifications",
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::PATCH,
            "/api/v1/me/notifications".into(),
            "/api/v1/me/notifications",
            Some(bad.clone()),
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::GET,
            "/api/v1/admin/notifications".into(),
            "/api/v1/admin/notifications",
            None,
            [401, 403, 403, 403, 403, 200],
        ),
    ];

    // Act / Assert
    let mut mismatches = Vec::new();
    for (method, path, _, body, expected) in &rows {
        for (i, token) in tokens.iter().enumerate() {
            let response = app.request(method.clone(), path, token.as_deref(), body.clone()).await;
            let status = response.status().as_u16();
            if status != expected[i] {
                let text = response.text().await.unwrap_or_default();
                mismatches.push(format!(
                    "{method} {path} as {}: {status}, expected {} ({text})",
                    CALLERS[i], expected[i]
                ));
            }
        }
    }
    // Logout, last: every caller with a token ends a second token of its own.
    let mut logouts = 0;
    for (i, (username, password)) in [
        ("owner", "password-123"),
        ("other", "password-123"),
        ("audrey", "password-123"),
        ("annie", "password-123"),
        (ADMIN_USERNAME, ADMIN_PASSWORD),
    ]
    .into_iter()
    .enumerate()
    {
        let spare = app.login(username, password).await;
        let response = app.post("/api/v1/auth/logout", Some(&spare), None).await;
        let status = response.status().as_u16();
        if status != 204 {
            let text = response.text().await.unwrap_or_default();
            // What the database holds for the token, to tell a lookup that missed from a row
            // that is gone.
            let row: Option<(bool,)> = sqlx::query_as(
                "select expires_at > now() from tokens where token_hash = sha256(convert_to($1, 'UTF8'))",
            )
            .bind(&spare)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
            // Sessions of the server left inside a transaction run every later statement of
            // theirs unseen by the others (a cancelled begin could do that).
            let open: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and state like 'idle in transaction%'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            mismatches.push(format!(
                "POST /api/v1/auth/logout as {}: {status}, expected 204 ({text}; token row: {row:?}; \
                 sessions idle in a transaction: {open})",
                CALLERS[i + 1]
            ));
        }
        logouts += 1;
    }
    let anonymous = app.post("/api/v1/auth/logout", None, None).await.status().as_u16();
    if anonymous != 401 {
        mismatches.push(format!("POST /api/v1/auth/logout as anonymous: {anonymous}, expected 401"));
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));

    // The matrix covers every operation of the spec, and nothing the spec lacks.
    let spec = expect_status(app.get("/openapi.json", None).await, StatusCode::OK).await;
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut covered: Vec<String> =
        rows.iter().map(|(m, _, template, _, _)| format!("{m} {template}")).collect();
    covered.push("POST /api/v1/auth/logout".into());
    covered.sort();
    covered.dedup();
    documented.sort();
    assert_eq!(covered, documented, "the matrix and the spec list the same operations");
    println!(
        "authorization matrix: {} operations x {} callers = {} answers as the contract says, 0 mismatches",
        documented.len(),
        CALLERS.len(),
        rows.len() * CALLERS.len() + logouts + 1
    );
}
