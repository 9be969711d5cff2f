//! Sending the emails of the outbox (`projections::notifications`): a sender runs in every
//! `serve` and `worker` process. It queues the due overdue-reminder repeats (at most once per
//! [`POLL`]), and each round claims the oldest due rows (`for update skip locked`, leased for a
//! while), and for each reads the recipient from the account at that moment, renders the
//! templates, sends over SMTP (or writes an `.eml` file when no SMTP server is configured) and
//! marks the row.
//!
//! Failures: when the SMTP server cannot be reached (or answers with a transient error) the whole
//! queue waits, in every process (1 s, doubling to 10 min while it lasts, counted by the attempts
//! of the oldest email, which is the one tried first), so that once it answers the emails go in
//! the order they were queued; a message the server refuses for good is retried on its own with
//! the same backoff. Either way an email is given up (`failed`) 24 h after it was queued. An
//! account erased, without email, or that does not want this kind of email gets nothing
//! (`skipped`). A round that a slow server keeps past [`DELIVER_WITHIN`] starts no more
//! deliveries and gives the rest of its batch back, so that no row's lease runs out while this
//! process may still send it.

pub mod render;
pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;
use projections::notifications::{self as outbox, kind, Claimed};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::MailConfig;
use render::{day, money, when, Templates};

/// Rows claimed per round.
pub const BATCH: i64 = 20;

/// A round starts no delivery once this much time has passed since its claim: the slowest
/// delivery ([`smtp::LONGEST_SEND`]: checking the kept connection or opening a new one, and the
/// message) still ends before the rows' lease ([`outbox::LEASE`]) runs out and another process
/// may claim them. The rest of the batch goes back to its place in the queue.
pub const DELIVER_WITHIN: Duration =
    Duration::from_secs(outbox::LEASE.as_secs() - smtp::LONGEST_SEND.as_secs());

/// How often an idle sender looks for due rows.
pub const POLL: Duration = Duration::from_millis(250);

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);

/// The wait before attempt `attempts + 1` (1 s, 2 s, 4 s, ... at most 10 min).
pub fn backoff(attempts: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled.min(MAX_BACKOFF)
}

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    /// An SMTP server.
    Smtp(std::sync::Arc<smtp::Smtp>),
    /// `.eml` files in this folder.
    Files(PathBuf),
}

/// Why one email was not delivered.
#[derive(Debug)]
pub enum SendError {
    /// The server could not be reached or asked to try later: the whole queue waits.
    Unreachable(String),
    /// The server refused this message: it is retried on its own.
    Refused(String),
}

impl Transport {
    /// The transport `config` names: its SMTP URL, or files in `data_dir/mail`.
    pub fn from_config(config: &MailConfig, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        use secrecy::ExposeSecret;
        match &config.smtp_url {
            None => Ok(Self::Files(data_dir.join("mail"))),
            Some(url) => {
                let smtp = smtp::Smtp::from_url(url.expose_secret())
                    .map_err(|e| anyhow::anyhow!("MOVIESTORE_SMTP_URL is not valid: {e}"))?;
                Ok(Self::Smtp(std::sync::Arc::new(smtp)))
            }
        }
    }

    /// Where emails go, for the log (never with credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Smtp(_) => "SMTP (MOVIESTORE_SMTP_URL)".to_string(),
            Self::Files(dir) => format!(".eml files in {}", dir.display()),
        }
    }

    /// Delivers one message.
    pub async fn send(&self, id: Uuid, message: Message) -> Result<(), SendError> {
        match self {
            // A server's answer may quote the recipient: the error is kept and listed without it.
            Self::Smtp(smtp) => smtp.send(&message).await.map_err(|failure| match failure {
                smtp::Failure::Permanent(e) => SendError::Refused(without_addresses(&e)),
                smtp::Failure::Transient(e) => SendError::Unreachable(without_addresses(&e)),
            }),
            Self::Files(dir) => {
                // One trip to the blocking pool for the three calls: a trip each made every email
                // wait for three thread wake-ups.
                let folder = dir.clone();
                let write = move || {
                    std::fs::create_dir_all(&folder)?;
                    // Written aside and renamed, so a reader never sees half a file.
                    let partial = folder.join(format!(".{id}.eml.partial"));
                    std::fs::write(&partial, message.formatted())?;
                    std::fs::rename(&partial, folder.join(format!("{id}.eml")))
                };
                let written = tokio::task::spawn_blocking(write).await.unwrap_or_else(|joined| {
                    Err(std::io::Error::other(format!("the file writer stopped: {joined}")))
                });
                written.map_err(|e| SendError::Unreachable(format!("{}: {e}", dir.display())))
            }
        }
    }
}

/// `text` with every word that holds an `@` (an address, bracketed or not) replaced by
/// `[address]`, so an error kept in the outbox or logged names nobody.
pub fn without_addresses(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.contains('@') { "[address]" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A header of our own (`X-Notification-Kind`, `X-Notification-Id`).
#[derive(Clone)]
struct Custom<const ID: bool>(String);

impl<const ID: bool> lettre::message::header::Header for Custom<ID> {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str(if ID { "X-Notification-Id" } else { "X-Notification-Kind" })
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The sender of one process.
#[derive(Clone)]
pub struct Sender {
    pool: PgPool,
    transport: Transport,
    templates: Arc<Templates>,
    from: Mailbox,
    store_name: String,
    message_domain: String,
    public_url: String,
    plan: Arc<domain::price::PricePlan>,
}

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Sent,
    /// Not for sending (erased account, no address, preference off, token expired).
    Skipped,
    /// Failed and will be retried.
    Retried,
    /// Failed for 24 h: given up.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Skipped => "skipped",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Emails delivered.
    pub sent: usize,
    /// The SMTP server could not be reached: the queue waits this long.
    pub paused: Option<Duration>,
}

impl Sender {
    /// A sender over `pool` delivering through `transport`; `public_url` is the base of links.
    pub fn new(
        pool: PgPool,
        transport: Transport,
        config: &MailConfig,
        public_url: String,
        plan: Arc<domain::price::PricePlan>,
    ) -> anyhow::Result<Self> {
        let from: Mailbox =
            config.from.parse().map_err(|e| anyhow::anyhow!("MOVIESTORE_MAIL_FROM is not a mailbox: {e}"))?;
        let store_name =
            from.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| "Movie Store".into());
        let message_domain = from.email.domain().to_string();
        Ok(Self {
            pool,
            transport,
            templates: Arc::new(Templates::new()?),
            from,
            store_name,
            message_domain,
            public_url: public_url.trim_end_matches('/').to_string(),
            plan,
        })
    }

    /// The `Message-ID` of a notification: the same for every attempt.
    pub fn message_id(&self, id: Uuid) -> String {
        format!("<{id}@{}>", self.message_domain)
    }

    /// Runs rounds until `shutdown`; a failing round (the database) is retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(delivery = %self.transport.describe(), "sending notifications");
        let mut failures = 0u32;
        // When the due reminder repeats were last queued: at most once per `POLL`, however many
        // rounds a busy queue runs back to back.
        let mut reminded: Option<tokio::time::Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let remind = reminded.is_none_or(|at| at.elapsed() >= POLL);
            let done = async {
                if remind {
                    outbox::fire_reminders(&self.pool, 100).await?;
                    reminded = Some(tokio::time::Instant::now());
                }
                self.round().await
            };
            let wait = match done.await {
                Ok(round) => {
                    failures = 0;
                    if let Some(pause) = round.paused {
                        pause
                    } else {
                        if round.sent > 0 {
                            // The server answers again: the sender is no longer failing.
                            let _ = outbox::record_sender(&self.pool, None).await;
                        }
                        if round.claimed as i64 >= BATCH {
                            continue;
                        }
                        POLL
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "the notification sender's round failed; retrying");
                    backoff(failures).min(Duration::from_secs(10))
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: claims and sends a batch, oldest first. The emails delivered are marked sent as
    /// they go, grouped ([`mark_as_they_go`]).
    pub async fn round(&self) -> Result<Round, sqlx::Error> {
        let claimed = outbox::claim(&self.pool, BATCH).await?;
        let leased = tokio::time::Instant::now();
        let (delivered, marks) = tokio::sync::mpsc::unbounded_channel();
        let sending = async move {
            let mut round = Round { claimed: claimed.len(), ..Round::default() };
            for (index, row) in claimed.iter().enumerate() {
                if index > 0 && leased.elapsed() >= DELIVER_WITHIN {
                    // A slow server: the rest would outlive its lease and be sent by another
                    // process as well. It goes back to its place; the next round claims it anew.
                    let rest: Vec<Uuid> = claimed[index..].iter().map(|r| r.id).collect();
                    outbox::release(&self.pool, &rest).await?;
                    break;
                }
                match self.deliver(row).await? {
                    Ok(outcome) => {
                        self.observe(row, outcome);
                        if outcome == Outcome::Sent {
                            round.sent += 1;
                            if delivered.send(row.id).is_err() {
                                // The marks failed: their error ends the round, and the rest
                                // of the batch waits for its lease to run out.
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        // The server is away: this email and every other waits, so that the queue
                        // keeps its order; the rest of this batch goes back to its place.
                        let pause = backoff(row.attempts as u32 + 1);
                        let failed = outbox::mark_failed_attempt(&self.pool, row.id, &error, pause).await?;
                        outbox::pause_queue(&self.pool, pause).await?;
                        let rest: Vec<Uuid> = claimed[index + 1..].iter().map(|r| r.id).collect();
                        outbox::release(&self.pool, &rest).await?;
                        let _ = outbox::record_sender(&self.pool, Some(&error)).await;
                        self.observe(row, if failed { Outcome::Failed } else { Outcome::Retried });
                        round.paused = Some(pause);
                        break;
                    }
                }
            }
            Ok(round)
        };
        let (round, marked) = tokio::join!(sending, mark_as_they_go(&self.pool, marks));
        marked?;
        round
    }

    fn observe(&self, row: &Claimed, outcome: Outcome) {
        let kind = kind::ALL.iter().find(|k| **k == row.kind).copied().unwrap_or("unknown");
        metrics::counter!("notifications_total", "kind" => kind, "outcome" => outcome.label()).increment(1);
        tracing::info!(notification_id = %row.id, kind, outcome = outcome.label(), attempts = row.attempts + 1, "notification");
    }

    /// Sends one row and marks it unless it was sent (the caller marks those); `Err(reason)` when
    /// the SMTP server could not be reached (the row is not marked then).
    async fn deliver(&self, row: &Claimed) -> Result<Result<Outcome, String>, sqlx::Error> {
        let skip = |why: &'static str| async move {
            outbox::mark_skipped(&self.pool, row.id, why).await.map(|()| Ok(Outcome::Skipped))
        };
        let Some(recipient) = &row.recipient else {
            return skip("no such account").await;
        };
        let Some(address) = recipient.email.clone() else {
            return skip("the account has no email").await;
        };
        let receipt =
            matches!(row.kind.as_str(), kind::RENTAL_RECEIPT | kind::RETURN_RECEIPT | kind::PAYMENT_RECEIPT);
        if receipt && !recipient.receipts {
            return skip("receipts are off").await;
        }
        if row.kind == kind::OVERDUE_REMINDER && !recipient.reminders {
            return skip("reminders are off").await;
        }
        let Ok(to) = address.parse::<lettre::Address>() else {
            return skip("the account's email is not deliverable").await;
        };
        let context = match self.context(row, &recipient.username) {
            Ok(context) => context,
            Err(why) => return skip(why).await,
        };
        let message = match self.message(row, Mailbox::new(None, to), &context) {
            Ok(message) => message,
            Err(error) => {
                let retry_in = backoff(row.attempts as u32 + 1);
                let failed = outbox::mark_failed_attempt(&self.pool, row.id, &error, retry_in).await?;
                return Ok(Ok(if failed { Outcome::Failed } else { Outcome::Retried }));
            }
        };
        match self.transport.send(row.id, message).await {
            Ok(()) => Ok(Ok(Outcome::Sent)),
            Err(SendError::Unreachable(error)) => Ok(Err(error)),
            Err(SendError::Refused(error)) => {
                let retry_in = backoff(row.attempts as u32 + 1);
                let failed = outbox::mark_failed_attempt(&self.pool, row.id, &error, retry_in).await?;
                Ok(Ok(if failed { Outcome::Failed } else { Outcome::Retried }))
            }
        }
    }

    /// The values the templates show; `Err(why)` when the email has nothing left to say.
    fn context(&self, row: &Claimed, username: &str) -> Result<Value, &'static str> {
        let mut context = json!({ "store": self.store_name, "username": username });
        let data = &row.data;
        let time = |key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let amount = || {
            money(
                data.get("amount_cents").and_then(Value::as_i64).unwrap_or(0),
                data.get("currency").and_then(Value::as_str).unwrap_or("EUR"),
            )
        };
        let extra = match row.kind.as_str() {
            kind::WELCOME => json!({}),
            kind::PASSWORD_RESET => {
                let Some(token) = &row.secret else { return Err("the reset token is gone") };
                if Utc::now() - row.created_at > chrono::Duration::hours(1) {
                    return Err("the reset token has expired");
                }
                json!({ "token": token, "link": format!("{}/reset-password?token={token}", self.public_url) })
            }
            _ => {
                if row.rental_id.is_none() {
                    return Err("no rental");
                }
                let Some(facts) = &row.facts else { return Err("no such rental") };
                let title = facts.title.clone().unwrap_or_else(|| "your movie".into());
                match row.kind.as_str() {
                    kind::RENTAL_RECEIPT => json!({
                        "title": title,
                        "rented_at": when(time("rented_at").unwrap_or(facts.rented_at)),
                        "due_at": time("due_at").map(when).unwrap_or_default(),
                    }),
                    kind::RETURN_RECEIPT => json!({
                        "title": title,
                        "returned_at": when(facts.returned_at.or(time("at")).unwrap_or(facts.rented_at)),
                        "days": data.get("days").and_then(Value::as_u64).unwrap_or(1),
                        "amount": amount(),
                    }),
                    kind::PAYMENT_RECEIPT => json!({
                        "title": title,
                        "amount": amount(),
                        "paid_at": time("paid_at").map(when).unwrap_or_default(),
                    }),
                    kind::OVERDUE_REMINDER => {
                        let due_at = time("due_at").unwrap_or(facts.rented_at);
                        let charge = self.plan.assess(facts.rented_at, Utc::now());
                        json!({
                            "title": title,
                            "due_at": when(due_at),
                            "due_date": day(due_at),
                            "charge": money(charge.amount_cents, &self.plan.currency),
                            "number": data.get("number").and_then(Value::as_i64).unwrap_or(1),
                        })
                    }
                    _ => return Err("unknown kind"),
                }
            }
        };
        if let (Value::Object(context), Value::Object(extra)) = (&mut context, extra) {
            context.extend(extra);
        }
        Ok(context)
    }

    /// The message: both parts, our headers, the `Message-ID` of the row.
    fn message(&self, row: &Claimed, to: Mailbox, context: &Value) -> Result<Message, String> {
        let rendered = self.templates.render(&row.kind, context).map_err(|e| format!("template: {e}"))?;
        let part = |content_type: ContentType, body: String| {
            SinglePart::builder()
                .header(content_type)
                .header(ContentTransferEncoding::QuotedPrintable)
                .body(body)
        };
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(self.message_id(row.id)))
            .header(Custom::<false>(row.kind.clone()))
            .header(Custom::<true>(row.id.to_string()))
            .multipart(
                MultiPart::alternative()
                    .singlepart(part(ContentType::TEXT_PLAIN, rendered.text))
                    .singlepart(part(ContentType::TEXT_HTML, rendered.html)),
            )
            .map_err(|e| format!("message: {e}"))
    }
}

/// Marks sent the emails `delivered` names, in one statement per group: those delivered while a
/// mark is in flight go together in the next, so a fast server costs one commit per group rather
/// than one per email, and a slow one still has each email marked right after it leaves. A crash
/// repeats only the emails delivered and not yet marked (each once, with its `Message-ID`).
async fn mark_as_they_go(
    pool: &PgPool,
    mut delivered: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(BATCH as usize);
    while delivered.recv_many(&mut ids, BATCH as usize).await > 0 {
        outbox::mark_sent(pool, &ids).await?;
        ids.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_1_s_to_10_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn every_smtp_url_form_of_the_contract_builds_a_transport_and_none_means_files() {
        for url in [
            "smtp://127.0.0.1:1025",
            "smtp://user:pass@mail.example.com:587?tls=required",
            "smtps://user:pass@mail.example.com:465",
        ] {
            let config =
                MailConfig::from_lookup(&|name| (name == "MOVIESTORE_SMTP_URL").then(|| url.to_string()))
                    .unwrap();
            let transport = Transport::from_config(&config, std::path::Path::new("data")).unwrap();
            assert!(matches!(transport, Transport::Smtp(_)), "{url}");
            assert!(!transport.describe().contains("pass"), "no credentials in the log line");
        }
        let config = MailConfig::from_lookup(&|_| None).unwrap();
        let transport = Transport::from_config(&config, std::path::Path::new("data")).unwrap();
        assert!(matches!(&transport, Transport::Files(dir) if dir == std::path::Path::new("data/mail")));
    }

    #[test]
    fn errors_keep_no_address() {
        let error = "permanent error (550): 5.1.1 <dora@example.com>: Recipient address rejected";
        assert_eq!(
            without_addresses(error),
            "permanent error (550): 5.1.1 [address] Recipient address rejected"
        );
        assert_eq!(without_addresses("connection refused"), "connection refused");
    }
}
