//! Accounts over HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

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

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn registration_names_every_invalid_missing_or_unknown_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let valid = json!({"username": "greg", "email": "greg@example.com", "password": "password-123"});
    let with = |changes: Value| {
        let mut body = valid.clone();
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("username of 2 characters", with(json!({"username": "ab"})), &["username"]),
        ("username of 151 characters", with(json!({"username": "a".repeat(151)})), &["username"]),
        ("empty username", with(json!({"username": ""})), &["username"]),
        ("username with a space", with(json!({"username": "greg lebowski"})), &["username"]),
        ("username with a semicolon", with(json!({"username": "greg;drop"})), &["username"]),
        ("username with a slash", with(json!({"username": "greg/x"})), &["username"]),
        ("username with an apostrophe", with(json!({"username": "o'brien"})), &["username"]),
        ("username that is a number", with(json!({"username": 12345})), &["username"]),
        ("email without @", with(json!({"email": "greg.example.com"})), &["email"]),
        ("email without a domain dot", with(json!({"email": "greg@example"})), &["email"]),
        ("email with a space", with(json!({"email": "greg @example.com"})), &["email"]),
        ("email with two @", with(json!({"email": "greg@x@example.com"})), &["email"]),
        ("empty email", with(json!({"email": ""})), &["email"]),
        ("email that is a list", with(json!({"email": ["greg@example.com"]})), &["email"]),
        ("password of 7 characters", with(json!({"password": "1234567"})), &["password"]),
        ("password of 129 characters", with(json!({"password": "p".repeat(129)})), &["password"]),
        ("password that is a number", with(json!({"password": 12345678})), &["password"]),
        ("missing email", with(json!({"email": null})), &["email"]),
        ("null email", json!({"username": "greg", "email": null, "password": "password-123"}), &["email"]),
        ("missing password", with(json!({"password": null})), &["password"]),
        ("missing username", with(json!({"username": null})), &["username"]),
        ("nothing at all", json!({}), &["email", "password", "username"]),
        ("a role of one's choosing", with(json!({"role": "admin"})), &["role"]),
        ("an unknown field", with(json!({"nickname": "The Dude"})), &["nickname"]),
        (
            "everything wrong at once",
            json!({"username": "a b", "email": "nope", "password": "short", "is_admin": true}),
            &["email", "is_admin", "password", "username"],
        ),
    ];

    for (case, body, fields) in cases {
        let response = app.post("/api/v1/auth/register", None, Some(body)).await;
        assert_invalid(response, fields, case).await;
    }
    // None of them made an account.
    let accounts: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(accounts, 1, "only the bootstrap admin");

    // The bounds themselves are valid.
    let longest = "a".repeat(150);
    for (username, password) in [
        ("abc", "p".repeat(8)),
        (longest.as_str(), "p".repeat(128)),
        ("Émile", "password-123".to_string()),
        ("x.y@z+w-v_u", "password-123".to_string()),
    ] {
        let email = format!("{}@example.com", email_local_part(username));
        let body = json!({"username": username, "email": email, "password": password});
        let response = app.post("/api/v1/auth/register", None, Some(body)).await;
        let created = expect_status(response, StatusCode::CREATED).await;
        assert_eq!(created["user"]["username"], username);
        assert_eq!(created["user"]["email"], email);
        assert_eq!(created["user"]["role"], "customer");
        assert!(created["token"].as_str().is_some_and(|t| !t.is_empty()));
        app.login(username, &password).await;
    }
}

/// A local part for an email made from a username (which may hold `@`).
fn email_local_part(username: &str) -> String {
    username.chars().filter(char::is_ascii_alphanumeric).take(60).collect()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn usernames_and_emails_are_unique_whatever_their_case(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let register = |username: &str, email: &str| {
        app.post(
            "/api/v1/auth/register",
            None,
            Some(json!({"username": username, "email": email, "password": "password-123"})),
        )
    };
    expect_status(register("Greg", "Greg@Example.com").await, StatusCode::CREATED).await;

    // Act / Assert
    for username in ["Greg", "greg", "GREG", "gReG"] {
        let response = register(username, "other@example.com").await;
        assert_problem_in(response, 409, "username-taken", username).await;
    }
    for email in ["Greg@Example.com", "greg@example.com", "GREG@EXAMPLE.COM"] {
        let response = register("maude", email).await;
        assert_problem_in(response, 409, "email-taken", email).await;
    }
    // The bootstrap admin's username is taken too.
    let response = register("ADMIN", "admin@example.com").await;
    assert_problem(response, 409, "username-taken").await;
    // Field validation comes first: an invalid body is 422 even when the username is taken.
    let response = register("greg", "not-an-email").await;
    assert_invalid(response, &["email"], "taken username, bad email").await;

    let accounts: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(accounts, 2, "the admin and Greg");
    app.login("GREG", "password-123").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn login_names_missing_and_invalid_fields(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.customer("greg").await;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("nothing", json!({}), &["password", "username"]),
        ("no password", json!({"username": "greg"}), &["password"]),
        ("no username", json!({"password": "password-123"}), &["username"]),
        ("null password", json!({"username": "greg", "password": null}), &["password"]),
        ("numbers", json!({"username": 1, "password": 2}), &["password", "username"]),
        (
            "an unknown field",
            json!({"username": "greg", "password": "password-123", "remember_me": true}),
            &["remember_me"],
        ),
    ];
    for (case, body, fields) in cases {
        let response = app.post("/api/v1/auth/login", None, Some(body)).await;
        assert_invalid(response, fields, case).await;
    }
    let empty = app.raw(reqwest::Method::POST, "/api/v1/auth/login", None, None, "").await;
    assert_invalid(empty, &["password", "username"], "an empty body").await;
    // None of them counted as a failed login, and the account is fine.
    app.login("greg", "password-123").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_password_change_checks_the_current_one_and_revokes_every_other_token(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let (_, registered) = app.customer("greg").await;
    let used = app.login("greg", "password-123").await;
    let other = app.login("greg", "password-123").await;
    let (_, maude) = app.customer("maude").await;
    let change = |body: Value| app.post("/api/v1/me/password", Some(&used), Some(body));

    // Act / Assert: refusals change nothing.
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("nothing", json!({}), &["current_password", "new_password"]),
        ("no new password", json!({"current_password": "password-123"}), &["new_password"]),
        ("no current password", json!({"new_password": "password-456"}), &["current_password"]),
        (
            "wrong current password",
            json!({"current_password": "password-999", "new_password": "password-456"}),
            &["current_password"],
        ),
        (
            "new password too short",
            json!({"current_password": "password-123", "new_password": "short"}),
            &["new_password"],
        ),
        (
            "new password too long",
            json!({"current_password": "password-123", "new_password": "p".repeat(129)}),
            &["new_password"],
        ),
        (
            // The new password is validated first: the answer says nothing of the current one.
            "wrong current password and a new one too short",
            json!({"current_password": "password-999", "new_password": "short"}),
            &["new_password"],
        ),
        (
            "wrong types",
            json!({"current_password": 123, "new_password": ["password-456"]}),
            &["current_password", "new_password"],
        ),
        (
            "an unknown field",
            json!({"current_password": "password-123", "new_password": "password-456", "confirm": "x"}),
            &["confirm"],
        ),
    ];
    for (case, body, fields) in cases {
        assert_invalid(change(body).await, fields, case).await;
    }
    for token in [&registered, &used, &other] {
        expect_status(app.get("/api/v1/me", Some(token)).await, StatusCode::OK).await;
    }

    // Act: the change itself.
    let changed = change(json!({"current_password": "password-123", "new_password": "password-456"})).await;

    // Assert
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/api/v1/me", Some(&registered)).await, 401, "unauthorized").await;
    assert_problem(app.get("/api/v1/me", Some(&other)).await, 401, "unauthorized").await;
    let me = expect_status(app.get("/api/v1/me", Some(&used)).await, StatusCode::OK).await;
    assert_eq!(me["username"], "greg");
    // Another account's tokens are untouched.
    expect_status(app.get("/api/v1/me", Some(&maude)).await, StatusCode::OK).await;
    let old = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "greg", "password": "password-123"})))
        .await;
    assert_problem(old, 401, "unauthorized").await;
    let fresh = app.login("greg", "password-456").await;
    expect_status(app.get("/api/v1/me", Some(&fresh)).await, StatusCode::OK).await;
    // The token used for the change keeps working for commands too.
    let again = change(json!({"current_password": "password-456", "new_password": "password-789"})).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/api/v1/me", Some(&fresh)).await, 401, "unauthorized").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_admin_changes_a_role_and_it_applies_at_once(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let (greg, greg_token) = app.customer("greg").await;
    let category = app.category("Comedy").await;
    let movie = app.movie("Airplane!", &[category]).await;
    let unknown = uuid::Uuid::now_v7();
    let path = |id: &dyn std::fmt::Display| format!("/api/v1/admin/users/{id}");

    // Act / Assert: refusals
    let invalid: Vec<(&str, Value, &[&str])> = vec![
        ("a role that does not exist", json!({"role": "superuser"}), &["role"]),
        ("a role in capitals", json!({"role": "Admin"}), &["role"]),
        ("an empty role", json!({"role": ""}), &["role"]),
        ("a role that is a number", json!({"role": 1}), &["role"]),
        ("no role", json!({}), &["role"]),
        ("a null role", json!({"role": null}), &["role"]),
        ("an unknown field", json!({"role": "admin", "username": "dude"}), &["username"]),
    ];
    for (case, body, fields) in invalid {
        assert_invalid(app.patch(&path(&greg), Some(&admin), body.clone()).await, fields, case).await;
        // The body is checked before the account is looked up.
        let context = format!("{case}, unknown account");
        assert_invalid(app.patch(&path(&unknown), Some(&admin), body).await, fields, &context).await;
    }
    for id in [unknown.to_string(), "not-a-uuid".to_string(), "1".to_string()] {
        let response = app.patch(&path(&id), Some(&admin), json!({"role": "admin"})).await;
        assert_problem_in(response, 404, "not-found", &id).await;
    }
    let me = expect_status(app.get("/api/v1/me", Some(&greg_token)).await, StatusCode::OK).await;
    assert_eq!(me["role"], "customer");

    // Act: promote greg to admin.
    let promoted =
        expect_status(app.patch(&path(&greg), Some(&admin), json!({"role": "admin"})).await, StatusCode::OK)
            .await;

    // Assert: a `User`, and greg's existing token now acts as an admin.
    let mut keys: Vec<&str> = promoted.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "email", "id", "role", "username"]);
    assert_eq!(uuid(&promoted["id"]), greg);
    assert_eq!(promoted["username"], "greg");
    assert_eq!(promoted["email"], "greg@example.com");
    assert_eq!(promoted["role"], "admin");
    let created = app.post("/api/v1/categories", Some(&greg_token), Some(json!({"name": "Drama"}))).await;
    expect_status(created, StatusCode::CREATED).await;

    // An auditor may not rent; demoted back to customer, greg may.
    let demoted = expect_status(
        app.patch(&path(&greg), Some(&admin), json!({"role": "auditor"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(demoted["role"], "auditor");
    let rent = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&greg_token), None).await;
    assert_problem(rent, 403, "forbidden").await;
    let created = app.post("/api/v1/categories", Some(&greg_token), Some(json!({"name": "Noir"}))).await;
    assert_problem(created, 403, "forbidden").await;
    let analyst = expect_status(
        app.patch(&path(&greg), Some(&admin), json!({"role": "analyst"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(analyst["role"], "analyst");
    let rent = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&greg_token), None).await;
    assert_problem(rent, 403, "forbidden").await;
    let customer = expect_status(
        app.patch(&path(&greg), Some(&admin), json!({"role": "customer"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(customer["role"], "customer");
    app.rent(movie, &greg_token).await;
}

/// Sends `n` wrong logins for `username` at once, spread over `bases`; tallies the answers.
async fn login_burst(
    app: &TestApp,
    bases: &[String],
    username: &str,
    n: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let requests = (0..n).map(|i| {
        let url = format!("{}/api/v1/auth/login", bases[i % bases.len()]);
        let body = json!({"username": username, "password": format!("wrong-password-{i}")});
        let client = app.client.clone();
        async move { client.post(url).json(&body).send().await.expect("login answered").status().as_u16() }
    });
    let mut tally = std::collections::BTreeMap::new();
    for status in futures::future::join_all(requests).await {
        *tally.entry(status).or_insert(0) += 1;
    }
    tally
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn of_200_simultaneous_wrong_logins_at_most_10_are_checked_and_then_even_the_right_password_waits(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.customer("burst").await;
    let tally = login_burst(&app, std::slice::from_ref(&app.address), "burst", 200).await;
    let (unauthorized, throttled) =
        (tally.get(&401).copied().unwrap_or(0), tally.get(&429).copied().unwrap_or(0));
    assert_eq!(unauthorized + throttled, 200, "only 401 and 429: {tally:?}");
    assert!(unauthorized <= 10, "at most 10 attempts checked: {tally:?}");
    assert!(unauthorized >= 1, "the burst was checked at all: {tally:?}");
    let right = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "burst", "password": "password-123"})))
        .await;
    assert_problem(right, 429, "rate-limited").await;
    println!(
        "200 simultaneous wrong logins: {unauthorized} × 401, {throttled} × 429; the right password then 429"
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_login_burst_split_over_two_processes_is_throttled_as_one(pool: PgPool) {
    let prefix = format!("test-{}:", uuid::Uuid::now_v7());
    let app = TestApp::spawn_with(
        pool,
        Options { extra_env: vec![("MOVIESTORE_REDIS_PREFIX".into(), prefix.clone())] },
    )
    .await;
    let database_url = app.database_url.clone();
    let peer = tokio::task::spawn_blocking(move || crate::resilience::Peer::start(&database_url, &prefix))
        .await
        .unwrap();
    app.customer("split").await;
    let bases = [app.address.clone(), peer.address.clone()];
    let tally = login_burst(&app, &bases, "split", 200).await;
    let (unauthorized, throttled) =
        (tally.get(&401).copied().unwrap_or(0), tally.get(&429).copied().unwrap_or(0));
    assert_eq!(unauthorized + throttled, 200, "only 401 and 429: {tally:?}");
    assert!((1..=10).contains(&unauthorized), "at most 10 attempts checked across both processes: {tally:?}");
    for base in &bases {
        let right = app
            .client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": "split", "password": "password-123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS, "the right password at {base}");
    }
    println!("200 wrong logins over two processes: {unauthorized} × 401, {throttled} × 429");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_password_change_is_no_oracle_for_the_current_password_and_counts_in_the_login_throttle(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let (_, token) = app.customer("oracle").await;
    // An invalid new password: the same answer whether the current one is right or wrong.
    let mut answers = Vec::new();
    for current in ["password-123", "password-999"] {
        let response = app
            .post(
                "/api/v1/me/password",
                Some(&token),
                Some(json!({"current_password": current, "new_password": "short"})),
            )
            .await;
        let mut problem = assert_invalid(response, &["new_password"], current).await;
        problem.as_object_mut().unwrap().remove("request_id");
        answers.push(problem);
    }
    assert_eq!(answers[0], answers[1], "an invalid new password tells nothing of the current one");
    // Ten wrong current passwords are ten failed logins; then even the right one waits.
    for attempt in 1..=10 {
        let response = app
            .post(
                "/api/v1/me/password",
                Some(&token),
                Some(
                    json!({"current_password": format!("guess-{attempt}-x"), "new_password": "password-456"}),
                ),
            )
            .await;
        assert_invalid(response, &["current_password"], &format!("guess {attempt}")).await;
    }
    let right = app
        .post(
            "/api/v1/me/password",
            Some(&token),
            Some(json!({"current_password": "password-123", "new_password": "password-456"})),
        )
        .await;
    assert_problem(right, 429, "rate-limited").await;
    let login = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "oracle", "password": "password-123"})))
        .await;
    assert_problem(login, 429, "rate-limited").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn role_changes_never_leave_no_admin_nor_a_customer_without_email_and_erased_accounts_rent_nothing(
    pool: PgPool,
) {
    // Arrange: the bootstrap admin, a second admin, a staff account made without email, a
    // customer who is then erased, and a movie.
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let admin_id = app.user_id(ADMIN_USERNAME).await;
    let (second_id, _) = app.staff("second.admin", "admin").await;
    let (ok, _, stderr) =
        run_cli(&app.database_url, &["create-user", "--role", "auditor", "audrey"], "auditor-password-1\n")
            .await;
    assert!(ok, "create-user failed: {stderr}");
    let audrey = app.user_id("audrey").await;
    let (erased, _) = app.customer("ilsa").await;
    let (ok, _, stderr) = run_cli(&app.database_url, &["erase-user", "ilsa"], "").await;
    assert!(ok, "erase-user failed: {stderr}");
    let drama = app.category("Drama").await;
    let movie = app.movie("Heat", &[drama]).await;
    let path = |id: Uuid| format!("/api/v1/admin/users/{id}");

    // Act and assert: demoting one of two admins works, the last one cannot be demoted, by
    // anyone, to any role.
    let demoted = app.patch(&path(second_id), Some(&admin), json!({"role": "analyst"})).await;
    assert_eq!(expect_status(demoted, StatusCode::OK).await["role"], "analyst");
    for role in ["auditor", "analyst"] {
        let refused = app.patch(&path(admin_id), Some(&admin), json!({"role": role})).await;
        assert_problem(refused, 409, "last-admin").await;
    }
    // The bootstrap admin has no email: as a customer it is refused for that first (the body
    // before the state).
    let refused = app.patch(&path(admin_id), Some(&admin), json!({"role": "customer"})).await;
    assert_invalid(refused, &["role"], "admin without email → customer").await;
    let promoted = app.patch(&path(second_id), Some(&admin), json!({"role": "admin"})).await;
    expect_status(promoted, StatusCode::OK).await;
    let second = app.login("second.admin", "password-123").await;
    // Two admins demoting each other at once: one change wins, one admin is left.
    let (second_path, admin_path) = (path(second_id), path(admin_id));
    let (a, b) = tokio::join!(
        app.patch(&second_path, Some(&admin), json!({"role": "auditor"})),
        app.patch(&admin_path, Some(&second), json!({"role": "auditor"})),
    );
    // The loser is refused as the last admin (409) or, when the winner committed before its
    // token was checked, as no longer an admin (403).
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert!(statuses == [200, 409] || statuses == [200, 403], "simultaneous demotions: {statuses:?}");
    let admins: i64 = sqlx::query_scalar("select count(*) from users where role = 'admin'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    // The one left is the one whose demotion was refused.
    let admin = if a.status() == StatusCode::OK { admin } else { second };
    // An account without email cannot be made a customer; the account is unchanged.
    let refused = app.patch(&path(audrey), Some(&admin), json!({"role": "customer"})).await;
    assert_invalid(refused, &["role"], "auditor without email → customer").await;
    let role: String = sqlx::query_scalar("select role from users where user_id = $1")
        .bind(audrey)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(role, "auditor");
    // An admin cannot rent for an erased or an unknown account.
    for (customer, what) in [(erased, "erased"), (Uuid::now_v7(), "unknown")] {
        let rent = app
            .post(
                &format!("/api/v1/movies/{movie}/rent"),
                Some(&admin),
                Some(json!({"customer_id": customer})),
            )
            .await;
        assert_invalid(rent, &["customer_id"], what).await;
    }
    let rentals: i64 = sqlx::query_scalar("select count(*) from events where event_type = 'RentalOpened'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rentals, 0, "no rental was opened");
    println!("role invariants: last admin 2 × 409, simultaneous demotions 200 + {} (1 admin left), no-email customer 422, rent for erased/unknown 2 × 422", statuses[1]);
}

/// Sends a login from `forwarded_for` (as a proxy would say it); the answer's status.
async fn login_from(app: &TestApp, forwarded_for: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": "greg", "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn behind_a_trusted_proxy_logins_are_throttled_per_forwarded_client_and_ipv6_per_64(pool: PgPool) {
    // Arrange: the test client stands for the proxy (127.0.0.1 is trusted).
    let options =
        Options { extra_env: vec![("MOVIESTORE_TRUSTED_PROXIES".into(), "127.0.0.1/32, 10.0.0.0/8".into())] };
    let app = TestApp::spawn_with(pool.clone(), options).await;
    app.customer("greg").await;

    // Act and assert: 10 failures from one client lock that client only, through a chain of
    // trusted hops, whatever it claims left of them.
    for i in 0..10 {
        let status = login_from(&app, &format!("6.6.6.{i}, 198.51.100.1, 10.1.1.1"), "wrong-password").await;
        assert_eq!(status, 401, "attempt {i}");
    }
    assert_eq!(login_from(&app, "198.51.100.1", "password-123").await, 429, "that client is locked");
    assert_eq!(login_from(&app, "198.51.100.2", "password-123").await, 200, "another client is not");
    // IPv6: 10 failures from 10 addresses of one /64 lock the whole /64, not the next one.
    for i in 1..=10 {
        assert_eq!(login_from(&app, &format!("2001:db8:1:2::{i:x}"), "wrong-password").await, 401);
    }
    assert_eq!(login_from(&app, "2001:db8:1:2:ffff:ffff:ffff:ffff", "password-123").await, 429);
    assert_eq!(login_from(&app, "2001:db8:1:3::1", "password-123").await, 200);
    let keys: Vec<String> = sqlx::query_scalar("select distinct client_addr from login_failures order by 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, ["198.51.100.1", "2001:db8:1:2::/64"]);
    println!("trusted proxy: 10 failures each from 198.51.100.1 and one IPv6 /64 → those 429, neighbours 200; keys {keys:?}");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn without_trusted_proxies_a_forged_forwarded_for_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.customer("greg").await;
    for i in 0..10 {
        assert_eq!(login_from(&app, &format!("198.51.100.{i}"), "wrong-password").await, 401, "attempt {i}");
    }
    assert_eq!(login_from(&app, "198.51.100.200", "password-123").await, 429, "the peer is still the key");
    let keys: Vec<String> =
        sqlx::query_scalar("select distinct client_addr from login_failures").fetch_all(&pool).await.unwrap();
    assert_eq!(keys, ["127.0.0.1"]);
}
