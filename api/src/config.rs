//! Configuration, loaded once from the environment in `main` and passed down as a value.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::SecretString;

/// Every setting of the process.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listener.
    pub http: HttpConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Accounts and tokens.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// `MOVIESTORE_ADMIN`: an admin account created at start when missing.
    pub bootstrap_admin: Option<(String, SecretString)>,
    /// `MOVIESTORE_PROJECTORS`: whether `serve` also advances the projections (`on`, the
    /// default) or only answers HTTP (`off`, when `worker` processes do it).
    pub run_projectors: bool,
}

/// HTTP listener settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `MOVIESTORE_ADDR`; port 0 picks a free port.
    pub addr: SocketAddr,
    /// `MOVIESTORE_REQUEST_TIMEOUT_SECS`: the longest a request may take.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Request rate limit per client address.
    pub rate_limit: RateLimit,
    /// `MOVIESTORE_MAX_CONCURRENT_REQUESTS`: requests served at once; more get 503 (0: no cap).
    pub max_concurrent_requests: usize,
}

/// A per-client-address token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `MOVIESTORE_RATE_LIMIT_PER_SEC` (0: no limit).
    pub per_second: u32,
    /// `MOVIESTORE_RATE_LIMIT_BURST`.
    pub burst: u32,
}

/// PostgreSQL settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`.
    pub url: SecretString,
    /// `MOVIESTORE_DB_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout: Duration,
    /// Whether to create the database and run migrations at start.
    pub run_migrations: bool,
}

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`.
    pub url: SecretString,
    /// `MOVIESTORE_REDIS_PREFIX`.
    pub key_prefix: String,
}

/// Accounts and tokens.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a token lives.
    pub token_ttl: Duration,
    /// Argon2id parameters for new hashes.
    pub argon2: Argon2Params,
    /// Failed logins for one username from one address that trigger the throttle.
    pub login_max_failures: i64,
    /// The window they are counted in.
    pub login_window: Duration,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// `MOVIESTORE_ARGON2_MEMORY_KIB`.
    pub memory_kib: u32,
    /// `MOVIESTORE_ARGON2_ITERATIONS`.
    pub iterations: u32,
    /// `MOVIESTORE_ARGON2_PARALLELISM`.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// OWASP's recommended minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `RUST_LOG`.
    pub filter: String,
    /// `MOVIESTORE_LOG_FORMAT`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The default tracing filter.
pub const DEFAULT_LOG_FILTER: &str =
    "api=info,projections=info,domain=info,tower_http=info,sqlx=warn,moviestore=info";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

impl Config {
    /// Reads the environment (after a `.env` file, when present) and validates it.
    pub fn load() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        let config = Self {
            http: HttpConfig {
                addr: parsed("MOVIESTORE_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
                request_timeout: Duration::from_secs(parsed("MOVIESTORE_REQUEST_TIMEOUT_SECS", 10)?),
                max_body_bytes: 64 * 1024,
                shutdown_grace: Duration::from_secs(10),
                rate_limit: {
                    let per_second = parsed("MOVIESTORE_RATE_LIMIT_PER_SEC", 2000)?;
                    RateLimit {
                        per_second,
                        burst: parsed("MOVIESTORE_RATE_LIMIT_BURST", per_second.saturating_mul(2))?,
                    }
                },
                max_concurrent_requests: parsed("MOVIESTORE_MAX_CONCURRENT_REQUESTS", 1024)?,
            },
            database: DatabaseConfig {
                url: var("DATABASE_URL")
                    .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/moviestore".into())
                    .into(),
                max_connections: parsed("MOVIESTORE_DB_MAX_CONNECTIONS", 16)?,
                acquire_timeout: Duration::from_secs(parsed("MOVIESTORE_DB_ACQUIRE_TIMEOUT_SECS", 3)?),
                run_migrations: true,
            },
            redis: RedisConfig {
                url: var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()).into(),
                key_prefix: var("MOVIESTORE_REDIS_PREFIX").unwrap_or_else(|| "moviestore:".into()),
            },
            auth: AuthConfig {
                token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
                argon2: Argon2Params {
                    memory_kib: parsed("MOVIESTORE_ARGON2_MEMORY_KIB", Argon2Params::default().memory_kib)?,
                    iterations: parsed("MOVIESTORE_ARGON2_ITERATIONS", Argon2Params::default().iterations)?,
                    parallelism: parsed(
                        "MOVIESTORE_ARGON2_PARALLELISM",
                        Argon2Params::default().parallelism,
                    )?,
                },
                login_max_failures: 10,
                login_window: Duration::from_secs(5 * 60),
            },
            log: LogConfig {
                filter: var("RUST_LOG").unwrap_or_else(|| DEFAULT_LOG_FILTER.into()),
                format: match var("MOVIESTORE_LOG_FORMAT").as_deref() {
                    None | Some("pretty") | Some("text") => LogFormat::Pretty,
                    Some("json") => LogFormat::Json,
                    Some(other) => bail!("MOVIESTORE_LOG_FORMAT={other:?} is not valid: use pretty or json"),
                },
            },
            run_projectors: match var("MOVIESTORE_PROJECTORS").as_deref() {
                None | Some("on") | Some("true") => true,
                Some("off") | Some("false") => false,
                Some(other) => bail!("MOVIESTORE_PROJECTORS={other:?} is not valid: use on or off"),
            },
            bootstrap_admin: match var("MOVIESTORE_ADMIN") {
                None => None,
                Some(raw) => {
                    let (user, password) =
                        raw.split_once(':').context("MOVIESTORE_ADMIN must be username:password")?;
                    Some((user.to_string(), password.to_string().into()))
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense, naming the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.database.max_connections == 0 {
            bail!("MOVIESTORE_DB_MAX_CONNECTIONS must be at least 1");
        }
        if self.http.request_timeout.is_zero() {
            bail!("MOVIESTORE_REQUEST_TIMEOUT_SECS must be at least 1");
        }
        if self.http.rate_limit.per_second > 0 && self.http.rate_limit.burst == 0 {
            bail!(
                "MOVIESTORE_RATE_LIMIT_BURST must be at least 1 while MOVIESTORE_RATE_LIMIT_PER_SEC is set"
            );
        }
        let a = self.auth.argon2;
        if a.memory_kib < 8 * a.parallelism.max(1) || a.iterations == 0 || a.parallelism == 0 {
            bail!("MOVIESTORE_ARGON2_* parameters are out of range");
        }
        if let Some((user, _)) = &self.bootstrap_admin {
            if user.trim().is_empty() {
                bail!("MOVIESTORE_ADMIN must be username:password");
            }
        }
        Ok(())
    }
}
