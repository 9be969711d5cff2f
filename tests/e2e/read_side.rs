//! The read side over HTTP: the catalogue, rentals and the account as clients read them,
//! read-your-writes (`min_position`), the price table as charged by the payments process manager,
//! and paging. Helpers shared with `resilience.rs` are `pub(crate)`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, SecondsFormat, SubsecRound, Utc};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

/// The global `position` a command answered.
pub(crate) fn position_of(body: &Value) -> i64 {
    body["position"].as_i64().unwrap_or_else(|| panic!("expected a position in {body}"))
}

/// The `x-cache` header (`hit` or `miss`), empty when absent.
pub(crate) fn cache_header(response: &Response) -> String {
    response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Adds a movie with its own director; returns (id, position).
pub(crate) async fn add_movie(
    app: &TestApp,
    title: &str,
    director: &str,
    categories: &[Uuid],
) -> (Uuid, i64) {
    let admin = app.admin().await;
    let body = json!({
        "title": title,
        "storyline": format!("The story of {title}."),
        "release_date": "1998-01-18",
        "rating": 7.5,
        "director": director,
        "category_ids": categories,
    });
    let created =
        expect_status(app.post("/api/v1/movies", Some(&admin), Some(body)).await, StatusCode::CREATED).await;
    (uuid(&created["id"]), position_of(&created))
}

/// Sends a request to the server at `base` (any process of the binary), with the app's client.
pub(crate) async fn send(
    app: &TestApp,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut request = app.client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request sent")
}

/// Polls `GET /api/v1/rentals/{id}` (at `base`) until the rental has `status`, for at most
/// `within`; returns the rental. A 404 (the rentals read model has not seen it yet) is retried.
pub(crate) async fn wait_for_rental_status(
    app: &TestApp,
    base: &str,
    token: &str,
    rental: Uuid,
    status: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let response =
            send(app, base, Method::GET, &format!("/api/v1/rentals/{rental}"), Some(token), None).await;
        let last = if response.status() == StatusCode::NOT_FOUND {
            Value::Null
        } else {
            let body = expect_status(response, StatusCode::OK).await;
            if body["status"] == status {
                return body;
            }
            body
        };
        assert!(
            Instant::now() < deadline,
            "rental {rental} did not become {status} within {within:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /api/v1/admin/projections` (at `base`) until every projection has no lag and none
/// is failing, for at most `within`; returns the items. The email sender listed with them is no
/// projection (its lag is emails waiting, which a killed process leaves leased for 30 s), so it
/// is not waited for.
pub(crate) async fn wait_for_projections(app: &TestApp, base: &str, within: Duration) -> Vec<Value> {
    let admin = app.admin().await;
    let deadline = Instant::now() + within;
    loop {
        let response = send(app, base, Method::GET, "/api/v1/admin/projections", Some(&admin), None).await;
        let body = expect_status(response, StatusCode::OK).await;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let caught_up = !items.is_empty()
            && items
                .iter()
                .filter(|p| p["name"] != "notification-sender")
                .all(|p| p["lag_events"] == 0 && p["state"] != "failing" && p["last_error"].is_null());
        if caught_up {
            return items;
        }
        assert!(Instant::now() < deadline, "projections still lag after {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A position held by a transaction that stays open (it has a transaction id and took a position,
/// as an append does) until the returned transaction is dropped: no read model can reach it
/// meanwhile. It holds the cluster's projection horizon too, so keep it short.
pub(crate) async fn pending_position(pool: &PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, i64) {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *tx).await.unwrap();
    let position: i64 = sqlx::query_scalar("select nextval(pg_get_serial_sequence('events', 'position'))")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (tx, position)
}

/// The last position of the log.
pub(crate) async fn last_position(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select coalesce(max(position), 0)::int8 from events").fetch_one(pool).await.unwrap()
}

/// One page of a list: (ids, next_cursor).
async fn page_of(app: &TestApp, path: &str, token: &str) -> (Vec<Uuid>, Option<String>) {
    let body = expect_status(app.get(path, Some(token)).await, StatusCode::OK).await;
    let ids =
        body["items"].as_array().unwrap_or_else(|| panic!("items in {body}")).iter().map(|i| uuid(&i["id"]));
    (ids.collect(), body["next_cursor"].as_str().map(str::to_string))
}

/// The ids of a one-page list.
async fn ids_of(app: &TestApp, path: &str, token: &str) -> Vec<Uuid> {
    let (ids, next) = page_of(app, path, token).await;
    assert!(next.is_none(), "{path}: expected a single page");
    ids
}

fn set(ids: &[Uuid]) -> HashSet<Uuid> {
    ids.iter().copied().collect()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_customer_finds_rents_returns_and_pays_and_every_read_shows_it(pool: PgPool) {
    // Arrange: the admin fills the catalogue.
    let app = TestApp::spawn(pool).await;
    let (greg, token) = app.customer("greg").await;
    let comedy = app.category("Comedy").await;
    let crime = app.category("Crime").await;
    let drama = app.category("Drama").await;
    let titles: [(&str, &str, Vec<Uuid>); 7] = [
        ("The Big Lebowski", "Joel Coen", vec![comedy, crime]),
        ("Fargo", "Joel Coen", vec![crime, drama]),
        ("Barton Fink", "Joel Coen", vec![drama]),
        ("The Lebowski Files", "Jeff Dowd", vec![comedy]),
        ("Heat", "Michael Mann", vec![crime]),
        ("Airplane!", "Jim Abrahams", vec![comedy]),
        ("Inception", "Christopher Nolan", vec![drama]),
    ];
    let mut movies = Vec::new();
    let mut created_at = 0;
    for (title, director, categories) in &titles {
        let (id, position) = add_movie(&app, title, director, categories).await;
        movies.push(id);
        created_at = position;
    }
    let lebowski = movies[0];
    let all = set(&movies);

    // Act / Assert: categories and listings, read after the last creation.
    let categories = expect_status(
        app.get(&format!("/api/v1/categories?min_position={created_at}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let listed: Vec<(String, i64)> = categories["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["movie_count"].as_i64().unwrap()))
        .collect();
    assert_eq!(listed, [("Comedy".into(), 3), ("Crime".into(), 3), ("Drama".into(), 3)]);
    let everything = ids_of(&app, &format!("/api/v1/movies?min_position={created_at}"), &token).await;
    assert_eq!(set(&everything), all, "every movie is listed and available");

    let comedies = [lebowski, movies[3], movies[5]];
    for name in ["Comedy", "comedy", "cOMEDY", "COMEDY"] {
        let found = ids_of(&app, &format!("/api/v1/movies?category={name}"), &token).await;
        assert_eq!(set(&found), set(&comedies), "category={name}");
    }
    let by_id = ids_of(&app, &format!("/api/v1/movies?category={crime}"), &token).await;
    assert_eq!(set(&by_id), set(&[lebowski, movies[1], movies[4]]), "category by id");
    let unknown = ids_of(&app, "/api/v1/movies?category=Westerns", &token).await;
    assert!(unknown.is_empty(), "an unknown category has no movies");

    let searches: [(&str, Vec<Uuid>); 7] = [
        ("lebow%20coen", vec![lebowski]),
        ("COEN%20LEBOW", vec![lebowski]),
        ("lebow", vec![lebowski, movies[3]]),
        ("coen", vec![lebowski, movies[1], movies[2]]),
        ("fink%20joel", vec![movies[2]]),
        ("lebow%20nolan", vec![]),
        ("%20%20heat%20%20mann%20", vec![movies[4]]),
    ];
    for (q, expected) in &searches {
        let found = ids_of(&app, &format!("/api/v1/movies?q={q}"), &token).await;
        assert_eq!(set(&found), set(expected), "q={q}");
    }
    let combined = ids_of(&app, "/api/v1/movies?category=COMEDY&q=lebow", &token).await;
    assert_eq!(set(&combined), set(&[lebowski, movies[3]]), "category and q together");

    // Details through the cache: a miss fills it, the next read hits.
    let first = app.get(&format!("/api/v1/movies/{lebowski}"), Some(&token)).await;
    assert_eq!(cache_header(&first), "miss", "first read of the details");
    let first = expect_status(first, StatusCode::OK).await;
    let second = app.get(&format!("/api/v1/movies/{lebowski}"), Some(&token)).await;
    assert_eq!(cache_header(&second), "hit", "second read of the details");
    let second = expect_status(second, StatusCode::OK).await;
    assert_eq!(first, second, "a hit serves the same body");
    assert_eq!(first["title"], "The Big Lebowski");
    assert_eq!(first["director"], "Joel Coen");
    assert_eq!(first["storyline"], "The story of The Big Lebowski.");
    assert_eq!(first["release_date"], "1998-01-18");
    assert_eq!(first["rating"], 7.5);
    assert_eq!((first["available"].clone(), first["retired"].clone()), (json!(true), json!(false)));
    assert_eq!((first["times_rented"].clone(), first["version"].clone()), (json!(0), json!(1)));
    let mut names: Vec<&str> =
        first["categories"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["Comedy", "Crime"]);

    // Rent: every read that asks for the rent's position shows it.
    let rented = app.post(&format!("/api/v1/movies/{lebowski}/rent"), Some(&token), None).await;
    let rented = expect_status(rented, StatusCode::CREATED).await;
    let rental = uuid(&rented["rental_id"]);
    let rented_at = position_of(&rented);
    let available = ids_of(&app, &format!("/api/v1/movies?min_position={rented_at}"), &token).await;
    assert!(!available.contains(&lebowski), "a rented movie is not listed as available");
    assert_eq!(available.len(), 6);
    let out = ids_of(&app, &format!("/api/v1/movies?available=false&min_position={rented_at}"), &token).await;
    assert_eq!(out, [lebowski], "available=false lists exactly the rented movie");
    let any = ids_of(&app, "/api/v1/movies?available=any&limit=100", &token).await;
    assert_eq!(set(&any), all);
    let details = app.get(&format!("/api/v1/movies/{lebowski}?min_position={rented_at}"), Some(&token)).await;
    assert_eq!(cache_header(&details), "miss", "a read with min_position skips the cache");
    let details = expect_status(details, StatusCode::OK).await;
    assert_eq!(details["available"], false);
    assert_eq!(details["times_rented"], 1);
    assert_eq!(details["version"], 2);
    let mine = expect_status(
        app.get(&format!("/api/v1/rentals?min_position={rented_at}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert_eq!(mine["items"][0]["status"], "active");
    assert_eq!(uuid(&mine["items"][0]["customer_id"]), greg);

    // Return: the payments process manager charges it.
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(returned["status"], "returned");
    let returned_at = position_of(&returned);
    let started = Instant::now();
    let charged =
        wait_for_rental_status(&app, &app.address, &token, rental, "charged", Duration::from_secs(5)).await;
    let charge_wait = started.elapsed();
    assert_eq!(charged["charge"], json!({"days": 1, "amount_cents": 100, "currency": "EUR"}));
    assert_eq!(charged["movie_title"], "The Big Lebowski");
    assert!(charged["returned_at"].is_string() && charged["paid_at"].is_null(), "{charged}");
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(me["balance_due"], json!({"amount_cents": 100, "currency": "EUR"}));
    assert_eq!(uuid(&me["id"]), greg);

    // Pay: the balance is settled and the rental is listed as paid.
    let paid = app
        .post(&format!("/api/v1/rentals/{rental}/pay"), Some(&token), Some(json!({"amount_cents": 100})))
        .await;
    let paid = expect_status(paid, StatusCode::OK).await;
    assert_eq!(paid["status"], "paid");
    let paid_at = position_of(&paid);
    let me = expect_status(
        app.get(&format!("/api/v1/me?min_position={paid_at}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["balance_due"], json!({"amount_cents": 0, "currency": "EUR"}));
    let paid_list = expect_status(
        app.get(&format!("/api/v1/rentals?status=paid&min_position={paid_at}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    let items = paid_list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{paid_list}");
    assert_eq!(uuid(&items[0]["id"]), rental);
    assert_eq!(items[0]["status"], "paid");
    assert!(items[0]["paid_at"].is_string());
    let charged_list = ids_of(&app, "/api/v1/rentals?status=charged", &token).await;
    assert!(charged_list.is_empty(), "nothing is left charged");

    // Paging: limit=2 visits every movie exactly once, in the order of one big page.
    let one_page =
        ids_of(&app, &format!("/api/v1/movies?limit=100&min_position={returned_at}"), &token).await;
    assert_eq!(set(&one_page), all, "every movie is available again");
    let mut visited = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/movies?limit=2".to_string(),
            Some(c) => format!("/api/v1/movies?limit=2&cursor={c}"),
        };
        let (ids, next) = page_of(&app, &path, &token).await;
        pages += 1;
        assert!(ids.len() <= 2 && !ids.is_empty(), "page {pages}: {ids:?}");
        visited.extend(ids);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(visited, one_page, "limit=2 pages visit every movie once, in order");
    assert_eq!(set(&visited).len(), visited.len(), "no movie twice");
    assert_eq!(pages, 4);

    // Invalid list parameters are 422 naming the parameter.
    for (query, field) in [
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=e30", "cursor"),
        ("cursor=%25%25%25", "cursor"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("available=maybe", "available"),
    ] {
        let response = app.get(&format!("/api/v1/movies?{query}"), Some(&token)).await;
        assert_invalid(response, &[field], &format!("GET /movies?{query}")).await;
    }
    for query in ["limit=0", "limit=101", "cursor=not-a-cursor"] {
        let response = app.get(&format!("/api/v1/rentals?{query}"), Some(&token)).await;
        let field = query.split('=').next().unwrap();
        assert_invalid(response, &[field], &format!("GET /rentals?{query}")).await;
    }
    println!(
        "read side flow: 3 categories, 7 movies; category by name in 4 spellings -> 3 each; 7 searches; \
         details miss then hit; rent -> 6 available + 1 unavailable; charged 100 EUR cents after {charge_wait:?}; \
         balance 100 -> paid -> 0; 4 pages of limit=2 visited {} movies once; 11 invalid parameters -> 422",
        visited.len()
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn back_dated_rentals_are_charged_by_the_price_table_and_listed_to_whom_may_see_them(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, greg_token) = app.customer("greg").await;
    let (maude, maude_token) = app.customer("maude").await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let category = app.category("Drama").await;
    let now = Utc::now().trunc_subsecs(0);
    // (elapsed, expected days, expected cents); alternately greg's and maude's.
    let table = [
        ("1 min", Span::minutes(1), 1, 100),
        ("24 h", Span::hours(24), 1, 100),
        ("72 h", Span::hours(72), 3, 300),
        ("73 h", Span::hours(73), 4, 350),
        ("10 days", Span::days(10), 10, 650),
        ("30 days", Span::days(30), 30, 1650),
    ];

    // Act
    let mut rentals = Vec::new();
    for (i, (label, elapsed, _, _)) in table.iter().enumerate() {
        let customer = if i % 2 == 0 { greg } else { maude };
        let (movie, _) = add_movie(&app, &format!("Movie {label}"), "Someone", &[category]).await;
        let rented_at = now - *elapsed - Span::minutes(1);
        let returned_at = rented_at + *elapsed;
        let rented = app
            .post(
                &format!("/api/v1/movies/{movie}/rent"),
                Some(&admin),
                Some(json!({"customer_id": customer, "rented_at": rfc3339(rented_at)})),
            )
            .await;
        let rental = uuid(&expect_status(rented, StatusCode::CREATED).await["rental_id"]);
        let returned = app
            .post(
                &format!("/api/v1/rentals/{rental}/return"),
                Some(&admin),
                Some(json!({"returned_at": rfc3339(returned_at)})),
            )
            .await;
        expect_status(returned, StatusCode::OK).await;
        rentals.push((rental, customer));
    }

    // Assert: each charge follows the price plan.
    let mut charged = Vec::new();
    for ((label, _, days, cents), (rental, customer)) in table.iter().zip(&rentals) {
        let body =
            wait_for_rental_status(&app, &app.address, &admin, *rental, "charged", Duration::from_secs(5))
                .await;
        assert_eq!(uuid(&body["customer_id"]), *customer);
        assert_eq!(
            body["charge"],
            json!({"days": days, "amount_cents": cents, "currency": "EUR"}),
            "{label}: the charge"
        );
        charged.push(format!("{label}: {} days {} cents", days, cents));
    }

    // Each customer sees only their own; the auditor sees everyone's, newest rent first.
    let greg_rentals: Vec<Uuid> = rentals.iter().filter(|(_, c)| *c == greg).map(|(r, _)| *r).collect();
    let maude_rentals: Vec<Uuid> = rentals.iter().filter(|(_, c)| *c == maude).map(|(r, _)| *r).collect();
    let greg_sees = ids_of(&app, "/api/v1/rentals", &greg_token).await;
    assert_eq!(set(&greg_sees), set(&greg_rentals), "greg sees his own rentals only");
    let maude_sees = ids_of(&app, "/api/v1/rentals?status=charged", &maude_token).await;
    assert_eq!(set(&maude_sees), set(&maude_rentals), "maude sees her own rentals only");
    let auditor_sees = ids_of(&app, "/api/v1/rentals?limit=100", &auditor).await;
    let newest_first: Vec<Uuid> = rentals.iter().map(|(r, _)| *r).collect();
    assert_eq!(auditor_sees, newest_first, "the auditor sees all, newest rented_at first");
    let greg_by_auditor = ids_of(&app, &format!("/api/v1/rentals?customer_id={greg}"), &auditor).await;
    assert_eq!(set(&greg_by_auditor), set(&greg_rentals));
    let one = app.get(&format!("/api/v1/rentals/{}", greg_rentals[0]), Some(&auditor)).await;
    expect_status(one, StatusCode::OK).await;

    // Others' rentals are forbidden to a customer, and single rentals to an analyst.
    let foreign = app.get(&format!("/api/v1/rentals/{}", maude_rentals[0]), Some(&greg_token)).await;
    assert_problem(foreign, 403, "forbidden").await;
    let foreign = app.get(&format!("/api/v1/rentals?customer_id={maude}"), Some(&greg_token)).await;
    assert_problem(foreign, 403, "forbidden").await;
    for (rental, _) in &rentals {
        let response = app.get(&format!("/api/v1/rentals/{rental}"), Some(&analyst)).await;
        assert_problem(response, 403, "forbidden").await;
    }

    // Balances are the sums of each customer's charges.
    let balance = |token: String| {
        let app = &app;
        async move {
            let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
            me["balance_due"]["amount_cents"].as_i64().unwrap()
        }
    };
    assert_eq!(balance(greg_token.clone()).await, 100 + 300 + 650);
    assert_eq!(balance(maude_token.clone()).await, 100 + 350 + 1650);
    println!(
        "price table over {} back-dated rentals: [{}]; greg sees 3, maude 3, the auditor 6; \
         the analyst got 6 x 403; balances 1050 and 2100",
        rentals.len(),
        charged.join(", ")
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn reads_waiting_for_a_position_never_reached_answer_503_with_retry_after(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let (_, token) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let (movie, _) = add_movie(&app, "Heat", "Michael Mann", &[category]).await;
    let rented = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
    let rented = expect_status(rented, StatusCode::CREATED).await;
    let rental = uuid(&rented["rental_id"]);
    let reached = position_of(&rented);
    // A position an append still running holds: no read model can reach it before it ends.
    let (running, unreachable) = pending_position(&pool).await;
    let beyond = (unreachable + 1000).to_string();
    let paths = [
        "/api/v1/categories".to_string(),
        "/api/v1/movies".to_string(),
        format!("/api/v1/movies/{movie}"),
        "/api/v1/rentals".to_string(),
        format!("/api/v1/rentals/{rental}"),
        "/api/v1/me".to_string(),
    ];

    // Act: all at once, so the suite waits about 2 s, not 12.
    let reads = paths.iter().map(|path| {
        let app = &app;
        let token = &token;
        async move {
            let started = Instant::now();
            let response = app.get_once(&format!("{path}?min_position={unreachable}"), Some(token)).await;
            (path, response, started.elapsed())
        }
    });
    let answers = futures::future::join_all(reads).await;
    running.rollback().await.unwrap();

    // Assert
    let mut waits = Vec::new();
    for (path, response, elapsed) in answers {
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            panic!("{path}: {status} after {elapsed:?} for unreachable position {unreachable}: {body}");
        }
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after: u64 = retry_after
            .unwrap_or_else(|| panic!("{path}: a 503 carries Retry-After"))
            .parse()
            .unwrap_or_else(|_| panic!("{path}: Retry-After in seconds"));
        assert!(retry_after >= 1, "{path}: Retry-After {retry_after}");
        let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert_eq!(content_type, "application/problem+json", "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 503, "{path}: {problem}");
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed <= Duration::from_millis(4000),
            "{path}: answered after {elapsed:?}, expected about 2 s"
        );
        waits.push(elapsed.as_millis());
    }
    for path in &paths {
        let started = Instant::now();
        let response = app.get(&format!("{path}?min_position={reached}"), Some(&token)).await;
        expect_status(response, StatusCode::OK).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{path}: a reached position answers at once");
        for bad in ["abc", "-1", "1.5", beyond.as_str()] {
            let response = app.get(&format!("{path}?min_position={bad}"), Some(&token)).await;
            assert_invalid(response, &["min_position"], &format!("{path}?min_position={bad}")).await;
        }
    }
    println!(
        "min_position {unreachable} (log ends at {}): {} endpoints answered 503 with Retry-After after {waits:?} ms; \
         position {reached} answered 200 on all {}; 3 malformed values and one beyond the log x {} endpoints -> 422",
        last_position(&pool).await,
        paths.len(),
        paths.len(),
        paths.len()
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn reads_waiting_for_a_rolled_back_position_consume_no_transaction_ids(pool: PgPool) {
    // Arrange: a position an append took and rolled back. Transaction ids are counted for the
    // whole cluster, so this test runs alone: other tests' servers would spend ids meanwhile.
    let _alone = alone();
    let app = TestApp::spawn(pool.clone()).await;
    let (_, token) = app.customer("greg").await;
    let (running, rolled_back) = pending_position(&pool).await;
    running.rollback().await.unwrap();
    let next_xid = || async {
        sqlx::query_scalar::<_, i64>("select pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = next_xid().await;

    // Act: 200 reads that each wait for it.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..200 {
        let response = app.get(&format!("/api/v1/categories?min_position={rolled_back}"), Some(&token)).await;
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    let used = next_xid().await - before;

    // Assert: every read is answered (the position is reached once the transactions that could
    // hold it ended) and the reads gave out no transaction ids (a few are the background's own
    // writes: checkpoints, the scheduler's status).
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 200)]));
    assert!(used < 200, "200 reads of a rolled-back position used {used} transaction ids");
    println!("min_position at a rolled-back position: 200 reads, 200 × 200, {used} transaction ids given out meanwhile");
}
