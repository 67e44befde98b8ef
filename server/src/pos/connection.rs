//! One POS connection: the handshake, then requests in, answers out, on one task.
//!
//! The task reads as many bytes as the socket has, cuts every complete frame out of them,
//! turns their operations into engine commands and submits all of them in one
//! `Engine::submit` call (one wake-up of each shard per read, not per request). The engine
//! delivers answers through the connection's `Sink`, whenever their batch is durable; the
//! task wakes, fills in the waiting requests, and writes every finished response in one
//! system call. Answers go out in the order they become durable, not the order of requests:
//! clients match them by request id.
//!
//! Bounds: before the `Welcome` the read buffer holds at most one handshake frame
//! (`HANDSHAKE_FRAME_BYTES_MAX`, 48 bytes), and the connection holds one of the listener's
//! `handshakes_max` places; after it, the read buffer holds at most one frame beyond what is
//! parsed (`frame_bytes_max`); at most `in_flight_max` requests and `ops_in_flight_max` operations wait for answers (more
//! is refused `too_many_in_flight`), and all connections together at most
//! `ops_in_flight_total_max` operations (more is refused `busy`), which bounds what the engine's
//! queues can hold; the output buffer stops the reading when it holds more than
//! `OUTPUT_BYTES_MAX` that the peer has not taken, so a client that does not read its answers
//! stalls only itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ledger_engine::{Command, Engine, ReplySink, Response};
use ledger_protocol::Status;
use ledger_protocol::frame::{
    FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameType, begin_frame, check, finish_frame,
};
use ledger_protocol::ops::{
    COUNT_HEADER_BYTES, Op, OpResult, RequestView, encode_result, put_count_header,
    result_bytes_max,
};
use ledger_protocol::session::{self, HANDSHAKE_FRAME_BYTES_MAX, NONCE_BYTES, Welcome};
use smallvec::SmallVec;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use super::handler::{self, Book, Plan};
use super::rate::Bucket;
use super::stats::PosStats;
use super::terminals::Terminals;
use crate::config::PosConfig;

/// Unsent answer bytes past which the connection stops reading requests.
const OUTPUT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes read per system call at most.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Capacity the input and output buffers get once the terminal is authenticated (before that
/// they hold a handshake frame).
const BUFFER_BYTES_INITIAL: usize = 64 * 1024;
/// Bits of a command tag that hold the operation's index in its request.
const TAG_INDEX_BITS: u32 = 16;

/// What every connection shares.
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// How operations post.
    pub book: Book,
    /// Limits and timeouts.
    pub config: PosConfig,
    /// The terminals accepted, with their rate limits.
    pub terminals: Terminals,
    /// Counters.
    pub stats: PosStats,
    /// Operations unanswered over all connections (see `PosConfig::ops_in_flight_total_max`).
    pub ops_in_flight: Arc<AtomicUsize>,
}

/// Where the engine delivers a connection's answers.
struct Sink {
    replies: Mutex<Replies>,
    ready: Notify,
    /// The server-wide count of unanswered operations: answers that arrive after the
    /// connection closed release their share here.
    ops_in_flight: Arc<AtomicUsize>,
}

/// Answers waiting for the connection task.
#[derive(Default)]
struct Replies {
    queued: Vec<(u64, Response)>,
    /// The connection is gone; nobody will collect.
    closed: bool,
}

impl ReplySink for Sink {
    fn deliver(&self, replies: Vec<(u64, Response)>) {
        {
            let mut guard = self.replies.lock().expect("reply lock");
            if guard.closed {
                self.ops_in_flight.fetch_sub(replies.len(), Ordering::Relaxed);
                return;
            }
            let queued = &mut guard.queued;
            if queued.is_empty() {
                *queued = replies;
            } else {
                queued.extend(replies);
            }
        }
        self.ready.notify_one();
    }
}

/// Where the handshake stands.
enum Phase {
    /// Waiting for `Hello`.
    Hello,
    /// `Challenge` sent; waiting for `Auth`.
    Auth { terminal: u32, nonce: [u8; NONCE_BYTES] },
    /// Authenticated.
    Ready { terminal: u32, bucket: Arc<Mutex<Bucket>> },
}

/// One operation of a request waiting for its answer.
struct OpSlot {
    opcode: u8,
    /// An `explain` that asked for the purchase's lifecycle too.
    lifecycle: bool,
    result: Option<OpResult>,
}

/// A request waiting for the answers of its operations.
struct Waiting {
    request_id: u64,
    remaining: usize,
    ops: SmallVec<[OpSlot; 1]>,
    /// When the read that brought it was processed.
    received: Instant,
}

struct Connection {
    shared: Arc<Shared>,
    session: u64,
    sink: Arc<Sink>,
    /// Bytes read, from `input_start` on not parsed yet.
    input: Vec<u8>,
    input_start: usize,
    /// Bytes to send, from `output_start` on not sent yet.
    output: Vec<u8>,
    output_start: usize,
    phase: Phase,
    /// Requests waiting for answers, by slot (the high bits of a command's tag).
    waiting: Vec<Option<Waiting>>,
    free_slots: Vec<usize>,
    /// The ids of the requests waiting for answers (at most `in_flight_max`): a request with
    /// one of them is refused `request_id_in_use`, so that no two answers share an id. Keyed
    /// hashing (a random seed per process) on the hot path; the ids are the client's, but a
    /// client can only slow its own connection, whose set is bounded.
    ids_in_flight: HashSet<u64, foldhash::fast::RandomState>,
    in_flight: usize,
    /// Operations of the requests in flight.
    ops_in_flight: usize,
    /// Commands of the frames being parsed, submitted together.
    commands: Vec<(u64, Command)>,
    /// No more reading: the peer closed its side, or shutdown began.
    reading_done: bool,
    /// The time of the read being processed (one clock read per read, not per request).
    now: Instant,
    /// A fatal error frame is queued: close once it is sent.
    closing: bool,
    /// This connection's place among the `handshakes_max` unauthenticated ones, given back
    /// when the `Welcome` is sent.
    handshake: Option<OwnedSemaphorePermit>,
    /// Set by the handshake: fires when the terminal is disabled or its secret rotated. The
    /// run loop takes it.
    revocation: Option<watch::Receiver<bool>>,
}

/// Serves one connection until the peer leaves, a fatal error, or the end of a drain.
pub async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    session: u64,
    drain: watch::Receiver<bool>,
    handshake: OwnedSemaphorePermit,
) {
    let peer = stream.peer_addr().ok();
    let sink = Arc::new(Sink {
        replies: Mutex::default(),
        ready: Notify::new(),
        ops_in_flight: Arc::clone(&shared.ops_in_flight),
    });
    let mut connection = Connection {
        shared,
        session,
        sink,
        input: Vec::with_capacity(HANDSHAKE_FRAME_BYTES_MAX),
        input_start: 0,
        output: Vec::with_capacity(HANDSHAKE_FRAME_BYTES_MAX),
        output_start: 0,
        phase: Phase::Hello,
        waiting: Vec::new(),
        free_slots: Vec::new(),
        ids_in_flight: HashSet::default(),
        in_flight: 0,
        ops_in_flight: 0,
        commands: Vec::new(),
        reading_done: false,
        closing: false,
        now: Instant::now(),
        handshake: Some(handshake),
        revocation: None,
    };
    if let Err(error) = connection.run(&stream, drain).await {
        tracing::debug!(session, ?peer, %error, "connection ended with an error");
    }
    // The server-wide budget: operations the engine has answered (collected or not) are
    // released now; those it still holds are released by the sink when their answers come.
    let uncollected = {
        let mut replies = connection.sink.replies.lock().expect("reply lock");
        replies.closed = true;
        std::mem::take(&mut replies.queued).len()
    };
    let awaited: usize = connection.waiting.iter().flatten().map(|w| w.remaining).sum();
    let with_engine = awaited - uncollected;
    connection
        .shared
        .ops_in_flight
        .fetch_sub(connection.ops_in_flight - with_engine, Ordering::Relaxed);
    if connection.in_flight > 0 {
        // Their outcome is durable or not; the client never heard, and retries with the same
        // keys will find out.
        tracing::info!(
            session,
            in_flight = connection.in_flight,
            "connection closed with requests unanswered"
        );
    }
}

impl Connection {
    async fn run(
        &mut self,
        stream: &TcpStream,
        mut drain: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let handshake_deadline = tokio::time::Instant::now() + self.shared.config.handshake_timeout;
        let mut draining = *drain.borrow();
        let mut revocation: Option<watch::Receiver<bool>> = None;
        // The terminal was disabled or its secret rotated: read nothing more, answer what is in
        // flight, then close with `auth_failed`.
        let mut revoked = false;
        loop {
            if revocation.is_none() {
                revocation = self.revocation.take();
            }
            let unsent = self.output.len() - self.output_start;
            if revoked && !self.closing && self.in_flight == 0 && unsent == 0 {
                tracing::info!(session = self.session, "session closed: its terminal was revoked");
                self.fail(Status::AuthFailed, "the terminal was disabled or its secret rotated");
                continue;
            }
            let partial = self.input.len() > self.input_start;
            if self.reading_done && partial && !self.closing && self.in_flight == 0 && unsent == 0 {
                // The peer ended its side inside a frame: that frame is dropped unanswered, and
                // once the requests before it are answered, the close says why.
                self.fail(Status::UnexpectedFrame, "the connection ended inside a frame");
                continue;
            }
            if (self.closing || self.reading_done || draining) && self.in_flight == 0 && unsent == 0
            {
                return Ok(());
            }
            if self.closing && unsent == 0 {
                return Ok(());
            }
            let read = !self.reading_done
                && !self.closing
                && !draining
                && !revoked
                && unsent < OUTPUT_BYTES_MAX;
            let interest = match (read, unsent > 0) {
                (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
                (true, false) => Some(Interest::READABLE),
                (false, true) => Some(Interest::WRITABLE),
                (false, false) => None,
            };
            let authenticated = matches!(self.phase, Phase::Ready { .. });
            tokio::select! {
                biased;
                () = self.sink.ready.notified() => {
                    self.collect_answers();
                    self.write_some(stream)?;
                }
                ready = async { stream.ready(interest.unwrap_or(Interest::READABLE)).await },
                    if interest.is_some() => {
                    let ready = ready?;
                    if ready.is_readable() && read {
                        self.read_some(stream)?;
                        self.process_input();
                        self.submit();
                    }
                    if ready.is_writable() || ready.is_readable() {
                        self.write_some(stream)?;
                    }
                }
                changed = async { revocation.as_mut().map(|r| r.changed()).expect("guarded").await },
                    if revocation.is_some() && !revoked => {
                    // A dropped sender (a rotation replaced it) is a revocation too.
                    let _ = changed;
                    revoked = true;
                }
                changed = drain.changed(), if !draining => {
                    // A dropped sender also means shutdown.
                    let _ = changed;
                    draining = true;
                }
                () = tokio::time::sleep_until(handshake_deadline), if !authenticated && !self.closing => {
                    self.shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    self.fail(Status::AuthFailed, "the handshake took too long");
                    self.write_some(stream)?;
                }
            }
        }
    }

    fn read_some(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        if self.input_start > 0 {
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
        if !matches!(self.phase, Phase::Ready { .. }) {
            return self.read_handshake(stream);
        }
        let mut total = 0;
        while total < READ_CHUNK_BYTES {
            if self.input.capacity() - self.input.len() < 16 * 1024 {
                self.input.reserve(BUFFER_BYTES_INITIAL);
            }
            match stream.try_read_buf(&mut self.input) {
                Ok(0) => {
                    self.reading_done = true;
                    break;
                }
                Ok(read) => total += read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
            // Never hold more than one incomplete frame beyond what can be parsed.
            if self.input.len() >= self.shared.config.frame_bytes_max + READ_CHUNK_BYTES {
                break;
            }
        }
        Ok(())
    }

    /// Before the `Welcome`, reads no more than completes one handshake frame: an
    /// unauthenticated peer can make the connection hold `HANDSHAKE_FRAME_BYTES_MAX` bytes,
    /// whatever it sends. (The input holds only an incomplete frame here, always shorter.)
    fn read_handshake(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        let room = HANDSHAKE_FRAME_BYTES_MAX.saturating_sub(self.input.len());
        if room == 0 {
            return Ok(());
        }
        let mut chunk = [0u8; HANDSHAKE_FRAME_BYTES_MAX];
        match stream.try_read(&mut chunk[..room]) {
            Ok(0) => self.reading_done = true,
            Ok(read) => self.input.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn write_some(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        while self.output_start < self.output.len() {
            match stream.try_write(&self.output[self.output_start..]) {
                Ok(written) => self.output_start += written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        if self.output_start == self.output.len() {
            self.output.clear();
            self.output_start = 0;
        }
        Ok(())
    }

    /// Handles every complete frame in the input buffer.
    fn process_input(&mut self) {
        let input = std::mem::take(&mut self.input);
        let mut start = self.input_start;
        self.now = Instant::now();
        while !self.closing {
            let pending = &input[start..];
            // Before the `Welcome`, only a handshake frame is read (docs/protocol.md, "Limits").
            let frame_bytes_max = match self.phase {
                Phase::Ready { .. } => self.shared.config.frame_bytes_max,
                Phase::Hello | Phase::Auth { .. } => HANDSHAKE_FRAME_BYTES_MAX,
            };
            match check(pending, frame_bytes_max) {
                Ok(Some(header)) => {
                    let body = &pending[FRAME_HEADER_BYTES..header.frame_bytes()];
                    self.on_frame(header, body);
                    start += header.frame_bytes();
                }
                Ok(None) => break,
                Err(error) => {
                    let status = match error {
                        FrameError::TooLarge { .. } => Status::FrameTooLarge,
                        FrameError::Version(_) => Status::UnsupportedVersion,
                        _ => Status::UnexpectedFrame,
                    };
                    self.fail(status, &error.to_string());
                }
            }
        }
        self.input = input;
        self.input_start = start;
    }

    fn on_frame(&mut self, header: FrameHeader, body: &[u8]) {
        let handshake_frame = matches!(header.frame_type, FrameType::Hello | FrameType::Auth);
        if handshake_frame && header.request_id != 0 {
            return self.fail(Status::UnexpectedFrame, "handshake frames carry request id 0");
        }
        match (&self.phase, header.frame_type) {
            (Phase::Hello, FrameType::Hello) => match session::decode_hello(body) {
                Ok(terminal) => {
                    // A challenge goes out whether or not the terminal exists, so that probing
                    // does not tell which ids are valid.
                    let mut nonce = [0u8; NONCE_BYTES];
                    if getrandom::fill(&mut nonce).is_err() {
                        self.fail(Status::InternalError, "no randomness for the challenge");
                        return;
                    }
                    session::encode_challenge(&mut self.output, &nonce);
                    self.phase = Phase::Auth { terminal, nonce };
                }
                Err(_) => self.fail(Status::UnexpectedFrame, "a malformed hello"),
            },
            (Phase::Auth { terminal, nonce }, FrameType::Auth) => {
                let (terminal, nonce) = (*terminal, *nonce);
                let admitted = self.shared.terminals.admitted(terminal);
                let verified = match (session::decode_auth(body), admitted) {
                    (Ok(mac), Some(admitted))
                        if session::verify_auth_mac(&admitted.secret, terminal, &nonce, &mac) =>
                    {
                        Some(admitted)
                    }
                    _ => None,
                };
                let Some(admitted) = verified else {
                    self.shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(session = self.session, terminal, "authentication failed");
                    self.fail(Status::AuthFailed, "unknown terminal or wrong mac");
                    return;
                };
                let config = &self.shared.config;
                let rate_per_second = admitted.bucket.lock().expect("bucket lock").rate();
                let welcome = Welcome {
                    frame_bytes_max: u32::try_from(config.frame_bytes_max).unwrap_or(u32::MAX),
                    batch_ops_max: u16::try_from(config.batch_ops_max).unwrap_or(u16::MAX),
                    in_flight_max: u16::try_from(config.in_flight_max).unwrap_or(u16::MAX),
                    rate_per_second,
                    shard_count: self.shared.engine.shard_count(),
                    session: self.session,
                };
                session::encode_welcome(&mut self.output, &welcome);
                tracing::debug!(session = self.session, terminal, "terminal authenticated");
                self.phase = Phase::Ready { terminal, bucket: Arc::clone(&admitted.bucket) };
                self.revocation = Some(admitted.revocation());
                self.handshake = None;
                self.output.reserve(BUFFER_BYTES_INITIAL);
            }
            (Phase::Ready { .. }, FrameType::Request) if header.request_id == 0 => {
                // Id 0 names the connection in error frames; a request cannot use it.
                self.fail(Status::UnexpectedFrame, "request id 0 is reserved")
            }
            (Phase::Ready { .. }, FrameType::Request) => self.on_request(header.request_id, body),
            (Phase::Hello | Phase::Auth { .. }, FrameType::Request) => {
                self.fail(Status::NotAuthenticated, "authenticate first")
            }
            (_, frame_type) => {
                self.fail(Status::UnexpectedFrame, &format!("{frame_type:?} is not expected now"))
            }
        }
    }

    fn on_request(&mut self, request_id: u64, body: &[u8]) {
        let Phase::Ready { terminal, bucket } = &self.phase else {
            unreachable!("requests are only handled once authenticated");
        };
        let terminal = *terminal;
        let config = &self.shared.config;
        if self.ids_in_flight.contains(&request_id) {
            return self.refuse(
                request_id,
                Status::RequestIdInUse,
                "a request with this id is unanswered",
            );
        }
        if self.in_flight >= config.in_flight_max {
            return self.refuse(request_id, Status::TooManyInFlight, "wait for answers first");
        }
        let view = match RequestView::parse(body, config.batch_ops_max) {
            Ok(view) => view,
            Err(status) => return self.refuse(request_id, status, "the request does not decode"),
        };
        let response_bytes = FRAME_HEADER_BYTES
            + COUNT_HEADER_BYTES
            + view.ops().map(result_bytes_max).sum::<usize>();
        if response_bytes > config.frame_bytes_max {
            return self.refuse(
                request_id,
                Status::BatchTooLarge,
                "the answers could exceed frame_bytes_max: fewer or smaller history queries",
            );
        }
        if self.ops_in_flight + view.len() > config.ops_in_flight_max {
            return self.refuse(request_id, Status::TooManyInFlight, "wait for answers first");
        }
        let total = &self.shared.ops_in_flight;
        if total.fetch_add(view.len(), Ordering::Relaxed) + view.len()
            > config.ops_in_flight_total_max
        {
            total.fetch_sub(view.len(), Ordering::Relaxed);
            return self.refuse(request_id, Status::Busy, "the server has too much in flight");
        }
        if !bucket.lock().expect("bucket lock").try_take(view.len(), self.now) {
            total.fetch_sub(view.len(), Ordering::Relaxed);
            return self.refuse(request_id, Status::RateLimited, "the terminal's rate is exceeded");
        }
        self.ops_in_flight += view.len();
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.operations.fetch_add(view.len() as u64, Ordering::Relaxed);
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.waiting.push(None);
            self.waiting.len() - 1
        });
        let mut ops = SmallVec::with_capacity(view.len());
        let mut remaining = 0;
        for (index, raw) in view.ops().enumerate() {
            let result = match Op::decode(raw) {
                Ok(op) => match self.shared.book.plan(terminal, &op) {
                    Plan::Answer(result) => Some(result),
                    Plan::Submit { command } => {
                        let tag = ((slot as u64) << TAG_INDEX_BITS) | index as u64;
                        self.commands.push((tag, command));
                        remaining += 1;
                        None
                    }
                },
                Err(status) => Some(OpResult::Refused(status)),
            };
            let lifecycle =
                raw.opcode == ledger_protocol::ops::Opcode::Explain as u8 && raw.body.len() > 8;
            ops.push(OpSlot { opcode: raw.opcode, lifecycle, result });
        }
        self.in_flight += 1;
        self.ids_in_flight.insert(request_id);
        let waiting = Waiting { request_id, remaining, ops, received: self.now };
        if remaining == 0 {
            self.finish(slot, waiting, self.now);
        } else {
            self.waiting[slot] = Some(waiting);
        }
    }

    fn submit(&mut self) {
        if !self.commands.is_empty() {
            let commands = std::mem::take(&mut self.commands);
            let sink: Arc<dyn ReplySink> = self.sink.clone();
            self.shared.engine.submit(&sink, commands);
        }
    }

    fn collect_answers(&mut self) {
        let replies = std::mem::take(&mut self.sink.replies.lock().expect("reply lock").queued);
        // One clock read for the answers of one wake-up.
        let now = Instant::now();
        for (tag, response) in replies {
            let slot = usize::try_from(tag >> TAG_INDEX_BITS).expect("slots index a vector");
            let index = usize::try_from(tag & ((1 << TAG_INDEX_BITS) - 1)).expect("16 bits");
            let Some(Some(waiting)) = self.waiting.get_mut(slot) else {
                unreachable!("an answer for a request that is not waiting: tag {tag}");
            };
            let op = &mut waiting.ops[index];
            assert!(op.result.is_none(), "one answer per operation");
            op.result = Some(handler::answer(op.opcode, op.lifecycle, response));
            waiting.remaining -= 1;
            if waiting.remaining == 0 {
                let waiting = self.waiting[slot].take().expect("checked above");
                self.finish(slot, waiting, now);
            }
        }
    }

    /// Encodes the response of a request whose operations are all answered (`now`: when
    /// their answers were collected).
    fn finish(&mut self, slot: usize, waiting: Waiting, now: Instant) {
        let start = begin_frame(&mut self.output, FrameType::Response, waiting.request_id);
        put_count_header(&mut self.output, waiting.ops.len());
        for op in &waiting.ops {
            let result = op.result.as_ref().expect("every operation is answered");
            self.shared.stats.count(result.status());
            encode_result(&mut self.output, op.opcode, result);
        }
        finish_frame(&mut self.output, start);
        debug_assert!(self.output.len() - start >= FRAME_HEADER_BYTES + COUNT_HEADER_BYTES);
        // Latency by opcode, one add per run of operations of one opcode.
        let elapsed = now.saturating_duration_since(waiting.received);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let mut ops = waiting.ops.iter().peekable();
        while let Some(op) = ops.next() {
            let mut count = 1;
            while ops.next_if(|next| next.opcode == op.opcode).is_some() {
                count += 1;
            }
            self.shared.stats.observe(op.opcode, count, nanos);
        }
        self.free_slots.push(slot);
        self.in_flight -= 1;
        assert!(self.ids_in_flight.remove(&waiting.request_id), "a request in flight has its id");
        self.ops_in_flight -= waiting.ops.len();
        self.shared.ops_in_flight.fetch_sub(waiting.ops.len(), Ordering::Relaxed);
    }

    /// Refuses one request whole; the connection goes on.
    fn refuse(&mut self, request_id: u64, status: Status, message: &str) {
        self.shared.stats.count(status);
        session::encode_error(&mut self.output, request_id, status, message);
    }

    /// Sends a connection-level error and closes once it is out.
    fn fail(&mut self, status: Status, message: &str) {
        self.shared.stats.count(status);
        tracing::debug!(session = self.session, %status, message, "closing the connection");
        session::encode_error(&mut self.output, 0, status, message);
        self.closing = true;
    }
}
