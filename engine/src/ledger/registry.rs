//! The registry of assets and account classes of one shard.
//!
//! Definitions are WAL records, applied to every shard in the same order, so every shard
//! assigns the same ids (`AssetId`, `ClassId`) to the same names; the engine checks this when it
//! starts (`Engine::open` reconciles shards that missed the last definitions before a crash).
//! Ids are dense and never reused: asset `n` is the `n`-th asset defined, class `n` (from 1) the
//! `n`-th class.

use std::collections::HashMap;

use super::account::{AccountAddress, AccountFlags, AccountId, AssetId, ClassId, Name, Namespace};
use crate::ids::{CustomerId, PartnerId};
use crate::reject::RejectCode;

/// Largest decimal scale of an asset: 10^18 still fits in a u64 amount.
pub const ASSET_SCALE_MAX: u8 = 18;

/// An asset: a code for people and a decimal scale (points: 0, cents of a currency: 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetDef {
    /// Dense id, assigned in definition order.
    pub id: AssetId,
    /// Code such as `PTS` or `USD`.
    pub code: Name,
    /// Decimal places of one minor unit (0..=18).
    pub scale: u8,
}

/// An account class: all accounts `<namespace>:…:<name>` share its asset and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDef {
    /// Dense id from 1, assigned in definition order.
    pub id: ClassId,
    /// Where addresses of this class live.
    pub namespace: Namespace,
    /// The kind (customer) or name (house, partner).
    pub name: Name,
    /// The single asset its accounts hold.
    pub asset: AssetId,
    /// Constraints on its accounts' counters.
    pub flags: AccountFlags,
}

/// Assets and classes known to a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    assets: Vec<AssetDef>,
    /// `classes[i]` has id `i + 1`.
    classes: Vec<ClassDef>,
    asset_by_code: HashMap<Name, AssetId>,
    class_by_name: HashMap<(Namespace, Name), ClassId>,
}

impl Registry {
    /// The id the next asset definition must carry.
    pub fn next_asset_id(&self) -> AssetId {
        AssetId(u16::try_from(self.assets.len()).expect("asset count is bounded"))
    }

    /// The id the next class definition must carry.
    pub fn next_class_id(&self) -> ClassId {
        ClassId(u32::try_from(self.classes.len() + 1).expect("class count is bounded"))
    }

    /// Adds an asset; its id must be the next one and its code new.
    pub fn define_asset(&mut self, asset: AssetDef) -> Result<(), RejectCode> {
        if asset.id != self.next_asset_id()
            || asset.scale > ASSET_SCALE_MAX
            || self.asset_by_code.contains_key(&asset.code)
            || self.assets.len() >= usize::from(u16::MAX)
        {
            return Err(RejectCode::DefinitionConflict);
        }
        self.asset_by_code.insert(asset.code.clone(), asset.id);
        self.assets.push(asset);
        Ok(())
    }

    /// Adds a class; its id must be the next one, its name new in its namespace and its asset
    /// defined.
    pub fn define_class(&mut self, class: ClassDef) -> Result<(), RejectCode> {
        if self.asset(class.asset).is_none() {
            return Err(RejectCode::AssetUnknown);
        }
        let key = (class.namespace, class.name.clone());
        if class.id != self.next_class_id()
            || self.class_by_name.contains_key(&key)
            || self.classes.len() >= u32::MAX as usize - 1
        {
            return Err(RejectCode::DefinitionConflict);
        }
        self.class_by_name.insert(key, class.id);
        self.classes.push(class);
        Ok(())
    }

    /// All assets, in id order.
    pub fn assets(&self) -> &[AssetDef] {
        &self.assets
    }

    /// All classes, in id order.
    pub fn classes(&self) -> &[ClassDef] {
        &self.classes
    }

    /// The asset with this id.
    pub fn asset(&self, id: AssetId) -> Option<&AssetDef> {
        self.assets.get(usize::from(id.0))
    }

    /// The asset with this code.
    pub fn asset_by_code(&self, code: &str) -> Option<&AssetDef> {
        let id = self.asset_by_code.get(code)?;
        self.asset(*id)
    }

    /// The class with this id (never the transit class, which has no definition).
    pub fn class(&self, id: ClassId) -> Option<&ClassDef> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.classes.get(index)
    }

    /// The class of `namespace` named `name`.
    pub fn class_by_name(&self, namespace: Namespace, name: &Name) -> Option<&ClassDef> {
        let id = self.class_by_name.get(&(namespace, name.clone()))?;
        self.class(*id)
    }

    /// The asset and flags of an account, or `None` if its class is unknown or does not fit
    /// its owner (a house class with a non-zero owner, a transit account of an unknown asset).
    pub fn account_terms(&self, account: AccountId) -> Option<(AssetId, AccountFlags, Namespace)> {
        if account.class() == ClassId::TRANSIT {
            let asset = AssetId(u16::try_from(account.owner()).ok()?);
            self.asset(asset)?;
            // Transit accounts belong to the house: they may go either way.
            return Some((asset, AccountFlags::NONE, Namespace::House));
        }
        let class = self.class(account.class())?;
        if class.namespace == Namespace::House && account.owner() != 0 {
            return None;
        }
        Some((class.asset, class.flags, class.namespace))
    }

    /// The compact key of an address, or the reason it names nothing.
    pub fn resolve(&self, address: &AccountAddress) -> Result<AccountId, RejectCode> {
        let (namespace, name, owner) = match address {
            AccountAddress::Customer { customer, kind } => (Namespace::Customer, kind, customer.0),
            AccountAddress::House { name } => (Namespace::House, name, 0),
            AccountAddress::Partner { partner, name } => (Namespace::Partner, name, partner.0),
            AccountAddress::Transit { asset } => {
                let asset = self.asset_by_code(asset.as_str()).ok_or(RejectCode::AssetUnknown)?;
                return Ok(AccountId::transit(asset.id));
            }
        };
        let class = self.class_by_name(namespace, name).ok_or(RejectCode::ClassUnknown)?;
        Ok(AccountId::new(class.id, owner))
    }

    /// The text form of an account key, if its class is known.
    pub fn address(&self, account: AccountId) -> Option<AccountAddress> {
        if account.class() == ClassId::TRANSIT {
            let asset = self.asset(AssetId(u16::try_from(account.owner()).ok()?))?;
            return Some(AccountAddress::Transit { asset: asset.code.clone() });
        }
        let class = self.class(account.class())?;
        Some(match class.namespace {
            Namespace::Customer => AccountAddress::Customer {
                customer: CustomerId(account.owner()),
                kind: class.name.clone(),
            },
            Namespace::House => AccountAddress::House { name: class.name.clone() },
            Namespace::Partner => AccountAddress::Partner {
                partner: PartnerId(account.owner()),
                name: class.name.clone(),
            },
        })
    }

    /// Whether `self` is a prefix of `other`: same definitions, in the same order, and
    /// possibly fewer. Shards must agree this way after a restart.
    pub fn is_prefix_of(&self, other: &Registry) -> bool {
        self.assets.len() <= other.assets.len()
            && self.classes.len() <= other.classes.len()
            && self.assets.iter().zip(&other.assets).all(|(a, b)| a == b)
            && self.classes.iter().zip(&other.classes).all(|(a, b)| a == b)
    }
}
