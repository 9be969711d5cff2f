//! Analytics over HTTP: revenue, top movies and utilization after a randomized, back-dated
//! workload, checked against the charges the rentals endpoint reports; who may ask; and every
//! invalid query. The workload's seed is printed (set `ANALYTICS_SEED` to replay one).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, SecondsFormat, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::{last_position, wait_for_projections, wait_for_rental_status};
use crate::support::*;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed by its seed.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low + 1) as u64) as i64
    }
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// (rentals, revenue_cents, paid_cents) by key.
type Totals = BTreeMap<String, (i64, i64, i64)>;

/// An answer's items as totals by `key`, with the labels.
fn totals_of(body: &Value) -> (Totals, BTreeMap<String, String>) {
    let mut totals = Totals::new();
    let mut labels = BTreeMap::new();
    for item in body["items"].as_array().unwrap_or_else(|| panic!("items in {body}")) {
        let key = item["key"].as_str().unwrap().to_string();
        let numbers = (
            item["rentals"].as_i64().unwrap(),
            item["revenue_cents"].as_i64().unwrap(),
            item["paid_cents"].as_i64().unwrap(),
        );
        assert!(totals.insert(key.clone(), numbers).is_none(), "{key} listed once");
        labels.insert(key, item["label"].as_str().unwrap().to_string());
    }
    (totals, labels)
}

/// A rental as `GET /api/v1/rentals` reports it.
#[derive(Debug, Clone)]
struct Seen {
    movie: Uuid,
    rented_at: DateTime<Utc>,
    returned_at: Option<DateTime<Utc>>,
    charge: Option<i64>,
    paid: bool,
}

/// Every rental, read through the rentals endpoint as the admin (all pages).
async fn every_rental(app: &TestApp, admin: &str) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/rentals?limit=100".to_string(),
            Some(c) => format!("/api/v1/rentals?limit=100&cursor={c}"),
        };
        let body = expect_status(app.get(&path, Some(admin)).await, StatusCode::OK).await;
        for r in body["items"].as_array().unwrap() {
            let time = |v: &Value| v.as_str().map(|s| DateTime::parse_from_rfc3339(s).unwrap().to_utc());
            seen.push(Seen {
                movie: uuid(&r["movie_id"]),
                rented_at: time(&r["rented_at"]).unwrap(),
                returned_at: time(&r["returned_at"]),
                charge: r["charge"]["amount_cents"].as_i64(),
                paid: r["status"] == "paid",
            });
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return seen,
        }
    }
}

fn day_of(time: DateTime<Utc>) -> NaiveDate {
    time.date_naive()
}

/// Expected revenue from the rentals' charges, returned within `[from, to)` (UTC days).
fn expected_revenue(
    rentals: &[Seen],
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    key: impl Fn(&Seen) -> Vec<String>,
) -> Totals {
    let mut totals = Totals::new();
    for r in rentals {
        let (Some(returned_at), Some(charge)) = (r.returned_at, r.charge) else { continue };
        let day = day_of(returned_at);
        if from.is_some_and(|f| day < f) || to.is_some_and(|t| day >= t) {
            continue;
        }
        for k in key(r) {
            let entry = totals.entry(k).or_default();
            entry.0 += 1;
            entry.1 += charge;
            entry.2 += if r.paid { charge } else { 0 };
        }
    }
    totals
}

/// Runs the binary's CLI against the database; returns (exit code, stdout and stderr).
async fn cli(database_url: &str, args: &[&str]) -> (i32, String) {
    cli_status(database_url, args).await
}

fn query(group_by: &str, from: Option<NaiveDate>, to: Option<NaiveDate>) -> String {
    let mut path = format!("/api/v1/analytics/revenue?group_by={group_by}");
    if let Some(from) = from {
        path += &format!("&from={from}");
    }
    if let Some(to) = to {
        path += &format!("&to={to}");
    }
    path
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn analytics_agree_with_the_charges_of_a_randomized_back_dated_workload(pool: PgPool) {
    // Arrange: categories, movies in 1 to 3 of them, back-dated rentals over three weeks.
    let app = TestApp::process(pool.clone()).await;
    let admin = app.admin().await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let customers = [app.customer("greg").await.0, app.customer("maude").await.0];
    let seed = std::env::var("ANALYTICS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_subsec_nanos() as u64 ^ Utc::now().timestamp() as u64);
    let mut dice = Dice::new(seed);
    let now = Utc::now().trunc_subsecs(0);
    let category_names = ["Comedy", "Drama", "Noir", "Western"];
    let mut categories = Vec::new();
    for name in category_names {
        categories.push((app.category(name).await, name));
    }
    let mut movies: Vec<(Uuid, String, Vec<Uuid>)> = Vec::new();
    for i in 0..6 {
        let mut mine: Vec<Uuid> = Vec::new();
        for _ in 0..dice.between(1, 3) {
            let pick = categories[dice.between(0, 3) as usize].0;
            if !mine.contains(&pick) {
                mine.push(pick);
            }
        }
        let title = format!("Movie {i}");
        movies.push((app.movie(&title, &mine).await, title, mine));
    }
    // One movie with a known interval, for utilization: out from noon three days ago until 06:00
    // the next day (18 hours).
    let known_day = day_of(now) - Span::days(3);
    let known_from = known_day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    let known_to = known_from + Span::hours(18);
    let known = app.movie("The Known Interval", &[categories[0].0]).await;
    movies.push((known, "The Known Interval".into(), vec![categories[0].0]));

    // Act: rent and return through the admin's back-office entry, then pay some.
    let mut rentals = Vec::new();
    let mut schedule: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = Vec::new();
    for (movie, _, _) in movies.iter().filter(|(id, _, _)| *id != known) {
        let mut at = now - Span::days(20) + Span::minutes(dice.between(0, 24 * 60));
        for _ in 0..dice.between(1, 4) {
            let back = at + Span::minutes(dice.between(60, 96 * 60));
            if back >= now - Span::hours(1) {
                break;
            }
            schedule.push((*movie, at, Some(back)));
            at = back + Span::minutes(dice.between(0, 36 * 60));
        }
        // About half the movies stay out at the end.
        if dice.between(0, 1) == 0 && at < now - Span::hours(1) {
            schedule.push((*movie, at, None));
        }
    }
    schedule.push((known, known_from, Some(known_to)));
    for (movie, rented_at, returned_at) in &schedule {
        let customer = customers[dice.between(0, 1) as usize];
        let rented = app
            .post(
                &format!("/api/v1/movies/{movie}/rent"),
                Some(&admin),
                Some(json!({"customer_id": customer, "rented_at": rfc3339(*rented_at)})),
            )
            .await;
        let rental = uuid(&expect_status(rented, StatusCode::CREATED).await["rental_id"]);
        if let Some(returned_at) = returned_at {
            let returned = app
                .post(
                    &format!("/api/v1/rentals/{rental}/return"),
                    Some(&admin),
                    Some(json!({"returned_at": rfc3339(*returned_at)})),
                )
                .await;
            expect_status(returned, StatusCode::OK).await;
            rentals.push(rental);
        }
    }
    let mut paid = 0;
    for rental in &rentals {
        let charged =
            wait_for_rental_status(&app, &app.address, &admin, *rental, "charged", Duration::from_secs(10))
                .await;
        if dice.between(0, 1) == 0 {
            let cents = charged["charge"]["amount_cents"].clone();
            let path = format!("/api/v1/rentals/{rental}/pay");
            let pay = app.post(&path, Some(&admin), Some(json!({"amount_cents": cents}))).await;
            expect_status(pay, StatusCode::OK).await;
            paid += 1;
        }
    }
    let position = last_position(&pool).await;
    // The rental read model must have applied the last payment too before it is compared.
    let waited = app.get(&format!("/api/v1/rentals?limit=1&min_position={position}"), Some(&admin)).await;
    expect_status(waited, StatusCode::OK).await;
    let seen = every_rental(&app, &admin).await;
    let ask = |path: String| {
        let (app, analyst) = (&app, &analyst);
        async move {
            let separator = if path.contains('?') { '&' } else { '?' };
            let path = format!("{path}{separator}min_position={position}");
            expect_status(app.get(&path, Some(analyst)).await, StatusCode::OK).await
        }
    };

    // Assert: revenue by movie and by day equal the charges exactly; by category, each category
    // counts every movie in it.
    let categories_of: HashMap<Uuid, Vec<Uuid>> = movies.iter().map(|(id, _, c)| (*id, c.clone())).collect();
    let title_of: HashMap<String, String> =
        movies.iter().map(|(id, t, _)| (id.to_string(), t.clone())).collect();
    let by_movie = |r: &Seen| vec![r.movie.to_string()];
    let by_day = |r: &Seen| vec![day_of(r.returned_at.unwrap()).to_string()];
    let by_category =
        |r: &Seen| -> Vec<String> { categories_of[&r.movie].iter().map(Uuid::to_string).collect() };
    assert_eq!(seen.len(), schedule.len(), "every rental is listed");

    let (movie_totals, movie_labels) = totals_of(&ask(query("movie", None, None)).await);
    assert_eq!(movie_totals, expected_revenue(&seen, None, None, by_movie), "seed {seed}: revenue by movie");
    for (key, label) in &movie_labels {
        assert_eq!(label, &title_of[key], "a movie's label is its title");
    }
    let days = ask(query("day", None, None)).await;
    let (day_totals, day_labels) = totals_of(&days);
    assert_eq!(day_totals, expected_revenue(&seen, None, None, by_day), "seed {seed}: revenue by day");
    assert!(day_labels.iter().all(|(key, label)| key == label), "a day's label is its date");
    let listed_days: Vec<&str> =
        days["items"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert!(listed_days.is_sorted(), "days come in date order: {listed_days:?}");
    let (category_totals, category_labels) = totals_of(&ask(query("category", None, None)).await);
    assert_eq!(
        category_totals,
        expected_revenue(&seen, None, None, by_category),
        "seed {seed}: revenue by category"
    );
    for (id, name) in &categories {
        if let Some(label) = category_labels.get(&id.to_string()) {
            assert_eq!(label, name, "a category's label is its name");
        }
    }
    let charges: i64 = seen.iter().filter_map(|r| r.charge).sum();
    let paid_charges: i64 = seen.iter().filter(|r| r.paid).filter_map(|r| r.charge).sum();
    let sum = |totals: &Totals, i: usize| -> i64 { totals.values().map(|t| [t.0, t.1, t.2][i]).sum() };
    assert_eq!((sum(&movie_totals, 1), sum(&movie_totals, 2)), (charges, paid_charges));
    assert_eq!((sum(&day_totals, 1), sum(&day_totals, 2)), (charges, paid_charges));

    // Top movies: rentals started, most rented first, ties by title.
    let mut started: HashMap<Uuid, i64> = HashMap::new();
    for r in &seen {
        *started.entry(r.movie).or_default() += 1;
    }
    let mut expected_top: Vec<(i64, String, Uuid)> =
        started.iter().map(|(id, n)| (*n, title_of[&id.to_string()].clone(), *id)).collect();
    expected_top.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let top = ask("/api/v1/analytics/top-movies".into()).await;
    let top: Vec<(i64, String, Uuid)> = top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["rentals"].as_i64().unwrap(), m["title"].as_str().unwrap().to_string(), uuid(&m["movie_id"]))
        })
        .collect();
    assert_eq!(top, expected_top, "seed {seed}: top movies");
    let top3 = ask("/api/v1/analytics/top-movies?limit=3".into()).await;
    assert_eq!(top3["items"].as_array().unwrap().len(), 3.min(expected_top.len()));
    assert_eq!(uuid(&top3["items"][0]["movie_id"]), expected_top[0].2);

    // Filters: a window of three days around the middle of the returns.
    let mut return_days: Vec<NaiveDate> = seen.iter().filter_map(|r| r.returned_at).map(day_of).collect();
    return_days.sort();
    let from = return_days[return_days.len() / 2] - Span::days(1);
    let to = from + Span::days(3);
    let (window_movies, _) = totals_of(&ask(query("movie", Some(from), Some(to))).await);
    assert_eq!(
        window_movies,
        expected_revenue(&seen, Some(from), Some(to), by_movie),
        "seed {seed}: {from}..{to}"
    );
    let (window_days, _) = totals_of(&ask(query("day", Some(from), Some(to))).await);
    assert_eq!(window_days, expected_revenue(&seen, Some(from), Some(to), by_day));
    assert!(window_days.keys().all(|d| *d >= from.to_string() && *d < to.to_string()), "{window_days:?}");
    let (since, _) = totals_of(&ask(query("day", Some(from), None)).await);
    assert_eq!(since, expected_revenue(&seen, Some(from), None, by_day));
    let (until, _) = totals_of(&ask(query("day", None, Some(to))).await);
    assert_eq!(until, expected_revenue(&seen, None, Some(to), by_day));
    let window_top = ask(format!("/api/v1/analytics/top-movies?from={from}&to={to}")).await;
    let mut started_in_window: HashMap<Uuid, i64> = HashMap::new();
    for r in seen.iter().filter(|r| day_of(r.rented_at) >= from && day_of(r.rented_at) < to) {
        *started_in_window.entry(r.movie).or_default() += 1;
    }
    let listed: HashMap<Uuid, i64> = window_top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (uuid(&m["movie_id"]), m["rentals"].as_i64().unwrap()))
        .collect();
    assert_eq!(listed, started_in_window, "seed {seed}: rentals started {from}..{to}");

    // Utilization of the known interval: 12 of the 24 hours of its first day, 18 of 48 over two.
    let share_of_known = |body: Value| -> (f64, f64, f64) {
        let item = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| uuid(&u["movie_id"]) == known)
            .cloned()
            .unwrap_or_else(|| panic!("the known movie is listed: {body}"));
        assert_eq!(item["title"], "The Known Interval");
        (
            item["rented_seconds"].as_f64().unwrap(),
            item["period_seconds"].as_f64().unwrap(),
            item["share"].as_f64().unwrap(),
        )
    };
    let one_day =
        ask(format!("/api/v1/analytics/utilization?from={known_day}&to={}", known_day + Span::days(1))).await;
    assert_eq!(share_of_known(one_day), (43_200.0, 86_400.0, 0.5));
    let two_days =
        ask(format!("/api/v1/analytics/utilization?from={known_day}&to={}", known_day + Span::days(2))).await;
    assert_eq!(share_of_known(two_days), (64_800.0, 172_800.0, 0.375));
    let (rented, period, share) = share_of_known(ask("/api/v1/analytics/utilization".into()).await);
    assert_eq!(rented, 64_800.0, "all time: the whole interval");
    assert!(period >= 19.0 * 86_400.0 && (share - rented / period).abs() < 1e-9, "{period} {share}");

    // A rebuild over HTTP, then `moviestore rebuild analytics` and `verify`, leave every answer as
    // it was; the analyst role still reads the rebuilt tables and still not the log.
    let rebuild = app.post("/api/v1/admin/projections/analytics/rebuild", Some(&admin), None).await;
    expect_status(rebuild, StatusCode::ACCEPTED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let (code, output) = cli(&app.database_url, &["rebuild", "analytics"]).await;
    assert_eq!(code, 0, "rebuild analytics: {output}");
    assert!(output.contains("analytics: rebuilt from"), "{output}");
    let (code, output) = cli(&app.database_url, &["verify"]).await;
    assert_eq!(code, 0, "verify: {output}");
    assert!(output.contains("analytics: live tables equal a replay of the log"), "{output}");
    let (after, _) = totals_of(&ask(query("category", None, None)).await);
    assert_eq!(after, category_totals, "after the rebuilds");
    let as_analyst = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = eventstore::db::begin(&pool).await.unwrap();
            sqlx::query("set local role moviestore_analyst").execute(&mut *tx).await.unwrap();
            let result: Result<i64, _> = sqlx::query_scalar(sql).fetch_one(&mut *tx).await;
            tx.rollback().await.unwrap();
            result.map_err(|e| e.as_database_error().and_then(|d| d.code()).unwrap_or_default().to_string())
        }
    };
    let charged_by_sql =
        as_analyst("select coalesce(sum(revenue_cents), 0)::int8 from read.analytics_movie_day").await;
    assert_eq!(charged_by_sql, Ok(charges), "the analyst role sums revenue in SQL");
    assert_eq!(as_analyst("select count(*) from events").await, Err("42501".into()));
    assert_eq!(as_analyst("select count(*) from users").await, Err("42501".into()));

    println!(
        "analytics, seed {seed}: {} rentals ({} returned, {paid} paid) of {} movies over {} days; \
         revenue {charges} cents ({paid_charges} paid); by movie, day, category and the {from}..{to} window \
         equal the rentals' charges; known interval 0.5 and 0.375; equal after rebuilds (HTTP, CLI) and verify",
        seen.len(),
        rentals.len(),
        movies.len(),
        day_totals.len(),
    );
    app.shutdown().await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn analytics_answer_analysts_and_admins_only_and_name_every_invalid_parameter(pool: PgPool) {
    // Arrange
    let app = TestApp::process(pool).await;
    let admin = app.admin().await;
    let (_, analyst) = app.staff("annie", "analyst").await;
    let (_, auditor) = app.staff("audrey", "auditor").await;
    let (_, customer) = app.customer("greg").await;
    let endpoints = [
        "/api/v1/analytics/revenue?group_by=movie",
        "/api/v1/analytics/top-movies",
        "/api/v1/analytics/utilization",
    ];

    // Act and assert: who may ask.
    for path in endpoints {
        assert_problem_in(app.get(path, None).await, 401, "unauthorized", &format!("{path} anonymous")).await;
        for (role, token) in [("customer", &customer), ("auditor", &auditor)] {
            assert_problem_in(app.get(path, Some(token)).await, 403, "forbidden", &format!("{path} {role}"))
                .await;
        }
        for (role, token) in [("analyst", &analyst), ("admin", &admin)] {
            let body = expect_status(app.get(path, Some(token)).await, StatusCode::OK).await;
            assert_eq!(body, json!({"items": []}), "{path} as {role}: nothing rented yet");
        }
    }
    // A position a running append holds: 503 once the wait runs out; one beyond the log: 422.
    let (running, given) = crate::read_side::pending_position(&app.pool).await;
    let path = format!("/api/v1/analytics/revenue?group_by=day&min_position={given}");
    let waiting = app.get_once(&path, Some(&analyst)).await;
    running.rollback().await.unwrap();
    assert!(waiting.headers().contains_key("retry-after"), "503 carries Retry-After");
    assert_problem(waiting, 503, "not-yet-consistent").await;
    let path = format!("/api/v1/analytics/revenue?group_by=day&min_position={}", given + 1000);
    assert_invalid(app.get(&path, Some(&analyst)).await, &["min_position"], "beyond the log").await;

    // Role before query: a customer with an invalid query is refused, not told about the query.
    let refused = app.get("/api/v1/analytics/revenue?group_by=week", Some(&customer)).await;
    assert_problem(refused, 403, "forbidden").await;

    // Every invalid parameter is named.
    let cases: [(&str, &[&str]); 16] = [
        ("/api/v1/analytics/revenue", &["group_by"]),
        ("/api/v1/analytics/revenue?group_by=", &["group_by"]),
        ("/api/v1/analytics/revenue?group_by=week", &["group_by"]),
        ("/api/v1/analytics/revenue?group_by=Movie", &["group_by"]),
        ("/api/v1/analytics/revenue?group_by=day&from=2026-13-01", &["from"]),
        ("/api/v1/analytics/revenue?group_by=day&from=2026-1-5", &["from"]),
        ("/api/v1/analytics/revenue?group_by=day&to=2026-02-30", &["to"]),
        ("/api/v1/analytics/revenue?group_by=day&to=2026-03-01T00:00:00Z", &["to"]),
        ("/api/v1/analytics/revenue?group_by=day&from=2026-03-02&to=2026-03-01", &["to"]),
        ("/api/v1/analytics/revenue?from=yesterday&to=today", &["from", "group_by", "to"]),
        ("/api/v1/analytics/revenue?group_by=day&min_position=-1", &["min_position"]),
        ("/api/v1/analytics/top-movies?limit=0", &["limit"]),
        ("/api/v1/analytics/top-movies?limit=101&from=x", &["from", "limit"]),
        ("/api/v1/analytics/top-movies?limit=ten", &["limit"]),
        ("/api/v1/analytics/utilization?from=2026-03-01&to=", &["to"]),
        ("/api/v1/analytics/utilization?to=2026-03-01&from=2026-03-08", &["to"]),
    ];
    for (path, fields) in cases {
        assert_invalid(app.get(path, Some(&analyst)).await, fields, path).await;
    }
    // The bounds of `limit` and an empty period are accepted.
    for path in [
        "/api/v1/analytics/top-movies?limit=1",
        "/api/v1/analytics/top-movies?limit=100&from=2026-03-01&to=2026-03-01",
        "/api/v1/analytics/utilization?from=2026-03-01&to=2026-03-01",
        "/api/v1/analytics/revenue?group_by=category&from=2026-03-01",
    ] {
        expect_status(app.get(path, Some(&analyst)).await, StatusCode::OK).await;
    }
    println!(
        "analytics access: 3 endpoints x (401 anonymous, 403 customer and auditor, 200 analyst and admin); \
         {} invalid queries each answered 422 naming exactly their fields",
        cases.len()
    );
    app.shutdown().await;
}
