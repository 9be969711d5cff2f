//! Every `/rentals` route: the listing and one rental, read from the rentals read model, and the
//! commands return (on the movie's stream) and pay (on the rental's stream), by the renter or an
//! admin. The rental lookup, written in the rent's own transaction, finds a rental the
//! moment its rent has answered and says whose it is, so ownership is settled (403) before the
//! body is read, as the contract orders the checks.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::movie::{Movie, MovieCommand};
use domain::rental::{Rental, RentalCommand, RentalError, RentalStatus};
use eventstore::CommandError;
use projections::rentals::{self, RentalFilter, RentalTarget};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{page, read_your_writes, Params};
use super::schemas::{
    self, Charge, NoFields, Payment, ReadYourWrites, RentalChanged, RentalPage, RentalQuery, ReturnRequest,
};
use super::{views, with_position};
use crate::accounts::Role;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{AuthUser, Body, PathId, Renter};
use crate::http::openapi::{
    ApiRouter, Forbidden, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use crate::http::state::AppState;
use crate::http::validate::Valid;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(return_movie))
        .routes(routes!(pay))
        .routes(routes!(list))
        .routes(routes!(one))
}

/// The rental, when it exists and the caller may act on it. An unknown rental is reported only
/// after the body is checked (the contract's order: 403, body, then 404), hence `Option`. With
/// `must_know_return`, whether it was returned is read unless this process knows it was.
async fn owned_rental(
    state: &AppState,
    caller: &AuthUser,
    rental_id: Uuid,
    must_know_return: bool,
) -> Result<Option<RentalTarget>, ApiError> {
    let rental = state.rentals.target(rental_id, must_know_return).await?;
    if let Some(rental) = &rental {
        if !caller.actor().may_act_for(rental.lookup.customer_id) {
            return Err(ApiError::Forbidden("this rental belongs to another customer"));
        }
    }
    Ok(rental)
}

/// The title the rental's answer shows: the read model's (the title when rented, as
/// `GET /rentals/{id}` shows it) or, before the read model has the rental, the movie's own.
async fn movie_title(state: &AppState, rental: &RentalTarget) -> Result<Option<String>, ApiError> {
    if let Some(title) = &rental.movie_title {
        return Ok(Some(title.clone()));
    }
    let movie = state.store.load::<Movie>(&rental.lookup.movie_id.to_string()).await?;
    Ok(views::title(&movie.state))
}

/// How close to its due time a rental's overdue is taken from its own stream rather than the read
/// model, which may not have applied the `RentalOverdue` yet (the clocks of this process and of
/// whichever process records it may differ a little).
const OVERDUE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The rental's due time and the due time it passed. The read model's, unless the rental may have
/// gone overdue since the read model last applied it (its due time is near or past and the row
/// shows no overdue): then the rental's own stream says.
async fn due_dates(
    state: &AppState,
    rental: &RentalTarget,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), ApiError> {
    let due_at = views::due_at(rental.due_at, rental.lookup.rented_at, state.config.loan);
    if rental.overdue_at.is_some() || now + OVERDUE_MARGIN < due_at {
        return Ok((due_at, rental.overdue_at));
    }
    let opened = state.store.load::<Rental>(&rental.lookup.rental_id.to_string()).await?.state;
    Ok((views::due_at(opened.due_at, rental.lookup.rented_at, state.config.loan), opened.overdue_at))
}

fn status_name(status: RentalStatus) -> String {
    match status {
        RentalStatus::Active => "active",
        RentalStatus::Returned => "returned",
        RentalStatus::Charged => "charged",
        RentalStatus::Paid => "paid",
    }
    .to_string()
}

/// Return a rented movie (the renter, or an admin)
///
/// The charge is assessed asynchronously after the return; read the rental with
/// `?min_position=` the answer's `position` to see it.
#[utoipa::path(post, path = "/api/v1/rentals/{id}/return", tag = "renting", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The rental's id.")),
    request_body(content = Option<ReturnRequest>, content_type = "application/json",
        description = "Admins only (403 for a customer who sends `returned_at`)."),
    responses(
        (status = 200, description = "Returned (`status` `returned`).", body = RentalChanged,
            headers(("x-position" = i64, description = "The command's position."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-active`: already returned.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn return_movie(
    State(state): State<AppState>,
    Renter(caller): Renter,
    PathId(rental_id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let rental = owned_rental(&state, &caller, rental_id, false).await?;
    if !caller.is_admin() && body.object()?.is_some_and(|map| map.contains_key("returned_at")) {
        return Err(ApiError::Forbidden("only an admin may back-date a return"));
    }
    let now = crate::clock::now();
    let returned_at = if caller.is_admin() {
        let mut given = body.parse_checked::<ReturnRequest>()?;
        if given.field::<Valid<DateTime<Utc>>>("returned_at").is_some_and(|Valid(at)| at > now) {
            given.fail("returned_at", "must not be in the future");
        }
        given.finish()?.returned_at.map(|at| at.0)
    } else {
        body.parse::<NoFields>()?;
        None
    };
    let rental = rental.ok_or(ApiError::NotFound("rental"))?;
    let returned_at = returned_at.unwrap_or(now);
    let command = MovieCommand::ReturnMovie { rental_id, by: caller.actor(), returned_at, now };
    let done =
        state.store.execute::<Movie>(&rental.lookup.movie_id.to_string(), command, &caller.context()).await?;
    state.rentals.returned(rental_id, returned_at);
    let title = views::title(&done.state);
    let (due_at, overdue_at) = due_dates(&state, &rental, now).await?;
    let rental = schemas::Rental {
        id: rental_id,
        movie_id: rental.lookup.movie_id,
        movie_title: title.unwrap_or_default(),
        customer_id: rental.lookup.customer_id,
        rented_at: rental.lookup.rented_at,
        due_at,
        overdue_at,
        returned_at: Some(returned_at),
        status: status_name(RentalStatus::Returned),
        charge: None,
        paid_at: None,
    };
    Ok(with_position(done.position, Json(RentalChanged { rental, position: done.position })))
}

/// How long a payment that finds its charge not yet assessed waits for the payments process
/// manager of its process before answering `charge-pending`. The process manager assesses a
/// charge within tens of milliseconds of the return under load (its lag p99 at half the machine's
/// command rate is under 50 ms), so the wait ends long before this unless it is stopped or behind.
pub const PAYMENT_WAITS_FOR_CHARGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Pay for a returned rental (the renter, or an admin)
///
/// The amount must be exactly the charge. A payment that comes before the charge is assessed
/// waits up to a second for it (where the server computes charges itself) before answering
/// `charge-pending`.
#[utoipa::path(post, path = "/api/v1/rentals/{id}/pay", tag = "renting", security(("bearer" = [])),
    operation_id = "pay_rental",
    params(("id" = Uuid, Path, description = "The rental's id.")),
    request_body(content = Payment, content_type = "application/json"),
    responses(
        (status = 200, description = "Paid (`status` `paid`).", body = RentalChanged,
            headers(("x-position" = i64, description = "The command's position."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-returned` (still active), `charge-pending` (returned, the charge \
            is not computed yet: retry) or `already-paid`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn pay(
    State(state): State<AppState>,
    Renter(caller): Renter,
    PathId(rental_id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let rental = owned_rental(&state, &caller, rental_id, true).await?;
    let amount_cents = body.parse::<Payment>()?.amount_cents.0 .0;
    let rental = rental.ok_or(ApiError::NotFound("rental"))?;
    if rental.lookup.returned_at.is_none() {
        return Err(ApiError::rejected(
            axum::http::StatusCode::CONFLICT,
            "not-returned",
            "the rental is still active: return the movie first",
        ));
    }
    let (stream, context) = (rental_id.to_string(), caller.context());
    let pay = || {
        let command =
            RentalCommand::PayRental { amount_cents, by: caller.actor(), paid_at: crate::clock::now() };
        state.store.execute::<Rental>(&stream, command, &context)
    };
    // Right after the return the payments process manager may not have assessed the charge yet.
    // Where it runs in this process, the payment waits for it (briefly) and is tried once more,
    // instead of answering `charge-pending` for the client to retry.
    let wait = state.charge_waits.as_ref().map(|waits| waits.wait_for(rental_id));
    let mut done = pay().await;
    if let (Err(CommandError::Rejected(RentalError::NotOpened | RentalError::NotReturned)), Some(wait)) =
        (&done, wait)
    {
        if wait.assessed_within(PAYMENT_WAITS_FOR_CHARGE).await {
            done = pay().await;
        }
    }
    let done = done?;
    let title = movie_title(&state, &rental).await?;
    let r = &done.state;
    let rental = schemas::Rental {
        id: rental_id,
        movie_id: rental.lookup.movie_id,
        movie_title: title.unwrap_or_default(),
        customer_id: rental.lookup.customer_id,
        rented_at: r.rented_at.unwrap_or(rental.lookup.rented_at),
        due_at: views::due_at(r.due_at, rental.lookup.rented_at, state.config.loan),
        overdue_at: r.overdue_at,
        returned_at: r.returned_at,
        status: r.status().map(status_name).unwrap_or_default(),
        charge: r.charge.as_ref().map(|c| Charge {
            days: i64::from(c.days),
            amount_cents: c.amount_cents,
            currency: c.currency.clone(),
        }),
        paid_at: r.paid_at,
    };
    Ok(with_position(done.position, Json(RentalChanged { rental, position: done.position })))
}

fn sees_everyone(caller: &AuthUser) -> bool {
    matches!(caller.user.role, Role::Admin | Role::Auditor)
}

/// One rental (its renter, an admin or an auditor)
#[utoipa::path(get, path = "/api/v1/rentals/{id}", tag = "renting", security(("bearer" = [])),
    operation_id = "get_rental",
    params(("id" = Uuid, Path, description = "The rental's id."), ReadYourWrites),
    responses(
        (status = 200, description = "The rental.", body = schemas::Rental),
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
    Ok(page::<RentalPage, _, _>(
        rows,
        limit,
        |r| RentalCursor { r: r.rented_at, i: r.rental_id },
        |r| views::rental(r, loan),
    ))
}
