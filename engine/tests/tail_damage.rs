//! Exhaustive damage to the tail of a WAL: every single-bit flip, every truncation offset and
//! every single-sector corruption (garbage or zeros) over the last eight records and the
//! commit groups they belong to; and every prefix of a torn, unacknowledged group.
//!
//! Guards against an acknowledged record dropped silently: before format version 3, one flipped
//! bit in the newest record's length made recovery take the record for a torn write and zero
//! it. Now recovery must either rebuild exactly the acknowledged state, or refuse naming an LSN
//! of the damaged group; while a real torn write (a prefix of a group on disk, the rest zero)
//! must still be truncated, never refused.
//!
//! How: one data directory of 40 records in commit groups of 1 to 4 records, stopped cleanly
//! (so its durable mark names the last record). Each case damages a copy of the newest segment
//! in place, recovers, and restores the segment's bytes. Scratch files live on tmpfs when there
//! is one: recovery's repairs fsync, and there are tens of thousands of cases.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ledger_engine::ledger::LedgerConfig;
use ledger_engine::recovery::{RecoveryError, ShardPaths, recover_shard};
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::wal::format;
use ledger_engine::wal::mark::{MARK_FILE, MarkWriter};
use ledger_engine::wal::reader::{self, ScanOptions, WalError};
use ledger_engine::{Engine, EngineConfig, Limits, Lsn, Response, ShardId, Timestamp};

const SEGMENT_BYTES: u64 = 64 * 1024;
/// Records of the tail that every kind of damage is applied to.
const TAIL_RECORDS: usize = 8;

#[derive(Debug, Clone)]
struct Placed {
    lsn: u64,
    offset: u64,
    len: u64,
    /// LSNs of the first and last record of its commit group, and where the group ends
    /// (after its trailer).
    group: (u64, u64),
    group_end: u64,
}

struct Fixture {
    dir: tempfile::TempDir,
    segment: PathBuf,
    original: Vec<u8>,
    records: Vec<Placed>,
    /// The state the undamaged directory recovers to.
    state: Vec<u8>,
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn engine_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.limits = Limits { segment_bytes: SEGMENT_BYTES, ..Limits::test_min() };
    config.tuning.snapshot_on_shutdown = false;
    config
}

fn recover(dir: &Path) -> Result<ledger_engine::recovery::Recovered, RecoveryError> {
    let config = engine_config(dir);
    let ledger = LedgerConfig {
        limits: config.limits.clone(),
        ..LedgerConfig::new(ShardId::new(0).unwrap(), 1)
    };
    let meta = ledger_engine::datadir::read_meta(dir).unwrap();
    recover_shard(&ShardPaths::new(dir, 0), ledger, meta.cluster_id, None)
}

fn named_lsn(error: &RecoveryError) -> Option<u64> {
    match error {
        RecoveryError::Wal(WalError::Corrupt { lsn, .. } | WalError::Gap { lsn, .. })
        | RecoveryError::Replay { lsn, .. } => Some(lsn.0),
        _ => None,
    }
}

impl Fixture {
    fn build() -> Fixture {
        let dir = scratch();
        let engine = Engine::open(engine_config(dir.path())).unwrap();
        let loyalty = Loyalty::define(&engine);
        let mut key = 0u128;
        for size in [1, 3, 2, 4, 1, 2, 3, 1, 4, 2, 1, 3, 2, 1, 4, 3, 2, 1].into_iter().cycle() {
            if key >= 40 {
                break;
            }
            let earns = (0..size)
                .map(|_| {
                    key += 1;
                    loyalty.earn(key, (key % 5) as u64, 3 + (key % 7) as u64)
                })
                .collect();
            let responses = execute_all(&engine, earns);
            assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
        }
        engine.shutdown();

        let wal = ShardPaths::new(dir.path(), 0).wal;
        let mut records: Vec<Placed> = Vec::new();
        let mut segment = None;
        reader::scan(&wal, &ScanOptions::all(), |record| {
            let first = record.header.commit_first_lsn().0;
            records.push(Placed {
                lsn: record.header.lsn.0,
                offset: record.offset,
                len: u64::from(record.header.len),
                group: (first, record.header.lsn.0),
                group_end: format::group_end(record.offset + u64::from(record.header.len)),
            });
            segment = Some(record.segment);
            Ok::<(), ()>(())
        })
        .unwrap();
        // Every record learns its group's last record and end.
        for index in (0..records.len()).rev() {
            if let Some(next) = records.get(index + 1).cloned()
                && next.group.0 == records[index].group.0
            {
                records[index].group.1 = next.group.1;
                records[index].group_end = next.group_end;
            }
        }
        let segment = wal.join(ledger_engine::wal::segment::segment_file_name(segment.unwrap()));
        let tail = &records[records.len() - TAIL_RECORDS..];
        assert!(tail.iter().all(|p| p.offset > 4096), "the tail is in one segment");
        let groups: std::collections::BTreeSet<u64> = tail.iter().map(|p| p.group.0).collect();
        assert!(groups.len() >= 3, "the tail spans several commit groups: {groups:?}");
        let original = std::fs::read(&segment).unwrap();
        let state = recover(dir.path()).unwrap().ledger.encode_state_bytes();
        Fixture { dir, segment, original, records, state }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn total(&self) -> u64 {
        self.records.last().unwrap().lsn
    }

    fn tail(&self) -> &[Placed] {
        &self.records[self.records.len() - TAIL_RECORDS..]
    }

    /// The bytes every case damages: from the first tail record to the end of the last group.
    fn region(&self) -> std::ops::Range<u64> {
        self.tail()[0].offset..self.records.last().unwrap().group_end
    }

    /// The LSNs a refusal may name for damage at `offset`: those of the group the byte belongs
    /// to, or the first one after it.
    fn lsns_at(&self, offset: u64) -> RangeInclusive<u64> {
        let place = self
            .records
            .iter()
            .find(|p| offset < p.group_end && p.offset <= offset.max(p.offset))
            .filter(|p| offset >= self.group_start(p))
            .unwrap_or_else(|| panic!("offset {offset} is in no group"));
        place.group.0..=place.group.1 + 1
    }

    fn group_start(&self, place: &Placed) -> u64 {
        self.records.iter().find(|p| p.lsn == place.group.0).unwrap().offset
    }

    fn write_segment(&self, bytes: &[u8]) {
        std::fs::write(&self.segment, bytes).unwrap();
    }

    fn restore(&self) {
        self.write_segment(&self.original);
    }

    /// Recovers and checks the outcome: the exact acknowledged state, or a refusal naming an
    /// LSN in `lsns`. Never a shorter ledger.
    fn check(&self, what: &str, lsns: RangeInclusive<u64>) -> Outcome {
        let outcome = match recover(self.path()) {
            Ok(recovered) => {
                assert_eq!(
                    recovered.ledger.lsn(),
                    Lsn(self.total()),
                    "{what}: an acknowledged record was dropped"
                );
                assert!(recovered.ledger.encode_state_bytes() == self.state, "{what}: state");
                // A repair is durable and leaves a sound WAL.
                let again = recover(self.path()).unwrap_or_else(|e| panic!("{what}: again: {e}"));
                assert!(again.report.torn_tail.is_none(), "{what}");
                assert_eq!(again.ledger.lsn(), Lsn(self.total()), "{what}");
                Outcome::Recovered
            }
            Err(error) => {
                let lsn = named_lsn(&error).unwrap_or_else(|| panic!("{what}: {error}"));
                assert!(lsns.contains(&lsn), "{what}: names lsn {lsn}, not in {lsns:?}: {error}");
                Outcome::Refused
            }
        };
        self.restore();
        outcome
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Recovered,
    Refused,
}

trait StateBytes {
    fn encode_state_bytes(&self) -> Vec<u8>;
}

impl StateBytes for ledger_engine::ledger::Ledger {
    fn encode_state_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.encode_state(&mut bytes);
        bytes
    }
}

#[test]
fn every_single_bit_flip_in_the_tail_is_recovered_exactly_or_refused_with_its_lsn() {
    let fixture = Fixture::build();
    let mut outcomes = [0u32; 2];
    for offset in fixture.region() {
        for bit in 0..8 {
            let mut bytes = fixture.original.clone();
            bytes[offset as usize] ^= 1 << bit;
            fixture.write_segment(&bytes);
            let outcome =
                fixture.check(&format!("bit {bit} of byte {offset}"), fixture.lsns_at(offset));
            outcomes[outcome as usize] += 1;
        }
    }
    // Flips in record bytes are refused; flips in padding are harmless, and flips in a
    // trailer whose group is otherwise whole are repaired: both kinds of outcome happen.
    assert!(outcomes.iter().all(|count| *count > 0), "{outcomes:?}");
}

#[test]
fn every_truncation_in_the_tail_is_refused_when_the_durable_mark_covers_it() {
    let fixture = Fixture::build();
    let region = fixture.region();
    for cut in region.start..=region.end {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fixture.segment)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // The first record the cut takes away is the one named.
        let lost = fixture
            .records
            .iter()
            .find(|p| p.offset + p.len > cut)
            .map_or(fixture.total() + 1, |p| p.lsn);
        let outcome = fixture.check(&format!("cut at {cut}"), lost..=lost);
        let whole = fixture.records.iter().all(|p| p.offset + p.len <= cut);
        assert_eq!(outcome == Outcome::Recovered, whole, "cut at {cut}");
    }
}

#[test]
fn every_sector_of_garbage_or_zeros_in_the_tail_is_recovered_exactly_or_refused() {
    let fixture = Fixture::build();
    let region = fixture.region();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut sector = region.start / 512 * 512;
    while sector < region.end {
        for fill in ["garbage", "zeros"] {
            let mut bytes = fixture.original.clone();
            for byte in &mut bytes[sector as usize..sector as usize + 512] {
                *byte = if fill == "zeros" {
                    0
                } else {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                };
            }
            fixture.write_segment(&bytes);
            let from = fixture.lsns_at(sector.max(region.start));
            let to = fixture.lsns_at((sector + 511).min(region.end - 1));
            fixture.check(&format!("{fill} over sector {sector}"), *from.start()..=*to.end());
        }
        sector += 512;
    }
}

/// A crash while the last group was being written: every prefix of the group on disk, the
/// rest zero, with the durable mark (which is written only after a commit) before the group.
#[test]
fn every_prefix_of_a_torn_unacknowledged_group_is_truncated_to_its_whole_records() {
    let fixture = Fixture::build();
    let last = fixture.records.last().unwrap().clone();
    let group_start = fixture.group_start(&last);
    let before = fixture.records.iter().find(|p| p.lsn == last.group.0 - 1).unwrap();
    // The mark names the record before the group, as the last mark before the crash would.
    let wal = ShardPaths::new(fixture.path(), 0).wal;
    let mut hash = None;
    reader::scan(&wal, &ScanOptions::all(), |record| {
        if record.header.lsn == Lsn(before.lsn) {
            hash = Some(record.hash);
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    std::fs::remove_file(wal.join(MARK_FILE)).unwrap();
    let meta = ledger_engine::datadir::read_meta(fixture.path()).unwrap();
    MarkWriter::open(&wal, ShardId::new(0).unwrap(), meta.cluster_id)
        .unwrap()
        .write(Lsn(before.lsn), hash.unwrap(), Timestamp(1))
        .unwrap();

    for written in group_start..last.group_end {
        let mut bytes = fixture.original.clone();
        bytes[written as usize..last.group_end as usize].fill(0);
        fixture.write_segment(&bytes);
        // Records the zeros left intact (a record's own last bytes may be zeros already).
        let intact = |p: &&Placed| {
            let range = p.offset as usize..(p.offset + p.len) as usize;
            bytes[range.clone()] == fixture.original[range]
        };
        let whole = fixture.records.iter().take_while(intact).count();
        let recovered = recover(fixture.path())
            .unwrap_or_else(|e| panic!("{written} bytes of the group written: {e}"));
        assert_eq!(recovered.ledger.lsn(), Lsn(whole as u64), "{written} bytes written");
        let again = recover(fixture.path()).unwrap();
        assert!(again.report.torn_tail.is_none());
        assert_eq!(again.ledger.lsn(), Lsn(whole as u64));
        fixture.restore();
    }
}

/// What the durable mark cannot see: records written after the last mark. A crash leaves the
/// mark up to `MARK_INTERVAL` behind, and a file cut within those records reads as a torn
/// write. docs/wal-format.md states this limit.
#[test]
fn a_cut_after_the_durable_mark_reads_as_a_torn_write() {
    let fixture = Fixture::build();
    std::fs::remove_file(ShardPaths::new(fixture.path(), 0).wal.join(MARK_FILE)).unwrap();
    let tail = fixture.tail()[0].clone();
    let cut = tail.offset + tail.len / 2;
    std::fs::OpenOptions::new().write(true).open(&fixture.segment).unwrap().set_len(cut).unwrap();
    let recovered = recover(fixture.path()).unwrap();
    assert_eq!(recovered.ledger.lsn(), Lsn(tail.lsn - 1));
}
