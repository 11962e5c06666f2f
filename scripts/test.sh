#!/usr/bin/env bash
# Doorstep's whole test suite, from a fresh machine.
#
# Installs the system packages the tests need when they are missing (a clean machine has
# only the Rust toolchain), then runs every test in the workspace. Tests use real parts:
# a Mosquitto broker they start themselves on a free loopback port, pseudo-terminals as
# serial ports, SQLite files on disk, gpsd's decoder as a conformance peer.
set -euo pipefail
cd "$(dirname "$0")/.."

# package → a file that proves it is installed
declare -A NEED=(
    [mosquitto]=/usr/sbin/mosquitto
    [mosquitto-clients]=/usr/bin/mosquitto_pub
    [gpsd-clients]=/usr/bin/gpsdecode
    # The demo's tracking page is checked in a real browser over WebDriver.
    [chromium]=/usr/bin/chromium
    [chromium-driver]=/usr/bin/chromedriver
    [nats-server]=/usr/sbin/nats-server
)
missing=()
for pkg in "${!NEED[@]}"; do
    [[ -e "${NEED[$pkg]}" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Unit, integration and end-to-end tests; benchmarks run once each as smoke tests.
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

# The hub's private API attacked from its own OpenAPI document (about half a minute).
bash scripts/schemathesis.sh

# Every fuzz target for a short while (FUZZ_SECONDS each, 15 by default; 0 skips): a
# crash fails the run. The fuzz build is its own (about 6 minutes on two cores); the
# long runs are in docs/fuzzing.md.
bash scripts/fuzz-smoke.sh
