#!/usr/bin/env bash
# Builds a Debian package with cargo-deb and checks what is inside it.
#
#   scripts/deb.sh                  the arm64 doorstep-agent package (what CI builds)
#   scripts/deb.sh amd64 [agent|hub]
#
# arm64 packages the binary cross-built by scripts/arm.sh (run with --build-only here, a
# no-op when it already ran), with `cargo deb --no-build`. The default configuration
# shipped in /etc/doorstep is what the packaged binary itself prints with
# --print-default-config, so the two cannot drift apart. Installs cargo-deb when
# missing (`cargo install cargo-deb --locked`, a few minutes on two cores).
#
# Checks: the binary's ELF machine is the package's architecture; the unit, the default
# configuration (a conffile) and the postinst that creates the user are in the package.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-arm64}
component=${2:-agent}
package="doorstep-$component"
case "$arch" in
    arm64) target=aarch64-unknown-linux-gnu elf_machine=183 ;; # EM_AARCH64
    amd64) target=x86_64-unknown-linux-gnu elf_machine=62 ;;   # EM_X86_64
    *) echo "deb.sh: architecture $arch: use arm64 or amd64" >&2; exit 2 ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
    echo "deb.sh: installing cargo-deb" >&2
    started=$SECONDS
    cargo install cargo-deb --locked
    echo "deb.sh: cargo install cargo-deb took $((SECONDS - started)) s" >&2
fi

if [[ "$arch" == arm64 ]]; then
    [[ "$component" == agent ]] || { echo "deb.sh: only the agent is cross-built for arm64" >&2; exit 2; }
    bash scripts/arm.sh --build-only
    target_dir=target/cross
    run=(qemu-aarch64)
else
    target_dir=target
    run=()
    cargo build --release --locked --target "$target" -p "$package"
fi
release="$target_dir/$target/release"

# The shipped configuration, as printed by the shipped binary. Asset paths under
# target/release/ are resolved by cargo-deb to this directory.
"${run[@]}" "$release/$package" --print-default-config >"$release/$package.toml"

out="$target_dir/debian"
rm -f "$out/${package}_"*"_$arch.deb"
CARGO_TARGET_DIR="$target_dir" cargo deb --no-build --locked -p "$package" --target "$target" --output "$out"
deb=$(ls "$out/${package}_"*"_$arch.deb")
echo "deb.sh: built $deb ($(stat -c %s "$deb") bytes)"

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
for path in "./usr/bin/$package" "./etc/doorstep/$component.toml" \
    "./lib/systemd/system/$package.service"; do
    grep -q " $path$" <<<"$contents" || fail "$path is missing"
done

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

# Depends (set by hand: dpkg-shlibdeps cannot read a cross-built binary) must cover the
# newest glibc symbol version the binary links against.
objdump=objdump
[[ "$arch" == arm64 ]] && objdump=aarch64-linux-gnu-objdump
needs=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1 | cut -d_ -f2)
declared=$(sed -n 's/^ Depends: .*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$info")
[[ -n "$declared" ]] || fail "Depends does not name libc6 (>= version)"
dpkg --compare-versions "$declared" ge "$needs" ||
    fail "the binary needs glibc $needs but Depends says libc6 (>= $declared)"
echo "deb.sh: glibc needed $needs, declared libc6 (>= $declared)"

cmp -s "$scratch/root/etc/doorstep/$component.toml" "$release/$package.toml" ||
    fail "etc/doorstep/$component.toml is not the binary's --print-default-config"
cmp -s "$scratch/root/lib/systemd/system/$package.service" "systemd/$package.service" ||
    fail "the unit differs from systemd/$package.service"
grep -qx "/etc/doorstep/$component.toml" "$scratch/control/conffiles" ||
    fail "/etc/doorstep/$component.toml is not a conffile (an upgrade would overwrite local edits)"
grep -q "adduser --system" "$scratch/control/postinst" || fail "postinst does not create the user"
if [[ "$component" == agent ]]; then
    grep -q "adduser --quiet doorstep dialout" "$scratch/control/postinst" ||
        fail "postinst does not put the user in dialout"
fi
grep -q "systemctl\|deb-systemd-helper" "$scratch/control/postinst" ||
    fail "postinst does not enable the unit"
echo "deb.sh: $deb: $arch binary, unit, conffile and postinst present"
