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
