//! `Status`: the outcome code of every operation and every refused frame, as stable numbers.
//!
//! 0 is success. 1..=99 are the engine's refusals and carry exactly the numbers and names of
//! `ledger_engine::RejectCode` (the server's tests check that the two tables agree, since this
//! crate does not link the engine). 100 and up are the protocol's own: malformed input, limits,
//! authentication. Numbers never change and are never reused; docs/protocol.md lists them all.

use std::fmt;

macro_rules! statuses {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal, $text:literal;)*) => {
        /// The outcome of an operation, or why a whole frame was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum Status {
            $($(#[doc = $doc])* $name = $value,)*
        }

        impl Status {
            /// Every status, in number order.
            pub const ALL: &'static [Status] = &[$(Status::$name,)*];

            /// The wire number.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The status with this wire number, if it names one.
            pub fn from_code(code: u16) -> Option<Status> {
                match code {
                    $($value => Some(Status::$name),)*
                    _ => None,
                }
            }

            /// A stable snake_case name (metrics label, JSON, logs).
            pub fn name(self) -> &'static str {
                match self {
                    $(Status::$name => $text,)*
                }
            }
        }
    };
}

statuses! {
    /// The operation succeeded.
    Ok = 0, "ok";
    /// A write carried no idempotency key (a key of 0).
    IdempotencyKeyMissing = 1, "idempotency_key_missing";
    /// A transaction had no postings.
    PostingsEmpty = 2, "postings_empty";
    /// A transaction had too many postings.
    PostingsTooMany = 3, "postings_too_many";
    /// An amount was zero.
    AmountZero = 4, "amount_zero";
    /// A receipt reference was longer than 32 bytes.
    ReceiptTooLong = 5, "receipt_too_long";
    /// A posting debits and credits the same account (e.g. a transfer to oneself).
    AccountsSame = 6, "accounts_same";
    /// An account of an undefined class.
    ClassUnknown = 7, "class_unknown";
    /// An undefined asset.
    AssetUnknown = 8, "asset_unknown";
    /// A posting's asset differs from one of its accounts'.
    AssetMismatch = 9, "asset_mismatch";
    /// An account of the wrong kind for the operation.
    AccountKindInvalid = 10, "account_kind_invalid";
    /// Customer accounts of one transaction on different shards.
    AccountsOnDifferentShards = 11, "accounts_on_different_shards";
    /// A hold timeout of zero or beyond the maximum.
    HoldTimeoutInvalid = 12, "hold_timeout_invalid";
    /// The idempotency key was already used by this terminal for a different request.
    IdempotencyConflict = 13, "idempotency_conflict";
    /// The customer has no account yet (never credited).
    AccountNotFound = 14, "account_not_found";
    /// Not enough points, counting holds.
    InsufficientFunds = 15, "insufficient_funds";
    /// The credit would break a credit limit.
    CreditLimitExceeded = 16, "credit_limit_exceeded";
    /// A write would take a customer's balance above 2^63 − 1 points, a purchase would earn
    /// more than 2^64 − 1, or a counter would overflow.
    Overflow = 17, "overflow";
    /// No such hold.
    HoldNotFound = 18, "hold_not_found";
    /// The hold was captured already.
    HoldAlreadyCaptured = 19, "hold_already_captured";
    /// The hold was voided already.
    HoldAlreadyVoided = 20, "hold_already_voided";
    /// The hold expired.
    HoldExpired = 21, "hold_expired";
    /// A capture above the held amount.
    CaptureExceedsHold = 22, "capture_exceeds_hold";
    /// The shard holds its maximum of open holds.
    HoldsFull = 23, "holds_full";
    /// The shard has its maximum of cross-shard transfers in flight.
    TransfersFull = 24, "transfers_full";
    /// A definition clashes with an existing one.
    DefinitionConflict = 25, "definition_conflict";
    /// The shard is busy: retry later with the same idempotency key.
    Busy = 26, "busy";
    /// The server is shutting down. A cross-shard transfer answered so may have been
    /// committed and complete after the restart: retry it with the same key.
    ShuttingDown = 27, "shutting_down";
    /// The shard stopped after an I/O error; the outcome of writes in flight is unknown until
    /// restart: retry them with the same idempotency key.
    ShardFailed = 28, "shard_failed";
    /// The transaction to reverse is not in its shard's recent history.
    TransactionNotFound = 29, "transaction_not_found";
    /// The transaction cannot be reversed (not a plain purchase, redemption or transfer).
    TransactionNotReversible = 30, "transaction_not_reversible";
    /// The transaction was reversed already.
    AlreadyReversed = 31, "already_reversed";
    /// The destination customer could not be credited; the points went back to the source.
    TransferRefunded = 32, "transfer_refunded";
    /// The part of the key index that would hold the key cannot be read: whether the write was
    /// made before cannot be told, so it is refused; nothing changed. Retry later.
    IdempotencyUnverifiable = 33, "idempotency_unverifiable";
    /// A purchase's basket had no line, or more than 32.
    BasketInvalid = 34, "basket_invalid";
    /// A basket line of amount 0.
    LineAmountZero = 35, "line_amount_zero";
    /// No version of the programme's rules is in force: the server has no rules yet.
    RulesNotInForce = 36, "rules_not_in_force";
    /// No purchase with this id (or this store, receipt and member) is kept by its shard: it
    /// never existed, or it is older than the refund window.
    PurchaseNotFound = 37, "purchase_not_found";
    /// The purchase is older than the refund window: an operator makes a manual adjustment.
    PurchaseNotRefundable = 38, "purchase_not_refundable";
    /// A refund of a purchase whose payment is not confirmed: settle or fail it first.
    PurchaseNotSettled = 39, "purchase_not_settled";
    /// The purchase is settled already.
    PurchaseAlreadySettled = 40, "purchase_already_settled";
    /// The purchase failed: nothing more can happen to it.
    PurchaseFailed = 41, "purchase_failed";
    /// Failing a purchase refunded whole: nothing is left to take back.
    PurchaseAlreadyRefunded = 42, "purchase_already_refunded";
    /// A refund above what is left of the purchase.
    RefundExceedsPurchase = 43, "refund_exceeds_purchase";
    /// A refund of lines that earned nothing.
    RefundZero = 44, "refund_zero";
    /// A refund by lines of a purchase refunded by amount, or the other way round.
    RefundBasisMismatch = 45, "refund_basis_mismatch";
    /// Points or cashback to take back were spent, and the programme has no clawback class.
    ClawbackUnavailable = 46, "clawback_unavailable";
    /// No exchange rate from the conversion's asset to the other is in force at its time.
    RateMissing = 47, "rate_missing";
    /// A conversion (or a rate) from an asset to itself.
    ExchangeSameAsset = 48, "exchange_same_asset";
    /// The amount converts to no point at the rate in force: nothing is taken for nothing.
    ConversionTooSmall = 49, "conversion_too_small";
    /// An operation's (or a frame's) bytes do not decode.
    Malformed = 100, "malformed";
    /// An operation code the server does not know.
    UnknownOpcode = 101, "unknown_opcode";
    /// A request frame with no operations or more than the session's `batch_ops_max`.
    BatchTooLarge = 102, "batch_too_large";
    /// The connection has `in_flight_max` requests unanswered already.
    TooManyInFlight = 103, "too_many_in_flight";
    /// The terminal exceeded its rate of operations per second.
    RateLimited = 104, "rate_limited";
    /// A request before the handshake completed (the connection is closed).
    NotAuthenticated = 105, "not_authenticated";
    /// Unknown terminal or wrong MAC (the connection is closed).
    AuthFailed = 106, "auth_failed";
    /// A protocol version the server does not speak (the connection is closed).
    UnsupportedVersion = 107, "unsupported_version";
    /// A frame longer than the session's `frame_bytes_max` (the connection is closed).
    FrameTooLarge = 108, "frame_too_large";
    /// A frame type not allowed at this point, or a bad frame header (the connection is closed).
    UnexpectedFrame = 109, "unexpected_frame";
    /// The server failed in a way that is not the request's fault.
    InternalError = 110, "internal_error";
    /// A request whose id is the id of a request of the same connection still unanswered:
    /// refused whole (`Error` frame with that id); the earlier request is answered as usual.
    RequestIdInUse = 111, "request_id_in_use";
}

impl Status {
    /// Whether an error frame with this status always ends the connection (whatever its
    /// request id). Any error frame with request id 0 also ends it: `busy` when
    /// `connections_max` connections are open or `handshakes_max` are in the handshake,
    /// `internal_error` when the server cannot challenge.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::NotAuthenticated
                | Status::AuthFailed
                | Status::UnsupportedVersion
                | Status::FrameTooLarge
                | Status::UnexpectedFrame
        )
    }

    /// Whether the same request may succeed if retried later with the same idempotency key
    /// (nothing about the request itself is wrong; after `RequestIdInUse`, under an id that is
    /// not in flight).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Status::Busy
                | Status::ShuttingDown
                | Status::ShardFailed
                | Status::TooManyInFlight
                | Status::RateLimited
                | Status::InternalError
                | Status::RequestIdInUse
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_named_and_round_trip() {
        let mut names: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Status::ALL.len());
        for status in Status::ALL {
            assert_eq!(Status::from_code(status.code()), Some(*status));
        }
        // The engine range is dense from 1, as the engine's own table is.
        let engine: Vec<u16> =
            Status::ALL.iter().map(|s| s.code()).filter(|c| (1..100).contains(c)).collect();
        assert_eq!(engine, (1..=49).collect::<Vec<u16>>());
        assert_eq!(Status::from_code(99), None);
        assert_eq!(Status::from_code(u16::MAX), None);
    }
}
