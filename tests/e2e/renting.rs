//! Renting, returning and paying over HTTP.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_customer_rents_returns_and_is_told_the_charge_is_pending(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
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
