//! Idempotency records: every SQL statement on the `idempotency` table.
//!
//! A request with an `Idempotency-Key` first *claims* its key (a row of its own, committed at
//! once); the command it runs then marks the claim with the position it appended, **inside the
//! append transaction**, so the events and the record cannot disagree: once events are committed
//! the key is never run again, even if the process dies before it answers. The request's final
//! answer is stored afterwards. This module knows nothing of HTTP: statuses, headers and bodies
//! are opaque values to it.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A key held by one request. A command of that request carries it in its
/// [`CommandContext`](crate::CommandContext), and the executor marks it in the append transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The caller: an account id, or `anonymous`.
    pub scope: String,
    /// The client's key.
    pub key: String,
    /// Names the request that holds the claim, so a request never touches a claim it lost.
    pub token: Uuid,
}

/// What identifies one request under a key.
#[derive(Debug, Clone)]
pub struct Fingerprint<'a> {
    /// The caller: an account id, or `anonymous`.
    pub scope: &'a str,
    /// The client's key.
    pub key: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// A digest of the request body.
    pub body_hash: &'a [u8],
}

/// A stored final answer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredAnswer {
    /// Its status code.
    pub status: i16,
    /// The headers kept with it, as `[[name, value], ...]`.
    pub headers: Value,
    /// The nonce the body was sealed with.
    pub nonce: Vec<u8>,
    /// The sealed body.
    pub body: Vec<u8>,
}

/// What claiming a key found.
#[derive(Debug)]
pub enum ClaimOutcome {
    /// The key is this request's to run.
    Claimed(Claim),
    /// The same request has answered before: here is its answer.
    Replay(StoredAnswer),
    /// The same request is still running elsewhere.
    InProgress,
    /// The key was used for another method, path or body.
    Mismatch,
    /// The request appended events (the last at this position), but its process died before it
    /// could store the answer: it must not run again, and its answer is gone.
    AnswerLost {
        /// The position of the last event it appended.
        position: i64,
    },
    /// The scope holds as many live keys as it may: a new key is refused until some expire.
    TooMany,
}

#[derive(sqlx::FromRow)]
struct Existing {
    method: String,
    path: String,
    body_hash: Vec<u8>,
    position: Option<i64>,
    status: Option<i16>,
    headers: Option<Value>,
    nonce: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    leased: bool,
    live: bool,
}

/// Claims a key for a request, or says why it cannot be run. A claim holds for `lease` (longer
/// than any request may run); a record lives for `ttl`. An expired record, and a claim whose
/// lease ran out before its command appended anything, are taken over.
pub async fn claim(
    pool: &PgPool,
    request: &Fingerprint<'_>,
    lease: Duration,
    ttl: Duration,
) -> Result<ClaimOutcome, sqlx::Error> {
    claim_capped(pool, request, lease, ttl, None).await
}

/// [`claim`], with at most `max_live` live keys per scope: a new key beyond them is
/// [`ClaimOutcome::TooMany`] (a key the scope already holds still replays). The count and the
/// insert run under a per-scope transaction lock, so simultaneous requests cannot pass the cap.
pub async fn claim_capped(
    pool: &PgPool,
    request: &Fingerprint<'_>,
    lease: Duration,
    ttl: Duration,
    max_live: Option<i64>,
) -> Result<ClaimOutcome, sqlx::Error> {
    // Between the two statements the row may be released or expire; a few rounds settle it.
    for _ in 0..3 {
        let token = Uuid::now_v7();
        let mut tx = crate::db::begin(pool).await?;
        let full = match max_live {
            None => false,
            Some(max) => {
                sqlx::query("select pg_advisory_xact_lock(hashtextextended('idempotency:' || $1, 0))")
                    .bind(request.scope)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query_scalar(
                    "select count(*) >= $2 from
                       (select 1 from idempotency where scope = $1 and expires_at > now() limit $2) live",
                )
                .bind(request.scope)
                .bind(max)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let claimed: Option<Uuid> = if full {
            None
        } else {
            sqlx::query_scalar(
                "insert into idempotency as i
                 (scope, key, method, path, body_hash, claim, lease_until, expires_at)
             values ($1, $2, $3, $4, $5, $6,
                     now() + make_interval(secs => $7), now() + make_interval(secs => $8))
             on conflict (scope, key) do update
                set method = excluded.method, path = excluded.path, body_hash = excluded.body_hash,
                    claim = excluded.claim, lease_until = excluded.lease_until,
                    expires_at = excluded.expires_at, created_at = now(), position = null,
                    status = null, headers = null, nonce = null, body = null
              where i.expires_at <= now()
                 or (i.status is null and i.position is null and i.lease_until <= now())
             returning claim",
            )
            .bind(request.scope)
            .bind(request.key)
            .bind(request.method)
            .bind(request.path)
            .bind(request.body_hash)
            .bind(token)
            .bind(lease.as_secs_f64())
            .bind(ttl.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await?
        };
        tx.commit().await?;
        if claimed.is_some() {
            return Ok(ClaimOutcome::Claimed(Claim {
                scope: request.scope.to_string(),
                key: request.key.to_string(),
                token,
            }));
        }
        let existing: Option<Existing> = sqlx::query_as(
            "select method, path, body_hash, position, status, headers, nonce, body,
                    lease_until > now() as leased, expires_at > now() as live
               from idempotency where scope = $1 and key = $2",
        )
        .bind(request.scope)
        .bind(request.key)
        .fetch_optional(pool)
        .await?;
        let Some(existing) = existing.filter(|e| e.live) else {
            if full {
                return Ok(ClaimOutcome::TooMany);
            }
            continue;
        };
        if existing.method != request.method
            || existing.path != request.path
            || existing.body_hash != request.body_hash
        {
            return Ok(ClaimOutcome::Mismatch);
        }
        if let (Some(status), Some(headers), Some(nonce), Some(body)) =
            (existing.status, existing.headers, existing.nonce, existing.body)
        {
            return Ok(ClaimOutcome::Replay(StoredAnswer { status, headers, nonce, body }));
        }
        if existing.leased {
            return Ok(ClaimOutcome::InProgress);
        }
        if let Some(position) = existing.position {
            return Ok(ClaimOutcome::AnswerLost { position });
        }
    }
    Ok(ClaimOutcome::InProgress)
}

/// Marks a claim with the position its command appended, inside the append transaction. `false`
/// when the claim is no longer this request's (its lease ran out and another took the key over)
/// or when a command of it has appended already (one append per key): the append must then be
/// rolled back.
pub(crate) async fn mark_appended(
    conn: &mut PgConnection,
    claim: &Claim,
    position: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update idempotency set position = $4
          where scope = $1 and key = $2 and claim = $3 and status is null and position is null",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(claim.token)
    .bind(position)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Stores the final answer of a claim.
pub async fn complete(pool: &PgPool, claim: &Claim, answer: &StoredAnswer) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update idempotency set status = $4, headers = $5, nonce = $6, body = $7
          where scope = $1 and key = $2 and claim = $3 and status is null",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(claim.token)
    .bind(answer.status)
    .bind(&answer.headers)
    .bind(&answer.nonce)
    .bind(&answer.body)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Gives a claim up without an answer: the key is free again when nothing was appended; when
/// something was, the record stays (so the key never runs again) and its answer is lost.
pub async fn release(pool: &PgPool, claim: &Claim) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query(
        "delete from idempotency
          where scope = $1 and key = $2 and claim = $3 and status is null and position is null",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(claim.token)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update idempotency set lease_until = now()
          where scope = $1 and key = $2 and claim = $3 and status is null",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(claim.token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Deletes expired records, at most `batch` of them; returns how many.
pub async fn purge_expired(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    purge_expired_on(&mut conn, batch).await
}

/// [`purge_expired`] on a connection the caller holds (a periodic job's transaction).
pub async fn purge_expired_on(conn: &mut sqlx::PgConnection, batch: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "delete from idempotency
          where ctid = any(array(select ctid from idempotency where expires_at <= now() limit $1))",
    )
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}
