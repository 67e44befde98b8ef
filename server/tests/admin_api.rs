//! The admin HTTP API over real sockets: an in-process ledgerd (real engine, real POS
//! listener) with the admin API on `127.0.0.1:0`, and requests written by hand over TCP. Every
//! route of the served OpenAPI document is checked against every role (the auth matrix), the
//! `curl` lines of docs/admin-api.md run against it, `/metrics` parses and moves, and the
//! routes answer `not_ready` before the engine is set.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use ledger_protocol::{Credentials, Op, Status};
use ledger_server::admin::auth::{self, Role, StoredToken, Tokens};
use ledger_server::admin::{AdminConfig, AdminState};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a new connection (`Connection: close`), read to its end.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    // Bodies of these answers are short: axum sends them with a length, not chunked.
    Answer { status, headers, body: body.to_string() }
}

/// A token per role, by role.
struct RoleTokens(BTreeMap<Role, String>);

fn tokens() -> (Tokens, RoleTokens) {
    let mut stored: Vec<StoredToken> = Vec::new();
    let mut plain = BTreeMap::new();
    for role in Role::ALL {
        let (token, entry) = auth::generate(&format!("{}-1", role.name()), role).unwrap();
        stored.push(entry);
        plain.insert(role, token);
    }
    (Tokens::new(&stored).unwrap(), RoleTokens(plain))
}

fn admin_config() -> AdminConfig {
    AdminConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        tokens: "unused".into(),
        body_bytes_max: 64 * 1024,
        timeout: Duration::from_secs(10),
        nice: 0,
    }
}

/// The admin API of `server`, listening.
struct Admin {
    addr: SocketAddr,
    state: Arc<AdminState>,
    roles: RoleTokens,
}

impl Admin {
    fn token(&self, role: Role) -> &str {
        &self.roles.0[&role]
    }

    async fn get(&self, path: &str, role: Role) -> Answer {
        request(self.addr, "GET", path, Some(self.token(role)), None).await
    }
}

/// Starts the admin API; with `server`, serving its engine and POS counters at once.
async fn start_admin(server: Option<&TestServer>) -> Admin {
    let (tokens, roles) = tokens();
    let state = Arc::new(AdminState::new(admin_config(), tokens));
    if let Some(server) = server {
        state.set_engine(Arc::clone(&server.shared.engine));
        state.set_pos(Arc::clone(&server.shared));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ledger_server::admin::serve(listener, Arc::clone(&state), std::future::pending()));
    Admin { addr, state, roles }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_not_ready_until_the_engine_is_recovered() {
    let admin = start_admin(None).await;
    let health = request(admin.addr, "GET", "/healthz", None, None).await;
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("alive")));
    let ready = request(admin.addr, "GET", "/readyz", None, None).await;
    assert_eq!((ready.status, ready.json()["code"].as_str()), (503, Some("not_ready")));
    let customer = admin.get("/v1/customers/1", Role::Admin).await;
    assert_eq!((customer.status, customer.json()["code"].as_str()), (503, Some("not_ready")));
    // Metrics answer while recovering (without the shards' figures).
    let metrics = request(admin.addr, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(!metrics.body.contains("ledger_shard_applied_lsn{"));

    let server = TestServer::start().await;
    admin.state.set_engine(Arc::clone(&server.shared.engine));
    let ready = request(admin.addr, "GET", "/readyz", None, None).await;
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")));
}

/// Every operation of the document with the least role its security names (`None`: open).
fn operations(document: &Value) -> Vec<(String, String, Option<Role>)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            let role = operation["security"].as_array().map(|requirements| {
                let scopes = requirements[0]["bearer"].as_array().expect("bearer scopes");
                let name = scopes[0].as_str().unwrap();
                *Role::ALL.iter().find(|role| role.name() == name).expect("a known role")
            });
            found.push((method.to_uppercase(), path.clone(), role));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_document_enforces_its_role() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let document = request(admin.addr, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(document.status, 200);
    let document = document.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
    let operations = operations(&document);
    // The document lists the routes this build serves (a route added without its description
    // would be missing here and from the matrix).
    for expected in
        ["/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/customers/{customer}"]
    {
        assert!(operations.iter().any(|(_, path, _)| path == expected), "{expected} listed");
    }
    for (method, path, role) in &operations {
        assert!(
            document["paths"][path][method.to_lowercase()]["responses"].is_object(),
            "{method} {path} documents its answers"
        );
        let concrete = ["{customer}", "{tx}", "{hold}", "{purchase}", "{terminal}"]
            .iter()
            .fold(path.clone(), |path, parameter| path.replace(parameter, "1"));
        let Some(role) = role else {
            let answer = request(admin.addr, method, &concrete, None, None).await;
            assert!(answer.status < 400, "{method} {path} open: {}", answer.status);
            continue;
        };
        assert!(path.starts_with("/v1/"), "{path}: only /v1/ routes need a token");
        let none = request(admin.addr, method, &concrete, None, None).await;
        assert_eq!((none.status, none.json()["code"].as_str()), (401, Some("unauthorized")));
        let wrong = request(admin.addr, method, &concrete, Some("ldgr_0"), None).await;
        assert_eq!((wrong.status, wrong.json()["code"].as_str()), (401, Some("unauthorized")));
        for caller in Role::ALL {
            let answer =
                request(admin.addr, method, &concrete, Some(admin.token(caller)), None).await;
            if caller < *role {
                assert_eq!(answer.status, 403, "{caller:?} on {method} {path}: {}", answer.body);
                assert_eq!(answer.json()["code"], "forbidden");
            } else {
                assert!(
                    ![401, 403].contains(&answer.status),
                    "{caller:?} on {method} {path}: {} {}",
                    answer.status,
                    answer.body
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_shows_balances_tier_and_lots() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    // A purchase over the POS protocol: 1 point per 100 minor units (the default flat rules).
    let client = server.client().await;
    let purchase = ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key: 1, ..Default::default() },
        customer: 42,
        amount: 25_000,
    };
    let bought = client.call_one(purchase).await.unwrap().committed().unwrap().tx_id;
    let hold = ledger_protocol::Op::Hold {
        meta: ledger_protocol::WriteMeta { key: 2, ..Default::default() },
        customer: 42,
        points: 50,
        timeout_ms: 60_000,
    };
    let held = client.call_one(hold).await.unwrap().committed().unwrap().tx_id;
    let answer = admin.get("/v1/customers/42?within_days=3650", Role::Auditor).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let view = answer.json();
    assert_eq!(view["customer"], "42");
    let points = view["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["address"] == "customer:42:points")
        .expect("the points account");
    assert_eq!(
        (points["posted"].as_str(), points["available"].as_str()),
        (Some("250"), Some("200"))
    );
    assert_eq!(points["pending_debits"], "50");
    // The open hold and the purchase's lifecycle.
    assert_eq!(view["open_holds"][0]["hold"], held.to_string());
    assert_eq!(view["open_holds"][0]["amount"], "50");
    assert_eq!(view["recent_purchases"][0]["tx_id"], bought.to_string());
    assert_eq!(view["recent_purchases"][0]["state"], "pending");
    assert_eq!(points["asset"], "PTS");
    let loyalty = &view["loyalty"];
    assert_eq!(loyalty["lot_count"], 1);
    assert_eq!(loyalty["lots"][0]["remaining"], "200", "the hold parked 50");
    assert_eq!(loyalty["held"], "50");
    assert_eq!(loyalty["expiring"], "200", "all of it expires within ten years");
    assert_eq!(loyalty["tier"], 0);
    // No such customer; a bad id; a parameter out of range or unknown: typed 4xx, JSON.
    let missing = admin.get("/v1/customers/7", Role::Auditor).await;
    assert_eq!((missing.status, missing.json()["code"].as_str()), (404, Some("not_found")));
    for bad in ["/v1/customers/x", "/v1/customers/42?within_days=4000", "/v1/customers/42?nope=1"] {
        let answer = admin.get(bad, Role::Auditor).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let unknown = admin.get("/v1/nothing", Role::Auditor).await;
    assert_eq!((unknown.status, unknown.json()["code"].as_str()), (404, Some("not_found")));
    let wrong_method =
        request(admin.addr, "DELETE", "/v1/customers/42", Some(admin.token(Role::Admin)), None)
            .await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json()["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_liability_rules_and_rates() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let client = server.client().await;
    for key in 1..=3u128 {
        let purchase = ledger_protocol::Op::Purchase {
            meta: ledger_protocol::WriteMeta { key, ..Default::default() },
            customer: 40 + key as u64,
            amount: 10_000,
        };
        assert!(client.call_one(purchase).await.unwrap().committed().is_some());
    }
    let shards = admin.get("/v1/ops/shards", Role::Auditor).await.json();
    assert_eq!(shards.as_array().unwrap().len(), 2);
    let records: u64 =
        shards.as_array().unwrap().iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert!(records >= 3, "{shards}");
    let lots: u64 = shards.as_array().unwrap().iter().map(|s| s["lots"].as_u64().unwrap()).sum();
    assert_eq!(lots, 3, "one lot per member: {shards}");
    for shard in shards.as_array().unwrap() {
        assert!(shard["records_since_snapshot"].as_u64().unwrap() > 0, "{shard}");
        assert!(shard["snapshot_age_seconds"].is_null(), "records and no snapshot: {shard}");
        assert_eq!(shard["expiry_overdue_seconds"], 0.0, "{shard}");
        assert!(shard["expiry_next_day"].is_string() || shard["lots"] == 0, "{shard}");
    }
    let taken =
        request(admin.addr, "POST", "/v1/ops/snapshot", Some(admin.token(Role::Admin)), None).await;
    assert_eq!(taken.status, 200, "{}", taken.body);
    let lsns: Vec<u64> =
        taken.json()["lsns"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).collect();
    let applied: Vec<u64> =
        shards.as_array().unwrap().iter().map(|s| s["applied_lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, applied, "a snapshot of every shard at its last record");
    let after = admin.get("/v1/ops/shards", Role::Auditor).await.json();
    for shard in after.as_array().unwrap() {
        assert_eq!(shard["records_since_snapshot"], 0, "{shard}");
        assert_eq!(shard["snapshot_age_seconds"], 0.0, "{shard}");
        assert!(shard["snapshot_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{shard}");
    }
    let metrics = samples(&request(admin.addr, "GET", "/metrics", None, None).await.body);
    assert_eq!(metrics.get("ledger_shard_snapshot_age_seconds{shard=\"0\"}"), Some(&0.0));
    let lots_metric: f64 =
        metrics.iter().filter(|(k, _)| k.starts_with("ledger_shard_lots{")).map(|(_, v)| v).sum();
    assert_eq!(lots_metric, 3.0);
    assert!(metrics.contains_key("ledger_shard_expiry_overdue_seconds{shard=\"1\"}"));
    assert!(metrics.contains_key("ledger_shard_expiry_records_total{shard=\"1\"}"));
    let liability = admin.get("/v1/ops/liability?days=1", Role::Auditor).await.json();
    assert_eq!(liability["points_outstanding"], "300");
    let today = &liability["flows"][0];
    assert_eq!(today["issued"], "300", "{liability}");
    assert_eq!(liability["breakage_ppm"], 0);
    let bad = admin.get("/v1/ops/liability?days=0", Role::Auditor).await;
    assert_eq!(bad.status, 400);
    let rules = admin.get("/v1/rules", Role::Auditor).await.json();
    assert_eq!(rules[0]["version"], 1);
    assert_eq!(rules[0]["in_force"], true);
    let rates = admin.get("/v1/rates", Role::Auditor).await.json();
    assert_eq!(rates.as_array().map(Vec::len), Some(0));
}

/// `name{labels} value` lines of a Prometheus text exposition, by name and labels.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            (key.to_string(), value.parse().unwrap_or_else(|_| panic!("{line:?}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_requests() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let client = server.client().await;
    let first = request(admin.addr, "GET", "/metrics", None, None).await;
    assert_eq!(first.status, 200);
    assert!(first.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    assert!(first.body.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    let before = samples(&first.body);
    assert!(before.contains_key("ledger_shard_applied_lsn{shard=\"0\"}"), "{}", first.body);
    let purchase = ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key: 9, ..Default::default() },
        customer: 5,
        amount: 1_000,
    };
    assert!(client.call_one(purchase).await.unwrap().committed().is_some());
    for _ in 0..3 {
        assert_eq!(admin.get("/v1/ops/shards", Role::Auditor).await.status, 200);
    }
    let after = samples(&request(admin.addr, "GET", "/metrics", None, None).await.body);
    let key = "ledger_http_requests_total{method=\"GET\",route=\"/v1/ops/shards\",status=\"200\"}";
    assert_eq!(after.get(key).copied(), Some(3.0), "{after:?}");
    assert!(after["ledger_pos_operations_total"] > before["ledger_pos_operations_total"]);
    assert!(after["ledger_pos_outcomes_total{status=\"ok\"}"] >= 1.0);
    let records = |samples: &BTreeMap<String, f64>| -> f64 {
        samples
            .iter()
            .filter(|(k, _)| k.starts_with("ledger_shard_records_total"))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(records(&after) > records(&before));
    assert!(after.keys().any(|k| k.starts_with("ledger_http_request_duration_seconds_bucket")));
    // The purchase is timed under its opcode: one operation, in a bucket below +Inf.
    let timed = "ledger_pos_operation_duration_seconds_count{opcode=\"purchase\"}";
    assert_eq!(after.get(timed).copied(), Some(1.0), "{after:?}");
    let within_8s = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with("ledger_pos_operation_duration_seconds_bucket{")
                && k.contains("purchase")
                && k.contains("le=\"8.388608\"")
        })
        .map(|(_, v)| *v)
        .next();
    assert_eq!(within_8s, Some(1.0), "{after:?}");
    let all = "ledger_pos_operation_duration_seconds_bucket{le=\"+Inf\",opcode=\"purchase\"}";
    assert_eq!(after.get(all).copied(), Some(1.0), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_curl_lines_succeed() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    // The examples read customer 42.
    let purchase = ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key: 1, ..Default::default() },
        customer: 42,
        amount: 5_000,
    };
    assert!(server.client().await.call_one(purchase).await.unwrap().committed().is_some());
    let document = include_str!("../../docs/admin-api.md");
    let lines: Vec<&str> = document.lines().filter(|line| line.contains("curl -s")).collect();
    assert!(lines.len() >= 8, "the examples: {lines:?}");
    let address = admin.addr.to_string();
    let token = admin.token(Role::Admin).to_string();
    for line in lines {
        let (line_owned, address, token) = (line.to_string(), address.clone(), token.clone());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&line_owned)
                .env("ADMIN", &address)
                .env("TOKEN", &token)
                .output()
                .expect("curl runs")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{line}: {:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.stdout.is_empty(), "{line}: an answer");
    }
}

/// The real binary: the first start prints an admin token once and keeps only its hash; the
/// API listens while the shards recover a large WAL, `/readyz` says `not_ready` then `ready`,
/// and the printed token reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_not_ready_while_it_recovers_and_its_first_token_works() {
    use common::process::{addr_of, signal, start_with, wait_exit, wait_for_all};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A WAL of 600,000 records and no snapshot: recovery replays all of them.
    tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let mut config = ledger_engine::EngineConfig::new(&data);
            config.shard_count = Some(1);
            config.tuning.snapshot_on_shutdown = false;
            config.tuning.snapshot_every_records = 0;
            config.tuning.snapshot_every = Duration::ZERO;
            let engine = ledger_engine::Engine::open(config).unwrap();
            let loyalty = ledger_engine::testing::loyalty::Loyalty::define(&engine);
            for chunk in 0..75u128 {
                let earns = (0..8_000u128)
                    .map(|i| loyalty.earn(1 + chunk * 8_000 + i, (i % 1_000) as u64, 1))
                    .collect();
                let answers = ledger_engine::testing::loyalty::execute_all(&engine, earns);
                assert!(answers.iter().all(|a| a.committed().is_some()));
            }
            engine.shutdown();
        }
    })
    .await
    .unwrap();
    let (mut child, lines) = start_with(&data, &[]);
    // stdout and stderr arrive in either order.
    let [token_line, listening] =
        wait_for_all(&lines, ["admin API token (role admin, shown once)", "admin API listening"]);
    let token = token_line.rsplit(' ').next().unwrap().to_string();
    assert!(token.starts_with("ldgr_"));
    let addr = addr_of(&listening);
    let first = request(addr, "GET", "/readyz", None, None).await;
    assert_eq!(
        (first.status, first.json()["code"].as_str()),
        (503, Some("not_ready")),
        "recovering"
    );
    let health = request(addr, "GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200, "alive while recovering");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if request(addr, "GET", "/readyz", None, None).await.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shards = request(addr, "GET", "/v1/ops/shards", Some(&token), None).await;
    assert_eq!(shards.status, 200, "{}", shards.body);
    assert!(shards.json()[0]["applied_lsn"].as_u64().unwrap() >= 600_000);
    let stored = std::fs::read_to_string(data.join("admin-tokens.toml")).unwrap();
    assert!(!stored.contains(&token) && stored.contains("role = \"admin\""), "{stored}");
    // The API runs on a thread of its own at nice 10 (`[admin] nice`); the POS threads at 0.
    let nice = |name: &str| -> Vec<i64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.0.id())).unwrap();
        tasks
            .filter_map(|task| {
                let path = task.unwrap().path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the parenthesised name: state is field 3, nice field 19.
                let after = &stat[stat.rfind(')')? + 2..];
                let nice = after.split(' ').nth(16)?.parse().ok()?;
                (comm.trim() == name).then_some(nice)
            })
            .collect()
    };
    assert_eq!(nice("ledgerd-admin"), [10], "one admin thread, at nice 10");
    assert!(nice("ledgerd-io").iter().all(|n| *n == 0), "{:?}", nice("ledgerd-io"));
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    // A second start prints no token.
    let (mut child, lines) = start_with(&data, &[]);
    let mut seen = Vec::new();
    loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("ledgerd starts");
        if line.contains("ledgerd ready") {
            break;
        }
        seen.push(line);
    }
    assert!(!seen.iter().any(|line| line.contains("ldgr_")), "{seen:#?}");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_stay_stable_while_writes_continue_and_transactions_explain() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let client = server.client().await;
    let buy = |key: u128, amount: u64| ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key, ..Default::default() },
        customer: 42,
        amount,
    };
    for key in 1..=5u128 {
        let op = buy(key, 100 * key as u64);
        assert!(client.call_one(op).await.unwrap().committed().is_some());
    }
    let page = |path: String| {
        let admin = &admin;
        async move {
            let answer = admin.get(&path, Role::Auditor).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            answer.json()
        }
    };
    let amounts = |page: &Value| -> Vec<String> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["amount"].as_str().unwrap().to_string())
            .collect()
    };
    let first = page("/v1/customers/42/history?limit=2".to_string()).await;
    assert_eq!(amounts(&first), ["5", "4"], "newest first: 1 point per 100");
    assert_eq!(first["entries"][0]["direction"], "credit");
    assert_eq!(first["entries"][0]["kind"], "purchase");
    assert!(first["retention"].as_str().unwrap().contains("PostgreSQL"));
    // A write between pages does not move the next page.
    assert!(client.call_one(buy(6, 600)).await.unwrap().committed().is_some());
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = page(format!("/v1/customers/42/history?limit=2&cursor={cursor}")).await;
    assert_eq!(amounts(&second), ["3", "2"]);
    let cursor = second["next_cursor"].as_str().unwrap().to_string();
    let third = page(format!("/v1/customers/42/history?limit=2&cursor={cursor}")).await;
    assert_eq!(amounts(&third), ["1"]);
    assert!(third["next_cursor"].is_null());
    assert_eq!(third["older_entries_elsewhere"], false);
    // A cursor is bound to its query: edited, or used with other filters, it is refused.
    for bad in [
        format!("/v1/customers/42/history?cursor={}", "0".repeat(32)),
        format!("/v1/customers/42/history?cursor={cursor}&kind=purchase"),
        format!("/v1/customers/43/history?cursor={cursor}"),
        "/v1/customers/42/history?cursor=zz".to_string(),
        "/v1/customers/42/history?limit=0".to_string(),
        "/v1/customers/42/history?kind=nothing".to_string(),
        "/v1/customers/42/history?class=nothing".to_string(),
        "/v1/customers/42/history?from=yesterday".to_string(),
    ] {
        let answer = admin.get(&bad, Role::Auditor).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    // Filters: a kind no entry has, a class, a time range that holds everything.
    assert!(amounts(&page("/v1/customers/42/history?kind=redeem".to_string()).await).is_empty());
    assert_eq!(amounts(&page("/v1/customers/42/history?class=points".to_string()).await).len(), 6);
    let all = page(
        "/v1/customers/42/history?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z".to_string(),
    )
    .await;
    assert_eq!(amounts(&all), ["6", "5", "4", "3", "2", "1"]);

    // A transaction: its posting, what it earned and its lifecycle.
    let tx = first["entries"][0]["tx_id"].as_str().unwrap();
    let view = admin.get(&format!("/v1/transactions/{tx}"), Role::Auditor).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let view = view.json();
    assert_eq!(view["postings"][0]["account"], "customer:42:points");
    assert_eq!(view["purchase"]["earned"], "5");
    assert_eq!(view["purchase"]["customer"], "42");
    assert_eq!(view["lifecycle"]["state"], "pending");
    let missing = admin.get("/v1/transactions/1", Role::Auditor).await;
    assert_eq!((missing.status, missing.json()["code"].as_str()), (404, Some("not_found")));
    let bad = admin.get("/v1/transactions/x", Role::Auditor).await;
    assert_eq!(bad.status, 400);
}

/// A write with a key and a JSON body.
async fn post(admin: &Admin, role: Role, path: &str, key: &str, body: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        admin.token(role),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer { status, headers: Vec::new(), body: body.to_string() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_are_idempotent_by_key_and_recorded_with_who_and_why() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let points = |customer: u64| {
        let admin = &admin;
        async move {
            let view = admin.get(&format!("/v1/customers/{customer}"), Role::Auditor).await.json();
            view["accounts"]
                .as_array()
                .and_then(|accounts| {
                    accounts.iter().find(|a| a["address"] == format!("customer:{customer}:points"))
                })
                .map(|a| a["posted"].as_str().unwrap().to_string())
        }
    };
    // An adjustment: credited, then the same key and body again (the original answer), then
    // the same key with another reason (a conflict).
    let body = r#"{"amount": "300", "reason": "welcome bonus, ticket 17"}"#;
    let first = post(&admin, Role::Operator, "/v1/customers/42/adjustments", "adj-1", body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(
        (first["amount"].as_str(), first["duplicate"].as_bool()),
        (Some("300"), Some(false))
    );
    let again =
        post(&admin, Role::Operator, "/v1/customers/42/adjustments", "adj-1", body).await.json();
    assert_eq!(
        (again["tx_id"].clone(), again["duplicate"].as_bool()),
        (first["tx_id"].clone(), Some(true))
    );
    let other = r#"{"amount": "300", "reason": "another reason"}"#;
    let conflict =
        post(&admin, Role::Operator, "/v1/customers/42/adjustments", "adj-1", other).await;
    assert_eq!(
        (conflict.status, conflict.json()["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    assert_eq!(points(42).await.as_deref(), Some("300"));
    // Debits below zero are refused and change nothing; the key stays free.
    let overdraw = r#"{"amount": "-301", "reason": "correction"}"#;
    let refused =
        post(&admin, Role::Operator, "/v1/customers/42/adjustments", "adj-2", overdraw).await;
    assert_eq!(
        (refused.status, refused.json()["code"].as_str()),
        (422, Some("insufficient_funds"))
    );
    let fine = r#"{"amount": "-100", "reason": "correction"}"#;
    assert_eq!(
        post(&admin, Role::Operator, "/v1/customers/42/adjustments", "adj-2", fine).await.status,
        200
    );
    // A transfer across customers (they may be on two shards).
    let transfer = r#"{"from": 42, "to": 43, "amount": "50", "reason": "household merge"}"#;
    let moved = post(&admin, Role::Operator, "/v1/transfers", "tr-1", transfer).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(
        (points(42).await.as_deref(), points(43).await.as_deref()),
        (Some("150"), Some("50"))
    );
    // A purchase over the POS protocol, settled, refunded in part, through the API.
    let client = server.client().await;
    let purchase = ledger_protocol::Op::Purchase {
        meta: ledger_protocol::WriteMeta { key: 1, ..Default::default() },
        customer: 44,
        amount: 10_000,
    };
    let bought = client.call_one(purchase).await.unwrap().committed().unwrap().tx_id;
    let settle = post(
        &admin,
        Role::Operator,
        &format!("/v1/purchases/{bought}/settle"),
        "s-1",
        r#"{"reason": "bank confirmed"}"#,
    )
    .await;
    assert_eq!(settle.status, 200, "{}", settle.body);
    let refund = post(
        &admin,
        Role::Support,
        &format!("/v1/purchases/{bought}/refund"),
        "r-1",
        r#"{"amount": "2500", "reason": "one item returned"}"#,
    )
    .await;
    assert_eq!(refund.status, 200, "{}", refund.body);
    assert_eq!(points(44).await.as_deref(), Some("75"), "a quarter of 100 points taken back");
    let again = post(
        &admin,
        Role::Operator,
        &format!("/v1/purchases/{bought}/settle"),
        "s-2",
        r#"{"reason": "twice"}"#,
    )
    .await;
    assert_eq!(again.json()["code"], "purchase_already_settled");
    // Roles: support may refund but not adjust.
    let denied = post(&admin, Role::Support, "/v1/customers/42/adjustments", "adj-3", body).await;
    assert_eq!(denied.status, 403);
    // Bad bodies and keys: typed 4xx, nothing posted.
    for (path, key, body, status, code) in [
        (
            "/v1/customers/42/adjustments",
            "bad-1",
            r#"{"amount": "0", "reason": "x"}"#,
            400,
            "bad_request",
        ),
        ("/v1/customers/42/adjustments", "bad-2", r#"{"amount": "1"}"#, 400, "bad_request"),
        (
            "/v1/customers/42/adjustments",
            "bad-3",
            r#"{"amount": "1", "reason": " "}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/customers/42/adjustments",
            "bad-4",
            r#"{"amount": "1", "reason": "x", "extra": 1}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/customers/42/adjustments",
            "bad-5",
            r#"{"amount": 1, "reason": "x"}"#,
            400,
            "bad_request",
        ),
        ("/v1/customers/42/adjustments", "bad-6", "{", 400, "bad_request"),
        (
            "/v1/conversions",
            "bad-7",
            r#"{"customer": 42, "from": "PTS", "to": "NOPE", "amount": "1", "reason": "x"}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/conversions",
            "bad-8",
            r#"{"customer": 42, "from": "PTS", "to": "CASHBACK", "amount": "1", "reason": "x"}"#,
            422,
            "rate_missing",
        ),
        ("/v1/holds/77/void", "bad-9", r#"{"reason": "x"}"#, 404, "hold_not_found"),
    ] {
        let answer = post(&admin, Role::Admin, path, key, body).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (status, Some(code)),
            "{path} {body}"
        );
    }
    let too_big = format!(r#"{{"amount": "1", "reason": "{}"}}"#, "x".repeat(70_000));
    let answer = post(&admin, Role::Admin, "/v1/customers/42/adjustments", "big", &too_big).await;
    assert_eq!((answer.status, answer.json()["code"].as_str()), (413, Some("payload_too_large")));
    let no_key = request(
        admin.addr,
        "POST",
        "/v1/customers/42/adjustments",
        Some(admin.token(Role::Admin)),
        Some(body),
    )
    .await;
    assert_eq!((no_key.status, no_key.json()["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(points(42).await.as_deref(), Some("150"), "nothing refused was posted");

    // The WAL says who and why.
    let engine = Arc::clone(&server.shared.engine);
    let tx = first["tx_id"].as_str().unwrap().parse::<u64>().unwrap();
    let shard = ledger_engine::TxId(tx).shard();
    let wal = ledger_engine::recovery::ShardPaths::new(server.dir.path(), shard).wal;
    let mut found = None;
    ledger_engine::wal::reader::scan(
        &wal,
        &ledger_engine::wal::reader::ScanOptions::all(),
        |record| {
            let decoded = record.decode().unwrap();
            if decoded.body.tx_id() == Some(ledger_engine::TxId(tx)) {
                let header = decoded.body.header().unwrap();
                let annotation = header.metadata.annotation.clone().unwrap();
                found = Some((
                    header.terminal.0,
                    annotation.actor().to_string(),
                    annotation.reason().to_string(),
                ));
            }
            Ok::<(), ()>(())
        },
    )
    .unwrap();
    drop(engine);
    assert_eq!(found, Some((0, "operator-1".to_string(), "welcome bonus, ticket 17".to_string())));
}

/// The example rule file of docs/loyalty.md ("Rule files").
fn example_rule_file() -> String {
    let document = include_str!("../../docs/loyalty.md");
    let section = &document[document.find("## Rule files").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_rates_dry_runs_conversions_and_the_balance_check() {
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let json = |value: Value| value.to_string();
    // A dry run with the version in force (1 point per 100) and with the documented rules.
    let basket = serde_json::json!({"lines": [{"category": 0, "amount": "2500"}]});
    let dry =
        post(&admin, Role::Auditor, "/v1/rules/dry-run", "unused", &json(basket.clone())).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.json()["earned"], "25");
    let with_rules = serde_json::json!({"rules": example_rule_file(), "lines": [{"category": 0, "amount": "2500"}]});
    let dry = post(&admin, Role::Auditor, "/v1/rules/dry-run", "unused", &json(with_rules)).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert!(dry.json()["earned"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    let bad = serde_json::json!({"rules": "[earning]\npoints = -1\n", "lines": [{"category": 0, "amount": "1"}]});
    let refused = post(&admin, Role::Auditor, "/v1/rules/dry-run", "unused", &json(bad)).await;
    assert_eq!((refused.status, refused.json()["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(admin.get("/v1/rules", Role::Auditor).await.json().as_array().unwrap().len(), 1);
    // Recording the documented rules: a new version, then the same one again.
    let body = json(serde_json::json!({"rules": example_rule_file()}));
    let first = post(&admin, Role::Admin, "/v1/rules", "unused", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        (first.json()["version"].as_u64(), first.json()["new"].as_bool()),
        (Some(2), Some(true))
    );
    let again = post(&admin, Role::Admin, "/v1/rules", "unused", &body).await.json();
    assert_eq!((again["version"].as_u64(), again["new"].as_bool()), (Some(2), Some(false)));
    let versions = admin.get("/v1/rules", Role::Auditor).await.json();
    assert_eq!(versions[1]["in_force"], true);

    // A partner and a rate by names, then a conversion through the API.
    let engine = Arc::clone(&server.shared.engine);
    let loyalty = ledger_engine::testing::loyalty::Loyalty::define(&engine);
    let partner = ledger_engine::testing::loyalty::Partner::define(&engine, &loyalty);
    assert!(engine.execute(partner.credit(900, 42, 100)).committed().is_some());
    let rate = serde_json::json!({
        "from": {"asset": "PARTNER_A_POINTS", "customer_class": "partner_a",
                 "fund": "house:exchange_partner_a", "money_fund": "partner:7:exchange",
                 "value_minor_units": 2, "value_points": 1},
        "to": {"asset": "PTS", "customer_class": "points", "fund": "house:exchange_pts",
               "money_fund": "partner:0:exchange", "value_minor_units": 1, "value_points": 1},
        "numerator": 3, "denominator": 2, "liability_asset": "USD"
    });
    let defined = post(&admin, Role::Admin, "/v1/rates", "unused", &json(rate.clone())).await;
    assert_eq!(defined.status, 200, "{}", defined.body);
    assert_eq!(defined.json()["version"], 1);
    let mut same_asset = rate.clone();
    same_asset["to"] = same_asset["from"].clone();
    let refused = post(&admin, Role::Admin, "/v1/rates", "unused", &json(same_asset)).await;
    assert_eq!(
        (refused.status, refused.json()["code"].as_str()),
        (409, Some("definition_conflict"))
    );
    let mut unknown = rate.clone();
    unknown["to"]["fund"] = Value::from("house:nowhere");
    assert_eq!(post(&admin, Role::Admin, "/v1/rates", "unused", &json(unknown)).await.status, 400);
    assert_eq!(admin.get("/v1/rates", Role::Auditor).await.json()[0]["numerator"], 3);
    let convert = serde_json::json!({"customer": 42, "from": "PARTNER_A_POINTS", "to": "PTS", "amount": "7", "reason": "member asked"});
    let converted = post(&admin, Role::Operator, "/v1/conversions", "conv-1", &json(convert)).await;
    assert_eq!(converted.status, 200, "{}", converted.body);
    assert_eq!(converted.json()["amount"], "10");

    // Every asset sums to zero.
    let check = admin.get("/v1/ops/balance-check", Role::Auditor).await.json();
    assert_eq!(check["balanced"], true, "{check}");
    let pts = check["assets"].as_array().unwrap().iter().find(|a| a["asset"] == "PTS").unwrap();
    assert_eq!(pts["debits_posted"], pts["credits_posted"]);
    assert_ne!(pts["debits_posted"], "0");
}

/// `--print-config` shows the admin settings and the tokens file's path, never a token or a
/// hash, even once the file exists.
/// A handshake as `terminal` with `secret`: the status it was refused with, or `Ok`.
async fn handshake_status(server: &TestServer, terminal: u32, secret: &[u8]) -> Status {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    match ledger_protocol::client::handshake(&mut stream, terminal, secret).await {
        Ok(_) => Status::Ok,
        Err(ledger_protocol::client::ClientError::Closed { status, .. }) => status,
        Err(other) => panic!("{other:?}"),
    }
}

fn secret_of(answer: &Answer) -> Vec<u8> {
    let secret = answer.json()["secret"].as_str().expect("a secret").to_string();
    ledger_protocol::credentials::hex_decode(&secret).expect("hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_are_created_disabled_and_rotated_in_the_file_and_live() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let path = server.shared.terminals.path().to_path_buf();
    let listed = admin.get("/v1/terminals", Role::Auditor).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<u64> = listed.json()["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(listed.json()["terminals"][2]["effective_rate_per_second"], 5);
    assert!(!listed.body.contains("secret"), "a list never shows secrets: {}", listed.body);

    // Create: the secret is answered once, written to the file (0600) and accepted at once.
    let created =
        post(&admin, Role::Admin, "/v1/terminals", "k1", r#"{"rate_per_second": 50}"#).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["id"], 4);
    let secret = secret_of(&created);
    let file = Credentials::load(&path).unwrap();
    assert_eq!(file.terminal(4).unwrap().secret, secret);
    assert_eq!(file.terminal(4).unwrap().rate_per_second, Some(50));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let client = server.client_as(4, &secret).await;
    assert_eq!(client.welcome().rate_per_second, 50);
    assert_eq!(client.call_one(Op::Ping).await.unwrap().status(), Status::Ok);
    let named = post(&admin, Role::Admin, "/v1/terminals", "k2", r#"{"id": 90}"#).await;
    assert_eq!((named.status, named.json()["id"].as_u64()), (201, Some(90)));

    // Disable terminal 2 with a session open on a raw connection: the session is closed with
    // auth_failed, a new handshake is refused, and the file says so.
    let mut session = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    ledger_protocol::client::handshake(&mut session, 2, &[2; 32]).await.unwrap();
    let sessions = admin.get("/v1/terminals", Role::Auditor).await.json();
    assert_eq!(sessions["terminals"][1]["sessions"], 1);
    let disabled = post(&admin, Role::Admin, "/v1/terminals/2/disable", "k3", "").await;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    assert_eq!(disabled.json()["sessions_closed"], 1);
    let mut reader = common::RawReader::default();
    let closing = reader.next(&mut session).await;
    assert!(matches!(closing, common::Received::Error(0, Status::AuthFailed, _)), "{closing:?}");
    assert!(matches!(reader.next(&mut session).await, common::Received::Closed));
    assert_eq!(handshake_status(&server, 2, &[2; 32]).await, Status::AuthFailed);
    assert!(Credentials::load(&path).unwrap().terminal(2).unwrap().disabled);
    let again = post(&admin, Role::Admin, "/v1/terminals/2/disable", "k4", "").await;
    assert_eq!((again.status, again.json()["code"].as_str()), (409, Some("terminal_disabled")));

    // Rotate terminal 4 while its client is connected: the old session ends after answering,
    // the old secret is refused, the new one works, the rate stays.
    let rotated = post(&admin, Role::Admin, "/v1/terminals/4/rotate", "k5", "").await;
    assert_eq!((rotated.status, rotated.json()["sessions_closed"].as_u64()), (200, Some(1)));
    let fresh = secret_of(&rotated);
    assert_ne!(fresh, secret);
    // The session learns of it on its own task: a call racing the revocation may still be
    // answered, and then the connection closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.call_one(Op::Ping).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the old secret's session is closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handshake_status(&server, 4, &secret).await, Status::AuthFailed);
    assert_eq!(handshake_status(&server, 4, &fresh).await, Status::Ok);
    assert_eq!(Credentials::load(&path).unwrap().terminal(4).unwrap().secret, fresh);
    // A rotation enables a disabled terminal again, with a secret its old holders lack.
    let revived = post(&admin, Role::Admin, "/v1/terminals/2/rotate", "k6", "").await;
    assert_eq!(revived.status, 200, "{}", revived.body);
    assert_eq!(handshake_status(&server, 2, &[2; 32]).await, Status::AuthFailed);
    assert_eq!(handshake_status(&server, 2, &secret_of(&revived)).await, Status::Ok);

    // Refusals change nothing.
    let before = std::fs::read(&path).unwrap();
    for (path, body, status, code) in [
        ("/v1/terminals", r#"{"id": 1}"#, 409, "terminal_exists"),
        ("/v1/terminals", r#"{"id": 0}"#, 400, "bad_request"),
        ("/v1/terminals", r#"{"rate_per_second": 0}"#, 400, "bad_request"),
        ("/v1/terminals", r#"{"secret": "00"}"#, 400, "bad_request"),
        ("/v1/terminals/77/disable", "", 404, "terminal_not_found"),
        ("/v1/terminals/77/rotate", "", 404, "terminal_not_found"),
        ("/v1/terminals/x/rotate", "", 400, "bad_request"),
        ("/v1/terminals/0/disable", "", 400, "bad_request"),
    ] {
        let answer = post(&admin, Role::Admin, path, "k", body).await;
        assert_eq!(
            (answer.status, answer.json()["code"].as_str()),
            (status, Some(code)),
            "{path} {body}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");
    let forbidden = post(&admin, Role::Operator, "/v1/terminals", "k", "{}").await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(Credentials::load(&path).unwrap().terminals().len(), 5);
}

/// POSTs a settlement report as `text/csv` (or as `content_type`).
async fn import(admin: &Admin, query: &str, csv: &str, content_type: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    let head = format!(
        "POST /v1/settlements{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        admin.token(Role::Operator),
        csv.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A refused large body may be answered before it is all sent.
    let _ = stream.write_all(csv.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer { status, headers: Vec::new(), body: body.to_string() }
}

/// Every shard's applied LSN: equal before and after means nothing was written.
async fn lsns(admin: &Admin) -> Vec<u64> {
    let shards = admin.get("/v1/ops/shards", Role::Auditor).await.json();
    shards.as_array().unwrap().iter().map(|s| s["applied_lsn"].as_u64().unwrap()).collect()
}

fn payments(list: &Value, field: &str) -> Vec<String> {
    let mut found: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            entry["row"]["payment_id"].as_str().unwrap().to_string()
                + "="
                + entry[field].as_str().unwrap_or("")
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_report_moves_matched_purchases_reports_the_rest_and_imports_once() {
    use ledger_protocol::{Receipt, WriteMeta};
    let server = TestServer::start().await;
    let admin = start_admin(Some(&server)).await;
    let client = server.client().await;
    // Six purchases at stores 7 and 8, on several customers (and so both shards).
    let mut tx = BTreeMap::new();
    for (key, store, receipt, customer, amount) in [
        (1, 7, "R-1", 11, 2_500),
        (2, 7, "R-2", 12, 1_000),
        (3, 7, "R-3", 13, 100),
        (4, 7, "R-4", 14, 50),
        (5, 8, "R-5", 15, 300),
        (6, 7, "R-6", 16, 70),
    ] {
        let meta = WriteMeta { key, store, category: 0, receipt: Receipt::new(receipt).unwrap() };
        let result = client.call_one(Op::Purchase { meta, customer, amount }).await.unwrap();
        tx.insert(receipt, result.committed().expect("committed").tx_id);
    }
    // R-6 was settled before the report came.
    let early = post(
        &admin,
        Role::Operator,
        &format!("/v1/purchases/{}/settle", tx["R-6"]),
        "s6",
        r#"{"reason": "till"}"#,
    )
    .await;
    assert_eq!(early.status, 200, "{}", early.body);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let time = ledger_engine::loyalty::calendar::rfc3339(ledger_engine::Timestamp(
        u64::try_from(now.as_nanos()).unwrap(),
    ));
    // Planted: pay-2's amount differs, pay-9 has no purchase, R-4 has no row, pay-7 repeats R-1.
    let csv = format!(
        "payment_id,receipt,store,time,amount,status\n\
         pay-1,R-1,7,{time},2500,settled\n\
         pay-2,R-2,7,{time},999,settled\n\
         pay-3,R-3,7,{time},100,failed\n\
         pay-5,R-5,8,{time},300,SETTLED\n\
         pay-6,R-6,7,{time},70,settled\n\
         pay-7,R-1,7,{time},2500,settled\n\
         pay-9,R-9,7,{time},40,settled\n"
    );

    // A dry run moves nothing and says what would move.
    let before = lsns(&admin).await;
    let dry = import(&admin, "?dry_run=true", &csv, "text/csv").await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    let dry = dry.json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        payments(&dry["matched"], "outcome"),
        ["pay-1=would_settle", "pay-3=would_fail", "pay-5=would_settle", "pay-6=already_settled"]
    );
    assert_eq!(lsns(&admin).await, before, "a dry run writes nothing");

    let first = import(&admin, "", &csv, "text/csv").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(
        payments(&first["matched"], "outcome"),
        ["pay-1=settled", "pay-3=failed", "pay-5=settled", "pay-6=already_settled"]
    );
    assert_eq!(payments(&first["amount_mismatches"], "none"), ["pay-2="]);
    assert_eq!(first["amount_mismatches"][0]["purchase"]["amount"], "1000");
    assert_eq!(
        payments(&first["unmatched_rows"], "reason"),
        ["pay-7=duplicate_receipt", "pay-9=no_purchase"]
    );
    let unmatched: Vec<String> = first["unmatched_purchases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tx_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unmatched, [tx["R-4"].to_string()], "R-4 is pending and in no row");
    let totals = &first["totals"];
    let sum = |name: &str| {
        (
            totals[name]["count"].as_u64().unwrap(),
            totals[name]["amount"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(sum("report"), (7, "6509".into()));
    assert_eq!(sum("matched"), (4, "2970".into()));
    assert_eq!(sum("changed"), (3, "2900".into()));
    assert_eq!(sum("already"), (1, "70".into()));
    assert_eq!(sum("refused"), (0, "0".into()));
    assert_eq!(sum("amount_mismatches"), (1, "999".into()));
    assert_eq!(sum("amount_mismatches_ledger"), (1, "1000".into()));
    assert_eq!(sum("unmatched_rows"), (2, "2540".into()));
    assert_eq!(sum("unmatched_purchases"), (1, "50".into()));
    // The ledger agrees: settled, failed, untouched.
    for (receipt, state) in [
        ("R-1", "settled"),
        ("R-2", "pending"),
        ("R-3", "failed"),
        ("R-4", "pending"),
        ("R-5", "settled"),
    ] {
        let answer = admin.get(&format!("/v1/transactions/{}", tx[receipt]), Role::Auditor).await;
        assert_eq!(answer.json()["lifecycle"]["state"], state, "{receipt}: {}", answer.body);
    }

    // The same file again changes nothing.
    let written = lsns(&admin).await;
    let second = import(&admin, "", &csv, "text/csv").await.json();
    assert_eq!(
        payments(&second["matched"], "outcome"),
        [
            "pay-1=already_settled",
            "pay-3=already_failed",
            "pay-5=already_settled",
            "pay-6=already_settled"
        ]
    );
    assert_eq!(second["totals"]["changed"]["count"], 0);
    assert_eq!(second["totals"]["unmatched_purchases"], first["totals"]["unmatched_purchases"]);
    assert_eq!(lsns(&admin).await, written, "a second import writes nothing");

    // Bad reports are refused whole, with the line and column, and change nothing.
    let bad = csv.replace("pay-3,R-3,7", "pay-3,R-3,seven");
    let refused = import(&admin, "", &bad, "text/csv").await;
    assert_eq!((refused.status, refused.json()["code"].as_str()), (400, Some("bad_request")));
    assert!(
        refused.json()["message"].as_str().unwrap().contains("line 4, store"),
        "{}",
        refused.body
    );
    let wrong_type = import(&admin, "", &csv, "application/json").await;
    assert_eq!(
        (wrong_type.status, wrong_type.json()["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let unknown = import(&admin, "?dry=1", &csv, "text/csv").await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let huge = format!("{csv}{}", "x".repeat(70 * 1024));
    let too_large = import(&admin, "", &huge, "text/csv").await;
    assert_eq!(
        (too_large.status, too_large.json()["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(lsns(&admin).await, written, "refused reports write nothing");
}

#[test]
fn print_config_shows_the_admin_settings_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tokens = data.join("admin-tokens.toml");
    let (token, stored) = auth::generate("ops", Role::Operator).unwrap();
    auth::store(&tokens, std::slice::from_ref(&stored)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--admin-addr", "127.0.0.1:7999", "--print-config"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("[admin]\naddr = \"127.0.0.1:7999\""), "{printed}");
    assert!(printed.contains(&format!("tokens = {:?}", tokens.display().to_string())), "{printed}");
    assert!(!printed.contains(&token) && !printed.contains(&stored.sha256), "{printed}");
    assert!(!printed.contains("ldgr_"), "{printed}");
}
