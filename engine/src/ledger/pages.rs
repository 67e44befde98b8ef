//! Pages of a customer's recent history for the admin API: their accounts' chains in the
//! history ring merged newest first, filtered by time and kind, resumed below a ring sequence.
//!
//! Sequences only grow, so a page that starts below a sequence is the same page however many
//! writes came since: a cursor stays stable while writes continue. The walk is bounded
//! (`HISTORY_SCAN_MAX` entries a page), so one query never holds the shard for long; a page cut
//! short says where to resume. Docs: docs/admin-api.md, "History".

use super::Ledger;
use super::account::{AccountId, ClassId, Namespace};
use super::history::{HistoryEntry, NO_ENTRY};
use super::record::TxKind;
use crate::ids::{Timestamp, TxId};

/// Entries one page walks through at most, matching or not.
pub const HISTORY_SCAN_MAX: usize = 65_536;

/// A customer's most recent postings that `customer_activity` looks through.
pub const ACTIVITY_ENTRIES_MAX: usize = 1_024;

/// What a customer has going on, found among their most recent postings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerActivity {
    /// Their open holds, newest first.
    pub holds: Vec<(TxId, super::command::HoldView)>,
    /// Their purchases still in the refundable table, newest first.
    pub purchases: Vec<crate::loyalty::purchases::Refundable>,
}

/// Which entries a page keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryFilter {
    /// Only entries at or after this time.
    pub from: Option<Timestamp>,
    /// Only entries before this time.
    pub to: Option<Timestamp>,
    /// Only entries of this kind.
    pub kind: Option<TxKind>,
    /// Only entries of the customer's account of this class (all their accounts otherwise).
    pub class: Option<ClassId>,
}

impl HistoryFilter {
    fn keeps(&self, entry: &HistoryEntry) -> bool {
        self.from.is_none_or(|from| entry.timestamp >= from)
            && self.to.is_none_or(|to| entry.timestamp < to)
            && self.kind.is_none_or(|kind| entry.kind == kind)
    }
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The entries, each with its ring sequence.
    pub entries: Vec<(u64, HistoryEntry)>,
    /// Where the next page starts (entries below this sequence); `None`: nothing older is
    /// remembered.
    pub next_before: Option<u64>,
    /// Whether older entries existed that the ring no longer holds (they are in the WAL and,
    /// with replication, in PostgreSQL).
    pub truncated: bool,
}

impl Ledger {
    /// Up to `limit` entries of `customer`'s accounts (of `filter.class`, or all their customer
    /// classes) with sequences below `before`, newest first, that `filter` keeps.
    pub fn history_page(
        &self,
        customer: u64,
        before: Option<u64>,
        limit: usize,
        filter: &HistoryFilter,
    ) -> HistoryPage {
        let accounts: Vec<AccountId> = self
            .registry
            .classes()
            .iter()
            .filter(|class| class.namespace == Namespace::Customer)
            .filter(|class| filter.class.is_none_or(|wanted| wanted == class.id))
            .map(|class| AccountId::new(class.id, customer))
            .collect();
        let mut page = HistoryPage::default();
        let mut scanned = 0usize;
        // Each account's newest entry below `before`.
        let mut heads: Vec<u64> = Vec::with_capacity(accounts.len());
        for account in &accounts {
            let mut sequence = self.accounts.history_head(account);
            while let Some(below) = before
                && sequence != NO_ENTRY
                && sequence >= below
            {
                scanned += 1;
                sequence = match self.history.get(sequence) {
                    Some(entry) if entry.account == *account => entry.previous,
                    _ => {
                        page.truncated = true;
                        NO_ENTRY
                    }
                };
            }
            heads.push(sequence);
        }
        loop {
            let newest = heads
                .iter()
                .enumerate()
                .filter(|(_, sequence)| **sequence != NO_ENTRY)
                .max_by_key(|(_, sequence)| **sequence)
                .map(|(index, sequence)| (index, *sequence));
            let Some((index, sequence)) = newest else { break };
            let entry = match self.history.get(sequence) {
                Some(entry) if entry.account == accounts[index] => *entry,
                // The ring forgot it (and everything older of this account).
                _ => {
                    page.truncated = true;
                    heads[index] = NO_ENTRY;
                    continue;
                }
            };
            if page.entries.len() >= limit || scanned >= HISTORY_SCAN_MAX {
                page.next_before = Some(sequence + 1);
                break;
            }
            if filter.from.is_some_and(|from| entry.timestamp < from) {
                // Sequences and timestamps grow together: nothing older is in the range.
                break;
            }
            scanned += 1;
            heads[index] = entry.previous;
            if filter.keeps(&entry) {
                page.entries.push((sequence, entry));
            }
        }
        page
    }

    /// The open holds and refundable purchases among `customer`'s most recent
    /// `ACTIVITY_ENTRIES_MAX` postings (older ones are not looked for: the walk is bounded).
    pub fn customer_activity(&self, customer: u64) -> CustomerActivity {
        let page =
            self.history_page(customer, None, ACTIVITY_ENTRIES_MAX, &HistoryFilter::default());
        let mut activity = CustomerActivity::default();
        // A transaction's entries have consecutive sequences, so they come one after another in
        // the walk: comparing with the last one kept is enough to keep each once.
        for (_, entry) in &page.entries {
            let tx = entry.tx_id;
            if entry.has(HistoryEntry::HOLD)
                && activity.holds.last().is_none_or(|(id, _)| *id != tx)
                && let Some(view) = self.hold(tx)
            {
                activity.holds.push((tx, view));
            }
            if let Some(purchase) = self.purchases.get(tx)
                && purchase.customer == customer
                && activity.purchases.last().is_none_or(|p| p.id != tx)
            {
                activity.purchases.push(*purchase);
            }
        }
        activity
    }

    /// The history entries of transaction `tx` (its postings that touched customer accounts),
    /// while the ring remembers them.
    pub fn transaction_entries(&self, tx: TxId) -> Vec<HistoryEntry> {
        self.history
            .entries_of(tx)
            .filter_map(|sequence| self.history.get(sequence).copied())
            .collect()
    }
}
