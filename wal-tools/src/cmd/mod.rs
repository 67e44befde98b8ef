//! One module per subcommand.

pub mod balance;
pub mod dump;
pub mod explain;
pub mod history;
pub mod stats;
pub mod verify;
