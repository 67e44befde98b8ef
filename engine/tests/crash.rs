//! Crash tests with a real child process killed by SIGKILL.
//!
//! Guards invariant 4 (nothing acknowledged is lost, nothing unacknowledged is half there) and
//! invariant 2 (every asset sums to zero) across real crashes: a writer process
//! (`ledger-crash-writer`) submits earns, two-posting earns, redemptions, conversions into a
//! partner's points and cross-shard transfers with many requests in flight, and is killed at a random moment; the test then
//! recovers the data directory in process and checks:
//! - every acknowledged write is present: its retry is answered `Duplicate`;
//! - every other write is present whole or absent: retrying each one (present: `Duplicate`,
//!   absent: it commits now or is refused) and adding up the effects of the committed ones gives
//!   exactly the balances the engine holds, two-posting earns included;
//! - every shard's invariants hold (checked by recovery), and all accounts sum to zero.
//!
//! Some customers only buy, settle and return: a purchase with its own receipt, its settlement
//! and its whole refund by receipt, in that order, so purchases, lifecycle records and their
//! retries are killed in flight too, and a return must take back exactly what its purchase
//! gave.
//!
//! Rounds run on the same data directory, so later rounds recover snapshots, rolled segments
//! and torn tails left by earlier kills. At the end every write that ever committed is retried
//! once more: with an idempotency table of 4,096 keys and far more writes, most of these
//! retries are answered from the key index on disk, and each must be a duplicate that moves
//! nothing. `CRASH_ROUNDS` (default 20) and `CRASH_SEED` make longer or reproducible runs.
//!
//! A second test kills the writer while the shards' expiry sweep is expiring 40,000 lots at one
//! midnight (`CRASH_EXPIRY_ROUNDS`, default 3) and checks that recovery ends exact.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_engine::testing::crash::{
    CUSTOMERS, CrashAccounts, CrashRequest, LIFECYCLE_CUSTOMERS, LIFECYCLE_FIRST,
    crash_engine_config,
};

/// Every customer the crash workload touches: the random ones and those that buy, settle and
/// return.
fn all_customers() -> Vec<u64> {
    (0..CUSTOMERS).chain(LIFECYCLE_FIRST..LIFECYCLE_FIRST + LIFECYCLE_CUSTOMERS).collect()
}
use ledger_engine::testing::loyalty::execute_all;
use std::sync::Arc;

use ledger_engine::{AccountId, Engine, Response};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Round {
    sent: Vec<CrashRequest>,
    acknowledged: BTreeMap<u128, String>,
}

fn run_child(dir: &std::path::Path, round: u64, seed: u64, run_for: Duration) -> Round {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger-crash-writer"))
        .arg(dir)
        .arg(round.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
    });
    // Kill only after the writer is up and has had some answers, at a random moment after.
    let started = Instant::now();
    std::thread::sleep(run_for);
    assert!(started.elapsed() < Duration::from_secs(120));
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer was killed, not finished");
    let lines = reader.join().unwrap();
    let mut round = Round { sent: Vec::new(), acknowledged: BTreeMap::new() };
    for line in lines {
        if let Some(request) = line.strip_prefix("S ") {
            round.sent.push(request.parse().unwrap());
        } else if let Some(answer) = line.strip_prefix("A ") {
            let (key, outcome) = answer.split_once(' ').unwrap();
            round.acknowledged.insert(key.parse().unwrap(), outcome.to_string());
        }
        // A last line cut by the kill matches neither prefix's format and is ignored.
    }
    round
}

#[test]
fn acknowledged_writes_survive_sigkill_and_nothing_is_half_applied() {
    let rounds = env_number("CRASH_ROUNDS", 20);
    let seed = env_number("CRASH_SEED", 0xC0FFEE);
    eprintln!("crash test: {rounds} rounds, CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut expected: BTreeMap<u64, i128> = BTreeMap::new();
    let mut rng = seed | 1;
    let mut total_acknowledged = 0usize;
    // Every write that committed, at first or on its retry after the crash.
    let mut committed: Vec<CrashRequest> = Vec::new();
    let mut converted = 0;
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(150 + rng % 600);
        let outcome = run_child(dir.path(), round, rng, run_for);
        let acknowledged = outcome.acknowledged.values().filter(|o| *o == "C" || *o == "D").count();
        total_acknowledged += acknowledged;

        let engine = Engine::open(crash_engine_config(dir.path()))
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        let accounts = CrashAccounts::define(&engine);
        let loyalty = accounts.loyalty;
        let mut committed_now = 0;
        for chunk in outcome.sent.chunks(512) {
            let responses =
                execute_all(&engine, chunk.iter().map(|r| r.command(&accounts)).collect());
            for (request, response) in chunk.iter().zip(responses) {
                let answer = outcome.acknowledged.get(&request.key).map(String::as_str);
                match (answer, response) {
                    (Some("C" | "D"), Response::Duplicate(_)) => {
                        request.apply_to(&mut expected);
                        committed.push(*request);
                    }
                    (Some("C" | "D"), other) => {
                        panic!(
                            "round {round}: acknowledged write {request} lost: retry got {other:?}"
                        )
                    }
                    (_, Response::Duplicate(_)) => {
                        request.apply_to(&mut expected);
                        committed.push(*request);
                    }
                    (_, Response::Committed(_)) => {
                        committed_now += 1;
                        request.apply_to(&mut expected);
                        committed.push(*request);
                    }
                    (_, Response::Rejected(_)) => {}
                    (_, other) => panic!("unexpected {other:?}"),
                }
            }
        }
        // Cross-shard transfers in flight at the kill are re-driven after recovery.
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.stats().iter().any(|s| s.transfers_in_flight > 0) {
            assert!(Instant::now() < deadline, "round {round}: transfers never settled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let queries = all_customers().into_iter().map(|c| loyalty.balance_query(c)).collect();
        let mut customers_total = 0i128;
        for (customer, response) in all_customers().into_iter().zip(execute_all(&engine, queries)) {
            let balance = match response {
                Response::Account(view) => view.counters.balance_posted(),
                _ => 0,
            };
            let want = expected.get(&customer).copied().unwrap_or(0);
            assert_eq!(balance, want, "round {round}: customer {customer}");
            assert!(balance >= 0, "no overdraft");
            customers_total += balance;
        }
        let total =
            |account: AccountId| engine.account_total(account).map_or(0, |a| a.balance_posted());
        let house = total(loyalty.issuance())
            + total(loyalty.redemption())
            + total(AccountId::transit(loyalty.pts))
            + total(accounts.partner.own_fund);
        assert_eq!(customers_total + house, 0, "round {round}: the asset sums to zero");
        // Points converted went to the exchange fund once each, and as many partner points
        // to the members.
        let queries = all_customers()
            .into_iter()
            .map(|c| accounts.partner.account(c))
            .map(|a| ledger_engine::Command::Read(ledger_engine::Query::Account(a)));
        let partner_points: i128 = execute_all(&engine, queries.collect())
            .into_iter()
            .map(|response| match response {
                Response::Account(view) => view.counters.balance_posted(),
                _ => 0,
            })
            .sum();
        assert_eq!(partner_points, total(accounts.partner.own_fund), "round {round}: converted");
        assert_eq!(partner_points, -total(accounts.partner.partner_fund), "round {round}");
        converted = partner_points;
        eprintln!(
            "round {round}: killed after {run_for:?}; {} sent, {acknowledged} acknowledged, {committed_now} committed on retry",
            outcome.sent.len()
        );
        engine.shutdown();
    }
    assert!(total_acknowledged > 0, "the writer acknowledged writes before being killed");
    assert!(converted > 0, "conversions committed");

    // Every committed write, retried long after: a duplicate each, and no balance moves.
    let engine = Engine::open(crash_engine_config(dir.path())).unwrap();
    let accounts = CrashAccounts::define(&engine);
    let loyalty = accounts.loyalty;
    for chunk in committed.chunks(512) {
        let responses = execute_all(&engine, chunk.iter().map(|r| r.command(&accounts)).collect());
        for (request, response) in chunk.iter().zip(responses) {
            assert!(
                matches!(response, Response::Duplicate(_)),
                "{request} committed before; its retry at the end got {response:?}"
            );
        }
    }
    let queries = all_customers().into_iter().map(|c| loyalty.balance_query(c)).collect();
    for (customer, response) in all_customers().into_iter().zip(execute_all(&engine, queries)) {
        let balance = match response {
            Response::Account(view) => view.counters.balance_posted(),
            _ => 0,
        };
        assert_eq!(balance, expected.get(&customer).copied().unwrap_or(0), "customer {customer}");
    }
    let stats = engine.stats();
    let from_disk: u64 = stats.iter().map(|s| s.key_index_hits).sum();
    eprintln!(
        "{} committed writes retried at the end, {from_disk} answered from the key index",
        committed.len()
    );
    assert!(
        committed.len() < 2 * 4_096 || from_disk > 0,
        "with more writes than the table holds, retries reach the key index"
    );
}

/// The expiry sweep killed in the middle. A writer gives 40,000 customers a lot each, moves its
/// clock past their midnight and keeps buying and redeeming while the shards' sweep expires
/// those lots; it is killed at a random moment soon after. Recovery (on the same clock) must
/// end exact: every acknowledged write present, every first lot expired exactly once (breakage
/// = the first purchases, to the point), every customer's balance = their later purchases less
/// their redemptions, and their lots (plus what holds parked) = their balance.
#[test]
fn expiries_in_flight_at_sigkill_end_exact() {
    use ledger_engine::clock::ManualClock;
    use ledger_engine::ledger::record::RecordKind;
    use ledger_engine::recovery::ShardPaths;
    use ledger_engine::testing::crash::{
        CrashOp, EXPIRY_CUSTOMERS, EXPIRY_SWEEP_AT, expiry_engine_config,
    };
    use ledger_engine::wal::reader::{self, ScanOptions};

    let rounds = env_number("CRASH_EXPIRY_ROUNDS", 3);
    let mut rng = env_number("CRASH_SEED", 0xE4_91E5) | 1;
    let mut in_flight_rounds = 0;
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ledger-crash-writer"))
            .arg(dir.path())
            .arg("expiry")
            .arg(rng.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let (lines_tx, lines_rx) = crossbeam_channel::bounded::<String>(1 << 16);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let line = lines_rx.recv_timeout(Duration::from_secs(300)).expect("the writer runs");
            let past = line == "X";
            lines.push(line);
            if past {
                break;
            }
            assert!(Instant::now() < deadline, "the first phase took too long");
        }
        // Somewhere in the sweep, with purchases and redemptions in flight.
        std::thread::sleep(Duration::from_millis(rng % 40));
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(lines_rx.try_iter());
        let mut sent = Vec::new();
        let mut acknowledged = BTreeMap::new();
        for line in &lines {
            if let Some(request) = line.strip_prefix("S ") {
                sent.push(request.parse::<CrashRequest>().unwrap());
            } else if let Some(answer) = line.strip_prefix("A ")
                && let Some((key, outcome)) = answer.split_once(' ')
            {
                acknowledged.insert(key.parse::<u128>().unwrap(), outcome.to_string());
            }
        }
        // How far the sweep got before the kill, from the WAL.
        let mut expired_before = 0u64;
        for shard in 0..2 {
            let wal = ShardPaths::new(dir.path(), shard).wal;
            let _ = reader::scan(&wal, &ScanOptions::all(), |record| {
                if record.kind == RecordKind::LotsExpire {
                    expired_before += 1;
                }
                Ok::<(), ()>(())
            });
        }

        let clock = Arc::new(ManualClock::new(EXPIRY_SWEEP_AT));
        let engine = Engine::open(expiry_engine_config(dir.path(), clock))
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        let crash_accounts = CrashAccounts::define(&engine);
        let loyalty = crash_accounts.loyalty;
        let accounts = loyalty.define_programme(&engine);
        // The first phase was answered before the clock moved (`X`): every purchase of it is
        // acknowledged. Its keys are two years old now, far outside the idempotency window,
        // so they are not retried: breakage proves them, to the point.
        let first_phase = |request: &CrashRequest| request.key <= u128::from(EXPIRY_CUSTOMERS);
        let mut first_lots = 0i128;
        for request in sent.iter().filter(|r| first_phase(r)) {
            assert_eq!(acknowledged.get(&request.key).map(String::as_str), Some("C"));
            let CrashOp::Purchase { amount, .. } = request.op else { panic!("{request}") };
            first_lots += i128::from(amount);
        }
        let later_sent: Vec<CrashRequest> =
            sent.iter().copied().filter(|r| !first_phase(r)).collect();
        let mut later = BTreeMap::<u64, i128>::new();
        let mut issued = first_lots;
        for chunk in later_sent.chunks(1_024) {
            let responses =
                execute_all(&engine, chunk.iter().map(|r| r.command(&crash_accounts)).collect());
            for (request, response) in chunk.iter().zip(responses) {
                let answer = acknowledged.get(&request.key).map(String::as_str);
                match (answer, response) {
                    (Some("C" | "D"), Response::Duplicate(_)) => {}
                    (Some("C" | "D"), other) => {
                        panic!("round {round}: acknowledged {request} lost: retry got {other:?}")
                    }
                    (_, Response::Duplicate(_) | Response::Committed(_)) => {}
                    (_, Response::Rejected(_)) => continue,
                    (_, other) => panic!("unexpected {other:?}"),
                }
                if let CrashOp::Purchase { amount, .. } = request.op {
                    issued += i128::from(amount);
                }
                request.apply_to(&mut later);
            }
        }
        // The sweep finishes what the kill interrupted.
        let breakage = AccountId::new(accounts.breakage, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let expired = engine.account_total(breakage).map_or(0, |a| a.balance_posted());
            assert!(expired <= first_lots, "round {round}: a lot expired twice");
            if expired == first_lots {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: the sweep never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        let members: Vec<_> = (0..EXPIRY_CUSTOMERS).map(|c| loyalty.member_query(c, 0)).collect();
        let balances: Vec<_> = (0..EXPIRY_CUSTOMERS).map(|c| loyalty.balance_query(c)).collect();
        let members = execute_all(&engine, members);
        let balances = execute_all(&engine, balances);
        let mut customers_total = 0i128;
        for (customer, (member, balance)) in members.iter().zip(&balances).enumerate() {
            let customer = customer as u64;
            let Response::Account(view) = balance else { panic!("{balance:?}") };
            let posted = view.counters.balance_posted();
            let want = later.get(&customer).copied().unwrap_or(0);
            assert_eq!(posted, want, "round {round}: customer {customer}: {member:?}");
            let Response::Member(member) = member else { panic!("{member:?}") };
            let in_lots: u64 = member.lots.iter().map(|lot| lot.remaining).sum();
            assert_eq!(i128::from(in_lots + member.held), posted, "customer {customer}'s lots");
            customers_total += posted;
        }
        let total =
            |account: AccountId| engine.account_total(account).map_or(0, |a| a.balance_posted());
        assert_eq!(total(loyalty.issuance()), -issued, "round {round}: issued");
        assert_eq!(
            customers_total + total(loyalty.issuance()) + total(loyalty.redemption()) + first_lots,
            0,
            "round {round}: the asset sums to zero"
        );
        eprintln!(
            "expiry round {round}: {} sent, {expired_before} expiry records before the kill \
             (of {EXPIRY_CUSTOMERS} customers), first lots {first_lots}",
            sent.len()
        );
        if expired_before > 0 && expired_before < EXPIRY_CUSTOMERS {
            in_flight_rounds += 1;
        }
        engine.shutdown();
    }
    eprintln!("{in_flight_rounds} of {rounds} rounds were killed in the middle of the sweep");
    assert!(in_flight_rounds > 0, "no kill landed in the middle of the sweep");
}
