//! What every query endpoint shares: paging (`limit`, opaque `cursor`) and read-your-writes
//! (`min_position`). Query handlers read read models only, never aggregates.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// How long a read waits for the projections to reach `min_position` before answering 503.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);

/// The query string, parsed leniently so that every problem becomes a 422 naming its parameter.
pub struct Params(pub HashMap<String, String>);

impl Params {
    /// A parameter's raw value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit`: 1..=100, default 20.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(20),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| ApiError::field("limit", "must be a whole number from 1 to 100")),
        }
    }

    /// A whole-number parameter within `range`, `default` when absent.
    pub fn whole(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse::<i64>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                let message = if *range.end() == i64::MAX {
                    format!("must be a whole number of at least {}", range.start())
                } else {
                    format!("must be a whole number from {} to {}", range.start(), range.end())
                };
                ApiError::field(name, message)
            }),
        }
    }

    /// `cursor`: an opaque token this API gave out.
    pub fn cursor<T: DeserializeOwned>(&self) -> Result<Option<T>, ApiError> {
        self.opaque("cursor")
    }

    /// An opaque token this API gave out, in the parameter `name`.
    pub fn opaque<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        let Some(raw) = self.get(name) else { return Ok(None) };
        let invalid = || ApiError::field(name, "is not a cursor this API gave out");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map(Some).map_err(|_| invalid())
    }

    /// `min_position`: a non-negative whole number.
    pub fn min_position(&self) -> Result<Option<i64>, ApiError> {
        match self.get("min_position") {
            None => Ok(None),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| ApiError::field("min_position", "must be a non-negative whole number")),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(map) =
            axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::MalformedBody("the query string could not be parsed".into()))?;
        // No text a read model holds can contain NUL (PostgreSQL cannot store it), and letting
        // one through would fail the query instead of answering.
        let mut errors = crate::http::error::FieldErrors::new();
        for (name, value) in &map {
            if value.contains('\0') {
                errors.entry(name.clone()).or_default().push("must not contain NUL characters".into());
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(Self(map))
    }
}

/// Collects every invalid query parameter, so one 422 names them all.
#[derive(Default)]
pub struct Problems(crate::http::error::FieldErrors);

impl Problems {
    /// The value, or `None` with its field errors kept (other errors pass through).
    pub fn take<T>(&mut self, result: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
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

    /// One more invalid field.
    pub fn add(&mut self, field: &str, message: &str) {
        self.0.entry(field.to_string()).or_default().push(message.to_string());
    }

    /// 422 naming every kept field, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// Encodes a cursor.
pub fn cursor<T: Serialize>(value: &T) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Waits, when the request asks for it, until the named projections have applied `min_position`.
/// Returns whether a wait was asked for (such reads skip the cache).
pub async fn read_your_writes(
    state: &AppState,
    params: &Params,
    projections: &[&str],
) -> Result<bool, ApiError> {
    let Some(position) = given_out(state, params).await? else { return Ok(false) };
    if position == 0 {
        return Ok(true);
    }
    let reached =
        projections::engine::wait_for_position(&state.db, projections, position, MIN_POSITION_WAIT).await?;
    if reached {
        Ok(true)
    } else {
        Err(not_yet(format!("the read models have not reached position {position} yet; retry shortly")))
    }
}

/// For reads of the log itself (the audit endpoints): waits, when the request asks for it, until
/// the event at `min_position` is released to the log's readers in the projections' order.
pub async fn log_released(state: &AppState, params: &Params) -> Result<(), ApiError> {
    let Some(position) = given_out(state, params).await? else { return Ok(()) };
    if position == 0 || projections::engine::wait_for_release(&state.db, position, MIN_POSITION_WAIT).await? {
        Ok(())
    } else {
        Err(not_yet(format!("the event at position {position} is not in the log yet; retry shortly")))
    }
}

/// `min_position`, refused (422) when no event was ever given that position: only positions that
/// commands answered can be waited for.
async fn given_out(state: &AppState, params: &Params) -> Result<Option<i64>, ApiError> {
    let Some(position) = params.min_position()? else { return Ok(None) };
    if position > 0 && !projections::engine::position_given_out(&state.db, position).await? {
        return Err(ApiError::field("min_position", "is beyond the end of the log: no command answered it"));
    }
    Ok(Some(position))
}

fn not_yet(message: String) -> ApiError {
    ApiError::rejected(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not-yet-consistent", message)
}

/// A page answer of the contract, `{"items": [...], "next_cursor": ...}`.
pub trait Paged: Serialize {
    /// What it lists.
    type Item;
    /// The page of `items`; `next_cursor` is null on the last page.
    fn of(items: Vec<Self::Item>, next_cursor: Option<String>) -> Self;
}

/// The page `P` from rows fetched with one extra row when there is a next page; the cursor is
/// made from the last row shown.
pub fn page<P: Paged, T, C: Serialize>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> C,
    view: impl Fn(&T) -> P::Item,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(|last| cursor(&cursor_of(last))) } else { None };
    axum::Json(P::of(rows.iter().map(view).collect(), next)).into_response()
}
