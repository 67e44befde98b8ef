//! A purchase's lifecycle and the arithmetic of refunds: which transitions are legal, and what
//! share of a purchase's points and cashback a refund of part of it takes back.
//! Docs: docs/loyalty.md, "Purchase lifecycle and refunds".
//!
//! A purchase is recorded at the till as `Pending` (its `purchase` record is its creation);
//! the payment's outcome settles it or fails it; a settled purchase can be refunded in parts
//! until nothing is left. Refunds are shares of the purchase's spend, and each component is
//! taken back cumulatively: after refunds of `r` of a spend `s`, exactly
//! `⌊component × r / s⌋` has been taken back, so partial refunds that add up to the whole
//! purchase take back exactly what it gave, whatever their number and sizes, and each one is
//! rounded down by the same rule as the purchase.

/// Where a purchase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LifecycleState {
    /// Recorded at the till; its payment not yet confirmed.
    Pending = 1,
    /// Its payment confirmed.
    Settled = 2,
    /// Its payment failed or was charged back: everything it gave is taken back.
    Failed = 3,
    /// Settled, and refunded in part.
    PartlyRefunded = 4,
    /// Settled, and refunded whole.
    Refunded = 5,
}

impl LifecycleState {
    /// The state of a byte, if it names one.
    pub fn from_u8(byte: u8) -> Option<LifecycleState> {
        Some(match byte {
            1 => LifecycleState::Pending,
            2 => LifecycleState::Settled,
            3 => LifecycleState::Failed,
            4 => LifecycleState::PartlyRefunded,
            5 => LifecycleState::Refunded,
            _ => return None,
        })
    }

    /// Its name in documents and answers.
    pub fn name(self) -> &'static str {
        match self {
            LifecycleState::Pending => "pending",
            LifecycleState::Settled => "settled",
            LifecycleState::Failed => "failed",
            LifecycleState::PartlyRefunded => "partly_refunded",
            LifecycleState::Refunded => "refunded",
        }
    }

    /// Whether no transition leaves it.
    pub fn is_final(self) -> bool {
        matches!(self, LifecycleState::Failed | LifecycleState::Refunded)
    }
}

/// What happens to a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The payment is confirmed.
    Settle,
    /// The payment failed, or was charged back: what is left of the purchase is taken back.
    Fail,
    /// `amount` of the purchase's spend is refunded, `left` of it being refundable before.
    Refund {
        /// Minor units refunded now (at least 1).
        amount: u64,
        /// Minor units still refundable before this refund.
        left: u64,
    },
}

/// Why a transition is refused. Each one changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// Settling a purchase settled before (or refunded since).
    #[error("the purchase is settled already")]
    AlreadySettled,
    /// Settling, refunding or failing a failed purchase.
    #[error("the purchase failed")]
    PurchaseFailed,
    /// Refunding a purchase whose payment is not confirmed: settle it first, or fail it.
    #[error("the purchase is not settled")]
    NotSettled,
    /// Refunding more than is left of it, or anything of a refunded one.
    #[error("the refund exceeds what is left of the purchase")]
    RefundExceedsPurchase,
    /// A refund of nothing.
    #[error("a refund of nothing")]
    RefundZero,
    /// Failing a purchase refunded whole: nothing is left to take back.
    #[error("the purchase is refunded whole")]
    AlreadyRefunded,
    /// A refund by lines of a purchase refunded by amount before, or the other way round.
    #[error("the purchase was refunded by the other basis (amount or lines)")]
    RefundBasisMismatch,
}

impl LifecycleError {
    /// The engine's reject code for it.
    pub fn code(self) -> crate::reject::RejectCode {
        use crate::reject::RejectCode;
        match self {
            LifecycleError::AlreadySettled => RejectCode::PurchaseAlreadySettled,
            LifecycleError::PurchaseFailed => RejectCode::PurchaseFailed,
            LifecycleError::NotSettled => RejectCode::PurchaseNotSettled,
            LifecycleError::RefundExceedsPurchase => RejectCode::RefundExceedsPurchase,
            LifecycleError::RefundZero => RejectCode::RefundZero,
            LifecycleError::AlreadyRefunded => RejectCode::PurchaseAlreadyRefunded,
            LifecycleError::RefundBasisMismatch => RejectCode::RefundBasisMismatch,
        }
    }
}

/// The state after `event`, or why `event` cannot happen in `state`.
///
/// | from \ event | settle | fail | refund (part) | refund (the rest) |
/// |---|---|---|---|---|
/// | pending | settled | failed | not settled | not settled |
/// | settled | already settled | failed | partly refunded | refunded |
/// | partly refunded | already settled | failed | partly refunded | refunded |
/// | failed | purchase failed | purchase failed | purchase failed | purchase failed |
/// | refunded | already settled | already refunded | exceeds | exceeds |
pub fn next_state(
    state: LifecycleState,
    event: LifecycleEvent,
) -> Result<LifecycleState, LifecycleError> {
    use LifecycleError as E;
    use LifecycleState as S;
    match (state, event) {
        (S::Failed, _) => Err(E::PurchaseFailed),
        (S::Pending, LifecycleEvent::Settle) => Ok(S::Settled),
        (_, LifecycleEvent::Settle) => Err(E::AlreadySettled),
        (S::Refunded, LifecycleEvent::Fail) => Err(E::AlreadyRefunded),
        (_, LifecycleEvent::Fail) => Ok(S::Failed),
        (S::Pending, LifecycleEvent::Refund { .. }) => Err(E::NotSettled),
        (_, LifecycleEvent::Refund { amount: 0, .. }) => Err(E::RefundZero),
        (S::Refunded, LifecycleEvent::Refund { .. }) => Err(E::RefundExceedsPurchase),
        (_, LifecycleEvent::Refund { amount, left }) if amount > left => {
            Err(E::RefundExceedsPurchase)
        }
        (_, LifecycleEvent::Refund { amount, left }) if amount == left => Ok(S::Refunded),
        (_, LifecycleEvent::Refund { .. }) => Ok(S::PartlyRefunded),
    }
}

/// What a refund takes back of one component (points earned, bonus, cashback) of `total`,
/// when `before` of the purchase's `spend` was refunded earlier and `now` is refunded now:
/// `⌊total × (before + now) / spend⌋ − ⌊total × before / spend⌋`. Refunds adding up to `spend`
/// take back exactly `total`.
///
/// Panics if `before + now` exceeds `spend` (the caller checked the transition first).
pub fn refund_share(total: u64, spend: u64, before: u64, now: u64) -> u64 {
    let after = before.checked_add(now).filter(|after| *after <= spend);
    let after = after.expect("a refund never exceeds the purchase (checked by next_state)");
    if spend == 0 {
        return 0;
    }
    let taken = |refunded: u64| {
        let share = u128::from(total) * u128::from(refunded) / u128::from(spend);
        u64::try_from(share).expect("at most total")
    };
    taken(after) - taken(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    use LifecycleError as E;
    use LifecycleState as S;

    const ALL: [S; 5] = [S::Pending, S::Settled, S::Failed, S::PartlyRefunded, S::Refunded];

    #[test]
    fn every_transition_is_legal_or_a_typed_refusal() {
        let part = LifecycleEvent::Refund { amount: 3, left: 10 };
        let rest = LifecycleEvent::Refund { amount: 10, left: 10 };
        let over = LifecycleEvent::Refund { amount: 11, left: 10 };
        let zero = LifecycleEvent::Refund { amount: 0, left: 10 };
        let table: [(S, [Result<S, E>; 6]); 5] = [
            (
                S::Pending,
                [
                    Ok(S::Settled),
                    Ok(S::Failed),
                    Err(E::NotSettled),
                    Err(E::NotSettled),
                    Err(E::NotSettled),
                    Err(E::NotSettled),
                ],
            ),
            (
                S::Settled,
                [
                    Err(E::AlreadySettled),
                    Ok(S::Failed),
                    Ok(S::PartlyRefunded),
                    Ok(S::Refunded),
                    Err(E::RefundExceedsPurchase),
                    Err(E::RefundZero),
                ],
            ),
            (
                S::PartlyRefunded,
                [
                    Err(E::AlreadySettled),
                    Ok(S::Failed),
                    Ok(S::PartlyRefunded),
                    Ok(S::Refunded),
                    Err(E::RefundExceedsPurchase),
                    Err(E::RefundZero),
                ],
            ),
            (S::Failed, [Err(E::PurchaseFailed); 6]),
            (
                S::Refunded,
                [
                    Err(E::AlreadySettled),
                    Err(E::AlreadyRefunded),
                    Err(E::RefundExceedsPurchase),
                    Err(E::RefundExceedsPurchase),
                    Err(E::RefundExceedsPurchase),
                    Err(E::RefundZero),
                ],
            ),
        ];
        let events = [LifecycleEvent::Settle, LifecycleEvent::Fail, part, rest, over, zero];
        for (state, expected) in table {
            for (event, want) in events.iter().zip(expected) {
                assert_eq!(next_state(state, *event), want, "{state:?} on {event:?}");
            }
        }
        // No transition leaves a final state.
        for state in ALL.into_iter().filter(|s| s.is_final()) {
            for event in events {
                assert!(next_state(state, event).is_err(), "{state:?} on {event:?}");
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_byte() {
        for state in ALL {
            assert_eq!(LifecycleState::from_u8(state as u8), Some(state));
        }
        assert_eq!(LifecycleState::from_u8(0), None);
        assert_eq!(LifecycleState::from_u8(6), None);
    }

    #[test]
    fn a_refund_takes_back_its_share_rounded_down() {
        // 125 points for 10.00; a refund of 3.33 takes back ⌊125 × 333 / 1000⌋ = 41.
        assert_eq!(refund_share(125, 1_000, 0, 333), 41);
        // The next 3.33: ⌊125 × 666 / 1000⌋ − 41 = 83 − 41 = 42.
        assert_eq!(refund_share(125, 1_000, 333, 333), 42);
        // The rest: 125 − 83 = 42; the three add up to 125.
        assert_eq!(refund_share(125, 1_000, 666, 334), 42);
        // A whole refund at once takes back everything.
        assert_eq!(refund_share(125, 1_000, 0, 1_000), 125);
        // Extremes do not overflow.
        assert_eq!(refund_share(u64::MAX, u64::MAX, 0, u64::MAX), u64::MAX);
        assert_eq!(refund_share(u64::MAX, u64::MAX, 1, u64::MAX - 1), u64::MAX - 1);
        assert_eq!(refund_share(7, 0, 0, 0), 0, "a purchase of no spend has nothing to share");
    }

    #[test]
    #[should_panic(expected = "never exceeds")]
    fn a_share_beyond_the_purchase_is_a_bug() {
        refund_share(10, 100, 60, 41);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// However a purchase is cut into refunds, they take back exactly each component,
            /// and every refund's share is within one unit of its exact proportion.
            #[test]
            fn partial_refunds_add_up_to_the_purchase(
                total in 0u64..10_000_000,
                cuts in proptest::collection::vec(1u64..100_000, 1..20),
            ) {
                let spend: u64 = cuts.iter().sum();
                let mut before = 0;
                let mut taken = 0;
                for cut in cuts {
                    let share = refund_share(total, spend, before, cut);
                    let exact = u128::from(total) * u128::from(cut);
                    let low = exact / u128::from(spend);
                    prop_assert!(u128::from(share) + 1 >= low && u128::from(share) <= low + 1);
                    before += cut;
                    taken += share;
                }
                prop_assert_eq!(taken, total);
            }
        }
    }
}
