//! `ledger-load admin`: load on ledgerd's admin HTTP API (docs/admin-api.md): customer reads
//! and history pages of random customers, at a fixed open-loop rate or closed-loop at a fixed
//! concurrency, and a `/metrics` scrape every second, over loopback, for a bounded time.
//! HTTP/1.1 is written by hand over kept-alive TCP connections (at most `--concurrency`): the
//! crate stays free of an HTTP client stack, and a request is a real socket round trip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};

/// `ledger-load admin` arguments.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API's address (a loopback address).
    #[arg(long)]
    pub addr: SocketAddr,
    /// A bearer token (auditor or above).
    #[arg(long, env = "LEDGER_ADMIN_TOKEN")]
    pub token: String,
    /// Requests per second, open loop; 0 for closed loop at `--concurrency`.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Requests in flight at most (the closed loop's concurrency).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// Seconds to run (1..=3600).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Customers chosen from (ids 0..customers).
    #[arg(long, default_value_t = 100_000)]
    pub customers: u64,
    /// Print one JSON line at the end.
    #[arg(long)]
    pub json: bool,
}

/// Idle keep-alive connections to the API.
type Pool = Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>>;

/// One GET on a kept-alive connection (a new one when none is idle): the status, or an
/// error. The answer is read to the end of its `Content-Length`.
async fn get(addr: SocketAddr, path: &str, token: &str, pool: &Pool) -> std::io::Result<u16> {
    let idle = pool.lock().expect("pool lock").pop();
    let mut stream = match idle {
        Some(stream) => stream,
        None => tokio::net::TcpStream::connect(addr).await?,
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        answer.extend_from_slice(&chunk[..read]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            break (end + 4, length);
        }
    };
    while answer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::other("the answer was cut short"));
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    let status = answer
        .get(9..12)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    pool.lock().expect("pool lock").push(stream);
    Ok(status)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    not_found: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    scrapes: AtomicU64,
}

/// Runs the load and prints what it measured.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.addr.ip().is_loopback(), "--addr must be a loopback address");
    anyhow::ensure!((1..=3600).contains(&args.duration), "--duration must be 1..=3600");
    anyhow::ensure!((1..=4096).contains(&args.concurrency), "--concurrency must be 1..=4096");
    anyhow::ensure!(args.customers > 0, "--customers must be at least 1");
    let token: Arc<str> = args.token.clone().into();
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let counts = Arc::new(Counts::default());
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let pool: Pool = Arc::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    // The scrape every second.
    let scraper = {
        let (token, counts) = (Arc::clone(&token), Arc::clone(&counts));
        let addr = args.addr;
        let pool: Pool = Arc::default();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                tick.tick().await;
                if get(addr, "/metrics", &token, &pool).await.is_ok() {
                    counts.scrapes.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut tick = (args.rate > 0)
        .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate))));
    let mut sent = 0u64;
    let mut seed = u64::from(std::process::id()) | 1;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        if let Some(tick) = &mut tick {
            tick.tick().await;
        }
        let permit = Arc::clone(&slots).acquire_owned().await?;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let customer = seed % args.customers;
        let path = if sent.is_multiple_of(2) {
            format!("/v1/customers/{customer}")
        } else {
            format!("/v1/customers/{customer}/history?limit=20")
        };
        sent += 1;
        let (token, counts, latency) =
            (Arc::clone(&token), Arc::clone(&counts), Arc::clone(&latency));
        let (addr, pool) = (args.addr, Arc::clone(&pool));
        tasks.spawn(async move {
            let at = Instant::now();
            let outcome = get(addr, &path, &token, &pool).await;
            let micros = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
            match outcome {
                Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
                Ok(404) => counts.not_found.fetch_add(1, Ordering::Relaxed),
                Ok(_) => counts.other.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
            };
            let _ = latency.lock().await.record(micros.min(60_000_000));
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    scraper.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let latency = latency.lock().await;
    let answered = latency.len();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "rate": args.rate,
        "concurrency": args.concurrency,
        "elapsed_s": elapsed,
        "requests_per_s": answered as f64 / elapsed,
        "ok": load(&counts.ok),
        "not_found": load(&counts.not_found),
        "other_status": load(&counts.other),
        "errors": load(&counts.errors),
        "scrapes": load(&counts.scrapes),
        "p50_us": latency.value_at_quantile(0.5),
        "p99_us": latency.value_at_quantile(0.99),
        "p999_us": latency.value_at_quantile(0.999),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "admin: {:.0} requests/s over {elapsed:.1} s ({} ok, {} not found, {} other, {} errors, {} scrapes); latency µs p50 {} p99 {} p99.9 {}",
            answered as f64 / elapsed,
            load(&counts.ok),
            load(&counts.not_found),
            load(&counts.other),
            load(&counts.errors),
            load(&counts.scrapes),
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
        );
    }
    Ok(())
}
