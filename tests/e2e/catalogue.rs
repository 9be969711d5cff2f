//! Catalogue administration over HTTP.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_creates_and_renames_categories_with_unique_names(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let created = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": "Comedy"}))).await;
    let created = expect_status(created, StatusCode::CREATED).await;
    assert_eq!(created["name"], "Comedy");
    assert_eq!(created["movie_count"], 0);
    assert!(created["position"].as_i64().unwrap() > 0);
    let id = uuid(&created["id"]);

    let duplicate = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": "comedy"}))).await;
    assert_problem(duplicate, 409, "name-taken").await;

    app.movie("Airplane!", &[id]).await;
    let renamed =
        app.patch(&format!("/api/v1/categories/{id}"), Some(&admin), json!({"name": "Comedies"})).await;
    let renamed = expect_status(renamed, StatusCode::OK).await;
    assert_eq!(renamed["name"], "Comedies");
    assert_eq!(renamed["movie_count"], 1);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_adds_changes_and_retires_a_movie(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let drama = app.category("Drama").await;
    let crime = app.category("Crime").await;

    let created = app.post("/api/v1/movies", Some(&admin), Some(movie_body("Heat", &[drama]))).await;
    let created = expect_status(created, StatusCode::CREATED).await;
    let id = uuid(&created["id"]);
    assert_eq!(created["title"], "Heat");
    assert_eq!(created["rating"], 8.1);
    assert_eq!(created["categories"], json!(["Drama"]));
    assert_eq!(created["available"], true);
    assert_eq!(created["retired"], false);
    assert_eq!(created["version"], 1);

    let patched = app
        .patch(
            &format!("/api/v1/movies/{id}"),
            Some(&admin),
            json!({"category_ids": [drama, crime], "director": null}),
        )
        .await;
    let patched = expect_status(patched, StatusCode::OK).await;
    assert_eq!(patched["categories"], json!(["Drama", "Crime"]));
    assert!(patched["director"].is_null());
    assert_eq!(patched["version"], 2);

    let retired = app.delete(&format!("/api/v1/movies/{id}"), Some(&admin)).await;
    assert_eq!(retired.status(), StatusCode::NO_CONTENT);
    assert!(retired.headers()["x-position"].to_str().unwrap().parse::<i64>().unwrap() > 0);
    assert_problem(app.delete(&format!("/api/v1/movies/{id}"), Some(&admin)).await, 409, "retired").await;
    let patch_retired =
        app.patch(&format!("/api/v1/movies/{id}"), Some(&admin), json!({"title": "Heat 2"})).await;
    assert_problem(patch_retired, 409, "retired").await;
    let (_, customer) = app.customer("greg").await;
    let rent = app.post(&format!("/api/v1/movies/{id}/rent"), Some(&customer), None).await;
    assert_problem(rent, 409, "not-available").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_movie_with_invalid_fields_is_refused_naming_every_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let body = json!({"title": "", "rating": 10.5, "release_date": "1998-13-01", "category_ids": [uuid::Uuid::now_v7()], "price": 3});
    let problem =
        assert_problem(app.post("/api/v1/movies", Some(&admin), Some(body)).await, 422, "validation-failed")
            .await;
    let errors = problem["errors"].as_object().unwrap();
    let mut fields: Vec<&str> = errors.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["category_ids", "price", "rating", "release_date", "title"]);
}
