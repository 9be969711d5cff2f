//! The read models and the payments process manager on a real database, through their public
//! behaviour only: commands go in through `EventStore::execute`, projections advance through
//! `Engine::catch_up`, and results come out through the readers, the checkpoints and plain
//! selects on `read.*`.

use chrono::{DateTime, Duration, DurationRound, NaiveDate, TimeZone, Utc};
use domain::category::{Category, CategoryCommand};
use domain::movie::{Movie, MovieChanges, MovieCommand, MovieDetails};
use domain::price::PricePlan;
use domain::rental::{Rental, RentalCommand, RentalError};
use domain::values::{CategoryIds, CategoryName, Director, Rating, Storyline, Title};
use domain::Actor;
use eventstore::{CommandError, EventStore, Metadata};
use projections::catalogue::{self, CatalogueReader, MovieFilter, MovieRow};
use projections::engine::{checkpoints, BatchOutcome, Engine, EngineConfig};
use projections::rebuild::{self, TableDiff};
use projections::rentals::{self, RentalRow, RentalsReader};
use projections::{all, analytics, payments};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const READ_MODELS: [&str; 2] = [catalogue::NAME, rentals::NAME];

fn engine(pool: &PgPool, waits: payments::ChargeWaits) -> Engine {
    Engine::new(
        pool.clone(),
        all(EventStore::new(pool.clone()), PricePlan::default(), Default::default(), waits),
        EngineConfig::default(),
    )
}

/// Metadata of a client command: its request id also starts the correlation chain.
fn meta(actor: Uuid, request: &str) -> Metadata {
    Metadata {
        actor_id: Some(actor),
        request_id: Some(request.to_string()),
        correlation_id: Some(request.to_string()),
        causation_id: None,
    }
}

/// A recent instant with whole seconds, so it survives `timestamptz` (microseconds) exactly.
fn days_ago(days: i64) -> DateTime<Utc> {
    (Utc::now() - Duration::days(days)).duration_trunc(Duration::seconds(1)).unwrap()
}

/// The store, the engine and an admin acting for everyone.
struct World {
    pool: PgPool,
    store: EventStore,
    engine: Engine,
    /// The payments waiting for charges that the engine's process manager wakes.
    waits: payments::ChargeWaits,
    admin: Uuid,
}

impl World {
    fn new(pool: &PgPool) -> Self {
        let waits = payments::ChargeWaits::default();
        Self {
            pool: pool.clone(),
            store: EventStore::new(pool.clone()),
            engine: engine(pool, waits.clone()),
            waits,
            admin: Uuid::now_v7(),
        }
    }

    fn meta(&self) -> Metadata {
        meta(self.admin, "req-admin")
    }

    fn catalogue(&self) -> CatalogueReader {
        CatalogueReader::new(self.pool.clone())
    }

    fn rentals(&self) -> RentalsReader {
        RentalsReader::new(self.pool.clone())
    }

    /// Payments first (it appends rental events), then the read models.
    async fn catch_up_all(&self) {
        self.catch_up(payments::NAME).await;
        for name in READ_MODELS {
            self.catch_up(name).await;
        }
    }

    /// Catches `name` up past every event committed so far; returns how many it applied.
    ///
    /// `Engine::catch_up` stops at the horizon of running transactions, which is cluster-wide:
    /// a write transaction open in another database (another test, a benchmark's rebuild) holds
    /// it back while it lasts, and `catch_up` then returns early. So catch up again until the
    /// checkpoint has passed the last event this test can see.
    async fn catch_up(&self, name: &str) -> usize {
        let last: Option<(i64, i64)> = sqlx::query_as(
            "select transaction_id::text::bigint, position from events
              order by transaction_id desc, position desc limit 1",
        )
        .fetch_optional(&self.pool)
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut applied = 0;
        loop {
            applied += self.engine.catch_up(name).await.unwrap();
            let at = self.checkpoint(name).await;
            if last.is_none_or(|last| at >= last) {
                return applied;
            }
            assert!(std::time::Instant::now() < deadline, "{name} stuck at {at:?}, short of {last:?}");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// `(last_xid, last_position)` of a projection.
    async fn checkpoint(&self, name: &str) -> (i64, i64) {
        sqlx::query_as("select last_xid, last_position from projection_checkpoint where name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn create_category(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        let name = CategoryName::parse(name).unwrap();
        self.store
            .execute::<Category>(
                &id.to_string(),
                CategoryCommand::CreateCategory { name },
                &self.meta().into(),
            )
            .await
            .unwrap();
        id
    }

    async fn rename_category(&self, id: Uuid, name: &str) {
        let name = CategoryName::parse(name).unwrap();
        let done = self
            .store
            .execute::<Category>(
                &id.to_string(),
                CategoryCommand::RenameCategory { name },
                &self.meta().into(),
            )
            .await
            .unwrap();
        assert_eq!(done.events.len(), 1);
    }

    async fn add_movie(
        &self,
        title: &str,
        storyline: &str,
        director: Option<&str>,
        categories: &[Uuid],
    ) -> Uuid {
        let id = Uuid::now_v7();
        let details = MovieDetails {
            title: Title::parse(title).unwrap(),
            storyline: Storyline::parse(storyline).unwrap(),
            release_date: NaiveDate::from_ymd_opt(1998, 3, 6).unwrap(),
            rating: Rating::parse(8.1).unwrap(),
            director: director.map(|d| Director::parse(d).unwrap()),
            category_ids: CategoryIds::parse(categories.to_vec()).unwrap(),
        };
        self.store
            .execute::<Movie>(&id.to_string(), MovieCommand::AddMovie { details }, &self.meta().into())
            .await
            .unwrap();
        id
    }

    async fn update_movie(&self, id: Uuid, changes: MovieChanges) -> i64 {
        let done = self
            .store
            .execute::<Movie>(&id.to_string(), MovieCommand::UpdateMovie { changes }, &self.meta().into())
            .await
            .unwrap();
        assert_eq!(done.events.len(), 1, "the update changed something");
        done.version
    }

    async fn retire(&self, id: Uuid) {
        self.store
            .execute::<Movie>(&id.to_string(), MovieCommand::RetireMovie, &self.meta().into())
            .await
            .unwrap();
    }

    /// Rents the copy; returns the rental id and the stream version after the rent.
    async fn rent_with(
        &self,
        movie: Uuid,
        customer: Uuid,
        rented_at: DateTime<Utc>,
        metadata: &Metadata,
    ) -> (Uuid, i64) {
        let rental_id = Uuid::now_v7();
        let command =
            MovieCommand::RentMovie { rental_id, customer_id: customer, rented_at, now: Utc::now() };
        let done =
            self.store.execute::<Movie>(&movie.to_string(), command, &metadata.clone().into()).await.unwrap();
        (rental_id, done.version)
    }

    async fn rent(&self, movie: Uuid, customer: Uuid, rented_at: DateTime<Utc>) -> (Uuid, i64) {
        self.rent_with(movie, customer, rented_at, &meta(customer, "req-rent")).await
    }

    /// Returns the copy (as the renter); returns the stream version after the return.
    async fn give_back_with(
        &self,
        movie: Uuid,
        rental_id: Uuid,
        customer: Uuid,
        returned_at: DateTime<Utc>,
        metadata: &Metadata,
    ) -> i64 {
        let by = Actor::customer(customer);
        let command = MovieCommand::ReturnMovie { rental_id, by, returned_at, now: Utc::now() };
        self.store
            .execute::<Movie>(&movie.to_string(), command, &metadata.clone().into())
            .await
            .unwrap()
            .version
    }

    async fn give_back(
        &self,
        movie: Uuid,
        rental_id: Uuid,
        customer: Uuid,
        returned_at: DateTime<Utc>,
    ) -> i64 {
        self.give_back_with(movie, rental_id, customer, returned_at, &meta(customer, "req-return")).await
    }

    async fn pay(
        &self,
        rental_id: Uuid,
        customer: Uuid,
        amount_cents: i64,
    ) -> Result<(), CommandError<RentalError>> {
        let command =
            RentalCommand::PayRental { amount_cents, by: Actor::customer(customer), paid_at: days_ago(0) };
        self.store
            .execute::<Rental>(&rental_id.to_string(), command, &meta(customer, "req-pay").into())
            .await
            .map(|_| ())
    }

    async fn movie(&self, id: Uuid) -> MovieRow {
        self.catalogue().movie(id).await.unwrap().expect("the movie is in the catalogue")
    }

    async fn rental(&self, id: Uuid) -> RentalRow {
        self.rentals().rental(id).await.unwrap().expect("the rental is in the read model")
    }

    /// `(name, movie_count)` of every category, in the reader's order.
    async fn category_counts(&self) -> Vec<(String, i32)> {
        self.catalogue().categories().await.unwrap().into_iter().map(|c| (c.name, c.movie_count)).collect()
    }

    async fn list(&self, filter: MovieFilter) -> Vec<Uuid> {
        self.catalogue().movies(&filter).await.unwrap().into_iter().map(|m| m.movie_id).collect()
    }

    /// Every row of a `read` table, in a stable order.
    async fn table(&self, table: &str, key: &str) -> Vec<Value> {
        sqlx::query_scalar(&format!("select to_jsonb(t) from read.{table} t order by {key}"))
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn read_tables(&self) -> Vec<Vec<Value>> {
        vec![
            self.table("category", "category_id").await,
            self.table("movie", "movie_id").await,
            self.table("rental", "rental_id").await,
            self.table("rental_movie", "movie_id").await,
        ]
    }

    async fn reset_checkpoint(&self, name: &str) {
        let done =
            sqlx::query("update projection_checkpoint set last_xid = 0, last_position = 0 where name = $1")
                .bind(name)
                .execute(&self.pool)
                .await
                .unwrap();
        assert_eq!(done.rows_affected(), 1, "{name} has a checkpoint");
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// A mixed workload: `movies` movies in three categories, rent/return cycles on every other
    /// movie (one of them left out, one paid), a rename, an update and a retirement.
    async fn workload(&self, movies: usize) -> Vec<Uuid> {
        let drama = self.create_category("Drama").await;
        let crime = self.create_category("Crime").await;
        let comedy = self.create_category("Comedy").await;
        let mut ids = Vec::new();
        for i in 0..movies {
            let categories = match i % 3 {
                0 => vec![drama],
                1 => vec![crime, drama],
                _ => vec![comedy],
            };
            let title = format!("Film {:02}", (i * 7) % movies);
            ids.push(
                self.add_movie(&title, "Somebody does something.", Some("A. Director"), &categories).await,
            );
        }
        let customer = Uuid::now_v7();
        let start = days_ago(60);
        let mut paid = false;
        for (i, movie) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let mut at = start;
            for cycle in 0..2 {
                let (rental, _) = self.rent(*movie, customer, at).await;
                if i == 0 && cycle == 1 {
                    break; // still out
                }
                let back = at + Duration::hours(30 + i as i64);
                self.give_back(*movie, rental, customer, back).await;
                at = back + Duration::hours(1);
                if !paid {
                    // Charge it first, then pay it.
                    self.catch_up(payments::NAME).await;
                    self.pay(rental, customer, 200).await.unwrap();
                    paid = true;
                }
            }
        }
        self.rename_category(crime, "Crime & Noir").await;
        self.update_movie(
            ids[1],
            MovieChanges { title: Some(Title::parse("Renamed Film").unwrap()), ..Default::default() },
        )
        .await;
        self.update_movie(
            ids[4],
            MovieChanges {
                category_ids: Some(CategoryIds::parse(vec![comedy, crime]).unwrap()),
                ..Default::default()
            },
        )
        .await;
        self.retire(ids[3]).await;
        ids
    }
}

fn filter(limit: i64) -> MovieFilter {
    MovieFilter { available: None, limit, ..Default::default() }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_catalogue_follows_categories_and_movies_through_their_lives(pool: PgPool) {
    // Arrange: three categories, one renamed; a movie in two categories, another in one.
    let w = World::new(&pool);
    let drama = w.create_category("Drama").await;
    let comedy = w.create_category("Comedy").await;
    let crime = w.create_category("Crime").await;
    w.rename_category(comedy, "Comedies").await;
    let lebowski =
        w.add_movie("The Big Lebowski", "The Dude abides.", Some("Joel Coen"), &[drama, comedy]).await;
    let heat = w.add_movie("Heat", "A heist.", None, &[crime]).await;

    // Act & Assert: created, renamed, counted in both categories.
    w.catch_up(catalogue::NAME).await;
    assert_eq!(
        w.category_counts().await,
        vec![("Comedies".into(), 1), ("Crime".into(), 1), ("Drama".into(), 1)],
        "categories by name, with their counts"
    );
    assert_eq!(w.catalogue().category_by_name("COMEDIES").await.unwrap(), Some(comedy));
    assert_eq!(w.catalogue().category(drama).await.unwrap().unwrap().name, "Drama");
    let row = w.movie(lebowski).await;
    assert_eq!(row.title, "The Big Lebowski");
    assert_eq!(row.storyline, "The Dude abides.");
    assert_eq!(row.director.as_deref(), Some("Joel Coen"));
    assert_eq!(row.release_date, NaiveDate::from_ymd_opt(1998, 3, 6).unwrap());
    assert_eq!(row.rating_tenths, 81);
    assert_eq!(row.category_names, vec!["Drama".to_string(), "Comedies".to_string()]);
    assert!(row.available && !row.retired);
    assert_eq!((row.times_rented, row.version), (0, 1));

    // An update that moves the movie from Comedies to Crime adjusts both counts.
    let version = w
        .update_movie(
            lebowski,
            MovieChanges {
                category_ids: Some(CategoryIds::parse(vec![drama, crime]).unwrap()),
                ..Default::default()
            },
        )
        .await;
    w.catch_up(catalogue::NAME).await;
    assert_eq!(
        w.category_counts().await,
        vec![("Comedies".into(), 0), ("Crime".into(), 2), ("Drama".into(), 1)]
    );
    let row = w.movie(lebowski).await;
    assert_eq!(row.category_names, vec!["Drama".to_string(), "Crime".to_string()]);
    assert_eq!(row.version, version);

    // A rename shows in every movie of the category.
    w.rename_category(crime, "Crime & Noir").await;
    w.catch_up(catalogue::NAME).await;
    assert_eq!(w.movie(lebowski).await.category_names, vec!["Drama".to_string(), "Crime & Noir".to_string()]);
    assert_eq!(w.movie(heat).await.category_names, vec!["Crime & Noir".to_string()]);
    let listed = w.catalogue().movies(&MovieFilter { category: Some(crime), ..filter(10) }).await.unwrap();
    assert!(listed.iter().all(|m| m.category_names.contains(&"Crime & Noir".to_string())), "{listed:?}");

    // Rent: unavailable, rented once, at the stream's version; return: available again.
    let customer = Uuid::now_v7();
    let (rental, version) = w.rent(heat, customer, days_ago(2)).await;
    w.catch_up(catalogue::NAME).await;
    let row = w.movie(heat).await;
    assert_eq!((row.available, row.times_rented, row.version), (false, 1, version));
    assert_eq!(version, 2);
    let version = w.give_back(heat, rental, customer, days_ago(1)).await;
    w.catch_up(catalogue::NAME).await;
    let row = w.movie(heat).await;
    assert_eq!((row.available, row.times_rented, row.version), (true, 1, version));

    // Retiring decrements its categories and hides it from listings, not from details.
    w.retire(lebowski).await;
    w.catch_up(catalogue::NAME).await;
    assert_eq!(
        w.category_counts().await,
        vec![("Comedies".into(), 0), ("Crime & Noir".into(), 1), ("Drama".into(), 0)]
    );
    assert_eq!(w.list(filter(10)).await, vec![heat], "a retired movie is never listed");
    let row = w.movie(lebowski).await;
    assert!(row.retired && !row.available, "{row:?}");
    assert_eq!(row.title, "The Big Lebowski");
}

#[sqlx::test(migrations = "../migrations")]
async fn movies_are_searched_filtered_ordered_and_paged(pool: PgPool) {
    // Arrange
    let w = World::new(&pool);
    let crime = w.create_category("Crime").await;
    let comedy = w.create_category("Comedy").await;
    let lebowski =
        w.add_movie("The Big Lebowski", "The Dude abides.", Some("Joel Coen"), &[comedy, crime]).await;
    let fargo = w.add_movie("Fargo", "A pregnant police chief.", Some("Joel Coen"), &[crime]).await;
    let son = w.add_movie("Son of Lebowski", "Bowling again.", Some("Someone Else"), &[comedy]).await;
    let percent = w.add_movie("100% Love", "Fully.", None, &[comedy]).await;
    let thousand = w.add_movie("1000 Lovers", "Many.", None, &[comedy]).await;
    let underscore = w.add_movie("A_B Story", "Letters.", None, &[comedy]).await;
    let axb = w.add_movie("AxB Story", "More letters.", None, &[comedy]).await;
    let heat_a = w.add_movie("Heat", "A heist.", Some("Michael Mann"), &[crime]).await;
    let heat_b = w.add_movie("Heat", "Another heist.", None, &[crime]).await;
    let zodiac = w.add_movie("Zodiac", "A cipher.", Some("David Fincher"), &[crime]).await;
    let retired = w.add_movie("Lebowski Retired", "Gone.", Some("Joel Coen"), &[comedy]).await;
    w.retire(retired).await;
    let customer = Uuid::now_v7();
    w.rent(fargo, customer, days_ago(1)).await;
    w.rent(heat_b, customer, days_ago(1)).await;
    w.catch_up(catalogue::NAME).await;

    let search = |words: &[&str]| MovieFilter {
        words: words.iter().map(|w| w.to_string()).collect(),
        available: None,
        limit: 50,
        ..Default::default()
    };

    // Words: case-insensitive substrings of title, storyline or director, every one required.
    assert_eq!(w.list(search(&["LEBOW", "coen"])).await, vec![lebowski]);
    assert_eq!(w.list(search(&["lebow"])).await, vec![son, lebowski], "retired never listed");
    assert_eq!(w.list(search(&["COEN"])).await, vec![fargo, lebowski], "director");
    assert_eq!(w.list(search(&["dude"])).await, vec![lebowski], "storyline");
    assert_eq!(w.list(search(&["heist", "mann"])).await, vec![heat_a]);
    assert_eq!(w.list(search(&["lebow", "fincher"])).await, Vec::<Uuid>::new());
    // `%` and `_` match themselves only.
    assert_eq!(w.list(search(&["100%"])).await, vec![percent]);
    assert_eq!(w.list(search(&["%"])).await, vec![percent]);
    assert_eq!(w.list(search(&["a_b"])).await, vec![underscore]);
    assert_eq!(w.list(search(&["_"])).await, vec![underscore]);
    assert_eq!(w.list(search(&["1000"])).await, vec![thousand]);

    // Category filter.
    let mut in_crime = vec![fargo, heat_a, heat_b, lebowski, zodiac];
    in_crime[1..3].sort();
    assert_eq!(w.list(MovieFilter { category: Some(crime), ..filter(50) }).await, in_crime);
    assert_eq!(
        w.list(MovieFilter { category: Some(crime), words: vec!["COEN".into()], ..filter(50) }).await,
        vec![fargo, lebowski]
    );

    // Availability: available only, rented only, both.
    let available = w.list(MovieFilter { available: Some(true), ..filter(50) }).await;
    assert_eq!(available.len(), 8);
    assert!(!available.contains(&fargo) && !available.contains(&heat_b) && !available.contains(&retired));
    assert_eq!(w.list(MovieFilter { available: Some(false), ..filter(50) }).await, vec![fargo, heat_b]);
    assert_eq!(
        w.list(MovieFilter { available: Some(true), words: vec!["heat".into()], ..filter(50) }).await,
        vec![heat_a]
    );

    // Order: title (byte order in this database's C collation), then id.
    let mut heats = [heat_a, heat_b];
    heats.sort();
    let everyone = vec![percent, thousand, underscore, axb, fargo, heats[0], heats[1], son, lebowski, zodiac];
    assert_eq!(w.list(filter(50)).await, everyone);

    // Paging: `limit + 1` rows while there is a next page; every movie exactly once.
    assert_eq!(w.list(filter(10)).await.len(), 10, "exactly `limit` left: no extra row");
    assert_eq!(w.list(filter(9)).await.len(), 10, "one more than `limit`: there is a next page");
    for limit in [1, 2, 3, 4, 10] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let mut page =
                w.catalogue().movies(&MovieFilter { after: after.clone(), ..filter(limit) }).await.unwrap();
            pages += 1;
            assert!(pages <= 20, "paging terminates");
            let more = page.len() as i64 > limit;
            page.truncate(limit as usize);
            seen.extend(page.iter().map(|m| m.movie_id));
            if !more {
                break;
            }
            let last = page.last().unwrap();
            after = Some((last.title.clone(), last.movie_id));
        }
        assert_eq!(seen, everyone, "limit {limit}: every movie once, in order");
        assert_eq!(pages, everyone.len().div_ceil(limit as usize), "limit {limit}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rental_is_charged_by_the_process_manager_and_paid(pool: PgPool) {
    // Arrange
    let w = World::new(&pool);
    let crime = w.create_category("Crime").await;
    let heat = w.add_movie("Heat", "A heist.", None, &[crime]).await;
    let customer = Uuid::now_v7();
    let rented_at = days_ago(10);
    let returned_at = rented_at + Duration::hours(80);
    let rent_meta = Metadata {
        actor_id: Some(customer),
        request_id: Some("req-rent".into()),
        correlation_id: Some("corr-rent".into()),
        causation_id: None,
    };
    let return_meta = Metadata {
        actor_id: Some(customer),
        request_id: Some("req-return".into()),
        correlation_id: Some("corr-return".into()),
        causation_id: None,
    };

    // Act & Assert: active after the rent.
    let (rental_id, _) = w.rent_with(heat, customer, rented_at, &rent_meta).await;
    w.catch_up_all().await;
    let row = w.rental(rental_id).await;
    assert_eq!(row.status, "active");
    assert_eq!((row.movie_id, row.customer_id, row.movie_title.as_str()), (heat, customer, "Heat"));
    assert_eq!((row.rented_at, row.returned_at), (rented_at, None));
    assert_eq!(row.charge_cents, None);

    // Returned, before the process manager has assessed the charge.
    w.give_back_with(heat, rental_id, customer, returned_at, &return_meta).await;
    w.catch_up(rentals::NAME).await;
    let row = w.rental(rental_id).await;
    assert_eq!((row.status.as_str(), row.returned_at), ("returned", Some(returned_at)));
    assert_eq!(w.rentals().balance_due(customer).await.unwrap(), 0);

    // Charged: 80 hours are 4 started days, 350 cents.
    w.catch_up(payments::NAME).await;
    w.catch_up(rentals::NAME).await;
    let row = w.rental(rental_id).await;
    assert_eq!(row.status, "charged");
    assert_eq!(
        (row.charge_days, row.charge_cents, row.currency.as_deref()),
        (Some(4), Some(350), Some("EUR"))
    );
    assert_eq!(row.movie_title, "Heat");
    assert_eq!(row.paid_at, None);
    assert_eq!(w.rentals().balance_due(customer).await.unwrap(), 350);

    // Paid with the exact amount (a wrong amount is refused).
    let wrong = w.pay(rental_id, customer, 300).await.unwrap_err();
    assert!(
        matches!(wrong, CommandError::Rejected(RentalError::WrongAmount { expected_cents: 350 })),
        "{wrong}"
    );
    w.pay(rental_id, customer, 350).await.unwrap();
    w.catch_up_all().await;
    let row = w.rental(rental_id).await;
    assert_eq!(row.status, "paid");
    assert!(row.paid_at.is_some());
    assert_eq!(w.rentals().balance_due(customer).await.unwrap(), 0);

    // Causation and correlation of the process manager's events.
    let cause = |event_type: &str| {
        sqlx::query_scalar::<_, Uuid>(
            "select event_id from events where aggregate_type = 'movie' and aggregate_id = $1 and event_type = $2",
        )
        .bind(heat.to_string())
        .bind(event_type.to_string())
        .fetch_one(&pool)
    };
    let rented_event = cause("MovieRented").await.unwrap();
    let returned_event = cause("MovieReturned").await.unwrap();
    let stream: Vec<(String, Value)> = sqlx::query_as(
        "select event_type, metadata from events where aggregate_type = 'rental' and aggregate_id = $1
          order by sequence",
    )
    .bind(rental_id.to_string())
    .fetch_all(&pool)
    .await
    .unwrap();
    let types: Vec<&str> = stream.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed", "RentalPaid"]);
    let expect = |(event_type, metadata): &(String, Value), cause: Uuid, correlation: &str| {
        assert_eq!(metadata["causation_id"], Value::String(cause.to_string()), "{event_type}: {metadata}");
        assert_eq!(metadata["correlation_id"], Value::String(correlation.into()), "{event_type}: {metadata}");
        assert_eq!(metadata["actor_id"], Value::String(customer.to_string()), "{event_type}: {metadata}");
    };
    expect(&stream[0], rented_event, "corr-rent");
    expect(&stream[1], returned_event, "corr-return");
    expect(&stream[2], returned_event, "corr-return");
    assert_eq!(stream[3].1["causation_id"], Value::Null, "a client command has no cause");
    let charge: Value = sqlx::query_scalar(
        "select payload from events where aggregate_type = 'rental' and aggregate_id = $1
            and event_type = 'ChargeAssessed'",
    )
    .bind(rental_id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((charge["days"].as_i64(), charge["amount_cents"].as_i64()), (Some(4), Some(350)));
}

#[sqlx::test(migrations = "../migrations")]
async fn replaying_from_a_reset_checkpoint_changes_no_row_and_issues_no_command(pool: PgPool) {
    // Arrange
    let w = World::new(&pool);
    w.workload(9).await;
    w.catch_up_all().await;
    let before = w.read_tables().await;
    assert!(before.iter().all(|rows| !rows.is_empty()), "every read table has rows");
    let total = w.count("select count(*) from events").await as usize;

    // Act & Assert: each read model replays the whole log over its live rows.
    for name in READ_MODELS {
        w.reset_checkpoint(name).await;
        assert_eq!(w.catch_up(name).await, total, "{name} replayed every event");
        assert_eq!(w.read_tables().await, before, "{name}: every row as it was");
    }

    // The process manager redelivers every rent and return: its commands change nothing.
    let rental_events = "select count(*) from events where aggregate_type = 'rental'";
    let issued = w.count(rental_events).await;
    w.reset_checkpoint(payments::NAME).await;
    assert_eq!(w.catch_up(payments::NAME).await, total);
    assert_eq!(w.count(rental_events).await, issued, "no new rental event");
    assert_eq!(w.count("select count(*) from events").await as usize, total);

    // Every checkpoint is at the end of the log and healthy.
    let last: (i64, i64) = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
          order by transaction_id desc, position desc limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for status in checkpoints(&pool).await.unwrap() {
        assert_eq!(w.checkpoint(&status.name).await, last, "{}", status.name);
        assert_eq!((status.position, status.lag_events), (last.1, 0), "{status:?}");
        assert_eq!((status.state.as_str(), status.last_error), ("running", None), "{}", status.name);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn verify_finds_a_corrupted_row_and_a_rebuild_repairs_it(pool: PgPool) {
    // Arrange
    let w = World::new(&pool);
    let ids = w.workload(20).await;
    w.catch_up_all().await;
    let catalogue = w.engine.projection(catalogue::NAME).unwrap();
    let rentals = w.engine.projection(rentals::NAME).unwrap();

    // Act & Assert: the live tables are what a replay gives.
    assert_eq!(rebuild::verify(&pool, catalogue.clone(), &()).await.unwrap(), vec![]);
    assert_eq!(rebuild::verify(&pool, rentals.clone(), &()).await.unwrap(), vec![]);

    // A corrupted row is one row only in the live table and one only in the replay.
    let damaged = sqlx::query("update read.movie set title = 'X' where movie_id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(damaged.rows_affected(), 1);
    assert_eq!(
        rebuild::verify(&pool, catalogue.clone(), &()).await.unwrap(),
        vec![TableDiff { table: "read.movie".into(), only_live: 1, only_replayed: 1 }]
    );
    assert_eq!(w.movie(ids[0]).await.title, "X", "verify changes nothing");

    // A rebuild swaps in the replay and moves the checkpoint to what it reflects.
    let rebuilt = rebuild::rebuild(&pool, catalogue.clone(), &()).await.unwrap();
    // The swapped-in tables come with the planner's statistics: each table with rows has its
    // columns' statistics (building an index counts the rows, but only ANALYZE describes them).
    let unanalyzed: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c
          where c.relnamespace = 'read'::regnamespace and c.relname = any($1) and c.reltuples > 0
            and not exists (select 1 from pg_statistic s where s.starelid = c.oid)",
    )
    .bind(catalogue.tables())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unanalyzed, Vec::<String>::new(), "every rebuilt table analyzed");
    assert_eq!(rebuild::verify(&pool, catalogue.clone(), &()).await.unwrap(), vec![]);
    assert_eq!(w.movie(ids[0]).await.title, "Film 00");
    let total = w.count("select count(*) from events").await;
    let (xid, position) = (rebuilt.checkpoint.xid, rebuilt.checkpoint.position);
    assert_eq!(w.checkpoint(catalogue::NAME).await, (xid, position), "the checkpoint is the rebuild's");
    let status = checkpoints(&pool).await.unwrap().into_iter().find(|s| s.name == catalogue::NAME).unwrap();
    assert_eq!(status.position, position);
    // The rebuild replayed every event up to its checkpoint (the horizon when it swapped), and
    // only the events after it are left to the live runner.
    let upto: i64 = sqlx::query_scalar(
        "select count(*) from events where (transaction_id::text::bigint, position) <= ($1, $2)",
    )
    .bind(xid)
    .bind(position)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rebuilt.events, upto as u64, "every event up to the checkpoint replayed");
    assert_eq!(status.lag_events, total - upto);

    // The swapped-in tables keep following the log.
    assert_eq!(w.catch_up(catalogue::NAME).await as i64, total - upto);
    let crime = w.catalogue().category_by_name("crime & noir").await.unwrap().unwrap();
    let late = w.add_movie("Late Arrival", "After the rebuild.", None, &[crime]).await;
    w.catch_up(catalogue::NAME).await;
    assert!(w.list(MovieFilter { words: vec!["arrival".into()], ..filter(10) }).await.contains(&late));
    assert_eq!(rebuild::verify(&pool, catalogue, &()).await.unwrap(), vec![]);

    // The process manager is never rebuilt.
    let payments = w.engine.projection(payments::NAME).unwrap();
    assert!(rebuild::rebuild(&pool, payments, &()).await.is_err());
    assert_eq!(w.count("select count(*) from events").await, total + 1, "no command re-issued");
}

/// `read.movie`'s updates so far, and how many of them were in place (heap-only tuples), once the
/// statistics show at least `updates` (a backend reports its counts within about a second).
/// `(updates, heap-only updates)` of `table` once the statistics show at least `updates`.
async fn row_updates(pool: &PgPool, table: &str, updates: i64) -> (i64, i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let counts: (i64, i64) = sqlx::query_as(
            "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where relid = $1::regclass",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
        if counts.0 >= updates || std::time::Instant::now() > deadline {
            return counts;
        }
        sqlx::query("select pg_stat_clear_snapshot()").execute(pool).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn rents_and_returns_update_movie_rows_in_place_also_after_a_rebuild(pool: PgPool) {
    // Arrange: ten movies in the catalogue.
    let w = World::new(&pool);
    let drama = w.create_category("Drama").await;
    let mut movies = Vec::new();
    for i in 0..10 {
        movies.push(w.add_movie(&format!("Film {i:02}"), "A long storyline of words.", None, &[drama]).await);
    }
    w.catch_up(catalogue::NAME).await;
    let catalogue = w.engine.projection(catalogue::NAME).unwrap();
    let customer = Uuid::now_v7();
    let (mut before, mut hot_before) = row_updates(&pool, "read.movie", 0).await;

    for round in 0..2 {
        // Act: every movie rented, then returned, in two batches (20 row updates).
        let mut rentals = Vec::new();
        for movie in &movies {
            rentals.push(w.rent(*movie, customer, Utc::now()).await.0);
        }
        w.catch_up(catalogue::NAME).await;
        for (movie, rental) in movies.iter().zip(&rentals) {
            w.give_back(*movie, *rental, customer, Utc::now()).await;
        }
        w.catch_up(catalogue::NAME).await;

        // Assert: no index entry was added for any of them (no index holds what a rent changes,
        // and the pages keep room for the new versions), the rebuilt table as the migrated one.
        let (updates, hot) = row_updates(&pool, "read.movie", before + 20).await;
        assert_eq!(updates - before, 20, "round {round}: two updates of each movie");
        assert_eq!(hot - hot_before, 20, "round {round}: every update in place");
        let options: Vec<String> =
            sqlx::query_scalar("select unnest(reloptions) from pg_class where oid = 'read.movie'::regclass")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(options, ["fillfactor=80"], "round {round}");
        let available = w.list(MovieFilter { available: Some(true), ..filter(10) }).await;
        assert_eq!(available.len(), 10, "round {round}: all available again");

        // The second round runs on the table a rebuild swapped in (its statistics start at 0).
        rebuild::rebuild(&pool, catalogue.clone(), &()).await.unwrap();
        (before, hot_before) = (0, 0);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rentals_life_updates_its_rows_in_place_also_after_a_rebuild(pool: PgPool) {
    // Arrange: ten movies, each rented by one customer.
    let w = World::new(&pool);
    let drama = w.create_category("Drama").await;
    let customer = Uuid::now_v7();
    let mut movies = Vec::new();
    for i in 0..10 {
        movies.push(w.add_movie(&format!("Film {i:02}"), "A long storyline of words.", None, &[drama]).await);
    }
    let rentals = w.engine.projection(rentals::NAME).unwrap();
    let analytics = w.engine.projection(analytics::NAME).unwrap();
    let tables = ["read.rental", "read.analytics_rental"];
    let mut before = [(0, 0); 2];
    for (i, table) in tables.iter().enumerate() {
        before[i] = row_updates(&pool, table, 0).await;
    }

    for round in 0..2 {
        // Act: every rental opened, returned, charged and paid, a step per batch.
        let mut ids = Vec::new();
        for movie in &movies {
            ids.push(w.rent(*movie, customer, days_ago(4 - 2 * round)).await.0);
        }
        w.catch_up_all().await;
        w.catch_up(analytics::NAME).await;
        for (movie, rental) in movies.iter().zip(&ids) {
            w.give_back(*movie, *rental, customer, days_ago(3 - 2 * round)).await;
        }
        w.catch_up_all().await;
        w.catch_up(analytics::NAME).await;
        for rental in &ids {
            let charge = w.rental(*rental).await.charge_cents.expect("charged");
            w.pay(*rental, customer, charge).await.unwrap();
        }
        w.catch_up_all().await;
        w.catch_up(analytics::NAME).await;

        // Assert: the rows went through every status, and not one update added an index entry.
        for rental in &ids {
            assert_eq!(w.rental(*rental).await.status, "paid", "round {round}");
        }
        assert_eq!(w.rentals().balance_due(customer).await.unwrap(), 0, "round {round}");
        for (i, table) in tables.iter().enumerate() {
            let (updates, hot) = row_updates(&pool, table, before[i].0 + 20).await;
            assert!(
                updates - before[i].0 >= 20,
                "round {round}: {table} updated {} times",
                updates - before[i].0
            );
            assert_eq!(
                hot - before[i].1,
                updates - before[i].0,
                "round {round}: {table}: every update in place"
            );
            let options: Vec<String> =
                sqlx::query_scalar("select unnest(reloptions) from pg_class where oid = $1::regclass")
                    .bind(table)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            assert_eq!(options, ["fillfactor=80"], "round {round}: {table}");
        }

        // The second round runs on the tables a rebuild swapped in (their statistics start at 0).
        rebuild::rebuild(&pool, rentals.clone(), &()).await.unwrap();
        rebuild::rebuild(&pool, analytics.clone(), &()).await.unwrap();
        before = [(0, 0); 2];
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_price_table_holds_through_the_whole_pipeline(pool: PgPool) {
    // Arrange: one copy rented again and again, each rental after the previous return.
    let w = World::new(&pool);
    let drama = w.create_category("Drama").await;
    let movie = w.add_movie("Long Rentals", "Slow.", None, &[drama]).await;
    let customer = Uuid::now_v7();
    let table = [
        (Duration::minutes(1), 1, 100),
        (Duration::hours(24), 1, 100),
        (Duration::hours(72), 3, 300),
        (Duration::hours(73), 4, 350),
        (Duration::days(10), 10, 650),
        (Duration::days(30), 30, 1650),
    ];
    let mut at = Utc.with_ymd_and_hms(2025, 1, 1, 9, 30, 0).unwrap();
    let mut rentals = Vec::new();
    for (elapsed, _, _) in table {
        let (rental, _) = w.rent(movie, customer, at).await;
        w.give_back(movie, rental, customer, at + elapsed).await;
        rentals.push(rental);
        at = at + elapsed + Duration::hours(1);
    }

    // Act
    w.catch_up_all().await;

    // Assert
    for (rental, (elapsed, days, cents)) in rentals.into_iter().zip(table) {
        let row = w.rental(rental).await;
        assert_eq!(row.status, "charged", "{elapsed}");
        assert_eq!((row.charge_days, row.charge_cents), (Some(days), Some(cents)), "{elapsed}");
    }
    let due = table.iter().map(|(_, _, cents)| cents).sum::<i64>();
    assert_eq!(w.rentals().balance_due(customer).await.unwrap(), due);
    assert_eq!(w.movie(movie).await.times_rented, 6);
}

/// How long each rental of [`rentals_of`] lasts, and what it costs: 2, 3 and 4 started days.
const DURATIONS: [(i64, i64); 3] = [(30, 200), (72, 300), (73, 350)];

/// A rental made by [`rentals_of`].
struct Made {
    movie: Uuid,
    rental: Uuid,
    /// What its return costs.
    cents: i64,
}

/// Rent → return cycles on `movies` movies, `cycles` each, by one customer, each rent and each
/// return a client command of its own (its own request and correlation id); in log order.
async fn rentals_of(w: &World, movies: usize, cycles: usize) -> Vec<Made> {
    let category = w.create_category("Drama").await;
    let customer = Uuid::now_v7();
    let mut made = Vec::new();
    for i in 0..movies {
        let movie = w.add_movie(&format!("Film {i}"), "A story.", None, &[category]).await;
        let mut at = days_ago(40);
        for c in 0..cycles {
            let (hours, cents) = DURATIONS[(i + c) % DURATIONS.len()];
            let (rental, _) =
                w.rent_with(movie, customer, at, &meta(customer, &format!("rent-{i}-{c}"))).await;
            let back = at + Duration::hours(hours);
            let metadata = meta(customer, &format!("return-{i}-{c}"));
            w.give_back_with(movie, rental, customer, back, &metadata).await;
            made.push(Made { movie, rental, cents });
            at = back + Duration::hours(1);
        }
    }
    made
}

/// A rental stream's event types in stream order, with the event each was caused by.
async fn rental_stream(pool: &PgPool, rental: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "select event_type, metadata->>'causation_id' from events
          where aggregate_type = 'rental' and aggregate_id = $1 order by sequence",
    )
    .bind(rental.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn in_one_batch_the_process_manager_opens_closes_and_charges_every_rental_exactly_once(pool: PgPool) {
    // Arrange: 24 rentals, each rented and returned before the process manager runs, so one batch
    // holds every rent and return: 48 commands, two per rental.
    let w = World::new(&pool);
    let made = rentals_of(&w, 8, 3).await;
    // The horizon is cluster-wide: wait until no older transaction (another test's) holds the last
    // event back, so the first batch sees the whole log.
    let last = w.count("select max(position) from events").await;
    let released = projections::engine::wait_for_release(&pool, last, std::time::Duration::from_secs(60));
    assert!(released.await.unwrap(), "the log was released");

    // Act
    w.catch_up(payments::NAME).await;

    // Assert: each rental opened, closed and charged once, in that order, each event caused by the
    // movie event it answers and carrying that event's actor and correlation.
    for Made { movie, rental, cents } in &made {
        let cause = |event_type: &str| {
            sqlx::query_as::<_, (Uuid, Value)>(
                "select event_id, metadata from events
                  where aggregate_type = 'movie' and aggregate_id = $1 and event_type = $2
                    and payload->>'rental_id' = $3",
            )
            .bind(movie.to_string())
            .bind(event_type.to_string())
            .bind(rental.to_string())
            .fetch_one(&pool)
        };
        let (rented, rent_meta) = cause("MovieRented").await.unwrap();
        let (returned, return_meta) = cause("MovieReturned").await.unwrap();
        let stream: Vec<(String, Value, Value)> = sqlx::query_as(
            "select event_type, metadata, payload from events
              where aggregate_type = 'rental' and aggregate_id = $1 order by sequence",
        )
        .bind(rental.to_string())
        .fetch_all(&pool)
        .await
        .unwrap();
        let types: Vec<&str> = stream.iter().map(|(t, ..)| t.as_str()).collect();
        assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed"], "rental {rental}");
        let causes = [(rented, &rent_meta), (returned, &return_meta), (returned, &return_meta)];
        for ((event_type, metadata, _), (cause, cause_meta)) in stream.iter().zip(causes) {
            let expected = serde_json::json!({
                "actor_id": cause_meta["actor_id"],
                "request_id": cause_meta["request_id"],
                "correlation_id": cause_meta["correlation_id"],
                "causation_id": cause.to_string(),
            });
            assert_eq!(metadata, &expected, "{event_type} of rental {rental}");
        }
        assert_eq!(stream[2].2["amount_cents"].as_i64(), Some(*cents), "rental {rental}");
    }
    let charged: i64 = made.iter().map(|m| m.cents).sum();
    let assessed = "select coalesce(sum((payload->>'amount_cents')::bigint), 0)::bigint from events
                     where event_type = 'ChargeAssessed'";
    assert_eq!(w.count(assessed).await, charged);
    // One batch of 48 commands: one append transaction.
    let transactions = "select count(distinct transaction_id) from events where aggregate_type = 'rental'";
    assert_eq!(w.count(transactions).await, 1, "every rental event in one append transaction");

    // Redelivering the whole batch issues nothing new.
    let rental_events = "select count(*) from events where aggregate_type = 'rental'";
    assert_eq!(w.count(rental_events).await, 3 * made.len() as i64);
    w.reset_checkpoint(payments::NAME).await;
    w.catch_up(payments::NAME).await;
    assert_eq!(w.count(rental_events).await, 3 * made.len() as i64);
    assert_eq!(w.count(assessed).await, charged);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refused_command_fails_the_batch_and_keeps_the_checkpoint_while_the_other_rentals_stand(
    pool: PgPool,
) {
    // Arrange: 12 rentals; one rental's stream was opened differently beforehand (for another
    // movie), so the process manager's OpenRental for it is refused.
    let w = World::new(&pool);
    let made = rentals_of(&w, 4, 3).await;
    let broken = made[5].rental;
    let other = RentalCommand::OpenRental {
        movie_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        rented_at: days_ago(1),
        loan: Default::default(),
    };
    w.store.execute::<Rental>(&broken.to_string(), other, &w.meta().into()).await.unwrap();
    let payments = w.engine.projection(payments::NAME).unwrap();
    projections::engine::ensure_checkpoints(&pool, &[payments::NAME]).await.unwrap();
    let mut before = w.checkpoint(payments::NAME).await;

    // Act: the batch fails, twice (a failed batch's lock goes with its rollback, which the pool
    // finishes in the background: until then the projection is busy).
    let batch = || async {
        loop {
            match w.engine.run_batch(payments.as_ref()).await {
                Ok(BatchOutcome::Busy) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                outcome => return outcome,
            }
        }
    };
    let rental_events = "select count(*) from events where aggregate_type = 'rental'";
    let others: Vec<Uuid> = made.iter().map(|m| m.rental).filter(|r| *r != broken).collect();
    let all_charged = || async {
        for rental in &others {
            if rental_stream(&pool, *rental).await.len() != 3 {
                return false;
            }
        }
        true
    };
    // The horizon is cluster-wide (other tests' transactions), so a batch may see only part of
    // the log: one that ends before the broken rental applies and moves the checkpoint (the
    // checkpoint the failing batches must keep is then the one it left); run the batches until
    // everything the failing one can see is handled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let error = loop {
        match batch().await {
            Ok(_) => {
                before = w.checkpoint(payments::NAME).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(error) if all_charged().await => break error,
            Err(_) => {}
        }
        assert!(std::time::Instant::now() < deadline, "the other rentals were never all charged");
    };
    let settled = w.count(rental_events).await;
    let again = batch().await;

    // Assert: the error names the rental; the checkpoint did not move; every other rental was
    // opened, closed and charged once, and the retry changed nothing.
    assert!(error.to_string().contains(&broken.to_string()), "{error}");
    assert!(again.is_err(), "{again:?}");
    assert_eq!(w.checkpoint(payments::NAME).await, before);
    for rental in &others {
        let types: Vec<String> = rental_stream(&pool, *rental).await.into_iter().map(|(t, _)| t).collect();
        assert_eq!(types, ["RentalOpened", "RentalClosed", "ChargeAssessed"], "rental {rental}");
    }
    assert_eq!(rental_stream(&pool, broken).await.len(), 1, "only the other opening");
    assert_eq!(settled, 3 * 11 + 1);
    assert_eq!(w.count(rental_events).await, settled);
}

#[sqlx::test(migrations = "../migrations")]
async fn listings_page_alike_whether_matches_are_common_or_rare(pool: PgPool) {
    // Arrange: 130 movies; "common" in every third storyline, "rare" in two, a category on every
    // fifth. With a page of 1, the reader looks at the first 100 listed rows before gathering every
    // match, so "common" and the category are found in the first look and "rare" in the second.
    let w = World::new(&pool);
    let cat = w.create_category("Every Fifth").await;
    let other = w.create_category("Other").await;
    let mut movies = Vec::new();
    for n in 0..130u32 {
        let common = if n % 3 == 0 { " common" } else { "" };
        let rare = if n == 3 || n == 121 { " rare" } else { "" };
        let categories = if n % 5 == 0 { vec![cat] } else { vec![other] };
        let id =
            w.add_movie(&format!("Title {n:03}"), &format!("story{common}{rare}"), None, &categories).await;
        movies.push((n, id));
    }
    w.catch_up_all().await;

    // Act + Assert: every page, following the cursor, against the matches in title order.
    type Matches = Box<dyn Fn(u32) -> bool>;
    let cases: Vec<(Option<Uuid>, Vec<&str>, Matches)> = vec![
        (None, vec!["common"], Box::new(|n| n % 3 == 0)),
        (None, vec!["rare"], Box::new(|n| n == 3 || n == 121)),
        (None, vec!["RARE", "common"], Box::new(|n| n == 3)),
        (Some(cat), vec![], Box::new(|n| n % 5 == 0)),
        (Some(cat), vec!["common"], Box::new(|n| n % 15 == 0)),
        (Some(cat), vec!["rare"], Box::new(|_| false)),
    ];
    for (category, words, matches) in cases {
        let expected: Vec<Uuid> = movies.iter().filter(|(n, _)| matches(*n)).map(|(_, id)| *id).collect();
        for limit in [1, 2, 7] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let f = MovieFilter {
                    category,
                    words: words.iter().map(|w| w.to_string()).collect(),
                    available: Some(true),
                    after: after.clone(),
                    limit,
                };
                let rows = w.catalogue().movies(&f).await.unwrap();
                let more = rows.len() as i64 > limit;
                let page: Vec<&MovieRow> = rows.iter().take(limit as usize).collect();
                seen.extend(page.iter().map(|m| m.movie_id));
                match page.last() {
                    Some(last) if more => after = Some((last.title.clone(), last.movie_id)),
                    _ => break,
                }
            }
            assert_eq!(seen, expected, "{category:?} {words:?} limit {limit}");
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_overdue_rental_shows_its_due_and_overdue_times_counts_in_analytics_and_replays_equal(
    pool: PgPool,
) {
    // Arrange: three rentals of three movies: one rented 10 days ago and still out, one rented 10
    // days ago and returned after 2 days, one rented yesterday.
    // Every time is counted from one instant, so a slow run that crosses a second changes none.
    let now = days_ago(0);
    let ago = |days: i64| now - Duration::days(days);
    let w = World::new(&pool);
    let category = w.create_category("Noir").await;
    let customer = Uuid::now_v7();
    let mut movies = Vec::new();
    for title in ["Late", "Early", "Fresh"] {
        movies.push(w.add_movie(title, "A story.", None, &[category]).await);
    }
    let (late, _) = w.rent(movies[0], customer, ago(10)).await;
    let (early, _) = w.rent(movies[1], customer, ago(10)).await;
    w.give_back(movies[1], early, customer, ago(8)).await;
    let (fresh, _) = w.rent(movies[2], customer, ago(1)).await;
    w.catch_up(payments::NAME).await;
    let scheduler = projections::deadlines::Scheduler::with_config(
        pool.clone(),
        w.store.clone(),
        projections::deadlines::SchedulerConfig { grace: std::time::Duration::ZERO, ..Default::default() },
    );

    // Act
    let round = scheduler.fire_due().await.unwrap();
    w.catch_up_all().await;
    w.catch_up(projections::analytics::NAME).await;

    // Assert: only the rental still out past its due time went overdue.
    assert_eq!((round.claimed, round.overdue), (1, 1), "{round:?}");
    let reader = w.rentals();
    let late_row = reader.rental(late).await.unwrap().unwrap();
    let early_row = reader.rental(early).await.unwrap().unwrap();
    let fresh_row = reader.rental(fresh).await.unwrap().unwrap();
    assert_eq!(late_row.due_at, Some(ago(3)));
    assert_eq!(late_row.overdue_at, Some(ago(3)));
    assert_eq!((early_row.due_at, early_row.overdue_at), (Some(ago(3)), None));
    assert_eq!((fresh_row.due_at, fresh_row.overdue_at), (Some(ago(1) + Duration::days(7)), None));
    let listed = |overdue| {
        let filter = rentals::RentalFilter { overdue: Some(overdue), limit: 10, ..Default::default() };
        let reader = w.rentals();
        async move { reader.rentals(&filter).await.unwrap().into_iter().map(|r| r.rental_id).collect::<Vec<_>>() }
    };
    assert_eq!(listed(true).await, vec![late]);
    assert_eq!(
        listed(false).await,
        vec![fresh, early, late].into_iter().filter(|id| *id != late).collect::<Vec<_>>()
    );
    assert_eq!(w.rentals().overdue_count().await.unwrap(), 1);
    let per_day: Vec<(NaiveDate, Uuid, i32)> =
        sqlx::query_as("select day, movie_id, overdues from read.analytics_movie_day where overdues > 0")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_day, vec![(ago(3).date_naive(), movies[0], 1)]);

    // The live tables are what a replay of the log gives, RentalOverdue included.
    for name in [rentals::NAME, projections::analytics::NAME] {
        let projection = w.engine.projection(name).unwrap();
        assert_eq!(rebuild::verify(&pool, projection, &()).await.unwrap(), vec![], "{name}");
    }
}

/// Appends one event raw inside `conn`'s open transaction; returns its position.
async fn append_raw<E: cqrs_es::DomainEvent>(
    conn: &mut sqlx::PgConnection,
    stream_type: &str,
    id: Uuid,
    sequence: i64,
    event: &E,
) -> i64 {
    let encoded = eventstore::encode_event(event).unwrap();
    sqlx::query_scalar(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             event_id)
         values ($1, $2, $3, $4, $5, $6, '{}', $7)
         returning position",
    )
    .bind(stream_type)
    .bind(id.to_string())
    .bind(sequence)
    .bind(encoded.event_type)
    .bind(encoded.event_version)
    .bind(encoded.payload)
    .bind(Uuid::now_v7())
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A transaction that has its id before `during` runs and appends after it: in the feed (ordered
/// by transaction id) its event comes before what `during` appended, with a higher position.
async fn xid_first(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = eventstore::db::begin(pool).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *tx).await.unwrap();
    tx
}

#[sqlx::test(migrations = "../migrations")]
async fn events_of_one_row_whose_positions_run_against_the_feed_order_are_all_applied(pool: PgPool) {
    // Arrange: a rental goes overdue in a transaction that began before its return and appended
    // after it, so the overdue comes first in the feed with the higher position; likewise a
    // movie changed in a transaction around a rename of its category.
    let w = World::new(&pool);
    let noir = w.create_category("Noir").await;
    let customer = Uuid::now_v7();
    let movie = w.add_movie("The Third Man", "A story.", None, &[noir]).await;
    let other = w.add_movie("Gilda", "A story.", None, &[noir]).await;
    let rented_at = days_ago(10);
    let returned_at = rented_at + Duration::hours(2);
    let (rental, _) = w.rent(movie, customer, rented_at).await;
    w.catch_up_all().await;
    w.catch_up(analytics::NAME).await;
    let due_at = w.rental(rental).await.due_at.expect("opened");
    let revision_before = w.movie(other).await.revision;

    // Act
    let mut overdue = xid_first(&pool).await;
    let returned_version = w.give_back(movie, rental, customer, returned_at).await;
    let overdue_position =
        append_raw(&mut overdue, "rental", rental, 2, &domain::rental::RentalEvent::RentalOverdue { due_at })
            .await;
    overdue.commit().await.unwrap();
    let mut update = xid_first(&pool).await;
    w.rename_category(noir, "Film Noir").await;
    let change = domain::movie::MovieEvent::MovieUpdated {
        title: None,
        storyline: Some(Storyline::parse("Another story.").unwrap()),
        release_date: None,
        rating: None,
        director: None,
        category_ids: None,
    };
    append_raw(&mut update, "movie", other, 2, &change).await;
    update.commit().await.unwrap();
    // One event a batch, so that the rename does not find the movie's row already changed by
    // its own batch.
    let one_by_one = Engine::new(
        pool.clone(),
        all(EventStore::new(pool.clone()), PricePlan::default(), Default::default(), Default::default()),
        EngineConfig { batch_size: 1, ..EngineConfig::default() },
    );
    one_by_one.catch_up(catalogue::NAME).await.unwrap();
    w.catch_up_all().await;
    w.catch_up(analytics::NAME).await;

    // Assert: the feed had them against position order...
    let (returned_position, returned_xid): (i64, i64) = sqlx::query_as(
        "select position, transaction_id::text::bigint from events
          where aggregate_type = 'movie' and aggregate_id = $1 and sequence = $2",
    )
    .bind(movie.to_string())
    .bind(returned_version)
    .fetch_one(&pool)
    .await
    .unwrap();
    let overdue_xid: i64 =
        sqlx::query_scalar("select transaction_id::text::bigint from events where position = $1")
            .bind(overdue_position)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(overdue_xid < returned_xid && overdue_position > returned_position);
    // ...and every read model took each of them.
    let row = w.rental(rental).await;
    assert_eq!(
        (row.returned_at, row.overdue_at, row.status.as_str(), row.charge_days),
        (Some(returned_at), Some(due_at), "charged", Some(1))
    );
    let facts: (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<i64>) = sqlx::query_as(
        "select returned_at, overdue_at, charge_cents from read.analytics_rental where rental_id = $1",
    )
    .bind(rental)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(facts, (Some(returned_at), Some(due_at), Some(100)));
    let changed = w.movie(other).await;
    assert_eq!(
        (changed.storyline.as_str(), changed.category_names.clone()),
        ("Another story.", vec!["Film Noir".to_string()])
    );
    assert!(changed.revision > revision_before + 1, "each change raised the revision");
    for name in [catalogue::NAME, rentals::NAME, analytics::NAME] {
        let projection = w.engine.projection(name).unwrap();
        assert_eq!(rebuild::verify(&pool, projection, &()).await.unwrap(), vec![], "{name}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_payment_waiting_for_its_charge_is_woken_when_the_process_manager_commits_it(pool: PgPool) {
    // Arrange: two rentals returned, neither charged yet; a payment waits for each.
    let w = World::new(&pool);
    let drama = w.create_category("Drama").await;
    let heat = w.add_movie("Heat", "A heist.", None, &[drama]).await;
    let ronin = w.add_movie("Ronin", "A car chase.", None, &[drama]).await;
    let customer = Uuid::now_v7();
    let (charged, _) = w.rent(heat, customer, days_ago(1)).await;
    let (pending, _) = w.rent(ronin, customer, days_ago(1)).await;
    w.catch_up(payments::NAME).await;
    w.give_back(heat, charged, customer, days_ago(0)).await;
    let charged_wait = w.waits.wait_for(charged);
    let pending_wait = w.waits.wait_for(pending);
    let dropped_wait = w.waits.wait_for(pending);
    let before_the_charge = w.pay(charged, customer, 1).await;
    assert!(
        matches!(before_the_charge, Err(CommandError::Rejected(RentalError::NotReturned))),
        "{before_the_charge:?}"
    );
    drop(dropped_wait);
    assert_eq!(w.waits.waiting(), 2, "a dropped wait leaves the others of its rental");

    // Act: the process manager closes the returned rental (the other is still out).
    w.catch_up(payments::NAME).await;

    // Assert: the returned rental's wait is woken at once and the payment goes through; the
    // other's times out; no wait is left behind.
    assert!(charged_wait.assessed_within(std::time::Duration::ZERO).await, "woken by the committed close");
    let charge_is_there = w.pay(charged, customer, 1).await;
    assert!(
        matches!(charge_is_there, Err(CommandError::Rejected(RentalError::WrongAmount { .. }))),
        "the payment now meets the charge: {charge_is_there:?}"
    );
    assert!(
        !pending_wait.assessed_within(std::time::Duration::from_millis(50)).await,
        "not returned: not woken"
    );
    assert_eq!(w.waits.waiting(), 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rental_target_is_read_once_then_remembered_except_a_return_not_yet_seen(pool: PgPool) {
    // Arrange: a rental the read models have applied.
    let w = World::new(&pool);
    let category = w.create_category("Drama").await;
    let movie = w.add_movie("Heat", "A story.", None, &[category]).await;
    let customer = Uuid::now_v7();
    let (rental, _) = w.rent_with(movie, customer, days_ago(2), &meta(customer, "rent")).await;
    w.catch_up_all().await;
    let reader = w.rentals();
    let first = reader.target(rental, false).await.unwrap().expect("the rental");
    assert_eq!(first.lookup.customer_id, customer);
    assert_eq!(first.movie_title.as_deref(), Some("Heat"));
    assert!(first.due_at.is_some());
    // The rows change under the reader (here by hand, so that where an answer came from shows).
    let tamper = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).bind(rental).execute(&pool).await.unwrap() }
    };
    tamper("update rental_lookup set customer_id = gen_random_uuid() where rental_id = $1").await;

    // Act and assert: its facts come from memory (a clone shares it)...
    let again = reader.clone().target(rental, false).await.unwrap().expect("the rental");
    assert_eq!(again, first);
    // ...but not whether it was returned, which memory does not know yet.
    let back = days_ago(1);
    w.give_back_with(movie, rental, customer, back, &meta(customer, "return")).await;
    let read = reader.target(rental, true).await.unwrap().expect("the rental");
    assert_eq!(read.lookup.returned_at, Some(back));
    assert_ne!(read.lookup.customer_id, customer, "read from the tampered row");
    // What was known first is kept: a fact, once known, never changes.
    tamper("update rental_lookup set returned_at = null where rental_id = $1").await;
    let known = reader.target(rental, true).await.unwrap().expect("the rental");
    assert_eq!(known.lookup.returned_at, Some(back));
    assert_eq!(known.lookup.customer_id, customer);

    // A return this process made is remembered without a read.
    let (second, _) =
        w.rent_with(movie, customer, back + Duration::hours(1), &meta(customer, "rent-2")).await;
    let fresh = RentalsReader::new(pool.clone());
    let opened = fresh.target(second, false).await.unwrap().expect("the rental");
    fresh.returned(second, back);
    sqlx::query("delete from rental_lookup where rental_id = $1").bind(second).execute(&pool).await.unwrap();
    let remembered = fresh.target(second, true).await.unwrap().expect("remembered");
    assert_eq!(remembered.lookup, eventstore::lookup::RentalRef { returned_at: Some(back), ..opened.lookup });
    assert!(RentalsReader::new(pool.clone()).target(second, false).await.unwrap().is_none());
}
