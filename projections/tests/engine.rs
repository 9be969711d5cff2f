//! The projection engine on a real database: ordering behind the horizon, checkpoints, locks.

use std::sync::Arc;
use std::time::Duration;

use projections::engine::{
    BatchOutcome, BoxFuture, Engine, EngineConfig, Projection, ProjectionError, StoredEvent, Touched,
};
use sqlx::{PgConnection, PgPool};

mod common;
use common::append;

/// Records every event it is given; a repeat violates the primary key and fails the batch.
struct Recorder;

impl Projection for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["seen"]
    }

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for event in events {
                sqlx::query(
                    "insert into seen (position, xid, ord) values ($1, $2, (select count(*) from seen))",
                )
                .bind(event.position)
                .bind(event.xid)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })
    }
}

async fn setup(pool: &PgPool) {
    sqlx::query(
        "create table read.seen (position bigint primary key, xid bigint not null, ord bigint not null)",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn engine(pool: &PgPool, batch_size: i64) -> Engine {
    let config = EngineConfig { batch_size, poll_interval: Duration::from_millis(5), ..Default::default() };
    Engine::new(pool.clone(), vec![Arc::new(Recorder)], config)
}

/// What a naive `position > n` reader collects.
async fn naive_read(pool: &PgPool, after: &mut i64, seen: &mut Vec<i64>) {
    let rows: Vec<i64> =
        sqlx::query_scalar("select position from events where position > $1 order by position")
            .bind(*after)
            .fetch_all(pool)
            .await
            .unwrap();
    if let Some(last) = rows.last() {
        *after = *last;
    }
    seen.extend(rows);
}

async fn recorded(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("select position, xid from read.seen order by ord").fetch_all(pool).await.unwrap()
}

/// Catches up until the recorder has seen `count` events. The horizon is cluster-wide: a write
/// transaction of a test running in parallel (in another database) can hold a batch back for a
/// moment, so one catch-up may stop short.
async fn catch_up_to(engine: &Engine, pool: &PgPool, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        engine.catch_up("recorder").await.unwrap();
        if recorded(pool).await.len() >= count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the recorder never reached {count} events");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_committed_late_is_not_skipped_as_a_naive_reader_skips_it(pool: PgPool) {
    // Arrange: A appends first but commits last; B appends after A and commits at once.
    setup(&pool).await;
    let engine = engine(&pool, 100);
    let mut a = eventstore::db::begin(&pool).await.unwrap();
    let early = append(&mut a).await;
    let mut b = eventstore::db::begin(&pool).await.unwrap();
    let late = append(&mut b).await;
    b.commit().await.unwrap();
    assert!(early < late);

    // Act: both readers look while A is still open, then again after A commits.
    let (mut naive_after, mut naive_seen) = (0, Vec::new());
    naive_read(&pool, &mut naive_after, &mut naive_seen).await;
    let held_back = engine.catch_up("recorder").await.unwrap();
    a.commit().await.unwrap();
    naive_read(&pool, &mut naive_after, &mut naive_seen).await;
    catch_up_to(&engine, &pool, 2).await;

    // Assert
    assert_eq!(naive_seen, vec![late], "the naive reader skipped the late commit for good");
    assert_eq!(held_back, 0, "the engine waited behind the open transaction");
    let seen: Vec<i64> = recorded(&pool).await.into_iter().map(|(p, _)| p).collect();
    assert_eq!(seen, vec![early, late], "the engine saw both, in transaction order");
}

#[sqlx::test(migrations = "../migrations")]
async fn under_concurrent_appends_with_open_transactions_every_event_is_applied_once_in_order(pool: PgPool) {
    // Arrange
    setup(&pool).await;
    let engine = engine(&pool, 7);
    let writers = 8;
    let per_writer = 25;

    // Act: writers append in transactions held open for a random while, so commits interleave
    // out of position order; the engine and a naive reader run throughout.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..per_writer {
                let mut tx = eventstore::db::begin(&pool).await.unwrap();
                append(&mut tx).await;
                if (w + i) % 3 == 0 {
                    append(&mut tx).await;
                }
                tokio::time::sleep(Duration::from_millis(((w * 7 + i * 13) % 11) as u64)).await;
                tx.commit().await.unwrap();
            }
        });
    }
    let (mut naive_after, mut naive_seen) = (0, Vec::new());
    let projector = {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                match engine.run_batch(&Recorder).await.unwrap() {
                    BatchOutcome::Applied(_) | BatchOutcome::Busy => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                }
            }
        })
    };
    while !tasks.is_empty() {
        naive_read(&pool, &mut naive_after, &mut naive_seen).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        while let Some(done) = tasks.try_join_next() {
            done.unwrap();
        }
    }
    projector.abort();
    engine.catch_up("recorder").await.unwrap();
    naive_read(&pool, &mut naive_after, &mut naive_seen).await;

    // Assert
    let all: Vec<(i64, i64)> = sqlx::query_as(
        "select position, transaction_id::text::bigint from events order by transaction_id, position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let seen = recorded(&pool).await;
    assert_eq!(seen, all, "every event exactly once, in (transaction, position) order");
    let skipped = all.len() - naive_seen.len();
    println!(
        "{} events from {writers} writers: engine applied {} (0 skipped, 0 repeated); naive reader skipped {skipped}",
        all.len(),
        seen.len()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_and_its_checkpoint_commit_together_and_a_second_process_waits_its_turn(pool: PgPool) {
    setup(&pool).await;
    let engine = engine(&pool, 100);
    engine.catch_up("recorder").await.unwrap();
    let mut tx = eventstore::db::begin(&pool).await.unwrap();
    append(&mut tx).await;
    tx.commit().await.unwrap();

    // Another process holds the projection's lock: this one must not apply the batch.
    let mut holder = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtext('projection:recorder'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(engine.run_batch(&Recorder).await.unwrap(), BatchOutcome::Busy);
    holder.rollback().await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match engine.run_batch(&Recorder).await.unwrap() {
            BatchOutcome::Applied(0) | BatchOutcome::Busy => {
                assert!(std::time::Instant::now() < deadline, "the event was never applied");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            applied => {
                assert_eq!(applied, BatchOutcome::Applied(1));
                break;
            }
        }
    }
    assert_eq!(engine.run_batch(&Recorder).await.unwrap(), BatchOutcome::Applied(0));
    let (position,): (i64,) =
        sqlx::query_as("select last_position from projection_checkpoint where name = 'recorder'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded(&pool).await.last().unwrap().0, position);
}

/// Records like [`Recorder`], except while `failing` is set: then every batch fails, or, when
/// `poison` holds a position, each batch holding that event, where the database refuses a
/// statement (as a read model's cast of a value it cannot hold would).
struct Flaky {
    failing: std::sync::atomic::AtomicBool,
    poison: std::sync::atomic::AtomicI64,
    attempts: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    fn failing_every_batch() -> Self {
        Self { failing: true.into(), poison: 0.into(), attempts: 0.into() }
    }

    fn failing_at(position: i64) -> Self {
        Self { failing: true.into(), poison: position.into(), attempts: 0.into() }
    }
}

impl Projection for Flaky {
    fn name(&self) -> &'static str {
        Recorder.name()
    }

    fn tables(&self) -> &'static [&'static str] {
        Recorder.tables()
    }

    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        use std::sync::atomic::Ordering;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let poison = self.poison.load(Ordering::SeqCst);
        let failing = self.failing.load(Ordering::SeqCst);
        Box::pin(async move {
            if failing && poison == 0 {
                return Err(ProjectionError::Decode("the handler is broken".into()));
            }
            if failing && events.iter().any(|e| e.position == poison) {
                sqlx::query("select 'not a date'::date").execute(&mut *conn).await?;
            }
            Recorder.apply_batch(conn, events, touched).await
        })
    }
}

/// Runs an engine over `projection` that retries a failed batch within 50 ms; cancel the token
/// and await the task to stop it.
fn run_with_quick_retries(
    pool: &PgPool,
    projection: Arc<Flaky>,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<Result<(), sqlx::Error>>) {
    let config = EngineConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..Default::default()
    };
    let engine = Engine::new(pool.clone(), vec![projection], config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    (shutdown, running)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failing_batch_is_retried_and_reported_and_never_skipped(pool: PgPool) {
    use std::sync::atomic::Ordering;
    // Arrange
    setup(&pool).await;
    let flaky = Arc::new(Flaky::failing_every_batch());
    let (shutdown, running) = run_with_quick_retries(&pool, flaky.clone());
    let mut tx = eventstore::db::begin(&pool).await.unwrap();
    append(&mut tx).await;
    append(&mut tx).await;
    tx.commit().await.unwrap();

    // Act + Assert: the error is reported while the batch keeps being retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = projections::engine::checkpoints(&pool).await.unwrap();
        // The engine's task creates the checkpoint row when it starts, which may be after this.
        let Some(recorder) = status.iter().find(|s| s.name == "recorder") else {
            assert!(std::time::Instant::now() < deadline, "the engine never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if recorder.state == "failing" && flaky.attempts.load(Ordering::SeqCst) >= 3 {
            let error = recorder.last_error.clone().unwrap_or_default();
            assert!(
                error.starts_with("event at position ")
                    && error.ends_with("CategoryCreated): decode: the handler is broken"),
                "the error names the first event the batch could not get past: {error}"
            );
            assert_eq!(recorder.position, 0, "nothing was skipped past the failing batch");
            assert_eq!(recorder.lag_events, 2);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the failure was never reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(recorded(&pool).await.is_empty());

    // Once the handler works again, the same events are applied and the error is cleared.
    flaky.failing.store(false, Ordering::SeqCst);
    loop {
        // The rows first: the events of the failed batch are applied one a transaction, so a
        // status read before the last of them would still show one to go.
        let rows = recorded(&pool).await.len();
        let status = projections::engine::checkpoints(&pool).await.unwrap();
        let recorder = status.iter().find(|s| s.name == "recorder").unwrap().clone();
        if rows == 2 && recorder.last_error.is_none() {
            assert_eq!(recorder.state, "running");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the projection never recovered: {recorder:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    println!(
        "failing batch: {} attempts, reported, then applied once",
        flaky.attempts.load(Ordering::SeqCst)
    );
}

/// A process manager that keeps, for each batch it is given, when the batch began and how many
/// events it held.
struct Timed {
    name: &'static str,
    awaited: bool,
    batches: std::sync::Mutex<Vec<(std::time::Instant, usize)>>,
}

impl Timed {
    fn new(name: &'static str, awaited: bool) -> Self {
        Self { name, awaited, batches: Default::default() }
    }

    fn batches(&self) -> Vec<(std::time::Instant, usize)> {
        self.batches.lock().unwrap().clone()
    }

    fn applied(&self) -> usize {
        self.batches().iter().map(|(_, n)| n).sum()
    }
}

impl Projection for Timed {
    fn name(&self) -> &'static str {
        self.name
    }

    fn awaited(&self) -> bool {
        self.awaited
    }

    fn apply_batch<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        events: &'a [Arc<StoredEvent>],
        _touched: &'a mut Touched,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.batches.lock().unwrap().push((std::time::Instant::now(), events.len()));
        Box::pin(async { Ok(()) })
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn after_a_batch_a_projection_gathers_the_next_events_unless_a_request_waits_on_it(pool: PgPool) {
    // Arrange: a long gather, so that its effect cannot be mistaken for chance.
    let gather = Duration::from_secs(3);
    let gathering = Arc::new(Timed::new("gathering", false));
    let awaited = Arc::new(Timed::new("awaited", true));
    let config = EngineConfig { poll_interval: Duration::from_millis(5), gather, ..Default::default() };
    let projections: Vec<Arc<dyn Projection>> = vec![gathering.clone(), awaited.clone()];
    let engine = Engine::new(pool.clone(), projections, config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    let until_applied = |count: usize| {
        let (gathering, awaited) = (gathering.clone(), awaited.clone());
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while gathering.applied() < count || awaited.applied() < count {
                assert!(std::time::Instant::now() < deadline, "never applied {count} events");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let append_one = || async {
        let mut tx = eventstore::db::begin(&pool).await.unwrap();
        append(&mut tx).await;
        tx.commit().await.unwrap();
    };

    // Act: a lone event after a quiet spell, then three more, one transaction each, as soon as
    // both projections have applied the first.
    let started = std::time::Instant::now();
    append_one().await;
    until_applied(1).await;
    for _ in 0..3 {
        append_one().await;
    }
    until_applied(4).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // Assert: the lone event waited for nothing; the three that followed it waited out the
    // gather and went in one batch, except for the projection a request waits on.
    let batches = gathering.batches();
    let sizes: Vec<usize> = batches.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, vec![1, 3], "the events that came during the gather went in one batch");
    assert!(batches[0].0 - started < gather / 2, "a lone event after a quiet spell was applied at once");
    assert!(batches[1].0 - batches[0].0 >= gather, "the next batch waited out the gather");
    let (last, _) = *awaited.batches().last().unwrap();
    assert!(
        last - started < gather / 2,
        "the awaited projection applied all four at once, gathering nothing"
    );
    println!(
        "gathering: batches of {sizes:?} {:?} apart; awaited: the last batch {:?} after the first append",
        batches[1].0 - batches[0].0,
        last - started
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_position_whose_append_rolled_back_is_released_once_the_transactions_before_it_end(pool: PgPool) {
    // A position taken by an append that is still running cannot be released yet...
    let mut running = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *running).await.unwrap();
    let held: i64 = sqlx::query_scalar("select nextval(pg_get_serial_sequence('events', 'position'))")
        .fetch_one(&mut *running)
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    assert!(!projections::engine::wait_for_release(&pool, held, short).await.unwrap());
    assert!(!projections::engine::wait_for_position(&pool, &["catalogue"], held, short).await.unwrap());

    // ...and once it rolls back, nothing can ever commit there: both waits end at once.
    running.rollback().await.unwrap();
    let started = std::time::Instant::now();
    assert!(projections::engine::wait_for_release(&pool, held, Duration::from_secs(5)).await.unwrap());
    assert!(projections::engine::wait_for_position(&pool, &["catalogue"], held, Duration::from_secs(5))
        .await
        .unwrap());
    assert!(started.elapsed() < Duration::from_secs(5), "released without running out the wait");

    // A position never given out is not one.
    assert!(!projections::engine::position_given_out(&pool, held + 1).await.unwrap());
    assert!(projections::engine::position_given_out(&pool, held).await.unwrap());
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_a_projection_cannot_apply_is_named_those_before_it_are_applied_and_none_after(
    pool: PgPool,
) {
    use std::sync::atomic::Ordering;
    // Arrange: five events in one transaction (one batch); the third cannot be applied.
    setup(&pool).await;
    let mut tx = eventstore::db::begin(&pool).await.unwrap();
    let mut positions = Vec::new();
    for _ in 0..5 {
        positions.push(append(&mut tx).await);
    }
    tx.commit().await.unwrap();
    let stream: String =
        sqlx::query_scalar("select 'category/' || aggregate_id from events where position = $1")
            .bind(positions[2])
            .fetch_one(&pool)
            .await
            .unwrap();
    let poisoned = Arc::new(Flaky::failing_at(positions[2]));
    let (shutdown, running) = run_with_quick_retries(&pool, poisoned.clone());

    // Act: wait until the failure is reported, and a while longer (retries go on).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reported = loop {
        let status = projections::engine::checkpoints(&pool).await.unwrap();
        if let Some(recorder) = status.iter().find(|s| s.name == "recorder" && s.state == "failing") {
            break recorder.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the failure was never reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_while_failing: Vec<i64> = recorded(&pool).await.into_iter().map(|(p, _)| p).collect();
    let still = projections::engine::checkpoints(&pool).await.unwrap();
    let still = still.iter().find(|s| s.name == "recorder").unwrap().clone();
    poisoned.failing.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while recorded(&pool).await.len() < 5 {
        assert!(std::time::Instant::now() < deadline, "the projection never got past the event once fixed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = projections::engine::checkpoints(&pool).await.unwrap();
    let after = after.iter().find(|s| s.name == "recorder").unwrap().clone();
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // Assert
    let error = reported.last_error.clone().unwrap_or_default();
    let named = format!("event at position {} ({stream}, CategoryCreated): database: ", positions[2]);
    assert!(error.starts_with(&named), "the error names the event: {error}");
    assert!(error.contains("invalid input syntax for type date"), "and says why: {error}");
    assert_eq!(seen_while_failing, positions[..2].to_vec(), "the two before it applied, none after");
    assert_eq!(still.position, positions[1], "the checkpoint waits just before the event");
    assert_eq!(still.state, "failing");
    assert_eq!(recorded(&pool).await.len(), 5);
    assert_eq!(after.last_error, None);
    println!("poisoned event: reported as `{error}`; 2 events before it applied, 0 after; all 5 once fixed");
}

/// A bulk copy writes each value as a query parameter of its type would: NULLs, empty and
/// non-empty arrays, dates, timestamps, JSON and text with every character COPY's text format
/// would have to escape. A row with a value too few, or a value of another type than its column's,
/// fails the copy and leaves nothing behind.
#[sqlx::test(migrations = "../migrations")]
async fn a_bulk_copy_writes_every_value_as_a_parameter_would_and_a_bad_row_keeps_nothing(pool: PgPool) {
    // Arrange
    use chrono::{NaiveDate, TimeZone, Utc};
    use projections::engine::BulkCopy;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(
        "create table copied (id uuid, name text, ids uuid[], names text[], day date, at timestamptz,
                              n smallint, m integer, big bigint, flag boolean, doc jsonb)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let id = uuid::Uuid::now_v7();
    let awkward = "tab\there, newline\nhere, backslash \\ and \\N, quote ' \" and ünïcödé 🎬";
    let at =
        Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap() + chrono::Duration::microseconds(123_456);
    let day = NaiveDate::from_ymd_opt(1895, 12, 28).unwrap();
    let doc = serde_json::json!({"a": [1, 2.5, null], "b": "é"});
    let columns = "id, name, ids, names, day, at, n, m, big, flag, doc";

    // Act
    let mut copy = BulkCopy::into(&mut conn, "copied", columns).await.unwrap();
    copy.row()
        .await
        .unwrap()
        .value(id)
        .value(awkward)
        .value(vec![id, id])
        .value(vec![awkward.to_string(), String::new()])
        .value(day)
        .value(at)
        .value(i16::MIN)
        .value(i32::MAX)
        .value(i64::MIN)
        .value(true)
        .value(&doc);
    copy.row()
        .await
        .unwrap()
        .value(None::<uuid::Uuid>)
        .value(None::<&str>)
        .value(Vec::<uuid::Uuid>::new())
        .value(Vec::<String>::new())
        .value(None::<NaiveDate>)
        .value(None::<chrono::DateTime<Utc>>)
        .value(None::<i16>)
        .value(None::<i32>)
        .value(None::<i64>)
        .value(None::<bool>)
        .value(None::<serde_json::Value>);
    let written = copy.finish().await.unwrap();
    let mut short = BulkCopy::into(&mut conn, "copied", columns).await.unwrap();
    short.row().await.unwrap().value(id).value("a value too few");
    let too_few = short.finish().await.map(|_| ()).unwrap_err().to_string();
    let mut mistyped = BulkCopy::into(&mut conn, "copied", "m").await.unwrap();
    mistyped.row().await.unwrap().value(7i64);
    let wrong_type = mistyped.finish().await.map(|_| ()).unwrap_err().to_string();

    // Assert
    assert_eq!(written, 2);
    let same: bool = sqlx::query_scalar(
        "select id = $1 and name = $2 and ids = array[$1, $1] and names = array[$2, ''] and day = $3
                and at = $4 and n = -32768 and m = 2147483647 and big = -9223372036854775808 and flag
                and doc = $5
           from copied where id is not null",
    )
    .bind(id)
    .bind(awkward)
    .bind(day)
    .bind(at)
    .bind(&doc)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(same, "the first row reads back exactly as it was sent");
    let nulls: (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where ids = '{}' and names = '{}'),
                count(*) filter (where num_nulls(id, name, day, at, n, m, big, flag, doc) = 9)
           from copied where id is null",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(nulls, (1, 1, 1), "the second row: empty arrays and nine NULLs");
    assert!(too_few.contains("row 1 has 2 values for 11 columns"), "{too_few}");
    assert!(wrong_type.contains("incorrect binary data format"), "{wrong_type}");
    let rows: i64 = sqlx::query_scalar("select count(*) from copied").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(rows, 2, "the failed copies kept nothing");
    println!("bulk copy: 2 rows read back exactly; a short row and a mistyped value refused, 0 rows kept");
}
