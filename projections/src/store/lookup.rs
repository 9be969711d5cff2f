//! The synchronous lookup tables: written in the append transaction, read by the API for checks
//! that cannot wait for a projection (does this category exist, whose is this rental).
//! Not read models: they hold only what those checks need.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The unique index that makes category names unique case-insensitively.
pub const CATEGORY_NAME_CONSTRAINT: &str = "category_lookup_name";

pub(crate) fn parse_stream_id(aggregate_id: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(aggregate_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(crate) async fn upsert_category(
    conn: &mut PgConnection,
    category_id: Uuid,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into category_lookup (category_id, name) values ($1, $2)
         on conflict (category_id) do update set name = excluded.name",
    )
    .bind(category_id)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn insert_rental(
    conn: &mut PgConnection,
    rental_id: Uuid,
    movie_id: Uuid,
    customer_id: Uuid,
    rented_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into rental_lookup (rental_id, movie_id, customer_id, rented_at)
         values ($1, $2, $3, $4)",
    )
    .bind(rental_id)
    .bind(movie_id)
    .bind(customer_id)
    .bind(rented_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn mark_rental_returned(
    conn: &mut PgConnection,
    rental_id: Uuid,
    returned_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("update rental_lookup set returned_at = $2 where rental_id = $1")
        .bind(rental_id)
        .bind(returned_at)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn set_movie_categories(
    conn: &mut PgConnection,
    movie_id: Uuid,
    category_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from category_movie_lookup where movie_id = $1")
        .bind(movie_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into category_movie_lookup (category_id, movie_id)
         select unnest($1::uuid[]), $2",
    )
    .bind(category_ids)
    .bind(movie_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many live (not retired) movies a category holds.
pub async fn category_movie_count(pool: &PgPool, category_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from category_movie_lookup where category_id = $1")
        .bind(category_id)
        .fetch_one(pool)
        .await
}

/// A rental as the lookup knows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RentalRef {
    /// The rental.
    pub rental_id: Uuid,
    /// The movie rented.
    pub movie_id: Uuid,
    /// Who rented it.
    pub customer_id: Uuid,
    /// When it started.
    pub rented_at: DateTime<Utc>,
    /// When the copy came back, once it did.
    pub returned_at: Option<DateTime<Utc>>,
}

/// Finds a rental by id.
pub async fn find_rental(pool: &PgPool, rental_id: Uuid) -> Result<Option<RentalRef>, sqlx::Error> {
    sqlx::query_as(
        "select rental_id, movie_id, customer_id, rented_at, returned_at
           from rental_lookup where rental_id = $1",
    )
    .bind(rental_id)
    .fetch_optional(pool)
    .await
}

/// The movies among `movie_ids` that this customer has ever rented.
pub async fn movies_rented_by(
    pool: &PgPool,
    customer_id: Uuid,
    movie_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct movie_id from rental_lookup where customer_id = $1 and movie_id = any($2)",
    )
    .bind(customer_id)
    .bind(movie_ids)
    .fetch_all(pool)
    .await
}

/// The ids of the movies added with these titles, one per title (the first added), in no order.
pub async fn movie_ids_titled(pool: &PgPool, titles: &[String]) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "select distinct on (payload->>'title') payload->>'title', aggregate_id::uuid
           from events
          where aggregate_type = 'movie' and event_type = 'MovieAdded' and payload->>'title' = any($1)
          order by payload->>'title', position",
    )
    .bind(titles)
    .fetch_all(pool)
    .await
}

/// The names of the given categories, in the order asked; `None` for an id that does not exist.
pub async fn category_names(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Option<String>>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select category_id, name from category_lookup where category_id = any($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(ids
        .iter()
        .map(|id| rows.iter().find(|(found, _)| found == id).map(|(_, name)| name.clone()))
        .collect())
}

/// The id of the category with this name (case-insensitive), when there is one.
pub async fn category_id_by_name(pool: &PgPool, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select category_id from category_lookup where lower(name) = lower($1)")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Which of the given titles were ever added as a movie, with the release dates they were added
/// with. Read from the log itself (not a read model), so it holds the moment an add has answered.
pub async fn added_movies_titled(
    pool: &PgPool,
    titles: &[String],
) -> Result<Vec<(String, chrono::NaiveDate)>, sqlx::Error> {
    sqlx::query_as(
        "select payload->>'title', (payload->>'release_date')::date
           from events
          where aggregate_type = 'movie' and event_type = 'MovieAdded'
            and payload->>'title' = any($1)",
    )
    .bind(titles)
    .fetch_all(pool)
    .await
}

/// The numbers of the movies ever added whose storyline starts with `prefix` followed by a number
/// and a colon (how generated catalogues mark their movies), read from the log.
pub async fn added_movie_numbers(pool: &PgPool, prefix: &str) -> Result<Vec<i64>, sqlx::Error> {
    let like = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let pattern = format!("^{}([0-9]+):", regex_escape(prefix));
    sqlx::query_scalar(
        "select ((regexp_match(payload->>'storyline', $2))[1])::bigint
           from events
          where aggregate_type = 'movie' and event_type = 'MovieAdded'
            and payload->>'storyline' like $1
            and payload->>'storyline' ~ $2",
    )
    .bind(like)
    .bind(pattern)
    .fetch_all(pool)
    .await
}

fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_alphanumeric() && c != ' ' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
