//! Liveness, readiness and the Prometheus scrape (all unauthenticated).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when PostgreSQL answers, else 503; the body tells each dependency's state.
async fn ready(State(state): State<AppState>) -> Response {
    let (projections, redis) = tokio::join!(projections::engine::checkpoints(&state.db), state.cache.is_up());
    let postgres = projections.is_ok();
    let projectors: Vec<_> = projections
        .unwrap_or_default()
        .into_iter()
        .map(|p| json!({ "name": p.name, "state": p.state, "lag_events": p.lag_events }))
        .collect();
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if postgres { "ready" } else { "unavailable" },
        "postgres": if postgres { "up" } else { "down" },
        "redis": if redis { "up" } else { "down" },
        "projections": projectors,
    });
    (status, Json(body)).into_response()
}

/// Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let body = crate::metrics::render(&state.db).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
