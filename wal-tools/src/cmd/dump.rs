//! `ledger-wal dump`: prints one shard's records, checked as `verify` checks them, with
//! accounts in their text form (`customer:42:points`). Definitions are read from the WAL as it
//! goes, so the whole WAL is scanned even when only a range is printed.

use std::path::Path;

use anyhow::Context;
use ledger_engine::amount::Amount;
use ledger_engine::datadir;
use ledger_engine::ledger::account::AccountId;
use ledger_engine::ledger::record::{Body, Posting, PurchaseEvent, PurchaseRef};
use ledger_engine::ledger::registry::{AssetDef, ClassDef, Registry};
use ledger_engine::loyalty::lifecycle::LifecycleState;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{Lsn, ShardId};
use serde_json::json;

use crate::Outcome;

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
    shard: u16,
    from: u64,
    limit: u64,
    as_json: bool,
) -> anyhow::Result<Outcome> {
    if !data_dir.is_dir() {
        eprintln!("ledger-wal: {} is not a directory", data_dir.display());
        return Ok(Outcome::Unreadable);
    }
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shard_id = ShardId::new(shard).filter(|s| s.index() < meta.shard_count);
    let shard_id = shard_id.with_context(|| {
        format!("shard {shard} does not exist (the directory has {})", meta.shard_count)
    })?;
    let paths = ShardPaths::new(data_dir, shard);
    let options = ScanOptions {
        shard: Some(shard_id),
        cluster_id: Some(meta.cluster_id),
        ..ScanOptions::all()
    };
    let mut registry = Registry::default();
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let scanned = reader::scan(&paths.wal, &options, |record| {
        let decoded =
            record.decode().map_err(|error| format!("lsn {}: {error}", record.header.lsn))?;
        match &decoded.body {
            Body::AssetDefine(define) => {
                let _ = registry.define_asset(AssetDef {
                    id: define.id,
                    code: define.code.clone(),
                    scale: define.scale,
                });
            }
            Body::ClassDefine(define) => {
                let _ = registry.define_class(ClassDef {
                    id: define.id,
                    namespace: define.namespace,
                    name: define.name.clone(),
                    asset: define.asset,
                    flags: define.flags,
                });
            }
            _ => {}
        }
        if decoded.lsn < Lsn(from) || printed >= limit {
            return Ok(());
        }
        printed += 1;
        let timestamp = crate::time::rfc3339(decoded.timestamp);
        let tx_id = decoded.body.tx_id().map(|id| id.0);
        let mut details = describe(&registry, &decoded.body);
        // An operator's write says who made it and why (WAL format 7).
        if let Some(annotation) =
            decoded.body.header().and_then(|header| header.metadata.annotation.as_ref())
            && let Some(fields) = details.as_object_mut()
        {
            fields.insert("actor".to_string(), json!(annotation.actor()));
            fields.insert("reason".to_string(), json!(annotation.reason()));
        }
        let line = if as_json {
            json!({
                "lsn": decoded.lsn.0,
                "timestamp": timestamp,
                "kind": record.kind.name(),
                "tx_id": tx_id,
                "details": details,
            })
            .to_string()
        } else {
            let tx_id = tx_id.map_or_else(|| "-".to_string(), |id| id.to_string());
            format!(
                "{:>10} {timestamp} {:<15} {tx_id:>20} {details}",
                decoded.lsn.0,
                record.kind.name()
            )
        };
        use std::io::Write;
        writeln!(out, "{line}").map_err(|error| format!("cannot write: {error}"))
    });
    match scanned {
        Ok(_) => Ok(Outcome::Sound),
        Err(Ok(problem)) => {
            eprintln!("ledger-wal: {problem}");
            Ok(Outcome::Problems)
        }
        Err(Err(error)) => {
            eprintln!("ledger-wal: {error}");
            Ok(Outcome::Problems)
        }
    }
}
