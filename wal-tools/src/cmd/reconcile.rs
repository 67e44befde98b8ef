//! `ledger-wal reconcile --settlement FILE.csv`: an external settlement report (the columns of
//! the admin API's import: `payment_id,receipt,store,time,amount,status`, read by the same
//! reader) matched row by row against the purchases the WAL holds, with the same matcher as the
//! import (`loyalty::settlement`): matched, amount mismatches, rows with no purchase, pending
//! purchases no row matched, with totals. It changes nothing. Exit 0 when it balanced (every
//! row matched at its amount, and no pending purchase of the report's days was left over).
//!
//! Each shard is replayed to the end of its WAL; every purchase made on the report's days (one
//! more each side) is kept as it stands after its last record, so a purchase the shard has
//! since forgotten (past its refund window) is still matched.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir;
use ledger_engine::follow::FollowError;
use ledger_engine::ledger::record::Body;
use ledger_engine::loyalty::calendar::day_index;
use ledger_engine::loyalty::lifecycle::LifecycleState;
use ledger_engine::loyalty::purchases::{Refundable, receipt_key};
use ledger_engine::loyalty::settlement::{self, RowMatch, SettlementRow};
use ledger_engine::{Lsn, TxId};
use serde_json::{Value, json};

use crate::Outcome;
use crate::cmd::stats::grouped;
use crate::filter::related;
use crate::progress::Progress;

/// Reports larger than this are refused before they are read.
const REPORT_BYTES_MAX: u64 = 64 << 20;

/// Every purchase of `days` on every shard, as it stands after its last record.
fn purchases_of(
    data_dir: &Path,
    (first, last): (u32, u32),
    quiet: bool,
) -> anyhow::Result<Result<Vec<(Refundable, u64)>, String>> {
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shards: Vec<u16> = (0..meta.shard_count).collect();
    let progress = Progress::new(quiet, data_dir, &shards, "reading purchases");
    let mut kept: BTreeMap<TxId, (Refundable, u64)> = BTreeMap::new();
    for index in shards {
        let mut shown = progress.shard(index);
        let mut follower = crate::cmd::stats::follower_from_start(data_dir, index)?;
        let visited = follower.advance(Lsn(u64::MAX), |followed| {
            shown.at(followed.place.segment, followed.place.offset);
            let purchases = followed.ledger.purchases();
            let id = match &followed.record.body {
                Body::Purchase(purchase) => {
                    let day = day_index(followed.record.timestamp);
                    if !(first..=last).contains(&day) {
                        return Ok(());
                    }
                    let metadata = &purchase.header.metadata;
                    let key = receipt_key(metadata.store, metadata.receipt.as_str());
                    if let Some(entry) = purchases.get(purchase.header.id) {
                        kept.insert(entry.id, (*entry, key));
                    }
                    return Ok(());
                }
                body => related(body),
            };
            if let Some(id) = id
                && let Some((purchase, _)) = kept.get_mut(&id)
                && let Some(entry) = purchases.get(id)
            {
                *purchase = *entry;
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match visited {
            Ok(_) => {}
            Err(FollowError::Recovery(error)) => {
                progress.finish();
                return Ok(Err(format!("shard {index}: {error}")));
            }
            Err(FollowError::Stopped(never)) => match never {},
        }
    }
    progress.finish();
    Ok(Ok(kept.into_values().collect()))
}

fn row_json(row: &SettlementRow, result: &str, purchase: Option<&Refundable>) -> Value {
    json!({
        "scope": "row",
        "line": row.line,
        "payment_id": row.payment_id,
        "receipt": row.receipt,
        "store": row.store,
        "time": crate::time::rfc3339(row.time),
        "amount": row.amount,
        "status": row.status.name(),
        "result": result,
        "purchase": purchase.map(|p| p.id.0),
        "customer": purchase.map(|p| p.customer),
        "purchase_spend": purchase.map(|p| p.spend),
        "purchase_state": purchase.map(|p| p.state.name()),
    })
}

pub fn run(data_dir: &Path, report: &Path, as_json: bool, quiet: bool) -> anyhow::Result<Outcome> {
    let size = std::fs::metadata(report)
        .with_context(|| format!("cannot read {}", report.display()))?
        .len();
    if size > REPORT_BYTES_MAX {
        eprintln!(
            "ledger-wal: {} is {size} bytes; a settlement report is at most {REPORT_BYTES_MAX}",
            report.display()
        );
        return Ok(Outcome::Usage);
    }
    let bytes =
        std::fs::read(report).with_context(|| format!("cannot read {}", report.display()))?;
    let rows = match settlement::parse(&bytes) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("ledger-wal: {}: {error}", report.display());
            return Ok(Outcome::Usage);
        }
    };
    let days = settlement::candidate_days(&rows);
    let purchases = match purchases_of(data_dir, days, quiet)? {
        Ok(purchases) => purchases,
        Err(problem) => {
            eprintln!("ledger-wal: {problem}");
            return Ok(Outcome::Problems);
        }
    };
    let reconciliation = settlement::reconcile(&rows, &purchases);

    // Totals: rows and amounts per result; purchases left over, with their spend.
    let mut totals: BTreeMap<&str, (u64, u128)> = BTreeMap::new();
    let mut lines = Vec::new();
    for (row, matched) in rows.iter().zip(&reconciliation.rows) {
        let (result, purchase) = match matched {
            RowMatch::Matched(purchase) => ("matched", Some(purchase)),
            RowMatch::AmountMismatch(purchase) => ("amount_mismatch", Some(purchase)),
            RowMatch::Unmatched(why) => (why.name(), None),
        };
        let total = totals.entry(result).or_default();
        total.0 += 1;
        total.1 += u128::from(row.amount);
        lines.push(row_json(row, result, purchase));
    }
    for purchase in &reconciliation.unmatched_purchases {
        let total = totals.entry("unmatched_purchase").or_default();
        total.0 += 1;
        total.1 += u128::from(purchase.spend);
        lines.push(json!({
            "scope": "purchase",
            "result": "unmatched_purchase",
            "purchase": purchase.id.0,
            "customer": purchase.customer,
            "purchase_spend": purchase.spend,
            "purchase_state": purchase.state.name(),
        }));
    }
    let balanced = totals.keys().all(|result| *result == "matched");
    let pending = purchases.iter().filter(|(p, _)| p.state == LifecycleState::Pending).count();
    if as_json {
        for line in &lines {
            println!("{line}");
        }
        let mut summary = serde_json::Map::new();
        for (result, (count, amount)) in &totals {
            summary.insert(
                (*result).to_string(),
                json!({"count": count, "amount": amount.to_string()}),
            );
        }
        println!(
            "{}",
            json!({
                "scope": "totals",
                "balanced": balanced,
                "rows": rows.len(),
                "purchases_looked_at": purchases.len(),
                "pending_purchases": pending,
                "results": summary,
            })
        );
    } else {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
            "line", "payment", "receipt", "store", "amount", "status", "result", "purchase",
            "spend", "state",
        ]);
        for column in [0, 3, 4, 8] {
            if let Some(column) = table.column_mut(column) {
                column.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
        // Amounts grouped by thousands; ids, lines and stores as they are.
        let cell = |line: &Value, key: &str| match &line[key] {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            Value::Number(number) if key.ends_with("amount") || key.ends_with("spend") => {
                number.as_u64().map_or_else(|| number.to_string(), grouped)
            }
            other => other.to_string(),
        };
        const COLUMNS: [&str; 10] = [
            "line",
            "payment_id",
            "receipt",
            "store",
            "amount",
            "status",
            "result",
            "purchase",
            "purchase_spend",
            "purchase_state",
        ];
        for line in &lines {
            table.add_row(COLUMNS.map(|key| cell(line, key)));
        }
        println!("{table}");
        let mut summary = comfy_table::Table::new();
        summary
            .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
            .set_header(["result", "count", "amount"]);
        for column in [1, 2] {
            if let Some(column) = summary.column_mut(column) {
                column.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
        for (result, (count, amount)) in &totals {
            let amount = u64::try_from(*amount).map_or_else(|_| amount.to_string(), grouped);
            summary.add_row([(*result).to_string(), grouped(*count), amount]);
        }
        println!("{summary}");
        println!(
            "{} rows against {} purchases of the report's days: {}",
            grouped(rows.len() as u64),
            grouped(purchases.len() as u64),
            if balanced { "balanced" } else { "NOT balanced" }
        );
    }
    Ok(if balanced { Outcome::Sound } else { Outcome::Problems })
}
