//! The `moviestore` binary's library: configuration, HTTP routes, accounts and wiring.
//!
//! Map:
//! - [`config`]: settings from the environment, validated once at start.
//! - [`startup`]: builds the app (pool, migrations, state, listener) and runs it until shutdown.
//! - [`routes`]: one module per resource; handlers parse, call a service, answer.
//! - [`accounts`]: users, password hashing, tokens and the login throttle (plain tables).
//! - [`commands`]: how domain refusals become HTTP answers.
//! - [`error`], [`extract`], [`validate`]: problem+json errors, extractors, field validation.
//! - [`openapi`]: the OpenAPI 3.1 spec, built from the route registrations, and the docs page.
//! - [`seed`]: the default catalogue and generated ones, added through commands.
//! - [`mail`]: the notification sender (templates, SMTP or `.eml` files) that runs in every
//!   `serve` and `worker` process.
//! - [`name_keys`]: after migrating, every stored username, email and category name gets its
//!   comparison key, and names that have come to share one are reported.
//! - [`jobs`]: the periodic purges, each a row of `job` claimed by one process at a time.
//! - [`cli`]: the sub-commands.
//! - [`connections`]: the HTTP/1.1 server loop with the head, idle and shutdown limits.
//! - [`client`]: the client address a request is attributed to (trusted proxies, IPv6 /64).
//! - [`status`]: what `/ready` and `/metrics` read, at most once a second per process.
//! - [`access`], [`metrics`], [`limits`], [`idempotency`]: the per-request log line and HTTP
//!   metrics, the Prometheus exporter, rate and concurrency limits, `Idempotency-Key`.

pub mod access;
pub mod accounts;
pub mod cache;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod connections;
pub mod db;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod jobs;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod name_keys;
pub mod openapi;
pub mod private_pg;
pub mod refresh;
pub mod routes;
pub mod secret;
pub mod seed;
pub mod startup;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod validate;

/// The embedded migrations, run at start and by `#[sqlx::test]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
