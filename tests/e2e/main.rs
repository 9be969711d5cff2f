//! Black-box tests of the real `moviestore` binary over HTTP.
//!
//! Each test gets its own database from `#[sqlx::test]` (migrated by `api::MIGRATOR`) and starts
//! the binary on a free port against it; nothing is shared between tests but the compiled binary.

mod support;

mod accounts;
mod analytics;
mod audit;
mod authorization;
mod catalogue;
mod conventions;
mod due_dates;
mod faults;
mod fuzz;
mod hostile;
mod mail_sink;
mod model;
mod names;
mod notifications;
mod openapi;
mod operations;
mod process;
mod production;
mod read_side;
mod renting;
mod resilience;
mod revocation;
mod setup;
