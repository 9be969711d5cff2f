//! Every `/categories` route: the list, read from the catalogue, and the commands create and
//! rename (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::category::{Category, CategoryCommand};
use domain::values::CategoryName;
use eventstore::lookup;
use projections::catalogue;
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{read_your_writes, Params};
use super::schemas::{self, Categories, CategoryChanged, ReadYourWrites};
use super::{views, with_location, with_position};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Admin, AuthUser, Body, PathId};
use crate::http::openapi::{
    ApiRouter, Forbidden, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(create)).routes(routes!(rename)).routes(routes!(categories))
}

fn changed(id: Uuid, name: Option<String>, movie_count: i64, position: i64) -> Json<CategoryChanged> {
    let category = schemas::Category { id, name: name.unwrap_or_default(), movie_count };
    Json(CategoryChanged { category, position })
}

fn name_from(body: &Body) -> Result<CategoryName, ApiError> {
    Ok(body.parse::<schemas::CategoryName>()?.name.0)
}

/// Create a category (admin)
#[utoipa::path(post, path = "/api/v1/categories", tag = "catalogue", security(("bearer" = [])),
    operation_id = "create_category",
    request_body(content = schemas::CategoryName, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `Location` names it.", body = CategoryChanged,
            headers(("x-position" = i64, description = "The command's position."),
                ("Location" = String, description = "The category's URL."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, description = "`name-taken`: a category has that name (compared whatever the case and Unicode form).",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    let id = Uuid::now_v7();
    let done = state
        .store
        .execute::<Category>(&id.to_string(), CategoryCommand::CreateCategory { name }, &caller.context())
        .await?;
    let name = done.state.name.as_ref().map(|n| n.as_str().to_string());
    let body = changed(id, name, 0, done.position);
    let response = with_position(done.position, (StatusCode::CREATED, body));
    Ok(with_location(format!("/api/v1/categories/{id}"), response))
}

/// Rename a category (admin)
#[utoipa::path(patch, path = "/api/v1/categories/{id}", tag = "catalogue", security(("bearer" = [])),
    operation_id = "rename_category",
    params(("id" = Uuid, Path, description = "The category's id.")),
    request_body(content = schemas::CategoryName, content_type = "application/json"),
    responses(
        (status = 200, description = "Renamed.", body = CategoryChanged,
            headers(("x-position" = i64, description = "The command's position."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`name-taken`: another category has that name (compared whatever the case and Unicode form).",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn rename(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathId(id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    let done = state
        .store
        .execute::<Category>(&id.to_string(), CategoryCommand::RenameCategory { name }, &caller.context())
        .await?;
    let movie_count = lookup::category_movie_count(&state.db, id).await?;
    let name = done.state.name.as_ref().map(|n| n.as_str().to_string());
    Ok(with_position(done.position, changed(id, name, movie_count, done.position)))
}

/// Every category, ordered by name
///
/// `movie_count` counts movies not retired.
#[utoipa::path(get, path = "/api/v1/categories", tag = "catalogue", security(("bearer" = [])),
    operation_id = "list_categories",
    params(ReadYourWrites),
    responses(
        (status = 200, description = "The categories.", body = Categories),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    ))]
async fn categories(
    State(state): State<AppState>,
    _caller: AuthUser,
    params: Params,
) -> Result<Response, ApiError> {
    read_your_writes(&state, &params, &[catalogue::NAME]).await?;
    let items = state.catalogue.categories().await?.iter().map(views::category).collect();
    Ok(Json(Categories { items }).into_response())
}
