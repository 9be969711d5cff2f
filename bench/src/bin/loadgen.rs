//! The load generator: a fixed number of connections, each driven by one worker that runs a
//! scenario modelled on real use, for a duration or a number of requests; then a table of
//! throughput and latency percentiles per endpoint (route template) and the error count.
//!
//! Scenarios:
//! - `browse`: list by category, search, details, weighted 2:2:4;
//! - `details`: details of a small set of movies, which the cache holds after the warm-up;
//! - `rent`: rent, return and pay cycles, each worker on a movie of its own;
//! - `accounts`: register, log in, log out;
//! - `mixed`: 70% browse, 20% rent cycles, 8% `GET /me`, 2% account cycles;
//! - `bare`: `GET {base}/` with no setup (for the `bare` server, the cached-read limit);
//! - `commands`: rent and return cycles, each worker on a movie of its own, that do not wait for
//!   the charge: each cycle pays the oldest rental of the worker's earlier cycles instead (a
//!   customer who pays later), so `charge-pending` only keeps that rental for the next cycle;
//! - `history`: rent/return latency on a movie with a long history (`--history-cycles` cycles,
//!   two events each, built first and not measured) against a fresh movie, `--samples` cycles on
//!   each, alternating, on one connection (needs admin credentials to create both movies).
//!
//! With `--rate`, the workers follow a fixed timetable instead (open loop), and latencies count
//! from when each request was due.
//!
//! Exits 1 when any answer was unexpected. `charge-pending` on a payment is expected (the
//! charge is assessed asynchronously after the return): it is retried and counted apart. So is
//! a 503 with `Retry-After` on register or log in (every password hashing slot stayed busy):
//! retried after the pause it names, its latency counted from the first attempt.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use moviestore_bench::{markdown, tsv, Recorder};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Browse,
    Details,
    Rent,
    Accounts,
    Mixed,
    Bare,
    Commands,
    History,
}

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for the moviestore API")]
struct Args {
    /// The server, without `/api/v1`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Concurrent connections, one worker each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to run (default 10 when `--requests` is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// Requests to send in all (a rent or account cycle counts as its three requests).
    #[arg(long)]
    requests: Option<u64>,
    /// Admin username, used to create movies when too few are available for rent cycles.
    #[arg(long, env = "MOVIESTORE_BENCH_ADMIN_USER")]
    admin_user: Option<String>,
    #[arg(long, env = "MOVIESTORE_BENCH_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Customers registered for the run; workers share them round-robin.
    #[arg(long, default_value_t = 8)]
    customers: usize,
    /// Movies whose details are read (the first ones of the catalogue, not used for renting).
    #[arg(long, default_value_t = 100)]
    hot_movies: usize,
    /// `history`: rent → return cycles that build the long-history movie before measuring.
    #[arg(long, default_value_t = 5000)]
    history_cycles: u64,
    /// `history`: measured rent → return cycles on each of the two movies.
    #[arg(long, default_value_t = 200)]
    samples: u64,
    /// Open loop: start this many steps per second in all (a step is one request, or one rent or
    /// account cycle), on a fixed schedule (step `i` is due at `i / rate` s), with latency
    /// measured from the due time, so a slow answer delays no measurement (no coordinated
    /// omission). `--connections` caps how many are in flight; a step no worker was free to take
    /// until more than 1 ms after its due time is counted as `started late`. Without it, each
    /// worker sends its next request as soon as the last was answered (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Also write the table as tab-separated lines to this file.
    #[arg(long)]
    tsv: Option<PathBuf>,
}

const PASSWORD: &str = "bench-password-1";
/// Unexpected answers printed to stderr (the rest are only counted).
const SHOWN_ERRORS: usize = 5;

const CATEGORY_LIST: &str = "GET /api/v1/movies?category";
const SEARCH: &str = "GET /api/v1/movies?q";
const DETAILS: &str = "GET /api/v1/movies/{id}";
const RENT: &str = "POST /api/v1/movies/{id}/rent";
const RETURN: &str = "POST /api/v1/rentals/{id}/return";
const PAY: &str = "POST /api/v1/rentals/{id}/pay";
const RENTAL: &str = "GET /api/v1/rentals/{id}";
const REGISTER: &str = "POST /api/v1/auth/register";
const LOGIN: &str = "POST /api/v1/auth/login";
/// Endpoints that shed load by design: a password hash waits at most 2 s for a hashing slot,
/// then the request is answered 503 with `Retry-After` (bounded hashing, README). A client
/// does as told: waits, tries again, and the retry is counted apart, like `charge-pending`.
const SHEDS_LOAD: [&str; 2] = [REGISTER, LOGIN];
const LOGOUT: &str = "POST /api/v1/auth/logout";
const ME: &str = "GET /api/v1/me";
const BARE: &str = "GET /";
/// From the return's answer to the accepted payment: the time the payments process manager
/// takes to charge the return, plus at most one retry pause. Not a request of its own.
const CHARGE_LAG: &str = "(return answered -> paid)";
const RENT_FRESH: &str = "POST /api/v1/movies/{id}/rent (fresh movie)";
const RETURN_FRESH: &str = "POST /api/v1/rentals/{id}/return (fresh movie)";
const RENT_LONG: &str = "POST /api/v1/movies/{id}/rent (long history)";
const RETURN_LONG: &str = "POST /api/v1/rentals/{id}/return (long history)";

/// When the run ends: a deadline, a number of requests, or both.
struct Budget {
    deadline: Option<Instant>,
    remaining: Option<AtomicU64>,
}

impl Budget {
    /// Claims `n` requests; false once the run is over.
    fn take(&self, n: u64) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(left) => {
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(n)).is_ok()
            }
        }
    }
}

/// What every worker reads.
struct Shared {
    api: String,
    base: String,
    scenario: Scenario,
    budget: Budget,
    customers: Vec<String>,
    categories: Vec<String>,
    words: Vec<String>,
    hot: Vec<String>,
    shown: AtomicUsize,
    schedule: Option<Schedule>,
}

/// The open loop's timetable: slot `i` is due at `start + i / rate`; workers take slots in turn.
struct Schedule {
    start: Instant,
    rate: f64,
    next: AtomicU64,
}

/// A request started this long after its due time counts as late.
const LATE: Duration = Duration::from_millis(1);

impl Schedule {
    /// Takes the next slot and returns its due time.
    fn take(&self) -> Instant {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// One worker's connection, randomness and records.
struct Worker {
    client: Client,
    shared: Arc<Shared>,
    rng: u64,
    rec: Recorder,
    token: String,
    movie: Option<String>,
    /// `commands`: rentals returned and not paid yet, oldest first.
    unpaid: std::collections::VecDeque<String>,
    /// In the open loop, when the current step was due: latencies are measured from it.
    due: Option<Instant>,
}

/// An answer: status, whether the cache served it, the body, the time it took.
struct Answer {
    status: StatusCode,
    cache_hit: Option<bool>,
    /// `Retry-After`, in seconds, when the answer has one.
    retry_after: Option<u64>,
    body: Value,
    latency: Duration,
}

fn client() -> anyhow::Result<Client> {
    Ok(Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn send(
    client: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Result<Answer> {
    let mut req = client.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let start = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    let cache_hit = resp.headers().get("x-cache").map(|v| v.as_bytes() == b"hit");
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = resp.bytes().await?;
    let latency = start.elapsed();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, cache_hit, retry_after, body, latency })
}

/// The problem type's slug of an error answer (`.../charge-pending` gives `charge-pending`).
fn slug(body: &Value) -> &str {
    body.get("type").and_then(Value::as_str).and_then(|t| t.rsplit('/').next()).unwrap_or("")
}

fn str_field(body: &Value, field: &str) -> anyhow::Result<String> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {field:?} in {body}"))
}

impl Worker {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough to pick operations and targets.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, list: &'a [String]) -> &'a str {
        let i = (self.next_random() % list.len() as u64) as usize;
        &list[i]
    }

    /// Sends one request and records it under `endpoint`: `Some` for a status in `ok`, `None`
    /// (an error) otherwise.
    async fn call(
        &mut self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
        ok: &[StatusCode],
    ) -> Option<Answer> {
        let sent = Instant::now();
        let waited = self.due.take().map_or(Duration::ZERO, |due| sent.saturating_duration_since(due));
        let mut retried = false;
        loop {
            match send(&self.client, method.clone(), url, token, body).await {
                Ok(mut answer) if ok.contains(&answer.status) => {
                    // After a retry, from the first attempt: the wait the server asked for counts.
                    answer.latency = if retried { sent.elapsed() } else { answer.latency } + waited;
                    self.rec.ok(endpoint, answer.latency);
                    return Some(answer);
                }
                Ok(Answer { status: StatusCode::SERVICE_UNAVAILABLE, retry_after: Some(secs), .. })
                    if SHEDS_LOAD.contains(&endpoint) && sent.elapsed() < Duration::from_secs(30) =>
                {
                    self.rec.retry(endpoint);
                    retried = true;
                    tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
                }
                Ok(answer) => {
                    self.fail(endpoint, &format!("{} {}", answer.status, answer.body));
                    return None;
                }
                Err(e) => {
                    self.fail(endpoint, &e.to_string());
                    return None;
                }
            }
        }
    }

    fn fail(&mut self, endpoint: &'static str, what: &str) {
        self.rec.error(endpoint);
        if self.shared.shown.fetch_add(1, Ordering::Relaxed) < SHOWN_ERRORS {
            eprintln!("unexpected answer from {endpoint}: {what}");
        }
    }

    async fn run(mut self) -> Recorder {
        loop {
            if !self.pace().await {
                return self.rec;
            }
            let more = match self.shared.scenario {
                Scenario::Browse => self.browse().await,
                Scenario::Details => self.details().await,
                Scenario::Rent => self.rent_cycle().await,
                Scenario::Accounts => self.account_cycle().await,
                Scenario::Mixed => self.mixed().await,
                Scenario::Bare => self.bare().await,
                Scenario::Commands => self.command_cycle().await,
                Scenario::History => false,
            };
            if !more {
                return self.rec;
            }
        }
    }

    /// In the open loop, waits for this worker's next slot (false when it falls after the
    /// deadline), notes when it was due, and counts a late start.
    async fn pace(&mut self) -> bool {
        let Some(schedule) = &self.shared.schedule else { return true };
        let due = schedule.take();
        if self.shared.budget.deadline.is_some_and(|d| due >= d) {
            return false;
        }
        // Late: no worker was free when the step fell due (the connection cap was reached or the
        // generator fell behind); timer wake-ups, a millisecond coarse, are not counted.
        if Instant::now().saturating_duration_since(due) > LATE {
            self.rec.count("started late");
        }
        tokio::time::sleep_until(due.into()).await;
        self.due = Some(due);
        true
    }

    async fn browse(&mut self) -> bool {
        if !self.shared.budget.take(1) {
            return false;
        }
        let shared = Arc::clone(&self.shared);
        let token = self.token.clone();
        match self.next_random() % 8 {
            0 | 1 => {
                let category = self.pick(&shared.categories).to_owned();
                let url = format!("{}/movies?category={category}", shared.api);
                self.call(CATEGORY_LIST, Method::GET, &url, Some(&token), None, &[StatusCode::OK]).await;
            }
            2 | 3 => {
                let mut q = self.pick(&shared.words).to_owned();
                if self.next_random().is_multiple_of(2) {
                    q.push('+');
                    q.push_str(self.pick(&shared.words));
                }
                let url = format!("{}/movies?q={q}", shared.api);
                self.call(SEARCH, Method::GET, &url, Some(&token), None, &[StatusCode::OK]).await;
            }
            _ => return self.details_once().await,
        }
        true
    }

    async fn details(&mut self) -> bool {
        if !self.shared.budget.take(1) {
            return false;
        }
        self.details_once().await
    }

    async fn details_once(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let token = self.token.clone();
        let movie = self.pick(&shared.hot).to_owned();
        let url = format!("{}/movies/{movie}", shared.api);
        if let Some(answer) =
            self.call(DETAILS, Method::GET, &url, Some(&token), None, &[StatusCode::OK]).await
        {
            self.rec.count(if answer.cache_hit == Some(true) { "cache hits" } else { "cache misses" });
        }
        true
    }

    async fn bare(&mut self) -> bool {
        if !self.shared.budget.take(1) {
            return false;
        }
        let url = format!("{}/", self.shared.base);
        self.call(BARE, Method::GET, &url, None, None, &[StatusCode::OK]).await;
        true
    }

    async fn me(&mut self) -> bool {
        if !self.shared.budget.take(1) {
            return false;
        }
        let url = format!("{}/me", self.shared.api);
        let token = self.token.clone();
        self.call(ME, Method::GET, &url, Some(&token), None, &[StatusCode::OK]).await;
        true
    }

    /// Rent, return and pay the worker's own movie. A cycle that fails part-way returns the
    /// movie if it can, so the next cycle finds it available.
    async fn rent_cycle(&mut self) -> bool {
        if !self.shared.budget.take(3) {
            return false;
        }
        let Some(movie) = self.movie.clone() else { return false };
        let api = self.shared.api.clone();
        let token = self.token.clone();
        let Some(rental) = self.rent(&api, &movie, &token).await else { return true };
        let back = format!("{api}/rentals/{rental}/return");
        if self.call(RETURN, Method::POST, &back, Some(&token), None, &[StatusCode::OK]).await.is_none() {
            return true;
        }
        self.commands(2);
        self.pay(&api, &rental, &token).await;
        true
    }

    /// Pays the rental's charge (one day at the default price plan, else what the rental says),
    /// retrying while the charge is pending, with pauses from 1 ms doubling up to 50 ms (shorter
    /// pauses from many workers become a load of their own).
    async fn pay(&mut self, api: &str, rental: &str, token: &str) {
        let url = format!("{api}/rentals/{rental}/pay");
        let mut amount = 100;
        let mut pause = Duration::from_millis(1);
        let started = Instant::now();
        loop {
            let body = json!({ "amount_cents": amount });
            let answer = match send(&self.client, Method::POST, &url, Some(token), Some(&body)).await {
                Ok(answer) => answer,
                Err(e) => return self.fail(PAY, &e.to_string()),
            };
            match answer.status {
                StatusCode::OK => {
                    self.rec.ok(PAY, answer.latency);
                    self.rec.ok(CHARGE_LAG, started.elapsed());
                    self.commands(1);
                    self.rec.count("cycles");
                    return;
                }
                StatusCode::CONFLICT
                    if slug(&answer.body) == "charge-pending"
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    self.rec.retry(PAY);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                StatusCode::UNPROCESSABLE_ENTITY if amount == 100 => {
                    // Another price plan: pay what the rental was charged.
                    self.rec.retry(PAY);
                    let read = format!("{api}/rentals/{rental}");
                    let Some(r) =
                        self.call(RENTAL, Method::GET, &read, Some(token), None, &[StatusCode::OK]).await
                    else {
                        return;
                    };
                    match r.body.pointer("/charge/amount_cents").and_then(Value::as_i64) {
                        Some(charged) if charged != 100 => amount = charged,
                        _ => return self.fail(PAY, &format!("422 {}", answer.body)),
                    }
                }
                status => return self.fail(PAY, &format!("{status} {}", answer.body)),
            }
        }
    }

    /// Rents `movie`; the new rental's id, or `None` once the failure is recorded.
    async fn rent(&mut self, api: &str, movie: &str, token: &str) -> Option<String> {
        let rent = format!("{api}/movies/{movie}/rent");
        let rented = self.call(RENT, Method::POST, &rent, Some(token), None, &[StatusCode::CREATED]).await?;
        match str_field(&rented.body, "rental_id") {
            Ok(rental) => Some(rental),
            Err(_) => {
                self.fail(RENT, "no rental_id in the answer");
                None
            }
        }
    }

    /// Rent and return the worker's own movie without waiting for the charge, then pay the oldest
    /// rental of the earlier cycles once: accepted, it is done; `charge-pending`, it waits for the
    /// next cycle. Each of the three counts as a command when accepted.
    async fn command_cycle(&mut self) -> bool {
        let requests = if self.unpaid.is_empty() { 2 } else { 3 };
        if !self.shared.budget.take(requests) {
            return false;
        }
        let Some(movie) = self.movie.clone() else { return false };
        let api = self.shared.api.clone();
        let token = self.token.clone();
        let Some(rental) = self.rent(&api, &movie, &token).await else { return true };
        self.commands(1);
        let back = format!("{api}/rentals/{rental}/return");
        if self.call(RETURN, Method::POST, &back, Some(&token), None, &[StatusCode::OK]).await.is_none() {
            return true;
        }
        self.commands(1);
        self.rec.count("cycles");
        if let Some(owed) = self.unpaid.pop_front() {
            self.pay_once(&api, &owed, &token).await;
        }
        self.unpaid.push_back(rental);
        true
    }

    /// One payment of a rental's one-day charge (the default price plan): `charge-pending` puts
    /// it back at the front of the queue, as an expected retry.
    async fn pay_once(&mut self, api: &str, rental: &str, token: &str) {
        let url = format!("{api}/rentals/{rental}/pay");
        let body = json!({ "amount_cents": 100 });
        match send(&self.client, Method::POST, &url, Some(token), Some(&body)).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                self.rec.ok(PAY, answer.latency);
                self.commands(1);
            }
            Ok(answer) if answer.status == StatusCode::CONFLICT && slug(&answer.body) == "charge-pending" => {
                self.rec.retry(PAY);
                self.unpaid.push_front(rental.to_owned());
            }
            Ok(answer) => self.fail(PAY, &format!("{} {}", answer.status, answer.body)),
            Err(e) => self.fail(PAY, &e.to_string()),
        }
    }

    fn commands(&mut self, n: u64) {
        self.rec.add("commands", n);
    }

    async fn account_cycle(&mut self) -> bool {
        if !self.shared.budget.take(3) {
            return false;
        }
        let api = self.shared.api.clone();
        let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let register =
            json!({ "username": name, "email": format!("{name}@example.com"), "password": PASSWORD });
        let url = format!("{api}/auth/register");
        if self
            .call(REGISTER, Method::POST, &url, None, Some(&register), &[StatusCode::CREATED])
            .await
            .is_none()
        {
            return true;
        }
        let url = format!("{api}/auth/login");
        let login = json!({ "username": name, "password": PASSWORD });
        let Some(answer) = self.call(LOGIN, Method::POST, &url, None, Some(&login), &[StatusCode::OK]).await
        else {
            return true;
        };
        let Ok(token) = str_field(&answer.body, "token") else {
            self.fail(LOGIN, "no token in the answer");
            return true;
        };
        let url = format!("{api}/auth/logout");
        if self
            .call(LOGOUT, Method::POST, &url, Some(&token), None, &[StatusCode::NO_CONTENT])
            .await
            .is_some()
        {
            self.rec.count("cycles");
        }
        true
    }

    async fn mixed(&mut self) -> bool {
        match self.next_random() % 100 {
            0..70 => self.browse().await,
            70..90 => self.rent_cycle().await,
            90..98 => self.me().await,
            _ => self.account_cycle().await,
        }
    }
}

/// Setup through the API: customers, categories, search words, hot movies and movies to rent.
struct Setup {
    client: Client,
    api: String,
}

impl Setup {
    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        ok: StatusCode,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.api);
        let answer = send(&self.client, method.clone(), &url, token, body)
            .await
            .with_context(|| format!("{method} {url}"))?;
        if answer.status != ok {
            bail!("{method} {path}: {} {}", answer.status, answer.body);
        }
        Ok(answer.body)
    }

    async fn register(&self) -> anyhow::Result<String> {
        let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let body = json!({ "username": name, "email": format!("{name}@example.com"), "password": PASSWORD });
        let answer =
            self.expect(Method::POST, "/auth/register", None, Some(&body), StatusCode::CREATED).await?;
        str_field(&answer, "token")
    }

    async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({ "username": username, "password": password });
        str_field(
            &self.expect(Method::POST, "/auth/login", None, Some(&body), StatusCode::OK).await?,
            "token",
        )
    }

    /// Up to `n` movie ids from `GET /movies` with `query`, following cursors, skipping `skip`.
    async fn movies(
        &self,
        token: &str,
        query: &str,
        n: usize,
        skip: &HashSet<String>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        while found.len() < n {
            let mut path = format!("/movies?limit=100&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.expect(Method::GET, &path, Some(token), None, StatusCode::OK).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                let (id, title) = (str_field(item, "id")?, str_field(item, "title")?);
                if found.len() < n && !skip.contains(&id) {
                    found.push((id, title));
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        Ok(found)
    }

    /// Makes `n` movies through the admin API, in the first category.
    async fn create_movies(&self, admin: &str, category: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let body = json!({
                "title": format!("Bench Reel {tag}"),
                "storyline": "A movie made for rent cycles of the load generator.",
                "release_date": "2001-01-01",
                "rating": 5.0,
                "director": "Bench Director",
                "category_ids": [category],
            });
            ids.push(str_field(
                &self.expect(Method::POST, "/movies", Some(admin), Some(&body), StatusCode::CREATED).await?,
                "id",
            )?);
        }
        Ok(ids)
    }
}

/// Words of three or more letters from the titles, lowercased, for searches.
fn search_words(titles: &[String]) -> Vec<String> {
    let mut words: Vec<String> = titles
        .iter()
        .flat_map(|t| t.split_whitespace())
        .filter(|w| w.len() >= 3 && w.chars().all(char::is_alphabetic))
        .map(str::to_lowercase)
        .collect();
    words.sort();
    words.dedup();
    words
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    let base = args.base.trim_end_matches('/').to_owned();
    let api = format!("{base}/api/v1");
    let setup = Setup { client: client()?, api: api.clone() };
    let needs_catalogue = !matches!(args.scenario, Scenario::Bare | Scenario::Accounts);
    let needs_rentals = matches!(args.scenario, Scenario::Rent | Scenario::Mixed | Scenario::Commands);

    let mut customers = Vec::new();
    let (mut categories, mut words, mut hot, mut to_rent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if args.scenario != Scenario::Bare {
        let wanted = args.customers.clamp(1, args.connections);
        let tasks: Vec<_> = (0..wanted)
            .map(|_| {
                let setup = Setup { client: setup.client.clone(), api: api.clone() };
                tokio::spawn(async move { setup.register().await })
            })
            .collect();
        for task in tasks {
            customers.push(task.await??);
        }
    }
    if needs_catalogue {
        let token = &customers[0];
        let listed = setup.expect(Method::GET, "/categories", Some(token), None, StatusCode::OK).await?;
        categories = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        if categories.is_empty() {
            bail!("the catalogue has no categories; run `moviestore seed` first");
        }
        if needs_rentals {
            let found = setup.movies(token, "available=true", args.connections, &HashSet::new()).await?;
            to_rent = found.into_iter().map(|(id, _)| id).collect();
            if to_rent.len() < args.connections {
                let missing = args.connections - to_rent.len();
                let (Some(user), Some(password)) = (&args.admin_user, &args.admin_password) else {
                    bail!(
                        "{} available movies for {} connections; give admin credentials to create the rest",
                        to_rent.len(),
                        args.connections
                    );
                };
                let admin = setup.login(user, password).await?;
                to_rent.extend(setup.create_movies(&admin, &categories[0], missing).await?);
            }
        }
        let skip: HashSet<String> = to_rent.iter().cloned().collect();
        let found = setup.movies(token, "available=any", args.hot_movies.max(1), &skip).await?;
        if found.is_empty() {
            bail!("no movies to read; run `moviestore seed` first");
        }
        let titles: Vec<String> = found.iter().map(|(_, t)| t.clone()).collect();
        words = search_words(&titles);
        hot = found.into_iter().map(|(id, _)| id).collect();
        // Warm the cache, as a running store's popular movies are.
        for id in &hot {
            setup.expect(Method::GET, &format!("/movies/{id}"), Some(token), None, StatusCode::OK).await?;
        }
    }

    if args.scenario == Scenario::History {
        return history(&setup, &args, &customers[0], &categories[0]).await;
    }

    let duration = args.duration.or(if args.requests.is_none() { Some(10.0) } else { None });
    let budget = Budget {
        deadline: duration.map(|s| Instant::now() + Duration::from_secs_f64(s)),
        remaining: args.requests.map(AtomicU64::new),
    };
    let shared = Arc::new(Shared {
        api,
        base,
        scenario: args.scenario,
        budget,
        customers,
        categories,
        words,
        hot,
        shown: AtomicUsize::new(0),
        schedule: args.rate.map(|rate| Schedule { start: Instant::now(), rate, next: AtomicU64::new(0) }),
    });
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let worker = Worker {
            client: client()?,
            shared: Arc::clone(&shared),
            rng: 0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001),
            rec: Recorder::default(),
            token: shared.customers.get(i % shared.customers.len().max(1)).cloned().unwrap_or_default(),
            movie: to_rent.get(i).cloned(),
            unpaid: Default::default(),
            due: None,
        };
        workers.push(tokio::spawn(worker.run()));
    }
    let mut all = Recorder::default();
    for worker in workers {
        all.merge(worker.await?);
    }
    let elapsed = started.elapsed();

    let rows = all.summary(elapsed);
    let pacing = match args.rate {
        Some(rate) => format!(", open loop at {rate} req/s (achieved: see total)"),
        None => String::new(),
    };
    println!(
        "scenario {:?}, {} connections{pacing}, {:.1} s\n",
        args.scenario,
        args.connections,
        elapsed.as_secs_f64()
    );
    print!("{}", markdown(&rows));
    let counts = &all.counts;
    for (name, n) in counts {
        println!("{name}: {n} ({:.1}/s)", *n as f64 / elapsed.as_secs_f64());
    }
    if let Some(path) = &args.tsv {
        let mut out = tsv(&rows);
        for (name, n) in counts {
            out.push_str(&format!("count:{name}\t{n}\t{:.1}\n", *n as f64 / elapsed.as_secs_f64()));
        }
        out.push_str(&format!("elapsed\t{:.3}\n", elapsed.as_secs_f64()));
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    let errors = all.errors();
    if errors > 0 {
        eprintln!("{errors} unexpected answers");
        std::process::exit(1);
    }
    Ok(())
}

/// The `history` scenario: builds a movie's history with `--history-cycles` rent → return cycles,
/// then measures `--samples` cycles on it and on a fresh movie, alternating, on one connection.
async fn history(setup: &Setup, args: &Args, customer: &str, category: &str) -> anyhow::Result<()> {
    let (Some(user), Some(password)) = (&args.admin_user, &args.admin_password) else {
        bail!("the history scenario creates its two movies: give admin credentials");
    };
    let admin = setup.login(user, password).await?;
    let movies = setup.create_movies(&admin, category, 2).await?;
    let (long, fresh) = (&movies[0], &movies[1]);
    let cycle = |movie: String| async move {
        let path = format!("/movies/{movie}/rent");
        let rented = setup.expect(Method::POST, &path, Some(customer), None, StatusCode::CREATED).await?;
        let rental = str_field(&rented, "rental_id")?;
        let back = setup
            .expect(Method::POST, &format!("/rentals/{rental}/return"), Some(customer), None, StatusCode::OK)
            .await?;
        anyhow::Ok(back["position"].as_i64().unwrap_or(0))
    };
    let building = Instant::now();
    let mut position = 0;
    for _ in 0..args.history_cycles {
        position = cycle(long.clone()).await?;
    }
    let built = building.elapsed();
    // Read once the catalogue has applied the last return, so the version is the stream's.
    let path = format!("/movies/{long}?min_position={position}");
    let details = setup.expect(Method::GET, &path, Some(customer), None, StatusCode::OK).await?;
    let version = details["version"].as_i64().unwrap_or(0);

    let mut rec = Recorder::default();
    let started = Instant::now();
    let timed = |url: String| async move {
        let answer = send(&setup.client, Method::POST, &url, Some(customer), None).await?;
        anyhow::Ok(answer)
    };
    for _ in 0..args.samples {
        for (movie, rent_name, return_name) in
            [(long, RENT_LONG, RETURN_LONG), (fresh, RENT_FRESH, RETURN_FRESH)]
        {
            let rented = timed(format!("{}/movies/{movie}/rent", setup.api)).await?;
            if rented.status != StatusCode::CREATED {
                rec.error(rent_name);
                bail!("rent of {movie}: {} {}", rented.status, rented.body);
            }
            rec.ok(rent_name, rented.latency);
            let rental = str_field(&rented.body, "rental_id")?;
            let back = timed(format!("{}/rentals/{rental}/return", setup.api)).await?;
            if back.status != StatusCode::OK {
                rec.error(return_name);
                bail!("return of {rental}: {} {}", back.status, back.body);
            }
            rec.ok(return_name, back.latency);
        }
    }
    let elapsed = started.elapsed();
    let rows = rec.summary(elapsed);
    println!(
        "scenario History, 1 connection, {:.1} s (the long history: {version} events, built in {:.1} s)\n",
        elapsed.as_secs_f64(),
        built.as_secs_f64()
    );
    print!("{}", markdown(&rows));
    if let Some(path) = &args.tsv {
        let mut out = tsv(&rows);
        out.push_str(&format!("count:history events\t{version}\t0\n"));
        out.push_str(&format!("elapsed\t{:.3}\n", elapsed.as_secs_f64()));
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
