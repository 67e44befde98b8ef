//! The POS listener: accepts connections and runs one task per connection
//! (`connection::serve`) until shutdown. Spec of the protocol: docs/protocol.md.
//!
//! A connection takes one of `connections_max` places for its life and, until its handshake
//! completes, one of `handshakes_max`; without a place it is answered `busy` and closed.
//!
//! **Boundary:** `run(listener, shared, shutdown)` takes a bound listener (tests bind
//! `127.0.0.1:0`) and a future that resolves when the server should stop. Then it stops
//! accepting, tells every connection to drain (stop reading, answer what is in flight, close)
//! and waits for them up to `drain_timeout`; connections still open after that are dropped,
//! their unanswered requests unacknowledged.

pub mod connection;
pub mod handler;
pub mod rate;
pub mod stats;
pub mod terminals;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ledger_protocol::Status;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use connection::Shared;

/// How the listener ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections that finished their in-flight requests and closed.
    pub closed: usize,
    /// Connections dropped when the drain deadline passed.
    pub abandoned: usize,
}

/// Accepts and serves connections until `shutdown` resolves, then drains them.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let (drain_tx, drain_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(shared.config.connections_max));
    let handshakes = Arc::new(Semaphore::new(shared.config.handshakes_max));
    let sessions = AtomicU64::new(1);
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!(%error, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                backoff = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                // A connection needs a place among all connections and, until it has
                // authenticated, one among the handshakes.
                let permits = Arc::clone(&permits)
                    .try_acquire_owned()
                    .map_err(|_| ("connections_max", "too many connections"))
                    .and_then(|connection| {
                        Arc::clone(&handshakes)
                            .try_acquire_owned()
                            .map(|handshake| (connection, handshake))
                            .map_err(|_| ("handshakes_max", "too many connections authenticating"))
                    });
                let (permit, handshake) = match permits {
                    Ok(permits) => permits,
                    Err((limit, message)) => {
                        refuse_connection(&shared, &stream, peer, limit, message);
                        continue;
                    }
                };
                let session = sessions.fetch_add(1, Ordering::Relaxed);
                shared.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, session, "connection accepted");
                let shared = Arc::clone(&shared);
                let drain = drain_rx.clone();
                connections.spawn(async move {
                    shared.stats.connections_open.fetch_add(1, Ordering::Relaxed);
                    connection::serve(stream, Arc::clone(&shared), session, drain, handshake)
                        .await;
                    shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let open = connections.len();
    tracing::info!(connections = open, "draining connections");
    let deadline = tokio::time::Instant::now() + shared.config.drain_timeout;
    let mut closed = 0;
    while !connections.is_empty() {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(Some(_)) => closed += 1,
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let abandoned = connections.len();
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "drain deadline passed: dropping connections with requests in flight"
        );
        connections.shutdown().await;
    }
    Drained { closed, abandoned }
}

/// Answers a connection over a limit with `busy` (request id 0) and drops it. One
/// non-blocking write, on the listener's task: a burst of refused connections costs no task
/// and no buffer each (a fresh socket's send buffer takes the frame, 60 bytes at most, whole).
fn refuse_connection(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
    limit: &str,
    message: &str,
) {
    shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
    shared.stats.count(Status::Busy);
    tracing::warn!(%peer, limit, "connection refused: the limit is reached");
    let mut frame = Vec::new();
    ledger_protocol::session::encode_error(&mut frame, 0, Status::Busy, message);
    let _ = stream.try_write(&frame);
}
