//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `whsec_` secrets, signing a request with
//! every current secret of a subscription, and verifying a request as a receiver would.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, the MAC is HMAC-SHA256 keyed with the
//! secret's bytes (the base64 decoding of the part after `whsec_`), and the `webhook-signature` header holds one
//! `v1,<base64 MAC>` entry per secret, separated by spaces — during a rotation the new and the old secret both
//! sign, so a receiver with either one accepts the request.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
pub const GENERATED_SECRET_BYTES: usize = 24;
/// Fewest key bytes a secret may have (Standard Webhooks: 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most key bytes a secret may have.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a request's timestamp may be from the receiver's clock, either way (Standard Webhooks: 5 minutes),
/// so a captured request cannot be replayed later.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Signature entries of one header that are looked at; the rest are ignored (an attacker cannot make a receiver
/// compute thousands of comparisons).
pub const MAX_SIGNATURE_ENTRIES: usize = 16;

/// A signing secret: 24 to 64 key bytes, written `whsec_<base64>`. Its `Debug` form does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

/// Why a secret's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    #[error("a secret starts with {SECRET_PREFIX}")]
    MissingPrefix,
    /// The part after the prefix is not base64.
    #[error("the part after {SECRET_PREFIX} is not base64")]
    NotBase64,
    /// Too few or too many key bytes.
    #[error("a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, this one {0}")]
    Length(usize),
}

impl Secret {
    /// A new secret of [`GENERATED_SECRET_BYTES`] random bytes from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        Secret { key }
    }

    /// A secret from its key bytes.
    ///
    /// # Errors
    /// [`SecretError::Length`] outside 24..=64 bytes.
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret { key })
    }

    /// Parses `whsec_<base64>` (standard alphabet, padding optional).
    ///
    /// # Errors
    /// A missing prefix, bad base64 or a key length outside 24..=64 bytes.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| SecretError::NotBase64)?;
        Secret::from_bytes(key)
    }

    /// The key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The raw HMAC-SHA256 of `"{id}.{timestamp}.{body}"`.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Display for Secret {
    /// The text form, `whsec_<base64>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({SECRET_PREFIX}…, {} bytes)", self.key.len())
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::parse(s)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Secret::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The `webhook-signature` header value: `v1,<base64 HMAC>` for each secret, in the given order, separated by
/// single spaces. An empty `secrets` gives an empty string.
pub fn sign(id: &str, timestamp: u64, body: &[u8], secrets: &[Secret]) -> String {
    let timestamp = timestamp.to_string();
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        STANDARD.encode_string(secret.mac(id, &timestamp, body), &mut header);
    }
    header
}

/// Why a request failed verification. [`VerifyError::reason`] is a short stable label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not a unix time in seconds")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance.
    #[error("webhook-timestamp is {0} s in the past (replay?)")]
    TooOld(u64),
    /// The timestamp is further in the future than the tolerance.
    #[error("webhook-timestamp is {0} s in the future")]
    TooNew(u64),
    /// No `v1` entry of the header matches any of the secrets.
    #[error("no signature matches")]
    NoMatch,
}

impl VerifyError {
    /// `invalid_timestamp`, `too_old`, `too_new` or `no_match`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::InvalidTimestamp => "invalid_timestamp",
            VerifyError::TooOld(_) => "too_old",
            VerifyError::TooNew(_) => "too_new",
            VerifyError::NoMatch => "no_match",
        }
    }
}

/// Verifies a request as a Standard Webhooks receiver: `timestamp` (the `webhook-timestamp` header) within
/// `tolerance` of `now` (unix seconds), and some `v1,<base64>` entry of `signature_header` equal to the MAC of
/// `"{id}.{timestamp}.{body}"` under one of `secrets` (compared in constant time). Entries of other versions,
/// entries that are not base64 and entries past the first [`MAX_SIGNATURE_ENTRIES`] are ignored.
///
/// # Errors
/// The first check that failed.
pub fn verify(
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    secrets: &[Secret],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: u64 = if !timestamp.is_empty()
        && timestamp.len() <= 20
        && timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        timestamp
            .parse()
            .map_err(|_| VerifyError::InvalidTimestamp)?
    } else {
        return Err(VerifyError::InvalidTimestamp);
    };
    let tolerance = tolerance.as_secs();
    if now > ts && now - ts > tolerance {
        return Err(VerifyError::TooOld(now - ts));
    }
    if ts > now && ts - now > tolerance {
        return Err(VerifyError::TooNew(ts - now));
    }
    let expected: Vec<[u8; 32]> = secrets.iter().map(|s| s.mac(id, timestamp, body)).collect();
    let mut matched = subtle::Choice::from(0);
    for entry in signature_header
        .split(' ')
        .filter(|e| !e.is_empty())
        .take(MAX_SIGNATURE_ENTRIES)
    {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        if given.len() != 32 {
            continue;
        }
        for mac in &expected {
            matched |= mac.as_slice().ct_eq(&given);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector (the same in every reference implementation).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: u64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> Secret {
        Secret::parse(VECTOR_SECRET).expect("vector secret")
    }

    #[test]
    fn signing_reproduces_the_standard_webhooks_test_vector() {
        assert_eq!(
            sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY, &[vector_secret()]),
            VECTOR_SIG
        );
    }

    #[test]
    fn verify_accepts_the_test_vector_and_rejects_any_change() {
        let secrets = [vector_secret()];
        let ok = |id: &str, ts: &str, sig: &str, body: &[u8]| {
            verify(id, ts, sig, body, &secrets, VECTOR_TS, DEFAULT_TOLERANCE)
        };
        assert_eq!(ok(VECTOR_ID, "1614265330", VECTOR_SIG, VECTOR_BODY), Ok(()));
        assert_eq!(
            ok("msg_other", "1614265330", VECTOR_SIG, VECTOR_BODY),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok(VECTOR_ID, "1614265331", VECTOR_SIG, VECTOR_BODY),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok(
                VECTOR_ID,
                "1614265330",
                VECTOR_SIG,
                br#"{"test": 2432232315}"#
            ),
            Err(VerifyError::NoMatch)
        );
        let flipped = VECTOR_SIG.replace("g0hM", "g0hN");
        assert_eq!(
            ok(VECTOR_ID, "1614265330", &flipped, VECTOR_BODY),
            Err(VerifyError::NoMatch)
        );
        let other = Secret::generate();
        assert_eq!(
            verify(
                VECTOR_ID,
                "1614265330",
                VECTOR_SIG,
                VECTOR_BODY,
                &[other],
                VECTOR_TS,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn verify_finds_the_matching_entry_among_several_and_ignores_junk() {
        let secrets = [vector_secret()];
        for header in [
            format!("v1,bm9wZQ== {VECTOR_SIG}"),
            format!("v2,abc {VECTOR_SIG} v1,%%%"),
            format!("  {VECTOR_SIG}  "),
            format!("v1a,xyz {VECTOR_SIG}"),
        ] {
            assert_eq!(
                verify(
                    VECTOR_ID,
                    "1614265330",
                    &header,
                    VECTOR_BODY,
                    &secrets,
                    VECTOR_TS,
                    DEFAULT_TOLERANCE
                ),
                Ok(()),
                "{header}"
            );
        }
        for header in [
            "",
            "v1,",
            "v1",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                verify(
                    VECTOR_ID,
                    "1614265330",
                    header,
                    VECTOR_BODY,
                    &secrets,
                    VECTOR_TS,
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::NoMatch),
                "{header}"
            );
        }
        // A match beyond the entries looked at does not count.
        let padded = format!(
            "{}{VECTOR_SIG}",
            "v1,bm9wZQ== ".repeat(MAX_SIGNATURE_ENTRIES)
        );
        assert_eq!(
            verify(
                VECTOR_ID,
                "1614265330",
                &padded,
                VECTOR_BODY,
                &secrets,
                VECTOR_TS,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn verify_enforces_the_timestamp_tolerance_both_ways() {
        let secret = Secret::generate();
        let secrets = [secret.clone()];
        let at = |ts: u64, now: u64| {
            let header = sign("msg_1", ts, b"{}", &secrets);
            verify(
                "msg_1",
                &ts.to_string(),
                &header,
                b"{}",
                &secrets,
                now,
                DEFAULT_TOLERANCE,
            )
        };
        let now = 1_700_000_000;
        assert_eq!(at(now, now), Ok(()));
        assert_eq!(at(now - 300, now), Ok(()));
        assert_eq!(at(now + 300, now), Ok(()));
        assert_eq!(at(now - 301, now), Err(VerifyError::TooOld(301)));
        assert_eq!(at(now + 301, now), Err(VerifyError::TooNew(301)));
        for bad in [
            "",
            "abc",
            "-5",
            "1.5",
            " 1700000000",
            "+1700000000",
            "99999999999999999999999",
        ] {
            assert_eq!(
                verify(
                    "msg_1",
                    bad,
                    "v1,x",
                    b"{}",
                    &secrets,
                    now,
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::InvalidTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_secret_signs_so_either_side_of_a_rotation_verifies() {
        let (new, old) = (Secret::generate(), Secret::generate());
        let header = sign("msg_r", 10, b"body", &[new.clone(), old.clone()]);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            sign("msg_r", 10, b"body", std::slice::from_ref(&new))
        );
        assert_eq!(
            entries[1],
            sign("msg_r", 10, b"body", std::slice::from_ref(&old))
        );
        for receiver in [new, old] {
            assert_eq!(
                verify(
                    "msg_r",
                    "10",
                    &header,
                    b"body",
                    &[receiver],
                    10,
                    DEFAULT_TOLERANCE
                ),
                Ok(())
            );
        }
        assert_eq!(
            verify(
                "msg_r",
                "10",
                &header,
                b"body",
                &[Secret::generate()],
                10,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(sign("msg_r", 10, b"body", &[]), "");
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let secret = Secret::generate();
        assert_eq!(secret.key().len(), GENERATED_SECRET_BYTES);
        assert_ne!(secret, Secret::generate());
        let text = secret.to_string();
        assert!(text.starts_with("whsec_"), "{text}");
        assert_eq!(Secret::parse(&text), Ok(secret.clone()));
        assert!(
            !format!("{secret:?}").contains(&text[6..]),
            "Debug hides the key"
        );
        let json = serde_json::to_string(&secret).expect("serialize");
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<Secret>(&json).expect("deserialize"),
            secret
        );

        assert_eq!(vector_secret().to_string(), VECTOR_SECRET);
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_"), Err(SecretError::Length(0)));
        assert_eq!(Secret::parse("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(Secret::parse(&long), Err(SecretError::Length(65)));
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 25]));
        assert!(padded.ends_with('='));
        assert_eq!(Secret::parse(&padded).map(|s| s.key().len()), Ok(25));
    }
}
