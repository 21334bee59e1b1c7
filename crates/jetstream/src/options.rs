//! What a `/subscribe` client asks for: the query parameters of the upgrade request and the payload of an
//! `options_update` message, validated with Jetstream v1's rules and limits, and the resulting [`Filter`].
//! Pure: no I/O. The error texts are Jetstream v1's own, because they are the body of the `400` a client
//! sees before the upgrade (`docs/subscribe.md` lists them).

use std::collections::HashSet;

use fpaas_proto::syntax::{Did, Nsid};

/// At most this many collection patterns (distinct exact NSIDs plus prefixes) per client.
pub const MAX_COLLECTIONS: usize = 100;
/// At most this many distinct DIDs per client.
pub const MAX_DIDS: usize = 10_000;

/// Why a request or an `options_update` is refused. `Display` is the exact text Jetstream v1 answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `cursor` is not a 64-bit integer.
    #[error("invalid cursor: {0}")]
    Cursor(String),
    /// A `wantedCollections` value is neither an NSID nor a `prefix.*`.
    #[error("invalid subscriber options: invalid collection: {0}")]
    Collection(String),
    /// A `wantedDids` value is not a DID (v1 gives no detail here).
    #[error("invalid subscriber options")]
    Did(String),
    /// More than [`MAX_DIDS`] distinct DIDs.
    #[error("invalid subscriber options: too many wanted DIDs")]
    TooManyDids,
    /// More than [`MAX_COLLECTIONS`] collection patterns.
    #[error("invalid subscriber options: too many wanted collections")]
    TooManyCollections,
}

/// Which events a client wants. Collections apply to commits only (identity and account events always pass,
/// as in Jetstream); DIDs apply to every kind. Empty sets mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    exact: HashSet<String>,
    /// Prefixes with their trailing dot (`app.bsky.` for `app.bsky.*`).
    prefixes: Vec<String>,
    dids: HashSet<String>,
}

impl Filter {
    /// Builds a filter from raw values (query parameters or an update), checking each value and the limits.
    ///
    /// # Errors
    /// [`OptionsError`] for the first bad value or an exceeded limit.
    pub fn parse<'a>(
        collections: impl IntoIterator<Item = &'a str>,
        dids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, OptionsError> {
        let mut f = Filter::default();
        for c in collections {
            if let Some(head) = c.strip_suffix(".*") {
                if !is_prefix_head(head) {
                    return Err(OptionsError::Collection(c.to_owned()));
                }
                let p = format!("{head}.");
                if !f.prefixes.contains(&p) {
                    f.prefixes.push(p);
                }
            } else {
                Nsid::parse(c).map_err(|_| OptionsError::Collection(c.to_owned()))?;
                f.exact.insert(c.to_owned());
            }
            if f.exact.len() + f.prefixes.len() > MAX_COLLECTIONS {
                return Err(OptionsError::TooManyCollections);
            }
        }
        for d in dids {
            Did::parse(d).map_err(|_| OptionsError::Did(d.to_owned()))?;
            f.dids.insert(d.to_owned());
            if f.dids.len() > MAX_DIDS {
                return Err(OptionsError::TooManyDids);
            }
        }
        Ok(f)
    }

    /// Whether an event of `kind` by `did` (in `collection`, for commits) passes.
    pub fn wants(&self, kind: Kind, did: &str, collection: &str) -> bool {
        if !self.dids.is_empty() && !self.dids.contains(did) {
            return false;
        }
        if kind != Kind::Commit || collection.is_empty() || self.all_collections() {
            return true;
        }
        self.exact.contains(collection) || self.prefixes.iter().any(|p| collection.starts_with(p))
    }

    fn all_collections(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The stream subjects a reader of this filter needs (empty = every subject). DIDs are not in subjects;
    /// they are matched in process.
    pub fn subjects(&self) -> Vec<String> {
        if self.all_collections() {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .exact
            .iter()
            .map(|c| format!("atproto.firehose.commit.*.{c}"))
            .collect();
        out.sort();
        out.extend(
            self.prefixes
                .iter()
                .map(|p| format!("atproto.firehose.commit.*.{p}>")),
        );
        out.push("atproto.firehose.identity".to_owned());
        out.push("atproto.firehose.account.>".to_owned());
        out
    }
}

/// A prefix head (`app.bsky` of `app.bsky.*`): one or more dot-separated segments of ASCII letters, digits
/// and hyphens. Jetstream v1 accepted any head; one that cannot be a stream subject can never match a
/// collection, so it is refused here.
fn is_prefix_head(head: &str) -> bool {
    !head.is_empty()
        && head.len() <= 317
        && head.split('.').all(|s| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The kinds of event a client can receive (`sync` events are never sent on this endpoint, as in Jetstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A record operation.
    Commit,
    /// A handle or DID document change.
    Identity,
    /// An account status change.
    Account,
}

/// Where a client starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events stored after the connection was accepted.
    Live,
    /// Every retained event whose `time_us` is greater than this (a cursor in unix microseconds); `0` or a
    /// negative value replays from the oldest retained event.
    After(i64),
}

/// The parsed query of an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The filter.
    pub filter: Filter,
    /// Where to start.
    pub start: Start,
    /// Largest event to send, in bytes of uncompressed JSON (0 = no limit); larger events are skipped.
    pub max_message_size: u64,
    /// zstd-compress each event with Jetstream's dictionary (binary messages).
    pub compress: bool,
    /// Send nothing until the first valid `options_update`.
    pub require_hello: bool,
}

/// Parses the query pairs (in order, repeated keys kept) and the `Socket-Encoding` header. Unknown
/// parameters are ignored, as in Jetstream.
///
/// # Errors
/// [`OptionsError`], checked in Jetstream v1's order: cursor first, then the filter.
pub fn parse_query(
    pairs: &[(String, String)],
    socket_encoding: Option<&str>,
) -> Result<Query, OptionsError> {
    fn values<'a>(
        pairs: &'a [(String, String)],
        key: &'static str,
    ) -> impl Iterator<Item = &'a str> {
        pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    let start = match values(pairs, "cursor").next() {
        None | Some("") => Start::Live,
        Some(raw) => Start::After(
            raw.parse::<i64>()
                .map_err(|_| OptionsError::Cursor(raw.to_owned()))?,
        ),
    };
    let filter = Filter::parse(
        values(pairs, "wantedCollections"),
        values(pairs, "wantedDids"),
    )?;
    Ok(Query {
        filter,
        start,
        max_message_size: values(pairs, "maxMessageSizeBytes")
            .next()
            .map_or(0, parse_max_size),
        compress: values(pairs, "compress").next() == Some("true")
            || socket_encoding.is_some_and(|h| h.contains("zstd")),
        require_hello: values(pairs, "requireHello").next() == Some("true"),
    })
}

/// `maxMessageSizeBytes`: anything that is not a positive integer means no limit.
fn parse_max_size(raw: &str) -> u64 {
    raw.parse::<i64>()
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// What a client's `options_update` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The new filter (replaces the old one entirely).
    pub filter: Filter,
    /// The new size limit, when given.
    pub max_message_size: Option<u64>,
}

/// Why a message from the client is refused (the connection is then closed with [`UpdateError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// Not JSON, or not the expected shape.
    #[error("failed to parse subscriber message: {0}")]
    Json(String),
    /// Valid JSON with invalid options.
    #[error("failed to parse subscriber options: {0}")]
    Options(#[from] OptionsError),
}

impl UpdateError {
    /// The WebSocket close code: 1007 (invalid payload data) for bad JSON, 1008 (policy) for bad options.
    pub fn close_code(&self) -> u16 {
        match self {
            UpdateError::Json(_) => 1007,
            UpdateError::Options(_) => 1008,
        }
    }
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdatePayload {
    #[serde(default)]
    wanted_collections: Option<Vec<String>>,
    #[serde(default)]
    wanted_dids: Option<Vec<String>>,
    #[serde(default)]
    max_message_size_bytes: Option<i64>,
}

/// Parses a text message from the client: `Ok(Some(update))` for a valid `options_update`, `Ok(None)` for a
/// message of another type (ignored, as in Jetstream).
///
/// # Errors
/// [`UpdateError`] for bad JSON or invalid options.
pub fn parse_message(text: &str) -> Result<Option<Update>, UpdateError> {
    let env: Envelope = serde_json::from_str(text).map_err(|e| UpdateError::Json(e.to_string()))?;
    if env.kind != "options_update" {
        return Ok(None);
    }
    let payload: UpdatePayload = match env.payload {
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| UpdateError::Json(e.to_string()))?
        }
        None => UpdatePayload {
            wanted_collections: None,
            wanted_dids: None,
            max_message_size_bytes: None,
        },
    };
    let filter = Filter::parse(
        payload
            .wanted_collections
            .iter()
            .flatten()
            .map(String::as_str),
        payload.wanted_dids.iter().flatten().map(String::as_str),
    )?;
    Ok(Some(Update {
        filter,
        max_message_size: payload
            .max_message_size_bytes
            .map(|n| u64::try_from(n).unwrap_or(0)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Query, OptionsError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_query(&pairs, None)
    }

    #[test]
    fn errors_carry_jetstream_v1_bodies_in_its_order() {
        assert_eq!(
            q(&[("cursor", "abc"), ("wantedCollections", "x")])
                .unwrap_err()
                .to_string(),
            "invalid cursor: abc"
        );
        assert_eq!(
            q(&[("wantedCollections", "nope")]).unwrap_err().to_string(),
            "invalid subscriber options: invalid collection: nope"
        );
        assert_eq!(
            q(&[("wantedCollections", "")]).unwrap_err().to_string(),
            "invalid subscriber options: invalid collection: "
        );
        assert_eq!(
            q(&[("wantedDids", "alice")]).unwrap_err().to_string(),
            "invalid subscriber options"
        );
        for bad in ["*", "app.bsky.fo*", "Foo Bar.*", ".*", "app..*"] {
            assert!(
                matches!(
                    q(&[("wantedCollections", bad)]),
                    Err(OptionsError::Collection(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_count_distinct_values() {
        let many: Vec<String> = (0..101).map(|i| format!("app.bsky.c{i}")).collect();
        let mut pairs: Vec<(&str, &str)> = many
            .iter()
            .map(|c| ("wantedCollections", c.as_str()))
            .collect();
        assert_eq!(q(&pairs).unwrap_err(), OptionsError::TooManyCollections);
        pairs.pop();
        assert!(q(&pairs).is_ok(), "100 is allowed");
        // The same NSID twice counts once.
        pairs.push(("wantedCollections", "app.bsky.c0"));
        assert!(q(&pairs).is_ok());
        let dids: Vec<String> = (0..10_001).map(|i| format!("did:plc:u{i}")).collect();
        let mut pairs: Vec<(&str, &str)> =
            dids.iter().map(|d| ("wantedDids", d.as_str())).collect();
        assert_eq!(q(&pairs).unwrap_err(), OptionsError::TooManyDids);
        pairs.pop();
        pairs.push(("wantedDids", "did:plc:u0"));
        assert!(q(&pairs).is_ok(), "10,000 distinct DIDs are allowed");
    }

    #[test]
    fn cursor_size_compression_and_hello() {
        let live = q(&[]).unwrap();
        assert_eq!(live.start, Start::Live);
        assert!(!live.compress && !live.require_hello);
        assert_eq!(live.max_message_size, 0);
        assert_eq!(q(&[("cursor", "")]).unwrap().start, Start::Live);
        assert_eq!(q(&[("cursor", "-5")]).unwrap().start, Start::After(-5));
        let r = q(&[
            ("cursor", "1700000000000000"),
            ("compress", "true"),
            ("requireHello", "true"),
            ("maxMessageSizeBytes", "2048"),
        ])
        .unwrap();
        assert_eq!(r.start, Start::After(1_700_000_000_000_000));
        assert!(r.compress && r.require_hello);
        assert_eq!(r.max_message_size, 2048);
        for loose in ["1", "True", "yes"] {
            let r = q(&[("compress", loose), ("requireHello", loose)]).unwrap();
            assert!(!r.compress && !r.require_hello, "{loose}");
        }
        for none in ["-1", "x", "0"] {
            assert_eq!(
                q(&[("maxMessageSizeBytes", none)])
                    .unwrap()
                    .max_message_size,
                0
            );
        }
        let pairs = vec![];
        assert!(parse_query(&pairs, Some("gzip, zstd")).unwrap().compress);
    }

    #[test]
    fn filter_matches_like_jetstream() {
        let f = Filter::parse(
            ["app.bsky.feed.like", "app.bsky.graph.*"],
            ["did:plc:alice"],
        )
        .unwrap();
        assert!(f.wants(Kind::Commit, "did:plc:alice", "app.bsky.feed.like"));
        assert!(f.wants(Kind::Commit, "did:plc:alice", "app.bsky.graph.follow"));
        assert!(!f.wants(Kind::Commit, "did:plc:alice", "app.bsky.feed.post"));
        assert!(!f.wants(Kind::Commit, "did:plc:bob", "app.bsky.feed.like"));
        // Collections do not apply to identity and account events; DIDs do.
        assert!(f.wants(Kind::Identity, "did:plc:alice", ""));
        assert!(!f.wants(Kind::Account, "did:plc:bob", ""));
        let all = Filter::parse([], []).unwrap();
        assert!(all.wants(Kind::Commit, "did:plc:x", "a.b.c"));
        assert!(all.subjects().is_empty());
        assert_eq!(
            f.subjects(),
            vec![
                "atproto.firehose.commit.*.app.bsky.feed.like",
                "atproto.firehose.commit.*.app.bsky.graph.>",
                "atproto.firehose.identity",
                "atproto.firehose.account.>",
            ]
        );
        // A one-segment prefix is legal (Jetstream v1 accepts `app.*`).
        assert!(Filter::parse(["app.*"], []).is_ok());
    }

    #[test]
    fn options_update_messages() {
        let u = parse_message(r#"{"type":"options_update","payload":{}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            u.filter,
            Filter::default(),
            "an empty hello means everything"
        );
        let u = parse_message(
            r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.*"],"wantedDids":["did:plc:a"],"maxMessageSizeBytes":100}}"#,
        )
        .unwrap()
        .unwrap();
        assert!(
            u.filter
                .wants(Kind::Commit, "did:plc:a", "app.bsky.feed.post")
        );
        assert_eq!(u.max_message_size, Some(100));
        assert_eq!(parse_message(r#"{"type":"other"}"#).unwrap(), None);
        let bad_json = parse_message("{").unwrap_err();
        assert_eq!(bad_json.close_code(), 1007);
        let wrong_type =
            parse_message(r#"{"type":"options_update","payload":{"wantedDids":"x"}}"#).unwrap_err();
        assert_eq!(wrong_type.close_code(), 1007);
        let invalid =
            parse_message(r#"{"type":"options_update","payload":{"wantedCollections":["x"]}}"#)
                .unwrap_err();
        assert_eq!(invalid.close_code(), 1008);
        assert_eq!(
            invalid.to_string(),
            "failed to parse subscriber options: invalid subscriber options: invalid collection: x"
        );
    }

    #[test]
    fn mangled_queries_and_messages_get_an_error_or_a_value_never_a_panic() {
        let seeds = [
            r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.*"],"wantedDids":["did:plc:a"],"maxMessageSizeBytes":100}}"#,
            "wantedCollections=app.bsky.feed.like&wantedDids=did:plc:abc&cursor=170&compress=true",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..3_000 {
            let mut bytes = seeds[i % 2].as_bytes().to_vec();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, b"*.&=\"{}[]:"[(next() % 10) as usize]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if i % 2 == 0 {
                match parse_message(&text) {
                    Ok(_) => accepted += 1,
                    Err(_) => refused += 1,
                }
            } else {
                let pairs: Vec<(String, String)> = text
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (kv.to_owned(), String::new()),
                    })
                    .collect();
                match parse_query(&pairs, None) {
                    // Whatever was accepted is a usable filter.
                    Ok(q) => {
                        let _ = q.filter.subjects();
                        accepted += 1;
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }
}
