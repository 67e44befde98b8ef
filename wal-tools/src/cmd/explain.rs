//! `ledger-wal explain`: why a purchase earned what it did, from the WAL alone (the engine's
//! `loyalty::explain::from_wal`), for purchases the server no longer holds in memory.

use std::path::Path;

use ledger_engine::TxId;
use ledger_engine::loyalty::explain::{self, ExplainError, Explanation};
use serde_json::json;

use crate::Outcome;
use crate::time::rfc3339;

pub fn run(data_dir: &Path, tx: u64, as_json: bool) -> anyhow::Result<Outcome> {
    match explain::from_wal(data_dir, TxId(tx)) {
        Ok(explanation) => {
            if as_json {
                println!("{}", to_json(&explanation));
            } else {
                print!("{}", to_text(&explanation));
            }
            Ok(Outcome::Sound)
        }
        Err(error @ ExplainError::NotFound(..)) => {
            eprintln!("ledger-wal: {error}");
            Ok(Outcome::Problems)
        }
        Err(ExplainError::Wal(reason)) => {
            eprintln!("ledger-wal: cannot read the wal: {reason}");
            Ok(Outcome::Unreadable)
        }
    }
}

fn to_json(e: &Explanation) -> serde_json::Value {
    let purchase = &e.purchase;
    let outcome = &purchase.outcome;
    json!({
        "tx_id": e.tx_id.0,
        "shard": e.tx_id.shard(),
        "lsn": e.lsn.0,
        "timestamp": rfc3339(e.timestamp),
        "customer": purchase.customer,
        "terminal": purchase.header.terminal.0,
        "store": purchase.header.metadata.store,
        "receipt": purchase.header.metadata.receipt.as_str(),
        "lines": purchase.lines.iter().map(|line| json!({
            "category": line.category, "amount": line.amount, "excluded": line.excluded,
        })).collect::<Vec<_>>(),
        "rules_version": outcome.rules_version,
        "rules_effective_at": rfc3339(e.rules_effective_at),
        "tier_before": { "index": outcome.tier_before, "name": e.tier_before },
        "tier_after": { "index": outcome.tier_after, "name": e.tier_after },
        "base": outcome.base,
        "category": outcome.category,
        "tier_points": outcome.tier_points,
        "promotions": e.promotions.iter().map(|p| json!({
            "index": p.index, "name": p.name, "points": p.points,
        })).collect::<Vec<_>>(),
        "caps": { "daily": e.caps.daily, "monthly": e.caps.monthly },
        "cap_cut": outcome.cap_cut,
        "earned": outcome.earned,
        "bonus": outcome.bonus,
        "points": outcome.earned + outcome.bonus,
        "cashback": outcome.cashback,
    })
}

fn to_text(e: &Explanation) -> String {
    use std::fmt::Write;
    let purchase = &e.purchase;
    let outcome = &purchase.outcome;
    let cap = |cap: Option<u64>| cap.map_or_else(|| "none".to_string(), |c| c.to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "purchase {} (shard {}, lsn {}) at {}",
        e.tx_id.0,
        e.tx_id.shard(),
        e.lsn.0,
        rfc3339(e.timestamp)
    );
    let _ = writeln!(
        out,
        "customer {}, store {}, terminal {}, receipt {:?}",
        purchase.customer,
        purchase.header.metadata.store,
        purchase.header.terminal.0,
        purchase.header.metadata.receipt.as_str()
    );
    let _ = writeln!(
        out,
        "rules version {} (in force from {})",
        outcome.rules_version,
        rfc3339(e.rules_effective_at)
    );
    let _ = writeln!(out, "tier {} -> {}", e.tier_before, e.tier_after);
    for (index, line) in purchase.lines.iter().enumerate() {
        let excluded = if line.excluded { " excluded" } else { "" };
        let _ = writeln!(
            out,
            "  line {:>2}: category {:>5} amount {:>12}{excluded}",
            index + 1,
            line.category,
            line.amount
        );
    }
    let _ = writeln!(out, "  base          {:>12}", outcome.base);
    let _ = writeln!(out, "  category      {:>12}", outcome.category);
    let _ = writeln!(out, "  tier          {:>12}", outcome.tier_points);
    for promotion in &e.promotions {
        let _ = writeln!(out, "  promotion     {:>12}  {}", promotion.points, promotion.name);
    }
    let _ = writeln!(
        out,
        "  cap cut       {:>12}  (caps: daily {}, monthly {})",
        outcome.cap_cut,
        cap(e.caps.daily),
        cap(e.caps.monthly)
    );
    let _ = writeln!(out, "  earned        {:>12}", outcome.earned);
    let _ = writeln!(out, "  bonus         {:>12}", outcome.bonus);
    let _ = writeln!(out, "  points        {:>12}", outcome.earned + outcome.bonus);
    let _ = writeln!(out, "  cashback      {:>12}", outcome.cashback);
    out
}
