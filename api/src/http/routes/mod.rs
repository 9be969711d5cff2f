//! The HTTP surface: one module per resource, each with its `router()`, merged here.
//! Handlers parse the request, call a service (the command executor, accounts, a lookup) and
//! answer as API.md says. No SQL here.
//!
//! Every handler carries `#[utoipa::path(...)]` and is added with
//! `.routes(utoipa_axum::routes!(handler))`: that one registration routes it and documents it in
//! `/openapi.json` (see [`crate::http::openapi`]).

mod accounts;
mod admin;
mod analytics;
mod audit;
mod categories;
mod movies;
mod notifications;
mod ops;
mod reads;
mod rentals;
pub mod schemas;
pub(crate) mod views;

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::http::openapi::ApiRouter;
use crate::http::state::AppState;

/// Every route of the API, with `/openapi.json` describing them and `/docs`.
pub fn router() -> Router<AppState> {
    ApiRouter::new()
        .merge(ops::router())
        .merge(accounts::router())
        .merge(categories::router())
        .merge(movies::router())
        .merge(rentals::router())
        .merge(analytics::router())
        .merge(admin::router())
        .merge(notifications::router())
        .merge(audit::router())
        .into_router()
}

/// The header that carries a command's position (the only place a 204 has it).
pub const POSITION_HEADER: &str = "x-position";

/// Adds `x-position` to a command's answer.
pub(crate) fn with_position(position: i64, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(HeaderName::from_static(POSITION_HEADER), HeaderValue::from(position));
    response
}

/// Adds `Location` to a creation's answer.
pub(crate) fn with_location(location: String, response: Response) -> Response {
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(axum::http::header::LOCATION, value);
    }
    response
}
