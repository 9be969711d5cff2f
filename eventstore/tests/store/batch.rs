//! Batches of commands on a real database: one load, one append transaction, each command with
//! its own metadata; refusals, conflicts and snapshots.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeZone, Utc};
use domain::loan::LoanPolicy;
use domain::movie::{Movie, MovieCommand};
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand, RentalError, RentalEvent};
use domain::Actor;
use eventstore::{
    encode_event, lookup, BatchCommand, CommandContext, CommandError, CommandOutcome, EventStore, Metadata,
    EVENTS_CHANNEL,
};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

/// A rental's facts and the metadata of the commands issued for it.
struct Case {
    rental: Uuid,
    movie: Uuid,
    customer: Uuid,
    rented_at: DateTime<Utc>,
    returned_at: DateTime<Utc>,
    open: Metadata,
    close: Metadata,
}

/// `n` rentals, the i-th lasting `i + 1` started days, each command with metadata of its own.
fn cases(n: usize) -> Vec<Case> {
    let start = Utc.with_ymd_and_hms(2025, 3, 1, 10, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let meta = |step: &str| Metadata {
                actor_id: Some(Uuid::now_v7()),
                request_id: Some(format!("req-{step}-{i}")),
                correlation_id: Some(format!("corr-{step}-{i}")),
                causation_id: Some(Uuid::now_v7()),
            };
            Case {
                rental: Uuid::now_v7(),
                movie: Uuid::now_v7(),
                customer: Uuid::now_v7(),
                rented_at: start,
                returned_at: start + chrono::Duration::hours(24 * i as i64 + 1),
                open: meta("open"),
                close: meta("close"),
            }
        })
        .collect()
}

impl Case {
    fn open(&self) -> BatchCommand<RentalCommand> {
        let command = RentalCommand::OpenRental {
            movie_id: self.movie,
            customer_id: self.customer,
            rented_at: self.rented_at,
            loan: LoanPolicy::default(),
        };
        BatchCommand { aggregate_id: self.rental.to_string(), command, metadata: self.open.clone() }
    }

    fn close(&self) -> BatchCommand<RentalCommand> {
        let command =
            RentalCommand::CloseRental { returned_at: self.returned_at, plan: PricePlan::default() };
        BatchCommand { aggregate_id: self.rental.to_string(), command, metadata: self.close.clone() }
    }

    /// Started days, 1 for the first case and one more for each next one.
    fn days(&self) -> i64 {
        (self.returned_at - self.rented_at).num_hours() / 24 + 1
    }
}

/// Every open, then every close, interleaved across rentals the way a log interleaves them.
fn open_then_close(cases: &[Case]) -> Vec<BatchCommand<RentalCommand>> {
    let mut commands = Vec::new();
    for pair in cases.chunks(2) {
        commands.extend(pair.iter().map(Case::open));
        commands.extend(pair.iter().map(Case::close));
    }
    commands
}

/// A rental stream: `(event_type, metadata, payload, xid)` in stream order.
async fn stream(pool: &PgPool, rental: Uuid) -> Vec<(String, Value, Value, i64)> {
    sqlx::query_as(
        "select event_type, metadata, payload, transaction_id::text::bigint from events
          where aggregate_type = 'rental' and aggregate_id = $1 order by sequence",
    )
    .bind(rental.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The event counts of each outcome: `Some(n)` appended n events, `None` anything else.
fn appended<E: std::error::Error>(outcomes: &[CommandOutcome<E>]) -> Vec<Option<usize>> {
    outcomes
        .iter()
        .map(|o| match o {
            CommandOutcome::Appended(events) => Some(events.len()),
            _ => None,
        })
        .collect()
}

async fn listener(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen(EVENTS_CHANNEL).await.unwrap();
    listener
}

/// The notifications that arrive until none has come for `quiet`.
async fn notifications(listener: &mut PgListener, quiet: Duration) -> Vec<i64> {
    let mut payloads = Vec::new();
    while let Ok(received) = tokio::time::timeout(quiet, listener.recv()).await {
        payloads.push(received.unwrap().payload().parse().unwrap());
    }
    payloads
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_opens_and_closes_many_rentals_in_one_transaction_each_event_with_its_commands_metadata(
    pool: PgPool,
) {
    // Arrange: 20 rentals, each opened and closed in the batch (40 commands).
    let store = EventStore::new(pool.clone());
    let cases = cases(20);
    let mut listener = listener(&pool).await;

    // Act
    let outcomes = store.execute_batch::<Rental>(open_then_close(&cases)).await.unwrap();

    // Assert: the outcomes, command by command.
    let expected: Vec<Option<usize>> = cases
        .chunks(2)
        .flat_map(|pair| [vec![Some(1); pair.len()], vec![Some(2); pair.len()]].concat())
        .collect();
    assert_eq!(appended(&outcomes), expected);
    let mut recorded: Vec<i64> = Vec::new();
    for outcome in &outcomes {
        if let CommandOutcome::Appended(events) = outcome {
            let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
            let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
            match types.as_slice() {
                ["RentalOpened"] => assert_eq!(sequences, [1]),
                ["RentalClosed", "ChargeAssessed"] => assert_eq!(sequences, [2, 3]),
                other => panic!("unexpected events {other:?}"),
            }
            recorded.extend(events.iter().map(|e| e.position));
        }
    }

    // Each stream: opened, closed, charged; each event with its own command's metadata; the
    // charge by the price plan (1, 2, 3 days at 100 cents, then 50 cents a day).
    let mut transactions = std::collections::BTreeSet::new();
    for case in &cases {
        let events = stream(&pool, case.rental).await;
        let types: Vec<&str> = events.iter().map(|(t, ..)| t.as_str()).collect();
        assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed"]);
        let metadata = |m: &Metadata| serde_json::to_value(m).unwrap();
        assert_eq!(events[0].1, metadata(&case.open));
        assert_eq!(events[1].1, metadata(&case.close));
        assert_eq!(events[2].1, metadata(&case.close));
        let days = case.days();
        let cents = if days <= 3 { 100 * days } else { 300 + 50 * (days - 3) };
        assert_eq!(events[2].2["days"].as_i64(), Some(days));
        assert_eq!(events[2].2["amount_cents"].as_i64(), Some(cents), "{days} days");
        transactions.extend(events.iter().map(|e| e.3));
    }
    assert_eq!(transactions.len(), 1, "one append transaction for the whole batch");
    assert_eq!(recorded.len(), 60);
    assert_eq!(count(&pool, "select count(*) from events").await, 60);

    // One notification, with the batch's last position.
    let last = *recorded.iter().max().unwrap();
    assert_eq!(notifications(&mut listener, Duration::from_millis(500)).await, vec![last]);

    // Act again: the same batch changes nothing, appends nothing and notifies no one.
    let again = store.execute_batch::<Rental>(open_then_close(&cases)).await.unwrap();
    assert_eq!(appended(&again), vec![Some(0); 40]);
    assert_eq!(count(&pool, "select count(*) from events").await, 60);
    assert_eq!(notifications(&mut listener, Duration::from_millis(300)).await, Vec::<i64>::new());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refused_command_appends_nothing_and_skips_only_its_own_streams_later_commands(pool: PgPool) {
    // Arrange: `taken` was opened for another movie beforehand; `early` will be closed before it
    // was rented; `fine` is ordinary.
    let store = EventStore::new(pool.clone());
    let cases = cases(3);
    let (taken, early, fine) = (&cases[0], &cases[1], &cases[2]);
    let elsewhere = RentalCommand::OpenRental {
        movie_id: Uuid::now_v7(),
        customer_id: taken.customer,
        rented_at: taken.rented_at,
        loan: LoanPolicy::default(),
    };
    store.execute::<Rental>(&taken.rental.to_string(), elsewhere, &taken.open.clone().into()).await.unwrap();
    let too_early = BatchCommand {
        command: RentalCommand::CloseRental {
            returned_at: early.rented_at - chrono::Duration::hours(1),
            plan: PricePlan::default(),
        },
        ..early.close()
    };

    // Act
    let batch =
        vec![taken.open(), early.open(), fine.open(), taken.close(), too_early, early.close(), fine.close()];
    let outcomes = store.execute_batch::<Rental>(batch).await.unwrap();

    // Assert
    assert!(matches!(
        outcomes[0],
        CommandOutcome::Failed(CommandError::Rejected(RentalError::OpenedDifferently))
    ));
    assert!(matches!(&outcomes[1], CommandOutcome::Appended(e) if e.len() == 1));
    assert!(matches!(&outcomes[2], CommandOutcome::Appended(e) if e.len() == 1));
    assert!(matches!(outcomes[3], CommandOutcome::Skipped), "{:?}", outcomes[3]);
    assert!(matches!(
        outcomes[4],
        CommandOutcome::Failed(CommandError::Rejected(RentalError::ReturnedBeforeRent))
    ));
    assert!(matches!(outcomes[5], CommandOutcome::Skipped), "{:?}", outcomes[5]);
    assert!(matches!(&outcomes[6], CommandOutcome::Appended(e) if e.len() == 2));
    let types =
        |events: Vec<(String, Value, Value, i64)>| events.into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(types(stream(&pool, taken.rental).await), ["RentalOpened"], "only the earlier opening");
    assert_eq!(
        types(stream(&pool, early.rental).await),
        ["RentalOpened"],
        "opened; the refused close left nothing"
    );
    assert_eq!(types(stream(&pool, fine.rental).await), ["RentalOpened", "RentalClosed", "ChargeAssessed"]);

    // The refused stream's state is as its stored events say: a proper close now succeeds.
    let retried = store.execute_batch::<Rental>(vec![early.close()]).await.unwrap();
    assert!(matches!(&retried[0], CommandOutcome::Appended(e) if e.len() == 2), "{retried:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_that_meets_a_concurrent_append_runs_its_commands_one_at_a_time_and_appends_each_event_once(
    pool: PgPool,
) {
    // Arrange: while the batch runs, another transaction appends the very opening the batch is
    // about to append for one rental (as a second process manager would), and commits only once
    // the batch's insert waits for it.
    let store = EventStore::new(pool.clone());
    let cases = cases(5);
    let contested = &cases[2];
    let mut other = eventstore::db::begin(&pool).await.unwrap();
    let opened = encode_event(&RentalEvent::RentalOpened {
        movie_id: contested.movie,
        customer_id: contested.customer,
        rented_at: contested.rented_at,
        due_at: LoanPolicy::default().due_at(contested.rented_at),
    })
    .unwrap();
    let other_meta = Metadata { request_id: Some("other".into()), ..Default::default() };
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             event_id)
         values ('rental', $1, 1, $2, $3, $4, $5, $6)",
    )
    .bind(contested.rental.to_string())
    .bind(&opened.event_type)
    .bind(&opened.event_version)
    .bind(&opened.payload)
    .bind(serde_json::to_value(&other_meta).unwrap())
    .bind(Uuid::now_v7())
    .execute(&mut *other)
    .await
    .unwrap();

    // Act: the batch loads the contested stream empty, and its insert waits on the other one's key.
    let running = {
        let (store, commands) = (store.clone(), open_then_close(&cases));
        tokio::spawn(async move { store.execute_batch::<Rental>(commands).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(
        &pool,
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the batch never waited for the other append");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    other.commit().await.unwrap();
    let outcomes = running.await.unwrap().unwrap();

    // Assert: the contested opening was already there (unchanged); everything else appended once.
    let expected: Vec<Option<usize>> = open_then_close(&cases)
        .iter()
        .map(|c| match &c.command {
            RentalCommand::OpenRental { .. } if c.aggregate_id == contested.rental.to_string() => Some(0),
            RentalCommand::OpenRental { .. } => Some(1),
            _ => Some(2),
        })
        .collect();
    assert_eq!(appended(&outcomes), expected);
    for case in &cases {
        let events = stream(&pool, case.rental).await;
        let types: Vec<&str> = events.iter().map(|(t, ..)| t.as_str()).collect();
        assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed"], "each event exactly once");
        let opener = if case.rental == contested.rental { &other_meta } else { &case.open };
        assert_eq!(events[0].1, serde_json::to_value(opener).unwrap());
        assert_eq!(events[2].1, serde_json::to_value(&case.close).unwrap());
    }
    // Nothing of the batch's own insert was kept: one transaction for the other append, then one
    // per command that appended (4 openings and 5 closes).
    let transactions = count(&pool, "select count(distinct transaction_id) from events").await;
    assert_eq!(transactions, 1 + 4 + 5);
}

fn rent(rental_id: Uuid, customer_id: Uuid, rented_at: DateTime<Utc>) -> MovieCommand {
    MovieCommand::RentMovie { rental_id, customer_id, rented_at, now: Utc::now() }
}

fn give_back(rental_id: Uuid, customer: Uuid, returned_at: DateTime<Utc>) -> MovieCommand {
    MovieCommand::ReturnMovie { rental_id, by: Actor::customer(customer), returned_at, now: Utc::now() }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_on_snapshotting_streams_starts_from_their_snapshots_and_writes_the_next_one(pool: PgPool) {
    // Arrange: `long` has 39 events (a snapshot at 20); `fresh` has only been added.
    let store = EventStore::new(pool.clone());
    let meta = Metadata { request_id: Some("req".into()), ..Default::default() };
    let context = CommandContext::from(meta.clone());
    let (long, fresh) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    store
        .execute::<Movie>(
            &long,
            MovieCommand::AddMovie { details: crate::common::movie_details("Long", &[Uuid::now_v7()]) },
            &context,
        )
        .await
        .unwrap();
    store
        .execute::<Movie>(
            &fresh,
            MovieCommand::AddMovie { details: crate::common::movie_details("Fresh", &[Uuid::now_v7()]) },
            &context,
        )
        .await
        .unwrap();
    let customer = Uuid::now_v7();
    let mut at =
        (Utc::now() - chrono::Duration::days(30)).duration_trunc(chrono::Duration::seconds(1)).unwrap();
    for _ in 0..19 {
        let rental = Uuid::now_v7();
        store.execute::<Movie>(&long, rent(rental, customer, at), &context).await.unwrap();
        store
            .execute::<Movie>(&long, give_back(rental, customer, at + chrono::Duration::hours(1)), &context)
            .await
            .unwrap();
        at += chrono::Duration::hours(2);
    }
    let snapshot = "select last_sequence from snapshots where aggregate_type = 'movie' and aggregate_id = $1";
    let at_sequence =
        || async { sqlx::query_scalar::<_, i64>(snapshot).bind(&long).fetch_optional(&pool).await.unwrap() };
    assert_eq!(at_sequence().await, Some(20));

    // Act: a rent and a return of `long` (39 → 41 events, across 40) and a rent of `fresh`, by a
    // store that remembers neither stream (another process).
    let store = EventStore::new(pool.clone());
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let command = |aggregate_id: &str, command| BatchCommand {
        aggregate_id: aggregate_id.into(),
        command,
        metadata: meta.clone(),
    };
    let batch = vec![
        command(&long, rent(first, customer, at)),
        command(&fresh, rent(second, customer, at)),
        command(&long, give_back(first, customer, at + chrono::Duration::hours(3))),
    ];
    let outcomes = store.execute_batch::<Movie>(batch).await.unwrap();

    // Assert: the events, at the right sequences.
    let sequences: Vec<Vec<i64>> = outcomes
        .iter()
        .map(|o| match o {
            CommandOutcome::Appended(events) => events.iter().map(|e| e.sequence).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sequences, vec![vec![40], vec![2], vec![41]]);
    // A new snapshot at the batch's version, holding what a full replay gives (each event applied
    // once: 20 rentals, the copy back).
    assert_eq!(at_sequence().await, Some(41));
    let snapshotted = crate::common::movie_snapshot(&pool, &long).await;
    let replayed = store.replay::<Movie>(&long).await.unwrap();
    assert_eq!(replayed.version, 41);
    assert_eq!(snapshotted, replayed.state);
    assert_eq!(store.load::<Movie>(&long).await.unwrap().state, replayed.state);
    assert_eq!(replayed.state.times_rented, 20);
    assert!(replayed.state.available());
    let fresh_state = store.replay::<Movie>(&fresh).await.unwrap().state;
    assert!(!fresh_state.available());
    // The lookup rows came with the events.
    let returned = lookup::find_rental(&pool, first).await.unwrap().unwrap();
    assert_eq!(returned.returned_at, Some(at + chrono::Duration::hours(3)));
    let out = lookup::find_rental(&pool, second).await.unwrap().unwrap();
    assert_eq!((out.movie_id.to_string(), out.returned_at), (fresh.clone(), None));
}
