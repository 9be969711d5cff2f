//! Waking projectors after appends, off the commit path and coalesced.
//!
//! A commit only records that there is something new ([`Notifier::committed`], which never waits
//! and never fails); one background task per store, with a connection of its own outside the
//! pool, sends `NOTIFY` on [`EVENTS_CHANNEL`] with the last position committed. A commit after a
//! quiet time is announced at once; after that, at most one `NOTIFY` goes out per
//! [`MIN_INTERVAL`], announcing every commit since the last one, so a burst of N commits costs a
//! few round trips instead of N (and wakes each projector as often), while no commit is ever left
//! without a `NOTIFY` sent after it. The `NOTIFY` stays outside the append transaction: inside
//! it, it would take PostgreSQL's global notification lock at commit and serialise every append.
//!
//! The task starts with the first commit (so building a store needs no runtime), and ends when
//! the pool is closed or every handle of the store is gone, after one last try for a commit not
//! yet announced. When the database goes away it logs once, drops its connection and retries
//! with a growing pause; projectors poll meanwhile, so a lost or late notification only delays
//! them.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use tokio::sync::watch;

use crate::EVENTS_CHANNEL;

/// The shortest time between two `NOTIFY`s: under load, the commits of each interval share one.
/// Projectors take a few milliseconds per batch and poll every 200 ms anyway, so waking them
/// more often than this buys nothing; it bounds the notifications to 200 a second per process.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(5);
/// The first pause after a failed `NOTIFY`; each further failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between tries while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connect-and-notify may take before it counts as failed (a dead peer can leave a
/// socket hanging far longer).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the last try at shutdown may take.
const LAST_TRY: Duration = Duration::from_secs(1);

/// Tells projectors, in this process and others, that events were committed. Cheap to clone;
/// every clone feeds the same task.
#[derive(Clone)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    /// The last position committed; every commit marks it changed, even one with a lower
    /// position than a commit before it (commits can land out of position order).
    latest: watch::Sender<i64>,
    started: OnceLock<()>,
    pool: PgPool,
}

impl Notifier {
    /// A notifier connecting like `pool` does; nothing runs until the first commit.
    pub(crate) fn new(pool: PgPool) -> Self {
        let (latest, _) = watch::channel(0);
        Self { shared: Arc::new(Shared { latest, started: OnceLock::new(), pool }) }
    }

    /// Notes that events up to `position` are committed; returns at once.
    pub(crate) fn committed(&self, position: i64) {
        self.shared.started.get_or_init(|| self.start());
        self.shared.latest.send_modify(|latest| *latest = (*latest).max(position));
    }

    fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime to notify projectors from; they will poll");
            return;
        };
        let pool = &self.shared.pool;
        let channel = PgChannel::new(&pool.connect_options());
        runtime.spawn(run(self.shared.latest.subscribe(), channel, pool.close_event()));
    }
}

/// Where wake-ups go: PostgreSQL, or a stand-in in unit tests.
trait Channel: Send {
    /// Announces that events up to `position` are committed.
    fn send(&mut self, position: i64) -> impl Future<Output = Result<(), NotifyError>> + Send;

    /// Lets go of the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Why a `NOTIFY` did not go out.
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Sends one `NOTIFY` for every change of `marks`, until `closed` resolves or every sender is
/// gone. Changes made while a `NOTIFY` is on its way are seen as one change when it returns.
async fn run<C: Channel>(
    mut marks: watch::Receiver<i64>,
    mut channel: C,
    closed: impl Future<Output = ()> + Send,
) {
    tokio::pin!(closed);
    let mut failing = false;
    // Whether the last change seen is still to be announced.
    let mut unsent = false;
    let mut last_sent: Option<tokio::time::Instant> = None;
    'wait: loop {
        tokio::select! {
            () = &mut closed => break,
            changed = marks.changed() => if changed.is_err() { break },
        }
        if let Some(sent) = last_sent {
            // Commits until the end of the interval join this notification.
            unsent = true;
            tokio::select! {
                () = &mut closed => break,
                () = tokio::time::sleep_until(sent + MIN_INTERVAL) => {},
            }
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let position = *marks.borrow_and_update();
            unsent = true;
            match channel.send(position).await {
                Ok(()) => {
                    unsent = false;
                    last_sent = Some(tokio::time::Instant::now());
                    metrics::counter!("event_notifications_total").increment(1);
                    if std::mem::take(&mut failing) {
                        tracing::info!("notifying projectors again");
                    }
                    break;
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "could not notify projectors; retrying, and they poll meanwhile");
                    } else {
                        tracing::debug!(%error, ?backoff, "could not notify projectors yet");
                    }
                    tokio::select! {
                        () = &mut closed => break 'wait,
                        () = tokio::time::sleep(backoff) => {},
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    // A commit not announced yet (it landed during the last send, or the last send failed): one
    // last, short try, so another process's projectors need not wait for their poll.
    if unsent || matches!(marks.has_changed(), Ok(true)) {
        let position = *marks.borrow_and_update();
        if let Ok(Err(error)) = tokio::time::timeout(LAST_TRY, channel.send(position)).await {
            tracing::debug!(%error, "could not notify projectors before stopping");
        }
    }
    channel.close().await;
}

/// `NOTIFY` over a connection of its own, outside the pool: it never waits for a pooled
/// connection under load, and closing the pool does not wait for it.
struct PgChannel {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
}

impl PgChannel {
    fn new(options: &PgConnectOptions) -> Self {
        let name = format!("{} notifier", options.get_application_name().unwrap_or("moviestore"));
        Self { options: options.clone().application_name(&name), connection: None }
    }

    async fn try_send(&mut self, position: i64) -> Result<(), sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(PgConnection::connect_with(&self.options).await?),
        };
        sqlx::query("select pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(position.to_string())
            .execute(connection)
            .await?;
        Ok(())
    }
}

impl Channel for PgChannel {
    async fn send(&mut self, position: i64) -> Result<(), NotifyError> {
        let result = match tokio::time::timeout(SEND_TIMEOUT, self.try_send(position)).await {
            Ok(sent) => sent.map_err(NotifyError::from),
            Err(_) => Err(NotifyError::TimedOut(SEND_TIMEOUT)),
        };
        if result.is_err() {
            // The next try starts from a fresh connection.
            self.connection = None;
        }
        result
    }

    async fn close(mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = tokio::time::timeout(LAST_TRY, connection.close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    /// A channel whose every send waits for the test's answer.
    struct Scripted {
        sends: mpsc::UnboundedSender<(i64, oneshot::Sender<bool>)>,
        closed: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Channel for Scripted {
        async fn send(&mut self, position: i64) -> Result<(), NotifyError> {
            let (answer, answered) = oneshot::channel();
            let _ = self.sends.send((position, answer));
            match answered.await {
                Ok(true) => Ok(()),
                _ => Err(NotifyError::TimedOut(Duration::ZERO)),
            }
        }

        async fn close(self) {
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    struct Harness {
        latest: Option<watch::Sender<i64>>,
        sends: mpsc::UnboundedReceiver<(i64, oneshot::Sender<bool>)>,
        shutdown: Option<oneshot::Sender<()>>,
        closed: Arc<std::sync::atomic::AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start() -> Harness {
        let (latest, marks) = watch::channel(0);
        let (tx, sends) = mpsc::unbounded_channel();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (shutdown, stop) = oneshot::channel::<()>();
        let channel = Scripted { sends: tx, closed: closed.clone() };
        let task = tokio::spawn(run(marks, channel, async move {
            let _ = stop.await;
        }));
        Harness { latest: Some(latest), sends, shutdown: Some(shutdown), closed, task }
    }

    impl Harness {
        fn commit(&self, position: i64) {
            let sender = self.latest.as_ref().expect("handles are alive");
            sender.send_modify(|latest| *latest = (*latest).max(position));
        }

        async fn next_send(&mut self) -> (i64, oneshot::Sender<bool>) {
            tokio::time::timeout(Duration::from_secs(5), self.sends.recv())
                .await
                .expect("a send within 5 s")
                .expect("the task is running")
        }

        /// No send starts within a short while.
        async fn quiet(&mut self) -> bool {
            tokio::time::timeout(Duration::from_millis(100), self.sends.recv()).await.is_err()
        }
    }

    #[tokio::test]
    async fn commits_during_a_send_cost_one_more_send_not_one_each() {
        let mut h = start();
        h.commit(1);
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 1);

        // A hundred commits while the first NOTIFY is on its way.
        for position in 2..=101 {
            h.commit(position);
        }
        answer.send(true).unwrap();
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 101, "one more send, with the last position");
        answer.send(true).unwrap();
        assert!(h.quiet().await, "nothing left to announce");

        // A commit with a lower position than one announced (it committed later) still wakes.
        h.commit(50);
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 101);
        answer.send(true).unwrap();
        assert!(h.quiet().await);
    }

    #[tokio::test]
    async fn a_failed_send_is_retried_with_the_latest_position_until_it_goes_through() {
        let mut h = start();
        h.commit(7);
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 7);
        h.commit(8);
        answer.send(false).unwrap();
        for _ in 0..3 {
            let (position, answer) = h.next_send().await;
            assert_eq!(position, 8);
            answer.send(false).unwrap();
        }
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 8);
        answer.send(true).unwrap();
        assert!(h.quiet().await, "sent once it went through");
        h.commit(9);
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 9, "and it keeps serving later commits");
        answer.send(true).unwrap();
    }

    #[tokio::test]
    async fn it_stops_when_the_pool_closes_after_a_last_try_for_what_is_unsent() {
        let mut h = start();
        h.commit(3);
        let (_, answer) = h.next_send().await;
        answer.send(false).unwrap();
        // While it waits to retry, the pool closes: one last try, then it lets go.
        h.shutdown.take().unwrap().send(()).unwrap();
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 3);
        answer.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut h.task).await.unwrap().unwrap();
        assert!(h.closed.load(std::sync::atomic::Ordering::SeqCst), "the connection was closed");
    }

    #[tokio::test]
    async fn it_stops_when_every_handle_is_gone_after_announcing_the_last_commit() {
        let mut h = start();
        h.commit(4);
        drop(h.latest.take());
        let (position, answer) = h.next_send().await;
        assert_eq!(position, 4);
        answer.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.task).await.unwrap().unwrap();
        assert!(h.closed.load(std::sync::atomic::Ordering::SeqCst));
    }
}
