//! Periodic jobs (the role of celery beat): purges that keep the relational tables small.
//!
//! Each job is a row of `job` (`every_seconds`, `next_run_at`, `last_run_at`, `last_outcome`).
//! Every `serve` and `worker` process runs [`run_periodically`]: it claims a due row with
//! `for update skip locked` (so one process at a time runs a job, and the others skip it rather
//! than wait), runs the job inside that transaction, behind a savepoint, and records the outcome
//! and the next run in the same transaction. A job that fails has its error in `last_outcome`
//! (`error: ...`, shown by `GET /api/v1/admin/jobs`) and is retried [`RETRY_AFTER`] later; one
//! that deleted a full batch runs again at once, so a backlog drains in short transactions.
//!
//! Two jobs purge the password-reset tokens and the notification outbox; should their table
//! be missing (a database migrated by an older release), they record `skipped: ...`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Rows one run deletes at most; a full batch makes the job run again at once.
pub const BATCH: i64 = 10_000;

/// How soon a failed run is retried (or the job's own interval, when shorter).
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest a process sleeps between looks at the job table.
pub const POLL: Duration = Duration::from_secs(1);

/// How long a job waits for a lock on the table it purges before it gives up (and is retried).
const LOCK_TIMEOUT: &str = "2s";

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    ExpiredTokens,
    LoginFailures { window: Duration },
    IdempotencyRecords,
    PasswordResetTokens,
    OldNotifications,
}

/// One periodic job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Its name: the row's key.
    pub name: &'static str,
    /// How often it runs.
    pub every: Duration,
    work: Work,
}

/// The product's jobs; `login_window` is the login throttle's window (older failures no longer
/// count).
pub fn jobs(login_window: Duration) -> Vec<Job> {
    let minutes = |m: u64| Duration::from_secs(m * 60);
    vec![
        Job { name: "purge-expired-tokens", every: minutes(60), work: Work::ExpiredTokens },
        Job {
            name: "purge-login-failures",
            every: login_window.max(Duration::from_secs(60)),
            work: Work::LoginFailures { window: login_window },
        },
        Job { name: "purge-idempotency-records", every: minutes(10), work: Work::IdempotencyRecords },
        Job { name: "purge-password-reset-tokens", every: minutes(60), work: Work::PasswordResetTokens },
        Job { name: "purge-old-notifications", every: minutes(24 * 60), work: Work::OldNotifications },
    ]
}

/// A job's row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    /// Its name.
    pub name: String,
    /// How often it runs.
    pub every_seconds: i32,
    /// When it last ran.
    pub last_run_at: Option<DateTime<Utc>>,
    /// What its last run did.
    pub last_outcome: Option<String>,
    /// When it runs next.
    pub next_run_at: DateTime<Utc>,
}

/// Makes sure every job has its row (due at once when new), with its current interval.
pub async fn register(pool: &PgPool, jobs: &[Job]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
    let every: Vec<i32> = jobs.iter().map(|j| i32::try_from(j.every.as_secs()).unwrap_or(i32::MAX)).collect();
    sqlx::query(
        "insert into job (name, every_seconds) select * from unnest($1::text[], $2::int[])
         on conflict (name) do update set every_seconds = excluded.every_seconds
          where job.every_seconds <> excluded.every_seconds",
    )
    .bind(&names)
    .bind(&every)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every job's row, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "select name, every_seconds, last_run_at, last_outcome, next_run_at from job order by name",
    )
    .fetch_all(pool)
    .await
}

/// What one call of [`run_due`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The job.
    pub name: &'static str,
    /// Its recorded outcome.
    pub outcome: String,
}

/// Claims one due job (skipping those another process is running), runs it and records how it
/// went, in one transaction. `None` when no job is due.
pub async fn run_due(pool: &PgPool, jobs: &[Job]) -> Result<Option<Ran>, sqlx::Error> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
    let mut tx = eventstore::db::begin(pool).await?;
    let claimed: Option<String> = sqlx::query_scalar(
        "select name from job where next_run_at <= now() and name = any($1)
          order by next_run_at limit 1 for update skip locked",
    )
    .bind(&names)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = claimed.and_then(|name| jobs.iter().find(|j| j.name == name)) else {
        return Ok(None);
    };
    sqlx::query(&format!("set local lock_timeout = '{LOCK_TIMEOUT}'")).execute(&mut *tx).await?;
    // The savepoint keeps the transaction usable when the job fails, to record the failure.
    let mut attempt = sqlx::Connection::begin(&mut *tx).await?;
    let result = perform(&mut attempt, job.work).await;
    let (outcome, next) = match result {
        Ok(Done::Deleted(rows)) => {
            attempt.commit().await?;
            let again = if rows >= BATCH as u64 { Duration::ZERO } else { job.every };
            (format!("ok: {rows} rows"), again)
        }
        Ok(Done::Skipped(why)) => {
            attempt.commit().await?;
            (format!("skipped: {why}"), job.every)
        }
        Err(error) => {
            attempt.rollback().await?;
            tracing::warn!(job = job.name, %error, "periodic job failed; it will be retried");
            (format!("error: {error}"), job.every.min(RETRY_AFTER))
        }
    };
    sqlx::query(
        "update job set last_run_at = ran.at, last_outcome = $2, next_run_at = ran.at + make_interval(secs => $3)
           from (select clock_timestamp() as at) ran
          where name = $1",
    )
    .bind(job.name)
    .bind(&outcome)
    .bind(next.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Ran { name: job.name, outcome }))
}

enum Done {
    Deleted(u64),
    Skipped(String),
}

async fn perform(conn: &mut PgConnection, work: Work) -> Result<Done, sqlx::Error> {
    Ok(match work {
        Work::ExpiredTokens => Done::Deleted(crate::accounts::purge_expired_tokens(conn, BATCH).await?),
        Work::LoginFailures { window } => {
            Done::Deleted(crate::accounts::purge_old_login_failures(conn, window, BATCH).await?)
        }
        Work::IdempotencyRecords => {
            Done::Deleted(eventstore::idempotency::purge_expired_on(conn, BATCH).await?)
        }
        Work::PasswordResetTokens => {
            if !table_exists(conn, "password_resets").await? {
                return Ok(Done::Skipped("no table password_resets".into()));
            }
            let deleted = sqlx::query(
                "delete from password_resets
                  where ctid = any(array(select ctid from password_resets where expires_at <= now() limit $1))",
            )
            .bind(BATCH)
            .execute(&mut *conn)
            .await?;
            Done::Deleted(deleted.rows_affected())
        }
        Work::OldNotifications => {
            if !table_exists(conn, "notification").await? {
                return Ok(Done::Skipped("no table notification".into()));
            }
            let deleted = sqlx::query(
                "delete from notification
                  where ctid = any(array(select ctid from notification
                                          where state in ('sent', 'skipped')
                                            and created_at <= now() - interval '30 days'
                                          limit $1))",
            )
            .bind(BATCH)
            .execute(&mut *conn)
            .await?;
            Done::Deleted(deleted.rows_affected())
        }
    })
}

async fn table_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select to_regclass($1) is not null").bind(name).fetch_one(conn).await
}

/// Registers the jobs, then runs whichever is due until `shutdown`, looking at least every
/// [`POLL`].
pub async fn run_periodically(pool: PgPool, jobs: Vec<Job>, shutdown: CancellationToken) {
    let mut registered = false;
    loop {
        if !registered {
            match register(&pool, &jobs).await {
                Ok(()) => registered = true,
                Err(error) => tracing::warn!(%error, "could not register the periodic jobs yet"),
            }
        }
        let mut wait = POLL;
        if registered {
            match run_due(&pool, &jobs).await {
                Ok(Some(ran)) => {
                    tracing::debug!(job = ran.name, outcome = %ran.outcome, "periodic job ran");
                    wait = Duration::ZERO;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not run the periodic jobs"),
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn the_jobs() -> Vec<Job> {
        jobs(Duration::from_secs(300))
    }

    async fn row(pool: &PgPool, name: &str) -> JobRow {
        list(pool).await.unwrap().into_iter().find(|j| j.name == name).unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_job_another_process_is_running_is_skipped_not_waited_for(pool: PgPool) {
        // Arrange: every job registered and due; another process holds one of them.
        let jobs = the_jobs();
        register(&pool, &jobs).await.unwrap();
        let mut other = eventstore::db::begin(&pool).await.unwrap();
        sqlx::query("select name from job where name = 'purge-expired-tokens' for update")
            .execute(&mut *other)
            .await
            .unwrap();

        // Act: run until nothing is due.
        let mut ran = Vec::new();
        while let Some(done) = run_due(&pool, &jobs).await.unwrap() {
            ran.push(done.name);
        }
        other.rollback().await.unwrap();
        let after = run_due(&pool, &jobs).await.unwrap();

        // Assert: the four free jobs ran once each; the held one only once it was let go.
        ran.sort();
        assert_eq!(
            ran,
            [
                "purge-idempotency-records",
                "purge-login-failures",
                "purge-old-notifications",
                "purge-password-reset-tokens"
            ]
        );
        assert_eq!(after, Some(Ran { name: "purge-expired-tokens", outcome: "ok: 0 rows".into() }));
        assert_eq!(run_due(&pool, &jobs).await.unwrap(), None);
        let reset = row(&pool, "purge-password-reset-tokens").await;
        assert_eq!(reset.last_outcome.as_deref(), Some("ok: 0 rows"));
        assert_eq!(reset.every_seconds, 3600);
        assert_eq!(row(&pool, "purge-login-failures").await.every_seconds, 300);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_full_batch_runs_again_at_once_until_the_backlog_is_gone(pool: PgPool) {
        // Arrange: 10,001 expired tokens and 2 live ones.
        let jobs: Vec<Job> = the_jobs().into_iter().filter(|j| j.name == "purge-expired-tokens").collect();
        register(&pool, &jobs).await.unwrap();
        let user = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into users (user_id, username, password_hash, role) values ($1, 'u', 'x', 'admin')",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "insert into tokens (token_hash, user_id, expires_at)
             select sha256(n::text::bytea), $1,
                    case when n <= 10001 then now() - interval '1 hour' else now() + interval '1 day' end
               from generate_series(1, 10003) n",
        )
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();

        // Act
        let first = run_due(&pool, &jobs).await.unwrap().unwrap();
        let again = row(&pool, "purge-expired-tokens").await;
        let second = run_due(&pool, &jobs).await.unwrap().unwrap();
        let then = row(&pool, "purge-expired-tokens").await;

        // Assert
        let left: i64 = sqlx::query_scalar("select count(*) from tokens").fetch_one(&pool).await.unwrap();
        assert_eq!(first.outcome, "ok: 10000 rows");
        assert_eq!(again.next_run_at, again.last_run_at.unwrap(), "a full batch is due again at once");
        assert_eq!(second.outcome, "ok: 1 rows");
        assert_eq!(then.next_run_at - then.last_run_at.unwrap(), chrono::Duration::seconds(3600));
        assert_eq!(left, 2, "the live tokens stay");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn login_failures_that_left_the_window_are_purged_and_recent_ones_kept(pool: PgPool) {
        // Arrange: failures of 300 random usernames (a spray) older than the 5-minute window,
        // and 2 inside it.
        let jobs: Vec<Job> = the_jobs().into_iter().filter(|j| j.name == "purge-login-failures").collect();
        register(&pool, &jobs).await.unwrap();
        sqlx::query(
            "insert into login_failures (username, client_addr, failed_at)
             select 'spray-' || n, '203.0.113.7',
                    case when n <= 300 then now() - interval '6 minutes' else now() - interval '1 minute' end
               from generate_series(1, 302) n",
        )
        .execute(&pool)
        .await
        .unwrap();

        // Act
        let ran = run_due(&pool, &jobs).await.unwrap().unwrap();

        // Assert
        let left: Vec<String> = sqlx::query_scalar("select username from login_failures order by username")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(ran.outcome, "ok: 300 rows");
        assert_eq!(left, ["spray-301", "spray-302"]);
    }
}
