//! `ledger-wal dump`: prints the records the filters select, checked and replayed as `verify`
//! checks them (the engine's follower, from the newest snapshot before the range), with
//! accounts in their text form (`customer:42:points`) and each purchase's earning breakdown.

use std::path::Path;

use std::io::Write;

use ledger_engine::amount::Amount;
use ledger_engine::ledger::account::AccountId;
use ledger_engine::ledger::record::{Body, Posting, PurchaseEvent, PurchaseRef, TxHeader};
use ledger_engine::ledger::registry::Registry;
use ledger_engine::loyalty::lifecycle::LifecycleState;
use serde::Serialize;
use serde_json::json;

use crate::Outcome;
use crate::filter::{Filter, Walked, walk};

/// A client write's origin: its terminal, store and receipt, and for an operator's write who
/// made it and why (WAL format 7).
#[derive(Serialize)]
struct Client<'a> {
    terminal: u32,
    store: u32,
    receipt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> Client<'a> {
    fn of(header: &'a TxHeader) -> Client<'a> {
        let annotation = header.metadata.annotation.as_deref();
        Client {
            terminal: header.terminal.0,
            store: header.metadata.store,
            receipt: header.metadata.receipt.as_str(),
            actor: annotation.map(|annotation| annotation.actor()),
            reason: annotation.map(|annotation| annotation.reason()),
        }
    }
}

#[derive(Serialize)]
struct PostingOut {
    debit: String,
    credit: String,
    asset: String,
    amount: u64,
}

impl PostingOut {
    fn of(registry: &Registry, posting: &Posting) -> PostingOut {
        PostingOut {
            debit: account(registry, posting.debit),
            credit: account(registry, posting.credit),
            asset: asset(registry, posting.asset),
            amount: posting.amount.get(),
        }
    }
}

#[derive(Serialize)]
struct TransactionOut<'a> {
    tx_kind: String,
    #[serde(flatten)]
    client: Client<'a>,
    postings: Vec<PostingOut>,
}

#[derive(Serialize)]
struct LineOut {
    category: u16,
    amount: u64,
    excluded: bool,
}

#[derive(Serialize)]
struct PromotionOut {
    promotion: u8,
    points: u64,
}

/// A purchase with its whole earning breakdown.
#[derive(Serialize)]
struct PurchaseOut<'a> {
    tx_kind: String,
    #[serde(flatten)]
    client: Client<'a>,
    customer: u64,
    lines: Vec<LineOut>,
    rules_version: u32,
    tier_before: u8,
    tier_after: u8,
    base: u64,
    category: u64,
    tier_points: u64,
    promotions: Vec<PromotionOut>,
    cap_cut: u64,
    earned: u64,
    bonus: u64,
    cashback: u64,
}

/// A record's details: the frequent kinds serialised directly (no `Value` built per record),
/// the others as a `Value`.
#[derive(Serialize)]
#[serde(untagged)]
enum Details<'a> {
    Transaction(TransactionOut<'a>),
    Purchase(PurchaseOut<'a>),
    Other(serde_json::Value),
}

fn details<'a>(registry: &Registry, body: &'a Body) -> Details<'a> {
    match body {
        Body::Transaction(tx) => Details::Transaction(TransactionOut {
            tx_kind: tx.header.kind.to_string(),
            client: Client::of(&tx.header),
            postings: tx.postings.iter().map(|p| PostingOut::of(registry, p)).collect(),
        }),
        Body::Purchase(purchase) => {
            let outcome = &purchase.outcome;
            Details::Purchase(PurchaseOut {
                tx_kind: purchase.header.kind.to_string(),
                client: Client::of(&purchase.header),
                customer: purchase.customer,
                lines: purchase
                    .lines
                    .iter()
                    .map(|line| LineOut {
                        category: line.category,
                        amount: line.amount,
                        excluded: line.excluded,
                    })
                    .collect(),
                rules_version: outcome.rules_version,
                tier_before: outcome.tier_before,
                tier_after: outcome.tier_after,
                base: outcome.base,
                category: outcome.category,
                tier_points: outcome.tier_points,
                promotions: outcome
                    .promotions
                    .iter()
                    .map(|p| PromotionOut { promotion: p.promotion, points: p.points })
                    .collect(),
                cap_cut: outcome.cap_cut,
                earned: outcome.earned,
                bonus: outcome.bonus,
                cashback: outcome.cashback,
            })
        }
        other => {
            let mut value = describe(registry, other);
            // Where a client's write came from, whatever its kind.
            if let Some(header) = other.header()
                && let Some(fields) = value.as_object_mut()
                && let Ok(serde_json::Value::Object(client)) =
                    serde_json::to_value(Client::of(header))
            {
                fields.extend(client);
            }
            Details::Other(value)
        }
    }
}

fn account(registry: &Registry, id: AccountId) -> String {
    registry
        .address(id)
        .map_or_else(|| format!("unknown:{}:{}", id.owner(), id.class().0), |a| a.to_string())
}

fn asset(registry: &Registry, id: ledger_engine::ledger::account::AssetId) -> String {
    registry.asset(id).map_or_else(|| id.0.to_string(), |a| a.code.to_string())
}

fn posting_json(registry: &Registry, posting: &Posting) -> serde_json::Value {
    json!({
        "debit": account(registry, posting.debit),
        "credit": account(registry, posting.credit),
        "asset": asset(registry, posting.asset),
        "amount": posting.amount.get(),
    })
}

fn lines_json(lines: &[ledger_engine::loyalty::Line]) -> serde_json::Value {
    lines
        .iter()
        .map(|line| {
            json!({ "category": line.category, "amount": line.amount, "excluded": line.excluded })
        })
        .collect()
}

fn describe(registry: &Registry, body: &Body) -> serde_json::Value {
    let amount = |amount: Option<Amount>| amount.map(Amount::get);
    match body {
        Body::Transaction(_) | Body::Purchase(_) => {
            serde_json::to_value(details(registry, body)).unwrap_or_default()
        }
        Body::HoldCreate(hold) => json!({
            "tx_kind": hold.header.kind.to_string(),
            "posting": posting_json(registry, &hold.posting),
            "timeout_nanos": hold.timeout_nanos,
        }),
        Body::HoldCapture(capture) => {
            json!({ "hold": capture.hold.0, "amount": amount(capture.amount) })
        }
        Body::HoldVoid(void) => json!({ "hold": void.hold.0 }),
        Body::HoldExpire(expire) => json!({ "hold": expire.hold.0 }),
        Body::TransferOut(transfer) => json!({
            "source": account(registry, transfer.source),
            "destination": account(registry, transfer.destination),
            "amount": transfer.amount.get(),
            "destination_shard": transfer.destination_shard.index(),
            "sequence": transfer.sequence,
        }),
        Body::TransferIn(transfer) => json!({
            "source": account(registry, transfer.source),
            "destination": account(registry, transfer.destination),
            "amount": transfer.amount.get(),
            "source_shard": transfer.source_shard.index(),
            "sequence": transfer.sequence,
            "source_tx": transfer.source_tx.0,
            "accepted": transfer.accepted,
        }),
        Body::TransferSettle(settle) => json!({
            "destination_shard": settle.destination_shard.index(),
            "sequence": settle.sequence,
            "accepted": settle.accepted,
        }),
        Body::Reversal(reversal) => json!({
            "tx_kind": reversal.header.kind.to_string(),
            "terminal": reversal.header.terminal.0,
            "original": reversal.original.0,
            "postings": reversal.postings.iter().map(|p| posting_json(registry, p)).collect::<Vec<_>>(),
        }),
        Body::AssetDefine(define) => {
            json!({ "asset": define.id.0, "code": define.code.as_str(), "scale": define.scale })
        }
        Body::ClassDefine(define) => json!({
            "class": define.id.0,
            "namespace": define.namespace.prefix(),
            "name": define.name.as_str(),
            "asset": define.asset.0,
            "flags": define.flags.bits(),
        }),
        Body::PurchaseChange(change) => {
            let (by, reference) = match change.reference {
                PurchaseRef::Id(id) => ("id", id.0),
                PurchaseRef::Receipt { customer } => ("receipt", customer),
            };
            let (amount, lines) = match &change.event {
                PurchaseEvent::RefundAmount(amount) => (Some(amount.get()), None),
                PurchaseEvent::RefundLines(lines) => (None, Some(lines_json(lines))),
                PurchaseEvent::Settle | PurchaseEvent::Fail => (None, None),
            };
            let outcome = &change.outcome;
            json!({
                "tx_kind": change.header.kind.to_string(),
                "terminal": change.header.terminal.0,
                "store": change.header.metadata.store,
                "receipt": change.header.metadata.receipt.as_str(),
                "by": by,
                "reference": reference,
                "refund_amount": amount,
                "refund_lines": lines,
                "purchase": outcome.purchase.0,
                "customer": outcome.customer,
                "state": LifecycleState::from_u8(outcome.state).map(LifecycleState::name),
                "refunded": outcome.refunded,
                "earned": outcome.earned,
                "bonus": outcome.bonus,
                "cashback": outcome.cashback,
                "points_owed": outcome.points_owed,
                "cashback_owed": outcome.cashback_owed,
                "tier_after": outcome.tier_after,
            })
        }
        Body::PurchaseRelease(release) => json!({ "purchase": release.purchase.0 }),
        Body::LotsExpire(expire) => json!({
            "customer": expire.customer,
            "lots": expire.lots.iter().map(|part| json!({
                "origin": part.origin.0,
                "kind": part.kind.name(),
                "expires_day": part.expires_day,
                "amount": part.amount,
            })).collect::<Vec<_>>(),
        }),
        Body::RulesDefine(define) => {
            let rules = &define.rules;
            json!({
                "version": define.version,
                "effective_at": define.effective_at.0,
                "points_class": define.accounts.points.0,
                "base": format!("{} per {}", rules.base.points, rules.base.per_minor_units),
                "minimum_spend": rules.minimum_spend,
                "categories": rules.categories.iter().map(|c| json!({
                    "id": c.id, "name": c.name, "multiplier": c.multiplier.to_string(), "excluded": c.excluded,
                })).collect::<Vec<_>>(),
                "tiers": rules.tiers.iter().map(|t| json!({
                    "name": t.name, "threshold": t.threshold, "multiplier": t.multiplier.to_string(),
                })).collect::<Vec<_>>(),
                "promotions": rules.promotions.iter().map(|p| json!({
                    "name": p.name, "starts_at": p.starts_at.0, "ends_at": p.ends_at.0,
                })).collect::<Vec<_>>(),
                "caps": { "daily": rules.caps.daily, "monthly": rules.caps.monthly },
            })
        }
        Body::RateDefine(define) => {
            let terms = &define.terms;
            let side = |side: &ledger_engine::loyalty::exchange::ExchangeSide| {
                json!({
                    "asset": asset(registry, side.asset),
                    "customer_class": side.customer.0,
                    "fund": account(registry, side.fund),
                    "money": account(registry, side.money),
                    "point_value": format!("{} per {}", side.value.minor_units, side.value.points),
                })
            };
            json!({
                "version": define.version,
                "effective_at": define.effective_at.0,
                "rate": format!("{} per {}", terms.numerator, terms.denominator),
                "liability_asset": asset(registry, terms.money),
                "from": side(&terms.from),
                "to": side(&terms.to),
            })
        }
        Body::Conversion(conversion) => json!({
            "tx_kind": conversion.header.kind.to_string(),
            "terminal": conversion.header.terminal.0,
            "customer": conversion.customer,
            "from": asset(registry, conversion.from),
            "to": asset(registry, conversion.to),
            "amount": conversion.amount.get(),
            "rate_version": conversion.priced.version,
            "credited": conversion.priced.credited,
            "from_value": conversion.priced.from_value,
            "to_value": conversion.priced.to_value,
            "differential": conversion.priced.differential().to_string(),
        }),
    }
}

/// One line of `--json`.
#[derive(Serialize)]
struct DumpLine<'a> {
    shard: u16,
    lsn: u64,
    timestamp: &'a str,
    kind: &'static str,
    tx_id: Option<u64>,
    details: Details<'a>,
}

pub fn run(
    data_dir: &Path,
    filter: &Filter,
    limit: Option<u64>,
    as_json: bool,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let mut printed = 0u64;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let walked = walk(data_dir, filter, quiet, |shard, followed| {
        if limit.is_some_and(|limit| printed >= limit) {
            return Ok(false);
        }
        printed += 1;
        let record = followed.record;
        let timestamp = crate::time::rfc3339(record.timestamp);
        let tx_id = record.body.tx_id().map(|id| id.0);
        let details = details(followed.registry, &record.body);
        if as_json {
            let line = DumpLine {
                shard,
                lsn: record.lsn.0,
                timestamp: &timestamp,
                kind: record.body.kind().name(),
                tx_id,
                details,
            };
            serde_json::to_writer(&mut out, &line)?;
        } else {
            let tx_id = tx_id.map_or_else(|| "-".to_string(), |id| id.to_string());
            write!(
                out,
                "{shard:>3} {:>10} {timestamp} {:<16} {tx_id:>20} ",
                record.lsn.0,
                record.body.kind().name()
            )?;
            serde_json::to_writer(&mut out, &details)?;
        }
        out.write_all(b"\n")?;
        Ok(true)
    });
    out.flush()?;
    match walked? {
        Walked::Whole => Ok(Outcome::Sound),
        Walked::Damaged(problem) => {
            eprintln!("ledger-wal: {problem}");
            Ok(Outcome::Problems)
        }
    }
}
