//! Storage benchmarks with a plain harness (each measures something criterion's repeated
//! sampling does not fit: a disk under sustained load, a multi-second recovery, a snapshot of
//! ten million accounts, bytes of memory):
//!
//! - `wal`: WAL append + group commit, for commit groups of 1 to 4,096 records: records/s,
//!   fdatasync/s and the latency of one group (write + fdatasync), p50/p99/max;
//! - `recovery`: replay speed of a WAL of `STORAGE_RECORDS` records (default 2,000,000);
//! - `snapshot`: clone (the shard's pause), encode + write + fsync, and load, for 1M and 10M
//!   customer accounts (`SNAPSHOT_ACCOUNTS=1000000` for one size);
//! - `memory`: bytes of heap per customer account, counted by a wrapping allocator;
//! - `loyalty-memory`: bytes of heap per loyalty member (points account, tier, cap counters,
//!   qualifying months, 4 open lots and their expiry-index entries), at 1M and 10M members
//!   (`LOYALTY_MEMBERS=…` for one size; `LOYALTY_DAYS`, default 4, days of purchases, one lot
//!   each), with and without a cashback account.
//!
//! Run: `cargo bench -p ledger-benches --bench storage [wal|recovery|snapshot|memory]`
//! (all by default). Files go to `STORAGE_DIR` (default: the current directory).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ledger_benches::{EarnRecords, ledger_with_loyalty};
use ledger_engine::recovery::{ShardPaths, recover_shard};
use ledger_engine::wal::payload;
use ledger_engine::wal::writer::{WalIdentity, WalWriter};
use ledger_engine::{Limits, ShardId, Timestamp};

/// Counts live heap bytes, so that memory per account is measured, not estimated.
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait; this one only counts")]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn scratch() -> tempfile::TempDir {
    let base = std::env::var("STORAGE_DIR").unwrap_or_else(|_| ".".to_string());
    tempfile::tempdir_in(base).unwrap()
}

/// Encoded, unsealed earn records, as a shard hands them to its writer.
fn encoded_records(count: usize) -> Vec<Vec<u8>> {
    let (ledger, classes) = ledger_with_loyalty(Limits::default());
    let mut generator = EarnRecords::new(classes, 1_000_000);
    generator
        .take(&ledger, count)
        .into_iter()
        .map(|(record, _)| {
            let mut bytes = Vec::new();
            payload::encode_record(&mut bytes, &record);
            bytes
        })
        .collect()
}

fn wal() {
    println!("## wal append + group commit (one writer, zero-filled 64 MiB segments)");
    println!(
        "| records per commit | records/s | commits/s | MB/s | commit p50 µs | p99 µs | max µs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let template = encoded_records(4096);
    let record_bytes: usize = template.iter().map(Vec::len).sum::<usize>() / template.len();
    for group in [1usize, 4, 16, 64, 256, 1024, 4096] {
        let dir = scratch();
        let identity =
            WalIdentity { shard: ShardId::new(0).unwrap(), shard_count: 1, cluster_id: 1 };
        let mut writer =
            WalWriter::open(dir.path(), identity, 64 << 20, None, Timestamp(1), None).unwrap();
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        let budget = Duration::from_secs(env("STORAGE_WAL_SECONDS", 3));
        let started = Instant::now();
        let mut records = 0u64;
        let mut lsn = 1u64;
        let mut buffer = Vec::with_capacity(group * 256);
        while started.elapsed() < budget {
            buffer.clear();
            for index in 0..group {
                let record = &template[index % template.len()];
                let at = buffer.len();
                buffer.extend_from_slice(record);
                // Renumber: the writer checks that LSNs follow on.
                buffer[at + 8..at + 16].copy_from_slice(&lsn.to_le_bytes());
                lsn += 1;
            }
            let commit = Instant::now();
            writer.append(&mut buffer, Timestamp(2)).unwrap();
            writer.sync().unwrap();
            histogram.record(commit.elapsed().as_micros() as u64).unwrap();
            records += group as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "| {group} | {:.0} | {:.0} | {:.1} | {} | {} | {} |",
            records as f64 / seconds,
            histogram.len() as f64 / seconds,
            (records as f64 * record_bytes as f64) / seconds / 1e6,
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max()
        );
    }
    println!("(records of {record_bytes} bytes: one-posting earns)\n");
}

fn recovery() {
    let count = env("STORAGE_RECORDS", 2_000_000) as usize;
    println!("## recovery: replay of {count} one-posting earns, no snapshot");
    let dir = scratch();
    let (mut ledger, classes) = ledger_with_loyalty(Limits::default());
    let mut generator = EarnRecords::new(classes, 1_000_000);
    // A real data directory (its meta file holds the replay rules), released at once.
    let semantics = ledger_engine::EngineConfig::new(dir.path()).semantics();
    let cluster_id = ledger_engine::datadir::DataDir::open(dir.path(), Some(1), semantics)
        .unwrap()
        .meta()
        .cluster_id;
    let identity = WalIdentity { shard: ShardId::new(0).unwrap(), shard_count: 1, cluster_id };
    let paths = ShardPaths::new(dir.path(), 0);
    paths.create().unwrap();
    // The definitions first, then the earns, written as the shard writes them.
    let mut writer =
        WalWriter::open(&paths.wal, identity, 64 << 20, None, Timestamp(1), None).unwrap();
    let (definitions_ledger, _) = ledger_with_loyalty(Limits::default());
    let _ = definitions_ledger;
    let mut buffer = Vec::new();
    for body in ledger_benches::loyalty_definitions() {
        let timestamp = Timestamp(1_800_000_000_000_000_000);
        let record =
            ledger_engine::ledger::record::Record { lsn: writer.next_lsn(), timestamp, body };
        payload::encode_record(&mut buffer, &record);
        writer.append(&mut buffer, Timestamp(1)).unwrap();
        buffer.clear();
    }
    let mut written = 0;
    while written < count {
        let batch = generator.take(&ledger, 4096.min(count - written));
        for (record, fingerprint) in &batch {
            payload::encode_record(&mut buffer, record);
            ledger.apply(record, *fingerprint).unwrap();
        }
        writer.append(&mut buffer, Timestamp(1)).unwrap();
        buffer.clear();
        written += batch.len();
    }
    writer.sync().unwrap();
    drop(writer);
    let wal_bytes: u64 =
        std::fs::read_dir(&paths.wal).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let config = ledger_engine::ledger::LedgerConfig::new(ShardId::new(0).unwrap(), 1);

    // From nothing: every account and idempotency entry is created during replay.
    let started = Instant::now();
    let recovered = recover_shard(&paths, config.clone(), cluster_id, None).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(recovered.report.records_replayed as usize, count + 3);
    println!(
        "from an empty state: {} records in {seconds:.2} s: {:.0} records/s ({} MiB of segments, {} customer accounts)",
        recovered.report.records_replayed,
        recovered.report.records_replayed as f64 / seconds,
        wal_bytes >> 20,
        recovered.ledger.account_count() - 1
    );
    drop(recovered);

    // As a restart does it: the state of a snapshot taken half-way, then the WAL after it.
    let half = ledger_engine::Lsn(count as u64 / 2);
    let shard = ShardId::new(0).unwrap();
    let snapshot_state =
        ledger_engine::engine::replay_shard_offline(dir.path(), shard, config.clone(), Some(half))
            .unwrap();
    let bytes = ledger_engine::snapshot::encode_ledger(&snapshot_state, cluster_id, [0; 32]);
    let snapshot_path = ledger_engine::snapshot::write(dir.path(), half, &bytes).unwrap();
    drop((snapshot_state, bytes));
    let started = Instant::now();
    let (_, mut ledger) =
        ledger_engine::snapshot::load(&snapshot_path, config, cluster_id).unwrap();
    let load = started.elapsed();
    let options = ledger_engine::wal::reader::ScanOptions {
        visit_after: half,
        ..ledger_engine::wal::reader::ScanOptions::all()
    };
    let started = Instant::now();
    let replayed = ledger_engine::recovery::replay_wal(&paths.wal, &mut ledger, &options, None)
        .unwrap()
        .records;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "after a snapshot of {} accounts (loaded in {} ms): {replayed} records in {seconds:.2} s: {:.0} records/s\n",
        ledger.account_count() - 1,
        load.as_millis(),
        replayed as f64 / seconds
    );
}

fn ledger_with_accounts(accounts: u64) -> ledger_engine::ledger::Ledger {
    let (mut ledger, classes) = ledger_with_loyalty(Limits::default());
    let mut generator = ledger_benches::EarnRecords::sequential(classes);
    let mut made = 0;
    while made < accounts {
        let batch = generator.take(&ledger, 100_000.min((accounts - made) as usize));
        for (record, fingerprint) in &batch {
            ledger.apply(record, *fingerprint).unwrap();
        }
        made += batch.len() as u64;
    }
    ledger
}

fn snapshot() {
    println!("## snapshots (one shard)");
    println!(
        "| customer accounts | prepare (background) ms | pause: capture ms | baseline: clone ms | encode ms | write+fsync ms | load ms | file MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    // `SNAPSHOT_ACCOUNTS=1000000` measures one size only.
    let sizes: Vec<u64> = match std::env::var("SNAPSHOT_ACCOUNTS") {
        Ok(list) => list.split(',').filter_map(|size| size.trim().parse().ok()).collect(),
        Err(_) => vec![1_000_000, 10_000_000],
    };
    for accounts in sizes {
        let ledger = ledger_with_accounts(accounts);
        // What the snapshotter does before the shard pauses.
        let started = Instant::now();
        let (keys, _) = ledger.idempotency_stats();
        let count = ledger.account_count();
        let mut capture = Box::new(ledger_engine::ledger::StateCapture::prepared(
            count + count / 8 + 1024,
            keys + keys / 8 + 1024,
            ledger.history_len(),
        ));
        let prepare = started.elapsed();
        // The shard's pause.
        let started = Instant::now();
        ledger.capture_into(&mut capture);
        let pause = started.elapsed();
        // The baseline: cloning the whole state, as snapshots were first taken.
        let started = Instant::now();
        let clone = Box::new(ledger.clone());
        let baseline = started.elapsed();
        drop(clone);
        let started = Instant::now();
        let bytes = ledger_engine::snapshot::encode(&mut capture, 7, [0; 32]);
        let encode = started.elapsed();
        drop(capture);
        let dir = scratch();
        let started = Instant::now();
        let path = ledger_engine::snapshot::write(dir.path(), ledger.lsn(), &bytes).unwrap();
        let write = started.elapsed();
        drop(bytes);
        let started = Instant::now();
        let (_, loaded) = ledger_engine::snapshot::load(&path, ledger.config().clone(), 7).unwrap();
        let load = started.elapsed();
        assert_eq!(loaded.account_count(), ledger.account_count());
        println!(
            "| {accounts} | {} | {} | {} | {} | {} | {} | {} |",
            prepare.as_millis(),
            pause.as_millis(),
            baseline.as_millis(),
            encode.as_millis(),
            write.as_millis(),
            load.as_millis(),
            std::fs::metadata(&path).unwrap().len() >> 20
        );
    }
    println!(
        "(the state also holds the idempotency table of the writes that created the accounts, up to 2 Mi keys)\n"
    );
}

fn memory() {
    println!("## memory per customer account");
    println!("| customer accounts | heap bytes per account |");
    println!("|---:|---:|");
    for accounts in [1_000_000u64, 10_000_000] {
        // Idempotency keys are per write, not per account: keep the table small here so that
        // the figure is the accounts' own cost.
        let limits = Limits { idempotency_keys_max: 1024, ..Limits::default() };
        let (mut ledger, classes) = ledger_with_loyalty(limits);
        // Fixed costs (tables sized by limits, not by accounts) are not counted.
        let before = ALLOCATED.load(Ordering::Relaxed);
        let mut generator = ledger_benches::EarnRecords::sequential(classes);
        let mut made = 0;
        while made < accounts {
            let batch = generator.take(&ledger, 100_000.min((accounts - made) as usize));
            for (record, fingerprint) in &batch {
                ledger.apply(record, *fingerprint).unwrap();
            }
            made += batch.len() as u64;
        }
        let after = ALLOCATED.load(Ordering::Relaxed);
        println!("| {accounts} | {:.1} |", (after - before) as f64 / accounts as f64);
        drop(ledger);
    }
    println!();
}

/// A ledger with the loyalty definitions and a programme whose rules are `benchmark_rules`
/// (cashback or not), recorded at `at`.
fn ledger_with_programme(at: Timestamp, cashback: bool) -> ledger_engine::ledger::Ledger {
    use ledger_engine::ledger::account::Name;
    use ledger_engine::ledger::record::{AssetDefine, Body, ClassDefine, Record, RulesDefine};
    use ledger_engine::loyalty::programme::ProgrammeAccounts;
    use ledger_engine::{AccountFlags, AssetId, ClassId, Namespace};

    // Tables sized by limits, not by members (idempotency keys, the history ring, the recent
    // purchases explain answers from), are kept small: the figure is the members' own cost.
    let limits = Limits {
        idempotency_keys_max: 1024,
        history_entries_max: 1024,
        explain_purchases_max: 1024,
        ..Limits::default()
    };
    let (mut ledger, classes) = ledger_with_loyalty(limits);
    let cash = AssetId(1);
    let mut bodies = vec![
        Body::ClassDefine(ClassDefine {
            id: ClassId(3),
            namespace: Namespace::House,
            name: Name::class("expiry").unwrap(),
            asset: classes.pts,
            flags: AccountFlags::NONE,
        }),
        Body::AssetDefine(AssetDefine {
            id: cash,
            code: Name::asset("CASHBACK").unwrap(),
            scale: 2,
        }),
        Body::ClassDefine(ClassDefine {
            id: ClassId(4),
            namespace: Namespace::Customer,
            name: Name::class("cashback").unwrap(),
            asset: cash,
            flags: AccountFlags::NO_OVERDRAFT,
        }),
        Body::ClassDefine(ClassDefine {
            id: ClassId(5),
            namespace: Namespace::House,
            name: Name::class("cashback").unwrap(),
            asset: cash,
            flags: AccountFlags::NONE,
        }),
    ];
    let mut rules = ledger_engine::testing::loyalty::benchmark_rules(at);
    // One lot a day: no promotion points (bonus lots).
    rules.promotions.clear();
    if !cashback {
        rules.cashback = ledger_engine::loyalty::rules::Cashback::default();
        for category in &mut rules.categories {
            category.cashback = None;
        }
    }
    bodies.push(Body::RulesDefine(RulesDefine {
        version: 1,
        effective_at: Timestamp(0),
        accounts: ProgrammeAccounts {
            points: classes.points,
            issuance: classes.issuance,
            breakage: ClassId(3),
            cashback: cashback.then_some((ClassId(4), ClassId(5))),
            clawback: None,
            cashback_clawback: None,
        },
        rules: std::sync::Arc::new(rules),
    }));
    for body in bodies {
        let record = Record { lsn: ledger.lsn().next(), timestamp: at, body };
        ledger.apply(&record, 0).unwrap();
    }
    ledger
}

/// Heap bytes per loyalty member: each makes a purchase on each of 4 days (4 earned lots with
/// 4 expiry days, a tier, cap counters and a month of qualifying points).
fn loyalty_memory() {
    use ledger_engine::ledger::record::{Body, Record, TxHeader};
    use ledger_engine::{IdempotencyKey, Metadata, TerminalId, TxKind};

    println!("## memory per loyalty member (4 open lots, tier, caps)");
    println!("| members | cashback account | heap bytes per member | lots per member |");
    println!("|---:|---|---:|---:|");
    let sizes: Vec<u64> = match std::env::var("LOYALTY_MEMBERS") {
        Ok(size) => vec![size.parse().expect("a number")],
        Err(_) => vec![1_000_000, 10_000_000],
    };
    const DAY: u64 = 86_400_000_000_000;
    for cashback in [false, true] {
        for &members in &sizes {
            let start = Timestamp(1_800_000_000_000_000_000);
            let mut ledger = ledger_with_programme(start, cashback);
            let before = ALLOCATED.load(Ordering::Relaxed);
            let mut key = 0u128;
            for day in 0..std::env::var("LOYALTY_DAYS").map_or(4, |d| d.parse().expect("days")) {
                let at = start.plus_nanos(day * DAY);
                let mut ids = ledger_engine::ids::TxIdGenerator::new(
                    ledger.shard(),
                    Some(ledger.peek_tx_id(at)),
                );
                for customer in 0..members {
                    key += 1;
                    let header = TxHeader {
                        id: ids.next(at),
                        kind: TxKind::PURCHASE,
                        terminal: TerminalId(1),
                        idempotency: IdempotencyKey::new(key),
                        metadata: Metadata { store: 1, ..Metadata::default() },
                    };
                    let line = ledger_engine::loyalty::Line {
                        category: 10,
                        amount: 1_000 + customer % 1_000,
                        excluded: false,
                    };
                    let purchase = ledger
                        .price_purchase(header, customer, [line].into_iter().collect(), at)
                        .unwrap();
                    let record = Record {
                        lsn: ledger.lsn().next(),
                        timestamp: at,
                        body: Body::Purchase(purchase),
                    };
                    ledger.apply(&record, key as u64).unwrap();
                }
            }
            let after = ALLOCATED.load(Ordering::Relaxed);
            let lots = ledger.member(members / 2).map_or(0, |m| m.lots.len());
            println!(
                "| {members} | {} | {:.1} | {lots} |",
                if cashback { "yes" } else { "no" },
                (after - before) as f64 / members as f64
            );
            drop(ledger);
        }
    }
    println!();
}

fn main() {
    let selected: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| selected.is_empty() || selected.iter().any(|s| s == name);
    if run("wal") {
        wal();
    }
    if run("recovery") {
        recovery();
    }
    if run("snapshot") {
        snapshot();
    }
    if run("memory") {
        memory();
    }
    if run("loyalty-memory") {
        loyalty_memory();
    }
}
