//! Rental queries: one rental, a page of rentals, and the caller's own account with its balance.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use projections::rentals::{self, RentalFilter};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{page, read_your_writes, Params};
use super::schemas::{Me, Money, ReadYourWrites, Rental, RentalPage, RentalQuery};
use super::views;
use crate::accounts::Role;
use crate::http::error::ApiError;
use crate::http::extract::{AuthUser, PathId};
use crate::http::openapi::{ApiRouter, Forbidden, NotFound, Unauthorized, ValidationFailed};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(list)).routes(routes!(one)).routes(routes!(me))
}

fn sees_everyone(caller: &AuthUser) -> bool {
    matches!(caller.user.role, Role::Admin | Role::Auditor)
}

/// One rental (its renter, an admin or an auditor)
#[utoipa::path(get, path = "/api/v1/rentals/{id}", tag = "renting", security(("bearer" = [])),
    operation_id = "get_rental",
    params(("id" = Uuid, Path, description = "The rental's id."), ReadYourWrites),
    responses(
        (status = 200, description = "The rental.", body = Rental),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    ))]
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
    Ok(Json(views::rental(&row, state.config.loan)).into_response())
}

#[derive(Serialize, Deserialize)]
struct RentalCursor {
    r: DateTime<Utc>,
    i: Uuid,
}

/// A page of rentals, newest `rented_at` first
///
/// The caller's own; admins and auditors see everyone's. `overdue=true` lists the active rentals
/// past their due time, `overdue=false` every other one.
#[utoipa::path(get, path = "/api/v1/rentals", tag = "renting", security(("bearer" = [])),
    operation_id = "list_rentals",
    params(RentalQuery, ReadYourWrites),
    responses(
        (status = 200, description = "A page.", body = RentalPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
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
    let overdue = match params.get("overdue") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::field("overdue", "must be true or false")),
    };
    read_your_writes(&state, &params, &[rentals::NAME]).await?;
    let filter = RentalFilter { customer, status, overdue, after: after.map(|c| (c.r, c.i)), limit };
    let rows = state.rentals.rentals(&filter).await?;
    let loan = state.config.loan;
    Ok(page(rows, limit, |r| RentalCursor { r: r.rented_at, i: r.rental_id }, |r| views::rental(r, loan)))
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
    Ok(Json(Me { user: caller.user, balance_due }).into_response())
}
