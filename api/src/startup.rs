//! Building the app (pool, migrations, state, listener) and running it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use eventstore::EventStore;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use projections::catalogue::CatalogueReader;
use projections::engine::{Engine, EngineConfig};
use projections::rentals::RentalsReader;

use crate::accounts::Accounts;
use crate::cache::Cache;
use crate::config::{Config, CorsOrigins};
use crate::http::error::problem;
use crate::http::refresh::CacheRefresher;
use crate::http::state::AppState;

/// A built app: state ready, listener bound.
pub struct App {
    listener: TcpListener,
    state: AppState,
    sender: crate::mail::Sender,
}

impl App {
    /// Connects (creating the database when missing), migrates, and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = crate::db::connect(&config.database).await?;
        if config.database.run_migrations {
            crate::db::migrate(&pool).await?;
        }
        Self::build_with_pool(config, pool).await
    }

    /// Builds on an existing, migrated pool (tests use this with `#[sqlx::test]`).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
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
        let state = state(config, pool, accounts, secrets);
        let sender = sender(&state.config, &state.db, public_url, state.price_plan.clone())?;
        Ok(Self { listener, state, sender })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, advances the projections, fires due timers, sends the queued emails and runs the
    /// periodic jobs until
    /// `shutdown` is cancelled; then stops accepting,
    /// lets in-flight requests and the projectors' current batches finish (bounded by the grace
    /// period) and closes the pool.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, sender } = self;
        let grace = state.config.http.shutdown_grace;
        let pool = state.db.clone();
        if state.config.run_projectors {
            // Every projection has its checkpoint row before the first request is served, so
            // `/ready` lists them all from the start (the engine's task makes sure again).
            let names: Vec<&str> = state.engine.projections().iter().map(|p| p.name()).collect();
            if let Err(error) = projections::engine::ensure_checkpoints(&pool, &names).await {
                tracing::warn!(%error, "could not create the projections' checkpoints yet");
            }
        }
        let projectors =
            state.config.run_projectors.then(|| tokio::spawn(state.engine.clone().run(shutdown.clone())));
        // Timers fire where the projectors run (the process manager sets them); the periodic jobs
        // run in every process, each job in one process at a time.
        let scheduler = state.config.run_projectors.then(|| {
            let scheduler = projections::deadlines::Scheduler::new(pool.clone(), state.store.clone());
            tokio::spawn(scheduler.run(shutdown.clone()))
        });
        let jobs = crate::jobs::jobs(state.config.auth.login_window);
        let jobs = tokio::spawn(crate::jobs::run_periodically(pool.clone(), jobs, shutdown.clone()));
        // Emails go out from every process (each row from one of them).
        let sender = tokio::spawn(sender.run(shutdown.clone()));
        let upkeep = tokio::spawn(crate::http::metrics::upkeep_periodically(shutdown.clone()));
        let tokens = tokio::spawn(crate::accounts::keep_membership(
            pool.clone(),
            state.accounts.token_cache().clone(),
            shutdown.clone(),
        ));
        let server = tokio::spawn(crate::http::connections::serve(listener, router(state), shutdown.clone()));
        shutdown.cancelled().await;
        match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined.context("server task failed")?,
            Err(_) => tracing::warn!(?grace, "in-flight requests did not finish in time; stopping anyway"),
        }
        if let Some(projectors) = projectors {
            if tokio::time::timeout(grace, projectors).await.is_err() {
                tracing::warn!("projectors did not stop in time");
            }
        }
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        let _ = jobs.await;
        let _ = sender.await;
        let _ = tokens.await;
        let _ = upkeep.await;
        pool.close().await;
        Ok(())
    }
}

/// The shared state: stores, readers, cache and the projection engine.
pub fn state(config: Config, pool: PgPool, accounts: Accounts, secrets: crate::secret::Secrets) -> AppState {
    let store = EventStore::new(pool.clone());
    let plan = domain::price::PricePlan::default();
    let catalogue = CatalogueReader::new(pool.clone());
    let cache = Cache::new(&config.redis);
    let engine = engine(&pool, &store, &plan, config.loan)
        .with_listener(Arc::new(CacheRefresher { cache: cache.clone(), catalogue: catalogue.clone() }));
    AppState::new(crate::http::state::Handles {
        rentals: RentalsReader::new(pool.clone()),
        analytics: projections::analytics::AnalyticsReader::new(pool.clone()),
        catalogue,
        status: crate::status::StatusBoard::new(pool.clone(), Some(cache.clone())),
        cache,
        engine,
        store,
        db: pool,
        accounts,
        price_plan: Arc::new(plan),
        secrets: Arc::new(secrets),
        config: Arc::new(config),
    })
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

/// The projection engine over every projection; the payments process manager prices with `plan`
/// and fixes due times with `loan`.
pub fn engine(
    pool: &PgPool,
    store: &EventStore,
    plan: &domain::price::PricePlan,
    loan: domain::loan::LoanPolicy,
) -> Engine {
    Engine::new(pool.clone(), projections::all(store.clone(), plan.clone(), loan), EngineConfig::default())
}

/// The router with its layers, outermost first: request id, the client address, the access log
/// and HTTP metrics, the rate limit, tracing, sensitive headers, timeout, panic catching, reading
/// the body, the concurrency cap (only once the body is in), idempotency keys; and the body limit.
pub fn router(state: AppState) -> Router {
    let timeout = state.config.http.request_timeout;
    crate::http::metrics::handle();
    let limits = crate::http::limits::Limits::new(&state.config.http);
    let trusted = Arc::new(state.config.http.trusted_proxies.clone());
    let layers = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(crate::http::extract::request_id))
        .layer(axum::middleware::from_fn_with_state(trusted, crate::http::client::middleware))
        .layer(axum::middleware::from_fn(crate::http::access::record))
        .layer(axum::middleware::from_fn_with_state(limits.clone(), crate::http::limits::rate))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    let request_id = request
                        .headers()
                        .get(crate::http::extract::REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    tracing::info_span!("request", method = %request.method(), route, request_id)
                })
                .on_failure(()),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
        .layer(axum::middleware::from_fn_with_state(timeout, out_of_time))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| -> Response {
            tracing::error!("a request handler panicked");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error occurred; it has been logged",
            )
        }))
        .layer(axum::middleware::from_fn(crate::http::extract::read_body_first))
        .layer(axum::middleware::from_fn_with_state(limits, crate::http::limits::in_flight))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::http::idempotency::middleware));
    let cors = cors(&state.config.cors);
    crate::http::routes::router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::config::MAX_BODY_BYTES))
        .layer(layers)
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

/// Bounds a request, its body's arrival included, by `MOVIESTORE_REQUEST_TIMEOUT_SECS`; one that
/// runs out of time answers 503 problem+json with `Retry-After`, like every other 503.
async fn out_of_time(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                &format!("the request did not complete within {} s; retry shortly", limit.as_secs()),
            );
            response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from(1u64));
            response
        }
    }
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
