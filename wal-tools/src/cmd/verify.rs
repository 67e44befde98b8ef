//! `ledger-wal verify`: checks a data directory the way an auditor needs it checked.
//!
//! For each shard: every record's checksum, LSN and hash-chain link (the reader's checks, the
//! same as start-up's); every record replayed into a fresh state machine under the directory's
//! replay rules (a record that does not apply is a problem); every snapshot compared, byte for
//! byte, with the replayed state at its LSN; and the invariants checked at the end: every asset
//! sums to zero and no no-overdraft account is negative, and the loyalty invariants (lots sum
//! to balances, no negative lot). Every purchase is priced again by its recorded rule version
//! from the state before it; a different outcome is a problem. A torn tail (an unacknowledged write
//! cut by a crash) is reported but is not a problem: the server zeroes it at start-up.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir::{self, DataDirMeta};
use ledger_engine::engine::ledger_config;
use ledger_engine::ledger::Ledger;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::format::{SEGMENT_HEADER_BYTES, SegmentHeader};
use ledger_engine::wal::reader::{self, ScanOptions, Tail};
use ledger_engine::wal::{payload, segment};
use ledger_engine::{Limits, Lsn, ShardId, snapshot};
use serde_json::json;

use crate::Outcome;

/// What was found in one shard.
#[derive(Debug, Default)]
struct ShardReport {
    shard: u16,
    segments: u64,
    records: u64,
    replayed_from: u64,
    last_lsn: u64,
    last_timestamp: u64,
    accounts: usize,
    snapshots_checked: Vec<u64>,
    notes: Vec<String>,
    problems: Vec<String>,
}

/// The LSNs checked: every record is read and chained, but replay starts from the newest
/// snapshot before `from` and stops at `to`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// The first LSN checked (`None`: the WAL's first).
    pub from: Option<u64>,
    /// The last LSN checked (`None`: the WAL's last).
    pub to: Option<u64>,
}

pub fn run(
    data_dir: &Path,
    only: Option<u16>,
    range: Range,
    as_json: bool,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    if !data_dir.is_dir() {
        eprintln!("ledger-wal: {} is not a directory", data_dir.display());
        return Ok(Outcome::Unreadable);
    }
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shards = crate::filter::Filter { shard: only, ..Default::default() }.shards(&meta)?;
    let reports: Vec<ShardReport> = shards
        .iter()
        .map(|shard| verify_shard(data_dir, &meta, *shard, range, quiet))
        .collect::<anyhow::Result<_>>()?;
    let sound = reports.iter().all(|report| report.problems.is_empty());
    if as_json {
        let shards: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "shard": r.shard,
                    "ok": r.problems.is_empty(),
                    "segments": r.segments,
                    "records": r.records,
                    "replayed_from_lsn": r.replayed_from,
                    "last_lsn": r.last_lsn,
                    "last_timestamp": crate::time::rfc3339(ledger_engine::Timestamp(r.last_timestamp)),
                    "accounts": r.accounts,
                    "snapshots_checked": r.snapshots_checked,
                    "notes": r.notes,
                    "problems": r.problems,
                })
            })
            .collect();
        let report =
            json!({ "data_dir": data_dir.display().to_string(), "ok": sound, "shards": shards });
        println!("{report}");
    } else {
        for r in &reports {
            let status = if r.problems.is_empty() { "ok" } else { "PROBLEMS" };
            println!(
                "shard {}: {status}: {} records in {} segments, lsn {}..={}, {} accounts, {} snapshots checked",
                r.shard,
                r.records,
                r.segments,
                r.replayed_from.max(1),
                r.last_lsn,
                r.accounts,
                r.snapshots_checked.len()
            );
            for note in &r.notes {
                println!("  note: {note}");
            }
            for problem in &r.problems {
                println!("  problem: {problem}");
            }
        }
        println!("{}", if sound { "verify: sound" } else { "verify: problems found" });
    }
    Ok(if sound { Outcome::Sound } else { Outcome::Problems })
}

fn first_segment_start(wal: &Path) -> anyhow::Result<Option<Lsn>> {
    let segments =
        segment::list_segments(wal).with_context(|| format!("cannot list {}", wal.display()))?;
    let Some((_, path)) = segments.first() else { return Ok(None) };
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    let read = fs::File::open(path).and_then(|mut file| file.read(&mut head));
    let read = read.with_context(|| format!("cannot read {}", path.display()))?;
    Ok(SegmentHeader::decode(&head[..read]).ok().map(|header| header.first_lsn))
}

fn verify_shard(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    range: Range,
    quiet: bool,
) -> anyhow::Result<ShardReport> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let mut report = ShardReport { shard: index, ..ShardReport::default() };
    if !paths.wal.is_dir() {
        report.problems.push(format!("{} is missing", paths.wal.display()));
        return Ok(report);
    }
    let config = ledger_config(meta, shard, &Limits::default());
    let mut snapshots = match snapshot::find_snapshots(&paths.snapshots) {
        Ok(found) => found,
        Err(_) if !paths.snapshots.exists() => Vec::new(),
        Err(error) => return Err(error).context("cannot list snapshots"),
    };
    snapshots.reverse();

    // Replay from LSN 1 when the WAL starts there; from the oldest usable snapshot when old
    // segments were deleted under the retention policy; from the newest snapshot before
    // `--from-lsn` when one is given.
    let start = first_segment_start(&paths.wal)?.unwrap_or(Lsn(1));
    let from = Lsn(range.from.unwrap_or(1).max(1));
    let mut ledger = Ledger::new(config.clone());
    let mut options =
        ScanOptions { shard: Some(shard), cluster_id: Some(meta.cluster_id), ..ScanOptions::all() };
    let base = snapshots.iter().rev().find(|(lsn, _)| *lsn < from && lsn.next() >= start);
    let base = base.or_else(|| snapshots.iter().find(|(lsn, _)| lsn.next() >= start));
    let base = base.filter(|(lsn, _)| start > Lsn(1) || *lsn < from);
    if base.is_none() && start > Lsn(1) {
        report.problems.push(format!(
            "the wal starts at lsn {start} and no snapshot covers the records before it"
        ));
        return Ok(report);
    }
    if let Some((lsn, path)) = base {
        match snapshot::load(path, config.clone(), meta.cluster_id) {
            Ok((header, loaded)) => {
                ledger = loaded;
                options.visit_after = *lsn;
                options.hash_at_visit_after = Some(header.last_hash);
                report.replayed_from = lsn.0 + 1;
                if start > Lsn(1) && from <= start {
                    report.notes.push(format!(
                        "records before lsn {start} were deleted by retention; replay starts from {}",
                        path.display()
                    ));
                } else {
                    report.notes.push(format!("replay starts from {}", path.display()));
                }
            }
            Err(error) => {
                report.problems.push(error.to_string());
                return Ok(report);
            }
        }
    }
    if let Some(to) = range.to {
        options.visit_until = Some(Lsn(to));
        options.stop_at_until = true;
    }
    match ledger_engine::wal::mark::read(&paths.wal) {
        // The mark is checked when the scan reads the WAL to its end.
        Ok(mark) if range.to.is_none() => options.durable_mark = mark,
        Ok(_) => {}
        Err(error) => report.problems.push(format!("cannot read the durable mark: {error}")),
    }
    let to = Lsn(range.to.unwrap_or(u64::MAX));
    let mut pending = snapshots
        .into_iter()
        .filter(|(lsn, _)| *lsn > options.visit_after && *lsn >= from && *lsn <= to)
        .peekable();
    let mut progress = crate::progress::Progress::new(quiet, data_dir, &[index], "verifying");
    progress.shard(index);
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    let scanned = reader::scan(&paths.wal, &options, |record| {
        let at = || {
            format!(
                "{} at offset {}, lsn {}",
                paths.wal.join(segment::segment_file_name(record.segment)).display(),
                record.offset,
                record.header.lsn
            )
        };
        progress.at(ledger_engine::follow::Place {
            segment: record.segment,
            offset: record.offset,
            len: 0,
            commit_index: 0,
        });
        let decoded = record.decode().map_err(|error| format!("{}: {error}", at()))?;
        if let ledger_engine::ledger::record::Body::Purchase(purchase) = &decoded.body
            && decoded.lsn >= from
            && let Some(priced) = ledger.reprice_mismatch(purchase, decoded.timestamp)
        {
            problems.push(format!(
                "{}: purchase {} records {:?} but its rule version gives {:?}",
                at(),
                purchase.header.id.0,
                purchase.outcome,
                priced
            ));
        }
        let fingerprint = payload::fingerprint(record.kind, record.payload());
        ledger.apply(&decoded, fingerprint).map_err(|refusal| {
            let what = match &decoded.body {
                ledger_engine::ledger::record::Body::PurchaseChange(change) => format!(
                    "{} of purchase {} is not a legal lifecycle transition from the state the wal gives it, or takes back other amounts than its record says",
                    decoded.body.kind().name(),
                    change.outcome.purchase.0
                ),
                ledger_engine::ledger::record::Body::PurchaseRelease(release) => format!(
                    "the release of purchase {} is not a legal lifecycle transition",
                    release.purchase.0
                ),
                _ => "the record does not apply".to_string(),
            };
            format!("{}: {what} ({refusal:?})", at())
        })?;
        while let Some((lsn, path)) = pending.next_if(|(lsn, _)| *lsn <= record.header.lsn) {
            if lsn != record.header.lsn {
                continue;
            }
            match snapshot::load(&path, config.clone(), meta.cluster_id) {
                Ok((header, state)) => {
                    let (mut live, mut snap) = (Vec::new(), Vec::new());
                    // An older snapshot holds less (version 1: no history): compare what it holds.
                    ledger.encode_state_version(&mut live, header.version);
                    state.encode_state_version(&mut snap, header.version);
                    if live != snap {
                        problems.push(format!(
                            "{} differs from the state the wal gives at lsn {lsn}",
                            path.display()
                        ));
                    } else if header.last_hash != record.hash {
                        problems.push(format!(
                            "{} names another hash for lsn {lsn} than the wal",
                            path.display()
                        ));
                    } else {
                        checked.push(lsn.0);
                    }
                }
                Err(error) => problems.push(error.to_string()),
            }
        }
        Ok::<(), String>(())
    });
    progress.finish();
    report.problems.append(&mut problems);
    report.snapshots_checked = checked;
    match scanned {
        Ok(end) => {
            report.segments = end.segments;
            report.records = end.records;
            report.last_lsn = end.last_lsn.0;
            report.last_timestamp = end.last_timestamp.0;
            if let Some(newest) = &end.newest
                && let Tail::Torn { offset, dirty_end, .. } = newest.tail
            {
                report.notes.push(format!(
                        "{} ends in a torn write at offset {offset} ({} bytes): an unacknowledged write cut by a crash; the server zeroes it at start-up",
                        newest.path.display(),
                        dirty_end - offset
                    ));
            }
            for path in &end.abandoned {
                report.notes.push(format!(
                    "{} was never started (a crash during a segment roll)",
                    path.display()
                ));
            }
            for (lsn, path) in pending.filter(|_| range.to.is_none()) {
                report.problems.push(format!(
                    "{} is of lsn {lsn}, after the end of the wal ({})",
                    path.display(),
                    end.last_lsn
                ));
            }
            if let Err(violation) = ledger.check_invariants() {
                report.problems.push(violation.to_string());
            }
        }
        Err(Ok(problem)) => report.problems.push(problem),
        Err(Err(error)) => report.problems.push(error.to_string()),
    }
    report.accounts = ledger.account_count();
    Ok(report)
}
