//! The PostgreSQL reporting replica against a real server this test starts itself (a
//! throwaway cluster, `common::pg`): the schema's migrations from an empty database and again,
//! refusals of a database migrated otherwise, and `ledgerd migrate`.

mod common;

use std::process::Command;

use common::pg::TestPg;
use ledger_server::replica::migrations::{self, MIGRATIONS, MigrateError, Migration};
use ledger_server::replica::{self as replica, ReplicaConfig};

async fn client(url: &str) -> tokio_postgres::Client {
    replica::connect(&ReplicaConfig { url: url.to_string(), nice: 0 }).await.unwrap()
}

async fn names(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    client.query(query, &[]).await.unwrap().iter().map(|row| row.get::<_, String>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_build_the_schema_once_and_refuse_a_database_migrated_otherwise() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap();
    let url = pg.create_database("reports").await;
    let mut db = client(&url).await;
    let first = migrations::migrate(&mut db).await.unwrap();
    assert_eq!(first.applied, [1, 2]);
    assert_eq!(first.version, MIGRATIONS.len() as i32);
    let tables = names(
        &db,
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .await;
    for table in [
        "accounts",
        "exchange_rates",
        "ledger_identity",
        "ledger_schema_migrations",
        "lots",
        "members",
        "postings",
        "purchase_transitions",
        "purchases",
        "rule_versions",
        "shard_watermarks",
        "tier_changes",
        "transactions",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    let views = names(
        &db,
        "SELECT viewname::text FROM pg_views WHERE schemaname = 'public' ORDER BY viewname",
    )
    .await;
    assert_eq!(
        views,
        [
            "account_balances",
            "breakage_by_month",
            "liability_by_asset",
            "liability_by_class",
            "liability_by_cohort",
            "liability_by_expiry_month",
            "liability_in_money",
            "open_holds",
            "points_flows_daily",
            "purchases_by_state",
            "rule_version_in_force",
            "tier_distribution",
        ]
    );
    let partitioned = names(
        &db,
        "SELECT c.relname::text FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid \
         ORDER BY 1",
    )
    .await;
    assert_eq!(partitioned, ["postings", "transactions"]);
    // Monthly partitions for a range that crosses a year.
    db.execute(
        "SELECT ledger_ensure_partitions('2026-11-27T10:00:00Z', '2027-01-02T00:00:00Z')",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "SELECT ledger_ensure_partitions('2026-12-01T00:00:00Z', '2026-12-31T23:00:00Z')",
        &[],
    )
    .await
    .unwrap();
    let months = names(
        &db,
        "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'transactions_%' ORDER BY 1",
    )
    .await;
    assert_eq!(months, ["transactions_2026_11", "transactions_2026_12", "transactions_2027_01"]);
    // A row lands in its month.
    db.execute(
        "INSERT INTO transactions (time, shard, lsn, record_kind) \
         VALUES ('2026-12-31T23:59:59Z', 0, 1, 'transaction')",
        &[],
    )
    .await
    .unwrap();
    let placed: String = db
        .query_one("SELECT tableoid::regclass::text FROM transactions WHERE lsn = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(placed, "transactions_2026_12");

    // Amounts go in as binary numeric, exact for every u64.
    for value in [1u64, 9_999, 10_000, 10_001, 100_000_000, 123_456_789, u64::MAX] {
        let text: String = db
            .query_one(
                "SELECT $1::numeric::text",
                &[&ledger_server::replica::writer::Numeric(value)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(text, value.to_string());
    }

    // Again: nothing to do, nothing changed.
    let again = migrations::migrate(&mut db).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");

    // A later build's migration applies alone; this build then refuses the database.
    let next = MIGRATIONS.len() as i32 + 1;
    let mut later: Vec<Migration> = MIGRATIONS.to_vec();
    later.push(Migration { version: next, name: "later", sql: "CREATE TABLE later (x int);" });
    assert_eq!(migrations::migrate_with(&mut db, &later).await.unwrap().applied, [next]);
    let refused = migrations::migrate(&mut db).await.unwrap_err();
    assert!(matches!(refused, MigrateError::Newer(v) if v == next), "{refused}");
    // A released migration edited afterwards is refused, naming it.
    let mut edited = later.clone();
    edited[0] = Migration { sql: "CREATE TABLE edited (x int);", ..MIGRATIONS[0] };
    let refused = migrations::migrate_with(&mut db, &edited).await.unwrap_err();
    assert!(matches!(refused, MigrateError::Changed { version: 1, .. }), "{refused}");
    assert!(refused.to_string().contains("migration 1 (base)"), "{refused}");
    let tables =
        names(&db, "SELECT tablename::text FROM pg_tables WHERE tablename = 'edited'").await;
    assert!(tables.is_empty(), "a refused run changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loyalty_migration_marks_shards_replicated_before_it_for_a_whole_write() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap();
    let url = pg.create_database("reports").await;
    let mut db = client(&url).await;
    assert_eq!(migrations::migrate_with(&mut db, &MIGRATIONS[..1]).await.unwrap().applied, [1]);
    db.execute(
        "INSERT INTO shard_watermarks (shard, lsn, record_hash, record_time) \
         VALUES (0, 41, decode(repeat('ab', 32), 'hex'), now())",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(migrations::migrate(&mut db).await.unwrap().applied, [2]);
    let row = db
        .query_one("SELECT loyalty_from, loyalty_synced FROM shard_watermarks WHERE shard = 0", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (41, false));
    // A shard first replicated after it starts whole, from its first record.
    db.execute(
        "INSERT INTO shard_watermarks (shard, lsn, record_hash, record_time) \
         VALUES (1, 5, decode(repeat('cd', 32), 'hex'), now())",
        &[],
    )
    .await
    .unwrap();
    let row = db
        .query_one("SELECT loyalty_from, loyalty_synced FROM shard_watermarks WHERE shard = 1", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (0, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgerd_migrate_brings_the_schema_up_to_date_and_says_why_it_cannot() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap();
    let url = pg.create_database("reports").await;
    let ledgerd = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
        command.args(args).env_remove("LEDGER_REPLICA_URL");
        if let Some(url) = env {
            command.env("LEDGER_REPLICA_URL", url);
        }
        command.output().unwrap()
    };
    let first = ledgerd(&["--replica-url", &url, "migrate"], None);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("version 2 (applied now: [1, 2])"), "{stdout}");
    // From the environment, a second time: nothing to apply.
    let second = ledgerd(&["migrate"], Some(&url));
    assert_eq!(second.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&second.stdout).contains("applied now: []"));
    // No replica configured: 2. A server that does not answer: 1, with the address and no
    // password.
    let none = ledgerd(&["migrate"], None);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no replica is configured"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = format!("postgres://postgres:hunter2@127.0.0.1:{closed}/reports");
    let down = ledgerd(&["--replica-url", &unreachable, "migrate"], None);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the replica") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    // A malformed string is refused before anything starts.
    let malformed = ledgerd(&["--replica-url", "postgres://[bad", "migrate"], None);
    assert_ne!(malformed.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("not a PostgreSQL connection string")
    );
    // --print-config shows the replica without its password.
    let printed = ledgerd(&["--replica-url", &unreachable, "--print-config"], None);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(text.contains("[replica]") && text.contains("postgres:***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    drop(pg);
}
