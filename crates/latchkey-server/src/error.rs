//! The one error type handlers return, and the one table that maps it to HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latchkey_store::StoreError;
use serde::Serialize;

/// Marks a response whose audit event the handler already wrote, so the audit
/// middleware does not write a second one.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

/// An error as the client sees it: a status, a stable code and a message.
///
/// Client mistakes keep their 4xx and their message; internal faults get a generic
/// message, and their detail is logged once where they happen.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// True when the handler already recorded this outcome in the audit log.
    pub audited: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            audited: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Returns the error for every failed authentication, so the client learns nothing about why.
    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing, invalid, expired or revoked token: sign in again or pass a valid token in `Authorization: Bearer`",
        )
    }

    pub fn permission_denied(principal: &str, action: &str, resource: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("permission denied: {principal} may not `{action}` {resource}"),
        )
    }

    pub fn sealed() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sealed",
            "the server is sealed: unseal it with `lk operator unseal`",
        )
    }

    pub fn storage_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the database is unreachable, so the request was refused; nothing was returned or changed. Retry when `lk status` is ok",
        )
    }

    pub fn audit_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written, so the request was refused; nothing was returned or changed",
        )
    }

    /// Logs an internal fault once and returns a generic 500; `detail` never reaches the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; the server log has the details",
        )
    }

    pub fn audited(mut self) -> ApiError {
        self.audited = true;
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Conflict(what) => ApiError::conflict(format!("{what} already exists")),
            StoreError::Concurrent(what) => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_update",
                format!("{what} changed while this request ran; retry"),
            ),
            StoreError::AlreadyInitialized => ApiError::new(
                StatusCode::CONFLICT,
                "already_initialized",
                "the server is already initialized",
            ),
            other if other.is_unavailable() => {
                tracing::error!(error = %other, "the database is unavailable");
                ApiError::storage_unavailable()
            }
            other => ApiError::internal(other),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code such as `permission_denied`.
    pub code: String,
    pub message: String,
    pub request_id: String,
}

tokio::task_local! {
    /// The id of the request being handled, set by the request-id middleware around the
    /// handler so that every error body can carry it.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                request_id: current_request_id(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if self.audited {
            response.extensions_mut().insert(Audited);
        }
        response
    }
}

/// The error code of an error response, for the audit middleware.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

pub type ApiResult<T> = Result<T, ApiError>;
