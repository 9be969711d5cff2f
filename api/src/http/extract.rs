//! Extractors, and the request id and body steps of [`crate::http::steps`].
//!
//! The contract's order of checks (401, then 403, then the body, then 404/409) falls out of the
//! order handlers take these in: the caller first ([`AuthUser`] and its role guards), then the
//! raw [`Body`] (only its size is checked while reading), parsed by the handler once role and
//! ownership are settled.

use std::pin::Pin;
use std::sync::Arc;

use axum::body::{Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::accounts::{Role, User};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use eventstore::idempotency::Claim;
use eventstore::{CommandContext, Metadata};

/// The header carrying the request id (a name made once, not parsed at every use).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request id: the client's when it is 1..=64 of `A-Za-z0-9._-`, otherwise generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let valid = (1..=64).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    valid.then(|| text.to_string())
}

/// Step: settles the request id and makes it visible to handlers (an extension) and to the
/// headers. Returns the id, for the errors' task-local, and the header the answer echoes.
pub fn request_id(request: &mut Request) -> (String, HeaderValue) {
    let given = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| Some((acceptable_request_id(value)?, value.clone())));
    let (id, value) = match given {
        Some(given) => given,
        None => {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = Uuid::now_v7().hyphenated().encode_lower(&mut text);
            let value = HeaderValue::from_str(id).expect("a UUID is visible ASCII");
            request.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
            (id.to_owned(), value)
        }
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    (id, value)
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(Uuid::now_v7().to_string())))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The account (shared with the token cache).
    pub user: Arc<User>,
    /// The SHA-256 of the token used, so logout can revoke exactly it.
    pub token_hash: Vec<u8>,
    /// The request id, recorded with every event the request causes.
    pub request_id: String,
    /// The request's claim on its `Idempotency-Key`, when it sent one.
    pub claim: Option<Claim>,
}

impl AuthUser {
    /// The context of this caller's command: the metadata recorded with its events and the
    /// request's idempotency claim, which the append marks.
    pub fn context(&self) -> CommandContext {
        CommandContext {
            metadata: Metadata {
                actor_id: Some(self.user.id),
                request_id: Some(self.request_id.clone()),
                correlation_id: Some(self.request_id.clone()),
                causation_id: None,
            },
            claim: self.claim.clone(),
        }
    }

    /// The domain's view of the caller.
    pub fn actor(&self) -> domain::Actor {
        domain::Actor { id: self.user.id, is_admin: self.user.role == Role::Admin }
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
}

/// The token from `Authorization: Bearer <token>` or `Authorization: Token <token>`.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    (known && !token.is_empty()).then_some(token)
}

/// A caller a middleware has already authenticated (the idempotency middleware needs the account
/// before the handler runs), so the extractor does not look the token up twice.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    pub(crate) user: Arc<User>,
    pub(crate) token_hash: Vec<u8>,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (user, token_hash) = match parts.extensions.get::<Authenticated>() {
            Some(done) => (done.user.clone(), done.token_hash.clone()),
            None => {
                let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
                state.accounts.authenticate(token).await?.ok_or(ApiError::Unauthorized)?
            }
        };
        if let Some(actor) = parts.extensions.get::<crate::http::access::ActorSlot>() {
            actor.set(user.id);
        }
        let RequestId(request_id) = RequestId::from_request_parts(parts, state).await?;
        let claim = parts.extensions.get::<Claim>().cloned();
        Ok(Self { user, token_hash, request_id, claim })
    }
}

macro_rules! role_guard {
    ($(#[$doc:meta])* $name:ident, $message:literal, $($role:path),+) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub AuthUser);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let caller = AuthUser::from_request_parts(parts, state).await?;
                if matches!(caller.user.role, $($role)|+) {
                    Ok(Self(caller))
                } else {
                    Err(ApiError::Forbidden($message))
                }
            }
        }
    };
}

role_guard!(
    /// A caller with the admin role.
    Admin, "this needs the admin role", Role::Admin
);
role_guard!(
    /// A caller who may read the event history: an auditor or an admin.
    Auditor, "this needs the auditor or admin role", Role::Auditor, Role::Admin
);
role_guard!(
    /// A caller who may read analytics: an analyst or an admin.
    Analyst, "analytics need the analyst or admin role", Role::Analyst, Role::Admin
);
role_guard!(
    /// A caller who may rent: a customer, or an admin acting for one.
    Renter, "only customers and admins rent, return and pay", Role::Customer, Role::Admin
);

/// How much of a request body [`read_body_first`] reads at most; past it the connection is closed.
const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;

/// Marks a request whose body could not be read (the client went away, a broken chunk).
#[derive(Debug, Clone, Copy)]
struct UnreadableBody;

/// Step: reads the request body before the handler runs, keeping at most one byte more than
/// the limit (so [`Body`] still answers 413 in its turn, after 401 and 403) and throwing the rest
/// away. An answer given without reading the body (401, 403, 413) would otherwise close the
/// connection with the client's bytes unread, and the client, still sending, would get a
/// connection reset instead of the answer.
pub async fn read_body_first(request: Request) -> Request {
    let (mut parts, mut body) = request.into_parts();
    let keep = crate::config::MAX_BODY_BYTES + 1;
    let mut kept = Vec::new();
    let mut read = 0usize;
    while read <= DRAIN_LIMIT_BYTES {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read += data.len();
                    let room = keep.saturating_sub(kept.len()).min(data.len());
                    kept.extend_from_slice(&data[..room]);
                }
            }
            Some(Err(_)) => {
                parts.extensions.insert(UnreadableBody);
                kept.clear();
                break;
            }
        }
    }
    Request::from_parts(parts, axum::body::Body::from(kept))
}

/// A request body, read up to the size limit but not yet parsed: the handler parses it after the
/// role and ownership checks, as the contract orders them.
#[derive(Debug, Default)]
pub struct Body {
    bytes: Bytes,
    content_type: Option<String>,
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if request.extensions().get::<UnreadableBody>().is_some() {
            return Err(ApiError::MalformedBody("the request body could not be read".into()));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(crate::config::MAX_BODY_BYTES)
            } else {
                ApiError::MalformedBody("the request body could not be read".into())
            }
        })?;
        Ok(Self { bytes, content_type })
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl Body {
    /// The body as a JSON object; `None` when the body is empty (an endpoint that needs none
    /// accepts an empty one without a `Content-Type`).
    pub fn object(&self) -> Result<Option<Map<String, Value>>, ApiError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !self.content_type.as_deref().is_some_and(is_json) {
            return Err(ApiError::UnsupportedMediaType);
        }
        match serde_json::from_slice::<Value>(&self.bytes) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(_) => Err(ApiError::MalformedBody("the request body must be a JSON object".into())),
            Err(e) => Err(ApiError::MalformedBody(format!("the request body is not valid JSON: {e}"))),
        }
    }

    /// The body as a JSON object, which the endpoint needs: an empty body is an empty object, so
    /// the 422 names every required field as missing.
    pub fn required_object(&self) -> Result<Map<String, Value>, ApiError> {
        Ok(self.object()?.unwrap_or_default())
    }

    /// The body as the request `T` (no body reads as `{}`): 415 unless JSON, 422 naming every
    /// invalid, missing or unknown field (see [`crate::http::validate::body`]).
    pub fn parse<T: serde::de::DeserializeOwned + utoipa::ToSchema>(&self) -> Result<T, ApiError> {
        crate::http::validate::body(self.required_object()?)
    }

    /// [`Body::parse`], with the handler's own checks still to make before `finish`.
    pub fn parse_checked<T: serde::de::DeserializeOwned + utoipa::ToSchema>(
        &self,
    ) -> Result<crate::http::validate::Parsed<T>, ApiError> {
        Ok(crate::http::validate::Parsed::new(self.required_object()?))
    }
}

/// A UUID path parameter; anything else is 404, as for an unknown id.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("resource"))?;
        Uuid::parse_str(&raw).map(PathId).map_err(|_| ApiError::NotFound("resource"))
    }
}
