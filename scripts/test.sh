#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs libtorch (scripts/setup-libtorch.sh) and headless Chromium (the
# report's browser test), checks formatting and lints, runs every test of the workspace, then a bounded
# stable-toolchain run of every fuzz target (scripts/fuzz-smoke.sh). What CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
# Headless Chromium for lq-report's browser test (which prints SKIP without it); Debian's package, as root only.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will SKIP"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
bash scripts/fuzz-smoke.sh
