#!/usr/bin/env bash
# Doorstep's fuzz smoke run: builds every cargo-fuzz target in fuzz/ once, then runs each
# for FUZZ_SECONDS (default 10) from its corpus (fuzz/seed.py's seeds, plus whatever
# earlier runs found), one at a time. Fails on the first crash, panic, hang or leak, with
# the input saved under fuzz/artifacts/<target>/; prints the executions per target.
#
#   bash scripts/fuzz-smoke.sh                         # CI: every target, 10 s each
#   FUZZ_SECONDS=300 FUZZ_RELEASE=1 bash scripts/fuzz-smoke.sh nmea_stream route_json
#   FUZZ_SECONDS=0 bash scripts/fuzz-smoke.sh          # skip
#
# By default the targets are built unoptimized without a sanitizer: that build costs about
# a quarter of cargo-fuzz's default (optimized, AddressSanitizer, overflow checks) and a
# smoke run needs no speed. FUZZ_RELEASE=1 builds the default, as the long runs in
# docs/fuzzing.md do. Both keep debug assertions and overflow checks.
#
# Needs cargo-fuzz (installed here when missing) and python3 (fuzz/seed.py). cargo-fuzz
# passes nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
# The cargo-fuzz release this was written and measured with.
CARGO_FUZZ_VERSION="0.13.2"

if [[ "$FUZZ_SECONDS" == 0 ]]; then
    echo "fuzz-smoke: skipped (FUZZ_SECONDS=0)"
    exit 0
fi
export RUSTC_BOOTSTRAP=1
# As `cargo fuzz run` does: the bundled SQLite's C globals trip a false ODR report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The fuzz crate is built with the workspace's exact dependency versions (see
# fuzz/Cargo.toml); cargo adds libFuzzer's few crates to the copy.
cp Cargo.lock fuzz/Cargo.lock
python3 fuzz/seed.py >/dev/null

if [[ "${FUZZ_RELEASE:-0}" == 1 ]]; then
    build=() profile=release
else
    build=(--dev --sanitizer none) profile=debug
fi
start=$SECONDS
(cd fuzz && cargo fuzz build "${build[@]}")
build_s=$((SECONDS - start))
# cargo builds into CARGO_TARGET_DIR when it is set (an absolute path), else fuzz/target.
bin="${CARGO_TARGET_DIR:-fuzz/target}/$(rustc -vV | sed -n 's/^host: //p')/$profile"

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
printf '%-20s %12s %8s %6s\n' target executions exec/s corpus
total=0
for target in "${targets[@]}"; do
    log="$logs/$target.log"
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    # The built binary itself, not `cargo fuzz run`, which would rebuild first if a source
    # changed meanwhile. -timeout: one input running 10 s is a hang, and a failure. -jobs
    # is not used: one fuzzer at a time. stdin from /dev/null: the driver target may be
    # asked to hash a photo at /dev/stdin.
    if ! "$bin/$target" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" "fuzz/corpus/$target" \
        </dev/null >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz-smoke: $target FAILED; the input is under fuzz/artifacts/$target/;" \
            "reproduce with: $bin/$target <that file>" >&2
        exit 1
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    corpus="$(find "fuzz/corpus/$target" -type f | wc -l)"
    printf '%-20s %12s %8s %6s\n' "$target" "${execs:-?}" "${rate:-?}" "$corpus"
    total=$((total + ${execs:-0}))
done
echo "fuzz-smoke: ${#targets[@]} targets, $total executions, no crash;" \
    "build ${build_s}s, runs $((SECONDS - start - build_s))s"
