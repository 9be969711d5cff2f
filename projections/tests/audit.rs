//! The audit reader on a real database: the feed's horizon, the export's pages, and the state
//! folded from events stored in an older version.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use domain::rental::{Rental, RentalStatus};
use projections::audit::{self, AuditLog, Export};
use projections::engine::{Checkpoint, EventFilter, StoredEvent};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

mod common;
use common::append;

/// Every position in the projections' order.
async fn log_order(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("select position from events order by transaction_id, position")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Pages the feed from the start with `limit` until it returns `count` events. The horizon is
/// cluster-wide: a write transaction of a test running in parallel (in another database) can
/// hold events back for a moment.
async fn read_until(log: &AuditLog, limit: i64, count: usize) -> Vec<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        let mut after = Checkpoint::default();
        loop {
            let page = log.page(after, limit, &EventFilter::default()).await.unwrap();
            let Some(last) = page.last() else { break };
            after = audit::checkpoint_of(last);
            seen.extend(page.iter().map(|e| e.position));
        }
        if seen.len() >= count {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "the feed never released {count} events");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_feed_holds_back_a_transaction_still_open_and_every_later_one_until_it_commits(pool: PgPool) {
    // Arrange: one committed event, then A opens and appends, then B appends and commits.
    let log = AuditLog::new(pool.clone());
    let first = append(&mut pool.acquire().await.unwrap()).await;
    let mut a = eventstore::db::begin(&pool).await.unwrap();
    let early = append(&mut a).await;
    let late = append(&mut pool.acquire().await.unwrap()).await;

    // Act
    let while_open = read_until(&log, 1, 1).await;
    a.commit().await.unwrap();
    let after_commit = read_until(&log, 2, 3).await;

    // Assert: B is not shown before A, so a reader past B can never miss A.
    assert_eq!(while_open, [first], "only what precedes the open transaction is released");
    assert_eq!(after_commit, [first, early, late]);
    assert_eq!(after_commit, log_order(&pool).await);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_export_reads_the_log_page_by_page_in_feed_order_and_stops_at_its_end(pool: PgPool) {
    // Arrange: 23 events; the transaction of one takes its id first and appends last, so its
    // event comes first in feed order although its position is the highest.
    let mut late = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *late).await.unwrap();
    for _ in 0..22 {
        append(&mut pool.acquire().await.unwrap()).await;
    }
    append(&mut late).await;
    late.commit().await.unwrap();
    let log = AuditLog::new(pool.clone());
    read_until(&log, 100, 23).await;
    let order = log_order(&pool).await;
    assert_ne!(
        order,
        {
            let mut sorted = order.clone();
            sorted.sort();
            sorted
        },
        "feed order is not position order"
    );

    for (page, expected_chunks) in [(5, vec![5, 5, 5, 5, 3]), (23, vec![23]), (100, vec![23])] {
        // Act
        let mut export =
            Export::new(log.clone(), Checkpoint::default(), EventFilter::default()).with_page_size(page);
        let mut chunks = Vec::new();
        let mut lines = Vec::new();
        while let Some((chunk, events)) = export.next_chunk().await.unwrap() {
            chunks.push(events);
            assert_eq!(chunk.lines().count() as u64, events, "one line per event");
            lines.extend(chunk.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }

        // Assert
        assert_eq!(chunks, expected_chunks, "pages of {page}");
        let positions: Vec<i64> = lines.iter().map(|e| e["position"].as_i64().unwrap()).collect();
        assert_eq!(positions, order, "pages of {page}: every event once, in feed order");
        assert!(lines.iter().all(|e| e["type"] == "CategoryCreated" && e["stream_type"] == "category"));
    }
}

fn stored(sequence: i64, event_type: &str, event_version: &str, payload: Value) -> StoredEvent {
    StoredEvent {
        position: sequence,
        xid: 1,
        event_id: Uuid::now_v7(),
        aggregate_type: "rental".into(),
        aggregate_id: "0190a7e4-0000-7000-8000-000000000001".into(),
        sequence,
        event_type: event_type.into(),
        event_version: event_version.into(),
        payload,
        metadata: json!({}),
        recorded_at: Utc::now(),
    }
}

#[test]
fn folding_a_rental_whose_payment_is_stored_in_version_1_gives_the_paid_state() {
    // Arrange
    let movie = Uuid::now_v7();
    let customer = Uuid::now_v7();
    let rented_at = Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap();
    let returned_at = Utc.with_ymd_and_hms(2026, 3, 3, 9, 0, 0).unwrap();
    let paid_at = Utc.with_ymd_and_hms(2026, 3, 3, 10, 0, 0).unwrap();
    let plan = serde_json::to_value(domain::price::PricePlan::default()).unwrap();
    let events = [
        stored(
            1,
            "RentalOpened",
            "1.0",
            json!({"movie_id": movie, "customer_id": customer, "rented_at": rented_at}),
        ),
        stored(2, "RentalClosed", "1.0", json!({"returned_at": returned_at})),
        stored(
            3,
            "ChargeAssessed",
            "1.0",
            json!({"days": 1, "amount_cents": 100, "currency": "EUR", "plan": plan}),
        ),
        stored(4, "RentalPaid", "1.0", json!({"amount_cents": 100, "paid_at": paid_at})),
    ];

    // Act
    let rebuilt = audit::fold::<Rental>(&events).unwrap().expect("a rental");
    let before_payment = audit::fold::<Rental>(&events[..3]).unwrap().expect("a rental");

    // Assert
    assert_eq!(rebuilt.version, 4);
    assert_eq!(rebuilt.state.status(), Some(RentalStatus::Paid));
    assert_eq!(rebuilt.state.paid_at, Some(paid_at));
    assert_eq!(before_payment.state.status(), Some(RentalStatus::Charged));
    assert!(audit::fold::<Rental>(&[]).unwrap().is_none(), "no events, no state");
}
