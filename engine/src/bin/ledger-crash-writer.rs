//! A writer for crash tests (`engine/tests/crash.rs`), run as a child process and killed with
//! SIGKILL at a random moment. It writes forever and reports on stdout, flushed line by line:
//! `S <key> <request>` before it submits a request, `A <key> <outcome>` once it is answered.
//! An `A … C` (committed) or `A … D` (duplicate) line means the write was acknowledged, so it
//! must survive the kill.
//!
//! Usage: `ledger-crash-writer <data-dir> <round> <seed>`; keys of round `r` are `r << 32 | n`.
//!
//! `ledger-crash-writer <data-dir> expiry <seed>` (`engine/tests/crash.rs`, the expiry test): on
//! a manual clock at 2024-01-10 with a flat rule set, one purchase for each of 40,000
//! customers; then the clock jumps past their lots' midnight, it prints `X`, and writes random
//! purchases and redemptions of those customers forever while the shards' sweep expires the
//! lots, reporting `S`/`A` lines as above.
//!
//! `ledger-crash-writer <data-dir> bulk <count>` (`engine/tests/key_index.rs`): one earn of 500
//! points for customer 7 with key 1, reported `A 1 C <tx_id>`; then `count` earns of 1 point for
//! customer 99 (keys from 2), in batches; then `DONE`, and it waits to be killed.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_engine::testing::crash::{CrashAccounts, CrashRequest, crash_engine_config};
use ledger_engine::testing::loyalty::{CollectingSink, Loyalty};
use ledger_engine::{Engine, ReplySink, Response};

const WORKERS: u64 = 4;
const BATCH: u64 = 48;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, dir, mode, count] = args.as_slice()
        && mode == "bulk"
    {
        bulk(dir.as_ref(), count.parse().expect("count is a number"));
        return;
    }
    if let [_, dir, mode, seed] = args.as_slice()
        && mode == "expiry"
    {
        expiry(dir.as_ref(), seed.parse().expect("seed is a number"));
        return;
    }
    let [_, dir, round, seed] = args.as_slice() else {
        eprintln!("usage: ledger-crash-writer <data-dir> <round> <seed>");
        std::process::exit(2);
    };
    let round: u64 = round.parse().expect("round is a number");
    let seed: u64 = seed.parse().expect("seed is a number");
    let engine = Arc::new(Engine::open(crash_engine_config(dir.as_ref())).expect("engine opens"));
    let crash_accounts = CrashAccounts::define(&engine);
    // Purchases of the lifecycle customers earn 1 point per unit (recorded once: a later
    // round finds the same version in force).
    let accounts = crash_accounts.loyalty.define_programme(&engine);
    engine
        .define_rules(ledger_engine::loyalty::RuleSet::flat(1, 1), accounts, None)
        .expect("the flat rules are recorded");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let engine = Arc::clone(&engine);
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut rng = (seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
                let mut counter = worker;
                loop {
                    let mut requests = Vec::new();
                    for _ in 0..BATCH {
                        let key = u128::from(round << 32 | counter);
                        let step = (round << 32 | counter) / WORKERS;
                        counter += WORKERS;
                        let shards = engine.shard_count();
                        let at = (worker, step);
                        requests.push(CrashRequest::at_step(key, at, &mut rng, shards));
                    }
                    submit_reported(&engine, &crash_accounts, &out, &requests);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

/// Prints `S` lines for `requests`, submits them in one batch, and prints an `A` line for
/// each answer.
fn submit_reported(
    engine: &Engine,
    accounts: &CrashAccounts,
    out: &Mutex<std::io::Stdout>,
    requests: &[CrashRequest],
) {
    {
        let mut out = out.lock().expect("stdout lock");
        for request in requests {
            writeln!(out, "S {request}").expect("write");
        }
        out.flush().expect("flush");
    }
    let sink = CollectingSink::new();
    let dyn_sink: Arc<dyn ReplySink> = sink.clone();
    let commands = requests
        .iter()
        .enumerate()
        .map(|(tag, request)| (tag as u64, request.command(accounts)))
        .collect();
    engine.submit(&dyn_sink, commands);
    let replies = sink.take(requests.len(), Duration::from_secs(60));
    let mut out = out.lock().expect("stdout lock");
    for (tag, response) in replies {
        let outcome = match response {
            Response::Committed(_) => "C".to_string(),
            Response::Duplicate(_) => "D".to_string(),
            Response::Rejected(code) => format!("R{}", code.code()),
            other => panic!("unexpected {other:?}"),
        };
        writeln!(out, "A {} {outcome}", requests[tag as usize].key).expect("write");
    }
    out.flush().expect("flush");
}

/// A lot for each of `EXPIRY_CUSTOMERS` customers, then, past their midnight, purchases and
/// redemptions while the sweep expires them, until killed.
fn expiry(dir: &std::path::Path, seed: u64) {
    use ledger_engine::clock::ManualClock;
    use ledger_engine::testing::crash::{
        CrashOp, EXPIRY_CUSTOMERS, EXPIRY_START, EXPIRY_SWEEP_AT, expiry_engine_config,
        random_expiry_request,
    };

    let clock = Arc::new(ManualClock::new(EXPIRY_START));
    let engine = Engine::open(expiry_engine_config(dir, clock.clone())).expect("engine opens");
    let crash_accounts = CrashAccounts::define(&engine);
    let accounts = crash_accounts.loyalty.define_programme(&engine);
    engine
        .define_rules(ledger_engine::loyalty::RuleSet::flat(1, 1), accounts, None)
        .expect("rules");
    let out = Mutex::new(std::io::stdout());
    let mut rng = seed | 1;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let first: Vec<CrashRequest> = (0..EXPIRY_CUSTOMERS)
        .map(|customer| CrashRequest {
            key: u128::from(customer) + 1,
            op: CrashOp::Purchase { customer, amount: 1 + next(200) },
        })
        .collect();
    for chunk in first.chunks(1_024) {
        submit_reported(&engine, &crash_accounts, &out, chunk);
    }
    clock.set(EXPIRY_SWEEP_AT);
    {
        let mut out = out.lock().expect("stdout lock");
        writeln!(out, "X").expect("write");
        out.flush().expect("flush");
    }
    let mut key = u128::from(EXPIRY_CUSTOMERS) + 1;
    let mut rng = seed.rotate_left(17) | 1;
    loop {
        let requests: Vec<CrashRequest> = (0..BATCH)
            .map(|_| {
                key += 1;
                random_expiry_request(key, &mut rng)
            })
            .collect();
        submit_reported(&engine, &crash_accounts, &out, &requests);
    }
}

/// One earn under key 1, then `count` later writes on the same shard, then waits to be killed.
fn bulk(dir: &std::path::Path, count: u64) {
    let engine =
        Engine::open(ledger_engine::testing::crash::bulk_engine_config(dir)).expect("engine opens");
    let loyalty = Loyalty::define(&engine);
    let first = engine.execute(loyalty.earn(1, 7, 500)).committed().expect("committed");
    println!("A 1 C {}", first.tx_id.0);
    let mut next = 2u128;
    let end = 2 + u128::from(count);
    while next < end {
        let batch: Vec<_> =
            (next..end.min(next + 8_192)).map(|key| loyalty.earn(key, 99, 1)).collect();
        next += batch.len() as u128;
        let responses = ledger_engine::testing::loyalty::execute_all(&engine, batch);
        assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
    }
    println!("DONE");
    std::io::stdout().flush().expect("flush");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
