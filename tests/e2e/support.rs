//! The test harness: start the binary, talk to it, check problem documents.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// The `moviestore` binary that cargo built for this test run, in the same profile, so the tests
/// always run the code under test (`MOVIESTORE_BIN` names another one).
pub fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var_os("MOVIESTORE_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_moviestore")), PathBuf::from)
    })
}

/// DATABASE_URL with another database name.
pub fn database_url(database: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for #[sqlx::test]");
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url.to_string(), format!("?{query}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[scheme_end..].find('/').map_or(without_query.len(), |i| scheme_end + i);
    format!("{}/{database}{query}", &without_query[..path_start])
}

/// Options for starting the binary.
#[derive(Default, Clone)]
pub struct Options {
    pub extra_env: Vec<(String, String)>,
}

impl Options {
    /// `MOVIESTORE_PROJECTORS=off`.
    pub fn without_projectors() -> Self {
        Options { extra_env: vec![("MOVIESTORE_PROJECTORS".into(), "off".into())] }
    }
}

/// A running `moviestore serve` against a test database: the app built in this test process
/// ([`TestApp::spawn`]), or the binary in a process of its own ([`TestApp::process`]) for the
/// tests that need one (signals, kill -9, exit codes, logs, the process-wide metrics).
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub database_url: String,
    running: Option<Running>,
    admin_token: OnceLock<String>,
    _admitted: Admitted,
}

/// Test servers alive, and whether a test that loads the whole machine (a login flood) wants to
/// run alone: on 2 cores it would starve whatever other test runs beside it into timeouts.
static ADMISSION: (std::sync::Mutex<(usize, bool)>, std::sync::Condvar) =
    (std::sync::Mutex::new((0, false)), std::sync::Condvar::new());

thread_local! {
    /// Set on the thread of the test that runs alone: its own servers are admitted.
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One live test server; dropping it lets a test that waits to run alone go on.
pub struct Admitted;

impl Drop for Admitted {
    fn drop(&mut self) {
        let (lock, changed) = &ADMISSION;
        lock.lock().unwrap_or_else(|e| e.into_inner()).0 -= 1;
        changed.notify_all();
    }
}

fn admit() -> Admitted {
    let (lock, changed) = &ADMISSION;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    while state.1 && !ALONE.with(std::cell::Cell::get) {
        state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    state.0 += 1;
    Admitted
}

/// While held, no other test starts a server, and it is taken only once every other test's
/// servers are gone. Take it before spawning the test's own servers.
pub struct Alone;

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|alone| alone.set(false));
        let (lock, changed) = &ADMISSION;
        lock.lock().unwrap_or_else(|e| e.into_inner()).1 = false;
        changed.notify_all();
    }
}

/// Waits until this test can run alone (see [`Alone`]).
pub fn alone() -> Alone {
    let (lock, changed) = &ADMISSION;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    while state.1 {
        state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    state.1 = true;
    while state.0 > 0 {
        state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    ALONE.with(|alone| alone.set(true));
    Alone
}

/// How a test's app runs.
enum Running {
    /// The `moviestore` binary.
    Process(Child),
    /// The app built in this process, on a runtime and thread of its own, as `serve` builds it.
    InProcess { shutdown: CancellationToken, thread: std::thread::JoinHandle<()> },
}

impl TestApp {
    /// The app, built in this test process as `moviestore serve` builds it, from the same
    /// settings the binary would get.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, Options::default()).await
    }

    /// [`TestApp::spawn`] with `MOVIESTORE_PROJECTORS=off` (see
    /// [`TestApp::process_without_projectors`]).
    pub async fn spawn_without_projectors(pool: PgPool) -> Self {
        Self::spawn_with(pool, Options::without_projectors()).await
    }

    /// [`TestApp::spawn`] with more settings (they win over the defaults).
    pub async fn spawn_with(pool: PgPool, options: Options) -> Self {
        let admitted = admit();
        let database_url = Self::database_url_of(&pool);
        let settings: HashMap<String, String> = environment(&database_url, &options).into_iter().collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let built = async {
                    let config = api::config::Config::from_lookup(&|name| settings.get(name).cloned())?;
                    if std::env::var_os("TEST_LOG").is_some() {
                        static LOGGING: std::sync::Once = std::sync::Once::new();
                        LOGGING.call_once(|| api::telemetry::init(&config.log));
                    }
                    let app = api::startup::App::build(config, api::startup::Process::Serve).await?;
                    let address = app.local_addr().expect("serve binds the API")?;
                    anyhow::Ok((app, address))
                };
                match built.await {
                    Ok((app, address)) => {
                        let _ = tx.send(Ok(format!("http://{address}")));
                        if let Err(error) = app.run(stop).await {
                            eprintln!("the test's app stopped with an error: {error:#}");
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(format!("{error:#}")));
                    }
                }
            });
        });
        let address = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(Ok(address))) => address,
            Ok(Ok(Err(error))) => panic!("the app did not start: {error}"),
            _ => panic!("the app did not start in time"),
        };
        Self::ready(pool, database_url, address, Running::InProcess { shutdown, thread }, admitted)
    }

    /// The `moviestore` binary, started as `moviestore serve` in a process of its own.
    pub async fn process(pool: PgPool) -> Self {
        Self::process_with(pool, Options::default()).await
    }

    /// Starts the binary with `MOVIESTORE_PROJECTORS=off`: no projector or process manager runs,
    /// so a returned rental stays uncharged (pay answers 409 `charge-pending`) for as long as the
    /// test needs, instead of racing the payments process manager.
    pub async fn process_without_projectors(pool: PgPool) -> Self {
        Self::process_with(pool, Options::without_projectors()).await
    }

    /// [`TestApp::process`] with more settings (they win over the defaults).
    pub async fn process_with(pool: PgPool, options: Options) -> Self {
        let admitted = admit();
        let database_url = Self::database_url_of(&pool);
        let child = start(&database_url, &options);
        Self::attach(pool, database_url, child, admitted).await
    }

    /// [`TestApp::spawn_with`], with the process's standard error (its logs) written to `stderr`.
    pub async fn spawn_with_stderr(pool: PgPool, options: Options, stderr: std::fs::File) -> Self {
        let database_url = Self::database_url_of(&pool);
        let admitted = admit();
        let child = command(&database_url, &options).stderr(stderr).spawn().expect("start moviestore");
        Self::attach(pool, database_url, child, admitted).await
    }

    fn database_url_of(pool: &PgPool) -> String {
        database_url(pool.connect_options().get_database().expect("test database name"))
    }

    async fn attach(pool: PgPool, database_url: String, child: Child, admitted: Admitted) -> Self {
        let (child, address) =
            tokio::task::spawn_blocking(move || wait_for_listening(child)).await.expect("join");
        Self::ready(pool, database_url, address, Running::Process(child), admitted)
    }

    fn ready(
        pool: PgPool,
        database_url: String,
        address: String,
        running: Running,
        admitted: Admitted,
    ) -> Self {
        Self {
            address,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            pool,
            database_url,
            running: Some(running),
            admin_token: OnceLock::new(),
            _admitted: admitted,
        }
    }

    fn child(&self) -> &Child {
        match self.running.as_ref() {
            Some(Running::Process(child)) => child,
            _ => panic!("this test needs the app in a process of its own: start it with TestApp::process"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub async fn shutdown(mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let Some(Running::Process(mut child)) = self.running.take() else { unreachable!("a process") };
        signal(pid, "TERM");
        tokio::task::spawn_blocking(move || child.wait().expect("wait")).await.unwrap()
    }

    /// Sends one request; `body` `None` sends no body at all.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// A GET. A read with `min_position` that the server answers 503 `not-yet-consistent` (the
    /// read models did not reach the position within the server's 2 s) is asked again, as the
    /// contract tells clients to, for up to [`CONSISTENT_WITHIN`]: on a loaded machine the
    /// projectors may take longer than one wait, and the test is about the answer, not the lag.
    /// [`Self::get_once`] asks once.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let deadline = std::time::Instant::now() + CONSISTENT_WITHIN;
        loop {
            let response = self.get_once(path, token).await;
            let waits =
                path.contains("min_position=") && response.status() == StatusCode::SERVICE_UNAVAILABLE;
            if !waits || std::time::Instant::now() >= deadline {
                return response;
            }
            let (status, headers) = (response.status(), response.headers().clone());
            let text = response.text().await.unwrap_or_default();
            if !text.contains("/problems/not-yet-consistent") {
                // Another 503: handed back as it came.
                let mut answer = http::Response::new(text);
                *answer.status_mut() = status;
                *answer.headers_mut() = headers;
                return answer.into();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// One GET, whatever it answers.
    pub async fn get_once(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        self.request(Method::POST, path, token, body).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::DELETE, path, token, None).await
    }

    /// Sends raw bytes: `content_type` `None` sends no `Content-Type` header.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path)).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request sent")
    }

    /// Sends a request with this exact `Authorization` header value (`None`: no header at all).
    pub async fn with_authorization(
        &self,
        method: Method,
        path: &str,
        authorization: Option<reqwest::header::HeaderValue>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.expect("request sent")
    }

    /// The bootstrap admin's token (logged in once per test).
    pub async fn admin(&self) -> String {
        if let Some(token) = self.admin_token.get() {
            return token.clone();
        }
        let token = self.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
        let _ = self.admin_token.set(token.clone());
        token
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let response = self
            .post("/api/v1/auth/login", None, Some(json!({"username": username, "password": password})))
            .await;
        let body = expect_status(response, StatusCode::OK).await;
        body["token"].as_str().expect("token").to_string()
    }

    /// Registers a customer; returns (id, token).
    pub async fn customer(&self, username: &str) -> (Uuid, String) {
        let response = self
            .post(
                "/api/v1/auth/register",
                None,
                Some(json!({"username": username, "email": format!("{username}@example.com"), "password": "password-123"})),
            )
            .await;
        let body = expect_status(response, StatusCode::CREATED).await;
        (uuid(&body["user"]["id"]), body["token"].as_str().unwrap().to_string())
    }

    /// Creates an account of any role through the admin API: register, then set the role.
    pub async fn staff(&self, username: &str, role: &str) -> (Uuid, String) {
        let (id, token) = self.customer(username).await;
        let admin = self.admin().await;
        let response =
            self.patch(&format!("/api/v1/admin/users/{id}"), Some(&admin), json!({"role": role})).await;
        expect_status(response, StatusCode::OK).await;
        (id, token)
    }

    pub async fn category(&self, name: &str) -> Uuid {
        let admin = self.admin().await;
        let response = self.post("/api/v1/categories", Some(&admin), Some(json!({"name": name}))).await;
        uuid(&expect_status(response, StatusCode::CREATED).await["id"])
    }

    pub async fn movie(&self, title: &str, categories: &[Uuid]) -> Uuid {
        let admin = self.admin().await;
        let response = self.post("/api/v1/movies", Some(&admin), Some(movie_body(title, categories))).await;
        uuid(&expect_status(response, StatusCode::CREATED).await["id"])
    }

    /// Rents a movie as the given customer; returns the rental id.
    pub async fn rent(&self, movie: Uuid, token: &str) -> Uuid {
        let response = self.post(&format!("/api/v1/movies/{movie}/rent"), Some(token), None).await;
        uuid(&expect_status(response, StatusCode::CREATED).await["rental_id"])
    }

    /// The id of an account, by username.
    pub async fn user_id(&self, username: &str) -> Uuid {
        sqlx::query_scalar("select user_id from users where username_key = $1")
            .bind(domain::name_key::NameKey::of(username).as_str())
            .fetch_one(&self.pool)
            .await
            .expect("user")
    }

    /// Event rows of one stream, oldest first: (event_type, payload, metadata).
    pub async fn events_of(&self, stream_type: &str, id: Uuid) -> Vec<(String, Value, Value)> {
        sqlx::query_as(
            "select event_type, payload, metadata from events
              where aggregate_type = $1 and aggregate_id = $2 order by sequence",
        )
        .bind(stream_type)
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .expect("events")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Stops it as SIGTERM would, and waits: its connections must be gone before the
            // test's database is dropped.
            Some(Running::InProcess { shutdown, thread }) => {
                shutdown.cancel();
                let _ = thread.join();
            }
            None => {}
        }
    }
}

pub fn movie_body(title: &str, categories: &[Uuid]) -> Value {
    json!({
        "title": title,
        "storyline": format!("The story of {title}."),
        "release_date": "1998-01-18",
        "rating": 8.1,
        "director": "Joel Coen",
        "category_ids": categories,
    })
}

/// How long [`TestApp::get`] keeps asking for a read that waits for a position.
pub const CONSISTENT_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The deployment secret of every test process.
pub const TEST_SECRET: &str = "a test deployment's secret, 32 characters or more";

/// Starts `moviestore serve` against a database (options' environment wins over the defaults).
pub fn start(database_url: &str, options: &Options) -> Child {
    command(database_url, options).spawn().expect("start moviestore")
}

/// The settings of a test's app, in process or not: the defaults, then `options`' own.
pub fn environment(database_url: &str, options: &Options) -> Vec<(String, String)> {
    let verbose = std::env::var("TEST_LOG").is_ok();
    let mut settings: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.to_string()),
        ("MOVIESTORE_ADDR", "127.0.0.1:0".into()),
        ("MOVIESTORE_ADMIN", format!("{ADMIN_USERNAME}:{ADMIN_PASSWORD}")),
        ("MOVIESTORE_REDIS_PREFIX", format!("test-{}:", Uuid::now_v7())),
        ("MOVIESTORE_DB_MAX_CONNECTIONS", "8".into()),
        // Cheap hashes keep the suite fast; production uses the OWASP parameters.
        ("MOVIESTORE_ARGON2_MEMORY_KIB", "512".into()),
        ("MOVIESTORE_ARGON2_ITERATIONS", "1".into()),
        ("RUST_LOG", if verbose { "info" } else { "error" }.into()),
        // Without an SMTP server emails are files: each app writes its own folder in the build's
        // scratch space, never the working directory.
        ("MOVIESTORE_DATA_DIR", scratch_dir("data").display().to_string()),
        // One deployment: every test app shares the secret, as a deployment's processes must.
        ("MOVIESTORE_SECRET", TEST_SECRET.into()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    if let Ok(redis) = std::env::var("REDIS_URL") {
        settings.push(("REDIS_URL".into(), redis));
    }
    settings.extend(options.extra_env.iter().cloned());
    settings
}

/// The command [`start`] runs.
pub fn command(database_url: &str, options: &Options) -> Command {
    let verbose = std::env::var("TEST_LOG").is_ok();
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .envs(environment(database_url, options))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if verbose { Stdio::inherit() } else { Stdio::null() });
    command
}

/// A new, empty folder in the build's scratch space.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

/// Waits for the `listening on http://ADDR` line; returns the process and the address.
pub fn wait_for_listening(mut child: Child) -> (Child, String) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        while let Some(Ok(line)) = lines.next() {
            if !sent {
                if let Some(address) = line.split("listening on ").nth(1) {
                    let _ = tx.send(address.trim().to_string());
                    sent = true;
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(address) => (child, address),
        Err(_) => {
            let _ = child.kill();
            panic!("moviestore did not print its listening line in time");
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

pub fn uuid(value: &Value) -> Uuid {
    Uuid::parse_str(value.as_str().unwrap_or_else(|| panic!("expected a uuid string, got {value}"))).unwrap()
}

/// Asserts the status and returns the JSON body (Null when empty).
pub async fn expect_status(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// Asserts a problem+json answer with this status and slug; returns the document.
///
/// Also checks what the conventions promise of every problem: a 401 carries `WWW-Authenticate`,
/// a 422 names at least one field in `errors`, and every answer echoes an `x-request-id`.
pub async fn assert_problem(response: Response, status: u16, slug: &str) -> Value {
    assert_problem_in(response, status, slug, "").await
}

/// [`assert_problem`] for one row of a table: `context` names the row in every failure message.
pub async fn assert_problem_in(response: Response, status: u16, slug: &str, context: &str) -> Value {
    let actual = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let request_id = header("x-request-id");
    let text = response.text().await.unwrap_or_default();
    assert_eq!(actual, status, "{context}: unexpected status; body: {text}");
    assert_eq!(content_type, "application/problem+json", "{context}: body: {text}");
    let body: Value = serde_json::from_str(&text).expect("problem is JSON");
    let kind = body["type"].as_str().unwrap_or_default();
    assert!(kind.ends_with(&format!("/{slug}")), "{context}: expected type .../{slug}, got {kind}");
    assert_eq!(body["status"], status, "{context}: problem status field");
    assert!(body["title"].is_string() && body["detail"].is_string(), "{context}: title and detail: {text}");
    assert!(request_id.is_some_and(|id| !id.is_empty()), "{context}: x-request-id on every answer");
    if status == 401 {
        let challenge = www_authenticate.unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{context}: 401 needs WWW-Authenticate: Bearer, got {challenge:?}"
        );
    }
    if status == 422 {
        let named = body["errors"].as_object().is_some_and(|errors| {
            !errors.is_empty()
                && errors.values().all(|messages| messages.as_array().is_some_and(|m| !m.is_empty()))
        });
        assert!(named, "{context}: a 422 names every invalid field in errors: {text}");
    }
    body
}

/// An answer's status, its problem slug (the last segment of `type`; empty for a success) and
/// its JSON body (Null when there is none).
pub async fn answer(response: Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let slug = if status >= 400 {
        body["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or_default().to_string()
    } else {
        String::new()
    };
    (status, slug, body)
}

/// The fields a 422 names in `errors`, sorted.
pub fn error_fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> =
        problem["errors"].as_object().map(|errors| errors.keys().cloned().collect()).unwrap_or_default();
    fields.sort();
    fields
}

/// Asserts a 422 `validation-failed` naming exactly these fields; `context` names the table row.
pub async fn assert_invalid(response: Response, fields: &[&str], context: &str) -> Value {
    let problem = assert_problem_in(response, 422, "validation-failed", context).await;
    let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(error_fields(&problem), expected, "{context}: {problem}");
    problem
}

/// Runs `moviestore ARGS` against a database with `stdin` as its input, for at most 60 s.
async fn run_binary(database_url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(binary())
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("MOVIESTORE_ARGON2_MEMORY_KIB", "512")
        .env("MOVIESTORE_ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moviestore");
    let mut input = child.stdin.take().expect("stdin");
    // The command may exit before reading its input; a broken pipe is fine then.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finished in time")
        .expect("wait")
}

/// Runs a sub-command; returns (success, stdout, stderr).
pub async fn run_cli(database_url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let output = run_binary(database_url, args, stdin).await;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Runs a sub-command with no input; returns (exit code, stdout then stderr). Panics when the
/// command was killed rather than exiting.
pub async fn cli_status(database_url: &str, args: &[&str]) -> (i32, String) {
    let output = run_binary(database_url, args, "").await;
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().unwrap_or_else(|| panic!("moviestore {args:?} was killed: {text}"));
    (code, text)
}

/// A metric's sample lines that carry every one of these label pairs.
pub fn samples<'a>(scrape: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    scrape
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .collect()
}

/// The value of one sample line.
pub fn value(sample: &str) -> f64 {
    sample.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in {sample}"))
}

/// An open transaction that has appended a change of `movie`'s rating to its stream and not
/// committed: an append of the same stream waits for it, and meets a conflict once it commits
/// (how a test makes the app's commands conflict, now that one process groups its own).
pub async fn movie_change_in_the_way(
    pool: &PgPool,
    movie: Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    let next: i64 = sqlx::query_scalar(
        "select max(sequence) + 1 from events where aggregate_type = 'movie' and aggregate_id = $1",
    )
    .bind(movie.to_string())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                             metadata, event_id)
         values ('movie', $1, $2, 'MovieUpdated', '1.0', '{\"rating\": 8.1}', '{}', gen_random_uuid())",
    )
    .bind(movie.to_string())
    .bind(next)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Waits until a transaction of the app waits for a lock on `events` in this database.
pub async fn wait_until_an_append_waits(pool: &PgPool) {
    wait_until_a_lock_is_awaited(
        pool,
        "l.relation = 'events'::regclass and l.database = (select oid from pg_database where datname = current_database())",
        "no append started waiting for the lock",
    )
    .await
}

/// Waits until a transaction of this database waits for another one to end (an append of a
/// stream another transaction has appended to and not committed).
pub async fn wait_until_an_append_waits_for_another(pool: &PgPool) {
    wait_until_a_lock_is_awaited(
        pool,
        "l.locktype = 'transactionid' and l.pid in (select pid from pg_stat_activity where datname = current_database())",
        "no append started waiting for the other writer",
    )
    .await
}

/// Polls `pg_locks` until a lock that `which` (a condition on `l`) picks is waited for.
async fn wait_until_a_lock_is_awaited(pool: &PgPool, which: &str, never: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let query = format!("select count(*) from pg_locks l where not l.granted and {which}");
    loop {
        let waiting: i64 = sqlx::query_scalar(&query).fetch_one(pool).await.unwrap();
        if waiting >= 1 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
