//! `WalWriter`: appends sealed records to the current segment and makes them durable.
//!
//! The shard encodes records (length, LSN, timestamp, kind, payload) into a batch buffer; the
//! writer seals them (commit index, previous hash, CRC), writes each batch with one `pwrite`,
//! and makes a whole commit group durable with one `fdatasync`. A group starts on a sector
//! boundary and ends with a trailer in the last 64 bytes of its last sector (format version 3,
//! docs/wal-format.md), written just before the group's fdatasync: so a later group never
//! shares a sector with an acknowledged one, and recovery can tell a group that was written
//! whole (and then damaged) from one whose write a crash cut short. A group never spans
//! segments: when a batch does not fit in the current segment, the writer first closes and
//! makes durable what it has written, then rolls to the next segment. Recovery relies on this
//! to look for a torn tail in the newest segment only.
//!
//! **Invariant:** a write or fdatasync error is final. The writer returns it and its owner
//! stops the shard (fail-stop); nothing retries an fsync, because after a failed fsync the
//! kernel may have dropped the dirty pages and a retry can report success for lost data.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, FORMAT_VERSION, GroupTrailer, HASH_ZERO, Hash, SegmentHeader};
use super::mark::MarkWriter;
use super::segment;
use crate::ids::{Lsn, ShardId, Timestamp};

/// The identity every segment header of a shard carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIdentity {
    /// The shard.
    pub shard: ShardId,
    /// Shards of the data directory.
    pub shard_count: u16,
    /// The data directory's random id.
    pub cluster_id: u64,
}

/// Where writing resumes, as recovery found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// Sequence of the newest segment.
    pub segment_sequence: u64,
    /// Format version of the newest segment. Writing continues in it only if it is the
    /// current version; an older one is left as it is and a new segment is started.
    pub segment_version: u16,
    /// Size of that segment's file.
    pub segment_bytes: u64,
    /// Offset of the first unwritten byte in it.
    pub offset: u64,
    /// LSN the next record gets.
    pub next_lsn: Lsn,
    /// Hash of the last record (the next record's `prev_hash`).
    pub last_hash: Hash,
}

/// Injected I/O failures, for tests of fail-stop behaviour.
pub trait IoFaults: Send + Sync + std::fmt::Debug {
    /// Called before each data write; an error is returned as the write's error.
    fn before_write(&self) -> io::Result<()>;
    /// Called before each fdatasync; an error is returned as the sync's error.
    fn before_sync(&self) -> io::Result<()>;
}

/// Counters of the writer's work, for stats and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterCounters {
    /// fdatasync calls on segments.
    pub syncs: u64,
    /// Bytes of records written.
    pub bytes: u64,
    /// Segments rolled to.
    pub rolls: u64,
}

/// Appends to one shard's WAL.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    identity: WalIdentity,
    /// Size of segments created from now on.
    segment_bytes: u64,
    file: File,
    sequence: u64,
    /// Size of the current segment file.
    file_bytes: u64,
    /// First unwritten byte of the current segment.
    offset: u64,
    next_lsn: Lsn,
    last_hash: Hash,
    /// First LSN and start offset of the commit group being written (not yet closed and
    /// durable); `None` when all written records are durable.
    group: Option<(Lsn, u64)>,
    faults: Option<Arc<dyn IoFaults>>,
    counters: WriterCounters,
    /// Keeps the next segment zero-filled ahead of time.
    spare: segment::SpareMaker,
    /// The durable mark; `None` after it failed once (it is redundancy: the WAL goes on).
    mark: Option<MarkWriter>,
}

impl WalWriter {
    /// Opens the writer at `position`, or starts a fresh WAL (segment 1, LSN 1) when there is
    /// none.
    pub fn open(
        dir: &Path,
        identity: WalIdentity,
        segment_bytes: u64,
        position: Option<WalPosition>,
        now: Timestamp,
        faults: Option<Arc<dyn IoFaults>>,
    ) -> io::Result<WalWriter> {
        let spare_name = format!("ledger-spare-{}", identity.shard.index());
        let mark = Some(MarkWriter::open(dir, identity.shard, identity.cluster_id)?);
        match position {
            Some(position) => {
                let path = dir.join(segment::segment_file_name(position.segment_sequence));
                let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
                let mut writer = WalWriter {
                    dir: dir.to_path_buf(),
                    identity,
                    segment_bytes,
                    file,
                    sequence: position.segment_sequence,
                    file_bytes: position.segment_bytes,
                    offset: position.offset,
                    next_lsn: position.next_lsn,
                    last_hash: position.last_hash,
                    group: None,
                    faults,
                    counters: WriterCounters::default(),
                    spare: segment::SpareMaker::start(dir, segment_bytes, spare_name)?,
                    mark,
                };
                if position.segment_version != FORMAT_VERSION {
                    // A segment of an older format keeps its own rules to its end.
                    writer.roll(now)?;
                }
                Ok(writer)
            }
            None => {
                let (file, file_bytes) =
                    Self::start_segment(dir, identity, segment_bytes, 1, Lsn(1), HASH_ZERO, now)?;
                Ok(WalWriter {
                    dir: dir.to_path_buf(),
                    identity,
                    segment_bytes,
                    file,
                    sequence: 1,
                    file_bytes,
                    offset: format::records_offset(FORMAT_VERSION),
                    next_lsn: Lsn(1),
                    last_hash: HASH_ZERO,
                    group: None,
                    faults,
                    counters: WriterCounters { rolls: 1, ..WriterCounters::default() },
                    spare: segment::SpareMaker::start(dir, segment_bytes, spare_name)?,
                    mark,
                })
            }
        }
    }

    /// Installs segment `sequence` and makes its header durable before any record goes in, so a
    /// segment's header is either all zeros (the roll never finished) or complete and valid.
    fn start_segment(
        dir: &Path,
        identity: WalIdentity,
        segment_bytes: u64,
        sequence: u64,
        first_lsn: Lsn,
        prev_hash: Hash,
        now: Timestamp,
    ) -> io::Result<(File, u64)> {
        let file = segment::install_segment(dir, sequence, segment_bytes)?;
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            shard: identity.shard,
            shard_count: identity.shard_count,
            cluster_id: identity.cluster_id,
            sequence,
            first_lsn,
            created: now,
            segment_bytes,
            prev_hash,
        };
        file.write_all_at(&header.encode(), 0)?;
        file.sync_data()?;
        Ok((file, segment_bytes))
    }

    /// LSN the next record must carry.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Hash of the last record written.
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    /// Sequence of the current segment.
    pub fn segment_sequence(&self) -> u64 {
        self.sequence
    }

    /// Work done so far.
    pub fn counters(&self) -> WriterCounters {
        self.counters
    }

    /// Seals the records in `batch` (which must start at `next_lsn` and hold whole records)
    /// and writes them. They are durable after the next `sync`.
    pub fn append(&mut self, batch: &mut [u8], now: Timestamp) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let len = u64::try_from(batch.len()).expect("batch fits in u64");
        assert!(
            format::group_end(format::records_offset(FORMAT_VERSION) + len) <= self.segment_bytes,
            "a batch must fit in an empty segment (Limits::validate)"
        );
        if format::group_end(self.offset + len) > self.file_bytes {
            self.sync()?;
            self.roll(now)?;
        }
        let (group_first, _) = *self.group.get_or_insert((self.next_lsn, self.offset));
        let mut position = 0;
        while position < batch.len() {
            let record_len = format::record_len(&batch[position..]) as usize;
            let record = &mut batch[position..position + record_len];
            let lsn = format::record_lsn(record);
            assert_eq!(lsn, self.next_lsn, "records are appended in lsn order");
            let commit_index = u32::try_from(lsn.0 - group_first.0).expect("groups are bounded");
            self.last_hash = format::seal(record, &self.last_hash, commit_index);
            self.next_lsn = lsn.next();
            position += record_len;
        }
        if let Some(faults) = &self.faults {
            faults.before_write()?;
        }
        self.file.write_all_at(batch, self.offset)?;
        self.offset += len;
        self.counters.bytes += len;
        Ok(())
    }

    /// Closes the commit group with its trailer and makes every record written so far durable
    /// (one fdatasync), if any is not yet.
    pub fn sync(&mut self) -> io::Result<()> {
        let Some((first_lsn, group_start)) = self.group else {
            return Ok(());
        };
        let trailer = GroupTrailer {
            first_lsn,
            last_lsn: Lsn(self.next_lsn.0 - 1),
            group_start,
            last_hash: self.last_hash,
        };
        // The padding before the trailer is already zero: segments are zero-filled.
        if let Some(faults) = &self.faults {
            faults.before_write()?;
        }
        self.file.write_all_at(&trailer.encode(), format::trailer_offset(self.offset))?;
        self.offset = format::group_end(self.offset);
        if let Some(faults) = &self.faults {
            faults.before_sync()?;
        }
        self.file.sync_data()?;
        self.group = None;
        self.counters.syncs += 1;
        Ok(())
    }

    /// Writes the durable mark for the last record, which must be durable (no group open).
    /// A failure is logged and ends marking; the WAL itself is not affected.
    pub fn mark_durable(&mut self, now: Timestamp) {
        assert!(self.group.is_none(), "mark only what is durable");
        let Some(mark) = &mut self.mark else { return };
        let last = Lsn(self.next_lsn.0 - 1);
        if let Err(error) = mark.write(last, self.last_hash, now) {
            tracing::error!(
                %error,
                path = %mark.path().display(),
                "cannot write the durable mark; continuing without it"
            );
            self.mark = None;
        }
    }

    fn roll(&mut self, now: Timestamp) -> io::Result<()> {
        debug_assert!(self.group.is_none(), "roll only with everything durable");
        let sequence = self.sequence + 1;
        let (file, file_bytes) = Self::start_segment(
            &self.dir,
            self.identity,
            self.segment_bytes,
            sequence,
            self.next_lsn,
            self.last_hash,
            now,
        )?;
        self.file = file;
        self.file_bytes = file_bytes;
        self.sequence = sequence;
        self.offset = format::records_offset(FORMAT_VERSION);
        self.counters.rolls += 1;
        self.spare.request();
        Ok(())
    }
}
