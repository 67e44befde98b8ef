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
    let mut bytes = std::fs::read(path).unwrap();
    // Turn a credit of 100 into 101 and fix both checksums: the file is well formed, and only
    // the comparison with the WAL can catch it.
    let hundred = 100u128.to_le_bytes();
    let at =
        (SNAPSHOT_HEADER_BYTES..bytes.len() - 16).find(|i| bytes[*i..*i + 16] == hundred).unwrap();
    bytes[at] = 101;
    let mut header = SnapshotHeader::decode(&bytes).unwrap();
    header.body_crc = crc32(&bytes[SNAPSHOT_HEADER_BYTES..]);
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(&header.encode());
    std::fs::write(path, bytes).unwrap();
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

#[test]
fn stats_count_every_record_once_by_segment_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // More records, in batches: several 64 KiB segments per shard, commit groups of many sizes.
    {
        let mut config = EngineConfig::new(dir.path());
        config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
        let engine = Engine::open(config).unwrap();
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
