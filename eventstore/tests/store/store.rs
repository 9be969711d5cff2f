//! The event store on a real database: appends, snapshots, conflicts and lookup tables.

use chrono::{Duration, TimeZone, Utc};
use domain::category::{Category, CategoryCommand};
use domain::movie::{Movie, MovieChanges, MovieCommand};
use domain::values::{CategoryName, Title};
use domain::Actor;
use eventstore::{lookup, CommandContext, CommandError, EventStore, Metadata};
use sqlx::PgPool;
use uuid::Uuid;

fn meta() -> CommandContext {
    CommandContext::from(Metadata {
        actor_id: Some(Uuid::now_v7()),
        request_id: Some("req-1".into()),
        correlation_id: Some("req-1".into()),
        causation_id: None,
    })
}

async fn new_movie(store: &EventStore) -> (String, Uuid) {
    let category = Uuid::now_v7();
    let id = Uuid::now_v7().to_string();
    store
        .execute::<Movie>(
            &id,
            MovieCommand::AddMovie { details: crate::common::movie_details("Heat", &[category]) },
            &meta(),
        )
        .await
        .unwrap();
    (id, category)
}

/// Rents and returns the movie `cycles` times, one hour apart, starting in 2020.
async fn rent_and_return(store: &EventStore, id: &str, cycles: usize) {
    let start = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let customer = Uuid::now_v7();
    let now = Utc::now();
    for i in 0..cycles {
        let rental_id = Uuid::now_v7();
        let rented_at = start + Duration::hours(2 * i as i64);
        let rent = MovieCommand::RentMovie { rental_id, customer_id: customer, rented_at, now };
        store.execute::<Movie>(id, rent, &meta()).await.unwrap();
        let returned_at = rented_at + Duration::hours(1);
        let by = Actor::customer(customer);
        let back = MovieCommand::ReturnMovie { rental_id, by, returned_at, now };
        store.execute::<Movie>(id, back, &meta()).await.unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn state_from_a_snapshot_and_later_events_equals_a_full_replay(pool: PgPool) {
    // Arrange: 1 + 2 × 22 = 45 events, so snapshots were written at 20 and 40.
    let store = EventStore::new(pool.clone());
    let (id, _) = new_movie(&store).await;
    rent_and_return(&store, &id, 22).await;

    // Act: a store that remembers nothing of the stream (another process) loads it.
    let from_snapshot = EventStore::new(pool.clone()).load::<Movie>(&id).await.unwrap();
    let from_replay = store.replay::<Movie>(&id).await.unwrap();

    // Assert
    let (last_sequence, current_snapshot): (i64, i64) = sqlx::query_as(
        "select last_sequence, current_snapshot from snapshots
          where aggregate_type = 'movie' and aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((last_sequence, current_snapshot), (40, 2));
    assert_eq!(from_snapshot.version, 45);
    assert_eq!(from_replay.version, 45);
    assert_eq!(from_snapshot.state, from_replay.state);
    // Each event applied once: a store that applied events twice would count 44 rentals.
    assert_eq!(from_snapshot.state.times_rented, 22);
    assert!(from_snapshot.state.available());
}

#[sqlx::test(migrations = "../migrations")]
async fn the_snapshot_holds_exactly_the_state_at_its_sequence(pool: PgPool) {
    // Arrange: add + 9 full cycles + 1 rent = 20 events, the snapshot boundary.
    let store = EventStore::new(pool.clone());
    let (id, _) = new_movie(&store).await;
    rent_and_return(&store, &id, 9).await;
    let customer = Uuid::now_v7();
    let rent = MovieCommand::RentMovie {
        rental_id: Uuid::now_v7(),
        customer_id: customer,
        rented_at: Utc::now() - Duration::minutes(1),
        now: Utc::now(),
    };
    store.execute::<Movie>(&id, rent, &meta()).await.unwrap();

    // Act
    let snapshot = crate::common::movie_snapshot(&pool, &id).await;

    // Assert
    let replay = store.replay::<Movie>(&id).await.unwrap();
    assert_eq!(replay.version, 20);
    assert_eq!(snapshot, replay.state);
    assert_eq!(snapshot.times_rented, 10);
    assert!(!snapshot.available());
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_commands_on_one_stream_are_retried_and_all_land_in_order(pool: PgPool) {
    // Arrange
    let store = EventStore::new(pool.clone());
    let (id, _) = new_movie(&store).await;

    // Act: eight different title changes at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        tasks.spawn(async move {
            let changes = MovieChanges {
                title: Some(Title::parse(&format!("Title {i}")).unwrap()),
                ..Default::default()
            };
            store.execute::<Movie>(&id, MovieCommand::UpdateMovie { changes }, &meta()).await
        });
    }
    let mut versions = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(done) => versions.push(done.version),
            // Five retries may run out under heavy contention; that answer is a conflict, never
            // a lost or doubled write.
            Err(CommandError::Conflict) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    // Assert
    versions.sort();
    let stored: Vec<i64> = sqlx::query_scalar(
        "select sequence from events where aggregate_type = 'movie' and aggregate_id = $1 order by sequence",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored, (1..=stored.len() as i64).collect::<Vec<_>>(), "gap-free stream");
    assert_eq!(versions, stored[1..].to_vec(), "every success has its own event");
    assert!(versions.len() >= 2, "retries let several of the eight land: {versions:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn positions_and_event_ids_are_returned_and_metadata_is_stored(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    let metadata = meta();
    let name = CategoryName::parse("Western").unwrap();
    let done =
        store.execute::<Category>(&id, CategoryCommand::CreateCategory { name }, &metadata).await.unwrap();

    assert_eq!(done.events.len(), 1);
    let event = &done.events[0];
    assert_eq!(done.position, event.position);
    assert_eq!(event.event_type, "CategoryCreated");
    let (position, event_id, stored_metadata, payload, xid): (
        i64,
        Uuid,
        serde_json::Value,
        serde_json::Value,
        i64,
    ) = sqlx::query_as(
        "select position, event_id, metadata, payload, transaction_id::text::bigint from events
              where aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((position, event_id), (event.position, event.event_id));
    assert_eq!(stored_metadata, serde_json::to_value(&metadata.metadata).unwrap());
    assert_eq!(payload, serde_json::json!({"name": "Western"}));
    assert!(xid > 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_command_that_changes_nothing_appends_nothing_and_reports_the_stream_position(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    let name = CategoryName::parse("Western").unwrap();
    let created = store
        .execute::<Category>(&id, CategoryCommand::CreateCategory { name: name.clone() }, &meta())
        .await
        .unwrap();
    let same =
        store.execute::<Category>(&id, CategoryCommand::RenameCategory { name }, &meta()).await.unwrap();
    assert!(same.events.is_empty());
    assert_eq!(same.position, created.position);
    assert_eq!(same.version, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn category_names_are_unique_case_insensitively_in_the_append_transaction(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let create = |name: &str| CategoryCommand::CreateCategory { name: CategoryName::parse(name).unwrap() };
    let first = Uuid::now_v7();
    store.execute::<Category>(&first.to_string(), create("Horror"), &meta()).await.unwrap();

    let second = Uuid::now_v7().to_string();
    let err = store.execute::<Category>(&second, create("HORROR"), &meta()).await.unwrap_err();
    assert!(matches!(&err, CommandError::Unique(lookup::Constraint::CategoryName)), "{err}");
    let events: i64 = sqlx::query_scalar("select count(*) from events where aggregate_id = $1")
        .bind(&second)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "the refused append left no event");
    assert_eq!(
        lookup::category_names(&pool, &[first, Uuid::now_v7()]).await.unwrap(),
        vec![Some("Horror".to_string()), None]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_rental_and_category_lookups_follow_the_movie(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let (id, category) = new_movie(&store).await;
    let movie_id = Uuid::parse_str(&id).unwrap();
    assert_eq!(lookup::category_movie_count(&pool, category).await.unwrap(), 1);

    let customer = Uuid::now_v7();
    let rental_id = Uuid::now_v7();
    let rented_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
    let now = Utc::now();
    let rent = MovieCommand::RentMovie { rental_id, customer_id: customer, rented_at, now };
    store.execute::<Movie>(&id, rent, &meta()).await.unwrap();
    let found = lookup::find_rental(&pool, rental_id).await.unwrap().unwrap();
    assert_eq!(
        (found.movie_id, found.customer_id, found.rented_at, found.returned_at),
        (movie_id, customer, rented_at, None)
    );

    let returned_at = rented_at + Duration::days(2);
    let back = MovieCommand::ReturnMovie { rental_id, by: Actor::customer(customer), returned_at, now };
    store.execute::<Movie>(&id, back, &meta()).await.unwrap();
    assert_eq!(lookup::find_rental(&pool, rental_id).await.unwrap().unwrap().returned_at, Some(returned_at));

    store.execute::<Movie>(&id, MovieCommand::RetireMovie, &meta()).await.unwrap();
    assert_eq!(lookup::category_movie_count(&pool, category).await.unwrap(), 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stream_this_process_remembers_is_brought_up_to_date_from_the_log_before_a_command(pool: PgPool) {
    // Arrange: this process added the movie (and remembers it); another process rents it.
    let here = EventStore::new(pool.clone());
    let elsewhere = EventStore::new(pool.clone());
    let (id, _) = new_movie(&here).await;
    let now = Utc::now();
    let rent =
        |rental_id| MovieCommand::RentMovie { rental_id, customer_id: Uuid::now_v7(), rented_at: now, now };
    elsewhere.execute::<Movie>(&id, rent(Uuid::now_v7()), &meta()).await.unwrap();

    // Act: this process rents the same copy, then reads the movie.
    let second = here.execute::<Movie>(&id, rent(Uuid::now_v7()), &meta()).await;
    let loaded = here.load::<Movie>(&id).await.unwrap();

    // Assert: the domain's refusal (the other rent was seen), not a conflict; the state is the log's.
    match second {
        Err(CommandError::Rejected(_)) => {}
        Err(other) => panic!("expected the domain's refusal, got {other}"),
        Ok(done) => panic!("a second rent of one copy was accepted at version {}", done.version),
    }
    let replayed = here.replay::<Movie>(&id).await.unwrap();
    assert_eq!((loaded.version, replayed.version), (2, 2));
    assert_eq!(loaded.state, replayed.state);
    let rents: i64 = sqlx::query_scalar(
        "select count(*) from events where aggregate_id = $1 and event_type = 'MovieRented'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rents, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn rents_and_returns_that_share_a_group_each_write_their_rental_lookup_row(pool: PgPool) {
    // Arrange: 24 movies.
    let store = EventStore::new(pool.clone());
    let mut movies = Vec::new();
    for _ in 0..24 {
        movies.push(new_movie(&store).await.0);
    }
    let customer = Uuid::now_v7();
    let now = Utc::now();
    let rentals: Vec<Uuid> = movies.iter().map(|_| Uuid::now_v7()).collect();
    let all_at_once = |commands: Vec<(String, MovieCommand)>| {
        let store = store.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (id, command) in commands {
                let store = store.clone();
                tasks.spawn(async move {
                    store.execute::<Movie>(&id, command, &meta()).await.map(|d| d.position)
                });
            }
            tasks.join_all().await.into_iter().map(|answer| answer.unwrap()).collect::<Vec<i64>>()
        }
    };

    // Act: every movie rented at once, then every one returned at once.
    let rented = all_at_once(
        movies
            .iter()
            .zip(&rentals)
            .map(|(id, &rental_id)| {
                (
                    id.clone(),
                    MovieCommand::RentMovie { rental_id, customer_id: customer, rented_at: now, now },
                )
            })
            .collect(),
    )
    .await;
    let back = now + Duration::hours(1);
    let returned = all_at_once(
        movies
            .iter()
            .zip(&rentals)
            .map(|(id, &rental_id)| {
                let by = Actor::customer(customer);
                (id.clone(), MovieCommand::ReturnMovie { rental_id, by, returned_at: back, now: back })
            })
            .collect(),
    )
    .await;

    // Assert: fewer transactions than commands, and each rental's row says where it is and that it
    // came back.
    let transactions: i64 =
        sqlx::query_scalar("select count(distinct transaction_id) from events where position = any($1)")
            .bind(rented.iter().chain(&returned).copied().collect::<Vec<i64>>())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(transactions < 48, "48 commands took {transactions} transactions: none was grouped");
    for (movie, rental) in movies.iter().zip(&rentals) {
        let row = lookup::find_rental(&pool, *rental).await.unwrap().expect("the rental's lookup row");
        assert_eq!(row.movie_id.to_string(), *movie);
        assert_eq!(row.customer_id, customer);
        assert_eq!(row.returned_at.map(|at| at.timestamp_micros()), Some(back.timestamp_micros()));
    }
}
