//! Helpers shared by the event store's tests.

use uuid::Uuid;

/// A valid movie in `categories`.
pub fn movie_details(title: &str, categories: &[Uuid]) -> domain::movie::MovieDetails {
    use domain::values::{CategoryIds, Rating, Storyline, Title};
    domain::movie::MovieDetails {
        title: Title::parse(title).unwrap(),
        storyline: Storyline::parse("A story.").unwrap(),
        release_date: chrono::NaiveDate::from_ymd_opt(1995, 12, 15).unwrap(),
        rating: Rating::parse(8.3).unwrap(),
        director: None,
        category_ids: CategoryIds::parse(categories.to_vec()).unwrap(),
    }
}

/// The movie state stored in `id`'s snapshot row.
pub async fn movie_snapshot(pool: &sqlx::PgPool, id: &str) -> domain::movie::Movie {
    let payload: serde_json::Value = sqlx::query_scalar(
        "select payload from snapshots where aggregate_type = 'movie' and aggregate_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    serde_json::from_value(payload).unwrap()
}
