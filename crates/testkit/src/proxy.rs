//! A TCP proxy on loopback that a test can cut and restore ([`TcpProxy`]): put it between one process and a
//! nats-server or a relay to take that one path down (open connections are closed at once, new ones are
//! accepted and closed immediately) while everything else keeps running. [`TcpProxy::cut_from`] cuts only the
//! connections opened from a given one on, so two clients of one URL can be told apart by connection order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct State {
    /// New connections are closed at once.
    refuse: bool,
    /// Connections proxied so far, in order, each with its cut switch.
    conns: Vec<watch::Sender<bool>>,
}

/// A cuttable TCP proxy to an upstream address. Dropped: stops accepting and closes its connections.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`host:port`).
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.to_owned();
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut_rx = {
                    let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if st.refuse {
                        continue; // dropping `client` closes it
                    }
                    let (tx, rx) = watch::channel(false);
                    st.conns.push(tx);
                    rx
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every proxied connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.cut_from(0);
    }

    /// Closes the connections from the `first`-th one (0-based, in accept order) on, and refuses new ones until
    /// [`restore`](Self::restore); earlier connections stay up.
    pub fn cut_from(&self, first: usize) {
        let mut st = self.lock();
        st.refuse = true;
        for c in st.conns.iter().skip(first) {
            c.send_replace(true);
        }
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.lock().refuse = false;
    }

    /// Connections proxied so far.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
