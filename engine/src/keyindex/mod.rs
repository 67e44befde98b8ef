//! The key index: the idempotency keys a shard's table in memory has forgotten, kept on disk
//! for the whole idempotency window. Spec: docs/key-index-format.md.
//!
//! - `filter`: the split block Bloom filter of a run;
//! - `run`: run files (sorted entries in checksummed blocks, fences, filter): write, open, look
//!   up, verify;
//! - `indexer`: the thread that turns the entries a shard hands out into runs;
//! - `KeyIndex` (here): the runs a shard consults, owned by the shard thread.
//!
//! How it fits (docs/design-decisions.md, "Idempotency for the whole window"): the ledger hands
//! out every entry its idempotency table takes (`Ledger::drain_key_events`); the WAL writer
//! passes them on to the indexer once their records are durable; the indexer writes a run when
//! it holds a generation's worth, or when asked to reach an LSN. The shard looks a key up here
//! only when its table has no entry for it at all, and only touches the disk when a run's
//! filter lets the key through: a fresh key costs one filter block (a cache line) per run.
//!
//! **Invariant:** before the table forgets a generation, the runs this index holds reach the
//! newest LSN of that generation (the shard waits for the indexer if they do not): no key
//! inside its window is in neither place.

pub mod filter;
pub mod indexer;
pub mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use self::run::{Run, RunError, RunIdentity, RunLookup, key_hash};
use crate::ids::{IdempotencyKey, Lsn, TerminalId, Timestamp};
use crate::ledger::keys::KeyEntry;

/// The directory of a shard's key index, under its root.
pub const KEYS_DIR: &str = "keys";
/// The suffix a damaged run is renamed with (kept as evidence until the index is rebuilt).
pub const DAMAGED_SUFFIX: &str = ".damaged";

/// What looking a key up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No entry of the key inside its window.
    Absent,
    /// The newest entry of the key, inside its window.
    Found(KeyEntry),
    /// A block that may hold the key cannot be read or fails its checksum: whether the key
    /// was used cannot be told.
    Unreadable(String),
}

/// Counters of the index, for `ShardStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyIndexCounters {
    /// Lookups (keys the table in memory had no entry for).
    pub lookups: u64,
    /// Lookups that read a block (a filter let the key through).
    pub block_reads: u64,
    /// Lookups that found the key inside its window (retries of forgotten writes).
    pub hits: u64,
    /// Lookups that found the key only past its window (a key used again after it).
    pub expired_hits: u64,
    /// Entries deleted with runs past the window.
    pub keys_expired: u64,
    /// Blocks that could not be read or were damaged.
    pub unreadable: u64,
}

/// The runs of one shard, oldest first, and the refund marks not yet in a durable run.
#[derive(Debug)]
pub struct KeyIndex {
    dir: PathBuf,
    identity: RunIdentity,
    /// Runs, by `from`; each starts where the one before ends, but where a run was lost and
    /// could not be rebuilt (`KeyIndexReport::lost`).
    runs: Vec<Run>,
    /// Where the first run starts: entries up to here were never indexed (the index was
    /// created later, or expired runs were deleted).
    start: Lsn,
    /// Refund marks handed to the indexer and not yet in an installed run, by key, with the LSN
    /// a run must reach to hold them. Rare: a cross-shard transfer refused by its destination.
    pending_marks: HashMap<(TerminalId, IdempotencyKey), (KeyEntry, Lsn)>,
    /// Runs a lookup found damaged, to be set aside (renamed) so that the next start rebuilds
    /// them; they stay open, and lookups that need them keep being refused until then.
    damaged: Vec<PathBuf>,
    /// How long keys are remembered (`u64::MAX`: as long as the WAL is kept).
    retention_nanos: u64,
    counters: KeyIndexCounters,
}

/// What opening an index found.
#[derive(Debug)]
pub struct Opened {
    /// The index, with every sound run.
    pub index: KeyIndex,
    /// Run files that could not be used, with the reason (their ranges are missing).
    pub damaged: Vec<(PathBuf, String)>,
    /// Ranges of LSNs between the runs that no run covers (`(after, up to)`).
    pub gaps: Vec<(Lsn, Lsn)>,
    /// Runs set aside earlier (`.damaged`), not rebuilt yet.
    pub set_aside: Vec<PathBuf>,
    /// Whether the directory had to be created (a data directory from before the index).
    pub created: bool,
}

impl KeyIndex {
    /// Opens the index in `dir` (creating it), keeping the runs that are sound. A damaged run
    /// (or one overlapping the run before it) is reported, not used; the ranges no run covers
    /// are reported as gaps.
    pub fn open(
        dir: &Path,
        identity: RunIdentity,
        retention_nanos: u64,
    ) -> Result<Opened, RunError> {
        let io = |source| RunError::Io { path: dir.to_path_buf(), source };
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut listed = Vec::new();
        let mut set_aside = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path()).map_err(io)?;
            } else if name.ends_with(DAMAGED_SUFFIX) {
                set_aside.push(entry.path());
            } else if let Some(range) = run::parse_run_file_name(&name) {
                listed.push((range, entry.path()));
            }
        }
        listed.sort_unstable_by_key(|(range, _)| *range);
        let mut runs: Vec<Run> = Vec::new();
        let mut damaged = Vec::new();
        let mut gaps = Vec::new();
        for (_, path) in listed {
            match Run::open(&path, identity) {
                Ok(run) => {
                    let before = runs.last().map(|last| last.header().through);
                    match before {
                        Some(end) if run.header().from < end => damaged.push((
                            path,
                            format!(
                                "starts at lsn {} inside the run before it, which ends at lsn {end}",
                                run.header().from
                            ),
                        )),
                        Some(end) if run.header().from > end => {
                            gaps.push((end, run.header().from));
                            runs.push(run);
                        }
                        _ => runs.push(run),
                    }
                }
                Err(error) => damaged.push((path, error.to_string())),
            }
        }
        let start = runs.first().map_or(Lsn::ZERO, |run| run.header().from);
        let index = KeyIndex {
            dir: dir.to_path_buf(),
            identity,
            runs,
            start,
            pending_marks: HashMap::new(),
            damaged: Vec::new(),
            retention_nanos,
            counters: KeyIndexCounters::default(),
        };
        Ok(Opened { index, damaged, set_aside, gaps, created })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identity its runs carry.
    pub fn identity(&self) -> RunIdentity {
        self.identity
    }

    /// The LSN the installed runs reach (`start` when there are none).
    pub fn durable_through(&self) -> Lsn {
        self.runs.last().map_or(self.start, |run| run.header().through)
    }

    /// Where the runs start.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Sets where the (empty) index starts: entries up to `lsn` are not indexed.
    pub fn set_start(&mut self, lsn: Lsn) {
        assert!(self.runs.is_empty(), "the start of an index with runs is its first run's");
        self.start = lsn;
    }

    /// Installs a run the indexer wrote; it must continue the runs installed.
    pub fn install(&mut self, run: Run) {
        assert_eq!(run.header().from, self.durable_through(), "runs are contiguous");
        let through = run.header().through;
        self.runs.push(run);
        self.pending_marks.retain(|_, (_, needs)| *needs > through);
    }

    /// Remembers a refund mark until a run holds it (`through`: the LSN of the record that
    /// made it).
    pub fn note_mark(&mut self, mark: KeyEntry, through: Lsn) {
        self.pending_marks.insert((mark.terminal, mark.key), (mark, through));
    }

    /// Starts loading the filter blocks a lookup of `(terminal, key)` reads.
    pub fn prefetch(&self, terminal: TerminalId, key: IdempotencyKey) {
        if self.runs.is_empty() {
            return;
        }
        let hash = key_hash(terminal, key);
        for run in &self.runs {
            run.prefetch(hash);
        }
    }

    /// The newest entry of `(terminal, key)` in the index, if it is inside its window at `now`.
    pub fn lookup(&mut self, terminal: TerminalId, key: IdempotencyKey, now: Timestamp) -> Lookup {
        self.counters.lookups += 1;
        // Almost always empty: marks are refunds of refused cross-shard transfers.
        let pending = if self.pending_marks.is_empty() {
            None
        } else {
            self.pending_marks.get(&(terminal, key))
        };
        let found = match pending {
            Some((mark, _)) => Some(*mark),
            None => match self.newest_in_runs(terminal, key) {
                Ok(found) => found,
                Err(error) => {
                    self.counters.unreadable += 1;
                    return Lookup::Unreadable(error.to_string());
                }
            },
        };
        match found {
            Some(entry) if entry.live_at(now, self.retention_nanos) => {
                self.counters.hits += 1;
                Lookup::Found(entry)
            }
            Some(_) => {
                self.counters.expired_hits += 1;
                Lookup::Absent
            }
            None => Lookup::Absent,
        }
    }

    /// Runs found damaged since the last call, to be set aside.
    pub fn take_damaged(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.damaged)
    }

    fn newest_in_runs(
        &mut self,
        terminal: TerminalId,
        key: IdempotencyKey,
    ) -> Result<Option<KeyEntry>, RunError> {
        let hash = key_hash(terminal, key);
        for run in self.runs.iter().rev() {
            let found = run.lookup(hash, terminal, key).inspect_err(|_| {
                if !self.damaged.contains(&run.path().to_path_buf()) {
                    self.damaged.push(run.path().to_path_buf());
                }
            })?;
            match found {
                RunLookup::Filtered => {}
                RunLookup::Absent => self.counters.block_reads += 1,
                RunLookup::Found(entry) => {
                    self.counters.block_reads += 1;
                    return Ok(Some(entry));
                }
            }
        }
        Ok(None)
    }

    /// Removes the oldest runs whose every entry is past its window at `now`, or (with the
    /// window "as long as the WAL is kept") whose records are all older than `wal_first`, the
    /// first LSN the WAL still holds; returns their files, for the indexer to delete.
    pub fn expire(&mut self, now: Timestamp, wal_first: Lsn) -> Vec<PathBuf> {
        let mut expired = Vec::new();
        // The newest run stays, so that `durable_through` keeps its place.
        while self.runs.len() > 1 {
            let header = self.runs[0].header();
            let past = if self.retention_nanos == u64::MAX {
                header.through < wal_first
            } else {
                header.newest_inserted.plus_nanos(self.retention_nanos) <= now
            };
            if !past {
                break;
            }
            let run = self.runs.remove(0);
            self.counters.keys_expired += run.header().entries;
            self.start = run.header().through;
            expired.push(run.path().to_path_buf());
        }
        expired
    }

    /// Runs, entries on disk, and bytes kept in memory (filters and fences).
    pub fn size(&self) -> (usize, u64, usize) {
        let entries = self.runs.iter().map(|run| run.header().entries).sum();
        let memory = self.runs.iter().map(Run::memory_bytes).sum();
        (self.runs.len(), entries, memory)
    }

    /// The counters.
    pub fn counters(&self) -> KeyIndexCounters {
        self.counters
    }

    /// The installed runs, oldest first.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// What the key index found and did at start-up, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIndexReport {
    /// The index directory was created (a new data directory, or one from before the index).
    pub created: bool,
    /// Run files that could not be used, with the reason; renamed with a `.damaged` suffix.
    pub damaged: Vec<(PathBuf, String)>,
    /// The runs were rebuilt from the WAL, up to this LSN.
    pub rebuilt: Option<Lsn>,
    /// Keys that neither the runs nor the table hold, and that could not be rebuilt (the WAL no
    /// longer starts at LSN 1): the ranges `(after, up to]` of LSNs whose keys are lost.
    pub lost: Vec<(Lsn, Lsn)>,
    /// Runs in use after start-up.
    pub runs: usize,
}

/// The key index of a shard ready to serve, and what its indexer starts with.
#[derive(Debug)]
pub struct Prepared {
    /// The index, owned by the shard thread.
    pub index: KeyIndex,
    /// Entries not yet in a run (the indexer's first buffer).
    pub seed: Vec<KeyEntry>,
    /// What happened.
    pub report: KeyIndexReport,
}

/// Readies the key index of a recovered shard.
///
/// The runs must reach every key the table has forgotten (`forgotten_through`). If a run is
/// damaged or missing, the runs are rebuilt from the WAL by `rebuild` (a replay from LSN 1,
/// which fails when retention deleted the first segments; the keys are then reported lost,
/// not silently forgotten). What the runs do not reach is seeded from the recovered table,
/// which holds every key after the runs' end: the table forgets a generation only once the
/// runs reach it. `marks` are the refund marks replay handed out after the runs' end.
pub fn prepare(
    opened: Opened,
    ledger: &crate::ledger::Ledger,
    marks: Vec<KeyEntry>,
    rebuild: impl FnOnce(&Path) -> Result<Lsn, String>,
) -> Result<Prepared, RunError> {
    let Opened { mut index, damaged, gaps, set_aside, created } = opened;
    let mut report = KeyIndexReport { created, ..KeyIndexReport::default() };
    let forgotten = ledger.idempotency_forgotten_through();
    if created {
        // Keys forgotten before the index existed were never kept: the index starts here.
        index.set_start(forgotten);
    }
    for (path, reason) in damaged {
        tracing::error!(path = %path.display(), %reason, "key index run unusable; set aside");
        let mut aside = path.clone().into_os_string();
        aside.push(DAMAGED_SUFFIX);
        std::fs::rename(&path, &aside)
            .map_err(|source| RunError::Io { path: path.clone(), source })?;
        report.damaged.push((path, reason));
    }
    let end_gap =
        (index.durable_through() < forgotten).then(|| (index.durable_through(), forgotten));
    let earlier = set_aside.iter().map(|path| (path.clone(), "set aside earlier".to_string()));
    report.damaged.extend(earlier);
    if end_gap.is_some() || !report.damaged.is_empty() || !gaps.is_empty() {
        let from = index.durable_through();
        match rebuild(&index.dir) {
            Ok(through) => {
                let reopened = KeyIndex::open(&index.dir, index.identity, index.retention_nanos)?;
                if let Some((path, reason)) = reopened.damaged.into_iter().next() {
                    return Err(RunError::Damaged { path, reason });
                }
                index = reopened.index;
                report.rebuilt = Some(through);
                tracing::warn!(
                    from = from.0,
                    through = through.0,
                    "key index rebuilt from the wal"
                );
            }
            Err(reason) => {
                let mut lost = gaps;
                lost.extend(end_gap);
                lost.extend(report.damaged.iter().filter_map(|(path, _)| {
                    run::parse_run_file_name(&path.file_name()?.to_string_lossy())
                }));
                tracing::error!(
                    ?lost,
                    %reason,
                    after = from.0,
                    "keys of these lsn ranges are lost from the key index and cannot be rebuilt: \
                     a retry of one of them would post again"
                );
                report.lost = lost;
            }
        }
    }
    let through = index.durable_through();
    let mut seed: Vec<KeyEntry> = ledger
        .idempotency_entries()
        .filter(|entry| entry.lsn > through || entry.refused.is_some())
        .map(|entry| KeyEntry { mark: entry.refused.is_some(), ..entry })
        .collect();
    seed.extend(marks);
    report.runs = index.runs.len();
    Ok(Prepared { index, seed, report })
}

/// Rebuilds the runs of a shard from its whole WAL: replays it from LSN 1 into a new ledger,
/// collecting every key entry, and writes them as runs of `run_entries` (deleting the runs
/// that were there). Returns the LSN the runs reach; fails if the WAL does not start at LSN 1.
pub fn rebuild_from_wal(
    dir: &Path,
    paths: &crate::recovery::ShardPaths,
    config: crate::ledger::LedgerConfig,
    identity: RunIdentity,
    run_entries: usize,
) -> Result<Lsn, String> {
    let old_runs = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|ext| ext == "run" || ext == "damaged") {
                paths.push(path);
            }
        }
        Ok(paths)
    };
    // Runs are rewritten under their own names; a leftover of the same range is replaced.
    let replaced = old_runs(dir)?;
    for path in replaced.iter().filter(|path| path.extension().is_some_and(|ext| ext == "run")) {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut ledger = crate::ledger::Ledger::new(config);
    let options = crate::wal::reader::ScanOptions {
        shard: Some(identity.shard),
        cluster_id: Some(identity.cluster_id),
        ..crate::wal::reader::ScanOptions::all()
    };
    let mut buffer: Vec<KeyEntry> = Vec::new();
    let (mut from, mut last) = (Lsn::ZERO, Lsn::ZERO);
    let mut failed: Option<String> = None;
    let mut sink = |entry: KeyEntry, lsn: Lsn| {
        if lsn > last && buffer.len() >= run_entries && failed.is_none() {
            match run::write_run(dir, identity, from, last, &buffer) {
                Ok(_) => from = last,
                Err(error) => failed = Some(error.to_string()),
            }
            buffer.clear();
        }
        last = last.max(lsn);
        buffer.push(entry);
    };
    let crate::recovery::Replayed { end, .. } =
        crate::recovery::replay_wal(&paths.wal, &mut ledger, &options, Some(&mut sink))
            .map_err(|error| error.to_string())?;
    if ledger.lsn() > Lsn::ZERO && from < end.last_lsn {
        run::write_run(dir, identity, from, end.last_lsn, &buffer).map_err(|e| e.to_string())?;
    }
    if let Some(error) = failed {
        return Err(error);
    }
    // Rebuilt: the runs set aside are no longer needed as evidence.
    for path in replaced.iter().filter(|path| path.extension().is_some_and(|ext| ext == "damaged"))
    {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let first = crate::wal::segment::list_segments(&paths.wal).map_err(|e| e.to_string())?;
    if first.is_empty() && end.last_lsn > Lsn::ZERO {
        return Err("the wal has no segments".to_string());
    }
    Ok(end.last_lsn)
}
