//! The real `ledgerd` binary as tests run it: started on a data directory with its POS
//! listener on a free loopback port, its output lines on a channel, stopped by signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if a test fails before stopping it.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts ledgerd on `dir` (POS on a free loopback port) with `args`; its stdout lines (prefixed
/// `stdout: `) and stderr lines arrive on the channel.
pub fn start_with(
    dir: &std::path::Path,
    args: &[&str],
) -> (Server, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .args(["--pos-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("LEDGER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ledgerd");
    let (lines_tx, lines_rx) = std::sync::mpsc::sync_channel(1024);
    forward(child.stdout.take().unwrap(), "stdout: ", lines_tx.clone());
    forward(child.stderr.take().unwrap(), "", lines_tx);
    (Server(child), lines_rx)
}

/// Sends each line of `source`, prefixed, until the channel's receiver is gone.
pub fn forward(
    source: impl std::io::Read + Send + 'static,
    prefix: &'static str,
    lines: std::sync::mpsc::SyncSender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            if lines.send(format!("{prefix}{line}")).is_err() {
                break;
            }
        }
    });
}

pub fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
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

/// Waits until a line containing each needle arrived, in any order; returns them in the
/// needles' order.
pub fn wait_for_all<const N: usize>(
    lines: &std::sync::mpsc::Receiver<String>,
    needles: [&str; N],
) -> [String; N] {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|error| panic!("no lines containing {needles:?}: {error}"));
        for (slot, needle) in found.iter_mut().zip(needles) {
            if slot.is_none() && line.contains(needle) {
                *slot = Some(line.clone());
            }
        }
    }
    found.map(|line| line.expect("all found"))
}

/// The address from the "POS protocol listening" log line.
pub fn listening_addr(lines: &std::sync::mpsc::Receiver<String>) -> std::net::SocketAddr {
    addr_of(&wait_for(lines, "POS protocol listening"))
}

pub fn addr_of(line: &str) -> std::net::SocketAddr {
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
    addr.parse().unwrap_or_else(|_| panic!("{line}"))
}

pub fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(server: &mut Server) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "ledgerd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then the exit code: 0 for a clean stop.
pub fn stop(mut server: Server) -> Option<i32> {
    signal(&server, "TERM");
    wait_exit(&mut server).code()
}
