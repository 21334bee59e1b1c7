//! Where the project-local tools live: the workspace root, the `nats-server` binary and the Python
//! interpreter of `.tools/venv` (installed by `bash scripts/setup-tools.sh`).

use std::path::{Path, PathBuf};

/// The hint printed whenever a project-local tool is missing.
const SETUP_HINT: &str = "run `bash scripts/setup-tools.sh`";

/// The workspace root (the directory holding the root `Cargo.toml`), found from this crate's
/// manifest directory at compile time (`<root>/crates/testkit`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join("crates").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join("..").join(".."))
}

/// The `nats-server` binary: env `FPAAS_NATS_SERVER`, else `<root>/.tools/venv/bin/nats-server`,
/// else the first `nats-server` on `PATH`.
///
/// # Panics
/// When none exists, with "nats-server not found: run `bash scripts/setup-tools.sh`". Tests never
/// skip for lack of a server.
pub fn nats_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FPAAS_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "nats-server not found: FPAAS_NATS_SERVER={} does not exist; unset it or {SETUP_HINT}",
            path.display()
        );
        return path;
    }
    let local = workspace_root()
        .join(".tools")
        .join("venv")
        .join("bin")
        .join("nats-server");
    if local.is_file() {
        return local;
    }
    if let Some(found) = find_on_path("nats-server") {
        return found;
    }
    panic!("nats-server not found: {SETUP_HINT}");
}

/// The Python interpreter of the project venv: env `FPAAS_PYTHON` (set by `scripts/test.sh`), else
/// `<root>/.tools/venv/bin/python`, which has the `atproto` SDK, `nats-py` and `standardwebhooks`.
///
/// # Panics
/// When it does not exist, with the install hint. Tests never skip for lack of the interpreter.
pub fn python() -> PathBuf {
    let path = match std::env::var_os("FPAAS_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => workspace_root()
            .join(".tools")
            .join("venv")
            .join("bin")
            .join("python"),
    };
    assert!(
        path.is_file(),
        "python not found at {}: {SETUP_HINT}",
        path.display()
    );
    path
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
