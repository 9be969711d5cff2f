//! The email outbox on a real database: the notifications projection queues each rental email
//! once however often a batch is applied, overdue reminders repeat every 3 days while the rental
//! is out and stop at 3 or at the return, and two claimers never share a row.

use chrono::{DateTime, Utc};
use domain::loan::LoanPolicy;
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand};
use eventstore::{BatchCommand, EventStore, Metadata};
use projections::engine::{Engine, EngineConfig};
use projections::notifications::{self as outbox, kind, NewEmail};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

async fn rows(pool: &PgPool, rental: Uuid) -> Vec<(String, i16)> {
    sqlx::query_as("select kind, seq from notification where rental_id = $1 order by kind, seq")
        .bind(rental)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn reminder_timer(pool: &PgPool, rental: Uuid) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("select due_at from deadline where stream_id = $1 and kind = 'reminder'")
        .bind(rental.to_string())
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Makes the rental's reminder timer due now.
async fn make_timer_due(pool: &PgPool, rental: Uuid) {
    sqlx::query(
        "update deadline set due_at = now() - interval '1 second' where stream_id = $1 and kind = 'reminder'",
    )
    .bind(rental.to_string())
    .execute(pool)
    .await
    .unwrap();
}

/// A rental lookup row, as the rent writes it, and an overdue rental's first reminder with its
/// timer, as the projection writes them.
async fn overdue_rental(pool: &PgPool) -> (Uuid, Uuid) {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "insert into rental_lookup (rental_id, movie_id, customer_id, rented_at)
         values ($1, $2, $3, now() - interval '8 days')",
    )
    .bind(rental)
    .bind(Uuid::now_v7())
    .bind(customer)
    .execute(pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let data = json!({"due_at": Utc::now() - chrono::Duration::days(1), "number": 1});
    let trigger = Uuid::now_v7();
    let reminder = NewEmail {
        kind: kind::OVERDUE_REMINDER,
        user_id: customer,
        rental_id: Some(rental),
        trigger_id: trigger,
        seq: 1,
        data,
        secret: None,
    };
    assert!(outbox::insert(&mut conn, reminder).await.unwrap());
    sqlx::query(
        "insert into deadline (stream_id, kind, due_at) values ($1, 'reminder', now() + interval '2 days')",
    )
    .bind(rental.to_string())
    .execute(pool)
    .await
    .unwrap();
    (rental, customer)
}

#[sqlx::test(migrations = "../migrations")]
async fn reminders_repeat_every_3_days_while_the_rental_is_out_and_stop_at_the_third(pool: PgPool) {
    let (rental, _) = overdue_rental(&pool).await;

    // Not due yet: nothing.
    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 0);
    make_timer_due(&pool, rental).await;
    let before = Utc::now();
    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 1);
    let moved = reminder_timer(&pool, rental).await.expect("the timer moves on after the second");
    assert!(moved > before + chrono::Duration::days(2), "3 days after the due time it fired at: {moved}");
    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 0, "fired once");
    make_timer_due(&pool, rental).await;
    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 1);
    assert_eq!(reminder_timer(&pool, rental).await, None, "no timer after the third reminder");
    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 0);

    let queued = rows(&pool, rental).await;
    let expected: Vec<(String, i16)> = (1..=3).map(|n| (kind::OVERDUE_REMINDER.to_string(), n)).collect();
    assert_eq!(queued, expected, "three reminders in all");
    let numbers: Vec<i64> = sqlx::query_scalar(
        "select (data->>'number')::int8 from notification where rental_id = $1 order by seq",
    )
    .bind(rental)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(numbers, [1, 2, 3]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_returned_rental_gets_no_more_reminders(pool: PgPool) {
    let (rental, _) = overdue_rental(&pool).await;
    sqlx::query("update rental_lookup set returned_at = now() where rental_id = $1")
        .bind(rental)
        .execute(&pool)
        .await
        .unwrap();
    make_timer_due(&pool, rental).await;

    assert_eq!(outbox::fire_reminders(&pool, 100).await.unwrap(), 0);
    assert_eq!(reminder_timer(&pool, rental).await, None, "the timer is dropped");
    assert_eq!(rows(&pool, rental).await.len(), 1, "only the first reminder");
}

#[sqlx::test(migrations = "../migrations")]
async fn two_claimers_never_share_a_row_and_the_queue_goes_oldest_first(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..30 {
        let user = Uuid::now_v7();
        outbox::insert(&mut conn, welcome(user)).await.unwrap();
    }
    drop(conn);

    let (one, two) = tokio::join!(outbox::claim(&pool, 20), outbox::claim(&pool, 20));
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(one.len() + two.len(), 30, "every row claimed once");
    let mut ids: Vec<Uuid> = one.iter().chain(&two).map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "no row twice");
    assert!(one.windows(2).all(|w| (w[0].created_at, w[0].id) <= (w[1].created_at, w[1].id)), "oldest first");
    assert!(outbox::claim(&pool, 20).await.unwrap().is_empty(), "leased rows are not claimed again");
    assert_eq!(outbox::queue_depth(&pool).await.unwrap(), 30);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_projection_queues_each_rental_email_once_even_when_a_batch_runs_again(pool: PgPool) {
    // Arrange: a rental opened (as the payments process manager does), its lookup row as the rent
    // writes it.
    let store = EventStore::new(pool.clone());
    let (rental, customer, movie) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let rented_at = Utc::now() - chrono::Duration::days(1);
    sqlx::query(
        "insert into rental_lookup (rental_id, movie_id, customer_id, rented_at) values ($1, $2, $3, $4)",
    )
    .bind(rental)
    .bind(movie)
    .bind(customer)
    .bind(rented_at)
    .execute(&pool)
    .await
    .unwrap();
    let open = BatchCommand {
        aggregate_id: rental.to_string(),
        command: RentalCommand::OpenRental {
            movie_id: movie,
            customer_id: customer,
            rented_at,
            loan: LoanPolicy::default(),
        },
        metadata: Metadata::default(),
    };
    store.execute_batch::<Rental>(vec![open]).await.unwrap();
    let engine = Engine::new(
        pool.clone(),
        projections::all(store.clone(), PricePlan::default(), LoanPolicy::default(), Default::default()),
        EngineConfig::default(),
    );

    // Act: the projection catches up, then its checkpoint is put back and it runs again. (The
    // log is read behind every running transaction of the cluster, other tests' included, so
    // catching up may take a few rounds.)
    let caught_up = || async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            engine.catch_up(outbox::NAME).await.unwrap();
            let position: i64 =
                sqlx::query_scalar("select last_position from projection_checkpoint where name = $1")
                    .bind(outbox::NAME)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let last: i64 =
                sqlx::query_scalar("select max(position) from events").fetch_one(&pool).await.unwrap();
            if position >= last {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the projection did not catch up");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    caught_up().await;
    sqlx::query("update projection_checkpoint set last_xid = 0, last_position = 0 where name = $1")
        .bind(outbox::NAME)
        .execute(&pool)
        .await
        .unwrap();
    caught_up().await;

    // Assert
    assert_eq!(rows(&pool, rental).await, [(kind::RENTAL_RECEIPT.to_string(), 1)]);
    let (user, data): (Uuid, serde_json::Value) =
        sqlx::query_as("select user_id, data from notification where rental_id = $1")
            .bind(rental)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(user, customer);
    assert_eq!(data["movie_id"], json!(movie));
    assert!(data["due_at"].is_string() && data.get("email").is_none(), "times, no address: {data}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_paused_queue_gives_nothing_until_the_pause_ends_and_released_rows_keep_their_place(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..3 {
        let user = Uuid::now_v7();
        outbox::insert(&mut conn, welcome(user)).await.unwrap();
    }
    drop(conn);
    let first = outbox::claim(&pool, 3).await.unwrap();
    assert_eq!(first.len(), 3);

    // The first one fails to reach the server: the queue pauses, the other two go back.
    outbox::pause_queue(&pool, std::time::Duration::from_millis(500)).await.unwrap();
    outbox::release(&pool, &[first[1].id, first[2].id]).await.unwrap();
    assert!(outbox::claim(&pool, 3).await.unwrap().is_empty(), "nothing while paused");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let again = outbox::claim(&pool, 3).await.unwrap();
    let ids: Vec<Uuid> = again.iter().map(|r| r.id).collect();
    assert_eq!(ids, [first[1].id, first[2].id], "the released rows, in their order");
}

/// A welcome email for an account.
fn welcome(user: Uuid) -> NewEmail<'static> {
    NewEmail {
        kind: kind::WELCOME,
        user_id: user,
        rental_id: None,
        trigger_id: user,
        seq: 1,
        data: json!({}),
        secret: None,
    }
}
