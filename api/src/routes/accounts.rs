//! Register, log in and out, the caller's own account, password change, admin role change.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::accounts::{validate_email, validate_password, validate_username, LoginOutcome, Role};
use crate::error::ApiError;
use crate::extract::{Admin, AuthUser, Body, PathId};
use crate::state::AppState;
use crate::validate::{parse, Fields};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/me/password", post(change_password))
        .route("/api/v1/admin/users/{id}", patch(set_role))
}

fn checked(
    rule: fn(&str) -> Result<(), String>,
) -> impl FnOnce(&serde_json::Value) -> Result<String, String> {
    move |value| {
        let text = parse::string(value)?;
        rule(&text)?;
        Ok(text)
    }
}

fn secret(value: &serde_json::Value) -> Result<SecretString, String> {
    parse::string(value).map(SecretString::from)
}

async fn register(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let mut f = Fields::new(body.required_object()?, &["username", "email", "password"]);
    let username = f.required("username", checked(validate_username));
    let email = f.required("email", checked(validate_email));
    let password = f.required("password", |v| {
        let password = parse::string(v)?;
        validate_password(&password)?;
        Ok(SecretString::from(password))
    });
    f.finish()?;
    let (Some(username), Some(email), Some(password)) = (username, email, password) else {
        unreachable!("finish() fails when a required field is missing")
    };
    let user = state.accounts.create(&username, Some(&email), &password, Role::Customer).await?;
    let issued = state.accounts.issue_token(user.id).await?;
    let body = json!({ "user": user, "token": issued.token, "expires_at": issued.expires_at });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body.required_object()?, &["username", "password"]);
    let username = f.required("username", parse::string);
    let password = f.required("password", secret);
    f.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        unreachable!("finish() fails when a required field is missing")
    };
    match state.accounts.login(&username, password, &peer.ip().to_string()).await? {
        LoginOutcome::Success(issued) => Ok(Json(issued).into_response()),
        LoginOutcome::InvalidCredentials => Err(ApiError::Unauthorized),
        LoginOutcome::Throttled { retry_after_secs } => Err(ApiError::TooManyRequests { retry_after_secs }),
    }
}

async fn logout(State(state): State<AppState>, caller: AuthUser) -> Result<StatusCode, ApiError> {
    state.accounts.logout(&caller.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_password(
    State(state): State<AppState>,
    caller: AuthUser,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let mut f = Fields::new(body.required_object()?, &["current_password", "new_password"]);
    let current = f.required("current_password", secret);
    let new = f.required("new_password", |v| {
        let password = parse::string(v)?;
        validate_password(&password)?;
        Ok(SecretString::from(password))
    });
    if let (Some(current), Some(new)) = (&current, &new) {
        if current.expose_secret() == new.expose_secret() {
            f.error("new_password", "must differ from the current password");
        }
    }
    // A wrong current password is named together with every other invalid field; when the rest
    // is valid, the change itself checks it.
    if let Some(current) = current.as_ref().filter(|_| !f.is_valid()) {
        if !state.accounts.check_password(caller.user.id, current.clone()).await? {
            f.error("current_password", "is not correct");
        }
    }
    f.finish()?;
    let (Some(current), Some(new)) = (current, new) else {
        unreachable!("finish() fails when a required field is missing")
    };
    let changed = state.accounts.change_password(caller.user.id, &caller.token_hash, current, new).await?;
    if !changed {
        return Err(ApiError::field("current_password", "is not correct"));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn set_role(
    State(state): State<AppState>,
    Admin(_caller): Admin,
    PathId(user_id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body.required_object()?, &["role"]);
    let role = f.required("role", |v| parse::string(v)?.parse::<Role>());
    f.finish()?;
    let role = role.expect("finish() fails when a required field is missing");
    let user = state.accounts.set_role(user_id, role).await?.ok_or(ApiError::NotFound("user"))?;
    Ok(Json(user).into_response())
}
