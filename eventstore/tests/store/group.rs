//! Grouped appends on a real database: commands that arrive together share one load and one
//! transaction, and each still gets exactly its own answer.

use std::collections::BTreeSet;
use std::time::Duration;

use domain::category::{Category, CategoryCommand, CategoryError};
use domain::values::CategoryName;
use eventstore::lookup::Constraint;
use eventstore::{CommandContext, CommandError, Committed, EventStore};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::idempotency::{claimed, create};

type Answer = Result<Committed<Category>, CommandError<CategoryError>>;

fn rename(name: &str) -> CategoryCommand {
    CategoryCommand::RenameCategory { name: CategoryName::parse(name).unwrap() }
}

/// Runs every command at once, each from a task of its own; the answers in the commands' order.
async fn all_at_once(
    store: &EventStore,
    commands: Vec<(String, CategoryCommand, CommandContext)>,
) -> Vec<Answer> {
    let mut tasks = JoinSet::new();
    for (i, (id, command, context)) in commands.into_iter().enumerate() {
        let store = store.clone();
        tasks.spawn(async move { (i, store.execute::<Category>(&id, command, &context).await) });
    }
    let mut answers: Vec<(usize, Answer)> = tasks.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// The transaction ids that appended the events at these positions.
async fn transactions(pool: &PgPool, positions: &[i64]) -> BTreeSet<i64> {
    let xids: Vec<i64> =
        sqlx::query_scalar("select transaction_id::text::bigint from events where position = any($1)")
            .bind(positions)
            .fetch_all(pool)
            .await
            .unwrap();
    xids.into_iter().collect()
}

/// An open transaction that has appended the next event of `id`'s stream: an append of the same
/// stream waits for it, and meets a conflict once it commits.
async fn append_in_the_way(
    pool: &PgPool,
    id: &str,
    name: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    let next: i64 = sqlx::query_scalar(
        "select coalesce(max(sequence), 0) + 1 from events where aggregate_type = 'category' and aggregate_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    insert_renamed(&mut tx, id, next, name).await;
    tx
}

async fn insert_renamed(conn: &mut PgConnection, id: &str, sequence: i64, name: &str) {
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                             metadata, event_id)
         values ('category', $1, $2, 'CategoryRenamed', '1.0', jsonb_build_object('name', $3::text), '{}', $4)",
    )
    .bind(id)
    .bind(sequence)
    .bind(name)
    .bind(Uuid::now_v7())
    .execute(conn)
    .await
    .unwrap();
}

async fn created(store: &EventStore, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        let id = Uuid::now_v7().to_string();
        store.execute::<Category>(&id, create(name), &CommandContext::default()).await.unwrap();
        ids.push(id);
    }
    ids
}

#[sqlx::test(migrations = "../migrations")]
async fn sixty_four_commands_at_once_share_a_few_transactions_and_each_gets_its_own_answer(pool: PgPool) {
    // Arrange
    let store = EventStore::new(pool.clone());
    let ids: Vec<String> = (0..64).map(|_| Uuid::now_v7().to_string()).collect();
    let commands = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), create(&format!("Genre {i}")), CommandContext::default()));

    // Act
    let answers = all_at_once(&store, commands.collect()).await;

    // Assert: each answer is its own command's, and the 64 appends took a handful of transactions.
    let mut positions = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let done = answer.as_ref().unwrap_or_else(|e| panic!("command {i}: {e}"));
        assert_eq!(done.state.name.as_ref().map(|n| n.as_str().to_string()), Some(format!("Genre {i}")));
        assert_eq!((done.version, done.events.len()), (1, 1), "command {i}");
        assert_eq!(done.position, done.events[0].position);
        positions.push(done.position);
    }
    let distinct: BTreeSet<i64> = positions.iter().copied().collect();
    assert_eq!(distinct.len(), 64, "every command has a position of its own");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("select aggregate_id, position from events order by position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 64);
    for (id, position) in &stored {
        let i = ids.iter().position(|known| known == id).expect("an event of one of the commands");
        assert_eq!(*position, positions[i], "the answer of command {i} names its own event");
    }
    let transactions = transactions(&pool, &positions).await;
    assert!(transactions.len() <= 8, "64 commands at once took {} transactions", transactions.len());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_command_whose_stream_changes_under_its_group_is_retried_alone_and_the_others_commit(pool: PgPool) {
    // Arrange: three categories; another writer has appended to the first one and not committed.
    let store = EventStore::new(pool.clone());
    let ids = created(&store, &["Drama", "Horror", "Western"]).await;
    let in_the_way = append_in_the_way(&pool, &ids[0], "Tragedy").await;
    let commands = vec![
        (ids[0].clone(), rename("Melodrama"), CommandContext::default()),
        (ids[1].clone(), rename("Terror"), CommandContext::default()),
        (ids[2].clone(), rename("Frontier"), CommandContext::default()),
    ];

    // Act: the group's append waits for the other writer, which then commits.
    let running = {
        let store = store.clone();
        tokio::spawn(async move { all_at_once(&store, commands).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    in_the_way.commit().await.unwrap();
    let answers = running.await.unwrap();

    // Assert: every command committed; the first on top of the other writer's event.
    let names: Vec<String> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().state.name.as_ref().unwrap().as_str().to_string())
        .collect();
    assert_eq!(names, ["Melodrama", "Terror", "Frontier"]);
    assert_eq!(answers[0].as_ref().unwrap().version, 3, "created, renamed by the other writer, renamed");
    assert_eq!((answers[1].as_ref().unwrap().version, answers[2].as_ref().unwrap().version), (2, 2));
    let first: Vec<String> =
        sqlx::query_scalar("select payload->>'name' from events where aggregate_id = $1 order by sequence")
            .bind(&ids[0])
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(first, ["Drama", "Tragedy", "Melodrama"]);
}

#[sqlx::test(migrations = "../migrations")]
async fn two_categories_given_one_name_in_one_group_are_one_created_and_one_refused(pool: PgPool) {
    // Arrange: a group held up by another writer, so the next commands queue as one group.
    let store = EventStore::new(pool.clone());
    let ids = created(&store, &["Drama"]).await;
    let in_the_way = append_in_the_way(&pool, &ids[0], "Tragedy").await;
    let held = {
        let store = store.clone();
        let id = ids[0].clone();
        tokio::spawn(async move {
            store.execute::<Category>(&id, rename("Melodrama"), &CommandContext::default()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let twins = vec![
        (Uuid::now_v7().to_string(), create("Film Noir"), CommandContext::default()),
        (Uuid::now_v7().to_string(), create("FILM NOIR"), CommandContext::default()),
    ];
    let running = {
        let store = store.clone();
        tokio::spawn(async move { all_at_once(&store, twins).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    in_the_way.commit().await.unwrap();
    let answers = running.await.unwrap();

    // Assert: exactly one of the two is created; the other gets the unique rule, as alone.
    assert!(held.await.unwrap().is_ok());
    let created: Vec<&Answer> = answers.iter().filter(|a| a.is_ok()).collect();
    let refused: Vec<&Answer> =
        answers.iter().filter(|a| matches!(a, Err(CommandError::Unique(Constraint::CategoryName)))).collect();
    assert_eq!((created.len(), refused.len()), (1, 1), "{answers:?}");
    let noir: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'CategoryCreated' and payload->>'name' ilike 'film noir'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(noir, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_idempotency_key_given_to_two_commands_of_one_group_appends_once(pool: PgPool) {
    // Arrange: one request's claim on two commands that arrive together.
    let store = EventStore::new(pool.clone());
    let claim = claimed(&pool, "k-twice", b"x").await;
    let context = CommandContext { claim: Some(claim), ..Default::default() };
    let commands = vec![
        (Uuid::now_v7().to_string(), create("Anime"), context.clone()),
        (Uuid::now_v7().to_string(), create("Animation"), context),
    ];

    // Act
    let answers = all_at_once(&store, commands).await;

    // Assert: one of them appended; the other could not take the key's one append.
    let appended = answers.iter().filter(|a| a.is_ok()).count();
    let lost = answers.iter().filter(|a| matches!(a, Err(CommandError::ClaimLost))).count();
    assert_eq!((appended, lost), (1, 1), "{answers:?}");
    let events: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refused_command_in_a_group_leaves_the_next_one_of_its_stream_its_own_answer(pool: PgPool) {
    // Arrange: a rename of a category that does not exist yet, then its create, then a rename,
    // arriving together (the test's runtime runs the tasks in the order they were spawned).
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    let commands = vec![
        (id.clone(), rename("Early"), CommandContext::default()),
        (id.clone(), create("Documentary"), CommandContext::default()),
        (id.clone(), rename("Documentaries"), CommandContext::default()),
    ];

    // Act
    let answers = all_at_once(&store, commands).await;

    // Assert: each as alone, in the order they came.
    assert!(matches!(answers[0], Err(CommandError::Rejected(_))), "{:?}", answers[0]);
    assert_eq!(answers[1].as_ref().unwrap().version, 1);
    assert_eq!(answers[2].as_ref().unwrap().version, 2);
}
