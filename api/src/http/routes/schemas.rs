//! The contract's JSON shapes as types (API.md's `User`, `Movie`, `MovieSummary`, `Rental`,
//! `Money`, pages, ...): handlers answer with them and the OpenAPI spec describes them, so the
//! two cannot disagree. The request types are what handlers parse (`crate::http::validate`: a
//! 422 names every invalid, missing or unknown field) and what the spec describes; the parameter
//! types describe query strings that [`super::reads::Params`] parses.

use chrono::{DateTime, NaiveDate, Utc};
use domain::values::{CategoryIds, Director, Rating, Storyline, Title};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::validate::{present, Cents, Email, NewPassword, ReleaseDate, Username, Valid};

/// An amount of money: integer minor units plus an ISO 4217 currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Money {
    /// Minor units (cents).
    pub amount_cents: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    pub currency: String,
}

/// The caller's own account with what they owe.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The account.
    #[serde(flatten)]
    pub user: crate::accounts::User,
    /// The sum of charges assessed and not yet paid.
    pub balance_due: Money,
}

/// A new account and its first token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The account.
    pub user: crate::accounts::User,
    /// The opaque token, shown once.
    pub token: String,
    /// When the token stops working (30 days).
    pub expires_at: DateTime<Utc>,
}

/// A category in the listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Category {
    /// Id.
    pub id: Uuid,
    /// Name, unique whatever its case and Unicode form.
    pub name: String,
    /// Movies in it that are not retired.
    pub movie_count: i64,
}

/// A category after a command, with the command's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryChanged {
    /// The category.
    #[serde(flatten)]
    pub category: Category,
    /// The global position of the command's last event.
    pub position: i64,
}

/// Every category, ordered by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct Categories {
    /// The categories.
    pub items: Vec<Category>,
}

/// A movie in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct MovieSummary {
    /// Id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Release date.
    pub release_date: NaiveDate,
    /// 0..=10, one decimal.
    #[schema(example = 8.1)]
    pub rating: f64,
    /// Names of its categories.
    pub categories: Vec<String>,
    /// Whether it can be rented now.
    pub available: bool,
}

/// A movie's details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Movie {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: MovieSummary,
    /// Storyline (may be empty).
    pub storyline: String,
    /// Director, when known.
    pub director: Option<String>,
    /// Retired movies are kept in history, never listed and not rentable.
    pub retired: bool,
    /// How often it was rented.
    pub times_rented: i64,
    /// Its stream version.
    pub version: i64,
}

/// A movie after a command, with the command's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct MovieChanged {
    /// The movie.
    #[serde(flatten)]
    pub movie: Movie,
    /// The global position of the command's last event.
    pub position: i64,
}

/// A page of movies, ordered by title, then id.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoviePage {
    /// This page.
    pub items: Vec<MovieSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Where a rental is: `active → returned → charged → paid`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RentalStatus {
    /// The copy is out.
    Active,
    /// The copy is back; the charge is not assessed yet.
    Returned,
    /// The charge is assessed and unpaid.
    Charged,
    /// The charge is paid.
    Paid,
}

/// What a rental costs, assessed after the return.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Charge {
    /// Started 24-hour periods between rent and return, at least 1.
    pub days: i64,
    /// Minor units (cents).
    pub amount_cents: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    pub currency: String,
}

/// A rental.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rental {
    /// Id.
    pub id: Uuid,
    /// The movie.
    pub movie_id: Uuid,
    /// The movie's title.
    pub movie_title: String,
    /// The customer.
    pub customer_id: Uuid,
    /// When it started.
    pub rented_at: DateTime<Utc>,
    /// When it is due back: `MOVIESTORE_LOAN_DAYS` after `rented_at`, fixed when the rental
    /// opened and recorded in its events.
    pub due_at: DateTime<Utc>,
    /// The due time it passed while the copy was out (`RentalOverdue`); null while it has not.
    pub overdue_at: Option<DateTime<Utc>>,
    /// When the copy came back.
    pub returned_at: Option<DateTime<Utc>>,
    /// Where it is in its life.
    #[schema(value_type = RentalStatus)]
    pub status: String,
    /// The charge, once assessed.
    pub charge: Option<Charge>,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
}

/// A rental after a command, with the command's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct RentalChanged {
    /// The rental.
    #[serde(flatten)]
    pub rental: Rental,
    /// The global position of the command's last event.
    pub position: i64,
}

/// A page of rentals, newest `rented_at` first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RentalPage {
    /// This page.
    pub items: Vec<Rental>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A rent's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rented {
    /// The new rental.
    pub rental_id: Uuid,
    /// The movie.
    pub movie_id: Uuid,
    /// The customer.
    pub customer_id: Uuid,
    /// When it started.
    pub rented_at: DateTime<Utc>,
    /// The global position of the rent's event.
    pub position: i64,
}

/// A projection's progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionProgress {
    /// Projection name.
    #[schema(example = "catalogue")]
    pub name: String,
    /// Position of the last event applied.
    pub position: i64,
    /// Events committed and not yet applied.
    pub lag_events: i64,
    /// Age of the oldest event not yet applied, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// `running`, `catching-up` or `failing`.
    pub state: String,
    /// The last error, while failing.
    pub last_error: Option<String>,
}

/// Every projection's progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct Projections {
    /// One per projection, by name.
    pub items: Vec<ProjectionProgress>,
}

/// A periodic job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// The job's name.
    #[schema(example = "purge-expired-tokens")]
    pub name: String,
    /// How often it runs.
    pub every_seconds: i64,
    /// When it last ran (null before its first run).
    pub last_run_at: Option<DateTime<Utc>>,
    /// What its last run did: `ok: N rows`, `skipped: ...`, or `error: ...` (then it is retried
    /// shortly).
    #[schema(example = "ok: 12 rows")]
    pub last_outcome: Option<String>,
    /// When it runs next.
    pub next_run_at: DateTime<Utc>,
}

/// The periodic jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Jobs {
    /// One per job, by name.
    pub items: Vec<Job>,
}

/// A rebuild that has started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStarted {
    /// Projection name.
    pub name: String,
    /// Always `rebuilding`.
    #[schema(example = "rebuilding")]
    pub state: String,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// A projector as readiness reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectorReadiness {
    /// Projection name.
    pub name: String,
    /// `running`, `catching-up` or `failing`.
    pub state: String,
    /// Events committed and not yet applied.
    pub lag_events: i64,
}

/// Readiness: each dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `up` or `down`.
    pub postgres: String,
    /// `up` or `down` (the API serves from PostgreSQL while Redis is down).
    pub redis: String,
    /// Every projector (empty while PostgreSQL is down).
    pub projections: Vec<ProjectorReadiness>,
}

/// `POST /api/v1/auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3..=150 of letters, digits and `.@+-_`; unique whatever its case and Unicode form.
    #[schema(value_type = String, min_length = 3, max_length = 150, pattern = r"^[A-Za-z0-9.@+\-_]+$")]
    pub username: Valid<Username>,
    /// Unique whatever its case and Unicode form.
    #[schema(value_type = String, format = "email")]
    pub email: Valid<Email>,
    /// 8..=128 characters.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub password: Valid<NewPassword>,
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    #[schema(value_type = String)]
    pub username: Valid<String>,
    /// Password.
    #[schema(value_type = String)]
    pub password: Valid<SecretString>,
}

/// `POST /api/v1/me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password now.
    #[schema(value_type = String)]
    pub current_password: Valid<SecretString>,
    /// 8..=128 characters, different from the current one.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub new_password: Valid<NewPassword>,
}

/// An account's role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// The new role.
    #[schema(value_type = crate::accounts::Role)]
    pub role: Valid<crate::accounts::Role>,
}

/// A category's name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryName {
    /// 1..=100 characters, unique whatever its case and Unicode form.
    #[schema(value_type = String, min_length = 1, max_length = 100)]
    pub name: Valid<domain::values::CategoryName>,
}

/// A new movie: `storyline` and `director` may be left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMovie {
    /// 1..=200 characters.
    #[schema(value_type = String, min_length = 1, max_length = 200)]
    pub title: Valid<Title>,
    /// 0..=2000 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub storyline: Option<Valid<Storyline>>,
    /// `YYYY-MM-DD`, 1870-01-01..=2100-12-31.
    #[schema(value_type = NaiveDate)]
    pub release_date: Valid<ReleaseDate>,
    /// 0..=10, one decimal.
    #[schema(value_type = f64, minimum = 0, maximum = 10, multiple_of = 0.1)]
    pub rating: Valid<Rating>,
    /// ..=200 characters; null or blank for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub director: Option<Valid<Option<Director>>>,
    /// 1..=5 existing categories.
    #[schema(value_type = Vec<Uuid>, min_items = 1, max_items = 5)]
    pub category_ids: Valid<CategoryIds>,
}

/// A change to a movie: at least one field; the ones left out stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MovieChange {
    /// 1..=200 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    pub title: Option<Valid<Title>>,
    /// 0..=2000 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub storyline: Option<Valid<Storyline>>,
    /// `YYYY-MM-DD`, 1870-01-01..=2100-12-31.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<NaiveDate>)]
    pub release_date: Option<Valid<ReleaseDate>>,
    /// 0..=10, one decimal.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 10, multiple_of = 0.1)]
    pub rating: Option<Valid<Rating>>,
    /// ..=200 characters; null or blank for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub director: Option<Valid<Option<Director>>>,
    /// 1..=5 existing categories.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<Uuid>>, min_items = 1, max_items = 5)]
    pub category_ids: Option<Valid<CategoryIds>>,
}

/// A rent's optional body: only an admin sends one, renting for a customer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RentRequest {
    /// The customer (required from an admin; a customer may not send it: 403).
    #[schema(value_type = Uuid)]
    pub customer_id: Valid<Uuid>,
    /// A past start (admin only), not before the movie's previous return.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub rented_at: Option<Valid<DateTime<Utc>>>,
}

/// A return's optional body: only an admin sends one, back-dating the return.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// A past return time, not before `rented_at` (admin only; a customer gets 403).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub returned_at: Option<Valid<DateTime<Utc>>>,
}

/// The body of a command that takes no fields: at most `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// A payment: exactly the charge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Must equal the charge's `amount_cents` (422 otherwise).
    #[schema(value_type = i64, minimum = 0)]
    pub amount_cents: Valid<Cents>,
}

/// `?min_position=`, which every read accepts.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadYourWrites {
    /// Answer only once every read model this endpoint reads has applied the event at this
    /// position (a command's `position`); at most 2 s, then 503 with `Retry-After`. Skips the cache.
    /// A position no command was ever given (beyond the end of the log) is 422.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Whether the listing shows movies that are out.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Only movies that can be rented now (the default).
    True,
    /// Only movies that are rented out.
    False,
    /// Both.
    Any,
}

/// The movie listing's filters and paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MovieQuery {
    /// A category's id or name (compared whatever its case and Unicode form); an unknown name
    /// lists nothing.
    pub category: Option<String>,
    /// Words separated by spaces (at most 10, each ..=100 characters); every word must occur,
    /// case-insensitively, in the title, storyline or director.
    pub q: Option<String>,
    /// `true` (default), `false` or `any`.
    #[param(inline)]
    pub available: Option<Availability>,
    /// Page size, 1..=100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque; one that does not decode is 422).
    pub cursor: Option<String>,
}

/// The rental listing's filters and paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RentalQuery {
    /// Only rentals in this state.
    pub status: Option<RentalStatus>,
    /// Only this customer's (admin and auditor; a customer may name only themselves).
    pub customer_id: Option<Uuid>,
    /// `true`: only active rentals past their due time; `false`: every other rental.
    pub overdue: Option<bool>,
    /// Page size, 1..=100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque; one that does not decode is 422).
    pub cursor: Option<String>,
}

/// `POST /api/v1/auth/password-reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    /// The account's email (any string is answered alike).
    #[schema(value_type = String)]
    pub email: Valid<String>,
}

/// `POST /api/v1/auth/password-reset` answers `{}`, whether or not an account has the email.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {}

/// `POST /api/v1/auth/password-reset/confirm`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    /// The token from the email.
    #[schema(value_type = String)]
    pub token: Valid<String>,
    /// 8..=128 characters.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub new_password: Valid<NewPassword>,
}

/// What the caller wants to hear by email (welcome and password-reset emails always go).
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPreferences {
    /// Rental, return and payment receipts.
    pub receipts: bool,
    /// Overdue reminders.
    pub reminders: bool,
}

/// `PATCH /api/v1/me/notifications`: either or both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationPreferencesChange {
    /// Rental, return and payment receipts.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    pub receipts: Option<Valid<bool>>,
    /// Overdue reminders.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    pub reminders: Option<Valid<bool>>,
}

/// The kind of an email.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A new account.
    Welcome,
    /// A rental opened.
    RentalReceipt,
    /// A rental's charge assessed after its return.
    ReturnReceipt,
    /// A rental paid.
    PaymentReceipt,
    /// A rental overdue (and its repeats, every 3 days, at most 3).
    OverdueReminder,
    /// A password reset requested.
    PasswordReset,
}

/// Where an email is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    /// Queued or being retried.
    Pending,
    /// Accepted by the SMTP server (or written as a file).
    Sent,
    /// Given up after 24 h of failures.
    Failed,
    /// Not sent: account erased or without email, or the preference is off.
    Skipped,
}

/// An email of the outbox: no address, no body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Notification {
    /// Id (its `Message-ID` and `X-Notification-Id` are made from it).
    pub id: Uuid,
    /// Kind.
    #[schema(value_type = NotificationKind)]
    pub kind: String,
    /// The recipient's account.
    pub user_id: Uuid,
    /// The rental it is about.
    pub rental_id: Option<Uuid>,
    /// State.
    #[schema(value_type = NotificationState)]
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error (while retried, or why it was skipped or failed).
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was sent.
    pub sent_at: Option<DateTime<Utc>>,
}

/// A page of emails, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    /// This page.
    pub items: Vec<Notification>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The outbox listing's filters and paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only emails in this state.
    pub state: Option<NotificationState>,
    /// Only emails of this kind.
    pub kind: Option<NotificationKind>,
    /// Only this account's.
    pub user_id: Option<Uuid>,
    /// Page size, 1..=100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque; one that does not decode is 422).
    pub cursor: Option<String>,
}

macro_rules! paged {
    ($($page:ident of $item:ty;)+) => {$(
        impl super::reads::Paged for $page {
            type Item = $item;

            fn of(items: Vec<$item>, next_cursor: Option<String>) -> Self {
                Self { items, next_cursor }
            }
        }
    )+};
}

paged! {
    MoviePage of MovieSummary;
    RentalPage of Rental;
    NotificationPage of Notification;
}
