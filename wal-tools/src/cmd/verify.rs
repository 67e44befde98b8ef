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
use std::path::{Path, PathBuf};

use anyhow::Context;
use ledger_engine::datadir::{self, DataDirMeta};
use ledger_engine::engine::ledger_config;
use ledger_engine::ledger::Ledger;
use ledger_engine::ledger::record::{Body, Record};
use ledger_engine::recovery::{self, ReplayObserver, ReplayPlace, ShardPaths};
use ledger_engine::snapshot::SnapshotHeader;
use ledger_engine::wal::format::{SEGMENT_HEADER_BYTES, SegmentHeader};
use ledger_engine::wal::reader::{self, ScanOptions, Tail};
use ledger_engine::wal::segment;
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
/// snapshot before `from` and stops at `to`; and whether purchases are priced again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Price every purchase again by its rule version (`--no-repricing` turns it off).
    pub reprice: bool,
    /// Check the files only: frames, checksums, the hash chain, the durable mark, and that
    /// each snapshot's header names the chain's hash at its LSN; no replay (`--chain-only`).
    pub chain_only: bool,
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
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shards = crate::filter::shards(&meta, only)?;
    // Shards are independent: as many at once as there are cores (each replay is itself a
    // reading thread and an applying one).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(shards.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let progress = crate::progress::Progress::new(quiet, data_dir, &shards, "verifying");
    let mut reports: Vec<(u16, anyhow::Result<ShardReport>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&shard) = shards.get(at) else { break done };
                        done.push((shard, verify_shard(data_dir, &meta, shard, range, &progress)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().expect("a verifier panicked")).collect()
    });
    progress.finish();
    reports.sort_by_key(|(shard, _)| *shard);
    let reports: Vec<ShardReport> =
        reports.into_iter().map(|(_, report)| report).collect::<anyhow::Result<_>>()?;
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
    progress: &crate::progress::Progress,
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
    let mut options =
        ScanOptions { shard: Some(shard), cluster_id: Some(meta.cluster_id), ..ScanOptions::all() };
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
    if range.chain_only {
        return chain_only(&paths, &options, snapshots, progress, report);
    }

    // Replay from LSN 1 when the WAL starts there; from the oldest usable snapshot when old
    // segments were deleted under the retention policy; from the newest snapshot before
    // `--from-lsn` when one is given.
    let start = first_segment_start(&paths.wal)?.unwrap_or(Lsn(1));
    let from = Lsn(range.from.unwrap_or(1).max(1));
    let mut ledger = Ledger::new(config.clone());
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
    let to = Lsn(range.to.unwrap_or(u64::MAX));
    let pending: Vec<(Lsn, PathBuf)> = snapshots
        .into_iter()
        .filter(|(lsn, _)| *lsn > options.visit_after && *lsn >= from && *lsn <= to)
        .collect();
    let mut observer = Observer {
        wal: &paths.wal,
        config: &config,
        cluster_id: meta.cluster_id,
        from,
        reprice: range.reprice,
        pending: pending.into_iter().peekable(),
        problems: Vec::new(),
        checked: Vec::new(),
        progress: progress.shard(index),
    };
    let replayed = recovery::replay_wal_observed(&paths.wal, &mut ledger, &options, &mut observer);
    report.problems.append(&mut observer.problems);
    let (checked, pending) = (observer.checked, observer.pending);
    report.snapshots_checked = checked;
    match replayed {
        Ok((end, _)) => {
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
        Err(error) => report.problems.push(error.to_string()),
    }
    report.accounts = ledger.account_count();
    Ok(report)
}

/// What `verify` does beside the replay, record by record: prices purchases again from the
/// state before them, compares snapshots with the state at their LSN, moves the progress bar.
struct Observer<'a, I: Iterator<Item = (Lsn, PathBuf)>> {
    wal: &'a Path,
    config: &'a ledger_engine::ledger::LedgerConfig,
    cluster_id: u64,
    from: Lsn,
    reprice: bool,
    pending: std::iter::Peekable<I>,
    problems: Vec<String>,
    checked: Vec<u64>,
    progress: crate::progress::ShardProgress,
}

impl<I: Iterator<Item = (Lsn, PathBuf)>> Observer<'_, I> {
    fn at(&self, record: &Record, place: ReplayPlace) -> String {
        format!(
            "{} at offset {}, lsn {}",
            self.wal.join(segment::segment_file_name(place.segment)).display(),
            place.offset,
            record.lsn
        )
    }
}

impl<I: Iterator<Item = (Lsn, PathBuf)>> ReplayObserver for Observer<'_, I> {
    fn before(&mut self, ledger: &Ledger, record: &Record, place: ReplayPlace) {
        self.progress.at(place.segment, place.offset);
        if let Body::Purchase(purchase) = &record.body
            && self.reprice
            && record.lsn >= self.from
            && let Some(priced) = ledger.reprice_mismatch(purchase, record.timestamp)
        {
            self.problems.push(format!(
                "{}: purchase {} records {:?} but its rule version gives {:?}",
                self.at(record, place),
                purchase.header.id.0,
                purchase.outcome,
                priced
            ));
        }
    }

    fn after(&mut self, ledger: &mut Ledger, record: &Record, place: ReplayPlace) {
        while let Some((lsn, path)) = self.pending.next_if(|(lsn, _)| *lsn <= record.lsn) {
            if lsn != record.lsn {
                continue;
            }
            match crate::cmd::snapshot::compare(
                &path,
                ledger,
                self.config,
                self.cluster_id,
                place.hash,
            ) {
                Ok(()) => self.checked.push(lsn.0),
                Err(problem) => self.problems.push(problem),
            }
        }
    }
}

/// `--chain-only`: every record's frame, checksum, LSN, identity and hash-chain link, the
/// durable mark, and each snapshot's header against the chain (its LSN's hash); nothing is
/// replayed, so no invariant, price or snapshot body is checked.
fn chain_only(
    paths: &ShardPaths,
    options: &ScanOptions,
    snapshots: Vec<(Lsn, PathBuf)>,
    progress: &crate::progress::Progress,
    mut report: ShardReport,
) -> anyhow::Result<ShardReport> {
    // Each snapshot's header: its LSN and the hash it says the record there has.
    let mut named = Vec::new();
    for (lsn, path) in snapshots {
        let mut head = vec![0u8; snapshot::SNAPSHOT_HEADER_BYTES];
        let read = fs::File::open(&path).and_then(|mut file| file.read_exact(&mut head));
        match read.map_err(|e| e.to_string()).and_then(|()| SnapshotHeader::decode(&head)) {
            Ok(header) if header.lsn == lsn => named.push((lsn, header.last_hash, path)),
            Ok(header) => report.problems.push(format!(
                "{} is named for lsn {lsn} but its header says {}",
                path.display(),
                header.lsn
            )),
            Err(error) => report.problems.push(format!("{}: {error}", path.display())),
        }
    }
    let mut pending = named.into_iter().peekable();
    let mut shown = progress.shard(report.shard);
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let scanned = reader::scan(&paths.wal, options, |record| {
        shown.at(record.segment, record.offset);
        while let Some((lsn, hash, path)) = pending.next_if(|(lsn, _, _)| *lsn <= record.header.lsn)
        {
            if lsn != record.header.lsn {
                continue;
            }
            if hash == record.hash {
                checked.push(lsn.0);
            } else {
                problems.push(format!(
                    "{} names another hash for lsn {lsn} than the wal",
                    path.display()
                ));
            }
        }
        Ok::<(), ()>(())
    });
    report.problems.append(&mut problems);
    report.snapshots_checked = checked;
    report.notes.push("chain only: nothing was replayed".to_string());
    match scanned {
        Ok(end) => {
            report.segments = end.segments;
            report.records = end.records;
            report.replayed_from = 0;
            report.last_lsn = end.last_lsn.0;
            report.last_timestamp = end.last_timestamp.0;
        }
        Err(Ok(())) => unreachable!("the visitor never stops"),
        Err(Err(error)) => report.problems.push(error.to_string()),
    }
    Ok(report)
}
