//! The web console in a real browser: `fpaas dev` (NATS, relay simulator, shuffler, API, worker) and
//! `tests/browser/console.mjs` driving Debian's chromium through playwright-core (both installed by
//! `scripts/setup-tools.sh`): sign in, the subscriptions list with live stats, a bad JMESPath shown in the
//! playground's form, results from real events, a subscription saved from the playground, its matches in the
//! live tail, a dead letter inspected and replayed (removed, and received by the script's receiver), the
//! topics and state views. The
//! screenshots go to a temporary folder; with `FPAAS_UPDATE_SCREENSHOTS=1` to `docs/console/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fpaas_testkit::{WebhookReceiver, eventually_some, free_port_block, workspace_root};
use serde_json::Value;

use crate::cli_dev::Dev;

const SHOTS: &[&str] = &[
    "sign-in",
    "subscriptions",
    "playground-error",
    "playground",
    "live-tail",
    "dead-letters",
];

fn tool(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/setup-tools.sh` (installs Debian's chromium and playwright-core)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_signs_in_runs_the_playground_tails_and_replays_a_dead_letter_in_chromium() {
    let chromium = tool(PathBuf::from("/usr/bin/chromium"));
    let playwright = tool(workspace_root().join(".tools/browser/node_modules/playwright-core"));
    let base = free_port_block(11);
    let demo_receiver = WebhookReceiver::start().await;
    let dev = Dev::spawn(base, &demo_receiver.addr().to_string(), false, &[]);
    dev.wait_ready(base).await;
    let http = reqwest::Client::new();
    let demo_path = dev.state().join("demo.json");
    let demo: Value = eventually_some(Duration::from_secs(30), || async {
        std::fs::read(&demo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .await
    .unwrap_or_else(|e| panic!("demo.json: {e}\n{}", dev.log()));
    let token = demo["token"].as_str().expect("demo token").to_owned();
    let api = format!("http://127.0.0.1:{}", base + 10);

    // The page and its assets: built in, with their types and the CSP; an unknown file is a JSON 404.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let r = http.get(format!("{api}{path}")).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            h["content-type"]
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    let missing = http
        .get(format!("{api}/console/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A topic for the Topics view.
    let topic = http
        .post(format!("{api}/v1/topics"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "console-demo", "max_bytes": 1_048_576}))
        .send()
        .await
        .unwrap();
    assert_eq!(topic.status(), 201);

    let update = std::env::var("FPAAS_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let shots = if update {
        workspace_root().join("docs/console")
    } else {
        tmp.path().to_path_buf()
    };
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(workspace_root().join("tests/browser/console.mjs"))
        .env("FPAAS_CONSOLE_URL", &api)
        .env("FPAAS_CONSOLE_KEY", &token)
        .env("FPAAS_CONSOLE_SHOTS", &shots)
        .env("FPAAS_PLAYWRIGHT", &playwright)
        .env("FPAAS_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .unwrap_or_else(|_| panic!("the browser script took over 150 s\n{}", dev.log()))
        .expect("node runs (install Node.js 20+)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        out.status,
        shots.display(),
        dev.log()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the script's report: {e}: {stdout}"));
    assert_eq!(report["ok"], true, "{report}");
    eprintln!(
        "console browser test: {:.1} s; {report}",
        started.elapsed().as_secs_f64()
    );
    for name in SHOTS {
        let png = std::fs::read(shots.join(format!("{name}.png")))
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(
            png.len() > 5_000 && png.starts_with(b"\x89PNG"),
            "{name}.png"
        );
    }
    // What the browser did went through the API: the subscription exists, its replayed dead letter is gone.
    let sub = report["sub"].as_str().expect("sub id");
    let stats: Value = http
        .get(format!("{api}/v1/subscriptions/{sub}/stats"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stats["stats"]["dead_lettered_events"].as_u64() > Some(0),
        "{stats}"
    );
}
