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

use crate::engine::{
    BulkCopy, Event, LogEvent, ProjectionError, ReadModel, StreamType, Touched, WriteMode, WRITE_CHUNK,
};

/// The projection's name.
pub const NAME: &str = "catalogue";

/// The movie table: its rows are the ones a batch reports as touched.
pub const MOVIE_TABLE: &str = "movie";

/// The catalogue projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalogue;

impl ReadModel for Catalogue {
    type Rows = Rows;

    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["category", MOVIE_TABLE];
    const STREAMS: &'static [StreamType] = &[StreamType::Category, StreamType::Movie];

    async fn load(conn: &mut PgConnection, events: &[LogEvent]) -> Result<Rows, sqlx::Error> {
        write::load(conn, events).await
    }

    fn fold(rows: &mut Rows, events: &[LogEvent]) -> Result<(), ProjectionError> {
        fold::fold(rows, events)
    }

    async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
        write::write(conn, rows, mode).await
    }

    fn touched(rows: &Rows, touched: &mut Touched) {
        for id in &rows.dirty_movies {
            touched.row(MOVIE_TABLE, *id, rows.movies[id].revision);
        }
    }
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
