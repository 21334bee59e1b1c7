//! One module per subcommand: flags (clap `Args`) and the wiring of library pieces.

pub mod decode;
pub mod dev;
pub mod kv_admin;
pub mod like_indexer;
pub mod likes;
pub mod record;
pub mod record_kv;
pub mod relay_sim;
pub mod shuffler;
pub mod storage_estimate;
pub mod tail;

/// `fpaas bench NAME [--json]`: runs the benchmark (`fpaas_bench`) and prints its report.
pub async fn bench(args: fpaas_bench::Args) -> anyhow::Result<()> {
    let report = fpaas_bench::run(&args).await?;
    println!("{}", report.render(args.json()));
    Ok(())
}

/// A command's configuration: `T::default()`, or the JSON file at `path` (unknown fields rejected by `T`'s
/// `deny_unknown_fields`); the caller then lays its flags over it with [`set`].
pub fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<T> {
    use anyhow::Context;
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {} (JSON {what})", path.display()))
        }
        None => Ok(T::default()),
    }
}

/// Override a config field with a flag, when the flag was given.
pub fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *field = v.clone();
    }
}

/// Cancel `token` when the process receives Ctrl-C or SIGTERM, logging `what` happens next.
pub fn cancel_on_signal(token: &tokio_util::sync::CancellationToken, what: &'static str) {
    let token = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received; {what}");
        token.cancel();
    });
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
