//! Keeping the stored name keys (`domain::name_key`) complete and computed by the tables this
//! build carries. Run after the migrations, before serving: SQL cannot compute a key, so the
//! migration that introduced them left them empty, and rows written by other means (an older
//! release, an operator's SQL) may lack theirs.
//!
//! When every key is there and the stored version matches this build's tables, this costs three
//! `exists` queries. Otherwise every username, email and category name is keyed again in one
//! transaction that holds the tables against writers (reads go on). Names that now share a key
//! are not merged and not deleted: one row keeps the key, the other keeps none and is named in a
//! warning, at every start until an operator renames one of them.

use anyhow::Context;
use domain::name_key::{self, Collision};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{self, AccountKeys};
use eventstore::lookup::{self, CategoryKeys};

/// What one run found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// Whether the keys were computed again (false when nothing was missing or outdated).
    pub recomputed: bool,
    /// The accounts' keys.
    pub accounts: AccountKeys,
    /// The category lookup's keys.
    pub categories: CategoryKeys,
    /// Read-model category rows whose key changed.
    pub read_categories: u64,
}

impl Report {
    /// How many pairs of names share a key and were left apart.
    pub fn collisions(&self) -> usize {
        self.accounts.usernames.len() + self.accounts.emails.len() + self.categories.collisions.len()
    }
}

/// Makes sure every stored name has its key (see the module's documentation), logs a warning
/// for each pair of names that share one, and reports.
pub async fn settle(pool: &PgPool) -> anyhow::Result<Report> {
    let version = name_key::version();
    let mut tx = eventstore::db::begin(pool).await?;
    // Computing many keys keeps the transaction idle meanwhile, as the server sees it.
    sqlx::query("set local idle_in_transaction_session_timeout = 0").execute(&mut *tx).await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('name-keys'))").execute(&mut *tx).await?;
    let stored: Option<String> =
        sqlx::query_scalar("select version from name_key_version").fetch_optional(&mut *tx).await?;
    let missing = accounts::name_keys_missing(&mut tx).await?
        || lookup::category_keys_missing(&mut tx).await?
        || projections::catalogue::category_keys_missing(&mut tx).await?;
    if stored.as_deref() == Some(version.as_str()) && !missing {
        tx.commit().await?;
        return Ok(Report::default());
    }
    sqlx::query("lock table users, category_lookup, read.category in share row exclusive mode")
        .execute(&mut *tx)
        .await?;
    let accounts = accounts::recompute_name_keys(&mut tx).await.context("keying the accounts' names")?;
    let categories = lookup::recompute_category_keys(&mut tx).await.context("keying the category names")?;
    let read_categories = projections::catalogue::recompute_category_keys(&mut tx)
        .await
        .context("keying the catalogue's category names")?;
    sqlx::query(
        "insert into name_key_version (version) values ($1)
         on conflict (singleton) do update set version = excluded.version, computed_at = now()",
    )
    .bind(&version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let report = Report { recomputed: true, accounts, categories, read_categories };
    log(&report, stored.as_deref(), &version);
    Ok(report)
}

fn log(report: &Report, previous: Option<&str>, version: &str) {
    let accounts = |field: &'static str, collisions: &[Collision<Uuid>], consequence: &'static str| {
        for c in collisions {
            tracing::warn!(
                field,
                kept_by = %c.kept_by,
                left_out = %c.left_out,
                "two accounts have the same {field} once case and Unicode forms are set aside: \
                 account {} keeps it, account {} {consequence} until one of the two {field}s is changed",
                c.kept_by,
                c.left_out,
            );
        }
    };
    accounts("username", &report.accounts.usernames, "cannot sign in by name");
    accounts("email", &report.accounts.emails, "gets no password reset by email");
    for c in &report.categories.collisions {
        let ((kept_by, kept_name), (left_out, left_name)) = (&c.kept_by, &c.left_out);
        tracing::warn!(
            field = "category name",
            %kept_by,
            %left_out,
            "two categories have the same name once case and Unicode forms are set aside: \
             {kept_name:?} ({kept_by}) keeps it, {left_name:?} ({left_out}) is not found by name \
             until one of them is renamed",
        );
    }
    tracing::info!(
        previous = previous.unwrap_or("none"),
        version,
        account_keys_changed = report.accounts.changed,
        category_keys_changed = report.categories.changed,
        read_model_keys_changed = report.read_categories,
        collisions = report.collisions(),
        "name keys computed"
    );
}
