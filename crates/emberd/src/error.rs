//! The API's one error shape: `{"code": "...", "message": "..."}` with an HTTP status. A
//! caller's mistake is a 4xx whose message names the field or id; 5xx is for host faults.
//! Conversions from the engine's sources (ember-core's `VmError`, ember-store's `StoreError`,
//! the pool's and the agent's errors) decide which is which, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ember_core::{VmError, error_chain};
use ember_pool::PoolError;
use ember_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable machine-readable code: `invalid_argument`, `not_found`, `conflict`,
    /// `unauthorized`, `permission_denied`, `method_not_allowed`, `payload_too_large`,
    /// `unsupported_media_type`, `unsupported`, `unavailable`, `timeout`, `guest_error`,
    /// `guest_unreachable`, `internal`.
    pub code: String,
    /// What was wrong, naming the field or id at fault.
    pub message: String,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body's `code`.
    pub code: &'static str,
    /// The body's `message`.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or a field is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 504: the guest did not finish in time (a command's time limit passed).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 413: the body is larger than the route accepts.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 422: well-formed, but asks for something ember does not do (yet).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unsupported", message)
    }

    /// 503: the host cannot serve it now (pool empty, shutting down); retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: a host fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The response body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, message = %self.message, "request refused");
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        let message = error_chain(&e);
        match e {
            VmError::NotFound { .. } => Self::not_found(message),
            VmError::AlreadyExists { .. } => Self::conflict(message),
            VmError::InvalidTransition { .. } | VmError::InvalidState { .. } => {
                Self::conflict(message)
            }
            VmError::InvalidSpec { .. } => Self::invalid(message),
            VmError::Unsupported { .. } => Self::unsupported(message),
            _ => Self::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = error_chain(&e);
        match e {
            StoreError::NotFound { .. } => Self::not_found(message),
            StoreError::AlreadyExists { .. }
            | StoreError::InUse { .. }
            | StoreError::Stale { .. } => Self::conflict(message),
            StoreError::InvalidField { .. } | StoreError::UnknownReference { .. } => {
                Self::invalid(message)
            }
            StoreError::Busy { .. } | StoreError::Exhausted { .. } => Self::unavailable(message),
            _ => Self::internal(message),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let message = error_chain(&e);
        match e {
            PoolError::Empty { .. } | PoolError::ShutDown => Self::unavailable(message),
            PoolError::InvalidTenant(v) => Self::from(v),
            PoolError::UnknownStack { .. } => Self::not_found(message),
            PoolError::InvalidConfig { .. } | PoolError::InvalidTemplate { .. } => {
                Self::invalid(message)
            }
            _ => Self::internal(message),
        }
    }
}

/// The guest's own refusals keep their meaning (a missing file is a 404, a bad argument a
/// 400); a guest that does not answer is a 502 (the sandbox, not the host, failed).
impl From<ember_agent_proto::ClientError> for ApiError {
    fn from(e: ember_agent_proto::ClientError) -> Self {
        use ember_agent_proto::{ClientError as C, ErrorCode};
        let message = format!("the guest agent: {}", error_chain(&e));
        match &e {
            C::Agent { code, .. } => match *code {
                ErrorCode::NOT_FOUND => Self::not_found(message),
                ErrorCode::INVALID_ARGUMENT | ErrorCode::MALFORMED => Self::invalid(message),
                ErrorCode::TOO_LARGE => Self::too_large(message),
                ErrorCode::PERMISSION_DENIED => {
                    Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
                }
                ErrorCode::BUSY => Self::unavailable(message),
                ErrorCode::TIMED_OUT => Self::timeout(message),
                ErrorCode::ALREADY_EXISTS | ErrorCode::NOT_EMPTY => Self::conflict(message),
                ErrorCode::NOT_A_DIRECTORY | ErrorCode::IS_A_DIRECTORY => Self::invalid(message),
                _ => Self::new(StatusCode::BAD_GATEWAY, "guest_error", message),
            },
            C::Unsupported { .. } => Self::unsupported(message),
            C::FileTooLarge { .. } | C::TooManyEntries { .. } => Self::too_large(message),
            C::Encode { .. } => Self::invalid(message),
            _ if e.is_timeout() => Self::timeout(message),
            _ => Self::new(StatusCode::BAD_GATEWAY, "guest_unreachable", message),
        }
    }
}

impl From<ember_host::agent::AgentError> for ApiError {
    fn from(e: ember_host::agent::AgentError) -> Self {
        match e {
            ember_host::agent::AgentError::Client(c) => Self::from(c),
            other => Self::new(
                StatusCode::BAD_GATEWAY,
                "guest_unreachable",
                format!("the guest agent: {}", error_chain(&other)),
            ),
        }
    }
}

/// A task that should not fail did (a panic in a blocking section): a host fault.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("a worker task failed: {e}"))
    }
}
