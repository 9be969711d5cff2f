//! Operating the projections (admin): their progress, and rebuilding a read model.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::routes;

use super::schemas::{ProjectionProgress, Projections, RebuildStarted};
use crate::error::{ApiError, Problem};
use crate::extract::Admin;
use crate::openapi::{ApiRouter, Forbidden, NotFound, Unauthorized};
use crate::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(list)).routes(routes!(rebuild))
}

/// Every projection's progress (admin)
#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "operations", security(("bearer" = [])),
    responses(
        (status = 200, description = "One item per projection, by name.", body = Projections),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ))]
async fn list(State(state): State<AppState>, Admin(_caller): Admin) -> Result<Response, ApiError> {
    let items = projections::engine::checkpoints(&state.db).await?;
    let items = items
        .into_iter()
        .map(|s| ProjectionProgress {
            name: s.name,
            position: s.position,
            lag_events: s.lag_events,
            lag_seconds: s.lag_seconds,
            state: s.state,
            last_error: s.last_error,
        })
        .collect();
    Ok(Json(Projections { items }).into_response())
}

/// Rebuild a read model (admin)
///
/// Replays the log into a shadow table and swaps it in, in the background; progress shows in
/// the list. The payments process manager is not a read model and is never rebuilt.
#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild", tag = "operations",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The read model: `catalogue` or `rentals`.")),
    responses(
        (status = 202, description = "The rebuild has started.", body = RebuildStarted),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-rebuildable`: a process manager, not a read model.",
            body = Problem, content_type = "application/problem+json"),
    ))]
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
    let body = RebuildStarted { name: projection.name().to_string(), state: "rebuilding".into() };
    tokio::spawn(async move {
        match projections::rebuild::rebuild(&pool, projection, &()).await {
            Ok(done) => tracing::info!(projection = %name, events = done.events, "rebuild finished"),
            Err(error) => tracing::error!(projection = %name, %error, "rebuild failed"),
        }
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
