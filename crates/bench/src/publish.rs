//! Publishing for the benches' workloads and baselines: a message exactly as the shuffler publishes it
//! ([`Prepared::event`], from `fpaas_event::WireMessage`) or a bare KV value
//! ([`Prepared::bare`]), and bare JetStream async publishing with a bounded number of acks in flight
//! ([`publish_all`]).

use std::future::IntoFuture;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use fpaas_event::{Event, WireMessage};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::error::{Context, Result};

/// Acks in flight of the benches' own publishers unless a flag sets it.
pub const ACKS_IN_FLIGHT: usize = 1024;

/// One message ready to publish.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Subject.
    pub subject: String,
    /// Headers; `None` publishes without a header block (KV values).
    pub headers: Option<HeaderMap>,
    /// Payload.
    pub payload: Bytes,
}

impl Prepared {
    /// `ev` exactly as the shuffler publishes it: its [`WireMessage`] (subject, `Nats-Msg-Id`, DID / seq /
    /// time headers, JSON payload).
    pub fn event(ev: &Event) -> Self {
        let wire = WireMessage::from_event(ev);
        let mut headers = HeaderMap::new();
        headers.insert(fpaas_event::HEADER_MSG_ID, wire.msg_id.as_str());
        for (name, value) in &wire.headers {
            headers.insert(*name, value.as_str());
        }
        Self {
            subject: wire.subject,
            headers: Some(headers),
            payload: wire.payload.into(),
        }
    }

    /// `payload` on `subject` without headers (a raw KV put: `$KV.<bucket>.<key>`).
    pub fn bare(subject: String, payload: Bytes) -> Self {
        Self {
            subject,
            headers: None,
            payload,
        }
    }
}

/// Publishes `msgs` with JetStream async publish, at most `max_in_flight` acks outstanding, and waits for
/// every ack. Returns how many were published.
///
/// # Errors
/// The first failed publish or ack.
pub async fn publish_all(
    js: &async_nats::jetstream::Context,
    msgs: impl IntoIterator<Item = Prepared>,
    max_in_flight: usize,
) -> Result<u64> {
    type AckFuture = <PublishAckFuture as IntoFuture>::IntoFuture;
    let mut in_flight: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut published = 0;
    for m in msgs {
        while in_flight.len() >= max_in_flight.max(1) {
            if let Some(ack) = in_flight.next().await {
                ack.context("publish ack")?;
            }
        }
        let ack = match m.headers {
            Some(headers) => js.publish_with_headers(m.subject, headers, m.payload).await,
            None => js.publish(m.subject, m.payload).await,
        }
        .context("publish")?;
        in_flight.push(ack.into_future());
        published += 1;
    }
    while let Some(ack) = in_flight.next().await {
        ack.context("publish ack")?;
    }
    Ok(published)
}
