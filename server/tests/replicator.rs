//! The replicator against a real PostgreSQL server the test starts (`common::pg`): after a
//! mixed loyalty workload every record is a row and every account's balance in PostgreSQL is
//! the engine's; stopped and restarted it goes on without a duplicate; PostgreSQL stopped and
//! started again, it catches up; a database holding another ledger is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::TestPg;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::{Command, Engine, EngineConfig, Limits};
use ledger_server::replica::ReplicaConfig;
use ledger_server::replica::replicator::{Replicator, State};

fn limits() -> Limits {
    Limits { idempotency_keys_max: 1 << 14, holds_open_max: 4096, ..Limits::test_min() }
}

fn open(dir: &std::path::Path) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    config.limits = limits();
    Arc::new(Engine::open(config).unwrap())
}

/// Purchases, redemptions, holds captured and voided, settlements and refunds over 40
/// customers, keys from `first`.
fn workload(engine: &Engine, loyalty: &Loyalty, first: u128) {
    let mut commands: Vec<Command> = Vec::new();
    for customer in 0..40u64 {
        let key = first + u128::from(customer) * 10;
        commands.push(loyalty.purchase(key, customer, 7, &[(0, 500 + customer * 10)]));
    }
    let purchases: Vec<_> = execute_all(engine, commands)
        .into_iter()
        .map(|answer| answer.committed().expect("a purchase").tx_id)
        .collect();
    let mut commands: Vec<Command> = Vec::new();
    for (customer, purchase) in (0..40u64).zip(&purchases) {
        let key = first + u128::from(customer) * 10;
        commands.push(loyalty.redeem(key + 1, customer, 3));
        if customer % 3 == 0 {
            commands.push(loyalty.settle(key + 2, *purchase));
        }
    }
    assert!(execute_all(engine, commands).iter().all(|a| a.committed().is_some()));
    let mut commands: Vec<Command> = Vec::new();
    for (customer, purchase) in (0..40u64).zip(&purchases) {
        let key = first + u128::from(customer) * 10;
        commands.push(loyalty.hold(key + 3, customer, 20, 60_000_000_000));
        if customer % 3 == 0 {
            commands.push(loyalty.refund(key + 4, *purchase, 100));
        }
    }
    let answers = execute_all(engine, commands);
    assert!(answers.iter().all(|a| a.committed().is_some()), "{answers:?}");
    let holds: Vec<_> = answers
        .iter()
        .filter_map(|a| a.committed())
        .filter(|c| c.amount == 20)
        .map(|c| c.tx_id)
        .collect();
    let commands: Vec<Command> = holds
        .iter()
        .enumerate()
        .map(|(i, hold)| loyalty.capture(first + 5_000 + i as u128, *hold, Some(5)))
        .collect();
    assert!(execute_all(engine, commands).iter().all(|a| a.committed().is_some()));
}

async fn wait_caught_up(engine: &Engine, replicator: &Replicator) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let durable: Vec<u64> = engine.stats().iter().map(|s| s.durable_lsn).collect();
        let replicated: Vec<u64> = replicator
            .shards
            .iter()
            .map(|s| s.lsn.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        if durable == replicated {
            return;
        }
        let states: Vec<_> = replicator.shards.iter().map(|s| s.state()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up: durable {durable:?}, replicated {replicated:?}, {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every account's posted balance in PostgreSQL, by address.
async fn replica_balances(db: &tokio_postgres::Client) -> Vec<(String, String)> {
    db.query(
        "SELECT account, SUM(delta)::text FROM ( \
           SELECT credit AS account, amount AS delta FROM postings WHERE effect = 'posted' \
           UNION ALL SELECT debit, -amount FROM postings WHERE effect = 'posted') moved \
         GROUP BY account ORDER BY account",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

async fn assert_replica_matches(engine: &Engine, db: &tokio_postgres::Client) {
    let durable: u64 = engine.stats().iter().map(|s| s.durable_lsn).sum();
    let rows: i64 = db.query_one("SELECT count(*) FROM transactions", &[]).await.unwrap().get(0);
    assert_eq!(rows as u64, durable, "a row per record, no more");
    let distinct: i64 = db
        .query_one("SELECT count(*) FROM (SELECT DISTINCT shard, lsn FROM transactions) d", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, rows, "no record twice");
    let registry = engine.registry();
    let balances = replica_balances(db).await;
    assert!(balances.len() > 40, "{balances:?}");
    for (address, balance) in &balances {
        let parsed: ledger_engine::ledger::account::AccountAddress =
            address.parse().unwrap_or_else(|e| panic!("{address}: {e:?}"));
        let account = registry
            .resolve(&parsed)
            .unwrap_or_else(|e| panic!("{address} is an account of the ledger: {e:?}"));
        let live = engine.account_total(account).unwrap().balance_posted();
        assert_eq!(balance, &live.to_string(), "{address}");
    }
    // Every asset sums to zero in the replica.
    let sums = db
        .query(
            "SELECT a.asset, SUM(CASE WHEN p.credit = a.address THEN p.amount ELSE -p.amount END)::text \
             FROM postings p JOIN accounts a ON a.address IN (p.debit, p.credit) \
             WHERE p.effect = 'posted' GROUP BY a.asset",
            &[],
        )
        .await
        .unwrap();
    assert!(!sums.is_empty());
    for row in sums {
        assert_eq!(row.get::<_, String>(1), "0", "asset {}", row.get::<_, String>(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_holds_every_record_once_and_every_balance_through_restarts_and_outages() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap();
    let url = pg.create_database("reports").await;
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(RuleSet::flat(1, 1), accounts, None).unwrap();
    workload(&engine, &loyalty, 1);

    let config = ReplicaConfig { url: url.clone() };
    let replicator = Replicator::spawn(Arc::clone(&engine), config.clone(), limits()).unwrap();
    wait_caught_up(&engine, &replicator).await;
    let db = ledger_server::replica::connect(&config).await.unwrap();
    assert_replica_matches(&engine, &db).await;
    let purchase = db
        .query_one(
            "SELECT metadata->'earning'->>'earned', customer FROM transactions \
             WHERE record_kind = 'purchase' ORDER BY time, shard, lsn LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert!(purchase.get::<_, Option<String>>(0).is_some(), "the earning breakdown is kept");

    // Stopped, more writes, started again: it goes on from its watermark.
    replicator.stop();
    workload(&engine, &loyalty, 100_000);
    let replicator = Replicator::spawn(Arc::clone(&engine), config.clone(), limits()).unwrap();
    wait_caught_up(&engine, &replicator).await;
    assert_replica_matches(&engine, &db).await;
    drop(db);

    // PostgreSQL down during writes: the engine does not notice; the replicator retries and
    // catches up once it is back.
    tokio::task::block_in_place(|| pg.stop_server());
    workload(&engine, &loyalty, 200_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !replicator.shards.iter().any(|s| s.state() == State::Retrying) {
        assert!(tokio::time::Instant::now() < deadline, "the outage is noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| pg.start_server());
    wait_caught_up(&engine, &replicator).await;
    let db = ledger_server::replica::connect(&config).await.unwrap();
    assert_replica_matches(&engine, &db).await;
    replicator.stop();

    // Another ledger pointed at this database is refused, and writes nothing.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    let other_loyalty = Loyalty::define(&other);
    execute_all(&other, vec![other_loyalty.earn(1, 1, 5)]);
    let refused = Replicator::spawn(Arc::clone(&other), config.clone(), limits()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !refused.shards.iter().all(|s| s.state() == State::Refused) {
        assert!(tokio::time::Instant::now() < deadline, "another ledger is refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused.stop();
    assert_replica_matches(&engine, &db).await;
    drop(pg);
}
