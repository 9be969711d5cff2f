//! The due-date scheduler on a real database: timers set and cancelled in the append
//! transactions of the rental's own events, fired exactly once by racing schedulers, skipped
//! (not waited for) while another transaction holds them, and harmless when late.

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use domain::loan::LoanPolicy;
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand};
use eventstore::{BatchCommand, CommandOutcome, EventStore, Metadata};
use projections::deadlines::{self, Scheduler, SchedulerConfig};
use sqlx::PgPool;
use uuid::Uuid;

/// Fast rounds, no grace: these tests set timers that are due at once on purpose.
fn config(batch: i64) -> SchedulerConfig {
    SchedulerConfig { batch, poll: Duration::from_millis(20), grace: Duration::ZERO }
}

fn days_ago(days: i64) -> DateTime<Utc> {
    (Utc::now() - chrono::Duration::days(days)).duration_trunc(chrono::Duration::seconds(1)).unwrap()
}

fn opening(request: &str) -> Metadata {
    Metadata {
        actor_id: Some(Uuid::now_v7()),
        request_id: Some(request.to_string()),
        correlation_id: Some(request.to_string()),
        causation_id: Some(Uuid::now_v7()),
    }
}

/// Opens `n` rentals rented `days` days ago under the default 7-day loan, in batches like the
/// payments process manager's; returns their ids.
async fn open_rentals(store: &EventStore, n: usize, days: i64) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    for chunk in ids.chunks(100) {
        let commands = chunk
            .iter()
            .map(|id| BatchCommand {
                aggregate_id: id.to_string(),
                command: RentalCommand::OpenRental {
                    movie_id: Uuid::now_v7(),
                    customer_id: Uuid::now_v7(),
                    rented_at: days_ago(days),
                    loan: LoanPolicy::default(),
                },
                metadata: opening(&format!("rent-{id}")),
            })
            .collect();
        let outcomes = store.execute_batch::<Rental>(commands).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, CommandOutcome::Appended(e) if e.len() == 1)));
    }
    ids
}

async fn timers(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from deadline").fetch_one(pool).await.unwrap()
}

/// Per rental stream: how many `RentalOverdue` it holds.
async fn overdue_counts(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select aggregate_id, count(*) from events
          where aggregate_type = 'rental' and event_type = 'RentalOverdue'
          group by aggregate_id order by aggregate_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn opening_a_rental_sets_its_timer_at_the_due_time_in_the_same_transaction(pool: PgPool) {
    // Arrange / Act
    let store = EventStore::new(pool.clone());
    let ids = open_rentals(&store, 3, 2).await;

    // Assert: one timer per rental, due 7 days after its rent, as recorded in RentalOpened.
    let rows: Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "select d.stream_id, d.kind, d.due_at, (e.payload->>'due_at')::timestamptz
           from deadline d join events e on e.aggregate_type = 'rental' and e.aggregate_id = d.stream_id
          where e.event_type = 'RentalOpened' order by d.stream_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    for (stream, kind, due_at, recorded) in &rows {
        assert!(ids.iter().any(|id| id.to_string() == *stream));
        assert_eq!(kind, "overdue");
        assert_eq!(due_at, recorded);
        // Within the second the rents were stamped in (a clock read here may fall in the next).
        let expected = days_ago(2) + chrono::Duration::days(7);
        assert!((*due_at - expected).num_seconds().abs() <= 1, "{due_at} vs {expected}");
    }
    let version: String =
        sqlx::query_scalar("select distinct event_version from events where event_type = 'RentalOpened'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(version, "2.0");
}

#[sqlx::test(migrations = "../migrations")]
async fn two_schedulers_racing_over_200_due_timers_fire_each_exactly_once(pool: PgPool) {
    // Arrange: 200 rentals rented 8 days ago, so every timer is a day overdue.
    let store = EventStore::new(pool.clone());
    let ids = open_rentals(&store, 200, 8).await;
    assert_eq!(timers(&pool).await, 200);
    let a = Scheduler::with_config(pool.clone(), EventStore::new(pool.clone()), config(20));
    let b = Scheduler::with_config(pool.clone(), EventStore::new(pool.clone()), config(20));

    // Act: both fire rounds as fast as they can until neither finds anything due.
    let race = |scheduler: Scheduler| async move {
        let (mut claimed, mut overdue, mut rounds, mut idle) = (0, 0, 0, 0);
        let started = Instant::now();
        while idle < 3 {
            assert!(started.elapsed() < Duration::from_secs(60), "the race did not end");
            let round = scheduler.fire_due().await.unwrap();
            rounds += 1;
            claimed += round.claimed;
            overdue += round.overdue;
            if round.claimed == 0 && !round.contended {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (claimed, overdue, rounds)
    };
    let (first, second) = tokio::join!(tokio::spawn(race(a)), tokio::spawn(race(b)));
    let ((claimed_a, overdue_a, rounds_a), (claimed_b, overdue_b, rounds_b)) =
        (first.unwrap(), second.unwrap());
    println!(
        "scheduler A: {claimed_a} timers claimed, {overdue_a} RentalOverdue in {rounds_a} rounds; \
         scheduler B: {claimed_b} claimed, {overdue_b} RentalOverdue in {rounds_b} rounds"
    );

    // Assert: every timer was claimed by exactly one of them, and fired exactly once.
    assert_eq!(claimed_a + claimed_b, 200, "no timer is claimed twice or missed");
    assert_eq!(overdue_a + overdue_b, 200);
    let counts = overdue_counts(&pool).await;
    assert_eq!(counts.len(), 200, "200 rentals overdue");
    assert!(counts.iter().all(|(_, n)| *n == 1), "none twice: {counts:?}");
    let mut expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(counts.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(timers(&pool).await, 0, "every timer deleted with the event it fired");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_overdue_event_records_the_due_time_and_the_chain_of_the_rent(pool: PgPool) {
    // Arrange
    let store = EventStore::new(pool.clone());
    let ids = open_rentals(&store, 1, 10).await;
    let scheduler = Scheduler::with_config(pool.clone(), store.clone(), config(10));

    // Act
    let round = scheduler.fire_due().await.unwrap();

    // Assert
    assert_eq!((round.claimed, round.overdue), (1, 1));
    let (payload, metadata): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "select payload, metadata from events where aggregate_id = $1 and event_type = 'RentalOverdue'",
    )
    .bind(ids[0].to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    // The due time is the rent's own time plus the loan, read back from the opening event (a
    // clock read here could fall in the next second).
    let rented_at: DateTime<Utc> = sqlx::query_scalar(
        "select (payload->>'rented_at')::timestamptz from events \
         where aggregate_id = $1 and event_type = 'RentalOpened'",
    )
    .bind(ids[0].to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    let due_at = rented_at + chrono::Duration::days(7);
    assert_eq!(payload, serde_json::json!({ "due_at": due_at }));
    assert_eq!(
        metadata,
        serde_json::json!({
            "actor_id": null, "request_id": null,
            "correlation_id": format!("rent-{}", ids[0]), "causation_id": null
        })
    );
    let status = deadlines::status(&pool).await.unwrap();
    assert_eq!((status.name.as_str(), status.lag_events), (deadlines::NAME, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_return_before_the_due_time_cancels_the_timer_and_nothing_fires(pool: PgPool) {
    // Arrange: rented 3 days ago, due in 4 days.
    let store = EventStore::new(pool.clone());
    let ids = open_rentals(&store, 2, 3).await;
    let close = RentalCommand::CloseRental { returned_at: days_ago(1), plan: PricePlan::default() };

    // Act
    let closed =
        store.execute::<Rental>(&ids[0].to_string(), close, &opening("return").into()).await.unwrap();

    // Assert: the close's own transaction deleted that timer; the other one is still set, and
    // neither is due, so a round fires nothing.
    assert_eq!(closed.events.len(), 2);
    let left: Vec<String> =
        sqlx::query_scalar("select stream_id from deadline").fetch_all(&pool).await.unwrap();
    assert_eq!(left, vec![ids[1].to_string()]);
    let round = Scheduler::with_config(pool.clone(), store, config(10)).fire_due().await.unwrap();
    assert_eq!(round, deadlines::Round::default());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_late_timer_for_a_returned_rental_records_nothing_and_is_deleted(pool: PgPool) {
    // Arrange: a rental returned after its due time, before any scheduler ran; its timer is set
    // again by hand as if the return's cancellation had been skipped.
    let store = EventStore::new(pool.clone());
    let ids = open_rentals(&store, 1, 9).await;
    let close = RentalCommand::CloseRental { returned_at: days_ago(0), plan: PricePlan::default() };
    store.execute::<Rental>(&ids[0].to_string(), close, &opening("return").into()).await.unwrap();
    sqlx::query(
        "insert into deadline (stream_id, kind, due_at, created_at) values ($1, 'overdue', $2, now() - interval '1 day')",
    )
    .bind(ids[0].to_string())
    .bind(days_ago(2))
    .execute(&pool)
    .await
    .unwrap();

    // Act
    let round = Scheduler::with_config(pool.clone(), store, config(10)).fire_due().await.unwrap();

    // Assert
    assert_eq!((round.claimed, round.overdue), (1, 0));
    assert!(overdue_counts(&pool).await.is_empty());
    assert_eq!(timers(&pool).await, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn timers_another_transaction_holds_are_skipped_and_fire_once_it_rolls_back(pool: PgPool) {
    // Arrange: 4 due timers; another transaction (a scheduler that will crash) holds 2 of them.
    let store = EventStore::new(pool.clone());
    open_rentals(&store, 4, 8).await;
    let mut crashing = eventstore::db::begin(&pool).await.unwrap();
    let held: Vec<String> =
        sqlx::query_scalar("select stream_id from deadline order by stream_id limit 2 for update")
            .fetch_all(&mut *crashing)
            .await
            .unwrap();
    let scheduler = Scheduler::with_config(pool.clone(), store, config(10));

    // Act: a round does not wait for the held rows.
    let started = Instant::now();
    let first = scheduler.fire_due().await.unwrap();
    let waited = started.elapsed();
    crashing.rollback().await.unwrap();
    let second = scheduler.fire_due().await.unwrap();

    // Assert
    println!("first round {first:?} in {waited:?}; after the rollback {second:?}");
    assert_eq!((first.claimed, first.overdue), (2, 2));
    assert!(waited < Duration::from_secs(2), "skipped, not waited for: {waited:?}");
    assert_eq!((second.claimed, second.overdue), (2, 2));
    let counts = overdue_counts(&pool).await;
    assert_eq!(counts.len(), 4);
    assert!(counts.iter().all(|(_, n)| *n == 1));
    assert!(held.iter().all(|id| counts.iter().any(|(s, _)| s == id)));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_timer_set_when_already_due_waits_out_the_grace_after_it_was_set(pool: PgPool) {
    // Arrange: a back-dated rental whose due time passed a day ago, set just now.
    let store = EventStore::new(pool.clone());
    open_rentals(&store, 1, 8).await;
    let grace = SchedulerConfig { grace: Duration::from_millis(700), ..config(10) };
    let scheduler = Scheduler::with_config(pool.clone(), store, grace);

    // Act / Assert: not yet, then once the grace has passed.
    assert_eq!(scheduler.fire_due().await.unwrap().claimed, 0);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(scheduler.fire_due().await.unwrap().overdue, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rental_opened_in_version_1_is_due_7_days_after_its_rent_fires_and_replays_equal(pool: PgPool) {
    // Arrange: a log written before due dates existed: `MovieRented` and `RentalOpened` 1.0 (no
    // `due_at`), and the timer the migration gives such a rental.
    let (movie, rental, customer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let rented_at = days_ago(9);
    let stored = [
        (
            "movie",
            movie,
            "MovieRented",
            serde_json::json!({"rental_id": rental, "customer_id": customer, "rented_at": rented_at}),
        ),
        (
            "rental",
            rental,
            "RentalOpened",
            serde_json::json!({"movie_id": movie, "customer_id": customer, "rented_at": rented_at}),
        ),
    ];
    for (stream, id, event_type, payload) in stored {
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                                 metadata, event_id)
             values ($1, $2, 1, $3, '1.0', $4, '{\"correlation_id\": \"old-rent\"}', $5)",
        )
        .bind(stream)
        .bind(id.to_string())
        .bind(event_type)
        .bind(payload)
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    }
    let due_at = rented_at + chrono::Duration::days(7);
    sqlx::query("insert into deadline (stream_id, kind, due_at, created_at) values ($1, 'overdue', $2, $3)")
        .bind(rental.to_string())
        .bind(due_at)
        .bind(rented_at)
        .execute(&pool)
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());

    // Act
    let loaded = store.load::<Rental>(&rental.to_string()).await.unwrap();
    let round = Scheduler::with_config(pool.clone(), store.clone(), config(10)).fire_due().await.unwrap();
    let engine = projections::engine::Engine::new(
        pool.clone(),
        projections::all(store, PricePlan::default(), LoanPolicy::default(), Default::default()),
        projections::engine::EngineConfig::default(),
    );
    // The horizon is cluster-wide: catch up until each checkpoint has passed the last event.
    let last: i64 = sqlx::query_scalar("select max(position) from events").fetch_one(&pool).await.unwrap();
    for name in [projections::rentals::NAME, projections::analytics::NAME] {
        let started = Instant::now();
        loop {
            engine.catch_up(name).await.unwrap();
            let at: i64 =
                sqlx::query_scalar("select last_position from projection_checkpoint where name = $1")
                    .bind(name)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if at >= last {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{name} stuck at {at}, short of {last}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Assert: the upcast due time everywhere, one RentalOverdue at it, replays equal to live rows.
    assert_eq!(loaded.state.due_at, Some(due_at));
    assert_eq!((round.claimed, round.overdue), (1, 1));
    let (payload, correlation): (serde_json::Value, Option<String>) = sqlx::query_as(
        "select payload, metadata->>'correlation_id' from events where event_type = 'RentalOverdue'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload, serde_json::json!({ "due_at": due_at }));
    assert_eq!(correlation.as_deref(), Some("old-rent"));
    let row = projections::rentals::RentalsReader::new(pool.clone()).rental(rental).await.unwrap().unwrap();
    assert_eq!((row.due_at, row.overdue_at), (Some(due_at), Some(due_at)));
    for name in [projections::rentals::NAME, projections::analytics::NAME] {
        let projection = engine.projection(name).unwrap();
        let diffs = projections::rebuild::verify(&pool, projection.clone(), &()).await.unwrap();
        assert_eq!(diffs, vec![], "{name}");
        projections::rebuild::rebuild(&pool, projection.clone(), &()).await.unwrap();
        assert_eq!(
            projections::rebuild::verify(&pool, projection, &()).await.unwrap(),
            vec![],
            "{name} rebuilt"
        );
    }
    let version: String =
        sqlx::query_scalar("select event_version from events where event_type = 'RentalOpened'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(version, "1.0", "the stored payload is never rewritten");
}
