//! The analytics read model: revenue (by category, by movie, by day), rentals started per movie
//! and the rental intervals that utilization is computed from. Tables `read.analytics_category`
//! and `read.analytics_movie` (the names, titles and categories this projection has seen, so it
//! never reads another projection's tables), `read.analytics_rental` (one row per rental: its
//! interval, charge and payment) and `read.analytics_movie_day` (per UTC day and movie: rentals
//! started, charges assessed for the rentals returned that day, what was paid of them, and the
//! rentals that went overdue that day, by the day of the due time they passed). All
//! SQL on them lives here; handlers write through unqualified names (the engine's `search_path`
//! picks `read` or a rebuild's shadow schema), the reader names `read.` explicitly.
//!
//! Revenue counts a charge on the UTC day of the return; a movie in several categories counts in
//! each of them (by the categories it has now). Per-day facts are only ever changed together with
//! the rental row whose revision guards them, so applying an event twice changes nothing.

//!
//! The parts: [`fold`] applies events to rows in memory; [`reader`] answers the API's queries.

mod fold;
mod reader;

pub use reader::{AnalyticsReader, Days, RevenueGroup, RevenueRow, TopMovieRow, UtilizationRow};

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use domain::rental::RentalEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::engine::{
    rows_by_id, BulkCopy, Event, LogEvent, ProjectionError, ReadModel, StreamType, WriteMode, WRITE_CHUNK,
};
use fold::{apply_category, apply_movie, apply_rental};

/// The projection's name.
pub const NAME: &str = "analytics";

/// The analytics projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Analytics;

impl ReadModel for Analytics {
    type Rows = Rows;

    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] =
        &["analytics_category", "analytics_movie", "analytics_rental", "analytics_movie_day"];
    const STREAMS: &'static [StreamType] = &[StreamType::Category, StreamType::Movie, StreamType::Rental];

    /// Loads the categories, movies and rentals the batch can change. Per-day rows are not loaded:
    /// the batch's increments are added to them when written.
    async fn load(conn: &mut PgConnection, events: &[LogEvent]) -> Result<Rows, sqlx::Error> {
        let mut category_ids = HashSet::new();
        let mut movie_ids = HashSet::new();
        let mut rental_ids = HashSet::new();
        for e in events {
            let id = &e.stream;
            match &e.event {
                Event::Category(_) => {
                    category_ids.insert(*id);
                }
                Event::Movie(event) => match event {
                    MovieEvent::MovieRented { rental_id, .. }
                    | MovieEvent::MovieReturned { rental_id, .. } => {
                        rental_ids.insert(*rental_id);
                    }
                    MovieEvent::MovieAdded { .. }
                    | MovieEvent::MovieUpdated { .. }
                    | MovieEvent::MovieRetired {} => {
                        movie_ids.insert(*id);
                    }
                },
                Event::Rental(_) => {
                    rental_ids.insert(*id);
                }
            }
        }
        let category_ids: Vec<Uuid> = category_ids.into_iter().collect();
        let movie_ids: Vec<Uuid> = movie_ids.into_iter().collect();
        let rental_ids: Vec<Uuid> = rental_ids.into_iter().collect();
        let categories: Vec<CategoryState> = rows_by_id(
            conn,
            "select category_id, name, created_at, revision from analytics_category where category_id = any($1)",
            &category_ids,
        )
        .await?;
        let movies: Vec<MovieState> = rows_by_id(
            conn,
            "select movie_id, title, category_ids, added_at, retired_at, version
               from analytics_movie where movie_id = any($1)",
            &movie_ids,
        )
        .await?;
        let rentals: Vec<RentalState> = rows_by_id(
            conn,
            "select rental_id, movie_id, rented_at, returned_at, overdue_at, charge_cents, paid_cents, revision
               from analytics_rental where rental_id = any($1)",
            &rental_ids,
        )
        .await?;
        Ok(Rows {
            categories: categories.into_iter().map(|c| (c.category_id, c)).collect(),
            movies: movies.into_iter().map(|m| (m.movie_id, m)).collect(),
            rentals: rentals.into_iter().map(|r| (r.rental_id, r)).collect(),
            ..Rows::default()
        })
    }

    /// Changes the rows in memory, in log order.
    fn fold(rows: &mut Rows, events: &[LogEvent]) -> Result<(), ProjectionError> {
        for e in events {
            match &e.event {
                Event::Category(event) => apply_category(rows, e, event),
                Event::Movie(event) => apply_movie(rows, e, event),
                Event::Rental(event) => apply_rental(rows, e, event)?,
            }
        }
        Ok(())
    }

    /// Writes the changed rows: upserts (per-day rows add the batch's increments), or a bulk copy
    /// into the empty tables of an in-memory replay (which have no unique index until the end).
    async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
        let categories: Vec<&CategoryState> =
            rows.dirty_categories.iter().map(|id| &rows.categories[id]).collect();
        let movies: Vec<&MovieState> = rows.dirty_movies.iter().map(|id| &rows.movies[id]).collect();
        let rentals: Vec<&RentalState> = rows.dirty_rentals.iter().map(|id| &rows.rentals[id]).collect();
        let days: Vec<(&(NaiveDate, Uuid), &DayFacts)> =
            rows.days.iter().filter(|(_, facts)| **facts != DayFacts::default()).collect();
        if mode == WriteMode::Bulk {
            return copy_rows(conn, &categories, &movies, &rentals, &days).await;
        }

        for chunk in categories.chunks(WRITE_CHUNK) {
            sqlx::query(&format!(
                "insert into analytics_category ({CATEGORY_ROW})
                 select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[])
                 on conflict (category_id) do update
                    set name = excluded.name, created_at = excluded.created_at, revision = excluded.revision"
            ))
            .bind(chunk.iter().map(|c| c.category_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|c| c.name.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|c| c.created_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|c| c.revision).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        for chunk in movies.chunks(WRITE_CHUNK) {
            // Arrays of arrays cannot be bound as columns (PostgreSQL arrays are rectangular), so
            // each movie's category ids travel as a JSON array.
            let ids = |m: &MovieState| -> serde_json::Value {
                m.category_ids.iter().map(|id| id.to_string()).collect()
            };
            sqlx::query(&format!(
                "insert into analytics_movie ({MOVIE_ROW})
                 select u.movie_id, u.title, array(select jsonb_array_elements_text(u.category_ids)::uuid),
                        u.added_at, u.retired_at, u.version
                   from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::timestamptz[], $6::bigint[])
                        as u(movie_id, title, category_ids, added_at, retired_at, version)
                 on conflict (movie_id) do update
                    set title = excluded.title, category_ids = excluded.category_ids,
                        added_at = excluded.added_at, retired_at = excluded.retired_at, version = excluded.version"
            ))
            .bind(chunk.iter().map(|m| m.movie_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.title.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| ids(m)).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.added_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.retired_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.version).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        for chunk in rentals.chunks(WRITE_CHUNK) {
            sqlx::query(&format!(
                "insert into analytics_rental ({RENTAL_ROW})
                 select * from unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
                                      $6::bigint[], $7::bigint[], $8::timestamptz[])
                 on conflict (rental_id) do update
                    set returned_at = excluded.returned_at, overdue_at = excluded.overdue_at,
                        charge_cents = excluded.charge_cents,
                        paid_cents = excluded.paid_cents, revision = excluded.revision"
            ))
            .bind(chunk.iter().map(|r| r.rental_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.movie_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.rented_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.returned_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.charge_cents).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.paid_cents).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.revision).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.overdue_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        for chunk in days.chunks(WRITE_CHUNK) {
            sqlx::query(&format!(
                "insert into analytics_movie_day ({DAY_ROW})
                 select * from unnest($1::date[], $2::uuid[], $3::int[], $4::int[], $5::bigint[], $6::bigint[],
                                      $7::int[])
                 on conflict (day, movie_id) do update
                    set rentals_started = analytics_movie_day.rentals_started + excluded.rentals_started,
                        charges = analytics_movie_day.charges + excluded.charges,
                        revenue_cents = analytics_movie_day.revenue_cents + excluded.revenue_cents,
                        paid_cents = analytics_movie_day.paid_cents + excluded.paid_cents,
                        overdues = analytics_movie_day.overdues + excluded.overdues"
            ))
            .bind(chunk.iter().map(|((day, _), _)| *day).collect::<Vec<_>>())
            .bind(chunk.iter().map(|((_, movie), _)| *movie).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, f)| f.rentals_started).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, f)| f.charges).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, f)| f.revenue_cents).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, f)| f.paid_cents).collect::<Vec<_>>())
            .bind(chunk.iter().map(|(_, f)| f.overdues).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

// The columns of each table's written rows, in the order both writers send them.
const CATEGORY_ROW: &str = "category_id, name, created_at, revision";
const MOVIE_ROW: &str = "movie_id, title, category_ids, added_at, retired_at, version";
const RENTAL_ROW: &str =
    "rental_id, movie_id, rented_at, returned_at, charge_cents, paid_cents, revision, overdue_at";
const DAY_ROW: &str = "day, movie_id, rentals_started, charges, revenue_cents, paid_cents, overdues";

/// A replay's rows, copied into the empty shadow tables.
async fn copy_rows(
    conn: &mut PgConnection,
    categories: &[&CategoryState],
    movies: &[&MovieState],
    rentals: &[&RentalState],
    days: &[(&(NaiveDate, Uuid), &DayFacts)],
) -> Result<(), sqlx::Error> {
    let mut copy = BulkCopy::into(conn, "analytics_category", CATEGORY_ROW).await?;
    for c in categories {
        copy.row().await?.value(c.category_id).value(c.name.as_str()).value(c.created_at).value(c.revision);
    }
    copy.finish().await?;

    let mut copy = BulkCopy::into(conn, "analytics_movie", MOVIE_ROW).await?;
    for m in movies {
        copy.row()
            .await?
            .value(m.movie_id)
            .value(m.title.as_str())
            .value(&m.category_ids)
            .value(m.added_at)
            .value(m.retired_at)
            .value(m.version);
    }
    copy.finish().await?;

    let mut copy = BulkCopy::into(conn, "analytics_rental", RENTAL_ROW).await?;
    for r in rentals {
        copy.row()
            .await?
            .value(r.rental_id)
            .value(r.movie_id)
            .value(r.rented_at)
            .value(r.returned_at)
            .value(r.charge_cents)
            .value(r.paid_cents)
            .value(r.revision)
            .value(r.overdue_at);
    }
    copy.finish().await?;

    let mut copy = BulkCopy::into(conn, "analytics_movie_day", DAY_ROW).await?;
    for ((day, movie_id), f) in days {
        copy.row()
            .await?
            .value(*day)
            .value(*movie_id)
            .value(f.rentals_started)
            .value(f.charges)
            .value(f.revenue_cents)
            .value(f.paid_cents)
            .value(f.overdues);
    }
    copy.finish().await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct CategoryState {
    category_id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    revision: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct MovieState {
    movie_id: Uuid,
    title: String,
    category_ids: Vec<Uuid>,
    added_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    version: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RentalState {
    rental_id: Uuid,
    movie_id: Uuid,
    rented_at: DateTime<Utc>,
    returned_at: Option<DateTime<Utc>>,
    overdue_at: Option<DateTime<Utc>>,
    charge_cents: Option<i64>,
    paid_cents: Option<i64>,
    revision: i64,
}

/// Per-day facts of one movie: totals in a replay, increments in a live batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DayFacts {
    rentals_started: i32,
    charges: i32,
    revenue_cents: i64,
    paid_cents: i64,
    overdues: i32,
}

/// The rows a batch touches, loaded once, changed in memory, written back once. `days` holds
/// what the batch adds to each (day, movie) row; in a replay from empty tables that is the total.
#[derive(Default)]
pub struct Rows {
    categories: HashMap<Uuid, CategoryState>,
    movies: HashMap<Uuid, MovieState>,
    rentals: HashMap<Uuid, RentalState>,
    days: HashMap<(NaiveDate, Uuid), DayFacts>,
    dirty_categories: HashSet<Uuid>,
    dirty_movies: HashSet<Uuid>,
    dirty_rentals: HashSet<Uuid>,
}
