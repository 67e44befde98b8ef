//! The durable mark: a small file beside a shard's segments that remembers the newest record
//! known to be durable, with its hash. Spec: docs/wal-format.md, "The durable mark".
//!
//! Why: a WAL whose newest commit groups were cut off exactly at a group boundary, or zeroed
//! whole, looks like a WAL that simply ended there; and the newest record rewritten with a
//! fixed checksum and trailer looks sound. Nothing inside the WAL can tell, because nothing was
//! written after those groups. The mark, written after a group's fdatasync at most every
//! `MARK_INTERVAL` and at shutdown, is evidence from outside: recovery refuses a WAL that ends
//! before the mark's LSN, or whose record at that LSN has another hash.
//!
//! The file has two 512-byte slots, written alternately (each write is one sector, which a
//! device writes whole or not at all), so a crash while writing one leaves the other. A reader
//! takes the valid slot with the higher write count. The mark is redundancy, not data: a mark
//! file that is missing or whose slots are both damaged is ignored, with a warning.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::Hash;
use crate::codec::fixed::{field, put};
use crate::ids::{Lsn, ShardId, Timestamp};

/// The mark's file name in a shard's WAL directory.
pub const MARK_FILE: &str = "durable.mark";
/// How often, at most, the WAL writer rewrites the mark after a commit.
pub const MARK_INTERVAL: Duration = Duration::from_millis(100);

const MAGIC: [u8; 8] = *b"LDGRMARK";
const VERSION: u16 = 1;
const SLOT_BYTES: u64 = 512;
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const SHARD_OFFSET: usize = VERSION_OFFSET + 2;
const RESERVED_A_OFFSET: usize = SHARD_OFFSET + 2;
const CLUSTER_OFFSET: usize = RESERVED_A_OFFSET + 4;
const WRITES_OFFSET: usize = CLUSTER_OFFSET + 8;
const LSN_OFFSET: usize = WRITES_OFFSET + 8;
const HASH_OFFSET: usize = LSN_OFFSET + 8;
const WRITTEN_OFFSET: usize = HASH_OFFSET + 32;
const RESERVED_B_OFFSET: usize = WRITTEN_OFFSET + 8;
const CRC_OFFSET: usize = 124;
/// Bytes of a slot's content (the rest of its sector is zero).
const SLOT_CONTENT_BYTES: usize = 128;

const _: () = assert!(RESERVED_B_OFFSET == 80);
const _: () = assert!(CRC_OFFSET + 4 == SLOT_CONTENT_BYTES);

/// What a mark says: record `lsn`, whose hash is `hash`, was durable at `written`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableMark {
    /// The shard.
    pub shard: ShardId,
    /// The data directory's id.
    pub cluster_id: u64,
    /// How many marks were written before this one (picks the newer slot).
    pub writes: u64,
    /// A record known durable when the mark was written.
    pub lsn: Lsn,
    /// That record's hash.
    pub hash: Hash,
    /// When the mark was written (ns since the Unix epoch).
    pub written: Timestamp,
}

impl DurableMark {
    fn encode(&self) -> [u8; SLOT_CONTENT_BYTES] {
        let mut bytes = [0u8; SLOT_CONTENT_BYTES];
        put(&mut bytes, MAGIC_OFFSET, &MAGIC);
        put(&mut bytes, VERSION_OFFSET, &VERSION.to_le_bytes());
        put(&mut bytes, SHARD_OFFSET, &self.shard.index().to_le_bytes());
        put(&mut bytes, CLUSTER_OFFSET, &self.cluster_id.to_le_bytes());
        put(&mut bytes, WRITES_OFFSET, &self.writes.to_le_bytes());
        put(&mut bytes, LSN_OFFSET, &self.lsn.0.to_le_bytes());
        put(&mut bytes, HASH_OFFSET, &self.hash);
        put(&mut bytes, WRITTEN_OFFSET, &self.written.0.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        put(&mut bytes, CRC_OFFSET, &crc.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<DurableMark> {
        let bytes = bytes.get(..SLOT_CONTENT_BYTES)?;
        let crc = u32::from_le_bytes(field(bytes, CRC_OFFSET));
        if bytes[..8] != MAGIC
            || crc32fast::hash(&bytes[..CRC_OFFSET]) != crc
            || u16::from_le_bytes(field(bytes, VERSION_OFFSET)) != VERSION
        {
            return None;
        }
        Some(DurableMark {
            shard: ShardId::new(u16::from_le_bytes(field(bytes, SHARD_OFFSET)))?,
            cluster_id: u64::from_le_bytes(field(bytes, CLUSTER_OFFSET)),
            writes: u64::from_le_bytes(field(bytes, WRITES_OFFSET)),
            lsn: Lsn(u64::from_le_bytes(field(bytes, LSN_OFFSET))),
            hash: field(bytes, HASH_OFFSET),
            written: Timestamp(u64::from_le_bytes(field(bytes, WRITTEN_OFFSET))),
        })
    }
}

/// Reads the mark of the WAL in `wal_dir`: `Ok(None)` when there is none (a directory from
/// before marks, or a mark file whose slots are both damaged, which is logged).
pub fn read(wal_dir: &Path) -> io::Result<Option<DurableMark>> {
    let path = wal_dir.join(MARK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    // Two slots at most, whatever the file's size.
    let mut bytes = Vec::with_capacity(2 * SLOT_BYTES as usize);
    io::Read::read_to_end(&mut io::Read::take(file, 2 * SLOT_BYTES), &mut bytes)?;
    let slots = [0, SLOT_BYTES as usize]
        .map(|at| bytes.get(at..).and_then(DurableMark::decode))
        .into_iter()
        .flatten();
    let newest = slots.max_by_key(|mark| mark.writes);
    if newest.is_none() && !bytes.is_empty() {
        tracing::warn!(path = %path.display(), "the durable mark is damaged; ignored");
    }
    Ok(newest)
}

/// Writes marks for one shard; owned by its WAL writer.
#[derive(Debug)]
pub struct MarkWriter {
    file: File,
    path: PathBuf,
    shard: ShardId,
    cluster_id: u64,
    writes: u64,
    /// The LSN of the last mark written (nothing is rewritten for the same LSN).
    last_lsn: Lsn,
}

impl MarkWriter {
    /// Opens (creating) the mark file of `wal_dir`, continuing its write count.
    pub fn open(wal_dir: &Path, shard: ShardId, cluster_id: u64) -> io::Result<MarkWriter> {
        let previous = read(wal_dir)?;
        let path = wal_dir.join(MARK_FILE);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        Ok(MarkWriter {
            file,
            path,
            shard,
            cluster_id,
            writes: previous.map_or(0, |mark| mark.writes + 1),
            last_lsn: previous.map_or(Lsn::ZERO, |mark| mark.lsn),
        })
    }

    /// Records that `lsn`, whose hash is `hash`, is durable: writes the older slot and makes it
    /// durable. Call only after the fdatasync that made `lsn` durable returned.
    pub fn write(&mut self, lsn: Lsn, hash: Hash, now: Timestamp) -> io::Result<()> {
        if lsn == Lsn::ZERO || lsn == self.last_lsn {
            return Ok(());
        }
        let mark = DurableMark {
            shard: self.shard,
            cluster_id: self.cluster_id,
            writes: self.writes,
            lsn,
            hash,
            written: now,
        };
        self.file.write_all_at(&mark.encode(), (self.writes % 2) * SLOT_BYTES)?;
        self.file.sync_data()?;
        self.writes += 1;
        self.last_lsn = lsn;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_valid_slot_wins_and_damage_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardId::new(2).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut writer = MarkWriter::open(dir.path(), shard, 7).unwrap();
        writer.write(Lsn(10), [1; 32], Timestamp(5)).unwrap();
        writer.write(Lsn(12), [2; 32], Timestamp(6)).unwrap();
        let mark = read(dir.path()).unwrap().unwrap();
        assert_eq!((mark.lsn, mark.hash, mark.writes, mark.shard), (Lsn(12), [2; 32], 1, shard));
        // Damage the newer slot: the older one is read.
        let path = dir.path().join(MARK_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_BYTES as usize + 40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().lsn, Lsn(10));
        // Both damaged: no mark.
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        // A file grown past its two slots (damage) is read no further than them.
        let mut grown = std::fs::read(&path).unwrap();
        grown[40] ^= 1;
        grown.resize(4 << 20, 0xAB);
        std::fs::write(&path, &grown).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().lsn, Lsn(10));
        // A reopened writer continues the count.
        std::fs::write(&path, []).unwrap();
        let mut writer = MarkWriter::open(dir.path(), shard, 7).unwrap();
        writer.write(Lsn(20), [3; 32], Timestamp(9)).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().lsn, Lsn(20));
    }
}
