//! The indexer thread of a shard: turns the key entries the shard hands out into runs.
//!
//! It receives entries from the WAL writer once their records are durable (`Entries`), in LSN
//! order, and writes a run when it holds `run_entries` of them, or when someone needs the runs
//! to reach an LSN (`Reach`: the shard before its table forgets a generation, the snapshotter
//! before it writes a snapshot). Each run goes to the shard through a mailbox that never
//! blocks: the shard waits on the writer, the writer on this thread, so this thread must not
//! wait on the shard.
//!
//! **Invariant:** a run holds only entries of durable records, and covers the WAL range
//! `(from, through]` right after the previous run: runs on disk are contiguous.
//! **Invariant:** a failed run write is final (`failed`): every later `Reach` is answered with
//! the error, and the shard stops rather than forget keys the disk does not hold.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::run::{self, Run, RunIdentity};
use crate::ids::Lsn;
use crate::ledger::keys::KeyEntry;

/// A reply to `Reach`: `Err` when runs cannot be written any more.
pub type ReachReply = Sender<Result<(), String>>;

/// What the indexer is asked to do.
pub enum IndexerJob {
    /// The entries handed out by the records up to `through`, all durable.
    Entries {
        /// The entries, in LSN order.
        entries: Vec<KeyEntry>,
        /// The last LSN of the records they came from (records without keys included).
        through: Lsn,
    },
    /// Write a run as soon as the entries reach `through`, then reply.
    Reach {
        /// The LSN the runs must reach.
        through: Lsn,
        /// Answered once a run reaching `through` is written (and in the mailbox).
        reply: Option<ReachReply>,
    },
    /// Delete these run files (past the idempotency window).
    Delete(Vec<PathBuf>),
    /// Rename these run files with a `.damaged` suffix (a lookup found them damaged): the next
    /// start rebuilds what they held.
    SetAside(Vec<PathBuf>),
}

/// Where the indexer leaves the runs it wrote, for the shard to install.
#[derive(Debug, Default)]
pub struct Mailbox {
    runs: Mutex<Vec<Run>>,
    /// Set when a run write failed.
    failed: AtomicBool,
}

impl Mailbox {
    /// Takes the runs written since the last call, oldest first.
    pub fn take(&self) -> Vec<Run> {
        std::mem::take(&mut *self.runs.lock().expect("mailbox lock"))
    }

    /// Whether a run write failed (the index cannot advance any more).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Counters the indexer publishes.
#[derive(Debug, Default)]
pub struct IndexerStats {
    /// Runs written.
    pub runs_written: std::sync::atomic::AtomicU64,
    /// Entries written into runs.
    pub entries_written: std::sync::atomic::AtomicU64,
    /// Time spent writing runs (sorting, encoding, fsync), in ns.
    pub write_nanos: std::sync::atomic::AtomicU64,
}

/// The indexer of one shard.
pub struct Indexer {
    /// The index directory.
    pub dir: PathBuf,
    /// What its runs carry.
    pub identity: RunIdentity,
    /// Jobs, from the WAL writer, the shard and the snapshotter.
    pub jobs: Receiver<IndexerJob>,
    /// Where written runs go.
    pub mailbox: Arc<Mailbox>,
    /// Rung (without blocking) when a run is in the mailbox.
    pub doorbell: Sender<()>,
    /// Where the next run starts: the runs on disk reach here.
    pub from: Lsn,
    /// Entries up to this LSN have been received.
    pub through: Lsn,
    /// Entries received and not yet in a run.
    pub buffer: Vec<KeyEntry>,
    /// Entries that make a run on their own.
    pub run_entries: usize,
    /// Counters.
    pub stats: Arc<IndexerStats>,
}

impl Indexer {
    /// The body of the indexer thread.
    pub fn run(mut self) {
        let mut waiting: Vec<(Lsn, Option<ReachReply>)> = Vec::new();
        let mut failed: Option<String> = None;
        while let Ok(job) = self.jobs.recv() {
            match job {
                IndexerJob::Entries { entries, through } => {
                    assert!(
                        entries.iter().all(|entry| entry.lsn <= through || entry.mark),
                        "entries come from the records they follow"
                    );
                    self.buffer.extend(entries);
                    self.through = self.through.max(through);
                }
                IndexerJob::Reach { through, reply } => waiting.push((through, reply)),
                IndexerJob::Delete(paths) => self.delete(&paths),
                IndexerJob::SetAside(paths) => self.set_aside(&paths),
            }
            let due = self.buffer.len() >= self.run_entries
                || waiting
                    .iter()
                    .any(|(through, _)| *through > self.from && *through <= self.through);
            if due
                && failed.is_none()
                && self.through > self.from
                && let Err(error) = self.cut()
            {
                tracing::error!(
                    %error,
                    dir = %self.dir.display(),
                    "cannot write a key index run: the shard will stop before it forgets keys"
                );
                self.mailbox.failed.store(true, Ordering::Release);
                let _ = self.doorbell.try_send(());
                failed = Some(error.to_string());
            }
            waiting.retain(|(through, reply)| {
                let outcome = match &failed {
                    Some(error) => Err(error.clone()),
                    None if *through <= self.from => Ok(()),
                    None => return true,
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
                false
            });
        }
    }

    /// Writes the buffered entries as the run of `(from, through]` and hands it to the shard.
    fn cut(&mut self) -> Result<(), run::RunError> {
        let started = Instant::now();
        let path = run::write_run(&self.dir, self.identity, self.from, self.through, &self.buffer)
            .map_err(|source| run::RunError::Io { path: self.dir.clone(), source })?;
        let opened = Run::open(&path, self.identity)?;
        let entries = self.buffer.len() as u64;
        self.buffer.clear();
        self.from = self.through;
        self.mailbox.runs.lock().expect("mailbox lock").push(opened);
        let _ = self.doorbell.try_send(());
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.runs_written.fetch_add(1, Ordering::Relaxed);
        self.stats.entries_written.fetch_add(entries, Ordering::Relaxed);
        self.stats.write_nanos.fetch_add(elapsed, Ordering::Relaxed);
        Ok(())
    }

    fn set_aside(&self, paths: &[PathBuf]) {
        for path in paths {
            let mut aside = path.clone().into_os_string();
            aside.push(super::DAMAGED_SUFFIX);
            if let Err(error) = std::fs::rename(path, &aside) {
                tracing::error!(%error, path = %path.display(), "cannot set a damaged key index run aside");
            }
        }
        if let Err(error) = crate::wal::segment::sync_dir(&self.dir) {
            tracing::warn!(%error, dir = %self.dir.display(), "cannot sync the key index directory");
        }
    }

    fn delete(&self, paths: &[PathBuf]) {
        for path in paths {
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!(%error, path = %path.display(), "cannot delete an expired key index run");
            }
        }
        if !paths.is_empty()
            && let Err(error) = crate::wal::segment::sync_dir(&self.dir)
        {
            tracing::warn!(%error, dir = %self.dir.display(), "cannot sync the key index directory");
        }
    }
}
