//! The HTTP/1.1 server loop: accepts connections and serves the router on each, with the time
//! limits the contract sets for hostile clients ("Hostile clients").
//!
//! - A connection must send a whole request head within [`HEAD_TIMEOUT`] of its first byte, or of
//!   being accepted when it sends nothing: a client trickling its headers, or one that connects
//!   and stays silent, is closed.
//! - An idle keep-alive connection (its last answer sent, no byte of the next request) is closed
//!   after [`IDLE_TIMEOUT`].
//! - A body must arrive within the request timeout; that limit, the 503 it answers and the
//!   concurrency slot taken only once the body is in, are steps of every request
//!   ([`crate::http::steps`]).
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper begins waiting for a head,
//! which on a keep-alive connection is as soon as the previous answer went out, so it would close
//! idle connections after the head limit (10 s) instead of the idle limit (60 s). Instead each
//! connection's reads and requests move a small state ([`Phase`]) that a watchdog checks.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The longest a request head may take to arrive, from its first byte (or from the accept).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a keep-alive connection may wait, idle, for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often each connection's watchdog looks at its phase.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What a connection is doing, packed in one atomic: the phase in the low 2 bits, the
/// milliseconds since the connection's start at which it began in the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being served; its body and answer are bounded by the request timeout.
    Busy,
    /// The last answer is out; no byte of the next request has come.
    Idle,
}

/// The phase of one connection, shared by its reads, its service and its watchdog.
struct Watch {
    start: Instant,
    state: AtomicU64,
}

impl Watch {
    fn new() -> Self {
        Self { start: Instant::now(), state: AtomicU64::new(Self::pack(Phase::Head, 0)) }
    }

    fn pack(phase: Phase, at_ms: u64) -> u64 {
        let tag = match phase {
            Phase::Head => 0,
            Phase::Busy => 1,
            Phase::Idle => 2,
        };
        (at_ms << 2) | tag
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn set(&self, phase: Phase) {
        self.state.store(Self::pack(phase, self.now_ms()), Ordering::Relaxed);
    }

    fn get(&self) -> (Phase, Duration) {
        let state = self.state.load(Ordering::Relaxed);
        let phase = match state & 3 {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        };
        (phase, Duration::from_millis(self.now_ms().saturating_sub(state >> 2)))
    }

    /// Bytes arrived: on an idle connection they start the next request's head.
    fn read_some(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & 3 == 2 {
            let head = Self::pack(Phase::Head, self.now_ms());
            let _ = self.state.compare_exchange(state, head, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// A TCP stream whose reads tell its [`Watch`] that bytes came.
struct Watched {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on every connection `listener` accepts until `shutdown` is cancelled; then
/// stops accepting, lets each connection finish the request it is serving (idle ones close at
/// once) and returns when all have closed. The caller bounds that wait.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener is still good; pause a moment rather than spin.
                tracing::warn!(%error, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, peer, router.clone(), shutdown.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// One connection: HTTP/1.1 with keep-alive, watched for the head and idle limits.
async fn connection(stream: TcpStream, peer: SocketAddr, router: Router, shutdown: CancellationToken) {
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched { stream, watch: watch.clone() });
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        service_watch.set(Phase::Busy);
        request.extensions_mut().insert(ConnectInfo(peer));
        let answered = router.clone().oneshot(request.map(axum::body::Body::new));
        let watch = service_watch.clone();
        async move {
            let response = answered.await;
            watch.set(Phase::Idle);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => match watch.get() {
                (Phase::Head, waited) if waited >= HEAD_TIMEOUT => {
                    metrics::counter!("http_connections_closed_total", "reason" => "slow-head").increment(1);
                    tracing::debug!(%peer, "closing a connection whose request head did not arrive in time");
                    return;
                }
                (Phase::Idle, waited) if waited >= IDLE_TIMEOUT && !closing => {
                    metrics::counter!("http_connections_closed_total", "reason" => "idle").increment(1);
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_on_an_idle_connection_starts_a_head_and_a_busy_one_stays_busy() {
        let watch = Watch::new();
        assert_eq!(watch.get().0, Phase::Head, "a new connection waits for its first head");
        watch.set(Phase::Busy);
        watch.read_some();
        assert_eq!(watch.get().0, Phase::Busy, "body bytes do not make a head");
        watch.set(Phase::Idle);
        watch.read_some();
        assert_eq!(watch.get().0, Phase::Head);
    }
}
