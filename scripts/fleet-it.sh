#!/usr/bin/env bash
# Fleet IT's checks, run by CI after the test suite. Each script installs what it needs
# when missing (systemd, rustc-web and the arm64 standard library, cross compilers,
# qemu-user, cargo-deb), so a fresh Debian 12 machine with rustup's toolchain is enough.
#
#   the systemd units: verify, and an exposure of at most 2.0
#   the aarch64 cross-build (stripped size at most 8 MiB) and the proto and agent suites
#     under qemu-user
#   the arm64 agent package from that binary, and the amd64 agent and hub packages (a
#     release build for the host), each with its contents checked
#
# Prints each step's wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

times=()
step() {
    local name=$1 started=$SECONDS
    shift
    echo "fleet-it.sh: $name" >&2
    "$@"
    times+=("$(printf '%6d s  %s' $((SECONDS - started)) "$name")")
}

step "systemd units" bash scripts/systemd-check.sh
step "aarch64 build and tests under qemu" bash scripts/arm.sh
step "arm64 agent package" bash scripts/deb.sh arm64 agent
step "amd64 agent package" bash scripts/deb.sh amd64 agent
step "amd64 hub package" bash scripts/deb.sh amd64 hub

echo "fleet-it.sh: wall time per step"
printf '%s\n' "${times[@]}"
echo "fleet-it.sh: total $SECONDS s"
