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
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::testing::loyalty::{Loyalty, Partner, example_rules, execute_all};
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{
    CustomerId, Engine, EngineConfig, Limits, Lsn, RejectCode, Response, ShardId, Timestamp, TxId,
};

const SECOND: u64 = 1_000_000_000;

fn fixture(version: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}"))
}

/// A copy of fixture `version` in a temporary directory; with `LEDGER_WRITE_FIXTURES` set,
/// `write` first writes a new one elsewhere and prints where (to move into place by hand).
fn fixture_copy(version: u16, write: fn(&Path)) -> tempfile::TempDir {
    if std::env::var_os("LEDGER_WRITE_FIXTURES").is_some() {
        let dir = tempfile::tempdir().unwrap().keep();
        write(&dir);
        eprintln!("fixture written to {}", dir.display());
    }
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(&fixture(version), dir.path()).unwrap();
    dir
}

/// Opens a copy of a fixture with a clock a little after the fixtures' own: their idempotency
/// keys are still inside their window.
fn open_at_fixture_time(dir: &Path) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Timestamp((1_767_225_600 + 3) * SECOND)));
    let mut config = EngineConfig::new(dir);
    config.limits = Limits::test_min();
    config.clock = clock.clone();
    (Engine::open(config).unwrap(), clock)
}

/// A fresh engine on `dir` as the fixture writers use it: the fixtures' clock, the smallest
/// limits, no snapshot at shutdown (each fixture takes its own).
fn new_fixture_engine(dir: &Path, shards: u16) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Timestamp(1_767_225_600 * SECOND)));
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(shards);
    config.limits = Limits::test_min();
    config.clock = clock.clone();
    config.tuning.snapshot_on_shutdown = false;
    (Engine::open(config).unwrap(), clock)
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
    let (engine, clock) = open_at_fixture_time(dir.path());
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
    let (engine, clock) = new_fixture_engine(dir, 1);
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
    let dir = fixture_copy(2, write_fixture_v2);
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
    let (engine, _clock) = open_at_fixture_time(dir.path());
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

/// The history the v3 fixture holds, on two shards: definitions (with a customer class that
/// refuses every credit beyond its debits), an earn, a cross-shard transfer the destination
/// refuses (refunded: remembered under its key, new in version 3), one it accepts, a snapshot
/// of both shards (version 3), one more earn.
fn write_fixture_v3(dir: &Path) {
    let (engine, clock) = new_fixture_engine(dir, 2);
    let loyalty = Loyalty::define(&engine);
    let capped = loyalty.define_capped_class(&engine);
    engine.execute(loyalty.earn(1, V3_ALICE, 1_000));
    clock.advance(SECOND);
    let refused = engine.execute(loyalty.transfer_to_class(capped, 2, V3_ALICE, V3_BOB, 300));
    assert_eq!(refused.rejected(), Some(RejectCode::TransferRefunded));
    let accepted =
        engine.execute(loyalty.transfer_to_class(loyalty.points, 3, V3_ALICE, V3_BOB, 100));
    assert!(matches!(accepted, Response::Committed(_)), "{accepted:?}");
    engine.snapshot_now().unwrap();
    clock.advance(SECOND);
    engine.execute(loyalty.earn(4, V3_ALICE, 5));
    engine.shutdown();
}

/// Customers 1 and 0 live on shards 0 and 1 of 2 (checked by the test).
const V3_ALICE: u64 = 1;
const V3_BOB: u64 = 0;

#[test]
fn version_3_files_still_decode_to_the_same_history() {
    for (customer, shard) in [(V3_ALICE, 0), (V3_BOB, 1)] {
        assert_eq!(ledger_engine::ids::shard_for_customer(CustomerId(customer), 2).index(), shard);
    }
    let dir = fixture_copy(3, write_fixture_v3);
    let kinds = |shard: u16| {
        let mut kinds = Vec::new();
        reader::scan(&ShardPaths::new(dir.path(), shard).wal, &ScanOptions::all(), |record| {
            record.decode().unwrap();
            kinds.push(record.kind);
            Ok::<(), ()>(())
        })
        .unwrap();
        kinds
    };
    use RecordKind::*;
    let definitions = [AssetDefine, ClassDefine, ClassDefine, ClassDefine, ClassDefine];
    let source =
        [Transaction, TransferOut, TransferSettle, TransferOut, TransferSettle, Transaction];
    assert_eq!(kinds(0), [&definitions[..], &source[..]].concat());
    assert_eq!(kinds(1), [&definitions[..], &[TransferIn, TransferIn][..]].concat());

    let (engine, _clock) = open_at_fixture_time(dir.path());
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn, Lsn(10), "from the v3 snapshot");
    let loyalty = Loyalty::define(&engine);
    let capped = loyalty.define_capped_class(&engine);
    let balance = |customer| match engine.execute(loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.balance_posted(),
        other => panic!("{other:?}"),
    };
    assert_eq!((balance(V3_ALICE), balance(V3_BOB)), (1_000 - 100 + 5, 100));
    // The refund came back from the snapshot's idempotency table.
    let retry = engine.execute(loyalty.transfer_to_class(capped, 2, V3_ALICE, V3_BOB, 300));
    assert_eq!(retry.rejected(), Some(RejectCode::TransferRefunded));
    let retry = engine.execute(loyalty.transfer_to_class(loyalty.points, 3, V3_ALICE, V3_BOB, 100));
    assert!(matches!(retry, Response::Duplicate(_)), "{retry:?}");
}

/// The history the v4 fixture holds, on one shard: definitions, an earn, a hold captured
/// whole, a hold voided, an earn reversed (each remembering what it moved, new in version 4),
/// a snapshot (version 4), one more earn.
fn write_fixture_v4(dir: &Path) {
    let (engine, clock) = new_fixture_engine(dir, 1);
    let loyalty = Loyalty::define(&engine);
    let writes = v4_writes(&engine, &loyalty);
    assert_eq!(writes.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    engine.snapshot_now().unwrap();
    clock.advance(SECOND);
    engine.execute(loyalty.earn(9, 42, 5));
    engine.shutdown();
}

/// A fixture engine on `dir` with the v4 writes made and the programme's classes defined.
fn v4_with_programme(dir: &Path) -> (Engine, Arc<ManualClock>, Loyalty, ProgrammeAccounts) {
    let (engine, clock) = new_fixture_engine(dir, 1);
    let loyalty = Loyalty::define(&engine);
    let writes = v4_writes(&engine, &loyalty);
    assert_eq!(writes.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    let accounts = loyalty.define_programme(&engine);
    (engine, clock, loyalty, accounts)
}

/// What each write of `v4_writes` moved.
const V4_AMOUNTS: [u64; 6] = [1_000, 300, 300, 200, 200, 77];

/// The writes of the v4 fixture (keys 1..=7), or their retries: the committed results.
fn v4_writes(engine: &Engine, loyalty: &Loyalty) -> Vec<ledger_engine::Committed> {
    let committed = |command| engine.execute(command).committed().expect("committed");
    let earn = committed(loyalty.earn(1, 42, 1_000));
    let hold = committed(loyalty.hold(2, 42, 300, 60 * SECOND));
    let capture = committed(loyalty.capture(3, hold.tx_id, None));
    let other = committed(loyalty.hold(4, 42, 200, 60 * SECOND));
    let void = committed(loyalty.void(5, other.tx_id));
    let bonus = committed(loyalty.earn(6, 42, 77));
    let reversal = committed(loyalty.reverse(7, bonus.tx_id));
    vec![earn, hold, capture, other, void, reversal]
}

#[test]
fn version_4_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(4, write_fixture_v4);
    let mut kinds = Vec::new();
    reader::scan(&ShardPaths::new(dir.path(), 0).wal, &ScanOptions::all(), |record| {
        record.decode().unwrap();
        kinds.push(record.kind);
        Ok::<(), ()>(())
    })
    .unwrap();
    use RecordKind::*;
    let definitions = [AssetDefine, ClassDefine, ClassDefine, ClassDefine];
    let writes =
        [Transaction, HoldCreate, HoldCapture, HoldCreate, HoldVoid, Transaction, Reversal];
    assert_eq!(kinds, [&definitions[..], &writes[..], &[Transaction][..]].concat());

    let (engine, _clock) = open_at_fixture_time(dir.path());
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn, Lsn(11), "from the v4 snapshot");
    let loyalty = Loyalty::define(&engine);
    // Every write again, with its key: each is a duplicate (the balance does not move) that
    // reports what its write moved, from the snapshot's idempotency table.
    let retried = v4_writes(&engine, &loyalty);
    assert_eq!(retried.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    let Response::Account(view) = engine.execute(loyalty.balance_query(42)) else { panic!() };
    assert_eq!(view.counters.balance_posted(), 1_000 - 300 + 77 - 77 + 5);

    // Writing on: the version 2 segment is left as it is (its tail stays clean), and new records
    // go into a new segment of the current format, which a restart reads after it.
    assert!(matches!(engine.execute(loyalty.earn(900, 42, 1)), Response::Committed(_)));
    engine.shutdown();
    let wal = ShardPaths::new(dir.path(), 0).wal;
    let versions: Vec<u16> = ledger_engine::wal::segment::list_segments(&wal)
        .unwrap()
        .iter()
        .map(|(_, path)| {
            let head = std::fs::read(path).unwrap();
            ledger_engine::wal::format::SegmentHeader::decode(&head).unwrap().version
        })
        .collect();
    assert_eq!(versions, [2, ledger_engine::wal::format::FORMAT_VERSION]);
    let (engine, _clock) = open_at_fixture_time(dir.path());
    assert!(engine.recovery_reports()[0].torn_tail.is_none());
    assert!(matches!(engine.execute(loyalty.earn(900, 42, 1)), Response::Duplicate(_)));
}

/// The history the v5 fixture holds (WAL format 3, snapshot format 5, key index runs, the
/// durable mark): the v4 writes, then 100 earns of customer 5 (keys 100..=199), more than the
/// idempotency table holds (64), so the early keys are in key index runs; a snapshot; one more
/// earn.
fn write_fixture_v5(dir: &Path) {
    let (engine, clock) = new_fixture_engine(dir, 1);
    let loyalty = Loyalty::define(&engine);
    let writes = v4_writes(&engine, &loyalty);
    assert_eq!(writes.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    for key in 100..200u128 {
        assert!(matches!(engine.execute(loyalty.earn(key, 5, 3)), Response::Committed(_)));
    }
    engine.snapshot_now().unwrap();
    clock.advance(SECOND);
    engine.execute(loyalty.earn(9, 42, 5));
    engine.shutdown();
}

#[test]
fn version_5_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(5, write_fixture_v5);
    let wal = ShardPaths::new(dir.path(), 0).wal;
    let mut records = 0;
    reader::scan(&wal, &ScanOptions::all(), |record| {
        record.decode().unwrap();
        records += 1;
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(records, 4 + 7 + 100 + 1);
    let mark = ledger_engine::wal::mark::read(&wal).unwrap().expect("a durable mark");
    assert_eq!(mark.lsn, Lsn(records));
    let keys = dir.path().join("shard-000").join(ledger_engine::keyindex::KEYS_DIR);
    assert!(std::fs::read_dir(&keys).unwrap().count() > 1, "key index runs");

    let (engine, _clock) = open_at_fixture_time(dir.path());
    let report = &engine.recovery_reports()[0];
    assert_eq!(report.snapshot_lsn, Lsn(records - 1), "from the v5 snapshot");
    assert!(report.key_index.rebuilt.is_none() && report.key_index.damaged.is_empty());
    let loyalty = Loyalty::define(&engine);
    // Every write again: the v4 ones and the earliest earns from the key index runs.
    let retried = v4_writes(&engine, &loyalty);
    assert_eq!(retried.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    for key in 100..200u128 {
        assert!(matches!(engine.execute(loyalty.earn(key, 5, 3)), Response::Duplicate(_)));
    }
    assert!(engine.stats()[0].key_index_hits > 0);
    let Response::Account(view) = engine.execute(loyalty.balance_query(5)) else { panic!() };
    assert_eq!(view.counters.balance_posted(), 300);
}

/// The kinds of shard 0's records, each decoded.
fn record_kinds(dir: &Path) -> Vec<RecordKind> {
    let mut kinds = Vec::new();
    reader::scan(&ShardPaths::new(dir, 0).wal, &ScanOptions::all(), |record| {
        record.decode().unwrap();
        kinds.push(record.kind);
        Ok::<(), ()>(())
    })
    .unwrap();
    kinds
}

/// The history the v6 fixture holds (WAL format 4, snapshot format 6): the v4 writes, the
/// programme's classes, rule version 1 (flat, at once) and version 2 (the example rules of
/// docs/loyalty.md, scheduled a day later); a snapshot; one more earn.
fn write_fixture_v6(dir: &Path) {
    let (engine, clock, loyalty, accounts) = v4_with_programme(dir);
    engine.define_rules(RuleSet::flat(1, 100), accounts, None).unwrap();
    let tomorrow = Timestamp((1_767_225_600 + 86_400) * SECOND);
    engine.define_rules(example_rules(), accounts, Some(tomorrow)).unwrap();
    engine.snapshot_now().unwrap();
    clock.advance(SECOND);
    engine.execute(loyalty.earn(9, 42, 5));
    engine.shutdown();
}

#[test]
fn version_6_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(6, write_fixture_v6);
    let kinds = record_kinds(dir.path());
    use RecordKind::*;
    let programme = [ClassDefine, AssetDefine, ClassDefine, ClassDefine, RulesDefine, RulesDefine];
    assert_eq!(kinds[11..], [&programme[..], &[Transaction][..]].concat());

    let (engine, _clock) = open_at_fixture_time(dir.path());
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn, Lsn(17), "from the v6 snapshot");
    let versions = engine.programme();
    let versions = versions.versions();
    assert_eq!(versions.len(), 2);
    assert_eq!(*versions[0].rules, RuleSet::flat(1, 100));
    assert_eq!(*versions[1].rules, example_rules());
    assert_eq!(versions[1].effective_at, Timestamp((1_767_225_600 + 86_400) * SECOND));
    let loyalty = Loyalty::define(&engine);
    let retried = v4_writes(&engine, &loyalty);
    assert_eq!(retried.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
}

/// The history the v7 fixture holds (WAL format 4 with purchases and lot expiry, snapshot
/// format 7 with members and parked points): the v4 writes; the programme's classes and flat
/// rules (1 point per unit); purchases by customers 42 and 43; a hold of 43's points (parked);
/// a snapshot; then 25 months later a query of 42, whose lots expire first.
fn write_fixture_v7(dir: &Path) {
    let (engine, clock, loyalty, accounts) = v4_with_programme(dir);
    engine.define_rules(RuleSet::flat(1, 1), accounts, None).unwrap();
    for (key, command) in v7_purchases(&loyalty) {
        let committed = engine.execute(command).committed().expect("committed");
        assert_eq!(committed.amount, key as u64 * 10);
    }
    engine.execute(v7_hold(&loyalty)).committed().expect("held");
    engine.snapshot_now().unwrap();
    clock.advance(25 * 31 * 86_400 * SECOND);
    let Response::Member(view) = engine.execute(loyalty.member_query(42, 0)) else { panic!() };
    assert_eq!(view.lots.len(), 0);
    engine.shutdown();
}

/// The v7 fixture's purchases and hold (keys 20..=22): 200 and 210 points, a hold of 50.
fn v7_purchases(loyalty: &Loyalty) -> Vec<(u128, ledger_engine::Command)> {
    vec![
        (20, loyalty.purchase(20, 42, 3, &[(1, 150), (2, 50)])),
        (21, loyalty.purchase(21, 43, 3, &[(1, 210)])),
    ]
}

/// The v7 fixture's hold of customer 43's points.
fn v7_hold(loyalty: &Loyalty) -> ledger_engine::Command {
    loyalty.hold(22, 43, 50, 60 * SECOND)
}

#[test]
fn version_7_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(7, write_fixture_v7);
    let kinds = record_kinds(dir.path());
    use RecordKind::*;
    let programme = [ClassDefine, AssetDefine, ClassDefine, ClassDefine, RulesDefine];
    let later = [Purchase, Purchase, HoldCreate, HoldExpire, LotsExpire, LotsExpire];
    let expected = [&programme[..], &later[..]].concat();
    assert_eq!(kinds[11..], expected);

    let (engine, _clock) = open_at_fixture_time(dir.path());
    let report = &engine.recovery_reports()[0];
    assert_eq!(report.snapshot_lsn, Lsn(19), "from the v7 snapshot");
    assert_eq!(report.pricing_mismatches, 0);
    let loyalty = Loyalty::define(&engine);
    // 42's points (the 700 it held when the programme started, and 200 earned the same day,
    // one lot) and 43's 210 (its hold expired first) all expired into breakage.
    let Response::Member(view) = engine.execute(loyalty.member_query(43, 0)) else { panic!() };
    assert_eq!((view.lots.len(), view.held), (0, 0));
    let breakage = ledger_engine::AccountId::new(ledger_engine::ClassId(4), 0);
    assert_eq!(engine.account_total(breakage).unwrap().balance_posted(), 900 + 210);
    // And from the snapshot alone (before the expiry): 43's hold parked 50 of its points.
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    engine.shutdown();
    let snapshots = ShardPaths::new(dir.path(), 0).snapshots;
    let (_, path) = ledger_engine::snapshot::find_snapshots(&snapshots).unwrap().pop().unwrap();
    let config = ledger_config(&meta, ledger_engine::ShardId::new(0).unwrap(), &Limits::test_min());
    let (header, ledger) = ledger_engine::snapshot::load(&path, config, meta.cluster_id).unwrap();
    assert_eq!(header.version, 7);
    let parked: Vec<_> =
        ledger.members().parked().map(|(_, p)| (p.customer, p.total(), p.in_balance)).collect();
    assert_eq!(parked, [(43, 50, true)]);
    assert_eq!(ledger.member(43).unwrap().lots.total(), 160);
    assert_eq!(ledger.member(42).unwrap().lots.total(), 900);
}

/// The rules of the v8 fixture: 1 point per unit; purchases refundable for 30 days; pending
/// points held for 2 days; a point worth 1/100 of a minor unit.
fn v8_rules() -> RuleSet {
    let mut rules = RuleSet::flat(1, 1);
    rules.purchases.refund_days = 30;
    rules.purchases.pending = ledger_engine::loyalty::rules::PendingPoints::Held { days: 2 };
    rules.purchases.point_value =
        ledger_engine::loyalty::rules::PointValue { minor_units: 1, points: 100 };
    rules
}

/// The history the v8 fixture holds (WAL format 5 with the purchase lifecycle and the rule
/// settings, snapshot format 8 with the refundable purchases): the v4 writes; the programme's
/// classes with the clawback classes and `v8_rules`; purchases by 42 (200, settled, 50
/// refunded) and 43 (210, held); a snapshot; then 3 days later the release of 43's points and
/// the failure of its purchase.
fn write_fixture_v8(dir: &Path) {
    let (engine, clock, loyalty, accounts) = v4_with_programme(dir);
    engine.define_rules(v8_rules(), accounts, None).unwrap();
    let [first, second] = v8_purchases(&engine, &loyalty);
    engine.execute(loyalty.settle(23, first)).committed().expect("settled");
    engine.execute(loyalty.refund(24, first, 50)).committed().expect("refunded");
    engine.snapshot_now().unwrap();
    clock.advance(3 * 86_400 * SECOND);
    let released = || match engine.execute(loyalty.balance_query(43)) {
        Response::Account(view) => view.counters.credits_posted == 210,
        _ => false,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !released() {
        assert!(std::time::Instant::now() < deadline, "the release was not written");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    engine.execute(loyalty.fail(25, second)).committed().expect("failed");
    engine.shutdown();
}

/// The v8 fixture's purchases (keys 20 and 21), answered again when retried.
fn v8_purchases(engine: &Engine, loyalty: &Loyalty) -> [TxId; 2] {
    [v7_purchases(loyalty)[0].1.clone(), v7_purchases(loyalty)[1].1.clone()]
        .map(|command| engine.execute(command).committed().expect("purchased").tx_id)
}

#[test]
fn version_8_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(8, write_fixture_v8);
    let kinds = record_kinds(dir.path());
    use RecordKind::*;
    let programme =
        [ClassDefine, AssetDefine, ClassDefine, ClassDefine, ClassDefine, ClassDefine, RulesDefine];
    let later = [Purchase, Purchase, PurchaseSettle, PurchaseRefund, PurchaseRelease, PurchaseFail];
    assert_eq!(kinds[11..], [&programme[..], &later[..]].concat());

    let (engine, _clock) = open_at_fixture_time(dir.path());
    assert_eq!(engine.recovery_reports()[0].snapshot_lsn, Lsn(22), "from the v8 snapshot");
    let versions = engine.programme();
    assert_eq!(*versions.versions()[0].rules, v8_rules());
    assert!(versions.versions()[0].accounts.clawback.is_some());
    let loyalty = Loyalty::define(&engine);
    let points = |customer| match engine.execute(loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.balance_posted(),
        other => panic!("{other:?}"),
    };
    // 42: 700 before the programme, 200 earned, 50 refunded; 43: 210 released, then failed.
    assert_eq!((points(42), points(43)), (850, 0));
    // The purchases' states are what replay made of their records.
    let mut purchases = Vec::new();
    reader::scan(&ShardPaths::new(dir.path(), 0).wal, &ScanOptions::all(), |record| {
        if let Body::Purchase(purchase) = record.decode().unwrap().body {
            purchases.push(purchase.header.id);
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    let [first, second] = purchases[..] else { panic!("two purchases") };
    let state = |tx| match engine
        .execute(ledger_engine::Command::Read(ledger_engine::Query::Purchase { tx }))
    {
        Response::Purchase(entry) => (entry.state, entry.refunded),
        other => panic!("{other:?}"),
    };
    use ledger_engine::loyalty::lifecycle::LifecycleState;
    assert_eq!(state(first), (LifecycleState::PartlyRefunded, 50));
    assert_eq!(state(second), (LifecycleState::Failed, 210));
    // And from the snapshot alone (before the release): 43's purchase held its points.
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    engine.shutdown();
    let snapshots = ShardPaths::new(&fixture(8), 0).snapshots;
    let (_, path) = ledger_engine::snapshot::find_snapshots(&snapshots).unwrap().remove(0);
    let config = ledger_config(&meta, ledger_engine::ShardId::new(0).unwrap(), &Limits::test_min());
    let (header, ledger) = ledger_engine::snapshot::load(&path, config, meta.cluster_id).unwrap();
    assert_eq!(header.version, 8);
    let entries: Vec<_> = ledger
        .purchases()
        .iter()
        .map(|(entry, _)| (entry.customer, entry.state, entry.held(), entry.refunded))
        .collect();
    assert_eq!(
        entries,
        [(42, LifecycleState::PartlyRefunded, false, 50), (43, LifecycleState::Pending, true, 0)]
    );
}

/// The history the v9 fixture holds (WAL format 6 with the partner exchange, snapshot format 9
/// with the rates): the v4 writes; the programme (flat rules); partner A with a rate into the
/// programme's points at once (3 for 2) and one out of them from 2 seconds later (1 for 2);
/// 100 partner points for 42, 7 of them converted; a snapshot; then, 2 seconds later, 40 of
/// 42's points converted out (worth as much as the 20 partner points they buy: no
/// differential).
fn write_fixture_v9(dir: &Path) {
    let (engine, clock, loyalty, accounts) = v4_with_programme(dir);
    engine.define_rules(RuleSet::flat(1, 1), accounts, None).unwrap();
    let partner = Partner::define(&engine, &loyalty);
    let later = Timestamp(ledger_engine::clock::Clock::now(&*clock).0 + 2 * SECOND);
    engine.define_rate(partner.inbound(&loyalty, (3, 2), (2, 1)), None).unwrap();
    engine.define_rate(partner.outbound(&loyalty, (1, 2), (2, 1)), Some(later)).unwrap();
    engine.execute(partner.credit(30, 42, 100)).committed().expect("credited");
    v9_conversion(&engine, &loyalty, &partner);
    engine.snapshot_now().unwrap();
    clock.advance(2 * SECOND);
    let out = (loyalty.pts, partner.asset);
    engine.execute(loyalty.convert(32, 42, out, 40)).committed().expect("converted out");
    engine.shutdown();
}

/// The v9 fixture's conversion into the programme's points (key 31), answered again when
/// retried: 10 points for 7 of partner A's.
fn v9_conversion(engine: &Engine, loyalty: &Loyalty, partner: &Partner) -> u64 {
    let pair = (partner.asset, loyalty.pts);
    engine.execute(loyalty.convert(31, 42, pair, 7)).committed().expect("converted").amount
}

#[test]
fn version_9_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(9, write_fixture_v9);
    let kinds = record_kinds(dir.path());
    use RecordKind::*;
    let partner_definitions =
        [AssetDefine, AssetDefine, ClassDefine, ClassDefine, ClassDefine, ClassDefine];
    let later = [RateDefine, RateDefine, Transaction, Conversion, Conversion];
    let tail = [&partner_definitions[..], &later[..]].concat();
    assert_eq!(kinds[kinds.len() - tail.len()..], tail);

    let (engine, _clock) = open_at_fixture_time(dir.path());
    let rates = engine.rates();
    assert_eq!(rates.versions().len(), 2);
    let loyalty = Loyalty::define(&engine);
    let partner = Partner::define(&engine, &loyalty);
    assert_eq!(rates.versions()[0].terms, partner.inbound(&loyalty, (3, 2), (2, 1)));
    assert_eq!(v9_conversion(&engine, &loyalty, &partner), 10, "a retry answers as before");
    let balance = |account| match engine
        .execute(ledger_engine::Command::Read(ledger_engine::Query::Account(account)))
    {
        Response::Account(view) => view.counters.balance_posted(),
        other => panic!("{other:?}"),
    };
    // 42: 700 before the programme, 10 converted in, 40 converted out; partner points 93 + 20.
    assert_eq!(balance(loyalty.customer(42)), 670);
    assert_eq!(balance(partner.account(42)), 113);
    // 14 cents given for 10 (partner A owes 4), then 40 cents for 40 (no differential).
    assert_eq!(balance(partner.partner_money), -4);
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    engine.shutdown();
    let snapshots = ShardPaths::new(&fixture(9), 0).snapshots;
    let (_, path) = ledger_engine::snapshot::find_snapshots(&snapshots).unwrap().remove(0);
    let config = ledger_config(&meta, ledger_engine::ShardId::new(0).unwrap(), &Limits::test_min());
    let (header, ledger) = ledger_engine::snapshot::load(&path, config, meta.cluster_id).unwrap();
    assert_eq!(header.version, 9);
    assert_eq!(ledger.rates(), &rates);
}

/// An operator's adjustment with who and why (key `key`, terminal 0), as the admin API makes it.
fn v10_adjustment(
    loyalty: &Loyalty,
    key: u128,
    amount: u64,
    reason: &str,
) -> ledger_engine::Command {
    use ledger_engine::ledger::record::Annotation;
    let annotation = Annotation::new("ops.anna", reason).unwrap();
    ledger_engine::Command::Write(ledger_engine::Request {
        terminal: ledger_engine::TerminalId(0),
        idempotency: ledger_engine::IdempotencyKey::new(key),
        kind: ledger_engine::TxKind::ADJUSTMENT,
        metadata: ledger_engine::Metadata {
            annotation: Some(Arc::new(annotation)),
            ..Default::default()
        },
        operation: ledger_engine::Operation::Post {
            postings: smallvec::smallvec![ledger_engine::Posting {
                debit: loyalty.issuance(),
                credit: loyalty.customer(42),
                asset: loyalty.pts,
                amount: ledger_engine::Amount::new(amount).unwrap(),
            }],
        },
    })
}

/// The history the v10 fixture holds (WAL format 7, with annotated client headers; snapshot
/// format 9): the v4 writes; an operator's adjustment of 25 with who and why (key 40); a
/// snapshot; a second one of 5 (key 41).
fn write_fixture_v10(dir: &Path) {
    let (engine, _clock) = new_fixture_engine(dir, 1);
    let loyalty = Loyalty::define(&engine);
    let writes = v4_writes(&engine, &loyalty);
    assert_eq!(writes.iter().map(|c| c.amount).collect::<Vec<_>>(), V4_AMOUNTS);
    engine.execute(v10_adjustment(&loyalty, 40, 25, "goodwill, ticket 881")).committed().unwrap();
    engine.snapshot_now().unwrap();
    engine.execute(v10_adjustment(&loyalty, 41, 5, "rounding")).committed().unwrap();
    engine.shutdown();
}

#[test]
fn version_10_files_still_decode_to_the_same_history() {
    let dir = fixture_copy(10, write_fixture_v10);
    let mut annotated = Vec::new();
    reader::scan(&ShardPaths::new(dir.path(), 0).wal, &ScanOptions::all(), |record| {
        let decoded = record.decode().unwrap();
        if let Some(annotation) = decoded.body.header().and_then(|h| h.metadata.annotation.clone())
        {
            annotated.push((annotation.actor().to_string(), annotation.reason().to_string()));
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(
        annotated,
        [
            ("ops.anna".to_string(), "goodwill, ticket 881".to_string()),
            ("ops.anna".to_string(), "rounding".to_string())
        ]
    );
    let (engine, _clock) = open_at_fixture_time(dir.path());
    let loyalty = Loyalty::define(&engine);
    // Retries answer as before; the same key with another reason is another request.
    let retry = engine.execute(v10_adjustment(&loyalty, 41, 5, "rounding"));
    assert!(matches!(retry, Response::Duplicate(_)), "{retry:?}");
    let other = engine.execute(v10_adjustment(&loyalty, 41, 5, "another reason"));
    assert_eq!(other.rejected(), Some(RejectCode::IdempotencyConflict));
    match engine.execute(loyalty.balance_query(42)) {
        Response::Account(view) => assert_eq!(view.counters.balance_posted(), 700 + 25 + 5),
        other => panic!("{other:?}"),
    }
}
