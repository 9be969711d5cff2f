//! A small SMTP server in the test process: it speaks enough of RFC 5321 for a real client
//! (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), records every message it accepts, and can be
//! stopped (the port refuses connections, open sessions are cut) and started again on the same
//! port, to play an SMTP server that goes away and comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A message as received.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub envelope_from: String,
    /// `RCPT TO` addresses.
    pub envelope_to: Vec<String>,
    /// The message itself (headers and body, CRLF line ends, dots unstuffed).
    pub raw: String,
}

impl Mail {
    fn head_and_body(&self) -> (&str, &str) {
        self.raw.split_once("\r\n\r\n").unwrap_or((&self.raw, ""))
    }

    /// The value of a header of the message (unfolded), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        headers(self.head_and_body().0).remove(&name.to_ascii_lowercase())
    }

    /// The decoded body of the part with this content type (`text/plain`, `text/html`).
    pub fn part(&self, content_type: &str) -> Option<String> {
        let boundary = self
            .header("content-type")?
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary=").map(|b| b.trim_matches('"').to_string()))?;
        let body = self.head_and_body().1;
        body.split(&format!("--{boundary}")).find_map(|part| {
            let part = part.trim_start_matches("\r\n");
            let (head, content) = part.split_once("\r\n\r\n")?;
            let head = headers(head);
            let kind = head.get("content-type")?;
            if !kind.to_ascii_lowercase().starts_with(content_type) {
                return None;
            }
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            match head.get("content-transfer-encoding").map(|e| e.to_ascii_lowercase()) {
                Some(e) if e == "quoted-printable" => Some(decode_quoted_printable(content)),
                _ => Some(content.to_string()),
            }
        })
    }

    /// `Message-ID`.
    pub fn message_id(&self) -> String {
        self.header("message-id").unwrap_or_default()
    }

    /// `X-Notification-Kind`.
    pub fn kind(&self) -> String {
        self.header("x-notification-kind").unwrap_or_default()
    }
}

fn headers(head: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = current.take() {
            map.insert(name, value);
        }
        if let Some((name, value)) = line.split_once(':') {
            current = Some((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if let Some((name, value)) = current {
        map.insert(name, value);
    }
    map
}

/// Decodes quoted-printable text (RFC 2045): `=XX` bytes and `=` soft line breaks.
pub fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if let Some(hex) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(hex);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Mail>>,
    delay: Mutex<Duration>,
}

/// The server.
pub struct MailSink {
    port: u16,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

impl MailSink {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the mail sink");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = Some(tokio::spawn(accept(listener, shared.clone())));
        Self { port, shared, accepting }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops: the port refuses connections and open sessions are cut.
    pub async fn stop(&mut self) {
        if let Some(task) = self.accepting.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts again on the same port.
    pub async fn resume(&mut self) {
        assert!(self.accepting.is_none(), "the sink is running");
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot listen on port {} again: {error}", self.port),
            }
        };
        self.accepting = Some(tokio::spawn(accept(listener, self.shared.clone())));
    }

    /// Makes every `DATA` take this long before it is accepted.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Every message accepted so far, in the order accepted.
    pub fn messages(&self) -> Vec<Mail> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Waits until at least `count` messages have arrived; returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages arrived within {within:?}: {:?}",
                messages.len(),
                messages.iter().map(Mail::kind).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // Sessions live in this set: aborting the accepting task drops it, which cuts them all.
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    sessions.spawn(session(stream, shared.clone()));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn session(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let path = || {
            command
                .split_once(':')
                .map(|(_, p)| p.trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string())
        };
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 sink\r\n",
            "MAIL" => {
                from = path().unwrap_or_default();
                to.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                to.push(path().unwrap_or_default());
                b"250 OK\r\n"
            }
            "RSET" => {
                from.clear();
                to.clear();
                b"250 OK\r\n"
            }
            "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut raw = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    raw.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let delay = *shared.delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let raw = raw.strip_suffix("\r\n").unwrap_or(&raw).to_string();
                shared.messages.lock().unwrap().push(Mail {
                    envelope_from: std::mem::take(&mut from),
                    envelope_to: std::mem::take(&mut to),
                    raw,
                });
                b"250 OK queued\r\n"
            }
            _ => b"502 command not implemented\r\n",
        };
        write.write_all(answer).await?;
    }
}

#[tokio::test]
async fn quoted_printable_decodes_bytes_and_soft_breaks() {
    assert_eq!(decode_quoted_printable("=E2=82=AC3.50 du=\r\ne"), "€3.50 due");
    assert_eq!(decode_quoted_printable("a=3Db"), "a=b");
}
