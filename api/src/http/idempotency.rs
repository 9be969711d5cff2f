//! `Idempotency-Key` on POST, PATCH and DELETE: a middleware that claims the key, runs the request
//! with the claim in a task-local (so the command executor marks it in the append transaction),
//! and stores the final answer; a repeat of the same request gets that answer, a different
//! request under the same key 422, a repeat while the first still runs 409
//! `idempotency-in-progress`.
//!
//! What is kept: 2xx and 4xx answers, except those that invite a retry ([`Retryable`]: 429, a
//! pending charge, exhausted conflict retries). 5xx answers are not kept, so a retry after an
//! outage runs again, unless the command had already appended (then it is never run again).
//! Request bodies are compared through a keyed digest and stored answers sealed
//! (ChaCha20-Poly1305) with a key derived from the caller, the key and the whole request, both
//! keyed with the deployment's secret ([`crate::secret`]), which is kept outside the database: a
//! reader of the table can neither test guesses of a body (which may hold a password) nor open an
//! answer. The SQL lives in
//! `eventstore::idempotency`.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use eventstore::idempotency::{self, Claim, ClaimOutcome, Fingerprint, StoredAnswer};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::http::error::{ApiError, Retryable};
use crate::http::state::AppState;
use crate::secret::Secrets;

/// The request header.
pub const HEADER: &str = "idempotency-key";

pub use crate::http::error::IN_PROGRESS;

/// Marks a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Where keys are ignored.
const AUTH_PATHS: &str = "/api/v1/auth/";

/// The most live keys one account may hold.
pub const MAX_LIVE_KEYS: i64 = 10_000;

/// How long a record is kept.
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How often expired records are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The headers kept with an answer (the rest describe the connection or the request).
const KEPT_HEADERS: [&str; 3] = ["content-type", "location", crate::http::routes::POSITION_HEADER];

/// The longest answer body kept (command answers are a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

fn valid_key(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let visible = (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    visible.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Middleware step: see the module documentation.
pub async fn middleware<F: Future<Output = Response>>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    if !matches!(*request.method(), Method::POST | Method::PATCH | Method::DELETE) {
        return next(request).await;
    }
    // What a keyed command holds across its awaits is large: boxed, so the future of every
    // other request (each read's) stays small and cheap to move.
    Box::pin(command(state, request, next)).await
}

/// The step for a command: its key, when it has one.
async fn command<F: Future<Output = Response>>(
    state: &AppState,
    mut request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let Some(raw_key) = request.headers().get(HEADER).cloned() else {
        return next(request).await;
    };
    // Ignored on the account endpoints: an anonymous key could be replayed by anyone who guesses
    // it, and those bodies hold passwords.
    if request.uri().path().starts_with(AUTH_PATHS) {
        return next(request).await;
    }
    // Scoped to the caller's account. Every other endpoint needs a token: a call without one, or
    // with one that does not authenticate, gets its 401 from the handler, with nothing recorded.
    let scope = match crate::http::extract::bearer_token(request.headers()) {
        None => return next(request).await,
        Some(token) => match state.accounts.authenticate(token).await {
            Ok(Some((user, token_hash))) => {
                if let Some(actor) = request.extensions().get::<crate::http::access::ActorSlot>() {
                    actor.set(user.id);
                }
                let scope = user.id.to_string();
                request.extensions_mut().insert(crate::http::extract::Authenticated { user, token_hash });
                scope
            }
            Ok(None) => return next(request).await,
            Err(error) => return ApiError::from(error).into_response(),
        },
    };
    let Some(key) = valid_key(&raw_key) else {
        return ApiError::field("Idempotency-Key", "must be 1 to 255 visible ASCII characters")
            .into_response();
    };
    let (parts, body) = request.into_parts();
    // The body has been read (and bounded) by `read_body_first` already.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::MalformedBody("the request body could not be read".into()).into_response();
    };
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let seal_key = seal_key(&state.secrets, &scope, &key, &method, &path, &body);
    let body_hash = state.secrets.body_digest(&body);
    let fingerprint =
        Fingerprint { scope: &scope, key: &key, method: &method, path: &path, body_hash: &body_hash };
    let lease = state.config.http.request_timeout + Duration::from_secs(5);
    let outcome = match idempotency::claim_capped(
        &state.db,
        &fingerprint,
        lease,
        RECORD_TTL,
        Some(MAX_LIVE_KEYS),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(error) => return ApiError::from(error).into_response(),
    };
    match outcome {
        ClaimOutcome::Claimed(claim) => {
            let request = Request::from_parts(parts, Body::from(body));
            run_claimed(&state.db, claim, &seal_key, next, request).await
        }
        ClaimOutcome::Replay(answer) => replay(answer, &seal_key),
        ClaimOutcome::InProgress => {
            let mut response = ApiError::rejected(
                StatusCode::CONFLICT,
                IN_PROGRESS,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .into_response();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(1u64));
            response
        }
        ClaimOutcome::TooMany => {
            let mut response = ApiError::rejected(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("this account holds {MAX_LIVE_KEYS} live Idempotency-Keys; new ones are refused until some expire"),
            )
            .into_response();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(60u64));
            response
        }
        ClaimOutcome::Mismatch => {
            ApiError::field("Idempotency-Key", "was already used with another method, path or body")
                .into_response()
        }
        ClaimOutcome::AnswerLost { position } => {
            let mut response = ApiError::rejected(
                StatusCode::CONFLICT,
                "idempotency-answer-lost",
                format!(
                    "the request with this Idempotency-Key was carried out (position {position}) but its \
                     answer was lost; read the resource to see its state"
                ),
            )
            .into_response();
            response.headers_mut().insert(
                HeaderName::from_static(crate::http::routes::POSITION_HEADER),
                HeaderValue::from(position),
            );
            response
        }
    }
}

/// Gives the claim up when the request never finished (timed out, panicked, client gone).
struct ClaimGuard {
    pool: PgPool,
    claim: Option<Claim>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let (Some(claim), Ok(runtime)) = (self.claim.take(), tokio::runtime::Handle::try_current()) {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                if let Err(error) = idempotency::release(&pool, &claim).await {
                    tracing::warn!(%error, "could not release an idempotency claim; its lease will expire");
                }
            });
        }
    }
}

async fn run_claimed<F: Future<Output = Response>>(
    pool: &PgPool,
    claim: Claim,
    seal_key: &LessSafeKey,
    next: impl FnOnce(Request) -> F,
    mut request: Request,
) -> Response {
    let mut guard = ClaimGuard { pool: pool.clone(), claim: Some(claim.clone()) };
    // The handler's caller carries the claim into its command's context (see `AuthUser`).
    request.extensions_mut().insert(claim.clone());
    let response = next(request).await;
    let status = response.status();
    // 401 and 403 come before the key: they are not kept and the key stays free.
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let kept = (status.is_success() || status.is_client_error())
        && !refused
        && response.extensions().get::<Retryable>().is_none();
    if !kept {
        // The claim is released before the answer goes out, so the key is free again (unless
        // events were appended) by the time the caller can retry or look.
        if let Some(claim) = guard.claim.take() {
            if let Err(error) = idempotency::release(pool, &claim).await {
                tracing::warn!(%error, "could not release an idempotency claim; its lease will expire");
            }
        }
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            return ApiError::Internal(anyhow::anyhow!("reading an answer to keep it: {error}"))
                .into_response()
        }
    };
    let headers: Vec<Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| parts.headers.get(*name).and_then(|v| v.to_str().ok()).map(|v| json!([name, v])))
        .collect();
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut sealed = body.to_vec();
    let answer = seal_key
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
        .ok()
        .map(|()| StoredAnswer {
            status: status.as_u16() as i16,
            headers: Value::Array(headers),
            nonce: nonce.to_vec(),
            body: sealed,
        });
    match answer {
        Some(answer) => match idempotency::complete(pool, &claim, &answer).await {
            Ok(true) => guard.claim = None,
            Ok(false) => tracing::warn!("an idempotency claim was lost before its answer was stored"),
            Err(error) => tracing::warn!(%error, "could not store an idempotent answer"),
        },
        None => tracing::warn!("could not seal an idempotent answer"),
    }
    parts.extensions.remove::<Retryable>();
    Response::from_parts(parts, Body::from(body))
}

fn replay(answer: StoredAnswer, seal_key: &LessSafeKey) -> Response {
    let nonce = <[u8; NONCE_LEN]>::try_from(answer.nonce.as_slice()).ok();
    let mut sealed = answer.body;
    let body = nonce.and_then(|nonce| {
        seal_key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .ok()
            .map(|plain| Bytes::copy_from_slice(plain))
    });
    let (Some(body), Ok(status)) = (body, StatusCode::from_u16(answer.status as u16)) else {
        return ApiError::Internal(anyhow::anyhow!("a stored idempotent answer does not open"))
            .into_response();
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.remove(axum::http::header::CONTENT_TYPE);
    for pair in answer.headers.as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else { continue };
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(HeaderName::from_static(REPLAYED_HEADER), HeaderValue::from_static("true"));
    response
}

/// The key a stored answer is sealed with: derived from the deployment's secret and everything
/// that identifies the request, its body included, so only a caller who sends the same request
/// again to this deployment can open it, and a reader of the table cannot.
fn seal_key(secrets: &Secrets, scope: &str, key: &str, method: &str, path: &str, body: &[u8]) -> LessSafeKey {
    let parts = [scope.as_bytes(), key.as_bytes(), method.as_bytes(), path.as_bytes()];
    let key = secrets.seal_key(&parts, body);
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 256-bit key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        let ok = |s: &str| valid_key(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("a"));
        assert!(ok(&"k".repeat(255)));
        assert!(ok("order-42/retry#1~!"));
        assert!(!ok(&"k".repeat(256)));
        assert!(!ok("with space"));
        assert!(!ok(""));
        assert!(valid_key(&HeaderValue::from_bytes("clé".as_bytes()).unwrap()).is_none());
    }

    #[test]
    fn a_sealed_answer_opens_only_with_the_same_request() {
        let secrets = Secrets::from_secret(b"a test secret of thirty-two characters");
        let key =
            seal_key(&secrets, "anonymous", "k1", "POST", "/api/v1/auth/register", b"{\"password\":\"p\"}");
        let mut sealed = b"{\"token\":\"secret\"}".to_vec();
        let nonce = [7u8; NONCE_LEN];
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "the body is not stored in clear");
        let other =
            seal_key(&secrets, "anonymous", "k1", "POST", "/api/v1/auth/register", b"{\"password\":\"q\"}");
        let mut copy = sealed.clone();
        assert!(other.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut copy).is_err());
        let same =
            seal_key(&secrets, "anonymous", "k1", "POST", "/api/v1/auth/register", b"{\"password\":\"p\"}");
        let plain =
            same.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed).unwrap();
        assert_eq!(plain, b"{\"token\":\"secret\"}");
    }
}
