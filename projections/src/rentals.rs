//! The rental status read model: one row per rental with its status, charge and payment, and
//! each customer's balance due. Tables `read.rental` and `read.rental_movie` (the titles this
//! projection has seen, so it never reads another projection's tables); all SQL on them lives here.

use chrono::{DateTime, Utc};
use domain::movie::MovieEvent;
use domain::rental::RentalEvent;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::engine::{BoxFuture, Projection, ProjectionError, StoredEvent, Touched};

/// The projection's name.
pub const NAME: &str = "rentals";

/// The rentals projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rentals;

impl Projection for Rentals {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rental_movie", "rental"]
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a StoredEvent,
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            match event.aggregate_type.as_str() {
                "movie" => apply_movie(conn, event).await,
                "rental" => apply_rental(conn, event).await,
                _ => Ok(()),
            }
        })
    }
}

async fn apply_movie(conn: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let movie_id = event.stream_uuid()?;
    match event.decode::<MovieEvent>()? {
        MovieEvent::MovieAdded { title, .. } | MovieEvent::MovieUpdated { title: Some(title), .. } => {
            sqlx::query(
                "insert into rental_movie (movie_id, title) values ($1, $2)
                 on conflict (movie_id) do update set title = excluded.title",
            )
            .bind(movie_id)
            .bind(title.as_str())
            .execute(&mut *conn)
            .await?;
        }
        MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
            // The title is the movie's title when it was rented.
            sqlx::query(
                "insert into rental (rental_id, movie_id, movie_title, customer_id, rented_at, status, revision)
                 select $1, $2, coalesce((select title from rental_movie where movie_id = $2), ''), $3, $4,
                        'active', $5
                 on conflict (rental_id) do nothing",
            )
            .bind(rental_id)
            .bind(movie_id)
            .bind(customer_id)
            .bind(rented_at)
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
        MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
            sqlx::query(
                "update rental set returned_at = $2, revision = $3,
                        status = case when status = 'active' then 'returned' else status end
                  where rental_id = $1 and revision < $3",
            )
            .bind(rental_id)
            .bind(returned_at)
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
        MovieEvent::MovieUpdated { .. } | MovieEvent::MovieRetired {} => {}
    }
    Ok(())
}

async fn apply_rental(conn: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let rental_id = event.stream_uuid()?;
    match event.decode::<RentalEvent>()? {
        // The row was made from `MovieRented` and `MovieReturned`, which come first in the log.
        RentalEvent::RentalOpened { .. } | RentalEvent::RentalClosed { .. } => {}
        RentalEvent::ChargeAssessed { days, amount_cents, currency, .. } => {
            sqlx::query(
                "update rental set charge_days = $2, charge_cents = $3, currency = $4, revision = $5,
                        status = case when status in ('active', 'returned') then 'charged' else status end
                  where rental_id = $1 and revision < $5",
            )
            .bind(rental_id)
            .bind(i32::try_from(days).unwrap_or(i32::MAX))
            .bind(amount_cents)
            .bind(currency)
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
        RentalEvent::RentalPaid { amount_cents, paid_at } => {
            sqlx::query(
                "update rental set paid_at = $2, paid_cents = $3, status = 'paid', revision = $4
                  where rental_id = $1 and revision < $4",
            )
            .bind(rental_id)
            .bind(paid_at)
            .bind(amount_cents)
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

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

/// Which rentals to list.
#[derive(Debug, Clone, Default)]
pub struct RentalFilter {
    /// Only this customer's.
    pub customer: Option<Uuid>,
    /// Only in this status.
    pub status: Option<String>,
    /// Resume after this (rented_at, id), newest first.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

const RENTAL_COLUMNS: &str = "rental_id, movie_id, movie_title, customer_id, rented_at, returned_at, status,
     charge_days, charge_cents, currency, paid_at";

/// Reads rental status.
#[derive(Debug, Clone)]
pub struct RentalsReader {
    pool: PgPool,
}

impl RentalsReader {
    /// A reader over the pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// One rental.
    pub async fn rental(&self, id: Uuid) -> Result<Option<RentalRow>, sqlx::Error> {
        sqlx::query_as(&format!("select {RENTAL_COLUMNS} from read.rental where rental_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
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
        if let Some((rented_at, id)) = filter.after {
            query.push(" and (rented_at, rental_id) < (").push_bind(rented_at).push(", ").push_bind(id).push(")");
        }
        query.push(" order by rented_at desc, rental_id desc limit ").push_bind(filter.limit + 1);
        query.build_query_as().fetch_all(&self.pool).await
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
