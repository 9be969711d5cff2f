//! Running in production: the Prometheus scrape, `Idempotency-Key`, rate and concurrency limits,
//! and JSON logs that name every request and no secret.

use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::wait_for_projections;
use crate::support::*;

/// Sends a request with an `Idempotency-Key` (given as raw header bytes).
async fn keyed(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    key: &[u8],
) -> Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("idempotency-key", HeaderValue::from_bytes(key).unwrap());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request sent")
}

/// Status, `x-position`, `idempotent-replayed` and body text of an answer.
async fn answer(response: Response) -> (StatusCode, Option<String>, bool, String) {
    let status = response.status();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let position = header("x-position");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    (status, position, replayed, response.text().await.unwrap())
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from events").fetch_one(pool).await.unwrap()
}

async fn rented_events(pool: &PgPool, movie: Uuid) -> i64 {
    sqlx::query_scalar(
        "select count(*) from events
          where aggregate_type = 'movie' and aggregate_id = $1 and event_type = 'MovieRented'",
    )
    .bind(movie.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_metrics_scrape_shows_requests_latencies_commands_cache_projections_and_the_pool(pool: PgPool) {
    // Arrange
    let app = TestApp::process(pool.clone()).await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    app.rent(movie, &customer).await;
    // Two rents of another movie, loaded while another writer's change of it is not committed:
    // their append meets that change, so it conflicts and is retried (one rent wins, the other is
    // refused, the copy being out).
    let contested = app.movie("Ran", &[drama]).await;
    let (_, maude) = app.customer("maude").await;
    // The payments process manager has nothing left to append while the other writer holds on.
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let lock = movie_change_in_the_way(&pool, contested).await;
    let url = app.url(&format!("/api/v1/movies/{contested}/rent"));
    let racers: Vec<_> = [customer.clone(), maude]
        .into_iter()
        .map(|token| {
            let (client, url) = (app.client.clone(), url.clone());
            tokio::spawn(async move { client.post(url).bearer_auth(token).send().await.unwrap().status() })
        })
        .collect();
    wait_until_an_append_waits_for_another(&pool).await;
    lock.commit().await.unwrap();
    let mut raced = Vec::new();
    for racer in racers {
        raced.push(racer.await.unwrap().as_u16());
    }
    raced.sort();
    assert_eq!(raced, [201, 409]);
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let path = format!("/api/v1/movies/{movie}");
    let mut caches = Vec::new();
    for _ in 0..3 {
        let response = app.get(&path, Some(&customer)).await;
        caches.push(response.headers()["x-cache"].to_str().unwrap().to_string());
        expect_status(response, StatusCode::OK).await;
    }
    assert_eq!(caches, ["miss", "hit", "hit"], "the first read fills the cache");

    // Act
    let response = app.get("/metrics", None).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK, "no token needed");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let scrape = response.text().await.unwrap();
    let rent = ["route=\"/api/v1/movies/{id}/rent\"", "method=\"POST\"", "status=\"201\""];
    let rents = samples(&scrape, "http_requests_total", &rent);
    assert_eq!(rents.len(), 1, "{scrape}");
    assert_eq!(value(rents[0]), 2.0);
    let reads = samples(&scrape, "http_requests_total", &["route=\"/api/v1/movies/{id}\"", "status=\"200\""]);
    assert_eq!(reads.iter().map(|s| value(s)).sum::<f64>(), 3.0, "{reads:?}");
    let buckets = samples(&scrape, "http_request_duration_seconds_bucket", &rent);
    assert!(buckets.len() > 5, "latency histogram buckets: {buckets:?}");
    assert!(buckets.iter().any(|b| b.contains("le=\"+Inf\"") && value(b) == 2.0), "{buckets:?}");
    assert_eq!(samples(&scrape, "http_request_duration_seconds_count", &rent).len(), 1);
    let commands = samples(
        &scrape,
        "commands_total",
        &["aggregate=\"movie\"", "command=\"RentMovie\"", "outcome=\"committed\""],
    );
    assert_eq!(commands.iter().map(|s| value(s)).sum::<f64>(), 2.0, "{commands:?}");
    assert!(
        !samples(&scrape, "commands_total", &["command=\"OpenRental\""]).is_empty(),
        "the process manager's commands are counted too"
    );
    let conflicts =
        samples(&scrape, "command_conflicts_total", &["aggregate=\"movie\"", "command=\"RentMovie\""]);
    assert!(conflicts.iter().map(|s| value(s)).sum::<f64>() >= 1.0, "conflicts counted: {conflicts:?}");
    let refused = samples(&scrape, "commands_total", &["command=\"RentMovie\"", "outcome=\"rejected\""]);
    assert_eq!(refused.iter().map(|s| value(s)).sum::<f64>(), 1.0, "the loser was refused: {refused:?}");
    assert_eq!(value(samples(&scrape, "cache_hits_total", &[])[0]), 2.0);
    assert!(value(samples(&scrape, "cache_misses_total", &[])[0]) >= 1.0);
    for projection in ["catalogue", "payments", "rentals"] {
        let label = format!("projection=\"{projection}\"");
        let position = samples(&scrape, "projection_position", &[&label]);
        assert_eq!(position.len(), 1, "position of {projection}: {scrape}");
        assert!(value(position[0]) > 0.0, "{projection} has applied events");
        assert_eq!(value(samples(&scrape, "projection_lag_events", &[&label])[0]), 0.0, "{projection}");
        assert_eq!(samples(&scrape, "projection_lag_seconds", &[&label]).len(), 1, "{projection}");
    }
    assert_eq!(value(samples(&scrape, "db_pool_max", &[])[0]), 8.0, "the harness's pool size");
    let size = value(samples(&scrape, "db_pool_size", &[])[0]);
    let idle = value(samples(&scrape, "db_pool_idle", &[])[0]);
    assert!((1.0..=8.0).contains(&size) && idle <= size, "size {size}, idle {idle}");
    assert!(!scrape.contains(&movie.to_string()), "no ids in labels: bounded cardinality");
    println!("scrape: {} lines", scrape.lines().count());
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_command_replayed_with_its_key_returns_the_first_answer_and_appends_nothing(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let other = app.movie("Ran", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    let before = event_count(&pool).await;

    // Act
    let first = answer(keyed(&app, Method::POST, &path, Some(&customer), None, b"rent-heat-1").await).await;
    let after_first = event_count(&pool).await;
    let second = answer(keyed(&app, Method::POST, &path, Some(&customer), None, b"rent-heat-1").await).await;
    let other_path = format!("/api/v1/movies/{other}/rent");
    let moved = keyed(&app, Method::POST, &other_path, Some(&customer), None, b"rent-heat-1").await;

    // Assert
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.3);
    assert!(!first.2, "a first answer is not a replay");
    assert_eq!(after_first, before + 1, "one MovieRented");
    assert_eq!((second.0, &second.1, &second.3), (first.0, &first.1, &first.3), "the identical answer");
    assert!(second.2, "marked idempotent-replayed");
    let body: Value = serde_json::from_str(&first.3).unwrap();
    assert_eq!(first.1.as_deref(), Some(body["position"].to_string().as_str()), "x-position replayed");
    assert_invalid(moved, &["Idempotency-Key"], "same key, another path").await;
    assert_eq!(event_count(&pool).await, before + 1, "exactly one new event in the log");
    assert_eq!(rented_events(&pool, other).await, 0);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_same_key_with_another_body_is_refused_with_422_and_changes_nothing(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let admin = app.admin().await;
    let first =
        keyed(&app, Method::POST, "/api/v1/categories", Some(&admin), Some(json!({"name": "Drama"})), b"k")
            .await;
    expect_status(first, StatusCode::CREATED).await;
    let before = event_count(&pool).await;

    // Act
    let other_body =
        keyed(&app, Method::POST, "/api/v1/categories", Some(&admin), Some(json!({"name": "Comedy"})), b"k")
            .await;
    let other_method = keyed(&app, Method::PATCH, "/api/v1/categories", Some(&admin), None, b"k").await;

    // Assert
    assert_invalid(other_body, &["Idempotency-Key"], "another body").await;
    assert_eq!(other_method.status(), StatusCode::UNPROCESSABLE_ENTITY, "another method");
    assert_eq!(event_count(&pool).await, before, "no Comedy category");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_key_belongs_to_its_caller_so_another_account_using_it_runs_its_own_request(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let (_, greg) = app.customer("greg").await;
    let (_, maude) = app.customer("maude").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");

    // Act
    let gregs = answer(keyed(&app, Method::POST, &path, Some(&greg), None, b"shared").await).await;
    let maudes = keyed(&app, Method::POST, &path, Some(&maude), None, b"shared").await;

    // Assert
    assert_eq!(gregs.0, StatusCode::CREATED, "{}", gregs.3);
    // The very same request under the very same key is run for Maude, not answered with Greg's
    // rental: the copy is out.
    assert_problem(maudes, 409, "not-available").await;
    assert_eq!(rented_events(&pool, movie).await, 1);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn keys_are_ignored_on_the_account_endpoints_and_refusals_before_them_store_nothing(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let body = json!({"username": "dude", "email": "dude@example.com", "password": "password-123"});
    let login = json!({"username": "dude", "password": "password-123"});

    // Act: a register twice and a login under one key; a customer's forbidden and an anonymous
    // call under keys of their own.
    let first =
        keyed(&app, Method::POST, "/api/v1/auth/register", None, Some(body.clone()), b"signup-1").await;
    let second = keyed(&app, Method::POST, "/api/v1/auth/register", None, Some(body), b"signup-1").await;
    let logged_in = keyed(&app, Method::POST, "/api/v1/auth/login", None, Some(login), b"signup-1").await;
    let (_, customer) = app.customer("greg").await;
    let forbidden = keyed(
        &app,
        Method::POST,
        "/api/v1/categories",
        Some(&customer),
        Some(json!({"name": "Noir"})),
        b"f-1",
    )
    .await;
    let anonymous =
        keyed(&app, Method::POST, "/api/v1/categories", None, Some(json!({"name": "Noir"})), b"a-1").await;

    // Assert: the key changed nothing (the second register is a second registration) and no
    // record holds a password-bearing body, a token or a refusal.
    let first = expect_status(first, StatusCode::CREATED).await;
    assert_problem(second, 409, "username-taken").await;
    let token = expect_status(logged_in, StatusCode::OK).await["token"].as_str().unwrap().to_string();
    assert_ne!(first["token"].as_str().unwrap(), token, "a fresh login, not a replay");
    assert_problem(forbidden, 403, "forbidden").await;
    assert_problem(anonymous, 401, "unauthorized").await;
    let stored: i64 = sqlx::query_scalar("select count(*) from idempotency").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0, "nothing was recorded");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_account_holds_at_most_10000_live_keys_and_beyond_them_gets_429(pool: PgPool) {
    // Arrange: greg already holds 9,990 live keys (written as the middleware would).
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let (greg_id, greg) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    sqlx::query(
        "insert into idempotency (scope, key, method, path, body_hash, claim, lease_until, expires_at, status)
         select $1, 'old-' || n, 'POST', '/x', '\\x00', gen_random_uuid(), now(), now() + interval '1 day', 201
           from generate_series(1, 9990) n",
    )
    .bind(greg_id.to_string())
    .execute(&pool)
    .await
    .unwrap();
    let path = format!("/api/v1/movies/{movie}/rent");

    // Act: 2,000 rents under 2,000 new keys, 16 at a time.
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for wave in 0..125 {
        let answers =
            futures::future::join_all((0..16).map(|i| {
                let key = format!("new-{wave}-{i}");
                let (app, path, greg) = (&app, &path, &greg);
                async move {
                    keyed(app, Method::POST, path, Some(greg), None, key.as_bytes()).await.status().as_u16()
                }
            }))
            .await;
        for status in answers {
            *by_status.entry(status).or_default() += 1;
        }
    }
    let live: i64 = sqlx::query_scalar("select count(*) from idempotency where scope = $1")
        .bind(greg_id.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    // A key greg already holds still replays (which ten fitted depends on the race, so ask the
    // table); another account is not affected.
    let held: String =
        sqlx::query_scalar("select key from idempotency where scope = $1 and key like 'new-%' limit 1")
            .bind(greg_id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
    let replay = keyed(&app, Method::POST, &path, Some(&greg), None, held.as_bytes()).await.status().as_u16();
    let (_, maude) = app.customer("maude").await;
    let other = keyed(&app, Method::POST, &path, Some(&maude), None, b"maude-1").await.status().as_u16();

    // Assert: 10 keys fitted (one rent won, nine found the copy out), the rest were refused.
    assert_eq!(by_status.get(&429), Some(&1990), "{by_status:?}");
    assert_eq!(by_status.get(&201).copied().unwrap_or(0) + by_status.get(&409).copied().unwrap_or(0), 10);
    assert_eq!(live, 10_000, "the table holds exactly the cap");
    assert!(matches!(replay, 201 | 409), "a held key replays its stored answer, got {replay}");
    assert_eq!(other, 409, "maude's own key runs her request");
    assert_eq!(rented_events(&pool, movie).await, 1);
    println!("idempotency cap: 9,990 held + 2,000 new keys → {by_status:?}; {live} rows stored");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn keys_that_are_not_1_to_255_visible_ascii_characters_are_refused_with_422(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let admin = app.admin().await;
    let long = "k".repeat(256);
    let cases: [(&str, &[u8]); 4] = [
        ("256 characters", long.as_bytes()),
        ("not ASCII", "clé-1".as_bytes()),
        ("a space", b"two words"),
        ("empty", b""),
    ];
    let before = event_count(&pool).await;

    // Act + Assert
    for (case, key) in cases {
        let body = json!({"name": format!("Category {case}")});
        let response = keyed(&app, Method::POST, "/api/v1/categories", Some(&admin), Some(body), key).await;
        assert_invalid(response, &["Idempotency-Key"], case).await;
    }
    assert_eq!(event_count(&pool).await, before, "nothing was run");
    let longest = "k".repeat(255);
    let accepted = keyed(
        &app,
        Method::POST,
        "/api/v1/categories",
        Some(&admin),
        Some(json!({"name": "Drama"})),
        longest.as_bytes(),
    )
    .await;
    expect_status(accepted, StatusCode::CREATED).await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_second_call_while_the_first_is_running_gets_409_in_progress_then_the_first_answer(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    let url = app.url(&path);
    // Appends wait for this lock: the first call stops inside its append transaction.
    let mut lock = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table events in exclusive mode").execute(&mut *lock).await.unwrap();
    let (client, token) = (app.client.clone(), customer.clone());
    let first = tokio::spawn(async move {
        let response =
            client.post(url).bearer_auth(token).header("idempotency-key", "hold-1").send().await.unwrap();
        answer(response).await
    });
    wait_until_an_append_waits(&pool).await;

    // Act
    let during = keyed(&app, Method::POST, &path, Some(&customer), None, b"hold-1").await;
    let retry_after = during.headers().get("retry-after").cloned();
    let during = assert_problem(during, 409, "idempotency-in-progress").await;
    lock.rollback().await.unwrap();
    let first = first.await.unwrap();
    let after = answer(keyed(&app, Method::POST, &path, Some(&customer), None, b"hold-1").await).await;

    // Assert
    assert!(retry_after.is_some(), "409 in-progress says when to retry: {during}");
    assert_eq!(first.0, StatusCode::CREATED, "the first call finishes once the lock is gone: {}", first.3);
    assert_eq!((after.0, after.1, after.3), (first.0, first.1, first.3), "then its answer is replayed");
    assert_eq!(rented_events(&pool, movie).await, 1);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn sixteen_identical_concurrent_calls_append_one_event_and_answer_one_201_and_fifteen_409(
    pool: PgPool,
) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool.clone()).await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    let before = event_count(&pool).await;
    // Appends wait for this lock: whichever call claims the key first stops inside its append
    // transaction, so it cannot finish while the others arrive, and all 16 are in flight together.
    let mut lock = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table events in exclusive mode").execute(&mut *lock).await.unwrap();

    // Act
    let mut calls: futures::stream::FuturesUnordered<_> = (0..16)
        .map(|_| async {
            let response = keyed(&app, Method::POST, &path, Some(&customer), None, b"burst-1").await;
            answer(response).await
        })
        .collect();
    let mut answers = Vec::new();
    while answers.len() < 15 {
        let next = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut calls));
        answers.push(next.await.expect("15 calls answered while the first is held").expect("an answer"));
    }
    wait_until_an_append_waits(&pool).await;
    lock.rollback().await.unwrap();
    answers.push(futures::StreamExt::next(&mut calls).await.expect("the first call's answer"));
    let replayed = answer(keyed(&app, Method::POST, &path, Some(&customer), None, b"burst-1").await).await;

    // Assert: the 15 answered while the first was held are all 409; the first is the only 201.
    assert_eq!(event_count(&pool).await, before + 1, "one MovieRented");
    let (first, held) = answers.split_last().unwrap();
    for (status, _, _, body) in held {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("/idempotency-in-progress"), "{body}");
    }
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.3);
    assert!(!first.2, "the first answer is not a replay");
    let created = answers.iter().filter(|a| a.0 == StatusCode::CREATED).count();
    assert_eq!((created, answers.len() - created), (1, 15));
    // Once it finished, the key replays that answer, byte for byte.
    assert_eq!((replayed.0, &replayed.1, &replayed.3), (first.0, &first.1, &first.3));
    assert!(replayed.2, "marked as replayed");
    assert_eq!(event_count(&pool).await, before + 1, "the replay appended nothing");
    println!(
        "16 concurrent calls with one key, all in flight together: {created} x 201, {} x 409 in progress, \
         1 event; the 17th call after it finished: the 201 replayed",
        answers.len() - created
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after_and_is_served_again_after_the_wait(
    pool: PgPool,
) {
    // Arrange
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_RATE_LIMIT_PER_SEC".into(), "2".into()),
            ("MOVIESTORE_RATE_LIMIT_BURST".into(), "3".into()),
        ],
    };
    let app = TestApp::spawn_with(pool, options).await;

    // Act
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = app.get("/api/v1/me", None).await;
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(response);
        }
    }
    let probes: Vec<u16> = {
        let mut probes = Vec::new();
        for _ in 0..5 {
            probes.push(app.get("/health", None).await.status().as_u16());
        }
        probes
    };

    // Assert
    assert_eq!(&statuses[..3], [401, 401, 401], "the burst is served: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 5, "then limited: {statuses:?}");
    assert_eq!(probes, [200; 5], "health probes are never limited");
    let limited = limited.expect("a 429");
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "at 2 per second a token is back within a second: {retry_after}");
    assert_problem(limited, 429, "rate-limited").await;
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    assert_eq!(app.get("/api/v1/me", None).await.status(), StatusCode::UNAUTHORIZED, "served again");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_request_over_the_concurrency_cap_gets_503_with_retry_after(pool: PgPool) {
    // Arrange
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_MAX_CONCURRENT_REQUESTS".into(), "1".into()),
            ("MOVIESTORE_PROJECTORS".into(), "off".into()),
        ],
    };
    let app = TestApp::spawn_with(pool.clone(), options).await;
    let (_, customer) = app.customer("greg").await;
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let mut lock = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table events in exclusive mode").execute(&mut *lock).await.unwrap();
    let (client, url, token) =
        (app.client.clone(), app.url(&format!("/api/v1/movies/{movie}/rent")), customer.clone());
    let slow =
        tokio::spawn(async move { client.post(url).bearer_auth(token).send().await.unwrap().status() });
    wait_until_an_append_waits(&pool).await;

    // Act
    let over = app.get("/api/v1/categories", Some(&customer)).await;
    let probe = app.get("/health", None).await.status();
    let retry_after = over.headers().get("retry-after").cloned();
    assert_problem(over, 503, "overloaded").await;
    lock.rollback().await.unwrap();
    let slow = slow.await.unwrap();
    let after = app.get("/api/v1/categories", Some(&customer)).await.status();

    // Assert
    assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(probe, StatusCode::OK, "health is not capped");
    assert_eq!(slow, StatusCode::CREATED, "the request holding the only slot finishes");
    assert_eq!(after, StatusCode::OK, "and the slot is free again");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn json_logs_give_one_line_per_request_with_its_fields_and_never_a_token_or_password(pool: PgPool) {
    // Arrange
    let path = std::env::temp_dir().join(format!("moviestore-log-{}.jsonl", Uuid::now_v7()));
    let file = std::fs::File::create(&path).unwrap();
    let options = Options {
        extra_env: vec![("MOVIESTORE_LOG_FORMAT".into(), "json".into()), ("RUST_LOG".into(), "debug".into())],
    };
    let app = TestApp::spawn_with_stderr(pool, options, file).await;
    let password = "correct-horse-battery-9";
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;

    // Act
    let registered = app
        .post(
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "walter", "email": "walter@example.com", "password": password})),
        )
        .await;
    let registered = expect_status(registered, StatusCode::CREATED).await;
    let customer_id = uuid(&registered["user"]["id"]);
    let token = app.login("walter", password).await;
    let rent = app
        .client
        .post(app.url(&format!("/api/v1/movies/{movie}/rent")))
        .bearer_auth(&token)
        .header("x-request-id", "log-test-rent-1")
        .send()
        .await
        .unwrap();
    expect_status(rent, StatusCode::CREATED).await;
    let admin = app.admin().await;
    let status = app.shutdown().await;

    // Assert
    assert!(status.success());
    let log = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"))
        })
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request finished").collect();
    for line in &requests {
        for field in ["request_id", "route", "method", "status", "latency_ms"] {
            assert!(!line[field].is_null(), "{field} in {line}");
        }
    }
    let rent_line = requests
        .iter()
        .find(|l| l["request_id"] == "log-test-rent-1")
        .unwrap_or_else(|| panic!("the rent's line: {requests:?}"));
    assert_eq!(rent_line["route"], "/api/v1/movies/{id}/rent");
    assert_eq!(rent_line["method"], "POST");
    assert_eq!(rent_line["status"], 201);
    assert_eq!(rent_line["actor"], customer_id.to_string());
    assert!(rent_line["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    let register_line =
        requests.iter().find(|l| l["route"] == "/api/v1/auth/register").expect("register line");
    assert_eq!(register_line["status"], 201);
    assert!(register_line["actor"].is_null(), "anonymous");
    assert!(requests.iter().any(|l| l["route"] == "/api/v1/auth/login" && l["status"] == 200));
    let registered_token = registered["token"].as_str().unwrap();
    for secret in [password, ADMIN_PASSWORD, token.as_str(), registered_token, admin.as_str()] {
        assert!(!log.contains(secret), "a secret is in the log: {secret}");
    }
    println!("{} log lines, {} request lines, no secret", lines.len(), requests.len());
}

/// Retries a keyed call on `app` until it stops answering 409 `idempotency-in-progress` (the dead
/// process's lease has run out); returns the in-progress answers seen and the final answer.
async fn retry_until_the_lease_ends(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &[u8],
) -> (usize, (StatusCode, Option<String>, bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut in_progress = 0;
    loop {
        let answered = answer(keyed(app, Method::POST, path, Some(token), None, key).await).await;
        if !(answered.0 == StatusCode::CONFLICT && answered.3.contains("/idempotency-in-progress")) {
            return (in_progress, answered);
        }
        in_progress += 1;
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_key_whose_command_appended_is_never_run_again_even_when_the_process_died_before_answering(
    pool: PgPool,
) {
    // Arrange: storing the answer takes a while and then fails, and the process is killed meanwhile,
    // after its append transaction (events and idempotency mark) has committed.
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_PROJECTORS".into(), "off".into()),
            ("MOVIESTORE_REQUEST_TIMEOUT_SECS".into(), "3".into()),
        ],
    };
    let first = TestApp::process_with(pool.clone(), options.clone()).await;
    let (_, customer) = first.customer("greg").await;
    let drama = first.category("Drama").await;
    let movie = first.movie("Heat", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    sqlx::raw_sql(
        "create function answer_never_stored() returns trigger language plpgsql as $$
         begin
           if new.status is not null then
             perform pg_sleep(1.5);
             raise exception 'the answer is never stored';
           end if;
           return new;
         end $$;
         create trigger answer_never_stored before update on idempotency
            for each row execute function answer_never_stored();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (client, url, token) = (first.client.clone(), first.url(&path), customer.clone());
    let call = tokio::spawn(async move {
        let _ = client.post(url).bearer_auth(token).header("idempotency-key", "crash-1").send().await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let storing: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event = 'PgSleep'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if storing > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the answer was never being stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
    let _ = call.await;
    let position: i64 = sqlx::query_scalar("select position from events where event_type = 'MovieRented'")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::raw_sql("drop trigger answer_never_stored on idempotency").execute(&pool).await.unwrap();
    let second = TestApp::process_with(pool.clone(), options).await;

    // Act
    let (in_progress, after) = retry_until_the_lease_ends(&second, &path, &customer, b"crash-1").await;

    // Assert
    assert!(in_progress > 0, "while the dead process's lease runs, the key is in progress");
    assert_eq!(after.0, StatusCode::CONFLICT, "{}", after.3);
    assert!(after.3.contains("/idempotency-answer-lost"), "{}", after.3);
    assert_eq!(after.1, Some(position.to_string()), "it names the position the command appended");
    assert_eq!(rented_events(&pool, movie).await, 1, "the rent was not run a second time");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_claim_left_by_a_process_that_died_before_appending_is_run_once_its_lease_runs_out(pool: PgPool) {
    // Arrange: the first call waits inside its append when its process is killed.
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_PROJECTORS".into(), "off".into()),
            ("MOVIESTORE_REQUEST_TIMEOUT_SECS".into(), "1".into()),
        ],
    };
    let first = TestApp::process_with(pool.clone(), options.clone()).await;
    let (_, customer) = first.customer("greg").await;
    let drama = first.category("Drama").await;
    let movie = first.movie("Heat", &[drama]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    let mut lock = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table events in exclusive mode").execute(&mut *lock).await.unwrap();
    let (client, url, token) = (first.client.clone(), first.url(&path), customer.clone());
    let call = tokio::spawn(async move {
        let _ = client.post(url).bearer_auth(token).header("idempotency-key", "orphan-1").send().await;
    });
    wait_until_an_append_waits(&pool).await;
    drop(first);
    let _ = call.await;
    lock.rollback().await.unwrap();
    let second = TestApp::process_with(pool.clone(), options).await;

    // Act
    let (in_progress, after) = retry_until_the_lease_ends(&second, &path, &customer, b"orphan-1").await;
    let replay = answer(keyed(&second, Method::POST, &path, Some(&customer), None, b"orphan-1").await).await;

    // Assert
    assert!(in_progress > 0, "while the dead process's lease runs, the key is in progress");
    assert_eq!(after.0, StatusCode::CREATED, "then the request runs: {}", after.3);
    assert_eq!((replay.0, replay.3), (after.0, after.3), "and is answered from its record");
    assert_eq!(rented_events(&pool, movie).await, 1, "the dead attempt appended nothing");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_reader_of_the_records_cannot_test_a_guessed_body_and_only_the_deployment_secret_replays(
    pool: PgPool,
) {
    // Arrange: a password change under a key; its body holds both passwords.
    let app = TestApp::process(pool.clone()).await;
    let (greg_id, greg) = app.customer("greg").await;
    let body = json!({"current_password": "password-123", "new_password": "a brand new passphrase"});
    let path = "/api/v1/me/password";
    let first = keyed(&app, Method::POST, path, Some(&greg), Some(body.clone()), b"pw-1").await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let sent = serde_json::to_vec(&body).unwrap();

    // Act: the reader's guess, made the way an unkeyed digest would let them (SHA-256 of the very
    // body that was sent); then the same request again on this process, on a restarted process
    // of the same deployment, and on one with another secret.
    let (stored, guess_matches): (Vec<u8>, bool) = sqlx::query_as(
        "select body_hash, body_hash = sha256($2) from idempotency where scope = $1 and key = 'pw-1'",
    )
    .bind(greg_id.to_string())
    .bind(&sent)
    .fetch_one(&pool)
    .await
    .unwrap();
    let again = keyed(&app, Method::POST, path, Some(&greg), Some(body.clone()), b"pw-1").await;
    let replayed = again.headers().get("idempotent-replayed").cloned();
    let again = again.status();
    app.shutdown().await;
    let restarted = TestApp::process(pool.clone()).await;
    let after_restart =
        keyed(&restarted, Method::POST, path, Some(&greg), Some(body.clone()), b"pw-1").await.status();
    restarted.shutdown().await;
    let other_secret = Options {
        extra_env: vec![("MOVIESTORE_SECRET".into(), "another deployment's secret of 32+ characters".into())],
    };
    let foreign = TestApp::process_with(pool.clone(), other_secret).await;
    let with_other_secret = keyed(&foreign, Method::POST, path, Some(&greg), Some(body), b"pw-1").await;
    let with_other_secret_status = with_other_secret.status();

    // Assert
    assert_eq!(stored.len(), 32);
    assert!(!guess_matches, "the stored digest is not the body's plain SHA-256");
    assert_eq!(again, StatusCode::NO_CONTENT);
    assert_eq!(replayed.as_ref().map(|v| v.to_str().unwrap()), Some("true"), "answered from the record");
    assert_eq!(after_restart, StatusCode::NO_CONTENT, "the same deployment's secret replays after a restart");
    assert_problem(with_other_secret, 422, "validation-failed").await;
    assert_eq!(
        with_other_secret_status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another secret cannot match the record"
    );
    println!(
        "keyed idempotency digest: SHA-256 guess of the sent body matches: {guess_matches}; replay {again}, after restart {after_restart}, with another secret {with_other_secret_status}"
    );
}
