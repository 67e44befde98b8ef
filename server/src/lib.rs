//! `ledgerd`, the ledger server, as a library: the binary (`main.rs`) wires these together,
//! and the tests drive them in process over real sockets.
//!
//! # Layout
//! - `config`: defaults, TOML file, environment and flags, checked.
//! - `bootstrap`: the default loyalty assets and accounts, and the programme's rules.
//! - `rules_check`: `ledgerd rules check`, a rule file checked and tried without the server.
//! - `credentials`: the POS terminals' credentials file (created on first start).
//! - `priority`: lower nice values for the threads that must yield to the tills.
//! - `private_file`: atomic 0600 writes of such files, and a warning when they are shared.
//! - `pos`: the POS protocol listener, its connections, and what each operation posts.
//! - `admin`: the admin HTTP API (axum): reads, operations, metrics, its OpenAPI document.
//! - `replica`: the PostgreSQL reporting replica: connection settings, schema migrations.
//!
//! **Invariant:** nothing here decides a balance: every change goes through the engine, and
//! every answer that says "ok" to a write was made durable by it first.

pub mod admin;
pub mod bootstrap;
pub mod config;
pub mod credentials;
pub mod pos;
pub mod priority;
pub mod private_file;
pub mod replica;
pub mod rules_check;
