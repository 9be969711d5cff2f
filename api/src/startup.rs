//! Building the app (pool, migrations, state, listener) and running it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use eventstore::EventStore;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use projections::catalogue::CatalogueReader;
use projections::engine::{Engine, EngineConfig};
use projections::payments::ChargeWaits;
use projections::rentals::RentalsReader;

use crate::accounts::Accounts;
use crate::cache::Cache;
use crate::config::{Config, CorsOrigins};
use crate::http::error::problem;
use crate::http::refresh::CacheRefresher;
use crate::http::state::AppState;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The HTTP API, with the projectors and the due-date scheduler unless
    /// `MOVIESTORE_PROJECTORS=off`.
    Serve,
    /// No API: the projectors and the due-date scheduler, with `/metrics` on
    /// `MOVIESTORE_METRICS_ADDR` when it is set.
    Worker,
}

/// A built app: database migrated, listeners bound, every part wired; [`App::run`] starts its
/// tasks. `serve` and `worker` are both this, as their [`Process`].
pub struct App {
    role: Process,
    config: Arc<Config>,
    pool: PgPool,
    store: EventStore,
    engine: Engine,
    sender: crate::mail::Sender,
    listener: Listener,
}

/// What a process listens on.
enum Listener {
    /// The API, with its state.
    Api(TcpListener, AppState),
    /// A worker's `/metrics`.
    Metrics(TcpListener, Router),
    /// Nothing (a worker without `MOVIESTORE_METRICS_ADDR`).
    None,
}

impl App {
    /// Connects (creating the database when missing), migrates (a `serve` unless told not to, a
    /// `worker` always), and builds.
    pub async fn build(config: Config, role: Process) -> anyhow::Result<Self> {
        let pool = crate::db::connect(&config.database).await?;
        if config.database.run_migrations || role == Process::Worker {
            crate::db::migrate(&pool).await?;
        }
        Self::build_with_pool(config, pool, role).await
    }

    /// Builds on an existing, migrated pool.
    pub async fn build_with_pool(config: Config, pool: PgPool, role: Process) -> anyhow::Result<Self> {
        let store = EventStore::new(pool.clone());
        let plan = domain::price::PricePlan::default();
        let cache = Cache::new(&config.redis);
        let catalogue = CatalogueReader::new(pool.clone());
        let waits = ChargeWaits::default();
        let engine = engine(&pool, &store, &plan, config.loan, waits.clone())
            .with_listener(Arc::new(CacheRefresher { cache: cache.clone(), catalogue: catalogue.clone() }));
        let (listener, public_url) = match role {
            Process::Serve => {
                let accounts = Accounts::new(pool.clone(), &config.auth);
                if let Some((username, password)) = &config.bootstrap_admin {
                    accounts.ensure_admin(username, password).await?;
                }
                accounts.warm_up().await;
                let listener = TcpListener::bind(config.http.addr)
                    .await
                    .with_context(|| format!("could not listen on {} (MOVIESTORE_ADDR)", config.http.addr))?;
                let public_url = config.mail.public_url_or(listener.local_addr()?);
                let secret = config.secret.as_ref().map(secrecy::ExposeSecret::expose_secret);
                let secrets = crate::secret::Secrets::resolve(secret, &config.data_dir)?;
                let state = AppState::new(crate::http::state::Handles {
                    rentals: RentalsReader::new(pool.clone()),
                    analytics: projections::analytics::AnalyticsReader::new(pool.clone()),
                    catalogue,
                    status: crate::status::StatusBoard::new(pool.clone(), Some(cache.clone())),
                    cache,
                    engine: engine.clone(),
                    store: store.clone(),
                    db: pool.clone(),
                    accounts,
                    price_plan: Arc::new(plan.clone()),
                    // Only this process's payments process manager wakes a waiting payment.
                    charge_waits: config.run_projectors.then_some(waits),
                    secrets: Arc::new(secrets),
                    config: Arc::new(config.clone()),
                });
                (Listener::Api(listener, state), public_url)
            }
            Process::Worker => {
                crate::http::metrics::handle();
                let listener = match config.metrics_addr {
                    Some(addr) => {
                        let (listener, router) = crate::http::metrics::exporter(addr, pool.clone()).await?;
                        Listener::Metrics(listener, router)
                    }
                    None => Listener::None,
                };
                (listener, config.mail.public_url_or(config.http.addr))
            }
        };
        let sender = sender(&config, &pool, public_url, Arc::new(plan))?;
        Ok(Self { role, config: Arc::new(config), pool, store, engine, sender, listener })
    }

    /// The API's bound address (with the real port when port 0 was asked for); `None` for a
    /// worker.
    pub fn local_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        match &self.listener {
            Listener::Api(listener, _) => Some(listener.local_addr()),
            _ => None,
        }
    }

    /// Runs every task of the process until `shutdown` is cancelled or one of them fails: the
    /// API (or a worker's `/metrics`), the projectors and the due-date scheduler (a worker, or a
    /// `serve` with projectors on), the notification sender, the periodic jobs, the metrics upkeep
    /// and (with the API) the token cache's membership. Each task is joined by one tracker; on
    /// shutdown the listener stops accepting, and in-flight requests and the projectors' current
    /// batches get the grace period to finish, after which the pool is closed. A task that fails
    /// stops the process with its error: a process that has lost a part of itself (a `serve`
    /// whose projectors could not start) must not go on as if whole.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { role, config, pool, store, engine, sender, listener } = self;
        let tasks = Tasks::new(shutdown.clone());
        let projectors = role == Process::Worker || config.run_projectors;
        if projectors {
            // Every projection has its checkpoint row before the first request is served, so
            // `/ready` lists them all from the start (the engine's task makes sure again).
            let names: Vec<&str> = engine.projections().iter().map(|p| p.name()).collect();
            if let Err(error) = projections::engine::ensure_checkpoints(&pool, &names).await {
                tracing::warn!(%error, "could not create the projections' checkpoints yet");
            }
            let stop = shutdown.clone();
            tasks.spawn("projectors", async move { engine.run(stop).await.map_err(Into::into) });
            // Timers fire where the projectors run (the process manager sets them).
            let scheduler = projections::deadlines::Scheduler::new(pool.clone(), store);
            tasks.spawn_infallible("due-date scheduler", |stop| scheduler.run(stop));
        }
        // The periodic jobs and the emails run in every process (each job, each email, in one
        // process at a time).
        let jobs = crate::jobs::jobs(config.auth.login_window);
        let jobs_pool = pool.clone();
        tasks.spawn_infallible("periodic jobs", move |stop| {
            crate::jobs::run_periodically(jobs_pool, jobs, stop)
        });
        tasks.spawn_infallible("notification sender", |stop| sender.run(stop));
        tasks.spawn_infallible("metrics upkeep", crate::http::metrics::upkeep_periodically);
        match listener {
            Listener::Api(listener, state) => {
                let (members, cache) = (pool.clone(), state.accounts.token_cache().clone());
                tasks.spawn_infallible("token cache membership", move |stop| {
                    crate::accounts::keep_membership(members, cache, stop)
                });
                let router = router(state);
                tasks.spawn_infallible("http server", move |stop| {
                    crate::http::connections::serve(listener, router, stop)
                });
            }
            Listener::Metrics(listener, router) => {
                tasks.spawn_infallible("metrics listener", move |stop| {
                    crate::http::connections::serve(listener, router, stop)
                });
            }
            Listener::None => {}
        }
        if role == Process::Worker {
            tracing::info!(
                "worker running the projectors, the due-date scheduler, the notification sender and the \
                 periodic jobs"
            );
            println!("worker running");
        }
        let (outcome, stopped) = tasks.drain(config.http.shutdown_grace).await;
        // A task still running may hold a connection, and closing waits for every one.
        if stopped {
            pool.close().await;
        }
        outcome
    }
}

/// The process's tasks, joined by one tracker. Shutdown cancels them all; a task that fails
/// keeps its error and cancels the others.
struct Tasks {
    tracker: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
    running: Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
    failure: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
}

impl Tasks {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            shutdown,
            running: Arc::default(),
            failure: Arc::default(),
        }
    }

    /// Runs `task`, named `name` in the logs, until it ends; an error stops the process.
    fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (running, failure, shutdown) =
            (self.running.clone(), self.failure.clone(), self.shutdown.clone());
        running.lock().unwrap_or_else(|e| e.into_inner()).insert(name);
        self.tracker.spawn(async move {
            let result = task.await;
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            if let Err(error) = result {
                tracing::error!(
                    task = name,
                    error = format!("{error:#}"),
                    "a task of the process failed; stopping"
                );
                failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(error.context(name));
                shutdown.cancel();
            }
        });
    }

    /// Runs a task that ends only when told to stop.
    fn spawn_infallible<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let run = task(self.shutdown.clone());
        self.spawn(name, async move {
            run.await;
            Ok(())
        });
    }

    /// Waits for shutdown (or a failure), then at most `grace` for every task to end. Returns
    /// the first failure (or `Ok`) and whether every task ended; tasks still running after the
    /// grace period are named in the log and left to end with the process.
    async fn drain(self, grace: std::time::Duration) -> (anyhow::Result<()>, bool) {
        self.tracker.close();
        self.shutdown.cancelled().await;
        let stopped = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        if !stopped {
            let left: Vec<&str> =
                self.running.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
            tracing::warn!(?grace, tasks = ?left, "tasks did not stop within the grace period; stopping anyway");
        }
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        (failure.map_or(Ok(()), Err), stopped)
    }
}

/// The notification sender of this process, delivering as `config` says.
pub fn sender(
    config: &Config,
    pool: &PgPool,
    public_url: String,
    plan: Arc<domain::price::PricePlan>,
) -> anyhow::Result<crate::mail::Sender> {
    let transport = crate::mail::Transport::from_config(&config.mail, &config.data_dir)?;
    crate::mail::Sender::new(pool.clone(), transport, &config.mail, public_url, plan)
}

/// The projection engine over every projection; the payments process manager prices with `plan`,
/// fixes due times with `loan` and wakes the payments waiting in `waits`.
pub fn engine(
    pool: &PgPool,
    store: &EventStore,
    plan: &domain::price::PricePlan,
    loan: domain::loan::LoanPolicy,
    waits: ChargeWaits,
) -> Engine {
    Engine::new(
        pool.clone(),
        projections::all(store.clone(), plan.clone(), loan, waits),
        EngineConfig::default(),
    )
}

/// The router with its layers: every route behind the request's steps
/// ([`crate::http::steps`]: request id, client address, access log and metrics, limits, tracing,
/// panics, timeout, body, idempotency) and the body limit, with the CORS layer outermost.
pub fn router(state: AppState) -> Router {
    crate::http::metrics::handle();
    let steps = crate::http::steps::StepsLayer::new(&state);
    let cors = cors(&state.config.cors);
    crate::http::routes::router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::config::MAX_BODY_BYTES))
        .layer(steps)
        .layer(tower::util::option_layer(cors))
        .with_state(state)
}

/// The CORS layer for `MOVIESTORE_CORS_ORIGINS`, outermost so that preflights are answered before
/// any limit or authentication and that every answer (errors too) carries the headers a browser
/// needs to read it; none when unset. Bearer tokens travel in a header, so no credentials.
fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    let allow_origin = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
        }
    };
    let names = |names: &[&'static str]| names.iter().map(|n| HeaderName::from_static(n)).collect::<Vec<_>>();
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers(names(&["authorization", "content-type", "idempotency-key", "x-request-id"]))
            .expose_headers(names(&["x-position", "x-request-id", "x-cache", "retry-after", "location"]))
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "not-found", "no such resource")
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this method is not allowed on this resource",
    )
}

/// A token cancelled on SIGINT or SIGTERM. The handlers are installed before this returns, so a
/// signal that arrives right after a process has said it is ready is never the default one that
/// kills it mid-way.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        tokio::spawn(async move {
            match handlers {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                _ => {
                    tracing::warn!("could not install the signal handlers; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutdown requested");
            trigger.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
