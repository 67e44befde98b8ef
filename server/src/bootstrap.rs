//! The definitions every ledgerd data directory starts with: the points asset and the accounts
//! a loyalty programme needs. Defining them is idempotent, so this runs at every start and
//! changes nothing after the first.
//!
//! | address | asset | flags | role |
//! |---|---|---|---|
//! | `customer:<id>:points` | PTS | no overdraft | a member's points |
//! | `house:issuance` | PTS | – | debited when points are earned |
//! | `house:redemption` | PTS | – | credited when points are spent |
//! | `house:expiry` | PTS | – | credited when points expire |
//! | `house:adjustment` | PTS | – | operator corrections |

use ledger_engine::{AccountFlags, DefineError, Engine, Namespace};

/// What the defaults amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined {
    /// Assets defined (new or existing).
    pub assets: usize,
    /// Classes defined (new or existing).
    pub classes: usize,
}

/// Defines (or finds) the default asset and classes.
pub fn define_defaults(engine: &Engine) -> Result<Defined, DefineError> {
    let points = engine.define_asset("PTS", 0)?;
    engine.define_class(Namespace::Customer, "points", points, AccountFlags::NO_OVERDRAFT)?;
    for house in ["issuance", "redemption", "expiry", "adjustment"] {
        engine.define_class(Namespace::House, house, points, AccountFlags::NONE)?;
    }
    let registry = engine.registry();
    Ok(Defined { assets: registry.assets().len(), classes: registry.classes().len() })
}
