//! Rental status as the API reads it.

use std::sync::{Arc, Mutex};

use super::*;
use eventstore::generations::Generations;
use eventstore::lookup::RentalRef;

/// A rental's status.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RentalRow {
    /// Id.
    pub rental_id: Uuid,
    /// The movie.
    pub movie_id: Uuid,
    /// The movie's title when rented.
    pub movie_title: String,
    /// The customer.
    pub customer_id: Uuid,
    /// When it started.
    pub rented_at: DateTime<Utc>,
    /// When it is due back: `None` until the rental's own stream has recorded it (the payments
    /// process manager opens the rental right after the rent).
    pub due_at: Option<DateTime<Utc>>,
    /// The due time it passed while the copy was out.
    pub overdue_at: Option<DateTime<Utc>>,
    /// When the copy came back.
    pub returned_at: Option<DateTime<Utc>>,
    /// `active`, `returned`, `charged` or `paid`.
    pub status: String,
    /// Days charged.
    pub charge_days: Option<i32>,
    /// Amount charged, in cents.
    pub charge_cents: Option<i64>,
    /// Currency of the charge.
    pub currency: Option<String>,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
}

/// A rental as a command on it starts from: the rental lookup, written in the rent's own
/// transaction (so it is there the moment the rent has answered), and what the read model knows
/// of it so far (nothing yet, right after the rent).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RentalTarget {
    /// The lookup row.
    #[sqlx(flatten)]
    pub lookup: RentalRef,
    /// The movie's title when rented, once the read model has the rental.
    pub movie_title: Option<String>,
    /// Its due time, once the read model has it.
    pub due_at: Option<DateTime<Utc>>,
    /// The due time it passed, as far as the read model has applied.
    pub overdue_at: Option<DateTime<Utc>>,
}

/// Which rentals to list.
#[derive(Debug, Clone, Default)]
pub struct RentalFilter {
    /// Only this customer's.
    pub customer: Option<Uuid>,
    /// Only in this status.
    pub status: Option<String>,
    /// `Some(true)`: only active overdue rentals; `Some(false)`: every other rental.
    pub overdue: Option<bool>,
    /// Resume after this (rented_at, id), newest first.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// Reads rental status. Clones share what they know of rentals (see [`RentalsReader::target`]).
#[derive(Debug, Clone)]
pub struct RentalsReader {
    pool: PgPool,
    known: Arc<Mutex<Generations<Uuid, RentalTarget>>>,
}

/// Rentals per generation whose facts a reader remembers: those clients are at work on (rented a
/// moment ago, about to be returned or paid) stay, at about 200 bytes each.
pub const KNOWN_RENTALS: usize = 4096;

impl RentalsReader {
    /// A reader over the pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, known: Arc::new(Mutex::new(Generations::new(KNOWN_RENTALS))) }
    }

    /// One rental.
    pub async fn rental(&self, id: Uuid) -> Result<Option<RentalRow>, sqlx::Error> {
        sqlx::query_as(&format!("select {RENTAL_COLUMNS} from read.rental where rental_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The rental a return or a payment acts on, in at most one round trip: its lookup row with
    /// the read model's row beside it; `None` when no rent recorded it.
    ///
    /// What this process already knows of the rental answers without a query when it is enough:
    /// its facts never change once known (whose it is, the movie, when it was rented, the title
    /// then, the due time once recorded, the return once made), so only what is not known yet is
    /// read: a rental this process has not seen, or, with `must_know_return`, one it has not seen
    /// returned (another process may have returned it). A remembered `overdue_at` of `None` may
    /// be out of date, as the read model's may: a caller that needs it near or past the due time
    /// reads the rental's own stream.
    pub async fn target(
        &self,
        id: Uuid,
        must_know_return: bool,
    ) -> Result<Option<RentalTarget>, sqlx::Error> {
        let known =
            self.lock().get(&id).filter(|k| !must_know_return || k.lookup.returned_at.is_some()).cloned();
        if known.is_some() {
            return Ok(known);
        }
        let found: Option<RentalTarget> = sqlx::query_as(
            "select l.rental_id, l.movie_id, l.customer_id, l.rented_at, l.returned_at,
                    r.movie_title, r.due_at, r.overdue_at
               from rental_lookup l left join read.rental r on r.rental_id = l.rental_id
              where l.rental_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(found) = &found {
            self.remember(found.clone());
        }
        Ok(found)
    }

    /// Remembers what is known of a rental (a rent this process made, or a lookup), keeping what
    /// was known already: each fact goes from unknown to known, never back.
    pub fn remember(&self, target: RentalTarget) {
        let mut known = self.lock();
        let merged = match known.peek(&target.lookup.rental_id) {
            Some(before) => RentalTarget {
                lookup: RentalRef {
                    returned_at: before.lookup.returned_at.or(target.lookup.returned_at),
                    ..before.lookup.clone()
                },
                movie_title: before.movie_title.clone().or(target.movie_title),
                due_at: before.due_at.or(target.due_at),
                overdue_at: before.overdue_at.or(target.overdue_at),
            },
            None => target,
        };
        known.insert(merged.lookup.rental_id, merged);
    }

    /// Remembers that a rental this process knows of was returned (by a return this process made).
    pub fn returned(&self, id: Uuid, returned_at: DateTime<Utc>) {
        if let Some(known) = self.lock().get(&id) {
            known.lookup.returned_at.get_or_insert(returned_at);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<Uuid, RentalTarget>> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A page of rentals, newest `rented_at` first; one row more than `limit` when there is a
    /// next page.
    pub async fn rentals(&self, filter: &RentalFilter) -> Result<Vec<RentalRow>, sqlx::Error> {
        let mut query = QueryBuilder::new(format!("select {RENTAL_COLUMNS} from read.rental where true"));
        if let Some(customer) = filter.customer {
            query.push(" and customer_id = ").push_bind(customer);
        }
        if let Some(status) = &filter.status {
            query.push(" and status = ").push_bind(status.clone());
        }
        match filter.overdue {
            Some(true) => query.push(format!(" and {ACTIVE_OVERDUE}")),
            Some(false) => query.push(format!(" and not {ACTIVE_OVERDUE}")),
            None => &mut query,
        };
        if let Some((rented_at, id)) = filter.after {
            query
                .push(" and (rented_at, rental_id) < (")
                .push_bind(rented_at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        query.push(" order by rented_at desc, rental_id desc limit ").push_bind(filter.limit + 1);
        query.build_query_as().fetch_all(&self.pool).await
    }

    /// How many rentals are active and overdue.
    pub async fn overdue_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&format!("select count(*) from read.rental where {ACTIVE_OVERDUE}"))
            .fetch_one(&self.pool)
            .await
    }

    /// The sum of a customer's charges assessed and not yet paid, in cents.
    pub async fn balance_due(&self, customer: Uuid) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "select coalesce(sum(charge_cents), 0)::bigint from read.rental
              where customer_id = $1 and status = 'charged'",
        )
        .bind(customer)
        .fetch_one(&self.pool)
        .await
    }
}
