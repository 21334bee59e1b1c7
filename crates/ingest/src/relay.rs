//! The relay WebSocket client: connects to `com.atproto.sync.subscribeRepos` (optionally from a cursor) and
//! yields raw binary frames. Decoding is left to the caller, so a malformed frame is the caller's counted drop,
//! never a connection failure.

use futures::StreamExt;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The XRPC path of the firehose.
pub const SUBSCRIBE_REPOS_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

/// Largest WebSocket message accepted. Frames above the protocol's 5 MB limit are still read (and then
/// rejected by the decoder with a counted `frame_too_large`), so that one oversize frame cannot wedge a
/// reconnect loop on the same cursor.
pub const MAX_WS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Errors of the relay connection.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay URL is not ws:// or wss://.
    #[error("invalid relay url {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Connecting or the WebSocket handshake failed.
    #[error("connecting to {url}")]
    Connect {
        /// The full URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// Connecting took longer than the timeout.
    #[error("connecting to {url} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The full URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The connection failed while reading.
    #[error("reading from relay")]
    Read(#[source] Box<tokio_tungstenite::tungstenite::Error>),
}

/// Build the full subscribeRepos URL from a relay base URL (`wss://bsky.network`) or a full URL, with an
/// optional cursor.
pub fn subscribe_url(relay: &str, cursor: Option<i64>) -> Result<String, RelayError> {
    let bad = |reason| RelayError::BadUrl {
        url: relay.to_string(),
        reason,
    };
    let rest = relay
        .strip_prefix("wss://")
        .or_else(|| relay.strip_prefix("ws://"))
        .ok_or_else(|| bad("must start with ws:// or wss://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("missing host"));
    }
    // Drop any query the user put on the URL: the cursor is ours to set.
    let base = relay
        .split('?')
        .next()
        .unwrap_or(relay)
        .trim_end_matches('/');
    let mut url = if base.ends_with(SUBSCRIBE_REPOS_PATH) {
        base.to_string()
    } else {
        format!("{base}{SUBSCRIBE_REPOS_PATH}")
    };
    if let Some(c) = cursor {
        url.push_str(&format!("?cursor={c}"));
    }
    Ok(url)
}

/// An open firehose connection.
pub struct RelayConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    url: String,
}

impl RelayConnection {
    /// Connect to `relay` (base or full URL), resuming after `cursor` when given.
    pub async fn connect(
        relay: &str,
        cursor: Option<i64>,
        timeout: Duration,
    ) -> Result<Self, RelayError> {
        let url = subscribe_url(relay, cursor)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
        let fut = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let (ws, _resp) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RelayError::ConnectTimeout {
                url: url.clone(),
                timeout,
            })?
            .map_err(|e| RelayError::Connect {
                url: url.clone(),
                source: Box::new(e),
            })?;
        Ok(Self { ws, url })
    }

    /// The URL this connection was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next binary frame; `Ok(None)` when the relay closed the connection. Text, ping and pong messages are
    /// skipped (tungstenite answers pings itself).
    pub async fn next_frame(&mut self) -> Result<Option<bytes::Bytes>, RelayError> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(RelayError::Read(Box::new(e))),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Close the connection politely (best effort).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            subscribe_url("wss://bsky.network", None).unwrap(),
            "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
        );
        assert_eq!(
            subscribe_url("ws://127.0.0.1:9/", Some(42)).unwrap(),
            "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos?cursor=42"
        );
        assert_eq!(
            subscribe_url(
                "ws://h/xrpc/com.atproto.sync.subscribeRepos?cursor=1",
                Some(7)
            )
            .unwrap(),
            "ws://h/xrpc/com.atproto.sync.subscribeRepos?cursor=7"
        );
        assert!(subscribe_url("http://h", None).is_err());
        assert!(subscribe_url("ws://", None).is_err());
    }
}
