//! Who is calling: `Authorization: Bearer <token>`. The admin token (from the configuration) is compared by
//! SHA-256 in constant time; any other token is looked up by its SHA-256 in the tenants bucket and must
//! belong to an existing tenant. Admin routes refuse tenant keys (403), tenant routes refuse the admin token
//! (403: the admin acts on tenants, not as one), and a missing or unknown token is 401.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use fpaas_control::{ApiKeyRecord, Tenant};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// SHA-256 of `token`.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token.trim())
}

fn is_admin(state: &AppState, token: &str) -> bool {
    state
        .admin_token_sha256
        .is_some_and(|want| bool::from(sha256(token).ct_eq(&want)))
}

/// The caller is the admin.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if is_admin(state, token) {
            return Ok(Admin);
        }
        if state.store.authenticate(token).await?.is_some() {
            return Err(ApiError::forbidden("tenant keys cannot manage tenants"));
        }
        Err(ApiError::unauthorized("unknown token"))
    }
}

/// The caller is a tenant (through one of its API keys).
#[derive(Debug, Clone)]
pub struct TenantAuth {
    /// The tenant.
    pub tenant: Tenant,
    /// The key used.
    pub key: ApiKeyRecord,
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if let Some(key) = state.store.authenticate(token).await? {
            return match state.store.tenant(&key.tenant_id).await {
                Ok(tenant) => Ok(TenantAuth { tenant, key }),
                Err(e) if e.kind() == fpaas_control::StoreErrorKind::NotFound => {
                    Err(ApiError::unauthorized("the key's tenant no longer exists"))
                }
                Err(e) => Err(e.into()),
            };
        }
        if is_admin(state, token) {
            return Err(ApiError::forbidden(
                "the admin token manages tenants; use a tenant's API key here",
            ));
        }
        Err(ApiError::unauthorized("unknown token"))
    }
}
