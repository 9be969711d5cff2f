//! Benchmarks of moviestore: latency records and the report the load generator prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What one endpoint saw during a run: every successful latency, the failures, and the
/// answers the scenario expects and retries (such as `charge-pending` on a payment).
#[derive(Debug, Default, Clone)]
pub struct Endpoint {
    /// Latencies of the answers that counted, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Answers the scenario did not expect (transport errors, unexpected statuses).
    pub errors: u64,
    /// Answers the scenario expected and retried; not errors, not in the latencies.
    pub retries: u64,
}

/// Latencies by endpoint (its route template), as one worker or the whole run saw them.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub endpoints: BTreeMap<&'static str, Endpoint>,
    /// Named counters beside the requests (cycles, cache hits, ...).
    pub counts: BTreeMap<&'static str, u64>,
}

impl Recorder {
    pub fn ok(&mut self, endpoint: &'static str, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.endpoints.entry(endpoint).or_default().latencies_us.push(us);
    }

    pub fn error(&mut self, endpoint: &'static str) {
        self.endpoints.entry(endpoint).or_default().errors += 1;
    }

    pub fn retry(&mut self, endpoint: &'static str) {
        self.endpoints.entry(endpoint).or_default().retries += 1;
    }

    pub fn count(&mut self, name: &'static str) {
        self.add(name, 1);
    }

    pub fn add(&mut self, name: &'static str, n: u64) {
        *self.counts.entry(name).or_default() += n;
    }

    pub fn merge(&mut self, other: Recorder) {
        for (name, n) in other.counts {
            *self.counts.entry(name).or_default() += n;
        }
        for (name, theirs) in other.endpoints {
            let ours = self.endpoints.entry(name).or_default();
            ours.latencies_us.extend(theirs.latencies_us);
            ours.errors += theirs.errors;
            ours.retries += theirs.retries;
        }
    }

    pub fn errors(&self) -> u64 {
        self.endpoints.values().map(|e| e.errors).sum()
    }

    /// One row per endpoint plus a total, over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Vec<Row> {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut rows: Vec<Row> = self
            .endpoints
            .iter()
            .map(|(name, e)| Row::new((*name).to_owned(), &e.latencies_us, e.errors, e.retries, secs))
            .collect();
        let requests = || self.endpoints.iter().filter(|(name, _)| !is_derived(name)).map(|(_, e)| e);
        let all: Vec<u64> = requests().flat_map(|e| e.latencies_us.iter().copied()).collect();
        let retries = requests().map(|e| e.retries).sum();
        rows.push(Row::new("total".to_owned(), &all, self.errors(), retries, secs));
        rows
    }
}

/// A name in parentheses is a derived timing (spanning several requests), not an endpoint: it is
/// reported on its own line and left out of the total.
pub fn is_derived(name: &str) -> bool {
    name.starts_with('(')
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub endpoint: String,
    pub requests: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub retries: u64,
}

impl Row {
    fn new(endpoint: String, latencies_us: &[u64], errors: u64, retries: u64, secs: f64) -> Self {
        let mut sorted = latencies_us.to_vec();
        sorted.sort_unstable();
        let ms = |q: f64| percentile(&sorted, q).map_or(0.0, |us| us as f64 / 1000.0);
        Row {
            endpoint,
            requests: sorted.len() as u64,
            per_sec: sorted.len() as f64 / secs,
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
            errors,
            retries,
        }
    }
}

/// The nearest-rank percentile `q` (0..=100) of ascending `sorted` values; `None` when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| endpoint | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | retries |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.endpoint, r.requests, r.per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.errors, r.retries
        );
    }
    out
}

/// The rows as tab-separated lines (with a header) for scripts.
pub fn tsv(rows: &[Row]) -> String {
    let mut out =
        String::from("endpoint\trequests\tper_sec\tp50_ms\tp90_ms\tp99_ms\tmax_ms\terrors\tretries\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{}\t{}\t{:.1}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}",
            r.endpoint, r.requests, r.per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.errors, r.retries
        );
    }
    out
}

/// A histogram's cumulative buckets `(upper bound, count)` by the value of one label, read from a
/// Prometheus text scrape: `name_bucket{...,label="x",...,le="0.05"} 12`. Bounds ascend, `+Inf`
/// last.
pub fn histogram_buckets(scrape: &str, name: &str, label: &str) -> BTreeMap<String, Vec<(f64, u64)>> {
    let prefix = format!("{name}_bucket{{");
    let mut found: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label_value = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(series), Some(le)) = (label_value(label), label_value("le")) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let Ok(count) = value.trim().parse::<f64>() else { continue };
        if !bound.is_nan() {
            found.entry(series).or_default().push((bound, count as u64));
        }
    }
    for buckets in found.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    found
}

/// The observations between two scrapes of the same cumulative buckets: `after - before`, bound
/// by bound (a bound missing from `before` counts 0 there).
pub fn bucket_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(bound, n)| {
            let was = before.iter().find(|(b, _)| *b == bound).map_or(0, |(_, n)| *n);
            (bound, n.saturating_sub(was))
        })
        .collect()
}

/// The quantile `q` (0..=1) of cumulative buckets, interpolated linearly inside the bucket that
/// holds it (as Prometheus's `histogram_quantile` does); in the `+Inf` bucket, the highest finite
/// bound. `None` without observations.
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank && cumulative > below {
            if bound.is_infinite() {
                return Some(lower);
            }
            let share = (rank - below as f64) / (cumulative - below) as f64;
            return Some(lower + (bound - lower) * share.clamp(0.0, 1.0));
        }
        if bound.is_finite() {
            lower = bound;
        }
        below = cumulative;
    }
    Some(lower)
}

/// A pool on the migrated database `database_url` names (created when missing), which must hold
/// no row of `table` yet: benchmarks that fill a queue run on a scratch database, never on one
/// whose rows they would take for their own.
pub async fn scratch_database(database_url: &str, table: &str, rows: &str) -> anyhow::Result<sqlx::PgPool> {
    use anyhow::Context;
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions = database_url.parse().context("--database-url")?;
    let database = options.get_database().context("--database-url names no database")?.to_string();
    let mut admin = options.clone().database("postgres").connect().await.context("connecting to postgres")?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        sqlx::query(&format!("create database \"{}\"", database.replace('"', "\"\"")))
            .execute(&mut admin)
            .await?;
    }
    sqlx::Connection::close(admin).await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect_with(options).await?;
    sqlx::migrate!("../migrations").run(&pool).await.context("migrating")?;
    let already: i64 = sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(&pool).await?;
    if already > 0 {
        anyhow::bail!("{database} already holds {already} {rows}: use a scratch database");
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
    }

    #[test]
    fn merged_recorders_sum_up_and_total_covers_every_endpoint() {
        let mut a = Recorder::default();
        a.ok("GET /x", Duration::from_millis(1));
        a.ok("GET /x", Duration::from_millis(3));
        a.retry("POST /y");
        let mut b = Recorder::default();
        b.ok("GET /x", Duration::from_millis(2));
        b.ok("POST /y", Duration::from_millis(10));
        b.ok("(y to z)", Duration::from_millis(50));
        b.error("POST /y");
        a.count("cycles");
        b.count("cycles");
        a.merge(b);
        assert_eq!(a.counts["cycles"], 2);
        let rows = a.summary(Duration::from_secs(2));
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].endpoint.as_str(), rows[0].requests), ("(y to z)", 1));
        let x = &rows[1];
        assert_eq!((x.endpoint.as_str(), x.requests, x.errors), ("GET /x", 3, 0));
        assert!((x.per_sec - 1.5).abs() < 1e-9);
        assert!((x.p50_ms - 2.0).abs() < 1e-9 && (x.max_ms - 3.0).abs() < 1e-9);
        let y = &rows[2];
        assert_eq!((y.requests, y.errors, y.retries), (1, 1, 1));
        let total = &rows[3];
        assert_eq!(
            (total.endpoint.as_str(), total.requests, total.errors, total.retries),
            ("total", 4, 1, 1)
        );
        assert!((total.max_ms - 10.0).abs() < 1e-9);
        assert_eq!(a.errors(), 1);
    }

    const SCRAPE: &str = "\
# TYPE lag histogram
lag_bucket{projection=\"a\",le=\"0.01\"} 10
lag_bucket{projection=\"a\",le=\"0.05\"} 90
lag_bucket{projection=\"a\",le=\"+Inf\"} 100
lag_sum{projection=\"a\"} 3
lag_bucket{le=\"0.01\",projection=\"b\"} 0
lag_bucket{le=\"+Inf\",projection=\"b\"} 4
other_bucket{projection=\"a\",le=\"0.01\"} 7
";

    #[test]
    fn buckets_are_read_by_label_whatever_the_label_order() {
        let found = histogram_buckets(SCRAPE, "lag", "projection");
        assert_eq!(found.len(), 2);
        assert_eq!(found["a"], vec![(0.01, 10), (0.05, 90), (f64::INFINITY, 100)]);
        assert_eq!(found["b"], vec![(0.01, 0), (f64::INFINITY, 4)]);
    }

    #[test]
    fn quantiles_come_from_the_delta_between_two_scrapes() {
        let before = vec![(0.01, 10), (0.05, 90), (f64::INFINITY, 100)];
        let after = vec![(0.01, 110), (0.05, 240), (f64::INFINITY, 300)];
        let delta = bucket_delta(&before, &after);
        assert_eq!(delta, vec![(0.01, 100), (0.05, 150), (f64::INFINITY, 200)]);
        // 200 observations: the 50th percentile is the 100th, the last in the first bucket.
        assert!((bucket_quantile(&delta, 0.5).unwrap() - 0.01).abs() < 1e-12);
        // The 25th percentile is halfway through the first bucket (from 0).
        assert!((bucket_quantile(&delta, 0.25).unwrap() - 0.005).abs() < 1e-12);
        // The 62.5th (the 125th) is halfway through the second.
        assert!((bucket_quantile(&delta, 0.625).unwrap() - 0.03).abs() < 1e-12);
        // The 99th lies beyond every finite bound: the highest finite bound.
        assert!((bucket_quantile(&delta, 0.99).unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(bucket_quantile(&bucket_delta(&after, &after), 0.5), None);
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }

    #[test]
    fn empty_buckets_before_the_quantile_are_skipped() {
        let buckets = vec![(0.01, 0), (0.02, 0), (0.05, 4), (f64::INFINITY, 4)];
        let p50 = bucket_quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.035).abs() < 1e-12, "{p50}");
    }
}
