//! The wire message: what one event is on the bus — subject, `Nats-Msg-Id`, headers, payload — built in one
//! place and read back in one place. Every producer (the shuffler, benchmarks, test fixtures) publishes
//! [`WireMessage::from_event`]; every consumer parses [`decode_payload`] and reads headers by the constants here.
//! Pure: the bus crate turns a [`WireMessage`] into a NATS publish.
//!
//! | part | value |
//! |---|---|
//! | subject | [`crate::subject()`]: `atproto.firehose.<kind>…` (no DID, no rkey) |
//! | `Nats-Msg-Id` | [`crate::msg_id`]: the dedup id, the same whichever relay the event came through |
//! | `Fpaas-Did` | the event's DID — match DIDs without parsing JSON |
//! | `Fpaas-Seq` | the relay seq of the source frame |
//! | `Fpaas-Time-Us` | `time_us` |
//! | payload | the event JSON ([`Event::to_json_vec`]) |

use crate::model::Event;

/// JetStream's dedup header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header carrying the event's DID, so a matcher can filter by DID without parsing the JSON payload.
pub const HEADER_DID: &str = "Fpaas-Did";
/// Header carrying the relay sequence number of the source frame.
pub const HEADER_SEQ: &str = "Fpaas-Seq";
/// Header carrying `time_us`.
pub const HEADER_TIME_US: &str = "Fpaas-Time-Us";

/// Bytes the NATS header block adds beyond the header names and values (`NATS/1.0\r\n`, `: ` and `\r\n` per
/// header, the closing `\r\n`), for estimating a message's stored size against a stream's `max_msg_size`.
const HEADER_FRAMING: usize = 12;
/// Per-header framing (`: ` and `\r\n`).
const PER_HEADER: usize = 4;

/// One event as a bus message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    /// The subject.
    pub subject: String,
    /// The `Nats-Msg-Id` (dedup id).
    pub msg_id: String,
    /// The other headers, in order: `Fpaas-Did`, `Fpaas-Seq`, `Fpaas-Time-Us`.
    pub headers: Vec<(&'static str, String)>,
    /// The event JSON.
    pub payload: Vec<u8>,
}

impl WireMessage {
    /// The message of `event`.
    pub fn from_event(event: &Event) -> Self {
        Self {
            subject: crate::subject(event),
            msg_id: crate::msg_id(event),
            headers: vec![
                (HEADER_DID, event.did.clone()),
                (HEADER_SEQ, event.seq.to_string()),
                (HEADER_TIME_US, event.time_us.to_string()),
            ],
            payload: event.to_json_vec(),
        }
    }

    /// The size JetStream accounts for the message against `max_msg_size`: payload plus the header block
    /// (the subject is not counted).
    pub fn stored_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + PER_HEADER)
            .sum();
        self.payload.len()
            + HEADER_MSG_ID.len()
            + self.msg_id.len()
            + PER_HEADER
            + headers
            + HEADER_FRAMING
    }

    /// The header value of `name` (`Nats-Msg-Id` included).
    pub fn header(&self, name: &str) -> Option<&str> {
        if name == HEADER_MSG_ID {
            return Some(&self.msg_id);
        }
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a bus payload is not an event.
#[derive(Debug, thiserror::Error)]
#[error("payload is not an event: {0}")]
pub struct WireError(#[from] serde_json::Error);

/// Parses a bus payload back into its event.
///
/// # Errors
/// [`WireError`] when the payload is not event JSON.
pub fn decode_payload(payload: &[u8]) -> Result<Event, WireError> {
    Ok(serde_json::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountEvent, Kind};

    #[test]
    fn message_of_an_event_and_back() {
        let event = Event {
            did: "did:plc:abc".into(),
            time_us: 1_700_000_000_000_000,
            kind: Kind::Account,
            seq: 42,
            time: "2023-11-14T22:13:20Z".into(),
            commit: None,
            identity: None,
            account: Some(AccountEvent {
                active: false,
                did: "did:plc:abc".into(),
                seq: 42,
                time: "2023-11-14T22:13:20Z".into(),
                status: Some("deleted".into()),
            }),
            sync: None,
        };
        let m = WireMessage::from_event(&event);
        assert_eq!(m.subject, "atproto.firehose.account.deleted");
        assert_eq!(m.header(HEADER_DID), Some("did:plc:abc"));
        assert_eq!(m.header(HEADER_SEQ), Some("42"));
        assert_eq!(m.header(HEADER_TIME_US), Some("1700000000000000"));
        assert_eq!(m.header(HEADER_MSG_ID), Some(m.msg_id.as_str()));
        assert_eq!(decode_payload(&m.payload).expect("decode"), event);
        // NATS/1.0\r\n + "Nats-Msg-Id: …\r\n" + three more headers + \r\n, then the payload.
        let block = format!(
            "NATS/1.0\r\nNats-Msg-Id: {}\r\nFpaas-Did: did:plc:abc\r\nFpaas-Seq: 42\r\nFpaas-Time-Us: 1700000000000000\r\n\r\n",
            m.msg_id
        );
        assert_eq!(m.stored_size(), block.len() + m.payload.len());
        assert!(decode_payload(b"{\"not\":\"an event\"}").is_err());
    }
}
