//! `moviestore`: load the configuration, set up logging, build the runtime with the configured
//! thread counts, run the sub-command.

use clap::Parser;

/// mimalloc instead of the system allocator: with glibc's malloc, the 19 MiB argon2 blocks of
/// password hashing stay resident after they are freed (1.6 GB after ten seconds of logins in
/// our measurements); mimalloc gives freed memory back to the system (README, "Decisions").
/// Built without transparent huge pages (`no_thp`): with them, the allocator's memory is backed
/// by 2 MiB pages, and a few live objects on one keep it all resident (README, ADR 34).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = api::cli::Cli::parse();
    let config = api::config::Config::load()?;
    api::telemetry::init(&config.log);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.worker_threads)
        .max_blocking_threads(config.runtime.max_blocking_threads)
        .enable_all()
        .build()?
        .block_on(api::cli::run(cli, config))
}
