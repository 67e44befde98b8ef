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

    // A snapshot being written (its `.tmp` file) is left alone: the follower only reads.
    let writing = paths.snapshots.join("snapshot-00000000000000999999.snap.tmp");
    std::fs::write(&writing, b"being written").unwrap();
    // From the start, while the engine runs: every record once, in order, to the durable LSN.
    let mut from_start = Follower::open(&paths, config(), meta.cluster_id, Lsn::ZERO).unwrap();
    assert!(writing.exists(), "a follower deletes nothing");
    std::fs::remove_file(&writing).unwrap();
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

/// A follower advanced in steps of every size (inside commit groups, at their ends, across
/// segments) applies every record once, as one advanced at once does; each step resumes where
/// the last stopped, so a record it read before is not read again (damage there goes unseen by
/// it, and a fresh follower finds it), while damage ahead is found, naming its LSN.
#[test]
fn a_follower_advanced_in_steps_resumes_where_it_stopped_and_reads_each_record_once() {
    use ledger_engine::testing::loyalty::execute_all;
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 3, 10, 12), RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    // About 3 MiB of WAL in 1 MiB segments, in commit groups of many sizes.
    let mut key = 0u128;
    for batch in 1..=40u64 {
        let commands = (0..batch * 30)
            .map(|i| {
                key += 1;
                loyalty.purchase(key, (key % 97) as u64, 7, &[(0, 100 + i)])
            })
            .collect();
        assert!(execute_all(engine, commands).iter().all(|a| a.committed().is_some()));
    }
    let durable = Lsn(engine.stats()[0].durable_lsn);
    let wal = ShardPaths::new(dir.path(), 0).wal;
    assert!(ledger_engine::wal::segment::list_segments(&wal).unwrap().len() >= 3);
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    let shard = ShardId::new(0).unwrap();
    let config = || {
        ledger_config(&meta, shard, &Limits { idempotency_keys_max: 4096, ..Limits::test_min() })
    };
    let paths = ShardPaths::new(dir.path(), 0);
    let mut at_once = Follower::open(&paths, config(), meta.cluster_id, Lsn::ZERO).unwrap();
    at_once.advance(durable, |_| Ok::<(), ()>(())).unwrap();
    // Where each record is: (segment, offset), by LSN.
    let mut places = vec![(0u64, 0u64)];
    ledger_engine::wal::reader::scan(&wal, &ledger_engine::wal::reader::ScanOptions::all(), |r| {
        places.push((r.segment, r.offset));
        Ok::<(), ()>(())
    })
    .unwrap();
    let segment_path = |sequence: u64| {
        ledger_engine::wal::segment::list_segments(&wal)
            .unwrap()
            .into_iter()
            .find(|(s, _)| *s == sequence)
            .unwrap()
            .1
    };

    let mut stepped = Follower::open(&paths, config(), meta.cluster_id, Lsn::ZERO).unwrap();
    let mut lsns = Vec::new();
    let mut step = 1u64;
    while stepped.lsn() < durable {
        let until = Lsn((stepped.lsn().0 + step).min(durable.0));
        let reached = stepped
            .advance(until, |followed| {
                lsns.push(followed.record.lsn.0);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(reached, until);
        step = step * 7 % 1_009 + 1;
        // Half way, and more than a commit group (1,200 records at most) into a segment.
        let here = stepped.lsn().0 as usize;
        let first_of_segment = places.iter().position(|p| p.0 == places[here].0).unwrap();
        if here > places.len() / 2 && here - first_of_segment > 1_300 {
            break;
        }
    }
    // The first record of the segment the stepped follower is in is damaged: it was read, in
    // an earlier group. The follower does not read it again (a scan from the segment's start
    // would) and goes on to the end; a fresh follower finds the damage, naming the record.
    let here = stepped.lsn().0 as usize;
    let damaged_lsn = places.iter().position(|p| p.0 == places[here].0).unwrap() as u64;
    let (damaged_segment, damaged_at) = places[damaged_lsn as usize];
    assert!(stepped.lsn().0 < durable.0 && damaged_lsn < stepped.lsn().0);
    flip_byte(&segment_path(damaged_segment), damaged_at + 80);
    stepped
        .advance(durable, |followed| {
            lsns.push(followed.record.lsn.0);
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(lsns, (1..=durable.0).collect::<Vec<_>>(), "every record once, in order");
    assert_eq!(stepped.last_hash(), at_once.last_hash());
    assert!(stepped.ledger() == at_once.ledger(), "the same state");
    let error = Follower::open(&paths, config(), meta.cluster_id, durable).unwrap_err();
    assert!(error.to_string().contains(&format!("lsn {damaged_lsn}")), "{error}");
    flip_byte(&segment_path(damaged_segment), damaged_at + 80);

    // Damage ahead of a follower is found when it gets there.
    let mut behind =
        Follower::open(&paths, config(), meta.cluster_id, Lsn(durable.0 - 50)).unwrap();
    let (ahead_segment, ahead_at) = places[durable.0 as usize - 20];
    behind.advance(Lsn(durable.0 - 30), |_| Ok::<(), ()>(())).unwrap();
    flip_byte(&segment_path(ahead_segment), ahead_at + 80);
    let error = behind.advance(durable, |_| Ok::<(), ()>(())).unwrap_err();
    assert!(error.to_string().contains(&format!("lsn {}", durable.0 - 20)), "{error}");
    assert_eq!(behind.lsn(), Lsn(durable.0 - 21), "applied up to the damage");
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&byte).unwrap();
}
