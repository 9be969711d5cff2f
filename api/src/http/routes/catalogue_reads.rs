//! Catalogue queries: categories, the movie listing (filters, search, paging) and movie details
//! (through the Redis cache).

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use projections::catalogue::{self, MovieFilter};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{page, read_your_writes, Params};
use super::schemas::{Categories, Movie, MoviePage, MovieQuery, ReadYourWrites};
use super::views;
use crate::http::error::ApiError;
use crate::http::extract::{AuthUser, PathId};
use crate::http::openapi::{ApiRouter, NotFound, Unauthorized, ValidationFailed};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(categories)).routes(routes!(movies)).routes(routes!(movie))
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

#[derive(Serialize, Deserialize)]
struct MovieCursor {
    t: String,
    i: Uuid,
}

const MAX_SEARCH_WORDS: usize = 10;

/// A page of movies, ordered by title, then id
///
/// Retired movies are never listed.
#[utoipa::path(get, path = "/api/v1/movies", tag = "catalogue", security(("bearer" = [])),
    operation_id = "list_movies",
    params(MovieQuery, ReadYourWrites),
    responses(
        (status = 200, description = "A page.", body = MoviePage),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
    ))]
async fn movies(
    State(state): State<AppState>,
    _caller: AuthUser,
    params: Params,
) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    let after: Option<MovieCursor> = params.cursor()?;
    let available = match params.get("available") {
        None | Some("true") => Some(true),
        Some("false") => Some(false),
        Some("any") => None,
        Some(_) => return Err(ApiError::field("available", "must be true, false or any")),
    };
    let words: Vec<String> = params.get("q").unwrap_or("").split_whitespace().map(str::to_string).collect();
    if words.len() > MAX_SEARCH_WORDS {
        return Err(ApiError::field("q", format!("may have at most {MAX_SEARCH_WORDS} words")));
    }
    if words.iter().any(|w| w.chars().count() > 100) {
        return Err(ApiError::field("q", "words may have at most 100 characters"));
    }
    read_your_writes(&state, &params, &[catalogue::NAME]).await?;
    let category = match params.get("category").map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => match Uuid::parse_str(raw) {
            Ok(id) => Some(id),
            Err(_) => match state.catalogue.category_by_name(raw).await? {
                Some(id) => Some(id),
                // No such category: nothing is in it.
                None => return Ok(Json(MoviePage { items: Vec::new(), next_cursor: None }).into_response()),
            },
        },
    };
    let filter = MovieFilter { category, words, available, after: after.map(|c| (c.t, c.i)), limit };
    let rows = state.catalogue.movies(&filter).await?;
    Ok(page(rows, limit, |m| MovieCursor { t: m.title.clone(), i: m.movie_id }, views::movie_summary))
}

/// One movie, also a retired one
///
/// Served from the Redis cache when warm (`x-cache: hit`), else from PostgreSQL (`miss`).
#[utoipa::path(get, path = "/api/v1/movies/{id}", tag = "catalogue", security(("bearer" = [])),
    operation_id = "get_movie",
    params(("id" = Uuid, Path, description = "The movie's id."), ReadYourWrites),
    responses(
        (status = 200, description = "The movie.", body = Movie,
            headers(("x-cache" = String, description = "`hit` or `miss`."))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    ))]
async fn movie(
    State(state): State<AppState>,
    _caller: AuthUser,
    PathId(id): PathId,
    params: Params,
) -> Result<Response, ApiError> {
    let fresh = read_your_writes(&state, &params, &[catalogue::NAME]).await?;
    if !fresh {
        if let Some(body) = state.cache.get_movie(id).await {
            return Ok(json_with_cache(body, "hit"));
        }
    }
    let row = state.catalogue.movie(id).await?.ok_or(ApiError::NotFound("movie"))?;
    let body = views::movie_json(&row);
    state.cache.put_movie(id, row.revision, &body).await;
    Ok(json_with_cache(body, "miss"))
}

fn json_with_cache(body: String, cache: &'static str) -> Response {
    let mut response =
        ([(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
            .into_response();
    response.headers_mut().insert("x-cache", HeaderValue::from_static(cache));
    response
}
