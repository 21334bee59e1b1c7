//! A webhook receiver for tests ([`WebhookReceiver`]): a real axum server on `127.0.0.1:0` that records every
//! request (method, path, headers, body, arrival time) and answers each one as scripted — a queue of
//! [`Reply`]s, then a responder closure, then `200`. A reply can set the status, headers (`Retry-After`) and
//! body, wait before answering, or drop the connection without an answer.
//!
//! Connections are served one by one with hyper so that a reply can close its own connection: the handler
//! signals the connection's task, which drops the connection (the client sees the socket close mid-request).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::wait::{Elapsed, eventually_some};

/// Largest request body the receiver reads (64 MiB); a larger body is answered 413 and recorded empty.
const MAX_BODY: usize = 64 << 20;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Position among the receiver's requests, from 0.
    pub index: usize,
    /// `POST`, `GET`, …
    pub method: String,
    /// Path and query, e.g. `/hook?x=1`.
    pub path: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The body, exactly as received.
    pub body: Vec<u8>,
    /// When the request's head arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with a status, headers and body, after `delay`.
    Respond {
        /// The status code.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// The response body.
        body: Vec<u8>,
        /// Wait this long before answering.
        delay: Duration,
    },
    /// Close the connection without answering, after `delay`.
    Drop {
        /// Wait this long before closing.
        delay: Duration,
    },
}

impl Reply {
    /// Answer `status` at once, with an empty body.
    pub fn status(status: u16) -> Self {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// Answer `200` at once.
    pub fn ok() -> Self {
        Reply::status(200)
    }

    /// Close the connection without an answer.
    pub fn drop_connection() -> Self {
        Reply::Drop {
            delay: Duration::ZERO,
        }
    }

    /// Adds a `Retry-After` header (`"5"` or an HTTP date).
    #[must_use]
    pub fn retry_after(self, value: &str) -> Self {
        self.header("retry-after", value)
    }

    /// Adds a response header (ignored by [`Reply::Drop`]).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// Sets the response body (ignored by [`Reply::Drop`]).
    #[must_use]
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        if let Reply::Respond { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }

    /// Waits `wait` before answering or closing.
    #[must_use]
    pub fn delay(mut self, wait: Duration) -> Self {
        match &mut self {
            Reply::Respond { delay, .. } | Reply::Drop { delay } => *delay = wait,
        }
        self
    }
}

/// A responder: the reply to a request once the queue is empty.
type Responder = Box<dyn Fn(&Received) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    received: Vec<Received>,
    queue: VecDeque<Reply>,
    responder: Option<Responder>,
}

/// A recording, scriptable HTTP receiver on a loopback port. Dropped: stops accepting and closes its
/// connections.
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The connection's "close me" signal, handed to the handler.
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

impl WebhookReceiver {
    /// Starts a receiver on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(Mutex::new(State::default()));
        let (shutdown, stop) = watch::channel(false);
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        tokio::spawn(accept_loop(listener, router, stop));
        WebhookReceiver {
            addr,
            state,
            shutdown,
        }
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues replies; each request takes the next one, then the responder's, then `200`.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().queue.extend(replies);
    }

    /// Sets the responder used once the queue is empty.
    pub fn respond_with(&self, responder: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        self.lock().responder = Some(Box::new(responder));
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.lock().received.len()
    }

    /// Waits until at least `n` requests arrived and returns all of them.
    ///
    /// # Errors
    /// When fewer than `n` arrived within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>, Elapsed> {
        eventually_some(timeout, || {
            let all = self.received();
            async move { (all.len() >= n).then_some(all) }
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let kill = Arc::new(Notify::new());
        let app = router.clone().layer(Extension(ConnKill(Arc::clone(&kill))));
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            // Dropping `conn` closes the socket: on a `Reply::Drop`, and when the receiver is dropped.
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    Extension(kill): Extension<ConnKill>,
    request: Request,
) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let (body, too_large) = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => (bytes.to_vec(), false),
        Err(_) => (Vec::new(), true),
    };
    let reply = {
        let mut state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let received = Received {
            index: state.received.len(),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts.headers,
            body,
            at,
        };
        let reply = match state.queue.pop_front() {
            Some(reply) => reply,
            None => state
                .responder
                .as_ref()
                .map_or_else(Reply::ok, |responder| responder(&received)),
        };
        state.received.push(received);
        if too_large { Reply::status(413) } else { reply }
    };
    match reply {
        Reply::Drop { delay } => {
            tokio::time::sleep(delay).await;
            kill.0.notify_one();
            std::future::pending().await
        }
        Reply::Respond {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
            response
        }
    }
}
