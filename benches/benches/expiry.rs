//! The expiry sweep under load: a million lots reach their midnight at once while a client
//! keeps buying, and the sweep expires them a bounded number of customers per shard turn.
//! Reports the lots expired per second and what the sweep does to the client's latency: the
//! same client's batch latency during the sweep and for 3 s after it (the baseline, same run),
//! p50/p99/max. Not a criterion benchmark: it runs a fixed scenario.
//!
//! Run: `cargo bench -p ledger-benches --bench expiry` (env: EXPIRY_LOTS, default 1,000,000;
//! EXPIRY_SHARDS, default 2; EXPIRY_PER_TURN, customers expired per shard turn, a comma list,
//! default 256; EXPIRY_BATCH, purchases per client batch, default 64; EXPIRY_DIR).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ledger_engine::clock::ManualClock;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::{AccountId, Engine, EngineConfig, Response, Timestamp, WalRetention};

const DAY: u64 = 86_400_000_000_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let per_turn: Vec<usize> = std::env::var("EXPIRY_PER_TURN")
        .unwrap_or_else(|_| "256".to_string())
        .split(',')
        .map(|n| n.trim().parse().expect("a number"))
        .collect();
    println!(
        "| customers per turn | lots | sweep s | lots/s | batches during | p50 µs | p99 | max | batches after | p50 µs | p99 | max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for per_turn in per_turn {
        run(per_turn);
    }
}

fn run(per_turn: usize) {
    let lots = env("EXPIRY_LOTS", 1_000_000);
    let shards = env("EXPIRY_SHARDS", 2) as u16;
    let batch = env("EXPIRY_BATCH", 64);
    let dir = match std::env::var("EXPIRY_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir_in(".").unwrap(),
    };
    // 2024-01-10T12:00:00Z; the lots expire at 00:00 on 2026-01-11.
    let start = Timestamp(1_704_888_000_000_000_000);
    let clock = Arc::new(ManualClock::new(start));
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(shards);
    config.clock = clock.clone();
    config.tuning.wal_retention = WalRetention::DeleteCovered;
    config.tuning.snapshot_every_records = 50_000_000;
    config.tuning.snapshot_on_shutdown = false;
    config.tuning.lots_expired_per_turn = per_turn;
    config.limits.idempotency_keys_max = 4 << 20;
    let engine = Arc::new(Engine::open(config).unwrap());
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(RuleSet::flat(1, 1), accounts, None).unwrap();
    // One lot of 7 points for each of `lots` customers, all on one day.
    let mut key = 0u128;
    for first in (0..lots).step_by(8_192) {
        let commands = (first..(first + 8_192).min(lots))
            .map(|customer| {
                key += 1;
                loyalty.purchase(key, customer, 1, &[(0, 7)])
            })
            .collect();
        let answers = execute_all(&engine, commands);
        assert!(answers.iter().all(|a| matches!(a, Response::Committed(_))));
    }

    // Midnight, two years on: every lot is due.
    clock.set(start.plus_nanos(732 * DAY));
    let swept_from = Instant::now();
    // The client: purchases by other customers, one batch in flight, latency per batch.
    let after = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let during = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let sweeping = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (engine, after, during) = (engine.clone(), after.clone(), during.clone());
        let (sweeping, stop) = (sweeping.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut key = 1u128 << 64;
            let mut customer = lots;
            while !stop.load(Ordering::Relaxed) {
                let commands = (0..batch)
                    .map(|_| {
                        key += 1;
                        customer += 1;
                        loyalty.purchase(key, lots + customer % 100_000, 1, &[(0, 500)])
                    })
                    .collect();
                let started = Instant::now();
                let answers = execute_all(&engine, commands);
                let micros = started.elapsed().as_micros() as u64;
                assert!(answers.iter().all(|a| matches!(a, Response::Committed(_))));
                let histogram = if sweeping.load(Ordering::Relaxed) { &during } else { &after };
                histogram
                    .lock()
                    .unwrap()
                    .record(micros.max(1))
                    .expect("an auto-resizing histogram");
            }
        })
    };
    let breakage = AccountId::new(accounts.breakage, 0);
    let expired =
        |engine: &Engine| engine.account_total(breakage).map_or(0, |a| a.balance_posted());
    let total = 7 * i128::from(lots);
    while expired(&engine) < total {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sweep = swept_from.elapsed();
    sweeping.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (after, during) = (after.lock().unwrap(), during.lock().unwrap());
    println!(
        "| {per_turn} | {lots} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
        sweep.as_secs_f64(),
        lots as f64 / sweep.as_secs_f64(),
        during.len(),
        during.value_at_quantile(0.5),
        during.value_at_quantile(0.99),
        during.max(),
        after.len(),
        after.value_at_quantile(0.5),
        after.value_at_quantile(0.99),
        after.max(),
    );
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
}
