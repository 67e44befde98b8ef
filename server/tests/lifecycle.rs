//! The real `ledgerd` binary: it starts on an empty data directory, creates it, defines the
//! defaults, writes the terminal credentials (mode 0600) and prints their path, logs the POS
//! address, serves a terminal, and stops cleanly on SIGTERM (exit 0) and SIGINT; it restarts
//! on the same directory with what was acknowledged, and refuses a second process on it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{
    Server, addr_of, listening_addr, signal, start_with, wait_exit, wait_for, wait_for_all,
};

/// The binary, its admin API (if it gets that far) on a free port.
fn ledgerd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
    command.env("LEDGER_ADMIN_ADDR", "127.0.0.1:0");
    command
}

fn start(dir: &std::path::Path) -> (Server, std::sync::mpsc::Receiver<String>) {
    start_with(dir, &["--shards", "2"])
}

#[test]
fn starts_on_an_empty_directory_and_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, lines) = start(&data);
    // stdout and stderr reach the channel from two threads, in either order.
    let [printed, ready, listening] = wait_for_all(
        &lines,
        [
            "stdout: ledgerd: POS terminal credentials written to",
            "ledgerd ready",
            "POS protocol listening",
        ],
    );
    let credentials_path = data.join("credentials.toml");
    assert!(printed.ends_with(&credentials_path.display().to_string()), "{printed}");
    assert!(ready.contains("shards=2"), "{ready}");
    let addr = addr_of(&listening);
    assert!(data.join("ledgerd.meta").is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&credentials_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The terminal of the credentials file is served.
    let credentials = ledger_protocol::Credentials::load(&credentials_path).unwrap();
    let terminal = &credentials.terminals()[0];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let purchase = ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key: 1, ..Default::default() },
        customer: 5,
        amount: 1_000,
    };
    let balance_of = |addr| {
        runtime.block_on(async {
            let client =
                ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
                    .await
                    .unwrap();
            match client.call_one(ledger_protocol::Op::Balance { customer: 5 }).await.unwrap() {
                ledger_protocol::OpResult::Ok(ledger_protocol::Reply::Balance(view)) => view.posted,
                other => panic!("{other:?}"),
            }
        })
    };
    runtime.block_on(async {
        let client = ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
            .await
            .unwrap();
        assert!(client.call_one(purchase).await.unwrap().committed().is_some());
    });
    assert_eq!(balance_of(addr), 10);
    assert!(data.join("shard-000/wal").is_dir() && data.join("shard-001/wal").is_dir());

    // A second ledgerd on the same directory is refused, with a clear message.
    let second = ledgerd().arg("--data-dir").arg(&data).output().unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("in use by another process"), "{message}");

    signal(&child, "TERM");
    wait_for(&lines, "ledgerd stopped");
    assert_eq!(wait_exit(&mut child).code(), Some(0));

    // Restart: recovery replays the definitions; nothing is defined twice; the credentials
    // file is kept; the acknowledged purchase is there.
    let (mut child, lines) = start(&data);
    let ready = wait_for(&lines, "ledgerd ready");
    assert!(ready.contains("assets=2") && ready.contains("classes=9"), "{ready}");
    let addr = listening_addr(&lines);
    assert_eq!(ledger_protocol::Credentials::load(&credentials_path).unwrap(), credentials);
    assert_eq!(balance_of(addr), 10);
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn a_different_shard_count_for_an_existing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start(dir.path());
    wait_for(&lines, "ledgerd ready");
    signal(&child, "TERM");
    let status = wait_exit(&mut child);
    let said: Vec<String> = lines.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{status:?}: {said:#?}");
    let output =
        ledgerd().arg("--data-dir").arg(dir.path()).arg("--shards").arg("3").output().unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("has 2 shards but 3 were requested"), "{message}");

    // Without --shards an existing directory keeps its count, whatever the default is.
    let (mut child, lines) = start_with(dir.path(), &[]);
    let ready = wait_for(&lines, "ledgerd ready");
    assert!(ready.contains("shards=2"), "{ready}");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// The hold timeout maximum is a setting of a new data directory, fixed in its `ledgerd.meta`:
/// the server refuses longer holds, and `--print-config` shows the directory's value (and its
/// shard count) once it exists, whatever the configuration says.
#[test]
fn the_hold_timeout_maximum_is_fixed_per_data_directory_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("ledgerd.toml");
    std::fs::write(&file, "hold_timeout_max_ms = 60000\n").unwrap();
    let print = |args: &[&std::ffi::OsStr]| {
        let output = ledgerd()
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let printed = print(&[std::ffi::OsStr::new("--config"), file.as_os_str()]);
    assert!(printed.contains("hold_timeout_max_ms = 60000\n"), "{printed}");
    assert!(printed.contains("for a new data directory"), "{printed}");
    let printed = print(&[]);
    assert!(printed.contains("hold_timeout_max_ms = 2592000000\n"), "{printed}");

    let config = file.to_str().unwrap();
    let (mut child, lines) = start_with(&data, &["--shards", "2", "--config", config]);
    let addr = listening_addr(&lines);
    let credentials = ledger_protocol::Credentials::load(&data.join("credentials.toml")).unwrap();
    let terminal = credentials.terminals()[0].clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use ledger_protocol::{Op, OpResult, Receipt, Status, WriteMeta};
        let client = ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
            .await
            .unwrap();
        let hold = |key, timeout_ms| Op::Hold {
            meta: WriteMeta { key, store: 0, category: 0, receipt: Receipt::default() },
            customer: 5,
            points: 1,
            timeout_ms,
        };
        // Within the maximum the hold goes on to the ledger (the customer has no points).
        let results = client.call(&[hold(1, 60_001), hold(2, 60_000)]).await.unwrap();
        assert_eq!(
            results,
            vec![
                OpResult::Refused(Status::HoldTimeoutInvalid),
                OpResult::Refused(Status::AccountNotFound)
            ]
        );
    });
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));

    // The directory's value wins over the configuration's default, and its shard count too.
    let printed = print(&[std::ffi::OsStr::new("--shards"), std::ffi::OsStr::new("5")]);
    assert!(printed.contains("hold_timeout_max_ms = 60000\n"), "{printed}");
    assert!(printed.contains("shards = 2\n"), "{printed}");
    assert!(printed.contains("the data directory's (ledgerd.meta)"), "{printed}");
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let output = ledgerd().arg("--shards").arg("0").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--shards"));
    let help = ledgerd().arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}

/// SIGTERM while terminals have requests in flight: every request the server read is
/// answered before it closes the connection, and what it acknowledged is exactly what is in
/// the ledger after a restart; the requests it did not read were never applied.
#[test]
fn sigterm_with_requests_in_flight_loses_nothing_acknowledged() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, lines) = start(&data);
    let addr = listening_addr(&lines);
    let credentials = ledger_protocol::Credentials::load(&data.join("credentials.toml")).unwrap();
    let terminal = credentials.terminals()[0].clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let acknowledged: Arc<Mutex<HashMap<u64, i128>>> = Arc::default();
    let (sent, answered) = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..4u64 {
            let client =
                ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
                    .await
                    .unwrap();
            for lane in 0..8u64 {
                let client = client.clone();
                let acknowledged = Arc::clone(&acknowledged);
                tasks.spawn(async move {
                    let (mut sent, mut answered) = (0u64, 0u64);
                    for round in 0u64.. {
                        let customer = 1 + (worker * 8 + lane + round) % 40;
                        let key = u128::from(worker) << 96
                            | u128::from(lane) << 64
                            | u128::from(round + 1);
                        let op = ledger_protocol::Op::Purchase {
                            meta: ledger_protocol::WriteMeta { key, ..Default::default() },
                            customer,
                            amount: 100 * (1 + round % 7),
                        };
                        sent += 1;
                        match client.call_one(op).await {
                            Ok(result) => {
                                let committed = result.committed().copied().unwrap_or_else(|| {
                                    panic!("a purchase was refused: {result:?}")
                                });
                                answered += 1;
                                *acknowledged.lock().unwrap().entry(customer).or_default() +=
                                    i128::from(committed.points);
                            }
                            Err(_) => return (sent, answered),
                        }
                    }
                    unreachable!("the loop ends when the server closes")
                });
            }
        }
        // Let the load run, then ask the server to stop while requests are in flight.
        tokio::time::sleep(Duration::from_millis(800)).await;
        signal(&child, "TERM");
        let (mut sent, mut answered) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            let (s, a) = joined.unwrap();
            sent += s;
            answered += a;
        }
        (sent, answered)
    });
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(answered > 100, "the load ran: {answered} answered of {sent}");

    let (mut child, lines) = start(&data);
    let addr = listening_addr(&lines);
    let balances: HashMap<u64, i128> = runtime.block_on(async {
        let client = ledger_protocol::client::Client::connect(addr, terminal.id, &terminal.secret)
            .await
            .unwrap();
        let mut balances = HashMap::new();
        for customer in 1..=40u64 {
            let posted = match client
                .call_one(ledger_protocol::Op::Balance { customer })
                .await
                .unwrap()
            {
                ledger_protocol::OpResult::Ok(ledger_protocol::Reply::Balance(view)) => view.posted,
                ledger_protocol::OpResult::Refused(ledger_protocol::Status::AccountNotFound) => 0,
                other => panic!("{other:?}"),
            };
            balances.insert(customer, i128::from(posted));
        }
        balances
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    for customer in 1..=40u64 {
        assert_eq!(
            balances[&customer],
            acknowledged.get(&customer).copied().unwrap_or(0),
            "customer {customer}: the ledger holds exactly the acknowledged purchases"
        );
    }
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}
