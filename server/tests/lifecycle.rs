//! The real `ledgerd` binary: it starts on an empty data directory, creates it, defines the
//! defaults, and stops cleanly on SIGTERM (exit 0) and SIGINT; it restarts on the same
//! directory and refuses a second process on it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> (Server, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--shards")
        .arg("2")
        .env("LEDGER_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ledgerd");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (Server(child), lines_rx)
}

fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(error) => panic!("no line containing {needle:?}: {error}"),
        }
    }
}

fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(server: &mut Server) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "ledgerd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn starts_on_an_empty_directory_and_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, lines) = start(&data);
    let ready = wait_for(&lines, "ledgerd ready");
    assert!(ready.contains("shards=2"), "{ready}");
    assert!(data.join("ledgerd.meta").is_file());
    assert!(data.join("shard-000/wal").is_dir() && data.join("shard-001/wal").is_dir());

    // A second ledgerd on the same directory is refused, with a clear message.
    let second =
        Command::new(env!("CARGO_BIN_EXE_ledgerd")).arg("--data-dir").arg(&data).output().unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("in use by another process"), "{message}");

    signal(&child, "TERM");
    wait_for(&lines, "ledgerd stopped");
    assert_eq!(wait_exit(&mut child).code(), Some(0));

    // Restart: recovery replays the definitions; nothing is defined twice.
    let (mut child, lines) = start(&data);
    let ready = wait_for(&lines, "ledgerd ready");
    assert!(ready.contains("assets=1") && ready.contains("classes=5"), "{ready}");
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn a_different_shard_count_for_an_existing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start(dir.path());
    wait_for(&lines, "ledgerd ready");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let output = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--shards")
        .arg("3")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("has 2 shards but 3 were requested"), "{message}");
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_ledgerd")).arg("--shards").arg("0").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--shards"));
    let help = Command::new(env!("CARGO_BIN_EXE_ledgerd")).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}
