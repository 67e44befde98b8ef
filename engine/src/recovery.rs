//! Start-up recovery of one shard: newest valid snapshot, then the WAL after it, then the
//! invariants.
//!
//! Recovery repairs exactly one thing: a torn tail at the end of the newest segment (the
//! unacknowledged last commit group), which it zeroes so that writing can resume there. Every
//! other problem stops start-up with an error that names the file, offset and LSN, because
//! continuing would mean serving a ledger that lost acknowledged transactions.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use crate::ids::Lsn;
use crate::ledger::keys::KeyEntry;
use crate::ledger::record::{Body, Record};

use crate::ledger::{InvariantViolation, Ledger, LedgerConfig, Refusal};
use crate::snapshot::{self, SnapshotError};
use crate::wal::format::HASH_ZERO;
use crate::wal::reader::{self, ScanOptions, Tail, WalError};
use crate::wal::segment;
use crate::wal::writer::WalPosition;
use crate::wal::{mark, payload};

/// The directories of one shard inside the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPaths {
    /// `<data>/shard-<NNN>`.
    pub root: PathBuf,
    /// `<root>/wal`: the segments.
    pub wal: PathBuf,
    /// `<root>/snapshots`.
    pub snapshots: PathBuf,
}

impl ShardPaths {
    /// The paths of shard `index` under `data_dir`.
    pub fn new(data_dir: &Path, index: u16) -> ShardPaths {
        let root = data_dir.join(format!("shard-{index:03}"));
        ShardPaths { wal: root.join("wal"), snapshots: root.join("snapshots"), root }
    }

    /// Creates the directories if they do not exist.
    pub fn create(&self) -> std::io::Result<()> {
        fs::create_dir_all(&self.wal)?;
        fs::create_dir_all(&self.snapshots)
    }
}

/// Why a shard could not be recovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The WAL is damaged or incomplete.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Snapshots could not be listed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A record read back does not apply: the WAL and the engine disagree.
    #[error("replay failed: {path} at offset {offset}, lsn {lsn}: {reason}")]
    Replay {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// Its LSN.
        lsn: Lsn,
        /// Why it does not apply.
        reason: String,
    },
    /// The recovered state breaks an invariant.
    #[error(transparent)]
    Invariant(#[from] InvariantViolation),
    /// The key index cannot be opened or rebuilt.
    #[error(transparent)]
    KeyIndex(#[from] crate::keyindex::run::RunError),
    /// Repairing the tail or creating directories failed.
    #[error("recovery i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What recovery found and did, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the snapshot loaded (zero if none).
    pub snapshot_lsn: Lsn,
    /// When that snapshot was taken: the time of its record `snapshot_lsn` (zero if none).
    pub snapshot_created: crate::ids::Timestamp,
    /// Snapshots that failed to load, with the reason, newest first.
    pub snapshots_skipped: Vec<String>,
    /// Records replayed after the snapshot.
    pub records_replayed: u64,
    /// Where a torn tail was zeroed: (segment file, offset, bytes zeroed).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Newest segment files removed because their roll never finished.
    pub abandoned_segments: Vec<PathBuf>,
    /// What the key index found and did (filled in by the shard).
    pub key_index: crate::keyindex::KeyIndexReport,
    /// Purchases replayed whose recorded outcome the rules, re-evaluated, do not give
    /// (`Replayed::pricing_mismatches`).
    pub pricing_mismatches: u64,
}

/// What `replay_wal` did.
#[derive(Debug)]
pub struct Replayed {
    /// Where the WAL ended.
    pub end: reader::ScanEnd,
    /// Records applied.
    pub records: u64,
    /// Purchases whose recorded outcome differs from what their rule version gives when the
    /// purchase is priced again from the state before it. Replay applies the record as it is
    /// (it is what the customer was told, and what the WAL's hash chain vouches for); each one
    /// is logged with its LSN and counted, and `ledger-wal verify` reports it.
    pub pricing_mismatches: u64,
}

/// A recovered shard.
#[derive(Debug)]
pub struct Recovered {
    /// The state, as of the last whole record.
    pub ledger: Ledger,
    /// Where the writer resumes (`None` for a WAL with no segment yet).
    pub position: Option<WalPosition>,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Records decoded by the reader thread and applied by the caller's, per message.
const REPLAY_BATCH_RECORDS: usize = 1024;

/// How many records ahead of the one being applied replay prefetches (see `ShardActor`).
const REPLAY_PREFETCH_DISTANCE: usize = 16;

/// A record ready to apply, with where it came from for error messages.
struct Decoded {
    record: crate::ledger::record::Record,
    fingerprint: u64,
    segment: u64,
    offset: u64,
    hash: crate::wal::format::Hash,
}

/// Where a replayed record is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPlace {
    /// Its segment's sequence.
    pub segment: u64,
    /// Its byte offset in the segment file.
    pub offset: u64,
    /// Its hash (the next record's `prev_hash`).
    pub hash: crate::wal::format::Hash,
}

/// What a caller of `replay_wal_observed` sees of each record, on the applying thread.
pub trait ReplayObserver {
    /// Before `record` applies: `ledger` is the state before it.
    fn before(&mut self, ledger: &Ledger, record: &Record, place: ReplayPlace);
    /// Once `record` applied.
    fn after(&mut self, ledger: &mut Ledger, record: &Record, place: ReplayPlace);
}

/// Recovery's observer: logs and counts purchases whose recorded outcome differs from their
/// rules, and hands out the key entries each record made.
struct RecoveryObserver<'a> {
    key_events: Option<&'a mut dyn FnMut(KeyEntry, Lsn)>,
    mismatches: u64,
}

impl ReplayObserver for RecoveryObserver<'_> {
    fn before(&mut self, ledger: &Ledger, record: &Record, _place: ReplayPlace) {
        if let Body::Purchase(purchase) = &record.body
            && let Some(priced) = ledger.reprice_mismatch(purchase, record.timestamp)
        {
            self.mismatches += 1;
            if self.mismatches <= 16 {
                tracing::warn!(
                    lsn = record.lsn.0,
                    tx_id = purchase.header.id.0,
                    recorded = ?purchase.outcome,
                    priced = ?priced,
                    "a purchase's recorded outcome differs from its rules; replay keeps the record"
                );
            }
        }
    }

    fn after(&mut self, ledger: &mut Ledger, record: &Record, _place: ReplayPlace) {
        if let Some(sink) = self.key_events.as_mut() {
            for entry in ledger.drain_key_events() {
                sink(entry, record.lsn);
            }
        }
    }
}

/// Replays the WAL in `wal_dir` into `ledger`: every record after `options.visit_after` must
/// apply. Returns where the WAL ends and how many records were applied. With `key_events`,
/// the key entries each record hands out (`Ledger::drain_key_events`) go to it with the
/// record's LSN.
pub fn replay_wal(
    wal_dir: &Path,
    ledger: &mut Ledger,
    options: &ScanOptions,
    key_events: Option<&mut dyn FnMut(KeyEntry, Lsn)>,
) -> Result<Replayed, RecoveryError> {
    ledger.set_key_events(key_events.is_some());
    let mut observer = RecoveryObserver { key_events, mismatches: 0 };
    let (end, records) = replay_wal_observed(wal_dir, ledger, options, &mut observer)?;
    Ok(Replayed { end, records, pricing_mismatches: observer.mismatches })
}

/// Why a record does not apply, in words: a purchase's settlement, failure, refund or release
/// that the state before it does not allow is an illegal lifecycle transition.
pub(crate) fn refusal_reason(record: &Record, refusal: Refusal) -> String {
    match &record.body {
        Body::PurchaseChange(change) => format!(
            "{} of purchase {} is not a legal lifecycle transition from the state the wal gives it, or takes back other amounts than its record says ({refusal:?})",
            record.body.kind().name(),
            change.outcome.purchase.0
        ),
        Body::PurchaseRelease(release) => format!(
            "the release of purchase {} is not a legal lifecycle transition ({refusal:?})",
            release.purchase.0
        ),
        _ => format!("the record does not apply ({refusal:?})"),
    }
}

/// `replay_wal` with an observer of every record, before and after it applies (recovery's
/// checks and key entries; `ledger-wal verify`'s repricing, snapshot comparisons and progress).
///
/// Two threads share the work: a reader checks frames, checksums and the hash chain and decodes
/// records; the calling thread applies them, touching the accounts of the record 16 places
/// ahead (`Ledger::prefetch_body`) so that cache misses overlap with work. On two cores this replays about
/// twice as fast as one thread doing both (docs/performance.md).
pub fn replay_wal_observed(
    wal_dir: &Path,
    ledger: &mut Ledger,
    options: &ScanOptions,
    observer: &mut dyn ReplayObserver,
) -> Result<(reader::ScanEnd, u64), RecoveryError> {
    let replay_error =
        |segment: u64, offset: u64, lsn: Lsn, reason: String| RecoveryError::Replay {
            path: wal_dir.join(segment::segment_file_name(segment)),
            offset,
            lsn,
            reason,
        };
    let (batches, received) = crossbeam_channel::bounded::<Vec<Decoded>>(4);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("ledger-replay".to_string())
            .spawn_scoped(scope, move || {
                let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS);
                let scanned = reader::scan(wal_dir, options, |record| {
                    let decoded = record.decode().map_err(|error| {
                        Some(replay_error(
                            record.segment,
                            record.offset,
                            record.header.lsn,
                            error.to_string(),
                        ))
                    })?;
                    let fingerprint = payload::fingerprint(record.kind, record.payload());
                    batch.push(Decoded {
                        record: decoded,
                        fingerprint,
                        segment: record.segment,
                        offset: record.offset,
                        hash: record.hash,
                    });
                    if batch.len() == REPLAY_BATCH_RECORDS {
                        // The applier stopped (it found a record that does not apply).
                        batches.send(std::mem::take(&mut batch)).map_err(|_| None)?;
                        batch.reserve(REPLAY_BATCH_RECORDS);
                    }
                    Ok::<(), Option<RecoveryError>>(())
                });
                if scanned.is_ok() && !batch.is_empty() {
                    let _ = batches.send(batch);
                }
                scanned
            })
            .expect("spawn the replay reader");
        let mut replayed = 0u64;
        let mut failure = None;
        for batch in &received {
            for decoded in batch.iter().take(REPLAY_PREFETCH_DISTANCE) {
                ledger.prefetch_body(&decoded.record.body);
            }
            for (index, decoded) in batch.iter().enumerate() {
                if let Some(ahead) = batch.get(index + REPLAY_PREFETCH_DISTANCE) {
                    ledger.prefetch_body(&ahead.record.body);
                }
                let place = ReplayPlace {
                    segment: decoded.segment,
                    offset: decoded.offset,
                    hash: decoded.hash,
                };
                observer.before(ledger, &decoded.record, place);
                if let Err(refusal) = ledger.apply(&decoded.record, decoded.fingerprint) {
                    failure = Some(replay_error(
                        decoded.segment,
                        decoded.offset,
                        decoded.record.lsn,
                        refusal_reason(&decoded.record, refusal),
                    ));
                    break;
                }
                observer.after(ledger, &decoded.record, place);
                replayed += 1;
            }
            if failure.is_some() {
                break;
            }
        }
        drop(received);
        let scanned = reader.join().expect("the replay reader does not panic");
        if let Some(error) = failure {
            return Err(error);
        }
        match scanned {
            Ok(end) => Ok((end, replayed)),
            Err(Ok(Some(error))) => Err(error),
            Err(Ok(None)) => unreachable!("the reader stops early only when the applier failed"),
            Err(Err(error)) => Err(error.into()),
        }
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io { path: path.to_path_buf(), source }
}

/// Recovers shard `config.shard` from `paths`. With `key_events`, the key entries of the
/// records replayed go to it (see `replay_wal`).
pub fn recover_shard(
    paths: &ShardPaths,
    config: LedgerConfig,
    cluster_id: u64,
    key_events: Option<&mut dyn FnMut(KeyEntry, Lsn)>,
) -> Result<Recovered, RecoveryError> {
    paths.create().map_err(io_error(&paths.root))?;
    segment::remove_temporary_files(&paths.wal).map_err(io_error(&paths.wal))?;
    let mut report = RecoveryReport::default();

    let mut base = None;
    for (_, path) in snapshot::list_snapshots(&paths.snapshots)? {
        match snapshot::load(&path, config.clone(), cluster_id) {
            Ok(loaded) => {
                base = Some(loaded);
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "skipping snapshot");
                report.snapshots_skipped.push(error.to_string());
            }
        }
    }
    let (mut ledger, options) = match base {
        Some((header, ledger)) => {
            report.snapshot_lsn = header.lsn;
            report.snapshot_created = header.created;
            let options = ScanOptions {
                shard: Some(config.shard),
                cluster_id: Some(cluster_id),
                visit_after: header.lsn,
                hash_at_visit_after: (header.lsn > Lsn::ZERO).then_some(header.last_hash),
                ..ScanOptions::all()
            };
            (ledger, options)
        }
        None => {
            let options = ScanOptions {
                shard: Some(config.shard),
                cluster_id: Some(cluster_id),
                ..ScanOptions::all()
            };
            (Ledger::new(config), options)
        }
    };

    let mut options = options;
    options.durable_mark = mark::read(&paths.wal).map_err(io_error(&paths.wal))?;
    let Replayed { end, records: replayed, pricing_mismatches } =
        replay_wal(&paths.wal, &mut ledger, &options, key_events)?;
    report.records_replayed = replayed;
    report.pricing_mismatches = pricing_mismatches;

    for path in &end.abandoned {
        fs::remove_file(path).map_err(io_error(path))?;
        report.abandoned_segments.push(path.clone());
    }
    if !end.abandoned.is_empty() {
        segment::sync_dir(&paths.wal).map_err(io_error(&paths.wal))?;
    }

    let position = match &end.newest {
        None => None,
        Some(newest) => {
            let segment_bytes = newest.header.segment_bytes;
            let (repair_from, repair_to, trailer) = match newest.tail {
                Tail::Clean => (newest.end_offset, newest.end_offset, None),
                Tail::Torn { offset, dirty_end, trailer } => {
                    tracing::warn!(
                        path = %newest.path.display(),
                        offset,
                        bytes = dirty_end - offset,
                        closed = trailer.is_some(),
                        "zeroing the torn tail of the wal"
                    );
                    report.torn_tail = Some((newest.path.clone(), offset, dirty_end - offset));
                    (offset, dirty_end, trailer)
                }
            };
            // A torn tail is zeroed, and a file cut short (by damage) is zero-filled back to its
            // full size, so appends land in zero-filled blocks again. Then the records kept of
            // a torn group get the trailer that closes their group (format version 3).
            let zero_to = if newest.file_bytes < segment_bytes { segment_bytes } else { repair_to };
            if zero_to > repair_from || trailer.is_some() {
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&newest.path)
                    .map_err(io_error(&newest.path))?;
                segment::zero_fill(&mut file, repair_from, zero_to)
                    .map_err(io_error(&newest.path))?;
                if let Some((at, trailer)) = trailer {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(&trailer.encode(), at)
                        .and_then(|()| file.sync_data())
                        .map_err(io_error(&newest.path))?;
                }
            }
            Some(WalPosition {
                segment_sequence: newest.sequence,
                segment_version: newest.header.version,
                segment_bytes,
                offset: newest.resume_offset,
                next_lsn: end.last_lsn.next(),
                last_hash: if end.last_lsn == Lsn::ZERO { HASH_ZERO } else { end.last_hash },
            })
        }
    };
    if end.newest.is_none() && ledger.lsn() > Lsn::ZERO {
        unreachable!("scan reports a gap when a snapshot has no wal after it");
    }
    assert_eq!(ledger.lsn(), end.last_lsn.max(report.snapshot_lsn));
    ledger.check_invariants()?;
    Ok(Recovered { ledger, position, report })
}
