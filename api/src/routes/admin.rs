//! Operating the projections (admin): their progress, and rebuilding a read model.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::Admin;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/projections", get(list))
        .route("/api/v1/admin/projections/{name}/rebuild", post(rebuild))
}

async fn list(State(state): State<AppState>, Admin(_caller): Admin) -> Result<Response, ApiError> {
    let items = projections::engine::checkpoints(&state.db).await?;
    let items: Vec<_> = items
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "position": s.position,
                "lag_events": s.lag_events,
                "lag_seconds": s.lag_seconds,
                "state": s.state,
                "last_error": s.last_error,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// Starts a rebuild in the background and answers 202 at once; progress shows in the list.
async fn rebuild(
    State(state): State<AppState>,
    Admin(_caller): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let projection = state.engine.projection(&name).ok_or(ApiError::NotFound("projection"))?;
    if !projection.is_read_model() {
        return Err(ApiError::rejected(
            StatusCode::CONFLICT,
            "not-rebuildable",
            format!("{name} is a process manager, not a read model: it is never rebuilt"),
        ));
    }
    let pool = state.db.clone();
    let body = json!({ "name": projection.name(), "state": "rebuilding" });
    tokio::spawn(async move {
        match projections::rebuild::rebuild(&pool, projection, &()).await {
            Ok(done) => tracing::info!(projection = %name, events = done.events, "rebuild finished"),
            Err(error) => tracing::error!(projection = %name, %error, "rebuild failed"),
        }
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
