#!/usr/bin/env bash
# The test command (README): installs the pinned project-local tools when missing, then runs every test of the
# workspace against real nats-server processes. Extra arguments go to `cargo test` (e.g. `-p fpaas-proto`).
# Slow soak runs are opt-in: FPAAS_SOAK=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-tools.sh
export FPAAS_NATS_SERVER="$PWD/.tools/venv/bin/nats-server"
export FPAAS_PYTHON="$PWD/.tools/venv/bin/python"
cargo test --workspace --locked "$@"
