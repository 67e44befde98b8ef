//! Spec: docs/snapshot-format.md. Snapshot files: a checksummed header, then the ledger state
//! (`Ledger::encode_state`), written crash-safely and found again at start-up.
//!
//! A snapshot of LSN L holds the state after applying records 1..=L and the hash of record L,
//! which the WAL's record L+1 must name as its predecessor: recovery checks that the snapshot
//! and the WAL belong to the same history. A snapshot is written to `<name>.tmp`, fsync'd,
//! renamed into place, and the directory fsync'd, so a snapshot name always points at a
//! complete file; a damaged snapshot is skipped in favour of an older one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::DecodeError;
use crate::codec::fixed::{field, put};
use crate::ids::{Lsn, ShardId, Timestamp};
use crate::ledger::{Ledger, LedgerConfig, StateCapture};
use crate::wal::format::Hash;
use crate::wal::segment::sync_dir;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LDGRSNAP";
/// Version of the snapshot format. Version history: docs/snapshot-format.md.
pub const SNAPSHOT_VERSION: u16 = 9;

/// The oldest snapshot version `load` still reads (version 1 has no history section).
pub const SNAPSHOT_VERSION_MIN: u16 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const SHARD_OFFSET: usize = VERSION_OFFSET + 2;
const SHARD_COUNT_OFFSET: usize = SHARD_OFFSET + 2;
const RESERVED_A_OFFSET: usize = SHARD_COUNT_OFFSET + 2;
const CLUSTER_OFFSET: usize = RESERVED_A_OFFSET + 2;
const LSN_OFFSET: usize = CLUSTER_OFFSET + 8;
const CREATED_OFFSET: usize = LSN_OFFSET + 8;
const BODY_BYTES_OFFSET: usize = CREATED_OFFSET + 8;
const BODY_CRC_OFFSET: usize = BODY_BYTES_OFFSET + 8;
const RESERVED_B_OFFSET: usize = BODY_CRC_OFFSET + 4;
const LAST_HASH_OFFSET: usize = RESERVED_B_OFFSET + 4;
const HEADER_CRC_OFFSET: usize = 124;
/// Bytes of the snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 128;

const _: () = assert!(LAST_HASH_OFFSET + 32 == 88);
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SNAPSHOT_HEADER_BYTES);

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An I/O error on a snapshot file or directory.
    #[error("snapshot i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("invalid snapshot {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The header fields of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The format version the file was written with (`encode` always writes the current one).
    pub version: u16,
    /// The shard.
    pub shard: ShardId,
    /// Shards of the data directory.
    pub shard_count: u16,
    /// The data directory's id.
    pub cluster_id: u64,
    /// The last LSN the state includes.
    pub lsn: Lsn,
    /// When the snapshot was taken (the timestamp of record `lsn`).
    pub created: Timestamp,
    /// Bytes of the body.
    pub body_bytes: u64,
    /// CRC-32 of the body.
    pub body_crc: u32,
    /// Hash of record `lsn` (zeros for LSN 0).
    pub last_hash: Hash,
}

impl SnapshotHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut bytes = [0u8; SNAPSHOT_HEADER_BYTES];
        put(&mut bytes, MAGIC_OFFSET, &SNAPSHOT_MAGIC);
        assert_eq!(self.version, SNAPSHOT_VERSION, "snapshots are written in the current version");
        put(&mut bytes, VERSION_OFFSET, &SNAPSHOT_VERSION.to_le_bytes());
        put(&mut bytes, SHARD_OFFSET, &self.shard.index().to_le_bytes());
        put(&mut bytes, SHARD_COUNT_OFFSET, &self.shard_count.to_le_bytes());
        put(&mut bytes, CLUSTER_OFFSET, &self.cluster_id.to_le_bytes());
        put(&mut bytes, LSN_OFFSET, &self.lsn.0.to_le_bytes());
        put(&mut bytes, CREATED_OFFSET, &self.created.0.to_le_bytes());
        put(&mut bytes, BODY_BYTES_OFFSET, &self.body_bytes.to_le_bytes());
        put(&mut bytes, BODY_CRC_OFFSET, &self.body_crc.to_le_bytes());
        put(&mut bytes, LAST_HASH_OFFSET, &self.last_hash);
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        put(&mut bytes, HEADER_CRC_OFFSET, &crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotHeader, String> {
        let bytes = bytes.get(..SNAPSHOT_HEADER_BYTES).ok_or("header is truncated")?;
        if bytes[..8] != SNAPSHOT_MAGIC {
            return Err("bad magic".to_string());
        }
        let crc = u32::from_le_bytes(field(bytes, HEADER_CRC_OFFSET));
        if crc != crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) {
            return Err("header checksum mismatch".to_string());
        }
        let version = u16::from_le_bytes(field(bytes, VERSION_OFFSET));
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&version) {
            return Err(format!("unsupported snapshot version {version}"));
        }
        let reserved = u16::from_le_bytes(field(bytes, RESERVED_A_OFFSET)) == 0
            && u32::from_le_bytes(field(bytes, RESERVED_B_OFFSET)) == 0
            && bytes[LAST_HASH_OFFSET + 32..HEADER_CRC_OFFSET].iter().all(|b| *b == 0);
        if !reserved {
            return Err("reserved header bytes are not zero".to_string());
        }
        let shard_index = u16::from_le_bytes(field(bytes, SHARD_OFFSET));
        let shard = ShardId::new(shard_index).ok_or("shard out of range")?;
        Ok(SnapshotHeader {
            version,
            shard,
            shard_count: u16::from_le_bytes(field(bytes, SHARD_COUNT_OFFSET)),
            cluster_id: u64::from_le_bytes(field(bytes, CLUSTER_OFFSET)),
            lsn: Lsn(u64::from_le_bytes(field(bytes, LSN_OFFSET))),
            created: Timestamp(u64::from_le_bytes(field(bytes, CREATED_OFFSET))),
            body_bytes: u64::from_le_bytes(field(bytes, BODY_BYTES_OFFSET)),
            body_crc: u32::from_le_bytes(field(bytes, BODY_CRC_OFFSET)),
            last_hash: field(bytes, LAST_HASH_OFFSET),
        })
    }
}

/// The file name of the snapshot of `lsn`.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("snapshot-{:020}.snap", lsn.0)
}

/// The LSN in a snapshot file name, if it is one.
pub fn parse_snapshot_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// Snapshots in `dir`, newest (highest LSN) first. Leftover `.tmp` files are removed.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, SnapshotError> {
    let io = |source| SnapshotError::Io { path: dir.to_path_buf(), source };
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(".snap.tmp")) {
            fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    find_snapshots(dir)
}

/// Snapshots in `dir`, newest (highest LSN) first, without touching anything (for offline
/// tools, which must not change a data directory).
pub fn find_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, SnapshotError> {
    let io = |source| SnapshotError::Io { path: dir.to_path_buf(), source };
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if let Some(lsn) = name.to_str().and_then(parse_snapshot_file_name) {
            snapshots.push((lsn, entry.path()));
        }
    }
    snapshots.sort_unstable_by_key(|(lsn, _)| std::cmp::Reverse(*lsn));
    Ok(snapshots)
}

/// Encodes a snapshot (header and body) of a ledger.
pub fn encode_ledger(ledger: &Ledger, cluster_id: u64, last_hash: Hash) -> Vec<u8> {
    encode(&mut ledger.capture(), cluster_id, last_hash)
}

/// Encodes a snapshot (header and body) of a captured state.
pub fn encode(capture: &mut StateCapture, cluster_id: u64, last_hash: Hash) -> Vec<u8> {
    let mut bytes = vec![0u8; SNAPSHOT_HEADER_BYTES];
    capture.encode(&mut bytes);
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        shard: capture.shard(),
        shard_count: capture.shard_count(),
        cluster_id,
        lsn: capture.lsn(),
        created: capture.timestamp(),
        body_bytes: body.len() as u64,
        body_crc: crc32fast::hash(body),
        last_hash,
    };
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(&header.encode());
    bytes
}

/// Writes `bytes` (from `encode`) as the snapshot of `lsn` in `dir`: temp file, fsync, rename,
/// directory fsync. Returns the final path.
pub fn write(dir: &Path, lsn: Lsn, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(snapshot_file_name(lsn));
    let tmp = dir.join(format!("{}.tmp", snapshot_file_name(lsn)));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let file: File =
        OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
    write_behind(&file, bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir).map_err(io(dir))?;
    Ok(path)
}

/// Bytes a snapshot is written in, each pushed to the disk before the next is written.
const WRITE_BEHIND_CHUNK: usize = 1 << 20;

/// Writes `bytes` to `file` a chunk at a time, waiting for each chunk to reach the disk
/// (`sync_file_range`, data only) before writing the next, so that the final `fsync` has
/// nothing large left to do.
///
/// Why: a snapshot is hundreds of megabytes. Written whole and then fsync'd, it sat in the
/// device queue at once, and the WAL's fdatasyncs of the same shard waited behind it: the
/// POS tail latency (p99.9) doubled around every snapshot (docs/performance.md, "Snapshots").
/// In chunks, a WAL flush waits for at most one chunk.
fn write_behind(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    let mut writer = file;
    let mut offset = 0usize;
    for chunk in bytes.chunks(WRITE_BEHIND_CHUNK) {
        writer.write_all(chunk)?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            let start = i64::try_from(offset).expect("snapshots are smaller than 2^63 bytes");
            let length = i64::try_from(chunk.len()).expect("chunks are small");
            // SAFETY: a plain syscall on a descriptor the caller owns; it touches no memory of
            // this process.
            #[expect(unsafe_code, reason = "libc's sync_file_range is an FFI call")]
            let result = unsafe { libc::sync_file_range(file.as_raw_fd(), start, length, flags) };
            if result != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        offset += chunk.len();
    }
    Ok(())
}

/// Reads the snapshot at `path` (calling `pace` with the bytes read, a megabyte at a time) and
/// checks its header and its body's length and checksum, not the body's fields.
pub fn read_checked(
    path: &Path,
    pace: &mut dyn FnMut(u64),
) -> Result<(SnapshotHeader, Vec<u8>), SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid { path: path.to_path_buf(), reason };
    let mut bytes = Vec::new();
    crate::wal::reader::read_paced(path, &mut bytes, pace)
        .map_err(|source| SnapshotError::Io { path: path.to_path_buf(), source })?;
    let header = SnapshotHeader::decode(&bytes).map_err(invalid)?;
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if header.body_bytes != body.len() as u64 {
        return Err(invalid(format!(
            "body is {} bytes, header says {}",
            body.len(),
            header.body_bytes
        )));
    }
    if crc32fast::hash(body) != header.body_crc {
        return Err(invalid("body checksum mismatch".to_string()));
    }
    Ok((header, bytes))
}

/// Reads and checks the snapshot at `path` and rebuilds its ledger.
pub fn load(
    path: &Path,
    config: LedgerConfig,
    cluster_id: u64,
) -> Result<(SnapshotHeader, Ledger), SnapshotError> {
    let (header, bytes) = read_checked(path, &mut |_| {})?;
    let ledger = decode_checked(path, &header, &bytes, config, cluster_id)?;
    Ok((header, ledger))
}

/// Rebuilds the ledger of a snapshot `read_checked` read from `path` (named in errors): it
/// must be of `config`'s shard and of data directory `cluster_id`.
pub fn decode_checked(
    path: &Path,
    header: &SnapshotHeader,
    bytes: &[u8],
    config: LedgerConfig,
    cluster_id: u64,
) -> Result<Ledger, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid { path: path.to_path_buf(), reason };
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if header.shard != config.shard || header.shard_count != config.shard_count {
        return Err(invalid(format!(
            "snapshot of shard {} of {}, expected shard {} of {}",
            header.shard, header.shard_count, config.shard, config.shard_count
        )));
    }
    if header.cluster_id != cluster_id {
        return Err(invalid("snapshot of another data directory".to_string()));
    }
    let ledger = Ledger::decode_state_version(config, body, header.version)
        .map_err(|error: DecodeError| invalid(format!("body does not decode: {error}")))?;
    if ledger.lsn() != header.lsn {
        return Err(invalid("body and header disagree on the lsn".to_string()));
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_written_in_chunks_reads_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        // Several chunks and a partial last one.
        let bytes: Vec<u8> = (0..(3 * WRITE_BEHIND_CHUNK + 12_345))
            .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let path = write(dir.path(), Lsn(42), &bytes).unwrap();
        assert_eq!(path, dir.path().join(snapshot_file_name(Lsn(42))));
        assert_eq!(fs::read(&path).unwrap(), bytes);
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }
}
