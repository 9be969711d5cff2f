//! Renting, returning and paying over HTTP.

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_customer_rents_returns_and_is_told_the_charge_is_pending(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool).await;
    let (greg, greg_token) = app.customer("greg").await;
    let (_, other_token) = app.customer("maude").await;
    let comedy = app.category("Comedy").await;
    let movie = app.movie("The Big Lebowski", &[comedy]).await;

    // Act: rent
    let response = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&greg_token), None).await;
    let position_header = response.headers()["x-position"].to_str().unwrap().to_string();
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let rented = expect_status(response, StatusCode::CREATED).await;
    let rental = uuid(&rented["rental_id"]);

    // Assert
    assert_eq!(uuid(&rented["movie_id"]), movie);
    assert_eq!(uuid(&rented["customer_id"]), greg);
    assert_eq!(rented["position"].to_string(), position_header);
    assert_eq!(location, format!("/api/v1/rentals/{rental}"));

    let again = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&other_token), None).await;
    assert_problem(again, 409, "not-available").await;

    let pay_early = app
        .post(&format!("/api/v1/rentals/{rental}/pay"), Some(&greg_token), Some(json!({"amount_cents": 100})))
        .await;
    assert_problem(pay_early, 409, "not-returned").await;

    let stranger = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&other_token), None).await;
    assert_problem(stranger, 403, "forbidden").await;

    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&greg_token), None).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(returned["status"], "returned");
    assert_eq!(returned["movie_title"], "The Big Lebowski");
    assert!(returned["returned_at"].is_string());
    assert!(returned["position"].as_i64().unwrap() > rented["position"].as_i64().unwrap());

    let twice = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&greg_token), None).await;
    assert_problem(twice, 409, "not-active").await;

    let pay = app
        .post(&format!("/api/v1/rentals/{rental}/pay"), Some(&greg_token), Some(json!({"amount_cents": 100})))
        .await;
    assert_problem(pay, 409, "charge-pending").await;

    // The copy is back: someone else can rent it.
    app.rent(movie, &other_token).await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_process_trusts_what_it_remembers_of_a_rental_only_where_it_cannot_be_out_of_date(pool: PgPool) {
    // Arrange: two processes on one store; `here` computes the charges, and remembers the rental
    // it rents (whose it is, the movie, the title), so its return and payment need no lookup.
    let here = TestApp::spawn(pool.clone()).await;
    let there = TestApp::spawn_without_projectors(pool).await;
    let category = here.category("Drama").await;
    let movie = here.movie("Heat", &[category]).await;
    let (_, token) = here.customer("greg").await;
    let (_, stranger) = here.customer("maude").await;
    let rental = here.rent(movie, &token).await;
    let pay_path = format!("/api/v1/rentals/{rental}/pay");
    let return_path = format!("/api/v1/rentals/{rental}/return");

    // Act and assert: what `here` remembers still says whose the rental is...
    let forbidden = here.post(&return_path, Some(&stranger), None).await;
    assert_problem(forbidden, 403, "forbidden").await;
    let early = here.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))).await;
    assert_problem(early, 409, "not-returned").await;

    // ...but not whether it came back: it was returned through the other process.
    let returned = there.post(&return_path, Some(&token), None).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(returned["movie_title"], "Heat");
    let twice = here.post(&return_path, Some(&token), None).await;
    assert_problem(twice, 409, "not-active").await;
    let paid = here.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))).await;
    let paid = expect_status(paid, StatusCode::OK).await;
    assert_eq!(paid["status"], "paid", "{paid}");
    assert_eq!(paid["movie_title"], "Heat", "{paid}");
    assert_eq!(paid["returned_at"], returned["returned_at"], "{paid}");

    // A rental returned here is paid here once, whichever process is asked again.
    let rental = here.rent(movie, &token).await;
    let returned = here.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    expect_status(returned, StatusCode::OK).await;
    let pay_path = format!("/api/v1/rentals/{rental}/pay");
    let paid = here.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))).await;
    assert_eq!(expect_status(paid, StatusCode::OK).await["status"], "paid");
    let again = there.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))).await;
    assert_problem(again, 409, "already-paid").await;
    let again = here.post(&pay_path, Some(&token), Some(json!({"amount_cents": 100}))).await;
    assert_problem(again, 409, "already-paid").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_payment_right_after_the_return_waits_for_the_charge_instead_of_answering_charge_pending(
    pool: PgPool,
) {
    // Arrange: the server computes charges itself (its payments process manager runs), and a
    // transaction left open holds the log's horizon back, so the process manager cannot see the
    // return until it ends.
    let app = TestApp::spawn(pool.clone()).await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let (_, token) = app.customer("greg").await;
    let rental = app.rent(movie, &token).await;
    let mut horizon = eventstore::db::begin(&pool).await.unwrap();
    sqlx::query("select pg_current_xact_id()").execute(&mut *horizon).await.unwrap();
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    expect_status(returned, StatusCode::OK).await;

    // Act: the payment at once, with no retry; the horizon moves on while it waits.
    let path = format!("/api/v1/rentals/{rental}/pay");
    let pay = app.post(&path, Some(&token), Some(json!({"amount_cents": 100})));
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        horizon.commit().await.unwrap();
        std::time::Instant::now()
    };
    let ((pay, answered), released) = tokio::join!(async { (pay.await, std::time::Instant::now()) }, release);

    // Assert: the payment waited for the charge, then was accepted against it, on the first try.
    assert!(answered > released, "answered only after the charge could be assessed");
    let paid = expect_status(pay, StatusCode::OK).await;
    assert_eq!(paid["status"], "paid", "{paid}");
    assert_eq!(paid["charge"]["amount_cents"], 100, "{paid}");
    let kinds: Vec<String> =
        app.events_of("rental", rental).await.into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "ChargeAssessed").count(), 1, "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("RentalPaid"), "{kinds:?}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn of_forty_simultaneous_rents_of_one_movie_exactly_one_succeeds(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(app.customer(&format!("renter{i}")).await.1);
    }

    // Act
    let attempts = (0..40).map(|i| {
        let token = tokens[i % tokens.len()].clone();
        let app = &app;
        async move { app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&token), None).await.status() }
    });
    let statuses = futures::future::join_all(attempts).await;

    // Assert
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, refused), (1, 39), "statuses: {statuses:?}");
    let rents =
        app.events_of("movie", movie).await.into_iter().filter(|(kind, _, _)| kind == "MovieRented").count();
    assert_eq!(rents, 1, "exactly one MovieRented event");
    println!("40 concurrent rents: 1 created, 39 conflicts, 1 event, 0 server errors");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn events_record_who_acted_and_the_request_id_the_client_sent(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (greg, token) = app.customer("greg").await;
    let category = app.category("Noir").await;
    let movie = app.movie("Chinatown", &[category]).await;

    // Act
    let response = app
        .client
        .post(app.url(&format!("/api/v1/movies/{movie}/rent")))
        .bearer_auth(&token)
        .header("x-request-id", "client-req.42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-req.42");
    let rented = expect_status(response, StatusCode::CREATED).await;

    // Assert
    let events = app.events_of("movie", movie).await;
    let (kind, payload, metadata) = events.last().unwrap();
    assert_eq!(kind, "MovieRented");
    assert_eq!(payload["rental_id"], rented["rental_id"]);
    assert_eq!(metadata["actor_id"], json!(greg));
    assert_eq!(metadata["request_id"], "client-req.42");
    assert_eq!(metadata["correlation_id"], "client-req.42");
    assert!(metadata["causation_id"].is_null());
    let (position, event_id): (i64, uuid::Uuid) = sqlx::query_as(
        "select position, event_id from events where aggregate_type = 'movie' and aggregate_id = $1
          order by sequence desc limit 1",
    )
    .bind(movie.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rented["position"], position);
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUID v7");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_invalid_request_id_is_replaced_by_a_generated_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "has spaces and is not allowed")
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(echoed, "has spaces and is not allowed");
    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "generated id {echoed}");
}

/// A whole-second time `days` days from now (negative: in the past), as RFC 3339.
fn days_from_now(days: i64) -> (DateTime<Utc>, String) {
    let time = (Utc::now() + Duration::days(days)).trunc_subsecs(0);
    (time, time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn time_of(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|_| panic!("expected an RFC 3339 time, got {value}"))
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn unknown_or_malformed_movie_and_rental_ids_are_404(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, customer) = app.customer("greg").await;
    let unknown = Uuid::now_v7();

    // Act / Assert
    for id in [unknown.to_string(), "not-a-uuid".to_string(), "0".to_string(), format!("{unknown}0")] {
        let rent = app.post(&format!("/api/v1/movies/{id}/rent"), Some(&customer), None).await;
        assert_problem_in(rent, 404, "not-found", &format!("customer rents movie {id}")).await;
        let rent = app
            .post(&format!("/api/v1/movies/{id}/rent"), Some(&admin), Some(json!({"customer_id": greg})))
            .await;
        assert_problem_in(rent, 404, "not-found", &format!("admin rents movie {id}")).await;
        for token in [&customer, &admin] {
            let returned = app.post(&format!("/api/v1/rentals/{id}/return"), Some(token), None).await;
            assert_problem_in(returned, 404, "not-found", &format!("return rental {id}")).await;
            let paid = app
                .post(&format!("/api/v1/rentals/{id}/pay"), Some(token), Some(json!({"amount_cents": 100})))
                .await;
            assert_problem_in(paid, 404, "not-found", &format!("pay rental {id}")).await;
        }
    }
    // The body is checked before existence: an invalid body on an unknown id is 422.
    let paid = app
        .post(&format!("/api/v1/rentals/{unknown}/pay"), Some(&customer), Some(json!({"amount_cents": -1})))
        .await;
    assert_invalid(paid, &["amount_cents"], "pay an unknown rental a negative amount").await;
    let rent = app.post(&format!("/api/v1/movies/{unknown}/rent"), Some(&admin), Some(json!({}))).await;
    assert_invalid(rent, &["customer_id"], "admin rents an unknown movie for nobody").await;
    let returned = app
        .post(
            &format!("/api/v1/rentals/{unknown}/return"),
            Some(&admin),
            Some(json!({"returned_at": "yesterday"})),
        )
        .await;
    assert_invalid(returned, &["returned_at"], "admin returns an unknown rental at a bad time").await;
    // A movie id is not a rental id.
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    app.rent(movie, &customer).await;
    let returned = app.post(&format!("/api/v1/rentals/{movie}/return"), Some(&customer), None).await;
    assert_problem(returned, 404, "not-found").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_renting_must_name_a_customer_account(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, _) = app.customer("greg").await;
    let (auditor, _) = app.staff("audrey", "auditor").await;
    let (analyst, _) = app.staff("annie", "analyst").await;
    let (other_admin, _) = app.staff("boss", "admin").await;
    let admin_id = app.user_id(ADMIN_USERNAME).await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let path = format!("/api/v1/movies/{movie}/rent");
    let (_, tomorrow) = days_from_now(1);
    let cases: Vec<(&str, Option<Value>, &[&str])> = vec![
        ("no body", None, &["customer_id"]),
        ("an empty object", Some(json!({})), &["customer_id"]),
        ("a null customer", Some(json!({"customer_id": null})), &["customer_id"]),
        ("a customer id that is not a UUID", Some(json!({"customer_id": "greg"})), &["customer_id"]),
        ("a customer id that is a number", Some(json!({"customer_id": 7})), &["customer_id"]),
        ("an unknown account", Some(json!({"customer_id": Uuid::now_v7()})), &["customer_id"]),
        ("the admin themself", Some(json!({"customer_id": admin_id})), &["customer_id"]),
        ("another admin", Some(json!({"customer_id": other_admin})), &["customer_id"]),
        ("an auditor", Some(json!({"customer_id": auditor})), &["customer_id"]),
        ("an analyst", Some(json!({"customer_id": analyst})), &["customer_id"]),
        ("only a rent time", Some(json!({"rented_at": "2020-01-01T00:00:00Z"})), &["customer_id"]),
        (
            "a rent time that is not a time",
            Some(json!({"customer_id": greg, "rented_at": "yesterday"})),
            &["rented_at"],
        ),
        (
            "a rent time without a zone",
            Some(json!({"customer_id": greg, "rented_at": "2020-01-01T00:00:00"})),
            &["rented_at"],
        ),
        (
            "a rent time in the future",
            Some(json!({"customer_id": greg, "rented_at": tomorrow})),
            &["rented_at"],
        ),
        ("an unknown field", Some(json!({"customer_id": greg, "days": 3})), &["days"]),
        (
            "everything wrong",
            Some(json!({"customer_id": auditor, "rented_at": tomorrow, "days": 3})),
            &["customer_id", "days", "rented_at"],
        ),
    ];

    // Act / Assert
    for (case, body, fields) in cases {
        let response = app.post(&path, Some(&admin), body).await;
        assert_invalid(response, fields, case).await;
    }
    assert_eq!(app.events_of("movie", movie).await.len(), 1, "no refusal rented the movie");

    // A valid rent on behalf of greg, with the admin recorded as the actor.
    let rented = expect_status(
        app.post(&path, Some(&admin), Some(json!({"customer_id": greg}))).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(uuid(&rented["customer_id"]), greg);
    let (kind, payload, metadata) = app.events_of("movie", movie).await.pop().unwrap();
    assert_eq!(kind, "MovieRented");
    assert_eq!(payload["customer_id"], json!(greg));
    assert_eq!(metadata["actor_id"], json!(admin_id));
    // The copy is out now: another rent is a state conflict, after the body checks.
    let again = app.post(&path, Some(&admin), Some(json!({"customer_id": greg}))).await;
    assert_problem(again, 409, "not-available").await;
    let again = app.post(&path, Some(&admin), Some(json!({"customer_id": auditor}))).await;
    assert_invalid(again, &["customer_id"], "a rented movie for an auditor").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn back_dated_rentals_are_recorded_with_their_business_times_and_never_overlap(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, greg_token) = app.customer("greg").await;
    let (maude, _) = app.customer("maude").await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let rent_path = format!("/api/v1/movies/{movie}/rent");
    let rent_at = |customer: Uuid, at: &str| json!({"customer_id": customer, "rented_at": at});
    let (ten_days_ago, ten_days_ago_text) = days_from_now(-10);
    let (_, eleven_days_ago) = days_from_now(-11);
    let (seven_days_ago, seven_days_ago_text) = days_from_now(-7);
    let (_, eight_days_ago) = days_from_now(-8);
    let (_, in_an_hour) = {
        let time = (Utc::now() + Duration::hours(1)).trunc_subsecs(0);
        (time, time.to_rfc3339_opts(SecondsFormat::Secs, true))
    };

    // Act / Assert: not in the future.
    let future = app.post(&rent_path, Some(&admin), Some(rent_at(greg, &in_an_hour))).await;
    assert_invalid(future, &["rented_at"], "rented in an hour").await;

    // A back-dated rent, in another zone's notation, is recorded at that instant.
    let in_new_york =
        (ten_days_ago - Duration::hours(5)).naive_utc().format("%Y-%m-%dT%H:%M:%S-05:00").to_string();
    let rented = app.post(&rent_path, Some(&admin), Some(rent_at(greg, &in_new_york))).await;
    let rented = expect_status(rented, StatusCode::CREATED).await;
    let rental = uuid(&rented["rental_id"]);
    assert_eq!(time_of(&rented["rented_at"]), ten_days_ago);
    let (kind, payload, _) = app.events_of("movie", movie).await.pop().unwrap();
    assert_eq!(kind, "MovieRented");
    assert_eq!(time_of(&payload["rented_at"]), ten_days_ago);
    assert_eq!(payload["customer_id"], json!(greg));

    // Returns: not before the rent, not in the future; customers may not back-date.
    let return_path = format!("/api/v1/rentals/{rental}/return");
    let at = |time: &str| json!({"returned_at": time});
    let before_rent = app.post(&return_path, Some(&admin), Some(at(&eleven_days_ago))).await;
    assert_invalid(before_rent, &["returned_at"], "returned before the rent").await;
    let future = app.post(&return_path, Some(&admin), Some(at(&in_an_hour))).await;
    assert_invalid(future, &["returned_at"], "returned in an hour").await;
    let not_a_time = app.post(&return_path, Some(&admin), Some(at("last week"))).await;
    assert_invalid(not_a_time, &["returned_at"], "returned at no time").await;
    let unknown_field =
        app.post(&return_path, Some(&admin), Some(json!({"returned_at": seven_days_ago_text, "x": 1}))).await;
    assert_invalid(unknown_field, &["x"], "an unknown field").await;
    let by_customer = app.post(&return_path, Some(&greg_token), Some(at(&seven_days_ago_text))).await;
    assert_problem(by_customer, 403, "forbidden").await;

    let returned = app.post(&return_path, Some(&admin), Some(at(&seven_days_ago_text))).await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(returned["status"], "returned");
    assert_eq!(uuid(&returned["customer_id"]), greg);
    assert_eq!(time_of(&returned["rented_at"]), ten_days_ago);
    assert_eq!(time_of(&returned["returned_at"]), seven_days_ago);
    let (kind, payload, _) = app.events_of("movie", movie).await.pop().unwrap();
    assert_eq!(kind, "MovieReturned");
    assert_eq!(time_of(&payload["returned_at"]), seven_days_ago);
    assert_eq!(payload["rental_id"], json!(rental));

    // The next rental of the copy may not start before that return...
    let overlapping = app.post(&rent_path, Some(&admin), Some(rent_at(maude, &eight_days_ago))).await;
    assert_invalid(overlapping, &["rented_at"], "rented before the previous return").await;
    let overlapping = app.post(&rent_path, Some(&admin), Some(rent_at(maude, &ten_days_ago_text))).await;
    assert_invalid(overlapping, &["rented_at"], "rented when the previous rental began").await;
    // ...but may start the instant it came back, and be returned the instant it started.
    let next = app.post(&rent_path, Some(&admin), Some(rent_at(maude, &seven_days_ago_text))).await;
    let next = uuid(&expect_status(next, StatusCode::CREATED).await["rental_id"]);
    let returned = app
        .post(&format!("/api/v1/rentals/{next}/return"), Some(&admin), Some(at(&seven_days_ago_text)))
        .await;
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(time_of(&returned["returned_at"]), seven_days_ago);
    let kinds: Vec<String> =
        app.events_of("movie", movie).await.into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds, ["MovieAdded", "MovieRented", "MovieReturned", "MovieRented", "MovieReturned"]);

    // A rent without a time is now, after every back-dated one.
    let before = Utc::now() - Duration::seconds(1);
    let current =
        expect_status(app.post(&rent_path, Some(&greg_token), None).await, StatusCode::CREATED).await;
    let rented_at = time_of(&current["rented_at"]);
    assert!(rented_at >= before && rented_at <= Utc::now(), "rented_at {rented_at}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn paying_checks_the_amount_then_whether_the_rental_was_returned(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool).await;
    let admin = app.admin().await;
    let (_, greg) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let rental = app.rent(movie, &greg).await;
    let pay_path = format!("/api/v1/rentals/{rental}/pay");
    let invalid: Vec<(&str, Value, &[&str])> = vec![
        ("a negative amount", json!({"amount_cents": -1}), &["amount_cents"]),
        ("a fractional amount", json!({"amount_cents": 1.5}), &["amount_cents"]),
        ("an amount in a string", json!({"amount_cents": "100"}), &["amount_cents"]),
        ("an amount too large for 64 bits", json!({"amount_cents": 1e20}), &["amount_cents"]),
        ("a null amount", json!({"amount_cents": null}), &["amount_cents"]),
        ("no amount", json!({}), &["amount_cents"]),
        (
            "money instead of cents",
            json!({"amount": {"amount_cents": 100, "currency": "EUR"}}),
            &["amount", "amount_cents"],
        ),
        ("an unknown field", json!({"amount_cents": 100, "currency": "EUR"}), &["currency"]),
    ];

    for state in ["active", "returned"] {
        // Act / Assert: the body first...
        for (case, body, fields) in &invalid {
            for token in [&greg, &admin] {
                let response = app.post(&pay_path, Some(token), Some(body.clone())).await;
                assert_invalid(response, fields, &format!("{state} rental, {case}")).await;
            }
        }
        let empty = app.raw(reqwest::Method::POST, &pay_path, Some(&greg), None, "").await;
        assert_invalid(empty, &["amount_cents"], &format!("{state} rental, an empty body")).await;
        let not_json =
            app.raw(reqwest::Method::POST, &pay_path, Some(&greg), Some("text/plain"), "100").await;
        assert_problem_in(not_json, 415, "unsupported-media-type", state).await;

        // ...then the rental's state.
        for (token, amount) in [(&greg, 100), (&admin, 100), (&greg, 0)] {
            let response = app.post(&pay_path, Some(token), Some(json!({"amount_cents": amount}))).await;
            let slug = if state == "active" { "not-returned" } else { "charge-pending" };
            assert_problem_in(response, 409, slug, &format!("{state} rental, {amount} cents")).await;
        }
        if state == "active" {
            let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&greg), None).await;
            expect_status(returned, StatusCode::OK).await;
        }
    }
    // A second return is a state conflict, for the renter and for an admin.
    for token in [&greg, &admin] {
        let again = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(token), None).await;
        assert_problem(again, 409, "not-active").await;
    }
    // Still after the body checks.
    let again = app
        .post(&format!("/api/v1/rentals/{rental}/return"), Some(&admin), Some(json!({"returned_at": "soon"})))
        .await;
    assert_invalid(again, &["returned_at"], "second return with a bad time").await;
    let rental_events: i64 =
        sqlx::query_scalar("select count(*) from events where aggregate_type = 'rental'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let payments: i64 = sqlx::query_scalar(
        "select count(*) from events where aggregate_type = 'rental' and event_type like '%Paid%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(payments, 0, "no payment was recorded ({rental_events} rental events)");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_returns_a_rental_on_behalf_of_the_customer(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn_without_projectors(pool).await;
    let admin = app.admin().await;
    let admin_id = app.user_id(ADMIN_USERNAME).await;
    let (greg, greg_token) = app.customer("greg").await;
    let category = app.category("Drama").await;
    let movie = app.movie("Heat", &[category]).await;
    let rental = app.rent(movie, &greg_token).await;

    // Act
    let before = Utc::now() - Duration::seconds(1);
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&admin), None).await;

    // Assert
    let returned = expect_status(returned, StatusCode::OK).await;
    assert_eq!(uuid(&returned["id"]), rental);
    assert_eq!(uuid(&returned["movie_id"]), movie);
    assert_eq!(returned["movie_title"], "Heat");
    assert_eq!(uuid(&returned["customer_id"]), greg);
    assert_eq!(returned["status"], "returned");
    assert!(returned["charge"].is_null() && returned["paid_at"].is_null());
    let returned_at = time_of(&returned["returned_at"]);
    assert!(returned_at >= before && returned_at <= Utc::now(), "returned_at {returned_at}");
    let (kind, payload, metadata) = app.events_of("movie", movie).await.pop().unwrap();
    assert_eq!(kind, "MovieReturned");
    assert_eq!(payload["customer_id"], json!(greg));
    assert_eq!(metadata["actor_id"], json!(admin_id));
    // The customer finds it returned; the admin may pay for them, once it is charged.
    let again = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&greg_token), None).await;
    assert_problem(again, 409, "not-active").await;
    let pay = app
        .post(&format!("/api/v1/rentals/{rental}/pay"), Some(&admin), Some(json!({"amount_cents": 100})))
        .await;
    assert_problem(pay, 409, "charge-pending").await;
}
