#!/usr/bin/env bash
# The run command (README): installs the pinned project-local tools when missing, builds fpaas in release mode
# and runs the whole stack locally (nats-server with JetStream + relay-sim + shuffler) until Ctrl-C.
# Extra arguments go to `fpaas dev` (see `fpaas dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-tools.sh
cargo build --release --locked -p fpaas
exec target/release/fpaas dev "$@"
