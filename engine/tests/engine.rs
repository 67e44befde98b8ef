//! The engine end to end, in process, on real files: restart and recovery, snapshots,
//! cross-shard transfers, hold expiry, backpressure, fail-stop, the double-spend race, and the
//! data directory's guards.

use std::sync::Arc;
use std::time::Duration;

use ledger_engine::clock::ManualClock;
use ledger_engine::datadir::DataDirError;
use ledger_engine::testing::faults::InjectedFaults;
use ledger_engine::testing::loyalty::{CollectingSink, Loyalty, execute_all};
use ledger_engine::{
    AccountId, CustomerId, Engine, EngineConfig, Limits, OpenError, Query, RejectCode, ReplySink,
    Response, ShardId, ShardTuning, Timestamp, TxId,
};

const SECOND: u64 = 1_000_000_000;

fn config(dir: &std::path::Path, shards: u16) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(shards);
    config.limits = Limits { segment_bytes: 256 * 1024, ..Limits::test_min() };
    config.limits.inbox_depth_max = 1024;
    config.tuning = ShardTuning { tick: Duration::from_millis(2), ..ShardTuning::default() };
    config
}

fn balance(engine: &Engine, loyalty: &Loyalty, customer: u64) -> i128 {
    match engine.execute(loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.balance_posted(),
        Response::Rejected(RejectCode::AccountNotFound) => 0,
        other => panic!("unexpected {other:?}"),
    }
}

/// Customers that live on shard `shard` of `count`.
fn customers_on(shard: u16, count: u16) -> impl Iterator<Item = u64> {
    (0..).filter(move |c| {
        ledger_engine::ids::shard_for_customer(CustomerId(*c), count).index() == shard
    })
}

#[test]
fn balances_and_idempotency_survive_a_restart_from_the_wal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let mut commands = Vec::new();
    for customer in 0..50 {
        commands.push(loyalty.earn(1_000 + customer as u128, customer, 100 + customer));
    }
    commands.push(loyalty.redeem(5_000, 7, 30));
    let responses = execute_all(&engine, commands);
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))), "{responses:?}");
    let redeemed = responses.last().unwrap().committed().unwrap();
    engine.shutdown();

    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports().iter().all(|r| r.snapshot_lsn.0 == 0));
    let replayed: u64 = engine.recovery_reports().iter().map(|r| r.records_replayed).sum();
    assert_eq!(replayed, 2 * 4 + 51, "definitions on both shards and every transaction");
    assert_eq!(Loyalty::define(&engine), loyalty);
    for customer in 0..50 {
        let expected = i128::from(100 + customer) - if customer == 7 { 30 } else { 0 };
        assert_eq!(balance(&engine, &loyalty, customer), expected);
    }
    // A retry after the restart returns the original answer and posts nothing.
    let retry = engine.execute(loyalty.redeem(5_000, 7, 30));
    assert_eq!(retry, Response::Duplicate(redeemed));
    assert_eq!(balance(&engine, &loyalty, 7), 77);
    let conflict = engine.execute(loyalty.redeem(5_000, 7, 31));
    assert_eq!(conflict, Response::Rejected(RejectCode::IdempotencyConflict));
}

#[test]
fn recovery_starts_from_the_newest_snapshot_and_replays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    execute_all(&engine, (0..20).map(|k| loyalty.earn(k + 1, 1, 10)).collect());
    let lsns = engine.snapshot_now().unwrap();
    assert_eq!(lsns[0].0, 4 + 20);
    execute_all(&engine, (0..5).map(|k| loyalty.redeem(100 + k, 1, 1)).collect());
    engine.shutdown();

    let engine = Engine::open(cfg).unwrap();
    let report = &engine.recovery_reports()[0];
    assert_eq!(report.snapshot_lsn.0, 24);
    assert_eq!(report.records_replayed, 5);
    assert_eq!(balance(&engine, &loyalty, 1), 195);
}

#[test]
fn a_damaged_snapshot_is_skipped_for_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    engine.execute(loyalty.earn(1, 1, 10));
    let first = engine.snapshot_now().unwrap()[0];
    engine.execute(loyalty.earn(2, 1, 10));
    let second = engine.snapshot_now().unwrap()[0];
    engine.execute(loyalty.earn(3, 1, 10));
    engine.shutdown();
    let newest = dir
        .path()
        .join("shard-000/snapshots")
        .join(ledger_engine::snapshot::snapshot_file_name(second));
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();

    let engine = Engine::open(cfg).unwrap();
    let report = &engine.recovery_reports()[0];
    assert_eq!(report.snapshot_lsn, first);
    assert_eq!(report.snapshots_skipped.len(), 1, "{:?}", report.snapshots_skipped);
    assert!(report.snapshots_skipped[0].contains("checksum"), "{:?}", report.snapshots_skipped);
    assert_eq!(balance(&engine, &loyalty, 1), 30);
}

#[test]
fn cross_shard_transfers_complete_and_keep_every_shard_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2)).unwrap();
    let loyalty = Loyalty::define(&engine);
    let alice = customers_on(0, 2).next().unwrap();
    let bob = customers_on(1, 2).next().unwrap();
    engine.execute(loyalty.earn(1, alice, 1_000));
    // Submitted at once, the transfers outrun their acknowledgements: past
    // `transfers_in_flight_max` (8 here) they are refused, and nothing moves for those.
    let responses =
        execute_all(&engine, (0..20).map(|k| loyalty.transfer(100 + k, alice, bob, 10)).collect());
    let committed = responses.iter().filter(|r| matches!(r, Response::Committed(_))).count();
    let full =
        responses.iter().filter(|r| **r == Response::Rejected(RejectCode::TransfersFull)).count();
    assert_eq!((committed, full), (8, 12), "{responses:?}");
    assert_eq!(balance(&engine, &loyalty, bob), 80);
    // Once acknowledged, transfers flow again, both ways.
    let mut commands = Vec::new();
    for key in 0..4 {
        commands.push(loyalty.transfer(200 + key, alice, bob, 10));
        commands.push(loyalty.transfer(300 + key, bob, alice, 5));
    }
    let responses = execute_all(&engine, commands);
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))), "{responses:?}");
    let alice_balance = balance(&engine, &loyalty, alice);
    let bob_balance = balance(&engine, &loyalty, bob);
    assert_eq!((alice_balance, bob_balance), (1_000 - 80 - 40 + 20, 80 + 40 - 20));
    // Transit slices: every transfer has been credited, so they cancel out globally.
    let transit = engine.account_total(AccountId::transit(loyalty.pts)).unwrap();
    assert_eq!(transit.balance_posted(), 0);
    assert!(engine.stats().iter().all(|s| s.transfers_in_flight == 0));

    // A retry of a settled transfer is a duplicate and moves nothing.
    let retry = engine.execute(loyalty.transfer(100, alice, bob, 10));
    assert!(matches!(retry, Response::Duplicate(_)), "{retry:?}");
    assert_eq!(balance(&engine, &loyalty, bob), bob_balance);
    engine.shutdown();

    let engine = Engine::open(config(dir.path(), 2)).unwrap();
    assert_eq!(balance(&engine, &loyalty, alice), alice_balance);
    assert_eq!(balance(&engine, &loyalty, bob), bob_balance);
}

#[test]
fn a_refunded_cross_shard_transfer_is_refused_to_every_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    // A customer class that may never be credited beyond its debits: every transfer into it
    // is refused by the destination shard, after the source has committed its step.
    let capped = loyalty.define_capped_class(&engine);
    let alice = customers_on(0, 2).next().unwrap();
    let bob = customers_on(1, 2).next().unwrap();
    engine.execute(loyalty.earn(1, alice, 1_000));
    let refused = || Response::Rejected(RejectCode::TransferRefunded);

    // The request and a retry of it in one submission: the retry finds the first step
    // committed and waits for the same outcome instead of answering "duplicate" at once.
    let transfer = loyalty.transfer_to_class(capped, 7, alice, bob, 300);
    let responses = execute_all(&engine, vec![transfer.clone(), transfer.clone()]);
    assert_eq!(responses, vec![refused(), refused()]);
    assert_eq!(balance(&engine, &loyalty, alice), 1_000, "the source was refunded");
    let transit = engine.account_total(AccountId::transit(loyalty.pts)).unwrap();
    assert_eq!(transit.balance_posted(), 0);
    // Later retries get the refusal too; the same key with another payload is a conflict.
    assert_eq!(engine.execute(transfer.clone()), refused());
    let other = loyalty.transfer_to_class(capped, 7, alice, bob, 301);
    assert_eq!(engine.execute(other), Response::Rejected(RejectCode::IdempotencyConflict));
    // A transfer that is accepted, retried in the same submission, is committed to both.
    let accepted = loyalty.transfer(8, alice, bob, 100);
    let responses = execute_all(&engine, vec![accepted.clone(), accepted.clone()]);
    let first = responses[0].committed().expect("committed");
    assert_eq!(responses, vec![Response::Committed(first), Response::Duplicate(first)]);
    assert_eq!(balance(&engine, &loyalty, bob), 100);
    engine.shutdown();

    // Rebuilt from the WAL alone, then from a snapshot: the refund is still remembered.
    for snapshot in [false, true] {
        let engine = Engine::open(cfg.clone()).unwrap();
        assert_eq!(engine.execute(transfer.clone()), refused(), "snapshot: {snapshot}");
        assert_eq!(engine.execute(accepted.clone()), Response::Duplicate(first));
        assert_eq!(balance(&engine, &loyalty, alice), 900);
        if snapshot {
            assert!(engine.recovery_reports().iter().all(|r| r.snapshot_lsn.0 > 0));
        } else {
            engine.snapshot_now().unwrap();
        }
        engine.shutdown();
    }
}

#[test]
fn a_key_used_again_after_the_retention_window_is_a_new_write_with_its_own_retries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_000 * SECOND)));
    let mut cfg = config(dir.path(), 1);
    cfg.clock = clock.clone();
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let first = engine.execute(loyalty.earn(42, 1, 100)).committed().unwrap();
    assert_eq!(engine.execute(loyalty.earn(42, 1, 100)), Response::Duplicate(first));
    // A day later (the default window is 24 h) the key is free again, for another payload.
    clock.advance(24 * 3600 * SECOND);
    let second = engine.execute(loyalty.earn(42, 1, 250)).committed().unwrap();
    assert_ne!(second.tx_id, first.tx_id);
    // Its retries are duplicates of the second use, not new writes.
    assert_eq!(engine.execute(loyalty.earn(42, 1, 250)), Response::Duplicate(second));
    assert_eq!(
        engine.execute(loyalty.earn(42, 1, 100)),
        Response::Rejected(RejectCode::IdempotencyConflict)
    );
    assert_eq!(balance(&engine, &loyalty, 1), 350);
    engine.snapshot_now().unwrap();
    engine.shutdown();
    // The snapshot holds both uses of the key and loads.
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports()[0].snapshot_lsn.0 > 0);
    assert_eq!(engine.execute(loyalty.earn(42, 1, 250)), Response::Duplicate(second));
    assert_eq!(balance(&engine, &loyalty, 1), 350);
}

#[test]
fn holds_expire_at_their_timeout_through_a_logged_record() {
    let dir = tempfile::tempdir().unwrap();
    let start = Timestamp(1_800_000_000 * SECOND);
    let clock = Arc::new(ManualClock::new(start));
    let mut cfg = config(dir.path(), 1);
    cfg.clock = clock.clone();
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    engine.execute(loyalty.earn(1, 1, 1_000));
    let hold = engine.execute(loyalty.hold(2, 1, 700, 5 * SECOND)).committed().unwrap().tx_id;
    let available = |engine: &Engine| match engine.execute(loyalty.balance_query(1)) {
        Response::Account(view) => view.counters.balance_available(),
        other => panic!("{other:?}"),
    };
    assert_eq!(available(&engine), 300);
    clock.advance(5 * SECOND);
    // The next turn of the shard (this query's, or a tick's) expires the hold first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while available(&engine) != 1_000 {
        assert!(std::time::Instant::now() < deadline, "hold never expired");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        engine.execute(loyalty.capture(3, hold, None)),
        Response::Rejected(RejectCode::HoldExpired)
    );
    assert_eq!(
        engine.execute(Query::Hold(hold).into_command()),
        Response::Rejected(RejectCode::HoldNotFound)
    );
    engine.shutdown();
    // The expiry is a WAL record: replay reaches the same state.
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(available(&engine), 1_000);
}

trait IntoCommand {
    fn into_command(self) -> ledger_engine::Command;
}

impl IntoCommand for Query {
    fn into_command(self) -> ledger_engine::Command {
        ledger_engine::Command::Read(self)
    }
}

#[test]
fn a_full_inbox_answers_busy_at_once_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::new());
    let mut cfg = config(dir.path(), 1);
    cfg.limits.inbox_depth_max = 2;
    cfg.limits.write_queue_depth_max = 1;
    cfg.faults = Some(faults.clone());
    let engine = Engine::open(cfg).unwrap();
    let loyalty = Loyalty::define(&engine);
    faults.stall_syncs();
    let sink = CollectingSink::new();
    let dyn_sink: Arc<dyn ReplySink> = sink.clone();
    // With fdatasync stalled the writer holds one group, its queue one batch, the shard blocks
    // on the next: the inbox fills and the rest are refused at once.
    for tag in 0..200u64 {
        engine.submit(&dyn_sink, vec![(tag, loyalty.earn(u128::from(tag) + 1, 1, 1))]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let busy = sink.take(1, Duration::from_secs(5));
    assert!(!busy.is_empty());
    assert!(busy.iter().all(|(_, r)| *r == Response::Rejected(RejectCode::Busy)), "{busy:?}");
    faults.release_syncs();
    let rest = sink.take(200 - busy.len(), Duration::from_secs(30));
    let mut all = busy.clone();
    all.extend(rest);
    assert_eq!(all.len(), 200);
    let committed = all.iter().filter(|(_, r)| matches!(r, Response::Committed(_))).count();
    let refused = all.iter().filter(|(_, r)| *r == Response::Rejected(RejectCode::Busy)).count();
    assert_eq!(committed + refused, 200);
    assert!(refused > 0 && committed > 0);
    assert_eq!(balance(&engine, &loyalty, 1), committed as i128);
    assert_eq!(engine.stats()[0].busy as usize, refused);
}

#[test]
fn a_failed_fdatasync_stops_the_shard_and_restart_recovers_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::new());
    let mut cfg = config(dir.path(), 1);
    cfg.faults = Some(faults.clone());
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let acknowledged = engine.execute(loyalty.earn(1, 1, 100));
    assert!(matches!(acknowledged, Response::Committed(_)));
    faults.fail_sync_after(0);
    let failed = engine.execute(loyalty.earn(2, 1, 50));
    assert_eq!(failed, Response::Rejected(RejectCode::ShardFailed));
    assert!(engine.is_poisoned());
    // Fail-stop: nothing more is taken, reads included.
    assert_eq!(engine.execute(loyalty.earn(3, 1, 1)), Response::Rejected(RejectCode::ShardFailed));
    assert_eq!(
        engine.execute(loyalty.balance_query(1)),
        Response::Rejected(RejectCode::ShardFailed)
    );
    engine.shutdown();

    cfg.faults = None;
    let engine = Engine::open(cfg).unwrap();
    // The acknowledged earn is there. The failed one may or may not be (its bytes were written
    // before the failed sync): its outcome was reported as unknown, and a retry settles it.
    let retry = engine.execute(loyalty.earn(2, 1, 50));
    assert!(matches!(retry, Response::Committed(_) | Response::Duplicate(_)), "{retry:?}");
    assert_eq!(balance(&engine, &loyalty, 1), 150);
}

#[test]
fn a_failed_write_stops_the_shard_too() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::new());
    let mut cfg = config(dir.path(), 1);
    cfg.faults = Some(faults.clone());
    let engine = Engine::open(cfg).unwrap();
    let loyalty = Loyalty::define(&engine);
    faults.fail_write_after(0);
    assert_eq!(
        engine.execute(loyalty.earn(1, 1, 100)),
        Response::Rejected(RejectCode::ShardFailed)
    );
    assert!(engine.is_poisoned());
    assert!(engine.stats()[0].poisoned);
}

#[test]
fn concurrent_redemptions_never_spend_a_point_twice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(config(dir.path(), 2)).unwrap());
    let loyalty = Loyalty::define(&engine);
    // The classic case: two redemptions of 800 from 1,000, at the same time.
    engine.execute(loyalty.earn(1, 1, 1_000));
    let racers: Vec<_> = (0..2u128)
        .map(|racer| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || engine.execute(loyalty.redeem(10 + racer, 1, 800)))
        })
        .collect();
    let outcomes: Vec<Response> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let won = outcomes.iter().filter(|r| matches!(r, Response::Committed(_))).count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes.contains(&Response::Rejected(RejectCode::InsufficientFunds)));
    assert_eq!(balance(&engine, &loyalty, 1), 200);

    // Many threads, many attempts: exactly as many succeed as the balance allows.
    engine.execute(loyalty.earn(2, 2, 10_000));
    let threads: Vec<_> = (0..16u128)
        .map(|thread| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                (0..40u128)
                    .filter(|attempt| {
                        let key = 1_000 + thread * 100 + attempt;
                        matches!(engine.execute(loyalty.redeem(key, 2, 70)), Response::Committed(_))
                    })
                    .count()
            })
        })
        .collect();
    let successes: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(successes, 10_000 / 70);
    assert_eq!(balance(&engine, &loyalty, 2), 10_000 % 70);
}

#[test]
fn the_data_directory_is_locked_and_keeps_its_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2)).unwrap();
    let error = Engine::open(config(dir.path(), 2)).unwrap_err();
    assert!(matches!(error, OpenError::DataDir(DataDirError::Locked(_))), "{error}");
    engine.shutdown();
    let error = Engine::open(config(dir.path(), 3)).unwrap_err();
    assert!(matches!(
        error,
        OpenError::DataDir(DataDirError::ShardCountMismatch { existing: 2, requested: 3 })
    ));
    let mut reopen = config(dir.path(), 2);
    reopen.shard_count = None;
    assert_eq!(Engine::open(reopen).unwrap().shard_count(), 2);
}

#[test]
fn queries_and_captures_route_to_the_right_shard() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 3)).unwrap();
    let loyalty = Loyalty::define(&engine);
    let mut holds = Vec::new();
    for customer in 0..12u64 {
        engine.execute(loyalty.earn(u128::from(customer) + 1, customer, 100));
        let hold =
            engine.execute(loyalty.hold(u128::from(customer) + 100, customer, 60, 60 * SECOND));
        holds.push((customer, hold.committed().unwrap().tx_id));
    }
    for (customer, hold) in holds {
        let shard = engine.shard_of_customer(CustomerId(customer));
        assert_eq!(hold.shard(), shard.index(), "a hold's id names its shard");
        let captured = engine.execute(loyalty.capture(u128::from(customer) + 200, hold, Some(25)));
        assert!(matches!(captured, Response::Committed(_)), "{captured:?}");
        assert_eq!(balance(&engine, &loyalty, customer), 75);
    }
    let no_such_shard = TxId::from_parts(1, ShardId::new(9).unwrap(), 0);
    assert_eq!(
        engine.execute(loyalty.capture(999, no_such_shard, None)),
        Response::Rejected(RejectCode::HoldNotFound)
    );
    let issued = engine.account_total(loyalty.issuance()).unwrap();
    assert_eq!(issued.balance_posted(), -1_200);
    let redeemed = engine.account_total(loyalty.redemption()).unwrap();
    assert_eq!(redeemed.balance_posted(), 12 * 25);
}

#[test]
fn covered_segments_are_deleted_under_that_policy_and_recovery_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.limits.segment_bytes = 40 * 1024;
    cfg.tuning.wal_retention = ledger_engine::WalRetention::DeleteCovered;
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let wal = dir.path().join("shard-000/wal");
    let segments = |wal: &std::path::Path| ledger_engine::wal::segment::list_segments(wal).unwrap();
    for round in 0..6u128 {
        execute_all(
            &engine,
            (0..100).map(|k| loyalty.earn(round * 1_000 + k + 1, k as u64 % 10, 1)).collect(),
        );
        engine.snapshot_now().unwrap();
    }
    let kept = segments(&wal);
    assert!(kept.first().unwrap().0 > 1, "old segments were deleted: {kept:?}");
    engine.execute(loyalty.earn(99_999, 3, 5));
    engine.shutdown();

    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports()[0].snapshot_lsn.0 > 0);
    let total: i128 = (0..10).map(|c| balance(&engine, &loyalty, c)).sum();
    assert_eq!(total, 600 + 5);
}

/// A reversal is idempotent like any write: its retry after the commit finds the original
/// reversed and still answers `Duplicate` with the first result. The "already reversed" mark
/// and the history survive a restart, from the WAL alone and from a snapshot.
#[test]
fn reversals_are_idempotent_and_their_mark_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.tuning.snapshot_on_shutdown = false;
    let engine = Engine::open(cfg.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let earn = engine.execute(loyalty.earn(1, 9, 500)).committed().unwrap();
    let reversed = engine.execute(loyalty.reverse(2, earn.tx_id));
    let Response::Committed(reversal) = reversed else { panic!("{reversed:?}") };
    assert_eq!(balance(&engine, &loyalty, 9), 0);
    assert_eq!(engine.execute(loyalty.reverse(2, earn.tx_id)), Response::Duplicate(reversal));
    assert_eq!(
        engine.execute(loyalty.reverse(3, earn.tx_id)),
        Response::Rejected(RejectCode::AlreadyReversed)
    );
    assert_eq!(
        engine.execute(loyalty.reverse(2, reversal.tx_id)),
        Response::Rejected(RejectCode::IdempotencyConflict),
        "the same key for another reversal is a conflict"
    );
    let history = |engine: &Engine| match engine.execute(loyalty.history_query(9, 10)) {
        Response::History(entries) => {
            entries.iter().map(|e| (e.tx_id, e.posted_delta())).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let expected = vec![(reversal.tx_id, -500), (earn.tx_id, 500)];
    assert_eq!(history(&engine), expected);
    engine.shutdown();

    // From the WAL alone.
    let engine = Engine::open(cfg.clone()).unwrap();
    assert_eq!(history(&engine), expected);
    assert_eq!(
        engine.execute(loyalty.reverse(4, earn.tx_id)),
        Response::Rejected(RejectCode::AlreadyReversed)
    );
    engine.snapshot_now().unwrap();
    engine.shutdown();

    // From the snapshot.
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.recovery_reports().iter().any(|r| r.snapshot_lsn.0 > 0));
    assert_eq!(history(&engine), expected);
    assert_eq!(
        engine.execute(loyalty.reverse(5, earn.tx_id)),
        Response::Rejected(RejectCode::AlreadyReversed)
    );
    assert_eq!(
        engine.execute(loyalty.reverse(6, TxId(earn.tx_id.0 + 1_000_000))),
        Response::Rejected(RejectCode::TransactionNotFound)
    );
}
