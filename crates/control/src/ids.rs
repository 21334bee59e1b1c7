//! Identifiers and credentials. Ids are a prefix and 16 lowercase base32 characters (80 random bits):
//! tenants `t_`, subscriptions `s_`, API keys `k_`; they are valid KV key and NATS subject tokens. API
//! tokens are `fpk_` and 43 characters of URL-safe base64 (32 random bytes); only their SHA-256 (hex) is
//! stored. Webhook secrets are `whsec_` and standard base64 of 24 random bytes (Standard Webhooks).

use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of tenant ids.
pub const TENANT_PREFIX: &str = "t_";
/// Prefix of subscription ids.
pub const SUB_PREFIX: &str = "s_";
/// Prefix of API key ids.
pub const KEY_PREFIX: &str = "k_";
/// Prefix of API tokens.
pub const TOKEN_PREFIX: &str = "fpk_";
/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random_id(prefix: &str) -> String {
    let bytes: [u8; 10] = rand::random();
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    let mut out = String::with_capacity(prefix.len() + 16);
    out.push_str(prefix);
    for i in (0..16).rev() {
        out.push(char::from(BASE32[((bits >> (i * 5)) & 31) as usize]));
    }
    out
}

/// A new tenant id (`t_` + 16).
pub fn new_tenant_id() -> String {
    random_id(TENANT_PREFIX)
}

/// A new subscription id (`s_` + 16).
pub fn new_sub_id() -> String {
    random_id(SUB_PREFIX)
}

/// A new API key id (`k_` + 16).
pub fn new_key_id() -> String {
    random_id(KEY_PREFIX)
}

/// Whether `id` has `prefix` followed by 16 lowercase base32 characters (checked before an id from a URL
/// is used in a key).
pub fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| BASE32.contains(&b)))
}

/// A new API token (`fpk_` + 43 URL-safe base64 characters).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256 of `token`, lowercase hex: how a token is stored and looked up.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// A new webhook secret: `whsec_` + standard base64 of 24 random bytes.
pub fn new_webhook_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = new_tenant_id();
        assert!(is_id(&t, TENANT_PREFIX), "{t}");
        assert!(is_id(&new_sub_id(), SUB_PREFIX));
        assert!(is_id(&new_key_id(), KEY_PREFIX));
        assert_ne!(new_sub_id(), new_sub_id());
        assert!(!is_id("s_ABCDEFGHIJKLMNOP", SUB_PREFIX));
        assert!(!is_id("s_abc", SUB_PREFIX));
        assert!(!is_id("t_aaaaaaaaaaaaaaaa", SUB_PREFIX));
        let token = new_token();
        assert!(
            token.starts_with(TOKEN_PREFIX) && token.len() == 4 + 43,
            "{token}"
        );
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let secret = new_webhook_secret();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(raw.len(), 24);
    }
}
