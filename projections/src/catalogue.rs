//! The catalogue read model: categories (with their count of live movies) and movies (the
//! listing, the search and the details). Tables `read.category` and `read.movie`; all SQL on
//! them lives here. Handlers write through unqualified names (the engine's `search_path` picks
//! `read` or a rebuild's shadow schema); the reader names `read.` explicitly.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use domain::name_key::NameKey;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::engine::{ProjectionError, ReadModel, StoredEvent, Touched, WriteMode, WRITE_CHUNK};

/// The projection's name.
pub const NAME: &str = "catalogue";

/// The catalogue projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalogue;

impl ReadModel for Catalogue {
    type Change = Change;
    type Rows = Rows;

    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["category", "movie"];

    fn decode(events: &[StoredEvent]) -> Result<Vec<Change>, ProjectionError> {
        decode(events)
    }

    async fn load(conn: &mut PgConnection, changes: &[Change]) -> Result<Rows, sqlx::Error> {
        load(conn, changes).await
    }

    fn fold(rows: &mut Rows, changes: Vec<Change>) -> Result<(), ProjectionError> {
        fold(rows, changes)
    }

    async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
        write(conn, rows, mode == WriteMode::Upsert).await
    }

    fn touched(rows: &Rows, touched: &mut Touched) {
        for id in &rows.dirty_movies {
            touched.movie(*id, rows.movies[id].revision);
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

fn decode(events: &[StoredEvent]) -> Result<Vec<Change>, ProjectionError> {
    let mut changes = Vec::with_capacity(events.len());
    for e in events {
        match e.aggregate_type.as_str() {
            "category" => changes.push(Change::Category(locate(e)?)),
            "movie" => changes.push(Change::Movie(locate(e)?)),
            _ => {}
        }
    }
    Ok(changes)
}

/// Loads every row the batch can change: its movies, the movies of renamed categories, and every
/// category those movies or the events name.
async fn load(conn: &mut PgConnection, changes: &[Change]) -> Result<Rows, sqlx::Error> {
    let mut movie_ids = HashSet::new();
    let mut category_ids = HashSet::new();
    let mut renamed = HashSet::new();
    for change in changes {
        match change {
            Change::Category(c) => {
                category_ids.insert(c.id);
                if matches!(c.event, CategoryEvent::CategoryRenamed { .. }) {
                    renamed.insert(c.id);
                }
            }
            Change::Movie(m) => {
                movie_ids.insert(m.id);
                if let MovieEvent::MovieAdded { category_ids: ids, .. }
                | MovieEvent::MovieUpdated { category_ids: Some(ids), .. } = &m.event
                {
                    category_ids.extend(ids.ids());
                }
            }
        }
    }
    let movie_ids: Vec<Uuid> = movie_ids.into_iter().collect();
    let renamed: Vec<Uuid> = renamed.into_iter().collect();
    // Two statements, not one with `or`: each uses its own index.
    let mut movies: Vec<MovieState> =
        sqlx::query_as(&format!("select {STATE_COLUMNS} from movie where movie_id = any($1)"))
            .bind(&movie_ids)
            .fetch_all(&mut *conn)
            .await?;
    if !renamed.is_empty() {
        let in_renamed: Vec<MovieState> = sqlx::query_as(&format!(
            "select {STATE_COLUMNS} from movie where category_ids && $1::uuid[] and movie_id <> all($2)"
        ))
        .bind(&renamed)
        .bind(&movie_ids)
        .fetch_all(&mut *conn)
        .await?;
        movies.extend(in_renamed);
    }
    for movie in &movies {
        category_ids.extend(movie.category_ids.iter().copied());
    }
    let category_ids: Vec<Uuid> = category_ids.into_iter().collect();
    let categories: Vec<CategoryState> = sqlx::query_as(
        "select category_id, name, movie_count, revision from category where category_id = any($1)",
    )
    .bind(&category_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Rows {
        categories: categories.into_iter().map(|c| (c.category_id, c)).collect(),
        movies: movies.into_iter().map(|m| (m.movie_id, m)).collect(),
        ..Rows::default()
    })
}

const STATE_COLUMNS: &str = "movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
     available, retired, times_rented, version, revision, added_at, updated_at";

fn apply_category(rows: &mut Rows, c: Located<CategoryEvent>) {
    match c.event {
        CategoryEvent::CategoryCreated { name } => {
            rows.categories.entry(c.id).or_insert_with(|| {
                rows.dirty_categories.insert(c.id);
                CategoryState {
                    category_id: c.id,
                    name: name.as_str().to_string(),
                    movie_count: 0,
                    revision: c.position,
                }
            });
        }
        CategoryEvent::CategoryRenamed { name } => {
            let Some(category) = rows.categories.get_mut(&c.id) else { return };
            if category.revision >= c.position {
                return;
            }
            category.name = name.as_str().to_string();
            category.revision = c.position;
            rows.dirty_categories.insert(c.id);
            // Movies carry their category names for fast listing: they change with the name.
            for movie in rows.movies.values_mut() {
                if movie.category_ids.contains(&c.id) && movie.revision < c.position {
                    movie.revision = c.position;
                    rows.dirty_movies.insert(movie.movie_id);
                }
            }
        }
    }
}

fn apply_movie(rows: &mut Rows, m: Located<MovieEvent>) -> Result<(), ProjectionError> {
    // Per-stream version guard: an event this row already reflects changes nothing.
    if rows.movies.get(&m.id).is_some_and(|movie| movie.version >= m.sequence) {
        return Ok(());
    }
    if let MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids } = m.event
    {
        rows.count(category_ids.ids(), 1);
        let movie = MovieState {
            movie_id: m.id,
            title: title.as_str().to_string(),
            storyline: storyline.as_str().to_string(),
            director: director.map(|d| d.as_str().to_string()),
            release_date,
            rating_tenths: i16::from(rating.tenths()),
            category_ids: category_ids.ids().to_vec(),
            available: true,
            retired: false,
            times_rented: 0,
            version: m.sequence,
            revision: m.position,
            added_at: m.at,
            updated_at: m.at,
        };
        rows.movies.insert(m.id, movie);
        rows.dirty_movies.insert(m.id);
        return Ok(());
    }
    let Some(movie) = rows.movies.get_mut(&m.id) else {
        return Err(ProjectionError::Decode(format!("movie {} changed before it was added", m.id)));
    };
    let mut recount = None;
    match m.event {
        MovieEvent::MovieAdded { .. } => unreachable!("handled above"),
        MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids } => {
            if let Some(title) = title {
                movie.title = title.as_str().to_string();
            }
            if let Some(storyline) = storyline {
                movie.storyline = storyline.as_str().to_string();
            }
            if let Some(release_date) = release_date {
                movie.release_date = release_date;
            }
            if let Some(rating) = rating {
                movie.rating_tenths = i16::from(rating.tenths());
            }
            if let Some(director) = director {
                movie.director = director.map(|d| d.as_str().to_string());
            }
            if let Some(ids) = category_ids {
                let old = std::mem::replace(&mut movie.category_ids, ids.ids().to_vec());
                if !movie.retired {
                    recount = Some((old, movie.category_ids.clone()));
                }
            }
        }
        MovieEvent::MovieRetired {} => {
            if !movie.retired {
                recount = Some((movie.category_ids.clone(), vec![]));
            }
            movie.retired = true;
            movie.available = false;
        }
        MovieEvent::MovieRented { .. } => {
            movie.available = false;
            movie.times_rented += 1;
        }
        MovieEvent::MovieReturned { .. } => movie.available = !movie.retired,
    }
    movie.version = m.sequence;
    movie.revision = m.position;
    movie.updated_at = m.at;
    rows.dirty_movies.insert(m.id);
    if let Some((old, new)) = recount {
        rows.count(&old, -1);
        rows.count(&new, 1);
    }
    Ok(())
}

fn fold(rows: &mut Rows, changes: Vec<Change>) -> Result<(), ProjectionError> {
    for change in changes {
        match change {
            Change::Category(c) => apply_category(rows, c),
            Change::Movie(m) => apply_movie(rows, m)?,
        }
    }
    Ok(())
}

/// Writes the changed rows: upserts, or plain inserts into the empty tables of an in-memory
/// replay (which have no unique index to resolve conflicts with until the end).
async fn write(conn: &mut PgConnection, rows: &Rows, upsert: bool) -> Result<(), sqlx::Error> {
    let categories: Vec<&CategoryState> =
        rows.dirty_categories.iter().map(|id| &rows.categories[id]).collect();
    for chunk in categories.chunks(WRITE_CHUNK) {
        write_categories(conn, chunk, upsert).await?;
    }
    let movies: Vec<&MovieState> = rows.dirty_movies.iter().map(|id| &rows.movies[id]).collect();
    for chunk in movies.chunks(WRITE_CHUNK) {
        write_movies(conn, chunk, &rows.categories, upsert).await?;
    }
    Ok(())
}

async fn write_categories(
    conn: &mut PgConnection,
    dirty: &[&CategoryState],
    upsert: bool,
) -> Result<(), sqlx::Error> {
    let conflict = if upsert {
        "on conflict (category_id) do update
            set name = excluded.name, name_key = excluded.name_key, movie_count = excluded.movie_count,
                revision = excluded.revision"
    } else {
        ""
    };
    sqlx::query(&format!(
        "insert into category (category_id, name, name_key, movie_count, revision)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[]) {conflict}"
    ))
    .bind(dirty.iter().map(|c| c.category_id).collect::<Vec<_>>())
    .bind(dirty.iter().map(|c| c.name.as_str()).collect::<Vec<_>>())
    .bind(dirty.iter().map(|c| NameKey::of(&c.name).into_string()).collect::<Vec<_>>())
    .bind(dirty.iter().map(|c| c.movie_count).collect::<Vec<_>>())
    .bind(dirty.iter().map(|c| c.revision).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_movies(
    conn: &mut PgConnection,
    dirty: &[&MovieState],
    categories: &HashMap<Uuid, CategoryState>,
    upsert: bool,
) -> Result<(), sqlx::Error> {
    let names = |m: &MovieState| -> serde_json::Value {
        m.category_ids.iter().filter_map(|id| categories.get(id).map(|c| c.name.clone())).collect()
    };
    let ids =
        |m: &MovieState| -> serde_json::Value { m.category_ids.iter().map(|id| id.to_string()).collect() };
    // Arrays of arrays cannot be bound as columns (PostgreSQL arrays are rectangular), so the
    // per-row category ids and names travel as JSON arrays.
    let conflict = if upsert {
        "on conflict (movie_id) do update set
            title = excluded.title, storyline = excluded.storyline, director = excluded.director,
            release_date = excluded.release_date, rating_tenths = excluded.rating_tenths,
            category_ids = excluded.category_ids, category_names = excluded.category_names,
            available = excluded.available, retired = excluded.retired, times_rented = excluded.times_rented,
            version = excluded.version, revision = excluded.revision, search = excluded.search,
            added_at = excluded.added_at, updated_at = excluded.updated_at"
    } else {
        ""
    };
    sqlx::query(&format!(
        "insert into movie (movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
                            category_names, available, retired, times_rented, version, revision, search,
                            added_at, updated_at)
         select u.movie_id, u.title, u.storyline, u.director, u.release_date, u.rating_tenths,
                array(select jsonb_array_elements_text(u.category_ids)::uuid),
                array(select jsonb_array_elements_text(u.category_names)),
                u.available, u.retired, u.times_rented, u.version, u.revision,
                lower(u.title || ' ' || u.storyline || ' ' || coalesce(u.director, '')),
                u.added_at, u.updated_at
           from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::date[], $6::smallint[], $7::jsonb[],
                       $8::jsonb[], $9::bool[], $10::bool[], $11::bigint[], $12::bigint[], $13::bigint[],
                       $14::timestamptz[], $15::timestamptz[])
                as u(movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
                     category_names, available, retired, times_rented, version, revision, added_at, updated_at)
         {conflict}"
    ))
    .bind(dirty.iter().map(|m| m.movie_id).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.title.as_str()).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.storyline.as_str()).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.director.as_deref()).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.release_date).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.rating_tenths).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| ids(m)).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| names(m)).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.available).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.retired).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.times_rented).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.version).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.revision).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.added_at).collect::<Vec<_>>())
    .bind(dirty.iter().map(|m| m.updated_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
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

const MOVIE_COLUMNS: &str =
    "movie_id, title, storyline, director, release_date, rating_tenths, category_names,
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

/// How many listed rows per wanted row the first strategy of [`CatalogueReader::movies`] looks
/// at: past it, matches are rarer than one in this many, and gathering them all is the cheaper
/// way.
const WALK_PER_ROW: i64 = 50;

/// The listing's own conditions: live, availability, after the cursor. `available` is written
/// as a literal so the planner can use the partial index of available movies.
fn push_listed(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &MovieFilter) {
    query.push("not retired");
    match filter.available {
        Some(true) => query.push(" and available"),
        Some(false) => query.push(" and not available"),
        None => query,
    };
    if let Some((title, id)) = &filter.after {
        query.push(" and (title, movie_id) > (").push_bind(title.clone()).push(", ").push_bind(*id).push(")");
    }
}

/// The category and the search words.
fn push_matching(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &MovieFilter) {
    if let Some(category) = filter.category {
        query.push(" and category_ids @> array[").push_bind(category).push("]::uuid[]");
    }
    for word in &filter.words {
        query.push(" and search like lower(").push_bind(like_pattern(word)).push(")");
    }
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

/// Whether a `read.category` row lacks its name's key.
pub async fn category_keys_missing(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists(select 1 from read.category where name_key is null)")
        .fetch_one(conn)
        .await
}

/// Computes the name key of every `read.category` row again and stores those that differ (the
/// read model is not where names are unique, so no two keys are weighed against each other);
/// returns how many changed. A row renamed meanwhile by the projector keeps the key it wrote.
pub async fn recompute_category_keys(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("select category_id, name, name_key from read.category").fetch_all(&mut *conn).await?;
    let changes: Vec<(Uuid, &str, String)> = rows
        .iter()
        .map(|(id, name, stored)| (*id, name.as_str(), stored, NameKey::of(name)))
        .filter(|(_, _, stored, key)| stored.as_deref() != Some(key.as_str()))
        .map(|(id, name, _, key)| (id, name, key.into_string()))
        .collect();
    sqlx::query(
        "update read.category c set name_key = u.key
           from unnest($1::uuid[], $2::text[], $3::text[]) as u(category_id, name, key)
          where c.category_id = u.category_id and c.name = u.name",
    )
    .bind(changes.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
    .bind(changes.iter().map(|(_, name, _)| *name).collect::<Vec<_>>())
    .bind(changes.iter().map(|(_, _, key)| key.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(changes.len() as u64)
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
