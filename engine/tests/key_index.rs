//! Idempotency for the whole window: retries of writes that the shard's table in memory has
//! forgotten are answered from the key index on disk.
//!
//! Guards against the double posts an independent crash loop found: a shard remembered a key
//! only for its next half-table of writes (1 Mi at the default size, 1.5 s at 700k writes/s),
//! and a retry that came later posted again. Here the table holds 64 keys, so almost every
//! retry below is answered from the runs; each test also restarts (from the WAL, from a
//! snapshot) and damages or deletes run files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ledger_engine::clock::ManualClock;
use ledger_engine::keyindex::KEYS_DIR;
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::{
    CustomerId, Engine, EngineConfig, Limits, RejectCode, Response, ShardTuning, Timestamp,
};

const SECOND: u64 = 1_000_000_000;
const HOUR: u64 = 3_600 * SECOND;

fn config(dir: &Path, shards: u16, clock: &Arc<ManualClock>) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(shards);
    config.limits = Limits { segment_bytes: 256 * 1024, ..Limits::test_min() };
    assert_eq!(config.limits.idempotency_keys_max, 64, "a table of 64 keys: generations of 32");
    config.limits.inbox_depth_max = 4096;
    config.tuning = ShardTuning { tick: Duration::from_millis(2), ..ShardTuning::default() };
    config.tuning.snapshot_on_shutdown = false;
    config.clock = clock.clone();
    config
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp(1_900_000_000 * SECOND)))
}

fn balance(engine: &Engine, loyalty: &Loyalty, customer: u64) -> i128 {
    match engine.execute(loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.balance_posted(),
        other => panic!("{other:?}"),
    }
}

/// `count` earns of 1 point for customer 99, keys from `first`, submitted in batches.
fn later_writes(engine: &Engine, loyalty: &Loyalty, first: u128, count: u128) {
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(200) {
        let earns = chunk.iter().map(|key| loyalty.earn(*key, 99, 1)).collect();
        let responses = execute_all(engine, earns);
        assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))), "{responses:?}");
    }
}

fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("shard-000").join(KEYS_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "run"))
        .collect();
    runs.sort();
    runs
}

#[test]
fn a_retry_after_many_later_writes_gets_the_original_answer_across_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cfg = config(dir.path(), 1, &clock);
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let original = engine.execute(loyalty.earn(1, 7, 500)).committed().unwrap();
    let redeemed = engine.execute(loyalty.redeem(2, 7, 120)).committed().unwrap();
    later_writes(&engine, &loyalty, 1_000, 5_000);
    let check = |engine: &Engine, when: &str| {
        assert_eq!(
            engine.execute(loyalty.earn(1, 7, 500)),
            Response::Duplicate(original),
            "{when}"
        );
        assert_eq!(
            engine.execute(loyalty.redeem(2, 7, 120)),
            Response::Duplicate(redeemed),
            "{when}"
        );
        // The same keys with other payloads are conflicts, not new writes.
        let conflict = Response::Rejected(RejectCode::IdempotencyConflict);
        assert_eq!(engine.execute(loyalty.earn(1, 7, 501)), conflict, "{when}");
        assert_eq!(engine.execute(loyalty.redeem(2, 8, 120)), conflict, "{when}");
        assert_eq!(balance(engine, &loyalty, 7), 380, "{when}: nothing posted twice");
    };
    check(&engine, "live");
    let stats = engine.stats()[0];
    assert!(stats.key_index_hits >= 4, "{stats:?}");
    assert!(stats.key_index_runs >= 100, "5,000 writes in runs of 32: {stats:?}");
    assert!(stats.idempotency_keys <= 64, "{stats:?}");
    engine.shutdown();

    // From the WAL alone (no snapshot), then from a snapshot with writes after it.
    let engine = Engine::open(cfg.clone()).unwrap();
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn.0, 0);
    check(&engine, "restart from the wal");
    engine.snapshot_now().unwrap();
    later_writes(&engine, &loyalty, 10_000, 300);
    engine.shutdown();
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports()[0].snapshot_lsn.0 > 5_000);
    check(&engine, "restart from a snapshot");
    // Writes that were in memory at the restart are in the index too by now.
    later_writes(&engine, &loyalty, 20_000, 300);
    assert!(matches!(engine.execute(loyalty.earn(10_001, 99, 1)), Response::Duplicate(_)));
}

#[test]
fn a_retry_just_inside_the_window_is_a_duplicate_and_just_outside_a_new_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut cfg = config(dir.path(), 1, &clock);
    cfg.idempotency_retention_nanos = HOUR;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let original = engine.execute(loyalty.earn(1, 7, 500)).committed().unwrap();
    later_writes(&engine, &loyalty, 1_000, 500);
    clock.advance(HOUR - 1);
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
    clock.advance(1);
    let again = engine.execute(loyalty.earn(1, 7, 500)).committed().unwrap();
    assert_ne!(again.tx_id, original.tx_id, "past the window the key is a new write");
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(again));
    assert_eq!(balance(&engine, &loyalty, 7), 1_000);
    let stats = engine.stats()[0];
    assert!(stats.key_index_expired_hits >= 1, "{stats:?}");
    // Runs whose every key is past the window are deleted (all but the newest).
    later_writes(&engine, &loyalty, 5_000, 100);
    clock.advance(HOUR);
    later_writes(&engine, &loyalty, 6_000, 10);
    // Expiry runs on the shard's tick, and the indexer deletes the files: wait for both.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.stats()[0].key_index_keys_expired < 500 || runs(dir.path()).len() >= 10 {
        assert!(std::time::Instant::now() < deadline, "{:?}", engine.stats()[0]);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A stopped one-shard engine whose first earn (key 1) is followed by 1,000 others: the key is
/// in the first key index run.
fn forgotten_earn(dir: &Path) -> (EngineConfig, Loyalty, ledger_engine::Committed) {
    let cfg = config(dir, 1, &clock());
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let original = engine.execute(loyalty.earn(1, 7, 500)).committed().unwrap();
    later_writes(&engine, &loyalty, 1_000, 1_000);
    engine.shutdown();
    (cfg, loyalty, original)
}

#[test]
fn a_missing_run_is_rebuilt_from_the_wal_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, loyalty, original) = forgotten_earn(dir.path());
    let all = runs(dir.path());
    std::fs::remove_file(&all[0]).unwrap();
    std::fs::remove_file(&all[all.len() / 2]).unwrap();

    let engine = Engine::open(cfg).unwrap();
    let report = &engine.recovery_reports()[0].key_index;
    assert!(report.rebuilt.is_some(), "{report:?}");
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
    assert!(matches!(engine.execute(loyalty.earn(1_500, 99, 1)), Response::Duplicate(_)));
}

#[test]
fn a_damaged_block_refuses_the_keys_it_may_hold_until_a_restart_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, loyalty, original) = forgotten_earn(dir.path());
    // Key 1 is in the first run; flip a byte of every block of it (the header page, the
    // fences and the filter stay sound, so the run opens).
    let first = runs(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let blocks = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize;
    for block in 0..blocks {
        bytes[4096 + block * 4096 + 100] ^= 0x20;
    }
    std::fs::write(&first, &bytes).unwrap();

    let engine = Engine::open(cfg.clone()).unwrap();
    let unverifiable = Response::Rejected(RejectCode::IdempotencyUnverifiable);
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), unverifiable);
    assert_eq!(balance(&engine, &loyalty, 7), 500, "nothing posted");
    assert!(engine.stats()[0].key_index_unreadable >= 1);
    // A fresh key goes through (the run's filter rules it out).
    assert!(matches!(engine.execute(loyalty.earn(50_000, 7, 1)), Response::Committed(_)));
    engine.shutdown();
    // The damaged run was set aside: the next start rebuilds the index from the WAL.
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports()[0].key_index.rebuilt.is_some());
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
}

#[test]
fn a_refunded_transfer_is_refused_to_retries_after_the_table_forgot_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cfg = config(dir.path(), 2, &clock);
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let capped = loyalty.define_capped_class(&engine);
    let on = |shard: u16| {
        (0..)
            .find(|c| ledger_engine::ids::shard_for_customer(CustomerId(*c), 2).index() == shard)
            .unwrap()
    };
    let (alice, bob) = (on(0), on(1));
    engine.execute(loyalty.earn(1, alice, 1_000));
    let transfer = loyalty.transfer_to_class(capped, 7, alice, bob, 300);
    let refused = Response::Rejected(RejectCode::TransferRefunded);
    assert_eq!(engine.execute(transfer.clone()), refused);
    // Many later writes on alice's shard: the table forgets the transfer's key.
    for chunk in (100..2_100u128).collect::<Vec<_>>().chunks(200) {
        let earns = chunk.iter().map(|key| loyalty.earn(*key, alice, 1)).collect();
        execute_all(&engine, earns);
    }
    assert_eq!(engine.execute(transfer.clone()), refused);
    engine.shutdown();
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(engine.execute(transfer), refused);
    assert_eq!(balance(&engine, &loyalty, alice), 1_000 + 2_000);
}

/// The case at full size: a retry after 10 million later writes on one shard (the table
/// holds 2 Mi keys), after SIGKILL and restart, and after a snapshot. The writer is a child
/// process; `KEY_INDEX_LATER_WRITES` changes the count.
#[test]
fn a_retry_after_ten_million_later_writes_survives_sigkill_and_a_snapshot() {
    use std::io::{BufRead, BufReader};
    let count: u64 = std::env::var("KEY_INDEX_LATER_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = scratch_dir();
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ledger-crash-writer"))
        .arg(dir.path())
        .arg("bulk")
        .arg(count.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let tx_id: u64 = first.strip_prefix("A 1 C ").expect("the first write").parse().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "DONE");
    let wrote = started.elapsed();
    child.kill().expect("SIGKILL the writer");
    child.wait().unwrap();

    let cfg = ledger_engine::testing::crash::bulk_engine_config(dir.path());
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let retry = engine.execute(loyalty.earn(1, 7, 500));
    let Response::Duplicate(original) = retry else { panic!("retry after {count}: {retry:?}") };
    assert_eq!(original.tx_id.0, tx_id);
    assert_eq!(balance(&engine, &loyalty, 7), 500);
    assert_eq!(balance(&engine, &loyalty, 99), i128::from(count));
    let stats = engine.stats()[0];
    assert!(stats.idempotency_keys as u64 <= 2 * 1024 * 1024);
    if count > 2 * 1024 * 1024 {
        assert!(stats.key_index_hits >= 1, "answered from the key index: {stats:?}");
    }
    engine.snapshot_now().unwrap();
    engine.shutdown();
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports()[0].snapshot_lsn.0 > count);
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
    eprintln!(
        "{count} later writes in {wrote:?}; {} runs, {} keys on disk",
        engine.stats()[0].key_index_runs,
        engine.stats()[0].key_index_keys
    );
}

/// A scratch directory on the disk (not tmpfs: the WAL of the large test is gigabytes).
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The window outlives the WAL segments: retention deletes segments covered by snapshots, and a
/// retry of a write whose record is gone is still answered from the runs.
#[test]
fn a_retry_is_answered_after_the_segments_of_its_record_were_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut cfg = config(dir.path(), 1, &clock);
    cfg.tuning.wal_retention = ledger_engine::WalRetention::DeleteCovered;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let original = engine.execute(loyalty.earn(1, 7, 500)).committed().unwrap();
    for round in 0..4u128 {
        later_writes(&engine, &loyalty, 1_000 + round * 2_000, 2_000);
        engine.snapshot_now().unwrap();
    }
    let wal = ledger_engine::recovery::ShardPaths::new(dir.path(), 0).wal;
    let first = ledger_engine::wal::segment::list_segments(&wal).unwrap()[0].0;
    assert!(first > 1, "retention deleted the first segments");
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
    engine.shutdown();
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(engine.execute(loyalty.earn(1, 7, 500)), Response::Duplicate(original));
    assert_eq!(balance(&engine, &loyalty, 7), 500);
}
