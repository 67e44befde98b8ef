//! The admin API's terminal routes: list the POS terminals, create one, disable one, rotate a
//! secret. A new secret is in the answer and nowhere else the API shows; the credentials file
//! is the store of record (`pos::terminals`). Docs: docs/admin-api.md, "Terminals".

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ledger_protocol::credentials::hex_encode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Role;
use super::error::{ApiError, ErrorBody};
use super::writes::Body;
use super::{AdminState, Caller};
use crate::pos::terminals::{Issued, TerminalError, TerminalView, Terminals};

type Shared = State<Arc<AdminState>>;

/// The terminals of the credentials file.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TerminalList {
    /// In file order.
    pub terminals: Vec<TerminalView>,
}

/// A terminal to create.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTerminal {
    /// Its id (1..=4294967295, not taken); one above the largest id when absent.
    pub id: Option<u32>,
    /// Its own rate limit (operations per second, at least 1); the server's default when
    /// absent.
    pub rate_per_second: Option<u32>,
}

/// A secret issued: shown in this answer only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedSecret {
    /// The terminal.
    pub id: u32,
    /// Its new secret, hex (32 bytes): the HMAC key of the POS handshake.
    pub secret: String,
    /// Sessions authenticated with the previous secret, now closed.
    pub sessions_closed: usize,
}

/// A terminal disabled.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Disabled {
    /// The terminal.
    pub id: u32,
    /// Its sessions, now closed.
    pub sessions_closed: usize,
}

fn refused(error: TerminalError) -> ApiError {
    match error {
        TerminalError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "terminal_not_found", error.to_string())
        }
        TerminalError::Exists(_) => {
            ApiError::new(StatusCode::CONFLICT, "terminal_exists", error.to_string())
        }
        TerminalError::AlreadyDisabled(_) => {
            ApiError::new(StatusCode::CONFLICT, "terminal_disabled", error.to_string())
        }
        TerminalError::Invalid(message) => ApiError::bad_request(message),
        TerminalError::Write { .. } => ApiError::internal(error),
    }
}

fn terminal_id(text: &str) -> Result<u32, ApiError> {
    text.parse::<u32>().ok().filter(|id| *id != 0).ok_or_else(|| {
        ApiError::bad_request(format!("terminal {text:?} is not an id 1..=4294967295"))
    })
}

/// Runs a change to the credentials file (which writes and fsyncs) on the blocking pool.
async fn change<T: Send + 'static>(
    state: &AdminState,
    call: impl FnOnce(&Terminals) -> Result<T, TerminalError> + Send + 'static,
) -> Result<T, ApiError> {
    let pos = Arc::clone(state.pos()?);
    tokio::task::spawn_blocking(move || call(&pos.terminals))
        .await
        .map_err(|error| ApiError::internal(format!("a terminal change failed: {error}")))?
        .map_err(refused)
}

fn issued(issued: Issued) -> IssuedSecret {
    IssuedSecret {
        id: issued.id,
        secret: hex_encode(&issued.secret),
        sessions_closed: issued.sessions_closed,
    }
}

/// The POS terminals of the credentials file, with their open sessions.
#[utoipa::path(get, path = "/v1/terminals", tag = "terminals",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "every terminal, in file order", body = TerminalList)))]
pub async fn list(State(state): Shared, caller: Caller) -> Result<Json<TerminalList>, ApiError> {
    caller.require(Role::Auditor)?;
    Ok(Json(TerminalList { terminals: state.pos()?.terminals.list() }))
}

/// Creates a POS terminal with a fresh secret, written to the credentials file before it is
/// accepted. The secret is shown in this answer only.
#[utoipa::path(post, path = "/v1/terminals", tag = "terminals",
    request_body = CreateTerminal,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "created; the secret is shown once", body = IssuedSecret),
        (status = 400, description = "id 0, rate 0, or the file is full", body = ErrorBody),
        (status = 409, description = "`terminal_exists`: the id is taken", body = ErrorBody),
    ))]
pub async fn create(
    State(state): Shared,
    caller: Caller,
    body: Result<Body<CreateTerminal>, ApiError>,
) -> Result<(StatusCode, Json<IssuedSecret>), ApiError> {
    let principal = caller.require(Role::Admin)?;
    let Body(body) = body?;
    let created =
        change(&state, move |terminals| terminals.create(body.id, body.rate_per_second)).await?;
    tracing::info!(terminal = created.id, token = %principal.name, "POS terminal created");
    Ok((StatusCode::CREATED, Json(issued(created))))
}

/// Disables a POS terminal: the credentials file marks it disabled, new handshakes are
/// refused, and its open sessions answer what they have in flight and close (`auth_failed`).
#[utoipa::path(post, path = "/v1/terminals/{terminal}/disable", tag = "terminals",
    params(("terminal" = u32, Path, description = "the terminal's id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "disabled", body = Disabled),
        (status = 404, description = "`terminal_not_found`", body = ErrorBody),
        (status = 409, description = "`terminal_disabled`: it already is", body = ErrorBody),
    ))]
pub async fn disable(
    State(state): Shared,
    caller: Caller,
    Path(terminal): Path<String>,
) -> Result<Json<Disabled>, ApiError> {
    let principal = caller.require(Role::Admin)?;
    let id = terminal_id(&terminal)?;
    let sessions_closed = change(&state, move |terminals| terminals.disable(id)).await?;
    tracing::info!(terminal = id, token = %principal.name, sessions_closed, "POS terminal disabled");
    Ok(Json(Disabled { id, sessions_closed }))
}

/// Gives a POS terminal a fresh secret (enabling it again if it was disabled); sessions
/// authenticated with the old secret answer what they have in flight and close. The secret is
/// shown in this answer only.
#[utoipa::path(post, path = "/v1/terminals/{terminal}/rotate", tag = "terminals",
    params(("terminal" = u32, Path, description = "the terminal's id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "rotated; the secret is shown once", body = IssuedSecret),
        (status = 404, description = "`terminal_not_found`", body = ErrorBody),
    ))]
pub async fn rotate(
    State(state): Shared,
    caller: Caller,
    Path(terminal): Path<String>,
) -> Result<Json<IssuedSecret>, ApiError> {
    let principal = caller.require(Role::Admin)?;
    let id = terminal_id(&terminal)?;
    let rotated = change(&state, move |terminals| terminals.rotate(id)).await?;
    tracing::info!(
        terminal = id,
        token = %principal.name,
        sessions_closed = rotated.sessions_closed,
        "POS terminal secret rotated"
    );
    Ok(Json(issued(rotated)))
}
