//! The replica's loyalty tables and reporting views against the engine's own figures, on a
//! real PostgreSQL the test starts (`common::pg`): a year of a programme on a manual clock
//! (purchases over three months' cohorts with a promotion's bonus lots, tiers up and down,
//! settlements, refunds, a failure, a reversal, holds captured, voided and left open, a
//! transfer to a member who never bought, a partner conversion, a second rule version, lots
//! expiring into breakage) is replicated, and every view equals what the engine says: balances,
//! liability per class and in money, by expiry month and by cohort, daily flows and breakage,
//! open holds, tier distribution, purchases by state, lots and members. Then the members and
//! lots are dropped and written whole again, as for a database replicated before them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::pg::{TestPg, wait_caught_up};
use ledger_engine::clock::ManualClock;
use ledger_engine::ids::TxId;
use ledger_engine::loyalty::calendar::{Date, month_index, start_of};
use ledger_engine::loyalty::rules::{Promotion, PromotionEffect, PromotionScope, TierRule};
use ledger_engine::loyalty::{Ratio, RuleSet};
use ledger_engine::testing::loyalty::{Loyalty, Partner};
use ledger_engine::{AccountId, Command, Engine, EngineConfig, Limits, Query, Response, Timestamp};
use ledger_server::replica::ReplicaConfig;
use ledger_server::replica::replicator::Replicator;

const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;

fn at(year: u32, month: u32, day: u32) -> Timestamp {
    Timestamp(start_of(Date { year, month, day }).0 + 10 * 3_600 * SECOND)
}

fn limits() -> Limits {
    Limits { idempotency_keys_max: 1 << 14, holds_open_max: 4096, ..Limits::test_min() }
}

/// 1 point per minor unit; bronze, silver at 300, gold at 2,000 over a 2-month window; a
/// bonus of ×2 at store 9 (bonus lots, 12 months); a point worth 1/10 of a minor unit.
fn rules(point_value_points: u64) -> RuleSet {
    let mut rules = RuleSet::flat(1, 1);
    let tier = |name: &str, threshold, multiplier| TierRule {
        name: name.into(),
        threshold,
        multiplier: Ratio(multiplier),
    };
    rules.tiers =
        vec![tier("bronze", 0, 10_000), tier("silver", 300, 10_000), tier("gold", 2_000, 10_000)];
    rules.tier_window_months = 2;
    rules.promotions.push(Promotion {
        name: "store-nine".into(),
        starts_at: Timestamp(0),
        ends_at: Timestamp(u64::MAX),
        scope: PromotionScope::Stores(vec![9]),
        effect: PromotionEffect::Multiplier(Ratio(20_000)),
    });
    rules.purchases.point_value.points = point_value_points;
    rules.validate().unwrap();
    rules
}

fn committed(response: Response) -> ledger_engine::Committed {
    response.committed().unwrap_or_else(|| panic!("{response:?}"))
}

/// What the test did that the engine does not report: each customer's first purchase.
#[derive(Default)]
struct Made {
    first_purchase: BTreeMap<u64, Timestamp>,
    purchases: Vec<TxId>,
    /// Each purchase's state and refunded amount as the engine answered while it kept them
    /// (purchases leave the shard's table after the refund window).
    states: BTreeMap<TxId, (&'static str, u64)>,
    open_holds: Vec<u64>,
    key: u128,
}

impl Made {
    fn key(&mut self) -> u128 {
        self.key += 1;
        self.key
    }

    fn purchase(
        &mut self,
        engine: &Engine,
        loyalty: &Loyalty,
        customer: u64,
        store: u32,
        amount: u64,
    ) -> TxId {
        let key = self.key();
        let tx =
            committed(engine.execute(loyalty.purchase(key, customer, store, &[(0, amount)]))).tx_id;
        self.first_purchase.entry(customer).or_insert(engine.now());
        self.purchases.push(tx);
        tx
    }

    /// Notes the engine's state of every purchase it keeps.
    fn note_states(&mut self, engine: &Engine) {
        for tx in &self.purchases {
            let Response::Purchase(entry) =
                engine.execute(Command::Read(Query::Purchase { tx: *tx }))
            else {
                continue;
            };
            self.states.insert(*tx, (entry.state.name(), entry.refunded));
        }
    }
}

/// A year of the programme; the clock ends at 2026-02-03.
fn year_of_programme(
    engine: &Engine,
    clock: &ManualClock,
    loyalty: &Loyalty,
    accounts: ledger_engine::loyalty::programme::ProgrammeAccounts,
    made: &mut Made,
) {
    // January 2025: customers 0..12, the even ones at store 9 (bonus lots).
    clock.set(at(2025, 1, 10));
    for customer in 0..12 {
        made.purchase(engine, loyalty, customer, if customer % 2 == 0 { 9 } else { 1 }, 100);
    }
    // February: customers 12..24 join; 0..4 spend enough for silver.
    clock.set(at(2025, 2, 12));
    for customer in 12..24 {
        made.purchase(engine, loyalty, customer, 1, 50 + customer);
    }
    for customer in 0..4 {
        made.purchase(engine, loyalty, customer, 1, 400);
    }
    // March: customers 24..30 join; lifecycle of February's purchases.
    clock.set(at(2025, 3, 5));
    for customer in 24..30 {
        made.purchase(engine, loyalty, customer, 1, 120);
    }
    let february: Vec<TxId> = made.purchases[12..28].to_vec();
    for tx in &february[0..8] {
        committed(engine.execute(loyalty.settle(made.key(), *tx)));
    }
    committed(engine.execute(loyalty.refund(made.key(), february[0], 20)));
    committed(engine.execute(loyalty.refund(made.key(), february[1], 50 + 13)));
    committed(engine.execute(loyalty.fail(made.key(), february[8])));
    committed(engine.execute(loyalty.reverse(made.key(), february[9])));
    made.note_states(engine);
    // Redemptions, holds (captured, voided, left open), a transfer to a non-buyer.
    for customer in 5..10 {
        committed(engine.execute(loyalty.redeem(made.key(), customer, 30)));
    }
    let hold = |made: &mut Made, customer| {
        committed(engine.execute(loyalty.hold(made.key(), customer, 20, 900 * DAY))).tx_id
    };
    let captured = hold(made, 2);
    committed(engine.execute(loyalty.capture(made.key(), captured, Some(15))));
    let voided = hold(made, 3);
    committed(engine.execute(loyalty.void(made.key(), voided)));
    for customer in [4, 5] {
        let open = hold(made, customer);
        made.open_holds.push(open.0);
    }
    // A partner's points converted into the programme's (issued, an earned lot).
    let partner = Partner::define(engine, loyalty);
    committed(engine.execute(partner.credit(made.key(), 50, 100)));
    engine.define_rate(partner.inbound(loyalty, (3, 2), (2, 1)), None).unwrap();
    committed(engine.execute(loyalty.convert(made.key(), 50, (partner.asset, loyalty.pts), 40)));
    // A second rule version from April: a point worth 1/5 of a minor unit.
    engine.define_rules(rules(5), accounts, Some(at(2025, 4, 1))).unwrap();
    // January 2026: a transfer to a customer who never bought (a transfer lot, 6 months).
    clock.set(at(2026, 1, 20));
    committed(engine.execute(loyalty.transfer(made.key(), 1, 100, 10)));
    // February 2026: January 2025's bonus lots expired (12 months) into breakage; customer 0
    // buys again, priced at bronze (the window rolled), which falls their recorded tier.
    clock.set(at(2026, 2, 3));
    let february_2026 = month_index(at(2026, 2, 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.liability().unwrap().by_expiry_month.keys().next().copied().unwrap_or(u32::MAX)
        < february_2026
    {
        assert!(std::time::Instant::now() < deadline, "the sweep expires the due lots");
        std::thread::sleep(Duration::from_millis(5));
    }
    made.purchase(engine, loyalty, 0, 9, 10);
}

/// Rows of text columns (every query casts its columns to text).
async fn rows(db: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            (0..row.len()).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect()
        })
        .collect()
}

fn date(day: u32) -> String {
    ledger_engine::loyalty::calendar::rfc3339(Timestamp(u64::from(day) * DAY))[..10].to_string()
}

fn month_date(month: u32) -> String {
    format!("{:04}-{:02}-01", month / 12, month % 12 + 1)
}

fn points_balance(engine: &Engine, loyalty: &Loyalty, customer: u64) -> i128 {
    match engine.execute(Command::Read(Query::Account(loyalty.customer(customer)))) {
        Response::Account(view) => view.counters.balance_posted(),
        _ => 0,
    }
}

/// Members and lots as the engine holds them, as the replica's rows say them.
fn engine_members(
    engine: &Engine,
    loyalty: &Loyalty,
    customers: &[u64],
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let (mut members, mut lots) = (Vec::new(), Vec::new());
    for &customer in customers {
        let Response::Member(view) = engine.execute(loyalty.member_query(customer, 0)) else {
            panic!("a member query")
        };
        let in_lots: u64 = view.lots.iter().map(|lot| lot.remaining).sum();
        members.push(vec![
            customer.to_string(),
            view.tier_recorded.to_string(),
            in_lots.to_string(),
            view.held.to_string(),
            view.lot_count.to_string(),
        ]);
        for lot in &view.lots {
            lots.push(vec![
                customer.to_string(),
                lot.kind.name().to_string(),
                date(lot.expires_day),
                lot.origin.0.to_string(),
                lot.amount.to_string(),
                lot.remaining.to_string(),
            ]);
        }
    }
    lots.sort();
    (members, lots)
}

const MEMBERS: &str = "SELECT customer::text, tier::text, points_in_lots::text, \
    points_held::text, lots::text FROM members m ORDER BY m.customer";
const COHORTS: &str = "SELECT COALESCE(cohort::text, ''), points::text \
    FROM liability_by_cohort WHERE points <> 0 ORDER BY 1";
const LOTS: &str = "SELECT customer::text, kind, expires_on::text, origin_tx::text, \
    amount::text, remaining::text FROM lots";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_equals_the_engines_figures_after_a_year_of_the_programme() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap();
    let url = pg.create_database("reports").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at(2025, 1, 2)));
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(2);
    config.limits = limits();
    config.clock = clock.clone();
    config.hold_timeout_max_nanos = 1_000 * DAY;
    config.tuning.tick = Duration::from_millis(1);
    let engine = Arc::new(Engine::open(config).unwrap());
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(rules(10), accounts, None).unwrap();
    let mut made = Made::default();
    tokio::task::block_in_place(|| {
        year_of_programme(&engine, &clock, &loyalty, accounts, &mut made)
    });

    let config = ReplicaConfig { url: url.clone(), nice: 0 };
    let replicator = Replicator::spawn(Arc::clone(&engine), config.clone(), limits()).unwrap();
    wait_caught_up(&engine, &replicator).await;
    let db = ledger_server::replica::connect(&config).await.unwrap();
    let registry = engine.registry();
    let figures = engine.liability().unwrap();

    // Balance per account: every account's posted balance and pending counters.
    for row in rows(
        &db,
        "SELECT address, balance::text, pending_debits::text, \
        pending_credits::text FROM account_balances",
    )
    .await
    {
        let address: ledger_engine::ledger::account::AccountAddress = row[0].parse().unwrap();
        let account: AccountId = registry.resolve(&address).unwrap();
        let live = engine.account_total(account).unwrap();
        let engine_row = [
            live.balance_posted().to_string(),
            { live.debits_pending }.to_string(),
            { live.credits_pending }.to_string(),
        ];
        assert_eq!(row[1..], engine_row, "{}", row[0]);
    }

    // Liability per customer class, and the points in money at the version in force (2).
    let mut classes: Vec<Vec<String>> = figures
        .classes
        .iter()
        .map(|(class, total)| {
            let def = registry.class(*class).unwrap();
            vec![
                def.name.to_string(),
                registry.asset(def.asset).unwrap().code.to_string(),
                total.to_string(),
            ]
        })
        .collect();
    classes.sort();
    assert_eq!(
        rows(
            &db,
            "SELECT class, asset, total::text FROM liability_by_class WHERE total <> 0 \
            ORDER BY class"
        )
        .await,
        classes
    );
    let outstanding = figures.class_total(loyalty.points);
    assert!(outstanding > 1_000, "{outstanding}");
    assert_eq!(
        rows(
            &db,
            "SELECT asset, points::text, value_minor_units::text, rules_version::text \
            FROM liability_in_money"
        )
        .await,
        [["PTS".to_string(), outstanding.to_string(), (outstanding / 5).to_string(), "2".into()]]
    );
    let by_asset =
        rows(&db, "SELECT asset, total::text FROM liability_by_asset ORDER BY asset").await;
    assert!(by_asset.contains(&vec!["PTS".to_string(), outstanding.to_string()]), "{by_asset:?}");

    // Liability by expiry month: the engine's, month by month.
    let months: Vec<Vec<String>> = figures
        .by_expiry_month
        .iter()
        .map(|(month, points)| vec![month_date(*month), points.to_string()])
        .collect();
    assert!(months.len() >= 3, "{months:?}");
    assert_eq!(
        rows(&db, "SELECT month::text, points::text FROM liability_by_expiry_month ORDER BY month")
            .await,
        months
    );

    // Liability by cohort (month of the first purchase; none for the transfer's recipient).
    let mut cohorts: BTreeMap<String, i128> = BTreeMap::new();
    for customer in (0..30).chain([50, 100]) {
        let cohort = made
            .first_purchase
            .get(&customer)
            .map_or_else(String::new, |time| month_date(month_index(*time)));
        *cohorts.entry(cohort).or_default() += points_balance(&engine, &loyalty, customer);
    }
    let cohorts: Vec<Vec<String>> = cohorts
        .into_iter()
        .filter(|(_, points)| *points != 0)
        .map(|(cohort, points)| vec![cohort, points.to_string()])
        .collect();
    assert_eq!(cohorts.len(), 4, "three months of buyers and the non-buyers: {cohorts:?}");
    assert_eq!(rows(&db, COHORTS).await, cohorts);

    // Daily flows and breakage: the engine's days.
    let flows: Vec<Vec<String>> = figures
        .flows
        .days()
        .map(|(day, f)| {
            [
                date(day),
                f.issued.to_string(),
                f.redeemed.to_string(),
                f.expired.to_string(),
                f.refunded.to_string(),
            ]
            .to_vec()
        })
        .collect();
    assert!(flows.iter().any(|f| f[3] != "0"), "points expired: {flows:?}");
    assert!(flows.iter().any(|f| f[4] != "0"), "points refunded: {flows:?}");
    assert_eq!(
        rows(
            &db,
            "SELECT day::text, issued::text, redeemed::text, expired::text, \
            refunded::text FROM points_flows_daily ORDER BY day"
        )
        .await,
        flows
    );
    let mut by_month: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (day, f) in figures.flows.days() {
        let entry =
            by_month.entry(month_date(month_index(Timestamp(u64::from(day) * DAY)))).or_default();
        (entry.0, entry.1) = (entry.0 + f.issued, entry.1 + f.expired);
    }
    let breakage: Vec<Vec<String>> = by_month
        .iter()
        .map(|(month, (issued, expired))| {
            vec![month.clone(), issued.to_string(), expired.to_string()]
        })
        .collect();
    assert_eq!(
        rows(
            &db,
            "SELECT month::text, issued::text, expired::text FROM breakage_by_month \
            ORDER BY month"
        )
        .await,
        breakage
    );

    // Open holds: the two left open, as many as the shards hold.
    let holds: u64 = engine.stats().iter().map(|s| s.holds).sum();
    let mut open: Vec<Vec<String>> = made.open_holds.iter().map(|h| vec![h.to_string()]).collect();
    open.sort();
    assert_eq!(open.len() as u64, holds);
    assert_eq!(rows(&db, "SELECT hold::text FROM open_holds ORDER BY 1").await, open);

    // Tier distribution: the engine's counts, named by the version in force.
    let names = ["bronze", "silver", "gold"];
    let tiers: Vec<Vec<String>> = figures
        .tiers
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(tier, count)| vec![tier.to_string(), names[tier].to_string(), count.to_string()])
        .collect();
    assert!(tiers.len() >= 2, "{tiers:?}");
    assert_eq!(
        rows(&db, "SELECT tier::text, name, members::text FROM tier_distribution ORDER BY tier")
            .await,
        tiers
    );
    // Tier changes: customer 0 went up to silver and back down, in that order.
    assert_eq!(
        rows(
            &db,
            "SELECT tier_before::text, tier_after::text, record_kind FROM tier_changes \
            WHERE customer = 0 ORDER BY time"
        )
        .await,
        [["0", "1", "purchase"], ["1", "0", "purchase"]].map(|r| r.map(String::from).to_vec())
    );

    // Purchases by lifecycle state, each purchase's state the engine's.
    made.note_states(&engine);
    assert_eq!(made.states.len(), made.purchases.len(), "each noted while kept");
    let mut states: BTreeMap<&str, u64> = BTreeMap::new();
    for (tx, (state, refunded)) in &made.states {
        *states.entry(state).or_default() += 1;
        let replica = rows(
            &db,
            &format!("SELECT state, refunded::text FROM purchases WHERE tx_id = {}", tx.0),
        )
        .await;
        assert_eq!(replica, [[state.to_string(), refunded.to_string()]], "{tx:?}");
    }
    assert!(states.len() >= 4, "{states:?}");
    let states: Vec<Vec<String>> =
        states.iter().map(|(state, count)| vec![state.to_string(), count.to_string()]).collect();
    assert_eq!(
        rows(&db, "SELECT state, purchases::text FROM purchases_by_state ORDER BY state").await,
        states
    );
    assert_eq!(
        rows(
            &db,
            "SELECT event, count(*)::text FROM purchase_transitions GROUP BY event \
            ORDER BY event"
        )
        .await,
        [["fail", "1"], ["refund", "2"], ["reverse", "1"], ["settle", "8"]]
            .map(|r| r.map(String::from).to_vec())
    );

    // Rule and rate versions, once each though every shard recorded them.
    assert_eq!(
        rows(
            &db,
            "SELECT version::text, point_value_points::text, \
            (effective_at IS NULL)::text, tiers->1->>'name' FROM rule_versions ORDER BY version"
        )
        .await,
        [["1", "10", "true", "silver"], ["2", "5", "false", "silver"]]
            .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(
        rows(
            &db,
            "SELECT version::text, from_asset, to_asset, numerator::text, \
            denominator::text FROM exchange_rates"
        )
        .await,
        [["1", "PARTNER_A_POINTS", "PTS", "3", "2"].map(String::from).to_vec()]
    );

    // Members and lots as of the watermark: the engine's.
    let customers: Vec<u64> = (0..30).chain([50, 100]).collect();
    let (members, lots) = engine_members(&engine, &loyalty, &customers);
    assert_eq!(rows(&db, MEMBERS).await, members);
    assert_eq!(rows(&db, &format!("{LOTS} ORDER BY 1, 2, 3, 4")).await, lots);
    assert!(lots.iter().any(|lot| lot[1] == "transfer") && lots.iter().any(|l| l[1] == "bonus"));

    // Every example query of docs/reporting.md runs on this schema.
    let doc = include_str!("../../docs/reporting.md");
    let examples: Vec<&str> = doc
        .split("```sql\n")
        .skip(1)
        .map(|block| &block[..block.find("```").expect("a closed block")])
        .collect();
    assert!(examples.len() >= 8, "{}", examples.len());
    for example in examples {
        db.query(example, &[]).await.unwrap_or_else(|e| panic!("{example}: {e}"));
    }

    // A database whose members and lots predate them (replicated before migration 2): at the
    // next start they are written whole, cohorts included.
    replicator.stop();
    db.batch_execute("TRUNCATE members, lots; UPDATE shard_watermarks SET loyalty_synced = false")
        .await
        .unwrap();
    let replicator = Replicator::spawn(Arc::clone(&engine), config.clone(), limits()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rows(&db, "SELECT count(*)::text FROM shard_watermarks WHERE NOT loyalty_synced").await[0]
        [0]
        != "0"
    {
        assert!(tokio::time::Instant::now() < deadline, "members written whole");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows(&db, MEMBERS).await, members);
    assert_eq!(rows(&db, &format!("{LOTS} ORDER BY 1, 2, 3, 4")).await, lots);
    assert_eq!(rows(&db, COHORTS).await, cohorts);
    // And the replicator goes on with the next records.
    tokio::task::block_in_place(|| made.purchase(&engine, &loyalty, 100, 1, 7));
    wait_caught_up(&engine, &replicator).await;
    let first = rows(
        &db,
        "SELECT (first_purchase_at IS NOT NULL)::text, lots::text FROM members \
        WHERE customer = 100",
    )
    .await;
    assert_eq!(first, [["true", "2"]], "the transfer's lot and the purchase's");
    replicator.stop();
    drop(pg);
}
