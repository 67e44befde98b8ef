//! `ledger-wal balance`: an account's balance, or every account of a customer with their lots
//! and tier, as of a time or an LSN, computed by replay (the engine's follower: the newest
//! snapshot at or before the point, then the WAL up to it). Read-only; needs no server.

use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir::{self, DataDirMeta};
use ledger_engine::engine::ledger_config;
use ledger_engine::follow::Follower;
use ledger_engine::ledger::account::{AccountAddress, AccountId, Namespace};
use ledger_engine::ledger::registry::Registry;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::{CustomerId, Limits, Lsn, ShardId, Timestamp};
use serde_json::json;

use crate::Outcome;
use crate::cmd::stats::grouped;

/// Whose balances.
#[derive(Debug, Clone)]
pub enum Whose {
    /// Every account of a customer, with their lots and tier.
    Customer(u64),
    /// One account, by address.
    Account(String),
}

/// As of when.
#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    /// The last whole record of the WAL.
    End,
    /// The last record at or before this time.
    Time(Timestamp),
    /// This LSN of the one shard concerned.
    Lsn(u64),
}

/// The LSN of `shard` that `as_of` names: its last record at or before the time, or the
/// WAL's last whole record.
fn lsn_of(
    paths: &ShardPaths,
    meta: &DataDirMeta,
    shard: ShardId,
    as_of: AsOf,
) -> anyhow::Result<Lsn> {
    match as_of {
        AsOf::Lsn(lsn) => Ok(Lsn(lsn)),
        AsOf::Time(at) => crate::filter::last_lsn_while(paths, meta, shard, |time| time <= at),
        AsOf::End => crate::filter::last_lsn_while(paths, meta, shard, |_| true),
    }
}

fn follower(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    as_of: AsOf,
) -> anyhow::Result<Follower> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let lsn = lsn_of(&paths, meta, shard, as_of)?;
    let config = ledger_config(meta, shard, &Limits::default());
    Follower::open(&paths, config, meta.cluster_id, lsn)
        .with_context(|| format!("shard {index} cannot be replayed to lsn {lsn}"))
}

fn address(registry: &Registry, id: AccountId) -> String {
    registry
        .address(id)
        .map_or_else(|| format!("unknown:{}:{}", id.class().0, id.owner()), |a| a.to_string())
}

/// One account's figures as a JSON line.
fn account_json(follower: &Follower, shard: u16, id: AccountId) -> Option<serde_json::Value> {
    let ledger = follower.ledger();
    let view = ledger.account(id)?;
    let registry = ledger.registry();
    let asset = registry.class(id.class()).and_then(|class| registry.asset(class.asset));
    let (debits, credits) = (view.counters.debits_pending, view.counters.credits_pending);
    Some(json!({
        "scope": "account",
        "shard": shard,
        "lsn": follower.lsn().0,
        "time": crate::time::rfc3339(follower.last_time()),
        "address": address(registry, id),
        "asset": asset.map(|asset| asset.code.to_string()),
        "balance": view.counters.balance_posted().to_string(),
        "pending_debits": debits.to_string(),
        "pending_credits": credits.to_string(),
    }))
}

pub fn run(data_dir: &Path, whose: &Whose, as_of: AsOf, as_json: bool) -> anyhow::Result<Outcome> {
    let meta = datadir::read_meta(data_dir).context("cannot read the data directory")?;
    let mut lines: Vec<serde_json::Value> = Vec::new();
    match whose {
        Whose::Customer(customer) => {
            let shard =
                ledger_engine::ids::shard_for_customer(CustomerId(*customer), meta.shard_count);
            let follower = follower(data_dir, &meta, shard.index(), as_of)?;
            let ledger = follower.ledger();
            let mut ids: Vec<AccountId> = ledger
                .accounts()
                .map(|(id, _)| *id)
                .filter(|id| {
                    id.owner() == *customer
                        && ledger
                            .registry()
                            .class(id.class())
                            .is_some_and(|c| c.namespace == Namespace::Customer)
                })
                .collect();
            ids.sort_unstable();
            lines.extend(
                ids.into_iter().filter_map(|id| account_json(&follower, shard.index(), id)),
            );
            if let Some(member) = ledger.members().get(*customer) {
                lines.push(json!({
                    "scope": "member",
                    "shard": shard.index(),
                    "lsn": follower.lsn().0,
                    "customer": customer,
                    "tier": member.tier(),
                    "lots": member.lots.len(),
                    "points_in_lots": member.lots.total().to_string(),
                }));
                for lot in member.lots.iter() {
                    let expires = Timestamp(
                        u64::from(lot.expires_day)
                            * ledger_engine::loyalty::calendar::NANOS_PER_DAY,
                    );
                    lines.push(json!({
                        "scope": "lot",
                        "customer": customer,
                        "kind": lot.kind.name(),
                        "expires_on": &crate::time::rfc3339(expires)[..10],
                        "origin": lot.origin.0,
                        "amount": lot.amount,
                        "remaining": lot.remaining,
                    }));
                }
            }
        }
        Whose::Account(text) => {
            let parsed: AccountAddress = text.parse().map_err(|error| {
                anyhow::anyhow!("{text:?} is not an account address: {error:?}")
            })?;
            let shards: Vec<u16> = match &parsed {
                AccountAddress::Customer { customer, .. } => {
                    vec![
                        ledger_engine::ids::shard_for_customer(*customer, meta.shard_count).index(),
                    ]
                }
                _ if matches!(as_of, AsOf::Lsn(_)) && meta.shard_count > 1 => {
                    eprintln!(
                        "ledger-wal: {text} has a slice on every shard; an LSN names a point of one shard: use --as-of TIME"
                    );
                    return Ok(Outcome::Usage);
                }
                _ => (0..meta.shard_count).collect(),
            };
            for index in shards {
                let follower = follower(data_dir, &meta, index, as_of)?;
                let Ok(id) = follower.ledger().registry().resolve(&parsed) else { continue };
                lines.extend(account_json(&follower, index, id));
            }
        }
    }
    if as_json {
        for line in &lines {
            println!("{line}");
        }
    } else {
        print_table(&lines);
    }
    Ok(Outcome::Sound)
}

fn print_table(lines: &[serde_json::Value]) {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let number = |value: &serde_json::Value| {
        let raw = text(value);
        match raw.strip_prefix('-') {
            Some(digits) => {
                digits.parse::<u64>().map_or(raw.clone(), |n| format!("-{}", grouped(n)))
            }
            None => raw.parse::<u64>().map_or(raw.clone(), grouped),
        }
    };
    let mut accounts = comfy_table::Table::new();
    accounts.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "shard",
        "lsn",
        "time",
        "account",
        "asset",
        "balance",
        "pending debits",
        "pending credits",
    ]);
    let mut lot_rows = 0;
    let mut lots = comfy_table::Table::new();
    lots.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "kind",
        "expires on",
        "origin",
        "amount",
        "remaining",
    ]);
    for line in lines {
        match line["scope"].as_str() {
            Some("account") => {
                accounts.add_row([
                    text(&line["shard"]),
                    text(&line["lsn"]),
                    text(&line["time"]),
                    text(&line["address"]),
                    text(&line["asset"]),
                    number(&line["balance"]),
                    number(&line["pending_debits"]),
                    number(&line["pending_credits"]),
                ]);
            }
            Some("member") => println!(
                "member {}: tier {}, {} points in {} lots (shard {}, lsn {})",
                text(&line["customer"]),
                text(&line["tier"]),
                number(&line["points_in_lots"]),
                text(&line["lots"]),
                text(&line["shard"]),
                text(&line["lsn"])
            ),
            Some("lot") => {
                lot_rows += 1;
                lots.add_row([
                    text(&line["kind"]),
                    text(&line["expires_on"]),
                    text(&line["origin"]),
                    number(&line["amount"]),
                    number(&line["remaining"]),
                ]);
            }
            _ => {}
        }
    }
    println!("{accounts}");
    if lot_rows > 0 {
        println!("{lots}");
    }
}
