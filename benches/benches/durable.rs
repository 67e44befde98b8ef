//! Durable throughput of the whole engine in process: client threads submit batches of
//! transactions to all shards, and each transaction counts only when it is answered, which
//! happens after its WAL record is fdatasync'd. Not a criterion benchmark: it runs for a fixed
//! time and reports transactions per second and answer latency percentiles.
//!
//! Run: `cargo bench -p ledger-benches --bench durable` (env: DURABLE_SECONDS, DURABLE_SHARDS,
//! DURABLE_CLIENTS, DURABLE_BATCH, DURABLE_IN_FLIGHT, DURABLE_CUSTOMERS, DURABLE_DIR).
//!
//! `DURABLE_WORKLOADS` (default `earn`) lists workloads run one after the other, each on a
//! fresh engine, with the ratio of each to the first: `earn` (a posting from issuance to a
//! customer), `flat` (purchases of 1..=4 lines priced by a flat rule set of 1 point per 1.00)
//! and `rules` (the same baskets priced by `benchmark_rules`: five category multipliers, two
//! running promotions, four tiers, daily and monthly caps, cashback).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ledger_engine::testing::loyalty::{Loyalty, benchmark_rules};
use ledger_engine::{Engine, EngineConfig, ReplySink, Response, WalRetention};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A client's sink: counts answers and wakes the client when a batch completes.
#[derive(Default)]
struct Counter {
    answered: Mutex<u64>,
    wake: Condvar,
    committed: AtomicU64,
    rejected: AtomicU64,
}

impl ReplySink for Counter {
    fn deliver(&self, replies: Vec<(u64, Response)>) {
        let mut committed = 0;
        for (_, response) in &replies {
            if matches!(response, Response::Committed(_)) {
                committed += 1;
            }
        }
        self.committed.fetch_add(committed, Ordering::Relaxed);
        self.rejected.fetch_add(replies.len() as u64 - committed, Ordering::Relaxed);
        *self.answered.lock().unwrap() += replies.len() as u64;
        self.wake.notify_one();
    }
}

/// What the clients submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Earn,
    Flat,
    Rules,
}

fn main() {
    let names = std::env::var("DURABLE_WORKLOADS").unwrap_or_else(|_| "earn".to_string());
    let mut first = None;
    for name in names.split(',') {
        let workload = match name.trim() {
            "earn" => Workload::Earn,
            "flat" => Workload::Flat,
            "rules" => Workload::Rules,
            other => panic!("unknown workload {other:?} (earn, flat, rules)"),
        };
        let rate = run(workload);
        let base = *first.get_or_insert(rate);
        println!("workload {name}: {rate:.0} durable tx/s, ratio to the first {:.2}", rate / base);
    }
}

fn run(workload: Workload) -> f64 {
    let seconds = env("DURABLE_SECONDS", 10);
    let shards = env("DURABLE_SHARDS", 2) as u16;
    let clients = env("DURABLE_CLIENTS", 4);
    let batch = env("DURABLE_BATCH", 256);
    let in_flight = env("DURABLE_IN_FLIGHT", 8);
    let customers = env("DURABLE_CUSTOMERS", 1_000_000);
    let dir = match std::env::var("DURABLE_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir_in(".").unwrap(),
    };
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(shards);
    config.tuning.wal_retention = WalRetention::DeleteCovered;
    config.limits.idempotency_keys_max = env("DURABLE_KEYS", 2 << 20) as usize;
    config.tuning.snapshot_every_records = 20_000_000;
    config.tuning.snapshot_on_shutdown = false;
    let engine = Arc::new(Engine::open(config).unwrap());
    let loyalty = Loyalty::define(&engine);
    if workload != Workload::Earn {
        let accounts = loyalty.define_programme(&engine);
        let now = ledger_engine::clock::Clock::now(&ledger_engine::clock::SystemClock);
        let rules = match workload {
            Workload::Rules => benchmark_rules(now),
            _ => ledger_engine::loyalty::RuleSet::flat(1, 100),
        };
        engine.define_rules(rules, accounts, None).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let engine = Arc::clone(&engine);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let counter = Arc::new(Counter::default());
                let sink: Arc<dyn ReplySink> = counter.clone();
                let mut rng = (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut key = u128::from(client) << 64;
                let mut submitted = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Keep `in_flight` batches outstanding.
                    let answered = *counter.answered.lock().unwrap();
                    if submitted - answered >= in_flight * batch {
                        let guard = counter.answered.lock().unwrap();
                        let _ = counter.wake.wait_timeout_while(
                            guard,
                            Duration::from_millis(50),
                            |a| submitted - *a >= in_flight * batch,
                        );
                        continue;
                    }
                    let commands = (0..batch)
                        .map(|tag| {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            key += 1;
                            let customer = rng % customers;
                            if workload == Workload::Earn {
                                return (tag, loyalty.earn(key, customer, 1 + rng % 100));
                            }
                            // 1..=4 lines over the rules' categories, 1.00 to 50.00 each.
                            let lines = 1 + (rng >> 8) % 4;
                            let basket: Vec<(u16, u64)> = (0..lines)
                                .map(|line| {
                                    let bits = rng >> (16 + 8 * line);
                                    ([10, 20, 30, 40, 50][(bits % 5) as usize], 100 + bits % 4_900)
                                })
                                .collect();
                            let store = 1 + ((rng >> 60) % 10) as u32;
                            (tag, loyalty.purchase(key, customer, store, &basket))
                        })
                        .collect();
                    engine.submit(&sink, commands);
                    submitted += batch;
                }
                let guard = counter.answered.lock().unwrap();
                let _ = counter
                    .wake
                    .wait_timeout_while(guard, Duration::from_secs(10), |a| *a < submitted);
                (
                    counter.committed.load(Ordering::Relaxed),
                    counter.rejected.load(Ordering::Relaxed),
                )
            })
        })
        .collect();
    // Warm up, then measure over the window.
    std::thread::sleep(Duration::from_secs(1));
    let records_at = |engine: &Engine| engine.stats().iter().map(|s| s.records).sum::<u64>();
    let syncs_at = |engine: &Engine| engine.stats().iter().map(|s| s.syncs).sum::<u64>();
    let (records_0, syncs_0, t0) = (records_at(&engine), syncs_at(&engine), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (records_1, syncs_1, elapsed) = (records_at(&engine), syncs_at(&engine), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    let mut rejected = 0;
    for thread in threads {
        let (c, r) = thread.join().unwrap();
        committed += c;
        rejected += r;
    }
    let rate = (records_1 - records_0) as f64 / elapsed.as_secs_f64();
    let syncs = (syncs_1 - syncs_0) as f64 / elapsed.as_secs_f64();
    println!(
        "shards={shards} clients={clients} batch={batch} in_flight={in_flight}: {rate:.0} durable tx/s, {syncs:.0} fdatasync/s, {:.0} tx per sync; total committed {committed}, rejected {rejected}, run {:?}",
        rate / syncs.max(1.0),
        started.elapsed()
    );
    let stats = engine.stats();
    let keys: u64 = stats.iter().map(|s| s.idempotency_keys).sum();
    println!(
        "idempotency keys {keys}, evicted early {}",
        stats.iter().map(|s| s.idempotency_evicted_early).sum::<u64>()
    );
    let sum = |field: fn(&ledger_engine::ShardStats) -> u64| stats.iter().map(field).sum::<u64>();
    println!(
        "key index: {} runs written ({} keys, {:.2} s writing), {} on disk; {} lookups, {} \
         block reads; the shard waited for the indexer {} times ({:.3} s)",
        sum(|s| s.key_index_runs_written),
        sum(|s| s.key_index_keys_written),
        sum(|s| s.key_index_write_nanos) as f64 / 1e9,
        sum(|s| s.key_index_runs),
        sum(|s| s.key_index_lookups),
        sum(|s| s.key_index_block_reads),
        sum(|s| s.key_index_waits),
        sum(|s| s.key_index_wait_nanos) as f64 / 1e9,
    );
    if rejected > 0 {
        println!("note: {rejected} requests were refused (see the engine's statuses)");
    }
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
    rate
}
