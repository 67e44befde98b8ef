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

use super::format::{
    self, FORMAT_VERSION_GROUPS, FrameHeader, GroupTrailer, Hash, HeaderError, SECTOR_BYTES,
    SEGMENT_HEADER_BYTES, SegmentHeader,
};
use super::mark::DurableMark;
use super::segment;
use crate::codec::DecodeError;
use crate::ids::{Lsn, ShardId, Timestamp};
use crate::ledger::record::{Record, RecordKind};
use crate::limits::RECORD_BYTES_MAX;

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
    /// The durable mark (`wal::mark`): the WAL must reach its LSN, and the record there must
    /// have its hash.
    pub durable_mark: Option<DurableMark>,
    /// Read no segment after this sequence, and read the ones read as finished segments (the
    /// scrub, which leaves the newest segment, still being written, alone).
    pub last_segment: Option<u64>,
    /// Stop once the record at `visit_until` is visited, without checking what follows (a
    /// follower, which reads only what is durable and resumes at `ScanEnd::cursor`). The end
    /// then describes no newest segment.
    pub stop_at_until: bool,
    /// Start at this position, which an earlier scan of the same files ended at, instead of
    /// the start of the segment holding `visit_after + 1`: the records before it are not read
    /// again. Ignored when its segment is no longer there.
    pub resume: Option<Cursor>,
}

/// A place in a WAL a scan can resume at: the start of a commit group (of a record, in
/// segments of versions without groups), with what the chain says there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The segment's sequence.
    pub segment: u64,
    /// The byte offset in it.
    pub offset: u64,
    /// The LSN of the record there.
    pub lsn: Lsn,
    /// The hash of the record before it.
    pub prev_hash: Hash,
    /// The timestamp of the record before it.
    pub prev_timestamp: Timestamp,
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
            durable_mark: None,
            last_segment: None,
            stop_at_until: false,
            resume: None,
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
        /// Version 3: the trailer that closes the whole records kept before `offset`, and
        /// where it goes (after the zeroing). `None` when the group kept no record.
        trailer: Option<(u64, GroupTrailer)>,
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
    /// Where writing resumes once the tail is repaired: `end_offset`, or (version 3) the end
    /// of the group that the repair closes with a trailer.
    pub resume_offset: u64,
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
    /// Where the next scan resumes, for a scan with `stop_at_until`: the start of the commit
    /// group after the last record read, or of its own group if that one was not closed yet.
    pub cursor: Option<Cursor>,
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
    visit: impl FnMut(&RecordRef<'_>) -> Result<(), E>,
) -> Result<ScanEnd, Result<E, WalError>> {
    scan_paced(dir, options, &mut |_| {}, visit)
}

/// Bytes a paced scan reads between two calls of its pace.
pub const PACE_CHUNK_BYTES: usize = 1 << 20;

/// `scan`, reading segments `PACE_CHUNK_BYTES` at a time and calling `pace` with the bytes read
/// after each chunk (which may sleep to bound the read rate: the background scrub).
pub fn scan_paced<E>(
    dir: &Path,
    options: &ScanOptions,
    pace: &mut dyn FnMut(u64),
    mut visit: impl FnMut(&RecordRef<'_>) -> Result<(), E>,
) -> Result<ScanEnd, Result<E, WalError>> {
    let (mut segments, abandoned) = read_segments(dir, options).map_err(Err)?;
    let sealed_only = options.last_segment.is_some();
    if let Some(last) = options.last_segment {
        segments.retain(|segment| segment.sequence <= last);
    }
    let mut end = ScanEnd {
        last_lsn: Lsn::ZERO,
        last_hash: format::HASH_ZERO,
        last_timestamp: Timestamp(0),
        newest: None,
        abandoned,
        segments: 0,
        records: 0,
        first_segment: segments.first().map(|segment| segment.sequence),
        cursor: None,
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
    // Resuming: where an earlier scan stopped, if its segment is still there and it is not
    // past the first record to visit.
    let resume = options.resume.and_then(|cursor| {
        let index = segments.iter().position(|segment| segment.sequence == cursor.segment)?;
        (cursor.lsn <= wanted && cursor.lsn >= segments[index].header.first_lsn)
            .then_some((index, cursor))
    });
    let start = resume.map_or(start, |(index, _)| index);
    if let Some(expected) = options.hash_at_visit_after
        && resume.is_none()
    {
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
    if let Some((_, cursor)) = resume {
        (expected_lsn, running_hash, last_timestamp) =
            (cursor.lsn, cursor.prev_hash, cursor.prev_timestamp);
        (end.last_lsn, end.last_hash, end.last_timestamp) =
            (Lsn(cursor.lsn.0 - 1), cursor.prev_hash, cursor.prev_timestamp);
    }
    let newest_index = segments.len() - 1;
    // One buffer for every segment: reading into fresh memory would fault in every page again.
    let mut buffer = Vec::new();
    // The start of the commit group being read (of the record, without groups): where a
    // scan that stops inside it resumes.
    let mut boundary: Option<Cursor> = None;
    'segments: for (index, segment) in segments.iter().enumerate().skip(start) {
        let is_newest = index == newest_index && !sealed_only;
        let header = &segment.header;
        let resumed = resume.filter(|_| index == start).map(|(_, cursor)| cursor);
        let corrupt = |offset: u64, lsn: Lsn, reason: String| WalError::Corrupt {
            path: segment.path.clone(),
            offset,
            lsn,
            reason,
        };
        if resumed.is_none() && header.first_lsn != expected_lsn {
            return Err(Err(corrupt(
                0,
                expected_lsn,
                format!(
                    "segment starts at lsn {} but the previous one ends before lsn {expected_lsn}",
                    header.first_lsn
                ),
            )));
        }
        if resumed.is_none() && header.prev_hash != running_hash {
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
        // A follower maps the segment: it reads from where it resumes to the durable LSN,
        // a small part of a segment per call, and the pages it never touches are never read.
        let mapped;
        let bytes: &[u8] = if options.stop_at_until {
            mapped = map_segment(&segment.path).map_err(io_error(&segment.path)).map_err(Err)?;
            &mapped[..]
        } else {
            buffer.clear();
            read_paced(&segment.path, &mut buffer, pace)
                .map_err(io_error(&segment.path))
                .map_err(Err)?;
            buffer.as_slice()
        };
        let groups = header.version >= FORMAT_VERSION_GROUPS;
        let mut offset = resumed.map_or(format::records_offset(header.version), |c| c.offset);
        // Version 3: the commit group being read (its start offset and first LSN); `None`
        // between groups.
        let mut group: Option<(u64, Lsn)> = None;
        end.segments += 1;
        let tail = loop {
            if let Some((group_start, group_first)) = group {
                // After a record: the group ends here if its trailer closes it.
                let expected = GroupTrailer {
                    first_lsn: group_first,
                    last_lsn: Lsn(expected_lsn.0 - 1),
                    group_start,
                    last_hash: running_hash,
                };
                let trailer_at = format::trailer_offset(offset);
                let at = usize::try_from(trailer_at).expect("fits");
                let found = bytes.get(at..).and_then(GroupTrailer::decode);
                if found == Some(expected) {
                    offset = format::group_end(offset);
                    group = None;
                    continue;
                }
                // The same trailer with another hash: the group's last record was changed
                // after it was written (the trailer of a group that goes on may sit in the same
                // place, but then it names another last record).
                if found.is_some_and(|trailer| {
                    trailer.last_hash != expected.last_hash
                        && trailer == (GroupTrailer { last_hash: trailer.last_hash, ..expected })
                }) {
                    return Err(Err(corrupt(
                        trailer_at,
                        expected.last_lsn,
                        "hash chain broken: the commit trailer holds another hash for the \
                         group's last record"
                            .to_string(),
                    )));
                }
            }
            // Here: a group's start when none is open (a record's, without groups).
            let here = Cursor {
                segment: segment.sequence,
                offset,
                lsn: expected_lsn,
                prev_hash: running_hash,
                prev_timestamp: last_timestamp,
            };
            if options.stop_at_until
                && options.visit_until.is_some_and(|until| expected_lsn > until)
            {
                end.cursor = if group.is_some() { boundary } else { Some(here) };
                break 'segments;
            }
            let at = usize::try_from(offset).expect("segment offsets fit in usize");
            let rest = bytes.get(at..).unwrap_or(&[]);
            let frame = format::check_frame(rest);
            let frame_header = match frame {
                format::Frame::Valid(frame_header) => frame_header,
                format::Frame::End if !is_newest && group.is_none() => {
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
                    let reason = if group.is_some() && frame == format::Frame::End {
                        "a commit group ends without its trailer".to_string()
                    } else {
                        describe(frame)
                    };
                    return Err(Err(corrupt(offset, expected_lsn, reason)));
                }
                _ => {
                    let classified = if groups {
                        let open = OpenGroup {
                            start: group.map_or(offset, |(start, _)| start),
                            first_lsn: group.map_or(expected_lsn, |(_, first)| first),
                            prev_hash: running_hash,
                            last_timestamp,
                        };
                        classify_group_tail(bytes, offset, expected_lsn, &open)
                    } else {
                        classify_tail(bytes, offset, expected_lsn, frame)
                    };
                    match classified {
                        Ok(tail) => break tail,
                        Err(reason) => return Err(Err(corrupt(offset, expected_lsn, reason))),
                    }
                }
            };
            if groups {
                let first_lsn = group.map_or(frame_header.lsn, |(_, first)| first);
                if frame_header.lsn >= first_lsn
                    && u64::from(frame_header.commit_index) != frame_header.lsn.0 - first_lsn.0
                {
                    return Err(Err(corrupt(
                        offset,
                        expected_lsn,
                        format!(
                            "commit index {} does not match the record's place in its group",
                            frame_header.commit_index
                        ),
                    )));
                }
                if group.is_none() {
                    boundary = Some(here);
                }
                group.get_or_insert((offset, frame_header.lsn));
            } else {
                boundary = Some(here);
            }
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
            if let Some(mark) = options.durable_mark
                && mark.lsn == frame_header.lsn
                && mark.hash != hash
            {
                return Err(Err(corrupt(
                    offset,
                    frame_header.lsn,
                    "the durable mark holds another hash for this record: it was changed after \
                     it was made durable"
                        .to_string(),
                )));
            }
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
                resume_offset: match tail {
                    Tail::Torn { trailer: Some(_), .. } => format::group_end(offset),
                    _ => offset,
                },
                tail,
            });
        }
    }
    end.last_hash = running_hash;
    if let Some(mark) = options.durable_mark
        && end.last_lsn < mark.lsn
    {
        return Err(Err(WalError::Gap {
            dir: dir.to_path_buf(),
            lsn: end.last_lsn.next(),
            reason: format!(
                "the durable mark says lsn {} was durable, but the wal ends at lsn {}: its newest \
                 records were cut off or zeroed",
                mark.lsn, end.last_lsn
            ),
        }));
    }
    if end.last_lsn < options.visit_after {
        return Err(Err(WalError::Gap {
            dir: dir.to_path_buf(),
            lsn: options.visit_after,
            reason: format!("the wal ends at lsn {}", end.last_lsn),
        }));
    }
    Ok(end)
}

/// Maps a segment file read-only.
fn map_segment(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = fs::File::open(path)?;
    #[expect(unsafe_code, reason = "memmap2 maps files through an unsafe constructor")]
    // SAFETY: a segment is never truncated or rewritten in place while it is read: it is
    // created zero-filled at its full size under a temporary name and renamed, then written
    // only past its durable records, which a follower never reads beyond; retention unlinks
    // whole files, which leaves a mapping valid.
    let mapped = unsafe { memmap2::Mmap::map(&file) }?;
    Ok(mapped)
}

/// Reads a whole file into `bytes`, `PACE_CHUNK_BYTES` at a time, calling `pace` after each.
pub fn read_paced(
    path: &Path,
    bytes: &mut Vec<u8>,
    pace: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    loop {
        let before = bytes.len();
        let read = (&mut file).take(PACE_CHUNK_BYTES as u64).read_to_end(bytes)?;
        if read == 0 {
            return Ok(());
        }
        debug_assert_eq!(bytes.len() - before, read);
        pace(read as u64);
    }
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

/// Decides whether the damaged or missing record at `offset` of a version 1 or 2 newest segment
/// is a torn tail (docs/wal-format.md, "Torn tails in versions 1 and 2"):
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
    Ok(Tail::Torn { offset, dirty_end: dirty_end.max(offset + 1), trailer: None })
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

/// The commit group a version 3 scan stopped in.
struct OpenGroup {
    /// Offset of its first record (where a group that kept nothing is truncated).
    start: u64,
    /// LSN of its first record.
    first_lsn: Lsn,
    /// Hash of the last whole record before the failure.
    prev_hash: Hash,
    /// Timestamp of that record.
    last_timestamp: Timestamp,
}

/// Decides whether the newest segment of format version 3 ends in a torn write at `offset`
/// (docs/wal-format.md, "Torn tails"): the first record (or trailer) that is not whole there.
///
/// A group is written with one `pwrite` per batch and closed by its trailer just before its
/// fdatasync; a device persists whole sectors or nothing. So a write that a crash cut short
/// leaves the group's sectors either as written or zero, and never its trailer without the
/// records before it. The damage at `offset` is a torn write when:
/// 1. no valid trailer at the end of a later sector covers `lsn` or a later record, and no
///    valid record of a later group follows (either would prove the group was written whole,
///    so it was acknowledged);
/// 2. and either the group's records end here and only its trailer is missing or damaged
///    (the bytes before the trailer's place are zero), or the record here is as a torn write
///    leaves it: every field of its header that lies in bytes still present holds what the
///    writer wrote (length in range, this LSN, its commit index, the previous hash…), and at
///    least one of its sectors is missing (all zero, or past the end of the file).
///
/// Anything else (a record whose sectors are all present but whose checksum fails, a header
/// whose present bytes are not what the writer wrote, non-zero garbage where a header must be)
/// is damage, and is reported rather than truncated: it may hold an acknowledged record.
fn classify_group_tail(
    bytes: &[u8],
    offset: u64,
    lsn: Lsn,
    group: &OpenGroup,
) -> Result<Tail, String> {
    let start = usize::try_from(offset).expect("offsets fit in usize");
    let rest = bytes.get(start..).unwrap_or(&[]);
    let dirty_end = rest.iter().rposition(|b| *b != 0).map_or(offset, |p| offset + p as u64 + 1);
    // 1. Proof that the group (or a later one) was written whole.
    let mut sector_end = (offset + 1).next_multiple_of(SECTOR_BYTES);
    while sector_end <= dirty_end.next_multiple_of(SECTOR_BYTES) {
        let at = usize::try_from(sector_end - format::TRAILER_BYTES as u64).expect("fits");
        if sector_end - format::TRAILER_BYTES as u64 >= offset
            && let Some(trailer) = bytes.get(at..).and_then(GroupTrailer::decode)
            && trailer.last_lsn >= lsn
        {
            return Err(format!(
                "a commit trailer at offset {at} shows that lsn {lsn} to {} were written whole",
                trailer.last_lsn
            ));
        }
        sector_end += SECTOR_BYTES;
    }
    later_group_record(bytes, offset, dirty_end, group.first_lsn)?;
    let trailer_at = format::trailer_offset(offset);
    let kept = offset > group.start;
    let closing = GroupTrailer {
        first_lsn: group.first_lsn,
        last_lsn: Lsn(lsn.0 - 1),
        group_start: group.start,
        last_hash: group.prev_hash,
    };
    let torn = |trailer: bool| {
        if !trailer && dirty_end <= offset {
            return Tail::Clean;
        }
        Tail::Torn {
            offset,
            dirty_end: dirty_end.max(offset),
            trailer: trailer.then_some((trailer_at, closing)),
        }
    };
    // 2a. The group's records end here; its trailer is missing or damaged.
    let padding_zero = (offset..trailer_at).all(|index| byte_at(bytes, index) == 0);
    let trailer_like = byte_range(bytes, trailer_at, 4) == format::TRAILER_MAGIC
        || !header_as_written(bytes, dirty_end, offset, lsn, group);
    if kept && padding_zero && (trailer_at > offset || trailer_like) {
        if let Some(found) = GroupTrailer::decode(&byte_range(bytes, trailer_at, 64))
            && found != closing
        {
            return Err(format!("the trailer at offset {trailer_at} does not match its group"));
        }
        return Ok(torn(true));
    }
    // 2b. A record cut short by the crash.
    if !header_as_written(bytes, dirty_end, offset, lsn, group) {
        return Err(format!(
            "{}: the bytes where lsn {lsn} must start are not what a torn write leaves",
            describe(format::check_frame(rest))
        ));
    }
    let len = if any_missing(bytes, dirty_end, offset, offset + 4) {
        format::RECORD_HEADER_BYTES as u64
    } else {
        u64::from(format::record_len(&byte_range(bytes, offset, 4)))
    };
    if !any_missing(bytes, dirty_end, offset, offset + len) {
        return Err(format!(
            "{}, and every sector of the record is present: damaged in place",
            describe(format::check_frame(rest))
        ));
    }
    Ok(torn(kept))
}

/// Fails if a valid record of a group after the one starting at `group_first` lies in
/// `(offset, dirty_end)`: a later group is written only after the earlier one is durable.
fn later_group_record(
    bytes: &[u8],
    offset: u64,
    dirty_end: u64,
    group_first: Lsn,
) -> Result<(), String> {
    let start = usize::try_from(offset).expect("fits");
    let scan_end = usize::try_from(dirty_end).expect("fits");
    for candidate in start + 1..scan_end {
        let Some(head) = bytes.get(candidate..candidate + 16) else { break };
        let len = format::record_len(head);
        if len < format::RECORD_HEADER_BYTES as u32
            || len > RECORD_BYTES_MAX
            || format::record_lsn(head) <= group_first
        {
            continue;
        }
        if let format::Frame::Valid(header) = format::check_frame(&bytes[candidate..])
            && header.commit_first_lsn() > group_first
        {
            return Err(format!(
                "damaged record is followed by lsn {} at offset {candidate}, written after \
                 lsn {group_first}'s group was durable",
                header.lsn
            ));
        }
    }
    Ok(())
}

/// Whether the byte at `index` is missing: past the end of the file, at or after
/// `dirty_end` (the zeros after the last byte a write reached, which need not be
/// sector-aligned for a write torn inside a sector), or in a 512-byte sector (counted from the
/// start of the file) that reads as all zeros.
fn is_missing(bytes: &[u8], dirty_end: u64, index: u64) -> bool {
    let Ok(at) = usize::try_from(index) else { return true };
    if at >= bytes.len() || index >= dirty_end {
        return true;
    }
    let sector = index / SECTOR_BYTES * SECTOR_BYTES;
    let begin = usize::try_from(sector).expect("fits");
    let end = usize::try_from(sector + SECTOR_BYTES).expect("fits").min(bytes.len());
    bytes[begin..end].iter().all(|b| *b == 0)
}

/// Whether any byte of `[from, to)` is missing (see `is_missing`), sector by sector.
fn any_missing(bytes: &[u8], dirty_end: u64, from: u64, to: u64) -> bool {
    if from < to && (to > bytes.len() as u64 || to > dirty_end) {
        return true;
    }
    let mut sector = from / SECTOR_BYTES * SECTOR_BYTES;
    while sector < to {
        if is_missing(bytes, dirty_end, sector.max(from)) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

fn byte_at(bytes: &[u8], index: u64) -> u8 {
    usize::try_from(index).ok().and_then(|at| bytes.get(at)).copied().unwrap_or(0)
}

/// `len` bytes from `offset`, reading zeros past the end of the file.
fn byte_range(bytes: &[u8], offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|index| byte_at(bytes, offset + index)).collect()
}

/// Whether every field of the record header at `offset` whose bytes are all present holds what
/// the writer would have written there for record `lsn` of `group`.
fn header_as_written(
    bytes: &[u8],
    dirty_end: u64,
    offset: u64,
    lsn: Lsn,
    group: &OpenGroup,
) -> bool {
    let header = byte_range(bytes, offset, format::RECORD_HEADER_BYTES);
    let (len, header_lsn, timestamp, kind, flags, commit_index, prev_hash) =
        format::raw_header(&header);
    let checks = [
        (format::RECORD_HEADER_BYTES as u32..=RECORD_BYTES_MAX).contains(&len),
        header_lsn == lsn,
        timestamp >= group.last_timestamp,
        RecordKind::from_u16(kind).is_some(),
        flags == 0,
        u64::from(commit_index) == lsn.0 - group.first_lsn.0,
        prev_hash == group.prev_hash,
    ];
    format::RECORD_FIELD_RANGES.iter().zip(checks).all(|((from, to), holds)| {
        holds
            || (*from as u64..*to as u64).any(|index| is_missing(bytes, dirty_end, offset + index))
    })
}
