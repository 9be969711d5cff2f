//! The store's notifier on a real database, seen from a listener as projectors see it: a
//! notification after commits, far fewer notifications than commits in a burst, recovery after
//! its connection is lost, and a clean stop when the pool closes.

use std::time::Duration;

use domain::category::{Category, CategoryCommand};
use domain::values::CategoryName;
use eventstore::{CommandContext, EventStore, EVENTS_CHANNEL};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn listener(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen(EVENTS_CHANNEL).await.unwrap();
    listener
}

/// Creates a category in a transaction of its own (not grouped with others: the notifier is
/// about many commits); returns the position of its event.
async fn commit(store: &EventStore) -> i64 {
    let name = CategoryName::parse(&format!("Category {}", Uuid::now_v7())).unwrap();
    let command = CategoryCommand::CreateCategory { name };
    let done = store
        .execute_alone::<Category>(&Uuid::now_v7().to_string(), command, &CommandContext::default())
        .await
        .unwrap();
    done.position
}

/// The next notification's position, if one comes within `wait`.
async fn next(listener: &mut PgListener, wait: Duration) -> Option<i64> {
    let received = tokio::time::timeout(wait, listener.recv()).await.ok()?;
    Some(received.unwrap().payload().parse().unwrap())
}

/// Notifications until one announces `position` (or a later one), then any that follow within a
/// short quiet time; panics if `position` is not announced within 10 s.
async fn until(listener: &mut PgListener, position: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|last| *last < position) {
        let got = next(listener, Duration::from_secs(10)).await;
        seen.push(got.unwrap_or_else(|| panic!("position {position} never announced; got {seen:?}")));
    }
    while let Some(more) = next(listener, Duration::from_millis(300)).await {
        seen.push(more);
    }
    seen
}

/// The notifier's server process in this database, if it is connected.
async fn notifier_backend(conn: &mut PgConnection) -> Option<i32> {
    sqlx::query_scalar(
        "select pid from pg_stat_activity
          where datname = current_database() and application_name like '% notifier'",
    )
    .fetch_optional(conn)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_commit_wakes_a_listener_with_its_position(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut listener = listener(&pool).await;

    let position = commit(&store).await;

    assert_eq!(until(&mut listener, position).await, vec![position]);
    // Nothing more to announce: no further notification.
    assert_eq!(next(&mut listener, Duration::from_millis(300)).await, None);
}

/// How many sessions of this database wait for a lock.
async fn waiting(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_burst_of_commits_costs_far_fewer_notifications_than_commits(pool: PgPool) {
    // Arrange: a store with room for 32 appends at once, and a listener.
    let (rounds, writers) = (5, 32);
    let wide = PgPoolOptions::new()
        .max_connections(writers as u32 + 2)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let store = EventStore::new(wide.clone());
    let mut listener = listener(&pool).await;

    // Act: in each round, 32 appends wait behind a lock on the log, then commit together.
    let started = std::time::Instant::now();
    let mut last = 0;
    for _ in 0..rounds {
        let mut gate = eventstore::db::begin(&pool).await.unwrap();
        sqlx::query("lock table events in share mode").execute(&mut *gate).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let store = store.clone();
            tasks.spawn(async move { commit(&store).await });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while waiting(&pool).await < writers {
            assert!(std::time::Instant::now() < deadline, "the appends never all waited");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.commit().await.unwrap();
        while let Some(done) = tasks.join_next().await {
            last = last.max(done.unwrap());
        }
    }

    // Assert: the last commit was announced, by far fewer notifications than commits.
    let seen = until(&mut listener, last).await;
    let commits = (rounds * writers) as usize;
    println!("{commits} commits in {rounds} bursts ({:?}): {} notifications", started.elapsed(), seen.len());
    assert!(seen.len() * 4 <= commits, "{} notifications for {commits} commits", seen.len());
    assert_eq!(seen.iter().max(), Some(&last));
    wide.close().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_notifier_reconnects_after_losing_its_connection(pool: PgPool) {
    // Arrange: the notifier is connected and has announced a commit.
    let store = EventStore::new(pool.clone());
    let mut listener = listener(&pool).await;
    let first = commit(&store).await;
    until(&mut listener, first).await;
    let mut admin = PgConnection::connect_with(&pool.connect_options()).await.unwrap();
    let backend = notifier_backend(&mut admin).await.expect("the notifier is connected");

    // Act: the server drops its connection, then more commits land.
    let killed: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(backend)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    let second = commit(&store).await;

    // Assert: announced anyway, from a new connection.
    assert!(until(&mut listener, second).await.contains(&second));
    let again = notifier_backend(&mut admin).await.expect("the notifier is connected again");
    assert_ne!(again, backend);
    admin.close().await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn closing_the_pool_stops_the_notifier_and_closes_its_connection(pool: PgPool) {
    // Arrange
    let store = EventStore::new(pool.clone());
    commit(&store).await;
    let mut admin = PgConnection::connect_with(&pool.connect_options()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while notifier_backend(&mut admin).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the notifier never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act: the pool closes while the store is still alive.
    tokio::time::timeout(Duration::from_secs(5), pool.close()).await.expect("the pool closes at once");

    // Assert: the notifier's connection goes too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while notifier_backend(&mut admin).await.is_some() {
        assert!(std::time::Instant::now() < deadline, "the notifier's connection is still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.close().await.unwrap();
    drop(store);
}
