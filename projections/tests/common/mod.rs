//! Helpers shared by the projection tests. Each test binary compiles this module and uses some of
//! it, so unused helpers are allowed.
#![allow(dead_code)]

use sqlx::PgConnection;
use uuid::Uuid;

/// Appends one category event inside `conn`'s transaction (raw, to control commit order);
/// returns its position.
pub async fn append(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             event_id)
         values ('category', $1, 1, 'CategoryCreated', '1.0', '{\"name\": \"x\"}', '{}', $2)
         returning position",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(Uuid::now_v7())
    .fetch_one(conn)
    .await
    .unwrap()
}
