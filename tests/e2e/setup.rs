//! A fresh machine's set-up: the private PostgreSQL (started, stopped, restarted with its data,
//! joined by a worker, recovered after kill -9, refused without server programs), the README's
//! walk-through run as written, CORS, and the monitoring files against what the binary exports.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

/// A fresh data folder under the temporary directory, removed on drop. The private cluster's
/// account must be able to enter it, so it is made world-enterable (0755).
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("moviestore-data-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        Self(dir)
    }

    fn pgdata(&self) -> PathBuf {
        self.0.join("postgres")
    }

    /// The pid of the cluster's postmaster, while its `postmaster.pid` exists.
    fn postmaster_pid(&self) -> Option<u32> {
        let contents = std::fs::read_to_string(self.pgdata().join("postmaster.pid")).ok()?;
        contents.lines().next()?.trim().parse().ok()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // Whatever a failed test left running is stopped before its folder goes.
        let server = self.postmaster_pid().filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
        });
        if let Some(pid) = server {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether a process runs (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, tail)| tail.trim_start().to_string()))
        .is_some_and(|tail| !tail.starts_with('Z') && !tail.starts_with('X'))
}

/// Waits until no process of the cluster in `pgdata` runs any more.
fn wait_until_cluster_gone(pgdata: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = pgdata.display().to_string();
    loop {
        let running = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|pid| alive(*pid))
            .any(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
            });
        if !running {
            return;
        }
        assert!(Instant::now() < deadline, "the cluster in {needle} still runs after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `moviestore` process on the private PostgreSQL of `data`, with JSON logs on a file.
struct Process {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
}

impl Process {
    fn command(data: &Path, sub: &str) -> Command {
        let mut command = Command::new(binary());
        command
            .arg(sub)
            .env_remove("DATABASE_URL")
            .env("MOVIESTORE_EMBEDDED_POSTGRES", "always")
            .env("MOVIESTORE_DATA_DIR", data)
            .env("MOVIESTORE_ADDR", "127.0.0.1:0")
            .env("MOVIESTORE_ADMIN", format!("{ADMIN_USERNAME}:{ADMIN_PASSWORD}"))
            .env("MOVIESTORE_REDIS_PREFIX", format!("test-{}:", Uuid::now_v7()))
            .env("MOVIESTORE_ARGON2_MEMORY_KIB", "512")
            .env("MOVIESTORE_ARGON2_ITERATIONS", "1")
            .env("MOVIESTORE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = command.stdout(Stdio::piped()).stderr(file).spawn().expect("start moviestore");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, stdout: rx, log }
    }

    fn start(data: &DataDir, sub: &str) -> Self {
        let log = data.0.join(format!("{sub}-{}.log", Uuid::now_v7()));
        Self::spawn(Self::command(&data.0, sub), log)
    }

    /// Waits for a line of standard output containing `needle`; returns what follows it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Ok(line) = self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some((_, rest)) = line.split_once(needle) {
                return rest.trim().to_string();
            }
        }
        panic!("no {needle:?} line in time; log: {}", self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log line whose message is `message`.
    fn log_line(&self, message: &str) -> Value {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} log line in: {}", self.logs()))
    }

    fn terminate(self) -> std::process::ExitStatus {
        self.stop_with("TERM")
    }

    fn stop_with(mut self, name: &str) -> std::process::ExitStatus {
        signal(self.child.id(), name);
        self.child.wait().unwrap()
    }

    fn kill9(mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    /// A test that failed half-way leaves no process behind (a no-op once it has exited).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn send(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn login(base: &str, username: &str, password: &str) -> String {
    let (status, body) = send(
        base,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "login {username}: {body}");
    body["token"].as_str().unwrap().to_string()
}

/// Register, rent, return, wait for the charge, pay: the customer's whole flow. Returns the
/// rental id.
async fn rent_return_pay(base: &str, customer: &str) -> String {
    let admin = login(base, ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let (status, category) = send(
        base,
        Method::POST,
        "/api/v1/categories",
        Some(&admin),
        Some(json!({"name": format!("Noir {customer}")})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{category}");
    let category = uuid(&category["id"]);
    let (status, movie) = send(
        base,
        Method::POST,
        "/api/v1/movies",
        Some(&admin),
        Some(movie_body("The Third Man", &[category])),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{movie}");
    let movie = movie["id"].as_str().unwrap().to_string();
    let (status, registered) = send(
        base,
        Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"username": customer, "email": format!("{customer}@example.com"), "password": "password-123"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let token = registered["token"].as_str().unwrap().to_string();
    let (status, rented) =
        send(base, Method::POST, &format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await;
    assert_eq!(status, StatusCode::CREATED, "{rented}");
    let rental = rented["rental_id"].as_str().unwrap().to_string();
    let (status, returned) =
        send(base, Method::POST, &format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{returned}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, paid) = send(
            base,
            Method::POST,
            &format!("/api/v1/rentals/{rental}/pay"),
            Some(&token),
            Some(json!({"amount_cents": 100})),
        )
        .await;
        if status == StatusCode::OK {
            assert_eq!(paid["status"], "paid", "{paid}");
            break;
        }
        assert_eq!(status, StatusCode::CONFLICT, "pay: {paid}");
        assert!(Instant::now() < deadline, "the charge was not assessed within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rental
}

#[tokio::test]
async fn the_private_postgresql_is_created_keeps_its_data_across_restarts_and_is_joined_by_a_worker() {
    let data = DataDir::new();

    // First start: a cluster is created under the data folder and started.
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    let used = serve.log_line("using the private PostgreSQL");
    assert_eq!(used["how"], "created and started", "{used}");
    let password = std::fs::read_to_string(data.0.join("postgres.password")).unwrap();
    assert!(password.trim().len() >= 32, "a generated password");
    assert!(!serve.logs().contains(password.trim()), "the password is never logged");
    let first_line: Value = serde_json::from_str(serve.logs().lines().next().unwrap()).unwrap();
    assert_eq!(
        first_line["message"], "using the private PostgreSQL",
        "the first log line names the database"
    );
    assert!(
        first_line["database"].as_str().unwrap().starts_with("postgres://moviestore@127.0.0.1:"),
        "{first_line}"
    );
    let postmaster = data.postmaster_pid().expect("the cluster runs");
    let uid = std::fs::read_to_string(format!("/proc/{postmaster}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().next().unwrap().to_string()))
        .unwrap();
    assert_ne!(uid, "0", "the server never runs as root");
    let socket_dir = data.pgdata();
    assert!(
        std::fs::read_dir(&socket_dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL.")),
        "a Unix socket in the data folder"
    );

    let rental = rent_return_pay(&base, "harry").await;

    // A worker of the same data folder joins the running cluster, and leaving stops nothing.
    let worker = Process::start(&data, "worker");
    worker.wait_for("worker running");
    assert_eq!(worker.log_line("using the private PostgreSQL")["how"], "joined");
    assert!(worker.terminate().success(), "the worker exits 0");
    assert!(alive(postmaster), "the worker did not stop a cluster it did not start");
    let (status, _) = send(&base, Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::OK);

    // SIGTERM: serve exits 0 and stops the cluster it started.
    assert!(serve.terminate().success(), "serve exits 0 on SIGTERM");
    wait_until_cluster_gone(&data.pgdata());
    assert!(data.postmaster_pid().is_none(), "no postmaster.pid is left");

    // Second start: the same cluster, the same data.
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    assert_eq!(serve.log_line("using the private PostgreSQL")["how"], "started");
    let token = login(&base, "harry", "password-123").await;
    let (status, body) =
        send(&base, Method::GET, &format!("/api/v1/rentals/{rental}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "paid", "the paid rental survived the restart: {body}");
    // SIGINT (Ctrl-C) stops it the same way.
    assert!(serve.stop_with("INT").success(), "serve exits 0 on SIGINT");
    wait_until_cluster_gone(&data.pgdata());
    assert!(data.postmaster_pid().is_none(), "no postmaster.pid is left");
}

#[tokio::test]
async fn a_crash_of_ours_or_of_the_server_leaves_no_cluster_that_blocks_the_next_start() {
    let data = DataDir::new();
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    let rental = rent_return_pay(&base, "lime").await;

    // kill -9 of serve: its cluster keeps running; the next process adopts it and, as its new
    // owner, stops it at exit.
    let postmaster = data.postmaster_pid().unwrap();
    serve.kill9();
    assert!(alive(postmaster), "the server outlives a killed owner");
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    assert_eq!(serve.log_line("using the private PostgreSQL")["how"], "adopted (its owner is gone)");
    assert_eq!(data.postmaster_pid(), Some(postmaster), "the same server");
    login(&base, "lime", "password-123").await;

    // kill -9 of serve and of the server: a stale postmaster.pid stays behind.
    serve.kill9();
    signal(postmaster, "KILL");
    wait_until_cluster_gone(&data.pgdata());
    assert_eq!(data.postmaster_pid(), Some(postmaster), "the stale postmaster.pid is there");
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    assert_eq!(serve.log_line("using the private PostgreSQL")["how"], "started");
    assert!(serve.logs().contains("removing a stale postmaster.pid"), "{}", serve.logs());
    let token = login(&base, "lime", "password-123").await;
    // The read models catch up with the log after each start (the payment's may not have been
    // applied before one of the kills): wait for it rather than race it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            send(&base, Method::GET, &format!("/api/v1/rentals/{rental}"), Some(&token), None).await;
        if (status, body["status"].clone()) == (StatusCode::OK, json!("paid")) {
            break;
        }
        assert!(Instant::now() < deadline, "the paid rental did not survive the crashes: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serve.terminate().success());
    wait_until_cluster_gone(&data.pgdata());

    // A postmaster.pid naming a live process that is no PostgreSQL server (its pid was reused).
    let pid_file = data.pgdata().join("postmaster.pid");
    std::fs::write(&pid_file, format!("{}\n{}\n0\n5432\n", std::process::id(), data.pgdata().display()))
        .unwrap();
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    login(&base, "lime", "password-123").await;
    assert!(serve.terminate().success());
    wait_until_cluster_gone(&data.pgdata());
}

#[tokio::test]
async fn as_an_unprivileged_user_the_private_postgresql_runs_under_that_user() {
    let data = DataDir::new();
    // Root runs the binary as `nobody`, from a copy it may execute, in a folder it owns; anyone
    // else is already unprivileged.
    let (program, log) = (data.0.join("moviestore"), data.0.join("serve.log"));
    std::fs::copy(binary(), &program).unwrap();
    let mut command = Process::command(&data.0, "serve");
    let inner = std::mem::replace(&mut command, Command::new("setpriv"));
    let as_root = is_root();
    if as_root {
        let status = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&data.0).status().unwrap();
        assert!(status.success());
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&program)
            .arg("serve");
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command.env("HOME", &data.0).current_dir(&data.0).stdin(Stdio::null());
    } else {
        command = inner;
    }
    std::fs::File::create(&log).unwrap();
    if as_root {
        let status = Command::new("chown").args(["nobody:nogroup"]).arg(&log).status().unwrap();
        assert!(status.success());
    }
    let serve = Process::spawn(command, log);
    let base = serve.wait_for("listening on ");
    assert_eq!(serve.log_line("using the private PostgreSQL")["how"], "created and started");
    let postmaster = data.postmaster_pid().unwrap();
    let owner = |pid: u32| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
    };
    assert_eq!(owner(postmaster), owner(serve.child.id()), "the cluster runs as the user who started it");
    assert_ne!(owner(postmaster), 0);
    let (status, body) = send(
        &base,
        Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"username": "holly", "email": "holly@example.com", "password": "password-123"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(serve.terminate().success());
    wait_until_cluster_gone(&data.pgdata());
}

#[tokio::test]
async fn without_postgresql_server_programs_it_exits_1_naming_what_to_install() {
    let data = DataDir::new();
    let empty = data.0.join("no-programs-here");
    std::fs::create_dir_all(&empty).unwrap();
    let output = Process::command(&data.0, "serve")
        .env("MOVIESTORE_PG_BIN", &empty)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in
        ["no PostgreSQL server programs", "apt-get install postgresql", "DATABASE_URL", "docker compose up"]
    {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(!data.pgdata().join("PG_VERSION").exists(), "no cluster was made");
}

/// The shell block of the README's "The API at a glance", run as written against a fresh serve on
/// a fresh data folder (only the address is the test's own).
#[tokio::test]
async fn the_readme_walk_through_runs_as_written_on_a_fresh_data_folder() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## The API at a glance").nth(1).expect("the README has its API section");
    let script = section.split("```sh\n").nth(1).and_then(|s| s.split("\n```").next()).expect("a sh block");
    assert!(
        script.contains("B=http://127.0.0.1:8080/api/v1"),
        "the walk-through talks to the default address"
    );

    let data = DataDir::new();
    let serve = Process::start(&data, "serve");
    let base = serve.wait_for("listening on ");
    let script = script.replace("http://127.0.0.1:8080", &base);
    let output = Command::new("bash").args(["-eu", "-o", "pipefail", "-c", &script]).output().expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the walk-through failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"title\":\"The Big Lebowski\""), "the search found the movie: {stdout}");
    assert!(stdout.contains("\"balance_due\""), "/me answered: {stdout}");
    assert!(!stdout.contains("\"status\":5"), "no server error: {stdout}");
    assert!(serve.terminate().success());
    wait_until_cluster_gone(&data.pgdata());
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/v1/movies"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,idempotency-key,x-request-id")
        .send()
        .await
        .unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_ascii_lowercase())
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn cors_answers_preflights_for_allowed_origins_only_and_exposes_our_headers(pool: PgPool) {
    let options = Options {
        extra_env: vec![(
            "MOVIESTORE_CORS_ORIGINS".into(),
            "https://shop.example, http://localhost:3000".into(),
        )],
    };
    let app = TestApp::spawn_with(pool, options).await;

    let allowed = preflight(&app, "https://shop.example").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("https://shop.example"));
    let allow_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    for name in ["authorization", "content-type", "idempotency-key", "x-request-id"] {
        assert!(allow_headers.contains(name), "{name} not allowed: {allow_headers}");
    }
    let allow_methods = header(&allowed, "access-control-allow-methods").unwrap_or_default();
    for method in ["get", "post", "patch", "delete"] {
        assert!(allow_methods.contains(method), "{method} not allowed: {allow_methods}");
    }
    assert!(
        header(&allowed, "access-control-allow-credentials").is_none(),
        "tokens travel in a header, not cookies"
    );

    let refused = preflight(&app, "https://evil.example").await;
    assert!(
        header(&refused, "access-control-allow-origin").is_none(),
        "a refused origin gets no allow-origin"
    );

    // A simple request: the allowed origin may read our headers, even on an error answer.
    let admin = app.admin().await;
    let simple = app
        .client
        .get(app.url("/api/v1/categories"))
        .header("origin", "http://localhost:3000")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(simple.status(), StatusCode::OK);
    assert_eq!(header(&simple, "access-control-allow-origin").as_deref(), Some("http://localhost:3000"));
    let exposed = header(&simple, "access-control-expose-headers").unwrap_or_default();
    for name in ["x-position", "x-request-id", "x-cache"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let unauthenticated = app
        .client
        .get(app.url("/api/v1/movies"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&unauthenticated, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    let foreign =
        app.client.get(app.url("/health")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(header(&foreign, "access-control-allow-origin").is_none());
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn without_cors_origins_no_cors_header_is_sent_and_a_star_allows_any(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let response = preflight(&app, "https://shop.example").await;
    let cors: Vec<_> =
        response.headers().keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
    assert!(cors.is_empty(), "unset: no CORS headers, got {cors:?}");
    let get =
        app.client.get(app.url("/health")).header("origin", "https://shop.example").send().await.unwrap();
    assert!(get.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));

    let any = TestApp::spawn_with(
        pool,
        Options { extra_env: vec![("MOVIESTORE_CORS_ORIGINS".into(), "*".into())] },
    )
    .await;
    let response = preflight(&any, "https://anyone.example").await;
    assert_eq!(header(&response, "access-control-allow-origin").as_deref(), Some("*"));
}

/// Metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (inside braces or `by (...)`), strings or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: [&str; 14] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "e",
    ];
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut braces, mut after_grouping) = (0, 0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '(' if after_grouping => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                after_grouping = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' => {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || matches!(chars[i + 1], '_' | ':'))
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let rest: String = chars[i + 1..].iter().collect();
                let rest = rest.trim_start();
                after_grouping = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                // A function call, or an aggregation with its grouping first: `sum by (le) (...)`.
                let is_call = rest.starts_with('(')
                    || rest.starts_with("by ")
                    || rest.starts_with("by(")
                    || rest.starts_with("without ")
                    || rest.starts_with("without(");
                if braces == 0 && !is_call && !word.starts_with('$') && !WORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="api", route=~"/a|b"}[$__rate_interval]))) / clamp_min(sum(x_total), 1e-9) and on (instance) up == 0"#,
    );
    assert_eq!(names, ["http_request_duration_seconds_bucket", "up", "x_total"].map(String::from).into());
}

/// Every expression of the dashboard and of the alert rules.
fn monitoring_queries(root: &Path) -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("monitoring/grafana/dashboards/moviestore.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    // The rules file is YAML; each `expr:` is a one-line value or a `|` block below it.
    let rules = std::fs::read_to_string(root.join("monitoring/prometheus/alerts.yml")).unwrap();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, value)) = line.split_once("expr:") else { continue };
        let value = value.trim();
        if value == "|" || value == ">" {
            let mut block = String::new();
            while lines
                .peek()
                .is_some_and(|next| next.len() > indent.len() + 6 && next.starts_with(&format!("{indent}  ")))
            {
                block.push_str(lines.next().unwrap().trim());
                block.push(' ');
            }
            queries.push(block);
        } else {
            queries.push(value.to_string());
        }
    }
    queries
}

fn exported_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("the monitoring test needs promtool: apt-get install prometheus");
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_metric_the_dashboard_and_alerts_query_is_exported_and_promtool_accepts_the_files(
    pool: PgPool,
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prometheus = root.join("monitoring/prometheus");
    promtool(&["check", "config", prometheus.join("prometheus.yml").to_str().unwrap()]);
    promtool(&["check", "rules", prometheus.join("alerts.yml").to_str().unwrap()]);
    promtool(&["test", "rules", prometheus.join("alerts.test.yml").to_str().unwrap()]);

    // As the compose file runs them: serve answers HTTP, a worker advances the projections and
    // serves its metrics on MOVIESTORE_METRICS_ADDR.
    let app = TestApp::process_without_projectors(pool).await;
    let mut worker = Command::new(binary());
    worker
        .arg("worker")
        .env("DATABASE_URL", &app.database_url)
        .env("MOVIESTORE_METRICS_ADDR", "127.0.0.1:0")
        .env("MOVIESTORE_DATA_DIR", scratch_dir("data"))
        .env("MOVIESTORE_REDIS_PREFIX", format!("test-{}:", Uuid::now_v7()))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let worker = Process::spawn(worker, std::env::temp_dir().join(format!("worker-{}.log", Uuid::now_v7())));
    let worker_metrics = worker.wait_for("metrics on ");
    worker.wait_for("worker running");

    // Traffic that touches every family: commands, a conflict (a rent whose movie another writer
    // changed under it), the cache, the token cache, a revocation, the payments process manager.
    let category = app.category("Western").await;
    let (_, customer) = app.customer("wyatt").await;
    let (_, rider) = app.customer("rider").await;
    let contested = app.movie("Rio Bravo", &[category]).await;
    let in_the_way = movie_change_in_the_way(&app.pool, contested).await;
    let rent = {
        let (client, url) = (app.client.clone(), app.url(&format!("/api/v1/movies/{contested}/rent")));
        tokio::spawn(async move { client.post(url).bearer_auth(rider).send().await.unwrap().status() })
    };
    wait_until_an_append_waits_for_another(&app.pool).await;
    in_the_way.commit().await.unwrap();
    assert_eq!(rent.await.unwrap(), StatusCode::CREATED, "retried alone after the conflict");
    let scrape = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        scrape.lines().any(|l| l.starts_with("command_conflicts_total{")),
        "the conflict is counted: {scrape}"
    );
    let movie = app.movie("High Noon", &[category]).await;
    let rental = app.rent(movie, &customer).await;
    let returned = expect_status(
        app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await,
        StatusCode::OK,
    )
    .await;
    // The worker's catalogue projection may still lag: wait for the return to be applied (that
    // read skips the cache, and the projector fills it), then a hit, and a miss: a movie that is
    // in no cache (an unknown id, 404 from PostgreSQL).
    let seen = format!("/api/v1/movies/{movie}?min_position={}", returned["position"]);
    expect_status(app.get(&seen, Some(&customer)).await, StatusCode::OK).await;
    for _ in 0..2 {
        expect_status(app.get(&format!("/api/v1/movies/{movie}"), Some(&customer)).await, StatusCode::OK)
            .await;
    }
    let unknown = format!("/api/v1/movies/{}", uuid::Uuid::now_v7());
    expect_status(app.get(&unknown, Some(&customer)).await, StatusCode::NOT_FOUND).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let paid = app
            .post(
                &format!("/api/v1/rentals/{rental}/pay"),
                Some(&customer),
                Some(json!({"amount_cents": 100})),
            )
            .await;
        if paid.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not charge the return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A back-dated rent falls due at once: the worker's scheduler records it overdue.
    let (late_customer, _) = app.customer("latecomer").await;
    let late = app.movie("Shane", &[category]).await;
    let rented_at =
        (chrono::Utc::now() - chrono::Duration::days(9)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let admin = app.admin().await;
    expect_status(
        app.post(
            &format!("/api/v1/movies/{late}/rent"),
            Some(&admin),
            Some(json!({"customer_id": late_customer, "rented_at": rented_at})),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app
        .client
        .get(format!("{worker_metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("deadline_fire_delay_seconds_bucket")
    {
        assert!(Instant::now() < deadline, "the worker did not fire the overdue timer within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, leaving) = app.customer("leaving").await;
    expect_status(app.post("/api/v1/auth/logout", Some(&leaving), None).await, StatusCode::NO_CONTENT).await;

    let serve_scrape = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let worker_scrape =
        app.client.get(format!("{worker_metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    let worker_names = exported_names(&worker_scrape);
    for name in ["commands_total", "projection_commit_lag_seconds_bucket", "projection_failing"] {
        assert!(worker_names.contains(name), "the worker exports {name}");
    }
    let mut exported = exported_names(&serve_scrape);
    exported.extend(worker_names);
    // `up` is Prometheus's own record of each scrape.
    exported.insert("up".into());
    let queries = monitoring_queries(root);
    assert!(queries.len() >= 20, "the dashboard and the rules hold {} queries", queries.len());
    let mut missing = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for query in &queries {
        for name in metric_names(query) {
            if !exported.contains(&name) {
                missing.insert(name.clone());
            }
            queried.insert(name);
        }
    }
    assert!(missing.is_empty(), "queried but not exported: {missing:?} (exported: {exported:?})");
    println!("{} queries read {} metrics, every one exported: {queried:?}", queries.len(), queried.len());
    assert!(worker.terminate().success(), "the worker exits 0 on SIGTERM");
}
