//! What the loyalty tests share: an engine on a manual clock with the programme's classes and
//! rules, reads of balances and members, and the check that replay and snapshot agree.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use ledger_engine::clock::ManualClock;
use ledger_engine::engine::{ledger_config, replay_shard_offline};
use ledger_engine::ledger::command::MemberView;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::calendar::{Date, start_of};
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::testing::loyalty::Loyalty;
use ledger_engine::{
    AccountId, Committed, Engine, EngineConfig, Limits, RejectCode, Response, ShardId, Timestamp,
};

pub const SECOND: u64 = 1_000_000_000;
pub const DAY: u64 = 86_400 * SECOND;

pub fn at(year: u32, month: u32, day: u32, hour: u64) -> Timestamp {
    Timestamp(start_of(Date { year, month, day }).0 + hour * 3_600 * SECOND)
}

pub struct Setup {
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub loyalty: Loyalty,
    pub accounts: ProgrammeAccounts,
}

pub fn open(dir: &Path, clock: &Arc<ManualClock>, shards: u16) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(shards);
    config.limits = Limits { idempotency_keys_max: 4096, ..Limits::test_min() };
    config.limits.inbox_depth_max = 65_536;
    config.limits.segment_bytes = 1 << 20;
    config.tuning.snapshot_on_shutdown = false;
    config.tuning.tick = std::time::Duration::from_millis(1);
    config.clock = clock.clone();
    // Holds that outlive a lot's expiry day.
    config.hold_timeout_max_nanos = 1_000 * DAY;
    Engine::open(config).unwrap()
}

/// An engine of `shards` shards at `start` with the programme's classes and `rules` at once.
pub fn setup(dir: &Path, shards: u16, start: Timestamp, rules: RuleSet) -> Setup {
    let clock = Arc::new(ManualClock::new(start));
    let engine = open(dir, &clock, shards);
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(rules, accounts, None).unwrap();
    Setup { engine, clock, loyalty, accounts }
}

pub fn committed(response: Response) -> Committed {
    match response {
        Response::Committed(committed) => committed,
        other => panic!("expected a commit, got {other:?}"),
    }
}

pub fn member(setup: &Setup, customer: u64, within_days: u16) -> MemberView {
    match setup.engine.execute(setup.loyalty.member_query(customer, within_days)) {
        Response::Member(view) => *view,
        other => panic!("{other:?}"),
    }
}

pub fn balance(engine: &Engine, account: AccountId) -> i128 {
    match engine.execute(ledger_engine::Command::Read(ledger_engine::Query::Account(account))) {
        Response::Account(view) => view.counters.balance_posted(),
        Response::Rejected(RejectCode::AccountNotFound) => 0,
        other => panic!("{other:?}"),
    }
}

pub fn points(setup: &Setup, customer: u64) -> i128 {
    balance(&setup.engine, setup.loyalty.customer(customer))
}

/// After `engine` stops: every shard's state replayed from its WAL alone passes the
/// invariants and equals, members and all, the state a snapshot of the reopened engine holds.
pub fn assert_replay_matches(engine: Engine, clock: &Arc<ManualClock>, dir: &Path, shards: u16) {
    engine.shutdown();
    let meta = ledger_engine::datadir::read_meta(dir).unwrap();
    let limits = Limits { idempotency_keys_max: 4096, ..Limits::test_min() };
    let replayed: Vec<_> = (0..shards)
        .map(|shard| {
            let shard = ShardId::new(shard).unwrap();
            let ledger =
                replay_shard_offline(dir, shard, ledger_config(&meta, shard, &limits), None)
                    .unwrap();
            ledger.check_invariants().unwrap();
            ledger
        })
        .collect();
    let engine = open(dir, clock, shards);
    engine.snapshot_now().unwrap();
    engine.shutdown();
    for (index, replayed) in replayed.iter().enumerate() {
        let shard = ShardId::new(u16::try_from(index).unwrap()).unwrap();
        let paths = ledger_engine::recovery::ShardPaths::new(dir, shard.index());
        let newest = ledger_engine::snapshot::find_snapshots(&paths.snapshots).unwrap();
        let (lsn, path) = newest.last().unwrap();
        assert_eq!(*lsn, replayed.lsn(), "the snapshot is of the end of the WAL");
        let (_, loaded) = ledger_engine::snapshot::load(
            path,
            ledger_config(&meta, shard, &limits),
            meta.cluster_id,
        )
        .unwrap();
        assert!(loaded == *replayed, "shard {index}: snapshot and replay differ");
        assert_eq!(loaded.members(), replayed.members());
    }
}

/// 10 points per unit, tiers at 0 (×1), 100 (×2) and 1,000 (×3), the default 12-month window.
pub fn tiered() -> RuleSet {
    let mut rules = RuleSet::flat(10, 1);
    let tier = |name: &str, threshold, multiplier| ledger_engine::loyalty::rules::TierRule {
        name: name.into(),
        threshold,
        multiplier: ledger_engine::loyalty::Ratio(multiplier),
    };
    rules.tiers =
        vec![tier("bronze", 0, 10_000), tier("silver", 100, 20_000), tier("gold", 1_000, 30_000)];
    rules
}
