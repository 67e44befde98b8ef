//! `RejectCode`: every reason the engine refuses a request, as stable numbers.
//!
//! The numbers are part of the POS protocol, the admin API's JSON `code` and the metrics
//! labels, so they never change and are never reused; new codes are added at the end. Within
//! each group of checks (shape, idempotency, state) the numbers follow precedence: when a
//! request is wrong in several ways, the check that comes first decides the code (the way
//! TigerBeetle orders `CreateTransferResult`). A rejected request changes nothing.

use std::fmt;

macro_rules! reject_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal, $text:literal;)*) => {
        /// Why a request was refused. A refused request changed no balance and wrote nothing.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum RejectCode {
            $($(#[doc = $doc])* $name = $value,)*
        }

        impl RejectCode {
            /// Every code, in precedence order.
            pub const ALL: &'static [RejectCode] = &[$(RejectCode::$name,)*];

            /// The stable wire number.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The code for a wire number, if it names one.
            pub fn from_code(code: u16) -> Option<RejectCode> {
                match code {
                    $($value => Some(RejectCode::$name),)*
                    _ => None,
                }
            }

            /// A stable snake_case name, used as the JSON `code` and the metrics label.
            pub fn name(self) -> &'static str {
                match self {
                    $(RejectCode::$name => $text,)*
                }
            }
        }
    };
}

reject_codes! {
    /// A write carried no idempotency key.
    IdempotencyKeyMissing = 1, "idempotency_key_missing";
    /// A transaction had no postings.
    PostingsEmpty = 2, "postings_empty";
    /// A transaction had more postings than `transaction_postings_max`.
    PostingsTooMany = 3, "postings_too_many";
    /// An amount was zero (only an undecoded request can carry one).
    AmountZero = 4, "amount_zero";
    /// A receipt reference was longer than `RECEIPT_BYTES_MAX` bytes.
    ReceiptTooLong = 5, "receipt_too_long";
    /// A posting debits and credits the same account.
    AccountsSame = 6, "accounts_same";
    /// An account names a class (kind, house or partner name) that is not defined.
    ClassUnknown = 7, "class_unknown";
    /// A posting names an asset that is not defined.
    AssetUnknown = 8, "asset_unknown";
    /// A posting's asset differs from the asset of one of its accounts.
    AssetMismatch = 9, "asset_mismatch";
    /// An account of the wrong namespace for this operation (e.g. a transfer to a house account).
    AccountKindInvalid = 10, "account_kind_invalid";
    /// The customer accounts of one transaction live on different shards; use a transfer.
    AccountsOnDifferentShards = 11, "accounts_on_different_shards";
    /// A hold timeout was zero or longer than the engine allows.
    HoldTimeoutInvalid = 12, "hold_timeout_invalid";
    /// The idempotency key was already used for a different request.
    IdempotencyConflict = 13, "idempotency_conflict";
    /// The account does not exist (it was never credited).
    AccountNotFound = 14, "account_not_found";
    /// The debit would take a no-overdraft account below zero, counting holds.
    InsufficientFunds = 15, "insufficient_funds";
    /// The credit would take an account flagged credits-must-not-exceed-debits above zero.
    CreditLimitExceeded = 16, "credit_limit_exceeded";
    /// A balance counter would overflow, or a live posting would take a customer's posted
    /// balance above `CUSTOMER_BALANCE_MAX`.
    Overflow = 17, "overflow";
    /// No hold with this id exists on this shard.
    HoldNotFound = 18, "hold_not_found";
    /// The hold was already captured.
    HoldAlreadyCaptured = 19, "hold_already_captured";
    /// The hold was already voided.
    HoldAlreadyVoided = 20, "hold_already_voided";
    /// The hold reached its timeout.
    HoldExpired = 21, "hold_expired";
    /// A capture asked for more than the hold reserves.
    CaptureExceedsHold = 22, "capture_exceeds_hold";
    /// The shard holds `holds_open_max` open holds.
    HoldsFull = 23, "holds_full";
    /// The shard has `transfers_in_flight_max` cross-shard transfers in flight.
    TransfersFull = 24, "transfers_full";
    /// A definition conflicts with an existing one (same name, different asset or flags).
    DefinitionConflict = 25, "definition_conflict";
    /// The shard's inbox is full; retry later with the same idempotency key.
    Busy = 26, "busy";
    /// The engine is shutting down and takes no new requests. A cross-shard transfer still
    /// waiting for its destination at that moment is committed on its source and completes
    /// after restart: retry it with the same idempotency key to learn its outcome.
    ShuttingDown = 27, "shutting_down";
    /// The shard stopped after a write or fsync error. The outcome of writes in flight at that
    /// moment is unknown until restart: retry them with the same idempotency key.
    ShardFailed = 28, "shard_failed";
    /// No transaction with this id is in the shard's recent history (it never existed, or it
    /// is older than the history keeps).
    TransactionNotFound = 29, "transaction_not_found";
    /// The transaction cannot be reversed: not a plain transaction, or one with postings
    /// that touch no customer account.
    TransactionNotReversible = 30, "transaction_not_reversible";
    /// The transaction was reversed already.
    AlreadyReversed = 31, "already_reversed";
    /// The destination of a cross-shard transfer refused the credit (its class's credit limit,
    /// or an overflow): the points went back to the source, and nothing moved. A retry with
    /// the same key gets this answer again.
    TransferRefunded = 32, "transfer_refunded";
    /// The key index block that would hold this write's key, forgotten by the shard's table in
    /// memory, cannot be read or fails its checksum: whether the key was used cannot be told,
    /// and the write is refused rather than risk posting it twice. Nothing changed; a restart
    /// rebuilds the index from the WAL (docs/key-index-format.md).
    IdempotencyUnverifiable = 33, "idempotency_unverifiable";
    /// A purchase's basket had no line, or more than 32.
    BasketInvalid = 34, "basket_invalid";
    /// A line of a purchase's basket had an amount of 0.
    LineAmountZero = 35, "line_amount_zero";
    /// No version of the loyalty programme's rules is in force at the purchase's time (none
    /// was recorded, or the first takes effect later).
    RulesNotInForce = 36, "rules_not_in_force";
    /// No purchase with this id, or with this store and receipt for this member, is kept by
    /// its shard: it never existed, or it is older than the refund window.
    PurchaseNotFound = 37, "purchase_not_found";
    /// The purchase is older than the refund window (`refund_days`): it can no longer be
    /// settled, failed or refunded; an operator makes a manual adjustment instead.
    PurchaseNotRefundable = 38, "purchase_not_refundable";
    /// A refund of a purchase whose payment is not confirmed: settle it first, or fail it.
    PurchaseNotSettled = 39, "purchase_not_settled";
    /// The purchase is settled already (or refunded since).
    PurchaseAlreadySettled = 40, "purchase_already_settled";
    /// The purchase failed: nothing more can happen to it.
    PurchaseFailed = 41, "purchase_failed";
    /// Failing a purchase refunded whole: nothing is left to take back.
    PurchaseAlreadyRefunded = 42, "purchase_already_refunded";
    /// A refund above what is left of the purchase.
    RefundExceedsPurchase = 43, "refund_exceeds_purchase";
    /// A refund of nothing: an amount of 0, or lines that earned nothing.
    RefundZero = 44, "refund_zero";
    /// A refund by lines of a purchase refunded by amount before, or the other way round.
    RefundBasisMismatch = 45, "refund_basis_mismatch";
    /// The member spent points (or cashback) the refund must take back, and the programme's
    /// rule version names no clawback class to record what they owe.
    ClawbackUnavailable = 46, "clawback_unavailable";
    /// No exchange rate from the conversion's asset to the other is in force at its time.
    RateMissing = 47, "rate_missing";
    /// A conversion (or a rate) from an asset to itself.
    ExchangeSameAsset = 48, "exchange_same_asset";
    /// The amount converts to no point at the rate in force: nothing is taken for nothing.
    ConversionTooSmall = 49, "conversion_too_small";
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_unique_and_round_trip() {
        for (index, code) in RejectCode::ALL.iter().enumerate() {
            // Dense from 1, in precedence order: no gaps, no duplicates.
            assert_eq!(usize::from(code.code()), index + 1, "{code:?}");
            assert_eq!(RejectCode::from_code(code.code()), Some(*code));
        }
        assert_eq!(RejectCode::from_code(0), None);
        let next = u16::try_from(RejectCode::ALL.len() + 1).unwrap();
        assert_eq!(RejectCode::from_code(next), None);
        let mut names: Vec<&str> = RejectCode::ALL.iter().map(|code| code.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RejectCode::ALL.len());
    }
}
