//! Where the partner exchange meets the ledger: a rate recorded on the shard, a conversion
//! priced by the rate in force at its record's time and posted as one transaction, its lots
//! following from its postings. The registry and the arithmetic live in
//! `crate::loyalty::exchange`; this file only calls them at the right step of `Ledger::apply`.
//! Docs: docs/loyalty.md, "Partner exchange".

use super::Ledger;
use super::account::AssetId;
use super::record::{Conversion, RateDefine, TxHeader, TxKind};
use super::{Leg, PostingContext};
use crate::amount::Amount;
use crate::ids::{CustomerId, Timestamp, shard_for_customer};
use crate::loyalty::exchange::{self, ExchangeError, Rates};
use crate::reject::RejectCode;

/// The code a shard answers for a refused rate or conversion.
pub fn exchange_code(error: ExchangeError) -> RejectCode {
    match error {
        ExchangeError::SameAsset => RejectCode::ExchangeSameAsset,
        ExchangeError::RateMissing => RejectCode::RateMissing,
        ExchangeError::ConversionTooSmall => RejectCode::ConversionTooSmall,
        ExchangeError::Overflow => RejectCode::Overflow,
        ExchangeError::AccountsInvalid(_) => RejectCode::ClassUnknown,
        ExchangeError::RateInvalid
        | ExchangeError::EffectiveTimePast
        | ExchangeError::EffectiveTimeTaken
        | ExchangeError::RegistryFull => RejectCode::DefinitionConflict,
    }
}

impl Ledger {
    /// The partner exchange's rates.
    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    /// Restores the rates a snapshot holds (`state_codec`).
    pub(crate) fn rates_mut(&mut self) -> &mut Rates {
        &mut self.rates
    }

    /// Records a rate: the next version, accounts of the right kinds, not another ratio for a
    /// time its pair has a rate for already (the engine never sends the same one twice).
    pub(super) fn apply_rate_define(
        &mut self,
        define: &RateDefine,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        if define.version != self.rates.next_version() {
            return Err(RejectCode::DefinitionConflict);
        }
        match self.rates.check(&define.terms, define.effective_at, &self.registry) {
            Ok(None) => {}
            Ok(Some(_)) => return Err(RejectCode::DefinitionConflict),
            Err(error) => return Err(exchange_code(error)),
        }
        self.rates.define(define.terms, define.effective_at, now);
        self.refresh_flow_classes();
        Ok(())
    }

    /// Prices a conversion of `amount` of `customer`'s `from` points into `to` by the rate in
    /// force at `now`. The body it returns applies unless the key is taken or the member's
    /// balance is short.
    pub fn decide_conversion(
        &self,
        header: TxHeader,
        customer: u64,
        (from, to): (AssetId, AssetId),
        amount: Amount,
        now: Timestamp,
    ) -> Result<Conversion, RejectCode> {
        let priced = self.price_conversion(customer, (from, to), amount, now)?;
        Ok(Conversion { header, customer, from, to, amount, priced })
    }

    fn price_conversion(
        &self,
        customer: u64,
        (from, to): (AssetId, AssetId),
        amount: Amount,
        now: Timestamp,
    ) -> Result<crate::loyalty::exchange::Priced, RejectCode> {
        if shard_for_customer(CustomerId(customer), self.config.shard_count) != self.config.shard {
            return Err(RejectCode::AccountsOnDifferentShards);
        }
        self.rates.convert(from, to, amount.get(), now).map_err(exchange_code)
    }

    /// Applies a conversion as recorded: priced again by the rate in force (the record must
    /// say the same), then posted, the lots following from the postings.
    pub(super) fn apply_conversion(
        &mut self,
        conversion: &Conversion,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let priced = self.price_conversion(
            conversion.customer,
            (conversion.from, conversion.to),
            conversion.amount,
            now,
        )?;
        if priced != conversion.priced {
            return Err(RejectCode::DefinitionConflict);
        }
        let rate = self.rates.version(conversion.priced.version).expect("priced by a rate");
        let postings = exchange::conversion_postings(
            &rate.terms,
            conversion.customer,
            conversion.amount,
            &conversion.priced,
        )
        .map_err(exchange_code)?;
        for (index, posting) in postings.iter().enumerate() {
            self.check_posting(posting)?;
            // Not reversible: its money posting touches no customer account. A conversion
            // back is another conversion, at the rate in force then.
            let context = PostingContext::of(index, postings.len(), false);
            let leg = Leg::Post(posting.amount.wide());
            self.move_value(posting.debit, posting.credit, posting.asset, leg, context)?;
        }
        self.moved = conversion.priced.credited;
        self.lots_after_postings(&postings, TxKind::EXCHANGE, conversion.header.id, now);
        Ok(())
    }
}
