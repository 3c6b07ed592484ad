#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs libtorch (scripts/setup-libtorch.sh), checks formatting and
# lints, runs every test of the workspace, then a bounded stable-toolchain run of every fuzz target
# (scripts/fuzz-smoke.sh). What CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
bash scripts/fuzz-smoke.sh
