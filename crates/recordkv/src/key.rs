//! The reversible key encoding of the record KV and the like index, and the key patterns (subject
//! filters) of the common watches.
//!
//! NATS KV keys allow only `[-/_=.a-zA-Z0-9]` and `.` separates subject tokens, so every component
//! must be one token without `.`:
//!
//! | component | encoding | example |
//! |---|---|---|
//! | collection (NSID) | `.` → `_` (NSID segments are `[a-zA-Z0-9-]`, never `_`) | `app.bsky.feed.like` → `app_bsky_feed_like` |
//! | DID, rkey, AT-URI | every byte outside `[-_a-zA-Z0-9]` → `=XX` (uppercase hex) | `did:plc:abc` → `did=3Aplc=3Aabc` |
//!
//! A record key is `<collection>.<did>.<rkey>` (collection first: see `docs/record-kv.md` for the
//! measurement behind the order), so "every like" is the literal-prefix pattern
//! `app_bsky_feed_like.>` and "one DID" is `*.<did>.>`.

use std::fmt::Write as _;

use crate::error::Error;

/// Longest encoded record key accepted (bytes). Valid DIDs (≤ 2,048 chars) and rkeys (≤ 512) could
/// exceed it after escaping; such keys are refused (dropped with reason `bad_key`) rather than
/// risking the NATS control-line limit (4 KiB) on publish.
pub const MAX_KEY_LEN: usize = 1024;

/// A decoded record key: which record of which repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// Collection NSID, e.g. `app.bsky.feed.like`.
    pub collection: String,
    /// Repository DID.
    pub did: String,
    /// Record key.
    pub rkey: String,
}

impl RecordKey {
    /// Builds a record key from its parts (no validation until [`RecordKey::encode`]).
    pub fn new(
        collection: impl Into<String>,
        did: impl Into<String>,
        rkey: impl Into<String>,
    ) -> Self {
        Self {
            collection: collection.into(),
            did: did.into(),
            rkey: rkey.into(),
        }
    }

    /// The KV key `<collection>.<did>.<rkey>`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the collection is not an NSID-shaped string, a part is empty, or
    /// the key is longer than [`MAX_KEY_LEN`].
    pub fn encode(&self) -> Result<String, Error> {
        let mut key = encode_collection(&self.collection)?;
        key.push('.');
        key.push_str(&encode_token(&self.did, "did")?);
        key.push('.');
        key.push_str(&encode_token(&self.rkey, "rkey")?);
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid("record key (too long)", &key));
        }
        Ok(key)
    }

    /// Parses a KV key produced by [`RecordKey::encode`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the key does not have three well-formed tokens.
    pub fn decode(key: &str) -> Result<Self, Error> {
        let mut parts = key.split('.');
        let (Some(c), Some(d), Some(r), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::invalid("record key", key));
        };
        Ok(Self {
            collection: decode_collection(c)?,
            did: decode_token(d)?,
            rkey: decode_token(r)?,
        })
    }

    /// The record's AT-URI `at://<did>/<collection>/<rkey>`.
    pub fn at_uri(&self) -> String {
        format!("at://{}/{}/{}", self.did, self.collection, self.rkey)
    }

    /// Parses `at://<did>/<collection>/<rkey>` (the authority must be a DID; handles are not resolved).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for anything else.
    pub fn from_at_uri(uri: &str) -> Result<Self, Error> {
        let rest = uri
            .strip_prefix("at://")
            .ok_or_else(|| Error::invalid("AT-URI", uri))?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(did), Some(collection), Some(rkey), None)
                if did.starts_with("did:") && !collection.is_empty() && !rkey.is_empty() =>
            {
                let key = Self::new(collection, did, rkey);
                // Validate every part once, so callers get one error for a bad URI.
                key.encode()?;
                Ok(key)
            }
            _ => Err(Error::invalid(
                "AT-URI (at://<did>/<collection>/<rkey>)",
                uri,
            )),
        }
    }
}

/// `app.bsky.feed.like` → `app_bsky_feed_like`.
///
/// # Errors
/// [`Error::InvalidInput`] unless the input is dot-separated non-empty `[a-zA-Z0-9-]` segments.
pub fn encode_collection(nsid: &str) -> Result<String, Error> {
    let ok = !nsid.is_empty()
        && nsid.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(Error::invalid("collection NSID", nsid));
    }
    Ok(nsid.replace('.', "_"))
}

/// `app_bsky_feed_like` → `app.bsky.feed.like`.
///
/// # Errors
/// [`Error::InvalidInput`] when the token is not an encoded collection.
pub fn decode_collection(token: &str) -> Result<String, Error> {
    let nsid = token.replace('_', ".");
    encode_collection(&nsid).map_err(|_| Error::invalid("encoded collection", token))?;
    Ok(nsid)
}

/// Escapes every byte outside `[-_a-zA-Z0-9]` as `=XX`: `did:plc:abc` → `did=3Aplc=3Aabc`.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty input (a key token cannot be empty); `what` names it.
pub fn encode_token(raw: &str, what: &'static str) -> Result<String, Error> {
    if raw.is_empty() {
        return Err(Error::invalid(what, raw));
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    Ok(out)
}

/// Reverses [`encode_token`].
///
/// # Errors
/// [`Error::InvalidInput`] for a bad escape, a byte that should have been escaped, or invalid UTF-8.
pub fn decode_token(token: &str) -> Result<String, Error> {
    let bad = || Error::invalid("encoded key token", token);
    if token.is_empty() {
        return Err(bad());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3).ok_or_else(bad)?;
                let byte = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                out.push(byte);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Key pattern of every record of one collection, all DIDs: `app_bsky_feed_like.>`.
///
/// # Errors
/// [`Error::InvalidInput`] for a collection that is not NSID-shaped.
pub fn collection_pattern(nsid: &str) -> Result<String, Error> {
    Ok(format!("{}.>", encode_collection(nsid)?))
}

/// Key pattern of every record of one DID, all collections: `*.did=3Aplc=3Aabc.>`.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty DID.
pub fn did_pattern(did: &str) -> Result<String, Error> {
    Ok(format!("*.{}.*", encode_token(did, "did")?))
}

/// Key pattern of one DID's records in one collection: `app_bsky_feed_post.did=3Aplc=3Aabc.*`.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad collection or an empty DID.
pub fn did_collection_pattern(did: &str, nsid: &str) -> Result<String, Error> {
    Ok(format!(
        "{}.{}.*",
        encode_collection(nsid)?,
        encode_token(did, "did")?
    ))
}

/// The full subject (`$KV.<bucket>.<pattern>`) for a key pattern, to use as a consumer filter.
pub fn kv_subject(bucket: &str, pattern: &str) -> String {
    format!("$KV.{bucket}.{pattern}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn vectors(name: &str) -> Vec<String> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/interop/syntax")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    fn valid_key_chars(key: &str) -> bool {
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn dids_round_trip_and_stay_one_token() {
        let dids = vectors("did_syntax_valid.txt");
        assert!(dids.len() > 10);
        for did in dids {
            let enc = encode_token(&did, "did").unwrap();
            assert!(!enc.contains('.'), "{did} -> {enc}");
            assert!(valid_key_chars(&enc), "{did} -> {enc}");
            assert_eq!(decode_token(&enc).unwrap(), did);
        }
        assert_eq!(
            encode_token("did:plc:abc", "did").unwrap(),
            "did=3Aplc=3Aabc"
        );
        assert_eq!(
            encode_token("did:web:a.b%3A8080", "did").unwrap(),
            "did=3Aweb=3Aa=2Eb=253A8080"
        );
    }

    #[test]
    fn rkeys_round_trip() {
        let rkeys = vectors("recordkey_syntax_valid.txt");
        assert!(rkeys.len() > 10);
        for rkey in rkeys {
            let enc = encode_token(&rkey, "rkey").unwrap();
            assert!(
                !enc.contains('.') && valid_key_chars(&enc),
                "{rkey} -> {enc}"
            );
            assert_eq!(decode_token(&enc).unwrap(), rkey);
        }
    }

    #[test]
    fn nsids_round_trip() {
        let nsids = vectors("nsid_syntax_valid.txt");
        assert!(nsids.len() > 10);
        for nsid in nsids {
            let enc = encode_collection(&nsid).unwrap();
            assert!(
                !enc.contains('.') && valid_key_chars(&enc),
                "{nsid} -> {enc}"
            );
            assert_eq!(decode_collection(&enc).unwrap(), nsid);
        }
    }

    #[test]
    fn record_keys_round_trip_and_match_patterns() {
        let key = RecordKey::new("app.bsky.feed.like", "did:web:example.com", "3l.x:y~z");
        let enc = key.encode().unwrap();
        assert_eq!(
            enc,
            "app_bsky_feed_like.did=3Aweb=3Aexample=2Ecom.3l=2Ex=3Ay=7Ez"
        );
        assert_eq!(RecordKey::decode(&enc).unwrap(), key);
        let m = fpaas_event::subject::subject_matches;
        assert!(m(&collection_pattern("app.bsky.feed.like").unwrap(), &enc));
        assert!(!m(&collection_pattern("app.bsky.feed.post").unwrap(), &enc));
        assert!(m(&did_pattern("did:web:example.com").unwrap(), &enc));
        assert!(!m(&did_pattern("did:web:example.co").unwrap(), &enc));
        assert!(m(
            &did_collection_pattern("did:web:example.com", "app.bsky.feed.like").unwrap(),
            &enc
        ));
    }

    #[test]
    fn at_uris_parse() {
        let key = RecordKey::from_at_uri("at://did:plc:abc/app.bsky.feed.post/3kabc").unwrap();
        assert_eq!(
            key,
            RecordKey::new("app.bsky.feed.post", "did:plc:abc", "3kabc")
        );
        assert_eq!(key.at_uri(), "at://did:plc:abc/app.bsky.feed.post/3kabc");
        for bad in [
            "",
            "http://x",
            "at://did:plc:abc",
            "at://alice.test/app.bsky.feed.post/1",
            "at://did:plc:abc/app..post/1",
            "at://did:plc:abc/app.bsky.feed.post/1/2",
        ] {
            assert!(RecordKey::from_at_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn malformed_keys_are_errors_not_panics() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "app_x.=.r",
            "app_x.=4.r",
            "app_x.=ZZ.r",
            "a..b.c",
            "app_x.d.=FF",
            "app_x.d:x.r",
            "app__x.d.r",
        ] {
            assert!(RecordKey::decode(bad).is_err(), "{bad:?} accepted");
        }
        assert!(decode_token("=C3=A9").is_ok());
        assert!(encode_collection("app.bsky.feed_like").is_err());
        assert!(encode_token("", "did").is_err());
    }
}
