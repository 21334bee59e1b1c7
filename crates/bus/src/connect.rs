//! Connecting to NATS so that an outage never ends the process: the first connect is retried in the
//! background, reconnects are unlimited with capped exponential backoff, and connection events are
//! logged and counted (`fpaas_bus_connection_events_total{event}`).

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::backoff::Backoff;
use crate::error::{BusError, BusErrorKind};

/// Upper bound of the reconnect backoff.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// `Ok` while `client` is connected, else the connection state in words (for health reports).
pub fn connection_state(client: &Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(state.to_string()),
    }
}

/// Connects to `urls` (one URL or several separated by commas, e.g. the nodes of a cluster) with the
/// client name `name`.
///
/// Returns as soon as the options are valid: with `retry_on_initial_connect` the connection is
/// established in the background, so a process started before NATS keeps running and its requests
/// and publishes time out (and are retried by their callers) until the server appears. Reconnects
/// are unlimited; the delay grows 0, 10, 20, 40 ms … up to 2 s, short enough that the duplicate
/// window (minutes) easily covers a reconnect plus the republish of un-acked messages.
///
/// # Errors
/// [`BusErrorKind::Connect`] when a URL cannot be parsed.
pub async fn connect(urls: &str, name: &str) -> Result<Client, BusError> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|err| {
                BusError::with_source(
                    BusErrorKind::Connect,
                    format!("invalid NATS URL {url:?}"),
                    err,
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(BusError::new(BusErrorKind::Connect, "no NATS URL given"));
    }
    let client_name = name.to_owned();
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let client_name = client_name.clone();
            async move { log_event(&client_name, &event) }
        })
        .connect(addrs)
        .await
        .map_err(|err| BusError::with_source(BusErrorKind::Connect, "connect to NATS", err))
}

/// Backoff for reconnect attempt `attempts` (1-based): immediate, then doubling from 10 ms to 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let attempt = u32::try_from(attempts - 2).unwrap_or(u32::MAX);
    Backoff::ceiling_at(Duration::from_millis(10), MAX_RECONNECT_DELAY, attempt)
}

fn log_event(client: &str, event: &Event) {
    let label = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("fpaas_bus_connection_events_total", "event" => label).increment(1);
    match event {
        Event::Connected => tracing::info!(client, "nats connected"),
        // Closing is what every process does on its way out (and what draining ends in): not a warning.
        Event::Closed | Event::Draining => {
            tracing::info!(client, event = %event, "nats connection event")
        }
        _ => tracing::warn!(client, event = %event, "nats connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_caps() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(1000), MAX_RECONNECT_DELAY);
    }
}
