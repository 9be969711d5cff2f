//! The email outbox: the notifications projection that queues receipts and reminders, the
//! reminder timers, and every SQL statement on the `notification` table.
//!
//! The projection reads the log like any other and, in the transaction that moves its checkpoint,
//! inserts one `notification` row per email (`on conflict do nothing` on the trigger, kind and
//! number, so a batch applied twice queues nothing twice). It is a process manager, not a read
//! model: it owns no table of `read` and is never rebuilt (a rebuild would queue every email
//! again). A `RentalOverdue` also sets the rental's `reminder` timer, 3 days on; when it fires
//! (in [`fire_reminders`]) and the rental is still active, the next reminder is queued and the
//! timer moved 3 days on, up to [`MAX_REMINDERS`]. The return cancels the timer.
//!
//! Rows hold ids and the facts of their trigger (times, amounts), never an address: the sender
//! reads the recipient from the account when it sends. The sender claims due rows with
//! `for update skip locked` and leases them (their `next_attempt_at` moves [`LEASE`] on) in a
//! short transaction, sends outside of it, and then marks them (those sent while a mark is in
//! flight go together in the next); a process that dies mid-send leaves its lease to run out,
//! after which another sends the unmarked emails again, with the same `Message-ID`.
//!
//! A statement on rows named by id says "not yet sent" as `state not in ('sent', 'failed',
//! 'skipped')`, not as `state = 'pending'`: the queue's partial index (`where state = 'pending'`)
//! cannot serve that condition, so PostgreSQL finds such rows through the primary key whatever its
//! statistics say. Gathered while the queue was nearly empty, they made it walk the partial index
//! of the whole queue for each row instead (2.5 ms a row with 11,000 emails waiting).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::engine::{BoxFuture, Projection, ProjectionError, Status, StoredEvent, StreamType, Touched};
use eventstore::deadline;

/// The projection's name (its checkpoint's key).
pub const NAME: &str = "notifications";

/// The sender's name in `/api/v1/admin/projections` and in `scheduler_status`.
pub const SENDER: &str = "notification-sender";

/// The most overdue reminders of one rental (the first and its repeats).
pub const MAX_REMINDERS: i16 = 3;

/// Days between overdue reminders.
pub const REMINDER_EVERY_DAYS: i64 = 3;

/// How long a claimed row is left to its sender before another process may claim it.
pub const LEASE: Duration = Duration::from_secs(30);

/// How long an email is retried before it is `failed`.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The kinds of email.
pub mod kind {
    /// A new account.
    pub const WELCOME: &str = "welcome";
    /// A rental opened.
    pub const RENTAL_RECEIPT: &str = "rental_receipt";
    /// A rental's charge assessed (after its return).
    pub const RETURN_RECEIPT: &str = "return_receipt";
    /// A rental paid.
    pub const PAYMENT_RECEIPT: &str = "payment_receipt";
    /// A rental overdue, and its repeats.
    pub const OVERDUE_REMINDER: &str = "overdue_reminder";
    /// A password reset requested.
    pub const PASSWORD_RESET: &str = "password_reset";
    /// Every kind.
    pub const ALL: [&str; 6] =
        [WELCOME, RENTAL_RECEIPT, RETURN_RECEIPT, PAYMENT_RECEIPT, OVERDUE_REMINDER, PASSWORD_RESET];
}

/// The states of a row.
pub const STATES: [&str; 4] = ["pending", "sent", "failed", "skipped"];

/// The notifications projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifications;

/// A row to queue.
struct Queued {
    kind: &'static str,
    rental_id: Uuid,
    trigger_id: Uuid,
    data: Value,
    reminder_from: Option<DateTime<Utc>>,
}

impl Projection for Notifications {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut queued = Vec::new();
            for event in events.iter().filter(|e| e.stream_type() == Some(StreamType::Rental)) {
                if let Some(row) = queued_for(event)? {
                    queued.push(row);
                }
            }
            if queued.is_empty() {
                return Ok(());
            }
            // The customer and the movie of each rental: the lookup written with the rent.
            let rental_ids: Vec<Uuid> = queued.iter().map(|q| q.rental_id).collect();
            let owners: HashMap<Uuid, (Uuid, Uuid)> = sqlx::query_as::<_, (Uuid, Uuid, Uuid)>(
                "select rental_id, customer_id, movie_id from rental_lookup where rental_id = any($1)",
            )
            .bind(&rental_ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(rental, customer, movie)| (rental, (customer, movie)))
            .collect();
            let mut emails = Vec::with_capacity(queued.len());
            for mut row in queued {
                let Some(&(user_id, movie_id)) = owners.get(&row.rental_id) else {
                    return Err(ProjectionError::Decode(format!(
                        "rental {} has no lookup row",
                        row.rental_id
                    )));
                };
                if let Value::Object(map) = &mut row.data {
                    map.insert("movie_id".into(), json!(movie_id));
                }
                if let Some(due_at) = row.reminder_from {
                    let next = due_at + chrono::Duration::days(REMINDER_EVERY_DAYS);
                    deadline::set(&mut *conn, &row.rental_id.to_string(), deadline::REMINDER, next).await?;
                }
                emails.push(NewEmail {
                    kind: row.kind,
                    user_id,
                    rental_id: Some(row.rental_id),
                    trigger_id: row.trigger_id,
                    seq: 1,
                    data: row.data,
                    secret: None,
                });
            }
            // One statement for the batch's emails, however many.
            insert_many(&mut *conn, &emails).await?;
            Ok(())
        })
    }
}

/// The email an event of a rental's stream calls for.
fn queued_for(event: &StoredEvent) -> Result<Option<Queued>, ProjectionError> {
    use domain::rental::RentalEvent;
    if !matches!(
        event.event_type.as_str(),
        "RentalOpened" | "ChargeAssessed" | "RentalPaid" | "RentalOverdue"
    ) {
        return Ok(None);
    }
    let rental_id = event.stream_uuid()?;
    let row = |kind, data| Queued { kind, rental_id, trigger_id: event.event_id, data, reminder_from: None };
    Ok(Some(match event.decode::<RentalEvent>()? {
        RentalEvent::RentalOpened { rented_at, due_at, .. } => {
            row(kind::RENTAL_RECEIPT, json!({"rented_at": rented_at, "due_at": due_at}))
        }
        RentalEvent::ChargeAssessed { days, amount_cents, currency, .. } => row(
            kind::RETURN_RECEIPT,
            json!({"days": days, "amount_cents": amount_cents, "currency": currency, "at": event.recorded_at}),
        ),
        RentalEvent::RentalPaid { amount_cents, currency, paid_at } => row(
            kind::PAYMENT_RECEIPT,
            json!({"amount_cents": amount_cents, "currency": currency, "paid_at": paid_at}),
        ),
        RentalEvent::RentalOverdue { due_at } => Queued {
            reminder_from: Some(due_at),
            ..row(kind::OVERDUE_REMINDER, json!({"due_at": due_at, "number": 1}))
        },
        RentalEvent::RentalClosed { .. } => return Ok(None),
    }))
}

/// An email to queue: a `notification` row.
#[derive(Debug, Clone)]
pub struct NewEmail<'a> {
    /// One of [`kind`].
    pub kind: &'a str,
    /// The recipient's account.
    pub user_id: Uuid,
    /// The rental it is about, if any.
    pub rental_id: Option<Uuid>,
    /// What caused it (an event, an account, a reset request): with `kind` and `seq`, its key.
    pub trigger_id: Uuid,
    /// Its number among the emails of that trigger and kind (reminders repeat).
    pub seq: i16,
    /// The facts the email shows.
    pub data: Value,
    /// A secret the email carries (a reset token), erased once sent.
    pub secret: Option<&'a str>,
}

/// Queues one email (nothing when its trigger already queued one of that kind and number);
/// `true` when a row was inserted.
pub async fn insert(conn: &mut PgConnection, email: NewEmail<'_>) -> Result<bool, sqlx::Error> {
    Ok(insert_many(conn, std::slice::from_ref(&email)).await? == 1)
}

/// Queues emails in one statement, each unless its trigger already queued one of that kind and
/// number; returns how many rows were inserted.
pub async fn insert_many(conn: &mut PgConnection, emails: &[NewEmail<'_>]) -> Result<u64, sqlx::Error> {
    if emails.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query(
        "insert into notification (id, kind, user_id, rental_id, trigger_id, seq, data, secret)
         select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::smallint[],
                              $7::jsonb[], $8::text[])
         on conflict (trigger_id, kind, seq) do nothing",
    )
    .bind(emails.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.rental_id).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.trigger_id).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.seq).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| &e.data).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.secret).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}

/// How many emails of `kind` were queued for the account within the last `within`.
pub async fn queued_within(
    conn: &mut PgConnection,
    user_id: Uuid,
    kind: &str,
    within: Duration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from notification
          where user_id = $1 and kind = $2 and created_at > now() - make_interval(secs => $3)",
    )
    .bind(user_id)
    .bind(kind)
    .bind(within.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Fires the due `reminder` timers, up to `batch`, in one transaction: for a rental still active,
/// queues its next overdue reminder and moves the timer on (or deletes it after the last one);
/// for a returned one, deletes the timer. Returns how many reminders were queued.
pub async fn fire_reminders(pool: &PgPool, batch: i64) -> Result<usize, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    let due: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select stream_id, due_at from deadline where kind = $1 and due_at <= now()
          order by due_at limit $2 for update skip locked",
    )
    .bind(deadline::REMINDER)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut queued = 0;
    for (stream_id, due_at) in due {
        #[derive(sqlx::FromRow)]
        struct Last {
            user_id: Uuid,
            trigger_id: Uuid,
            seq: i16,
            data: Value,
            returned: bool,
        }
        let last: Option<Last> = sqlx::query_as(
            "select n.user_id, n.trigger_id, n.seq, n.data, l.returned_at is not null as returned
               from notification n
               join rental_lookup l on l.rental_id = n.rental_id
              where n.rental_id = $1::uuid and n.kind = $2
              order by n.seq desc limit 1",
        )
        .bind(&stream_id)
        .bind(kind::OVERDUE_REMINDER)
        .fetch_optional(&mut *tx)
        .await?;
        let next = match last {
            Some(last) if !last.returned && last.seq < MAX_REMINDERS => last,
            _ => {
                deadline::fired(&mut tx, &[stream_id.as_str()], deadline::REMINDER).await?;
                continue;
            }
        };
        let seq = next.seq + 1;
        let mut data = next.data;
        if let Value::Object(map) = &mut data {
            map.insert("number".into(), json!(seq));
        }
        let rental_id = Uuid::parse_str(&stream_id).ok();
        let email = NewEmail {
            kind: kind::OVERDUE_REMINDER,
            user_id: next.user_id,
            rental_id,
            trigger_id: next.trigger_id,
            seq,
            data,
            secret: None,
        };
        if insert(&mut tx, email).await? {
            queued += 1;
        }
        if seq < MAX_REMINDERS {
            sqlx::query("update deadline set due_at = $3 where stream_id = $1 and kind = $2")
                .bind(&stream_id)
                .bind(deadline::REMINDER)
                .bind(due_at + chrono::Duration::days(REMINDER_EVERY_DAYS))
                .execute(&mut *tx)
                .await?;
        } else {
            deadline::fired(&mut tx, &[stream_id.as_str()], deadline::REMINDER).await?;
        }
    }
    tx.commit().await?;
    Ok(queued)
}

/// A row claimed for sending, with what its email needs, read in the claiming statement.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The row's id (the `Message-ID` is made from it).
    pub id: Uuid,
    /// The kind of email.
    pub kind: String,
    /// The recipient's account.
    pub user_id: Uuid,
    /// The rental it is about.
    pub rental_id: Option<Uuid>,
    /// The trigger's facts.
    pub data: Value,
    /// A password reset's token.
    pub secret: Option<String>,
    /// Attempts before this one.
    pub attempts: i32,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// The account's address and preferences (none when the account is gone).
    pub recipient: Option<Recipient>,
    /// The rental's title and times (none without a rental, or when it is unknown).
    pub facts: Option<RentalFacts>,
}

/// The recipient of an email and what they want to hear.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Username.
    pub username: String,
    /// Address (none for staff without one, or after erasure).
    pub email: Option<String>,
    /// Receipts wanted.
    pub receipts: bool,
    /// Reminders wanted.
    pub reminders: bool,
}

/// What a rental email needs to name the movie and its times.
#[derive(Debug, Clone)]
pub struct RentalFacts {
    /// The movie's title (from the catalogue).
    pub title: Option<String>,
    /// When it was rented.
    pub rented_at: DateTime<Utc>,
    /// When it came back.
    pub returned_at: Option<DateTime<Utc>>,
}

/// A claimed row as the claiming statement returns it.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: Uuid,
    kind: String,
    user_id: Uuid,
    rental_id: Option<Uuid>,
    data: Value,
    secret: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    username: Option<String>,
    email: Option<String>,
    receipts: bool,
    reminders: bool,
    title: Option<String>,
    rented_at: Option<DateTime<Utc>>,
    returned_at: Option<DateTime<Utc>>,
}

/// Claims up to `batch` due rows, oldest first, and leases them to the caller for [`LEASE`];
/// nothing while the queue is paused ([`pause_queue`]). The same statement reads each row's
/// recipient (address and preferences, as they are when the batch is claimed) and rental.
pub async fn claim(pool: &PgPool, batch: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "with due as (
             select id from notification
              where state = 'pending' and next_attempt_at <= now()
                and not exists (select 1 from notification_queue where paused_until > now())
              order by created_at, id
              limit $1
              for update skip locked),
         claimed as (
             update notification n
                set next_attempt_at = now() + make_interval(secs => $2)
               from due where n.id = due.id
             returning n.id, n.kind, n.user_id, n.rental_id, n.data, n.secret, n.attempts, n.created_at)
         select c.id, c.kind, c.user_id, c.rental_id, c.data, c.secret, c.attempts, c.created_at,
                u.username, u.email, coalesce(p.receipts, true) as receipts,
                coalesce(p.reminders, true) as reminders, m.title, l.rented_at, l.returned_at
           from claimed c
           left join users u on u.user_id = c.user_id
           left join notification_preferences p on p.user_id = c.user_id
           left join rental_lookup l on l.rental_id = c.rental_id
           left join read.movie m on m.movie_id = l.movie_id
          order by c.created_at, c.id",
    )
    .bind(batch)
    .bind(LEASE.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            recipient: r.username.map(|username| Recipient {
                username,
                email: r.email,
                receipts: r.receipts,
                reminders: r.reminders,
            }),
            facts: r.rented_at.map(|rented_at| RentalFacts {
                title: r.title,
                rented_at,
                returned_at: r.returned_at,
            }),
            id: r.id,
            kind: r.kind,
            user_id: r.user_id,
            rental_id: r.rental_id,
            data: r.data,
            secret: r.secret,
            attempts: r.attempts,
            created_at: r.created_at,
        })
        .collect())
}

/// The condition that a row is still queued (not sent, failed or skipped): only such a row's
/// outcome may still be recorded.
macro_rules! still_queued {
    () => {
        "state not in ('sent', 'failed', 'skipped')"
    };
}

/// Marks rows sent (and forgets their tokens), in one statement.
pub async fn mark_sent(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "update notification
                set state = 'sent', sent_at = now(), attempts = attempts + 1, last_error = null, secret = null
              where id = any($1) and ",
        still_queued!()
    ))
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a row skipped, saying why (and forgets its token).
pub async fn mark_skipped(pool: &PgPool, id: Uuid, why: &str) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "update notification set state = 'skipped', last_error = $2, secret = null
              where id = $1 and ",
        still_queued!()
    ))
    .bind(id)
    .bind(why)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed attempt of one row: retried after `retry_in`, or `failed` once it has been
/// retried for [`GIVE_UP_AFTER`]. Returns `true` when it is now `failed`.
pub async fn mark_failed_attempt(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    retry_in: Duration,
) -> Result<bool, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar(
        concat!(
            "update notification
                set attempts = attempts + 1, last_error = $2,
                    state = case when created_at <= now() - make_interval(secs => $4) then 'failed' else 'pending' end,
                    secret = case when created_at <= now() - make_interval(secs => $4) then null else secret end,
                    next_attempt_at = now() + make_interval(secs => $3)
              where id = $1 and ",
            still_queued!(),
            " returning state"
        ),
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .bind(GIVE_UP_AFTER.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(state.as_deref() == Some("failed"))
}

/// The SMTP server cannot be reached: no row is claimed for `retry_in`, by any process (the queue
/// keeps its order: once the pause ends, the oldest due row goes first).
pub async fn pause_queue(pool: &PgPool, retry_in: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into notification_queue (id, paused_until) values (true, now() + make_interval(secs => $1))
         on conflict (id) do update set paused_until = excluded.paused_until",
    )
    .bind(retry_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives claimed rows back before their lease ends (a sender that stops its batch early), so
/// that they keep their place in the queue.
pub async fn release(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "update notification set next_attempt_at = now() where id = any($1) and ",
        still_queued!()
    ))
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows waiting to be sent.
pub async fn queue_depth(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from notification where state = 'pending'").fetch_one(pool).await
}

/// The erased account's pending emails become `skipped` (inside the erasure's transaction).
pub async fn skip_pending_of(conn: &mut PgConnection, user_id: Uuid) -> Result<u64, sqlx::Error> {
    let skipped = sqlx::query(
        "update notification set state = 'skipped', last_error = 'account erased', secret = null
          where user_id = $1 and state = 'pending'",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(skipped.rows_affected())
}

/// A row as `/api/v1/admin/notifications` lists it: no address, no body.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Listed {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Recipient account.
    pub user_id: Uuid,
    /// The rental it is about.
    pub rental_id: Option<Uuid>,
    /// State.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When queued.
    pub created_at: DateTime<Utc>,
    /// When sent.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The listing's filters and page.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this account's.
    pub user_id: Option<Uuid>,
    /// Rows after this one, newest first.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Rows to fetch (one more than the page, to tell whether there is a next).
    pub limit: i64,
}

/// A page of rows, newest first.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "select id, kind, user_id, rental_id, state, attempts, last_error, created_at, sent_at
           from notification
          where ($1::text is null or state = $1)
            and ($2::text is null or kind = $2)
            and ($3::uuid is null or user_id = $3)
            and ($4::timestamptz is null or (created_at, id) < ($4, $5))
          order by created_at desc, id desc
          limit $6",
    )
    .bind(&filter.state)
    .bind(&filter.kind)
    .bind(filter.user_id)
    .bind(filter.before.map(|b| b.0))
    .bind(filter.before.map(|b| b.1))
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Records the sender's last error (`None` clears it), for `/api/v1/admin/projections`.
pub async fn record_sender(pool: &PgPool, error: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into scheduler_status as s (name, last_position, updated_at, last_error, failing_since)
         values ($1, 0, now(), $2, case when $2::text is null then null else now() end)
         on conflict (name) do update
            set updated_at = now(), last_error = excluded.last_error,
                failing_since = case when excluded.last_error is null then null
                                     else coalesce(s.failing_since, now()) end",
    )
    .bind(SENDER)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The sender's progress, shaped like a projection's: `position` counts the emails sent,
/// `lag_events` the ones due and not sent yet, `lag_seconds` how long the oldest of them has
/// waited; `failing` while the SMTP server refuses or cannot be reached.
pub async fn sender_status(pool: &PgPool) -> Result<Status, sqlx::Error> {
    sqlx::query_as(
        "select $1::text as name,
                (select count(*) from notification where state = 'sent') as position,
                due.count as lag_events,
                coalesce(extract(epoch from (now() - due.oldest))::float8, 0) as lag_seconds,
                case when s.last_error is not null then 'failing'
                     when due.count > 0 then 'catching-up'
                     else 'running' end as state,
                s.last_error, s.updated_at
           from (select count(*) as count, min(created_at) as oldest
                   from notification where state = 'pending') due
           left join scheduler_status s on s.name = $1",
    )
    .bind(SENDER)
    .fetch_one(pool)
    .await
}
