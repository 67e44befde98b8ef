//! The specification is enough to write a client: `docs/tools/posclient.py`, written from
//! docs/protocol.md alone with nothing but the Python standard library, authenticates against
//! the real listener, earns, retries, redeems and reads balances, and the Rust client reads back
//! the same balances. A wrong secret is refused at the handshake.
//!
//! Python 3 is part of the CI machine: if `python3` cannot be run, this test fails (it does not
//! skip), since it is the proof that the specification is complete.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestServer;
use ledger_protocol::client::Client;
use ledger_protocol::credentials::hex_encode;
use ledger_protocol::ops::{Op, OpResult, Reply};

/// The customer of every operation.
const CUSTOMER: u64 = 42;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tools/posclient.py")
}

/// A credentials file for terminal 1 with `secret`, in the format of docs/protocol.md.
fn credentials_file(dir: &Path, name: &str, secret: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "# Terminal 1 of the test server.\n[[terminal]]\nid = 1\nsecret = \"{}\"\n",
        hex_encode(secret)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the Python client with `args` (on a blocking thread: the server runs on this runtime).
async fn posclient(args: Vec<String>) -> Output {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script()).args(&args).output()
    })
    .await
    .unwrap();
    output.unwrap_or_else(|error| {
        panic!(
            "cannot run python3 ({error}): this test needs Python 3 on the PATH (CI installs it) \
             to check that docs/protocol.md is enough to write a client"
        )
    })
}

/// The arguments that reach `server` as terminal 1 with the credentials at `path`.
fn base_args(server: &TestServer, path: &Path) -> Vec<String> {
    vec![
        "--addr".into(),
        server.addr.to_string(),
        "--credentials".into(),
        path.display().to_string(),
        "--customer".into(),
        CUSTOMER.to_string(),
    ]
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|arg| arg.to_string()));
    args
}

/// The stdout of a run, checked to have ended with `code`.
fn stdout(output: &Output, code: i32) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stdout:\n{text}\nstderr:\n{errors}");
    text
}

/// The `key=value` fields of the result line that starts with `prefix`.
fn fields(stdout: &str, prefix: &str) -> HashMap<String, String> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

async fn rust_balance(client: &Client) -> i64 {
    match client.call_one(Op::Balance { customer: CUSTOMER }).await.unwrap() {
        OpResult::Ok(Reply::Balance(view)) => view.posted,
        other => panic!("the balance is not readable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_written_from_the_spec_alone_earns_redeems_and_retries() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = credentials_file(dir.path(), "credentials.toml", &common::SECRET);
    let args = base_args(&server, &credentials);
    let purchase = ["--purchase", "12345", "--key", "1001", "--store", "7", "--receipt", "R-1"];

    // A purchase of 123.45 earns 123 points, and the balance in the same request sees it.
    let first = stdout(&posclient(with(args.clone(), &purchase)).await, 0);
    assert!(first.starts_with("connected: session "), "{first}");
    let earned = fields(&first, "purchase: ok ");
    assert_eq!(earned["points"], "123", "{first}");
    assert_eq!(earned["duplicate"], "no", "{first}");
    assert_eq!(earned["key"], "1001", "{first}");
    assert_ne!(earned["tx_id"], "0", "{first}");
    let balance = fields(&first, "balance: ok ");
    assert_eq!((balance["posted"].as_str(), balance["held"].as_str()), ("123", "0"), "{first}");
    assert_eq!(balance["available"], "123", "{first}");
    let client = server.client().await;
    assert_eq!(rust_balance(&client).await, 123);

    // The same command again is a retry with the same key: the original answer, flagged as a
    // duplicate, and nothing posted.
    let retry = stdout(&posclient(with(args.clone(), &purchase)).await, 0);
    let again = fields(&retry, "purchase: ok ");
    assert_eq!(again["duplicate"], "yes", "{retry}");
    assert_eq!((&again["tx_id"], &again["lsn"]), (&earned["tx_id"], &earned["lsn"]), "{retry}");
    assert_eq!(fields(&retry, "balance: ok ")["posted"], "123", "{retry}");
    assert_eq!(rust_balance(&client).await, 123);

    // A purchase too small to earn a point, with the key of the committed purchase: a
    // conflict, as any retry of that key with another payload; nothing changes.
    let tiny = ["--purchase", "99", "--key", "1001"];
    let conflict = stdout(&posclient(with(args.clone(), &tiny)).await, 1);
    assert!(conflict.contains("purchase: idempotency_conflict"), "{conflict}");
    assert_eq!(rust_balance(&client).await, 123);

    // Three operations in one request, applied in order: earn 1 point, spend 24, read 100.
    let mixed = ["--purchase", "100", "--redeem", "24", "--key", "2001"];
    let output = stdout(&posclient(with(args.clone(), &mixed)).await, 0);
    assert_eq!(fields(&output, "purchase: ok ")["points"], "1", "{output}");
    assert_eq!(fields(&output, "redeem: ok ")["key"], "2002", "{output}");
    assert_eq!(fields(&output, "balance: ok ")["posted"], "100", "{output}");
    assert_eq!(rust_balance(&client).await, 100);

    // A refused operation is reported by name, changes nothing, and the exit status says so.
    let refused = stdout(&posclient(with(args.clone(), &["--redeem", "500"])).await, 1);
    assert!(refused.contains("redeem: insufficient_funds"), "{refused}");
    assert_eq!(fields(&refused, "balance: ok ")["posted"], "100", "{refused}");
    assert_eq!(rust_balance(&client).await, 100);

    // A wrong secret is refused at the handshake, with the documented error frame.
    let wrong = credentials_file(dir.path(), "wrong.toml", &[9u8; 32]);
    let output = posclient(base_args(&server, &wrong)).await;
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{errors}");
    assert!(errors.contains("auth_failed"), "{errors}");
    assert_eq!(rust_balance(&client).await, 100);
    server.stop().await;
}
