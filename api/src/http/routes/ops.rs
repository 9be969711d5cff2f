//! Liveness, readiness and the Prometheus scrape (all unauthenticated).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::routes;

use super::schemas::{Health, ProjectorReadiness, Readiness};
use crate::http::openapi::ApiRouter;
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(health)).routes(routes!(ready)).routes(routes!(metrics))
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses(
    (status = 200, description = "The process runs.", body = Health),
))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: 200 when PostgreSQL answers, else 503; the body tells each dependency's state.
///
/// Read at most once a second per process, shared between callers.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "PostgreSQL answers.", body = Readiness),
    (status = 503, description = "PostgreSQL does not answer (`status` `unavailable`).", body = Readiness),
))]
async fn ready(State(state): State<AppState>) -> Response {
    let reading = state.status.read().await;
    let postgres = reading.postgres_up();
    let redis = reading.redis.unwrap_or(false);
    let projections = reading
        .projections
        .iter()
        .flatten()
        .map(|p| ProjectorReadiness {
            name: p.name.clone(),
            state: p.state.clone(),
            lag_events: p.lag_events,
        })
        .collect();
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness {
        status: if postgres { "ready" } else { "unavailable" }.into(),
        postgres: if postgres { "up" } else { "down" }.into(),
        redis: if redis { "up" } else { "down" }.into(),
        projections,
    };
    let mut response = (status, Json(body)).into_response();
    if !postgres {
        // Like every 503 of the API: a hint for load balancers and clients when to ask again.
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(1u64));
    }
    response
}

/// Metrics in the Prometheus text format
///
/// Requests and latencies by route and status, commands and conflicts, cache hits and misses,
/// projection position and lag, pool usage.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text.", body = String, content_type = "text/plain; version=0.0.4"),
))]
async fn metrics(State(state): State<AppState>) -> Response {
    let body = crate::http::metrics::render(&state.db, &state.status).await;
    ([(axum::http::header::CONTENT_TYPE, crate::http::metrics::CONTENT_TYPE)], body).into_response()
}
