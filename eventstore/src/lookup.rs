//! The synchronous lookup tables: written in the append transaction, read by the API for checks
//! that cannot wait for a projection (does this category exist, whose is this rental).
//! Not read models: they hold only what those checks need.

use chrono::{DateTime, Utc};
use domain::name_key::{self, Collision, NameKey};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A unique rule of the lookup tables that a command's append can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// Category names are unique by their [`NameKey`].
    CategoryName,
}

impl Constraint {
    /// The rule a unique index of the schema enforces, by the index's name.
    pub(crate) fn of_index(name: &str) -> Option<Self> {
        match name {
            "category_lookup_name_key" => Some(Self::CategoryName),
            _ => None,
        }
    }
}

pub(crate) fn parse_stream_id(aggregate_id: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(aggregate_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(crate) async fn upsert_category(
    conn: &mut PgConnection,
    category_id: Uuid,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into category_lookup (category_id, name, name_key) values ($1, $2, $3)
         on conflict (category_id) do update set name = excluded.name, name_key = excluded.name_key",
    )
    .bind(category_id)
    .bind(name)
    .bind(NameKey::of(name).as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Rentals to enter into the rental lookup, column by column.
#[derive(Default)]
pub(crate) struct NewRentals {
    rental_ids: Vec<Uuid>,
    movie_ids: Vec<Uuid>,
    customer_ids: Vec<Uuid>,
    rented_at: Vec<DateTime<Utc>>,
}

impl NewRentals {
    pub(crate) fn push(
        &mut self,
        rental_id: Uuid,
        movie_id: Uuid,
        customer_id: Uuid,
        rented_at: DateTime<Utc>,
    ) {
        self.rental_ids.push(rental_id);
        self.movie_ids.push(movie_id);
        self.customer_ids.push(customer_id);
        self.rented_at.push(rented_at);
    }

    /// Inserts them all in one statement (none: no statement).
    pub(crate) async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.rental_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into rental_lookup (rental_id, movie_id, customer_id, rented_at)
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[])",
        )
        .bind(&self.rental_ids)
        .bind(&self.movie_ids)
        .bind(&self.customer_ids)
        .bind(&self.rented_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Returns to mark in the rental lookup.
#[derive(Default)]
pub(crate) struct Returns {
    rental_ids: Vec<Uuid>,
    returned_at: Vec<DateTime<Utc>>,
}

impl Returns {
    pub(crate) fn push(&mut self, rental_id: Uuid, returned_at: DateTime<Utc>) {
        self.rental_ids.push(rental_id);
        self.returned_at.push(returned_at);
    }

    /// Marks them all in one statement (none: no statement).
    pub(crate) async fn mark(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.rental_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            // `any($1)` lets the planner walk the primary key rather than join the whole table.
            "update rental_lookup l set returned_at = r.returned_at
               from unnest($1::uuid[], $2::timestamptz[]) as r(rental_id, returned_at)
              where l.rental_id = any($1) and l.rental_id = r.rental_id",
        )
        .bind(&self.rental_ids)
        .bind(&self.returned_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Sets each movie's categories to the ones given (none: it is in no category), in two
/// statements for them all.
pub(crate) async fn set_movie_categories(
    conn: &mut PgConnection,
    movies: &[(Uuid, &[Uuid])],
) -> Result<(), sqlx::Error> {
    if movies.is_empty() {
        return Ok(());
    }
    let movie_ids: Vec<Uuid> = movies.iter().map(|(movie, _)| *movie).collect();
    let (categories, members): (Vec<Uuid>, Vec<Uuid>) = movies
        .iter()
        .flat_map(|(movie, categories)| categories.iter().map(move |category| (*category, *movie)))
        .unzip();
    sqlx::query("delete from category_movie_lookup where movie_id = any($1)")
        .bind(&movie_ids)
        .execute(&mut *conn)
        .await?;
    if categories.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into category_movie_lookup (category_id, movie_id)
         select * from unnest($1::uuid[], $2::uuid[])",
    )
    .bind(&categories)
    .bind(&members)
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

/// The id of the category with this name (by its [`NameKey`]), when there is one.
pub async fn category_id_by_name(pool: &PgPool, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select category_id from category_lookup where name_key = $1")
        .bind(NameKey::of(name).as_str())
        .fetch_optional(pool)
        .await
}

/// Whether a category lacks its name's key.
pub async fn category_keys_missing(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists(select 1 from category_lookup where name_key is null)")
        .fetch_one(conn)
        .await
}

/// What computing the categories' keys again found.
#[derive(Debug, Default)]
pub struct CategoryKeys {
    /// Keys written (a new key, or a key removed).
    pub changed: u64,
    /// Categories whose names share a key (id and name of each): the second keeps no key, so it
    /// is not found by name and takes no name from others until it is renamed.
    pub collisions: Vec<Collision<(Uuid, String)>>,
}

/// Computes every category's name key again and stores those that differ; `conn`'s transaction
/// holds `category_lookup` against writers. Where names share a key, the oldest category (ids
/// are time-ordered) keeps it.
pub async fn recompute_category_keys(conn: &mut PgConnection) -> Result<CategoryKeys, sqlx::Error> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("select category_id, name, name_key from category_lookup order by category_id")
            .fetch_all(&mut *conn)
            .await?;
    let settled = name_key::settle(rows.iter().map(|(id, name, _)| ((*id, name.clone()), name.as_str())));
    let stored: std::collections::HashMap<Uuid, Option<&str>> =
        rows.iter().map(|(id, _, key)| (*id, key.as_deref())).collect();
    let changes: Vec<(Uuid, Option<String>)> =
        settled.changes(|(id, _)| stored[id]).into_iter().map(|((id, _), key)| (id, key)).collect();
    store_name_keys(conn, "category_lookup", "category_id", "name_key", &changes).await?;
    Ok(CategoryKeys { changed: changes.len() as u64, collisions: settled.collisions })
}

/// Writes name keys that changed into `table.key_column`, by `id_column` (`None` removes a key):
/// every changing key is cleared first, then the new ones set, so a key moving from one row to
/// another never meets itself in the unique index.
pub async fn store_name_keys(
    conn: &mut PgConnection,
    table: &'static str,
    id_column: &'static str,
    key_column: &'static str,
    changes: &[(Uuid, Option<String>)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = changes.iter().map(|(id, _)| *id).collect();
    let keys: Vec<Option<&str>> = changes.iter().map(|(_, key)| key.as_deref()).collect();
    sqlx::query(&format!("update {table} set {key_column} = null where {id_column} = any($1)"))
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "update {table} t set {key_column} = c.key
           from unnest($1::uuid[], $2::text[]) as c(id, key)
          where t.{id_column} = c.id and c.key is not null"
    ))
    .bind(&ids)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    Ok(())
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
