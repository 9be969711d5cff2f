//! Every SQL statement on the accounts tables.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::name_key::{self, Collision, NameKey};
use eventstore::lookup::store_name_keys;
use projections::notifications::{self, NewEmail};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::token_cache::announce;
use super::{CreateError, Role, RoleRefusal, User};

const USER_COLUMNS: &str = "user_id, username, email, role, created_at";

/// The unique index on usernames' keys.
const USERNAME_CONSTRAINT: &str = "users_username_key";
/// The unique index on emails' keys.
const EMAIL_CONSTRAINT: &str = "users_email_key";

/// Inserts an account, with the keys of its username and email; with `welcome`, its welcome
/// email is queued in the same transaction.
pub(super) async fn insert_user(
    pool: &PgPool,
    user_id: Uuid,
    username: &str,
    email: Option<&str>,
    password_hash: &str,
    role: Role,
    welcome: bool,
) -> Result<User, CreateError> {
    let taken = |error: sqlx::Error| match error.as_database_error().and_then(|db| db.constraint()) {
        Some(USERNAME_CONSTRAINT) => CreateError::UsernameTaken,
        Some(EMAIL_CONSTRAINT) => CreateError::EmailTaken,
        _ => CreateError::Database(error),
    };
    let mut tx = eventstore::db::begin(pool).await?;
    let user: User = sqlx::query_as(&format!(
        "insert into users (user_id, username, username_key, email, email_key, password_hash, role)
         values ($1, $2, $3, $4, $5, $6, $7) returning {USER_COLUMNS}"
    ))
    .bind(user_id)
    .bind(username)
    .bind(NameKey::of(username).as_str())
    .bind(email)
    .bind(email.map(|email| NameKey::of(email).into_string()))
    .bind(password_hash)
    .bind(role)
    .fetch_one(&mut *tx)
    .await
    .map_err(taken)?;
    if welcome && email.is_some() {
        let email = NewEmail {
            kind: notifications::kind::WELCOME,
            user_id,
            rental_id: None,
            trigger_id: user_id,
            seq: 1,
            data: serde_json::json!({}),
            secret: None,
        };
        notifications::insert(&mut tx, email).await?;
    }
    tx.commit().await?;
    Ok(user)
}

pub(super) async fn insert_token(
    pool: &PgPool,
    token_hash: &[u8],
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into tokens (token_hash, user_id, expires_at) values ($1, $2, $3)")
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// The account a live token belongs to, with the token's expiry.
pub(super) async fn user_by_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(User, DateTime<Utc>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: User,
        expires_at: DateTime<Utc>,
    }
    let row: Option<Row> = sqlx::query_as(
        "select u.user_id, u.username, u.email, u.role, u.created_at, t.expires_at
           from tokens t join users u on u.user_id = t.user_id
          where t.token_hash = $1 and t.expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (row.user, row.expires_at)))
}

pub(super) async fn user_by_id(pool: &PgPool, user_id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!("select {USER_COLUMNS} from users where user_id = $1"))
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn credentials_by_username(
    pool: &PgPool,
    username: &NameKey,
) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select user_id, password_hash from users where username_key = $1")
        .bind(username.as_str())
        .fetch_optional(pool)
        .await
}

pub(super) async fn password_hash(pool: &PgPool, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select password_hash from users where user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn set_password_hash(pool: &PgPool, user_id: Uuid, hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update users set password_hash = $2 where user_id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Sets the new hash and revokes every token of the account but `keep_token`, atomically; returns
/// the revocation's counter.
pub(super) async fn replace_password(
    pool: &PgPool,
    user_id: Uuid,
    hash: &str,
    keep_token: &[u8],
) -> Result<i64, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    sqlx::query("update users set password_hash = $2 where user_id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from tokens where user_id = $1 and token_hash <> $2")
        .bind(user_id)
        .bind(keep_token)
        .execute(&mut *tx)
        .await?;
    let counter = announce(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(counter)
}

/// Revokes one token; returns its account and the revocation's counter, `None` when there was no
/// such token.
pub(super) async fn delete_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(Uuid, i64)>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    let owner: Option<Uuid> =
        sqlx::query_scalar("delete from tokens where token_hash = $1 returning user_id")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(user_id) = owner else { return Ok(None) };
    let counter = announce(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Some((user_id, counter)))
}

/// Changes an account's role (what its tokens stand for); returns the account and the
/// revocation's counter, `Ok(None)` when there is no such account, `Err(refusal)` when the change
/// would break an invariant (no admin left, a customer without email). Role changes are
/// serialised by one transaction lock, so two simultaneous demotions cannot leave no admin.
pub(super) async fn set_role(
    pool: &PgPool,
    user_id: Uuid,
    role: Role,
) -> Result<Option<Result<(User, i64), RoleRefusal>>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('accounts:roles'))").execute(&mut *tx).await?;
    let current: Option<User> =
        sqlx::query_as(&format!("select {USER_COLUMNS} from users where user_id = $1 for update"))
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(current) = current else { return Ok(None) };
    if role == Role::Customer && current.email.is_none() {
        return Ok(Some(Err(RoleRefusal::NoEmail)));
    }
    if current.role == Role::Admin && role != Role::Admin {
        let other_admins: i64 = sqlx::query_scalar(
            "select count(*) from users where role = 'admin' and user_id <> $1 and password_hash <> ''",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if other_admins == 0 {
            return Ok(Some(Err(RoleRefusal::LastAdmin)));
        }
    }
    let user: User =
        sqlx::query_as(&format!("update users set role = $2 where user_id = $1 returning {USER_COLUMNS}"))
            .bind(user_id)
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
    let counter = announce(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Some(Ok((user, counter))))
}

/// The limit was reached; the oldest failure in the window tells when it leaves.
pub(super) struct Failures {
    pub oldest: Option<DateTime<Utc>>,
}

/// Reserves a login attempt before the password is checked: under a per-key transaction lock,
/// counts the failures in the window and, below `max`, records this attempt as one (a correct
/// password clears it afterwards). So of any number of simultaneous attempts at most `max` get
/// past this point, whichever process they reach. `Err(failures)` when the limit is reached.
/// Failures of this key that left the window long ago are forgotten on the way.
pub(super) async fn reserve_attempt(
    pool: &PgPool,
    username: &NameKey,
    client_addr: &str,
    window: Duration,
    max: i64,
) -> Result<Result<(), Failures>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('login:' || $1 || chr(31) || $2, 0))")
        .bind(username.as_str())
        .bind(client_addr)
        .execute(&mut *tx)
        .await?;
    let (count, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), min(failed_at) from login_failures
          where username = $1 and client_addr = $2
            and failed_at > now() - make_interval(secs => $3)",
    )
    .bind(username.as_str())
    .bind(client_addr)
    .bind(window.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    if count >= max {
        tx.rollback().await?;
        return Ok(Err(Failures { oldest }));
    }
    sqlx::query(
        "with expired as (
             delete from login_failures
              where username = $1 and client_addr = $2 and failed_at < now() - interval '1 day')
         insert into login_failures (username, client_addr) values ($1, $2)",
    )
    .bind(username.as_str())
    .bind(client_addr)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// Deletes up to `batch` tokens that have expired; returns how many.
pub async fn purge_expired_tokens(conn: &mut PgConnection, batch: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "delete from tokens
          where token_hash = any(array(select token_hash from tokens where expires_at <= now() limit $1))",
    )
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` login failures older than the throttle's `window` (they no longer
/// count); returns how many.
pub async fn purge_old_login_failures(
    conn: &mut PgConnection,
    window: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "delete from login_failures
          where ctid = any(array(select ctid from login_failures
                                  where failed_at <= now() - make_interval(secs => $1) limit $2))",
    )
    .bind(window.as_secs_f64())
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

pub(super) async fn clear_failures(
    pool: &PgPool,
    username: &NameKey,
    client_addr: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from login_failures where username = $1 and client_addr = $2")
        .bind(username.as_str())
        .bind(client_addr)
        .execute(pool)
        .await?;
    Ok(())
}

/// What erasing a person's account did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The account id, which stays: the history refers to it.
    pub user_id: Uuid,
    /// The username now held by the account.
    pub tombstone: String,
    /// Tokens revoked.
    pub tokens_revoked: u64,
    /// Login failures recorded for the old username, deleted.
    pub login_failures_deleted: u64,
    /// Idempotency records of the account (requests and answers it made), deleted.
    pub idempotency_records_deleted: u64,
    /// Emails still queued for the account, now `skipped`.
    pub notifications_skipped: u64,
    /// The revocation's counter.
    pub(super) revocation: i64,
}

/// The start of an erased account's username.
pub(super) const ERASED_PREFIX: &str = "erased:";

/// Replaces the username with a tombstone that names only the account id (`:` is not allowed in
/// usernames, so no one can register it), removes the email and the password hash (an empty hash
/// never verifies), revokes every token, deletes the login failures of the old name, the
/// password-reset tokens and the account's idempotency records, and skips the emails still queued
/// for the account, in one transaction. `None` when no account has that username.
pub(super) async fn erase_user(pool: &PgPool, username: &NameKey) -> Result<Option<Erased>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    let user_id: Option<Uuid> =
        sqlx::query_scalar("select user_id from users where username_key = $1 for update")
            .bind(username.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(user_id) = user_id else { return Ok(None) };
    let tombstone = format!("{ERASED_PREFIX}{user_id}");
    sqlx::query(
        "update users set username = $2, username_key = $3, email = null, email_key = null, password_hash = ''
          where user_id = $1",
    )
    .bind(user_id)
    .bind(&tombstone)
    .bind(NameKey::of(&tombstone).as_str())
    .execute(&mut *tx)
    .await?;
    let tokens_revoked = sqlx::query("delete from tokens where user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let login_failures_deleted = sqlx::query("delete from login_failures where username = $1")
        .bind(username.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let idempotency_records_deleted = sqlx::query("delete from idempotency where scope = $1")
        .bind(user_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("delete from password_resets where user_id = $1").bind(user_id).execute(&mut *tx).await?;
    let notifications_skipped = notifications::skip_pending_of(&mut tx, user_id).await?;
    let revocation = announce(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Some(Erased {
        user_id,
        tombstone,
        tokens_revoked,
        login_failures_deleted,
        idempotency_records_deleted,
        notifications_skipped,
        revocation,
    }))
}

/// Whether a reset may be sent to the account with this email (fewer than `max` reset emails in
/// the last hour), and if so, voids its older reset tokens and stores the new one (as its hash)
/// with its email queued, in one transaction. `None` when no account has that email or the limit
/// is reached.
pub(super) async fn request_reset(
    pool: &PgPool,
    email: &NameKey,
    token: &str,
    token_hash: &[u8],
    ttl: Duration,
    max_per_hour: i64,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    let user_id: Option<Uuid> =
        sqlx::query_scalar("select user_id from users where email_key = $1 for update")
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(user_id) = user_id else { return Ok(None) };
    let kind = notifications::kind::PASSWORD_RESET;
    let hour = Duration::from_secs(60 * 60);
    let recent = notifications::queued_within(&mut tx, user_id, kind, hour).await?;
    if recent >= max_per_hour {
        return Ok(None);
    }
    sqlx::query("update password_resets set used_at = now() where user_id = $1 and used_at is null")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let reset_id = Uuid::now_v7();
    sqlx::query(
        "insert into password_resets (id, token_hash, user_id, expires_at)
         values ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(reset_id)
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let email = NewEmail {
        kind,
        user_id,
        rental_id: None,
        trigger_id: reset_id,
        seq: 1,
        data: serde_json::json!({}),
        secret: Some(token),
    };
    notifications::insert(&mut tx, email).await?;
    tx.commit().await?;
    Ok(Some(user_id))
}

/// Uses a reset token: when it is live (known, unused, not expired), marks it used, sets the new
/// hash, revokes every token of the account and clears its login failures, in one transaction;
/// returns the account and the revocation's counter.
pub(super) async fn confirm_reset(
    pool: &PgPool,
    token_hash: &[u8],
    password_hash: &str,
) -> Result<Option<(Uuid, i64)>, sqlx::Error> {
    let mut tx = eventstore::db::begin(pool).await?;
    let user_id: Option<Uuid> = sqlx::query_scalar(
        "update password_resets set used_at = now()
          where token_hash = $1 and used_at is null and expires_at > now()
          returning user_id",
    )
    .bind(token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user_id) = user_id else { return Ok(None) };
    let username: String =
        sqlx::query_scalar("update users set password_hash = $2 where user_id = $1 returning username")
            .bind(user_id)
            .bind(password_hash)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("delete from tokens where user_id = $1").bind(user_id).execute(&mut *tx).await?;
    sqlx::query("delete from login_failures where username = $1")
        .bind(NameKey::of(&username).as_str())
        .execute(&mut *tx)
        .await?;
    let counter = announce(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Some((user_id, counter)))
}

/// An account's email preferences: (receipts, reminders), both on without a row.
pub(super) async fn preferences(pool: &PgPool, user_id: Uuid) -> Result<(bool, bool), sqlx::Error> {
    let row: Option<(bool, bool)> =
        sqlx::query_as("select receipts, reminders from notification_preferences where user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.unwrap_or((true, true)))
}

/// Changes the preferences given (`None` keeps one as it is); returns them all.
pub(super) async fn set_preferences(
    pool: &PgPool,
    user_id: Uuid,
    receipts: Option<bool>,
    reminders: Option<bool>,
) -> Result<(bool, bool), sqlx::Error> {
    sqlx::query_as(
        "insert into notification_preferences as p (user_id, receipts, reminders)
         values ($1, coalesce($2, true), coalesce($3, true))
         on conflict (user_id) do update
            set receipts = coalesce($2, p.receipts), reminders = coalesce($3, p.reminders)
         returning receipts, reminders",
    )
    .bind(user_id)
    .bind(receipts)
    .bind(reminders)
    .fetch_one(pool)
    .await
}

/// Whether an account lacks a key it should have (a username, or an email, without its key).
pub async fn name_keys_missing(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists(select 1 from users
                        where username_key is null or (email is not null and email_key is null))",
    )
    .fetch_one(conn)
    .await
}

/// What computing the accounts' keys again found.
#[derive(Debug, Default)]
pub struct AccountKeys {
    /// Keys written (a new key, or a key removed).
    pub changed: u64,
    /// Accounts whose usernames share a key: the second cannot sign in by name.
    pub usernames: Vec<Collision<Uuid>>,
    /// Accounts whose emails share a key: the second gets no password reset.
    pub emails: Vec<Collision<Uuid>>,
}

/// Computes every account's username and email keys again and stores those that differ; `conn`'s
/// transaction holds `users` against writers. Where two accounts' names share a key, the one that
/// could be found by its name before keys existed keeps it (the lookup was PostgreSQL's `lower()`
/// of the stored name against the application's `to_lowercase()` of the name typed, so a name
/// like `ΝΙΚΟΣ` was never found), else the older one; the other keeps no key.
pub async fn recompute_name_keys(conn: &mut PgConnection) -> Result<AccountKeys, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        user_id: Uuid,
        username: String,
        username_lower: String,
        username_key: Option<String>,
        email: Option<String>,
        email_lower: Option<String>,
        email_key: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select user_id, username, lower(username) as username_lower, username_key,
                email, lower(email) as email_lower, email_key
           from users order by created_at, user_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let found_before = |lowered: &str, name: &str| lowered == name.to_lowercase();

    let mut by_username: Vec<&Row> = rows.iter().collect();
    by_username.sort_by_key(|row| !found_before(&row.username_lower, &row.username));
    let usernames = name_key::settle(by_username.iter().map(|row| (row.user_id, row.username.as_str())));
    let mut by_email: Vec<(&Row, &str, &str)> = rows
        .iter()
        .filter_map(|row| Some((row, row.email.as_deref()?, row.email_lower.as_deref()?)))
        .collect();
    by_email.sort_by_key(|(_, email, lowered)| !found_before(lowered, email));
    let emails = name_key::settle(by_email.iter().map(|(row, email, _)| (row.user_id, *email)));

    let stored: std::collections::HashMap<Uuid, &Row> = rows.iter().map(|row| (row.user_id, row)).collect();
    let username_changes = usernames.changes(|id| stored[id].username_key.as_deref());
    let mut email_changes = emails.changes(|id| stored[id].email_key.as_deref());
    // An account without an email holds no email key.
    email_changes.extend(
        rows.iter()
            .filter(|row| row.email.is_none() && row.email_key.is_some())
            .map(|row| (row.user_id, None)),
    );
    let changed = (username_changes.len() + email_changes.len()) as u64;
    store_name_keys(conn, "users", "user_id", "username_key", &username_changes).await?;
    store_name_keys(conn, "users", "user_id", "email_key", &email_changes).await?;
    Ok(AccountKeys { changed, usernames: usernames.collisions, emails: emails.collisions })
}
