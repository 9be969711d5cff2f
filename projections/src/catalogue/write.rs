//! Loading the rows a batch changes and writing them back; the categories' name keys.

use super::*;
use crate::engine::rows_by_id;

/// Loads every row the batch can change: its movies, the movies of renamed categories, and every
/// category those movies or the events name.
pub(super) async fn load(conn: &mut PgConnection, events: &[LogEvent]) -> Result<Rows, sqlx::Error> {
    let mut movie_ids = HashSet::new();
    let mut category_ids = HashSet::new();
    let mut renamed = HashSet::new();
    for e in events {
        match &e.event {
            Event::Category(event) => {
                category_ids.insert(e.stream);
                if matches!(event, CategoryEvent::CategoryRenamed { .. }) {
                    renamed.insert(e.stream);
                }
            }
            Event::Movie(event) => {
                movie_ids.insert(e.stream);
                if let MovieEvent::MovieAdded { category_ids: ids, .. }
                | MovieEvent::MovieUpdated { category_ids: Some(ids), .. } = event
                {
                    category_ids.extend(ids.ids());
                }
            }
            Event::Rental(_) => {}
        }
    }
    let movie_ids: Vec<Uuid> = movie_ids.into_iter().collect();
    let renamed: Vec<Uuid> = renamed.into_iter().collect();
    // Two statements, not one with `or`: each uses its own index.
    let mut movies: Vec<MovieState> =
        rows_by_id(conn, &format!("select {STATE_COLUMNS} from movie where movie_id = any($1)"), &movie_ids)
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
    let categories: Vec<CategoryState> = rows_by_id(
        conn,
        "select category_id, name, movie_count, revision from category where category_id = any($1)",
        &category_ids,
    )
    .await?;
    Ok(Rows {
        categories: categories.into_iter().map(|c| (c.category_id, c)).collect(),
        movies: movies.into_iter().map(|m| (m.movie_id, m)).collect(),
        ..Rows::default()
    })
}

const STATE_COLUMNS: &str = "movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
     available, retired, times_rented, version, revision, added_at, updated_at";

// The columns of each table's written rows, in the order both writers send them (`search` is
// generated from the row).
const CATEGORY_ROW: &str = "category_id, name, name_key, movie_count, revision";
const MOVIE_ROW: &str = "movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
     category_names, available, retired, times_rented, version, revision, added_at, updated_at";

/// Writes the changed rows: upserts, or a bulk copy into the empty tables of an in-memory replay
/// (which have no unique index to resolve conflicts with until the end).
pub(super) async fn write(conn: &mut PgConnection, rows: &Rows, mode: WriteMode) -> Result<(), sqlx::Error> {
    let categories: Vec<&CategoryState> =
        rows.dirty_categories.iter().map(|id| &rows.categories[id]).collect();
    let movies: Vec<&MovieState> = rows.dirty_movies.iter().map(|id| &rows.movies[id]).collect();
    if mode == WriteMode::Bulk {
        return copy_rows(conn, &categories, &movies, &rows.categories).await;
    }
    for chunk in categories.chunks(WRITE_CHUNK) {
        upsert_categories(conn, chunk).await?;
    }
    for chunk in movies.chunks(WRITE_CHUNK) {
        upsert_movies(conn, chunk, &rows.categories).await?;
    }
    Ok(())
}

/// The names of a movie's categories, in the order of its ids (a category not loaded is left out).
fn category_names(movie: &MovieState, categories: &HashMap<Uuid, CategoryState>) -> Vec<String> {
    movie.category_ids.iter().filter_map(|id| categories.get(id).map(|c| c.name.clone())).collect()
}

async fn upsert_categories(conn: &mut PgConnection, dirty: &[&CategoryState]) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "insert into category ({CATEGORY_ROW})
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])
         on conflict (category_id) do update
            set name = excluded.name, name_key = excluded.name_key, movie_count = excluded.movie_count,
                revision = excluded.revision"
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

async fn upsert_movies(
    conn: &mut PgConnection,
    dirty: &[&MovieState],
    categories: &HashMap<Uuid, CategoryState>,
) -> Result<(), sqlx::Error> {
    let names = |m: &MovieState| -> serde_json::Value { category_names(m, categories).into() };
    let ids =
        |m: &MovieState| -> serde_json::Value { m.category_ids.iter().map(|id| id.to_string()).collect() };
    // Arrays of arrays cannot be bound as columns (PostgreSQL arrays are rectangular), so the
    // per-row category ids and names travel as JSON arrays. `search` is generated from the row.
    sqlx::query(&format!(
        "insert into movie ({MOVIE_ROW})
         select u.movie_id, u.title, u.storyline, u.director, u.release_date, u.rating_tenths,
                array(select jsonb_array_elements_text(u.category_ids)::uuid),
                array(select jsonb_array_elements_text(u.category_names)),
                u.available, u.retired, u.times_rented, u.version, u.revision, u.added_at, u.updated_at
           from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::date[], $6::smallint[], $7::jsonb[],
                       $8::jsonb[], $9::bool[], $10::bool[], $11::bigint[], $12::bigint[], $13::bigint[],
                       $14::timestamptz[], $15::timestamptz[])
                as u(movie_id, title, storyline, director, release_date, rating_tenths, category_ids,
                     category_names, available, retired, times_rented, version, revision, added_at, updated_at)
         on conflict (movie_id) do update set
            title = excluded.title, storyline = excluded.storyline, director = excluded.director,
            release_date = excluded.release_date, rating_tenths = excluded.rating_tenths,
            category_ids = excluded.category_ids, category_names = excluded.category_names,
            available = excluded.available, retired = excluded.retired, times_rented = excluded.times_rented,
            version = excluded.version, revision = excluded.revision,
            added_at = excluded.added_at, updated_at = excluded.updated_at"
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

/// A replay's rows, copied into the empty shadow tables.
async fn copy_rows(
    conn: &mut PgConnection,
    categories: &[&CategoryState],
    movies: &[&MovieState],
    loaded: &HashMap<Uuid, CategoryState>,
) -> Result<(), sqlx::Error> {
    let mut copy = BulkCopy::into(conn, "category", CATEGORY_ROW).await?;
    for c in categories {
        copy.row()
            .await?
            .value(c.category_id)
            .value(c.name.as_str())
            .value(NameKey::of(&c.name).into_string())
            .value(c.movie_count)
            .value(c.revision);
    }
    copy.finish().await?;
    let mut copy = BulkCopy::into(conn, "movie", MOVIE_ROW).await?;
    for m in movies {
        copy.row()
            .await?
            .value(m.movie_id)
            .value(m.title.as_str())
            .value(m.storyline.as_str())
            .value(m.director.as_deref())
            .value(m.release_date)
            .value(m.rating_tenths)
            .value(&m.category_ids)
            .value(category_names(m, loaded))
            .value(m.available)
            .value(m.retired)
            .value(m.times_rented)
            .value(m.version)
            .value(m.revision)
            .value(m.added_at)
            .value(m.updated_at);
    }
    copy.finish().await?;
    Ok(())
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
