//! The audit API (auditors and admins): the global event feed with filters, one stream's
//! events, a stream's state as of a time, and the NDJSON export. Reads the log through
//! `projections::audit`; nothing here writes.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::category::Category;
use domain::movie::Movie;
use domain::rental::Rental;
use projections::audit::{self, AuditLog, Export, Rebuilt, STREAM_TYPES};
use projections::engine::{Checkpoint, EventFilter, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::reads::{cursor, Params};
use crate::error::{ApiError, FieldErrors};
use crate::extract::Auditor;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit/events", get(events))
        .route("/api/v1/audit/streams/{type}/{id}", get(stream))
        .route("/api/v1/audit/streams/{type}/{id}/state", get(state_as_of))
        .route("/api/v1/audit/export", get(export))
}

/// `after`: where the previous page ended in the feed's order.
#[derive(Serialize, Deserialize)]
struct FeedCursor {
    x: i64,
    p: i64,
}

fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw).ok().map(|t| t.with_timezone(&Utc))
}

/// The feed's filters, every invalid one named.
fn filter(params: &Params) -> Result<EventFilter, ApiError> {
    let mut errors = FieldErrors::new();
    let mut error = |field: &str, message: &str| {
        errors.entry(field.to_string()).or_default().push(message.to_string());
    };
    let mut filter = EventFilter::default();
    if let Some(raw) = params.get("stream_type") {
        match STREAM_TYPES.iter().find(|t| **t == raw) {
            Some(t) => filter.stream_type = Some((*t).to_string()),
            None => error("stream_type", "must be movie, rental or category"),
        }
    }
    if let Some(raw) = params.get("stream_id") {
        match Uuid::parse_str(raw) {
            Ok(id) => filter.stream_id = Some(id.to_string()),
            Err(_) => error("stream_id", "must be a UUID"),
        }
    }
    if let Some(raw) = params.get("type") {
        if raw.is_empty() || raw.len() > 100 || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            error("type", "must be an event type name, e.g. MovieRented");
        } else {
            filter.event_type = Some(raw.to_string());
        }
    }
    for (field, slot) in [("since", &mut filter.since), ("until", &mut filter.until)] {
        if let Some(raw) = params.get(field) {
            match parse_time(raw) {
                Some(time) => *slot = Some(time),
                None => error(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"),
            }
        }
    }
    if errors.is_empty() {
        Ok(filter)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `next_after` encodes the feed place (transaction id, position) of the page's last event, so a reader can always come back for
/// what is released later; it is null only when the page is empty, i.e. nothing after `after`
/// was released yet: a reader who follows `next_after` until null has read every event
/// released by then.
async fn events(
    State(state): State<AppState>,
    _caller: Auditor,
    params: Params,
) -> Result<Response, ApiError> {
    let (limit, after, filter) = match (params.limit(), params.opaque::<FeedCursor>("after"), filter(&params))
    {
        (Ok(limit), Ok(after), Ok(filter)) => (limit, after, filter),
        (limit, after, filter) => return Err(merged([limit.err(), after.err(), filter.err()])),
    };
    let after = match after {
        None => Checkpoint::default(),
        Some(FeedCursor { x, p }) if x >= 0 && p >= 0 => Checkpoint { xid: x, position: p },
        Some(_) => return Err(ApiError::field("after", "is not a cursor this API gave out")),
    };
    let rows = AuditLog::new(state.db.clone()).page(after, limit, &filter).await?;
    let next_after = rows.last().map(|last| {
        let checkpoint = audit::checkpoint_of(last);
        cursor(&FeedCursor { x: checkpoint.xid, p: checkpoint.position })
    });
    let items: Vec<Value> = rows.iter().map(audit::event_json).collect();
    Ok(Json(json!({ "items": items, "next_after": next_after })).into_response())
}

/// One 422 naming every invalid parameter.
fn merged(problems: impl IntoIterator<Item = Option<ApiError>>) -> ApiError {
    let mut errors = FieldErrors::new();
    for problem in problems.into_iter().flatten() {
        match problem {
            ApiError::Validation(found) => errors.extend(found),
            other => return other,
        }
    }
    ApiError::Validation(errors)
}

/// The `{type}/{id}` of a stream path.
type StreamPath = Result<Path<(String, String)>, PathRejection>;

/// The stream a path names, or 404 (also for an unknown type, a malformed id or a path that does
/// not decode).
fn stream_path(path: StreamPath) -> Result<(&'static str, String), ApiError> {
    let Path((stream_type, id)) = path.map_err(|_| ApiError::NotFound("stream"))?;
    let stream_type = STREAM_TYPES.iter().find(|t| **t == stream_type).ok_or(ApiError::NotFound("stream"))?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("stream"))?;
    Ok((stream_type, id.to_string()))
}

async fn stream(
    State(state): State<AppState>,
    _caller: Auditor,
    path: StreamPath,
) -> Result<Response, ApiError> {
    let (stream_type, id) = stream_path(path)?;
    let events = AuditLog::new(state.db.clone()).stream(stream_type, &id, None).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound("stream"));
    }
    let items: Vec<Value> = events.iter().map(audit::event_json).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn state_as_of(
    State(state): State<AppState>,
    _caller: Auditor,
    path: StreamPath,
    params: Params,
) -> Result<Response, ApiError> {
    let as_of = match params.get("as_of") {
        None => Utc::now(),
        Some(raw) => parse_time(raw)
            .ok_or_else(|| ApiError::field("as_of", "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))?,
    };
    let (stream_type, id) = stream_path(path)?;
    let events = AuditLog::new(state.db.clone()).stream(stream_type, &id, Some(as_of)).await?;
    let rebuilt = match stream_type {
        "movie" => rebuild::<Movie>(&events, movie_view)?,
        "rental" => rebuild::<Rental>(&events, rental_view)?,
        _ => rebuild::<Category>(&events, category_view)?,
    };
    let (version, view) = rebuilt.ok_or(ApiError::NotFound("stream"))?;
    Ok(Json(json!({
        "stream_type": stream_type,
        "stream_id": id,
        "version": version,
        "as_of": as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "state": view,
    }))
    .into_response())
}

fn rebuild<A: cqrs_es::Aggregate>(
    events: &[StoredEvent],
    view: fn(&A) -> Value,
) -> Result<Option<(i64, Value)>, ApiError> {
    let rebuilt = audit::fold::<A>(events).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(rebuilt.map(|Rebuilt { state, version }| (version, view(&state))))
}

fn movie_view(movie: &Movie) -> Value {
    let mut view = movie.details.as_ref().map_or_else(|| json!({}), |details| json!(details));
    view["retired"] = json!(movie.retired);
    view["available"] = json!(movie.available());
    view["rental"] = json!(movie.rental);
    view["last_returned_at"] = json!(movie.last_returned_at);
    view["times_rented"] = json!(movie.times_rented);
    view
}

fn rental_view(rental: &Rental) -> Value {
    json!({
        "movie_id": rental.movie_id,
        "customer_id": rental.customer_id,
        "rented_at": rental.rented_at,
        "returned_at": rental.returned_at,
        "status": rental.status(),
        "charge": rental.charge,
        "paid_at": rental.paid_at,
    })
}

fn category_view(category: &Category) -> Value {
    json!({ "name": category.name })
}

/// The whole log as NDJSON, streamed a page at a time.
async fn export(State(state): State<AppState>, _caller: Auditor) -> Response {
    let export = Export::new(AuditLog::new(state.db.clone()), Checkpoint::default(), EventFilter::default());
    let mut response = Body::from_stream(ndjson_stream(export)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// The export's pages as a body stream; a database failure mid-way is logged and ends the
/// stream abruptly, so the client sees a broken transfer rather than a short, valid-looking log.
fn ndjson_stream(
    export: Export,
) -> impl futures_util::Stream<Item = Result<String, sqlx::Error>> + Send + 'static {
    use futures_util::TryStreamExt;
    futures_util::stream::try_unfold(export, |mut export| async move {
        Ok(export.next_chunk().await?.map(|(chunk, _)| (chunk, export)))
    })
    .inspect_err(|error| tracing::error!(%error, "the export stopped"))
}
