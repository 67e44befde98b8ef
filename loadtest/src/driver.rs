//! One connection's load: keeps up to `in_flight` requests outstanding, closed-loop (a new
//! request as soon as an answer comes) or open-loop (requests due at fixed intervals).
//!
//! Open-loop latency is measured from the moment a request was *due*, not when it could be
//! sent: when the server stalls and the window fills, the requests that wait for room count
//! their wait, so a stall shows in the percentiles instead of being hidden (coordinated
//! omission). Since the async runtime's timers tick in whole milliseconds, which would add up
//! to a millisecond to every measured latency, a `Pacer` thread wakes the connections whose
//! next request is due, every `PACE_STEP`. Each read takes every answer the socket has; each
//! write sends every request that is ready, in one system call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ledger_protocol::Status;
use ledger_protocol::client::{FrameReader, encode_request};
use ledger_protocol::frame::FrameType;
use ledger_protocol::ops::{Op, ResponseView};
use ledger_protocol::session;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::acklog::{self, AckLog};
use crate::report::{Recorder, Totals};
use crate::workload::{Sent, Workload};

/// How often the pacer looks for connections with a request due.
const PACE_STEP: Duration = Duration::from_micros(100);

/// A connection's entry in the pacer: when its next request is due, and how to wake it.
#[derive(Debug, Default)]
pub struct PaceSlot {
    /// Nanoseconds after the run's start; `u64::MAX` while nothing can be sent (no request
    /// due before the deadline, or the window is full).
    due_nanos: AtomicU64,
    wake: Notify,
}

/// A thread that wakes connections when their next open-loop request is due, with a
/// resolution of tens of microseconds rather than the runtime's millisecond.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    /// Starts pacing `slots` from `start`.
    pub fn start(slots: Vec<Arc<PaceSlot>>, start: Instant) -> Pacer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let start = start.into_std();
        let thread = std::thread::Builder::new()
            .name("ledger-load-pacer".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    for slot in &slots {
                        if slot.due_nanos.load(Ordering::Relaxed) <= now {
                            slot.wake.notify_one();
                        }
                    }
                    std::thread::sleep(PACE_STEP);
                }
            })
            .expect("spawn the pacer thread");
        Pacer { stop, thread: Some(thread) }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a connection is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// Who we are.
    pub terminal: u32,
    /// Our secret.
    pub secret: Vec<u8>,
    /// Requests kept in flight.
    pub in_flight: usize,
    /// Operations per request.
    pub batch: usize,
    /// Open-loop: requests per second on this connection; `None` for closed-loop.
    pub rate: Option<f64>,
    /// When the run started (second 0 of the report).
    pub start: Instant,
    /// When to stop sending.
    pub deadline: Instant,
    /// How long to wait for answers after the deadline.
    pub drain: Duration,
    /// Open-loop: this connection's slot in the pacer.
    pub pace: Option<Arc<PaceSlot>>,
}

/// One operation of a request in flight.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    sent: Sent,
    /// For a capture: the customer of its hold (for the ack log).
    customer_of_hold: u64,
}

struct InFlight {
    /// When the request was due (open-loop) or sent (closed-loop).
    due: Instant,
    ops: Vec<Tracked>,
}

/// What a connection did, beyond what it recorded.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Open-loop requests that were due but could not be sent before the deadline.
    pub unsent: u64,
    /// Whether the connection ended with an error (lost, refused).
    pub failed: bool,
}

/// A table of requests in flight: slot `id % capacity`, checked against the id, so that
/// lookups cost an index instead of a hash (ids are handed out so that slots never clash).
struct Window {
    slots: Vec<Option<(u64, InFlight)>>,
    free: Vec<usize>,
    len: usize,
}

impl Window {
    fn new(capacity: usize) -> Window {
        Window {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            len: 0,
        }
    }

    /// A request id for the next request: its slot in the low 32 bits.
    fn insert(&mut self, sequence: u64, request: InFlight) -> u64 {
        let slot = self.free.pop().expect("the caller keeps the window from overflowing");
        let id = (sequence << 32) | slot as u64;
        self.slots[slot] = Some((id, request));
        self.len += 1;
        id
    }

    fn remove(&mut self, id: u64) -> Option<InFlight> {
        let slot = usize::try_from(id & 0xffff_ffff).ok()?;
        match self.slots.get_mut(slot) {
            Some(entry) if entry.as_ref().is_some_and(|(stored, _)| *stored == id) => {
                self.free.push(slot);
                self.len -= 1;
                entry.take().map(|(_, request)| request)
            }
            _ => None,
        }
    }

    fn values(&self) -> impl Iterator<Item = &InFlight> {
        self.slots.iter().flatten().map(|(_, request)| request)
    }
}

/// Runs one connection's share of the load.
pub async fn run(
    plan: Plan,
    mut workload: Workload,
    totals: Arc<Totals>,
    ack_log: Option<Arc<AckLog>>,
) -> anyhow::Result<Outcome> {
    let (stream, welcome) =
        ledger_protocol::client::connect(plan.addr, plan.terminal, &plan.secret).await?;
    let (mut read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(welcome.frame_bytes_max as usize);
    let window = plan.in_flight.min(usize::from(welcome.in_flight_max)).max(1);
    let batch = plan.batch.min(usize::from(welcome.batch_ops_max)).max(1);
    let interval = plan.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next_due = plan.start;
    let mut recorder = Recorder::default();
    let mut in_flight = Window::new(window);
    let mut follow_ups: VecDeque<Tracked> = VecDeque::new();
    let mut sequence: u64 = 1;
    let mut output = Vec::with_capacity(64 * 1024);
    let mut ops: Vec<Op> = Vec::with_capacity(batch);
    let mut lines = String::new();
    let mut outcome = Outcome::default();
    let mut next_merge = plan.start + Duration::from_secs(1);
    let drain_end = plan.deadline + plan.drain;

    let result: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            let sending = now < plan.deadline;
            // Send every request that is due and fits the window.
            while sending && in_flight.len < window {
                let due = match interval {
                    Some(_) if next_due > now => break,
                    Some(interval) => {
                        let due = next_due;
                        next_due += interval;
                        recorder.lag(now.saturating_duration_since(due));
                        due
                    }
                    None => now,
                };
                let mut tracked = Vec::with_capacity(batch);
                ops.clear();
                for _ in 0..batch {
                    let next = follow_ups.pop_front().unwrap_or_else(|| Tracked {
                        sent: workload.next_op(),
                        customer_of_hold: 0,
                    });
                    ops.push(next.sent.op);
                    tracked.push(next);
                }
                let id = in_flight.insert(sequence, InFlight { due, ops: tracked });
                encode_request(&mut output, id, &ops);
                sequence += 1;
            }
            if let Some(pace) = &plan.pace {
                // Wake me when the next request is due, unless the window is full (answers
                // will wake me) or sending is over.
                let due = if sending && in_flight.len < window {
                    u64::try_from(next_due.duration_since(plan.start).as_nanos()).unwrap_or(u64::MAX)
                } else {
                    u64::MAX
                };
                pace.due_nanos.store(due, Ordering::Relaxed);
            }
            if !output.is_empty() {
                write.write_all(&output).await?;
                output.clear();
            }
            if now >= next_merge {
                let second = usize::try_from(now.duration_since(plan.start).as_secs()).unwrap_or(usize::MAX);
                totals.merge(&mut recorder, second);
                next_merge = plan.start + Duration::from_secs(second as u64 + 1);
            }
            if !sending && in_flight.len == 0 {
                return Ok(());
            }
            if now >= drain_end {
                anyhow::bail!("{} requests unanswered after the drain time", in_flight.len);
            }
            // Wait for answers, or for the next request to fall due, or for the deadline.
            let wake = if sending { plan.deadline } else { drain_end }.min(next_merge);
            let paced = plan.pace.as_ref().filter(|_| sending);
            let filled = tokio::select! {
                filled = reader.fill(&mut read) => Some(filled?),
                () = async { paced.expect("checked").wake.notified().await }, if paced.is_some() => None,
                () = tokio::time::sleep_until(wake) => None,
            };
            if filled == Some(false) {
                anyhow::bail!("the server closed the connection");
            }
            let now = Instant::now();
            while let Some((header, body)) = reader.next_frame()? {
                let request = in_flight
                    .remove(header.request_id)
                    .ok_or_else(|| anyhow::anyhow!("an answer to unknown request {}", header.request_id))?;
                let latency = now.saturating_duration_since(request.due);
                match header.frame_type {
                    FrameType::Response => {
                        let view = ResponseView::parse(body, request.ops.len())?;
                        anyhow::ensure!(view.len() == request.ops.len(), "wrong result count");
                        for (tracked, result) in request.ops.iter().zip(view.results()) {
                            recorder.record(result.status, latency, 1);
                            let Some(tx_id) = result.tx_id() else { continue };
                            if let Op::Hold { points, customer, .. } = tracked.sent.op {
                                let sent = workload.follow_up(tx_id, points);
                                follow_ups.push_back(Tracked { sent, customer_of_hold: customer });
                            }
                            if ack_log.is_some() {
                                let points = match result.decode()? {
                                    ledger_protocol::OpResult::Ok(ledger_protocol::Reply::Committed(c)) => c.points,
                                    _ => 0,
                                };
                                acklog::acknowledged(&mut lines, &tracked.sent, tracked.customer_of_hold, tx_id, points);
                            }
                        }
                    }
                    FrameType::Error => {
                        let (status, message) = session::decode_error(body)?;
                        let count = request.ops.len() as u64;
                        recorder.record(status, latency, count);
                        if header.request_id == 0 || status.closes_connection() {
                            anyhow::bail!("the server closed the session: {status}: {message}");
                        }
                        if status == Status::TooManyInFlight {
                            // Our window is larger than the server allows: give the operations
                            // back to be sent again.
                            follow_ups.extend(request.ops);
                        }
                    }
                    other => anyhow::bail!("unexpected {other:?} frame"),
                }
            }
            if let Some(log) = &ack_log {
                log.append(&lines)?;
                lines.clear();
            }
        }
    }
    .await;

    if let Err(error) = result {
        outcome.failed = true;
        let lost: u64 = in_flight.values().map(|request| request.ops.len() as u64).sum();
        recorder.error(lost);
        if let Some(log) = &ack_log {
            let mut lines = String::new();
            for request in in_flight.values() {
                for tracked in &request.ops {
                    acklog::in_doubt(&mut lines, &tracked.sent, tracked.customer_of_hold);
                }
            }
            log.append(&lines)?;
        }
        eprintln!("ledger-load: connection ended: {error:#}");
    }
    if let Some(interval) = interval
        && next_due < plan.deadline
    {
        let behind = plan.deadline.duration_since(next_due).as_secs_f64() / interval.as_secs_f64();
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a count")]
        {
            outcome.unsent = behind as u64;
        }
    }
    let second =
        usize::try_from(Instant::now().duration_since(plan.start).as_secs()).unwrap_or(usize::MAX);
    totals.merge(&mut recorder, second);
    Ok(outcome)
}
