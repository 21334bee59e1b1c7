//! [`ApiError`]: every error the API returns, as a status and the stable body
//! `{"error": "<code>", "message": "…"}` (validation errors add `field`, JMESPath errors `position`). 5xx
//! details are logged, never returned. The request-body extractor [`ApiJson`] lives here too, because its
//! rejections are errors of this shape: bad JSON and unknown fields are 400, an oversized body 413.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fpaas_control::{StoreError, StoreErrorKind, ValidationCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The stable error codes, with their status (the table in `docs/api.md`).
pub const ERROR_CODES: &[(&str, u16)] = &[
    ("bad_request", 400),
    ("unknown_field", 400),
    ("unauthorized", 401),
    ("forbidden", 403),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("conflict", 409),
    ("payload_too_large", 413),
    ("bad_jmespath", 422),
    ("bad_url", 422),
    ("url_not_allowed", 422),
    ("bad_filter", 422),
    ("limit_exceeded", 422),
    ("bad_value", 422),
    ("quota_exceeded", 429),
    ("internal", 500),
    ("delivery_failed", 502),
    ("unavailable", 503),
];

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message for people.
    pub message: String,
    /// The offending field, for validation errors.
    pub field: Option<String>,
    /// Position in a JMESPath expression.
    pub position: Option<usize>,
}

/// The error body.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// Stable code (`not_found`, `bad_jmespath`, …).
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// The offending field (validation errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Character offset in the JMESPath expression (`bad_jmespath`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            position: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500 `internal` (the cause is logged here, not returned).
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it was logged",
        )
    }

    /// 422 (or 429 for quotas) from a validation code.
    pub fn validation(v: &fpaas_control::ValidationError) -> Self {
        let status = match v.code {
            ValidationCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self {
            status,
            code: v.code.as_str(),
            message: v.to_string(),
            field: Some(v.field.clone()),
            position: v.position,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let Some(v) = e.validation() {
            return Self::validation(v);
        }
        match e.kind() {
            StoreErrorKind::NotFound => Self::not_found(e.detail()),
            StoreErrorKind::Conflict => Self::new(StatusCode::CONFLICT, "conflict", e.detail()),
            StoreErrorKind::Quota => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.detail())
            }
            StoreErrorKind::TooLarge => Self::too_large(e.detail()),
            StoreErrorKind::Invalid => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_value", e.detail())
            }
            StoreErrorKind::Unavailable => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "NATS unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the control plane store is unavailable; retry",
                )
            }
            _ => Self::internal(&e),
        }
    }
}

impl From<fpaas_bus::BusError> for ApiError {
    fn from(e: fpaas_bus::BusError) -> Self {
        StoreError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
            field: self.field,
            position: self.position,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON request body of `T`, whatever the content type says: syntax errors are 400 `bad_request`, unknown
/// fields 400 `unknown_field`, other shape errors (missing field, wrong type, unknown variant) 400
/// `bad_request`, and a body over the limit 413 `payload_too_large`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(format!(
                        "the body is larger than {} bytes",
                        crate::MAX_BODY_BYTES
                    ))
                } else {
                    ApiError::bad_request(rejection.body_text())
                }
            })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a request body (see [`ApiJson`]); an empty body reads as `{}`.
///
/// # Errors
/// 400 `bad_request` / `unknown_field`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("unknown field") {
            ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", message)
        } else {
            ApiError::bad_request(format!("invalid JSON body: {message}"))
        }
    })
}
