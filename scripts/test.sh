#!/usr/bin/env bash
# The test command (README): installs the pinned project-local tools when missing, then runs every test of the
# workspace against real nats-server processes. Extra arguments go to `cargo test` (e.g. `-p fpaas-proto`).
# Slow soak runs are opt-in: FPAAS_SOAK=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-tools.sh
export FPAAS_NATS_SERVER="$PWD/.tools/venv/bin/nats-server"
export FPAAS_PYTHON="$PWD/.tools/venv/bin/python"
if [[ "${FPAAS_SOAK:-0}" == 1 && $# -eq 0 ]]; then
  # The soak runs are #[ignore]d measurements and long fault schedules; FPAAS_SOAK_EVENTS sizes them.
  set -- -- --include-ignored
fi
cargo test --workspace --locked "$@"
