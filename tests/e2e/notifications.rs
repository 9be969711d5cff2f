//! Email, through the real binary and a real SMTP server in the test process
//! ([`crate::mail_sink`]): every kind arrives with its headers, both parts and escaped values; an
//! SMTP server that goes away loses nothing and delays no command, and the queue goes out in order
//! once it is back; a sender killed mid-queue loses nothing; emails delivered while a mark is in
//! flight are marked together; a round slower than its lease sends no email twice; two processes
//! send each email once; an erased account and preferences turned off get nothing; password reset
//! end to end; without an SMTP server emails are `.eml` files.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::mail_sink::{Mail, MailSink};
use crate::support::*;

const FROM_ADDRESS: &str = "no-reply@moviestore.local";

fn with_smtp(sink: &MailSink) -> Options {
    Options { extra_env: vec![("MOVIESTORE_SMTP_URL".into(), sink.url())] }
}

async fn spawn_with_smtp(pool: PgPool, sink: &MailSink) -> TestApp {
    TestApp::spawn_with(pool, with_smtp(sink)).await
}

/// [`spawn_with_smtp`] in a process of its own (to kill it, or to read its own metrics).
async fn process_with_smtp(pool: PgPool, sink: &MailSink) -> TestApp {
    TestApp::process_with(pool, with_smtp(sink)).await
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An admin's rent for `customer` that started at `rented_at`; returns the rental id.
async fn rent_as_admin(app: &TestApp, movie: Uuid, customer: Uuid, rented_at: DateTime<Utc>) -> Uuid {
    let admin = app.admin().await;
    let body = json!({"customer_id": customer, "rented_at": rfc3339(rented_at)});
    let response = app.post(&format!("/api/v1/movies/{movie}/rent"), Some(&admin), Some(body)).await;
    uuid(&expect_status(response, StatusCode::CREATED).await["rental_id"])
}

/// The outbox as an admin lists it (every page), filtered by `query`.
async fn outbox(app: &TestApp, query: &str) -> Vec<Value> {
    let admin = app.admin().await;
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/admin/notifications?limit=100&{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = expect_status(app.get(&path, Some(&admin)).await, StatusCode::OK).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

/// Waits until the outbox holds `count` rows matching `query`; returns them.
async fn wait_for_outbox(app: &TestApp, query: &str, count: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let items = outbox(app, query).await;
        if items.len() >= count {
            return items;
        }
        assert!(Instant::now() < deadline, "{} of {count} rows with {query} within {within:?}", items.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_kind<'a>(messages: &'a [Mail], kind: &str) -> Vec<&'a Mail> {
    messages.iter().filter(|m| m.kind() == kind).collect()
}

/// Registers a customer whose email is `USERNAME@example.com`; returns (id, token).
async fn customer(app: &TestApp, username: &str) -> (Uuid, String) {
    app.customer(username).await
}

/// Pauses the queue (as a server away would), then registers `count` customers named
/// `PREFIX-N` on `app`, so that their welcome emails wait together for one round.
async fn queue_welcomes_while_paused(app: &TestApp, pool: &PgPool, prefix: &str, count: usize) {
    sqlx::query("insert into notification_queue (id, paused_until) values (true, now() + interval '1 hour')")
        .execute(pool)
        .await
        .unwrap();
    for i in 0..count {
        customer(app, &format!("{prefix}-{i}")).await;
    }
    wait_for_outbox(app, "state=pending", count, Duration::from_secs(10)).await;
}

/// Ends the pause of [`queue_welcomes_while_paused`]: the next round claims the queue.
async fn resume_queue(pool: &PgPool) {
    sqlx::query("update notification_queue set paused_until = now()").execute(pool).await.unwrap();
}

fn recipient(mail: &Mail) -> String {
    mail.envelope_to.first().cloned().unwrap_or_default()
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn every_kind_arrives_with_its_headers_both_parts_and_every_value_escaped(pool: PgPool) {
    // Arrange
    let sink = MailSink::start().await;
    let app = spawn_with_smtp(pool, &sink).await;
    let (dora, token) = customer(&app, "dora").await;
    let category = app.category("Drama").await;
    let title = "<script>alert(1)</script>";
    let returned_movie = app.movie(title, &[category]).await;
    let late_movie = app.movie("Late & Lost", &[category]).await;

    // Act: a rental of 3 days and 23 hours (4 started days: €3.50), returned and paid; another
    // rented 8 days ago, so overdue at once.
    let rented_at = (Utc::now() - chrono::Duration::days(4) + chrono::Duration::hours(1)).trunc_subsecs(0);
    let rental = rent_as_admin(&app, returned_movie, dora, rented_at).await;
    let returned = app.post(&format!("/api/v1/rentals/{rental}/return"), Some(&token), None).await;
    expect_status(returned, StatusCode::OK).await;
    wait_for_outbox(&app, "kind=return_receipt", 1, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pay = json!({"amount_cents": 350});
        let paid = app.post(&format!("/api/v1/rentals/{rental}/pay"), Some(&token), Some(pay)).await;
        if paid.status().is_success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pay: {} {}",
            paid.status(),
            paid.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late_at = (Utc::now() - chrono::Duration::days(8)).trunc_subsecs(0);
    let late = rent_as_admin(&app, late_movie, dora, late_at).await;

    // Assert: six emails, one of each kind but two rental receipts.
    let messages = sink.wait_for(6, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages_after = sink.messages();
    assert_eq!(
        messages_after.len(),
        6,
        "exactly six emails: {:?}",
        messages_after.iter().map(Mail::kind).collect::<Vec<_>>()
    );
    let counts: HashMap<String, usize> = messages.iter().fold(HashMap::new(), |mut counts, m| {
        *counts.entry(m.kind()).or_default() += 1;
        counts
    });
    let expected: HashMap<String, usize> = [
        ("welcome", 1),
        ("rental_receipt", 2),
        ("return_receipt", 1),
        ("payment_receipt", 1),
        ("overdue_reminder", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(counts, expected);
    let ids: HashSet<String> = messages.iter().map(Mail::message_id).collect();
    assert_eq!(ids.len(), 6, "six distinct Message-IDs");
    for mail in &messages {
        let id = mail.header("x-notification-id").expect("X-Notification-Id");
        Uuid::parse_str(&id).expect("the notification id is a UUID");
        assert_eq!(mail.message_id(), format!("<{id}@moviestore.local>"), "Message-ID from the id");
        let from = mail.header("from").unwrap();
        assert!(from.contains("Movie Store") && from.contains(FROM_ADDRESS), "From: {from}");
        assert_eq!(mail.envelope_from, FROM_ADDRESS);
        assert_eq!(recipient(mail), "dora@example.com");
        assert!(mail.header("to").unwrap().contains("dora@example.com"));
        assert!(mail.header("subject").is_some_and(|s| !s.is_empty()));
        let text = mail.part("text/plain").unwrap_or_else(|| panic!("{}: a text part", mail.kind()));
        let html = mail.part("text/html").unwrap_or_else(|| panic!("{}: an HTML part", mail.kind()));
        assert!(text.contains("dora") && html.contains("dora"), "{}: names the customer", mail.kind());
        assert!(!html.contains("<script>"), "{}: nothing of a value runs as HTML: {html}", mail.kind());
    }
    let receipt = by_kind(&messages, "return_receipt")[0];
    let text = receipt.part("text/plain").unwrap();
    assert!(text.contains("€3.50") && text.contains("4 days") && text.contains(title), "{text}");
    let html = receipt.part("text/html").unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;") && html.contains("€3.50"), "{html}");
    let paid = by_kind(&messages, "payment_receipt")[0].part("text/plain").unwrap();
    assert!(paid.contains("€3.50"), "{paid}");
    let rentals = by_kind(&messages, "rental_receipt");
    let due = rented_at + chrono::Duration::days(7);
    let due_words = due.format("%A %-d %B %Y at %H:%M UTC").to_string();
    assert!(
        rentals.iter().any(|m| m.part("text/plain").unwrap().contains(&due_words)),
        "a rental receipt says when it is due ({due_words})"
    );
    let reminder = by_kind(&messages, "overdue_reminder")[0];
    let reminder_text = reminder.part("text/plain").unwrap();
    let late_due = (late_at + chrono::Duration::days(7)).format("%A %-d %B %Y at %H:%M UTC").to_string();
    // 8 days out: 300 + 5 x 50 cents so far (9 started days once a day has passed since).
    assert!(reminder_text.contains("Late & Lost") && reminder_text.contains(&late_due), "{reminder_text}");
    assert!(reminder.part("text/html").unwrap().contains("Late &amp; Lost"));
    assert!(reminder_text.contains("€5.50") || reminder_text.contains("€6.00"), "{reminder_text}");

    // The outbox lists them all as sent, with no address and no body.
    let rows = outbox(&app, "state=sent").await;
    assert_eq!(rows.len(), 6);
    let listed = serde_json::to_string(&rows).unwrap();
    assert!(!listed.contains("@example.com") && !listed.contains("alert"), "no address, no body: {listed}");
    assert_eq!(outbox(&app, &format!("user_id={dora}&kind=rental_receipt")).await.len(), 2);
    let late_rows: Vec<_> = rows.iter().filter(|r| r["rental_id"] == json!(late)).collect();
    assert_eq!(late_rows.len(), 2, "the late rental's receipt and its reminder");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn while_the_smtp_server_is_down_commands_answer_and_the_queue_goes_out_in_order_once_back(
    pool: PgPool,
) {
    // Arrange
    let mut sink = MailSink::start().await;
    let app = process_with_smtp(pool, &sink).await;
    customer(&app, "first").await;
    sink.wait_for(1, Duration::from_secs(15)).await;

    // Act: the server goes away while five customers register.
    sink.stop().await;
    let names: Vec<String> = (1..=5).map(|i| format!("queued-{i}")).collect();
    for name in &names {
        let started = Instant::now();
        customer(&app, name).await;
        assert!(started.elapsed() < Duration::from_secs(5), "registering does not wait for SMTP");
    }
    let pending = wait_for_outbox(&app, "state=pending", 5, Duration::from_secs(5)).await;
    assert_eq!(pending.len(), 5, "the queue grows while the server is away");
    let admin = app.admin().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = app.get("/metrics", None).await.text().await.unwrap();
        let depth = samples(&scrape, "notification_queue_depth", &[]);
        let retried = samples(&scrape, "notifications_total", &["outcome=\"retried\""]);
        if depth.first().is_some_and(|s| value(s) == 5.0)
            && retried.iter().map(|s| value(s)).sum::<f64>() >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "queue depth 5 and a retry in /metrics: {depth:?} {retried:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let projections =
        expect_status(app.get("/api/v1/admin/projections", Some(&admin)).await, StatusCode::OK).await;
    let sender =
        projections["items"].as_array().unwrap().iter().find(|p| p["name"] == "notification-sender").cloned();
    let sender = sender.expect("the sender is listed with the projections");
    assert_eq!(sender["lag_events"], 5, "{sender}");
    assert_eq!(sender["state"], "failing", "{sender}");
    sink.resume().await;

    // Assert: each delivered once, in the order queued.
    sink.wait_for(6, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 6, "six emails in all, none twice");
    let ids: HashSet<String> = messages.iter().map(Mail::message_id).collect();
    assert_eq!(ids.len(), 6, "six distinct Message-IDs");
    let order: Vec<String> = messages[1..].iter().map(recipient).collect();
    let expected: Vec<String> = names.iter().map(|n| format!("{n}@example.com")).collect();
    assert_eq!(order, expected, "in the order they were queued");
    assert_eq!(outbox(&app, "state=sent").await.len(), 6);
    let retried_rows =
        outbox(&app, "state=sent").await.into_iter().filter(|r| r["attempts"].as_i64() > Some(1)).count();
    assert!(retried_rows >= 1, "at least the first queued email needed more than one attempt");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_sender_killed_mid_queue_loses_no_email_and_repeats_one_only_with_its_message_id(pool: PgPool) {
    // Arrange: 30 emails queued while the server is away, then a slow server.
    let mut sink = MailSink::start().await;
    let first = process_with_smtp(pool.clone(), &sink).await;
    sink.stop().await;
    for i in 0..30 {
        customer(&first, &format!("killed-{i}")).await;
    }
    wait_for_outbox(&first, "state=pending", 30, Duration::from_secs(10)).await;
    sink.set_delay(Duration::from_millis(100));
    sink.resume().await;

    // Act: kill -9 once some have gone out, then start another process.
    sink.wait_for(5, Duration::from_secs(40)).await;
    signal(first.pid(), "KILL");
    drop(first);
    let before_restart = sink.messages().len();
    sink.set_delay(Duration::ZERO);
    let second = process_with_smtp(pool.clone(), &sink).await;

    // Assert: every email arrives; a repeat carries the Message-ID of the first delivery.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from notification").fetch_all(&pool).await.unwrap();
    assert_eq!(ids.len(), 30);
    let expected: HashSet<String> = ids.iter().map(|id| format!("<{id}@moviestore.local>")).collect();
    loop {
        let received: HashSet<String> = sink.messages().iter().map(Mail::message_id).collect();
        if received == expected {
            break;
        }
        assert!(received.is_subset(&expected), "only emails of the queue");
        assert!(Instant::now() < deadline, "{} of 30 emails arrived", received.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = sink.messages();
    let duplicates = messages.len() - 30;
    println!("kill -9 mid-queue: {before_restart} delivered before the restart, {duplicates} repeated (same Message-ID)");
    assert!(duplicates <= 1, "at most the email in flight at the kill is repeated: {duplicates}");
    assert_eq!(outbox(&second, "state=sent").await.len(), 30);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn emails_delivered_while_a_mark_is_in_flight_are_marked_sent_together(pool: PgPool) {
    // Arrange: 20 welcome emails queued while the queue is paused, and every statement that marks
    // emails sent held for a second (a trigger of this test's database), as a slow commit would.
    let sink = MailSink::start().await;
    let app = spawn_with_smtp(pool.clone(), &sink).await;
    queue_welcomes_while_paused(&app, &pool, "grouped", 20).await;
    sqlx::raw_sql(
        "create function slow_mark() returns trigger language plpgsql as $$
         begin
             if current_setting('test.marking', true) is distinct from 'yes' then
                 perform set_config('test.marking', 'yes', true);
                 perform pg_sleep(1);
             end if;
             return new;
         end $$;
         create trigger slow_mark before update on notification for each row
             when (new.state = 'sent' and old.state <> 'sent') execute function slow_mark();",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Act: the queue resumes; one round claims the 20.
    resume_queue(&pool).await;
    sink.wait_for(20, Duration::from_secs(20)).await;
    let sent = wait_for_outbox(&app, "state=sent", 20, Duration::from_secs(20)).await;

    // Assert: each delivered once; the first mark held the others back, which went in one more.
    let messages = sink.messages();
    let ids: HashSet<String> = messages.iter().map(Mail::message_id).collect();
    assert_eq!((messages.len(), ids.len(), sent.len()), (20, 20, 20), "each email sent and marked once");
    let statements: i64 =
        sqlx::query_scalar("select count(distinct xmin::text) from notification where state = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!("20 emails delivered, marked sent in {statements} statements");
    assert!(statements <= 4, "emails delivered during a mark are marked together: {statements} statements");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_round_slower_than_its_lease_gives_the_rest_back_and_no_email_goes_twice(pool: PgPool) {
    // Arrange: two processes, a server that takes 2 s an email, and 20 emails queued while the
    // queue is paused, so that one round claims them all: 40 s of sending, past the 30 s lease.
    let sink = MailSink::start().await;
    sink.set_delay(Duration::from_secs(2));
    let one = spawn_with_smtp(pool.clone(), &sink).await;
    let _two = spawn_with_smtp(pool.clone(), &sink).await;
    queue_welcomes_while_paused(&one, &pool, "slow", 20).await;

    // Act
    resume_queue(&pool).await;
    sink.wait_for(20, Duration::from_secs(90)).await;
    wait_for_outbox(&one, "state=sent", 20, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Assert: each email once, though no round could send them all within its lease.
    let messages = sink.messages();
    let ids: HashSet<String> = messages.iter().map(Mail::message_id).collect();
    println!("20 emails at 2 s each: {} delivered, {} distinct", messages.len(), ids.len());
    assert_eq!((messages.len(), ids.len()), (20, 20), "each email delivered once");
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn two_processes_send_each_email_once(pool: PgPool) {
    // Arrange
    let sink = MailSink::start().await;
    let one = spawn_with_smtp(pool.clone(), &sink).await;
    let two = spawn_with_smtp(pool, &sink).await;

    // Act: 20 customers register, alternately on each process.
    for i in 0..20 {
        let app = if i % 2 == 0 { &one } else { &two };
        customer(app, &format!("both-{i}")).await;
    }

    // Assert
    sink.wait_for(20, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 20, "each email once");
    let recipients: HashSet<String> = messages.iter().map(recipient).collect();
    assert_eq!(recipients.len(), 20);
    assert_eq!(outbox(&one, "state=sent").await.len(), 20);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn an_erased_account_gets_none_of_its_pending_emails(pool: PgPool) {
    // Arrange: a reminder and a receipt queued while the server is away.
    let mut sink = MailSink::start().await;
    let app = spawn_with_smtp(pool.clone(), &sink).await;
    let (greta, _) = customer(&app, "greta").await;
    sink.wait_for(1, Duration::from_secs(15)).await;
    sink.stop().await;
    let category = app.category("Noir").await;
    let movie = app.movie("The Third Man", &[category]).await;
    rent_as_admin(&app, movie, greta, Utc::now() - chrono::Duration::days(8)).await;
    wait_for_outbox(&app, "state=pending&kind=overdue_reminder", 1, Duration::from_secs(15)).await;

    // Act
    let (ok, stdout, stderr) = run_cli(&app.database_url, &["erase-user", "greta"], "").await;
    assert!(ok, "erase-user: {stderr}");
    assert!(stdout.contains("2 queued email(s) skipped"), "{stdout}");
    sink.resume().await;

    // Assert: nothing more reaches the account.
    let rows = outbox(&app, &format!("user_id={greta}")).await;
    let states: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().into(), r["state"].as_str().unwrap().into()))
        .collect();
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.contains(&("overdue_reminder".into(), "skipped".into())), "{states:?}");
    assert!(states.contains(&("rental_receipt".into(), "skipped".into())), "{states:?}");
    assert!(states.contains(&("welcome".into(), "sent".into())), "{states:?}");
    customer(&app, "after-erasure").await;
    sink.wait_for(2, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kinds: Vec<(String, String)> = sink.messages().iter().map(|m| (m.kind(), recipient(m))).collect();
    assert_eq!(
        kinds,
        [
            ("welcome".to_string(), "greta@example.com".to_string()),
            ("welcome".into(), "after-erasure@example.com".into())
        ],
        "the erased account got nothing after its welcome"
    );
}

fn reset_token(mail: &Mail) -> String {
    let text = mail.part("text/plain").expect("text part");
    let link =
        text.lines().find(|l| l.contains("/reset-password?token=")).expect("a reset link").trim().to_string();
    assert!(link.starts_with("https://shop.example.test/reset-password?token="), "{link}");
    let token = link.rsplit("token=").next().unwrap().to_string();
    assert!(text.contains(&format!("code where you are asked for it: {token}")), "{text}");
    assert!(mail.part("text/html").unwrap().contains(&token));
    token
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn a_password_reset_goes_end_to_end_once_per_token_and_says_nothing_of_unknown_emails(pool: PgPool) {
    // Arrange
    let sink = MailSink::start().await;
    let mut options = with_smtp(&sink);
    options.extra_env.push(("MOVIESTORE_PUBLIC_URL".into(), "https://shop.example.test".into()));
    let app = TestApp::spawn_with(pool.clone(), options.clone()).await;
    let other_process = TestApp::spawn_with(pool.clone(), options).await;
    let (_, old_token) = customer(&app, "rick").await;
    sink.wait_for(1, Duration::from_secs(15)).await;
    // The old token is known (and cached) in the other process too.
    expect_status(other_process.get("/api/v1/me", Some(&old_token)).await, StatusCode::OK).await;
    // Ten failed logins: the account is throttled, even for the right password.
    for _ in 0..10 {
        let wrong = json!({"username": "rick", "password": "not-the-password"});
        assert_eq!(
            app.post("/api/v1/auth/login", None, Some(wrong)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let right = json!({"username": "rick", "password": "password-123"});
    assert_eq!(
        app.post("/api/v1/auth/login", None, Some(right)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Act: a reset requested and confirmed.
    let started = Instant::now();
    let known =
        app.post("/api/v1/auth/password-reset", None, Some(json!({"email": "RICK@example.com"}))).await;
    let known_time = started.elapsed();
    assert_eq!(expect_status(known, StatusCode::ACCEPTED).await, json!({}));
    let started = Instant::now();
    let unknown =
        app.post("/api/v1/auth/password-reset", None, Some(json!({"email": "nobody@example.com"}))).await;
    let unknown_time = started.elapsed();
    assert_eq!(expect_status(unknown, StatusCode::ACCEPTED).await, json!({}));
    let gap = known_time.abs_diff(unknown_time);
    assert!(gap < Duration::from_millis(150), "known {known_time:?} and unknown {unknown_time:?} take alike");
    // An email no account can have, down to characters PostgreSQL cannot store, is answered alike
    // too (a fuzzer's find: it was a 500).
    let impossible = app
        .post("/api/v1/auth/password-reset", None, Some(json!({"email": "\u{eb}\u{e2}\u{17}\u{12}\u{0}"})))
        .await;
    assert_eq!(expect_status(impossible, StatusCode::ACCEPTED).await, json!({}));
    let messages = sink.wait_for(2, Duration::from_secs(15)).await;
    let reset = &messages[1];
    assert_eq!(reset.kind(), "password_reset");
    assert_eq!(recipient(reset), "rick@example.com");
    let token = reset_token(reset);
    assert!(token.len() >= 43, "256 bits: {token}");
    let stored: i64 =
        sqlx::query_scalar("select count(*) from password_resets where token_hash = sha256($1::text::bytea)")
            .bind(&token)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1, "stored as its hash");
    let in_clear: i64 = sqlx::query_scalar("select count(*) from notification where secret is not null")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_clear, 0, "the token leaves the queue with its email");
    let body = json!({"token": token, "new_password": "a-brand-new-one"});
    let confirmed = app.post("/api/v1/auth/password-reset/confirm", None, Some(body.clone())).await;
    expect_status(confirmed, StatusCode::NO_CONTENT).await;

    // Assert
    assert_eq!(
        app.get("/api/v1/me", Some(&old_token)).await.status(),
        StatusCode::UNAUTHORIZED,
        "old token revoked"
    );
    let elsewhere = other_process.get("/api/v1/me", Some(&old_token)).await.status();
    assert_eq!(elsewhere, StatusCode::UNAUTHORIZED, "revoked in the other process too");
    // The login failures are cleared: the new password logs in at once.
    app.login("rick", "a-brand-new-one").await;
    let old_password = app
        .post("/api/v1/auth/login", None, Some(json!({"username": "rick", "password": "password-123"})))
        .await;
    assert_eq!(old_password.status(), StatusCode::UNAUTHORIZED);
    let reused = app.post("/api/v1/auth/password-reset/confirm", None, Some(body)).await;
    let problem = assert_problem(reused, 422, "invalid-reset-token").await;
    assert_eq!(error_fields(&problem), ["token"]);
    let made_up = json!({"token": "not-a-token", "new_password": "another-one-1"});
    assert_problem(
        app.post("/api/v1/auth/password-reset/confirm", None, Some(made_up)).await,
        422,
        "invalid-reset-token",
    )
    .await;
    let short = json!({"token": "x", "new_password": "short"});
    assert_invalid(
        app.post("/api/v1/auth/password-reset/confirm", None, Some(short)).await,
        &["new_password"],
        "short",
    )
    .await;

    // Three reset emails an hour at most: two more go, the fourth request sends nothing; the
    // newest token voids the older one.
    for _ in 0..3 {
        let again =
            app.post("/api/v1/auth/password-reset", None, Some(json!({"email": "rick@example.com"}))).await;
        expect_status(again, StatusCode::ACCEPTED).await;
    }
    let messages = sink.wait_for(4, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.messages().len(),
        4,
        "welcome and three resets; the unknown email and the fourth got none"
    );
    assert_eq!(by_kind(&messages, "password_reset").len(), 3);
    let (older, newer) = (reset_token(&messages[2]), reset_token(&messages[3]));
    let voided = json!({"token": older, "new_password": "yet-another-one"});
    assert_problem(
        app.post("/api/v1/auth/password-reset/confirm", None, Some(voided)).await,
        422,
        "invalid-reset-token",
    )
    .await;
    let newest = json!({"token": newer, "new_password": "yet-another-one"});
    expect_status(
        app.post("/api/v1/auth/password-reset/confirm", None, Some(newest)).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    app.login("rick", "yet-another-one").await;
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn with_preferences_off_no_receipt_or_reminder_goes_but_welcome_and_reset_do(pool: PgPool) {
    // Arrange
    let sink = MailSink::start().await;
    let app = spawn_with_smtp(pool, &sink).await;
    let (ann, token) = customer(&app, "ann").await;
    let defaults =
        expect_status(app.get("/api/v1/me/notifications", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(defaults, json!({"receipts": true, "reminders": true}));
    let wrong = app.patch("/api/v1/me/notifications", Some(&token), json!({"receipts": "no"})).await;
    assert_invalid(wrong, &["receipts"], "a string is no boolean").await;
    let changed = app.patch("/api/v1/me/notifications", Some(&token), json!({"receipts": false})).await;
    assert_eq!(expect_status(changed, StatusCode::OK).await, json!({"receipts": false, "reminders": true}));
    let changed = app.patch("/api/v1/me/notifications", Some(&token), json!({"reminders": false})).await;
    assert_eq!(expect_status(changed, StatusCode::OK).await, json!({"receipts": false, "reminders": false}));
    let unauthenticated = app.get("/api/v1/me/notifications", None).await;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);

    // Act
    let category = app.category("Comedy").await;
    let movie = app.movie("Some Like It Hot", &[category]).await;
    let late = app.movie("The Apartment", &[category]).await;
    app.rent(movie, &token).await;
    rent_as_admin(&app, late, ann, Utc::now() - chrono::Duration::days(8)).await;
    let reset =
        app.post("/api/v1/auth/password-reset", None, Some(json!({"email": "ann@example.com"}))).await;
    expect_status(reset, StatusCode::ACCEPTED).await;

    // Assert
    let skipped = wait_for_outbox(&app, "state=skipped", 3, Duration::from_secs(20)).await;
    let mut kinds: Vec<&str> = skipped.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["overdue_reminder", "rental_receipt", "rental_receipt"]);
    sink.wait_for(2, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent: Vec<String> = sink.messages().iter().map(Mail::kind).collect();
    assert_eq!(sent, ["welcome", "password_reset"]);
}

#[sqlx::test(migrator = "api::MIGRATOR")]
async fn without_an_smtp_server_each_email_is_an_eml_file_in_the_data_folder(pool: PgPool) {
    // Arrange
    let data = scratch_dir("mail-files");
    let options = Options {
        extra_env: vec![
            ("MOVIESTORE_DATA_DIR".into(), data.display().to_string()),
            ("MOVIESTORE_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
    };
    let log_path = data.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let app = TestApp::spawn_with_stderr(pool, options, log).await;

    // Act
    customer(&app, "fiona").await;
    customer(&app, "shrek").await;

    // Assert
    let folder = data.join("mail");
    let deadline = Instant::now() + Duration::from_secs(15);
    let files = loop {
        let files: Vec<_> = std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= 2 {
            break files;
        }
        assert!(Instant::now() < deadline, "two .eml files in {}", folder.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(files.len(), 2, "{files:?}");
    let rows = outbox(&app, "state=sent").await;
    let mut expected: Vec<String> =
        rows.iter().map(|r| format!("{}.eml", r["id"].as_str().unwrap())).collect();
    let mut names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    expected.sort();
    names.sort();
    assert_eq!(names, expected, "one file per email, named by its id");
    let raw = std::fs::read_to_string(&files[0]).unwrap();
    let mail = Mail { envelope_from: String::new(), envelope_to: Vec::new(), raw };
    assert_eq!(mail.kind(), "welcome");
    assert!(mail.part("text/plain").unwrap().contains("Welcome to Movie Store"));
    // One JSON log line per email: its id, kind and outcome, no address.
    let logged: Vec<Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "notification")
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    for line in &logged {
        let id = line["notification_id"].as_str().unwrap_or_default();
        assert!(expected.contains(&format!("{id}.eml")), "{line}");
        assert_eq!(
            (line["kind"].as_str(), line["outcome"].as_str()),
            (Some("welcome"), Some("sent")),
            "{line}"
        );
        assert!(!line.to_string().contains("@example.com"), "no address in the log: {line}");
    }
    assert!(
        mail.header("to").unwrap().ends_with("@example.com>")
            || mail.header("to").unwrap().ends_with("@example.com")
    );
}
