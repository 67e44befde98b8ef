//! `ledger-load admin` against the real `ledgerd`: the admin load runs at its rate for its
//! time, every request is answered (200, or 404 for a customer with no account), `/metrics`
//! is scraped every second, and the JSON summary says so.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_admin_load_reads_at_its_rate_and_scrapes_every_second() {
    let ledgerd = Path::new(env!("CARGO_BIN_EXE_ledger-load")).with_file_name("ledgerd");
    assert!(
        ledgerd.is_file(),
        "{} is missing: cargo test --workspace builds it",
        ledgerd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(&ledgerd)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--shards", "1", "--pos-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("LEDGER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::sync_channel::<String>(4096);
    for source in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let (mut token, mut addr, mut ready) = (None, None, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while token.is_none() || addr.is_none() || !ready {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("ledgerd starts");
        if line.contains("admin API token (role admin, shown once)") {
            token = line.rsplit(' ').next().map(str::to_string);
        }
        if let Some(rest) = line.split("admin API listening addr=").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        ready |= line.contains("ledgerd ready");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ledger-load"))
        .args(["admin", "--addr", addr.as_deref().unwrap(), "--rate", "200", "--duration", "2"])
        .args(["--customers", "50", "--json"])
        .env("LEDGER_ADMIN_TOKEN", token.unwrap())
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rate = summary["requests_per_s"].as_f64().unwrap();
    assert!((100.0..=260.0).contains(&rate), "about 200 requests a second: {summary}");
    assert_eq!(
        (summary["errors"].as_u64(), summary["other_status"].as_u64()),
        (Some(0), Some(0)),
        "{summary}"
    );
    // No customer has an account yet: every read is a 404, answered.
    assert!(summary["not_found"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["scrapes"].as_u64().unwrap() >= 1, "{summary}");
}
