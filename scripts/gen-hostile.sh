#!/usr/bin/env bash
# Regenerates the hostile suite in testdata/hostile/ (deterministic: the committed files are its output).
# Cases are defined in crates/sim/src/hostile.rs; the mixed capture interleaves them with the real corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf testdata/hostile
cargo run --quiet -p fpaas-sim --example gen_hostile -- testdata/corpus/frames.bin.zst testdata/hostile
