//! ATProto identifier syntax: validated newtypes for DIDs, NSIDs, record keys, TIDs, handles and
//! (restricted) AT URIs, plus a CID string check.
//!
//! Each type is a `String` that has passed its syntax check; construct it with `parse` (or
//! `FromStr`/serde, which call `parse`). The rules follow the ATProto specs and are tested against
//! the interop vectors in `testdata/interop/syntax`. Checks are ASCII-only and never panic.

use std::fmt;
use std::str::FromStr;

/// Why an identifier failed its syntax check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// Not a valid DID.
    #[error("invalid DID: {0}")]
    Did(&'static str),
    /// Not a valid NSID.
    #[error("invalid NSID: {0}")]
    Nsid(&'static str),
    /// Not a valid record key.
    #[error("invalid record key: {0}")]
    RecordKey(&'static str),
    /// Not a valid TID.
    #[error("invalid TID: {0}")]
    Tid(&'static str),
    /// Not a valid handle.
    #[error("invalid handle: {0}")]
    Handle(&'static str),
    /// Not a valid AT URI.
    #[error("invalid AT URI: {0}")]
    AtUri(&'static str),
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps a copy of it.
            pub fn parse(s: &str) -> Result<Self, SyntaxError> {
                $check(s)?;
                Ok(Self(s.to_owned()))
            }

            /// Validates an owned string without copying it.
            pub fn from_string(s: String) -> Result<Self, SyntaxError> {
                $check(&s)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = SyntaxError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A decentralized identifier, e.g. `did:plc:7iza6de2dwap2sbkpav7c6c6`.
    Did,
    check_did
);
string_newtype!(
    /// A namespaced identifier (Lexicon name), e.g. `app.bsky.feed.post`.
    Nsid,
    check_nsid
);
string_newtype!(
    /// A record key, e.g. `3jzfcijpj2z2a` or `self`.
    RecordKey,
    check_record_key
);
string_newtype!(
    /// A timestamp identifier: 13 base32-sortable characters encoding microseconds + clock id.
    Tid,
    check_tid
);
string_newtype!(
    /// A domain-name handle, e.g. `alice.bsky.social`.
    Handle,
    check_handle
);
string_newtype!(
    /// A restricted AT URI: `at://<did|handle>[/<collection>[/<rkey>]]` (no query, no fragment).
    AtUri,
    check_at_uri
);

/// Maximum DID length in characters (spec: 2 KB).
pub const MAX_DID_LEN: usize = 2048;
/// Maximum NSID length.
pub const MAX_NSID_LEN: usize = 317;
/// Maximum record key length.
pub const MAX_RECORD_KEY_LEN: usize = 512;
/// Maximum handle length.
pub const MAX_HANDLE_LEN: usize = 253;
/// Maximum AT URI length (spec: 8 KB).
pub const MAX_AT_URI_LEN: usize = 8 * 1024;

fn check_did(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_DID_LEN {
        return Err(SyntaxError::Did("too long"));
    }
    let rest = s
        .strip_prefix("did:")
        .ok_or(SyntaxError::Did("must start with \"did:\""))?;
    let (method, id) = rest
        .split_once(':')
        .ok_or(SyntaxError::Did("missing method-specific identifier"))?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(SyntaxError::Did("method must be lowercase letters"));
    }
    if id.is_empty() {
        return Err(SyntaxError::Did("empty method-specific identifier"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return Err(SyntaxError::Did("disallowed character"));
    }
    if id.ends_with(':') || id.ends_with('%') {
        return Err(SyntaxError::Did("must not end with ':' or '%'"));
    }
    Ok(())
}

/// One DNS-style label: 1..=63 of `[a-zA-Z0-9-]`, not starting or ending with `-`.
fn is_domain_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

fn check_nsid(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_NSID_LEN {
        return Err(SyntaxError::Nsid("too long"));
    }
    let (authority, name) = s
        .rsplit_once('.')
        .ok_or(SyntaxError::Nsid("needs at least three segments"))?;
    let mut segments = 0usize;
    for (i, label) in authority.split('.').enumerate() {
        if !is_domain_label(label) {
            return Err(SyntaxError::Nsid("invalid domain segment"));
        }
        if i == 0 && label.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return Err(SyntaxError::Nsid(
                "first segment must not start with a digit",
            ));
        }
        segments += 1;
    }
    if segments < 2 {
        return Err(SyntaxError::Nsid("needs at least three segments"));
    }
    let nb = name.as_bytes();
    if nb.is_empty() || nb.len() > 63 {
        return Err(SyntaxError::Nsid("name segment must be 1..=63 characters"));
    }
    if !nb.first().is_some_and(u8::is_ascii_alphabetic) || !nb.iter().all(u8::is_ascii_alphanumeric)
    {
        return Err(SyntaxError::Nsid(
            "name segment must be a letter followed by letters/digits",
        ));
    }
    Ok(())
}

fn check_record_key(s: &str) -> Result<(), SyntaxError> {
    if s.is_empty() || s.len() > MAX_RECORD_KEY_LEN {
        return Err(SyntaxError::RecordKey("must be 1..=512 characters"));
    }
    if s == "." || s == ".." {
        return Err(SyntaxError::RecordKey("\".\" and \"..\" are not allowed"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.' | b':' | b'-'))
    {
        return Err(SyntaxError::RecordKey("disallowed character"));
    }
    Ok(())
}

const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

fn tid_char_value(c: u8) -> Option<u64> {
    match c {
        b'2'..=b'7' => Some(u64::from(c - b'2')),
        b'a'..=b'z' => Some(u64::from(c - b'a') + 6),
        _ => None,
    }
}

fn check_tid(s: &str) -> Result<(), SyntaxError> {
    let b = s.as_bytes();
    if b.len() != 13 {
        return Err(SyntaxError::Tid("must be 13 characters"));
    }
    if !b.iter().all(|c| tid_char_value(*c).is_some()) {
        return Err(SyntaxError::Tid("must be base32-sortable (234567a-z)"));
    }
    // The first character carries the top bit, which must be zero.
    if !matches!(b.first(), Some(b'2'..=b'7' | b'a'..=b'j')) {
        return Err(SyntaxError::Tid("high bit must be zero"));
    }
    Ok(())
}

/// Whether `s` is an ATProto datetime: `YYYY-MM-DDTHH:MM:SS`, an optional `.` and 1–20 fraction digits,
/// then `Z` or `±HH:MM` (not `-00:00`); uppercase `T` and `Z`, nothing before or after. This is the syntax
/// check of the spec (the interop vectors `datetime_syntax_*`); a syntactically valid value can still name an
/// impossible date, which `time_us` then reports as 0.
pub fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digit = |i: usize, max: u8| b.get(i).is_some_and(|c| (b'0'..=max).contains(c));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = (0..4).all(|i| digit(i, b'9'))
        && at(4, b'-')
        && digit(5, b'1')
        && digit(6, b'9')
        && at(7, b'-')
        && digit(8, b'3')
        && digit(9, b'9')
        && at(10, b'T')
        && digit(11, b'2')
        && digit(12, b'9')
        && at(13, b':')
        && digit(14, b'6')
        && digit(15, b'9')
        && at(16, b':')
        && digit(17, b'6')
        && digit(18, b'9');
    if !date_time {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=20).contains(&digits) {
            return false;
        }
        i += 1 + digits;
    }
    match &b[i..] {
        [b'Z'] => true,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let tz_ok = (b'0'..=b'2').contains(h1)
                && h2.is_ascii_digit()
                && (b'0'..=b'5').contains(m1)
                && m2.is_ascii_digit();
            tz_ok && !(*sign == b'-' && [*h1, *h2, *m1, *m2] == *b"0000")
        }
        _ => false,
    }
}

impl Tid {
    fn value(&self) -> u64 {
        self.0
            .bytes()
            .fold(0u64, |acc, c| (acc << 5) | tid_char_value(c).unwrap_or(0))
    }

    /// Microseconds since the UNIX epoch (the top 53 bits after the zero bit).
    pub fn timestamp_us(&self) -> u64 {
        self.value() >> 10
    }

    /// The 10-bit clock identifier.
    pub fn clock_id(&self) -> u16 {
        // Masked to 10 bits, so the conversion cannot fail.
        u16::try_from(self.value() & 0x3ff).unwrap_or(0)
    }

    /// Builds a TID from a timestamp (truncated to 53 bits) and clock id (truncated to 10 bits).
    pub fn from_parts(timestamp_us: u64, clock_id: u16) -> Tid {
        let v = ((timestamp_us & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff);
        let mut out = String::with_capacity(13);
        for i in (0..13).rev() {
            let idx = ((v >> (i * 5)) & 31) as usize;
            out.push(char::from(TID_ALPHABET.get(idx).copied().unwrap_or(b'2')));
        }
        Tid(out)
    }
}

impl Nsid {
    /// The dot-separated segments: `app.bsky.feed.like` → `app`, `bsky`, `feed`, `like`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The last segment (the name), e.g. `like`.
    pub fn name(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }
}

fn check_handle(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_HANDLE_LEN {
        return Err(SyntaxError::Handle("too long"));
    }
    let mut labels = 0usize;
    let mut last = "";
    for label in s.split('.') {
        if !is_domain_label(label) {
            return Err(SyntaxError::Handle("invalid label"));
        }
        labels += 1;
        last = label;
    }
    if labels < 2 {
        return Err(SyntaxError::Handle("needs at least two labels"));
    }
    if last.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return Err(SyntaxError::Handle(
            "top-level domain must not start with a digit",
        ));
    }
    Ok(())
}

impl Handle {
    /// The handle lowercased (handles are case-insensitive).
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

fn check_at_uri(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_AT_URI_LEN {
        return Err(SyntaxError::AtUri("too long"));
    }
    let rest = s
        .strip_prefix("at://")
        .ok_or(SyntaxError::AtUri("must start with \"at://\""))?;
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or("");
    if check_did(authority).is_err() && check_handle(authority).is_err() {
        return Err(SyntaxError::AtUri("authority must be a DID or handle"));
    }
    if let Some(collection) = parts.next() {
        check_nsid(collection).map_err(|_| SyntaxError::AtUri("invalid collection NSID"))?;
    }
    if let Some(rkey) = parts.next() {
        check_record_key(rkey).map_err(|_| SyntaxError::AtUri("invalid record key"))?;
    }
    if parts.next().is_some() {
        return Err(SyntaxError::AtUri("too many path segments"));
    }
    Ok(())
}

impl AtUri {
    fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.get(5..).unwrap_or("").split('/')
    }

    /// The authority: a DID or handle.
    pub fn authority(&self) -> &str {
        self.parts().next().unwrap_or("")
    }

    /// The collection NSID, if present.
    pub fn collection(&self) -> Option<&str> {
        self.parts().nth(1)
    }

    /// The record key, if present.
    pub fn rkey(&self) -> Option<&str> {
        self.parts().nth(2)
    }
}

/// Whether `s` has the syntax of a CID string as ATProto accepts it: 8..=256 characters of
/// `[a-zA-Z0-9+=]`, and not a legacy CIDv0 (`Qmb…`). This is a syntax check only, like the
/// reference implementation's; use [`cid::Cid::try_from`] to decode.
pub fn is_valid_cid_string(s: &str) -> bool {
    (8..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'=')
        && !s.starts_with("Qmb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_round_trips_parts() {
        let tid = Tid::from_parts(1_700_000_000_000_000, 513);
        assert_eq!(tid.timestamp_us(), 1_700_000_000_000_000);
        assert_eq!(tid.clock_id(), 513);
        assert!(Tid::parse(tid.as_str()).is_ok());
    }

    #[test]
    fn tid_known_value() {
        // 3jzfcijpj2z2a is from the spec examples (2023).
        let tid = Tid::parse("3jzfcijpj2z2a").expect("valid");
        let secs = tid.timestamp_us() / 1_000_000;
        assert!((1_672_531_200..1_704_067_200).contains(&secs), "{secs}");
    }

    #[test]
    fn nsid_segments() {
        let n = Nsid::parse("app.bsky.feed.like").expect("valid");
        assert_eq!(
            n.segments().collect::<Vec<_>>(),
            ["app", "bsky", "feed", "like"]
        );
        assert_eq!(n.name(), "like");
    }

    #[test]
    fn at_uri_parts() {
        let u =
            AtUri::parse("at://did:plc:asdf123/app.bsky.feed.post/3jzfcijpj2z2a").expect("valid");
        assert_eq!(u.authority(), "did:plc:asdf123");
        assert_eq!(u.collection(), Some("app.bsky.feed.post"));
        assert_eq!(u.rkey(), Some("3jzfcijpj2z2a"));
        let u = AtUri::parse("at://alice.test").expect("valid");
        assert_eq!(u.collection(), None);
    }

    #[test]
    fn serde_validates() {
        let ok: Result<Did, _> = serde_json::from_str("\"did:plc:abc\"");
        assert!(ok.is_ok());
        let bad: Result<Did, _> = serde_json::from_str("\"DID:plc:abc\"");
        assert!(bad.is_err());
        assert_eq!(
            serde_json::to_string(&ok.expect("ok")).expect("ser"),
            "\"did:plc:abc\""
        );
    }
}
