//! An in-process ledgerd for the protocol tests: a real engine on a temporary data directory,
//! the real POS listener on `127.0.0.1:0`, and clients that connect over real sockets.

#![allow(dead_code, reason = "each test file uses a different part of the harness")]

pub mod pg;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledger_engine::clock::Clock;
use ledger_engine::loyalty::rules_file::RulesFile;
use ledger_engine::{Engine, EngineConfig, Limits, ShardTuning};
use ledger_protocol::client::Client;
use ledger_protocol::{Credentials, Terminal};
use ledger_server::config::PosConfig;
use ledger_server::pos::{self, Drained, Shared};
use tokio::sync::oneshot;

/// Terminal 1's secret; terminal 2 has `[2; 32]`, terminal 3 (rate 5/s) `[3; 32]`.
pub const SECRET: [u8; 32] = [1; 32];

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Drained>>,
    pub dir: tempfile::TempDir,
}

/// Settings small enough to reach every limit.
pub fn pos_config() -> PosConfig {
    PosConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        credentials: "unused".into(),
        frame_bytes_max: 1024 * 1024,
        batch_ops_max: 8192,
        in_flight_max: 256,
        ops_in_flight_max: 65_536,
        ops_in_flight_total_max: 1 << 20,
        connections_max: 64,
        handshakes_max: 64,
        rate_per_terminal: 10_000_000,
        handshake_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
        earn_points: 1,
        earn_per_minor_units: 100,
        io_threads: 1,
    }
}

pub fn credentials() -> Credentials {
    Credentials::new(vec![
        Terminal { id: 1, secret: SECRET.to_vec(), rate_per_second: None, disabled: false },
        Terminal { id: 2, secret: vec![2; 32], rate_per_second: None, disabled: false },
        Terminal { id: 3, secret: vec![3; 32], rate_per_second: Some(5), disabled: false },
    ])
    .unwrap()
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(pos_config()).await
    }

    pub async fn start_with(config: PosConfig) -> TestServer {
        let tuning = ShardTuning { tick: Duration::from_millis(2), ..ShardTuning::default() };
        TestServer::start_in(tempfile::tempdir().unwrap(), config, tuning, None).await
    }

    /// A server on `dir` (new or left by `stop_engine`), with this shard timing and clock.
    pub async fn start_in(
        dir: tempfile::TempDir,
        config: PosConfig,
        tuning: ShardTuning,
        clock: Option<Arc<dyn Clock>>,
    ) -> TestServer {
        TestServer::open(dir, config, tuning, clock, None).await
    }

    /// A server on a new data directory whose time is `clock` and whose loyalty rules are
    /// `rules` (recorded as `ledgerd --rules FILE` does, before the listener starts).
    pub async fn start_with_rules(
        config: PosConfig,
        clock: Arc<dyn Clock>,
        rules: &RulesFile,
    ) -> TestServer {
        let tuning = ShardTuning { tick: Duration::from_millis(2), ..ShardTuning::default() };
        TestServer::open(tempfile::tempdir().unwrap(), config, tuning, Some(clock), Some(rules))
            .await
    }

    async fn open(
        dir: tempfile::TempDir,
        config: PosConfig,
        tuning: ShardTuning,
        clock: Option<Arc<dyn Clock>>,
        rules: Option<&RulesFile>,
    ) -> TestServer {
        let mut engine_config = EngineConfig::new(dir.path());
        engine_config.shard_count = Some(2);
        engine_config.limits = Limits {
            inbox_depth_max: 4096,
            idempotency_keys_max: 1 << 16,
            holds_open_max: 1024,
            history_entries_max: 1 << 14,
            transaction_postings_max: 8,
            segment_bytes: 8 * 1024 * 1024,
            ..Limits::test_min()
        };
        engine_config.tuning = tuning;
        if let Some(clock) = clock {
            engine_config.clock = clock;
        }
        let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config).unwrap())
            .await
            .unwrap();
        let defined = ledger_server::bootstrap::define_defaults(&engine).unwrap();
        ledger_server::bootstrap::record_rules(&engine, defined.accounts, rules, &config).unwrap();
        let terminals = pos::terminals::Terminals::new(
            credentials(),
            dir.path().join("credentials.toml"),
            config.rate_per_terminal,
        );
        let shared = Arc::new(Shared {
            book: pos::handler::Book::new(&engine).unwrap(),
            engine: Arc::new(engine),
            config,
            terminals,
            stats: Default::default(),
            ops_in_flight: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(shared.config.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pos::run(listener, Arc::clone(&shared), async move {
            let _ = stopped.await;
        }));
        TestServer { addr, shared, stop: Some(stop), task: Some(task), dir }
    }

    pub async fn client(&self) -> Client {
        self.client_as(1, &SECRET).await
    }

    pub async fn client_as(&self, terminal: u32, secret: &[u8]) -> Client {
        Client::connect(self.addr, terminal, secret).await.unwrap()
    }

    /// Stops the listener and drains the connections.
    pub async fn stop(mut self) -> Drained {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// Stops the listener and shuts the engine down (every client must be dropped first), and
    /// returns the data directory for `start_in`.
    pub async fn stop_engine(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        let shared = Arc::into_inner(self.shared).expect("no connection holds the server");
        let engine = Arc::into_inner(shared.engine).expect("nothing else holds the engine");
        tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
        self.dir
    }
}

/// A raw, authenticated connection as terminal 1, for tests that write bytes themselves.
pub async fn raw(server: &TestServer) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    ledger_protocol::client::handshake(&mut stream, 1, &SECRET).await.unwrap();
    stream
}

/// What the server sent on a raw connection.
#[derive(Debug)]
pub enum Received {
    /// A response: its request id and results.
    Response(u64, Vec<ledger_protocol::OpResult>),
    /// An error frame: its request id, status and message.
    Error(u64, ledger_protocol::Status, String),
    /// The server closed the connection.
    Closed,
}

/// Reads frames from a raw connection.
pub struct RawReader {
    reader: ledger_protocol::client::FrameReader,
}

impl Default for RawReader {
    fn default() -> RawReader {
        RawReader { reader: ledger_protocol::client::FrameReader::new(16 * 1024 * 1024) }
    }
}

impl RawReader {
    /// The next frame (or the close), waiting at most 10 s.
    pub async fn next(&mut self, stream: &mut tokio::net::TcpStream) -> Received {
        use ledger_protocol::frame::FrameType;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((header, body)) = self.reader.next_frame().unwrap() {
                return match header.frame_type {
                    FrameType::Response => {
                        let results = ledger_protocol::ops::decode_response_body(body, 1 << 16)
                            .unwrap()
                            .into_iter()
                            .map(|(_, result)| result)
                            .collect();
                        Received::Response(header.request_id, results)
                    }
                    FrameType::Error => {
                        let (status, message) =
                            ledger_protocol::session::decode_error(body).unwrap();
                        Received::Error(header.request_id, status, message)
                    }
                    other => panic!("unexpected {other:?}"),
                };
            }
            match tokio::time::timeout_at(deadline, self.reader.fill(stream)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Ok(Err(_)) => return Received::Closed,
                Err(_) => panic!("nothing from the server for 10 s"),
            }
        }
    }
}

/// A request frame with these operations.
pub fn request(id: u64, ops: &[ledger_protocol::Op]) -> Vec<u8> {
    let mut frame = Vec::new();
    ledger_protocol::client::encode_request(&mut frame, id, ops);
    frame
}

/// The complete example rule file of docs/loyalty.md ("Rule files"): the text of its ```toml
/// block, the rule set of the document's worked examples.
pub fn example_rules_text() -> &'static str {
    const DOCUMENT: &str = include_str!("../../../docs/loyalty.md");
    let section = &DOCUMENT[DOCUMENT.find("## Rule files").expect("the section")..];
    let start = section.find("```toml\n").expect("the example") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("its closing fence");
    &section[start..end]
}

/// The example rule file, parsed by the engine's rule-file reader.
pub fn example_rules() -> RulesFile {
    ledger_engine::loyalty::rules_file::parse(example_rules_text()).expect("the documented example")
}
