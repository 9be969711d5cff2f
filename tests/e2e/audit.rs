//! The audit side: the event feed (order, paging under concurrent writers, filters, errors,
//! roles), streams with their metadata, state as of a time, the NDJSON export over HTTP and from
//! the CLI, event versions (an upcast `RentalPaid` 1.0), personal data kept out of events, and
//! erasing a person's account data.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::{wait_for_projections, wait_for_rental_status};
use crate::support::*;

/// Every event type of the catalogue, with the payload keys it may carry: ids and business
/// fields, never a name, an email or a password.
const PAYLOAD_KEYS: [(&str, &[&str]); 12] = [
    ("MovieAdded", &["title", "storyline", "release_date", "rating", "director", "category_ids"]),
    ("MovieUpdated", &["title", "storyline", "release_date", "rating", "director", "category_ids"]),
    ("MovieRetired", &[]),
    ("MovieRented", &["rental_id", "customer_id", "rented_at"]),
    ("MovieReturned", &["rental_id", "customer_id", "returned_at"]),
    ("RentalOpened", &["movie_id", "customer_id", "rented_at", "due_at"]),
    ("RentalOverdue", &["due_at"]),
    ("RentalClosed", &["returned_at"]),
    ("ChargeAssessed", &["days", "amount_cents", "currency", "plan"]),
    ("RentalPaid", &["amount_cents", "currency", "paid_at"]),
    ("CategoryCreated", &["name"]),
    ("CategoryRenamed", &["name"]),
];

/// Sends a request with this `x-request-id`.
async fn send_as(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    request_id: &str,
) -> Response {
    let mut request =
        app.client.request(method, app.url(path)).bearer_auth(token).header("x-request-id", request_id);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request sent")
}

/// One page of the feed: (items, next_after).
async fn feed_page(app: &TestApp, token: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let body =
        expect_status(app.get(&format!("/api/v1/audit/events?{query}"), Some(token)).await, StatusCode::OK)
            .await;
    let items = body["items"].as_array().cloned().expect("items");
    let next = body["next_after"].as_str().map(str::to_string);
    assert_eq!(next.is_none(), items.is_empty(), "next_after is null exactly when the page is empty: {body}");
    (items, next)
}

/// Follows `next_after` from the start until a page is empty; returns every item.
async fn whole_feed(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page_query = match &after {
            Some(after) => format!("{query}&after={after}"),
            None => query.to_string(),
        };
        let (page, next) = feed_page(app, token, &page_query).await;
        if page.is_empty() {
            return items;
        }
        items.extend(page);
        after = next;
    }
}

/// Every position in `events`, in the projections' order.
async fn log_order(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("select position from events order by transaction_id, position")
        .fetch_all(pool)
        .await
        .expect("positions")
}

fn positions(items: &[Value]) -> Vec<i64> {
    items.iter().map(|e| e["position"].as_i64().expect("position")).collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).expect("an RFC 3339 time").into()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The auditor's token (an account made by the admin).
async fn auditor(app: &TestApp) -> String {
    app.staff("audrey", "auditor").await.1
}

/// Runs `moviestore ARGS` against the app's database; returns (success, stdout, stderr).
async fn run_cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    crate::support::run_cli(&app.database_url, args, "").await
}

/// Rents, returns and waits for the charge; returns the rental id.
async fn rented_returned_charged(app: &TestApp, movie: Uuid, token: &str) -> Uuid {
    let rental = app.rent(movie, token).await;
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(token), None).await;
    expect_status(returned, StatusCode::OK).await;
    wait_for_rental_status(app, &app.address, token, rental, "charged", Duration::from_secs(10)).await;
    rental
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn paging_the_feed_in_tiny_pages_while_customers_rent_and_return_reads_every_event_once_in_order(
    pool: PgPool,
) {
    // Arrange
    let app = std::sync::Arc::new(TestApp::spawn(pool.clone()).await);
    let token = auditor(&app).await;
    let category = app.category("Drama").await;
    let mut writers = Vec::new();
    for i in 0..4 {
        let movie = app.movie(&format!("Movie {i}"), &[category]).await;
        let (_, customer) = app.customer(&format!("renter{i}")).await;
        let app = app.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..6 {
                let rental = app.rent(movie, &customer).await;
                let returned =
                    app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
                expect_status(returned, StatusCode::OK).await;
            }
        }));
    }

    // Act: page with limits 1, 2, 3 while the writers run, then until the log is quiet.
    let mut seen: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    let mut requests = 0u32;
    let mut quiet = false;
    let mut read_while_writing = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let limit = 1 + requests % 3;
        requests += 1;
        let query = match &after {
            Some(after) => format!("limit={limit}&after={after}"),
            None => format!("limit={limit}"),
        };
        let (page, next) = feed_page(&app, &token, &query).await;
        assert!(page.len() <= limit as usize, "a page holds at most limit events");
        if page.is_empty() {
            if quiet {
                break;
            }
            if writers.iter().all(|w| w.is_finished()) {
                // Every command has answered; wait for the process manager's events too, then
                // read to the end once more.
                wait_for_projections(&app, &app.address, Duration::from_secs(30)).await;
                quiet = true;
            }
            assert!(Instant::now() < deadline, "the feed did not reach the end of the log in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if writers.iter().any(|w| !w.is_finished()) {
            read_while_writing += page.len();
        }
        seen.extend(page);
        after = next;
    }
    for writer in writers {
        writer.await.expect("writer");
    }

    // Assert
    let expected = log_order(&pool).await;
    let got = positions(&seen);
    let unique: HashSet<i64> = got.iter().copied().collect();
    let missing = expected.iter().filter(|p| !unique.contains(p)).count();
    assert_eq!(got.len() - unique.len(), 0, "duplicates");
    assert_eq!(missing, 0, "missing events");
    assert_eq!(got, expected, "the feed's order is (transaction id, position)");
    assert!(expected.len() >= 4 * 6 * 5, "4 customers x 6 rentals x (2 movie + 3 rental events)");
    assert!(read_while_writing > 0, "some pages were read while the writers appended");
    println!(
        "{} events read exactly once in {requests} requests of 1-3 events, {read_while_writing} of them while \
         the writers ran",
        got.len()
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_rentals_stream_shows_its_life_with_the_actor_and_the_request_ids_that_caused_it(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let token = auditor(&app).await;
    let category = app.category("Comedy").await;
    let movie = app.movie("The Big Lebowski", &[category]).await;
    let (customer, customer_token) = app.customer("dude").await;

    // Act
    let rented =
        send_as(&app, Method::POST, &format!("/api/v1/movies/{movie}/rent"), &customer_token, None, "rent-1")
            .await;
    let rental = uuid(&expect_status(rented, StatusCode::CREATED).await["rental_id"]);
    let path = format!("/api/v1/rentals/{rental}/return");
    expect_status(
        send_as(&app, Method::POST, &path, &customer_token, None, "return-1").await,
        StatusCode::OK,
    )
    .await;
    wait_for_rental_status(&app, &app.address, &customer_token, rental, "charged", Duration::from_secs(10))
        .await;
    let path = format!("/api/v1/rentals/{rental}/pay");
    let paid =
        send_as(&app, Method::POST, &path, &customer_token, Some(json!({"amount_cents": 100})), "pay-1")
            .await;
    expect_status(paid, StatusCode::OK).await;
    let stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{rental}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let movie_stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/movie/{movie}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;

    // Assert
    let items = stream["items"].as_array().expect("items");
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed", "RentalPaid"]);
    let movie_items = movie_stream["items"].as_array().expect("items");
    let movie_event = |kind: &str| movie_items.iter().find(|e| e["type"] == kind).expect(kind).clone();
    let (movie_rented, movie_returned) = (movie_event("MovieRented"), movie_event("MovieReturned"));
    let customer = json!(customer.to_string());
    let expected_metadata = [
        json!({"actor_id": customer, "request_id": "rent-1", "correlation_id": "rent-1",
               "causation_id": movie_rented["event_id"]}),
        json!({"actor_id": customer, "request_id": "return-1", "correlation_id": "return-1",
               "causation_id": movie_returned["event_id"]}),
        json!({"actor_id": customer, "request_id": "return-1", "correlation_id": "return-1",
               "causation_id": movie_returned["event_id"]}),
        json!({"actor_id": customer, "request_id": "pay-1", "correlation_id": "pay-1", "causation_id": null}),
    ];
    for (i, (event, metadata)) in items.iter().zip(expected_metadata).enumerate() {
        assert_eq!(event["metadata"], metadata, "{}", event["type"]);
        assert_eq!(event["version"], i as i64 + 1, "stream order: {event}");
        assert_eq!(event["stream_type"], "rental");
        assert_eq!(event["stream_id"], rental.to_string());
        let keys: BTreeSet<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
        let contract: BTreeSet<&str> = [
            "position",
            "event_id",
            "stream_type",
            "stream_id",
            "version",
            "type",
            "schema_version",
            "recorded_at",
            "payload",
            "metadata",
        ]
        .into();
        assert_eq!(keys, contract, "the Event shape");
        uuid(&event["event_id"]);
        time(&event["recorded_at"]);
    }
    assert_eq!(items[0]["payload"]["movie_id"], movie.to_string());
    assert_eq!(items[2]["payload"]["amount_cents"], 100);
    assert_eq!(
        items[3]["payload"],
        json!({"amount_cents": 100, "currency": "EUR", "paid_at": items[3]["payload"]["paid_at"]})
    );
    assert_eq!(items[3]["schema_version"], "2.0", "RentalPaid is written in its current version");
    assert_eq!(items[0]["schema_version"], "2.0", "RentalOpened is written in its current version");
    assert_eq!(movie_rented["metadata"]["request_id"], "rent-1");
    assert_eq!(movie_rented["metadata"]["causation_id"], Value::Null, "a client command has no cause");
    assert_eq!(
        movie_event("MovieAdded")["metadata"]["actor_id"],
        json!(app.user_id("admin").await.to_string())
    );

    // A stream with no events, an unknown stream type and a malformed id are all 404.
    for path in [
        format!("/api/v1/audit/streams/rental/{}", Uuid::now_v7()),
        format!("/api/v1/audit/streams/movie/{rental}"),
        format!("/api/v1/audit/streams/video/{movie}"),
        "/api/v1/audit/streams/movie/not-a-uuid".to_string(),
        "/api/v1/audit/streams/movie/%FF%FE".to_string(),
        format!("/api/v1/audit/streams/rental/{}/state", Uuid::now_v7()),
        format!("/api/v1/audit/streams/video/{movie}/state"),
        "/api/v1/audit/streams/movie/42/state".to_string(),
    ] {
        assert_problem_in(app.get(&path, Some(&token)).await, 404, "not-found", &path).await;
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_state_as_of_a_time_is_the_aggregate_as_it_was_then(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let token = auditor(&app).await;
    let category = app.category("Crime").await;
    let movie = app.movie("Fargo", &[category]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (customer, customer_token) = app.customer("marge").await;
    let rental = app.rent(movie, &customer_token).await;
    let stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/movie/{movie}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let added_at = time(&stream["items"][0]["recorded_at"]);
    let rented_at = time(&stream["items"][1]["recorded_at"]);
    assert!(added_at < rented_at);
    let state_at = |t: Option<DateTime<Utc>>| {
        let query = t.map(|t| format!("?as_of={}", rfc3339(t))).unwrap_or_default();
        format!("/api/v1/audit/streams/movie/{movie}/state{query}")
    };

    // Act
    let before = app.get(&state_at(Some(added_at - chrono::Duration::milliseconds(1))), Some(&token)).await;
    let created = expect_status(app.get(&state_at(Some(added_at)), Some(&token)).await, StatusCode::OK).await;
    let between = rented_at - chrono::Duration::microseconds(1);
    let still_available =
        expect_status(app.get(&state_at(Some(between)), Some(&token)).await, StatusCode::OK).await;
    let rented = expect_status(app.get(&state_at(Some(rented_at)), Some(&token)).await, StatusCode::OK).await;
    let now = expect_status(app.get(&state_at(None), Some(&token)).await, StatusCode::OK).await;

    // Assert
    assert_problem(before, 404, "not-found").await;
    assert_eq!(created["stream_type"], "movie");
    assert_eq!(created["stream_id"], movie.to_string());
    assert_eq!(created["version"], 1);
    assert_eq!(time(&created["as_of"]), added_at);
    let state = &created["state"];
    assert_eq!(state["available"], true, "{created}");
    assert_eq!(state["title"], "Fargo");
    assert_eq!(state["category_ids"], json!([category.to_string()]));
    assert_eq!(state["retired"], false);
    assert_eq!(state["times_rented"], 0);
    assert_eq!(state["rental"], Value::Null);
    assert_eq!(still_available["state"]["available"], true);
    assert_eq!(still_available["version"], 1);
    assert_eq!(rented["version"], 2);
    assert_eq!(rented["state"]["available"], false, "{rented}");
    assert_eq!(rented["state"]["rental"]["rental_id"], rental.to_string());
    assert_eq!(rented["state"]["rental"]["customer_id"], customer.to_string());
    assert_eq!(rented["state"]["times_rented"], 1);
    assert_eq!(now["state"], rented["state"], "without as_of: now");

    // The rental and the category have states too.
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer_token), None).await;
    expect_status(returned, StatusCode::OK).await;
    wait_for_rental_status(&app, &app.address, &customer_token, rental, "charged", Duration::from_secs(10))
        .await;
    let rental_state = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{rental}/state"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rental_state["version"], 3);
    assert_eq!(rental_state["state"]["status"], "charged");
    assert_eq!(rental_state["state"]["charge"], json!({"days": 1, "amount_cents": 100, "currency": "EUR"}));
    assert_eq!(rental_state["state"]["movie_id"], movie.to_string());
    let back = expect_status(app.get(&state_at(None), Some(&token)).await, StatusCode::OK).await;
    assert_eq!(back["state"]["available"], true, "returned: available again");
    let category_state = expect_status(
        app.get(&format!("/api/v1/audit/streams/category/{category}/state"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(category_state["state"], json!({"name": "Crime"}));

    let bad =
        app.get(&format!("/api/v1/audit/streams/movie/{movie}/state?as_of=yesterday"), Some(&token)).await;
    assert_invalid(bad, &["as_of"], "as_of=yesterday").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_export_is_the_feed_as_ndjson_and_the_cli_writes_the_same_lines(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let token = auditor(&app).await;
    let category = app.category("Western").await;
    let movie = app.movie("True Grit", &[category]).await;
    let (_, customer) = app.customer("mattie").await;
    for _ in 0..2 {
        rented_returned_charged(&app, movie, &customer).await;
    }
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let feed = whole_feed(&app, &token, "limit=7").await;

    // Act
    let response = app.get("/api/v1/audit/export", Some(&token)).await;
    let status = response.status();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    let http = response.text().await.unwrap();
    let (ok, cli, stderr) = run_cli(&app, &["export"]).await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/x-ndjson");
    assert!(http.ends_with('\n'), "every line ends with a newline");
    let lines: Vec<Value> =
        http.lines().map(|l| serde_json::from_str(l).expect("one JSON Event a line")).collect();
    assert_eq!(lines.len(), feed.len(), "the export has as many lines as the feed has events");
    assert_eq!(lines, feed, "the same events in the same order");
    assert_eq!(positions(&lines), log_order(&app.pool).await);
    assert!(ok, "export failed: {stderr}");
    assert_eq!(cli, http, "the CLI writes exactly the HTTP export");
    assert!(stderr.is_empty(), "no progress bar when stderr is not a terminal: {stderr:?}");

    // --after a position and --until a time.
    let third = feed[2]["position"].as_i64().unwrap();
    let (ok, after, stderr) = run_cli(&app, &["export", "--after", &third.to_string()]).await;
    assert!(ok, "{stderr}");
    let expected: String = http.lines().skip(3).map(|l| format!("{l}\n")).collect();
    assert_eq!(after, expected, "--after {third}: the events after it in feed order");
    let cut = time(&feed[5]["recorded_at"]);
    let (ok, until, stderr) = run_cli(&app, &["export", "--until", &rfc3339(cut)]).await;
    assert!(ok, "{stderr}");
    let expected: String = http
        .lines()
        .zip(&lines)
        .filter(|(_, event)| time(&event["recorded_at"]) < cut)
        .map(|(l, _)| format!("{l}\n"))
        .collect();
    assert!(!expected.is_empty() && expected.lines().count() < lines.len());
    assert_eq!(until, expected, "--until: recorded before it");
    let (ok, _, stderr) = run_cli(&app, &["export", "--until", "tomorrow"]).await;
    assert!(!ok && stderr.contains("--until"), "a bad time is refused: {stderr}");
    let (ok, _, stderr) = run_cli(&app, &["export", "--after", "999999"]).await;
    assert!(!ok && stderr.contains("999999"), "an unknown position is refused: {stderr}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_feed_filters_by_stream_type_stream_id_event_type_and_recording_time(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let token = auditor(&app).await;
    let category = app.category("Horror").await;
    let first = app.movie("Alien", &[category]).await;
    let second = app.movie("Aliens", &[category]).await;
    let (_, customer) = app.customer("ripley").await;
    rented_returned_charged(&app, first, &customer).await;
    app.rent(second, &customer).await;
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let all = whole_feed(&app, &token, "limit=100").await;

    // Act / Assert
    let only =
        |pred: &dyn Fn(&Value) -> bool| -> Vec<Value> { all.iter().filter(|e| pred(e)).cloned().collect() };
    let cases: Vec<(String, Vec<Value>)> = vec![
        ("stream_type=category".into(), only(&|e| e["stream_type"] == "category")),
        ("stream_type=rental".into(), only(&|e| e["stream_type"] == "rental")),
        (format!("stream_id={first}"), only(&|e| e["stream_id"] == first.to_string())),
        (format!("stream_type=movie&stream_id={second}"), only(&|e| e["stream_id"] == second.to_string())),
        ("type=MovieRented".into(), only(&|e| e["type"] == "MovieRented")),
        ("type=NoSuchEvent".into(), vec![]),
    ];
    for (query, expected) in cases {
        assert!(query.starts_with("type=No") || !expected.is_empty(), "{query} has events to find");
        let got = whole_feed(&app, &token, &format!("limit=2&{query}")).await;
        assert_eq!(got, expected, "{query}");
    }
    let pivot = time(&all[4]["recorded_at"]);
    let since = whole_feed(&app, &token, &format!("since={}", rfc3339(pivot))).await;
    assert_eq!(since, only(&|e| time(&e["recorded_at"]) >= pivot), "since is inclusive");
    assert_eq!(since[0], all[4]);
    let until = whole_feed(&app, &token, &format!("until={}", rfc3339(pivot))).await;
    assert_eq!(until, only(&|e| time(&e["recorded_at"]) < pivot), "until is exclusive");
    assert_eq!(until.len(), 4);
    let window = format!("since={}&until={}", rfc3339(time(&all[1]["recorded_at"])), rfc3339(pivot));
    assert_eq!(whole_feed(&app, &token, &window).await, all[1..4].to_vec());
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn bad_cursors_limits_filters_and_times_are_422_naming_each_parameter(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let token = auditor(&app).await;
    app.category("Noir").await;
    // Base64 of JSON that is not a cursor, and of a cursor with a negative transaction id.
    let not_a_cursor = "eyJub3BlIjoxfQ"; // {"nope":1}
    let negative = "eyJ4IjotMSwicCI6MH0"; // {"x":-1,"p":0}
    let cases: [(&str, &[&str]); 14] = [
        (&format!("after={negative}"), &["after"]),
        ("after=%%%", &["after"]),
        ("after=bm90LWEtY3Vyc29y", &["after"]),
        (&format!("after={not_a_cursor}"), &["after"]),
        ("limit=0", &["limit"]),
        ("limit=101", &["limit"]),
        ("limit=ten", &["limit"]),
        ("stream_type=video", &["stream_type"]),
        ("stream_id=42", &["stream_id"]),
        ("type=Movie%20Rented", &["type"]),
        ("since=yesterday", &["since"]),
        ("until=2026-13-01T00:00:00Z", &["until"]),
        ("since=2026-01-01", &["since"]),
        ("limit=0&after=x&since=now&stream_type=dvd", &["after", "limit", "since", "stream_type"]),
    ];

    // Act / Assert
    for (query, fields) in cases {
        let response = app.get(&format!("/api/v1/audit/events?{query}"), Some(&token)).await;
        assert_invalid(response, fields, query).await;
    }
    for ok in ["limit=1", "limit=100", "since=2026-01-01T00:00:00%2B02:00", "stream_type=movie"] {
        let response = app.get(&format!("/api/v1/audit/events?{ok}"), Some(&token)).await;
        expect_status(response, StatusCode::OK).await;
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn only_auditors_and_admins_read_the_audit_and_anonymous_callers_get_401(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let category = app.category("Sci-Fi").await;
    let auditor = auditor(&app).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("carl").await;
    let (_, analyst) = app.staff("anna", "analyst").await;
    let paths = [
        "/api/v1/audit/events".to_string(),
        format!("/api/v1/audit/streams/category/{category}"),
        format!("/api/v1/audit/streams/category/{category}/state"),
        "/api/v1/audit/export".to_string(),
    ];

    // Act / Assert
    for path in &paths {
        assert_problem_in(app.get(path, None).await, 401, "unauthorized", path).await;
        assert_problem_in(app.get(path, Some("not-a-token")).await, 401, "unauthorized", path).await;
        for (role, token) in [("customer", &customer), ("analyst", &analyst)] {
            let context = format!("{role} {path}");
            assert_problem_in(app.get(path, Some(token)).await, 403, "forbidden", &context).await;
        }
        for (role, token) in [("auditor", &auditor), ("admin", &admin)] {
            let response = app.get(path, Some(token)).await;
            assert_eq!(response.status(), StatusCode::OK, "{role} {path}");
        }
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_payment_stored_in_version_1_reads_back_through_the_aggregate_the_read_models_and_the_state(
    pool: PgPool,
) {
    // Arrange: a charged rental, then its payment stored in the shape of RentalPaid 1.0
    // (`{amount_cents, paid_at}`, no currency), as an older release wrote it.
    let app = TestApp::spawn(pool.clone()).await;
    let token = auditor(&app).await;
    let category = app.category("Musical").await;
    let movie = app.movie("Cabaret", &[category]).await;
    let (customer, customer_token) = app.customer("sally").await;
    let rental = rented_returned_charged(&app, movie, &customer_token).await;
    let paid_at = "2026-02-03T04:05:06.123456Z";
    let stored = json!({"amount_cents": 100, "paid_at": paid_at});
    let metadata = json!({"actor_id": customer, "request_id": "old-release", "correlation_id": "old-release",
                          "causation_id": null});
    let position: i64 = sqlx::query_scalar(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                             metadata, event_id)
         values ('rental', $1, 4, 'RentalPaid', '1.0', $2, $3, $4) returning position",
    )
    .bind(rental.to_string())
    .bind(&stored)
    .bind(&metadata)
    .bind(Uuid::now_v7())
    .fetch_one(&pool)
    .await
    .expect("insert the old event");

    // Act
    let read = expect_status(
        app.get(&format!("/api/v1/rentals/{rental}?min_position={position}"), Some(&customer_token)).await,
        StatusCode::OK,
    )
    .await;
    let pay_again = app
        .post(
            &format!("/api/v1/rentals/{rental}/pay"),
            Some(&customer_token),
            Some(json!({"amount_cents": 100})),
        )
        .await;
    let state = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{rental}/state"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{rental}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let me = expect_status(
        app.get(&format!("/api/v1/me?min_position={position}"), Some(&customer_token)).await,
        StatusCode::OK,
    )
    .await;
    let (verified, verify_out, verify_err) = run_cli(&app, &["verify"]).await;

    // Assert
    assert_eq!(read["status"], "paid", "the read model applied the old payment: {read}");
    assert_eq!(time(&read["paid_at"]), time(&json!(paid_at)));
    assert_problem(pay_again, 409, "already-paid").await;
    assert_eq!(state["version"], 4);
    assert_eq!(state["state"]["status"], "paid", "{state}");
    assert_eq!(time(&state["state"]["paid_at"]), time(&json!(paid_at)));
    let last = &stream["items"][3];
    assert_eq!(last["schema_version"], "1.0", "the log keeps the version it was stored in");
    assert_eq!(last["payload"], stored, "and the payload as stored");
    assert_eq!(me["balance_due"], json!({"amount_cents": 0, "currency": "EUR"}));
    assert!(verified, "a replay of the read models reads the old event too: {verify_out} {verify_err}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_full_flow_records_no_personal_data_and_only_ids_and_business_fields_in_events(pool: PgPool) {
    // Arrange: a person with distinctive personal data.
    let app = TestApp::spawn(pool).await;
    let username = "Quentin.Zyxwv";
    let email = "qzyxwv.private@mailbox.example";
    let password = "Unguessable-Passw0rd-77";
    let registered = app
        .post(
            "/api/v1/auth/register",
            None,
            Some(json!({"username": username, "email": email, "password": password})),
        )
        .await;
    let registered = expect_status(registered, StatusCode::CREATED).await;
    let customer = uuid(&registered["user"]["id"]);
    let token = app.login(username, password).await;
    let admin = app.admin().await;
    let auditor = auditor(&app).await;

    // Act: every kind of change there is.
    let category = app.category("Thriller").await;
    let renamed = app
        .patch(&format!("/api/v1/categories/{category}"), Some(&admin), json!({"name": "Thrillers"}))
        .await;
    expect_status(renamed, StatusCode::OK).await;
    let movie = app.movie("Vertigo", &[category]).await;
    let updated = app
        .patch(
            &format!("/api/v1/movies/{movie}"),
            Some(&admin),
            json!({"title": "Vertigo (1958)", "director": null}),
        )
        .await;
    expect_status(updated, StatusCode::OK).await;
    let rental = rented_returned_charged(&app, movie, &token).await;
    let paid = app
        .post(&format!("/api/v1/rentals/{rental}/pay"), Some(&token), Some(json!({"amount_cents": 100})))
        .await;
    expect_status(paid, StatusCode::OK).await;
    let rented_at = rfc3339(Utc::now() - chrono::Duration::hours(30));
    let other = app.movie("Rear Window", &[category]).await;
    let on_behalf = app
        .post(
            &format!("/api/v1/movies/{other}/rent"),
            Some(&admin),
            Some(json!({"customer_id": customer, "rented_at": rented_at})),
        )
        .await;
    let back_office = uuid(&expect_status(on_behalf, StatusCode::CREATED).await["rental_id"]);
    let returned_at = rfc3339(Utc::now() - chrono::Duration::hours(1));
    let returned = app
        .post(
            &format!("/api/v1/rentals/{back_office}/return"),
            Some(&admin),
            Some(json!({"returned_at": returned_at})),
        )
        .await;
    expect_status(returned, StatusCode::OK).await;
    wait_for_rental_status(&app, &app.address, &admin, back_office, "charged", Duration::from_secs(10)).await;
    let paid = app
        .post(&format!("/api/v1/rentals/{back_office}/pay"), Some(&admin), Some(json!({"amount_cents": 200})))
        .await;
    expect_status(paid, StatusCode::OK).await;
    let retired = app.movie("Psycho", &[category]).await;
    let response = app.delete(&format!("/api/v1/movies/{retired}"), Some(&admin)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // A rental entered ten days late, still out: it goes overdue.
    let late = app.movie("The Birds", &[category]).await;
    let rented_at = rfc3339(Utc::now() - chrono::Duration::days(10));
    let overdue = app
        .post(
            &format!("/api/v1/movies/{late}/rent"),
            Some(&admin),
            Some(json!({"customer_id": customer, "rented_at": rented_at})),
        )
        .await;
    let overdue = uuid(&expect_status(overdue, StatusCode::CREATED).await["rental_id"]);
    crate::due_dates::wait_for_overdue(&app, &admin, overdue, Duration::from_secs(10)).await;
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let export = app.get("/api/v1/audit/export", Some(&auditor)).await;
    let export = export.text().await.unwrap();

    // Assert
    let events: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let needles =
        [username.to_lowercase(), email.to_lowercase(), "qzyxwv".to_string(), password.to_lowercase()];
    for event in &events {
        let text = format!("{} {}", event["payload"], event["metadata"]).to_lowercase();
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{needle} appears in {event}");
        }
    }
    let allowed: BTreeMap<&str, &[&str]> = PAYLOAD_KEYS.into_iter().collect();
    let mut seen = BTreeSet::new();
    for event in &events {
        let kind = event["type"].as_str().unwrap();
        let keys = allowed.get(kind).unwrap_or_else(|| panic!("{kind} is not in the event catalogue"));
        for key in event["payload"].as_object().expect("an object payload").keys() {
            assert!(keys.contains(&key.as_str()), "{kind} carries {key}, not an id or business field");
        }
        let metadata: BTreeSet<&str> =
            event["metadata"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(metadata, ["actor_id", "causation_id", "correlation_id", "request_id"].into());
        seen.insert(kind);
    }
    let catalogue: BTreeSet<&str> = allowed.keys().copied().collect();
    assert_eq!(seen, catalogue, "the flow produced every event type of the catalogue");
    assert_eq!(catalogue, domain::EVENT_TYPES.into(), "the catalogue the audit filter accepts");
    // The person is referred to by id only.
    assert!(events.iter().any(|e| e["payload"]["customer_id"] == customer.to_string()));
    assert!(events.iter().any(|e| e["metadata"]["actor_id"] == customer.to_string()));
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn erase_user_removes_the_persons_data_and_the_history_stays_replayable(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let auditor = auditor(&app).await;
    let category = app.category("Romance").await;
    let movie = app.movie("Casablanca", &[category]).await;
    let (customer, token) = app.customer("Ilsa.Lund").await;
    let rental = rented_returned_charged(&app, movie, &token).await;
    let second_token = app.login("Ilsa.Lund", "password-123").await;
    let failed = app
        .post(
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "ilsa.lund", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    // A keyed request keeps a record of what she sent and got.
    let keyed = app
        .client
        .post(app.url("/api/v1/me/password"))
        .bearer_auth(&second_token)
        .header("idempotency-key", "ilsa-1")
        .json(&json!({"current_password": "password-123", "new_password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let before: i64 = sqlx::query_scalar("select count(*) from idempotency where scope = $1")
        .bind(customer.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();

    // Act
    let (ok, stdout, stderr) = run_cli(&app, &["erase-user", "ilsa.lund"]).await;

    // Assert
    assert!(ok, "erase-user failed: {stderr}");
    assert!(stdout.contains(&customer.to_string()) && stdout.contains("2 token(s) revoked"), "{stdout}");
    assert!(stdout.contains("1 login failure(s) and 1 idempotency record(s) deleted"), "{stdout}");
    let (username, email, hash): (String, Option<String>, String) =
        sqlx::query_as("select username, email, password_hash from users where user_id = $1")
            .bind(customer)
            .fetch_one(&pool)
            .await
            .expect("the account row stays");
    assert_eq!(username, format!("erased:{customer}"));
    assert!(!username.to_lowercase().contains("ilsa"));
    assert_eq!((email, hash.as_str()), (None, ""));
    let left: (i64, i64) = sqlx::query_as(
        "select (select count(*) from tokens where user_id = $1), (select count(*) from login_failures where username = 'ilsa.lund')",
    )
    .bind(customer)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0), "tokens revoked and login failures deleted");
    let records: i64 = sqlx::query_scalar("select count(*) from idempotency where scope = $1")
        .bind(customer.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((before, records), (1, 0), "her idempotency record was deleted");
    for token in [&token, &second_token] {
        assert_problem(app.get("/api/v1/me", Some(token)).await, 401, "unauthorized").await;
    }
    let login = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "Ilsa.Lund", "password": "password-123"})))
        .await;
    assert_problem(login, 401, "unauthorized").await;

    // The history still reads and replays, and refers to the account by id.
    let stream = expect_status(
        app.get(&format!("/api/v1/audit/streams/rental/{rental}"), Some(&auditor)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stream["items"][0]["payload"]["customer_id"], customer.to_string());
    let (verified, out, err) = run_cli(&app, &["verify"]).await;
    assert!(verified, "verify after erasure: {out} {err}");

    // The name and email are free again; an unknown user is an error.
    app.customer("Ilsa.Lund").await;
    let (ok, stdout, stderr) = run_cli(&app, &["erase-user", "nobody-here"]).await;
    assert!(!ok, "an unknown user exits non-zero: {stdout}");
    assert!(stderr.contains("nobody-here"), "{stderr}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_long_stream_is_read_a_page_at_a_time_and_every_version_comes_once(pool: PgPool) {
    // Arrange: a movie rented and returned 20 times: 2 + 40 events on its stream.
    let app = TestApp::spawn(pool).await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    for _ in 0..20 {
        let rental = app.rent(movie, &customer).await;
        let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
        expect_status(returned, StatusCode::OK).await;
    }
    let base = format!("/api/v1/audit/streams/movie/{movie}");

    // Act: pages of 10, following next_after_version.
    let mut versions = Vec::new();
    let mut pages = 0;
    let mut after = None::<i64>;
    loop {
        let path = match after {
            None => format!("{base}?limit=10"),
            Some(v) => format!("{base}?limit=10&after_version={v}"),
        };
        let page = expect_status(app.get(&path, Some(&auditor)).await, StatusCode::OK).await;
        pages += 1;
        versions.extend(page["items"].as_array().unwrap().iter().map(|e| e["version"].as_i64().unwrap()));
        match page["next_after_version"].as_i64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    // Assert
    let total = versions.len() as i64;
    assert_eq!(versions, (1..=total).collect::<Vec<_>>(), "every version once, in order");
    assert_eq!(total, 41, "MovieAdded and 20 rents and returns");
    assert_eq!(pages, (total + 9) / 10);
    let whole = expect_status(app.get(&base, Some(&auditor)).await, StatusCode::OK).await;
    assert_eq!(whole["items"].as_array().unwrap().len() as i64, total, "the default page of 1000 holds all");
    assert!(whole["next_after_version"].is_null());
    let beyond =
        expect_status(app.get(&format!("{base}?after_version=1000"), Some(&auditor)).await, StatusCode::OK)
            .await;
    assert_eq!(beyond, json!({"items": [], "next_after_version": null}));
    for bad in ["limit=0", "limit=10001", "limit=x", "after_version=-1", "after_version=1.5"] {
        assert_invalid(
            app.get(&format!("{base}?{bad}"), Some(&auditor)).await,
            &[bad.split('=').next().unwrap()],
            bad,
        )
        .await;
    }
    let unknown = app
        .get(&format!("/api/v1/audit/streams/movie/{}?after_version=3", Uuid::now_v7()), Some(&auditor))
        .await;
    assert_problem(unknown, 404, "not-found").await;
    println!(
        "stream paging: {total} events in {pages} pages of 10, each version once; 5 bad parameters → 422"
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_audit_query_that_runs_out_of_time_answers_503_and_is_cancelled_in_postgresql(pool: PgPool) {
    // Arrange: requests get 2 s; the log is locked, so the audit query cannot finish.
    let options = Options { extra_env: vec![("MOVIESTORE_REQUEST_TIMEOUT_SECS".into(), "2".into())] };
    let app = TestApp::spawn_with(pool.clone(), options).await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let mut holder = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table events in access exclusive mode").execute(&mut *holder).await.unwrap();

    // Act
    let started = Instant::now();
    let answer = app.get("/api/v1/audit/events?type=MovieRented", Some(&auditor)).await;
    let waited = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still_running: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity
          where datname = current_database() and state = 'active' and pid <> pg_backend_pid()
            and query like '%event_type = $%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A type no event can have is answered without touching the (locked) log.
    let unknown_started = Instant::now();
    let unknown = app.get("/api/v1/audit/events?type=NoSuchEvent", Some(&auditor)).await;
    let unknown_took = unknown_started.elapsed();
    holder.rollback().await.unwrap();

    // Assert
    assert_eq!(expect_status(unknown, StatusCode::OK).await, json!({"items": [], "next_after": null}));
    assert!(unknown_took < Duration::from_secs(1), "an unknown type scanned: {unknown_took:?}");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!(still_running, 0, "the query was cancelled in PostgreSQL, not left waiting");
    expect_status(app.get("/api/v1/audit/events?type=MovieRented", Some(&auditor)).await, StatusCode::OK)
        .await;
    println!("audit out of time: 503 with Retry-After after {waited:?}, 0 queries left running");
}
