//! The HTTP layer: everything that knows about requests and answers. It calls the services
//! (accounts, cache, mail, jobs, the event store and read models) and is never called by them.
//!
//! - [`routes`]: one module per resource; handlers parse, call a service, answer.
//! - [`state`]: what every handler can reach.
//! - [`error`], [`extract`], [`validate`], [`commands`]: problem+json errors, extractors, field
//!   validation, and how domain refusals become answers.
//! - [`openapi`]: the OpenAPI 3.1 spec, built from the route registrations, and the docs page.
//! - [`connections`]: the HTTP/1.1 server loop with the head, idle and shutdown limits.
//! - [`client`]: the client address a request is attributed to (trusted proxies, IPv6 /64).
//! - [`access`], [`metrics`], [`limits`], [`idempotency`]: the per-request log line and HTTP
//!   metrics, the Prometheus exporter, rate and concurrency limits, `Idempotency-Key`.
//! - [`steps`]: every step a request takes before its handler, in one layer.
//! - [`refresh`]: keeps the cached movie details (rendered as the answers are) in step with the
//!   catalogue.

pub mod access;
pub mod client;
pub mod commands;
pub mod connections;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod refresh;
pub mod routes;
pub mod state;
pub mod steps;
pub mod validate;
