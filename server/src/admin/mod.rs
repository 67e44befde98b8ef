//! The admin HTTP API (axum): operators, support staff and auditors read and run the ledger
//! through it, Prometheus scrapes it. Spec and examples: docs/admin-api.md.
//!
//! It listens on its own address (`[admin] addr`, `127.0.0.1:7401` by default) from before
//! recovery on: `/healthz` answers at once, `/readyz` and every `/v1/` route answer
//! `503 not_ready` until the engine is recovered (`AdminState::set_engine`).
//!
//! **Boundary:** handlers translate HTTP into the engine's commands and the answers into JSON;
//! they compute nothing of the ledger's. Reads and writes go through the same shard inboxes as
//! POS requests (`ask`), the engine's few blocking calls run on the blocking pool, and every
//! request is bounded: its body (`[admin] body_bytes_max`), its time (`[admin] timeout_ms`),
//! and the pages it asks for.

pub mod ask;
pub mod auth;
pub mod error;
pub mod metrics;
mod programme;
pub mod routes;
mod settlement;
mod terminals;
pub mod writes;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger_engine::Engine;

use self::auth::{Principal, Role, Tokens};
use self::error::ApiError;
use self::metrics::Metrics;

/// Settings of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The tokens file.
    pub tokens: std::path::PathBuf,
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// Longest a request may take before it is answered `503 timeout`.
    pub timeout: Duration,
    /// The nice value (0..=19) of the API's thread: it yields the cores to the POS path and
    /// the shards when they are busy (docs/design-decisions.md, "The admin API runs beside
    /// the tills, not among them").
    pub nice: i32,
}

/// What every handler shares.
pub struct AdminState {
    engine: OnceLock<Arc<Engine>>,
    tokens: Tokens,
    /// The metrics registry.
    pub metrics: Metrics,
    config: AdminConfig,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready())
            .field("tokens", &self.tokens.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// A state with no engine yet: the API answers `not_ready` until `set_engine`.
    pub fn new(config: AdminConfig, tokens: Tokens) -> AdminState {
        AdminState { engine: OnceLock::new(), tokens, metrics: Metrics::new(), config }
    }

    /// The engine is recovered: the API serves it from now on.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The POS listener is running: its counters go into `/metrics`.
    pub fn set_pos(&self, pos: Arc<crate::pos::Shared>) {
        let _ = self.metrics.pos.set(pos);
    }

    /// The replicator's per-shard figures: `/metrics` and `/v1/ops/replica` show them.
    pub fn set_replica(&self, shards: Vec<Arc<crate::replica::replicator::ReplicaShard>>) {
        let _ = self.metrics.replica.set(shards);
    }

    /// The replicator's per-shard figures, if there is a replica.
    pub fn replica(&self) -> Option<&[Arc<crate::replica::replicator::ReplicaShard>]> {
        self.metrics.replica.get().map(Vec::as_slice)
    }

    /// The POS listener's state, or `503 not_ready` before it runs.
    pub fn pos(&self) -> Result<&Arc<crate::pos::Shared>, ApiError> {
        self.metrics.pos.get().ok_or_else(ApiError::not_ready)
    }

    /// The engine, or `503 not_ready` while it is recovering.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or_else(ApiError::not_ready)
    }

    /// Whether the ledger is recovered and every shard is accepting.
    pub fn ready(&self) -> bool {
        self.engine.get().is_some_and(|engine| !engine.is_poisoned())
    }
}

/// The caller of a `/v1/` route, authenticated by its bearer token (401 otherwise).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses (403) a caller whose role is below `role`.
    pub fn require(&self, role: Role) -> Result<&Principal, ApiError> {
        if self.0.role < role {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {:?} has role {}; this route needs {} or above",
                    self.0.name,
                    self.0.role.name(),
                    role.name()
                ),
            ));
        }
        Ok(&self.0)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Caller, ApiError> {
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated(Some(principal))) => Ok(Caller(principal.clone())),
            Some(Authenticated(None)) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not known",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an Authorization: Bearer <token> header is required",
            )),
        }
    }
}

/// What `track` learned of the request's token: `None` inside for a token that matched none.
#[derive(Debug, Clone)]
struct Authenticated(Option<Principal>);

/// Authenticates, bounds the time of, counts and logs every request.
async fn track(
    State(state): State<Arc<AdminState>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = presented.and_then(|token| state.tokens.verify(token));
    if presented.is_some() {
        request.extensions_mut().insert(Authenticated(principal.clone()));
    }
    let response = match tokio::time::timeout(state.config.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {} ms", state.config.timeout.as_millis()),
        )
        .into_response(),
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_http(method.as_str(), &route, status, elapsed.as_secs_f64());
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        token = principal.as_ref().map_or("-", |p| p.name.as_str()),
        "admin request"
    );
    response
}

/// The API: every route, its OpenAPI document, and the layers around them.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    let (api, openapi) = routes::api().split_for_parts();
    let body_limit = state.config.body_bytes_max;
    api.fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        })
        .layer(axum::Extension(Arc::new(openapi)))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), track))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a handler panicked".to_string());
                ApiError::internal(what).into_response()
            },
        ))
        .with_state(state)
}

/// The API served on a thread of its own: a single-threaded runtime whose thread (and the
/// blocking threads it starts) runs at the configured nice value, so admin requests never
/// wait in line with POS connections on the I/O runtime's workers and, when the cores are
/// busy, the scheduler favours the tills and the shards.
pub struct AdminThread {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl AdminThread {
    /// Binds `state.config.addr` and serves it on a new thread; returns once it listens.
    pub fn spawn(state: Arc<AdminState>) -> anyhow::Result<AdminThread> {
        use anyhow::Context;
        let (addr, nice) = (state.config.addr, state.config.nice);
        let (bound_tx, bound_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ledgerd-admin".into())
            .spawn(move || {
                crate::priority::lower(nice, "the admin API");
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("ledgerd-adm-blk")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = bound_tx.send(Err(error));
                        return Ok(());
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(addr).await {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = bound_tx.send(Err(error));
                            return Ok(());
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr());
                    serve(listener, state, async move {
                        let _ = stopped.await;
                    })
                    .await
                })
            })
            .context("cannot start the admin API's thread")?;
        let bound = bound_rx.recv().context("the admin API's thread stopped")?;
        let addr = bound.with_context(|| format!("cannot listen on {addr} (admin API)"))?;
        Ok(AdminThread { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Answers what is in flight, then stops.
    pub fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the admin API's thread panicked")),
            None => Ok(()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
