//! What the load generator sends: an operation mix, customers drawn from a Zipf distribution,
//! and amounts shaped like a till's.
//!
//! Customers are `1..=customers`. With skew `s` > 0, rank *k* is drawn with probability
//! ∝ 1/*k*^s, and ranks are scattered over the id space by a fixed permutation so that hot
//! customers do not all sit on one shard. Every write gets a fresh idempotency key: the run's
//! random 64-bit prefix and a counter.

use std::fmt;
use std::str::FromStr;

use ledger_protocol::Receipt;
use ledger_protocol::ops::{Basket, BasketLine, Op, WriteMeta};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The kinds of operation a mix can contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Earn points.
    Purchase,
    /// A purchase of a basket of 1..=8 lines (`purchase_basket`), over the categories of the
    /// documented example rules (docs/loyalty.md), at one of ten stores.
    Basket,
    /// Spend points.
    Redeem,
    /// Read a balance.
    Balance,
    /// Authorize a hold, then capture (half the time, in part or whole) or void it.
    Hold,
    /// Move points between two customers.
    Transfer,
    /// Read recent history.
    History,
    /// A ping: answered by the server's network thread without the ledger (measures the
    /// protocol and the machine alone).
    Ping,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Purchase,
        Kind::Basket,
        Kind::Redeem,
        Kind::Balance,
        Kind::Hold,
        Kind::Transfer,
        Kind::History,
        Kind::Ping,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Basket => "basket",
            Kind::Redeem => "redeem",
            Kind::Balance => "balance",
            Kind::Hold => "hold",
            Kind::Transfer => "transfer",
            Kind::History => "history",
            Kind::Ping => "ping",
        }
    }
}

/// An operation mix: weights per kind, summing to 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Kind, u32)>,
}

impl Default for Mix {
    /// 70% purchase, 15% redeem, 10% balance, 5% hold → capture/void.
    fn default() -> Mix {
        Mix {
            weights: vec![
                (Kind::Purchase, 70),
                (Kind::Redeem, 15),
                (Kind::Balance, 10),
                (Kind::Hold, 5),
            ],
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `purchase=70,redeem=15,balance=10,hold=5`; weights are percentages summing to 100.
    /// `loyalty` is `Mix::loyalty()`.
    fn from_str(text: &str) -> Result<Mix, String> {
        if text.trim() == "loyalty" {
            return Ok(Mix::loyalty());
        }
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected kind=percent"))?;
            let kind =
                Kind::ALL.into_iter().find(|kind| kind.name() == name.trim()).ok_or_else(|| {
                    format!(
                        "unknown operation {name:?} (known: purchase, basket, redeem, balance, \
                         hold, transfer, history, ping; or the preset `loyalty`)"
                    )
                })?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("{part:?}: bad percentage"))?;
            if weights.iter().any(|(seen, _)| *seen == kind) {
                return Err(format!("{name} is listed twice"));
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        if total != 100 {
            return Err(format!("the percentages add up to {total}, not 100"));
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            self.weights.iter().map(|(kind, w)| format!("{}={w}", kind.name())).collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    /// The loyalty mix: 55% baskets of 1..=8 lines, 20% redemptions (of up to 200 points, so
    /// that they span lots: transfer lots expire first, then bonus, then earned), 10% holds →
    /// capture or void, 5% transfers (each opens a transfer lot), 10% balances.
    pub fn loyalty() -> Mix {
        Mix {
            weights: vec![
                (Kind::Basket, 55),
                (Kind::Redeem, 20),
                (Kind::Hold, 10),
                (Kind::Transfer, 5),
                (Kind::Balance, 10),
            ],
        }
    }

    /// Whether the mix buys baskets (then redemptions ask for more points, to span lots).
    fn has(&self, kind: Kind) -> bool {
        self.weights.iter().any(|(seen, _)| *seen == kind)
    }

    fn pick(&self, roll: u32) -> Kind {
        let mut left = roll;
        for (kind, weight) in &self.weights {
            if left < *weight {
                return *kind;
            }
            left -= weight;
        }
        self.weights.last().map_or(Kind::Balance, |(kind, _)| *kind)
    }
}

/// What the driver needs to remember about an operation it sent: enough to log its effect on
/// balances when it is acknowledged, and to follow a hold up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The operation.
    pub op: Op,
}

impl Sent {
    /// Points the operation moves into (+) or out of (−) each customer once acknowledged:
    /// `(customer, delta)` pairs. A purchase's points come from the answer.
    pub fn deltas(&self, answered_points: u64) -> [(u64, i128); 2] {
        let none = (0, 0);
        match self.op {
            Op::Purchase { customer, .. } | Op::PurchaseBasket { customer, .. } => {
                [(customer, i128::from(answered_points)), none]
            }
            Op::Redeem { customer, points, .. } => [(customer, -i128::from(points)), none],
            Op::Transfer { source, destination, points, .. } => {
                [(source, -i128::from(points)), (destination, i128::from(points))]
            }
            // Captures always name their points; the hold's customer is remembered by the
            // driver (`FollowUp`).
            _ => [none, none],
        }
    }
}

/// Draws operations.
pub struct Workload {
    mix: Mix,
    customers: u64,
    zipf: Option<Zipf<f64>>,
    rng: SmallRng,
    key_prefix: u128,
    key_counter: u64,
}

impl Workload {
    /// A workload over customers `1..=customers`; `skew` 0 is uniform.
    pub fn new(mix: Mix, customers: u64, skew: f64, seed: u64, key_prefix: u64) -> Workload {
        assert!(customers > 0, "validated by the caller");
        let zipf = (skew > 0.0).then(|| {
            // Customer counts are at most 2^53 (validated), so this is exact.
            #[expect(clippy::cast_precision_loss, reason = "bounded to 2^53 by the caller")]
            let n = customers as f64;
            Zipf::new(n, skew).expect("n ≥ 1 and s > 0 make a valid Zipf")
        });
        Workload {
            mix,
            customers,
            zipf,
            rng: SmallRng::seed_from_u64(seed),
            key_prefix: u128::from(key_prefix) << 64,
            key_counter: 0,
        }
    }

    /// A fresh idempotency key.
    pub fn key(&mut self) -> u128 {
        self.key_counter += 1;
        self.key_prefix | u128::from(self.key_counter)
    }

    fn meta(&mut self) -> WriteMeta {
        WriteMeta {
            key: self.key(),
            // Baskets at ten stores (the example rules' flagship is store 7).
            store: if self.mix.has(Kind::Basket) {
                self.rng.random_range(1..=10)
            } else {
                self.rng.random_range(1..=500)
            },
            category: self.rng.random_range(1..=40),
            receipt: Receipt::default(),
        }
    }

    /// A customer id.
    pub fn customer(&mut self) -> u64 {
        let rank = match &self.zipf {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a rank in 1..=n"
            )]
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.customers),
            None => self.rng.random_range(1..=self.customers),
        };
        scatter(rank, self.customers)
    }

    /// The next operation of the mix.
    pub fn next_op(&mut self) -> Sent {
        let kind = self.mix.pick(self.rng.random_range(0..100));
        let customer = self.customer();
        let op = match kind {
            Kind::Purchase => {
                let meta = self.meta();
                Op::Purchase { meta, customer, amount: self.rng.random_range(100..=20_000) }
            }
            Kind::Basket => {
                let meta = self.meta();
                Op::PurchaseBasket { meta, customer, basket: self.basket() }
            }
            Kind::Redeem => {
                let meta = self.meta();
                let most = if self.mix.has(Kind::Basket) { 200 } else { 50 };
                Op::Redeem { meta, customer, points: self.rng.random_range(1..=most) }
            }
            Kind::Balance => Op::Balance { customer },
            Kind::History => Op::History { customer, limit: 10 },
            Kind::Ping => Op::Ping,
            Kind::Hold => {
                let meta = self.meta();
                let points = self.rng.random_range(1..=50);
                Op::Hold { meta, customer, points, timeout_ms: 30_000 }
            }
            Kind::Transfer => {
                let meta = self.meta();
                let mut destination = self.customer();
                if destination == customer {
                    destination = customer % self.customers + 1;
                }
                let points = self.rng.random_range(1..=10);
                Op::Transfer { meta, source: customer, destination, points }
            }
        };
        Sent { op }
    }

    /// The follow-up of an authorized hold of `points`: a capture (whole or part) or a void.
    pub fn follow_up(&mut self, hold: u64, points: u64) -> Sent {
        let meta = self.meta();
        let op = if self.rng.random_bool(0.5) {
            let captured = self.rng.random_range(1..=points.max(1));
            Op::Capture { meta, hold, points: captured }
        } else {
            Op::Void { meta, hold }
        };
        Sent { op }
    }

    /// 1..=8 lines over the example rules' categories (none, groceries, electronics, beauty,
    /// and the excluded gift cards and tobacco), 1.00 to 50.00 each.
    fn basket(&mut self) -> Basket {
        const CATEGORIES: [u16; 6] = [0, 10, 20, 30, 40, 50];
        let mut lines = [BasketLine::default(); 8];
        let count = self.rng.random_range(1..=lines.len());
        for line in &mut lines[..count] {
            let category = CATEGORIES[self.rng.random_range(0..CATEGORIES.len())];
            *line = BasketLine {
                category,
                amount: self.rng.random_range(100..=5_000),
                excluded: category >= 40,
            };
        }
        Basket::new(&lines[..count]).expect("at most 8 lines")
    }

    /// A purchase of `amount` minor units for `customer` (preloading balances).
    pub fn purchase(&mut self, customer: u64, amount: u64) -> Sent {
        let meta = self.meta();
        Sent { op: Op::Purchase { meta, customer, amount } }
    }
}

/// Maps rank `1..=n` to a customer id in `1..=n`, one to one: rank × a large odd multiplier
/// modulo n would not be a bijection for every n, so the permutation is a multiplicative one
/// over the next power of two, walked until it lands in range (cycle walking).
fn scatter(rank: u64, n: u64) -> u64 {
    let size = n.next_power_of_two();
    let mask = size - 1;
    let mut value = rank - 1;
    loop {
        value = value.wrapping_mul(0x9E37_79B9_7F4A_7C15) & mask;
        value = (value ^ (value >> 7)) & mask;
        if value < n {
            return value + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix: Mix = "purchase=70,redeem=15,balance=10,hold=5".parse().unwrap();
        assert_eq!(mix, Mix::default());
        assert_eq!(mix.to_string(), "purchase=70,redeem=15,balance=10,hold=5");
        assert_eq!("transfer=100".parse::<Mix>().unwrap().to_string(), "transfer=100");
        assert!("purchase=50".parse::<Mix>().unwrap_err().contains("add up to 50"));
        assert!("buy=100".parse::<Mix>().unwrap_err().contains("unknown"));
        assert!("purchase=50,purchase=50".parse::<Mix>().unwrap_err().contains("twice"));
        assert!("purchase".parse::<Mix>().is_err());
    }

    #[test]
    fn the_loyalty_mix_buys_baskets_of_one_to_eight_lines() {
        assert_eq!("loyalty".parse::<Mix>().unwrap(), Mix::loyalty());
        let mut workload = Workload::new(Mix::loyalty(), 1000, 0.0, 7, 1);
        let mut sizes = std::collections::BTreeSet::new();
        let mut large_redemptions = 0;
        for _ in 0..10_000 {
            match workload.next_op().op {
                Op::PurchaseBasket { basket, meta, .. } => {
                    sizes.insert(basket.lines().len());
                    assert!((1..=10).contains(&meta.store));
                    for line in basket.lines() {
                        assert_eq!(line.excluded, line.category >= 40);
                    }
                }
                Op::Redeem { points, .. } if points > 50 => large_redemptions += 1,
                _ => {}
            }
        }
        assert_eq!(sizes, (1..=8).collect());
        assert!(large_redemptions > 0);
    }

    #[test]
    fn scatter_is_a_permutation() {
        for n in [1u64, 2, 3, 10, 1000, 1023, 1025] {
            let mut seen: Vec<u64> = (1..=n).map(|rank| scatter(rank, n)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn the_mix_and_the_skew_shape_the_draws() {
        let mut workload = Workload::new(Mix::default(), 1000, 1.2, 7, 1);
        let mut purchases = 0;
        let mut hottest = std::collections::HashMap::<u64, u32>::new();
        for _ in 0..10_000 {
            let sent = workload.next_op();
            if matches!(sent.op, Op::Purchase { .. }) {
                purchases += 1;
            }
            *hottest.entry(workload.customer()).or_default() += 1;
        }
        assert!((6_500..7_500).contains(&purchases), "{purchases}");
        // With s = 1.2 the hottest customer gets far more than the uniform 10 of 10,000.
        assert!(hottest.values().max().unwrap() > &1_000);
        // Keys never repeat.
        assert_ne!(workload.key(), workload.key());
    }
}
