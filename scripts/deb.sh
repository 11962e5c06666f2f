#!/usr/bin/env bash
# Builds a Debian package with cargo-deb and checks what is inside it.
#
#   scripts/deb.sh                  the arm64 doorstep-agent package (what CI builds)
#   scripts/deb.sh amd64 [agent|hub]
#
# arm64 packages the binary cross-built by scripts/arm.sh (run with --build-only here, a
# no-op when it already ran), with `cargo deb --no-build`. amd64 builds the release binaries
# of both components for the host first, in one build. The default configuration shipped
# in /etc/doorstep is what the packaged binary itself prints with --print-default-config,
# so the two cannot drift apart. Installs cargo-deb when missing.
#
# The unit must first pass scripts/systemd-check.sh (which installs systemd, for
# systemd-analyze, when missing). Then checks, failing on anything missing: the binary
# at /usr/bin is the package's architecture; the unit and the default configuration (a
# conffile) are there; Depends is set by hand and covers the binary's glibc; the
# postinst creates the unit's User= as a system user (in dialout for the agent) and
# enables the unit; and `systemd-analyze verify` passes on the unpacked package, so the
# unit's ExecStart= is a file the package ships.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned so that CI does not pick up a release needing a newer Rust than the workspace's
# 1.95; 3.8.0 needs 1.85. A few minutes to build on two cores, once per machine.
CARGO_DEB_VERSION=3.8.0

arch=${1:-arm64}
component=${2:-agent}
package="doorstep-$component"
case "$arch" in
    arm64) target=aarch64-unknown-linux-gnu elf_machine=183 ;; # EM_AARCH64
    amd64) target=x86_64-unknown-linux-gnu elf_machine=62 ;;   # EM_X86_64
    *) echo "deb.sh: architecture $arch: use arm64 or amd64" >&2; exit 2 ;;
esac
case "$component" in
    agent | hub) ;;
    *) echo "deb.sh: component $component: use agent or hub" >&2; exit 2 ;;
esac

# The unit as it will be packaged: verify and its exposure, before anything is built.
bash scripts/systemd-check.sh "systemd/$package.service"

if [[ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]]; then
    echo "deb.sh: installing cargo-deb $CARGO_DEB_VERSION" >&2
    started=$SECONDS
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
    echo "deb.sh: cargo install cargo-deb took $((SECONDS - started)) s" >&2
fi

started=$SECONDS
if [[ "$arch" == arm64 ]]; then
    [[ "$component" == agent ]] || { echo "deb.sh: only the agent is cross-built for arm64" >&2; exit 2; }
    bash scripts/arm.sh --build-only
    target_dir=target/cross
    run=(qemu-aarch64)
else
    target_dir=target
    run=()
    # Both components in one build: the dependencies they share compile once, and the
    # second package's build is a no-op.
    CARGO_TARGET_DIR="$target_dir" cargo build --release --locked --target "$target" \
        -p doorstep-agent -p doorstep-hub
    echo "deb.sh: release build took $((SECONDS - started)) s" >&2
fi
release="$target_dir/$target/release"

# The shipped configuration, as printed by the shipped binary. Asset paths under
# target/release/ are resolved by cargo-deb to this directory.
"${run[@]}" "$release/$package" --print-default-config >"$release/$package.toml"

started=$SECONDS
out="$target_dir/debian"
rm -f "$out/${package}_"*"_$arch.deb"
CARGO_TARGET_DIR="$target_dir" cargo deb --no-build --locked -p "$package" --target "$target" --output "$out"
deb=$(ls "$out/${package}_"*"_$arch.deb")
echo "deb.sh: built $deb ($(stat -c %s "$deb") bytes) in $((SECONDS - started)) s"

fail() {
    echo "deb.sh: $deb: $*" >&2
    exit 1
}
info=$(dpkg-deb -I "$deb")
contents=$(dpkg-deb -c "$deb")
echo "$info"
echo "$contents"

grep -q "^ Package: $package$" <<<"$info" || fail "wrong package name"
grep -q "^ Architecture: $arch$" <<<"$info" || fail "architecture is not $arch"
unit_path=$(grep -o "\./\(usr/\)\?lib/systemd/system/$package\.service$" <<<"$contents") ||
    fail "the unit $package.service is missing"
for path in "./usr/bin/$package" "./etc/doorstep/$component.toml"; do
    grep -q " $path$" <<<"$contents" || fail "$path is missing"
done
grep -q "^-rwxr-xr-x 0/0 .* \./usr/bin/$package$" <<<"$contents" ||
    fail "usr/bin/$package is not an executable owned by root"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -x "$deb" "$scratch/root"
dpkg-deb -e "$deb" "$scratch/control"

# ELF header: magic, 64-bit class, little-endian, then e_machine (u16 at offset 18).
bin="$scratch/root/usr/bin/$package"
header=$(od -An -tx1 -N6 "$bin" | tr -d ' \n')
[[ "$header" == 7f454c460201 ]] || fail "usr/bin/$package is not a 64-bit little-endian ELF ($header)"
machine=$(od -An -tu2 -j18 -N2 "$bin" | tr -d ' ')
[[ "$machine" == "$elf_machine" ]] || fail "usr/bin/$package is ELF machine $machine, not $elf_machine"
if command -v file >/dev/null; then file "$bin"; fi

# Depends is set by hand (dpkg-shlibdeps cannot read a cross-built binary): it must be
# there, name no unresolved $auto, and cover the newest glibc symbol version the binary
# links against, and adduser for the postinst.
depends=$(sed -n 's/^ Depends: //p' <<<"$info")
[[ -n "$depends" ]] || fail "no Depends"
[[ "$depends" != *'$'* ]] || fail "Depends has an unresolved variable: $depends"
objdump=objdump
[[ "$arch" == arm64 ]] && objdump=aarch64-linux-gnu-objdump
needs=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1 | cut -d_ -f2)
declared=$(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")
[[ -n "$declared" ]] || fail "Depends does not name libc6 (>= version): $depends"
dpkg --compare-versions "$declared" ge "$needs" ||
    fail "the binary needs glibc $needs but Depends says libc6 (>= $declared)"
grep -qw adduser <<<"$depends" || fail "Depends lacks adduser, which the postinst runs"
echo "deb.sh: Depends: $depends (the binary needs glibc $needs)"

cmp -s "$scratch/root/etc/doorstep/$component.toml" "$release/$package.toml" ||
    fail "etc/doorstep/$component.toml is not the binary's --print-default-config"
cmp -s "$scratch/root/$unit_path" "systemd/$package.service" ||
    fail "the unit differs from systemd/$package.service"
grep -qx "/etc/doorstep/$component.toml" "$scratch/control/conffiles" ||
    fail "/etc/doorstep/$component.toml is not a conffile (an upgrade would overwrite local edits)"

# The postinst creates the user the unit runs as, as a system user.
postinst="$scratch/control/postinst"
[[ -x "$postinst" ]] || fail "no executable postinst"
user=$(sed -n 's/^User=//p' "systemd/$package.service")
[[ -n "$user" ]] || fail "systemd/$package.service has no User="
# Continued lines joined, so each command is one line.
commands=$(sed -e ':a' -e '/\\$/{N;s/\\\n[[:space:]]*/ /;ba' -e '}' "$postinst")
grep -Eq "^[[:space:]]*adduser --system --group .* $user$" <<<"$commands" ||
    fail "postinst does not create the system user $user (the unit's User=) with its group"
if [[ "$component" == agent ]]; then
    grep -Eq "^[[:space:]]*adduser --quiet $user dialout$" <<<"$commands" ||
        fail "postinst does not put $user in dialout"
fi
grep -q "deb-systemd-helper" "$postinst" || fail "postinst does not enable the unit"
sh -n "$postinst" || fail "postinst is not valid sh"

# The unit as installed by this package: verify needs ExecStart= to be an executable file,
# and here it is the packaged binary, not a stand-in. The distribution's units give the
# unit's dependencies (network.target, multi-user.target) something to resolve to.
mkdir -p "$scratch/root/usr/lib/systemd"
cp -rn /usr/lib/systemd/system "$scratch/root/usr/lib/systemd/"
if ! verify=$(systemd-analyze verify --root="$scratch/root" --man=no "$package.service" 2>&1) ||
    [[ -n "$verify" ]]; then
    fail "systemd-analyze verify of the packaged unit: $verify"
fi
echo "deb.sh: $deb: $arch binary, unit (verified against the packaged binary), conffile," \
    "Depends and a postinst creating $user present"
