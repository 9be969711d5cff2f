//! Durable timers: rows of `deadline` (stream, kind, due time; one per stream and kind), written
//! and deleted inside the append transactions of the events that set and cancel them, so a timer
//! never disagrees with the log. The scheduler that fires them is `projections::deadlines`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The kind of a rental's timer that fires `MarkOverdue` at its due time.
pub const OVERDUE: &str = "overdue";

/// The kind of a rental's timer that queues its next overdue reminder (set by the notifications
/// projection, fired by `projections::notifications::fire_reminders`).
pub const REMINDER: &str = "reminder";

/// Sets the stream's timer of this kind (a repeated set keeps the first: a due time never moves).
pub async fn set(
    conn: &mut PgConnection,
    stream_id: &str,
    kind: &str,
    due_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut timers = Timers::default();
    timers.push(stream_id, due_at);
    timers.set(conn, kind).await
}

/// Timers of one kind to set, one per stream, in one statement.
#[derive(Default)]
pub(crate) struct Timers {
    stream_ids: Vec<String>,
    due_at: Vec<DateTime<Utc>>,
}

impl Timers {
    pub(crate) fn push(&mut self, stream_id: &str, due_at: DateTime<Utc>) {
        self.stream_ids.push(stream_id.to_string());
        self.due_at.push(due_at);
    }

    /// Sets them all in one statement (none: no statement); a repeated set keeps the first.
    pub(crate) async fn set(&self, conn: &mut PgConnection, kind: &str) -> Result<(), sqlx::Error> {
        if self.stream_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into deadline (stream_id, kind, due_at)
             select s, $2, d from unnest($1::text[], $3::timestamptz[]) as t(s, d)
             on conflict (stream_id, kind) do nothing",
        )
        .bind(&self.stream_ids)
        .bind(kind)
        .bind(&self.due_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Cancels the streams' timers of these kinds, in one statement (none: no statement), except one
/// that a scheduler is firing at this very moment (it holds the row): then the return does not
/// wait for it, and the timer, left behind if its firing rolls back, finds the rental returned and
/// records nothing when it fires again.
pub(crate) async fn cancel(
    conn: &mut PgConnection,
    stream_ids: &[&str],
    kinds: &[&str],
) -> Result<(), sqlx::Error> {
    if stream_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "delete from deadline
          where (stream_id, kind) in (select stream_id, kind from deadline
                                       where stream_id = any($1) and kind = any($2)
                                       for update skip locked)",
    )
    .bind(stream_ids)
    .bind(kinds)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the streams' timers of this kind that fired (the scheduler holds their rows, in this
/// same transaction), in one statement (none: no statement).
pub async fn fired(conn: &mut PgConnection, stream_ids: &[&str], kind: &str) -> Result<(), sqlx::Error> {
    if stream_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("delete from deadline where stream_id = any($1) and kind = $2")
        .bind(stream_ids)
        .bind(kind)
        .execute(conn)
        .await?;
    Ok(())
}
