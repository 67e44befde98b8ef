//! Reading a shard's WAL: every check of docs/wal-format.md "Reading and recovery rules", in
//! one scan used by start-up recovery and by the auditors' `ledger-wal verify`.
//!
//! The scan never writes. It reports where the log ends and whether the newest segment ends in
//! a torn tail (the unacknowledged last commit group, partly written when the machine stopped),
//! which recovery then zeroes. Anything else that is wrong (a damaged record followed by records
//! written after it was durable, a record damaged in place, a broken hash chain, a missing
//! segment) is corruption, reported with the file, offset and LSN.

use std::fs;
use std::path::{Path, PathBuf};

use super::format::{self, FrameHeader, Hash, HeaderError, SEGMENT_HEADER_BYTES, SegmentHeader};
use super::segment;
use crate::codec::DecodeError;
use crate::ids::{Lsn, ShardId, Timestamp};
use crate::ledger::record::{Record, RecordKind};
use crate::limits::RECORD_BYTES_MAX;

/// Sector size assumed for torn writes: a device persists whole 512-byte sectors or nothing.
pub const SECTOR_BYTES: u64 = 512;

/// Why a WAL cannot be read to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A segment between the first and the last is missing.
    #[error("missing segment in {dir}: {} is followed by {}", segment::segment_file_name(*.before), segment::segment_file_name(*.after))]
    MissingSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// Sequence of the segment before the gap.
        before: u64,
        /// Sequence of the segment after the gap.
        after: u64,
    },
    /// A segment header is damaged or belongs elsewhere.
    #[error("bad segment header in {path}: {reason}")]
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A record is damaged, or the log is inconsistent at this point.
    #[error("corrupt wal: {path} at offset {offset}, lsn {lsn}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// The LSN expected at that offset.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// The WAL does not contain the records a snapshot or the caller needs.
    #[error("wal in {dir} does not cover lsn {lsn}: {reason}")]
    Gap {
        /// The WAL directory.
        dir: PathBuf,
        /// The LSN that cannot be found.
        lsn: Lsn,
        /// What is missing.
        reason: String,
    },
}

/// One record as the scan hands it to its visitor.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The checked frame header.
    pub header: FrameHeader,
    /// The record kind.
    pub kind: RecordKind,
    /// All bytes of the record.
    pub bytes: &'a [u8],
    /// Sequence of its segment.
    pub segment: u64,
    /// Byte offset in its segment file.
    pub offset: u64,
    /// The record's own hash.
    pub hash: Hash,
}

impl RecordRef<'_> {
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        format::payload(self.bytes)
    }

    /// The decoded record.
    pub fn decode(&self) -> Result<Record, DecodeError> {
        let body = super::payload::decode_body(self.kind, self.payload())?;
        Ok(Record { lsn: self.header.lsn, timestamp: self.header.timestamp, body })
    }
}

/// What the scan expects of the files.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// The shard whose WAL this is, if known.
    pub shard: Option<ShardId>,
    /// The data directory's id, if known.
    pub cluster_id: Option<u64>,
    /// Records up to this LSN are checked but not visited (they are in a snapshot).
    pub visit_after: Lsn,
    /// The hash the record at `visit_after` must have (the snapshot's), if any.
    pub hash_at_visit_after: Option<Hash>,
    /// Records after this LSN are checked but not visited (`None`: visit to the end).
    pub visit_until: Option<Lsn>,
}

impl ScanOptions {
    /// Check everything, visit every record, expect nothing of the files' identity.
    pub fn all() -> ScanOptions {
        ScanOptions {
            shard: None,
            cluster_id: None,
            visit_after: Lsn::ZERO,
            hash_at_visit_after: None,
            visit_until: None,
        }
    }
}

/// How the newest segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At a zero length, with only zeros after it.
    Clean,
    /// In a torn write: bytes from `offset` to `dirty_end` belong to an unfinished commit
    /// group and must be zeroed before writing resumes.
    Torn {
        /// Where the torn record starts (and the log ends).
        offset: u64,
        /// End of the last non-zero byte of the segment.
        dirty_end: u64,
    },
}

/// The newest segment, as recovery needs it to resume writing.
#[derive(Debug, Clone)]
pub struct NewestSegment {
    /// Its sequence.
    pub sequence: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its header.
    pub header: SegmentHeader,
    /// The file's current length (shorter than `header.segment_bytes` if it was truncated).
    pub file_bytes: u64,
    /// Offset of the first byte after the last whole record.
    pub end_offset: u64,
    /// How it ends.
    pub tail: Tail,
}

/// The result of a scan.
#[derive(Debug, Clone)]
pub struct ScanEnd {
    /// The last whole record's LSN (`Lsn::ZERO` for an empty WAL).
    pub last_lsn: Lsn,
    /// The last whole record's hash.
    pub last_hash: Hash,
    /// The last whole record's timestamp.
    pub last_timestamp: Timestamp,
    /// The newest segment, if any.
    pub newest: Option<NewestSegment>,
    /// Newest segment files whose header is all zeros: rolls that never finished.
    pub abandoned: Vec<PathBuf>,
    /// Segments checked.
    pub segments: u64,
    /// Records checked (visited or not).
    pub records: u64,
    /// Sequence of the first segment present (`None` if there is none).
    pub first_segment: Option<u64>,
}

struct Segment {
    sequence: u64,
    path: PathBuf,
    header: SegmentHeader,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Lists and checks the segment headers of `dir`: contiguous sequences, valid headers (the
/// newest may be all zeros: an unfinished roll), the expected shard and data directory.
fn read_segments(
    dir: &Path,
    options: &ScanOptions,
) -> Result<(Vec<Segment>, Vec<PathBuf>), WalError> {
    let listed = segment::list_segments(dir).map_err(io_error(dir))?;
    let mut segments: Vec<Segment> = Vec::with_capacity(listed.len());
    let mut abandoned = Vec::new();
    let count = listed.len();
    for (index, (sequence, path)) in listed.into_iter().enumerate() {
        if let Some(previous) = segments.last()
            && sequence != previous.sequence + 1
        {
            return Err(WalError::MissingSegment {
                dir: dir.to_path_buf(),
                before: previous.sequence,
                after: sequence,
            });
        }
        let mut head = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        let read = {
            use std::io::Read;
            let mut file = fs::File::open(&path).map_err(io_error(&path))?;
            let mut filled = 0;
            loop {
                let n = file.read(&mut head[filled..]).map_err(io_error(&path))?;
                if n == 0 {
                    break filled;
                }
                filled += n;
                if filled == head.len() {
                    break filled;
                }
            }
        };
        let is_newest = index + 1 == count;
        let all_zero = head[..read].iter().all(|b| *b == 0);
        let header = match SegmentHeader::decode(&head[..read]) {
            Ok(header) => header,
            Err(HeaderError::Zero) if is_newest => {
                abandoned.push(path);
                continue;
            }
            Err(HeaderError::Truncated) if is_newest && all_zero => {
                abandoned.push(path);
                continue;
            }
            Err(error) => {
                return Err(WalError::BadHeader { path, reason: error.to_string() });
            }
        };
        let mismatch = if header.sequence != sequence {
            Some(format!("header says sequence {}", header.sequence))
        } else if options.shard.is_some_and(|shard| shard != header.shard) {
            Some(format!("header says shard {}", header.shard))
        } else if options.cluster_id.is_some_and(|id| id != header.cluster_id) {
            Some(format!("belongs to data directory {:016x}", header.cluster_id))
        } else if segments.first().is_some_and(|first| {
            first.header.cluster_id != header.cluster_id || first.header.shard != header.shard
        }) {
            Some("differs in shard or data directory from the first segment".to_string())
        } else {
            None
        };
        if let Some(reason) = mismatch {
            return Err(WalError::BadHeader { path, reason });
        }
        segments.push(Segment { sequence, path, header });
    }
    Ok((segments, abandoned))
}

/// Reads the WAL in `dir` from the segment holding `options.visit_after + 1` to its end,
/// checking every record and passing those after `visit_after` to `visit`. An error from
/// `visit` stops the scan and is returned as `Err(Ok(error))`; problems of the log itself are
/// `Err(Err(WalError))`.
pub fn scan<E>(
    dir: &Path,
    options: &ScanOptions,
    mut visit: impl FnMut(&RecordRef<'_>) -> Result<(), E>,
) -> Result<ScanEnd, Result<E, WalError>> {
    let (segments, abandoned) = read_segments(dir, options).map_err(Err)?;
    let mut end = ScanEnd {
        last_lsn: Lsn::ZERO,
        last_hash: format::HASH_ZERO,
        last_timestamp: Timestamp(0),
        newest: None,
        abandoned,
        segments: 0,
        records: 0,
        first_segment: segments.first().map(|segment| segment.sequence),
    };
    if segments.is_empty() {
        if options.visit_after > Lsn::ZERO {
            return Err(Err(WalError::Gap {
                dir: dir.to_path_buf(),
                lsn: options.visit_after.next(),
                reason: "the wal has no segments".to_string(),
            }));
        }
        return Ok(end);
    }
    // Start in the last segment whose first record is at or before the first one to visit.
    let wanted = options.visit_after.next();
    let start = segments.iter().rposition(|segment| segment.header.first_lsn <= wanted);
    let Some(start) = start else {
        return Err(Err(WalError::Gap {
            dir: dir.to_path_buf(),
            lsn: wanted,
            reason: format!("the oldest segment starts at lsn {}", segments[0].header.first_lsn),
        }));
    };
    if let Some(expected) = options.hash_at_visit_after {
        let first = &segments[start];
        if first.header.first_lsn == wanted && first.header.prev_hash != expected {
            return Err(Err(WalError::Corrupt {
                path: first.path.clone(),
                offset: 0,
                lsn: wanted,
                reason: "the snapshot's hash of the previous record does not match the segment \
                         header"
                    .to_string(),
            }));
        }
    }
    let mut expected_lsn = segments[start].header.first_lsn;
    let mut running_hash = segments[start].header.prev_hash;
    let mut last_timestamp = Timestamp(0);
    let newest_index = segments.len() - 1;
    // One buffer for every segment: reading into fresh memory would fault in every page again.
    let mut bytes = Vec::new();
    for (index, segment) in segments.iter().enumerate().skip(start) {
        let is_newest = index == newest_index;
        let header = &segment.header;
        let corrupt = |offset: u64, lsn: Lsn, reason: String| WalError::Corrupt {
            path: segment.path.clone(),
            offset,
            lsn,
            reason,
        };
        if header.first_lsn != expected_lsn {
            return Err(Err(corrupt(
                0,
                expected_lsn,
                format!(
                    "segment starts at lsn {} but the previous one ends before lsn {expected_lsn}",
                    header.first_lsn
                ),
            )));
        }
        if header.prev_hash != running_hash {
            return Err(Err(corrupt(
                0,
                expected_lsn,
                "segment header breaks the hash chain".to_string(),
            )));
        }
        // Bound what is read by what the header declares, before reading anything.
        let file_bytes =
            fs::metadata(&segment.path).map_err(io_error(&segment.path)).map_err(Err)?.len();
        if file_bytes > header.segment_bytes {
            return Err(Err(corrupt(
                0,
                expected_lsn,
                format!("the file is {file_bytes} bytes, its header says {}", header.segment_bytes),
            )));
        }
        bytes.clear();
        fs::File::open(&segment.path)
            .and_then(|mut file| std::io::Read::read_to_end(&mut file, &mut bytes))
            .map_err(io_error(&segment.path))
            .map_err(Err)?;
        let bytes = bytes.as_slice();
        let mut offset = SEGMENT_HEADER_BYTES;
        end.segments += 1;
        let tail = loop {
            let at = usize::try_from(offset).expect("segment offsets fit in usize");
            let rest = bytes.get(at..).unwrap_or(&[]);
            let frame = format::check_frame(rest);
            let frame_header = match frame {
                format::Frame::Valid(frame_header) => frame_header,
                format::Frame::End if !is_newest => {
                    if let Some(position) = rest.iter().position(|b| *b != 0) {
                        return Err(Err(corrupt(
                            offset + position as u64,
                            expected_lsn,
                            "non-zero bytes after the end of a finished segment".to_string(),
                        )));
                    }
                    break Tail::Clean;
                }
                _ if !is_newest => {
                    return Err(Err(corrupt(offset, expected_lsn, describe(frame))));
                }
                _ => match classify_tail(bytes, offset, expected_lsn, frame) {
                    Ok(tail) => break tail,
                    Err(reason) => return Err(Err(corrupt(offset, expected_lsn, reason))),
                },
            };
            let record = &rest[..frame_header.len as usize];
            let kind = RecordKind::from_u16(frame_header.kind);
            let problem = if frame_header.lsn != expected_lsn {
                Some(format!("record carries lsn {}", frame_header.lsn))
            } else if frame_header.prev_hash != running_hash {
                Some(
                    "hash chain broken: previous-hash field does not match the previous record"
                        .to_string(),
                )
            } else if kind.is_none() {
                Some(format!("unknown record kind {}", frame_header.kind))
            } else if !format::flags_are_zero(record) {
                Some("reserved flags are not zero".to_string())
            } else if frame_header.timestamp < last_timestamp {
                Some("timestamp goes backwards".to_string())
            } else if u64::from(frame_header.commit_index) >= frame_header.lsn.0 {
                Some("commit index points before lsn 1".to_string())
            } else {
                None
            };
            if let Some(reason) = problem {
                return Err(Err(corrupt(offset, expected_lsn, reason)));
            }
            let kind = kind.expect("checked above");
            let hash = format::record_hash(record);
            if frame_header.lsn == options.visit_after
                && let Some(expected) = options.hash_at_visit_after
                && expected != hash
            {
                return Err(Err(corrupt(
                    offset,
                    frame_header.lsn,
                    "the snapshot's hash of this record does not match the wal".to_string(),
                )));
            }
            if frame_header.lsn > options.visit_after
                && options.visit_until.is_none_or(|until| frame_header.lsn <= until)
            {
                let reference = RecordRef {
                    header: frame_header,
                    kind,
                    bytes: record,
                    segment: segment.sequence,
                    offset,
                    hash,
                };
                visit(&reference).map_err(Ok)?;
            }
            end.records += 1;
            running_hash = hash;
            last_timestamp = frame_header.timestamp;
            end.last_lsn = frame_header.lsn;
            end.last_timestamp = frame_header.timestamp;
            expected_lsn = frame_header.lsn.next();
            offset += u64::from(frame_header.len);
        };
        if is_newest {
            end.newest = Some(NewestSegment {
                sequence: segment.sequence,
                path: segment.path.clone(),
                header: *header,
                file_bytes,
                end_offset: offset,
                tail,
            });
        }
    }
    end.last_hash = running_hash;
    if end.last_lsn < options.visit_after {
        return Err(Err(WalError::Gap {
            dir: dir.to_path_buf(),
            lsn: options.visit_after,
            reason: format!("the wal ends at lsn {}", end.last_lsn),
        }));
    }
    Ok(end)
}

fn describe(frame: format::Frame) -> String {
    match frame {
        format::Frame::End => "unexpected end of records".to_string(),
        format::Frame::Valid(_) => "valid record".to_string(),
        format::Frame::BadLength(len) => format!("record length {len} is out of range"),
        format::Frame::Truncated(len) => {
            format!("record of {len} bytes runs past the end of the file")
        }
        format::Frame::BadChecksum(len) => format!("checksum mismatch in a record of {len} bytes"),
    }
}

/// Decides whether the damaged or missing record at `offset` of the newest segment is a torn
/// tail (docs/wal-format.md, "Torn tails"):
/// 1. no record written after the damaged one's commit group became durable may follow it,
///    since that would make the damaged record an acknowledged one;
/// 2. the damage must look like a write that stopped: a zero length, a record running past the
///    end of the file, or a whole zero sector inside the record (a sector never written).
///    A record with all its sectors present and a bad checksum was damaged in place.
fn classify_tail(
    bytes: &[u8],
    offset: u64,
    lsn: Lsn,
    frame: format::Frame,
) -> Result<Tail, String> {
    let start = usize::try_from(offset).expect("offsets fit in usize");
    let rest = bytes.get(start..).unwrap_or(&[]);
    let mut dirty_end =
        rest.iter().rposition(|b| *b != 0).map_or(offset, |p| offset + p as u64 + 1);
    // Look for a valid record anywhere after the damaged one. The cheap fields (length, LSN)
    // filter candidates before a checksum is computed.
    let scan_end = usize::try_from(dirty_end).expect("fits");
    for candidate in start + 1..scan_end {
        let Some(head) = bytes.get(candidate..candidate + 16) else { break };
        let len = format::record_len(head);
        let candidate_lsn = format::record_lsn(head);
        if len < format::RECORD_HEADER_BYTES as u32
            || len > RECORD_BYTES_MAX
            || candidate_lsn < lsn
            || candidate_lsn.0 - lsn.0 > u64::from(u32::MAX)
        {
            continue;
        }
        let format::Frame::Valid(header) = format::check_frame(&bytes[candidate..]) else {
            continue;
        };
        if header.commit_first_lsn() > lsn {
            return Err(format!(
                "damaged record is followed by lsn {} at offset {candidate}, written after \
                 lsn {lsn} was durable",
                header.lsn
            ));
        }
        dirty_end = dirty_end.max(candidate as u64 + u64::from(header.len));
    }
    let torn = match frame {
        format::Frame::End | format::Frame::Truncated(_) => true,
        format::Frame::BadLength(len) | format::Frame::BadChecksum(len) => {
            let len = u64::from(len.clamp(format::RECORD_HEADER_BYTES as u32, RECORD_BYTES_MAX));
            has_zero_sector(bytes, offset, offset + len)
        }
        format::Frame::Valid(_) => unreachable!("classify_tail is called for damaged frames"),
    };
    if !torn {
        return Err(format!("{}, and the record was not torn by a crash", describe(frame)));
    }
    if frame == format::Frame::End && dirty_end <= offset {
        return Ok(Tail::Clean);
    }
    Ok(Tail::Torn { offset, dirty_end: dirty_end.max(offset + 1) })
}

/// Whether a whole 512-byte sector overlapping `[from, to)` reads as zeros (bytes past the end
/// of the file read as zeros).
fn has_zero_sector(bytes: &[u8], from: u64, to: u64) -> bool {
    let first = from / SECTOR_BYTES;
    let last = to.div_ceil(SECTOR_BYTES);
    (first..last).any(|sector| {
        let begin = usize::try_from(sector * SECTOR_BYTES).unwrap_or(usize::MAX);
        let end = usize::try_from((sector + 1) * SECTOR_BYTES).unwrap_or(usize::MAX);
        bytes
            .get(begin.min(bytes.len())..end.min(bytes.len()))
            .is_some_and(|s| s.iter().all(|b| *b == 0))
    })
}
