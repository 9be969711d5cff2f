//! Analytics queries (analysts and admins): revenue grouped by category, movie or day, the most
//! rented movies, and utilization. Each answers from the analytics read model only.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use projections::analytics::{self, Days, RevenueGroup};
use serde::Serialize;
use serde_json::Value;

use super::reads::{read_your_writes, Params, Problems};
use super::schemas::ReadYourWrites;
use crate::http::error::ApiError;
use crate::http::extract::Analyst;
use crate::http::openapi::{ApiRouter, Forbidden, Unauthorized, ValidationFailed};
use crate::http::state::AppState;
use crate::http::validate::parse;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(revenue)).routes(routes!(top_movies)).routes(routes!(utilization))
}

/// A period of whole UTC days, as the query gives it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct Period {
    /// First day counted, `YYYY-MM-DD` (UTC); absent: from the start.
    from: Option<NaiveDate>,
    /// First day not counted, `YYYY-MM-DD` (UTC); absent: until now.
    to: Option<NaiveDate>,
}

impl From<Period> for Days {
    fn from(period: Period) -> Self {
        Days { from: period.from, to: period.to }
    }
}

/// How revenue is grouped.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct Grouping {
    /// Rows per category, movie or UTC day of return.
    #[param(inline)]
    group_by: GroupBy,
}

/// A grouping of revenue.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum GroupBy {
    Category,
    Movie,
    Day,
}

impl From<GroupBy> for RevenueGroup {
    fn from(group: GroupBy) -> Self {
        match group {
            GroupBy::Category => RevenueGroup::Category,
            GroupBy::Movie => RevenueGroup::Movie,
            GroupBy::Day => RevenueGroup::Day,
        }
    }
}

/// How many movies.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct TopLimit {
    /// 1..=100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Revenue of one group: charges assessed on the day of the return.
#[derive(Serialize, ToSchema)]
struct RevenueRow {
    /// The category id, the movie id or the date.
    key: String,
    /// The category's name, the movie's title or the date.
    label: String,
    /// Charges counted.
    rentals: i64,
    revenue_cents: i64,
    /// Of those charges, what has been paid.
    paid_cents: i64,
}

/// Revenue rows.
#[derive(Serialize, ToSchema)]
struct Revenue {
    items: Vec<RevenueRow>,
}

/// A movie and how many rentals of it started in the period.
#[derive(Serialize, ToSchema)]
struct TopMovie {
    movie_id: uuid::Uuid,
    title: String,
    rentals: i64,
}

/// The most rented movies.
#[derive(Serialize, ToSchema)]
struct TopMovies {
    items: Vec<TopMovie>,
}

/// How much of the period a movie's copy was out.
#[derive(Serialize, ToSchema)]
struct MovieUtilization {
    movie_id: uuid::Uuid,
    title: String,
    rented_seconds: f64,
    period_seconds: f64,
    /// `rented_seconds / period_seconds`.
    share: f64,
}

/// Utilization per movie.
#[derive(Serialize, ToSchema)]
struct Utilization {
    items: Vec<MovieUtilization>,
}

/// A `YYYY-MM-DD` query parameter.
fn date(params: &Params, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    let Some(raw) = params.get(name) else { return Ok(None) };
    let parsed = parse::date(&Value::String(raw.to_string())).ok();
    parsed.map(Some).ok_or_else(|| ApiError::field(name, "must be a date YYYY-MM-DD (UTC)"))
}

/// `from` (inclusive) and `to` (exclusive), checked together.
fn days(params: &Params, problems: &mut Problems) -> Result<Days, ApiError> {
    let from = problems.take(date(params, "from"))?.flatten();
    let to = problems.take(date(params, "to"))?.flatten();
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            problems.add("to", "must not be before from");
        }
    }
    Ok(Period { from, to }.into())
}

/// Revenue by category, movie or day
///
/// A movie in several categories counts in each of them.
#[utoipa::path(get, path = "/api/v1/analytics/revenue", tag = "analytics", security(("bearer" = [])),
    operation_id = "get_revenue",
    params(Grouping, Period, ReadYourWrites),
    responses(
        (status = 200, description = "Revenue per group.", body = Revenue),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn revenue(
    State(state): State<AppState>,
    _caller: Analyst,
    params: Params,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    let group_by = match params.get("group_by") {
        Some("category") => Some(GroupBy::Category),
        Some("movie") => Some(GroupBy::Movie),
        Some("day") => Some(GroupBy::Day),
        Some(_) => {
            problems.add("group_by", "must be category, movie or day");
            None
        }
        None => {
            problems.add("group_by", "is required: category, movie or day");
            None
        }
    };
    let days = days(&params, &mut problems)?;
    problems.take(params.min_position())?;
    problems.finish()?;
    let grouping = Grouping { group_by: group_by.expect("validated above") };
    read_your_writes(&state, &params, &[analytics::NAME]).await?;
    let items = state
        .analytics
        .revenue(grouping.group_by.into(), days)
        .await?
        .into_iter()
        .map(|r| RevenueRow {
            key: r.key,
            label: r.label,
            rentals: r.rentals,
            revenue_cents: r.revenue_cents,
            paid_cents: r.paid_cents,
        })
        .collect();
    Ok(Json(Revenue { items }).into_response())
}

/// The most rented movies (rentals started in the period)
#[utoipa::path(get, path = "/api/v1/analytics/top-movies", tag = "analytics", security(("bearer" = [])),
    operation_id = "get_top_movies",
    params(Period, TopLimit, ReadYourWrites),
    responses(
        (status = 200, description = "Most rented first.", body = TopMovies),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn top_movies(
    State(state): State<AppState>,
    _caller: Analyst,
    params: Params,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    let days = days(&params, &mut problems)?;
    let limit = TopLimit { limit: problems.take(params.limit())? };
    problems.take(params.min_position())?;
    problems.finish()?;
    read_your_writes(&state, &params, &[analytics::NAME]).await?;
    let items = state
        .analytics
        .top_movies(days, limit.limit.expect("validated above"))
        .await?
        .into_iter()
        .map(|m| TopMovie { movie_id: m.movie_id, title: m.title, rentals: m.rentals })
        .collect();
    Ok(Json(TopMovies { items }).into_response())
}

/// The share of the period each movie's copy was rented
#[utoipa::path(get, path = "/api/v1/analytics/utilization", tag = "analytics", security(("bearer" = [])),
    operation_id = "get_utilization",
    params(Period, ReadYourWrites),
    responses(
        (status = 200, description = "Utilization per movie.", body = Utilization),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn utilization(
    State(state): State<AppState>,
    _caller: Analyst,
    params: Params,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    let days = days(&params, &mut problems)?;
    problems.take(params.min_position())?;
    problems.finish()?;
    read_your_writes(&state, &params, &[analytics::NAME]).await?;
    let now = crate::clock::now();
    let to: DateTime<Utc> = days.to_time().unwrap_or(now);
    let from = match days.from_time() {
        Some(from) => from,
        None => state.analytics.origin().await?.unwrap_or(to).min(to),
    };
    let items = state
        .analytics
        .utilization(from, to, now)
        .await?
        .into_iter()
        .map(|u| MovieUtilization {
            movie_id: u.movie_id,
            title: u.title,
            rented_seconds: u.rented_seconds,
            period_seconds: u.period_seconds,
            share: u.share,
        })
        .collect();
    Ok(Json(Utilization { items }).into_response())
}
