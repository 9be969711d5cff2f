//! Abuse limits in front of every route: a request rate limit per client address (a `governor`
//! token bucket, 429 with `Retry-After`) and a cap on requests served at once (load shedding: 503
//! with `Retry-After` rather than queueing without bound). `/health`, `/ready` and `/metrics` are
//! exempt, so probes and scrapes still answer under load. The body limit (413), JSON-only bodies
//! (415) and the login throttle live elsewhere (`startup`, `extract`, `accounts`).
//!
//! Requests are counted by client address ([`crate::http::client`]: the TCP peer, the forwarded address
//! behind a trusted proxy, an IPv6 /64).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HttpConfig;
use crate::http::client::ClientAddr;
use crate::http::error::{problem, ApiError};

/// How often addresses whose bucket is full again are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The limits of one process; cheap to clone.
#[derive(Clone)]
pub struct Limits {
    rate: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    in_flight: Option<Arc<Semaphore>>,
}

/// Operations endpoints, which neither limit applies to.
pub fn is_exempt(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

impl Limits {
    /// Limits as configured (0 disables each). Starts a task that forgets idle addresses, so the
    /// limiter's memory stays bounded; it ends when the limits are dropped.
    pub fn new(config: &HttpConfig) -> Self {
        let rate = NonZeroU32::new(config.rate_limit.per_second).map(|per_second| {
            let burst = NonZeroU32::new(config.rate_limit.burst).unwrap_or(per_second);
            Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)))
        });
        if let Some(limiter) = &rate {
            let weak = Arc::downgrade(limiter);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(FORGET_EVERY).await;
                        let Some(limiter) = weak.upgrade() else { return };
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                });
            }
        }
        let in_flight = (config.max_concurrent_requests > 0)
            .then(|| Arc::new(Semaphore::new(config.max_concurrent_requests)));
        Self { rate, in_flight }
    }
}

/// Step: the rate limit, counted when the request head has arrived. `Err` is the refusal (429).
pub fn rate(limits: &Limits, request: &Request) -> Result<(), ApiError> {
    if let (Some(limiter), false) = (&limits.rate, is_exempt(request.uri().path())) {
        let client = request.extensions().get::<ClientAddr>().map(ClientAddr::key);
        if let Some(client) = client {
            if let Err(not_until) = limiter.check_key(&client) {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(ApiError::TooManyRequests { retry_after_secs: retry_after_secs.max(1) });
            }
        }
    }
    Ok(())
}

/// Step: the concurrency cap, a slot held for as long as the returned permit lives (none when
/// there is no cap or the route is exempt). `Err` is the answer (503). It runs after the body
/// has been read ([`crate::http::extract::read_body_first`]), so a client trickling its body
/// holds no slot and slow senders cannot starve anyone.
pub fn in_flight(limits: &Limits, request: &Request) -> Result<Option<OwnedSemaphorePermit>, Overloaded> {
    match (&limits.in_flight, is_exempt(request.uri().path())) {
        (Some(semaphore), false) => semaphore.clone().try_acquire_owned().map(Some).map_err(|_| Overloaded),
        _ => Ok(None),
    }
}

/// Every slot of the concurrency cap is taken: answered 503 with `Retry-After`.
#[derive(Debug)]
pub struct Overloaded;

impl IntoResponse for Overloaded {
    fn into_response(self) -> Response {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is handling as many requests as it can; retry shortly",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_operations_endpoints_are_exempt() {
        assert!(is_exempt("/health") && is_exempt("/ready") && is_exempt("/metrics"));
        assert!(!is_exempt("/api/v1/movies") && !is_exempt("/metrics/x") && !is_exempt("/"));
    }
}
