//! The health registry: named components (NATS connection, relay client, stream, …), each with a
//! status, a detail string and the time of its last status change. Cheap to clone and update from
//! any task. Readiness is "every required component is up (or degraded)".
//!
//! Every update also sets the gauge `fpaas_ops_component_up{component}` (1 up, 0.5 degraded,
//! 0 down).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The state of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working.
    Up,
    /// Working with reduced capacity or redundancy (e.g. one of two relays down). Still ready.
    Degraded,
    /// Not working (or not started yet). A required component that is down makes the process
    /// not ready.
    Down,
}

impl Status {
    fn gauge(self) -> f64 {
        match self {
            Self::Up => 1.0,
            Self::Degraded => 0.5,
            Self::Down => 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct Component {
    status: Status,
    detail: String,
    required: bool,
    changed_at: SystemTime,
    changed_instant: Instant,
}

/// One component in [`Health::snapshot`] and `/health/detailed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentReport {
    /// Component name.
    pub name: String,
    /// Current status.
    pub status: Status,
    /// Human-readable detail of the current status.
    pub detail: String,
    /// Whether readiness depends on it.
    pub required: bool,
    /// Unix time (ms) of the last status change.
    pub last_change_unix_ms: u64,
    /// Seconds since the last status change.
    pub seconds_since_change: f64,
}

/// A shared registry of component health. Clones share the same registry.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<RwLock<BTreeMap<String, Component>>>,
}

impl Health {
    /// An empty registry (ready: nothing is required yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a component readiness depends on. It starts `Down` with detail "starting" unless it
    /// already has a status; an existing component becomes required.
    pub fn require(&self, name: &str) {
        let mut map = self.write();
        match map.get_mut(name) {
            Some(component) => component.required = true,
            None => {
                map.insert(
                    name.to_owned(),
                    new_component(Status::Down, "starting".into(), true),
                );
                set_gauge(name, Status::Down);
            }
        }
    }

    /// Sets the status and detail of `name` (creating it as not required if unknown). The change
    /// time moves only when the status changes; status changes are logged.
    pub fn set(&self, name: &str, status: Status, detail: impl Into<String>) {
        let detail = detail.into();
        let mut map = self.write();
        match map.get_mut(name) {
            Some(component) => {
                if component.status != status {
                    tracing::info!(component = name, from = ?component.status, to = ?status, detail = %detail, "component status changed");
                    component.status = status;
                    component.changed_at = SystemTime::now();
                    component.changed_instant = Instant::now();
                }
                component.detail = detail;
            }
            None => {
                tracing::info!(component = name, to = ?status, detail = %detail, "component registered");
                map.insert(name.to_owned(), new_component(status, detail, false));
            }
        }
        drop(map);
        set_gauge(name, status);
    }

    /// Shorthand for `set(name, Status::Up, detail)`.
    pub fn up(&self, name: &str, detail: impl Into<String>) {
        self.set(name, Status::Up, detail);
    }

    /// Shorthand for `set(name, Status::Down, detail)`.
    pub fn down(&self, name: &str, detail: impl Into<String>) {
        self.set(name, Status::Down, detail);
    }

    /// The status of `name`, if known.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.read().get(name).map(|c| c.status)
    }

    /// Ready when no required component is `Down`.
    pub fn is_ready(&self) -> bool {
        self.read()
            .values()
            .all(|c| !c.required || c.status != Status::Down)
    }

    /// Required components that are down, as `name: detail`.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, c)| c.required && c.status == Status::Down)
            .map(|(name, c)| format!("{name}: {}", c.detail))
            .collect()
    }

    /// All components, sorted by name.
    pub fn snapshot(&self) -> Vec<ComponentReport> {
        self.read()
            .iter()
            .map(|(name, c)| ComponentReport {
                name: name.clone(),
                status: c.status,
                detail: c.detail.clone(),
                required: c.required,
                last_change_unix_ms: c
                    .changed_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                seconds_since_change: c.changed_instant.elapsed().as_secs_f64(),
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Component>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.components
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Component>> {
        self.components
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_component(status: Status, detail: String, required: bool) -> Component {
    Component {
        status,
        detail,
        required,
        changed_at: SystemTime::now(),
        changed_instant: Instant::now(),
    }
}

fn set_gauge(name: &str, status: Status) {
    metrics::gauge!("fpaas_ops_component_up", "component" => name.to_owned()).set(status.gauge());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_required_components() {
        let health = Health::new();
        assert!(health.is_ready(), "nothing required yet");
        health.require("nats");
        health.set("relay", Status::Down, "connecting");
        assert!(!health.is_ready());
        assert_eq!(
            health.not_ready_reasons(),
            vec!["nats: starting".to_owned()]
        );

        health.up("nats", "connected");
        assert!(health.is_ready(), "relay is not required");
        health.set("nats", Status::Degraded, "slow acks");
        assert!(health.is_ready(), "degraded still serves");
        let clone = health.clone();
        clone.down("nats", "disconnected");
        assert!(!health.is_ready(), "clones share the registry");
    }

    #[test]
    fn change_time_moves_only_on_status_change() {
        let health = Health::new();
        health.up("a", "one");
        let first = health.snapshot()[0].last_change_unix_ms;
        std::thread::sleep(std::time::Duration::from_millis(5));
        health.up("a", "two");
        let snap = &health.snapshot()[0];
        assert_eq!(snap.last_change_unix_ms, first);
        assert_eq!(snap.detail, "two");
        std::thread::sleep(std::time::Duration::from_millis(5));
        health.down("a", "three");
        assert!(health.snapshot()[0].last_change_unix_ms > first);
    }
}
