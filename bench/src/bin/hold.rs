//! Holds many idle HTTP/1.1 keep-alive connections open against a server and reports the
//! server's memory while they are open.
//!
//! `hold --base http://ADDR --connections 1000 --pid PID [--interval 5] [--settle 3] [--duration 0]`
//! opens the connections (each sends `GET /health` and reads the answer, so the server has
//! really accepted and served it), re-sends that light request on every connection every
//! `--interval` seconds so nothing closes them as idle, waits `--settle` seconds, then prints one
//! tab-separated line `connections  vm_rss_kib  vm_hwm_kib  threads` read from
//! `/proc/PID/status`. With `--duration` above 0 it keeps the connections that many seconds more
//! (printing the line again at the end); with 0 it exits after the first line, closing them.
//! The file-descriptor limit (`ulimit -n`) must exceed the connection count.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(name = "hold", about = "Hold idle keep-alive connections and read the server's memory")]
struct Args {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    base: String,
    /// Connections to open and keep.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The server's process id, whose /proc/PID/status is read.
    #[arg(long)]
    pid: u32,
    /// Seconds between the light requests on each connection.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Seconds to wait after every connection is open before reading the memory.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds to keep the connections after the first reading (0: close them at once).
    #[arg(long, default_value_t = 0)]
    duration: u64,
}

/// VmRSS, VmHWM (KiB) and Threads of a process.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("{name} missing in /proc/{pid}/status"))
    };
    Ok(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")?, threads: field("Threads:")? })
}

/// The `host:port` of an `http://host:port[/...]` base.
fn authority(base: &str) -> anyhow::Result<&str> {
    let Some(rest) = base.strip_prefix("http://") else { bail!("--base must start with http://") };
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Sends one `GET /health` and reads the whole answer, keeping the connection open.
async fn ping(stream: &mut BufReader<TcpStream>, host: &str) -> anyhow::Result<()> {
    let request = format!("GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer {line:?}");
    }
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed mid-answer");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("bad content-length")?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(())
}

/// Opens one connection, answers `ready` after its first request, then pings every `interval`.
async fn hold(
    host: String,
    interval: Duration,
    ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let first = async {
        let stream = TcpStream::connect(&host).await?;
        let mut stream = BufReader::new(stream);
        ping(&mut stream, &host).await?;
        anyhow::Ok(stream)
    }
    .await;
    let mut stream = match first {
        Ok(stream) => {
            let _ = ready.send(Ok(())).await;
            stream
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return Ok(());
        }
    };
    drop(ready);
    loop {
        tokio::time::sleep(interval).await;
        ping(&mut stream, &host).await?;
    }
}

fn print(connections: usize, m: Memory) {
    println!("{connections}\t{}\t{}\t{}", m.rss_kib, m.hwm_kib, m.threads);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = authority(&args.base)?.to_string();
    memory(args.pid)?;
    let interval = Duration::from_secs(args.interval.max(1));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        tasks.spawn(hold(host.clone(), interval, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut open = 0usize;
    while let Some(result) = ready_rx.recv().await {
        result.context("opening a connection")?;
        open += 1;
    }
    if open != args.connections {
        bail!("only {open} of {} connections opened", args.connections);
    }
    eprintln!("holding {open} connections");
    let watch = async {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        print(open, memory(args.pid)?);
        if args.duration > 0 {
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
            print(open, memory(args.pid)?);
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = watch => done,
        Some(failed) = tasks.join_next() => {
            failed.context("a connection task panicked")??;
            bail!("a held connection ended")
        }
    }
}
