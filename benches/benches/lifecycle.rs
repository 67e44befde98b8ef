//! Purchases, settlements and refunds applied by one shard's state machine in memory (no WAL,
//! no threads), each decided as the shard decides it (priced, or its take-back decided) and
//! encoded for its fingerprint: purchases per second against refunds per second in the same
//! run, and the memory the table of refundable purchases takes per purchase. Not a criterion
//! benchmark: it runs a fixed scenario and prints a table row per round.
//!
//! Run: `cargo bench -p ledger-benches --bench lifecycle` (env: LIFECYCLE_PURCHASES, default
//! 1,000,000; LIFECYCLE_CUSTOMERS, default 100,000; LIFECYCLE_ROUNDS, default 3).

use std::time::Instant;

use ledger_engine::ledger::account::Name;
use ledger_engine::ledger::record::{
    AssetDefine, Body, ClassDefine, PurchaseEvent, PurchaseRef, Record, RulesDefine, TxHeader,
};
use ledger_engine::ledger::{Ledger, LedgerConfig};
use ledger_engine::loyalty::Line;
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::wal::payload;
use ledger_engine::{
    AccountFlags, Amount, AssetId, ClassId, IdempotencyKey, Limits, Metadata, Namespace, Receipt,
    ShardId, TerminalId, Timestamp, TxKind,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A shard with the programme of docs/loyalty.md's example rules, its classes and the clawback
/// classes.
fn programme_ledger(at: Timestamp) -> Ledger {
    let limits = Limits { explain_purchases_max: 16_384, ..Limits::default() };
    let config = LedgerConfig { limits, ..LedgerConfig::new(ShardId::new(0).unwrap(), 1) };
    let mut ledger = Ledger::new(config);
    let class = |id, namespace, name, asset, flags| {
        Body::ClassDefine(ClassDefine {
            id: ClassId(id),
            namespace,
            name: Name::class(name).unwrap(),
            asset: AssetId(asset),
            flags,
        })
    };
    let (customer, house) = (Namespace::Customer, Namespace::House);
    let bodies = vec![
        Body::AssetDefine(AssetDefine {
            id: AssetId(0),
            code: Name::asset("PTS").unwrap(),
            scale: 0,
        }),
        Body::AssetDefine(AssetDefine {
            id: AssetId(1),
            code: Name::asset("CASHBACK").unwrap(),
            scale: 2,
        }),
        class(1, customer, "points", 0, AccountFlags::NO_OVERDRAFT),
        class(2, house, "issuance", 0, AccountFlags::NONE),
        class(3, house, "expiry", 0, AccountFlags::NONE),
        class(4, customer, "cashback", 1, AccountFlags::NO_OVERDRAFT),
        class(5, house, "cashback", 1, AccountFlags::NONE),
        class(6, customer, "clawback", 0, AccountFlags::NONE),
        class(7, customer, "cashback_clawback", 1, AccountFlags::NONE),
        Body::RulesDefine(RulesDefine {
            version: 1,
            effective_at: Timestamp(0),
            accounts: ProgrammeAccounts {
                points: ClassId(1),
                issuance: ClassId(2),
                breakage: ClassId(3),
                cashback: Some((ClassId(4), ClassId(5))),
                clawback: Some(ClassId(6)),
                cashback_clawback: Some(ClassId(7)),
            },
            rules: std::sync::Arc::new(ledger_engine::testing::loyalty::example_rules()),
        }),
    ];
    for body in bodies {
        apply(&mut ledger, body, at);
    }
    ledger
}

/// Encodes `body` for its fingerprint (as the shard encodes every record for the WAL) and
/// applies it.
fn apply(ledger: &mut Ledger, body: Body, at: Timestamp) {
    let mut bytes = Vec::with_capacity(256);
    payload::encode_body(&body, &mut bytes);
    let fingerprint = payload::fingerprint(body.kind(), &bytes);
    let record = Record { lsn: ledger.lsn().next(), timestamp: at, body };
    ledger.apply(&record, fingerprint).expect("the scenario's writes apply");
}

fn header(ledger: &Ledger, key: u128, kind: TxKind, at: Timestamp) -> TxHeader {
    TxHeader {
        id: ledger.peek_tx_id(at),
        kind,
        terminal: TerminalId(1),
        idempotency: IdempotencyKey::new(key),
        metadata: Metadata {
            store: 3,
            category: 0,
            receipt: Receipt::new(&format!("R-{key}")).unwrap(),
            annotation: None,
        },
    }
}

/// One round: `purchases` baskets by random customers, then a settlement and a refund of a
/// third of each. Returns (purchases/s, settlements/s, refunds/s, table bytes per purchase).
fn round(purchases: u64, customers: u64) -> (f64, f64, f64, f64) {
    let start = Timestamp(1_793_000_000_000_000_000); // 2026-10-25
    let mut ledger = programme_ledger(start);
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut key = 0_u128;
    let mut clock = start.0;
    let mut tick = || {
        clock += 1_000;
        Timestamp(clock)
    };
    let mut ids = Vec::with_capacity(purchases as usize);
    let started = Instant::now();
    for _ in 0..purchases {
        let at = tick();
        key += 1;
        let customer = next() % customers;
        let lines = [
            Line { category: 10, amount: 1_000 + next() % 9_000, excluded: false },
            Line { category: 20, amount: 500 + next() % 20_000, excluded: false },
            Line { category: 40, amount: 2_500, excluded: false },
        ];
        let header = header(&ledger, key, TxKind::PURCHASE, at);
        let purchase = ledger.price_purchase(header, customer, lines[..].into(), at).unwrap();
        ids.push((purchase.header.id, purchase.lines.iter().map(|line| line.amount).sum::<u64>()));
        apply(&mut ledger, Body::Purchase(purchase), at);
    }
    let purchase_rate = purchases as f64 / started.elapsed().as_secs_f64();
    let bytes = ledger.purchases().memory_bytes() as f64 / ledger.purchases().len() as f64;
    let change = |ledger: &mut Ledger, key, kind, id, event, at| {
        let header = header(ledger, key, kind, at);
        let reference = PurchaseRef::Id(id);
        let change = ledger.decide_purchase_change(header, reference, event, at).unwrap();
        apply(ledger, Body::PurchaseChange(change), at);
    };
    let started = Instant::now();
    for (id, _) in &ids {
        key += 1;
        let at = tick();
        change(&mut ledger, key, TxKind::PURCHASE, *id, PurchaseEvent::Settle, at);
    }
    let settle_rate = purchases as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (id, spend) in &ids {
        key += 1;
        let at = tick();
        let amount = Amount::new(spend / 3).unwrap();
        change(&mut ledger, key, TxKind::REFUND, *id, PurchaseEvent::RefundAmount(amount), at);
    }
    let refund_rate = purchases as f64 / started.elapsed().as_secs_f64();
    ledger.check_invariants().expect("the scenario keeps the invariants");
    assert_eq!(ledger.purchases().len() as u64, purchases);
    (purchase_rate, settle_rate, refund_rate, bytes)
}

fn main() {
    let purchases = env("LIFECYCLE_PURCHASES", 1_000_000);
    let customers = env("LIFECYCLE_CUSTOMERS", 100_000);
    let rounds = env("LIFECYCLE_ROUNDS", 3);
    println!(
        "refundable entry: {} bytes; {purchases} purchases of {customers} customers per round",
        std::mem::size_of::<ledger_engine::loyalty::purchases::Refundable>()
    );
    println!(
        "| round | purchases/s | settlements/s | refunds/s | refunds / purchases | table bytes per purchase |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    let mut purchase_rates = Vec::new();
    for index in 1..=rounds {
        let (purchase, settle, refund, bytes) = round(purchases, customers);
        ratios.push(refund / purchase);
        purchase_rates.push(purchase);
        println!(
            "| {index} | {purchase:.0} | {settle:.0} | {refund:.0} | {:.2} | {bytes:.1} |",
            refund / purchase
        );
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "median purchases/s {:.0}; median refunds / purchases {:.2}",
        median(&mut purchase_rates),
        median(&mut ratios)
    );
}
