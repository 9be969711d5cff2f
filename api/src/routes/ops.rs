//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when PostgreSQL answers, else 503; the body tells each dependency's state.
async fn ready(State(state): State<AppState>) -> Response {
    let postgres = sqlx::query("select 1").execute(&state.db).await.is_ok();
    let redis = crate::startup::redis_answers(&state.config.redis).await;
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if postgres { "ready" } else { "unavailable" },
        "postgres": if postgres { "up" } else { "down" },
        "redis": if redis { "up" } else { "down" },
    });
    (status, Json(body)).into_response()
}
