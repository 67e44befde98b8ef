//! Format compatibility: data directories written by each format version (WAL segment,
//! snapshot, meta file) are checked in under `tests/fixtures/v<N>/` and must keep decoding to
//! the same records and the same balances. Changing the on-disk format means a new version number, a
//! new fixture directory next to this one, and a line in the docs' version history; this test
//! keeps reading the old one.
//!
//! Regenerate (only when adding a version): `LEDGER_WRITE_FIXTURES=1 cargo test -p
//! ledger-engine --test format_fixtures`, then move the printed directory into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger_engine::clock::ManualClock;
use ledger_engine::engine::{ledger_config, replay_shard_offline};
use ledger_engine::ledger::record::{Body, RecordKind};
use ledger_engine::recovery::ShardPaths;
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{Engine, EngineConfig, Limits, Lsn, Response, ShardId, Timestamp, TxId};

const SECOND: u64 = 1_000_000_000;

fn fixture(version: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}"))
}

// The v1 fixture was written by the version 1 code with the history `write_fixture_v2` starts
// with: definitions, earns, a redemption, a hold captured in part, a snapshot (at LSN 9), then
// one more earn.

#[test]
fn version_1_files_still_decode_to_the_same_history() {
    // Read from a copy: recovery must be free to repair, and the fixture must stay as it is.
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(&fixture(1), dir.path()).unwrap();
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    assert_eq!(meta.shard_count, 1);

    let paths = ShardPaths::new(dir.path(), 0);
    let mut kinds = Vec::new();
    let mut lsns = Vec::new();
    reader::scan(&paths.wal, &ScanOptions::all(), |record| {
        kinds.push(record.kind);
        lsns.push(record.header.lsn.0);
        let decoded = record.decode().unwrap();
        if record.header.lsn == Lsn(5) {
            let Body::Transaction(tx) = &decoded.body else { panic!("lsn 5 is the first earn") };
            assert_eq!(tx.postings[0].amount.get(), 1_000);
            assert_eq!(tx.header.idempotency.unwrap().get(), 1);
            assert_eq!(decoded.timestamp, Timestamp(1_767_225_600 * SECOND));
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    use RecordKind::*;
    assert_eq!(
        kinds,
        vec![
            AssetDefine,
            ClassDefine,
            ClassDefine,
            ClassDefine,
            Transaction,
            Transaction,
            Transaction,
            HoldCreate,
            HoldCapture,
            Transaction
        ]
    );
    assert_eq!(lsns, (1..=10).collect::<Vec<_>>());

    let config = ledger_config(&meta, ShardId::new(0).unwrap(), &Limits::test_min());
    let replayed =
        replay_shard_offline(dir.path(), ShardId::new(0).unwrap(), config, None).unwrap();
    // The fixture's clock, a little later: its idempotency keys are still inside their window.
    let clock = Arc::new(ManualClock::new(Timestamp((1_767_225_600 + 3) * SECOND)));
    let engine = Engine::open({
        let mut config = EngineConfig::new(dir.path());
        config.limits = Limits::test_min();
        config.clock = clock.clone();
        config
    })
    .unwrap();
    assert_eq!(
        engine.recovery_reports()[0].snapshot_lsn,
        Lsn(9),
        "recovery starts from the v1 snapshot"
    );
    let loyalty = Loyalty::define(&engine);
    let balance = |customer| match engine.execute(loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.balance_posted(),
        other => panic!("{other:?}"),
    };
    assert_eq!(balance(42), 1_000 - 300 + 5);
    assert_eq!(balance(7), 250 - 120);
    assert_eq!(replayed.lsn(), Lsn(10));
    // Idempotency survives in the old format too, for its retention window.
    assert!(matches!(engine.execute(loyalty.earn(6, 42, 5)), Response::Duplicate(_)));
    clock.advance(24 * 3600 * SECOND);
    assert!(matches!(engine.execute(loyalty.earn(6, 42, 5)), Response::Committed(_)));
    assert!(
        engine
            .execute(ledger_engine::Command::Read(ledger_engine::Query::Hold(TxId(0))))
            .rejected()
            .is_some()
    );
}

/// The history the v2 fixture holds: the v1 history, then an earn that is reversed (record
/// kind 9, new in version 2), a snapshot (version 2, with its history section), one more earn.
fn write_fixture_v2(dir: &Path) {
    let clock = Arc::new(ManualClock::new(Timestamp(1_767_225_600 * SECOND)));
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.limits = Limits::test_min();
    config.clock = clock.clone();
    config.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let responses = execute_all(
        &engine,
        vec![loyalty.earn(1, 42, 1_000), loyalty.earn(2, 7, 250), loyalty.redeem(3, 42, 300)],
    );
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
    clock.advance(SECOND);
    let hold = engine.execute(loyalty.hold(4, 7, 200, 60 * SECOND)).committed().unwrap().tx_id;
    engine.execute(loyalty.capture(5, hold, Some(120)));
    let earn = engine.execute(loyalty.earn(6, 42, 77)).committed().unwrap().tx_id;
    assert!(matches!(engine.execute(loyalty.reverse(7, earn)), Response::Committed(_)));
    engine.snapshot_now().unwrap();
    clock.advance(SECOND);
    engine.execute(loyalty.earn(8, 42, 5));
    engine.shutdown();
}

#[test]
fn version_2_files_still_decode_to_the_same_history() {
    if std::env::var_os("LEDGER_WRITE_FIXTURES").is_some() {
        let dir = tempfile::tempdir().unwrap().keep();
        write_fixture_v2(&dir);
        eprintln!("fixture written to {}", dir.display());
    }
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(&fixture(2), dir.path()).unwrap();
    let paths = ShardPaths::new(dir.path(), 0);
    let mut kinds = Vec::new();
    let mut original = None;
    reader::scan(&paths.wal, &ScanOptions::all(), |record| {
        kinds.push(record.kind);
        let decoded = record.decode().unwrap();
        if let Body::Reversal(reversal) = &decoded.body {
            assert_eq!(reversal.postings.len(), 1);
            assert_eq!(reversal.postings[0].amount.get(), 77);
            original = Some(reversal.original);
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    use RecordKind::*;
    assert_eq!(
        kinds,
        vec![
            AssetDefine,
            ClassDefine,
            ClassDefine,
            ClassDefine,
            Transaction,
            Transaction,
            Transaction,
            HoldCreate,
            HoldCapture,
            Transaction,
            Reversal,
            Transaction
        ]
    );
    let clock = Arc::new(ManualClock::new(Timestamp((1_767_225_600 + 3) * SECOND)));
    let engine = Engine::open({
        let mut config = EngineConfig::new(dir.path());
        config.limits = Limits::test_min();
        config.clock = clock.clone();
        config
    })
    .unwrap();
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn, Lsn(11), "from the v2 snapshot");
    let loyalty = Loyalty::define(&engine);
    let Response::Account(view) = engine.execute(loyalty.balance_query(42)) else { panic!() };
    assert_eq!(view.counters.balance_posted(), 1_000 - 300 + 77 - 77 + 5);
    // The history came back from the snapshot's history section and the WAL after it.
    let Response::History(entries) = engine.execute(loyalty.history_query(42, 10)) else {
        panic!()
    };
    let deltas: Vec<i128> = entries.iter().map(|entry| entry.posted_delta()).collect();
    assert_eq!(deltas, vec![5, -77, 77, -300, 1_000]);
    assert_eq!(
        engine.execute(loyalty.reverse(9, original.unwrap())).rejected(),
        Some(ledger_engine::RejectCode::AlreadyReversed)
    );
}
