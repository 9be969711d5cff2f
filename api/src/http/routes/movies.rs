//! Every `/movies` route: the listing (filters, search, paging) and the details (through the
//! Redis cache), read from the catalogue; and the commands add, change, retire (admin) and rent
//! (customer, or admin for a customer), whose answers are built from the aggregate's state after
//! the command.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::movie::{Movie, MovieChanges, MovieCommand, MovieDetails};
use domain::values::{CategoryIds, Storyline};
use eventstore::lookup::RentalRef;
use eventstore::{lookup, Committed};
use projections::catalogue::{self, MovieFilter};
use projections::rentals::RentalTarget;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::{page, read_your_writes, Params};
use super::schemas::{
    self, MovieChange, MovieChanged, MoviePage, MovieQuery, MovieSummary, NewMovie, NoFields, ReadYourWrites,
    RentRequest, Rented,
};
use super::{views, with_location, with_position};
use crate::accounts::Role;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Admin, AuthUser, Body, PathId, Renter};
use crate::http::openapi::{
    ApiRouter, Forbidden, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use crate::http::state::AppState;
use crate::http::validate::{Parsed, Valid};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(add))
        .routes(routes!(update, retire))
        .routes(routes!(rent))
        .routes(routes!(movies))
        .routes(routes!(movie))
}

/// Reports category ids that do not exist (categories are never deleted, so a positive answer
/// cannot go stale before the command commits).
async fn check_categories<T>(state: &AppState, given: &mut Parsed<T>) -> Result<(), ApiError> {
    if let Some(Valid(ids)) = given.field::<Valid<CategoryIds>>("category_ids") {
        let names = lookup::category_names(&state.db, ids.ids()).await?;
        for (id, name) in ids.ids().iter().zip(names) {
            if name.is_none() {
                given.fail("category_ids", format!("category {id} does not exist"));
            }
        }
    }
    Ok(())
}

/// The contract's `Movie`, from the aggregate's state.
async fn movie_body(
    state: &AppState,
    id: Uuid,
    done: &Committed<Movie>,
) -> Result<Json<MovieChanged>, ApiError> {
    let movie = &done.state;
    let details = movie.details.as_ref().ok_or(ApiError::NotFound("movie"))?;
    let categories: Vec<String> =
        lookup::category_names(&state.db, details.category_ids.ids()).await?.into_iter().flatten().collect();
    let summary = MovieSummary {
        id,
        title: details.title.as_str().to_string(),
        release_date: details.release_date,
        rating: details.rating.value(),
        categories,
        available: movie.available(),
    };
    let movie = schemas::Movie {
        summary,
        storyline: details.storyline.as_str().to_string(),
        director: details.director.as_ref().map(|d| d.as_str().to_string()),
        retired: movie.retired,
        times_rented: i64::try_from(movie.times_rented).unwrap_or(i64::MAX),
        version: done.version,
    };
    Ok(Json(MovieChanged { movie, position: done.position }))
}

/// Add a movie (admin)
#[utoipa::path(post, path = "/api/v1/movies", tag = "catalogue", security(("bearer" = [])),
    operation_id = "add_movie",
    request_body(content = NewMovie, content_type = "application/json",
        description = "`title`, `release_date`, `rating` and `category_ids` are required."),
    responses(
        (status = 201, description = "Added; `Location` names it.", body = MovieChanged,
            headers(("x-position" = i64, description = "The command's position."), ("Location" = String, description = "The movie's URL."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn add(State(state): State<AppState>, Admin(caller): Admin, body: Body) -> Result<Response, ApiError> {
    let mut given = body.parse_checked::<NewMovie>()?;
    check_categories(&state, &mut given).await?;
    let given = given.finish()?;
    let details = MovieDetails {
        title: given.title.0,
        storyline: given
            .storyline
            .map_or_else(|| Storyline::parse("").expect("empty storyline is valid"), |storyline| storyline.0),
        release_date: given.release_date.0 .0,
        rating: given.rating.0,
        director: given.director.and_then(|director| director.0),
        category_ids: given.category_ids.0,
    };
    let id = Uuid::now_v7();
    let done = state
        .store
        .execute::<Movie>(&id.to_string(), MovieCommand::AddMovie { details }, &caller.context())
        .await?;
    let body = movie_body(&state, id, &done).await?;
    let response = with_position(done.position, (StatusCode::CREATED, body));
    Ok(with_location(format!("/api/v1/movies/{id}"), response))
}

/// Change a movie (admin)
///
/// Any of the movie's fields; at least one.
#[utoipa::path(patch, path = "/api/v1/movies/{id}", tag = "catalogue", security(("bearer" = [])),
    operation_id = "update_movie",
    params(("id" = Uuid, Path, description = "The movie's id.")),
    request_body(content = MovieChange, content_type = "application/json",
        description = "Any of the fields, at least one."),
    responses(
        (status = 200, description = "Changed.", body = MovieChanged,
            headers(("x-position" = i64, description = "The command's position."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`retired`: the movie is retired; `conflict`: concurrent updates, retry.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn update(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathId(id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let mut given = body.parse_checked::<MovieChange>()?;
    check_categories(&state, &mut given).await?;
    let given = given.finish()?;
    let changes = MovieChanges {
        title: given.title.map(|title| title.0),
        storyline: given.storyline.map(|storyline| storyline.0),
        release_date: given.release_date.map(|date| date.0 .0),
        rating: given.rating.map(|rating| rating.0),
        director: given.director.map(|director| director.0),
        category_ids: given.category_ids.map(|ids| ids.0),
    };
    if changes == MovieChanges::default() {
        return Err(ApiError::field("body", "must change at least one field"));
    }
    let done = state
        .store
        .execute::<Movie>(&id.to_string(), MovieCommand::UpdateMovie { changes }, &caller.context())
        .await?;
    let body = movie_body(&state, id, &done).await?;
    Ok(with_position(done.position, body))
}

/// Retire a movie (admin)
///
/// Kept in history, never listed again, not rentable.
#[utoipa::path(delete, path = "/api/v1/movies/{id}", tag = "catalogue", security(("bearer" = [])),
    operation_id = "retire_movie",
    params(("id" = Uuid, Path, description = "The movie's id.")),
    responses(
        (status = 204, description = "Retired.", headers(("x-position" = i64, description = "The command's position."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-available` while rented; `retired` when already retired.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn retire(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathId(id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    body.parse::<NoFields>()?;
    let done =
        state.store.execute::<Movie>(&id.to_string(), MovieCommand::RetireMovie, &caller.context()).await?;
    Ok(with_position(done.position, StatusCode::NO_CONTENT))
}

/// Rent a movie (customer, or admin for a customer)
///
/// Each movie has one copy: of any number of simultaneous rents of one movie, exactly one gets
/// 201. A customer sends no body; an admin names the customer and may back-date the rent.
#[utoipa::path(post, path = "/api/v1/movies/{id}/rent", tag = "renting", security(("bearer" = [])),
    operation_id = "rent_movie",
    params(("id" = Uuid, Path, description = "The movie's id.")),
    request_body(content = Option<RentRequest>, content_type = "application/json",
        description = "Admins only (403 for anyone else)."),
    responses(
        (status = 201, description = "Rented; `Location` names the rental.", body = Rented,
            headers(("x-position" = i64, description = "The command's position."), ("Location" = String, description = "The rental's URL."))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`not-available`: rented or retired.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    ))]
async fn rent(
    State(state): State<AppState>,
    Renter(caller): Renter,
    PathId(movie_id): PathId,
    body: Body,
) -> Result<Response, ApiError> {
    let now = crate::clock::now();
    let (customer_id, rented_at) = if caller.is_admin() {
        let mut given = body.parse_checked::<RentRequest>()?;
        if given.field::<Valid<chrono::DateTime<chrono::Utc>>>("rented_at").is_some_and(|Valid(at)| at > now)
        {
            given.fail("rented_at", "must not be in the future");
        }
        if let Some(Valid(customer_id)) = given.field::<Valid<Uuid>>("customer_id") {
            let customer = state.accounts.find(customer_id).await?;
            if !customer.is_some_and(|c| c.role == Role::Customer && !c.is_erased()) {
                given.fail("customer_id", "must be the id of a customer account that was not erased");
            }
        }
        let given = given.finish()?;
        (given.customer_id.0, given.rented_at.map_or(now, |at| at.0))
    } else {
        if body.object()?.is_some_and(|map| map.contains_key("customer_id") || map.contains_key("rented_at"))
        {
            return Err(ApiError::Forbidden("only an admin may rent for a customer or back-date a rental"));
        }
        body.parse::<NoFields>()?;
        (caller.user.id, now)
    };
    let rental_id = Uuid::now_v7();
    let command = MovieCommand::RentMovie { rental_id, customer_id, rented_at, now };
    let done = state.store.execute::<Movie>(&movie_id.to_string(), command, &caller.context()).await?;
    // The rental's facts, for its return and payment to start from without a lookup.
    state.rentals.remember(RentalTarget {
        lookup: RentalRef { rental_id, movie_id, customer_id, rented_at, returned_at: None },
        movie_title: views::title(&done.state),
        due_at: None,
        overdue_at: None,
    });
    let body = Rented { rental_id, movie_id, customer_id, rented_at, position: done.position };
    let response = with_position(done.position, (StatusCode::CREATED, Json(body)));
    Ok(with_location(format!("/api/v1/rentals/{rental_id}"), response))
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
    Ok(page::<MoviePage, _, _>(
        rows,
        limit,
        |m| MovieCursor { t: m.title.clone(), i: m.movie_id },
        views::movie_summary,
    ))
}

/// One movie, also a retired one
///
/// Served from the Redis cache when warm (`x-cache: hit`), else from PostgreSQL (`miss`).
#[utoipa::path(get, path = "/api/v1/movies/{id}", tag = "catalogue", security(("bearer" = [])),
    operation_id = "get_movie",
    params(("id" = Uuid, Path, description = "The movie's id."), ReadYourWrites),
    responses(
        (status = 200, description = "The movie.", body = schemas::Movie,
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
    const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
    response.headers_mut().insert(X_CACHE, HeaderValue::from_static(cache));
    response
}
