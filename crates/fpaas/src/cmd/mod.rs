//! One module per subcommand: flags (clap `Args`) and the wiring of library pieces.

pub mod client;
pub mod decode;
pub mod dev;
pub mod kv_admin;
pub mod like_indexer;
pub mod likes;
pub mod receive;
pub mod record;
pub mod record_kv;
pub mod relay_sim;
pub mod serve;
pub mod service;
pub mod shuffler;
pub mod storage_estimate;
pub mod tail;
pub mod worker;

/// `fpaas bench NAME [--json]`: runs the benchmark (`fpaas_bench`) and prints its report.
pub async fn bench(args: fpaas_bench::Args) -> anyhow::Result<()> {
    let report = fpaas_bench::run(&args).await?;
    println!("{}", report.render(args.json()));
    Ok(())
}

/// A command's configuration: `T::default()`, then the file at `path` (JSON, or TOML when it ends in `.toml`;
/// unknown fields rejected by `T`'s `deny_unknown_fields`), then the `FPAAS_*` environment
/// ([`fpaas_ops::config`]); the caller then lays its flags over it with [`set`].
pub fn load_config<T>(path: Option<&std::path::Path>, what: &str) -> anyhow::Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    use anyhow::Context;
    fpaas_ops::config::load(path).with_context(|| format!("{what} configuration"))
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
