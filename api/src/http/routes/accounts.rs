//! Register, log in and out, the caller's own account, password change, admin role change.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use projections::rentals;
use secrecy::ExposeSecret;
use utoipa_axum::routes;

use super::reads::{read_your_writes, Params};
use super::schemas::{
    LoginRequest, Me, Money, PasswordChange, ReadYourWrites, RegisterRequest, Registered, RoleChange,
};
use crate::accounts::{IssuedToken, LoginOutcome, PasswordChangeOutcome, RoleRefusal, User};
use crate::http::client::ClientAddr;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Admin, AuthUser, Body, PathId};
use crate::http::openapi::{
    ApiRouter, Forbidden, NotFound, PayloadTooLarge, RateLimited, Unauthorized, UnsupportedMediaType,
    ValidationFailed,
};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(change_password))
        .routes(routes!(set_role))
        .routes(routes!(me))
}

/// Register a customer account
///
/// Creates a customer and logs them in; a `welcome` email is queued with the account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "accounts",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The account and its first token.", body = Registered),
        (status = 409, description = "`username-taken` or `email-taken` (compared whatever the case and Unicode form).",
            body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn register(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: RegisterRequest = body.parse()?;
    let (username, email, password) = (request.username.0 .0, request.email.0 .0, request.password.0 .0);
    let user = state.accounts.register(&username, &email, &password).await?;
    let issued = state.accounts.issue_token(user.id).await?;
    let body = Registered { user, token: issued.token, expires_at: issued.expires_at };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Log in
///
/// An unknown user and a wrong password get the same 401. After 10 failed logins for one
/// username from one client address within 5 minutes, further attempts get 429 until the window
/// passes.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "accounts",
    request_body(content = LoginRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A new token.", body = IssuedToken),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
    ))]
async fn login(State(state): State<AppState>, client: ClientAddr, body: Body) -> Result<Response, ApiError> {
    let request: LoginRequest = body.parse()?;
    let (username, password) = (request.username.0, request.password.0);
    match state.accounts.login(&username, password, &client.to_string()).await? {
        LoginOutcome::Success(issued) => Ok(Json(issued).into_response()),
        LoginOutcome::InvalidCredentials => Err(ApiError::Unauthorized),
        LoginOutcome::Throttled { retry_after_secs } => Err(ApiError::TooManyRequests { retry_after_secs }),
    }
}

/// Log out
///
/// The token used stops working at once, in every process.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out."),
        (status = 401, response = Unauthorized),
    ))]
async fn logout(State(state): State<AppState>, caller: AuthUser) -> Result<StatusCode, ApiError> {
    state.accounts.logout(&caller.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change the caller's password
///
/// Every other token of the account is revoked.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "accounts", security(("bearer" = [])),
    request_body(content = PasswordChange, content_type = "application/json"),
    responses(
        (status = 204, description = "Changed."),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
    ))]
async fn change_password(
    State(state): State<AppState>,
    client: ClientAddr,
    caller: AuthUser,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let request: PasswordChange = body.parse()?;
    let (current, new) = (request.current_password.0, request.new_password.0 .0);
    if current.expose_secret() == new.expose_secret() {
        return Err(ApiError::field("new_password", "must differ from the current password"));
    }
    // The current password is checked only once everything else is valid, so an invalid request
    // says nothing about it; the check counts in the login throttle.
    let peer = client.to_string();
    match state.accounts.change_password(&caller.user, &caller.token_hash, current, new, &peer).await? {
        PasswordChangeOutcome::Changed => Ok(StatusCode::NO_CONTENT),
        PasswordChangeOutcome::WrongCurrentPassword => {
            Err(ApiError::field("current_password", "is not correct"))
        }
        PasswordChangeOutcome::Throttled { retry_after_secs } => {
            Err(ApiError::TooManyRequests { retry_after_secs })
        }
    }
}

/// Set an account's role (admin)
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account's id.")),
    request_body(content = RoleChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The account.", body = User),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`last-admin`: it would leave no admin.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn set_role(
    State(state): State<AppState>,
    Admin(_caller): Admin,
    PathId(user_id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let role = body.parse::<RoleChange>()?.role.0;
    match state.accounts.set_role(user_id, role).await?.ok_or(ApiError::NotFound("user"))? {
        Ok(user) => Ok(Json(user).into_response()),
        Err(RoleRefusal::LastAdmin) => Err(ApiError::rejected(
            StatusCode::CONFLICT,
            "last-admin",
            "this is the last admin: make another account an admin first",
        )),
        Err(RoleRefusal::NoEmail) => {
            Err(ApiError::field("role", "a customer needs an email, and this account has none"))
        }
    }
}

/// The caller's account, with what they owe
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts", security(("bearer" = [])),
    operation_id = "get_me",
    params(ReadYourWrites),
    responses(
        (status = 200, description = "The account and `balance_due`, the sum of charges assessed and not yet paid.", body = Me),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    ))]
async fn me(State(state): State<AppState>, caller: AuthUser, params: Params) -> Result<Response, ApiError> {
    read_your_writes(&state, &params, &[rentals::NAME]).await?;
    let due = state.rentals.balance_due(caller.user.id).await?;
    let balance_due = Money { amount_cents: due, currency: state.price_plan.currency.clone() };
    Ok(Json(Me { user: std::sync::Arc::unwrap_or_clone(caller.user), balance_due }).into_response())
}
