//! The catalogue as the API reads it.

use super::search::{push_listed, push_matching, WALK_PER_ROW};
use super::*;

/// A category as listed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct CategoryRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Live (not retired) movies in it.
    pub movie_count: i32,
}

/// A movie, with everything the details answer needs.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MovieRow {
    /// Id.
    pub movie_id: Uuid,
    /// Title.
    pub title: String,
    /// Storyline.
    pub storyline: String,
    /// Director.
    pub director: Option<String>,
    /// Release date.
    pub release_date: NaiveDate,
    /// Rating in tenths.
    pub rating_tenths: i16,
    /// Category names, in the movie's order.
    pub category_names: Vec<String>,
    /// Whether it can be rented now.
    pub available: bool,
    /// Whether it is retired.
    pub retired: bool,
    /// How often it was rented.
    pub times_rented: i64,
    /// Its stream version.
    pub version: i64,
    /// Position of the last event that changed this row.
    pub revision: i64,
}

/// Which movies to list.
#[derive(Debug, Clone, Default)]
pub struct MovieFilter {
    /// Only movies in this category.
    pub category: Option<Uuid>,
    /// Words that must each occur in the title, storyline or director.
    pub words: Vec<String>,
    /// `Some(true)`: available only; `Some(false)`: rented only; `None`: both.
    pub available: Option<bool>,
    /// Resume after this (title, id).
    pub after: Option<(String, Uuid)>,
    /// Page size.
    pub limit: i64,
}

pub(super) const MOVIE_COLUMNS: &str =
    "movie_id, title, storyline, director, release_date, rating_tenths, category_names,
     available, retired, times_rented, version, revision";

/// Reads the catalogue.
#[derive(Debug, Clone)]
pub struct CatalogueReader {
    pool: PgPool,
}

impl CatalogueReader {
    /// A reader over the pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Every category, by name (by its [`NameKey`], so in one order whatever the database's
    /// locale).
    pub async fn categories(&self) -> Result<Vec<CategoryRow>, sqlx::Error> {
        sqlx::query_as(
            "select category_id as id, name, movie_count from read.category order by name_key, category_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// One category.
    pub async fn category(&self, id: Uuid) -> Result<Option<CategoryRow>, sqlx::Error> {
        sqlx::query_as(
            "select category_id as id, name, movie_count from read.category where category_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// The id of the category with this name (by its [`NameKey`]).
    pub async fn category_by_name(&self, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "select category_id from read.category where name_key = $1 order by category_id limit 1",
        )
        .bind(NameKey::of(name).as_str())
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of live movies ordered by title, then id; one row more than `limit` when there is
    /// a next page.
    ///
    /// With a category or search words, two exact strategies answer, cheapest first (no single
    /// plan suits both common and rare words, and trigram estimates cannot tell them apart):
    /// the first rows of the listing index in order, filtered, which finds the page at once when
    /// matches are common; and, when that found less than a page, every match through the GIN
    /// indexes, then sorted, which is cheap because matches are then rare. Both give the same
    /// rows: the first matches in listing order are the first matches overall.
    pub async fn movies(&self, filter: &MovieFilter) -> Result<Vec<MovieRow>, sqlx::Error> {
        let wanted = filter.limit + 1;
        if filter.category.is_none() && filter.words.is_empty() {
            let mut query = QueryBuilder::new(format!("select {MOVIE_COLUMNS} from read.movie where "));
            push_listed(&mut query, filter);
            query.push(" order by title, movie_id limit ").push_bind(wanted);
            return query.build_query_as().fetch_all(&self.pool).await;
        }
        let mut walk = QueryBuilder::new(format!(
            "select {MOVIE_COLUMNS} from (select {MOVIE_COLUMNS}, category_ids, search from read.movie where "
        ));
        push_listed(&mut walk, filter);
        walk.push(" order by title, movie_id limit ").push_bind(wanted.saturating_mul(WALK_PER_ROW));
        walk.push(") listed where true");
        push_matching(&mut walk, filter);
        walk.push(" order by title, movie_id limit ").push_bind(wanted);
        let walked: Vec<MovieRow> = walk.build_query_as().fetch_all(&self.pool).await?;
        if walked.len() as i64 >= wanted {
            return Ok(walked);
        }
        // `materialized` keeps the planner from walking the listing index again: every match is
        // gathered (through the GIN indexes) before the sort.
        let mut all = QueryBuilder::new(format!(
            "with matching as materialized (select {MOVIE_COLUMNS} from read.movie where "
        ));
        push_listed(&mut all, filter);
        push_matching(&mut all, filter);
        all.push(format!(") select {MOVIE_COLUMNS} from matching order by title, movie_id limit "))
            .push_bind(wanted);
        all.build_query_as().fetch_all(&self.pool).await
    }

    /// One movie (retired ones too).
    pub async fn movie(&self, id: Uuid) -> Result<Option<MovieRow>, sqlx::Error> {
        sqlx::query_as(&format!("select {MOVIE_COLUMNS} from read.movie where movie_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Several movies.
    pub async fn movies_by_id(&self, ids: &[Uuid]) -> Result<Vec<MovieRow>, sqlx::Error> {
        sqlx::query_as(&format!("select {MOVIE_COLUMNS} from read.movie where movie_id = any($1)"))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
    }
}
