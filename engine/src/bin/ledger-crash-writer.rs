//! A writer for crash tests (`engine/tests/crash.rs`), run as a child process and killed with
//! SIGKILL at a random moment. It writes forever and reports on stdout, flushed line by line:
//! `S <key> <request>` before it submits a request, `A <key> <outcome>` once it is answered.
//! An `A … C` (committed) or `A … D` (duplicate) line means the write was acknowledged, so it
//! must survive the kill.
//!
//! Usage: `ledger-crash-writer <data-dir> <round> <seed>`; keys of round `r` are `r << 32 | n`.
//!
//! `ledger-crash-writer <data-dir> bulk <count>` (`engine/tests/key_index.rs`): one earn of 500
//! points for customer 7 with key 1, reported `A 1 C <tx_id>`; then `count` earns of 1 point for
//! customer 99 (keys from 2), in batches; then `DONE`, and it waits to be killed.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_engine::testing::crash::{CrashRequest, crash_engine_config};
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
    let [_, dir, round, seed] = args.as_slice() else {
        eprintln!("usage: ledger-crash-writer <data-dir> <round> <seed>");
        std::process::exit(2);
    };
    let round: u64 = round.parse().expect("round is a number");
    let seed: u64 = seed.parse().expect("seed is a number");
    let engine = Arc::new(Engine::open(crash_engine_config(dir.as_ref())).expect("engine opens"));
    let loyalty = Loyalty::define(&engine);
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
                        counter += WORKERS;
                        requests.push(CrashRequest::random(key, &mut rng, engine.shard_count()));
                    }
                    {
                        let mut out = out.lock().expect("stdout lock");
                        for request in &requests {
                            writeln!(out, "S {request}").expect("write");
                        }
                        out.flush().expect("flush");
                    }
                    let sink = CollectingSink::new();
                    let dyn_sink: Arc<dyn ReplySink> = sink.clone();
                    let commands = requests
                        .iter()
                        .enumerate()
                        .map(|(tag, request)| (tag as u64, request.command(&loyalty)))
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
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
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
