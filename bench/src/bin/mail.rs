//! Email throughput and queue drain time: queues `--emails` welcome emails (one per account, as
//! registering does) in a scratch database, then runs `--senders` notification senders (as that
//! many `serve`/`worker` processes would) against an SMTP sink on 127.0.0.1 that accepts every
//! message, and reports the time from the first claim to the last email accepted, and emails per
//! second. Exits 1 when an email did not arrive, or arrived twice.
//!
//! It makes and migrates the database it is given; use a scratch one (bench/run.sh passes
//! `moviestore_bench_mail`).
//!
//!   mail --database-url postgres://postgres@127.0.0.1:5432/moviestore_bench_mail --emails 10000

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use api::config::MailConfig;
use api::mail::{Sender, Transport};
use clap::Parser;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// The scratch database (created when missing, migrated).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How many emails are queued before the senders start.
    #[arg(long, default_value_t = 10_000)]
    emails: usize,
    /// How many senders share the queue.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// The longest wait for the queue to drain.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// The `X-Notification-Id` of every message the sink accepted.
type Received = Arc<Mutex<Vec<String>>>;

/// An SMTP server that accepts everything and keeps only each message's notification id.
async fn sink(listener: TcpListener, received: Received) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Answers go at once (no waiting for the client's acknowledgement to fill a packet).
        let _ = stream.set_nodelay(true);
        let received = received.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read);
            let mut line = String::new();
            write.write_all(b"220 bench sink\r\n").await?;
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                let answer: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-bench\r\n250 8BITMIME\r\n",
                    "QUIT" => {
                        write.write_all(b"221 bye\r\n").await?;
                        return Ok(());
                    }
                    "DATA" => {
                        write.write_all(b"354 go on\r\n").await?;
                        let mut id = String::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await? == 0 {
                                return Ok(());
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            if let Some(value) = line.strip_prefix("X-Notification-Id:") {
                                id = value.trim().to_string();
                            }
                        }
                        received.lock().unwrap().push(id);
                        b"250 queued\r\n"
                    }
                    _ => b"250 OK\r\n",
                };
                write.write_all(answer).await?;
            }
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = moviestore_bench::scratch_database(&args.database_url, "notification", "emails").await?;

    // Arrange: one account and one queued welcome email per email (lower-case ASCII names are
    // their own keys).
    let queueing = Instant::now();
    sqlx::query(
        "with made as (
             insert into users (user_id, username, username_key, email, email_key, password_hash, role)
             select gen_random_uuid(), 'bench-' || i, 'bench-' || i,
                    'bench-' || i || '@example.com', 'bench-' || i || '@example.com', '', 'customer'
               from generate_series(1, $1) i
             returning user_id)
         insert into notification (id, kind, user_id, trigger_id)
         select gen_random_uuid(), 'welcome', user_id, user_id from made",
    )
    .bind(args.emails as i64)
    .execute(&pool)
    .await?;
    let queued_in = queueing.elapsed();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let received: Received = Arc::default();
    let sink_task = tokio::spawn(sink(listener, received.clone()));
    let url = format!("smtp://127.0.0.1:{port}");
    let config = MailConfig::from_lookup(&|name| (name == "MOVIESTORE_SMTP_URL").then(|| url.clone()))?;
    let plan = Arc::new(domain::price::PricePlan::default());

    // Act: the senders drain the queue.
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.senders {
        let transport = Transport::from_config(&config, std::path::Path::new("."))?;
        let sender = Sender::new(pool.clone(), transport, &config, "http://127.0.0.1".into(), plan.clone())?;
        tasks.push(tokio::spawn(sender.run(shutdown.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let drained = loop {
        if received.lock().unwrap().len() >= args.emails {
            break Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Let the last rows be marked, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    for task in tasks {
        task.await?;
    }
    let ids_before_bare = received.lock().unwrap().len();

    // The machine's limit, in the same run: the same SMTP client sending as many messages of the
    // same shape straight to the same sink, with no database (no claim, no lookup, no mark).
    let bare = bare_smtp(&url, args.emails.min(10_000), &received).await?;
    sink_task.abort();

    // Assert and report.
    let ids = received.lock().unwrap()[..ids_before_bare].to_vec();
    let distinct: HashSet<&String> = ids.iter().collect();
    let sent: i64 =
        sqlx::query_scalar("select count(*) from notification where state = 'sent'").fetch_one(&pool).await?;
    pool.close().await;
    let Some(drained) = drained else {
        bail!("{} of {} emails arrived within {} s", distinct.len(), args.emails, args.timeout_secs);
    };
    println!(
        "{} emails queued (in {:.1} s), drained by {} sender(s) to a local SMTP sink in {:.2} s: {:.0} emails/s; \
         {} received, {} distinct, {sent} marked sent",
        args.emails,
        queued_in.as_secs_f64(),
        args.senders,
        drained.as_secs_f64(),
        args.emails as f64 / drained.as_secs_f64(),
        ids.len(),
        distinct.len()
    );
    let ours = args.emails as f64 / drained.as_secs_f64();
    println!();
    println!("| figure | ours | limit | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| emails/s drained by {} sender(s) vs the bare SMTP client to the same sink (no database) | {ours:.0} | {bare:.0} | {:.2} |",
        args.senders,
        ours / bare
    );
    if distinct.len() != args.emails || ids.len() != args.emails {
        bail!("{} messages, {} distinct, for {} emails", ids.len(), distinct.len(), args.emails);
    }
    Ok(())
}

/// Sends `count` messages shaped like a welcome email (a text and an HTML part) over one kept
/// connection, one after another, and answers messages per second.
async fn bare_smtp(url: &str, count: usize, received: &Received) -> anyhow::Result<f64> {
    let smtp = api::mail::smtp::Smtp::from_url(url).map_err(anyhow::Error::msg)?;
    let text = "Welcome to the movie store, bench! Browse the catalogue, rent a movie, return it. ".repeat(8);
    let html = format!("<html><body><p>{}</p></body></html>", text);
    let before = received.lock().unwrap().len();
    let started = Instant::now();
    for i in 0..count {
        let message = lettre::Message::builder()
            .from("Movie Store <no-reply@moviestore.local>".parse()?)
            .to(format!("bench-{i}@example.com").parse()?)
            .subject("Welcome to the movie store")
            .multipart(lettre::message::MultiPart::alternative_plain_html(text.clone(), html.clone()))?;
        if let Err(e) = smtp.send(&message).await {
            bail!("the bare client's message {i} failed: {e:?}");
        }
    }
    let took = started.elapsed();
    let arrived = received.lock().unwrap().len() - before;
    if arrived != count {
        bail!("the bare client sent {count} messages and {arrived} arrived");
    }
    Ok(count as f64 / took.as_secs_f64())
}
