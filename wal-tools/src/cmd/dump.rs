//! `ledger-wal dump`: prints the records the filters select, checked and replayed as `verify`
//! checks them (the engine's follower, from the newest snapshot before the range), with
//! accounts in their text form (`customer:42:points`) and each purchase's earning breakdown.

use std::path::Path;

use std::io::Write;

use ledger_engine::amount::Amount;
use ledger_engine::ledger::account::AccountId;
use ledger_engine::ledger::record::{Body, Posting, PurchaseEvent, PurchaseRef};
use ledger_engine::ledger::registry::Registry;
use ledger_engine::loyalty::lifecycle::LifecycleState;
use serde_json::json;

use crate::Outcome;
use crate::filter::{Filter, Walked, walk};

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
        Body::Transaction(tx) => json!({
            "tx_kind": tx.header.kind.to_string(),
            "terminal": tx.header.terminal.0,
            "store": tx.header.metadata.store,
            "receipt": tx.header.metadata.receipt.as_str(),
            "postings": tx.postings.iter().map(|p| posting_json(registry, p)).collect::<Vec<_>>(),
        }),
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
        Body::Purchase(purchase) => {
            let outcome = &purchase.outcome;
            json!({
                "tx_kind": purchase.header.kind.to_string(),
                "terminal": purchase.header.terminal.0,
                "store": purchase.header.metadata.store,
                "receipt": purchase.header.metadata.receipt.as_str(),
                "customer": purchase.customer,
                "lines": lines_json(&purchase.lines),
                "rules_version": outcome.rules_version,
                "tier_before": outcome.tier_before,
                "tier_after": outcome.tier_after,
                "base": outcome.base,
                "category": outcome.category,
                "tier_points": outcome.tier_points,
                "promotions": outcome.promotions.iter().map(|p| json!({
                    "promotion": p.promotion, "points": p.points,
                })).collect::<Vec<_>>(),
                "cap_cut": outcome.cap_cut,
                "earned": outcome.earned,
                "bonus": outcome.bonus,
                "cashback": outcome.cashback,
            })
        }
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

pub fn run(
    data_dir: &Path,
    filter: &Filter,
    limit: Option<u64>,
    as_json: bool,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    if !data_dir.is_dir() {
        eprintln!("ledger-wal: {} is not a directory", data_dir.display());
        return Ok(Outcome::Unreadable);
    }
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
        let mut details = describe(followed.registry, &record.body);
        // Where a client's write came from, whatever its kind.
        if let Some(header) = record.body.header()
            && let Some(fields) = details.as_object_mut()
        {
            fields.insert("terminal".to_string(), json!(header.terminal.0));
            fields.insert("store".to_string(), json!(header.metadata.store));
            fields.insert("receipt".to_string(), json!(header.metadata.receipt.as_str()));
        }
        // An operator's write says who made it and why (WAL format 7).
        if let Some(annotation) =
            record.body.header().and_then(|header| header.metadata.annotation.as_ref())
            && let Some(fields) = details.as_object_mut()
        {
            fields.insert("actor".to_string(), json!(annotation.actor()));
            fields.insert("reason".to_string(), json!(annotation.reason()));
        }
        if as_json {
            let line = json!({
                "shard": shard,
                "lsn": record.lsn.0,
                "timestamp": timestamp,
                "kind": record.body.kind().name(),
                "tx_id": tx_id,
                "details": details,
            });
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        } else {
            let tx_id = tx_id.map_or_else(|| "-".to_string(), |id| id.to_string());
            writeln!(
                out,
                "{shard:>3} {:>10} {timestamp} {:<16} {tx_id:>20} {details}",
                record.lsn.0,
                record.body.kind().name()
            )?;
        }
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
