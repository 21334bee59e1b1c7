//! The MapReduce examples (`examples/mapreduce/`) run as a user runs them — each its own local stack (`fpaas
//! dev`: nats-server, the shuffler on relay-sim, the API, a worker) — with short windows, and what they print
//! is checked: the chained subscription received exactly the reducer's answers; the top 10 of each minute agree
//! with the per-post counts stage 2 wrote into state.

use std::process::Command;

use serde_json::Value;

/// Runs `examples/mapreduce/<script>` with the test build of `fpaas`; its JSON lines.
fn run_example(script: &str, args: &[&str]) -> Vec<Value> {
    let root = fpaas_testkit::workspace_root();
    let out = Command::new(fpaas_testkit::python())
        .arg(root.join("examples/mapreduce").join(script))
        .args(args)
        .env("FPAAS_BIN", env!("CARGO_BIN_EXE_fpaas"))
        .env("FPAAS_NATS_SERVER", fpaas_testkit::nats_server_bin())
        .current_dir(&root)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn the_serverless_reducer_example_chains_each_answer_once() {
    let lines = run_example("reducer.py", &["--run-secs", "12"]);
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["summary"], true, "{summary}");
    assert_eq!(summary["match"], true, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(summary["unexpected"], 0, "{summary}");
    let answered = summary["answer_events"].as_u64().unwrap();
    assert!(answered > 10, "{summary}");
    let printed = lines.iter().filter(|l| l["stage"] == "B").count() as u64;
    assert_eq!(printed, summary["chained_events"].as_u64().unwrap());
    assert!(printed + 200 >= answered, "{summary}");
}

#[test]
fn the_top_posts_example_agrees_with_the_counts_it_wrote_to_state() {
    let lines = run_example(
        "top_posts.py",
        &[
            "--window-secs",
            "5",
            "--lateness-secs",
            "4",
            "--run-secs",
            "22",
        ],
    );
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["match"], true, "{summary}");
    let windows = summary["windows"].as_u64().unwrap();
    assert!(windows >= 2, "{summary}");
    assert_eq!(summary["checked"].as_u64(), Some(windows));
    let printed: Vec<&Value> = lines.iter().filter(|l| l["stage"] == 3).collect();
    assert_eq!(printed.len() as u64, windows);
    for w in printed {
        let top = w["top10"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= 10, "{w}");
        let counts: Vec<u64> = top.iter().map(|t| t[1].as_u64().unwrap()).collect();
        assert!(
            counts.windows(2).all(|p| p[0] >= p[1]),
            "most liked first: {w}"
        );
        assert!(
            counts.iter().sum::<u64>() <= w["likes"].as_u64().unwrap(),
            "{w}"
        );
    }
}
