//! One SMTP connection, opened with `TCP_NODELAY` and kept between emails.
//!
//! lettre's transport opens its sockets with Nagle's algorithm on. Its client writes a message's
//! body and then the five bytes that end it as two writes; Nagle holds the second until the
//! server acknowledges the first, and a server that delays its acknowledgement (40 ms on Linux)
//! makes every email wait that long: about 22 emails a second on one connection, whatever the
//! machine. So the sender opens the TCP connection itself, with `TCP_NODELAY`, and hands it to
//! lettre's protocol code (greeting, EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA), which is used
//! unchanged. The connection is kept for the next email (checked with NOOP first) and dropped on
//! any error, so a server that went away is met with a fresh connection.
//!
//! Every step has its time limit ([`TIMEOUT`]: the NOOP, the new connection, the message), and a
//! whole send has one more, [`LONGEST_SEND`], that bounds them together: a server that stops
//! answering in the middle of a kept session costs at most that, never a hung sender.
//!
//! `smtps://` (TLS from the first byte) is the one form whose socket lettre must open itself,
//! because it wraps the socket in TLS before the greeting; it keeps the connection between emails
//! as well, but each email waits for the server's delayed acknowledgement.

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use tokio::sync::Mutex;

/// The longest one step may take: checking a kept connection, connecting, or one whole email on
/// an open connection.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A whole send's limit, in steps' limits.
const SEND_IN_STEPS: u32 = 2;

/// The longest a whole [`Smtp::send`] may take, its steps together.
pub const LONGEST_SEND: Duration = Duration::from_secs(TIMEOUT.as_secs() * SEND_IN_STEPS as u64);

/// How the connection is protected, from the URL's scheme and `tls` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Security {
    /// `smtp://host`: plain text (a local mail sink or a trusted relay).
    Plain,
    /// `smtp://host?tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://host?tls=required`: STARTTLS or no email.
    Required,
    /// `smtps://host`: TLS from the first byte.
    Wrapper,
}

/// Where and how to reach the SMTP server (`MOVIESTORE_SMTP_URL`), parsed once.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
}

/// An SMTP client that keeps one connection open.
pub struct Smtp {
    target: Target,
    open: Mutex<Option<AsyncSmtpConnection>>,
    /// [`TIMEOUT`], shorter in tests.
    step: Duration,
}

/// Why a send failed: lettre's error, or our own time limit.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with a permanent (5xx) refusal of this message.
    Permanent(String),
    /// Anything else: unreachable, timed out, a temporary refusal, a broken connection.
    Transient(String),
}

impl Smtp {
    /// Parses `url` the way lettre's `from_url` does (`smtp://[user:pass@]host[:port][/helo]
    /// [?tls=required|opportunistic]`, `smtps://...`), without connecting.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("the URL names no host")?;
        // An IPv6 literal comes back bracketed; the socket and TLS want it bare.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
        let (security, default_port) = match (parsed.scheme(), tls.as_deref()) {
            ("smtp", None) => (Security::Plain, 25),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic, 587),
            ("smtp", Some("required")) => (Security::Required, 587),
            ("smtps", _) => (Security::Wrapper, 465),
            (scheme, tls) => {
                return Err(format!("unknown scheme {scheme:?} or tls parameter {tls:?}"));
            }
        };
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let credentials =
            parsed.password().map(|password| Credentials::new(decode(parsed.username()), decode(password)));
        let hello = match parsed.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_string()),
        };
        let port = parsed.port().unwrap_or(default_port);
        Ok(Self {
            target: Target { host, port, security, credentials, hello },
            open: Mutex::new(None),
            step: TIMEOUT,
        })
    }

    /// Sends `message`, on the kept connection when it still answers, else on a new one, within
    /// [`LONGEST_SEND`] (twice a step's limit) in all.
    pub async fn send(&self, message: &Message) -> Result<(), Failure> {
        let mut open = self.open.lock().await;
        let kept = open.take();
        let longest = self.step * SEND_IN_STEPS;
        match tokio::time::timeout(longest, self.send_on(kept, message)).await {
            Ok((conn, sent)) => {
                *open = conn;
                sent
            }
            // The connection, in whatever state the server left it, is dropped.
            Err(_) => Err(Failure::Transient(format!("the SMTP server took over {longest:?} for one email"))),
        }
    }

    /// The steps of [`Self::send`], each within [`TIMEOUT`]; gives back the connection to keep.
    async fn send_on(
        &self,
        mut kept: Option<AsyncSmtpConnection>,
        message: &Message,
    ) -> (Option<AsyncSmtpConnection>, Result<(), Failure>) {
        let step = self.step;
        if let Some(conn) = &mut kept {
            // A server may have closed an idle session, or stopped answering in it; NOOP tells.
            let answers = !conn.has_broken()
                && tokio::time::timeout(step, conn.test_connected()).await.unwrap_or(false);
            if !answers {
                kept = None;
            }
        }
        let mut conn = match kept {
            Some(conn) => conn,
            None => match tokio::time::timeout(step, self.connect()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(failure)) => return (None, Err(failure)),
                Err(_) => {
                    let failure = format!("no answer from the SMTP server within {step:?}");
                    return (None, Err(Failure::Transient(failure)));
                }
            },
        };
        match tokio::time::timeout(step, conn.send(message.envelope(), &message.formatted())).await {
            Ok(Ok(_)) => (Some(conn), Ok(())),
            // A refusal of this message leaves the session usable.
            Ok(Err(e)) if e.is_permanent() && !conn.has_broken() => {
                (Some(conn), Err(Failure::Permanent(e.to_string())))
            }
            Ok(Err(e)) => (None, Err(classify(e))),
            Err(_) => {
                (None, Err(Failure::Transient(format!("the SMTP server took over {step:?} for one email"))))
            }
        }
    }

    /// Opens a connection: TCP (with `TCP_NODELAY`), greeting and EHLO, STARTTLS, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let t = &self.target;
        let tls = || TlsParameters::new(t.host.clone()).map_err(classify);
        let mut conn = if t.security == Security::Wrapper {
            AsyncSmtpConnection::connect_tokio1(
                (t.host.as_str(), t.port),
                Some(self.step),
                &t.hello,
                Some(tls()?),
                None,
            )
            .await
            .map_err(classify)?
        } else {
            let unreachable = |e: std::io::Error| Failure::Transient(format!("{}:{}: {e}", t.host, t.port));
            let stream =
                tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(unreachable)?;
            stream.set_nodelay(true).map_err(unreachable)?;
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &t.hello).await.map_err(classify)?
        };
        match t.security {
            Security::Required => conn.starttls(tls()?, &t.hello).await.map_err(classify)?,
            Security::Opportunistic if conn.can_starttls() => {
                conn.starttls(tls()?, &t.hello).await.map_err(classify)?
            }
            _ => {}
        }
        if let Some(credentials) = &t.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(classify)?;
        }
        Ok(conn)
    }
}

fn classify(e: lettre::transport::smtp::Error) -> Failure {
    if e.is_permanent() {
        Failure::Permanent(e.to_string())
    } else {
        Failure::Transient(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::time::Instant;

    use super::*;

    /// A scripted SMTP server on a loopback port. Sessions are numbered from 1 as they connect;
    /// a session numbered below `answering_from` reads everything and answers nothing (a server
    /// that stopped answering mid-session, or never greets). `greeting_ms` and `accepted_ms`
    /// delay the greeting and the answer to a message's end.
    #[derive(Default)]
    struct Sink {
        port: u16,
        sessions: AtomicUsize,
        delivered: AtomicUsize,
        answering_from: AtomicUsize,
        greeting_ms: AtomicU64,
        accepted_ms: AtomicU64,
    }

    impl Sink {
        async fn start() -> Arc<Self> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sink = Arc::new(Sink { port: listener.local_addr().unwrap().port(), ..Sink::default() });
            let serving = sink.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let number = serving.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::spawn(serving.clone().session(stream, number));
                }
            });
            sink
        }

        fn answers(&self, session: usize) -> bool {
            session >= self.answering_from.load(Ordering::SeqCst)
        }

        async fn session(self: Arc<Self>, stream: tokio::net::TcpStream, number: usize) {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let pause = |ms: &AtomicU64| tokio::time::sleep(Duration::from_millis(ms.load(Ordering::SeqCst)));
            if self.answers(number) {
                pause(&self.greeting_ms).await;
                let _ = write.write_all(b"220 sink\r\n").await;
            }
            let mut in_data = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim_end_matches('\r');
                if !self.answers(number) {
                    continue;
                }
                let reply = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    pause(&self.accepted_ms).await;
                    self.delivered.fetch_add(1, Ordering::SeqCst);
                    "250 queued"
                } else {
                    match line.split(' ').next().unwrap_or("").to_ascii_uppercase().as_str() {
                        "EHLO" | "HELO" => "250 sink",
                        "MAIL" | "RCPT" | "NOOP" | "RSET" => "250 ok",
                        "DATA" => {
                            in_data = true;
                            "354 go on"
                        }
                        "QUIT" => "221 bye",
                        _ => "500 unknown",
                    }
                };
                if write.write_all(format!("{reply}\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }

        /// A sink, a client of it with each step limited to `step`, and a message that client has
        /// sent once already: its session is the one kept.
        async fn with_a_kept_session(step: Duration) -> (Arc<Self>, Smtp, Message) {
            let sink = Sink::start().await;
            let mut smtp = Smtp::from_url(&format!("smtp://127.0.0.1:{}", sink.port)).unwrap();
            smtp.step = step;
            let message = message();
            tokio::time::timeout(HUNG, smtp.send(&message)).await.expect("the first send hung").unwrap();
            assert_eq!(sink.counts(), (1, 1));
            (sink, smtp, message)
        }

        /// Sessions opened and messages accepted so far.
        fn counts(&self) -> (usize, usize) {
            (self.sessions.load(Ordering::SeqCst), self.delivered.load(Ordering::SeqCst))
        }
    }

    fn message() -> Message {
        Message::builder()
            .from("store@example.com".parse().unwrap())
            .to("customer@example.com".parse().unwrap())
            .subject("Welcome")
            .body(String::from("Hello"))
            .unwrap()
    }

    /// Far above any send's own limit in these tests: reaching it means a send hung.
    const HUNG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_kept_session_that_stops_answering_is_replaced_and_a_silent_server_fails_in_time() {
        let step = Duration::from_millis(300);
        let (sink, smtp, message) = Sink::with_a_kept_session(step).await;

        // The kept session stops answering: its NOOP check gives up after a step, and the email
        // goes on a new connection.
        sink.answering_from.store(2, Ordering::SeqCst);
        let started = Instant::now();
        let sent = tokio::time::timeout(HUNG, smtp.send(&message)).await;
        let took = started.elapsed();
        sent.expect("a kept session that stopped answering hung the send").unwrap();
        assert_eq!(sink.counts(), (2, 2));
        assert!(took >= step, "the NOOP was given {took:?}, less than its step of {step:?}");

        // Now no session answers, not even a new one's greeting: the send fails as transient.
        sink.answering_from.store(usize::MAX, Ordering::SeqCst);
        let failed =
            tokio::time::timeout(HUNG, smtp.send(&message)).await.expect("a silent server hung the send");
        assert!(matches!(failed, Err(Failure::Transient(_))), "{failed:?}");
        assert_eq!(sink.counts(), (3, 2));
    }

    #[tokio::test]
    async fn a_send_whose_steps_each_keep_their_limit_still_ends_at_the_whole_sends_limit() {
        let step = Duration::from_secs(1);
        let (sink, smtp, message) = Sink::with_a_kept_session(step).await;

        // The kept session goes silent (its NOOP takes a whole step), the new session greets
        // after 0.7 of a step and accepts the message after 0.7 of a step: each step keeps well
        // within its limit, together they take 2.4 steps, over the whole send's 2.
        sink.answering_from.store(2, Ordering::SeqCst);
        sink.greeting_ms.store(700, Ordering::SeqCst);
        sink.accepted_ms.store(700, Ordering::SeqCst);
        let started = Instant::now();
        let sent = tokio::time::timeout(HUNG, smtp.send(&message)).await.expect("the send hung");
        let took = started.elapsed();
        let failure = match sent {
            Err(Failure::Transient(failure)) => failure,
            other => panic!("a send over its whole limit ended {other:?} after {took:?}"),
        };
        assert!(failure.contains(&format!("took over {:?}", 2 * step)), "{failure}");
        assert!(took >= 2 * step, "the send ended after {took:?}");
        // The message was on its way when the limit cut it: the server counts it only after
        // answering, so it is not known delivered (the sender will try it again).
        assert_eq!(sink.counts().0, 2);
    }

    #[test]
    fn every_url_form_of_the_contract_parses_with_its_default_port_and_security() {
        let cases = [
            ("smtp://localhost:1025", "localhost", 1025, Security::Plain, false),
            ("smtp://mail.example.com", "mail.example.com", 25, Security::Plain, false),
            (
                "smtp://u:p%40ss@mail.example.com:587?tls=required",
                "mail.example.com",
                587,
                Security::Required,
                true,
            ),
            (
                "smtp://mail.example.com?tls=opportunistic",
                "mail.example.com",
                587,
                Security::Opportunistic,
                false,
            ),
            ("smtps://u:p@mail.example.com", "mail.example.com", 465, Security::Wrapper, true),
            ("smtp://[::1]:2525", "::1", 2525, Security::Plain, false),
        ];
        for (url, host, port, security, credentials) in cases {
            let smtp = Smtp::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(smtp.target.host, host, "{url}");
            assert_eq!(smtp.target.port, port, "{url}");
            assert_eq!(smtp.target.security, security, "{url}");
            assert_eq!(smtp.target.credentials.is_some(), credentials, "{url}");
        }
    }

    #[test]
    fn unknown_schemes_and_tls_values_and_missing_hosts_are_refused() {
        for url in
            ["http://mail.example.com", "smtp://mail.example.com?tls=sometimes", "smtp://", "not a url"]
        {
            assert!(Smtp::from_url(url).is_err(), "{url} was accepted");
        }
    }
}
