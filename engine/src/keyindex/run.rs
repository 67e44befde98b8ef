//! Key-index runs: one file of remembered writes, sorted by key hash, with a filter. Spec:
//! docs/key-index-format.md; this module is that document in code.
//!
//! A run holds the key entries a shard handed out for a range of its WAL, `(from, through]`.
//! It is written once (to a `.tmp` file, fsync'd, renamed, directory fsync'd) and never
//! changed; it is deleted when its keys are past the idempotency window.
//!
//! Reading: the header, the fences (the first hash of each block) and the filter are read and
//! checked when the run is opened, and stay in memory (about 2.1 bytes per key). A lookup
//! tests the filter; only if the key may be there does it read the one or two 4 KiB blocks
//! that can hold its hash (`pread`), check their CRC and scan them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::filter::{self, Filter};
use crate::codec::fixed::{field, put};
use crate::ids::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId};
use crate::ledger::keys::KeyEntry;
use crate::reject::RejectCode;
use crate::wal::segment::sync_dir;

/// First bytes of a run file.
pub const RUN_MAGIC: [u8; 8] = *b"LDGRKEYS";
/// Version of the run format.
pub const RUN_VERSION: u16 = 1;
/// File name suffix of runs.
pub const RUN_SUFFIX: &str = ".run";

/// Bytes of the header page (its first 128 bytes are the header; the rest are zero).
pub const HEADER_PAGE_BYTES: u64 = 4096;
/// Bytes of a block of entries.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes of an entry.
pub const ENTRY_BYTES: usize = 64;
/// Where a block's entries start.
const BLOCK_ENTRIES_OFFSET: usize = 64;
/// Entries a block holds at most.
pub const BLOCK_ENTRIES_MAX: usize = (BLOCK_BYTES as usize - BLOCK_ENTRIES_OFFSET) / ENTRY_BYTES;

const _: () = assert!(BLOCK_ENTRIES_MAX == 63);

// Header fields.
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const SHARD_OFFSET: usize = VERSION_OFFSET + 2;
const SHARD_COUNT_OFFSET: usize = SHARD_OFFSET + 2;
const RESERVED_A_OFFSET: usize = SHARD_COUNT_OFFSET + 2;
const CLUSTER_OFFSET: usize = RESERVED_A_OFFSET + 2;
const FROM_OFFSET: usize = CLUSTER_OFFSET + 8;
const THROUGH_OFFSET: usize = FROM_OFFSET + 8;
const ENTRIES_OFFSET: usize = THROUGH_OFFSET + 8;
const OLDEST_OFFSET: usize = ENTRIES_OFFSET + 8;
const NEWEST_OFFSET: usize = OLDEST_OFFSET + 8;
const BLOCKS_OFFSET: usize = NEWEST_OFFSET + 8;
const FILTER_BLOCKS_OFFSET: usize = BLOCKS_OFFSET + 8;
const FENCES_CRC_OFFSET: usize = FILTER_BLOCKS_OFFSET + 8;
const FILTER_CRC_OFFSET: usize = FENCES_CRC_OFFSET + 4;
const RESERVED_B_OFFSET: usize = FILTER_CRC_OFFSET + 4;
const HEADER_CRC_OFFSET: usize = 124;
const HEADER_BYTES: usize = 128;

const _: () = assert!(RESERVED_B_OFFSET == 88);
const _: () = assert!(HEADER_CRC_OFFSET + 4 == HEADER_BYTES);

// Block fields.
const BLOCK_CRC_OFFSET: usize = 0;
const BLOCK_COUNT_OFFSET: usize = BLOCK_CRC_OFFSET + 4;
const BLOCK_RESERVED_OFFSET: usize = BLOCK_COUNT_OFFSET + 2;
const BLOCK_FIRST_HASH_OFFSET: usize = BLOCK_RESERVED_OFFSET + 2;
const _: () = assert!(BLOCK_FIRST_HASH_OFFSET + 8 <= BLOCK_ENTRIES_OFFSET);

// Entry fields.
const ENTRY_TERMINAL_OFFSET: usize = 0;
const ENTRY_REFUSED_OFFSET: usize = ENTRY_TERMINAL_OFFSET + 4;
const ENTRY_FLAGS_OFFSET: usize = ENTRY_REFUSED_OFFSET + 1;
const ENTRY_RESERVED_OFFSET: usize = ENTRY_FLAGS_OFFSET + 1;
const ENTRY_INSERTED_OFFSET: usize = ENTRY_RESERVED_OFFSET + 2;
const ENTRY_KEY_OFFSET: usize = ENTRY_INSERTED_OFFSET + 8;
const ENTRY_FINGERPRINT_OFFSET: usize = ENTRY_KEY_OFFSET + 16;
const ENTRY_TX_ID_OFFSET: usize = ENTRY_FINGERPRINT_OFFSET + 8;
const ENTRY_LSN_OFFSET: usize = ENTRY_TX_ID_OFFSET + 8;
const ENTRY_AMOUNT_OFFSET: usize = ENTRY_LSN_OFFSET + 8;
const _: () = assert!(ENTRY_AMOUNT_OFFSET + 8 == ENTRY_BYTES);
/// Entry flag: the entry is a mark (`KeyEntry::mark`).
const FLAG_MARK: u8 = 1;

/// The seed of the key hash (XXH3-64 over the terminal and the key, little-endian).
pub const KEY_HASH_SEED: u64 = 0x6b65_7969_6e64_6578;

/// The hash runs are sorted by and filters are built from: XXH3-64 with seed `KEY_HASH_SEED`
/// over the terminal (`u32`) then the key (`u128`), little-endian (20 bytes).
pub fn key_hash(terminal: TerminalId, key: IdempotencyKey) -> u64 {
    let mut bytes = [0u8; 20];
    put(&mut bytes, 0, &terminal.0.to_le_bytes());
    put(&mut bytes, 4, &key.get().to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, KEY_HASH_SEED)
}

/// The identity every run of a shard carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunIdentity {
    /// The shard.
    pub shard: ShardId,
    /// Shards of the data directory.
    pub shard_count: u16,
    /// The data directory's id.
    pub cluster_id: u64,
}

/// What a run's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader {
    /// Whose run it is.
    pub identity: RunIdentity,
    /// The run holds the entries handed out by records after this LSN…
    pub from: Lsn,
    /// …up to and including this one.
    pub through: Lsn,
    /// Entries in the run.
    pub entries: u64,
    /// The earliest and latest `inserted` time of its entries (both 0 when it has none).
    pub oldest_inserted: Timestamp,
    /// See `oldest_inserted`.
    pub newest_inserted: Timestamp,
    /// Blocks of entries.
    pub blocks: u64,
    /// 32-byte blocks of the filter.
    pub filter_blocks: u64,
    fences_crc: u32,
    filter_crc: u32,
}

/// Why a run cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The file could not be read or written.
    #[error("key index run {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged, or is not a run of this shard.
    #[error("key index run {path}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The file name of the run of `(from, through]`.
pub fn run_file_name(from: Lsn, through: Lsn) -> String {
    format!("{:020}-{:020}{RUN_SUFFIX}", from.0, through.0)
}

/// The `(from, through)` of a run file name, if it is one.
pub fn parse_run_file_name(name: &str) -> Option<(Lsn, Lsn)> {
    let stem = name.strip_suffix(RUN_SUFFIX)?;
    let (from, through) = stem.split_once('-')?;
    let number = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
            .map(Lsn)
    };
    Some((number(from)?, number(through)?))
}

fn encode_entry(entry: &KeyEntry, out: &mut [u8]) {
    put(out, ENTRY_TERMINAL_OFFSET, &entry.terminal.0.to_le_bytes());
    let refused = entry.refused.map_or(0, |code| u8::try_from(code.code()).unwrap_or(u8::MAX));
    put(out, ENTRY_REFUSED_OFFSET, &[refused]);
    put(out, ENTRY_FLAGS_OFFSET, &[if entry.mark { FLAG_MARK } else { 0 }]);
    put(out, ENTRY_INSERTED_OFFSET, &entry.inserted.0.to_le_bytes());
    put(out, ENTRY_KEY_OFFSET, &entry.key.get().to_le_bytes());
    put(out, ENTRY_FINGERPRINT_OFFSET, &entry.fingerprint.to_le_bytes());
    put(out, ENTRY_TX_ID_OFFSET, &entry.tx_id.0.to_le_bytes());
    put(out, ENTRY_LSN_OFFSET, &entry.lsn.0.to_le_bytes());
    put(out, ENTRY_AMOUNT_OFFSET, &entry.amount.to_le_bytes());
}

fn decode_entry(bytes: &[u8]) -> Result<KeyEntry, String> {
    let key = u128::from_le_bytes(field(bytes, ENTRY_KEY_OFFSET));
    let key = IdempotencyKey::new(key).ok_or("an entry with key 0")?;
    let refused = match bytes[ENTRY_REFUSED_OFFSET] {
        0 => None,
        code => {
            Some(RejectCode::from_code(u16::from(code)).ok_or(format!("unknown refusal {code}"))?)
        }
    };
    let flags = bytes[ENTRY_FLAGS_OFFSET];
    if flags & !FLAG_MARK != 0 || bytes[ENTRY_RESERVED_OFFSET..ENTRY_INSERTED_OFFSET] != [0, 0] {
        return Err(format!("unknown entry flags {flags}"));
    }
    Ok(KeyEntry {
        terminal: TerminalId(u32::from_le_bytes(field(bytes, ENTRY_TERMINAL_OFFSET))),
        key,
        inserted: Timestamp(u64::from_le_bytes(field(bytes, ENTRY_INSERTED_OFFSET))),
        fingerprint: u64::from_le_bytes(field(bytes, ENTRY_FINGERPRINT_OFFSET)),
        tx_id: TxId(u64::from_le_bytes(field(bytes, ENTRY_TX_ID_OFFSET))),
        lsn: Lsn(u64::from_le_bytes(field(bytes, ENTRY_LSN_OFFSET))),
        amount: u64::from_le_bytes(field(bytes, ENTRY_AMOUNT_OFFSET)),
        refused,
        mark: flags & FLAG_MARK != 0,
    })
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

impl RunHeader {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        put(&mut bytes, MAGIC_OFFSET, &RUN_MAGIC);
        put(&mut bytes, VERSION_OFFSET, &RUN_VERSION.to_le_bytes());
        put(&mut bytes, SHARD_OFFSET, &self.identity.shard.index().to_le_bytes());
        put(&mut bytes, SHARD_COUNT_OFFSET, &self.identity.shard_count.to_le_bytes());
        put(&mut bytes, CLUSTER_OFFSET, &self.identity.cluster_id.to_le_bytes());
        put(&mut bytes, FROM_OFFSET, &self.from.0.to_le_bytes());
        put(&mut bytes, THROUGH_OFFSET, &self.through.0.to_le_bytes());
        put(&mut bytes, ENTRIES_OFFSET, &self.entries.to_le_bytes());
        put(&mut bytes, OLDEST_OFFSET, &self.oldest_inserted.0.to_le_bytes());
        put(&mut bytes, NEWEST_OFFSET, &self.newest_inserted.0.to_le_bytes());
        put(&mut bytes, BLOCKS_OFFSET, &self.blocks.to_le_bytes());
        put(&mut bytes, FILTER_BLOCKS_OFFSET, &self.filter_blocks.to_le_bytes());
        put(&mut bytes, FENCES_CRC_OFFSET, &self.fences_crc.to_le_bytes());
        put(&mut bytes, FILTER_CRC_OFFSET, &self.filter_crc.to_le_bytes());
        let checksum = crc(&bytes[..HEADER_CRC_OFFSET]);
        put(&mut bytes, HEADER_CRC_OFFSET, &checksum.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<RunHeader, String> {
        let bytes = bytes.get(..HEADER_BYTES).ok_or("shorter than a header")?;
        if bytes[..8] != RUN_MAGIC {
            return Err("bad magic".to_string());
        }
        if crc(&bytes[..HEADER_CRC_OFFSET]) != u32::from_le_bytes(field(bytes, HEADER_CRC_OFFSET)) {
            return Err("header checksum mismatch".to_string());
        }
        let version = u16::from_le_bytes(field(bytes, VERSION_OFFSET));
        if version != RUN_VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let reserved = u16::from_le_bytes(field(bytes, RESERVED_A_OFFSET)) != 0
            || bytes[RESERVED_B_OFFSET..HEADER_CRC_OFFSET].iter().any(|b| *b != 0);
        if reserved {
            return Err("reserved bytes are not zero".to_string());
        }
        let shard = ShardId::new(u16::from_le_bytes(field(bytes, SHARD_OFFSET)))
            .ok_or("shard out of range")?;
        let u64_at = |offset| u64::from_le_bytes(field(bytes, offset));
        Ok(RunHeader {
            identity: RunIdentity {
                shard,
                shard_count: u16::from_le_bytes(field(bytes, SHARD_COUNT_OFFSET)),
                cluster_id: u64_at(CLUSTER_OFFSET),
            },
            from: Lsn(u64_at(FROM_OFFSET)),
            through: Lsn(u64_at(THROUGH_OFFSET)),
            entries: u64_at(ENTRIES_OFFSET),
            oldest_inserted: Timestamp(u64_at(OLDEST_OFFSET)),
            newest_inserted: Timestamp(u64_at(NEWEST_OFFSET)),
            blocks: u64_at(BLOCKS_OFFSET),
            filter_blocks: u64_at(FILTER_BLOCKS_OFFSET),
            fences_crc: u32::from_le_bytes(field(bytes, FENCES_CRC_OFFSET)),
            filter_crc: u32::from_le_bytes(field(bytes, FILTER_CRC_OFFSET)),
        })
    }

    /// Bytes of a run file with this header.
    fn file_bytes(&self) -> Option<u64> {
        let blocks = self.blocks.checked_mul(BLOCK_BYTES + 8)?;
        let filter = self.filter_blocks.checked_mul(filter::BLOCK_BYTES as u64)?;
        HEADER_PAGE_BYTES.checked_add(blocks)?.checked_add(filter)
    }
}

/// The order of entries in a run: by key hash, then LSN, a mark after the entry it marks.
fn sort_key(entry: &KeyEntry) -> (u64, Lsn, bool) {
    (key_hash(entry.terminal, entry.key), entry.lsn, entry.mark)
}

/// Writes the run of `(from, through]` holding `entries` (in any order) into `dir`, durably,
/// and returns its path. The file appears under its name only complete and fsync'd.
pub fn write_run(
    dir: &Path,
    identity: RunIdentity,
    from: Lsn,
    through: Lsn,
    entries: &[KeyEntry],
) -> io::Result<PathBuf> {
    assert!(from <= through, "a run covers a range of the wal");
    // Each key hashed once: sorting by a key computed in every comparison cost the indexer
    // most of its time (docs/performance.md, "Key index").
    let mut order: Vec<((u64, Lsn, bool), u32)> = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| (sort_key(entry), u32::try_from(index).expect("runs are bounded")))
        .collect();
    order.sort_unstable();
    let blocks = entries.len().div_ceil(BLOCK_ENTRIES_MAX);
    let mut filter = Filter::for_keys(entries.len());
    let mut fences = Vec::with_capacity(blocks * 8);
    let path = dir.join(run_file_name(from, through));
    let tmp = dir.join(format!("{}.tmp", run_file_name(from, through)));
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    // Blocks go out one at a time through one buffer: a run of a million keys is 64 MiB, and
    // allocating it whole cost more in page faults than everything else the indexer does.
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&[0u8; HEADER_PAGE_BYTES as usize])?;
    let mut block = [0u8; BLOCK_BYTES as usize];
    for chunk in order.chunks(BLOCK_ENTRIES_MAX) {
        block.fill(0);
        let ((first_hash, _, _), _) = chunk[0];
        fences.extend_from_slice(&first_hash.to_le_bytes());
        put(&mut block, BLOCK_COUNT_OFFSET, &u16::try_from(chunk.len()).expect("63").to_le_bytes());
        put(&mut block, BLOCK_FIRST_HASH_OFFSET, &first_hash.to_le_bytes());
        for (index, ((hash, _, _), at_entry)) in chunk.iter().enumerate() {
            let at = BLOCK_ENTRIES_OFFSET + index * ENTRY_BYTES;
            encode_entry(&entries[*at_entry as usize], &mut block[at..at + ENTRY_BYTES]);
            filter.insert(*hash);
        }
        let checksum = crc(&block[BLOCK_COUNT_OFFSET..]);
        put(&mut block, BLOCK_CRC_OFFSET, &checksum.to_le_bytes());
        out.write_all(&block)?;
    }
    let filter_bytes = filter.to_bytes();
    out.write_all(&fences)?;
    out.write_all(&filter_bytes)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    let header = RunHeader {
        identity,
        from,
        through,
        entries: entries.len() as u64,
        oldest_inserted: entries.iter().map(|e| e.inserted).min().unwrap_or(Timestamp(0)),
        newest_inserted: entries.iter().map(|e| e.inserted).max().unwrap_or(Timestamp(0)),
        blocks: blocks as u64,
        filter_blocks: filter.blocks() as u64,
        fences_crc: crc(&fences),
        filter_crc: crc(&filter_bytes),
    };
    file.write_all_at(&header.encode(), 0)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// An open run: its header, fences and filter in memory, its blocks read on demand.
#[derive(Debug)]
pub struct Run {
    path: PathBuf,
    header: RunHeader,
    /// The first key hash of each block.
    fences: Vec<u64>,
    filter: Filter,
    file: File,
}

/// What a lookup in one run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunLookup {
    /// The filter rules the key out: no block was read.
    Filtered,
    /// The key is not in the run, though the filter let it through (a false positive).
    Absent,
    /// The newest entry of the key in this run.
    Found(KeyEntry),
}

impl Run {
    /// Opens and checks a run: its header (identity included), size, fences and filter.
    pub fn open(path: &Path, identity: RunIdentity) -> Result<Run, RunError> {
        let io_error = |source| RunError::Io { path: path.to_path_buf(), source };
        let damaged = |reason: String| RunError::Damaged { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(io_error)?;
        let mut head = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut head, 0).map_err(|error| damaged(format!("header: {error}")))?;
        let header = RunHeader::decode(&head).map_err(damaged)?;
        if header.identity != identity {
            return Err(damaged(format!(
                "belongs to shard {} of data directory {:016x}",
                header.identity.shard, header.identity.cluster_id
            )));
        }
        if parse_run_file_name(&path.file_name().unwrap_or_default().to_string_lossy())
            != Some((header.from, header.through))
            || header.from > header.through
        {
            return Err(damaged("the name and the header disagree on its range".to_string()));
        }
        let size = file.metadata().map_err(io_error)?.len();
        let expected = header.file_bytes().filter(|bytes| *bytes == size).ok_or_else(|| {
            damaged(format!("the file is {size} bytes, its header does not add up to that"))
        })?;
        let blocks = usize::try_from(header.blocks).map_err(|_| damaged("blocks".to_string()))?;
        if header.entries > header.blocks * BLOCK_ENTRIES_MAX as u64
            || header.entries + (BLOCK_ENTRIES_MAX as u64)
                <= header.blocks * BLOCK_ENTRIES_MAX as u64
            || header.filter_blocks == 0
        {
            return Err(damaged("entry, block and filter counts disagree".to_string()));
        }
        let fences_at = HEADER_PAGE_BYTES + header.blocks * BLOCK_BYTES;
        let mut fence_bytes = vec![0u8; blocks * 8];
        file.read_exact_at(&mut fence_bytes, fences_at).map_err(io_error)?;
        if crc(&fence_bytes) != header.fences_crc {
            return Err(damaged("fences checksum mismatch".to_string()));
        }
        let filter_at = fences_at + header.blocks * 8;
        let mut filter_bytes = vec![0u8; usize::try_from(expected - filter_at).unwrap_or(0)];
        file.read_exact_at(&mut filter_bytes, filter_at).map_err(io_error)?;
        if crc(&filter_bytes) != header.filter_crc {
            return Err(damaged("filter checksum mismatch".to_string()));
        }
        let filter =
            Filter::from_bytes(&filter_bytes).ok_or_else(|| damaged("filter size".to_string()))?;
        let fences: Vec<u64> =
            fence_bytes.chunks_exact(8).map(|bytes| u64::from_le_bytes(field(bytes, 0))).collect();
        if fences.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(damaged("fences out of order".to_string()));
        }
        Ok(Run { path: path.to_path_buf(), header, fences, filter, file })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header.
    pub fn header(&self) -> &RunHeader {
        &self.header
    }

    /// Bytes this run keeps in memory (fences and filter).
    pub fn memory_bytes(&self) -> usize {
        self.fences.len() * 8 + self.filter.blocks() * filter::BLOCK_BYTES
    }

    /// Starts loading the filter block a lookup of `hash` reads.
    pub fn prefetch(&self, hash: u64) {
        self.filter.prefetch(hash);
    }

    /// Reads and checks block `index`.
    fn block(&self, index: usize) -> Result<Vec<u8>, RunError> {
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        let at = HEADER_PAGE_BYTES + index as u64 * BLOCK_BYTES;
        self.file
            .read_exact_at(&mut block, at)
            .map_err(|source| RunError::Io { path: self.path.clone(), source })?;
        let damaged = |reason: String| RunError::Damaged {
            path: self.path.clone(),
            reason: format!("block {index}: {reason}"),
        };
        if crc(&block[BLOCK_COUNT_OFFSET..]) != u32::from_le_bytes(field(&block, BLOCK_CRC_OFFSET))
        {
            return Err(damaged("checksum mismatch".to_string()));
        }
        let count = usize::from(u16::from_le_bytes(field(&block, BLOCK_COUNT_OFFSET)));
        if count == 0 || count > BLOCK_ENTRIES_MAX {
            return Err(damaged(format!("{count} entries")));
        }
        if u64::from_le_bytes(field(&block, BLOCK_FIRST_HASH_OFFSET)) != self.fences[index] {
            return Err(damaged("its first hash differs from its fence".to_string()));
        }
        Ok(block)
    }

    fn entries(block: &[u8]) -> impl Iterator<Item = &[u8]> {
        let count = usize::from(u16::from_le_bytes(field(block, BLOCK_COUNT_OFFSET)));
        block[BLOCK_ENTRIES_OFFSET..BLOCK_ENTRIES_OFFSET + count * ENTRY_BYTES]
            .chunks_exact(ENTRY_BYTES)
    }

    /// The newest entry of `(terminal, key)` in this run (`hash` is its `key_hash`).
    pub fn lookup(
        &self,
        hash: u64,
        terminal: TerminalId,
        key: IdempotencyKey,
    ) -> Result<RunLookup, RunError> {
        if self.header.entries == 0 || !self.filter.may_contain(hash) {
            return Ok(RunLookup::Filtered);
        }
        // Entries of one hash may start in the block before the first fence at or above it.
        let first = self.fences.partition_point(|fence| *fence < hash).saturating_sub(1);
        let mut found = None;
        for index in first..self.fences.len() {
            if self.fences[index] > hash {
                break;
            }
            let block = self.block(index)?;
            for bytes in Self::entries(&block) {
                let matches = u32::from_le_bytes(field(bytes, ENTRY_TERMINAL_OFFSET)) == terminal.0
                    && u128::from_le_bytes(field(bytes, ENTRY_KEY_OFFSET)) == key.get();
                if matches {
                    let entry = decode_entry(bytes).map_err(|reason| RunError::Damaged {
                        path: self.path.clone(),
                        reason: format!("block {index}: {reason}"),
                    })?;
                    // Entries are in (hash, lsn, mark) order: the last match is the newest.
                    found = Some(entry);
                }
            }
        }
        Ok(found.map_or(RunLookup::Absent, RunLookup::Found))
    }

    /// Reads and checks every block and entry; returns the entries.
    pub fn verify(&self) -> Result<u64, RunError> {
        self.verify_paced(&mut |_| {})
    }

    /// `verify`, calling `pace` with the bytes of each block read (the background scrub).
    pub fn verify_paced(&self, pace: &mut dyn FnMut(u64)) -> Result<u64, RunError> {
        let mut entries = 0u64;
        let mut last = None;
        for index in 0..self.fences.len() {
            let block = self.block(index)?;
            pace(BLOCK_BYTES);
            for bytes in Self::entries(&block) {
                let entry = decode_entry(bytes).map_err(|reason| RunError::Damaged {
                    path: self.path.clone(),
                    reason: format!("block {index}: {reason}"),
                })?;
                let order = sort_key(&entry);
                if last.is_some_and(|last| last > order) || !self.filter.may_contain(order.0) {
                    return Err(RunError::Damaged {
                        path: self.path.clone(),
                        reason: format!("block {index}: entries out of order or unfiltered"),
                    });
                }
                last = Some(order);
                entries += 1;
            }
        }
        if entries != self.header.entries {
            return Err(RunError::Damaged {
                path: self.path.clone(),
                reason: format!("{entries} entries, the header says {}", self.header.entries),
            });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> RunIdentity {
        RunIdentity { shard: ShardId::new(1).unwrap(), shard_count: 2, cluster_id: 0xabc }
    }

    fn entry(terminal: u32, key: u128, lsn: u64) -> KeyEntry {
        KeyEntry {
            terminal: TerminalId(terminal),
            key: IdempotencyKey::new(key).unwrap(),
            inserted: Timestamp(lsn * 10),
            fingerprint: u64::from(terminal) ^ (key as u64),
            tx_id: TxId(lsn + 1_000),
            lsn: Lsn(lsn),
            amount: lsn % 7,
            refused: None,
            mark: false,
        }
    }

    #[test]
    fn every_entry_is_found_and_the_newest_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries: Vec<KeyEntry> =
            (1..=1_000u64).map(|i| entry(7, u128::from(i), i)).collect();
        // Key 5 used again later, and key 9 marked refunded.
        entries.push(entry(7, 5, 2_000));
        let mut mark = entry(7, 9, 9);
        mark.refused = Some(RejectCode::TransferRefunded);
        mark.mark = true;
        entries.push(mark);
        let path = write_run(dir.path(), identity(), Lsn(0), Lsn(2_000), &entries).unwrap();
        assert!(path.ends_with(run_file_name(Lsn(0), Lsn(2_000))));
        let run = Run::open(&path, identity()).unwrap();
        assert_eq!(run.header().entries, 1_002);
        assert_eq!(run.verify().unwrap(), 1_002);
        let find = |terminal: u32, key: u128| {
            let key = IdempotencyKey::new(key).unwrap();
            run.lookup(key_hash(TerminalId(terminal), key), TerminalId(terminal), key).unwrap()
        };
        for i in 1..=1_000u64 {
            let RunLookup::Found(found) = find(7, u128::from(i)) else { panic!("key {i}") };
            match i {
                5 => assert_eq!(found, entry(7, 5, 2_000)),
                9 => assert_eq!(found, mark),
                _ => assert_eq!(found, entry(7, u128::from(i), i)),
            }
        }
        // Another terminal's keys are not these.
        let others = (1..=1_000u128).filter(|key| find(8, *key) != RunLookup::Filtered).count();
        assert!(others < 20, "{others} false positives of 1,000");
        assert!(matches!(find(8, 1), RunLookup::Filtered | RunLookup::Absent));
    }

    #[test]
    fn damage_is_found_when_opened_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<KeyEntry> = (1..=200u64).map(|i| entry(1, u128::from(i), i)).collect();
        let path = write_run(dir.path(), identity(), Lsn(10), Lsn(300), &entries).unwrap();
        let original = fs::read(&path).unwrap();
        let other = RunIdentity { cluster_id: 1, ..identity() };
        assert!(matches!(Run::open(&path, other), Err(RunError::Damaged { .. })));
        // A flipped bit anywhere: refused at open (header, fences, filter, size) or found by
        // the block's checksum when read (every block is read by verify).
        for offset in (0..original.len()).step_by(97) {
            let mut bytes = original.clone();
            bytes[offset] ^= 0x04;
            fs::write(&path, &bytes).unwrap();
            let outcome = Run::open(&path, identity()).and_then(|run| run.verify());
            let unused = (HEADER_BYTES..HEADER_PAGE_BYTES as usize).contains(&offset);
            assert_eq!(outcome.is_err(), !unused, "offset {offset}");
        }
        fs::write(&path, &original[..original.len() - 1]).unwrap();
        assert!(Run::open(&path, identity()).is_err());
        assert_eq!(
            parse_run_file_name("00000000000000000010-00000000000000000300.run"),
            Some((Lsn(10), Lsn(300)))
        );
        assert_eq!(parse_run_file_name("10-300.run"), None);
    }

    #[test]
    fn an_empty_run_holds_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_run(dir.path(), identity(), Lsn(5), Lsn(9), &[]).unwrap();
        let run = Run::open(&path, identity()).unwrap();
        assert_eq!(
            (run.header().from, run.header().through, run.header().entries),
            (Lsn(5), Lsn(9), 0)
        );
        let key = IdempotencyKey::new(3).unwrap();
        assert_eq!(
            run.lookup(key_hash(TerminalId(1), key), TerminalId(1), key).unwrap(),
            RunLookup::Filtered
        );
    }
}
