//! `ledger-wal liability`: what the programme owes its members as of a moment, from the WAL
//! alone: each shard replayed (the engine's follower) to its last record at or before the
//! moment, and the engine's own liability figures of each summed — per customer class, per
//! asset, the points' money value at the rule version in force then, and the points in lots by
//! the month they expire in. The number an auditor signs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ledger_engine::Timestamp;
use ledger_engine::datadir;
use ledger_engine::ledger::liability::ShardLiability;
use serde_json::json;

use crate::Outcome;
use crate::cmd::stats::grouped;
use crate::filter::follower_as_of;

fn signed(value: i128) -> String {
    let digits = grouped_u128(value.unsigned_abs());
    if value < 0 { format!("-{digits}") } else { digits }
}

fn grouped_u128(value: u128) -> String {
    match u64::try_from(value) {
        Ok(value) => grouped(value),
        Err(_) => value.to_string(),
    }
}

pub fn run(data_dir: &Path, as_of: Option<Timestamp>, as_json: bool) -> anyhow::Result<Outcome> {
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let mut figures = ShardLiability::default();
    let mut lsns = Vec::new();
    let mut last_time = Timestamp(0);
    let mut programme = None;
    let mut registry = None;
    for index in 0..meta.shard_count {
        let follower = follower_as_of(data_dir, &meta, index, None, as_of)?;
        let ledger = follower.ledger();
        figures
            .merge(&ledger.liability())
            .map_err(|code| anyhow::anyhow!("the shards' figures do not add up: {code:?}"))?;
        lsns.push(follower.lsn().0);
        last_time = last_time.max(follower.last_time());
        // Definitions and rule versions are the same on every shard: shard 0's are read.
        if index == 0 {
            programme = Some(ledger.programme().clone());
            registry = Some(ledger.registry().clone());
        }
    }
    let (Some(programme), Some(registry)) = (programme, registry) else {
        anyhow::bail!("the data directory has no shards");
    };
    let at = as_of.unwrap_or(last_time);
    let points = programme.points_class().map_or(0, |class| figures.class_total(class));
    let version = programme.in_force(at);
    let value = version.map_or(0, |version| {
        version.rules.purchases.point_value.money(u128::try_from(points).unwrap_or(0))
    });
    let class_name = |class: ledger_engine::ledger::account::ClassId| {
        registry.class(class).map_or_else(|| class.0.to_string(), |def| def.name.to_string())
    };
    let asset_of = |class: ledger_engine::ledger::account::ClassId| {
        registry
            .class(class)
            .and_then(|def| registry.asset(def.asset))
            .map_or_else(String::new, |asset| asset.code.to_string())
    };
    let mut by_asset: BTreeMap<String, i128> = BTreeMap::new();
    for (class, total) in &figures.classes {
        *by_asset.entry(asset_of(*class)).or_default() += total;
    }
    let month = |month: u32| format!("{:04}-{:02}", month / 12, month % 12 + 1);
    let as_of_text = crate::time::rfc3339(at);
    if as_json {
        println!(
            "{}",
            json!({
                "scope": "total",
                "as_of": as_of_text,
                "lsns": lsns,
                "points_outstanding": points.to_string(),
                "points_value_minor_units": value.to_string(),
                "rules_version": version.map(|version| version.version),
            })
        );
        for (class, total) in &figures.classes {
            println!(
                "{}",
                json!({"scope": "class", "class": class_name(*class), "asset": asset_of(*class), "total": total.to_string()})
            );
        }
        for (asset, total) in &by_asset {
            println!("{}", json!({"scope": "asset", "asset": asset, "total": total.to_string()}));
        }
        for (expires, points) in &figures.by_expiry_month {
            println!(
                "{}",
                json!({"scope": "expiry_month", "month": month(*expires), "points": points.to_string()})
            );
        }
        return Ok(Outcome::Sound);
    }
    println!("liability as of {as_of_text} (shard lsns {lsns:?})");
    println!(
        "points outstanding: {}, worth {} minor units at rule version {}",
        signed(points),
        grouped_u128(value),
        version.map_or_else(|| "none".to_string(), |version| version.version.to_string())
    );
    let right = |table: &mut comfy_table::Table, column: usize| {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    };
    let mut classes = comfy_table::Table::new();
    classes.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "customer class",
        "asset",
        "total",
    ]);
    right(&mut classes, 2);
    for (class, total) in &figures.classes {
        classes.add_row([class_name(*class), asset_of(*class), signed(*total)]);
    }
    println!("{classes}");
    let mut assets = comfy_table::Table::new();
    assets.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header(["asset", "total"]);
    right(&mut assets, 1);
    for (asset, total) in &by_asset {
        assets.add_row([asset.clone(), signed(*total)]);
    }
    println!("{assets}");
    let mut months = comfy_table::Table::new();
    months
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(["expires in", "points in lots"]);
    right(&mut months, 1);
    for (expires, points) in &figures.by_expiry_month {
        months.add_row([month(*expires), grouped(*points)]);
    }
    println!("{months}");
    Ok(Outcome::Sound)
}
