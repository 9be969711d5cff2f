//! Rental queries: one rental, a page of rentals, and the caller's own account with its balance.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::rentals::{self, RentalFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::reads::{page, read_your_writes, Params};
use super::views;
use crate::accounts::Role;
use crate::error::ApiError;
use crate::extract::{AuthUser, PathId};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rentals", get(list))
        .route("/api/v1/rentals/{id}", get(one))
        .route("/api/v1/me", get(me))
}

fn sees_everyone(caller: &AuthUser) -> bool {
    matches!(caller.user.role, Role::Admin | Role::Auditor)
}

async fn one(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
    params: Params,
) -> Result<Response, ApiError> {
    if !matches!(caller.user.role, Role::Customer | Role::Admin | Role::Auditor) {
        return Err(ApiError::Forbidden("analysts do not read individual rentals"));
    }
    read_your_writes(&state, &params, &[rentals::NAME]).await?;
    let row = state.rentals.rental(id).await?.ok_or(ApiError::NotFound("rental"))?;
    if !sees_everyone(&caller) && row.customer_id != caller.user.id {
        return Err(ApiError::Forbidden("this rental belongs to another customer"));
    }
    Ok(Json(views::rental(&row)).into_response())
}

#[derive(Serialize, Deserialize)]
struct RentalCursor {
    r: DateTime<Utc>,
    i: Uuid,
}

async fn list(State(state): State<AppState>, caller: AuthUser, params: Params) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    let after: Option<RentalCursor> = params.cursor()?;
    let status = match params.get("status") {
        None => None,
        Some(s @ ("active" | "returned" | "charged" | "paid")) => Some(s.to_string()),
        Some(_) => return Err(ApiError::field("status", "must be active, returned, charged or paid")),
    };
    let customer = match params.get("customer_id") {
        None => (!sees_everyone(&caller)).then_some(caller.user.id),
        Some(raw) => {
            let id = Uuid::parse_str(raw).map_err(|_| ApiError::field("customer_id", "must be a UUID"))?;
            if !sees_everyone(&caller) && id != caller.user.id {
                return Err(ApiError::Forbidden("only admins and auditors list other customers' rentals"));
            }
            Some(id)
        }
    };
    read_your_writes(&state, &params, &[rentals::NAME]).await?;
    let filter = RentalFilter { customer, status, after: after.map(|c| (c.r, c.i)), limit };
    let rows = state.rentals.rentals(&filter).await?;
    Ok(page(rows, limit, |r| RentalCursor { r: r.rented_at, i: r.rental_id }, views::rental))
}

async fn me(State(state): State<AppState>, caller: AuthUser, params: Params) -> Result<Response, ApiError> {
    read_your_writes(&state, &params, &[rentals::NAME]).await?;
    let due = state.rentals.balance_due(caller.user.id).await?;
    let mut body = serde_json::to_value(&caller.user).map_err(|e| ApiError::Internal(e.into()))?;
    body["balance_due"] = json!({ "amount_cents": due, "currency": state.price_plan.currency });
    Ok(Json(body).into_response())
}
