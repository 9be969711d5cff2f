//! A model-based property test: proptest generates sequences of commands from several customers
//! and an admin (valid, invalid and duplicated ones), the test runs them against the real service
//! and against a small in-memory model of the rules, and every answer, every final read model and
//! a replay of the log (`verify`) must agree with the model.
//!
//! `MODEL_SEED=<n>` replays one run; `MODEL_CASES` and `MODEL_STEPS` make it larger.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::read_side::{last_position, wait_for_projections, wait_for_rental_status};
use crate::resilience::verify;
use crate::support::*;

const CUSTOMERS: usize = 3;
const MOVIES: usize = 3;

/// Who sends a command: a customer by index, or the admin.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Customer(usize),
    Admin,
}

#[derive(Debug, Clone)]
enum Op {
    Rent { customer: usize, movie: usize },
    Return { rental: usize, by: Who },
    Pay { rental: usize, by: Who, right_amount: bool },
    Retire { movie: usize },
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => (0..CUSTOMERS).prop_map(Who::Customer), 1 => Just(Who::Admin)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CUSTOMERS, 0..MOVIES).prop_map(|(customer, movie)| Op::Rent { customer, movie }),
        3 => (any::<usize>(), who()).prop_map(|(rental, by)| Op::Return { rental, by }),
        3 => (any::<usize>(), who(), any::<bool>()).prop_map(|(rental, by, right_amount)| Op::Pay { rental, by, right_amount }),
        1 => (0..MOVIES).prop_map(|movie| Op::Retire { movie }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Active,
    Returned,
    Paid,
}

#[derive(Debug, Clone)]
struct ModelRental {
    id: Uuid,
    movie: usize,
    customer: usize,
    state: State,
    rented_at: DateTime<Utc>,
    returned_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone)]
struct ModelMovie {
    retired: bool,
    active: Option<usize>,
    times_rented: i64,
}

/// The rules, as the contract states them, for the operations generated here.
#[derive(Debug, Default)]
struct Model {
    movies: Vec<ModelMovie>,
    rentals: Vec<ModelRental>,
}

impl Model {
    fn may_act(&self, by: Who, rental: &ModelRental) -> bool {
        by == Who::Admin || by == Who::Customer(rental.customer)
    }

    fn charge(&self, rental: &ModelRental) -> i64 {
        let plan = domain::price::PricePlan::default();
        plan.assess(rental.rented_at, rental.returned_at.expect("returned")).amount_cents
    }
}

fn time_of(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time")).expect("RFC 3339").with_timezone(&Utc)
}

/// Runs one generated sequence against the service and the model; returns the steps sent.
async fn run_case(app: &TestApp, case: usize, ops: &[Op]) -> usize {
    let admin = app.admin().await;
    let category = app.category(&format!("Model {case}")).await;
    let mut tokens = Vec::new();
    for c in 0..CUSTOMERS {
        tokens.push(app.customer(&format!("model{case}c{c}")).await.1);
    }
    let mut movie_ids = Vec::new();
    for m in 0..MOVIES {
        movie_ids.push(app.movie(&format!("Model {case} movie {m}"), &[category]).await);
    }
    let mut model = Model { movies: vec![ModelMovie::default(); MOVIES], rentals: vec![] };
    let token_of = |who: Who| match who {
        Who::Customer(c) => tokens[c].clone(),
        Who::Admin => admin.clone(),
    };
    let mut sent = 0;
    for (step, op) in ops.iter().enumerate() {
        let context = format!("case {case}, step {step}: {op:?}");
        match op.clone() {
            Op::Rent { customer, movie } => {
                let path = format!("/api/v1/movies/{}/rent", movie_ids[movie]);
                let (status, slug, body) = answer(app.post(&path, Some(&tokens[customer]), None).await).await;
                let m = &mut model.movies[movie];
                if m.retired || m.active.is_some() {
                    assert_eq!((status, slug.as_str()), (409, "not-available"), "{context}");
                } else {
                    assert_eq!(status, 201, "{context}: {body}");
                    m.active = Some(model.rentals.len());
                    m.times_rented += 1;
                    model.rentals.push(ModelRental {
                        id: uuid(&body["rental_id"]),
                        movie,
                        customer,
                        state: State::Active,
                        rented_at: time_of(&body["rented_at"]),
                        returned_at: None,
                    });
                }
            }
            Op::Return { rental, by } => {
                if model.rentals.is_empty() {
                    continue;
                }
                let index = rental % model.rentals.len();
                let r = model.rentals[index].clone();
                let path = format!("/api/v1/rentals/{}/return", r.id);
                let (status, slug, body) = answer(app.post(&path, Some(&token_of(by)), None).await).await;
                if !model.may_act(by, &r) {
                    assert_eq!((status, slug.as_str()), (403, "forbidden"), "{context}");
                } else if r.state != State::Active {
                    assert_eq!((status, slug.as_str()), (409, "not-active"), "{context}");
                } else {
                    assert_eq!(status, 200, "{context}: {body}");
                    assert_eq!(body["status"], "returned", "{context}");
                    let returned_at = time_of(&body["returned_at"]);
                    model.rentals[index].state = State::Returned;
                    model.rentals[index].returned_at = Some(returned_at);
                    model.movies[r.movie].active = None;
                }
            }
            Op::Pay { rental, by, right_amount } => {
                if model.rentals.is_empty() {
                    continue;
                }
                let index = rental % model.rentals.len();
                let r = model.rentals[index].clone();
                if r.state == State::Returned && model.may_act(by, &r) {
                    // The charge is assessed asynchronously, after the return's own event: wait
                    // for it, so the answer is determined.
                    wait_for_rental_status(
                        app,
                        &app.address,
                        &admin,
                        r.id,
                        "charged",
                        Duration::from_secs(10),
                    )
                    .await;
                }
                let expected_charge = r.returned_at.map(|_| model.charge(&r));
                let amount = match (right_amount, expected_charge) {
                    (true, Some(charge)) => charge,
                    (false, Some(charge)) if r.state == State::Returned => charge + 1,
                    _ => 100,
                };
                let path = format!("/api/v1/rentals/{}/pay", r.id);
                let (status, slug, body) =
                    answer(app.post(&path, Some(&token_of(by)), Some(json!({"amount_cents": amount}))).await)
                        .await;
                if !model.may_act(by, &r) {
                    assert_eq!((status, slug.as_str()), (403, "forbidden"), "{context}");
                } else {
                    match r.state {
                        State::Active => {
                            assert_eq!((status, slug.as_str()), (409, "not-returned"), "{context}")
                        }
                        State::Paid => {
                            assert_eq!((status, slug.as_str()), (409, "already-paid"), "{context}")
                        }
                        State::Returned if Some(amount) != expected_charge => {
                            assert_eq!(status, 422, "{context}: {body}")
                        }
                        State::Returned => {
                            assert_eq!(status, 200, "{context}: {body}");
                            assert_eq!(body["status"], "paid", "{context}");
                            model.rentals[index].state = State::Paid;
                        }
                    }
                }
            }
            Op::Retire { movie } => {
                let path = format!("/api/v1/movies/{}", movie_ids[movie]);
                let (status, slug, _) = answer(app.delete(&path, Some(&admin)).await).await;
                let m = &mut model.movies[movie];
                if m.retired {
                    assert_eq!((status, slug.as_str()), (409, "retired"), "{context}");
                } else if m.active.is_some() {
                    assert_eq!((status, slug.as_str()), (409, "not-available"), "{context}");
                } else {
                    assert_eq!(status, 204, "{context}");
                    m.retired = true;
                }
            }
        }
        sent += 1;
    }

    // The read models, once caught up, say what the model says.
    let seen = last_position(&app.pool).await;
    for (m, id) in movie_ids.iter().enumerate() {
        let view = expect_status(
            app.get(&format!("/api/v1/movies/{id}?min_position={seen}"), Some(&admin)).await,
            StatusCode::OK,
        )
        .await;
        let model_movie = &model.movies[m];
        let expected = json!({
            "available": !model_movie.retired && model_movie.active.is_none(),
            "retired": model_movie.retired,
            "times_rented": model_movie.times_rented,
        });
        let actual = json!({"available": view["available"], "retired": view["retired"], "times_rented": view["times_rented"]});
        assert_eq!(actual, expected, "case {case}: movie {m}");
    }
    for r in &model.rentals {
        let view = expect_status(
            app.get(&format!("/api/v1/rentals/{}?min_position={seen}", r.id), Some(&admin)).await,
            StatusCode::OK,
        )
        .await;
        let status = match r.state {
            State::Active => "active",
            State::Returned => "charged",
            State::Paid => "paid",
        };
        assert_eq!(view["status"], status, "case {case}: rental {}", r.id);
        if r.returned_at.is_some() {
            assert_eq!(view["charge"]["amount_cents"], model.charge(r), "case {case}: charge of {}", r.id);
        }
    }
    for (c, token) in tokens.iter().enumerate() {
        let me = expect_status(
            app.get(&format!("/api/v1/me?min_position={seen}"), Some(token)).await,
            StatusCode::OK,
        )
        .await;
        let due: i64 = model
            .rentals
            .iter()
            .filter(|r| r.customer == c && r.state == State::Returned)
            .map(|r| model.charge(r))
            .sum();
        assert_eq!(me["balance_due"]["amount_cents"], due, "case {case}: balance of customer {c}");
    }
    sent
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn random_command_sequences_agree_with_a_model_of_the_rules_and_with_a_replay_of_the_log(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let seed = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    let cases = env_number("MODEL_CASES", 4) as usize;
    let steps = env_number("MODEL_STEPS", 30) as usize;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = prop::collection::vec(op(), steps);

    // Act / Assert: each case against the same service, on its own customers and movies.
    let mut sent = 0;
    for case in 0..cases {
        let ops = strategy.new_tree(&mut runner).expect("a generated sequence").current();
        eprintln!("model case {case} (MODEL_SEED={seed}): {} operations", ops.len());
        sent += run_case(&app, case, &ops).await;
    }

    // A replay of the whole log gives exactly the live read models.
    wait_for_projections(&app, &app.address, Duration::from_secs(30)).await;
    let (code, report) = verify(&app.database_url).await;
    assert_eq!(code, 0, "verify: {report}");
    println!(
        "model-based test (MODEL_SEED={seed}): {cases} cases, {sent} commands sent, every answer and read model as \
         the model predicts, 0 mismatches; verify exit 0"
    );
}
