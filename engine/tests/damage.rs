//! Damaged files: torn tails, flipped bits, tampering, missing segments.
//!
//! Guards against the two ways a WAL reader goes wrong: refusing to start after an ordinary
//! crash (a torn tail must be repaired, not reported), and starting after real damage (a bad
//! record followed by good ones, a broken hash chain or a missing segment must stop start-up,
//! naming the file, offset and LSN, because serving would mean losing acknowledged writes).

use std::path::{Path, PathBuf};

use ledger_engine::ledger::LedgerConfig;
use ledger_engine::recovery::{RecoveryError, ShardPaths, recover_shard};
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::wal::format;
use ledger_engine::wal::reader::{self, ScanOptions, WalError};
use ledger_engine::{Engine, EngineConfig, Limits, Lsn, OpenError, Response, ShardId};

const SEGMENT_BYTES: u64 = 9 * 1024;

/// Where one record sits.
#[derive(Debug, Clone)]
struct Placed {
    lsn: u64,
    segment: PathBuf,
    offset: u64,
    len: u64,
}

fn engine_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    // Small segments (room for one batch of one record at most): the WAL spans several.
    config.limits =
        Limits { segment_bytes: SEGMENT_BYTES, batch_records_max: 1, ..Limits::test_min() };
    config.tuning.snapshot_on_shutdown = false;
    config
}

fn ledger_config(engine: &EngineConfig) -> LedgerConfig {
    LedgerConfig { limits: engine.limits.clone(), ..LedgerConfig::new(ShardId::new(0).unwrap(), 1) }
}

/// A data directory with `earns` transactions, each its own commit group, over several
/// segments.
fn build(earns: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_config(dir.path())).unwrap();
    let loyalty = Loyalty::define(&engine);
    for key in 1..=earns {
        let response = engine.execute(loyalty.earn(u128::from(key), key % 7, 10));
        assert!(matches!(response, Response::Committed(_)));
    }
    engine.shutdown();
    dir
}

fn records(dir: &Path) -> Vec<Placed> {
    let wal = ShardPaths::new(dir, 0).wal;
    let mut placed = Vec::new();
    reader::scan(&wal, &ScanOptions::all(), |record| {
        placed.push(Placed {
            lsn: record.header.lsn.0,
            segment: wal.join(ledger_engine::wal::segment::segment_file_name(record.segment)),
            offset: record.offset,
            len: u64::from(record.header.len),
        });
        Ok::<(), ()>(())
    })
    .unwrap();
    placed
}

fn recover(dir: &Path) -> Result<ledger_engine::recovery::Recovered, RecoveryError> {
    let config = engine_config(dir);
    let meta = ledger_engine::datadir::read_meta(dir).unwrap();
    recover_shard(&ShardPaths::new(dir, 0), ledger_config(&config), meta.cluster_id, None)
}

/// What a crash leaves: the durable mark behind the newest records (here: none at all), so a
/// cut-off tail is the unacknowledged end of the WAL, not missing acknowledged records.
fn forget_mark(dir: &Path) {
    let mark = ShardPaths::new(dir, 0).wal.join(ledger_engine::wal::mark::MARK_FILE);
    std::fs::remove_file(mark).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn corrupt_lsn(error: &RecoveryError) -> Option<(u64, String)> {
    match error {
        RecoveryError::Wal(WalError::Corrupt { lsn, .. }) => Some((lsn.0, error.to_string())),
        _ => None,
    }
}

#[test]
fn truncating_the_newest_segment_anywhere_in_its_last_records_recovers_the_whole_ones() {
    let template = build(30);
    let placed = records(template.path());
    let newest = placed.last().unwrap().segment.clone();
    let in_newest: Vec<&Placed> = placed.iter().filter(|p| p.segment == newest).collect();
    assert!(in_newest.len() >= 3, "the last records share the newest segment");
    let last_three = &in_newest[in_newest.len() - 3..];
    let from = last_three[0].offset;
    let to = last_three[2].offset + last_three[2].len;
    let scratch = tempfile::tempdir().unwrap();
    for cut in from..=to {
        let dir = scratch.path().join(format!("cut-{cut}"));
        ledger_engine::testing::copy_dir(template.path(), &dir).unwrap();
        let segment = dir.join(newest.strip_prefix(template.path()).unwrap());
        std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut).unwrap();
        forget_mark(&dir);

        let recovered = recover(&dir).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole =
            placed.iter().filter(|p| p.segment != newest || p.offset + p.len <= cut).count();
        assert_eq!(recovered.ledger.lsn(), Lsn(whole as u64), "cut at {cut}");
        // Each record is its own commit group here: a cut where a group starts leaves a clean
        // tail; anywhere else something is repaired (a torn record zeroed, or a trailer
        // written to close the whole records of the cut group).
        let at_boundary = in_newest.iter().any(|p| p.offset == cut);
        assert_eq!(recovered.report.torn_tail.is_some(), !at_boundary, "cut at {cut}");
        // The repair is durable: the next start finds a clean tail and a full-size segment.
        let again = recover(&dir).unwrap();
        assert!(again.report.torn_tail.is_none());
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), SEGMENT_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn writing_resumes_after_a_torn_tail_and_survives_another_restart() {
    let template = build(12);
    let placed = records(template.path());
    let last = placed.last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(template.path(), dir.path()).unwrap();
    let segment = dir.path().join(last.segment.strip_prefix(template.path()).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(last.offset + 7)
        .unwrap();
    forget_mark(dir.path());

    let engine = Engine::open(engine_config(dir.path())).unwrap();
    assert!(engine.recovery_reports()[0].torn_tail.is_some());
    let loyalty = Loyalty::define(&engine);
    // The torn earn (key 12) was never acknowledged: its retry commits it now, once.
    let responses =
        execute_all(&engine, vec![loyalty.earn(12, 12 % 7, 10), loyalty.earn(13, 1, 5)]);
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))), "{responses:?}");
    engine.shutdown();
    let engine = Engine::open(engine_config(dir.path())).unwrap();
    assert!(engine.recovery_reports()[0].torn_tail.is_none());
    assert_eq!(records(dir.path()).len(), placed.len() + 1);
    assert!(matches!(engine.execute(loyalty.earn(12, 12 % 7, 10)), Response::Duplicate(_)));
}

#[test]
fn a_flipped_byte_in_an_earlier_record_stops_start_up_with_its_lsn() {
    let template = build(60);
    let placed = records(template.path());
    let newest = placed.last().unwrap().segment.clone();
    // One record in an older segment and one in the newest, each followed by others.
    let older = placed.iter().find(|p| p.segment != newest && p.lsn > 5).unwrap().clone();
    let in_newest: Vec<&Placed> = placed.iter().filter(|p| p.segment == newest).collect();
    let earlier_in_newest = (*in_newest[in_newest.len() - 3]).clone();
    let scratch = tempfile::tempdir().unwrap();
    for target in [older, earlier_in_newest] {
        for byte in 0..target.len {
            let dir = scratch.path().join(format!("flip-{}-{byte}", target.lsn));
            ledger_engine::testing::copy_dir(template.path(), &dir).unwrap();
            let segment = dir.join(target.segment.strip_prefix(template.path()).unwrap());
            flip(&segment, target.offset + byte);
            let error = recover(&dir).map(|_| ()).unwrap_err();
            let (lsn, message) = corrupt_lsn(&error).unwrap_or_else(|| panic!("{error}"));
            assert_eq!(lsn, target.lsn, "byte {byte}: {message}");
            let file_name = segment.file_name().unwrap().to_str().unwrap().to_string();
            assert!(message.contains(&file_name), "{message}");
            assert!(message.contains(&format!("offset {}", target.offset)), "{message}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_is_damage_not_a_torn_write() {
    let template = build(10);
    let last = records(template.path()).last().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(template.path(), dir.path()).unwrap();
    let segment = dir.path().join(last.segment.strip_prefix(template.path()).unwrap());
    flip(&segment, last.offset + last.len - 3);
    let error = recover(dir.path()).map(|_| ()).unwrap_err();
    let (lsn, message) = corrupt_lsn(&error).unwrap();
    assert_eq!(lsn, last.lsn);
    // The group's trailer, after the record, proves the group was written whole.
    assert!(message.contains("written whole"), "{message}");
    // Engine start-up refuses too, with the same error.
    let error = Engine::open(engine_config(dir.path())).unwrap_err();
    assert!(matches!(error, OpenError::Recovery { shard: 0, .. }), "{error}");
}

#[test]
fn a_rewritten_record_with_a_fixed_checksum_breaks_the_hash_chain() {
    let template = build(20);
    let placed = records(template.path());
    let target = placed[10].clone();
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(template.path(), dir.path()).unwrap();
    let segment = dir.path().join(target.segment.strip_prefix(template.path()).unwrap());
    let mut bytes = std::fs::read(&segment).unwrap();
    let record = &mut bytes[target.offset as usize..(target.offset + target.len) as usize];
    // Tamper with the amount (the last 8 bytes of an earn's single posting) and re-seal the
    // record with its original links, as a forger who knows the format would.
    let format::Frame::Valid(header) = format::check_frame(record) else { panic!("valid record") };
    let end = record.len();
    record[end - 8] = record[end - 8].wrapping_add(100);
    format::seal(record, &header.prev_hash, header.commit_index);
    assert!(matches!(format::check_frame(record), format::Frame::Valid(_)));
    std::fs::write(&segment, &bytes).unwrap();

    // The record's own commit trailer holds its true hash: the forgery is found at the record.
    let error = recover(dir.path()).map(|_| ()).unwrap_err();
    let (lsn, message) = corrupt_lsn(&error).unwrap();
    assert_eq!(lsn, target.lsn, "{message}");
    assert!(message.contains("hash chain"), "{message}");
}

#[test]
fn a_missing_middle_segment_stops_start_up() {
    let template = build(120);
    let segments =
        ledger_engine::wal::segment::list_segments(&ShardPaths::new(template.path(), 0).wal)
            .unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(template.path(), dir.path()).unwrap();
    let wal = ShardPaths::new(dir.path(), 0).wal;
    let (middle, _) = segments[1];
    std::fs::remove_file(wal.join(ledger_engine::wal::segment::segment_file_name(middle))).unwrap();
    let error = recover(dir.path()).map(|_| ()).unwrap_err();
    assert!(
        matches!(error, RecoveryError::Wal(WalError::MissingSegment { before, after, .. }) if before == segments[0].0 && after == segments[2].0),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&ledger_engine::wal::segment::segment_file_name(segments[0].0)),
        "{message}"
    );
}

#[test]
fn a_damaged_header_of_an_older_segment_stops_start_up() {
    let template = build(120);
    let segments =
        ledger_engine::wal::segment::list_segments(&ShardPaths::new(template.path(), 0).wal)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(template.path(), dir.path()).unwrap();
    let path = ShardPaths::new(dir.path(), 0)
        .wal
        .join(ledger_engine::wal::segment::segment_file_name(segments[0].0));
    flip(&path, 30);
    let error = recover(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(error, RecoveryError::Wal(WalError::BadHeader { .. })), "{error}");
}

/// A commit group of many records, with a sector that never reached the disk.
#[test]
fn a_zero_sector_inside_the_last_group_is_torn_only_if_its_trailer_is_missing_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path());
    config.limits = Limits { segment_bytes: 1 << 20, batch_records_max: 64, ..Limits::test_min() };
    let engine = Engine::open(config.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let responses =
        execute_all(&engine, (1..=40).map(|k| loyalty.earn(k, k as u64 % 5, 3)).collect());
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
    engine.shutdown();
    let placed = records(dir.path());
    let group_start = placed[4].offset;
    let group_end = placed.last().unwrap().offset + placed.last().unwrap().len;
    assert!(group_end - group_start > 3 * 512, "the group spans several sectors");
    let sector = group_start.div_ceil(512) * 512 + 512;
    let first_hit = placed.iter().find(|p| p.offset + p.len > sector).unwrap().lsn;

    let template = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(dir.path(), template.path()).unwrap();
    let segment_of = |root: &Path| root.join(placed[5].segment.strip_prefix(dir.path()).unwrap());
    let zero = |root: &Path, from: u64, to: u64| {
        let segment = segment_of(root);
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[from as usize..to as usize].fill(0);
        std::fs::write(&segment, bytes).unwrap();
    };
    let scratch = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let path = scratch.path().join(name);
        ledger_engine::testing::copy_dir(template.path(), &path).unwrap();
        path
    };

    // A hole alone, with the group's trailer in place: the group was written whole, so the
    // zeros are damage to acknowledged records, not a torn write.
    let hole = copy("hole");
    zero(&hole, sector, sector + 512);
    let error = recover(&hole).map(|_| ()).unwrap_err();
    let (lsn, message) = corrupt_lsn(&error).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(lsn, first_hit);
    assert!(message.contains("written whole"), "{message}");

    // The hole and every sector from a later one on missing, trailer included: a write cut
    // short, whose sectors reached the disk out of order. The whole records before the hole
    // are kept and their group closed; the rest is zeroed.
    let torn = copy("torn");
    forget_mark(&torn);
    zero(&torn, sector, sector + 512);
    zero(&torn, sector + 1024, format::group_end(group_end));
    let recovered = recover(&torn).unwrap();
    assert_eq!(recovered.ledger.lsn(), Lsn(first_hit - 1));
    assert!(recovered.report.torn_tail.is_some());
    let again = recover(&torn).unwrap();
    assert!(again.report.torn_tail.is_none());
    assert_eq!(again.ledger.lsn(), Lsn(first_hit - 1));

    // The same torn group followed by a later, durable group: the damaged records were
    // acknowledged.
    let later = copy("later");
    let engine = Engine::open(EngineConfig { data_dir: later.clone(), ..config }).unwrap();
    engine.execute(loyalty.earn(1_000, 1, 1));
    engine.shutdown();
    forget_mark(&later);
    zero(&later, sector, sector + 512);
    zero(&later, sector + 1024, format::group_end(group_end));
    let error = recover(&later).map(|_| ()).unwrap_err();
    let (lsn, message) = corrupt_lsn(&error).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(lsn, first_hit);
    assert!(message.contains("written whole") || message.contains("written after"), "{message}");
}
