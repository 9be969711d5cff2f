//! Idempotency records on a real database: claiming, the mark in the append transaction, stored
//! answers, release, expiry.

use std::time::Duration;

use domain::category::{Category, CategoryCommand};
use domain::values::CategoryName;
use eventstore::idempotency::{self, Claim, ClaimOutcome, Fingerprint, StoredAnswer};
use eventstore::{CommandContext, CommandError, EventStore};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(15);
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

fn request<'a>(key: &'a str, body_hash: &'a [u8]) -> Fingerprint<'a> {
    Fingerprint { scope: "anonymous", key, method: "POST", path: "/api/v1/categories", body_hash }
}

pub(crate) async fn claimed(pool: &PgPool, key: &str, body_hash: &[u8]) -> Claim {
    match idempotency::claim(pool, &request(key, body_hash), LEASE, TTL).await.unwrap() {
        ClaimOutcome::Claimed(claim) => claim,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn answer() -> StoredAnswer {
    StoredAnswer { status: 201, headers: json!([["x-position", "1"]]), nonce: vec![1; 12], body: vec![9, 9] }
}

pub(crate) fn create(name: &str) -> CategoryCommand {
    CategoryCommand::CreateCategory { name: CategoryName::parse(name).unwrap() }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_claimed_key_is_in_progress_then_replayed_and_another_request_under_it_is_a_mismatch(pool: PgPool) {
    // Arrange
    let claim = claimed(&pool, "k1", b"body-a").await;

    // Act
    let during = idempotency::claim(&pool, &request("k1", b"body-a"), LEASE, TTL).await.unwrap();
    assert!(idempotency::complete(&pool, &claim, &answer()).await.unwrap());
    let after = idempotency::claim(&pool, &request("k1", b"body-a"), LEASE, TTL).await.unwrap();
    let other = idempotency::claim(&pool, &request("k1", b"body-b"), LEASE, TTL).await.unwrap();

    // Assert
    assert!(matches!(during, ClaimOutcome::InProgress), "{during:?}");
    match after {
        ClaimOutcome::Replay(stored) => assert_eq!((stored.status, stored.body), (201, vec![9, 9])),
        other => panic!("expected the stored answer, got {other:?}"),
    }
    assert!(matches!(other, ClaimOutcome::Mismatch), "{other:?}");
    assert!(!idempotency::complete(&pool, &claim, &answer()).await.unwrap(), "an answer is stored once");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_append_transaction_marks_the_claim_so_a_released_claim_that_appended_stays_taken(pool: PgPool) {
    // Arrange
    let store = EventStore::new(pool.clone());
    let appended = claimed(&pool, "k-appended", b"x").await;
    let idle = claimed(&pool, "k-idle", b"x").await;

    // Act
    let context = CommandContext { claim: Some(appended.clone()), ..Default::default() };
    let committed =
        store.execute::<Category>(&Uuid::now_v7().to_string(), create("Drama"), &context).await.unwrap();
    idempotency::release(&pool, &appended).await.unwrap();
    idempotency::release(&pool, &idle).await.unwrap();

    // Assert
    let after = idempotency::claim(&pool, &request("k-appended", b"x"), LEASE, TTL).await.unwrap();
    match after {
        ClaimOutcome::AnswerLost { position } => assert_eq!(position, committed.position),
        other => panic!("a key whose command appended never runs again, got {other:?}"),
    }
    let freed = idempotency::claim(&pool, &request("k-idle", b"x"), LEASE, TTL).await.unwrap();
    assert!(
        matches!(freed, ClaimOutcome::Claimed(_)),
        "a claim that appended nothing is free again: {freed:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_append_under_a_claim_taken_over_by_another_request_is_rolled_back(pool: PgPool) {
    // Arrange: the claim's lease ran out and another request took the key over.
    let store = EventStore::new(pool.clone());
    let stale = claimed(&pool, "k", b"x").await;
    sqlx::query("update idempotency set lease_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let _newer = claimed(&pool, "k", b"x").await;
    let id = Uuid::now_v7().to_string();

    // Act
    let context = CommandContext { claim: Some(stale), ..Default::default() };
    let result = store.execute::<Category>(&id, create("Drama"), &context).await;

    // Assert
    assert!(matches!(result, Err(CommandError::ClaimLost)), "{result:?}");
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 0, "nothing was appended");
}

#[sqlx::test(migrations = "../migrations")]
async fn expired_records_are_ignored_taken_over_and_purged(pool: PgPool) {
    // Arrange
    let old = claimed(&pool, "old", b"a").await;
    idempotency::complete(&pool, &old, &answer()).await.unwrap();
    let gone = claimed(&pool, "gone", b"a").await;
    idempotency::complete(&pool, &gone, &answer()).await.unwrap();
    let fresh = claimed(&pool, "fresh", b"a").await;
    idempotency::complete(&pool, &fresh, &answer()).await.unwrap();
    sqlx::query("update idempotency set expires_at = now() - interval '1 second' where key <> 'fresh'")
        .execute(&pool)
        .await
        .unwrap();

    // Act
    let reused = idempotency::claim(&pool, &request("old", b"another body"), LEASE, TTL).await.unwrap();
    let purged = idempotency::purge_expired(&pool, 100).await.unwrap();

    // Assert
    assert!(matches!(reused, ClaimOutcome::Claimed(_)), "an expired key is a new key: {reused:?}");
    assert_eq!(purged, 1, "only the expired record that was not taken over");
    let keys: Vec<String> =
        sqlx::query_scalar("select key from idempotency order by key").fetch_all(&pool).await.unwrap();
    assert_eq!(keys, ["fresh", "old"]);
}
