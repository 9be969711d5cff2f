//! Hostile input, by hand: deeply nested and oversized JSON, invalid UTF-8, huge query strings,
//! SQL and Lua injection strings in every text field, negative and overflowing numbers, path
//! traversal in ids. Every answer must be a 4xx problem document (or a success that stored the
//! text verbatim), never a 5xx, and the server must stay healthy.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::*;

/// Strings that break naive SQL, Lua, JSON, HTML or path handling.
const NASTY: &[&str] = &[
    "'; drop table events; --",
    "\" or 1=1 --",
    "') or ('a'='a",
    "%' or title like '%",
    "\\'; select pg_sleep(5); --",
    "]] redis.call('flushall') [[",
    "'); redis.call('del', KEYS[1]); return ('",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "%00%2e%2e%2f",
    "\u{0}\u{1}\u{7f}",
    "\u{202e}gnp.exe",
    "😀🎬🍿",
    "${jndi:ldap://x}",
    "{{7*7}}",
];

/// Tallies answers: every status seen and whether each answer kept the conventions.
#[derive(Default)]
struct Tally {
    requests: usize,
    by_status: std::collections::BTreeMap<u16, usize>,
    server_errors: Vec<String>,
    not_problems: Vec<String>,
}

impl Tally {
    async fn check(&mut self, what: &str, response: reqwest::Response) -> (u16, Value) {
        self.requests += 1;
        let status = response.status().as_u16();
        *self.by_status.entry(status).or_default() += 1;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.unwrap_or_default();
        if status >= 500 {
            self.server_errors.push(format!("{what}: {status} {text}"));
        }
        if status >= 400 {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if content_type != "application/problem+json" || !problem["type"].is_string() {
                self.not_problems.push(format!("{what}: {status} {content_type} {text}"));
            }
            let leaks = ["sqlx", "SQLSTATE", "syntax error", "panicked", "ERR ", "stack backtrace"];
            if leaks.iter().any(|leak| text.contains(leak)) {
                self.server_errors.push(format!("{what}: leaks internals: {text}"));
            }
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn assert_clean(&self, app_name: &str) {
        assert!(self.server_errors.is_empty(), "{app_name}: {:#?}", self.server_errors);
        assert!(self.not_problems.is_empty(), "{app_name}: {:#?}", self.not_problems);
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn hostile_bodies_query_strings_and_paths_get_problem_documents_and_never_a_5xx(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("victim").await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let mut tally = Tally::default();

    // Deeply nested JSON (a parser that recurses without a limit would overflow its stack).
    for depth in [64usize, 1_000, 20_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for path in ["/api/v1/movies", "/api/v1/categories", "/api/v1/auth/login"] {
            let response =
                app.raw(Method::POST, path, Some(&admin), Some("application/json"), body.clone()).await;
            let (status, _) = tally.check(&format!("nested {depth} at {path}"), response).await;
            assert!(matches!(status, 413 | 422), "nested {depth} at {path}: {status}");
        }
        let object = format!("{}1{}", "{\"a\":".repeat(depth.min(10_000)), "}".repeat(depth.min(10_000)));
        let response =
            app.raw(Method::POST, "/api/v1/movies", Some(&admin), Some("application/json"), object).await;
        tally.check(&format!("nested object {depth}"), response).await;
    }

    // Invalid UTF-8, a byte-order mark, NUL bytes, a huge number, a duplicate key.
    let raw_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"name\": \"\xff\xfe\xfd\"}".to_vec()),
        ("a lone surrogate escape", br#"{"name": "\ud800"}"#.to_vec()),
        ("a byte-order mark", b"\xef\xbb\xbf{\"name\": \"Noir\"}".to_vec()),
        ("a NUL escape", br#"{"name": "No\u0000ir"}"#.to_vec()),
        ("a huge number", format!("{{\"name\": {}}}", "9".repeat(5_000)).into_bytes()),
        ("a duplicate key", br#"{"name": "Noir", "name": "Noir 2"}"#.to_vec()),
        ("trailing garbage", br#"{"name": "Noir"} x"#.to_vec()),
    ];
    for (case, body) in raw_bodies {
        let response = app
            .client
            .post(app.url("/api/v1/categories"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, problem) = tally.check(case, response).await;
        if case == "a NUL escape" {
            // A control character in a name: 422 naming it (PostgreSQL could not store it anyway).
            assert_eq!((status, error_fields(&problem)), (422, vec!["name".to_string()]), "{case}");
        }
    }

    // Injection strings in every text field: refused as invalid or stored verbatim, never run.
    for (i, nasty) in NASTY.iter().enumerate() {
        let name = format!("{nasty} {i}");
        let has_nul = nasty.contains('\0');
        let response = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": name}))).await;
        let (status, body) = tally.check(&format!("category name {nasty:?}"), response).await;
        if has_nul {
            assert_eq!((status, error_fields(&body)), (422, vec!["name".to_string()]), "{nasty:?}");
        }
        if status == 201 {
            assert_eq!(body["name"], name, "stored verbatim");
        }
        let movie_body = json!({
            "title": format!("{nasty} {i}"), "storyline": nasty, "director": nasty,
            "release_date": "1999-01-01", "rating": 5.0, "category_ids": [category],
        });
        let response = app.post("/api/v1/movies", Some(&admin), Some(movie_body)).await;
        let (status, body) = tally.check(&format!("movie fields {nasty:?}"), response).await;
        if has_nul {
            let fields = error_fields(&body);
            assert_eq!((status, fields), (422, vec!["director".into(), "storyline".into(), "title".into()]));
        }
        if status == 201 {
            assert_eq!(body["storyline"], *nasty, "stored verbatim");
            let details = app
                .get(
                    &format!(
                        "/api/v1/movies/{}?min_position={}",
                        body["id"].as_str().unwrap(),
                        body["position"]
                    ),
                    Some(&customer),
                )
                .await;
            let (status, _) = tally.check("details of a nasty movie", details).await;
            assert_eq!(status, 200);
        }
        for query in ["q", "category", "cursor", "available", "limit", "status", "min_position"] {
            let url =
                reqwest::Url::parse_with_params(&app.url("/api/v1/movies"), &[(query, *nasty)]).unwrap();
            let response = app.client.get(url).bearer_auth(&customer).send().await.unwrap();
            let (status, problem) = tally.check(&format!("?{query}={nasty:?}"), response).await;
            if has_nul {
                // Every query parameter with a NUL is refused before anything reads it.
                assert_eq!((status, error_fields(&problem)), (422, vec![query.to_string()]), "?{query}");
            }
        }
        let login = json!({"username": nasty, "password": nasty});
        let response = app.post("/api/v1/auth/login", None, Some(login)).await;
        let (status, _) = tally.check(&format!("login as {nasty:?}"), response).await;
        // No account can have such a name: answered 401 at once, never counted, never 429.
        assert_eq!(status, 401, "login {nasty:?}");
        let register = json!({"username": nasty, "email": nasty, "password": nasty});
        let response = app.post("/api/v1/auth/register", None, Some(register)).await;
        let (status, _) = tally.check(&format!("register as {nasty:?}"), response).await;
        assert_eq!(status, 422, "register {nasty:?}");
    }
    // The log and the tables are intact: the search for a quote found the movie, nothing dropped.
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.pool).await.unwrap();
    assert!(events > NASTY.len() as i64, "events survive: {events}");

    // Negative and overflowing numbers.
    let numbers =
        [json!(-1), json!(-0.0), json!(10.05), json!(1e308), json!(i64::MIN), json!(u64::MAX), json!("NaN")];
    for rating in numbers.iter() {
        let body = json!({"title": "Numbers", "release_date": "1999-01-01", "rating": rating, "category_ids": [category]});
        let response = app.post("/api/v1/movies", Some(&admin), Some(body)).await;
        tally.check(&format!("rating {rating}"), response).await;
    }
    let rental = app.rent(movie, &customer).await;
    app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
    for amount in numbers.iter() {
        let response = app
            .post(
                &format!("/api/v1/rentals/{rental}/pay"),
                Some(&customer),
                Some(json!({"amount_cents": amount})),
            )
            .await;
        let (status, _) = tally.check(&format!("amount {amount}"), response).await;
        assert!(matches!(status, 409 | 422), "amount {amount}: {status}");
    }
    for limit in ["-1", "0", "101", "99999999999999999999", "1e3", "0x10"] {
        let response = app.get(&format!("/api/v1/movies?limit={limit}"), Some(&customer)).await;
        let (status, _) = tally.check(&format!("limit {limit}"), response).await;
        assert_eq!(status, 422, "limit {limit}");
    }
    for position in ["-1", "99999999999999999999", "abc"] {
        let response = app.get(&format!("/api/v1/movies?min_position={position}"), Some(&customer)).await;
        tally.check(&format!("min_position {position}"), response).await;
    }

    // A huge query string and path traversal in ids.
    let huge = "a".repeat(60_000);
    let response = app.get(&format!("/api/v1/movies?q={huge}"), Some(&customer)).await;
    tally.check("a 60 kB query string", response).await;
    let words = vec!["ab"; 5_000].join("%20");
    let response = app.get(&format!("/api/v1/movies?q={words}"), Some(&customer)).await;
    tally.check("5000 search words", response).await;
    for id in
        ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "00000000-0000-0000-0000-000000000000", "1%20or%201=1", "%00"]
    {
        for path in [
            format!("/api/v1/movies/{id}"),
            format!("/api/v1/movies/{id}/rent"),
            format!("/api/v1/rentals/{id}"),
            format!("/api/v1/categories/{id}"),
        ] {
            let method = if path.ends_with("/rent") { Method::POST } else { Method::GET };
            let response = app.request(method.clone(), &path, Some(&customer), None).await;
            let (status, _) = tally.check(&format!("{method} {path}"), response).await;
            assert!((403..=405).contains(&status), "{method} {path}: {status}");
            if id == "%00" {
                // A NUL is no id: 404 like any malformed id (405 where the path has no GET).
                let expected = if path.starts_with("/api/v1/categories/") { 405 } else { 404 };
                assert_eq!(status, expected, "{method} {path}");
            }
        }
    }

    // Assert: no 5xx, every error a problem document, and the server still healthy.
    tally.assert_clean("hostile input");
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    let still = app.get(&format!("/api/v1/movies/{movie}"), Some(&customer)).await;
    assert_eq!(still.status(), StatusCode::OK);
    println!(
        "hostile input: {} requests, answers by status {:?}, 0 server errors, every error problem+json",
        tally.requests, tally.by_status
    );
    // The same input gets the same answers every run (RELIABILITY.md states these figures).
    let expected = [(200, 56), (201, 30), (401, 15), (404, 16), (405, 4), (422, 122)];
    assert_eq!(tally.by_status, expected.into_iter().collect(), "answers by status");
    assert_eq!(tally.requests, 243);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_request_that_runs_out_of_time_answers_503_problem_json_with_retry_after(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = Options { extra_env: vec![("MOVIESTORE_REQUEST_TIMEOUT_SECS".into(), "1".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let host = app.address.trim_start_matches("http://").to_string();
    // A body announced as 100 bytes of which one arrives: the request cannot finish in time.
    let mut socket = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("content-type: application/problem+json"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("/timeout\""), "the slug says why: {answer}");
    assert!(elapsed >= std::time::Duration::from_millis(900), "after the timeout, not before: {elapsed:?}");
    println!("slow body: 503 problem+json with Retry-After after {elapsed:?}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_flood_of_readiness_probes_and_scrapes_shares_one_reading_and_starves_no_one(pool: PgPool) {
    // Arrange: a customer to read the catalogue, and a stale reading (older than a second). The
    // pool has 16 connections: the projectors and the email sender wait on the locked table too.
    let options = Options { extra_env: vec![("MOVIESTORE_DB_MAX_CONNECTIONS".into(), "16".into())] };
    let app = TestApp::process_with(pool.clone(), options).await;
    let (_, token) = app.customer("reader").await;
    assert_eq!(app.get("/ready", None).await.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Hold the table the progress query reads, so every reading in flight stays visible in
    // PostgreSQL as a backend waiting for that lock.
    let mut holder = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("lock table projection_checkpoint in access exclusive mode")
        .execute(&mut *holder)
        .await
        .unwrap();

    // Act: 300 probes and 100 scrapes at once, more than the pool's 16 connections.
    let flood: Vec<_> = (0..400)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(if i % 4 == 3 { "/metrics" } else { "/ready" });
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'
                and query like '%from projection_checkpoint order by name%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let started = std::time::Instant::now();
    while waiting().await == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "no reading started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let readings_in_flight = waiting().await;
    // Meanwhile another client's reads answer: the flood holds one connection, not the pool.
    let read_started = std::time::Instant::now();
    let mut reads = Vec::new();
    for _ in 0..20 {
        reads.push(app.get("/api/v1/movies?available=any", Some(&token)).await.status().as_u16());
    }
    let read_time = read_started.elapsed();
    holder.commit().await.unwrap();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for probe in flood {
        *by_status.entry(probe.await.unwrap().unwrap()).or_default() += 1;
    }

    // Assert
    assert_eq!(readings_in_flight, 1, "400 callers, one reading of projection progress");
    assert_eq!(reads, vec![200; 20], "the catalogue answers during the flood");
    assert!(read_time < std::time::Duration::from_secs(3), "20 reads took {read_time:?}");
    assert_eq!(by_status, std::collections::BTreeMap::from([(200, 400)]), "every probe answered 200");
    println!(
        "/ready + /metrics flood: 400 callers, {readings_in_flight} reading in PostgreSQL, 20 reads 200 in {read_time:?}"
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_extremes_every_command_accepts_flow_through_every_read_model_rebuild_and_verify(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (customer_id, customer) = app.customer("greg").await;
    let long = |unit: &str, n: usize| unit.repeat(n);

    // Act: every field at the edges of what the contract accepts.
    let mut categories = Vec::new();
    for name in
        [long("🎬", 100), long("a", 1), "'; drop table read.movie; --".into(), long("Ω", 99), "x".into()]
    {
        let created = app.post("/api/v1/categories", Some(&admin), Some(json!({ "name": name }))).await;
        categories.push(uuid(&expect_status(created, StatusCode::CREATED).await["id"]));
    }
    let renamed = app
        .patch(
            &format!("/api/v1/categories/{}", categories[4]),
            Some(&admin),
            json!({"name": long("𝔸", 100)}),
        )
        .await;
    expect_status(renamed, StatusCode::OK).await;
    let extremes = [
        json!({"title": long("𝔸", 200), "storyline": long("ß", 2000), "release_date": "1870-01-01", "rating": 0,
               "director": long("é", 200), "category_ids": categories}),
        json!({"title": "x", "storyline": "", "release_date": "2100-12-31", "rating": 10, "category_ids": [categories[0]]}),
        json!({"title": "Leap", "release_date": "2000-02-29", "rating": 9.9, "director": null, "category_ids": [categories[1]]}),
    ];
    let mut movies = Vec::new();
    for body in extremes {
        let added = app.post("/api/v1/movies", Some(&admin), Some(body.clone())).await;
        movies.push(uuid(&expect_status(added, StatusCode::CREATED).await["id"]));
    }
    let patched = app
        .patch(
            &format!("/api/v1/movies/{}", movies[1]),
            Some(&admin),
            json!({"release_date": "1870-01-01", "rating": 0.1, "storyline": long("😀", 2000), "director": ""}),
        )
        .await;
    expect_status(patched, StatusCode::OK).await;
    // The oldest time RFC 3339 can write, and now; a rental of the first day of year 1 is
    // overdue at once and charged for about 739,000 days.
    let rent = |movie: uuid::Uuid, at: &str| {
        let body = json!({"customer_id": customer_id, "rented_at": at});
        let path = format!("/api/v1/movies/{movie}/rent");
        let app = &app;
        let admin = &admin;
        async move {
            uuid(
                &expect_status(app.post(&path, Some(admin), Some(body)).await, StatusCode::CREATED).await
                    ["rental_id"],
            )
        }
    };
    let ancient = rent(movies[0], "0001-01-01T00:00:00Z").await;
    let recent = app.rent(movies[1], &customer).await;
    for rental in [ancient, recent] {
        let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
        expect_status(returned, StatusCode::OK).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let charge = loop {
        // The rentals read model is eventual: a 404 until it has applied the rent.
        let response = app.get(&format!("/api/v1/rentals/{ancient}"), Some(&customer)).await;
        let rental = if response.status() == StatusCode::NOT_FOUND {
            Value::Null
        } else {
            expect_status(response, StatusCode::OK).await
        };
        if rental["charge"].is_object() {
            break rental["charge"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the ancient rental was never charged: {rental}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let paid = app
        .post(
            &format!("/api/v1/rentals/{ancient}/pay"),
            Some(&customer),
            Some(json!({"amount_cents": charge["amount_cents"]})),
        )
        .await;
    expect_status(paid, StatusCode::OK).await;
    let retired = app.delete(&format!("/api/v1/movies/{}", movies[2]), Some(&admin)).await;
    assert_eq!(retired.status(), StatusCode::NO_CONTENT);

    // Assert: every projection applied all of it, and a replay of the log equals the live tables.
    let projections =
        crate::read_side::wait_for_projections(&app, &app.address, std::time::Duration::from_secs(30)).await;
    assert!(charge["days"].as_i64().unwrap() > 739_000, "{charge}");
    for path in [
        "/api/v1/movies?available=any",
        "/api/v1/categories",
        "/api/v1/rentals",
        "/api/v1/analytics/revenue?group_by=day",
    ] {
        let token = if path.contains("analytics") { &admin } else { &customer };
        expect_status(app.get(path, Some(token)).await, StatusCode::OK).await;
    }
    let (verified, out, err) = run_cli(&app.database_url, &["verify"], "").await;
    assert!(verified, "verify: {out}{err}");
    let (rebuilt, out, err) = run_cli(&app.database_url, &["rebuild"], "").await;
    assert!(rebuilt, "rebuild: {out}{err}");
    let (verified, out, err) = run_cli(&app.database_url, &["verify"], "").await;
    assert!(verified, "verify after rebuild: {out}{err}");
    println!(
        "extremes: 5 categories, 3 movies, 2 rentals (one from year 1, {} days, {} cents): {} projections caught up, verify, rebuild and verify pass",
        charge["days"], charge["amount_cents"], projections.len()
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn dates_other_than_exactly_yyyy_mm_dd_in_range_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let category = app.category("Drama").await;
    let bad = [
        "-5000-01-01",
        " 1999-1-1",
        "1999-1-1",
        "+1999-01-01",
        "19999-01-01",
        "1869-12-31",
        "2101-01-01",
        "1999-02-30",
    ];
    for date in bad {
        let body = json!({"title": "Heat", "release_date": date, "rating": 8, "category_ids": [category]});
        let response = app.post("/api/v1/movies", Some(&admin), Some(body)).await;
        assert_invalid(response, &["release_date"], date).await;
        let response = app
            .get(
                &format!(
                    "/api/v1/analytics/top-movies?from={}",
                    date.replace('+', "%2B").replace(' ', "%20")
                ),
                Some(&admin),
            )
            .await;
        if date.starts_with(['1', '2']) && date.len() == 10 && !date.ends_with("02-30") {
            // In range for a query, where only the format is checked.
            expect_status(response, StatusCode::OK).await;
        } else {
            assert_invalid(response, &["from"], date).await;
        }
    }
    let events: i64 = sqlx::query_scalar("select count(*) from events where event_type = 'MovieAdded'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    println!("strict dates: {} malformed or out-of-range release dates → 422 each, no event", bad.len());
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_flood_of_logins_waits_a_bounded_time_for_hashing_and_other_clients_keep_reading(pool: PgPool) {
    // Arrange: costly hashes (19 MiB, 8 passes), one at a time, so the flood outruns them. It
    // loads both cores for seconds, so it runs alone.
    let _alone = alone();
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_ARGON2_MEMORY_KIB".into(), "19456".into()),
            ("MOVIESTORE_ARGON2_ITERATIONS".into(), "8".into()),
            ("MOVIESTORE_HASH_CONCURRENCY".into(), "1".into()),
        ],
    };
    let app = TestApp::spawn_with(pool, options).await;
    let (_, reader) = app.customer("reader").await;
    let login = |username: String| {
        let (client, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = client
                .post(url)
                .json(&json!({"username": username, "password": "wrong-password"}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            (response.status().as_u16(), retry_after, started.elapsed())
        })
    };

    // Act: 1,000 logins with malformed names at once (no account can have them), then 1,000
    // with random well-formed names at once while another client reads the catalogue (1,000
    // requests in flight stay within the 1,024 request slots).
    let malformed_started = std::time::Instant::now();
    let malformed: Vec<_> = (0..1000).map(|i| login(format!("bad name {i} \u{0}"))).collect();
    let mut malformed_statuses = std::collections::BTreeMap::<u16, usize>::new();
    for task in malformed {
        let (status, _, _) = task.await.unwrap();
        *malformed_statuses.entry(status).or_default() += 1;
    }
    let malformed_took = malformed_started.elapsed();
    let started = std::time::Instant::now();
    let well_formed: Vec<_> =
        (0..1000).map(|i| login(format!("spray{i}x{}", uuid::Uuid::now_v7().simple()))).collect();
    let mut reads = Vec::new();
    for _ in 0..20 {
        let read_started = std::time::Instant::now();
        let status = app.get("/api/v1/movies?available=any", Some(&reader)).await.status().as_u16();
        reads.push((status, read_started.elapsed()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut slowest = std::time::Duration::ZERO;
    let mut unavailable_without_hint = 0;
    for task in well_formed {
        let (status, retry_after, took) = task.await.unwrap();
        *by_status.entry(status).or_default() += 1;
        slowest = slowest.max(took);
        unavailable_without_hint += usize::from(status == 503 && !retry_after);
    }
    let flood_took = started.elapsed();

    // Assert
    assert!(reads.iter().all(|(status, _)| *status == 200), "reads during the flood: {reads:?}");
    let slowest_read = reads.iter().map(|(_, took)| *took).max().unwrap();
    assert!(by_status.keys().all(|s| *s == 401 || *s == 503), "{by_status:?}");
    assert!(
        by_status.get(&503).is_some_and(|n| *n > 0),
        "the wait was bounded: {by_status:?}, slowest {slowest:?}, flood {flood_took:?}"
    );
    assert!(by_status.get(&401).is_some_and(|n| *n > 0), "hashing went on: {by_status:?}");
    assert_eq!(unavailable_without_hint, 0, "every 503 says when to retry");
    assert_eq!(malformed_statuses, std::collections::BTreeMap::from([(401, 1000)]));
    assert!(
        slowest < std::time::Duration::from_secs(10),
        "a login outlived the request timeout: {slowest:?}"
    );
    println!(
        "login flood: 1,000 random names → {by_status:?} (slowest {slowest:?}), 1,000 malformed → 401 without hashing in {malformed_took:?}; 20 reads 200, slowest {slowest_read:?}; flood over in {flood_took:?}"
    );
}

/// What became of one slow connection: when the server closed it, and the answer it got if any.
struct SlowOutcome {
    closed_after: Option<std::time::Duration>,
    answer: String,
}

/// Opens a connection to `host`, sends `head` at once, then one byte of `trickle` a second until
/// the server closes the connection (or `give_up` passes); returns when and what it answered.
async fn trickle(
    host: String,
    head: String,
    trickle: &'static [u8],
    give_up: std::time::Duration,
) -> SlowOutcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opened = std::time::Instant::now();
    let socket = tokio::net::TcpStream::connect(&host).await.expect("connect");
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        for byte in trickle.iter().cycle() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed_after = loop {
        match tokio::time::timeout_at((opened + give_up).into(), read.read(&mut buffer)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(opened.elapsed()),
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
        }
    };
    writer.abort();
    SlowOutcome { closed_after, answer: String::from_utf8_lossy(&answer).into_owned() }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_thousand_slow_connections_hold_no_request_slot_and_are_closed_by_the_server(pool: PgPool) {
    // Arrange: 256 request slots, so that 500 slow bodies holding one each would leave none.
    // The test holds 1,000 sockets open for 15 s and times another client, so it runs alone.
    let _alone = alone();
    let options = Options { extra_env: vec![("MOVIESTORE_MAX_CONCURRENT_REQUESTS".into(), "256".into())] };
    let app = TestApp::spawn_with(pool, options).await;
    let (_, reader) = app.customer("reader").await;
    let host = app.address.trim_start_matches("http://").to_string();
    let read = || async {
        let started = std::time::Instant::now();
        let status = app.get("/api/v1/movies", Some(&reader)).await.status().as_u16();
        (status, started.elapsed())
    };
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(read().await);
    }
    let give_up = std::time::Duration::from_secs(30);

    // Act: 500 connections that trickle their request head and 500 that send a whole head
    // announcing a 1,000-byte login body, then trickle it; a byte a second each. Meanwhile the
    // reader goes on reading.
    let mut slow = Vec::new();
    for i in 0..1000 {
        let (head, bytes): (String, &'static [u8]) = if i % 2 == 0 {
            (format!("GET /api/v1/movies HTTP/1.1\r\nhost: {host}\r\n"), b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaa")
        } else {
            (
                format!(
                    "POST /api/v1/auth/login HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
                ),
                b"{\"username\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            )
        };
        slow.push(tokio::spawn(trickle(host.clone(), head, bytes, give_up)));
        if i % 100 == 99 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut during = Vec::new();
    for _ in 0..40 {
        during.push(read().await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut outcomes = Vec::new();
    for task in slow {
        outcomes.push(task.await.unwrap());
    }

    // Assert: the reader was never refused; every slow connection was closed by the server
    // within 15 s, the slow bodies with a 503 once the request timeout (10 s) ran out.
    let refused: Vec<_> = during.iter().filter(|(status, _)| *status != 200).collect();
    assert!(refused.is_empty(), "the other client's reads during the slow connections: {refused:?}");
    let slowest_read = during.iter().map(|(_, took)| *took).max().unwrap();
    assert!(slowest_read < std::time::Duration::from_secs(2), "a read waited {slowest_read:?}");
    let limit = std::time::Duration::from_secs(15);
    type Numbered<'a> = Vec<(usize, &'a SlowOutcome)>;
    let (heads, bodies): (Numbered, Numbered) = outcomes.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let not_closed = |set: &[(usize, &SlowOutcome)]| {
        set.iter().filter(|(_, o)| o.closed_after.is_none_or(|after| after > limit)).count()
    };
    assert_eq!(not_closed(&heads), 0, "slow heads the server left open past 15 s");
    assert_eq!(not_closed(&bodies), 0, "slow bodies the server left open past 15 s");
    let heads_answered = heads.iter().filter(|(_, o)| !o.answer.is_empty()).count();
    assert_eq!(heads_answered, 0, "a head that never ended gets no answer, only a close");
    let bodies_503 = bodies.iter().filter(|(_, o)| o.answer.starts_with("HTTP/1.1 503")).count();
    assert_eq!(bodies_503, 500, "every slow body is answered 503 when its time runs out");
    let earliest_head = heads.iter().filter_map(|(_, o)| o.closed_after).min().unwrap();
    assert!(
        earliest_head >= std::time::Duration::from_secs(9),
        "a slow head was closed early: {earliest_head:?}"
    );
    let latest = outcomes.iter().filter_map(|o| o.closed_after).max().unwrap();
    let median = |mut v: Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "1,000 slow connections (500 heads, 500 bodies, a byte a second): all closed by the server, the last after {latest:?}; \
         500 bodies answered 503; reads by another client: 40 × 200 during (median {:?}, slowest {slowest_read:?}) vs median {:?} before",
        median(during.iter().map(|(_, t)| *t).collect()),
        median(before.iter().map(|(_, t)| *t).collect()),
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_idle_keep_alive_connection_outlives_the_head_limit_and_is_closed_after_60_s(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Arrange
    let app = TestApp::spawn(pool).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&host).await.unwrap();
    let request = format!("GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n");

    // Act: one request, then silence; a second request after 20 s (past the 10 s head limit)
    // on the same connection, then silence again until the server closes it.
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 4096];
    let first = socket.read(&mut buffer).await.unwrap();
    let first = String::from_utf8_lossy(&buffer[..first]).into_owned();
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    socket.write_all(request.as_bytes()).await.unwrap();
    let second = socket.read(&mut buffer).await.unwrap();
    let second = String::from_utf8_lossy(&buffer[..second]).into_owned();
    let idle_from = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(75), socket.read(&mut buffer)).await;
    let idle_for = idle_from.elapsed();

    // Assert
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200"), "an idle connection is kept past 20 s: {second}");
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the server closed the idle connection: {closed:?}");
    assert!(
        idle_for >= std::time::Duration::from_secs(59) && idle_for <= std::time::Duration::from_secs(62),
        "closed after {idle_for:?} idle, not 60 s"
    );
    println!("idle keep-alive connection: reused after 20 s, closed by the server after {idle_for:?} idle");
}
