//! The workload of the crash tests, shared by the killed child (`ledger-crash-writer`) and the
//! test that checks what survived (`engine/tests/crash.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::engine::EngineConfig;
use crate::ids::{CustomerId, shard_for_customer};
use crate::ledger::command::{Command, Operation, Request};
use crate::ledger::record::{Metadata, Posting, TxKind};
use crate::limits::Limits;
use crate::testing::loyalty::{Loyalty, Partner};
use crate::{Amount, IdempotencyKey, TerminalId};

/// Customers of the crash workload.
pub const CUSTOMERS: u64 = 64;

/// The engine configuration of the crash tests: small segments so that segments roll, frequent
/// snapshots so that kills land during snapshots too, and an idempotency table far smaller than
/// the writes of a run, so that retries are answered from the key index on disk.
pub fn crash_engine_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    config.limits = Limits {
        segment_bytes: 2 * 1024 * 1024,
        batch_records_max: 256,
        idempotency_keys_max: 4_096,
        ..Limits::default()
    };
    config.tuning.tick = Duration::from_millis(5);
    config.tuning.snapshot_every_records = 3_000;
    config
}

/// The engine configuration of the bulk writer (`ledger-crash-writer … bulk`): one shard, the
/// default limits (a table of 2 Mi idempotency keys), and no snapshot but when asked.
pub fn bulk_engine_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.tuning.snapshot_every_records = 0;
    config.tuning.snapshot_every = Duration::ZERO;
    config.tuning.snapshot_on_shutdown = false;
    config
}

/// Customers of the expiry crash test, each with one lot bought at `EXPIRY_START`.
pub const EXPIRY_CUSTOMERS: u64 = 40_000;

/// When the expiry crash test's first purchases are made: 2024-01-10T12:00:00Z.
pub const EXPIRY_START: crate::Timestamp = crate::Timestamp(1_704_888_000_000_000_000);

/// When its second phase runs, after every first lot's midnight (24 months later, 2026-01-11):
/// 2026-01-12T00:00:00Z.
pub const EXPIRY_SWEEP_AT: crate::Timestamp = crate::Timestamp(1_768_176_000_000_000_000);

/// The engine configuration of the expiry crash test: that of the crash tests, on `clock`.
pub fn expiry_engine_config(
    dir: &Path,
    clock: std::sync::Arc<crate::clock::ManualClock>,
) -> EngineConfig {
    let mut config = crash_engine_config(dir);
    config.clock = clock;
    config
}

/// A random request of the expiry crash test's second phase: a purchase or a redemption.
pub fn random_expiry_request(key: u128, rng: &mut u64) -> CrashRequest {
    let customer = next(rng, EXPIRY_CUSTOMERS);
    let amount = 1 + next(rng, 200);
    let op = match next(rng, 2) {
        0 => CrashOp::Purchase { customer, amount },
        _ => CrashOp::Redeem { customer, amount },
    };
    CrashRequest { key, op }
}

/// What one crash-test request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(missing_docs, reason = "each field is named for what it holds")]
pub enum CrashOp {
    /// Earn points.
    Earn { customer: u64, amount: u64 },
    /// Earn for two customers of the same shard in one transaction (two postings): a partial
    /// transaction would show as one credited without the other.
    SplitEarn { first: u64, second: u64, amount: u64 },
    /// Redeem points.
    Redeem { customer: u64, amount: u64 },
    /// Move points, on one shard or across.
    Transfer { from: u64, to: u64, amount: u64 },
    /// A one-line purchase under the flat rule set of 1 point per minor unit: earns `amount`
    /// points in a lot (the expiry crash test).
    Purchase { customer: u64, amount: u64 },
    /// A purchase of a lifecycle customer with its own receipt (`C-<receipt>`, store 9).
    Buy { customer: u64, amount: u64, receipt: u64 },
    /// The settlement of that purchase, by its receipt.
    Settle { customer: u64, receipt: u64 },
    /// The refund of all of that purchase, by its receipt: takes back `amount` points.
    Return { customer: u64, amount: u64, receipt: u64 },
    /// A conversion of `amount` points into partner A's, one for one (`CrashAccounts`).
    Convert { customer: u64, amount: u64 },
}

/// What the crash workload posts to: the loyalty setup, and partner A with a rate out of the
/// programme's points, one partner point per point.
#[derive(Debug, Clone, Copy)]
pub struct CrashAccounts {
    /// Points, issuance and redemption.
    pub loyalty: Loyalty,
    /// Partner A.
    pub partner: Partner,
}

impl CrashAccounts {
    /// Defines them on `engine`, or finds them (the rate is recorded once: a later call finds
    /// it in force).
    pub fn define(engine: &crate::Engine) -> CrashAccounts {
        let loyalty = Loyalty::define(engine);
        let partner = Partner::define(engine, &loyalty);
        engine
            .define_rate(partner.outbound(&loyalty, (1, 1), (1, 1)), None)
            .expect("the rate is recorded");
        CrashAccounts { loyalty, partner }
    }
}

/// The first of the customers that only buy, settle and return (never redeem or transfer, so
/// that a whole refund always finds its points in their lots).
pub const LIFECYCLE_FIRST: u64 = 1_000;
/// How many there are.
pub const LIFECYCLE_CUSTOMERS: u64 = 16;
/// One request in this many of a writer starts a purchase, settlement and return.
const LIFECYCLE_EVERY: u64 = 24;

/// The lifecycle request at a writer's `step` (its requests numbered 0, 1, 2…), if any: a
/// purchase at every `LIFECYCLE_EVERY`-th step, its settlement at the next, its return at
/// the one after. Everything follows from the purchase's step, so a writer needs no memory.
fn lifecycle_op(step: u64, writer: u64) -> Option<CrashOp> {
    let start = step - step % LIFECYCLE_EVERY;
    let receipt = (writer << 40) | start;
    let customer = LIFECYCLE_FIRST + (receipt.wrapping_mul(0x9E37_79B9)) % LIFECYCLE_CUSTOMERS;
    let amount = 1 + receipt.wrapping_mul(7_919) % 500;
    match step % LIFECYCLE_EVERY {
        0 => Some(CrashOp::Buy { customer, amount, receipt }),
        1 => Some(CrashOp::Settle { customer, receipt }),
        2 => Some(CrashOp::Return { customer, amount, receipt }),
        _ => None,
    }
}

/// A keyed crash-test request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashRequest {
    /// Its idempotency key.
    pub key: u128,
    /// What it does.
    pub op: CrashOp,
}

fn next(rng: &mut u64, bound: u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng % bound
}

impl CrashRequest {
    /// The request of a writer's `step`: a lifecycle request (`lifecycle_op`) or a random one.
    pub fn at_step(
        key: u128,
        (writer, step): (u64, u64),
        rng: &mut u64,
        shard_count: u16,
    ) -> CrashRequest {
        match lifecycle_op(step, writer) {
            Some(op) => CrashRequest { key, op },
            None => CrashRequest::random(key, rng, shard_count),
        }
    }

    /// A random request.
    pub fn random(key: u128, rng: &mut u64, shard_count: u16) -> CrashRequest {
        let customer = next(rng, CUSTOMERS);
        let amount = 1 + next(rng, 200);
        let op = match next(rng, 11) {
            0..=3 => CrashOp::Earn { customer, amount },
            4 => {
                let shard = shard_for_customer(CustomerId(customer), shard_count);
                let second = (1..CUSTOMERS)
                    .map(|step| (customer + step) % CUSTOMERS)
                    .find(|other| shard_for_customer(CustomerId(*other), shard_count) == shard)
                    .unwrap_or(customer);
                CrashOp::SplitEarn { first: customer, second, amount }
            }
            5..=7 => CrashOp::Redeem { customer, amount },
            8 | 9 => CrashOp::Transfer { from: customer, to: next(rng, CUSTOMERS), amount },
            _ => CrashOp::Convert { customer, amount },
        };
        CrashRequest { key, op }
    }

    /// The engine command.
    pub fn command(&self, accounts: &CrashAccounts) -> Command {
        let loyalty = &accounts.loyalty;
        match self.op {
            CrashOp::Earn { customer, amount } => loyalty.earn(self.key, customer, amount),
            CrashOp::SplitEarn { first, second, amount } => {
                let posting = |customer| Posting {
                    debit: loyalty.issuance(),
                    credit: loyalty.customer(customer),
                    asset: loyalty.pts,
                    amount: Amount::new(amount).expect("positive"),
                };
                Command::Write(Request {
                    terminal: TerminalId(1),
                    idempotency: IdempotencyKey::new(self.key),
                    kind: TxKind::PURCHASE,
                    metadata: Metadata::default(),
                    operation: Operation::Post {
                        postings: smallvec::smallvec![posting(first), posting(second)],
                    },
                })
            }
            CrashOp::Redeem { customer, amount } => loyalty.redeem(self.key, customer, amount),
            CrashOp::Transfer { from, to, amount } => loyalty.transfer(self.key, from, to, amount),
            CrashOp::Purchase { customer, amount } => {
                loyalty.purchase(self.key, customer, 1, &[(0, amount)])
            }
            CrashOp::Buy { customer, amount, receipt } => {
                let receipt = format!("C-{receipt}");
                loyalty.purchase_with_receipt(
                    self.key,
                    customer,
                    (9, &receipt),
                    &[(0, amount, false)],
                )
            }
            CrashOp::Settle { customer, receipt } => {
                let receipt = format!("C-{receipt}");
                let settle = crate::ledger::record::PurchaseEvent::Settle;
                loyalty.change_by_receipt(self.key, customer, (9, &receipt), settle)
            }
            CrashOp::Return { customer, amount, receipt } => {
                let receipt = format!("C-{receipt}");
                let amount = Amount::new(amount).expect("positive");
                let refund = crate::ledger::record::PurchaseEvent::RefundAmount(amount);
                loyalty.change_by_receipt(self.key, customer, (9, &receipt), refund)
            }
            CrashOp::Convert { customer, amount } => {
                let pair = (loyalty.pts, accounts.partner.asset);
                loyalty.convert(self.key, customer, pair, amount)
            }
        }
    }

    /// Adds the request's effect on customer balances to `balances`.
    pub fn apply_to(&self, balances: &mut BTreeMap<u64, i128>) {
        let mut add = |customer: u64, delta: i128| *balances.entry(customer).or_default() += delta;
        match self.op {
            CrashOp::Earn { customer, amount }
            | CrashOp::Purchase { customer, amount }
            | CrashOp::Buy { customer, amount, .. } => add(customer, i128::from(amount)),
            CrashOp::Settle { .. } => {}
            CrashOp::Return { customer, amount, .. } => add(customer, -i128::from(amount)),
            CrashOp::SplitEarn { first, second, amount } => {
                add(first, i128::from(amount));
                add(second, i128::from(amount));
            }
            CrashOp::Redeem { customer, amount } | CrashOp::Convert { customer, amount } => {
                add(customer, -i128::from(amount))
            }
            CrashOp::Transfer { from, to, amount } => {
                add(from, -i128::from(amount));
                add(to, i128::from(amount));
            }
        }
    }
}

impl fmt::Display for CrashRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            CrashOp::Earn { customer, amount } => write!(f, "{} E {customer} {amount}", self.key),
            CrashOp::SplitEarn { first, second, amount } => {
                write!(f, "{} X {first} {second} {amount}", self.key)
            }
            CrashOp::Redeem { customer, amount } => write!(f, "{} R {customer} {amount}", self.key),
            CrashOp::Transfer { from, to, amount } => {
                write!(f, "{} T {from} {to} {amount}", self.key)
            }
            CrashOp::Purchase { customer, amount } => {
                write!(f, "{} P {customer} {amount}", self.key)
            }
            CrashOp::Buy { customer, amount, receipt } => {
                write!(f, "{} B {customer} {amount} {receipt}", self.key)
            }
            CrashOp::Settle { customer, receipt } => {
                write!(f, "{} Y {customer} {receipt}", self.key)
            }
            CrashOp::Return { customer, amount, receipt } => {
                write!(f, "{} U {customer} {amount} {receipt}", self.key)
            }
            CrashOp::Convert { customer, amount } => {
                write!(f, "{} V {customer} {amount}", self.key)
            }
        }
    }
}

impl FromStr for CrashRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<CrashRequest, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let number = |index: usize| -> Result<u64, String> {
            fields
                .get(index)
                .ok_or(format!("short line {text:?}"))?
                .parse()
                .map_err(|e| format!("{text:?}: {e}"))
        };
        let key: u128 =
            fields.first().ok_or("empty line")?.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let op = match fields.get(1).copied() {
            Some("E") => CrashOp::Earn { customer: number(2)?, amount: number(3)? },
            Some("X") => {
                CrashOp::SplitEarn { first: number(2)?, second: number(3)?, amount: number(4)? }
            }
            Some("R") => CrashOp::Redeem { customer: number(2)?, amount: number(3)? },
            Some("T") => CrashOp::Transfer { from: number(2)?, to: number(3)?, amount: number(4)? },
            Some("P") => CrashOp::Purchase { customer: number(2)?, amount: number(3)? },
            Some("B") => {
                CrashOp::Buy { customer: number(2)?, amount: number(3)?, receipt: number(4)? }
            }
            Some("Y") => CrashOp::Settle { customer: number(2)?, receipt: number(3)? },
            Some("U") => {
                CrashOp::Return { customer: number(2)?, amount: number(3)?, receipt: number(4)? }
            }
            Some("V") => CrashOp::Convert { customer: number(2)?, amount: number(3)? },
            _ => return Err(format!("unknown request {text:?}")),
        };
        Ok(CrashRequest { key, op })
    }
}
