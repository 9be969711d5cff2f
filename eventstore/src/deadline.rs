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
    sqlx::query(
        "insert into deadline (stream_id, kind, due_at) values ($1, $2, $3)
         on conflict (stream_id, kind) do nothing",
    )
    .bind(stream_id)
    .bind(kind)
    .bind(due_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels the stream's timers of these kinds, in one statement, except one that a scheduler is
/// firing at this very moment (it holds the row): then the return does not wait for it, and the
/// timer, left behind if its firing rolls back, finds the rental returned and records nothing
/// when it fires again.
pub async fn cancel(conn: &mut PgConnection, stream_id: &str, kinds: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "delete from deadline
          where (stream_id, kind) in (select stream_id, kind from deadline
                                       where stream_id = $1 and kind = any($2)
                                       for update skip locked)",
    )
    .bind(stream_id)
    .bind(kinds)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the timer that fired (the scheduler holds its row, in this same transaction).
pub async fn fired(conn: &mut PgConnection, stream_id: &str, kind: &str) -> Result<(), sqlx::Error> {
    sqlx::query("delete from deadline where stream_id = $1 and kind = $2")
        .bind(stream_id)
        .bind(kind)
        .execute(conn)
        .await?;
    Ok(())
}
