//! Resilience of the read side: several processes on one database, a crash between append and
//! projection, cache freshness under concurrent reads, and a Redis outage.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::{
    add_movie, cache_header, last_position, position_of, send, wait_for_projections, wait_for_rental_status,
};
use crate::support::*;

/// Another `moviestore serve` process, started by hand against an existing database; killed on drop.
pub(crate) struct Peer {
    child: Child,
    pub(crate) address: String,
}

impl Peer {
    /// Starts `moviestore serve` with this database and Redis key prefix; blocks until it prints
    /// its `listening on http://ADDR` line.
    pub(crate) fn start(database_url: &str, redis_prefix: &str) -> Self {
        let options = Options { extra_env: vec![("MOVIESTORE_REDIS_PREFIX".into(), redis_prefix.into())] };
        let (child, address) = wait_for_listening(start(database_url, &options));
        Self { child, address }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` on its own port, without persistence; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child: Some(child), port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// Runs `moviestore verify` against the database; returns (exit code, stdout and stderr).
pub(crate) async fn verify(database_url: &str) -> (i32, String) {
    cli_status(database_url, &["verify"]).await
}

/// Registers a customer through the process at `base`; returns (id, token).
pub(crate) async fn register(app: &TestApp, base: &str, username: &str) -> (Uuid, String) {
    let body =
        json!({"username": username, "email": format!("{username}@example.com"), "password": "password-123"});
    let response = send(app, base, Method::POST, "/api/v1/auth/register", None, Some(body)).await;
    let body = expect_status(response, StatusCode::CREATED).await;
    (uuid(&body["user"]["id"]), body["token"].as_str().unwrap().to_string())
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn two_serve_processes_on_one_database_charge_every_rental_exactly_once(pool: PgPool) {
    // Arrange: two processes share the database and the cache prefix.
    let prefix = format!("test-{}:", Uuid::now_v7());
    let options = Options { extra_env: vec![("MOVIESTORE_REDIS_PREFIX".into(), prefix.clone())] };
    let app = TestApp::spawn_with(pool.clone(), options).await;
    let database_url = app.database_url.clone();
    let peer = tokio::task::spawn_blocking(move || Peer::start(&database_url, &prefix)).await.unwrap();
    let bases = [app.address.clone(), peer.address.clone()];
    assert_ne!(bases[0], bases[1]);
    let admin = app.admin().await;
    let category = app.category("Drama").await;
    const N: usize = 12;
    let mut customers = Vec::new();
    let mut movies = Vec::new();
    for i in 0..N {
        customers.push(register(&app, &bases[i % 2], &format!("renter{i}")).await);
        let body = movie_body(&format!("Movie {i:02}"), &[category]);
        let created =
            send(&app, &bases[(i + 1) % 2], Method::POST, "/api/v1/movies", Some(&admin), Some(body)).await;
        movies.push(uuid(&expect_status(created, StatusCode::CREATED).await["id"]));
    }

    // Act: every customer rents through one process and returns through the other, all at once.
    let flows = (0..N).map(|i| {
        let (app, bases, token, movie) = (&app, &bases, customers[i].1.clone(), movies[i]);
        async move {
            let rented = send(
                app,
                &bases[i % 2],
                Method::POST,
                &format!("/api/v1/movies/{movie}/rent"),
                Some(&token),
                None,
            )
            .await;
            let rental = uuid(&expect_status(rented, StatusCode::CREATED).await["rental_id"]);
            let path = format!("/api/v1/rentals/{rental}/return");
            let returned = send(app, &bases[(i + 1) % 2], Method::POST, &path, Some(&token), None).await;
            assert_eq!(expect_status(returned, StatusCode::OK).await["status"], "returned");
            rental
        }
    });
    let rentals = futures::future::join_all(flows).await;

    // Assert: all charged, read alternately through both processes.
    let started = Instant::now();
    for (i, rental) in rentals.iter().enumerate() {
        let charged = wait_for_rental_status(
            &app,
            &bases[i % 2],
            &customers[i].1,
            *rental,
            "charged",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(charged["charge"], json!({"days": 1, "amount_cents": 100, "currency": "EUR"}));
    }
    let charged_after = started.elapsed();
    let streams: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "select aggregate_id,
                count(*) filter (where event_type = 'RentalOpened'),
                count(*) filter (where event_type = 'RentalClosed'),
                count(*) filter (where event_type = 'ChargeAssessed'),
                count(*)
           from events where aggregate_type = 'rental' group by aggregate_id order by aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(streams.len(), N, "one rental stream per rental");
    let mut expected: Vec<String> = rentals.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(streams.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), expected);
    for (stream, opened, closed, charges, total) in &streams {
        assert_eq!((*opened, *closed, *charges, *total), (1, 1, 1, 3), "rental {stream}");
    }
    let movie_events: Vec<(String, i64, i64)> = sqlx::query_as(
        "select aggregate_id, count(*) filter (where event_type = 'MovieRented'),
                count(*) filter (where event_type = 'MovieReturned')
           from events where aggregate_type = 'movie' group by aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        movie_events.iter().all(|(_, rented, returned)| (*rented, *returned) == (1, 1)),
        "{movie_events:?}"
    );
    let on_first = wait_for_projections(&app, &bases[0], Duration::from_secs(5)).await;
    let on_second = wait_for_projections(&app, &bases[1], Duration::from_secs(5)).await;
    // The email sender's position counts emails sent, which goes on moving while the welcome
    // emails drain; every projection of the log must agree.
    let positions = |items: &[Value]| -> Vec<(String, i64)> {
        items
            .iter()
            .filter(|p| p["name"] != "notification-sender")
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["position"].as_i64().unwrap()))
            .collect()
    };
    assert_eq!(positions(&on_first), positions(&on_second), "both processes report the same progress");
    for name in ["catalogue", "rentals", "payments"] {
        assert!(on_first.iter().any(|p| p["name"] == name), "{name} in {on_first:?}");
    }
    let total: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&pool).await.unwrap();
    println!(
        "two serve processes: {N} customers rented and returned {N} movies through alternating processes; \
         all {N} charged within {charged_after:?}; {} rental streams each with 1 RentalOpened, 1 RentalClosed, \
         1 ChargeAssessed; {total} events; {} projections at lag 0 on both: {:?}",
        streams.len(),
        on_first.len(),
        positions(&on_first)
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn events_appended_while_no_projector_ran_are_projected_after_a_crash_and_verify_agrees(pool: PgPool) {
    // Arrange: a server that appends but never projects.
    let app = TestApp::process_without_projectors(pool.clone()).await;
    let (_, token) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let mut movies = Vec::new();
    for title in ["Heat", "Ronin", "Thief"] {
        movies.push(add_movie(&app, title, "Michael Mann", &[category]).await.0);
    }
    let returned_rental = app.rent(movies[0], &token).await;
    let active_rental = app.rent(movies[1], &token).await;
    let returned = app.post(&format!("/api/v1/rentals/{returned_rental}/return"), Some(&token), None).await;
    let returned_at = position_of(&expect_status(returned, StatusCode::OK).await);
    let last = last_position(&pool).await;
    assert!(returned_at <= last);

    let projected: i64 =
        sqlx::query_scalar("select count(*) from read.movie").fetch_one(&pool).await.unwrap();
    assert_eq!(projected, 0, "no movie reached the read model");
    let rows: i64 = sqlx::query_scalar("select count(*) from read.rental").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 0, "no rental reached the read model");
    let checkpoint: i64 =
        sqlx::query_scalar("select coalesce(max(last_position), 0)::int8 from projection_checkpoint")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(checkpoint < last, "checkpoints at {checkpoint}, log at {last}");
    let details = app.get(&format!("/api/v1/movies/{}", movies[0]), Some(&token)).await;
    assert_problem(details, 404, "not-found").await;

    // Act: crash it, start a normal server on the same database.
    signal(app.pid(), "KILL");
    drop(app);
    let app = TestApp::process(pool.clone()).await;

    // Assert: the new server projects everything and the payments process manager charges.
    let started = Instant::now();
    let items = wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let admin = app.admin().await;
    let charged = wait_for_rental_status(
        &app,
        &app.address,
        &admin,
        returned_rental,
        "charged",
        Duration::from_secs(5),
    )
    .await;
    let caught_up = started.elapsed();
    assert_eq!(charged["charge"], json!({"days": 1, "amount_cents": 100, "currency": "EUR"}));
    let active = expect_status(
        app.get(&format!("/api/v1/rentals/{active_rental}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(active["status"], "active");
    let projected: i64 =
        sqlx::query_scalar("select count(*) from read.movie").fetch_one(&pool).await.unwrap();
    assert_eq!(projected, 3);
    let last = last_position(&pool).await;
    let movie = expect_status(
        app.get(&format!("/api/v1/movies/{}?min_position={last}", movies[0]), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!((movie["available"].clone(), movie["times_rented"].clone()), (json!(true), json!(1)));
    let movie =
        expect_status(app.get(&format!("/api/v1/movies/{}", movies[1]), Some(&token)).await, StatusCode::OK)
            .await;
    assert_eq!(movie["available"], false);
    let me = expect_status(
        app.get(&format!("/api/v1/me?min_position={last}"), Some(&token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["balance_due"]["amount_cents"], 100);

    let (code, output) = verify(&app.database_url).await;
    assert_eq!(code, 0, "verify after recovery: {output}");

    // A corrupted read model is found.
    let corrupted =
        sqlx::query("update read.movie set title = 'X'").execute(&pool).await.unwrap().rows_affected();
    let (corrupt_code, corrupt_output) = verify(&app.database_url).await;
    assert_eq!(corrupt_code, 1, "verify after corruption: {corrupt_output}");
    assert!(corrupt_output.contains("differ"), "verify names what differs: {corrupt_output}");
    println!(
        "crash recovery: {last} events appended with projectors off (read.movie 0 rows, checkpoint {checkpoint}); \
         after kill -9 and restart, {} projections at lag 0 and the return charged 100 within {caught_up:?}; \
         verify exit {code}; after corrupting {corrupted} rows verify exit {corrupt_code}: {}",
        items.len(),
        corrupt_output.lines().filter(|l| l.contains("differ")).collect::<Vec<_>>().join(" | ")
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn once_the_catalogue_has_applied_a_command_no_plain_read_of_the_details_is_stale(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool.clone()).await;
    let (_, token) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let (movie, created_at) = add_movie(&app, "Heat", "Michael Mann", &[category]).await;
    let listed =
        app.get(&format!("/api/v1/movies?available=any&min_position={created_at}"), Some(&token)).await;
    expect_status(listed, StatusCode::OK).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, token, stop) = (
                app.client.clone(),
                app.url(&format!("/api/v1/movies/{movie}")),
                token.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut reads, mut hits, mut misses) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let response = client.get(&url).bearer_auth(&token).send().await.expect("read");
                    assert_eq!(response.status(), StatusCode::OK, "a concurrent read");
                    match cache_header(&response).as_str() {
                        "hit" => hits += 1,
                        "miss" => misses += 1,
                        other => panic!("x-cache {other:?}"),
                    }
                    reads += 1;
                    let _ = response.bytes().await;
                }
                (reads, hits, misses)
            })
        })
        .collect();

    // Act: 10 rent/return cycles; after each command, wait for the catalogue, then read twice.
    let mut checked = 0;
    let mut stale = Vec::new();
    let (mut main_hits, mut main_misses) = (0, 0);
    let mut rental = None;
    for step in 0..20 {
        let cycle = step / 2;
        let (command, answer, available) = match rental.take() {
            None => {
                let rented = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
                let rented = expect_status(rented, StatusCode::CREATED).await;
                rental = Some(uuid(&rented["rental_id"]));
                ("rent", rented, false)
            }
            Some(open) => {
                let returned = app.post(&format!("/api/v1/rentals/{open}/return"), Some(&token), None).await;
                ("return", expect_status(returned, StatusCode::OK).await, true)
            }
        };
        let position = position_of(&answer);
        let version: i64 = sqlx::query_scalar("select sequence from events where position = $1")
            .bind(position)
            .fetch_one(&pool)
            .await
            .unwrap();
        // Wait, polling back to back so the reads follow the catalogue's commit closely, until the
        // catalogue has applied the command: its checkpoint has passed (transaction id, position)
        // of the command's event, the very condition `min_position` waits for.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let applied: Option<bool> = sqlx::query_scalar(
                "select (c.last_xid, c.last_position) >= (e.transaction_id::text::bigint, e.position)
                   from events e cross join projection_checkpoint c
                  where e.position = $1 and c.name = 'catalogue'",
            )
            .bind(position)
            .fetch_one(&pool)
            .await
            .unwrap();
            if applied == Some(true) {
                break;
            }
            assert!(Instant::now() < deadline, "the catalogue did not apply position {position} within 5 s");
        }
        for read in 0..2 {
            let response = app.get(&format!("/api/v1/movies/{movie}"), Some(&token)).await;
            let cache = cache_header(&response);
            if cache == "hit" {
                main_hits += 1;
            } else {
                main_misses += 1;
            }
            let body = expect_status(response, StatusCode::OK).await;
            checked += 1;
            if body["available"] != available || body["version"] != version {
                stale.push(format!(
                    "cycle {cycle} {command} (position {position}, version {version}) read {read} ({cache}): \
                     available {} version {}",
                    body["available"], body["version"]
                ));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut reads, mut hits, mut misses) = (0, 0, 0);
    for reader in readers {
        let (r, h, m) = reader.await.expect("reader");
        (reads, hits, misses) = (reads + r, hits + h, misses + m);
    }

    // Assert
    println!(
        "cache staleness: 20 commands; 4 readers made {reads} reads ({hits} hits, {misses} misses); \
         {checked} checked reads after the catalogue caught up ({main_hits} hits, {main_misses} misses), {} stale",
        stale.len()
    );
    assert!(stale.is_empty(), "stale reads after the projector caught up:\n{}", stale.join("\n"));
    assert!(reads > 0 && hits > 0, "the readers used the cache");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_api_keeps_serving_while_redis_is_down_and_uses_it_again_once_it_is_back(pool: PgPool) {
    // Arrange: a private Redis.
    let port = free_port();
    let mut redis = tokio::task::spawn_blocking(move || RedisServer::start(port)).await.unwrap();
    let options = Options { extra_env: vec![("REDIS_URL".into(), redis.url())] };
    let app = TestApp::spawn_with(pool, options).await;
    let (_, token) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let (movie, created_at) = add_movie(&app, "Heat", "Michael Mann", &[category]).await;
    let details = format!("/api/v1/movies/{movie}");
    // `/ready` reads its state at most once a second: a change shows within about a second.
    let ready = |expected: &'static str| {
        let app = &app;
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let response = app.get("/ready", None).await;
                let body = expect_status(response, StatusCode::OK).await;
                assert_eq!(body["postgres"], "up", "{body}");
                if body["redis"] == expected || Instant::now() > deadline {
                    return body["redis"] == expected;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(ready("up").await, "redis is up at first");
    let listed = app.get(&format!("/api/v1/movies?min_position={created_at}"), Some(&token)).await;
    expect_status(listed, StatusCode::OK).await;
    let first = app.get(&details, Some(&token)).await;
    assert_eq!(cache_header(&first), "miss");
    expect_status(first, StatusCode::OK).await;
    let second = app.get(&details, Some(&token)).await;
    assert_eq!(cache_header(&second), "hit");
    expect_status(second, StatusCode::OK).await;

    // Act: Redis dies.
    redis.stop();

    // Assert: reads and commands go on, from PostgreSQL; /ready says Redis is down.
    let mut outage_reads = 0;
    let started = Instant::now();
    for _ in 0..5 {
        let response = app.get(&details, Some(&token)).await;
        assert_eq!(cache_header(&response), "miss", "no hit while Redis is down");
        let body = expect_status(response, StatusCode::OK).await;
        assert_eq!(body["available"], true);
        outage_reads += 1;
    }
    let slowest_outage_batch = started.elapsed();
    assert!(slowest_outage_batch < Duration::from_secs(3), "5 reads took {slowest_outage_batch:?}");
    let rented = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
    let rented = expect_status(rented, StatusCode::CREATED).await;
    let rental = uuid(&rented["rental_id"]);
    let fresh = app.get(&format!("{details}?min_position={}", position_of(&rented)), Some(&token)).await;
    assert_eq!(expect_status(fresh, StatusCode::OK).await["available"], false);
    let plain = app.get(&details, Some(&token)).await;
    assert_eq!(cache_header(&plain), "miss");
    assert_eq!(expect_status(plain, StatusCode::OK).await["available"], false);
    outage_reads += 2;
    assert!(ready("down").await, "/ready says redis is down");
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    let returned_at = position_of(&expect_status(returned, StatusCode::OK).await);
    let fresh = app.get(&format!("{details}?min_position={returned_at}"), Some(&token)).await;
    let fresh = expect_status(fresh, StatusCode::OK).await;
    assert_eq!((fresh["available"].clone(), fresh["times_rented"].clone()), (json!(true), json!(1)));
    outage_reads += 1;

    // Act: Redis comes back on the same port (empty).
    let _restarted = tokio::task::spawn_blocking(move || RedisServer::start(port)).await.unwrap();

    // Assert: within a few seconds reads hit again, and /ready says so.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut attempts = 0;
    let hit = loop {
        attempts += 1;
        let response = app.get(&details, Some(&token)).await;
        let cache = cache_header(&response);
        let body = expect_status(response, StatusCode::OK).await;
        if cache == "hit" {
            break body;
        }
        assert!(Instant::now() < deadline, "no cache hit within 5 s of Redis coming back ({attempts} reads)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recovered_after = started.elapsed();
    assert_eq!(hit, fresh, "the hit serves the current details");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready("up").await {
        assert!(Instant::now() < deadline, "/ready did not report redis up again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "redis outage: miss then hit; with redis down {outage_reads} reads answered 200 (miss), \
         rent and return worked, /ready 200 redis down; after restart a hit came after {attempts} reads \
         ({recovered_after:?}) and /ready says redis up"
    );
}
