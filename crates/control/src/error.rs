//! [`StoreError`]: what the control-plane store reports, in the bus's `{ kind, detail, source }` shape so the
//! API maps a small `Copy` [`StoreErrorKind`] to a status code while the source chain keeps the detail for logs.

use std::error::Error as StdError;

use crate::validate::ValidationError;

/// What went wrong, coarse enough to branch on (and to map to an HTTP status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No such tenant, key or subscription — or it belongs to another tenant.
    NotFound,
    /// The document changed since it was read (compare-and-set failed, or an `If-Match` revision is stale).
    Conflict,
    /// The input is invalid ([`StoreError::validation`] says how).
    Invalid,
    /// A per-tenant quota would be exceeded.
    Quota,
    /// The document is larger than the server accepts.
    TooLarge,
    /// A stored document cannot be decoded (our own data is corrupt).
    Corrupt,
    /// NATS failed or could not be reached (retryable).
    Unavailable,
}

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// An error of the control-plane store.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
    validation: Option<ValidationError>,
    #[source]
    source: Option<Source>,
}

impl StoreError {
    /// An error without a cause.
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            validation: None,
            source: None,
        }
    }

    /// An error wrapping `source`.
    pub fn with_source(
        kind: StoreErrorKind,
        detail: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            detail: detail.into(),
            validation: None,
            source: Some(source.into()),
        }
    }

    /// `what` does not exist (for this tenant).
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StoreErrorKind::NotFound, format!("{what} not found"))
    }

    /// The kind, for branching.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The validation problem of an [`StoreErrorKind::Invalid`] or [`StoreErrorKind::Quota`] error.
    pub fn validation(&self) -> Option<&ValidationError> {
        self.validation.as_ref()
    }
}

impl From<ValidationError> for StoreError {
    fn from(v: ValidationError) -> Self {
        let kind = if v.code == crate::validate::ValidationCode::QuotaExceeded {
            StoreErrorKind::Quota
        } else {
            StoreErrorKind::Invalid
        };
        Self {
            kind,
            detail: v.to_string(),
            validation: Some(v),
            source: None,
        }
    }
}

impl From<fpaas_bus::BusError> for StoreError {
    fn from(e: fpaas_bus::BusError) -> Self {
        Self::with_source(StoreErrorKind::Unavailable, "NATS request failed", e)
    }
}
