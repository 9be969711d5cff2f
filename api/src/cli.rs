//! The sub-commands of `moviestore`.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::accounts::{validate_email, validate_password, validate_username, Accounts, Role};
use crate::config::Config;
use crate::startup::{shutdown_signal, App};
use projections::engine::{Engine, Projection};

/// The movie store: an event-sourced video club backend.
#[derive(Debug, Parser)]
#[command(name = "moviestore", version, about)]
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
    /// Run the projectors only (no HTTP); any number may run beside `serve` processes.
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

/// Runs the parsed command line.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Worker => worker(config).await,
        Command::Rebuild { projection } => rebuild(config, projection).await,
        Command::Verify => verify(config).await,
        Command::Migrate => {
            let pool = crate::db::connect(&config.database).await?;
            crate::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::CreateUser { role, email, username } => create_user(config, &role, email, &username).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    let addr = app.local_addr()?;
    tracing::info!(%addr, "serving");
    println!("listening on http://{addr}");
    app.run(shutdown_signal()).await
}

/// A pool on a migrated database, and the engine over every projection.
async fn engine(config: &Config) -> anyhow::Result<(sqlx::PgPool, Engine)> {
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    let store = projections::store::EventStore::new(pool.clone());
    let engine = crate::startup::engine(&pool, &store, &domain::price::PricePlan::default());
    Ok((pool, engine))
}

async fn worker(config: Config) -> anyhow::Result<()> {
    let (pool, engine) = engine(&config).await?;
    let catalogue = projections::catalogue::CatalogueReader::new(pool.clone());
    let cache = crate::cache::Cache::new(&config.redis);
    let engine =
        engine.with_listener(std::sync::Arc::new(crate::refresh::CacheRefresher { cache, catalogue }));
    tracing::info!("worker running the projectors");
    println!("worker running");
    engine.run(shutdown_signal()).await?;
    pool.close().await;
    Ok(())
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
    fn new(label: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} events ({per_sec})")
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

async fn rebuild(config: Config, only: Option<String>) -> anyhow::Result<()> {
    let (pool, engine) = engine(&config).await?;
    for projection in read_models(&engine, only.as_deref())? {
        let name = projection.name();
        let bar = Bar::new(name);
        let started = std::time::Instant::now();
        let done = projections::rebuild::rebuild(&pool, projection, &bar).await?;
        bar.0.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name}: rebuilt from {} events in {secs:.2} s ({:.0} events/s)",
            done.events,
            done.events as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

async fn verify(config: Config) -> anyhow::Result<()> {
    let (pool, engine) = engine(&config).await?;
    let mut differing = 0;
    for projection in read_models(&engine, None)? {
        let name = projection.name();
        let bar = Bar::new(name);
        let diffs = projections::rebuild::verify(&pool, projection, &bar).await?;
        bar.0.finish_and_clear();
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
        std::process::exit(1);
    }
    Ok(())
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
