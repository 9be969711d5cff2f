//! Accounts: users, credentials, tokens and the login throttle. Plain relational tables, not
//! events: uniqueness is a constraint, hashes can be upgraded, personal data can be erased.
//! All SQL on these tables lives in [`store`].

mod password;
mod store;
mod token;
pub mod token_cache;
mod validation;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::name_key::NameKey;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

pub use password::Passwords;
pub use store::{
    name_keys_missing, purge_expired_tokens, purge_old_login_failures, recompute_name_keys, AccountKeys,
    Erased,
};
pub use token_cache::{keep_membership, TokenCache};
pub use validation::{validate_email, validate_password, validate_username};

use crate::config::AuthConfig;

/// How long a password-reset token works.
pub const RESET_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The most password-reset emails an account gets in an hour.
pub const RESETS_PER_HOUR: i64 = 3;

/// An account's role; one per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    /// Rents and pays.
    Customer,
    /// Manages the catalogue, acts for customers, everything else.
    Admin,
    /// Reads the event history.
    Auditor,
    /// Reads analytics.
    Analyst,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "customer" => Ok(Self::Customer),
            "admin" => Ok(Self::Admin),
            "auditor" => Ok(Self::Auditor),
            "analyst" => Ok(Self::Analyst),
            _ => Err("must be one of customer, admin, auditor, analyst".to_string()),
        }
    }
}

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    /// Id.
    #[sqlx(rename = "user_id")]
    pub id: Uuid,
    /// Username (unique by its [`NameKey`]: whatever its case and Unicode normal form).
    pub username: String,
    /// Email (unique by its [`NameKey`], when present).
    pub email: Option<String>,
    /// Role.
    pub role: Role,
    /// When the account was made.
    pub created_at: DateTime<Utc>,
}

impl User {
    /// Whether the account was erased (its username is a tombstone, its password gone).
    pub fn is_erased(&self) -> bool {
        self.username.starts_with(store::ERASED_PREFIX)
    }
}

/// Why a role change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleRefusal {
    /// It would leave no admin who can log in.
    LastAdmin,
    /// A customer needs an email, and the account has none.
    NoEmail,
}

/// A new token, shown to its owner once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The opaque token.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Username taken (by a name with the same key).
    #[error("that username is taken")]
    UsernameTaken,
    /// Email taken (by an email with the same key).
    #[error("that email is taken")]
    EmailTaken,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a password change came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordChangeOutcome {
    /// Changed; every other token of the account is revoked.
    Changed,
    /// The current password was wrong (counted as a failed login).
    WrongCurrentPassword,
    /// Too many failed logins for the account from this address.
    Throttled {
        /// Seconds until the oldest failure leaves the window.
        retry_after_secs: u64,
    },
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// A new token.
    Success(IssuedToken),
    /// Unknown user or wrong password: indistinguishable to the caller.
    InvalidCredentials,
    /// Too many failures for this username from this address.
    Throttled {
        /// Seconds until the oldest counted failure leaves the window.
        retry_after_secs: u64,
    },
}

/// The accounts service; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    pool: PgPool,
    passwords: Passwords,
    config: Arc<AuthConfig>,
    tokens: TokenCache,
}

impl Accounts {
    /// The service over a pool.
    pub fn new(pool: PgPool, config: &AuthConfig) -> Self {
        Self {
            pool,
            passwords: Passwords::new(config.argon2, config.hash_concurrency),
            config: Arc::new(config.clone()),
            tokens: TokenCache::new(config.token_cache_size),
        }
    }

    /// The token cache, which serves once [`keep_membership`] runs with it.
    pub fn token_cache(&self) -> &TokenCache {
        &self.tokens
    }

    /// After the commit of a revocation of `user_id`'s tokens: drops them here at once, then waits
    /// until every other caching process has dropped them too.
    async fn revoked(&self, user_id: Uuid, counter: i64) -> Result<(), sqlx::Error> {
        self.tokens.revoke(user_id);
        token_cache::wait_until_acknowledged(&self.pool, counter).await
    }

    /// Creates an account; `password` is hashed with argon2id off the async threads.
    pub async fn create(
        &self,
        username: &str,
        email: Option<&str>,
        password: &SecretString,
        role: Role,
    ) -> Result<User, CreateError> {
        let hash = self.passwords.hash(password.clone()).await.map_err(CreateError::Database)?;
        store::insert_user(&self.pool, Uuid::now_v7(), username, email, &hash, role, false).await
    }

    /// Registers a customer: creates the account and queues its welcome email in the same
    /// transaction.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &SecretString,
    ) -> Result<User, CreateError> {
        let hash = self.passwords.hash(password.clone()).await.map_err(CreateError::Database)?;
        store::insert_user(&self.pool, Uuid::now_v7(), username, Some(email), &hash, Role::Customer, true)
            .await
    }

    /// Asks for a password reset of the account with this email: when there is one and it got
    /// fewer than 3 reset emails in the last hour, a new token (which voids the older ones) is
    /// stored as its hash and its email queued. The caller cannot tell which happened.
    pub async fn request_password_reset(&self, email: &str) -> Result<(), sqlx::Error> {
        if email.contains('\0') {
            // No account can have this email (PostgreSQL cannot store NUL): nothing to send, and
            // the caller's answer is the same as for any email.
            return Ok(());
        }
        let token = token::generate();
        let digest = token::digest(&token);
        let key = NameKey::of(email);
        store::request_reset(&self.pool, &key, &token, &digest, RESET_TTL, RESETS_PER_HOUR).await?;
        Ok(())
    }

    /// Sets a new password with a reset token; every token of the account is revoked (in every
    /// process) and its login failures are cleared. `false` for an unknown, used or expired token.
    pub async fn confirm_password_reset(&self, token: &str, new: SecretString) -> Result<bool, sqlx::Error> {
        let digest = token::digest(token);
        let hash = self.passwords.hash(new).await?;
        match store::confirm_reset(&self.pool, &digest, &hash).await? {
            Some((user_id, counter)) => {
                self.revoked(user_id, counter).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The account's email preferences: (receipts, reminders).
    pub async fn preferences(&self, user_id: Uuid) -> Result<(bool, bool), sqlx::Error> {
        store::preferences(&self.pool, user_id).await
    }

    /// Changes the preferences given; returns them all.
    pub async fn set_preferences(
        &self,
        user_id: Uuid,
        receipts: Option<bool>,
        reminders: Option<bool>,
    ) -> Result<(bool, bool), sqlx::Error> {
        store::set_preferences(&self.pool, user_id, receipts, reminders).await
    }

    /// Issues a token for an account.
    pub async fn issue_token(&self, user_id: Uuid) -> Result<IssuedToken, sqlx::Error> {
        let token = token::generate();
        let ttl = chrono::Duration::from_std(self.config.token_ttl).unwrap_or(chrono::Duration::days(30));
        let expires_at = Utc::now() + ttl;
        store::insert_token(&self.pool, &token::digest(&token), user_id, expires_at).await?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The account a token belongs to, if the token is valid, with the token's digest: from the
    /// token cache when it holds the token, else from PostgreSQL (filling the cache).
    pub async fn authenticate(&self, token: &str) -> Result<Option<(Arc<User>, Vec<u8>)>, sqlx::Error> {
        if token.len() > 256 {
            return Ok(None);
        }
        let digest = token::digest(token);
        if let Some(user) = self.tokens.get(&digest) {
            return Ok(Some((user, digest)));
        }
        let ticket = self.tokens.ticket();
        let Some((user, expires_at)) = store::user_by_token(&self.pool, &digest).await? else {
            return Ok(None);
        };
        let user = Arc::new(user);
        if let Some(ticket) = ticket {
            self.tokens.fill(ticket, digest.clone(), Arc::clone(&user), expires_at);
        }
        Ok(Some((user, digest)))
    }

    /// Checks credentials. Unknown usernames are verified against a dummy hash so both failures
    /// take the same time; failures are counted per username and client address in PostgreSQL,
    /// so the throttle holds across processes, and each attempt is reserved before its password
    /// is checked, so simultaneous attempts cannot slip past the limit together.
    pub async fn login(
        &self,
        username: &str,
        password: SecretString,
        client_addr: &str,
    ) -> Result<LoginOutcome, sqlx::Error> {
        if validate_username(username).is_err() {
            // No account can have this name (and PostgreSQL could not even store some of its
            // characters, such as NUL): answered at once as for any unknown user, with no hash
            // and nothing counted. The format is public, so the quick answer tells nothing.
            drop(password);
            return Ok(LoginOutcome::InvalidCredentials);
        }
        let key = NameKey::of(username);
        if let Some(retry_after_secs) = self.reserve_attempt(&key, client_addr).await? {
            return Ok(LoginOutcome::Throttled { retry_after_secs });
        }
        // The attempt is recorded as a failure until the password proves right.
        let found = store::credentials_by_username(&self.pool, &key).await?;
        let stored_hash = found.as_ref().map(|(_, hash)| hash.clone());
        let verdict = self.passwords.verify(password.clone(), stored_hash).await?;
        match (found, verdict.valid) {
            (Some((user_id, _)), true) => {
                store::clear_failures(&self.pool, &key, client_addr).await?;
                if verdict.outdated {
                    let hash = self.passwords.hash(password).await?;
                    store::set_password_hash(&self.pool, user_id, &hash).await?;
                }
                Ok(LoginOutcome::Success(self.issue_token(user_id).await?))
            }
            _ => Ok(LoginOutcome::InvalidCredentials),
        }
    }

    /// Revokes one token, in every process, before answering.
    pub async fn logout(&self, token_hash: &[u8]) -> Result<(), sqlx::Error> {
        match store::delete_token(&self.pool, token_hash).await? {
            Some((user_id, counter)) => self.revoked(user_id, counter).await,
            None => Ok(()),
        }
    }

    /// Reserves a password check for this username and client address in the login throttle
    /// (the attempt counts as a failure until the password proves right); `Some(retry after, in
    /// seconds)` when the limit is reached.
    async fn reserve_attempt(&self, key: &NameKey, client_addr: &str) -> Result<Option<u64>, sqlx::Error> {
        let window = self.config.login_window;
        let max = self.config.login_max_failures;
        Ok(store::reserve_attempt(&self.pool, key, client_addr, window, max).await?.err().map(|failures| {
            failures
                .oldest
                .map(|oldest| {
                    let until = oldest + chrono::Duration::from_std(window).unwrap_or_default();
                    (until - Utc::now()).num_seconds().max(1) as u64
                })
                .unwrap_or(window.as_secs())
        }))
    }

    /// Changes a password after checking the current one; every other token of the account is
    /// revoked. The check is a login attempt of the account from `client_addr`: a wrong current
    /// password counts as a failed login, and past the limit the check is not even made.
    pub async fn change_password(
        &self,
        user: &User,
        keep_token: &[u8],
        current: SecretString,
        new: SecretString,
        client_addr: &str,
    ) -> Result<PasswordChangeOutcome, sqlx::Error> {
        let key = NameKey::of(&user.username);
        if let Some(retry_after_secs) = self.reserve_attempt(&key, client_addr).await? {
            return Ok(PasswordChangeOutcome::Throttled { retry_after_secs });
        }
        let stored = store::password_hash(&self.pool, user.id).await?;
        if !self.passwords.verify(current, stored).await?.valid {
            return Ok(PasswordChangeOutcome::WrongCurrentPassword);
        }
        store::clear_failures(&self.pool, &key, client_addr).await?;
        let hash = self.passwords.hash(new).await?;
        let counter = store::replace_password(&self.pool, user.id, &hash, keep_token).await?;
        self.revoked(user.id, counter).await?;
        Ok(PasswordChangeOutcome::Changed)
    }

    /// Changes an account's role; `None` if there is no such account.
    pub async fn set_role(
        &self,
        user_id: Uuid,
        role: Role,
    ) -> Result<Option<Result<User, RoleRefusal>>, sqlx::Error> {
        let Some(changed) = store::set_role(&self.pool, user_id, role).await? else {
            return Ok(None);
        };
        let Ok((user, counter)) = changed else { return Ok(Some(changed.map(|(user, _)| user))) };
        self.revoked(user_id, counter).await?;
        Ok(Some(Ok(user)))
    }

    /// The id of the account with this username, if there is one.
    pub async fn id_of(&self, username: &str) -> Result<Option<Uuid>, sqlx::Error> {
        Ok(store::credentials_by_username(&self.pool, &NameKey::of(username)).await?.map(|(id, _)| id))
    }

    /// Creates a customer account nobody can log in to until its password is reset (a random
    /// 256-bit password, never shown): the seed's demo customer.
    pub async fn create_locked_customer(&self, username: &str, email: &str) -> Result<User, CreateError> {
        let password = SecretString::from(token::generate());
        self.create(username, Some(email), &password, Role::Customer).await
    }

    /// An account by id.
    pub async fn find(&self, user_id: Uuid) -> Result<Option<User>, sqlx::Error> {
        store::user_by_id(&self.pool, user_id).await
    }

    /// Erases a person's personal data from the accounts tables (the right to erasure); the
    /// account id stays, so the event history, which holds ids only, still refers to it.
    /// `None` when no account has that username.
    pub async fn erase(&self, username: &str) -> Result<Option<Erased>, sqlx::Error> {
        let erased = store::erase_user(&self.pool, &NameKey::of(username)).await?;
        if let Some(erased) = &erased {
            self.revoked(erased.user_id, erased.revocation).await?;
        }
        Ok(erased)
    }

    /// Creates the bootstrap admin unless an account with that username exists.
    pub async fn ensure_admin(&self, username: &str, password: &SecretString) -> anyhow::Result<()> {
        validate_username(username).map_err(|e| anyhow::anyhow!("MOVIESTORE_ADMIN username {e}"))?;
        validate_password(password.expose_secret())
            .map_err(|e| anyhow::anyhow!("MOVIESTORE_ADMIN password {e}"))?;
        match self.create(username, None, password, Role::Admin).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, username, "created the bootstrap admin");
                Ok(())
            }
            Err(CreateError::UsernameTaken) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Warms the dummy hash so the first unknown-user login is not faster than the rest.
    pub async fn warm_up(&self) {
        let _ = self.passwords.verify(SecretString::from("warm-up"), None).await;
    }
}
