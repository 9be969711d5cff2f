//! The process's cache of authenticated tokens, kept exact across processes.
//!
//! Authenticating a bearer token is a PostgreSQL lookup (digest → account), the one round trip a
//! cached movie read would otherwise make besides Redis. This cache keeps the answers in memory,
//! and API.md's rule that "logout takes effect at once in every process" holds through a
//! membership protocol rather than a time to live:
//!
//! - Every transaction that revokes tokens or changes what a token stands for (logout, password
//!   change, role change, erasure) bumps the counter in `token_revocations` and notifies
//!   [`AUTH_CHANNEL`] with `<counter> <user id>`, in the same transaction. The counter's row lock
//!   makes it grow in commit order.
//! - A process that caches is a *member* (a row in `token_cache_members`): it LISTENs first, then
//!   joins at the counter it can see, and only then starts filling its cache. On each notification
//!   it drops the account's tokens, then acknowledges the counter. It renews its lease every
//!   [`RENEW_EVERY`] and stops using its cache on its own clock [`LEASE_MARGIN`] before the lease
//!   it last renewed ends; a lost connection empties the cache until it has joined again.
//! - After its commit, a revoking request waits until every member whose lease is live and that
//!   joined before the revocation has acknowledged it ([`wait_until_acknowledged`]), so when it
//!   answers, no process can still serve the revoked token. A member that died stops counting
//!   when its lease runs out (at most [`LEASE`]).
//!
//! A fill that raced a revocation (its lookup read the row before the revocation committed, and it
//! stores after the notification was handled) is refused: every fill carries the cache's
//! generation from before its lookup, and every revocation, join and leave moves the generation.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::User;

/// The channel revocations are announced on.
pub const AUTH_CHANNEL: &str = "moviestore_auth";
/// How long a member's lease lasts after each renewal.
pub const LEASE: Duration = Duration::from_secs(2);
/// How often a member renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long before its lease ends (by its own clock, counted from when the renewal was sent) a
/// member stops using its cache.
pub const LEASE_MARGIN: Duration = Duration::from_millis(250);
/// The longest an entry is served, whatever happens: a safety net, not the mechanism.
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(300);
/// The longest a revoking request waits for acknowledgements. A live member acknowledges in
/// milliseconds and a dead one stops counting after [`LEASE`]; a member that renews its lease
/// without acknowledging would be a defect, logged as an error when this runs out.
pub const ACKNOWLEDGE_LIMIT: Duration = Duration::from_secs(5);

/// The token cache; cheap to clone.
#[derive(Clone)]
pub struct TokenCache(Arc<Inner>);

struct Inner {
    capacity: usize,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Vec<u8>, Entry>,
    by_user: HashMap<Uuid, Vec<Vec<u8>>>,
    /// Moves on every revocation, join and leave: a fill whose lookup began before the move is
    /// not stored.
    generation: u64,
    /// While this process is a member, when its cache must stop serving (its own clock).
    usable_until: Option<Instant>,
}

impl State {
    /// Drops every entry, and refuses fills whose lookup began before.
    fn forget_all(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.by_user.clear();
    }
}

struct Entry {
    user: Arc<User>,
    expires_at: DateTime<Utc>,
    cached_at: Instant,
}

/// Taken before a lookup, handed back with its result.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns caching off. It serves nothing until
    /// [`keep_membership`] has joined.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Inner { capacity, state: RwLock::new(State::default()) }))
    }

    /// Whether caching is on at all.
    pub fn enabled(&self) -> bool {
        self.0.capacity > 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.0.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The account of a cached, unexpired token, while this process is a member.
    pub fn get(&self, digest: &[u8]) -> Option<Arc<User>> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let state = self.read();
        // Registered once (the recorder is installed when the router is built, before any
        // request): building the labelled key and finding it in the registry on every request
        // cost as much as the lookup itself.
        static LOOKUPS: LazyLock<[metrics::Counter; 3]> = LazyLock::new(|| {
            ["off", "hit", "miss"]
                .map(|result| metrics::counter!("token_cache_lookups_total", "result" => result))
        });
        let [off, hit, miss] = &*LOOKUPS;
        if state.usable_until.is_none_or(|until| now >= until) {
            off.increment(1);
            return None;
        }
        let found = state.entries.get(digest).filter(|entry| {
            entry.expires_at > Utc::now() && now.duration_since(entry.cached_at) < MAX_ENTRY_AGE
        });
        if found.is_some() { hit } else { miss }.increment(1);
        found.map(|entry| entry.user.clone())
    }

    /// A ticket for a lookup about to be made, while this process is a member.
    pub fn ticket(&self) -> Option<Ticket> {
        let state = self.read();
        state.usable_until.is_some_and(|until| Instant::now() < until).then_some(Ticket(state.generation))
    }

    /// Stores a lookup's result, unless a revocation, join or leave came after its ticket.
    pub fn fill(&self, ticket: Ticket, digest: Vec<u8>, user: Arc<User>, expires_at: DateTime<Utc>) {
        let mut state = self.write();
        if state.generation != ticket.0 || state.usable_until.is_none() {
            return;
        }
        if state.entries.len() >= self.0.capacity {
            // Full: start again rather than track use. Refills are one lookup each.
            state.entries.clear();
            state.by_user.clear();
        }
        state.by_user.entry(user.id).or_default().push(digest.clone());
        state.entries.insert(digest, Entry { user, expires_at, cached_at: Instant::now() });
    }

    /// Drops every cached token of an account.
    pub fn revoke(&self, user_id: Uuid) {
        let mut state = self.write();
        state.generation += 1;
        if let Some(digests) = state.by_user.remove(&user_id) {
            for digest in digests {
                state.entries.remove(&digest);
            }
        }
    }

    /// Drops everything (a notification that could not be read).
    fn revoke_all(&self) {
        self.write().forget_all();
    }

    /// Starts serving, empty, until `until`.
    fn join(&self, until: Instant) {
        let mut state = self.write();
        state.forget_all();
        state.usable_until = Some(until);
    }

    /// Serves until `until`, if still a member.
    fn extend(&self, until: Instant) {
        let mut state = self.write();
        if state.usable_until.is_some() {
            state.usable_until = Some(until);
        }
    }

    /// Stops serving and forgets everything.
    fn leave(&self) {
        let mut state = self.write();
        state.forget_all();
        state.usable_until = None;
    }
}

/// Why a membership ended.
#[derive(Debug, thiserror::Error)]
enum MembershipError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the LISTEN connection was lost")]
    ConnectionLost,
    #[error("this process's membership row is gone")]
    Evicted,
    #[error("an announcement could not be read: {0:?}")]
    Unreadable(String),
}

/// Keeps this process a member while `shutdown` is not cancelled, joining again after any
/// failure (the cache serves nothing in between). Does nothing when caching is off.
pub async fn keep_membership(pool: PgPool, cache: TokenCache, shutdown: CancellationToken) {
    if !cache.enabled() {
        return;
    }
    loop {
        let member_id = Uuid::now_v7();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            outcome = be_member(&pool, &cache, member_id) => outcome,
        };
        // Stop serving first, then stop counting: revoking requests need not wait for a process
        // that no longer caches.
        cache.leave();
        if let Err(error) = sqlx::query("delete from token_cache_members where member_id = $1")
            .bind(member_id)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not remove the token cache membership; it lapses with its lease");
        }
        match outcome {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "token cache off until this process joins again; tokens are looked up in PostgreSQL")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One membership: LISTEN, join, then handle notifications and renew the lease until a failure
/// (or until the caller drops it at shutdown).
async fn be_member(pool: &PgPool, cache: &TokenCache, member_id: Uuid) -> Result<(), MembershipError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(AUTH_CHANNEL).await?;
    let sent = Instant::now();
    sqlx::query("delete from token_cache_members where lease_until < now() - interval '1 minute'")
        .execute(&mut listener)
        .await?;
    sqlx::query(
        "insert into token_cache_members (member_id, joined_at, acknowledged, lease_until)
         select $1, counter, counter, now() + make_interval(secs => $2) from token_revocations",
    )
    .bind(member_id)
    .bind(LEASE.as_secs_f64())
    .execute(&mut listener)
    .await?;
    cache.join(sent + LEASE - LEASE_MARGIN);
    tracing::debug!(%member_id, "token cache joined");
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            received = listener.try_recv() => {
                let notification = received?.ok_or(MembershipError::ConnectionLost)?;
                let Some(counter) = revoke_announced(cache, notification.payload()) else {
                    return Err(MembershipError::Unreadable(notification.payload().to_string()));
                };
                sqlx::query(
                    "update token_cache_members set acknowledged = greatest(acknowledged, $2)
                      where member_id = $1",
                )
                .bind(member_id)
                .bind(counter)
                .execute(&mut listener)
                .await?;
            }
            _ = renew.tick() => {
                let sent = Instant::now();
                let renewed = sqlx::query(
                    "update token_cache_members set lease_until = now() + make_interval(secs => $2)
                      where member_id = $1",
                )
                .bind(member_id)
                .bind(LEASE.as_secs_f64())
                .execute(&mut listener)
                .await?
                .rows_affected();
                if renewed == 0 {
                    return Err(MembershipError::Evicted);
                }
                cache.extend(sent + LEASE - LEASE_MARGIN);
            }
        }
    }
}

/// Applies one announcement (`<counter> <user id>`) and returns its counter; an account id that
/// does not parse drops every entry. `None` when not even the counter parses.
fn revoke_announced(cache: &TokenCache, payload: &str) -> Option<i64> {
    let (counter, user) = payload.split_once(' ').unwrap_or((payload, ""));
    let counter = counter.parse().ok();
    match Uuid::parse_str(user) {
        Ok(user_id) if counter.is_some() => cache.revoke(user_id),
        _ => cache.revoke_all(),
    }
    counter
}

/// Records a revocation for `user_id` in the open transaction: bumps the counter (its row lock
/// orders revocations by commit) and notifies, delivered only if the transaction commits. Returns
/// the counter to pass to [`wait_until_acknowledged`] after the commit.
pub(super) async fn announce(conn: &mut sqlx::PgConnection, user_id: Uuid) -> Result<i64, sqlx::Error> {
    let counter: i64 =
        sqlx::query_scalar("update token_revocations set counter = counter + 1 returning counter")
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(AUTH_CHANNEL)
        .bind(format!("{counter} {user_id}"))
        .execute(&mut *conn)
        .await?;
    Ok(counter)
}

/// Waits, after the commit of revocation `counter`, until every member that joined before it and
/// whose lease is live has acknowledged it: then no process serves what it revoked.
pub(super) async fn wait_until_acknowledged(pool: &PgPool, counter: i64) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from token_cache_members
              where lease_until > now() and joined_at < $1 and acknowledged < $1",
        )
        .bind(counter)
        .fetch_one(pool)
        .await?;
        if waiting == 0 {
            metrics::histogram!("token_revocation_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        if started.elapsed() >= ACKNOWLEDGE_LIMIT {
            tracing::error!(counter, waiting, "token cache members did not acknowledge a revocation in time");
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Role;

    fn user(id: Uuid) -> Arc<User> {
        Arc::new(User {
            id,
            username: "greg".into(),
            email: None,
            role: Role::Customer,
            created_at: Utc::now(),
        })
    }

    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(1)
    }

    fn member(capacity: usize) -> TokenCache {
        let cache = TokenCache::new(capacity);
        cache.join(Instant::now() + Duration::from_secs(60));
        cache
    }

    #[test]
    fn serves_nothing_until_joined_and_nothing_after_leaving() {
        let cache = TokenCache::new(10);
        assert!(cache.ticket().is_none());
        cache.join(Instant::now() + Duration::from_secs(60));
        let ticket = cache.ticket().expect("a member takes tickets");
        cache.fill(ticket, vec![1], user(Uuid::now_v7()), later());
        assert!(cache.get(&[1]).is_some());
        cache.leave();
        assert!(cache.get(&[1]).is_none());
        assert!(cache.ticket().is_none());
    }

    #[test]
    fn a_lapsed_lease_stops_serving() {
        let cache = TokenCache::new(10);
        cache.join(Instant::now() + Duration::from_millis(30));
        let ticket = cache.ticket().unwrap();
        cache.fill(ticket, vec![1], user(Uuid::now_v7()), later());
        assert!(cache.get(&[1]).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&[1]).is_none(), "served past its lease");
        cache.extend(Instant::now() + Duration::from_secs(60));
        assert!(cache.get(&[1]).is_some(), "a renewed lease serves again");
    }

    #[test]
    fn a_revocation_drops_every_token_of_the_account_and_only_those() {
        let cache = member(10);
        let (greg, anna) = (Uuid::now_v7(), Uuid::now_v7());
        for (digest, id) in [(1u8, greg), (2, greg), (3, anna)] {
            let ticket = cache.ticket().unwrap();
            cache.fill(ticket, vec![digest], user(id), later());
        }
        cache.revoke(greg);
        assert!(cache.get(&[1]).is_none());
        assert!(cache.get(&[2]).is_none());
        assert_eq!(cache.get(&[3]).map(|u| u.id), Some(anna));
    }

    #[test]
    fn a_fill_that_raced_a_revocation_or_a_rejoin_is_not_stored() {
        let cache = member(10);
        let greg = Uuid::now_v7();
        let before_revocation = cache.ticket().unwrap();
        cache.revoke(greg);
        cache.fill(before_revocation, vec![1], user(greg), later());
        assert!(cache.get(&[1]).is_none(), "a lookup older than the revocation was stored");
        let before_rejoin = cache.ticket().unwrap();
        cache.join(Instant::now() + Duration::from_secs(60));
        cache.fill(before_rejoin, vec![1], user(greg), later());
        assert!(cache.get(&[1]).is_none(), "a lookup from the previous membership was stored");
    }

    #[test]
    fn expired_tokens_are_not_served_and_a_full_cache_starts_again() {
        let cache = member(2);
        let ticket = cache.ticket().unwrap();
        cache.fill(ticket, vec![1], user(Uuid::now_v7()), Utc::now() - chrono::Duration::seconds(1));
        assert!(cache.get(&[1]).is_none(), "an expired token was served");
        cache.fill(ticket, vec![2], user(Uuid::now_v7()), later());
        cache.fill(ticket, vec![3], user(Uuid::now_v7()), later());
        assert!(cache.get(&[2]).is_none() && cache.get(&[3]).is_some(), "capacity was exceeded");
    }

    #[test]
    fn a_capacity_of_zero_caches_nothing() {
        let cache = TokenCache::new(0);
        cache.join(Instant::now() + Duration::from_secs(60));
        assert!(!cache.enabled());
        assert!(cache.get(&[1]).is_none());
    }

    #[test]
    fn announcements_revoke_one_account_or_everything() {
        let cache = member(10);
        let (greg, anna) = (Uuid::now_v7(), Uuid::now_v7());
        for (digest, id) in [(1u8, greg), (2, anna)] {
            let ticket = cache.ticket().unwrap();
            cache.fill(ticket, vec![digest], user(id), later());
        }
        assert_eq!(revoke_announced(&cache, &format!("7 {greg}")), Some(7));
        assert!(cache.get(&[1]).is_none() && cache.get(&[2]).is_some());
        assert_eq!(revoke_announced(&cache, "8 not-a-uuid"), Some(8));
        assert!(cache.get(&[2]).is_none(), "an unreadable account id must drop everything");
        assert_eq!(revoke_announced(&cache, "garbage"), None);
    }
}
