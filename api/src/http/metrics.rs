//! The Prometheus exporter: installs the process's `metrics` recorder once, and renders
//! `GET /metrics`, refreshing at scrape time what is read rather than counted (projection
//! progress and lag, from the same query as `/api/v1/admin/projections`, the count of overdue
//! rentals, the depth of the email queue, and the pool's usage).
//!
//! What is counted elsewhere: HTTP requests and latencies (`access`), commands and conflicts (the
//! command executor), cache hits and misses (`cache`), emails sent, retried, failed and skipped
//! (`mail`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::status::StatusBoard;

/// How often histogram samples are folded into their buckets between scrapes. The exporter keeps
/// every sample recorded since the last fold, so without this a process nobody scrapes grows by
/// one `f64` per request (and per event applied) for as long as it runs.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded samples into the histograms every [`UPKEEP_EVERY`] until `shutdown`.
pub async fn upkeep_periodically(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle().run_upkeep(),
        }
    }
}

/// Latency buckets, in seconds, of every `*_duration_seconds` histogram and of `token_revocation_wait_seconds`.
const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Buckets, in seconds, of the projections' commit lag: fine around the 50 ms goal, coarse up to
/// the seconds a catching-up projection takes.
const LAG_BUCKETS: [f64; 22] = [
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    1.5, 2.0, 5.0, 10.0, 30.0,
];

/// Buckets, in seconds, of the delay from a due time to the commit of its event: the scheduler
/// polls at least every second, a back-dated timer waits a 2 s grace, and a timer that fell due
/// while no process ran is minutes or days late.
const FIRE_DELAY_BUCKETS: [f64; 16] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 604800.0];

/// The process's exporter, installed on first use (the recorder is global to the process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &DURATION_BUCKETS)
            .expect("the buckets are not empty")
            .set_buckets_for_metric(Matcher::Full(projections::engine::LAG_HISTOGRAM.into()), &LAG_BUCKETS)
            .expect("the buckets are not empty")
            .set_buckets_for_metric(Matcher::Full("token_revocation_wait_seconds".into()), &DURATION_BUCKETS)
            .expect("the buckets are not empty")
            .set_buckets_for_metric(
                Matcher::Full(projections::deadlines::DELAY_HISTOGRAM.into()),
                &FIRE_DELAY_BUCKETS,
            )
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only what it sees");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("http_requests_total", "HTTP requests answered, by route template, method and status");
    describe_histogram!("http_request_duration_seconds", Unit::Seconds, "HTTP request latency");
    describe_counter!("commands_total", "commands run, by aggregate, command and outcome");
    describe_histogram!(
        "command_duration_seconds",
        Unit::Seconds,
        "command latency, retries included (in a batch: until the batch committed)"
    );
    describe_counter!("command_conflicts_total", "concurrent appends to the same stream, each retried");
    describe_counter!(
        "command_batches_total",
        "batches of commands (the payments process manager's), by aggregate and outcome"
    );
    describe_counter!(
        "event_notifications_total",
        "NOTIFYs sent to wake projectors (one per burst of commits)"
    );
    describe_counter!("cache_hits_total", "movie details served from Redis");
    describe_counter!("cache_misses_total", "movie details not in Redis (or Redis down)");
    describe_counter!(
        "password_hash_rejections_total",
        "logins and password changes answered 503 because every hashing slot stayed busy"
    );
    describe_counter!(
        "token_cache_lookups_total",
        "bearer tokens looked up in this process's token cache: hit, miss, or off (not a member)"
    );
    describe_histogram!(
        "token_revocation_wait_seconds",
        Unit::Seconds,
        "how long a revoking request waited for every caching process to acknowledge"
    );
    describe_gauge!("projection_position", "the last position a projection has applied");
    describe_gauge!("projection_lag_events", "events a projection has not applied yet");
    describe_gauge!(
        "projection_lag_seconds",
        Unit::Seconds,
        "age of the oldest event a projection has not applied"
    );
    describe_histogram!(
        projections::engine::LAG_HISTOGRAM,
        Unit::Seconds,
        "from an event's recording to the commit of the projection batch that applied it"
    );
    describe_gauge!(
        "projection_failing",
        "1 while a projection's last batch failed (it retries with backoff), else 0"
    );
    describe_gauge!("rentals_overdue", "active rentals past their due time (RentalOverdue recorded)");
    describe_histogram!(
        projections::deadlines::DELAY_HISTOGRAM,
        Unit::Seconds,
        "from a rental's due time to the commit of its RentalOverdue"
    );
    describe_counter!(
        "deadlines_fired_total",
        "timers fired by this process: overdue (an event recorded) or no_op (the rental was back)"
    );
    describe_counter!(
        "notifications_total",
        "emails handled by this process, by kind and outcome: sent, retried, failed (given up after 24 h), skipped"
    );
    describe_gauge!("notification_queue_depth", "emails queued and not sent yet (pending)");
    describe_gauge!("db_pool_size", "connections open in the pool");
    describe_gauge!("db_pool_idle", "idle connections in the pool");
    describe_gauge!("db_pool_max", "the pool's maximum size");
}

/// The scrape: refreshes the gauges read at scrape time from the board's shared reading (at most
/// one a second), then renders every metric. Projection gauges are left as they were when
/// PostgreSQL does not answer.
pub async fn render(pool: &PgPool, board: &StatusBoard) -> String {
    let handle = handle();
    let reading = board.read().await;
    for status in reading.projections.iter().flatten() {
        let name = status.name.clone();
        metrics::gauge!("projection_failing", "projection" => name).set(if status.last_error.is_some() {
            1.0
        } else {
            0.0
        });
    }
    for status in reading.projections.iter().flatten().chain(reading.deadlines.iter()) {
        let name = status.name.clone();
        metrics::gauge!("projection_position", "projection" => name.clone()).set(status.position as f64);
        metrics::gauge!("projection_lag_events", "projection" => name.clone()).set(status.lag_events as f64);
        metrics::gauge!("projection_lag_seconds", "projection" => name).set(status.lag_seconds);
    }
    if let Some(status) = &reading.sender {
        metrics::gauge!("notification_queue_depth").set(status.lag_events as f64);
        let name = status.name.clone();
        metrics::gauge!("projection_position", "projection" => name.clone()).set(status.position as f64);
        metrics::gauge!("projection_lag_events", "projection" => name.clone()).set(status.lag_events as f64);
        metrics::gauge!("projection_lag_seconds", "projection" => name.clone()).set(status.lag_seconds);
        metrics::gauge!("projection_failing", "projection" => name).set(if status.last_error.is_some() {
            1.0
        } else {
            0.0
        });
    }
    if let Some(count) = reading.overdue {
        metrics::gauge!("rentals_overdue").set(count as f64);
    }
    metrics::gauge!("db_pool_size").set(f64::from(pool.size()));
    metrics::gauge!("db_pool_idle").set(pool.num_idle() as f64);
    metrics::gauge!("db_pool_max").set(f64::from(pool.options().get_max_connections()));
    handle.run_upkeep();
    handle.render()
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A listener of its own for `GET /metrics` (and `GET /health`), for processes that serve no API
/// (`worker`, with `MOVIESTORE_METRICS_ADDR`): the bound listener and its router, to be served
/// with [`crate::http::connections::serve`]. Prints `metrics on http://ADDR`.
pub async fn exporter(
    addr: std::net::SocketAddr,
    pool: PgPool,
) -> anyhow::Result<(tokio::net::TcpListener, axum::Router)> {
    use anyhow::Context;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr} (MOVIESTORE_METRICS_ADDR)"))?;
    let bound = listener.local_addr()?;
    let board = StatusBoard::new(pool.clone(), None);
    let app =
        axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let (pool, board) = (pool.clone(), board.clone());
                    async move {
                        ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render(&pool, &board).await)
                    }
                }),
            )
            .route("/health", get(|| async { "ok" }));
    tracing::info!(addr = %bound, "serving /metrics");
    println!("metrics on http://{bound}");
    Ok((listener, app))
}
