//! `ApiError`: every way a request can fail, rendered as RFC 9457 `application/problem+json`.
//!
//! A 5xx is logged here, once, with its whole cause chain, and the client sees only a generic
//! title. A 4xx is logged at debug.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The request id of the request being served, so errors can name it.
    pub static REQUEST_ID: String;
}

/// The slug of the 409 for a key whose first request is still running.
pub const IN_PROGRESS: &str = "idempotency-in-progress";

/// Marks an answer that invites the client to retry (rate limited, unavailable, a charge still
/// pending, conflicts that outlived every retry): an idempotency record never keeps one.
#[derive(Debug, Clone, Copy)]
pub struct Retryable;

/// Invalid fields: field name → messages.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Every failure an HTTP request can meet.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more fields are invalid or missing (422 with `errors`).
    #[error("one or more fields are invalid")]
    Validation(FieldErrors),
    /// The body is not JSON, or not the JSON shape expected (422).
    #[error("{0}")]
    MalformedBody(String),
    /// A field is well-formed but names nothing that can be used (422 with its own slug and
    /// `errors`), such as a password-reset token that is unknown, used or expired.
    #[error("{field} {message}")]
    InvalidFields {
        /// Stable slug that ends the problem `type`.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The body is not `application/json` (415).
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The body is over the limit (413).
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No valid token (401).
    #[error("a valid token is required")]
    Unauthorized,
    /// Wrong role or not the caller's resource (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such resource (404); the argument names it.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A rule of the domain refused the request.
    #[error("{message}")]
    Rejected {
        /// Status.
        status: StatusCode,
        /// Stable slug that ends the problem `type`.
        kind: &'static str,
        /// User-safe explanation.
        message: String,
    },
    /// Rate limited (429).
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a retry can succeed.
        retry_after_secs: u64,
    },
    /// PostgreSQL cannot be reached (503).
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// Anything unexpected (500); the detail is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.to_string(), vec![message.into()]);
        Self::Validation(errors)
    }

    /// A refusal with a status and slug.
    pub fn rejected(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self::Rejected { status, kind, message: message.into() }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::MalformedBody(_) | Self::InvalidFields { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Rejected { status, .. } => *status,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may well succeed if sent again shortly.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::TooManyRequests { .. } | Self::Unavailable => true,
            Self::Rejected { kind, .. } => {
                matches!(*kind, "charge-pending" | "conflict" | IN_PROGRESS)
            }
            _ => false,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation-failed",
            Self::MalformedBody(_) => "malformed-body",
            Self::InvalidFields { kind, .. } => kind,
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Rejected { kind, .. } => kind,
            Self::TooManyRequests { .. } => "rate-limited",
            Self::Unavailable => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// An RFC 9457 problem document, the body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<slug>`; the slug is stable (`not-available`, `charge-pending`, ...).
    #[serde(rename = "type")]
    #[schema(example = "/problems/not-available")]
    pub kind: String,
    /// The status's reason phrase.
    #[schema(example = "Conflict")]
    pub title: String,
    /// The HTTP status.
    #[schema(example = 409)]
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The request's `x-request-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// 422 only: every invalid or missing field (`body` for the body as a whole) → messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, Vec<String>>>)]
    pub errors: Option<FieldErrors>,
}

/// Writes a problem document. Also used by steps (timeouts, panics, the concurrency cap) that
/// have no `ApiError`. Every 503 says when to come back: `Retry-After: 1`.
pub fn problem(status: StatusCode, kind: &str, detail: &str) -> Response {
    problem_with(status, kind, detail, None)
}

fn problem_with(status: StatusCode, kind: &str, detail: &str, errors: Option<&FieldErrors>) -> Response {
    let body = Problem {
        kind: format!("/problems/{kind}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
        request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        errors: errors.cloned(),
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?ErrorChain(&self), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        let detail = match &self {
            Self::Internal(_) => "an unexpected error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        let body_errors;
        let errors = match &self {
            Self::Validation(errors) => Some(errors),
            // Every 422 names what is invalid: here the body as a whole.
            Self::MalformedBody(message) => {
                body_errors = FieldErrors::from([("body".to_string(), vec![message.clone()])]);
                Some(&body_errors)
            }
            Self::InvalidFields { field, message, .. } => {
                body_errors = FieldErrors::from([(field.to_string(), vec![message.clone()])]);
                Some(&body_errors)
            }
            _ => None,
        };
        let mut response = problem_with(status, self.kind(), &detail, errors);
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        if self.is_retryable() {
            response.extensions_mut().insert(Retryable);
        }
        response
    }
}

/// Formats an error with every cause in its chain.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Whether a database error means "PostgreSQL is unreachable" (503) rather than a bug (500).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_)
    ) || error
        .as_database_error()
        .and_then(|db| db.code())
        // Class 57 (operator intervention: shutdown, cancel) and 08 (connection exception).
        .is_some_and(|code| code.starts_with("57") || code.starts_with("08"))
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            tracing::warn!(%error, "unavailable (the database, or the password hashing slots)");
            Self::Unavailable
        } else {
            Self::Internal(error.into())
        }
    }
}
