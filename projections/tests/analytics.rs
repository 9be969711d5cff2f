//! The analytics read model on a real database: a hand-built log goes into `events`, the
//! projection advances through the engine (in small batches, so rows are loaded and changed
//! across batches), and results come out through `AnalyticsReader` and plain selects on `read.*`.
//! Also the read-only `moviestore_analyst` role, before and after rebuilds.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use cqrs_es::DomainEvent;
use domain::category::CategoryEvent;
use domain::movie::MovieEvent;
use domain::price::PricePlan;
use domain::rental::RentalEvent;
use domain::values::{CategoryIds, CategoryName, Rating, Storyline, Title};
use eventstore::{encode_event, EventStore};
use projections::analytics::{self, Analytics, AnalyticsReader, Days, RevenueGroup, RevenueRow, TopMovieRow};
use projections::engine::{read_batch, Checkpoint, Engine, EngineConfig, Model, Projection, Touched};
use projections::rebuild;
use sqlx::PgPool;
use uuid::Uuid;

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

fn date(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, day).unwrap()
}

/// Appends hand-built events straight into `events`, one transaction each, with chosen
/// `recorded_at` times.
struct Log {
    pool: PgPool,
    sequences: HashMap<Uuid, i64>,
}

impl Log {
    fn new(pool: &PgPool) -> Self {
        Self { pool: pool.clone(), sequences: HashMap::new() }
    }

    async fn append<E: DomainEvent>(
        &mut self,
        stream_type: &str,
        id: Uuid,
        event: E,
        recorded_at: DateTime<Utc>,
    ) {
        let sequence = self.sequences.entry(id).or_default();
        *sequence += 1;
        let encoded = encode_event(&event).unwrap();
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                                 metadata, event_id, recorded_at)
             values ($1, $2, $3, $4, $5, $6, '{}', $7, $8)",
        )
        .bind(stream_type)
        .bind(id.to_string())
        .bind(*sequence)
        .bind(encoded.event_type)
        .bind(encoded.event_version)
        .bind(encoded.payload)
        .bind(Uuid::now_v7())
        .bind(recorded_at)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn category(&mut self, name: &str, recorded_at: DateTime<Utc>) -> Uuid {
        let id = Uuid::now_v7();
        let name = CategoryName::parse(name).unwrap();
        self.append("category", id, CategoryEvent::CategoryCreated { name }, recorded_at).await;
        id
    }

    async fn movie(&mut self, title: &str, categories: &[Uuid], recorded_at: DateTime<Utc>) -> Uuid {
        let id = Uuid::now_v7();
        let event = MovieEvent::MovieAdded {
            title: Title::parse(title).unwrap(),
            storyline: Storyline::parse("A story.").unwrap(),
            release_date: NaiveDate::from_ymd_opt(1998, 3, 6).unwrap(),
            rating: Rating::parse(7.5).unwrap(),
            director: None,
            category_ids: CategoryIds::parse(categories.to_vec()).unwrap(),
        };
        self.append("movie", id, event, recorded_at).await;
        id
    }

    /// A rental as the log holds it: rented; when `returned` is given, returned, closed and
    /// charged `cents`; when `paid`, paid.
    async fn rental(
        &mut self,
        movie: Uuid,
        rented_at: DateTime<Utc>,
        returned: Option<(DateTime<Utc>, i64)>,
        paid: bool,
    ) -> Uuid {
        let rental_id = Uuid::now_v7();
        let customer_id = Uuid::now_v7();
        self.append("movie", movie, MovieEvent::MovieRented { rental_id, customer_id, rented_at }, rented_at)
            .await;
        let due_at = domain::loan::LoanPolicy::default().due_at(rented_at);
        let opened = RentalEvent::RentalOpened { movie_id: movie, customer_id, rented_at, due_at };
        self.append("rental", rental_id, opened, rented_at).await;
        let Some((returned_at, cents)) = returned else { return rental_id };
        let event = MovieEvent::MovieReturned { rental_id, customer_id, returned_at };
        self.append("movie", movie, event, returned_at).await;
        self.append("rental", rental_id, RentalEvent::RentalClosed { returned_at }, returned_at).await;
        let days = u32::try_from(cents / 100).unwrap().max(1);
        let charge = RentalEvent::ChargeAssessed {
            days,
            amount_cents: cents,
            currency: "EUR".into(),
            plan: PricePlan::default(),
        };
        self.append("rental", rental_id, charge, returned_at).await;
        if paid {
            let paid_at = returned_at + chrono::Duration::hours(1);
            let event = RentalEvent::RentalPaid { amount_cents: cents, currency: "EUR".into(), paid_at };
            self.append("rental", rental_id, event, paid_at).await;
        }
        rental_id
    }
}

/// The store of the example below, with what it is made of.
struct Example {
    comedy: Uuid,
    drama: Uuid,
    noir: Uuid,
    lebowski: Uuid,
    fargo: Uuid,
    idle: Uuid,
}

/// Three categories (one renamed), three movies (one in two categories, one renamed, one never
/// rented and retired on March 4th) and four rentals in March 2026:
///
/// | rental | movie    | rented       | returned     | charge | paid |
/// | ------ | -------- | ------------ | ------------ | ------ | ---- |
/// | R1     | Lebowski | 1st 10:00    | 2nd 16:00    | 200    | yes  |
/// | R2     | Lebowski | 3rd 00:00    | 3rd 06:00    | 100    | no   |
/// | R3     | Fargo    | 1st 12:00    | 5th 12:00    | 350    | yes  |
/// | R4     | Fargo    | 6th 00:00    | (open)       |        |      |
async fn example(log: &mut Log) -> Example {
    let before = Utc.with_ymd_and_hms(2026, 2, 1, 9, 0, 0).unwrap();
    let comedy = log.category("Comedy", before).await;
    let drama = log.category("Drama", before).await;
    let noir = log.category("Noir", before).await;
    let renamed = CategoryEvent::CategoryRenamed { name: CategoryName::parse("Film Noir").unwrap() };
    log.append("category", noir, renamed, before).await;
    let lebowski = log.movie("Lebowski", &[comedy, noir], before).await;
    let fargo = log.movie("Fargo", &[drama], before).await;
    let idle = log.movie("Idle", &[comedy], before).await;
    let retitled = MovieEvent::MovieUpdated {
        title: Some(Title::parse("Fargo (1996)").unwrap()),
        storyline: None,
        release_date: None,
        rating: None,
        director: None,
        category_ids: None,
    };
    log.append("movie", fargo, retitled, before).await;
    log.rental(lebowski, at(1, 10), Some((at(2, 16), 200)), true).await;
    log.rental(fargo, at(1, 12), Some((at(5, 12), 350)), true).await;
    log.rental(lebowski, at(3, 0), Some((at(3, 6), 100)), false).await;
    log.rental(fargo, at(6, 0), None, false).await;
    log.append("movie", idle, MovieEvent::MovieRetired {}, at(4, 0)).await;
    Example { comedy, drama, noir, lebowski, fargo, idle }
}

/// An engine over every projection, in batches of 3 events.
fn engine(pool: &PgPool) -> Engine {
    let config = EngineConfig { batch_size: 3, ..EngineConfig::default() };
    Engine::new(
        pool.clone(),
        projections::all(
            EventStore::new(pool.clone()),
            PricePlan::default(),
            Default::default(),
            Default::default(),
        ),
        config,
    )
}

/// Catches analytics up past every event committed so far. `catch_up` stops at the cluster-wide
/// horizon of running transactions (another test's open transaction holds it back), so repeat
/// until the checkpoint has passed the last event.
async fn catch_up(pool: &PgPool) {
    let engine = engine(pool);
    let last: (i64, i64) = sqlx::query_as(
        "select transaction_id::text::bigint, position from events order by transaction_id desc, position desc limit 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        engine.catch_up(analytics::NAME).await.unwrap();
        let at: (i64, i64) =
            sqlx::query_as("select last_xid, last_position from projection_checkpoint where name = $1")
                .bind(analytics::NAME)
                .fetch_one(pool)
                .await
                .unwrap();
        if at >= last {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "analytics stuck at {at:?}, short of {last:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Every row of every analytics table, as text, in a stable order.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in Model::<Analytics>::new().tables() {
        let mut these: Vec<String> =
            sqlx::query_scalar(&format!("select row_to_json(t)::text from read.{table} t order by 1"))
                .fetch_all(pool)
                .await
                .unwrap();
        rows.push(format!("{table}: {} rows", these.len()));
        rows.append(&mut these);
    }
    rows
}

/// Applies these events again through the projection, in one transaction on schema `read`.
async fn apply_again(pool: &PgPool, events: &[std::sync::Arc<projections::engine::StoredEvent>]) {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    sqlx::query("set local search_path to read, public").execute(&mut *tx).await.unwrap();
    Model::<Analytics>::new().apply_batch(&mut tx, events, &mut Touched::default()).await.unwrap();
    tx.commit().await.unwrap();
}

fn revenue(key: impl ToString, label: &str, rentals: i64, revenue_cents: i64, paid_cents: i64) -> RevenueRow {
    RevenueRow { key: key.to_string(), label: label.into(), rentals, revenue_cents, paid_cents }
}

#[sqlx::test(migrations = "../migrations")]
async fn applying_every_event_again_changes_no_analytics_row(pool: PgPool) {
    // Arrange
    let mut log = Log::new(&pool);
    example(&mut log).await;
    catch_up(&pool).await;
    let live = snapshot(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let events = read_batch(&mut conn, Checkpoint::default(), 1_000).await.unwrap();
    drop(conn);
    assert_eq!(events.len(), 28, "the example's log");

    // Act: the whole log again in one batch, then each event again on its own.
    apply_again(&pool, &events).await;
    let after_batch = snapshot(&pool).await;
    for event in &events {
        apply_again(&pool, std::slice::from_ref(event)).await;
    }
    let after_each = snapshot(&pool).await;

    // Assert
    assert_eq!(after_batch, live, "the log applied twice in one batch");
    assert_eq!(after_each, live, "each event applied a third time");
    assert!(live.contains(&"analytics_rental: 4 rows".to_string()), "{live:?}");
    assert!(live.contains(&"analytics_movie_day: 6 rows".to_string()), "{live:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn revenue_counts_charges_on_the_day_of_return_and_in_every_category_of_the_movie(pool: PgPool) {
    // Arrange
    let mut log = Log::new(&pool);
    let x = example(&mut log).await;
    catch_up(&pool).await;
    let reader = AnalyticsReader::new(pool.clone());
    let all = Days::default();

    // Act
    let by_day = reader.revenue(RevenueGroup::Day, all).await.unwrap();
    let by_movie = reader.revenue(RevenueGroup::Movie, all).await.unwrap();
    let by_category = reader.revenue(RevenueGroup::Category, all).await.unwrap();
    let third_and_fourth = Days { from: Some(date(3)), to: Some(date(5)) };
    let by_movie_3rd_4th = reader.revenue(RevenueGroup::Movie, third_and_fourth).await.unwrap();
    let from_5th = reader.revenue(RevenueGroup::Day, Days { from: Some(date(5)), to: None }).await.unwrap();
    let before_3rd = reader.revenue(RevenueGroup::Day, Days { from: None, to: Some(date(3)) }).await.unwrap();

    // Assert: hand-computed from the table in `example`.
    assert_eq!(
        by_day,
        vec![
            revenue("2026-03-02", "2026-03-02", 1, 200, 200),
            revenue("2026-03-03", "2026-03-03", 1, 100, 0),
            revenue("2026-03-05", "2026-03-05", 1, 350, 350),
        ]
    );
    assert_eq!(
        by_movie,
        vec![revenue(x.fargo, "Fargo (1996)", 1, 350, 350), revenue(x.lebowski, "Lebowski", 2, 300, 200)]
    );
    // Lebowski is in Comedy and Film Noir: it counts in both.
    assert_eq!(
        by_category,
        vec![
            revenue(x.drama, "Drama", 1, 350, 350),
            revenue(x.comedy, "Comedy", 2, 300, 200),
            revenue(x.noir, "Film Noir", 2, 300, 200),
        ]
    );
    assert_eq!(by_movie_3rd_4th, vec![revenue(x.lebowski, "Lebowski", 1, 100, 0)]);
    assert_eq!(from_5th, vec![revenue("2026-03-05", "2026-03-05", 1, 350, 350)]);
    assert_eq!(before_3rd, vec![revenue("2026-03-02", "2026-03-02", 1, 200, 200)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn top_movies_count_rentals_started_in_the_period_most_rented_first(pool: PgPool) {
    // Arrange
    let mut log = Log::new(&pool);
    let x = example(&mut log).await;
    log.rental(x.lebowski, at(7, 0), None, false).await;
    catch_up(&pool).await;
    let reader = AnalyticsReader::new(pool.clone());
    let top =
        |movie_id: Uuid, title: &str, rentals: i64| TopMovieRow { movie_id, title: title.into(), rentals };

    // Act
    let all = reader.top_movies(Days::default(), 20).await.unwrap();
    let first = reader.top_movies(Days::default(), 1).await.unwrap();
    let second_to_sixth =
        reader.top_movies(Days { from: Some(date(2)), to: Some(date(6)) }, 20).await.unwrap();
    let sixth = reader.top_movies(Days { from: Some(date(6)), to: Some(date(7)) }, 20).await.unwrap();

    // Assert
    assert_eq!(all, vec![top(x.lebowski, "Lebowski", 3), top(x.fargo, "Fargo (1996)", 2)]);
    assert_eq!(first, vec![top(x.lebowski, "Lebowski", 3)]);
    assert_eq!(second_to_sixth, vec![top(x.lebowski, "Lebowski", 1)]);
    assert_eq!(sixth, vec![top(x.fargo, "Fargo (1996)", 1)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn utilization_is_the_time_rented_within_the_period_with_open_rentals_counted_until_now(pool: PgPool) {
    // Arrange
    let mut log = Log::new(&pool);
    let x = example(&mut log).await;
    catch_up(&pool).await;
    let reader = AnalyticsReader::new(pool.clone());
    let shares = |rows: Vec<analytics::UtilizationRow>| -> Vec<(Uuid, f64, f64, f64)> {
        rows.into_iter().map(|u| (u.movie_id, u.rented_seconds, u.period_seconds, u.share)).collect()
    };
    const HOUR: f64 = 3600.0;

    // Act
    let first_two_days = reader.utilization(at(1, 0), at(3, 0), at(10, 0)).await.unwrap();
    let fifth_to_eighth = reader.utilization(at(5, 0), at(8, 0), at(7, 0)).await.unwrap();
    let origin = reader.origin().await.unwrap();

    // Assert: March 1st and 2nd (48 h): Lebowski out 10:00 1st to 16:00 2nd (30 h), Fargo from
    // 12:00 1st past the end (36 h), Idle never (still in the catalogue).
    assert_eq!(
        shares(first_two_days),
        vec![
            (x.fargo, 36.0 * HOUR, 48.0 * HOUR, 0.75),
            (x.lebowski, 30.0 * HOUR, 48.0 * HOUR, 0.625),
            (x.idle, 0.0, 48.0 * HOUR, 0.0),
        ]
    );
    // 5th to 8th (72 h), asked on the 7th: Fargo until 12:00 on the 5th (12 h), then from the 6th
    // until now (24 h, open); Lebowski not at all; Idle was retired on the 4th.
    assert_eq!(
        shares(fifth_to_eighth),
        vec![(x.fargo, 36.0 * HOUR, 72.0 * HOUR, 0.5), (x.lebowski, 0.0, 72.0 * HOUR, 0.0)]
    );
    assert_eq!(origin, Some(Utc.with_ymd_and_hms(2026, 2, 1, 9, 0, 0).unwrap()));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rebuild_and_a_verify_replay_exactly_the_live_analytics_tables(pool: PgPool) {
    // Arrange: live tables built batch by batch (3 events each).
    let mut log = Log::new(&pool);
    example(&mut log).await;
    catch_up(&pool).await;
    let live = snapshot(&pool).await;
    let projection: Arc<dyn Projection> = Arc::new(Model::<Analytics>::new());

    // Act
    let diffs = rebuild::verify(&pool, projection.clone(), &()).await.unwrap();
    let rebuilt = rebuild::rebuild(&pool, projection.clone(), &()).await.unwrap();
    let after_rebuild = snapshot(&pool).await;

    // Assert
    assert_eq!(diffs, vec![], "verify finds the live tables equal to a replay");
    assert_eq!(rebuilt.events, 28);
    assert_eq!(after_rebuild, live, "the rebuilt tables hold the same rows");
    assert_eq!(rebuild::verify(&pool, projection, &()).await.unwrap(), vec![]);

    // A live table that drifts from the log is found.
    sqlx::query("update read.analytics_movie_day set revenue_cents = revenue_cents + 1 where charges > 0")
        .execute(&pool)
        .await
        .unwrap();
    let diffs = rebuild::verify(&pool, Arc::new(Model::<Analytics>::new()), &()).await.unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].table, "read.analytics_movie_day");
    assert_eq!((diffs[0].only_live, diffs[0].only_replayed), (3, 3));
}

/// Whether `moviestore_analyst` may run `sql`: `Ok`, or the SQLSTATE of the refusal.
async fn as_analyst(pool: &PgPool, sql: &str) -> Result<(), String> {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    sqlx::query("set local role moviestore_analyst").execute(&mut *tx).await.unwrap();
    let result = sqlx::query(sql).fetch_all(&mut *tx).await;
    tx.rollback().await.unwrap();
    result
        .map(|_| ())
        .map_err(|e| e.as_database_error().and_then(|d| d.code()).unwrap_or_default().to_string())
}

async fn read_tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'read' order by 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_analyst_role_reads_schema_read_and_nothing_else_also_after_rebuilds(pool: PgPool) {
    // Arrange
    let mut log = Log::new(&pool);
    example(&mut log).await;
    catch_up(&pool).await;
    let tables = read_tables(&pool).await;
    for expected in ["analytics_movie_day", "category", "movie", "rental"] {
        assert!(tables.contains(&expected.to_string()), "read.{expected} exists: {tables:?}");
    }
    let private = [
        "events",
        "snapshots",
        "users",
        "tokens",
        "login_failures",
        "category_lookup",
        "rental_lookup",
        "projection_checkpoint",
    ];
    let check = |pool: PgPool, stage: &'static str| async move {
        for table in read_tables(&pool).await {
            let result = as_analyst(&pool, &format!("select * from read.{table} limit 1")).await;
            assert_eq!(result, Ok(()), "{stage}: the analyst reads read.{table}");
        }
        for table in private {
            let result = as_analyst(&pool, &format!("select * from {table} limit 1")).await;
            assert_eq!(result, Err("42501".to_string()), "{stage}: permission denied on {table}");
        }
        let write = as_analyst(&pool, "delete from read.analytics_rental").await;
        assert_eq!(write, Err("42501".to_string()), "{stage}: the analyst cannot write");
    };

    // Act and assert: after the migrations, then after each read model is rebuilt (its tables
    // replaced by shadow tables).
    check(pool.clone(), "migrated").await;
    let engine = engine(&pool);
    for projection in engine.projections().iter().filter(|p| p.is_read_model()) {
        rebuild::rebuild(&pool, projection.clone(), &()).await.unwrap();
    }
    check(pool.clone(), "rebuilt").await;
    let login: bool =
        sqlx::query_scalar("select rolcanlogin from pg_roles where rolname = 'moviestore_analyst'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!login, "the role is NOLOGIN: an operator grants it to a login role");
}
