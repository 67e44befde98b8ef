//! Accounts: their compact key (`AccountId`), their text form for people (`AccountAddress`),
//! and their balance counters (`Account`).
//!
//! An account is named by a *class* (a customer kind such as `points`, a house name such as
//! `issuance`, a partner name) and an *owner* (the customer or partner id; zero for house
//! accounts). Each class holds exactly one asset and carries the account flags, so an account
//! itself is only its four counters: 64 bytes per customer account in memory.
//!
//! Transit accounts (`transit:<ASSET>`) are the engine's own: one per asset and shard, they hold
//! points in flight between the two steps of a cross-shard transfer.

use std::fmt;
use std::str::FromStr;

use crate::ids::{CustomerId, ParseIdError, PartnerId};
use crate::limits::NAME_BYTES_MAX;

/// An asset (points, bonus points, a currency), by its index in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetId(pub u16);

/// An account class, by its index in the registry. Class 0 is reserved for transit accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(pub u32);

impl ClassId {
    /// The class of transit accounts, whose owner field holds the asset id.
    pub const TRANSIT: ClassId = ClassId(0);
}

/// The three namespaces people address accounts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Namespace {
    /// `customer:<id>:<kind>`: created on first use, no-overdraft by default.
    Customer = 1,
    /// `house:<name>`: the programme's own accounts, one slice per shard.
    House = 2,
    /// `partner:<id>:<name>`: accounts of exchange partners, one slice per shard.
    Partner = 3,
}

impl Namespace {
    /// The namespace for its on-disk byte.
    pub fn from_u8(value: u8) -> Option<Namespace> {
        match value {
            1 => Some(Namespace::Customer),
            2 => Some(Namespace::House),
            3 => Some(Namespace::Partner),
            _ => None,
        }
    }

    /// The text prefix of addresses in this namespace.
    pub fn prefix(self) -> &'static str {
        match self {
            Namespace::Customer => "customer",
            Namespace::House => "house",
            Namespace::Partner => "partner",
        }
    }
}

/// Account flags, defined per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccountFlags(u32);

impl AccountFlags {
    /// No flags: the account may go negative either way (house accounts, by default).
    pub const NONE: AccountFlags = AccountFlags(0);
    /// Debits (posted and pending) must not exceed posted credits: the balance never goes
    /// below zero, counting holds. On by default for customer classes.
    pub const NO_OVERDRAFT: AccountFlags = AccountFlags(1);
    /// Credits (posted and pending) must not exceed posted debits.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlags = AccountFlags(2);
    const KNOWN: u32 = 3;

    /// Flags from their on-disk bits, or `None` if unknown bits are set.
    pub fn from_bits(bits: u32) -> Option<AccountFlags> {
        (bits & !AccountFlags::KNOWN == 0).then_some(AccountFlags(bits))
    }

    /// The on-disk bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two flag sets.
    #[must_use]
    pub fn with(self, other: AccountFlags) -> AccountFlags {
        AccountFlags(self.0 | other.0)
    }
}

/// The compact key of an account: 12 bytes of payload, hashed and compared as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId {
    /// Customer or partner id; zero for house accounts; the asset id for transit accounts.
    owner: u64,
    class: ClassId,
}

impl AccountId {
    /// An account key from its parts. The registry checks that the class exists and fits the
    /// owner when a request names the account.
    pub const fn new(class: ClassId, owner: u64) -> AccountId {
        AccountId { owner, class }
    }

    /// The transit account of `asset`.
    pub fn transit(asset: AssetId) -> AccountId {
        AccountId { owner: u64::from(asset.0), class: ClassId::TRANSIT }
    }

    /// The owner field (customer id, partner id, 0 or the transit asset).
    pub fn owner(self) -> u64 {
        self.owner
    }

    /// The account's class.
    pub fn class(self) -> ClassId {
        self.class
    }
}

/// A name of an asset code or a class: 1..=32 bytes of `[a-z0-9_.-]` (class names) or
/// `[A-Z0-9_]` (asset codes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// A class name: lowercase letters, digits, `_`, `-`, `.`.
    pub fn class(text: &str) -> Result<Name, ParseIdError> {
        let valid = !text.is_empty()
            && text.len() <= NAME_BYTES_MAX
            && text.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            });
        if valid { Ok(Name(text.to_string())) } else { Err(ParseIdError::new("class name", text)) }
    }

    /// An asset code: uppercase letters, digits, `_`.
    pub fn asset(text: &str) -> Result<Name, ParseIdError> {
        let valid = !text.is_empty()
            && text.len() <= NAME_BYTES_MAX
            && text.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if valid { Ok(Name(text.to_string())) } else { Err(ParseIdError::new("asset code", text)) }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text form of an account: `customer:<id>:<kind>`, `house:<name>`,
/// `partner:<id>:<name>` or `transit:<ASSET>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountAddress {
    /// A customer's account of one kind.
    Customer {
        /// The customer.
        customer: CustomerId,
        /// The kind (class name), e.g. `points`.
        kind: Name,
    },
    /// A house account (one slice per shard).
    House {
        /// The class name, e.g. `issuance`.
        name: Name,
    },
    /// A partner's account.
    Partner {
        /// The partner.
        partner: PartnerId,
        /// The class name, e.g. `exchange`.
        name: Name,
    },
    /// The engine's transit account of an asset.
    Transit {
        /// The asset code.
        asset: Name,
    },
}

impl fmt::Display for AccountAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountAddress::Customer { customer, kind } => write!(f, "customer:{customer}:{kind}"),
            AccountAddress::House { name } => write!(f, "house:{name}"),
            AccountAddress::Partner { partner, name } => write!(f, "partner:{partner}:{name}"),
            AccountAddress::Transit { asset } => write!(f, "transit:{asset}"),
        }
    }
}

impl FromStr for AccountAddress {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<AccountAddress, ParseIdError> {
        let error = || ParseIdError::new("account address", text);
        if text.len() > 2 * NAME_BYTES_MAX + 32 {
            return Err(error());
        }
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["customer", id, kind] => Ok(AccountAddress::Customer {
                customer: id.parse().map_err(|_| error())?,
                kind: Name::class(kind).map_err(|_| error())?,
            }),
            ["house", name] => {
                Ok(AccountAddress::House { name: Name::class(name).map_err(|_| error())? })
            }
            ["partner", id, name] => Ok(AccountAddress::Partner {
                partner: id.parse().map_err(|_| error())?,
                name: Name::class(name).map_err(|_| error())?,
            }),
            ["transit", asset] => {
                Ok(AccountAddress::Transit { asset: Name::asset(asset).map_err(|_| error())? })
            }
            _ => Err(error()),
        }
    }
}

/// The balance counters of one account, as TigerBeetle keeps them: posted and pending debits
/// and credits. The balance is derived (`credits_posted - debits_posted`), so "every asset sums
/// to zero" is "Σ debits = Σ credits" over the shard's accounts.
///
/// Aligned to 8 bytes, not the 16 of `u128`: a slot of the account table (id, counters, history
/// head) is then 88 bytes instead of 96, 13 bytes less per customer at ten million
/// (docs/performance.md, "Memory per customer account"). Fields are read and written by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, packed(8))]
pub struct Account {
    /// Debits reserved by open holds.
    pub debits_pending: u128,
    /// Debits of committed postings.
    pub debits_posted: u128,
    /// Credits reserved by open holds.
    pub credits_pending: u128,
    /// Credits of committed postings.
    pub credits_posted: u128,
}

impl Account {
    /// An account with all counters at zero.
    pub const ZERO: Account =
        Account { debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 0 };

    /// Posted balance: credits minus debits (positive for a customer holding points).
    pub fn balance_posted(&self) -> i128 {
        signed_difference(self.credits_posted, self.debits_posted)
    }

    /// What a customer can still spend: posted balance minus pending debits.
    pub fn balance_available(&self) -> i128 {
        signed_difference(
            self.credits_posted,
            self.debits_posted.saturating_add(self.debits_pending),
        )
    }

    /// Whether the account's counters respect `flags`.
    pub fn satisfies(&self, flags: AccountFlags) -> bool {
        let no_overdraft = !flags.contains(AccountFlags::NO_OVERDRAFT)
            || self
                .debits_posted
                .checked_add(self.debits_pending)
                .is_some_and(|debits| debits <= self.credits_posted);
        let credit_limit = !flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            || self
                .credits_posted
                .checked_add(self.credits_pending)
                .is_some_and(|credits| credits <= self.debits_posted);
        no_overdraft && credit_limit
    }

    /// Whether all four counters are zero (an account that can be left out of a snapshot).
    pub fn is_zero(&self) -> bool {
        *self == Account::default()
    }
}

/// `a - b` as a signed number, saturating at the ends of `i128` (only reachable with counters
/// beyond 2^127, which the checked arithmetic of postings never produces).
fn signed_difference(a: u128, b: u128) -> i128 {
    if a >= b {
        i128::try_from(a - b).unwrap_or(i128::MAX)
    } else {
        i128::try_from(b - a).map(|v| -v).unwrap_or(i128::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_text() {
        for text in ["customer:42:points", "house:issuance", "partner:7:air-miles", "transit:PTS"] {
            let address: AccountAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        for bad in [
            "customer:x:points",
            "customer:1",
            "house:Issuance",
            "vendor:1",
            "house:",
            "customer:1:points:extra",
            "transit:pts",
        ] {
            assert!(bad.parse::<AccountAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn account_fits_in_64_bytes() {
        assert_eq!(std::mem::size_of::<Account>(), 64);
        assert_eq!(std::mem::size_of::<AccountId>(), 16);
    }

    #[test]
    fn flags_constrain_counters() {
        let account = Account {
            credits_posted: 100,
            debits_posted: 60,
            debits_pending: 40,
            ..Default::default()
        };
        assert!(account.satisfies(AccountFlags::NO_OVERDRAFT));
        assert_eq!(account.balance_available(), 0);
        let over = Account { debits_pending: 41, ..account };
        assert!(!over.satisfies(AccountFlags::NO_OVERDRAFT));
        assert!(over.satisfies(AccountFlags::NONE));
        assert!(!account.satisfies(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS));
        assert_eq!(AccountFlags::from_bits(4), None);
    }
}
