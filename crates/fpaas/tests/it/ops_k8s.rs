//! `deploy/k8s` validated offline against the Kubernetes schemas (PyPI's `kubernetes-validate`, strict: unknown
//! fields refused), and the rules the operations docs promise: every workload has readiness on `/ready` and
//! liveness on `/health`, resource requests and a disruption budget; the KEDA `ScaledObject` (a CRD the
//! validator has no schema for) scales the worker Deployment on a metric the workers export.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use fpaas_testkit::workspace_root;
use serde_json::Value;

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

fn venv(bin: &str) -> PathBuf {
    let path = workspace_root().join(".tools/venv/bin").join(bin);
    assert!(
        path.is_file(),
        "{} missing: bash scripts/setup-tools.sh",
        path.display()
    );
    path
}

/// The documents of a YAML file, as JSON (PyYAML, which kubernetes-validate brings).
fn documents(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new(venv("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = k8s_files();
    assert!(files.len() >= 6, "{files:?}");
    let out = Command::new(venv("kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    let passed = text.matches(" passed for resource ").count();
    assert!(passed >= 12, "{passed} resources validated: {text}");
    // Only the KEDA CRD lacks a schema.
    for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(line.contains("ScaledObject"), "{line}");
    }
    // The validator does refuse a wrong manifest.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two, selector: {}, template: {}}\n",
    )
    .unwrap();
    let out = Command::new(venv("kubernetes-validate"))
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong manifest is refused");
}

#[test]
fn workloads_have_probes_requests_and_budgets_and_keda_scales_the_workers_on_their_lag() {
    let docs: Vec<Value> = k8s_files().iter().flat_map(|f| documents(f)).collect();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let mut workloads = BTreeSet::new();
    for w in kind("Deployment").chain(kind("StatefulSet")) {
        let name = w["metadata"]["name"].as_str().unwrap().to_owned();
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{name}/{}: memory request",
                c["name"]
            );
            if c["image"].as_str().unwrap().starts_with("fpaas") {
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready", "{name}");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health", "{name}");
                assert_eq!(
                    w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true,
                    "{name}"
                );
            }
        }
        let app = w["spec"]["selector"]["matchLabels"]["app"]
            .as_str()
            .unwrap()
            .to_owned();
        workloads.insert((name, app));
    }
    let budgets: BTreeSet<String> = kind("PodDisruptionBudget")
        .map(|p| {
            p["spec"]["selector"]["matchLabels"]["app"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for (name, app) in &workloads {
        if name != "record-kv" {
            assert!(budgets.contains(app), "{name} has a PodDisruptionBudget");
        }
    }
    // NATS: three replicas, R=3 everywhere else.
    let nats = kind("StatefulSet")
        .find(|s| s["metadata"]["name"] == "nats")
        .unwrap();
    assert_eq!(nats["spec"]["replicas"], 3);
    // KEDA: the worker Deployment, scaled on an exported worker metric.
    let scaled: Vec<&Value> = kind("ScaledObject").collect();
    assert_eq!(scaled.len(), 1);
    let so = scaled[0];
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    let target = so["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
    assert!(
        kind("Deployment").any(|d| d["metadata"]["name"] == target),
        "{target}"
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    let metrics_md = std::fs::read_to_string(workspace_root().join("docs/metrics.md")).unwrap();
    let metric: String = query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("fpaas_"))
        .expect("an fpaas metric")
        .to_owned();
    assert!(
        metrics_md.contains(&format!("| `{metric}` |")),
        "{metric} is exported (docs/metrics.md is checked against the running processes)"
    );
    assert!(so["spec"]["minReplicaCount"].as_u64() >= Some(1));
}
