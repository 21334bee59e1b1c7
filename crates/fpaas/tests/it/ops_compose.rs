//! `deploy/compose` against Debian's `docker-compose` (installed by `scripts/setup-tools.sh`): the file is valid
//! and resolves to the stack the operations docs describe — NATS with its monitoring port, the exporter,
//! Prometheus, Grafana on 3001 with the provisioned dashboards, the FPaaS processes (a shuffler pair, the API,
//! a worker, record-kv) built from the repository's Dockerfile — and a 3-node cluster profile. No container
//! engine runs here: the images are not built or started (docs/operations.md says so).

use std::process::Command;

use fpaas_testkit::workspace_root;

fn compose(args: &[&str], admin_token: Option<&str>) -> std::process::Output {
    let mut c = Command::new("docker-compose");
    c.arg("-f")
        .arg(workspace_root().join("deploy/compose/docker-compose.yml"))
        .args(args)
        .env_remove("FPAAS_ADMIN_TOKEN");
    if let Some(t) = admin_token {
        c.env("FPAAS_ADMIN_TOKEN", t);
    }
    c.output()
        .expect("docker-compose (bash scripts/setup-tools.sh installs Debian's)")
}

#[test]
fn the_compose_file_is_valid_and_describes_the_whole_stack() {
    let out = compose(&["config"], Some("compose-admin-token-0123"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for published in ["4222", "8222", "7777", "9090", "3001", "8080"] {
        assert!(
            text.contains(&format!("published: {published}"))
                || text.contains(&format!("{published}:")),
            "port {published}: {text}"
        );
    }
    for needle in [
        "GF_SECURITY_ADMIN_PASSWORD: admin",
        "/etc/grafana/provisioning",
        "/var/lib/grafana/dashboards",
        "/etc/prometheus",
        "-jsz=all",
        "--instance",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let services = compose(&["config", "--services"], Some("compose-admin-token-0123"));
    let services: Vec<String> = String::from_utf8_lossy(&services.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for s in [
        "nats",
        "nats-exporter",
        "prometheus",
        "grafana",
        "shuffler-a",
        "shuffler-b",
        "api",
        "worker",
        "record-kv",
        "nats-1",
        "nats-2",
        "nats-3",
    ] {
        assert!(services.iter().any(|x| x == s), "service {s}: {services:?}");
    }
    // The API refuses to start without an admin token: compose says so instead of starting it open.
    let out = compose(&["config"], None);
    assert!(
        !out.status.success(),
        "missing FPAAS_ADMIN_TOKEN is refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FPAAS_ADMIN_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_runs_as_a_non_root_user_with_a_ready_check() {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage: {froms} stages");
    assert!(text.contains("USER 10001"), "non-root");
    assert!(
        text.contains("HEALTHCHECK") && text.contains("/ready"),
        "health check on /ready"
    );
    assert!(text.contains("--locked"), "built with the lockfile");
}
