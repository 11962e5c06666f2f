#!/usr/bin/env bash
# Checks the systemd units in systemd/ (or those given as arguments): `systemd-analyze
# verify` must pass without a single warning, and `systemd-analyze security --offline=yes`
# must rate each unit's exposure at 2.0 or less (0 is locked down, 10 is fully exposed).
# Prints the figures.
#
# Needs no running systemd (containers and CI have none): verify runs against a scratch
# root holding the distribution's units, ours, and stand-ins for the binaries, so it
# checks the unit files and not what happens to be installed on this machine. verify
# insists that ExecStart= names an executable file; that the packages ship the real
# binary at that path is checked by scripts/deb.sh, which runs verify again on the
# unpacked package, after running this script on the unit it packages. Installs systemd
# (for systemd-analyze) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.0

if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-check.sh: installing systemd (for systemd-analyze)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd
fi
systemd-analyze --version | head -n1

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/bin"
# sysinit.target, network-online.target, ...: what a unit's dependencies resolve to.
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
# Units given as arguments, or every unit in systemd/.
if (($#)); then units=("$@"); else units=(systemd/*.service); fi
failed=0
for unit in "${units[@]}"; do
    name=$(basename "$unit")
    cp "$unit" "$root/etc/systemd/system/"
    # The ExecStart binary must exist and be executable for verify; a stand-in will do
    # here (scripts/deb.sh verifies the packaged unit against the packaged binary).
    exe=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit")
    mkdir -p "$root$(dirname "$exe")"
    printf '#!/bin/sh\n' >"$root$exe"
    chmod +x "$root$exe"

    # verify reports unknown keys and bad values as warnings with exit status 0: any
    # output at all is a failure.
    if ! out=$(systemd-analyze verify --root="$root" --man=no "$name" 2>&1) || [[ -n "$out" ]]; then
        echo "systemd-check.sh: verify $name failed:" >&2
        echo "$out" >&2
        failed=1
    else
        echo "verify $name: ok"
    fi

    report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1 || true)
    exposure=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' <<<"$report")
    if [[ -z "$exposure" ]]; then
        echo "systemd-check.sh: security $name gave no exposure level:" >&2
        echo "$report" >&2
        failed=1
    elif awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e > max) }'; then
        echo "systemd-check.sh: $name exposure $exposure is over $MAX_EXPOSURE; what is open:" >&2
        grep '✗' <<<"$report" >&2 || true
        failed=1
    else
        echo "security $name: exposure $exposure (at most $MAX_EXPOSURE)"
    fi
done
exit "$failed"
