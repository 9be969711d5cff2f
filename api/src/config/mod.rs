//! Configuration, loaded once from the environment in `main` and passed down as a value.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::SecretString;

pub mod proxies;

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
    /// `MOVIESTORE_SECRET`: the deployment's secret (at least 32 characters) that idempotency
    /// records are hashed and sealed with; unset: the file `secret` in the data folder.
    pub secret: Option<SecretString>,
    /// `MOVIESTORE_PROJECTORS`: whether `serve` also advances the projections (`on`, the
    /// default) or only answers HTTP (`off`, when `worker` processes do it).
    pub run_projectors: bool,
    /// The async runtime's thread counts.
    pub runtime: RuntimeConfig,
    /// `MOVIESTORE_LOAN_DAYS`: the loan policy that fixes when new rentals are due.
    pub loan: domain::loan::LoanPolicy,
    /// `MOVIESTORE_DATA_DIR`: the private PostgreSQL's cluster and, without SMTP, the emails.
    pub data_dir: std::path::PathBuf,
    /// `MOVIESTORE_CORS_ORIGINS`: origins allowed to call the API from a browser.
    pub cors: CorsOrigins,
    /// `MOVIESTORE_METRICS_ADDR`: where `worker` serves `/metrics` (none when unset).
    pub metrics_addr: Option<SocketAddr>,
    /// Email: the SMTP server, the sender, the base of links.
    pub mail: MailConfig,
}

/// The default of `MOVIESTORE_MAIL_FROM`.
pub const DEFAULT_MAIL_FROM: &str = "Movie Store <no-reply@moviestore.local>";

/// Email settings.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `MOVIESTORE_SMTP_URL`: `smtp://host:port` (plain), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS), `smtps://user:pass@host:465` (implicit TLS); unset: `.eml` files in
    /// `MOVIESTORE_DATA_DIR/mail/`.
    pub smtp_url: Option<SecretString>,
    /// `MOVIESTORE_MAIL_FROM`: the sender of every email.
    pub from: String,
    /// `MOVIESTORE_PUBLIC_URL`: the base of links in emails (unset: `http://` and the listen
    /// address).
    pub public_url: Option<String>,
}

impl MailConfig {
    /// Reads the settings through `lookup` and checks them.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let given = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let smtp_url = given("MOVIESTORE_SMTP_URL");
        if let Some(url) = &smtp_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("smtp" | "smtps")) {
                bail!("MOVIESTORE_SMTP_URL must start with smtp:// or smtps:// (e.g. smtp://localhost:1025)");
            }
        }
        let from = given("MOVIESTORE_MAIL_FROM").unwrap_or_else(|| DEFAULT_MAIL_FROM.to_string());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            bail!(
                "MOVIESTORE_MAIL_FROM={from:?} is not a mailbox: use Name <address@domain> or address@domain"
            );
        }
        let public_url = given("MOVIESTORE_PUBLIC_URL").map(|url| url.trim_end_matches('/').to_string());
        if let Some(url) = &public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("MOVIESTORE_PUBLIC_URL must start with http:// or https://");
            }
        }
        Ok(Self { smtp_url: smtp_url.map(SecretString::from), from, public_url })
    }

    /// The base of links: `MOVIESTORE_PUBLIC_URL`, or `http://` and `addr`.
    pub fn public_url_or(&self, addr: SocketAddr) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{addr}"))
    }
}

/// The origins a browser may call the API from (`MOVIESTORE_CORS_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Unset: no CORS headers at all.
    None,
    /// `*`: any origin.
    Any,
    /// These origins exactly (scheme, host and port, as browsers send `Origin`).
    List(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let origins: Vec<&str> = raw.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
        if origins.is_empty() {
            return Ok(Self::None);
        }
        if origins == ["*"] {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for origin in origins {
            let origin = origin.trim_end_matches('/');
            let well_formed = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '*', ' '])
            });
            if !well_formed {
                return Err(format!(
                    "{origin:?} is not an origin: use scheme://host[:port] (e.g. https://shop.example.com) or *"
                ));
            }
            list.push(origin.to_string());
        }
        Ok(Self::List(list))
    }
}

/// Reads `MOVIESTORE_LOAN_DAYS` (default 7) through `lookup`: a whole number of days, 1..=365.
pub fn loan_from(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<domain::loan::LoanPolicy> {
    let days: i64 = parsed_from(lookup, "MOVIESTORE_LOAN_DAYS", i64::from(domain::loan::DEFAULT_LOAN_DAYS))
        .map_err(|e| {
        anyhow::anyhow!("{e} (a whole number of days, 1 to {})", domain::loan::MAX_LOAN_DAYS)
    })?;
    domain::loan::LoanPolicy::days(days)
        .map_err(|e| anyhow::anyhow!("MOVIESTORE_LOAN_DAYS={days} is not valid: {e}"))
}

/// Thread counts of the tokio runtime, chosen on purpose rather than left to tokio's defaults
/// (its blocking pool may grow to 512 threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `MOVIESTORE_WORKER_THREADS`: threads running async tasks (default: the cores).
    pub worker_threads: usize,
    /// `MOVIESTORE_MAX_BLOCKING_THREADS`: most threads of the blocking pool (password hashing
    /// and blocking file or DNS calls).
    pub max_blocking_threads: usize,
}

/// The default of `MOVIESTORE_MAX_BLOCKING_THREADS`.
pub const DEFAULT_MAX_BLOCKING_THREADS: usize = 16;

/// The cores this process may use (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl RuntimeConfig {
    /// Reads the settings through `lookup` (the environment in [`Config::load`]).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            worker_threads: parsed_from(lookup, "MOVIESTORE_WORKER_THREADS", cores())?,
            max_blocking_threads: parsed_from(
                lookup,
                "MOVIESTORE_MAX_BLOCKING_THREADS",
                DEFAULT_MAX_BLOCKING_THREADS,
            )?,
        })
    }
}

/// The largest request body accepted (413 above it), as the contract fixes it.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The default number of tokens a process keeps (`MOVIESTORE_TOKEN_CACHE_SIZE`).
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100_000;

/// The shortest `MOVIESTORE_SECRET` accepted.
pub const MIN_SECRET_CHARS: usize = 32;

/// HTTP listener settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `MOVIESTORE_ADDR`; port 0 picks a free port.
    pub addr: SocketAddr,
    /// `MOVIESTORE_REQUEST_TIMEOUT_SECS`: the longest a request may take.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Request rate limit per client address.
    pub rate_limit: RateLimit,
    /// `MOVIESTORE_MAX_CONCURRENT_REQUESTS`: requests served at once; more get 503 (0: no cap).
    pub max_concurrent_requests: usize,
    /// `MOVIESTORE_TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: proxies::TrustedProxies,
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
    /// Whether `DATABASE_URL` was set (in the environment or `.env`), not defaulted.
    pub url_given: bool,
    /// `MOVIESTORE_EMBEDDED_POSTGRES`: when to run the private PostgreSQL.
    pub embedded: EmbeddedPostgres,
    /// `MOVIESTORE_PG_BIN`: the folder of PostgreSQL's server programs (found when unset).
    pub pg_bin: Option<std::path::PathBuf>,
}

/// When the private PostgreSQL (a cluster under `MOVIESTORE_DATA_DIR/postgres`) is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedPostgres {
    /// When `DATABASE_URL` is unset and nothing answers at the default address.
    Auto,
    /// Always, whatever `DATABASE_URL` says.
    Always,
    /// Never: the database `DATABASE_URL` names must answer.
    Never,
}

impl std::str::FromStr for EmbeddedPostgres {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err("use auto, always or never".into()),
        }
    }
}

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/moviestore";

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
    /// `MOVIESTORE_HASH_CONCURRENCY`: password hashes computed at once (default: the cores);
    /// more logins wait their turn, so at most this many argon2 memory blocks exist at a time.
    pub hash_concurrency: usize,
    /// `MOVIESTORE_TOKEN_CACHE_SIZE`: tokens `serve` keeps in memory after authenticating them
    /// (0: every request looks its token up in PostgreSQL). Revocations reach every process's
    /// cache before they answer (see `accounts::TokenCache`).
    pub token_cache_size: usize,
}

/// Reads `MOVIESTORE_HASH_CONCURRENCY` through `lookup`.
pub fn hash_concurrency_from(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<usize> {
    parsed_from(lookup, "MOVIESTORE_HASH_CONCURRENCY", cores())
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

fn parsed_from<T: std::str::FromStr>(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match lookup(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

impl Config {
    /// Reads the environment (after a `.env` file, when present) and validates it.
    pub fn load() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// The configuration the variables `lookup` gives describe (an unset or blank variable takes
    /// its default), validated. [`Config::load`] looks them up in the environment; tests that
    /// run the app in their own process give each app its own.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let config = Self {
            http: HttpConfig {
                addr: parsed_from(&var, "MOVIESTORE_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
                request_timeout: Duration::from_secs(parsed_from(&var, "MOVIESTORE_REQUEST_TIMEOUT_SECS", 10)?),
                shutdown_grace: Duration::from_secs(10),
                rate_limit: {
                    let per_second = parsed_from(&var, "MOVIESTORE_RATE_LIMIT_PER_SEC", 2000)?;
                    RateLimit {
                        per_second,
                        burst: parsed_from(&var, "MOVIESTORE_RATE_LIMIT_BURST", per_second.saturating_mul(2))?,
                    }
                },
                max_concurrent_requests: parsed_from(&var, "MOVIESTORE_MAX_CONCURRENT_REQUESTS", 1024)?,
                trusted_proxies: parsed_from(&var, "MOVIESTORE_TRUSTED_PROXIES", Default::default())?,
            },
            database: DatabaseConfig {
                url: var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()).into(),
                url_given: var("DATABASE_URL").is_some(),
                embedded: parsed_from(&var, "MOVIESTORE_EMBEDDED_POSTGRES", EmbeddedPostgres::Auto)?,
                pg_bin: var("MOVIESTORE_PG_BIN").map(Into::into),
                max_connections: parsed_from(&var, "MOVIESTORE_DB_MAX_CONNECTIONS", 16)?,
                acquire_timeout: Duration::from_secs(parsed_from(&var, "MOVIESTORE_DB_ACQUIRE_TIMEOUT_SECS", 3)?),
                run_migrations: true,
            },
            redis: RedisConfig {
                url: var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()).into(),
                key_prefix: var("MOVIESTORE_REDIS_PREFIX").unwrap_or_else(|| "moviestore:".into()),
            },
            auth: AuthConfig {
                token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
                argon2: Argon2Params {
                    memory_kib: parsed_from(&var, "MOVIESTORE_ARGON2_MEMORY_KIB", Argon2Params::default().memory_kib)?,
                    iterations: parsed_from(&var, "MOVIESTORE_ARGON2_ITERATIONS", Argon2Params::default().iterations)?,
                    parallelism: parsed_from(
                        &var,
                        "MOVIESTORE_ARGON2_PARALLELISM",
                        Argon2Params::default().parallelism,
                    )?,
                },
                login_max_failures: 10,
                login_window: Duration::from_secs(5 * 60),
                hash_concurrency: hash_concurrency_from(&var)?,
                token_cache_size: parsed_from(
                        &var,
                    "MOVIESTORE_TOKEN_CACHE_SIZE",
                    DEFAULT_TOKEN_CACHE_SIZE,
                )?,
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
            runtime: RuntimeConfig::from_lookup(&var)?,
            data_dir: var("MOVIESTORE_DATA_DIR").unwrap_or_else(|| ".moviestore".into()).into(),
            cors: parsed_from(&var, "MOVIESTORE_CORS_ORIGINS", CorsOrigins::None)?,
            metrics_addr: match var("MOVIESTORE_METRICS_ADDR") {
                None => None,
                Some(_) => Some(parsed_from(&var, "MOVIESTORE_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 0)))?),
            },
            loan: loan_from(&var)?,
            mail: MailConfig::from_lookup(&var)?,
            secret: match var("MOVIESTORE_SECRET") {
                None => None,
                Some(secret) if secret.chars().count() >= MIN_SECRET_CHARS => Some(secret.into()),
                Some(_) => bail!(
                    "MOVIESTORE_SECRET must be at least {} characters (e.g. the output of `openssl rand -hex 32`)",
                    MIN_SECRET_CHARS
                ),
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
        if self.auth.hash_concurrency == 0 {
            bail!("MOVIESTORE_HASH_CONCURRENCY must be at least 1");
        }
        if self.runtime.worker_threads == 0 {
            bail!("MOVIESTORE_WORKER_THREADS must be at least 1");
        }
        if self.runtime.max_blocking_threads < self.auth.hash_concurrency {
            bail!("MOVIESTORE_MAX_BLOCKING_THREADS must be at least MOVIESTORE_HASH_CONCURRENCY");
        }
        if let Some((user, _)) = &self.bootstrap_admin {
            if user.trim().is_empty() {
                bail!("MOVIESTORE_ADMIN must be username:password");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn runtime_sizes_default_to_the_cores_and_a_small_blocking_pool() {
        let runtime = RuntimeConfig::from_lookup(&env(&[])).unwrap();
        assert_eq!(runtime.worker_threads, cores());
        assert_eq!(runtime.max_blocking_threads, DEFAULT_MAX_BLOCKING_THREADS);
        assert_eq!(hash_concurrency_from(&env(&[])).unwrap(), cores());
    }

    #[test]
    fn runtime_sizes_and_hash_concurrency_are_read_from_their_variables() {
        let lookup = env(&[
            ("MOVIESTORE_WORKER_THREADS", "3"),
            ("MOVIESTORE_MAX_BLOCKING_THREADS", " 5 "),
            ("MOVIESTORE_HASH_CONCURRENCY", "4"),
        ]);
        let runtime = RuntimeConfig::from_lookup(&lookup).unwrap();
        assert_eq!(runtime, RuntimeConfig { worker_threads: 3, max_blocking_threads: 5 });
        assert_eq!(hash_concurrency_from(&lookup).unwrap(), 4);
    }

    #[test]
    fn a_malformed_size_names_its_variable() {
        let error = RuntimeConfig::from_lookup(&env(&[("MOVIESTORE_WORKER_THREADS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("MOVIESTORE_WORKER_THREADS"), "{error}");
        let error =
            hash_concurrency_from(&env(&[("MOVIESTORE_HASH_CONCURRENCY", "-1")])).unwrap_err().to_string();
        assert!(error.contains("MOVIESTORE_HASH_CONCURRENCY"), "{error}");
    }

    fn valid() -> Config {
        Config {
            http: HttpConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                request_timeout: Duration::from_secs(10),
                shutdown_grace: Duration::from_secs(1),
                rate_limit: RateLimit { per_second: 0, burst: 0 },
                max_concurrent_requests: 0,
                trusted_proxies: Default::default(),
            },
            database: DatabaseConfig {
                url: "postgres://localhost/x".to_string().into(),
                max_connections: 1,
                acquire_timeout: Duration::from_secs(1),
                run_migrations: false,
                url_given: true,
                embedded: EmbeddedPostgres::Never,
                pg_bin: None,
            },
            redis: RedisConfig { url: "redis://localhost".to_string().into(), key_prefix: "t:".into() },
            auth: AuthConfig {
                token_ttl: Duration::from_secs(60),
                argon2: Argon2Params::default(),
                login_max_failures: 1,
                login_window: Duration::from_secs(1),
                hash_concurrency: 2,
                token_cache_size: 10,
            },
            log: LogConfig { filter: DEFAULT_LOG_FILTER.into(), format: LogFormat::Pretty },
            bootstrap_admin: None,
            secret: None,
            run_projectors: true,
            runtime: RuntimeConfig { worker_threads: 2, max_blocking_threads: 2 },
            data_dir: ".moviestore".into(),
            cors: CorsOrigins::None,
            metrics_addr: None,
            loan: domain::loan::LoanPolicy::default(),
            mail: MailConfig::from_lookup(&env(&[])).unwrap(),
        }
    }

    #[test]
    fn mail_settings_default_to_files_and_the_store_and_check_what_is_given() {
        let mail = MailConfig::from_lookup(&env(&[])).unwrap();
        assert!(mail.smtp_url.is_none());
        assert_eq!(mail.from, DEFAULT_MAIL_FROM);
        assert_eq!(mail.public_url_or(SocketAddr::from(([127, 0, 0, 1], 8080))), "http://127.0.0.1:8080");
        let mail = MailConfig::from_lookup(&env(&[
            ("MOVIESTORE_SMTP_URL", "smtp://user:pass@mail.example.com:587?tls=required"),
            ("MOVIESTORE_MAIL_FROM", "Shop <shop@example.com>"),
            ("MOVIESTORE_PUBLIC_URL", "https://shop.example.com/"),
        ]))
        .unwrap();
        assert!(mail.smtp_url.is_some());
        assert_eq!(mail.public_url_or(SocketAddr::from(([127, 0, 0, 1], 8080))), "https://shop.example.com");
        for (name, wrong) in [
            ("MOVIESTORE_SMTP_URL", "mail.example.com:25"),
            ("MOVIESTORE_SMTP_URL", "http://mail.example.com"),
            ("MOVIESTORE_MAIL_FROM", "not a mailbox"),
            ("MOVIESTORE_PUBLIC_URL", "shop.example.com"),
        ] {
            let error = MailConfig::from_lookup(&env(&[(name, wrong)])).unwrap_err().to_string();
            assert!(error.contains(name), "{name}={wrong}: {error}");
        }
    }

    #[test]
    fn the_loan_lasts_7_days_unless_set_to_1_to_365_days() {
        assert_eq!(loan_from(&env(&[])).unwrap().length_days(), 7);
        assert_eq!(loan_from(&env(&[("MOVIESTORE_LOAN_DAYS", " 14 ")])).unwrap().length_days(), 14);
        assert_eq!(loan_from(&env(&[("MOVIESTORE_LOAN_DAYS", "365")])).unwrap().length_days(), 365);
        for wrong in ["0", "366", "-3", "7.5", "a week"] {
            let error = loan_from(&env(&[("MOVIESTORE_LOAN_DAYS", wrong)])).unwrap_err().to_string();
            assert!(error.contains("MOVIESTORE_LOAN_DAYS") && error.contains("365"), "{wrong}: {error}");
        }
    }

    #[test]
    fn zero_sizes_and_a_blocking_pool_smaller_than_the_hash_bound_are_rejected() {
        assert!(valid().validate().is_ok());
        let mut c = valid();
        c.auth.hash_concurrency = 0;
        assert!(c.validate().unwrap_err().to_string().contains("MOVIESTORE_HASH_CONCURRENCY"));
        let mut c = valid();
        c.runtime.worker_threads = 0;
        assert!(c.validate().unwrap_err().to_string().contains("MOVIESTORE_WORKER_THREADS"));
        let mut c = valid();
        c.auth.hash_concurrency = 3;
        assert!(c.validate().unwrap_err().to_string().contains("MOVIESTORE_MAX_BLOCKING_THREADS"));
    }

    #[test]
    fn cors_origins_are_a_list_any_or_none_and_a_malformed_one_is_named() {
        assert_eq!("".parse::<CorsOrigins>(), Ok(CorsOrigins::None));
        assert_eq!(" * ".parse::<CorsOrigins>(), Ok(CorsOrigins::Any));
        assert_eq!(
            "https://a.example, http://localhost:3000/".parse::<CorsOrigins>(),
            Ok(CorsOrigins::List(vec!["https://a.example".into(), "http://localhost:3000".into()]))
        );
        for bad in ["a.example", "ftp://a.example", "https://a.example/path", "https://*.example"] {
            let error = bad.parse::<CorsOrigins>().unwrap_err();
            assert!(error.contains(bad.trim_end_matches('/')), "{bad}: {error}");
        }
    }

    #[test]
    fn embedded_postgres_modes_parse_and_others_are_refused() {
        assert_eq!("auto".parse::<EmbeddedPostgres>(), Ok(EmbeddedPostgres::Auto));
        assert_eq!("always".parse::<EmbeddedPostgres>(), Ok(EmbeddedPostgres::Always));
        assert_eq!("never".parse::<EmbeddedPostgres>(), Ok(EmbeddedPostgres::Never));
        assert!("sometimes".parse::<EmbeddedPostgres>().is_err());
    }
}
