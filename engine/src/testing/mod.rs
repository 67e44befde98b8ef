//! Test support shared by the engine's tests, other crates' tests and the benches: a reference
//! model of the ledger, and injected I/O faults.

pub mod crash;
pub mod faults;
pub mod loyalty;
pub mod model;
