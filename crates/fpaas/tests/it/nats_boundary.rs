//! `fpaas-bus` is the one NATS boundary: no other workspace crate lists async-nats as a normal
//! dependency (dev-dependencies are fine: tests talk to nats-server as an independent peer). Read
//! from `cargo metadata --no-deps`, i.e. from every member's Cargo.toml.
//!
//! Allowed exceptions: the test kit (it starts nats-server and waits for it) and the `fpaas-bench`
//! crate (the raw-publish baseline measures async-nats itself).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CLIENT: &str = "async-nats";
const BOUNDARY: &str = "fpaas-bus";

/// Crates allowed to depend on the client, each while the given path (relative to the workspace
/// root) exists; `None` = always.
const EXCEPTIONS: &[(&str, Option<&str>)] = &[("fpaas-testkit", None), ("fpaas-bench", None)];

/// The members of `metadata` (cargo metadata JSON) other than the boundary that list the client as
/// a normal (non-dev, non-build) dependency and are not excepted under `root`.
fn violations(metadata: &Value, root: &Path) -> Vec<String> {
    let excepted = |name: &str| {
        EXCEPTIONS.iter().any(|(crate_name, while_exists)| {
            *crate_name == name && while_exists.is_none_or(|path| root.join(path).exists())
        })
    };
    let mut out = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        if name == BOUNDARY || excepted(name) {
            continue;
        }
        let normal_client = package["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|dep| dep["name"] == CLIENT && dep["kind"].is_null());
        if normal_client {
            out.push(name.to_owned());
        }
    }
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn metadata(root: &Path) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata JSON")
}

#[test]
fn no_crate_above_bus_depends_on_async_nats() {
    let root = workspace_root();
    let metadata = metadata(&root);
    let members = metadata["packages"].as_array().map_or(0, Vec::len);
    assert!(
        members >= 9,
        "expected the workspace members, got {members}"
    );
    let found = violations(&metadata, &root);
    assert!(
        found.is_empty(),
        "{found:?} list {CLIENT} in [dependencies]: every NATS operation goes through {BOUNDARY} \
         (see docs/architecture.md); move the code into bus or make it a dev-dependency"
    );
}

#[test]
fn the_check_catches_a_normal_dependency_and_ignores_dev_ones() {
    let root = workspace_root();
    let dep = |kind: Value| serde_json::json!({"name": CLIENT, "kind": kind});
    let fake = serde_json::json!({"packages": [
        {"name": BOUNDARY, "dependencies": [dep(Value::Null)]},
        {"name": "fpaas-ingest", "dependencies": [dep(Value::Null)]},
        {"name": "fpaas-ops", "dependencies": [dep("dev".into())]},
        {"name": "fpaas-testkit", "dependencies": [dep(Value::Null)]},
    ]});
    assert_eq!(violations(&fake, &root), vec!["fpaas-ingest".to_owned()]);
    // An exception lapses when its file is gone.
    let elsewhere = std::env::temp_dir().join("fpaas-no-such-workspace");
    let fake = serde_json::json!({"packages": [
        {"name": "fpaas-recordkv", "dependencies": [dep(Value::Null)]},
    ]});
    assert_eq!(
        violations(&fake, &elsewhere),
        vec!["fpaas-recordkv".to_owned()]
    );
}
