//! A small loyalty setup shared by tests and benches: one asset, customer points accounts,
//! the two house accounts points come from and go to, and request builders for them.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::amount::Amount;
use crate::engine::Engine;
use crate::ids::{IdempotencyKey, TerminalId, TxId};
use crate::ledger::account::{AccountFlags, AccountId, AssetId, ClassId, Namespace};
use crate::ledger::command::{Command, Operation, Query, Request, Response};
use crate::ledger::record::{Metadata, Posting, PurchaseEvent, PurchaseRef, Receipt, TxKind};
use crate::loyalty::programme::ProgrammeAccounts;
use crate::shard::ReplySink;

/// The rule set of docs/loyalty.md's complete example (5 categories, 4 tiers, 2 promotions,
/// caps and cashback), read from the document itself.
pub fn example_rules() -> crate::loyalty::RuleSet {
    const DOCUMENT: &str = include_str!("../../../docs/loyalty.md");
    let section = &DOCUMENT[DOCUMENT.find("## Rule files").expect("section")..];
    let start = section.find("```toml\n").expect("example") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("fence");
    crate::loyalty::rules_file::parse(&section[start..end]).expect("the documented example").rules
}

/// The ids of the loyalty setup's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loyalty {
    /// The points asset, `PTS`.
    pub pts: AssetId,
    /// `customer:<id>:points`.
    pub points: ClassId,
    /// `house:issuance`: debited when points are earned.
    pub issuance: ClassId,
    /// `house:redemption`: credited when points are spent.
    pub redemption: ClassId,
}

impl Loyalty {
    /// Defines the setup on `engine` (or finds it, if it exists).
    pub fn define(engine: &Engine) -> Loyalty {
        let pts = engine.define_asset("PTS", 0).expect("define PTS");
        let points = engine
            .define_class(Namespace::Customer, "points", pts, AccountFlags::NO_OVERDRAFT)
            .expect("define points");
        let issuance = engine
            .define_class(Namespace::House, "issuance", pts, AccountFlags::NONE)
            .expect("define issuance");
        let redemption = engine
            .define_class(Namespace::House, "redemption", pts, AccountFlags::NONE)
            .expect("define redemption");
        Loyalty { pts, points, issuance, redemption }
    }

    /// Defines what the loyalty programme needs beyond the setup (`house:expiry` for
    /// breakage; the `CASHBACK` asset with `customer:<id>:cashback` and `house:cashback`) and
    /// returns the programme's accounts.
    pub fn define_programme(&self, engine: &Engine) -> ProgrammeAccounts {
        let breakage = engine
            .define_class(Namespace::House, "expiry", self.pts, AccountFlags::NONE)
            .expect("define expiry");
        let cash = engine.define_asset("CASHBACK", 2).expect("define CASHBACK");
        let cashback = engine
            .define_class(Namespace::Customer, "cashback", cash, AccountFlags::NO_OVERDRAFT)
            .expect("define cashback");
        let funding = engine
            .define_class(Namespace::House, "cashback", cash, AccountFlags::NONE)
            .expect("define house cashback");
        let clawback = engine
            .define_class(Namespace::Customer, "clawback", self.pts, AccountFlags::NONE)
            .expect("define clawback");
        let cashback_clawback = engine
            .define_class(Namespace::Customer, "cashback_clawback", cash, AccountFlags::NONE)
            .expect("define cashback clawback");
        ProgrammeAccounts {
            points: self.points,
            issuance: self.issuance,
            breakage,
            cashback: Some((cashback, funding)),
            clawback: Some(clawback),
            cashback_clawback: Some(cashback_clawback),
        }
    }

    /// A customer's points account.
    pub fn customer(&self, customer: u64) -> AccountId {
        AccountId::new(self.points, customer)
    }

    /// The issuance house account.
    pub fn issuance(&self) -> AccountId {
        AccountId::new(self.issuance, 0)
    }

    /// The redemption house account.
    pub fn redemption(&self) -> AccountId {
        AccountId::new(self.redemption, 0)
    }

    fn request(&self, key: u128, kind: TxKind, operation: Operation) -> Command {
        Command::Write(Request {
            terminal: TerminalId(1),
            idempotency: IdempotencyKey::new(key),
            kind,
            metadata: Metadata {
                store: 1,
                category: 0,
                receipt: Receipt::new("T-1").expect("short"),
                annotation: None,
            },
            operation,
        })
    }

    fn posting(&self, debit: AccountId, credit: AccountId, amount: u64) -> Posting {
        Posting {
            debit,
            credit,
            asset: self.pts,
            amount: Amount::new(amount).expect("positive amount"),
        }
    }

    /// Earn `amount` points.
    pub fn earn(&self, key: u128, customer: u64, amount: u64) -> Command {
        let posting = self.posting(self.issuance(), self.customer(customer), amount);
        self.request(
            key,
            TxKind::PURCHASE,
            Operation::Post { postings: smallvec::smallvec![posting] },
        )
    }

    /// Redeem `amount` points.
    pub fn redeem(&self, key: u128, customer: u64, amount: u64) -> Command {
        let posting = self.posting(self.customer(customer), self.redemption(), amount);
        self.request(
            key,
            TxKind::REDEEM,
            Operation::Post { postings: smallvec::smallvec![posting] },
        )
    }

    /// Move `amount` points between customers.
    pub fn transfer(&self, key: u128, from: u64, to: u64, amount: u64) -> Command {
        let operation = Operation::Transfer {
            source: self.customer(from),
            destination: self.customer(to),
            amount: Amount::new(amount).expect("positive amount"),
        };
        self.request(key, TxKind::TRANSFER, operation)
    }

    /// A customer class whose accounts may never be credited beyond their debits: every
    /// cross-shard transfer into it is refused by its destination and refunded.
    pub fn define_capped_class(&self, engine: &crate::Engine) -> crate::ClassId {
        engine
            .define_class(
                crate::Namespace::Customer,
                "capped",
                self.pts,
                crate::AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            )
            .expect("define the capped class")
    }

    /// A transfer from customer `from`'s points to customer `to`'s account of `class`.
    pub fn transfer_to_class(
        &self,
        class: crate::ClassId,
        key: u128,
        from: u64,
        to: u64,
        amount: u64,
    ) -> Command {
        let mut command = self.transfer(key, from, to, amount);
        if let Command::Write(request) = &mut command
            && let Operation::Transfer { destination, .. } = &mut request.operation
        {
            *destination = crate::AccountId::new(class, to);
        }
        command
    }

    /// Hold `amount` points for a redemption.
    pub fn hold(&self, key: u128, customer: u64, amount: u64, timeout_nanos: u64) -> Command {
        let posting = self.posting(self.customer(customer), self.redemption(), amount);
        self.request(key, TxKind::REDEEM, Operation::Hold { posting, timeout_nanos })
    }

    /// Capture a hold.
    pub fn capture(&self, key: u128, hold: TxId, amount: Option<u64>) -> Command {
        let amount = amount.map(|value| Amount::new(value).expect("positive amount"));
        self.request(key, TxKind::REDEEM, Operation::Capture { hold, amount })
    }

    /// Void a hold.
    pub fn void(&self, key: u128, hold: TxId) -> Command {
        self.request(key, TxKind::REDEEM, Operation::Void { hold })
    }

    /// Reverse an earlier transaction.
    pub fn reverse(&self, key: u128, original: TxId) -> Command {
        self.request(key, TxKind::REVERSAL, Operation::Reverse { original })
    }

    /// A purchase of `lines` (`(category, amount)`) at `store`, priced by the engine.
    pub fn purchase(&self, key: u128, customer: u64, store: u32, lines: &[(u16, u64)]) -> Command {
        let lines = lines
            .iter()
            .map(|&(category, amount)| crate::loyalty::Line { category, amount, excluded: false })
            .collect();
        let mut command =
            self.request(key, TxKind::PURCHASE, Operation::Purchase { customer, lines });
        if let Command::Write(request) = &mut command {
            request.metadata.store = store;
        }
        command
    }

    /// A purchase with its own receipt.
    pub fn purchase_with_receipt(
        &self,
        key: u128,
        customer: u64,
        (store, receipt): (u32, &str),
        lines: &[(u16, u64, bool)],
    ) -> Command {
        let lines = basket(lines);
        let mut command =
            self.request(key, TxKind::PURCHASE, Operation::Purchase { customer, lines });
        if let Command::Write(request) = &mut command {
            request.metadata.store = store;
            request.metadata.receipt = Receipt::new(receipt).expect("short receipt");
        }
        command
    }

    /// A settlement, failure or refund of purchase `purchase`.
    pub fn change(&self, key: u128, purchase: TxId, event: PurchaseEvent) -> Command {
        let kind = match event {
            PurchaseEvent::Settle => TxKind::PURCHASE,
            _ => TxKind::REFUND,
        };
        let reference = PurchaseRef::Id(purchase);
        self.request(key, kind, Operation::PurchaseChange { reference, event })
    }

    /// Settle purchase `purchase`.
    pub fn settle(&self, key: u128, purchase: TxId) -> Command {
        self.change(key, purchase, PurchaseEvent::Settle)
    }

    /// Fail purchase `purchase`.
    pub fn fail(&self, key: u128, purchase: TxId) -> Command {
        self.change(key, purchase, PurchaseEvent::Fail)
    }

    /// Refund `amount` of purchase `purchase`'s spend.
    pub fn refund(&self, key: u128, purchase: TxId, amount: u64) -> Command {
        let amount = Amount::new(amount).expect("positive amount");
        self.change(key, purchase, PurchaseEvent::RefundAmount(amount))
    }

    /// Refund lines (`(category, amount, excluded)`) of purchase `purchase`.
    pub fn refund_lines(&self, key: u128, purchase: TxId, lines: &[(u16, u64, bool)]) -> Command {
        self.change(key, purchase, PurchaseEvent::RefundLines(basket(lines)))
    }

    /// A settlement, failure or refund of the purchase of `customer` with this store and
    /// receipt.
    pub fn change_by_receipt(
        &self,
        key: u128,
        customer: u64,
        (store, receipt): (u32, &str),
        event: PurchaseEvent,
    ) -> Command {
        let kind = match event {
            PurchaseEvent::Settle => TxKind::PURCHASE,
            _ => TxKind::REFUND,
        };
        let reference = PurchaseRef::Receipt { customer };
        let mut command = self.request(key, kind, Operation::PurchaseChange { reference, event });
        if let Command::Write(request) = &mut command {
            request.metadata.store = store;
            request.metadata.receipt = Receipt::new(receipt).expect("short receipt");
        }
        command
    }

    /// Refund `amount` of the purchase of `customer` with this store and receipt.
    pub fn refund_by_receipt(
        &self,
        key: u128,
        customer: u64,
        (store, receipt): (u32, &str),
        amount: u64,
    ) -> Command {
        let event = PurchaseEvent::RefundAmount(Amount::new(amount).expect("positive amount"));
        self.change_by_receipt(key, customer, (store, receipt), event)
    }

    /// Read a member's loyalty state, counting points that expire within `within_days`.
    pub fn member_query(&self, customer: u64, within_days: u16) -> Command {
        Command::Read(Query::Member { customer, within_days })
    }

    /// Read a customer's recent history.
    pub fn history_query(&self, customer: u64, limit: u16) -> Command {
        Command::Read(Query::History { account: self.customer(customer), limit })
    }

    /// Read a customer's account.
    pub fn balance_query(&self, customer: u64) -> Command {
        Command::Read(Query::Account(self.customer(customer)))
    }

    /// Convert `amount` of `customer`'s points of `from` into `to`.
    pub fn convert(
        &self,
        key: u128,
        customer: u64,
        (from, to): (AssetId, AssetId),
        amount: u64,
    ) -> Command {
        let amount = Amount::new(amount).expect("positive amount");
        self.request(key, TxKind::EXCHANGE, Operation::Convert { customer, from, to, amount })
    }
}

/// A partner programme set up for the exchange: its points asset, where members hold them,
/// the two exchange funds in points and the money funds of both programmes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partner {
    /// `PARTNER_A_POINTS`.
    pub asset: AssetId,
    /// `customer:<id>:partner_a`.
    pub customer: ClassId,
    /// `house:exchange_pts`, in the programme's points.
    pub own_fund: AccountId,
    /// `house:exchange_partner_a`, in the partner's points.
    pub partner_fund: AccountId,
    /// The money asset, `USD`.
    pub money: AssetId,
    /// `partner:0:exchange` (the programme itself) in `USD`.
    pub own_money: AccountId,
    /// `partner:7:exchange` (partner A) in `USD`.
    pub partner_money: AccountId,
}

impl Partner {
    /// Defines partner A next to `loyalty` on `engine`.
    pub fn define(engine: &Engine, loyalty: &Loyalty) -> Partner {
        let asset = engine.define_asset("PARTNER_A_POINTS", 0).expect("define partner points");
        let money = engine.define_asset("USD", 2).expect("define USD");
        let class = |namespace, name, asset, flags| {
            engine.define_class(namespace, name, asset, flags).expect("define a class")
        };
        let customer = class(Namespace::Customer, "partner_a", asset, AccountFlags::NO_OVERDRAFT);
        let own_fund = class(Namespace::House, "exchange_pts", loyalty.pts, AccountFlags::NONE);
        let partner_fund = class(Namespace::House, "exchange_partner_a", asset, AccountFlags::NONE);
        let exchange = class(Namespace::Partner, "exchange", money, AccountFlags::NONE);
        Partner {
            asset,
            customer,
            own_fund: AccountId::new(own_fund, 0),
            partner_fund: AccountId::new(partner_fund, 0),
            money,
            own_money: AccountId::new(exchange, 0),
            partner_money: AccountId::new(exchange, 7),
        }
    }

    /// The terms of a rate from partner points into the programme's (`numerator` own points
    /// per `denominator` partner points), a partner point worth `partner_value` cents and an
    /// own point `own_value` (each per one point).
    pub fn inbound(
        &self,
        loyalty: &Loyalty,
        (numerator, denominator): (u64, u64),
        (partner_value, own_value): (u64, u64),
    ) -> crate::loyalty::exchange::RateTerms {
        use crate::loyalty::exchange::{ExchangeSide, RateTerms};
        use crate::loyalty::rules::PointValue;
        RateTerms {
            from: ExchangeSide {
                asset: self.asset,
                customer: self.customer,
                fund: self.partner_fund,
                money: self.partner_money,
                value: PointValue { minor_units: partner_value, points: 1 },
            },
            to: ExchangeSide {
                asset: loyalty.pts,
                customer: loyalty.points,
                fund: self.own_fund,
                money: self.own_money,
                value: PointValue { minor_units: own_value, points: 1 },
            },
            numerator,
            denominator,
            money: self.money,
        }
    }

    /// The terms of the other direction, with the same accounts and values.
    pub fn outbound(
        &self,
        loyalty: &Loyalty,
        ratio: (u64, u64),
        values: (u64, u64),
    ) -> crate::loyalty::exchange::RateTerms {
        let inbound = self.inbound(loyalty, ratio, values);
        crate::loyalty::exchange::RateTerms { from: inbound.to, to: inbound.from, ..inbound }
    }

    /// Gives `customer` `amount` partner points (from the partner's fund, as a partner's own
    /// feed would).
    pub fn credit(&self, key: u128, customer: u64, amount: u64) -> Command {
        let posting = Posting {
            debit: self.partner_fund,
            credit: AccountId::new(self.customer, customer),
            asset: self.asset,
            amount: Amount::new(amount).expect("positive amount"),
        };
        Command::Write(Request {
            terminal: TerminalId(1),
            idempotency: IdempotencyKey::new(key),
            kind: TxKind::EXCHANGE,
            metadata: Metadata::default(),
            operation: Operation::Post { postings: smallvec::smallvec![posting] },
        })
    }

    /// A member's partner points account.
    pub fn account(&self, customer: u64) -> AccountId {
        AccountId::new(self.customer, customer)
    }
}

/// Lines of `(category, amount, excluded)`.
fn basket(lines: &[(u16, u64, bool)]) -> crate::loyalty::Lines {
    lines
        .iter()
        .map(|&(category, amount, excluded)| crate::loyalty::Line { category, amount, excluded })
        .collect()
}

/// A sink that collects answers until a given number arrived.
#[derive(Debug, Default)]
pub struct CollectingSink {
    replies: Mutex<Vec<(u64, Response)>>,
    arrived: Condvar,
}

impl CollectingSink {
    /// A new, empty sink.
    pub fn new() -> Arc<CollectingSink> {
        Arc::new(CollectingSink::default())
    }

    /// Waits until at least `count` answers arrived (at most `timeout`), takes them all and
    /// returns them sorted by tag.
    pub fn take(&self, count: usize, timeout: Duration) -> Vec<(u64, Response)> {
        let guard = self.replies.lock().expect("sink lock");
        let (mut guard, _) = self
            .arrived
            .wait_timeout_while(guard, timeout, |replies| replies.len() < count)
            .expect("sink lock");
        let mut replies = std::mem::take(&mut *guard);
        replies.sort_by_key(|(tag, _)| *tag);
        replies
    }
}

impl ReplySink for CollectingSink {
    fn deliver(&self, replies: Vec<(u64, Response)>) {
        let mut guard = self.replies.lock().expect("sink lock");
        guard.extend(replies);
        self.arrived.notify_all();
    }
}

/// Submits `commands` (tagged by position) and waits for all answers, in order.
pub fn execute_all(engine: &Engine, commands: Vec<Command>) -> Vec<Response> {
    let count = commands.len();
    let sink = CollectingSink::new();
    let dyn_sink: Arc<dyn ReplySink> = sink.clone();
    let tagged =
        commands.into_iter().enumerate().map(|(tag, command)| (tag as u64, command)).collect();
    engine.submit(&dyn_sink, tagged);
    let replies = sink.take(count, Duration::from_secs(60));
    assert_eq!(replies.len(), count, "every command is answered");
    replies.into_iter().map(|(_, response)| response).collect()
}

/// Writes single-shard directory `from`'s WAL again into `to` (a valid WAL: chained and
/// sealed, with the same `ledgerd.meta`) after `alter` changed its records: how tests make a
/// history that the engine itself would never write (a purchase recorded with another outcome).
pub fn rewrite_wal(
    from: &std::path::Path,
    to: &std::path::Path,
    mut alter: impl FnMut(&mut crate::ledger::record::Record),
) {
    use crate::recovery::ShardPaths;
    use crate::wal::reader::{self, ScanOptions};
    use crate::wal::writer::{WalIdentity, WalWriter};

    let mut records = Vec::new();
    reader::scan(&ShardPaths::new(from, 0).wal, &ScanOptions::all(), |record| {
        records.push(record.decode().expect("a sound wal"));
        Ok::<(), ()>(())
    })
    .expect("a sound wal");
    records.iter_mut().for_each(&mut alter);
    std::fs::copy(from.join("ledgerd.meta"), to.join("ledgerd.meta")).expect("copy meta");
    let meta = crate::datadir::read_meta(to).expect("meta");
    assert_eq!(meta.shard_count, 1, "a single-shard directory");
    let paths = ShardPaths::new(to, 0);
    paths.create().expect("shard directories");
    let shard = crate::ShardId::new(0).expect("shard 0");
    let identity = WalIdentity { shard, shard_count: 1, cluster_id: meta.cluster_id };
    let start = records.first().expect("records").timestamp;
    let mut writer =
        WalWriter::open(&paths.wal, identity, 1 << 20, None, start, None).expect("open wal");
    let mut batch = Vec::new();
    for record in &records {
        crate::wal::payload::encode_record(&mut batch, record);
    }
    writer.append(&mut batch, start).expect("append");
    writer.sync().expect("sync");
    writer.mark_durable(start);
}

/// The rule set of the pricing benchmarks: the documented example with a multiplier on each of
/// its five categories (none excluded), its four tiers and caps, and both promotions running
/// from a day before `now` for a year (one global multiplier, one store bonus).
pub fn benchmark_rules(now: crate::Timestamp) -> crate::loyalty::RuleSet {
    use crate::loyalty::decimal::{RATIO_ONE, Ratio};
    const DAY: u64 = 86_400_000_000_000;
    let mut rules = example_rules();
    let multipliers = [15_000, 20_000, 30_000, 12_500, 40_000];
    for (category, multiplier) in rules.categories.iter_mut().zip(multipliers) {
        category.excluded = false;
        category.multiplier = Ratio(multiplier);
    }
    debug_assert!(rules.categories.iter().all(|c| c.multiplier.0 > RATIO_ONE));
    for promotion in &mut rules.promotions {
        promotion.starts_at = crate::Timestamp(now.0.saturating_sub(DAY));
        promotion.ends_at = now.plus_nanos(365 * DAY);
    }
    rules.validate().expect("a valid rule set");
    rules
}
