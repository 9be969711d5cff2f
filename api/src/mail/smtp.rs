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
//! `smtps://` (TLS from the first byte) is the one form whose socket lettre must open itself,
//! because it wraps the socket in TLS before the greeting; it keeps the connection between emails
//! as well, but each email waits for the server's delayed acknowledgement.

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use tokio::sync::Mutex;

/// The longest one step may take: connecting, or one whole email on an open connection.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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
        Ok(Self { target: Target { host, port, security, credentials, hello }, open: Mutex::new(None) })
    }

    /// Sends `message`, on the kept connection when it still answers, else on a new one.
    pub async fn send(&self, message: &Message) -> Result<(), Failure> {
        let mut open = self.open.lock().await;
        let mut kept = open.take();
        if let Some(conn) = &mut kept {
            // A server may have closed an idle session; NOOP tells.
            if conn.has_broken() || !conn.test_connected().await {
                kept = None;
            }
        }
        let mut conn = match kept {
            Some(conn) => conn,
            None => tokio::time::timeout(TIMEOUT, self.connect()).await.map_err(|_| {
                Failure::Transient(format!("no answer from the SMTP server within {TIMEOUT:?}"))
            })??,
        };
        let sent = tokio::time::timeout(TIMEOUT, conn.send(message.envelope(), &message.formatted())).await;
        match sent {
            Ok(Ok(_)) => {
                *open = Some(conn);
                Ok(())
            }
            // A refusal of this message leaves the session usable.
            Ok(Err(e)) if e.is_permanent() && !conn.has_broken() => {
                *open = Some(conn);
                Err(Failure::Permanent(e.to_string()))
            }
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(Failure::Transient(format!("the SMTP server took over {TIMEOUT:?} for one email"))),
        }
    }

    /// Opens a connection: TCP (with `TCP_NODELAY`), greeting and EHLO, STARTTLS, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let t = &self.target;
        let tls = || TlsParameters::new(t.host.clone()).map_err(classify);
        let mut conn = if t.security == Security::Wrapper {
            AsyncSmtpConnection::connect_tokio1(
                (t.host.as_str(), t.port),
                Some(TIMEOUT),
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
    use super::*;

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
