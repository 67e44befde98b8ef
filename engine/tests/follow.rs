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
