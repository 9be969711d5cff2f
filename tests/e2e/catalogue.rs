//! Catalogue administration over HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};
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

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn category_names_are_checked_on_create_and_rename(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let comedy = app.category("Comedy").await;
    let drama = app.category("Drama").await;
    let unknown = uuid::Uuid::now_v7();
    let invalid: Vec<(&str, Value, &[&str])> = vec![
        ("an empty name", json!({"name": ""}), &["name"]),
        ("a blank name", json!({"name": "   "}), &["name"]),
        ("a name of 101 characters", json!({"name": "x".repeat(101)}), &["name"]),
        ("a name with a control character", json!({"name": "Com\u{7}edy"}), &["name"]),
        ("a name that is a number", json!({"name": 7}), &["name"]),
        ("a null name", json!({"name": null}), &["name"]),
        ("no name", json!({}), &["name"]),
        ("an unknown field", json!({"name": "Noir", "colour": "black"}), &["colour"]),
        ("everything wrong", json!({"name": "", "colour": "black"}), &["colour", "name"]),
    ];

    // Act / Assert
    for (case, body, fields) in &invalid {
        let create = app.post("/api/v1/categories", Some(&admin), Some(body.clone())).await;
        assert_invalid(create, fields, &format!("create with {case}")).await;
        let rename = app.patch(&format!("/api/v1/categories/{comedy}"), Some(&admin), body.clone()).await;
        assert_invalid(rename, fields, &format!("rename with {case}")).await;
        // The body is checked before the category is looked up.
        let rename = app.patch(&format!("/api/v1/categories/{unknown}"), Some(&admin), body.clone()).await;
        assert_invalid(rename, fields, &format!("rename of an unknown category with {case}")).await;
    }
    let empty = app.raw(reqwest::Method::POST, "/api/v1/categories", Some(&admin), None, "").await;
    assert_invalid(empty, &["name"], "an empty body").await;

    for path in [
        format!("/api/v1/categories/{unknown}"),
        "/api/v1/categories/not-a-uuid".to_string(),
        "/api/v1/categories/12345".to_string(),
        format!("/api/v1/categories/{comedy}x"),
    ] {
        let response = app.patch(&path, Some(&admin), json!({"name": "Noir"})).await;
        assert_problem_in(response, 404, "not-found", &path).await;
    }
    for taken in ["Drama", "drama", "DRAMA", " Drama "] {
        let create = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": taken}))).await;
        assert_problem_in(create, 409, "name-taken", &format!("create {taken:?}")).await;
        let rename =
            app.patch(&format!("/api/v1/categories/{comedy}"), Some(&admin), json!({"name": taken})).await;
        assert_problem_in(rename, 409, "name-taken", &format!("rename to {taken:?}")).await;
    }
    assert_eq!(app.events_of("category", comedy).await.len(), 1, "no refusal changed Comedy");
    assert_eq!(app.events_of("category", drama).await.len(), 1, "no refusal changed Drama");

    // The bounds are valid: 1 and 100 characters, trimmed.
    for name in ["N", &"x".repeat(100), "  Film noir  "] {
        let created = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": name}))).await;
        let created = expect_status(created, StatusCode::CREATED).await;
        assert_eq!(created["name"], name.trim());
    }
    // A category may be renamed to another case of its own name.
    let renamed =
        app.patch(&format!("/api/v1/categories/{comedy}"), Some(&admin), json!({"name": "COMEDY"})).await;
    assert_eq!(expect_status(renamed, StatusCode::OK).await["name"], "COMEDY");
}

/// Movie fields: one invalid value per row, the field it must be reported against.
fn invalid_movie_fields(categories: &[uuid::Uuid]) -> Vec<(&'static str, Value, &'static [&'static str])> {
    let six: Vec<uuid::Uuid> = categories.iter().copied().take(6).collect();
    assert_eq!(six.len(), 6);
    vec![
        ("empty title", json!({"title": ""}), &["title"]),
        ("blank title", json!({"title": "  "}), &["title"]),
        ("title of 201 characters", json!({"title": "t".repeat(201)}), &["title"]),
        ("title that is a number", json!({"title": 1}), &["title"]),
        ("null title", json!({"title": null}), &["title"]),
        ("storyline of 2001 characters", json!({"storyline": "s".repeat(2001)}), &["storyline"]),
        ("storyline that is a list", json!({"storyline": ["s"]}), &["storyline"]),
        ("rating -1", json!({"rating": -1}), &["rating"]),
        ("rating -0.1", json!({"rating": -0.1}), &["rating"]),
        ("rating 10.01", json!({"rating": 10.01}), &["rating"]),
        ("rating 10.1", json!({"rating": 10.1}), &["rating"]),
        ("rating 11", json!({"rating": 11}), &["rating"]),
        ("rating with two decimals", json!({"rating": 7.25}), &["rating"]),
        ("rating as a string", json!({"rating": "8"}), &["rating"]),
        ("rating null", json!({"rating": null}), &["rating"]),
        ("release date 2020-02-30", json!({"release_date": "2020-02-30"}), &["release_date"]),
        ("release date 2021-02-29", json!({"release_date": "2021-02-29"}), &["release_date"]),
        ("release date in another format", json!({"release_date": "18/01/1998"}), &["release_date"]),
        ("release date as a time", json!({"release_date": "1998-01-18T00:00:00Z"}), &["release_date"]),
        ("release date as a number", json!({"release_date": 19980118}), &["release_date"]),
        ("director of 201 characters", json!({"director": "d".repeat(201)}), &["director"]),
        ("director that is a number", json!({"director": 5}), &["director"]),
        ("no categories", json!({"category_ids": []}), &["category_ids"]),
        ("six categories", json!({"category_ids": six}), &["category_ids"]),
        ("a category twice", json!({"category_ids": [categories[0], categories[0]]}), &["category_ids"]),
        ("an unknown category", json!({"category_ids": [uuid::Uuid::now_v7()]}), &["category_ids"]),
        (
            "a known and an unknown category",
            json!({"category_ids": [categories[0], uuid::Uuid::now_v7()]}),
            &["category_ids"],
        ),
        ("a category id that is not a UUID", json!({"category_ids": ["comedy"]}), &["category_ids"]),
        ("categories as one string", json!({"category_ids": categories[0]}), &["category_ids"]),
        ("an unknown field", json!({"price": 3}), &["price"]),
        ("a read-only field", json!({"retired": true}), &["retired"]),
    ]
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_invalid_movie_field_is_named_on_create_and_on_change(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let mut categories = Vec::new();
    for name in ["Comedy", "Drama", "Crime", "Noir", "Western", "Musical"] {
        categories.push(app.category(name).await);
    }
    let movie = app.movie("Heat", &categories[..1]).await;
    let valid = movie_body("Fargo", &categories[..1]);

    for (case, change, fields) in invalid_movie_fields(&categories) {
        // Act
        let mut body = valid.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let create = app.post("/api/v1/movies", Some(&admin), Some(body)).await;
        let patch = app.patch(&format!("/api/v1/movies/{movie}"), Some(&admin), change.clone()).await;

        // Assert
        assert_invalid(create, fields, &format!("create with {case}")).await;
        assert_invalid(patch, fields, &format!("change with {case}")).await;
    }

    // Every required field missing is named; optional ones are not.
    for field in ["title", "release_date", "rating", "category_ids"] {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        let create = app.post("/api/v1/movies", Some(&admin), Some(body)).await;
        assert_invalid(create, &[field], &format!("create without {field}")).await;
    }
    let empty = app.post("/api/v1/movies", Some(&admin), Some(json!({}))).await;
    assert_invalid(empty, &["category_ids", "rating", "release_date", "title"], "create with {}").await;
    let everything = json!({
        "title": "", "storyline": "s".repeat(2001), "release_date": "2020-02-30", "rating": "8",
        "director": "d".repeat(201), "category_ids": [], "price": 1,
    });
    let create = app.post("/api/v1/movies", Some(&admin), Some(everything.clone())).await;
    let all = ["category_ids", "director", "price", "rating", "release_date", "storyline", "title"];
    assert_invalid(create, &all, "create with every field wrong").await;
    let patch = app.patch(&format!("/api/v1/movies/{movie}"), Some(&admin), everything).await;
    assert_invalid(patch, &all, "change with every field wrong").await;

    // No refusal changed anything.
    assert_eq!(app.events_of("movie", movie).await.len(), 1);
    let movies: i64 = sqlx::query_scalar("select count(*) from events where aggregate_type = 'movie'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(movies, 1);

    // The bounds are valid.
    let bounds = json!({
        "title": "t".repeat(200), "storyline": "s".repeat(2000), "release_date": "2020-02-29",
        "rating": 10, "director": "d".repeat(200), "category_ids": &categories[..5],
    });
    let created =
        expect_status(app.post("/api/v1/movies", Some(&admin), Some(bounds)).await, StatusCode::CREATED)
            .await;
    assert_eq!(created["rating"], 10.0);
    assert_eq!(created["categories"].as_array().unwrap().len(), 5);
    let minimal =
        json!({"title": "M", "release_date": "1931-05-11", "rating": 0, "category_ids": [categories[0]]});
    let created =
        expect_status(app.post("/api/v1/movies", Some(&admin), Some(minimal)).await, StatusCode::CREATED)
            .await;
    assert_eq!(created["storyline"], "");
    assert!(created["director"].is_null());
    assert_eq!(created["rating"], 0.0);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn changing_or_retiring_an_unknown_or_rented_movie_is_refused(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    let category = app.category("Crime").await;
    let movie = app.movie("Heat", &[category]).await;
    let unknown = uuid::Uuid::now_v7();

    // Act / Assert: a change must change something.
    for (case, content_type, body) in
        [("an empty object", Some("application/json"), "{}"), ("an empty body", None, "")]
    {
        let response = app
            .raw(reqwest::Method::PATCH, &format!("/api/v1/movies/{movie}"), Some(&admin), content_type, body)
            .await;
        assert_problem_in(response, 422, "validation-failed", case).await;
    }
    for path in [format!("/api/v1/movies/{unknown}"), "/api/v1/movies/not-a-uuid".to_string()] {
        let patch = app.patch(&path, Some(&admin), json!({"title": "Heat 2"})).await;
        assert_problem_in(patch, 404, "not-found", &format!("PATCH {path}")).await;
        let delete = app.delete(&path, Some(&admin)).await;
        assert_problem_in(delete, 404, "not-found", &format!("DELETE {path}")).await;
    }
    // The body is checked before the movie is looked up.
    let patch = app.patch(&format!("/api/v1/movies/{unknown}"), Some(&admin), json!({"rating": 11})).await;
    assert_invalid(patch, &["rating"], "PATCH unknown movie with a bad rating").await;
    let delete = app
        .raw(
            reqwest::Method::DELETE,
            &format!("/api/v1/movies/{unknown}"),
            Some(&admin),
            Some("application/json"),
            r#"{"force": true}"#,
        )
        .await;
    assert_invalid(delete, &["force"], "DELETE takes no fields").await;

    // A rented movie cannot be retired, but can be changed.
    let rental = app.rent(movie, &customer).await;
    let delete = app.delete(&format!("/api/v1/movies/{movie}"), Some(&admin)).await;
    assert_problem(delete, 409, "not-available").await;
    let patch = app.patch(&format!("/api/v1/movies/{movie}"), Some(&admin), json!({"rating": 8.3})).await;
    assert_eq!(expect_status(patch, StatusCode::OK).await["available"], false);
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&customer), None).await;
    expect_status(returned, StatusCode::OK).await;
    let delete = app.delete(&format!("/api/v1/movies/{movie}"), Some(&admin)).await;
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    let kinds: Vec<String> =
        app.events_of("movie", movie).await.into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds, ["MovieAdded", "MovieRented", "MovieUpdated", "MovieReturned", "MovieRetired"]);
}
