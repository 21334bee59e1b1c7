//! Test helpers: a real tokio-tungstenite client for the simulator, frame header/body decoding with a
//! generic IPLD decoder, and `eventually` polling.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use ipld_core::ipld::Ipld;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(Duration::from_secs(5), connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

/// What the client saw next.
#[derive(Debug)]
pub enum Got {
    Frame(Vec<u8>),
    Closed,
}

pub async fn next(ws: &mut Ws) -> Got {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
        {
            Some(Ok(Message::Binary(b))) => return Got::Frame(b.to_vec()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Got::Closed,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads exactly `n` binary frames.
pub async fn read_n(ws: &mut Ws, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(ws).await {
            Got::Frame(f) => out.push(f),
            Got::Closed => panic!("closed after {} of {n} frames", out.len()),
        }
    }
    out
}

/// Decodes a frame into (header, body) with a generic DAG-CBOR decoder.
pub fn decode(frame: &[u8]) -> Option<(Ipld, Ipld)> {
    let mut it = serde_ipld_dagcbor::de::Deserializer::from_slice(frame).into_iter::<Ipld>();
    let h = it.next()?.ok()?;
    let b = it.next()?.ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((h, b))
}

pub fn field<'a>(v: &'a Ipld, k: &str) -> Option<&'a Ipld> {
    match v {
        Ipld::Map(m) => m.get(k),
        _ => None,
    }
}

/// `t` of a message frame, or `"error:<code>"` for error frames; `None` when undecodable.
pub fn kind(frame: &[u8]) -> Option<String> {
    let (h, b) = decode(frame)?;
    match field(&h, "op") {
        Some(Ipld::Integer(1)) => match field(&h, "t") {
            Some(Ipld::String(t)) => Some(t.clone()),
            _ => None,
        },
        Some(Ipld::Integer(-1)) => match field(&b, "error") {
            Some(Ipld::String(e)) => Some(format!("error:{e}")),
            _ => None,
        },
        _ => None,
    }
}

pub fn seq(frame: &[u8]) -> Option<i64> {
    let (_, b) = decode(frame)?;
    match field(&b, "seq") {
        Some(Ipld::Integer(s)) => i64::try_from(*s).ok(),
        _ => None,
    }
}

pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
