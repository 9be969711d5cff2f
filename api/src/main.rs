//! `moviestore`: load the configuration, set up logging, run the sub-command.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = api::cli::Cli::parse();
    let config = api::config::Config::load()?;
    api::telemetry::init(&config.log);
    api::cli::run(cli, config).await
}
