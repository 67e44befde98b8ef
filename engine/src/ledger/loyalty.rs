//! Where the loyalty programme meets the ledger: a purchase priced and applied, the lots every
//! credit and debit of a points account opens or spends, the points holds and transfers park,
//! lot expiry, and the invariant that a customer's lots add up to their balance.
//! The rules, the arithmetic and the lots themselves live in `crate::loyalty`; this file only
//! calls them at the right step of `Ledger::apply`. Docs: docs/loyalty.md.

use std::sync::Arc;

use super::Ledger;
use super::account::{AccountId, AssetId};
use super::command::{MEMBER_LOTS_MAX, MemberView};
use super::record::{LotsExpire, Posting, Purchase, TxHeader, TxKind};
use super::{Leg, PostingContext};
use crate::ids::{CustomerId, Timestamp, TxId, shard_for_customer};
use crate::loyalty::calendar::{day_index, expiry_after, month_index};
use crate::loyalty::explain::Explanation;
use crate::loyalty::lots::{LotKind, LotPart};
use crate::loyalty::members::{Member, Members, PurchaseEffect};
use crate::loyalty::pricing::{self, BasketError, Line, Lines, PurchaseOutcome};
use crate::loyalty::programme::RulesVersion;
use crate::loyalty::rules::Expiry;
use crate::reject::RejectCode;

/// Lots one `lots_expire` record expires at most (the rest wait for the next record).
pub const LOTS_PER_EXPIRY_MAX: usize = 255;

pub(super) fn basket_code(error: BasketError) -> RejectCode {
    match error {
        BasketError::LineCount => RejectCode::BasketInvalid,
        BasketError::LineAmountZero => RejectCode::LineAmountZero,
        BasketError::TotalOverflow | BasketError::EarnOverflow => RejectCode::Overflow,
    }
}

impl Ledger {
    /// The loyalty state of this shard's customers.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// A customer's loyalty state.
    pub fn member(&self, customer: u64) -> Option<&Member> {
        self.members.get(customer)
    }

    /// The customer of `account`, if it is a points account of the programme.
    fn points_customer(&self, account: AccountId) -> Option<u64> {
        (Some(account.class()) == self.programme.points_class()).then(|| account.owner())
    }

    /// How long points credited at `now` live: the version in force says, or the defaults
    /// before one is.
    fn lot_part(&self, origin: TxId, kind: LotKind, amount: u64, now: Timestamp) -> LotPart {
        let expiry = self.programme.in_force(now).map_or_else(Expiry::default, |v| v.rules.expiry);
        let months = match kind {
            LotKind::Earned => expiry.earned_months,
            LotKind::Bonus => expiry.bonus_months,
            LotKind::Transfer => expiry.transfer_months,
        };
        LotPart {
            origin,
            kind,
            expires_day: day_index(expiry_after(now, u32::from(months))),
            amount,
        }
    }

    /// Prices a purchase for the shard that owns `customer`: the version in force at `now`,
    /// the customer's tier before it and what they earned today and this month. The body it
    /// returns applies (unless its key is taken or a posting overflows).
    pub fn price_purchase(
        &self,
        header: TxHeader,
        customer: u64,
        lines: Lines,
        now: Timestamp,
    ) -> Result<Purchase, RejectCode> {
        if shard_for_customer(CustomerId(customer), self.config.shard_count) != self.config.shard {
            return Err(RejectCode::AccountsOnDifferentShards);
        }
        let version = self.programme.in_force(now).ok_or(RejectCode::RulesNotInForce)?;
        pricing::check_basket(&lines).map_err(basket_code)?;
        let outcome = self.reprice(version, customer, &lines, header.metadata.store, now)?;
        Ok(Purchase { header, customer, lines, outcome })
    }

    /// What `version` makes of a purchase by `customer` at `now`, from the customer's state
    /// before it.
    fn reprice(
        &self,
        version: &RulesVersion,
        customer: u64,
        lines: &[Line],
        store: u32,
        now: Timestamp,
    ) -> Result<PurchaseOutcome, RejectCode> {
        let rules = &version.rules;
        let (day, month) = (day_index(now), month_index(now));
        let member = self.members.get(customer);
        let tier = member.map_or(0, |member| member.tier_in(rules, month));
        let used = member.map(|member| member.caps().used(day, month)).unwrap_or_default();
        let breakdown =
            pricing::price(rules, lines, store, now, tier, used).map_err(basket_code)?;
        let qualifying =
            member.map_or(0, |member| member.qualifying(month, rules.tier_window_months));
        let tier_after = rules.tier_for(qualifying.saturating_add(breakdown.points()));
        Ok(PurchaseOutcome::new(version.version, &breakdown, tier_after))
    }

    /// Re-prices a recorded purchase from the state before it: `None` when the record says
    /// what the rules say, or the outcome the rules give. Replay applies the record either way;
    /// recovery and `ledger-wal verify` report the difference.
    pub fn reprice_mismatch(&self, purchase: &Purchase, now: Timestamp) -> Option<PurchaseOutcome> {
        let version = self.programme.version(purchase.outcome.rules_version)?;
        let outcome = self
            .reprice(
                version,
                purchase.customer,
                &purchase.lines,
                purchase.header.metadata.store,
                now,
            )
            .ok()?;
        (outcome != purchase.outcome).then_some(outcome)
    }

    /// Applies a purchase as recorded: the version must be the one in force; the points and
    /// the cashback are posted; then the lots, caps, qualifying points and tier follow.
    pub(super) fn apply_purchase(
        &mut self,
        purchase: &Purchase,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let outcome = &purchase.outcome;
        let version = match self.programme.in_force(now) {
            Some(version) if version.version == outcome.rules_version => version,
            _ => return Err(RejectCode::RulesNotInForce),
        };
        if shard_for_customer(CustomerId(purchase.customer), self.config.shard_count)
            != self.config.shard
        {
            return Err(RejectCode::AccountsOnDifferentShards);
        }
        pricing::check_basket(&purchase.lines).map_err(basket_code)?;
        let accounts = version.accounts;
        let held = Ledger::holds_pending(version) && Ledger::refundable_outcome(outcome);
        let weight = crate::loyalty::purchases::weight(&version.rules, &purchase.lines);
        let window = version.rules.tier_window_months;
        let tiers = version.rules.tiers.len();
        if usize::from(outcome.tier_before.max(outcome.tier_after)) >= tiers {
            return Err(RejectCode::DefinitionConflict);
        }
        let class_asset = |ledger: &Ledger, class| {
            ledger.registry.class(class).map(|class| class.asset).ok_or(RejectCode::ClassUnknown)
        };
        let points = outcome.points();
        let postings = usize::from(points > 0) + usize::from(outcome.cashback > 0);
        if points > 0 {
            let asset = class_asset(self, accounts.points)?;
            self.post_one(
                AccountId::new(accounts.issuance, 0),
                AccountId::new(accounts.points, purchase.customer),
                asset,
                points,
                (0, postings, held),
            )?;
        }
        if outcome.cashback > 0 {
            let (customer_class, funding) =
                accounts.cashback.ok_or(RejectCode::DefinitionConflict)?;
            let asset = class_asset(self, customer_class)?;
            self.post_one(
                AccountId::new(funding, 0),
                AccountId::new(customer_class, purchase.customer),
                asset,
                outcome.cashback,
                (postings - 1, postings, held),
            )?;
        }
        // Nothing fails from here on.
        self.moved = points;
        let origin = purchase.header.id;
        for (kind, amount) in [(LotKind::Earned, outcome.earned), (LotKind::Bonus, outcome.bonus)] {
            // Held points open their lots when they are posted (settlement or release).
            if amount > 0 && !held {
                let part = self.lot_part(origin, kind, amount, now);
                self.members.credit(purchase.customer, part);
            }
        }
        let effect = PurchaseEffect {
            day: day_index(now),
            month: month_index(now),
            window,
            points,
            tier_after: outcome.tier_after,
        };
        self.members.record_purchase(purchase.customer, effect);
        self.file_purchase(purchase, weight, held, now);
        Ok(())
    }

    /// One posting of a purchase: posted, or credited as pending when `held`.
    fn post_one(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        asset: AssetId,
        amount: u64,
        (index, count, held): (usize, usize, bool),
    ) -> Result<(), RejectCode> {
        let leg = match held {
            true => Leg::Reserve(u128::from(amount)),
            false => Leg::Post(u128::from(amount)),
        };
        self.move_value(debit, credit, asset, leg, PostingContext::of(index, count, !held))
    }

    /// The lots of a record's postings, once they all applied: a credit to a customer's points
    /// opens or adds to a lot (`Transfer` for a transfer between customers, `Earned` otherwise),
    /// a debit takes from the lots that expire first.
    pub(super) fn lots_after_postings(
        &mut self,
        postings: &[Posting],
        kind: TxKind,
        id: TxId,
        now: Timestamp,
    ) {
        for posting in postings {
            let amount = posting.amount.get();
            if let Some(customer) = self.points_customer(posting.debit) {
                self.members.take(customer, amount);
            }
            if let Some(customer) = self.points_customer(posting.credit) {
                let lot_kind =
                    if kind == TxKind::TRANSFER { LotKind::Transfer } else { LotKind::Earned };
                let part = self.lot_part(id, lot_kind, amount, now);
                self.members.credit(customer, part);
            }
        }
    }

    /// A hold on a customer's points parks them out of the lots, the earliest expiry first.
    pub(super) fn lots_after_hold(&mut self, id: TxId, posting: &Posting) {
        if let Some(customer) = self.points_customer(posting.debit) {
            self.members.park(id, customer, posting.amount.get(), true);
        }
    }

    /// A capture spends what the hold parked (the earliest expiry first) and puts the rest
    /// back; a hold made before the programme existed parked nothing, so its capture takes
    /// from the lots. A capture to a customer's points credits a lot.
    pub(super) fn lots_after_capture(
        &mut self,
        capture: TxId,
        hold: TxId,
        posting: &Posting,
        captured: u64,
        now: Timestamp,
    ) {
        if let Some(customer) = self.points_customer(posting.debit)
            && !self.members.unpark(hold, captured)
        {
            self.members.take(customer, captured);
        }
        if let Some(customer) = self.points_customer(posting.credit)
            && captured > 0
        {
            let part = self.lot_part(capture, LotKind::Earned, captured, now);
            self.members.credit(customer, part);
        }
    }

    /// A void or an expiry puts what the hold parked back into the lots.
    pub(super) fn lots_after_release(&mut self, hold: TxId) {
        self.members.unpark(hold, 0);
    }

    /// A transfer to another shard parks the points it takes until it settles.
    pub(super) fn lots_after_transfer_out(&mut self, id: TxId, source: AccountId, amount: u64) {
        if let Some(customer) = self.points_customer(source) {
            self.members.park(id, customer, amount, false);
        }
    }

    /// Points received from another shard open a `Transfer` lot.
    pub(super) fn lots_after_transfer_in(
        &mut self,
        id: TxId,
        destination: AccountId,
        amount: u64,
        now: Timestamp,
    ) {
        if let Some(customer) = self.points_customer(destination) {
            let part = self.lot_part(id, LotKind::Transfer, amount, now);
            self.members.credit(customer, part);
        }
    }

    /// A settled transfer spends what it parked; a refused one puts the points back into the
    /// lots they came from, with their own expiry.
    pub(super) fn lots_after_settle(&mut self, transfer: TxId, amount: u64, accepted: bool) {
        self.members.unpark(transfer, if accepted { amount } else { 0 });
    }

    /// The first rule version turns the points customers already hold into lots that expire
    /// `earned_months` after it (their origin is transaction 0).
    pub(super) fn lots_at_programme_start(&mut self, now: Timestamp) {
        let Some(points) = self.programme.points_class() else { return };
        let balances: Vec<(u64, u64)> = self
            .accounts
            .iter()
            .filter(|(id, _)| id.class() == points)
            .filter_map(|(id, account)| {
                let balance = u64::try_from(account.balance_posted()).ok()?;
                (balance > 0).then_some((id.owner(), balance))
            })
            .collect();
        for (customer, balance) in balances {
            let part = self.lot_part(TxId(0), LotKind::Earned, balance, now);
            self.members.credit(customer, part);
        }
    }

    /// Up to `max` customers whose lots are due at `now`, each with up to
    /// `LOTS_PER_EXPIRY_MAX` due lots: the expiry records the shard writes next.
    pub fn lots_due(&self, now: Timestamp, max: usize) -> Vec<(u64, crate::loyalty::lots::Parts)> {
        if self.programme.points_class().is_none() {
            return Vec::new();
        }
        let mut due = self.members.due(day_index(now), max);
        for (_, parts) in &mut due {
            parts.truncate(LOTS_PER_EXPIRY_MAX);
        }
        due
    }

    /// Whether some lot is due at `now`.
    pub fn lots_due_by(&self, now: Timestamp) -> bool {
        self.members.next_expiry_day().is_some_and(|day| day <= day_index(now))
    }

    /// A customer's lots due at `now` (at most `LOTS_PER_EXPIRY_MAX`).
    pub fn lots_due_of(&self, customer: u64, now: Timestamp) -> crate::loyalty::lots::Parts {
        let mut due = self
            .members
            .get(customer)
            .map(|member| member.lots.due(day_index(now)))
            .unwrap_or_default();
        due.truncate(LOTS_PER_EXPIRY_MAX);
        due
    }

    /// Expires due lots: each listed lot must be the customer's, due by `now`, and listed with
    /// its whole remainder; their points go to the breakage class.
    pub(super) fn apply_lots_expire(
        &mut self,
        expire: &LotsExpire,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let version = self.programme.in_force(now).or(self.programme.versions().last());
        let accounts = version.ok_or(RejectCode::RulesNotInForce)?.accounts;
        let today = day_index(now);
        let exact = self.members.get(expire.customer).is_some_and(|member| {
            expire.lots.iter().all(|part| {
                part.expires_day <= today
                    && member.lots.iter().any(|lot| {
                        (lot.origin, lot.kind, lot.expires_day, lot.remaining)
                            == (part.origin, part.kind, part.expires_day, part.amount)
                    })
            })
        });
        if expire.lots.is_empty() || !exact {
            return Err(RejectCode::TransactionNotFound);
        }
        let amount = expire.lots.iter().try_fold(0_u64, |sum, part| sum.checked_add(part.amount));
        let amount = amount.ok_or(RejectCode::Overflow)?;
        let asset = self
            .registry
            .class(accounts.points)
            .map(|class| class.asset)
            .ok_or(RejectCode::ClassUnknown)?;
        self.move_value(
            AccountId::new(accounts.points, expire.customer),
            AccountId::new(accounts.breakage, 0),
            asset,
            Leg::Post(u128::from(amount)),
            PostingContext::single(),
        )?;
        assert!(self.members.expire(expire.customer, &expire.lots), "checked above");
        Ok(())
    }

    /// The loyalty invariants: every customer's lots plus what their holds parked equal their
    /// posted points balance, and the expiry index lists exactly the lots' days.
    pub(super) fn check_lot_invariants(&self) -> Result<(), String> {
        let Some(points) = self.programme.points_class() else {
            return match self.members.is_empty() {
                true => Ok(()),
                false => Err("members exist without a programme".to_string()),
            };
        };
        let mut parked: std::collections::HashMap<u64, u128> = std::collections::HashMap::new();
        for (tx, entry) in self.members.parked() {
            if entry.in_balance {
                if !self.holds.contains_key(tx) {
                    return Err(format!("points parked by hold {} that is not open", tx.0));
                }
                *parked.entry(entry.customer).or_default() += u128::from(entry.total());
            } else if !self.transfers_out_by_tx.contains_key(tx) {
                return Err(format!("points parked by transfer {} that is not in flight", tx.0));
            }
        }
        for (id, account) in self.accounts.iter() {
            if id.class() != points {
                continue;
            }
            let customer = id.owner();
            let lots = self.members.get(customer).map_or(0, |member| member.lots.total());
            let total = lots + parked.remove(&customer).unwrap_or(0);
            let balance = u128::try_from(account.balance_posted()).unwrap_or(u128::MAX);
            if total != balance {
                return Err(format!(
                    "customer {customer}: lots and parked points {total} but balance {balance}"
                ));
            }
        }
        if let Some((customer, _)) = parked.into_iter().next() {
            return Err(format!("customer {customer} has parked points but no points account"));
        }
        for (customer, member) in self.members.iter() {
            if !member.lots.is_empty()
                && self.accounts.get(&AccountId::new(points, *customer)).is_none()
            {
                return Err(format!("customer {customer} has lots but no points account"));
            }
        }
        if !self.members.expiries_match_lots() {
            return Err(
                "the expiry index or the liability by expiry month does not match the lots"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// A member's loyalty state at `now`, for a query.
    pub fn member_view(
        &self,
        customer: u64,
        within_days: u16,
        now: Timestamp,
    ) -> Option<MemberView> {
        let member = self.members.get(customer)?;
        let (day, month) = (day_index(now), month_index(now));
        let rules = self.programme.in_force(now).map(|version| &version.rules);
        let window = rules.map_or(12, |rules| rules.tier_window_months);
        // Lots that expire by 00:00 UTC of today + within_days + 1 (0: by the end of today).
        let horizon = day.saturating_add(u32::from(within_days)).saturating_add(1);
        let held = self
            .members
            .parked()
            .filter(|(_, parked)| parked.customer == customer && parked.in_balance)
            .map(|(_, parked)| parked.total())
            .sum();
        Some(MemberView {
            tier: rules.map_or(member.tier(), |rules| member.tier_in(rules, month)),
            tier_recorded: member.tier(),
            qualifying: member.qualifying(month, window),
            caps_used: member.caps().used(day, month),
            lot_count: member.lots.len(),
            lots: member.lots.iter().take(MEMBER_LOTS_MAX).copied().collect(),
            expiring: member
                .lots
                .iter()
                .take_while(|lot| lot.expires_day <= horizon)
                .map(|lot| lot.remaining)
                .sum(),
            held,
        })
    }

    /// Why purchase `tx` earned what it did, if this shard still remembers it
    /// (`Limits::explain_purchases_max`; older ones: `loyalty::explain::from_wal`).
    pub fn explain(&self, tx: TxId) -> Option<Explanation> {
        let (lsn, timestamp, purchase) = self.recent_purchases.get(tx)?;
        let version = self.programme.version(purchase.outcome.rules_version)?;
        let mut explanation = Explanation::new(purchase, *lsn, *timestamp, version);
        explanation.lifecycle = self.purchases.get(tx).copied();
        Some(explanation)
    }

    /// Keeps `rules` alive for a caller outside the shard (explain, tools).
    pub fn rules_of(&self, version: u32) -> Option<Arc<crate::loyalty::RuleSet>> {
        self.programme.version(version).map(|version| Arc::clone(&version.rules))
    }
}
