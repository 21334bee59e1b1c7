//! `docs/config.md` is generated from the config structs (their doc comments and `Default`, through
//! `fpaas_ops::config::markdown`), so every option, default and environment variable is written once. This test
//! fails when the committed file is stale; `FPAAS_UPDATE_GOLDEN=1` regenerates it.

use fpaas_ops::config::markdown;

fn generated() -> String {
    let mut s = String::from(
        "# Configuration reference\n\n\
         Generated from the config structs by `crates/fpaas/tests/it/config_docs.rs` \
         (`FPAAS_UPDATE_GOLDEN=1 cargo test -p fpaas --test it config_docs::` after a change). Every long-running \
         command reads its configuration the same way (`fpaas_ops::config`): the defaults below, then the file \
         given with `--config` (JSON, or TOML when the name ends in `.toml`, with these field names), then one \
         environment variable per option, then the command's flags. `--print-config` prints the result as JSON \
         and exits. A file or variable that names an unknown option, or a value that does not fit, stops the \
         command with an error naming it.\n\n",
    );
    s.push_str(&markdown::<fpaas_ingest::ShufflerConfig>(
        "`fpaas shuffler`",
        "Relay → JetStream. See `docs/shuffler.md` for what the cursor, lease and limits mean.",
    ));
    s.push('\n');
    s.push_str(&markdown::<fpaas_recordkv::RecordKvConfig>(
        "`fpaas record-kv`",
        "The firehose stream → the record KV bucket. See `docs/record-kv.md`.",
    ));
    s.push('\n');
    s.push_str(&markdown::<fpaas_recordkv::LikeIndexConfig>(
        "`fpaas like-indexer`",
        "The record KV's likes → the like index. See `docs/record-kv.md`.",
    ));
    s.push('\n');
    s.push_str(&markdown::<fpaas_pipeline::WorkerConfig>(
        "`fpaas worker`",
        "Subscriptions → matched, batched, signed webhook deliveries. See `docs/subscriptions.md`.",
    ));
    s.push('\n');
    s.push_str(&markdown::<fpaas_api::ApiConfig>(
        "`fpaas serve`",
        "The HTTP API. See `docs/api.md`.",
    ));
    s
}

#[test]
fn docs_config_md_is_generated_from_the_config_structs() {
    let path = fpaas_testkit::workspace_root().join("docs/config.md");
    let text = generated();
    if std::env::var_os("FPAAS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write docs/config.md");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/config.md is stale: FPAAS_UPDATE_GOLDEN=1 cargo test -p fpaas --test it config_docs::"
    );
    // Every option is documented: no empty description.
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        assert!(!line.ends_with("|  |"), "undocumented option: {line}");
    }
}
