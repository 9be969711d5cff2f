//! The per-request record: one log line for every finished request (request id, route template,
//! method, status, latency, client address, actor) and the HTTP metrics (a counter and a latency histogram by
//! route, method and status). Labels are bounded: the matched route template, never the raw path,
//! and a fixed set of methods. Nothing from headers or bodies is logged.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
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

/// Step: the record of one request, started when its head has arrived and finished with its
/// answer.
pub struct Record {
    started: Instant,
    route: Option<MatchedPath>,
    method: &'static str,
    /// What only the log line needs: gathered only while access logging is on.
    log: Option<LogFields>,
}

struct LogFields {
    request_id: String,
    client: Option<ClientAddr>,
    actor: ActorSlot,
}

impl Record {
    /// Starts the clock. While the access log is on, leaves an [`ActorSlot`] in the request for
    /// the authentication to fill.
    pub fn start(request: &mut Request) -> Self {
        let started = Instant::now();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let log = tracing::enabled!(target: "moviestore::access", tracing::Level::INFO).then(|| {
            let actor = ActorSlot::default();
            request.extensions_mut().insert(actor.clone());
            LogFields {
                request_id: request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
                client: request.extensions().get::<ClientAddr>().copied(),
                actor,
            }
        });
        Self { started, route, method, log }
    }

    /// Counts the answer in the HTTP metrics and writes the log line.
    pub fn finish(self, response: &Response) {
        let latency = self.started.elapsed();
        let status = response.status().as_u16();
        let route = self.route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let (requests, duration) = instruments(route, self.method, status);
        requests.increment(1);
        duration.record(latency.as_secs_f64());
        let Some(LogFields { request_id, client, actor }) = self.log else { return };
        let (method, latency_ms) = (self.method, latency.as_secs_f64() * 1000.0);
        let client = client.map(|c| c.to_string()).unwrap_or_default();
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
    }
}

/// The counter and the histogram of one route, method and status. Each is registered once and
/// kept here, so that counting a request is two atomic updates rather than building the labelled
/// key and finding it in the recorder's registry (twice) on every request. Labels are bounded
/// (route templates, fixed methods, status codes), and so is this map.
fn instruments(route: &str, method: &'static str, status: u16) -> (metrics::Counter, metrics::Histogram) {
    type ByRoute = HashMap<Box<str>, Vec<(&'static str, u16, metrics::Counter, metrics::Histogram)>>;
    static KNOWN: OnceLock<RwLock<ByRoute>> = OnceLock::new();
    let known = KNOWN.get_or_init(RwLock::default);
    let find = |by_route: &ByRoute| {
        by_route.get(route).and_then(|kept| {
            kept.iter()
                .find(|(m, s, _, _)| *m == method && *s == status)
                .map(|(_, _, c, h)| (c.clone(), h.clone()))
        })
    };
    if let Some(found) = find(&known.read().unwrap_or_else(PoisonError::into_inner)) {
        return found;
    }
    let mut by_route = known.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = find(&by_route) {
        return found;
    }
    let labels =
        [("route", route.to_string()), ("method", method.to_string()), ("status", status.to_string())];
    let counter = metrics::counter!("http_requests_total", &labels);
    let histogram = metrics::histogram!("http_request_duration_seconds", &labels);
    by_route.entry(route.into()).or_default().push((method, status, counter.clone(), histogram.clone()));
    (counter, histogram)
}
