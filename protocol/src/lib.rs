//! ledgerd's POS binary protocol: what travels between a till (or a POS gateway) and `ledgerd`.
//! The specification is docs/protocol.md; this crate is its Rust implementation, shared by the
//! server, the load generator and integrators.
//!
//! # Layout
//! - `frame`: the 16-byte frame header, `check` (complete / incomplete / invalid) before parse.
//! - `ops`: operations, results, and the request and response bodies that carry them.
//! - `session`: the handshake (HMAC-SHA256 challenge) and the error frame.
//! - `status`: `Status`, every outcome code.
//! - `credentials`: the credentials file (terminal ids and secrets).
//! - `wire`: bounded little-endian field reading and writing.
//! - `client` (feature `client`): an async pipelining client on tokio.
//!
//! Decoders never panic and never allocate more than the limits they are given, whatever the
//! bytes (`tests/decode_fuzz.rs`).

#![deny(clippy::host_endian_bytes, clippy::big_endian_bytes)]
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]
#![deny(clippy::float_arithmetic)]

#[cfg(feature = "client")]
pub mod client;
pub mod credentials;
pub mod frame;
pub mod ops;
pub mod session;
pub mod status;
pub mod wire;

pub use credentials::{Credentials, Terminal};
pub use frame::{FrameHeader, FrameType, PROTOCOL_VERSION};
pub use ops::{
    BalanceView, Committed, HistoryItem, Op, OpResult, Opcode, Receipt, Reply, WriteMeta,
};
pub use session::Welcome;
pub use status::Status;
