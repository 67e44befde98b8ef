//! An async client for ledgerd's POS protocol (feature `client`, on tokio).
//!
//! Two layers:
//! - `connect` + `FrameReader` + `encode_request`: the pieces, for callers that drive a
//!   connection themselves (the load generator keeps hundreds of requests in flight per
//!   connection and reads and writes many frames per system call);
//! - `Client`: a cloneable handle that pipelines. Any number of tasks may `call` at once; each
//!   request gets a fresh id, requests go out as they are made, and answers (which the server
//!   sends as they become durable, in any order) are matched back by id. The number in flight
//!   never exceeds the session's `in_flight_max`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, oneshot};

use crate::frame::{
    FRAME_BYTES_LIMIT, FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameType, begin_frame, check,
    finish_frame,
};
use crate::ops::{Op, OpResult, ResponseView, encode_request_body};
use crate::session::{self, Welcome};
use crate::status::Status;
use crate::wire::WireError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the handshake or closed the connection with this status.
    #[error("server closed the session: {status}: {message}")]
    Closed {
        /// Why.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server refused the whole request (rate limit, in-flight limit, malformed…);
    /// nothing in it was applied.
    #[error("request refused: {status}: {message}")]
    Refused {
        /// Why.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server sent bytes that do not follow the protocol.
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The connection ended before the answer came. The request may or may not have been
    /// applied: retry it with the same idempotency key.
    #[error("connection lost before the answer")]
    Disconnected,
}

impl From<FrameError> for ClientError {
    fn from(error: FrameError) -> ClientError {
        ClientError::Protocol(error.to_string())
    }
}

impl From<WireError> for ClientError {
    fn from(error: WireError) -> ClientError {
        ClientError::Protocol(error.to_string())
    }
}

/// Connects, authenticates as `terminal` with `secret`, and returns the stream and the
/// session's limits.
pub async fn connect(
    addr: SocketAddr,
    terminal: u32,
    secret: &[u8],
) -> Result<(TcpStream, Welcome), ClientError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let welcome = handshake(&mut stream, terminal, secret).await?;
    Ok((stream, welcome))
}

/// Runs the handshake on a connected stream.
pub async fn handshake(
    stream: &mut TcpStream,
    terminal: u32,
    secret: &[u8],
) -> Result<Welcome, ClientError> {
    let mut out = Vec::new();
    session::encode_hello(&mut out, terminal);
    stream.write_all(&out).await?;
    let mut reader = FrameReader::new(4096);
    let (header, body) = reader.read_one(stream).await?;
    let nonce = match header.frame_type {
        FrameType::Challenge => session::decode_challenge(&body)?,
        FrameType::Error => return Err(closed(&body)),
        other => return Err(ClientError::Protocol(format!("expected a challenge, got {other:?}"))),
    };
    out.clear();
    session::encode_auth(&mut out, &session::auth_mac(secret, terminal, &nonce));
    stream.write_all(&out).await?;
    let (header, body) = reader.read_one(stream).await?;
    match header.frame_type {
        FrameType::Welcome => Ok(session::decode_welcome(&body)?),
        FrameType::Error => Err(closed(&body)),
        other => Err(ClientError::Protocol(format!("expected a welcome, got {other:?}"))),
    }
}

fn closed(body: &[u8]) -> ClientError {
    match session::decode_error(body) {
        Ok((status, message)) => ClientError::Closed { status, message },
        Err(error) => error.into(),
    }
}

/// Appends a request frame.
pub fn encode_request(out: &mut Vec<u8>, request_id: u64, ops: &[Op]) {
    let start = begin_frame(out, FrameType::Request, request_id);
    encode_request_body(ops, out);
    finish_frame(out, start);
}

/// Reads frames from a stream into a buffer bounded by the frame size limit.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    start: usize,
    frame_bytes_max: usize,
}

impl FrameReader {
    /// A reader that refuses frames above `frame_bytes_max` bytes.
    pub fn new(frame_bytes_max: usize) -> FrameReader {
        let frame_bytes_max = frame_bytes_max.clamp(FRAME_HEADER_BYTES, FRAME_BYTES_LIMIT);
        FrameReader { buf: Vec::with_capacity(64 * 1024), start: 0, frame_bytes_max }
    }

    /// The next complete frame already buffered, if any: its header and body.
    pub fn next_frame(&mut self) -> Result<Option<(FrameHeader, &[u8])>, FrameError> {
        let pending = self.buf.get(self.start..).unwrap_or(&[]);
        let Some(header) = check(pending, self.frame_bytes_max)? else {
            return Ok(None);
        };
        let body_start = self.start + FRAME_HEADER_BYTES;
        self.start += header.frame_bytes();
        Ok(Some((header, self.buf.get(body_start..self.start).unwrap_or(&[]))))
    }

    /// Reads more bytes (at least one); `Ok(false)` at end of stream.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        Ok(stream.read_buf(&mut self.buf).await? > 0)
    }

    async fn read_one<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(FrameHeader, Vec<u8>), ClientError> {
        loop {
            if let Some((header, body)) = self.next_frame()? {
                return Ok((header, body.to_vec()));
            }
            if !self.fill(stream).await? {
                return Err(ClientError::Disconnected);
            }
        }
    }
}

type Answer = Result<Vec<OpResult>, ClientError>;

/// Requests waiting for their answers, by id, with the number of results each expects.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, (oneshot::Sender<Answer>, usize)>,
    /// The reader stopped: no answer will come any more.
    closed: bool,
}

struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    welcome: Welcome,
}

/// A pipelining client; clone it to share the connection between tasks.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("session", &self.shared.welcome.session).finish()
    }
}

impl Client {
    /// Connects and authenticates.
    pub async fn connect(
        addr: SocketAddr,
        terminal: u32,
        secret: &[u8],
    ) -> Result<Client, ClientError> {
        let (stream, welcome) = connect(addr, terminal, secret).await?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            in_flight: Semaphore::new(usize::from(welcome.in_flight_max.max(1))),
            welcome,
        });
        tokio::spawn(read_answers(read, Arc::clone(&shared)));
        Ok(Client { shared })
    }

    /// The session's limits.
    pub fn welcome(&self) -> Welcome {
        self.shared.welcome
    }

    /// Sends one request of 1..=`batch_ops_max` operations and waits for its results, one
    /// per operation, in order.
    pub async fn call(&self, ops: &[Op]) -> Result<Vec<OpResult>, ClientError> {
        if ops.len() > usize::from(u16::MAX) {
            // No request can carry them: refused here, as the server would refuse a batch above
            // its `batch_ops_max`.
            return Err(ClientError::Refused {
                status: Status::BatchTooLarge,
                message: format!("{} operations do not fit one request", ops.len()),
            });
        }
        let _permit =
            self.shared.in_flight.acquire().await.map_err(|_| ClientError::Disconnected)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            if pending.closed {
                return Err(ClientError::Disconnected);
            }
            pending.waiting.insert(id, (sender, ops.len()));
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + 4 + ops.len() * 64);
        encode_request(&mut frame, id, ops);
        let written = self.shared.writer.lock().await.write_all(&frame).await;
        if let Err(error) = written {
            self.shared.pending.lock().expect("pending lock").waiting.remove(&id);
            return Err(error.into());
        }
        receiver.await.unwrap_or(Err(ClientError::Disconnected))
    }

    /// Sends one operation and waits for its result.
    pub async fn call_one(&self, op: Op) -> Result<OpResult, ClientError> {
        let mut results = self.call(&[op]).await?;
        results.pop().ok_or_else(|| ClientError::Protocol("an empty response".into()))
    }
}

async fn read_answers(mut read: tokio::net::tcp::OwnedReadHalf, shared: Arc<Shared>) {
    let mut reader = FrameReader::new(shared.welcome.frame_bytes_max as usize);
    let failure = loop {
        match reader.next_frame() {
            Ok(Some((header, body))) => {
                if let Err(error) = dispatch(&shared, header, body) {
                    break error;
                }
            }
            Ok(None) => match reader.fill(&mut read).await {
                Ok(true) => {}
                Ok(false) => break ClientError::Disconnected,
                Err(error) => break error.into(),
            },
            Err(error) => break error.into(),
        }
    };
    // Everyone still waiting learns that the connection is gone; their requests are in doubt.
    let pending: Vec<_> = {
        let mut pending = shared.pending.lock().expect("pending lock");
        pending.closed = true;
        pending.waiting.drain().collect()
    };
    shared.in_flight.close();
    let status_of = |error: &ClientError| match error {
        ClientError::Closed { status, message } => {
            ClientError::Closed { status: *status, message: message.clone() }
        }
        _ => ClientError::Disconnected,
    };
    for (_, (sender, _)) in pending {
        let _ = sender.send(Err(status_of(&failure)));
    }
}

fn dispatch(shared: &Shared, header: FrameHeader, body: &[u8]) -> Result<(), ClientError> {
    match header.frame_type {
        FrameType::Response => {
            let entry =
                shared.pending.lock().expect("pending lock").waiting.remove(&header.request_id);
            let (sender, expected) = entry.ok_or_else(|| {
                ClientError::Protocol(format!("an answer to unknown request {}", header.request_id))
            })?;
            let view = ResponseView::parse(body, expected)?;
            if view.len() != expected {
                return Err(ClientError::Protocol("a response with the wrong result count".into()));
            }
            let results = view.results().map(|raw| raw.decode()).collect::<Result<Vec<_>, _>>()?;
            let _ = sender.send(Ok(results));
            Ok(())
        }
        FrameType::Error => {
            let (status, message) = session::decode_error(body)?;
            if header.request_id == 0 {
                return Err(ClientError::Closed { status, message });
            }
            let entry =
                shared.pending.lock().expect("pending lock").waiting.remove(&header.request_id);
            if let Some((sender, _)) = entry {
                let _ = sender.send(Err(ClientError::Refused { status, message }));
            }
            Ok(())
        }
        other => Err(ClientError::Protocol(format!("unexpected {other:?} frame"))),
    }
}
