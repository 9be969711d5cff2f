//! The sub-commands of `moviestore`.

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::accounts::{validate_email, validate_password, validate_username, Accounts, Role};
use crate::config::Config;
use crate::startup::{shutdown_signal, App};

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
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
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
