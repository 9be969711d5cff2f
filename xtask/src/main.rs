//! `cargo xtask test [ARGS]`: the project's one test command.
//!
//! 1. Checks that every tool a test needs is installed, naming the package of each one missing
//!    (a test never passes by skipping its work).
//! 2. Uses the PostgreSQL that `DATABASE_URL` names when it answers (creating its database when
//!    missing); otherwise starts a private cluster under the target folder, with the same code
//!    `moviestore` uses for its own private PostgreSQL.
//! 3. Uses the Redis of `REDIS_URL` when it answers; otherwise starts a private `redis-server` on
//!    a free port.
//! 4. Runs `cargo test --workspace ARGS` against them (without `--workspace` when ARGS pick
//!    packages with `-p`), then stops what it started.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::private_pg::{self, PrivatePostgres};

const DEFAULT_DATABASE_URL: &str = api::config::DEFAULT_DATABASE_URL;
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, rest)) if command == "test" => match test(rest) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("xtask test: {error:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo xtask test [ARGS for cargo test]");
            ExitCode::from(2)
        }
    }
}

fn say(message: impl std::fmt::Display) {
    eprintln!("==> {message}");
}

fn test(args: &[String]) -> anyhow::Result<ExitCode> {
    let missing = missing_tools();
    if !missing.is_empty() {
        for (tool, needed_by, install) in &missing {
            eprintln!("missing: {tool} (for {needed_by}): {install}");
        }
        bail!("{} tool(s) that tests need are missing; install them and run again", missing.len());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let (database_url, cluster) = database().await?;
        let (redis_url, redis) = redis()?;
        // The whole workspace unless the arguments pick packages.
        let picks = args.iter().any(|a| a.starts_with("-p") || a.starts_with("--package"));
        let scope: &[&str] = if picks { &[] } else { &["--workspace"] };
        say(format!(
            "cargo test {}",
            scope.iter().copied().chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
        ));
        let mut child =
            tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .arg("test")
                .args(scope)
                .args(args)
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", &redis_url)
                .spawn()
                .context("could not run cargo test")?;
        // Ctrl-C reaches the test run too; wait for it to end, then stop what we started.
        let status = tokio::select! {
            status = child.wait() => status?,
            _ = tokio::signal::ctrl_c() => child.wait().await?,
        };
        drop(redis);
        if let Some(mut cluster) = cluster {
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
        }
        Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// Each tool some test needs that is not installed: (tool, the tests that need it, how to get it).
fn missing_tools() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut missing = Vec::new();
    let chromium = std::env::var_os("CHROMIUM").map(PathBuf::from).or_else(|| on_path("chromium"));
    if !chromium.is_some_and(|path| path.is_file()) {
        missing.push((
            "chromium",
            "the docs page test",
            "apt-get install chromium (or set CHROMIUM=/path/to/chromium)",
        ));
    }
    if on_path("st").is_none() {
        missing.push(("schemathesis (st)", "the fuzz test", "pip install schemathesis==4.32.5"));
    }
    if on_path("redocly").is_none() {
        missing.push((
            "Redocly CLI (redocly)",
            "the OpenAPI lint test",
            "npm install -g @redocly/cli@2.77.0",
        ));
    }
    if private_pg::find_server_programs(None).is_err() {
        missing.push((
            "PostgreSQL's server programs (initdb, pg_ctl)",
            "the private PostgreSQL and outage tests",
            "apt-get install postgresql",
        ));
    }
    if on_path("redis-server").is_none() {
        missing.push(("redis-server", "the Redis outage tests", "apt-get install redis-server"));
    }
    for (tool, package) in [("curl", "curl"), ("jq", "jq")] {
        if on_path(tool).is_none() {
            missing.push((
                tool,
                "the README walk-through test",
                if package == "jq" { "apt-get install jq" } else { "apt-get install curl" },
            ));
        }
    }
    if on_path("promtool").is_none() {
        missing.push(("promtool", "the monitoring files test", "apt-get install prometheus"));
    }
    missing
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// The workspace's target folder, where the private services keep their data.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").join("target")
    })
}

async fn database() -> anyhow::Result<(String, Option<PrivatePostgres>)> {
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty());
    let url = url.unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
    let shown = api::db::without_password(&url);
    if database_answers(&url).await {
        say(format!("PostgreSQL answers at {shown}"));
        return Ok((url, None));
    }
    let data_dir = target_dir().join("test-services");
    say(format!("no PostgreSQL answers at {shown}: starting a private one in {}", data_dir.display()));
    let cluster = tokio::task::spawn_blocking(move || {
        let bin = private_pg::find_server_programs(None)?;
        // Test data needs no durability across a power cut; the tests' own crashes kill our
        // processes, never the server.
        PrivatePostgres::start_or_join(&data_dir, &bin, &[("fsync", "off"), ("max_connections", "200")])
    })
    .await??;
    let url = cluster.url("moviestore");
    if !database_answers(&url).await {
        bail!("the private PostgreSQL at {} does not answer", cluster.display_url("moviestore"));
    }
    say(format!("PostgreSQL ({}) at {}", cluster.how(), cluster.display_url("moviestore")));
    Ok((url, Some(cluster)))
}

/// Whether the server answers, with the database created when it is missing (`#[sqlx::test]`
/// creates each test's database from that one).
async fn database_answers(url: &str) -> bool {
    let config = api::config::DatabaseConfig {
        url: url.to_string().into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(3),
        run_migrations: true,
        url_given: true,
        embedded: api::config::EmbeddedPostgres::Never,
        pg_bin: None,
    };
    match api::db::connect(&config).await {
        Ok(pool) => {
            pool.close().await;
            true
        }
        Err(_) => false,
    }
}

/// A `redis-server` of ours, killed on drop.
struct PrivateRedis(std::process::Child);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> anyhow::Result<(String, Option<PrivateRedis>)> {
    let url = std::env::var("REDIS_URL").ok().filter(|u| !u.trim().is_empty());
    let url = url.unwrap_or_else(|| DEFAULT_REDIS_URL.into());
    if redis_answers(&url) {
        say(format!("Redis answers at {url}"));
        return Ok((url, None));
    }
    let port = private_pg::free_port()?;
    say(format!("no Redis answers at {url}: starting a private redis-server on 127.0.0.1:{port}"));
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("could not start redis-server")?;
    let redis = PrivateRedis(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_answers(&url) {
        if Instant::now() > deadline {
            bail!("the private redis-server on port {port} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((url, Some(redis)))
}

/// Whether a Redis server answers `PING` at `url` (`redis://[user:pass@]host:port[/db]`); a
/// server that wants a password answers too.
fn redis_answers(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:6379") };
    let Some(addr) = host_port.to_socket_addrs().ok().and_then(|mut addrs| addrs.next()) else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 64];
    stream.write_all(b"PING\r\n").is_ok()
        && stream
            .read(&mut reply)
            .is_ok_and(|n| reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"))
}
