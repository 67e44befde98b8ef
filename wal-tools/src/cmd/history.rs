//! `ledger-wal history CUSTOMER`: every record that moved a customer's value or changed their
//! loyalty state, across all segments of their shard, in LSN order, each with what it did to
//! their accounts. The shard is replayed by the engine's follower from the WAL's first record
//! (or the snapshot retention left before it), so a record that names no posting (a purchase,
//! a capture, an expiry) shows the movements it made.

use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir;
use ledger_engine::follow::FollowError;
use ledger_engine::ledger::account::{AccountId, Namespace};
use ledger_engine::{CustomerId, Lsn};
use serde_json::json;

use crate::Outcome;
use crate::cmd::stats::{follower_from_start, grouped};

pub fn run(data_dir: &Path, customer: u64, as_json: bool) -> anyhow::Result<Outcome> {
    let meta = datadir::read_meta(data_dir).context("cannot read the data directory")?;
    let shard = ledger_engine::ids::shard_for_customer(CustomerId(customer), meta.shard_count);
    let mut follower = follower_from_start(data_dir, shard.index())?;
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(["lsn", "time", "record", "tx", "account", "effect", "amount"]);
    if let Some(column) = table.column_mut(6) {
        column.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    let mut found = 0u64;
    let visited = follower.advance(Lsn(u64::MAX), |followed| {
        let registry = followed.registry;
        let theirs = |id: AccountId| {
            id.owner() == customer
                && registry.class(id.class()).is_some_and(|c| c.namespace == Namespace::Customer)
        };
        // (account, signed amount, effect) of each movement of the customer's accounts.
        let mut moves: Vec<(String, i128, &'static str)> = Vec::new();
        for moved in followed.moved {
            let effect = moved.effect.name();
            let amount = i128::from(moved.amount);
            for (id, sign) in [(moved.debit, -1), (moved.credit, 1)] {
                if theirs(id) {
                    let address = registry.address(id).map_or_else(String::new, |a| a.to_string());
                    moves.push((address, sign * amount, effect));
                }
            }
        }
        let touched = followed.members.touched.contains(&customer);
        if moves.is_empty() && !touched {
            return Ok(());
        }
        found += 1;
        let record = followed.record;
        let time = crate::time::rfc3339(record.timestamp);
        let kind = record.body.kind().name();
        let tx = record.body.tx_id().map(|id| id.0);
        if as_json {
            let moves: Vec<serde_json::Value> = moves
                .iter()
                .map(|(account, amount, effect)| {
                    json!({"account": account, "amount": amount.to_string(), "effect": effect})
                })
                .collect();
            println!(
                "{}",
                json!({
                    "shard": shard.index(),
                    "lsn": record.lsn.0,
                    "time": time,
                    "record_kind": kind,
                    "tx_id": tx,
                    "moves": moves,
                })
            );
            return Ok(());
        }
        let rows = if moves.is_empty() { vec![(String::new(), 0, "")] } else { moves };
        for (account, amount, effect) in rows {
            let amount = match amount {
                0 => String::new(),
                negative if negative < 0 => format!("-{}", grouped(negative.unsigned_abs() as u64)),
                positive => format!("+{}", grouped(positive as u64)),
            };
            table.add_row([
                record.lsn.0.to_string(),
                time.clone(),
                kind.to_string(),
                tx.map_or_else(String::new, |tx| tx.to_string()),
                account,
                effect.to_string(),
                amount,
            ]);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    match visited {
        Ok(_) => {}
        Err(FollowError::Recovery(error)) => {
            return Err(error).context(format!("shard {}", shard.index()));
        }
        Err(FollowError::Stopped(never)) => match never {},
    }
    if !as_json {
        println!("{table}");
        println!("customer {customer} (shard {}): {} records", shard.index(), grouped(found));
    }
    Ok(if found > 0 { Outcome::Sound } else { Outcome::Problems })
}
