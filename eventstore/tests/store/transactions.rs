//! Starting transactions on a real database: a caller dropped while its transaction begins (a
//! client gone mid-request, a timeout) leaves no connection of the pool inside it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The state of session `pid` in `pg_stat_activity` (`idle`, `idle in transaction`, ...).
async fn session_state(pool: &PgPool, pid: i32) -> String {
    sqlx::query_scalar("select state from pg_stat_activity where pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls a begin until PostgreSQL has run its `BEGIN` on session `pid` (its answer not read
/// yet), then drops it: a caller cancelled at the worst moment. `false` when it finished first.
async fn cancel_once_begun<F: Future>(begin: F, observer: &PgPool, pid: i32) -> bool {
    let mut begin = pin!(begin);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if begin.as_mut().poll(&mut context).is_ready() {
            return false;
        }
        // Give a `BEGIN` on the wire the time to run before polling again (which would read
        // its answer).
        let looked_until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while std::time::Instant::now() < looked_until {
            if session_state(observer, pid).await == "idle in transaction" {
                return true;
            }
        }
    }
    panic!("the transaction neither began nor finished");
}

/// Waits until the one connection of `pool` is back in it and in no transaction.
async fn settled(pool: &PgPool, observer: &PgPool, pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pool.num_idle() == 0 || session_state(observer, pid).await != "idle" {
        assert!(std::time::Instant::now() < deadline, "the connection stays inside a transaction");
        tokio::task::yield_now().await;
    }
}

/// Rows of `marks` that other sessions see.
async fn committed_marks(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from marks").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_caller_dropped_while_its_transaction_begins_leaves_no_connection_inside_it(pool: PgPool) {
    // Arrange: a pool of one connection, so every statement after a cancelled begin runs on the
    // connection that begin used (taken without a test query, so a begin sends its `BEGIN` in
    // its first poll).
    const ATTEMPTS: i32 = 25;
    sqlx::query("create table marks (n int primary key)").execute(&pool).await.unwrap();
    let one = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&one).await.unwrap();

    // Act 1, the defect worked around: sqlx's own begin, dropped between its `BEGIN` and the
    // answer, hands the connection back inside a transaction; the next statement through the
    // pool runs in it, and no other session sees what it wrote.
    // (A begin whose answer came within the poll that sent it finished; it is tried again.)
    let mut leaked = false;
    for _ in 0..200 {
        settled(&one, &pool, pid).await;
        #[allow(clippy::disallowed_methods)] // the defect itself
        let begin = one.begin();
        if cancel_once_begun(begin, &pool, pid).await {
            leaked = true;
            break;
        }
    }
    sqlx::query("insert into marks values (0)").execute(&one).await.unwrap();
    let (leaked_state, leaked_visible) = (session_state(&pool, pid).await, committed_marks(&pool).await);
    sqlx::query("rollback").execute(&one).await.unwrap();

    // Act 2: the store's begin, dropped the same way, each time followed by a write through the
    // pool.
    let mut cancelled_mid_begin = 0;
    for n in 1..=ATTEMPTS {
        settled(&one, &pool, pid).await;
        if cancel_once_begun(eventstore::db::begin(&one), &pool, pid).await {
            cancelled_mid_begin += 1;
        }
        sqlx::query("insert into marks values ($1)").bind(n).execute(&one).await.unwrap();
    }

    // Assert
    assert!(leaked, "sqlx's begin was dropped after its BEGIN ran");
    assert_eq!(
        (leaked_state.as_str(), leaked_visible),
        ("idle in transaction", 0),
        "sqlx's begin no longer leaves a cancelled transaction open: the workaround can go"
    );
    assert!(cancelled_mid_begin > 0, "at least one of the store's begins was dropped after its BEGIN ran");
    assert_eq!(
        committed_marks(&pool).await,
        i64::from(ATTEMPTS),
        "every write after a dropped begin committed"
    );
    assert_eq!(session_state(&pool, pid).await, "idle", "the connection is in no transaction");
    println!(
        "cancelled begins: sqlx's own left its connection {leaked_state:?} with its write unseen; \
         {cancelled_mid_begin} of {ATTEMPTS} of the store's were dropped after their BEGIN ran, 0 writes lost"
    );
}
