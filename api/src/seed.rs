//! `moviestore seed`: a default catalogue, and on request a large generated one, added through
//! the command executor so that every category and movie has its events like any other.
//!
//! It also records a few back-dated rentals of the default catalogue for a demo customer, so a
//! newcomer sees overdue rentals and rentals about to fall due.
//!
//! Seeding is idempotent: categories are matched by name (the lookup table), default movies by
//! title and release date, generated movies by the number their storyline carries, all read from
//! the log itself, so a second run adds nothing. Runs are serialised by an advisory lock, so two
//! seeds started at once cannot both add the same movie.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use domain::category::{Category, CategoryCommand};
use domain::loan::LoanPolicy;
use domain::movie::{Movie, MovieCommand, MovieDetails};
use domain::values::{CategoryIds, CategoryName, Director, Rating, Storyline, Title};
use eventstore::{lookup, CommandContext, CommandError, EventStore, Metadata};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::Accounts;

/// The categories of the default catalogue.
pub const CATEGORIES: &[&str] = &[
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Romance",
    "Science Fiction",
    "Thriller",
];

/// One movie of the default catalogue.
pub struct SeedMovie {
    /// Title.
    pub title: &'static str,
    /// Release date, `YYYY-MM-DD`.
    pub release_date: &'static str,
    /// Rating, 0..=10.
    pub rating: f64,
    /// Director.
    pub director: &'static str,
    /// Category names, from [`CATEGORIES`].
    pub categories: &'static [&'static str],
    /// A one-line storyline.
    pub storyline: &'static str,
}

const fn film(
    title: &'static str,
    release_date: &'static str,
    rating: f64,
    director: &'static str,
    categories: &'static [&'static str],
    storyline: &'static str,
) -> SeedMovie {
    SeedMovie { title, release_date, rating, director, categories, storyline }
}

/// The default catalogue: well-known films, with storylines of our own.
pub const MOVIES: &[SeedMovie] = &[
    film("The Big Lebowski", "1998-03-06", 8.1, "Joel Coen", &["Comedy", "Crime"],
        "A bowler in a bathrobe is mistaken for a millionaire and drawn into a kidnapping that keeps getting stranger."),
    film("Monty Python and the Holy Grail", "1975-04-03", 8.2, "Terry Gilliam, Terry Jones", &["Comedy", "Adventure"],
        "King Arthur recruits knights for a quest that is thwarted by rabbits, taunting guards and a very polite shrubbery."),
    film("Raiders of the Lost Ark", "1981-06-12", 8.4, "Steven Spielberg", &["Adventure", "Action"],
        "An archaeologist races rival treasure hunters across continents for a relic that no one should open."),
    film("The Matrix", "1999-03-31", 8.7, "Lana Wachowski, Lilly Wachowski", &["Science Fiction", "Action"],
        "A programmer learns that the world he knows is a simulation and is asked to help free the people asleep inside it."),
    film("Alien", "1979-05-25", 8.5, "Ridley Scott", &["Science Fiction", "Horror"],
        "The crew of a cargo ship answers a distress call and brings something aboard that hunts them one by one."),
    film("Blade Runner", "1982-06-25", 8.1, "Ridley Scott", &["Science Fiction", "Thriller"],
        "In a rain-soaked city, a detective is sent to retire artificial people who want nothing more than to live longer."),
    film("The Godfather", "1972-03-24", 9.2, "Francis Ford Coppola", &["Crime", "Drama"],
        "The reluctant youngest son of a crime family becomes the man his father hoped he would never be."),
    film("Pulp Fiction", "1994-10-14", 8.9, "Quentin Tarantino", &["Crime"],
        "Hit men, a boxer and a pair of diner robbers cross paths in stories told out of order."),
    film("Casablanca", "1942-11-26", 8.5, "Michael Curtiz", &["Romance", "Drama"],
        "A cynical club owner must choose between an old love and helping her and her husband escape the war."),
    film("Spirited Away", "2001-07-20", 8.6, "Hayao Miyazaki", &["Animation", "Fantasy"],
        "A girl working in a bathhouse for spirits tries to free her parents, who have been turned into pigs."),
    film("My Neighbor Totoro", "1988-04-16", 8.1, "Hayao Miyazaki", &["Animation", "Fantasy"],
        "Two sisters moving to the countryside befriend the gentle forest spirits that live beside their new home."),
    film("Toy Story", "1995-11-22", 8.3, "John Lasseter", &["Animation", "Comedy"],
        "A cowboy doll feels replaced by a flashy space ranger, until both get lost far from their owner's room."),
    film("The Shining", "1980-05-23", 8.4, "Stanley Kubrick", &["Horror"],
        "A writer takes his family to look after an empty mountain hotel for the winter, and the hotel takes him."),
    film("2001: A Space Odyssey", "1968-04-02", 8.3, "Stanley Kubrick", &["Science Fiction"],
        "A mysterious monolith guides humanity from its first tools to a voyage towards Jupiter with a calm, uneasy computer."),
    film("Psycho", "1960-06-16", 8.5, "Alfred Hitchcock", &["Horror", "Thriller"],
        "A secretary on the run with stolen money stops for the night at a quiet motel run by a shy young man."),
    film("Vertigo", "1958-05-09", 8.3, "Alfred Hitchcock", &["Thriller", "Romance"],
        "A detective afraid of heights is hired to follow a woman who seems to be possessed by the past."),
    film("Some Like It Hot", "1959-03-29", 8.2, "Billy Wilder", &["Comedy", "Romance"],
        "Two musicians who witnessed a gangland killing hide in an all-women band bound for Florida."),
    film("Jaws", "1975-06-20", 8.1, "Steven Spielberg", &["Thriller", "Adventure"],
        "A police chief who fears the water has to hunt the shark that is terrorising his beach town's summer."),
    film("Back to the Future", "1985-07-03", 8.5, "Robert Zemeckis", &["Science Fiction", "Comedy"],
        "A teenager sent thirty years into the past has to make sure his parents still fall in love."),
    film("Groundhog Day", "1993-02-12", 8.0, "Harold Ramis", &["Comedy", "Romance"],
        "A sour weatherman relives the same winter day in a small town until he learns to live it well."),
    film("Fargo", "1996-03-08", 8.1, "Joel Coen", &["Crime", "Thriller"],
        "A car salesman's scheme to have his wife kidnapped unravels under a patient, pregnant police chief."),
    film("The Silence of the Lambs", "1991-02-14", 8.6, "Jonathan Demme", &["Thriller", "Crime"],
        "A young investigator seeks the help of an imprisoned, brilliant killer to catch another one."),
    film("Seven Samurai", "1954-04-26", 8.6, "Akira Kurosawa", &["Action", "Drama"],
        "Farmers hire seven masterless warriors to defend their village from bandits at harvest time."),
    film("Amélie", "2001-04-25", 8.3, "Jean-Pierre Jeunet", &["Romance", "Comedy"],
        "A shy waitress in Montmartre secretly rearranges the lives of the people around her, for the better."),
    film("Mad Max: Fury Road", "2015-05-15", 8.1, "George Miller", &["Action", "Science Fiction"],
        "A drifter and a rebel driver flee across the desert with a tyrant's wives and his whole army in pursuit."),
    film("The Lord of the Rings: The Fellowship of the Ring", "2001-12-19", 8.9, "Peter Jackson", &["Fantasy", "Adventure"],
        "A hobbit inherits a ring of terrible power and sets out with eight companions to destroy it."),
    film("The Hobbit: An Unexpected Journey", "2012-12-14", 7.8, "Peter Jackson", &["Fantasy", "Adventure"],
        "A comfortable hobbit is talked into joining thirteen dwarves on a journey to win back their mountain from a dragon."),
    film("Thor: Ragnarok", "2017-11-03", 7.9, "Taika Waititi", &["Action", "Comedy"],
        "Stranded on a junk planet, the god of thunder must escape a gladiator arena to save his home from his sister."),
    film("Parasite", "2019-05-30", 8.5, "Bong Joon Ho", &["Thriller", "Drama"],
        "A poor family talks its way, one job at a time, into the household of a rich one."),
    film("Heat", "1995-12-15", 8.3, "Michael Mann", &["Crime", "Action"],
        "A meticulous thief and the obsessive detective chasing him discover how much they have in common."),
    film("Paddington 2", "2017-11-10", 7.8, "Paul King", &["Comedy", "Adventure"],
        "A polite bear is wrongly jailed for stealing a pop-up book and charms the prison while his family finds the thief."),
    film("Hoop Dreams", "1994-10-14", 8.3, "Steve James", &["Documentary"],
        "Two Chicago teenagers are followed for five years as they chase careers in basketball."),
    film("Man on Wire", "2008-07-25", 7.7, "James Marsh", &["Documentary"],
        "The story of the walk on a wire strung between the two towers of a New York skyscraper in 1974."),
    film("Before Sunrise", "1995-01-27", 8.1, "Richard Linklater", &["Romance", "Drama"],
        "Two strangers meet on a train and spend one night walking and talking through Vienna."),
];

/// What generated storylines start with, followed by the movie's number and a colon.
pub const GENERATED_MARK: &str = "Generated movie ";

/// How many commands a seed runs at once.
const PARALLEL_COMMANDS: usize = 8;

/// What a seed did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Categories created by this run.
    pub categories_created: usize,
    /// Categories that existed already.
    pub categories_existing: usize,
    /// Movies added by this run (default and generated).
    pub movies_added: u64,
    /// Movies that existed already.
    pub movies_existing: u64,
    /// Demo rentals recorded by this run (some overdue, some due soon).
    pub rentals_added: usize,
    /// Demo rentals that existed already (or whose movie was out with someone else).
    pub rentals_existing: usize,
}

/// The demo customer the seed rents for.
pub const DEMO_CUSTOMER: &str = "demo-customer";

/// The demo rentals: a default movie, and when it falls due relative to the time of the seed
/// (negative: already overdue by that many hours). Their rent times are back-dated by the loan
/// policy's length accordingly, as an admin entering past rentals would.
pub const DEMO_RENTALS: &[(&str, i64)] =
    &[("Psycho", -72), ("Alien", -48), ("Fargo", -20), ("Casablanca", 6), ("Jaws", 30)];

/// Told how far the movies are.
pub trait SeedProgress: Send + Sync {
    /// `done` of `total` movies handled.
    fn advanced(&self, done: u64, total: u64);
}

/// Adds the default catalogue and, when `generated > 0`, makes sure generated movies number 1
/// to `generated` exist.
pub async fn seed(
    pool: &PgPool,
    store: &EventStore,
    accounts: &Accounts,
    loan: LoanPolicy,
    generated: u64,
    progress: &dyn SeedProgress,
) -> anyhow::Result<SeedReport> {
    // A session-level lock on a connection of its own: no transaction stays open meanwhile, so
    // the projectors' horizon is not held back.
    let mut lock = pool.acquire().await.context("connecting for the seed lock")?;
    sqlx::query("select pg_advisory_lock(hashtext('moviestore:seed'))").execute(&mut *lock).await?;
    let result = match seed_locked(pool, store, generated, progress).await {
        Ok(mut report) => seed_rentals(pool, store, accounts, loan, &mut report).await.map(|()| report),
        Err(error) => Err(error),
    };
    sqlx::query("select pg_advisory_unlock(hashtext('moviestore:seed'))").execute(&mut *lock).await?;
    result
}

async fn seed_locked(
    pool: &PgPool,
    store: &EventStore,
    generated: u64,
    progress: &dyn SeedProgress,
) -> anyhow::Result<SeedReport> {
    let mut report = SeedReport::default();
    let context = seed_context();
    let mut category_ids = BTreeMap::new();
    for name in CATEGORIES {
        let (id, created) = ensure_category(pool, store, name, &context).await?;
        if created {
            report.categories_created += 1;
        } else {
            report.categories_existing += 1;
        }
        category_ids.insert(*name, id);
    }

    let titles: Vec<String> = MOVIES.iter().map(|m| m.title.to_string()).collect();
    let existing: HashSet<(String, NaiveDate)> =
        lookup::added_movies_titled(pool, &titles).await?.into_iter().collect();
    let mut missing = Vec::new();
    for movie in MOVIES {
        let release_date = NaiveDate::parse_from_str(movie.release_date, "%Y-%m-%d")
            .with_context(|| format!("release date of {}", movie.title))?;
        if existing.contains(&(movie.title.to_string(), release_date)) {
            report.movies_existing += 1;
            continue;
        }
        let ids = movie.categories.iter().map(|name| category_ids[name]).collect();
        missing.push(details(movie.title, movie.storyline, release_date, movie.rating, movie.director, ids)?);
    }

    let present: HashSet<i64> = if generated > 0 {
        lookup::added_movie_numbers(pool, GENERATED_MARK).await?.into_iter().collect()
    } else {
        HashSet::new()
    };
    let wanted: Vec<u64> = (1..=generated).filter(|n| !present.contains(&(*n as i64))).collect();
    report.movies_existing += generated - wanted.len() as u64;

    let all_categories: Vec<Uuid> = CATEGORIES.iter().map(|name| category_ids[name]).collect();
    let total = (missing.len() + wanted.len()) as u64;
    progress.advanced(0, total);
    let done = Arc::new(AtomicU64::new(0));
    let jobs: Vec<Job> =
        missing.into_iter().map(Job::Given).chain(wanted.into_iter().map(Job::Generated)).collect();
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..PARALLEL_COMMANDS {
        let (jobs, store, context, categories, done) =
            (jobs.clone(), store.clone(), context.clone(), all_categories.clone(), done.clone());
        workers.spawn(async move {
            loop {
                let job = jobs.lock().expect("job queue").next();
                let Some(job) = job else { return Ok::<_, anyhow::Error>(()) };
                let details = match job {
                    Job::Given(details) => details,
                    Job::Generated(n) => generated_movie(n, &categories)?,
                };
                let title = details.title.as_str().to_string();
                store
                    .execute::<Movie>(
                        &Uuid::now_v7().to_string(),
                        MovieCommand::AddMovie { details },
                        &context,
                    )
                    .await
                    .with_context(|| format!("adding {title}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let reporter = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            progress.advanced(done.load(Ordering::Relaxed), total);
        }
    };
    let joined = async {
        let mut outcome = Ok(());
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined.context("seed worker")? {
                outcome = Err(e);
                jobs.lock().expect("job queue").by_ref().for_each(drop);
            }
        }
        outcome
    };
    tokio::select! {
        outcome = joined => outcome?,
        () = reporter => unreachable!("the reporter never ends"),
    }
    report.movies_added = done.load(Ordering::Relaxed);
    progress.advanced(report.movies_added, total);
    Ok(report)
}

enum Job {
    Given(MovieDetails),
    Generated(u64),
}

/// Rents a few default movies for the demo customer (created when missing) with past rent
/// times, through the same command an admin's back-dated rent sends, so that some are overdue
/// (the due-date scheduler marks them within seconds) and some fall due soon. A movie this
/// customer has rented before is left alone, so a second seed adds nothing; one that is out with
/// someone else is skipped.
async fn seed_rentals(
    pool: &PgPool,
    store: &EventStore,
    accounts: &Accounts,
    loan: LoanPolicy,
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    let customer = match accounts.id_of(DEMO_CUSTOMER).await? {
        Some(id) => id,
        None => {
            let email = format!("{DEMO_CUSTOMER}@moviestore.local");
            accounts
                .create_locked_customer(DEMO_CUSTOMER, &email)
                .await
                .map_err(|e| anyhow::anyhow!("creating the demo customer: {e}"))?
                .id
        }
    };
    let titles: Vec<String> = DEMO_RENTALS.iter().map(|(title, _)| title.to_string()).collect();
    let movies: BTreeMap<String, Uuid> = lookup::movie_ids_titled(pool, &titles).await?.into_iter().collect();
    let ids: Vec<Uuid> = movies.values().copied().collect();
    let rented: HashSet<Uuid> = lookup::movies_rented_by(pool, customer, &ids).await?.into_iter().collect();
    let context = seed_context();
    let now = crate::clock::now();
    let loan_length = chrono::Duration::days(i64::from(loan.length_days()));
    for (title, due_in_hours) in DEMO_RENTALS {
        let Some(&movie) = movies.get(*title) else { continue };
        if rented.contains(&movie) {
            report.rentals_existing += 1;
            continue;
        }
        let rented_at = now - loan_length + chrono::Duration::hours(*due_in_hours);
        let command =
            MovieCommand::RentMovie { rental_id: Uuid::now_v7(), customer_id: customer, rented_at, now };
        match store.execute::<Movie>(&movie.to_string(), command, &context).await {
            Ok(_) => report.rentals_added += 1,
            Err(CommandError::Rejected(refusal)) => {
                tracing::info!(%title, %refusal, "demo rental skipped");
                report.rentals_existing += 1;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("renting {title} for the demo customer"))
            }
        }
    }
    Ok(())
}

/// The seed's commands are the system's own, under one request id per run.
fn seed_context() -> CommandContext {
    let request = format!("seed-{}", Uuid::now_v7());
    CommandContext::from(Metadata {
        actor_id: None,
        request_id: Some(request.clone()),
        correlation_id: Some(request),
        causation_id: None,
    })
}

/// The category's id, creating it when no category has this name; `true` when created here.
async fn ensure_category(
    pool: &PgPool,
    store: &EventStore,
    name: &str,
    context: &CommandContext,
) -> anyhow::Result<(Uuid, bool)> {
    if let Some(id) = lookup::category_id_by_name(pool, name).await? {
        return Ok((id, false));
    }
    let id = Uuid::now_v7();
    let parsed = CategoryName::parse(name).map_err(|e| anyhow::anyhow!("category {name:?}: {e}"))?;
    let command = CategoryCommand::CreateCategory { name: parsed };
    match store.execute::<Category>(&id.to_string(), command, context).await {
        Ok(_) => Ok((id, true)),
        // Created by someone else meanwhile (an admin, not another seed: seeds hold a lock).
        Err(CommandError::Unique(_)) => match lookup::category_id_by_name(pool, name).await? {
            Some(id) => Ok((id, false)),
            None => bail!("category {name:?} is taken but cannot be found"),
        },
        Err(e) => Err(e).with_context(|| format!("creating category {name:?}")),
    }
}

fn details(
    title: &str,
    storyline: &str,
    release_date: NaiveDate,
    rating: f64,
    director: &str,
    category_ids: Vec<Uuid>,
) -> anyhow::Result<MovieDetails> {
    let invalid = |field: &str, e: String| anyhow::anyhow!("{title:?}: {field} {e}");
    Ok(MovieDetails {
        title: Title::parse(title).map_err(|e| invalid("title", e))?,
        storyline: Storyline::parse(storyline).map_err(|e| invalid("storyline", e))?,
        release_date,
        rating: Rating::parse(rating).map_err(|e| invalid("rating", e))?,
        director: Some(Director::parse(director).map_err(|e| invalid("director", e))?),
        category_ids: CategoryIds::parse(category_ids).map_err(|e| invalid("category_ids", e))?,
    })
}

const ADJECTIVES: &[&str] = &[
    "Silent", "Crimson", "Distant", "Broken", "Golden", "Hidden", "Last", "Midnight", "Northern", "Electric",
    "Frozen", "Wild", "Quiet", "Burning", "Hollow", "Secret", "Restless", "Lonely", "Iron", "Velvet",
];
const NOUNS: &[&str] = &[
    "Harbor",
    "Garden",
    "Empire",
    "River",
    "Signal",
    "Station",
    "Mirror",
    "Horizon",
    "Orchard",
    "Lighthouse",
    "Voyage",
    "Canyon",
    "Archive",
    "Carnival",
    "Frontier",
    "Island",
    "Labyrinth",
    "Monsoon",
    "Observatory",
    "Tide",
];
const PLACES: &[&str] = &[
    "Lisbon",
    "a mining town",
    "the Arctic",
    "Osaka",
    "a border village",
    "Marseille",
    "the desert",
    "Glasgow",
];
const FIRST_NAMES: &[&str] =
    &["Ada", "Bruno", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas"];
const LAST_NAMES: &[&str] = &[
    "Almeida", "Brandt", "Castillo", "Dumont", "Eriksen", "Ferreira", "Gallo", "Hartmann", "Ivanova",
    "Jensen",
];

/// Generated movie number `n`: deterministic, so the same number always gives the same movie.
/// Words repeat across movies (so searches find many) and the title's number keeps titles unique.
pub fn generated_movie(n: u64, categories: &[Uuid]) -> anyhow::Result<MovieDetails> {
    let pick = |list: &[&'static str], salt: u64| {
        list[((n.wrapping_mul(2_654_435_761) >> salt) % list.len() as u64) as usize]
    };
    let (adjective, noun) = (pick(ADJECTIVES, 3), pick(NOUNS, 7));
    let title = format!("{adjective} {noun} {n}");
    let storyline = format!(
        "{GENERATED_MARK}{n}: a {} story of a {} and a {} in {}.",
        pick(ADJECTIVES, 11).to_lowercase(),
        pick(NOUNS, 13).to_lowercase(),
        pick(NOUNS, 17).to_lowercase(),
        pick(PLACES, 19),
    );
    let director = format!("{} {}", pick(FIRST_NAMES, 5), pick(LAST_NAMES, 9));
    let release_date = NaiveDate::from_ymd_opt(1950, 1, 1).expect("a valid date")
        + chrono::Days::new(n.wrapping_mul(37) % 27_000);
    let rating = (n.wrapping_mul(7) % 101) as f64 / 10.0;
    let first = (n % categories.len() as u64) as usize;
    let mut ids = vec![categories[first]];
    if n.is_multiple_of(3) {
        ids.push(categories[(first + 5) % categories.len()]);
    }
    details(&title, &storyline, release_date, rating, &director, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_movie_is_valid_and_names_known_categories() {
        let ids: BTreeMap<&str, Uuid> = CATEGORIES.iter().map(|name| (*name, Uuid::now_v7())).collect();
        let mut titles = HashSet::new();
        for movie in MOVIES {
            assert!(titles.insert(movie.title), "{} is listed twice", movie.title);
            let categories = movie
                .categories
                .iter()
                .map(|name| {
                    *ids.get(name).unwrap_or_else(|| panic!("{}: unknown category {name}", movie.title))
                })
                .collect();
            let date = NaiveDate::parse_from_str(movie.release_date, "%Y-%m-%d").expect("release date");
            details(movie.title, movie.storyline, date, movie.rating, movie.director, categories)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn generated_movies_are_valid_deterministic_and_unique_by_title() {
        let categories: Vec<Uuid> = (0..CATEGORIES.len()).map(|_| Uuid::now_v7()).collect();
        let mut titles = HashSet::new();
        for n in 1..=2_000 {
            let movie = generated_movie(n, &categories).expect("valid");
            assert_eq!(
                movie,
                generated_movie(n, &categories).expect("valid"),
                "movie {n} is not deterministic"
            );
            assert!(movie.storyline.as_str().starts_with(&format!("{GENERATED_MARK}{n}:")));
            assert!(titles.insert(movie.title.as_str().to_string()), "title of {n} repeats");
        }
    }
}
