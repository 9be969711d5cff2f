//! Accounts over HTTP.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::support::*;

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_customer_registers_logs_in_sees_themself_and_logs_out(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (id, register_token) = app.customer("greg").await;

    let token = app.login("GREG", "password-123").await;
    assert_ne!(token, register_token);
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(uuid(&me["id"]), id);
    assert_eq!(me["username"], "greg");
    assert_eq!(me["role"], "customer");

    let logout = app.post("/api/v1/auth/logout", Some(&token), None).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/api/v1/me", Some(&token)).await, 401, "unauthorized").await;
    // The other token still works.
    expect_status(app.get("/api/v1/me", Some(&register_token)).await, StatusCode::OK).await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_token_scheme_is_accepted_as_well_as_bearer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (_, token) = app.customer("greg").await;
    let response = app
        .client
        .get(app.url("/api/v1/me"))
        .header("authorization", format!("Token {token}"))
        .send()
        .await
        .unwrap();
    expect_status(response, StatusCode::OK).await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn unknown_user_and_wrong_password_get_the_same_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.customer("greg").await;
    let wrong = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "greg", "password": "nope-nope"})))
        .await;
    let unknown = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "nobody", "password": "nope-nope"})))
        .await;
    let mut wrong = assert_problem(wrong, 401, "unauthorized").await;
    let mut unknown = assert_problem(unknown, 401, "unauthorized").await;
    wrong.as_object_mut().unwrap().remove("request_id");
    unknown.as_object_mut().unwrap().remove("request_id");
    assert_eq!(wrong, unknown);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn the_eleventh_failed_login_within_the_window_is_throttled(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.customer("greg").await;
    let bad = json!({"username": "greg", "password": "wrong-password"});
    for attempt in 1..=10 {
        let response = app.post("/api/v1/auth/login", None, Some(bad.clone())).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let throttled = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "GREG", "password": "password-123"})))
        .await;
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "retry-after {retry_after}");
    assert_problem(throttled, 429, "rate-limited").await;
    // Another username from the same address is not affected.
    app.customer("maude").await;
    app.login("maude", "password-123").await;
}
