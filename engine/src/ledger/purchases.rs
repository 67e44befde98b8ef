//! Where a purchase's lifecycle meets the ledger: the table of refundable purchases kept as
//! purchases apply, the decision of a settlement, failure or refund (what it takes back, from
//! where, what the member then owes), its postings and lots, and the end of a pending
//! purchase's hold on its points. The state machine and the refund arithmetic live in
//! `crate::loyalty::{lifecycle, purchases}`. Docs: docs/loyalty.md, "Purchase lifecycle and
//! refunds".

use super::Ledger;
use super::account::AccountId;
use super::history::HistoryEntry;
use super::record::{
    Purchase, PurchaseChange, PurchaseEvent, PurchaseRef, PurchaseRelease, TransitionOutcome,
    TxHeader,
};
use super::{Leg, PostingContext};
use crate::ids::{CustomerId, Timestamp, TxId, shard_for_customer};
use crate::loyalty::calendar::{NANOS_PER_DAY, day_index, expiry_after, month_index};
use crate::loyalty::lifecycle::{LifecycleError, LifecycleEvent, LifecycleState};
use crate::loyalty::lots::{LotKind, LotPart};
use crate::loyalty::pricing::{self, PurchaseOutcome};
use crate::loyalty::programme::{ProgrammeAccounts, RulesVersion};
use crate::loyalty::purchases::{Basis, Gave, Refundable, Transition, receipt_key, weight};
use crate::loyalty::rules::PendingPoints;
use crate::reject::RejectCode;

/// The first nanosecond of day `day`.
fn start_of_day(day: u32) -> Timestamp {
    Timestamp(u64::from(day) * NANOS_PER_DAY)
}

/// What a decided transition moves, beyond the entry's own change.
#[derive(Debug, Clone, Copy)]
struct Moves {
    transition: Transition,
    outcome: TransitionOutcome,
    held: bool,
}

impl Ledger {
    /// The purchases this shard can still settle, fail or refund.
    pub fn purchases(&self) -> &crate::loyalty::purchases::Purchases {
        &self.purchases
    }

    /// The lifecycle state of purchase `id`, if this shard still keeps it.
    pub fn purchase_state(&self, id: TxId) -> Option<LifecycleState> {
        self.purchases.get(id).map(|entry| entry.state)
    }

    /// The refund window (in days) at `now`: the version in force says, else the default.
    fn refund_days(&self, now: Timestamp) -> u16 {
        self.programme
            .in_force(now)
            .map_or(crate::loyalty::rules::PurchaseSettings::default().refund_days, |version| {
                version.rules.purchases.refund_days
            })
    }

    /// Drops the purchases older than the refund window at `now`.
    fn forget_purchases(&mut self, now: Timestamp) {
        let first = day_index(now).saturating_sub(u32::from(self.refund_days(now)) - 1);
        self.purchases.forget_before(first);
        self.purchases.trim_held();
    }

    /// Whether `version` holds a pending purchase's points (and cashback) until it settles.
    pub(super) fn holds_pending(version: &RulesVersion) -> bool {
        matches!(version.rules.purchases.pending, PendingPoints::Held { .. })
    }

    /// Files an applied purchase in the refundable table. `held`: its points and cashback were
    /// credited as pending.
    /// `weight`: its weighted eligible spend under the version that priced it.
    pub(super) fn file_purchase(
        &mut self,
        purchase: &Purchase,
        weight: u64,
        held: bool,
        now: Timestamp,
    ) {
        self.forget_purchases(now);
        let outcome = &purchase.outcome;
        let spend = pricing::check_basket(&purchase.lines).expect("checked when applied");
        let gave =
            Gave { earned: outcome.earned, bonus: outcome.bonus, cashback: outcome.cashback };
        let version = u16::try_from(outcome.rules_version).expect("at most 1,024 versions");
        let stamp = (day_index(now), version);
        let entry = Refundable::new(
            purchase.header.id,
            purchase.customer,
            (spend, weight),
            gave,
            stamp,
            held,
        );
        let metadata = &purchase.header.metadata;
        if let Some(entry) = entry {
            self.purchases.push(entry, receipt_key(metadata.store, metadata.receipt.as_str()));
        }
    }

    /// Whether a purchase's components fit its table entry (else it is posted, never held).
    pub(super) fn refundable_outcome(outcome: &PurchaseOutcome) -> bool {
        [outcome.earned, outcome.bonus, outcome.cashback]
            .iter()
            .all(|component| u32::try_from(*component).is_ok())
    }

    /// The entry a request names, or why there is none.
    fn named_purchase(
        &self,
        header: &TxHeader,
        reference: PurchaseRef,
        now: Timestamp,
    ) -> Result<&Refundable, RejectCode> {
        let entry = match reference {
            PurchaseRef::Id(id) => {
                if id.shard() != self.config.shard.index() {
                    return Err(RejectCode::AccountsOnDifferentShards);
                }
                self.purchases.get(id)
            }
            PurchaseRef::Receipt { customer } => {
                if shard_for_customer(CustomerId(customer), self.config.shard_count)
                    != self.config.shard
                {
                    return Err(RejectCode::AccountsOnDifferentShards);
                }
                let metadata = &header.metadata;
                let key = receipt_key(metadata.store, metadata.receipt.as_str());
                self.purchases
                    .by_receipt(key)
                    .filter(|entry| key != 0 && entry.customer == customer)
            }
        };
        let window = u32::from(self.refund_days(now));
        match entry {
            Some(entry) if entry.day + window > day_index(now) => Ok(entry),
            Some(_) => Err(RejectCode::PurchaseNotRefundable),
            None => {
                // An id older than the window names a purchase that may have existed.
                let old = match reference {
                    PurchaseRef::Id(id) => {
                        let millis = id.millis_since_epoch() + TxId::EPOCH_MS;
                        let day = u32::try_from(millis / 86_400_000).unwrap_or(u32::MAX);
                        day + window <= day_index(now)
                    }
                    PurchaseRef::Receipt { .. } => false,
                };
                Err(if old {
                    RejectCode::PurchaseNotRefundable
                } else {
                    RejectCode::PurchaseNotFound
                })
            }
        }
    }

    /// Decides a settlement, failure or refund: what it takes back and from where. The body
    /// it returns applies (unless its key is taken).
    pub fn decide_purchase_change(
        &self,
        header: TxHeader,
        reference: PurchaseRef,
        event: PurchaseEvent,
        now: Timestamp,
    ) -> Result<PurchaseChange, RejectCode> {
        let moves = self.decide(&header, reference, &event, now)?;
        Ok(PurchaseChange { header, reference, event, outcome: moves.outcome })
    }

    fn decide(
        &self,
        header: &TxHeader,
        reference: PurchaseRef,
        event: &PurchaseEvent,
        now: Timestamp,
    ) -> Result<Moves, RejectCode> {
        let entry = *self.named_purchase(header, reference, now)?;
        let version =
            self.programme.version(u32::from(entry.version)).ok_or(RejectCode::RulesNotInForce)?;
        let (lifecycle, basis) = match event {
            PurchaseEvent::Settle => (LifecycleEvent::Settle, Basis::Spend),
            PurchaseEvent::Fail => (LifecycleEvent::Fail, Basis::Spend),
            PurchaseEvent::RefundAmount(amount) => {
                (LifecycleEvent::Refund { amount: amount.get(), left: 0 }, Basis::Spend)
            }
            PurchaseEvent::RefundLines(lines) => {
                pricing::check_basket(lines).map_err(super::loyalty::basket_code)?;
                let weight = weight(&version.rules, lines);
                (LifecycleEvent::Refund { amount: weight, left: 0 }, Basis::Weight)
            }
        };
        let transition = entry.transition(lifecycle, basis).map_err(LifecycleError::code)?;
        let accounts = version.accounts;
        let points = transition.earned + transition.bonus;
        let held = entry.held();
        let (points_owed, cashback_owed) = if held {
            // Held points and cashback are still the pending credit: nothing can be short.
            (0, 0)
        } else {
            let lots = self
                .members
                .get(entry.customer)
                .map_or(0, |member| u64::try_from(member.lots.total()).unwrap_or(u64::MAX));
            let cashback_available = accounts
                .cashback
                .and_then(|(class, _)| self.accounts.get(&AccountId::new(class, entry.customer)))
                .map_or(0, |account| u64::try_from(account.balance_available()).unwrap_or(0));
            (
                points - points.min(lots),
                transition.cashback - transition.cashback.min(cashback_available),
            )
        };
        if (points_owed > 0 && accounts.clawback.is_none())
            || (cashback_owed > 0 && accounts.cashback_clawback.is_none())
        {
            return Err(RejectCode::ClawbackUnavailable);
        }
        let tier_after = match self.members.get(entry.customer) {
            Some(member) if points > 0 => {
                let rules = self.programme.in_force(now).unwrap_or(version);
                let mut after = member.clone();
                after.give_back(entry.day, points, &rules.rules, month_index(now));
                after.tier()
            }
            Some(member) => member.tier(),
            None => 0,
        };
        let outcome = TransitionOutcome {
            purchase: entry.id,
            customer: entry.customer,
            state: transition.state as u8,
            refunded: transition.refunded,
            earned: transition.earned,
            bonus: transition.bonus,
            cashback: transition.cashback,
            points_owed,
            cashback_owed,
            tier_after,
        };
        Ok(Moves { transition, outcome, held })
    }

    /// Applies a settlement, failure or refund as recorded: decided again from the state
    /// before it, it must say what the record says; then its postings, lots, counters and
    /// entry follow.
    pub(super) fn apply_purchase_change(
        &mut self,
        change: &PurchaseChange,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let moves = self.decide(&change.header, change.reference, &change.event, now)?;
        if moves.outcome != change.outcome {
            return Err(RejectCode::DefinitionConflict);
        }
        let entry = *self.purchases.get(moves.outcome.purchase).expect("decided above");
        let version =
            self.programme.version(u32::from(entry.version)).expect("decided above").clone();
        let accounts = version.accounts;
        let outcome = moves.outcome;
        let points = outcome.earned + outcome.bonus;
        let settle = matches!(change.event, PurchaseEvent::Settle);
        if moves.held {
            // The pending credit of the purchase: a settlement posts it, anything else (a
            // failure: refunds need a settlement first) releases it.
            let gave = entry.gave();
            let leg = |amount: u64| match settle {
                true => Leg::Capture { held: u128::from(amount), captured: u128::from(amount) },
                false => Leg::Release(u128::from(amount)),
            };
            self.pending_credit_moves(&accounts, entry.customer, gave, leg)?;
            self.moved = gave.earned + gave.bonus;
        } else {
            self.take_back_moves(&accounts, entry.customer, &outcome)?;
        }
        // Nothing fails from here on.
        if moves.held {
            if settle {
                self.open_purchase_lots(&entry, &version);
            }
        } else if points > 0 {
            // Earned points from the purchase's earned lot, bonus points from its bonus lot;
            // then from the member's other lots.
            let mut short = 0;
            let parts = [(LotKind::Earned, outcome.earned), (LotKind::Bonus, outcome.bonus)];
            for (kind, amount) in parts {
                let first = [(kind, own_lot_day(&entry, &version, kind))];
                short += self.members.take_back(entry.customer, &first, amount).short;
            }
            assert_eq!(short, outcome.points_owed, "decided above");
        }
        if points > 0 {
            let rules = self.programme.in_force(now).unwrap_or(&version).rules.clone();
            self.members.give_back(entry.customer, entry.day, points, &rules, month_index(now));
        }
        self.purchases.get_mut(entry.id).expect("decided above").apply(&moves.transition);
        if !settle {
            // Taken back in part or whole: a reversal would take back twice.
            for sequence in self.history.entries_of(entry.id) {
                self.history.unmark(sequence, HistoryEntry::REVERSIBLE);
            }
        }
        self.forget_purchases(now);
        Ok(())
    }

    /// A purchase refunded or failed (in part or whole) cannot be reversed: its lifecycle
    /// takes back what it gave, once.
    pub(super) fn check_purchase_reversible(&self, original: TxId) -> Result<(), RejectCode> {
        match self.purchases.get(original) {
            Some(entry)
                if entry.refunded > 0
                    || !matches!(
                        entry.state,
                        LifecycleState::Pending | LifecycleState::Settled
                    ) =>
            {
                Err(RejectCode::TransactionNotReversible)
            }
            _ => Ok(()),
        }
    }

    /// A reversed purchase took back everything it gave: its lifecycle ends failed.
    pub(super) fn note_purchase_reversed(&mut self, original: TxId) {
        if let Some(entry) = self.purchases.get_mut(original) {
            let transition = entry.transition(LifecycleEvent::Fail, Basis::Spend);
            if let Ok(transition) = transition {
                entry.apply(&transition);
            }
        }
    }

    /// The postings of a pending credit's settlement or release: the points and cashback the
    /// purchase gave, each with `leg`.
    fn pending_credit_moves(
        &mut self,
        accounts: &ProgrammeAccounts,
        customer: u64,
        gave: Gave,
        leg: impl Fn(u64) -> Leg,
    ) -> Result<(), RejectCode> {
        let points = gave.earned + gave.bonus;
        let mut moves = Vec::with_capacity(2);
        if points > 0 {
            moves.push((
                AccountId::new(accounts.issuance, 0),
                AccountId::new(accounts.points, customer),
                accounts.points,
                points,
            ));
        }
        if let Some((class, funding)) = accounts.cashback.filter(|_| gave.cashback > 0) {
            moves.push((
                AccountId::new(funding, 0),
                AccountId::new(class, customer),
                class,
                gave.cashback,
            ));
        }
        let count = moves.len();
        for (index, (debit, credit, class, amount)) in moves.into_iter().enumerate() {
            let asset = self.class_asset(class)?;
            self.move_value(
                debit,
                credit,
                asset,
                leg(amount),
                PostingContext::of(index, count, false),
            )?;
        }
        Ok(())
    }

    /// The postings of a refund or failure of posted points: what the member's lots and
    /// cashback can give goes back to issuance and funding; the rest is owed on the clawback
    /// accounts.
    fn take_back_moves(
        &mut self,
        accounts: &ProgrammeAccounts,
        customer: u64,
        outcome: &TransitionOutcome,
    ) -> Result<(), RejectCode> {
        let points = outcome.earned + outcome.bonus;
        let issuance = AccountId::new(accounts.issuance, 0);
        let mut moves = Vec::with_capacity(4);
        let from_lots = points - outcome.points_owed;
        if from_lots > 0 {
            moves.push((
                AccountId::new(accounts.points, customer),
                issuance,
                accounts.points,
                from_lots,
            ));
        }
        if let Some(class) = accounts.clawback.filter(|_| outcome.points_owed > 0) {
            moves.push((
                AccountId::new(class, customer),
                issuance,
                accounts.points,
                outcome.points_owed,
            ));
        }
        if let Some((class, funding)) = accounts.cashback {
            let funding = AccountId::new(funding, 0);
            let from_balance = outcome.cashback - outcome.cashback_owed;
            if from_balance > 0 {
                moves.push((AccountId::new(class, customer), funding, class, from_balance));
            }
            if let Some(owed) = accounts.cashback_clawback.filter(|_| outcome.cashback_owed > 0) {
                moves.push((AccountId::new(owed, customer), funding, class, outcome.cashback_owed));
            }
        }
        let count = moves.len();
        for (index, (debit, credit, class, amount)) in moves.into_iter().enumerate() {
            let asset = self.class_asset(class)?;
            let leg = Leg::Post(u128::from(amount));
            self.move_value(debit, credit, asset, leg, PostingContext::of(index, count, false))?;
        }
        self.moved = points;
        Ok(())
    }

    fn class_asset(
        &self,
        class: super::account::ClassId,
    ) -> Result<super::account::AssetId, RejectCode> {
        self.registry.class(class).map(|class| class.asset).ok_or(RejectCode::ClassUnknown)
    }

    /// Opens the lots of a purchase whose held points are posted now: they expire as if
    /// credited on the purchase's day.
    fn open_purchase_lots(&mut self, entry: &Refundable, version: &RulesVersion) {
        let gave = entry.gave();
        for (kind, amount) in [(LotKind::Earned, gave.earned), (LotKind::Bonus, gave.bonus)] {
            if amount > 0 {
                let part = LotPart {
                    origin: entry.id,
                    kind,
                    expires_day: own_lot_day(entry, version, kind),
                    amount,
                };
                self.members.credit(entry.customer, part);
            }
        }
    }

    /// Up to `max` held purchases whose hold ends by `now`: the releases the shard writes next.
    pub fn purchases_due_release(&self, now: Timestamp, max: usize) -> Vec<TxId> {
        let today = day_index(now);
        self.purchases
            .held_iter()
            .take_while(|entry| self.release_day(entry).is_some_and(|day| day <= today))
            .take(max)
            .map(|entry| entry.id)
            .collect()
    }

    /// The day a held purchase's points stop being held: `pending_hold_days` (of the version
    /// that priced it) after its day.
    fn release_day(&self, entry: &Refundable) -> Option<u32> {
        let version = self.programme.version(u32::from(entry.version))?;
        match version.rules.purchases.pending {
            PendingPoints::Held { days } => Some(entry.day + u32::from(days)),
            PendingPoints::Available => None,
        }
    }

    /// Ends a pending purchase's hold on its points: they are posted and open their lots; the
    /// purchase stays pending.
    pub(super) fn apply_purchase_release(
        &mut self,
        release: &PurchaseRelease,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let entry = *self.purchases.get(release.purchase).ok_or(RejectCode::PurchaseNotFound)?;
        let due = self.release_day(&entry).is_some_and(|day| day <= day_index(now));
        if !entry.held() || entry.state != LifecycleState::Pending || !due {
            return Err(RejectCode::PurchaseNotFound);
        }
        let version = self.programme.version(u32::from(entry.version)).expect("checked").clone();
        let leg =
            |amount: u64| Leg::Capture { held: u128::from(amount), captured: u128::from(amount) };
        self.pending_credit_moves(&version.accounts, entry.customer, entry.gave(), leg)?;
        self.moved = entry.gave().earned + entry.gave().bonus;
        self.open_purchase_lots(&entry, &version);
        let stored = self.purchases.get_mut(entry.id).expect("found above");
        stored.flags &= !Refundable::HELD;
        Ok(())
    }

    /// The pending credits of the purchases whose points are held: (purchase, debit, credit,
    /// amount), points and cashback (`check_invariants`).
    pub(super) fn held_purchase_credits(
        &self,
    ) -> impl Iterator<Item = (TxId, AccountId, AccountId, u128)> + '_ {
        self.purchases.held_iter().flat_map(move |entry| {
            let accounts = self.programme.version(u32::from(entry.version)).map(|v| v.accounts);
            let gave = entry.gave();
            let points = accounts.filter(|_| gave.earned + gave.bonus > 0).map(|accounts| {
                (
                    entry.id,
                    AccountId::new(accounts.issuance, 0),
                    AccountId::new(accounts.points, entry.customer),
                    u128::from(gave.earned + gave.bonus),
                )
            });
            let cashback = accounts
                .and_then(|accounts| accounts.cashback)
                .filter(|_| gave.cashback > 0)
                .map(|(class, funding)| {
                    (
                        entry.id,
                        AccountId::new(funding, 0),
                        AccountId::new(class, entry.customer),
                        u128::from(gave.cashback),
                    )
                });
            points.into_iter().chain(cashback)
        })
    }

    /// A release record for `purchase`, stamped by the shard.
    pub fn release_body(&self, purchase: TxId, now: Timestamp) -> PurchaseRelease {
        PurchaseRelease { id: self.peek_tx_id(now), purchase }
    }
}

/// The expiry day of the lot of `kind` a purchase credited (or credits, once its held points
/// are posted): its day plus the lot life of the version that priced it.
fn own_lot_day(entry: &Refundable, version: &RulesVersion, kind: LotKind) -> u32 {
    let expiry = version.rules.expiry;
    let months = match kind {
        LotKind::Earned => expiry.earned_months,
        LotKind::Bonus => expiry.bonus_months,
        LotKind::Transfer => expiry.transfer_months,
    };
    day_index(expiry_after(start_of_day(entry.day), u32::from(months)))
}
