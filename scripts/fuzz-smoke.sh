#!/usr/bin/env bash
# Smoke run of every fuzz target on the STABLE toolchain (what CI runs; ~1-2 min on 2 cores from cold):
# builds fuzz/ with libFuzzer and SanitizerCoverage (stable rustc flags; only the sanitizers need nightly),
# writes the generated seeds, then runs each target for a bounded number of executions. Any crash fails the
# script and leaves the input under $WORK/artifacts. Long runs: see fuzz/Cargo.toml (cargo +nightly fuzz run X).
# Env: FUZZ_RUNS (default 20000), FUZZ_SECONDS per target (default 10), CARGO_TARGET_DIR (default fuzz/target/smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FUZZ_RUNS:-20000}
secs=${FUZZ_SECONDS:-10}
target_dir=${CARGO_TARGET_DIR:-fuzz/target/smoke}
# Coverage instrumentation as cargo-fuzz sets it, minus -Zsanitizer (nightly); without it libFuzzer runs blind.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# An explicit --target keeps RUSTFLAGS off the build scripts (they cannot link the coverage hooks).
host=$(rustc +stable -vV | sed -n 's/^host: //p')
cargo +stable build --release --locked --manifest-path fuzz/Cargo.toml --target-dir "$target_dir" --target "$host" --bins
bin="$target_dir/$host/release"
work=$(mktemp -d)
# The targets' scratch files, in memory where possible (see fuzz/src/lib.rs).
LQNETS_FUZZ_SCRATCH=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
export LQNETS_FUZZ_SCRATCH
trap 'rm -rf "$work" "$LQNETS_FUZZ_SCRATCH"' EXIT
"$bin/seeds" "$work/seeds"
mkdir -p "$work/artifacts"
for t in model_file npy cifar idx png jpeg; do
    mkdir -p "$work/corpus/$t"
    # New inputs go to the first folder (scratch); the seeds are read only.
    if ! "$bin/$t" -runs="$runs" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t-" "$work/corpus/$t" "$work/seeds/$t" >"$work/$t.log" 2>&1; then
        tail -40 "$work/$t.log"
        echo "fuzz-smoke: $t FAILED; crashing input kept in ${work}.artifacts" >&2
        cp -r "$work/artifacts" "${work}.artifacts"
        exit 1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1 || true)
    echo "fuzz-smoke: $t ok ($execs executions, $cov, 0 crashes)"
done
