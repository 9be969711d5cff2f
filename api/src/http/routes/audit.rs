//! The audit API (auditors and admins): the global event feed with filters, one stream's
//! events, a stream's state as of a time, and the NDJSON export. Reads the log through
//! `projections::audit`; nothing here writes.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::category::Category;
use domain::movie::Movie;
use domain::rental::Rental;
use projections::audit::{self, AuditEvent, AuditLog, Export, Rebuilt, STREAM_TYPES};
use projections::engine::{Checkpoint, EventFilter, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::reads::{cursor, log_released, Params, Problems};
use super::schemas::ReadYourWrites;
use crate::http::error::ApiError;
use crate::http::extract::Auditor;
use crate::http::openapi::{ApiRouter, Forbidden, NotFound, Unauthorized, ValidationFailed};
use crate::http::state::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(stream))
        .routes(routes!(state_as_of))
        .routes(routes!(export))
}

/// A page of the feed.
#[derive(Serialize, ToSchema)]
struct EventPage<'a> {
    items: Vec<AuditEvent<'a>>,
    /// Pass as `after` for the next page; null when this page is empty (all released events read).
    next_after: Option<String>,
}

/// A page of one stream's events.
#[derive(Serialize, ToSchema)]
struct StreamEvents<'a> {
    items: Vec<AuditEvent<'a>>,
    /// The `after_version` of the next page; null on the last one.
    next_after_version: Option<i64>,
}

/// Paging through one stream, as the query gives it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Events after this stream version; default 0 (from the first).
    #[param(minimum = 0)]
    after_version: Option<i64>,
    /// 1..=10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// A stream's state rebuilt from its events up to `as_of`.
#[derive(Serialize, ToSchema)]
struct StreamState {
    stream_type: &'static str,
    stream_id: String,
    version: i64,
    as_of: String,
    /// The aggregate's state (a movie's includes `available`).
    state: Value,
}

/// The feed's paging and filters, as the query gives them.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct FeedQuery {
    /// The `next_after` of the previous page; absent: from the start.
    #[param(value_type = Option<String>)]
    after: Option<FeedCursor>,
    /// 1..=100, default 20.
    #[param(minimum = 1, maximum = 100, value_type = Option<i64>)]
    limit: i64,
    /// `movie`, `rental` or `category`.
    stream_type: Option<String>,
    stream_id: Option<Uuid>,
    /// An event type, e.g. `MovieRented` (a name not in the catalogue matches nothing).
    #[param(rename = "type")]
    kind: Option<String>,
    /// Recorded at or after (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    until: Option<DateTime<Utc>>,
}

impl FeedQuery {
    fn filter(self) -> EventFilter {
        EventFilter {
            stream_type: self.stream_type,
            stream_id: self.stream_id.map(|id| id.to_string()),
            event_type: self.kind,
            since: self.since,
            until: self.until,
        }
    }
}

/// The time a state is rebuilt at, as the query gives it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AsOfQuery {
    /// RFC 3339; default now.
    as_of: Option<DateTime<Utc>>,
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

/// The feed's query, every invalid parameter named.
fn feed_query(params: &Params, problems: &mut Problems) -> Result<FeedQuery, ApiError> {
    let limit = problems.take(params.limit())?.unwrap_or_default();
    let after = problems.take(params.opaque::<FeedCursor>("after"))?.flatten();
    let mut error = |field: &str, message: &str| problems.add(field, message);
    let mut query =
        FeedQuery { after, limit, stream_type: None, stream_id: None, kind: None, since: None, until: None };
    if let Some(raw) = params.get("stream_type") {
        match STREAM_TYPES.iter().find(|t| **t == raw) {
            Some(t) => query.stream_type = Some((*t).to_string()),
            None => error("stream_type", "must be movie, rental or category"),
        }
    }
    if let Some(raw) = params.get("stream_id") {
        match Uuid::parse_str(raw) {
            Ok(id) => query.stream_id = Some(id),
            Err(_) => error("stream_id", "must be a UUID"),
        }
    }
    if let Some(raw) = params.get("type") {
        if raw.is_empty() || raw.len() > 100 || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            error("type", "must be an event type name, e.g. MovieRented");
        } else {
            query.kind = Some(raw.to_string());
        }
    }
    for (field, slot) in [("since", &mut query.since), ("until", &mut query.until)] {
        if let Some(raw) = params.get(field) {
            match parse_time(raw) {
                Some(time) => *slot = Some(time),
                None => error(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"),
            }
        }
    }
    Ok(query)
}

/// `next_after` encodes the feed place (transaction id, position) of the page's last event, so a reader can always come back for
/// what is released later; it is null only when the page is empty, i.e. nothing after `after`
/// was released yet: a reader who follows `next_after` until null has read every event
/// released by then.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", security(("bearer" = [])),
    operation_id = "list_events",
    params(FeedQuery, ReadYourWrites),
    responses(
        (status = 200, description = "A page of the log in the projections' order.", body = EventPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn events(
    State(state): State<AppState>,
    _caller: Auditor,
    params: Params,
) -> Result<Response, ApiError> {
    log_released(&state, &params).await?;
    let mut problems = Problems::default();
    let mut query = feed_query(&params, &mut problems)?;
    problems.finish()?;
    let (limit, after) = (query.limit, query.after.take());
    let filter = query.filter();
    let after = match after {
        None => Checkpoint::default(),
        Some(FeedCursor { x, p }) if x >= 0 && p >= 0 => Checkpoint { xid: x, position: p },
        Some(_) => return Err(ApiError::field("after", "is not a cursor this API gave out")),
    };
    // A type the catalogue does not have matches no event: answered without scanning the log.
    let unknown_type = filter.event_type.as_deref().is_some_and(|t| !domain::EVENT_TYPES.contains(&t));
    let rows = if unknown_type { Vec::new() } else { audit_log(&state).page(after, limit, &filter).await? };
    let next_after = rows.last().map(|last| {
        let checkpoint = audit::checkpoint_of(last);
        cursor(&FeedCursor { x: checkpoint.xid, p: checkpoint.position })
    });
    let items = rows.iter().map(AuditEvent::from).collect();
    Ok(Json(EventPage { items, next_after }).into_response())
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

/// The events of one stream, in stream order, a page at a time
#[utoipa::path(get, path = "/api/v1/audit/streams/{type}/{id}", tag = "audit", security(("bearer" = [])),
    operation_id = "list_stream_events",
    params(
        ("type" = String, Path, description = "`movie`, `rental` or `category`."),
        ("id" = Uuid, Path, description = "The stream's id."),
        StreamQuery,
        ReadYourWrites,
    ),
    responses(
        (status = 200, description = "The stream's events after `after_version`.", body = StreamEvents),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    ))]
async fn stream(
    State(state): State<AppState>,
    _caller: Auditor,
    path: StreamPath,
    params: Params,
) -> Result<Response, ApiError> {
    log_released(&state, &params).await?;
    let mut problems = Problems::default();
    let query = StreamQuery {
        after_version: problems.take(params.whole("after_version", 0..=i64::MAX, 0))?,
        limit: problems.take(params.whole("limit", 1..=10_000, 1000))?,
    };
    problems.finish()?;
    let (after_version, limit) = (query.after_version.expect("validated"), query.limit.expect("validated"));
    let (stream_type, id) = stream_path(path)?;
    let log = audit_log(&state);
    let page = log.stream_page(stream_type, &id, after_version, limit).await?;
    if page.events.is_empty() && !log.stream_exists(stream_type, &id).await? {
        return Err(ApiError::NotFound("stream"));
    }
    let next_after_version = if page.more { page.events.last().map(|e| e.sequence) } else { None };
    let items = page.events.iter().map(AuditEvent::from).collect();
    Ok(Json(StreamEvents { items, next_after_version }).into_response())
}

/// The audit reader of this process: queries cancelled by PostgreSQL after 30 s, or sooner when
/// the request's own time runs out first.
fn audit_log(state: &AppState) -> AuditLog {
    AuditLog::new(state.db.clone())
        .with_timeout(audit::STATEMENT_TIMEOUT.min(state.config.http.request_timeout))
}

/// A stream's state as of a time, rebuilt through the domain's own `apply`
#[utoipa::path(get, path = "/api/v1/audit/streams/{type}/{id}/state", tag = "audit", security(("bearer" = [])),
    operation_id = "get_stream_state",
    params(
        ("type" = String, Path, description = "`movie`, `rental` or `category`."),
        ("id" = Uuid, Path, description = "The stream's id."),
        AsOfQuery,
        ReadYourWrites,
    ),
    responses(
        (status = 200, description = "The state.", body = StreamState),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    ))]
async fn state_as_of(
    State(state): State<AppState>,
    _caller: Auditor,
    path: StreamPath,
    params: Params,
) -> Result<Response, ApiError> {
    log_released(&state, &params).await?;
    let query = AsOfQuery {
        as_of: match params.get("as_of") {
            None => None,
            Some(raw) => Some(parse_time(raw).ok_or_else(|| {
                ApiError::field("as_of", "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
            })?),
        },
    };
    let as_of = query.as_of.unwrap_or_else(Utc::now);
    let (stream_type, id) = stream_path(path)?;
    let events = audit_log(&state).stream(stream_type, &id, Some(as_of)).await?;
    let rebuilt = match stream_type {
        "movie" => rebuild::<Movie>(&events, movie_view)?,
        "rental" => rebuild::<Rental>(&events, rental_view)?,
        _ => rebuild::<Category>(&events, category_view)?,
    };
    let (version, view) = rebuilt.ok_or(ApiError::NotFound("stream"))?;
    let as_of = as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    Ok(Json(StreamState { stream_type, stream_id: id, version, as_of, state: view }).into_response())
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

/// The whole log as NDJSON, streamed a page at a time
///
/// One `Event` a line, in the feed's order.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", security(("bearer" = [])),
    operation_id = "export_events",
    params(ReadYourWrites),
    responses(
        (status = 200, description = "NDJSON, one event a line.", body = String, content_type = "application/x-ndjson"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    ))]
async fn export(
    State(state): State<AppState>,
    _caller: Auditor,
    params: Params,
) -> Result<Response, ApiError> {
    log_released(&state, &params).await?;
    let export = Export::new(audit_log(&state), Checkpoint::default(), EventFilter::default());
    let mut response = Body::from_stream(ndjson_stream(export)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
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
