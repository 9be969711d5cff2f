//! Faults done for real: races on one copy, `kill -9` under load, a PostgreSQL outage on a private
//! cluster. Each test prints what it proved (requests, events, mismatches); run one with
//! `cargo test --test e2e faults:: -- --nocapture` to see the figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::read_side::{send, wait_for_projections, wait_for_rental_status};
use crate::resilience::{free_port, register, verify, Peer};
use crate::support::*;

/// The status and, for a problem, its slug.
async fn outcome(response: reqwest::Response) -> (u16, String) {
    let (status, slug, _) = answer(response).await;
    (status, slug)
}

fn outcome_of(result: &Result<reqwest::Response, reqwest::Error>) -> u16 {
    result.as_ref().map_or(0, |r| r.status().as_u16())
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn of_n_simultaneous_rents_of_one_movie_exactly_one_wins_for_every_n_up_to_64(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let category = app.category("Drama").await;
    let mut tokens = Vec::new();
    for i in 0..16 {
        tokens.push(app.customer(&format!("racer{i}")).await.1);
    }
    let mut figures = Vec::new();

    for n in [2usize, 3, 4, 8, 16, 32, 64] {
        let movie = app.movie(&format!("Contested {n}"), &[category]).await;

        // Act
        let attempts = (0..n).map(|i| {
            let token = tokens[i % tokens.len()].clone();
            let app = &app;
            async move {
                outcome(app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await).await
            }
        });
        let outcomes = futures::future::join_all(attempts).await;

        // Assert
        let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
        let refused = outcomes.iter().filter(|(s, slug)| *s == 409 && slug == "not-available").count();
        assert_eq!((created, refused), (1, n - 1), "{n} rents: {outcomes:?}");
        let events = app.events_of("movie", movie).await;
        let rents = events.iter().filter(|(kind, _, _)| kind == "MovieRented").count();
        assert_eq!(rents, 1, "{n} rents: exactly one MovieRented event");
        figures.push(format!("{n}: 1 created, {} refused, 1 event", n - 1));
    }
    println!("simultaneous rents of one movie, 0 server errors: {}", figures.join("; "));
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn racing_rent_against_retire_return_against_pay_and_two_payers_ends_in_allowed_states(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let category = app.category("Drama").await;
    let (_, token) = app.customer("racer").await;
    let rounds = 8;
    let mut seen: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut note =
        |race: &'static str, outcome: String| *seen.entry(race).or_default().entry(outcome).or_default() += 1;

    for round in 0..rounds {
        // Rent against retire: one of them wins, the other is refused as the domain says.
        let movie = app.movie(&format!("Retiring {round}"), &[category]).await;
        let (rent_path, movie_path) =
            (format!("/api/v1/movies/{movie}/rent"), format!("/api/v1/movies/{movie}"));
        let (rent, retire) =
            tokio::join!(app.post(&rent_path, Some(&token), None), app.delete(&movie_path, Some(&admin)));
        let (rent, retire) = (outcome(rent).await, outcome(retire).await);
        let events: Vec<String> =
            app.events_of("movie", movie).await.into_iter().map(|(k, _, _)| k).collect();
        match (rent.0, retire.0) {
            (201, 409) => {
                assert_eq!(retire.1, "not-available", "round {round}: a rented movie is not retired");
                assert_eq!(events, ["MovieAdded", "MovieRented"], "round {round}");
            }
            (409, 204) => {
                assert_eq!(rent.1, "not-available", "round {round}: a retired movie is not rented");
                assert_eq!(events, ["MovieAdded", "MovieRetired"], "round {round}");
            }
            other => panic!("round {round}: rent vs retire ended {other:?} with events {events:?}"),
        }
        note("rent vs retire", format!("rent {} / retire {}", rent.0, retire.0));

        // Return against pay: the pay is refused (not returned yet, or its charge is pending).
        let movie = app.movie(&format!("Returning {round}"), &[category]).await;
        let rental = app.rent(movie, &token).await;
        let (return_path, pay_path) =
            (format!("/api/v1/rentals/{rental}/return"), format!("/api/v1/rentals/{rental}/pay"));
        let (ret, pay) = tokio::join!(
            app.post(&return_path, Some(&token), None),
            app.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))),
        );
        let (ret, pay) = (outcome(ret).await, outcome(pay).await);
        assert_eq!(ret.0, 200, "round {round}: the return succeeds");
        let paid_or_refused =
            pay.0 == 409 && ["not-returned", "charge-pending"].contains(&pay.1.as_str()) || pay.0 == 200;
        assert!(paid_or_refused, "round {round}: pay racing a return ended {pay:?}");
        note("return vs pay", format!("return {} / pay {} {}", ret.0, pay.0, pay.1));

        // Two payers of one charge (the customer and an admin): exactly one pays.
        if pay.0 == 200 {
            continue;
        }
        let rental_view =
            wait_for_rental_status(&app, &app.address, &token, rental, "charged", Duration::from_secs(10))
                .await;
        let amount = json!({"amount_cents": rental_view["charge"]["amount_cents"]});
        let (first, second) = tokio::join!(
            app.post(&pay_path, Some(&token), Some(amount.clone())),
            app.post(&pay_path, Some(&admin), Some(amount.clone())),
        );
        let mut payers = [outcome(first).await, outcome(second).await];
        payers.sort();
        assert_eq!(payers[0].0, 200, "round {round}: one payer succeeds: {payers:?}");
        assert_eq!(payers[1], (409, "already-paid".to_string()), "round {round}: {payers:?}");
        let paid =
            app.events_of("rental", rental).await.into_iter().filter(|(k, _, _)| k == "RentalPaid").count();
        assert_eq!(paid, 1, "round {round}: exactly one RentalPaid");
        note("two payers", "one 200, one 409 already-paid".into());
    }
    // The balance is read from the rentals read model: wait until it has applied the last payment.
    wait_for_projections(&app, &app.address, Duration::from_secs(10)).await;
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(me["balance_due"]["amount_cents"], 0, "every charge was paid once: {me}");
    println!("{rounds} rounds of each race, 0 server errors, outcomes: {seen:?}");
}

/// What one client saw of one command.
#[derive(Debug, Clone)]
enum Sent {
    /// Answered 2xx; the rental it concerns.
    Acked { kind: &'static str, rental: Uuid },
    /// No answer (connection lost) or a 5xx; the rental, when the client knew it.
    Unknown { kind: &'static str, rental: Option<Uuid> },
}

/// One client's loop against the process at `base`: rent → return → pay on its own movie, until
/// a request goes unanswered (the process died) or `stop` passes. Returns what it sent.
async fn client_loop(
    client: reqwest::Client,
    base: String,
    token: String,
    movie: Uuid,
    mut active: Option<Uuid>,
    stop: Instant,
    log: Arc<Mutex<Vec<Sent>>>,
) -> Option<Uuid> {
    let post = |path: String, body: Option<Value>| {
        let mut request = client.post(format!("{base}{path}")).bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.timeout(Duration::from_secs(5)).send()
    };
    while Instant::now() < stop {
        match active {
            None => {
                let result = post(format!("/api/v1/movies/{movie}/rent"), None).await;
                match outcome_of(&result) {
                    201 => {
                        let body: Value = result.unwrap().json().await.unwrap_or(Value::Null);
                        let rental = uuid(&body["rental_id"]);
                        log.lock().await.push(Sent::Acked { kind: "rent", rental });
                        active = Some(rental);
                    }
                    status if status == 0 || status >= 500 => {
                        log.lock().await.push(Sent::Unknown { kind: "rent", rental: None });
                        return None;
                    }
                    status => panic!("rent answered {status}"),
                }
            }
            Some(rental) => {
                let result = post(format!("/api/v1/rentals/{rental}/return"), None).await;
                match outcome_of(&result) {
                    200 => log.lock().await.push(Sent::Acked { kind: "return", rental }),
                    status if status == 0 || status >= 500 => {
                        log.lock().await.push(Sent::Unknown { kind: "return", rental: Some(rental) });
                        return Some(rental);
                    }
                    status => panic!("return answered {status}"),
                }
                active = None;
                // Pay once the charge is assessed (the process manager runs asynchronously).
                loop {
                    let result =
                        post(format!("/api/v1/rentals/{rental}/pay"), Some(json!({"amount_cents": 100})))
                            .await;
                    match outcome_of(&result) {
                        200 => {
                            log.lock().await.push(Sent::Acked { kind: "pay", rental });
                            break;
                        }
                        409 => tokio::time::sleep(Duration::from_millis(5)).await,
                        status if status == 0 || status >= 500 => {
                            log.lock().await.push(Sent::Unknown { kind: "pay", rental: Some(rental) });
                            return None;
                        }
                        status => panic!("pay answered {status}"),
                    }
                    if Instant::now() >= stop {
                        break;
                    }
                }
            }
        }
    }
    active
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn kill_9_under_load_loses_no_acknowledged_command_and_the_read_models_catch_up(pool: PgPool) {
    // Arrange: an observer without projectors; the load goes to a peer that is killed each round.
    let app = TestApp::process_without_projectors(pool.clone()).await;
    let clients = 8;
    let category = app.category("Drama").await;
    let mut movies = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..clients {
        movies.push(app.movie(&format!("Crash test {i}"), &[category]).await);
        tokens.push(register(&app, &app.address, &format!("crasher{i}")).await.1);
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let prefix = format!("test-{}:", Uuid::now_v7());
    let mut active: Vec<Option<Uuid>> = vec![None; clients];
    let kill_points = [Duration::from_millis(300), Duration::from_millis(900), Duration::from_millis(1600)];

    // Act: each round drives the load, kills the peer with SIGKILL at its point, and starts anew.
    for (round, kill_after) in kill_points.iter().enumerate() {
        let peer = Peer::start(&app.database_url, &prefix);
        if round > 0 {
            // What the clients lost track of in the crash, they learn from the read side.
            wait_for_projections(&app, &peer.address, Duration::from_secs(30)).await;
            for (i, token) in tokens.iter().enumerate() {
                let response = send(
                    &app,
                    &peer.address,
                    Method::GET,
                    "/api/v1/rentals?status=active",
                    Some(token),
                    None,
                )
                .await;
                let body = expect_status(response, StatusCode::OK).await;
                active[i] = body["items"].as_array().unwrap().first().map(|r| uuid(&r["id"]));
            }
        }
        let stop = Instant::now() + *kill_after + Duration::from_secs(2);
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                tokio::spawn(client_loop(
                    app.client.clone(),
                    peer.address.clone(),
                    tokens[i].clone(),
                    movies[i],
                    active[i],
                    stop,
                    log.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(*kill_after).await;
        signal(peer.pid(), "KILL");
        for task in tasks {
            task.await.expect("client task");
        }
        drop(peer);
    }
    let peer = Peer::start(&app.database_url, &prefix);
    wait_for_projections(&app, &peer.address, Duration::from_secs(30)).await;

    // Assert: every acknowledged command has its event; every event is visible through the API.
    let log = log.lock().await.clone();
    let events: Vec<(String, Value)> = sqlx::query_as(
        "select event_type, payload from events where aggregate_type = 'movie' or aggregate_type = 'rental'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let rental_events: Vec<(String, String)> =
        sqlx::query_as("select aggregate_id, event_type from events where aggregate_type = 'rental'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let rented: HashSet<Uuid> = events
        .iter()
        .filter(|(kind, _)| kind == "MovieRented")
        .map(|(_, payload)| uuid(&payload["rental_id"]))
        .collect();
    let returned: HashSet<Uuid> = events
        .iter()
        .filter(|(kind, _)| kind == "MovieReturned")
        .map(|(_, payload)| uuid(&payload["rental_id"]))
        .collect();
    let mut per_rental: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (id, kind) in &rental_events {
        per_rental.entry(id.parse().unwrap()).or_default().push(kind.clone());
    }
    let mut mismatches = Vec::new();
    let (mut acked, mut unknown, mut unknown_done) = (0, 0, 0);
    for sent in &log {
        match sent {
            Sent::Acked { kind, rental } => {
                acked += 1;
                let present = match *kind {
                    "rent" => rented.contains(rental),
                    "return" => returned.contains(rental),
                    _ => per_rental.get(rental).is_some_and(|e| e.iter().any(|k| k == "RentalPaid")),
                };
                if !present {
                    mismatches.push(format!("acknowledged {kind} of {rental} has no event"));
                }
            }
            Sent::Unknown { kind, rental } => {
                unknown += 1;
                // It may or may not have taken effect; if it did, the read side must show it
                // (checked for every rental below).
                let took_effect = match (*kind, rental) {
                    ("return", Some(rental)) => returned.contains(rental),
                    ("pay", Some(rental)) => {
                        per_rental.get(rental).is_some_and(|e| e.iter().any(|k| k == "RentalPaid"))
                    }
                    _ => false,
                };
                unknown_done += usize::from(took_effect);
            }
        }
    }
    // Each rental in the log is known to the read side, in the state its events say.
    let admin = app.admin().await;
    for rental in &rented {
        let response =
            send(&app, &peer.address, Method::GET, &format!("/api/v1/rentals/{rental}"), Some(&admin), None)
                .await;
        let body = expect_status(response, StatusCode::OK).await;
        let kinds = per_rental.get(rental).cloned().unwrap_or_default();
        let expected = if kinds.iter().any(|k| k == "RentalPaid") {
            "paid"
        } else if kinds.iter().any(|k| k == "ChargeAssessed") {
            "charged"
        } else if returned.contains(rental) {
            "returned"
        } else {
            "active"
        };
        if body["status"] != expected {
            mismatches
                .push(format!("rental {rental}: read model says {}, log says {expected}", body["status"]));
        }
        let opened = kinds.iter().filter(|k| *k == "RentalOpened").count();
        let charged = kinds.iter().filter(|k| *k == "ChargeAssessed").count();
        if opened != 1 || charged != usize::from(returned.contains(rental)) {
            mismatches.push(format!("rental {rental}: {opened} RentalOpened, {charged} ChargeAssessed"));
        }
    }
    let (code, report) = verify(&app.database_url).await;
    assert_eq!(code, 0, "verify after the crashes: {report}");
    assert!(mismatches.is_empty(), "{} mismatches: {mismatches:#?}", mismatches.len());
    assert!(acked > 3 * clients, "the load did real work: {acked} commands acknowledged");
    println!(
        "kill -9 at {kill_points:?}: {} commands sent, {acked} acknowledged (0 lost), {unknown} unanswered \
         ({unknown_done} of them took effect, all visible through the API); \
         {} rentals and {} movie/rental events checked, 0 mismatches, verify exit 0",
        log.len(),
        rented.len(),
        events.len()
    );
}

/// A private PostgreSQL cluster on a free port, owned by the `postgres` account (the server
/// refuses to run as root); stopped and removed on drop.
struct PrivateCluster {
    dir: std::path::PathBuf,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivateCluster {
    fn bin_dir() -> Option<std::path::PathBuf> {
        let root = std::path::Path::new("/usr/lib/postgresql");
        let mut versions: Vec<_> = std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).collect();
        versions.sort();
        versions.into_iter().rev().map(|v| v.join("bin")).find(|bin| bin.join("pg_ctl").exists())
    }

    fn as_postgres(&self, program: &str, args: &[&str]) -> std::process::ExitStatus {
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect(program)
    }

    fn create() -> Self {
        let bin = Self::bin_dir().expect("PostgreSQL server binaries (postgresql package)");
        let dir = std::env::temp_dir().join(format!("moviestore-pg-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown the cluster directory");
        }
        let cluster = Self { dir, port: free_port(), bin };
        let data = cluster.data();
        let status =
            cluster.as_postgres("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"]);
        assert!(status.success(), "initdb");
        cluster.start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/moviestore", self.port)
    }

    fn start(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("server.log").display().to_string();
        let status =
            self.as_postgres("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]);
        assert!(status.success(), "pg_ctl start");
    }

    fn stop(&self) {
        let status = self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(status.success(), "pg_ctl stop");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn a_postgresql_outage_gives_503_not_hangs_and_the_api_and_projectors_recover_without_a_restart() {
    // Arrange: the binary, with its default timeouts, against a cluster of its own, which the test
    // stops and starts.
    let cluster = PrivateCluster::create();
    let (child, address) = wait_for_listening(start(&cluster.url(), &Options::default()));
    let mut child = scopeguard(child);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let call = |method: Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut request = client.request(method, format!("{address}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let login = call(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})),
    );
    let admin = login.await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let category =
        call(Method::POST, "/api/v1/categories", Some(&admin), Some(json!({"name": "Drama"}))).await.unwrap();
    let category = uuid(&category.json::<Value>().await.unwrap()["id"]);
    let mut movies = Vec::new();
    for i in 0..4 {
        let body = movie_body(&format!("Outage {i}"), &[category]);
        let created = call(Method::POST, "/api/v1/movies", Some(&admin), Some(body)).await.unwrap();
        movies.push(uuid(&created.json::<Value>().await.unwrap()["id"]));
    }
    let customer = call(
        Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"username": "outage", "email": "outage@example.com", "password": "password-123"})),
    )
    .await
    .unwrap();
    let token = customer.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    // Warm both caches: the token in the process, each movie's details in Redis.
    let deadline = Instant::now() + Duration::from_secs(15);
    for movie in &movies {
        loop {
            let read =
                call(Method::GET, &format!("/api/v1/movies/{movie}"), Some(&token), None).await.unwrap();
            if read.headers().get("x-cache").is_some_and(|v| v == "hit") {
                break;
            }
            assert!(Instant::now() < deadline, "movie {movie} never served from the cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Act: stop PostgreSQL and keep sending reads, commands and `/ready`, each round's five at
    // once. No answer can come from a cache: a cached movie is served only to an authenticated
    // caller, and the process stops trusting its token cache when its LISTEN connection drops
    // (at once, as a rule) or at the latest when the lease it renews in PostgreSQL runs out, LEASE
    // after the server went away. A request in between could be authenticated from the cache and
    // read a movie from Redis (a 200); past that, every request needs PostgreSQL.
    cluster.stop();
    tokio::time::sleep(api::accounts::token_cache::LEASE).await;
    let mut statuses: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut missing_retry_after = 0;
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        let movie = movies[round % movies.len()];
        let requests = [
            (Method::GET, format!("/api/v1/movies/{movie}")),
            (Method::GET, "/api/v1/movies".to_string()),
            (Method::GET, "/api/v1/me".to_string()),
            (Method::POST, format!("/api/v1/movies/{movie}/rent")),
            (Method::GET, "/ready".to_string()),
        ];
        let answers = futures::future::join_all(requests.into_iter().map(|(method, path)| {
            let token = token.clone();
            let call = &call;
            async move {
                let started = Instant::now();
                let response = call(method, &path, Some(&token), None).await.expect("an answer, not a hang");
                let elapsed = started.elapsed();
                let retry_after = response.headers().contains_key("retry-after");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                // A problem's slug, or `/ready`'s own status.
                let what = body["type"]
                    .as_str()
                    .and_then(|t| t.rsplit('/').next())
                    .or(body["status"].as_str())
                    .unwrap_or_default()
                    .to_string();
                (status, what, retry_after, elapsed)
            }
        }))
        .await;
        for (status, what, retry_after, elapsed) in answers {
            slowest = slowest.max(elapsed);
            if status == 503 && !retry_after {
                missing_retry_after += 1;
            }
            *statuses.entry((status, what)).or_default() += 1;
        }
    }
    let health = call(Method::GET, "/health", None, None).await.unwrap().status();

    // Assert: every request said 503 `unavailable`, with Retry-After, within the pool's default
    // acquire timeout (3 s) and well inside the request timeout (10 s).
    assert_eq!(health, StatusCode::OK, "the process stays alive");
    let expected = BTreeMap::from([((503, "unavailable".to_string()), ROUNDS * 5)]);
    assert_eq!(statuses, expected, "during the outage every request answers 503");
    assert_eq!(missing_retry_after, 0, "every 503 carries Retry-After");
    assert!(slowest < Duration::from_secs(5), "no request hung: slowest {slowest:?}");

    // Recovery: start PostgreSQL again; the same process serves and projects again.
    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rental = loop {
        let response = call(Method::POST, &format!("/api/v1/movies/{}/rent", movies[0]), Some(&token), None)
            .await
            .unwrap();
        if response.status() == StatusCode::CREATED {
            break uuid(&response.json::<Value>().await.unwrap()["rental_id"]);
        }
        assert!(Instant::now() < deadline, "the API did not recover: {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let returned =
        call(Method::POST, &format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await.unwrap();
    assert_eq!(returned.status(), StatusCode::OK);
    // Failed batches back off (up to 30 s), so allow for one full back-off.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let response =
            call(Method::GET, &format!("/api/v1/rentals/{rental}"), Some(&token), None).await.unwrap();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if body["status"] == "charged" {
            break;
        }
        assert!(Instant::now() < deadline, "the projectors did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = call(Method::GET, "/ready", None, None).await.unwrap().status();
    assert_eq!(ready, StatusCode::OK, "ready again");
    let _ = child.0.kill();
    println!(
        "PostgreSQL stopped: {} requests answered {statuses:?} (0 other 5xx, 0 hangs, slowest {slowest:?}); \
         restarted: commands and the payments process manager resumed in the same process",
        ROUNDS * 5
    );
}

/// Kills the child when the test ends, whatever way it ends.
struct ChildGuard(std::process::Child);

fn scopeguard(child: std::process::Child) -> ChildGuard {
    ChildGuard(child)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
