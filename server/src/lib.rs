//! `ledgerd`, the ledger server, as a library: the binary (`main.rs`) wires these together,
//! and the tests drive them in process over real sockets.
//!
//! # Layout
//! - `config`: defaults, TOML file, environment and flags, checked.
//! - `bootstrap`: the default loyalty assets and accounts, and the programme's rules.
//! - `rules_check`: `ledgerd rules check`, a rule file checked and tried without the server.
//! - `credentials`: the POS terminals' credentials file (created on first start).
//! - `pos`: the POS protocol listener, its connections, and what each operation posts.
//!
//! **Invariant:** nothing here decides a balance: every change goes through the engine, and
//! every answer that says "ok" to a write was made durable by it first.

pub mod bootstrap;
pub mod config;
pub mod credentials;
pub mod pos;
pub mod rules_check;
