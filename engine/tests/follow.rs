//! A follower of a shard's WAL: opened at any LSN (from a snapshot below it or from the
//! start), advanced while the engine writes, it holds the shard's state, and the movements it
//! reports add up to every account's balance.

mod support;

use std::collections::BTreeMap;

use ledger_engine::engine::ledger_config;
use ledger_engine::follow::Follower;
use ledger_engine::ledger::{MoveEffect, Moved};
use ledger_engine::loyalty::RuleSet;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::{AccountId, Limits, Lsn, ShardId};
use support::{at, committed, setup};

/// Posted balances by account, from movements alone.
fn balances(moved: &[Moved]) -> BTreeMap<AccountId, i128> {
    let mut balances = BTreeMap::new();
    for movement in moved.iter().filter(|m| m.effect == MoveEffect::Posted) {
        *balances.entry(movement.debit).or_default() -= i128::from(movement.amount);
        *balances.entry(movement.credit).or_default() += i128::from(movement.amount);
    }
    balances
}

#[test]
fn a_follower_holds_the_shards_state_and_its_movements_add_up_to_every_balance() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 3, 10, 12), RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    for customer in 0..20u64 {
        committed(engine.execute(loyalty.purchase(
            u128::from(customer) + 1,
            customer,
            7,
            &[(0, 300)],
        )));
    }
    let hold = committed(engine.execute(loyalty.hold(100, 3, 40, 60_000_000_000))).tx_id;
    committed(engine.execute(loyalty.capture(101, hold, Some(15))));
    committed(engine.execute(loyalty.redeem(102, 4, 100)));
    let snapshot = engine.snapshot_now().unwrap()[0];
    for customer in 0..20u64 {
        committed(engine.execute(loyalty.redeem(200 + u128::from(customer), customer, 1)));
    }
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    let shard = ShardId::new(0).unwrap();
    let config = || {
        ledger_config(&meta, shard, &Limits { idempotency_keys_max: 4096, ..Limits::test_min() })
    };
    let paths = ShardPaths::new(dir.path(), 0);
    let durable = Lsn(engine.stats()[0].durable_lsn);

    // From the start, while the engine runs: every record once, in order, to the durable LSN.
    let mut from_start = Follower::open(&paths, config(), meta.cluster_id, Lsn::ZERO).unwrap();
    let mut moved = Vec::new();
    let mut lsns = Vec::new();
    let reached = from_start
        .advance(durable, |followed| {
            lsns.push(followed.record.lsn.0);
            moved.extend_from_slice(followed.moved);
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(reached, durable);
    assert_eq!(lsns, (1..=durable.0).collect::<Vec<_>>());
    for (account, balance) in balances(&moved) {
        let live = engine.account_total(account).unwrap().balance_posted();
        assert_eq!(balance, live, "{account:?}: the movements add up to the balance");
    }
    // Opened above the snapshot: it starts from it and reaches the same state and hash.
    let from_snapshot = Follower::open(&paths, config(), meta.cluster_id, durable).unwrap();
    assert!(snapshot < durable);
    assert_eq!(from_snapshot.last_hash(), from_start.last_hash());
    assert!(from_snapshot.ledger() == from_start.ledger(), "the same state");
    // At the snapshot's LSN exactly, and one record past it.
    for at in [snapshot, snapshot.next()] {
        let follower = Follower::open(&paths, config(), meta.cluster_id, at).unwrap();
        assert_eq!(follower.lsn(), at);
    }
    // Beyond the WAL: refused, naming the LSN.
    let error = Follower::open(&paths, config(), meta.cluster_id, Lsn(durable.0 + 5)).unwrap_err();
    assert!(error.to_string().contains(&(durable.0 + 5).to_string()), "{error}");
    // Another directory's id: refused.
    assert!(Follower::open(&paths, config(), meta.cluster_id ^ 1, Lsn(3)).is_err());
}

/// With a WAL reader, retention deletes nothing the reader could need: until it says how far
/// it read, the whole WAL stays; after, the newest snapshot at or below its position and the
/// segments after that snapshot stay, and only what is below goes.
#[test]
fn retention_keeps_what_a_wal_reader_has_not_read() {
    use ledger_engine::testing::loyalty::{Loyalty, execute_all};
    let dir = tempfile::tempdir().unwrap();
    let mut config = ledger_engine::EngineConfig::new(dir.path());
    config.shard_count = Some(1);
    config.limits = Limits { idempotency_keys_max: 1 << 14, ..Limits::test_min() };
    config.tuning.wal_retention = ledger_engine::WalRetention::DeleteCovered;
    config.tuning.wal_reader = true;
    config.tuning.snapshot_on_shutdown = false;
    let engine = ledger_engine::Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let mut key = 0u128;
    let mut write = |engine: &ledger_engine::Engine| {
        let commands = (0..300)
            .map(|_| {
                key += 1;
                loyalty.earn(key, (key % 13) as u64, 5)
            })
            .collect();
        assert!(execute_all(engine, commands).iter().all(|a| a.committed().is_some()));
    };
    let wal = ShardPaths::new(dir.path(), 0).wal;
    let first_segment =
        || ledger_engine::wal::segment::list_segments(&wal).unwrap().first().unwrap().0;
    let mut snapshots = Vec::new();
    for _ in 0..4 {
        write(&engine);
        snapshots.push(engine.snapshot_now().unwrap()[0]);
    }
    assert_eq!(first_segment(), 1, "the reader has read nothing yet: every segment stays");
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    let shard = ShardId::new(0).unwrap();
    let config = || {
        ledger_config(&meta, shard, &Limits { idempotency_keys_max: 1 << 14, ..Limits::test_min() })
    };
    let paths = ShardPaths::new(dir.path(), 0);
    assert!(Follower::open(&paths, config(), meta.cluster_id, Lsn(1)).is_ok());

    // The reader read up to the older of the two snapshots kept: the first segments go, that
    // snapshot stays with everything after it (though two newer ones are taken since).
    let read = snapshots[2];
    engine.release_wal_below(shard, read);
    for _ in 0..2 {
        write(&engine);
        snapshots.push(engine.snapshot_now().unwrap()[0]);
    }
    assert!(first_segment() > 1, "what only the reader needed below its position went");
    let kept: Vec<Lsn> = ledger_engine::snapshot::list_snapshots(&paths.snapshots)
        .unwrap()
        .into_iter()
        .map(|(lsn, _)| lsn)
        .collect();
    assert!(kept.contains(&read), "the reader's base snapshot stays: {kept:?}");
    let resumed = Follower::open(&paths, config(), meta.cluster_id, Lsn(read.0 + 7)).unwrap();
    assert_eq!(resumed.lsn(), Lsn(read.0 + 7), "the reader resumes where it was");
    assert!(
        Follower::open(&paths, config(), meta.cluster_id, Lsn(1)).is_err(),
        "below it, the WAL is gone"
    );
    engine.shutdown();
}
