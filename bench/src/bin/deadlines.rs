//! How late timers fire when many fall due at once: opens `--timers` rentals (through the event
//! store, as the payments process manager does, so each sets its timer in its append
//! transaction) that all fall due `--lead-secs` from now, runs `--schedulers` due-date schedulers
//! as separate processes would, and reports the delay from the due time to the recording of each
//! `RentalOverdue` (its `recorded_at`, taken inside the transaction that commits it): p50, p99,
//! max. Exits 1 when a timer did not fire, or fired twice.
//!
//! It makes and migrates the database it is given; use a scratch one (bench/run.sh passes
//! `moviestore_bench`).
//!
//!   deadlines --database-url postgres://postgres@127.0.0.1:5432/moviestore_bench --timers 10000

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use clap::Parser;
use domain::loan::LoanPolicy;
use domain::rental::{Rental, RentalCommand};
use eventstore::{BatchCommand, EventStore, Metadata};
use projections::deadlines::Scheduler;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// The scratch database (created when missing, migrated).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How many timers fall due at the same instant.
    #[arg(long, default_value_t = 10_000)]
    timers: usize,
    /// How many schedulers race for them.
    #[arg(long, default_value_t = 2)]
    schedulers: usize,
    /// How far ahead of now the timers fall due (they are all set before that).
    #[arg(long, default_value_t = 5)]
    lead_secs: i64,
    /// The longest wait for every timer to fire.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = moviestore_bench::scratch_database(&args.database_url, "deadline", "timers").await?;

    // Arrange: every timer falls due at one instant, `lead_secs` from now.
    let loan = LoanPolicy::default();
    let due_at = (Utc::now() + chrono::Duration::seconds(args.lead_secs)).duration_round_secs();
    let rented_at = due_at - chrono::Duration::days(i64::from(loan.length_days()));
    let store = EventStore::new(pool.clone());
    let ids: Vec<Uuid> = (0..args.timers).map(|_| Uuid::now_v7()).collect();
    let opening = Instant::now();
    for chunk in ids.chunks(250) {
        let commands = chunk
            .iter()
            .map(|id| BatchCommand {
                aggregate_id: id.to_string(),
                command: RentalCommand::OpenRental {
                    movie_id: Uuid::now_v7(),
                    customer_id: Uuid::now_v7(),
                    rented_at,
                    loan,
                },
                metadata: Metadata { request_id: Some(format!("bench-{id}")), ..Metadata::default() },
            })
            .collect();
        store.execute_batch::<Rental>(commands).await?;
    }
    let set_in = opening.elapsed();
    if Utc::now() >= due_at {
        bail!("setting {} timers took {set_in:?}, past their due time: raise --lead-secs", args.timers);
    }

    // Act: the schedulers race; wait until every rental is overdue.
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..args.schedulers {
        let scheduler = Scheduler::new(pool.clone(), EventStore::new(pool.clone()));
        tasks.push(tokio::spawn(scheduler.run(shutdown.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let fired = loop {
        let fired: i64 = sqlx::query_scalar("select count(*) from events where event_type = 'RentalOverdue'")
            .fetch_one(&pool)
            .await?;
        if fired >= args.timers as i64 || Instant::now() >= deadline {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    for task in tasks {
        task.await?;
    }

    // Assert and report.
    let (streams, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "with d as (
             select aggregate_id,
                    extract(epoch from recorded_at - (payload->>'due_at')::timestamptz)::float8 as delay
               from events where event_type = 'RentalOverdue')
         select count(distinct aggregate_id),
                percentile_cont(0.5) within group (order by delay),
                percentile_cont(0.99) within group (order by delay),
                max(delay)
           from d",
    )
    .fetch_one(&pool)
    .await?;
    let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.3} s"));
    println!(
        "{} timers due at once ({} schedulers; set in {:.1} s): {fired} fired, delay from due time to \
         RentalOverdue p50 {}, p99 {}, max {}",
        args.timers,
        args.schedulers,
        set_in.as_secs_f64(),
        secs(p50),
        secs(p99),
        secs(max)
    );
    pool.close().await;
    if fired != args.timers as i64 || streams != fired {
        bail!("{fired} RentalOverdue on {streams} rentals for {} timers", args.timers);
    }
    Ok(())
}

/// Whole seconds, so the due time survives `timestamptz` exactly.
trait RoundSecs {
    fn duration_round_secs(self) -> Self;
}

impl RoundSecs for chrono::DateTime<Utc> {
    fn duration_round_secs(self) -> Self {
        use chrono::DurationRound;
        self.duration_trunc(chrono::Duration::seconds(1)).unwrap_or(self)
    }
}
