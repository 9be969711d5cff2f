//! Projection lag between two scrapes of `/metrics`: for each projection, the events it applied
//! in between and the p50/p99 of `projection_commit_lag_seconds` (from an event's recording to the
//! commit of the batch that applied it), from the difference of the histogram's buckets.
//!
//! `lag BEFORE AFTER` prints tab-separated lines: `projection`, `events`, `p50_ms`, `p99_ms`.

use anyhow::{bail, Context};
use moviestore_bench::{bucket_delta, bucket_quantile, histogram_buckets};

const HISTOGRAM: &str = "projection_commit_lag_seconds";

fn main() -> anyhow::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let [before, after] = paths.as_slice() else {
        bail!("usage: lag BEFORE AFTER (two scrapes of /metrics)");
    };
    let read = |path: &str| std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
    let before = histogram_buckets(&read(before)?, HISTOGRAM, "projection");
    let after = histogram_buckets(&read(after)?, HISTOGRAM, "projection");
    println!("projection\tevents\tp50_ms\tp99_ms");
    for (projection, buckets) in &after {
        let delta = bucket_delta(before.get(projection).map_or(&[][..], Vec::as_slice), buckets);
        let events = delta.last().map_or(0, |(_, n)| *n);
        let ms = |q: f64| bucket_quantile(&delta, q).map_or(String::new(), |s| format!("{:.3}", s * 1000.0));
        println!("{projection}\t{events}\t{}\t{}", ms(0.5), ms(0.99));
    }
    Ok(())
}
