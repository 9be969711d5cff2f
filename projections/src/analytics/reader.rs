//! The analytics as the API reads them.

use super::*;

/// What revenue is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevenueGroup {
    /// One row per category (a movie counts in each of its categories).
    Category,
    /// One row per movie.
    Movie,
    /// One row per UTC day of return.
    Day,
}

/// UTC days, `from` inclusive, `to` exclusive; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Days {
    /// First day counted.
    pub from: Option<NaiveDate>,
    /// First day not counted.
    pub to: Option<NaiveDate>,
}

impl Days {
    /// The start of `from`, UTC.
    pub fn from_time(&self) -> Option<DateTime<Utc>> {
        self.from.map(|d| d.and_time(NaiveTime::MIN).and_utc())
    }

    /// The start of `to`, UTC.
    pub fn to_time(&self) -> Option<DateTime<Utc>> {
        self.to.map(|d| d.and_time(NaiveTime::MIN).and_utc())
    }
}

/// One revenue row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevenueRow {
    /// Category id, movie id or date (`YYYY-MM-DD`).
    pub key: String,
    /// Category name, movie title or date.
    pub label: String,
    /// Charges counted (rentals returned in the period).
    pub rentals: i64,
    /// Sum of those charges, in cents.
    pub revenue_cents: i64,
    /// What has been paid of them, in cents.
    pub paid_cents: i64,
}

/// A movie and how often it was rented.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TopMovieRow {
    /// The movie.
    pub movie_id: Uuid,
    /// Its current title.
    pub title: String,
    /// Rentals started in the period.
    pub rentals: i64,
}

/// How much of a period a movie's copy was rented.
#[derive(Debug, Clone, PartialEq)]
pub struct UtilizationRow {
    /// The movie.
    pub movie_id: Uuid,
    /// Its current title.
    pub title: String,
    /// Time rented within the period, in seconds.
    pub rented_seconds: f64,
    /// The period's length, in seconds.
    pub period_seconds: f64,
    /// `rented_seconds / period_seconds` (0 for an empty period).
    pub share: f64,
}

const REVENUE_SUMS: &str = "sum(d.charges)::bigint as rentals, sum(d.revenue_cents)::bigint as revenue_cents,
     sum(d.paid_cents)::bigint as paid_cents";

const DAY_RANGE: &str = "($1::date is null or d.day >= $1::date) and ($2::date is null or d.day < $2::date)";

/// Reads the analytics.
#[derive(Debug, Clone)]
pub struct AnalyticsReader {
    pool: PgPool,
}

impl AnalyticsReader {
    /// A reader over the pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Charges assessed for rentals returned within `days`, grouped. Categories and movies come
    /// by revenue (highest first), then label; days in date order.
    pub async fn revenue(&self, group: RevenueGroup, days: Days) -> Result<Vec<RevenueRow>, sqlx::Error> {
        let sql = match group {
            RevenueGroup::Day => format!(
                "select to_char(d.day, 'YYYY-MM-DD') as key, to_char(d.day, 'YYYY-MM-DD') as label, {REVENUE_SUMS}
                   from read.analytics_movie_day d
                  where {DAY_RANGE}
                  group by d.day having sum(d.charges) > 0
                  order by d.day"
            ),
            RevenueGroup::Movie => format!(
                "select d.movie_id::text as key, coalesce(m.title, '') as label, {REVENUE_SUMS}
                   from read.analytics_movie_day d
                   left join read.analytics_movie m on m.movie_id = d.movie_id
                  where {DAY_RANGE}
                  group by d.movie_id, m.title having sum(d.charges) > 0
                  order by revenue_cents desc, label, key"
            ),
            RevenueGroup::Category => format!(
                "select c.category_id::text as key, coalesce(ac.name, '') as label, {REVENUE_SUMS}
                   from read.analytics_movie_day d
                   join read.analytics_movie m on m.movie_id = d.movie_id
                   cross join lateral unnest(m.category_ids) as c(category_id)
                   left join read.analytics_category ac on ac.category_id = c.category_id
                  where {DAY_RANGE}
                  group by c.category_id, ac.name having sum(d.charges) > 0
                  order by revenue_cents desc, label, key"
            ),
        };
        sqlx::query_as::<_, RevenueRow>(&sql).bind(days.from).bind(days.to).fetch_all(&self.pool).await
    }

    /// The movies with the most rentals started within `days`, most rented first (then by title).
    pub async fn top_movies(&self, days: Days, limit: i64) -> Result<Vec<TopMovieRow>, sqlx::Error> {
        sqlx::query_as::<_, TopMovieRow>(&format!(
            "select d.movie_id, coalesce(m.title, '') as title, sum(d.rentals_started)::bigint as rentals
               from read.analytics_movie_day d
               left join read.analytics_movie m on m.movie_id = d.movie_id
              where {DAY_RANGE}
              group by d.movie_id, m.title having sum(d.rentals_started) > 0
              order by rentals desc, title, d.movie_id
              limit $3"
        ))
        .bind(days.from)
        .bind(days.to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The earliest time the analytics know of: the first category, movie or rental.
    pub async fn origin(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(
            "select least((select min(created_at) from read.analytics_category),
                          (select min(added_at) from read.analytics_movie),
                          (select min(rented_at) from read.analytics_rental))",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// How much of `[from, to)` each movie's copy was rented; an open rental counts until `now`.
    /// Every movie in the catalogue during the period is listed (also at 0), and any other movie
    /// rented in it; most rented first, then by title.
    pub async fn utilization(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<UtilizationRow>, sqlx::Error> {
        let rows: Vec<(Uuid, String, f64)> = sqlx::query_as(
            "with rented as (
                 select r.movie_id,
                        sum(extract(epoch from least(coalesce(r.returned_at, $3), $2) - greatest(r.rented_at, $1)))
                            as seconds
                   from read.analytics_rental r
                  where r.rented_at < $2 and least(coalesce(r.returned_at, $3), $2) > greatest(r.rented_at, $1)
                  group by r.movie_id)
             select m.movie_id, m.title, coalesce(x.seconds, 0)::float8 as rented_seconds
               from read.analytics_movie m
               left join rented x on x.movie_id = m.movie_id
              where x.seconds > 0 or (m.added_at < $2 and (m.retired_at is null or m.retired_at >= $1))
              order by rented_seconds desc, m.title, m.movie_id",
        )
        .bind(from)
        .bind(to)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let period = ((to - from).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0);
        Ok(rows
            .into_iter()
            .map(|(movie_id, title, rented_seconds)| UtilizationRow {
                movie_id,
                title,
                rented_seconds,
                period_seconds: period,
                share: if period > 0.0 { rented_seconds / period } else { 0.0 },
            })
            .collect())
    }
}
