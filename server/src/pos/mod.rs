//! The POS listener: accepts connections and runs one task per connection
//! (`connection::serve`) until shutdown. Spec of the protocol: docs/protocol.md.
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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ledger_protocol::Status;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
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
                let (mut stream, peer) = match accepted {
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
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                    shared.stats.count(Status::Busy);
                    tracing::warn!(%peer, "connection refused: connections_max are open");
                    connections.spawn(async move {
                        let mut frame = Vec::new();
                        ledger_protocol::session::encode_error(
                            &mut frame,
                            0,
                            Status::Busy,
                            "too many connections",
                        );
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
                    });
                    continue;
                };
                let session = sessions.fetch_add(1, Ordering::Relaxed);
                shared.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, session, "connection accepted");
                let shared = Arc::clone(&shared);
                let drain = drain_rx.clone();
                connections.spawn(async move {
                    shared.stats.connections_open.fetch_add(1, Ordering::Relaxed);
                    connection::serve(stream, Arc::clone(&shared), session, drain).await;
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
