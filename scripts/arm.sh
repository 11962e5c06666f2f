#!/usr/bin/env bash
# Cross-build doorstep-agent for aarch64 and run the proto and agent test suites under
# qemu-user, the recipe of ../shared/ARM.md (no Docker here, so no `cross`).
#
# Debian ships a second Rust toolchain, rustc-web, whose standard library exists for
# arm64; rustup's cargo drives it through RUSTC. Installs what it needs when missing.
# Builds into target/cross so the host build in target/ is left alone.
#
# Prints the stripped binary's size and fails above 8 MiB. `scripts/arm.sh --build-only`
# stops after the build (scripts/deb.sh packages that binary). armv7 is kept in
# Cross.toml for fleet IT with Docker; the code stays portable to it, but only aarch64 is
# verified here. Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
build_only=false
[[ "${1:-}" == "--build-only" ]] && build_only=true
BIN_MAX_BYTES=$((8 * 1024 * 1024))
# A hung test under emulation must fail CI, not use up its time: the suites run in
# well under a minute under qemu.
TEST_RUN_TIMEOUT_S=600

sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo="sudo"

# Debian's rustc must accept the workspace's rust-version (and so edition 2024, stable
# since 1.85). bookworm has 1.85 in main and a newer rustc-web in bookworm-security; the
# newer one is what builds this workspace.
need_rustc=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
rustc_web_ok() {
    [[ -x /usr/bin/rustc ]] || return 1
    local have
    have=$(/usr/bin/rustc --version | cut -d' ' -f2)
    dpkg --compare-versions "$have" ge "$need_rustc"
}

missing=()
for pkg in rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
# Installed but too old (a machine that got rustc-web before the security update):
# installing again upgrades it and its arm64 standard library together.
if ((${#missing[@]} == 0)) && ! rustc_web_ok; then
    missing=(rustc-web cargo-web libstd-rust-web-dev:arm64)
fi
if ((${#missing[@]})); then
    echo "arm.sh: installing ${missing[*]}" >&2
    started=$SECONDS
    # Only arm64 is added: the armhf lists on this mirror are not always consistent
    # (see ARM.md), and one broken list fails the whole update.
    dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    echo "arm.sh: apt install took $((SECONDS - started)) s" >&2
fi
if ! rustc_web_ok; then
    echo "arm.sh: /usr/bin/rustc is $(/usr/bin/rustc --version 2>&1); the workspace needs" \
        "rust-version $need_rustc. rustc-web $need_rustc or newer comes from bookworm-security:" \
        "check that it is in the apt sources" >&2
    exit 1
fi
/usr/bin/rustc --version

# rustup's cargo drives Debian's rustc, the one that has the arm64 std; rustup's rustc
# cannot use that std (E0514), so RUSTC must always be set.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# No `-L /usr/aarch64-linux-gnu`: with libc6:arm64 installed that mixes two glibc builds
# and any program that starts a thread hangs.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export CARGO_TARGET_DIR=target/cross
# Tests that start the agent binary themselves (agent/tests/run.rs, systemd.rs) run under
# qemu too, where a child aarch64 process needs the emulator named again (no binfmt_misc).
export DOORSTEP_TEST_RUNNER=qemu-aarch64

started=$SECONDS
cargo build --release --locked --target "$TARGET" -p doorstep-agent
echo "arm.sh: release build took $((SECONDS - started)) s" >&2

bin="$CARGO_TARGET_DIR/$TARGET/release/doorstep-agent"
# The release profile strips symbols already; strip again in case a profile override
# kept them, so the figure is what a device gets.
aarch64-linux-gnu-strip -o "$bin.stripped" "$bin"
size=$(stat -c %s "$bin.stripped")
echo "arm.sh: stripped aarch64 doorstep-agent: $size bytes ($((size / 1024)) KiB; budget $BIN_MAX_BYTES)"
if ((size > BIN_MAX_BYTES)); then
    echo "arm.sh: the binary is over the 8 MiB budget for in-cab units" >&2
    exit 1
fi
# The binary runs under emulation, as a smoke test of the runner itself.
qemu-aarch64 "$bin" --version
$build_only && exit 0

# Default targets (lib, bins, tests, examples): no benches, which are host measurements.
# Built first and run second, so each has its own time and the timeout covers only the
# emulated run. Nothing is excluded: every proto and agent test runs under qemu. Built
# with the release profile itself (`--release` would pick the bench profile, whose
# settings differ), so a crate compiled for the binary above with the same features is
# not compiled again; the tests' dev-dependencies (the test kit) still bring most crates
# with other features, and so a build of their own.
tests=(--profile release --locked --target "$TARGET" -p doorstep-proto -p doorstep-agent)
started=$SECONDS
cargo test "${tests[@]}" --no-run
echo "arm.sh: test build took $((SECONDS - started)) s" >&2
started=$SECONDS
status=0
timeout -k 10 "$TEST_RUN_TIMEOUT_S" cargo test "${tests[@]}" || status=$?
echo "arm.sh: tests under qemu took $((SECONDS - started)) s" >&2
if ((status == 124 || status == 137)); then
    echo "arm.sh: the tests under qemu did not finish within $TEST_RUN_TIMEOUT_S s: a test hangs" \
        "(the last one cargo named above)" >&2
fi
exit "$status"
