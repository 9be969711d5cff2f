//! The per-request record: one log line for every finished request (request id, route template,
//! method, status, latency, client address, actor) and the HTTP metrics (a counter and a latency histogram by
//! route, method and status). Labels are bounded: the matched route template, never the raw path,
//! and a fixed set of methods. Nothing from headers or bodies is logged.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use uuid::Uuid;

use crate::http::client::ClientAddr;
use crate::http::extract::RequestId;

/// Where the authentication extractor leaves the caller's id, for the log line.
#[derive(Debug, Clone, Default)]
pub struct ActorSlot(Arc<OnceLock<Uuid>>);

impl ActorSlot {
    /// Records the authenticated caller (the first one set wins).
    pub fn set(&self, user_id: Uuid) {
        let _ = self.0.set(user_id);
    }

    fn get(&self) -> Option<Uuid> {
        self.0.get().copied()
    }
}

/// The route label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware step: times the request, then logs it and counts it.
pub async fn record<F: Future<Output = Response>>(
    mut request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let client = request.extensions().get::<ClientAddr>().map(ToString::to_string).unwrap_or_default();
    let actor = ActorSlot::default();
    request.extensions_mut().insert(actor.clone());
    let response = next(request).await;
    let latency = started.elapsed();
    let status = response.status().as_u16();
    let status_label = status.to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status_label.clone())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route.clone(), "method" => method, "status" => status_label)
        .record(latency.as_secs_f64());
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match actor.get() {
        Some(actor) => tracing::info!(
            target: "moviestore::access",
            request_id, route, method, status, latency_ms, client, actor = %actor, "request finished"
        ),
        None => tracing::info!(
            target: "moviestore::access",
            request_id, route, method, status, latency_ms, client, "request finished"
        ),
    }
    response
}
