//! The programme's liability and breakage figures, kept as records apply (never by scanning on
//! demand): what customers hold per customer class, the points issued, redeemed, expired and
//! refunded per UTC day, and, from those, the breakage rate over a window. Each shard keeps its
//! own; the engine adds them up. Docs: docs/loyalty.md, "Liability and breakage".

use std::collections::BTreeMap;

/// Days of flows a shard keeps: a year and a month, for yearly breakage windows.
pub const FLOW_DAYS_MAX: usize = 400;

/// What moved the programme's points in one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayFlows {
    /// Points credited to members from issuance (purchases, earns, released held points) or
    /// from a partner exchange fund (conversions into the programme's points).
    pub issued: u64,
    /// Points members spent (to any house account but issuance and breakage, or to a
    /// partner exchange fund).
    pub redeemed: u64,
    /// Points that expired into breakage.
    pub expired: u64,
    /// Points taken back to issuance (refunds, failures, reversals of earns).
    pub refunded: u64,
}

impl DayFlows {
    fn add(&mut self, other: &DayFlows) {
        self.issued = self.issued.saturating_add(other.issued);
        self.redeemed = self.redeemed.saturating_add(other.redeemed);
        self.expired = self.expired.saturating_add(other.expired);
        self.refunded = self.refunded.saturating_add(other.refunded);
    }
}

/// Which flow a posting of points is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Issuance → member.
    Issued,
    /// Member → a house account other than issuance and breakage.
    Redeemed,
    /// Member → breakage.
    Expired,
    /// Member → issuance.
    Refunded,
}

impl Flow {
    /// `issued`, `redeemed`, `expired` or `refunded`: its name in reports and the replica.
    pub fn name(self) -> &'static str {
        match self {
            Flow::Issued => "issued",
            Flow::Redeemed => "redeemed",
            Flow::Expired => "expired",
            Flow::Refunded => "refunded",
        }
    }
}

/// Flows by UTC day (days since 1970-01-01), the newest `FLOW_DAYS_MAX` days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flows {
    days: BTreeMap<u32, DayFlows>,
}

impl Flows {
    /// Adds `amount` of `flow` on `day`, forgetting the days that fall out of the window.
    pub fn add(&mut self, day: u32, flow: Flow, amount: u64) {
        let entry = self.days.entry(day).or_default();
        let counter = match flow {
            Flow::Issued => &mut entry.issued,
            Flow::Redeemed => &mut entry.redeemed,
            Flow::Expired => &mut entry.expired,
            Flow::Refunded => &mut entry.refunded,
        };
        *counter = counter.saturating_add(amount);
        while self.days.len() > FLOW_DAYS_MAX {
            self.days.pop_first();
        }
    }

    /// Every day kept, oldest first.
    pub fn days(&self) -> impl Iterator<Item = (u32, DayFlows)> + '_ {
        self.days.iter().map(|(day, flows)| (*day, *flows))
    }

    /// Adds another shard's flows.
    pub fn merge(&mut self, other: &Flows) {
        for (day, flows) in other.days() {
            self.days.entry(day).or_default().add(&flows);
        }
    }

    /// Restores a day as a snapshot holds it.
    pub fn restore(&mut self, day: u32, flows: DayFlows) -> Result<(), &'static str> {
        if self.days.last_key_value().is_some_and(|(last, _)| *last >= day)
            || self.days.len() >= FLOW_DAYS_MAX
        {
            return Err("flow days out of order or too many");
        }
        self.days.insert(day, flows);
        Ok(())
    }

    /// The flows of days `first..=last` added up.
    pub fn total(&self, first: u32, last: u32) -> DayFlows {
        let mut total = DayFlows::default();
        for flows in self.days.range(first..=last).map(|(_, flows)| flows) {
            total.add(flows);
        }
        total
    }

    /// Days kept.
    pub fn len(&self) -> usize {
        self.days.len()
    }

    /// Whether no day is kept.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }
}

/// The breakage rate of `flows` over days `first..=last`: expired / issued, in millionths
/// (rounded down); `None` when nothing was issued.
pub fn breakage_ppm(flows: &Flows, first: u32, last: u32) -> Option<u64> {
    let total = flows.total(first, last);
    (total.issued > 0).then(|| {
        let rate = u128::from(total.expired) * 1_000_000 / u128::from(total.issued);
        u64::try_from(rate).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_add_up_by_day_and_keep_the_newest_days() {
        let mut flows = Flows::default();
        flows.add(10, Flow::Issued, 100);
        flows.add(10, Flow::Issued, 50);
        flows.add(11, Flow::Expired, 30);
        flows.add(11, Flow::Redeemed, 20);
        flows.add(12, Flow::Refunded, 5);
        let total = flows.total(10, 11);
        assert_eq!((total.issued, total.expired, total.redeemed, total.refunded), (150, 30, 20, 0));
        assert_eq!(breakage_ppm(&flows, 10, 12), Some(200_000));
        assert_eq!(breakage_ppm(&flows, 11, 12), None, "nothing issued");
        for day in 100..100 + FLOW_DAYS_MAX as u32 {
            flows.add(day, Flow::Issued, 1);
        }
        assert_eq!(flows.len(), FLOW_DAYS_MAX);
        assert_eq!(flows.days().next().map(|(day, _)| day), Some(100));
        let mut merged = Flows::default();
        merged.merge(&flows);
        merged.merge(&flows);
        assert_eq!(merged.total(0, u32::MAX).issued, 2 * FLOW_DAYS_MAX as u64);
    }

    #[test]
    fn restored_days_must_come_in_order() {
        let mut flows = Flows::default();
        flows.restore(5, DayFlows { issued: 1, ..DayFlows::default() }).unwrap();
        assert!(flows.restore(5, DayFlows::default()).is_err());
        assert!(flows.restore(4, DayFlows::default()).is_err());
        flows.restore(6, DayFlows::default()).unwrap();
        assert_eq!(flows.len(), 2);
    }
}
