//! The admin API's errors: every 4xx and 5xx answer is a JSON body `{code, message}`, the
//! `code` stable and snake_case (the engine's reject codes keep their own names); a 5xx also
//! carries a `correlation_id` that the log line of the failure repeats.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger_engine::RejectCode;
use serde::Serialize;

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for programs: `unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `unsupported_media_type`, `payload_too_large`, `timeout`, `not_ready`, `internal`, or
    /// one of the engine's reject codes (`insufficient_funds` …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// For a server error: the id its log line carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Its HTTP status.
    pub status: StatusCode,
    /// Its body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                correlation_id: None,
            },
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `not_ready`: the engine is still recovering.
    pub fn not_ready() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "ledgerd is recovering")
    }

    /// A 500 with a fresh correlation id, logged with `what` (which the answer does not show).
    pub fn internal(what: impl std::fmt::Display) -> ApiError {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!("{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        tracing::error!(correlation_id = %id, error = %what, "admin API server error");
        let mut error =
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error");
        error.body.correlation_id = Some(id);
        error
    }

    /// The answer for an engine refusal: its code, with the HTTP status that fits it.
    pub fn rejected(code: RejectCode) -> ApiError {
        let status = match code {
            RejectCode::AccountNotFound
            | RejectCode::HoldNotFound
            | RejectCode::TransactionNotFound
            | RejectCode::PurchaseNotFound => StatusCode::NOT_FOUND,
            RejectCode::IdempotencyConflict => StatusCode::CONFLICT,
            RejectCode::Busy | RejectCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            RejectCode::ShardFailed | RejectCode::IdempotencyUnverifiable => {
                return ApiError::internal(format!("the engine answered {code}"));
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, code.name(), format!("refused by the ledger: {code}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
