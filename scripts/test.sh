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
    [curl]=/usr/bin/curl
    # A PostgreSQL of each test's own (initdb into a temporary directory, a free port).
    [postgresql]=/usr/bin/pg_ctlcluster
    # Hubs on several "hosts": network namespaces joined by veth links (ip netns).
    [iproute2]=/usr/sbin/ip
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

# axe-core, the accessibility rule engine the page and console tests inject into
# Chromium: one pinned release from the npm registry, checked against its published
# SHA-512, kept in .cache/ (no Node.js needed).
AXE_VERSION=4.14.1
AXE_SHA512=FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==
axe_dir=.cache/axe-core/$AXE_VERSION
if [[ ! -s "$axe_dir/axe.min.js" ]]; then
    echo "test.sh: fetching axe-core $AXE_VERSION" >&2
    mkdir -p "$axe_dir"
    tgz="$axe_dir/axe-core.tgz"
    curl -fsSL "https://registry.npmjs.org/axe-core/-/axe-core-$AXE_VERSION.tgz" -o "$tgz"
    got=$(python3 -c "import base64,hashlib,sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1],'rb').read()).digest()).decode())" "$tgz")
    if [[ "$got" != "$AXE_SHA512" ]]; then
        echo "test.sh: axe-core $AXE_VERSION does not match the npm registry's published SHA-512" >&2
        exit 1
    fi
    tar -xzf "$tgz" -C "$axe_dir" --strip-components=1 package/axe.min.js
    rm "$tgz"
fi

# Each step's wall time, printed at the end.
times=()
step() {
    local name=$1 started=$SECONDS
    shift
    "$@"
    times+=("$(printf '%6d s  %s' $((SECONDS - started)) "$name")")
}
trap 'echo "test.sh: wall time per step"; printf "%s\n" "${times[@]}"' EXIT

# Unit, integration and end-to-end tests; benchmarks run once each as smoke tests.
step "build and run every test" cargo test --workspace --all-targets --locked
step "doc tests" cargo test --workspace --doc --locked

# The hub's store and integration tests again with the hub's state on PostgreSQL (each
# test a database of its own on a server this run starts on a free port): the same
# binaries, so this pass only runs them. (The three-host tests, round-robin and by van,
# are on PostgreSQL in the first pass already; they are not run twice.)
step "the hub's tests on PostgreSQL" env DOORSTEP_TEST_BACKEND=postgres \
    cargo test -p doorstep-hub --lib --tests --locked -- --skip three_hubs_

# The hub's private API attacked from its own OpenAPI document (about half a minute).
step "schemathesis" bash scripts/schemathesis.sh

# Every fuzz target for a short while (FUZZ_SECONDS each, 10 by default; 0 skips): a
# crash fails the run. The fuzz build is its own (about 6 minutes on two cores); the
# long runs are in docs/fuzzing.md.
step "fuzz smoke" bash scripts/fuzz-smoke.sh
