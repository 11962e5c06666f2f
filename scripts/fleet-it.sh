#!/usr/bin/env bash
# Fleet IT's checks, not yet part of CI: they join .ci/run with the issue that ships the
# demo and the packages. Each installs what it needs (systemd, rustc-web and the arm64
# standard library, cross compilers, qemu-user, cargo-deb) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Timed: the systemd units (verify, and an exposure of at most
# 2.0), the aarch64 cross-build with the proto and agent suites under qemu-user, and the
# arm64 Debian package and its contents.
time bash scripts/systemd-check.sh
time bash scripts/arm.sh
time bash scripts/deb.sh
