//! The replicator against a real PostgreSQL server the test starts (`common::pg`): after a
//! mixed loyalty workload every record is a row and every account's balance in PostgreSQL is
//! the engine's; stopped and restarted it goes on without a duplicate; PostgreSQL stopped and
//! started again, it catches up; a database holding another ledger is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::{TestPg, wait_caught_up};
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

    let config = ReplicaConfig { url: url.clone(), nice: 0 };
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
    let by_customer: i64 =
        db.query_one("SELECT count(*) FROM postings WHERE customer = 7", &[]).await.unwrap().get(0);
    assert!(by_customer >= 3, "customer 7's postings are theirs: {by_customer}");

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

    // PostgreSQL refusing writes (the database made read-only, the replicator's session
    // ended): the writes go on; the replicator retries, and catches up once it may write.
    let failures = |r: &Replicator| {
        r.shards.iter().map(|s| s.failures.load(std::sync::atomic::Ordering::Relaxed)).sum::<u64>()
    };
    let failed_before = failures(&replicator);
    db.batch_execute(
        "ALTER DATABASE reports SET default_transaction_read_only = on; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'reports' AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    workload(&engine, &loyalty, 300_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while failures(&replicator) < failed_before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "the refusals are noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let durable: u64 = engine.stats().iter().map(|s| s.durable_lsn).sum();
    let replicated: u64 =
        replicator.shards.iter().map(|s| s.lsn.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert!(replicated < durable, "nothing was written while refused");
    db.batch_execute("ALTER DATABASE reports SET default_transaction_read_only = off")
        .await
        .unwrap();
    wait_caught_up(&engine, &replicator).await;
    assert_replica_matches(&engine, &db).await;
    replicator.stop();

    // Wrong credentials (a role the server does not know): retried with backoff and counted,
    // never a refusal for good (an operator may create the role).
    let wrong = ReplicaConfig { url: url.replace("postgres@", "nobody@"), nice: 0 };
    let refused_login = Replicator::spawn(Arc::clone(&engine), wrong, limits()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(refused_login.shards.iter().all(|s| s.state() == State::Retrying)
        && failures(&refused_login) >= 2)
    {
        assert!(tokio::time::Instant::now() < deadline, "the bad login is noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused_login.stop();

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

    // Reconciliation: equal at every shard's watermark, every asset at zero; then one posting
    // changed behind the replicator's back is the first difference, named.
    let found =
        ledger_server::replica::reconcile::reconcile(&db, dir.path(), &limits()).await.unwrap();
    assert!(found.balanced(), "{found:?}");
    assert_eq!(found.shards.len(), 2);
    assert!(found.assets.iter().any(|(asset, sum)| asset == "PTS" && *sum == 0), "{found:?}");
    assert!(found.members >= 40, "{found:?}");
    // A lot changed behind the replicator's back is found, named.
    let lot = db
        .query_one(
            "UPDATE lots SET remaining = remaining - 1 WHERE (customer, kind, expires_on) = \
             (SELECT customer, kind, expires_on FROM lots ORDER BY customer LIMIT 1) \
             RETURNING customer, kind, expires_on::text",
            &[],
        )
        .await
        .unwrap();
    let (customer, kind, day): (i64, String, String) = (lot.get(0), lot.get(1), lot.get(2));
    let found =
        ledger_server::replica::reconcile::reconcile(&db, dir.path(), &limits()).await.unwrap();
    assert!(!found.balanced() && found.difference.is_none());
    let named = found.loyalty_difference.expect("the lot");
    assert!(named.contains(&format!("lot of {customer} ({kind}")), "{named}");
    db.execute(
        "UPDATE lots SET remaining = remaining + 1 \
         WHERE customer = $1 AND kind = $2 AND expires_on = $3::text::date",
        &[&customer, &kind, &day],
    )
    .await
    .unwrap();
    let found =
        ledger_server::replica::reconcile::reconcile(&db, dir.path(), &limits()).await.unwrap();
    assert!(found.balanced(), "{found:?}");
    let changed = db
        .query_one(
            "UPDATE postings SET amount = amount + 1 WHERE (time, shard, lsn, index) = \
             (SELECT time, shard, lsn, index FROM postings WHERE effect = 'posted' \
              AND customer IS NOT NULL ORDER BY shard, lsn LIMIT 1) RETURNING shard, debit, credit",
            &[],
        )
        .await
        .unwrap();
    let found =
        ledger_server::replica::reconcile::reconcile(&db, dir.path(), &limits()).await.unwrap();
    assert!(!found.balanced());
    let difference = found.difference.expect("a difference");
    assert_eq!(i32::from(difference.shard), changed.get::<_, i32>(0));
    let accounts = [changed.get::<_, String>(1), changed.get::<_, String>(2)];
    assert!(accounts.contains(&difference.account), "{difference} in {accounts:?}");
    assert_eq!((difference.replica.0 - difference.wal.0).abs(), 1, "{difference}");
    drop(pg);
}

/// A blocking HTTP GET with a bearer token: the JSON body.
fn get_json(addr: std::net::SocketAddr, path: &str, token: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").expect("a head and a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The real binary with `--replica-url`, killed with SIGKILL while terminals write and the
/// replicator copies, six times at different moments: after a last start the replica catches
/// up to exactly the WAL, every record once, every asset at zero, every member and lot the
/// WAL's, and the admin API and `/metrics` say so.
#[test]
fn ledgerd_killed_while_replicating_leaves_an_exact_replica() {
    use common::process::{addr_of, signal, start_with, wait_exit, wait_for_all};
    use ledger_protocol::{Op, Receipt, WriteMeta};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = TestPg::start();
    let url = runtime.block_on(pg.create_database("reports"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut token = String::new();
    let args = ["--shards", "2", "--replica-url", url.as_str()];
    let start = |token: &mut String| {
        let (child, lines) = start_with(&data, &args);
        let found: Vec<String> = if token.is_empty() {
            let found = wait_for_all(
                &lines,
                ["POS protocol listening", "admin API listening", "admin API token"],
            );
            *token = found[2].rsplit(' ').next().unwrap().to_string();
            found.to_vec()
        } else {
            wait_for_all(&lines, ["POS protocol listening", "admin API listening"]).to_vec()
        };
        let (pos, admin) = (addr_of(&found[0]), addr_of(&found[1]));
        // Keep reading its output, so that logging never blocks it.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        (child, pos, admin)
    };
    // Six kills, each at another moment of the copying (mid-chunk, mid-commit, idle).
    for round in 0..6u128 {
        let (child, pos, _) = start(&mut token);
        let credentials =
            ledger_protocol::Credentials::load(&data.join("credentials.toml")).unwrap();
        let terminal = credentials.enabled().next().unwrap().clone();
        runtime.block_on(async {
            let client =
                ledger_protocol::client::Client::connect(pos, terminal.id, &terminal.secret)
                    .await
                    .unwrap();
            let writer = tokio::spawn(async move {
                for batch in 0..1_000u128 {
                    let ops: Vec<Op> = (0..50u128)
                        .map(|i| {
                            let key = round * 10_000_000 + batch * 100 + i + 1;
                            let meta = WriteMeta {
                                key,
                                store: 3,
                                category: 0,
                                receipt: Receipt::default(),
                            };
                            Op::Purchase { meta, customer: (key % 97) as u64, amount: 1_000 }
                        })
                        .collect();
                    if client.call(&ops).await.is_err() {
                        return;
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(250 + 67 * round as u64)).await;
            signal(&child, "KILL");
            let _ = writer.await;
        });
        let mut child = child;
        let _ = wait_exit(&mut child);
    }
    let (mut child, _, admin) = start(&mut token);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let view = loop {
        let view = get_json(admin, "/v1/ops/replica", &token);
        assert_eq!(view["configured"], true, "{view}");
        let shards = view["shards"].as_array().unwrap();
        if shards.iter().all(|s| s["lag_records"] == 0 && s["state"] == "running") {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "never caught up: {view}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let durable: u64 =
        view["shards"].as_array().unwrap().iter().map(|s| s["durable_lsn"].as_u64().unwrap()).sum();
    assert!(durable > 100, "the rounds wrote: {view}");
    runtime.block_on(async {
        let db =
            ledger_server::replica::connect(&ReplicaConfig { url: url.clone(), nice: 0 }).await.unwrap();
        let rows: i64 =
            db.query_one("SELECT count(*) FROM transactions", &[]).await.unwrap().get(0);
        assert_eq!(rows as u64, durable, "every durable record once");
        let marks: i64 = db
            .query_one("SELECT sum(lsn)::bigint FROM shard_watermarks", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(marks as u64, durable);
        // Balances in PostgreSQL are the engine's (through the admin API).
        for customer in [1u64, 2, 3, 50, 96] {
            let live = get_json(admin, &format!("/v1/customers/{customer}"), &token);
            let accounts = live["accounts"].as_array().unwrap();
            assert!(!accounts.is_empty(), "customer {customer} bought: {live}");
            for account in accounts {
                let address = account["address"].as_str().unwrap();
                let replica: String = db
                    .query_one(
                        "SELECT (COALESCE(SUM(CASE WHEN credit = $1 THEN amount ELSE -amount END), 0))::text \
                         FROM postings WHERE effect = 'posted' AND (credit = $1 OR debit = $1)",
                        &[&address],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(replica, account["posted"].as_str().unwrap(), "{address}");
            }
        }
    });
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    assert!(metrics.contains("ledger_replica_lag_records{shard=\"0\"} 0"), "{metrics}");
    assert!(metrics.contains("ledger_replica_running{shard=\"1\"} 1"), "{metrics}");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    // `ledgerd reconcile` proves it from the files, without the server.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["--data-dir", data.to_str().unwrap(), "--replica-url", &url, "reconcile"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("every account equals the WAL's"), "{stdout}");
    assert!(stdout.contains(") and lot equals the WAL's"), "{stdout}");
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["--data-dir", data.to_str().unwrap(), "reconcile"])
        .env_remove("LEDGER_REPLICA_URL")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    drop(pg);
}
