//! Spec: docs/wal-format.md. This module is that document in code: the offsets of every field
//! of the segment header and of the record frame, how a record is sealed (checksum and hash
//! chain) and how a frame is checked. Each offset is built from the one before it, and constant
//! assertions pin the sizes the document states.

use sha2::{Digest, Sha256};

use crate::codec::fixed::{field, put};

use crate::ids::{Lsn, ShardId, Timestamp};
use crate::limits::RECORD_BYTES_MAX;

/// Version of the segment and record format. Version history: docs/wal-format.md.
pub const FORMAT_VERSION: u16 = 7;

/// The oldest format version readers still accept. Version 2 only added a record kind
/// (`Reversal`), so a version 1 segment reads as it always did; version 3 added commit-group
/// alignment and trailers, and readers keep the version 1 and 2 rules for older segments;
/// versions 4, 5 and 6 only added record kinds (loyalty, lifecycle, partner exchange), version
/// 7 the annotation of a client header.
pub const FORMAT_VERSION_MIN: u16 = 1;

/// The first version whose commit groups start on a sector boundary and end with a trailer.
pub const FORMAT_VERSION_GROUPS: u16 = 3;

/// Sector size the format is laid out for: a device persists whole 512-byte sectors (counted
/// from the start of the file) or nothing.
pub const SECTOR_BYTES: u64 = 512;

/// Where the first record of a segment of format `version` starts. Version 3 leaves the rest
/// of the header's 4 KiB page empty, so that writing records never rewrites the page that
/// holds the header.
pub fn records_offset(version: u16) -> u64 {
    if version >= FORMAT_VERSION_GROUPS { RECORDS_OFFSET_GROUPS } else { SEGMENT_HEADER_BYTES }
}

/// `records_offset` of version 3 and later.
pub const RECORDS_OFFSET_GROUPS: u64 = 4096;

/// A SHA-256 digest: the link of the hash chain.
pub type Hash = [u8; 32];

/// The hash before the first record of a shard.
pub const HASH_ZERO: Hash = [0; 32];

// ---- Segment header -----------------------------------------------------------------------

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LDGRWAL\0";
const SEGMENT_MAGIC_OFFSET: usize = 0;
const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
const SEGMENT_SHARD_OFFSET: usize = SEGMENT_VERSION_OFFSET + 2;
const SEGMENT_SHARD_COUNT_OFFSET: usize = SEGMENT_SHARD_OFFSET + 2;
const SEGMENT_RESERVED_A_OFFSET: usize = SEGMENT_SHARD_COUNT_OFFSET + 2;
const SEGMENT_CLUSTER_OFFSET: usize = SEGMENT_RESERVED_A_OFFSET + 2;
const SEGMENT_SEQUENCE_OFFSET: usize = SEGMENT_CLUSTER_OFFSET + 8;
const SEGMENT_FIRST_LSN_OFFSET: usize = SEGMENT_SEQUENCE_OFFSET + 8;
const SEGMENT_CREATED_OFFSET: usize = SEGMENT_FIRST_LSN_OFFSET + 8;
const SEGMENT_BYTES_OFFSET: usize = SEGMENT_CREATED_OFFSET + 8;
const SEGMENT_PREV_HASH_OFFSET: usize = SEGMENT_BYTES_OFFSET + 8;
const SEGMENT_RESERVED_B_OFFSET: usize = SEGMENT_PREV_HASH_OFFSET + 32;
const SEGMENT_CRC_OFFSET: usize = 124;
/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: u64 = 128;
/// Largest segment a reader accepts (1 TiB; `Limits::validate` holds configurations to it).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 40;

const _: () = assert!(SEGMENT_RESERVED_B_OFFSET == 88);
const _: () = assert!(SEGMENT_CRC_OFFSET + 4 == SEGMENT_HEADER_BYTES as usize);

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version of the segment's records (`FORMAT_VERSION` for segments written now).
    pub version: u16,
    /// The shard whose WAL this is.
    pub shard: ShardId,
    /// Shards of the data directory.
    pub shard_count: u16,
    /// Random id of the data directory, shared by all its files.
    pub cluster_id: u64,
    /// Position of this segment in the shard's WAL: 1, 2, 3…; the file is named after it.
    pub sequence: u64,
    /// LSN of the first record in this segment.
    pub first_lsn: Lsn,
    /// When the segment was opened for writing.
    pub created: Timestamp,
    /// Size of the (zero-filled) segment file.
    pub segment_bytes: u64,
    /// Hash of the last record before this segment (`HASH_ZERO` before the first).
    pub prev_hash: Hash,
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// All bytes are zero: a segment that was named but never started.
    #[error("header is all zeros")]
    Zero,
    /// Fewer bytes than a header.
    #[error("header is truncated")]
    Truncated,
    /// The magic bytes differ.
    #[error("bad magic")]
    Magic,
    /// An unknown format version.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// The checksum does not match.
    #[error("header checksum mismatch")]
    Checksum,
    /// A field is out of range.
    #[error("invalid header field {0}")]
    Field(&'static str),
}

impl SegmentHeader {
    /// The header's bytes, checksum included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES as usize];
        put(&mut bytes, SEGMENT_MAGIC_OFFSET, &SEGMENT_MAGIC);
        put(&mut bytes, SEGMENT_VERSION_OFFSET, &self.version.to_le_bytes());
        put(&mut bytes, SEGMENT_SHARD_OFFSET, &self.shard.index().to_le_bytes());
        put(&mut bytes, SEGMENT_SHARD_COUNT_OFFSET, &self.shard_count.to_le_bytes());
        put(&mut bytes, SEGMENT_CLUSTER_OFFSET, &self.cluster_id.to_le_bytes());
        put(&mut bytes, SEGMENT_SEQUENCE_OFFSET, &self.sequence.to_le_bytes());
        put(&mut bytes, SEGMENT_FIRST_LSN_OFFSET, &self.first_lsn.0.to_le_bytes());
        put(&mut bytes, SEGMENT_CREATED_OFFSET, &self.created.0.to_le_bytes());
        put(&mut bytes, SEGMENT_BYTES_OFFSET, &self.segment_bytes.to_le_bytes());
        put(&mut bytes, SEGMENT_PREV_HASH_OFFSET, &self.prev_hash);
        let crc = crc32fast::hash(&bytes[..SEGMENT_CRC_OFFSET]);
        put(&mut bytes, SEGMENT_CRC_OFFSET, &crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header from the first bytes of a segment file.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let header_len = SEGMENT_HEADER_BYTES as usize;
        let Some(bytes) = bytes.get(..header_len) else {
            return Err(HeaderError::Truncated);
        };
        if bytes.iter().all(|byte| *byte == 0) {
            return Err(HeaderError::Zero);
        }
        if bytes[..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Magic);
        }
        let crc = crc32fast::hash(&bytes[..SEGMENT_CRC_OFFSET]);
        if crc != u32::from_le_bytes(field(bytes, SEGMENT_CRC_OFFSET)) {
            return Err(HeaderError::Checksum);
        }
        let version = u16::from_le_bytes(field(bytes, SEGMENT_VERSION_OFFSET));
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let reserved_zero = u16::from_le_bytes(field(bytes, SEGMENT_RESERVED_A_OFFSET)) == 0
            && bytes[SEGMENT_RESERVED_B_OFFSET..SEGMENT_CRC_OFFSET].iter().all(|b| *b == 0);
        if !reserved_zero {
            return Err(HeaderError::Field("reserved"));
        }
        let shard = ShardId::new(u16::from_le_bytes(field(bytes, SEGMENT_SHARD_OFFSET)))
            .ok_or(HeaderError::Field("shard"))?;
        let shard_count = u16::from_le_bytes(field(bytes, SEGMENT_SHARD_COUNT_OFFSET));
        if shard.index() >= shard_count {
            return Err(HeaderError::Field("shard_count"));
        }
        let first_lsn = Lsn(u64::from_le_bytes(field(bytes, SEGMENT_FIRST_LSN_OFFSET)));
        if first_lsn == Lsn::ZERO {
            return Err(HeaderError::Field("first_lsn"));
        }
        let segment_bytes = u64::from_le_bytes(field(bytes, SEGMENT_BYTES_OFFSET));
        if !(SEGMENT_HEADER_BYTES..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
            return Err(HeaderError::Field("segment_bytes"));
        }
        Ok(SegmentHeader {
            version,
            shard,
            shard_count,
            cluster_id: u64::from_le_bytes(field(bytes, SEGMENT_CLUSTER_OFFSET)),
            sequence: u64::from_le_bytes(field(bytes, SEGMENT_SEQUENCE_OFFSET)),
            first_lsn,
            created: Timestamp(u64::from_le_bytes(field(bytes, SEGMENT_CREATED_OFFSET))),
            segment_bytes,
            prev_hash: field(bytes, SEGMENT_PREV_HASH_OFFSET),
        })
    }
}

// ---- Record frame -------------------------------------------------------------------------

const RECORD_LEN_OFFSET: usize = 0;
const RECORD_CRC_OFFSET: usize = RECORD_LEN_OFFSET + 4;
const RECORD_LSN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
const RECORD_TIMESTAMP_OFFSET: usize = RECORD_LSN_OFFSET + 8;
const RECORD_KIND_OFFSET: usize = RECORD_TIMESTAMP_OFFSET + 8;
const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + 2;
const RECORD_COMMIT_INDEX_OFFSET: usize = RECORD_FLAGS_OFFSET + 2;
const RECORD_PREV_HASH_OFFSET: usize = RECORD_COMMIT_INDEX_OFFSET + 4;
/// Bytes of a record header; the payload follows.
pub const RECORD_HEADER_BYTES: usize = RECORD_PREV_HASH_OFFSET + 32;

const _: () = assert!(RECORD_HEADER_BYTES == 64);
const _: () = assert!(RECORD_HEADER_BYTES < RECORD_BYTES_MAX as usize);

/// The fields of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Total bytes of the record, header included.
    pub len: u32,
    /// Position in the shard's WAL.
    pub lsn: Lsn,
    /// When the shard decided the record.
    pub timestamp: Timestamp,
    /// Record kind (`RecordKind`), not yet checked against the known kinds.
    pub kind: u16,
    /// Records before this one in its commit group (the bytes made durable by one fdatasync).
    pub commit_index: u32,
    /// Hash of the previous record.
    pub prev_hash: Hash,
}

impl FrameHeader {
    /// LSN of the first record of this record's commit group.
    pub fn commit_first_lsn(&self) -> Lsn {
        Lsn(self.lsn.0.saturating_sub(u64::from(self.commit_index)))
    }
}

/// Starts a record in `out`: writes its header with the fields the shard decides (length, LSN,
/// timestamp, kind) and leaves checksum, commit index and previous hash zero for `seal`.
/// The payload is appended by the caller, then `finish_record` sets the length.
pub fn begin_record(out: &mut Vec<u8>, lsn: Lsn, timestamp: Timestamp, kind: u16) -> usize {
    let start = out.len();
    out.resize(start + RECORD_HEADER_BYTES, 0);
    let header = &mut out[start..];
    put(header, RECORD_LSN_OFFSET, &lsn.0.to_le_bytes());
    put(header, RECORD_TIMESTAMP_OFFSET, &timestamp.0.to_le_bytes());
    put(header, RECORD_KIND_OFFSET, &kind.to_le_bytes());
    start
}

/// Completes the record begun at `start` by writing its length.
pub fn finish_record(out: &mut [u8], start: usize) {
    let len = u32::try_from(out.len() - start).expect("records are small");
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes exceeds RECORD_BYTES_MAX");
    put(&mut out[start..], RECORD_LEN_OFFSET, &len.to_le_bytes());
}

/// The payload of a complete record.
pub fn payload(record: &[u8]) -> &[u8] {
    &record[RECORD_HEADER_BYTES..]
}

/// The length field of the record starting at `bytes[0]`.
pub fn record_len(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(field(bytes, RECORD_LEN_OFFSET))
}

/// The LSN field of the record starting at `bytes[0]`.
pub fn record_lsn(bytes: &[u8]) -> Lsn {
    Lsn(u64::from_le_bytes(field(bytes, RECORD_LSN_OFFSET)))
}

fn record_crc(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[RECORD_LEN_OFFSET..RECORD_CRC_OFFSET]);
    hasher.update(&record[RECORD_LSN_OFFSET..]);
    hasher.finalize()
}

/// Seals a complete record: links it to `prev_hash`, stores its commit index and checksum,
/// and returns its own hash (the next record's `prev_hash`).
pub fn seal(record: &mut [u8], prev_hash: &Hash, commit_index: u32) -> Hash {
    put(record, RECORD_COMMIT_INDEX_OFFSET, &commit_index.to_le_bytes());
    put(record, RECORD_PREV_HASH_OFFSET, prev_hash);
    let crc = record_crc(record);
    put(record, RECORD_CRC_OFFSET, &crc.to_le_bytes());
    record_hash(record)
}

/// The hash of a sealed record: SHA-256 of all its bytes.
pub fn record_hash(record: &[u8]) -> Hash {
    Sha256::digest(record).into()
}

/// What the bytes at some offset of a segment hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A length of zero: the zero-filled end of the written part.
    End,
    /// A record whose length and checksum are right. Its other fields are not checked yet.
    Valid(FrameHeader),
    /// The length is out of range.
    BadLength(u32),
    /// The record runs past the end of the available bytes.
    Truncated(u32),
    /// The checksum does not match.
    BadChecksum(u32),
}

/// Checks the frame at the start of `bytes` (length and checksum only).
pub fn check_frame(bytes: &[u8]) -> Frame {
    if bytes.len() < 4 {
        return if bytes.iter().all(|b| *b == 0) { Frame::End } else { Frame::Truncated(0) };
    }
    let len = u32::from_le_bytes(field(bytes, RECORD_LEN_OFFSET));
    if len == 0 {
        return Frame::End;
    }
    if len < RECORD_HEADER_BYTES as u32 || len > RECORD_BYTES_MAX {
        return Frame::BadLength(len);
    }
    let Some(record) = bytes.get(..len as usize) else {
        return Frame::Truncated(len);
    };
    if record_crc(record) != u32::from_le_bytes(field(record, RECORD_CRC_OFFSET)) {
        return Frame::BadChecksum(len);
    }
    Frame::Valid(FrameHeader {
        len,
        lsn: Lsn(u64::from_le_bytes(field(record, RECORD_LSN_OFFSET))),
        timestamp: Timestamp(u64::from_le_bytes(field(record, RECORD_TIMESTAMP_OFFSET))),
        kind: u16::from_le_bytes(field(record, RECORD_KIND_OFFSET)),
        commit_index: u32::from_le_bytes(field(record, RECORD_COMMIT_INDEX_OFFSET)),
        prev_hash: field(record, RECORD_PREV_HASH_OFFSET),
    })
}

/// Whether the frame's reserved flags are zero, as format version 1 requires.
pub fn flags_are_zero(record: &[u8]) -> bool {
    u16::from_le_bytes(field(record, RECORD_FLAGS_OFFSET)) == 0
}

// ---- Commit-group trailer (version 3) -----------------------------------------------------

/// First bytes of a commit-group trailer. As a little-endian `u32` it is far above
/// `RECORD_BYTES_MAX`, so a reader can never take it for a record's length.
pub const TRAILER_MAGIC: [u8; 4] = *b"LDGC";
const TRAILER_MAGIC_OFFSET: usize = 0;
const TRAILER_CRC_OFFSET: usize = TRAILER_MAGIC_OFFSET + 4;
const TRAILER_FIRST_LSN_OFFSET: usize = TRAILER_CRC_OFFSET + 4;
const TRAILER_LAST_LSN_OFFSET: usize = TRAILER_FIRST_LSN_OFFSET + 8;
const TRAILER_GROUP_START_OFFSET: usize = TRAILER_LAST_LSN_OFFSET + 8;
const TRAILER_LAST_HASH_OFFSET: usize = TRAILER_GROUP_START_OFFSET + 8;
/// Bytes of a commit-group trailer.
pub const TRAILER_BYTES: usize = TRAILER_LAST_HASH_OFFSET + 32;

const _: () = assert!(TRAILER_BYTES == 64);
const _: () = assert!(u32::from_le_bytes(TRAILER_MAGIC) > RECORD_BYTES_MAX);
const _: () = assert!(RECORDS_OFFSET_GROUPS.is_multiple_of(SECTOR_BYTES));

/// The trailer that closes a commit group of format version 3: the bytes one fdatasync made
/// durable. It sits in the last 64 bytes of the group's last sector, after zero padding, so
/// that a group always ends on a sector boundary and the next one starts on a fresh sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTrailer {
    /// LSN of the group's first record.
    pub first_lsn: Lsn,
    /// LSN of the group's last record.
    pub last_lsn: Lsn,
    /// Offset in the segment file of the group's first record (a multiple of 512).
    pub group_start: u64,
    /// Hash of the group's last record (the next record's `prev_hash`).
    pub last_hash: Hash,
}

impl GroupTrailer {
    /// The trailer's bytes, checksum included.
    pub fn encode(&self) -> [u8; TRAILER_BYTES] {
        let mut bytes = [0u8; TRAILER_BYTES];
        put(&mut bytes, TRAILER_MAGIC_OFFSET, &TRAILER_MAGIC);
        put(&mut bytes, TRAILER_FIRST_LSN_OFFSET, &self.first_lsn.0.to_le_bytes());
        put(&mut bytes, TRAILER_LAST_LSN_OFFSET, &self.last_lsn.0.to_le_bytes());
        put(&mut bytes, TRAILER_GROUP_START_OFFSET, &self.group_start.to_le_bytes());
        put(&mut bytes, TRAILER_LAST_HASH_OFFSET, &self.last_hash);
        let crc = trailer_crc(&bytes);
        put(&mut bytes, TRAILER_CRC_OFFSET, &crc.to_le_bytes());
        bytes
    }

    /// The trailer at the start of `bytes`, if its magic and checksum are right.
    pub fn decode(bytes: &[u8]) -> Option<GroupTrailer> {
        let bytes = bytes.get(..TRAILER_BYTES)?;
        if bytes[..4] != TRAILER_MAGIC
            || trailer_crc(bytes) != u32::from_le_bytes(field(bytes, TRAILER_CRC_OFFSET))
        {
            return None;
        }
        Some(GroupTrailer {
            first_lsn: Lsn(u64::from_le_bytes(field(bytes, TRAILER_FIRST_LSN_OFFSET))),
            last_lsn: Lsn(u64::from_le_bytes(field(bytes, TRAILER_LAST_LSN_OFFSET))),
            group_start: u64::from_le_bytes(field(bytes, TRAILER_GROUP_START_OFFSET)),
            last_hash: field(bytes, TRAILER_LAST_HASH_OFFSET),
        })
    }
}

fn trailer_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..TRAILER_CRC_OFFSET]);
    hasher.update(&bytes[TRAILER_FIRST_LSN_OFFSET..TRAILER_BYTES]);
    hasher.finalize()
}

/// Where the trailer of a group whose last record ends at `records_end` goes: the last 64
/// bytes of the sector that has room for it.
pub fn trailer_offset(records_end: u64) -> u64 {
    (records_end + TRAILER_BYTES as u64).next_multiple_of(SECTOR_BYTES) - TRAILER_BYTES as u64
}

/// Where the group after one whose last record ends at `records_end` starts.
pub fn group_end(records_end: u64) -> u64 {
    trailer_offset(records_end) + TRAILER_BYTES as u64
}

/// Fixed fields of the record header at the start of `bytes` (which must hold 64 bytes):
/// the raw length, LSN, timestamp, kind, flags, commit index and previous hash, unchecked.
pub fn raw_header(bytes: &[u8]) -> (u32, Lsn, Timestamp, u16, u16, u32, Hash) {
    (
        u32::from_le_bytes(field(bytes, RECORD_LEN_OFFSET)),
        Lsn(u64::from_le_bytes(field(bytes, RECORD_LSN_OFFSET))),
        Timestamp(u64::from_le_bytes(field(bytes, RECORD_TIMESTAMP_OFFSET))),
        u16::from_le_bytes(field(bytes, RECORD_KIND_OFFSET)),
        u16::from_le_bytes(field(bytes, RECORD_FLAGS_OFFSET)),
        u32::from_le_bytes(field(bytes, RECORD_COMMIT_INDEX_OFFSET)),
        field(bytes, RECORD_PREV_HASH_OFFSET),
    )
}

/// Byte ranges of the record header's fields, for checks of a header that is partly missing:
/// (length, lsn, timestamp, kind, flags, commit index, previous hash).
pub const RECORD_FIELD_RANGES: [(usize, usize); 7] = [
    (RECORD_LEN_OFFSET, RECORD_CRC_OFFSET),
    (RECORD_LSN_OFFSET, RECORD_TIMESTAMP_OFFSET),
    (RECORD_TIMESTAMP_OFFSET, RECORD_KIND_OFFSET),
    (RECORD_KIND_OFFSET, RECORD_FLAGS_OFFSET),
    (RECORD_FLAGS_OFFSET, RECORD_COMMIT_INDEX_OFFSET),
    (RECORD_COMMIT_INDEX_OFFSET, RECORD_PREV_HASH_OFFSET),
    (RECORD_PREV_HASH_OFFSET, RECORD_HEADER_BYTES),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(lsn: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin_record(&mut out, Lsn(lsn), Timestamp(77), 1);
        out.extend_from_slice(b"payload bytes");
        finish_record(&mut out, start);
        out
    }

    #[test]
    fn sealed_records_check_and_chain() {
        let mut first = sample_record(1);
        let first_hash = seal(&mut first, &HASH_ZERO, 0);
        let mut second = sample_record(2);
        let _ = seal(&mut second, &first_hash, 1);
        let Frame::Valid(header) = check_frame(&second) else { panic!("valid frame") };
        assert_eq!(header.lsn, Lsn(2));
        assert_eq!(header.prev_hash, first_hash);
        assert_eq!(header.commit_first_lsn(), Lsn(1));
        assert_eq!(header.len as usize, second.len());
        // Every single flipped byte is caught, including in the length field.
        for index in 0..second.len() {
            let mut damaged = second.clone();
            damaged[index] ^= 0x10;
            assert!(!matches!(check_frame(&damaged), Frame::Valid(_)), "byte {index}");
        }
        assert_eq!(check_frame(&[0; 64]), Frame::End);
        assert!(matches!(check_frame(&second[..40]), Frame::Truncated(_)));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            shard: ShardId::new(1).unwrap(),
            shard_count: 2,
            cluster_id: 0xfeed,
            sequence: 3,
            first_lsn: Lsn(100),
            created: Timestamp(5),
            segment_bytes: 1 << 20,
            prev_hash: [9; 32],
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        let mut damaged = bytes;
        damaged[30] ^= 1;
        assert_eq!(SegmentHeader::decode(&damaged), Err(HeaderError::Checksum));
        assert_eq!(SegmentHeader::decode(&[0; 128]), Err(HeaderError::Zero));
        assert_eq!(SegmentHeader::decode(&bytes[..100]), Err(HeaderError::Truncated));
    }

    #[test]
    fn trailers_round_trip_and_sit_at_the_end_of_a_sector() {
        let trailer = GroupTrailer {
            first_lsn: Lsn(5),
            last_lsn: Lsn(9),
            group_start: 4096,
            last_hash: [7; 32],
        };
        let bytes = trailer.encode();
        assert_eq!(GroupTrailer::decode(&bytes), Some(trailer));
        for index in 0..TRAILER_BYTES {
            for bit in 0..8 {
                let mut damaged = bytes;
                damaged[index] ^= 1 << bit;
                assert_eq!(GroupTrailer::decode(&damaged), None, "byte {index} bit {bit}");
            }
        }
        assert_eq!(trailer_offset(4096 + 100), 4096 + 512 - 64);
        assert_eq!(trailer_offset(4096 + 448), 4096 + 448);
        assert_eq!(trailer_offset(4096 + 449), 4096 + 1024 - 64);
        assert_eq!(group_end(4096 + 1), 4096 + 512);
        assert_eq!(group_end(4096 + 512), 4096 + 1024);
    }
}
