//! Analytics queries (analysts and admins): revenue grouped by category, movie or day, the most
//! rented movies, and utilization. Each answers from the analytics read model only.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use projections::analytics::{self, Days, RevenueGroup};
use serde_json::{json, Value};

use super::reads::{read_your_writes, Params};
use crate::accounts::Role;
use crate::error::{ApiError, FieldErrors};
use crate::extract::AuthUser;
use crate::state::AppState;
use crate::validate::{self, parse};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/analytics/revenue", get(revenue))
        .route("/api/v1/analytics/top-movies", get(top_movies))
        .route("/api/v1/analytics/utilization", get(utilization))
}

/// A caller with the analyst or admin role.
struct Analyst;

impl FromRequestParts<AppState> for Analyst {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        if matches!(caller.user.role, Role::Analyst | Role::Admin) {
            Ok(Self)
        } else {
            Err(ApiError::Forbidden("analytics need the analyst or admin role"))
        }
    }
}

/// Collects every invalid query parameter, so one 422 names them all.
#[derive(Default)]
struct Problems(FieldErrors);

impl Problems {
    fn take<T>(&mut self, result: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(ApiError::Validation(errors)) => {
                for (field, messages) in errors {
                    self.0.entry(field).or_default().extend(messages);
                }
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    fn add(&mut self, field: &str, message: &str) {
        self.0.entry(field.to_string()).or_default().push(message.to_string());
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// A `YYYY-MM-DD` query parameter.
fn date(params: &Params, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    let Some(raw) = params.get(name) else { return Ok(None) };
    // chrono also takes one-digit months and days; the contract's format has exactly ten characters.
    let parsed = if raw.len() == 10 { parse::date(&Value::String(raw.to_string())).ok() } else { None };
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
    Ok(Days { from, to })
}

async fn revenue(
    State(state): State<AppState>,
    _caller: Analyst,
    params: Params,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    let group = match params.get("group_by") {
        Some("category") => Some(RevenueGroup::Category),
        Some("movie") => Some(RevenueGroup::Movie),
        Some("day") => Some(RevenueGroup::Day),
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
    let group = group.expect("validated above");
    read_your_writes(&state, &params, &[analytics::NAME]).await?;
    let items: Vec<Value> = state
        .analytics
        .revenue(group, days)
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "key": r.key,
                "label": r.label,
                "rentals": r.rentals,
                "revenue_cents": r.revenue_cents,
                "paid_cents": r.paid_cents,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn top_movies(
    State(state): State<AppState>,
    _caller: Analyst,
    params: Params,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    let days = days(&params, &mut problems)?;
    let limit = problems.take(params.limit())?;
    problems.take(params.min_position())?;
    problems.finish()?;
    let limit = limit.expect("validated above");
    read_your_writes(&state, &params, &[analytics::NAME]).await?;
    let items: Vec<Value> = state
        .analytics
        .top_movies(days, limit)
        .await?
        .into_iter()
        .map(|m| json!({ "movie_id": m.movie_id, "title": m.title, "rentals": m.rentals }))
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

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
    let now = validate::now();
    let to: DateTime<Utc> = days.to_time().unwrap_or(now);
    let from = match days.from_time() {
        Some(from) => from,
        None => state.analytics.origin().await?.unwrap_or(to).min(to),
    };
    let items: Vec<Value> = state
        .analytics
        .utilization(from, to, now)
        .await?
        .into_iter()
        .map(|u| {
            json!({
                "movie_id": u.movie_id,
                "title": u.title,
                "rented_seconds": u.rented_seconds,
                "period_seconds": u.period_seconds,
                "share": u.share,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}
