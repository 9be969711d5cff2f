//! The sub-commands of `moviestore`.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::accounts::{validate_email, validate_password, validate_username, Accounts, Role};
use crate::config::Config;
use crate::startup::{shutdown_signal, App, Process};
use projections::audit::{AuditLog, Export};
use projections::engine::{Checkpoint, Engine, EventFilter, Projection};

/// The movie store: an event-sourced video club backend.
#[derive(Debug, Parser)]
#[command(name = "moviestore", version, about = "The movie store: an event-sourced video club backend.")]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (the default).
    Serve,
    /// Run the projectors, the due-date scheduler and the periodic jobs (no HTTP); any number
    /// may run beside `serve` processes.
    Worker,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Rebuild read models from the log into shadow tables and swap them in (all, or one).
    Rebuild {
        /// The read model to rebuild (`catalogue`, `rentals` or `analytics`); all when absent.
        projection: Option<String>,
    },
    /// Replay every read model into shadow tables and compare with the live ones; exit 1 on any
    /// difference.
    Verify,
    /// Add the default catalogue (idempotent); `--movies N` also makes sure N generated movies
    /// exist, for benchmarks.
    Seed {
        /// How many generated movies there should be (numbered 1 to N).
        #[arg(long, default_value_t = 0)]
        movies: u64,
    },
    /// Write the event log to standard output as NDJSON (one event a line, in the order the
    /// projections read it), with a progress bar on stderr when it is a terminal.
    Export {
        /// Only events after the event at this position, in the log's order.
        #[arg(long)]
        after: Option<i64>,
        /// Only events recorded before this time (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Erase a person's personal data from the accounts (username, email, password hash, tokens,
    /// login failures); the account id stays, so the history still refers to it.
    EraseUser {
        /// The username.
        username: String,
    },
    /// Create an account; the password is read from the first line of standard input.
    CreateUser {
        /// customer, admin, auditor or analyst.
        #[arg(long)]
        role: String,
        /// Email address (required for customers).
        #[arg(long)]
        email: Option<String>,
        /// The username.
        username: String,
    },
}

/// Runs the parsed command line against the database it resolves (the private PostgreSQL, when
/// that is the one), and stops a private cluster this process started once the command is done.
pub async fn run(cli: Cli, mut config: Config) -> anyhow::Result<std::process::ExitCode> {
    let private = crate::db::resolve(&mut config).await?;
    let result = run_command(cli, config).await;
    crate::db::release(private).await;
    result
}

async fn run_command(cli: Cli, config: Config) -> anyhow::Result<std::process::ExitCode> {
    let done = match cli.command.unwrap_or(Command::Serve) {
        Command::Verify => return verify(config).await,
        Command::Serve => serve(config).await,
        Command::Worker => worker(config).await,
        Command::Rebuild { projection } => rebuild(config, projection).await,
        Command::Migrate => {
            let pool = crate::db::connect(&config.database).await?;
            crate::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Seed { movies } => seed(config, movies).await,
        Command::CreateUser { role, email, username } => create_user(config, &role, email, &username).await,
        Command::Export { after, until } => export(config, after, until).await,
        Command::EraseUser { username } => erase_user(config, &username).await,
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

fn parse_rfc3339(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-01-31T12:00:00Z"))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config, Process::Serve).await?;
    let addr = app.local_addr().context("serve binds the API")??;
    // Handlers first: a SIGTERM sent as soon as the line below is read stops us in order.
    let shutdown = shutdown_signal();
    tracing::info!(%addr, "serving");
    println!("listening on http://{addr}");
    app.run(shutdown).await
}

async fn worker(config: Config) -> anyhow::Result<()> {
    let app = App::build(config, Process::Worker).await?;
    app.run(shutdown_signal()).await
}

/// A pool on a migrated database, and the engine over every projection.
async fn engine(config: &Config) -> anyhow::Result<(sqlx::PgPool, Engine)> {
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let store = eventstore::EventStore::new(pool.clone());
    let plan = domain::price::PricePlan::default();
    let engine = crate::startup::engine(&pool, &store, &plan, config.loan, Default::default());
    Ok((pool, engine))
}

fn read_models(engine: &Engine, only: Option<&str>) -> anyhow::Result<Vec<Arc<dyn Projection>>> {
    let chosen: Vec<_> = engine
        .projections()
        .iter()
        .filter(|p| p.is_read_model() && only.is_none_or(|name| p.name() == name))
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> =
            engine.projections().iter().filter(|p| p.is_read_model()).map(|p| p.name()).collect();
        bail!("no read model named {:?}; read models: {}", only.unwrap_or_default(), names.join(", "));
    }
    Ok(chosen)
}

/// A progress bar on stderr when it is a terminal; silent otherwise.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(label: &str, unit: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{msg:>12}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}})"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Self(bar)
    }
}

impl projections::rebuild::Progress for Bar {
    fn advanced(&self, applied: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(applied);
    }
}

impl crate::seed::SeedProgress for Bar {
    fn advanced(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

async fn seed(config: Config, movies: u64) -> anyhow::Result<()> {
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let store = eventstore::EventStore::new(pool.clone());
    let bar = Bar::new("seed", "movies");
    let started = std::time::Instant::now();
    let accounts = Accounts::new(pool.clone(), &config.auth);
    let report = crate::seed::seed(&pool, &store, &accounts, config.loan, movies, &bar).await?;
    bar.0.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seed: {} categories created, {} existed; {} movies added, {} existed; {} demo rentals recorded, \
         {} existed ({secs:.1} s, {:.0} movies/s)",
        report.categories_created,
        report.categories_existing,
        report.movies_added,
        report.movies_existing,
        report.rentals_added,
        report.rentals_existing,
        report.movies_added as f64 / secs.max(1e-9)
    );
    pool.close().await;
    Ok(())
}

async fn rebuild(config: Config, only: Option<String>) -> anyhow::Result<()> {
    let (pool, engine) = engine(&config).await?;
    let chosen = read_models(&engine, only.as_deref())?;
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let bar = Bar::new(&names.join(", "), "events");
    let started = std::time::Instant::now();
    let done = projections::rebuild::rebuild_many(&pool, &chosen, &bar).await?;
    bar.0.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let events = done.iter().map(|d| d.events).max().unwrap_or(0);
    println!(
        "{}: rebuilt from {events} events in {secs:.2} s ({:.0} events/s)",
        names.join(", "),
        events as f64 / secs.max(1e-9)
    );
    Ok(())
}

async fn verify(config: Config) -> anyhow::Result<std::process::ExitCode> {
    let (pool, engine) = engine(&config).await?;
    let chosen = read_models(&engine, None)?;
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let bar = Bar::new(&names.join(", "), "events");
    let all = projections::rebuild::verify_many(&pool, &chosen, &bar).await?;
    bar.0.finish_and_clear();
    let mut differing = 0;
    for (name, diffs) in names.iter().zip(all) {
        if diffs.is_empty() {
            println!("{name}: live tables equal a replay of the log");
        }
        for diff in diffs {
            differing += 1;
            println!(
                "{name}: {} differs: {} live rows not in the replay, {} replayed rows not live",
                diff.table, diff.only_live, diff.only_replayed
            );
        }
    }
    if differing > 0 {
        eprintln!("verify: {differing} table(s) differ from a replay of the log");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn create_user(
    config: Config,
    role: &str,
    email: Option<String>,
    username: &str,
) -> anyhow::Result<()> {
    let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role {e}"))?;
    validate_username(username).map_err(|e| anyhow::anyhow!("username {e}"))?;
    if let Some(email) = &email {
        validate_email(email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
    } else if role == Role::Customer {
        bail!("--email is required for customers");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("could not read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    validate_password(&password).map_err(|e| anyhow::anyhow!("password {e}"))?;

    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let accounts = Accounts::new(pool, &config.auth);
    let user = accounts
        .create(username, email.as_deref(), &SecretString::from(password), role)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string(&user)?);
    Ok(())
}

async fn export(
    config: Config,
    after: Option<i64>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let log = AuditLog::new(pool.clone());
    let start = match after {
        None | Some(0) => Checkpoint::default(),
        Some(position) => log
            .checkpoint_at(position)
            .await?
            .with_context(|| format!("--after {position}: no event has that position"))?,
    };
    let filter = EventFilter { until, ..EventFilter::default() };
    let bar = Bar::new("export", "events");
    if !bar.0.is_hidden() {
        bar.0.set_length(log.count().await?.max(0) as u64);
    }
    let mut export = Export::new(log, start, filter);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = 0u64;
    while let Some((chunk, events)) = export.next_chunk().await? {
        out.write_all(chunk.as_bytes()).context("could not write to stdout")?;
        written += events;
        bar.0.set_position(written);
    }
    out.flush().context("could not write to stdout")?;
    bar.0.finish_and_clear();
    pool.close().await;
    Ok(())
}

async fn erase_user(config: Config, username: &str) -> anyhow::Result<()> {
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let accounts = Accounts::new(pool.clone(), &config.auth);
    let Some(erased) = accounts.erase(username).await? else {
        bail!("no account has the username {username:?}");
    };
    println!(
        "erased account {}: username replaced by {}, email and password hash removed, {} token(s) revoked, \
         {} login failure(s) and {} idempotency record(s) deleted, {} queued email(s) skipped; its events \
         keep the account id",
        erased.user_id,
        erased.tombstone,
        erased.tokens_revoked,
        erased.login_failures_deleted,
        erased.idempotency_records_deleted,
        erased.notifications_skipped
    );
    pool.close().await;
    Ok(())
}
