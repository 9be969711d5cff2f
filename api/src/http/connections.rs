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
//!   ([`crate::http::steps`]). The deadline itself is kept here: the steps hand it to the
//!   connection's [`RequestClock`], and the same watchdog that watches heads and idle time ends
//!   the request when it passes, so a request arms no timer of its own.
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper begins waiting for a head,
//! which on a keep-alive connection is as soon as the previous answer went out, so it would close
//! idle connections after the head limit (10 s) instead of the idle limit (60 s). Instead each
//! connection's reads and requests move a small state ([`Phase`]) that a watchdog checks.
//!
//! Why the request deadline is not a timer per request: every tokio timer is registered in, and
//! removed from, one wheel behind one lock shared by the worker threads, and a cached read armed
//! two (this deadline and the Redis reply's). Under wrk on cached details, in four alternating
//! 5 s windows each, `serve` used 0.031-0.033 ms of CPU per request without them against
//! 0.034-0.041 ms with them.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::task::AtomicWaker;
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

/// The phase of one connection, shared by its reads, its service and its watchdog, and the
/// deadline of the request it is serving.
struct Watch {
    start: Instant,
    state: AtomicU64,
    /// The deadline of the request being served, in milliseconds since `start`; 0 for none.
    deadline: AtomicU64,
    /// Set by the watchdog once that deadline has passed.
    expired: AtomicBool,
    /// The task serving the request, woken when `expired` is set.
    waker: AtomicWaker,
}

impl Watch {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            state: AtomicU64::new(Self::pack(Phase::Head, 0)),
            deadline: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
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

    /// A request's head is in and it is being served: busy, with no deadline until the steps
    /// set one ([`RequestClock::bound`]).
    fn begin_request(&self) {
        self.deadline.store(0, Ordering::Relaxed);
        self.expired.store(false, Ordering::Relaxed);
        self.set(Phase::Busy);
    }

    /// The watchdog's look at the request's deadline: when it has passed, marks the request
    /// expired and wakes it, and returns `None`; while it is ahead, returns how far.
    fn expire_if_due(&self) -> Option<Duration> {
        let deadline = self.deadline.load(Ordering::Relaxed);
        if deadline == 0 || self.get().0 != Phase::Busy || self.expired.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.now_ms();
        if now < deadline {
            return Some(Duration::from_millis(deadline - now));
        }
        self.expired.store(true, Ordering::Release);
        self.waker.wake();
        None
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

/// The deadline of the request a connection is serving, kept by the connection's watchdog: an
/// extension of every request [`serve`] serves.
#[derive(Clone)]
pub struct RequestClock(Arc<Watch>);

impl RequestClock {
    /// `answer`, or `None` if it has not finished within `limit` from now (to the millisecond;
    /// the watchdog looks at least every [`CHECK_EVERY`], and exactly at the deadline once it is
    /// nearer than that).
    pub fn bound<F: Future>(&self, limit: Duration, answer: F) -> Bounded<F> {
        let watch = &self.0;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX / 2).max(1);
        watch.deadline.store(watch.now_ms().saturating_add(limit_ms).max(1), Ordering::Relaxed);
        Bounded { watch: Arc::clone(watch), answer }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer bounded by its connection's deadline ([`RequestClock::bound`]).
    pub struct Bounded<F> {
        watch: Arc<Watch>,
        #[pin]
        answer: F,
    }
}

impl<F: Future> Future for Bounded<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.watch.expired.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(answer) = this.answer.poll(cx) {
            return Poll::Ready(Some(answer));
        }
        this.watch.waker.register(cx.waker());
        // The watchdog may have expired the request between the first look and the register.
        if this.watch.expired.load(Ordering::Acquire) {
            Poll::Ready(None)
        } else {
            Poll::Pending
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
        service_watch.begin_request();
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(RequestClock(service_watch.clone()));
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
    let check = tokio::time::sleep(CHECK_EVERY);
    tokio::pin!(check);
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
            () = &mut check => {
                match watch.get() {
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
                }
                // Exactly at the request's deadline when it comes before the next regular look.
                let next = watch.expire_if_due().map_or(CHECK_EVERY, |left| left.min(CHECK_EVERY));
                check.as_mut().reset(tokio::time::Instant::now() + next);
            }
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

    #[tokio::test]
    async fn a_request_past_its_deadline_is_ended_and_the_next_request_starts_with_none() {
        // Arrange: a busy connection whose request has 30 ms.
        let watch = Arc::new(Watch::new());
        watch.begin_request();
        let clock = RequestClock(Arc::clone(&watch));
        let slow = clock.bound(Duration::from_millis(30), std::future::pending::<()>());
        tokio::pin!(slow);

        // Act and assert: before the deadline the watchdog leaves it and says how long is left;
        // at the deadline it ends it.
        let first = std::future::poll_fn(|cx| Poll::Ready(slow.as_mut().poll(cx).is_pending())).await;
        assert!(first, "pending before its deadline");
        let left = watch.expire_if_due().expect("a deadline ahead");
        assert!(left <= Duration::from_millis(30), "{left:?}");
        tokio::time::sleep(left + Duration::from_millis(2)).await;
        assert_eq!(watch.expire_if_due(), None);
        assert_eq!(slow.await, None, "the request ran out of time");

        // The next request on the connection has no deadline until its steps set one, and a
        // quick answer is its own.
        watch.set(Phase::Idle);
        watch.begin_request();
        assert_eq!(watch.expire_if_due(), None);
        let quick = clock.bound(Duration::from_secs(10), async { 7 });
        assert_eq!(quick.await, Some(7));
        assert!(watch.expire_if_due().is_some(), "its deadline is ahead");
    }
}
