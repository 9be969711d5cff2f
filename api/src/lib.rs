//! The `moviestore` binary's code, in three layers; a layer imports only the ones below it.
//!
//! - [`config`]: settings from the environment, validated once at start. It imports nothing of
//!   the crate.
//! - Services, which never import the HTTP layer:
//!   - [`accounts`]: users, password hashing, tokens and the login throttle (plain tables).
//!   - [`cache`]: Redis for movie details, with a breaker; [`status`]: what `/ready` and
//!     `/metrics` read, at most once a second per process.
//!   - [`mail`]: the notification sender (templates, SMTP or `.eml` files) that runs in every
//!     `serve` and `worker` process; [`jobs`]: the periodic purges, each a row of `job` claimed
//!     by one process at a time.
//!   - [`seed`]: the default catalogue and generated ones, added through commands.
//!   - [`db`], [`private_pg`], [`name_keys`], [`secret`], [`clock`]: the pool and migrations, the
//!     private PostgreSQL, the stored names' comparison keys, the deployment secret and the keys
//!     derived from it, the time commands are stamped with.
//! - [`http`]: routes, extractors, errors, middleware, the OpenAPI spec and the server loop.
//! - The app: [`startup`] builds the app (pool, migrations, state, listener, background tasks)
//!   and runs it until shutdown; [`cli`] runs the sub-commands; [`telemetry`] sets up logging.

pub mod accounts;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod http;
pub mod jobs;
pub mod mail;
pub mod name_keys;
pub mod private_pg;
pub mod secret;
pub mod seed;
pub mod startup;
pub mod status;
pub mod telemetry;

/// The embedded migrations, run at start and by `#[sqlx::test]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
