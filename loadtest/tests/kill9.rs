//! `ledger-load` against the real `ledgerd`, which is killed with SIGKILL in the middle of the
//! load: after a restart, `ledger-load verify` finds every acknowledged write in the ledger
//! (settling the writes whose answers the kill swallowed), and a tampered ack log is caught.
//! Also the command line: the JSON report, the chart, and refused arguments.
//!
//! `ledgerd` is found next to `ledger-load` in the target directory (`cargo test --workspace`
//! builds every binary before running any test).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn ledgerd_path() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ledger-load")).with_file_name("ledgerd");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A ledgerd child, killed if the test fails.
struct Server {
    child: Child,
    lines: Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &Path) -> (Server, SocketAddr) {
        let mut child = Command::new(ledgerd_path())
            .arg("--data-dir")
            .arg(data)
            .args(["--shards", "2", "--pos-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .env("LEDGER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::sync_channel(4096);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server = Server { child, lines };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server.lines.recv_timeout(left).expect("ledgerd logs its address");
            if let Some(rest) = line.split("POS protocol listening addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return (server, addr);
            }
        }
    }
}

fn ledger_load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ledger-load")).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn acknowledged_writes_survive_sigkill_and_verify_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let credentials = data.join("credentials.toml");
    let acks = dir.path().join("acks.log");
    let chart = dir.path().join("chart.svg");
    let (mut server, addr) = Server::start(&data);
    let addr_text = addr.to_string();
    let load = Command::new(env!("CARGO_BIN_EXE_ledger-load"))
        .args(["--addr", &addr_text, "--credentials", credentials.to_str().unwrap()])
        .args(["--duration", "8", "--connections", "4", "--in-flight", "16", "--customers", "300"])
        .args([
            "--mix",
            "purchase=25,basket=20,redeem=20,transfer=25,hold=10",
            "--preload",
            "50000",
        ])
        .args(["--ack-log", acks.to_str().unwrap(), "--chart", chart.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the timed load is under way (the ack log grows past the preload), then kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = std::fs::read_to_string(&acks).map(|t| t.lines().count()).unwrap_or(0);
        if lines > 3_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the load never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let output = load.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a run whose server died fails: {}",
        text(&output.stderr)
    );
    assert!(text(&output.stderr).contains("connections failed"), "{}", text(&output.stderr));

    let (_server, addr) = Server::start(&data);
    let addr_text = addr.to_string();
    let verify = |log: &Path| {
        ledger_load(&[
            "verify",
            "--addr",
            &addr_text,
            "--credentials",
            credentials.to_str().unwrap(),
            "--ack-log",
            log.to_str().unwrap(),
            "--settle",
            "5",
        ])
    };
    let output = verify(&acks);
    assert_eq!(output.status.code(), Some(0), "{}{}", text(&output.stdout), text(&output.stderr));
    assert!(text(&output.stdout).contains("every balance equals"), "{}", text(&output.stdout));

    // The check can fail: one invented point is found.
    let tampered = dir.path().join("tampered.log");
    let mut log = std::fs::read_to_string(&acks).unwrap();
    log.push_str("A 1 7 1\n");
    std::fs::write(&tampered, log).unwrap();
    let output = verify(&tampered);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("mismatch: customer 7"), "{}", text(&output.stdout));
}

#[test]
fn the_report_is_json_on_the_last_line_with_a_chart_and_bad_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let credentials = data.join("credentials.toml");
    let chart = dir.path().join("chart.svg");
    let (_server, addr) = Server::start(&data);
    let addr_text = addr.to_string();
    let credentials_text = credentials.to_str().unwrap();
    let output = ledger_load(&[
        "--addr",
        &addr_text,
        "--credentials",
        credentials_text,
        "--duration",
        "2",
        "--connections",
        "2",
        "--in-flight",
        "8",
        "--rate",
        "2000",
        "--zipf",
        "1.1",
        "--chart",
        chart.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["tps", "ok", "rejected", "errors", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[key].is_u64(), "{key} in {report}");
    }
    assert!(report["ok"].as_u64().unwrap() > 1_000, "{report}");
    let tps = report["tps"].as_u64().unwrap();
    assert!((1_500..=2_500).contains(&tps), "open loop at 2,000/s: {tps}");
    assert!(stdout.contains("latency µs: p50"), "{stdout}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("latency per second"));
    assert!(text(&output.stderr).contains("ops/s"), "a progress line");

    let usage = |args: &[&str], expected: &str| {
        let output = ledger_load(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    usage(
        &["--addr", "10.1.2.3:7400", "--credentials", credentials_text, "--duration", "1"],
        "loopback",
    );
    usage(&["--addr", &addr_text, "--credentials", credentials_text], "--duration");
    usage(
        &[
            "--addr",
            &addr_text,
            "--credentials",
            credentials_text,
            "--duration",
            "1",
            "--mix",
            "purchase=50",
        ],
        "100",
    );
    usage(
        &["--addr", &addr_text, "--credentials", "/nonexistent", "--duration", "1"],
        "nonexistent",
    );
    usage(
        &["--addr", &addr_text, "--credentials", credentials_text, "--duration", "0"],
        "duration",
    );
    // Nothing listens: exit code 3.
    let closed = ledger_load(&[
        "--addr",
        "127.0.0.1:1",
        "--credentials",
        credentials_text,
        "--duration",
        "1",
    ]);
    assert_eq!(closed.status.code(), Some(3), "{}", text(&closed.stderr));
}
