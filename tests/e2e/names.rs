//! Names compare alike everywhere: usernames, emails and category names are one name whatever
//! their case and Unicode form (NFKC and full case folding, computed by the application).

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::migrate::Migrate;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::*;

async fn register(app: &TestApp, username: &str, email: &str) -> reqwest::Response {
    let body = json!({"username": username, "email": email, "password": "password-123"});
    app.post("/api/v1/auth/register", None, Some(body)).await
}

async fn login_status(app: &TestApp, username: &str) -> StatusCode {
    let body = json!({"username": username, "password": "password-123"});
    app.post("/api/v1/auth/login", None, Some(body)).await.status()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_greek_name_in_capitals_registers_and_signs_in_in_any_case(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let created = expect_status(register(&app, "ΝΙΚΟΣ", "nikos@example.gr").await, StatusCode::CREATED).await;
    assert_eq!(created["user"]["username"], "ΝΙΚΟΣ", "the name is kept as entered");

    // Act / Assert: the final sigma (`ς`) and the other (`σ`) are one letter, as are the capitals.
    for spelling in ["ΝΙΚΟΣ", "νικος", "νικοσ", "Νικος"] {
        let token = app.login(spelling, "password-123").await;
        let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
        assert_eq!(uuid(&me["id"]), uuid(&created["user"]["id"]), "{spelling}");
        assert_eq!(me["username"], "ΝΙΚΟΣ");
    }
    for spelling in ["νικοσ", "νικος", "ΝΙΚΟΣ"] {
        let taken = register(&app, spelling, &format!("{}@example.gr", Uuid::now_v7().simple())).await;
        assert_problem_in(taken, 409, "username-taken", spelling).await;
    }
    let accounts: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(accounts, 2, "the admin and ΝΙΚΟΣ");
    println!("ΝΙΚΟΣ: 4 spellings signed in to one account, 3 registrations refused with 409");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn usernames_alike_in_case_or_unicode_form_are_one_username(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let precomposed = "\u{c9}mile";
    let decomposed = "E\u{301}mile";
    expect_status(register(&app, precomposed, "emile@example.fr").await, StatusCode::CREATED).await;
    expect_status(register(&app, "Straße", "strasse@example.de").await, StatusCode::CREATED).await;
    expect_status(register(&app, "ＧＲＥＧ", "greg@example.com").await, StatusCode::CREATED).await;

    // Act / Assert
    for (spelling, of) in [
        ("émile", "Émile"),
        ("ÉMILE", "Émile"),
        (decomposed, "Émile"),
        ("e\u{301}mile", "Émile"),
        ("STRASSE", "Straße"),
        ("strasse", "Straße"),
        ("greg", "ＧＲＥＧ"),
        ("ｇｒｅｇ", "ＧＲＥＧ"),
    ] {
        let taken = register(&app, spelling, &format!("{}@example.com", Uuid::now_v7().simple())).await;
        assert_problem_in(taken, 409, "username-taken", &format!("{spelling:?} after {of:?}")).await;
        assert_eq!(login_status(&app, spelling).await, StatusCode::OK, "sign in as {spelling:?} for {of:?}");
    }
    // A name that only looks close is another name.
    expect_status(register(&app, "Emile", "plain-emile@example.fr").await, StatusCode::CREATED).await;
    let accounts: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(accounts, 5, "the admin, Émile, Straße, ＧＲＥＧ and Emile");

    // A name registered decomposed signs in composed, and keeps its spelling.
    let created =
        expect_status(register(&app, "Zoe\u{308}", "zoe@example.com").await, StatusCode::CREATED).await;
    assert_eq!(created["user"]["username"], "Zoe\u{308}");
    assert_eq!(login_status(&app, "ZOË").await, StatusCode::OK);
    println!(
        "usernames: 8 other spellings of 3 names refused with 409 and signed in with 200; 2 accounts more"
    );
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn emails_alike_in_case_or_unicode_form_are_one_email(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let nikos = expect_status(register(&app, "nikos", "ΝΙΚΟΣ@example.gr").await, StatusCode::CREATED).await;
    expect_status(register(&app, "emile", "\u{c9}mile@example.fr").await, StatusCode::CREATED).await;
    expect_status(register(&app, "bob", "ｂｏｂ@example.com").await, StatusCode::CREATED).await;

    // Act / Assert
    for (n, email) in [
        "νικος@EXAMPLE.GR",
        "νικοσ@example.gr",
        "e\u{301}mile@example.fr",
        "ÉMILE@example.fr",
        "BOB@example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let taken = register(&app, &format!("someone{n}"), email).await;
        assert_problem_in(taken, 409, "email-taken", email).await;
    }
    // A reset asked for with another spelling of the address reaches the account.
    let reset =
        app.post("/api/v1/auth/password-reset", None, Some(json!({"email": "νικος@Example.GR"}))).await;
    assert_eq!(reset.status(), StatusCode::ACCEPTED);
    let resets: i64 = sqlx::query_scalar("select count(*) from password_resets where user_id = $1")
        .bind(uuid(&nikos["user"]["id"]))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(resets, 1, "one reset token stored for nikos");
    println!("emails: 5 other spellings of 3 addresses refused with 409; a reset by another spelling reached the account");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn category_names_alike_in_case_or_unicode_form_are_one_name(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    let admin = app.admin().await;
    let drama = app.category("Drama").await;
    let noir = app.category("Νουάρ").await;
    let comedy = app.category("Comedy").await;

    // Act / Assert
    for taken in ["DRAMA", "ｄｒａｍａ", "ＤＲＡＭＡ", "νουάρ", "ΝΟΥΆΡ", "Νου\u{3b1}\u{301}ρ"]
    {
        let create = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": taken}))).await;
        assert_problem_in(create, 409, "name-taken", &format!("create {taken:?}")).await;
        let rename =
            app.patch(&format!("/api/v1/categories/{comedy}"), Some(&admin), json!({"name": taken})).await;
        assert_problem_in(rename, 409, "name-taken", &format!("rename to {taken:?}")).await;
    }
    assert_eq!(app.events_of("category", comedy).await.len(), 1, "no refusal changed Comedy");

    // The listing's category filter takes any spelling of the name.
    let created = app.post("/api/v1/movies", Some(&admin), Some(movie_body("Fargo", &[drama, noir]))).await;
    let position = expect_status(created, StatusCode::CREATED).await["position"].as_i64().unwrap();
    for spelling in ["ｄｒａｍａ", "DRAMA", "ΝΟΥΑ\u{301}Ρ"] {
        let path = format!("/api/v1/movies?category={spelling}&min_position={position}");
        let page = expect_status(app.get(&path, Some(&admin)).await, StatusCode::OK).await;
        let titles: Vec<&Value> = page["items"].as_array().unwrap().iter().map(|m| &m["title"]).collect();
        assert_eq!(titles, [&json!("Fargo")], "category={spelling}");
    }
    println!("categories: 6 other spellings of 2 names refused with 409 on create and on rename; 3 found the movie");
}

/// The migration that added the keys: the version of the first one after it.
const NAME_KEYS_MIGRATION: i64 = 20261203000030;

#[sqlx::test(migrations = false)]
async fn names_stored_before_keys_get_them_and_collisions_are_reported(pool: PgPool) {
    // Arrange: the schema as it was before keys, with names the old lower() indexes let in twice.
    let mut conn = pool.acquire().await.unwrap();
    conn.ensure_migrations_table().await.unwrap();
    for migration in api::MIGRATOR.iter().filter(|m| m.version < NAME_KEYS_MIGRATION) {
        conn.apply(migration).await.unwrap();
    }
    drop(conn);
    let params = api::config::Argon2Params { memory_kib: 512, iterations: 1, parallelism: 1 };
    let hash =
        api::accounts::Passwords::new(params, 1).hash(String::from("password-123").into()).await.unwrap();
    let (capitals, small, first_bob, second_bob) =
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (id, username, email, age) in [
        // ΝΙΚΟΣ came first, but could never sign in: lower() gave νικοσ, the login looked for νικος.
        (capitals, "ΝΙΚΟΣ", "nikos@example.gr", 4),
        (small, "νικος", "nikos2@example.gr", 3),
        (first_bob, "bob", "Bob@Example.com", 2),
        (second_bob, "robert", "ｂｏｂ@example.com", 1),
    ] {
        sqlx::query(
            "insert into users (user_id, username, email, password_hash, role, created_at)
             values ($1, $2, $3, $4, 'customer', now() - make_interval(days => $5))",
        )
        .bind(id)
        .bind(username)
        .bind(email)
        .bind(&hash)
        .bind(age)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (drama, fullwidth) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, name) in [(drama, "Drama"), (fullwidth, "ｄｒａｍａ")] {
        sqlx::query("insert into category_lookup (category_id, name) values ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("insert into read.category (category_id, name, revision) values ($1, $2, 1)")
            .bind(id)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    }
    api::MIGRATOR.run(&pool).await.expect("the remaining migrations run on the old rows");

    // Act: a start migrates, which computes the keys.
    let log_path = scratch_dir("names").join("stderr.log");
    let options = Options { extra_env: vec![("RUST_LOG".into(), "warn".into())] };
    let app = TestApp::spawn_with_stderr(pool, options, std::fs::File::create(&log_path).unwrap()).await;

    // Assert: every row is still there; one of each pair keeps the key.
    let users: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "select user_id, username, username_key, email_key from users where role = 'customer'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let keys = |id: Uuid| users.iter().find(|u| u.0 == id).map(|u| (u.2.as_deref(), u.3.as_deref())).unwrap();
    assert_eq!(users.len(), 4, "no account lost");
    assert_eq!(keys(small), (Some("νικοσ"), Some("nikos2@example.gr")), "the account that could sign in");
    assert_eq!(keys(capitals), (None, Some("nikos@example.gr")));
    assert_eq!(keys(first_bob), (Some("bob"), Some("bob@example.com")), "the older of two alike emails");
    assert_eq!(keys(second_bob), (Some("robert"), None));
    let categories: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("select category_id, name_key from category_lookup order by category_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(categories, [(drama, Some("drama".to_string())), (fullwidth, None)]);
    let read_keys: Vec<Option<String>> =
        sqlx::query_scalar("select name_key from read.category order by category_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(read_keys, [Some("drama".to_string()), Some("drama".to_string())]);
    let version: String =
        sqlx::query_scalar("select version from name_key_version").fetch_one(&app.pool).await.unwrap();
    assert_eq!(version, domain::name_key::version());

    // The warnings name both rows of each pair.
    let log = std::fs::read_to_string(&log_path).unwrap();
    for (kept, left) in [(small, capitals), (first_bob, second_bob), (drama, fullwidth)] {
        assert!(
            log.lines().any(|line| line.contains(&kept.to_string()) && line.contains(&left.to_string())),
            "no warning names {kept} and {left}:\n{log}"
        );
    }

    // Signing in works by the name that kept its key, in any case; the name is not free again.
    assert_eq!(login_status(&app, "ΝΙΚΟΣ").await, StatusCode::OK);
    let token = app.login("νικοσ", "password-123").await;
    let me = expect_status(app.get("/api/v1/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(uuid(&me["id"]), small);
    assert_problem(register(&app, "Νικοσ", "third@example.gr").await, 409, "username-taken").await;
    assert_problem(register(&app, "bobby", "BOB@example.com").await, 409, "email-taken").await;
    let admin = app.admin().await;
    let create = app.post("/api/v1/categories", Some(&admin), Some(json!({"name": "DRAMA"}))).await;
    assert_problem(create, 409, "name-taken").await;
    println!("stored before keys: 4 accounts and 2 categories keyed, 3 collisions reported, 0 rows lost");
}
