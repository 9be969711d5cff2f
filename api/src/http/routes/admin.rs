//! Operating the projections (admin): their progress (the due-date scheduler's included),
//! rebuilding a read model, and the periodic jobs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::routes;

use super::schemas::{Job, Jobs, ProjectionProgress, Projections, RebuildStarted};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Admin;
use crate::http::openapi::{ApiRouter, Forbidden, NotFound, Unauthorized};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(list)).routes(routes!(rebuild)).routes(routes!(jobs))
}

/// Every projection's progress (admin)
///
/// The read models, the payments process manager, the notifications projection (which queues
/// emails), the due-date scheduler (`due-dates`: its `position` is the last `RentalOverdue` it
/// appended, `lag_events` the timers due and not fired yet, `lag_seconds` how late the oldest of
/// them is) and the email sender (`notification-sender`: `position` counts the emails sent,
/// `lag_events` the ones queued and not sent yet, `lag_seconds` how long the oldest has waited;
/// `failing` while the SMTP server cannot be reached).
#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "operations", security(("bearer" = [])),
    operation_id = "list_projections",
    responses(
        (status = 200, description = "One item per projection, by name.", body = Projections),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ))]
async fn list(State(state): State<AppState>, Admin(_caller): Admin) -> Result<Response, ApiError> {
    let mut items = projections::engine::checkpoints(&state.db).await?;
    items.push(projections::deadlines::status(&state.db).await?);
    items.push(projections::notifications::sender_status(&state.db).await?);
    items.sort_by(|a, b| a.name.cmp(&b.name));
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
    operation_id = "rebuild_projection",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The read model: `catalogue` or `rentals`.")),
    responses(
        (status = 202, description = "The rebuild has started.", body = RebuildStarted),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-rebuildable`: a process manager, not a read model; \
            `rebuild-running`: a rebuild or verify of it runs (in any process).",
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
    let claim = match projections::rebuild::RebuildClaim::take(&pool, &[projection.name()]).await {
        Ok(claim) => claim,
        Err(projections::engine::ProjectionError::RebuildRunning(_)) => {
            return Err(ApiError::rejected(
                StatusCode::CONFLICT,
                "rebuild-running",
                format!("a rebuild or verify of {name} is running: wait for it to finish"),
            ))
        }
        Err(projections::engine::ProjectionError::Database(error)) => return Err(error.into()),
        Err(error) => return Err(ApiError::Internal(error.into())),
    };
    let body = RebuildStarted { name: projection.name().to_string(), state: "rebuilding".into() };
    tokio::spawn(async move {
        match projections::rebuild::rebuild_claimed(&pool, claim, &[projection], &()).await {
            Ok(done) => tracing::info!(projection = %name, events = done[0].events, "rebuild finished"),
            Err(error) => tracing::error!(projection = %name, %error, "rebuild failed"),
        }
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The periodic jobs (admin)
///
/// Each job runs in one process at a time; a failed run shows its error in `last_outcome` and is
/// retried a few seconds later.
#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "operations", security(("bearer" = [])),
    operation_id = "list_jobs",
    responses(
        (status = 200, description = "One item per job, by name.", body = Jobs),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ))]
async fn jobs(State(state): State<AppState>, Admin(_caller): Admin) -> Result<Response, ApiError> {
    let items = crate::jobs::list(&state.db)
        .await?
        .into_iter()
        .map(|row| Job {
            name: row.name,
            every_seconds: i64::from(row.every_seconds),
            last_run_at: row.last_run_at,
            last_outcome: row.last_outcome,
            next_run_at: row.next_run_at,
        })
        .collect();
    Ok(Json(Jobs { items }).into_response())
}
