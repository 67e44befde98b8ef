//! `ledger-wal snapshot list | inspect | verify`: a data directory's snapshots, their headers
//! (format version, shard, covered LSN, creation time, body size and checksum, the hash of the
//! record they end at), what they hold (accounts, holds, members, lots, purchases kept), and
//! whether each equals the state the WAL gives at its LSN (replayed without it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ledger_engine::datadir::{self, DataDirMeta};
use ledger_engine::engine::ledger_config;
use ledger_engine::follow::FollowError;
use ledger_engine::ledger::Ledger;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::snapshot::{self, SnapshotHeader};
use ledger_engine::{Limits, Lsn, ShardId};
use serde_json::{Value, json};

use crate::Outcome;
use crate::cmd::stats::grouped;

/// Which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Every snapshot's header, checksum checked.
    List,
    /// Headers and contents.
    Inspect,
    /// Headers, checksums, contents and equality with the WAL's replay.
    Verify,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn header_json(shard: u16, path: &Path, header: &SnapshotHeader) -> Value {
    json!({
        "shard": shard,
        "file": path.display().to_string(),
        "format_version": header.version,
        "lsn": header.lsn.0,
        "created": crate::time::rfc3339(header.created),
        "body_bytes": header.body_bytes,
        "body_crc": format!("{:08x}", header.body_crc),
        "last_hash": hex(&header.last_hash),
        "cluster_id": format!("{:016x}", header.cluster_id),
    })
}

fn contents(ledger: &Ledger) -> Value {
    let members = ledger.members();
    let lots: usize = members.iter().map(|(_, member)| member.lots.len()).sum();
    let points: u128 = members.iter().map(|(_, member)| member.lots.total()).sum();
    json!({
        "accounts": ledger.account_count(),
        "holds": ledger.hold_count(),
        "members": members.len(),
        "lots": lots,
        "points_in_lots": points.to_string(),
        "purchases_kept": ledger.purchases().len(),
        "rule_versions": ledger.programme().versions().len(),
    })
}

/// One snapshot's findings.
struct Found {
    line: Value,
    problems: Vec<String>,
}

pub fn run(
    data_dir: &Path,
    only: Option<u16>,
    action: Action,
    as_json: bool,
) -> anyhow::Result<Outcome> {
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shards = crate::filter::shards(&meta, only)?;
    let mut found = Vec::new();
    for shard in shards {
        found.extend(shard_snapshots(data_dir, &meta, shard, action)?);
    }
    let sound = found.iter().all(|found| found.problems.is_empty());
    if as_json {
        for found in &found {
            let mut line = found.line.clone();
            line["ok"] = json!(found.problems.is_empty());
            line["problems"] = json!(found.problems);
            println!("{line}");
        }
    } else {
        print_table(&found, action);
    }
    Ok(if sound { Outcome::Sound } else { Outcome::Problems })
}

fn shard_snapshots(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    action: Action,
) -> anyhow::Result<Vec<Found>> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let listed: Vec<(Lsn, PathBuf)> = match snapshot::find_snapshots(&paths.snapshots) {
        // Oldest first: the replay of `verify` goes forwards.
        Ok(mut listed) => {
            listed.sort_unstable();
            listed
        }
        Err(_) if !paths.snapshots.exists() => Vec::new(),
        Err(error) => return Err(error).context("cannot list snapshots"),
    };
    let config = ledger_config(meta, shard, &Limits::default());
    let mut found = Vec::new();
    for (lsn, path) in &listed {
        let mut problems = Vec::new();
        let mut line = json!({ "shard": index, "file": path.display().to_string(), "lsn": lsn.0 });
        match snapshot::read_checked(path, &mut |_| {}) {
            Ok((header, bytes)) => {
                line = header_json(index, path, &header);
                if header.lsn != *lsn {
                    problems.push(format!(
                        "{} is named for lsn {lsn} but its header says {}",
                        path.display(),
                        header.lsn
                    ));
                }
                if action != Action::List {
                    let decoded = snapshot::decode_checked(
                        path,
                        &header,
                        &bytes,
                        config.clone(),
                        meta.cluster_id,
                    );
                    match decoded {
                        Ok(ledger) => line["contents"] = contents(&ledger),
                        Err(error) => problems.push(error.to_string()),
                    }
                }
            }
            Err(error) => problems.push(error.to_string()),
        }
        found.push(Found { line, problems });
    }
    if action == Action::Verify && !found.is_empty() {
        compare_with_replay(data_dir, meta, index, &listed, &mut found)?;
    }
    Ok(found)
}

/// Replays the shard's WAL from its start (or the oldest snapshot retention left) and compares
/// the state at each snapshot's LSN with the snapshot, byte for byte in the snapshot's format.
fn compare_with_replay(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    listed: &[(Lsn, PathBuf)],
    found: &mut [Found],
) -> anyhow::Result<()> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let config = ledger_config(meta, shard, &Limits::default());
    let first = crate::cmd::stats::first_lsn_before(&paths.wal, shard, meta.cluster_id)?;
    let mut follower = match crate::cmd::stats::follower_from_start(data_dir, index) {
        Ok(follower) => follower,
        Err(error) => {
            for found in found.iter_mut() {
                found.problems.push(format!("the wal cannot be replayed: {error:#}"));
            }
            return Ok(());
        }
    };
    for ((lsn, path), found) in listed.iter().zip(found.iter_mut()) {
        if !found.problems.is_empty() {
            continue;
        }
        if *lsn <= first && first > Lsn::ZERO {
            found.line["replay"] = json!("base");
            continue;
        }
        if let Err(error) = follower.advance(*lsn, |_| Ok::<(), std::convert::Infallible>(())) {
            let message = match error {
                FollowError::Recovery(error) => error.to_string(),
                FollowError::Stopped(never) => match never {},
            };
            found.problems.push(format!("the wal cannot be replayed to lsn {lsn}: {message}"));
            continue;
        }
        if follower.lsn() != *lsn {
            found.problems.push(format!(
                "{} is of lsn {lsn}, after the end of the wal ({})",
                path.display(),
                follower.lsn()
            ));
            continue;
        }
        match compare(path, follower.ledger(), &config, meta.cluster_id, follower.last_hash()) {
            Ok(()) => found.line["replay"] = json!("equal"),
            Err(problem) => found.problems.push(problem),
        }
    }
    Ok(())
}

/// Compares the snapshot at `path` with `ledger`, the state the WAL gives at its LSN, whose
/// record has hash `hash`: `Err` says how they differ. A snapshot of the current format is
/// compared byte for byte with the state encoded again (no decoding); an older one is decoded
/// and both are encoded in its format (version 1 holds no history: what it holds is compared).
pub fn compare(
    path: &Path,
    ledger: &Ledger,
    config: &ledger_engine::ledger::LedgerConfig,
    cluster_id: u64,
    hash: ledger_engine::wal::format::Hash,
) -> Result<(), String> {
    let lsn = ledger.lsn();
    let (header, bytes) = snapshot::read_checked(path, &mut |_| {}).map_err(|e| e.to_string())?;
    let same = if header.version == snapshot::SNAPSHOT_VERSION
        && header.shard == config.shard
        && header.shard_count == config.shard_count
        && header.cluster_id == cluster_id
    {
        let mut live = Vec::with_capacity(bytes.len());
        ledger.encode_state_version(&mut live, header.version);
        live == bytes[snapshot::SNAPSHOT_HEADER_BYTES..]
    } else {
        let (header, state) =
            snapshot::load(path, config.clone(), cluster_id).map_err(|e| e.to_string())?;
        let (mut live, mut snap) = (Vec::new(), Vec::new());
        ledger.encode_state_version(&mut live, header.version);
        state.encode_state_version(&mut snap, header.version);
        live == snap
    };
    if header.lsn != lsn || !same {
        Err(format!("{} differs from the state the wal gives at lsn {lsn}", path.display()))
    } else if header.last_hash != hash {
        Err(format!("{} names another hash for lsn {lsn} than the wal", path.display()))
    } else {
        Ok(())
    }
}

fn print_table(found: &[Found], action: Action) {
    let mut table = comfy_table::Table::new();
    let mut header = vec!["shard", "lsn", "created", "format", "bytes", "body crc"];
    if action != Action::List {
        header.extend(["accounts", "holds", "members", "lots", "points in lots", "purchases"]);
    }
    if action == Action::Verify {
        header.push("replay");
    }
    header.push("status");
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header(header.clone());
    for (index, name) in header.iter().enumerate() {
        if !matches!(*name, "created" | "body crc" | "replay" | "status")
            && let Some(column) = table.column_mut(index)
        {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let number = |value: &Value| value.as_u64().map_or_else(String::new, grouped);
    let text = |value: &Value| value.as_str().map_or_else(String::new, str::to_string);
    for found in found {
        let line = &found.line;
        let mut row = vec![
            number(&line["shard"]),
            number(&line["lsn"]),
            text(&line["created"]),
            number(&line["format_version"]),
            number(&line["body_bytes"]),
            text(&line["body_crc"]),
        ];
        if action != Action::List {
            let contents = &line["contents"];
            row.extend([
                number(&contents["accounts"]),
                number(&contents["holds"]),
                number(&contents["members"]),
                number(&contents["lots"]),
                text(&contents["points_in_lots"]),
                number(&contents["purchases_kept"]),
            ]);
        }
        if action == Action::Verify {
            row.push(text(&line["replay"]));
        }
        row.push(if found.problems.is_empty() { "ok".to_string() } else { "PROBLEMS".to_string() });
        table.add_row(row);
    }
    println!("{table}");
    for found in found {
        for problem in &found.problems {
            println!("problem: {problem}");
        }
    }
    let sound = found.iter().all(|found| found.problems.is_empty());
    println!("{} snapshots: {}", found.len(), if sound { "sound" } else { "problems found" });
}
