//! The catalogue read model: categories (with their count of live movies) and movies (the
//! listing, the search and the details). Tables `read.category` and `read.movie`; all SQL on
//! them lives here. Handlers write through unqualified names (the engine's `search_path` picks
//! `read` or a rebuild's shadow schema); the reader names `read.` explicitly.
//!
//! The parts: [`fold`] applies events to rows in memory, [`write`] loads and writes those rows
//! (and keeps the categories' name keys), [`reader`] answers the API's queries, [`search`] builds
//! the listing's conditions.

mod fold;
mod reader;
mod search;
mod write;

pub use reader::{CatalogueReader, CategoryRow, MovieFilter, MovieRow};
pub use write::{category_keys_missing, recompute_category_keys};

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use domain::name_key::NameKey;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::engine::{ProjectionError, ReadModel, StoredEvent, StreamType, Touched, WriteMode, WRITE_CHUNK};

/// The projection's name.
pub const NAME: &str = "catalogue";

/// The movie table: its rows are the ones a batch reports as touched.
pub const MOVIE_TABLE: &str = "movie";

/// The catalogue projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalogue;

impl ReadModel for Catalogue {
    type Change = Change;
    type Rows = Rows;

    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["category", MOVIE_TABLE];

    fn decode(events: &[StoredEvent]) -> Result<Vec<Change>, ProjectionError> {
        let mut changes = Vec::with_capacity(events.len());
        for e in events {
            match e.stream_type() {
                Some(StreamType::Category) => changes.push(Change::Category(locate(e)?)),
                Some(StreamType::Movie) => changes.push(Change::Movie(locate(e)?)),
                _ => {}
            }
        }
        Ok(changes)
    }

    async fn load(conn: &mut PgConnection, changes: &[Change]) -> Result<Rows, sqlx::Error> {
        write::load(conn, changes).await
    }

    fn fold(rows: &mut Rows, changes: Vec<Change>) -> Result<(), ProjectionError> {
        fold::fold(rows, changes)
    }

    async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
        write::write(conn, rows, mode == WriteMode::Upsert).await
    }

    fn touched(rows: &Rows, touched: &mut Touched) {
        for id in &rows.dirty_movies {
            touched.row(MOVIE_TABLE, *id, rows.movies[id].revision);
        }
    }
}

/// A catalogue event with its place in the log.
pub struct Located<E> {
    id: Uuid,
    sequence: i64,
    position: i64,
    at: DateTime<Utc>,
    event: E,
}

/// An event this read model reads, decoded, with its place in the log.
pub enum Change {
    Category(Located<CategoryEvent>),
    Movie(Located<MovieEvent>),
}

/// A `read.category` row being changed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct CategoryState {
    category_id: Uuid,
    name: String,
    movie_count: i32,
    revision: i64,
}

/// A `read.movie` row being changed (derived columns are computed when written).
#[derive(Debug, Clone, sqlx::FromRow)]
struct MovieState {
    movie_id: Uuid,
    title: String,
    storyline: String,
    director: Option<String>,
    release_date: NaiveDate,
    rating_tenths: i16,
    category_ids: Vec<Uuid>,
    available: bool,
    retired: bool,
    times_rented: i64,
    version: i64,
    revision: i64,
    added_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The rows a batch touches, loaded once, changed in memory, written back once.
#[derive(Default)]
pub struct Rows {
    categories: HashMap<Uuid, CategoryState>,
    movies: HashMap<Uuid, MovieState>,
    dirty_categories: HashSet<Uuid>,
    dirty_movies: HashSet<Uuid>,
}

impl Rows {
    fn count(&mut self, categories: &[Uuid], delta: i32) {
        for id in categories {
            if let Some(category) = self.categories.get_mut(id) {
                category.movie_count += delta;
                self.dirty_categories.insert(*id);
            }
        }
    }
}

fn locate<E: cqrs_es::DomainEvent>(e: &StoredEvent) -> Result<Located<E>, ProjectionError> {
    Ok(Located {
        id: e.stream_uuid()?,
        sequence: e.sequence,
        position: e.position,
        at: e.recorded_at,
        event: e.decode()?,
    })
}
