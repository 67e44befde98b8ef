//! `ledger-wal` as auditors run it: on a data directory written by a real engine, sound and
//! damaged, checking output and exit codes (0 sound, 1 problems, 2 usage, 3 unreadable).

use std::path::Path;
use std::process::{Command, Output};

use ledger_engine::loyalty::explain::Explanation;
use ledger_engine::snapshot::{SNAPSHOT_HEADER_BYTES, SnapshotHeader};
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::{Engine, EngineConfig, Limits, Response};

fn ledger_wal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ledger-wal")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two shards with earns, a cross-shard transfer, holds, a reversal, a snapshot in the middle
/// and one at shutdown.
fn build(dir: &Path) {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let mut commands: Vec<_> = (0..20).map(|c| loyalty.earn(c as u128 + 1, c, 100)).collect();
    commands.push(loyalty.hold(100, 3, 40, 60_000_000_000));
    let responses = execute_all(&engine, commands);
    assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
    engine.snapshot_now().unwrap();
    let shard_of = |c| engine.shard_of_customer(ledger_engine::CustomerId(c)).index();
    let other = (1..20).find(|c| shard_of(*c) != shard_of(0)).unwrap();
    assert!(matches!(engine.execute(loyalty.transfer(200, 0, other, 30)), Response::Committed(_)));
    execute_all(&engine, (0..20).map(|c| loyalty.redeem(c as u128 + 300, c, 10)).collect());
    let earn = engine.execute(loyalty.earn(400, 5, 60)).committed().unwrap();
    assert!(matches!(engine.execute(loyalty.reverse(401, earn.tx_id)), Response::Committed(_)));
    engine.shutdown();
}

#[test]
fn a_sound_directory_verifies_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let data = dir.path().to_str().unwrap();
    let output = ledger_wal(&["verify", "--data-dir", data]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("verify: sound"), "{text}");
    assert!(text.contains("shard 0: ok") && text.contains("shard 1: ok"), "{text}");

    let output = ledger_wal(&["verify", "--data-dir", data, "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report["ok"], true);
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let checked: usize =
        shards.iter().map(|s| s["snapshots_checked"].as_array().unwrap().len()).sum();
    assert!(checked >= 2, "the mid-run and shutdown snapshots were compared: {report}");

    let output =
        ledger_wal(&["dump", "--data-dir", data, "--shard", "0", "--json", "--limit", "6"]);
    assert_eq!(output.status.code(), Some(0));
    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["kind"], "asset_define");
    assert_eq!(lines[0]["details"]["code"], "PTS");
    assert_eq!(lines[4]["kind"], "transaction");
    assert_eq!(lines[4]["details"]["postings"][0]["debit"], "house:issuance");
    let lsns: Vec<u64> = lines.iter().map(|line| line["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_damaged_record_is_reported_with_its_lsn_and_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let segment = dir.path().join("shard-000/wal/00000000000000000001.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    // The 6th record of shard 0 (after the 4 definitions and one earn), found by the reader.
    let mut offset = 0usize;
    ledger_engine::wal::reader::scan(
        &dir.path().join("shard-000/wal"),
        &ledger_engine::wal::reader::ScanOptions::all(),
        |record| {
            if record.header.lsn == ledger_engine::Lsn(6) {
                offset = record.offset as usize;
            }
            Ok::<(), ()>(())
        },
    )
    .unwrap();
    assert!(offset > 0);
    bytes[offset + 70] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let output = ledger_wal(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("lsn 6"), "{text}");
    assert!(text.contains(&format!("offset {offset}")), "{text}");
    assert!(text.contains("verify: problems found"), "{text}");
}

#[test]
fn a_snapshot_that_disagrees_with_the_wal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let snapshots =
        ledger_engine::snapshot::find_snapshots(&dir.path().join("shard-000/snapshots")).unwrap();
    let (_, path) = snapshots.last().unwrap();
    credit_101(path);
    let output =
        ledger_wal(&["verify", "--data-dir", dir.path().to_str().unwrap(), "--shard", "0"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("differs from the state the wal gives")
            || stdout(&output).contains("invalid snapshot"),
        "{}",
        stdout(&output)
    );
}

/// Turns a credit of 100 in the snapshot into 101 and fixes both checksums: the file is well
/// formed, and only the comparison with the WAL can catch it. Answers the byte's offset.
fn credit_101(path: &Path) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let hundred = 100u128.to_le_bytes();
    let at =
        (SNAPSHOT_HEADER_BYTES..bytes.len() - 16).find(|i| bytes[*i..*i + 16] == hundred).unwrap();
    bytes[at] = 101;
    let mut header = SnapshotHeader::decode(&bytes).unwrap();
    header.body_crc = crc32(&bytes[SNAPSHOT_HEADER_BYTES..]);
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(&header.encode());
    std::fs::write(path, bytes).unwrap();
    at
}

fn crc32(bytes: &[u8]) -> u32 {
    // IEEE CRC-32, bitwise: independent of the engine's implementation.
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn usage_and_unreadable_directories_have_their_exit_codes() {
    assert_eq!(ledger_wal(&["verify"]).status.code(), Some(2));
    assert_eq!(ledger_wal(&["frobnicate"]).status.code(), Some(2));
    let missing = ledger_wal(&["verify", "--data-dir", "/nonexistent/ledger"]);
    assert_eq!(missing.status.code(), Some(3));
    let empty = tempfile::tempdir().unwrap();
    let no_meta = ledger_wal(&["verify", "--data-dir", empty.path().to_str().unwrap()]);
    assert_eq!(no_meta.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&no_meta.stderr).contains("meta"));
    let help = ledger_wal(&["--help"]);
    assert!(stdout(&help).contains("Exit codes"));
}

/// The independent checker in `docs/tools/walcheck.py`, written from `docs/wal-format.md`
/// alone, reads what the engine writes: the spec is enough to read the WAL.
#[test]
fn the_spec_alone_is_enough_to_read_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tools/walcheck.py");
    let check = |wal: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(wal)
            .output()
            .expect("python3 runs (it is part of the CI machine)")
    };
    for shard in ["shard-000", "shard-001"] {
        let wal = dir.path().join(shard).join("wal");
        let output = check(&wal);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        let summary = stdout(&output).lines().last().unwrap().to_string();
        // The same number of records as the engine's own reader counts.
        let mut records = 0;
        ledger_engine::wal::reader::scan(
            &wal,
            &ledger_engine::wal::reader::ScanOptions::all(),
            |_| {
                records += 1;
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        assert_eq!(summary, format!("{records} records; sound"));
    }
    // Damage in an earlier record: the checker finds it too.
    let segment = dir.path().join("shard-000/wal/00000000000000000001.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[4096 + 40] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let output = check(&dir.path().join("shard-001/wal"));
    assert_eq!(output.status.code(), Some(0));
    let output = check(segment.parent().unwrap());
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("bad record at offset 4096, lsn 1"), "{text}");
}

/// After retention deleted old segments, verify starts from the oldest snapshot that covers
/// them and says so.
#[test]
fn a_directory_with_deleted_segments_verifies_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(1);
    config.limits = Limits { segment_bytes: 40 * 1024, ..Limits::test_min() };
    config.tuning.wal_retention = ledger_engine::WalRetention::DeleteCovered;
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    for round in 0..6u128 {
        execute_all(
            &engine,
            (0..60).map(|k| loyalty.earn(round * 1_000 + k + 1, k as u64 % 7, 2)).collect(),
        );
        engine.snapshot_now().unwrap();
    }
    engine.shutdown();
    assert!(!dir.path().join("shard-000/wal/00000000000000000001.wal").exists());
    let output = ledger_wal(&["verify", "--data-dir", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let shard = &report["shards"][0];
    assert!(shard["replayed_from_lsn"].as_u64().unwrap() > 1, "{report}");
    assert!(shard["notes"][0].as_str().unwrap().contains("deleted by retention"), "{report}");
}

/// The checked-in data directories of every format version verify as sound, their snapshots
/// compared with the replayed state in their own version's encoding.
#[test]
fn the_format_fixtures_of_every_version_verify() {
    for version in [1, 2, 3, 4] {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../engine/tests/fixtures/v{version}"));
        let dir = tempfile::tempdir().unwrap();
        ledger_engine::testing::copy_dir(&fixture, dir.path()).unwrap();
        let output = ledger_wal(&["verify", "--data-dir", dir.path().to_str().unwrap(), "--json"]);
        assert_eq!(output.status.code(), Some(0), "v{version}: {}", stdout(&output));
        let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        for shard in report["shards"].as_array().unwrap() {
            let checked = shard["snapshots_checked"].as_array().unwrap().len();
            assert_eq!(checked, 1, "v{version}: {report}");
        }
    }
}

/// One shard on Black Friday 2026 under the documented example rules: purchases at the
/// flagship store (both promotions), a plain one, and a basket with an excluded line.
/// Returns each purchase's answer and the engine's explanation of it, from memory.
fn build_loyalty(dir: &Path) -> Vec<(ledger_engine::Committed, Explanation)> {
    use ledger_engine::clock::ManualClock;
    use ledger_engine::loyalty::calendar::{Date, start_of};

    let start = start_of(Date { year: 2026, month: 11, day: 27 });
    let clock = std::sync::Arc::new(ManualClock::new(ledger_engine::Timestamp(
        start.0 + 10 * 3_600 * 1_000_000_000,
    )));
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.limits = Limits::test_min();
    config.clock = clock;
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(ledger_engine::testing::loyalty::example_rules(), accounts, None).unwrap();
    let purchases = [
        loyalty.purchase(1, 42, 7, &[(20, 2_500), (40, 1_000)]),
        loyalty.purchase(2, 42, 3, &[(10, 1_999)]),
        loyalty.purchase(3, 43, 7, &[(30, 12_000), (10, 800), (50, 900)]),
    ];
    let explained = execute_all(&engine, purchases.to_vec())
        .into_iter()
        .map(|response| {
            let committed = response.committed().unwrap();
            let query = ledger_engine::Query::Explain { tx: committed.tx_id };
            match engine.execute(ledger_engine::Command::Read(query)) {
                Response::Explanation(explanation) => (committed, *explanation),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    engine.shutdown();
    explained
}

#[test]
fn explain_tells_from_the_wal_alone_what_the_engine_told_the_till() {
    let dir = tempfile::tempdir().unwrap();
    let explained = build_loyalty(dir.path());
    let data = dir.path().to_str().unwrap();
    for (purchase, memory) in &explained {
        let tx = purchase.tx_id.0.to_string();
        let output = ledger_wal(&["explain", "--data-dir", data, &tx, "--json"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        let outcome = &memory.purchase.outcome;
        assert_eq!(json["tx_id"], purchase.tx_id.0);
        assert_eq!(json["lsn"], purchase.lsn.0);
        assert_eq!(json["points"], purchase.amount, "what the till was told");
        assert_eq!(json["rules_version"], outcome.rules_version);
        assert_eq!(json["tier_before"]["name"], memory.tier_before.as_str());
        for (field, value) in [
            ("base", outcome.base),
            ("category", outcome.category),
            ("tier_points", outcome.tier_points),
            ("cap_cut", outcome.cap_cut),
            ("earned", outcome.earned),
            ("bonus", outcome.bonus),
            ("cashback", outcome.cashback),
        ] {
            assert_eq!(json[field], value, "{field} of {tx}");
        }
        let promotions: Vec<(&str, u64)> = json["promotions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["points"].as_u64().unwrap()))
            .collect();
        let expected: Vec<(&str, u64)> =
            memory.promotions.iter().map(|p| (p.name.as_str(), p.points)).collect();
        assert_eq!(promotions, expected);
    }
    let committed: Vec<_> = explained.iter().map(|(committed, _)| committed).collect();
    // The first purchase: 2 × 25 electronics points, doubled on Black Friday, the flagship
    // store's 250 bonus; the gift card earns nothing.
    let first = committed[0].tx_id.0.to_string();
    let output = ledger_wal(&["explain", "--data-dir", data, &first]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("black-friday") && text.contains("flagship-opening"), "{text}");
    assert!(text.contains("line  2: category    40 amount         1000\n"), "{text}");
    assert!(text.contains("rules version 1"), "{text}");

    // A transaction id that is no purchase: exit 1.
    let missing = (committed[2].tx_id.0 + 1_000).to_string();
    let output = ledger_wal(&["explain", "--data-dir", data, &missing]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no purchase"));
}

#[test]
fn verify_reports_a_purchase_its_rules_do_not_give() {
    let dir = tempfile::tempdir().unwrap();
    build_loyalty(dir.path());
    let data = dir.path().to_str().unwrap();
    let output = ledger_wal(&["verify", "--data-dir", data]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));

    let altered = tempfile::tempdir().unwrap();
    ledger_engine::testing::loyalty::rewrite_wal(dir.path(), altered.path(), |record| {
        if let ledger_engine::ledger::record::Body::Purchase(purchase) = &mut record.body
            && purchase.customer == 43
        {
            purchase.outcome.cashback += 1;
        }
    });
    let output = ledger_wal(&["verify", "--data-dir", altered.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("its rule version gives"), "{text}");
    assert_eq!(text.matches("problem:").count(), 1, "one purchase: {text}");
}

/// Opens a directory this process used before. The lock (flock) of the earlier open can
/// outlive it for a moment: a `ledger-wal` another test is spawning holds a copy of the
/// descriptor between its fork and its exec.
fn reopen(dir: &Path) -> Engine {
    for _ in 0..100 {
        let mut config = EngineConfig::new(dir);
        config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
        match Engine::open(config) {
            Err(ledger_engine::OpenError::DataDir(
                ledger_engine::datadir::DataDirError::Locked(_),
            )) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
    panic!("{} stays locked", dir.display());
}

#[test]
fn stats_count_every_record_once_by_segment_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // More records, in batches: several 64 KiB segments per shard, commit groups of many sizes.
    {
        let engine = reopen(dir.path());
        let loyalty = Loyalty::define(&engine);
        for batch in 0..40u128 {
            let commands =
                (0..50u128).map(|i| loyalty.earn(10_000 + batch * 100 + i, (i % 20) as u64, 1));
            execute_all(&engine, commands.collect());
        }
        engine.shutdown();
    }
    let data = dir.path().to_str().unwrap();
    let output = ledger_wal(&["stats", "--data-dir", data, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let verify = ledger_wal(&["verify", "--data-dir", data, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&verify).trim()).unwrap();
    for shard in 0..2u64 {
        let segments: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["scope"] == "segment" && l["shard"] == shard).collect();
        let total = lines.iter().find(|l| l["scope"] == "shard" && l["shard"] == shard).unwrap();
        assert!(segments.len() >= 2, "64 KiB segments: {segments:?}");
        // The segments' records add up to the shard's, which are the WAL's, LSN 1 to its end.
        let records: u64 = segments.iter().map(|s| s["records"].as_u64().unwrap()).sum();
        assert_eq!(total["records"].as_u64().unwrap(), records);
        let last = report["shards"][shard as usize]["last_lsn"].as_u64().unwrap();
        assert_eq!(
            (total["first_lsn"].as_u64().unwrap(), total["last_lsn"].as_u64().unwrap()),
            (1, last)
        );
        assert_eq!(records, last, "every record once");
        for pair in segments.windows(2) {
            assert_eq!(
                pair[0]["last_lsn"].as_u64().unwrap() + 1,
                pair[1]["first_lsn"].as_u64().unwrap(),
                "segments follow each other"
            );
        }
        let kinds: u64 =
            total["kinds"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(kinds, records);
        let groups = total["commit_groups"].as_u64().unwrap();
        assert!(groups >= 1 && groups <= records, "{total}");
        assert!(total["assets"]["PTS"].as_u64().unwrap() > 0, "{total}");
        assert!(total["bytes"].as_u64().unwrap() > records * 64, "{total}");
    }
    assert!(lines.iter().any(|l| l["kinds"]["hold_create"] == 1), "the hold is counted");
    // For people: a table, numbers grouped.
    let output = ledger_wal(&["stats", "--data-dir", data, "--shard", "1"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("records") && text.contains("all") && text.contains("PTS"), "{text}");
    assert!(!text.contains("│ 0 "), "only shard 1: {text}");
    // A shard the directory does not have, a directory that is not one.
    assert_eq!(ledger_wal(&["stats", "--data-dir", data, "--shard", "9"]).status.code(), Some(3));
    let missing = dir.path().join("nothing");
    assert_eq!(
        ledger_wal(&["stats", "--data-dir", missing.to_str().unwrap()]).status.code(),
        Some(3)
    );
}

#[test]
fn stats_read_the_wal_of_every_format_version() {
    for version in 1..=10 {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../engine/tests/fixtures/v{version}"));
        let dir = tempfile::tempdir().unwrap();
        ledger_engine::testing::copy_dir(&fixture, dir.path()).unwrap();
        let output = ledger_wal(&["stats", "--data-dir", dir.path().to_str().unwrap(), "--json"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "v{version}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout(&output).lines() {
            let stats: serde_json::Value = serde_json::from_str(line).unwrap();
            let (first, last) =
                (stats["first_lsn"].as_u64().unwrap(), stats["last_lsn"].as_u64().unwrap());
            assert_eq!(stats["records"].as_u64().unwrap(), last - first + 1, "v{version}: {stats}");
        }
    }
}

#[test]
fn balance_as_of_an_lsn_or_a_time_is_what_the_engine_held_then() {
    use ledger_engine::loyalty::calendar::rfc3339;
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(2);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(ledger_engine::loyalty::RuleSet::flat(1, 1), accounts, None).unwrap();
    let shard = engine.shard_of_customer(ledger_engine::CustomerId(3)).index() as usize;
    let points =
        |engine: &Engine| engine.account_total(loyalty.customer(3)).unwrap().balance_posted();
    let issuance =
        |engine: &Engine| engine.account_total(loyalty.issuance()).unwrap().balance_posted();
    // Three moments: after earns, after a redemption and more earns, at the end.
    execute_all(&engine, (0..10).map(|c| loyalty.earn(c as u128 + 1, c, 100)).collect());
    let first =
        (engine.stats()[shard].durable_lsn, engine.now(), points(&engine), issuance(&engine));
    std::thread::sleep(std::time::Duration::from_millis(20));
    execute_all(&engine, vec![loyalty.redeem(20, 3, 30), loyalty.earn(21, 3, 7)]);
    let second = (engine.stats()[shard].durable_lsn, engine.now(), points(&engine));
    std::thread::sleep(std::time::Duration::from_millis(20));
    execute_all(&engine, (0..10).map(|c| loyalty.earn(c as u128 + 100, c, 5)).collect());
    let end = (points(&engine), issuance(&engine));
    engine.shutdown();
    assert!(first.0 < second.0 && first.2 != second.2 && second.2 != end.0);

    let data = dir.path().to_str().unwrap();
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["balance", "--data-dir", data, "--json"];
        all.extend_from_slice(args);
        let output = ledger_wal(&all);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let points_of = |lines: &[serde_json::Value]| -> i128 {
        let account = lines.iter().find(|l| l["address"] == "customer:3:points").unwrap();
        account["balance"].as_str().unwrap().parse().unwrap()
    };
    let lots_of = |lines: &[serde_json::Value]| -> i128 {
        lines
            .iter()
            .filter(|l| l["scope"] == "lot")
            .map(|l| i128::from(l["remaining"].as_u64().unwrap()))
            .sum()
    };
    for (args, expected) in [
        (vec!["--customer", "3", "--as-of-lsn", &first.0.to_string()], first.2),
        (vec!["--customer", "3", "--as-of", &rfc3339(first.1)], first.2),
        (vec!["--customer", "3", "--as-of-lsn", &second.0.to_string()], second.2),
        (vec!["--customer", "3", "--as-of", &rfc3339(second.1)], second.2),
        (vec!["--customer", "3"], end.0),
    ] {
        let found = lines(&args);
        assert_eq!(points_of(&found), expected, "{args:?}");
        assert_eq!(lots_of(&found), expected, "{args:?}: the lots add up to the balance");
        assert!(found.iter().any(|l| l["scope"] == "member" && l["customer"] == 3), "{found:?}");
    }
    // A house account: a slice on every shard, adding up to the engine's total.
    for (args, expected) in [
        (vec!["--account", "house:issuance", "--as-of", &rfc3339(first.1)], first.3),
        (vec!["--account", "house:issuance"], end.1),
    ] {
        let found = lines(&args);
        assert_eq!(found.len(), 2, "one slice per shard: {found:?}");
        let total: i128 =
            found.iter().map(|l| l["balance"].as_str().unwrap().parse::<i128>().unwrap()).sum();
        assert_eq!(total, expected, "{args:?}");
    }
    // For people: tables. Usage errors: an LSN for an account of every shard, a bad time.
    let text = stdout(&ledger_wal(&["balance", "--data-dir", data, "--customer", "3"]));
    assert!(text.contains("customer:3:points") && text.contains("remaining"), "{text}");
    let code = |args: &[&str]| ledger_wal(args).status.code();
    assert_eq!(
        code(&["balance", "--data-dir", data, "--account", "house:issuance", "--as-of-lsn", "3"]),
        Some(2)
    );
    assert_eq!(
        code(&["balance", "--data-dir", data, "--customer", "3", "--as-of", "yesterday"]),
        Some(2)
    );
    assert_eq!(code(&["balance", "--data-dir", data]), Some(2));
}

#[test]
fn history_lists_every_record_of_a_customer_in_order_with_its_movements() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let data = dir.path().to_str().unwrap();
    let output = ledger_wal(&["history", "--data-dir", data, "5", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let records: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    // Customer 5: earned 100, redeemed 10, earned 60, that earn reversed.
    let kinds: Vec<&str> = records.iter().map(|r| r["record_kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["transaction", "transaction", "transaction", "reversal"], "{records:?}");
    let lsns: Vec<u64> = records.iter().map(|r| r["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|pair| pair[0] < pair[1]), "in order: {lsns:?}");
    let posted: i128 = records
        .iter()
        .flat_map(|r| r["moves"].as_array().unwrap().iter())
        .filter(|m| m["account"] == "customer:5:points" && m["effect"] == "posted")
        .map(|m| m["amount"].as_str().unwrap().parse::<i128>().unwrap())
        .sum();
    assert_eq!(posted, 100 - 10 + 60 - 60);
    // Customer 3's hold: a reservation of 40 on their points.
    let output = ledger_wal(&["history", "--data-dir", data, "3", "--json"]);
    let held = stdout(&output).lines().any(|line| {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        record["record_kind"] == "hold_create"
            && record["moves"][0]["effect"] == "pending"
            && record["moves"][0]["amount"] == "-40"
    });
    assert!(held, "{}", stdout(&output));
    // For people: a table; a customer the WAL never saw: exit 1.
    let text = stdout(&ledger_wal(&["history", "--data-dir", data, "5"]));
    assert!(text.contains("reversal") && text.contains("customer 5"), "{text}");
    assert_eq!(ledger_wal(&["history", "--data-dir", data, "999"]).status.code(), Some(1));
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn dump_filters_select_exactly_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let data = dir.path().to_str().unwrap();
    let dump = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["dump", "--data-dir", data, "--json"];
        all.extend_from_slice(args);
        let output = ledger_wal(&all);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        json_lines(&output)
    };
    let everything = dump(&[]);
    let shards: std::collections::BTreeSet<u64> =
        everything.iter().map(|line| line["shard"].as_u64().unwrap()).collect();
    assert_eq!(shards.len(), 2, "every shard by default");
    let key = |line: &serde_json::Value| (line["shard"].as_u64(), line["lsn"].as_u64());
    let keys = |lines: &[serde_json::Value]| lines.iter().map(key).collect::<Vec<_>>();
    let expect = |args: &[&str], keep: &dyn Fn(&serde_json::Value) -> bool| {
        let found = dump(args);
        let wanted: Vec<_> = everything.iter().filter(|line| keep(line)).cloned().collect();
        assert!(!wanted.is_empty(), "{args:?} selects something");
        assert_eq!(keys(&found), keys(&wanted), "{args:?}");
        assert!(found.len() < everything.len(), "{args:?} leaves something out");
    };
    // The selections a full dump gives, filtered here.
    expect(&["--kind", "hold_create"], &|l| l["kind"] == "hold_create");
    expect(&["--kind", "reversal", "--kind", "transfer_in"], &|l| {
        l["kind"] == "reversal" || l["kind"] == "transfer_in"
    });
    expect(&["--shard", "0", "--from-lsn", "5", "--to-lsn", "7"], &|l| {
        l["shard"] == 0 && (5..=7).contains(&l["lsn"].as_u64().unwrap())
    });
    let terminal_id = everything.iter().find_map(|l| l["details"]["terminal"].as_u64()).unwrap();
    let terminal = terminal_id.to_string();
    expect(&["--terminal", &terminal], &|l| l["details"]["terminal"].as_u64() == Some(terminal_id));
    let mut times: Vec<&str> =
        everything.iter().map(|l| l["timestamp"].as_str().unwrap()).collect();
    times.sort_unstable();
    let (from, to) = (times[times.len() / 4], times[times.len() / 2]);
    expect(&["--from-time", from, "--to-time", to], &|l| {
        let time = l["timestamp"].as_str().unwrap();
        from <= time && time <= to
    });
    expect(&["--account", "customer:3:points"], &|l| {
        l["details"].to_string().contains("customer:3:points")
    });
    // A customer: what `history` lists, and the reversal of their earn names the earn.
    let history = json_lines(&ledger_wal(&["history", "--data-dir", data, "5", "--json"]));
    let of_five = dump(&["--customer", "5"]);
    assert_eq!(
        of_five.iter().map(|l| l["lsn"].as_u64()).collect::<Vec<_>>(),
        history.iter().map(|l| l["lsn"].as_u64()).collect::<Vec<_>>()
    );
    let reversal = of_five.iter().find(|l| l["kind"] == "reversal").unwrap();
    let original = reversal["details"]["original"].as_u64().unwrap().to_string();
    let of_tx = dump(&["--tx", &original]);
    let kinds: Vec<&str> = of_tx.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["transaction", "reversal"], "the earn and what named it");
    assert_eq!(dump(&["--limit", "3"]).len(), 3);
    // For people: one line per record; bad filters are usage errors.
    let text = stdout(&ledger_wal(&["dump", "--data-dir", data, "--kind", "hold_create"]));
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("hold_create"), "{text}");
    let bad = ledger_wal(&["dump", "--data-dir", data, "--kind", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hold_create"), "lists the kinds");
    assert_eq!(
        ledger_wal(&["dump", "--data-dir", data, "--account", "nowhere"]).status.code(),
        Some(2),
        "an address that does not parse is a usage error"
    );
    assert_eq!(
        ledger_wal(&["verify", "--data-dir", data, "--chain-only", "--from-lsn", "3"])
            .status
            .code(),
        Some(2),
        "a chain-only check has no range to start from"
    );
}

/// One shard... two shards with a programme on a manual clock: purchases with receipts at
/// store 7, one settled, one settled then partly refunded, one failed, the rest pending; then
/// an hour later redemptions and more purchases. Answers the liability figures at the first
/// moment (with its time) and at the end, and the purchases' ids by receipt.
struct Programme {
    middle: (ledger_engine::Timestamp, ledger_engine::ledger::liability::ShardLiability),
    end: ledger_engine::ledger::liability::ShardLiability,
    purchases: Vec<(String, ledger_engine::TxId, u64)>,
    balances: Vec<(u64, i128)>,
}

fn build_programme(dir: &Path) -> Programme {
    use ledger_engine::clock::ManualClock;
    use ledger_engine::loyalty::calendar::{Date, start_of};
    const HOUR: u64 = 3_600 * 1_000_000_000;
    let start = start_of(Date { year: 2026, month: 11, day: 27 });
    let clock =
        std::sync::Arc::new(ManualClock::new(ledger_engine::Timestamp(start.0 + 10 * HOUR)));
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    config.clock = clock.clone();
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(ledger_engine::testing::loyalty::example_rules(), accounts, None).unwrap();
    let mut purchases = Vec::new();
    for customer in 1..=8u64 {
        let receipt = format!("R-{customer}");
        let spend = 1_000 * customer + 99;
        let command = loyalty.purchase_with_receipt(
            customer as u128,
            customer,
            (7, &receipt),
            &[(20, spend, false)],
        );
        let committed = engine.execute(command).committed().unwrap();
        purchases.push((receipt, committed.tx_id, spend));
    }
    let ok =
        |response: Response| assert!(matches!(response, Response::Committed(_)), "{response:?}");
    ok(engine.execute(loyalty.settle(100, purchases[0].1)));
    ok(engine.execute(loyalty.settle(101, purchases[1].1)));
    ok(engine.execute(loyalty.refund(102, purchases[1].1, 500)));
    ok(engine.execute(loyalty.fail(103, purchases[2].1)));
    let middle = (engine.now(), engine.liability().unwrap());
    clock.advance(HOUR);
    ok(engine.execute(loyalty.redeem(200, 1, 3)));
    ok(engine.execute(loyalty.purchase(201, 9, 7, &[(10, 4_000)])));
    ok(engine.execute(loyalty.earn(202, 4, 25)));
    let end = engine.liability().unwrap();
    let balances = (1..=9u64)
        .map(|c| (c, engine.account_total(loyalty.customer(c)).map_or(0, |t| t.balance_posted())))
        .collect();
    engine.shutdown();
    Programme { middle, end, purchases, balances }
}

#[test]
fn liability_as_of_a_time_is_the_engines_figures_then() {
    use ledger_engine::loyalty::calendar::rfc3339;
    let dir = tempfile::tempdir().unwrap();
    let programme = build_programme(dir.path());
    let data = dir.path().to_str().unwrap();
    let middle_time = rfc3339(programme.middle.0);
    for (args, figures) in
        [(vec!["--as-of", middle_time.as_str()], &programme.middle.1), (vec![], &programme.end)]
    {
        let mut all = vec!["liability", "--data-dir", data, "--json"];
        all.extend_from_slice(&args);
        let output = ledger_wal(&all);
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        let lines = json_lines(&output);
        let total = lines.iter().find(|l| l["scope"] == "total").unwrap();
        let points =
            lines.iter().find(|l| l["scope"] == "class" && l["class"] == "points").unwrap();
        assert_eq!(total["points_outstanding"], points["total"], "{args:?}");
        assert_ne!(points["total"], "0");
        let classes: Vec<i128> = lines
            .iter()
            .filter(|l| l["scope"] == "class")
            .map(|l| l["total"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(classes, figures.classes.iter().map(|(_, t)| *t).collect::<Vec<_>>());
        let months: Vec<(String, u64)> = lines
            .iter()
            .filter(|l| l["scope"] == "expiry_month")
            .map(|l| {
                (
                    l["month"].as_str().unwrap().to_string(),
                    l["points"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, u64)> = figures
            .by_expiry_month
            .iter()
            .map(|(m, p)| (format!("{:04}-{:02}", m / 12, m % 12 + 1), *p))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(months, expected, "{args:?}");
    }
    assert_ne!(programme.middle.1, programme.end, "the two moments differ");
    let text = stdout(&ledger_wal(&["liability", "--data-dir", data]));
    assert!(text.contains("points outstanding") && text.contains("expires in"), "{text}");
}

#[test]
fn reconcile_finds_exactly_the_planted_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let programme = build_programme(dir.path());
    let data = dir.path().to_str().unwrap();
    let p = &programme.purchases;
    // Rows: at their amounts, R-5 one unit off, R-99 unknown; and the
    // later purchase of customer 9 (no receipt) pending and unreported.
    let csv = format!(
        "payment_id,receipt,store,time,amount,status\n\
         p4,R-4,7,2026-11-27T10:05:00Z,{},settled\n\
         p5,R-5,7,2026-11-27T10:05:00Z,{},settled\n\
         p6,R-6,7,2026-11-27T10:06:00Z,{},failed\n\
         p99,R-99,7,2026-11-27T10:07:00Z,100,settled\n",
        p[3].2,
        p[4].2 + 1,
        p[5].2
    );
    let report = dir.path().join("report.csv");
    std::fs::write(&report, csv).unwrap();
    let output = ledger_wal(&[
        "reconcile",
        "--data-dir",
        data,
        "--settlement",
        report.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1), "not balanced");
    let lines = json_lines(&output);
    let result_of = |payment: &str| {
        lines.iter().find(|l| l["payment_id"] == payment).map(|l| l["result"].clone()).unwrap()
    };
    assert_eq!(result_of("p4"), "matched");
    assert_eq!(result_of("p5"), "amount_mismatch");
    assert_eq!(result_of("p6"), "matched");
    assert_eq!(result_of("p99"), "no_purchase");
    let unmatched: std::collections::BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["result"] == "unmatched_purchase")
        .map(|l| l["purchase"].as_u64().unwrap())
        .collect();
    assert!(unmatched.contains(&p[6].1.0) && unmatched.contains(&p[7].1.0), "{unmatched:?}");
    assert!(!unmatched.contains(&p[0].1.0), "settled purchases are not left over");
    assert_eq!(unmatched.len(), 3, "R-7, R-8 and customer 9's: {unmatched:?}");
    let totals = lines.iter().find(|l| l["scope"] == "totals").unwrap();
    assert_eq!(totals["balanced"], false);
    assert_eq!(totals["results"]["matched"]["count"], 2);
    assert_eq!(totals["results"]["amount_mismatch"]["amount"], (p[4].2 + 1).to_string());
    // A report of exactly the pending purchases balances.
    let mut csv = String::from("payment_id,receipt,store,time,amount,status\n");
    for (receipt, _, spend) in &p[3..] {
        csv.push_str(&format!("x{receipt},{receipt},7,2026-11-27T10:00:00Z,{spend},settled\n"));
    }
    std::fs::write(&report, csv).unwrap();
    let output =
        ledger_wal(&["reconcile", "--data-dir", data, "--settlement", report.to_str().unwrap()]);
    let text = stdout(&output);
    // Customer 9's purchase (no receipt) is still pending and unreported.
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("unmatched_purchase") && !text.contains("amount_mismatch"), "{text}");
    // A malformed report is a usage error naming its line.
    std::fs::write(&report, "payment_id,receipt\nx,y\n").unwrap();
    let output =
        ledger_wal(&["reconcile", "--data-dir", data, "--settlement", report.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("line"), "{output:?}");
}

#[test]
fn export_rows_add_up_to_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let programme = build_programme(dir.path());
    let data = dir.path().to_str().unwrap();
    let export = |args: &[&str]| -> Output {
        let mut all = vec!["export", "--data-dir", data];
        all.extend_from_slice(args);
        let output = ledger_wal(&all);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    // Postings as CSV: the documented header; a customer's posted points add up to the balance.
    let csv = stdout(&export(&["postings", "--customer", "2"]));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "shard",
            "lsn",
            "time",
            "record_kind",
            "tx_id",
            "index",
            "debit",
            "credit",
            "asset",
            "amount",
            "effect",
            "flow"
        ]
    );
    let mut sum = 0i128;
    for row in reader.records() {
        let row = row.unwrap();
        let amount: i128 = row[9].parse().unwrap();
        if &row[10] == "posted" && &row[8] == "PTS" {
            if &row[7] == "customer:2:points" {
                sum += amount;
            }
            if &row[6] == "customer:2:points" {
                sum -= amount;
            }
        }
    }
    let balance = programme.balances.iter().find(|(c, _)| *c == 2).unwrap().1;
    assert!(balance > 0);
    assert_eq!(sum, balance);
    // Lots as JSON lines: a member's lots add up to their balance.
    for (customer, balance) in &programme.balances {
        let lines =
            json_lines(&export(&["lots", "--format", "json", "--customer", &customer.to_string()]));
        let remaining: i128 =
            lines.iter().map(|l| i128::from(l["remaining"].as_u64().unwrap())).sum();
        assert_eq!(remaining, *balance, "customer {customer}");
    }
    // Transitions: the settlements, the refund and the failure, in order.
    let lines = json_lines(&export(&["transitions", "--format", "json"]));
    let events: Vec<(u64, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["purchase"].as_u64().unwrap(),
                l["event"].as_str().unwrap(),
                l["state_after"].as_str().unwrap(),
            )
        })
        .collect();
    let p = &programme.purchases;
    let mut expected = vec![
        (p[0].1.0, "settle", "settled"),
        (p[1].1.0, "settle", "settled"),
        (p[1].1.0, "refund", "partly_refunded"),
        (p[2].1.0, "fail", "failed"),
    ];
    let mut sorted = events.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    // Transactions: one row per record, as many as dump prints; filters apply.
    let rows = stdout(&export(&["transactions"])).lines().count() - 1;
    let dumped = stdout(&ledger_wal(&["dump", "--data-dir", data])).lines().count();
    assert_eq!(rows, dumped);
    let lines = json_lines(&export(&[
        "transactions",
        "--format",
        "json",
        "--kind",
        "purchase",
        "--store",
        "7",
    ]));
    assert_eq!(lines.len(), 9);
    assert!(lines.iter().all(|l| l["store"] == 7 && l["record_kind"] == "purchase"));
    // Lots are state: record filters do not apply to them.
    let output = ledger_wal(&["export", "--data-dir", data, "lots", "--kind", "purchase"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn snapshot_list_inspect_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let data = dir.path().to_str().unwrap();
    let snapshot = |action: &str| ledger_wal(&["snapshot", action, "--data-dir", data, "--json"]);
    let listed = json_lines(&snapshot("list"));
    assert!(listed.len() >= 4, "a mid-run and a shutdown snapshot per shard: {listed:?}");
    for line in &listed {
        assert_eq!(line["ok"], true, "{line}");
        assert!(line["lsn"].as_u64().unwrap() > 0 && line["format_version"].as_u64().is_some());
        assert_eq!(line["last_hash"].as_str().unwrap().len(), 64);
    }
    let inspected = json_lines(&snapshot("inspect"));
    assert!(inspected.iter().all(|l| l["contents"]["accounts"].as_u64().unwrap() > 0));
    let verified = snapshot("verify");
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(json_lines(&verified).iter().all(|l| l["replay"] == "equal"));
    let table = stdout(&ledger_wal(&["snapshot", "inspect", "--data-dir", data]));
    assert!(table.contains("accounts") && table.contains("sound"), "{table}");

    // Edited with both checksums fixed: only the comparison with the WAL catches it.
    let snapshots =
        ledger_engine::snapshot::find_snapshots(&dir.path().join("shard-000/snapshots")).unwrap();
    let (lsn, path) = snapshots.first().unwrap();
    let at = credit_101(path);
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(snapshot("list").status.code(), Some(0), "the checksums hold");
    let verified = snapshot("verify");
    assert_eq!(verified.status.code(), Some(1));
    let text = stdout(&verified);
    assert!(text.contains(&format!("differs from the state the wal gives at lsn {lsn}")), "{text}");
    // A flipped bit without a fixed checksum: `list` finds it.
    bytes[at] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
    let listed = snapshot("list");
    assert_eq!(listed.status.code(), Some(1));
    assert!(stdout(&listed).contains("checksum"), "{}", stdout(&listed));
}

/// The directory's shard 0 WAL segment files, in order.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    ledger_engine::wal::segment::list_segments(&dir.join("shard-000/wal"))
        .unwrap()
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Builds a directory with many segments and no snapshot to fall back on.
fn build_segmented(dir: &Path) {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    for round in 0..6u128 {
        execute_all(
            &engine,
            (0..200).map(|c| loyalty.earn(round * 1_000 + c as u128 + 1, c, 10)).collect(),
        );
    }
    engine.shutdown();
    for snapshot in
        ledger_engine::snapshot::find_snapshots(&dir.join("shard-000/snapshots")).unwrap()
    {
        std::fs::remove_file(snapshot.1).unwrap();
    }
    assert!(segments(dir).len() >= 3, "{:?}", segments(dir));
}

#[test]
fn verify_catches_a_truncated_middle_segment_and_reordered_segments() {
    let dir = tempfile::tempdir().unwrap();
    build_segmented(dir.path());
    let data = dir.path().to_str().unwrap();
    assert_eq!(ledger_wal(&["verify", "--data-dir", data]).status.code(), Some(0));
    let output = ledger_wal(&["verify", "--data-dir", data, "--chain-only"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("chain only"), "{}", stdout(&output));

    let truncated = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(dir.path(), truncated.path()).unwrap();
    let middle = &segments(truncated.path())[1];
    let length = std::fs::metadata(middle).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(middle).unwrap().set_len(length / 2).unwrap();
    for chain in [&[][..], &["--chain-only"][..]] {
        let mut args = vec!["verify", "--data-dir", truncated.path().to_str().unwrap()];
        args.extend_from_slice(chain);
        let output = ledger_wal(&args);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{chain:?}: {text}");
        assert!(text.contains("lsn"), "names the lsn: {text}");
    }

    let reordered = tempfile::tempdir().unwrap();
    ledger_engine::testing::copy_dir(dir.path(), reordered.path()).unwrap();
    let files = segments(reordered.path());
    let (a, b) = (std::fs::read(&files[1]).unwrap(), std::fs::read(&files[2]).unwrap());
    std::fs::write(&files[1], b).unwrap();
    std::fs::write(&files[2], a).unwrap();
    let output = ledger_wal(&["verify", "--data-dir", reordered.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&files[1].file_name().unwrap().to_string_lossy().to_string()),
        "names the file: {text}"
    );
}

#[test]
fn an_amount_edited_with_its_crc_fixed_breaks_the_hash_chain() {
    let dir = tempfile::tempdir().unwrap();
    build_segmented(dir.path());
    let wal = dir.path().join("shard-000/wal");
    // An earn of 10 in the first segment, well before its end.
    let mut found = None;
    ledger_engine::wal::reader::scan(
        &wal,
        &ledger_engine::wal::reader::ScanOptions::all(),
        |record| {
            if record.header.lsn == ledger_engine::Lsn(40) {
                found = Some((record.segment, record.offset as usize, record.header.len as usize));
            }
            Ok::<(), ()>(())
        },
    )
    .unwrap();
    let (segment, offset, len) = found.unwrap();
    let path = wal.join(ledger_engine::wal::segment::segment_file_name(segment));
    let mut bytes = std::fs::read(&path).unwrap();
    let record = &mut bytes[offset..offset + len];
    let ten = 10u64.to_le_bytes();
    let at = (64..=len - 8).rev().find(|i| record[*i..*i + 8] == ten).unwrap();
    record[at] = 11;
    let crc = crc32(&[&record[0..4], &record[8..]].concat());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    for chain in [&[][..], &["--chain-only"][..]] {
        let mut args = vec!["verify", "--data-dir", dir.path().to_str().unwrap()];
        args.extend_from_slice(chain);
        let output = ledger_wal(&args);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{chain:?}: {text}");
        assert!(
            text.contains("lsn 40") || text.contains("lsn 41"),
            "names the record or the next: {text}"
        );
    }
}

#[test]
fn verify_checks_a_range_and_every_lifecycle_transition() {
    let dir = tempfile::tempdir().unwrap();
    build_loyalty(dir.path());
    let data = dir.path().to_str().unwrap();
    // The purchase of customer 43 made to disagree with its rules; found only in a range
    // that holds it.
    let altered = tempfile::tempdir().unwrap();
    let mut at = 0;
    ledger_engine::testing::loyalty::rewrite_wal(dir.path(), altered.path(), |record| {
        if let ledger_engine::ledger::record::Body::Purchase(purchase) = &mut record.body
            && purchase.customer == 43
        {
            purchase.outcome.tier_after += 1;
            at = record.lsn.0;
        }
    });
    let altered_dir = altered.path().to_str().unwrap();
    let verify = |args: &[&str]| {
        let mut all = vec!["verify", "--data-dir", altered_dir];
        all.extend_from_slice(args);
        ledger_wal(&all)
    };
    let (before, from, after) = ((at - 1).to_string(), at.to_string(), (at + 1).to_string());
    assert_eq!(verify(&["--to-lsn", &before]).status.code(), Some(0));
    assert_eq!(verify(&["--from-lsn", &after]).status.code(), Some(0));
    let output = verify(&["--from-lsn", &from, "--to-lsn", &from]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stdout(&output).contains(&format!("lsn {at}")), "{}", stdout(&output));
    assert_eq!(ledger_wal(&["verify", "--data-dir", data]).status.code(), Some(0));

    // A settlement recorded as a refund of everything: not what the state allows.
    let programme = tempfile::tempdir().unwrap();
    {
        use ledger_engine::clock::ManualClock;
        let clock = std::sync::Arc::new(ManualClock::new(ledger_engine::Timestamp(
            1_795_000_000_000_000_000,
        )));
        let mut config = EngineConfig::new(programme.path());
        config.shard_count = Some(1);
        config.limits = Limits::test_min();
        config.clock = clock;
        let engine = Engine::open(config).unwrap();
        let loyalty = Loyalty::define(&engine);
        let accounts = loyalty.define_programme(&engine);
        engine
            .define_rules(ledger_engine::testing::loyalty::example_rules(), accounts, None)
            .unwrap();
        let bought =
            engine.execute(loyalty.purchase(1, 42, 7, &[(20, 2_500)])).committed().unwrap();
        assert!(matches!(engine.execute(loyalty.settle(2, bought.tx_id)), Response::Committed(_)));
        engine.shutdown();
    }
    let illegal = tempfile::tempdir().unwrap();
    ledger_engine::testing::loyalty::rewrite_wal(programme.path(), illegal.path(), |record| {
        if let ledger_engine::ledger::record::Body::PurchaseChange(change) = &mut record.body {
            change.outcome.state =
                ledger_engine::loyalty::lifecycle::LifecycleState::Refunded as u8;
        }
    });
    assert_eq!(
        ledger_wal(&["verify", "--data-dir", programme.path().to_str().unwrap()]).status.code(),
        Some(0)
    );
    let output = ledger_wal(&["verify", "--data-dir", illegal.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("not a legal lifecycle transition"), "{text}");
}

#[test]
fn a_wal_the_engine_is_still_writing_reads_to_its_last_durable_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.shard_count = Some(1);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    let engine = Engine::open(config).unwrap();
    let loyalty = Loyalty::define(&engine);
    execute_all(&engine, (0..300).map(|c| loyalty.earn(c as u128 + 1, c % 7, 10)).collect());
    let data = dir.path().to_str().unwrap();
    // Every write above was durable before its answer; the engine keeps its files open.
    let output = ledger_wal(&["verify", "--data-dir", data]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let balance =
        json_lines(&ledger_wal(&["balance", "--data-dir", data, "--customer", "3", "--json"]));
    let points = balance.iter().find(|l| l["address"] == "customer:3:points").unwrap();
    let expected = engine.account_total(loyalty.customer(3)).unwrap().balance_posted();
    assert_eq!(points["balance"], expected.to_string());
    let dumped =
        json_lines(&ledger_wal(&["dump", "--data-dir", data, "--json", "--kind", "transaction"]));
    assert_eq!(dumped.len(), 300);
    engine.shutdown();
}

#[test]
fn foreign_and_truncated_files_are_named_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let data = dir.path().to_str().unwrap();
    // A segment that is not a segment.
    let first = dir.path().join("shard-001/wal/00000000000000000001.wal");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[..8].copy_from_slice(b"NOTAWAL!");
    std::fs::write(&first, &bytes).unwrap();
    for args in [
        vec!["verify", "--data-dir", data],
        vec!["verify", "--data-dir", data, "--chain-only"],
        vec!["dump", "--data-dir", data, "--shard", "1"],
        vec!["stats", "--data-dir", data, "--shard", "1"],
        vec!["export", "--data-dir", data, "postings", "--shard", "1"],
    ] {
        let output = ledger_wal(&args);
        let said = format!("{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
        assert!(matches!(output.status.code(), Some(1 | 3)), "{args:?}: {said}");
        assert!(said.contains("00000000000000000001.wal"), "{args:?} names the file: {said}");
        assert!(!said.contains("panicked"), "{args:?}: {said}");
    }
    // A snapshot cut short.
    let (_, snapshot) =
        ledger_engine::snapshot::find_snapshots(&dir.path().join("shard-000/snapshots"))
            .unwrap()
            .remove(0);
    let length = std::fs::metadata(&snapshot).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&snapshot).unwrap().set_len(length / 3).unwrap();
    let output = ledger_wal(&["snapshot", "verify", "--data-dir", data, "--shard", "0"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&snapshot.file_name().unwrap().to_string_lossy().to_string()), "{text}");
}

/// Every subcommand that reads a whole directory reads the checked-in data directories of
/// every format version, and says nothing on standard error when it is not a terminal (no
/// progress bar in pipes).
#[test]
fn every_subcommand_reads_the_files_of_every_format_version() {
    for version in 1..=10 {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../engine/tests/fixtures/v{version}"));
        let dir = tempfile::tempdir().unwrap();
        ledger_engine::testing::copy_dir(&fixture, dir.path()).unwrap();
        let data = dir.path().to_str().unwrap();
        let run = |args: &[&str]| -> String {
            let output = ledger_wal(args);
            assert_eq!(output.status.code(), Some(0), "v{version} {args:?}: {}", stdout(&output));
            assert!(output.stderr.is_empty(), "v{version} {args:?}: {output:?}");
            stdout(&output)
        };
        run(&["verify", "--data-dir", data]);
        run(&["verify", "--data-dir", data, "--chain-only"]);
        for line in run(&["snapshot", "verify", "--data-dir", data, "--json"]).lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["replay"], "equal", "v{version}: {line}");
        }
        let records: u64 = run(&["stats", "--data-dir", data, "--json"])
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|line| line["scope"] == "shard")
            .map(|line| line["records"].as_u64().unwrap())
            .sum();
        let dumped = run(&["dump", "--data-dir", data, "--json"]).lines().count() as u64;
        assert_eq!(dumped, records, "v{version}");
        let exported = run(&["export", "--data-dir", data, "transactions"]).lines().count() as u64;
        assert_eq!(exported, records + 1, "v{version}: a header and a row per record");
        run(&["export", "--data-dir", data, "postings"]);
        run(&["liability", "--data-dir", data, "--json"]);
    }
}
