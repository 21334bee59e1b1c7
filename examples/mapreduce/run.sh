#!/usr/bin/env bash
# One command per MapReduce example, against the built-in relay simulator (see README.md here):
#   bash examples/mapreduce/run.sh top-posts [--window-secs 60] [--run-secs 150]
#   bash examples/mapreduce/run.sh reducer [--run-secs 30]
# Installs the pinned tools when missing, builds fpaas (release) unless FPAAS_BIN names a binary, then runs the
# example, which starts its own local stack (NATS + shuffler on relay-sim + API + worker) on free ports.
set -euo pipefail
cd "$(dirname "$0")/../.."
example="${1:-}"
shift || true
case "$example" in
  top-posts) script=examples/mapreduce/top_posts.py ;;
  reducer) script=examples/mapreduce/reducer.py ;;
  *) echo "usage: bash examples/mapreduce/run.sh top-posts|reducer [options]" >&2; exit 2 ;;
esac
bash scripts/setup-tools.sh >&2
if [[ -z "${FPAAS_BIN:-}" ]]; then
  cargo build --release -q -p fpaas >&2
  export FPAAS_BIN="$PWD/target/release/fpaas"
fi
exec .tools/venv/bin/python "$script" "$@"
