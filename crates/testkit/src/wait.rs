//! Waiting without sleeps: `eventually` polls a condition until it holds or a deadline passes, and
//! `free_port` hands out loopback ports for servers started by tests.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A condition polled by [`eventually`] / [`eventually_some`] did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("condition did not hold within {timeout:?} ({attempts} attempts)")]
pub struct Elapsed {
    /// The deadline that passed.
    pub timeout: Duration,
    /// How often the condition was evaluated.
    pub attempts: u32,
}

/// Polls `condition` until it returns `true` or `timeout` passes. The first check is immediate,
/// then the pause between checks grows from 5 ms to 100 ms.
///
/// ```ignore
/// eventually(Duration::from_secs(5), || async { stream_len().await == 10 }).await.expect("stream filled");
/// ```
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), Elapsed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some(value)` (returned) or `timeout` passes; the probe is
/// re-evaluated with the same backoff as [`eventually`]. A probe still running at the deadline is
/// abandoned, so give NATS requests inside a probe a short timeout of their own (a request written
/// to a connection that just died is lost and only fails at its timeout).
pub async fn eventually_some<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, Elapsed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(value)) = tokio::time::timeout(remaining, probe()).await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Elapsed { timeout, attempts });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// First port [`free_port`] hands out: below Linux's default ephemeral range (32768–60999).
const PORT_BASE: u32 = 20_000;
/// Number of ports [`free_port`] cycles through (20000–31999).
const PORT_SPAN: u32 = 12_000;
/// Picks handed out by this process so far.
static PICKS: AtomicU32 = AtomicU32::new(0);

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts (and may restart
/// on the same port).
///
/// The port comes from 20000–31999, below the kernel's ephemeral range, so no outgoing connection
/// (the tests make thousands) can take it between this pick and the server's bind — with port 0
/// that race made a nats-server fail to start now and then. A process-wide counter keeps two picks
/// of one test process apart; the starting point is derived from the process id so concurrent test
/// processes start far apart; a port that does not bind is skipped.
///
/// # Panics
/// When the OS refuses to bind a loopback socket (nothing a test could recover from).
pub fn free_port() -> u16 {
    let start = std::process::id().wrapping_mul(2_654_435_761) % PORT_SPAN;
    for _ in 0..PORT_SPAN {
        let n = PICKS.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(PORT_BASE + (start + n) % PORT_SPAN).expect("port range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Every port of the range is taken: fall back to one the kernel picks.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The first of `n` consecutive TCP ports on 127.0.0.1 that were all free a moment ago, for a process that
/// takes a block of neighbouring ports from one base (`fpaas dev --cluster`: clients, monitoring, routes).
/// The block is taken from the same counter as [`free_port`], so no later pick of this process falls inside
/// it.
///
/// # Panics
/// When no block of `n` free ports is found in the range (`n` must be far below its 12,000 ports).
pub fn free_port_block(n: u16) -> u16 {
    let n32 = u32::from(n.max(1));
    let start = std::process::id().wrapping_mul(2_654_435_761) % PORT_SPAN;
    for _ in 0..PORT_SPAN / n32 {
        let first = PICKS.fetch_add(n32, Ordering::Relaxed);
        let base = (start + first) % PORT_SPAN;
        if base + n32 > PORT_SPAN {
            continue; // the block would wrap around the range
        }
        let all_free = (0..n32).all(|i| {
            u16::try_from(PORT_BASE + base + i)
                .is_ok_and(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if all_free {
            return u16::try_from(PORT_BASE + base).expect("port range");
        }
    }
    panic!(
        "no block of {n} free loopback ports in {PORT_BASE}-{}",
        PORT_BASE + PORT_SPAN - 1
    )
}

/// Sync polling for the process helpers: `true` once `condition` held before `timeout`.
pub(crate) fn poll_blocking(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
