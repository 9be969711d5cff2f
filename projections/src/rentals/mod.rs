//! The rental status read model: one row per rental with its status, due time (and the due time
//! it passed, when it went overdue), charge and payment, and
//! each customer's balance due. Tables `read.rental` and `read.rental_movie` (the titles this
//! projection has seen, so it never reads another projection's tables); all SQL on them lives here.

//!
//! The parts: this module folds events into rows and writes them; [`reader`] answers the API's
//! queries.

mod reader;

pub use reader::{RentalFilter, RentalRow, RentalTarget, RentalsReader};

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::movie::MovieEvent;
use domain::rental::RentalEvent;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::engine::{
    rows_by_id, BulkCopy, Event, LogEvent, ProjectionError, ReadModel, StreamType, WriteMode, WRITE_CHUNK,
};

/// The projection's name.
pub const NAME: &str = "rentals";

/// The rentals projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rentals;

impl ReadModel for Rentals {
    type Rows = Rows;

    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["rental_movie", "rental"];
    const STREAMS: &'static [StreamType] = &[StreamType::Movie, StreamType::Rental];

    /// Loads the rentals and movie titles the batch can change.
    async fn load(conn: &mut PgConnection, events: &[LogEvent]) -> Result<Rows, sqlx::Error> {
        let mut movie_ids = HashSet::new();
        let mut rental_ids = HashSet::new();
        for e in events {
            match &e.event {
                Event::Movie(event) => {
                    movie_ids.insert(e.stream);
                    if let MovieEvent::MovieRented { rental_id, .. }
                    | MovieEvent::MovieReturned { rental_id, .. } = event
                    {
                        rental_ids.insert(*rental_id);
                    }
                }
                Event::Rental(_) => {
                    rental_ids.insert(e.stream);
                }
                Event::Category(_) => {}
            }
        }
        let movie_ids: Vec<Uuid> = movie_ids.into_iter().collect();
        let rental_ids: Vec<Uuid> = rental_ids.into_iter().collect();
        let titles = rows_by_id::<(Uuid, String)>(
            conn,
            "select movie_id, title from rental_movie where movie_id = any($1)",
            &movie_ids,
        )
        .await?
        .into_iter()
        .collect();
        let rentals = rows_by_id::<RentalState>(
            conn,
            &format!("select {RENTAL_COLUMNS}, paid_cents, revision from rental where rental_id = any($1)"),
            &rental_ids,
        )
        .await?
        .into_iter()
        .map(|r| (r.rental_id, r))
        .collect();
        Ok(Rows { titles, rentals, ..Rows::default() })
    }

    /// Changes the rows in memory, in log order, with per-row revision guards.
    fn fold(rows: &mut Rows, events: &[LogEvent]) -> Result<(), ProjectionError> {
        let Rows { titles, rentals, dirty_titles, dirty_rentals } = rows;
        for e in events {
            let position = e.position;
            match &e.event {
                Event::Category(_) => {}
                Event::Movie(event) => match event {
                    MovieEvent::MovieAdded { title, .. }
                    | MovieEvent::MovieUpdated { title: Some(title), .. } => {
                        titles.insert(e.stream, title.as_str().to_string());
                        dirty_titles.insert(e.stream);
                    }
                    MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                        // The title is the movie's title when it was rented.
                        rentals.entry(*rental_id).or_insert_with(|| {
                            dirty_rentals.insert(*rental_id);
                            RentalState {
                                rental_id: *rental_id,
                                movie_id: e.stream,
                                movie_title: titles.get(&e.stream).cloned().unwrap_or_default(),
                                customer_id: *customer_id,
                                rented_at: *rented_at,
                                due_at: None,
                                overdue_at: None,
                                returned_at: None,
                                status: "active".into(),
                                charge_days: None,
                                charge_cents: None,
                                currency: None,
                                paid_at: None,
                                paid_cents: None,
                                revision: position,
                            }
                        });
                    }
                    // A rental comes back once: its return is guarded by the row's state, not by
                    // the revision, which follows the rental's own stream. The feed's order is the
                    // order of the appending transactions, and positions need not grow with it
                    // across streams: the return can follow, in the feed, an event of the
                    // rental's stream with a higher position (an overdue recorded meanwhile).
                    MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
                        if let Some(rental) = rentals.get_mut(rental_id).filter(|r| r.returned_at.is_none()) {
                            rental.returned_at = Some(*returned_at);
                            if rental.status == "active" {
                                rental.status = "returned".into();
                            }
                            dirty_rentals.insert(*rental_id);
                        }
                    }
                    MovieEvent::MovieUpdated { .. } | MovieEvent::MovieRetired {} => {}
                },
                Event::Rental(event) => {
                    // Events of the rental's stream come after its `MovieRented` (they are caused
                    // by it) and in their stream's order: the revision guard holds among them.
                    let rental_id = e.stream;
                    let Some(rental) = rentals.get_mut(&rental_id).filter(|r| r.revision < position) else {
                        continue;
                    };
                    match event {
                        // The row was made from `MovieRented`, which comes first; the rental's own
                        // stream fixes when it is due.
                        RentalEvent::RentalOpened { due_at, .. } => rental.due_at = Some(*due_at),
                        RentalEvent::RentalOverdue { due_at } => rental.overdue_at = Some(*due_at),
                        // The return was taken from `MovieReturned`, which comes first.
                        RentalEvent::RentalClosed { .. } => continue,
                        RentalEvent::ChargeAssessed { days, amount_cents, currency, .. } => {
                            rental.charge_days = Some(i32::try_from(*days).unwrap_or(i32::MAX));
                            rental.charge_cents = Some(*amount_cents);
                            rental.currency = Some(currency.clone());
                            if matches!(rental.status.as_str(), "active" | "returned") {
                                rental.status = "charged".into();
                            }
                        }
                        RentalEvent::RentalPaid { amount_cents, paid_at, .. } => {
                            rental.paid_at = Some(*paid_at);
                            rental.paid_cents = Some(*amount_cents);
                            rental.status = "paid".into();
                        }
                    }
                    rental.revision = position;
                    dirty_rentals.insert(rental_id);
                }
            }
        }
        Ok(())
    }

    /// Writes the changed rows: upserts, or a bulk copy into the empty tables of an in-memory
    /// replay (which have no unique index to resolve conflicts with until the end).
    async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
        let titles: Vec<(Uuid, &str)> =
            rows.dirty_titles.iter().map(|id| (*id, rows.titles[id].as_str())).collect();
        let rentals: Vec<&RentalState> = rows.dirty_rentals.iter().map(|id| &rows.rentals[id]).collect();
        if mode == WriteMode::Bulk {
            let mut copy = BulkCopy::into(conn, "rental_movie", TITLE_ROW).await?;
            for (id, title) in &titles {
                copy.row().await?.value(id).value(*title);
            }
            copy.finish().await?;
            let mut copy = BulkCopy::into(conn, "rental", RENTAL_ROW).await?;
            for r in &rentals {
                copy.row()
                    .await?
                    .value(r.rental_id)
                    .value(r.movie_id)
                    .value(r.movie_title.as_str())
                    .value(r.customer_id)
                    .value(r.rented_at)
                    .value(r.returned_at)
                    .value(r.status.as_str())
                    .value(r.charge_days)
                    .value(r.charge_cents)
                    .value(r.currency.as_deref())
                    .value(r.paid_at)
                    .value(r.paid_cents)
                    .value(r.revision)
                    .value(r.due_at)
                    .value(r.overdue_at);
            }
            copy.finish().await?;
            return Ok(());
        }
        for chunk in titles.chunks(WRITE_CHUNK) {
            sqlx::query(&format!(
                "insert into rental_movie ({TITLE_ROW}) select * from unnest($1::uuid[], $2::text[])
                     on conflict (movie_id) do update set title = excluded.title"
            ))
            .bind(chunk.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, title)| *title).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        for rows in rentals.chunks(WRITE_CHUNK) {
            sqlx::query(&format!(
                "insert into rental ({RENTAL_ROW})
                 select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[],
                                      $6::timestamptz[], $7::text[], $8::int[], $9::bigint[], $10::text[],
                                      $11::timestamptz[], $12::bigint[], $13::bigint[], $14::timestamptz[],
                                      $15::timestamptz[])
                 on conflict (rental_id) do update set
                    due_at = excluded.due_at, overdue_at = excluded.overdue_at,
                    returned_at = excluded.returned_at, status = excluded.status, charge_days = excluded.charge_days,
                    charge_cents = excluded.charge_cents, currency = excluded.currency, paid_at = excluded.paid_at,
                    paid_cents = excluded.paid_cents, revision = excluded.revision"
            ))
            .bind(rows.iter().map(|r| r.rental_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.movie_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.movie_title.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.customer_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.rented_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.returned_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.charge_days).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.charge_cents).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.currency.as_deref()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.paid_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.paid_cents).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.revision).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.due_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.overdue_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The columns of a written `read.rental_movie` row, in the order both writers send them.
const TITLE_ROW: &str = "movie_id, title";

/// The columns of a written `read.rental` row, in the order both writers send them.
const RENTAL_ROW: &str =
    "rental_id, movie_id, movie_title, customer_id, rented_at, returned_at, status, charge_days,
     charge_cents, currency, paid_at, paid_cents, revision, due_at, overdue_at";

/// The rows a batch touches, loaded once, changed in memory, written back once.
#[derive(Default)]
pub struct Rows {
    titles: HashMap<Uuid, String>,
    rentals: HashMap<Uuid, RentalState>,
    dirty_titles: HashSet<Uuid>,
    dirty_rentals: HashSet<Uuid>,
}

/// A `read.rental` row being changed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct RentalState {
    rental_id: Uuid,
    movie_id: Uuid,
    movie_title: String,
    customer_id: Uuid,
    rented_at: DateTime<Utc>,
    due_at: Option<DateTime<Utc>>,
    overdue_at: Option<DateTime<Utc>>,
    returned_at: Option<DateTime<Utc>>,
    status: String,
    charge_days: Option<i32>,
    charge_cents: Option<i64>,
    currency: Option<String>,
    paid_at: Option<DateTime<Utc>>,
    paid_cents: Option<i64>,
    revision: i64,
}

const RENTAL_COLUMNS: &str = "rental_id, movie_id, movie_title, customer_id, rented_at, due_at, overdue_at,
     returned_at, status, charge_days, charge_cents, currency, paid_at";

/// The rentals `?overdue=true` lists: still out, past their due time (the stored flag is
/// `status = 'active' and overdue_at is not null`; the overdue listing's index is conditioned on it).
const ACTIVE_OVERDUE: &str = "overdue_open";
