//! Email: password reset (request and confirm), the caller's preferences, and the outbox as
//! admins see it (no addresses, no bodies).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{page, Params};
use super::schemas::{
    Accepted, Notification, NotificationPage, NotificationPreferences, NotificationPreferencesChange,
    NotificationQuery, PasswordResetConfirm, PasswordResetRequest, ReadYourWrites,
};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Admin, AuthUser, Body};
use crate::http::openapi::{
    ApiRouter, Forbidden, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
        .routes(routes!(preferences, set_preferences))
        .routes(routes!(list))
}

/// How long a reset request takes at least, whether or not an account has the email, so that its
/// answer time tells nothing either.
const RESET_REQUEST_TIME: Duration = Duration::from_millis(250);

/// The slug of a reset token that is unknown, used or expired.
pub const INVALID_RESET_TOKEN: &str = "invalid-reset-token";

/// Ask for a password reset
///
/// Always 202 `{}`, in the same time, whether or not an account has that email. For a known
/// email, a `password_reset` email carries a link `MOVIESTORE_PUBLIC_URL/reset-password?token=T`
/// and the token; at most 3 such emails per account per hour (further requests send nothing).
#[utoipa::path(post, path = "/api/v1/auth/password-reset", tag = "accounts",
    operation_id = "request_password_reset",
    request_body(content = PasswordResetRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (the same answer for every email).", body = Accepted),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn request_reset(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let email = body.parse::<PasswordResetRequest>()?.email.0;
    let started = tokio::time::Instant::now();
    // The work runs on its own, so the answer's time does not depend on it: a known email costs a
    // transaction more than an unknown one.
    let accounts = state.accounts.clone();
    let work = tokio::spawn(async move { accounts.request_password_reset(&email).await });
    tokio::time::sleep_until(started + RESET_REQUEST_TIME).await;
    match work.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error.into()),
        Err(error) => return Err(ApiError::Internal(anyhow::anyhow!("password reset task: {error}"))),
    }
    Ok((StatusCode::ACCEPTED, Json(Accepted {})).into_response())
}

/// Set a new password with a reset token
///
/// Every token of the account is revoked (in every process) and its login failures are cleared.
/// An unknown, used or expired token is 422 `invalid-reset-token` (the same answer for each).
#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "accounts",
    operation_id = "confirm_password_reset",
    request_body(content = PasswordResetConfirm, content_type = "application/json"),
    responses(
        (status = 204, description = "The password is changed."),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`validation-failed`, or `invalid-reset-token` for a token that is unknown, used or expired.",
            body = Problem, content_type = "application/problem+json"),
    ))]
async fn confirm_reset(State(state): State<AppState>, body: Body) -> Result<StatusCode, ApiError> {
    let request: PasswordResetConfirm = body.parse()?;
    let (token, new) = (request.token.0, request.new_password.0 .0);
    // A token is 43 characters; anything far longer is no token (and is not hashed).
    if token.len() <= 256 && state.accounts.confirm_password_reset(&token, new).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::InvalidFields {
        kind: INVALID_RESET_TOKEN,
        field: "token",
        message: "is unknown, used or expired".into(),
    })
}

/// The caller's email preferences
#[utoipa::path(get, path = "/api/v1/me/notifications", tag = "accounts", security(("bearer" = [])),
    operation_id = "get_notification_preferences",
    params(ReadYourWrites),
    responses(
        (status = 200, description = "Both `true` for a new account.", body = NotificationPreferences),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    ))]
async fn preferences(
    State(state): State<AppState>,
    caller: AuthUser,
    params: Params,
) -> Result<Response, ApiError> {
    // The preferences are no read model: a write is read back at once, so a valid
    // `min_position` has nothing to wait for.
    params.min_position()?;
    let (receipts, reminders) = state.accounts.preferences(caller.user.id).await?;
    Ok(Json(NotificationPreferences { receipts, reminders }).into_response())
}

/// Change the caller's email preferences
///
/// Receipts (rental, return, payment) and overdue reminders; welcome and password-reset emails
/// always go. A field left out keeps its value.
#[utoipa::path(patch, path = "/api/v1/me/notifications", tag = "accounts", security(("bearer" = [])),
    operation_id = "set_notification_preferences",
    request_body(content = NotificationPreferencesChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The preferences now.", body = NotificationPreferences),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn set_preferences(
    State(state): State<AppState>,
    caller: AuthUser,
    body: Body,
) -> Result<Response, ApiError> {
    let change: NotificationPreferencesChange = body.parse()?;
    let (receipts, reminders) = (change.receipts.map(|on| on.0), change.reminders.map(|on| on.0));
    let (receipts, reminders) = state.accounts.set_preferences(caller.user.id, receipts, reminders).await?;
    Ok(Json(NotificationPreferences { receipts, reminders }).into_response())
}

#[derive(Serialize, Deserialize)]
struct NotificationCursor {
    c: DateTime<Utc>,
    i: Uuid,
}

/// The email outbox, newest first (admin)
///
/// No addresses and no bodies: ids, kinds, states, attempts and times.
#[utoipa::path(get, path = "/api/v1/admin/notifications", tag = "operations", security(("bearer" = [])),
    operation_id = "list_notifications",
    params(NotificationQuery),
    responses(
        (status = 200, description = "A page.", body = NotificationPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn list(
    State(state): State<AppState>,
    Admin(_caller): Admin,
    params: Params,
) -> Result<Response, ApiError> {
    use projections::notifications as outbox;
    let limit = params.limit()?;
    let after: Option<NotificationCursor> = params.cursor()?;
    let state_filter = match params.get("state") {
        None => None,
        Some(s) if outbox::STATES.contains(&s) => Some(s.to_string()),
        Some(_) => return Err(ApiError::field("state", "must be pending, sent, failed or skipped")),
    };
    let kind = match params.get("kind") {
        None => None,
        Some(k) if outbox::kind::ALL.contains(&k) => Some(k.to_string()),
        Some(_) => {
            return Err(ApiError::field("kind", format!("must be one of {}", outbox::kind::ALL.join(", "))))
        }
    };
    let user_id = match params.get("user_id") {
        None => None,
        Some(raw) => Some(Uuid::parse_str(raw).map_err(|_| ApiError::field("user_id", "must be a UUID"))?),
    };
    let filter = outbox::ListFilter {
        state: state_filter,
        kind,
        user_id,
        before: after.map(|c| (c.c, c.i)),
        limit: limit + 1,
    };
    let rows = outbox::list(&state.db, &filter).await?;
    Ok(page::<NotificationPage, _, _>(
        rows,
        limit,
        |r| NotificationCursor { c: r.created_at, i: r.id },
        |r| Notification {
            id: r.id,
            kind: r.kind.clone(),
            user_id: r.user_id,
            rental_id: r.rental_id,
            state: r.state.clone(),
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            created_at: r.created_at,
            sent_at: r.sent_at,
        },
    ))
}
