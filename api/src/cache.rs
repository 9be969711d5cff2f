//! The Redis cache of movie details: a disposable copy of the `GET /api/v1/movies/{id}` bodies.
//!
//! # What it owns
//!
//! One Redis hash per movie, at `{MOVIESTORE_REDIS_PREFIX}movie:{uuid}` (the uuid hyphenated, lower
//! case), with exactly two fields:
//!
//! - `rev`: the revision of the movie's read-model row the body was rendered from, in decimal;
//! - `body`: the JSON body, exactly as served.
//!
//! Every write sets a TTL of 300 s ([`ENTRY_TTL`]). Writes go through one Lua script that compares
//! `rev` numerically and only writes a newer revision, so a reader that filled the cache from an
//! older snapshot can never overwrite what the projector wrote after it. The projector's refresh
//! of a movie that is not cached writes only `rev` (a *floor*, [`FLOOR_TTL`]): the next read still
//! misses, but no reader can store a revision older than the floor. This module writes no other key.
//!
//! # What it must not do
//!
//! - Be a source of truth: the PostgreSQL read models are. Any entry can vanish at any moment (TTL,
//!   eviction, a Redis restart), and a miss is always a correct answer.
//! - Block startup or fail a request: [`Cache::new`] never connects; every call is bounded (a
//!   connection with calls waiting and no reply for [`COMMAND_TIMEOUT`] is closed by its watchdog,
//!   which fails them all) and turns any failure into a miss (`None` / `false`), logged at debug.
//!   It never panics.
//! - Hammer a Redis that is down: after a failure the connection is dropped and no new one is tried
//!   for [`RECONNECT_BACKOFF`]; calls in between fail at once. The first call after that tries again,
//!   so the cache resumes by itself when Redis comes back.
//! - Hold a lock across a Redis round trip on the hot path, or log the URL (it may hold a password).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult};
use secrecy::ExposeSecret;
use uuid::Uuid;

/// The longest a connection attempt (TCP connect and handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest a connection may have calls waiting without any reply before its watchdog closes
/// it (failing them all); also the bound of a whole script call or PING.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a connection's watchdog looks for a stall.
const STALL_CHECK: Duration = Duration::from_millis(50);
/// After a failure, how long calls fail at once before a new connection is tried.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The lifetime of an entry: a safety net in case an invalidation from the projector is lost.
pub const ENTRY_TTL: Duration = Duration::from_secs(300);

/// The lifetime of a floor (an entry holding only a revision): far longer than any request that
/// may have read an older row before the projector's commit.
pub const FLOOR_TTL: Duration = Duration::from_secs(60);

/// Lua numbers are doubles: integers are exact only up to 2^53. Revisions outside that range are
/// not cached at all rather than compared wrongly (a miss is always safe).
const MAX_EXACT_REVISION: i64 = 1 << 53;

/// The compare-and-set write. Running in Redis makes the read of `rev` and the write one atomic step.
///
/// KEYS[1]: the movie's entry. ARGV[1]: revision, ARGV[2]: body, ARGV[3]: TTL in seconds,
/// ARGV[4]: the mode, ARGV[5]: the TTL of a floor. Modes:
/// - `put`: a reader fills the cache with the row it read;
/// - `floor`: the projector, before committing a change, lowers the entry to a body-less *floor*
///   at the new revision (remembering with `hot` whether it was cached), so reads miss and no
///   reader can store an older revision;
/// - `refresh`: the projector, after the commit, writes the new body where the movie was cached
///   (a body or a hot floor); elsewhere it leaves a floor.
///
/// Returns 1 when a body was written, 2 when a floor was written, 0 when the entry already holds a
/// newer revision, or the same revision with a body (or, for `floor`, the same floor).
const PUT_SCRIPT: &str = r"
local incoming = tonumber(ARGV[1])
local mode = ARGV[4]
local kind = redis.call('TYPE', KEYS[1]).ok
local has_body, hot = false, false
if kind == 'hash' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'rev'))
  has_body = redis.call('HEXISTS', KEYS[1], 'body') == 1
  hot = redis.call('HEXISTS', KEYS[1], 'hot') == 1
  if current ~= nil and (current > incoming or (current == incoming and (has_body or mode == 'floor'))) then
    return 0
  end
end
-- Start from an empty key: a value of another type or shape (say, a left-over of an older
-- release) is only a stale cache entry.
redis.call('DEL', KEYS[1])
if mode == 'floor' or (mode == 'refresh' and not has_body and not hot) then
  if mode == 'floor' and (has_body or hot) then
    redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'hot', '1')
  else
    redis.call('HSET', KEYS[1], 'rev', ARGV[1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 2
end
redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'body', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// The Redis cache of movie details; cheap to clone; never blocks startup.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the URL does not parse: the cache then always misses (logged once at start).
    client: Option<redis::Client>,
    prefix: String,
    put_script: redis::Script,
    /// The shared connection and the back-off state. A std mutex: it is only held for a few
    /// instructions, never across an `.await`, so the hot path never waits on a Redis round trip.
    slot: Mutex<Slot>,
    /// Held while connecting, so that when Redis comes back one call reconnects and the others
    /// wait (bounded) for its result instead of all stampeding it at once.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Lease>,
    /// Incremented at every new connection, so that a failure seen on an old connection does not
    /// drop a newer one that another call has just opened.
    generation: u64,
    /// While set and in the future, calls fail at once without trying to connect.
    retry_at: Option<Instant>,
}

/// A clone of the shared multiplexed connection, tagged with its generation.
#[derive(Clone)]
struct Lease {
    generation: u64,
    conn: MultiplexedConnection,
    progress: Arc<Progress>,
}

/// The calls on one connection, for its watchdog ([`drive`]): how many were sent, how many have
/// ended (answered, failed, or given up by their caller), and how many got an answer.
///
/// The watchdog replaces a timer per call: a timer is registered in, and removed from, the
/// runtime's one timer wheel behind one lock, and a cached read took two (its own and the
/// request's deadline). Redis answers a connection's calls in order, so a connection with calls
/// waiting and no answer for [`COMMAND_TIMEOUT`] has stopped answering all of them.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    ended: AtomicU64,
    answered: AtomicU64,
}

impl Progress {
    /// `call`, counted: sent now, answered when it completes, ended when it completes or is
    /// dropped. A combinator, not an async function, so the call's future is stored once.
    fn track<'a, F: Future + 'a>(&'a self, call: F) -> impl Future<Output = F::Output> + 'a {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(self);
        call.map(move |reply| {
            waiting.answered();
            reply
        })
    }
}

/// One call in flight; ends when dropped.
struct Waiting<'a>(&'a Progress);

impl Waiting<'_> {
    /// The call got its reply (or its connection's error). Takes the whole guard, so the closure
    /// in [`Progress::track`] holds it (not only its field) until the call completes.
    fn answered(self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// Drives one connection (its replies reach its calls only while this runs), and closes it when
/// calls have waited [`COMMAND_TIMEOUT`] with no answer: dropping the driver fails every waiting
/// call at once, and their failure drops the connection and starts the back-off. Ends with the
/// connection (when its last clone is dropped, or the socket closes).
async fn drive(driver: impl Future<Output = ()>, progress: Arc<Progress>) {
    let watchdog = async {
        let mut answered = progress.answered.load(Ordering::Relaxed);
        // The last look at which nothing was waiting, or an answer had come since the look before.
        let mut quiet_at = Instant::now();
        loop {
            tokio::time::sleep(STALL_CHECK).await;
            let now_answered = progress.answered.load(Ordering::Relaxed);
            let waiting = progress.sent.load(Ordering::Relaxed) > progress.ended.load(Ordering::Relaxed);
            if !waiting || now_answered != answered {
                answered = now_answered;
                quiet_at = Instant::now();
            } else if quiet_at.elapsed() >= COMMAND_TIMEOUT {
                return;
            }
        }
    };
    tokio::select! {
        () = driver => {}
        () = watchdog => tracing::debug!("movie cache: Redis stopped answering; its connection is closed"),
    }
}

enum State {
    Connected(Lease),
    BackingOff,
    Disconnected,
}

impl Cache {
    /// Never connects here: Redis may be down at start.
    pub fn new(config: &crate::config::RedisConfig) -> Self {
        let client = match redis::Client::open(config.url.expose_secret()) {
            Ok(client) => Some(client),
            Err(error) => {
                // The error names the problem, not the URL, which may hold a password.
                tracing::warn!(%error, "REDIS_URL is not a valid Redis URL: the movie cache is disabled");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                client,
                prefix: config.key_prefix.clone(),
                put_script: redis::Script::new(PUT_SCRIPT),
                slot: Mutex::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The cached JSON body of a movie's details, or None on a miss, an error, or Redis down.
    /// Counted in `cache_hits_total` and `cache_misses_total`.
    pub async fn get_movie(&self, movie_id: Uuid) -> Option<String> {
        // Registered once (the recorder is installed when the router is built, before any
        // request): building the key and finding it in the registry on every read cost as much
        // as the rest of the counting.
        static HITS: LazyLock<metrics::Counter> = LazyLock::new(|| metrics::counter!("cache_hits_total"));
        static MISSES: LazyLock<metrics::Counter> = LazyLock::new(|| metrics::counter!("cache_misses_total"));
        let body = self.lookup_movie(movie_id).await;
        match body {
            Some(_) => HITS.increment(1),
            None => MISSES.increment(1),
        }
        body
    }

    async fn lookup_movie(&self, movie_id: Uuid) -> Option<String> {
        let key = self.inner.key(movie_id);
        let Lease { generation, mut conn, progress } = self.inner.connection().await?;
        // One round trip, bounded by the connection's watchdog, with no timer of its own.
        let reply = progress.track(redis::cmd("HGET").arg(&key).arg("body").query_async(&mut conn)).await;
        self.inner.outcome(generation, "HGET", Some(reply)).flatten()
    }

    /// Stores a movie's details body with its revision (a number that grows with every change of
    /// that movie's read-model row), unless the entry already holds a newer revision, or the same
    /// revision with a body: a compare-and-set in one Lua script, so a reader racing the projector
    /// can never put an older version back. Sets a TTL (300 s) as a safety net. Errors are
    /// swallowed (logged at debug). Returns whether the body was written.
    pub async fn put_movie(&self, movie_id: Uuid, revision: i64, body: &str) -> bool {
        self.write(movie_id, revision, body, "put").await == Some(1)
    }

    /// The projector's refresh after a commit: a movie that was cached (a body, or a floor that
    /// replaced one) gets the new body; a movie nobody has cached gets only a floor at this
    /// revision (so a reader that read the row before the commit cannot store it), and the next
    /// read misses and fills the cache. Returns whether a body was written.
    pub async fn refresh_movie(&self, movie_id: Uuid, revision: i64, body: &str) -> bool {
        self.write(movie_id, revision, body, "refresh").await == Some(1)
    }

    /// The projector's step before committing a change: the entry becomes a body-less floor at
    /// the new revision, so reads miss (and fill from the new row once it is committed) and no
    /// reader can store an older revision. Returns whether the floor was written.
    pub async fn floor_movie(&self, movie_id: Uuid, revision: i64) -> bool {
        self.write(movie_id, revision, "", "floor").await == Some(2)
    }

    async fn write(&self, movie_id: Uuid, revision: i64, body: &str, mode: &str) -> Option<i64> {
        if !(-MAX_EXACT_REVISION..=MAX_EXACT_REVISION).contains(&revision) {
            tracing::debug!(%movie_id, revision, "movie cache: revision too large to compare in Lua, not cached");
            return None;
        }
        let key = self.inner.key(movie_id);
        let Lease { generation, mut conn, progress } = self.inner.connection().await?;
        let mut invocation = self.inner.put_script.prepare_invoke();
        invocation
            .key(&key)
            .arg(revision)
            .arg(body)
            .arg(ENTRY_TTL.as_secs())
            .arg(mode)
            .arg(FLOOR_TTL.as_secs());
        let reply = bounded(progress.track(invocation.invoke_async::<i64>(&mut conn))).await;
        self.inner.outcome(generation, "put script", reply)
    }

    /// Whether Redis answers a PING now (short timeout), for /ready.
    ///
    /// During the back-off after a failure this answers `false` without asking Redis, so that a
    /// flood of readiness probes cannot turn into a flood of connection attempts.
    pub async fn is_up(&self) -> bool {
        let Some(Lease { generation, mut conn, progress }) = self.inner.connection().await else {
            return false;
        };
        let reply = bounded(progress.track(redis::cmd("PING").query_async::<()>(&mut conn))).await;
        self.inner.outcome(generation, "PING", reply).is_some()
    }
}

impl fmt::Debug for Cache {
    /// Shows the prefix and whether a connection is open; never the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("key_prefix", &self.inner.prefix)
            .field("connected", &self.inner.slot().conn.is_some())
            .finish_non_exhaustive()
    }
}

/// Bounds one call as a whole. The connection's watchdog closes a connection that stops
/// answering, but a script call can take up to three round trips (EVALSHA, SCRIPT LOAD after a
/// NOSCRIPT, EVALSHA), each answered: this bounds them together.
async fn bounded<T>(call: impl Future<Output = RedisResult<T>>) -> Option<RedisResult<T>> {
    tokio::time::timeout(COMMAND_TIMEOUT, call).await.ok()
}

/// Whether Redis answered, with an error about the command itself: the connection is then fine
/// and is kept. Anything else (I/O, timeouts, protocol errors) means the connection is suspect.
fn is_reply_error(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ResponseError
            | ErrorKind::ExtensionError
            | ErrorKind::TypeError
            | ErrorKind::NoScriptError
            | ErrorKind::ExecAbortError
    )
}

impl Inner {
    fn key(&self, movie_id: Uuid) -> String {
        format!("{}movie:{}", self.prefix, movie_id)
    }

    /// Never panics: a panic elsewhere while holding the lock cannot leave `Slot` half-updated (all
    /// its updates are single assignments), so a poisoned lock is simply used.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> State {
        let slot = self.slot();
        match (&slot.conn, slot.retry_at) {
            (Some(lease), _) => State::Connected(lease.clone()),
            (None, Some(at)) if Instant::now() < at => State::BackingOff,
            (None, _) => State::Disconnected,
        }
    }

    /// The shared connection; a new one when there is none and the back-off is over; `None` while
    /// Redis is considered down. Takes at most about twice [`CONNECT_TIMEOUT`].
    async fn connection(&self) -> Option<Lease> {
        let client = self.client.as_ref()?;
        match self.state() {
            State::Connected(lease) => return Some(lease),
            State::BackingOff => return None,
            State::Disconnected => {}
        }
        // Bounded, so that a caller never queues behind a chain of slow attempts.
        let _connecting = tokio::time::timeout(CONNECT_TIMEOUT, self.connecting.lock()).await.ok()?;
        // Whoever held the gate before us may have connected, or failed and started a back-off.
        match self.state() {
            State::Connected(lease) => return Some(lease),
            State::BackingOff => return None,
            State::Disconnected => {}
        }
        // If this future is dropped mid-way (the request was cancelled), nothing has changed and the
        // next call simply tries again.
        let result =
            match tokio::time::timeout(CONNECT_TIMEOUT, client.create_multiplexed_tokio_connection()).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::from((ErrorKind::IoError, "connecting took too long"))),
            };
        let mut slot = self.slot();
        match result {
            Ok((conn, driver)) => {
                let progress = Arc::new(Progress::default());
                tokio::spawn(drive(driver, Arc::clone(&progress)));
                slot.generation += 1;
                let lease = Lease { generation: slot.generation, conn, progress };
                slot.conn = Some(lease.clone());
                slot.retry_at = None;
                tracing::info!("movie cache: connected to Redis");
                Some(lease)
            }
            Err(error) => {
                tracing::debug!(%error, "movie cache: cannot connect to Redis; retrying in a second");
                slot.retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                None
            }
        }
    }

    /// Turns a bounded reply into a value, or logs the failure and, when the connection is suspect,
    /// drops it and starts the back-off.
    fn outcome<T>(&self, generation: u64, what: &str, reply: Option<RedisResult<T>>) -> Option<T> {
        match reply {
            Some(Ok(value)) => Some(value),
            Some(Err(error)) if is_reply_error(&error) => {
                tracing::debug!(%error, "movie cache: {what} failed");
                None
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "movie cache: {what} failed; dropping the connection");
                self.drop_connection(generation);
                None
            }
            None => {
                tracing::debug!("movie cache: {what} timed out; dropping the connection");
                self.drop_connection(generation);
                None
            }
        }
    }

    fn drop_connection(&self, generation: u64) {
        let mut slot = self.slot();
        // Only the connection that failed: a newer one opened meanwhile is left alone.
        if slot.conn.as_ref().is_some_and(|lease| lease.generation == generation) {
            slot.conn = None;
            slot.retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    //! These tests need a Redis: `REDIS_URL`, or `redis://127.0.0.1:6379`. Each test uses its own key
    //! prefix and deletes its keys at the end (a failed test leaves them to the 300 s TTL). The
    //! recovery test starts and kills its own `redis-server` (which must be on `PATH`).

    use std::net::TcpListener as StdTcpListener;
    use std::process::{Child, Command, Stdio};

    use rand::seq::SliceRandom;

    use super::*;
    use crate::config::RedisConfig;

    fn redis_url() -> String {
        std::env::var("REDIS_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
    }

    fn unique_prefix() -> String {
        format!("test-cache-{}:", Uuid::now_v7())
    }

    fn cache_at(url: &str, prefix: &str) -> Cache {
        Cache::new(&RedisConfig { url: url.to_string().into(), key_prefix: prefix.to_string() })
    }

    /// A plain connection, to look at what the cache wrote.
    async fn raw(url: &str) -> MultiplexedConnection {
        redis::Client::open(url)
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("these tests need a Redis at REDIS_URL or redis://127.0.0.1:6379")
    }

    async fn keys_with_prefix(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys
    }

    async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
        for key in keys_with_prefix(conn, prefix).await {
            let _: () = redis::cmd("DEL").arg(&key).query_async(conn).await.expect("DEL");
        }
    }

    fn free_port() -> u16 {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    }

    /// A private `redis-server`, killed when dropped, whatever the test's outcome.
    struct RedisServer {
        child: Option<Child>,
    }

    impl RedisServer {
        async fn start(port: u16) -> Self {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be on PATH");
            let server = Self { child: Some(child) };
            let url = format!("redis://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if ping(&url).await {
                    return server;
                }
                assert!(Instant::now() < deadline, "redis-server on port {port} did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Sends a signal (`STOP`, `CONT`) to the server.
        fn signal(&self, name: &str) {
            let pid = self.child.as_ref().expect("running").id().to_string();
            let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill");
            assert!(status.success(), "kill -{name} {pid}");
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// Whether a fresh connection to `url` answers PING (not through the cache, so no back-off).
    async fn ping(url: &str) -> bool {
        let attempt = async {
            let mut conn = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<()>(&mut conn).await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_millis(500), attempt).await, Ok(Some(())))
    }

    #[tokio::test]
    async fn miss_then_put_then_hit() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let movie = Uuid::now_v7();
        let body = r#"{"id":"x","title":"Alien"}"#;

        assert_eq!(cache.get_movie(movie).await, None);
        assert!(cache.put_movie(movie, 1, body).await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some(body));
        assert_eq!(cache.get_movie(Uuid::now_v7()).await, None, "another movie still misses");
        assert!(cache.is_up().await);

        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn older_or_equal_revisions_never_overwrite_a_newer_one() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let movie = Uuid::now_v7();

        assert!(cache.put_movie(movie, 5, "five").await);
        assert!(!cache.put_movie(movie, 5, "five again").await, "equal revision");
        assert!(!cache.put_movie(movie, 4, "four").await, "older revision");
        // Numeric, not lexicographic: "10" > "9" although '1' < '9'.
        assert!(cache.put_movie(movie, 9, "nine").await);
        assert!(cache.put_movie(movie, 10, "ten").await);
        assert!(!cache.put_movie(movie, 9, "nine again").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("ten"));

        // Revisions Lua cannot compare exactly are not cached, and leave the entry alone.
        assert!(!cache.put_movie(movie, i64::MAX, "max").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("ten"));
        assert!(cache.put_movie(movie, MAX_EXACT_REVISION, "2^53").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("2^53"));

        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn writes_set_the_ttl_and_the_documented_layout() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let movie = Uuid::now_v7();
        let key = format!("{prefix}movie:{movie}");
        let mut conn = raw(&url).await;

        assert!(cache.put_movie(movie, 7, "{}").await);
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.expect("TTL");
        assert!(ttl > 0 && ttl <= 300, "ttl {ttl}");
        let fields: std::collections::BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.expect("HGETALL");
        assert_eq!(
            fields,
            [("body".to_string(), "{}".to_string()), ("rev".to_string(), "7".to_string())].into()
        );

        cleanup(&mut conn, &prefix).await;
    }

    #[tokio::test]
    async fn keys_carry_the_prefix() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut conn = raw(&url).await;

        assert!(cache.put_movie(a, 1, "a").await);
        assert!(cache.put_movie(b, 1, "b").await);
        let mut expected = vec![format!("{prefix}movie:{a}"), format!("{prefix}movie:{b}")];
        expected.sort();
        assert_eq!(keys_with_prefix(&mut conn, &prefix).await, expected);

        // Another prefix is another namespace.
        let other_prefix = unique_prefix();
        let other = cache_at(&url, &other_prefix);
        assert_eq!(other.get_movie(a).await, None);
        assert!(keys_with_prefix(&mut conn, &other_prefix).await.is_empty());

        cleanup(&mut conn, &prefix).await;
    }

    #[tokio::test]
    async fn a_value_of_another_shape_is_a_miss_and_is_replaced() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let movie = Uuid::now_v7();
        let key = format!("{prefix}movie:{movie}");
        let mut conn = raw(&url).await;

        let _: () = redis::cmd("SET").arg(&key).arg("not a hash").query_async(&mut conn).await.expect("SET");
        assert_eq!(cache.get_movie(movie).await, None, "WRONGTYPE is a miss");
        assert!(cache.is_up().await, "a reply error keeps the connection");
        assert!(cache.put_movie(movie, 1, "fresh").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("fresh"));

        cleanup(&mut conn, &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_end_with_the_highest_revision() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let movie = Uuid::now_v7();
        let mut revisions: Vec<i64> = (1..=200).collect();
        revisions.shuffle(&mut rand::rng());

        let tasks: Vec<_> = revisions
            .into_iter()
            .map(|revision| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    (revision, cache.put_movie(movie, revision, &format!(r#"{{"rev":{revision}}}"#)).await)
                })
            })
            .collect();
        let mut written = 0;
        for task in tasks {
            let (revision, was_written) = task.await.expect("task");
            written += usize::from(was_written);
            if revision == 200 {
                assert!(was_written, "the highest revision is always written");
            }
        }
        assert!(written >= 1);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some(r#"{"rev":200}"#));

        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_degrades_quickly() {
        let cache = cache_at(&format!("redis://127.0.0.1:{}", free_port()), &unique_prefix());
        let movie = Uuid::now_v7();

        let started = Instant::now();
        assert_eq!(cache.get_movie(movie).await, None);
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert!(!cache.put_movie(movie, 1, "x").await);
        assert!(!cache.is_up().await);

        // During the back-off, calls fail at once.
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(cache.get_movie(movie).await, None);
        }
        assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        // Accepts connections and never writes a byte: only the timeouts can end the calls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let cache = cache_at(&format!("redis://127.0.0.1:{port}"), &unique_prefix());
        let movie = Uuid::now_v7();

        let started = Instant::now();
        assert_eq!(cache.get_movie(movie).await, None);
        assert!(!cache.put_movie(movie, 1, "x").await);
        assert!(!cache.is_up().await);
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        silent.abort();
    }

    #[tokio::test]
    async fn recovers_after_redis_restarts() {
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let mut server = RedisServer::start(port).await;
        let cache = cache_at(&url, &unique_prefix());
        let movie = Uuid::now_v7();

        assert!(cache.put_movie(movie, 1, "one").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("one"));

        server.stop();
        let started = Instant::now();
        assert_eq!(cache.get_movie(movie).await, None);
        assert!(!cache.put_movie(movie, 2, "two").await);
        assert!(!cache.is_up().await);
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());

        let _server = RedisServer::start(port).await;
        // The new server is empty (no persistence); the cache must find it by itself.
        let started = Instant::now();
        loop {
            if cache.put_movie(movie, 3, "three").await
                && cache.get_movie(movie).await.as_deref() == Some("three")
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_millis(2500), "the cache did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(cache.is_up().await);
    }

    #[tokio::test]
    async fn a_redis_that_stops_answering_is_given_up_at_once_for_every_waiting_read_and_found_again() {
        // Arrange: a cached movie on a private server, which then stops (SIGSTOP): its socket
        // stays open and nothing answers.
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let server = RedisServer::start(port).await;
        let cache = cache_at(&url, &unique_prefix());
        let movie = Uuid::now_v7();
        assert!(cache.put_movie(movie, 1, "one").await);
        assert_eq!(cache.get_movie(movie).await.as_deref(), Some("one"));
        server.signal("STOP");

        // Act: twenty reads wait on the one connection.
        let started = Instant::now();
        let reads = futures_util::future::join_all((0..20).map(|_| cache.get_movie(movie))).await;
        let waited = started.elapsed();

        // Assert: all missed together, after the watchdog's bound (not at once: they did wait
        // for a reply) and well within a second; during the back-off a read fails at once.
        assert_eq!(reads.iter().filter(|read| read.is_none()).count(), 20);
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(1), "waited {waited:?}");
        let started = Instant::now();
        assert_eq!(cache.get_movie(movie).await, None);
        assert!(started.elapsed() < Duration::from_millis(50), "took {:?}", started.elapsed());

        // The server answers again: the cache finds it by itself.
        server.signal("CONT");
        let started = Instant::now();
        while cache.get_movie(movie).await.as_deref() != Some("one") {
            assert!(started.elapsed() < Duration::from_millis(2500), "the cache did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn futures_are_send_so_handlers_can_await_them() {
        fn assert_send<T: Send>(_: &T) {}
        let cache = cache_at("redis://127.0.0.1:1", "p:");
        assert_send(&cache.get_movie(Uuid::nil()));
        assert_send(&cache.put_movie(Uuid::nil(), 1, ""));
        assert_send(&cache.is_up());
    }

    #[test]
    fn an_invalid_url_disables_the_cache_without_panicking() {
        let cache = cache_at("not a url", "p:");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            assert_eq!(cache.get_movie(Uuid::nil()).await, None);
            assert!(!cache.put_movie(Uuid::nil(), 1, "x").await);
            assert!(!cache.is_up().await);
        });
        assert!(format!("{cache:?}").contains("p:"));
    }

    #[tokio::test]
    async fn a_refresh_of_an_uncached_movie_leaves_a_miss_that_refuses_older_bodies() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let id = Uuid::now_v7();
        assert!(!cache.refresh_movie(id, 7, "{\"v\":7}").await, "nothing cached: only a floor");
        assert_eq!(cache.get_movie(id).await, None, "a floor is a miss");
        assert!(!cache.put_movie(id, 6, "{\"v\":6}").await, "an older row read before the commit is refused");
        assert_eq!(cache.get_movie(id).await, None);
        assert!(cache.put_movie(id, 7, "{\"v\":7}").await, "the current row fills the cache");
        assert_eq!(cache.get_movie(id).await.as_deref(), Some("{\"v\":7}"));
        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn a_refresh_of_a_cached_movie_replaces_its_body() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let id = Uuid::now_v7();
        assert!(cache.put_movie(id, 3, "{\"v\":3}").await);
        assert!(cache.refresh_movie(id, 4, "{\"v\":4}").await);
        assert_eq!(cache.get_movie(id).await.as_deref(), Some("{\"v\":4}"));
        assert!(!cache.refresh_movie(id, 4, "{\"v\":4}").await, "the same revision again changes nothing");
        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn a_floor_before_the_commit_hides_the_old_body_and_the_refresh_fills_it_again() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let id = Uuid::now_v7();
        assert!(cache.put_movie(id, 5, "{\"v\":5}").await);
        assert!(cache.floor_movie(id, 6).await, "the projector floors before its commit");
        assert_eq!(cache.get_movie(id).await, None, "no read serves the replaced body");
        assert!(!cache.put_movie(id, 5, "{\"v\":5}").await, "a reader of the old row cannot put it back");
        assert!(cache.refresh_movie(id, 6, "{\"v\":6}").await, "the movie was cached: refreshed");
        assert_eq!(cache.get_movie(id).await.as_deref(), Some("{\"v\":6}"));
        assert!(!cache.floor_movie(id, 6).await, "a floor never lowers an entry already at that revision");
        cleanup(&mut raw(&url).await, &prefix).await;
    }

    #[tokio::test]
    async fn a_floor_on_an_uncached_movie_stays_cold_and_lets_the_next_reader_fill_it() {
        let (url, prefix) = (redis_url(), unique_prefix());
        let cache = cache_at(&url, &prefix);
        let id = Uuid::now_v7();
        assert!(cache.floor_movie(id, 3).await);
        assert!(!cache.refresh_movie(id, 3, "{\"v\":3}").await, "nobody cached it: it stays a floor");
        assert_eq!(cache.get_movie(id).await, None);
        assert!(cache.put_movie(id, 3, "{\"v\":3}").await, "the next reader fills it");
        assert_eq!(cache.get_movie(id).await.as_deref(), Some("{\"v\":3}"));
        cleanup(&mut raw(&url).await, &prefix).await;
    }
}
