//! One module per subcommand.

pub mod balance;
pub mod dump;
pub mod explain;
pub mod stats;
pub mod verify;
