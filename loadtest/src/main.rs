//! `ledger-load`: a POS-like load generator for `ledgerd`, over its binary protocol.
//!
//! `ledger-load --addr HOST:PORT --credentials FILE --duration SECS --connections N …` drives
//! the server with an operation mix over customers drawn from a Zipf distribution, closed-loop
//! (as fast as the window allows) or open-loop (`--rate`), prints a progress line every second,
//! and at the end a report: throughput, outcomes by status, latency percentiles, and a chart
//! of throughput and latency over time (SVG). `--json` makes the last line of stdout one JSON
//! object. `ledger-load verify` checks balances against an `--ack-log`. `ledger-load admin`
//! loads the admin HTTP API instead (customer reads and history pages, a scrape a second).
//!
//! Exit codes: 0 done (or verified), 1 the run failed or balances differ, 2 usage, 3 the
//! server could not be reached.

mod acklog;
mod admin;
mod driver;
mod report;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ledger_protocol::Credentials;
use ledger_protocol::client::Client;

use crate::report::{Report, Totals};
use crate::workload::{Mix, Workload};

/// POS-like load for ledgerd over its binary protocol (loopback addresses only, bounded
/// duration).
///
/// Exit codes: 0 done, 1 the run failed or `verify` found differences, 2 usage, 3 the server
/// could not be reached.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks through the protocol that every customer's balance equals the sum of its
    /// acknowledged deltas in an ack log (exact when the load was the only writer).
    Verify(VerifyArgs),
    /// Load on the admin HTTP API: customer reads and history pages of random customers at a
    /// fixed rate (or closed loop), and a `/metrics` scrape every second.
    Admin(admin::AdminArgs),
}

#[derive(Debug, Args)]
struct Connection {
    /// The server's POS address (a loopback address).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The credentials file (ledgerd writes `<data-dir>/credentials.toml` on first start).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// The terminal to act as [default: the first in the credentials file].
    #[arg(long)]
    terminal: Option<u32>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    connection: Connection,
    /// Seconds to send for (1..=86400).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: Option<u64>,
    /// Connections (1..=4096).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Requests kept in flight per connection (at most the server's in_flight_max).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    in_flight: u64,
    /// Open-loop: operations per second over all connections; without it, closed-loop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    rate: Option<u64>,
    /// Customers, ids 1..=N (at most 2^53).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=(1 << 53)))]
    customers: u64,
    /// Zipf exponent of customer popularity (0: uniform; 1: the k-th most popular customer is
    /// drawn 1/k as often as the first).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Operations per request (at most the server's batch_ops_max).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    batch: u64,
    /// Operation mix in percent: purchase, basket (a purchase of 1..=8 lines), redeem,
    /// balance, hold (→ capture or void), transfer, history, ping; or `loyalty` (baskets,
    /// redemptions spanning lots, holds, transfers, balances).
    #[arg(long, default_value_t = Mix::default())]
    mix: Mix,
    /// Before the timed run, each customer makes a purchase of this many minor currency units
    /// (so redemptions and transfers have points to spend).
    #[arg(long)]
    preload: Option<u64>,
    /// Random seed (the same seed draws the same operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append every acknowledged write to this file (see `verify`).
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Where to draw the chart of throughput and latency over time (SVG).
    #[arg(long, default_value = "ledger-load.svg")]
    chart: PathBuf,
    /// Async runtime threads of the load generator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    connection: Connection,
    /// The ack log written by `--ack-log`.
    #[arg(long)]
    ack_log: PathBuf,
    /// Seconds to keep re-reading balances that differ (cross-shard transfers in flight).
    #[arg(long, default_value_t = 30)]
    settle: u64,
}

/// An error with an exit code.
struct Failure(u8, anyhow::Error);

fn usage(error: anyhow::Error) -> Failure {
    Failure(2, error)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = usize::try_from(cli.run.threads).unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledger-load: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Some(Command::Verify(args)) => verify(args).await,
            Some(Command::Admin(args)) => admin::run(args).await.map_err(|error| Failure(1, error)),
            None => run(cli.run).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, error)) => {
            eprintln!("ledger-load: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// The address, terminal and secret, checked.
fn connection(args: &Connection) -> Result<(SocketAddr, u32, Vec<u8>), Failure> {
    let addr = args.addr.ok_or_else(|| usage(anyhow::anyhow!("--addr is required")))?;
    if !addr.ip().is_loopback() {
        return Err(usage(anyhow::anyhow!(
            "{addr} is not a loopback address: ledger-load only drives servers on this machine"
        )));
    }
    let path = args
        .credentials
        .as_ref()
        .ok_or_else(|| usage(anyhow::anyhow!("--credentials is required")))?;
    let credentials = Credentials::load(path).map_err(|error| usage(error.into()))?;
    let terminal = match args.terminal {
        Some(id) => credentials.enabled().find(|t| t.id == id).ok_or_else(|| {
            usage(anyhow::anyhow!("terminal {id} is not enabled in {}", path.display()))
        })?,
        None => credentials
            .enabled()
            .next()
            .ok_or_else(|| usage(anyhow::anyhow!("no enabled terminal in {}", path.display())))?,
    };
    Ok((addr, terminal.id, terminal.secret.clone()))
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let (addr, terminal, secret) = connection(&args.connection)?;
    let duration = args.duration.ok_or_else(|| usage(anyhow::anyhow!("--duration is required")))?;
    if !(0.0..=10.0).contains(&args.zipf) {
        return Err(usage(anyhow::anyhow!("--zipf must be within 0..=10")));
    }
    let connections = usize::try_from(args.connections).unwrap_or(1);
    let ack_log = match &args.ack_log {
        Some(path) => {
            Some(Arc::new(acklog::AckLog::open(path, terminal).map_err(|e| Failure(1, e))?))
        }
        None => None,
    };
    let mut key_prefix = [0u8; 8];
    getrandom_fill(&mut key_prefix);
    let key_prefix = u64::from_le_bytes(key_prefix);

    if let Some(amount) = args.preload {
        preload(addr, terminal, &secret, args.customers, amount, key_prefix, ack_log.as_deref())
            .await?;
    }

    let totals = Arc::new(Totals::new(usize::try_from(duration).unwrap_or(0)));
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(duration);
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let per_connection_rate = args.rate.map(|rate| rate as f64 / connections as f64);
    let mut tasks = tokio::task::JoinSet::new();
    let slots: Vec<Arc<driver::PaceSlot>> =
        (0..connections).map(|_| Arc::new(driver::PaceSlot::default())).collect();
    let pacer = args.rate.map(|_| driver::Pacer::start(slots.clone(), start));
    for (index, slot) in slots.into_iter().enumerate() {
        let plan = driver::Plan {
            addr,
            terminal,
            secret: secret.clone(),
            in_flight: usize::try_from(args.in_flight).unwrap_or(1),
            batch: usize::try_from(args.batch).unwrap_or(1),
            rate: per_connection_rate,
            start,
            deadline,
            drain: Duration::from_secs(10),
            pace: args.rate.map(|_| slot),
        };
        // Each connection draws its own stream of operations and keys.
        let workload = Workload::new(
            args.mix.clone(),
            args.customers,
            args.zipf,
            args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64),
            key_prefix.wrapping_add(1 + index as u64),
        );
        let totals = Arc::clone(&totals);
        let ack_log = ack_log.clone();
        tasks.spawn(driver::run(plan, workload, totals, ack_log));
    }
    let progress = tokio::spawn(progress(Arc::clone(&totals), start, duration));
    let mut unsent = 0;
    let mut failures = 0;
    let mut unreachable = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(outcome)) => {
                unsent += outcome.unsent;
                failures += u64::from(outcome.failed);
            }
            Ok(Err(error)) => {
                failures += 1;
                unreachable.get_or_insert(error);
            }
            Err(error) => {
                failures += 1;
                unreachable.get_or_insert(error.into());
            }
        }
    }
    progress.abort();
    drop(pacer);
    let elapsed = start.elapsed().min(Duration::from_secs(duration) + Duration::from_secs(10));
    if failures == connections as u64
        && let Some(error) = unreachable
    {
        return Err(Failure(3, error.context(format!("cannot run load against {addr}"))));
    }
    let settings = serde_json::json!({
        "addr": addr.to_string(),
        "connections": connections,
        "in_flight": args.in_flight,
        "batch": args.batch,
        "rate": args.rate,
        "customers": args.customers,
        "zipf": args.zipf,
        "mix": args.mix.to_string(),
        "duration_s": duration,
        "unsent": unsent,
        "failed_connections": failures,
    });
    let report = Report::new(&totals, elapsed, settings);
    println!("{}", report.text());
    report
        .chart(&args.chart)
        .map_err(|error| Failure(1, error.context("cannot draw the chart")))?;
    println!("chart: {}", args.chart.display());
    if args.json {
        println!("{}", report.json());
    }
    if failures > 0 {
        return Err(Failure(1, anyhow::anyhow!("{failures} of {connections} connections failed")));
    }
    Ok(())
}

fn getrandom_fill(bytes: &mut [u8]) {
    // The key prefix only has to differ between runs: without system randomness, the clock
    // and the process id will do.
    if getrandom::fill(bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = nanos ^ u128::from(std::process::id()) << 64;
        for (byte, source) in bytes.iter_mut().zip(seed.to_le_bytes()) {
            *byte = source;
        }
    }
}

/// Gives every customer a purchase of `amount` before the timed run.
async fn preload(
    addr: SocketAddr,
    terminal: u32,
    secret: &[u8],
    customers: u64,
    amount: u64,
    key_prefix: u64,
    ack_log: Option<&acklog::AckLog>,
) -> Result<(), Failure> {
    let client = Client::connect(addr, terminal, secret).await.map_err(|error| {
        Failure(3, anyhow::Error::from(error).context(format!("cannot connect to {addr}")))
    })?;
    let batch = u64::from(client.welcome().batch_ops_max).clamp(1, 4096);
    let mut workload = Workload::new(Mix::default(), customers, 0.0, 0, key_prefix);
    let started = std::time::Instant::now();
    let mut first = 1;
    let mut calls = tokio::task::JoinSet::new();
    while first <= customers {
        let last = (first + batch - 1).min(customers);
        let sent: Vec<_> =
            (first..=last).map(|customer| workload.purchase(customer, amount)).collect();
        let client = client.clone();
        calls.spawn(async move {
            let ops: Vec<_> = sent.iter().map(|s| s.op).collect();
            let results = client.call(&ops).await;
            (sent, results)
        });
        if calls.len() >= 16 {
            preload_answer(calls.join_next().await, ack_log)?;
        }
        first = last + 1;
    }
    while let Some(joined) = calls.join_next().await {
        preload_answer(Some(joined), ack_log)?;
    }
    eprintln!(
        "ledger-load: preloaded {customers} customers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

type PreloadCall = (
    Vec<workload::Sent>,
    Result<Vec<ledger_protocol::OpResult>, ledger_protocol::client::ClientError>,
);

fn preload_answer(
    joined: Option<Result<PreloadCall, tokio::task::JoinError>>,
    ack_log: Option<&acklog::AckLog>,
) -> Result<(), Failure> {
    let Some(joined) = joined else { return Ok(()) };
    let (sent, results) = joined.map_err(|error| Failure(1, error.into()))?;
    let results =
        results.map_err(|error| Failure(1, anyhow::Error::from(error).context("preload")))?;
    let mut lines = String::new();
    for (sent, result) in sent.iter().zip(&results) {
        match result.committed() {
            Some(committed) => {
                acklog::acknowledged(&mut lines, sent, 0, committed.tx_id, committed.points);
            }
            None => {
                return Err(Failure(1, anyhow::anyhow!("preload purchase refused: {result:?}")));
            }
        }
    }
    if let Some(log) = ack_log {
        log.append(&lines).map_err(|error| Failure(1, error))?;
    }
    Ok(())
}

/// Prints a progress line every second until aborted.
async fn progress(totals: Arc<Totals>, start: tokio::time::Instant, duration: u64) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = 0;
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let answered = totals.answered.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs();
        let line = format!(
            "[{elapsed:>4}/{duration} s] {:>9} ops/s  answered {answered}  ok {}  errors {}",
            answered - last,
            totals.ok.load(Ordering::Relaxed),
            totals.errors.load(Ordering::Relaxed),
        );
        last = answered;
        if terminal {
            eprint!("\r{line}    ");
        } else {
            eprintln!("{line}");
        }
    }
}

async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let (addr, terminal, secret) = connection(&args.connection)?;
    let parsed = acklog::parse(&args.ack_log).map_err(|error| Failure(1, error))?;
    let acknowledged = parsed.acknowledged;
    let in_doubt = parsed.in_doubt.len();
    let verdict = acklog::verify(addr, terminal, &secret, parsed, Duration::from_secs(args.settle))
        .await
        .map_err(|error| Failure(3, error))?;
    println!(
        "verify: {} customers, {acknowledged} acknowledged deltas, {in_doubt} writes in doubt ({} committed)",
        verdict.customers, verdict.settled
    );
    if verdict.mismatches.is_empty() {
        println!("verify: every balance equals the sum of its acknowledged deltas");
        return Ok(());
    }
    for (customer, expected, actual) in &verdict.mismatches {
        println!("mismatch: customer {customer}: expected {expected}, ledger has {actual}");
    }
    Err(Failure(1, anyhow::anyhow!("balances differ from the acknowledged writes")))
}
