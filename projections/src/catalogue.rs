//! The catalogue read model: categories (with their count of live movies) and movies (the
//! listing, the search and the details). Tables `read.category` and `read.movie`; all SQL on
//! them lives here. Handlers write through unqualified names (the engine's `search_path` picks
//! `read` or a rebuild's shadow schema); the reader names `read.` explicitly.

use chrono::NaiveDate;
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::engine::{BoxFuture, Projection, ProjectionError, StoredEvent, Touched};

/// The projection's name.
pub const NAME: &str = "catalogue";

/// The catalogue projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalogue;

impl Projection for Catalogue {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["category", "movie"]
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a StoredEvent,
        touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            match event.aggregate_type.as_str() {
                "category" => apply_category(conn, event, touched).await,
                "movie" => apply_movie(conn, event, touched).await,
                _ => Ok(()),
            }
        })
    }
}

async fn apply_category(
    conn: &mut PgConnection,
    event: &StoredEvent,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    let id = event.stream_uuid()?;
    match event.decode::<CategoryEvent>()? {
        CategoryEvent::CategoryCreated { name } => {
            sqlx::query(
                "insert into category (category_id, name, movie_count, revision) values ($1, $2, 0, $3)
                 on conflict (category_id) do nothing",
            )
            .bind(id)
            .bind(name.as_str())
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
        CategoryEvent::CategoryRenamed { name } => {
            sqlx::query("update category set name = $2, revision = $3 where category_id = $1 and revision < $3")
                .bind(id)
                .bind(name.as_str())
                .bind(event.position)
                .execute(&mut *conn)
                .await?;
            // Movies carry their category names for fast listing: rename them there too.
            let movies: Vec<Uuid> = sqlx::query_scalar(&format!(
                "update movie m set category_names = {NAMES_OF_M}, revision = $2
                  where m.category_ids @> array[$1::uuid] and m.revision < $2
                  returning m.movie_id"
            ))
            .bind(id)
            .bind(event.position)
            .fetch_all(&mut *conn)
            .await?;
            for movie in movies {
                touched.movie(movie);
            }
        }
    }
    Ok(())
}

/// The names of `m.category_ids`, in their order.
const NAMES_OF_M: &str = "coalesce((select array_agg(c.name order by u.ord)
                from unnest(m.category_ids) with ordinality as u(id, ord)
                join category c on c.category_id = u.id), '{}')";

async fn adjust_counts(conn: &mut PgConnection, ids: &[Uuid], delta: i32) -> Result<(), sqlx::Error> {
    sqlx::query("update category set movie_count = movie_count + $2 where category_id = any($1)")
        .bind(ids)
        .bind(delta)
        .execute(conn)
        .await?;
    Ok(())
}

/// The movie row's version, retired flag and categories, when it exists.
async fn movie_state(conn: &mut PgConnection, id: Uuid) -> Result<Option<(i64, bool, Vec<Uuid>)>, sqlx::Error> {
    sqlx::query_as("select version, retired, category_ids from movie where movie_id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

async fn apply_movie(conn: &mut PgConnection, event: &StoredEvent, touched: &mut Touched) -> Result<(), ProjectionError> {
    let id = event.stream_uuid()?;
    let (seq, pos, at) = (event.sequence, event.position, event.recorded_at);
    let current = movie_state(conn, id).await?;
    // Per-stream version guard: an event this row already reflects changes nothing.
    if current.as_ref().is_some_and(|(version, _, _)| *version >= seq) {
        return Ok(());
    }
    match event.decode::<MovieEvent>()? {
        MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids } => {
            sqlx::query(
                "insert into movie (movie_id, title, storyline, director, release_date, rating_tenths,
                                    category_ids, category_names, available, retired, times_rented,
                                    version, revision, search, added_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, $7, '{}', true, false, 0, $8, $9, '', $10, $10)",
            )
            .bind(id)
            .bind(title.as_str())
            .bind(storyline.as_str())
            .bind(director.as_ref().map(|d| d.as_str()))
            .bind(release_date)
            .bind(i16::from(rating.tenths()))
            .bind(category_ids.ids())
            .bind(seq)
            .bind(pos)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            adjust_counts(conn, category_ids.ids(), 1).await?;
        }
        MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids } => {
            let Some((_, retired, old_categories)) = current else {
                return Err(ProjectionError::Decode(format!("MovieUpdated before MovieAdded for movie {id}")));
            };
            sqlx::query(
                "update movie set
                    title = coalesce($2, title),
                    storyline = coalesce($3, storyline),
                    release_date = coalesce($4, release_date),
                    rating_tenths = coalesce($5, rating_tenths),
                    director = case when $6 then $7 else director end,
                    category_ids = coalesce($8, category_ids),
                    version = $9, revision = $10, updated_at = $11
                  where movie_id = $1",
            )
            .bind(id)
            .bind(title.as_ref().map(|t| t.as_str()))
            .bind(storyline.as_ref().map(|s| s.as_str()))
            .bind(release_date)
            .bind(rating.map(|r| i16::from(r.tenths())))
            .bind(director.is_some())
            .bind(director.flatten().as_ref().map(|d| d.as_str()))
            .bind(category_ids.as_ref().map(|c| c.ids().to_vec()))
            .bind(seq)
            .bind(pos)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            if let (Some(new), false) = (&category_ids, retired) {
                adjust_counts(conn, &old_categories, -1).await?;
                adjust_counts(conn, new.ids(), 1).await?;
            }
        }
        MovieEvent::MovieRetired {} => {
            sqlx::query(
                "update movie set retired = true, available = false, version = $2, revision = $3, updated_at = $4
                  where movie_id = $1",
            )
            .bind(id)
            .bind(seq)
            .bind(pos)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            if let Some((_, false, categories)) = &current {
                adjust_counts(conn, categories, -1).await?;
            }
        }
        MovieEvent::MovieRented { .. } => {
            sqlx::query(
                "update movie set available = false, times_rented = times_rented + 1,
                        version = $2, revision = $3, updated_at = $4
                  where movie_id = $1",
            )
            .bind(id)
            .bind(seq)
            .bind(pos)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        MovieEvent::MovieReturned { .. } => {
            sqlx::query(
                "update movie set available = not retired, version = $2, revision = $3, updated_at = $4
                  where movie_id = $1",
            )
            .bind(id)
            .bind(seq)
            .bind(pos)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    // Derived columns: category names and the search text.
    sqlx::query(&format!(
        "update movie m set category_names = {NAMES_OF_M},
                search = lower(m.title || ' ' || m.storyline || ' ' || coalesce(m.director, ''))
          where m.movie_id = $1"
    ))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    touched.movie(id);
    Ok(())
}

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

const MOVIE_COLUMNS: &str = "movie_id, title, storyline, director, release_date, rating_tenths, category_names,
     available, retired, times_rented, version, revision";

/// Escapes `%`, `_` and `\` so a search word matches literally inside `like`.
fn like_pattern(word: &str) -> String {
    let mut escaped = String::with_capacity(word.len() + 2);
    escaped.push('%');
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

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

    /// Every category, by name.
    pub async fn categories(&self) -> Result<Vec<CategoryRow>, sqlx::Error> {
        sqlx::query_as(
            "select category_id as id, name, movie_count from read.category order by lower(name), category_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// One category.
    pub async fn category(&self, id: Uuid) -> Result<Option<CategoryRow>, sqlx::Error> {
        sqlx::query_as("select category_id as id, name, movie_count from read.category where category_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The id of the category with this name, case-insensitively.
    pub async fn category_by_name(&self, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("select category_id from read.category where lower(name) = lower($1) limit 1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// A page of live movies ordered by title, then id; one row more than `limit` when there is
    /// a next page.
    pub async fn movies(&self, filter: &MovieFilter) -> Result<Vec<MovieRow>, sqlx::Error> {
        let mut query = QueryBuilder::new(format!("select {MOVIE_COLUMNS} from read.movie where not retired"));
        if let Some(available) = filter.available {
            query.push(" and available = ").push_bind(available);
        }
        if let Some(category) = filter.category {
            query.push(" and category_ids @> array[").push_bind(category).push("]::uuid[]");
        }
        for word in &filter.words {
            query.push(" and search like lower(").push_bind(like_pattern(word)).push(")");
        }
        if let Some((title, id)) = &filter.after {
            query.push(" and (title, movie_id) > (").push_bind(title.clone()).push(", ").push_bind(*id).push(")");
        }
        query.push(" order by title, movie_id limit ").push_bind(filter.limit + 1);
        query.build_query_as().fetch_all(&self.pool).await
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

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_words_match_literally() {
        assert_eq!(like_pattern("lebow"), "%lebow%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
