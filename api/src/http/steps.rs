//! Every step a request takes on its way to a handler, in one layer, outermost first:
//!
//! 1. the request id ([`extract::request_id`]), the client address ([`client::attribute`]), the
//!    access record and HTTP metrics ([`access::Record`]), the rate limit ([`limits::rate`]);
//! 2. the request's tracing span, credentials marked sensitive, and panics caught (a handler
//!    that panics answers a 500 problem document, logged and counted like any other answer);
//! 3. the timeout (kept by the connection's watchdog, [`RequestClock`]), reading the body
//!    ([`extract::read_body_first`]), the concurrency cap only once the body is in
//!    ([`limits::in_flight`]), `Idempotency-Key` ([`idempotency::middleware`]).
//!
//! One layer, not one per step: each layer around a route clones the rest of the stack and boxes
//! its future anew for every request, and with a layer per step that was most of a cached read's
//! cost (measured with wrk on one movie's cached details: 37-38k requests/s through eight layers,
//! 46-52k with none). Here a request makes one future and one clone of the route.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::http::connections::RequestClock;
use crate::http::error::{problem, REQUEST_ID};
use crate::http::limits::Limits;
use crate::http::state::AppState;
use crate::http::{access, client, extract, idempotency, limits};

/// The layer of every route (see the module documentation).
#[derive(Clone)]
pub struct StepsLayer(Arc<Steps>);

/// What the steps need: the process's limits and the state (its configuration among it).
struct Steps {
    limits: Limits,
    state: AppState,
}

impl StepsLayer {
    /// The steps with the limits configured in `state` (a process makes one: the rate limiter's
    /// counters live in it).
    pub fn new(state: &AppState) -> Self {
        Self(Arc::new(Steps { limits: Limits::new(&state.config.http), state: state.clone() }))
    }
}

impl<S> Layer<S> for StepsLayer {
    type Service = StepsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StepsService { steps: Arc::clone(&self.0), inner }
    }
}

/// A route behind the steps.
#[derive(Clone)]
pub struct StepsService<S> {
    steps: Arc<Steps>,
    inner: S,
}

impl<S> Service<Request> for StepsService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The instance that was polled ready serves this request; a clone waits for the next.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let steps = Arc::clone(&self.steps);
        Box::pin(async move { Ok(run(&steps, request, inner).await) })
    }
}

/// The steps, in the order of the module documentation. Each is a plain function, or a
/// combinator around the one future that reaches the handler, never an async function taking the
/// next step's future: such a function stores that future twice over (its argument and what it
/// awaits), every level doubled the whole, and moving the request's future copied kilobytes.
async fn run<S>(steps: &Steps, mut request: Request, mut inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let http = &steps.state.config.http;
    let (id, id_header) = extract::request_id(&mut request);
    client::attribute(&http.trusted_proxies, &mut request);
    let record = access::Record::start(&mut request);
    let answer = async move {
        if let Err(refused) = limits::rate(&steps.limits, &request) {
            return refused.into_response();
        }
        let span = request_span(&request);
        hide_credentials(&mut request);
        let clock = request.extensions().get::<RequestClock>().cloned();
        let served = async move {
            let request = extract::read_body_first(request).await;
            let _slot = match limits::in_flight(&steps.limits, &request) {
                Ok(slot) => slot,
                Err(refused) => return refused.into_response(),
            };
            idempotency::middleware(&steps.state, request, |request| {
                inner.call(request).map(|answer| match answer {
                    Ok(response) => response,
                    Err(never) => match never {},
                })
            })
            .await
        };
        // The connection's watchdog keeps the deadline (no timer per request); a router served
        // some other way has a timer.
        let limit = http.request_timeout;
        let timed = match clock {
            Some(clock) => Either::Left(clock.bound(limit, served)),
            None => Either::Right(tokio::time::timeout(limit, served).map(Result::ok)),
        }
        .map(|answer| answer.unwrap_or_else(|| out_of_time(limit)));
        guarded(timed).instrument(span).await
    };
    let mut response = REQUEST_ID.scope(id, answer).await;
    record.finish(&response);
    response.headers_mut().insert(extract::REQUEST_ID_HEADER, id_header);
    response
}

/// The span the request's own log lines are recorded in. Its fields are evaluated only when the
/// span is enabled.
fn request_span(request: &Request) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = request.extensions().get::<MatchedPath>().map_or("", |p| p.as_str()),
        request_id = request
            .headers()
            .get(&extract::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    )
}

/// Marks the headers that carry credentials sensitive, so that no debug output of the request
/// shows their values.
fn hide_credentials(request: &mut Request) {
    for name in [header::AUTHORIZATION, header::COOKIE] {
        if let header::Entry::Occupied(mut entry) = request.headers_mut().entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

/// A panic in a handler becomes a 500 problem document; the process goes on serving.
fn guarded(answer: impl Future<Output = Response>) -> impl Future<Output = Response> {
    AssertUnwindSafe(answer).catch_unwind().map(|answer| {
        answer.unwrap_or_else(|_panic| {
            tracing::error!("a request handler panicked");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error occurred; it has been logged",
            )
        })
    })
}

/// The answer to a request that did not finish within `limit`: 503 (with `Retry-After`).
fn out_of_time(limit: Duration) -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        &format!("the request did not complete within {} s; retry shortly", limit.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[tokio::test]
    async fn a_handler_that_panics_answers_a_500_problem_document_and_the_next_answer_is_its_own() {
        // Act
        let panicked = guarded(async { panic!("a bug in a handler") }).await;
        let next = guarded(async { (StatusCode::CREATED, "made").into_response() }).await;

        // Assert
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = panicked.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(content_type, Some(HeaderValue::from_static("application/problem+json")));
        let body = axum::body::to_bytes(panicked.into_body(), 4096).await.expect("a small body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("a JSON problem document");
        assert_eq!(problem["type"], "/problems/internal");
        assert_eq!(problem["status"], 500);
        assert!(
            !String::from_utf8_lossy(&body).contains("a bug in a handler"),
            "the panic message stays inside"
        );
        assert_eq!(next.status(), StatusCode::CREATED);
    }
}
