//! The loyalty programme inside the engine: earning rules and how a purchase is priced by them.
//! Pure and deterministic like `ledger/`: no I/O (except `rules_file::read`, the operator's
//! file), no clock, no floats; time comes from the record being priced.
//! Docs: docs/loyalty.md.
//!
//! - `decimal`: exact multipliers and percentages (`Ratio`, ten-thousandths).
//! - `calendar`: UTC days, months and lot expiry dates from timestamps.
//! - `rules`: the rule set and its checks.
//! - `pricing`: a basket priced component by component (`price`, `Breakdown`).
//! - `rules_file`: rule files (TOML) with errors by line.
//! - `codec`: the byte form of a rule set (WAL record and snapshot).
//! - `programme`: the recorded rule versions and which is in force when.
//! - `lots`: point lots (one per kind and expiry day), spent the earliest expiry first.
//! - `explain`: why a purchase earned what it did, from memory or from the WAL alone.
//! - `lifecycle`: a purchase's states and legal transitions, and a refund's share of it.
//! - `purchases`: the purchases a shard can still settle, fail or refund (64 bytes each).
//! - `settlement`: settlement reports (CSV) read, checked and matched to purchases.
//! - `exchange`: versioned exchange rates between partner points and the programme's.
//! - `members`: each customer's lots, tier, qualifying points and caps; parked points; the
//!   expiry index.

pub mod calendar;
pub mod codec;
pub mod decimal;
pub mod exchange;
pub mod explain;
pub mod liability;
pub mod lifecycle;
pub mod lots;
pub mod members;
pub mod pricing;
pub mod programme;
pub mod purchases;
pub mod rules;
pub mod rules_file;
pub mod settlement;

pub use decimal::Ratio;
pub use pricing::{BasketError, Breakdown, CapsUsed, Line, Lines, price};
pub use rules::{RuleError, RuleSet};

#[cfg(test)]
mod tests;
