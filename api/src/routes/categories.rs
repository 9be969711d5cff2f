//! Category commands: create and rename (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{patch, post};
use axum::{Json, Router};
use domain::category::{Category, CategoryCommand};
use domain::values::CategoryName;
use projections::store::lookup;
use serde_json::json;
use uuid::Uuid;

use super::{with_location, with_position};
use crate::error::ApiError;
use crate::extract::{Admin, Body, PathId};
use crate::state::AppState;
use crate::validate::{parse, Fields};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/categories", post(create)).route("/api/v1/categories/{id}", patch(rename))
}

fn name_from(body: &Body) -> Result<CategoryName, ApiError> {
    let mut f = Fields::new(body.required_object()?, &["name"]);
    let name = f.required("name", |v| CategoryName::parse(&parse::string(v)?));
    f.finish()?;
    Ok(name.expect("finish() fails when a required field is missing"))
}

async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    let id = Uuid::now_v7();
    let done = state
        .store
        .execute::<Category>(&id.to_string(), CategoryCommand::CreateCategory { name }, &caller.metadata())
        .await?;
    let name = done.state.name.as_ref().map(|n| n.as_str().to_string());
    let body = json!({ "id": id, "name": name, "movie_count": 0, "position": done.position });
    let response = with_position(done.position, (StatusCode::CREATED, Json(body)));
    Ok(with_location(format!("/api/v1/categories/{id}"), response))
}

async fn rename(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathId(id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    let done = state
        .store
        .execute::<Category>(&id.to_string(), CategoryCommand::RenameCategory { name }, &caller.metadata())
        .await?;
    let movie_count = lookup::category_movie_count(&state.db, id).await?;
    let name = done.state.name.as_ref().map(|n| n.as_str().to_string());
    let body = json!({ "id": id, "name": name, "movie_count": movie_count, "position": done.position });
    Ok(with_position(done.position, Json(body)))
}
