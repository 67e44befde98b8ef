//! The real `ledgerd` binary and loyalty rule files (docs/operations.md, "Loyalty rules"):
//! `ledgerd rules check` prints a summary and prices a sample basket exactly as the engine does,
//! refuses a bad file with `FILE:LINE: reason` (exit 1) and bad arguments (exit 2);
//! `ledgerd --rules` refuses a bad file before it writes anything, records a file once, says
//! `unchanged` when restarted with it, and records a changed file as the next version.

mod common;

use common::process::{Server, listening_addr, start_with, stop, wait_for};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ledger_engine::loyalty::pricing::{Breakdown, CapsUsed, Line, price};
use ledger_engine::loyalty::rules_file::parse_timestamp;
use ledger_protocol::ops::{Basket, BasketLine, Op, OpResult, Reply, WriteMeta};

fn ledgerd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
    command
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .env("LEDGER_ADMIN_ADDR", "127.0.0.1:0")
        .env_remove("LEDGER_RULES");
    command
}

fn run(args: &[&str]) -> Output {
    ledgerd().args(args).output().expect("run ledgerd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Writes `contents` to `name` in `dir` and returns its path as a string.
fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

/// The 1-based line of the `nth` (from 1) line of `text` that is exactly `line`.
fn line_number(text: &str, line: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == line)
        .nth(nth - 1)
        .map(|(index, _)| index + 1)
        .unwrap_or_else(|| panic!("no {nth}th line {line:?}"))
}

/// The example file with `from` replaced by `to` (exactly once).
fn example_with(from: &str, to: &str) -> String {
    let example = common::example_rules_text();
    assert_eq!(example.matches(from).count(), 1, "{from:?}");
    example.replace(from, to)
}

/// The rows of a printed sample purchase: `(label, number, rest)`, e.g.
/// `("promotion", 250, "flagship-opening")`.
fn sample_rows(stdout: &str) -> Vec<(String, u64, String)> {
    let sample = &stdout[stdout.find("\nsample purchase at ").expect("a sample purchase")..];
    sample
        .lines()
        .filter(|line| line.starts_with("  "))
        .map(|line| {
            let label = line[..14].trim().to_string();
            let mut rest = line[14..].trim().splitn(2, ' ');
            let number = rest.next().unwrap().parse().unwrap_or_else(|_| panic!("{line:?}"));
            (label, number, rest.next().unwrap_or("").trim().to_string())
        })
        .collect()
}

/// The rows `ledgerd rules check` must print for `breakdown`.
fn expected_rows(breakdown: &Breakdown, promotions: &[&str]) -> Vec<(String, u64, String)> {
    let row = |label: &str, number: u64, rest: &str| (label.to_string(), number, rest.to_string());
    let mut rows = vec![
        row("base", breakdown.base, ""),
        row("category", breakdown.category, ""),
        row("tier", breakdown.tier_points, ""),
    ];
    for (promotion, name) in breakdown.promotions.iter().zip(promotions) {
        rows.push(row("promotion", promotion.points, name));
    }
    assert_eq!(breakdown.promotions.len(), promotions.len());
    rows.extend([
        row("cap cut", breakdown.cap_cut, ""),
        row("earned", breakdown.earned, "(lives 24 months)"),
        row("bonus", breakdown.bonus, "(lives 12 months)"),
        row("points", breakdown.points(), ""),
        row("cashback", breakdown.cashback, ""),
    ]);
    rows
}

/// The engine's pricing under the example rules.
fn engine_price(
    lines: &[(u16, u64, bool)],
    store: u32,
    at: &str,
    tier: u8,
    used: (u64, u64),
) -> Breakdown {
    let rules = common::example_rules().rules;
    let lines: Vec<Line> = lines
        .iter()
        .map(|&(category, amount, excluded)| Line { category, amount, excluded })
        .collect();
    let at = parse_timestamp(at).unwrap();
    price(&rules, &lines, store, at, tier, CapsUsed { day: used.0, month: used.1 }).unwrap()
}

#[test]
fn rules_check_prints_a_summary_and_prices_sample_baskets_as_the_engine_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "rules.toml", common::example_rules_text());

    let output = run(&["rules", "check", &file]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with(&format!("{file}: valid\neffective: at once\n")), "{stdout}");
    for expected in [
        "base: 1 point(s) per 100 minor units; minimum spend 500\n",
        "category 10 groceries: ×1, cashback 1.00% + 0\n",
        "category 40 gift-cards: ×1, excluded\n",
        "tier silver: from 2000 points, ×1.25\n",
        "tier platinum: from 50000 points, ×2\n",
        "tier window: 12 months\n",
        "promotion black-friday: ×2 on every line, 2026-11-27T00:00:00Z to 2026-11-28T00:00:00Z\n",
        // 09:00 +01:00 is 08:00 UTC.
        "promotion flagship-opening: +250 points on stores [7], 2026-11-20T08:00:00Z to \
         2026-11-30T23:00:00Z\n",
        "caps: daily 5000, monthly 20000\n",
        "cashback: 0.50% + 0 per purchase\n",
        "lots live: earned 24 months, bonus 12, transfer 6\n",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("sample purchase"), "no sample without --line");
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));

    // The documented sample: an electronics line and a gift card the till excludes, on Black
    // Friday at the flagship store, as bronze.
    let output = run(&[
        "rules",
        "check",
        &file,
        "--line",
        "20:2500",
        "--line",
        "40:1000x",
        "--at",
        "2026-11-27T10:00:00Z",
        "--store",
        "7",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(
            "sample purchase at 2026-11-27T10:00:00Z, store 7, tier bronze: eligible spend 2500\n"
        ),
        "{stdout}"
    );
    let expected = engine_price(
        &[(20, 2_500, false), (40, 1_000, true)],
        7,
        "2026-11-27T10:00:00Z",
        0,
        (0, 0),
    );
    let rows = sample_rows(&stdout);
    assert_eq!(rows, expected_rows(&expected, &["black-friday", "flagship-opening"]));
    // 25 base, 25 electronics, 25 Black Friday, 250 flagship; 0.5 % of 25.00 cashback.
    let numbers: Vec<u64> = rows.iter().map(|(_, number, _)| *number).collect();
    assert_eq!(numbers, [25, 25, 0, 25, 250, 0, 50, 275, 325, 12]);

    // Worked example 2 of docs/loyalty.md: a gold member at the flagship on Black Friday.
    let output = run(&[
        "rules",
        "check",
        &file,
        "--line",
        "20:19999",
        "--line",
        "30:4550",
        "--line",
        "10:800x",
        "--at",
        "2026-11-27T15:30:00Z",
        "--store",
        "7",
        "--tier",
        "gold",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let rows = sample_rows(&text(&output.stdout));
    let lines = [(20, 19_999, false), (30, 4_550, false), (10, 800, true)];
    let expected = engine_price(&lines, 7, "2026-11-27T15:30:00Z", 2, (0, 0));
    assert_eq!(rows, expected_rows(&expected, &["black-friday", "flagship-opening"]));
    let numbers: Vec<u64> = rows.iter().map(|(_, number, _)| *number).collect();
    assert_eq!(numbers, [245, 290, 122, 245, 250, 0, 657, 495, 1_152, 199]);

    // Worked example 3: a platinum member who earned 4,500 that day; the cap cuts 3,500.
    let output = run(&[
        "rules",
        "check",
        &file,
        "--line",
        "20:100000",
        "--at",
        "2026-11-27T18:00:00Z",
        "--tier",
        "platinum",
        "--used",
        "4500/4500",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let rows = sample_rows(&text(&output.stdout));
    let expected =
        engine_price(&[(20, 100_000, false)], 0, "2026-11-27T18:00:00Z", 3, (4_500, 4_500));
    assert_eq!(rows, expected_rows(&expected, &["black-friday"]));
    let numbers: Vec<u64> = rows.iter().map(|(_, number, _)| *number).collect();
    assert_eq!(numbers, [1_000, 1_000, 1_000, 1_000, 3_500, 500, 0, 500, 500]);
}

#[test]
fn rules_check_refuses_a_bad_file_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    // The flagship promotion ending before it starts: the error is at its table.
    let ends_early =
        example_with("ends_at = 2026-12-01T00:00:00+01:00", "ends_at = 2026-11-19T00:00:00+01:00");
    let table = line_number(&ends_early, "[[promotion]]", 2);
    let file = write(dir.path(), "ends-early.toml", &ends_early);
    let output = run(&["rules", "check", &file]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("{file}:{table}: ")), "{stderr}");
    assert!(stderr.contains("before it starts"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing printed for a refused file");

    // A TOML float as a multiplier: the error is at the value.
    let float = example_with("multiplier = \"1.25\"", "multiplier = 1.25");
    let at = line_number(&float, "multiplier = 1.25", 1);
    let file = write(dir.path(), "float.toml", &float);
    let output = run(&["rules", "check", &file]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("{file}:{at}: ")), "{stderr}");
    assert!(stderr.contains("quoted decimal"), "{stderr}");

    // An unknown key, and a file that is not there.
    let unknown = example_with("[caps]\n", "[caps]\nweekly = 1000\n");
    let at = line_number(&unknown, "weekly = 1000", 1);
    let file = write(dir.path(), "unknown.toml", &unknown);
    let output = run(&["rules", "check", &file]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("{file}:{at}: ")), "{stderr}");
    assert!(stderr.contains("weekly"), "{stderr}");
    let missing = dir.path().join("missing.toml");
    let output = run(&["rules", "check", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stderr).contains("cannot read"), "{output:?}");
}

#[test]
fn rules_check_with_bad_arguments_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "rules.toml", common::example_rules_text());
    for (args, says) in [
        (&["--line", "nonsense"][..], "--line \"nonsense\": want CATEGORY:AMOUNT"),
        (&["--line", "20:lots"][..], "--line \"20:lots\": amount"),
        (&["--line", "twenty:100"][..], "--line \"twenty:100\": category"),
        (
            &["--line", "20:100", "--tier", "diamond"][..],
            "--tier \"diamond\": the file has no such tier",
        ),
        (&["--line", "20:100", "--at", "yesterday"][..], "is not a date-time"),
        (&["--line", "20:100", "--used", "12"][..], "--used \"12\": want DAY/MONTH"),
        (&["--line", "20:0"][..], "the sample purchase is refused"),
    ] {
        let mut all = vec!["rules", "check", &file];
        all.extend(args);
        let output = run(&all);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: only the error is printed");
    }
    // What clap refuses: an unknown flag, no file.
    assert_eq!(run(&["rules", "check", &file, "--bogus"]).status.code(), Some(2));
    assert_eq!(run(&["rules", "check"]).status.code(), Some(2));
}

/// A bad rule file stops `ledgerd` with the line and the reason before it writes anything: the
/// data directory is neither created nor written into.
#[test]
fn ledgerd_with_a_bad_rule_file_refuses_to_start_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = example_with("ends_at = 2026-12-01T00:00:00+01:00", "ends_at = 2026-11-19T00:00:00Z");
    let table = line_number(&bad, "[[promotion]]", 2);
    let file = write(dir.path(), "bad.toml", &bad);
    let missing = dir.path().join("data");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for data in [&missing, &empty] {
        let output = ledgerd()
            .arg("--data-dir")
            .arg(data)
            .args(["--rules", &file, "--pos-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("{file}:{table}: ")), "{stderr}");
        assert!(stderr.contains("before it starts"), "{stderr}");
        assert!(output.stdout.is_empty(), "no credentials were written: {output:?}");
    }
    assert!(!missing.exists(), "the data directory was created");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "something was written");
}

/// Starts ledgerd on `data` (2 shards, POS on a free loopback port) with `args`.
fn start(data: &Path, args: &[&str]) -> (Server, std::sync::mpsc::Receiver<String>) {
    let mut all = vec!["--shards", "2"];
    all.extend(args);
    start_with(data, &all)
}

/// A purchase of 10.00 of groceries at store 1 by `customer`, and its explanation: the rule
/// version that priced it and its base points. (The server's clock is the real one, so no
/// assumption is made about promotions running.)
fn purchase_explained(
    data: &Path,
    addr: std::net::SocketAddr,
    key: u128,
    customer: u64,
) -> (u32, u64) {
    let credentials = ledger_protocol::Credentials::load(&data.join("credentials.toml")).unwrap();
    let terminal = credentials.terminals()[0].clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
            .await
            .unwrap();
        let line = BasketLine { category: 10, amount: 1_000, excluded: false };
        let op = Op::PurchaseBasket {
            meta: WriteMeta { key, store: 1, ..Default::default() },
            customer,
            basket: Basket::new(&[line]).unwrap(),
        };
        let result = client.call_one(op).await.unwrap();
        let committed = *result.committed().unwrap_or_else(|| panic!("{result:?}"));
        match client.call_one(Op::Explain { tx: committed.tx_id, lifecycle: false }).await.unwrap()
        {
            OpResult::Ok(Reply::Explanation(explained)) => {
                assert_eq!(explained.lines, vec![line]);
                (explained.rules_version, explained.base)
            }
            other => panic!("{other:?}"),
        }
    })
}

/// `--rules FILE` records the file as version 1 on a new directory; a restart with the same file
/// records nothing (`unchanged`); a file with another base rate is recorded as version 2 and
/// prices the next purchase; a file whose `effective_at` is in the past is refused.
#[test]
fn ledgerd_records_a_rule_file_once_and_a_changed_file_as_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let good = write(dir.path(), "rules.toml", common::example_rules_text());

    let (server, lines) = start(&data, &["--rules", &good]);
    let recorded = wait_for(&lines, "loyalty rules");
    assert!(
        recorded.contains("loyalty rules recorded") && recorded.contains("version=1"),
        "{recorded}"
    );
    let addr = listening_addr(&lines);
    // 1 point per 1.00: 10 base points.
    assert_eq!(purchase_explained(&data, addr, 1, 42), (1, 10));
    assert_eq!(stop(server), Some(0));

    let (server, lines) = start(&data, &["--rules", &good]);
    let unchanged = wait_for(&lines, "loyalty rules");
    assert!(
        unchanged.contains("loyalty rules unchanged") && unchanged.contains("version=1"),
        "{unchanged}"
    );
    let addr = listening_addr(&lines);
    assert_eq!(purchase_explained(&data, addr, 2, 42), (1, 10));
    assert_eq!(stop(server), Some(0));

    // 2 points per 1.00.
    let doubled = write(dir.path(), "doubled.toml", &example_with("points = 1 ", "points = 2 "));
    let (server, lines) = start(&data, &["--rules", &doubled]);
    let recorded = wait_for(&lines, "loyalty rules");
    assert!(
        recorded.contains("loyalty rules recorded") && recorded.contains("version=2"),
        "{recorded}"
    );
    let addr = listening_addr(&lines);
    assert_eq!(purchase_explained(&data, addr, 3, 42), (2, 20));
    assert_eq!(stop(server), Some(0));

    // A version that takes effect in the past is refused: the server stops with the reason.
    let past = format!(
        "effective_at = 2020-01-01T00:00:00Z\n{}",
        example_with("points = 1 ", "points = 3 ")
    );
    let past = write(dir.path(), "past.toml", &past);
    let output = ledgerd()
        .arg("--data-dir")
        .arg(&data)
        .args(["--rules", &past, "--pos-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the loyalty rules are refused"), "{stderr}");
    assert!(stderr.contains("in the past"), "{stderr}");
}
