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
# A small build: CI machines can be short of disk. With debug info and incremental state the test build took
# 7.7 GB (target/debug 6.1 GB, of which incremental 1.2 GB); without them it is well under half that. Panic
# messages keep their file:line either way.
export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_DEV_STRIP=debuginfo
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
bash scripts/fuzz-smoke.sh
