//! The conventions every endpoint follows: authentication, the order of checks, bodies, problem
//! documents, routes and request ids.

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

/// Every command endpoint (and `GET /me`) with a body it would accept.
fn command_endpoints() -> Vec<(Method, String, Option<Value>)> {
    let id = Uuid::now_v7();
    vec![
        (Method::GET, "/api/v1/me".into(), None),
        (Method::POST, "/api/v1/auth/logout".into(), None),
        (
            Method::POST,
            "/api/v1/me/password".into(),
            Some(json!({"current_password": "password-123", "new_password": "password-456"})),
        ),
        (Method::PATCH, format!("/api/v1/admin/users/{id}"), Some(json!({"role": "admin"}))),
        (Method::POST, "/api/v1/categories".into(), Some(json!({"name": "Comedy"}))),
        (Method::PATCH, format!("/api/v1/categories/{id}"), Some(json!({"name": "Comedy"}))),
        (Method::POST, "/api/v1/movies".into(), Some(movie_body("Heat", &[id]))),
        (Method::PATCH, format!("/api/v1/movies/{id}"), Some(json!({"title": "Heat"}))),
        (Method::DELETE, format!("/api/v1/movies/{id}"), None),
        (Method::POST, format!("/api/v1/movies/{id}/rent"), None),
        (Method::POST, format!("/api/v1/rentals/{id}/return"), None),
        (Method::POST, format!("/api/v1/rentals/{id}/pay"), Some(json!({"amount_cents": 100}))),
    ]
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_command_endpoint_answers_401_to_an_anonymous_caller_before_any_other_check(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (method, path, body) in command_endpoints() {
        let context = format!("anonymous {method} {path}");
        let response = app.request(method.clone(), &path, None, body).await;
        assert_problem_in(response, 401, "unauthorized", &context).await;

        // Neither a bad body nor a malformed id in the path comes before authentication.
        let response =
            app.raw(method.clone(), &path, None, Some("text/plain"), "not json at all".repeat(10_000)).await;
        assert_problem_in(response, 401, "unauthorized", &format!("{context} with a 150 kB text body")).await;
        let malformed_id: String = path
            .split('/')
            .map(|part| if Uuid::parse_str(part).is_ok() { "not-a-uuid" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        if malformed_id != path {
            let response = app.request(method.clone(), &malformed_id, None, None).await;
            assert_problem_in(response, 401, "unauthorized", &format!("anonymous {method} {malformed_id}"))
                .await;
        }
    }
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_missing_malformed_unknown_expired_or_logged_out_token_is_401_with_a_challenge(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (greg, token) = app.customer("greg").await;
    let (_, logged_out) = app.customer("maude").await;
    let logout = app.post("/api/v1/auth/logout", Some(&logged_out), None).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let (walter, expired) = app.customer("walter").await;
    sqlx::query("update tokens set expires_at = now() - interval '1 second' where user_id = $1")
        .bind(walter)
        .execute(&app.pool)
        .await
        .unwrap();
    let unknown = "x".repeat(43);
    let header = |value: String| Some(HeaderValue::from_str(&value).unwrap());
    let cases: Vec<(&str, Option<HeaderValue>)> = vec![
        ("no Authorization header", None),
        ("an empty header", header(String::new())),
        ("the scheme alone", header("Bearer".into())),
        ("the scheme and a space", header("Bearer ".into())),
        ("the token without a scheme", header(token.clone())),
        ("an unknown scheme", header(format!("Basic {token}"))),
        ("a token followed by junk", header(format!("Bearer {token} junk"))),
        ("non-ASCII bytes", Some(HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap())),
        ("an unknown token", header(format!("Bearer {unknown}"))),
        ("an over-long token", header(format!("Bearer {}", "a".repeat(5000)))),
        ("an expired token", header(format!("Bearer {expired}"))),
        ("a logged-out token", header(format!("Bearer {logged_out}"))),
        ("a logged-out token, Token scheme", header(format!("Token {logged_out}"))),
    ];

    for (case, authorization) in cases {
        // Act
        let me = app.with_authorization(Method::GET, "/api/v1/me", authorization.clone()).await;
        let command = app.with_authorization(Method::POST, "/api/v1/categories", authorization).await;

        // Assert
        assert_problem_in(me, 401, "unauthorized", &format!("GET /me with {case}")).await;
        assert_problem_in(command, 401, "unauthorized", &format!("POST /categories with {case}")).await;
    }
    // The valid token of the same account next to them still works.
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(uuid(&me["id"]), greg);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_body_over_64_kib_is_413_but_only_after_authentication_and_role(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    // A JSON object of exactly `size` bytes.
    let body_of = |size: usize| {
        let frame = r#"{"name":""}"#.len();
        format!(r#"{{"name":"{}"}}"#, "x".repeat(size - frame))
    };
    let too_large = body_of(64 * 1024 + 1);
    let at_limit = body_of(64 * 1024);
    assert_eq!((too_large.len(), at_limit.len()), (65_537, 65_536));
    let json = Some("application/json");

    // Act / Assert
    let anonymous = app.raw(Method::POST, "/api/v1/categories", None, json, too_large.clone()).await;
    assert_problem_in(anonymous, 401, "unauthorized", "anonymous").await;
    let wrong_role =
        app.raw(Method::POST, "/api/v1/categories", Some(&customer), json, too_large.clone()).await;
    assert_problem_in(wrong_role, 403, "forbidden", "customer").await;
    let too_large_for_admin =
        app.raw(Method::POST, "/api/v1/categories", Some(&admin), json, too_large.clone()).await;
    assert_problem_in(too_large_for_admin, 413, "payload-too-large", "admin, 65 537 bytes").await;
    // 64 KiB itself is read and judged on its content (the name is too long).
    let at_limit = app.raw(Method::POST, "/api/v1/categories", Some(&admin), json, at_limit).await;
    assert_invalid(at_limit, &["name"], "admin, 65 536 bytes").await;
    // Other endpoints that take a body, including an anonymous one, have the same limit.
    let register = app.raw(Method::POST, "/api/v1/auth/register", None, json, too_large.clone()).await;
    assert_problem_in(register, 413, "payload-too-large", "register").await;
    let movie = app.raw(Method::POST, "/api/v1/movies", Some(&admin), json, too_large.clone()).await;
    assert_problem_in(movie, 413, "payload-too-large", "movie").await;
    let not_json =
        app.raw(Method::POST, "/api/v1/categories", Some(&admin), Some("text/plain"), too_large).await;
    assert_problem_in(not_json, 413, "payload-too-large", "413 is judged before 415").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_body_that_is_not_json_is_415_on_every_endpoint_that_takes_one(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, customer) = app.customer("greg").await;
    let category = app.category("Comedy").await;
    let movie = app.movie("Airplane!", &[category]).await;
    let other_movie = app.movie("Top Secret!", &[category]).await;
    let rental = app.rent(movie, &customer).await;
    let admin_rent = json!({"customer_id": greg}).to_string();
    let endpoints: Vec<(Method, String, Option<&str>, String)> = vec![
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            None,
            json!({"username": "maude", "email": "maude@example.com", "password": "password-123"})
                .to_string(),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            None,
            json!({"username": "greg", "password": "password-123"}).to_string(),
        ),
        (
            Method::POST,
            "/api/v1/me/password".into(),
            Some(customer.as_str()),
            json!({"current_password": "password-123", "new_password": "password-456"}).to_string(),
        ),
        (
            Method::PATCH,
            format!("/api/v1/admin/users/{greg}"),
            Some(admin.as_str()),
            json!({"role": "admin"}).to_string(),
        ),
        (
            Method::POST,
            "/api/v1/categories".into(),
            Some(admin.as_str()),
            json!({"name": "Drama"}).to_string(),
        ),
        (
            Method::PATCH,
            format!("/api/v1/categories/{category}"),
            Some(admin.as_str()),
            json!({"name": "Drama"}).to_string(),
        ),
        (
            Method::POST,
            "/api/v1/movies".into(),
            Some(admin.as_str()),
            movie_body("Hot Shots!", &[category]).to_string(),
        ),
        (
            Method::PATCH,
            format!("/api/v1/movies/{movie}"),
            Some(admin.as_str()),
            json!({"title": "Airplane II"}).to_string(),
        ),
        (Method::DELETE, format!("/api/v1/movies/{other_movie}"), Some(admin.as_str()), "{}".into()),
        (Method::POST, format!("/api/v1/movies/{other_movie}/rent"), Some(customer.as_str()), "{}".into()),
        (Method::POST, format!("/api/v1/movies/{other_movie}/rent"), Some(admin.as_str()), admin_rent),
        (Method::POST, format!("/api/v1/rentals/{rental}/return"), Some(customer.as_str()), "{}".into()),
        (
            Method::POST,
            format!("/api/v1/rentals/{rental}/pay"),
            Some(customer.as_str()),
            json!({"amount_cents": 100}).to_string(),
        ),
    ];
    let wrong_types = [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        None,
    ];

    for (method, path, token, body) in &endpoints {
        for content_type in wrong_types {
            // Act
            let response = app.raw(method.clone(), path, *token, content_type, body.clone()).await;

            // Assert
            let context = format!("{method} {path} as {content_type:?}");
            assert_problem_in(response, 415, "unsupported-media-type", &context).await;
        }
        let form = app
            .raw(method.clone(), path, *token, Some("application/x-www-form-urlencoded"), "name=Drama&x=1")
            .await;
        assert_problem_in(form, 415, "unsupported-media-type", &format!("{method} {path} as a form")).await;
    }

    // Nothing was changed by any of them.
    assert_eq!(app.events_of("category", category).await.len(), 1);
    assert_eq!(app.events_of("movie", movie).await.len(), 2, "added and rented");
    assert_eq!(app.events_of("movie", other_movie).await.len(), 1, "added");
    app.login("greg", "password-123").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn json_that_is_malformed_or_not_an_object_is_422(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    let category = app.category("Comedy").await;
    let movie = app.movie("Airplane!", &[category]).await;
    let endpoints: Vec<(Method, String, Option<&str>)> = vec![
        (Method::POST, "/api/v1/auth/register".into(), None),
        (Method::POST, "/api/v1/auth/login".into(), None),
        (Method::POST, "/api/v1/me/password".into(), Some(customer.as_str())),
        (Method::POST, "/api/v1/categories".into(), Some(admin.as_str())),
        (Method::PATCH, format!("/api/v1/categories/{category}"), Some(admin.as_str())),
        (Method::POST, "/api/v1/movies".into(), Some(admin.as_str())),
        (Method::PATCH, format!("/api/v1/movies/{movie}"), Some(admin.as_str())),
        (Method::DELETE, format!("/api/v1/movies/{movie}"), Some(admin.as_str())),
        (Method::POST, format!("/api/v1/movies/{movie}/rent"), Some(customer.as_str())),
        (Method::POST, format!("/api/v1/movies/{movie}/rent"), Some(admin.as_str())),
    ];
    let bodies = [
        r#"{"name": "Drama""#,
        r#"{"name": "Drama",}"#,
        "{name: 'Drama'}",
        "not json",
        "[]",
        r#"[{"name": "Drama"}]"#,
        r#""Drama""#,
        "42",
        "true",
        "null",
    ];

    for (method, path, token) in &endpoints {
        for body in bodies {
            // Act
            let response =
                app.raw(method.clone(), path, *token, Some("application/json"), body.to_string()).await;

            // Assert
            let context = format!("{method} {path} with {body:?}");
            assert_problem_in(response, 422, "malformed-body", &context).await;
        }
        // A JSON media type with parameters is JSON all the same.
        let response =
            app.raw(method.clone(), path, *token, Some("application/json; charset=utf-8"), "[]").await;
        assert_problem_in(response, 422, "malformed-body", &format!("{method} {path} with a charset")).await;
    }
    // Nothing was changed by any of them.
    assert_eq!(app.events_of("category", category).await.len(), 1);
    assert_eq!(app.events_of("movie", movie).await.len(), 1);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_endpoint_that_needs_no_body_accepts_an_empty_one_without_a_content_type(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    let category = app.category("Comedy").await;
    let movie = app.movie("Airplane!", &[category]).await;

    for (case, content_type, body) in [
        ("no Content-Type and no bytes", None, ""),
        ("a JSON Content-Type and no bytes", Some("application/json"), ""),
        ("only whitespace", None, " \r\n\t"),
        ("an empty JSON object", Some("application/json"), "{}"),
    ] {
        // Act: rent and return
        let rent = app
            .raw(Method::POST, &format!("/api/v1/movies/{movie}/rent"), Some(&customer), content_type, body)
            .await;
        let rented = expect_status(rent, StatusCode::CREATED).await;
        let rental = uuid(&rented["rental_id"]);
        let returned = app
            .raw(
                Method::POST,
                &format!("/api/v1/rentals/{rental}/return"),
                Some(&customer),
                content_type,
                body,
            )
            .await;

        // Assert
        let returned = expect_status(returned, StatusCode::OK).await;
        assert_eq!(returned["status"], "returned", "{case}");
        let token = app.login("greg", "password-123").await;
        let logout = app.raw(Method::POST, "/api/v1/auth/logout", Some(&token), content_type, body).await;
        assert_eq!(logout.status(), StatusCode::NO_CONTENT, "{case}");
        assert_problem_in(app.get("/api/v1/me", Some(&token)).await, 401, "unauthorized", case).await;
    }

    let retire = app.raw(Method::DELETE, &format!("/api/v1/movies/{movie}"), Some(&admin), None, "").await;
    assert_eq!(retire.status(), StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn unknown_routes_and_methods_answer_with_problem_documents(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let id = Uuid::now_v7();
    for path in
        ["/", "/nope", "/api", "/api/v1", "/api/v1/nope", "/api/v2/categories", "/api/v1/movies/x/y/z"]
    {
        for token in [None, Some(admin.as_str())] {
            let response = app.get(path, token).await;
            assert_problem_in(response, 404, "not-found", &format!("GET {path}")).await;
            let response = app.post(path, token, Some(json!({}))).await;
            assert_problem_in(response, 404, "not-found", &format!("POST {path}")).await;
        }
    }
    for (method, path) in [
        (Method::PUT, format!("/api/v1/movies/{id}")),
        (Method::DELETE, format!("/api/v1/categories/{id}")),
        (Method::GET, format!("/api/v1/rentals/{id}/pay")),
        (Method::DELETE, "/api/v1/auth/register".to_string()),
    ] {
        let response = app.request(method.clone(), &path, Some(&admin), None).await;
        assert_problem_in(response, 405, "method-not-allowed", &format!("{method} {path}")).await;
    }
}

/// A request and the status it must get: (method, path, token, body, status).
type Case<'a> = (Method, &'a str, Option<&'a str>, Option<Value>, u16);

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_request_id_is_echoed_on_successes_and_on_every_kind_of_error(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (_, customer) = app.customer("greg").await;
    app.category("Comedy").await;
    let longest = "a.b_c-D9".repeat(8);
    assert_eq!(longest.len(), 64);
    let send = |method: Method, path: &str, token: Option<&str>, request_id: &str, body: Option<Value>| {
        let mut request = app.client.request(method, app.url(path)).header("x-request-id", request_id);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let cases: Vec<Case> = vec![
        (Method::GET, "/health", None, None, 200),
        (
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "greg", "password": "password-123"})),
            200,
        ),
        (Method::GET, "/api/v1/nope", None, None, 404),
        (Method::GET, "/api/v1/me", None, None, 401),
        (Method::POST, "/api/v1/categories", Some(&customer), Some(json!({"name": "Drama"})), 403),
        (Method::POST, "/api/v1/categories", Some(&admin), Some(json!({"name": ""})), 422),
        (Method::POST, "/api/v1/categories", Some(&admin), Some(json!({"name": "comedy"})), 409),
    ];
    for (method, path, token, body, status) in cases {
        for request_id in ["req-1", longest.as_str()] {
            let response = send(method.clone(), path, token, request_id, body.clone()).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{method} {path}");
            assert_eq!(response.headers()["x-request-id"], request_id, "{method} {path}");
        }
        // 65 characters is too long: a fresh id is generated instead.
        let too_long = format!("{longest}x");
        let response = send(method.clone(), path, token, &too_long, body.clone()).await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(Uuid::parse_str(&echoed).is_ok(), "{method} {path}: generated id {echoed}");
        if status >= 400 {
            let problem = expect_status(response, reqwest::StatusCode::from_u16(status).unwrap()).await;
            assert_eq!(problem["request_id"], echoed, "the problem names the request id");
        }
    }
}
