//! The bytes a `/subscribe` client receives: our stream's event JSON rewritten into Jetstream v1's shape
//! (`did`, `time_us`, `kind`, then `commit` / `identity` / `account`; our top-level `seq` and `time` dropped,
//! `sync` events skipped), with `time_us` set to the message's NATS store time so that it works as a cursor,
//! and its zstd form (one complete frame per event, Jetstream's dictionary, computed once and shared by
//! every compressed client).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{LazyLock, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use zstd::dict::EncoderDictionary;

use crate::options::Kind;

/// Jetstream v1's zstd dictionary (`legacy_subscribe.zdict`, zstd dictionary id 1612007021); clients of
/// `compress=true` decode each message with it.
pub const DICTIONARY: &[u8] = include_bytes!("../assets/legacy_subscribe.zdict");

/// zstd level of compressed events (zstd's default, close to what Jetstream's encoder uses).
const LEVEL: i32 = 3;

static CDICT: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY, LEVEL));

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// Why a stream message cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The payload is not one of our events.
    #[error("not an event: {0}")]
    Json(#[from] serde_json::Error),
    /// The event lacks the object of its kind.
    #[error("a {0} event without its {0} object")]
    Missing(&'static str),
    /// zstd failed (out of memory).
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
}

/// One event ready to send: v1 JSON, what filters look at, and its lazily built zstd form.
#[derive(Debug)]
pub struct WireEvent {
    /// Stream sequence.
    pub seq: u64,
    /// NATS store time in µs (the `time_us` in `json`).
    pub time_us: i64,
    /// Kind.
    pub kind: Kind,
    /// DID.
    pub did: String,
    /// Collection (commits; empty otherwise).
    pub collection: String,
    /// The v1 JSON.
    pub json: Bytes,
    /// The same bytes as a WebSocket text payload (UTF-8 checked once, shared by every client).
    pub text: Utf8Bytes,
    zstd: OnceLock<Bytes>,
}

impl WireEvent {
    /// The event's zstd frame, compressed on first use.
    ///
    /// # Errors
    /// [`WireError::Zstd`].
    pub fn zstd(&self) -> Result<Bytes, WireError> {
        if let Some(z) = self.zstd.get() {
            return Ok(z.clone());
        }
        let z = compress(&self.json)?;
        Ok(self.zstd.get_or_init(|| z).clone())
    }
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(borrow)]
    did: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    commit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    identity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    account: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CommitHead<'a> {
    #[serde(borrow, default)]
    collection: Cow<'a, str>,
}

/// Rewrites one stream event (`payload`, our event JSON) stored at `seq` at `time_us`; `Ok(None)` for a kind
/// Jetstream v1 does not send (`sync`).
///
/// # Errors
/// [`WireError`] when the payload is not an event.
pub fn to_v1(seq: u64, time_us: i64, payload: &[u8]) -> Result<Option<WireEvent>, WireError> {
    let ev: In<'_> = serde_json::from_slice(payload)?;
    let (kind, name, body) = match ev.kind.as_ref() {
        "commit" => (Kind::Commit, "commit", ev.commit),
        "identity" => (Kind::Identity, "identity", ev.identity),
        "account" => (Kind::Account, "account", ev.account),
        _ => return Ok(None),
    };
    let body = body.ok_or(WireError::Missing(name))?;
    let collection = if kind == Kind::Commit {
        serde_json::from_str::<CommitHead<'_>>(body.get())?
            .collection
            .into_owned()
    } else {
        String::new()
    };
    let mut out = Vec::with_capacity(payload.len());
    out.extend_from_slice(b"{\"did\":");
    serde_json::to_writer(&mut out, ev.did.as_ref())?;
    out.extend_from_slice(b",\"time_us\":");
    out.extend_from_slice(time_us.to_string().as_bytes());
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(body.get().as_bytes());
    out.push(b'}');
    let text =
        Utf8Bytes::from(String::from_utf8(out).map_err(|e| {
            WireError::Zstd(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?);
    Ok(Some(WireEvent {
        seq,
        time_us,
        kind,
        did: ev.did.into_owned(),
        collection,
        json: Bytes::from(text.clone()),
        text,
        zstd: OnceLock::new(),
    }))
}

/// One complete zstd frame of `data` with Jetstream's dictionary (dictionary id and content size in the
/// frame header, so any one-shot decoder with the dictionary reads it).
///
/// # Errors
/// [`WireError::Zstd`].
pub fn compress(data: &[u8]) -> Result<Bytes, WireError> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::with_prepared_dictionary(&CDICT)?);
        }
        match slot.as_mut() {
            Some(c) => Ok(Bytes::from(c.compress(data)?)),
            None => Err(WireError::Zstd(std::io::Error::other("no compressor"))),
        }
    })
}

/// Decodes one compressed event (what a client does; used by tests and the benchmark).
///
/// # Errors
/// [`WireError::Zstd`] for a frame that is not zstd with the dictionary.
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut d = zstd::bulk::Decompressor::with_dictionary(DICTIONARY)?;
    Ok(d.decompress(frame, 16 * 1024 * 1024)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = r#"{"did":"did:plc:a","time_us":5,"kind":"commit","seq":9,"time":"2026-07-04T14:38:07.517Z","commit":{"rev":"3mptbypluud2a","operation":"create","collection":"app.bsky.feed.like","rkey":"3mptbyplj5d2a","record":{"$type":"app.bsky.feed.like"},"cid":"bafy"}}"#;

    #[test]
    fn events_take_v1_shape_with_the_store_time() {
        let w = to_v1(7, 1_700_000_000_000_123, COMMIT.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&w.json).unwrap(),
            r#"{"did":"did:plc:a","time_us":1700000000000123,"kind":"commit","commit":{"rev":"3mptbypluud2a","operation":"create","collection":"app.bsky.feed.like","rkey":"3mptbyplj5d2a","record":{"$type":"app.bsky.feed.like"},"cid":"bafy"}}"#
        );
        assert_eq!(w.collection, "app.bsky.feed.like");
        assert_eq!((w.seq, w.kind), (7, Kind::Commit));
        let id = r#"{"did":"did:plc:b","time_us":1,"kind":"identity","seq":3,"time":"t","identity":{"did":"did:plc:b","handle":"b.test","seq":3,"time":"t"}}"#;
        let w = to_v1(8, 2, id.as_bytes()).unwrap().unwrap();
        assert_eq!(
            std::str::from_utf8(&w.json).unwrap(),
            r#"{"did":"did:plc:b","time_us":2,"kind":"identity","identity":{"did":"did:plc:b","handle":"b.test","seq":3,"time":"t"}}"#
        );
        let sync = r#"{"did":"did:plc:b","time_us":1,"kind":"sync","seq":3,"time":"t","sync":{}}"#;
        assert!(to_v1(9, 2, sync.as_bytes()).unwrap().is_none());
        assert!(to_v1(9, 2, b"nope").is_err());
        assert!(to_v1(9, 2, br#"{"did":"d","kind":"commit"}"#).is_err());
    }

    #[test]
    fn zstd_frames_carry_the_dictionary_id_and_round_trip() {
        let w = to_v1(7, 1, COMMIT.as_bytes()).unwrap().unwrap();
        let z = w.zstd().unwrap();
        assert!(z.len() < w.json.len());
        // Frame header: magic, descriptor, then the 4-byte dictionary id 1612007021.
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(
            z.windows(4)
                .take(8)
                .any(|b| b == 1_612_007_021u32.to_le_bytes()),
            "dictionary id in the header"
        );
        assert_eq!(decompress(&z).unwrap(), w.json.to_vec());
        assert_eq!(
            u32::from_le_bytes([DICTIONARY[4], DICTIONARY[5], DICTIONARY[6], DICTIONARY[7]]),
            1_612_007_021
        );
    }
}
